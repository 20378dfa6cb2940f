"""One process of a PostgreSQL scenario: ``python -m bench.pg_worker '<WorkerPlan JSON>'``.

The parent (:mod:`bench.postgres`) starts N of these at once. Each one prepares first
(opens its Memory and warms its users up, or connects and warms the raw insert up), then
prints a ``READY`` line and waits for a ``GO`` line on stdin, so that the measured phases
of all N processes start together whatever each one's start-up cost. It then prints one
``RESULT`` line of JSON: what it did, when it started and ended (wall clock, comparable
between processes), and the latency of every measured call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["READY", "RESULT", "WorkerPlan", "WorkerResult", "psycopg_url"]

Mode = Literal["engine", "raw"]

READY = "READY"
"""The line a worker prints once prepared; it then waits for ``GO`` on stdin."""

RESULT = "RESULT "
"""The prefix of the worker's last line, followed by a :class:`WorkerResult` as JSON."""

# The texts of bench.append (not imported: the raw workers should not load the engine).
USER_TEXT = "I live in Lisbon and I work at a small bakery near the river."
ASSISTANT_TEXT = "That sounds lovely! How long have you been working there?"
RAW_PAYLOAD = USER_TEXT + " " + ASSISTANT_TEXT
"""A raw row carries both texts of an exchange, so the two write about as many bytes."""

RAW_TABLE = "bench_raw_inserts"
RAW_DDL = f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (id bigserial PRIMARY KEY, payload text)"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker process does.

    ``engine``: ``users`` users (ids prefixed by ``index``) each write ``warmup`` then
    ``per_user`` exchanges in sequence, all users at once. ``raw``: ``warmup`` then, for
    ``seconds``, single-row committed INSERTs one after another on one connection (a
    fixed duration, so that every process count is measured over the same window).
    """

    mode: Mode
    url: str
    index: int
    warmup: int
    users: int = 0
    per_user: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What one worker measured: ``count`` calls between ``start`` and ``end`` (epoch s)."""

    count: int
    start: float
    end: float
    latencies_ms: list[float]


def psycopg_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL: ``postgresql+psycopg://`` -> ``postgresql://``."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _wait_for_go() -> None:
    """Announce readiness, then block until the parent says go (or fail if it is gone)."""
    print(READY, flush=True)
    line = sys.stdin.readline()
    if line.strip() != "GO":
        raise SystemExit(f"expected GO on stdin, got {line!r}")


def _run_raw(plan: WorkerPlan) -> WorkerResult:
    """Single-row INSERT + COMMIT, one after another, on one psycopg connection."""
    import psycopg

    latencies: list[float] = []
    clock = time.perf_counter
    insert = f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)"
    connection = psycopg.connect(psycopg_url(plan.url), autocommit=False)
    with connection, connection.cursor() as cursor:
        for _ in range(plan.warmup):
            cursor.execute(insert, (RAW_PAYLOAD,))
            connection.commit()
        _wait_for_go()
        start = time.time()
        deadline = clock() + plan.seconds
        before = clock()
        while before < deadline:
            cursor.execute(insert, (RAW_PAYLOAD,))
            connection.commit()
            after = clock()
            latencies.append((after - before) * 1000)
            before = after
        end = time.time()
    return WorkerResult(len(latencies), start, end, latencies)


async def _run_engine(plan: WorkerPlan) -> WorkerResult:
    """Many users of one Memory writing exchanges concurrently, each in sequence."""
    from bench.common import InstantExtractor
    from memvee import Memory, MemoryConfig

    config = MemoryConfig(db_url=plan.url, leases=True)
    users = [f"p{plan.index}-user-{i:03d}" for i in range(plan.users)]
    clock = time.perf_counter

    async def write(memory: Memory, user_id: str, count: int, latencies: list[float]) -> None:
        for _ in range(count):
            before = clock()
            await memory.add_exchange(user_id, USER_TEXT, ASSISTANT_TEXT)
            latencies.append((clock() - before) * 1000)

    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        cold: list[float] = []
        await asyncio.gather(*(write(memory, u, plan.warmup, cold) for u in users))
        await asyncio.to_thread(_wait_for_go)
        latencies: list[float] = []
        start = time.time()
        await asyncio.gather(*(write(memory, u, plan.per_user, latencies) for u in users))
        end = time.time()
    return WorkerResult(len(latencies), start, end, latencies)


def main(argv: list[str]) -> int:
    """Run the plan given as the only argument; the result goes to stdout as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m bench.pg_worker '<WorkerPlan JSON>'", file=sys.stderr)
        return 2
    plan = WorkerPlan(**json.loads(argv[0]))
    result = _run_raw(plan) if plan.mode == "raw" else asyncio.run(_run_engine(plan))
    print(RESULT + json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
