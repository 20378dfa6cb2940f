"""The files are scrubbed after an erasure (the file rewritten, the write-ahead log
truncated): at once, or in the background once what held it off is done."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from actors._traces import TraceScrubber, scrub_files, truncate_wal
from actors.erasure import erase_user
from actors.lease import LeaseTable, new_owner_id
from events import CheckpointBusyError, EventStore, StorageError, UserLog
from projections import ProjectionTables, Projector


@pytest.fixture
def wal_store(tmp_path: Path) -> Iterator[EventStore]:
    """A store whose write-ahead log holds a committed row."""
    store = EventStore(f"sqlite:///{tmp_path / 'traces.db'}")
    with store.transaction() as connection:
        connection.execute(text("CREATE TABLE notes (body TEXT)"))
        connection.execute(text("INSERT INTO notes VALUES ('first')"))
    yield store
    store.close()


def _wal_bytes(store: EventStore) -> int:
    wal = Path(store.engine.url.database or "").with_name("traces.db-wal")
    return wal.stat().st_size if wal.exists() else 0


def _snapshot_reader(store: EventStore) -> sqlite3.Connection:
    """Another connection in the middle of a read, then a write it does not see."""
    reader = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM notes").fetchall()
    with store.transaction() as connection:
        connection.execute(text("INSERT INTO notes VALUES ('second')"))
    return reader


def _forget_stored(store: EventStore, user_id: str) -> int:
    """Store ``user_id``'s log, then erase it: the erasure's number, owing a rewrite."""
    store.append([UserLog.register(user_id).collect_events()])
    with store.transaction() as connection:
        assert store.forget(connection, user_id) == (1, 0)
        return store.owed_rewrite(connection)


def _signal_writers_lock(store: EventStore) -> threading.Event:
    """An event set once anything holds the store's writers' lock."""
    lock = store._datastore.write_lock
    taken = threading.Event()

    class Signalling:
        def __enter__(self) -> None:
            lock.__enter__()
            taken.set()

        def __exit__(self, *exc: object) -> None:
            lock.__exit__(*exc)

    store._datastore.write_lock = Signalling()
    return taken


def test_the_log_is_emptied_when_no_reader_holds_it(wal_store: EventStore) -> None:
    assert _wal_bytes(wal_store) > 0

    truncate_wal(wal_store.engine, 0)

    assert _wal_bytes(wal_store) == 0


def test_a_reader_holding_an_older_snapshot_is_an_error_not_a_silent_row(
    wal_store: EventStore,
) -> None:
    reader = _snapshot_reader(wal_store)
    try:
        with pytest.raises(StorageError, match="another connection still read an older snapshot"):
            truncate_wal(wal_store.engine, 0)
        assert _wal_bytes(wal_store) > 0
    finally:
        reader.close()


def _another_process(store: EventStore, script: str) -> subprocess.Popen[str]:
    """Another process on the store's file, handed back once it ran ``script``
    (with ``connection`` open on the file, its busy timeout 5 s); it ends when killed or
    when its standard input closes."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"connection = sqlite3.connect({store.engine.url.database!r}, "
            "isolation_level=None, check_same_thread=False)\n"
            "connection.execute('PRAGMA busy_timeout=5000')\n"
            f"{script}\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _ended(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(10)


def test_a_truncation_another_process_is_writing_through_says_so_with_what_sqlite_returned(
    wal_store: EventStore,
) -> None:
    writer = _another_process(
        wal_store,
        "connection.execute('BEGIN IMMEDIATE')\n"
        "connection.execute(\"INSERT INTO notes VALUES ('third')\")",
    )
    try:
        with pytest.raises(CheckpointBusyError) as raised:
            truncate_wal(wal_store.engine, 0)
    finally:
        _ended(writer)

    busy = raised.value
    assert (busy.busy, busy.frames == busy.copied, busy.frames >= 0) == (1, True, True)
    assert "another connection was writing" in str(busy)
    assert f"returned busy=1, frames={busy.frames}, copied={busy.copied}" in str(busy)


def _busy_while_another_checkpoints(store: EventStore) -> CheckpointBusyError:
    """The refusal of a truncation tried while the other process's checkpoint holds the
    log (it waits up to 5 s on a reader); tried again until that checkpoint has begun, so a
    slow machine's late start cannot make it another refusal."""
    deadline = time.monotonic() + 4
    while True:
        with pytest.raises(CheckpointBusyError) as raised:
            truncate_wal(store.engine, 0)
        if raised.value.frames == -1 or time.monotonic() > deadline:
            return raised.value
        time.sleep(0.01)


def test_a_truncation_meeting_another_process_checkpointing_says_it_could_not_start(
    wal_store: EventStore,
) -> None:
    reader = _another_process(
        wal_store,
        "connection.execute('BEGIN')\nconnection.execute('SELECT count(*) FROM notes').fetchall()",
    )
    with wal_store.transaction() as connection:
        connection.execute(text("INSERT INTO notes VALUES ('second')"))
    waiting = _another_process(
        wal_store,
        "import threading\n"
        "threading.Thread(target=connection.execute, "
        "args=('PRAGMA wal_checkpoint(TRUNCATE)',), daemon=True).start()\n"
        "import time; time.sleep(0.3)",
    )
    try:
        busy = _busy_while_another_checkpoints(wal_store)
    finally:
        _ended(reader)
        _ended(waiting)

    assert (busy.busy, busy.frames, busy.copied) == (1, -1, -1)
    assert "another connection was checkpointing the log itself" in str(busy)
    assert "other connections still read older snapshots" not in str(busy)


@contextmanager
def _held_off_scrubber(store: EventStore) -> Iterator[TraceScrubber]:
    """A background scrubber whose truncation after erasing ann a reader's snapshot held
    off, its next try an hour away; on leaving, the reader is closed, then the scrubber
    stopped."""
    scrubber = TraceScrubber(store, retry_delay=60, retry_max=60)
    reader = _snapshot_reader(store)
    try:
        scrubber.later("ann")
        assert scrubber.wait_idle(10)
        yield scrubber
    finally:
        reader.close()
        scrubber.stop()


def test_a_truncation_held_off_in_the_background_is_one_warning_line_without_traceback(
    wal_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    with _held_off_scrubber(wal_store):
        pass

    retried = [
        r for r in caplog.records if "trying again" in r.getMessage() or "waits" in r.getMessage()
    ]
    assert [(r.levelno, r.exc_info) for r in retried] == [(logging.WARNING, None)]
    assert "another connection still read an older snapshot" in retried[0].getMessage()


def test_the_connection_keeps_its_busy_timeout_after_a_truncation_without_waiting(
    wal_store: EventStore,
) -> None:
    reader = _snapshot_reader(wal_store)
    try:
        with pytest.raises(StorageError):
            truncate_wal(wal_store.engine, 0)
    finally:
        reader.close()
    with wal_store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_a_held_off_truncation_is_retried_until_the_reader_is_done(
    wal_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memvee")
    scrubber = TraceScrubber(wal_store, retry_delay=0.01, retry_max=0.01)
    reader = _snapshot_reader(wal_store)
    try:
        scrubber.later("ann")
        assert scrubber.wait_idle(10)
        assert scrubber.remaining == {"ann"}, "held off while the snapshot is read"
    finally:
        reader.close()
    deadline = time.monotonic() + 10
    while scrubber.remaining and time.monotonic() < deadline:
        time.sleep(0.005)
    scrubber.stop()

    assert scrubber.remaining == frozenset() and _wal_bytes(wal_store) == 0
    assert "user 'ann': the erased words are gone from the database files" in caplog.messages


def test_closing_names_the_users_whose_words_a_reader_still_holds(
    wal_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    with _held_off_scrubber(wal_store) as scrubber:
        scrubber.stop()

    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("users 'ann' were erased, but their words stay") for m in warned)


def test_no_thread_is_started_until_an_erasure_needs_one(wal_store: EventStore) -> None:
    before = {t.ident for t in threading.enumerate()}
    scrubber = TraceScrubber(wal_store)

    assert scrubber.wait_idle(0) and scrubber.remaining == frozenset()
    assert {t.ident for t in threading.enumerate()} == before
    scrubber.stop()


def test_a_rewrite_that_fails_stays_owed_and_the_scrubber_does_it_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memvee")
    path = tmp_path / "traces.db"
    store = EventStore(f"sqlite:///{path}", busy_timeout_ms=1)
    scrubber = TraceScrubber(store, retry_delay=0.01, retry_max=0.01)
    _forget_stored(store, "ann")
    writer = sqlite3.connect(path, isolation_level=None)  # another process mid-write
    try:
        writer.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="the database file was not rewritten"):
            scrub_files(store, 0)
        assert store.rewrite_owed
        scrubber.later("ann")
        assert scrubber.wait_idle(10)
        assert scrubber.remaining == {"ann"}, "no rewrite while the other writer holds on"
    finally:
        writer.execute("COMMIT")
        writer.close()
    deadline = time.monotonic() + 10
    while scrubber.remaining and time.monotonic() < deadline:
        time.sleep(0.005)
    scrubber.stop()
    store.close()

    assert scrubber.remaining == frozenset() and not store.rewrite_owed
    assert "user 'ann': the erased words are gone from the database files" in caplog.messages


def test_an_erasure_whose_scrub_meets_another_rewrite_running_has_the_file_rewritten_too(
    tmp_path: Path,
) -> None:
    path = tmp_path / "traces.db"
    store = EventStore(f"sqlite:///{path}", busy_timeout_ms=100)
    first = _forget_stored(store, "ann")
    second = _forget_stored(store, "bob")
    writer = sqlite3.connect(path, isolation_level=None)  # another process mid-write
    writer.execute("BEGIN IMMEDIATE")
    failed: list[StorageError] = []

    def scrub_first() -> None:
        try:
            scrub_files(store, 0, first)
        except StorageError as error:
            failed.append(error)

    running = threading.Thread(target=scrub_first)
    begun = _signal_writers_lock(store)
    try:
        running.start()
        assert begun.wait(10)  # the first rewrite holds the writers off
        with pytest.raises(StorageError, match="the database file was not rewritten"):
            scrub_files(store, 0, second)  # not merely the log truncated: a rewrite failed
        running.join()
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert len(failed) == 1 and store.rewrite_owed

    scrub_files(store, 0, second)

    assert not store.rewrite_owed
    store.close()


def test_a_rewrite_an_earlier_process_left_unfinished_is_finished_when_it_is_opened_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memvee")
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    stopped = EventStore(url)
    _forget_stored(stopped, "ann")
    stopped.close()  # stopped before its rewrite, as a process killed would be
    store = EventStore(url)
    assert store.rewrite_owed
    scrubber = TraceScrubber(store, retry_delay=0.01, retry_max=0.01)

    scrubber.resume()

    assert scrubber.wait_idle(10) and scrubber.remaining == frozenset()
    assert not store.rewrite_owed and store.owed_rewrite() == 0
    assert any("rewrite of the database file did not finish" in m for m in caplog.messages)
    scrubber.stop()
    store.close()


def test_a_scrub_whose_log_holds_only_its_settled_record_is_done_though_a_reader_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the file is rewritten and the log truncated, the record of the rewrite settled
    is all the log holds: a reader that holds it off then leaves no erased word behind, so
    the scrub is done (the receipt says scrubbed)."""
    store = EventStore(f"sqlite:///{tmp_path / 'traces.db'}")
    erasure = _forget_stored(store, "ann")
    truncations: list[int] = []

    def held_off_after_the_first(engine: object, wait_ms: int) -> None:
        truncations.append(wait_ms)
        if len(truncations) > 1:
            raise StorageError("the write-ahead log was not truncated: a reader came")
        truncate_wal(store.engine, wait_ms)

    monkeypatch.setattr("actors._traces.truncate_wal", held_off_after_the_first)

    scrub_files(store, 0, erasure)

    assert len(truncations) == 2 and not store.rewrite_owed
    store.close()


def test_closing_names_an_earlier_process_erasures_not_an_empty_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "traces.db"
    url = f"sqlite:///{path}"
    stopped = EventStore(url)
    _forget_stored(stopped, "ann")
    stopped.close()
    store = EventStore(url, busy_timeout_ms=1)
    scrubber = TraceScrubber(store, retry_delay=60, retry_max=60)
    writer = sqlite3.connect(path, isolation_level=None)  # holds every rewrite off
    writer.execute("BEGIN IMMEDIATE")
    try:
        scrubber.resume()
        scrubber.wait_idle(10)
        scrubber.stop()
    finally:
        writer.execute("COMMIT")
        writer.close()
    warned = [m for m in caplog.messages if "their words stay" in m]
    assert warned and "those an earlier process erased" in warned[-1]
    retried = [m for m in caplog.messages if "in the background failed" in m]
    assert retried and retried[0].startswith("the erasures of an earlier process: scrubbing")
    assert not any("''" in m for m in caplog.messages), caplog.messages
    store.close()


def test_an_erasure_of_rows_naming_a_user_with_no_log_left_owes_the_file_a_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease is all that names the user: its bytes may sit in pages SQLite rebuilt as
    well as any message's, so erasing it rewrites the file too."""
    store = EventStore(f"sqlite:///{tmp_path / 'traces.db'}")
    leases = LeaseTable(store.engine, new_owner_id(), ttl=30.0)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        leases.create(connection)
        projector.create(connection)
    leases.try_acquire("alice")
    rewrites: list[int | None] = []
    rewrite = EventStore.rewrite
    monkeypatch.setattr(
        EventStore,
        "rewrite",
        lambda self, through=None: (rewrites.append(through), rewrite(self, through))[1],
    )

    receipt = erase_user(store, projector, leases, "alice")

    assert receipt.rows["leases"] == 1 and receipt.scrubbed
    assert rewrites and rewrites[0], "the file was rewritten for the erased lease"
    store.close()
