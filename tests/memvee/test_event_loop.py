"""Guarantee 5: the asyncio loop never blocks on an actor, the database or the LLM."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memvee import Memory, MemoryClosedError, MemoryConfig, ProcessStatus
from tests.support.engines import engine_start_held
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


def _memory(db_url: str) -> Memory:
    return Memory(
        config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor(), embedder=False
    )


def test_a_memory_is_used_in_the_loop_that_opened_it_and_closed_from_any(db_url: str) -> None:
    memory = _memory(db_url)
    asyncio.run(memory.open())
    for call in (
        lambda: memory.add_exchange("u", "I live in Lisbon.", "ok"),
        lambda: memory.messages("u"),
        memory.open,
    ):
        with pytest.raises(MemoryClosedError, match="open on another event loop"):
            asyncio.run(call())
    asyncio.run(memory.close())  # the loop that opened it is gone: any loop may close it
    assert not memory.is_open

    async def reopened() -> int:
        async with memory:
            return len(await memory.messages("u"))

    assert asyncio.run(reopened()) == 0, "the refused write wrote nothing"


def test_a_close_from_another_loop_as_the_opening_loop_ends_closes_the_memory(
    db_url: str,
) -> None:
    """The close reaches the loop that opened the Memory just as its ``asyncio.run``
    returns, which cancels it there: the close stops the engine from its own loop, and
    the Memory is closed, its threads ended, and open again anywhere."""
    memory = _memory(db_url)
    opened, sent = threading.Event(), threading.Event()

    async def owner() -> None:
        await memory.open()
        await memory.add_exchange("u", "I live in Lisbon.", "ok")
        opened.set()
        sent.wait(10)  # busy when the close arrives; then its asyncio.run ends

    thread = threading.Thread(target=asyncio.run, args=(owner(),))
    thread.start()
    assert opened.wait(10)

    async def close() -> None:
        closing = asyncio.ensure_future(memory.close())
        await asyncio.sleep(0)  # the close is sent to the opening loop
        sent.set()
        await closing

    asyncio.run(close())
    thread.join(10)
    assert not memory.is_open and memory._engine is None
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-")] == []
    asyncio.run(memory.close())

    async def reopened() -> int:
        async with memory:
            return len(await memory.messages("u"))

    assert asyncio.run(reopened()) == 2


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd here")
def test_memories_opened_in_loop_after_loop_leave_no_descriptor_and_no_loop_behind(
    db_url: str,
) -> None:
    """A process opening a Memory in one ``asyncio.run`` after another (a script, a job
    per request) holds no descriptor and no event loop per run once it is over."""

    async def one_run(n: int) -> None:
        async with _memory(db_url) as memory:
            await memory.add_exchange("u", f"I live in Oslo {n}", "ok")

    asyncio.run(one_run(-1))  # the first open's imports and pools
    gc.collect()
    descriptors, loops = _open_descriptors(), _live_loops()
    for n in range(30):
        asyncio.run(one_run(n))
    gc.collect()
    assert _open_descriptors() <= descriptors + 1
    assert _live_loops() <= loops + 1


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_loops() -> int:
    return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())


@pytest.fixture
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as a web server's may be."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_an_open_while_another_loop_opens_the_memory_is_refused_and_starts_nothing(
    db_url: str, running_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loops open one Memory at once: the one that began first opens it, the other
    is told the Memory is open on another loop, and one close stops every thread."""
    config = MemoryConfig(db_url=db_url, leases=True)  # two engines could share the file
    memory = Memory(config=config, extractor=RecordingExtractor(), embedder=False)
    starting, release = engine_start_held(monkeypatch)
    opening = asyncio.run_coroutine_threadsafe(memory.open(), running_loop)
    assert starting.wait(10)
    with pytest.raises(MemoryClosedError, match="open on another event loop"):
        asyncio.run(memory.open())
    release.set()
    assert opening.result(10) is memory
    asyncio.run(memory.close())
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-")] == []


def test_a_close_from_another_loop_runs_in_the_loop_that_opened_it(
    db_url: str, running_loop: asyncio.AbstractEventLoop
) -> None:
    extractor = RecordingExtractor(gated=True)
    memory = Memory(config=MemoryConfig(db_url=db_url), extractor=extractor, embedder=False)

    def there(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, running_loop).result(30)

    async def write_and_process() -> Any:
        await memory.add_exchange("u", "I live in Lisbon.", "ok")
        return memory.process_async("u")

    there(memory.open())
    task = there(write_and_process())
    assert extractor.started.wait(10)
    with pytest.raises(MemoryClosedError, match="open on another event loop"):
        asyncio.run(task.wait())
    extractor.gate.set()
    asyncio.run(memory.close())
    assert not memory.is_open
    assert task.done, "the close waited for the task, in the loop it runs in"
    assert asyncio.run(task.wait()) == 1, "an ended task's result is read from any loop"


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
