"""A child process for the takeover tests: owns one user on a shared database (leases),
extracts through the real ``anthropic`` client (pointed at the stand-in Messages API by
``ANTHROPIC_BASE_URL``), prints every acknowledged message (one JSON line each, flushed),
and waits to be SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from memvee import Memory, MemoryConfig
from memvee.extractors import ClaudeExtractor

LEASE_TTL = 1.0
"""Short, so that a surviving process takes the killed one's user over quickly."""

POISON = "POISON"
"""What marks the messages of mode ``poison`` (every fifth), which a test has the API refuse."""

QUICK_RETRIES: dict[str, Any] = {
    "retry_delay": 0.05,
    "retry_delay_max": 0.2,
    "breaker_failures": 3,
    "breaker_cooldown": 0.2,
}
"""Backoff and breaker settings quick enough for a test of a few seconds."""


async def main(db_url: str, user: str, exchanges: int, mode: str) -> None:
    """``once``: ``exchanges`` exchanges, then one run (its task id printed); ``auto``:
    exchanges without end, auto-processed in batches of four; ``poison``: as ``auto``,
    every fifth user message marked with :data:`POISON`."""
    config = MemoryConfig(
        db_url=db_url,
        leases=True,
        lease_ttl=LEASE_TTL,
        auto_process=mode != "once",
        batch_threshold=4,
        max_batch_messages=4,
        **QUICK_RETRIES,
    )
    extractor = ClaudeExtractor(max_retries=0)
    async with Memory(config=config, extractor=extractor, embedder=False) as memory:
        i = 0
        while mode != "once" or i < exchanges:
            marked = mode == "poison" and i % 5 == 2
            said = f"{POISON} shop {i}" if marked else f"I work at shop {i}"
            a, b = await memory.add_exchange(user, said, f"ok {i}")
            print(json.dumps({"ack": [a.message_id, b.message_id]}), flush=True)
            i += 1
            if mode != "once":
                await asyncio.sleep(0.01)
        task = memory.process_async(user)
        print(json.dumps({"task": task.task_id}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
