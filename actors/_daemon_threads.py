"""Daemon threads that run jobs given to them; the engine prepares a batch on two pools
of them past 100 current entries: its texts embedded (see
:meth:`actors.engine.Engine._embed_aside`), and the entries shown beside it read (see
:meth:`actors.engine.Engine._shown_aside`).

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
from typing import Generic, NamedTuple, TypeVar

__all__ = ["BATCH_EMBED_SECONDS", "DaemonThreads", "Once"]

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


class _Job(NamedTuple):
    """A job given to :class:`DaemonThreads`, and what is called instead if it is dropped."""

    run: Callable[[], object]
    dropped: Callable[[], object]


def _nothing() -> None:
    """What a job dropped unannounced calls."""


class DaemonThreads:
    """Runs jobs on up to ``count`` daemon threads (``memvee-<name>_<n>``), in the order
    given, so a slow job holds one of them, not every one; a thread starts only when a
    job finds none free (a Memory whose users have few entries starts none)."""

    def __init__(self, count: int, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._count = count
        self._threads: list[threading.Thread] = []
        self._free = 0  # threads started and not running a job
        self._queued = 0  # jobs given and not yet taken by a thread

    def submit(self, job: Callable[[], object], dropped: Callable[[], object] = _nothing) -> bool:
        """Run ``job`` on a free thread. A job that never runs calls ``dropped`` instead:
        one still waiting when the threads stop, and one given once they stopped or when
        no thread runs and none can be started (logged), for which this returns ``False``."""
        with self._lock:
            taken = not self._stopped and self._thread_for_job()
            if taken:
                self._queued += 1
                self._jobs.put(_Job(job, dropped))
        if not taken:
            self._call(dropped)
        return taken

    def _thread_for_job(self) -> bool:
        """Start a thread if a job given now finds none free and fewer than ``count`` run
        (lock held); whether any thread will take the job."""
        if self._queued < self._free or len(self._threads) >= self._count:
            return True
        name = f"memvee-{self._name}_{len(self._threads)}"
        thread = threading.Thread(target=self._run, name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as error:  # the process may start no more threads
            log.warning("thread %s could not be started: %s", name, error)
            return bool(self._threads)
        self._threads.append(thread)
        self._free += 1
        return True

    def stop(self, wait: float = 0.0) -> None:
        """Drop the jobs that wait (each calls its ``dropped``) and end each thread once its
        job is done, waiting up to ``wait`` seconds for those running: a job that hangs
        longer is abandoned (its thread, a daemon, dies with the process)."""
        dropped: list[_Job] = []
        with self._lock:
            if not self._stopped:
                self._stopped = True
                while not self._jobs.empty():
                    if (job := self._jobs.get_nowait()) is not None:
                        dropped.append(job)
                for _ in self._threads:
                    self._jobs.put(None)
            threads = list(self._threads)
        for job in dropped:
            self._call(job.dropped)
        deadline = time.monotonic() + wait
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._free -= 1
                self._queued -= 1
                stopped = self._stopped
            if stopped:  # taken as the threads stopped: dropped as those waiting are
                self._call(job.dropped)
                return
            self._call(job.run)
            with self._lock:
                self._free += 1

    def _call(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException:  # an embedder may raise anything; the thread goes on
            log.exception("a job of the memvee-%s threads failed", self._name)
