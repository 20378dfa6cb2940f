"""The traces an erasure leaves in SQLite's files, and their removal.

Deleted rows live on in two places ``secure_delete`` does not reach. Pages SQLite
rebuilt while rows moved between them (a row that grew, say) keep the rows' former bytes
in their unused middle, until the file is rewritten (:meth:`events.EventStore.rewrite`).
And the write-ahead log's frames (and the database pages those frames have not been
copied back to yet) keep them until a ``TRUNCATE`` checkpoint copies every frame into the
database file and empties the log. A connection still reading an older snapshot (a
backup, an export, another process), or another process's connection writing or
checkpointing, holds that checkpoint off, and SQLite answers "busy" in the checkpoint's
row rather than raising; so the row is read, and an erasure whose
scrubbing failed or was held off has it retried in the background until it succeeds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import ClassVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from actors._background import RetryLater, UserWorker
from actors.rewrite_claim import (
    ReadOnlyDatabaseError,
    RewriteLeftToAnother,
    RewriteUnderWayHere,
    claim_owed_rewrite,
    release_rewrite_claim,
)
from events import CheckpointBusyError, EventStore, StorageError
from events.errors import first_line

__all__ = ["TraceScrubber", "scrub_files", "truncate_wal"]

log = logging.getLogger("memvee.actors")

EARLIER = ""
"""What :class:`TraceScrubber` scrubs for in place of a user: the erasures of an earlier
process whose rewrite did not finish (no user id is empty)."""


def _erased(user_id: str) -> str:
    """Whose erasure ``user_id`` stands for, in a log line."""
    return "the erasures of an earlier process" if user_id == EARLIER else f"user {user_id!r}"


def scrub_files(store: EventStore, wait_ms: int, erasure: int | None = None) -> None:
    """Leave none of the erased rows' bytes in the SQLite files: rewrite the file unless
    a rewrite that succeeded covered ``erasure`` (:meth:`EventStore.owed_rewrite`; every
    erasure owed by default), then truncate the write-ahead log (see
    :func:`truncate_wal` for ``wait_ms``) and record the rewritten erasures finished.

    Raises :class:`StorageError` when either could not be done.
    """
    store.rewrite(erasure)
    truncate_wal(store.engine, wait_ms)
    if store.settle_rewrites():
        try:  # the log holds only the record just settled: none of the erased words
            truncate_wal(store.engine, wait_ms)
        except StorageError as error:
            log.debug("the log of a settled rewrite was left for a later checkpoint: %s", error)


class ScrubHeldOff(RetryLater):
    """The write-ahead log's truncation was held off by another connection (often of
    another process): expected while others write, so it is retried, warned of in one line."""

    log_level: ClassVar[int] = logging.WARNING


def truncate_wal(engine: Engine, wait_ms: int) -> None:
    """Copy the write-ahead log into the database file and truncate it to nothing,
    waiting at most ``wait_ms`` for the write lock, then for other connections' older
    snapshots. Once it holds the write lock, writers wait for it (this process's and
    others'), so that wait is short; but it cannot hold off a connection that is already
    writing (holding the write lock past ``wait_ms``) or checkpointing, as another
    process's may be: then it does not complete, and the caller retries it (an erasure
    leaves it to :class:`TraceScrubber`, 1 s later, doubling up to a minute, until a
    try finds no other connection writing, checkpointing or reading an older snapshot).

    Raises :class:`CheckpointBusyError` when another connection kept it from completing
    (with what SQLite's checkpoint returned), :class:`StorageError` when the database
    failed (a full disk, say).
    """
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            (kept_ms,) = driver.execute("PRAGMA busy_timeout").fetchone()
            driver.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
            try:
                busy, frames, copied = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                driver.execute(f"PRAGMA busy_timeout={int(kept_ms)}")
    except (SQLAlchemyError, sqlite3.Error) as error:
        raise StorageError(f"the write-ahead log was not truncated: {first_line(error)}") from error
    if busy:
        raise CheckpointBusyError(busy, frames, copied)


class TraceScrubber:
    """Scrubs the files (:func:`scrub_files`) in the background for erasures that could
    not do it themselves, trying again (1 s, doubling up to a minute) until it succeeds.

    Its thread starts with the first erasure that needs it.
    """

    def __init__(
        self, store: EventStore, *, retry_delay: float = 1.0, retry_max: float = 60.0
    ) -> None:
        self._store = store
        self._retry = (retry_delay, retry_max)
        self._worker: UserWorker | None = None
        self._remaining: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._announced = False

    @property
    def remaining(self) -> frozenset[str]:
        """The users erased whose words may still be in the files."""
        with self._lock:
            return frozenset(self._remaining)

    def later(self, user_id: str) -> None:
        """Scrub the files of ``user_id``'s erasure in the background."""
        with self._lock:
            if self._stopped:
                return
            self._remaining.add(user_id)
            if self._worker is None:
                delay, cap = self._retry
                self._worker = UserWorker(
                    self._scrub,
                    name="scrubbing",
                    delay=0,
                    retry_delay=delay,
                    retry_max=cap,
                    named=_erased,
                )
            worker = self._worker
        worker.touch(user_id)

    def resume(self) -> None:
        """Finish in the background the rewrite an earlier erasure left owed (a process
        stopped during it, say), so no words of a user already forgotten stay in the
        files for want of another erasure. Only an open that writes calls it: the rewrite
        holds every writer off; one whose rewrite is done and only the write-ahead log's
        truncation is left is only truncated. One another process's erasure is doing is
        left to it and tried again after; on a database this process cannot write it
        stays owed."""
        if self._store.scrub_owed:
            self.later(EARLIER)

    def finish_owed(self) -> None:
        """Finish now, then stop as :meth:`stop` does, the rewrite an earlier erasure left
        owed: what a short-lived open that wrote (a command) does as it ends."""
        if self._store.scrub_owed:
            with self._lock:
                self._remaining.add(EARLIER)
        self.stop()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every erasure told about is scrubbed or waits for its next try."""
        with self._lock:
            worker = self._worker
        return worker is None or worker.wait_idle(timeout)

    def stop(self) -> None:
        """Stop retrying after one last try; the users whose words stay are named in a
        warning. A try of the background thread still running past the worker's wait
        (a long rewrite) is waited for: the store is closed next."""
        with self._lock:
            self._stopped = True
            worker = self._worker
        if worker is not None and not worker.stop():
            log.info("waiting for this process's rewrite of the database file to finish")
            worker.stop(wait=None)
        remaining = self.remaining
        if not remaining:
            return
        try:
            self._scrub_now()
        except RewriteLeftToAnother as waiting:
            log.info("the rewrite the database file owes is left to another process: %s", waiting)
            return
        except RewriteUnderWayHere as waiting:
            log.info(
                "the rewrite the database file owes is left to this process's other open: %s",
                waiting,
            )
            return
        except ReadOnlyDatabaseError:
            return  # said when it was found
        except StorageError as error:
            log.warning(
                "users %s were erased, but their words stay in the database files until "
                "they are scrubbed: the other connections finish reading and a checkpoint "
                "runs, after a rewrite of the file where one failed (%s)",
                ", ".join(
                    [repr(u) for u in sorted(remaining) if u != EARLIER]
                    + (["those an earlier process erased"] if EARLIER in remaining else [])
                ),
                error,
            )
            return
        self._scrubbed(remaining)

    def _scrub(self, user_id: str, stopping: Callable[[], bool]) -> None:
        if stopping():
            return
        try:
            self._scrub_now()
        except ReadOnlyDatabaseError:
            return
        except CheckpointBusyError as busy:
            raise ScrubHeldOff(str(busy)) from busy
        self._scrubbed({user_id})

    def _scrub_now(self) -> None:
        """Scrub the files, under the rewrite's claim where one is owed: raises
        :class:`RewriteLeftToAnother` while another process's erasure is rewriting the
        file (:class:`RewriteUnderWayHere`: another thread of this process),
        :class:`ReadOnlyDatabaseError` (said once, in a WARNING) where the database
        cannot be written, and :class:`StorageError` when the scrubbing failed."""
        try:
            claim = claim_owed_rewrite(self._store)
        except ReadOnlyDatabaseError as error:
            with self._lock:
                self._remaining.clear()
            log.warning(
                "the rewrite of the database file an erasure left owed is left to an open "
                "that can write it: %s",
                error,
            )
            raise
        if claim is None:
            scrub_files(self._store, 0)
            return
        try:
            with self._lock:
                announce = EARLIER in self._remaining and not self._announced
                self._announced = self._announced or announce
            if announce:
                log.warning(
                    "an earlier erasure's rewrite of the database file did not finish: "
                    "finishing it now"
                )
            scrub_files(self._store, 0)
        finally:
            release_rewrite_claim(self._store, claim)

    def _scrubbed(self, users: set[str] | frozenset[str]) -> None:
        with self._lock:
            self._remaining -= users
        for user_id in sorted(users):
            if user_id == EARLIER:
                log.info("the earlier erasure's words are gone from the database files")
            else:
                log.info("user %r: the erased words are gone from the database files", user_id)
