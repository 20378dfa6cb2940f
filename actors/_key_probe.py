"""The probe of a refused key: an open retries one user whose last run was refused (the
API key refused, every request refused) before the others, so a key still bad costs one
run an open, and a key fixed since leaves no user's messages waiting for the threshold.

:class:`KeyProbe` stands between the engine's actors and the Memory's observer: it tells
the observer everything as it is, and hears the end of the probe's task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from actors._context import TaskObserver


class KeyProbe:
    """A :class:`TaskObserver` that forwards every move to ``observer`` and sets
    ``key_works`` once a task covers messages (the API accepted the key), calling the
    callback :meth:`watch` was given for that task if it is the probe."""

    def __init__(self, observer: TaskObserver, key_works: threading.Event) -> None:
        self._observer = observer
        self._key_works = key_works
        self._lock = threading.Lock()
        self._watched: dict[str, Callable[[], None]] = {}

    def watch(self, task_id: str, on_accepted: Callable[[], None]) -> None:
        """Call ``on_accepted`` (on the thread that tells the end) if task ``task_id``
        completes covering messages; a task that fails is forgotten."""
        with self._lock:
            self._watched[task_id] = on_accepted

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
        with self._lock:
            on_accepted = self._watched.pop(task_id, None)
        self._observer.task_finished(user_id, task_id, status, knowledge_count, error, covered)
        if on_accepted is not None and accepted:
            on_accepted()

    def user_forgotten(self, user_id: str, erasure: object) -> None:
        self._observer.user_forgotten(user_id, erasure)
