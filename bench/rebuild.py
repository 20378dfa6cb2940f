"""Rebuilding the projections from the log, and replaying one user's state at a version.

The log is written straight through :class:`events.EventStore`, with the live projections
folded in the same transactions (as the engine does): 1,000 users of 100 events each
(quick: 100 users). :func:`projections.rebuild` then drops and refolds every projection
and is set beside raw sqlite3 reading the same event rows, in the same run. The second
measurement replays one user of 100,000 events (quick: 10,000) up to about half of its
log with :func:`projections.state_at`, the engine of ``memvee state USER --at VERSION``,
from the checkpoints the engine stores as a log grows, and from nothing.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy.engine import default

from bench.common import (
    BenchConfig,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    progress,
)
from bench.load import build_histories
from bench.stages import Stages, timing
from events import EventStore, ExtractedFact, UserLog, sqlite_url
from memvee import MemoryConfig
from projections import (
    ProjectionTables,
    Projector,
    rebuild,
    replay_checkpoints,
    state_at,
    take_checkpoint,
)
from projections.columns import id_text
from projections.projector import Projector as _Projector
from projections.rebuild import PAGE_SIZE as REBUILD_PAGE
from projections.search import SearchIndex, owned_words, spoken
from projections.sink import TableSink

__all__ = ["REBUILD_STAGES", "rebuild_breakdown", "run"]

_CHUNK_EVENTS = 5000
_MESSAGES_PER_TASK = 10
_RAW_PAGE = 2000
_RAW_QUERY = (
    "SELECT id, originator_id, originator_version, topic, state FROM memvee_events ORDER BY id"
)


_rebuild_module = sys.modules["projections.rebuild"]
_projector_module = sys.modules["projections.projector"]

REBUILD_STAGES: Stages = (
    ("read + decode a page of the log", _rebuild_module, "_read_page"),
    ("fold (projections.folds)", _projector_module, "_folded"),
    ("write the net rows", TableSink, "write"),
    ("index entries' words", SearchIndex, "write"),
    ("read messages, cut and stem their words", SearchIndex, "bodies"),
    ("insert messages' words (FTS5)", SearchIndex, "write_bodies"),
    ("check a page read ahead still holds", _rebuild_module._Ahead, "holds"),
    ("check messages read ahead still wait", SearchIndex, "still_waiting"),
    ("commit", default.DefaultDialect, "do_commit"),
    ("drop and make the tables", _Projector, "begin_rebuild"),
    ("build the deferred indexes", _Projector, "finish_rebuild"),
)
"""Where a rebuild's CPU goes: each stage's name and the function timed for it (none of
them calls another)."""


def rebuild_breakdown(store: EventStore) -> tuple[int, dict[str, int]]:
    """One more rebuild of ``store``, timing the CPU of each of :data:`REBUILD_STAGES`
    (nanoseconds, ``rest`` being what no stage took); returns the events folded too."""
    spent: dict[str, int] = defaultdict(int)
    started = time.thread_time_ns()
    with timing(spent, REBUILD_STAGES):
        folded = rebuild(store)
    total = time.thread_time_ns() - started
    breakdown = {name: spent[name] for name, _, _ in REBUILD_STAGES}
    breakdown["rest"] = total - sum(breakdown.values())
    breakdown["total"] = total
    return folded, breakdown


def _user_events(user_id: str, target: int) -> list[Any]:
    """Exactly ``target`` events of one user: messages, with a processed task every ten."""
    log = UserLog.register(user_id)
    cycle = 0
    ids: list[str] = []
    while log.version < target:
        ids.append(
            log.add_message(
                "user" if len(ids) % 2 == 0 else "assistant",
                f"message {len(ids)} of {user_id}: I live in Lisbon and I love long walks.",
                None,
                10_000,
            )
        )
        if len(ids) == _MESSAGES_PER_TASK and log.version + 3 <= target:
            cycle += 1
            task_id = f"{user_id}-task-{cycle}"
            log.request_processing(task_id, "auto")
            log.start_next()
            log.record_knowledge(
                task_id, [ExtractedFact(f"fact of cycle {cycle}", (ids[0],))], "bench"
            )
            ids = []
    return list(log.collect_events())


def _build_users(path: Path, users: int, per_user: int) -> int:
    """Write ``users`` logs of ``per_user`` events, folding the live projections as they go."""
    store = EventStore(sqlite_url(path), durability="normal")
    projector = Projector(ProjectionTables())
    written = 0
    try:
        with store.transaction() as connection:
            projector.create(connection)
        pending: list[list[Any]] = []
        size = 0
        for n in range(users):
            batch = _user_events(f"user-{n}", per_user)
            pending.append(batch)
            size += len(batch)
            if size >= _CHUNK_EVENTS:
                store.append(pending, projector.apply)
                written += size
                pending, size = [], 0
        if pending:
            store.append(pending, projector.apply)
            written += size
    finally:
        store.close()
    return written


def _raw_read(path: Path) -> int:
    """Every event row, in order, through stdlib sqlite3 in pages; returns the row count."""
    connection = sqlite3.connect(path)
    try:
        cursor = connection.execute(_RAW_QUERY)
        rows = 0
        while page := cursor.fetchmany(_RAW_PAGE):
            rows += len(page)
        return rows
    finally:
        connection.close()


def _rebuilt_rows(path: Path) -> tuple[list[str], list[tuple[str, list[tuple[Any, ...]]]]]:
    """What a rebuild of ``path`` wrote: the projection tables' schema (tables, indexes,
    full-text tables) and every row of each (messages' index bodies as the index reads them;
    entries' index rows as stored), for :func:`_raw_write`."""
    tables = ProjectionTables()
    search = SearchIndex(tables)
    fts = {search.knowledge_fts.name, search.messages_fts.name}
    connection = sqlite3.connect(path)
    try:
        schema = [
            sql
            for name, sql in connection.execute(
                "SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL AND "
                "(tbl_name LIKE 'mv!_%' ESCAPE '!') ORDER BY type DESC"
            )
            if not any(name.startswith(f"{f}_") for f in fts)
        ]
        rows: list[tuple[str, list[tuple[Any, ...]]]] = []
        for table in tables.metadata.sorted_tables:
            names = ", ".join(c.name for c in table.columns)
            found = connection.execute(f"SELECT {names} FROM {table.name}").fetchall()
            marks = ", ".join("?" for _ in table.columns)
            rows.append((f"INSERT INTO {table.name} ({names}) VALUES ({marks})", found))
        k = search.knowledge_fts.name
        entries = connection.execute(f"SELECT owner, body, item_id FROM {k}").fetchall()
        rows.append((f"INSERT INTO {k} (owner, body, item_id) VALUES (?, ?, ?)", entries))
        bodies = [
            (number, owned_words(id_text(log_id), spoken(content, name)))
            for number, log_id, content, name in connection.execute(
                f"SELECT id, log_id, content, name FROM {tables.messages.name}"
            )
        ]
        m = search.messages_fts.name
        rows.append((f"INSERT INTO {m} (rowid, body) VALUES (?, ?)", bodies))
    finally:
        connection.close()
    return schema, rows


def _raw_write(path: Path, folder: Path, rebuilt: tuple[list[str], list[Any]]) -> float:
    """The physical floor of a rebuild: stdlib sqlite3 reading every event row, then writing
    the rows the rebuild wrote, ready made, into empty tables of the same schema (WAL,
    synchronous=NORMAL as the rebuild's store), a commit per page; returns seconds."""
    schema, tables = rebuilt
    target = folder / "floor.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    writer = sqlite3.connect(target, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            writer.execute(statement)
        started = time.perf_counter()
        _raw_read(path)
        for insert, rows in tables:
            for start in range(0, len(rows), REBUILD_PAGE):
                writer.execute("BEGIN")
                writer.executemany(insert, rows[start : start + REBUILD_PAGE])
                writer.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        writer.close()


def _rebuild_rounds(cfg: BenchConfig, workspace: Workspace, section: Section) -> tuple[int, int]:
    users = cfg.pick(1_000, 100)
    per_user = 100
    with workspace.scratch("rebuild") as folder:
        path = folder / "users.db"
        progress(f"rebuild: writing {users:,} users of {per_user} events")
        written = _build_users(path, users, per_user)
        store = EventStore(sqlite_url(path), durability="normal")
        try:
            for round_no in range(1, cfg.rounds + 1):
                progress(f"rebuild round {round_no}/{cfg.rounds}")
                started = time.perf_counter()
                rows = _raw_read(path)
                raw_s = time.perf_counter() - started
                started = time.perf_counter()
                folded = rebuild(store)
                rebuild_s = time.perf_counter() - started
                if folded != written or rows != written:
                    section.notes.append(
                        f"round {round_no}: wrote {written:,} events, rebuild folded "
                        f"{folded:,}, raw read {rows:,}"
                    )
                section.stat("rebuild.rate", "events/s").add(folded / rebuild_s)
                section.stat("rebuild.raw_rate", "rows/s").add(rows / raw_s)
                section.stat("rebuild.seconds", "s").add(rebuild_s)
                section.stat("rebuild.ratio", "x").add((folded / rebuild_s) / (rows / raw_s))
                floor_s = _raw_write(path, folder, _rebuilt_rows(path))
                section.stat("rebuild.floor_rate", "events/s").add(rows / floor_s)
                section.stat("rebuild.floor_ratio", "x").add(raw_s / floor_s)
            progress("rebuild: one more round, timing each stage's CPU")
            started = time.thread_time_ns()
            rows = _raw_read(path)
            raw_ns = time.thread_time_ns() - started
            folded, breakdown = rebuild_breakdown(store)
            for name, spent in breakdown.items():
                section.stat(f"rebuild.cpu.{name}", "µs").add(spent / folded / 1e3)
            section.stat("rebuild.cpu.raw_read", "µs").add(raw_ns / rows / 1e3)
        finally:
            store.close()
    return users, written


def _breakdown_section(stats: dict[str, Any]) -> Section:
    """The CPU per event of each stage of the instrumented rebuild."""
    section = Section(
        "Where a rebuild's CPU goes (one more rebuild, each stage's CPU timed)",
        ["stage", "CPU µs\nper event", "share"],
    )
    total = stats["rebuild.cpu.total"].median
    for name in [name for name, _, _ in REBUILD_STAGES] + ["rest", "total"]:
        spent = stats[f"rebuild.cpu.{name}"].median
        section.rows.append([name, fmt_num(spent, 2), f"{spent / total:.0%}"])
    raw = stats["rebuild.cpu.raw_read"].median
    section.rows.append(["raw SELECT of the same rows", fmt_num(raw, 2), f"{raw / total:.0%}"])
    section.notes.append(
        "CPU of the rebuild's thread (time.thread_time), so a busy machine inflates it "
        "less than the wall clock. 'rest' is what no stage took: the loop, positions, "
        "transactions' other statements. Timing each call adds a little to each stage."
    )
    return section


def _state_at_rounds(cfg: BenchConfig, workspace: Workspace, section: Section) -> tuple[int, int]:
    """Replay one long log to its middle and to its end (the worst case, the target): from
    the checkpoints the engine would have stored as the log grew, and from nothing."""
    size = cfg.pick(100_000, 10_000)
    rounds = cfg.pick(3, 2)
    interval = MemoryConfig().checkpoint_interval
    with workspace.scratch("state-at") as folder:
        path, _, histories = build_histories(folder, [size])
        history = histories[0]
        middle = history.events // 2
        store = EventStore(sqlite_url(path))
        try:
            tables = ProjectionTables()
            with store.transaction() as connection:
                Projector(tables).create(connection)
            checkpoints = replay_checkpoints(tables)
            progress(f"state --at: a checkpoint every {interval:,} events, as the engine takes")
            started = time.perf_counter()
            for at in range(interval, history.events + 1, interval):
                take_checkpoint(store, history.user_id, checkpoints, version=at)
            taking = time.perf_counter() - started
            section.stat("state_at.checkpoint_us", "µs").add(taking / history.events * 1e6)
            with sqlite3.connect(path) as connection:
                stored = connection.execute(
                    f"SELECT count(*), sum(length(state)) FROM {tables.checkpoints.name}"
                ).fetchone()
            section.facts["state_at.checkpoints"] = f"{stored[0]},{stored[1]}"
            for round_no in range(1, rounds + 1):
                progress(f"state --at round {round_no}/{rounds}")
                for version, stat in ((middle, "middle_ms"), (None, "ms")):
                    for kept, prefix in ((checkpoints, "state_at."), (None, "state_at.nothing_")):
                        started = time.perf_counter()
                        state = state_at(store, history.user_id, version=version, checkpoints=kept)
                        elapsed = time.perf_counter() - started
                        if state.version != (version or history.events):
                            section.notes.append(f"state_at reached version {state.version}")
                        section.stat(prefix + stat, "ms").add(elapsed * 1000)
        finally:
            store.close()
    return history.events, middle


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Time a full rebuild against a raw read, then ``state_at`` on one long log."""
    rebuild_section = Section(
        "Rebuilding every projection (projections.rebuild), beside raw sqlite3 reading the "
        "same event rows",
        [
            "users",
            "events",
            "rebuild\ns",
            "rebuild\nevents/s",
            "raw SELECT\nrows/s",
            "÷ raw",
            "raw write floor\nevents/s",
            "floor\n÷ raw",
        ],
    )
    users, written = _rebuild_rounds(cfg, workspace, rebuild_section)
    stats = rebuild_section.stats
    rebuild_section.rows.append(
        [
            fmt_num(users),
            fmt_num(written),
            cell(stats["rebuild.seconds"], lambda v: fmt_num(v, 2)),
            cell(stats["rebuild.rate"], fmt_num),
            cell(stats["rebuild.raw_rate"], fmt_num),
            cell(stats["rebuild.ratio"], fmt_ratio),
            cell(stats["rebuild.floor_rate"], fmt_num),
            cell(stats["rebuild.floor_ratio"], fmt_ratio),
        ]
    )
    rebuild_section.facts["rebuild.events"] = str(written)
    rebuild_section.notes.append(
        "Rebuild drops and refolds every live projection from the log (pages of "
        f"{REBUILD_PAGE:,} events, one transaction each). Raw SELECT = stdlib sqlite3 "
        "fetching every event row "
        f"(id, originator_id, originator_version, topic, state) in pages of {_RAW_PAGE:,}, "
        "no decoding. Median of the rounds, each round reads then rebuilds."
    )
    rebuild_section.notes.append(
        "Raw write floor = stdlib sqlite3 doing only the SQL a rebuild cannot avoid: the "
        "same raw read, then inserting the rows the rebuild wrote (every projection table "
        "and both full-text indexes, their text already tokenized), ready made, into empty "
        "tables of the same schema, a commit per page; no decoding, folding or tokenizing. "
        "'floor ÷ raw' is the best ratio a rebuild that writes its rows can reach."
    )
    breakdown_section = _breakdown_section(stats)
    state_section = Section(
        "Replaying one user's state at a version (projections.state_at, as `memvee state --at`)",
        ["events in log", "at version", "from checkpoints\nms", "from nothing\nms"],
    )
    events, middle = _state_at_rounds(cfg, workspace, state_section)
    stats = state_section.stats
    for version, stat in ((middle, "middle_ms"), (events, "ms")):
        state_section.rows.append(
            [
                fmt_num(events),
                fmt_num(version),
                cell(stats["state_at." + stat], fmt_ms),
                cell(stats["state_at.nothing_" + stat], fmt_ms),
            ]
        )
    state_section.facts["state_at.events"] = str(events)
    count, size = state_section.facts["state_at.checkpoints"].split(",")
    state_section.notes.append(
        f"Median of {cfg.pick(3, 2)} replays, folded in memory (the live projections are "
        "not touched); the target is judged on the replay to the end of the log, from the "
        f"checkpoints the engine stores (every {MemoryConfig().checkpoint_interval:,} "
        "events, in the background). Taking them cost "
        f"{fmt_num(stats['state_at.checkpoint_us'].median, 1)} µs per event of "
        f"the log; the user keeps {count} of them, {int(size) / 1e6:.2f} MB in all."
    )
    return [rebuild_section, breakdown_section, state_section]
