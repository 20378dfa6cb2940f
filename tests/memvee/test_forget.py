"""forget: a user is erased in one transaction, with a receipt, and stays erased."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

import actors.engine
import actors.erasure
from actors._traces import TraceScrubber
from events import EventStore, StorageError, user_log_id
from memvee import Memory, ProcessStatus, UnknownTaskError, UserForgottenError, UserSummary
from memvee.audit import Audit
from memvee.extractors import OfflineExtractor
from projections import ProjectionTables, rebuild, verify
from tests.support.embedders import ConceptEmbedder
from tests.support.extractors import RecordingExtractor
from tests.support.verification import differences

SECRET = "my locker code is zebra-4471"
SHARED = {"leases": True}
"""Two Memories on one database: another process, as on a database server."""


async def _history(memory: Memory, user: str, turns: int = 6) -> None:
    for i in range(turns):
        await memory.add_exchange(user, f"I live in Oslo. Note {i}: {SECRET}", f"ok {i}")
    await memory.flush(user)


async def test_forget_erases_the_log_and_every_projection_and_says_how_much(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    memory: Memory = await make_memory(
        extractor=OfflineExtractor(),
        embedder=ConceptEmbedder(),
        config={"snapshot_interval": 5, "checkpoint_interval": 5},
    )
    await _history(memory, "ann")
    await _history(memory, "bob")
    engine = memory._engine
    assert engine is not None
    assert await asyncio.to_thread(engine.checkpointer.wait_idle, 30)
    await memory.retrieve("ann", "Oslo", include_messages=True)
    before = await memory.user("ann")
    assert before is not None
    held = await asyncio.to_thread(_rows_of, engine.store, "ann")
    assert held[ProjectionTables().citations.name] == 6

    receipt = await memory.forget("ann")

    assert receipt.user_id == "ann" and receipt.events == before.version
    assert receipt.snapshots >= 1
    assert receipt.rows["messages"] == 12 and receipt.rows["knowledge"] == 1
    assert receipt.rows["tasks"] >= 1 and receipt.rows["users"] == 1
    assert receipt.rows["citations"] == 6, "Oslo's first statement, and the five said again"
    assert receipt.rows["vectors"] >= 1 and receipt.rows["checkpoints"] >= 1
    assert receipt.total > receipt.events
    assert await memory.messages("ann") == [] and await memory.knowledge("ann", history=True) == []
    assert await memory.buffer("ann") == [] and await memory.tasks("ann") == []
    assert await memory.user("ann") is None
    assert len(await memory.retrieve("ann", "Oslo locker zebra", include_messages=True)) == 0
    assert len(await memory.messages("bob")) == 12, "other users are untouched"
    assert len(await memory.retrieve("bob", "zebra locker", include_messages=True)) > 0

    await memory.close()
    store = EventStore(db_url)
    try:
        assert store.events_of("ann") == [] and store.load("ann") is None
        assert _rows_of(store, "ann") == {}, "no row of hers is left, repeats' citations included"
        assert verify(store) == []
        rebuild(store, ProjectionTables())
    finally:
        store.close()
    reopened: Memory = await make_memory()
    assert await reopened.messages("ann") == [] and await reopened.user("ann") is None


def _rows_of(store: EventStore, user_id: str) -> dict[str, int]:
    """How many rows each projection table holds of ``user_id``'s log, those holding any."""
    tables = ProjectionTables()
    log_id = str(user_log_id(user_id))
    with store.engine.connect() as connection:
        counts = {
            table.name: connection.execute(
                select(func.count()).select_from(table).where(table.c.log_id == log_id)
            ).scalar_one()
            for table in (*tables.folded_tables, tables.vectors, tables.checkpoints)
        }
    return {name: count for name, count in counts.items() if count}


