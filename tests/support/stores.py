"""Event stores made for a test: a log written straight through the store, its
projections folded as the engine folds them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from events import EventStore, UserLog, sqlite_url, user_log_id
from projections import ProjectionTables, Projector

__all__ = ["store_of_messages", "write_afresh"]


def store_of_messages(
    where: Path | str,
    user_id: str,
    texts: Sequence[str],
    sent_at: Sequence[datetime] | None = None,
) -> EventStore:
    """A new event store where ``user_id`` said ``texts`` (sent now, or at ``sent_at``),
    in one append: a SQLite file at ``where``, or the empty database at the URL ``where``."""
    store = EventStore(sqlite_url(where) if isinstance(where, Path) else where)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    _append_log(store, projector, user_id, texts, sent_at)
    return store


def write_afresh(
    store: EventStore,
    user_id: str,
    texts: Sequence[str],
    sent_at: Sequence[datetime] | None = None,
) -> None:
    """Erase ``user_id``'s log and its rows from ``store`` (as a forget does), then write
    ``texts`` (sent now, or at ``sent_at``) as the user's new log, in one append."""
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        store.forget(connection, user_id)
        projector.forget(connection, str(user_log_id(user_id)))
    _append_log(store, projector, user_id, texts, sent_at)


def _append_log(
    store: EventStore,
    projector: Projector,
    user_id: str,
    texts: Sequence[str],
    sent_at: Sequence[datetime] | None,
) -> None:
    """Write ``texts`` (sent now, or at ``sent_at``) as ``user_id``'s new log."""
    log = UserLog.register(user_id)
    times = [None] * len(texts) if sent_at is None else sent_at
    for text, sent in zip(texts, times, strict=True):
        log.add_message("user", text, sent, 1000)
    store.append([list(log.collect_events())], projector.apply)
