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