async def test_the_erased_words_do_not_linger_in_the_sqlite_files(
    make_memory: Callable[..., Any], db_url: str, db_path: Path
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await _history(memory, "ann")
    await memory.forget("ann")
    await memory.close()
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert files
    for file in files:
        assert b"zebra-4471" not in file.read_bytes(), file.name


async def _erase_after_others_wrote(memory: Memory, db_path: Path) -> None:
    """Write ann's secret among another user's words, forget ann, close, and check the
    database files hold none of the secret (pages ordinary writes freed among them)."""
    await _history(memory, "ann", turns=10)
    for i in range(10):
        await memory.add_exchange("bob", f"I live in Rome. Note {i}", f"ok {i}")
    await memory.flush("bob")
    receipt = await memory.forget("ann")
    await memory.close()
    assert receipt.scrubbed
    for file in (p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)):
        assert b"zebra-4471" not in file.read_bytes(), file.name


async def test_the_erased_words_do_not_linger_in_the_sqlite_files_after_an_earlier_forget(
    make_memory: Callable[..., Any], db_url: str, db_path: Path
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    memory: Memory = await make_memory(
        extractor=OfflineExtractor(), config={"snapshot_interval": 2, "checkpoint_interval": 2}
    )
    await memory.add_exchange("zed", "hello", "hi")
    await memory.forget("zed")

    await _erase_after_others_wrote(memory, db_path)


@pytest.fixture
def secure_delete_off_by_default() -> Iterator[None]:
    """Every new SQLite connection starts with ``secure_delete`` off, as on SQLite builds
    compiled without ``SQLITE_SECURE_DELETE`` (SQLite's own default)."""

    def _off(dbapi_connection: Any, _: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA secure_delete=OFF")

    sa_event.listen(Engine, "connect", _off)
    yield
    sa_event.remove(Engine, "connect", _off)


async def test_the_erased_words_do_not_linger_where_sqlite_keeps_deleted_content_by_default(
    secure_delete_off_by_default: None,
    make_memory: Callable[..., Any],
    db_url: str,
    db_path: Path,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    memory: Memory = await make_memory(
        extractor=OfflineExtractor(), config={"snapshot_interval": 2, "checkpoint_interval": 2}
    )

    await _erase_after_others_wrote(memory, db_path)


def _traces(db_path: Path) -> int:
    """How often the secret's word "zebra" is in the database files: the file, its
    write-ahead log and shared memory, and the full-text index's terms (stored a word
    each). Its digits are not counted: ids and times of the words kept hold "4471" now
    and then (about one run in fifty), which is no trace of the words erased."""
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    return sum(f.read_bytes().count(b"zebra") for f in files)


def _grow_rows_last_to_first(db_path: Path) -> None:
    """Lengthen every stored message row, the last first (as batches that end out of
    order mark their messages): SQLite moves rows between pages to make room."""
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        connection.execute("PRAGMA secure_delete=ON")
        rows = connection.execute("SELECT id FROM mv_messages ORDER BY id DESC").fetchall()
        for (row,) in rows:
            connection.execute("UPDATE mv_messages SET task_id = ? WHERE id = ?", ("t" * 12, row))
    finally:
        connection.close()


def _stale_copies(db_path: Path, word: bytes) -> int:
    """How many more copies of ``word`` the database file holds than its live rows do (a
    file rewritten from them, ``VACUUM INTO``), once the write-ahead log is copied in."""
    rewritten = db_path.with_name("live-rows.db")
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM INTO ?", (str(rewritten),))
    finally:
        connection.close()
    live = rewritten.read_bytes().count(word)
    rewritten.unlink()
    return db_path.read_bytes().count(word) - live


async def test_no_copy_of_the_erased_words_stays_in_pages_sqlite_rebuilt_around_them(
    make_memory: Callable[..., Any], db_url: str, db_path: Path
) -> None:
    """A page SQLite rebuilds keeps the bytes of the rows it moved away in its unused
    middle, where ``secure_delete`` never reaches: the words must go all the same."""
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    for i in range(20):
        await memory.add_exchange("ann", f"My locker code is zebra-{i}", f"ok {i}")
        await memory.add_exchange("bob", f"I live in Rome. Note {i}", f"ok {i}")
    _grow_rows_last_to_first(db_path)
    assert _stale_copies(db_path, b"zebra") > 0, "no page kept a moved row's bytes"

    receipt = await memory.forget("ann")

    assert receipt.scrubbed is True
    assert _traces(db_path) == 0
    assert len(await memory.messages("bob")) == 40


def _full_disk(store: EventStore, through: int | None = None) -> None:
    """A rewrite of the file that fails as a full disk does."""
    raise StorageError("the database file was not rewritten: database or disk is full")


async def test_an_erasure_whose_file_could_not_be_rewritten_is_not_said_scrubbed(
    make_memory: Callable[..., Any],
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")

    monkeypatch.setattr(EventStore, "rewrite", _full_disk)
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await _history(memory, "ann", turns=1)

    receipt = await memory.forget("ann")

    assert receipt.scrubbed is False and receipt.total > 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'ann' erased, but" in m and "disk is full" in m for m in warned), warned


async def test_a_rewrite_left_owed_when_the_memory_closed_is_finished_at_its_next_open(
    make_memory: Callable[..., Any],
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once erased, a user cannot be forgotten again (the HTTP and MCP calls answer 404),
    so the rewrite her erasure owed is the next open's to finish."""
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")

    monkeypatch.setattr(EventStore, "rewrite", _full_disk)
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await _history(memory, "ann", turns=1)
    assert (await memory.forget("ann")).scrubbed is False
    await memory.close()
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="memvee")

    reopened: Memory = await make_memory(extractor=OfflineExtractor())

    engine = reopened._engine
    assert engine is not None and engine.scrubber.wait_idle(10)
    assert engine.store.owed_rewrite() == 0 and not engine.store.rewrite_owed
    assert any("rewrite of the database file did not finish" in m for m in caplog.messages)


async def test_words_a_reader_holds_in_the_files_are_reported_and_scrubbed_once_it_ends(
    make_memory: Callable[..., Any],
    db_url: str,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    monkeypatch.setattr(actors.erasure, "TRUNCATE_WAIT_MS", 0)
    caplog.set_level(logging.INFO, logger="memvee")
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    engine = memory._engine
    assert engine is not None
    engine.scrubber = TraceScrubber(engine.store, retry_delay=0.01, retry_max=0.01)
    await _history(memory, "ann")
    reader = sqlite3.connect(db_path, isolation_level=None)  # a backup, say, mid-read
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM mv_users").fetchall()

    receipt = await memory.forget("ann")

    assert receipt.scrubbed is False and receipt.total > 0
    assert _traces(db_path) > 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'ann' erased, but the erased words stay" in m for m in warned), warned
    assert not any("zebra" in m for m in caplog.messages)

    reader.execute("COMMIT")
    reader.close()
    deadline = time.monotonic() + 10
    while engine.scrubber.remaining and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert engine.scrubber.remaining == frozenset()
    assert _traces(db_path) == 0, "gone while the Memory is still open"


async def test_an_erasure_no_reader_holds_off_is_scrubbed_when_it_returns(
    make_memory: Callable[..., Any], db_url: str, db_path: Path
) -> None:
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await _history(memory, "ann")

    receipt = await memory.forget("ann")

    assert receipt.scrubbed is True
    if db_url.startswith("sqlite"):
        assert _traces(db_path) == 0


async def test_a_task_running_when_the_user_is_forgotten_fails_and_writes_nothing_back(
    make_memory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memvee")
    extractor = RecordingExtractor(gated=True)
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    task = memory.process_async("ann")
    await asyncio.to_thread(extractor.started.wait, 10)
    receipt = await memory.forget("ann")
    assert receipt.events > 0
    extractor.gate.set()
    with pytest.raises(UserForgottenError, match=r"the user was forgotten$"):
        await task.wait()
    await asyncio.sleep(0.2)
    assert await memory.messages("ann") == [] and await memory.knowledge("ann") == []
    assert await memory.user("ann") is None
    # The late answer is an expected race of forget, not a fault to warn about.
    for _ in range(200):
        if any("the answer is dropped" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the extraction's late answer was never dropped")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_batch_waiting_for_extraction_is_not_sent_once_its_user_is_forgotten(
    make_memory: Callable[..., Any],
) -> None:
    """A forgotten user's batch queued behind another user's extraction never goes to the
    extractor (an LLM API): after forget returns, none of their text is sent."""
    extractor = RecordingExtractor(gated=True)
    memory: Memory = await make_memory(extractor=extractor, config={"extraction_concurrency": 1})
    await memory.add_exchange("bob", "I live in Oslo", "ok")
    await memory.add_exchange("ann", SECRET, "noted")
    bob = memory.process_async("bob")
    await asyncio.to_thread(extractor.started.wait, 10)
    ann = memory.process_async("ann")
    await memory.forget("ann")
    assert ann.status is ProcessStatus.FAILED
    extractor.gate.set()
    await bob.wait()
    await memory.add_exchange("ann", "I live in Bergen", "ok")
    await memory.process("ann")  # the batches of ann's new log go
    sent = [m.content for batch in extractor.batches for m in batch.messages]
    assert sent == ["I live in Oslo", "ok", "I live in Bergen", "ok"]


async def test_no_task_of_a_forgotten_user_is_found_nor_one_it_ended(
    make_memory: Callable[..., Any],
) -> None:
    extractor = RecordingExtractor(gated=True)
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    done = memory.process_async("ann")
    extractor.gate.set()
    await done.wait()
    extractor.gate.clear()
    extractor.started.clear()
    await memory.add_exchange("ann", "I moved to Bergen", "ok")
    running = memory.process_async("ann")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    await memory.forget("ann")
    extractor.gate.set()
    assert running.status is ProcessStatus.FAILED, "the caller's handle says how it ended"
    assert await memory.tasks("ann") == []
    for task in (done, running):
        with pytest.raises(UnknownTaskError):
            await memory.get_task("ann", task.task_id)


async def test_no_task_is_found_of_a_user_whose_forget_the_caller_stopped_waiting_for(
    memory: Memory,
) -> None:
    """A forget cancelled once sent (a timeout around it, a Ctrl-C) still erases the user;
    the handles of the tasks it erased were still answered from memory."""
    await memory.add_exchange("ann", "My PIN is 4711", "noted")
    done = memory.process_async("ann")
    await done.wait()

    forgetting = asyncio.ensure_future(memory.forget("ann"))
    await asyncio.sleep(0)  # sent to ann's actor
    forgetting.cancel()
    assert await memory.requeue("ann") == 0  # answered after the forget: one inbox, in order

    assert await memory.user("ann") is None
    with pytest.raises(UnknownTaskError):
        await memory.get_task("ann", done.task_id)


@pytest.mark.parametrize("caller", ["waits", "stops waiting"])
async def test_a_task_begun_after_a_forget_keeps_its_handle_when_both_end_together(
    memory: Memory, caller: str
) -> None:
    """A task requested after the forget runs on the new log: the forget's end dropped its
    handle too when both answers came in one inbox batch, and get_task no longer found a
    task this very Memory had just run."""
    await memory.add_exchange("ann", "My PIN is 4711", "noted")
    forgetting = asyncio.ensure_future(memory.forget("ann"))
    await asyncio.sleep(0)  # sent to ann's actor
    if caller == "stops waiting":
        forgetting.cancel()
    task = memory.process_async("ann")
    # The loop is held, so the forget's answer and the task's end arrive in one batch.
    time.sleep(1.0)  # noqa: ASYNC251 - holding the loop is the point
    await task.wait()
    if caller == "waits":
        await forgetting

    assert (await memory.get_task("ann", task.task_id)).task_id == task.task_id


@pytest.mark.parametrize("actor", ["ran ahead of the loop", "gets the write with the forget"])
async def test_a_task_the_users_actor_began_before_a_forget_loses_its_handle_with_the_user(
    make_memory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, actor: str
) -> None:
    """An automatic run the user's actor requested before the forget reached it, though
    the loop had not yet made its handle when the forget was sent, is erased with the
    user: get_task answered it from memory still, after the log was gone."""
    memory: Memory = await make_memory(config={"auto_process": True, "batch_threshold": 1})
    observer = memory._observer
    assert observer is not None
    announced: list[str] = []
    announce = observer.task_scheduled

    def heard(user_id: str, task_id: str, trigger: str, *, stored: bool) -> None:
        announced.append(task_id)
        announce(user_id, task_id, trigger, stored=stored)

    await memory.add_message("ann", "user", "I live in Oslo")
    await memory.flush("ann")  # ann's actor is live: a call sent reaches it at once
    monkeypatch.setattr(observer, "task_scheduled", heard)
    adding = asyncio.ensure_future(memory.add_message("ann", "user", "My PIN is 4711"))
    await asyncio.sleep(0)  # the write is queued, to be sent on the loop's next turn
    if actor == "ran ahead of the loop":
        await asyncio.sleep(0)  # sent
        # The actor requests the automatic run, maybe runs it; the loop, held, hears none.
        time.sleep(0.5)  # noqa: ASYNC251 - holding the loop is the point
        assert announced, "the actor requested no automatic run"
    await memory.forget("ann")  # a write still queued is sent first
    await adding

    assert await memory.user("ann") is None, "the write reached the actor after the forget"
    assert announced, "the actor requested no automatic run"
    for task_id in announced:
        with pytest.raises(UnknownTaskError):
            await memory.get_task("ann", task_id)
    assert await memory.tasks("ann") == []


async def test_a_forget_that_fails_after_its_caller_stopped_waiting_is_logged(
    memory: Memory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody waits for its answer any more: the failure to erase the user was dropped."""

    def refused(*args: Any) -> Any:
        raise StorageError("could not forget user 'ann': database is locked")

    await memory.add_exchange("ann", "My PIN is 4711", "noted")
    monkeypatch.setattr(actors.engine, "erase_user", refused)
    forgetting = asyncio.ensure_future(memory.forget("ann"))
    await asyncio.sleep(0)  # sent to ann's actor
    forgetting.cancel()
    await memory.requeue("ann")  # answered after the forget: one inbox, in order

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "forgetting user 'ann' failed after its caller stopped waiting: "
        "could not forget user 'ann': database is locked"
    ]
    assert len(await memory.messages("ann")) == 2


async def test_no_task_is_found_that_another_memory_erased_since_it_ended_here(
    make_memory: Callable[..., Any],
) -> None:
    """The Memory that ran a task remembers how it ended; once another Memory (another
    process) forgets the user, get_task no longer answers it from there, as tasks() does
    not. A task that never reached the log (nothing to process) is still answered."""
    here: Memory = await make_memory(config=SHARED)
    other: Memory = await make_memory(config=SHARED)
    idle = here.process_async("bob")
    assert await asyncio.wait_for(idle.wait(), 10) == 0
    await here.add_exchange("ann", "I live in Oslo", "ok")
    done = here.process_async("ann")
    assert await asyncio.wait_for(done.wait(), 10) == 1
    with pytest.raises(UnknownTaskError):
        await here.get_task("bob", done.task_id)
    assert await here.get_task("ann", done.task_id) is done
    await other.forget("ann")
    assert await here.tasks("ann") == []
    with pytest.raises(UnknownTaskError):
        await here.get_task("ann", done.task_id)
    assert await here.get_task("bob", idle.task_id) is idle


async def test_a_task_that_ended_here_is_answered_while_a_rebuild_has_not_folded_it_yet(
    make_memory: Callable[..., Any],
) -> None:
    """Missing from tables a rebuild is filling again, the task is not taken for erased."""
    memory: Memory = await make_memory(config=SHARED)
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    done = memory.process_async("ann")
    assert await asyncio.wait_for(done.wait(), 10) == 1
    engine = memory._engine
    assert engine is not None
    tasks, position = engine.tables.tasks, engine.tables.position
    with engine.store.transaction() as connection:
        connection.execute(delete(tasks).where(tasks.c.task_id == done.task_id))
        connection.execute(insert(position).values(name="rebuilding", position=0))
    assert await memory.get_task("ann", done.task_id) is done
    with engine.store.transaction() as connection:
        connection.execute(delete(position).where(position.c.name == "rebuilding"))
    with pytest.raises(UnknownTaskError):
        await memory.get_task("ann", done.task_id)


async def test_writing_to_a_forgotten_user_starts_a_new_empty_log(memory: Memory) -> None:
    await memory.add_exchange("ann", "first life", "ok")
    await memory.forget("ann")
    said, _ = await memory.add_exchange("ann", "second life", "ok")
    assert said.seq == 1
    assert [m.content for m in await memory.messages("ann")] == ["second life", "ok"]
    summary = await memory.user("ann")
    assert summary is not None and summary.message_count == 2


@pytest.mark.parametrize("shared", [False, True])
async def test_forgetting_a_user_never_written_erases_nothing(
    make_memory: Callable[..., Any], shared: bool
) -> None:
    """With leases too: the forget took the user's lease, then counted it as erased."""
    memory: Memory = await make_memory(config=SHARED if shared else {})
    receipt = await memory.forget("nobody")
    assert receipt.total == 0
    assert set(receipt.rows) >= {
        *("quarantine", "tasks", "usage", "knowledge", "citations"),
        *("messages", "users", "vectors", "checkpoints", "search", "bulk_requests"),
    }


class _HeldEmbedder(ConceptEmbedder):
    """Holds its first call until :attr:`release` is set: an embedding API that is slow to
    answer while the user is forgotten."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return super().embed(texts)


async def test_vectors_embedded_while_their_user_was_forgotten_are_not_stored(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """An embedding may come back after the user it was asked for was erased: its vectors
    (which give away what the text said) must not outlive the erasure."""
    embedder = _HeldEmbedder()
    memory: Memory = await make_memory(embedder=embedder)
    engine = memory._engine
    assert engine is not None and engine.vector_filler is not None
    await memory.add_exchange("ann", SECRET, "noted")
    assert await asyncio.to_thread(embedder.entered.wait, 10)
    await memory.forget("ann")
    embedder.release.set()
    assert await asyncio.to_thread(engine.vector_filler.wait_idle, 10)
    vectors = engine.tables.vectors
    with engine.store.engine.connect() as connection:
        left = connection.execute(select(func.count()).select_from(vectors)).scalar()
    assert left == 0


async def test_a_user_forgotten_by_another_process_starts_afresh_where_this_one_writes_next(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """This process's actor still holds the erased log: its next write is refused by the
    database (no version before it), so the actor reloads and begins a new log, instead
    of storing the write past a gap that would leave the user's log unloadable."""
    here: Memory = await make_memory(config=SHARED)
    other: Memory = await make_memory(config=SHARED)
    await here.add_exchange("ann", SECRET, "noted")
    await other.forget("ann")
    stored = await here.add_exchange("ann", "I live in Oslo", "ok")
    assert [m.seq for m in stored] == [1, 2]
    assert [m.content for m in await here.messages("ann")] == ["I live in Oslo", "ok"]
    await here.close()
    store = EventStore(db_url)
    try:
        loaded = store.load("ann")
        assert loaded is not None and loaded.message_count == 2
        assert verify(store) == []
    finally:
        store.close()


async def test_a_search_here_finds_what_a_user_forgotten_elsewhere_wrote_since(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """This process searched the user's messages by meaning (their vectors cached); another
    process forgets the user, who then writes as many messages here: their meaning finds
    the new ones, as in a Memory opened afresh, and nothing of the erased ones."""
    here: Memory = await make_memory(config=SHARED, embedder=ConceptEmbedder())
    other: Memory = await make_memory(config=SHARED)
    ask = "any animal?"
    await here.add_exchange("ann", "Quantum chromodynamics lecture tomorrow", "Good luck")
    assert (await here.retrieve("ann", ask, include_messages=True)).messages == []
    await other.forget("ann")
    await here.add_exchange("ann", "My cat Whiskers sleeps all day", "Cute kitten")
    found = await here.retrieve("ann", ask, include_messages=True)
    assert [m.message.content for m in found.messages] == ["Cute kitten"]


async def test_an_audit_forgets_a_user_another_process_owns_as_a_memory_does(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """What `memvee forget` runs: the log goes, the live owner keeps its lease (no
    other process takes the user from it), and it starts the user afresh where it
    writes next; other users are untouched."""
    owner: Memory = await make_memory(config=SHARED)
    await owner.add_exchange("ann", SECRET, "noted")
    await owner.add_exchange("bob", "I live in Rome", "ok")
    with Audit(db_url=db_url, create=False) as audit:
        receipt = await asyncio.to_thread(audit.forget, "ann")
        assert (await asyncio.to_thread(audit.forget, "nobody")).total == 0
    assert receipt.user_id == "ann" and receipt.events > 0 and receipt.scrubbed
    assert receipt.rows["leases"] == 0 and receipt.rows["messages"] == 2
    assert await owner.user("ann") is None
    stored = await owner.add_exchange("ann", "I live in Oslo", "ok")
    assert [m.seq for m in stored] == [1, 2]
    assert len(await owner.messages("bob")) == 2


def test_an_audit_forget_the_database_fails_is_a_storage_error_naming_the_user(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is gone as an audit's forget begins: the caller gets a
    :class:`StorageError` naming the user, with the driver's words but not the statement;
    it used to get SQLAlchemy's own error."""

    def gone(*args: Any) -> Any:
        raise OperationalError("SELECT secret_statement", {}, Exception("server closed"))

    with Audit(db_url=db_url) as audit, monkeypatch.context() as patch:
        patch.setattr(audit.store.engine, "connect", gone)
        with pytest.raises(StorageError, match="could not forget user 'ann'") as refused:
            audit.forget("ann")
    assert "server closed" in str(refused.value)
    assert "secret_statement" not in str(refused.value)


async def test_words_a_reader_kept_in_the_files_when_an_audit_forgot_go_by_its_close(
    make_memory: Callable[..., Any],
    db_url: str,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-shot command cannot scrub in the background for long: the receipt says
    ``scrubbed=False`` and the audit's close tries once more, once the reader is done."""
    if not db_url.startswith("sqlite"):
        pytest.skip("file contents are a SQLite matter")
    monkeypatch.setattr(actors.erasure, "TRUNCATE_WAIT_MS", 0)
    memory: Memory = await make_memory(extractor=OfflineExtractor())
    await _history(memory, "ann", turns=1)
    await memory.close()
    audit = Audit(db_url=db_url, create=False)
    reader = sqlite3.connect(db_path, isolation_level=None)  # a backup, say, mid-read
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM mv_users").fetchall()
        receipt = audit.forget("ann")
        assert receipt.scrubbed is False and _traces(db_path) > 0
    finally:
        reader.execute("COMMIT")
        reader.close()
        audit.close()
    assert _traces(db_path) == 0


async def _forgotten_and_begun_again(
    here: Memory, other: Memory, begin: Callable[[], Any]
) -> tuple[UserSummary, UserSummary]:
    """ann says where she lives through ``here``, which extracts it and keeps her log;
    ``other`` forgets her and ``begin`` writes her new log up to the version ``here``
    holds. Returns ann as ``here`` left her, and as begun again."""
    await here.add_exchange("ann", "I live in Oslo.", "noted")
    assert await here.process("ann") == 1
    held = await here.user("ann")
    assert held is not None and held.knowledge_count == 1
    await other.forget("ann")
    while (begun := await other.user("ann")) is None or begun.version < held.version:
        await begin()
    assert begun.version == held.version
    return held, begun


async def test_a_write_decided_on_a_log_forgotten_and_begun_again_elsewhere_is_decided_again(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """Another process forgets the user, who says and has extracted as much there as
    before, so the new log reaches the very version this process's actor holds: the
    database alone cannot tell the two logs apart (the version before the write is
    stored, and no message number repeats). The write checks that the stored log began
    when the actor's did, so it is decided again on the new log: nothing of the forgotten
    log comes back, not even in the snapshot of the actor's state taken with the write."""
    here: Memory = await make_memory(
        extractor=OfflineExtractor(), config={**SHARED, "snapshot_interval": 1}
    )
    other: Memory = await make_memory(extractor=OfflineExtractor(), config=SHARED)

    async def begin() -> None:
        await other.add_exchange("ann", "I live in Rome.", "noted")
        await other.process("ann")

    await _forgotten_and_begun_again(here, other, begin)

    stored = await here.add_exchange("ann", "I have a dog.", "ok")

    assert [m.seq for m in stored] == [3, 4]
    (rome,) = await here.knowledge("ann")
    await here.close()
    await other.close()
    assert differences(db_url) == []
    store = EventStore(db_url)
    try:
        loaded = store.load("ann")  # from the snapshot taken with the write
    finally:
        store.close()
    assert loaded is not None and loaded.version == 8
    assert loaded.valid_entries == {rome.entry_id: "live"}  # not the forgotten Oslo entry


async def test_a_row_remembered_from_a_log_forgotten_and_begun_again_elsewhere_is_read_back(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """The write path remembers the summary row it wrote last, and reads it back only
    when it may have changed: it is not the row of the log begun again at its version."""
    here: Memory = await make_memory(extractor=OfflineExtractor(), config=SHARED)
    other: Memory = await make_memory(config=SHARED)

    async def begin() -> None:
        await other.add_message("ann", "user", "Hello again.")

    held, begun = await _forgotten_and_begun_again(here, other, begin)

    await here.add_exchange("ann", "I live in Rome.", "ok")

    after = await here.user("ann")
    assert after is not None and held.knowledge_count == 1 and after.knowledge_count == 0
    assert after.message_count == begun.message_count + 2
    assert after.buffered_count == begun.buffered_count + 2
    await here.close()
    await other.close()
    assert differences(db_url) == []


async def test_a_task_running_elsewhere_when_its_user_is_forgotten_records_nothing(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """This process extracts while another forgets the user and the user writes again:
    the facts of the forgotten words must not reach the new log (the database refuses
    them past the gap), and the new log goes on as any other."""
    extractor = RecordingExtractor(gated=True)
    here: Memory = await make_memory(extractor=extractor, config=SHARED)
    other: Memory = await make_memory(extractor=OfflineExtractor(), config=SHARED)
    await here.add_exchange("ann", SECRET, "noted")
    task = here.process_async("ann")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    await other.forget("ann")
    await other.add_exchange("ann", "I live in Rome", "ok")
    extractor.gate.set()
    # Whichever tells first, the handle following the projection or the actor's record,
    # says why (the record said "the log is gone").
    with pytest.raises(UserForgottenError, match=r"the user was forgotten$"):
        await task.wait()
    assert await here.knowledge("ann", history=True) == []
    assert await other.process("ann") == 1
    assert all(SECRET not in entry.text for entry in await other.knowledge("ann", history=True))
    await here.close()
    await other.close()
    assert differences(db_url) == []


def test_a_forget_in_flight_when_the_opening_loop_stops_is_not_kept_by_the_close(
    db_url: str,
) -> None:
    """A forget sent just before the loop that opened the Memory stops never hears its
    end there; the close from another loop drops it all the same, so the tasks the user
    begins after a reopen are not gathered for an erasure that will never end."""
    memory = Memory(db_url=db_url, extractor=OfflineExtractor(), embedder=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(memory.open(), loop).result(30)
    asyncio.run_coroutine_threadsafe(memory.add_message("ann", "user", "hi"), loop).result(30)

    forgets: list[asyncio.Future[Any]] = []  # never ended: their loop stops first

    async def forget_then_stop() -> None:
        forgets.append(asyncio.ensure_future(memory.forget("ann")))
        await asyncio.sleep(0)
        loop.stop()  # before the forget's answer is run

    asyncio.run_coroutine_threadsafe(forget_then_stop(), loop)
    thread.join(10)
    assert len(memory._erasures) == 1, "the forget was sent and never told done"

    async def close_and_reopen() -> None:
        await memory.close()
        assert memory._erasures == {}
        async with memory:
            for turn in range(3):
                await memory.add_message("ann", "user", f"I live in Oslo {turn}")
                await memory.flush("ann")
            assert memory._erasures == {}

    asyncio.run(close_and_reopen())
    loop.close()
