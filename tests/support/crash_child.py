"""A child process for the crash tests: writes, starts processing, prints what was
acknowledged, and waits to be SIGKILLed in the middle of an extraction."""

from __future__ import annotations

import asyncio
import json
import sys

from memvee import Memory, MemoryConfig
from tests.support.extractors import RecordingExtractor

LEASE_TTL = 1.0
"""Short, so that the next process takes the killed one's users over quickly."""


async def main(db_url: str, mode: str) -> None:
    """``auto``: auto-processing starts the extraction; ``manual``: one process_async."""
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(
        db_url=db_url, auto_process=mode == "auto", batch_threshold=6, lease_ttl=LEASE_TTL
    )
    async with Memory(config=config, extractor=extractor) as memory:
        i = 0
        while True:
            a, b = await memory.add_exchange("victim", f"I work at shop {i}", f"ok {i}")
            print(json.dumps({"ack": [a.message_id, b.message_id]}), flush=True)
            if i == 5:
                if mode == "manual":
                    memory.process_async("victim")
                print(json.dumps({"extracting": extractor.started.wait(10)}), flush=True)
            i += 1
            await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
