"""The asyncio bridge: a bridged future runs each callback once, in order, whenever it is
added; it blocks only whoever calls ``get``; pykka's composition still works on it; and
results posted from other threads settle asyncio futures on their loop, in order."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import queue
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from pykka import Timeout

from actors._bridge import BridgedFuture, LoopInbox, inbox_of, one_wakeup, settle_future


@pytest.mark.parametrize("count", [1, 2, 3])
def test_callbacks_added_before_the_value_run_once_each_in_order(count: int) -> None:
    future: BridgedFuture[int] = BridgedFuture()
    calls: list[tuple[int, Any]] = []
    for n in range(count):
        future.add_done_callback(lambda f, n=n: calls.append((n, f.outcome())))
    assert calls == []
    future.set(7)
    assert calls == [(n, (True, 7)) for n in range(count)]


def test_a_callback_added_after_the_value_runs_at_once() -> None:
    future: BridgedFuture[str] = BridgedFuture()
    future.set("done")
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(f.outcome()))
    assert seen == [(True, "done")]


def test_a_future_is_set_once() -> None:
    future: BridgedFuture[int] = BridgedFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    assert future.get() == 1


def test_an_exception_reaches_callbacks_and_get() -> None:
    future: BridgedFuture[int] = BridgedFuture()
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(f.outcome()))
    error = ValueError("refused")
    future.set_exception(error)
    assert seen == [(False, error)]
    with pytest.raises(ValueError, match="refused"):
        future.get()


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    future: BridgedFuture[int] = BridgedFuture()
    seen: list[int] = []

    def fail(_: BridgedFuture[int]) -> None:
        raise RuntimeError("callback bug")

    future.add_done_callback(fail)
    future.add_done_callback(lambda f: seen.append(f.get()))
    future.set(3)
    assert seen == [3]
    assert "a future callback failed" in caplog.text


def test_get_waits_for_a_value_set_on_another_thread_or_times_out() -> None:
    future: BridgedFuture[int] = BridgedFuture()
    with pytest.raises(Timeout):
        future.get(timeout=0.01)
    threading.Timer(0.05, future.set, args=(42,)).start()
    assert future.get(timeout=10) == 42


def test_pykkas_composition_works_on_bridged_futures() -> None:
    future: BridgedFuture[int] = BridgedFuture()
    doubled = future.map(lambda value: value * 2)
    future.set(21)
    assert doubled.get(timeout=1) == 42


async def test_results_posted_from_threads_settle_futures_on_the_loop_in_order() -> None:
    loop = asyncio.get_running_loop()
    inbox = inbox_of(loop)
    assert inbox_of(loop) is inbox
    targets = [loop.create_future() for _ in range(100)]
    settled: list[int] = []
    for n, target in enumerate(targets):
        target.add_done_callback(lambda _, n=n: settled.append(n))
    cancelled = loop.create_future()
    cancelled.cancel()

    def post() -> None:
        for n, target in enumerate(targets):
            inbox.post(settle_future, target, n % 2 == 0, n if n % 2 == 0 else KeyError(n))
        inbox.post(settle_future, cancelled, True, "too late")

    await asyncio.to_thread(post)
    await asyncio.gather(*targets, return_exceptions=True)
    assert settled == list(range(100))
    assert [t.result() for t in targets[::2]] == list(range(0, 100, 2))
    assert all(isinstance(t.exception(), KeyError) for t in targets[1::2])
    assert cancelled.cancelled()


async def test_posts_racing_from_many_threads_each_run_once_in_each_posters_order() -> None:
    inbox = inbox_of(asyncio.get_running_loop())
    ran: list[tuple[int, int]] = []
    done = asyncio.Event()
    posters, posts = 4, 2000

    def record(poster: int, n: int) -> None:
        ran.append((poster, n))
        if len(ran) == posters * posts:
            done.set()

    def post(poster: int) -> None:
        for n in range(posts):
            inbox.post(record, poster, n)

    await asyncio.gather(*(asyncio.to_thread(post, p) for p in range(posters)))
    await asyncio.wait_for(done.wait(), timeout=30)
    assert len(ran) == len(set(ran)) == posters * posts
    for poster in range(posters):
        assert [n for p, n in ran if p == poster] == list(range(posts))


async def test_a_one_wakeup_block_entered_again_is_refused_and_the_loop_still_woken() -> None:
    """Entered twice, its exit would have left the thread holding every later post."""
    loop = asyncio.get_running_loop()
    inbox = inbox_of(loop)
    ran: list[int] = []
    block = one_wakeup()

    def post_twice() -> None:
        with block:
            with pytest.raises(RuntimeError, match="entered once"), block:
                pass
            inbox.post(ran.append, 1)
        inbox.post(ran.append, 2)

    await asyncio.to_thread(post_twice)
    for _ in range(100):
        if ran == [1, 2]:
            break
        await asyncio.sleep(0.01)
    assert ran == [1, 2]


async def test_a_one_wakeup_block_exited_without_being_entered_is_refused_and_the_outer_holds() -> (
    None
):
    """Exited inside another block without being entered, it would end that block's hold:
    every later post of the block would wake the loop on its own."""
    loop = asyncio.get_running_loop()
    inbox = inbox_of(loop)
    woken: list[int] = []
    wake = inbox._wake

    def counted() -> None:
        woken.append(1)
        wake()

    ran: list[int] = []

    def post_in_a_block() -> None:
        with one_wakeup():
            with pytest.raises(RuntimeError, match="exited once entered"):
                one_wakeup().__exit__(None, None, None)
            inbox.post(ran.append, 1)
            inbox.post(ran.append, 2)
            assert woken == [], "the outer block still holds its posts"

    inbox._wake = counted  # type: ignore[method-assign]
    try:
        await asyncio.to_thread(post_in_a_block)
    finally:
        inbox._wake = wake  # type: ignore[method-assign]
    for _ in range(100):
        if ran == [1, 2]:
            break
        await asyncio.sleep(0.01)
    assert ran == [1, 2]
    assert woken == [1]


async def test_a_running_loops_inbox_wakes_it_through_its_own_descriptor_once_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Linux a selector loop's inbox rings an eventfd the loop reads: no
    ``call_soon_threadsafe`` (its self-pipe, callback object and second read), and still
    one wake-up for a burst of posts."""
    loop = asyncio.get_running_loop()
    if not hasattr(os, "eventfd") or not isinstance(loop, asyncio.SelectorEventLoop):
        pytest.skip("no eventfd or no selector loop here")
    inbox = inbox_of(loop)
    threadsafe_calls: list[object] = []
    monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a, **k: threadsafe_calls.append(a))
    rings: list[int] = []
    ring = os.eventfd_write
    monkeypatch.setattr(os, "eventfd_write", lambda fd, n: (rings.append(n), ring(fd, n))[1])
    targets = [loop.create_future() for _ in range(10)]

    def post_a_burst() -> None:
        with one_wakeup():
            for n, target in enumerate(targets):
                inbox.post(settle_future, target, True, n)

    poster = threading.Thread(target=post_a_burst)  # to_thread settles through the patched call
    poster.start()
    assert await asyncio.wait_for(asyncio.gather(*targets), timeout=5) == list(range(10))
    poster.join()
    assert threadsafe_calls == []
    assert rings == [1], "one ring for the burst"


