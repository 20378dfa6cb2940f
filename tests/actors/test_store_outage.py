"""A store outage never stops a user's processing: a task whose end could not be stored
is closed once the store answers again, its messages back in the buffer, with no
restart of the process."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from actors.user_actor import UNSTORED_REASON
from events import EventStore, StorageError
from memvee import Memory, ProcessingError, ProcessStatus
from projections import verify
from tests.support.extractors import RecordingExtractor


class Outage:
    """Makes the Memory's store fail every write and log read while ``down`` is set."""

    def __init__(self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = threading.Event()
        for name in ("append", "load_log", "events_of"):
            monkeypatch.setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                raise StorageError("the database is restarting")
            return method(*args, **kwargs)

        return call


async def _outage_while_extracting(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch, user: str
) -> tuple[Outage, Any]:
    """Start a task, then take the store down while its extraction is out."""
    assert memory._engine is not None
    outage = Outage(memory._engine.store, monkeypatch)
    extractor.gate.clear()
    task = memory.process_async(user) if not memory.config.auto_process else None
    assert await asyncio.to_thread(extractor.started.wait, 30), "the extraction started"
    outage.down.set()
    extractor.gate.set()
    return outage, task


async def test_a_task_whose_end_the_store_refused_is_closed_when_it_answers(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        await memory.add_exchange("ana", f"I collect stamps number {i}", "ok")
    outage, task = await _outage_while_extracting(memory, extractor, monkeypatch, "ana")
    with pytest.raises(ProcessingError, match="the database is restarting"):
        await asyncio.wait_for(task.wait(), 30)
    with pytest.raises(StorageError):
        await memory.add_exchange("ana", "written while the store is down", "ok")
    outage.down.clear()
    assert await asyncio.wait_for(memory.process("ana"), 30) == 3
    statuses = {t.task_id: (t.status, t.error) for t in await memory.tasks("ana")}
    assert statuses[task.task_id] == (ProcessStatus.FAILED, UNSTORED_REASON)
    assert await memory.buffer("ana") == []
    assert len(await memory.knowledge("ana")) == 3
    assert memory._engine is not None
    assert await asyncio.to_thread(verify, memory._engine.store) == []


async def test_with_auto_processing_the_buffer_is_processed_once_the_store_answers(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=4, config={"retry_delay": 0.05}
    )
    extractor.gate.clear()
    for i in range(2):
        await memory.add_exchange("bea", f"I collect shells number {i}", "ok")
    outage, _ = await _outage_while_extracting(memory, extractor, monkeypatch, "bea")
    await asyncio.sleep(0.3)  # retries of the failed store meet the outage, back off
    outage.down.clear()
    async with asyncio.timeout(30):
        while await memory.buffer("bea") or await memory.user("bea") is None:
            await asyncio.sleep(0.05)
        await memory.wait_for_processing("bea")
    tasks = await memory.tasks("bea")
    assert [t.error for t in tasks if t.status is ProcessStatus.FAILED] == [UNSTORED_REASON]
    assert all(t.done for t in tasks)
    assert len(await memory.knowledge("bea")) == 2


async def test_a_forget_the_database_fails_is_a_storage_error_and_erases_nothing(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await memory.add_exchange("cy", "I live in Porto", "ok")
    assert memory._engine is not None
    store = memory._engine.store
    forget = store.forget

    def dropped(connection: Any, user_id: str) -> Any:
        raise OperationalError("DELETE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(store, "forget", dropped)
    with pytest.raises(StorageError, match=r"could not forget user 'cy' in .*server closed"):
        await memory.forget("cy")
    assert [m.content for m in await memory.messages("cy")] == ["I live in Porto", "ok"]
    monkeypatch.setattr(store, "forget", forget)
    assert (await memory.forget("cy")).events == 3
    assert await memory.messages("cy") == []


async def test_a_batch_whose_read_fails_is_retried_whole_never_split_or_quarantined(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await memory.add_exchange("di", "I live in Rome", "ok")
    assert await memory.process("di") == 1
    await memory.add_exchange("di", "I play the cello", "ok")
    await memory.add_exchange("di", "I have a cat", "ok")
    assert memory._engine is not None
    ranker = memory._engine.ranker  # it reads the entries an extractor sees beside a batch
    known, down = ranker.related, threading.Event()

    def related(*args: Any) -> Any:
        if down.is_set():
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return known(*args)

    monkeypatch.setattr(ranker, "related", related)
    down.set()
    with pytest.raises(ProcessingError, match="could not read the batch: OperationalError"):
        await memory.process("di")
    assert await memory.quarantined("di") == []
    assert len(await memory.buffer("di")) == 4
    down.clear()
    assert await memory.process("di") == 2
