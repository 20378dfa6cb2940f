"""Where the wall time of ONE sequential add_exchange goes, hop by hop (not a section).

``python -m bench.hops [EXCHANGES]``: one user writes ``EXCHANGES`` exchanges (400 by
default) in sequence, at the default durability (WAL, synchronous=FULL), as the peer
scenario's one user does, in blocks taking turns with blocks of raw sqlite3 two-row
commits (the reference of issue 13). Every exchange is stamped with
``time.perf_counter_ns`` (and the stamping thread's CPU clock) where it crosses a hop:
the event loop's outbox, the actor thread taking the message, the decision, the
committer's write, the events' insert, the fold, the driver's COMMIT, the settling, the
loop's inbox and the caller resuming. It prints each hop's median wall time and, where
both stamps are taken on the same thread, its median CPU: a hop whose wall is near its
CPU is work, one far above it is waiting (a thread waking, the GIL, the disk).

The stamps wrap functions by replacing them on their classes for the run (and putting
them back), so the run costs a few µs more per exchange than an unstamped one.

``python -m bench hops`` prints the same as a section, with the pages each commit wrote
(the write-ahead log's frames, read off a side connection's checkpoint after each block)
for memvee and for the raw commits, and the time above raw split into the driver's
COMMIT, Python on the actor's thread, and the hand-overs between threads and the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine.default import DefaultDialect

from actors._bridge import LoopInbox
from actors._committer import GroupCommitter
from actors._dispatcher import PooledActor
from actors.directory import _Outbox
from actors.user_actor import UserActor
from bench.append import ASSISTANT_TEXT, USER_TEXT
from bench.common import (
    BenchConfig,
    InstantExtractor,
    Section,
    Workspace,
    cell,
    fmt_num,
    fmt_ratio,
    fmt_us,
    progress,
)
from bench.reference import raw_commits
from events.store import EventStore
from memvee import Memory, MemoryConfig

__all__ = ["HOPS", "ORDER", "Hops", "main", "measure", "run", "stamped"]

HOPS: tuple[tuple[str, type, str, str | None], ...] = (
    ("loop: outbox sends", _Outbox, "_turn", None),
    ("actor thread takes it", PooledActor, "_handle_envelope", None),
    ("actor: decide", UserActor, "add_checked_messages", None),
    ("committer: write", GroupCommitter, "_write", None),
    ("store: append", EventStore, "append", "store: appended"),
    ("store: insert events", EventStore, "_write", "store: events inserted"),
    ("fold the projections", GroupCommitter, "_fold", "folded"),
    ("driver COMMIT", DefaultDialect, "do_commit", "committed"),
    ("result posted to the loop", LoopInbox, "post", None),
    ("loop: inbox drained", LoopInbox, "_drain", None),
)
"""(stamp, class, function, stamp on return): stamped on the function's first call of an
exchange. The committer's return is not stamped: a group commit's acknowledgements reach the
loop before ``_write`` returns, so the caller may resume first."""

ORDER = (
    "caller: add_exchange",
    "loop: outbox sends",
    "actor thread takes it",
    "actor: decide",
    "committer: write",
    "store: append",
    "store: insert events",
    "store: events inserted",
    "fold the projections",
    "folded",
    "driver COMMIT",
    "committed",
    "store: appended",
    "result posted to the loop",
    "loop: inbox drained",
    "caller: resumed",
)
"""The stamps in the order an exchange meets them."""

HANDOVERS = (
    ("loop: outbox sends", "actor thread takes it"),
    ("result posted to the loop", "loop: inbox drained"),
    ("loop: inbox drained", "caller: resumed"),
)
"""The hops where an exchange waits for another thread or the loop to wake and take it."""

_BLOCK = 50
_RAW_FILE = "raw-full-2-events.db"  # where bench.reference.raw_commits writes these commits


class _Stamps:
    """The stamps of the exchange under way, by name: (wall ns, thread CPU ns, thread)."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[int, int, int]] | None = None

    def stamp(self, name: str) -> None:
        current = self.current
        if current is not None and name not in current:
            current[name] = (time.perf_counter_ns(), time.thread_time_ns(), threading.get_ident())


