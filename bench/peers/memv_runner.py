"""The peer's side of ``python -m bench peer``: run by the peer's own Python, never ours.

memv (PyPI ``memvee==0.1.2``, package ``memv``) gets the same write scenarios as memvee
and prints one JSON object: latencies, throughput, CPU and bytes per stored message. It
imports only the standard library and ``memv``, so it runs in a scratch venv made by
``make peer``. No model is called: only ``add_exchange``, with auto-processing off.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from memv import Memory

USER_TEXT = sys.argv[4] if len(sys.argv) > 4 else "I live in Lisbon."
ASSISTANT_TEXT = sys.argv[5] if len(sys.argv) > 5 else "Nice."


class _NoEmbedder:
    """memv requires an embedding client; writing never calls it."""

    dimensions = 8

    async def embed(self, text: str) -> list[float]:
        raise RuntimeError("the write benchmark embeds nothing")

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        raise RuntimeError("the write benchmark embeds nothing")


def _memory(path: Path) -> Any:
    return Memory(db_url=str(path), embedding_client=_NoEmbedder(), auto_process=False)


async def _write(memory: Any, user: str, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        before = time.perf_counter()
        await memory.add_exchange(user, USER_TEXT, ASSISTANT_TEXT)
        latencies.append(time.perf_counter() - before)


async def _scenario(folder: Path, users: int, per_user: int) -> dict[str, Any]:
    path = folder / f"memv-{users}.db"
    names = [f"user-{i:05d}" for i in range(users)]
    async with _memory(path) as memory:
        warm: list[float] = []
        await asyncio.gather(*(_write(memory, u, max(1, 50 // users), warm) for u in names))
        latencies: list[float] = []
        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(_write(memory, u, per_user, latencies) for u in names))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {"latencies": latencies, "seconds": seconds, "cpu_seconds": cpu}


def _bytes_per_message(folder: Path, users: int, per_user: int) -> float:
    path = folder / "memv-size.db"

    async def fill() -> None:
        async with _memory(path) as memory:
            for start in range(0, users, 100):
                batch = [f"user-{i:05d}" for i in range(start, min(users, start + 100))]
                await asyncio.gather(*(_write(memory, u, per_user, []) for u in batch))

    asyncio.run(fill())
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    return size / (users * per_user * 2)


def main() -> None:
    """``memv_runner.py FOLDER SINGLE_COUNT MANY_PER_USER [USER_TEXT ASSISTANT_TEXT]``."""
    folder = Path(sys.argv[1])
    single, many = int(sys.argv[2]), int(sys.argv[3])
    result = {
        "one_user": asyncio.run(_scenario(folder, 1, single)),
        "hundred_users": asyncio.run(_scenario(folder, 100, many)),
        "bytes_per_message": _bytes_per_message(folder, 1000, 10),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
