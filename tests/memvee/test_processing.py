"""The async-processing contract (spec/async-processing.md) and guarantees 4 to 8."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from events import ExtractedFact, ExtractionBatch, estimate_tokens
from memvee import (
    Memory,
    MemoryClosedError,
    NotFoundError,
    ProcessingError,
    ProcessingTimeoutError,
    ProcessStatus,
    ProcessTask,
    StorageError,
    UserForgottenError,
)
from memvee.extractors import OfflineExtractor
from tests.support.embedders import ConceptEmbedder
from tests.support.extractors import RecordingExtractor
from tests.support.store_faults import OUTAGE_ERROR, StoreOutage


async def _exchanges(memory: Memory, user: str, n: int, start: int = 0) -> list[str]:
    ids: list[str] = []
    for i in range(start, start + n):
        a, b = await memory.add_exchange(user, f"I live in city {i}", f"Noted {i}")
        ids += [a.message_id, b.message_id]
    return ids


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_process_extracts_and_returns_the_count(memory: Memory) -> None:
    ids = await _exchanges(memory, "alice", 3)
    assert await memory.process("alice") == 3
    entries = await memory.knowledge("alice")
    assert [e.text for e in entries] == [f"User said: I live in city {i}" for i in range(3)]
    assert all(set(e.source_message_ids) <= set(ids) for e in entries)
    assert await memory.buffer("alice") == []


async def test_a_fact_an_extractor_calls_new_that_repeats_a_known_entry_is_stored_once(
    memory: Memory,
) -> None:
    """An extractor that leaves the action out ("new") for a fact memory already holds."""
    for _ in range(2):
        await memory.add_exchange("alice", "I live in Oslo", "Nice")
        await memory.process("alice")
    assert [e.text for e in await memory.knowledge("alice")] == ["User said: I live in Oslo"]


async def test_the_entries_shown_beside_a_batch_take_a_share_of_its_token_budget(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    def long_facts(batch: ExtractionBatch) -> tuple[ExtractedFact, ...]:
        said = [m for m in batch.messages if m.role == "user"]
        return tuple(
            ExtractedFact(f"{m.content}: " + "detail " * 140, (m.message_id,)) for m in said
        )

    extractor.answer = long_facts
    memory: Memory = await make_memory(config={"max_batch_tokens": 2000})
    for i in range(12):
        await memory.add_exchange("alice", f"I live in city {i}", "Noted")
    await memory.flush("alice")
    await memory.add_exchange("alice", "I live in city 99", "Noted")
    await memory.process("alice")
    shown = extractor.batches[-1].known
    assert len(shown) >= 1 and sum(estimate_tokens(k.text) for k in shown) <= 2000 // 4
    assert len(shown) < 12, "a known entry is about 250 tokens: only a few fit"


async def test_a_user_with_many_entries_is_shown_what_each_message_of_a_wordy_batch_changes(
    make_memory: Any,
) -> None:
    """Past 100 current entries the entries shown are searched for; a short "I moved to
    Bergen" in a chatty batch still finds the home it replaces, so no second home."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_exchange("alice", "I live in Oslo", "Oslo is lovely.")
    for i in range(100):
        await memory.add_exchange("alice", f"I like item{i} things", "ok")
    await memory.flush("alice")
    chat = [
        ("I moved to Bergen", "Congratulations on the relocation! How is the new apartment?"),
        (
            "Unpacking everything is exhausting, honestly",
            "Moving is stressful. Take breaks and celebrate the small victories along the way.",
        ),
        (
            "The neighbourhood seems friendly and peaceful",
            "Wonderful! Local cafés, bookshops and walking trails could help you settle quickly.",
        ),
        (
            "Any suggestions for organising my kitchen cupboards?",
            "Group similar utensils, keep everyday essentials accessible, store seasonal "
            "equipment higher.",
        ),
    ]
    for said, reply in chat:
        await memory.add_exchange("alice", said, reply)
    await memory.process("alice")
    homes = [e.text for e in await memory.knowledge("alice") if "lives in" in e.text]
    assert homes == ["User lives in Bergen."]


