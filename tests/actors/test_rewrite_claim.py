"""The rewrite an erasure owes a SQLite file is done once: a process opening during
another's erasure leaves it to that one, and takes it over once that one's try ended
without it."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from actors import erasure
from actors._background import UserWorker
from actors._traces import TraceScrubber
from actors.erasure import erase_user
from actors.process_identity import process_stat
from actors.rewrite_claim import (
    REWRITE_CLAIM_TABLE,
    RewriteLeftToAnother,
    RewriteUnderWayHere,
    claim_owed_rewrite,
    claim_rewrite,
    release_rewrite_claim,
)
from events import EventStore, StorageError, UserLog
from projections import ProjectionTables, Projector

pytestmark = pytest.mark.skipif(
    process_stat(1) is None, reason="needs /proc to tell a process alive"
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'claims.db'}"


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A running process of this machine, which ends when its stdin is closed."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield child
    _end(child)


def _end(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=30)


def _forget_stored(store: EventStore, user_id: str) -> int:
    """Store ``user_id``'s log, then erase it as a process stopped before its rewrite
    would: the erasure's number, owing a rewrite."""
    store.append([UserLog.register(user_id).collect_events()])
    with store.transaction() as connection:
        store.forget(connection, user_id)
        return store.owed_rewrite(connection)


def _claimed_by(store: EventStore, child: subprocess.Popen[bytes], through: int) -> None:
    """Record the rewrite as ``child``'s, as its erasure does from its commit on."""
    stat = process_stat(child.pid)
    assert stat is not None
    with store.transaction() as connection:
        claim_rewrite(connection, through)
        connection.execute(
            text(f"UPDATE {REWRITE_CLAIM_TABLE} SET pid = :pid, started = :started"),
            {"pid": child.pid, "started": stat[1]},
        )


def _stored_with_projections(url: str, user_id: str) -> tuple[EventStore, Projector]:
    """A store of ``url`` with its projections and ``user_id``'s log, and its projector."""
    store = EventStore(url)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    store.append([UserLog.register(user_id).collect_events()], projector.apply)
    return store, projector


def _vacuums(store: EventStore) -> list[str]:
    """The ``VACUUM`` statements ``store``'s connections run from now on."""
    run: list[str] = []

    def trace(statement: str) -> None:
        if statement.strip().upper() == "VACUUM":
            run.append(statement)

    def traced(driver: sqlite3.Connection, *_: object) -> None:
        driver.set_trace_callback(trace)

    event.listen(store.engine, "checkout", traced)
    return run


def _claims(store: EventStore) -> int:
    with store.engine.connect() as connection:
        return int(
            connection.execute(text(f"SELECT count(*) FROM {REWRITE_CLAIM_TABLE}")).scalar_one()
        )


def _counting_rewrites(monkeypatch: pytest.MonkeyPatch) -> list[EventStore]:
    rewrites: list[EventStore] = []
    real = EventStore.rewrite

    def rewrite(store: EventStore, through: int | None = None) -> None:
        rewrites.append(store)
        real(store, through)

    monkeypatch.setattr(EventStore, "rewrite", rewrite)
    return rewrites


