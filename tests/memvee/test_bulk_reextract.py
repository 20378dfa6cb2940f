"""Re-extraction through the Message Batches API: submit, poll, collect and record, through
the real ``anthropic`` client and the stand-in server; resumable after a crash at any
point, with nothing recorded twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
import types
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import pytest
import sqlalchemy
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

import memvee._bulk.claims
import memvee._bulk.kept
import memvee._bulk.probes
import memvee._bulk.record
import memvee._bulk.run
import memvee.audit
import projections.shown
from actors import process_identity
from actors.erasure import erase_user
from events import (
    BatchLimits,
    BatchMessage,
    EventStore,
    ExtractionBatch,
    ExtractionError,
    StorageError,
    TokenUsage,
    UserLog,
    sqlite_url,
    user_log_id,
)
from memvee import ExtractorNotFoundError, InvalidInputError, Memory, MemoryConfig
from memvee._bulk import BulkReextraction, BulkReport
from memvee._bulk.claims import Claims
from memvee._bulk.fallback import DirectFallback
from memvee._bulk.kept import KeptBatches
from memvee._bulk.probes import Probes
from memvee._bulk.record import Recorder
from memvee._bulk.run import _since_promoted
from memvee._event_lines import describe
from memvee.audit import Audit, ModelOrPathNotFound
from memvee.cli import app
from memvee.extractors import ClaudeExtractor, ProbeResult
from projections import ProjectionTables, Projector
from projections.bulk_runs import BULK_BATCHES, create_bulk_table, forget_bulk_requests
from tests.support.extractors import RecordingExtractor
from tests.support.messages_api_server import (
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    default_answer,
    error_body,
    estimate_tokens,
    fault_when,
    prompt_known_entries,
    prompt_messages,
    refusal_body,
    tool_use_body,
)
from tests.support.verification import differences

USERS = ("ann", "bob")
LIMITS = BatchLimits(max_messages=4)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer(batch_polls=2) as running:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", running.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-bulk")
        yield running


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[str]:
    """A database where two users' messages were processed, and one waits buffered."""
    url = sqlite_url(tmp_path / "bulk.db")
    await _two_users_processed_one_message_buffered(url)
    yield url


async def _two_users_processed_one_message_buffered(url: str) -> None:
    """Each user of :data:`USERS` says five things, processed; ann says one more, buffered."""
    async with Memory(config=MemoryConfig(db_url=url), extractor=RecordingExtractor()) as memory:
        for user in USERS:
            for i in range(5):
                await memory.add_exchange(user, f"{user} likes thing {i}", "ok")
            await memory.flush(user)
        await memory.add_exchange("ann", "I am still buffered", "ok")


def _reextracted(audit: Audit, user: str) -> list[Any]:
    return [
        e
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.KnowledgeReextracted) and e.knowledge_version == "v2"
    ]


async def _run(audit: Audit, *, users: Sequence[str] = USERS, **kw: Any) -> Any:
    kw.setdefault("limits", LIMITS)
    return await audit.reextract_in_bulk(
        list(users), ClaudeExtractor(max_retries=0), "v2", poll_interval=0.01, **kw
    )


