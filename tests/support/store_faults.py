"""A store that fails on demand, as a database does while it restarts."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from events import EventStore, StorageError

FAILING = ("append", "load_log", "events_of")
"""The store's writes and the log reads of the actors."""

OUTAGE_ERROR = "the database is restarting"


class StoreOutage:
    """Makes ``store`` fail every write and log read while :attr:`down` is set."""

    def __init__(self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = threading.Event()
        self.refused = 0
        self._error = f"{OUTAGE_ERROR} ({store.safe_url})"  # named, as the store's own are
        for name in FAILING:
            monkeypatch.setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise StorageError(self._error)
            return method(*args, **kwargs)

        return call
