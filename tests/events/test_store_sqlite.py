"""The event store contract on the embedded default, SQLite."""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text

import events.store
from events import (
    ConflictError,
    EventStore,
    InvalidInputError,
    NotFoundError,
    StorageError,
    UserLog,
    sqlite_url,
    user_log_id,
)
from events.store import _file_readers
from tests.events.store_contract import EventStoreContract


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return sqlite_url(tmp_path / "events.db")


def _erase(store: EventStore, user_id: str) -> int:
    """Store ``user_id``'s log and forget it: the erasure's number."""
    store.append([UserLog.register(user_id).collect_events()])
    with store.transaction() as connection:
        store.forget(connection, user_id)
        return store.owed_rewrite(connection)


def test_a_rewrite_covers_the_erasures_before_it_and_is_owed_again_by_a_later_one(
    tmp_path: Path,
) -> None:
    store = EventStore(sqlite_url(tmp_path / "events.db"))
    first = _erase(store, "ann")
    assert first > 0 and store.rewrite_owed

    store.rewrite(first)
    assert not store.rewrite_owed
    second = _erase(store, "bob")

    assert second > first and store.rewrite_owed
    store.rewrite(second)
    assert not store.rewrite_owed
    store.close()


def test_an_erasure_owed_a_rewrite_stays_owed_in_the_file_until_it_is_settled(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "events.db")
    store = EventStore(url)
    _erase(store, "ann")
    store.close()
    reopened = EventStore(url)
    assert reopened.rewrite_owed, "an open after a process stopped mid-rewrite owes it"

    reopened.rewrite()
    assert reopened.settle_rewrites()

    assert reopened.owed_rewrite() == 0
    reopened.close()
    assert not EventStore(url).rewrite_owed


@pytest.mark.parametrize(("durability", "expected"), [("full", 2), ("normal", 1)])
def test_durability_sets_wal_and_synchronous(
    tmp_path: Path, durability: str, expected: int
) -> None:
    store = EventStore(sqlite_url(tmp_path / "d.db"), durability=durability)  # type: ignore[arg-type]
    try:
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == expected
    finally:
        store.close()


def test_writes_keep_one_connection_and_a_failed_one_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    store = EventStore(sqlite_url(tmp_path / "w.db"))
    try:
        with store.transaction() as first:
            default = first.exec_driver_sql("PRAGMA cache_size").scalar()
            first.exec_driver_sql("PRAGMA cache_size=123")
            first.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with store.transaction() as second:
            assert second is first, "one writer connection, not a checkout per write"
            assert second.exec_driver_sql("PRAGMA cache_size").scalar() == 123
            second.exec_driver_sql(f"PRAGMA cache_size={default}")
        with pytest.raises(RuntimeError), store.transaction() as failing:
            failing.exec_driver_sql("PRAGMA cache_size=456")
            failing.exec_driver_sql("INSERT INTO t VALUES (1)")
            raise RuntimeError("a fold failed")
        assert failing.closed
        with store.transaction() as after:
            assert after is not failing
            assert after.exec_driver_sql("PRAGMA cache_size").scalar() == default
            assert after.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
    finally:
        store.close()
    assert after.closed, "closing the store releases the writer connection"


def test_a_transactions_writes_straight_to_the_driver_commit_with_it_or_not_at_all(
    tmp_path: Path,
) -> None:
    """The hot path writes to the driver, not through SQLAlchemy, and SQLAlchemy begins no
    transaction for it: its writes are committed when it ends all the same, together with
    any made through SQLAlchemy in the same transaction, and a failure stores none of them."""
    store = EventStore(sqlite_url(tmp_path / "d.db"))

    def stored() -> list[int]:
        with sqlite3.connect(tmp_path / "d.db") as reader:
            return [x for (x,) in reader.execute("SELECT x FROM t ORDER BY x")]

    try:
        with store.transaction() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with store.transaction() as connection:
            driver = connection.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            driver.execute("INSERT INTO t VALUES (1)")
        assert stored() == [1]
        with store.transaction() as connection:
            driver.execute("INSERT INTO t VALUES (2)")
            connection.exec_driver_sql("INSERT INTO t VALUES (3)")
        assert stored() == [1, 2, 3]
        with pytest.raises(RuntimeError), store.transaction() as connection:
            connection.connection.driver_connection.execute("INSERT INTO t VALUES (4)")
            raise RuntimeError("a fold failed")
        with store.transaction():
            pass  # the next transaction commits nothing the failed one left
        assert stored() == [1, 2, 3]
    finally:
        store.close()


