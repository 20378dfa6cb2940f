"""Audit and replay: the event log of a user, and the state at any version, computed by
replaying the log, equals what the live projections held at that version."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import eventsourcing.domain
import numpy as np
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

import memvee._held_run
import memvee.audit
from actors.erasure import erase_user
from actors.user_actor import INTERRUPTED_BY_CRASH
from events import (
    BatchLimits,
    ConflictError,
    EventStore,
    ExtractedFact,
    UserLog,
    sqlite_url,
    user_log_id,
)
from memvee import (
    InvalidInputError,
    Memory,
    MemoryConfig,
    NotFoundError,
    ProcessingError,
    StorageError,
)
from memvee._held_run import HeldRun
from memvee._log_redaction import OWN_LOGGERS, RedactSecrets
from memvee.audit import Audit
from memvee.cli import app
from memvee.extractors import ClaudeExtractor, OfflineExtractor
from projections import ProjectionTables, Projector, rebuild, verify
from tests.support.embedders import ConceptEmbedder
from tests.support.extractors import RecordingExtractor, quarantine_stamps


async def _snapshot(memory: Memory, user: str) -> tuple[int, Any]:
    summary = await memory.user(user)
    assert summary is not None
    tasks = [
        (t.task_id, t.status.value, t.knowledge_count, t.error) for t in await memory.tasks(user)
    ]
    return summary.version, (await memory.buffer(user), tasks, await memory.knowledge(user))


async def _history(memory: Memory, extractor: RecordingExtractor) -> dict[int, Any]:
    """Drive one user through adds, a success, a failure and a retry; live state by version."""
    seen: dict[int, Any] = {}
    for i in range(3):
        await memory.add_exchange("ann", f"I live in town {i}", "ok")
        version, state = await _snapshot(memory, "ann")
        seen[version] = state
    await memory.process("ann")
    version, state = await _snapshot(memory, "ann")
    seen[version] = state
    await memory.add_exchange("ann", "I love tea", "ok")
    extractor.fail_next = 1
    with pytest.raises(ProcessingError):
        await memory.process("ann")
    version, state = await _snapshot(memory, "ann")
    seen[version] = state
    await memory.process("ann")
    version, state = await _snapshot(memory, "ann")
    seen[version] = state
    await memory.add_exchange("bob", "I work at Acme", "ok")
    return seen


def _replayed(audit: Audit, version: int) -> Any:
    state = audit.state("ann", version=version)
    tasks = [(t.task_id, t.status, t.knowledge_count, t.error) for t in state.tasks]
    return state.buffer, tasks, state.knowledge


async def test_state_replayed_at_every_version_equals_the_live_state_then(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory()
    seen = await _history(memory, extractor)
    with Audit(db_url=db_url) as audit:
        for version, live in seen.items():
            assert _replayed(audit, version) == live, f"version {version}"
        assert audit.state("ann").version == max(seen)


async def test_checkpoints_taken_in_the_background_change_no_replayed_state(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory(config={"checkpoint_interval": 3})
    seen = await _history(memory, extractor)
    engine = memory._engine
    assert engine is not None
    assert await asyncio.to_thread(engine.checkpointer.wait_idle, 30)
    with engine.store.engine.connect() as connection:
        taken = engine.checkpoints.versions(connection, str(user_log_id("ann")))
    assert taken and taken[-1] >= max(seen) - 3, "the actor asked for checkpoints as it went"
    with Audit(db_url=db_url) as audit:
        for version, live in seen.items():
            assert _replayed(audit, version) == live, f"version {version}"
    await memory.forget("ann")
    with engine.store.engine.connect() as connection:
        assert engine.checkpoints.versions(connection, str(user_log_id("ann"))) == []


async def test_a_long_log_written_without_checkpoints_gets_one_when_next_loaded(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory(config={"checkpoint_interval": 0})
    seen = await _history(memory, extractor)
    await memory.close()
    memory = await make_memory(config={"checkpoint_interval": 4})
    engine = memory._engine
    assert engine is not None
    with engine.store.engine.connect() as connection:
        assert engine.checkpoints.versions(connection, str(user_log_id("ann"))) == []
    await memory.add_exchange("ann", "I moved to Porto", "ok")  # loads the actor
    assert await asyncio.to_thread(engine.checkpointer.wait_idle, 30)
    with engine.store.engine.connect() as connection:
        taken = engine.checkpoints.versions(connection, str(user_log_id("ann")))
    assert len(taken) == 1 and taken[0] >= max(seen), "asked for on load, not at a crossing"


async def test_the_log_reads_in_order_with_filters_and_pages(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as audit:
        everything = list(audit.log("ann"))
        assert [e.version for e in everything] == list(range(1, len(everything) + 1))
        assert everything[0].type == "Registered" and everything[0].payload == {"user_id": "ann"}
        assert list(audit.log("ann", page_size=3)) == everything
        added = list(audit.log("ann", types=["MessageAdded"]))
        assert [e.payload["seq"] for e in added] == list(range(1, 9))
        window = list(audit.log("ann", from_version=3, to_version=5))
        assert [e.version for e in window] == [3, 4, 5]
        middle = everything[len(everything) // 2].recorded_at
        later = list(audit.log("ann", since=middle))
        assert later and all(e.recorded_at >= middle for e in later)
        with pytest.raises(NotFoundError, match="no user 'nobody'"):
            list(audit.log("nobody"))
        with pytest.raises(ValueError, match="timezone-aware"):
            list(audit.log("ann", since=datetime(2026, 1, 1)))
        past_the_end = 2**80  # more than SQLite's integers hold: never sent to the database
        last = len(everything)
        for start in (last + 1, past_the_end):  # an empty listing and exit 0 in the CLI
            with pytest.raises(InvalidInputError, match=f"has {last} events; version .* past"):
                list(audit.log("ann", from_version=start))
        with pytest.raises(InvalidInputError, match="from_version 5 is after to_version 2"):
            list(audit.log("ann", from_version=5, to_version=2))
        assert [e.version for e in audit.log("ann", from_version=last)] == [last]
        assert list(audit.log("ann", to_version=past_the_end)) == everything
        assert audit.users(after="ann", limit=1) == audit.users()[1:2]


def test_a_log_read_until_a_time_keeps_each_event_stamped_by_then_wherever_it_stands(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers whose clocks differ (another host, an NTP step) stamp an event earlier
    than the one before it: ``since`` and ``until`` filter each event by its own stamp, and
    reading stops at no event stamped past ``until``."""
    right = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    clock = [right]
    monkeypatch.setattr(eventsourcing.domain, "datetime_now_with_tzinfo", lambda: clock[0])
    with Audit(db_url=db_url) as audit:
        log = UserLog.register("ann")
        log.add_message("user", "written on a host whose clock is right", None, 100)
        clock[0] = right - timedelta(seconds=2)
        log.add_message("user", "written on a host whose clock is 2 s behind", None, 100)
        audit.store.append([log.collect_events()], Projector(ProjectionTables()).apply)
        assert [e.recorded_at for e in audit.log("ann")] == [right, right, clock[0]]
        between = right - timedelta(seconds=1)
        assert [e.version for e in audit.log("ann", until=between)] == [3]
        assert [e.version for e in audit.log("ann", since=between)] == [1, 2]


