"""Event stores made for a test: a log written straight through the store, its
projections folded as the engine folds them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from events import EventStore, UserLog, sqlite_url, user_log_id
from projections import ProjectionTables, Projector

__all__ = ["store_of_messages", "write_afresh"]


def store_of_messages(where: Path | str, user_id: str, texts: Sequence[str]) -> EventStore:
    """A new event store where ``user_id`` said ``texts``, in one append: a SQLite file at
    ``where``, or the empty database at the URL ``where``."""
    store = EventStore(sqlite_url(where) if isinstance(where, Path) else where)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    log = UserLog.register(user_id)
    for text in texts:
        log.add_message("user", text, None, 1000)
    store.append([list(log.collect_events())], projector.apply)
    return store


def write_afresh(store: EventStore, user_id: str, texts: Sequence[str]) -> None:
    """Erase ``user_id``'s log and its rows from ``store`` (as a forget does), then write
    ``texts`` as the user's new log, in one append."""
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        store.forget(connection, user_id)
        projector.forget(connection, str(user_log_id(user_id)))
    log = UserLog.register(user_id)
    for text in texts:
        log.add_message("user", text, None, 1000)
    store.append([list(log.collect_events())], projector.apply)
