"""Guarantee 8 at shutdown: close() lets running work finish within the grace period,
then ends it FAILED ("interrupted by shutdown") with its messages back in the buffer."""

from __future__ import annotations

from typing import Any

import pytest

from memvee import Memory, MemoryConfig, ProcessingError, ProcessStatus
from tests.support.extractors import RecordingExtractor


async def test_close_waits_for_a_task_that_ends_within_the_grace_period(db_url: str) -> None:
    extractor = RecordingExtractor(delay=0.3)
    memory = Memory(config=MemoryConfig(db_url=db_url, shutdown_grace=5), extractor=extractor)
    await memory.open()
    await memory.add_exchange("u", "I live in Rome", "nice")
    task = memory.process_async("u")
    await memory.close()
    assert task.status is ProcessStatus.COMPLETED
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as again:
        assert len(await again.knowledge("u")) == 1
        assert await again.buffer("u") == []


async def test_close_interrupts_a_task_past_the_grace_period_and_keeps_its_messages(
    db_url: str,
) -> None:
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(db_url=db_url, shutdown_grace=0.2)
    memory = Memory(config=config, extractor=extractor)
    await memory.open()
    written = await memory.add_exchange("u", "I live in Rome", "nice")
    task = memory.process_async("u")
    assert extractor.started.wait(5)
    await memory.close()
    extractor.gate.set()
    assert task.status is ProcessStatus.FAILED
    assert task.error == "interrupted by shutdown"
    with pytest.raises(ProcessingError, match="interrupted by shutdown"):
        await task.wait()
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as again:
        assert [m.message_id for m in await again.buffer("u")] == [m.message_id for m in written]
        tasks = await again.tasks("u")
        assert [(t.status, t.error) for t in tasks] == [
            (ProcessStatus.FAILED, "interrupted by shutdown")
        ]
        assert await again.process("u") == 1


async def test_close_is_idempotent_and_reopen_works(make_memory: Any) -> None:
    memory: Memory = await make_memory()
    await memory.add_message("u", "user", "hello")
    await memory.close()
    await memory.close()
    await memory.open()
    assert len(await memory.buffer("u")) == 1
