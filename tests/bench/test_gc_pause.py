"""The GC meter times the collector's runs in a window and leaves its callbacks as found."""

from __future__ import annotations

import gc

from bench.common import GcPauseMeter


def test_a_collection_inside_the_window_is_timed_and_the_callback_goes_at_stop() -> None:
    callbacks = list(gc.callbacks)
    meter = GcPauseMeter()
    meter.start()
    assert meter.reset() == 0.0
    gc.collect()
    longest = meter.stop()
    assert longest > 0.0
    assert gc.callbacks == callbacks
    gc.collect()
    assert meter.longest == longest, "nothing is timed after stop"
