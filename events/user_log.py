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

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate
from uuid_utils import uuid7

from events.batch_plan import Plan, plan_facts, same_words
from events.checks import (
    MAX_EXTRACTOR_CHARS,
    MAX_MODEL_CHARS,
    MAX_TOKENS,
    check_message,
    check_name,
    check_text,
    check_time,
    check_unmistakable,
    storable,
)
from events.errors import (
    AlreadyReextractedError,
    ConflictError,
    InvalidInputError,
    UnknownTaskError,
    echoed,
)
from events.extraction import (
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    KnownEntry,
    TokenUsage,
    estimate_tokens,
    halved_caps,
)
from events.harmless import (
    Answered,
    Busy,
    CheckVerdict,
    CredentialsRefused,
    FailedTellingNothing,
    ModelOrPathNotFound,
    Outage,
)
from events.timeline import Around, ReplacedEntry, Timeline

__all__ = [
    "DEFAULT_LIMITS",
    "EVENT_CLASSES",
    "LIVE_KNOWLEDGE",
    "MAX_VERSION_CHARS",
    "WHOLE_FAILURES_IN_A_ROW",
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


WHOLE_FAILURES_IN_A_ROW = 3
"""The most failures in a row of a user's batches that may leave their batch whole (the
API down for every call): the next one splits its batch whatever the extraction workers
said, so that no judgement of theirs (a harmless request misread, another batch's
failure, a refused account, a pause) can keep one message's failures from freeing the
messages beside it for good. A batch extracted, or a failure that split it, ends the row.
Three keeps a batch whole through an outage's first three failed runs, and costs a batch
that fails of its own, misjudged, three runs more per split. A snapshot an earlier memvee
wrote starts the row at none (it kept no count), where a replay of the same events may
count up to three: at most three more runs kept whole, each decision stored in its event."""


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
    alone, with the failures counted against them); ``failed_whole`` (the failures in a
    row that left their batch whole); ``failed_last`` (the last task to end ended FAILED, a
    crash's or shutdown's cut too) and ``refused_last`` (on a failure that waiting does
    not make pass: :attr:`ProcessingFailed.refused`); ``quarantined`` messages; the
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
            if self.message_ids:
                log.failed_whole = 0
            log.knowledge_count += len(self.entries)
            for entry in self.entries:
                log.valid_entries[entry["entry_id"]] = LIVE_KNOWLEDGE
            if self.final:
                log.running.pop(self.task_id, None)
                log.failed_last = log.refused_last = False
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
            log.failed_whole = 0

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
            log.failed_whole = 0
            for message_id in self.message_ids:
                log.quarantined[message_id] = batch[message_id]
                log.caps.pop(message_id, None)
                log.parked.pop(message_id, None)
            if self.final:
                log.running.pop(self.task_id, None)
                log.failed_last = log.refused_last = False

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

    class ReextractionChecked(Aggregate.Event):
        """What the harmless request showed that a re-extraction run sent once two calls
        in a row failed in a way that may pass (the run stops), recorded after the second
        failed call: the ``failed_calls`` it judges (each call's message ids, the earlier
        first), whether the API was down (``outage``: it failed too, so neither failed call
        is evidence against its messages) or refused the API key or its permissions
        (``refused``: a 401 or 403, every request refused, so neither is either; stored only
        when true, absent from events recorded before it, and stored with ``outage`` so that
        an older memvee leaves the calls out too) or answered that what the requests name is
        not found (``not_found``: a 404, a model retired or misspelt or a base URL's wrong
        path, every request refused so, so neither is either; stored only when true, and
        with ``outage``, which an older memvee reads as an outage, leaving the calls out as
        this one does), else the ``error`` that made it tell nothing (it failed in a way
        that would repeat, or the API was ``busy``: rate limited or asked to wait; stored
        only when true, absent from events recorded before it, which read back as failures
        telling nothing, as they always did), and what it cost, for ``memvee stats``. A
        refused or not found check keeps its ``error`` too, saying which refusal it met or
        what was not found. The ``reextract --batch-api`` fallback's harmless request after
        a lone failed call, and a probe of a Message Batch's refusal whose request's failure
        was not kept (another run recorded it first), are kept so for what they cost alone:
        they name no failed call, so they change no evidence. :attr:`verdict` reads the
        flags as one :data:`events.harmless.CheckVerdict`. An older memvee reads a busy
        check, without ``busy``, as a failure telling nothing, which it is for the calls."""

        knowledge_version: str
        failed_calls: list[list[str]]
        outage: bool
        error: str | None = None
        refused: bool = False
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None
        busy: bool = False
        not_found: bool = False

        @property
        def verdict(self) -> CheckVerdict:
            """How the request fared, read off the stored flags (of any memvee's events): a
            busy API that a memvee before ``busy`` stored reads back as a failure telling
            nothing, which it is for the calls."""
            told = (self.error or "").strip()
            if self.not_found:
                return ModelOrPathNotFound(told or "HTTP 404")
            if self.refused:
                return CredentialsRefused(told or "HTTP 401 or 403")
            if self.outage:
                return Outage()
            if told:
                return Busy(told) if self.busy else FailedTellingNothing(told)
            return Answered()

        def apply(self, log: UserLog) -> None:
            pass

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
        met a fault, so the failure counts against that message as well. ``whole`` says
        the API was down for every call (a harmless request failed too, or the batch was
        held unsent): the batch returns unsplit, one more failure in a row left whole
        (:data:`WHOLE_FAILURES_IN_A_ROW`); it is stored only when true, so an older memvee
        reads every other failure without a field it does not know. ``refused`` says
        the API refused the request's credentials, what it names or every request (a
        harmless one too): waiting does not make that pass, so a reopened Memory does not
        retry the task (:attr:`UserLog.refused_last`); stored only when true, as ``whole``.
        The tokens are what the failed calls spent, if any did (an answer cut at its
        budget, then a failed re-ask; a harmless request).
        """

        task_id: str
        error: str
        blamed: bool = False
        whole: bool = False
        refused: bool = False
        extractor: str | None = None
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None

        def apply(self, log: UserLog) -> None:
            returned = log.return_to_buffer(self.task_id)
            if self.whole:
                log.failed_whole += 1
            else:
                log.note_failure(returned, counted=self.blamed)
                log.failed_whole = 0
            log.running.pop(self.task_id, None)
            log.failed_last, log.refused_last = True, self.refused

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
            log.failed_last, log.refused_last = True, False

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
        self.failed_whole = 0
        self.failed_last = False
        self.refused_last = False

    def upgrade(self) -> bool:
        """Fill state that snapshots taken by an older memvee lack; returns whether the
        state is whole, ``False`` when only the events before the snapshot can tell how the
        last task ended (the store then replays the log from its first event).

        Snapshots of the first memvees hold no processing requests nor knowledge versions:
        there were none then.
        Entries valid before the knowledge lifecycle are then unknown to the log, so an
        update naming one is recorded as a new entry: nothing is lost, only not linked.
        Messages buffered before bounded batches weigh nothing in a batch's token budget.
        When the latest end of an entry is not known, every batch may be backdated.
        Failures left whole before are not counted: the row starts anew.
        The last task's end is not known (``failed_last``, ``refused_last``): they are set
        to a run that neither failed nor was refused, and the state is not whole, unless
        the snapshot kept a refusal (a refused run failed).
        The Message Batches requests recorded before are not known: a bulk batch kept
        across the upgrade is collected as if none of it were recorded.
        """
        names = ("valid_entries", "weights", "caps", "parked", "quarantined", "running")
        for name in ("requested", "knowledge_versions", *names, "reextraction_requests"):
            if not hasattr(self, name):
                setattr(self, name, {})
        if not hasattr(self, "latest_end"):
            self.latest_end = UNKNOWN_END
        if not hasattr(self, "quiet_task"):
            self.quiet_task, self.quiet_at = None, 0
        if not hasattr(self, "failed_whole"):
            self.failed_whole = 0
        whole = hasattr(self, "failed_last") or getattr(self, "refused_last", False)
        if not hasattr(self, "refused_last"):
            self.refused_last = False
        if not hasattr(self, "failed_last"):
            self.failed_last = self.refused_last
        return whole

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
    def keeps_failures_whole(self) -> bool:
        """Whether a failure that leaves its batch whole may do so now: fewer than
        :data:`WHOLE_FAILURES_IN_A_ROW` failures did in a row (:attr:`failed_whole`)."""
        return self.failed_whole < WHOLE_FAILURES_IN_A_ROW

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
        that failed alone is parked, the failure counted against it when ``counted``, and
        goes last among the parked messages' turns (see :meth:`_next_batch`)."""
        ordered = sorted(batch, key=batch.__getitem__)
        if len(ordered) == 1:
            (message_id,) = ordered
            self.parked[message_id] = self.parked.pop(message_id, 0) + int(counted)
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
            _check_repeated(event.repeated or {}, event.message_ids, event.entries)

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
        return self.add_checked_message(role, content, check_time(sent_at, "sent_at"), name)

    def add_checked_message(
        self, role: str, content: str, sent_at: datetime | None, name: str | None = None
    ) -> str:
        """:meth:`add_message` for a message its caller already checked as it does (memvee's
        Memory checks every write on the caller's loop, before it reaches the actor), with
        ``sent_at`` in UTC (``None``: the event's timestamp): the same input is not checked
        twice on every write.

        The event of every write, so built as ``trigger_event`` builds it less its generic
        steps (copying and checking the arguments, the frozen dataclass's keyword
        ``__init__``, and the checks of ``mutate`` that an event made from the log's own
        id and version passes): its fields set one by one, in the order that ``__init__``
        sets them (a test compares the two events), which saves about a fifth of deciding
        an exchange."""
        event_class = self.MessageAdded
        event = object.__new__(event_class)
        version = self.version + 1
        timestamp = event_class.create_timestamp()
        if sent_at is None:
            sent_at = timestamp if timestamp.tzinfo is UTC else timestamp.astimezone(UTC)
        message_id = new_message_id()
        set_field = object.__setattr__  # not vars(event): a dict each event would keep
        set_field(event, "originator_id", self.id)
        set_field(event, "originator_version", version)
        set_field(event, "timestamp", timestamp)
        set_field(event, "message_id", message_id)
        set_field(event, "seq", self.message_count + 1)
        set_field(event, "role", role)
        set_field(event, "content", content)
        set_field(event, "sent_at", sent_at)
        set_field(event, "name", None if name is None else name.strip())
        event.apply(self)
        self.version = version
        self.modified_on = timestamp
        self._pending_events.append(event)
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
        whole: bool = False,
        refused: bool = False,
        usage: TokenUsage = _NO_USAGE,
        extractor: str | None = None,
        model: str | None = None,
        limits: BatchLimits = DEFAULT_LIMITS,
    ) -> list[str]:
        """The running batch of ``task_id`` failed with ``error``; returns what was quarantined.

        An error that ``repeats`` (the same batch would fail again) splits the batch and the
        task goes on; any other error ends the task FAILED, its batch back in the buffer
        and split for the next run, or ``whole`` when the API was down for every call (an
        outage halves no batch), unless :data:`WHOLE_FAILURES_IN_A_ROW` failures in a row
        were left whole already (:attr:`keeps_failures_whole`): then it is split all the
        same, so that no batch stays whole for good. A message that failed alone
        ``limits.max_attempts`` times (errors that repeat, or that were ``blamed`` on it)
        is quarantined instead. ``refused`` marks a failure that waiting does not make
        pass (:attr:`ProcessingFailed.refused`). ``usage``, ``extractor`` and ``model``
        record what the failed calls spent.
        """
        claimed = self._open_task(task_id)
        error = storable(error) if error else "unknown error"
        whole = whole and self.keeps_failures_whole
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
                self.ProcessingFailed,
                task_id=task_id,
                error=error,
                blamed=blamed,
                whole=whole,
                refused=refused,
                **tokens,
            )
        return []

    def requeue(self, message_ids: Iterable[str] | None = None) -> list[str]:
        """Put quarantined messages (by default all of them) back in the buffer."""
        chosen = list(self.quarantined if message_ids is None else dict.fromkeys(message_ids))
        unknown = [m for m in chosen if m not in self.quarantined]
        if unknown:
            raise InvalidInputError(
                f"user {self.user_id!r} has no quarantined message {echoed(unknown[0])}"
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

    def record_reextraction_check(
        self,
        knowledge_version: str,
        failed_calls: Sequence[Sequence[str]],
        usage: TokenUsage,
        verdict: CheckVerdict,
        *,
        extractor: str | None = None,
        model: str | None = None,
    ) -> None:
        """Record what the harmless request sent after the ``failed_calls`` of a stopped
        run showed, its ``verdict`` (see :class:`ReextractionChecked`): naming the calls,
        rather than taking the last ones logged, keeps two runs of the user at once apart.
        The event keeps the flags every memvee reads; an outage keeps no error."""
        self.check_version_name(knowledge_version)
        error = None if isinstance(verdict, Answered | Outage) else verdict.error
        self.trigger_event(
            self.ReextractionChecked,
            knowledge_version=knowledge_version,
            failed_calls=[list(ids) for ids in failed_calls],
            outage=verdict.blames_no_message,
            error=storable(error) if error else None,
            refused=isinstance(verdict, CredentialsRefused),
            busy=isinstance(verdict, Busy),
            not_found=isinstance(verdict, ModelOrPathNotFound),
            extractor=_label(extractor, MAX_EXTRACTOR_CHARS),
            model=_label(model, MAX_MODEL_CHARS),
            **_usage_fields(usage),
        )

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
        around = Around(known, replaced, valid, same_words)
        plan = plan_facts(facts, frozenset(message_ids), fallback, known, said_at, around)
        entries = _entries(plan, said_at)
        placed = {link.entry_id for link in replaced}
        heads = [  # ended entries shown with no link given: the last values of their chains
            ReplacedEntry(k.entry_id, k.valid_from, k.valid_until, None)
            for k in known
            if k.valid_until is not None and k.entry_id not in placed
        ]
        changes = _changes(plan, entries, version, said_at, around.began, [*replaced, *heads])
        repeated = plan.said_again_apart(entries)
        entries = plan.in_answer_order(entries)
        self.trigger_event(
            event,
            entries=entries,
            repairs=plan.repairs or None,
            repeated=repeated or None,
            followed_by=len(changes) + after,
            **_usage_fields(usage),
            **fields,
        )
        for kind, change in changes:
            self.trigger_event(kind, **change)
        return entries

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

    def left_out_of(self, knowledge_version: str, history: Iterable[Any]) -> set[str]:
        """The messages ``knowledge_version``'s re-extraction left out, read off ``history``
        (this log's events; since a version of the same name was promoted, if one was):
        each failed in a call of its own, of its own, once pinned to a call of its own
        (:meth:`failed_reextraction`). Sending one again costs a call that fails."""
        events = list(history)
        alone: set[str] = set()
        for e in events:
            if getattr(e, "knowledge_version", None) != knowledge_version:
                continue
            if isinstance(e, self.KnowledgeVersionPromoted):
                alone.clear()
            elif (
                isinstance(e, self.ReextractionFailed)
                and len(e.message_ids) == 1
                and (e.repeats or getattr(e, "blamed", False))
            ):
                alone.update(e.message_ids)
        return alone & self.failed_reextraction(knowledge_version, events)

    def reextraction_calls(
        self, knowledge_version: str, history: Iterable[Any]
    ) -> list[tuple[tuple[str, ...], bool]]:
        """``knowledge_version``'s re-extraction calls read off ``history`` (since a version
        of the same name was promoted, if one was), in order: each call's messages, and
        whether it failed in a way that may pass (else the API answered it). The evidence
        a run weighs before blaming a message for failures that may pass. The two failed
        calls a :class:`ReextractionChecked` names as met in an ``outage`` (the API failed
        a harmless request after them) or with the API key ``refused`` (it refused a harmless
        request's credentials) are left out, found by their messages whatever was logged
        between (another run of the user): they tell nothing of their messages, and split no
        batch of them for good."""
        calls: list[tuple[tuple[str, ...], bool]] = []
        for e in history:
            if getattr(e, "knowledge_version", None) != knowledge_version:
                continue
            if isinstance(e, self.ReextractionChecked):
                if e.verdict.blames_no_message:
                    for ids in e.failed_calls:
                        _forget_failed_call(calls, tuple(ids))
            elif isinstance(e, self.KnowledgeReextracted | self.ReextractionFailed):
                calls.append((tuple(e.message_ids), getattr(e, "may_pass", False)))
            elif isinstance(e, self.KnowledgeVersionPromoted):
                calls.clear()
        return calls

    def reextraction_caps(self, knowledge_version: str, history: Iterable[Any]) -> dict[str, int]:
        """The most messages each message of ``knowledge_version``'s calls that failed in a
        way that may pass is sent with (read as :meth:`reextraction_calls`): half its
        failed batch, so that a run that stopped goes on splitting where it stopped, as
        live extraction splits a failed batch for the next try; one for a lone message."""
        calls = self.reextraction_calls(knowledge_version, history)
        return halved_caps(message_ids for message_ids, failed in calls if failed)

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
        failed alone) wait until nothing else is left, then go one at a time, taking
        turns (the one that failed alone longest ago first), so that no message blocks
        the ones after it, nor one that keeps failing in a way never blamed on it (an
        overloaded API) another parked message.
        """
        batch: list[str] = []
        parked: list[str] = []
        cap, tokens = limits.max_messages, 0
        for message_id, version in self.pending.items():
            if version >= scope:
                break
            if message_id in self.parked:
                parked.append(message_id)
                continue
            cap = min(cap, self.caps.get(message_id, cap))
            weight = self.weights.get(message_id, 0)
            if limits.full(len(batch), tokens, weight, cap):
                break
            batch.append(message_id)
            tokens += weight
        if not batch and parked:
            turns = {message_id: turn for turn, message_id in enumerate(self.parked)}
            return [min(parked, key=turns.__getitem__)]
        return batch


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


def _forget_failed_call(calls: list[tuple[tuple[str, ...], bool]], ids: tuple[str, ...]) -> None:
    """Drop the last call of ``ids`` from ``calls`` that failed in a way that may pass."""
    for at in range(len(calls) - 1, -1, -1):
        if calls[at] == (ids, True):
            del calls[at]
            return


def _usage_fields(usage: TokenUsage) -> dict[str, int | None]:
    """An event's token fields from ``usage``."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }


def _check_repeated(
    repeated: dict[str, list[str]], message_ids: list[str], entries: Sequence[dict[str, Any]]
) -> None:
    """Raise :class:`InvalidInputError` unless each entry said again names messages of its
    batch, each once, none a source of that entry when the same event adds it (a source
    is not words said again; whether it is an entry of the log the state does not know:
    the caller checks)."""
    batch = set(message_ids)
    sources = {entry["entry_id"]: set(entry["source_message_ids"]) for entry in entries}
    for entry_id, said in repeated.items():
        if not said:
            raise InvalidInputError(f"the repeat of entry {entry_id!r} names no message")
        _check_distinct(said, "message")
        outside = [m for m in said if m not in batch]
        if outside:
            raise InvalidInputError(
                f"the repeat of entry {entry_id!r} names {outside[0]!r}, a message not of its batch"
            )
        own = [m for m in said if m in sources.get(entry_id, ())]
        if own:
            raise InvalidInputError(
                f"the repeat of entry {entry_id!r} names {own[0]!r}, one of its own sources"
            )


def _changes(
    plan: Plan,
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


def _entries(plan: Plan, said_at: dict[str, datetime]) -> list[dict[str, Any]]:
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
