"""The group committer: writes settle in the order they were queued, a ticket is a barrier
for every write queued up to it, a settled write keeps nothing of itself alive, and the
messages written go into the full-text index in bulk, soon after."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from actors._committer import GroupCommitter
from events import EventStore, StorageError, UserLog, sqlite_url
from projections import ProjectionTables, Projector, SearchIndex


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = EventStore(sqlite_url(tmp_path / "c.db"))
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    yield store
    store.close()


def _log_with_messages(user: str, count: int) -> tuple[UserLog, list[Any]]:
    log = UserLog.register(user)
    for i in range(count):
        log.add_message("user", f"message {i}", None, 1000)
    return log, list(log.collect_events())


class _Settled:
    """Records every ``then`` call, with the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseException | None]] = []

    def __call__(self, name: str) -> Any:
        def then(error: BaseException | None) -> None:
            self.calls.append((name, error))

        return then


def test_a_ticket_waits_for_its_write_and_every_write_before_it(store: EventStore) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    try:
        tickets = [
            committer.submit(_log_with_messages(f"u{i}", 2)[1], 1, settled(f"u{i}"))
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


def test_a_failed_write_is_told_and_refuses_the_rest_of_its_epoch(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    settled = _Settled()
    original = store.append
    gate = threading.Event()

    def failing(batches: Any, in_transaction: Any = None) -> Any:
        gate.wait(5)
        if any(getattr(e, "content", "") == "boom" for b in batches for e in b):
            raise StorageError("the disk is on fire")
        return original(batches, in_transaction)

    monkeypatch.setattr(store, "append", failing)
    try:
        log = UserLog.register("ann")
        log.add_message("user", "boom", None, 1000)
        first = committer.submit(log.collect_events(), 7, settled("boom"))
        log.add_message("user", "built on it", None, 1000)
        second = committer.submit(log.collect_events(), 7, settled("after"))
        gate.set()
        committer.wait_for(second)
        assert first < second
        assert [(n, type(e)) for n, e in settled.calls] == [
            ("boom", StorageError),
            ("after", type(settled.calls[1][1])),
        ]
        assert settled.calls[1][1] is not None, "a write decided on a failed one is refused"
        assert committer.failed(log.id, 7)
        assert not committer.failed(log.id, 8)
    finally:
        committer.stop()


def test_a_settled_write_keeps_neither_its_events_nor_its_callback(store: EventStore) -> None:
    committer = GroupCommitter(store, Projector(ProjectionTables()))
    try:
        _, events = _log_with_messages("bo", 2)
        settled = _Settled()
        then = settled("bo")
        gone = weakref.ref(then)
        ticket = committer.submit(events, 1, then)
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


def test_stopping_indexes_the_messages_that_wait(store: EventStore) -> None:
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_idle=3600
    )
    committer.commit(_log_with_messages("ann", 2)[1], 0)
    assert _waiting(store)
    committer.stop()
    assert not _waiting(store)


def test_a_write_of_many_events_indexes_its_messages_itself(store: EventStore) -> None:
    """Under load every group commit carries its share of the index work: no spikes."""
    committer = GroupCommitter(
        store, Projector(ProjectionTables()), index_every=10_000, index_with=6, index_idle=3600
    )
    try:
        committer.commit(_log_with_messages("ann", 4)[1], 0)
        assert _waiting(store), "five events are a small write: its messages wait"
        committer.commit(_log_with_messages("bob", 5)[1], 0)
        assert not _waiting(store)
    finally:
        committer.stop()
