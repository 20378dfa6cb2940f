"""One process of the same-user test: several coroutines append exchanges to one shared
user at once, and the process prints how many were acknowledged and every error raised."""

from __future__ import annotations

import asyncio
import json
import sys

from memvee import Memory, MemoryConfig
from tests.support.extractors import RecordingExtractor


async def _write(url: str, name: str, writers: int, exchanges: int) -> None:
    config = MemoryConfig(db_url=url, leases=True)
    acknowledged = 0
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as memory:

        async def writer(number: int) -> None:
            nonlocal acknowledged
            for n in range(exchanges):
                await memory.add_exchange("shared", f"{name}{number} says {n}", "ok")
                acknowledged += 1

        outcomes = await asyncio.gather(
            *(writer(k) for k in range(writers)), return_exceptions=True
        )
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    print(json.dumps({"acknowledged": acknowledged, "errors": errors}), flush=True)


if __name__ == "__main__":
    url, name, writers, exchanges = sys.argv[1:5]
    asyncio.run(_write(url, name, int(writers), int(exchanges)))
