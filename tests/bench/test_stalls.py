"""The stall meters: the collector's runs are timed and leave the callbacks as found; a
stall is split into the collector's time and the code's; and the objects a root keeps
alive are counted without the program's modules, classes and functions."""

from __future__ import annotations

import asyncio
import gc
import time

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
    assert worst.late >= 0.05
    assert 0.0 < worst.collecting <= collections.total
    assert worst.outside_collections >= 0.05 - 0.001
    assert meter.worst_charged(0.0) == max(s.outside_collections for s in meter.stalls)


def test_a_stall_is_charged_its_code_and_a_share_of_the_collector() -> None:
    stall = Stall(late=0.100, collecting=0.080)
    assert abs(stall.outside_collections - 0.020) < 1e-12
    assert abs(stall.charged(0.5) - 0.060) < 1e-12
    assert abs(stall.charged(1.0) - 0.100) < 1e-12


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
