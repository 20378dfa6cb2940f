"""The daemon threads a batch is prepared on past 100 current entries."""

from __future__ import annotations

import threading

import pytest

from actors._daemon_threads import DaemonThreads


def test_no_thread_is_left_once_stop_returns_after_the_running_jobs_ended() -> None:
    threads = DaemonThreads(2, name="test")
    release = threading.Event()
    assert threads.submit(release.wait)
    release.set()
    threads.stop(wait=10)
    assert [t.name for t in threading.enumerate() if t.name.startswith("memvee-test")] == []


def test_a_job_that_outlasts_the_wait_is_abandoned_and_a_later_one_never_runs() -> None:
    threads = DaemonThreads(1, name="test")
    release, ran = threading.Event(), threading.Event()
    assert threads.submit(release.wait)
    assert threads.submit(ran.set)
    threads.stop(wait=0.01)
    assert not threads.submit(ran.set)
    release.set()
    (held,) = threads._threads
    held.join(10)
    assert not held.is_alive() and not ran.is_set()


def test_a_thread_starts_only_when_a_job_finds_none_free() -> None:
    threads = DaemonThreads(64, name="test")
    release = threading.Event()
    started = [threading.Event() for _ in range(3)]
    try:
        assert threads._threads == [], "no job, no thread"
        for count, each in enumerate(started, start=1):
            assert threads.submit(lambda each=each: (each.set(), release.wait(10)))
            assert len(threads._threads) == count
        assert all(each.wait(10) for each in started), "jobs given together run together"
    finally:
        release.set()
        threads.stop(wait=10)


def test_a_job_still_waiting_when_the_threads_stop_calls_its_dropped_instead() -> None:
    threads = DaemonThreads(1, name="test")
    release, ran, dropped = threading.Event(), threading.Event(), threading.Event()
    assert threads.submit(lambda: release.wait(10))
    assert threads.submit(ran.set, dropped=dropped.set)
    try:
        threads.stop()
    finally:
        release.set()
    threads.stop(wait=10)
    assert dropped.is_set() and not ran.is_set()


def test_a_job_given_once_the_threads_stopped_calls_its_dropped() -> None:
    """Its caller had to remember to call it on ``False``, or its batch waited for ever."""
    threads = DaemonThreads(1, name="test")
    threads.stop()
    ran, dropped = threading.Event(), threading.Event()
    assert not threads.submit(ran.set, dropped=dropped.set)
    assert dropped.is_set() and not ran.is_set()


def test_a_job_no_thread_can_be_started_for_calls_its_dropped_and_the_failure_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    threads = DaemonThreads(1, name="test")
    monkeypatch.setattr(threading.Thread, "start", refused)
    dropped = threading.Event()
    assert not threads.submit(lambda: None, dropped=dropped.set)
    assert dropped.is_set()
    assert any("memvee-test" in m and "can't start" in m for m in caplog.messages)
