"""Past 100 current entries, what a batch is shown (the entries related to its texts by
words, and by meaning with an embedder) is prepared off the user's actor: a user whose
thousands of entries share a word waits on no ranked search to add an exchange."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from actors.engine import STOPPING_READ
from events import ExtractedFact, ExtractionBatch
from events.errors import FORGOTTEN_REASON
from memvee import Memory, ProcessStatus, ProcessTask
from memvee.audit import Audit
from projections import LexicalRanker
from projections.shown import ByMeaning
from tests.support.extractors import RecordingExtractor

ENTRIES = 101
"""One past the entries every batch is shown whole."""


class _HeldSearch:
    """Holds :meth:`LexicalRanker.related` until ``gate`` is set; ``held`` is set once a
    search waits."""

    def __init__(self) -> None:
        self.gate, self.held = threading.Event(), threading.Event()


@pytest.fixture
def search(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HeldSearch]:
    """The user's searches beside a batch, held until the test opens the gate."""
    held = _HeldSearch()
    related = LexicalRanker.related

    def waiting(self: LexicalRanker, *args: Any, **kwargs: Any) -> Any:
        held.held.set()
        held.gate.wait(10)
        return related(self, *args, **kwargs)

    monkeypatch.setattr(LexicalRanker, "related", waiting)
    yield held
    held.gate.set()


def _oslo_facts(batch: ExtractionBatch) -> tuple[ExtractedFact, ...]:
    """More than :data:`ENTRIES` facts, every one naming Oslo, of a batch's first message.
    Only the first says where Alice lives: a batch saying "live" ranks it above the others
    on either backend (PostgreSQL's ts_rank scores the others' "Oslo" alike with it, and a
    tie cut by the limit keeps the newest written)."""
    said = batch.messages[0].message_id
    return (
        ExtractedFact("User lives in Oslo.", (said,)),
        *(ExtractedFact(f"User likes place {i} in Oslo.", (said,)) for i in range(ENTRIES)),
    )


@pytest.fixture
async def memory(make_memory: Callable[..., Any], extractor: RecordingExtractor) -> Memory:
    """An open Memory whose user ``alice`` has more than :data:`ENTRIES` current entries,
    every one naming Oslo: each of her batches is prepared aside."""
    opened: Memory = await make_memory()
    extractor.answer = _oslo_facts
    await opened.add_message("alice", "user", "Tell me about Oslo")
    await opened.process("alice")
    extractor.answer = None
    return opened


async def _a_batch_held_mid_read(memory: Memory, search: _HeldSearch) -> ProcessTask:
    """Alice's "I no longer live in Oslo" asked to be processed, its task held while the
    entries shown beside its batch are searched aside."""
    search.gate.clear()
    search.held.clear()
    await memory.add_message("alice", "user", "I no longer live in Oslo")
    task = memory.process_async("alice")
    assert await asyncio.to_thread(search.held.wait, 10)
    return task


async def test_a_users_writes_go_on_while_the_entries_shown_beside_their_batch_are_searched(
    memory: Memory, extractor: RecordingExtractor, search: _HeldSearch
) -> None:
    task = await _a_batch_held_mid_read(memory, search)
    try:
        await asyncio.wait_for(memory.add_exchange("alice", "I love Oslo", "ok"), 5)
    finally:
        search.gate.set()
    assert await task.wait() == 1
    assert "User lives in Oslo." in [k.text for k in extractor.batches[-1].known]
    assert [m.content for m in await memory.buffer("alice")] == ["I love Oslo", "ok"]


