"""The per-user log aggregate: the only place in memvee that decides.

Read it as decide/evolve. The command methods (``add_message``, ``request_processing``,
``start_next``, ``record_knowledge``, ``record_failure``, ``requeue``,
``record_reextraction``, ``promote``, ``close_interrupted``) check what may happen and
emit events; each event's ``apply`` says how it changes the small state. The state holds
ids, counters and small hints, never message bodies, so snapshots stay small.

``record_knowledge`` also decides the knowledge lifecycle: which entries a batch adds, and
which known entries it supersedes or invalidates (the extractor only advises, and what
it gets slightly wrong is repaired here and recorded). Processing is decided here too: a
task covers what was buffered when it started, in bounded batches; a batch that fails in
a way that would repeat is split, and a message that keeps failing alone is quarantined,
so that no message can block the ones after it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate
from uuid_utils import uuid7

from events.checks import (
    MAX_EXTRACTOR_CHARS,
    MAX_FACT_CHARS,
    MAX_MODEL_CHARS,
    MAX_TOKENS,
    check_message,
    check_name,
    check_text,
    check_time,
    check_unmistakable,
    shows_something,
    storable,
)
from events.errors import (
    AlreadyReextractedError,
    ConflictError,
    InvalidExtractionError,
    InvalidInputError,
    UnknownTaskError,
)
from events.extraction import (
    FACT_ACTIONS,
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    FactAction,
    KnownEntry,
    TokenUsage,
    estimate_tokens,
)
from events.timeline import Around, ReplacedEntry, Timeline

__all__ = [
    "DEFAULT_LIMITS",
    "EVENT_CLASSES",
    "LIVE_KNOWLEDGE",
    "MAX_VERSION_CHARS",
    "UserLog",
    "check_knowledge_version",
    "check_new_knowledge_version",
    "continues_decision",
    "new_message_id",
    "short_message_id",
    "user_log_id",
]


LIVE_KNOWLEDGE = "live"
"""The name of the knowledge version that reads return by default."""

MAX_VERSION_CHARS = 64
"""The longest name a knowledge version may have (its column's width)."""


UNKNOWN_END = datetime.max.replace(tzinfo=UTC)
"""The latest end of a log whose snapshot predates :attr:`UserLog.latest_end`: any batch
may be backdated."""


def check_knowledge_version(name: object) -> str:
    """Return ``name`` if it can name a re-extracted knowledge version the log holds, else
    raise :class:`InvalidInputError`: a storable string, not blank, not ``live``, and at
    most :data:`MAX_VERSION_CHARS` characters. Looser than
    :func:`check_new_knowledge_version`, so that a version an older memvee let in stays
    readable and can be completed by its stored name."""
    if not isinstance(name, str):
        raise InvalidInputError(f"a knowledge version is named by a str, not {type(name).__name__}")
    check_text(name, "the knowledge version")
    if not name.strip() or name == LIVE_KNOWLEDGE:
        raise InvalidInputError(f"{name!r} cannot name a new knowledge version")
    if len(name) > MAX_VERSION_CHARS:
        raise InvalidInputError(
            f"a knowledge version's name is at most {MAX_VERSION_CHARS} characters, not {len(name)}"
        )
    return name


def check_new_knowledge_version(name: object) -> str:
    """Return ``name`` if it can name a new knowledge version, else raise
    :class:`InvalidInputError`: over :func:`check_knowledge_version`, the rules of a new
    user id (no spaces around it, no control character nor one that shows nothing, NFC),
    so that no version reads as ``live`` or as another, nor sends escapes to a terminal."""
    name = check_knowledge_version(name)
    check_unmistakable(name, "the knowledge version")
    return name


_NAMESPACE = uuid5(NAMESPACE_URL, "https://memvee.dev/user-log")
_NO_USAGE = TokenUsage()
DEFAULT_LIMITS = BatchLimits()
"""The batch limits used when a command is given none."""


def new_message_id() -> str:
    """A new message id: a UUID version 7, ordered by time, so that the messages of one
    commit sit side by side in every index keyed by message id (random ids put each new
    message on a page of its own, in each such index). Its first digits are the time, so
    a short form of it is its last digits (:func:`short_message_id`)."""
    return str(uuid7())


def short_message_id(message_id: str) -> str:
    """Eight digits that tell messages apart: the random end of the id (its start is the
    time it was written, shared by every message of the same moment)."""
    return message_id[-8:]


@lru_cache(maxsize=4096)
def user_log_id(user_id: str) -> UUID:
    """The aggregate id of ``user_id``'s log: stable, so one user has exactly one log.

    Remembered for the users seen lately: a SHA-1 each time cost an import of 100,000
    events about 2 s.
    """
    return uuid5(_NAMESPACE, user_id)


class UserLog(Aggregate):
    """One user's conversation and processing history.

    The state: counters; ``pending`` (buffered messages with their log versions, in log
    order), ``requested`` tasks, ``open_tasks`` (each running task's current batch) and
    ``running`` (each running task's scope, trigger and batches so far); ``weights``
    (estimated prompt tokens of messages not yet covered, as the memvee that applied their
    events estimated them: a snapshot keeps an older estimate, which only sizes batches
    still to cut, since a started batch records its messages), ``caps`` (the most messages a
    batch holding a message may have, after splits) and ``parked`` (messages that failed
    alone, with the failures counted against them); ``quarantined`` messages; the
    ``valid_entries`` of each knowledge version; and the ``reextraction_requests`` recorded
    (each Message Batches request id with its knowledge version).
    """

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
        name: str | None = None

        def apply(self, log: UserLog) -> None:
            log.message_count = self.seq
            log.pending[self.message_id] = self.originator_version
            log.weights[self.message_id] = estimate_tokens(self.content)

    class ProcessingRequested(Aggregate.Event):
        """A task was asked for; it waits (PENDING) until the log's owner starts it."""

        task_id: str
        trigger: str

        def apply(self, log: UserLog) -> None:
            log.requested[self.task_id] = self.trigger

    class ProcessingStarted(Aggregate.Event):
        """A batch of a task claimed these buffered messages, in order.

        The first batch (``batch`` 1) starts the task, which then covers what was buffered
        at that point: each later batch claims the next part of it.
        """

        task_id: str
        message_ids: list[str]
        trigger: str
        batch: int = 1

        def apply(self, log: UserLog) -> None:
            log.requested.pop(self.task_id, None)
            log.running.setdefault(
                self.task_id, {"scope": self.originator_version, "trigger": self.trigger}
            )["batches"] = self.batch
            log.open_tasks[self.task_id] = {m: log.pending.pop(m) for m in self.message_ids}

    class KnowledgeExtracted(Aggregate.Event):
        """A batch was extracted; its messages are covered by these entries for good.

        ``final`` says that it was the task's last batch: the task ended COMPLETED.
        ``repairs`` lists what the engine fixed in the extractor's answer beyond the
        entries (each entry lists its own). ``followed_by`` counts the events its decision
        wrote after it (see :func:`continues_decision`), so that a log cut before them is
        known to be cut; ``None`` in a log an older memvee wrote. ``repeated`` maps each
        known entry the batch said again while it held to the messages that said it: they
        are outdated with it, not sources of it; ``None`` when there were none, and in a
        log an older memvee wrote.
        """

        task_id: str
        message_ids: list[str]
        entries: list[dict[str, Any]]
        extractor: str
        model: str | None
        input_tokens: int | None
        output_tokens: int | None
        final: bool = True
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None
        repairs: list[str] | None = None
        followed_by: int | None = None
        repeated: dict[str, list[str]] | None = None

        def apply(self, log: UserLog) -> None:
            log.settle(log.open_tasks.pop(self.task_id))
            log.knowledge_count += len(self.entries)
            for entry in self.entries:
                log.valid_entries[entry["entry_id"]] = LIVE_KNOWLEDGE
            if self.final:
                log.running.pop(self.task_id, None)
            if self.final and not self.message_ids:  # a task that found nothing to do
                log.quiet_task, log.quiet_at = self.task_id, self.originator_version

    class BatchFailed(Aggregate.Event):
        """A batch failed in a way that would repeat (an unreadable or truncated answer, a
        refusal, a prompt too long); its messages return and the task goes on, splitting it.
        """

        task_id: str
        error: str
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None

        def apply(self, log: UserLog) -> None:
            log.note_failure(log.return_to_buffer(self.task_id), counted=True)

    class MessagesQuarantined(Aggregate.Event):
        """Messages that kept failing alone left the buffer for quarantine, with the last
        error; they stay there, visible, until requeued. ``final`` is as for extractions."""

        task_id: str
        message_ids: list[str]
        error: str
        attempts: int
        final: bool
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None

        def apply(self, log: UserLog) -> None:
            batch = log.open_tasks.pop(self.task_id)
            for message_id in self.message_ids:
                log.quarantined[message_id] = batch[message_id]
                log.caps.pop(message_id, None)
                log.parked.pop(message_id, None)
            if self.final:
                log.running.pop(self.task_id, None)

    class MessagesRequeued(Aggregate.Event):
        """Quarantined messages went back to the buffer, to be extracted again."""

        message_ids: list[str]

        def apply(self, log: UserLog) -> None:
            for message_id in self.message_ids:
                log.pending[message_id] = log.quarantined.pop(message_id)
            log.pending = dict(sorted(log.pending.items(), key=lambda item: item[1]))

    class KnowledgeReextracted(Aggregate.Event):
        """Part of the history was extracted again into a separate knowledge version.

        ``request_id`` names the request that extracted it (a Message Batches
        ``custom_id``), so that collecting the same results twice records them once.
        ``followed_by`` and ``repeated`` (entries of the version said again) as for
        :class:`KnowledgeExtracted`.
        """

        knowledge_version: str
        message_ids: list[str]
        entries: list[dict[str, Any]]
        extractor: str
        model: str | None
        input_tokens: int | None
        output_tokens: int | None
        request_id: str | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None
        repairs: list[str] | None = None
        followed_by: int | None = None
        repeated: dict[str, list[str]] | None = None

        def apply(self, log: UserLog) -> None:
            count = log.knowledge_versions.get(self.knowledge_version, 0)
            log.knowledge_versions[self.knowledge_version] = count + len(self.entries)
            for entry in self.entries:
                log.valid_entries[entry["entry_id"]] = self.knowledge_version
            if self.request_id:
                log.reextraction_requests[self.request_id] = self.knowledge_version

    class ReextractionFailed(Aggregate.Event):
        """A re-extraction call into a knowledge version gave nothing to record: it spent
        tokens (an answer cut short, unreadable or refused), or it failed of its own in a
        way that would repeat. Its messages stay uncovered; when it ``repeats`` the next
        run sends them one a call (so one that fails alone leaves the others be), and the
        event keeps what the call cost, for ``memvee stats``.
        ``request_id`` as for :class:`KnowledgeReextracted`: a failure collected twice is
        recorded once. ``repeats`` defaults to ``False`` for the events stored before it
        was kept (those were kept for their tokens alone). ``may_pass``: the call failed in
        a way that may pass (a 5xx, a timeout): kept as evidence, so that the next runs
        split its batch and blame a message that keeps failing while others are answered
        (``False`` for the events stored before it was kept). ``blamed``: a Message Batches
        request that failed so while the other requests it went with did not all fail so
        (not the API's at large); a message blamed so twice is sent in a call of its own,
        as one that ``repeats``."""

        knowledge_version: str
        message_ids: list[str]
        error: str
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None
        request_id: str | None = None
        repeats: bool = False
        may_pass: bool = False
        blamed: bool = False

        def apply(self, log: UserLog) -> None:
            if self.request_id:
                log.reextraction_requests[self.request_id] = self.knowledge_version

    class KnowledgeSuperseded(Aggregate.Event):
        """A newer entry replaced a known one; the old entry stopped being valid then."""

        entry_id: str
        knowledge_version: str
        superseded_by: str
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.end_entry(self.entry_id, self.valid_until)

    class KnowledgeInvalidated(Aggregate.Event):
        """A known entry stopped being true, with nothing to replace it ("I quit")."""

        entry_id: str
        knowledge_version: str
        reason: str
        source_message_ids: list[str]
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.end_entry(self.entry_id, self.valid_until)

    class KnowledgeVersionPromoted(Aggregate.Event):
        """A re-extracted knowledge version replaced the live knowledge. ``followed_by``
        as for :class:`KnowledgeExtracted` (the messages it returned)."""

        knowledge_version: str
        knowledge_count: int
        followed_by: int | None = None

        def apply(self, log: UserLog) -> None:
            del log.knowledge_versions[self.knowledge_version]
            log.knowledge_count = self.knowledge_count
            log.valid_entries = {
                entry_id: LIVE_KNOWLEDGE if version == self.knowledge_version else version
                for entry_id, version in log.valid_entries.items()
                if version != LIVE_KNOWLEDGE
            }

    class MessagesReturned(Aggregate.Event):
        """Processed messages went back to the buffer: the knowledge version promoted
        before this event does not cover them, and the knowledge that did is gone.

        Each message comes back with its log version and its estimated prompt tokens, in
        log order, to be extracted into the new live knowledge like any buffered message.
        """

        knowledge_version: str
        message_ids: list[str]
        versions: list[int]
        weights: list[int]

        def apply(self, log: UserLog) -> None:
            for message_id, version, weight in zip(
                self.message_ids, self.versions, self.weights, strict=True
            ):
                log.pending[message_id] = version
                log.weights[message_id] = weight
            log.pending = dict(sorted(log.pending.items(), key=lambda item: item[1]))

    class ProcessingFailed(Aggregate.Event):
        """A task ended FAILED on an error that may pass (the API was down, slow or busy,
        or storage failed) or on a fault in memvee; its batch returns to the buffer, split
        for the next try.

        ``blamed`` says the batch (one message) failed while the API answered others, or
        met a fault, so the failure counts against that message as well. The tokens are
        what the failed calls spent, if any did (an answer cut at its budget, then a failed
        re-ask).
        """

        task_id: str
        error: str
        blamed: bool = False
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None

        def apply(self, log: UserLog) -> None:
            log.note_failure(log.return_to_buffer(self.task_id), counted=self.blamed)
            log.running.pop(self.task_id, None)

    class ProcessingInterrupted(Aggregate.Event):
        """A task was cut short (crash or shutdown) and closed as FAILED; the messages of
        its batch out, if one was, return. A task cut between two batches (a log whose
        import stopped there) holds none: what its scope had left is buffered already."""

        task_id: str
        reason: str

        def apply(self, log: UserLog) -> None:
            if log.requested.pop(self.task_id, None) is None:
                if self.task_id in log.open_tasks:
                    log.return_to_buffer(self.task_id)
                log.running.pop(self.task_id, None)

    class KnowledgeEndMoved(Aggregate.Event):
        """An ended entry stopped being valid earlier than recorded: a backdated entry
        (``superseded_by``) now follows it, before the entry that had replaced it or
        before the end it was invalidated at (which the new entry does not take over)."""

        entry_id: str
        knowledge_version: str
        superseded_by: str
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.note_end(self.valid_until)  # the state holds valid entries only

    class KnowledgeInvalidatedEarlier(Aggregate.Event):
        """An entry taken back already stopped being true earlier than recorded: a
        backdated message (``source_message_ids``) said so, or said what followed it."""

        entry_id: str
        knowledge_version: str
        reason: str
        source_message_ids: list[str]
        valid_until: datetime

        def apply(self, log: UserLog) -> None:
            log.note_end(self.valid_until)  # the state holds valid entries only

    class KnowledgeBeganEarlier(Aggregate.Event):
        """An entry was found to be valid from an earlier time: a backdated message
        (``source_message_ids``, which it now cites too) said it before it began."""

        entry_id: str
        knowledge_version: str
        valid_from: datetime
        source_message_ids: list[str]

        def apply(self, log: UserLog) -> None:
            pass  # the state holds which entries are valid, not since when

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
        self.weights: dict[str, int] = {}
        self.caps: dict[str, int] = {}
        self.parked: dict[str, int] = {}
        self.quarantined: dict[str, int] = {}
        self.running: dict[str, dict[str, Any]] = {}
        self.reextraction_requests: dict[str, str] = {}
        self.latest_end: datetime | None = None
        self.quiet_task: str | None = None
        self.quiet_at = 0

    def upgrade(self) -> None:
        """Fill state that snapshots taken by an older memvee lack.

        Entries valid before the knowledge lifecycle are then unknown to the log, so an
        update naming one is recorded as a new entry: nothing is lost, only not linked.
        Messages buffered before bounded batches weigh nothing in a batch's token budget.
        When the latest end of an entry is not known, every batch may be backdated.
        The Message Batches requests recorded before are not known: a bulk batch kept
        across the upgrade is collected as if none of it were recorded.
        """
        names = ("valid_entries", "weights", "caps", "parked", "quarantined", "running")
        for name in (*names, "reextraction_requests"):
            if not hasattr(self, name):
                setattr(self, name, {})
        if not hasattr(self, "latest_end"):
            self.latest_end = UNKNOWN_END
        if not hasattr(self, "quiet_task"):
            self.quiet_task, self.quiet_at = None, 0

    @staticmethod
    def create_id(user_id: str) -> UUID:
        """One log per user: the id is derived from the user id."""
        return user_log_id(user_id)

    @classmethod
    def register(cls, user_id: str) -> UserLog:
        """Open the log of ``user_id``."""
        return cls._create(cls.Registered, id=user_log_id(user_id), user_id=user_id)

    @property
    def started_tasks(self) -> list[str]:
        """The tasks started and not ended, in the order they started: each with a batch
        out (:attr:`open_tasks`) or, in a log cut between a batch's outcome and the next
        batch's claim (which the log's owner writes together), with none."""
        return list(dict.fromkeys([*self.running, *self.open_tasks]))

    @property
    def unsettled(self) -> set[str]:
        """The messages not covered for good: buffered, held by a running task, or
        quarantined (what re-extraction leaves to normal processing)."""
        held = (m for batch in self.open_tasks.values() for m in batch)
        return {*self.pending, *self.quarantined, *held}

    def ends_after(self, moment: datetime) -> bool:
        """Whether an entry of the log (any version) stopped being valid after ``moment``:
        a batch whose first message was sent then is backdated, and is shown those."""
        return self.latest_end is not None and moment < self.latest_end

    def note_end(self, valid_until: datetime) -> None:
        """Evolve helper: an entry ended at ``valid_until``; the latest end is kept."""
        if self.latest_end is None or self.latest_end < valid_until:
            self.latest_end = valid_until

    def end_entry(self, entry_id: str, valid_until: datetime) -> None:
        """Evolve helper: an entry stopped being valid; its version counts one fewer."""
        self.note_end(valid_until)
        version = self.valid_entries.pop(entry_id)
        if version == LIVE_KNOWLEDGE:
            self.knowledge_count -= 1
        else:
            self.knowledge_versions[version] -= 1

    def return_to_buffer(self, task_id: str) -> dict[str, int]:
        """Evolve helper: a batch's messages go back to the buffer in log order."""
        returned = self.open_tasks.pop(task_id)
        merged = {**self.pending, **returned}
        self.pending = dict(sorted(merged.items(), key=lambda item: item[1]))
        return returned

    def settle(self, batch: Iterable[str]) -> None:
        """Evolve helper: messages left the buffer for good; forget their hints."""
        for message_id in batch:
            self.weights.pop(message_id, None)
            self.caps.pop(message_id, None)
            self.parked.pop(message_id, None)

    def note_failure(self, batch: dict[str, int], *, counted: bool) -> None:
        """Evolve helper: a failed batch is split in two for the next tries; a message
        that failed alone is parked, the failure counted against it when ``counted``."""
        ordered = sorted(batch, key=batch.__getitem__)
        if len(ordered) == 1:
            (message_id,) = ordered
            self.parked[message_id] = self.parked.get(message_id, 0) + int(counted)
            return
        half = (len(ordered) + 1) // 2
        for part in (ordered[:half], ordered[half:]):
            for message_id in part:
                self.caps[message_id] = min(self.caps.get(message_id, len(part)), len(part))

    # ------------------------------------------------------- events from elsewhere

    def check_recordable(self, event: Aggregate.Event) -> None:
        """Raise :class:`InvalidInputError` unless this log's commands could have emitted
        ``event`` next: for an event it did not decide (an import's), which its ``apply``
        would otherwise fold in whatever it says.

        What the commands guarantee is checked against the state: messages follow one
        another; a task starts once, and each later batch follows its last; an outcome
        covers exactly the batch its task claimed, ending the task when nothing of its
        scope is left; a task closed as interrupted was requested or started; new entries
        have ids of their own and each cites messages of its batch, as each repeat of a
        known entry does; an entry ends in the version that holds it; a promotion counts
        the version's entries; messages return only once settled; token counts are whole
        numbers a column holds. Which messages and entries the log ever held the state
        does not keep: the caller checks those.
        """
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            spent = getattr(event, name, None)
            if spent is not None and not 0 <= spent <= MAX_TOKENS:
                raise InvalidInputError(f"{name} is {spent}, not a count of tokens")
        following = getattr(event, "followed_by", None)
        if following is not None and following < 0:
            raise InvalidInputError(f"followed_by is {following}, not a count of events")
        if isinstance(event, self.MessageAdded):
            if event.seq != self.message_count + 1:
                raise InvalidInputError(
                    f"message seq {event.seq} where {self.message_count + 1} was due"
                )
        elif isinstance(event, self.ProcessingRequested):
            if event.task_id in self.requested or event.task_id in self.running:
                raise InvalidInputError(f"task {event.task_id} is already known")
        elif isinstance(event, self.ProcessingStarted):
            self._check_started(event)
        elif isinstance(event, self.KnowledgeExtracted | self.MessagesQuarantined):
            self._check_outcome(event)
        elif isinstance(event, self.BatchFailed | self.ProcessingFailed):
            self._open_task(event.task_id)
        elif isinstance(event, self.ProcessingInterrupted):
            if event.task_id not in self.requested:
                self._started_task(event.task_id)
        elif isinstance(event, self.KnowledgeReextracted | self.ReextractionFailed):
            check_knowledge_version(event.knowledge_version)
            _check_distinct(event.message_ids, "message")
            if self.recorded_request(event.request_id):
                raise InvalidInputError(f"request {event.request_id!r} is recorded already")
        elif isinstance(event, self.KnowledgeSuperseded | self.KnowledgeInvalidated):
            holder = self.valid_entries.get(event.entry_id)
            if holder != event.knowledge_version:
                raise InvalidInputError(
                    f"knowledge version {event.knowledge_version!r} has no valid entry "
                    f"{event.entry_id!r}"
                )
        elif isinstance(event, self.KnowledgeVersionPromoted):
            count = self.knowledge_versions.get(event.knowledge_version)
            if count != event.knowledge_count:
                raise InvalidInputError(
                    f"knowledge version {event.knowledge_version!r} holds {count} entries, "
                    f"not {event.knowledge_count}"
                )
        elif isinstance(event, self.MessagesReturned):
            _check_distinct(event.message_ids, "message")
            unsettled = self.unsettled.intersection(event.message_ids)
            if unsettled:
                raise InvalidInputError(f"message {min(unsettled)!r} is not processed")
        if isinstance(event, self.KnowledgeExtracted | self.KnowledgeReextracted):
            self._check_entries(event.entries, event.message_ids)
            _check_repeated(event.repeated or {}, event.message_ids)

    def _check_started(self, event: ProcessingStarted) -> None:
        """A task's first batch starts it once; a later batch follows its last one. Each
        claims buffered messages of the task's scope."""
        _check_distinct(event.message_ids, "message")
        if event.task_id in self.open_tasks:
            raise InvalidInputError(f"task {event.task_id} has a batch running already")
        task = self.running.get(event.task_id)
        if event.batch == 1:  # a log of a memvee before requests starts tasks unrequested
            if task is not None:
                raise InvalidInputError(f"task {event.task_id} has started already")
            scope = self.version + 1
        elif task is None or event.batch != task["batches"] + 1:
            raise InvalidInputError(f"task {event.task_id} has no batch {event.batch - 1} before")
        else:
            scope = task["scope"]
        for message_id in event.message_ids:
            if self.pending.get(message_id, scope) >= scope:
                raise InvalidInputError(f"message {message_id!r} is not buffered for the task")

    def _check_outcome(self, event: KnowledgeExtracted | MessagesQuarantined) -> None:
        """An outcome covers the messages its task's running batch claimed, in their
        order, and is final when nothing of the task's scope waits."""
        claimed = list(self._open_task(event.task_id))
        if event.message_ids != claimed:
            raise InvalidInputError(
                f"the outcome of task {event.task_id} does not cover the {len(claimed)} "
                f"messages its batch claimed, in their order ({len(event.message_ids)} given)"
            )
        left = self._left_in_scope(event.task_id)
        if event.final == left:
            said = "final" if event.final else "not final"
            scope = "messages of its scope wait" if left else "nothing of its scope waits"
            raise InvalidInputError(f"the outcome of task {event.task_id} is {said}: {scope}")

    def _check_entries(self, entries: list[dict[str, Any]], message_ids: list[str]) -> None:
        """New entries have ids no valid entry has, and cite messages of their batch."""
        _check_distinct([entry["entry_id"] for entry in entries], "entry")
        batch = set(message_ids)
        for entry in entries:
            if entry["entry_id"] in self.valid_entries:
                raise InvalidInputError(f"entry id {entry['entry_id']!r} is taken already")
            sources = entry["source_message_ids"]
            if not sources:
                raise InvalidInputError(f"entry {entry['entry_id']!r} cites no message")
            outside = [m for m in sources if m not in batch]
            if outside:
                raise InvalidInputError(
                    f"entry {entry['entry_id']!r} cites {outside[0]!r}, a message not of its batch"
                )

    # ----------------------------------------------------------------- commands (decide)

    def add_message(
        self,
        role: str,
        content: str,
        sent_at: datetime | None,
        max_chars: int,
        name: str | None = None,
    ) -> str:
        """Append one message (said by ``name``, when known) after checking it; returns its
        new id."""
        check_message(role, content, max_chars)
        check_name(name)
        sent_at = check_time(sent_at, "sent_at")
        message_id = new_message_id()
        named = {} if name is None else {"name": name.strip()}
        self.trigger_event(
            self.MessageAdded,
            message_id=message_id,
            seq=self.message_count + 1,
            role=role,
            content=content,
            sent_at=datetime.now(UTC) if sent_at is None else sent_at,
            **named,
        )
        return message_id

    def request_processing(self, task_id: str, trigger: str, *, keep_empty: bool = False) -> bool:
        """Queue task ``task_id``; returns whether a request was recorded.

        Nothing is recorded when nothing is buffered and no task runs or waits (the task
        has nothing to do), unless ``keep_empty`` asks for it (the caller hands the task's
        id to others, who look it up in the log: it starts and completes with no entries),
        nor for an automatic request while another request waits. Only ``manual``
        requests always queue (the caller waits for that very task).
        """
        if task_id in self.requested or task_id in self.open_tasks:
            raise InvalidInputError(f"task {task_id} is already known")
        if not (keep_empty or self.pending or self.open_tasks or self.requested):
            return False
        if trigger != "manual" and self.requested:
            return False
        self.trigger_event(self.ProcessingRequested, task_id=task_id, trigger=trigger)
        return True

    def quiet_since(self) -> str | None:
        """The task that last ended with nothing to do, if nothing was recorded since:
        a request kept with nothing to do (``keep_empty``) is that task again, so asking
        an idle user over and over stores nothing more."""
        if self.quiet_task is None or self.quiet_at != self.version:
            return None
        if self.pending or self.open_tasks or self.requested:
            return None
        return self.quiet_task

    def start_next(self, limits: BatchLimits = DEFAULT_LIMITS) -> tuple[str, str, list[str]] | None:
        """Start the oldest requested task with its first batch of the buffered messages.

        One task runs at a time. A task that finds nothing buffered completes at once
        with no entries. Returns the task and the messages it claimed, or ``None``.
        """
        if self.open_tasks or not self.requested:
            return None
        task_id, trigger = next(iter(self.requested.items()))
        message_ids = self._next_batch(self.version + 1, limits)
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
        usage: TokenUsage = _NO_USAGE,
        *,
        batch: Sequence[BatchMessage] = (),
        limits: BatchLimits = DEFAULT_LIMITS,
        known: Sequence[KnownEntry] = (),
        replaced: Sequence[ReplacedEntry] = (),
    ) -> list[dict[str, Any]]:
        """Cover the running batch of ``task_id`` with ``facts``, then go on with the
        task's next batch, if any (see :attr:`open_tasks`); returns the new entries.

        ``batch`` gives the batch's messages: an entry is valid from the time its newest
        source message was sent, and an entry it updates stops being valid then. ``known``
        (the entries the batch was shown) tells when those began: a fact sent before the
        entry it updates began (a backdated message) is the older one: it ends when the
        newer began, and fits in ``replaced`` (the ended entries before those, see
        :class:`~events.timeline.Timeline`) after the latest that began before it.
        """
        claimed = self._open_task(task_id)
        final = not self._left_in_scope(task_id)
        entries = self._record_facts(
            self.KnowledgeExtracted,
            LIVE_KNOWLEDGE,
            facts,
            batch,
            task_id=task_id,
            message_ids=list(claimed),
            extractor=_extractor_label(extractor),
            model=_label(model, MAX_MODEL_CHARS),
            final=final,
            known=known,
            replaced=replaced,
            after=0 if final else 1,
            usage=usage,
        )
        if not final:
            self._start_batch(task_id, limits)
        return entries

    def record_failure(
        self,
        task_id: str,
        error: str,
        *,
        repeats: bool = False,
        blamed: bool = False,
        usage: TokenUsage = _NO_USAGE,
        extractor: str | None = None,
        model: str | None = None,
        limits: BatchLimits = DEFAULT_LIMITS,
    ) -> list[str]:
        """The running batch of ``task_id`` failed with ``error``; returns what was quarantined.

        An error that ``repeats`` (the same batch would fail again) splits the batch and the
        task goes on; any other error ends the task FAILED, its batch back in the buffer
        and split for the next run. A message that failed alone ``limits.max_attempts``
        times (errors that repeat, or that were ``blamed`` on it) is quarantined instead.
        ``usage``, ``extractor`` and ``model`` record what the failed call spent.
        """
        claimed = self._open_task(task_id)
        error = storable(error) if error else "unknown error"
        spent = {
            "extractor": _label(extractor, MAX_EXTRACTOR_CHARS),
            "model": _label(model, MAX_MODEL_CHARS),
            **_usage_fields(usage),
        }
        if len(claimed) == 1 and (repeats or blamed):
            (message_id,) = claimed
            attempts = self.parked.get(message_id, 0) + 1
            if limits.gives_up(attempts):
                final = not self._left_in_scope(task_id)
                self.trigger_event(
                    self.MessagesQuarantined,
                    task_id=task_id,
                    message_ids=[message_id],
                    error=error,
                    attempts=attempts,
                    final=final,
                    **spent,
                )
                if not final:
                    self._start_batch(task_id, limits)
                return [message_id]
        if repeats:
            self.trigger_event(self.BatchFailed, task_id=task_id, error=error, **spent)
            self._start_batch(task_id, limits)
        else:
            tokens = spent if any(_usage_fields(usage).values()) else {}
            self.trigger_event(
                self.ProcessingFailed, task_id=task_id, error=error, blamed=blamed, **tokens
            )
        return []

    def requeue(self, message_ids: Iterable[str] | None = None) -> list[str]:
        """Put quarantined messages (by default all of them) back in the buffer."""
        chosen = list(self.quarantined if message_ids is None else dict.fromkeys(message_ids))
        unknown = [m for m in chosen if m not in self.quarantined]
        if unknown:
            raise InvalidInputError(
                f"user {self.user_id!r} has no quarantined message {unknown[0]!r}"
            )
        if chosen:
            self.trigger_event(self.MessagesRequeued, message_ids=chosen)
        return chosen

    def record_reextraction(
        self,
        knowledge_version: str,
        message_ids: Sequence[str],
        facts: Sequence[ExtractedFact],
        extractor: str,
        model: str | None = None,
        usage: TokenUsage = _NO_USAGE,
        *,
        batch: Sequence[BatchMessage] = (),
        request_id: str | None = None,
        known: Sequence[KnownEntry] = (),
        replaced: Sequence[ReplacedEntry] = (),
        since: Iterable[Any] = (),
    ) -> list[dict[str, Any]]:
        """Add re-extracted ``facts`` of the messages ``message_ids`` to a knowledge version.

        Updates and invalidations apply to that version's own entries, never the live ones;
        ``known`` and ``replaced`` as for :meth:`record_knowledge`. A ``request_id`` recorded
        already is refused: its answer is in the log once. ``since`` is this log's events
        after the messages were planned (when the version did not cover them): a message
        the version has come to cover since, another run having recorded it meanwhile,
        refuses the batch (:class:`AlreadyReextractedError`), so no fact is in it twice.
        """
        self.check_version_name(knowledge_version)
        if self.recorded_request(request_id):
            raise ConflictError(f"request {request_id!r} is recorded already")
        covered = self.reextracted(knowledge_version, since) & set(message_ids)
        if covered:
            raise AlreadyReextractedError(
                f"{len(covered)} of the batch's {len(message_ids)} messages were recorded "
                f"into {knowledge_version!r} meanwhile by another run",
                [m for m in message_ids if m in covered],
            )
        return self._record_facts(
            self.KnowledgeReextracted,
            knowledge_version,
            facts,
            batch,
            knowledge_version=knowledge_version,
            message_ids=list(message_ids),
            extractor=_extractor_label(extractor),
            model=_label(model, MAX_MODEL_CHARS),
            request_id=request_id,
            known=known,
            replaced=replaced,
            usage=usage,
        )

    def record_reextraction_failure(
        self,
        knowledge_version: str,
        message_ids: Sequence[str],
        error: str,
        usage: TokenUsage,
        *,
        extractor: str | None = None,
        model: str | None = None,
        request_id: str | None = None,
        repeats: bool = False,
        may_pass: bool = False,
        blamed: bool = False,
    ) -> bool:
        """Record a failed re-extraction call of ``message_ids``: what it spent, whether
        it ``repeats`` (failed of its own, and would the same way again: the next run sends
        its messages one a call), whether its error ``may_pass`` (evidence for the next
        runs, see :meth:`reextraction_calls`) and whether it is ``blamed`` (a Message
        Batches request failing so, but not as every request did: a second such failure of
        a message turns into a call of its own); returns whether anything was recorded
        (nothing when it spent nothing and is none of these, or ``request_id`` is recorded
        already: re-extraction changes no state when it fails, only the bill and the next
        plan)."""
        self.check_version_name(knowledge_version)
        spent = _usage_fields(usage)
        if not (repeats or may_pass or blamed or any(spent.values())) or self.recorded_request(
            request_id
        ):
            return False
        self.trigger_event(
            self.ReextractionFailed,
            knowledge_version=knowledge_version,
            message_ids=list(message_ids),
            error=storable(error) if error else "unknown error",
            extractor=_label(extractor, MAX_EXTRACTOR_CHARS),
            model=_label(model, MAX_MODEL_CHARS),
            request_id=request_id,
            repeats=repeats,
            may_pass=may_pass,
            blamed=blamed,
            **spent,
        )
        return True

    def check_version_name(self, name: object) -> str:
        """Return ``name`` if re-extraction may record into it, else raise
        :class:`InvalidInputError`: a version this log has recorded into goes on under its
        stored name (:func:`check_knowledge_version`), a new one must be a name
        :func:`check_new_knowledge_version` takes."""
        name = check_knowledge_version(name)
        if name not in self.knowledge_versions and name not in self.reextraction_requests.values():
            check_new_knowledge_version(name)
        return name

    def recorded_request(self, request_id: str | None) -> bool:
        """Whether a re-extraction naming ``request_id`` is in this log already."""
        return request_id is not None and request_id in self.reextraction_requests

    def _record_facts(
        self,
        event: type[Aggregate.Event],
        version: str,
        facts: Sequence[ExtractedFact],
        batch: Sequence[BatchMessage],
        known: Sequence[KnownEntry] = (),
        replaced: Sequence[ReplacedEntry] = (),
        after: int = 0,
        usage: TokenUsage = _NO_USAGE,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """Repair ``facts`` against the batch (``fields["message_ids"]``), decide their
        lifecycle in ``version``, and emit ``event`` with the new entries, then the ends of
        the entries they replaced; ``event`` counts those and the ``after`` events the
        caller emits next (its task's next batch), and records what ``usage`` spent."""
        message_ids: list[str] = fields["message_ids"]
        said_at = {m.message_id: m.sent_at for m in batch}
        fallback = [m.message_id for m in batch if m.role == "user"] or message_ids
        valid = {e for e, v in self.valid_entries.items() if v == version}
        around = Around(known, replaced, valid, _same_words)
        plan = self._plan(facts, frozenset(message_ids), fallback, known, said_at, around)
        entries = _entries(plan, said_at)
        placed = {link.entry_id for link in replaced}
        heads = [  # ended entries shown with no link given: the last values of their chains
            ReplacedEntry(k.entry_id, k.valid_from, k.valid_until, None)
            for k in known
            if k.valid_until is not None and k.entry_id not in placed
        ]
        changes = _changes(plan, entries, version, said_at, around.began, [*replaced, *heads])
        entries = plan.in_answer_order(entries)
        self.trigger_event(
            event,
            entries=entries,
            repairs=plan.repairs or None,
            repeated=plan.said_again_apart() or None,
            followed_by=len(changes) + after,
            **_usage_fields(usage),
            **fields,
        )
        for kind, change in changes:
            self.trigger_event(kind, **change)
        return entries

    def _plan(
        self,
        facts: Sequence[ExtractedFact],
        allowed: frozenset[str],
        fallback: list[str],
        known: Sequence[KnownEntry],
        said_at: dict[str, datetime],
        around: Around,
    ) -> _Plan:
        """Decide what each fact does to the valid entries of the version ``around`` was
        made for, repairing what the extractor got slightly wrong (each repair is noted)
        rather than losing the batch. The facts are decided in the order they were said
        (:func:`_in_time_order`), not the order the answer lists them in, as batches of one
        message each would decide them, but for an update to a value stated earlier in
        the batch, which joins that statement (:meth:`_Plan.adopt`).

        A target that is neither a valid entry of the version nor an ended one the batch was
        shown (``known`` with an end) turns the fact into a new entry, so a confused
        extractor cannot lose facts; citations outside the batch are dropped; a fact left
        citing nothing cites the batch's user messages. A text over :data:`MAX_FACT_CHARS`
        is cut; a new fact that repeats an earlier fact of the answer is merged into it
        (valid from the earlier statement, yet after the value it replaced began) unless
        another fact of the answer ended that one before it was said: it is then that value
        again, as is a repeat of a known entry said after such an end (unless the answer
        stated that value again already: it cites that). An update that repeats a new fact
        said before it, which nothing ended, is that fact's entry, begun at the earlier of
        the two statements said after the value it replaces began. A change naming an
        earlier fact of the answer (``target_fact``) ends what that fact added or the known
        entry it repeats, and one that repeats an entry of ``known`` not ended when it was
        said (``said_at`` gives the messages' times) is the same as it. A repeat said before
        the entry began, and an update to a value known to begin later, are placed by
        :class:`~events.timeline.Around`. A repeat said while the entry held adds only the
        messages it cited itself to :attr:`_Plan.repeated` (none when it fell back on the
        batch's). A repeat said after the entry ended is that value again, after what
        replaced it (if anything did). A change naming an entry that the answer replaced
        before it was said ends the value of the chain that held then, an invalidation as an
        update (:meth:`_Plan.changed`). A change is dated no earlier than the answer's
        latest statement of the value it ends (:meth:`_Plan.dated`); one said before that
        value began is the older value (an invalidation then ends nothing). An invalidation
        of an entry ended before the batch ends nothing, unless it was said while an entry
        later taken back held: that entry is then taken back earlier. Only a fact with no
        text, or none that shows (spaces, zero-width and blank characters), is dropped.
        """
        valid, ended = around.valid, around.ended
        plan = _Plan()
        shown = {_same_words(k.text): k.entry_id for k in known if k.entry_id in valid}
        ended_shown = {_same_words(k.text): (k, until) for k, until in ended.values()}
        new_texts: dict[str, tuple[int, int]] = {}  # text -> (entry in the plan, fact)
        added_by: dict[int, int] = {}  # fact -> the entry in the plan it added
        repeats: dict[int, str] = {}  # fact -> the known entry it was found to repeat
        for index in _in_time_order(facts, said_at):
            fact = facts[index]
            if fact.action not in FACT_ACTIONS:
                raise InvalidExtractionError(f"fact {fact.text!r}: unknown action {fact.action!r}")
            text = storable(fact.text).strip()
            if not text:
                plan.repairs.append(f"fact {index} had no text; it was dropped")
                continue
            if not shows_something(text):
                plan.repairs.append(
                    f"fact {index} showed no text (only characters that show nothing); "
                    "it was dropped"
                )
                continue
            notes: list[str] = []
            if text != fact.text.strip():
                notes.append("characters no database stores as text were dropped (NUL) or replaced")
            if len(text) > MAX_FACT_CHARS:
                notes.append(f"was {len(text)} characters long; cut to {MAX_FACT_CHARS}")
                text = text[: MAX_FACT_CHARS - 1].rstrip() + "\u2026"
            sources = list(dict.fromkeys(fact.source_message_ids))
            outside = [m for m in sources if m not in allowed]
            if outside:
                sources = [m for m in sources if m in allowed]
                dropped = storable(", ".join(outside))
                notes.append(f"dropped citations outside the batch: {dropped}")
            own = tuple(sources)
            if not sources:
                sources = list(fallback)
                notes.append("cited no message of its batch; cites the batch's user messages")
            target = fact.target_entry_id
            action = fact.action
            earlier = fact.target_fact
            if earlier is not None:
                within = added_by.get(earlier) if earlier < index else None
                ends = action in ("update", "invalidate") and target is None
                if ends and within is not None:
                    in_answer = ExtractedFact(text, tuple(sources), action)
                    said = plan.dated(within, _said(sources, said_at), said_at)
                    same = _same_words(text)
                    if (
                        action == "update"
                        and same == _same_words(plan.added[within].text)
                        and plan.ended_at(within, said) is None
                    ):
                        added_by[index] = within
                        merged = f"fact {index} changed fact {earlier} to its own value; merged"
                        notes = [merged, *(f"fact {index}: {n}" for n in notes)]
                        after = _replaced_start(plan, within, around, said_at)
                        plan.merge(within, sources, said_at, after, notes, index)
                        plan.repairs.append(merged)
                        continue
                    stated = new_texts.get(same) if action == "update" else None
                    if stated is not None and plan.adoptable(stated[0], within):
                        began = plan.start(within, said_at)
                        first_said = plan.start(stated[0], said_at)
                        if began < first_said and plan.said_before(within, first_said, said_at):
                            added_by[index] = stated[0]
                            plan.adopt(stated[0], within, began, sources, said_at, index, notes)
                            plan.ended_by(within, plan.start(stated[0], said_at), action, said_at)
                            continue
                        if first_said < began and plan.said_before(stated[0], began, said_at):
                            plan.precede(stated[0], within, began, stated[1])
                    plan.changed(within, said, action, said_at)
                    if action == "update":
                        new_texts[_same_words(text)] = (len(plan.added), index)
                        added_by[index] = len(plan.added)
                        within_began = plan.start(within, said_at)
                        older_than = within_began if said < within_began else None
                        plan.add(in_answer, within, notes, index, said, older_than)
                    elif said < plan.start(within, said_at):
                        plan.repairs.append(
                            f"invalidation of fact {earlier}, said before it began: ends nothing"
                        )
                    else:
                        plan.end_within(within, in_answer, said)
                        plan.repairs.extend(f"invalidation of fact {earlier}: {n}" for n in notes)
                    continue
                if ends and earlier < index and earlier in repeats:
                    target = repeats[earlier]
                    notes.append(
                        f"named fact {earlier} of its answer, which repeats {target}; "
                        f"{action}s {target}"
                    )
                else:
                    notes.append(f"named fact {earlier} of its answer, which it cannot replace")
            if action == "new" and target is not None:
                notes.append(f"was new with a target ({storable(target)}); the target was ignored")
            elif action != "new" and target not in valid and target not in ended:
                notes.append(
                    f"was {action!r} of {storable(target or 'no entry')}, not a current entry; "
                    "recorded as new"
                )
                action = "new"
            said = _said(sources, said_at)
            if action in ("update", "invalidate") and target in valid:
                assert target is not None
                said = plan.dated(target, said, said_at, plan.began(target, around))
            same = _same_words(text)
            if action == "new" and shown.get(same) in valid:
                target, action = shown[same], "same"
                plan.repairs.append(f"fact {index} was new but repeats {target}; the same as it")
            elif (
                action == "new"
                and (match := ended_shown.get(same))
                and (said < match[1] or match[0].entry_id in around.succeeded)
            ):
                target, action = match[0].entry_id, "same"
                plan.repairs.append(f"fact {index} was new but repeats {target}; the same as it")
            if action == "same" and target and (end := plan.ended_at(target, said)):
                live = new_texts.get(same)
                if live is not None and plan.ended_at(live[0], said) is None:
                    notes.append(f"repeats {target}, ended when it was said, as fact {live[1]} did")
                    action, target = "new", None
                else:
                    action = _against_ended(target, end[0], action, said, notes, end[1])
                    target = None if action == "new" else target
                    if action == "update" and target is not None:
                        plan.ended_by(plan.latest(target), said, action, said_at)
            if target in ended:
                action = _against_ended(
                    target, ended[target][1], action, said, notes, target in around.succeeded
                )
                if action == "new":
                    target = None
                elif action == "invalidate" and not around.taken_back_after(target, said):
                    plan.repairs.append(f"invalidation of {target}, which had ended: ends nothing")
                    continue
            if action == "same" and target is not None and around.began_later(target, said):
                placing = around.repeat_before(target, said)
                if placing == "older":
                    notes.append(f"repeats {target}, said before the value it replaced began")
                    action = "update"
                else:
                    if placing == "earlier":
                        plan.begin_earlier(target, said, sources)
                    else:
                        notes.append(f"said before {target} began, while another ended entry held")
                    repeats[index] = target
                    plan.repairs.extend(f"repeat of {target}: {note}" for note in notes)
                    continue
            if action == "update" and (joined := around.joined(target, text, said)) is not None:
                plan.begin_earlier(joined[0], said, sources, replacing=joined[1])
                plan.repairs.extend(f"update of {target}: {note}" for note in notes)
                continue
            again = new_texts.get(same) if action == "new" else None
            if again is not None and (end := plan.ended_at(again[0], said)) is not None:
                notes.append(f"repeats fact {again[1]}, which had ended when it was said")
                if end[1]:
                    action, target = "update", None
                    notes[-1] += ": that value again, after what replaced it"
                    plan.ended_by(plan.latest(again[0]), said, action, said_at)
                    new_texts[same] = (len(plan.added), index)
                    added_by[index] = len(plan.added)
                    plan.add(ExtractedFact(text, tuple(sources), action), again[0], notes, index)
                    continue
                again = None
            repaired = ExtractedFact(text, tuple(sources), action, target)
            if again is not None:
                added, first = again
                added_by[index] = added
                merged = f"fact {index} repeated fact {first}; merged into it"
                after = _replaced_start(plan, added, around, said_at)
                notes = [merged, *(f"fact {index}: {n}" for n in notes)]
                plan.merge(added, sources, said_at, after, notes, index)
                plan.repairs.append(merged)
            elif action == "new":
                new_texts[same] = (len(plan.added), index)
                added_by[index] = len(plan.added)
                plan.add(repaired, None, notes, index)
            elif action == "update":
                assert target is not None
                known_from = around.began.get(target)
                stated = new_texts.get(same)
                if (
                    stated is not None
                    and plan.adoptable(stated[0], target)
                    and target in valid
                    and known_from is not None
                    and known_from < said
                ):
                    first_said = plan.start(stated[0], said_at)
                    if known_from < first_said and plan.said_before(target, first_said, said_at):
                        added_by[index] = stated[0]
                        plan.adopt(stated[0], target, known_from, sources, said_at, index, notes)
                        plan.ended_by(target, first_said, action, said_at)
                        continue
                    if first_said < known_from and plan.said_before(stated[0], known_from, said_at):
                        plan.precede(stated[0], target, known_from, stated[1])
                target_began = plan.began(target, around)
                older = target_began is not None and said < target_began
                if not older:
                    plan.changed(target, said, action, said_at)
                new_texts[same] = (len(plan.added), index)
                added_by[index] = len(plan.added)
                plan.add(repaired, target, notes, index, said, target_began if older else None)
            elif action == "invalidate":
                assert target is not None
                if plan.begins_after(target, said, around):
                    plan.repairs.append(
                        f"invalidation of {target}, said before it began: ends nothing"
                    )
                    continue
                plan.changed(target, said, action, said_at)
                plan.end_within(target, repaired, said)
                plan.repairs.extend(f"invalidation of {target}: {note}" for note in notes)
            else:
                assert target is not None
                repeats[index] = target
                plan.said_again(target, own)
                plan.repairs.extend(f"repeat of {target}: {note}" for note in notes)
        return plan

    def promote(self, knowledge_version: str, history: Iterable[Any]) -> list[str]:
        """Make a re-extracted knowledge version the live knowledge; returns the ids of
        the processed messages it does not cover, which go back to the buffer.

        ``history`` is this log's events, from its first to its current version: the
        state does not keep which messages each version covers. A message processed
        while the version was being extracted (or skipped by it, being buffered then) has
        its knowledge only in the live version this one replaces: without going back to
        the buffer, what it said would be lost from the live knowledge for good.
        """
        if knowledge_version not in self.knowledge_versions:
            raise InvalidInputError(
                f"user {self.user_id!r} has no unpromoted knowledge version {knowledge_version!r}"
            )
        returned = self.not_covered_by(knowledge_version, history)
        self.trigger_event(
            self.KnowledgeVersionPromoted,
            knowledge_version=knowledge_version,
            knowledge_count=self.knowledge_versions[knowledge_version],
            followed_by=1 if returned else 0,
        )
        if returned:
            self.trigger_event(
                self.MessagesReturned,
                knowledge_version=knowledge_version,
                message_ids=list(returned),
                versions=[version for version, _ in returned.values()],
                weights=[weight for _, weight in returned.values()],
            )
        return list(returned)

    def not_covered_by(
        self, knowledge_version: str, history: Iterable[Any]
    ) -> dict[str, tuple[int, int]]:
        """The processed messages (neither buffered, held by a task nor quarantined) that
        ``knowledge_version`` has no re-extraction of, read off ``history`` (this log's
        events up to its version; the state does not keep what each version covers): each
        with its log version and estimated prompt tokens, in log order. A version of the
        same name promoted before covers none of them."""
        added: dict[str, tuple[int, int]] = {}
        covered: set[str] = set()
        last = 0
        for e in history:
            if e.originator_id != self.id:
                raise InvalidInputError(f"the history given is not the log of {self.user_id!r}")
            last = e.originator_version
            if isinstance(e, self.MessageAdded):
                added[e.message_id] = (e.originator_version, estimate_tokens(e.content))
            else:
                _fold_covered(covered, e, knowledge_version)
        if last != self.version:
            raise InvalidInputError(
                f"the history given ends at version {last}, the log of {self.user_id!r} "
                f"at {self.version}"
            )
        unsettled = self.unsettled
        return {m: found for m, found in added.items() if m not in unsettled and m not in covered}

    def reextracted(self, knowledge_version: str, history: Iterable[Any]) -> set[str]:
        """The messages ``knowledge_version`` has a re-extraction of in ``history`` (this
        log's events, from any point: a promotion of the version's name clears what came
        before it), as :meth:`not_covered_by` counts them."""
        covered: set[str] = set()
        for e in history:
            if e.originator_id != self.id:
                raise InvalidInputError(f"the history given is not the log of {self.user_id!r}")
            _fold_covered(covered, e, knowledge_version)
        return covered

    def failed_reextraction(self, knowledge_version: str, history: Iterable[Any]) -> set[str]:
        """The messages of ``knowledge_version``'s re-extraction calls that failed of their
        own in a way that repeats, or were ``blamed`` for a failure that may pass twice
        (the same request failing again while others were answered), read off ``history``
        (this log's events; since a version of the same name was promoted, if one was): the
        next run sends each of them in a call of its own. A failure that may pass once pins
        none, whatever it spent."""
        failed: set[str] = set()
        blamed: Counter[str] = Counter()
        for e in history:
            if getattr(e, "knowledge_version", None) != knowledge_version:
                continue
            if isinstance(e, self.ReextractionFailed):
                if e.repeats:
                    failed.update(e.message_ids)
                elif getattr(e, "blamed", False):
                    blamed.update(e.message_ids)
                    failed.update(m for m in e.message_ids if blamed[m] >= 2)
            elif isinstance(e, self.KnowledgeVersionPromoted):
                failed.clear()
                blamed.clear()
        return failed

    def blamed_in_reextraction(self, knowledge_version: str, history: Iterable[Any]) -> set[str]:
        """The messages of ``knowledge_version``'s Message Batches requests ``blamed`` at
        least once (failed with a server error while the other requests they went with did
        not all fail so), read off ``history`` as :meth:`failed_reextraction` reads it: the
        evidence that a later request of them failing with every other one is theirs, not
        an outage's."""
        blamed: set[str] = set()
        for e in history:
            if getattr(e, "knowledge_version", None) != knowledge_version:
                continue
            if isinstance(e, self.ReextractionFailed) and getattr(e, "blamed", False):
                blamed.update(e.message_ids)
            elif isinstance(e, self.KnowledgeVersionPromoted):
                blamed.clear()
        return blamed

    def reextraction_calls(
        self, knowledge_version: str, history: Iterable[Any]
    ) -> list[tuple[tuple[str, ...], bool]]:
        """``knowledge_version``'s re-extraction calls read off ``history`` (since a version
        of the same name was promoted, if one was), in order: each call's messages, and
        whether it failed in a way that may pass (else the API answered it). The evidence
        a run weighs before blaming a message for failures that may pass."""
        calls: list[tuple[tuple[str, ...], bool]] = []
        for e in history:
            if getattr(e, "knowledge_version", None) != knowledge_version:
                continue
            if isinstance(e, self.KnowledgeReextracted | self.ReextractionFailed):
                calls.append((tuple(e.message_ids), getattr(e, "may_pass", False)))
            elif isinstance(e, self.KnowledgeVersionPromoted):
                calls.clear()
        return calls

    def reextraction_caps(self, knowledge_version: str, history: Iterable[Any]) -> dict[str, int]:
        """The most messages each message of ``knowledge_version``'s calls that failed in a
        way that may pass is sent with (read as :meth:`reextraction_calls`): half its
        failed batch, so that a run that stopped goes on splitting where it stopped, as
        live extraction splits a failed batch for the next try; one for a lone message."""
        caps: dict[str, int] = {}
        for message_ids, failed in self.reextraction_calls(knowledge_version, history):
            if failed:
                half = (len(message_ids) + 1) // 2
                for message_id in message_ids:
                    caps[message_id] = min(caps.get(message_id, half), half)
        return caps

    def close_interrupted(self, reason: str, task_ids: Iterable[str] | None = None) -> list[str]:
        """Close tasks (by default every started one, see :attr:`started_tasks`) as FAILED
        with ``reason``: a batch out returns to the buffer, as a task cut between two
        batches left the rest of its scope.

        ``task_ids`` may also name requested tasks that never started.
        """
        closing = self.started_tasks if task_ids is None else list(task_ids)
        for task_id in closing:
            if task_id not in self.requested:
                self._started_task(task_id)
            self.trigger_event(self.ProcessingInterrupted, task_id=task_id, reason=reason)
        return closing

    def _started_task(self, task_id: str) -> None:
        """Raise :class:`UnknownTaskError` unless ``task_id`` is a started task not ended."""
        if task_id not in self.running and task_id not in self.open_tasks:
            raise UnknownTaskError(f"user {self.user_id!r} has no running task {task_id!r}")

    def _open_task(self, task_id: str) -> dict[str, int]:
        try:
            return self.open_tasks[task_id]
        except KeyError:
            raise UnknownTaskError(
                f"user {self.user_id!r} has no running task {task_id!r}"
            ) from None

    def _left_in_scope(self, task_id: str) -> bool:
        """Whether buffered messages of the running task's scope wait for a later batch.

        A task started by an older memvee (no scope known) ends with its one batch.
        """
        task = self.running.get(task_id)
        return task is not None and any(v < task["scope"] for v in self.pending.values())

    def _start_batch(self, task_id: str, limits: BatchLimits) -> None:
        """Go on with the task's next batch (its scope still holds buffered messages)."""
        task = self.running[task_id]
        self.trigger_event(
            self.ProcessingStarted,
            task_id=task_id,
            message_ids=self._next_batch(task["scope"], limits),
            trigger=task["trigger"],
            batch=task["batches"] + 1,
        )

    def _next_batch(self, scope: int, limits: BatchLimits) -> list[str]:
        """The next batch of buffered messages older than ``scope``, in log order.

        At most ``limits.max_messages`` messages (fewer where a split capped them) and about
        ``limits.max_tokens`` of prompt, one message at least. Parked messages (which
        failed alone) wait until nothing else is left, then go one at a time, so that no
        message blocks the ones after it.
        """
        batch: list[str] = []
        parked: str | None = None
        cap, tokens = limits.max_messages, 0
        for message_id, version in self.pending.items():
            if version >= scope:
                break
            if message_id in self.parked:
                parked = parked or message_id
                continue
            cap = min(cap, self.caps.get(message_id, cap))
            weight = self.weights.get(message_id, 0)
            if limits.full(len(batch), tokens, weight, cap):
                break
            batch.append(message_id)
            tokens += weight
        if not batch and parked is not None:
            return [parked]
        return batch


@dataclass
class _Plan:
    """What a batch's facts do, in the answer's order: entries to add (each with the
    repairs made to it and the messages that first stated it), and ``steps`` that end
    entries: ``("replace", place)`` for the added entry at ``place`` replacing its
    :attr:`replaces` (a known entry's id, or an earlier added entry's place), and
    ``("invalidate", i)`` for :attr:`invalidated` ``[i]``, ``("earlier", i)`` for a known
    entry said again before it began (:attr:`earlier` ``[i]``: the entry, when, and the
    messages that said it), and ``("joins", i)`` for such an entry that now replaces
    another known one (:attr:`joins` ``[i]``: the two). Repairs of facts that added no
    entry are in :attr:`repairs`; the known entries said again while they held, with the
    messages that cited them so, in :attr:`repeated`."""

    added: list[ExtractedFact] = field(default_factory=list)
    said_by: list[tuple[str, ...]] = field(default_factory=list)
    replaces: list[str | int | None] = field(default_factory=list)
    notes: list[list[str]] = field(default_factory=list)
    invalidated: list[tuple[str | int, ExtractedFact, datetime]] = field(default_factory=list)
    steps: list[tuple[str, int]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    earlier: list[tuple[str, datetime, list[str]]] = field(default_factory=list)
    joins: list[tuple[str, str]] = field(default_factory=list)
    ends: dict[str | int, tuple[datetime, bool]] = field(default_factory=dict)
    repeated: dict[str, list[str]] = field(default_factory=dict)
    cited: list[dict[int, tuple[str, ...]]] = field(default_factory=list)
    followed: dict[str | int, str | int] = field(default_factory=dict)
    dated_at: dict[int, datetime] = field(default_factory=dict)

    def start(self, place: int, said_at: dict[str, datetime]) -> datetime:
        """When the entry added at ``place`` begins: its first statement, or, for a change
        dated later (:meth:`dated`), then."""
        first = _said(self.said_by[place], said_at)
        return max(first, self.dated_at.get(place, first))

    def dated(
        self,
        value: str | int,
        said: datetime,
        said_at: dict[str, datetime],
        began: datetime | None = None,
    ) -> datetime:
        """When a change said at ``said`` ends ``value`` (a known entry that ``began``
        then, or an added entry's place): no earlier than the latest message of the
        answer stating ``value`` (:meth:`said_before`), so an entry never ends before a
        message of its batch that states it, however late the answer had the change
        follow the fact it names; when the answer replaced ``value`` by then, the same
        for the value that followed it, which the change ends (:meth:`changed`). A change
        said before ``value`` began is placed by time as it is (the older value)."""
        at, seen = said, set()
        while value not in seen:
            seen.add(value)
            if isinstance(value, int):
                began, stated = self.start(value, said_at), self.added[value].source_message_ids
            else:
                stated = tuple(self.repeated.get(value, ()))
            if began is not None and at < began:
                return at
            at = max([at, *(said_at[m] for m in stated if m in said_at)])
            end = self.ended_at(value, at)
            if end is None or not end[1]:
                return at
            value, began = self.latest(value), None
        return at

    def said_before(self, value: str | int, at: datetime, said_at: dict[str, datetime]) -> bool:
        """Whether every message of the answer that states ``value`` (an added entry's
        place: the messages it cites; a known entry: those that said it again) was sent
        before ``at``, so ``value`` may end then without ending before its own words."""
        stated = (
            self.repeated.get(value, [])
            if isinstance(value, str)
            else self.added[value].source_message_ids
        )
        return all(said_at[m] < at for m in stated if m in said_at)

    def ended_by(
        self, target: str | int, at: datetime, action: FactAction, said_at: dict[str, datetime]
    ) -> None:
        """Note that a fact of the answer said at ``at`` ends ``target`` (a known entry,
        or an added entry's place, unless it was said before that began) by ``action``:
        a repeat of ``target`` said later is that value again, not the same entry."""
        if isinstance(target, int) and at < self.start(target, said_at):
            return
        end = self.ends.get(target)
        if end is None or at < end[0]:
            self.ends[target] = (at, action == "update")

    def changed(
        self, target: str | int, at: datetime, action: FactAction, said_at: dict[str, datetime]
    ) -> None:
        """Note that a change said at ``at`` ends ``target`` (:meth:`ended_by`) or, when
        the answer had replaced it by then, the last value of its chain, which the
        timeline ends in its place (:meth:`Timeline.replace`, :meth:`Timeline.invalidate`)."""
        end = self.ended_at(target, at)
        if end is not None and end[1]:
            self.ended_by(self.latest(target), at, action, said_at)
        self.ended_by(target, at, action, said_at)

    def ended_at(self, target: str | int | None, said: datetime) -> tuple[datetime, bool] | None:
        """When an earlier fact of the answer ended ``target``, if it did by ``said``, and
        whether it replaced it (else it was taken back)."""
        end = None if target is None else self.ends.get(target)
        return end if end is not None and end[0] <= said else None

    def begin_earlier(
        self, target: str, said: datetime, sources: list[str], replacing: str | None = None
    ) -> None:
        """Have the known entry ``target`` begin at ``said``, when ``sources`` said it,
        and replace the known entry ``replacing`` then, if any."""
        self.steps.append(("earlier", len(self.earlier)))
        self.earlier.append((target, said, sources))
        if replacing is not None:
            self.steps.append(("joins", len(self.joins)))
            self.joins.append((target, replacing))

    def said_again(self, target: str, messages: Sequence[str]) -> None:
        """Note that ``messages`` said the known entry ``target`` again while it held: they
        are outdated once it ends after them. A repeat citing no message of its own (the
        batch stood in for it) notes nothing."""
        if messages:
            noted = self.repeated.setdefault(target, [])
            noted.extend(m for m in messages if m not in noted)

    def said_again_apart(self) -> dict[str, list[str]]:
        """:attr:`repeated`, less the messages that the same answer has the entry begin
        with (:attr:`earlier`): those are its sources, not words said again."""
        begun = {(target, m) for target, _, sources in self.earlier for m in sources}
        apart = {
            target: [m for m in messages if (target, m) not in begun]
            for target, messages in self.repeated.items()
        }
        return {target: messages for target, messages in apart.items() if messages}

    def began(self, target: str, around: Around) -> datetime | None:
        """When the known entry ``target`` begins: as ``around`` knew it, or earlier
        when a statement of the answer said before it moved its start
        (:meth:`begin_earlier`)."""
        known = around.began.get(target)
        moved = [at for entry, at, _ in self.earlier if entry == target]
        return min(moved, default=known) if known is None else min([known, *moved])

    def begins_after(self, target: str, said: datetime, around: Around) -> bool:
        """Whether the known entry ``target`` (:meth:`began`) begins after ``said``."""
        began = self.began(target, around)
        return began is not None and said < began

    def end_within(self, target: str | int, fact: ExtractedFact, at: datetime) -> None:
        """Have ``fact``, dated ``at``, invalidate ``target`` (a known entry, or an added
        entry's place)."""
        self.steps.append(("invalidate", len(self.invalidated)))
        self.invalidated.append((target, fact, at))

    def add(
        self,
        fact: ExtractedFact,
        replaces: str | int | None,
        notes: list[str],
        index: int,
        dated: datetime | None = None,
        older_than: datetime | None = None,
    ) -> None:
        """Add an entry for ``fact``, fact ``index`` of the answer, replacing ``replaces``,
        begun when it was said or, for a change :meth:`dated` later, at ``dated``. A
        change said before ``replaces`` began (then ``older_than``) is the older value:
        it ends then and ``replaces`` follows it, as the timeline places it."""
        place = len(self.added)
        if dated is not None:
            self.dated_at[place] = dated
        if replaces is not None:
            self.steps.append(("replace", place))
            if older_than is None:
                self.followed[self.latest(replaces)] = place
            else:
                self.followed[place] = replaces
        self.added.append(fact)
        self.said_by.append(fact.source_message_ids)
        self.replaces.append(replaces)
        self.notes.append(notes)
        self.cited.append({index: fact.source_message_ids})
        if older_than is not None:
            self.ends[place] = (older_than, True)

    def in_answer_order(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` (one for each added fact) in the order the answer first listed
        them, though the plan folds the facts in the order they were said."""
        places = sorted(range(len(entries)), key=lambda place: min(self.cited[place]))
        return [entries[place] for place in places]

    def _cite(self, place: int, index: int, sources: list[str]) -> None:
        """Have the entry at ``place`` cite ``sources`` too (fact ``index`` said it),
        its citations in the order the answer listed its facts."""
        cited = self.cited[place]
        cited[index] = (*cited.get(index, ()), *sources)
        ids = dict.fromkeys(m for each in sorted(cited) for m in cited[each])
        fact = self.added[place]
        self.added[place] = ExtractedFact(fact.text, tuple(ids), fact.action, fact.target_entry_id)

    def latest(self, value: str | int) -> str | int:
        """The last value of the plan's chain through ``value`` (a known entry, or an
        added entry's place): the entry that followed it, and so on; ``value`` if none."""
        seen = {value}
        while (following := self.followed.get(value)) is not None and following not in seen:
            seen.add(following)
            value = following
        return value

    def adoptable(self, place: int, named: str | int) -> bool:
        """Whether the entry added at ``place`` may be the first statement of an update
        of ``named`` said after it, or the value before ``named``: it is not ``named``,
        and no link of the plan touches it (it replaces nothing, nothing follows it,
        nothing ended it), so linking it to ``named`` cannot close a cycle."""
        return (
            place != named
            and self.replaces[place] is None
            and place not in self.followed
            and place not in self.ends
        )

    def precede(self, place: int, follower: str | int, began: datetime, index: int) -> None:
        """Have the entry added at ``place`` (fact ``index`` of the answer), said before
        ``follower`` began at ``began``, be the value ``follower`` replaced: it keeps its
        start and ends at ``began``, as a backdated fact would (see :class:`Timeline`)."""
        self.steps.append(("replace", place))
        self.replaces[place] = follower
        self.ends[place] = (began, True)
        self.repairs.append(
            f"fact {index} is the value before {follower}, which a change to it named"
        )

    def adopt(
        self,
        place: int,
        replaces: str | int,
        after: datetime,
        sources: list[str],
        said_at: dict[str, datetime],
        index: int,
        notes: list[str],
    ) -> None:
        """Have the entry added at ``place`` be fact ``index`` of the answer, a change
        of ``replaces`` (which began at ``after``) to it, said by ``sources``: one value
        from the earlier statement, where batches of one message each would record the
        change as a second entry of it. It keeps its start, which the caller sees is after
        ``after`` and after every statement of ``replaces`` (:meth:`said_before`): a value
        said before the one it replaces precedes it instead (:meth:`precede`)."""
        merged = f"fact {index} changed to this value, said before; merged into it"
        self.steps.append(("replace", place))
        self.replaces[place] = replaces
        self.followed[self.latest(replaces)] = place
        notes = [merged, *(f"fact {index}: {n}" for n in notes)]
        self.merge(place, sources, said_at, after, notes, index)
        self.repairs.append(merged)

    def merge(
        self,
        place: int,
        sources: list[str],
        said_at: dict[str, datetime],
        after: datetime | None,
        notes: list[str],
        index: int,
    ) -> None:
        """Have the entry added at ``place`` cite ``sources`` too (fact ``index`` of the
        answer, a repeat of it, was merged), noting the merge in ``notes``: it is valid
        from when it was first stated, which is when ``sources`` said it if they were sent
        earlier (``said_at``), as it would be had the repeat come in a later batch. An
        entry that replaces another begins earlier only while it stays ``after`` the start
        of the value it replaced (``None``: it keeps its start), so a repeat cannot put it
        before that value."""
        self._cite(place, index, sources)
        self.notes[place] = [*self.notes[place], *notes]
        said = _said(sources, said_at)
        if self.replaces[place] is not None and (after is None or said <= after):
            return
        if said < self.start(place, said_at):
            self.said_by[place] = tuple(sources)


EVENT_CLASSES: tuple[type[UserLog.Event], ...] = tuple(
    value
    for name, value in vars(UserLog).items()
    if isinstance(value, type)
    and issubclass(value, UserLog.Event)
    and name not in ("Event", "Created")
)
"""Every kind of event a user's log can hold, in the order they are declared."""

_FOLLOWERS: tuple[type[UserLog.Event], ...] = (
    UserLog.KnowledgeSuperseded,
    UserLog.KnowledgeInvalidated,
    UserLog.KnowledgeEndMoved,
    UserLog.KnowledgeInvalidatedEarlier,
    UserLog.KnowledgeBeganEarlier,
    UserLog.MessagesReturned,
)


def continues_decision(event: object) -> bool:
    """Whether the log's commands write ``event`` only right after another event of the
    same decision (and commit the two together): the ends, moved ends and earlier starts
    of known entries after an extraction, a task's next batch after the outcome of its
    last, the messages a promotion returned. A decision is its first event and those
    that continue it, so a log cut before one of them holds half a decision."""
    if isinstance(event, UserLog.ProcessingStarted):
        return event.batch > 1
    return isinstance(event, _FOLLOWERS)


def _fold_covered(covered: set[str], event: object, knowledge_version: str) -> None:
    """Fold one event into the messages ``knowledge_version`` covers: a re-extraction into
    it adds its messages, a promotion of a version of that name clears them."""
    if getattr(event, "knowledge_version", None) != knowledge_version:
        return
    if isinstance(event, UserLog.KnowledgeReextracted):
        covered.update(event.message_ids)
    elif isinstance(event, UserLog.KnowledgeVersionPromoted):
        covered.clear()


def _check_distinct(ids: list[str], kind: str) -> None:
    """Raise :class:`InvalidInputError` if an id comes twice in ``ids`` (of ``kind``)."""
    seen: set[str] = set()
    for each in ids:
        if each in seen:
            raise InvalidInputError(f"{kind} id {each!r} comes twice")
        seen.add(each)


def _label(name: object, max_chars: int) -> str | None:
    """An extractor's or a model's name as the log records it beside an outcome: storable
    and cut to ``max_chars`` (what the projections' columns hold); ``None`` for no text."""
    return storable(name)[:max_chars] if isinstance(name, str) else None


def _extractor_label(name: object) -> str:
    """The extractor's name as an outcome records it: :func:`_label`, ``unknown`` for none."""
    return _label(name, MAX_EXTRACTOR_CHARS) or "unknown"


def _usage_fields(usage: TokenUsage) -> dict[str, int | None]:
    """An event's token fields from ``usage``."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }


def _check_repeated(repeated: dict[str, list[str]], message_ids: list[str]) -> None:
    """Raise :class:`InvalidInputError` unless each entry said again names messages of its
    batch, each once (whether it is an entry of the log the state does not know: the
    caller checks)."""
    batch = set(message_ids)
    for entry_id, said in repeated.items():
        if not said:
            raise InvalidInputError(f"the repeat of entry {entry_id!r} names no message")
        _check_distinct(said, "message")
        outside = [m for m in said if m not in batch]
        if outside:
            raise InvalidInputError(
                f"the repeat of entry {entry_id!r} names {outside[0]!r}, a message not of its batch"
            )


def _in_time_order(facts: Sequence[ExtractedFact], said_at: dict[str, datetime]) -> list[int]:
    """The places of ``facts`` in the order they were said (``said_at``, in the batch's
    order: messages sent at once in the order they were written), a change never before
    the earlier fact of the answer it names, and in the answer's order when they cite the
    same message: the order batches of one message each would fold them in, whatever
    order the answer lists its facts in. A change said before the fact it names waits for
    it, then takes its turn by its own time among the facts still to fold, so where the
    answer lists it decides nothing."""
    said = {m: (at, place) for place, (m, at) in enumerate(said_at.items())}
    unknown = max(said.values(), default=(datetime.min.replace(tzinfo=UTC), 0))
    own = [
        max((said[m] for m in fact.source_message_ids if m in said), default=unknown)
        for fact in facts
    ]
    waiting: dict[int, list[int]] = {}  # fact -> the later facts of the answer naming it
    for index, fact in enumerate(facts):
        earlier = fact.target_fact
        if earlier is not None and 0 <= earlier < index:
            waiting.setdefault(earlier, []).append(index)
    named = {index for changes in waiting.values() for index in changes}
    ready = [(own[index], index) for index in range(len(facts)) if index not in named]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        for change in waiting.get(index, ()):
            heapq.heappush(ready, (own[change], change))
    return order


def _said(sources: Sequence[str], said_at: dict[str, datetime]) -> datetime:
    """When the newest of ``sources`` was sent (now, if the times are not known)."""
    times = [said_at[m] for m in sources if m in said_at]
    return max(times) if times else datetime.now(UTC)


def _against_ended(
    entry_id: str,
    until: datetime,
    action: FactAction,
    said: datetime,
    notes: list[str],
    replaced: bool,
) -> FactAction:
    """What a fact said at ``said`` that repeats or changes ``entry_id`` (ended at
    ``until``, before the batch or by an earlier fact of it) does. A repeat said after
    the entry ended is that value again (noted in ``notes``): an update, placed after
    what ``replaced`` the entry, or a new entry when nothing did."""
    if action != "same" or said < until:
        return action
    notes.append(f"repeats {entry_id}, which had ended when it was said: that value again")
    return "update" if replaced else "new"


def _replaced_start(
    plan: _Plan, place: int, around: Around, said_at: dict[str, datetime]
) -> datetime | None:
    """When the value that the entry added at ``place`` replaces began (for a known one
    that had ended, when it ended: the new entry follows what came after it); ``None``
    when it replaces nothing, or a known entry whose start is not known."""
    replaced = plan.replaces[place]
    if replaced is None:
        return None
    if isinstance(replaced, int):
        return plan.start(replaced, said_at)
    if replaced in around.ended:
        return around.ended[replaced][1]
    return around.began.get(replaced)


def _same_words(text: str) -> str:
    """``text`` as facts are compared for repeats: case-folded, spacing collapsed."""
    return " ".join(text.casefold().split())


def _changes(
    plan: _Plan,
    entries: list[dict[str, Any]],
    version: str,
    said_at: dict[str, datetime],
    began: dict[str, datetime],
    replaced: Sequence[ReplacedEntry],
) -> list[tuple[type[UserLog.Event], dict[str, Any]]]:
    """The events (each kind with its fields) that end the entries the new ones replaced
    or the batch invalidated, move the ends of the ended entries a backdated one now
    follows, and begin earlier the known entries said again before they began.

    Time decides, not the order of arrival: each step places an entry (or moves a
    known one's start) in a :class:`~events.timeline.Timeline` of the batch's entries,
    the known ones it names (``began``, when known) and the chains of ended entries
    before those (``replaced``). An invalidation said before an entry began, or after
    it ended, ends nothing.
    """
    timeline = Timeline(
        {
            **began,
            **{e["entry_id"]: datetime.fromisoformat(e["valid_from"]) for e in entries},
        },
        replaced,
    )

    def entry_id(target: str | int) -> str:
        return entries[target]["entry_id"] if isinstance(target, int) else target

    for kind, index in plan.steps:
        if kind == "replace":
            replaced_entry = plan.replaces[index]
            assert replaced_entry is not None
            timeline.replace(entries[index]["entry_id"], entry_id(replaced_entry))
        elif kind == "earlier":
            known_entry, said, _ = plan.earlier[index]
            timeline.begin_earlier(known_entry, said)
        elif kind == "joins":
            timeline.replace(*plan.joins[index])
        else:
            target, fact, at = plan.invalidated[index]
            sources = list(fact.source_message_ids)
            timeline.invalidate(entry_id(target), at, fact.text, sources)
    moved = dict(timeline.moved())
    changes: list[tuple[type[UserLog.Event], dict[str, Any]]] = []
    for entry, ending in [*timeline.ended(), *moved.items()]:
        fields: dict[str, Any] = {"entry_id": entry, "knowledge_version": version}
        ended: type[UserLog.Event]
        if ending.successor is None:
            ended = UserLog.KnowledgeInvalidated
            if entry in moved:
                ended = UserLog.KnowledgeInvalidatedEarlier
            fields |= {"reason": ending.reason, "source_message_ids": ending.sources}
        else:
            ended = UserLog.KnowledgeEndMoved if entry in moved else UserLog.KnowledgeSuperseded
            fields |= {"superseded_by": ending.successor}
        changes.append((ended, {**fields, "valid_until": ending.at}))
    cited: dict[str, list[str]] = {}
    for target, _, sources in plan.earlier:
        cited.setdefault(target, []).extend(sources)
    for entry, start in timeline.begun_earlier():
        changes.append(
            (
                UserLog.KnowledgeBeganEarlier,
                {
                    "entry_id": entry,
                    "knowledge_version": version,
                    "valid_from": start,
                    "source_message_ids": list(dict.fromkeys(cited[entry])),
                },
            )
        )
    return changes


def _entries(plan: _Plan, said_at: dict[str, datetime]) -> list[dict[str, Any]]:
    """Knowledge entries for the facts ``plan`` adds, each with a new id, the time it
    became valid and (when there were any) the repairs made to it."""
    entries = []
    for place, (fact, notes) in enumerate(zip(plan.added, plan.notes, strict=True)):
        entry: dict[str, Any] = {
            "entry_id": str(uuid4()),
            "text": fact.text,
            "source_message_ids": list(fact.source_message_ids),
            "valid_from": plan.start(place, said_at).isoformat(),
        }
        if notes:
            entry["repairs"] = notes
        entries.append(entry)
    return entries
