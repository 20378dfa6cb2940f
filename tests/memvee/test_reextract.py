"""Re-extraction: a user's processed history goes through another extractor into a new
knowledge version; the live knowledge stays until the version is promoted (an event)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import events.user_log
import memvee.cli
from events import (
    EventStore,
    ExtractionBatch,
    ExtractionResult,
    HarmlessRequests,
    TokenUsage,
    UserLog,
)
from events.user_log import check_knowledge_version
from memvee import (
    EveryRequestRefusedError,
    ExtractedFact,
    ExtractionError,
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    ExtractorOverloadedError,
    ExtractorRateLimitedError,
    InvalidExtractionError,
    InvalidInputError,
    Memory,
    MemoryConfig,
    NotFoundError,
    RejectedBatchError,
)
from memvee._event_lines import describe
from memvee.audit import (
    Answered,
    Audit,
    Busy,
    CheckVerdict,
    CredentialsRefused,
    FailedTellingNothing,
    HarmlessCheck,
    ModelOrPathNotFound,
    Outage,
    ReextractionReport,
)
from memvee.cli import app
from memvee.extractors import ClaudeExtractor, OfflineExtractor
from projections import verify
from tests.support.coverage import checked_coverage
from tests.support.embedders import ConceptEmbedder
from tests.support.extractors import RecordingExtractor, quarantine_stamps
from tests.support.messages_api_server import (
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    default_answer,
    error_body,
    fault_when,
    refusal_body,
)

SERVER_ERROR = ScriptedResponse(500, error_body("api_error", "Internal server error"))


async def _processed(make_memory: Any) -> Memory:
    memory: Memory = await make_memory()
    await memory.add_exchange("eve", "I live in Oslo", "nice")
    await memory.add_exchange("eve", "I work at Acme", "cool")
    await memory.process("eve")
    await memory.add_exchange("eve", "I love jazz", "great")
    return memory


async def test_reextract_builds_a_separate_version_and_promotion_replaces_live(
    make_memory: Any, db_url: str
) -> None:
    memory = await _processed(make_memory)
    live_before = [e.text for e in await memory.knowledge("eve")]
    with Audit(db_url=db_url) as audit:
        assert (await audit.reextract("eve", OfflineExtractor(), "offline-v2")).entries == 2
        assert audit.knowledge_versions("eve") == {"live": 2, "offline-v2": 2}
        assert [e.text for e in await memory.knowledge("eve")] == live_before
        diff = audit.compare("eve", "live", "offline-v2")
        assert diff.only_in_b == ["User lives in Oslo.", "User works at Acme."]
        assert diff.only_in_a == sorted(live_before) and diff.in_both == []
        audit.promote("eve", "offline-v2")
        assert audit.knowledge_versions("eve") == {"live": 2}
        kinds = [e.type for e in audit.log("eve", types=["KnowledgeVersionPromoted"])]
        assert kinds == ["KnowledgeVersionPromoted"]
        assert verify(audit.store) == []
        with pytest.raises(ValueError, match="no unpromoted knowledge version"):
            audit.promote("eve", "offline-v2")
    assert sorted(e.text for e in await memory.knowledge("eve")) == [
        "User lives in Oslo.",
        "User works at Acme.",
    ]
    assert await memory.process("eve") == 1
    assert len(await memory.knowledge("eve")) == 3


class _FindsNothing:
    name = "finds-nothing"

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        return ExtractionResult(facts=(), extractor=self.name)


async def test_a_version_that_found_no_entry_is_compared_before_it_is_promoted(
    make_memory: Any, db_url: str
) -> None:
    """Promoting it leaves no live entry: the preview matters most there (compare said
    the version did not exist while promote took it)."""
    memory = await _processed(make_memory)
    live = sorted(e.text for e in await memory.knowledge("eve"))
    with Audit(db_url=db_url) as audit:
        assert (await audit.reextract("eve", _FindsNothing(), "empty")).entries == 0
        assert audit.unpromoted_versions("eve") == ["empty"]
        diff = audit.compare("eve", "live", "empty")
        assert (diff.only_in_a, diff.only_in_b, diff.in_both) == (live, [], [])
        with pytest.raises(NotFoundError, match="no knowledge version 'other'"):
            audit.compare("eve", "live", "other")


async def test_compare_counts_copies_so_a_version_holding_each_entry_twice_differs(
    make_memory: Any, db_url: str
) -> None:
    """A version filled twice at once (each entry twice, as two runs at once stored it
    before their batches were checked) never compares equal to one holding each once:
    the surplus copies are listed, by the API, the CLI's table and its JSON."""
    memory = await _processed(make_memory)
    await memory.close()
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "once", embedder=False)
        added = audit.store.events_of("eve")
        ids = [e.message_id for e in added if isinstance(e, UserLog.MessageAdded)][:4]

        def record(user_log: UserLog) -> None:
            facts = [ExtractedFact("User lives in Oslo.", (ids[0],))]
            user_log.record_reextraction("twice", ids, facts, "offline")

        for _ in range(2):
            audit._decide("eve", record, ids)
        diff = audit.compare("eve", "once", "twice")
        assert diff.in_both == ["User lives in Oslo."] and diff.only_in_a == ["User works at Acme."]
        assert (diff.extra_in_a, diff.extra_in_b) == ([], ["User lives in Oslo."])
        assert audit.compare("eve", "twice", "once").extra_in_a == ["User lives in Oslo."]
    runner = CliRunner()
    table = runner.invoke(app, ["compare", "eve", "once", "twice", "--db-url", db_url])
    assert table.exit_code == 0 and "extra" in table.output
    assert table.output.splitlines()[0].count("┳") == 4, "two columns of extra copies"
    listed = runner.invoke(app, ["compare", "eve", "once", "twice", "--json", "--db-url", db_url])
    assert json.loads(listed.output)["extra_in_b"] == ["User lives in Oslo."]


async def test_explain_names_the_re_extraction_that_recorded_an_entry(
    make_memory: Any, db_url: str
) -> None:
    await _processed(make_memory)
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "offline-v2")
        (recorded,) = [
            e for e in audit.store.events_of("eve") if isinstance(e, UserLog.KnowledgeReextracted)
        ]
        entry_id = recorded.entries[0]["entry_id"]
        found = audit.explain("eve", entry_id)
    assert (found.task_id, found.trigger) == ("", "re-extraction into version 'offline-v2'")
    assert found.extractor == "offline" and len(found.batch) == 4
    explained = await asyncio.to_thread(
        CliRunner().invoke, app, ["explain", "eve", entry_id, "--db-url", db_url]
    )
    assert explained.exit_code == 0, explained.output
    assert "re-extraction into version 'offline-v2', version " in explained.output
    assert "task  (" not in explained.output


