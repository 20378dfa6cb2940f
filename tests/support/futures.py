"""Counting the futures a piece of the engine makes: the loop-to-actor path promises none
per call, of memvee's own (``BridgedFuture``) or of pykka's."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors._bridge import BridgedFuture


def count_futures_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A list that every ``BridgedFuture`` and pykka ``ThreadingFuture`` made from now on
    (for the test's duration) is appended to."""
    made: list[object] = []
    for kind in (BridgedFuture, pykka.ThreadingFuture):
        make = kind.__init__

        def counted(future: Any, *args: Any, _make: Any = make, **kwargs: Any) -> None:
            made.append(future)
            _make(future, *args, **kwargs)

        monkeypatch.setattr(kind, "__init__", counted)
    return made
