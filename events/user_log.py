"""The per-user log aggregate: the only place in memvee that decides.

Read it as decide/evolve. The command methods (``add_message``, ``start_processing``,
``record_knowledge``, ``record_failure``, ``close_interrupted``) check what may happen
and emit events; each event's ``apply`` says how it changes the small state. The state
holds ids and counters only, never message bodies, so snapshots stay small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

from events.errors import InvalidExtractionError, InvalidInputError, UnknownTaskError
from events.extraction import ExtractedFact

__all__ = ["LIVE_KNOWLEDGE", "ROLES", "UserLog", "user_log_id"]

ROLES: frozenset[str] = frozenset({"user", "assistant", "system"})

LIVE_KNOWLEDGE = "live"
"""The name of the knowledge version that reads return by default."""
"""The roles a message may have."""

_NAMESPACE = uuid5(NAMESPACE_URL, "https://memvee.dev/user-log")


def user_log_id(user_id: str) -> UUID:
    """The aggregate id of ``user_id``'s log: stable, so one user has exactly one log."""
    return uuid5(_NAMESPACE, user_id)


class UserLog(Aggregate):
    """One user's conversation and processing history."""

    # ----------------------------------------------------------------- events (evolve)

    class Registered(Aggregate.Created):
        """The log was opened for a user (its first event)."""

        user_id: str

    class MessageAdded(Aggregate.Event):
        """A message was appended; it is buffered until a task covers it."""

        message_id: str
        seq: int
        role: str
        content: str
        sent_at: datetime

        def apply(self, log: UserLog) -> None:
            log.message_count = self.seq
            log.pending[self.message_id] = self.originator_version

    class ProcessingRequested(Aggregate.Event):
        """A task was asked for; it waits (PENDING) until the log's owner starts it."""

        task_id: str
        trigger: str

        def apply(self, log: UserLog) -> None:
            log.requested[self.task_id] = self.trigger

    class ProcessingStarted(Aggregate.Event):
        """The oldest requested task claimed every buffered message, in order."""

        task_id: str
        message_ids: list[str]
        trigger: str

        def apply(self, log: UserLog) -> None:
            log.requested.pop(self.task_id, None)
            log.open_tasks[self.task_id] = {m: log.pending.pop(m) for m in self.message_ids}

    class KnowledgeExtracted(Aggregate.Event):
        """A task ended COMPLETED; its messages are covered by these entries for good."""

        task_id: str
        message_ids: list[str]
        entries: list[dict[str, Any]]
        extractor: str
        model: str | None
        input_tokens: int | None
        output_tokens: int | None

        def apply(self, log: UserLog) -> None:
            del log.open_tasks[self.task_id]
            log.knowledge_count += len(self.entries)

    class KnowledgeReextracted(Aggregate.Event):
        """Part of the history was extracted again into a separate knowledge version."""

        knowledge_version: str
        message_ids: list[str]
        entries: list[dict[str, Any]]
        extractor: str
        model: str | None
        input_tokens: int | None
        output_tokens: int | None

        def apply(self, log: UserLog) -> None:
            count = log.knowledge_versions.get(self.knowledge_version, 0)
            log.knowledge_versions[self.knowledge_version] = count + len(self.entries)

    class KnowledgeVersionPromoted(Aggregate.Event):
        """A re-extracted knowledge version replaced the live knowledge."""

        knowledge_version: str
        knowledge_count: int

        def apply(self, log: UserLog) -> None:
            del log.knowledge_versions[self.knowledge_version]
            log.knowledge_count = self.knowledge_count

    class ProcessingFailed(Aggregate.Event):
        """A task ended FAILED on an extractor or storage error; its messages return."""

        task_id: str
        error: str

        def apply(self, log: UserLog) -> None:
            log.return_to_buffer(self.task_id)

    class ProcessingInterrupted(Aggregate.Event):
        """A task was cut short (crash or shutdown) and closed as FAILED; messages return."""

        task_id: str
        reason: str

        def apply(self, log: UserLog) -> None:
            if log.requested.pop(self.task_id, None) is None:
                log.return_to_buffer(self.task_id)

    # ------------------------------------------------------------------ state

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.message_count = 0
        self.knowledge_count = 0
        self.pending: dict[str, int] = {}
        self.requested: dict[str, str] = {}
        self.knowledge_versions: dict[str, int] = {}
        self.open_tasks: dict[str, dict[str, int]] = {}

    @staticmethod
    def create_id(user_id: str) -> UUID:
        """One log per user: the id is derived from the user id."""
        return user_log_id(user_id)

    @classmethod
    def register(cls, user_id: str) -> UserLog:
        """Open the log of ``user_id``."""
        return cls._create(cls.Registered, id=user_log_id(user_id), user_id=user_id)

    def return_to_buffer(self, task_id: str) -> None:
        """Evolve helper: a closed task's messages go back to the buffer in log order."""
        returned = self.open_tasks.pop(task_id)
        merged = {**self.pending, **returned}
        self.pending = dict(sorted(merged.items(), key=lambda item: item[1]))

    # ----------------------------------------------------------------- commands (decide)

    def add_message(self, role: str, content: str, sent_at: datetime | None, max_chars: int) -> str:
        """Append one message after checking it; returns its new id."""
        check_message(role, content, max_chars)
        message_id = str(uuid4())
        self.trigger_event(
            self.MessageAdded,
            message_id=message_id,
            seq=self.message_count + 1,
            role=role,
            content=content,
            sent_at=sent_at or datetime.now(UTC),
        )
        return message_id

    def request_processing(self, task_id: str, trigger: str) -> bool:
        """Queue task ``task_id``; an automatic one is dropped when a request already waits.

        Only ``manual`` requests always queue (the caller waits for that very task).
        """
        if task_id in self.requested or task_id in self.open_tasks:
            raise InvalidInputError(f"task {task_id} is already known")
        if trigger != "manual" and self.requested:
            return False
        self.trigger_event(self.ProcessingRequested, task_id=task_id, trigger=trigger)
        return True

    def start_next(self) -> tuple[str, str, list[str]] | None:
        """Start the oldest requested task, claiming every buffered message.

        One task runs at a time. A task that finds nothing buffered completes at once
        with no entries. Returns the task and the messages it claimed, or ``None``.
        """
        if self.open_tasks or not self.requested:
            return None
        task_id, trigger = next(iter(self.requested.items()))
        message_ids = list(self.pending)
        self.trigger_event(
            self.ProcessingStarted, task_id=task_id, message_ids=message_ids, trigger=trigger
        )
        if not message_ids:
            self.record_knowledge(task_id, [], extractor="none")
        return task_id, trigger, message_ids

    def record_knowledge(
        self,
        task_id: str,
        facts: Sequence[ExtractedFact],
        extractor: str,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Close ``task_id`` as COMPLETED with ``facts``; each must cite messages of its batch."""
        batch = self._open_task(task_id)
        entries = _entries(facts, frozenset(batch), f"task {task_id}")
        self.trigger_event(
            self.KnowledgeExtracted,
            task_id=task_id,
            message_ids=list(batch),
            entries=entries,
            extractor=extractor,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        return entries

    def record_reextraction(
        self,
        knowledge_version: str,
        message_ids: Sequence[str],
        facts: Sequence[ExtractedFact],
        extractor: str,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Add re-extracted ``facts`` of the messages ``message_ids`` to a knowledge version."""
        if not knowledge_version.strip() or knowledge_version == LIVE_KNOWLEDGE:
            raise InvalidInputError(f"{knowledge_version!r} cannot name a new knowledge version")
        entries = _entries(facts, frozenset(message_ids), f"version {knowledge_version}")
        self.trigger_event(
            self.KnowledgeReextracted,
            knowledge_version=knowledge_version,
            message_ids=list(message_ids),
            entries=entries,
            extractor=extractor,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        return entries

    def promote(self, knowledge_version: str) -> None:
        """Make a re-extracted knowledge version the live knowledge."""
        if knowledge_version not in self.knowledge_versions:
            raise InvalidInputError(
                f"user {self.user_id!r} has no unpromoted knowledge version {knowledge_version!r}"
            )
        self.trigger_event(
            self.KnowledgeVersionPromoted,
            knowledge_version=knowledge_version,
            knowledge_count=self.knowledge_versions[knowledge_version],
        )

    def record_failure(self, task_id: str, error: str) -> None:
        """Close ``task_id`` as FAILED; its messages return to the buffer for the next run."""
        self._open_task(task_id)
        self.trigger_event(self.ProcessingFailed, task_id=task_id, error=error or "unknown error")

    def close_interrupted(self, reason: str, task_ids: Iterable[str] | None = None) -> list[str]:
        """Close tasks (by default every running one) as FAILED with ``reason``.

        ``task_ids`` may also name requested tasks that never started.
        """
        closing = list(self.open_tasks) if task_ids is None else list(task_ids)
        for task_id in closing:
            if task_id not in self.requested:
                self._open_task(task_id)
            self.trigger_event(self.ProcessingInterrupted, task_id=task_id, reason=reason)
        return closing

    def _open_task(self, task_id: str) -> dict[str, int]:
        try:
            return self.open_tasks[task_id]
        except KeyError:
            raise UnknownTaskError(
                f"user {self.user_id!r} has no running task {task_id!r}"
            ) from None


def _entries(
    facts: Sequence[ExtractedFact], allowed: frozenset[str], what: str
) -> list[dict[str, Any]]:
    """Knowledge entries for ``facts``, each with a new id; every fact must cite ``allowed``."""
    entries = [
        {
            "entry_id": str(uuid4()),
            "text": fact.text.strip(),
            "source_message_ids": list(dict.fromkeys(fact.source_message_ids)),
        }
        for fact in facts
    ]
    for entry in entries:
        if not entry["text"]:
            raise InvalidExtractionError(f"{what}: a fact has empty text")
        cited = entry["source_message_ids"]
        if not cited:
            raise InvalidExtractionError(f"{what}: fact {entry['text']!r} cites no message")
        unknown = [m for m in cited if m not in allowed]
        if unknown:
            raise InvalidExtractionError(
                f"{what}: fact {entry['text']!r} cites messages outside its batch: "
                f"{', '.join(unknown)}"
            )
    return entries


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it names a user, else raise :class:`InvalidInputError`."""
    if not isinstance(user_id, str):
        raise InvalidInputError(f"user_id must be a str, not {type(user_id).__name__}")
    if not user_id.strip():
        raise InvalidInputError("user_id must not be empty")
    if len(user_id) > 256:
        raise InvalidInputError(f"user_id is {len(user_id)} characters long; the limit is 256")
    return user_id


def check_message(role: object, content: object, max_chars: int) -> None:
    """Raise :class:`InvalidInputError` unless ``role`` and ``content`` make a valid message."""
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
    if not isinstance(content, str):
        raise InvalidInputError(f"content must be a str, not {type(content).__name__}")
    if not content.strip():
        raise InvalidInputError(f"{role} message content must not be empty")
    if len(content) > max_chars:
        raise InvalidInputError(
            f"{role} message content is {len(content)} characters long; the limit is {max_chars}"
        )
