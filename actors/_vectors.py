"""Embedding in the background: users with new messages or entries get their vectors
filled off every request path, so that a search rarely has anything left to embed.

The vectors are a projection (see :mod:`projections.vectors`); this thread only fills it
early. A search still embeds whatever of its user is missing first, so nothing depends
on this thread having caught up, and a write never waits for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["VectorFiller"]

log = logging.getLogger("memvee.actors")


class VectorFiller:
    """Fills the vectors of the users it is told about, one at a time, on its own thread.

    ``fill(user_id, stopping)`` embeds what the user lacks, asking ``stopping()`` between
    batches so that :meth:`stop` never waits for a long fill. Users told about while one is
    filled wait ``delay`` seconds more, so a burst of writes is embedded in a few batches.
    """

    def __init__(
        self, fill: Callable[[str, Callable[[], bool]], int], *, delay: float = 0.2
    ) -> None:
        self._fill = fill
        self._delay = delay
        self._pending: dict[str, None] = {}
        self._changed = threading.Condition()
        self._stopped = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="memvee-vectors", daemon=True)
        self._thread.start()

    def touch(self, user_id: str) -> None:
        """``user_id`` has new messages or entries (cheap: any thread may call it)."""
        with self._changed:
            if self._stopped:
                return
            self._pending[user_id] = None
            self._idle.clear()
            self._changed.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every user told about so far is filled (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Drop what waits and stop the thread (a search fills what was left)."""
        with self._changed:
            self._stopped = True
            self._pending.clear()
            self._changed.notify()
        self._thread.join(timeout=30)

    def _stopping(self) -> bool:
        return self._stopped

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._stopped:
                    self._idle.set()
                    self._changed.wait()
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
                    self._fill(user_id, self._stopping)
                except Exception:
                    log.exception("user %r: embedding in the background failed", user_id)
