"""Extraction that never wedges a user: bounded batches, no poison batch, repairs, backoff
and a breaker, through the whole engine with a steerable stand-in extractor.

Guarantee 4 is checked from the log itself: every message is covered by exactly one
KnowledgeExtracted, or is still buffered, or is quarantined with its error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from events import (
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    InvalidExtractionError,
    RejectedBatchError,
    UserLog,
)
from memvee import Memory, ProcessStatus
from tests.support.coverage import checked_coverage
from tests.support.extractors import RecordingExtractor

POISON = "POISON"


def _poisoned(error: Callable[[], BaseException]) -> Callable[[ExtractionBatch], Any]:
    """A fault that fails every batch holding a poisoned message with ``error()``."""
    return lambda batch: error() if any(POISON in m.content for m in batch.messages) else None


async def _until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def test_process_covers_a_backlog_in_bounded_batches_and_sums_them(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 8})
    for i in range(30):
        await memory.add_exchange("ann", f"I like thing {i}", "ok")
    task = memory.process_async("ann")
    assert await task.wait() == 30
    assert task.knowledge_count == 30 and task.message_count == 60
    sizes = [len(b.messages) for b in extractor.batches]
    assert sizes == [8] * 7 + [4]
    (record,) = await memory.tasks("ann")
    assert record.status is ProcessStatus.COMPLETED and record.knowledge_count == 30
    assert await memory.buffer("ann") == []
    assert not checked_coverage(memory, "ann").buffered


async def test_a_batch_holds_about_max_batch_tokens_of_prompt(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"max_batch_tokens": 1_000})
    for i in range(12):
        await memory.add_message("ann", "user", f"{i} " + "word " * 300)  # about 390 tokens
    assert await memory.process("ann") == 12
    assert [len(b.messages) for b in extractor.batches] == [2] * 6


async def test_messages_added_while_processing_are_left_for_the_next_task(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 2})
    extractor.gate.clear()
    for i in range(3):
        await memory.add_exchange("ann", f"I like thing {i}", "ok")
    task = memory.process_async("ann")
    await _until(lambda: asyncio.sleep(0, extractor.started.is_set()))
    await memory.add_exchange("ann", "I like later things", "ok")
    extractor.gate.set()
    assert await task.wait() == 3
    assert [m.content for m in await memory.buffer("ann")] == ["I like later things", "ok"]


async def test_processing_with_nothing_buffered_writes_nothing(make_memory: Any) -> None:
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I like tea", "ok")
    await memory.flush("ann")
    engine = memory._engine
    assert engine is not None
    before = engine.store.max_position()
    for user in ("ann", *(f"idle{i}" for i in range(20))):
        assert await memory.flush(user) == 0
        assert await memory.process(user) == 0
    assert engine.store.max_position() == before


async def test_a_poisoned_message_is_quarantined_and_blocks_nothing_after_it(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 8})
    extractor.fault = _poisoned(lambda: InvalidExtractionError("off-schema answer"))
    for i in range(5):
        await memory.add_exchange("ann", f"I like thing {i}", "ok")
    await memory.add_exchange("ann", f"{POISON} I like poison", "ok", user_name="Ann")
    for i in range(5, 10):
        await memory.add_exchange("ann", f"I like thing {i}", "ok")

    assert await memory.process("ann") == 10
    (stuck,) = await memory.quarantined("ann")
    assert stuck.content == f"{POISON} I like poison" and stuck.attempts == 3
    assert "off-schema answer" in stuck.error and (stuck.role, stuck.name) == ("user", "Ann")
    assert await memory.buffer("ann") == []
    found = checked_coverage(memory, "ann")
    assert list(found.quarantined) == [stuck.message_id] and not found.buffered
    assert len(found.covered) == 21
    assert len(extractor.batches) <= 3 + 2 * 3 + 3, "splits and retries are bounded"
    summary = await memory.user("ann")
    assert summary is not None and summary.quarantined_count == 1 and summary.buffered_count == 0

    extractor.fault = None
    assert await memory.requeue("ann") == 1
    assert [m.message_id for m in await memory.buffer("ann")] == [stuck.message_id]
    assert await memory.process("ann") == 1
    assert await memory.quarantined("ann") == []
    assert len(checked_coverage(memory, "ann").covered) == 22


async def test_one_refused_message_does_not_stop_a_user_with_auto_processing(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(auto_process=True, batch_threshold=10)
    extractor.fault = _poisoned(lambda: RejectedBatchError("Claude refused"))
    await memory.add_message("ann", "user", f"{POISON} something Claude refuses")
    for i in range(40):
        await memory.add_message("ann", "user", f"I like thing {i}")
    await memory.flush("ann")

    assert [m.content for m in await memory.quarantined("ann")] == [
        f"{POISON} something Claude refuses"
    ]
    assert await memory.buffer("ann") == []
    assert len(await memory.knowledge("ann")) == 40
    sent = sum(len(b.messages) for b in extractor.batches)
    assert len(extractor.batches) < 20 and sent < 100, "was 29 requests and 780 re-sends"
    found = checked_coverage(memory, "ann")
    assert len(found.covered) == 40 and not found.buffered


async def test_a_bad_answer_is_repaired_not_rejected(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    from memvee import ExtractedFact

    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "Nice")
    extractor.answer = lambda batch: (
        ExtractedFact("User lives in Oslo.", (batch.messages[0].message_id, "m99"), "new", "k1"),
    )
    assert await memory.process("ann") == 1
    (entry,) = await memory.knowledge("ann")
    engine = memory._engine
    assert engine is not None
    from memvee.audit import Audit

    with Audit(db_url=engine.store.url) as audit:
        repairs = audit.explain("ann", entry.entry_id).repairs
    assert repairs == [
        "dropped citations outside the batch: m99",
        "was new with a target (k1); the target was ignored",
    ]


async def test_an_answer_no_database_can_store_is_repaired_on_every_backend(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory()
    said, _ = await memory.add_exchange("ann", "I like tea", "ok")
    extractor.answer = lambda batch: (
        ExtractedFact("User likes \ud800tea\x00.", (said.message_id, "m\x00")),
        ExtractedFact("User lives in Oslo.", (said.message_id,), "update", "k\ud800"),
    )
    assert await memory.process("ann") == 2, "was: every run failed to record its outcome"
    assert sorted(e.text for e in await memory.knowledge("ann")) == [
        "User likes \ufffdtea.",
        "User lives in Oslo.",
    ]
    assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []


async def test_an_answer_of_another_shape_quarantines_its_message_and_blocks_nothing(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 4})

    def answer(batch: ExtractionBatch) -> tuple[ExtractedFact, ...]:
        users = [m for m in batch.messages if m.role == "user"]
        if any(POISON in m.content for m in users):
            return (ExtractedFact(42, (users[0].message_id,)),)  # type: ignore[arg-type]
        return tuple(ExtractedFact(f"User said: {m.content}", (m.message_id,)) for m in users)

    extractor.answer = answer
    for i in range(4):
        said = f"{POISON} I like poison" if i == 1 else f"I like thing {i}"
        await memory.add_exchange("ann", said, "ok")

    assert await memory.process("ann") == 3
    (stuck,) = await memory.quarantined("ann")
    assert stuck.content == f"{POISON} I like poison"
    assert "facts[0] with a text or action that is not a str" in stuck.error
    assert await memory.buffer("ann") == []


async def test_an_answer_that_cannot_be_recorded_is_split_off_not_retried_for_ever(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 4})
    record = UserLog.record_knowledge

    def flawed(log: UserLog, task_id: str, facts: Any, *args: Any, **kwargs: Any) -> Any:
        if any(POISON in fact.text for fact in facts):
            raise RuntimeError("a defect that this answer meets")
        return record(log, task_id, facts, *args, **kwargs)

    monkeypatch.setattr(UserLog, "record_knowledge", flawed)
    for i in range(4):
        said = f"{POISON} I like poison" if i == 1 else f"I like thing {i}"
        await memory.add_exchange("ann", said, "ok")

    assert await memory.process("ann") == 3, "was: every run failed, and the user stayed stuck"
    (stuck,) = await memory.quarantined("ann")
    assert "could not be recorded: RuntimeError: a defect that this answer meets" in stuck.error
    found = checked_coverage(memory, "ann")
    assert list(found.quarantined) == [stuck.message_id] and not found.buffered


async def test_a_decision_that_fails_half_way_commits_none_of_what_it_emitted(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 4})
    trigger = UserLog.trigger_event

    def flawed(log: UserLog, kind: Any, *args: Any, **fields: Any) -> None:
        trigger(log, kind, *args, **fields)
        if kind is UserLog.KnowledgeExtracted and any(
            POISON in entry["text"] for entry in fields["entries"]
        ):
            raise RuntimeError("a defect met after the entries were emitted")

    monkeypatch.setattr(UserLog, "trigger_event", flawed)
    for i in range(4):
        said = f"{POISON} I like poison" if i == 1 else f"I like thing {i}"
        await memory.add_exchange("ann", said, "ok")

    assert await memory.process("ann") == 3
    (stuck,) = await memory.quarantined("ann")
    assert "a defect met after the entries were emitted" in stuck.error
    found = checked_coverage(memory, "ann")
    assert list(found.quarantined) == [stuck.message_id] and not found.buffered
    assert POISON not in " ".join(e.text for e in await memory.knowledge("ann"))


@pytest.mark.parametrize("raised", [asyncio.CancelledError, KeyboardInterrupt, SystemExit])
async def test_an_extractor_raising_what_would_stop_its_loop_fails_only_its_batch(
    make_memory: Any, extractor: RecordingExtractor, raised: type[BaseException]
) -> None:
    memory: Memory = await make_memory(config={"max_batch_messages": 4})
    extractor.fault = _poisoned(raised)
    for i in range(4):
        said = f"{POISON} I like poison" if i == 1 else f"I like thing {i}"
        await memory.add_exchange("ann", said, "ok")

    assert await memory.process("ann") == 3
    (stuck,) = await memory.quarantined("ann")
    assert f"raised {raised.__name__}" in stuck.error and stuck.attempts == 3
    await memory.add_exchange("bob", "I like tea", "ok")
    assert await memory.process("bob") == 1, "the extraction loop still runs"
    await memory.close()


async def test_an_extractor_raising_a_ctrl_c_is_logged_with_its_traceback_apart_from_the_line(
    make_memory: Any, extractor: RecordingExtractor, caplog: pytest.LogCaptureFixture
) -> None:
    """The line of an extractor raising KeyboardInterrupt carries its traceback as the
    record's exception text, as a formatter keeping it apart (JSON's "exception") wants,
    never as a live exception a Ctrl-C filter would take for the application's own. The
    traceback was part of the line's message."""
    memory: Memory = await make_memory()
    extractor.fault = _poisoned(KeyboardInterrupt)
    await memory.add_exchange("ann", f"{POISON} I like poison", "ok")

    with caplog.at_level(logging.ERROR, logger="memvee"):
        await memory.process_async("ann").wait()

    (line,) = [r for r in caplog.records if "the batch fails" in r.getMessage()][:1]
    assert "Traceback" not in line.getMessage()
    assert line.exc_info is None and line.exc_text and "KeyboardInterrupt" in line.exc_text