async def test_a_user_with_many_entries_who_says_a_change_in_other_words_keeps_one_value(
    make_memory: Any,
) -> None:
    """Past 100 current entries, "I'm a nurse." shares no word with "User is a doctor.":
    the entry is found by meaning, so the occupation is updated, not doubled."""
    memory: Memory = await make_memory(
        extractor=OfflineExtractor(),
        embedder=ConceptEmbedder(),
        config={"search_embed_seconds": None},
    )
    await memory.add_message("alice", "user", "I'm a doctor.")
    for i in range(110):
        await memory.add_message("alice", "user", f"I like item{i} things")
    await memory.flush("alice")
    await memory.retrieve("alice", "job")  # as the background would: every entry embedded
    await memory.add_message("alice", "user", "I'm a nurse.")
    await memory.process("alice")
    jobs = [e.text for e in await memory.knowledge("alice") if "item" not in e.text]
    assert jobs == ["User is a nurse."]


class _HeldEmbedder(ConceptEmbedder):
    """The concept embedder, held until ``gate`` is set (a remote embedding API taking its
    time); ``held`` is set once a call other than the background's waits."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.held = threading.Event(), threading.Event()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if threading.current_thread().name != "memvee-embedding":
            self.held.set()
        self.gate.wait(10)
        return super().embed(texts)


async def test_a_slow_embedder_never_holds_the_users_writes_while_its_batch_is_prepared(
    make_memory: Any,
) -> None:
    """Past 100 current entries a batch's texts are embedded to choose the entries shown
    beside it: off the user's actor, so that ``add_exchange`` stays fast meanwhile."""
    embedder = _HeldEmbedder()
    embedder.gate.set()
    memory: Memory = await make_memory(extractor=OfflineExtractor(), embedder=embedder)
    for i in range(110):
        await memory.add_message("alice", "user", f"I like item{i} things")
    await memory.flush("alice")
    embedder.gate.clear()
    await memory.add_message("alice", "user", "I'm a nurse.")
    task = memory.process_async("alice")
    assert await asyncio.to_thread(embedder.held.wait, 10)
    try:
        await asyncio.wait_for(memory.add_exchange("alice", "I live in Oslo", "ok"), 5)
    finally:
        embedder.gate.set()
    assert await task.wait() == 1
    assert [m.content for m in await memory.buffer("alice")] == ["I live in Oslo", "ok"]


class _CountedHeldEmbedder(_HeldEmbedder):
    """:class:`_HeldEmbedder` that sets ``together`` once two calls other than the
    background's wait at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.together, self._waiting, self._lock = threading.Event(), 0, threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        counted = threading.current_thread().name != "memvee-embedding"
        if counted:
            with self._lock:
                self._waiting += 1
                if self._waiting >= 2:
                    self.together.set()
        try:
            return super().embed(texts)
        finally:
            if counted:
                with self._lock:
                    self._waiting -= 1


async def test_a_slow_embedder_holds_one_users_batch_not_every_users(make_memory: Any) -> None:
    """Batches of two users past 100 current entries embed their texts at the same time:
    a remote embedder's slow answer to one user is not every user's wait."""
    embedder = _CountedHeldEmbedder()
    embedder.gate.set()
    memory: Memory = await make_memory(extractor=OfflineExtractor(), embedder=embedder)
    for user in ("alice", "bob"):
        for i in range(110):
            await memory.add_message(user, "user", f"I like item{i} things")
        await memory.flush(user)
    embedder.gate.clear()
    tasks = []
    for user in ("alice", "bob"):
        await memory.add_message(user, "user", "I'm a nurse.")
        tasks.append(memory.process_async(user))
    try:
        assert await asyncio.to_thread(embedder.together.wait, 10), "one batch at a time"
    finally:
        embedder.gate.set()
    assert [await task.wait() for task in tasks] == [1, 1]


async def _held_batch(make_memory: Any, embedder: _HeldEmbedder, **config: Any) -> Memory:
    """A Memory whose user ``alice`` has 110 current entries and one message more,
    processed in the background while ``embedder`` holds the batch's texts."""
    embedder.gate.set()
    memory: Memory = await make_memory(
        extractor=OfflineExtractor(), embedder=embedder, config=config
    )
    for i in range(110):
        await memory.add_message("alice", "user", f"I like item{i} things")
    await memory.flush("alice")
    embedder.gate.clear()
    await memory.add_message("alice", "user", "I'm a nurse.")
    return memory


