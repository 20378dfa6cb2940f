"""The stall meters: the collector's runs are timed and leave the callbacks as found; a
stall is split into the collector's time and the code's; and the objects a root keeps
alive are counted without the program's modules, classes and functions, nor the tasks
of callers waiting on its futures."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stalls import GcPauseMeter, LoopStallMeter, Stall, objects_held


def test_a_collection_inside_the_window_is_timed_and_the_callback_goes_at_stop() -> None:
    callbacks = list(gc.callbacks)
    meter = GcPauseMeter()
    meter.start()
    assert meter.reset() == 0.0
    gc.collect()
    longest = meter.stop()
    assert longest > 0.0
    assert meter.total >= longest
    assert gc.callbacks == callbacks
    gc.collect()
    assert meter.longest == longest, "nothing is timed after stop"


def _block_the_loop(seconds: float) -> None:
    """A collection, then code that holds the loop for ``seconds``."""
    gc.collect()
    time.sleep(seconds)


def test_a_stall_is_split_into_the_collectors_time_and_the_codes() -> None:
    async def scenario() -> tuple[LoopStallMeter, GcPauseMeter]:
        collections = GcPauseMeter()
        meter = LoopStallMeter(collections)
        collections.start()
        meter.start()
        await asyncio.sleep(0.005)
        _block_the_loop(0.05)
        await asyncio.sleep(0.005)
        await meter.stop()
        collections.stop()
        return meter, collections

    meter, collections = asyncio.run(scenario())
    worst = max(meter.stalls, key=lambda s: s.late)
    assert worst.late >= 0.05 - meter.interval  # the ticker's own sleep overlaps the block
    assert 0.0 < worst.collecting <= collections.total
    assert worst.outside_collections >= 0.05 - 0.001
    assert meter.worst_charged(0.0) == max(s.outside_collections for s in meter.stalls)


def test_a_collection_not_yet_added_to_the_total_still_counts_as_the_collectors() -> None:
    async def scenario() -> LoopStallMeter:
        collections = GcPauseMeter()
        meter = LoopStallMeter(collections)
        meter.start()
        await asyncio.sleep(0.005)
        collections._timed("start", {})  # a collection, as another thread would run it
        _block_the_loop(0.05)
        await asyncio.sleep(0.005)  # the loop wakes before that thread's stop callback ends
        collections._timed("stop", {})
        await meter.stop()
        return meter

    meter = asyncio.run(scenario())
    worst = max(meter.stalls, key=lambda s: s.late)
    assert worst.late >= 0.05 - meter.interval  # the ticker's own sleep overlaps the block
    assert worst.collecting >= 0.05 - 0.001
    # Nearly all of it is the collector's (a loaded machine wakes the ticker a little late).
    assert worst.outside_collections <= 0.2 * worst.late


def _spin(seconds: float) -> None:
    """Code that keeps the loop's thread on the CPU for ``seconds``."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_loop_off_the_cpu_is_told_from_code_on_the_loop() -> None:
    """A blocked loop (off the CPU, as when it waits for the GIL) counts as waiting; a busy
    loop does not."""

    async def scenario(block: Callable[[float], None]) -> Stall:
        meter = LoopStallMeter(GcPauseMeter())
        meter.start()
        await asyncio.sleep(0.005)
        block(0.05)
        await asyncio.sleep(0.005)
        await meter.stop()
        return max(meter.stalls, key=lambda s: s.late)

    blocked = asyncio.run(scenario(time.sleep))
    busy = asyncio.run(scenario(_spin))
    # A tick was due up to one period (1 ms) after the block began, so it is late by the
    # block's 50 ms less up to that much.
    assert blocked.waiting >= 0.045
    assert busy.late >= 0.045
    assert busy.waiting <= busy.late - 0.045


