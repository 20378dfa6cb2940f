"""Guarantee 8 at shutdown: close() lets running work finish within the grace period,
then ends it FAILED ("interrupted by shutdown") with its messages back in the buffer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from actors import Engine
from events import ExtractedFact, ExtractionBatch, ExtractionResult
from memvee import (
    InvalidInputError,
    Memory,
    MemoryClosedError,
    MemoryConfig,
    ProcessingError,
    ProcessStatus,
    ProcessTask,
    StorageError,
)
from projections.tables import ProjectionTables
from tests.support.embedders import ConceptEmbedder
from tests.support.engines import engine_start_held
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


async def _extracting(db_url: str) -> tuple[Memory, RecordingExtractor, ProcessTask, list[str]]:
    """A Memory of a long grace whose task's extraction is held until its gate opens."""
    extractor = RecordingExtractor(gated=True)
    memory = Memory(config=MemoryConfig(db_url=db_url, shutdown_grace=30), extractor=extractor)
    await memory.open()
    written = await memory.add_exchange("u", "I live in Rome", "nice")
    task = memory.process_async("u")
    assert await asyncio.to_thread(extractor.started.wait, 5)
    return memory, extractor, task, [m.message_id for m in written]


async def _interrupted_and_buffered(db_url: str, task: ProcessTask, written: list[str]) -> None:
    assert (task.status, task.error) == (ProcessStatus.FAILED, "interrupted by shutdown")
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as again:
        assert [m.message_id for m in await again.buffer("u")] == written


async def test_close_with_no_grace_interrupts_running_tasks_at_once_keeping_their_messages(
    db_url: str,
) -> None:
    """A process told to stop now (a stdio server's SIGTERM) gives no grace: the task ends
    as if its grace had run out."""
    memory, extractor, task, written = await _extracting(db_url)
    try:
        await memory.close(grace=0)
    finally:
        extractor.gate.set()
    await _interrupted_and_buffered(db_url, task, written)


