"""A database that fails never stops a user's memory, and needs no restart: a task whose
end could not be stored is closed once it answers (its messages back in the buffer), a
refused task start is tried again, a failed read or store is never blamed on a batch's
messages, and every caller is told with a StorageError."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from actors._committer import GroupCommitter
from actors.user_actor import STORE_ATTEMPTS, UNSTORED_REASON
from events import (
    ConflictError,
    ExtractionBatch,
    ExtractionError,
    ExtractionResult,
    StorageError,
    UserLog,
    user_log_id,
)
from memvee import Memory, ProcessingError, ProcessStatus, TransientStorageError
from projections import verify
from tests.support.extractors import RecordingExtractor
from tests.support.store_faults import OUTAGE_ERROR, StoreOutage


async def _outage_while_extracting(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch, user: str
) -> tuple[StoreOutage, Any]:
    """Start a task, then take the store down while its extraction is out."""
    assert memory._engine is not None
    outage = StoreOutage(memory._engine.store, monkeypatch)
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
    with pytest.raises(ProcessingError, match=OUTAGE_ERROR):
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
    make_memory: Any,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=4, config={"retry_delay": 0.05}
    )
    extractor.gate.clear()
    for i in range(2):
        await memory.add_exchange("bea", f"I collect shells number {i}", "ok")
    outage, _ = await _outage_while_extracting(memory, extractor, monkeypatch, "bea")
    async with asyncio.timeout(30):  # the answer and then the failure meet the outage
        while not any("could not be stored" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.02)
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


async def test_a_write_retried_after_a_conflict_gets_the_error_of_a_failed_reload(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conflicting write is decided again on the reloaded log; when the reload fails,
    the caller gets that error (it waited forever before)."""
    await memory.add_message("eve", "user", "before")
    assert memory._engine is not None
    store = memory._engine.store
    outage = StoreOutage(store, monkeypatch)
    append, contested = store.append, threading.Event()

    def conflicting(batches: Any, *rest: Any) -> Any:
        contents = [getattr(e, "content", None) for batch in batches for e in batch]
        if "contested" in contents and not contested.is_set():
            contested.set()
            outage.down.set()  # the reload that follows fails too
            raise ConflictError("a user log was appended to concurrently")
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", conflicting)
    with pytest.raises(StorageError, match=OUTAGE_ERROR):
        await asyncio.wait_for(memory.add_message("eve", "user", "contested"), 10)
    outage.down.clear()
    assert (await memory.add_message("eve", "user", "later")).seq == 2


async def test_a_store_failure_is_never_blamed_on_the_message_of_a_batch(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message that failed alone once, and then failed again only because its outcome
    could not be stored (while the API answered other calls), is not quarantined: the
    store's failure is not the message's."""
    memory: Memory = await make_memory(config={"max_attempts": 2})
    await memory.add_message("fay", "user", "I sail")
    await memory.add_message("gus", "user", "I row")
    api_down = iter([True])
    extractor.fault = lambda batch: (
        ExtractionError("the API is down")
        if batch.user_id == "fay" and next(api_down, False)
        else None
    )
    with pytest.raises(ProcessingError, match="the API is down"):
        await memory.process("fay")
    assert await memory.process("gus") == 1  # the API answers other calls
    assert memory._engine is not None
    store = memory._engine.store
    append, store_down = store.append, iter([True, True])

    def flaky(batches: Any, *rest: Any) -> Any:
        fays = [e for b in batches for e in b if e.originator_id == user_log_id("fay")]
        if any(isinstance(e, UserLog.KnowledgeExtracted) for e in fays) and next(store_down, False):
            raise StorageError("lost the connection")
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", flaky)
    for turn in range(2):  # two more failures alone, each after the API answered others
        with pytest.raises(ProcessingError, match="could not record the outcome"):
            await memory.process("fay")
        await memory.add_message("gus", "user", f"I row on day {turn}")
        assert await memory.process("gus") == 1
    assert await memory.quarantined("fay") == []
    assert await memory.process("fay") == 1


async def test_a_refused_task_start_is_retried_without_holding_back_the_users_runs(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries of a task start the database refused back off on their own, so once it
    answers the user's automatic runs are not held back by how long it failed."""
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=2, config={"retry_delay": 0.02}
    )
    assert memory._engine is not None
    engine, store = memory._engine, memory._engine.store
    append, refused = store.append, threading.Event()

    def no_start(batches: Any, *rest: Any) -> Any:
        if any(isinstance(e, UserLog.ProcessingStarted) for b in batches for e in b):
            refused.set()
            raise StorageError("the database is restarting")
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", no_start)
    await memory.add_exchange("hal", "I live in Lima", "ok")  # requests a run: it cannot start
    assert await asyncio.to_thread(refused.wait, 30)
    await asyncio.sleep(0.3)  # several retries, each refused
    assert engine.backoff.remaining("hal") == 0.0, "the user's runs are not held back"
    monkeypatch.setattr(store, "append", append)
    async with asyncio.timeout(30):
        while await memory.buffer("hal"):
            await asyncio.sleep(0.02)
    assert len(await memory.knowledge("hal")) == 1


