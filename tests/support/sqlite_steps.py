"""Work counted in SQLite virtual-machine steps, which do not depend on the machine's
speed: what specifications of a read's cost measure."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection

from events import EventStore

T = TypeVar("T")


def counted_steps(store: EventStore, search: Callable[[Connection], T]) -> tuple[int, T]:
    """The SQLite virtual-machine steps ``search`` takes on a connection of ``store``
    (a progress handler counts them), and what it found."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store.engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.set_progress_handler(count, 1)
        try:
            found = search(connection)
        finally:
            driver.set_progress_handler(None, 1)
    return steps, found
