"""State at a point: a user's buffer, tasks and knowledge as of a log version or a time.

Computed by folding the user's log, up to that point, in memory
(:class:`~projections.user_state.UserStateFold`, the same projections as the SQL folds,
which the replay tests check at every version); the live projections are never touched.
Reading pages of the log keeps memory flat however long the history is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from events import EventStore
from projections.batch import collector_paused
from projections.folds import Fold, buffer_fold, knowledge_fold, tasks_fold
from projections.models import BufferedMessage, KnowledgeEntry, TaskRecord
from projections.user_state import UserStateFold

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
    fold = UserStateFold(user_id)
    reached = 0
    while True:
        upto = reached + _PAGE if version is None else min(reached + _PAGE, version)
        events = store.events_of(user_id, after=reached, upto=upto)
        if at is not None:
            events = [e for e in events if _timestamp(e) <= at]
        if not events:
            break
        for event in events:
            fold.evolve(event)
        reached = events[-1].originator_version
        if upto == version or (at is not None and reached < upto):
            break
    return UserState(
        user_id=user_id,
        version=reached,
        buffer=fold.current_buffer(),
        tasks=fold.current_tasks(),
        knowledge=fold.current_knowledge(),
    )


def _timestamp(event: object) -> datetime:
    stamp: datetime = getattr(event, "timestamp")  # noqa: B009 - every event has one
    return stamp