async def test_reextraction_gives_the_extractor_each_speakers_name(
    make_memory: Any, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await memory.add_message("team", "user", "I live in Oslo", name="Maria")
    await memory.add_message("team", "user", "I live in Bergen", name="Jon")
    await memory.process("team")
    recording = RecordingExtractor()
    with Audit(db_url=db_url) as audit:
        await audit.reextract("team", recording, "v2")
    assert [m.name for b in recording.batches for m in b.messages] == ["Maria", "Jon"]


async def test_messages_processed_while_a_version_was_extracted_return_to_the_buffer(
    make_memory: Any, db_url: str
) -> None:
    memory = await _processed(make_memory)  # "I love jazz" waits in the buffer
    with Audit(db_url=db_url) as audit:
        assert (await audit.reextract("eve", OfflineExtractor(), "v2")).entries == 2
    # The re-extraction ran for hours: the application went on processing meanwhile.
    await memory.process("eve")
    await memory.add_exchange("eve", "I have a cat", "cute")
    await memory.process("eve")
    later = [m.message_id for m in await memory.messages("eve")][4:]
    assert "User said: I love jazz" in [e.text for e in await memory.knowledge("eve")]
    runner = CliRunner()
    promoted = await asyncio.to_thread(
        runner.invoke, app, ["promote", "eve", "v2", "--db-url", db_url]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "eve: 4 processed messages that 'v2' does not cover went back to the buffer" in (
        " ".join(promoted.output.split())
    )
    assert [m.message_id for m in await memory.buffer("eve")] == later
    summary = await memory.user("eve")
    assert summary is not None and summary.buffered_count == 4
    assert await memory.process("eve") == 2
    assert sorted(e.text for e in await memory.knowledge("eve")) == [
        "User lives in Oslo.",  # v2's
        "User said: I have a cat",  # the application's extractor's, again
        "User said: I love jazz",
        "User works at Acme.",
    ], "nothing said while v2 was extracted is lost from the live knowledge"
    checked_coverage(memory, "eve")
    with Audit(db_url=db_url) as audit:
        assert verify(audit.store) == []
        state = audit.state("eve")
        assert [e.text for e in state.knowledge] == [e.text for e in await memory.knowledge("eve")]


async def test_a_batch_whose_live_knowledge_was_promoted_away_is_extracted_again(
    make_memory: Any, db_url: str
) -> None:
    """A batch is out when a version is promoted: its answer updates a live entry it was
    shown, one that is no longer current. Recorded as it is, that update would become a
    new entry beside the promoted one it contradicts; the batch is extracted again,
    shown the promoted entries, and its update lands on the promoted one."""
    extractor = RecordingExtractor()
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("eve", "I live in Oslo", "ok")
    await memory.process("eve")
    with Audit(db_url=db_url) as audit:
        assert (await audit.reextract("eve", OfflineExtractor(), "v2")).entries == 1
    extractor.answer = lambda batch: (
        ExtractedFact(
            "User lives in Bergen.",
            (batch.messages[0].message_id,),
            "update",
            batch.known[0].entry_id,
        ),
    )
    extractor.gate.clear()
    extractor.started.clear()
    await memory.add_exchange("eve", "I moved to Bergen", "ok")
    task = memory.process_async("eve")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    with Audit(db_url=db_url) as audit:
        assert audit.promote("eve", "v2") == []
    (promoted,) = await memory.knowledge("eve")
    extractor.gate.set()
    assert await task.wait() == 1

    shown = [[k.entry_id for k in batch.known] for batch in extractor.batches[1:]]
    assert len(shown) == 2 and shown[1] == [promoted.entry_id] != shown[0]
    (bergen,) = await memory.knowledge("eve")
    assert bergen.text == "User lives in Bergen."
    history = {e.entry_id: e for e in await memory.knowledge("eve", history=True)}
    assert history[promoted.entry_id].superseded_by == bergen.entry_id
    checked_coverage(memory, "eve")
    with Audit(db_url=db_url) as audit:
        assert verify(audit.store) == []


class _CountedExtractor(OfflineExtractor):
    """The offline rules, counting the batches sent: a refused run must send none."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    async def extract(self, batch: Any) -> Any:
        self.batches += 1
        return await super().extract(batch)


@pytest.mark.parametrize(
    ("version", "options", "message"),
    [
        ("live", {}, "'live' cannot name a new knowledge version"),
        ("  ", {}, "'  ' cannot name a new knowledge version"),
        (None, {}, "named by a str, not NoneType"),
        ("v\ud800", {}, "contains a lone surrogate"),
        ("v" * 65, {}, "at most 64 characters, not 65"),
        ("live ", {}, "the knowledge version must not begin or end with spaces"),
        ("v\tx\x1b[31m", {}, "must not contain control characters \\(U\\+0009 at index 1\\)"),
        ("v\u200b2", {}, "must not contain characters that show nothing"),
        ("cafe\u0301", {}, "must be in Unicode NFC"),
        ("\u0301", {}, "must not be empty, nor only spaces, control or zero-width"),
        ("v2", {"batch_size": 0}, "batch_size must be 1 or more"),
        ("v2", {"max_batch_tokens": 0}, "max_batch_tokens must be 1 or more"),
    ],
)
async def test_a_bad_version_name_or_batch_size_is_refused_before_any_extraction(
    make_memory: Any, db_url: str, version: Any, options: dict[str, Any], message: str
) -> None:
    await _processed(make_memory)
    extractor = _CountedExtractor()
    with Audit(db_url=db_url) as audit:
        with pytest.raises(InvalidInputError, match=message):
            await audit.reextract("eve", extractor, version, **options)
        assert audit.knowledge_versions("eve") == {"live": 2}
    assert extractor.batches == 0


class _PlainExtract:
    """An extractor whose ``extract`` is a plain ``def`` answering at once: never awaitable."""

    name = "plain"

    def __init__(self) -> None:
        self.calls = 0

    def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.calls += 1  # a call paid for whose answer cannot be used
        return ExtractionResult(facts=(), extractor=self.name)


async def test_a_plain_extract_stops_the_run_saying_so_and_leaves_no_message_out(
    make_memory: Any, db_url: str
) -> None:
    """Its answer could not be awaited: every call was recorded as failing alone and every
    message was left out of the version. It is the extractor's code, no message's: the
    run stops at the first call, recording nothing, and a fixed extractor covers all."""
    await _processed(make_memory)
    extractor, report = _PlainExtract(), ReextractionReport()
    with Audit(db_url=db_url) as audit:
        events_before = len(audit.store.events_of("eve"))
        with pytest.raises(ExtractionError, match=r"gave ExtractionResult, not an awaitable"):
            await audit.reextract("eve", extractor, "v2", embedder=False, report=report)
        assert (extractor.calls, report) == (1, ReextractionReport())
        assert len(audit.store.events_of("eve")) == events_before
        fixed = await audit.reextract("eve", OfflineExtractor(), "v2", embedder=False)
        assert fixed == ReextractionReport(entries=2)


async def test_a_version_an_older_memvee_named_like_live_is_read_and_goes_on_by_that_name(
    make_memory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only new names are held to the rules of a new user id: a version an older memvee
    stored as 'live ' is listed, compared, exported and imported, re-extracted into again
    and promoted by its stored name."""
    await (await _processed(make_memory)).close()
    with Audit(db_url=db_url) as audit:
        with monkeypatch.context() as older:  # the check as it was
            older.setattr(events.user_log, "check_new_knowledge_version", check_knowledge_version)
            await audit.reextract("eve", OfflineExtractor(), "live ")
        assert audit.knowledge_versions("eve") == {"live": 2, "live ": 2}
        assert audit.compare("eve", "live", "live ").only_in_b == [
            "User lives in Oslo.",
            "User works at Acme.",
        ]
        assert (await audit.reextract("eve", OfflineExtractor(), "live ")).entries == 0
        with pytest.raises(InvalidInputError, match="must not begin or end with spaces"):
            await audit.reextract("eve", OfflineExtractor(), " live")
        with Audit(db_path=str(tmp_path / "copy.db")) as copy:
            assert copy.import_lines(audit.export("eve")) == {
                "eve": audit.store.last_version("eve")
            }
        audit.promote("eve", "live ")
        assert audit.knowledge_versions("eve") == {"live": 2}


async def test_the_cli_reextracts_compares_and_promotes(make_memory: Any, db_url: str) -> None:
    memory = await _processed(make_memory)
    await memory.close()
    runner = CliRunner()
    # The command runs its own event loop: call it from a thread, as from a shell.
    done = await asyncio.to_thread(
        runner.invoke, app, ["reextract", "--all", "--as", "v2", "--db-url", db_url]
    )
    assert done.exit_code == 0, done.output
    assert "eve: 2 entries extracted; 2 current in version 'v2'" in done.output
    compared = runner.invoke(app, ["compare", "eve", "live", "v2", "--json", "--db-url", db_url])
    assert compared.exit_code == 0 and "User lives in Oslo." in compared.output
    table = runner.invoke(app, ["compare", "eve", "live", "v2", "--limit", "1", "--db-url", db_url])
    assert table.exit_code == 0 and "1 more rows: --json lists all" in table.output
    promoted = runner.invoke(app, ["promote", "eve", "v2", "--db-url", db_url])
    assert promoted.exit_code == 0
    again = runner.invoke(app, ["promote", "eve", "v2", "--db-url", db_url])
    assert again.exit_code == 2
    neither = runner.invoke(app, ["reextract", "--db-url", db_url])
    assert neither.exit_code == 2


async def test_a_second_reextraction_says_what_the_version_holds_and_the_cli_lists_it(
    make_memory: Any, db_url: str
) -> None:
    """Run again on a version that is up to date, it said "0 entries in version"."""
    memory = await _processed(make_memory)
    await memory.close()
    runner = CliRunner()
    args = ["reextract", "eve", "--as", "v2", "--db-url", db_url]
    await asyncio.to_thread(runner.invoke, app, args)
    again = await asyncio.to_thread(runner.invoke, app, args)
    assert again.exit_code == 0, again.output
    assert "eve: 0 entries extracted; 2 current in version 'v2'" in again.output
    listed = runner.invoke(
        app, ["knowledge", "eve", "--version", "v2", "--json", "--db-url", db_url]
    )
    texts = sorted(e["text"] for e in json.loads(listed.output))
    assert texts == ["User lives in Oslo.", "User works at Acme."]
    unknown = runner.invoke(app, ["knowledge", "eve", "--version", "v9", "--db-url", db_url])
    assert unknown.exit_code == 2 and "no knowledge version 'v9'" in unknown.output


async def test_the_cli_passes_over_a_user_with_nothing_processed_and_goes_on(
    make_memory: Any, db_url: str
) -> None:
    """`reextract --all --promote` used to stop (exit 2) at the first user with nothing
    processed, leaving the users after it; such a user has no version to promote."""
    memory = await _processed(make_memory)
    await memory.add_exchange("adam", "I live in Rome", "ok")  # never processed
    await memory.close()
    runner = CliRunner()
    args = ["reextract", "--all", "--promote", "--as", "v2", "--db-url", db_url]
    done = await asyncio.to_thread(runner.invoke, app, args)
    assert done.exit_code == 0, done.output
    assert "adam: nothing processed to re-extract; no 'v2'" in done.output
    assert "eve: 2 entries extracted; 'v2' promoted: 2 current in the live knowledge" in (
        done.output
    )
    with Audit(db_url=db_url) as audit:
        assert audit.unpromoted_versions("adam") == audit.unpromoted_versions("eve") == []
        assert audit.knowledge_versions("eve") == {"live": 2}
        assert audit.knowledge_versions("adam") == {}
    single = await asyncio.to_thread(
        runner.invoke, app, ["reextract", "adam", "--as", "v3", "--db-url", db_url]
    )
    assert single.exit_code == 0 and "no 'v3'" in single.output


async def test_a_reextracted_version_keeps_the_lifecycle_of_its_own_entries(
    make_memory: Any, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await memory.add_exchange("kim", "I live in Oslo", "nice")
    await memory.add_exchange("kim", "I moved to Bergen", "exciting")
    await memory.process("kim")
    with Audit(db_url=db_url) as audit:
        await audit.reextract("kim", OfflineExtractor(), "v2", batch_size=2)
        audit.promote("kim", "v2")
        assert verify(audit.store) == []
    assert [e.text for e in await memory.knowledge("kim")] == ["User lives in Bergen."]
    history = {e.text: e for e in await memory.knowledge("kim", history=True)}
    assert history["User lives in Oslo."].superseded_by == history["User lives in Bergen."].entry_id


async def test_quarantined_and_buffered_messages_are_left_to_normal_processing(
    make_memory: Any, extractor: Any, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await quarantine_stamps(memory, extractor, "eve")
    await memory.add_exchange("eve", "I love jazz", "great")
    quarantined = {m.message_id for m in await memory.quarantined("eve")}
    buffered = {m.message_id for m in await memory.buffer("eve")}
    assert len(quarantined) == 1 and len(buffered) == 2
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "v2", batch_size=1)
        covered = _reextracted(audit, "eve")
    assert len(covered) == 3 and not covered & (quarantined | buffered)


def _reextracted(audit: Audit, user: str) -> set[str]:
    """The messages the user's re-extractions covered, read off the log."""
    return {
        m
        for line in audit.log(user, types=["KnowledgeReextracted"])
        for m in line.payload["message_ids"]
    }


class _ActingOnFirstCall(OfflineExtractor):
    """Extracts offline, but the application acts on the user while its first batch is out
    (a re-extraction runs for minutes, or hours through the Batch API)."""

    def __init__(self, memory: Memory, user: str) -> None:
        super().__init__()
        self._memory, self._user, self._done = memory, user, False

    async def act(self, memory: Memory, user: str) -> None:
        """What the application does meanwhile."""

    async def extract(self, batch: Any) -> Any:
        if not self._done:
            self._done = True
            await self.act(self._memory, self._user)
        return await super().extract(batch)


class _WritingOnFirstCall(_ActingOnFirstCall):
    """The application writes an exchange while the first batch is out."""

    async def act(self, memory: Memory, user: str) -> None:
        await memory.add_exchange(user, "I have a cat", "cute")


async def test_messages_written_while_a_reextraction_runs_are_left_to_normal_processing(
    make_memory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = await _processed(make_memory)
    reading = EventStore.events_in_pages
    monkeypatch.setattr(  # pages of two events: the walk reads most of the log later
        EventStore,
        "events_in_pages",
        lambda self, user, page_size=2, **bounds: reading(self, user, 2, **bounds),
    )
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", _WritingOnFirstCall(memory, "eve"), "v2", batch_size=1)
        covered = _reextracted(audit, "eve")
    buffered = {m.message_id for m in await memory.buffer("eve")}
    assert len(covered) == 4 and len(buffered) == 4 and not covered & buffered


class _ForgettingOnFirstCall(_ActingOnFirstCall):
    """The user is forgotten, and writes again, while the first batch is out."""

    async def act(self, memory: Memory, user: str) -> None:
        await memory.forget(user)
        await memory.add_exchange(user, "I just moved to Rome", "welcome")


async def test_what_a_forgotten_users_messages_gave_is_not_recorded_in_their_new_log(
    make_memory: Any, db_url: str
) -> None:
    memory = await _processed(make_memory)
    with Audit(db_url=db_url) as audit:
        extractor = _ForgettingOnFirstCall(memory, "eve")
        with pytest.raises(NotFoundError, match="forgotten"):
            await audit.reextract("eve", extractor, "v2")
        assert audit.knowledge_versions("eve") == {}
        assert verify(audit.store) == []
    texts = [e.text for e in await memory.knowledge("eve", history=True)]
    assert not any("Oslo" in text or "Acme" in text for text in texts)


class _AnswersOnceBothAsked(OfflineExtractor):
    """The offline rules, but the first two calls are answered only once both were made:
    two runs extracting the same batch at once."""

    def __init__(self) -> None:
        self.asked = 0
        self.both = asyncio.Event()

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.asked += 1
        if self.asked == 2:
            self.both.set()
        await self.both.wait()
        return await super().extract(batch)


async def test_two_reextractions_of_one_user_into_one_version_at_once_record_each_fact_once(
    make_memory: Any, db_url: str
) -> None:
    """Both runs planned the same batch; the one recording second records nothing for it
    and says so in its report, and the version holds each entry once."""
    await _processed(make_memory)
    extractor = _AnswersOnceBothAsked()
    with Audit(db_url=db_url) as a, Audit(db_url=db_url) as b:
        first, second = await asyncio.gather(
            a.reextract("eve", extractor, "v2"), b.reextract("eve", extractor, "v2")
        )
        reports = sorted([first, second], key=lambda r: r.entries)
        assert [r.entries for r in reports] == [0, 2]
        assert len(reports[0].recorded_elsewhere) == 4 and reports[1].recorded_elsewhere == []
        texts = [e.text for e in a.knowledge("eve", version="v2")]
        assert sorted(texts) == ["User lives in Oslo.", "User works at Acme."]
        assert verify(a.store) == []


async def test_a_reextraction_loads_and_plans_its_user_off_the_event_loop(
    make_memory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a long log and weighing its history takes a while: every step of the plan
    runs on a worker thread, so the application's other coroutines go on meanwhile."""
    await _processed(make_memory)
    threads: dict[str, threading.Thread] = {}
    steps = (
        "not_covered_by",
        "reextraction_calls",
        "failed_reextraction",
        "reextraction_caps",
        "check_version_name",
    )
    for name in steps:
        step = getattr(UserLog, name)

        def noted(self: UserLog, *args: Any, _name: str = name, _step: Any = step) -> Any:
            threads[_name] = threading.current_thread()
            return _step(self, *args)

        monkeypatch.setattr(UserLog, name, noted)
    load, pages = EventStore.load, EventStore.events_in_pages

    def loaded(self: EventStore, user_id: str) -> Any:
        threads.setdefault("load", threading.current_thread())
        return load(self, user_id)

    def paged(self: EventStore, *args: Any, **kw: Any) -> Any:
        threads["events_in_pages"] = threading.current_thread()
        return pages(self, *args, **kw)

    monkeypatch.setattr(EventStore, "load", loaded)
    monkeypatch.setattr(EventStore, "events_in_pages", paged)
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "v2", embedder=False)
    assert set(threads) == {*steps, "load", "events_in_pages"}
    on_loop = [name for name, thread in threads.items() if thread is threading.current_thread()]
    assert on_loop == [], "planned on the event loop's thread"


class _FailsFromThirdBatch(OfflineExtractor):
    """The offline rules, but from the third batch on every call fails: the API went down."""

    def __init__(self) -> None:
        self.calls = 0

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.calls += 1
        if self.calls >= 3:
            raise ExtractionError("API down")
        return await super().extract(batch)


async def test_a_reextraction_cut_short_is_finished_by_running_it_again(
    make_memory: Any, db_url: str
) -> None:
    """Each message ends up covered once in the version: the run again sends only what
    the version does not cover yet, and a run over a finished version sends nothing."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    for i in range(30):
        await memory.add_exchange("eve", f"I like hobby{i} things", "ok")
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        failing = _FailsFromThirdBatch()
        with pytest.raises(ExtractionError):
            await audit.reextract("eve", failing, "v2", batch_size=10)
        assert (await audit.reextract("eve", OfflineExtractor(), "v2", batch_size=10)).entries == 20
        again = RecordingExtractor()
        assert (await audit.reextract("eve", again, "v2", batch_size=10)).entries == 0
        assert again.batches == []
        covered = [
            m
            for e in audit.store.events_of("eve")
            if isinstance(e, UserLog.KnowledgeReextracted)
            for m in e.message_ids
        ]
        assert len(covered) == len(set(covered)) == 60
        assert audit.knowledge_versions("eve") == {"live": 30, "v2": 30}


class _CutShortOnce(OfflineExtractor):
    """The offline rules, but the first call's answer was billed and cut short."""

    name = "cut-short"
    model = "model-x"

    def __init__(self) -> None:
        self.calls = 0

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.calls += 1
        if self.calls == 1:
            spent = TokenUsage(input_tokens=700, output_tokens=4096)
            raise InvalidExtractionError("the answer was cut at max_tokens", usage=spent)
        return await super().extract(batch)


async def test_what_a_failed_reextraction_call_spent_is_counted_and_its_messages_sent_again(
    make_memory: Any, db_url: str
) -> None:
    """A call that spent tokens and gave nothing to record is in the log (``memvee
    stats`` counts it); it covers nothing, and as an answer cut short would be cut again,
    its messages are sent again at once, in halves."""
    memory: Memory = await _processed(make_memory)
    await memory.process("eve")
    with Audit(db_url=db_url) as audit:
        extractor = _CutShortOnce()
        report = await audit.reextract("eve", extractor, "v2")
        assert (report.entries, report.left_out, extractor.calls) == (3, {}, 3)
        failed = [
            e for e in audit.store.events_of("eve") if isinstance(e, UserLog.ReextractionFailed)
        ]
        assert [(f.knowledge_version, len(f.message_ids), f.input_tokens) for f in failed] == [
            ("v2", 6, 700)
        ]
        assert audit.spend() == [
            {
                "extractor": "cut-short",
                "model": "model-x",
                "calls": 1,
                "input_tokens": 700,
                "output_tokens": 4096,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
            }
        ]
        assert (await audit.reextract("eve", extractor, "v2")).entries == 0
        assert "call failed (6 messages)" in describe(failed[0])
        assert verify(audit.store) == []


async def test_a_reextraction_shows_each_batch_the_entries_it_changes_as_live_processing_does(
    make_memory: Any, db_url: str
) -> None:
    """Past 100 entries of the version, a batch is shown the related ones, not the newest:
    the move found the old home, so the version (and the live knowledge it becomes) has
    one current home, as the live knowledge had."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_exchange("eve", "I live in Oslo", "ok")
    for i in range(160):
        await memory.add_exchange("eve", f"I like item{i} things", "ok")
    await memory.add_exchange("eve", "I moved to Bergen", "ok")
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "v2")
        audit.promote("eve", "v2")
    homes = [e.text for e in await memory.knowledge("eve") if "lives in" in e.text]
    assert homes == ["User lives in Bergen."]


async def test_a_reextraction_finds_the_entry_a_batch_changes_in_other_words_by_meaning(
    make_memory: Any, db_url: str
) -> None:
    """Past 100 entries of the version, "I'm a nurse." is shown the "User is a doctor." of
    that version by meaning, as live processing is: one current occupation."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_message("eve", "user", "I'm a doctor.")
    for i in range(150):
        await memory.add_message("eve", "user", f"I like item{i} things")
    await memory.add_message("eve", "user", "I'm a nurse.")
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", OfflineExtractor(), "v2", embedder=ConceptEmbedder())
        jobs = [e.text for e in audit.knowledge("eve", version="v2") if "item" not in e.text]
    assert jobs == ["User is a nurse."]


async def test_a_reextraction_bounds_each_batch_by_prompt_size_as_live_extraction_does(
    make_memory: Any, db_url: str
) -> None:
    """Long messages go several a batch only while about ``max_batch_tokens`` of prompt
    holds them (one message at least), never all in one request the API would refuse."""
    memory: Memory = await make_memory()
    for i in range(5):
        await memory.add_message("eve", "user", f"Diary part {i}: " + "by the river " * 2500)
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        extractor = RecordingExtractor()
        report = await audit.reextract("eve", extractor, "v2", embedder=False)
        assert [len(b.messages) for b in extractor.batches] == [2, 2, 1]
        assert report.entries == 5
        lone = RecordingExtractor()
        await audit.reextract("eve", lone, "v3", max_batch_tokens=1, embedder=False)
        assert [len(b.messages) for b in lone.batches] == [1] * 5


def _refused_when(word: str, reason: str | None = None) -> Any:
    """A :attr:`RecordingExtractor.fault`: every batch holding ``word`` is refused, as a
    model refuses (``reason`` ``None``) or as the API refuses an account (a reason)."""

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if any(word in m.content for m in batch.messages):
            spent = TokenUsage(input_tokens=100, output_tokens=1)
            return RejectedBatchError("Claude refused to answer", usage=spent, reason=reason)
        return None

    return fault


async def test_a_message_that_always_fails_is_left_out_and_the_others_are_reextracted(
    make_memory: Any, db_url: str
) -> None:
    """As live extraction does, a batch that fails the same way every time is split down
    to the message that fails alone: that one is left out of the version (reported, its
    failed calls in the log with the tokens they spent), the others go in; the run again
    sends it alone."""
    memory: Memory = await make_memory()
    sent = [
        await memory.add_message("eve", "user", f"I like thing {i}" + (" POISON" * (i == 4)))
        for i in range(6)
    ]
    await memory.flush("eve")
    poison = sent[4].message_id
    with Audit(db_url=db_url) as audit:
        extractor = RecordingExtractor()
        extractor.fault = _refused_when("POISON")
        report = await audit.reextract("eve", extractor, "v2", embedder=False)
        assert (report.entries, report.left_out) == (5, {poison: "Claude refused to answer"})
        assert audit.knowledge_versions("eve")["v2"] == 5
        failed = [
            e.message_ids
            for e in audit.store.events_of("eve")
            if isinstance(e, UserLog.ReextractionFailed)
        ]
        assert [len(ids) for ids in failed] == [6, 3, 2, 1] and failed[-1] == [poison]
        assert sum(row["calls"] for row in audit.spend()) == 4
        again = RecordingExtractor()
        again.fault = _refused_when("POISON")
        assert (await audit.reextract("eve", again, "v2", embedder=False)).left_out == {
            poison: "Claude refused to answer"
        }
        assert again.sent_message_ids == [poison]
        assert verify(audit.store) == []


async def test_a_refusal_of_every_batch_stops_the_run_as_a_failure_that_may_pass(
    make_memory: Any, db_url: str
) -> None:
    """Batches that share no message refused for one reason are the account refused (a
    credit balance too low), not messages: the run stops with a typed error, none of the
    messages is recorded as covered, and the run again sends them all."""
    memory: Memory = await make_memory()
    for i in range(4):
        await memory.add_message("eve", "user", f"I like thing {i}")
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        extractor = RecordingExtractor()
        extractor.fault = _refused_when("thing", reason="HTTP 400: credit balance too low")
        with pytest.raises(ExtractionError, match="refuses every batch"):
            await audit.reextract("eve", extractor, "v2", embedder=False)
        # The batch, its first half, its first message, then a message it does not share.
        assert len(extractor.batches) == 4
        assert (await audit.reextract("eve", RecordingExtractor(), "v2", embedder=False)) == (
            ReextractionReport(entries=4)
        )


def _refused_alone_when(word: str) -> Any:
    """A :attr:`RecordingExtractor.fault`: every batch holding ``word`` is refused by the
    API (a reason), and the same request without its messages was accepted: the batch's
    own refusal, as ClaudeExtractor's probe settles it."""

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if any(word in m.content for m in batch.messages):
            reason = "HTTP 400: Output blocked by content filtering policy"
            return RejectedBatchError("blocked", reason=reason, probe_accepted=True)
        return None

    return fault


@pytest.mark.parametrize("marked", [(1, 4), (4, 5)], ids=["apart", "adjacent"])
async def test_messages_refused_though_the_probe_was_accepted_are_left_out_run_after_run(
    make_memory: Any, db_url: str, marked: tuple[int, int]
) -> None:
    """Refusals whose probe the API accepted are the batches' own, however many share no
    message: each refused message is left out and reported, every run, and never taken
    for the API refusing every batch."""
    memory: Memory = await make_memory()
    sent = [
        await memory.add_message("eve", "user", f"I like thing {i}" + (" MARK" * (i in marked)))
        for i in range(6)
    ]
    await memory.flush("eve")
    refused = {sent[i].message_id: "blocked" for i in marked}
    with Audit(db_url=db_url) as audit:
        for entries in (4, 0, 0):
            extractor = RecordingExtractor()
            extractor.fault = _refused_alone_when("MARK")
            report = await audit.reextract("eve", extractor, "v2", embedder=False)
            assert report == ReextractionReport(entries=entries, left_out=refused)


async def test_a_run_that_stops_still_tells_what_it_left_out(make_memory: Any, db_url: str) -> None:
    """A run stopped by a failure that may pass has left some messages out before: the
    report given is filled in as the run goes, and the error's notes name them."""
    memory: Memory = await make_memory()
    sent = [
        await memory.add_message("eve", "user", f"I like thing {i}" + (" MARK" * (i == 0)))
        for i in range(4)
    ]
    await memory.flush("eve")
    extractor = RecordingExtractor()
    refused = _refused_alone_when("MARK")

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if len(batch.messages) == 1 and batch.messages[0].message_id == sent[3].message_id:
            return ExtractorOverloadedError("HTTP 529 overloaded")
        return refused(batch)

    extractor.fault = fault
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit, pytest.raises(ExtractorOverloadedError) as stopped:
        await audit.reextract("eve", extractor, "v2", batch_size=1, embedder=False, report=report)
    assert report == ReextractionReport(entries=2, left_out={sent[0].message_id: "blocked"})
    assert sent[0].message_id in " ".join(stopped.value.__notes__)


class _CutThenBusy(RecordingExtractor):
    """Its first call spends tokens on an answer cut short, then meets the API busy: a
    failure that may pass."""

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if not self.batches:
            self.batches.append(batch)
            spent = TokenUsage(input_tokens=700, output_tokens=4096)
            raise ExtractorOverloadedError("HTTP 529 overloaded", usage=spent)
        return await super().extract(batch)


async def test_a_failure_that_may_pass_is_counted_but_sends_no_message_alone_next_run(
    make_memory: Any, db_url: str
) -> None:
    """A call that spent tokens and then met the API busy stops the run; the next run
    sends the messages as bounded batches again, not one a call, and ``memvee stats``
    counts what the failed call spent."""
    memory: Memory = await make_memory()
    for i in range(6):
        await memory.add_message("eve", "user", f"I like thing {i}")
    await memory.flush("eve")
    with Audit(db_url=db_url) as audit:
        with pytest.raises(ExtractorOverloadedError):
            await audit.reextract("eve", _CutThenBusy(), "v2", embedder=False)
        assert [row["input_tokens"] for row in audit.spend()] == [700]
        again = RecordingExtractor()
        assert (await audit.reextract("eve", again, "v2", embedder=False)).entries == 6
        assert [len(b.messages) for b in again.batches] == [6]


async def test_a_batch_split_then_stopped_sends_its_messages_together_next_run(
    make_memory: Any, db_url: str
) -> None:
    """A batch refused the same way is split within the run; when the run stops on a
    failure that may pass before any half fails alone, its messages were not shown to
    fail alone: the next run sends them together again."""
    memory: Memory = await make_memory()
    for i in range(6):
        await memory.add_message("eve", "user", f"I like thing {i}")
    await memory.flush("eve")
    extractor = RecordingExtractor()

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if len(batch.messages) == 6:
            spent = TokenUsage(input_tokens=100, output_tokens=1)
            return RejectedBatchError("Claude refused to answer", usage=spent)
        return ExtractorOverloadedError("HTTP 529 overloaded")

    extractor.fault = fault
    with Audit(db_url=db_url) as audit:
        with pytest.raises(ExtractorOverloadedError):
            await audit.reextract("eve", extractor, "v2", embedder=False)
        again = RecordingExtractor()
        assert (await audit.reextract("eve", again, "v2", embedder=False)).entries == 6
        assert [len(b.messages) for b in again.batches] == [6]


async def _marked(make_memory: Any, count: int, marked: int) -> str:
    """``count`` processed messages of eve's, the one at ``marked`` holding MARK; its id."""
    memory: Memory = await make_memory()
    sent = [
        await memory.add_message("eve", "user", f"I like thing {i}" + (" MARK" * (i == marked)))
        for i in range(count)
    ]
    await memory.flush("eve")
    return sent[marked].message_id


def _pings(server: MessagesAPIServer) -> list[RecordedRequest]:
    """The harmless requests of one output token the server received."""
    return [r for r in server.requests if r.body.get("max_tokens") == 1]


def _extractions(server: MessagesAPIServer) -> list[RecordedRequest]:
    """The extraction calls the server received (every request but the pings)."""
    return [r for r in server.requests if r.body.get("max_tokens") != 1]


def _claude(
    server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, *, path: str = ""
) -> ClaudeExtractor:
    """A Claude extractor calling ``server`` (at ``path`` under it), without retries."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url + path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-reextract")
    return ClaudeExtractor(max_retries=0)


async def test_a_message_that_makes_the_api_fail_every_time_is_left_out_not_the_version_stalled(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message the API answers with a 500 every time fails its batch while the other
    batches are answered: the batch is split, its innocent messages go in, and the
    message that keeps failing alone is left out and reported, in one run; the run again
    sends it alone and leaves it out again, never stopping on it."""
    poison = await _marked(make_memory, 8, 1)
    messages_api_server.set_responder(fault_when("MARK", SERVER_ERROR))
    with Audit(db_url=db_url) as audit:
        for entries in (7, 0):
            report = await audit.reextract(
                "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=4, embedder=False
            )
            assert (report.entries, list(report.left_out)) == (entries, [poison])
            assert "HTTP 500" in report.left_out[poison]
        assert [len(r.messages) for r in messages_api_server.requests][-1] == 1
        assert verify(audit.store) == []


async def test_a_message_that_fails_alone_fewer_times_than_live_quarantines_is_not_left_out(
    make_memory: Any, db_url: str
) -> None:
    """Behind a flaky gateway a healthy message may meet a 5xx alone once or twice: as
    live extraction quarantines a message only after ``max_attempts`` such failures,
    re-extraction sends it again before that, and it goes in."""
    marked = await _marked(make_memory, 8, 1)
    extractor = RecordingExtractor()
    met = [0]

    def flaky(batch: ExtractionBatch) -> BaseException | None:
        if not any("MARK" in m.content for m in batch.messages):
            return None
        met[0] += 1
        return ExtractionError("HTTP 502 bad gateway") if met[0] <= 4 else None

    extractor.fault = flaky
    with Audit(db_url=db_url) as audit:
        report = await audit.reextract("eve", extractor, "v2", batch_size=4, embedder=False)
        assert report.left_out == {} and report.entries == 8
        assert [len(b.messages) for b in extractor.batches if b.messages[0].message_id == marked][
            -3:
        ] == [1, 1, 1], "two lone failures of its own, then answered"


async def test_a_lone_batch_failing_every_run_is_split_where_the_last_run_stopped(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user whose messages all fit one batch has no other call to tell a 500 that is
    the batch's from an API down: the run stops, and its failures in the log make the
    next run send the messages in the halves the last one reached, so the one that
    keeps failing is left out while the others are answered."""
    poison = await _marked(make_memory, 3, 1)
    messages_api_server.set_responder(fault_when("MARK", SERVER_ERROR))
    with Audit(db_url=db_url) as audit:
        with pytest.raises(ExtractionError, match="HTTP 500"):
            await audit.reextract(
                "eve", _claude(messages_api_server, monkeypatch), "v2", embedder=False
            )
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", embedder=False
        )
        assert (report.entries, list(report.left_out)) == (2, [poison])
        sent = [len(r.messages) for r in _extractions(messages_api_server)]
        assert sent == [3, 2, 1, 1, 1, 1, 1], "the poison alone three times, as live tries it"
        assert len(_pings(messages_api_server)) == 1, "answered: the failures were the batch's"


async def test_an_api_failing_everything_stops_the_run_and_blames_no_message(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two calls in a row failing with a 500 are the API down, as a harmless request
    failing too then shows: each run stops after them with the error, leaving no message
    out, however often it is run; once the API answers again, a run covers every
    message."""
    await _marked(make_memory, 8, 1)
    messages_api_server.set_responder(lambda request: SERVER_ERROR)
    with Audit(db_url=db_url) as audit:
        for _ in range(2):
            report = ReextractionReport()
            with pytest.raises(ExtractionError, match="HTTP 500"):
                await audit.reextract(
                    "eve",
                    _claude(messages_api_server, monkeypatch),
                    "v2",
                    batch_size=4,
                    embedder=False,
                    report=report,
                )
            assert report == ReextractionReport(check=HarmlessCheck(Outage(), TokenUsage()))
        assert len(_extractions(messages_api_server)) == 4
        assert len(_pings(messages_api_server)) == 2, "one harmless request a stopped run"
        messages_api_server.set_responder(default_answer)
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=4, embedder=False
        )
        assert report == ReextractionReport(entries=8)


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (403, "permission_error")]
)
async def test_a_refused_api_key_stops_each_run_and_leaves_no_failed_call_as_evidence(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    kind: str,
) -> None:
    """The API refusing the key (or its permissions) refuses the harmless request too: each
    run stops, its report, notes and log saying the key is refused, and its two failed
    calls are no evidence against their messages (as in an outage), so runs while it lasts
    send the same whole batches, and once the key is accepted again the batches go out
    whole: four calls of ten, not halves and singletons."""
    await _marked(make_memory, 40, 1)
    refused = ScriptedResponse(status, error_body(kind, "invalid x-api-key"))
    messages_api_server.set_responder(lambda request: refused)
    with Audit(db_url=db_url) as audit:
        for _ in range(2):
            report = ReextractionReport()
            with pytest.raises(ExtractorAccessRefusedError) as stopped:
                await audit.reextract(
                    "eve",
                    _claude(messages_api_server, monkeypatch),
                    "v2",
                    batch_size=10,
                    embedder=False,
                    report=report,
                )
            assert report.check is not None
            match report.check.verdict:
                case CredentialsRefused(error=error):
                    assert f"HTTP {status}" in error
                case other:
                    pytest.fail(f"the key refused, told as {other}")
            (note,) = stopped.value.__notes__
            assert "API key or its permissions are refused" in note
            assert "tells nothing" not in note and "down" not in note
        assert [len(r.messages) for r in _extractions(messages_api_server)] == [10] * 4
        assert len(_pings(messages_api_server)) == 2
        checks = [
            e for e in audit.store.events_of("eve") if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert [(c.refused, c.outage) for c in checks] == [
            (True, True)
        ] * 2  # stored as an outage too, for an older memvee
        assert describe(checks[0]).startswith(
            "version 'v2' check after failed calls showed the API key refused"
        )
        messages_api_server.set_responder(default_answer)
        during = len(messages_api_server.requests)
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=10, embedder=False
        )
    assert report == ReextractionReport(entries=40)
    assert [len(r.messages) for r in messages_api_server.requests[during:]] == [10] * 4


@pytest.mark.parametrize("missing", ["a model retired", "a base URL's wrong path"])
async def test_a_model_or_path_not_found_stops_each_run_told_as_not_found_not_the_api_down(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
) -> None:
    """The API answers every request 404, the harmless one too: a model retired (its
    ``not_found_error`` naming the model) or a base URL whose path is wrong. The API is up
    and refuses every request so: each run stops, its report, notes and log saying that
    the model or the base URL's path is not found, never that the API is down, and its two
    failed calls are no evidence against their messages, so once the model or the URL is
    fixed the batches go out whole: four calls of ten, not halves and singletons."""
    await _marked(make_memory, 40, 1)
    path = "/wrong" if missing == "a base URL's wrong path" else ""
    named = "no /wrong/v1/messages" if path else "model: claude-retired"
    retired = ScriptedResponse(404, error_body("not_found_error", "model: claude-retired"))
    if not path:
        messages_api_server.set_responder(lambda request: retired)
    with Audit(db_url=db_url) as audit:
        for _ in range(2):
            report = ReextractionReport()
            claude = _claude(messages_api_server, monkeypatch, path=path)
            with pytest.raises(ExtractorNotFoundError, match="HTTP 404") as stopped:
                await audit.reextract(
                    "eve", claude, "v2", batch_size=10, embedder=False, report=report
                )
            assert report.check is not None
            match report.check.verdict:
                case ModelOrPathNotFound(error=error):
                    assert "HTTP 404" in error and named in error
                case other:
                    pytest.fail(f"the model or path not found, told as {other}")
            (note,) = stopped.value.__notes__
            assert "the model, or the base URL's path, is not found for every request" in note
            assert "down" not in note and "tells nothing" not in note
        checks = [
            e for e in audit.store.events_of("eve") if isinstance(e, UserLog.ReextractionChecked)
        ]
        assert [(c.not_found, c.outage, c.refused) for c in checks] == [(True, True, False)] * 2
        sent = [len(r.messages) for r in _extractions(messages_api_server)]
        assert sent == ([] if path else [10] * 4), "the wrong path reaches no messages route"
        assert describe(checks[0]).startswith(
            "version 'v2' check after failed calls showed the model or the base URL's path "
            "not found: the failed calls blame no message: ExtractorNotFoundError: "
        )
        messages_api_server.set_responder(default_answer)
        during = len(messages_api_server.requests)
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=10, embedder=False
        )
    assert report == ReextractionReport(entries=40)
    assert [len(r.messages) for r in messages_api_server.requests[during:]] == [10] * 4


async def test_a_model_refusing_every_request_stops_each_run_leaving_no_message_out(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model refuses whatever it is sent (HTTP 200, stop reason "refusal"), the
    harmless message in the batch's place too: each run stops at its first batch with
    the error saying so, leaving no message out and its refused calls no evidence against
    their messages, so runs while it lasts send the same whole batch of ten, and once the
    model answers the batches go out whole. All 40 messages were left out in the first
    run (split down to singletons, each refused alone)."""
    await _marked(make_memory, 40, 1)
    messages_api_server.set_responder(lambda request: ScriptedResponse(body=refusal_body()))
    with Audit(db_url=db_url) as audit:
        for _ in range(3):
            report = ReextractionReport()
            with pytest.raises(EveryRequestRefusedError, match="the model refuses every request"):
                await audit.reextract(
                    "eve",
                    _claude(messages_api_server, monkeypatch),
                    "v2",
                    batch_size=10,
                    embedder=False,
                    report=report,
                )
            assert report == ReextractionReport()
        # Each run: its first batch, and the same request with a harmless message instead.
        assert [len(r.messages) for r in messages_api_server.requests] == [10, 1] * 3
        messages_api_server.set_responder(default_answer)
        during = len(messages_api_server.requests)
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=10, embedder=False
        )
    assert report == ReextractionReport(entries=40)
    assert [len(r.messages) for r in messages_api_server.requests[during:]] == [10] * 4


class _LoopRecording(RecordingExtractor):
    """Records the event loop of every call, and how often it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.closed = 0

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.loops.append(asyncio.get_running_loop())
        return await super().extract(batch)

    async def aclose(self) -> None:
        self.closed += 1


def test_the_cli_goes_on_past_a_user_whose_reextraction_fails_and_reports_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user's message left out is listed (exit 1); a user whose re-extraction stops
    (the API down, as a harmless request failing too shows: a ``check:`` line, the
    request sent as a batch of its own by an extractor with no ``ping``) is one
    ``error:`` line, the users after it are still re-extracted,
    and the exit code is 2, never a traceback. Every user goes on one event loop (the
    extractor's connections belong to it), and the extractor is closed at the end."""

    async def fill() -> None:
        async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as m:
            for user in ("bob", "cat", "dan"):
                for i in range(3):
                    text = f"{user} likes thing {i}" + (" POISON" * (user == "bob" and i == 1))
                    await m.add_message(user, "user", text)
                await m.flush(user)

    asyncio.run(fill())
    extractor = _LoopRecording()
    refused = _refused_when("POISON")

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if batch.user_id == "cat":
            return ExtractionError("Claude API returned HTTP 500")
        return refused(batch)

    extractor.fault = fault
    monkeypatch.setattr("memvee.cli._extractor", lambda name, model: extractor)
    runner = CliRunner()
    args = ["reextract", "--all", "--as", "v2", "--db-url", db_url]
    done = runner.invoke(app, args)
    assert done.exit_code == 2, done.output
    assert "bob: 2 entries extracted, 1 messages left out" in done.output
    assert "left out: bob " in done.output
    assert "error: user 'cat': Claude API returned HTTP 500" in done.output
    assert "check: cat: a harmless request failed too (0 tokens): the API is down" in done.output
    assert [b.messages[0].content for b in extractor.batches if b.user_id == "cat"][-1] == "Hello."
    assert "dan: 3 entries extracted" in done.output
    assert "Traceback" not in done.output
    assert len({id(loop) for loop in extractor.loops}) == 1 and extractor.closed == 1
    extractor.fault = refused
    again = runner.invoke(app, args)
    assert again.exit_code == 1, again.output
    assert "cat: 3 entries extracted" in again.output and "left out: bob " in again.output


def _three_processed_messages_of_cat(db_url: str) -> None:
    """Store three of cat's messages in the database at ``db_url``, processed, for a
    re-extraction to send again."""

    async def fill() -> None:
        async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as m:
            for i in range(3):
                await m.add_message("cat", "user", f"cat likes thing {i}")
            await m.flush("cat")

    asyncio.run(fill())


@pytest.mark.parametrize(
    "harmless",
    [
        ExtractionError("HTTP 503 the API is down"),
        ExtractorAccessRefusedError("HTTP 401 invalid x-api-key"),
        ExtractorRateLimitedError("HTTP 429 rate limited"),
    ],
    ids=["outage", "credentials refused", "busy"],
)
def test_a_reextraction_stopped_after_its_harmless_request_failed_prints_one_error_line(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    harmless: Exception,
) -> None:
    """What the harmless request showed is told once, in the ``check:`` line and the
    error's note: the command line's warning handler prints no line of its own before the
    ``error:`` line, while a library user logging at INFO still reads it."""

    _three_processed_messages_of_cat(db_url)
    extractor = RecordingExtractor()
    extractor.fault = lambda batch: (
        harmless
        if batch.messages[0].content == "Hello."
        else ExtractionError("Claude API returned HTTP 500")
    )
    monkeypatch.setattr("memvee.cli._extractor", lambda name, model: extractor)
    root = logging.getLogger()
    before = list(root.handlers)
    memvee.cli._log_warnings_but_not_interrupts()
    try:
        with caplog.at_level(logging.INFO, logger="memvee.audit"):
            done = CliRunner().invoke(app, ["reextract", "cat", "--as", "v2", "--db-url", db_url])
    finally:
        root.handlers[:] = before
    assert done.exit_code == 2, done.output
    assert capsys.readouterr().err == ""
    assert [r.message for r in caplog.records if "harmless request" in r.message]


_TOLD_NOTHING = "the next run splits the failed calls' batches"
_SPLIT_NOTHING = "the failed calls split no batch for the runs after"


@pytest.mark.parametrize(
    ("harmless", "verdict", "check_line", "log_line"),
    [
        (
            None,
            Answered(),
            "a harmless request was answered (0 tokens): the failed calls are their "
            "messages', whose batches the next run splits",
            "the API up: the failed calls were their messages'",
        ),
        (
            ExtractionError("HTTP 503 the API is down"),
            Outage(),
            f"a harmless request failed too (0 tokens): the API is down, and {_SPLIT_NOTHING}",
            "the API down: the failed calls blame no message",
        ),
        (
            ExtractorAccessRefusedError("HTTP 401 invalid x-api-key"),
            CredentialsRefused("ExtractorAccessRefusedError: HTTP 401 invalid x-api-key"),
            "a harmless request's credentials were refused too (0 tokens: "
            "ExtractorAccessRefusedError: HTTP 401 invalid x-api-key): the API key or its "
            f"permissions are refused for every request, and {_SPLIT_NOTHING}",
            "the API key refused: the failed calls blame no message: "
            "ExtractorAccessRefusedError: HTTP 401 invalid x-api-key",
        ),
        (
            ExtractorRateLimitedError("HTTP 429 rate limited"),
            Busy("ExtractorRateLimitedError: HTTP 429 rate limited"),
            "a harmless request failed in a way that tells nothing (0 tokens: "
            f"ExtractorRateLimitedError: HTTP 429 rate limited): {_TOLD_NOTHING}",
            "nothing: ExtractorRateLimitedError: HTTP 429 rate limited",
        ),
        (
            ValueError("a bug"),
            FailedTellingNothing("ValueError: a bug"),
            "a harmless request failed in a way that tells nothing (0 tokens: ValueError: a "
            f"bug): {_TOLD_NOTHING}",
            "nothing: ValueError: a bug",
        ),
        (
            ExtractorNotFoundError("HTTP 404 model: claude-retired"),
            ModelOrPathNotFound("ExtractorNotFoundError: HTTP 404 model: claude-retired"),
            "a harmless request was answered not found too (0 tokens: "
            "ExtractorNotFoundError: HTTP 404 model: claude-retired): the model, or the base "
            f"URL's path, is not found for every request, and {_SPLIT_NOTHING}",
            "the model or the base URL's path not found: the failed calls blame no message: "
            "ExtractorNotFoundError: HTTP 404 model: claude-retired",
        ),
    ],
    ids=[
        "answered",
        "outage",
        "credentials refused",
        "busy",
        "failed telling nothing",
        "model or path not found",
    ],
)
def test_each_verdict_of_a_stopped_runs_harmless_request_is_told_by_the_cli_and_the_log(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    harmless: Exception | None,
    verdict: CheckVerdict,
    check_line: str,
    log_line: str,
) -> None:
    """Two calls in a row fail with a server error, so the run sends one harmless request
    and stops: however that request fared, the report holds it as one verdict,
    ``memvee reextract`` tells it in a ``check:`` line before the user's ``error:`` line and
    exits 2, and ``memvee log`` tells what it showed of the failed calls (its payload
    whether the API was busy, or the model or the base URL's path not found)."""

    _three_processed_messages_of_cat(db_url)
    extractor = RecordingExtractor()

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if batch.messages[0].content == "Hello.":
            return harmless
        return ExtractionError("Claude API returned HTTP 500")

    extractor.fault = fault
    reports: list[ReextractionReport] = []
    reextract = Audit.reextract

    async def kept(self: Audit, *args: Any, report: ReextractionReport, **kwargs: Any) -> Any:
        reports.append(report)
        return await reextract(self, *args, report=report, **kwargs)

    monkeypatch.setattr(Audit, "reextract", kept)
    monkeypatch.setattr("memvee.cli._extractor", lambda name, model: extractor)
    runner = CliRunner()
    done = runner.invoke(app, ["reextract", "cat", "--as", "v2", "--db-url", db_url])
    said = " ".join(done.output.split())
    assert done.exit_code == 2, done.output
    assert f"check: cat: {check_line} error: user 'cat': Claude API returned HTTP 500" in said
    assert [r.check for r in reports] == [HarmlessCheck(verdict, TokenUsage())]
    args = ["log", "cat", "--type", "ReextractionChecked", "--json", "--db-url", db_url]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    (check,) = json.loads(shown.output)
    assert check["summary"] == f"version 'v2' check after failed calls showed {log_line}"
    assert check["payload"].get("busy", False) is isinstance(verdict, Busy)
    assert check["payload"].get("not_found", False) is isinstance(verdict, ModelOrPathNotFound)


def test_a_report_holds_one_verdict_with_its_request_and_its_error_only_where_it_has_one() -> None:
    """The harmless request's outcome is one value: a report cannot say the API was down
    and refused its credentials at once, nor hold a verdict without the request's cost; a
    refused, busy or failed request carries its error, and an answer or an outage none."""
    with pytest.raises(TypeError):
        ReextractionReport(outage=True, refused=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        HarmlessCheck(Outage())  # type: ignore[call-arg]
    for needs_an_error in (CredentialsRefused, ModelOrPathNotFound, Busy, FailedTellingNothing):
        with pytest.raises(TypeError):
            needs_an_error()  # type: ignore[call-arg]
    for has_none in (Answered, Outage):
        with pytest.raises(TypeError):
            has_none("HTTP 500")  # type: ignore[call-arg]
    check = HarmlessCheck(CredentialsRefused("HTTP 401"), TokenUsage(5, 1))
    report = ReextractionReport(check=check)
    with pytest.raises(AttributeError):
        report.check.verdict = Outage()  # type: ignore[misc]
    assert report.check_finding() == (
        "a harmless request's credentials were refused too (6 tokens: HTTP 401): the API key "
        "or its permissions are refused for every request, and the failed calls split no "
        "batch for the runs after"
    )


def test_the_cli_lists_what_a_stopped_user_left_out_before_its_error_line(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user whose run left a message out and then stopped (the API busy) gets both: the
    ``left out:`` line, then the ``error:`` line (exit 2)."""

    async def fill() -> None:
        async with Memory(config=MemoryConfig(db_url=db_url), extractor=RecordingExtractor()) as m:
            for text in ("bob likes MARK", "bob likes tea", "bob likes DOWN"):
                await m.add_message("bob", "user", text)
            await m.flush("bob")

    asyncio.run(fill())
    extractor = _LoopRecording()
    refused = _refused_alone_when("MARK")

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if [m.content for m in batch.messages] == ["bob likes DOWN"]:
            return ExtractorOverloadedError("HTTP 529 overloaded")
        return refused(batch)

    extractor.fault = fault
    monkeypatch.setattr("memvee.cli._extractor", lambda name, model: extractor)
    done = CliRunner().invoke(app, ["reextract", "bob", "--as", "v2", "--db-url", db_url])
    assert done.exit_code == 2, done.output
    left_out = done.output.index("left out: bob ")
    assert left_out < done.output.index("error: user 'bob': HTTP 529 overloaded")


class _Outage(OfflineExtractor, HarmlessRequests):
    """The offline rules, but a server error for every call while ``down`` is true, and
    for every call holding a message that names one of ``poison`` (words ending in a
    space, as "hobby4 "). Counts the messages of each call, and keeps each call that
    held a poison message; a ping (a harmless request) fails while ``down``."""

    def __init__(self, *poison: str, down: bool = True) -> None:
        self.down = down
        self.poison = poison
        self.sizes: list[int] = []
        self.poisoned: list[tuple[str, int]] = []
        """Each call holding a poison message: the word, and the call's messages."""
        self.answered: set[str] = set()
        self.pings = 0

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pings += 1
        if self.down:
            raise ExtractionError("HTTP 500 api_error")
        return TokenUsage(input_tokens=20, output_tokens=1)

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.sizes.append(len(batch.messages))
        held = [word for word in self.poison if any(word in m.content for m in batch.messages)]
        self.poisoned.extend((word, len(batch.messages)) for word in held)
        if self.down or held:
            raise ExtractionError("HTTP 500 api_error")
        result = await super().extract(batch)
        self.answered.update(m.message_id for m in batch.messages)
        return result


async def _hobbies(make_memory: Any, first: int, last: int) -> Memory:
    """A Memory whose user eve said she likes hobbies ``first`` to ``last`` (exclusive),
    one exchange each, all processed."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    for i in range(first, last):
        await memory.add_exchange("eve", f"I like hobby{i} things", "ok")
    await memory.flush("eve")
    return memory


@pytest.mark.parametrize("outage_runs", [2, 6])
async def test_the_run_after_an_outage_sends_the_batches_it_would_have_sent_before_it(
    make_memory: Any, db_url: str, outage_runs: int
) -> None:
    """Each run during an outage stops after two failed calls and one harmless request
    that fails too: the API is down, so those failures split no batch, and the run after
    the outage sends 80 messages in 8 batches of 10, however long the outage lasted (12
    and 18 calls once each such run split what it sent)."""
    await _hobbies(make_memory, 0, 40)
    extractor = _Outage()
    with Audit(db_url=db_url) as audit:
        for _ in range(outage_runs):
            report = ReextractionReport()
            with pytest.raises(ExtractionError) as stopped:
                await audit.reextract("eve", extractor, "v2", batch_size=10, report=report)
            assert report.check is not None and report.check.verdict == Outage()
            assert "the API is down" in " ".join(stopped.value.__notes__)
        assert extractor.pings == outage_runs
        extractor.sizes.clear()
        extractor.down = False
        report = await audit.reextract("eve", extractor, "v2", batch_size=10)
    assert extractor.sizes == [10] * 8
    assert report.left_out == {} and report.entries == 40


class _PingHanging(_Outage):
    """Every call fails with a server error that spent 1,000 input tokens; the harmless
    request hangs (an outage's may take the client's whole retry schedule), ``pinged``
    set once it is out."""

    def __init__(self) -> None:
        super().__init__()
        self.pinged = asyncio.Event()

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pinged.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.sizes.append(len(batch.messages))
        raise ExtractionError("HTTP 500 api_error", usage=TokenUsage(input_tokens=1000))


async def test_a_run_cancelled_during_its_harmless_request_keeps_the_failed_call_that_stopped_it(
    make_memory: Any, db_url: str
) -> None:
    """The failed call that stops a run is recorded, with its tokens, before the harmless
    request goes: a run cancelled while that request is out (Ctrl-C, a caller's timeout)
    loses neither."""
    await _hobbies(make_memory, 0, 5)
    extractor = _PingHanging()
    with Audit(db_url=db_url) as audit:
        run = asyncio.create_task(audit.reextract("eve", extractor, "v2", batch_size=5))
        await extractor.pinged.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        events = list(audit.store.events_in_pages("eve"))
    failed = [e for e in events if isinstance(e, UserLog.ReextractionFailed)]
    assert len(extractor.sizes) == 2
    assert [e.input_tokens for e in failed] == [1000, 1000]
    assert not any(isinstance(e, UserLog.ReextractionChecked) for e in events)


class _PingBroken(_Outage):
    """Calls holding a poison message fail with a server error; the harmless request
    fails with ``failure``: a bug (an error that would repeat) unless told otherwise."""

    failure: Exception = ValueError("ping() got an unexpected keyword")

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pings += 1
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "verdict"),
    [
        (
            ValueError("ping() got an unexpected keyword"),
            FailedTellingNothing("ValueError: ping() got an unexpected keyword"),
        ),
        (
            ExtractorRateLimitedError("HTTP 429 rate limited"),
            Busy("ExtractorRateLimitedError: HTTP 429 rate limited"),
        ),
    ],
    ids=["a bug", "rate limited"],
)
async def test_a_harmless_request_failing_in_a_way_that_repeats_is_reported_as_telling_nothing(
    make_memory: Any,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    verdict: Busy | FailedTellingNothing,
) -> None:
    """A harmless request failing with a bug (or a 400), or rate limited (the failed calls
    may have used the account's limit up themselves), shows neither an outage nor an
    answering API: the report, the error's notes and the log (at INFO) say it told nothing and
    why, the check kept in the user's log reads back as the verdict reported (busy as
    busy), and the failed calls split their batches for the next run as after an answer
    (background extraction judges it by the same rule)."""
    caplog.set_level(logging.INFO, logger="memvee.audit")  # the run's error tells it first
    told = verdict.error
    await _hobbies(make_memory, 0, 5)
    extractor = _PingBroken("hobby1 ", "hobby3 ", down=False)
    extractor.failure = failure
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit:
        with pytest.raises(ExtractionError) as stopped:
            await audit.reextract("eve", extractor, "v2", batch_size=5, report=report)
        events = list(audit.store.events_in_pages("eve"))
    assert extractor.pings == 1 and report.check is not None
    assert report.check.verdict == verdict
    assert "answered" not in " ".join(stopped.value.__notes__)
    assert "tells nothing" in " ".join(stopped.value.__notes__)
    assert any(told in r.getMessage() for r in caplog.records)
    (check,) = [e for e in events if isinstance(e, UserLog.ReextractionChecked)]
    assert not check.outage and check.error == told
    assert check.verdict == verdict
    assert describe(check) == f"version 'v2' check after failed calls showed nothing: {told}"


async def test_a_harmless_request_failing_with_the_api_key_in_its_error_never_stores_or_logs_it(
    make_memory: Any,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A harmless request fails with an error echoing the API key (an HTTP header refused
    for the newline a key read from a file kept): the report, the log and the check kept
    in the user's log tell the failure without the key. It was stored and logged as it
    was."""
    key = "sk-ant-api03-SECRETSECRETSECRET"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    await _hobbies(make_memory, 0, 5)
    extractor = _PingBroken("hobby1 ", "hobby3 ", down=False)
    extractor.failure = ValueError(f"Illegal header value b'{key}\\n'")
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit:
        with pytest.raises(ExtractionError):
            await audit.reextract("eve", extractor, "v2", batch_size=5, report=report)
        events = list(audit.store.events_in_pages("eve"))
    (check,) = [e for e in events if isinstance(e, UserLog.ReextractionChecked)]
    assert check.error is not None and "Illegal header value" in check.error
    assert report.check is not None and isinstance(report.check.verdict, FailedTellingNothing)
    told = [check.error, report.check.verdict.error, *(r.getMessage() for r in caplog.records)]
    assert not any("SECRET" in line for line in told if line), told


async def test_a_harmless_request_failing_as_an_outage_with_the_api_key_in_its_error_never_logs_it(
    make_memory: Any,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A harmless request fails as an outage does (no connection), its error echoing the
    API key: the check is an outage, and the line logged of it tells the failure without
    the key. It was logged as it was."""
    caplog.set_level(logging.INFO, logger="memvee")
    key = "sk-ant-api03-SECRETSECRETSECRET"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    await _hobbies(make_memory, 0, 5)
    extractor = _PingBroken("hobby1 ", "hobby3 ", down=False)
    extractor.failure = ConnectionError(f"Illegal header value b'{key}\\n'")
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit, pytest.raises(ExtractionError):
        await audit.reextract("eve", extractor, "v2", batch_size=5, report=report)
    assert report.check is not None and report.check.verdict == Outage()
    told = [r.getMessage() for r in caplog.records if "harmless request" in r.getMessage()]
    assert any("Illegal header value" in line for line in told), told
    assert not [line for line in told if "SECRET" in line], told


class _EchoingTheKey(_Outage):
    """Every call holding "hobby1 " fails with an error echoing the API key (an HTTP header
    refused for the newline a key read from a file kept): one that would repeat."""

    def __init__(self, key: str) -> None:
        super().__init__(down=False)
        self.key = key

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if any("hobby1 " in m.content for m in batch.messages):
            raise ValueError(f"Illegal header value b'{self.key}\\n'")
        return await super().extract(batch)


async def test_a_failed_call_echoing_the_api_key_is_logged_reported_and_stored_without_it(
    make_memory: Any,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call fails with an error echoing the API key the environment gives: its batch is
    split and its message left out, and the lines logged of it, the report's left-out
    message and the failed calls kept in the user's log tell the failure without the key.
    They were logged, reported and stored as it was."""
    caplog.set_level(logging.INFO, logger="memvee")
    key = "sk-ant-api03-SECRETSECRETSECRET"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    await _hobbies(make_memory, 0, 5)
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit:
        await audit.reextract("eve", _EchoingTheKey(key), "v2", batch_size=5, report=report)
        events = list(audit.store.events_in_pages("eve"))
    stored = [e.error for e in events if isinstance(e, UserLog.ReextractionFailed)]
    logged = [r.getMessage() for r in caplog.records if "Illegal header value" in r.getMessage()]
    assert len(report.left_out) == 1 and len(stored) == 1
    assert any("split" in line for line in logged) and any("left out" in line for line in logged)
    told = [*report.left_out.values(), *stored, *logged]
    assert all("Illegal header value" in text for text in told), told
    assert not [text for text in told if "SECRET" in text], told


class _UnrelatedPing(RecordingExtractor):
    """A custom extractor with a ``ping`` of its own business, not a harmless request:
    every call fails with a server error."""

    def __init__(self) -> None:
        super().__init__()
        self.pings = 0
        self.fault = lambda batch: ExtractionError("HTTP 500 api_error")

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pings += 1
        return TokenUsage()


async def test_an_extractor_not_declaring_harmless_requests_is_sent_the_harmless_message(
    make_memory: Any, db_url: str
) -> None:
    """A method named ``ping`` on an extractor that does not declare
    :class:`events.HarmlessRequests` is not taken for the harmless request: the run
    extracts the harmless message instead (failing too here: the API is down)."""
    await _hobbies(make_memory, 0, 5)
    extractor = _UnrelatedPing()
    report = ReextractionReport()
    with Audit(db_url=db_url) as audit, pytest.raises(ExtractionError):
        await audit.reextract("eve", extractor, "v2", batch_size=5, report=report)
    assert extractor.pings == 0
    assert extractor.batches[-1].messages[0].content == "Hello."
    assert report.check is not None and report.check.verdict == Outage()


async def test_two_messages_failing_every_call_are_never_sent_in_a_larger_call_again(
    make_memory: Any, db_url: str
) -> None:
    """Two messages fail every call holding one with a server error: their failed calls
    share no message, as an outage's do, yet no answer clears either of them. Each goes
    on in ever smaller calls, run after run, never back in a batch of ten, while every
    other message is answered."""
    await _hobbies(make_memory, 0, 40)
    extractor = _Outage("hobby4 ", "hobby14 ", down=False)
    with Audit(db_url=db_url) as audit:
        for _ in range(6):
            with contextlib.suppress(ExtractionError):
                await audit.reextract("eve", extractor, "v2", batch_size=10)
    for word in extractor.poison:
        sizes = [size for held, size in extractor.poisoned if held == word]
        assert sizes == sorted(sizes, reverse=True), (word, sizes)
    assert len(extractor.answered) == 78


async def test_messages_said_after_two_messages_failing_every_call_are_answered_first(
    make_memory: Any, db_url: str
) -> None:
    """Two messages failing every call holding one, split down to a call each, no longer
    keep the messages said after them out of the version: those go first, in full
    batches, and the suspects after them, where the API's answers between tell whether
    they fail of their own."""
    memory = await _hobbies(make_memory, 0, 10)
    extractor = _Outage("hobby4 ", "hobby5 ", down=False)
    with Audit(db_url=db_url) as audit:
        for _ in range(4):
            with contextlib.suppress(ExtractionError):
                await audit.reextract("eve", extractor, "v2", batch_size=10)
        assert extractor.poisoned[-2:] == [("hobby4 ", 1), ("hobby5 ", 1)]
        for i in range(10, 20):
            await memory.add_exchange("eve", f"I like sport{i} things", "ok")
        await memory.flush("eve")
        extractor.sizes.clear()
        with contextlib.suppress(ExtractionError):
            await audit.reextract("eve", extractor, "v2", batch_size=10)
    assert extractor.sizes[:2] == [10, 10]
    assert len(extractor.answered) == 38


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("repeating", [True, False], ids=["refused", "server error"])
async def test_messages_failing_only_together_are_split_apart_and_each_extracted(
    make_memory: Any, db_url: str, count: int, repeating: bool
) -> None:
    """Two or three messages fail every call holding all of them (refused, or a server
    error), among others that never fail; each alone is answered. Splitting parts them,
    and within three runs every message is in the version, none left out."""
    memory: Memory = await make_memory()
    for i in range(6):
        await memory.add_message("eve", "user", f"I like thing{i}" + " BAD" * (i < count))
    await memory.flush("eve")
    extractor = RecordingExtractor()

    def together(batch: ExtractionBatch) -> BaseException | None:
        if sum("BAD" in m.content for m in batch.messages) < count:
            return None
        if repeating:
            return RejectedBatchError("Claude refused to answer", usage=TokenUsage())
        return ExtractionError("HTTP 500 api_error")

    extractor.fault = together
    left_out: dict[str, str] = {}
    with Audit(db_url=db_url) as audit:
        for _ in range(3):
            report = ReextractionReport()
            with contextlib.suppress(ExtractionError):
                await audit.reextract("eve", extractor, "v2", report=report, embedder=False)
            left_out.update(report.left_out)
        assert audit.knowledge_versions("eve")["v2"] == 6
    assert left_out == {}


def _failing_when(*words: str, down: Callable[[], bool] = lambda: False) -> Any:
    """A responder that answers a server error to every request while ``down()`` says so,
    and to every request listing a message that names one of ``words``; else the default
    answer."""

    def respond(request: RecordedRequest) -> ScriptedResponse:
        contents = [str(m.get("content", "")) for m in request.messages]
        if down() or any(word in c for word in words for c in contents):
            return SERVER_ERROR
        return default_answer(request)

    return respond


async def test_a_six_run_outage_of_the_api_leaves_the_batches_after_it_whole(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the Claude client: six runs while the API answers everything with a 500
    each stop after two failed calls and one harmless request of one output token that
    fails too; the run after the outage sends 80 messages in 8 calls of 10, not 18, and
    the failed calls are still in the log, for the audit trail and ``memvee stats``."""
    await _hobbies(make_memory, 0, 40)
    outage = [True]
    messages_api_server.set_responder(_failing_when(down=lambda: outage[0]))
    with Audit(db_url=db_url) as audit:
        for _ in range(6):
            with pytest.raises(ExtractionError, match="HTTP 500"):
                await audit.reextract(
                    "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=10
                )
        assert len(_pings(messages_api_server)) == 6
        events = list(audit.store.events_in_pages("eve"))
        failed = [e for e in events if isinstance(e, UserLog.ReextractionFailed)]
        checks = [e for e in events if isinstance(e, UserLog.ReextractionChecked)]
        assert (len(failed), [c.outage for c in checks]) == (12, [True] * 6)
        outage[0] = False
        before = len(messages_api_server.requests)
        report = await audit.reextract(
            "eve", _claude(messages_api_server, monkeypatch), "v2", batch_size=10
        )
        after = messages_api_server.requests[before:]
    assert [len(r.messages) for r in after] == [10] * 8
    assert report.entries == 40 and report.check is None


class _FailingInTurn(_Outage):
    """Every call fails with a server error; the first call of ``first_call`` waits for
    ``before`` and the second call sets ``after`` then waits for ``release`` (another
    run's turn comes between)."""

    def __init__(self, before: asyncio.Event | None, after: asyncio.Event) -> None:
        super().__init__()
        self.before, self.after = before, after
        self.release = asyncio.Event()

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.sizes.append(len(batch.messages))
        if len(self.sizes) == 1 and self.before is not None:
            await self.before.wait()
        elif len(self.sizes) == 2:
            self.after.set()
            await self.release.wait()
        raise ExtractionError("HTTP 500 api_error")


async def test_an_outage_leaves_out_its_own_failed_calls_not_another_runs_of_the_user(
    make_memory: Any, db_url: str
) -> None:
    """Two runs of eve into v2 at once: run A's two failed calls (the API down, as its
    harmless request failing too shows) have run B's failed call between them in the
    log. The check names A's calls, so B's failure stays the evidence that halves its
    batch, and neither of A's halves anything."""
    await _hobbies(make_memory, 0, 10)
    a_failed_once = asyncio.Event()
    b_failed_once = asyncio.Event()
    run_a = _FailingInTurn(None, a_failed_once)
    run_b = _FailingInTurn(a_failed_once, b_failed_once)
    run_a.release = b_failed_once
    with Audit(db_url=db_url) as audit_a, Audit(db_url=db_url) as audit_b:
        b = asyncio.create_task(audit_b.reextract("eve", run_b, "v2", batch_size=4))
        with pytest.raises(ExtractionError, match="HTTP 500"):
            await audit_a.reextract("eve", run_a, "v2", batch_size=10)
        b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b
        events = list(audit_a.store.events_in_pages("eve"))
        log = audit_a.store.load("eve")
    assert log is not None
    said = [e.message_id for e in events if isinstance(e, UserLog.MessageAdded)]
    failed = [e.message_ids for e in events if isinstance(e, UserLog.ReextractionFailed)]
    assert failed == [said[0:10], said[0:4], said[10:20]]
    assert log.reextraction_calls("v2", events) == [(tuple(said[0:4]), True)]


async def _run_to_its_stop(
    audit: Audit, server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch
) -> ReextractionReport:
    """One run of eve's re-extraction into ``v2`` through the Claude client, in batches of
    10, its report whether it ran through or stopped on a failed call."""
    report = ReextractionReport()
    with contextlib.suppress(ExtractionError):
        await audit.reextract(
            "eve", _claude(server, monkeypatch), "v2", batch_size=10, report=report
        )
    return report


async def test_two_messages_failing_every_call_through_the_client_still_split_down(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the Claude client: two messages whose calls the API fails every time stop
    runs as an outage does (two failed calls in a row sharing no message), but the
    harmless request sent then is answered, so their calls are split as before: each goes
    on in ever smaller calls, run after run, while every other message is answered."""
    await _hobbies(make_memory, 0, 40)
    messages_api_server.set_responder(_failing_when("hobby4 ", "hobby14 "))
    with Audit(db_url=db_url) as audit:
        for _ in range(6):
            report = await _run_to_its_stop(audit, messages_api_server, monkeypatch)
            assert report.check is None or report.check.verdict == Answered()
    calls = _extractions(messages_api_server)
    for word in ("hobby4 ", "hobby14 "):
        sizes = [len(r.messages) for r in calls if any(word in m["content"] for m in r.messages)]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1, (word, sizes)
    answered = {
        m["content"]
        for r in calls
        if not any(w in m["content"] for w in ("hobby4 ", "hobby14 ") for m in r.messages)
        for m in r.messages
        if m["role"] == "user"
    }
    assert len(answered) == 38


async def test_calls_failing_only_at_full_size_while_a_ping_is_answered_are_split_as_before(
    make_memory: Any,
    db_url: str,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the Claude client: a gateway failing every request of more than five
    messages with a 500 answers the harmless request, so the failed calls split their
    batches as they did without it: the runs cover all 80 messages in the calls they took
    before (5 runs, 24 calls), plus one harmless request a stopped run."""
    await _hobbies(make_memory, 0, 40)

    def respond(request: RecordedRequest) -> ScriptedResponse:
        return SERVER_ERROR if len(request.messages) > 5 else default_answer(request)

    messages_api_server.set_responder(respond)
    runs = entries = 0
    with Audit(db_url=db_url) as audit:
        while entries < 40 and runs < 10:
            runs += 1
            report = await _run_to_its_stop(audit, messages_api_server, monkeypatch)
            entries += report.entries
            assert report.check is None or report.check.verdict == Answered()
    sizes = [len(r.messages) for r in _extractions(messages_api_server)]
    assert (entries, runs, len(sizes)) == (40, 5, 24), sizes
    assert len(_pings(messages_api_server)) == runs - 1
