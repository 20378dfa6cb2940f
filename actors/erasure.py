"""Erasure: every trace of one user (log, snapshots, projection rows, lease) in one go.

Right to be forgotten: one transaction deletes the user's events and snapshots and
every projection row of their log, with every other writer held off, so afterwards no
API, no replay and no rebuild can bring any of it back. On SQLite the freed pages are
overwritten (``secure_delete``) and the write-ahead log is truncated after the commit,
so the deleted words do not linger in the database files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from actors.lease import LeaseTable
from events import EventStore, StorageError, user_log_id
from events.errors import first_line
from projections import Projector, forget_in_scratch
from projections.bulk_runs import forget_bulk_requests

__all__ = ["ForgetReceipt", "erase_user"]

log = logging.getLogger("memvee.actors")


@dataclass(frozen=True, slots=True)
class ForgetReceipt:
    """What forgetting one user erased: log events, snapshots and rows per table.

    Handed back by :meth:`memvee.Memory.forget` as proof of the erasure.
    """

    user_id: str
    events: int
    snapshots: int
    rows: dict[str, int] = field(default_factory=dict)
    erased_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def total(self) -> int:
        """Everything erased: events, snapshots and projection rows together."""
        return self.events + self.snapshots + sum(self.rows.values())


def erase_user(
    store: EventStore, projector: Projector, leases: LeaseTable | None, user_id: str
) -> ForgetReceipt:
    """Delete ``user_id``'s log and everything folded from it, in one transaction.

    A database that fails it is a :class:`StorageError`, and nothing is erased.
    """
    try:
        with store.transaction() as connection:
            store.lock_writers(connection)
            if store.is_sqlite:
                connection.exec_driver_sql("PRAGMA secure_delete=ON")
            events, snapshots = store.forget(connection, user_id)
            rows = projector.forget(connection, str(user_log_id(user_id)))
            forget_in_scratch(connection, str(user_log_id(user_id)))
            rows["bulk_requests"] = forget_bulk_requests(connection, user_id)
            if leases is not None:
                rows["leases"] = leases.forget(connection, user_id)
            if store.is_sqlite:
                connection.exec_driver_sql("PRAGMA secure_delete=OFF")
    except SQLAlchemyError as error:
        raise StorageError(
            f"could not forget user {user_id!r} in {store.safe_url}: {first_line(error)}"
        ) from error
    if store.is_sqlite:
        try:
            with store.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except SQLAlchemyError:
            # Readers can hold the checkpoint back; the next checkpoint will do it.
            log.info("user %r erased; the write-ahead log is truncated later", user_id)
    return ForgetReceipt(user_id, events, snapshots, rows)
