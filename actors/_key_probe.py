"""The probe of a refused key: an open retries one user whose last run was refused (the
API key refused, every request refused) before the others, so a key still bad costs one
run an open, and a key fixed since leaves no user's messages waiting for the threshold.

:class:`KeyProbe` stands between the engine's actors and the Memory's observer: it tells
the observer everything as it is, and hears the end of every task: the first that covers
messages retries the users still owed one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from actors._context import TaskObserver


class KeyProbe:
    """A :class:`TaskObserver` that forwards every move to ``observer`` and sets
    ``key_works`` once a task covers messages (the API accepted the key); the users whose
    refused runs are owed a retry (:meth:`owe`) are retried then, whichever run of the
    engine showed it: the probe's own, its retry after a failure that passed, a stored
    request run under another id, another user's."""

    def __init__(self, observer: TaskObserver, key_works: threading.Event) -> None:
        self._observer = observer
        self._key_works = key_works
        self._lock = threading.Lock()
        self._owed: dict[str, None] = {}
        self._retry: Callable[[list[str]], None] | None = None
        self._probing: str | None = None  # the task id of the probe in flight, if one is

    def start_probe(self, task_id: str) -> bool:
        """Whether a probe of the key may run as task ``task_id`` now: not while another
        is in flight (those it would probe wait owed instead, and a key still refused costs
        one run, not one per user taken over). The probe is over when its task ends here
        (``task_id``, or the request that stands for it: :meth:`stands_as`), or once
        :meth:`probe_over` says it queued nothing, or that it will not end here (the lease
        of its user moved to another process, or it ended there)."""
        with self._lock:
            if self._probing is not None:
                return False
            self._probing = task_id
            return True

    def stands_as(self, probe: str, task_id: str) -> None:
        """The probe ``probe`` was not queued because a request of its user, ``task_id``,
        already waited: that run shows whether the key works, so the probe ends with it."""
        with self._lock:
            if self._probing == probe:
                self._probing = task_id

    def probe_over(self, task_id: str) -> None:
        """The probe ``task_id`` ended, never ran, or will not end in this process: another
        may start."""
        with self._lock:
            if self._probing == task_id:
                self._probing = None

    @property
    def owed(self) -> frozenset[str]:
        """The users still waiting for a run that shows the key works."""
        with self._lock:
            return frozenset(self._owed)

    def owe(self, users: list[str], retry: Callable[[list[str]], None]) -> None:
        """Have ``retry`` called with ``users`` (on the thread that tells a task's end) once
        a task covers messages; at once if one did since the engine last saw the key
        refused."""
        with self._lock:
            self._owed.update(dict.fromkeys(users))
            self._retry = retry
        if self._key_works.is_set():
            self._retry_owed()

    def task_scheduled(self, user_id: str, task_id: str, trigger: str, *, stored: bool) -> None:
        self._observer.task_scheduled(user_id, task_id, trigger, stored=stored)

    def task_stored(self, user_id: str, task_id: str) -> None:
        self._observer.task_stored(user_id, task_id)

    def task_running(self, user_id: str, task_id: str, message_count: int) -> None:
        self._observer.task_running(user_id, task_id, message_count)

    def task_finished(
        self,
        user_id: str,
        task_id: str,
        status: str,
        knowledge_count: int,
        error: str | None,
        covered: int | None = None,
    ) -> None:
        accepted = status == "COMPLETED" and bool(covered or knowledge_count)
        if accepted:
            self._key_works.set()
        self.probe_over(task_id)
        self._observer.task_finished(user_id, task_id, status, knowledge_count, error, covered)
        if accepted:
            self._retry_owed()

    def _retry_owed(self) -> None:
        """Hand the users owed a retry to the engine's callback, each once."""
        with self._lock:
            users, self._owed = list(self._owed), {}
            retry = self._retry
        if users and retry is not None:
            retry(users)

    def user_forgotten(self, user_id: str, erasure: object) -> None:
        with self._lock:
            self._owed.pop(user_id, None)
        self._observer.user_forgotten(user_id, erasure)
