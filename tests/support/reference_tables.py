"""Empty projection tables in a fresh in-memory SQLite database, for the reference folds of
the replay properties: copied from tables made once, since making the tables and their
indexes anew costs about 50 ms, which those properties paid hundreds of times a run."""

from __future__ import annotations

import functools
import sqlite3
from datetime import datetime

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from events import EventStore, Recorded
from projections import ProjectionReader, ProjectionTables, Projector, UserState

__all__ = ["REFERENCE_TABLES", "fresh_reference_database", "reference_state"]

REFERENCE_TABLES = ProjectionTables("reference_")
"""The reference folds' tables, named apart from the live ones."""


def _in_memory(connection: sqlite3.Connection) -> Engine:
    """An engine whose one connection is ``connection`` (closed when it is disposed)."""
    return create_engine("sqlite://", poolclass=StaticPool, creator=lambda: connection)


@functools.cache
def _made_once() -> sqlite3.Connection:
    """A database holding the reference tables as ``Projector.create`` leaves them."""
    made = sqlite3.connect(":memory:", check_same_thread=False)
    with _in_memory(made).begin() as connection:
        Projector(REFERENCE_TABLES).create(connection)
    return made


def fresh_reference_database() -> Engine:
    """A new in-memory database holding :data:`REFERENCE_TABLES`, empty and indexed, as
    ``Projector(REFERENCE_TABLES).create`` makes them; dispose of it when done."""
    copy = sqlite3.connect(":memory:", check_same_thread=False)
    _made_once().backup(copy)
    return _in_memory(copy)


def reference_state(
    store: EventStore, user_id: str, version: int | None = None, at: datetime | None = None
) -> UserState:
    """The replay properties' reference: ``user_id``'s log up to ``version`` (and events
    stamped up to ``at``) folded into fresh tables in one go, and read back."""
    tables = REFERENCE_TABLES
    projector = Projector(tables)
    engine = fresh_reference_database()
    try:
        events = store.events_of(user_id, upto=version)
        if at is not None:
            events = [e for e in events if getattr(e, "timestamp") <= at]  # noqa: B009
        with engine.begin() as connection:
            projector.apply(connection, [Recorded(e.originator_version, e) for e in events])
        reader = ProjectionReader(tables)
        with engine.connect() as connection:
            return UserState(
                user_id=user_id,
                version=events[-1].originator_version if events else 0,
                buffer=reader.buffer(connection, user_id),
                tasks=reader.tasks(connection, user_id),
                knowledge=reader.knowledge(connection, user_id),
            )
    finally:
        engine.dispose()
