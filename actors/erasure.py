"""Erasure: every trace of one user (log, snapshots, projection rows, lease) in one go.

A lease another live process holds is kept, blanked of the user's name: that process
still owns the user, and deleting its row would let a third take her over under it.

Right to be forgotten: one transaction deletes the user's events and snapshots and
every projection row of their log, with every other writer held off, so afterwards no
API, no replay and no rebuild can bring any of it back. On SQLite every connection the
store opens overwrites what it deletes (``secure_delete``, never turned off), so neither
the erasure nor an earlier write leaves the user's words in free space; after the commit
the file is rewritten from its live rows (``VACUUM``: pages SQLite rebuilt keep copies of
moved rows that no deletion reaches) and the write-ahead log is truncated, so the
deleted words do not linger in the database files. When the rewrite fails (a full disk)
or other connections' older snapshots hold the truncation off, the receipt says so
(``scrubbed=False``) and the engine has it retried in the background
(:mod:`actors._traces`). From its commit until its try ended, the erasure's process holds
the rewrite's claim (:mod:`actors.rewrite_claim`), so that another process opening
meanwhile does not rewrite the file a second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from actors._traces import scrub_files
from actors.lease import LeaseTable
from actors.rewrite_claim import claim_rewrite, release_rewrite_claim, rewrite_held
from events import EventStore, StorageError, user_log_id
from events.errors import first_line
from projections import Projector, forget_in_scratch
from projections.bulk_runs import forget_bulk_requests

__all__ = ["TRUNCATE_WAIT_MS", "ForgetReceipt", "erase_user"]

log = logging.getLogger("memvee.actors")

TRUNCATE_WAIT_MS = 2_000
"""How long an erasure waits for the write lock, then for other connections' snapshots,
before it leaves the truncation of the write-ahead log to the background (see
:func:`actors._traces.truncate_wal`)."""


@dataclass(frozen=True, slots=True)
class ForgetReceipt:
    """What forgetting one user erased: log events, snapshots and rows per table.

    Handed back by :meth:`memvee.Memory.forget` as proof of the erasure. ``scrubbed`` is
    false when, on SQLite, the erased words may still be in the database files: the file
    could not be rewritten (a full disk), or other connections were reading older
    snapshots so the write-ahead log could not be truncated yet (both are retried in the
    background).
    """

    user_id: str
    events: int
    snapshots: int
    rows: dict[str, int] = field(default_factory=dict)
    erased_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    scrubbed: bool = True

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
                _require_secure_delete(connection)
            owed_before = store.owed_rewrite(connection)
            events, snapshots = store.forget(connection, user_id)
            rows = projector.forget(connection, str(user_log_id(user_id)))
            forget_in_scratch(connection, str(user_log_id(user_id)))
            rows["bulk_requests"] = forget_bulk_requests(connection, user_id)
            if leases is not None:
                rows["leases"] = leases.forget(connection, user_id)
            if not events + snapshots and any(rows.values()):
                store.owe_rewrite(connection)  # rows naming the user, with no log left
            erasure = store.owed_rewrite(connection)
            held = rewrite_held(connection, erasure) if erasure == owed_before > 0 else None
            claim = claim_rewrite(connection, erasure) if erasure and held is None else None
    except SQLAlchemyError as error:
        raise StorageError(
            f"could not forget user {user_id!r} in {store.safe_url}: {first_line(error)}"
        ) from error
    scrubbed = True
    if held is not None:
        log.info("user %r erased nothing; the rewrite owed is left as it is: %s", user_id, held)
    elif store.is_sqlite:
        try:
            scrub_files(store, TRUNCATE_WAIT_MS, erasure)
        except StorageError as error:
            scrubbed = False
            log.warning(
                "user %r erased, but the erased words stay in the database files until "
                "they are scrubbed, retried in the background (%s)",
                user_id,
                error,
            )
        finally:
            if claim is not None:
                release_rewrite_claim(store, claim)
    return ForgetReceipt(user_id, events, snapshots, rows, scrubbed=scrubbed)


def _require_secure_delete(connection: Connection) -> None:
    """Make sure SQLite overwrites what the erasure deletes with zeros (as the store has
    every connection do); a build that will not is refused (:class:`StorageError`)
    before anything is deleted."""
    mode = connection.exec_driver_sql("PRAGMA secure_delete=ON").scalar()
    if mode != 1:
        raise StorageError(
            f"cannot erase securely: this SQLite build keeps secure_delete at {mode!r}"
        )