def test_an_inbox_made_off_its_loops_thread_still_delivers_through_the_loop() -> None:
    """A reader is added to a loop from its own thread only: an inbox made elsewhere wakes
    the loop with ``call_soon_threadsafe``."""
    loop = asyncio.new_event_loop()
    try:
        inbox = inbox_of(loop)  # not running: made off the loop's thread
        target = loop.create_future()
        threading.Thread(target=inbox.post, args=(settle_future, target, True, "here")).start()
        assert loop.run_until_complete(asyncio.wait_for(target, timeout=10)) == "here"
    finally:
        loop.close()


def test_a_post_to_a_closed_loops_inbox_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A result that outlives its loop must not raise on the actor thread posting it."""
    loop = asyncio.new_event_loop()
    inbox = loop.run_until_complete(_inbox_on_the_loop())
    loop.close()
    with caplog.at_level(logging.DEBUG, logger="memvee.actors"):
        inbox.post(print, "too late")
    assert "event loop closed before a result could be delivered" in caplog.text


async def _inbox_on_the_loop() -> LoopInbox:
    return inbox_of(asyncio.get_running_loop())


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_loops() -> int:
    return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())


async def _a_result_through_the_bridge() -> None:
    loop = asyncio.get_running_loop()
    target = loop.create_future()
    poster = threading.Thread(target=inbox_of(loop).post, args=(settle_future, target, True, 1))
    poster.start()
    assert await asyncio.wait_for(target, timeout=10) == 1
    poster.join()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd here")
def test_loops_run_one_after_another_leave_no_descriptor_and_no_loop_behind() -> None:
    """Each loop's inbox (and its eventfd) goes with its loop: 300 ``asyncio.run`` calls
    delivering through the bridge must not hold a descriptor or a loop each."""
    gc.collect()
    descriptors, loops = _open_descriptors(), _live_loops()
    for _ in range(300):
        asyncio.run(_a_result_through_the_bridge())
    gc.collect()
    assert _open_descriptors() <= descriptors + 1
    assert _live_loops() <= loops + 1


@pytest.mark.parametrize("end", ["closed", "dropped unclosed"])
def test_a_post_after_its_loop_ends_is_logged_and_rings_no_descriptor(
    end: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An inbox outliving its loop (held by an actor answering late) forgets its eventfd
    once the loop is closed (the next loop's inbox closes it) or collected: a later post
    is logged, never written to a descriptor whose number a file may have reused."""
    loop = asyncio.new_event_loop()
    inbox = loop.run_until_complete(_inbox_on_the_loop())
    if end == "closed":
        loop.close()
        asyncio.run(_inbox_on_the_loop())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the unclosed loop's, at collection
        del loop
        gc.collect()
    rings: list[int] = []
    monkeypatch.setattr(os, "eventfd_write", lambda fd, n: rings.append(fd))
    with caplog.at_level(logging.DEBUG, logger="memvee.actors"):
        poster = threading.Thread(target=inbox.post, args=(print, "too late"))
        poster.start()
        poster.join()
    assert rings == []
    assert "event loop closed before a result could be delivered" in caplog.text


_POST_AT_EXIT = """
import asyncio, atexit, os, sys
from actors._bridge import inbox_of

victim = sys.argv[1]

def post_late() -> None:  # runs after every atexit hook registered later
    fd = os.open(victim, os.O_RDWR)
    inbox.post(print, "a late result")
    os.close(fd)

atexit.register(post_late)
loop = asyncio.new_event_loop()  # stopped, never closed, as a script may leave it

async def the_inbox():
    return inbox_of(asyncio.get_running_loop())

inbox = loop.run_until_complete(the_inbox())
"""


def test_a_post_at_interpreter_exit_never_writes_into_a_file_that_reused_the_bell(
    tmp_path: Path,
) -> None:
    """Exit closes no eventfd an inbox still holds: a post from a late hook (or a daemon
    actor thread) after the loop's collection must leave a file opened then untouched."""
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"SQLite format 3\0")
    subprocess.run(
        [sys.executable, "-c", _POST_AT_EXIT, str(victim)],
        check=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=60,
    )
    assert victim.read_bytes() == b"SQLite format 3\0"
