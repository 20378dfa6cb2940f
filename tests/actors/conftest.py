"""Fixtures shared by the actor tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors._dispatcher import Dispatcher


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    """Two threads to run pooled actors on, shut down after the test."""
    threads = Dispatcher(2)
    yield threads
    threads.shutdown()