async def test_a_task_start_the_store_refuses_waits_its_backoff_not_the_next_reload(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads work and the start's write is refused: each reload of the log used to ask
    for the request to be started again at once, thousands of refused starts a second;
    they wait the store's backoff (here 0.1 s, doubling)."""
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=2, config={"retry_delay": 0.1}
    )
    assert memory._engine is not None
    store = memory._engine.store
    append, starts = store.append, []

    def no_start(batches: Any, *rest: Any) -> Any:
        if any(isinstance(e, UserLog.ProcessingStarted) for b in batches for e in b):
            starts.append(1)
            raise StorageError("the database is restarting")
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", no_start)
    await memory.add_exchange("hal", "I live in Lima", "ok")  # requests a run: it cannot start
    async with asyncio.timeout(30):
        while not starts:
            await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # the backoffs that follow the first refusal
    assert len(starts) <= 20, f"{len(starts)} refused starts in a second"
    monkeypatch.setattr(store, "append", append)


async def test_a_database_failing_while_a_memory_opens_is_a_storage_error(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock timeout, or a server restarting, while the projections are brought up to
    date at open: a caller catching memvee's errors catches it (was SQLAlchemy's own)."""
    import actors.engine

    def locked(*args: Any, **kwargs: Any) -> int:
        cause = Exception("canceling statement due to lock timeout")
        raise OperationalError("LOCK TABLE memvee_events IN EXCLUSIVE MODE", {}, cause)

    monkeypatch.setattr(actors.engine, "bring_up_to_date", locked)
    with pytest.raises(StorageError, match=r"cannot bring the projections of .* up to date"):
        await make_memory()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_paid_answer_whose_recording_meets_a_statement_timeout_is_recorded_on_a_retry(
    memory: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the store that may pass (here PostgreSQL's statement timeout, as a lost
    connection) while the answer of an extraction is recorded: the answer is kept and
    recorded again, so the task completes and the extractor is not asked a second time."""
    for i in range(3):
        await memory.add_exchange("cai", f"I grow tomatoes number {i}", "ok")
    assert memory._engine is not None
    store = memory._engine.store
    append, timed_out = store.append, threading.Event()

    def append_timing_out_once(batches: Any, in_transaction: Any = None, *args: Any) -> Any:
        answers = any(isinstance(e, UserLog.KnowledgeExtracted) for b in batches for e in b)
        if not answers or timed_out.is_set():
            return append(batches, in_transaction, *args)

        def cancelled(connection: Any, _: Any) -> None:
            timed_out.set()
            connection.exec_driver_sql("SET LOCAL statement_timeout = 1")
            connection.exec_driver_sql("SELECT pg_sleep(1)")

        return append(batches, cancelled, *args)

    monkeypatch.setattr(store, "append", append_timing_out_once)
    assert await asyncio.wait_for(memory.process("cai"), 30) == 3
    assert timed_out.is_set()
    assert len(extractor.batches) == 1
    assert [t.status for t in await memory.tasks("cai")] == [ProcessStatus.COMPLETED]
    assert len(await memory.knowledge("cai")) == 3
    assert await asyncio.to_thread(verify, store) == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_an_answer_stored_though_its_commit_was_not_acknowledged_is_not_recorded_twice(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection lost once the commit was sent: the answer may be stored or not. The
    retry finds it in the log and records nothing again (nor the next batch's messages
    with this batch's facts)."""
    memory: Memory = await make_memory(config={"max_batch_messages": 4})
    for i in range(4):
        await memory.add_exchange("dag", f"I knit scarves number {i}", "ok")
    assert memory._engine is not None
    store = memory._engine.store
    append, lost = store.append, threading.Event()

    def append_losing_the_acknowledgement(batches: Any, *args: Any) -> Any:
        recorded = append(batches, *args)
        answers = any(isinstance(e, UserLog.KnowledgeExtracted) for b in batches for e in b)
        if answers and not lost.is_set():
            lost.set()
            raise StorageError("could not store the events") from psycopg.OperationalError(
                "consuming input failed: server closed the connection unexpectedly"
            )
        return recorded

    monkeypatch.setattr(store, "append", append_losing_the_acknowledgement)
    assert await asyncio.wait_for(memory.process("dag"), 30) == 4
    assert lost.is_set()
    assert len(extractor.batches) == 2
    assert [t.status for t in await memory.tasks("dag")] == [ProcessStatus.COMPLETED]
    assert len(await memory.knowledge("dag")) == 4
    assert await asyncio.to_thread(verify, store) == []


async def test_a_recording_that_keeps_timing_out_fails_after_a_few_tries_holding_no_one_up(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried for 10 s on the actor's thread, it held every user sharing the pool's
    threads up, and the user's own writes and forget, as long."""
    assert memory._engine is not None
    store = memory._engine.store
    append = store.append
    tries = 0

    def timing_out(batches: Any, *rest: Any) -> Any:
        nonlocal tries
        if any(isinstance(e, UserLog.KnowledgeExtracted) for batch in batches for e in batch):
            tries += 1
            raise StorageError("could not store the events") from psycopg.errors.QueryCanceled(
                "canceling statement due to statement timeout"
            )
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", timing_out)
    await memory.add_exchange("ana", "I grow tomatoes", "ok")
    with pytest.raises(ProcessingError, match="could not record the outcome"):
        await asyncio.wait_for(memory.process("ana"), 30)
    assert tries == STORE_ATTEMPTS


async def test_exchanges_committed_in_a_group_whose_acknowledgement_was_lost_are_stored_once(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two users' exchanges share a group commit whose COMMIT landed but whose answer was
    lost: each exchange is acknowledged and stored once (sent again, each conflicted with
    itself and was added a second time)."""
    assert memory._engine is not None
    store, committer = memory._engine.store, memory._engine.committer
    append, holding, gate, lost = store.append, threading.Event(), threading.Event(), []

    def ann_held_then_the_group_unacknowledged(batches: Any, *rest: Any) -> Any:
        if not holding.is_set():
            holding.set()
            assert gate.wait(10)
        recorded = append(batches, *rest)
        if len(batches) > 1 and not lost:
            lost.append(len(batches))
            raise StorageError("could not store the events") from psycopg.OperationalError(
                "consuming input failed: server closed the connection unexpectedly"
            )
        return recorded

    monkeypatch.setattr(store, "append", ann_held_then_the_group_unacknowledged)
    ann = asyncio.ensure_future(memory.add_exchange("ann", "I live in Oslo", "ok"))
    assert await asyncio.to_thread(holding.wait, 10), "ann's write is on the disk"
    queued = _issued(committer) + 2
    group = [asyncio.ensure_future(memory.add_exchange(u, "I live in Rome", "ok")) for u in "bc"]
    deadline = asyncio.get_running_loop().time() + 10
    while _issued(committer) < queued:  # b's and c's writes wait behind ann's, together
        assert asyncio.get_running_loop().time() < deadline, "b's and c's writes were queued"
        await asyncio.sleep(0.001)
    gate.set()
    await asyncio.wait_for(asyncio.gather(ann, *group), 30)
    assert lost == [2]
    for user in ("b", "c"):
        assert [m.content for m in await memory.buffer(user)] == ["I live in Rome", "ok"]
    assert await asyncio.to_thread(verify, store) == []


def _issued(committer: GroupCommitter) -> int:
    """How many writes ``committer`` was given (each one queued, unless written at once)."""
    with committer._issuing:
        return committer._issued


_PASSING_FAILURES = {
    "statement timeout": ("SET LOCAL statement_timeout = 1", "SELECT pg_sleep(1)"),
    "serialization failure": (
        "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent update' "
        "USING ERRCODE = 'serialization_failure'; END $$",
    ),
    "deadlock": (
        "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected'; "
        "END $$",
    ),
}
"""PostgreSQL's failures of a write that may pass, each provoked in the write's own
transaction by the statements it runs there."""


_OUTCOMES = (UserLog.KnowledgeExtracted, UserLog.ProcessingFailed)
"""The events that record how a batch's extraction ended."""


def _adds(batches: Any, user: str) -> bool:
    """Whether a write of ``batches`` adds messages of ``user``."""
    log_id = user_log_id(user)
    return any(
        isinstance(e, UserLog.MessageAdded) and e.originator_id == log_id
        for batch in batches
        for e in batch
    )


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("failure", list(_PASSING_FAILURES))
async def test_an_exchange_whose_write_meets_a_failure_that_may_pass_is_stored_once(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A statement timeout, a serialization failure or a deadlock in the write of an
    exchange, on every try but the last: the write is looked for in the log and sent again
    after a short pause, so the exchange is acknowledged and stored once. (The caller was
    told StorageError, and could not tell whether to send it again.)"""
    await memory.add_exchange("ida", "I live in Oslo", "ok")
    assert memory._engine is not None
    store = memory._engine.store
    append, failed = store.append, []

    def failing_but_the_last_try(batches: Any, fold: Any = None, *rest: Any) -> Any:
        if not _adds(batches, "ida") or len(failed) == STORE_ATTEMPTS - 1:
            return append(batches, fold, *rest)

        def refused(connection: Any, _: Any) -> None:
            failed.append(failure)
            for statement in _PASSING_FAILURES[failure]:
                connection.exec_driver_sql(statement)

        return append(batches, refused, *rest)

    monkeypatch.setattr(store, "append", failing_but_the_last_try)
    await asyncio.wait_for(memory.add_exchange("ida", "I moved to Rome", "ok"), 30)
    assert len(failed) == STORE_ATTEMPTS - 1
    contents = [m.content for m in await memory.messages("ida")]
    assert contents == ["I live in Oslo", "ok", "I moved to Rome", "ok"]
    assert await asyncio.to_thread(verify, store) == []


async def test_an_exchange_whose_write_keeps_failing_so_is_refused_as_one_that_may_pass(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its last try the caller is told with TransientStorageError: nothing of the
    exchange was stored, so sending it again stores it once."""
    await memory.add_exchange("jo", "I live in Oslo", "ok")
    assert memory._engine is not None
    store = memory._engine.store
    append, tries = store.append, []

    def timing_out(batches: Any, *rest: Any) -> Any:
        if _adds(batches, "jo") and len(tries) < STORE_ATTEMPTS:
            tries.append(1)
            raise StorageError("could not store the events") from psycopg.errors.QueryCanceled(
                "canceling statement due to statement timeout"
            )
        return append(batches, *rest)

    monkeypatch.setattr(store, "append", timing_out)
    with pytest.raises(TransientStorageError, match=f"tried {STORE_ATTEMPTS} times and not"):
        await asyncio.wait_for(memory.add_exchange("jo", "I moved to Rome", "ok"), 30)
    assert len(tries) == STORE_ATTEMPTS
    assert [m.content for m in await memory.messages("jo")] == ["I live in Oslo", "ok"]
    await asyncio.wait_for(memory.add_exchange("jo", "I moved to Rome", "ok"), 30)
    contents = [m.content for m in await memory.messages("jo")]
    assert contents == ["I live in Oslo", "ok", "I moved to Rome", "ok"]
    assert await asyncio.to_thread(verify, store) == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("refused", "spent"),
    [((UserLog.KnowledgeExtracted,), [700]), (_OUTCOMES, [])],
    ids=["answer", "outcomes"],
)
async def test_an_answer_a_statement_timeout_kept_out_of_the_log_is_extracted_again_later(
    make_memory: Any,
    extractor: RecordingExtractor,
    monkeypatch: pytest.MonkeyPatch,
    refused: tuple[type, ...],
    spent: list[int],
) -> None:
    """Its recording timed out at every try (and, with ``outcomes``, so did the batch's
    failure): nothing is blamed on the message, even one allowed a single failure, and
    the batch is extracted again once the store answers, its answer recorded once. The
    failure, where stored, counts the tokens the lost answer cost (they went uncounted)."""
    memory: Memory = await make_memory(
        auto_process=True, batch_threshold=2, config={"retry_delay": 0.05, "max_attempts": 1}
    )
    assert memory._engine is not None
    store = memory._engine.store
    append, timed_out, answer = store.append, [], extractor.extract

    async def paid(batch: ExtractionBatch) -> ExtractionResult:
        return dataclasses.replace(await answer(batch), input_tokens=700, output_tokens=40)

    monkeypatch.setattr(extractor, "extract", paid)

    def timing_out(batches: Any, fold: Any = None, *rest: Any) -> Any:
        kinds = {type(e) for batch in batches for e in batch}
        if not kinds & set(refused) or len(timed_out) >= STORE_ATTEMPTS * len(refused):
            return append(batches, fold, *rest)

        def cancelled(connection: Any, _: Any) -> None:
            timed_out.append(kinds)
            for statement in _PASSING_FAILURES["statement timeout"]:
                connection.exec_driver_sql(statement)

        return append(batches, cancelled, *rest)

    monkeypatch.setattr(store, "append", timing_out)
    await memory.add_exchange("kim", "I keep bees", "ok")
    async with asyncio.timeout(30):
        while await memory.buffer("kim") or not await memory.knowledge("kim"):
            await asyncio.sleep(0.02)
        await memory.wait_for_processing("kim")
    assert len(timed_out) == STORE_ATTEMPTS * len(refused)
    assert await memory.quarantined("kim") == []
    first = [m.message_id for m in extractor.batches[0].messages]
    assert sorted(extractor.sent_message_ids) == sorted(first * 2), "extracted once more"
    assert [e.text for e in await memory.knowledge("kim")] == ["User said: I keep bees"]
    assert await asyncio.to_thread(verify, store) == []
    failures = [e for e in store.events_of("kim") if isinstance(e, UserLog.ProcessingFailed)]
    assert [f.input_tokens for f in failures] == spent
