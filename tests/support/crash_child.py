"""A child process for the crash tests: writes, starts processing, prints what was
acknowledged, and waits to be SIGKILLed in the middle of an extraction."""

from __future__ import annotations

import asyncio
import json
import sys

from events import ExtractionBatch, InvalidExtractionError
from memvee import Memory, MemoryConfig
from tests.support.extractors import RecordingExtractor

LEASE_TTL = 1.0
"""Short, so that the next process takes the killed one's users over quickly."""


POISON = "POISON"
"""Messages holding this fail extraction the same way every time (mode ``poison``)."""


def poisoned(batch: ExtractionBatch) -> BaseException | None:
    """The fault of the ``poison`` mode: a batch holding a poisoned message is refused."""
    if any(POISON in m.content for m in batch.messages):
        return InvalidExtractionError("refused on purpose")
    return None


async def main(db_url: str, mode: str) -> None:
    """``auto``: auto-processing starts the extraction; ``manual``: one process_async;
    ``poison``: auto-processing in small batches, every seventh message poisoned, so that
    batches are split and messages quarantined while the process is killed."""
    extractor = RecordingExtractor(gated=mode != "poison", delay=0.01 if mode == "poison" else 0)
    if mode == "poison":
        extractor.fault = poisoned
    config = MemoryConfig(
        db_url=db_url,
        auto_process=mode != "manual",
        batch_threshold=6,
        lease_ttl=LEASE_TTL,
        max_batch_messages=4,
    )
    async with Memory(config=config, extractor=extractor, embedder=False) as memory:
        i = 0
        while True:
            said = (
                f"{POISON} shop {i}" if mode == "poison" and i % 7 == 3 else f"I work at shop {i}"
            )
            a, b = await memory.add_exchange("victim", said, f"ok {i}")
            print(json.dumps({"ack": [a.message_id, b.message_id]}), flush=True)
            if i == 5:
                if mode == "manual":
                    memory.process_async("victim")
                print(json.dumps({"extracting": extractor.started.wait(10)}), flush=True)
            i += 1
            await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