@pytest.mark.parametrize("begun_again", [False, True], ids=["erased", "begun again"])
def test_a_log_forgotten_while_it_is_read_in_pages_is_an_error_not_part_of_a_log(
    db_url: str, begun_again: bool
) -> None:
    """A user forgotten between two pages of ``log`` (and maybe written again) fails the
    read with a StorageError: the trail is never cut short nor spliced with the new log."""

    def written(*contents: str) -> None:
        log = UserLog.register("ann")
        for content in contents:
            log.add_message("user", content, None, 100)
        audit.store.append([log.collect_events()], Projector(ProjectionTables()).apply)

    with Audit(db_url=db_url) as audit:
        written("old 1", "old 2", "old 3", "old 4")
        trail = audit.log("ann", page_size=2)
        assert [next(trail).version, next(trail).version] == [1, 2]
        audit.forget("ann")
        if begun_again:
            written("new 1", "new 2", "new 3", "new 4")
        with pytest.raises(StorageError, match="'ann' was forgotten while their log was read"):
            next(trail)


BAD_AUDIT_CALLS = [
    ("version 0", lambda a: list(a.log("ann", from_version=0)), "from_version must be 1 or more"),
    ("text version", lambda a: list(a.log("ann", to_version="5")), "to_version must be an int"),
    ("page of 0", lambda a: list(a.log("ann", page_size=0)), "page_size must be 1 or more"),
    ("a type for types", lambda a: list(a.log("ann", types=5)), "types must be a list"),
    ("one type for types", lambda a: list(a.log("ann", types="MessageAdded")), "not str"),
    ("one user for user ids", lambda a: a.check_version_name("ann", "v2"), "user_ids must be a"),
    ("bool version", lambda a: a.state("ann", version=True), "version must be an int, not bool"),
    ("no entry id", lambda a: a.explain("ann", None), "entry_id must be a str, not NoneType"),
    ("surrogate entry id", lambda a: a.explain("ann", "\ud800"), "entry_id contains a lone"),
    ("list version", lambda a: a.promote("ann", ["v"]), "version must be a str, not list"),
    ("number to compare", lambda a: a.compare("ann", 5), "a must be a str, not int"),
    ("one id to requeue", lambda a: a.requeue("ann", "id"), "message_ids must be a list"),
    ("no user to start after", lambda a: a.users(after=None), "after must be a str"),
    ("surrogate to start after", lambda a: a.users(after="\ud800"), "after contains a lone"),
    ("no users a page", lambda a: a.users(limit=0), "limit must be 1 or more"),
    ("too many users a page", lambda a: a.users(limit=2**80), "at most 10,000 users a page"),
    (
        "users a page of more digits than python writes",
        lambda a: a.users(limit=10**5000),
        r"at most 10,000 users a page, not int \(too long to write out\)",
    ),
    (
        "a log page of more digits than python writes",
        lambda a: list(a.log("ann", page_size=-(10**5000))),
        r"page_size must be 1 or more, not int \(too long to write out\)",
    ),
    ("text to import", lambda a: a.import_lines("{}"), "lines must be an iterable of str"),
    ("a number to import", lambda a: a.import_lines([None]), "line 1 is a NoneType"),
]


@pytest.mark.parametrize(
    ("case", "call", "message"), BAD_AUDIT_CALLS, ids=[c[0] for c in BAD_AUDIT_CALLS]
)
async def test_bad_input_to_the_audit_is_an_invalid_input_error_and_changes_nothing(
    make_memory: Any, db_url: str, case: str, call: Any, message: str
) -> None:
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    await memory.add_exchange("bob", "I live in Rome", "ok")
    await memory.close()
    with Audit(db_url=db_url) as audit:
        before = audit.stats(), list(audit.log("ann"))
        with pytest.raises(InvalidInputError, match=message):
            call(audit)
        assert (audit.stats(), list(audit.log("ann"))) == before


async def test_one_user_id_given_for_the_users_of_a_bulk_run_is_refused_not_read_as_letters(
    make_memory: Any, db_url: str
) -> None:
    """ "ann" would be the users "a" and "n": refused before any request is sent."""
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    await memory.close()
    with Audit(db_url=db_url) as audit:
        before = audit.stats(), list(audit.log("ann"))
        with pytest.raises(InvalidInputError, match="user_ids must be a list of strings, not str"):
            await audit.reextract_in_bulk("ann", ClaudeExtractor(max_retries=0), "v2")
        assert (audit.stats(), list(audit.log("ann"))) == before


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_database_url_is_refused_before_any_file_is_made(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an unset variable read with a default of "" gives: no database, not the
    default file in the working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="not a database URL"):
        Audit(db_url=url)
    assert list(tmp_path.iterdir()) == []


