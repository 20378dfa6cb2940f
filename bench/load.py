"""Loading one user's log of 10,000 and 100,000 events, with and without snapshots.

The history is written straight through :class:`events.EventStore` (the actors would take
minutes): cycles of ten messages, a ProcessingStarted and a KnowledgeExtracted with one
fact, so the aggregate's state stays as small as the engine keeps it. One snapshot is
taken 50 events before the end (the engine snapshots every 100 events, so a load replays
50 events after its snapshot on average). A copy of the database with an empty snapshots
table gives the "without" case. Each load is set beside raw sqlite3 reading the same rows.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

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
from bench.reference import open_reader, raw_read_log
from events import EventStore, ExtractedFact, UserLog, sqlite_url, user_log_id

__all__ = ["History", "build_histories", "run"]

SNAPSHOT_TAIL = 50
"""Events appended after the snapshot, as on average in the engine (interval 100)."""

_CHUNK_EVENTS = 5000
_MESSAGES_PER_TASK = 10


@dataclass(frozen=True, slots=True)
class History:
    """One user's log written for the benchmark."""

    user_id: str
    events: int
    snapshot_version: int
    snapshot_bytes: int


def _write_history(store: EventStore, user_id: str, target: int) -> History:
    """Append about ``target`` events for ``user_id`` and snapshot 50 events before the end."""
    log = UserLog.register(user_id)
    pending = list(log.collect_events())
    snapshot_version = 0
    cycle = 0
    per_cycle = _MESSAGES_PER_TASK + 3
    while log.version < target:
        if not snapshot_version and log.version + per_cycle > target - SNAPSHOT_TAIL:
            store.append([pending])
            pending = []
            store.take_snapshot(log)
            snapshot_version = log.version
        cycle += 1
        task_id = f"task-{cycle}"
        ids = [
            log.add_message(
                "user" if i % 2 == 0 else "assistant",
                f"message {i} of cycle {cycle}: I live in Lisbon and I love long walks.",
                None,
                10_000,
            )
            for i in range(_MESSAGES_PER_TASK)
        ]
        log.request_processing(task_id, "auto")
        log.start_next()
        log.record_knowledge(task_id, [ExtractedFact(f"fact of cycle {cycle}", (ids[0],))], "bench")
        pending.extend(log.collect_events())
        if len(pending) >= _CHUNK_EVENTS:
            store.append([pending])
            pending = []
    if pending:
        store.append([pending])
    return History(user_id, log.version, snapshot_version, 0)


