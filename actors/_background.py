"""Work in the background, per user: jobs that keep a projection ahead of the requests
that need it, off every request path.

Two kinds run this way. Embedding: users with new messages or entries get their vectors
filled, so that a search rarely has anything left to embed (a search embeds what is
missing for a short while itself, and ranks the rest on its words until this thread has
caught up). Checkpoints: a user whose log grew by another interval gets its replayed
state stored, so that ``state --at`` folds little (a replay folds from an older
checkpoint, or from nothing, otherwise). A write never waits for either. A job that
fails (the database or an embedding API down) is tried again later, on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from actors._pacing import UserBackoff

__all__ = ["RetryLater", "StopFlag", "UserWorker"]

log = logging.getLogger("memvee.actors")


class RetryLater(Exception):
    """Raised by a job that cannot be done yet for a reason that is no failure (another
    process is doing it): tried again later, as a failed job is, logged in one line
    without a traceback, at ``log_level`` (DEBUG; a subclass whose wait the operator
    should hear of raises it)."""

    log_level: ClassVar[int] = logging.DEBUG


class StopFlag:
    """Whether a worker was told to stop; callable, so a job asks it between steps.

    A job that writes what a slow call gave does so inside :meth:`unless_set`: :meth:`set`
    waits for such a write under way, so once it returned nothing more is written (the
    store may be closed next), and a call that answers later has its result dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False

    def __call__(self) -> bool:
        return self._set

    def set(self) -> None:
        """Tell the job to stop, once any write it has under way is done."""
        with self._lock:
            self._set = True

    @contextmanager
    def unless_set(self) -> Iterator[bool]:
        """Hold off :meth:`set` meanwhile; yields ``False`` if it was set already (do not
        write)."""
        with self._lock:
            yield not self._set


class UserWorker:
    """Does one kind of work for the users it is told about, one at a time, on its own thread.

    ``work(user_id, stopping)`` does it for one user, asking ``stopping()`` between steps
    (a :class:`StopFlag`) so that :meth:`stop` never waits for a long job. Users told
    about while one is worked on wait ``delay`` seconds more, so a burst of writes is
    handled in a few jobs. A user whose job failed is worked on again ``retry_delay``
    seconds later, doubling while its jobs keep failing, up to ``retry_max`` (a
    :class:`UserBackoff`, with its jitter).
    ``name`` names the thread (``memvee-<name>``) and the work in logs; ``named`` says
    whom a job was for in them (a key that is no user id says what it stands for).
    """

    def __init__(
        self,
        work: Callable[[str, StopFlag], object],
        *,
        name: str,
        delay: float = 0.2,
        retry_delay: float = 1.0,
        retry_max: float = 60.0,
        named: Callable[[str], str] = lambda user_id: f"user {user_id!r}",
    ) -> None:
        self._work = work
        self.name = name
        self._named = named
        self._delay = delay
        self._backoff = UserBackoff(base=retry_delay, cap=retry_max)
        self._later: dict[str, float] = {}  # users whose job failed, and when to retry
        self._pending: dict[str, None] = {}
        self._changed = threading.Condition()
        self._stopped = False
        self._stop = StopFlag()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"memvee-{name}", daemon=True)
        self._thread.start()

    def touch(self, user_id: str) -> None:
        """``user_id`` has new messages or entries (cheap: any thread may call it)."""
        with self._changed:
            if self._stopped:
                return
            self._pending[user_id] = None
            self._later.pop(user_id, None)
            self._idle.clear()
            self._changed.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every user told about so far is done, or failed and waits for its
        retry (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def stop(self, wait: float | None = 30.0) -> bool:
        """Drop what waits and stop the thread, waiting up to ``wait`` seconds for it to end
        (``None``: until it ended); whether it did (what was left is done by whoever
        needs it: a search embeds what is missing, a replay folds from an older
        checkpoint). A job whose writes are all made within
        its flag's :meth:`StopFlag.unless_set` may be given no wait: a thread held in a
        call (an embedding API that stalls) is a daemon, abandoned, and writes nothing
        once this returned."""
        with self._changed:
            self._stopped = True
            self._pending.clear()
            self._later.clear()
            self._changed.notify()
        self._stop.set()
        self._thread.join(timeout=wait)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped:
                    self._take_due()
                    if self._pending:
                        break
                    self._idle.set()
                    self._changed.wait(self._next_retry_in())
                if self._stopped:
                    self._idle.set()
                    return
            if self._delay:
                with self._changed:
                    self._changed.wait_for(lambda: self._stopped, self._delay)
            with self._changed:
                users, self._pending = list(self._pending), {}
            for user_id in users:
                if self._stopped:
                    break
                try:
                    self._work(user_id, self._stop)
                except RetryLater as waiting:
                    self._failed(user_id, waiting)
                except Exception:
                    self._failed(user_id)
                else:
                    self._backoff.succeeded(user_id)

    def _take_due(self) -> None:
        """Move the users whose retry is due to the pending ones (lock held)."""
        now = time.monotonic()
        for user_id, due in list(self._later.items()):
            if due <= now:
                del self._later[user_id]
                self._pending[user_id] = None

    def _next_retry_in(self) -> float | None:
        """Seconds until the next retry is due (lock held); ``None``: none waits."""
        if not self._later:
            return None
        return max(0.0, min(self._later.values()) - time.monotonic())

    def _failed(self, user_id: str, waiting: RetryLater | None = None) -> None:
        delay = self._backoff.failed(user_id)
        if waiting is not None:
            log.log(
                waiting.log_level,
                "%s: %s waits %.1f s: %s",
                self._named(user_id),
                self.name,
                delay,
                waiting,
            )
        else:
            log.warning(
                "%s: %s in the background failed; trying again in %.1f s",
                self._named(user_id),
                self.name,
                delay,
                exc_info=True,
            )
        with self._changed:
            if not self._stopped and user_id not in self._pending:
                self._later[user_id] = time.monotonic() + delay
