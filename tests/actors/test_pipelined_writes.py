"""Pipelined appends: a user actor decides the next command while the previous one is
being committed. A write that fails must not leave a version gap: every write decided on
top of it is refused and decided again on the reloaded log."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from events import StorageError
from memvee import Memory
from projections import verify


async def test_a_failed_write_is_not_built_upon_and_the_log_stays_loadable(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = memory._engine
    assert engine is not None
    store = engine.store
    original = store.append
    release = threading.Event()

    def flaky(batches: Any, *rest: Any) -> Any:
        contents = [getattr(e, "content", None) for batch in batches for e in batch]
        if "boom" in contents:
            release.wait(5)
            raise StorageError("the disk is on fire")
        return original(batches, *rest)

    monkeypatch.setattr(store, "append", flaky)
    await memory.add_message("u", "user", "before")
    first = asyncio.ensure_future(memory.add_message("u", "user", "boom"))
    second = asyncio.ensure_future(memory.add_message("u", "user", "built on boom"))
    await asyncio.sleep(0.1)
    release.set()
    with pytest.raises(StorageError, match="on fire"):
        await first
    assert (await second).seq == 2
    later = await memory.add_message("u", "user", "later")
    assert later.seq == 3
    assert [m.content for m in await memory.buffer("u")] == ["before", "built on boom", "later"]
    loaded = await asyncio.to_thread(store.load, "u")
    assert loaded is not None and loaded.message_count == 3
    assert await asyncio.to_thread(verify, store) == []
    assert await memory.process("u") == 3


async def test_many_pipelined_writes_of_one_user_keep_their_order(memory: Memory) -> None:
    written = await asyncio.gather(
        *(memory.add_message("solo", "user", f"message {i}") for i in range(50))
    )
    assert [m.seq for m in written] == list(range(1, 51))
    assert [m.content for m in await memory.buffer("solo")] == [f"message {i}" for i in range(50)]


async def test_a_storage_error_recording_an_outcome_fails_the_task_and_returns_its_messages(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from events import UserLog
    from memvee import ProcessingError

    engine = memory._engine
    assert engine is not None
    store = engine.store
    original = store.append
    failures = iter([True])

    def flaky(batches: Any, *rest: Any) -> Any:
        extracted = any(isinstance(e, UserLog.KnowledgeExtracted) for b in batches for e in b)
        if extracted and next(failures, False):
            raise StorageError("lost the connection")
        return original(batches, *rest)

    monkeypatch.setattr(store, "append", flaky)
    await memory.add_exchange("v", "I love tea", "ok")
    with pytest.raises(ProcessingError, match="could not record the outcome"):
        await memory.process("v")
    assert len(await memory.buffer("v")) == 2
    assert [t.status.value for t in await memory.tasks("v")] == ["FAILED"]
    assert await memory.process("v") == 1
