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
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="memvee-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in ``delay`` seconds (callbacks must not block for long)."""
        with self._changed:
            if self._stopped:
                return
            heapq.heappush(self._heap, (self._clock() + delay, next(self._order), callback))
            self._changed.notify()

    def stop(self) -> None:
        """Drop what is scheduled and stop the thread."""
        with self._changed:
            self._stopped = True
            self._heap.clear()
            self._changed.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._changed.wait(timeout)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                log.exception("a scheduled wake-up failed")
