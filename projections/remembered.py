"""The rows the live fold last committed, kept so the next write need not read them back.

Every write of a user changes that user's summary row, so the live path would read the
row it wrote a moment ago before every fold. A projection that can tell, from the next
event alone, whether a row it wrote is still the stored one (``Projection.current``: the
users row carries the version of the last event folded into it, and versions are unique
per log) lets the projector remember its rows after each commit. A remembered row is used
only when that check passes, and any doubt (a failed write, an erasure, a row another
process wrote since) costs one read, never a wrong row. Versions repeat when another
process forgets a user who then writes again up to the same version: a row that says
when its log began (``Projection.began``) is used only for the log that began then.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from typing import Any

from projections.rows import Row, TableRows

__all__ = ["RememberedRows"]

Current = Callable[[Row, Any], bool]
"""Whether a row this process committed is still the stored one when an event comes."""


class RememberedRows:
    """Rows of one projection committed by this process, at most ``limit`` of them (the
    least recently written go first).

    Used by one writer at a time: the fold stages its rows inside the transaction, and
    the writer calls :meth:`commit` once that transaction committed, or :meth:`discard`.
    """

    def __init__(self, current: Current, limit: int, began: str | None = None) -> None:
        self._current = current
        self._limit = limit
        self._began = began
        self._rows: dict[Hashable, Row] = {}
        self._staged: dict[Hashable, Row | None] = {}

    def recall(
        self, first: dict[Hashable, Any], origins: Mapping[Any, datetime] | None = None
    ) -> tuple[list[Row], list[Hashable]]:
        """For each key and the first event that touches it: a copy of the row, if one is
        remembered and still current (and, where ``origins`` tells when the event's log
        began, of that log); else the key, to read from the database."""
        found: list[Row] = []
        missing: list[Hashable] = []
        rows, current, began = self._rows, self._current, self._began
        for key, event in first.items():
            row = rows.get(key)
            if row is not None and current(row, event):
                origin = origins.get(event.originator_id) if origins else None
                if began is None or origin is None or row[began] == origin:
                    found.append(dict(row))
                    continue
            missing.append(key)
        return found, missing

    def stage(self, rows: TableRows) -> None:
        """Note the rows a fold wrote (or deleted), to remember once they are committed."""
        staged, held = self._staged, rows.rows
        for key in rows.written:
            staged[key] = held.get(key)

    def commit(self) -> None:
        """The staged rows were committed: remember them."""
        rows = self._rows
        for key, row in self._staged.items():
            rows.pop(key, None)
            if row is not None:
                rows[key] = row
        self._staged.clear()
        excess = len(rows) - self._limit
        if excess > 0:
            oldest = iter(rows)
            for key in [next(oldest) for _ in range(excess)]:
                del rows[key]

    def discard(self) -> None:
        """The staged rows were not committed."""
        self._staged.clear()

    def clear(self) -> None:
        """Forget every row (stored rows changed outside the live fold)."""
        self._rows.clear()
        self._staged.clear()
