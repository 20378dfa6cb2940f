"""Guarantee 5: the asyncio loop never blocks on an actor, the database or the LLM."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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


_OPEN_ONE = """
import asyncio, gc, sys
from memvee import Memory, MemoryConfig

async def main() -> None:
    config = MemoryConfig(db_path=sys.argv[1], gc_freeze=sys.argv[2] == "on")
    before = gc.get_freeze_count()
    async with Memory(config=config, embedder=False):
        print(before, gc.get_freeze_count())

asyncio.run(main())
"""


@pytest.mark.parametrize("freeze", ["on", "off"])
def test_the_first_open_takes_the_heap_out_of_later_collections_unless_told_not_to(
    tmp_path: Path, freeze: str
) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _OPEN_ONE, str(tmp_path / "m.db"), freeze],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after = map(int, ran.stdout.split())
    assert before == 0
    if freeze == "on":
        # the imported libraries: tens of thousands of objects
        assert after > 10_000
    else:
        assert after == 0
