"""Snapshots of a user's log ride the write that reaches their version: no transaction of
their own, no actor waiting for the disk, and a snapshot that cannot be made never
refuses the write."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest
from sqlalchemy import select

from actors.user_actor import SNAPSHOT_EVENT_BYTES
from events import EventStore
from memvee import Memory


def _snapshot_versions(store: EventStore) -> list[int]:
    table = store._snapshots
    with store.engine.connect() as connection:
        query = select(table.c.originator_version).order_by(table.c.originator_version)
        return [row[0] for row in connection.execute(query)]


async def _memory_taking_snapshots(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Memory, Any, list[Any]]:
    """A Memory snapshotting every 4 events (at least), its engine, and the snapshots its
    store encodes from now on, in order."""
    memory: Memory = await make_memory(config={"snapshot_interval": 4})
    engine = memory._engine
    assert engine is not None
    taken: list[Any] = []
    encode = engine.store.snapshot_of

    def spied(user_log: Any) -> Any:
        taken.append(encode(user_log))
        return taken[-1]

    monkeypatch.setattr(engine.store, "snapshot_of", spied)
    return memory, engine, taken


async def test_a_snapshot_is_stored_in_the_write_that_reaches_its_version_in_place_of_the_last(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, engine, taken = await _memory_taking_snapshots(make_memory, monkeypatch)
    before = engine.committer.transactions
    for i in range(5):  # versions 3, 5, 7, 9, 11: a snapshot once 4 events went by
        await memory.add_exchange("ann", f"question {i}", f"answer {i}")
    assert engine.committer.transactions - before == 5, "no transaction of their own"
    assert [s.originator_version for s in taken] == [5, 9]
    assert await asyncio.to_thread(_snapshot_versions, engine.store) == [9], "the latest only"
    loaded = await asyncio.to_thread(engine.store.load, "ann")
    assert loaded is not None and loaded.message_count == 10


async def test_a_large_state_is_snapshotted_after_as_many_events_as_its_snapshot_is_large(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, engine, taken = await _memory_taking_snapshots(make_memory, monkeypatch)
    for i in range(60):  # nothing is extracted: every message stays in the state
        await memory.add_exchange("cy", f"question {i}", f"answer {i}")
    versions = [s.originator_version for s in taken]
    gaps = [b - a for a, b in itertools.pairwise(versions)]
    for snapshot, gap in zip(taken, gaps, strict=False):
        worth = len(snapshot.state) // SNAPSHOT_EVENT_BYTES
        assert max(4, worth) <= gap <= max(4, worth) + 1, "an exchange is two events"
    assert gaps[-1] > gaps[0] >= 4, "the state grew, so the snapshots drew apart"
    assert await asyncio.to_thread(_snapshot_versions, engine.store) == versions[-1:]
    loaded = await asyncio.to_thread(engine.store.load, "cy")
    assert loaded is not None and loaded.message_count == len(loaded.pending) == 120


async def test_a_snapshot_that_cannot_be_made_does_not_refuse_the_write(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    memory: Memory = await make_memory(config={"snapshot_interval": 2})
    engine = memory._engine
    assert engine is not None

    def broken(user_log: Any) -> Any:
        raise TypeError("cannot encode this state")

    monkeypatch.setattr(engine.store, "snapshot_of", broken)
    with caplog.at_level(logging.WARNING, logger="memvee.actors"):
        for i in range(3):
            await memory.add_exchange("bo", f"question {i}", f"answer {i}")
    assert [m.content for m in await memory.buffer("bo")][-1] == "answer 2"
    assert await asyncio.to_thread(_snapshot_versions, engine.store) == []
    assert "could not snapshot the log" in caplog.text


async def test_a_user_who_writes_a_little_between_reloads_is_still_snapshotted(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count runs from the stored snapshot, not from the version the actor loaded: an
    actor stopped before the next snapshot was due does not put it off again."""
    memory, engine, taken = await _memory_taking_snapshots(make_memory, monkeypatch)
    for i in range(6):  # one exchange per actor's life: versions 3, 5, 7, 9, 11, 13
        await memory.add_exchange("di", f"question {i}", f"answer {i}")
        engine.directory.passivate_idle(older_than=0)
        while memory.live_actor_count:
            await asyncio.sleep(0.005)
    assert [s.originator_version for s in taken] == [5, 9, 13]
    loaded = await asyncio.to_thread(engine.store.load_log, "di")
    assert loaded.snapshot_version == 13 and loaded.log is not None
    assert loaded.snapshot_bytes == len(taken[-1].state)


