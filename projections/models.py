"""The read models a caller gets back from the projections (re-exported by memvee)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "BufferedMessage",
    "KnowledgeEntry",
    "Message",
    "QuarantinedMessage",
    "TaskRecord",
    "UserSummary",
]


@dataclass(frozen=True, slots=True)
class KnowledgeEntry:
    """One piece of knowledge about a user, traceable to the messages it came from.

    It is valid from ``valid_from`` (when its newest source message was sent) until
    ``valid_until``, which is set once a later entry (``superseded_by``) replaced it or
    the user said it stopped being true (``ended_reason``).
    """

    entry_id: str
    user_id: str
    text: str
    task_id: str
    source_message_ids: tuple[str, ...]
    extracted_at: datetime
    extractor: str
    model: str | None
    valid_from: datetime
    valid_until: datetime | None = None
    superseded_by: str | None = None
    ended_reason: str | None = None

    @property
    def is_current(self) -> bool:
        """Whether the entry is still valid (nothing superseded or invalidated it)."""
        return self.valid_until is None


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    """A message not yet covered by knowledge; ``task_id`` is set while a task holds it."""

    message_id: str
    user_id: str
    seq: int
    role: str
    content: str
    sent_at: datetime
    task_id: str | None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """A message that kept failing extraction, set aside so it blocks nothing after it.

    ``error`` is the last failure, ``attempts`` how often it failed alone; ``task_id``
    names the task that quarantined it; ``name`` is who said it, when known.
    :meth:`memvee.Memory.requeue` puts it back.
    """

    message_id: str
    user_id: str
    seq: int
    role: str
    content: str
    sent_at: datetime
    error: str
    attempts: int
    quarantined_at: datetime
    task_id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A processing task as the log tells it (PENDING, RUNNING, COMPLETED or FAILED).

    ``message_count`` counts the messages its batches covered or quarantined so far, and
    ``batches`` the batches it started.
    """

    task_id: str
    user_id: str
    trigger: str
    status: str
    message_count: int
    knowledge_count: int
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    batches: int = 0


@dataclass(frozen=True, slots=True)
class UserSummary:
    """Counters of one user's log."""

    user_id: str
    version: int
    message_count: int
    buffered_count: int
    knowledge_count: int
    tasks_completed: int
    tasks_failed: int
    updated_at: datetime
    quarantined_count: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """A message as it was committed to the user's log; ``name`` is its speaker's, if given."""

    message_id: str
    user_id: str
    seq: int
    role: str
    content: str
    sent_at: datetime
    name: str | None = None
