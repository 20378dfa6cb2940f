"""Timers: one thread runs every scheduled callback once, or tells it was dropped."""

from __future__ import annotations

import threading

from actors._timers import Timers
from actors.user_actor import CONFLICT_DELAY_MAX, conflict_delay


def test_a_callback_runs_once_at_its_time_and_is_then_never_dropped() -> None:
    timers = Timers()
    ran, dropped = threading.Event(), []
    timers.call_later(0.01, ran.set, lambda: dropped.append("ran"))
    assert ran.wait(5)
    timers.stop()
    assert dropped == []


def test_callbacks_pending_when_the_timers_stop_are_told_they_were_dropped() -> None:
    timers = Timers()
    ran: list[str] = []
    dropped: list[str] = []
    timers.call_later(60, lambda: ran.append("a"), lambda: dropped.append("a"))
    timers.call_later(60, lambda: ran.append("b"))
    timers.stop()
    assert (ran, dropped) == ([], ["a"])
    timers.call_later(0, lambda: ran.append("c"), lambda: dropped.append("c"))
    assert (ran, dropped) == ([], ["a", "c"]), "scheduled after the stop: dropped at once"


def test_the_wait_before_a_retry_after_a_conflict_is_random_and_bounded() -> None:
    first = [conflict_delay(0) for _ in range(200)]
    late = [conflict_delay(30) for _ in range(200)]
    assert min(first) >= 0 and max(first) <= 0.0005
    assert min(late) >= 0 and max(late) <= CONFLICT_DELAY_MAX
    assert len(set(late)) > 100, "processes that conflicted must spread out"
