"""The event store contract on a PostgreSQL server."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import make_url

import events.store
from events import EventStore, UserLog
from events.errors import ConnectionLostError
from tests.events.store_contract import EventStoreContract
from tests.support.backends import postgres_url


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self) -> str:
        return postgres_url()


def test_a_plain_postgresql_url_opens_the_store() -> None:
    """``postgresql://`` names no driver: the store uses psycopg 3 (memvee's ``postgres`` extra),
    where SQLAlchemy alone would ask for psycopg2."""
    url = postgres_url()
    plain = "postgresql://" + url.split("://", 1)[1]
    store = EventStore(plain)
    try:
        assert store.max_position() == 0
    finally:
        store.close()


def _drop_other_connections(url: str) -> int:
    """Have the server end every other connection to the database, as a restart does, and
    wait until their processes are gone: ``pg_terminate_backend`` only signals them, and a
    checkout before the server's farewell reached the socket could not tell. It reads in autocommit:
    within one transaction pg_stat_activity is a snapshot taken at its first read, so the
    wait never saw them go and always ran its full 10 s."""
    server = make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(server, autocommit=True) as c:
        others = (
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        ended = [pid for (pid,) in c.execute(f"SELECT pid {others}").fetchall()]
        c.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [ended])
        for _ in range(1000):
            row = c.execute(f"SELECT count(*) {others} AND pid = ANY(%s)", [ended]).fetchone()
            if row is None or row[0] == 0:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"the server's sessions {ended} did not end within 10 s")
    return len(ended)


def test_reads_and_writes_after_the_server_ended_the_pools_sessions_use_new_connections() -> None:
    """The server ended the idle sessions of the pool (an idle-session timeout, a failover,
    a proxy): the next reads and write are not refused for that, with no round trip added
    to each transaction to find it out."""
    url = postgres_url()
    store = EventStore(url)
    try:
        log = UserLog.register("kim")
        log.add_message("user", "hello", None, 100)
        store.append([log.collect_events()])
        for read in (lambda: store.load("kim"), lambda: store.events_of("kim")):
            assert store.load("kim") is not None  # a connection in the pool
            assert _drop_other_connections(url) >= 1
            assert read()
        assert _drop_other_connections(url) >= 1
        log.add_message("user", "I live in Oslo", None, 100)
        store.append([log.collect_events()], origins={log.id: log.created_on})
        loaded = store.load("kim")
        assert loaded is not None and loaded.message_count == 2
    finally:
        store.close()


def test_a_write_whose_connection_is_lost_before_its_commit_stores_nothing_and_says_so() -> None:
    """The session ended in the middle of a write (before COMMIT was sent): nothing of it
    is stored, and the error tells that it may be sent again at once."""
    url = postgres_url()
    store = EventStore(url)
    try:
        log = UserLog.register("kim")
        log.add_message("user", "hello", None, 100)

        def session_ended(connection: Any, _: Any) -> None:
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

        with pytest.raises(ConnectionLostError, match="could not store 2 events"):
            store.append([log.collect_events()], session_ended)
        assert store.load("kim") is None
        assert store.max_position() == 0
    finally:
        store.close()


def test_a_session_stalled_inside_a_transaction_stops_the_writers_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process stopped while it holds the writers' lock (a forget, a rebuild page) held
    every writer of every process until it resumed; the server now ends its session."""
    monkeypatch.setattr(events.store, "STALLED_TRANSACTION_SECONDS", 1)
    url = postgres_url()
    store = EventStore(url)
    try:
        stalled = store.engine.connect()
        stalled.begin()
        store.lock_writers(stalled)  # then nothing more: the process is stopped
        log = UserLog.register("kim")
        log.add_message("user", "hello", None, 100)
        started = time.monotonic()
        store.append([log.collect_events()])  # waits for the lock until the session ends
        assert 0.5 < time.monotonic() - started < 20
        with pytest.raises(sqlalchemy.exc.DBAPIError):
            stalled.execute(sqlalchemy.text("SELECT 1"))  # its transaction is gone
        stalled.invalidate()
        loaded = store.load("kim")
        assert loaded is not None and loaded.message_count == 1
    finally:
        store.close()


@pytest.mark.parametrize(("option", "kept"), [(None, "30s"), ("0", "0"), ("5min", "5min")])
def test_a_stalled_transaction_limit_of_the_url_or_role_is_kept(
    option: str | None, kept: str
) -> None:
    """0, the server's "no limit", is a setting too when a URL or role gives it."""
    url = postgres_url()
    if option is not None:
        sep = "&" if "?" in url else "?"
        url += f"{sep}options=-c%20idle_in_transaction_session_timeout%3D{option}"
    store = EventStore(url)
    try:
        with store.engine.connect() as connection:
            setting = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
            assert setting.scalar_one() == kept
    finally:
        store.close()


@pytest.mark.parametrize("with_snapshot", [False, True], ids=["no snapshot", "a snapshot"])
def test_a_snapshot_written_while_an_erasure_of_its_log_is_under_way_waits_and_is_not_stored(
    with_snapshot: bool,
) -> None:
    """Another process's erasure of a log has deleted it and not yet committed when the
    log's owner stores a snapshot of the log it read before: the snapshot's write waits
    for the erasure to end, then finds the log gone and stores nothing; the log stays
    forgotten. It used to be stored beside the erasure, the erased state back again."""
    url = postgres_url()
    store, other = EventStore(url), EventStore(url)
    try:
        log = UserLog.register("liv")
        for n in range(4):
            log.add_message("user", f"old {n}", None, 100)
        store.append([log.collect_events()])
        if with_snapshot:
            assert store.take_snapshot(log)
        loaded = store.load("liv")
        assert loaded is not None
        with ThreadPoolExecutor(1) as pool, other.transaction() as erasure:
            other.lock_writers(erasure)
            other.forget(erasure, "liv")
            written = pool.submit(store.replace_snapshot, loaded)
            _until_waiting_on_a_lock_or_done(url, written)
        assert written.result(10) is False
        assert store.load("liv") is None
    finally:
        store.close()
        other.close()


def _until_waiting_on_a_lock_or_done(url: str, work: Future[Any]) -> None:
    """Return once a session of the server waits for a lock, or ``work`` is done."""
    server = make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(server, autocommit=True) as c:
        for _ in range(1000):
            row = c.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            if work.done() or (row is not None and row[0] > 0):
                return
            time.sleep(0.01)
    raise AssertionError("the snapshot's write neither waited for a lock nor ended in 10 s")
