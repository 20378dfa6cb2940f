"""The projector's stored position on SQLite: tables that follow the log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from events import EventStore, sqlite_url
from memvee import Memory, MemoryConfig
from projections import ProjectionTables, Projector, catch_up
from tests.support.extractors import RecordingExtractor


def _count_position_writes(path: Path) -> None:
    """Make every change to a row of the position table leave a row in ``position_writes``."""
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE position_writes (name TEXT);"
            "CREATE TRIGGER position_updated AFTER UPDATE ON mv_position "
            "BEGIN INSERT INTO position_writes VALUES (NEW.name); END;"
        )


def _position_writes(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [name for (name,) in connection.execute("SELECT name FROM position_writes")]


async def test_lone_writes_on_sqlite_write_no_position_once_the_tables_follow_the_log(
    tmp_path: Path,
) -> None:
    """The first write finds the tables folded to the end of the log and makes them follow
    it; the writes after it leave the position table alone (a page less per commit)."""
    path = tmp_path / "memvee.db"
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")
        _count_position_writes(path)
        for turn in range(5):
            await memory.add_exchange("ann", f"I have {turn} cats", "ok")
    # The full-text index's own mark moves when it indexes the waiting messages, in bulk.
    assert [name for name in _position_writes(path) if name != "messages_indexed"] == []


async def test_tables_that_follow_the_log_are_folded_to_its_last_event_and_nothing_is_caught_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "memvee.db"
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=RecordingExtractor()) as memory:
        for user in ("ann", "bob", "ann"):
            await memory.add_exchange(user, "I live in Oslo", "ok")
    store = EventStore(sqlite_url(path))
    tables = ProjectionTables()
    with store.engine.connect() as connection:
        state = Projector(tables).state(connection)
    assert not state.rebuilding and state.position == store.max_position()
    assert catch_up(store, tables) == 0
    store.close()


async def test_a_write_on_tables_behind_the_log_moves_their_position_and_does_not_follow_it(
    tmp_path: Path,
) -> None:
    """Tables short of the events before a write do not count every event as folded."""
    path = tmp_path / "memvee.db"
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")
        with sqlite3.connect(path) as connection:
            connection.execute(
                "UPDATE mv_position SET name = 'projections', position = 1 WHERE name = 'following'"
            )
        await memory.add_exchange("ann", "I have a cat", "ok")
    store = EventStore(sqlite_url(path))
    with store.engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT name, position FROM mv_position").all())
    assert "following" not in rows and rows["projections"] == store.max_position()
    store.close()
