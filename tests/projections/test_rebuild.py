"""Guarantee 1: every projection can be dropped and rebuilt from the log, and the
rebuilt state equals the live one."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, inspect, select, text
from typer.testing import CliRunner

import events.store
from actors.erasure import erase_user
from events import (
    EventStore,
    ExtractedFact,
    OlderLayoutError,
    StorageError,
    UserLog,
    sqlite_url,
    user_log_id,
)
from events.errors import NewerEventError, UnreadableEventError
from memvee import Memory, ProcessingError
from memvee.audit import Audit
from memvee.cli import app
from projections import (
    Difference,
    ProjectionTables,
    Projector,
    bring_up_to_date,
    catch_up,
    dump,
    index_messages,
    rebuild,
    rebuild_user,
    verify,
)
from projections.rebuild import SCRATCH_PREFIX
from projections.search import owned_terms, owned_words, owner_token
from tests.support.backends import postgres_url
from tests.support.extractors import RecordingExtractor


async def _busy_history(memory: Memory, extractor: RecordingExtractor) -> None:
    for user in ("ann", "ben", "cat"):
        for i in range(6):
            await memory.add_exchange(user, f"I live in place {i}", f"ok {i}")
        await memory.process(user)
        await memory.add_exchange(user, "I love tea", "ok")
    extractor.fail_next = 1
    with pytest.raises(ProcessingError):
        await memory.process("ben")
    await memory.add_message("dan", "user", "left in the buffer")


async def _live(db_url: str, make_memory: Any, extractor: RecordingExtractor) -> EventStore:
    memory: Memory = await make_memory()
    await _busy_history(memory, extractor)
    await memory.close()
    return EventStore(db_url)


async def _busy(
    db_url: str, make_memory: Any, extractor: RecordingExtractor
) -> tuple[Memory, EventStore]:
    """An open Memory with a busy history, and the store of its database."""
    memory: Memory = await make_memory()
    await _busy_history(memory, extractor)
    return memory, EventStore(db_url)


def _stopped_rebuild(store: EventStore) -> None:
    """A rebuild stopped, as by Ctrl-C, after its first page of 10 events."""

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(store, progress=stop, page_size=10)


async def test_rebuild_equals_live(db_url: str, make_memory: Any, extractor: Any) -> None:
    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    assert live["knowledge"] and live["messages"] and live["tasks"]
    folded = rebuild(store)
    assert folded == store.max_position()
    assert dump(store.engine, ProjectionTables()) == live
    assert verify(store) == []
    store.close()


async def test_an_interrupted_rebuild_resumes_and_ends_equal(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    _stopped_rebuild(store)
    assert dump(store.engine, ProjectionTables()) != live
    rebuild(store, resume=True, page_size=10)
    assert dump(store.engine, ProjectionTables()) == live
    rebuild(store, resume=True)
    assert dump(store.engine, ProjectionTables()) == live
    store.close()


def _indexes(store: EventStore) -> set[str]:
    """The names of the indexes the projection tables have now."""
    inspector = inspect(store.engine)
    return {
        str(index["name"])
        for table in ProjectionTables().metadata.sorted_tables
        for index in inspector.get_indexes(table.name)
    }


DECLARED = {str(i.name) for t in ProjectionTables().metadata.sorted_tables for i in t.indexes}


async def test_a_rebuild_builds_the_indexes_no_fold_reads_once_the_rows_are_in(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    store = await _live(db_url, make_memory, extractor)
    assert _indexes(store) >= DECLARED
    between_pages: list[set[str]] = []
    rebuild(store, progress=lambda done, total: between_pages.append(_indexes(store)), page_size=10)
    assert len(between_pages) > 2
    for names in between_pages[:-1]:  # the folds' lookups have theirs; the readers' wait
        assert {"mv_messages_by_task", "ix_mv_knowledge_log_id"} <= names
        assert not {"mv_messages_by_seq", "mv_messages_buffered", "ix_mv_tasks_status"} & names
    assert _indexes(store) >= DECLARED
    assert verify(store) == []
    store.close()


async def test_an_open_after_a_rebuild_stopped_before_its_indexes_completes_them(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    _stopped_rebuild(store)
    assert "mv_messages_by_seq" not in _indexes(store)
    store.close()
    async with Memory(db_url=db_url, extractor=RecordingExtractor()):
        pass
    store = EventStore(db_url)
    assert _indexes(store) >= DECLARED
    assert dump(store.engine, ProjectionTables()) == live
    store.close()


async def test_verify_reports_drift(db_url: str, make_memory: Any, extractor: Any) -> None:
    store = await _live(db_url, make_memory, extractor)
    with store.transaction() as connection:
        connection.execute(text("UPDATE mv_knowledge SET text = 'tampered' WHERE ordinal = 0"))
    differences = verify(store)
    assert differences and {d.table for d in differences} == {"knowledge"}
    store.close()


async def test_verify_sees_a_lost_row_of_a_key_of_two_columns(
    db_url: str, make_memory: Any, extractor: RecordingExtractor
) -> None:
    """Each message of the history backs two entries: two citation rows, one message."""
    extractor.answer = lambda batch: tuple(
        ExtractedFact(f"fact {n} of {m.content}", (m.message_id,))
        for m in batch.messages
        if m.role == "user"
        for n in (1, 2)
    )
    store = await _live(db_url, make_memory, extractor)
    with store.transaction() as connection:
        lost = connection.execute(
            text("SELECT message_id, entry_id FROM mv_citations ORDER BY 1, 2 LIMIT 1")
        ).one()
        connection.execute(
            text("DELETE FROM mv_citations WHERE message_id = :m AND entry_id = :e"),
            {"m": lost[0], "e": lost[1]},
        )

    differences = verify(store)

    assert [(d.table, d.live) for d in differences] == [("citations", None)]
    assert differences[0].rebuilt is not None
    store.close()


def test_verify_sees_every_word_of_a_message_in_the_index(store: EventStore) -> None:
    """The words of a message in the full-text index, not only its last one."""
    log = UserLog.register("ann")
    log.add_message("user", "apples pears plums", None, 100)
    projector = Projector(ProjectionTables())
    store.append([log.collect_events()], projector.apply)
    with store.transaction() as connection:
        projector.index_messages(connection)
        row = connection.execute(text("SELECT id FROM mv_messages")).scalar_one()
        body = owned_words(str(user_log_id("ann")), "apples pears plums")
        tampered = body.replace("appl", "lemon").replace("pear", "lime")
        connection.execute(
            text(
                "INSERT INTO mv_messages_fts (mv_messages_fts, rowid, body) "
                "VALUES ('delete', :r, :b)"
            ),
            {"r": row, "b": body},
        )
        connection.execute(
            text("INSERT INTO mv_messages_fts (rowid, body) VALUES (:r, :b)"),
            {"r": row, "b": tampered},
        )

    differences = verify(store)

    assert [d.table for d in differences] == ["messages_fts"]
    live, rebuilt = differences[0].live, differences[0].rebuilt
    assert live is not None and rebuilt is not None and live[0] == rebuilt[0]
    owner = owner_token(str(user_log_id("ann")))  # each word is stored after its owner
    changed = set(live[1]) ^ set(rebuilt[1])
    assert {w.removeprefix(owner) for w, _ in changed} == {"lemon", "lime", "appl", "pear"}


def test_verify_of_projections_an_older_memvee_laid_out_is_refused_not_drift(
    store: EventStore,
) -> None:
    """An index of an older word cutting differs from a scratch one in every message, yet
    nothing drifted: the next open refolds it. Verify says so and leaves the tables be."""
    log = UserLog.register("ann")
    log.add_message("user", "The ferry across İstanbul was late", None, 100)
    projector = Projector(ProjectionTables())
    store.append([log.collect_events()], projector.apply)
    with store.transaction() as connection:
        projector.index_messages(connection)
        connection.execute(  # as an older memvee left them: another layout, other words
            text("UPDATE mv_position SET position = position + 1 WHERE name = 'schema'")
        )
        connection.execute(
            text("INSERT INTO mv_messages_fts(mv_messages_fts) VALUES ('delete-all')")
        )
        older = connection.execute(
            text("SELECT position FROM mv_position WHERE name = 'schema'")
        ).scalar_one()

    with pytest.raises(OlderLayoutError, match=r"older memvee's layout.*`memvee rebuild`"):
        verify(store)

    with store.engine.connect() as connection:
        assert not inspect(connection).has_table(f"{SCRATCH_PREFIX}position")
        layout = connection.execute(
            text("SELECT position FROM mv_position WHERE name = 'schema'")
        ).scalar_one()
    assert layout == older, "verify refolded the live tables"
    rebuild(store, ProjectionTables())
    assert verify(store) == []


async def test_verify_sees_an_entry_indexed_twice(
    db_url: str, make_memory: Any, extractor: RecordingExtractor
) -> None:
    store = await _live(db_url, make_memory, extractor)
    if not store.is_sqlite:
        store.close()
        pytest.skip("the full-text tables are SQLite's")
    with store.transaction() as connection:
        connection.execute(
            text(
                "INSERT INTO mv_knowledge_fts (owner, body, item_id) "
                "SELECT owner, body, item_id FROM mv_knowledge_fts LIMIT 1"
            )
        )

    differences = verify(store)

    assert [(d.table, d.rebuilt) for d in differences] == [("knowledge_fts", None)]
    store.close()


async def test_opening_a_memory_catches_up_projections_that_were_dropped(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    with store.transaction() as connection:
        connection.execute(text("DROP TABLE mv_knowledge"))
        connection.execute(text("DELETE FROM mv_position"))
    store.close()
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as memory:
        assert len(await memory.knowledge("ann")) == 6
    store = EventStore(db_url)
    assert dump(store.engine, ProjectionTables()) == live
    store.close()


async def test_the_cli_rebuilds_and_verifies(db_url: str, make_memory: Any, extractor: Any) -> None:
    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    store.close()
    runner = CliRunner()
    result = runner.invoke(app, ["rebuild", "--db-url", db_url])
    assert result.exit_code == 0, result.output
    assert "rebuilt the projections" in result.output
    result = runner.invoke(app, ["verify", "--db-url", db_url])
    assert result.exit_code == 0 and "match" in result.output
    store = EventStore(db_url)
    assert dump(store.engine, ProjectionTables()) == live
    with store.transaction() as connection:
        connection.execute(text("DELETE FROM mv_tasks"))
    store.close()
    result = runner.invoke(app, ["verify", "--db-url", db_url])
    assert result.exit_code == 1
    result = runner.invoke(app, ["verify", "--json", "--db-url", db_url])
    assert result.exit_code == 1 and '"table": "tasks"' in result.output


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "memvee"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "rebuild" in result.stdout


async def test_one_users_rows_are_rebuilt_alone(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    from projections import rebuild_user

    store = await _live(db_url, make_memory, extractor)
    live = dump(store.engine, ProjectionTables())
    with store.transaction() as connection:
        connection.execute(text("UPDATE mv_knowledge SET text = 'tampered'"))
        connection.execute(text("UPDATE mv_messages SET buffered = 0"))
    assert rebuild_user(store, "ben") > 0
    after = dump(store.engine, ProjectionTables())
    ben = str(user_log_id("ben"))
    for table in ("messages", "knowledge", "tasks", "users"):
        ben_rows = [r for r in after[table] if ben in r]
        assert ben_rows == [r for r in live[table] if ben in r], table
    assert any(r[2] == "tampered" for r in after["knowledge"])
    assert verify(store) != []
    runner = CliRunner()
    for user in ("ann", "cat", "dan"):
        result = runner.invoke(app, ["rebuild", "--user", user, "--db-url", db_url])
        assert result.exit_code == 0, result.output
    assert dump(store.engine, ProjectionTables()) == live
    store.close()


def test_a_users_rebuild_keeps_the_vectors_of_the_items_it_folds_again_and_no_other(
    store: EventStore,
) -> None:
    """A vector of an item the log does not give (a row added by hand, say) goes with the
    rebuild of its user; the vectors of their refolded messages, and other users', stay."""
    projector = Projector(ProjectionTables())
    for user in ("ann", "ben"):
        log = UserLog.register(user)
        log.add_message("user", f"{user} likes tea", None, 100)
        store.append([log.collect_events()], projector.apply)
    ann, ben = str(user_log_id("ann")), str(user_log_id("ben"))
    vectors, messages = projector.tables.vectors, projector.tables.messages
    with store.transaction() as connection:
        held = dict(connection.execute(select(messages.c.log_id, messages.c.message_id)).all())
        rows = [
            (held[ann], ann, "message"),
            ("no-such-message", ann, "message"),
            ("no-such-entry", ann, "entry"),
            (held[ben], ben, "message"),
            ("no-such-message-of-ben", ben, "message"),
        ]
        connection.execute(
            vectors.insert(),
            [
                {"item_id": i, "model": "m", "log_id": o, "kind": k, "vector": b"\0" * 4}
                for i, o, k in rows
            ],
        )
    rebuild_user(store, "ann")
    with store.engine.connect() as connection:
        kept = set(connection.execute(select(vectors.c.item_id)).scalars())
    assert kept == {held[ann], held[ben], "no-such-message-of-ben"}


