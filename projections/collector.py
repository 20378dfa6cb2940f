"""Pausing Python's cyclic garbage collector while many short-lived rows are folded."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page is read and folded.

    A page makes hundreds of thousands of objects that live until it is written, which
    the collector would scan over and over for nothing: none is part of a cycle, so
    reference counting frees them all once the page is done.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
