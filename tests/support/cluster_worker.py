"""One process of the multi-process test: appends exchanges for every shared user in a
random order, with auto-processing on and a slow stand-in extractor, and reports every
acknowledged message and every batch it extracted (one JSON line each, flushed)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any, TextIO

from memvee import ExtractedFact, ExtractionBatch, ExtractionResult, Memory, MemoryConfig

LEASE_TTL = 1.0


class SlowExtractor:
    """One fact per user message, after a pause; reports each batch it is given."""

    name = "slow"

    def __init__(self, out: TextIO, worker: str) -> None:
        self.out = out
        self.worker = worker

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        ids = [m.message_id for m in batch.messages]
        _report(self.out, {"extracting": batch.task_id, "by": self.worker, "messages": ids})
        await asyncio.sleep(0.05)
        facts = tuple(
            ExtractedFact(f"fact of {m.message_id}", (m.message_id,))
            for m in batch.messages
            if m.role == "user"
        )
        return ExtractionResult(facts, self.name)

    async def aclose(self) -> None:
        return None


def _report(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


async def main(db_url: str, worker: str, users: int, rounds: int, seed: int) -> None:
    out = sys.stdout
    config = MemoryConfig(
        db_url=db_url, auto_process=True, batch_threshold=6, leases=True, lease_ttl=LEASE_TTL
    )
    rng = random.Random(seed)
    extractor = SlowExtractor(out, worker)
    async with Memory(config=config, extractor=extractor, embedder=False) as memory:
        for round_no in range(rounds):
            order = [f"user-{i}" for i in range(users)]
            rng.shuffle(order)
            for user in order:
                said = f"{worker} round {round_no}: I live in city {rng.randrange(1000)}"
                a, b = await memory.add_exchange(user, said, "noted")
                _report(out, {"ack": [a.message_id, b.message_id], "user": user})
        _report(out, {"done": worker})


if __name__ == "__main__":
    url, name, n_users, n_rounds, n_seed = sys.argv[1:6]
    asyncio.run(main(url, name, int(n_users), int(n_rounds), int(n_seed)))
