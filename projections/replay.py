"""State at a point: a user's buffer, tasks and knowledge as of a log version or a time.

Computed by folding the user's log, up to that point, in memory, with the very folds the
projection tables are built with (:mod:`projections.folds`); the live projections are
never touched. Reading pages of the log keeps the events in memory bounded however long
the history is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from events import EventStore
from events.user_log import LIVE_KNOWLEDGE
from projections.collector import collector_paused
from projections.folds import PROJECTIONS
from projections.models import BufferedMessage, KnowledgeEntry, TaskRecord
from projections.reader import buffered_from_row, entry_from_row, task_from_row
from projections.rows import TableRows

__all__ = ["UserState", "state_at"]

_PAGE = 10_000
REPLAYED = tuple(p for p in PROJECTIONS if p.table in ("messages", "tasks", "knowledge"))
"""The projections :func:`state_at` folds: those whose tables a :class:`UserState` reads."""


@dataclass(frozen=True, slots=True)
class UserState:
    """What the projections held for one user at ``version`` of their log."""

    user_id: str
    version: int
    buffer: list[BufferedMessage]
    tasks: list[TaskRecord]
    knowledge: list[KnowledgeEntry]


def state_at(
    store: EventStore, user_id: str, *, version: int | None = None, at: datetime | None = None
) -> UserState:
    """Replay ``user_id``'s log up to ``version`` (inclusive) or time ``at`` (inclusive).

    With neither, the state at the end of the log.
    """
    with collector_paused():
        return _replay(store, user_id, version, at)


def _replay(store: EventStore, user_id: str, version: int | None, at: datetime | None) -> UserState:
    tables = {p.table: p.new_rows() for p in REPLAYED}
    reached = 0
    while True:
        upto = reached + _PAGE if version is None else min(reached + _PAGE, version)
        events = store.events_of(user_id, after=reached, upto=upto)
        if at is not None:
            events = [e for e in events if _timestamp(e) <= at]
        if not events:
            break
        for projection in REPLAYED:  # each fold is independent of the others
            rows = tables[projection.table]
            for event in projection.of(events):
                projection.evolve(rows, event)
        reached = events[-1].originator_version
        if upto == version or (at is not None and reached < upto):
            break
    return UserState(
        user_id=user_id,
        version=reached,
        buffer=_buffer(user_id, tables["messages"]),
        tasks=_tasks(user_id, tables["tasks"]),
        knowledge=_knowledge(user_id, tables["knowledge"]),
    )


def _buffer(user_id: str, rows: TableRows) -> list[BufferedMessage]:
    """What :meth:`ProjectionReader.buffer` reads: buffered messages not quarantined, in
    log order."""
    buffered = (r for r in rows.rows.values() if r["buffered"] == 1 and r["quarantined"] == 0)
    return [buffered_from_row(user_id, r) for r in sorted(buffered, key=lambda r: r["seq"])]


def _tasks(user_id: str, rows: TableRows) -> list[TaskRecord]:
    """What :meth:`ProjectionReader.tasks` reads: every task, in the order requested."""
    ordered = sorted(rows.rows.values(), key=lambda r: r["requested_version"])
    return [task_from_row(user_id, r) for r in ordered]


def _knowledge(user_id: str, rows: TableRows) -> list[KnowledgeEntry]:
    """What :meth:`ProjectionReader.knowledge` reads: live entries still valid, in order."""
    current = (
        r
        for r in rows.rows.values()
        if r["knowledge_version"] == LIVE_KNOWLEDGE and r["valid_until"] is None
    )
    ordered = sorted(current, key=lambda r: (r["version"], r["ordinal"]))
    return [entry_from_row(user_id, r) for r in ordered]


def _timestamp(event: object) -> datetime:
    stamp: datetime = getattr(event, "timestamp")  # noqa: B009 - every event has one
    return stamp
