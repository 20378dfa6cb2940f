"""The event store contract on a PostgreSQL server."""

from __future__ import annotations

import time

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import make_url

import events.store
from events import EventStore, StorageError, UserLog
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
    """Have the server end every other connection to the database, as a restart does."""
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as c:
        row = c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return 0 if row is None else int(row[0])


def test_a_read_on_a_connection_the_server_dropped_is_a_storage_error() -> None:
    """A log read whose connection the server ended is a StorageError (the actor above
    retries it), and the next read opens a new connection."""
    url = postgres_url()
    store = EventStore(url)
    try:
        log = UserLog.register("kim")
        log.add_message("user", "hello", None, 100)
        store.append([log.collect_events()])
        for read, doing in (
            (lambda: store.load("kim"), "load the log"),
            (lambda: store.events_of("kim"), "read the events"),
        ):
            assert store.load("kim") is not None  # a connection in the pool
            assert _drop_other_connections(url) >= 1
            with pytest.raises(StorageError, match=f"could not {doing} of 'kim' from "):
                read()
        loaded = store.load("kim")
        assert loaded is not None and loaded.message_count == 1
        assert len(store.events_of("kim")) == 2
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