def test_an_open_during_another_running_process_erasure_leaves_the_rewrite_to_it(
    url: str,
    other_process: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It rewrote the file a second time, holding writers off for seconds on a large file."""
    caplog.set_level(logging.INFO, logger="memvee")
    erasing = EventStore(url)
    _claimed_by(erasing, other_process, _forget_stored(erasing, "ann"))
    rewrites = _counting_rewrites(monkeypatch)
    opened = EventStore(url)
    scrubber = TraceScrubber(opened, retry_delay=60, retry_max=60)

    scrubber.resume()
    assert scrubber.wait_idle(30)
    scrubber.stop()

    assert rewrites == [] and opened.rewrite_owed
    assert any("left to another process" in m for m in caplog.messages)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    opened.close()
    erasing.close()


def test_a_rewrite_left_to_a_process_that_ended_without_it_is_done_by_the_next_open(
    url: str, other_process: subprocess.Popen[bytes]
) -> None:
    """The open that left it never retried, so the words stayed once that erasure failed."""
    erasing = EventStore(url)
    _claimed_by(erasing, other_process, _forget_stored(erasing, "ann"))
    with pytest.raises(RewriteLeftToAnother):
        claim_owed_rewrite(erasing)
    _end(other_process)  # its rewrite never came
    opened = EventStore(url)
    scrubber = TraceScrubber(opened, retry_delay=60, retry_max=60)

    scrubber.resume()
    assert scrubber.wait_idle(30)
    scrubber.stop()

    assert not opened.rewrite_owed and _claims(opened) == 0
    opened.close()
    erasing.close()


def test_an_erasure_of_an_unknown_user_leaves_the_rewrite_to_the_running_process_claiming_it(
    url: str, other_process: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It replaced that process's claim and rewrote the file a second time, though it
    erased nothing of its own."""
    store, projector = _stored_with_projections(url, "bob")
    _claimed_by(store, other_process, _forget_stored(store, "ann"))
    rewrites = _counting_rewrites(monkeypatch)

    receipt = erase_user(store, projector, None, "nobody")

    assert receipt.total == 0 and receipt.scrubbed
    assert rewrites == [] and store.rewrite_owed
    with store.engine.connect() as connection:
        pid = connection.execute(text(f"SELECT pid FROM {REWRITE_CLAIM_TABLE}")).scalar_one()
    assert pid == other_process.pid, "the running process's claim stays"
    store.close()


def test_an_erasure_of_an_unknown_user_finishes_a_rewrite_nobody_claims(url: str) -> None:
    store, projector = _stored_with_projections(url, "bob")
    _forget_stored(store, "ann")

    erase_user(store, projector, None, "nobody")

    assert not store.rewrite_owed and _claims(store) == 0
    store.close()


def test_an_erasure_holds_the_rewrite_claim_from_its_commit_until_its_try_ended(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, projector = _stored_with_projections(url, "ann")
    other = EventStore(url)
    left: list[str] = []
    real = EventStore.rewrite

    def rewrite(self: EventStore, through: int | None = None) -> None:
        try:
            claim_owed_rewrite(other)
        except RewriteUnderWayHere as error:  # another open of this very process
            left.append(str(error))
        real(self, through)

    monkeypatch.setattr(EventStore, "rewrite", rewrite)

    assert erase_user(store, projector, None, "ann").scrubbed

    assert len(left) == 1 and _claims(store) == 0 and not store.rewrite_owed
    other.close()
    store.close()


def test_an_erasure_whose_rewrite_failed_leaves_it_owed_to_the_next_open_unclaimed(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, projector = _stored_with_projections(url, "ann")

    def full_disk(self: EventStore, through: int | None = None) -> None:
        raise StorageError("the database file was not rewritten: database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(EventStore, "rewrite", full_disk)
        assert not erase_user(store, projector, None, "ann").scrubbed

    assert store.rewrite_owed and _claims(store) == 0
    opened = EventStore(url)
    claim = claim_owed_rewrite(opened)
    assert claim is not None, "the next open takes the rewrite up"
    release_rewrite_claim(opened, claim)
    opened.close()
    store.close()


def test_a_rewrite_done_whose_truncation_a_reader_held_off_is_only_truncated_elsewhere(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasing process released its claim with the rewrite still recorded owed, so the
    next writing open in another process rewrote the whole file again, though only the
    write-ahead log's truncation was left."""
    monkeypatch.setattr(erasure, "TRUNCATE_WAIT_MS", 0)
    store, projector = _stored_with_projections(url, "ann")
    reader = sqlite3.connect(url.removeprefix("sqlite:///"))
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # an older snapshot
    assert not erase_user(store, projector, None, "ann").scrubbed
    reader.rollback()
    reader.close()
    opened = EventStore(url)
    vacuums = _vacuums(opened)

    assert not opened.rewrite_owed and opened.scrub_owed
    TraceScrubber(opened).finish_owed()

    assert vacuums == [] and not opened.scrub_owed and _claims(opened) == 0
    opened.close()
    store.close()


def test_closing_waits_for_this_process_own_rewrite_still_running_in_the_background(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the worker's wait, closing took its own rewrite for another process's, and
    returned with the rewrite still running on the store about to be closed."""
    caplog.set_level(logging.INFO, logger="memvee")
    store = EventStore(url)
    _forget_stored(store, "ann")
    rewriting, finish = threading.Event(), threading.Event()
    real_rewrite, real_stop = EventStore.rewrite, UserWorker.stop

    def slow_rewrite(self: EventStore, through: int | None = None) -> None:
        rewriting.set()
        finish.wait()
        real_rewrite(self, through)

    def impatient_stop(self: UserWorker, wait: float | None = 30.0) -> bool:
        if wait is None:  # closing waits for the try: let the rewrite end
            finish.set()
        return real_stop(self, None if wait is None else 0)

    monkeypatch.setattr(EventStore, "rewrite", slow_rewrite)
    monkeypatch.setattr(UserWorker, "stop", impatient_stop)
    scrubber = TraceScrubber(store, retry_delay=60, retry_max=60)
    scrubber.resume()
    assert rewriting.wait(30)

    try:
        scrubber.stop()
        assert not store.rewrite_owed and _claims(store) == 0
    finally:
        finish.set()
    assert not any("another process" in m for m in caplog.messages)
    store.close()
