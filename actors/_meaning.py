"""The threads a batch is prepared on past 100 current entries: its texts embedded
(see :meth:`actors.engine.Engine._embed_aside`), and the entries shown beside it read
(see :meth:`actors.engine.Engine._shown_aside`), each kind on threads of its own.

They are daemon threads of memvee's own, not a ``ThreadPoolExecutor``'s: the interpreter
joins every executor thread at exit, so an embedder that never answers (a remote API
with no timeout) would keep the process alive after ``close`` returned. Stopping
abandons a call that hangs instead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BATCH_EMBED_SECONDS", "MeaningThreads", "Once"]

log = logging.getLogger("memvee.actors")

T = TypeVar("T")

BATCH_EMBED_SECONDS = 10.0
"""How long a batch waits for its texts' vectors before it goes on by words (see
``MemoryConfig.batch_embed_seconds``)."""


class Once(Generic[T]):
    """Calls ``callback`` with the first value given only: of an answer and a deadline,
    whichever comes first is told; the other is dropped."""

    def __init__(self, callback: Callable[[T], object]) -> None:
        self._callback: Callable[[T], object] | None = callback
        self._lock = threading.Lock()

    @property
    def told(self) -> bool:
        """Whether a value was told already (a job whose deadline passed need not run)."""
        return self._callback is None

    def __call__(self, value: T) -> bool:
        """Tell ``value`` unless another was told first; ``True``: it was told."""
        with self._lock:
            callback, self._callback = self._callback, None
        if callback is None:
            return False
        callback(value)
        return True


class MeaningThreads:
    """Runs jobs on up to ``count`` daemon threads (``memvee-<name>_<n>``), in the order
    given, so a slow job holds one of them, not every one; a thread starts only when a
    job finds none free (a Memory whose users have few entries starts none)."""

    def __init__(self, count: int, name: str = "meaning") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._count = count
        self._threads: list[threading.Thread] = []
        self._free = 0  # threads started and not running a job
        self._queued = 0  # jobs given and not yet taken by a thread

    def submit(self, job: Callable[[], object]) -> bool:
        """Run ``job`` on a free thread; ``False``: the threads are stopped, it never runs."""
        with self._lock:
            if self._stopped:
                return False
            if self._queued >= self._free and len(self._threads) < self._count:
                thread = threading.Thread(
                    target=self._run, name=f"memvee-{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
                self._free += 1
            self._queued += 1
            self._jobs.put(job)
            return True

    def stop(self, wait: float = 0.0) -> None:
        """Drop the jobs that wait and end each thread once its job is done, waiting up
        to ``wait`` seconds for those running: a job that hangs longer is abandoned (its
        thread, a daemon, dies with the process)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                for _ in self._threads:
                    self._jobs.put(None)
            threads = list(self._threads)
        deadline = time.monotonic() + wait
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None and not self._stopped:
            with self._lock:
                self._free -= 1
                self._queued -= 1
            try:
                job()
            except BaseException:  # an embedder may raise anything; the thread goes on
                log.exception("a job of the memvee-%s threads failed", self._name)
            with self._lock:
                self._free += 1