async def test_a_user_forgotten_while_their_batch_is_prepared_drops_it(
    memory: Memory,
    extractor: RecordingExtractor,
    search: _HeldSearch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches = len(extractor.batches)
    task = await _a_batch_held_mid_read(memory, search)
    caplog.set_level(logging.INFO, logger="memvee.actors")
    await asyncio.wait_for(memory.forget("alice"), 5)
    search.gate.set()
    with pytest.raises(Exception, match="forgotten"):
        await task.wait()
    assert task.error == FORGOTTEN_REASON
    async with asyncio.timeout(5):
        while "had ended when the entries shown beside its batch were read" not in caplog.text:
            await asyncio.sleep(0.005)
    assert len(extractor.batches) == batches, "nothing of a forgotten user is extracted"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_batch_whose_user_lease_was_lost_while_it_was_prepared_is_not_extracted(
    memory: Memory,
    extractor: RecordingExtractor,
    search: _HeldSearch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The new owner closes the task: an answer would be refused at recording."""
    engine = memory._engine
    assert engine is not None
    batches = len(extractor.batches)
    await _a_batch_held_mid_read(memory, search)
    caplog.set_level(logging.INFO, logger="memvee.actors")
    lost = engine.directory.call("alice", "renew_ownership", False)
    await asyncio.to_thread(lambda: lost.get(timeout=10))
    search.gate.set()
    async with asyncio.timeout(5):
        while "the lease was lost while the entries shown beside" not in caplog.text:
            if len(extractor.batches) > batches:
                break
            await asyncio.sleep(0.005)
    assert len(extractor.batches) == batches, "no extractor is paid for a refused answer"
    await memory.close(grace=0)


async def test_a_failed_search_beside_a_batch_ends_its_task_as_a_storage_failure(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:

    def failing(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(LexicalRanker, "related", failing)
    await memory.add_message("alice", "user", "I left Oslo for good")
    task = memory.process_async("alice")
    with pytest.raises(Exception, match="database is locked"):
        await task.wait()
    assert task.status is ProcessStatus.FAILED and task.error is not None
    assert task.error.startswith("could not read the entries shown beside a batch")
    assert [m.content for m in await memory.buffer("alice")] == ["I left Oslo for good"]


async def test_a_close_while_a_batch_is_prepared_ends_its_task_and_drops_the_late_read(
    memory: Memory,
    extractor: RecordingExtractor,
    search: _HeldSearch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches = len(extractor.batches)
    task = await _a_batch_held_mid_read(memory, search)
    caplog.set_level(logging.INFO, logger="memvee.actors")
    closing = asyncio.ensure_future(memory.close(grace=0))
    async with asyncio.timeout(5):
        while task.status is not ProcessStatus.FAILED:
            await asyncio.sleep(0.005)
    assert not closing.done(), "close waits for the read still running"
    search.gate.set()
    await asyncio.wait_for(closing, 5)
    assert "had ended when the entries shown beside its batch were read" in caplog.text
    assert not [t for t in threading.enumerate() if t.name.startswith("memvee-shown")]
    assert len(extractor.batches) == batches
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_read_aside_still_running_at_close_opens_no_connection_once_the_engine_stops(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's read aside, between its steps when the Memory closes, ends without a
    connection: none is opened on the store once it is closing, none left after."""
    engine = memory._engine
    assert engine is not None
    gate, held = threading.Event(), threading.Event()
    near = ByMeaning.near

    def waiting(self: ByMeaning, *args: Any, **kwargs: Any) -> Any:
        held.set()
        gate.wait(10)
        return near(self, *args, **kwargs)

    late: list[str] = []

    def checkout(*_: Any) -> None:
        if engine._stopping.is_set():
            late.append(threading.current_thread().name)

    monkeypatch.setattr(ByMeaning, "near", waiting)
    event.listen(engine.store.engine, "checkout", checkout)
    await memory.add_message("alice", "user", "I left Oslo for good")
    task = memory.process_async("alice")
    assert await asyncio.to_thread(held.wait, 10)
    closing = asyncio.ensure_future(memory.close(grace=0))
    assert await asyncio.to_thread(engine._stopping.wait, 10)
    gate.set()
    await asyncio.wait_for(closing, 10)
    for thread in threading.enumerate():
        if thread.name.startswith("memvee-shown"):
            await asyncio.to_thread(thread.join, 10)
    assert task.status is ProcessStatus.FAILED
    assert [name for name in late if name.startswith("memvee-shown")] == []


async def test_a_read_aside_still_queued_when_the_engine_stops_tells_that_it_stops(
    memory: Memory,
) -> None:
    engine = memory._engine
    assert engine is not None
    release = threading.Event()
    try:
        for _ in range(engine.options.actor_threads):  # every shown thread busy
            assert engine._shown_threads.submit(lambda: release.wait(10))
        told: list[object] = []
        engine._shown_aside("alice", (), 0, None, told.append)
        engine._shown_threads.stop()
    finally:
        release.set()
    assert [str(error) for error in told] == [STOPPING_READ]


async def test_a_batch_whose_shown_entries_were_promoted_away_is_extracted_again(
    memory: Memory,
    db_url: str,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entries read aside are checked when the answer is recorded, as those read on
    the actor were: a promotion while they are read, the read shows what it replaced,
    and an update of one no longer current has its batch extracted again."""
    with Audit(db_url=db_url) as audit:
        again = RecordingExtractor()
        again.answer = _oslo_facts
        assert (await audit.reextract("alice", again, "v2")).entries == ENTRIES + 1

    def moves(batch: ExtractionBatch) -> tuple[ExtractedFact, ...]:
        (home,) = [k for k in batch.known if k.text == "User lives in Oslo."]
        said = (batch.messages[0].message_id,)
        return (ExtractedFact("User lives in Bergen.", said, "update", home.entry_id),)

    gate, held = threading.Event(), threading.Event()
    related = LexicalRanker.related

    def held_once_read(self: LexicalRanker, *args: Any, **kwargs: Any) -> Any:
        found = related(self, *args, **kwargs)
        held.set()
        gate.wait(10)
        return found

    monkeypatch.setattr(LexicalRanker, "related", held_once_read)
    extractor.answer = moves
    await memory.add_message("alice", "user", "I no longer live in Oslo, I left it for Bergen")
    task = memory.process_async("alice")
    assert await asyncio.to_thread(held.wait, 10)
    try:
        with Audit(db_url=db_url) as audit:
            assert audit.promote("alice", "v2") == []
    finally:
        gate.set()
    assert await task.wait() == 1
    first, second = ({k.entry_id for k in b.known} for b in extractor.batches[-2:])
    assert first.isdisjoint(second), "the second batch is shown the promoted entries"
    homes = [e.text for e in await memory.knowledge("alice") if "lives in" in e.text]
    assert homes == ["User lives in Bergen."]