async def test_a_message_row_deleted_by_hand_is_mended_by_rebuilding_its_user(
    db_url: str, make_memory: Any
) -> None:
    """The row gone, its words stay in SQLite's contentless index, which unindexes a row
    only given its words: they are read back from the index, so the user's rebuild
    mends the index too, and forgetting the user leaves none of them."""
    memory: Memory = await make_memory()
    for text_said in ("I like green tea", "東京都に住んでいる", "café au lait"):
        await memory.add_exchange("ann", text_said, "ok")
    await memory.add_exchange("ben", "I like green tea too", "ok")
    await memory.close()
    store = EventStore(db_url)
    with store.transaction() as connection:
        connection.execute(
            text("DELETE FROM mv_messages WHERE content IN ('I like green tea', 'café au lait')")
        )
    assert verify(store) != []
    rebuild_user(store, "ann")
    assert verify(store) == []
    with store.transaction() as connection:
        connection.execute(text("DELETE FROM mv_messages WHERE content = '東京都に住んでいる'"))
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as reopened:
        await reopened.forget("ann")
        assert (await reopened.messages("ben"))[0].content == "I like green tea too"
    assert verify(store) == []
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as connection:
            connection.execute(
                text("CREATE VIRTUAL TABLE temp.words USING fts5vocab(main, mv_messages_fts, row)")
            )
            terms = connection.execute(text("SELECT term FROM temp.words")).scalars().all()
        owner = owner_token(str(user_log_id("ann")))
        assert terms and not [t for t in terms if t.startswith(owner)]
    store.close()


