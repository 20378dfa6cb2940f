"""Audit and replay: read a memory's event log, and its state at any point of it.

The log is the single source of truth, so everything here is computed from it (or from
projections that ``verify`` proves equal to it), never from side tables. Works on a
database no Memory has open, or beside one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from events import EventStore, InvalidInputError, check_user_id, sqlite_url
from projections import ProjectionReader, ProjectionTables, UserState, UserSummary, state_at

__all__ = ["Audit", "LoggedEvent"]

_HIDDEN = {"originator_id", "originator_version", "timestamp", "originator_topic"}


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a user's log: its version, when it was recorded, its type and data."""

    version: int
    recorded_at: datetime
    type: str
    payload: dict[str, Any]


class Audit:
    """Read-only access to one memory database's logs and projections."""

    def __init__(self, db_path: str = "memvee.db", db_url: str | None = None) -> None:
        self.store = EventStore(db_url or sqlite_url(db_path))
        self._reader = ProjectionReader(ProjectionTables())

    def close(self) -> None:
        """Release the database connections."""
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log(
        self,
        user_id: str,
        *,
        types: Sequence[str] = (),
        from_version: int | None = None,
        to_version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 500,
    ) -> Iterator[LoggedEvent]:
        """The user's events in order, filtered by type, version and time, read in pages."""
        check_user_id(user_id)
        _check_aware(since, "since")
        _check_aware(until, "until")
        after = (from_version or 1) - 1
        while to_version is None or after < to_version:
            upto = after + page_size if to_version is None else min(after + page_size, to_version)
            page = self.store.events_of(user_id, after=after, upto=upto)
            if not page:
                return
            for event in page:
                logged = _logged(event)
                if types and logged.type not in types:
                    continue
                if since is not None and logged.recorded_at < since:
                    continue
                if until is not None and logged.recorded_at > until:
                    return
                yield logged
            after = page[-1].originator_version

    def state(
        self, user_id: str, *, version: int | None = None, at: datetime | None = None
    ) -> UserState:
        """The user's buffer, tasks and knowledge as of ``version`` or time ``at``, replayed."""
        check_user_id(user_id)
        _check_aware(at, "at")
        if version is not None and version < 1:
            raise InvalidInputError(f"version must be 1 or more, not {version}")
        return state_at(self.store, user_id, version=version, at=at)

    def users(self, *, after: str = "", limit: int = 100) -> list[UserSummary]:
        """A page of users, in user-id order."""
        with self.store.engine.connect() as connection:
            return self._reader.users(connection, after=after, limit=limit)

    def stats(self) -> dict[str, int]:
        """Totals across the database: events, users, messages, knowledge, tasks by status."""
        with self.store.engine.connect() as connection:
            totals = self._reader.totals(connection)
        return {"events": self.store.max_position(), **totals}


def _logged(event: Any) -> LoggedEvent:
    data = dict(vars(event))
    return LoggedEvent(
        version=event.originator_version,
        recorded_at=event.timestamp,
        type=type(event).__name__,
        payload={k: v for k, v in data.items() if k not in _HIDDEN},
    )


def _check_aware(stamp: datetime | None, name: str) -> None:
    if stamp is not None and stamp.tzinfo is None:
        raise InvalidInputError(f"{name} must be timezone-aware, e.g. 2026-11-26T10:00:00+00:00")
