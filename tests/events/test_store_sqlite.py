"""The event store contract on the embedded default, SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from events import EventStore, sqlite_url
from tests.events.store_contract import EventStoreContract


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return sqlite_url(tmp_path / "events.db")


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
