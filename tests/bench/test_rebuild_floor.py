"""The rebuild's physical floor: raw sqlite3 writes exactly what a rebuild wrote, so the
floor's rate is that of the same SQL work and nothing less."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.rebuild import _build_users, _raw_write, _rebuilt_rows
from events import EventStore, sqlite_url
from projections import ProjectionTables, SearchIndex, rebuild
from projections.ranking import fts_match
from projections.tables import LIVE_PREFIX


def _counts(path: Path, names: list[str]) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        return {n: connection.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}


def test_the_floor_writes_every_row_the_rebuild_wrote_and_its_index_finds_the_same(
    tmp_path: Path,
) -> None:
    source = tmp_path / "users.db"
    written = _build_users(source, 3, 40)
    store = EventStore(sqlite_url(source), durability="normal")
    try:
        assert rebuild(store) == written
        log_id = str(store.events_of("user-1")[0].originator_id)
    finally:
        store.close()
    tables = ProjectionTables(LIVE_PREFIX)
    names = [t.name for t in tables.metadata.sorted_tables]
    seconds = _raw_write(source, tmp_path, _rebuilt_rows(source))

    floor = tmp_path / "floor.db"
    assert seconds > 0
    assert _counts(floor, names) == _counts(source, names)
    assert _counts(source, [tables.messages.name, tables.knowledge.name]) == {
        tables.messages.name: 90,
        tables.knowledge.name: 9,
    }
    messages = SearchIndex(tables).messages_fts.name
    query = f"SELECT rowid FROM {messages} WHERE {messages} MATCH ? ORDER BY rowid"
    match = fts_match(log_id, ["lisbon"])
    hits = {}
    for path in (source, floor):
        with sqlite3.connect(path) as connection:
            hits[path] = [r[0] for r in connection.execute(query, (match,))]
    assert len(hits[source]) == 30
    assert hits[floor] == hits[source]