def test_a_stall_is_charged_its_code_and_a_share_of_the_collector() -> None:
    stall = Stall(late=0.100, collecting=0.080)
    assert abs(stall.outside_collections - 0.020) < 1e-12
    assert abs(stall.charged(0.5) - 0.060) < 1e-12
    assert abs(stall.charged(1.0) - 0.100) < 1e-12
    # 20 ms outside the collector, 5 of them running on the loop (its CPU, less the
    # collector's run there): the loop waited 15 ms
    on_the_loop = Stall(late=0.100, collecting=0.080, loop_cpu=0.035, collecting_on_loop=0.030)
    assert abs(on_the_loop.waiting - 0.015) < 1e-12


def test_the_load_generators_own_code_on_the_loop_is_not_charged() -> None:
    """Code the load generator marks as its own (starting its users' tasks) stalls the loop
    as much as any, but is left out of the stall charged to the code measured."""

    async def scenario() -> Stall:
        meter = LoopStallMeter(GcPauseMeter())
        meter.start()
        await asyncio.sleep(0.005)
        with meter.load_generator():
            _spin(0.05)
        await asyncio.sleep(0.005)
        await meter.stop()
        return max(meter.stalls, key=lambda s: s.generator)

    worst = asyncio.run(scenario())
    assert worst.late >= 0.045
    assert worst.generator >= 0.045
    assert worst.charged(1.0) <= worst.late - 0.045


def test_a_stall_is_charged_its_code_but_the_load_generators() -> None:
    stall = Stall(late=0.100, collecting=0.040, loop_cpu=0.050, generator=0.030)
    assert abs(stall.charged(0.5) - (0.030 + 0.020)) < 1e-12
    assert Stall(late=0.010, collecting=0.0, generator=0.010).charged(1.0) == 0.0


class _Holder:
    def __init__(self) -> None:
        self.items = [[n] for n in range(100)]  # tracked, as the collector sees them
        self.loop_like = [object(), []]
        self.callback = lambda: self.items  # a closure: state, counted
        self.kind = dict  # a class: the program, not counted


def test_the_objects_a_root_keeps_alive_are_counted_without_the_program() -> None:
    holder = _Holder()
    counted = objects_held(holder)
    # the holder (and its __dict__), the list of 100 lists, the loop_like list and its
    # inner list, the closure, its cell and its tuple of cells
    assert 100 + 6 <= counted <= 100 + 12
    assert objects_held(holder, besides=(holder.items,)) == counted - 101


def test_frozen_objects_are_walked_through_but_not_counted() -> None:
    holder = _Holder()
    gc.freeze()
    try:
        assert objects_held(holder) == 0, "the collector leaves frozen objects out"
        holder.items[0].append([[n] for n in range(50)])
        # reached through a frozen list: the new list and its 50 lists
        assert objects_held(holder) == 51
    finally:
        gc.unfreeze()


class _Waiters:
    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []


_CALLER = """
async def caller(api, waiters):
    mine = [[n] for n in range(100)]
    await api(waiters)
    return mine
"""


async def test_a_callers_task_is_the_callers_but_the_apis_own_coroutines_are_counted() -> None:
    loop = asyncio.get_running_loop()
    waiters = _Waiters()

    async def api(waiters: _Waiters) -> list[list[int]]:
        held_by_the_call = [[n] for n in range(30)]
        future = loop.create_future()
        waiters.futures.append(future)
        await future
        return held_by_the_call

    namespace: dict[str, Any] = {}
    exec(compile(_CALLER, "/elsewhere/caller.py", "exec"), namespace)
    task = asyncio.ensure_future(namespace["caller"](api, waiters))
    await asyncio.sleep(0)
    own = objects_held(waiters, own_code=(str(Path(__file__).parent) + os.sep,))
    everything = objects_held(waiters)
    # the API's coroutine and its 30 lists count; the caller's task, coroutine and 100
    # lists do not, unless every coroutine is counted as the holder's
    assert 30 < own < 100
    assert everything >= own + 100
    waiters.futures[0].set_result(None)
    assert len(await task) == 100
