"""Group commit: many user actors' appends share one database transaction.

Each user actor stays the single writer of its log; while one transaction is being
written the next requests queue up and go in the next transaction together, so
throughput grows with the number of concurrent users. An actor may queue a second
append before the first is committed (pipelining); every request carries the *write
epoch* of the in-memory log it was decided on, and once a write of a log fails, every
later request of that epoch is refused, so a failed write can never leave a version gap.
A group's write that fails is sent again request by request, but for the requests its
commit stored all the same (the acknowledgement was lost): those are settled as committed.
A write that fails in a way that may pass (a statement timeout, a deadlock, a lock held
too long) is looked for in the log and, not stored, sent again after a short pause, as
many times as it asks (:attr:`Write.attempts`).

A write that finds the committer idle (every earlier write settled, none running) is
written at once on the submitting thread: a lone writer pays no hand-over to the
committer's thread. Writes still happen one at a time, in ticket order.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from actors._bridge import one_wakeup
from events import ConflictError, EventStore, Recorded, StoredSnapshot
from events.errors import ConnectionLostError, TransientStorageError, first_line, may_pass
from projections import Projector, index_messages

__all__ = ["STORE_ATTEMPTS", "GroupCommitter", "Settled", "Write", "store_delay"]

log = logging.getLogger("memvee.actors")

STORE_ATTEMPTS = 3
"""How many times a write (or a decision) meets a store failure that may pass (a
connection lost, a statement timeout) before it fails: a few, 50 then 100 ms apart
(:func:`store_delay`), since the thread that waits meanwhile is shared with other users."""


LONG_WAIT = 2.0
"""Seconds a try may have taken before a failure that may pass and still be sent again: a
failure that came after a longer wait (SQLite's busy timeout, 30 s; a statement timeout)
would only make every writer behind it wait as long again. A deadlock (found after
PostgreSQL's deadlock_timeout, 1 s) is sent again. Three tries hold the committer (every
user's writes) at most about 6 s."""


def store_delay(failures: int) -> float:
    """The wait before the store is tried again after its ``failures``-th failure that may
    pass: 50 ms at first, doubling."""
    return 0.05 * 2.0 ** (failures - 1)


Settled = Callable[[BaseException | None], None]
"""Told how a write ended: ``None`` once committed, else the error that refused it."""


class EarlierWriteFailed(ConflictError):
    """A write refused because one before it, of the same log and decided on the same
    state, failed: it lost no race of its own (its retry does not count as one)."""


class Write:
    """One log's events to commit together, decided in write ``epoch``, and who is told how
    the write ended (:meth:`settled`).

    ``snapshot``, the log at the version these events reach, is stored with them.
    ``origin`` is when the log they were decided on began (``None`` for a new log): the
    write is refused as a conflict if the stored log began otherwise (see
    :meth:`EventStore.append`). A caller that needs more to act on the outcome subclasses
    it, so that a write in flight is one object for the collector to walk, not several.
    """

    __slots__ = ("epoch", "events", "origin", "snapshot", "then", "ticket")

    attempts = 1
    """How many times the committer tries the write while it fails in a way that may pass;
    a caller that decides again itself after a failure (a user actor's decision) needs one."""

    def __init__(
        self,
        events: Sequence[Any],
        epoch: int,
        then: Settled | None = None,
        snapshot: StoredSnapshot | None = None,
        origin: datetime | None = None,
    ) -> None:
        self.events, self.epoch, self.then = events, epoch, then
        self.snapshot, self.origin = snapshot, origin
        self.ticket = 0

    def settled(self, recorded: list[Recorded] | None, error: BaseException | None) -> None:
        """Told how the write ended, on the thread that wrote it: ``error`` is ``None`` once
        committed (``recorded`` are then the events' positions). Tells ``then``."""
        if self.then is not None:
            self.then(error)

    @property
    def log_id(self) -> Any:
        """The id of the log the events belong to."""
        return self.events[0].originator_id


class _Waited(Write):
    """A write whose caller blocks until it ended (:meth:`GroupCommitter.commit`)."""

    __slots__ = ("future",)

    def __init__(
        self,
        events: Sequence[Any],
        epoch: int,
        snapshot: StoredSnapshot | None,
        origin: datetime | None,
    ) -> None:
        super().__init__(events, epoch, None, snapshot, origin)
        self.future: Future[list[Recorded]] = Future()

    def settled(self, recorded: list[Recorded] | None, error: BaseException | None) -> None:
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(recorded or [])


class GroupCommitter:
    """A thread that stores queued event batches, with their projection rows, in bulk."""

    def __init__(
        self,
        store: EventStore,
        projector: Projector,
        max_batch: int = 256,
        *,
        index_every: int = 256,
        index_idle: float = 0.2,
    ) -> None:
        self._store = store
        self._projector = projector
        self._max_batch = max_batch
        # Messages go into the full-text index in bulk: inside a write once index_every
        # events were committed since the last time (under load, every few group commits),
        # or on their own after index_idle seconds without a write. Each pass writes a new
        # FTS5 segment, whose cost is mostly per pass: a pass in every group commit cost
        # 100 users' exchanges about 12 µs of CPU each. A count of this process's events,
        # a hint only: a search indexes whatever still waits.
        self._index_every = index_every
        self._index_idle = index_idle
        self._unindexed = 0
        self._last_write_at = 0.0
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._failed_epochs: dict[Any, int] = {}
        self._in_flight: dict[Any, int] = {}  # log id -> its last unsettled write's ticket
        self._writing = threading.Lock()  # held by whoever writes: one write at a time
        self._issuing = threading.Lock()
        self._issued = 0
        self._settled_through = 0
        self._progress = threading.Condition()
        self.transactions = 0
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="memvee-committer", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> int:
        """Queue ``write``; returns its ticket.

        The write is told how it ended (:meth:`Write.settled`) on the thread that wrote it
        (this one, when the committer was idle, else the committer's). Writes settle in
        ticket order, so a ticket is a barrier (:meth:`wait_for`) that keeps nothing alive:
        an idle user's last write leaves no objects for the collector to walk.
        """
        return self._enqueue(write)

    def commit(
        self,
        events: Sequence[Any],
        epoch: int,
        snapshot: StoredSnapshot | None = None,
        origin: datetime | None = None,
    ) -> list[Recorded]:
        """Queue ``events`` (with ``snapshot`` and ``origin``, see :class:`Write`) and wait
        until they are committed (or raise why not)."""
        write = _Waited(events, epoch, snapshot, origin)
        self._enqueue(write)
        return write.future.result()

    def wait_for(self, ticket: int) -> None:
        """Block until the write of ``ticket``, and every write queued before it, settled."""
        with self._progress:
            self._progress.wait_for(lambda: self._settled_through >= ticket)

    def wait_for_log(self, log_id: Any) -> None:
        """Block until every write of ``log_id`` queued so far settled.

        A user's actor may stop while its last write still waits here; the user's next
        actor loads the log only after that, or it would miss the write, and a forget
        would let the write land on the erased log past a gap in its versions.
        """
        ticket = self._in_flight.get(log_id)
        if ticket is not None:
            self.wait_for(ticket)

    def failed(self, log_id: Any, epoch: int) -> bool:
        """Whether a write of ``log_id`` decided in ``epoch`` failed (later ones are refused)."""
        return self._failed_epochs.get(log_id, -1) >= epoch

    def _enqueue(self, request: Write) -> int:
        with self._issuing:  # tickets in queue order
            self._issued += 1
            request.ticket = self._issued
            self._in_flight[request.log_id] = request.ticket
            idle = self._settled_through == request.ticket - 1
            if not (idle and self._writing.acquire(blocking=False)):
                self._queue.put(request)
                return request.ticket
        try:  # every earlier write settled and none runs: write it here, now
            self._write([request])
            self._last_write_at = time.monotonic()
        finally:
            self._writing.release()
        with self._progress:
            self._progress.notify_all()
        return request.ticket

    def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                stopping = self._write_queued(self._queue.get(timeout=self._until_idle()))
            except queue.Empty:
                self._index_if_idle()

    def _until_idle(self) -> float:
        """How long to wait for a request before looking again whether to index: writes
        also happen on other threads (at once, when the committer is idle), so the wait
        is bounded even when nothing waits for the index."""
        if not self._unindexed:
            return self._index_idle
        return max(0.001, self._last_write_at + self._index_idle - time.monotonic())

    def _index_if_idle(self) -> None:
        """Index the messages that wait once no write came for ``index_idle`` seconds."""
        with self._writing:
            if self._unindexed and time.monotonic() - self._last_write_at >= self._index_idle:
                self._index_messages()

    def _write_queued(self, first: Write | None) -> bool:
        """Write ``first`` with the requests queued after it; returns whether to stop.

        Nothing of the write outlives this call: an idle committer keeps no events or
        callbacks alive for the collector to walk.
        """
        with self._writing:
            batch, stopping = self._batch_from(first)
            if batch:
                self._write(batch)
                self._last_write_at = time.monotonic()
            if stopping and self._unindexed:
                self._index_messages()
        if batch:
            with self._progress:
                self._progress.notify_all()
        return stopping

    def _batch_from(self, first: Write | None) -> tuple[list[Write], bool]:
        """``first`` and the requests queued after it, to write together, and whether to
        stop."""
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _index_messages(self) -> None:
        """Index the messages that wait, in a transaction of their own."""
        self._unindexed = 0
        try:
            index_messages(self._store, self._projector)
        except Exception as error:  # the database failing (a full disk), mostly: no trace
            log.warning(
                "indexing messages for search failed (%s); a search indexes them first",
                first_line(error),
            )
            log.debug("indexing messages for search failed", exc_info=True)

    def _write(self, batch: list[Write], tries: int = 1) -> None:
        """Write ``batch`` together, its ``tries``-th try, and settle its requests."""
        batch = [r for r in batch if self._admissible(r)]
        if not batch:
            return
        began = time.monotonic()
        try:
            recorded = self._append(batch)
        except Exception as error:
            self._projector.discard()
            if self._store.is_sqlite:  # an index pass rolled back with it: try again later
                self._unindexed = max(self._unindexed, 1)
            waited = time.monotonic() - began
            self._write_failed(batch, error, tries, waited)
            return
        self._projector.committed()
        self.transactions += 1
        self.commits += len(batch)
        start = 0
        with one_wakeup():
            for request in batch:
                end = start + len(request.events)
                self._settle(request, recorded[start:end], None)
                start = end

    def _write_failed(
        self,
        batch: list[Write],
        error: Exception,
        tries: int,
        waited: float,
        lookups: int = 1,
    ) -> None:
        """After the ``tries``-th write of ``batch`` failed with ``error``: settle the
        requests its commit stored all the same (the acknowledgement was lost) as
        committed, and send the others again, or fail them.

        A failure that may pass (:func:`~events.errors.may_pass`) sends them again together
        after a short pause (:func:`store_delay`) while each has tries left
        (:attr:`Write.attempts`) and the failed try took at most :data:`LONG_WAIT`
        (``waited``); else a request fails with :class:`~events.errors.TransientStorageError`.
        After any other failure a group's requests are sent again one by one, so each
        fails, if it does, on its own.

        Sent again, a stored request would conflict with its own events, and its caller
        decide it again (an exchange stored twice). While whether the commit landed cannot
        be told, nothing is sent again: the lookup is, after the pause, and at last every
        request fails with ``error``, as it would alone.
        """
        passing = not isinstance(error, ConflictError) and may_pass(error)
        in_time = waited <= LONG_WAIT
        retry = passing and in_time and all(tries < r.attempts for r in batch)
        looked_again = lookups < max(r.attempts for r in batch) and in_time
        try:
            found = self._stored(batch, error)
        except Exception as unknown:
            log.warning(
                "a write of %d logs failed (%s), and whether it was stored cannot be told (%s)",
                len(batch),
                first_line(error),
                first_line(unknown),
            )
            if passing and looked_again:
                self._pause(lookups)
                self._write_failed(batch, error, tries, waited, lookups + 1)
                return
            for request in batch:
                self._fail(request, error)
            return
        stored = sum(recorded is not None for recorded in found)
        level = logging.WARNING if stored else logging.INFO
        log.log(
            logging.DEBUG if isinstance(error, ConflictError) else level,
            "a write of %d logs failed (%s, try %d); %d were stored all the same",
            len(batch),
            first_line(error),
            tries,
            stored,
        )
        if retry and not stored:
            self._pause(tries)
            self._write(batch, tries + 1)
            return
        if stored:
            self.transactions += 1
        for request, recorded in zip(batch, found, strict=True):
            if recorded is not None:
                self.commits += 1
                self._settle(request, recorded, None)
            elif passing and (tries >= request.attempts or not in_time):
                self._fail(request, _refused(error, tries))
            elif len(batch) > 1:
                self._write([request], tries)
            else:
                self._fail(request, error)

    def _pause(self, tries: int) -> None:
        """Wait a little before the ``tries + 1``-th try of a write: the failure may pass."""
        time.sleep(store_delay(tries))

    def _stored(self, batch: list[Write], error: Exception) -> list[list[Recorded] | None]:
        """For each request of ``batch``, whose write failed with ``error``, its events'
        positions if the write stored them all the same, else ``None``. A conflict, or a
        connection lost before COMMIT was sent, stored nothing: no need to look."""
        if isinstance(error, ConflictError | ConnectionLostError):
            return [None] * len(batch)
        return self._store.find_recorded([request.events for request in batch])

    def _fail(self, request: Write, error: BaseException) -> None:
        """Settle ``request`` as failed with ``error``: the later writes decided on the
        same state are refused (see :meth:`_admissible`)."""
        self._failed_epochs[request.log_id] = request.epoch
        self._settle(request, None, error)

    def _append(self, batch: list[Write]) -> list[Recorded]:
        """Store ``batch`` in one transaction, sent again once on a fresh connection when
        the one it ran on was lost before its COMMIT was sent (nothing of it was stored):
        the first write after the server ended idle sessions is not refused for that."""
        origins = {r.log_id: r.origin for r in batch if r.origin is not None}
        events = [r.events for r in batch]
        snapshots = [r.snapshot for r in batch if r.snapshot is not None]
        fold = functools.partial(self._fold, origins=origins)
        try:
            return self._store.append(events, fold, snapshots, origins)
        except ConnectionLostError as lost:
            log.info("a write's connection was lost (%s); sending it again", first_line(lost))
            self._projector.discard()
            return self._store.append(events, fold, snapshots, origins)

    def _admissible(self, request: Write) -> bool:
        """Refuse a request decided on top of a write that failed (same epoch)."""
        if request.epoch <= self._failed_epochs.get(request.log_id, -1):
            refused = EarlierWriteFailed(
                "an earlier write of this log failed; the log was reloaded"
            )
            self._settle(request, None, refused)
            return False
        return True

    def _settle(
        self, request: Write, recorded: list[Recorded] | None, error: BaseException | None
    ) -> None:
        try:
            request.settled(recorded, error)
        except Exception:
            log.exception("a write's settle callback failed")
        with self._issuing:
            if self._in_flight.get(request.log_id) == request.ticket:
                del self._in_flight[request.log_id]
        self._settled_through = request.ticket

    def _fold(
        self, connection: Connection, recorded: list[Recorded], origins: dict[Any, datetime]
    ) -> None:
        if not self._projector.apply(connection, recorded, origins=origins):
            return  # a rebuild folds the events, and indexes their messages at its end
        if not self._store.is_sqlite:
            return  # PostgreSQL's text index is kept by the database, in every write
        self._unindexed += len(recorded)
        if self._unindexed >= self._index_every:
            self._projector.index_messages(connection)
            self._unindexed = 0


def _refused(error: Exception, tries: int) -> TransientStorageError:
    """The error a write fails with, found not stored after ``tries`` tries that each
    failed in a way that may pass, the last with ``error``: its caller may send it again."""
    times = "once" if tries == 1 else f"{tries} times"
    refused = TransientStorageError(
        f"{first_line(error)} (tried {times} and not stored: this may pass, and the write "
        "may be sent again)"
    )
    refused.__cause__ = error
    return refused
