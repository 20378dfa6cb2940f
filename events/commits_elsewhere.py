"""Whether other connections have committed to a SQLite file since one last looked.

``PRAGMA data_version`` moves when a connection other than the one reading it has
committed since that connection last read it; it is each connection's own count, and
every new connection reads the same first value. A look through a new connection is
therefore compared with nothing: matched against the last connection's value, it hid
the commits made elsewhere in between.
"""

from __future__ import annotations

import sqlite3

__all__ = ["CommitsElsewhere"]


class CommitsElsewhere:
    """Looks, through one SQLite connection after another, for commits made elsewhere."""

    def __init__(self) -> None:
        self._driver: sqlite3.Connection | None = None  # held, so no other takes its id
        self._version = -1

    def since_last_look(self, driver: sqlite3.Connection) -> bool:
        """Whether another connection may have committed since the last look: its data
        version moved, or this look is the first through ``driver`` (a new connection
        cannot tell, so it counts as a commit elsewhere)."""
        (version,) = driver.execute("PRAGMA data_version").fetchone()
        moved = driver is not self._driver or version != self._version
        self._driver, self._version = driver, version
        return moved
