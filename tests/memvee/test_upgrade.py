"""Upgrading memvee over a database an older memvee wrote: every message, fact, task,
quarantine and re-extracted version it showed is there, with no error, and the users carry
on writing.

The fixtures in ``tests/data/upgrade`` are the raw event and snapshot rows older memvees
stored (each names its commit; its README says how it was made), with what that memvee
showed of every user. They cover the three stored forms of an event: full topics with ISO
times, full topics with ``utc_us`` times, and the compact form.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

from events import EventStore, ExtractedFact, ExtractionBatch, sqlite_url
from memvee import Memory, MemoryConfig, ProcessStatus
from memvee.audit import Audit
from memvee.errors import DatabaseInUseError
from projections import ProjectionTables, Projector
from tests.support.extractors import RecordingExtractor
from tests.support.older_layouts import mark_as_layout_17
from tests.support.verification import differences

FIXTURES = Path(__file__).parent.parent / "data" / "upgrade"
MADE_BY = sorted(path.name.removesuffix(".json.gz") for path in FIXTURES.glob("*.json.gz"))


def _fixture(commit: str) -> dict[str, Any]:
    """The rows and the view of the fixture the memvee of ``commit`` made (gzipped JSON)."""
    packed = (FIXTURES / f"{commit}.json.gz").read_bytes()
    loaded: dict[str, Any] = json.loads(gzip.decompress(packed).decode("utf-8"))
    return loaded


def _stored(rows: list[list[Any]]) -> list[StoredEvent]:
    """Stored events of a fixture's rows, their state as the bytes the older memvee wrote."""
    return [
        StoredEvent(UUID(log_id), version, topic, orjson.dumps(state))
        for log_id, version, topic, state in rows
    ]


def _as_left_by(db_url: str, fixture: dict[str, Any]) -> None:
    """Put the older memvee's event and snapshot rows into the empty database at ``db_url``,
    as it stored them (an interrupted task's start included)."""
    store = EventStore(db_url)
    try:
        application: Any = store._app
        application.recorder.insert_events(_stored(fixture["events"]))
        application.snapshots.recorder.insert_events(_stored(fixture["snapshots"]))
    finally:
        store.close()


@pytest.fixture(params=MADE_BY)
def older(request: pytest.FixtureRequest, db_url: str) -> Iterator[dict[str, Any]]:
    """The database at ``db_url`` as the older memvee of the fixture left it."""
    fixture = _fixture(request.param)
    _as_left_by(db_url, fixture)
    yield fixture


def test_the_fixtures_cover_every_stored_form_of_an_event() -> None:
    """Full topics with ISO times, full topics with ``utc_us`` times, short topics with bare
    microseconds: each form an older memvee stored has a fixture."""
    forms = set()
    for commit in MADE_BY:
        _, _, topic, state = _fixture(commit)["events"][1]
        stamp = state["timestamp"]
        forms.add((":" in topic, stamp["_type_"] if isinstance(stamp, dict) else "bare"))
    assert forms == {(True, "datetime_iso"), (True, "utc_us"), (False, "bare")}


async def _view(memory: Memory, user: str) -> dict[str, Any]:
    """What ``memory`` shows of ``user``, in the fixture's terms."""
    return {
        "messages": [
            [m.message_id, m.role, m.content, m.sent_at.isoformat()]
            for m in await memory.messages(user)
        ],
        "knowledge": [
            [k.entry_id, k.text, list(k.source_message_ids), k.task_id]
            for k in await memory.knowledge(user)
        ],
        "tasks": sorted(
            [t.task_id, t.status.value, t.knowledge_count, t.error]
            for t in await memory.tasks(user)
        ),
        "buffer": [b.message_id for b in await memory.buffer(user)],
        "quarantined": [q.message_id for q in await memory.quarantined(user)],
    }


async def test_an_upgraded_memory_shows_every_message_fact_and_task_the_older_one_showed(
    older: dict[str, Any], make_memory: Callable[..., Any], db_url: str
) -> None:
    """Opened by this memvee, the database shows each user as the older memvee did: every
    message with its time, every fact with its sources and task, every task with its
    outcome (one cut short by a kill is closed as interrupted), the buffer and the
    quarantine; a forgotten user stays forgotten, and the rebuilt projections match."""
    memory: Memory = await make_memory()
    for user, shown in older["expected"].items():
        if shown is None:
            assert await memory.user(user) is None, user
            continue
        assert await _view(memory, user) == shown, user
        summary = await memory.user(user)
        assert summary is not None
        assert summary.message_count == len(shown["messages"])
    await memory.close()
    assert differences(db_url) == []


async def test_an_upgraded_memory_keeps_the_re_extracted_versions(
    older: dict[str, Any], make_memory: Callable[..., Any], db_url: str
) -> None:
    """A knowledge version the older memvee re-extracted, not promoted, is still there."""
    await (await make_memory()).close()
    audit = Audit(db_url=db_url)
    try:
        for user, versions in older["reextracted"].items():
            for version, count in versions.items():
                assert len(audit.knowledge(user, version=version)) == count, (user, version)
    finally:
        audit.close()


