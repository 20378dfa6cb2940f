"""Group commit: many user actors' appends share one database transaction.

Each user actor stays the single writer of its log; while one transaction is being
written the next requests queue up and go in the next transaction together, so
throughput grows with the number of concurrent users. An actor may queue a second
append before the first is committed (pipelining); every request carries the *write
epoch* of the in-memory log it was decided on, and once a write of a log fails, every
later request of that epoch is refused, so a failed write can never leave a version gap.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from events import ConflictError, EventStore, Recorded
from projections import Projector

__all__ = ["GroupCommitter"]

log = logging.getLogger("memvee.actors")


Settled = Callable[[BaseException | None], None]
"""Told how a write ended: ``None`` once committed, else the error that refused it."""


@dataclass(slots=True)
class _Request:
    events: Sequence[Any]
    epoch: int
    then: Settled | None = None
    keep_result: bool = False
    future: Future[Any] = field(default_factory=Future)

    def settle(self, recorded: list[Recorded] | None, error: BaseException | None) -> None:
        """Tell ``then``, then resolve the future (the recorded events only if kept)."""
        if self.then is not None:
            try:
                self.then(error)
            except Exception:
                log.exception("a write's settle callback failed")
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(recorded if self.keep_result else None)

    @property
    def log_id(self) -> Any:
        return self.events[0].originator_id


class GroupCommitter:
    """A thread that stores queued event batches, with their projection rows, in bulk."""

    def __init__(self, store: EventStore, projector: Projector, max_batch: int = 256) -> None:
        self._store = store
        self._projector = projector
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="memvee-committer", daemon=True)
        self._thread.start()
        self._failed_epochs: dict[Any, int] = {}
        self.transactions = 0
        self.commits = 0

    def submit(
        self, events: Sequence[Any], epoch: int, then: Settled | None = None
    ) -> Future[None]:
        """Queue ``events`` of one log, decided in write ``epoch``.

        ``then`` is told how the write ended, on the committer's thread; then the future
        resolves (to ``None``), or fails with the same error. A settled future holds
        neither the events nor ``then``: an actor keeps its last write as a barrier, and
        an idle user must not keep a write's objects alive for the collector to walk.
        """
        request = _Request(events, epoch, then)
        self._queue.put(request)
        return request.future

    def commit(self, events: Sequence[Any], epoch: int) -> list[Recorded]:
        """Queue ``events`` and wait until they are committed (or raise why not)."""
        request = _Request(events, epoch, keep_result=True)
        self._queue.put(request)
        recorded: list[Recorded] = request.future.result()
        return recorded

    def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if self._admissible(r)]
        if not batch:
            return
        try:
            recorded = self._store.append([r.events for r in batch], self._fold)
        except Exception as error:
            if len(batch) == 1:
                failed = batch[0]
                self._failed_epochs[failed.log_id] = failed.epoch
                failed.settle(None, error)
                return
            level = logging.DEBUG if isinstance(error, ConflictError) else logging.WARNING
            log.log(level, "a group commit of %d logs failed (%s); one by one", len(batch), error)
            for request in batch:
                self._write([request])
            return
        self.transactions += 1
        self.commits += len(batch)
        start = 0
        for request in batch:
            end = start + len(request.events)
            request.settle(recorded[start:end], None)
            start = end

    def _admissible(self, request: _Request) -> bool:
        """Refuse a request decided on top of a write that failed (same epoch)."""
        if request.epoch <= self._failed_epochs.get(request.log_id, -1):
            refused = ConflictError("an earlier write of this log failed; the log was reloaded")
            request.settle(None, refused)
            return False
        return True

    def _fold(self, connection: Connection, recorded: list[Recorded]) -> None:
        self._projector.apply(connection, recorded)