async def _run_killed_after_recording_two(audit: Audit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies once it has recorded two requests' outcomes."""
    recorded = 0
    real = memvee._bulk.record.Recorder.record

    def killed_after_two(self: Recorder, *args: Any) -> Any:
        nonlocal recorded
        if recorded == 2:
            raise RuntimeError("killed")
        recorded += 1
        return real(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(memvee._bulk.record.Recorder, "record", killed_after_two)
        with pytest.raises(RuntimeError, match="killed"):
            await _run(audit)


async def test_a_bulk_run_submits_bounded_requests_polls_and_records_each_once(
    db: str, server: MessagesAPIServer
) -> None:
    progress: list[tuple[int, int]] = []
    with Audit(db_url=db) as audit:
        report = await _run(audit, progress=lambda done, total: progress.append((done, total)))
        assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
        assert report.entries == 10
        (batch,) = server.batches
        assert len(batch["requests"]) == 6 and batch["retrievals"] >= 2
        assert progress[-1] == (6, 6)
        for user in USERS:
            events = _reextracted(audit, user)
            assert [len(e.message_ids) for e in events] == [4, 4, 2]
            assert len({e.request_id for e in events}) == 3
            assert audit.knowledge_versions(user)["v2"] == 5
        buffered = {m for m in _reextracted(audit, "ann") for m in m.message_ids}
        assert len(buffered) == 10, "the buffered exchange is left to normal processing"
        again = await _run(audit)
        assert (again.submitted, again.recorded) == (0, 0), "the version is up to date"
    assert server.requests == [], "nothing went through the live Messages API"


async def test_users_given_as_a_generator_are_each_reextracted_not_used_up_by_the_check(
    db: str, server: MessagesAPIServer
) -> None:
    """The version check read the generator to its end, and the run was given none left:
    0 submitted, without a word."""
    with Audit(db_url=db) as audit:
        report = await audit.reextract_in_bulk(
            (user for user in USERS),
            ClaudeExtractor(max_retries=0),
            "v2",
            limits=LIMITS,
            poll_interval=0.01,
        )
        assert (report.submitted, report.recorded) == (6, 6)
        assert [audit.knowledge_versions(user)["v2"] for user in USERS] == [5, 5]


async def test_a_run_that_records_nothing_leaves_the_rewrite_an_earlier_erasure_left_owed(
    db: str, server: MessagesAPIServer
) -> None:
    """It started the rewrite before it committed anything, holding every other writer off
    for a run that had nothing to record."""
    with Audit(db_url=db) as audit:
        await _run(audit)
        with audit.store.transaction() as connection:
            audit.store.owe_rewrite(connection)

    with Audit(db_url=db) as audit:
        again = await _run(audit)
    assert (again.submitted, again.recorded) == (0, 0)
    store = EventStore(db, create=False)
    assert store.rewrite_owed
    store.close()


def test_a_run_decodes_each_kept_batch_once_however_many_users_it_claims(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each claim reads the kept batches' ids and stamps, and decodes a kept batch's
    requests only the first time it meets it, or once it changed in place since: 40 claims
    over three kept batches decode three (a run of 1,600 users spent 60 s claiming, each
    claim slower than the last), and a fourth decode follows another run marking one of
    them failed whole."""
    decodes: list[str] = []
    decode = memvee._bulk.kept._KeptRow.of

    def counted(requests: dict[str, Any], stamp: Any) -> Any:
        decodes.append(next(iter(requests)))
        return decode(requests, stamp)

    monkeypatch.setattr(memvee._bulk.kept._KeptRow, "of", staticmethod(counted))
    with Audit(db_url=db) as audit:
        run, other = _bare_run(audit), _bare_run(audit)
        for i in range(3):
            _keep(audit, f"kept-{i}", {f"r1-kept-{i}": {"user": f"held{i}", "messages": [f"m{i}"]}})
        for i in range(40):
            assert run._claim(f"user{i}") == set()
        assert sorted(decodes) == ["r1-kept-0", "r1-kept-1", "r1-kept-2"]
        other.kept_batches.keep_failed_whole({"local_id": "kept-1"})
        assert run._claim("held1") == set()
        assert sorted(decodes) == ["r1-kept-0", "r1-kept-1", "r1-kept-1", "r1-kept-2"]
        run.claiming.release_claims()


def test_a_claims_read_of_the_kept_batches_costs_the_same_however_many_users_are_claimed(
    db: str,
) -> None:
    """Each claim reads the ids of the version's kept batches, leaving its claims aside by
    their key: through the version's index it reached every claim row of the version to
    do so (ten times the claims, ten times the steps: a run of 10,000 users read 10,000
    rows a claim). By an index of the kept rows' own, the claims of other users are never
    read, and the kept batch is still seen."""
    with Audit(db_url=db) as audit:
        run = _bare_run(audit)
        _keep(audit, "kept-0", {"r1-kept-0": {"user": "held", "messages": ["m0"]}})
        steps: dict[int, int] = {}
        for claimed in (300, 3_000):
            _claimed_elsewhere(audit, [f"user{i}" for i in range(len(steps) and 300, claimed)])
            with audit.store.engine.connect() as connection:
                steps[claimed], pending = _steps_of(
                    connection, lambda: run._kept_for(connection, "held")
                )
            assert pending == {"m0"}
        assert steps[3_000] < 1.5 * steps[300], steps


def _claimed_elsewhere(audit: Audit, users: list[str]) -> None:
    """Claims of another run under way on ``users``' plans in ``v2``."""
    claims = memvee._bulk.claims
    now = datetime.now(UTC)
    with audit.store.transaction() as connection:
        connection.execute(
            BULK_BATCHES.insert(),
            [
                {
                    "local_id": claims._claim_id("v2", user),
                    "knowledge_version": "v2",
                    "api_batch_id": None,
                    "requests": {"claim": {"user": user, "owner": "another run"}},
                    "created_at": now,
                }
                for user in users
            ],
        )


def _steps_of(connection: sqlalchemy.Connection, action: Callable[[], Any]) -> tuple[int, Any]:
    """The SQLite virtual-machine steps ``action`` takes on ``connection`` (a progress
    handler counts them), and what it returns."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    driver = connection.connection.dbapi_connection
    assert isinstance(driver, sqlite3.Connection)
    driver.set_progress_handler(count, 1)
    try:
        found = action()
    finally:
        driver.set_progress_handler(None, 1)
    return steps, found


def _keep(audit: Audit, local_id: str, requests: dict[str, Any]) -> None:
    """Keep a Message Batch of ``requests`` into ``v2``, as another run keeps one."""
    with audit.store.transaction() as connection:
        connection.execute(
            BULK_BATCHES.insert(),
            {
                "local_id": local_id,
                "knowledge_version": "v2",
                "api_batch_id": f"msgbatch_{local_id}",
                "requests": requests,
                "created_at": datetime.now(UTC),
            },
        )


def _bare_run(audit: Audit) -> BulkReextraction:
    """A bulk run into version ``v2`` of ``audit``'s store, its table made, that shows the
    extractor no entries: for driving its claims by hand."""
    run = BulkReextraction(
        audit.store,
        audit._reader,
        audit._decide,
        ClaudeExtractor(),
        "v2",
        lambda user_id, batch: ((), ()),
        audit._record_failure,
    )
    run.kept_batches.create_table()
    return run


def test_a_batch_another_run_kept_after_this_one_began_is_seen_by_its_later_claims(
    db: str,
) -> None:
    """Run B kept a Message Batch for bob and ended (its claims released) after run A
    read the kept batches: A's claim of bob reads the new kept row and plans none of the
    messages B's batch holds (paid for once)."""
    with Audit(db_url=db) as audit:
        run = _bare_run(audit)
        assert run._claim("ann") == set()
        with audit.store.transaction() as connection:
            connection.execute(
                BULK_BATCHES.insert(),
                {
                    "local_id": "kept-by-b",
                    "knowledge_version": "v2",
                    "api_batch_id": "msgbatch_b",
                    "requests": {"r1": {"user": "bob", "messages": ["m1", "m2"]}},
                    "created_at": datetime.now(UTC),
                },
            )
        assert run._claim("bob") == {"m1", "m2"}
        run.claiming.release_claims()


def test_a_claim_plans_again_what_a_batch_marked_failed_whole_after_the_run_read_it_holds(
    both_backends: str,
) -> None:
    """Run A read a kept Message Batch holding bob's messages; run B collected it, found
    it failed whole with server errors and kept it so, then ended. A's claim of bob sees
    the batch as it is now: its messages are A's to plan again, with the failure counted
    (the request taken out of the kept batch); A read them as held by it, and bob's
    messages waited a run more."""
    with Audit(db_url=both_backends) as audit:
        a, b = _bare_run(audit), _bare_run(audit)
        _keep(audit, "kept-by-b", {"r1-kept-by-b": {"user": "bob", "messages": ["m1", "m2"]}})
        assert a._claim("ann") == set()
        b.kept_batches.keep_failed_whole({"local_id": "kept-by-b"})
        assert a._claim("bob") == set()
        assert {m: [count for count, _ in counts] for m, counts in a.failing["bob"].items()} == {
            "m1": [1],
            "m2": [1],
        }
        with audit.store.engine.connect() as connection:
            kept = connection.execute(select(BULK_BATCHES.c.local_id)).scalars().all()
        assert "kept-by-b" not in kept, "bob's request taken out, and the batch with it"
        a.claiming.release_claims()


def _failed_whole_tried(message_id: str, tried: object) -> dict[str, Any]:
    """bob's request of ``message_id``, its Message Batch failed whole, the fallback noting
    ``tried`` as when it last sent bob's messages."""
    return {
        "user": "bob",
        "messages": [message_id],
        "failing": 1,
        "failed_whole": True,
        "direct_tried": tried,
    }


def test_a_claim_takes_the_latest_fallback_try_of_a_users_kept_batches(
    both_backends: str,
) -> None:
    """bob's requests wait in three kept Message Batches failed whole, the fallback having
    last sent his messages at three times, the latest in the second: the claim plans bob
    as last tried then, neither at the first batch's time nor at an earlier one."""
    earlier, between, latest = (f"2026-0{month}-01T00:00:00+00:00" for month in (1, 2, 3))
    with Audit(db_url=both_backends) as audit:
        run = _bare_run(audit)
        _keep(audit, "kept-a", {"r1-kept-a": _failed_whole_tried("m1", earlier)})
        _keep(audit, "kept-b", {"r1-kept-b": _failed_whole_tried("m2", latest)})
        _keep(audit, "kept-c", {"r1-kept-c": _failed_whole_tried("m3", between)})
        assert run._claim("bob") == set()
        assert run.last_tried["bob"] == latest
        run.claiming.release_claims()


@pytest.mark.parametrize(
    "stamp", ["yesterday", 20260101, 1.5], ids=["hand-edited text", "a whole number", "a number"]
)
def test_a_fallback_try_that_cannot_be_read_counts_as_never_tried_and_is_told_naming_the_user(
    both_backends: str, caplog: pytest.LogCaptureFixture, stamp: object
) -> None:
    """A kept request's note of the fallback's last try of bob is no time (edited by hand,
    or written as a number): the claim plans bob as never tried and warns naming him (the
    claim used to fail with a ValueError or an AttributeError, and every bulk run with
    it)."""
    with Audit(db_url=both_backends) as audit:
        run = _bare_run(audit)
        _keep(audit, "kept-a", {"r1-kept-a": _failed_whole_tried("m1", stamp)})
        with caplog.at_level(logging.WARNING, "memvee.bulk"):
            assert run._claim("bob") == set()
        assert "bob" not in run.last_tried, "never tried"
        assert "'bob'" in caplog.text and "direct_tried" in caplog.text
        run.claiming.release_claims()


def test_a_claim_sees_a_user_a_forget_took_out_of_a_batch_after_the_run_read_it(
    both_backends: str,
) -> None:
    """Run A read a kept Message Batch holding bob's and carl's messages; bob is forgotten
    (his requests taken out of the batch) and his log begins again with the same messages
    (imported from an export, say). A's claim of bob holds none of them back: the batch
    no longer holds them; A read them as held, and they waited a run more."""
    with Audit(db_url=both_backends) as audit:
        a = _bare_run(audit)
        requests = {
            "r1-kept": {"user": "bob", "messages": ["m1"]},
            "r2-kept": {"user": "carl", "messages": ["m2"]},
        }
        _keep(audit, "kept", requests)
        assert a._claim("ann") == set()
        with audit.store.transaction() as connection:
            assert forget_bulk_requests(connection, "bob") == 1
        assert a._claim("bob") == set()
        assert a._claim("carl") == {"m2"}
        a.claiming.release_claims()


def test_a_claim_sees_a_batch_a_run_holding_the_user_kept_and_ended_with_a_moment_before(
    both_backends: str,
) -> None:
    """Run B claimed bob after run A's last claim, kept a Message Batch of bob's messages
    and was stopped (its claims released, the batch kept): A's claim of bob a moment later
    sees every message of that batch, on each backend, so none is sent (billed) twice."""
    with Audit(db_url=both_backends) as audit:
        a, b = _bare_run(audit), _bare_run(audit)
        assert a._claim("ann") == set()
        assert b._claim("bob") == set()
        bob = audit.store.load("bob")
        assert bob is not None
        events = audit.store.events_of("bob", upto=bob.version)
        messages = list(bob.not_covered_by("v2", events))
        request = {"user": "bob", "messages": messages, "known": [], "at": bob.version}
        b.claiming.insert_held(
            {
                "local_id": "kept-by-b",
                "knowledge_version": "v2",
                "api_batch_id": "msgbatch_b",
                "requests": {"r1-kept-by-b": request},
                "created_at": datetime.now(UTC),
            }
        )
        b.claiming.release_claims()
        assert a._claim("bob") == set(messages) and messages
        a.claiming.release_claims()


async def test_a_claim_release_the_database_refuses_leaves_the_runs_own_outcome(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database went away as the run ended: its claims lapse on their own, and the
    caller gets the run's report (or its typed error), not the release's driver error."""

    def refused(self: Claims) -> None:
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(Claims, "release_claims", refused)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert report.recorded == 6


async def test_a_database_failure_as_a_run_claims_a_user_is_a_storage_error_naming_them(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the database as a run claims a user (a deadlock, say) reaches the
    caller as a :class:`StorageError` naming the user and the version, with the driver's
    words and not the statement; it used to leave the run as SQLAlchemy's own error."""

    def deadlocked(connection: Any) -> datetime:
        raise OperationalError("SELECT now()", {}, Exception("deadlock detected"))

    monkeypatch.setattr(memvee._bulk.claims, "_database_time", deadlocked)
    with Audit(db_url=both_backends) as audit, pytest.raises(StorageError) as refused:
        await _run(audit)
    message = str(refused.value)
    assert "could not claim user 'ann'" in message and "'v2'" in message, message
    assert "deadlock detected" in message and "SELECT" not in message, message
    assert isinstance(refused.value.__cause__, OperationalError)
    assert server.batches == [], "nothing submitted"


async def test_a_database_failure_anywhere_in_a_bulk_run_is_a_storage_error(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wherever in a run the database fails (here as it reads the batches an earlier run
    kept), the caller gets a :class:`StorageError` naming the version, not SQLAlchemy's
    error with the statement."""

    def refused(self: KeptBatches) -> list[dict[str, Any]]:
        raise OperationalError("SELECT secret_statement", {}, Exception("server closed"))

    monkeypatch.setattr(memvee._bulk.kept.KeptBatches, "unfinished", refused)
    with Audit(db_url=db) as audit, pytest.raises(StorageError) as failed:
        await _run(audit)
    message = str(failed.value)
    assert "bulk re-extraction into 'v2' failed" in message and "server closed" in message
    assert "secret_statement" not in message, message


async def test_a_bulk_request_gives_each_speakers_name(
    tmp_path: Path, server: MessagesAPIServer
) -> None:
    url = sqlite_url(tmp_path / "names.db")
    async with Memory(config=MemoryConfig(db_url=url), extractor=RecordingExtractor()) as memory:
        await memory.add_message("team", "user", "I live in Oslo", name="Maria")
        await memory.add_message("team", "user", "I live in Bergen", name="Jon")
        await memory.flush("team")
    with Audit(db_url=url) as audit:
        await audit.reextract_in_bulk(
            ["team"], ClaudeExtractor(max_retries=0), "v2", poll_interval=0.01
        )
    (batch,) = server.batches
    sent = json.dumps(batch["requests"])
    assert "Maria" in sent and "Jon" in sent, "the names went to Claude"


async def test_a_version_name_promoted_before_covers_nothing_of_a_new_run(
    db: str, server: MessagesAPIServer
) -> None:
    with Audit(db_url=db) as audit:
        await _run(audit)
        for user in USERS:
            assert audit.promote(user, "v2") == []
        again = await _run(audit)
        assert (again.submitted, again.recorded) == (6, 6)
        covered = {m for m in _reextracted(audit, "bob")[3:] for m in m.message_ids}
        assert len(covered) == 10, "the new v2 covers every processed message again"


async def _killed_before_keeping_its_batch_id(
    audit: Audit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed once it created its batch, before it kept the batch's id."""

    def crash(self: KeptBatches, local_id: str, batch_id: str) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(memvee._bulk.kept.KeptBatches, "set_batch_id", crash)
        with pytest.raises(RuntimeError, match="killed"):
            await _run(audit)


async def _killed_once_submitted(audit: Audit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed once it submitted its batch: its requests are kept for the next run."""

    async def crash(self: BulkReextraction, *args: Any) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(BulkReextraction, "_finish", crash)
        with pytest.raises(RuntimeError, match="killed"):
            await _run(audit)


async def test_a_run_that_crashed_after_submitting_is_finished_by_the_next_one(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        report = await _run(audit)
        assert (report.submitted, report.recorded) == (0, 6)
        assert len(server.batches) == 1, "the batch was collected, not submitted again"
        assert report.batches == [server.batches[0]["id"]]
        assert sorted(report.collected) == sorted(USERS)


async def test_a_run_that_crashed_before_keeping_the_batch_id_is_finished_by_the_next_one(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch was created but its id never kept: the next run finds it among the
    account's batches (another batch of the same size beside it) instead of paying for
    the same requests again."""
    with Audit(db_url=db) as audit:
        await _killed_before_keeping_its_batch_id(audit, monkeypatch)
        with audit.store.engine.connect() as connection:
            (kept,) = connection.execute(select(BULK_BATCHES)).mappings().all()
        assert kept["api_batch_id"] is None
        other = anthropic.Anthropic(max_retries=0).messages.batches.create(
            requests=[
                {**r, "custom_id": f"other-{i}"}
                for i, r in enumerate(server.batches[0]["requests"])
            ]
        )
        report = await _run(audit)
        assert (report.submitted, report.recorded) == (0, 6)
        assert len(server.batches) == 2, "no batch created again"
        assert report.batches == [server.batches[0]["id"]] != [other.id]
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == []


@pytest.mark.parametrize("lost", ["a dropped connection", "an answer naming no batch"])
async def test_a_batch_made_but_whose_answer_was_lost_is_found_not_made_again(
    db: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    lost: str,
) -> None:
    """The connection drops after the API made the batch, or a gateway answers ``{}`` in
    the API's place: the run looks for it among the account's batches before creating it
    again, and collects it (an answer without an id used to be taken as the batch's)."""
    monkeypatch.setattr(memvee._bulk.run, "_CREATE_PAUSE", 0.0)
    creates = itertools.count(1)

    def lost_first_answer(request: RecordedRequest) -> ScriptedResponse | None:
        if request.method == "POST" and request.path.endswith("/batches") and next(creates) == 1:
            dropped = server.made_then_reset(request)
            return dropped if lost == "a dropped connection" else ScriptedResponse(body={})
        return None

    server.set_batches_fault(lost_first_answer)
    with Audit(db_url=db) as audit, caplog.at_level(logging.WARNING, "memvee.bulk"):
        report = await _run(audit)
    assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
    assert len(server.batches) == 1, "found, not made again"
    assert "got no clear answer" in caplog.text, "looked for as it was created"


async def test_a_create_turned_away_while_overloaded_is_made_once_it_passes(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memvee._bulk.run, "_CREATE_PAUSE", 0.0)
    server.set_batches_fault(_creates_answered(529, "overloaded_error", times=2))
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert (report.submitted, report.recorded) == (6, 6)
    assert len(server.batches) == 1


async def test_a_refused_create_fails_the_run_and_keeps_nothing_for_the_next(
    db: str, server: MessagesAPIServer
) -> None:
    server.set_batches_fault(_creates_answered(400, "invalid_request_error", times=1))
    with Audit(db_url=db) as audit:
        with pytest.raises(ExtractionError, match="400"):
            await _run(audit)
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == []
        report = await _run(audit)
    assert (report.submitted, report.recorded) == (6, 6)
    assert len(server.batches) == 1


async def test_a_kept_run_of_an_older_memvee_without_its_batch_id_is_planned_again(
    db: str, server: MessagesAPIServer
) -> None:
    """Its custom ids (``r1``...) cannot tell its batch from another run's: never taken."""
    with Audit(db_url=db) as audit:
        ann = [
            e.message_id
            for e in audit.store.events_of("ann")
            if isinstance(e, UserLog.MessageAdded)
        ]
        create_bulk_table_in(audit)
        with audit.store.transaction() as connection:
            connection.execute(
                BULK_BATCHES.insert(),
                {
                    "local_id": "old-run",
                    "knowledge_version": "v2",
                    "api_batch_id": None,
                    "requests": {"r1": {"user": "ann", "messages": ann[:2], "known": []}},
                    "created_at": datetime.now(UTC),
                },
            )
        report = await _run(audit)
    assert (report.submitted, report.recorded) == (6, 6)
    assert len(server.batches) == 1


def create_bulk_table_in(audit: Audit) -> None:
    with audit.store.transaction() as connection:
        create_bulk_table(connection)


def _creates_answered(
    status: int, kind: str, *, times: int
) -> Callable[[RecordedRequest], ScriptedResponse | None]:
    """A fault answering the first ``times`` create calls with an error of ``status``."""
    answered = itertools.count(1)

    def fault(request: RecordedRequest) -> ScriptedResponse | None:
        create = request.method == "POST" and request.path.endswith("/batches")
        if create and next(answered) <= times:
            return ScriptedResponse(status, error_body(kind, f"create refused ({status})"))
        return None

    return fault


def _request_bytes(*contents: str) -> int:
    """About the bytes one bulk request of ``contents`` takes in a create body (mostly
    the system prompt and the tool): the unit the tests' size limits are counted in."""
    now = datetime.now(UTC)
    messages = tuple(BatchMessage(f"m{i}", "user", c, now) for i, c in enumerate(contents))
    params = ClaudeExtractor(max_retries=0).request(ExtractionBatch("ann", "t", messages, ()))
    request = {"custom_id": f"r1-{'0' * 36}", "params": params}
    return len(json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode())


def _create_bytes(server: MessagesAPIServer) -> list[tuple[int, int]]:
    """Each create call, made or refused: its requests and its body's bytes."""
    return [
        (len(r.body["requests"]), len(json.dumps(r.body, separators=(",", ":")).encode()))
        for r in server.all_requests
        if r.method == "POST" and r.path == "/v1/messages/batches"
    ]


def _two_and_a_half() -> int:
    """A body limit that takes two of the tests' bounded requests, never three."""
    return _request_bytes("ann likes thing 0", "ok", "ann likes thing 1", "ok") * 5 // 2


async def test_a_run_over_the_byte_bound_goes_as_several_message_batches_each_under_it(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are grouped by bytes of the create body (as the SDK encodes it) as well as
    by count, so a large backlog is never one batch over the API's 256 MB (it used to
    be, and every run was refused with the same 413)."""
    limit = _two_and_a_half()
    monkeypatch.setattr(memvee._bulk.run, "MAX_BATCH_BYTES", limit)
    server.max_batch_bytes = limit
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
    creates = _create_bytes(server)
    assert [n for n, _ in creates] == [2, 2, 2], "none refused, none made twice"
    assert all(size <= limit for _, size in creates)
    assert len(server.batches) == 3


async def test_a_create_refused_as_too_large_is_sent_again_in_smaller_batches(
    db: str, server: MessagesAPIServer
) -> None:
    """The API refuses a Message Batch as too large (413): nothing was made, so its
    requests go again in batches of at most half its bytes, each request in one batch
    made (paid) once, and nothing is left kept for the next run."""
    server.max_batch_bytes = _two_and_a_half()
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == []
    assert (report.submitted, report.recorded, report.failed, report.left_out) == (6, 6, {}, {})
    made = [r["custom_id"] for b in server.batches for r in b["requests"]]
    assert len(made) == 6 and len(server.batches) >= 3
    assert _create_bytes(server)[0][0] == 6, "the first create held them all, refused"


@pytest.mark.parametrize("refused_by", ["the API", "the byte bound"])
async def test_a_request_too_large_alone_is_split_down_to_the_message_left_out(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, refused_by: str
) -> None:
    """A request too large for any Message Batch is split in its messages as live
    extraction splits a batch; the one message too large alone is left out of the version
    (reported, its failure kept as one that repeats) and the others go in, this run and
    the next."""
    limit = _two_and_a_half()
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("bob", "huge " * (limit // 5), "ok")
        await memory.flush("bob")
    if refused_by == "the API":
        server.max_batch_bytes = limit
    else:
        monkeypatch.setattr(memvee._bulk.run, "MAX_BATCH_BYTES", limit)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        added = [e for e in audit.store.events_of("bob") if isinstance(e, UserLog.MessageAdded)]
        (huge,) = [e.message_id for e in added if e.content.startswith("huge")]
        assert list(report.left_out) == [huge] and "request_too_large" in report.left_out[huge]
        covered = {m for e in _reextracted(audit, "bob") for m in e.message_ids}
        assert covered == {e.message_id for e in added} - {huge}
        failed = [
            e for e in audit.store.events_of("bob") if isinstance(e, UserLog.ReextractionFailed)
        ]
        assert [(f.message_ids, f.repeats) for f in failed] == [([huge], True)]
        again = await _run(audit)
        assert (again.submitted, again.recorded, list(again.left_out)) == (0, 0, [huge])


def _bulk_params(*contents: str) -> dict[str, Any]:
    """The ``params`` of one bulk request of ``contents``, as a run sends them."""
    now = datetime.now(UTC)
    messages = tuple(BatchMessage(f"m{i}", "user", c, now) for i, c in enumerate(contents))
    extractor = ClaudeExtractor(max_retries=0)
    params = extractor.request(ExtractionBatch("cat", "t", messages, ()))
    return {**params, "max_tokens": extractor.max_tokens}


def _over_two_messages(server: MessagesAPIServer, refused_by: str, said: list[str]) -> None:
    """Make ``server`` refuse a bulk request of more than two of ``said`` for its size,
    as ``refused_by`` names: a prompt over the model's context window, a prompt and the
    output asked over it, or a body over the request limit (413)."""
    two = _bulk_params(*said[:2])
    if refused_by == "the prompt over the window":
        server.max_prompt_tokens = estimate_tokens(two) + 50
    elif refused_by == "the prompt and output over the window":
        server.max_prompt_tokens = estimate_tokens(two) + two["max_tokens"] + 50
        server.counts_max_tokens = True
    else:
        server.max_request_bytes = len(json.dumps(two, separators=(",", ":")).encode()) + 200


@pytest.mark.parametrize(
    "refused_by",
    [
        "the prompt over the window",
        "the prompt and output over the window",
        "a body over the request limit",
    ],
)
async def test_a_request_refused_for_its_size_is_split_in_the_same_run_and_its_size_learned(
    db_url: str, server: MessagesAPIServer, refused_by: str
) -> None:
    """A request of a Message Batch comes back errored for its size, as the API errors it
    (prompt is too long: N tokens > M maximum; input length and `max_tokens` exceed context
    limit; request_too_large): the run splits it and sends its messages again within the
    size learned, each covered once, none failed, none pinned to a request of its own nor
    left out, no probe sent. It used to be failed whole and sent again as it was (a 413), or
    its messages pinned one a request for the next run (a prompt over the window)."""
    said = [f"cat says {i}: " + "word " * 400 for i in range(6)]
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for content in said:
            await memory.add_message("cat", "user", content)
        await memory.flush("cat")
    _over_two_messages(server, refused_by, said)
    with Audit(db_url=db_url) as audit:
        report = await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
        added = [
            e.message_id
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.MessageAdded)
        ]
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
        failed = [
            e for e in audit.store.events_of("cat") if isinstance(e, UserLog.ReextractionFailed)
        ]
    assert (report.failed, report.left_out) == ({}, {})
    assert sorted(recorded) == sorted(added), "each message covered once"
    assert failed == [], "no message pinned to a request of its own"
    halvings = 1 if "window" in refused_by else 2  # a 413 names no figures: halved
    assert len(server.batches) == 1 + halvings and len(report.split) == 2 * halvings - 1
    sizes = [len(prompt_messages(r["params"])) for r in server.batches[-1]["requests"]]
    assert sum(sizes) == 6 and max(sizes) <= 2, sizes
    assert server.requests == [], "no probe through the Messages API"
    assert differences(db_url) == []


@pytest.mark.parametrize("window_counts", ["the prompt", "the prompt and the output asked"])
async def test_a_message_over_the_context_window_alone_is_left_out_saying_why_its_neighbours_in(
    db_url: str, server: MessagesAPIServer, window_counts: str
) -> None:
    """One message is over the model's context window in a request of its own (with the
    output a live call asks, when the window counts the output): the run splits down to
    it and leaves it out of the version, saying the API's words, pinned for good (the next
    run sends nothing); the messages beside it are each covered once, the same run."""
    said = [f"cat says {i}: " + "word " * 100 for i in range(5)]
    output = _bulk_params()["max_tokens"] if window_counts != "the prompt" else 0
    huge = "cat says too much: " + "word " * (5600 if output else 3000)
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for content in [*said[:2], huge, *said[2:]]:
            await memory.add_message("cat", "user", content)
        await memory.flush("cat")
    server.max_prompt_tokens = estimate_tokens(_bulk_params(*said)) + 50 + output
    server.counts_max_tokens = bool(output)
    with Audit(db_url=db_url) as audit:
        report = await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
        added = {
            e.content: e.message_id
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.MessageAdded)
        }
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
        failed = [
            (e.message_ids, e.repeats)
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.ReextractionFailed)
        ]
        again = await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
    left_out = added[huge]
    assert list(report.left_out) == [left_out]
    why = report.left_out[left_out]
    assert ("over the window alone" if output else "prompt is too long") in why, why
    assert list(report.failed.values()) == [report.left_out[left_out]]
    assert sorted(recorded) == sorted(set(added.values()) - {left_out})
    assert failed == [([left_out], True)]
    assert (again.submitted, list(again.left_out)) == (0, [left_out])
    assert server.requests == []
    assert differences(db_url) == []


async def _said_by_cat(db_url: str, said: Sequence[str]) -> None:
    """Cat says each of ``said``, processed."""
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for content in said:
            await memory.add_message("cat", "user", content)
        await memory.flush("cat")


def _kept_as_repeating(audit: Audit, user: str) -> list[list[str]]:
    """The messages of each failed call kept in ``user``'s log as one that repeats."""
    return [
        list(e.message_ids)
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.ReextractionFailed) and e.repeats
    ]


async def test_a_window_too_small_for_the_fixed_prompt_and_the_output_asked_leaves_no_message_out(
    db_url: str, server: MessagesAPIServer
) -> None:
    """The model's context window holds the fixed prompt but not the fixed prompt and the
    output asked: every request is refused for its size, down to single messages, none of
    which is to blame, so none is pinned nor left out (each used to be, for good: a run
    after the window was fixed submitted nothing), and the next run, once requests fit,
    records them all."""
    said = [f"cat says {i}: hello" for i in range(4)]
    await _said_by_cat(db_url, said)
    server.max_prompt_tokens = estimate_tokens(_bulk_params("x")) + 20
    server.counts_max_tokens = True
    with Audit(db_url=db_url) as audit:
        refused = await _run(audit, users=["cat"])
        pinned = _kept_as_repeating(audit, "cat")
        server.max_prompt_tokens = None
        again = await _run(audit, users=["cat"])
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
    assert (refused.recorded, refused.left_out, pinned) == (0, {}, [])
    assert len(refused.failed) == 4
    assert all("no message blamed" in why for why in refused.failed.values())
    assert (again.failed, again.left_out) == ({}, {})
    assert len(recorded) == len(set(recorded)) == 4, "each covered once, by the next run"
    assert server.requests == [], "no probe through the Messages API"
    assert differences(db_url) == []


async def test_a_lone_message_over_the_window_only_for_the_output_asked_goes_again_asking_less(
    db_url: str, server: MessagesAPIServer
) -> None:
    """The window holds a message's request with the output a live call asks, not with the
    whole ``max_tokens`` a Message Batches request asks: split down to single messages,
    each goes again asking the live path's output budget and is covered, the same run,
    none pinned nor left out (each used to be left out, where live extraction extracts
    it)."""
    said = [f"cat says {i}: hello there" for i in range(3)]
    await _said_by_cat(db_url, said)
    server.max_prompt_tokens = estimate_tokens(_bulk_params(said[0])) + 2000
    server.counts_max_tokens = True
    with Audit(db_url=db_url) as audit:
        report = await _run(audit, users=["cat"])
        added = [e for e in audit.store.events_of("cat") if isinstance(e, UserLog.MessageAdded)]
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
        pinned = _kept_as_repeating(audit, "cat")
    assert (report.failed, report.left_out, pinned) == ({}, {}, [])
    assert sorted(recorded) == sorted(e.message_id for e in added), "each covered once"
    last = [r["params"] for r in server.batches[-1]["requests"]]
    extractor = ClaudeExtractor(max_retries=0)
    budgets = [
        extractor.output_budget(ExtractionBatch("cat", "t", (BatchMessage.of(e),), ()))
        for e in added
    ]
    assert sorted(p["max_tokens"] for p in last) == sorted(budgets)
    assert max(budgets) < extractor.max_tokens
    assert server.requests == []
    assert differences(db_url) == []


async def _stopped_before_collecting_then_run(
    audit: Audit, monkeypatch: pytest.MonkeyPatch
) -> BulkReport:
    """Run cat's bulk re-extraction stopped before it collects its Message Batch (as a
    process killed then), then a run to the end; returns that second run's report."""

    async def killed(self: BulkReextraction, *args: Any, **kw: Any) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(BulkReextraction, "_finish", killed)
        with pytest.raises(RuntimeError, match="killed"):
            await _run(audit, users=["cat"])
    return await _run(audit, users=["cat"])


async def test_an_earlier_runs_lone_message_refused_for_the_output_asked_goes_again_asking_less(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before collecting its Message Batch, whose lone message's request the
    window refused only for the whole ``max_tokens`` asked: the next run collects it and
    sends the message again asking the live path's output budget, and lists the request
    split once that smaller request is submitted (it used to send it again asking the whole
    ``max_tokens``, refused the same way a batch round trip later, and list it split)."""
    said = ["cat says 0: hello there"]
    await _said_by_cat(db_url, said)
    server.max_prompt_tokens = estimate_tokens(_bulk_params(said[0])) + 2000
    server.counts_max_tokens = True

    with Audit(db_url=db_url) as audit:
        report = await _stopped_before_collecting_then_run(audit, monkeypatch)
        (added,) = [e for e in audit.store.events_of("cat") if isinstance(e, UserLog.MessageAdded)]
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
        pinned = _kept_as_repeating(audit, "cat")
    extractor = ClaudeExtractor(max_retries=0)
    budget = extractor.output_budget(ExtractionBatch("cat", "t", (BatchMessage.of(added),), ()))
    asked = [[r["params"]["max_tokens"] for r in b["requests"]] for b in server.batches]
    assert asked == [[extractor.max_tokens], [budget]], "sent again once, asking less"
    first = server.batches[0]
    assert list(report.split) == [f"{first['id']}:{r['custom_id']}" for r in first["requests"]]
    assert (report.failed, report.left_out, pinned) == ({}, {}, [])
    assert recorded == [added.message_id], "covered once"
    assert differences(db_url) == []


async def test_requests_planned_before_a_size_was_learned_go_out_within_it(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests planned before the run learned a size from a refusal, still waiting for a
    later Message Batch, are cut within that size before they go: one request is refused,
    not one each (each used to go out at the configured size, be refused and be split a
    batch round trip later, up to 24 hours each)."""
    said = [f"says {i}: " + "word " * 400 for i in range(6)]
    users = ["u1", "u2", "u3"]
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for user in users:
            for content in said:
                await memory.add_message(user, "user", content)
            await memory.flush(user)
    _over_two_messages(server, "the prompt over the window", said)
    monkeypatch.setattr(memvee._bulk.run, "MAX_REQUESTS_PER_BATCH", 1)
    with Audit(db_url=db_url) as audit:
        report = await _run(audit, users=users, limits=BatchLimits(max_messages=6))
        covered = {u: [m for e in _reextracted(audit, u) for m in e.message_ids] for u in users}
        added = {
            u: [
                e.message_id
                for e in audit.store.events_of(u)
                if isinstance(e, UserLog.MessageAdded)
            ]
            for u in users
        }
    assert (len(report.split), report.failed, report.left_out) == (1, {}, {})
    assert all(sorted(covered[u]) == sorted(added[u]) for u in users), "each covered once"
    sizes = [len(prompt_messages(r["params"])) for b in server.batches for r in b["requests"]]
    assert sizes[0] == 6 and max(sizes[1:]) <= 2, sizes
    assert differences(db_url) == []


async def test_a_user_forgotten_before_a_split_request_goes_again_is_told_forgotten_not_split(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cat's request is refused for its size and split, and cat is forgotten before the
    parts are submitted: nothing is sent again, and the report says so (the request
    ``forgotten``, cat ``forgotten_users``), where it used to list the request as split,
    "sent again smaller", and cat as taken over by another run."""
    said = [f"cat says {i}: " + "word " * 400 for i in range(6)]
    await _said_by_cat(db_url, said)
    _over_two_messages(server, "the prompt over the window", said)
    real = BulkReextraction._split_again
    with Audit(db_url=db_url) as audit:

        async def then_forgotten(self: BulkReextraction, *args: Any, **kw: Any) -> None:
            await real(self, *args, **kw)
            await asyncio.to_thread(audit.forget, "cat")

        monkeypatch.setattr(BulkReextraction, "_split_again", then_forgotten)
        report = await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
    assert len(server.batches) == 1, "nothing sent again"
    assert (report.split, report.claimed, report.forgotten_users) == ({}, [], ["cat"])
    (why,) = report.forgotten.values()
    assert "prompt is too long" in why and "forgotten before its messages were sent" in why


async def test_a_split_request_of_a_batch_an_earlier_run_kept_is_sent_again_by_any_run(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before collecting its batch, whose request of cat's is refused for its
    size; the next run, naming only dog, collects it: cat's messages go again within the
    size learned, as a dropped kept batch's do, and it lists the request split, where it
    used to list it "sent again smaller" and send nothing until a run named cat."""
    said = [f"cat says {i}: " + "word " * 400 for i in range(6)]
    await _said_by_cat(db_url, said)
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        await memory.add_message("dog", "user", "dog says hi")
        await memory.flush("dog")
    _over_two_messages(server, "the prompt over the window", said)

    async def killed(self: BulkReextraction, *args: Any, **kw: Any) -> None:
        raise RuntimeError("killed")

    with Audit(db_url=db_url) as audit:
        with monkeypatch.context() as patch:
            patch.setattr(BulkReextraction, "_finish", killed)
            with pytest.raises(RuntimeError, match="killed"):
                await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
        report = await _run(audit, users=["dog"], limits=BatchLimits(max_messages=6))
        added = [
            e.message_id
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.MessageAdded)
        ]
        covered = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
        later = await _run(audit, users=["cat"], limits=BatchLimits(max_messages=6))
    first = server.batches[0]
    assert list(report.split) == [f"{first['id']}:{r['custom_id']}" for r in first["requests"]]
    assert (report.failed, report.left_out) == ({}, {})
    assert sorted(covered) == sorted(added), "each of cat's covered once, by the run naming dog"
    assert (later.submitted, later.recorded) == (0, 0)
    assert differences(db_url) == []


async def test_a_message_over_the_context_window_only_beside_its_entries_goes_in_without_them(
    db_url: str, server: MessagesAPIServer
) -> None:
    """A lone message's request is over the model's context window with the version's
    entries shown beside it, and fits without them: it is sent again showing none and
    covered, the same run, not left out of the version as a message that never fits."""
    said = [f"cat says {i}: " + "word " * 100 for i in range(4)]
    late = "cat says late: " + "word " * 100
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for content in said:
            await memory.add_message("cat", "user", content)
        await memory.flush("cat")
    with Audit(db_url=db_url) as audit:
        await _run(audit, users=["cat"])
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        await memory.add_message("cat", "user", late)
        await memory.flush("cat")
    server.max_prompt_tokens = estimate_tokens(_bulk_params(late)) + 50
    with Audit(db_url=db_url) as audit:
        report = await _run(audit, users=["cat"])
        (late_id,) = [
            e.message_id
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.MessageAdded) and e.content == late
        ]
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
    shown, bare = (r["params"] for b in server.batches[-2:] for r in b["requests"])
    assert prompt_known_entries(shown) and not prompt_known_entries(bare)
    assert (report.failed, report.left_out, len(report.split)) == ({}, {}, 1)
    assert recorded.count(late_id) == 1
    assert differences(db_url) == []


async def test_an_earlier_runs_lone_message_over_the_window_beside_its_entries_goes_without_them(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before collecting its Message Batch, whose lone message's request is
    over the model's context window only beside the entries shown: the next run collects
    it and sends the message again showing none, covered that run (it used to show them
    again, be refused the same way a batch round trip later, and list the request split)."""
    said = [f"cat says {i}: " + "word " * 100 for i in range(4)]
    late = "cat says late: " + "word " * 100
    await _said_by_cat(db_url, said)
    with Audit(db_url=db_url) as audit:
        await _run(audit, users=["cat"])
    await _said_by_cat(db_url, [late])
    server.max_prompt_tokens = estimate_tokens(_bulk_params(late)) + 50

    with Audit(db_url=db_url) as audit:
        report = await _stopped_before_collecting_then_run(audit, monkeypatch)
        (late_id,) = [
            e.message_id
            for e in audit.store.events_of("cat")
            if isinstance(e, UserLog.MessageAdded) and e.content == late
        ]
        recorded = [m for e in _reextracted(audit, "cat") for m in e.message_ids]
    assert len(server.batches) == 3, "sent again once"
    stopped, again = server.batches[1:]
    (shown,), (bare,) = stopped["requests"], again["requests"]
    assert prompt_known_entries(shown["params"]) and not prompt_known_entries(bare["params"])
    assert list(report.split) == [f"{stopped['id']}:{shown['custom_id']}"]
    assert (report.failed, report.left_out) == ({}, {})
    assert recorded.count(late_id) == 1
    assert differences(db_url) == []


async def test_a_request_erroring_every_time_alone_goes_through_the_messages_api(
    db: str, server: MessagesAPIServer
) -> None:
    """One message makes its request come back errored (a server error) every time: once
    that request is all that is left, its Message Batch fails whole, as in an outage; the
    second time it does, its messages go through the Messages API by the live
    re-extraction's rules, so the innocent one sharing it gets in and only the message
    that fails alone is left out."""
    server.set_responder(
        fault_when("bob likes thing 4", ScriptedResponse(500, error_body("api_error", "boom")))
    )
    with Audit(db_url=db) as audit:
        first = await _run(audit)
        assert (first.submitted, first.recorded, first.left_out) == (6, 5, {})
        second = await _run(audit)
        assert (second.submitted, second.recorded, second.direct) == (1, 0, {})
        later = [await _run(audit) for _ in range(2)]
        assert [r.direct for r in later] == [{"bob": 2}, {"bob": 2}]
        added = [e for e in audit.store.events_of("bob") if isinstance(e, UserLog.MessageAdded)]
        (poisoned,) = [e.message_id for e in added if e.content == "bob likes thing 4"]
        assert list(later[-1].left_out) == [poisoned] and "boom" in later[-1].left_out[poisoned]
        assert _covered(audit, "bob") == {e.message_id for e in added} - {poisoned}


async def test_server_errors_of_every_request_of_a_batch_pin_no_message(
    db: str, server: MessagesAPIServer
) -> None:
    """Every request of a Message Batch errored (the API's outage, not theirs), run after
    run: once it passes, the next run sends the same bounded requests, not one a message."""
    server.set_responder(lambda r: ScriptedResponse(500, error_body("api_error", "down")))
    with Audit(db_url=db) as audit:
        for _ in range(2):
            down = await _run(audit)
            assert (down.recorded, down.left_out) == (0, {}) and len(down.failed) >= 6
        server.set_responder(default_answer)
        again = await _run(audit)
    assert (again.submitted, again.recorded, again.failed) == (6, 6, {})


async def test_the_command_line_lists_what_a_bulk_run_left_out(
    db: str, server: MessagesAPIServer
) -> None:
    """A message too large for any Message Batch alone: the run splits down to it and
    lists it left out (exit 1), instead of failing the same way every run."""
    limit = _two_and_a_half()
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("bob", "huge " * (limit // 5), "ok")
        await memory.flush("bob")
    server.max_batch_bytes = limit
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 1, result.output
    assert result.output.count("left out:") == 1 and "Traceback" not in result.output


async def test_the_command_line_lists_the_requests_a_bulk_run_split_for_their_size(
    db: str, server: MessagesAPIServer
) -> None:
    """Requests the API refused for their size are neither failed nor left out: the run
    sends their messages again smaller, and the command line lists each one split."""
    said = [f"dan says {i}: " + "word " * 400 for i in range(6)]
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        for content in said:
            await memory.add_message("dan", "user", content)
        await memory.flush("dan")
    _over_two_messages(server, "the prompt over the window", said)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert shown.count("split: ") == 1 and "prompt is too long" in shown, result.output
    assert "0 failed" in result.output and "left out:" not in result.output


async def _stopped_leaving_no_message_out(audit: Audit) -> None:
    """Run a bulk re-extraction that must stop as refused whatever the size, and check
    that it recorded no message as failing."""
    with pytest.raises(ExtractionError, match="refuses requests of any size"):
        await _run(audit)
    failed = [
        e
        for user in USERS
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.ReextractionFailed)
    ]
    assert failed == []


async def test_a_batch_body_limit_below_the_fixed_prompt_leaves_no_message_out(
    db: str, server: MessagesAPIServer
) -> None:
    """Message Batches refused as too large whatever their size (a body limit below the
    fixed prompt), while the Messages API takes requests: each message weighs less than
    the prompt around it, so the run stops leaving none out, where each used to be left
    out of the version (a probe through the Messages API, whose limit differs, was
    accepted) and kept as failing for good."""
    server.max_batch_bytes = _request_bytes("x") // 2
    with Audit(db_url=db) as audit:
        await _stopped_leaving_no_message_out(audit)
        server.max_batch_bytes = None
        report = await _run(audit)
    assert (report.recorded, report.failed, report.left_out) == (6, {}, {})


async def test_a_request_body_limit_below_the_fixed_prompt_errors_every_request_leaving_none_out(
    db: str, server: MessagesAPIServer
) -> None:
    """Every request of a Message Batch comes back errored with a 413, whatever its size
    (a body limit below the fixed prompt): the run splits them down to single messages,
    each weighing no more than the prompt around it, so none is blamed nor left out, and
    the next run, once requests go through, records them all."""
    server.max_request_bytes = _request_bytes("x") // 2
    with Audit(db_url=db) as audit:
        refused = await _run(audit)
        failed = [
            e
            for user in USERS
            for e in audit.store.events_of(user)
            if isinstance(e, UserLog.ReextractionFailed)
        ]
        server.max_request_bytes = None
        report = await _run(audit)
    assert (refused.recorded, refused.left_out) == (0, {}) and refused.failed
    assert all("refuses requests of any size" in why for why in refused.failed.values())
    assert failed == []
    assert (report.recorded, report.failed, report.left_out) == (6, {}, {})


async def test_a_gateway_refusing_every_request_as_too_large_leaves_no_message_out(
    db: str, server: MessagesAPIServer
) -> None:
    """Every create refused as too large (413), and the request of a lone message with a
    harmless message in its place too: the API or a gateway refuses requests of any
    size, so the run stops saying so and leaves no message out, where each used to be
    left out of the version; the next run, once requests go through, records them all."""
    server.set_batches_fault(_creates_answered(413, "request_too_large", times=1_000))
    server.set_responder(
        lambda r: ScriptedResponse(413, error_body("request_too_large", "body too large"))
    )
    with Audit(db_url=db) as audit:
        await _stopped_leaving_no_message_out(audit)
        server.set_batches_fault(None)
        server.set_responder(default_answer)
        report = await _run(audit)
    assert (report.recorded, report.failed, report.left_out) == (6, {}, {})


async def test_a_run_that_crashed_while_recording_records_only_the_rest(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Audit(db_url=db) as audit:
        await _run_killed_after_recording_two(audit, monkeypatch)
        report = await _run(audit)
        assert (report.submitted, report.recorded, report.skipped) == (0, 4, 2)
        for user in USERS:
            ids = Counter(m for e in _reextracted(audit, user) for m in e.message_ids)
            assert set(ids.values()) == {1} and len(ids) == 10, "nothing recorded twice"


async def test_failed_requests_are_reported_and_the_next_run_sends_only_them(
    db: str, server: MessagesAPIServer
) -> None:
    def bob_fails(request: RecordedRequest) -> ScriptedResponse:
        if any("bob likes thing 4" in m["content"] for m in request.messages):
            return ScriptedResponse(500, error_body("api_error", "internal"))
        return default_answer(request)

    server.set_responder(bob_fails)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        (failed,) = report.failed
        assert "errored" in report.failed[failed] and report.recorded == 5
        server.set_responder(default_answer)
        again = await _run(audit)
        assert (again.submitted, again.recorded, again.failed) == (1, 1, {})
        assert audit.knowledge_versions("bob")["v2"] == 5


async def test_an_answer_billed_but_not_recordable_is_counted_once_and_sent_again(
    db: str, server: MessagesAPIServer
) -> None:
    """A request that succeeded with an answer cut at its budget spent tokens: its user's
    log keeps them (``memvee stats``), once however many runs collect the batch. Cut
    again it would be: the next run sends its messages one a request."""

    def bob_cut(request: RecordedRequest) -> ScriptedResponse:
        answer = default_answer(request)
        if any("bob likes thing 4" in m["content"] for m in request.messages):
            return ScriptedResponse(body={**answer.body, "stop_reason": "max_tokens"})
        return answer

    server.set_responder(bob_cut)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        (request_id,) = report.failed
        failed = [
            e for e in audit.store.events_of("bob") if isinstance(e, UserLog.ReextractionFailed)
        ]
        assert [(f.request_id, len(f.message_ids)) for f in failed] == [(request_id, 2)]
        assert failed[0].input_tokens and failed[0].output_tokens
        spent = audit.spend()
        assert sum(row["calls"] for row in spent) == 6, "5 recorded, 1 failed"
        server.set_responder(default_answer)
        again = await _run(audit)
        assert (again.submitted, again.recorded, again.failed) == (2, 2, {})
        assert audit.knowledge_versions("bob")["v2"] == 5
        assert sum(row["calls"] for row in audit.spend()) == 8


def test_the_command_line_runs_a_bulk_reextraction(db: str, server: MessagesAPIServer) -> None:
    runner = CliRunner()
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = runner.invoke(app, [*args, "--as", "v2", "--promote", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert "recorded" in result.output and "0 failed" in result.output
    with Audit(db_url=db) as audit:
        assert audit.knowledge_versions("ann") == {"live": 5}, "v2 was promoted"
    refused = runner.invoke(app, ["reextract", "--all", "--batch-api", "--db-url", db])
    assert refused.exit_code == 2 and "--batch-api needs --extractor claude" in refused.output


def test_promoting_users_another_run_holds_is_refused_after_their_kept_requests_are_recorded(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed once it submitted, then one of another host holding ann: running the
    command again with ``--promote`` records the kept batch for both users, tells ann's
    requests recorded though nothing new is submitted for her, promotes bob, and exits 2
    with one line saying how to promote ann once the other run ends."""
    with Audit(db_url=db) as audit:
        asyncio.run(_killed_once_submitted(audit, monkeypatch))
        _claimed(audit, "ann", ANOTHER_HOST, datetime.now(UTC))
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--promote", "--db-url", db])
    assert result.exit_code == 2, result.output
    assert "6 requests recorded" in result.output
    assert "ann is being re-extracted into 'v2' by another run; its kept requests " in (
        " ".join(result.output.split())
    )
    error = " ".join(line for line in result.output.splitlines() if line.startswith("error:"))
    assert "'v2' not promoted for 1 of 2 users" in error and "memvee promote" in error
    with Audit(db_url=db) as audit:
        assert "v2" in audit.knowledge_versions("ann") and audit.knowledge_versions("bob") == {
            "live": 5
        }


def test_the_command_line_tells_once_of_a_user_another_run_holds(
    db: str, server: MessagesAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's warning and the command's ``claimed:`` line both told it, on stderr."""
    with Audit(db_url=db) as audit:
        _claimed(audit, "ann", ANOTHER_HOST, datetime.now(UTC))
    caplog.set_level(logging.WARNING)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    told = [" ".join(result.output.split()), *(r.getMessage() for r in caplog.records)]
    assert sum(line.count("by another run") for line in told) == 1, told


def _forget_bob_before_his_answers(patch: pytest.MonkeyPatch, *, afresh: bool) -> None:
    """bob is forgotten between the submit and the collect (and, ``afresh``, writes
    again): just before the first of his answers is recorded."""
    real = memvee._bulk.record.Recorder.record
    forgotten: list[str] = []

    def forget_bob_first(self: Recorder, custom_id: str, request: Any, *rest: Any) -> Any:
        if request["user"] == "bob" and not forgotten:
            forgotten.append("bob")
            projector = Projector(ProjectionTables())
            erase_user(self.store, projector, None, "bob")
            if afresh:
                log = UserLog.register("bob")
                log.add_message("user", "I start afresh", None, 100)
                self.store.append([log.collect_events()], projector.apply)
        return real(self, custom_id, request, *rest)

    patch.setattr(memvee._bulk.record.Recorder, "record", forget_bob_first)


async def test_a_user_forgotten_while_the_batch_ran_gets_none_of_its_answers(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten, and writes again, before the answers come back: what his old
    messages gave is reported as forgotten meanwhile (dropped, not failed: there is
    nothing to retry), not recorded in his new log; ann's is recorded."""
    _forget_bob_before_his_answers(monkeypatch, afresh=True)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        assert (report.submitted, report.recorded, report.failed) == (6, 3, {})
        reasons = list(report.forgotten.values())
        assert len(reasons) == 3 and all("forgotten" in r for r in reasons), reasons
        assert _reextracted(audit, "bob") == [] and len(_reextracted(audit, "ann")) == 3
        assert audit.knowledge_versions("bob") == {}


def test_the_command_line_drops_the_requests_of_a_user_forgotten_meanwhile(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten while the batch runs: his request is listed as dropped, and
    the run exits 0 (exit 1 would ask for a run again, which has no bob to retry)."""
    _forget_bob_before_his_answers(monkeypatch, afresh=False)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert result.output.count("forgotten meanwhile, dropped:") == 1, result.output
    assert "0 failed" in result.output


def _forget_bob_before_his_claim(patch: pytest.MonkeyPatch) -> None:
    """bob is forgotten after the run began, just before it claims him."""
    claim = BulkReextraction._claim

    def forget_bob_first(self: BulkReextraction, user_id: str) -> set[str] | None:
        if user_id == "bob":
            erase_user(self.store, Projector(ProjectionTables()), None, "bob")
        return claim(self, user_id)

    patch.setattr(BulkReextraction, "_claim", forget_bob_first)


async def test_a_user_forgotten_after_the_run_began_is_passed_over_and_the_others_go_on(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten as the run comes to plan him (his claim waits for the forget on
    PostgreSQL, then claims him afresh): he is passed over and reported, his claim
    released, and ann's messages are re-extracted. The run used to stop for every user
    with "user 'bob' has no log"."""
    _forget_bob_before_his_claim(monkeypatch)
    with Audit(db_url=both_backends) as audit:
        report = await _run(audit)
        assert report.forgotten_users == ["bob"]
        assert report.failed == {} and report.claimed == []
        assert report.recorded == report.submitted > 0
        assert _reextracted(audit, "ann") and audit.store.load("bob") is None
        assert _requests_left(audit.store) == {}, "bob's claim released"


def test_the_command_line_lists_a_user_forgotten_after_the_run_began_and_promotes_the_others(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten as the run comes to plan him: a `forgotten meanwhile:` line names
    him, ann is promoted, and the run exits 0 (there is nothing of bob's to run again)."""
    _forget_bob_before_his_claim(monkeypatch)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--promote", "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert result.output.count("forgotten meanwhile:") == 1, result.output
    assert "forgotten meanwhile: bob" in " ".join(result.output.split())
    with Audit(db_url=db) as audit:
        assert "v2" not in audit.unpromoted_versions("ann")


async def test_a_run_naming_a_user_who_never_had_a_log_stops_before_anything_is_sent(
    db: str, server: MessagesAPIServer
) -> None:
    """A user named explicitly who has no log is a mistake in the names: nothing of the
    run is sent, for the others neither."""
    with Audit(db_url=db) as audit:
        with pytest.raises(InvalidInputError, match="'nobody' has no log"):
            await _run(audit, users=["ann", "nobody"])
        assert server.batches == []


def test_a_run_reads_no_log_for_the_claims_another_run_under_way_holds(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starting run removes the claims stopped runs left on forgotten users: the claims
    of a run under way (of thousands of users, say) are not its to remove, and their
    users' logs are not read (a read each, 0.26 ms a user on PostgreSQL)."""
    with Audit(db_url=db) as audit:
        for user in USERS:
            _claimed(audit, user, ANOTHER_HOST, datetime.now(UTC))
        reads: list[str] = []
        last_version = audit.store.last_version
        monkeypatch.setattr(
            audit.store, "last_version", lambda user: reads.append(user) or last_version(user)
        )
        _bare_run(audit).claiming.sweep_forgotten_claims()
        assert reads == []
        assert len(_requests_left(audit.store)) == len(USERS)


def test_reextract_all_passes_over_a_user_forgotten_after_the_users_were_listed(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--all`` listed ann and bob from their logs; bob is forgotten while the run checks
    the credentials, before it begins: he is told as forgotten meanwhile and ann's messages
    are re-extracted (the run used to stop with "user 'bob' has no log", exit 2)."""
    real = memvee.audit.check_credentials

    async def forget_bob_then_check(extractor: ClaudeExtractor) -> None:
        with Audit(db_url=db) as other:
            other.forget("bob")
        await real(extractor)

    monkeypatch.setattr(memvee.audit, "check_credentials", forget_bob_then_check)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert "forgotten meanwhile: bob" in result.output
    with Audit(db_url=db) as audit:
        assert "v2" in audit.unpromoted_versions("ann")


async def test_a_run_removes_the_claims_stopped_runs_left_on_users_forgotten_since(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """A run that claimed a user and stopped after the user was forgotten left its claim
    naming them: the next run removes it, whatever users it names. A claim of a user with a
    log (a run naming them takes it over), or one a run may still renew, stays."""
    stale = datetime.now(UTC) - 2 * memvee._bulk.claims.CLAIM_TTL
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "gone", ANOTHER_HOST, stale)
        _claimed(audit, "older-gone", {}, datetime.now(UTC) - 2 * memvee._bulk.claims.OLD_CLAIM_TTL)
        _claimed(audit, "renewed-gone", ANOTHER_HOST, datetime.now(UTC))
        _claimed(audit, "bob", ANOTHER_HOST, stale)
        await _run(audit, users=["ann"])
        left = _requests_left(audit.store).values()
    assert sorted(user for users in left for user in users) == ["bob", "renewed-gone"]


async def test_forget_removes_the_users_requests_from_a_run_kept_for_later(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed after it submitted keeps its requests (user ids and message ids) for
    the next run; forgetting bob removes his, and the next run records only ann's."""

    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        receipt = erase_user(audit.store, Projector(ProjectionTables()), None, "bob")
        assert receipt.rows["bulk_requests"] == 3
        with audit.store.engine.connect() as connection:
            (requests,) = connection.execute(select(BULK_BATCHES.c.requests)).scalars()
        assert {r["user"] for r in requests.values()} == {"ann"}
        report = await audit.reextract_in_bulk(
            ["ann"], ClaudeExtractor(max_retries=0), "v2", limits=LIMITS, poll_interval=0.01
        )
        assert (report.submitted, report.recorded, report.failed) == (0, 3, {})
        assert len(_reextracted(audit, "ann")) == 3


async def test_a_kept_batch_the_api_no_longer_knows_is_reported_and_planned_again(
    db: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A kept batch deleted at the API (or past its 29 days, or another workspace's) is
    told of and its row dropped: its requests go in a new batch, not a failure forever."""
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        (gone,) = server.batches
        client = anthropic.Anthropic(max_retries=0)
        client.messages.batches.cancel(gone["id"])
        client.messages.batches.retrieve(gone["id"])  # the cancel ends it
        client.messages.batches.delete(gone["id"])
        with caplog.at_level(logging.WARNING, logger="memvee.bulk"):
            report = await _run(audit)
        assert report.lost == [gone["id"]] and "not known to the API" in caplog.text
        assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
        assert gone["id"] not in report.batches
        again = await _run(audit)
        assert (again.lost, again.submitted, again.recorded) == ([], 0, 0)


async def test_a_kept_batch_polled_through_a_wrong_base_url_path_is_kept_and_collected_later(
    db: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 404 on a kept batch through a base URL whose path is wrong names no batch gone:
    the endpoint is not there either. The run stops, told not found, keeping the batch,
    which still runs at the API; the run with the right URL collects it, so none of its
    requests is submitted, and paid for, twice."""
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        (kept,) = server.batches
        with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, "memvee.bulk"):
            patch.setenv("ANTHROPIC_BASE_URL", f"{server.base_url}/wrong-path")
            with pytest.raises(ExtractorNotFoundError, match="HTTP 404") as stopped:
                await _run(audit)
        assert kept["id"] in str(stopped.value) and "not known to the API" not in caplog.text
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES.c.api_batch_id)).scalars().all() == [
                kept["id"]
            ]
        report = await _run(audit)
        assert (report.lost, report.submitted, report.recorded) == ([], 0, 6)
        assert report.batches == [kept["id"]] and len(server.batches) == 1
        assert sorted(report.collected) == sorted(USERS)


async def test_a_kept_batch_whose_results_download_is_not_found_is_kept_and_never_resubmitted(
    db: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 404 on the results of a batch the API has just answered as ended names no batch
    gone: the results URL's path is not found. The run stops, told so, keeping the batch;
    none of its requests is submitted, and paid for, again, run after run, and the run
    whose download answers collects it."""

    def results_not_found(request: RecordedRequest) -> ScriptedResponse | None:
        if request.path.endswith("/results"):
            return ScriptedResponse(status=404, body=error_body("not_found_error", "no file"))
        return None

    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        (kept,) = server.batches
        server.set_batches_fault(results_not_found)
        with caplog.at_level(logging.WARNING, "memvee.bulk"):
            for _ in range(2):
                with pytest.raises(ExtractorNotFoundError, match="results") as stopped:
                    await _run(audit)
                assert kept["id"] in str(stopped.value)
                assert f"/{kept['id']}/results" in str(stopped.value)
        assert "not known to the API" not in caplog.text and len(server.batches) == 1
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES.c.api_batch_id)).scalars().all() == [
                kept["id"]
            ]
        server.set_batches_fault(None)
        report = await _run(audit)
        assert (report.lost, report.submitted, report.recorded) == ([], 0, 6)
        assert report.batches == [kept["id"]] and len(server.batches) == 1


async def test_a_bulk_request_asks_for_the_whole_output_budget(
    db: str, server: MessagesAPIServer
) -> None:
    """The Batches API bills only the tokens generated: a dense request is not cut at a
    guessed budget, and sent again with the same one by every later run."""

    def dense(request: RecordedRequest) -> ScriptedResponse:
        answer = default_answer(request)
        if request.body["max_tokens"] < 8192:
            return ScriptedResponse(body={**answer.body, "stop_reason": "max_tokens"})
        return answer

    server.set_responder(dense)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert (report.recorded, report.failed) == (6, {})
    assert {r["params"]["max_tokens"] for r in server.batches[0]["requests"]} == {8192}


async def test_a_catch_up_request_is_shown_the_entries_live_extraction_would_show(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that catches a version up shows each request the version's entries related
    to it, most related first, within a quarter of the batch budget: not every entry (a
    user of more than two entries here, of more than 100 in truth)."""
    monkeypatch.setattr(projections.shown, "MAX_KNOWN_ENTRIES", 2)
    with Audit(db_url=db) as audit:
        await _run(audit)
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_message("bob", "user", "I live in Oslo")
        await memory.add_message("bob", "user", "bob likes thing 3 the most")
        await memory.flush("bob")
    with Audit(db_url=db) as audit:
        assert audit.knowledge_versions("bob")["v2"] == 5
        report = await audit.reextract_in_bulk(
            ["bob"], ClaudeExtractor(max_retries=0), "v2", poll_interval=0.01
        )
        assert (report.submitted, report.recorded) == (1, 1)
        (request,) = server.batches[-1]["requests"]
        listed = [e["text"] for e in prompt_known_entries(request["params"])]
        assert len(listed) == 2, listed
        assert listed[0] == "User said: bob likes thing 3", "the most related first"


async def test_two_runs_collecting_one_kept_batch_record_each_request_once(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs resume one kept batch at once: the second read the log before the first
    recorded, so the log itself refuses the requests recorded meanwhile (each recording
    the second run tries adds nothing)."""
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        with audit.store.engine.connect() as connection:
            kept = dict(connection.execute(select(BULK_BATCHES)).mappings().one())
        first = await _run(audit)
        with audit.store.transaction() as connection:
            connection.execute(BULK_BATCHES.insert(), kept)
        record = memvee._bulk.record.Recorder.record
        tried: list[Any] = []

        def record_told(self: Recorder, *args: Any) -> Any:
            tried.append(record(self, *args))
            return tried[-1]

        monkeypatch.setattr(memvee._bulk.record.Recorder, "recorded", lambda self, user_id: set())
        monkeypatch.setattr(memvee._bulk.record.Recorder, "record", record_told)
        second = await _run(audit)
        assert (first.recorded, second.recorded, second.skipped) == (6, 0, 6)
        assert tried == [None] * 6, "each refused by the log, not passed over before"
        for user in USERS:
            ids = Counter(e.request_id for e in _reextracted(audit, user))
            assert set(ids.values()) == {1} and len(ids) == 3, "nothing recorded twice"


async def test_a_failed_requests_error_never_shows_the_api_key(
    db: str, server: MessagesAPIServer
) -> None:
    def leaky(request: RecordedRequest) -> ScriptedResponse:
        message = "the request echoed header x-api-key: sk-test-bulk"
        return ScriptedResponse(400, error_body("invalid_request_error", message))

    server.set_responder(leaky)
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert len(report.failed) == 6
    assert all("sk-test-bulk" not in r and "[redacted]" in r for r in report.failed.values())


def _retrievals_overloaded(
    looks: Iterator[int], overloaded: range
) -> Callable[[RecordedRequest], ScriptedResponse | None]:
    """A fault answering the looks at a batch numbered in ``overloaded`` with HTTP 529."""

    def fault(request: RecordedRequest) -> ScriptedResponse | None:
        retrieve = request.method == "GET" and request.path.count("/") == 4
        if retrieve and next(looks) in overloaded:
            return ScriptedResponse(529, error_body("overloaded_error", "Overloaded"))
        return None

    return fault


async def test_a_short_outage_while_polling_is_ridden_out(
    db: str, server: MessagesAPIServer
) -> None:
    server.set_batches_fault(_retrievals_overloaded(itertools.count(1), range(2, 5)))
    with Audit(db_url=db) as audit:
        report = await _run(audit)
    assert (report.submitted, report.recorded, report.failed) == (6, 6, {})


async def test_an_outage_longer_than_the_bound_ends_the_run_and_keeps_the_batch(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memvee._bulk.run, "MAX_POLL_OUTAGE", 0.05)
    server.set_batches_fault(_retrievals_overloaded(itertools.count(1), range(1, 10**6)))
    with Audit(db_url=db) as audit:
        with pytest.raises(ExtractionError, match="529"):
            await _run(audit)
        server.set_batches_fault(None)
        report = await _run(audit)
        assert (report.submitted, report.recorded) == (0, 6), "the kept batch is collected"


def _results_broken(how: str) -> Callable[[RecordedRequest], ScriptedResponse | None]:
    """A fault serving a results file cut short, or holding a line that is not JSON."""
    lines = b'{"custom_id": "r1", "result": {"type": "errored"}}\n' * 4
    body, cut = (lines, 30) if how == "cut" else (b"{oops\n", None)

    def fault(request: RecordedRequest) -> ScriptedResponse | None:
        if not request.path.endswith("/results"):
            return None
        headers = {"content-type": "application/binary"}
        return ScriptedResponse(body=body, headers=headers, truncate_at=cut)

    return fault


@pytest.mark.parametrize("how", ["cut", "not JSON"])
async def test_results_that_cannot_be_read_are_an_extraction_error_and_the_batch_is_kept(
    db: str, server: MessagesAPIServer, how: str
) -> None:
    server.set_batches_fault(_results_broken(how))
    with Audit(db_url=db) as audit:
        with pytest.raises(ExtractionError, match="could not be read"):
            await _run(audit)
        server.set_batches_fault(None)
        report = await _run(audit)
        assert (report.submitted, report.recorded) == (0, 6), "the kept batch is collected"


def _failures(audit: Audit) -> list[Any]:
    return [
        e
        for user in USERS
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.ReextractionFailed)
    ]


def _results_short(
    server: MessagesAPIServer, how: str, *, batch: int = 0
) -> Callable[[RecordedRequest], ScriptedResponse | None]:
    """A fault serving the ``batch``-th Message Batch's results, each request errored with
    a server error, as an empty file, as one that ends at a line's end with the last
    request's line missing or after the first line (read as JSON lines without a
    complaint), or cut inside a line; other calls go as usual."""

    def fault(request: RecordedRequest) -> ScriptedResponse | None:
        batches = server.batches
        if len(batches) <= batch or not request.path.endswith(f"{batches[batch]['id']}/results"):
            return None
        if how == "cut":
            return _results_broken("cut")(request)
        named = [r["custom_id"] for r in batches[batch]["requests"]]
        named = {"empty": [], "one line": named[:1]}.get(how, named[:-1])
        errored = {"type": "errored", "error": error_body("api_error", "boom")}
        lines = [json.dumps({"custom_id": c, "result": errored}) + "\n" for c in named]
        headers = {"content-type": "application/binary"}
        return ScriptedResponse(body="".join(lines).encode(), headers=headers)

    return fault


@pytest.mark.parametrize("how", ["empty", "a line short", "cut"])
async def test_results_read_short_keep_the_paid_batch_for_the_next_run(
    db: str, server: MessagesAPIServer, how: str
) -> None:
    """A results download read short without a broken line (a gateway cutting the JSONL
    at a line's end) fails the run as one that cannot be read, where each request missing
    used to fail with "no result" and the batch, paid for, was dropped and paid again."""
    server.set_batches_fault(_results_short(server, how))
    with Audit(db_url=db) as audit:
        with pytest.raises(ExtractionError, match="could not be read"):
            await _run(audit)
        server.set_batches_fault(None)
        report = await _run(audit)
    assert (report.submitted, report.recorded, report.failed, report.unread) == (0, 6, {}, [])
    assert len(server.batches) == 1, "the kept batch is collected, not paid for again"


@pytest.mark.parametrize("how", ["empty", "cut"])
async def test_a_batch_whose_results_are_read_short_three_times_is_dropped_and_planned_again(
    db: str, server: MessagesAPIServer, how: str
) -> None:
    """A gateway cuts every download of a batch's results: the third run that reads them
    short drops the kept batch and plans its messages again, where it used to be kept,
    and every run blocked, until the API forgot the batch 29 days later."""
    server.set_batches_fault(_results_short(server, how))
    with Audit(db_url=db) as audit:
        for reads in (1, 2):
            with pytest.raises(ExtractionError, match=f"read short {reads} of 3 times"):
                await _run(audit)
        (first,) = [b["id"] for b in server.batches]
        report = await _run(audit)
        assert report.unread == [first]
        assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == []
        assert _failures(audit) == [], "a short read blames no message"


def test_the_command_line_lists_a_batch_dropped_after_short_reads(
    db: str, server: MessagesAPIServer
) -> None:
    """The third short read drops the batch: a `dropped:` line names it, and the run,
    which plans its requests again and records them, exits 0."""
    server.set_batches_fault(_results_short(server, "empty"))
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    for _ in range(2):
        failed = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
        assert failed.exit_code == 2 and "read short" in failed.output, failed.output
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert result.output.count("dropped:") == 1 and server.batches[0]["id"] in result.output


def test_the_command_line_tells_unreadable_results_in_one_error_line(
    db: str, server: MessagesAPIServer
) -> None:
    server.set_batches_fault(_results_broken("cut"))
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "could not be read" in result.output
    assert "Traceback" not in result.output


async def test_a_request_that_always_fails_is_sent_again_one_message_a_request(
    db: str, server: MessagesAPIServer
) -> None:
    """A request refused every time is kept in its user's log; the next run sends each of
    its messages in a request of its own, so only the one refused alone stays out of the
    version."""
    server.set_responder(fault_when("bob likes thing 4", ScriptedResponse(body=refusal_body())))
    with Audit(db_url=db) as audit:
        first = await _run(audit)
        assert (first.submitted, len(first.failed)) == (6, 1)
        second = await _run(audit)
        assert (second.submitted, second.recorded, len(second.failed)) == (2, 1, 1)
        covered = {m for e in _reextracted(audit, "bob") for m in e.message_ids}
        left_out = [
            e.content
            for e in audit.store.events_of("bob")
            if isinstance(e, UserLog.MessageAdded) and e.message_id not in covered
        ]
        assert left_out == ["bob likes thing 4"]


async def test_requests_all_refused_for_one_reason_blame_no_message(
    db: str, server: MessagesAPIServer
) -> None:
    """Every request of a Message Batch refused as invalid for one reason (a model
    mistyped, a credit balance too low) is the account's or the settings' refusal: the
    requests are reported failed, and once it is fixed the next run sends the same
    bounded requests, not one a message."""
    reason = "Your credit balance is too low to access the Anthropic API"
    server.set_responder(
        lambda r: ScriptedResponse(400, error_body("invalid_request_error", reason))
    )
    with Audit(db_url=db) as audit:
        first = await _run(audit)
        assert (first.submitted, first.recorded, len(first.failed)) == (6, 0, 6)
        assert all("no message blamed" in why for why in first.failed.values())
        server.set_responder(default_answer)
        again = await _run(audit)
        assert (again.submitted, again.recorded, again.failed) == (6, 6, {})


async def test_a_model_refusing_every_request_of_message_batches_leaves_no_message_out(
    db: str, server: MessagesAPIServer
) -> None:
    """The model refusing every request (HTTP 200, stop_reason "refusal"), in Message
    Batches and the Messages API alike: one harmless request a Message Batch is refused
    too, so the refusals blame no message, run after run, and once the model answers the
    next run sends the same bounded requests and records them all. The refusals were each
    request's own: the second run sent every message alone and left them all out, for
    good."""
    server.set_responder(lambda r: ScriptedResponse(body=refusal_body()))
    with Audit(db_url=db) as audit:
        for _ in range(3):
            calls = len(server.requests)
            refused = await _run(audit)
            assert (refused.submitted, refused.recorded, len(refused.failed)) == (6, 0, 6)
            assert refused.left_out == {}
            assert all("the model refuses every request" in why for why in refused.failed.values())
            probes = [[m["content"] for m in r.messages] for r in server.requests[calls:]]
            assert probes == [["Hello."]], "one harmless request a Message Batch"
        server.set_responder(default_answer)
        answered = await _run(audit)
        assert (answered.submitted, answered.recorded, answered.failed) == (6, 6, {})
        for user in USERS:
            covered = {m for e in _reextracted(audit, user) for m in e.message_ids}
            assert len(covered) == 10


async def test_a_refusal_whose_probe_fails_is_the_requests_own_and_its_other_messages_recorded(
    db: str, server: MessagesAPIServer
) -> None:
    """The model refuses one message's request while the harmless request probing it fails
    (a 500): that tells nothing, so the refusal is the request's own, as before the probe:
    the request is split, its other messages recorded, the refused one left out. Kept
    unblamed while its probes failed, the request was sent again, billed, every run, and
    none of its messages recorded (review 4: 6 of ann's 10 messages, run after run)."""

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if request.custom_id is None:  # the Messages API: the probe
            return ScriptedResponse(500, error_body("api_error", "boom"))
        if any("ann likes thing 1" in str(m.get("content")) for m in request.messages):
            return ScriptedResponse(body=refusal_body())
        return default_answer(request)

    server.set_responder(responder)
    with Audit(db_url=db) as audit:
        for _ in range(3):
            report = await _run(audit)
        covered = {m for e in _reextracted(audit, "ann") for m in e.message_ids}
        assert len(covered) == 9
        assert len(report.left_out) == 1 and not report.failed
        assert all("refused" in why for why in report.left_out.values())


async def test_requests_all_refused_alike_are_their_own_when_a_probe_is_accepted(
    db: str, server: MessagesAPIServer
) -> None:
    """Every request of a Message Batch refused with the same text, while the same request
    with a harmless message in place of its messages is accepted (a content filter's
    refusal of each request's messages): the refusals are the requests' own, so the next
    run sends their messages one a request (they used to be taken for the account's, and
    the same requests were refused run after run, the version never made)."""
    blocked = "Output blocked by content filtering policy"

    def filtering(request: RecordedRequest) -> ScriptedResponse:
        if [m.get("content") for m in request.messages] == ["Hello."]:
            return default_answer(request)
        return ScriptedResponse(400, error_body("invalid_request_error", blocked))

    server.set_responder(filtering)
    with Audit(db_url=db) as audit:
        first = await _run(audit)
        assert (first.submitted, first.recorded, len(first.failed)) == (6, 0, 6)
        assert not any("no message blamed" in why for why in first.failed.values())
        server.set_responder(default_answer)
        again = await _run(audit)
        assert (again.submitted, again.recorded, again.failed) == (20, 20, {})


def _failures_spent(audit: Audit) -> list[tuple[int, int]]:
    """The input and output tokens of each re-extraction failure in the users' logs."""
    return sorted(
        (e.input_tokens or 0, e.output_tokens or 0)
        for user in USERS
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.ReextractionFailed)
    )


def _spent(audit: Audit) -> tuple[int, int]:
    """The input and output tokens ``memvee stats`` says extraction spent, in all."""
    rows = audit.spend()
    return sum(r["input_tokens"] for r in rows), sum(r["output_tokens"] for r in rows)


def _probe_answered(
    probe: dict[str, Any], batch: ScriptedResponse
) -> Callable[[RecordedRequest], ScriptedResponse]:
    """Answer a Message Batch's requests with ``batch``, a harmless request (a probe,
    through the Messages API) with ``probe``."""

    def respond(request: RecordedRequest) -> ScriptedResponse:
        return ScriptedResponse(body=probe) if request.custom_id is None else batch

    return respond


async def test_the_probe_of_a_models_refusals_counts_its_tokens_in_the_request_it_probed(
    db_on_both_backends: str, server: MessagesAPIServer
) -> None:
    """The harmless request probing the model's refusals in a Message Batch is billed at
    full price: its tokens are counted in the failure of the request it was sent for, so
    ``memvee stats`` shows them. They were dropped: the run showed only the batch's."""
    server.min_cache_tokens = 10**9  # the scripted usage as it is
    probe = refusal_body(input_tokens=7_000, output_tokens=3)
    server.set_responder(_probe_answered(probe, ScriptedResponse(body=refusal_body())))
    with Audit(db_url=db_on_both_backends) as audit:
        before = _spent(audit)
        report = await _run(audit)
        assert (report.submitted, len(report.failed), len(server.requests)) == (6, 6, 1)
        assert _failures_spent(audit) == [(100, 1)] * 5 + [(7_100, 4)]
        assert _spent(audit) == (before[0] + 6 * 100 + 7_000, before[1] + 6 * 1 + 3)


@pytest.mark.parametrize(
    "probe",
    [
        tool_use_body([], input_tokens=7_000, output_tokens=3),
        refusal_body(input_tokens=7_000, output_tokens=3),
    ],
    ids=["accepted", "refused by the model"],
)
async def test_the_probe_of_requests_all_refused_alike_counts_its_tokens_in_the_request_it_probed(
    db_on_both_backends: str, server: MessagesAPIServer, probe: dict[str, Any]
) -> None:
    """Every request of a Message Batch refused for one reason (HTTP 400, not billed): the
    harmless request probing whose refusal it is is answered, billed at full price, and
    its tokens are counted in the failure of the request it was sent for, accepted or
    refused by the model. They were dropped: the run showed nothing spent."""
    server.min_cache_tokens = 10**9  # the scripted usage as it is
    refused = ScriptedResponse(400, error_body("invalid_request_error", "blocked"))
    server.set_responder(_probe_answered(probe, refused))
    with Audit(db_url=db_on_both_backends) as audit:
        before = _spent(audit)
        report = await _run(audit)
        assert (report.submitted, len(report.failed), len(server.requests)) == (6, 6, 1)
        assert [f for f in _failures_spent(audit) if f != (0, 0)] == [(7_000, 3)]
        assert _spent(audit) == (before[0] + 7_000, before[1] + 3)


def _stopped_before_clearing_its_kept_batch(patch: pytest.MonkeyPatch) -> None:
    """Have a run stop once it recorded a Message Batch's results, before clearing the
    batch's kept row."""

    def killed(self: KeptBatches, local_id: str) -> None:
        raise RuntimeError("killed")

    patch.setattr(memvee._bulk.kept.KeptBatches, "delete", killed)


_REFUSED_AND_PROBED = {
    "the model refusing every request": (
        ScriptedResponse(body=refusal_body()),
        refusal_body(input_tokens=7_000, output_tokens=3),
    ),
    "requests refused as their own": (
        ScriptedResponse(400, error_body("invalid_request_error", "blocked")),
        tool_use_body([], input_tokens=7_000, output_tokens=3),
    ),
}
"""Every request of a Message Batch refused, and how the harmless request probing the
refusal is answered, such that every request's failure is kept in its user's log."""


@pytest.mark.parametrize("refusal", list(_REFUSED_AND_PROBED))
async def test_a_message_batch_collected_again_once_recorded_is_not_probed_or_billed_again(
    db_on_both_backends: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
) -> None:
    """A run stopped between recording a Message Batch's results and clearing its kept
    row leaves it to the next run, which collects it again: its requests are recorded
    already, so their refusals are not probed again (nor billed). The next run sent the
    harmless request again, at full price, for requests it skipped."""
    server.min_cache_tokens = 10**9  # the scripted usage as it is
    refused, probe = _REFUSED_AND_PROBED[refusal]
    server.set_responder(_probe_answered(probe, refused))
    with Audit(db_url=db_on_both_backends) as audit:
        with monkeypatch.context() as patch:
            _stopped_before_clearing_its_kept_batch(patch)
            with pytest.raises(RuntimeError, match="killed"):
                await _run(audit)
        failures = _failures_spent(audit)
        assert (len(server.requests), len(failures)) == (1, 6)
        server.set_responder(default_answer)
        again = await _run(audit)
        assert (again.skipped, again.failed) == (6, {})
        assert len(server.requests) == 1, "no harmless request for the requests skipped"
        assert _failures_spent(audit) == failures


async def test_a_refusal_probed_again_for_the_requests_a_stopped_run_left_counts_in_one_of_them(
    db_on_both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after recording two of a Message Batch's refused requests (the one
    its probe was counted in among them) leaves four: the next run, collecting the batch
    again, probes the model's refusal for those and counts the probe in one of them, so
    every probe billed shows (that run's new Message Batch is refused and probed too:
    three in all). The second probe was sent for the request recorded first, and its
    tokens, counted in a request recorded already, were dropped."""
    server.min_cache_tokens = 10**9  # the scripted usage as it is
    probe = refusal_body(input_tokens=7_000, output_tokens=3)
    server.set_responder(_probe_answered(probe, ScriptedResponse(body=refusal_body())))
    with Audit(db_url=db_on_both_backends) as audit:
        await _run_killed_after_recording_two(audit, monkeypatch)
        assert _failures_spent(audit) == [(100, 1), (7_100, 4)]
        report = await _run(audit)
        assert (report.skipped, len(report.failed), len(server.requests)) == (2, 4 + 6, 3)
        assert _failures_spent(audit) == [(100, 1)] * 9 + [(7_100, 4)] * 3


async def test_a_probes_tokens_are_kept_on_their_own_when_another_run_recorded_its_request_first(
    db_on_both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run collecting the same Message Batch records the probed request first (its
    own probe counted there): this run's failure of it, which would count this run's
    probe, is not kept, so the probe's tokens are kept on their own, a check naming no
    failed call, and ``memvee stats`` shows every probe billed. They were lost."""
    server.min_cache_tokens = 10**9  # the scripted usage as it is
    probe = refusal_body(input_tokens=7_000, output_tokens=3)
    server.set_responder(_probe_answered(probe, ScriptedResponse(body=refusal_body())))
    real = memvee._bulk.record.Recorder.record

    def another_run_first(self: Recorder, *args: Any) -> Any:
        if args[-1] is not None:  # the probed request: recorded first without this probe
            real(self, *args[:-1], None)
        return real(self, *args)

    with Audit(db_url=db_on_both_backends) as audit:
        before = _spent(audit)
        monkeypatch.setattr(memvee._bulk.record.Recorder, "record", another_run_first)
        await _run(audit)
        assert _failures_spent(audit) == [(100, 1)] * 6
        checks = [
            (e.failed_calls, e.input_tokens, e.output_tokens)
            for user in USERS
            for e in audit.store.events_of(user)
            if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert checks == [([], 7_000, 3)]
        assert _spent(audit) == (before[0] + 6 * 100 + 7_000, before[1] + 6 * 1 + 3)


@pytest.mark.parametrize(
    ("probed", "told"),
    [
        (ProbeResult("accepted", TokenUsage(7_000, 3)), "answered"),
        (
            ProbeResult("refused", TokenUsage(7_000, 3)),
            "failed: a probe of a refusal was refused too",
        ),
        (
            ProbeResult("failed", TokenUsage(7_000, 3), "HTTP 529 overloaded [sk-test-bulk]"),
            "failed: a probe of a refusal failed too: HTTP 529 overloaded [[redacted]]",
        ),
    ],
    ids=["answered", "refused", "failed"],
)
async def test_a_probe_kept_on_its_own_is_told_by_memvee_log_as_it_fared(
    db_on_both_backends: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    probed: ProbeResult,
    told: str,
) -> None:
    """Another run records the probed request first, so the probe is kept on its own:
    ``memvee log`` tells it answered, refused too, or failed and how (its error's first
    line, without the API key). A refused probe was told as answered, and a failed one
    lost its error."""
    server.set_responder(lambda r: ScriptedResponse(body=refusal_body()))
    real = memvee._bulk.record.Recorder.record

    async def scripted(self: ClaudeExtractor, batch: Any) -> ProbeResult:
        return probed

    def another_run_first(self: Recorder, *args: Any) -> Any:
        if args[-1] is not None:  # the probed request: recorded first without this probe
            real(self, *args[:-1], None)
        return real(self, *args)

    monkeypatch.setattr(ClaudeExtractor, "probe", scripted)
    monkeypatch.setattr(memvee._bulk.record.Recorder, "record", another_run_first)
    with Audit(db_url=db_on_both_backends) as audit:
        await _run(audit)
        lines = [
            describe(e)
            for user in USERS
            for e in audit.store.events_of(user)
            if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert lines == [f"version 'v2' harmless request's cost: 7003 tokens, {told}"]


@pytest.fixture
async def db_on_both_backends(db_url: str) -> AsyncIterator[str]:
    """The users of ``db`` (two users' messages processed, one waiting buffered), on
    SQLite and on PostgreSQL."""
    await _two_users_processed_one_message_buffered(db_url)
    yield db_url


FAILED = UserLog.ReextractionFailed


def _forgotten_before_the_refusals_are_probed(patch: pytest.MonkeyPatch, user_id: str) -> None:
    """Have ``user_id`` forgotten once a Message Batch's results are read, before the
    refusals among them are probed."""
    real = BulkReextraction._refused_all

    async def forget_then(self: BulkReextraction, *args: Any) -> Any:
        erase_user(self.store, Projector(ProjectionTables()), None, user_id)
        return await real(self, *args)

    patch.setattr(BulkReextraction, "_refused_all", forget_then)


async def test_the_models_refusals_are_probed_for_a_request_whose_messages_are_still_stored(
    db_on_both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model refuses every request, and ann, whose request is the first refused, is
    forgotten while the Message Batch ran: the harmless request goes in the place of
    bob's, is refused too, and bob's refusals blame none of his messages. The probe was
    skipped (ann's request had no messages left) and bob's refusals were taken as their
    own: split, and left out for good once alone."""
    server.set_responder(lambda r: ScriptedResponse(body=refusal_body()))
    with Audit(db_url=db_on_both_backends) as audit:
        _forgotten_before_the_refusals_are_probed(monkeypatch, "ann")
        report = await _run(audit)
        assert sum(r.custom_id is None for r in server.requests) == 1, "one probe"
        bobs = [e.error for e in audit.store.events_of("bob") if isinstance(e, FAILED)]
        assert len(bobs) == 3 and report.left_out == {}
        assert all("the model refuses every request" in why for why in bobs)


async def test_requests_refused_alike_are_probed_for_one_whose_messages_are_still_stored(
    db_on_both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request of a Message Batch refused for one reason, and bob, whose request is
    the first refused in the results (the stand-in gives them last first), forgotten
    while it ran: the harmless request goes in the place of ann's, is accepted, and ann's
    refusals are her requests' own. The probe was skipped and the reason taken as the
    account's, for everyone, unasked."""
    refused = ScriptedResponse(400, error_body("invalid_request_error", "blocked"))
    server.set_responder(_probe_answered(tool_use_body([]), refused))
    with Audit(db_url=db_on_both_backends) as audit:
        _forgotten_before_the_refusals_are_probed(monkeypatch, "bob")
        await _run(audit)
        assert sum(r.custom_id is None for r in server.requests) == 1, "one probe"
        anns = [e for e in audit.store.events_of("ann") if isinstance(e, FAILED)]
        assert len(anns) == 3 and all(e.repeats for e in anns)
        assert not any("refused every request" in e.error for e in anns)


@pytest.mark.parametrize("refusal", list(_REFUSED_AND_PROBED))
async def test_refused_requests_of_users_all_forgotten_before_the_probe_are_dropped_not_failed(
    db_on_both_backends: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
) -> None:
    """Every request of a Message Batch refused, and ann and bob both forgotten while it
    ran: no harmless request is sent (no messages are left to send in its place), and
    their requests are dropped as a forgotten user's are, not failed (nothing is left to
    retry: ``memvee reextract --batch-api`` exits 0). They were failed, told "retried
    later, no message blamed", which never happened."""
    refused, probe = _REFUSED_AND_PROBED[refusal]
    server.set_responder(_probe_answered(probe, refused))
    with Audit(db_url=db_on_both_backends) as audit:
        for user in USERS:
            _forgotten_before_the_refusals_are_probed(monkeypatch, user)
        report = await _run(audit)
        assert sum(r.custom_id is None for r in server.requests) == 0, "no probe"
        assert (report.submitted, report.failed, len(report.forgotten)) == (6, {}, 6)
        assert all("forgotten" in why for why in report.forgotten.values())


@pytest.mark.parametrize("refusal", list(_REFUSED_AND_PROBED))
async def test_a_users_failed_requests_while_a_rebuild_refolds_her_are_failed_not_forgotten(
    db_on_both_backends: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
) -> None:
    """A rebuild under way (or stopped midway) has not refolded ann's message rows yet:
    her log refuses to record the failures, but she was not forgotten. Her requests were
    dropped as a forgotten user's (exit 0, and ``--promote`` took the version as clean)."""
    refused, probe = _REFUSED_AND_PROBED[refusal]
    server.set_responder(_probe_answered(probe, refused))
    tables = ProjectionTables()
    real = BulkReextraction._refused_all

    async def rebuild_under_way(self: BulkReextraction, *args: Any) -> Any:
        with self.store.transaction() as connection:
            connection.execute(insert(tables.position).values(name="rebuilding", position=0))
            connection.execute(
                delete(tables.messages).where(tables.messages.c.log_id == str(user_log_id("ann")))
            )
        return await real(self, *args)

    monkeypatch.setattr(BulkReextraction, "_refused_all", rebuild_under_way)
    with Audit(db_url=db_on_both_backends) as audit:
        report = await _run(audit)
        assert audit.store.load("ann") is not None
        assert report.forgotten == {}
        assert len(report.failed) == report.submitted == 6


def test_the_command_line_exits_0_when_the_refused_requests_users_were_all_forgotten(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model refuses every request and every user is forgotten before the probe: the
    requests are listed as dropped and the run exits 0 (exit 1 would ask for a run again,
    which has no one to retry). It exited 1, their requests failed."""
    server.set_responder(lambda r: ScriptedResponse(body=refusal_body()))
    for user in USERS:
        _forgotten_before_the_refusals_are_probed(monkeypatch, user)
    args = ["reextract", "--all", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    result = CliRunner().invoke(app, [*args, "--as", "v2", "--db-url", db])
    assert result.exit_code == 0, result.output
    assert result.output.count("forgotten meanwhile, dropped:") == len(USERS), result.output


@pytest.fixture
async def both_backends(db_url: str) -> str:
    """Two users with two processed exchanges each, on SQLite and on PostgreSQL."""
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for user in USERS:
            for i in range(2):
                await memory.add_exchange(user, f"{user} likes thing {i}", "ok")
            await memory.flush(user)
    return db_url


def _plan_both_runs_before_either_submits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Have each of two runs at once wait, once planned, for the other to plan too."""
    planned = threading.Barrier(2, timeout=10)
    plan = BulkReextraction._plan

    def plan_then_meet(self: BulkReextraction, *args: Any) -> Any:
        found = plan(self, *args)
        planned.wait()
        return found

    monkeypatch.setattr(BulkReextraction, "_plan", plan_then_meet)


async def test_two_bulk_runs_at_once_submit_and_record_each_users_messages_once(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs plan before either submits: each user's plan is claimed by one of them,
    so the other submits nothing for it and no request is paid for twice."""
    _plan_both_runs_before_either_submits(monkeypatch)
    with Audit(db_url=both_backends) as a, Audit(db_url=both_backends) as b:
        first, second = await asyncio.gather(_run(a), _run(b))
        assert sum(len(batch["requests"]) for batch in server.batches) == 2
        assert first.submitted + second.submitted == 2
        assert sorted(first.claimed + second.claimed) == sorted(USERS)
        for user in USERS:
            assert [len(e.message_ids) for e in _reextracted(a, user)] == [4]
        with a.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == [], "claims released"


def _claimed(audit: Audit, user: str, owner: dict[str, Any], at: datetime) -> None:
    """Keep a claim on ``user``'s plan for v2 as another run makes it (``owner`` names
    its process, or is empty, as an older memvee's), renewed last ``at``."""
    held = {"user": user, "owner": "another run", "messages": [], "known": [], **owner}
    with audit.store.transaction() as connection:
        create_bulk_table(connection)
        row = {
            "local_id": memvee._bulk.claims._claim_id("v2", user),
            "knowledge_version": "v2",
            "api_batch_id": None,
            "requests": {"claim": held},
            "created_at": at,
        }
        connection.execute(BULK_BATCHES.insert(), row)


ANOTHER_HOST = {"host": "another host", "pid": 1, "started": "1"}


async def test_a_user_a_running_bulk_run_holds_is_passed_over_and_a_stopped_runs_taken_over(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """A claim renewed lately is a run under way: nothing is submitted for its user. One
    of another host unrenewed past ``CLAIM_TTL`` is a stopped run's, and the user is
    planned as usual; an older memvee's (which names no process, and renews less often)
    holds for ``OLD_CLAIM_TTL``."""
    now = datetime.now(UTC)
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", {}, now - 2 * memvee._bulk.claims.CLAIM_TTL)
        _claimed(audit, "bob", ANOTHER_HOST, now - 2 * memvee._bulk.claims.CLAIM_TTL)
        report = await _run(audit)
        assert report.claimed == ["ann"] and report.submitted == 1
        assert _reextracted(audit, "ann") == [] and len(_reextracted(audit, "bob")) == 1
        with audit.store.engine.connect() as connection:
            (left,) = connection.execute(select(BULK_BATCHES)).mappings().all()
        assert left["requests"]["claim"]["owner"] == "another run", "its claim is not ours"


def _ended_pid() -> int:
    """The pid of a process of this host that has ended."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


async def test_a_claim_whose_process_on_this_host_ended_is_taken_over_at_once(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """A run killed on this host leaves claims renewed a moment ago, but its process is
    gone (ann's), or its pid is another process's now (bob's: a start time other than the
    claim's): the next run takes both users over at once, not after ``CLAIM_TTL``."""
    now = datetime.now(UTC)
    here = memvee._bulk.claims._this_process()
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", {**here, "pid": _ended_pid()}, now)
        _claimed(audit, "bob", {**here, "started": "0"}, now)
        report = await _run(audit)
        assert report.claimed == [] and report.submitted == 2
        assert all(len(_reextracted(audit, user)) == 1 for user in USERS)


async def test_a_live_claim_of_another_machine_of_the_same_hostname_is_not_taken_over(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines may share a hostname and the initial pid namespace (cloned VMs,
    ``localhost``, CI runners): a claim is told this host's by the machine's boot id, so
    another machine's run renewed a moment ago holds its user, whatever pid it names."""
    with monkeypatch.context() as patch:
        patch.setattr(process_identity, "boot_id", lambda: "another machine's boot")
        there = memvee._bulk.claims._this_process()
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", {**there, "pid": _ended_pid()}, datetime.now(UTC))
        report = await _run(audit)
        assert report.claimed == ["ann"] and _reextracted(audit, "ann") == []


async def test_without_a_boot_id_a_claim_is_taken_over_only_once_unrenewed(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform tells no boot id, no claim can be told this machine's: one
    renewed a moment ago holds its user even when a process of its pid has ended here."""
    monkeypatch.setattr(process_identity, "boot_id", lambda: None)
    here = memvee._bulk.claims._this_process()
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", {**here, "pid": _ended_pid()}, datetime.now(UTC))
        report = await _run(audit)
        assert report.claimed == ["ann"] and _reextracted(audit, "ann") == []


@pytest.fixture
def stopped_pid() -> Iterator[int]:
    """The pid of a process of this host that is alive but stopped (SIGSTOP)."""
    stopped = subprocess.Popen(["sleep", "60"])
    stopped.send_signal(signal.SIGSTOP)
    yield stopped.pid
    stopped.kill()
    stopped.wait()


async def test_a_claim_of_a_stopped_run_on_this_host_holds_while_its_process_lives(
    both_backends: str, server: MessagesAPIServer, stopped_pid: int
) -> None:
    """A run of this host stopped (Ctrl-Z, SIGSTOP) or blocked renews nothing, yet its
    process is alive: its claim holds whatever its age, and the next run submits nothing
    for its user."""
    there = {"pid": stopped_pid, "started": memvee._bulk.claims._started(stopped_pid)}
    claim = {**memvee._bulk.claims._this_process(), **there}
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", claim, datetime.now(UTC) - 2 * memvee._bulk.claims.CLAIM_TTL)
        report = await _run(audit)
        assert report.claimed == ["ann"] and _reextracted(audit, "ann") == []


async def test_a_claim_left_by_an_ended_run_of_this_very_process_is_taken_over_at_once(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """A run whose claims could not be released leaves them behind in a process that
    goes on (an application's): its process alive holds them no longer than its run."""
    here = {**memvee._bulk.claims._this_process(), "owner": "an ended run of this process"}
    with Audit(db_url=both_backends) as audit:
        _claimed(audit, "ann", here, datetime.now(UTC))
        report = await _run(audit)
        assert report.claimed == [] and len(_reextracted(audit, "ann")) == 1


def _taken_over(store: EventStore, user: str) -> None:
    """Another run takes ``user``'s claim over, as one does once this run went unrenewed."""
    with store.transaction() as connection:
        connection.execute(
            BULK_BATCHES.update()
            .where(BULK_BATCHES.c.local_id == memvee._bulk.claims._claim_id("v2", user))
            .values(requests={"claim": {"user": user, "owner": "another run", **ANOTHER_HOST}})
        )


async def test_a_run_whose_claim_was_taken_over_while_stopped_submits_nothing_more_for_it(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped past ``CLAIM_TTL`` (another host's view) may find, once it goes on,
    that another run took a user over: it checks its claim as it keeps each batch, sends
    nothing for that user and reports it claimed; the other run's claim is left alone."""
    plan = BulkReextraction._plan

    def plan_then_lose_bob(self: BulkReextraction, *args: Any) -> Any:
        found = plan(self, *args)
        _taken_over(self.store, "bob")
        return found

    monkeypatch.setattr(BulkReextraction, "_plan", plan_then_lose_bob)
    with Audit(db_url=both_backends) as audit:
        report = await _run(audit)
        assert report.claimed == ["bob"] and report.submitted == 1
        assert sum(len(batch["requests"]) for batch in server.batches) == 1
        assert len(_reextracted(audit, "ann")) == 1
        assert _reextracted(audit, "bob") == []
        with audit.store.engine.connect() as connection:
            (left,) = connection.execute(select(BULK_BATCHES)).mappings().all()
        assert left["requests"]["claim"]["owner"] == "another run"


async def test_the_fallback_sends_nothing_for_a_user_another_run_took_over(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The users' Message Batch fails whole with server errors a second time, and another
    run took bob over meanwhile (the renewal of this run's claims noticed it): the Messages
    API fallback sends ann's messages at full price and none of bob's, now that run's."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=both_backends) as audit:
        await _run(audit)
        send = DirectFallback.send_directly

        async def lose_bob_then_send(self: DirectFallback, *args: Any) -> None:
            _taken_over(self.store, "bob")
            await asyncio.to_thread(self.claims.renew_claims)
            await send(self, *args)

        monkeypatch.setattr(DirectFallback, "send_directly", lose_bob_then_send)
        report = await _run(audit)
    assert report.direct == {"ann": 4}, report.direct
    sent = [said for call in _direct_calls_since(server, 0) for said in call]
    assert any(s.startswith("ann") for s in sent), sent
    assert not any(s.startswith("bob") for s in sent), sent


def _claim_stamps(store: EventStore) -> dict[str, datetime]:
    """When each of the v2 claims on :data:`USERS`' plans was last renewed, by its id."""
    ids = [memvee._bulk.claims._claim_id("v2", user) for user in USERS]
    with store.engine.connect() as connection:
        found = connection.execute(
            select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.created_at).where(
                BULK_BATCHES.c.local_id.in_(ids)
            )
        )
        return {local_id: stamp for local_id, stamp in found}


async def test_a_run_renews_its_claims_every_claim_renew_seconds_while_its_batch_runs(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run waits for its Message Batch, its claims on its users are renewed every
    ``CLAIM_RENEW`` seconds by the database's clock, so another host's run never takes a
    user over from a run under way, however long its batch takes."""
    monkeypatch.setattr(memvee._bulk.claims, "CLAIM_RENEW", 0.02)
    finish = BulkReextraction._finish
    seen: list[dict[str, datetime]] = []

    async def finish_once_renewed(self: BulkReextraction, *args: Any, **kw: Any) -> None:
        seen.append(_claim_stamps(self.store))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not _all_moved(seen[0], self.store):
            await asyncio.sleep(0.02)
        seen.append(_claim_stamps(self.store))
        await finish(self, *args, **kw)

    monkeypatch.setattr(BulkReextraction, "_finish", finish_once_renewed)
    with Audit(db_url=both_backends) as audit:
        report = await _run(audit)
    before, after = seen
    assert len(before) == len(USERS), before
    assert all(after[claim] > stamp for claim, stamp in before.items()), (before, after)
    assert report.recorded == 2


def _all_moved(stamps: dict[str, datetime], store: EventStore) -> bool:
    """Whether every claim of ``stamps`` was renewed since."""
    now = _claim_stamps(store)
    return all(now.get(claim, stamp) > stamp for claim, stamp in stamps.items())


def test_renewing_drops_the_claims_another_run_took_over(db: str) -> None:
    """Renewal notices a claim this run no longer holds: the run drops its user."""
    with Audit(db_url=db) as audit:
        run = _bare_run(audit)
        run._claim("ann")
        run._claim("bob")
        _taken_over(audit.store, "bob")
        run.claiming.renew_claims()
        assert run.claiming.claims == [memvee._bulk.claims._claim_id("v2", "ann")]
        assert run.claiming.lost == {memvee._bulk.claims._claim_id("v2", "bob")}
        run.claiming.release_claims()


async def test_collected_names_no_user_whose_requests_only_this_run_submitted(
    db: str, server: MessagesAPIServer
) -> None:
    """``BulkReport.collected`` tells the users whose requests kept by an earlier run
    this run recorded (a crashed run's, collected first): its own submissions are not."""
    with Audit(db_url=db) as audit:
        report = await _run(audit)
        assert report.submitted == report.recorded == 6
        assert report.collected == []


async def test_short_reads_are_counted_in_the_kept_batch_on_each_backend(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """The count of a kept batch's short reads lives in its kept requests (no column an
    older database lacks): on SQLite and PostgreSQL the third short read drops it."""
    server.set_batches_fault(_results_short(server, "empty"))
    with Audit(db_url=both_backends) as audit:
        for _ in range(2):
            with pytest.raises(ExtractionError, match="could not be read"):
                await _run(audit)
        with audit.store.engine.connect() as connection:
            (kept,) = connection.execute(select(BULK_BATCHES)).mappings().all()
        assert {r["short_reads"] for r in kept["requests"].values()} == {2}
        report = await _run(audit)
    assert (report.unread, report.submitted, report.recorded) == ([kept["api_batch_id"]], 2, 2)


async def test_a_heavy_message_split_off_before_a_refusal_of_any_size_is_not_left_out(
    db: str, server: MessagesAPIServer
) -> None:
    """Message Batches refused as too large whatever their size, while the Messages API
    takes requests: a message heavier than the fixed prompt, split off first, is refused
    alone, and so is a Message Batch of its request with a harmless message in its place,
    so it is not left out (it used to be: a Messages API probe was accepted) and the
    next run, once batches go through, records it."""
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("hal", "heavy " * (_request_bytes("x") // 3), "ok")
        await memory.flush("hal")
    server.max_batch_bytes = _request_bytes("x") // 2
    users = ["hal", *USERS]
    with Audit(db_url=db) as audit:
        with pytest.raises(ExtractionError, match="refuses requests of any size"):
            await _run(audit, users=users)
        failed = [
            e for e in audit.store.events_of("hal") if isinstance(e, UserLog.ReextractionFailed)
        ]
        assert failed == [], "no message blamed"
        server.max_batch_bytes = None
        report = await _run(audit, users=users)
        assert (report.failed, report.left_out) == ({}, {})
        assert len({m for e in _reextracted(audit, "hal") for m in e.message_ids}) == 2


async def _heavy_refused_alone(db: str, server: MessagesAPIServer) -> list[str]:
    """Give hal a message whose request alone is refused as too large by Message Batches,
    while a request with a harmless message in its place is taken: its probe is accepted.
    Returns the users to run."""
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_exchange("hal", "heavy " * (_request_bytes("x") // 3), "ok")
        await memory.flush("hal")
    server.max_batch_bytes = int(_request_bytes("x") * 1.5)
    return ["hal", *USERS]


def _probes(server: MessagesAPIServer) -> list[dict[str, Any]]:
    """The probe Message Batches the stand-in API was sent, each as it is now."""
    return [b for b in server.batches if b["requests"][0]["custom_id"].startswith("probe-")]


async def test_a_probe_batch_the_api_would_not_cancel_is_canceled_by_the_next_run(
    db: str, server: MessagesAPIServer
) -> None:
    """Every call canceling the probe Message Batch of a heavy message fails with a server
    error: the run reports the probe still running and keeps its id, and the next run
    cancels it, where it used to be left running (billed) with a warning."""
    users = await _heavy_refused_alone(db, server)

    def cancel_fails(request: RecordedRequest) -> ScriptedResponse | None:
        if request.method == "POST" and request.path.endswith("/cancel"):
            return ScriptedResponse(500, error_body("api_error", "boom"))
        return None

    server.set_batches_fault(cancel_fails)
    with Audit(db_url=db) as audit:
        first = await _run(audit, users=users)
        (probe,) = _probes(server)
        assert (first.probes, first.probes_running) == ([], [probe["id"]])
        assert probe["processing_status"] == "in_progress"
        server.set_batches_fault(None)
        second = await _run(audit, users=users)
    assert probe["id"] in second.probes and second.probes_running == []
    assert all(p["processing_status"] != "in_progress" for p in _probes(server))


@pytest.mark.parametrize("status", [401, 403])
async def test_a_probe_batch_whose_cancel_the_api_key_is_refused_for_is_canceled_by_the_next_run(
    db: str, server: MessagesAPIServer, status: int
) -> None:
    """The API refuses the key (or its permissions) for canceling the probe Message Batch
    of a heavy message: nothing was canceled, so the probe stays kept and reported
    running, and the next run cancels it, where it used to be forgotten as over."""
    users = await _heavy_refused_alone(db, server)

    def cancel_refused(request: RecordedRequest) -> ScriptedResponse | None:
        if request.method == "POST" and request.path.endswith("/cancel"):
            kind = "authentication_error" if status == 401 else "permission_error"
            return ScriptedResponse(status, error_body(kind, "refused"))
        return None

    server.set_batches_fault(cancel_refused)
    with Audit(db_url=db) as audit:
        first = await _run(audit, users=users)
        (probe,) = _probes(server)
        assert (first.probes, first.probes_running) == ([], [probe["id"]])
        server.set_batches_fault(None)
        second = await _run(audit, users=users)
    assert probe["id"] in second.probes and second.probes_running == []
    assert all(p["processing_status"] != "in_progress" for p in _probes(server))


async def test_a_probe_batch_neither_kept_nor_canceled_is_not_said_to_be_canceled_later(
    db: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database fails as the run keeps its probe Message Batch's id, and the API fails
    every call to cancel it: the run fails with a StorageError, and the warning says the
    probe runs to its end (no row names it), where it said the next run cancels it."""
    users = await _heavy_refused_alone(db, server)

    def refused(self: Probes, batch_id: str) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    def cancel_fails(request: RecordedRequest) -> ScriptedResponse | None:
        if request.method == "POST" and request.path.endswith("/cancel"):
            return ScriptedResponse(500, error_body("api_error", "boom"))
        return None

    monkeypatch.setattr(memvee._bulk.probes.Probes, "keep_probe", refused)
    server.set_batches_fault(cancel_fails)
    with (
        Audit(db_url=db) as audit,
        caplog.at_level(logging.WARNING, "memvee.bulk"),
        pytest.raises(StorageError, match="server closed the connection"),
    ):
        await _run(audit, users=users)
    (probe,) = _probes(server)
    assert f"probe Message Batch {probe['id']}" in caplog.text
    assert "could not be kept" in caplog.text and "runs to its end" in caplog.text
    assert "the next run cancels it" not in caplog.text, caplog.text


async def test_a_probe_batch_of_a_run_stopped_before_canceling_it_is_canceled_by_the_next_run(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped (its task canceled) while canceling its probe Message Batch keeps the
    probe's id, apart from every version's kept batches (a run of an older memvee took it
    for one and failed), and the next run cancels it, where it used to stay in progress."""
    users = await _heavy_refused_alone(db, server)

    async def stopped(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError

    with monkeypatch.context() as patch, Audit(db_url=db) as audit:
        patch.setattr(anthropic.resources.messages.batches.AsyncBatches, "cancel", stopped)
        with pytest.raises(asyncio.CancelledError):
            await _run(audit, users=users)
        with audit.store.engine.connect() as connection:
            kept = connection.execute(select(BULK_BATCHES.c.knowledge_version)).scalars().all()
    assert "v2" not in kept, "a probe row is no version's kept batch (an older run reads them)"
    (probe,) = _probes(server)
    with Audit(db_url=db) as audit:
        report = await _run(audit, users=users)
    assert probe["id"] in report.probes
    assert all(p["processing_status"] != "in_progress" for p in _probes(server))


async def test_a_probe_batch_canceled_through_a_wrong_base_url_path_stays_kept_for_a_later_run(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 on canceling a kept probe Message Batch through a base URL whose path is
    wrong says nothing of the probe (the list of batches is not found either): it stays
    kept, reported running, and the run with the right URL cancels it, where it used to
    be forgotten as over while it ran on at the API."""
    users = await _heavy_refused_alone(db, server)

    async def stopped(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError

    with monkeypatch.context() as patch, Audit(db_url=db) as audit:
        patch.setattr(anthropic.resources.messages.batches.AsyncBatches, "cancel", stopped)
        with pytest.raises(asyncio.CancelledError):
            await _run(audit, users=users)
    (probe,) = _probes(server)
    with monkeypatch.context() as patch, Audit(db_url=db) as audit:
        patch.setenv("ANTHROPIC_BASE_URL", f"{server.base_url}/wrong-path")
        with pytest.raises(ExtractorNotFoundError, match="HTTP 404"):
            await _run(audit, users=users)
    assert probe["processing_status"] == "in_progress"
    with Audit(db_url=db) as audit:
        report = await _run(audit, users=users)
    assert probe["id"] in report.probes
    assert all(p["processing_status"] != "in_progress" for p in _probes(server))


async def test_a_kept_batch_whose_id_was_never_kept_and_whose_results_are_always_cut_is_dropped(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before keeping its batch's id, and a gateway cuts every download of
    its results before the first line: the third run that cannot tell whether the batch
    is the kept one drops it and plans its requests again, where every run used to fail
    the same way until the API forgot the batch."""
    with Audit(db_url=db) as audit:
        await _killed_before_keeping_its_batch_id(audit, monkeypatch)
        server.set_batches_fault(_results_short(server, "cut"))
        for reads in (1, 2):
            with pytest.raises(ExtractionError, match=f"read short {reads} of 3 times"):
                await _run(audit)
        report = await _run(audit)
        assert report.unread == [server.batches[0]["id"]]
        assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
        with audit.store.engine.connect() as connection:
            assert connection.execute(select(BULK_BATCHES)).all() == []
        assert _failures(audit) == [], "a short read blames no message"


async def test_a_batch_read_short_in_an_outage_blames_not_the_one_request_read(
    db: str, server: MessagesAPIServer
) -> None:
    """Every request of a batch errored with a server error (an outage), and its results
    are read short, one line each time: the third read drops the batch, and the request
    read is reported failed but not blamed, where it used to be blamed as a batch of one
    request is (the others, unread, may have errored alike)."""
    server.set_batches_fault(_results_short(server, "one line"))
    with Audit(db_url=db) as audit:
        for _ in range(2):
            with pytest.raises(ExtractionError, match="could not be read"):
                await _run(audit)
        report = await _run(audit)
        assert report.unread == [server.batches[0]["id"]] and len(report.failed) == 1
        assert _failures(audit) == [], "no message blamed"


@pytest.mark.parametrize("dropped", ["lost", "read short"])
async def test_a_run_for_one_user_plans_again_the_other_users_of_a_batch_it_drops(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, dropped: str
) -> None:
    """A run for ann collects the batch an earlier run kept for ann and bob and drops it
    (the API no longer knows it, or its results were read short a third time): bob's
    requests in it are planned again by that run too, so his messages are submitted now,
    where they used to wait, unplanned, for a run naming bob."""
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
        (kept,) = server.batches
        if dropped == "lost":
            client = anthropic.Anthropic(max_retries=0)
            client.messages.batches.cancel(kept["id"])
            client.messages.batches.retrieve(kept["id"])  # the cancel ends it
            client.messages.batches.delete(kept["id"])
        else:
            server.set_batches_fault(_results_short(server, "empty"))
            for _ in range(2):
                with pytest.raises(ExtractionError, match="could not be read"):
                    await _run(audit, users=["ann"])
        report = await _run(audit, users=["ann"])
        assert kept["id"] in [*report.lost, *report.unread]
        assert (report.submitted, report.recorded, report.failed) == (6, 6, {})
        assert len({m for e in _reextracted(audit, "bob") for m in e.message_ids}) == 10


async def test_a_promoting_run_for_one_user_leaves_another_run_the_user_of_a_batch_it_drops(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run for ann with --promote drops a kept batch of ann and bob while another run
    holds bob: bob is that run's and was not named, so ann is promoted and the run ends
    well, where it used to report bob claimed and refuse, "not promoted for 1 of 1"."""
    with Audit(db_url=db) as audit:
        await _killed_once_submitted(audit, monkeypatch)
    (kept,) = server.batches
    client = anthropic.AsyncAnthropic(max_retries=0)
    await client.messages.batches.cancel(kept["id"])
    await client.messages.batches.retrieve(kept["id"])  # the cancel ends it
    await client.messages.batches.delete(kept["id"])
    with Audit(db_url=db) as audit:
        _claimed(audit, "bob", ANOTHER_HOST, datetime.now(UTC))
    args = ["reextract", "ann", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    args += ["--as", "v2", "--promote", "--db-url", db]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "claimed:" not in result.output
    with Audit(db_url=db) as audit:
        assert "v2" not in audit.unpromoted_versions("ann")


def _batch_requests_fail(request: RecordedRequest) -> ScriptedResponse:
    """A Message Batches outage: every request of a batch errors with a server error, while
    the Messages API answers."""
    if request.custom_id is not None:
        return ScriptedResponse(500, error_body("api_error", "batches down"))
    return default_answer(request)


def _covered(audit: Audit, user: str) -> set[str]:
    return {m for e in _reextracted(audit, user) for m in e.message_ids}


async def _users_saying_they_like_tea(
    db_url: str, count: int, messages: int | None = None
) -> list[str]:
    """``count`` users (u0, u1, ...) each with one message ("u0 likes tea"), or
    ``messages`` numbered ones ("u0 likes tea 0", ...), flushed into their log, none
    extracted: the users of the fallback's specifications."""
    users = [f"u{i}" for i in range(count)]
    said = [""] if messages is None else [f" {j}" for j in range(messages)]
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        for user in users:
            for number in said:
                await memory.add_message(user, "user", f"{user} likes tea{number}")
            await memory.flush(user)
    return users


def _direct_calls_since(server: MessagesAPIServer, calls: int) -> list[list[str]]:
    """The messages of each Messages API call (not a Message Batch's) the server got
    after its first ``calls`` requests."""
    return [
        [m["content"] for m in r.messages] for r in server.requests[calls:] if r.custom_id is None
    ]


def _said(audit: Audit, user: str) -> dict[str, str]:
    """The user's messages: their text by id."""
    return {
        e.message_id: e.content
        for e in audit.store.events_of(user)
        if isinstance(e, UserLog.MessageAdded)
    }


def _processed(audit: Audit, user: str) -> set[str]:
    """The user's messages but ann's last exchange, which waits buffered."""
    said = list(_said(audit, user))
    return set(said[:10])


def _pinned(audit: Audit) -> set[str]:
    """The messages the logs pin to a request of their own in v2."""
    return {
        m
        for user in USERS
        for m in audit.store.load(user).failed_reextraction("v2", audit.store.events_of(user))
    }


async def test_two_requests_failing_every_time_left_alone_in_the_last_batch_do_not_stall(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's and bob's last requests make the API fail every time: once they are all that
    is left, their Message Batch fails whole, as in an outage, run after run; it used to
    stay so for good. The second time it does, their messages go through the Messages API
    by the live re-extraction's rules: the innocent ones get in, and only the message
    that fails alone is left out."""
    server.set_responder(
        fault_when("likes thing 4", ScriptedResponse(500, error_body("api_error", "boom")))
    )
    left_out: dict[str, str] = {}
    with Audit(db_url=db) as audit:
        for _ in range(5):
            report = await _run(audit)
            left_out.update(report.left_out)
        for user in USERS:
            said = _said(audit, user)
            (poisoned,) = [m for m, text in said.items() if text == f"{user} likes thing 4"]
            assert _covered(audit, user) == _processed(audit, user) - {poisoned}
            assert poisoned in left_out and "boom" in left_out[poisoned]


@pytest.mark.parametrize("requests", ["several requests", "one request"])
async def test_a_message_batches_outage_extracts_through_the_messages_api_blaming_nothing(
    db: str, server: MessagesAPIServer, requests: str
) -> None:
    """Every Message Batch fails with server errors while the Messages API answers: the
    first time may pass, the second time the users' messages go through the Messages API
    at full price, and the memory keeps going. No message is blamed (a lone request used
    to be blamed twice, its messages then sent one a request)."""
    server.set_responder(_batch_requests_fail)
    limits = LIMITS if requests == "several requests" else BatchLimits(max_messages=50)
    with Audit(db_url=db) as audit:
        first = await _run(audit, users=["ann"], limits=limits)
        assert (first.recorded, first.direct) == (0, {})
        assert server.requests == [], "no full-price call at the first failure"
        second = await _run(audit, users=["ann"], limits=limits)
        assert second.direct == {"ann": 10}
        assert _covered(audit, "ann") == _processed(audit, "ann")
        assert _pinned(audit) == set() and second.left_out == {}


@pytest.mark.parametrize("requests", ["several requests", "one request"])
async def test_a_full_outage_blames_nothing_and_makes_two_calls_and_one_harmless_request_a_run(
    db: str, server: MessagesAPIServer, requests: str
) -> None:
    """The Message Batches and the Messages API both fail: the direct path stops at its
    two failures in a row and the harmless request that fails after them (the API is
    down), for every user of the run; nothing is blamed, and once the outage passes the
    next run sends the same bounded requests."""
    server.set_responder(lambda r: ScriptedResponse(500, error_body("api_error", "down")))
    limits = LIMITS if requests == "several requests" else BatchLimits(max_messages=50)
    with Audit(db_url=db) as audit:
        before = await _run(audit, limits=limits)
        assert server.requests == []
        for _ in range(3):
            calls = len(server.requests)
            down = await _run(audit, limits=limits)
            assert (down.recorded, down.left_out, len(down.direct)) == (0, {}, 1)
            sent = [[m["content"] for m in r.messages] for r in server.requests[calls:]]
            assert len(sent) == 3 and sent[-1] == ["Hello."], sent
            assert all("Hello." not in texts for texts in sent[:2])
        assert _pinned(audit) == set()
        server.set_responder(default_answer)
        again = await _run(audit, limits=limits)
    assert again.submitted == before.submitted and again.recorded == before.submitted
    sent_first = [len(r["params"]["messages"]) for r in server.batches[0]["requests"]]
    assert [len(r["params"]["messages"]) for r in server.batches[-1]["requests"]] == sent_first


async def test_a_full_outage_costs_one_failed_call_and_one_harmless_request_for_lone_messages(
    tmp_path: Path, server: MessagesAPIServer
) -> None:
    """Users with one message each: a user's live run stops on its lone message failing
    once, which tells nothing of the API by itself, so the fallback went on to the next
    user and a full outage cost a failed full-price call for every user of the run. A
    harmless request after the first such stop tells the outage: the fallback stops."""
    db = sqlite_url(tmp_path / "lone.db")
    users = await _users_saying_they_like_tea(db, 6)
    server.set_responder(lambda r: ScriptedResponse(500, error_body("api_error", "down")))
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        for _ in range(2):
            calls = len(server.requests)
            down = await _run(audit, users=users)
            sent = [[m["content"] for m in r.messages] for r in server.requests[calls:]]
            assert len(sent) == 2 and sent[-1] == ["Hello."], sent
            assert (down.recorded, down.left_out, len(down.direct)) == (0, {}, 1)
        for user in users:
            log = audit.store.load(user)
            assert log is not None
            assert log.failed_reextraction("v2", audit.store.events_of(user)) == set()


@pytest.mark.parametrize("messages", [1, 4])
async def test_a_refused_api_key_stops_the_full_price_fallback_at_the_first_user(
    tmp_path: Path, server: MessagesAPIServer, messages: int
) -> None:
    """Users whose Message Batches failed whole twice, the API refusing the key (401) for
    every Messages API call, the harmless request sent after the first user's failed calls
    too: a refused key refuses every user, so the fallback stops at the first user (its
    failed calls and that request), saying the key or its permissions are refused; it used
    to go on user after user, every call failing at full price. Users of one message (a
    lone failure) and of four (two failures in a row) alike, and run after run, each run
    at the user the fallback tried least lately."""
    db = sqlite_url(tmp_path / "refused.db")
    users = await _users_saying_they_like_tea(db, 6, messages)

    server.set_responder(
        _batches_down_and(
            lambda _: ScriptedResponse(401, error_body("authentication_error", "invalid x-api-key"))
        )
    )
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        for user in users[:2]:
            calls = len(server.requests)
            stopped = await _run(audit, users=users)
            sent = _direct_calls_since(server, calls)
            assert len(sent) == (2 if messages == 1 else 3) and sent[-1] == ["Hello."], sent
            assert (stopped.recorded, stopped.left_out, list(stopped.direct)) == (0, {}, [user])
            told = stopped.failed[f"direct:{user}"]
            assert "HTTP 401" in told
            assert "the API key or its permissions are refused for every request" in told


@pytest.mark.parametrize("messages", [1, 4])
async def test_a_model_not_found_stops_the_full_price_fallback_at_the_first_user_told_so(
    tmp_path: Path, server: MessagesAPIServer, messages: int
) -> None:
    """Users whose Message Batches failed whole twice, the Messages API answering every
    call 404 (a model retired), the harmless request sent after the first user's failed
    calls too: the model is not found for any user's request, so the fallback stops at the
    first user, its ``failed:`` line saying that the model or the base URL's path is not
    found for every request, never that the API is down. Users of one message (a lone
    failure, the fallback's own harmless request) and of four (two failures in a row, the
    live run's, whose check the user's log keeps as not found) alike."""
    db = sqlite_url(tmp_path / "missing.db")
    users = await _users_saying_they_like_tea(db, 6, messages)

    server.set_responder(
        _batches_down_and(
            lambda _: ScriptedResponse(404, error_body("not_found_error", "model: claude-retired"))
        )
    )
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        calls = len(server.requests)
        stopped = await _run(audit, users=users)
        sent = _direct_calls_since(server, calls)
        assert len(sent) == (2 if messages == 1 else 3) and sent[-1] == ["Hello."], sent
        assert (stopped.recorded, stopped.left_out, list(stopped.direct)) == (0, {}, ["u0"])
        told = stopped.failed["direct:u0"]
        assert "HTTP 404" in told and "model: claude-retired" in told
        assert "the model, or the base URL's path, is not found for every request" in told
        assert "down" not in told, told
        checks = [
            e for e in audit.store.events_of("u0") if isinstance(e, UserLog.ReextractionChecked)
        ]
        if messages > 1:
            (check,) = checks
            assert isinstance(check.verdict, ModelOrPathNotFound) and check.failed_calls
            assert "model: claude-retired" in check.verdict.error


async def test_a_model_refusing_every_request_stops_the_full_price_fallback_at_the_first_user(
    tmp_path: Path, server: MessagesAPIServer
) -> None:
    """Users whose Message Batches failed whole twice, the model refusing every Messages
    API call (HTTP 200, stop_reason "refusal"), its harmless message too: the first
    user's refusal is probed, refused too (EveryRequestRefusedError, the API's state), so
    the fallback stops there (that user's call and its probe), blaming no message; it
    used to go on to all six users (13 full-price calls), the refusal weighed as the
    user's own and the harmless request's refusal taken for an answer."""
    db = sqlite_url(tmp_path / "refusing.db")
    users = await _users_saying_they_like_tea(db, 6, 4)

    server.set_responder(_batches_down_and(lambda _: ScriptedResponse(body=refusal_body())))
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        calls = len(server.requests)
        stopped = await _run(audit, users=users)
        sent = _direct_calls_since(server, calls)
        assert sent == [[f"u0 likes tea {j}" for j in range(4)], ["Hello."]], sent
        assert (stopped.recorded, stopped.left_out, list(stopped.direct)) == (0, {}, ["u0"])
        assert "the model refuses every request" in stopped.failed["direct:u0"]
        for user in users:
            log = audit.store.load(user)
            assert log is not None
            assert log.failed_reextraction("v2", audit.store.events_of(user)) == set()


@pytest.mark.parametrize(
    ("answer", "busy"),
    [
        (ScriptedResponse(429, error_body("rate_limit_error", "slow down")), True),
        (
            ScriptedResponse(503, error_body("api_error", "busy"), headers={"retry-after": "1"}),
            True,
        ),
        (ScriptedResponse(400, error_body("invalid_request_error", "bad")), False),
    ],
    ids=["rate limited", "asked to wait", "failing of its own"],
)
async def test_a_harmless_request_after_a_lone_failure_ends_the_runs_fallback_when_the_api_is_busy(
    tmp_path: Path, server: MessagesAPIServer, answer: ScriptedResponse, busy: bool
) -> None:
    """Users with one message each, their Message Batches failing whole twice: the first
    user's lone message fails once through the Messages API, and the harmless request sent
    after it fails. Rate limited (429) or asked to wait, the API is busy: the fallback ends
    for the run there (one failed call and the harmless request, not two failed full-price
    calls for every user), the users not reached keep their Message Batches, and the next
    run, the API answering, extracts every user's message. Failing in a way that would
    repeat (a 400), it tells only of itself, and every user's fallback goes (one user's
    lone failing message used to hold back every user after them, run after run)."""
    db = sqlite_url(tmp_path / "busy.db")
    users = await _users_saying_they_like_tea(db, 3)

    def failing(request: RecordedRequest) -> ScriptedResponse:
        if request.custom_id is None and [m["content"] for m in request.messages] == ["Hello."]:
            return answer
        return ScriptedResponse(500, error_body("api_error", "boom"))

    server.set_responder(failing)
    reached = users[:1] if busy else users
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        report = await _run(audit, users=users)
        assert report.direct == dict.fromkeys(reached, 1)
        sent = [[m["content"] for m in r.messages] for r in server.requests]
        assert sent == [c for u in reached for c in ([f"{u} likes tea"], ["Hello."])], sent
        server.set_responder(default_answer)
        await _run(audit, users=users)
        for user in users:
            assert audit.knowledge_versions(user)["v2"] == 1, user


def _each_user_a_message_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submit each request as a Message Batch of its own (a backlog past one batch's bound)."""
    monkeypatch.setattr(memvee._bulk.run, "MAX_REQUESTS_PER_BATCH", 1)


@pytest.mark.parametrize("batches", ["one Message Batch", "a Message Batch a user"])
async def test_a_busy_api_stopping_every_fallback_at_its_first_user_reaches_every_user_in_turn(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, batches: str
) -> None:
    """Four users with one message each, their Message Batches failing whole run after run;
    each run's fallback sends one user's lone message, which fails, and the harmless request
    after it is rate limited, ending the fallback for the run. The next run starts with the
    users the fallback tried least lately, so four runs try the four users, each once (it
    used to start at the same first user every run: the users after it starved), each
    message is kept for a later run until it is recorded, and once the Messages API answers
    every message is recorded once."""
    a_batch_a_user = batches == "a Message Batch a user"
    if a_batch_a_user:
        _each_user_a_message_batch(monkeypatch)
    users = await _users_saying_they_like_tea(db_url, 4)

    def busy(request: RecordedRequest) -> ScriptedResponse:
        if request.custom_id is None and [m["content"] for m in request.messages] == ["Hello."]:
            return ScriptedResponse(429, error_body("rate_limit_error", "slow down"))
        return ScriptedResponse(500, error_body("api_error", "boom"))

    server.set_responder(busy)
    with Audit(db_url=db_url) as audit:
        await _run(audit, users=users)
        assert len(server.batches) == (len(users) if a_batch_a_user else 1), server.batches
        tried: list[str] = []
        for _ in users:
            calls = len(server.requests)
            report = await _run(audit, users=users)
            (user,) = report.direct
            sent = [[m["content"] for m in r.messages] for r in server.requests[calls:]]
            assert sent == [[f"{user} likes tea"], ["Hello."]], sent
            tried.append(user)
            kept = {u for users_of in _requests_left(audit.store).values() for u in users_of}
            assert kept == set(users), "every message waits in a kept Message Batch"
        assert sorted(tried) == users, tried
        server.set_responder(_batches_down_and(default_answer))
        done = await _run(audit, users=users)
        assert sorted(done.direct) == users
        for user in users:
            (said,) = _said(audit, user)
            assert [e.message_ids for e in _reextracted(audit, user)] == [[said]], user


async def test_runs_killed_while_their_fallbacks_first_call_waits_each_begin_at_another_user(
    db_url: str, server: MessagesAPIServer
) -> None:
    """Four users with one message each, their Message Batches failing whole run after run;
    each run is killed (cancelled, as a job's timeout, SIGTERM or Ctrl-C ends it) while its
    fallback's first full-price call waits for its answer. The next run's fallback begins
    at another user, so four runs begin with the four users, each once (the fallback noted
    a user tried only once it had sent every user of the batch, so a killed run noted none
    and every run began, billed, with the same user), and once the APIs answer every
    message is recorded once."""
    users = await _users_saying_they_like_tea(db_url, 4)
    loop = asyncio.get_running_loop()
    called = asyncio.Event()
    waiting: list[tuple[str, threading.Event]] = []

    def slow(request: RecordedRequest) -> ScriptedResponse:
        if request.custom_id is None:
            answer = threading.Event()
            waiting.append((request.messages[0]["content"], answer))
            loop.call_soon_threadsafe(called.set)
            answer.wait()
        return ScriptedResponse(500, error_body("api_error", "boom"))

    server.set_responder(slow)
    try:
        with Audit(db_url=db_url) as audit:
            await _run(audit, users=users)
            for _ in users:
                called.clear()
                run = asyncio.ensure_future(_run(audit, users=users))
                began = asyncio.ensure_future(called.wait())
                await asyncio.wait([run, began], return_when=asyncio.FIRST_COMPLETED)
                began.cancel()
                assert not run.done(), "the run's fallback made a full-price call"
                run.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await run
                waiting[-1][1].set()
            first = [content.removesuffix(" likes tea") for content, _ in waiting]
            assert sorted(first) == users, first
            server.set_responder(_batches_down_and(default_answer))
            await _run(audit, users=users)
            for user in users:
                (said,) = _said(audit, user)
                assert [e.message_ids for e in _reextracted(audit, user)] == [[said]], user
    finally:
        for _, answer in waiting:
            answer.set()


async def test_two_runs_at_once_send_a_users_messages_through_the_messages_api_once(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs meet after a Message Batches outage failed the users' batch once: each
    user goes through the Messages API in one run only, and each message is recorded
    once."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=both_backends) as audit:
        await _run(audit)
    _plan_both_runs_before_either_submits(monkeypatch)
    with Audit(db_url=both_backends) as a, Audit(db_url=both_backends) as b:
        first, second = await asyncio.gather(_run(a), _run(b))
        assert sorted([*first.direct, *second.direct]) == sorted(USERS)
        assert len(server.requests) == 2, "one full-price call a user"
        for user in USERS:
            assert [len(e.message_ids) for e in _reextracted(a, user)] == [4]


async def test_a_user_forgotten_while_a_failing_batch_ran_is_not_sent_directly(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten while the second failing Message Batch runs: his messages are
    dropped, not sent through the Messages API, and ann's go."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit)
        _forget_bob_before_his_answers(monkeypatch, afresh=False)
        report = await _run(audit)
        assert report.direct == {"ann": 10}
        assert len(server.requests) == 3, "ann's three requests, at full price"
        assert not any("bob" in m["content"] for r in server.requests for m in r.messages)
        assert _covered(audit, "ann") == _processed(audit, "ann")
        with audit.store.engine.connect() as connection:
            kept = connection.execute(select(BULK_BATCHES.c.requests)).scalars().all()
        assert all(r["user"] != "bob" for requests in kept for r in requests.values())


def test_the_command_line_tells_what_went_through_the_messages_api_and_can_refuse_it(
    db: str, server: MessagesAPIServer
) -> None:
    """A `direct:` line says how many messages went at full price; with
    `--no-direct-fallback` none does."""
    server.set_responder(_batch_requests_fail)
    args = ["reextract", "ann", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    args += ["--as", "v2", "--db-url", db]
    for _ in range(2):
        refused = CliRunner().invoke(app, [*args, "--no-direct-fallback"])
        assert refused.exit_code == 1, refused.output
    assert server.requests == [] and "direct:" not in refused.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "direct: ann: 10 messages" in result.output, result.output


async def test_a_batch_failing_whole_is_kept_in_the_shape_an_older_memvee_collects(
    db: str, server: MessagesAPIServer
) -> None:
    """The count of whole failures rides in the batch's own kept requests (no column, no
    row of its own): an older memvee collects the kept batch again as it collects any and
    plans its requests again (it blames nothing of a batch of several requests all failing
    so, and blames the request of a batch of one, as it always did)."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit)
        with audit.store.engine.connect() as connection:
            (row,) = connection.execute(select(BULK_BATCHES)).mappings().all()
    assert row["knowledge_version"] == "v2" and row["api_batch_id"] == server.batches[0]["id"]
    for request in row["requests"].values():
        assert {"user", "messages", "known", "at"} <= set(request)
        assert (request["failing"], request["failed_whole"]) == (1, True)


async def _say(db: str, user: str, text: str) -> None:
    """One more exchange of ``user``, processed: live traffic between two bulk runs."""
    async with Memory(config=MemoryConfig(db_url=db), extractor=RecordingExtractor()) as memory:
        await memory.add_exchange(user, text, "ok")
        await memory.flush(user)


async def test_a_message_batches_outage_reaches_the_messages_api_while_new_messages_come_in(
    db: str, server: MessagesAPIServer
) -> None:
    """bob says something new between two runs of a Message Batches outage: the request of
    his old messages and the new one still counts the batch that failed before (a message
    new since used to reset it to none, so the fallback was never reached while messages
    came in)."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["bob"])
        before = _processed(audit, "bob")
    await _say(db, "bob", "bob says something new")
    with Audit(db_url=db) as audit:
        second = await _run(audit, users=["bob"])
        assert "bob" in second.direct
        assert before <= _covered(audit, "bob")


async def test_a_user_new_to_a_failing_batch_holds_back_no_other_users_fallback(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's Message Batch failed whole once; the next run also plans bob, new to it, in
    the same batch, which fails whole again: ann's messages go through the Messages API
    (bob's request, failing for the first time, used to turn the fallback off for all)."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
        second = await _run(audit, users=["ann", "bob"])
        assert second.direct == {"ann": 10}
        assert _covered(audit, "ann") == _processed(audit, "ann")
        assert _covered(audit, "bob") == set()


async def test_a_request_split_as_too_large_keeps_its_failing_count_and_reaches_the_fallback(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann's two messages fit a Message Batch apart, not together: each run plans them in
    one request and splits it. Message Batches are down: the second run's parts carry the
    failing count of the first run's whole failure, so ann's messages go through the
    Messages API (the parts used to start at no failure, every run, and never reached it)."""
    long = "tea " * 5_000
    monkeypatch.setattr(memvee._bulk.run, "MAX_BATCH_BYTES", _request_bytes(long) + len(long) // 2)
    async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as memory:
        await memory.add_message("ann", "user", f"ann likes {long}")
        await memory.add_message("ann", "user", f"ann likes coffee {long}")
        await memory.flush("ann")
    server.set_responder(_batches_down_and(default_answer))
    with Audit(db_url=db_url) as audit:
        first = await _run(audit, users=["ann"])
        assert (first.submitted, first.direct) == (2, {}), "split in two, failing whole once"
        second = await _run(audit, users=["ann"])
        assert second.direct == {"ann": 2}
        assert _covered(audit, "ann") == _processed(audit, "ann")


def _poison(user: str) -> Callable[[RecordedRequest], ScriptedResponse]:
    """Every call, batched or not, with ``user``'s fourth thing fails with a server error."""
    return fault_when(
        f"{user} likes thing 4", ScriptedResponse(500, error_body("api_error", "boom"))
    )


def _batches_down_and(
    otherwise: Callable[[RecordedRequest], ScriptedResponse],
) -> Callable[[RecordedRequest], ScriptedResponse]:
    """A Message Batches outage; the Messages API answers as ``otherwise`` does."""

    def respond(request: RecordedRequest) -> ScriptedResponse:
        if request.custom_id is not None:
            return ScriptedResponse(500, error_body("api_error", "batches down"))
        return otherwise(request)

    return respond


async def _until_left_out(audit: Audit, user: str) -> str:
    """Run ``user``'s re-extraction until the message of theirs that makes every call fail
    is left out; returns it."""
    for _ in range(8):
        report = await _run(audit, users=[user])
        if report.left_out:
            (poisoned,) = report.left_out
            return poisoned
    raise AssertionError(f"{user}'s failing message was never left out")


async def test_a_message_left_out_costs_no_full_price_call_in_the_runs_after(
    db: str, server: MessagesAPIServer
) -> None:
    """bob's fourth thing makes every call fail; once it is left out, alone in its Message
    Batch that fails whole run after run, it is not sent through the Messages API again
    (it used to cost one full-price call a run, for good)."""
    server.set_responder(_poison("bob"))
    with Audit(db_url=db) as audit:
        poisoned = await _until_left_out(audit, "bob")
        assert _covered(audit, "bob") == _processed(audit, "bob") - {poisoned}
        calls = len(server.requests)
        for _ in range(3):
            report = await _run(audit, users=["bob"])
            assert report.direct == {}
    assert len(server.requests) == calls


async def test_a_user_whose_only_message_left_is_left_out_holds_back_no_user_after_them(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's one message not in the version is left out, and Message Batches go down:
    her request goes first, and bob's messages still go through the Messages API (her
    lone message was sent and stopped the fallback for every user after her, run after
    run)."""
    server.set_responder(_poison("ann"))
    with Audit(db_url=db) as audit:
        await _until_left_out(audit, "ann")
        server.set_responder(_batches_down_and(_poison("ann")))
        await _run(audit)
        second = await _run(audit)
        assert list(second.direct) == ["bob"]
        assert _covered(audit, "bob") == _processed(audit, "bob")


async def test_a_user_whose_lone_message_fails_a_direct_call_holds_back_no_user_after_them(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's one message not in the version makes every call fail, not yet left out, and
    Message Batches go down: her direct run stops at its lone failure, which tells nothing
    of the API, and bob's messages still go through the Messages API after her."""
    server.set_responder(_poison("ann"))
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
        server.set_responder(_batches_down_and(_poison("ann")))
        await _run(audit)
        second = await _run(audit)
        assert list(second.direct) == ["ann", "bob"] and "direct:ann" in second.failed
        assert _covered(audit, "bob") == _processed(audit, "bob")


async def test_the_harmless_request_after_a_lone_direct_failure_counts_its_tokens_in_the_users_log(
    db_url: str, server: MessagesAPIServer
) -> None:
    """Users with one message each, their Message Batches failing whole twice: u0's lone
    message fails its full-price call, and the harmless request sent after it is answered,
    billed. Its tokens are kept in u0's log (a check naming no failed call, so no evidence
    changes) and shown by ``memvee stats``; they were only logged."""
    db = db_url
    users = await _users_saying_they_like_tea(db, 2)
    server.min_cache_tokens = 10**9  # the scripted usage as it is

    def u0_fails(request: RecordedRequest) -> ScriptedResponse:
        said = [m["content"] for m in request.messages]
        if request.custom_id is not None or said == ["u0 likes tea"]:
            return ScriptedResponse(500, error_body("api_error", "boom"))
        if said == ["Hello."]:
            return ScriptedResponse(body=tool_use_body([], input_tokens=7_000, output_tokens=1))
        return default_answer(request)

    server.set_responder(u0_fails)
    with Audit(db_url=db) as audit:
        await _run(audit, users=users)
        before = _spent(audit)
        report = await _run(audit, users=users)
        assert report.direct == dict.fromkeys(users, 1) and "direct:u0" in report.failed
        checks = [
            e for e in audit.store.events_of("u0") if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert [(c.failed_calls, c.input_tokens, c.output_tokens) for c in checks] == [
            ([], 7_000, 1)
        ]
        (u1,) = [
            e for e in audit.store.events_of("u1") if isinstance(e, UserLog.KnowledgeReextracted)
        ]
        assert _spent(audit) == (
            before[0] + 7_000 + (u1.input_tokens or 0),
            before[1] + 1 + (u1.output_tokens or 0),
        )


def _u0s_lone_message_failing_its_direct_call(request: RecordedRequest) -> ScriptedResponse:
    """Message Batches failing whole, and u0's lone message failing its full-price call."""
    said = [m["content"] for m in request.messages]
    if request.custom_id is not None or said == ["u0 likes tea"]:
        return ScriptedResponse(500, error_body("api_error", "boom"))
    return default_answer(request)


async def test_the_fallbacks_harmless_request_is_judged_and_kept_as_the_live_paths_check_is(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's harmless request after u0's lone failed call meets an outage yet
    was billed: it is kept as ``memvee reextract``'s own check keeps one (one rule for
    both, :func:`memvee.audit.record_check`): an outage, its tokens, and no error (the
    flag says it). The fallback kept the error's text as well, by a copy of its own."""
    users = await _users_saying_they_like_tea(db_url, 2)
    server.set_responder(_u0s_lone_message_failing_its_direct_call)

    async def billed_outage(*args: Any) -> tuple[TokenUsage, Exception]:
        return TokenUsage(7_000, 1), ExtractionError("HTTP 503: the API is down")

    with Audit(db_url=db_url) as audit:
        await _run(audit, users=users)
        monkeypatch.setattr(memvee.audit, "harmless_request", billed_outage)
        report = await _run(audit, users=users)
        assert "direct:u0" in report.failed
        (check,) = [
            e for e in audit.store.events_of("u0") if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert (check.failed_calls, check.outage, check.error) == ([], True, None)
        assert (check.input_tokens, check.output_tokens) == (7_000, 1)


async def _u0s_check_after_a_harmless_request_failing(
    db_url: str, users: Any, monkeypatch: pytest.MonkeyPatch, failed: Exception
) -> Any:
    """Run the fallback twice, the second time with its billed harmless request after u0's
    lone failed call failing with ``failed``: the check kept in u0's log."""

    async def failing(*args: Any) -> tuple[TokenUsage, Exception]:
        return TokenUsage(7_000, 1), failed

    with Audit(db_url=db_url) as audit:
        await _run(audit, users=users)
        monkeypatch.setattr(memvee.audit, "harmless_request", failing)
        await _run(audit, users=users)
        (check,) = [
            e for e in audit.store.events_of("u0") if isinstance(e, UserLog.ReextractionChecked)
        ]
    return check


async def test_the_fallbacks_harmless_request_echoing_the_key_never_stores_or_logs_it(
    db_url: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fallback's billed harmless request after u0's lone failed call fails with an
    error echoing the API key (an HTTP header refused for the newline a key read from a
    file kept): the check kept in u0's log, and the line logged of it, tell the failure
    without the key (an application's own handlers carry no redacting filter)."""
    caplog.set_level(logging.INFO, logger="memvee")
    users = await _users_saying_they_like_tea(db_url, 2)
    server.set_responder(_u0s_lone_message_failing_its_direct_call)
    key = os.environ["ANTHROPIC_API_KEY"]

    failed = ValueError(f"Illegal header value b'{key}\\n'")
    check = await _u0s_check_after_a_harmless_request_failing(db_url, users, monkeypatch, failed)
    assert check.error is not None and "Illegal header value" in check.error
    assert key not in check.error, check.error
    told = [r.getMessage() for r in caplog.records if "harmless request" in r.getMessage()]
    assert any("Illegal header value" in line for line in told), told
    assert not [line for line in told if key in line], told


async def test_the_fallbacks_harmless_request_echoing_a_secret_of_the_environment_never_logs_it(
    db_url: str,
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fallback's billed harmless request after u0's lone failed call fails with an
    error echoing a credential the environment gives an SDK, not the extractor's client
    (Voyage AI's key): the line logged of it, as the check kept in u0's log, tells the
    failure without it. The line showed it (it redacted the client's secrets alone)."""
    caplog.set_level(logging.INFO, logger="memvee")
    secret = "pa-voyage-SECRETSECRETSECRET"
    monkeypatch.setenv("VOYAGE_API_KEY", secret)
    users = await _users_saying_they_like_tea(db_url, 2)
    server.set_responder(_u0s_lone_message_failing_its_direct_call)

    failed = ValueError(f"bad header {secret}")
    check = await _u0s_check_after_a_harmless_request_failing(db_url, users, monkeypatch, failed)
    told = [r.getMessage() for r in caplog.records if "harmless request" in r.getMessage()]
    assert any("bad header" in line for line in told), told
    assert not [text for text in (check.error, *told) if "SECRET" in (text or "")], told


async def test_the_fallbacks_harmless_request_answered_not_found_is_kept_as_not_found(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's billed harmless request after u0's lone failed call is answered 404
    (a model retired): u0's log keeps it as ``memvee reextract`` keeps its own check so
    answered, the model or the base URL's path not found, with its error, not as an
    outage (it was kept as one: ``outage`` and no error)."""
    users = await _users_saying_they_like_tea(db_url, 2)
    server.set_responder(_u0s_lone_message_failing_its_direct_call)
    failed = ExtractorNotFoundError("HTTP 404 (not_found_error: model: claude-retired)")
    check = await _u0s_check_after_a_harmless_request_failing(db_url, users, monkeypatch, failed)
    assert (check.failed_calls, check.not_found, check.outage) == ([], True, True)
    assert check.verdict == ModelOrPathNotFound(
        "ExtractorNotFoundError: HTTP 404 (not_found_error: model: claude-retired)"
    )
    assert describe(check) == (
        "version 'v2' harmless request's cost: 7001 tokens, failed: the model or the base "
        "URL's path not found: ExtractorNotFoundError: HTTP 404 (not_found_error: model: "
        "claude-retired)"
    )


@pytest.mark.parametrize(
    "found",
    [None, ExtractionError("HTTP 503: the API is down")],
    ids=["answered", "an outage"],
)
async def test_a_check_naming_no_failed_call_changes_no_verdict_of_memvee_reextract(
    db_url: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, found: Any
) -> None:
    """The fallback's billed harmless request after u0's lone failed call is kept as a
    check naming no failed call: the evidence ``memvee reextract`` weighs from u0's log
    (its calls, answered or failed, for the breaker; the messages failing alone, for
    quarantine; the caps of a split) reads the same with it as without it."""
    users = await _users_saying_they_like_tea(db_url, 2)
    server.set_responder(_u0s_lone_message_failing_its_direct_call)

    async def billed(*args: Any) -> tuple[TokenUsage, Exception | None]:
        return TokenUsage(7_000, 1), found

    with Audit(db_url=db_url) as audit:
        await _run(audit, users=users)
        monkeypatch.setattr(memvee.audit, "harmless_request", billed)
        await _run(audit, users=users)
        user_log = audit.store.load("u0")
        assert user_log is not None
        history = list(audit.store.events_of("u0"))
        without = [
            e
            for e in history
            if not (isinstance(e, UserLog.ReextractionChecked) and not e.failed_calls)
        ]
        assert len(without) == len(history) - 1, "one check naming no failed call"
        calls = user_log.reextraction_calls("v2", history)
        assert any(failed for _, failed in calls), "u0's failed calls are evidence"
        assert calls == user_log.reextraction_calls("v2", without)
        assert user_log.failed_reextraction("v2", history) == user_log.failed_reextraction(
            "v2", without
        )
        assert user_log.reextraction_caps("v2", history) == user_log.reextraction_caps(
            "v2", without
        )


async def test_a_second_run_at_once_keeps_the_count_of_a_failed_batch_the_first_run_holds(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run keeps ann's Message Batch, failed whole a second time, while it still holds
    her; a second run starting then leaves the batch to it (it used to plan it again,
    erasing the count), so the run after still sends her messages through the Messages
    API."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
    keep = KeptBatches.keep_failed_whole
    meanwhile: list[Any] = []

    def keep_then_run_another(self: KeptBatches, row: dict[str, Any]) -> None:
        keep(self, row)
        if not meanwhile:

            async def another() -> Any:
                with Audit(db_url=db) as other:
                    return await _run(other, users=["ann"])

            meanwhile.append(asyncio.run(another()))

    monkeypatch.setattr(KeptBatches, "keep_failed_whole", keep_then_run_another)
    server.set_responder(lambda r: ScriptedResponse(500, error_body("api_error", "all down")))
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
    monkeypatch.setattr(KeptBatches, "keep_failed_whole", keep)
    assert meanwhile[0].claimed == ["ann"]
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        after = await _run(audit, users=["ann"])
        assert after.direct == {"ann": 10}


async def test_forgetting_a_user_while_a_run_keeps_their_failed_batch_is_not_undone(
    both_backends: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten just after a run read the kept Message Batch that failed whole
    again, to count that failure: the forget waits for the count, then removes his
    requests (on PostgreSQL the count used to write them back, undoing the forget), and
    the count of ann's requests stands."""
    if not both_backends.startswith("postgresql"):
        pytest.skip("SQLite takes one writer at a time: the two never meet")
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=both_backends) as audit:
        await _run(audit)
    keep = KeptBatches.keep_failed_whole
    forgetting: list[threading.Thread] = []

    def keep_while_bob_is_forgotten(self: KeptBatches, row: dict[str, Any]) -> None:
        engine = self.store.engine
        keeping = threading.get_ident()

        def forget_bob_once_read(*args: Any) -> None:
            statement = args[2].lstrip()
            if forgetting or threading.get_ident() != keeping:
                return
            if not statement.startswith("SELECT") or BULK_BATCHES.name not in statement:
                return
            forget = threading.Thread(
                target=erase_user, args=(self.store, Projector(ProjectionTables()), None, "bob")
            )
            forgetting.append(forget)
            forget.start()
            while forget.is_alive() and not _waits_on_a_lock(engine):
                forget.join(0.01)

        sqlalchemy.event.listen(engine, "after_cursor_execute", forget_bob_once_read)
        try:
            keep(self, row)
        finally:
            sqlalchemy.event.remove(engine, "after_cursor_execute", forget_bob_once_read)

    monkeypatch.setattr(KeptBatches, "keep_failed_whole", keep_while_bob_is_forgotten)
    with Audit(db_url=both_backends) as audit:
        await _run(audit)
        forgetting[0].join()
        assert audit.store.load("bob") is None
        with audit.store.engine.connect() as connection:
            (kept,) = connection.execute(select(BULK_BATCHES.c.requests)).scalars().all()
    assert {r["user"] for r in kept.values()} == {"ann"}
    assert {r["failing"] for r in kept.values()} == {2}


def _waits_on_a_lock(engine: Any) -> bool:
    """Whether a PostgreSQL session of the database waits on a lock another holds."""
    with engine.connect() as connection:
        waiting = connection.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                f"AND query LIKE '%{BULK_BATCHES.name}%'"
            )
        ).scalar()
    return bool(waiting)


MEETING_DEADLINE = 60.0
"""Seconds a meeting waits for its second transaction to wait on a lock (or end) before
the test fails: a guard against a hang, not a timed assertion."""


@contextlib.contextmanager
def _meeting(engine: Any, then: threading.Thread, once: Callable[[str], bool]) -> Iterator[None]:
    """Start ``then`` as soon as this thread ran a statement ``once`` picks (whose locks
    its transaction now holds), and go on only once ``then`` waits on a lock of the bulk
    table (or ended): two transactions meet in that order, whatever the machine's speed."""
    this = threading.get_ident()

    def start_then(*args: Any) -> None:
        if then.ident is not None or threading.get_ident() != this or not once(args[2]):
            return
        then.start()
        started = time.monotonic()
        deadline = MEETING_DEADLINE
        while then.is_alive() and not _waits_on_a_lock(engine):
            if time.monotonic() - started > deadline:
                pytest.fail(
                    f"the second transaction neither waited nor ended in {MEETING_DEADLINE} s"
                )
            then.join(0.01)

    sqlalchemy.event.listen(engine, "after_cursor_execute", start_then)
    try:
        yield
    finally:
        sqlalchemy.event.remove(engine, "after_cursor_execute", start_then)


def _locks_bulk_rows(statement: str) -> bool:
    """Whether ``statement`` locks rows of the bulk table (read locked, or updated)."""
    return BULK_BATCHES.name in statement and (
        "FOR UPDATE" in statement or statement.lstrip().startswith("UPDATE")
    )


def _outcome(
    outcomes: dict[str, object], name: str, call: Callable[[], object]
) -> Callable[[], None]:
    """``call``, keeping what it returned or raised in ``outcomes[name]``."""

    def keep() -> None:
        try:
            outcomes[name] = call()
        except Exception as failed:
            outcomes[name] = failed

    return keep


async def test_forgetting_a_user_while_a_run_claims_them_waits_instead_of_deadlocking(
    both_backends: str,
) -> None:
    """A run claiming bob locks his kept rows that failed whole; a forget of bob at once
    locked every kept row in the table's own order, so with two such rows each could hold
    one the other waited for: PostgreSQL ended one of them with a deadlock. Both lock the
    rows in the order of their ids now: the forget waits, then both succeed."""
    if not both_backends.startswith("postgresql"):
        pytest.skip("SQLite takes one writer at a time: the two never meet")

    def request(user: str, message_id: str) -> dict[str, Any]:
        return {
            "user": user,
            "messages": [message_id],
            "known": [],
            "at": 1,
            "failing": 1,
            "failed_whole": True,
        }

    with Audit(db_url=both_backends) as audit:
        store = audit.store
        with store.transaction() as connection:
            create_bulk_table(connection)
            for local_id in ("b-row", "a-row"):  # stored first, listed last by id
                connection.execute(
                    BULK_BATCHES.insert().values(
                        local_id=local_id,
                        knowledge_version="v2",
                        api_batch_id=f"msgbatch_{local_id}",
                        requests={
                            "r1": request("bob", f"m-{local_id}"),
                            "r2": request("ann", f"n-{local_id}"),
                        },
                        created_at=datetime.now(UTC),
                    )
                )
        run = types.SimpleNamespace(
            failed_whole={"bob": {"a-row", "b-row"}}, failing={}, last_tried={}
        )
        outcomes: dict[str, object] = {}
        forgetting = threading.Thread(
            target=_outcome(
                outcomes,
                "forget",
                lambda: erase_user(store, Projector(ProjectionTables()), None, "bob"),
            )
        )
        with (
            _meeting(store.engine, forgetting, _locks_bulk_rows),
            store.transaction() as connection,
        ):
            BulkReextraction._take_failed_whole(run, connection, "bob")  # type: ignore[arg-type]
        forgetting.join()
        assert not isinstance(outcomes["forget"], Exception), outcomes["forget"]
        with store.engine.connect() as connection:
            kept = connection.execute(select(BULK_BATCHES.c.requests)).scalars().all()
    assert [sorted(r["user"] for r in requests.values()) for requests in kept] == [["ann"]] * 2


def _stale_claim_and_failed_rows_of_bob(store: EventStore) -> None:
    """bob's claim, left by a run that stopped long ago (taken over at once), and two kept
    rows that failed whole, holding requests of bob's and ann's: one listed before his
    claim row by id, one after, so that a lock order by id alone puts the claim between."""
    claim_id = memvee._bulk.claims._claim_id("v2", "bob")
    assert "0-row" < claim_id < "z-row"
    with store.transaction() as connection:
        create_bulk_table(connection)
        connection.execute(
            BULK_BATCHES.insert().values(
                local_id=claim_id,
                knowledge_version="v2",
                api_batch_id=None,
                requests={"claim": {"user": "bob", "owner": "a stopped run"}},
                created_at=datetime(2020, 1, 1, tzinfo=UTC),
            )
        )
        for local_id in ("0-row", "z-row"):
            requests = {
                f"{user}-{local_id}": {
                    "user": user,
                    "messages": [f"{user}-m-{local_id}"],
                    "known": [],
                    "at": 1,
                    "failing": 1,
                    "failed_whole": True,
                }
                for user in ("ann", "bob")
            }
            connection.execute(
                BULK_BATCHES.insert().values(
                    local_id=local_id,
                    knowledge_version="v2",
                    api_batch_id=f"msgbatch_{local_id}",
                    requests=requests,
                    created_at=datetime.now(UTC),
                )
            )


@contextlib.contextmanager
def _bob_claimed_and_failed(db_url: str) -> Iterator[tuple[EventStore, BulkReextraction]]:
    """On PostgreSQL (skipped on SQLite, which takes one writer at a time: two transactions
    never meet), bob's stale claim and his two kept rows that failed whole
    (:func:`_stale_claim_and_failed_rows_of_bob`), and a run into ``v2`` that read them."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite takes one writer at a time: the two never meet")
    with Audit(db_url=db_url) as audit:
        _stale_claim_and_failed_rows_of_bob(audit.store)
        run = _bare_run(audit)
        run.failed_whole = {"bob": {"0-row", "z-row"}}
        yield audit.store, run


def _locks_kept_rows(statement: str) -> bool:
    """Whether ``statement`` read locks kept rows by id (as a claim takes the failed ones)."""
    return _locks_bulk_rows(statement) and "ORDER BY" in statement


def _forget_by_id_alone(connection: Any, user_id: str) -> None:
    """Remove ``user_id``'s requests as an older memvee's forget did: every row holding
    one, the claim rows among them, read locked in the order of their ids alone."""
    holding = [
        local_id
        for local_id, requests in connection.execute(
            select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests)
        )
        if any(r.get("user") == user_id for r in requests.values())
    ]
    for local_id, requests in connection.execute(
        select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests)
        .where(BULK_BATCHES.c.local_id.in_(holding))
        .order_by(BULK_BATCHES.c.local_id)
        .with_for_update()
    ).all():
        kept = {k: r for k, r in requests.items() if r.get("user") != user_id}
        row = BULK_BATCHES.c.local_id == local_id
        if kept:
            connection.execute(BULK_BATCHES.update().where(row).values(requests=kept))
        else:
            connection.execute(BULK_BATCHES.delete().where(row))


async def test_an_older_memveys_forget_of_a_user_a_run_claims_waits_instead_of_deadlocking(
    both_backends: str,
) -> None:
    """An older memvee forgets bob, locking his rows by id alone (a kept row, then his
    claim row, then the other kept row), as a run takes over his claim from a stopped run.
    The claim locked his claim row, then his kept rows, in one transaction: each held a row
    the other waited for, and PostgreSQL ended one (the run stopped with a StorageError).
    The claim commits its claim row first now: the forget waits for it, then erases his
    requests, and the claim takes none (he is forgotten)."""
    with _bob_claimed_and_failed(both_backends) as (store, run):
        outcomes: dict[str, object] = {}

        def forget() -> None:
            with store.transaction() as connection:
                _forget_by_id_alone(connection, "bob")

        forgetting = threading.Thread(target=_outcome(outcomes, "forget", forget))
        with _meeting(store.engine, forgetting, _locks_bulk_rows):
            claimed = run._claim("bob")
        forgetting.join()
        assert outcomes["forget"] is None, outcomes["forget"]
        assert claimed == set()
        assert run.failing == {}
        assert _requests_left(store) == {"0-row": ["ann"], "z-row": ["ann"]}


def _requests_left(store: EventStore) -> dict[str, list[str]]:
    with store.engine.connect() as connection:
        rows = connection.execute(select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests))
        return {
            local_id: sorted(r["user"] for r in requests.values()) for local_id, requests in rows
        }


async def test_forgetting_a_user_while_a_run_takes_over_their_claim_waits_for_the_claim(
    both_backends: str,
) -> None:
    """A run took over bob's claim from a stopped run and holds his kept rows that failed
    whole as bob is forgotten: the forget removes the claim row, waits for the kept rows,
    then erases what the claim left of his (the forget used to lock his rows by id alone,
    one before his claim row: each waited for the other, and PostgreSQL ended one)."""
    with _bob_claimed_and_failed(both_backends) as (store, run):
        outcomes: dict[str, object] = {}
        forgetting = threading.Thread(
            target=_outcome(
                outcomes,
                "forget",
                lambda: erase_user(store, Projector(ProjectionTables()), None, "bob"),
            )
        )
        with _meeting(store.engine, forgetting, _locks_kept_rows):
            claimed = run._claim("bob")
        forgetting.join()
        assert not isinstance(outcomes["forget"], Exception), outcomes["forget"]
        assert claimed == set()
        assert run.failing == {"bob": {"bob-m-0-row": [(1, 1)], "bob-m-z-row": [(1, 1)]}}
        assert _requests_left(store) == {"0-row": ["ann"], "z-row": ["ann"]}


async def test_a_run_claiming_a_user_while_they_are_forgotten_waits_and_claims_them_after(
    both_backends: str,
) -> None:
    """bob is forgotten (his claim row and kept rows locked) as a run comes to take over
    his claim from a stopped run: the run waits for the forget, then finds nobody holds
    bob and nothing of his kept. (It used to wait on the claim row alone, find it gone
    and pass bob over as held by another run.)"""
    with _bob_claimed_and_failed(both_backends) as (store, run):
        outcomes: dict[str, object] = {}
        claiming = threading.Thread(target=_outcome(outcomes, "claim", lambda: run._claim("bob")))
        with _meeting(store.engine, claiming, _locks_bulk_rows):
            receipt = erase_user(store, Projector(ProjectionTables()), None, "bob")
        claiming.join()
        assert receipt.rows["bulk_requests"] == 3, "his claim and a request in each kept row"
        assert outcomes["claim"] == set(), outcomes["claim"]
        assert run.failing == {}
        claim_id = memvee._bulk.claims._claim_id("v2", "bob")
        assert _requests_left(store) == {"0-row": ["ann"], "z-row": ["ann"], claim_id: ["bob"]}
        run.claiming.release_claims()


async def test_a_run_sends_at_most_its_direct_limit_of_messages_through_the_messages_api(
    db: str, server: MessagesAPIServer
) -> None:
    """A Message Batches outage sends no whole backlog at full price at once: a run sends
    at most ``direct_limit`` messages through the Messages API, and keeps the rest for the
    next run, which sends them."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
        second = await _run(audit, users=["ann"], direct_limit=4)
        assert (second.direct, second.direct_held) == ({"ann": 4}, 6)
        assert len(_covered(audit, "ann")) == 4 and second.failed, "not done: not promotable"
        third = await _run(audit, users=["ann"], direct_limit=4)
        assert (third.direct, third.direct_held) == ({"ann": 4}, 2)
        assert len(_covered(audit, "ann")) == 8


def test_the_command_line_tells_how_many_messages_wait_past_the_direct_limit(
    db: str, server: MessagesAPIServer
) -> None:
    """`--direct-limit N` bounds a run's messages sent at full price; a `direct:` line
    says how many wait for the next run."""
    server.set_responder(_batch_requests_fail)
    args = ["reextract", "ann", "--extractor", "claude", "--batch-api", "--poll", "0.01"]
    args += ["--as", "v2", "--db-url", db, "--direct-limit", "3"]
    CliRunner().invoke(app, args)
    result = CliRunner().invoke(app, args)
    assert "direct: ann: 3 messages" in result.output, result.output
    assert "direct: 7 more messages wait for the next run" in result.output, result.output


def _bulk_args(db: str, *users: str) -> list[str]:
    """``memvee reextract --batch-api --promote`` of ``users`` (every user if none) into v2."""
    args = ["reextract", *(users or ["--all"]), "--extractor", "claude", "--batch-api"]
    return [*args, "--poll", "0.01", "--as", "v2", "--promote", "--db-url", db]


async def test_a_message_left_out_is_not_planned_again_and_is_told_left_out_each_run(
    db: str, server: MessagesAPIServer
) -> None:
    """Once bob's message that makes every call fail is left out of the version, the runs
    after send nothing for it: it used to be planned again as a Message Batch of its own,
    which failed whole run after run, a request billed and a failure reported each time.
    Each run still lists it left out, as ``reextract`` without ``--batch-api`` does."""
    server.set_responder(_poison("bob"))
    with Audit(db_url=db) as audit:
        poisoned = await _until_left_out(audit, "bob")
        batches = len(server.batches)
        for _ in range(3):
            report = await _run(audit, users=["bob"])
            assert (report.submitted, report.failed) == (0, {})
            assert list(report.left_out) == [poisoned] and "boom" in report.left_out[poisoned]
    assert len(server.batches) == batches


async def test_promoting_after_a_bulk_run_that_left_a_message_out_promotes_every_user(
    db: str, server: MessagesAPIServer
) -> None:
    """A version is complete for a user once each of their processed messages is in it or
    left out of it: bob's left-out message keeps neither him nor ann from being promoted
    (the run after it was left out failed its lone Message Batch, and no user was ever
    promoted again). The left-out message is listed, exit 1, as without ``--batch-api``."""
    server.set_responder(_poison("bob"))
    with Audit(db_url=db) as audit:
        await _until_left_out(audit, "bob")
    result = await asyncio.to_thread(CliRunner().invoke, app, _bulk_args(db))
    assert result.exit_code == 1, result.output
    assert result.output.count("left out:") == 1, result.output
    with Audit(db_url=db) as audit:
        for user in USERS:
            assert "v2" not in audit.knowledge_versions(user), f"{user}'s v2 was promoted"


def _kept_a_day_ago(audit: Audit) -> None:
    """Make every kept Message Batch look made, and any time stamped in its requests (as an
    earlier build stamped a whole failure's), 25 hours ago: a run of a daily job later."""
    then = datetime.now(UTC) - timedelta(hours=25)
    with audit.store.transaction() as connection:
        for local_id, requests in connection.execute(
            select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests)
        ).all():
            aged = {
                k: {**r, **({"failed_at": then.isoformat()} if "failed_at" in r else {})}
                for k, r in requests.items()
            }
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == local_id)
                .values(requests=aged, created_at=then)
            )


async def test_a_whole_failure_counts_however_long_ago_and_whatever_was_answered_since(
    both_backends: str, server: MessagesAPIServer
) -> None:
    """ann's Message Batch failed whole with server errors a day ago, and bob's was
    answered since: her next batch failing so is the second in a row, and her messages go
    at full price. Neither the age of a failure nor another batch answered tells that the
    API recovered for her requests; a count that lapsed so let a request failing every
    run of a daily job fail, billed, every run for good."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=both_backends) as audit:
        await _run(audit, users=["ann"])
        _kept_a_day_ago(audit)
        server.set_responder(default_answer)
        assert (await _run(audit, users=["bob"])).recorded > 0
        server.set_responder(_batch_requests_fail)
        report = await _run(audit, users=["ann"])
        assert report.direct == {"ann": 4}


async def test_a_message_failing_every_run_of_a_daily_job_is_left_out(
    db: str, server: MessagesAPIServer
) -> None:
    """bob's message that makes every call fail, alone in its Message Batch run after run,
    the runs a day apart and ann's new messages answered in each, goes through the
    fallback and is left out of the version within a few runs (it used to fail whole,
    billed, every run for good)."""
    with Audit(db_url=db) as audit:
        for day in range(6):
            await _say(db, "ann", f"ann says something new on day {day}")
            server.set_responder(default_answer)
            assert (await _run(audit, users=["ann"])).recorded > 0
            server.set_responder(_poison("bob"))
            report = await _run(audit, users=["bob"])
            if report.left_out:
                break
            _kept_a_day_ago(audit)
    assert len(report.left_out) == 1 and "boom" in next(iter(report.left_out.values()))


async def test_a_fresh_whole_failure_counts_though_another_users_batch_was_answered_since(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's Message Batch failed whole with server errors minutes ago and bob's was
    answered since: a batch answered while hers fail is no sign that hers failed for an
    outage, so her next batch failing so sends her messages at full price."""
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
        server.set_responder(default_answer)
        assert (await _run(audit, users=["bob"])).recorded > 0
        server.set_responder(_batch_requests_fail)
        report = await _run(audit, users=["ann"])
        assert "ann" in report.direct


async def test_a_whole_failure_before_the_version_was_promoted_sends_nothing_at_full_price(
    db: str, server: MessagesAPIServer
) -> None:
    """ann's request of something new failed whole with server errors, then v2 was
    promoted and she is re-extracted into v2 afresh: the failure counted against the
    version promoted, not the new one, so the new one's first batch failing so sends
    nothing at full price."""
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
    await _say(db, "ann", "ann says something new")
    server.set_responder(_batch_requests_fail)
    with Audit(db_url=db) as audit:
        await _run(audit, users=["ann"])
        audit.promote("ann", "v2")
    await _say(db, "ann", "ann says something else")
    with Audit(db_url=db) as audit:
        report = await _run(audit, users=["ann"])
        assert report.direct == {} and server.requests == []


def test_promoting_after_a_bulk_run_passes_over_a_user_forgotten_while_it_ran(
    db: str, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob is forgotten while the Message Batch runs: ``--promote`` says so, promotes ann
    and ends well (it used to stop at bob with ``no user 'bob'``, exit 2, and promote no
    user after him)."""
    _forget_bob_before_his_answers(monkeypatch, afresh=False)
    result = CliRunner().invoke(app, _bulk_args(db))
    assert result.exit_code == 0, result.output
    assert "forgotten meanwhile: bob was forgotten while the run ran" in result.output
    with Audit(db_url=db) as audit:
        assert "v2" not in audit.knowledge_versions("ann"), "ann's v2 was not promoted"


def test_a_messages_count_since_a_promotion_is_kept_beside_a_larger_one_from_before() -> None:
    """A message failed whole twice in requests planned before v2 was promoted (at log
    version 3) and once in one planned after: its count is the one after, 1, not 0 (the
    larger count from before used to hide the smaller one, and both went with it)."""
    promoted = object.__new__(UserLog.KnowledgeVersionPromoted)
    object.__setattr__(promoted, "originator_version", 3)
    object.__setattr__(promoted, "knowledge_version", "v2")
    failing = {"m": [(2, 1), (1, 5)]}
    assert _since_promoted(failing, [promoted], "v2") == {"m": 1}


def test_a_run_whose_index_of_kept_rows_cannot_be_made_goes_on_and_says_so_in_a_warning(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The table an older memvee made lacks the index of kept rows, and making it fails
    (here a table holds its name): the run goes on, reading claims through the version's
    index, and a warning names the version, the table and the error. The failure was
    swallowed without a word."""
    with store.transaction() as connection:
        create_bulk_table(connection)
        connection.execute(sqlalchemy.text("DROP INDEX memvee_bulk_batches_kept"))
        connection.execute(sqlalchemy.text("CREATE TABLE memvee_bulk_batches_kept (x)"))
    with caplog.at_level(logging.WARNING, "memvee.bulk"):
        KeptBatches(store, "v2").create_table()
    assert KeptBatches(store, "v2").unfinished() == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "'v2'" in warned[0] and "memvee_bulk_batches" in warned[0], warned
    assert "already a table named memvee_bulk_batches_kept" in warned[0], warned