async def test_a_log_whose_snapshot_is_older_than_its_state_is_replayed_whole_once_not_every_load(
    make_memory: Any, extractor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's latest snapshot has the form before the log kept how its last run ended:
    the first load replays the log from its first event and its owner stores a fresh
    snapshot; the loads after it start from that one. Every load used to replay the whole
    log until the user's next write (a user held after a refused run: at every open)."""
    from eventsourcing.domain import Snapshot
    from eventsourcing.persistence import StoredEvent

    from events.errors import ExtractorAccessRefusedError
    from memvee import ProcessingError

    extractor.fault = lambda _: ExtractorAccessRefusedError("HTTP 401: invalid x-api-key")
    settings = {"auto_process": True, "batch_threshold": 10}
    memory: Memory = await make_memory(config=settings)
    await memory.add_exchange("ann", "Ann lives in Oslo.", "Nice.")
    with pytest.raises(ProcessingError):
        await memory.process("ann")
    store = memory._engine.store
    old_form = Snapshot.take(await asyncio.to_thread(store.load, "ann"))
    for told_by_the_events_only in ("failed_last", "refused_last"):
        del old_form.state[told_by_the_events_only]
    stored = StoredEvent(*store._encoder(old_form))
    await asyncio.to_thread(store.append, [], None, [stored])
    await memory.close()
    caplog.set_level(logging.DEBUG, logger="memvee.events")
    for _ in range(3):
        reopened: Memory = await make_memory(config=settings)
        assert len(await reopened.buffer("ann")) == 2
        await reopened.close()
    replays = [r for r in caplog.records if "older than its state" in r.getMessage()]
    assert len(replays) == 1


async def _with_a_passed_over_snapshot(make_memory: Any, extractor: Any, user: str) -> None:
    """Leave ``user`` with a refused run and a latest snapshot in the form before the log
    kept how its last run ended: the next load replays the log and snapshots it again."""
    from eventsourcing.domain import Snapshot
    from eventsourcing.persistence import StoredEvent

    from events.errors import ExtractorAccessRefusedError
    from memvee import ProcessingError

    extractor.fault = lambda _: ExtractorAccessRefusedError("HTTP 401: invalid x-api-key")
    memory: Memory = await make_memory(config={"auto_process": True, "batch_threshold": 10})
    await memory.add_exchange(user, "My locker code is zebra-4471.", "Noted.")
    with pytest.raises(ProcessingError):
        await memory.process(user)
    store = memory._engine.store
    old_form = Snapshot.take(await asyncio.to_thread(store.load, user))
    for told_by_the_events_only in ("failed_last", "refused_last"):
        del old_form.state[told_by_the_events_only]
    await asyncio.to_thread(store.append, [], None, [StoredEvent(*store._encoder(old_form))])
    await memory.close()
    extractor.fault = None


async def test_a_user_forgotten_elsewhere_just_before_the_snapshot_after_a_replay_stays_forgotten(
    make_memory: Any, extractor: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another Memory forgets the user between the load that replays their log and the
    snapshot its owner stores after it: no snapshot of the erased state is stored, so the
    user stays forgotten (no log to load, no secret in a snapshot), and a reopen and a
    later write to the user work. The snapshot used to bring the erased state back with
    no event under it: every later write to the user conflicted, and reopens hung."""
    await _with_a_passed_over_snapshot(make_memory, extractor, "ann")
    settings = {"auto_process": True, "batch_threshold": 10, "leases": True}
    other: Memory = await make_memory(config={"leases": True})
    loop = asyncio.get_running_loop()
    replace = EventStore.replace_snapshot
    forgotten: list[int] = []

    def forgotten_first(store: EventStore, user_log: Any) -> bool:
        receipt = asyncio.run_coroutine_threadsafe(other.forget("ann"), loop).result(20)
        forgotten.append(receipt.events)
        return replace(store, user_log)

    monkeypatch.setattr(EventStore, "replace_snapshot", forgotten_first)
    reopened: Memory = await asyncio.wait_for(make_memory(config=settings), 30)
    monkeypatch.setattr(EventStore, "replace_snapshot", replace)
    assert forgotten and forgotten[0] > 0, "the forget landed between the load and the write"
    await asyncio.wait_for(reopened.close(), 30)
    peek = EventStore(db_url)
    try:
        assert peek.load("ann") is None
        assert _snapshot_versions(peek) == []
    finally:
        peek.close()
    assert await other.user("ann") is None
    later: Memory = await asyncio.wait_for(make_memory(config=settings), 30)
    await asyncio.wait_for(later.add_message("ann", "user", "Hi, I am new here."), 10)
    assert [m.content for m in await later.buffer("ann")] == ["Hi, I am new here."]
