"""The extraction workers: bounded concurrency, paced by the shared circuit breaker."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from actors._pacing import CircuitBreaker
from actors._workers import ExtractionWorkers, Outcome
from events import ExtractionBatch


class _DownAPI:
    """An extractor whose API is down: each call fails after a moment (the others arrive
    meanwhile), in a way that may pass."""

    name = "down"

    def __init__(self) -> None:
        self.calls = 0

    async def extract(self, batch: ExtractionBatch) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        raise ConnectionResetError("the API is down")

    async def aclose(self) -> None:
        pass


def test_batches_queued_for_a_slot_when_the_breaker_opens_wait_for_it() -> None:
    """Admission is asked when a call may start, not when the batch arrives: batches
    that waited for the concurrency limit while the breaker opened do not call the API
    once their turn comes (each did, in turn: 57 requests reached a down API from 200
    users where the breaker allowed about 10)."""
    api = _DownAPI()
    breaker = CircuitBreaker(failures=1, cooldown=60.0)
    workers = ExtractionWorkers(api, concurrency=1, breaker=breaker)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    first_done = threading.Event()

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        first_done.set()

    try:
        for n in range(20):
            workers.submit(ExtractionBatch("u", f"task-{n}", ()), done)
        assert first_done.wait(10)
        time.sleep(0.3)  # the queued batches had their turn: without the fix, all called
        assert breaker.is_open
        assert api.calls == 1
        assert len(outcomes) == 1 and isinstance(outcomes[0], ConnectionResetError)
    finally:
        workers.stop()
