"""The group committer: writes settle in the order they were queued, a write to an idle
committer goes at once on its own thread, a ticket is a barrier for every write queued up
to it, a settled write keeps nothing of itself alive, and the messages written go into the
full-text index in bulk, soon after."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import actors._committer as committer_module
from actors._bridge import LoopInbox
from actors._committer import STORE_ATTEMPTS, GroupCommitter, Write
from events import EventStore, Recorded, StorageError, UserLog, sqlite_url, user_log_id
from events.errors import TransientStorageError, may_pass
from projections import ProjectionTables, Projector, SearchIndex, rebuild, verify
from tests.support.backends import postgres_url


def _log_with_messages(user: str, count: int) -> tuple[UserLog, list[Any]]:
    log = UserLog.register(user)
    for i in range(count):
        log.add_message("user", f"message {i}", None, 1000)
    return log, list(log.collect_events())


class _Settled:
    """Records every ``then`` call, and the thread each ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseException | None]] = []
        self.threads: list[int] = []

    def __call__(self, name: str) -> Any:
        def then(error: BaseException | None) -> None:
            self.calls.append((name, error))
            self.threads.append(threading.get_ident())

        return then


def _held(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """A gate every write of ``store`` waits at until it is set (a slow disk)."""
    gate = threading.Event()
    original = store.append

    def held(batches: Any, *rest: Any) -> Any:
        assert gate.wait(10)
        return original(batches, *rest)

    monkeypatch.setattr(store, "append", held)
    return gate


class _Kept(Write):
    """A write that keeps how it was settled: the events' positions, or the error."""

    __slots__ = ("outcome",)

    def settled(self, recorded: list[Recorded] | None, error: BaseException | None) -> None:
        self.outcome = (recorded, error)


@pytest.fixture
def any_store(db_url: str) -> Iterator[EventStore]:
    """An event store with the projection tables created, on each backend."""
    store = EventStore(db_url)
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    yield store
    store.close()


def _positions(store: EventStore) -> dict[tuple[Any, int], int]:
    """Every stored event's position, by its log and version."""
    with store.engine.connect() as connection:
        stored = store.notifications(connection, after=0, limit=1000)
    return {(r.event.originator_id, r.event.originator_version): r.notification_id for r in stored}


@dataclass
class _Behind:
    """A committer whose write of u0 is on a held disk (``gate``), on thread ``first``."""

    committer: GroupCommitter
    settled: _Settled
    gate: threading.Event
    first: threading.Thread


@contextmanager
def _behind_u0(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Behind]:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    gate = _held(store, monkeypatch)
    first = threading.Thread(
        target=committer.submit, args=(Write(_log_with_messages("u0", 2)[1], 1, settled("u0")),)
    )
    first.start()
    try:
        deadline = time.monotonic() + 10
        while not committer._writing.locked():
            assert time.monotonic() < deadline, "the first write never reached the disk"
            time.sleep(0.001)
        yield _Behind(committer, settled, gate, first)
    finally:
        gate.set()
        first.join()
        committer.stop()


def test_a_write_to_an_idle_committer_is_written_at_once_on_the_submitting_thread(
    store: EventStore,
) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    try:
        ticket = committer.submit(Write(_log_with_messages("ann", 2)[1], 1, settled("ann")))
        assert settled.calls == [("ann", None)], "settled before submit returned"
        assert settled.threads == [threading.get_ident()]
        committer.wait_for(ticket)
        assert store.load("ann") is not None
    finally:
        committer.stop()


def test_writes_submitted_during_a_write_wait_their_turn_and_go_together(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _behind_u0(store, monkeypatch) as held:
        committer, settled = held.committer, held.settled
        tickets = [
            committer.submit(Write(_log_with_messages(f"u{i}", 2)[1], 1, settled(f"u{i}")))
            for i in range(1, 6)
        ]
        assert settled.calls == [], "nothing settles while the first write is on the disk"
        held.gate.set()
        held.first.join()
        committer.wait_for(tickets[-1])
        assert [name for name, _ in settled.calls] == [f"u{i}" for i in range(6)]
        assert all(error is None for _, error in settled.calls)
        assert settled.threads[0] == held.first.ident
        assert set(settled.threads[1:]) == {committer._thread.ident}
        assert committer.transactions == 2, "the five waiting writes shared one transaction"


class _CountedLoop:
    """An event loop stand-in that counts its wake-ups and never drains."""

    def __init__(self) -> None:
        self.wakes = 0

    def call_soon_threadsafe(self, callback: Any) -> None:
        self.wakes += 1


def test_a_group_commits_acknowledgements_wake_the_event_loop_once(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write's acknowledgement is posted to the loop as it settles, but the loop is
    woken once the whole group settled: not pulled into the GIL after the first one."""
    loop = _CountedLoop()
    inbox = LoopInbox(loop)  # type: ignore[arg-type]
    wakes_seen: list[int] = []

    def acknowledge(error: BaseException | None) -> None:
        inbox.post(print, error)
        wakes_seen.append(loop.wakes)

    with _behind_u0(store, monkeypatch) as held:
        committer = held.committer
        tickets = [
            committer.submit(Write(_log_with_messages(f"u{i}", 2)[1], 1, acknowledge))
            for i in range(1, 6)
        ]
        held.gate.set()
        held.first.join()
        committer.wait_for(tickets[-1])
        assert committer.transactions == 2, "the five writes shared one transaction"
    assert wakes_seen == [0] * 5, "no wake-up while the group still settles"
    assert loop.wakes == 1


def test_waiting_for_a_log_waits_for_its_queued_writes_and_for_nothing_once_they_settled(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _behind_u0(store, monkeypatch) as held:
        committer = held.committer
        committer.submit(Write(_log_with_messages("ann", 2)[1], 1, held.settled("ann")))
        waiter = threading.Thread(target=committer.wait_for_log, args=(user_log_id("ann"),))
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive(), "ann's write is still queued"
        committer.wait_for_log(user_log_id("bo"))  # no write of bo's: returns at once
        held.gate.set()
        waiter.join(10)
        assert not waiter.is_alive()
        assert ("ann", None) in held.settled.calls
        assert committer._in_flight == {}, "settled writes leave nothing behind"
        committer.wait_for_log(user_log_id("ann"))


def test_a_ticket_waits_for_its_write_and_every_write_before_it(store: EventStore) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    try:
        tickets = [
            committer.submit(Write(_log_with_messages(f"u{i}", 2)[1], 1, settled(f"u{i}")))
            for i in range(20)
        ]
        assert tickets == sorted(tickets) and len(set(tickets)) == 20
        committer.wait_for(tickets[9])
        assert [name for name, _ in settled.calls[:10]] == [f"u{i}" for i in range(10)]
        committer.wait_for(tickets[-1])
        assert [name for name, _ in settled.calls] == [f"u{i}" for i in range(20)]
        assert all(error is None for _, error in settled.calls)
        assert store.load("u19") is not None
    finally:
        committer.stop()


@pytest.mark.parametrize("queued", [False, True], ids=["idle", "queued"])
def test_a_failed_write_is_told_and_refuses_the_rest_of_its_epoch(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, queued: bool
) -> None:
    """Whether the writes go at once (an idle committer) or wait behind a write."""
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    original = store.append
    gate = threading.Event()
    if not queued:
        gate.set()

    def failing(batches: Any, *rest: Any) -> Any:
        assert gate.wait(10)
        if any(getattr(e, "content", "") == "boom" for b in batches for e in b):
            raise StorageError("the disk is on fire")
        return original(batches, *rest)

    monkeypatch.setattr(store, "append", failing)
    try:
        log = UserLog.register("ann")
        log.add_message("user", "boom", None, 1000)
        events = log.collect_events()
        if queued:  # written on another thread, held at the gate
            write = Write(events, 7, settled("boom"))
            writer = threading.Thread(target=committer.submit, args=(write,))
            writer.start()
            while not committer._writing.locked():
                time.sleep(0.001)
        else:
            committer.submit(Write(events, 7, settled("boom")))
        log.add_message("user", "built on it", None, 1000)
        second = committer.submit(Write(log.collect_events(), 7, settled("after")))
        gate.set()
        committer.wait_for(second)
        assert [(n, type(e)) for n, e in settled.calls] == [
            ("boom", StorageError),
            ("after", type(settled.calls[1][1])),
        ]
        assert settled.calls[1][1] is not None, "a write decided on a failed one is refused"
        assert committer.failed(log.id, 7)
        assert not committer.failed(log.id, 8)
    finally:
        gate.set()
        committer.stop()


def test_a_settled_write_keeps_neither_its_events_nor_its_callback(store: EventStore) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    try:
        _, events = _log_with_messages("bo", 2)
        settled = _Settled()
        then = settled("bo")
        gone = weakref.ref(then)
        ticket = committer.submit(Write(events, 1, then))
        del then, events
        committer.wait_for(ticket)
        gc.collect()
        assert settled.calls == [("bo", None)]
        assert gone() is None, "the committer let go of the callback (and its closure)"
    finally:
        committer.stop()


def _waiting(store: EventStore) -> bool:
    with store.engine.connect() as connection:
        return SearchIndex(ProjectionTables()).unindexed(connection)


def test_messages_go_into_the_index_inside_the_write_that_makes_enough_wait(
    store: EventStore,
) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()), index_every=5, index_idle=3600)
    try:
        committer.commit(_log_with_messages("ann", 3)[1], 0)
        assert _waiting(store), "four events are not enough: the messages wait"
        committer.commit(_log_with_messages("bob", 1)[1], 0)
        assert not _waiting(store)
    finally:
        committer.stop()


def test_a_write_while_a_rebuild_runs_leaves_its_messages_to_the_rebuild(
    store: EventStore,
) -> None:
    """The rebuild folds the write's events and indexes every message once it has folded
    the log: a write's index pass then would index the rebuild's messages, up to all of
    them, holding every writer off meanwhile."""
    projector = Projector(ProjectionTables())
    indexed: list[int] = []
    index = projector.index_messages

    def counted(connection: Any, limit: int | None = None) -> int:
        indexed.append(index(connection, limit))
        return indexed[-1]

    projector.index_messages = counted  # type: ignore[method-assign]
    committer = GroupCommitter(store, projector, index_every=1, index_idle=3600)
    try:
        committer.commit(_log_with_messages("ann", 2)[1], 0)
        assert len(indexed) == 1 and not _waiting(store)
        with store.transaction() as connection:
            store.lock_writers(connection)
            projector.begin_rebuild(connection)
        committer.commit(_log_with_messages("bob", 2)[1], 0)
        assert len(indexed) == 1, "no index pass while the rebuild runs"
    finally:
        committer.stop()
    rebuild(store, resume=True)
    assert not _waiting(store) and verify(store) == []


def test_messages_go_into_the_index_once_the_committer_idles(store: EventStore) -> None:
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_idle=0.05
    )
    try:
        committer.commit(_log_with_messages("ann", 2)[1], 0)
        deadline = time.monotonic() + 10
        while _waiting(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _waiting(store)
    finally:
        committer.stop()


def test_the_idle_pass_waits_for_a_pause_in_the_writes(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes to an idle committer happen on their own threads; the pass still comes only
    once no write came for ``index_idle`` seconds. The pass is timed where it begins, so a
    test thread that a loaded machine runs late cannot see an early pass as on time."""
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_idle=1.0
    )
    passes: list[float] = []
    index_messages = committer._index_messages

    def timed_index_messages() -> None:
        passes.append(time.monotonic())
        index_messages()

    monkeypatch.setattr(committer, "_index_messages", timed_index_messages)
    try:
        time.sleep(0.8)  # whatever the committer's own thread is waiting for meanwhile
        written_from = time.monotonic()
        committer.commit(_log_with_messages("ann", 2)[1], 0)
        deadline = time.monotonic() + 30
        while _waiting(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _waiting(store)
        assert passes[0] - written_from >= 1.0, "the pass came before a 1 s pause"
    finally:
        committer.stop()


def test_stopping_indexes_the_messages_that_wait(store: EventStore) -> None:
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_idle=3600
    )
    committer.commit(_log_with_messages("ann", 2)[1], 0)
    assert _waiting(store)
    committer.stop()
    assert not _waiting(store)


def test_a_large_write_leaves_its_messages_to_wait_for_the_next_pass_in_bulk(
    store: EventStore,
) -> None:
    """Each index pass writes a new FTS5 segment, at a cost mostly per pass: a group
    commit under load does not index its own messages, it adds them to those waiting."""
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=200, index_idle=3600
    )
    try:
        committer.commit(_log_with_messages("ann", 150)[1], 0)
        assert _waiting(store), "151 events, fewer than 200: the messages wait"
        committer.commit(_log_with_messages("bob", 60)[1], 0)
        assert not _waiting(store)
    finally:
        committer.stop()


def test_an_index_pass_the_database_fails_is_one_warning_line_and_the_messages_wait(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(*args: Any) -> None:
        raise StorageError("database or disk is full\n(details on a second line)")

    monkeypatch.setattr("actors._committer.index_messages", full)
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_idle=3600
    )
    committer.commit(_log_with_messages("ann", 2)[1], 0)
    committer.stop()  # indexes what waits, which fails
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == (
        "indexing messages for search failed (database or disk is full); "
        "a search indexes them first"
    )
    assert warning.exc_info is None, "an expected failure of the database: no trace"
    assert _waiting(store)


def test_an_exchange_of_a_user_alone_is_three_statements_on_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every statement costs the client and the server one more statement's work: on
    PostgreSQL (psycopg) a lone user's write is three between its BEGIN and COMMIT (the
    events, with the check of when their log began; the look at the position; the rows,
    with the position's move), and it lands as a rebuild would fold it. Its user's row is
    remembered from the write before, as the engine's projector remembers live users'."""
    import psycopg

    store = EventStore(postgres_url())
    projector = Projector(ProjectionTables(), remember=10)
    with store.transaction() as connection:
        projector.create(connection)
    committer = GroupCommitter(store, projector)
    sent: list[str] = []
    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def counted(method: Any) -> Any:
        def run(cursor: Any, query: Any, *rest: Any, **named: Any) -> Any:
            sent.append(str(query))
            return method(cursor, query, *rest, **named)

        return run

    try:
        log, events = _log_with_messages("ann", 1)
        committer.commit(events, 0)
        monkeypatch.setattr(psycopg.Cursor, "execute", counted(execute))
        monkeypatch.setattr(psycopg.Cursor, "executemany", counted(executemany))
        log.add_message("user", "I live in Oslo.", None, 1000)
        log.add_message("assistant", "Nice.", None, 1000)
        committer.commit(log.collect_events(), 0, origin=log.created_on)
        monkeypatch.undo()
    finally:
        committer.stop()
    try:
        assert len(sent) == 3, "\n".join(s[:70] for s in sent)
        assert sent[0].startswith("WITH inserted AS (INSERT INTO")
        assert sent[2].startswith("WITH s0 AS (INSERT INTO")
        assert verify(store) == []
        assert store.max_position() == 4
    finally:
        store.close()


def test_a_write_whose_connection_was_lost_before_its_commit_is_sent_again_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server ended the session a write ran on before its COMMIT was sent (nothing of
    it stored): the write goes again on a fresh connection, so its caller is not refused,
    and it is stored once, its rows as a rebuild would fold them."""
    store = EventStore(postgres_url())
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    committer = GroupCommitter(store, projector)
    append, attempts = store.append, []

    def losing_the_first_session(batches: Any, fold: Any, *rest: Any) -> Any:
        attempts.append(len(attempts) + 1)
        if len(attempts) > 1:
            return append(batches, fold, *rest)

        def session_ended(connection: Any, recorded: Any) -> None:
            fold(connection, recorded)
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

        return append(batches, session_ended, *rest)

    monkeypatch.setattr(store, "append", losing_the_first_session)
    try:
        recorded = committer.commit(_log_with_messages("ann", 2)[1], 1)
        assert attempts == [1, 2]
        assert len(recorded) == 3
        loaded = store.load("ann")
        assert loaded is not None and loaded.message_count == 2
        assert verify(store) == []
    finally:
        committer.stop()
        store.close()


def _group_behind_u0(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, fail: Any, kind: type[_Kept] = _Kept
) -> tuple[list[_Kept], list[int]]:
    """Write u1's and u2's events in one group (queued behind u0's write), made by
    ``fail(append)`` (``append`` stores the group), as writes of ``kind``: the writes,
    settled, and the number of logs of every write sent after u0's."""
    sent: list[int] = []
    with _behind_u0(store, monkeypatch) as held:
        append = store.append

        def failing(batches: Any, *rest: Any) -> Any:
            sent.append(len(batches))
            if len(sent) == 1:
                return fail(lambda: append(batches, *rest))
            return append(batches, *rest)

        monkeypatch.setattr(store, "append", failing)
        writes = [kind(_log_with_messages(f"u{i}", 2)[1], 1) for i in (1, 2)]
        tickets = [held.committer.submit(write) for write in writes]
        held.gate.set()
        held.committer.wait_for(tickets[-1])
        assert held.settled.calls == [("u0", None)]
    return writes, sent


def _disconnected() -> StorageError:
    """The store's error for a connection the server closed."""
    return StorageError("could not store 6 events: server closed the connection unexpectedly")


def _acknowledgement_lost(append: Any) -> Any:
    """Store the group, then fail as if the connection dropped after COMMIT was sent."""
    append()
    raise _disconnected()


def test_a_group_whose_commit_landed_but_was_not_acknowledged_is_settled_committed_once(
    any_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dropped after COMMIT was sent (or an error came after the commit):
    the group's writes are in the log. Sent again, each would conflict with its own events
    and its caller decide it again (an exchange stored twice, a task left running); each is
    found in the log instead and acknowledged with its events' positions, stored once."""
    store = any_store
    writes, sent = _group_behind_u0(store, monkeypatch, _acknowledgement_lost)
    assert [write.outcome[1] for write in writes] == [None, None]
    assert sent == [2], "the group was written once, and nothing of it sent again"
    positions = _positions(store)
    for write in writes:
        recorded, _ = write.outcome
        assert recorded is not None and [r.event for r in recorded] == list(write.events)
        assert [r.notification_id for r in recorded] == [
            positions[e.originator_id, e.originator_version] for e in write.events
        ]
    for user in ("u1", "u2"):
        loaded = store.load(user)
        assert loaded is not None and loaded.message_count == 2 and loaded.version == 3
    assert verify(store) == []


def test_a_write_alone_whose_commit_landed_but_was_not_acknowledged_is_settled_committed(
    any_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed with a StorageError though stored: an add_exchange its caller retried was
    stored twice."""
    store = any_store
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    append = store.append
    monkeypatch.setattr(store, "append", lambda *args: _acknowledgement_lost(lambda: append(*args)))
    write = _Kept(_log_with_messages("ann", 2)[1], 1)
    try:
        committer.wait_for(committer.submit(write))
    finally:
        committer.stop()
    _assert_stored_once(store, write)


def test_a_group_whose_write_failed_before_its_commit_is_sent_again_one_by_one(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of the group was stored: each write goes again on its own, and lands."""

    def refused(append: Any) -> Any:
        raise _disconnected()

    writes, sent = _group_behind_u0(store, monkeypatch, refused)
    assert sent == [2, 1, 1]
    assert [write.outcome[1] for write in writes] == [None, None]
    assert all(store.last_version(user) == 3 for user in ("u1", "u2"))
    assert verify(store) == []


def test_a_group_not_known_to_be_stored_or_not_fails_each_write_and_sends_none_again(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent again, a write the failed commit stored would conflict with itself: with the
    database not answering whether it did, each write fails with the group's error, as a
    write alone would (a decision's caller looks for it in the log, an append's is told
    that the store failed)."""

    def unanswered(batches: Any) -> Any:
        raise _disconnected()

    monkeypatch.setattr(store, "find_recorded", unanswered)
    writes, sent = _group_behind_u0(store, monkeypatch, _acknowledgement_lost)
    assert sent == [2]
    assert [type(write.outcome[1]) for write in writes] == [StorageError, StorageError]


class _Retried(_Kept):
    """A kept write the committer tries :data:`STORE_ATTEMPTS` times, as an append."""

    __slots__ = ()
    attempts = STORE_ATTEMPTS


@contextmanager
def _locked_by_another_connection(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *, released_after: int | None
) -> Iterator[tuple[EventStore, GroupCommitter, list[StorageError]]]:
    """A SQLite store whose write lock another connection (another process) holds, until
    ``released_after`` of its writes failed for it (never, with ``None``); its writes
    wait 10 ms for the lock. Yields the store, its committer and the failures."""
    path = tmp_path / "locked.db"
    store = EventStore(sqlite_url(path), busy_timeout_ms=10)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    append, failures = store.append, []

    def released_once_failed(*args: Any) -> Any:
        try:
            return append(*args)
        except StorageError as error:
            failures.append(error)
            if other.in_transaction and len(failures) == released_after:
                other.execute("COMMIT")
            raise

    monkeypatch.setattr(store, "append", released_once_failed)
    committer = GroupCommitter(store, projector)
    try:
        yield store, committer, failures
    finally:
        committer.stop()
        other.close()
        store.close()


def test_a_write_that_finds_the_file_locked_too_long_is_sent_again_once_it_is_free(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_BUSY past the busy timeout (another process writing a while): the write is
    looked for in the log, not found, sent again after a short pause, and stored once (its
    caller was refused, and an exchange it sent again could be stored twice)."""
    with _locked_by_another_connection(tmp_path, monkeypatch, released_after=1) as held:
        store, committer, failures = held
        write = _Retried(_log_with_messages("ann", 2)[1], 1)
        committer.wait_for(committer.submit(write))
        assert len(failures) == 1 and may_pass(failures[0])
        _assert_stored_once(store, write)


def test_a_write_the_lock_outlasts_fails_after_its_last_try_saying_it_may_pass(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Still locked at its last try: the write fails with TransientStorageError, nothing of
    it stored, and the writes after it are told, not written past the gap."""
    with _locked_by_another_connection(tmp_path, monkeypatch, released_after=None) as held:
        store, committer, failures = held
        events = _log_with_messages("ann", 2)[1]
        first, after = _Retried(events[:2], 1), _Retried(events[2:], 1)
        committer.wait_for(committer.submit(first))
        committer.wait_for(committer.submit(after))
        assert len(failures) == STORE_ATTEMPTS
        assert isinstance(first.outcome[1], TransientStorageError)
        assert "database is locked" in str(first.outcome[1])
        assert isinstance(after.outcome[1], StorageError), "refused, never written"
        assert store.load("ann") is None


def test_a_write_that_failed_after_a_long_wait_is_not_sent_again_to_wait_as_long(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock SQLite already waited its busy timeout for (30 s by default), or a statement
    timeout, failed after a long wait: sent again, every writer behind it would wait as long
    twice more. A try that took over :data:`LONG_WAIT` fails at once, with
    TransientStorageError saying it may be sent again."""
    monkeypatch.setattr(committer_module, "LONG_WAIT", 0.0)
    with _locked_by_another_connection(tmp_path, monkeypatch, released_after=None) as held:
        store, committer, failures = held
        write = _Retried(_log_with_messages("ann", 1)[1], 1)
        committer.wait_for(committer.submit(write))
        assert len(failures) == 1
        assert isinstance(write.outcome[1], TransientStorageError)
        assert "tried once" in str(write.outcome[1])
        assert store.load("ann") is None


def test_a_deadlock_found_after_a_short_wait_is_sent_again(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL finds a deadlock after its deadlock_timeout (1 s): a wait far shorter than
    SQLite's busy timeout, so the group goes again and is stored, once."""
    monkeypatch.setattr(committer_module, "LONG_WAIT", 0.5)

    def deadlocked(append: Any) -> Any:
        time.sleep(0.1)
        raise StorageError("could not store 6 events: deadlock detected") from (
            psycopg.errors.DeadlockDetected("deadlock detected")
        )

    writes, sent = _group_behind_u0(store, monkeypatch, deadlocked, _Retried)
    assert sent == [2, 2]
    assert [write.outcome[1] for write in writes] == [None, None]
    assert all(store.last_version(user) == 3 for user in ("u1", "u2"))


def test_a_group_whose_write_timed_out_is_sent_again_whole_after_a_pause(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that may pass is none of its writes' own: the group, found not stored,
    goes again together (one by one, each write would wait its own pauses), and each
    write is stored once."""

    def timed_out(append: Any) -> Any:
        raise StorageError("could not store 6 events: statement timeout") from (
            psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        )

    writes, sent = _group_behind_u0(store, monkeypatch, timed_out, _Retried)
    assert sent == [2, 2]
    assert [write.outcome[1] for write in writes] == [None, None]
    assert all(store.last_version(user) == 3 for user in ("u1", "u2"))
    assert verify(store) == []


def _assert_stored_once(store: EventStore, write: Any) -> None:
    """``write`` (of ann's two messages) was acknowledged with its own events, stored once."""
    recorded, error = write.outcome
    assert error is None
    assert recorded is not None and [r.event for r in recorded] == list(write.events)
    loaded = store.load("ann")
    assert loaded is not None and loaded.message_count == 2
    assert verify(store) == []
