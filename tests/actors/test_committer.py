"""The group committer: writes settle in the order they were queued, a ticket is a barrier
for every write queued up to it, and a settled write keeps nothing of itself alive."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

from actors._committer import GroupCommitter
from events import EventStore, StorageError, UserLog, sqlite_url
from projections import ProjectionTables, Projector


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