async def test_a_failure_that_may_pass_is_retried_by_itself_after_a_backoff(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(
        auto_process=True,
        batch_threshold=2,
        config={"retry_delay": 0.05, "retry_delay_max": 0.2},
    )
    extractor.fail_next = 3
    await memory.add_exchange("ann", "I live in Oslo", "ok")

    async def extracted() -> bool:
        return len(await memory.knowledge("ann")) == 1 and not await memory.buffer("ann")

    await _until(extracted)
    tasks = await memory.tasks("ann")
    assert [t.status for t in tasks][:3] == [ProcessStatus.FAILED] * 3
    assert tasks[-1].status is ProcessStatus.COMPLETED
    assert {t.trigger for t in tasks[1:]} == {"retry"}
    assert await memory.quarantined("ann") == [], "failures that may pass never quarantine"


async def test_a_caller_asking_for_processing_does_not_wait_for_the_backoff(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(config={"retry_delay": 3600, "retry_delay_max": 3600})
    extractor.fail_next = 1
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    task = memory.process_async("ann")
    assert await asyncio.gather(task.wait(), return_exceptions=True)
    assert task.status is ProcessStatus.FAILED
    async with asyncio.timeout(10):
        assert await memory.process("ann") == 1


async def test_the_breaker_pauses_everyone_while_the_api_is_down_and_resumes_by_itself(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(
        auto_process=True,
        batch_threshold=2,
        config={
            "breaker_failures": 3,
            "breaker_cooldown": 0.1,
            "retry_delay": 0.05,
            "retry_delay_max": 0.4,
        },
    )
    down = threading.Event()
    down.set()
    extractor.fault = lambda batch: (
        ExtractionError("HTTP 529 overloaded") if down.is_set() else None
    )
    users = [f"user{i}" for i in range(60)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    for user in users:
        await memory.add_exchange(user, f"I live in city {user}", "ok")
    engine = memory._engine
    assert engine is not None

    async def opened() -> bool:
        return engine.breaker.opened > 0

    await _until(opened, timeout=30)
    await asyncio.sleep(1.0)  # cooldowns pass, and the probes after them meet the outage
    assert engine.breaker.is_open
    calls_while_down, down_for = len(extractor.batches), loop.time() - started
    # Before it opened: its 3 failures and the calls beside them (4 at a time). Since:
    # probes one at a time, 0.1 s, 0.2 s, then 0.4 s (retry_delay_max) apart. So many
    # seconds down, not a fixed count: a loaded machine writes the 60 users for longer.
    most = 3 + 4 + 3 + down_for / 0.4
    assert calls_while_down <= most, (
        f"{calls_while_down} calls in {down_for:.1f} s: 60 users must not each hammer an "
        "API that is down"
    )

    down.clear()

    async def all_extracted() -> bool:
        for user in users:
            if await memory.buffer(user) or len(await memory.knowledge(user)) != 1:
                return False
        return True

    await _until(all_extracted, timeout=30)
    assert not engine.breaker.is_open
    for user in users:
        found = checked_coverage(memory, user)
        assert not found.buffered and not found.quarantined