def test_an_audit_of_a_database_not_made_yet_makes_it_empty(tmp_path: Path) -> None:
    with Audit(db_path=str(tmp_path / "new.db")) as audit:
        assert audit.users() == [] and audit.stats()["users"] == 0
        with pytest.raises(NotFoundError, match="no user 'ann'"):
            list(audit.log("ann"))


@pytest.mark.parametrize("path", ["missing.db", "no-folder/missing.db"])
def test_an_audit_without_create_of_a_missing_file_is_not_found_and_makes_neither_file_nor_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """As the CLI's reading commands refuse a missing --db: a mistyped path is an error,
    not an empty database, nor the folder it would be in."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFoundError, match=f"^no memvee database at {path} \\(check db_path\\)$"):
        Audit(db_path=path, create=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "error", "says"),
    [
        ("a-file/missing.db", NotFoundError, "^no memvee database at a-file/missing.db"),
        ("folder.db", StorageError, "^folder.db is a folder, not a SQLite file$"),
        ("x" * 300 + ".db", StorageError, "^cannot read the database x{300}.db: "),
    ],
)
def test_an_audit_without_create_of_a_path_that_is_no_file_says_which_as_a_typed_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    error: type[Exception],
    says: str,
) -> None:
    """A folder was said to be missing, and a name too long for the file system was an
    untyped OSError; under a file is missing, as a missing folder is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").touch()
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(error, match=says):
        Audit(db_path=path, create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "folder.db"]


