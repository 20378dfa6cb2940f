"""The user actor: the single writer of one user's log, and a thin shell around it.

It owns the user's :class:`UserLog` aggregate in memory, asks it to decide and hands the
events to the group committer; the caller is answered once they are durable. Then it
talks to the world: it starts extraction on the worker pool (never on this thread),
records the outcome, and tells the observer how each task moves.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any
from uuid import uuid4

import pykka

from actors._bridge import BridgedFuture
from actors._context import SharedServices
from actors._workers import Outcome
from events import (
    BatchMessage,
    ExtractionBatch,
    ExtractionResult,
    MemveeError,
    UserLog,
)
from projections import Message

__all__ = ["INTERRUPTED_BY_CRASH", "UserActor"]

log = logging.getLogger("memvee.actors")

INTERRUPTED_BY_CRASH = "interrupted: the process stopped before the task finished"

_WRITE_EPOCHS = itertools.count(1)
"""Every (re)load of a log in this process gets a fresh, higher write epoch."""

Retire = Callable[[str, "pykka.ActorRef[Any]"], bool]


class UserActor(pykka.ThreadingActor):
    """One user's actor; its public methods are called through a pykka proxy."""

    def __init__(self, user_id: str, services: SharedServices, retire: Retire) -> None:
        super().__init__()
        self.user_id = user_id
        self._services = services
        self._retire = retire
        self._log: UserLog | None = None
        self._loaded = False
        self._snapshot_version = 0
        self._queued: deque[tuple[str, str]] = deque()
        self._running: str | None = None
        self._self_proxy: Any = None
        self._epoch = 0
        self._last_write: Future[Any] | None = None

    @staticmethod
    def _create_future() -> BridgedFuture[Any]:
        return BridgedFuture()

    @property
    def _myself(self) -> Any:
        """A proxy to this actor, for messages to itself (made on first use: it is costly)."""
        if self._self_proxy is None:
            self._self_proxy = self.actor_ref.proxy()
        return self._self_proxy

    # ------------------------------------------------------------------ commands

    def add_messages(
        self, messages: Sequence[tuple[str, str, datetime | None]]
    ) -> Future[list[Message]]:
        """Append ``(role, content, sent_at)`` messages.

        Returns a future that resolves with the stored messages once they are committed;
        the actor does not wait for the commit, so the next command can be decided while
        this one is being written (the committer keeps the order).
        """
        user_log = self._user_log(create=True)
        assert user_log is not None
        settings = self._services.settings
        try:
            for role, content, sent_at in messages:
                user_log.add_message(role, content, sent_at, settings.max_content_chars)
        except BaseException:
            self._forget_log()
            raise
        events = user_log.collect_events()
        stored = [
            Message(e.message_id, self.user_id, e.seq, e.role, e.content, e.sent_at)
            for e in events
            if isinstance(e, UserLog.MessageAdded)
        ]
        committed = self._services.committer.submit(events, self._epoch)
        acknowledged: Future[list[Message]] = Future()
        epoch, ref = self._epoch, self.actor_ref

        def _settle(done: Future[Any]) -> None:
            error = done.exception()
            if error is None:
                acknowledged.set_result(stored)
                return
            acknowledged.set_exception(error)
            with contextlib.suppress(pykka.ActorDeadError):
                ref.proxy().write_failed(epoch)

        committed.add_done_callback(_settle)
        self._last_write = committed
        self._maybe_snapshot()
        if (
            settings.auto_process
            and not self._queued
            and len(user_log.pending) >= settings.batch_threshold
        ):
            self._schedule_own("auto")
        return acknowledged

    def write_failed(self, epoch: int) -> None:
        """A pipelined write of ``epoch`` failed: reload the log before the next command."""
        if epoch == self._epoch:
            log.warning("user %r: a write failed; reloading the log from the store", self.user_id)
            self._forget_log()

    def schedule(self, task_id: str, trigger: str) -> None:
        """Queue task ``task_id``; it starts once no other task of this user runs."""
        self._queued.append((task_id, trigger))
        self._advance()

    def start_queued(self) -> None:
        """Start the next queued task if none is running."""
        self._advance()

    def recover(self, auto_threshold: int | None) -> list[str]:
        """Close tasks a crash left open as FAILED; returns their ids.

        With ``auto_threshold``, schedule processing if enough messages wait.
        """
        user_log = self._user_log(create=False)
        if user_log is None:
            return []
        closed = [t for t in user_log.open_tasks if t != self._running]
        if closed:
            user_log.close_interrupted(INTERRUPTED_BY_CRASH, closed)
            self._commit()
            for task_id in closed:
                log.warning("user %r: task %s %s", self.user_id, task_id, INTERRUPTED_BY_CRASH)
                self._services.observer.task_finished(
                    self.user_id, task_id, "FAILED", 0, INTERRUPTED_BY_CRASH
                )
        if (
            auto_threshold is not None
            and not self._queued
            and self._running is None
            and len(user_log.pending) >= auto_threshold
        ):
            self._schedule_own("recovery")
        return closed

    def shutdown(self, reason: str) -> None:
        """End queued and running tasks as FAILED with ``reason``; their messages stay."""
        observer = self._services.observer
        while self._queued:
            task_id, _ = self._queued.popleft()
            observer.task_finished(self.user_id, task_id, "FAILED", 0, reason)
        running, self._running = self._running, None
        if running is None:
            return
        try:
            user_log = self._user_log(create=False)
            if user_log is not None and running in user_log.open_tasks:
                user_log.close_interrupted(reason, [running])
                self._commit()
        finally:
            observer.task_finished(self.user_id, running, "FAILED", 0, reason)

    def extraction_done(self, task_id: str, outcome: Outcome) -> None:
        """Record the outcome of the running task and start the next queued one."""
        if task_id != self._running:
            log.warning(
                "user %r: outcome of task %s arrived after it closed", self.user_id, task_id
            )
            return
        observer = self._services.observer
        user_log = self._user_log(create=False)
        assert user_log is not None
        status, count, error = "COMPLETED", 0, None
        try:
            if isinstance(outcome, ExtractionResult):
                try:
                    entries = user_log.record_knowledge(
                        task_id,
                        outcome.facts,
                        outcome.extractor,
                        outcome.model,
                        outcome.input_tokens,
                        outcome.output_tokens,
                    )
                    count = len(entries)
                except MemveeError as invalid:
                    outcome = invalid  # refused before any event: the log is unchanged
            if not isinstance(outcome, ExtractionResult):
                status, error = "FAILED", _describe(outcome)
                log.warning("user %r: task %s failed: %s", self.user_id, task_id, error)
                user_log.record_failure(task_id, error)
            self._commit()
        except Exception as storage:
            status, count, error = "FAILED", 0, f"could not record the outcome: {storage}"
            log.error("user %r: task %s: %s", self.user_id, task_id, error)
            self._forget_log()
            self._close_after_storage_error(task_id, error)
        self._running = None
        observer.task_finished(self.user_id, task_id, status, count, error)
        self._advance()

    def passivate(self) -> bool:
        """Stop this actor if it is idle and nobody has a message on its way to it."""
        if self._running is not None or self._queued:
            return False
        if not self._retire(self.user_id, self.actor_ref):
            return False
        self.stop()
        return True

    # ------------------------------------------------------------------ internals

    def _close_after_storage_error(self, task_id: str, error: str) -> None:
        """Try once more, on a fresh load, to return the task's messages to the buffer.

        If that fails too, the task stays open in the log and the next open closes it.
        """
        try:
            user_log = self._user_log(create=False)
            if user_log is not None and task_id in user_log.open_tasks:
                user_log.record_failure(task_id, error)
                self._commit()
        except Exception:
            log.exception("user %r: task %s stays open until recovery", self.user_id, task_id)

    def _schedule_own(self, trigger: str) -> None:
        """Queue a task of the engine's own; it starts from the inbox, after this command."""
        task_id = str(uuid4())
        self._services.observer.task_scheduled(self.user_id, task_id, trigger)
        self._queued.append((task_id, trigger))
        self._myself.start_queued()

    def _advance(self) -> None:
        observer = self._services.observer
        while self._running is None and self._queued:
            task_id, trigger = self._queued.popleft()
            user_log = self._user_log(create=False)
            try:
                claimed = None if user_log is None else user_log.start_processing(task_id, trigger)
                if claimed is not None:
                    recorded = self._commit()
            except Exception as error:
                self._forget_log()
                log.error("user %r: task %s could not start: %s", self.user_id, task_id, error)
                observer.task_finished(self.user_id, task_id, "FAILED", 0, _describe(error))
                continue
            if claimed is None:
                observer.task_finished(self.user_id, task_id, "COMPLETED", 0, None)
                continue
            self._running = task_id
            observer.task_running(self.user_id, task_id, len(claimed))
            try:
                batch = self._batch(task_id, claimed, recorded[-1].event.originator_version)
            except Exception as error:
                self.extraction_done(task_id, error)
                return
            self._services.workers.submit(batch, self._deliver_to_self(task_id))

    def _deliver_to_self(self, task_id: str) -> Callable[[Outcome], None]:
        myself = self._myself

        def _deliver(outcome: Outcome) -> None:
            try:
                myself.extraction_done(task_id, outcome)
            except pykka.ActorDeadError:
                log.info("task %s ended after its actor stopped (shutdown)", task_id)

        return _deliver

    def _batch(self, task_id: str, claimed: list[str], started_version: int) -> ExtractionBatch:
        """Read the claimed messages back from the log (the state keeps no bodies)."""
        assert self._log is not None
        versions = self._log.open_tasks[task_id]
        first = min(versions[m] for m in claimed)
        wanted = set(claimed)
        events = self._services.store.events_of(self.user_id, after=first - 1, upto=started_version)
        messages = tuple(
            BatchMessage(e.message_id, e.role, e.content, e.sent_at)
            for e in events
            if isinstance(e, UserLog.MessageAdded) and e.message_id in wanted
        )
        return ExtractionBatch(self.user_id, task_id, messages)

    def _user_log(self, *, create: bool) -> UserLog | None:
        if not self._loaded:
            self._log = self._services.store.load(self.user_id)
            self._loaded = True
            self._epoch = next(_WRITE_EPOCHS)
            self._last_write = None
            self._snapshot_version = 0 if self._log is None else self._log.version
        if self._log is None and create:
            self._log = UserLog.register(self.user_id)
        return self._log

    def _forget_log(self) -> None:
        """Drop the in-memory log so the next command reloads it from the store.

        A failed save leaves the aggregate ahead of the store; saving it later would
        store a version gap and make the log unloadable.
        """
        self._log = None
        self._loaded = False

    def _commit(self) -> list[Any]:
        """Write the pending events and wait until they are committed."""
        assert self._log is not None
        events = self._log.collect_events()
        if not events:
            return []
        try:
            recorded = self._services.committer.commit(events, self._epoch)
        except BaseException:
            self._forget_log()
            raise
        self._maybe_snapshot()
        return recorded

    def _maybe_snapshot(self) -> None:
        """Snapshot the log every ``snapshot_interval`` events, once they are committed."""
        interval = self._services.settings.snapshot_interval
        user_log = self._log
        if not interval or user_log is None or user_log.version - self._snapshot_version < interval:
            return
        if self._last_write is not None:
            try:
                self._last_write.result()
            except Exception:
                return
        self._services.store.take_snapshot(user_log)
        self._snapshot_version = user_log.version


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, MemveeError) else f"{type(error).__name__}: {text}"