def build_histories(folder: Path, sizes: list[int]) -> tuple[Path, Path, list[History]]:
    """Write one log per size; returns the database with snapshots, a copy without, and
    the histories (with the byte size of each snapshot)."""
    with_snapshots = folder / "with-snapshots.db"
    without = folder / "without-snapshots.db"
    store = EventStore(sqlite_url(with_snapshots), durability="normal")
    try:
        histories = []
        for size in sizes:
            progress(f"load: writing a history of {size:,} events")
            histories.append(_write_history(store, f"history-{size}", size))
    finally:
        store.close()
    connection = sqlite3.connect(with_snapshots)
    try:
        sized = []
        for history in histories:
            found = connection.execute(
                "SELECT length(state) FROM memvee_snapshots WHERE originator_id = ?",
                (user_log_id(history.user_id).bytes,),
            ).fetchone()
            sized.append(replace(history, snapshot_bytes=int(found[0])))
        connection.execute("VACUUM INTO ?", (str(without),))
    finally:
        connection.close()
    copy = sqlite3.connect(without)
    try:
        copy.execute("DELETE FROM memvee_snapshots")
        copy.commit()
    finally:
        copy.close()
    return with_snapshots, without, sized


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Build the histories once, then time loads in rounds; returns one table."""
    sizes = [cfg.pick(10_000, 1_000), cfg.pick(100_000, 10_000)]
    section = Section(
        "Loading one user's log (EventStore.load), beside raw sqlite3 reading the same rows",
        [
            "events",
            "snapshot\nbytes",
            "with snapshot\nms",
            "raw read\nms",
            "÷ raw",
            "without snapshot\nms",
            "raw read\nms",
            "÷ raw",
            "without ÷ with",
        ],
    )
    with workspace.scratch("load") as folder:
        path_with, path_without, histories = build_histories(folder, sizes)
        store_with = EventStore(sqlite_url(path_with))
        store_without = EventStore(sqlite_url(path_without))
        raw_with = open_reader(path_with)
        raw_without = open_reader(path_without)
        try:
            for history in histories:
                loaded = store_with.load(history.user_id)
                if loaded is None or loaded.version != history.events:
                    section.notes.append(
                        f"{history.user_id}: loaded {loaded and loaded.version}, "
                        f"wrote {history.events} events"
                    )
            for round_no in range(1, cfg.rounds + 1):
                progress(f"load round {round_no}/{cfg.rounds}")
                for history in histories:
                    _measure(section, history, store_with, store_without, raw_with, raw_without)
                small, large = histories[0], histories[-1]
                section.stat("load.flat", "x").add(
                    section.stats[f"load.{large.events}.snap"].samples[-1]
                    / section.stats[f"load.{small.events}.snap"].samples[-1]
                )
        finally:
            raw_with.close()
            raw_without.close()
            store_with.close()
            store_without.close()
    for history in histories:
        key = f"load.{history.events}"
        stats = section.stats
        section.rows.append(
            [
                fmt_num(history.events),
                fmt_num(history.snapshot_bytes),
                cell(stats[f"{key}.snap"], fmt_ms),
                cell(stats[f"{key}.snap_raw"], fmt_ms),
                cell(stats[f"{key}.snap_ratio"], fmt_ratio),
                cell(stats[f"{key}.nosnap"], fmt_ms),
                cell(stats[f"{key}.nosnap_raw"], fmt_ms),
                cell(stats[f"{key}.nosnap_ratio"], fmt_ratio),
                fmt_ratio(stats[f"{key}.nosnap"].median / stats[f"{key}.snap"].median),
            ]
        )
    section.facts["sizes"] = ",".join(str(h.events) for h in histories)
    section.notes.append(
        f"Snapshot taken {SNAPSHOT_TAIL} events before the end; 'with snapshot' is the median "
        "of 20 loads per round, 'without' of 3 (1 above 20,000 events). Raw read = one "
        "sqlite3 query for the snapshot row plus one for the events after it, no decoding."
    )
    return [section]


def _measure(
    section: Section,
    history: History,
    store_with: EventStore,
    store_without: EventStore,
    raw_with: sqlite3.Connection,
    raw_without: sqlite3.Connection,
) -> None:
    key = f"load.{history.events}"
    log_id = user_log_id(history.user_id)
    user = history.user_id
    store_with.load(user)
    snap = _median_seconds(lambda: store_with.load(user), 20) * 1000
    snap_raw = _median_seconds(lambda: raw_read_log(raw_with, log_id, use_snapshot=True), 20)
    repeat = 1 if history.events > 20_000 else 3
    nosnap = _median_seconds(lambda: store_without.load(user), repeat) * 1000
    nosnap_raw = _median_seconds(
        lambda: raw_read_log(raw_without, log_id, use_snapshot=False), repeat
    )
    section.stat(f"{key}.snap", "ms").add(snap)
    section.stat(f"{key}.snap_raw", "ms").add(snap_raw * 1000)
    section.stat(f"{key}.snap_ratio", "x").add(snap / (snap_raw * 1000))
    section.stat(f"{key}.nosnap", "ms").add(nosnap)
    section.stat(f"{key}.nosnap_raw", "ms").add(nosnap_raw * 1000)
    section.stat(f"{key}.nosnap_ratio", "x").add(nosnap / (nosnap_raw * 1000))
