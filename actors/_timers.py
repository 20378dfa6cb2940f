"""One thread that runs callbacks at given times: the engine's wake-ups for retries.

Thousands of users may each wait for a retry; a timer thread each would cost thousands
of threads, so they share one heap and one thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Timers"]

log = logging.getLogger("memvee.actors")


class Timers:
    """Runs each scheduled callback once, at (or soon after) its time, on one thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._on_drop: dict[int, Callable[[], None]] = {}
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="memvee-timers", daemon=True)
        self._thread.start()

    def call_later(
        self,
        delay: float,
        callback: Callable[[], None],
        dropped: Callable[[], None] | None = None,
    ) -> None:
        """Run ``callback`` in ``delay`` seconds (callbacks must not block for long); if
        the timers stop first, run ``dropped`` instead (when given), so that whoever waits
        on the callback is told."""
        with self._changed:
            if not self._stopped:
                order = next(self._order)
                heapq.heappush(self._heap, (self._clock() + delay, order, callback))
                if dropped is not None:
                    self._on_drop[order] = dropped
                self._changed.notify()
                return
        if dropped is not None:
            dropped()

    def stop(self) -> None:
        """Drop what is scheduled and stop the thread."""
        with self._changed:
            self._stopped = True
            self._heap.clear()
            drops, self._on_drop = list(self._on_drop.values()), {}
            self._changed.notify()
        self._thread.join(timeout=10)
        for dropped in drops:
            try:
                dropped()
            except Exception:
                log.exception("telling of a dropped wake-up failed")

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._changed.wait(timeout)
                if self._stopped:
                    return
                _, order, callback = heapq.heappop(self._heap)
                self._on_drop.pop(order, None)
            try:
                callback()
            except Exception:
                log.exception("a scheduled wake-up failed")
