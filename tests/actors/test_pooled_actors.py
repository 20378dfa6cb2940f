"""Pooled actors keep pykka's contract: a stopped actor is no longer alive, and whoever
waits on its stopped flag wakes, whether the wait began before or after the stop."""

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
