"""The write path's raw floor: raw sqlite3 writes the very rows the engine's group commits
wrote (events, messages, users' rows, the messages' index), so the two figures are the
same SQL work; and each round records every stage it prints."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bench import stages
from bench.append import write_histories
from bench.common import Section
from projections import ProjectionTables, SearchIndex
from projections.columns import id_text
from projections.ranking import fts_match


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


def test_the_raw_floor_writes_the_rows_the_engine_wrote(tmp_path: Path) -> None:
    seed = tmp_path / "seed.db"
    asyncio.run(write_histories(seed, 4, 1))
    section = Section("stages", [])
    stages._round(section, tmp_path, seed, stages.Shape("test", 4, 2, 3))

    names = [name for name, _, _ in stages._STAGES]
    stats = section.stats
    for key in ("decide", "total", "raw", "raw_ratio", "rest", *names):
        assert len(stats[f"stages.test.{key}"].samples) == 1, key
    assert all(stats[f"stages.test.{key}"].samples[0] > 0 for key in ("decide", "total", "raw"))

    tables = ProjectionTables()
    engine, raw = tmp_path / "engine.db", tmp_path / "raw.db"
    messages = tables.messages.name
    seeded_events = _rows(seed, "SELECT max(id) FROM memvee_events")[0][0]
    seeded_messages = _rows(seed, f"SELECT max(id) FROM {messages}")[0][0]
    # The engine wrote a warm-up commit, then two passes of three commits; the floor
    # replays as many commits from the seed's end (two exchanges, four rows each), so
    # that every log it writes goes on in sequence.
    first_event, first_message = seeded_events, seeded_messages
    events = "SELECT originator_id, originator_version, topic, state FROM memvee_events"
    measured = f"{events} WHERE id > {first_event} AND id <= {first_event + 12} ORDER BY id"
    assert len(_rows(engine, measured)) == 12
    assert _rows(raw, f"{events} WHERE id > {seeded_events} ORDER BY id") == _rows(engine, measured)
    written = f"SELECT * FROM {messages} WHERE id > {first_message} ORDER BY id"
    assert len(_rows(raw, written)) == 12
    assert _rows(raw, written) == _rows(engine, written)[:12]
    users = f"SELECT * FROM {tables.users.name} ORDER BY log_id"
    assert _rows(raw, users) == _rows(engine, users)

    log_id = _rows(engine, f"SELECT log_id FROM {messages} WHERE id = {first_message + 1}")[0][0]
    index = SearchIndex(tables).messages_fts.name
    match = fts_match(id_text(log_id), ["lisbon"])
    found = (
        f"SELECT rowid FROM {index} WHERE {index} MATCH ? AND rowid > {first_message} "
        f"AND rowid <= {first_message + 12} ORDER BY rowid"
    )
    with sqlite3.connect(raw) as r, sqlite3.connect(engine) as e:
        raw_hits = [row[0] for row in r.execute(found, (match,))]
        engine_hits = [row[0] for row in e.execute(found, (match,))]
    assert raw_hits and raw_hits == engine_hits


def test_a_lone_user_is_measured_a_commit_per_exchange(tmp_path: Path) -> None:
    seed = tmp_path / "seed.db"
    asyncio.run(write_histories(seed, 1, 1))
    section = Section("stages", [])
    stages._round(section, tmp_path, seed, stages.Shape("lone", 1, 1, 5))
    raw, engine = tmp_path / "raw.db", tmp_path / "engine.db"
    events = "SELECT count(*) FROM memvee_events"
    assert _rows(raw, events)[0][0] + 12 == _rows(engine, events)[0][0], (
        "the raw copy replays five commits from the seed's end (two events each)"
    )
    assert section.stats["stages.lone.raw"].samples[0] > 0
