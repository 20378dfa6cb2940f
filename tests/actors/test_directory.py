"""The actor directory: actors spawned on demand, passivated when idle, never racing."""

from __future__ import annotations

import asyncio
import enum
import gc
import sys
import threading
import time
import types
import weakref
from typing import Any

import pytest

from actors._bridge import _LOCKS
from memvee import Memory, MemoryClosedError, ProcessStatus
from memvee._memory import SHUTDOWN_REASON
from tests.support.futures import count_futures_made
from tests.support.store_faults import queue_and_stop


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_idle_actors_are_stopped_and_come_back_on_the_next_call(make_memory: Any) -> None:
    """Counted by spawns: on a loaded machine the actor may already be idle for 0.2 s
    by the time the test looks at the live ones."""
    memory: Memory = await make_memory(config={"idle_timeout": 0.2})
    engine = memory._engine
    assert engine is not None
    await memory.add_exchange("u", "I live in Oslo", "ok")
    assert engine.directory.spawned == 1
    await _until(lambda: memory.live_actor_count == 0)
    await memory.add_exchange("u", "I work at Acme", "ok")
    assert engine.directory.spawned == 2
    assert [m.seq for m in await memory.buffer("u")] == [1, 2, 3, 4]
    assert await memory.process("u") == 2


async def test_an_actor_that_stopped_on_its_own_is_replaced_by_the_users_next_call(
    make_memory: Any,
) -> None:
    """pykka stops every actor when one lets what is no ``Exception`` escape: each user's
    next call starts a fresh actor instead of failing until the Memory opens again."""
    memory: Memory = await make_memory()
    await memory.add_exchange("u", "I live in Oslo", "ok")
    engine = memory._engine
    assert engine is not None
    engine.directory._actors["u"].stop()
    await memory.add_exchange("u", "I work at Acme", "ok")
    assert [m.seq for m in await memory.buffer("u")] == [1, 2, 3, 4]
    assert await memory.process("u") == 2


async def test_the_engines_own_calls_neither_spawn_nor_keep_an_idle_actor(
    make_memory: Any,
) -> None:
    """Lease renewals and followed writes reach live actors through ``call_live``: only
    the application's commands count as use (with leases, idle actors never stopped)."""
    memory: Memory = await make_memory(config={"idle_timeout": 0.2})
    engine = memory._engine
    assert engine is not None
    directory = engine.directory
    await memory.add_exchange("u", "I live in Oslo", "ok")
    assert directory.call_live("nobody", "start_queued") is None
    assert "nobody" not in directory.live_users()
    async with asyncio.timeout(30):
        while (told := directory.call_live("u", "start_queued")) is not None:
            await asyncio.to_thread(told.get, timeout=30)
            await asyncio.sleep(0.02)
    assert directory.live_count == 0 and directory.spawned == 1


async def test_a_users_lease_is_given_up_only_while_no_actor_of_the_user_is_live(
    make_memory: Any,
) -> None:
    """A stopped actor, or the engine for an actor that stopped, releases after the actor
    left the directory; an actor of the user spawned since relies on the lease (it took
    it again: it was still ours), so the release is skipped for it."""
    memory: Memory = await make_memory()
    engine = memory._engine
    assert engine is not None
    directory, given_up = engine.directory, []
    await memory.add_exchange("u", "I live in Oslo", "ok")
    assert not directory.release("u", given_up.append)
    assert directory.release("v", given_up.append)
    assert given_up == ["v"]


async def test_touching_many_users_keeps_the_live_actor_count_bounded(make_memory: Any) -> None:
    memory: Memory = await make_memory(config={"max_live_actors": 20})
    await asyncio.gather(*(memory.add_message(f"user-{i}", "user", "hi") for i in range(200)))
    await _until(lambda: memory.live_actor_count <= 20)
    engine = memory._engine
    assert engine is not None
    assert engine.directory.spawned >= 200
    summaries = await asyncio.gather(*(memory.user(f"user-{i}") for i in range(200)))
    assert all(s is not None and s.message_count == 1 for s in summaries)


async def test_calls_racing_passivation_are_never_lost(make_memory: Any) -> None:
    memory: Memory = await make_memory(config={"idle_timeout": 0.05, "max_live_actors": 3})
    users = [f"racer-{i}" for i in range(8)]
    deadline = time.monotonic() + 1.5
    sent: dict[str, int] = dict.fromkeys(users, 0)

    async def write(user: str) -> None:
        while time.monotonic() < deadline:
            await memory.add_message(user, "user", f"message {sent[user]}")
            sent[user] += 1
            await asyncio.sleep(0.01 * (hash(user) % 5))

    await asyncio.gather(*(write(u) for u in users))
    engine = memory._engine
    assert engine is not None
    assert engine.directory.retired > 0, "the test must exercise passivation"
    for user in users:
        buffered = await memory.buffer(user)
        assert [m.content for m in buffered] == [f"message {i}" for i in range(sent[user])]


