"""The per-user log aggregate: the only place in memvee that decides.

Read it as decide/evolve. The command methods (``add_message``, ``request_processing``,
``start_next``, ``record_knowledge``, ``record_reextraction``, ``promote``,
``record_failure``, ``close_interrupted``) check what may happen and emit events; each
event's ``apply`` says how it changes the small state. The state holds ids and counters
only, never message bodies, so snapshots stay small. ``record_knowledge`` also decides
the knowledge lifecycle: which entries a batch adds, and which known entries it
supersedes or invalidates (the extractor only advises).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

from events.errors import InvalidExtractionError, InvalidInputError, UnknownTaskError
from events.extraction import FACT_ACTIONS, ExtractedFact

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
            for entry in self.entries:
                log.valid_entries[entry["entry_id"]] = LIVE_KNOWLEDGE

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
            for entry in self.entries:
                log.valid_entries[entry["entry_id"]] = self.knowledge_version

    class KnowledgeSuperseded(Aggregate.Event):
        """A newer entry replaced a known one; the old entry stopped being valid then."""

        entry_id: str
        knowledge_version: str
        superseded_by: str
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.end_entry(self.entry_id)

    class KnowledgeInvalidated(Aggregate.Event):
        """A known entry stopped being true, with nothing to replace it ("I quit")."""

        entry_id: str
        knowledge_version: str
        reason: str
        source_message_ids: list[str]
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.end_entry(self.entry_id)

    class KnowledgeVersionPromoted(Aggregate.Event):
        """A re-extracted knowledge version replaced the live knowledge."""

        knowledge_version: str
        knowledge_count: int

        def apply(self, log: UserLog) -> None:
            del log.knowledge_versions[self.knowledge_version]
            log.knowledge_count = self.knowledge_count
            log.valid_entries = {
                entry_id: LIVE_KNOWLEDGE if version == self.knowledge_version else version
                for entry_id, version in log.valid_entries.items()
                if version != LIVE_KNOWLEDGE
            }

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
        self.valid_entries: dict[str, str] = {}

    def upgrade(self) -> None:
        """Fill state that snapshots taken by an older memvee lack.

        Entries valid before the knowledge lifecycle are then unknown to the log, so an
        update naming one is recorded as a new entry: nothing is lost, only not linked.
        """
        if not hasattr(self, "valid_entries"):
            self.valid_entries = {}

    @staticmethod
    def create_id(user_id: str) -> UUID:
        """One log per user: the id is derived from the user id."""
        return user_log_id(user_id)

    @classmethod
    def register(cls, user_id: str) -> UserLog:
        """Open the log of ``user_id``."""
        return cls._create(cls.Registered, id=user_log_id(user_id), user_id=user_id)

    def end_entry(self, entry_id: str) -> None:
        """Evolve helper: an entry stopped being valid; its version counts one fewer."""
        version = self.valid_entries.pop(entry_id)
        if version == LIVE_KNOWLEDGE:
            self.knowledge_count -= 1
        else:
            self.knowledge_versions[version] -= 1

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
            sent_at=datetime.now(UTC) if sent_at is None else sent_at.astimezone(UTC),
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
        said_at: Mapping[str, datetime] | None = None,
    ) -> list[dict[str, Any]]:
        """Close ``task_id`` as COMPLETED with ``facts``; each must cite messages of its batch.

        ``said_at`` gives the batch's message times: an entry is valid from the time its
        newest source message was sent, and an entry it updates stops being valid then.
        """
        batch = self._open_task(task_id)
        return self._record_facts(
            self.KnowledgeExtracted,
            LIVE_KNOWLEDGE,
            facts,
            f"task {task_id}",
            said_at or {},
            task_id=task_id,
            message_ids=list(batch),
            extractor=extractor,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def record_reextraction(
        self,
        knowledge_version: str,
        message_ids: Sequence[str],
        facts: Sequence[ExtractedFact],
        extractor: str,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        said_at: Mapping[str, datetime] | None = None,
    ) -> list[dict[str, Any]]:
        """Add re-extracted ``facts`` of the messages ``message_ids`` to a knowledge version.

        Updates and invalidations apply to that version's own entries, never the live ones.
        """
        if not knowledge_version.strip() or knowledge_version == LIVE_KNOWLEDGE:
            raise InvalidInputError(f"{knowledge_version!r} cannot name a new knowledge version")
        return self._record_facts(
            self.KnowledgeReextracted,
            knowledge_version,
            facts,
            f"version {knowledge_version}",
            said_at or {},
            knowledge_version=knowledge_version,
            message_ids=list(message_ids),
            extractor=extractor,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def _record_facts(
        self,
        event: type[Aggregate.Event],
        version: str,
        facts: Sequence[ExtractedFact],
        what: str,
        said_at: Mapping[str, datetime],
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """Check ``facts`` against the batch, decide their lifecycle in ``version``, and emit
        ``event`` with the new entries, then the ends of the entries they replaced."""
        _check_facts(facts, frozenset(fields["message_ids"]), what)
        plan = self._plan(facts, version)
        entries = _entries(plan.added, said_at)
        self.trigger_event(event, entries=entries, **fields)
        self._end_replaced(plan, entries, version, said_at)
        return entries

    def _plan(self, facts: Sequence[ExtractedFact], version: str) -> _Plan:
        """Decide what each fact does to ``version``'s valid entries.

        An extractor's answer is advice: a target that is not a valid entry of the version
        (or was already ended by an earlier fact) turns an update into a plain new entry
        and drops a repeat or an invalidation, so a confused extractor cannot lose facts.
        """
        valid = {e for e, v in self.valid_entries.items() if v == version}
        plan = _Plan()
        for fact in facts:
            if fact.action not in FACT_ACTIONS:
                raise InvalidExtractionError(f"fact {fact.text!r}: unknown action {fact.action!r}")
            target = fact.target_entry_id if fact.target_entry_id in valid else None
            if fact.action == "new" or (fact.action == "update" and target is None):
                plan.added.append(fact)
                plan.replaces.append(None)
            elif fact.action == "update" and target is not None:
                valid.discard(target)
                plan.added.append(fact)
                plan.replaces.append(target)
            elif fact.action == "invalidate" and target is not None:
                valid.discard(target)
                plan.invalidated.append((target, fact))
        return plan

    def _end_replaced(
        self,
        plan: _Plan,
        entries: list[dict[str, Any]],
        version: str,
        said_at: Mapping[str, datetime],
    ) -> None:
        """Emit the ends of the entries that the new ones replaced or the batch invalidated."""
        for replaced, entry in zip(plan.replaces, entries, strict=True):
            if replaced is not None:
                self.trigger_event(
                    self.KnowledgeSuperseded,
                    entry_id=replaced,
                    knowledge_version=version,
                    superseded_by=entry["entry_id"],
                    valid_until=datetime.fromisoformat(entry["valid_from"]),
                )
        for target, fact in plan.invalidated:
            sources = list(dict.fromkeys(fact.source_message_ids))
            self.trigger_event(
                self.KnowledgeInvalidated,
                entry_id=target,
                knowledge_version=version,
                reason=fact.text.strip(),
                source_message_ids=sources,
                valid_until=_said(sources, said_at),
            )

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


@dataclass
class _Plan:
    """What a batch's facts do: entries to add (each maybe replacing one) and entries to end."""

    added: list[ExtractedFact] = field(default_factory=list)
    replaces: list[str | None] = field(default_factory=list)
    invalidated: list[tuple[str, ExtractedFact]] = field(default_factory=list)