@contextmanager
def stamped(stamps: _Stamps) -> Iterator[None]:
    """Stamp every hop of :data:`HOPS` while the block runs."""
    with ExitStack() as stack:
        for before, owner, attribute, after in HOPS:
            original = getattr(owner, attribute)
            setattr(owner, attribute, _wrapped(original, stamps, before, after))
            stack.callback(setattr, owner, attribute, original)
        yield


def _wrapped(
    function: Callable[..., Any], stamps: _Stamps, before: str, after: str | None
) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamps.stamp(before)
        try:
            return function(*args, **kwargs)
        finally:
            if after is not None:
                stamps.stamp(after)

    return wrapped


@dataclass(slots=True)
class Hops:
    """One run's stamps of every exchange, the raw commits' latencies (s), and the pages
    (write-ahead log frames) each block of commits wrote, per commit."""

    rows: list[dict[str, tuple[int, int, int]]] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)
    raw_frames: list[float] = field(default_factory=list)

    def names(self) -> list[str]:
        """The stamps every exchange met, in order."""
        return [name for name in ORDER if all(name in row for row in self.rows)]

    def wall(self, start: str, end: str) -> float:
        """The median µs from ``start`` to ``end``."""
        return statistics.median((r[end][0] - r[start][0]) / 1000 for r in self.rows)

    def cpu(self, start: str, end: str) -> float | None:
        """The median CPU µs from ``start`` to ``end`` where most exchanges took both
        stamps on one thread, else ``None``."""
        same = [(r[end][1] - r[start][1]) / 1000 for r in self.rows if r[end][2] == r[start][2]]
        return statistics.median(same) if len(same) * 2 > len(self.rows) else None


def _checkpoint(side: sqlite3.Connection) -> tuple[int, bool]:
    """A passive checkpoint: the frames in the write-ahead log, and whether it copied them
    all back (the next commit then writes the log from its start again)."""
    busy, frames, copied = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return max(0, int(frames)), not busy and copied == frames


def _side(path: Path) -> sqlite3.Connection:
    side = sqlite3.connect(path, isolation_level=None, timeout=30)
    side.execute("PRAGMA journal_mode=WAL")
    return side


def _raw_pages(folder: Path, transactions: int) -> float:
    """The pages a raw two-row commit writes, counted apart from the timed blocks: a
    connection held open on its file would keep its log between blocks."""
    with closing(_side(folder / _RAW_FILE)) as side:
        before, emptied = _checkpoint(side)
        raw_commits(folder, synchronous="FULL", rows=2, transactions=transactions, warmup=0)
        after, _ = _checkpoint(side)
    return (after if emptied else after - before) / transactions


async def _exchanges(folder: Path, count: int, block_size: int = _BLOCK) -> Hops:
    stamps = _Stamps()
    hops = Hops()
    config = MemoryConfig(db_path=str(folder / "hops.db"))
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        for _ in range(50):
            await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
        with closing(_side(folder / "hops.db")) as side, stamped(stamps):
            done = 0
            while done < count:
                block = min(block_size, count - done)
                hops.raw += raw_commits(
                    folder, synchronous="FULL", rows=2, transactions=block, warmup=5
                ).latencies
                before, emptied = _checkpoint(side)
                for _ in range(block):
                    stamps.current = {}
                    stamps.stamp("caller: add_exchange")
                    await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
                    stamps.current["caller: resumed"] = (time.perf_counter_ns(), 0, -1)
                    hops.rows.append(stamps.current)
                    stamps.current = None
                after, _ = _checkpoint(side)
                hops.frames.append((after if emptied else after - before) / block)
                done += block
    hops.raw_frames.append(_raw_pages(folder, block_size))
    return hops


def measure(folder: Path, count: int, block_size: int = _BLOCK) -> Hops:
    """Stamp ``count`` sequential exchanges of one user in ``folder``, in blocks of
    ``block_size`` taking turns with as many raw two-row commits."""
    return asyncio.run(_exchanges(folder, count, block_size))