def test_verify_reports_an_event_that_follows_no_stored_version_of_its_log(
    store: EventStore,
) -> None:
    """Such a log cannot load (a database written before the guard of versions)."""
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER memvee_events_in_sequence")
    log = UserLog.register("gus")
    for i in range(3):
        log.add_message("user", f"m{i}", None, 100)
    events = log.collect_events()
    projector = Projector(ProjectionTables())
    store.append([events[:1]], projector.apply)
    store.append([events[2:]], projector.apply)
    assert verify(store) == [Difference("events", (str(user_log_id("gus")), 3), None)]


def test_verify_reports_a_snapshot_a_load_cannot_take(store: EventStore) -> None:
    """A load passes over it and replays the whole log; a file damaged there would make
    every load of that log fail, which verify, reading no snapshot, never saw."""
    log = UserLog.register("gus")
    log.add_message("user", "m0", None, 100)
    snapshot = store.snapshot_of(log)
    assert snapshot is not None
    store.append([log.collect_events()], Projector(ProjectionTables()).apply, [snapshot])
    assert verify(store) == []
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE memvee_snapshots SET state = x'7b'")
    [found] = verify(store)
    assert (found.table, found.live[:2], found.rebuilt) == (  # type: ignore[index]
        "snapshots",
        (str(user_log_id("gus")), snapshot.originator_version),
        None,
    )


