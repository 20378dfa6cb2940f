"""Pooled actors keep pykka's contract: a stopped actor is no longer alive, and whoever
waits on its stopped flag wakes, whether the wait began before or after the stop; and
messages run one at a time, in the order they were sent; and no more turns run at once
than the dispatcher allows while they make progress."""

from __future__ import annotations

import threading

import pytest

from actors import _dispatcher
from actors._dispatcher import Dispatcher, PooledActor


class _Echo(PooledActor):
    def echo(self, value: str) -> str:
        return value


def test_a_stopped_actor_is_not_alive_and_its_waiters_wake(dispatcher: Dispatcher) -> None:
    ref = _Echo.start(dispatcher)
    assert ref.is_alive()
    assert ref.proxy().echo("hi").get(timeout=5) == "hi"
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ref.actor_stopped.wait(10)))
    waiter.start()
    assert not ref.actor_stopped.wait(0.05), "not stopped yet"
    ref.stop()
    waiter.join(10)
    assert woke == [True]
    assert not ref.is_alive()
    assert ref.actor_stopped.wait(0), "a wait after the stop returns at once"


class _Slow(PooledActor):
    def __init__(self, dispatcher: Dispatcher, gate: threading.Event) -> None:
        super().__init__(dispatcher)
        self.gate = gate
        self.seen: list[int] = []

    def note(self, n: int) -> list[int]:
        self.gate.wait(10)
        self.seen.append(n)
        return list(self.seen)


def test_messages_queued_behind_a_busy_actor_run_in_order_and_an_idle_inbox_is_empty(
    dispatcher: Dispatcher,
) -> None:
    gate = threading.Event()
    ref = _Slow.start(dispatcher, gate)
    futures = [ref.proxy().note(n) for n in range(5)]
    assert not ref.actor_inbox.empty(), "the messages behind the first one wait"
    gate.set()
    assert futures[-1].get(timeout=5) == [0, 1, 2, 3, 4]
    assert ref.actor_inbox.empty()
    ref.stop()


def _waiting_turns(
    dispatcher: Dispatcher, count: int, gate: threading.Event
) -> tuple[list[threading.Event], threading.Event]:
    """Schedule ``count`` turns that each mark their start, then wait for ``gate``; the
    events that say each began, and one set once every turn ended."""
    began = [threading.Event() for _ in range(count)]
    ended: list[int] = []
    all_ended = threading.Event()

    def turn(n: int) -> None:
        began[n].set()
        gate.wait(10)
        ended.append(n)
        if len(ended) == count:
            all_ended.set()

    for n in range(count):
        dispatcher.schedule(lambda n=n: turn(n))
    return began, all_ended


def test_while_running_turns_make_progress_no_more_than_the_limit_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each thread running Python competes with the event loop for the GIL: idle threads
    of the pool do not start turns beside the running ones unless those are stuck."""
    monkeypatch.setattr(_dispatcher, "STUCK_AFTER", 60.0)  # never stuck in this test
    dispatcher = Dispatcher(4, running=2)
    gate = threading.Event()
    try:
        began, all_ended = _waiting_turns(dispatcher, 3, gate)
        assert began[0].wait(10) and began[1].wait(10)
        assert not began[2].wait(0.5), "a third turn started beside two running ones"
        gate.set()
        assert all_ended.wait(10)
    finally:
        gate.set()
        dispatcher.shutdown()


def test_a_turn_runs_anyway_once_the_running_turns_end_none_for_a_while() -> None:
    """A running turn that waits (a database read, another actor) holds up the others
    for no longer than the dispatcher's patience."""
    dispatcher = Dispatcher(2, running=1)
    gate = threading.Event()
    try:
        began, all_ended = _waiting_turns(dispatcher, 2, gate)
        assert began[0].wait(10)
        assert began[1].wait(10), "the second turn waited for the stuck one to end"
        gate.set()
        assert all_ended.wait(10)
    finally:
        gate.set()
        dispatcher.shutdown()
