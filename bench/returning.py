"""Users coming back: what a write costs when the user's actor was stopped.

An actor stops after ``idle_timeout`` (60 s) without a call, and an agent's users often
write less often than that, so the first write of a visit loads the log again: from its
latest snapshot, replaying the events after it. Two scenarios, at the default durability:

- many users with a history each, their actors stopped (a fresh Memory), each writing
  one exchange, all in flight; then the same again with the actors live;
- one user writing ten exchanges per visit, the actor stopped after each visit; the
  CPU of loading the log after the last visit, which grows with the events a load
  replays (only what follows the latest snapshot).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from bench.append import ASSISTANT_TEXT, USER_TEXT, write_histories
from bench.common import (
    BenchConfig,
    InstantExtractor,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    progress,
)
from events import EventStore, sqlite_url
from memvee import Memory, MemoryConfig

__all__ = ["run"]

_VISIT_EXCHANGES = 10


async def _come_back(path: Path, users: int) -> tuple[float, float, float, float]:
    """Seconds and CPU seconds of every user's one exchange with the actors stopped, then
    of one more each with the actors live."""
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        await memory.add_exchange("someone-else", USER_TEXT, ASSISTANT_TEXT)
        figures = []
        for _ in range(2):
            cpu, wall = time.process_time(), time.perf_counter()
            ids = [f"user-{i:05d}" for i in range(users)]
            await asyncio.gather(*(memory.add_exchange(u, USER_TEXT, ASSISTANT_TEXT) for u in ids))
            figures += [time.perf_counter() - wall, time.process_time() - cpu]
    return figures[0], figures[1], figures[2], figures[3]


async def _visits(path: Path, visits: int) -> None:
    """One user's visits of ten exchanges, the actor stopped after each."""
    config = MemoryConfig(db_path=str(path), durability="normal")
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        engine = memory._engine
        assert engine is not None
        for _ in range(visits):
            for _ in range(_VISIT_EXCHANGES):
                await memory.add_exchange("visitor", USER_TEXT, ASSISTANT_TEXT)
            engine.directory.passivate_idle(older_than=0)
            for _ in range(10_000):  # the actor stops once it has handled its last call
                if not memory.live_actor_count:
                    break
                await asyncio.sleep(0.001)


def _copy(source: Path, target: Path) -> None:
    """A copy of a SQLite database, through SQLite's online backup."""
    with closing(sqlite3.connect(source)) as read, closing(sqlite3.connect(target)) as write:
        read.backup(write)


def _load_cpu(path: Path, repeat: int = 5) -> tuple[float, int, int]:
    """The least CPU seconds of loading the visitor's log; its version and snapshot's."""
    store = EventStore(sqlite_url(path))
    try:
        best = float("inf")
        for _ in range(repeat):
            started = time.thread_time()
            loaded = store.load_log("visitor")
            best = min(best, time.thread_time() - started)
        assert loaded.log is not None
        return best, loaded.log.version, loaded.snapshot_version
    finally:
        store.close()


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """One table: the returning users' write beside the live one, and the visitor's load."""
    users, history = cfg.pick(1_000, 200), cfg.pick(50, 20)
    visits = cfg.pick(100, 20)
    section = Section(
        "Users coming back after their actors stopped (the first write loads the log)",
        ["scenario", "ms for all", "CPU µs / exchange"],
    )
    with workspace.scratch("returning") as folder:
        progress(f"returning: {users:,} users' histories of {history} exchanges")
        base = folder / "histories.db"
        asyncio.run(write_histories(base, users, history, durability="normal"))
        for round_no in range(1, cfg.rounds + 1):
            progress(f"returning round {round_no}/{cfg.rounds}")
            with workspace.scratch("visit") as copy:
                path = copy / "m.db"
                _copy(base, path)
                back, back_cpu, live, live_cpu = asyncio.run(_come_back(path, users))
            section.stat("returning.back_ms", "ms").add(back * 1000)
            section.stat("returning.back_us", "µs").add(back_cpu / users * 1e6)
            section.stat("returning.live_ms", "ms").add(live * 1000)
            section.stat("returning.live_us", "µs").add(live_cpu / users * 1e6)
        progress(f"returning: one user's {visits} visits of {_VISIT_EXCHANGES} exchanges")
        visited = folder / "visits.db"
        asyncio.run(_visits(visited, visits))
        load_cpu, version, snapshot = _load_cpu(visited)
    stats = section.stats
    section.rows += [
        [
            f"{users:,} users x {history} exchanges of history, actors stopped: one exchange each",
            cell(stats["returning.back_ms"], fmt_ms),
            cell(stats["returning.back_us"], fmt_num),
        ],
        [
            "the same users again, actors live",
            cell(stats["returning.live_ms"], fmt_ms),
            cell(stats["returning.live_us"], fmt_num),
        ],
    ]
    section.notes.append(
        f"One user, {visits} visits of {_VISIT_EXCHANGES} exchanges with the actor stopped "
        f"after each: loading the log of {version:,} events (snapshot at {snapshot:,}) "
        f"takes {load_cpu * 1e6:,.0f} µs of CPU. Nothing is extracted, so every message "
        "stays in the log's state and its snapshots grow with it."
    )
    return [section]