def test_a_commit_of_the_drivers_writes_that_fails_is_sqlalchemys_error_and_stores_nothing(
    tmp_path: Path,
) -> None:
    """The callers of a transaction catch SQLAlchemy's errors, not the driver's."""
    store = EventStore(sqlite_url(tmp_path / "d.db"))
    try:
        with store.transaction() as connection:
            connection.exec_driver_sql("CREATE TABLE p (id INTEGER PRIMARY KEY)")
            connection.exec_driver_sql(
                "CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        with pytest.raises(sqlalchemy.exc.IntegrityError), store.transaction() as connection:
            driver = connection.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            driver.execute("PRAGMA foreign_keys = ON")
            driver.execute("INSERT INTO c VALUES (7)")  # no parent: refused at COMMIT
        with store.transaction():
            pass
        with sqlite3.connect(tmp_path / "d.db") as reader:
            assert reader.execute("SELECT count(*) FROM c").fetchone() == (0,)
    finally:
        store.close()


class _ToldLock:
    """The store's write lock, recording what each exit was told."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.exits = lock, list[type[BaseException] | None]()

    def __enter__(self) -> None:
        self.lock.__enter__()

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        self.exits.append(kind)
        self.lock.__exit__(kind, *rest)


def test_a_transaction_tells_its_write_lock_how_it_ended_and_frees_it_on_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is released once on every path, a connection that cannot be opened
    included, and told the error that ended the transaction, as a ``with`` block tells it."""
    store = EventStore(sqlite_url(tmp_path / "l.db"))
    try:
        told = _ToldLock(store._datastore.write_lock)
        monkeypatch.setattr(store._datastore, "write_lock", told)
        with store.transaction() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with pytest.raises(RuntimeError), store.transaction():
            raise RuntimeError("a fold failed")
        store._writer = None
        with (
            monkeypatch.context() as patched,
            pytest.raises(sqlalchemy.exc.OperationalError),
        ):
            patched.setattr(
                store.engine,
                "connect",
                lambda: (_ for _ in ()).throw(
                    sqlalchemy.exc.OperationalError("connect", {}, OSError("gone"))
                ),
            )
            with store.transaction():
                pass
        assert told.exits == [None, RuntimeError, sqlalchemy.exc.OperationalError]
        with ThreadPoolExecutor(1) as other:  # the lock is free: another thread writes
            other.submit(lambda: store.append([UserLog.register("ann").collect_events()])).result(
                timeout=10
            )
    finally:
        store.close()


def test_a_transaction_entered_again_is_refused_not_waited_for(tmp_path: Path) -> None:
    """Entered twice on one thread, it would wait for its own write lock for ever."""
    store = EventStore(sqlite_url(tmp_path / "r.db"))
    try:
        transaction = store.transaction()
        with transaction, pytest.raises(RuntimeError, match="entered once"), transaction:
            pass
        with store.transaction():
            pass
    finally:
        store.close()


@pytest.mark.parametrize("messages", [1, 2, 12])
def test_an_append_inserts_a_few_events_in_one_statement_and_returns_their_stored_ids(
    tmp_path: Path, messages: int
) -> None:
    """A lone exchange's events go to SQLite as one statement, whose cursor tells their
    ids (no statement asks for them); a larger batch goes by executemany and asks. Either
    way the positions returned are the ids the rows were stored under."""
    store = EventStore(sqlite_url(tmp_path / "a.db"))
    try:
        user_log = UserLog.register("ann")
        store.append([user_log.collect_events()])
        with store.transaction() as connection:
            writer = connection.connection.driver_connection
        assert isinstance(writer, sqlite3.Connection)
        statements: list[str] = []
        writer.set_trace_callback(statements.append)
        for n in range(messages):
            user_log.add_message("user", f"message {n}", None, 1000)
        recorded = store.append([user_log.collect_events()])
        writer.set_trace_callback(None)
        asked = [s for s in statements if "last_insert_rowid" in s]
        assert len(asked) == (0 if messages <= 8 else 1)
        with sqlite3.connect(tmp_path / "a.db") as reader:
            stored = reader.execute(
                "SELECT id, originator_version FROM memvee_events ORDER BY id"
            ).fetchall()
        assert [(r.notification_id, r.event.originator_version) for r in recorded] == stored[1:]
    finally:
        store.close()


def test_events_and_snapshots_are_bound_with_no_value_for_sqlite3_to_adapt_and_read_back_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3 looks for an adapter for every bytes or None value it binds (about half a
    microsecond each); an append binds none such, and stores its ids and states as BLOBs
    that read back as the events written. A recording adapter sees what would be looked up
    (it hands the value back as it is, so the rows stored are the same either way)."""
    adapted: list[object] = []

    def recording(value: object) -> object:
        adapted.append(value)
        return value

    for kind in (bytes, type(None)):
        monkeypatch.setitem(sqlite3.adapters, (kind, sqlite3.PrepareProtocol), recording)
    store = EventStore(sqlite_url(tmp_path / "b.db"))
    try:
        ann = UserLog.register("ann")
        written = ann.collect_events()
        store.append([written])  # one event: one statement
        for messages in (2, 12):  # a few events: one statement; more: executemany
            for n in range(messages):
                ann.add_message("user", f"message {n}", None, 1000)
            batch = ann.collect_events()
            store.append([batch])
            written += batch
        for n in range(20):
            ann.add_message("user", f"message {n}", None, 1000)
        snapshot = store.snapshot_of(ann)
        assert snapshot is not None
        batch = ann.collect_events()
        store.append([batch], snapshots=[snapshot])
        written += batch
        assert adapted == []
        with sqlite3.connect(tmp_path / "b.db") as reader:
            for table in ("memvee_events", "memvee_snapshots"):
                stored = reader.execute(
                    f"SELECT originator_id, typeof(originator_id), typeof(state) FROM {table}"
                ).fetchall()
                assert stored, table
                assert set(stored) == {(user_log_id("ann").bytes, "blob", "blob")}, table
        assert store.events_of("ann") == written
        loaded = store.load_log("ann")
        assert loaded.snapshot_version == snapshot.originator_version == ann.version
        assert loaded.log is not None and loaded.log.pending == ann.pending
    finally:
        store.close()


def test_logs_load_on_a_connection_of_the_loading_thread(tmp_path: Path) -> None:
    """Each thread reads logs (and ranges of their events) on a connection of its own,
    kept between reads; a read that fails is a StorageError, and the thread's next read
    opens a new connection."""
    store = EventStore(sqlite_url(tmp_path / "r.db"))
    try:
        log = UserLog.register("kim")
        log.add_message("user", "hello", None, 100)
        store.append([log.collect_events()])
        readers = store._readers
        assert readers is not None
        assert store.load_log("kim").log is not None
        mine = readers.get()
        with ThreadPoolExecutor(1) as pool:
            theirs = pool.submit(lambda: (store.load("kim"), readers.get())[1]).result()
        assert theirs is not mine and readers.get() is mine
        mine.close()  # broken behind the store's back
        with pytest.raises(StorageError, match="could not load the log of 'kim'"):
            store.load("kim")
        loaded = store.load("kim")
        assert loaded is not None and loaded.message_count == 1
        again = readers.get()
        assert again is not mine
        assert [e.originator_version for e in store.events_of("kim", after=1)] == [2]
        assert readers.get() is again, "a range of events is read on the same connection"
        again.close()
        with pytest.raises(StorageError, match="could not read the events of 'kim'"):
            store.events_of("kim")
        assert len(store.events_of("kim")) == 2
    finally:
        store.close()
    with pytest.raises(StorageError, match="the event store is closed"):
        store.load("kim")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///{path}?mode=ro", "sqlite:///:memory:"])
def test_a_database_only_the_engine_reaches_is_read_through_the_engine(
    tmp_path: Path, url: str
) -> None:
    engine = create_engine(url.format(path=tmp_path / "o.db"))
    assert _file_readers(engine, 1000) is None
    assert _file_readers(create_engine(sqlite_url(tmp_path / "f.db")), 1000) is not None


def test_a_database_that_takes_no_trigger_still_opens_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard of log versions is a second line of defence: a role that may write rows
    but not create triggers keeps its memory."""

    def refused(*_: object) -> None:
        raise PermissionError("permission denied for schema public")

    monkeypatch.setattr(events.store, "guard_sequence", refused)
    store = EventStore(sqlite_url(tmp_path / "no-trigger.db"))
    try:
        log = UserLog.register("ann")
        log.add_message("user", "hello", None, 100)
        store.append([log.collect_events()])
        assert store.load("ann") is not None
    finally:
        store.close()
    assert "opened without its guard of log versions: permission denied" in caplog.text


def test_a_read_only_open_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventStore(sqlite_url(path)).close()
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER memvee_events_in_sequence")
    EventStore(sqlite_url(path), create=False).close()
    with sqlite3.connect(path) as connection:
        triggers = connection.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        assert triggers.fetchall() == []


def test_a_read_only_open_of_a_missing_file_is_refused_and_makes_none(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(NotFoundError, match="no such file"):
        EventStore(sqlite_url(path), create=False)
    assert not path.exists()


def test_a_loop_of_symbolic_links_is_no_database_and_is_refused_typed(tmp_path: Path) -> None:
    """A file named by a loop of links gave pathlib's raw RuntimeError ("Symlink loop"):
    a read-only open finds no database there, one that may create one is refused."""
    (tmp_path / "a.db").symlink_to(tmp_path / "b.db")
    (tmp_path / "b.db").symlink_to(tmp_path / "a.db")
    url = f"sqlite:///{tmp_path / 'a.db'}"

    with pytest.raises(NotFoundError, match="no such file"):
        EventStore(url, create=False)
    with pytest.raises(StorageError, match="a loop of symbolic links"):
        EventStore(url)
    with pytest.raises(StorageError, match="a loop of symbolic links"):
        sqlite_url(tmp_path / "a.db")


def test_a_file_with_two_names_is_refused_by_either(tmp_path: Path) -> None:
    """SQLite keeps its write-ahead log beside the name it opened: two Memories on two
    hard links of one file would corrupt it, each lock file named after its own path."""
    path = tmp_path / "memory.db"
    EventStore(sqlite_url(path)).close()
    (tmp_path / "alias.db").hardlink_to(path)
    for name in ("memory.db", "alias.db"):
        with pytest.raises(StorageError, match="has 2 names \\(hard links\\)"):
            EventStore(sqlite_url(tmp_path / name))
    (tmp_path / "alias.db").unlink()
    EventStore(sqlite_url(path)).close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_write_after_the_file_was_deleted_or_replaced_is_refused_not_acknowledged(
    tmp_path: Path, how: str
) -> None:
    """Its connections would write on into the unlinked file, or a new empty one, and the
    next open would find none of it."""
    path = tmp_path / "memory.db"
    store = EventStore(sqlite_url(path))
    log = UserLog.register("ann")
    log.add_message("user", "I live in Oslo", None, 100)
    store.append([log.collect_events()])
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        (tmp_path / "copy.db").write_bytes(path.read_bytes())
        (tmp_path / "copy.db").replace(path)
    log.add_message("user", "I work at Acme", None, 100)
    with pytest.raises(StorageError, match="was deleted or replaced while open"):
        store.append([log.collect_events()])
    store.close()


def test_a_file_replaced_under_an_open_store_is_left_intact_by_its_close(tmp_path: Path) -> None:
    """A backup restored over the file: no connection opens the path again, and the old
    file's write-ahead log is not left there for the next opener to read beside it."""
    path = tmp_path / "memory.db"
    store = EventStore(sqlite_url(path))
    log = UserLog.register("ann")
    for n in range(5):
        log.add_message("user", f"message {n}", None, 100)
        store.append([log.collect_events()])
    with sqlite3.connect(path) as copying:
        copying.execute(f"VACUUM INTO '{tmp_path / 'backup.db'}'")
    copying.close()
    (tmp_path / "backup.db").replace(path)
    store.engine.dispose()  # the pool's next connection would be opened by the path
    with pytest.raises(StorageError, match="was deleted or replaced while open"):
        store.engine.connect().close()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.db"]
    with sqlite3.connect(path) as restored:
        assert restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored.close()


def test_a_write_after_the_files_folder_was_renamed_is_stored_in_the_file(
    tmp_path: Path,
) -> None:
    """The file moved with its folder is still the database: nothing is lost by writing."""
    (tmp_path / "a").mkdir()
    store = EventStore(sqlite_url(tmp_path / "a" / "memory.db"))
    log = UserLog.register("ann")
    log.add_message("user", "I live in Oslo", None, 100)
    store.append([log.collect_events()])
    (tmp_path / "a").rename(tmp_path / "b")
    log.add_message("user", "I work at Acme", None, 100)
    store.append([log.collect_events()])
    store.close()
    moved = EventStore(sqlite_url(tmp_path / "b" / "memory.db"), create=False)
    assert moved.load_log("ann").log is not None
    assert moved.load_log("ann").log.version == 3
    moved.close()


@pytest.mark.parametrize("create", [True, False])
def test_a_file_name_longer_than_the_file_system_takes_is_one_storage_error(
    tmp_path: Path, create: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A name of 256 characters (past NAME_MAX on Linux and macOS) failed with the raw
    OSError of a look-up before the open ("File name too long"), not a memvee error, after
    a warning that the file could not be held, about the same failure."""
    path = tmp_path / ("n" * 253 + ".db")
    with pytest.raises(StorageError, match=r"^cannot open the event store at sqlite:///"):
        EventStore(sqlite_url(path), create=create)
    assert list(tmp_path.iterdir()) == []
    assert [r.getMessage()[:12] for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_file_of_another_program_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """An app's own SQLite file, named by mistake: memvee adds no table to it and leaves
    its journal mode alone."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="holds another program's tables"):
        EventStore(sqlite_url(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_an_open_of_a_file_replaced_under_an_open_store_is_refused_until_that_store_closes(
    tmp_path: Path,
) -> None:
    """A backup restored over the file while a store (a Memory in another process, say)
    still has the old one open: its write-ahead log is at the path, and a connection that
    opened the path would read it beside the backup and corrupt it for good."""
    path = tmp_path / "memory.db"
    holder = EventStore(sqlite_url(path))
    log = UserLog.register("ann")
    log.add_message("user", "before the backup", None, 100)
    holder.append([log.collect_events()])
    with sqlite3.connect(path) as copying:
        copying.execute(f"VACUUM INTO '{tmp_path / 'backup.db'}'")
    copying.close()
    log.add_message("user", "after the backup", None, 100)
    holder.append([log.collect_events()])
    (tmp_path / "backup.db").replace(path)

    with pytest.raises(StorageError, match="was replaced \\(or deleted\\) while a Memory"):
        EventStore(sqlite_url(path))
    holder.close()
    reopened = EventStore(sqlite_url(path))
    try:
        restored = reopened.load_log("ann").log
        assert restored is not None
        assert restored.version == 2, "the backup's log, none of the old file's later writes"
    finally:
        reopened.close()
    with sqlite3.connect(path) as checking:
        assert checking.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    checking.close()


def test_a_write_after_the_write_ahead_log_was_deleted_is_refused_not_acknowledged(
    tmp_path: Path,
) -> None:
    """A cleanup's ``rm *.db-wal``: the connections would write on into the unlinked log,
    which no one reads again, and a process killed then would lose what was acknowledged."""
    path = tmp_path / "memory.db"
    store = EventStore(sqlite_url(path))
    log = UserLog.register("ann")
    log.add_message("user", "I live in Oslo", None, 100)
    store.append([log.collect_events()])
    Path(f"{path}-wal").unlink()
    log.add_message("user", "I work at Acme", None, 100)
    with pytest.raises(StorageError, match=r"write-ahead log .* was deleted or replaced"):
        store.append([log.collect_events()])
    store.close()


def _ids_of(store: EventStore, user_id: str, messages: int) -> list[int]:
    """``user_id`` registered and saying ``messages`` messages: the ids of their events."""
    log = UserLog.register(user_id)
    for i in range(messages):
        log.add_message("user", f"{user_id} {i}", None, 1000)
    return [r.notification_id for r in store.append([list(log.collect_events())])]


@pytest.mark.parametrize("messages", [3, 40], ids=["one insert", "many rows executed"])
def test_the_ids_of_erased_events_are_never_given_again(tmp_path: Path, messages: int) -> None:
    """The last events forgotten, the next ones are numbered after them, not again from
    the last kept (SQLite's rowid would): a reader past them would never see those. Two
    erasures in a row keep the higher end, and the numbering holds in a file made before
    erasures kept it (the first erasure sets it up)."""
    path = tmp_path / "events.db"
    store = EventStore(sqlite_url(path))
    _ids_of(store, "ann", 2)
    ben = _ids_of(store, "ben", 5)
    dan = _ids_of(store, "dan", 1)
    for erased in ("dan", "ben"):
        with store.transaction() as connection:
            store.forget(connection, erased)
    carl = _ids_of(store, "carl", messages)
    assert carl == list(range(dan[-1] + 1, dan[-1] + 2 + messages))
    eve = _ids_of(store, "eve", 1)
    assert eve[0] == carl[-1] + 1
    with store.engine.connect() as connection:
        after_ben = store.notifications(connection, after=ben[-1], limit=100)
    assert [r.notification_id for r in after_ben] == carl + eve
    store.close()


def _erased_ids_guard(path: Path) -> set[str]:
    """The triggers and record that keep erased ids unused, as the file holds them."""
    with sqlite3.connect(path) as reading:
        rows = reading.execute(
            "SELECT name FROM sqlite_master WHERE name IN "
            "('memvee_events_after_erased', 'memvee_events_stand_in_out', "
            "'memvee_events_erased_upto')"
        ).fetchall()
    reading.close()
    return {name for (name,) in rows}


def test_the_guard_of_erased_ids_is_dropped_once_a_write_is_numbered_past_them(
    tmp_path: Path,
) -> None:
    """The triggers keeping erased ids unused cost every insert their check: the write
    numbered past the erased ids takes them away, a write refused before leaves them, the
    next erasure of the highest ids makes them again, and a store opened on a file
    another one erased drops them at its first write."""
    path = tmp_path / "events.db"
    store = EventStore(sqlite_url(path))
    _ids_of(store, "ann", 1)
    ben = _ids_of(store, "ben", 3)
    with store.transaction() as connection:
        store.forget(connection, "ben")
    guard = {
        "memvee_events_after_erased",
        "memvee_events_stand_in_out",
        "memvee_events_erased_upto",
    }
    assert _erased_ids_guard(path) == guard
    zed = UserLog.register("zed")
    zed.add_message("user", "hello", None, 1000)
    with pytest.raises(ConflictError):
        store.append([list(zed.collect_events())[1:]])
    assert _erased_ids_guard(path) == guard, "a refused write passed no erased id"
    carl = _ids_of(store, "carl", 2)
    assert carl[0] == ben[-1] + 1
    assert _erased_ids_guard(path) == set()
    with store.transaction() as connection:
        store.forget(connection, "carl")
    store.close()
    assert _erased_ids_guard(path) == guard
    reopened = EventStore(sqlite_url(path))
    assert _ids_of(reopened, "dan", 0) == [carl[-1] + 1]
    assert _erased_ids_guard(path) == set()
    assert _ids_of(reopened, "eve", 0) == [carl[-1] + 2]
    reopened.close()


_GUARD = {"memvee_events_after_erased", "memvee_events_stand_in_out", "memvee_events_erased_upto"}


def _writer(store: EventStore) -> sqlite3.Connection:
    """The SQLite connection ``store`` writes on (its one writer)."""
    with store.transaction() as connection:
        driver = connection.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _exchange(store: EventStore, user_id: str) -> list[int]:
    """A message of ``user_id``, whose log ``store`` holds, appended as a lone exchange is
    (its log's origin given): the ids of its events."""
    user_log = store.load(user_id)
    assert user_log is not None
    user_log.add_message("user", f"{user_id} again", None, 1000)
    origins = {user_log.id: user_log.created_on}
    return [
        r.notification_id for r in store.append([list(user_log.collect_events())], origins=origins)
    ]


def test_a_guard_that_cannot_be_dropped_is_logged_and_the_write_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropping the passed guard is cleanup: its DROP failing (here refused by an
    authorizer, as a full disk or a busy schema would) is rolled back to a savepoint,
    logged with the error, and the write is stored, the guard left whole; later writes
    go on too."""
    path = tmp_path / "events.db"
    store = EventStore(sqlite_url(path))
    _ids_of(store, "ann", 1)
    ben = _ids_of(store, "ben", 2)
    with store.transaction() as connection:
        store.forget(connection, "ben")
    refusing = sqlite3.SQLITE_DENY

    def no_drop_table(action: int, *_: object) -> int:
        return refusing if action == sqlite3.SQLITE_DROP_TABLE else sqlite3.SQLITE_OK

    _writer(store).set_authorizer(no_drop_table)
    with caplog.at_level(logging.WARNING, logger="memvee.events"):
        carl = _ids_of(store, "carl", 1)
        dan = _ids_of(store, "dan", 1)
    assert carl[0] == ben[-1] + 1 and dan[0] == carl[-1] + 1
    assert _erased_ids_guard(path) == _GUARD, "the first DROPs were rolled back with the last"
    warned = [r for r in caplog.records if "could not be dropped" in r.getMessage()]
    assert len(warned) == 1 and "not authorized" in warned[0].getMessage()
    _writer(store).set_authorizer(None)
    with store.transaction() as connection:
        store.forget(connection, "dan")
    assert _ids_of(store, "eve", 0) == [dan[-1] + 1]
    assert _erased_ids_guard(path) == set()
    store.close()


def test_a_store_drops_the_guard_another_process_made_once_its_data_version_tells(
    tmp_path: Path,
) -> None:
    """A store that keeps running while another one (a ``memvee forget``) erases the
    highest ids drops their guard at its next lone exchange, which reads the file's data
    version anyway; while nothing else committed, its write asks nothing more."""
    path = tmp_path / "events.db"
    serving, forgetting = EventStore(sqlite_url(path)), EventStore(sqlite_url(path))
    _ids_of(serving, "ann", 1)
    _exchange(serving, "ann")
    ben = _ids_of(forgetting, "ben", 2)
    with forgetting.transaction() as connection:
        forgetting.forget(connection, "ben")
    assert _erased_ids_guard(path) == _GUARD
    assert _exchange(serving, "ann")[0] == ben[-1] + 1
    assert _erased_ids_guard(path) == set()
    statements: list[str] = []
    _writer(serving).set_trace_callback(statements.append)
    _exchange(serving, "ann")
    _writer(serving).set_trace_callback(None)
    assert not [each for each in statements if "sqlite_master" in each]
    serving.close()
    forgetting.close()


def test_a_record_of_erased_ids_without_its_triggers_is_dropped_at_the_first_write(
    tmp_path: Path,
) -> None:
    """A file holding the record of erased ids but not the triggers that act on it (a
    half-made or half-dropped guard) has the record dropped by the first write, not
    looked up at every insert."""
    path = tmp_path / "events.db"
    store = EventStore(sqlite_url(path))
    _ids_of(store, "ann", 1)
    store.close()
    with sqlite3.connect(path) as editing:
        editing.execute("CREATE TABLE memvee_events_erased_upto (id INTEGER NOT NULL)")
        editing.execute(
            "INSERT INTO memvee_events_erased_upto SELECT max(id) + 100 FROM memvee_events"
        )
    editing.close()
    reopened = EventStore(sqlite_url(path))
    _ids_of(reopened, "ben", 0)
    assert _erased_ids_guard(path) == set()
    statements: list[str] = []
    _writer(reopened).set_trace_callback(statements.append)
    _ids_of(reopened, "carl", 0)
    assert not [each for each in statements if "sqlite_master" in each]
    reopened.close()


def test_a_write_refused_after_an_erasure_leaves_the_erased_ids_unused_and_no_stand_in(
    tmp_path: Path,
) -> None:
    """The first write after an erasure refused (its log lacks a version): it leaves no
    row behind, and the next write is still numbered after the erased events."""
    store = EventStore(sqlite_url(tmp_path / "events.db"))
    _ids_of(store, "ann", 1)
    ben = _ids_of(store, "ben", 3)
    with store.transaction() as connection:
        store.forget(connection, "ben")
    zed = UserLog.register("zed")
    zed.add_message("user", "hello", None, 1000)
    with pytest.raises(ConflictError):
        store.append([list(zed.collect_events())[1:]])
    assert _ids_of(store, "carl", 1)[0] == ben[-1] + 1
    with store.engine.connect() as connection:
        stand_ins = connection.execute(
            text("SELECT count(*) FROM memvee_events WHERE originator_version = 0")
        ).scalar_one()
    assert stand_ins == 0
    store.close()


def test_a_log_begun_again_elsewhere_is_a_conflict_after_the_writers_connection_was_replaced(
    tmp_path: Path,
) -> None:
    """Another process forgets a user and begins her log again up to the version this
    store's copy is at, and writes another user: this store's stale write of that other
    user fails (its writer's connection is then replaced), and its stale write of the
    first user must still be refused as a log begun again. A new connection counts its
    data_version from its own start, so its first value (the same on every new
    connection) was taken for "nothing committed elsewhere" when it matched the old
    connection's last, and the old log's message was stored in the new log."""
    url = sqlite_url(tmp_path / "events.db")
    mine, theirs = EventStore(url), EventStore(url)
    try:
        stale = UserLog.register("ivy")
        stale.add_message("user", "I live in Oslo.", None, 100)
        mine.append([stale.collect_events()])
        stale.add_message("user", "I work at Acme.", None, 100)
        mine.append([stale.collect_events()], origins={stale.id: stale.created_on})
        other = UserLog.register("bo")
        mine.append([other.collect_events()])

        with theirs.transaction() as connection:
            theirs.forget(connection, "ivy")
        begun = UserLog.register("ivy")
        begun.add_message("user", "I live in Rome.", None, 100)
        begun.add_message("user", "I love tea.", None, 100)
        theirs.append([begun.collect_events()])
        their_other = theirs.load("bo")
        assert their_other is not None
        their_other.add_message("user", "Hello.", None, 100)
        theirs.append([their_other.collect_events()], origins={other.id: other.created_on})
        other.add_message("user", "Hi.", None, 100)
        with pytest.raises(ConflictError):
            mine.append([other.collect_events()], origins={other.id: other.created_on})

        stale.add_message("user", "Still here.", None, 100)
        with pytest.raises(ConflictError, match="forgotten and begun again"):
            mine.append([stale.collect_events()], origins={stale.id: stale.created_on})
        assert [e.content for e in mine.events_of("ivy")[1:]] == ["I live in Rome.", "I love tea."]
    finally:
        theirs.close()
        mine.close()