def _said(sources: Sequence[str], said_at: Mapping[str, datetime]) -> datetime:
    """When the newest of ``sources`` was sent (now, if the times are not known)."""
    times = [said_at[m] for m in sources if m in said_at]
    return max(times) if times else datetime.now(UTC)


def _entries(
    facts: Sequence[ExtractedFact], said_at: Mapping[str, datetime]
) -> list[dict[str, Any]]:
    """Knowledge entries for ``facts``, each with a new id and the time it became valid."""
    entries = []
    for fact in facts:
        sources = list(dict.fromkeys(fact.source_message_ids))
        entries.append(
            {
                "entry_id": str(uuid4()),
                "text": fact.text.strip(),
                "source_message_ids": sources,
                "valid_from": _said(sources, said_at).isoformat(),
            }
        )
    return entries


def _check_facts(facts: Sequence[ExtractedFact], allowed: frozenset[str], what: str) -> None:
    """Every fact must have text and cite at least one message, all of them in ``allowed``."""
    for fact in facts:
        text = fact.text.strip()
        if not text:
            raise InvalidExtractionError(f"{what}: a fact has empty text")
        if not fact.source_message_ids:
            raise InvalidExtractionError(f"{what}: fact {text!r} cites no message")
        unknown = [m for m in dict.fromkeys(fact.source_message_ids) if m not in allowed]
        if unknown:
            raise InvalidExtractionError(
                f"{what}: fact {text!r} cites messages outside its batch: {', '.join(unknown)}"
            )


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
