"""A background worker: works for the users it is told about, once each, and stops
without waiting for a long job to finish."""

from __future__ import annotations

import threading
from collections.abc import Callable

from actors._background import UserWorker


def test_each_user_told_about_is_worked_on_and_a_burst_only_once() -> None:
    filled: list[str] = []

    def fill(user: str, stop: Callable[[], bool]) -> int:
        filled.append(user)
        return 1

    filler = UserWorker(fill, name="test", delay=0.05)
    try:
        for _ in range(5):
            filler.touch("ann")
        filler.touch("bob")
        assert filler.wait_idle(10)
        assert sorted(filled) == ["ann", "bob"]
    finally:
        filler.stop()


def test_stop_ends_a_long_job_between_steps() -> None:
    started = threading.Event()
    seen_stop = threading.Event()

    def fill(user: str, stop: Callable[[], bool]) -> int:
        started.set()
        for _ in range(10_000):  # a long fill, asking between batches
            if stop():
                seen_stop.set()
                return 0
            threading.Event().wait(0.01)
        return 0

    filler = UserWorker(fill, name="test", delay=0)
    filler.touch("ann")
    assert started.wait(10)
    filler.stop()
    assert seen_stop.is_set(), "the fill was told to stop and ended early"
    assert not filler._thread.is_alive()


def test_a_failed_job_is_tried_again_later_on_its_own_and_others_go_on() -> None:
    attempts: list[str] = []
    done = threading.Event()

    def fill(user: str, stop: Callable[[], bool]) -> int:
        attempts.append(user)
        if user == "ann" and attempts.count("ann") <= 2:
            raise ConnectionError("the embedding API is down")
        if user == "ann":
            done.set()
        return 1

    filler = UserWorker(fill, name="test", delay=0, retry_delay=0.01)
    try:
        filler.touch("ann")
        filler.touch("bob")
        assert done.wait(10), "ann's job was tried again without another touch"
        assert attempts.count("ann") == 3
        assert attempts.count("bob") == 1
        assert filler.wait_idle(10)
        assert not filler._later and not filler._backoff._failures
    finally:
        filler.stop()