async def test_a_batch_whose_embedder_does_not_answer_goes_on_by_words(
    make_memory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An embedder that has not answered a batch's texts within ``batch_embed_seconds``
    leaves the entries beside the batch to words: the task completes meanwhile."""
    embedder = _HeldEmbedder()
    memory = await _held_batch(make_memory, embedder, batch_embed_seconds=0.01)
    task = memory.process_async("alice")
    try:
        assert await asyncio.to_thread(embedder.held.wait, 10)
        with caplog.at_level(logging.WARNING, logger="memvee"):
            assert await asyncio.wait_for(task.wait(), 5) == 1
        assert await memory.buffer("alice") == []
        assert "did not answer a batch's texts within 0.01 s" in caplog.text
    finally:
        embedder.gate.set()


_HUNG_AT_CLOSE = """
import asyncio, sys, threading
from memvee import Memory, MemoryConfig
from memvee.extractors import OfflineExtractor
from tests.support.embedders import ConceptEmbedder

class Hung(ConceptEmbedder):
    held, hold = threading.Event(), False
    def embed(self, texts):
        if self.hold and threading.current_thread().name.startswith("memvee-meaning"):
            self.held.set()
            threading.Event().wait()  # never answers
        return super().embed(texts)

async def main():
    embedder = Hung()
    config = MemoryConfig(db_path=sys.argv[1], batch_embed_seconds=3600)
    memory = Memory(config=config, extractor=OfflineExtractor(), embedder=embedder)
    await memory.open()
    for i in range(110):
        await memory.add_message("alice", "user", f"I like item{i} things")
    await memory.flush("alice")
    embedder.hold = True
    await memory.add_message("alice", "user", "I'm a nurse.")
    task = memory.process_async("alice")
    assert await asyncio.to_thread(embedder.held.wait, 10)
    await memory.close(grace=0)
    print(task.status.name)

asyncio.run(main())
"""


def test_an_embedder_that_hangs_at_close_never_keeps_the_process_alive(tmp_path: Path) -> None:
    """The threads that embed a batch's texts are memvee's daemons: one that an embedder
    holds past ``close`` is abandoned, and the process exits as soon as its work is done."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _HUNG_AT_CLOSE, str(tmp_path / "m.db")],
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process never exited after close returned")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FAILED"]


class _DownEmbedder(ConceptEmbedder):
    """An embedder whose service is down: every call fails."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("embedding service unavailable")


class _InterruptedEmbedder(ConceptEmbedder):
    """An embedder that raises what is no ``Exception`` (as a library caught by a Ctrl-C
    may, or one that calls ``sys.exit``)."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "embedder",
    [False, _DownEmbedder(), _InterruptedEmbedder()],
    ids=["none", "down", "interrupted"],
)
async def test_without_a_working_embedder_a_user_with_many_entries_is_still_processed(
    make_memory: Any, caplog: pytest.LogCaptureFixture, embedder: Any
) -> None:
    """Without an embedder, or with one that fails (even by raising ``KeyboardInterrupt``),
    the entries beside a batch are found by their words only, a warning says so, the batch
    is extracted all the same, and every user goes on."""
    memory: Memory = await make_memory(extractor=OfflineExtractor(), embedder=embedder)
    await memory.add_message("ann", "user", "I live in Oslo")
    for i in range(110):
        await memory.add_message("bob", "user", f"I like item{i} things")
    await memory.flush("bob")
    await memory.add_message("bob", "user", "I'm a nurse.")
    with caplog.at_level(logging.WARNING, logger="memvee"):
        assert await asyncio.wait_for(memory.process("bob"), 10) == 1
    assert "chosen by their words only" in caplog.text
    await memory.add_message("ann", "user", "I work at Acme")
    assert await memory.process("ann") == 2


