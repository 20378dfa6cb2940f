"""Guarantee 5: the asyncio loop never blocks on an actor, the database or the LLM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memvee import Memory, ProcessStatus
from tests.support.extractors import RecordingExtractor


async def test_the_loop_serves_writes_while_an_extraction_is_held(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()  # the extraction answers only when the test lets it
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    for i in range(2):
        await memory.add_exchange("slow", f"I love topic {i}", "ok")
    assert await asyncio.to_thread(extractor.started.wait, 30), "the extraction started"
    for i in range(30):  # on this loop, which would hang here if it waited for the extraction
        await memory.add_exchange("slow", f"more {i}", "ok")
        await memory.add_exchange(f"other-{i}", f"hello {i}", "ok")
    tasks = await memory.tasks("slow")
    (held,) = [t for t in tasks if t.status is ProcessStatus.RUNNING]
    assert not any(t.done for t in tasks), "the writes did not wait for the extraction"
    assert len(await memory.buffer("slow")) == 64
    extractor.gate.set()
    await memory.wait_for_processing("slow", timeout=30)
    done = {t.task_id: t.status for t in await memory.tasks("slow")}
    assert done[held.task_id] is ProcessStatus.COMPLETED


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
