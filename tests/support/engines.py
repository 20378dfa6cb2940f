"""Engines made for a test: their start held in its thread, to act while a Memory opens."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors import Engine

__all__ = ["engine_start_held"]


def engine_start_held(patch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make engines wait, once built, until the second event returned is set; the first is
    set when one is built."""
    starting, release = threading.Event(), threading.Event()
    make = Engine.__init__

    def slow(engine: Engine, *args: Any, **kwargs: Any) -> None:
        make(engine, *args, **kwargs)
        starting.set()
        release.wait(10)

    patch.setattr(Engine, "__init__", slow)
    return starting, release
