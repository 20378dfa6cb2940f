"""memvee's side of ``python -m bench peer``, run like the peer's: a fresh interpreter.

It writes the same scenarios as ``memv_runner.py`` with the same plain loop (no stall
meter, no collector callbacks), in the interpreter given to it: by default the peer's
own Python (``make peer`` makes ``.bench/memvee`` from it), so that both engines are
measured on one interpreter build and from a fresh heap. Prints one JSON object.

The one user's exchanges take turns, in blocks, with raw sqlite3's two-row commits in this
process, the reference of their latency (see :func:`_one_user_beside_raw`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import InstantExtractor
from bench.reference import raw_commits
from memvee import Memory, MemoryConfig

USER_TEXT = sys.argv[4] if len(sys.argv) > 4 else "I live in Lisbon."
ASSISTANT_TEXT = sys.argv[5] if len(sys.argv) > 5 else "Nice."
_BLOCK = 50


async def _write(memory: Any, user: str, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        before = time.perf_counter()
        await memory.add_exchange(user, USER_TEXT, ASSISTANT_TEXT)
        latencies.append(time.perf_counter() - before)


async def _scenario(folder: Path, users: int, per_user: int) -> dict[str, Any]:
    config = MemoryConfig(db_path=str(folder / f"memvee-{users}.db"))
    names = [f"user-{i:05d}" for i in range(users)]
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        warm: list[float] = []
        await asyncio.gather(*(_write(memory, u, max(1, 50 // users), warm) for u in names))
        if users == 1:
            return await _one_user_beside_raw(memory, folder, names[0], per_user)
        latencies: list[float] = []
        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(_write(memory, u, per_user, latencies) for u in names))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {"latencies": latencies, "seconds": seconds, "cpu_seconds": cpu}


async def _one_user_beside_raw(
    memory: Memory, folder: Path, user: str, count: int
) -> dict[str, Any]:
    """One user's exchanges, in blocks of ``_BLOCK`` taking turns with blocks of raw
    sqlite3 two-row commits (WAL, FULL) in this process: the machine's slow and fast
    moments fall on both alike, so their ratio holds where two runs minutes apart would
    not. The memvee Memory is idle while the raw commits run."""
    latencies: list[float] = []
    raw: list[float] = []
    started = time.perf_counter()
    done = 0
    while done < count:
        block = min(_BLOCK, count - done)
        raw += raw_commits(
            folder, synchronous="FULL", rows=2, transactions=block, warmup=5
        ).latencies
        await _write(memory, user, block, latencies)
        done += block
    seconds = time.perf_counter() - started
    return {"latencies": latencies, "raw_latencies": raw, "seconds": seconds}


def main() -> None:
    """``memvee_runner.py FOLDER SINGLE_COUNT MANY_PER_USER [USER_TEXT ASSISTANT_TEXT]``."""
    folder = Path(sys.argv[1])
    single, many = int(sys.argv[2]), int(sys.argv[3])
    result = {
        "python": sys.version.split()[0],
        "one_user": asyncio.run(_scenario(folder, 1, single)),
        "hundred_users": asyncio.run(_scenario(folder, 100, many)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
