"""Turns for writers between the pages of a long run that holds every writer off.

A rebuild, a catch-up or a verify folds the log a page per transaction, each under the
writers' lock. PostgreSQL queues the writers that wait for it. SQLite does not: a waiting
writer's busy handler looks for the lock at most every 100 ms, so a run that takes the
lock again at once keeps it out, for seconds (5.5 s in one test of 10 s, 7.6 s of one
verify). A run cannot see a writer that waits, only one that has committed: SQLite's data
version, read on the store's writer connection, moves when another connection has
committed since (:class:`events.CommitsElsewhere`: a connection replaced after a failed
transaction counts as one). So the run leaves the lock free for a turn now and then, to let a
writer show itself, and at every gap once one has. A run that does its slow part without
the lock (a rebuild folding a page, see :mod:`projections.rebuild`) owes no turn after it.
"""

from __future__ import annotations

import sqlite3
from time import monotonic, sleep

from sqlalchemy import Connection

from events import CommitsElsewhere

__all__ = ["WriterTurns"]

TURN = 0.1
"""Seconds the lock is left free: as long as the busy handler's longest wait."""

PROBE_AFTER = 1.0
"""While no other writer has shown itself, a gap gets a turn once the run has held the
lock this many seconds since its start or its last turn: a short run pays none, and a
long one, whatever its pages' size, leaves the lock free about a tenth of its time (a
count of gaps made a rebuild in pages of one event sleep 6.5 s of its 6.9 s)."""


class WriterTurns:
    """When a run of transactions that hold off every writer leaves the lock free."""

    def __init__(self, sqlite: bool) -> None:
        self._sqlite = sqlite
        self._commits = CommitsElsewhere()
        self._looked = False
        self._others = False
        self._turned = False
        self._since = monotonic()

    def note(self, connection: Connection) -> None:
        """Called in each of the run's transactions, once it holds the lock: whether
        another connection has committed since the last one (the run's first look has
        nothing to compare with)."""
        if not self._sqlite:
            return
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        if self._commits.since_last_look(driver) and self._looked:
            self._others = True
        self._looked = True

    def left_free(self, seconds: float) -> None:
        """The run left the lock free for ``seconds`` (it read and folded a page without
        it): at least a turn's length is a turn, and the next gap needs none."""
        if seconds >= TURN:
            self._turned = True

    def between(self) -> None:
        """Called between two of the run's transactions: a turn, if one is due."""
        if not self._sqlite:
            return
        if self._turned:
            self._turned = False
            self._since = monotonic()
            return
        if self._others or monotonic() - self._since >= PROBE_AFTER:
            sleep(TURN)
            self._since = monotonic()
