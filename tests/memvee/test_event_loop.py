"""Guarantee 5: the asyncio loop never blocks on an actor, the database or the LLM."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from memvee import Memory, ProcessStatus
from tests.support.extractors import RecordingExtractor


class StallMeter:
    """A ticker task that records the largest gap between its 1 ms ticks."""

    def __init__(self) -> None:
        self.largest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.largest = max(self.largest, now - last - 0.001)
            last = now

    def __enter__(self) -> StallMeter:
        # What earlier tests left on the heap is collected and set aside, so that a full
        # garbage collection of it cannot pass for a stall of the engine.
        gc.collect()
        gc.freeze()
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *_: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        gc.unfreeze()


async def test_the_loop_stays_responsive_while_a_slow_extraction_runs(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.delay = 1.0
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    with StallMeter() as meter:
        for i in range(2):
            await memory.add_exchange("slow", f"I love topic {i}", "ok")
        tasks = await memory.tasks("slow")
        assert tasks[0].status in (ProcessStatus.PENDING, ProcessStatus.RUNNING)
        started = time.perf_counter()
        for i in range(30):
            await memory.add_exchange("slow", f"more {i}", "ok")
            await memory.add_exchange(f"other-{i}", f"hello {i}", "ok")
        writing = time.perf_counter() - started
        assert not tasks[0].done, "the writes must not have waited for the extraction"
        await memory.wait_for_processing("slow", timeout=30)
    assert writing < 1.0
    assert meter.largest < 0.050, f"the event loop stalled for {meter.largest * 1000:.1f} ms"
