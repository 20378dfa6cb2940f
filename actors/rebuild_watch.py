"""The watch over a rebuild of the projections that this process's writes wait on.

While a rebuild runs, a write stores its events and leaves them to the rebuild (see
:class:`projections.Projector`). A rebuild that was stopped (Ctrl-C, a crash) leaves them
unfolded, so unsearchable, until someone resumes it; the next open of the database does,
but a process that stays open would wait for good. So once a write finds a rebuild, the
watch looks at its position every ``interval`` seconds, and when the position has not
moved, this process folds the rest itself, a page at a time beside the other writers (as
``memvee rebuild --resume`` does; a rebuild that comes back to life shares the pages).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from actors._timers import Timers
from projections import FoldState

__all__ = ["RebuildWatch"]

log = logging.getLogger("memvee.actors")

STALL_SECONDS = 30.0
"""How long a rebuild may make no progress before this process finishes it."""


class RebuildWatch:
    """Finishes a rebuild of the projections that stopped while this process writes.

    ``state()`` reads the projections' fold state; ``finish(stopping)`` folds the rest of
    the log (asking ``stopping()`` between pages) and returns how many events it folded.
    """

    def __init__(
        self,
        state: Callable[[], FoldState],
        finish: Callable[[Callable[[], bool]], int],
        timers: Timers,
        interval: float | None = None,
    ) -> None:
        self._state = state
        self._finish = finish
        self._timers = timers
        self._interval = STALL_SECONDS if interval is None else interval
        self._lock = threading.Lock()
        self._watching = False
        self._stopping = threading.Event()
        self._finisher: threading.Thread | None = None

    def seen(self) -> None:
        """A write found a rebuild: watch it (cheap, and called inside a write)."""
        with self._lock:
            if self._watching or self._stopping.is_set():
                return
            self._watching = True
        self._timers.call_later(self._interval, lambda: self._look(None))

    def stop(self) -> None:
        """Stop watching, and stop folding after the page at hand."""
        self._stopping.set()
        finisher = self._finisher
        if finisher is not None:
            finisher.join(timeout=60)

    def _look(self, before: int | None) -> None:
        """On the timers' thread: one quick read, then look again, or finish."""
        if self._stopping.is_set():
            return
        try:
            state = self._state()
        except Exception:
            log.exception("could not read how far the rebuild of the projections is")
            state = FoldState(before or 0, rebuilding=True)
        if not state.rebuilding:
            with self._lock:
                self._watching = False
            return
        if state.position != before:
            self._timers.call_later(self._interval, lambda: self._look(state.position))
            return
        log.warning(
            "the rebuild of the projections has not moved for %.0f s (at event %d): this "
            "process finishes it",
            self._interval,
            state.position,
        )
        self._finisher = threading.Thread(
            target=self._run_finish, name="memvee-rebuild", daemon=True
        )
        self._finisher.start()

    def _run_finish(self) -> None:
        try:
            folded = self._finish(self._stopping.is_set)
            log.warning("finished the rebuild of the projections: folded %d events", folded)
        except Exception:
            log.exception("could not finish the rebuild of the projections; trying again later")
        with self._lock:
            self._watching = False
        if not self._stopping.is_set():
            self.seen()