async def test_a_close_with_no_grace_cuts_short_the_grace_a_close_under_way_gives(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    giving = asyncio.Event()
    real = Memory._give_grace

    async def noted(self: Memory, *args: Any) -> None:
        giving.set()
        await real(self, *args)

    monkeypatch.setattr(Memory, "_give_grace", noted)
    memory, extractor, task, written = await _extracting(db_url)
    try:
        first = asyncio.ensure_future(memory.close())
        await giving.wait()  # the first close is giving the task its 30 s
        assert not first.done()
        async with asyncio.timeout(10):  # far less than the grace cut short
            await memory.close(grace=0)
            await first
    finally:
        extractor.gate.set()
    await _interrupted_and_buffered(db_url, task, written)


async def test_a_close_with_no_grace_cuts_a_close_short_though_an_open_waits_for_it(
    db_url: str,
) -> None:
    """A handler's ``if not memory.is_open: await memory.open()`` waits for a close giving a
    task its grace; a process then told to stop now still cuts that grace short (it had
    waited for the open, so for the whole grace), and the open then opens again."""
    memory, extractor, task, written = await _extracting(db_url)
    try:
        first = asyncio.ensure_future(memory.close())
        await asyncio.sleep(0.05)
        reopening = asyncio.ensure_future(memory.open())
        await asyncio.sleep(0.05)
        assert not first.done() and not reopening.done()
        async with asyncio.timeout(10):  # far less than the grace cut short
            await memory.close(grace=0)
            await first
    finally:
        extractor.gate.set()
    assert (task.status, task.error) == (ProcessStatus.FAILED, "interrupted by shutdown")
    assert await reopening is memory and memory.is_open
    await memory.close()
    await _interrupted_and_buffered(db_url, task, written)


@pytest.mark.parametrize("grace", [-1, float("nan")])
async def test_a_grace_that_is_no_number_of_seconds_is_refused(db_url: str, grace: Any) -> None:
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as memory:
        with pytest.raises(InvalidInputError, match="grace must be a number of seconds"):
            await memory.close(grace=grace)
        assert memory.is_open


class _HoldsTheSecondBatch(RecordingExtractor):
    """Extracts the first batch, then holds the next until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()
        self.release = threading.Event()

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if self.batches:
            self.held.set()
            await asyncio.to_thread(self.release.wait, 30)
        return await super().extract(batch)


async def _second_batch_held(memory: Memory, extractor: _HoldsTheSecondBatch) -> ProcessTask:
    """Open ``memory``, write three exchanges and start a task, returned once the
    extractor holds its second batch (the first recorded)."""
    await memory.open()
    for city in ("Rome", "Oslo", "Lima"):
        await memory.add_exchange("u", f"I live in {city}", "nice")
    task = memory.process_async("u")
    assert await asyncio.to_thread(extractor.held.wait, 10)
    return task


async def test_a_task_interrupted_by_close_counts_what_its_recorded_batches_did(
    db_url: str,
) -> None:
    """Its handle agrees with the log: the entries and messages of the batches recorded
    before the close, not none (nor the messages of the batch cut short)."""
    extractor = _HoldsTheSecondBatch()
    config = MemoryConfig(db_url=db_url, shutdown_grace=0.2, max_batch_messages=2)
    memory = Memory(config=config, extractor=extractor, embedder=False)
    await memory.open()
    for city in ("Rome", "Oslo", "Lima"):
        await memory.add_exchange("u", f"I live in {city}", "nice")
    task = memory.process_async("u")
    assert await asyncio.to_thread(extractor.held.wait, 10)
    await memory.close()
    extractor.release.set()
    assert (task.status, task.error) == (ProcessStatus.FAILED, "interrupted by shutdown")
    async with Memory(db_url=db_url, extractor=RecordingExtractor(), embedder=False) as again:
        (stored,) = await again.tasks("u")
    assert (task.knowledge_count, task.message_count) == (1, 2)
    assert (stored.knowledge_count, stored.message_count) == (1, 2)


def test_a_close_from_another_loop_counts_what_the_recorded_batches_did(db_url: str) -> None:
    """The loop that opened the Memory is stopped, so it is never told how the task
    ended: the close tells the handle itself."""
    extractor = _HoldsTheSecondBatch()
    config = MemoryConfig(db_url=db_url, shutdown_grace=0.2, max_batch_messages=2)
    memory = Memory(config=config, extractor=extractor, embedder=False)
    opener = asyncio.new_event_loop()

    try:
        task = opener.run_until_complete(_second_batch_held(memory, extractor))
        asyncio.run(memory.close())
    finally:
        extractor.release.set()
        opener.close()
    assert (task.status, task.knowledge_count, task.message_count) == (
        ProcessStatus.FAILED,
        1,
        2,
    )


def test_a_close_after_the_opening_loop_ended_fails_the_running_task(db_url: str) -> None:
    """The common script: one asyncio.run opens the Memory and starts a task, then ends
    (its loop closed); a close from the next ends the handle FAILED, as the log has it,
    and any loop reads that outcome from it."""
    extractor = _HoldsTheSecondBatch()
    config = MemoryConfig(db_url=db_url, shutdown_grace=0.2, max_batch_messages=2)
    memory = Memory(config=config, extractor=extractor, embedder=False)

    try:
        task = asyncio.run(_second_batch_held(memory, extractor))
        asyncio.run(memory.close())
    finally:
        extractor.release.set()
    assert (task.status, task.error, task.knowledge_count, task.message_count) == (
        ProcessStatus.FAILED,
        "interrupted by shutdown",
        1,
        2,
    )
    with pytest.raises(ProcessingError, match="interrupted by shutdown"):
        asyncio.run(task.wait())


async def _held_task(memory: Memory, extractor: RecordingExtractor) -> ProcessTask:
    """Open ``memory`` and start processing one exchange of u's: the task is out, its
    extraction held at ``extractor``'s gate."""
    await memory.open()
    await memory.add_exchange("u", "I live in Rome", "nice")
    task = memory.process_async("u")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    return task


def test_a_task_that_ends_after_its_loop_closed_is_told_so_by_the_close(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task completes once no loop is left to hear it: the close from another loop
    ends its handle COMPLETED, with its count, not as interrupted."""
    extractor = RecordingExtractor(gated=True)
    memory = Memory(config=MemoryConfig(db_url=db_url), extractor=extractor, embedder=False)
    recorded = threading.Event()

    async def start() -> ProcessTask:
        task = await _held_task(memory, extractor)
        observer = memory._observer
        told = observer.task_finished  # type: ignore[union-attr]

        def finished(*args: Any, **kwargs: Any) -> None:
            told(*args, **kwargs)
            recorded.set()

        monkeypatch.setattr(observer, "task_finished", finished)
        return task

    try:
        task = asyncio.run(start())
    finally:
        extractor.gate.set()
    assert recorded.wait(10)
    asyncio.run(memory.close())
    assert (task.status, task.knowledge_count) == (ProcessStatus.COMPLETED, 1)
    assert asyncio.run(task.wait()) == 1


def test_a_close_from_another_loop_gives_a_running_task_its_grace(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script's first ``asyncio.run`` starts a task and ends; its extraction, still
    out, answers once the close from the next loop has begun: the task completes within
    the grace, its entries stored, not interrupted."""
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(db_url=db_url, shutdown_grace=30)
    memory = Memory(config=config, extractor=extractor, embedder=False)

    async def start() -> ProcessTask:
        task = await _held_task(memory, extractor)
        observer = memory._observer
        looked = observer.undelivered_ends  # type: ignore[union-attr]

        def released(*args: Any) -> Any:
            extractor.gate.set()  # the close looks for running tasks: the answer comes
            return looked(*args)

        monkeypatch.setattr(observer, "undelivered_ends", released)
        return task

    try:
        task = asyncio.run(start())
        asyncio.run(memory.close())
    finally:
        extractor.gate.set()
    assert (task.status, task.error, task.knowledge_count) == (ProcessStatus.COMPLETED, None, 1)

    async def stored() -> int:
        async with Memory(db_url=db_url, extractor=RecordingExtractor(), embedder=False) as again:
            assert await again.buffer("u") == []
            return len(await again.knowledge("u"))

    assert asyncio.run(stored()) == 1


class _StalledEmbedder(ConceptEmbedder):
    """Once ``hold`` is set, a call on the background embedding thread waits for
    ``release`` (an embedding API that stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Any) -> list[list[float]]:
        if self.hold and threading.current_thread().name == "memvee-embedding":
            self.held.set()
            self.release.wait()
        return super().embed(texts)


def _stored_vectors(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            vectors = ProjectionTables().vectors
            return int(connection.execute(select(func.count()).select_from(vectors)).scalar_one())
    finally:
        engine.dispose()


async def test_a_close_with_no_grace_abandons_a_stalled_background_embedding(
    db_url: str,
) -> None:
    """The background embedding thread is held in a call that does not answer: close(grace=0)
    returns without waiting for it, and the vectors it gets after the close are dropped,
    never written (the thread, a daemon, ends once the call does)."""
    embedder = _StalledEmbedder()
    memory = Memory(config=MemoryConfig(db_url=db_url), embedder=embedder)
    await memory.open()
    try:
        await memory.add_exchange("ann", "hello there", "hi")
        assert memory._engine is not None and memory._engine.vector_filler is not None
        assert await asyncio.to_thread(memory._engine.vector_filler.wait_idle, 10)
        embedder.hold = True
        await memory.add_exchange("ann", "I live in Oslo", "nice")
        assert await asyncio.to_thread(embedder.held.wait, 10)
        before = _stored_vectors(db_url)
        await asyncio.wait_for(memory.close(grace=0), 10)  # a safety net: it must not wait
    finally:
        embedder.release.set()
        await memory.close()
    for thread in threading.enumerate():
        if thread.name == "memvee-embedding":
            thread.join(10)
    assert _stored_vectors(db_url) == before


async def test_close_is_idempotent_and_reopen_works(make_memory: Any) -> None:
    memory: Memory = await make_memory()
    await memory.add_message("u", "user", "hello")
    await memory.close()
    await memory.close()
    await memory.open()
    assert len(await memory.buffer("u")) == 1


async def test_an_open_that_fails_once_the_engine_runs_stops_it_and_frees_the_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery at open fails (the database stops answering, say): the engine's threads
    are stopped and the file's claim given up, so the same or another Memory can open."""

    def failing(engine: Engine) -> list[Any]:
        raise StorageError("the database failed during recovery")

    config = MemoryConfig(db_path=str(tmp_path / "memory.db"))
    memory = Memory(config=config, extractor=RecordingExtractor(), embedder=False)
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "recover", failing)
        with pytest.raises(StorageError, match="failed during recovery"):
            await memory.open()
    assert not memory.is_open
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-")] == []
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as other:
        await other.add_exchange("ann", "I live in Oslo", "ok")
    await memory.open()
    try:
        assert len(await memory.messages("ann")) == 2
    finally:
        await memory.close()


async def test_an_engine_whose_threads_cannot_all_start_stops_those_that_did(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform refuses a thread part way through the actor threads (out of threads):
    the open fails, and none of the engine's threads is left running."""
    start = threading.Thread.start

    def refusing(thread: threading.Thread) -> None:
        if thread.name == "memvee-actor_3":
            raise RuntimeError("can't start new thread")
        start(thread)

    config = MemoryConfig(db_path=str(tmp_path / "memory.db"))
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refusing)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await Memory(config=config, extractor=RecordingExtractor(), embedder=False).open()
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-")] == []
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")


async def test_opens_at_once_share_one_engine(tmp_path: Any) -> None:
    """Handlers that run together each doing ``if not memory.is_open: await
    memory.open()``: one engine is started, and every open returns the Memory."""
    memory = Memory(config=MemoryConfig(db_path=str(tmp_path / "memory.db")), embedder=False)
    opened = await asyncio.gather(*(memory.open() for _ in range(4)))
    try:
        assert opened == [memory] * 4
        engine = memory._engine
        assert engine is not None
        assert await memory.open() is memory and memory._engine is engine
        await memory.add_exchange("ann", "I live in Oslo", "ok")
    finally:
        await memory.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-")] == []


def _memvee_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("memvee-")]


