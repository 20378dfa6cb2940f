"""A child process for the crash tests: writes, starts processing, prints what was
acknowledged, and waits to be SIGKILLed in the middle of an extraction."""

from __future__ import annotations

import asyncio
import json
import sys

from memvee import Memory, MemoryConfig
from tests.support.extractors import RecordingExtractor


async def main(db_url: str) -> None:
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(db_url=db_url, auto_process=True, batch_threshold=6)
    async with Memory(config=config, extractor=extractor) as memory:
        i = 0
        while True:
            a, b = await memory.add_exchange("victim", f"I work at shop {i}", f"ok {i}")
            print(json.dumps({"ack": [a.message_id, b.message_id]}), flush=True)
            if i == 5:
                print(json.dumps({"extracting": extractor.started.wait(10)}), flush=True)
            i += 1
            await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