async def test_writes_while_a_rebuild_runs_are_acknowledged_and_folded_once(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    memory, store = await _busy(db_url, make_memory, extractor)
    loop = asyncio.get_running_loop()
    written: list[str] = []

    def write_between_pages(done: int, total: int) -> None:
        """Runs on the rebuild's thread after each page: a write, and every third time a
        processing run, through the open Memory."""
        user = ("ann", "eve")[len(written) % 2]  # eve begins during the rebuild
        said = f"written during the rebuild, number {len(written)}"
        asyncio.run_coroutine_threadsafe(memory.add_exchange(user, said, "ok"), loop).result(30)
        if len(written) % 3 == 2:
            asyncio.run_coroutine_threadsafe(memory.process(user), loop).result(30)
        written.append(said)

    await asyncio.to_thread(rebuild, store, progress=write_between_pages, page_size=10)
    assert len(written) > 5
    await memory.add_exchange("eve", "written after the rebuild", "ok")
    assert verify(store) == []
    stored = {m.content for user in ("ann", "eve") for m in await memory.messages(user)}
    assert {*written, "written after the rebuild"} <= stored
    store.close()


async def test_a_rebuild_beside_a_running_memory_is_not_undone_by_rows_it_remembers(
    db_url: str, make_memory: Any
) -> None:
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    await memory.close()
    store = EventStore(db_url)
    with store.transaction() as connection:  # drift, as a bug of an older version leaves
        connection.execute(text("UPDATE mv_users SET buffered_count = buffered_count + 5"))
    memory = await make_memory()
    await memory.add_exchange("ann", "I work in Bergen", "ok")  # folded on the drifted row
    assert {d.table for d in verify(store)} == {"users"}
    mends: list[Callable[[], int]] = [lambda: rebuild(store), lambda: rebuild_user(store, "ann")]
    for mend in mends:
        mend()
        assert verify(store) == []
        await memory.add_exchange("ann", "I love tea", "ok")
        assert verify(store) == []
    store.close()


async def test_a_stopped_rebuild_is_finished_by_the_next_open_and_writes_meanwhile_are_kept(
    db_url: str, make_memory: Any, extractor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    memory, store = await _busy(db_url, make_memory, extractor)
    _stopped_rebuild(store)
    await memory.add_exchange("ann", "written while the rebuild stood stopped", "ok")
    with pytest.raises(StorageError, match="being rebuilt"):
        rebuild_user(store, "ann")
    with pytest.raises(StorageError, match="being rebuilt"):
        verify(store)
    result = CliRunner().invoke(app, ["rebuild", "--user", "ann", "--db-url", db_url])
    assert result.exit_code == 2 and result.output.startswith("error: the projections are")
    with caplog.at_level(logging.WARNING, logger="memvee.audit"):
        Audit(db_url=db_url).close()  # as every memvee command opens the database
    assert "the projections are being rebuilt (at event 10 of" in caplog.text
    await memory.close()
    async with Memory(db_url=db_url, extractor=RecordingExtractor()) as reopened:
        said = [m.content for m in await reopened.messages("ann")]
        assert said[-2] == "written while the rebuild stood stopped"
    assert verify(store) == []
    store.close()


def _after_the_scratch_rebuild(
    monkeypatch: pytest.MonkeyPatch, then: Callable[[], Coroutine[Any, Any, Any]]
) -> None:
    """Run ``then`` on the test's event loop once verify's scratch rebuild has folded the
    log, before verify reads both sides."""
    loop = asyncio.get_running_loop()
    module = importlib.import_module("projections.rebuild")
    rebuild_scratch = module.rebuild

    def rebuilt_then(*args: Any, **options: Any) -> int:
        folded = rebuild_scratch(*args, **options)
        asyncio.run_coroutine_threadsafe(then(), loop).result(30)
        return int(folded)

    monkeypatch.setattr(module, "rebuild", rebuilt_then)


async def test_verify_beside_live_writers_reads_both_sides_at_one_point_of_the_log(
    db_url: str, make_memory: Any, extractor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, store = await _busy(db_url, make_memory, extractor)
    _after_the_scratch_rebuild(
        monkeypatch, lambda: memory.add_exchange("ann", "written while verify runs", "ok")
    )
    assert await asyncio.to_thread(verify, store) == []
    assert (await memory.messages("ann"))[-2].content == "written while verify runs"
    store.close()


async def test_a_user_forgotten_while_verify_runs_leaves_no_row_in_its_scratch_tables(
    db_url: str, make_memory: Any, extractor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, store = await _busy(db_url, make_memory, extractor)
    scratch = ProjectionTables(SCRATCH_PREFIX)

    def rows_of(user: str) -> int:
        users = scratch.users
        with store.engine.connect() as connection:
            return len(connection.execute(users.select().where(users.c.user_id == user)).all())

    async def forget_ben() -> None:
        assert rows_of("ben") == 1
        await memory.forget("ben")
        assert rows_of("ben") == 0

    _after_the_scratch_rebuild(monkeypatch, forget_ben)
    assert await asyncio.to_thread(verify, store) == []
    monkeypatch.undo()
    rebuild(store, scratch)  # as a verify killed before it dropped its tables leaves them
    await memory.forget("cat")
    assert rows_of("cat") == 0 and rows_of("ann") == 1
    store.close()


def test_on_postgresql_a_forget_and_verify_dropping_its_scratch_tables_take_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An erasure about to delete a user's rows from verify's scratch tables, and verify
    dropping them just then: the drop waits for the erasure, and both succeed (neither
    fails on a table gone between a look and a delete, nor in a deadlock)."""
    store = EventStore(postgres_url())
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    for user in ("ann", "ben"):
        log = UserLog.register(user)
        log.add_message("user", "I live in Oslo", None, 1000)
        store.append([list(log.collect_events())], projector.apply)
    module = importlib.import_module("projections.rebuild")
    at_one_point = module._at_one_point
    compared, dropping = threading.Event(), threading.Event()

    @contextmanager
    def compared_then_held(*args: Any) -> Iterator[Any]:
        with at_one_point(*args) as connection:
            yield connection
        compared.set()
        dropping.wait(30)

    class HeldBeforeScratchForget(Projector):
        def forget(self, connection: Connection, log_id: str) -> dict[str, int]:
            if self.tables.prefix == SCRATCH_PREFIX:
                dropping.set()
                _until_waiting_on_a_lock_or_done(store, verifying)
            return super().forget(connection, log_id)

    monkeypatch.setattr(module, "_at_one_point", compared_then_held)
    monkeypatch.setattr(module, "Projector", HeldBeforeScratchForget)
    try:
        with ThreadPoolExecutor(1) as pool:
            verifying = pool.submit(verify, store)
            assert compared.wait(30)
            receipt = erase_user(store, projector, None, "ann")
            assert verifying.result(30) == []
        monkeypatch.undo()
        assert receipt.events == 2 and receipt.rows["users"] == 1
        with store.engine.connect() as connection:
            assert not inspect(connection).has_table(f"{SCRATCH_PREFIX}position")
    finally:
        store.close()


def _until_waiting_on_a_lock_or_done(store: EventStore, task: Future[Any]) -> None:
    """Return once ``task`` has ended or a session of the PostgreSQL server waits for a
    lock: the point past which it cannot go while the caller's transaction lasts."""
    with store.engine.connect() as connection:
        waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
        for _ in range(3000):
            if task.done() or connection.execute(waiting).scalar_one():
                return
            connection.rollback()
            time.sleep(0.01)
    raise AssertionError("the task neither ended nor waited for a lock")


_KILLED_REBUILD = """
import sys, time
from events import EventStore
from projections import rebuild

def page_folded(done: int, total: int) -> None:
    print(done, flush=True)
    time.sleep(0.05)

rebuild(EventStore(sys.argv[1]), page_size=10, progress=page_folded)
"""


async def test_a_rebuild_killed_between_pages_is_finished_by_the_next_open(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    memory, store = await _busy(db_url, make_memory, extractor)
    await memory.close()
    live = dump(store.engine, ProjectionTables())
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_REBUILD,
        db_url,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdout is not None
    pages = [await asyncio.wait_for(child.stdout.readline(), 60) for _ in range(3)]
    child.kill()  # SIGKILL, between two pages or within one
    await child.wait()
    assert all(p.strip().isdigit() for p in pages), pages
    with store.engine.connect() as connection:
        assert Projector(ProjectionTables()).state(connection).rebuilding
    async with Memory(db_url=db_url, extractor=RecordingExtractor()):
        pass
    assert dump(store.engine, ProjectionTables()) == live
    assert verify(store) == []
    store.close()


def _ahead_then(
    monkeypatch: pytest.MonkeyPatch,
    reader: str,
    kind: str,
    when: Callable[[Any], bool],
    meanwhile: Callable[[], Any],
) -> list[bool]:
    """Have ``meanwhile`` run once, after the rebuild's ``reader`` (``_fold_ahead`` or
    ``_bodies_ahead``) read a page ahead for which ``when(ahead)`` holds, before it holds
    writers off to write it; returns whether each page read ahead (a ``kind``) still
    held when it came to be written."""
    rebuilding = importlib.import_module("projections.rebuild")
    read_ahead, holds = getattr(rebuilding, reader), getattr(rebuilding, kind).holds
    done: list[bool] = []
    held: list[bool] = []

    def read_then(*args: Any) -> Any:
        ahead = read_ahead(*args)
        if ahead is not None and not done and when(ahead):
            done.append(True)
            meanwhile()
        return ahead

    def still_holds(self: Any, *args: Any) -> bool:
        held.append(holds(self, *args))
        return held[-1]

    monkeypatch.setattr(rebuilding, reader, read_then)
    monkeypatch.setattr(getattr(rebuilding, kind), "holds", still_holds)
    return held


def _fold_ahead_then(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[Any], bool], meanwhile: Callable[[], Any]
) -> list[bool]:
    """:func:`_ahead_then` for the pages of events folded ahead; ``when`` is asked of
    the page's events."""
    return _ahead_then(monkeypatch, "_fold_ahead", "_Ahead", lambda a: when(a.page), meanwhile)


def test_a_pages_ids_are_its_rows_in_log_order_read_or_not_worked_out_once() -> None:
    """A page's notification ids, asked for at each step of writing it, are those of its
    events and of those that cannot be read, in log order, one list built once."""
    from uuid import uuid4

    from events.store import Recorded, Unread
    from projections.rebuild import _Page

    unread = Unread(2, UnreadableEventError(uuid4(), 2, "damaged"))
    page = _Page([Recorded(1, object()), Recorded(3, object())], [unread])  # type: ignore[arg-type]
    assert page.ids == [1, 2, 3]
    assert page.ids is page.ids


async def test_a_page_folded_ahead_is_written_when_only_later_events_came_meanwhile(
    db_url: str, make_memory: Any, extractor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild reads and folds each full page without holding writers off; writes that
    land meanwhile come after the page, so it still holds, and they are folded later."""
    memory, store = await _busy(db_url, make_memory, extractor)
    loop = asyncio.get_running_loop()

    def write() -> None:
        said = memory.add_exchange("ann", "written while a page was folded ahead", "ok")
        asyncio.run_coroutine_threadsafe(said, loop).result(30)

    held = _fold_ahead_then(monkeypatch, lambda page: True, write)
    await asyncio.to_thread(rebuild, store, page_size=10)
    assert held and all(held), "every page folded ahead was written as folded"
    assert verify(store) == []
    said = [m.content for m in await memory.messages("ann")]
    assert "written while a page was folded ahead" in said
    store.close()


@pytest.mark.parametrize("meanwhile", ["an erasure of its events", "another fold of it"])
async def test_a_page_folded_ahead_is_folded_again_if_its_log_or_tables_changed_meanwhile(
    db_url: str,
    make_memory: Any,
    extractor: Any,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: str,
) -> None:
    """A user erased while a page holding their events was folded ahead, or the page
    folded meanwhile by another run (a catch-up of another process): the page no longer
    holds, so it is read and folded again while writers are held off, and the rebuilt
    tables equal the live ones, the erased user in neither."""
    memory, store = await _busy(db_url, make_memory, extractor)
    loop = asyncio.get_running_loop()
    ben = user_log_id("ben")

    def erase_ben() -> None:
        asyncio.run_coroutine_threadsafe(memory.forget("ben"), loop).result(30)

    def fold_elsewhere() -> None:
        with monkeypatch.context() as inner:  # the other run folds as before
            inner.undo()
            catch_up(store, ProjectionTables())

    erasing = meanwhile == "an erasure of its events"
    if erasing:
        held = _fold_ahead_then(
            monkeypatch,
            lambda page: any(r.event.originator_id == ben for r in page.recorded),
            erase_ben,
        )
    else:
        held = _fold_ahead_then(monkeypatch, lambda page: True, fold_elsewhere)
    await asyncio.to_thread(rebuild, store, page_size=10)
    assert False in held
    assert verify(store) == []
    users = {row[1] for row in dump(store.engine, ProjectionTables())["users"]}
    assert ("ben" in users) is not erasing
    assert (await memory.user("ben") is None) is erasing
    store.close()


async def test_a_page_folded_ahead_does_not_hold_if_an_event_came_in_a_gap_of_it(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    """PostgreSQL's writers commit out of id order: a page read ahead may miss an event
    that commits later with an id inside it. Such a page does not hold."""
    memory, store = await _busy(db_url, make_memory, extractor)
    await memory.close()
    rebuilding = importlib.import_module("projections.rebuild")
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        store.lock_writers(connection)
        projector.begin_rebuild(connection)
    ahead = rebuilding._fold_ahead(store, projector, 10)
    assert ahead is not None
    recorded = ahead.page.recorded
    gap = dataclasses.replace(
        ahead, page=dataclasses.replace(ahead.page, recorded=recorded[:4] + recorded[5:])
    )
    with store.transaction() as connection:
        store.lock_writers(connection)
        assert ahead.holds(store, projector, connection)
        assert not gap.holds(store, projector, connection)
    store.close()


async def test_the_messages_of_a_rebuild_wait_for_it_to_index_them(
    db_url: str, make_memory: Any, extractor: Any
) -> None:
    """While a rebuild runs, or stopped before its end, the messages that wait for the
    search index are its own, up to all of them: nobody else indexes them (a write's or a
    search's index pass would hold every writer off for as long), and a writer leaves
    them be; the rebuild indexes them a page at a time once it has folded the log."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the full-text tables are SQLite's")
    memory = await make_memory()
    await _busy_history(memory, extractor)
    await memory.close()
    store = EventStore(db_url)
    _stopped_rebuild(store)
    projector = Projector(ProjectionTables())

    def waiting() -> bool:
        with store.engine.connect() as connection:
            return projector.search.unindexed(connection)

    assert waiting()
    assert index_messages(store, projector) == 0
    memory = await make_memory()  # its open finishes the rebuild
    assert not waiting()
    assert verify(store) == []
    store.close()


def _bodies_ahead_then(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Any]) -> list[bool]:
    """:func:`_ahead_then` for the first page of messages' index words built ahead."""
    return _ahead_then(monkeypatch, "_bodies_ahead", "_Bodies", lambda a: True, meanwhile)


def _indexed(store: EventStore, user: str, word: str) -> int:
    """How many of ``user``'s messages the full-text index finds by ``word``."""
    (term,) = owned_terms(str(user_log_id(user)), word)
    with store.engine.connect() as connection:
        found = connection.execute(
            text("SELECT count(*) FROM mv_messages_fts WHERE mv_messages_fts MATCH :q"),
            {"q": f'"{term}"'},
        )
        return int(found.scalar_one())


def _sqlite_only(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the full-text tables are SQLite's")


async def test_a_page_of_words_built_ahead_is_stored_when_only_new_messages_came_meanwhile(
    db_url: str, make_memory: Any, extractor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild builds each page of the messages' index words without holding writers
    off; a message written meanwhile comes after the page, so the page is stored as built,
    and the new message is indexed too."""
    _sqlite_only(db_url)
    memory, store = await _busy(db_url, make_memory, extractor)
    engine = memory._engine
    assert engine is not None
    engine.committer._index_idle = 3600  # its own index pass would be another change
    loop = asyncio.get_running_loop()

    def write() -> None:
        said = memory.add_exchange("ann", "a kumquat while the words were built", "ok")
        asyncio.run_coroutine_threadsafe(said, loop).result(30)

    held = _bodies_ahead_then(monkeypatch, write)
    await asyncio.to_thread(rebuild, store, page_size=10)
    assert held and all(held), "every page built ahead was stored as built"
    assert verify(store) == []
    assert _indexed(store, "ann", "kumquat") == 1
    store.close()


@pytest.mark.parametrize("meanwhile", ["an erasure of its messages", "another index pass"])
async def test_a_page_of_words_built_ahead_is_built_again_if_its_messages_changed_meanwhile(
    db_url: str,
    make_memory: Any,
    extractor: Any,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: str,
) -> None:
    """The page's user erased while its words were built, or the page indexed meanwhile
    by a writer's pass: the page no longer holds, so it is read and built again while
    writers are held off; no message is indexed twice, and no erased one is left."""
    _sqlite_only(db_url)
    memory, store = await _busy(db_url, make_memory, extractor)
    engine = memory._engine
    assert engine is not None
    engine.committer._index_idle = 3600  # its own pass could index the pages first
    loop = asyncio.get_running_loop()
    projector = Projector(ProjectionTables())

    def erase_ann() -> None:
        asyncio.run_coroutine_threadsafe(memory.forget("ann"), loop).result(30)

    def index_elsewhere() -> None:
        index_messages(store, projector)

    erasing = meanwhile == "an erasure of its messages"
    held = _bodies_ahead_then(monkeypatch, erase_ann if erasing else index_elsewhere)
    await asyncio.to_thread(rebuild, store, page_size=10)
    assert held[0] is False
    assert verify(store) == []
    assert (await memory.user("ann") is None) is erasing
    assert _indexed(store, "ann", "tea") == (0 if erasing else 1)
    assert _indexed(store, "ben", "tea") == 1
    store.close()


def test_the_refold_of_an_older_layout_keeps_the_embeddings_if_their_table_is_unchanged(
    store: EventStore,
) -> None:
    """Opening tables an older memvee laid out refolds them from the log; the embeddings
    stay when their own table has today's columns and ids (their items' ids come back),
    and go when it does not."""
    projector = Projector(ProjectionTables())
    log = UserLog.register("ann")
    log.add_message("user", "ann likes tea", None, 100)
    store.append([log.collect_events()], projector.apply)
    vectors, messages = projector.tables.vectors, projector.tables.messages
    older_layout = "UPDATE mv_position SET position = position - (1 << 20) WHERE name = 'schema'"
    with store.transaction() as connection:
        message_id = connection.execute(select(messages.c.message_id)).scalar_one()
        kept = {
            "item_id": message_id,
            "model": "m",
            "log_id": str(user_log_id("ann")),
            "kind": "message",
            "vector": b"\0" * 4,
        }
        connection.execute(vectors.insert(), [kept])
        connection.execute(text(older_layout))
    with store.transaction() as connection:
        assert projector.create(connection), "the older tables were dropped, to refold"
        assert connection.execute(select(vectors.c.item_id)).scalars().all() == [message_id]
        connection.execute(text(older_layout))
        connection.execute(text("ALTER TABLE mv_vectors ADD COLUMN norm REAL"))
    with store.transaction() as connection:
        projector.create(connection)
        assert connection.execute(select(vectors.c.item_id)).scalars().all() == []
        connection.execute(vectors.insert(), [kept])
        connection.execute(  # schema 9's: ids stored as text on SQLite
            text("UPDATE mv_position SET position = 9 << 20 WHERE name = 'schema'")
        )
    with store.transaction() as connection:
        projector.create(connection)
        assert connection.execute(select(vectors.c.item_id)).scalars().all() == []


def _behind_with_one_unreadable_event(
    store: EventStore, user: str, layout: str = "current", *, newer: bool = False
) -> tuple[int, bytes]:
    """Store one more event of ``user``'s log that no projection folds (the projections are
    behind the log), then damage it (``newer``: make it of a type only a newer memvee
    knows); with ``layout="older"`` the projections are also of an older memvee's layout,
    so the next open refolds the whole log. Returns its version and its state as stored."""
    log = store.load(user)
    assert log is not None
    log.add_message("user", f"{user} says more", None, 100)
    store.append([log.collect_events()])
    last = "(SELECT max(id) FROM memvee_events)"
    with store.transaction() as connection:
        state = connection.execute(text(f"SELECT state FROM memvee_events WHERE id = {last}"))
        stored = bytes(state.scalar_one())
        connection.execute(
            text(f"UPDATE memvee_events SET state = :state, topic = :topic WHERE id = {last}"),
            {
                "state": b'{"timestamp": 1}' if newer else b'{"timestamp": 1, "garbage',
                "topic": "MessageEdited" if newer else "MessageAdded",
            },
        )
        if layout == "older":
            connection.execute(
                text("UPDATE mv_position SET position = position - (1 << 20) WHERE name = 'schema'")
            )
    return log.version, stored


@pytest.mark.parametrize("layout", ["current", "older"])
async def test_an_unreadable_event_in_one_users_log_stops_that_user_alone_never_the_database(
    db_url: str, make_memory: Any, layout: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The open's fold leaves that log unfolded and says so; every other user is served,
    that user's reads and writes fail naming them, verify lists the log, and once the
    user is forgotten everything is clean again."""
    memory: Memory = await make_memory()
    for user in ("ann", "bob"):
        await memory.add_exchange(user, f"I am {user} and I live in Oslo", "ok")
        await memory.process(user)
    await memory.close()
    store = EventStore(db_url)
    damaged, _ = _behind_with_one_unreadable_event(store, "bob", layout)
    store.close()  # an older layout is upgraded only with the file held alone

    with caplog.at_level(logging.WARNING, logger="memvee.projections"):
        memory = await make_memory()
    store = EventStore(db_url)
    assert "the log of 'bob' cannot be read" in caplog.text and "`memvee forget bob`" in caplog.text
    assert len(await memory.knowledge("ann")) == 1
    await memory.add_exchange("ann", "I moved to Rome", "ok")
    await memory.process("ann")
    assert len(await memory.knowledge("ann", history=True)) == 2
    for refused in (
        memory.knowledge("bob"),
        memory.messages("bob"),
        memory.add_exchange("bob", "hello again", "hi"),
    ):
        with pytest.raises(UnreadableEventError, match=f"version {damaged} of the log of 'bob'"):
            await refused

    (listed,) = await asyncio.to_thread(verify, store)
    assert listed.table == "events" and listed.live[:2] == (str(user_log_id("bob")), damaged)
    assert "the log of 'bob' cannot be read" in listed.live[2]
    await memory.forget("bob")
    await memory.add_exchange("bob", "I start again", "ok")
    assert [m.content for m in await memory.messages("bob")] == ["I start again", "ok"]
    await memory.close()
    assert verify(store) == []
    store.close()


async def test_a_newer_memvees_event_in_a_log_the_projections_lag_stops_that_user_alone(
    db_url: str,
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The open folds every other log and serves its users; that user's reads and writes
    say to upgrade memvee, naming them, and the event stays stored. Once memvee is
    upgraded, the next open refolds that log and serves the user again."""
    await _ann_and_bob_written(make_memory)
    store = EventStore(db_url)
    newer, stored = _behind_with_one_unreadable_event(store, "bob", newer=True)

    with caplog.at_level(logging.WARNING, logger="memvee.projections"):
        memory = await make_memory()
    assert "of the log of 'bob' cannot be read" in caplog.text
    assert "upgrade memvee" in caplog.text
    await memory.add_exchange("ann", "I moved to Rome", "ok")
    assert len(await memory.messages("ann")) == 4
    for refused in (memory.buffer("bob"), memory.add_exchange("bob", "hello again", "hi")):
        with pytest.raises(NewerEventError, match=f"version {newer} of the log of 'bob'"):
            await refused
    await memory.close()
    assert store.last_version("bob") == newer

    with store.transaction() as connection:  # upgraded: this memvee reads that event now
        connection.execute(
            text(
                "UPDATE memvee_events SET state = :state, topic = 'MessageAdded' WHERE id = "
                "(SELECT max(id) FROM memvee_events WHERE topic = 'MessageEdited')"
            ),
            {"state": stored},
        )
    monkeypatch.setattr(
        importlib.import_module("projections.rebuild"), "known_topic", lambda _: True
    )
    memory = await make_memory()
    assert [m.content for m in await memory.messages("bob")][-1] == "bob says more"
    await memory.close()
    assert verify(store) == []
    store.close()


async def test_a_user_forgotten_by_another_process_is_served_again_by_a_running_memory(
    db_url: str, make_memory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused user's actor closes quietly (a WARNING, no traceback); and the WARNING's
    way out, `memvee forget bob`, taken in another process while a Memory serves: that
    Memory serves bob again at once."""
    await _ann_and_bob_written(make_memory)
    store = EventStore(db_url)
    _behind_with_one_unreadable_event(store, "bob")
    memory = await make_memory()
    with pytest.raises(UnreadableEventError, match="the log of 'bob'"):
        await memory.add_exchange("bob", "hello again", "hi")
    with caplog.at_level(logging.WARNING, logger="memvee.actors"):
        await memory.close()
    assert not [r for r in caplog.records if r.exc_info], caplog.text

    memory = await make_memory()
    with pytest.raises(UnreadableEventError, match="the log of 'bob'"):
        await memory.add_exchange("bob", "hello again", "hi")
    with Audit(db_url=db_url) as audit:
        audit.forget("bob")
    await memory.add_exchange("bob", "I start again", "ok")
    assert [m.content for m in await memory.messages("bob")] == ["I start again", "ok"]
    await memory.close()
    store.close()


async def test_a_log_whose_first_event_a_newer_memvee_wrote_is_refolded_once_upgraded(
    db_url: str,
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No fold knew whose log it was: the WARNING names the log id (no placeholder user to
    forget), and once memvee is upgraded the next open reads the user from the log and
    serves them."""
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I am ann", "ok")
    await memory.close()
    store = EventStore(db_url)
    log = UserLog.register("carl")
    log.add_message("user", "carl says hi", None, 100)
    store.append([log.collect_events()])  # the projections lag: carl is not folded
    first = "(SELECT max(id) FROM memvee_events WHERE topic LIKE '%Registered')"  # carl's
    with store.transaction() as connection:
        row = connection.execute(text(f"SELECT topic, state FROM memvee_events WHERE id = {first}"))
        topic, state = row.one()
        connection.execute(
            text(
                f"UPDATE memvee_events SET state = :s, topic = 'MessageEdited' WHERE id = {first}"
            ),
            {"s": b'{"timestamp": 1}'},
        )
    with caplog.at_level(logging.WARNING, logger="memvee.projections"):
        memory = await make_memory()
    assert f"log {user_log_id('carl')}" in caplog.text and "USER" not in caplog.text
    with pytest.raises(NewerEventError):
        await memory.messages("carl")
    await memory.close()

    with store.transaction() as connection:  # upgraded: this memvee reads that event now
        connection.execute(
            text("UPDATE memvee_events SET state = :s, topic = :t WHERE topic = 'MessageEdited'"),
            {"s": bytes(state), "t": topic},
        )
    monkeypatch.setattr(
        importlib.import_module("projections.rebuild"), "known_topic", lambda _: True
    )
    memory = await make_memory()
    assert [m.content for m in await memory.messages("carl")] == ["carl says hi"]
    await memory.close()
    store.close()


async def test_a_command_after_an_upgrade_serves_a_user_left_for_a_newer_event(
    db_url: str, make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Projections up to date, one log left unfolded for a newer memvee's event: once memvee
    is upgraded, the first command refolds it and serves that user, as an open would."""
    await _ann_and_bob_written(make_memory)
    store = EventStore(db_url)
    _, stored = _behind_with_one_unreadable_event(store, "bob", newer=True)
    memory = await make_memory()  # leaves bob's log unfolded
    await memory.close()
    with store.transaction() as connection:  # upgraded: this memvee reads that event now
        connection.execute(
            text(
                "UPDATE memvee_events SET state = :s, topic = 'MessageAdded' "
                "WHERE topic = 'MessageEdited'"
            ),
            {"s": stored},
        )
    monkeypatch.setattr(
        importlib.import_module("projections.rebuild"), "known_topic", lambda _: True
    )
    if db_url.startswith("sqlite"):  # a read-only file: served as it is, bob still refused
        read_only = f"sqlite:///file:{db_url.removeprefix('sqlite:///')}?mode=ro&uri=true"
        result = CliRunner().invoke(app, ["knowledge", "ann", "--db-url", read_only])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["knowledge", "bob", "--json", "--db-url", db_url])
    assert result.exit_code == 0, result.output
    with store.engine.connect() as connection:
        assert not connection.execute(text("SELECT * FROM mv_unreadable")).all()
    store.close()


async def test_a_refold_after_an_upgrade_that_still_fails_is_not_tried_by_every_command(
    db_url: str, make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgraded, memvee knows the event type that left bob's log unfolded, but the log
    still cannot be read (that event is damaged too): the first command refolds it, meets
    the damage and records it as what keeps the log unfolded, so the next one does not
    refold it again under the writers' hold."""
    await _ann_and_bob_written(make_memory)
    store = EventStore(db_url)
    _behind_with_one_unreadable_event(store, "bob", newer=True)
    memory = await make_memory()  # leaves bob's log unfolded for a newer event type
    await memory.close()
    with store.transaction() as connection:  # upgraded, but the event is damaged as well
        connection.execute(
            text(
                "UPDATE memvee_events SET state = :s, topic = 'MessageAdded' "
                "WHERE topic = 'MessageEdited'"
            ),
            {"s": b'{"timestamp": 1, "garbage'},
        )
    rebuild_module = importlib.import_module("projections.rebuild")
    monkeypatch.setattr(rebuild_module, "known_topic", lambda _: True)
    refolded: list[str] = []
    rebuild_user = rebuild_module.rebuild_user

    def counted(store: EventStore, user_id: str, *rest: Any) -> int:
        refolded.append(user_id)
        return rebuild_user(store, user_id, *rest)

    monkeypatch.setattr(rebuild_module, "rebuild_user", counted)
    for _ in range(3):
        result = CliRunner().invoke(app, ["knowledge", "ann", "--db-url", db_url])
        assert result.exit_code == 0, result.output
    assert refolded == ["bob"]
    with store.engine.connect() as connection:
        (row,) = connection.execute(text("SELECT topic FROM mv_unreadable")).all()
    assert row.topic != "MessageEdited"
    store.close()


async def test_verify_lists_a_log_an_open_left_unfolded_and_refuses_one_damaged_after_its_fold(
    db_url: str, make_memory: Any
) -> None:
    """As `memvee verify --help` and the README say: exit 1 listing the log of a user an
    open left unfolded; exit 2 naming the user whose folded log was damaged since."""
    await _ann_and_bob_written(make_memory)
    store = EventStore(db_url)
    _behind_with_one_unreadable_event(store, "bob")
    await (await make_memory()).close()  # leaves bob's log unfolded
    listed = CliRunner().invoke(app, ["verify", "--json", "--db-url", db_url])
    assert listed.exit_code == 1 and "the log of 'bob' cannot be read" in listed.output

    first_of_ann = "(SELECT min(id) FROM memvee_events WHERE topic LIKE '%MessageAdded')"
    with store.transaction() as connection:
        connection.execute(
            text(f"UPDATE memvee_events SET state = :s WHERE id = {first_of_ann}"),
            {"s": b'{"timestamp": 1, "garbage'},
        )
    refused = CliRunner().invoke(app, ["verify", "--db-url", db_url])
    assert refused.exit_code == 2 and "the log of 'ann' cannot be read" in refused.output
    store.close()


async def _ann_and_bob_written(make_memory: Any) -> None:
    """A Memory where ann and bob each said where they live, closed."""
    memory: Memory = await make_memory()
    for user in ("ann", "bob"):
        await memory.add_exchange(user, f"I am {user} and I live in Oslo", "ok")
    await memory.close()


def _said(store: EventStore, user: str, n: int) -> None:
    """``user`` registered and saying ``n`` messages, folded as the live engine folds."""
    projector = Projector(ProjectionTables())
    log = UserLog.register(user)
    for i in range(n):
        log.add_message("user", f"{user} secret {i}", None, 1000)
    store.append([list(log.collect_events())], projector.apply)


def _ann_and_ben(db_url: str) -> EventStore:
    """A store of ann's 5 messages (events 1-6) then ben's 15 (the log's end)."""
    store = EventStore(db_url)
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    _said(store, "ann", 5)
    _said(store, "ben", 15)
    return store


def _erase_ben_then_carl_writes(store: EventStore) -> None:
    """Ben forgotten, then carl writing 20 messages: more events than ben's."""
    erase_user(store, Projector(ProjectionTables()), None, "ben")
    _said(store, "carl", 20)


def _users_and_ben_words(store: EventStore) -> tuple[set[str], int]:
    """The users in the projections, and how many of ben's words the index finds."""
    users = {row[1] for row in dump(store.engine, ProjectionTables())["users"]}
    if not store.is_sqlite:
        return users, 0
    (term,) = owned_terms(str(user_log_id("ben")), "secret")
    with store.engine.connect() as connection:
        found = connection.execute(
            text("SELECT count(*) FROM mv_messages_fts WHERE mv_messages_fts MATCH :q"),
            {"q": f'"{term}"'},
        ).scalar_one()
    return users, int(found)


@pytest.mark.parametrize("checked_by", ["count", "id list"])
def test_a_page_folded_ahead_is_folded_again_if_its_events_were_erased_and_ids_written_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch, checked_by: str
) -> None:
    """A page of ben's events folded ahead, then ben forgotten and carl writing more
    events than ben had, numbered as ben's were (as SQLite did before an erasure kept its
    ids unused, which is switched off here, so that the erasure's move of the tables'
    generation alone tells): the page no longer holds, ben's rows stay gone, carl's
    events are folded, and verify finds nothing."""
    monkeypatch.setattr(events.store, "keep_erased_ids_unused", lambda *_: None)
    store = _ann_and_ben(db_url)
    if checked_by == "id list":
        monkeypatch.setattr(
            EventStore, "count_between", lambda self, c, a, u: len(self.ids_between(c, a, u))
        )
    held = _fold_ahead_then(
        monkeypatch, lambda page: True, lambda: _erase_ben_then_carl_writes(store)
    )
    rebuild(store, page_size=10)
    monkeypatch.undo()
    users, _ = _users_and_ben_words(store)
    assert held[0] is False
    assert users == {"ann", "carl"}
    assert verify(store) == []
    store.close()


def test_messages_indexed_ahead_are_built_again_if_they_were_erased_and_rows_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ben's messages' words built ahead by a rebuild, then ben forgotten and carl writing
    more messages than ben had (numbered as ben's rows were): the page no longer holds,
    none of ben's words is indexed, and verify finds every word of carl's."""
    store = _ann_and_ben(sqlite_url(tmp_path / "memvee.db"))
    held = _ahead_then(
        monkeypatch,
        "_bodies_ahead",
        "_Bodies",
        lambda ahead: True,
        lambda: _erase_ben_then_carl_writes(store),
    )
    rebuild(store, page_size=10)
    monkeypatch.undo()
    users, ben_words = _users_and_ben_words(store)
    assert held[0] is False
    assert ben_words == 0
    assert users == {"ann", "carl"}
    assert verify(store) == []
    store.close()


def test_a_rebuild_resumed_past_an_erased_users_events_folds_every_event_written_since(
    db_url: str,
) -> None:
    """A rebuild stopped past some of ben's events, ben forgotten, then carl writing
    more events than ben had: the rebuild resumed folds every one of carl's, none
    numbered at or below where it stopped, and the tables equal the log."""
    store = _ann_and_ben(db_url)
    _stopped_rebuild(store)
    _erase_ben_then_carl_writes(store)
    rebuild(store, resume=True, page_size=10)
    users, ben_words = _users_and_ben_words(store)
    assert users == {"ann", "carl"}
    assert ben_words == 0
    assert verify(store) == []
    store.close()


@pytest.fixture(params=["1s", "200ms"], ids=lambda value: f"deadlock_timeout={value}")
def server_deadlock_timeout(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test database's ``deadlock_timeout`` for every session opened during the test:
    the server's default, or one shorter than a rebuild's longest wait for a table."""
    engine = create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        database = connection.exec_driver_sql("SELECT current_database()").scalar_one()
        connection.exec_driver_sql(
            f"ALTER DATABASE \"{database}\" SET deadlock_timeout = '{request.param}'"
        )
    try:
        yield request.param
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" RESET deadlock_timeout')
        engine.dispose()


def _tables_folding_anns_message(store: EventStore) -> ProjectionTables:
    """The projection tables, made in ``store`` and holding one message of ann's."""
    tables = ProjectionTables()
    projector = Projector(tables)
    with store.transaction() as connection:
        projector.create(connection)
    log = UserLog.register("ann")
    log.add_message("user", "I live in Oslo", None, 1000)
    store.append([list(log.collect_events())], projector.apply)
    return tables


def test_on_postgresql_a_rebuild_starting_meets_a_read_of_two_tables_without_a_deadlock(
    server_deadlock_timeout: str,
) -> None:
    """A live read (a task's state joined to its user, as a Memory following another
    process's task does) holds one projection table and reads another the rebuild has
    just dropped, while the rebuild waits to drop the first: each waited for the other,
    and after the server's deadlock_timeout it failed one of them (the read, or the
    rebuild itself). The rebuild lets go and tries again sooner instead, whatever that
    timeout: both succeed."""
    store = EventStore(postgres_url())
    with store.engine.connect() as connection:
        shown = connection.exec_driver_sql("SHOW deadlock_timeout").scalar_one()
        assert shown == server_deadlock_timeout
    tables = _tables_folding_anns_message(store)
    dropped_first, dropped_later = tables.users.name, tables.tasks.name
    order = [t.name for t in reversed(tables.metadata.sorted_tables)]
    assert order.index(dropped_first) < order.index(dropped_later)
    try:
        with ThreadPoolExecutor(1) as pool, store.engine.connect() as reader:
            reader.execute(text(f"SELECT count(*) FROM {dropped_later}"))
            rebuilding = pool.submit(rebuild, store)
            _until_waiting_on_a_lock_or_done(store, rebuilding)
            assert reader.execute(text(f"SELECT count(*) FROM {dropped_first}")).scalar_one() == 1
            reader.commit()
            assert rebuilding.result(30) == 2
    finally:
        store.close()


def test_on_postgresql_an_open_dropping_an_older_layout_meets_a_read_of_two_tables(
    server_deadlock_timeout: str,
) -> None:
    """An open that finds the projections of an older memvee's layout drops them, as a
    rebuild's start does, while a live read (another process's, still on them) holds one
    table and goes on to read another the open has just dropped: each waited for the
    other, and after the server's deadlock_timeout it failed one of them. The open lets
    go and tries again sooner instead, whatever that timeout: both succeed, and the
    tables are refolded in this layout."""
    store = EventStore(postgres_url())
    tables = _tables_folding_anns_message(store)
    with store.transaction() as connection:  # as an older memvee left them
        connection.execute(
            text("UPDATE mv_position SET position = position - (1 << 20) WHERE name = 'schema'")
        )
    dropped_first, dropped_later = tables.users.name, tables.tasks.name
    try:
        with ThreadPoolExecutor(1) as pool, store.engine.connect() as reader:
            reader.execute(text(f"SELECT count(*) FROM {dropped_later}"))
            opening = pool.submit(bring_up_to_date, store, tables)
            _until_waiting_on_a_lock_or_done(store, opening)
            assert reader.execute(text(f"SELECT count(*) FROM {dropped_first}")).scalar_one() == 1
            reader.commit()
            assert opening.result(30) == 2
        with store.engine.connect() as connection:
            assert Projector(tables).layout_current(connection)
    finally:
        store.close()
