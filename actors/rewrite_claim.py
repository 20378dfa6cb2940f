"""Which process rewrites a SQLite file for the erasures it owes, kept in the file itself.

An erasure records, in its own transaction, that the file is owed a rewrite
(:meth:`events.EventStore.owe_rewrite`), and rewrites it after the commit. An open in
another process that finds the rewrite owed meanwhile would rewrite the file a second
time, holding writers off for seconds on a large file. So the erasure also records, in
that transaction, that its process is rewriting the file (a row of
``memvee_rewrite_claim``: its machine, pid and start time), and removes the row once its
try ended, failed or not; another process leaves the rewrite to a claim whose process
still runs, and takes it over once the claim is gone or its process is. A rewrite that
failed so stays owed, for the next open that writes; one that succeeded is recorded in
the file (:meth:`events.EventStore.rewrite`), so when only the write-ahead log's
truncation is left the next open truncates it without rewriting the file again. Where
a process cannot be told alive (a platform without ``/proc``), its claim counts for
nothing: the file may then be rewritten twice, never left unrewritten.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from uuid import uuid4

from sqlalchemy import Connection, inspect
from sqlalchemy.exc import SQLAlchemyError

from actors._background import RetryLater
from actors.process_identity import process_alive, process_stat, this_machine
from events import EventStore, StorageError
from events.errors import first_line

__all__ = [
    "REWRITE_CLAIM_TABLE",
    "ReadOnlyDatabaseError",
    "RewriteLeftToAnother",
    "RewriteUnderWayHere",
    "claim_owed_rewrite",
    "claim_rewrite",
    "release_rewrite_claim",
    "rewrite_held",
]

log = logging.getLogger("memvee.actors")

REWRITE_CLAIM_TABLE = "memvee_rewrite_claim"
"""At most one row: the process rewriting the file, and the last erasure it covers."""

_HELD: set[str] = set()
"""The claims this process holds: one of its pid it no longer holds is a release that
failed, and counts for nothing."""


class RewriteLeftToAnother(RetryLater):
    """Another process that still runs is rewriting the file for every erasure owed."""


class RewriteUnderWayHere(RetryLater):
    """This very process is rewriting the file already: another thread of it (a store of
    the same file opened twice, or a scrubber's background try still running)."""


class ReadOnlyDatabaseError(StorageError):
    """The database cannot be written here (a read-only file or ``mode=ro``): an owed
    rewrite stays owed for an open that can write."""


def claim_rewrite(connection: Connection, through: int) -> str:
    """Record, in the caller's write transaction, that this process rewrites the file for
    the erasures up to ``through``; returns the claim's name, for
    :func:`release_rewrite_claim`."""
    connection.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {REWRITE_CLAIM_TABLE} (slot INTEGER PRIMARY KEY "
        "CHECK (slot = 0), owner TEXT NOT NULL, machine TEXT, pid INTEGER, started TEXT, "
        "through INTEGER NOT NULL)"
    )
    owner = uuid4().hex
    pid = os.getpid()
    stat = process_stat(pid)
    connection.exec_driver_sql(
        f"INSERT OR REPLACE INTO {REWRITE_CLAIM_TABLE} VALUES (0, ?, ?, ?, ?, ?)",
        (owner, this_machine(), pid, None if stat is None else stat[1], through),
    )
    _HELD.add(owner)
    return owner


def claim_owed_rewrite(store: EventStore) -> str | None:
    """Claim the rewrite the file owes for this process: ``None`` when none is owed;
    :class:`RewriteLeftToAnother` while another running process's claim covers every
    erasure owed, :class:`RewriteUnderWayHere` while one of this process does;
    :class:`ReadOnlyDatabaseError` where the database cannot be written,
    :class:`StorageError` when the database failed."""
    if not store.rewrite_owed:
        return None
    try:
        with store.engine.connect() as connection:  # a read first: no writer waited for
            _refuse_if_claimed(connection, store.owed_rewrite(connection))
        with store.transaction() as connection:
            store.lock_writers(connection)
            owed = store.owed_rewrite(connection)
            _refuse_if_claimed(connection, owed)
            return claim_rewrite(connection, owed)
    except SQLAlchemyError as error:
        if _read_only(error):
            raise ReadOnlyDatabaseError(
                f"{store.safe_url} cannot be written here: {first_line(error)}"
            ) from error
        raise StorageError(
            f"the rewrite of the database file was not claimed: {first_line(error)}"
        ) from error


def release_rewrite_claim(store: EventStore, owner: str) -> None:
    """Remove claim ``owner`` (:func:`claim_rewrite`), once its rewrite was tried: what is
    still owed is then any writing open's. A failed removal is logged; the claim then
    counts for nothing once this process ended."""
    _HELD.discard(owner)
    try:
        with store.transaction() as connection:
            if inspect(connection).has_table(REWRITE_CLAIM_TABLE):
                connection.exec_driver_sql(
                    f"DELETE FROM {REWRITE_CLAIM_TABLE} WHERE owner = ?", (owner,)
                )
    except SQLAlchemyError as error:
        log.warning(
            "the claim of this process's rewrite of %s stays until the process ends: %s",
            store.safe_url,
            first_line(error),
        )


def rewrite_held(connection: Connection, owed: int) -> RetryLater | None:
    """Who rewrites the file for erasure ``owed`` already, read in ``connection``:
    :class:`RewriteLeftToAnother` for a claim of another running process,
    :class:`RewriteUnderWayHere` for one this process holds, ``None`` for nobody."""
    if not inspect(connection).has_table(REWRITE_CLAIM_TABLE):
        return None
    claim = connection.exec_driver_sql(
        f"SELECT owner, machine, pid, started, through FROM {REWRITE_CLAIM_TABLE}"
    ).first()
    if claim is None or claim.through < owed:
        return None
    if claim.pid == os.getpid() and claim.machine == this_machine():
        if claim.owner in _HELD:
            return RewriteUnderWayHere("this process is rewriting the database file already")
        return None
    if process_alive(claim.machine, claim.pid, claim.started) is True:
        return RewriteLeftToAnother(
            f"process {claim.pid} is rewriting the database file for its erasure"
        )
    return None


def _refuse_if_claimed(connection: Connection, owed: int) -> None:
    """Raise what :func:`rewrite_held` finds holding the rewrite of erasure ``owed``."""
    held = rewrite_held(connection, owed)
    if held is not None:
        raise held


def _read_only(error: SQLAlchemyError) -> bool:
    """Whether ``error`` is SQLite refusing to write a read-only database."""
    cause = getattr(error, "orig", None)
    return (
        isinstance(cause, sqlite3.Error)
        and (getattr(cause, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_READONLY
    )