async def _opening_held(
    memory: Memory, patch: pytest.MonkeyPatch
) -> tuple[asyncio.Future[Memory], threading.Event]:
    """``memory``'s open, started and held while its engine starts in its thread, and the
    event that lets the engine go on."""
    starting, release = engine_start_held(patch)
    opening = asyncio.ensure_future(memory.open())
    assert await asyncio.to_thread(starting.wait, 10)
    return opening, release


async def test_a_cancelled_open_stops_the_engine_it_was_starting_and_frees_the_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A startup deadline (``wait_for(memory.open(), …)``) runs out while the engine
    starts in its thread: the open is cancelled, the engine stopped once started, and the
    same or another Memory opens the file."""
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"))
    memory = Memory(config=config, extractor=RecordingExtractor(), embedder=False)
    with monkeypatch.context() as patch:
        opening, release = await _opening_held(memory, patch)
        opening.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await opening
    assert not memory.is_open
    assert _memvee_threads() == []
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as other:
        await other.add_exchange("ann", "I live in Oslo", "ok")
    async with memory:
        assert len(await memory.messages("ann")) == 2


async def test_a_close_during_an_open_waits_for_it_then_closes_the_memory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service told to stop while its Memory still opens: the close returns once the
    Memory that open started is closed, and a write after it is refused."""
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"))
    memory = Memory(config=config, extractor=RecordingExtractor(), embedder=False)
    with monkeypatch.context() as patch:
        opening, release = await _opening_held(memory, patch)
        closing = asyncio.ensure_future(memory.close())
        await asyncio.sleep(0.05)
        assert not closing.done(), "the close returned while the open went on"
        release.set()
        await closing
    assert await opening is memory
    assert not memory.is_open and _memvee_threads() == []
    with pytest.raises(MemoryClosedError, match="not open"):
        await memory.add_exchange("ann", "I live in Oslo", "ok")