def record(section: Section, hops: Hops) -> None:
    """Add one run's medians to ``section``'s statistics (µs; pages per commit)."""
    names = hops.names()
    for start, end in itertools.pairwise(names):
        section.stat(f"hops.{start} -> {end}.wall", "us").add(hops.wall(start, end))
        cpu = hops.cpu(start, end)
        if cpu is not None:
            section.stat(f"hops.{start} -> {end}.cpu", "us").add(cpu)
    total = hops.wall(names[0], names[-1])
    raw = statistics.median(hops.raw) * 1e6
    commit = hops.wall("driver COMMIT", "committed")
    handovers = sum(hops.wall(a, b) for a, b in HANDOVERS if a in names and b in names)
    section.stat("hops.total", "us").add(total)
    section.stat("hops.raw", "us").add(raw)
    section.stat("hops.ratio", "x").add(total / raw)
    section.stat("hops.commit", "us").add(commit)
    section.stat("hops.handovers", "us").add(handovers)
    section.stat("hops.rest", "us").add(total - commit - handovers)
    section.stat("hops.frames", "pages").add(statistics.median(hops.frames))
    section.stat("hops.raw_frames", "pages").add(statistics.median(hops.raw_frames))


def table(section: Section) -> None:
    """The section's rows from its statistics: each hop, then the sums."""
    stats = section.stats
    for start, end in itertools.pairwise(ORDER):
        wall = stats.get(f"hops.{start} -> {end}.wall")
        if wall is None:
            continue
        cpu = stats.get(f"hops.{start} -> {end}.cpu")
        section.rows.append(
            [f"{start} -> {end}", cell(wall, fmt_us), cell(cpu, fmt_us) if cpu else "-"]
        )
    for label, key, fmt in (
        ("add_exchange, end to end", "hops.total", fmt_us),
        ("raw sqlite3 two-row commit (WAL, FULL), same blocks", "hops.raw", fmt_us),
        ("end to end ÷ raw", "hops.ratio", fmt_ratio),
        ("of it: the driver's COMMIT (SQLite, its fsync)", "hops.commit", fmt_us),
        ("of it: waiting for a thread or the loop to wake", "hops.handovers", fmt_us),
        ("of it: Python on the loop and the actor's thread", "hops.rest", fmt_us),
        ("pages written per commit: memvee", "hops.frames", _fmt_pages),
        ("pages written per commit: raw sqlite3", "hops.raw_frames", _fmt_pages),
    ):
        section.rows.append([label, cell(stats[key], fmt), ""])


def _fmt_pages(value: float) -> str:
    return fmt_num(value, 1)


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """One user's sequential exchanges, hop by hop, beside raw two-row commits."""
    section = Section(
        "One user's add_exchange hop by hop (WAL, FULL): median µs, beside raw sqlite3",
        ["hop", "wall µs", "CPU µs (same thread)"],
    )
    count = cfg.pick(400, 150)
    for round_ in range(cfg.rounds):
        progress(f"hops: round {round_ + 1}/{cfg.rounds}, {count} exchanges")
        with workspace.scratch("hops") as folder:
            record(section, measure(folder, count))
    table(section)
    section.notes.append(
        "A hop with no CPU figure crosses threads: its wall is mostly a thread or the loop "
        "waking. Pages are the write-ahead log's frames per commit, read by a checkpoint "
        "after each block. The stamps cost a few µs per hop."
    )
    return [section]


def main(count: int) -> None:
    """Print the hops' medians over ``count`` exchanges."""
    with tempfile.TemporaryDirectory(prefix="hops-") as folder:
        hops = measure(Path(folder), count)
    names = hops.names()
    print(f"{len(hops.rows)} exchanges, one user, WAL + synchronous=FULL; median µs per hop")
    print(f"{'from':>28} -> {'to':<28} {'wall':>8} {'CPU':>8}")
    for start, end in itertools.pairwise(names):
        cpu = hops.cpu(start, end)
        shown = f"{cpu:8.1f}" if cpu is not None else f"{'':>8}"
        print(f"{start:>28} -> {end:<28} {hops.wall(start, end):8.1f} {shown}")
    print(f"{'add_exchange, end to end':>60} {hops.wall(names[0], names[-1]):8.1f}")
    reference = "raw sqlite3 two-row commit (WAL, FULL), same blocks"
    print(f"{reference:>60} {statistics.median(hops.raw) * 1e6:8.1f}")
    pages = (
        f"{statistics.median(hops.frames):.1f} memvee, {statistics.median(hops.raw_frames):.1f} raw"
    )
    print(f"{'pages per commit':>60} {pages}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
