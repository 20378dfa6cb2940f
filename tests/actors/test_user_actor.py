"""An unexpected error in a user's actor (a defect of memvee, or a dependency failing
where nothing was expected) is logged once, ends the tasks the actor ran FAILED with
their messages back in the buffer (the fault counted as a failed attempt of them), and
the user's memory goes on from the log; other users never notice."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from actors.user_actor import FAULT_REASON, UserActor
from events import ExtractionBatch, ExtractionError
from memvee import Memory, ProcessingError, ProcessStatus, UnknownTaskError
from projections import verify
from tests.support.extractors import RecordingExtractor

DEFECT = RuntimeError("a defect met on purpose")


def _fails_once(monkeypatch: pytest.MonkeyPatch, method: str, user: str) -> threading.Event:
    """Make ``UserActor.<method>`` raise :data:`DEFECT` the first time ``user``'s actor
    calls it; the event is set once a later call of ``user``'s has run the real method."""
    real = getattr(UserActor, method)
    calls = 0
    ran_again = threading.Event()

    def failing_once(self: UserActor, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if self.user_id != user:
            return real(self, *args, **kwargs)
        calls += 1
        if calls == 1:
            raise DEFECT
        try:
            return real(self, *args, **kwargs)
        finally:
            ran_again.set()

    monkeypatch.setattr(UserActor, method, failing_once)
    return ran_again


def _first_batch_fails(user: str) -> Callable[[ExtractionBatch], BaseException | None]:
    """A :attr:`RecordingExtractor.fault` failing ``user``'s first batch (a failure that
    may pass), and no other."""
    seen: list[ExtractionBatch] = []

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if batch.user_id != user or seen:
            return None
        seen.append(batch)
        return ExtractionError("the API is down for a moment")

    return fault


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("method", "extraction_fails"), [("extraction_done", False), ("_batch_failed", True)]
)
async def test_a_defect_while_a_task_runs_fails_it_and_the_next_calls_cover_its_messages(
    memory: Memory,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    extraction_fails: bool,
) -> None:
    caplog.set_level(logging.ERROR, logger="memvee.actors")
    await memory.add_exchange("alice", "I live in Oslo", "Nice city!")
    await memory.add_exchange("bob", "I live in Rome", "Nice city!")
    if extraction_fails:
        extractor.fault = _first_batch_fails("alice")
    _fails_once(monkeypatch, method, "alice")
    async with asyncio.timeout(10):
        task = memory.process_async("alice")
        waiting = asyncio.ensure_future(memory.wait_for_processing("alice"))
        flushed = asyncio.ensure_future(memory.flush("alice"))
        assert await memory.process("bob") == 1
        with pytest.raises(ProcessingError, match=FAULT_REASON):
            await task.wait()
        with pytest.raises(ProcessingError, match=FAULT_REASON):
            await waiting
        assert await flushed == 1
    assert task.status is ProcessStatus.FAILED
    assert task.error == f"{FAULT_REASON} (RuntimeError: a defect met on purpose)"
    stored = await memory.get_task("alice", task.task_id)
    assert (stored.status, stored.error) == (ProcessStatus.FAILED, task.error)
    assert await memory.buffer("alice") == []
    assert await memory.quarantined("alice") == []
    assert [e.text for e in await memory.knowledge("alice")] == ["User said: I live in Oslo"]
    (error,) = _errors(caplog)
    assert error.name == "memvee.actors"
    assert "'alice'" in error.getMessage() and task.task_id in error.getMessage()
    assert error.exc_info is not None and error.exc_info[1] is DEFECT
    assert memory._engine is not None
    assert await asyncio.to_thread(verify, memory._engine.store) == []


