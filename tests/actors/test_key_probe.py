"""The probe of a refused key: one run tells whether the key works, for every user owed."""

from __future__ import annotations

import threading

from actors._key_probe import KeyProbe


class _Unheard:
    """A task observer that hears nothing (the probe forwards every move to it)."""

    def task_scheduled(self, user_id: str, task_id: str, trigger: str, *, stored: bool) -> None:
        pass

    def task_stored(self, user_id: str, task_id: str) -> None:
        pass

    def task_running(self, user_id: str, task_id: str, message_count: int) -> None:
        pass

    def task_finished(
        self,
        user_id: str,
        task_id: str,
        status: str,
        knowledge_count: int,
        error: str | None,
        covered: int | None = None,
    ) -> None:
        pass

    def user_forgotten(self, user_id: str, erasure: object) -> None:
        pass


def test_one_probe_of_the_key_runs_at_a_time_and_the_next_may_start_once_it_ended() -> None:
    """Users taken over one after another while a probe runs are owed to it, not probed
    each: a key still refused costs one run; once the probe's task ends (refused here),
    or it queued nothing, the next may start."""
    probe = KeyProbe(_Unheard(), threading.Event())
    assert probe.start_probe("probe-1")
    assert not probe.start_probe("probe-2"), "one runs already"
    probe.task_finished("u", "another task", "FAILED", 0, "HTTP 401")
    assert not probe.start_probe("probe-2"), "another task's end is not the probe's"
    probe.task_finished("u", "probe-1", "FAILED", 0, "HTTP 401")
    assert probe.start_probe("probe-2")
    probe.probe_over("probe-2")
    assert probe.start_probe("probe-3"), "a probe that queued nothing is over"


def test_a_probe_a_waiting_request_stands_for_ends_with_that_request() -> None:
    """A probe queued nothing because a request of its user already waited: that request
    is the probe, and its end lets the next probe start."""
    probe = KeyProbe(_Unheard(), threading.Event())
    assert probe.start_probe("probe-1")
    probe.stands_as("probe-1", "waiting")
    probe.probe_over("probe-1")
    assert not probe.start_probe("probe-2"), "the waiting request runs as the probe"
    probe.task_finished("u", "waiting", "FAILED", 0, "HTTP 401")
    assert probe.start_probe("probe-2")