async def test_every_user_of_an_upgraded_database_writes_and_processes_on(
    older: dict[str, Any], make_memory: Callable[..., Any], db_url: str
) -> None:
    """Each user an older memvee wrote (loaded from its snapshots and events) takes a new
    exchange and has it processed, quarantined messages requeued, and loses nothing."""
    memory: Memory = await make_memory()
    started = datetime.now().astimezone()
    for user, shown in older["expected"].items():
        if shown is None:
            continue
        if shown["quarantined"]:
            assert await memory.requeue(user) == len(shown["quarantined"])
        await memory.add_exchange(user, f"I keep a bicycle named {user}-bike", "ok")
        await memory.flush(user)
        messages = [m.message_id for m in await memory.messages(user)]
        assert messages[: len(shown["messages"])] == [m[0] for m in shown["messages"]]
        assert len(messages) == len(shown["messages"]) + 2
        assert await memory.buffer(user) == []
        tasks = await memory.tasks(user)
        assert {t.task_id for t in tasks} >= {t[0] for t in shown["tasks"]}
        assert all(t.status in (ProcessStatus.COMPLETED, ProcessStatus.FAILED) for t in tasks)
        newest = [k for k in await memory.knowledge(user) if k.valid_from >= started]
        assert any(f"{user}-bike" in k.text for k in newest), user
    await memory.close()
    assert differences(db_url) == []


async def test_a_sqlite_file_of_the_oldest_layout_opens_showing_what_its_memvee_showed(
    tmp_path: Path,
) -> None:
    """The SQLite file itself (``a1f6344.sqlite.gz``, its projections of layout 2, with
    their full-text tables, beside the log): this memvee lays the projections out anew and
    refolds them, and shows every user as that memvee did."""
    path = tmp_path / "memvee.db"
    path.write_bytes(gzip.decompress((FIXTURES / "a1f6344.sqlite.gz").read_bytes()))
    expected = _fixture("a1f6344")["expected"]
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as memory:
        for user, shown in expected.items():
            if shown is None:
                assert await memory.user(user) is None, user
            else:
                assert await _view(memory, user) == shown, user
    url = sqlite_url(path)
    store = EventStore(url)
    try:
        with store.engine.connect() as connection:
            assert Projector(ProjectionTables()).layout_current(connection)
    finally:
        store.close()
    assert differences(url) == []


def _contents(store: EventStore) -> list[str]:
    """Everything the SQLite file of ``store`` holds, as SQL (its write-ahead log read
    too, where a write not yet checkpointed into the file is)."""
    with store.engine.connect() as connection:
        return list(connection.connection.driver_connection.iterdump())  # type: ignore[union-attr]


async def test_a_sqlite_file_an_older_memvee_still_has_open_is_not_upgraded_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite file of layout 17 still open in a process of memvee 17 (its store, with
    leases): a Memory, or an Audit, that would mark its index in place is refused with
    :class:`DatabaseInUseError` before writing anything (the older process would go on
    marking its writes as 17 does, found by no search of 18); once that process has
    closed the file, the Memory opens it upgraded and finds what it holds."""
    monkeypatch.setattr("events.store.HOLD_ALONE_SECONDS", 0.3)  # how long each waits
    path = tmp_path / "memvee.db"
    config = MemoryConfig(db_path=str(path), leases=True)
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as memory:
        await memory.add_exchange("ann", "I like tea.", "Noted.")
    still_running = EventStore(sqlite_url(path))
    mark_as_layout_17(still_running, Projector(ProjectionTables()))
    before = _contents(still_running)
    with pytest.raises(DatabaseInUseError, match="older memvee processes first"):
        async with Memory(config=config, extractor=RecordingExtractor(), embedder=False):
            pass
    with pytest.raises(DatabaseInUseError, match="another process is opening it at this"):
        Audit(db_path=str(path))
    assert _contents(still_running) == before
    with still_running.engine.connect() as connection:
        assert Projector(ProjectionTables()).layout_older(connection)
    still_running.close()
    async with Memory(config=config, extractor=RecordingExtractor(), embedder=False) as memory:
        assert [m.content for m in await memory.messages("ann")] == ["I like tea.", "Noted."]
    store = EventStore(sqlite_url(path))
    try:
        with store.engine.connect() as connection:
            assert Projector(ProjectionTables()).layout_current(connection)
    finally:
        store.close()


async def test_a_first_memvees_fact_updated_by_a_backdated_message_verifies_and_imports(
    db_url: str, make_memory: Callable[..., Any], extractor: RecordingExtractor, tmp_path: Path
) -> None:
    """Upgraded from the first memvees (no entry held a start), bob says he lived in Porto
    in 2020, before the fact "I live in Lisbon" began: Porto is the older entry, ended with
    Lisbon's entry, the first memvee's, as its successor. Nothing was lost: the log
    verifies, and its export imports into another database."""
    _as_left_by(db_url, _fixture("9b73b9c"))
    lisbon = "User said: Hello, I live in Lisbon."

    def update_lisbon(batch: ExtractionBatch) -> tuple[ExtractedFact, ...]:
        (known,) = [entry for entry in batch.known if entry.text == lisbon]
        said = next(m.message_id for m in batch.messages if m.role == "user")
        return (ExtractedFact("User lived in Porto", (said,), "update", known.entry_id),)

    extractor.answer = update_lisbon
    memory: Memory = await make_memory()
    in_2020 = datetime(2020, 1, 1, tzinfo=UTC)
    await memory.add_exchange("bob", "Back in 2020 I lived in Porto.", "ok", sent_at=in_2020)
    await memory.flush("bob")
    history = {k.text: k for k in await memory.knowledge("bob", history=True)}
    porto = history["User lived in Porto"]
    assert porto.superseded_by == history[lisbon].entry_id
    await memory.close()
    assert differences(db_url) == []
    source = Audit(db_url=db_url)
    target = Audit(db_url=sqlite_url(tmp_path / "copy.db"))
    try:
        lines = list(source.export("bob"))
        assert target.import_lines(lines) == {"bob": len(lines)}
    finally:
        source.close()
        target.close()
