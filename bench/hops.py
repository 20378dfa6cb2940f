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
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine.default import DefaultDialect

from actors._bridge import LoopInbox
from actors._committer import GroupCommitter
from actors._dispatcher import PooledActor
from actors.directory import _Outbox
from actors.user_actor import UserActor
from bench.append import ASSISTANT_TEXT, USER_TEXT
from bench.common import InstantExtractor
from bench.reference import raw_commits
from events.store import EventStore
from memvee import Memory, MemoryConfig

__all__ = ["HOPS", "ORDER", "main", "stamped"]

HOPS: tuple[tuple[str, type, str, str | None], ...] = (
    ("loop: outbox sends", _Outbox, "_turn", None),
    ("actor thread takes it", PooledActor, "_handle_envelope", None),
    ("actor: decide", UserActor, "add_checked_messages", None),
    ("committer: write", GroupCommitter, "_write", "committer: settled"),
    ("store: append", EventStore, "append", "store: appended"),
    ("store: insert events", EventStore, "_write", "store: events inserted"),
    ("fold the projections", GroupCommitter, "_fold", "folded"),
    ("driver COMMIT", DefaultDialect, "do_commit", None),
    ("result posted to the loop", LoopInbox, "post", None),
    ("loop: inbox drained", LoopInbox, "_drain", None),
)
"""(stamp, class, function, stamp on return): stamped on the function's first call of an
exchange."""

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
    "store: appended",
    "committer: settled",
    "result posted to the loop",
    "loop: inbox drained",
    "caller: resumed",
)
"""The stamps in the order an exchange meets them."""

_BLOCK = 50


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


async def _exchanges(folder: Path, count: int) -> tuple[list[dict[str, Any]], list[float]]:
    stamps = _Stamps()
    rows: list[dict[str, Any]] = []
    raw: list[float] = []
    config = MemoryConfig(db_path=str(folder / "hops.db"))
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        for _ in range(50):
            await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
        with stamped(stamps):
            done = 0
            while done < count:
                block = min(_BLOCK, count - done)
                raw += raw_commits(
                    folder, synchronous="FULL", rows=2, transactions=block, warmup=5
                ).latencies
                for _ in range(block):
                    stamps.current = {}
                    stamps.stamp("caller: add_exchange")
                    await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
                    stamps.current["caller: resumed"] = (time.perf_counter_ns(), 0, -1)
                    rows.append(stamps.current)
                    stamps.current = None
                done += block
    return rows, raw


def main(count: int) -> None:
    """Print the hops' medians over ``count`` exchanges."""
    with tempfile.TemporaryDirectory(prefix="hops-") as folder:
        rows, raw = asyncio.run(_exchanges(Path(folder), count))
    order = ORDER
    seen = [name for name in order if all(name in row for row in rows)]
    total = statistics.median(
        (r["caller: resumed"][0] - r["caller: add_exchange"][0]) for r in rows
    )
    print(f"{len(rows)} exchanges, one user, WAL + synchronous=FULL; median µs per hop")
    print(f"{'from':>28} -> {'to':<28} {'wall':>8} {'CPU':>8}")
    for start, end in itertools.pairwise(seen):
        wall = statistics.median((r[end][0] - r[start][0]) / 1000 for r in rows)
        same = [(r[end][1] - r[start][1]) / 1000 for r in rows if r[end][2] == r[start][2]]
        cpu = f"{statistics.median(same):8.1f}" if len(same) * 2 > len(rows) else f"{'':>8}"
        print(f"{start:>28} -> {end:<28} {wall:8.1f} {cpu}")
    print(f"{'add_exchange, end to end':>60} {total / 1000:8.1f}")
    reference = "raw sqlite3 two-row commit (WAL, FULL), same blocks"
    print(f"{reference:>60} {statistics.median(raw) * 1e6:8.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