async def test_a_busy_actor_is_not_passivated(make_memory: Any, extractor: Any) -> None:
    extractor.gate.clear()
    memory: Memory = await make_memory(config={"idle_timeout": 0.05})
    await memory.add_exchange("busy", "I love tea", "ok")
    task = memory.process_async("busy")
    assert await asyncio.to_thread(extractor.started.wait, 5)
    await asyncio.sleep(0.3)
    assert memory.live_actor_count == 1
    extractor.gate.set()
    assert await task.wait() == 1


async def test_a_write_still_queued_when_its_actor_stops_is_seen_by_the_next_one(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An actor may stop while its last write waits in the group commit. The user's next
    actor loads the log only once that write settled, so a forget cannot erase the log
    before it: the write would land on the erased log past a gap in its versions, and
    every later call of the user would fail to load it."""
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    queued = await queue_and_stop(memory, "ann", monkeypatch)
    forgotten = asyncio.ensure_future(memory.forget("ann"))
    await asyncio.sleep(0.2)
    await queued.release()
    await forgotten
    assert await memory.messages("ann") == []
    engine = memory._engine
    assert engine is not None
    assert await asyncio.to_thread(engine.store.load, "ann") is None


def _spawns_held(memory: Memory) -> tuple[Any, threading.Event]:
    """The Memory's directory, whose actors' spawns wait until the event returned is set."""
    engine = memory._engine
    assert engine is not None
    directory = engine.directory
    spawn, gate = directory._spawn, threading.Event()

    def slow_spawn(user_id: str, retire: Any) -> Any:
        gate.wait(10)
        return spawn(user_id, retire)

    directory._spawn = slow_spawn  # type: ignore[method-assign]
    return directory, gate


async def test_a_write_waiting_for_its_actors_spawn_when_the_memory_closes_is_kept(
    make_memory: Any, db_url: str
) -> None:
    """Closing lets the spawns under way finish and deliver the calls that wait for them
    (it failed them with an untyped RuntimeError when the spawn ended after the stop)."""
    memory: Memory = await make_memory()
    directory, gate = _spawns_held(memory)
    write = asyncio.ensure_future(memory.add_exchange("late", "I live in Oslo", "ok"))
    await _until(lambda: "late" in directory._spawning)
    closing = asyncio.ensure_future(memory.close())
    await _until(lambda: directory._closing)  # stop() began
    refused = asyncio.ensure_future(memory.add_exchange("later", "hi", "ok"))
    gate.set()
    await closing
    assert [m.seq for m in await write] == [1, 2]
    with pytest.raises(MemoryClosedError):
        await refused
    async with Memory(db_url=db_url, embedder=False) as again:
        assert [m.content for m in await again.buffer("late")] == ["I live in Oslo", "ok"]


async def test_a_task_of_an_actor_still_starting_when_the_memory_closes_is_ended_by_the_close(
    make_memory: Any, db_url: str
) -> None:
    """The write that waited for its actor's spawn requests an automatic task: the close
    ends it as interrupted by shutdown, so the next open finds no task a crash left open."""
    memory: Memory = await make_memory(auto_process=True, batch_threshold=2)
    directory, gate = _spawns_held(memory)
    write = asyncio.ensure_future(memory.add_exchange("late", "I live in Oslo", "ok"))
    await _until(lambda: "late" in directory._spawning)
    closing = asyncio.ensure_future(memory.close(grace=0))
    await _until(lambda: directory._closing)
    gate.set()
    await closing
    await write
    async with Memory(db_url=db_url, embedder=False) as again:
        ended = [(t.status, t.error) for t in await again.tasks("late")]
    assert ended, "the write requested a task"
    assert all(
        status is ProcessStatus.COMPLETED or error == SHUTDOWN_REASON for status, error in ended
    ), ended


async def _tracked() -> int:
    """How many objects the collector tracks, after a full collection: the least of three
    counts a moment apart, so that a background thread's passing work (a lease renewal
    listing every user) is not counted as what is kept."""
    counts = []
    for _ in range(3):
        gc.collect()
        counts.append(len(gc.get_objects()))
        await asyncio.sleep(0.02)
    return min(counts)


async def test_a_write_in_flight_keeps_few_objects_for_the_collector(make_memory: Any) -> None:
    """Every collection walks each tracked object a waiting write keeps alive. With the
    committer held, one write of each of 200 users queues, and each keeps fewer than 16
    alive, the caller's task, its context and coroutine included: 14 measured, 20.6 before
    the write's request, callback and messages became one object and the messages were
    built on the loop once committed. The margin is for writes a loaded machine catches
    between two steps of queueing (up to 1.6 objects each seen on two busy cores)."""
    memory: Memory = await make_memory()
    users = [f"user-{i}" for i in range(200)]
    await asyncio.gather(*(memory.add_exchange(user, "hi", "hello") for user in users))
    engine = memory._engine
    assert engine is not None
    committer = engine.committer
    await asyncio.sleep(0.05)  # the finished tasks' last callbacks run
    at_rest = await _tracked()
    with committer._writing:
        writes = [asyncio.ensure_future(memory.add_exchange(u, "more", "yes")) for u in users]
        # all queued but the first, which the committer's thread holds, waiting its turn
        await _until(lambda: committer._queue.qsize() >= len(users) - 1)
        in_flight = await _tracked()
    stored = await asyncio.gather(*writes)
    assert [(first.seq, second.seq) for first, second in stored] == [(3, 4)] * len(users)
    assert (in_flight - at_rest) / len(users) < 16


def _reachable(root: object, boundary: set[int]) -> set[int]:
    """The ids of the tracked objects ``root`` reaches, ``root`` included, not through
    ``boundary`` (ids), modules, classes, code or enum members: the program, not its
    state."""
    static = (type, types.ModuleType, types.FunctionType, types.CodeType, enum.Enum)
    boundary = boundary | {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    seen, todo = {id(root)}, [root]
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) in seen or id(ref) in boundary or not gc.is_tracked(ref):
                continue
            if isinstance(ref, static) and not (
                isinstance(ref, types.FunctionType) and ref.__closure__
            ):
                continue
            seen.add(id(ref))
            todo.append(ref)
    return seen


async def test_an_idle_user_keeps_few_objects_for_the_collector(make_memory: Any) -> None:
    """Every full collection walks each tracked object a live user keeps while idle, a
    thousand users' worth at a time: the actor's reference (the directory's entry) and
    its weak reference, its inbox (its stopped flag too), the actor (no dict of its own)
    and the user's log with its list of pending events and its id; no proxy of the
    actor (on PostgreSQL the owner taking the lease messages itself). Objects a Memory
    keeps whatever its users, that another user's actor reaches too, or that the inboxes
    share (a lock of a fixed few each) are not counted, nor enum members (on PostgreSQL
    the other user's log may be out of memory when counted, after a lease renewal)."""
    memory: Memory = await make_memory()
    await asyncio.gather(*(memory.add_exchange(u, "hi", "hello") for u in ("ann", "bob")))
    engine = memory._engine
    assert engine is not None
    actors = engine.directory._actors
    loop = asyncio.get_running_loop()
    shared = _reachable(memory, {id(loop), id(actors)}) | {id(lock) for lock in _LOCKS}
    shared |= _reachable(actors["bob"], shared | {id(loop)})
    kept = _reachable(actors["ann"], shared | {id(loop)})
    assert len(kept) <= 7


async def test_users_whose_actors_stopped_leave_no_objects_for_the_collector(
    make_memory: Any, db_url: str
) -> None:
    """A user whose actor stopped keeps nothing alive that the collector walks, however
    many such users came and went (the writer still remembers each log as checked, as an
    integer). Dead weak references are left out: each SQLite connection keeps up to 200
    of its closed cursors', however many users. SQLite's alone: on PostgreSQL the writer
    remembers no checked logs, and the driver's own caches fill over the first writes."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the writer remembers checked logs on SQLite only")
    memory: Memory = await make_memory(config={"max_live_actors": 5})
    engine = memory._engine
    assert engine is not None
    loop = asyncio.get_running_loop()

    def kept() -> int:
        gc.collect()
        reached = _reachable(memory, {id(loop)})
        return sum(1 for o in gc.get_objects() if id(o) in reached and not _dead_weak(o))

    async def visit(users: range) -> None:
        for start in range(users.start, users.stop, 20):
            chunk = range(start, min(start + 20, users.stop))
            await asyncio.gather(*(_exchanges(memory, f"u{i}", 2) for i in chunk))
        await _until(lambda: engine.directory.live_count <= 5)

    await visit(range(50))
    before = kept()
    await visit(range(50, 250))
    assert (kept() - before) / 200 < 0.25


async def _exchanges(memory: Memory, user: str, count: int) -> None:
    for _ in range(count):
        await memory.add_exchange(user, "hi", "hello")


def _dead_weak(obj: object) -> bool:
    return isinstance(obj, weakref.ReferenceType) and obj() is None


async def test_an_exchange_makes_no_future_between_the_loop_and_its_commit(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's actor sets the committed events on the caller's call itself, from the
    committer: no future is made, locked and called back per write in between."""
    memory: Memory = await make_memory()
    await memory.add_exchange("u", "hi", "hello")  # the actor is spawned, the log loaded
    made = count_futures_made(monkeypatch)
    first, second = await memory.add_exchange("u", "more", "yes")
    assert (first.seq, second.seq) == (3, 4)
    assert made == []