async def _closing_in_the_background(
    tmp_path: Any,
) -> tuple[Memory, RecordingExtractor, ProcessTask]:
    """A Memory whose close was cancelled while it gave a running task its grace: the
    close goes on in the background until the task's extractor is let through."""
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"), shutdown_grace=30)
    memory = Memory(config=config, extractor=extractor, embedder=False)
    await memory.open()
    await memory.add_exchange("u", "I live in Rome", "nice")
    task = memory.process_async("u")
    assert await asyncio.to_thread(extractor.started.wait, 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(memory.close(), 0.05)
    assert not memory.is_open
    return memory, extractor, task


async def test_a_cancelled_close_goes_on_and_the_next_close_waits_for_its_end(
    tmp_path: Any,
) -> None:
    """A close cancelled while it gives a running task its grace (a shutdown deadline, a
    second Ctrl-C) still stops the engine: the next close returns once it is closed."""
    memory, extractor, task = await _closing_in_the_background(tmp_path)
    config = memory.config
    extractor.gate.set()
    await memory.close()
    assert memory._engine is None and _memvee_threads() == []
    assert task.status is ProcessStatus.COMPLETED
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as again:
        assert len(await again.knowledge("u")) == 1


async def test_an_open_during_a_close_waits_for_its_end_then_opens_again(tmp_path: Any) -> None:
    """``if not memory.is_open: await memory.open()`` while a close gives a task its
    grace (or goes on after being cancelled) opens the Memory again once that close ends."""
    memory, extractor, task = await _closing_in_the_background(tmp_path)
    reopening = asyncio.ensure_future(memory.open())
    await asyncio.sleep(0.05)
    assert not reopening.done(), "the open did not wait for the close"
    extractor.gate.set()
    assert await reopening is memory and memory.is_open
    assert task.status is ProcessStatus.COMPLETED
    assert len(await memory.knowledge("u")) == 1
    await memory.close()
    assert _memvee_threads() == []


async def test_a_second_close_returns_only_once_the_memory_is_closed(tmp_path: Any) -> None:
    """A signal handler and an ``async with`` both close: neither returns while the
    engine still runs."""
    extractor = RecordingExtractor(gated=True)
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"), shutdown_grace=30)
    memory = Memory(config=config, extractor=extractor, embedder=False)
    await memory.open()
    await memory.add_exchange("u", "I live in Rome", "nice")
    memory.process_async("u")
    assert await asyncio.to_thread(extractor.started.wait, 5)
    first = asyncio.ensure_future(memory.close())
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(memory.close())
    await asyncio.sleep(0.05)
    assert not second.done(), "the second close returned while the first still waited"
    extractor.gate.set()
    await second
    assert memory._engine is None and _memvee_threads() == []
    await first


async def test_a_memory_whose_batches_were_read_aside_leaves_no_thread_after_close(
    tmp_path: Any,
) -> None:
    """Past 100 current entries a batch's entries are read on threads of their own, also
    with no embedder: close returns once those ended too."""
    extractor = RecordingExtractor()
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"))
    memory = Memory(config=config, extractor=extractor, embedder=False)
    await memory.open()
    try:
        extractor.answer = lambda batch: tuple(
            ExtractedFact(f"User likes place {i} in Oslo.", (batch.messages[0].message_id,))
            for i in range(102)
        )
        await memory.add_message("ann", "user", "Tell me about Oslo")
        await memory.process("ann")
        extractor.answer = None
        await memory.add_message("ann", "user", "I left Oslo")
        assert await memory.process("ann") == 1
        assert any(t.name.startswith("memvee-shown") for t in threading.enumerate())
    finally:
        await memory.close()
    assert _memvee_threads() == []