async def test_state_at_a_time_replays_up_to_that_time(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await memory.add_exchange("cy", "I live in Oslo", "ok")
    with Audit(db_url=db_url) as audit:
        cut = list(audit.log("cy"))[-1].recorded_at
    await memory.process("cy")
    with Audit(db_url=db_url) as audit:
        before = audit.state("cy", at=cut)
        assert before.knowledge == [] and len(before.buffer) == 2
        assert len(audit.state("cy", at=cut + timedelta(hours=1)).knowledge) == 1
        assert audit.state("cy", at=datetime(2000, 1, 1, tzinfo=UTC)).version == 0


async def test_the_cli_reads_log_state_users_and_stats(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    await memory.close()
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--db-url", db_url])
        assert result.exit_code == 0, result.output
        return result.output

    log = json.loads(run("log", "ann", "--json", "--type", "ProcessingFailed"))
    assert [e["type"] for e in log] == ["ProcessingFailed"]
    assert "failed on purpose" in log[0]["payload"]["error"]
    state = json.loads(run("state", "ann", "--at", "7", "--json"))
    assert state["version"] == 7 and len(state["buffer"]) == 6
    users = json.loads(run("users", "--json"))
    assert [u["user_id"] for u in users] == ["ann", "bob"]
    stats = json.loads(run("stats", "--json"))
    assert stats["users"] == 2 and stats["messages"] == 10 and stats["tasks_failed"] == 1
    assert "ProcessingStarted" in run("log", "ann")
    assert "knowledge" in run("state", "ann")
    bad = runner.invoke(app, ["state", "ann", "--at", "yesterday", "--db-url", db_url])
    assert bad.exit_code == 2 and "neither a version nor an ISO time" in bad.output


async def test_explain_traces_an_entry_to_its_messages_task_and_extractor(
    make_memory: Any, db_url: str
) -> None:
    memory: Memory = await make_memory()
    said, _ = await memory.add_exchange("dee", "I work at Globex", "nice")
    await memory.add_exchange("dee", "I love tea", "ok")
    await memory.process("dee")
    entry = (await memory.knowledge("dee"))[0]
    with Audit(db_url=db_url) as audit:
        found = audit.explain("dee", entry.entry_id)
        assert found.text == "User said: I work at Globex"
        assert [m.content for m in found.messages] == ["I work at Globex"]
        assert found.messages[0].message_id == said.message_id
        assert found.task_id == entry.task_id and found.trigger == "manual"
        assert len(found.batch) == 4
        assert (found.extractor, found.model) == ("recording", "stand-in")
        assert found.replaced_by == []
        with pytest.raises(ValueError, match="no knowledge entry"):
            audit.explain("dee", "missing")


async def test_explain_lists_the_messages_that_said_an_entry_again_apart_from_its_sources(
    make_memory: Any, db_url: str
) -> None:
    """ "As I said, I live in Oslo" added no entry and is no source of the Oslo entry, yet
    it traces to it: ``explain`` lists it as said again, in its JSON and its table."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    for said in ("I live in Oslo.", "As I said, I live in Oslo."):
        await memory.add_exchange("eve", said, "ok")
        await memory.flush("eve")
    (oslo,) = await memory.knowledge("eve")
    with Audit(db_url=db_url) as audit:
        found = audit.explain("eve", oslo.entry_id)
    assert [m.content for m in found.messages] == ["I live in Oslo."]
    assert [m.content for m in found.repeated_by] == ["As I said, I live in Oslo."]
    shown = CliRunner().invoke(app, ["explain", "eve", oslo.entry_id, "--db-url", db_url])
    assert shown.exit_code == 0, shown.output
    assert "said again by" in shown.output and "As I said, I live in Oslo." in shown.output
    as_json = CliRunner().invoke(
        app, ["explain", "eve", oslo.entry_id, "--json", "--db-url", db_url]
    )
    repeats = json.loads(as_json.output)["repeated_by"]
    assert [m["content"] for m in repeats] == ["As I said, I live in Oslo."]


async def test_explain_lists_only_the_newest_messages_that_said_an_entry_again_with_their_count(
    make_memory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry said again thousands of times keeps ``explain`` to a page of them: the
    newest, and how many there were in all."""
    monkeypatch.setattr(memvee.audit, "LISTED_REPEATS", 2)
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    start = datetime(2025, 1, 1, tzinfo=UTC)
    await memory.add_exchange("eve", "I live in Oslo.", "ok", sent_at=start)
    await memory.flush("eve")
    for day in range(1, 5):
        said = f"As I said on day {day}, I live in Oslo."
        await memory.add_exchange("eve", said, "ok", sent_at=start + timedelta(days=day))
    await memory.flush("eve")
    (oslo,) = await memory.knowledge("eve")
    with Audit(db_url=db_url) as audit:
        found = audit.explain("eve", oslo.entry_id)
    assert sorted(m.content for m in found.repeated_by) == [
        "As I said on day 3, I live in Oslo.",
        "As I said on day 4, I live in Oslo.",
    ]
    assert found.repeated_count == 4
    shown = CliRunner().invoke(app, ["explain", "eve", oslo.entry_id, "--db-url", db_url])
    assert "2 more messages said it again: the newest 2 are listed" in shown.output


async def test_explain_names_who_said_each_source_message(make_memory: Any, db_url: str) -> None:
    """In a group chat the provenance says who said it, as ``memvee log`` does."""
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_message("room", "user", "I live in Oslo.", name="Maria")
    await memory.add_message("room", "user", "I live in Bergen.")
    await memory.flush("room")
    entries = {e.text: e for e in await memory.knowledge("room")}
    with Audit(db_url=db_url) as audit:
        named = audit.explain("room", entries["Maria lives in Oslo."].entry_id)
        unnamed = audit.explain("room", entries["User lives in Bergen."].entry_id)
    assert [(m.role, m.name) for m in named.messages] == [("user", "Maria")]
    assert [(m.role, m.name) for m in unnamed.messages] == [("user", None)]
    runner = CliRunner()
    entry = entries["Maria lives in Oslo."].entry_id
    shown = runner.invoke(app, ["explain", "room", entry, "--db-url", db_url])
    assert shown.exit_code == 0, shown.output
    assert "Maria (user)" in shown.output
    as_json = runner.invoke(app, ["explain", "room", entry, "--json", "--db-url", db_url])
    assert json.loads(as_json.output)["messages"][0]["name"] == "Maria"


async def test_explain_follows_an_entry_through_its_replacements(
    make_memory: Any, db_url: str
) -> None:
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    for place in ("Oslo", "Bergen", "Rome"):
        await memory.add_exchange("eve", f"I live in {place}.", "ok")
        await memory.flush("eve")
    history = {e.text: e for e in await memory.knowledge("eve", history=True)}
    oslo, bergen, rome = (history[f"User lives in {p}."] for p in ("Oslo", "Bergen", "Rome"))
    with Audit(db_url=db_url) as audit:
        first = audit.explain("eve", oslo.entry_id)
        assert first.replaced_by == [bergen.entry_id, rome.entry_id]
        assert first.valid_until == bergen.valid_from and first.supersedes == []
        assert [m.content for m in first.messages] == ["I live in Oslo."]
        last = audit.explain("eve", rome.entry_id)
        assert last.replaced_by == [] and last.supersedes == [bergen.entry_id]
        assert last.valid_until is None
    runner = CliRunner()
    shown = runner.invoke(app, ["explain", "eve", oslo.entry_id, "--db-url", db_url])
    assert shown.exit_code == 0, shown.output
    assert f"replaced by: {bergen.entry_id}, {rome.entry_id}" in " ".join(shown.output.split())


@pytest.fixture(params=["in memory", "in a file"])
def held(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where an import holds a user's run while it checks it: with its events in memory,
    or, past a few lines (a few thousand outside tests), in a temporary file."""
    if request.param == "in a file":
        monkeypatch.setattr(memvee._held_run, "DECODED_KEPT", 2)
    return str(request.param)


async def test_export_then_import_gives_the_same_state_in_another_database(
    make_memory: Any, extractor: RecordingExtractor, db_url: str, tmp_path: Any, held: str
) -> None:
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as source:
        lines = list(source.export("ann"))
        expected = source.state("ann")
    assert len(lines) == expected.version
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        assert target.import_lines(lines) == {"ann": len(lines)}
        copied = target.state("ann")
        assert (copied.buffer, copied.tasks, copied.knowledge) == (
            expected.buffer,
            expected.tasks,
            expected.knowledge,
        )
        assert [u.user_id for u in target.users()] == ["ann"]
        assert target.import_lines(lines) == {"ann": 0}, "a log imported before is left"
        with pytest.raises(ValueError, match="line 1"):
            target.import_lines(["{not json"])


async def test_an_import_stopped_part_way_is_completed_by_the_next_and_another_log_refused(
    make_memory: Any, extractor: RecordingExtractor, db_url: str, tmp_path: Any, held: str
) -> None:
    """An import appends a thousand events a transaction: one stopped (killed, or the
    disk full) leaves the start of a user's log. Running it again appends the rest; a
    log of the same user that is not the one imported is refused, line named."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as source:
        lines = list(source.export("ann"))
        expected = source.state("ann")
    half = len(lines) // 2
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        assert target.import_lines(lines[:half]) == {"ann": half}
        assert target.import_lines(lines) == {"ann": len(lines) - half}
        copied = target.state("ann")
        assert (copied.version, copied.buffer, copied.tasks, copied.knowledge) == (
            expected.version,
            expected.buffer,
            expected.tasks,
            expected.knowledge,
        )
        assert verify(target.store) == []
        changed = json.loads(lines[3])
        changed["state"]["content"] = "I never said this"
        other = [*lines[:3], json.dumps(changed), *lines[4:]]
        with pytest.raises(ConflictError, match=r"'ann' already has another log .*\(line 4\)"):
            target.import_lines(other)
        assert target.import_lines(lines[:2]) == {"ann": 0}, "all it holds is here"
        assert target.state("ann").version == expected.version


async def test_a_stopped_import_written_to_since_is_refused_saying_how_to_import_it_again(
    make_memory: Any, db_url: str, tmp_path: Any
) -> None:
    """An import stopped after a task's start leaves that task open: a Memory opened
    meanwhile closes it as after a crash, and the log no longer follows the file. The
    import run again says so and how to get out (forget, then import); it then imports
    whole."""
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    await memory.process("ann")
    with Audit(db_url=db_url) as source:
        lines = list(source.export("ann"))
        expected = source.state("ann")
    assert expected.knowledge
    cut = next(i for i, line in enumerate(lines) if "ProcessingStarted" in line) + 1
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        target.import_lines(lines[:cut])
        recovered = target.store.load("ann")
        assert recovered is not None
        assert recovered.close_interrupted(INTERRUPTED_BY_CRASH)
        target.store.append([recovered.collect_events()], Projector(ProjectionTables()).apply)
        with pytest.raises(
            ConflictError, match=rf"\(line {cut + 1}\): it holds the lines before"
        ) as refused:
            target.import_lines(lines)
        assert "`memvee forget ann` and import again" in str(refused.value)
        erase_user(target.store, Projector(ProjectionTables()), None, "ann")
        assert target.import_lines(lines) == {"ann": len(lines)}
        assert target.state("ann").knowledge == expected.knowledge


async def test_an_import_cut_between_two_batches_of_a_task_leaves_a_user_a_memory_flushes(
    make_memory: Any, db_url: str, tmp_path: Path
) -> None:
    """An import by an older memvee that stopped (killed between two of its
    transactions, which ended anywhere) after a batch's outcome and before the next
    batch's claim, or an older memvee's export cut there, leaves a task started with no
    batch out. A Memory opened on the database closes it as after a crash, the rest of
    its messages still buffered, and flushes the user."""
    source_config = MemoryConfig(db_path=str(tmp_path / "source.db"), max_batch_messages=2)
    async with Memory(
        config=source_config, extractor=RecordingExtractor(), embedder=False
    ) as source:
        for city in ("Oslo", "Rome", "Lima"):
            await source.add_exchange("ann", f"I live in {city}", "ok")
        await source.process("ann")
    with Audit(db_path=str(tmp_path / "source.db")) as audit:
        lines = _as_an_older_memvee_wrote(audit.export("ann"))
    cut = next(i for i, line in enumerate(lines) if '"final":false' in line) + 1
    with Audit(db_url=db_url) as target:
        assert target.import_lines(lines[:cut]) == {"ann": cut}
    memory: Memory = await make_memory()
    (task,) = await memory.tasks("ann")
    assert (task.status.value, task.error) == ("FAILED", INTERRUPTED_BY_CRASH)
    assert len(await memory.buffer("ann")) == 4
    async with asyncio.timeout(30):  # a guard: it hung for good
        await memory.flush("ann")
    assert await memory.buffer("ann") == []
    await memory.close()
    with Audit(db_url=db_url) as target:
        assert verify(target.store) == []
        at_close = target.state("ann", version=cut + 1)
        assert [(t.status, t.error) for t in at_close.tasks] == [("FAILED", INTERRUPTED_BY_CRASH)]
        assert len(at_close.buffer) == 4


def _moved_home(path: Path, messages_before: int) -> list[str]:
    """The export of a log (stored at ``path``) of ``messages_before`` messages, then
    "I live in Oslo." extracted, then "I moved to Bergen." extracted as an update: the
    end of the Oslo entry is its last line, written in one decision with the line before
    (line ``messages_before + 9``, the Bergen extraction)."""
    limits = BatchLimits(max_messages=10_000, max_tokens=10**9)
    log = UserLog.register("eve")
    for i in range(messages_before):
        log.add_message("user", f"hello {i}", None, 100)
    homes: list[dict[str, Any]] = []
    for task, said_text in (("t1", "I live in Oslo."), ("t2", "I moved to Bergen.")):
        said = log.add_message("user", said_text, None, 100)
        assert log.request_processing(task, "manual") and log.start_next(limits)
        home = f"User lives in {said_text.split()[-1]}"
        fact = ExtractedFact(home, (said,), *(("update", homes[0]["entry_id"]) if homes else ()))
        homes += log.record_knowledge(task, [fact], "rules", limits=limits)
    with Audit(db_path=str(path)) as source:
        source.store.append([log.collect_events()], Projector(ProjectionTables()).apply)
        lines = list(source.export("eve"))
    assert (
        '"KnowledgeSuperseded"' in lines[-1].replace(":UserLog.", '"') or "Superseded" in lines[-1]
    )
    return lines


async def test_an_import_stopped_after_a_transaction_never_leaves_half_a_decision(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import commits a thousand events a transaction, each run on to the end of the
    decision under way: one stopped after its first (killed, the disk full) where the
    thousandth event is an extraction that updated a fact holds the end of the fact it
    replaced too, never both homes current, and a run again completes it."""
    lines = _moved_home(tmp_path / "source.db", 991)
    assert len(lines) == 1001 and "KnowledgeExtracted" in lines[999]
    with Audit(db_url=db_url) as target:
        append = target.store.append
        transactions: list[int] = []

        def disk_full_after_one(batches: Any, *args: Any, **kwargs: Any) -> Any:
            if transactions:
                raise StorageError("could not store the events: disk full")
            transactions.append(sum(map(len, batches)))
            return append(batches, *args, **kwargs)

        monkeypatch.setattr(target.store, "append", disk_full_after_one)
        with contextlib.suppress(StorageError):
            target.import_lines(lines)
        homes = [entry.text for entry in target.knowledge("eve")]
        assert homes == ["User lives in Bergen."], "the stopped import left half a decision"
        monkeypatch.setattr(target.store, "append", append)
        assert target.import_lines(lines) == {"eve": len(lines) - transactions[0]}
        assert verify(target.store) == []


async def test_a_file_cut_inside_a_decision_is_refused_before_any_of_its_user_is_stored(
    db_url: str, tmp_path: Path
) -> None:
    """An export cut between an extraction that updated a fact and the end of the fact it
    replaced (written together) is no log memvee wrote: imported, it would hold both
    homes as current, and `verify` would find nothing amiss. It is refused, one error
    naming the line, and nothing of the user is stored; the whole file imports."""
    lines = _moved_home(tmp_path / "source.db", 0)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with Audit(db_url=db_url) as target:
        with pytest.raises(InvalidInputError, match=r"stop inside a decision: line 9, a Know"):
            target.import_lines(lines[:-1])
        assert target.users() == []
    refused = CliRunner().invoke(app, ["import", str(cut), "--db-url", db_url])
    assert refused.exit_code == 2, refused.output
    assert "none of 'eve''s lines from line 1 on were imported" in " ".join(refused.output.split())
    with Audit(db_url=db_url) as target:
        assert target.users() == []
        assert target.import_lines(lines) == {"eve": len(lines)}
        assert [entry.text for entry in target.knowledge("eve")] == ["User lives in Bergen."]


def _as_an_older_memvee_wrote(lines: Iterable[str]) -> list[str]:
    """Exported ``lines`` as a memvee that did not count a decision's events wrote them."""
    records = [json.loads(line) for line in lines]
    for record in records:
        record["state"].pop("followed_by", None)
    return [json.dumps(record, separators=(",", ":")) for record in records]


async def test_an_import_onto_a_shorter_other_log_of_the_user_names_the_first_line_it_differs(
    make_memory: Any, extractor: RecordingExtractor, db_url: str, tmp_path: Any
) -> None:
    """The log here is another, and ends before the file: the lines it holds are
    compared before the file's next line is replayed on it, which would blame the file
    (a message seq out of order). Resuming an import after the application wrote to the
    user is the same case."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as source:
        lines = list(source.export("ann"))
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        assert target.import_lines(lines[:4]) == {"ann": 4}
        async with Memory(
            config=MemoryConfig(db_path=str(tmp_path / "copy.db")),
            extractor=OfflineExtractor(),
            embedder=False,
        ) as writer:
            await writer.add_message("ann", "user", "written since the import stopped")
        with pytest.raises(ConflictError, match=r"'ann' already has another log .*\(line 5\)"):
            target.import_lines(lines)
        assert target.state("ann").version == 5


async def test_an_import_that_another_import_of_the_log_overtook_says_so(
    make_memory: Any,
    extractor: RecordingExtractor,
    db_url: str,
    tmp_path: Any,
    held: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two imports of one file at once: the one that lost the race read the log before
    the other appended to it, and is told so, not that another user holds its ids."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as source:
        lines = list(source.export("ann"))
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        target.import_lines(lines)
        monkeypatch.setattr(Audit, "_imported_before", lambda self, run: 0)  # read too early
        with pytest.raises(ConflictError, match="'ann' grew while it was imported"):
            target.import_lines(lines)


async def _exported_history(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> list[str]:
    """The lines of an export of ann, after her history."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    with Audit(db_url=db_url) as source:
        return list(source.export("ann"))


async def test_a_run_with_a_bad_last_line_stores_none_of_its_lines(
    make_memory: Any, extractor: RecordingExtractor, db_url: str, tmp_path: Any, held: str
) -> None:
    lines = await _exported_history(make_memory, extractor, db_url)
    broken = json.loads(lines[-1])
    broken["version"] += 1
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        with pytest.raises(InvalidInputError, match=f"line {len(lines)}: version"):
            target.import_lines([*lines[:-1], json.dumps(broken)])
        assert target.users() == []
        assert target.import_lines(lines) == {"ann": len(lines)}


async def test_a_users_lines_may_come_in_runs_split_by_another_users(
    make_memory: Any,
    extractor: RecordingExtractor,
    db_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An import of such a file is whole, and run again it appends nothing; a user whose
    log went between two of their runs (forgotten meanwhile) is refused, not continued
    past a gap."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    await memory.add_exchange("bob", "I live in Rome", "ok")
    with Audit(db_url=db_url) as source:
        ann, bob = list(source.export("ann")), list(source.export("bob"))
    half = len(ann) // 2
    lines = [*ann[:half], *bob, *ann[half:]]
    with Audit(db_path=str(tmp_path / "copy.db")) as target:
        assert target.import_lines(lines) == {"ann": len(ann), "bob": len(bob)}
        assert target.import_lines(lines) == {"ann": 0, "bob": 0}
        assert list(target.export("ann")) == ann
        assert verify(target.store) == []

    def forget_ann_after_her_first_run(audit: Audit, run: HeldRun, *args: Any) -> int:
        appended = append(audit, run, *args)
        if run.user_id == "ann" and run.first_line == 1:
            erase_user(audit.store, Projector(ProjectionTables()), None, "ann")
        return appended

    append = Audit._append_imported
    monkeypatch.setattr(Audit, "_append_imported", forget_ann_after_her_first_run)
    with (
        Audit(db_path=str(tmp_path / "other.db")) as target,
        pytest.raises(ConflictError, match=r"'ann''s log here ends at version 0"),
    ):
        target.import_lines(lines)


async def test_the_cli_explains_exports_and_imports(
    make_memory: Any, extractor: RecordingExtractor, db_url: str, tmp_path: Any
) -> None:
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    entry = (await memory.knowledge("ann"))[0]
    await memory.close()
    runner = CliRunner()
    explained = runner.invoke(app, ["explain", "ann", entry.entry_id, "--db-url", db_url])
    assert explained.exit_code == 0 and "I live in town 0" in explained.output
    out = tmp_path / "ann.jsonl"
    exported = runner.invoke(app, ["export", "ann", "--out", str(out), "--db-url", db_url])
    assert exported.exit_code == 0, exported.output
    target = str(tmp_path / "imported.db")
    imported = runner.invoke(app, ["import", str(out), "--db", target])
    assert imported.exit_code == 0 and "imported" in imported.output
    again = runner.invoke(app, ["import", str(out), "--db", target])
    assert again.exit_code == 0 and "'ann': its whole log is here already" in again.output
    verified = runner.invoke(app, ["verify", "--db", target])
    assert verified.exit_code == 0


async def test_the_cli_lists_quarantined_messages_requeues_them_and_shows_spend(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    memory: Memory = await make_memory()
    await quarantine_stamps(memory, extractor, "ann")
    await memory.close()
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--db-url", db_url])
        assert result.exit_code == code, result.output
        return str(result.output)

    assert json.loads(run("quarantine", "--json")) == {"ann": 1}
    (stuck,) = json.loads(run("quarantine", "ann", "--json"))
    assert stuck["content"] == "I collect stamps" and stuck["attempts"] == 3
    assert "unreadable answer" in stuck["error"]
    shown = run("quarantine", "ann")
    assert "I collect stamps" in shown
    short = stuck["message_id"][-8:]  # the CLI shows the random end of an id
    assert short in shown and stuck["message_id"] not in shown
    assert "no user 'bob'" in run("quarantine", "bob", code=2)
    assert "requeued 1 messages" in run("requeue", "ann", "--message", short)
    assert json.loads(run("quarantine", "--json")) == {}
    assert "no quarantined messages" in run("quarantine", "ann")
    assert "requeued 0 messages" in run("requeue", "ann")
    assert "no quarantined message" in run("requeue", "ann", "--message", short, code=2)
    assert "no user 'nobody'" in run("requeue", "nobody", code=2)
    assert "no quarantined message" in run("requeue", "ann", "--message", "nope", code=2)
    stats = json.loads(run("stats", "--json"))
    assert stats["quarantined"] == 0 and stats["buffered"] == 1
    assert stats["spend"] == [] and stats["input_tokens"] == 0, "the stand-in spends nothing"


async def test_a_running_memory_extracts_what_the_cli_requeued_on_its_next_run(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    from events import InvalidExtractionError

    memory: Memory = await make_memory()
    extractor.fault = lambda batch: InvalidExtractionError("unreadable answer")
    await memory.add_exchange("ann", "I collect stamps", "ok")
    await memory.process("ann")
    assert len(await memory.quarantined("ann")) == 2
    extractor.fault = None
    # The operator requeues from a shell while the application runs: its actor holds the
    # log as it was, and a run decided on that would find nothing to do.
    with Audit(db_url=db_url) as audit:
        assert len(audit.requeue("ann")) == 2
    assert await memory.process("ann") > 0
    assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []


async def test_stats_sums_the_tokens_spent_per_extractor_and_model(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    from events import ExtractionResult

    memory: Memory = await make_memory()
    real = extractor.extract

    async def spending(batch: Any) -> ExtractionResult:
        result = await real(batch)
        return ExtractionResult(
            result.facts,
            "claude",
            "claude-x",
            1_000,
            50,
            cache_read_tokens=900,
            cache_write_tokens=10,
        )

    extractor.extract = spending  # type: ignore[method-assign]
    for user in ("ann", "bob"):
        await memory.add_exchange(user, "I like tea", "ok")
        await memory.process(user)
    await memory.close()
    result = CliRunner().invoke(app, ["stats", "--json", "--db-url", db_url])
    stats = json.loads(result.output)
    assert (stats["input_tokens"], stats["output_tokens"]) == (2_000, 100)
    assert (stats["cache_read_tokens"], stats["cache_write_tokens"]) == (1_800, 20)
    assert stats["spend"] == [
        {
            "extractor": "claude",
            "model": "claude-x",
            "calls": 2,
            "input_tokens": 2_000,
            "output_tokens": 100,
            "cache_read_tokens": 1_800,
            "cache_write_tokens": 20,
        }
    ]
    table = CliRunner().invoke(app, ["stats", "--db-url", db_url]).output
    assert "tokens spent" in table and "claude-x" in table


async def test_projections_of_an_older_layout_are_refolded_whole_before_an_import(
    db_url: str, make_memory: Any, tmp_path: Path
) -> None:
    memory: Memory = await make_memory()
    for user in ("ann", "bob"):
        await memory.add_exchange(user, f"{user} lives in Oslo", "ok")
    await memory.close()
    other = Memory(db_path=str(tmp_path / "other.db"), embedder=False)
    async with other:
        await other.add_exchange("cat", "cat lives in Paris", "ok")
    exported = tmp_path / "cat.jsonl"
    result = CliRunner().invoke(
        app, ["export", "cat", "--db", str(tmp_path / "other.db"), "--out", str(exported)]
    )
    assert result.exit_code == 0, result.output
    store = EventStore(db_url)
    with store.transaction() as connection:  # as an older version of memvee left them
        connection.execute(
            text("UPDATE mv_position SET position = position + 1 WHERE name = 'schema'")
        )
    store.close()  # an older layout is upgraded only with the file held alone
    result = CliRunner().invoke(app, ["import", str(exported), "--db-url", db_url])
    assert result.exit_code == 0, result.output
    with Audit(db_url=db_url) as audit:
        assert [u.user_id for u in audit.users()] == ["ann", "bob", "cat"]
    store = EventStore(db_url)
    assert verify(store) == []
    store.close()


class _CountingEmbedder(ConceptEmbedder):
    """The concept embedder, keeping every text it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return super().embed(texts)


_TREES = ("amber", "birch", "cedar", "elder", "hazel", "larch", "maple", "olive", "rowan")


def test_search_embeds_as_a_memorys_search_does_and_says_when_it_left_items(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "m.db")

    async def say() -> None:
        config = MemoryConfig(db_path=db, auto_process=False)
        async with Memory(config=config, embedder=False) as memory:
            for tree in _TREES:
                await memory.add_message("ann", "user", f"The {tree} tree was grey.")

    asyncio.run(say())
    embedder, left = _CountingEmbedder(), []
    with Audit(db_path=db) as audit:
        first = audit.search(
            "ann",
            "amber",
            include_messages=True,
            embedder=embedder,
            embed_seconds=0,
            embed_later=left.append,
        )
        assert embedder.texts == [f"The {t} tree was grey." for t in reversed(_TREES[1:])] + [
            "amber"
        ], "one batch, newest first, then the query"
        assert left == ["ann"]
        assert first.messages[0].message.content == "The amber tree was grey.", "by its words"
        embedder.texts.clear()
        left.clear()
        audit.search(
            "ann",
            "amber",
            include_messages=True,
            embedder=embedder,
            embed_seconds=None,
            embed_later=left.append,
        )
        assert embedder.texts == ["The amber tree was grey.", "amber"] and left == []
        for bad in (-1, float("nan"), True, "1", np.timedelta64(1, "s"), -(10**5000)):
            with pytest.raises(InvalidInputError, match="embed_seconds"):
                audit.search("ann", "amber", embedder=embedder, embed_seconds=bad)  # type: ignore[arg-type]
        embedder.texts.clear()
        audit.search("ann", "amber", embedder=embedder, embed_seconds=np.float32(5))  # type: ignore[arg-type]
        assert embedder.texts[-1] == "amber", "a numpy number of seconds is taken"


async def test_a_rebuild_stopped_midway_leaves_the_log_readable_and_no_user_missing(
    make_memory: Any, extractor: RecordingExtractor, db_url: str
) -> None:
    """The log is the source of truth: export, log and state read it whatever the
    projections hold. What reads the projections says they are being rebuilt, never that
    a user who is in the log does not exist (or was forgotten)."""
    memory: Memory = await make_memory()
    await _history(memory, extractor)
    await memory.close()
    with Audit(db_url=db_url) as audit:

        def read_from_the_log() -> tuple[Any, ...]:
            return list(audit.export("bob")), list(audit.log("bob")), audit.state("bob").version

        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        before = read_from_the_log()
        with pytest.raises(KeyboardInterrupt):
            rebuild(audit.store, progress=stop, page_size=2)  # bob is past the first page
        assert read_from_the_log() == before
        with pytest.raises(StorageError, match="being rebuilt"):
            audit.knowledge("bob")
        with pytest.raises(StorageError, match="being rebuilt"):
            await audit.reextract("ann", OfflineExtractor(), "again")
        with pytest.raises(NotFoundError, match="no user 'nobody'"):
            list(audit.log("nobody"))


async def test_a_decision_that_meets_a_conflict_is_retried_after_a_growing_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers retrying at once would meet again on every attempt: each retry waits a
    little longer than the one before."""
    url = sqlite_url(tmp_path / "conflict.db")
    async with Memory(config=MemoryConfig(db_url=url), extractor=OfflineExtractor()) as memory:
        await memory.add_message("ann", "user", "I live in Oslo")
        await memory.flush("ann")
    pauses: list[float] = []
    monkeypatch.setattr(memvee.audit.time, "sleep", pauses.append)
    with Audit(db_url=url) as audit:
        real = audit.store.append
        conflicts = iter(range(3))

        def append(*args: Any, **kw: Any) -> Any:
            if next(conflicts, None) is not None:
                raise ConflictError("another writer")
            return real(*args, **kw)

        monkeypatch.setattr(audit.store, "append", append)
        assert audit._decide("ann", lambda log: "decided") == "decided"
    assert len(pauses) == 3 and pauses == sorted(pauses) and 0 < pauses[0] < 0.1


class _ApplicationsHandler(logging.Handler):
    """An application's own handler on memvee's loggers, with no filter of memvee's: it
    keeps each record as a formatter reading the live exception shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        live = self.formatException(record.exc_info) if record.exc_info else ""
        self.shown.append(f"{record.getMessage()} | {record.exc_text or ''} | {live}")

    def formatException(self, ei: Any) -> str:
        return f"<{ei[0].__name__}: {ei[1]}>"


def test_an_audit_opened_without_a_memory_keeps_the_environments_key_from_the_applications_handler(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process opens only Audits (``memvee reextract``, a re-extraction script), no
    Memory: the records memvee logs reach the application's handler without the API key,
    in their message or their exception, and each logger carries one filter however many
    Audits opened. The records reached it raw."""
    key = "sk-ant-audit-DO-NOT-LEAK-42"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    for name in [*OWN_LOGGERS, *logging.root.manager.loggerDict]:
        if name in OWN_LOGGERS or name.startswith("memvee."):
            logger = logging.getLogger(name)
            kept = [each for each in logger.filters if not isinstance(each, RedactSecrets)]
            monkeypatch.setattr(logger, "filters", kept)  # as in a process no Memory opened
    handler = _ApplicationsHandler()
    logging.getLogger("memvee").addHandler(handler)
    try:
        with Audit(db_url=db_url), Audit(db_url=db_url):
            for name in OWN_LOGGERS:
                try:
                    raise ValueError(f"Illegal header value b'{key}'")
                except ValueError:
                    logging.getLogger(name).error(
                        "%s: re-extraction with %s", name, key, exc_info=True
                    )
    finally:
        logging.getLogger("memvee").removeHandler(handler)

    assert handler.shown and not [line for line in handler.shown if "DO-NOT-LEAK" in line]
    assert all("re-extraction with [redacted]" in line for line in handler.shown), handler.shown
    held = {name: logging.getLogger(name).filters for name in OWN_LOGGERS}
    assert {
        name: sum(isinstance(f, RedactSecrets) for f in filters) for name, filters in held.items()
    } == dict.fromkeys(OWN_LOGGERS, 1)


def test_every_public_name_of_the_audit_module_loads_and_says_what_it_is() -> None:
    """What an Audit's calls return is importable from ``memvee.audit`` (the bulk run's
    report too, only from a private module before) and listed by ``dir()``, each class
    documented, and importing the module brings no Anthropic SDK until the report is
    named."""
    probe = (
        "import sys, inspect, memvee.audit as audit; before = 'anthropic' in sys.modules; "
        "listed = set(audit.__all__) <= set(dir(audit)); "
        "names = [getattr(audit, n) for n in audit.__all__]; "
        "print(before, listed, all(c.__doc__ for c in names if inspect.isclass(c)), "
        "audit.BulkReport.__name__, audit.Audit.reextract_in_bulk.__annotations__['return'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True", "True", "BulkReport", "BulkReport"]