async def test_process_with_nothing_buffered_returns_zero(memory: Memory) -> None:
    assert await memory.process("nobody") == 0


async def test_process_async_returns_at_once_and_moves_pending_running_completed(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    await _exchanges(memory, "bob", 2)
    task = memory.process_async("bob")
    assert isinstance(task, ProcessTask)
    assert task.status is ProcessStatus.PENDING and not task.done
    assert task.user_id == "bob" and task.knowledge_count == 0 and task.error is None
    await _until(lambda: task.status is ProcessStatus.RUNNING)
    assert not task.done
    extractor.gate.set()
    assert await task.wait() == 2
    assert task.status is ProcessStatus.COMPLETED and task.done
    assert task.knowledge_count == 2


async def test_knowledge_is_visible_as_soon_as_wait_returns(memory: Memory) -> None:
    await _exchanges(memory, "carol", 4)
    task = memory.process_async("carol")
    count = await task.wait()
    assert len(await memory.knowledge("carol")) == count == 4


async def test_two_concurrent_process_calls_never_send_a_message_twice(
    memory: Memory, extractor: RecordingExtractor
) -> None:
    ids = await _exchanges(memory, "dave", 5)
    results = await asyncio.gather(memory.process("dave"), memory.process("dave"))
    assert results == [5, 5], "each counts the entries of what was buffered when called"
    sent = Counter(extractor.sent_message_ids)
    assert set(sent) == set(ids) and max(sent.values()) == 1


async def test_messages_added_during_processing_go_to_the_next_batch(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    first = await _exchanges(memory, "erin", 2)
    task = memory.process_async("erin")
    await _until(lambda: task.status is ProcessStatus.RUNNING)
    later = await _exchanges(memory, "erin", 1, start=10)
    extractor.gate.set()
    assert await task.wait() == 2
    assert [m.message_id for m in await memory.buffer("erin")] == later
    assert await memory.process("erin") == 1
    assert [m.message_id for m in extractor.batches[0].messages] == first
    assert [m.message_id for m in extractor.batches[1].messages] == later


async def test_flush_leaves_nothing_buffered_even_when_a_task_was_running(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    await _exchanges(memory, "fay", 2)
    running = memory.process_async("fay")
    await _until(lambda: running.status is ProcessStatus.RUNNING)
    await _exchanges(memory, "fay", 3, start=10)
    flushing = asyncio.ensure_future(memory.flush("fay"))
    await asyncio.sleep(0.05)
    extractor.gate.set()
    assert await flushing == 5
    assert await memory.buffer("fay") == []
    assert len(await memory.knowledge("fay")) == 5


async def _flush_behind_a_held_run(
    memory: Memory, extractor: RecordingExtractor
) -> tuple[ProcessTask, asyncio.Future[int]]:
    """A run of fay's two exchanges held at the extractor, and a flush begun behind it."""
    extractor.gate.clear()
    await _exchanges(memory, "fay", 2)
    running = memory.process_async("fay")
    await _until(lambda: running.status is ProcessStatus.RUNNING)
    flushing = asyncio.ensure_future(memory.flush("fay"))
    await asyncio.sleep(0.05)
    return running, flushing


async def test_flush_covers_what_a_task_already_running_failed_to_and_raises_only_its_own(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """As process does: the failure of a task flush did not start (one another Memory's
    close interrupted, say) leaves messages its own run covers; wait_for_processing
    still reports it."""
    extractor.fail_next = 1
    memory: Memory = await make_memory()
    running, flushing = await _flush_behind_a_held_run(memory, extractor)
    extractor.gate.set()
    assert await flushing == 2
    assert running.status is ProcessStatus.FAILED
    assert await memory.buffer("fay") == []
    extractor.fail_next = 1
    await _exchanges(memory, "fay", 1, start=10)
    with pytest.raises(ProcessingError):
        await memory.flush("fay")


async def test_flush_of_a_user_forgotten_meanwhile_raises_user_forgotten(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """No run can cover what a forget erased: flush says so rather than count entries
    that are gone."""
    memory: Memory = await make_memory()
    _, flushing = await _flush_behind_a_held_run(memory, extractor)
    await memory.forget("fay")
    extractor.gate.set()
    with pytest.raises(UserForgottenError):
        await flushing


@pytest.mark.parametrize("run_under_way", ["interrupted", "failing"])
async def test_a_flush_the_memorys_close_cuts_short_raises_memory_closed_not_another_runs_failure(
    make_memory: Any, extractor: RecordingExtractor, run_under_way: str
) -> None:
    """flush raises only for its own runs: closed while it waits for a run it did not start
    (which the close interrupts, or which fails of its own meanwhile), it can request none,
    so it says the Memory closed; that run's messages stay buffered for the next open."""
    extractor.gate.clear()
    memory: Memory = await make_memory()
    written = await _exchanges(memory, "fay", 2)
    running = memory.process_async("fay")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    flushing = asyncio.ensure_future(memory.flush("fay"))
    await asyncio.sleep(0)  # flush now waits for the run under way, held at the gate
    if run_under_way == "interrupted":
        closing = asyncio.ensure_future(memory.close(grace=0.2))
    else:
        extractor.fail_next = 1
        closing = asyncio.ensure_future(memory.close(grace=30))
        await _until(lambda: not memory.is_open)
        extractor.gate.set()
    try:
        with pytest.raises(MemoryClosedError):
            await flushing
        await closing
    finally:
        extractor.gate.set()
    assert running.status is ProcessStatus.FAILED
    again: Memory = await make_memory()
    assert {m.message_id for m in await again.buffer("fay")} == set(written)
    assert await again.flush("fay") == 2
    assert await again.buffer("fay") == []


async def test_wait_for_processing_sees_process_async_tasks(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.delay = 0.2
    memory: Memory = await make_memory()
    await _exchanges(memory, "gil", 3)
    task = memory.process_async("gil")
    assert await memory.wait_for_processing("gil") == 3
    assert task.done and task.status is ProcessStatus.COMPLETED


async def test_wait_for_processing_waits_for_the_runs_in_flight_when_called_not_later_ones(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """A user who keeps writing keeps starting runs: the wait ends with the runs in flight
    when it was called (``flush`` is the call that waits until nothing is buffered)."""
    extractor.gate.clear()
    later = threading.Event()

    def held_if_later(batch: ExtractionBatch) -> None:
        if any("later" in m.content for m in batch.messages):
            later.wait(10)

    extractor.fault = held_if_later
    memory: Memory = await make_memory()
    await _exchanges(memory, "wes", 2)
    first = memory.process_async("wes")
    assert await asyncio.to_thread(extractor.started.wait, 5)
    waiting = asyncio.ensure_future(memory.wait_for_processing("wes"))
    async with asyncio.timeout(10):
        while not _awaits(waiting, "_wait_inflight"):  # it has taken the runs in
            await asyncio.sleep(0.01)
    await memory.add_exchange("wes", "written later", "ok")
    second = memory.process_async("wes")
    extractor.gate.set()
    try:
        assert await asyncio.wait_for(waiting, 5) == 2
        assert first.status is ProcessStatus.COMPLETED and not second.done
    finally:
        later.set()
    assert await second.wait() == 1


async def test_wait_for_processing_with_nothing_in_flight_returns_zero(memory: Memory) -> None:
    assert await memory.wait_for_processing("idle", timeout=1) == 0


async def test_a_timeout_raises_timeout_error_and_does_not_cancel_the_work(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    await _exchanges(memory, "hal", 2)
    task = memory.process_async("hal")
    with pytest.raises(TimeoutError) as raised:
        await memory.wait_for_processing("hal", timeout=0.1)
    assert isinstance(raised.value, ProcessingTimeoutError)
    assert not task.done
    extractor.gate.set()
    await memory.wait_for_processing("hal", timeout=10)  # 0 if the task ended before it
    assert task.status is ProcessStatus.COMPLETED and task.knowledge_count == 2


async def test_cancelling_a_wait_does_not_cancel_the_task(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    await _exchanges(memory, "ivy", 1)
    task = memory.process_async("ivy")
    waiter = asyncio.ensure_future(task.wait())
    await asyncio.sleep(0.05)
    waiter.cancel()
    extractor.gate.set()
    assert await task.wait() == 1


async def test_an_extractor_failure_fails_the_task_keeps_the_messages_and_the_next_run_covers_them(
    memory: Memory, extractor: RecordingExtractor
) -> None:
    ids = await _exchanges(memory, "jo", 2)
    extractor.fail_next = 1
    task = memory.process_async("jo")
    with pytest.raises(ProcessingError, match="failed on purpose") as raised:
        await task.wait()
    assert raised.value.task_id == task.task_id
    assert task.status is ProcessStatus.FAILED and task.done
    assert task.error is not None and "failed on purpose" in task.error
    assert [m.message_id for m in await memory.buffer("jo")] == ids
    assert await memory.process("jo") == 2
    assert await memory.buffer("jo") == []
    entries = await memory.knowledge("jo")
    assert sorted(m for e in entries for m in e.source_message_ids) == sorted(ids[0::2])


async def test_an_answer_citing_unknown_messages_is_repaired_and_the_repair_recorded(
    memory: Memory, extractor: RecordingExtractor
) -> None:
    from memvee import ExtractedFact

    extractor.answer = lambda batch: (ExtractedFact("made up", ("no-such-message",)),)
    said = (await _exchanges(memory, "kim", 1))[0]
    assert await memory.process("kim") == 1
    (entry,) = await memory.knowledge("kim")
    assert entry.source_message_ids == (said,)
    assert await memory.buffer("kim") == []


async def test_a_task_that_ends_while_the_wait_begins_is_counted(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task ends while wait_for_processing looks for other processes' tasks of the
    user: its entries are counted all the same (the wait returned 0, then)."""
    extractor.gate.clear()
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    await _exchanges(memory, "lee", 2)
    [task] = memory._inflight["lee"].values()
    follow = memory._follow_tasks_elsewhere

    async def ending_meanwhile(user_id: str) -> None:
        extractor.gate.set()
        await task.wait()
        await follow(user_id)

    monkeypatch.setattr(memory, "_follow_tasks_elsewhere", ending_meanwhile)
    assert await memory.wait_for_processing("lee", timeout=10) == 2


async def test_auto_process_starts_in_the_background_when_the_threshold_is_crossed(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    await _exchanges(memory, "lee", 1)
    assert memory._inflight.get("lee") is None
    await _exchanges(memory, "lee", 1, start=1)
    tasks = await memory.tasks("lee")
    assert len(tasks) == 1 and tasks[0].trigger == "auto" and not tasks[0].done
    extractor.gate.set()
    assert await memory.wait_for_processing("lee", timeout=10) == 2
    assert await memory.buffer("lee") == []


async def test_process_counts_what_an_automatic_run_ahead_of_it_extracted(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """The automatic run goes first and takes the buffered messages, so process()'s own
    task finds none: process() still says what was extracted from them."""
    extractor.gate.clear()
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    await _exchanges(memory, "lee", 2)
    [auto] = await memory.tasks("lee")
    processing = asyncio.ensure_future(memory.process("lee"))
    await asyncio.sleep(0.05)
    extractor.gate.set()
    assert await processing == 2
    assert [t.knowledge_count for t in await memory.tasks("lee")] == [2, 0]
    assert auto.trigger == "auto" and await memory.buffer("lee") == []


async def test_failed_processing_surfaces_in_wait_for_processing(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.fail_next = 1
    extractor.gate.clear()  # the task stays in flight until the wait has taken it in
    memory: Memory = await make_memory(auto_process=True, batch_threshold=2)
    await _exchanges(memory, "mo", 1)
    waiting = asyncio.ensure_future(memory.wait_for_processing("mo"))
    async with asyncio.timeout(10):
        while not _awaits(waiting, "_wait_inflight"):
            await asyncio.sleep(0.01)
    extractor.gate.set()
    with pytest.raises(ProcessingError):
        await asyncio.wait_for(waiting, 10)
    assert len(await memory.buffer("mo")) == 2


def _awaits(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended inside a coroutine function called ``name``."""
    coroutine: Any = task.get_coro()
    while coroutine is not None:
        code = getattr(coroutine, "cr_code", None)
        if code is not None and code.co_name == name:
            return True
        coroutine = getattr(coroutine, "cr_await", None)
    return False


async def test_many_users_processed_concurrently_each_message_covered_once(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    memory: Memory = await make_memory(auto_process=True, batch_threshold=4)
    users = [f"user-{i}" for i in range(20)]

    async def chat(user: str) -> list[str]:
        return await _exchanges(memory, user, 7)

    written = await asyncio.gather(*(chat(u) for u in users))
    counts = await asyncio.gather(*(memory.flush(u) for u in users))
    assert sum(counts) >= 0
    sent = Counter(extractor.sent_message_ids)
    assert set(sent) == {m for ids in written for m in ids}
    assert max(sent.values()) == 1
    for user in users:
        assert len(await memory.knowledge(user)) == 7
        assert await memory.buffer(user) == []


async def test_get_task_finds_live_and_logged_tasks(memory: Memory) -> None:
    from memvee import UnknownTaskError

    await _exchanges(memory, "ned", 1)
    task = memory.process_async("ned")
    assert await memory.get_task("ned", task.task_id) is task
    await task.wait()
    found = await memory.get_task("ned", task.task_id)
    assert found.status is ProcessStatus.COMPLETED
    with pytest.raises(UnknownTaskError):
        await memory.get_task("ned", "no-such-task")
    with pytest.raises(ValueError):
        await memory.get_task("someone-else", task.task_id)


async def test_a_requested_task_is_found_by_every_memory_of_the_database_once_returned(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """A service hands the task id to a client who may ask another process at once."""
    extractor.gate.clear()
    here: Memory = await make_memory(config={"leases": True})
    other: Memory = await make_memory(config={"leases": True})
    await _exchanges(here, "ivy", 1)

    task = await here.request_processing("ivy")

    found = await other.get_task("ivy", task.task_id)
    assert found.status in (ProcessStatus.PENDING, ProcessStatus.RUNNING)
    assert task.task_id in [t.task_id for t in await other.tasks("ivy")]
    extractor.gate.set()
    assert await task.wait() == 1
    assert await found.wait() == 1


async def test_a_requested_task_with_nothing_to_do_is_stored_completed_for_every_memory(
    make_memory: Any,
) -> None:
    here: Memory = await make_memory(config={"leases": True})
    other: Memory = await make_memory(config={"leases": True})
    await _exchanges(here, "ivy", 1)
    await here.flush("ivy")

    task = await here.request_processing("ivy")

    assert task.status is ProcessStatus.COMPLETED and task.knowledge_count == 0
    found = await other.get_task("ivy", task.task_id)
    assert (found.status, found.knowledge_count, found.message_count) == (
        ProcessStatus.COMPLETED,
        0,
        0,
    )


async def test_asking_an_idle_user_again_stores_nothing_more_and_returns_the_same_task(
    memory: Memory,
) -> None:
    """A client polling ``process`` on a user with nothing new does not grow their log:
    while nothing was written since, the task that found nothing to do is returned."""
    await _exchanges(memory, "ivy", 1)
    await memory.flush("ivy")
    first = await memory.request_processing("ivy")
    version = (await memory.user("ivy")).version  # type: ignore[union-attr]

    again = [await memory.request_processing("ivy") for _ in range(3)]

    assert {t.task_id for t in again} == {first.task_id}
    assert all(t.status is ProcessStatus.COMPLETED for t in again)
    assert (await memory.user("ivy")).version == version  # type: ignore[union-attr]
    await _exchanges(memory, "ivy", 1)
    assert (await memory.request_processing("ivy")).task_id != first.task_id


async def test_a_request_for_a_user_never_written_is_refused_and_nothing_is_written(
    memory: Memory,
) -> None:
    with pytest.raises(NotFoundError, match="no user 'nobody'"):
        await memory.request_processing("nobody")
    assert await memory.user("nobody") is None


async def test_a_request_the_database_refuses_raises_and_leaves_no_task_pending(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _exchanges(memory, "ivy", 1)
    assert memory._engine is not None
    outage = StoreOutage(memory._engine.store, monkeypatch)
    outage.down.set()

    with pytest.raises(StorageError, match=OUTAGE_ERROR):
        await memory.request_processing("ivy")

    assert await memory.tasks("ivy") == []  # none stored, none left pending
    outage.down.clear()
    assert await (await memory.request_processing("ivy")).wait() == 1


async def test_a_task_scheduled_behind_a_running_one_stays_pending_until_it_starts(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory()
    await _exchanges(memory, "oz", 1)
    first = memory.process_async("oz")
    await _until(lambda: first.status is ProcessStatus.RUNNING)
    await _exchanges(memory, "oz", 1, start=1)
    second = memory.process_async("oz")
    await asyncio.sleep(0.1)
    assert second.status is ProcessStatus.PENDING
    extractor.gate.set()
    assert await first.wait() == 1
    assert await second.wait() == 1


async def test_extraction_runs_on_the_worker_pool_not_on_the_actor_thread(
    memory: Memory, extractor: RecordingExtractor
) -> None:
    import threading

    seen: list[str] = []
    original = extractor.extract

    async def spy(batch: Any) -> Any:
        seen.append(threading.current_thread().name)
        return await original(batch)

    extractor.extract = spy  # type: ignore[method-assign]
    await _exchanges(memory, "pat", 1)
    await memory.process("pat")
    assert seen == ["memvee-extraction"]


async def test_an_extractor_that_blocks_the_loop_past_the_timeout_is_named_in_a_warning(
    make_memory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A blocking call inside ``async def extract`` holds the extraction loop, so the
    timeout cannot fire: the answer is kept, and the log says what went wrong."""

    class Blocking(RecordingExtractor):
        async def extract(self, batch: ExtractionBatch) -> Any:
            time.sleep(0.5)  # noqa: ASYNC251 - the mistake under test
            return await super().extract(batch)

    memory: Memory = await make_memory(extractor=Blocking(), config={"extraction_timeout": 0.2})
    await _exchanges(memory, "quin", 1)
    with caplog.at_level(logging.WARNING, logger="memvee.actors"):
        assert await memory.process("quin") == 1
    assert "past the 0.2 s timeout" in caplog.text
    assert "blocks the extraction loop" in caplog.text


async def test_an_extraction_past_its_timeout_fails_the_task_and_keeps_the_messages(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    extractor.delay = 60
    # 5 s, so that the retry below fits in it on a loaded machine (0.2 s did not always)
    memory: Memory = await make_memory(config={"extraction_timeout": 5})
    await _exchanges(memory, "quin", 1)
    with pytest.raises(ProcessingError, match=r"timed out after 5 s"):
        await memory.process("quin")
    assert len(await memory.buffer("quin")) == 2
    extractor.delay = 0
    assert await memory.process("quin") == 1


class _NeverReady(RecordingExtractor):
    """An extractor whose prepare() never returns (a token fetch that hangs)."""

    async def prepare(self) -> None:
        await asyncio.Event().wait()


async def test_an_extractor_that_never_gets_ready_fails_the_task_at_its_timeout(
    make_memory: Any,
) -> None:
    memory: Memory = await make_memory(extractor=_NeverReady(), config={"extraction_timeout": 1})
    await _exchanges(memory, "rita", 1)
    with pytest.raises(ProcessingError, match=r"timed out after 1 s"):
        await asyncio.wait_for(memory.process("rita"), 30)
    assert len(await memory.buffer("rita")) == 2


async def test_a_memory_whose_batches_embed_nothing_starts_no_meaning_thread(
    make_memory: Any,
) -> None:
    """The threads a batch's texts are embedded on start with the first batch that needs
    them: a lexical Memory, or one whose users have few entries, starts none."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    assert await memory.flush("ann") >= 1
    engine = memory._engine
    assert engine is not None and engine._meaning_threads._threads == []
