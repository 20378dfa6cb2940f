"""ProcessTask: the caller's handle on one processing run, and its status."""

from __future__ import annotations

import asyncio
import enum

from events import MemoryClosedError
from events.errors import processing_error

__all__ = ["ProcessStatus", "ProcessTask"]


class ProcessStatus(enum.Enum):
    """Where a processing task is: scheduled, running, or ended one way or the other."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class ProcessTask:
    """Tracks one processing task of one user; updated on the event loop by the engine.

    ``wait()`` never cancels the task: cancelling or timing out the wait leaves the
    processing running.
    """

    def __init__(
        self,
        user_id: str,
        task_id: str,
        trigger: str,
        loop: asyncio.AbstractEventLoop,
        *,
        status: ProcessStatus = ProcessStatus.PENDING,
        knowledge_count: int = 0,
        error: str | None = None,
        message_count: int = 0,
    ) -> None:
        self.user_id = user_id
        self.task_id = task_id
        self.trigger = trigger
        self._status = status
        self._knowledge_count = knowledge_count
        self._error = error
        self._message_count = message_count
        self._finished: asyncio.Future[None] = loop.create_future()
        if self.done:
            self._finished.set_result(None)

    @property
    def status(self) -> ProcessStatus:
        """``PENDING``, ``RUNNING``, ``COMPLETED`` or ``FAILED``."""
        return self._status

    @property
    def knowledge_count(self) -> int:
        """Entries its batches extracted (known once it ends, FAILED too; 0 before)."""
        return self._knowledge_count

    @property
    def error(self) -> str | None:
        """Why the task failed, or ``None``."""
        return self._error

    @property
    def message_count(self) -> int:
        """How many messages the task takes on while it runs; once it ends, how many its
        batches covered (extracted or quarantined), as the log counts them."""
        return self._message_count

    @property
    def done(self) -> bool:
        """``True`` once the task is ``COMPLETED`` or ``FAILED``."""
        return self._status in (ProcessStatus.COMPLETED, ProcessStatus.FAILED)

    async def wait(self) -> int:
        """Wait for the task to end; return its knowledge count or raise ProcessingError
        (UserForgottenError when the user was forgotten meanwhile).

        Awaited in the event loop of the Memory that made the task, unless it has ended.
        """
        if not self.done:
            if asyncio.get_running_loop() is not self._finished.get_loop():
                raise MemoryClosedError("this task's Memory is open on another event loop")
            await asyncio.shield(self._finished)
        if self._status is ProcessStatus.FAILED:
            raise processing_error(self.user_id, self.task_id, self._error or "unknown error")
        return self._knowledge_count

    def __repr__(self) -> str:
        return (
            f"ProcessTask(user_id={self.user_id!r}, task_id={self.task_id!r}, "
            f"status={self._status.value}, knowledge_count={self._knowledge_count}, "
            f"error={self._error!r})"
        )

    # Called on the event loop by the engine's observer.
    def _mark_running(self, message_count: int) -> None:
        # The count only grows: the projection, read now and then, may be a batch behind.
        if not self.done:
            self._status = ProcessStatus.RUNNING
            self._message_count = max(self._message_count, message_count)

    def _mark_finished(
        self,
        status: ProcessStatus,
        knowledge_count: int,
        error: str | None,
        message_count: int | None = None,
    ) -> None:
        if self.done:
            return
        if message_count is not None:  # the messages its batches covered, as the log has it
            self._message_count = message_count
        self._status = status
        self._knowledge_count = knowledge_count
        self._error = error
        # A closed loop runs nothing that could await the future, and refuses its callbacks.
        if not self._finished.done() and not self._finished.get_loop().is_closed():
            self._finished.set_result(None)
