"""State at a point: a user's buffer, tasks and knowledge as of a log version or a time.

Computed by folding the user's log, up to that point, with the very folds that build the
live projections, into a scratch in-memory database; the live projections are never
touched. Only the folds of the tables a :class:`UserState` is read from run, each page
netted in memory (:meth:`Projector.apply_page`). Reading pages of the log keeps memory
flat however long the history is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from events import EventStore, Recorded
from projections.batch import collector_paused
from projections.folds import Fold, buffer_fold, knowledge_fold, tasks_fold
from projections.models import BufferedMessage, KnowledgeEntry, TaskRecord
from projections.projector import Projector
from projections.reader import ProjectionReader
from projections.tables import ProjectionTables

__all__ = ["UserState", "state_at"]

_PAGE = 10_000
REPLAY_FOLDS: tuple[Fold, ...] = (buffer_fold, tasks_fold, knowledge_fold)
"""The folds of the tables :func:`state_at` reads (buffer, tasks, knowledge)."""


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
    tables = ProjectionTables("replay_")
    projector = Projector(tables)
    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        with engine.begin() as connection:
            projector.create(connection)
        reached = 0
        while True:
            upto = reached + _PAGE if version is None else min(reached + _PAGE, version)
            events = store.events_of(user_id, after=reached, upto=upto)
            if at is not None:
                events = [e for e in events if _timestamp(e) <= at]
            if not events:
                break
            recorded = [Recorded(e.originator_version, e) for e in events]
            with engine.begin() as connection:
                projector.apply_page(connection, recorded, folds=REPLAY_FOLDS, search=False)
            reached = events[-1].originator_version
            if upto == version or (at is not None and reached < upto):
                break
        reader = ProjectionReader(tables)
        with engine.connect() as connection:
            return UserState(
                user_id=user_id,
                version=reached,
                buffer=reader.buffer(connection, user_id),
                tasks=reader.tasks(connection, user_id),
                knowledge=reader.knowledge(connection, user_id),
            )
    finally:
        engine.dispose()


def _timestamp(event: object) -> datetime:
    stamp: datetime = getattr(event, "timestamp")  # noqa: B009 - every event has one
    return stamp
