"""Pooled actors keep pykka's contract: a stopped actor is no longer alive, and whoever
waits on its stopped flag wakes, whether the wait began before or after the stop; and
messages run one at a time, in the order they were sent."""

from __future__ import annotations

import threading

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
