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

from projections import FoldState

__all__ = ["RebuildWatch"]

log = logging.getLogger("memvee.actors")

STALL_SECONDS = 30.0
"""How long a rebuild may make no progress before this process finishes it."""

_UNREADABLE = -1


class RebuildWatch:
    """Finishes a rebuild of the projections that stopped while this process writes.

    ``state()`` reads the projections' fold state; ``finish(stopping)`` folds the rest of
    the log (asking ``stopping()`` between pages) and returns how many events it folded.
    The watch runs on a thread of its own, only while a rebuild is on.
    """

    def __init__(
        self,
        state: Callable[[], FoldState],
        finish: Callable[[Callable[[], bool]], int],
        interval: float | None = None,
    ) -> None:
        self._state = state
        self._finish = finish
        self._interval = STALL_SECONDS if interval is None else interval
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def seen(self) -> None:
        """A write found a rebuild: watch it (cheap, and called inside a write)."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._watch, name="memvee-rebuild", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching, and stop folding after the page at hand."""
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)

    def _watch(self) -> None:
        try:
            before = self._position()
            while before is not None and not self._stopping.wait(self._interval):
                now = self._position()
                if now is not None and now == before != _UNREADABLE:
                    self._finish_stalled(now)
                    now = self._position()
                before = now
        finally:
            with self._lock:
                self._thread = None

    def _position(self) -> int | None:
        """The rebuild's position; ``None`` once no rebuild is on."""
        try:
            state = self._state()
        except Exception:
            log.exception("could not read how far the rebuild of the projections is")
            return _UNREADABLE
        return state.position if state.rebuilding else None

    def _finish_stalled(self, position: int) -> None:
        log.warning(
            "the rebuild of the projections has not moved for %.0f s (at event %d): this "
            "process finishes it",
            self._interval,
            position,
        )
        try:
            folded = self._finish(self._stopping.is_set)
        except Exception:
            log.exception("could not finish the rebuild of the projections; trying again")
            return
        log.warning("finished the rebuild of the projections: folded %d events", folded)
