"""memvee's side of ``python -m bench peer``, run like the peer's: a fresh interpreter.

It writes the same scenarios as ``memv_runner.py`` with the same plain loop (no stall
meter, no collector callbacks), in the interpreter given to it: by default the peer's
own Python (``make peer`` makes ``.bench/memvee`` from it), so that both engines are
measured on one interpreter build and from a fresh heap. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import InstantExtractor
from memvee import Memory, MemoryConfig

USER_TEXT = sys.argv[4] if len(sys.argv) > 4 else "I live in Lisbon."
ASSISTANT_TEXT = sys.argv[5] if len(sys.argv) > 5 else "Nice."


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
        latencies: list[float] = []
        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(_write(memory, u, per_user, latencies) for u in names))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {"latencies": latencies, "seconds": seconds, "cpu_seconds": cpu}


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