async def test_a_defect_with_no_task_running_leaves_the_next_wake_up_to_come(
    make_memory: Any,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An automatic run failed and backs off; the wake-up that retries it meets the defect,
    yet a later wake-up (after the user's store backoff) retries it all the same."""
    caplog.set_level(logging.ERROR, logger="memvee.actors")
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=2, config={"retry_delay": 0.01}
    )
    woken_again = _fails_once(monkeypatch, "wake", "ann")
    extractor.fail_next = 1
    await memory.add_exchange("ann", "I live in Oslo", "Nice city!")
    async with asyncio.timeout(10):
        assert await asyncio.to_thread(woken_again.wait, 10), "woken after the defect"
        await memory.wait_for_processing("ann")
    statuses = [t.status for t in await memory.tasks("ann")]
    assert statuses == [ProcessStatus.FAILED, ProcessStatus.COMPLETED]
    assert await memory.buffer("ann") == []
    assert [e.text for e in await memory.knowledge("ann")] == ["User said: I live in Oslo"]
    (error,) = _errors(caplog)
    assert "'ann'" in error.getMessage() and "task running: None" in error.getMessage()
    assert error.exc_info is not None and error.exc_info[1] is DEFECT


async def test_a_defect_while_an_automatic_task_runs_has_its_messages_retried_after_the_backoff(
    make_memory: Any,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With auto-processing, the messages a fault put back in the buffer are extracted
    again after the user's backoff, as after a failure that may pass: nobody has to write
    to the user again."""
    caplog.set_level(logging.ERROR, logger="memvee.actors")
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=2, config={"retry_delay": 0.01}
    )
    retried = _fails_once(monkeypatch, "extraction_done", "ann")
    await memory.add_exchange("ann", "I live in Oslo", "Nice city!")
    async with asyncio.timeout(10):
        assert await asyncio.to_thread(retried.wait, 5), "the buffer was retried"
        await memory.wait_for_processing("ann")
    tasks = await memory.tasks("ann")
    assert [t.status for t in tasks] == [ProcessStatus.FAILED, ProcessStatus.COMPLETED]
    assert tasks[0].error == f"{FAULT_REASON} (RuntimeError: a defect met on purpose)"
    assert await memory.buffer("ann") == []
    assert [e.text for e in await memory.knowledge("ann")] == ["User said: I live in Oslo"]
    sizes = [len(b.messages) for b in extractor.batches]
    assert sizes == [2, 1, 1], "split, as after any failure of the batch"
    (error,) = _errors(caplog)
    assert "'ann'" in error.getMessage() and tasks[0].task_id in error.getMessage()


async def test_a_defect_that_recurs_in_an_automatic_task_quarantines_its_message_after_max_attempts(
    make_memory: Any,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each fault counts as a failed attempt of the batch out, as any failure blamed on
    it does: a message that meets it alone ``max_attempts`` times is quarantined with the
    fault's error, instead of being sent to the extractor again after every backoff."""
    memory: Memory = await make_memory(
        auto_process=True,
        batch_threshold=1,
        config={"retry_delay": 0.001, "retry_delay_max": 0.001, "max_attempts": 3},
    )
    real = UserActor.extraction_done

    def always_failing(self: UserActor, *args: Any, **kwargs: Any) -> Any:
        if self.user_id == "ann":
            raise DEFECT
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UserActor, "extraction_done", always_failing)
    await memory.add_message("ann", "user", "I live in Oslo")
    async with asyncio.timeout(10):
        while not await memory.quarantined("ann") and len(extractor.batches) <= 3:
            await asyncio.sleep(0.01)
        assert await memory.quarantined("ann"), "quarantined, not sent again and again"
        await memory.wait_for_processing("ann")
    (quarantined,) = await memory.quarantined("ann")
    assert FAULT_REASON in quarantined.error and "a defect met on purpose" in quarantined.error
    assert await memory.buffer("ann") == []
    assert len(extractor.batches) == 3, "max_attempts calls, then no more"
    tasks = await memory.tasks("ann")
    statuses = [t.status for t in tasks]
    assert statuses == [ProcessStatus.FAILED, ProcessStatus.FAILED, ProcessStatus.COMPLETED]
    last = await memory.get_task("ann", tasks[-1].task_id)
    assert last.status is ProcessStatus.COMPLETED, "as any task whose last message is quarantined"


async def test_a_defect_after_the_log_is_erased_still_ends_the_users_task_handles(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the log is erased, a defect before the forget is told done leaves no handle
    answering a task that was erased with it: the erasure is told all the same."""
    await memory.add_exchange("ann", "I live in Oslo", "Nice city!")
    task = memory.process_async("ann")
    await task.wait()
    _fails_once(monkeypatch, "_forget_log", "ann")
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match="a defect met on purpose"):
            await memory.forget("ann")
        assert await memory.user("ann") is None
        with pytest.raises(UnknownTaskError):
            await memory.get_task("ann", task.task_id)
