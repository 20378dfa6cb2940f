"""A store that fails on demand, as a database does while it restarts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from events import EventStore, StorageError
from memvee import Memory

FAILING = ("append", "load_log", "events_of")
"""The store's writes and the log reads of the actors."""

OUTAGE_ERROR = "the database is restarting"


class StoreOutage:
    """Makes ``store`` fail every write and log read while :attr:`down` is set."""

    def __init__(self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = threading.Event()
        self.refused = 0
        self._error = f"{OUTAGE_ERROR} ({store.safe_url})"  # named, as the store's own are
        for name in FAILING:
            monkeypatch.setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise StorageError(self._error)
            return method(*args, **kwargs)

        return call


class QueuedWrite:
    """An exchange of a user whose actor stopped while the write waited in the group
    commit, behind another user's write that a slow disk holds (see :func:`queue_and_stop`)."""

    def __init__(self, gate: threading.Event, calls: list[asyncio.Future[Any]]) -> None:
        self._gate = gate
        self._calls = calls

    async def release(self) -> None:
        """Let the disk go on, and wait until both exchanges are acknowledged."""
        self._gate.set()
        await asyncio.gather(*self._calls)


async def queue_and_stop(memory: Memory, user: str, monkeypatch: pytest.MonkeyPatch) -> QueuedWrite:
    """Hold every write of ``memory``'s store, let another user's write take the committer,
    queue an exchange of ``user`` behind it, then stop ``user``'s actor."""
    engine = memory._engine
    assert engine is not None
    gate, entered = threading.Event(), threading.Event()
    original = engine.store.append

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert gate.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.store, "append", held)
    committer = engine.committer
    issued = committer._issued
    first = asyncio.ensure_future(memory.add_exchange(f"not-{user}", "hello", "hi"))
    # Its write holds the store, not the end of an earlier write still settling, whose
    # acknowledgement may resume the caller before the committer is free.
    await _until(entered.is_set)
    queued = asyncio.ensure_future(memory.add_exchange(user, "I work at Acme", "ok"))
    await _until(lambda: committer._issued >= issued + 2)
    engine.directory.passivate_idle(older_than=0)
    await _until(lambda: user not in engine.directory._actors)
    return QueuedWrite(gate, [first, queued])


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.005)
