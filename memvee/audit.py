"""Audit and replay: read a memory's event log, and its state at any point of it.

The log is the single source of truth, so everything here is computed from it (or from
projections that ``verify`` proves equal to it), never from side tables. Works on a
database no Memory has open, or beside one.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import random
import shlex
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from inspect import isawaitable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, assert_never

from sqlalchemy import Connection, inspect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from actors import (
    THE_APIS_STATE,
    CircuitBreaker,
    EveryBatchRefused,
    ExtractorNotAsync,
    TraceScrubber,
    tells_down,
)
from actors import harmless_request as harmless_request  # the bulk module takes it from here
from actors.erasure import ForgetReceipt, erase_user
from actors.lease import LeaseTable, new_owner_id
from events import (
    AlreadyReextractedError,
    Answered,
    BatchLimits,
    BatchMessage,
    Busy,
    CheckVerdict,
    ConflictError,
    CredentialsRefused,
    EventStore,
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    Extractor,
    FailedTellingNothing,
    InvalidInputError,
    KnownEntry,
    MemveeError,
    ModelOrPathNotFound,
    NotFoundError,
    Outage,
    Recorded,
    RejectedBatchError,
    ReplacedEntry,
    StorageError,
    TokenUsage,
    UserLog,
    as_seconds,
    bounded,
    check_count,
    check_db_path,
    check_extractor,
    check_flag,
    check_key,
    check_keys,
    check_listing,
    check_new_user_id,
    check_text,
    check_user_id,
    check_user_ids,
    sqlite_url,
)
from events.errors import (
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    NewerEventError,
    echoed,
    echoed_repr,
    first_line,
    repeats,
)
from events.imported import ImportReplay, check_fields
from events.store import PAST_ANY_VERSION, exported_state
from events.transcoding import full_topic, known_topic
from events.user_log import (
    DEFAULT_LIMITS,
    LIVE_KNOWLEDGE,
    check_knowledge_version,
    check_new_knowledge_version,
    continues_decision,
    user_log_id,
)
from memvee._config import DEFAULT_ALPHA, SEARCH_EMBED_SECONDS, check_alpha
from memvee._event_lines import EVENT_TYPES, describe
from memvee._held_run import HeldRun
from memvee._log_redaction import protect_own_loggers
from memvee._retrieval import RetrievalResult, Retriever, check_query
from memvee._secrets import shown_error
from memvee.embedders import Embedder
from memvee.embedders._choice import contained_embedder
from memvee.extractors._credentials import check_credentials
from projections import (
    KnowledgeEntry,
    Message,
    ProjectionReader,
    ProjectionTables,
    Projector,
    QuarantinedMessage,
    UserState,
    UserSummary,
    alone_while_upgrading,
    bring_up_to_date,
    index_messages,
    refold_now_readable,
    refuse_unfolded,
    refuse_while_rebuilding,
    replay_checkpoints,
    state_at,
)
from projections.ranking import LexicalRanker
from projections.shown import ByMeaning, shown_beside, targets_of, with_targets
from projections.vectors import VectorIndex

if TYPE_CHECKING:
    from memvee._bulk import BulkReport
    from memvee.extractors import ClaudeExtractor

__all__ = [
    "DIRECT_LIMIT",
    "MAX_USERS_PAGE",
    "Answered",
    "Audit",
    "BulkReport",
    "Busy",
    "CheckVerdict",
    "Comparison",
    "CredentialsRefused",
    "FailedTellingNothing",
    "HarmlessCheck",
    "LoggedEvent",
    "ModelOrPathNotFound",
    "Outage",
    "Provenance",
    "ReextractionReport",
    "SourceMessage",
]

log = logging.getLogger("memvee.audit")


if not TYPE_CHECKING:  # a type checker reads the import above, and checks every name

    def __getattr__(name: str) -> Any:
        """:class:`BulkReport`, what :meth:`Audit.reextract_in_bulk` returns, imported when
        it is first named: its module brings the Anthropic SDK, which an Audit that never
        re-extracts in bulk should not pay for."""
        if name == "BulkReport":
            from memvee._bulk import BulkReport

            return BulkReport
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        """The module's names, :class:`BulkReport` among them before it is loaded."""
        return sorted({*globals(), "BulkReport"})


T = TypeVar("T")

MAX_USERS_PAGE = 10_000
"""The most users :meth:`Audit.users` returns in one page."""

DIRECT_LIMIT = 200
"""The most messages a ``reextract --batch-api`` run sends through the Messages API at full
price when their Message Batch failed whole twice (the rest wait for the next run): an
outage of Message Batches alone does not send a whole backlog at twice the price at once."""

IMPORTED_PER_COMMIT = 1000
"""The events an import appends a transaction (run on to the end of a decision), so that
the application's writes are not held off for a whole log."""

_HIDDEN = {"originator_id", "originator_version", "timestamp", "originator_topic"}


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a user's log: its version, when it was recorded, its type and data."""

    version: int
    recorded_at: datetime
    type: str
    payload: dict[str, Any]
    summary: str = ""


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """A message a knowledge entry came from, with its text; ``name`` is its speaker's, if
    given (who in a group said it, as ``memvee log`` shows)."""

    message_id: str
    seq: int
    role: str
    content: str
    sent_at: datetime
    name: str | None = None


LISTED_REPEATS = 50
"""How many of the messages that said an entry again ``explain`` lists (the newest): an
entry said thousands of times stays a few lookups, under any database's parameter limit."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """How a knowledge entry came to be: its words, its task and batch, its extractor.

    ``batch`` lists the messages of the batch it was extracted from, and ``repairs`` what
    the engine fixed in the extractor's answer to record it. ``replaced_by`` is the chain
    of entries that superseded it (nearest first), ``supersedes`` the entries it replaced;
    ``valid_until`` and ``ended_reason`` say when and why it stopped being valid.
    ``trigger`` says what asked for its task, or for an entry of a re-extraction (no
    task), which re-extraction recorded it. ``repeated_by`` lists the later messages that
    said it again while it held (the newest :data:`LISTED_REPEATS` of them, oldest first, of
    ``repeated_count`` in all): no sources of it, but outdated once it ends after them.
    """

    entry_id: str
    user_id: str
    text: str
    messages: list[SourceMessage]
    task_id: str
    trigger: str
    batch: list[str]
    extractor: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    extracted_at: datetime
    version: int
    replaced_by: list[str]
    supersedes: list[str]
    valid_from: datetime
    valid_until: datetime | None
    ended_reason: str | None
    repairs: list[str] = field(default_factory=list)
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    repeated_by: list[SourceMessage] = field(default_factory=list)
    repeated_count: int = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two knowledge versions of a user side by side, by entry text, copies counted: the
    texts only one holds, those both hold, and each copy of a text one version holds
    beyond the other's count (or beyond one, where the other holds none), so a version
    holding each entry twice never compares equal to one holding it once."""

    only_in_a: list[str]
    only_in_b: list[str]
    in_both: list[str]
    extra_in_a: list[str] = field(default_factory=list)
    extra_in_b: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, a: Iterable[str], b: Iterable[str]) -> Comparison:
        """Compare the entry texts of two versions as multisets."""
        first, second = Counter(a), Counter(b)
        return cls(
            sorted(first.keys() - second.keys()),
            sorted(second.keys() - first.keys()),
            sorted(first.keys() & second.keys()),
            _surplus(first, second),
            _surplus(second, first),
        )


def _surplus(held: Counter[str], other: Counter[str]) -> list[str]:
    """Each copy of a text ``held`` more times than ``other`` holds it (at least once)."""
    return sorted((held - Counter({t: max(other[t], 1) for t in held})).elements())


@dataclass(frozen=True, slots=True)
class HarmlessCheck:
    """The harmless request a re-extraction run sent before it stopped: how it fared
    (``verdict``: answered, an outage, its credentials refused, busy, or a failure telling
    nothing, each with its error where it has one) and what it cost (``usage``). One value,
    so that no report holds a verdict without a request, or a request without one."""

    verdict: CheckVerdict
    usage: TokenUsage


@dataclass
class ReextractionReport:
    """What a re-extraction of one user did: the ``entries`` it extracted, the messages
    it ``left_out`` of the version (each failed alone, the same way every time), with
    why, and those ``recorded_elsewhere`` (by another run at once). A message left out
    goes back to the buffer when the version is promoted."""

    entries: int = 0
    left_out: dict[str, str] = field(default_factory=dict)
    recorded_elsewhere: list[str] = field(default_factory=list)
    """Messages another run recorded into the version while this one extracted them (two
    runs of the user at once): this run's answer for them was not recorded."""
    check: HarmlessCheck | None = None
    """The harmless request a run sends once two calls in a row failed in a way that may
    pass, before it stops (``None``: none was sent): how it fared, one
    :data:`CheckVerdict`, and what it cost, counted in ``memvee stats`` with the failed
    calls."""

    def check_finding(self) -> str | None:
        """What the harmless request sent before the run stopped showed, and cost, in a
        sentence (``None``: none was sent)."""
        if self.check is None:
            return None
        usage = self.check.usage
        tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
        verdict = self.check.verdict
        match verdict:
            case Outage():
                return (
                    f"a harmless request failed too ({tokens} tokens): the API is down, and "
                    "the failed calls split no batch for the runs after"
                )
            case CredentialsRefused(error=error):
                return (
                    f"a harmless request's credentials were refused too ({tokens} tokens: "
                    f"{error}): the API key or its permissions are refused for every "
                    "request, and the failed calls split no batch for the runs after"
                )
            case ModelOrPathNotFound(error=error):
                return (
                    f"a harmless request was answered not found too ({tokens} tokens: {error}): "
                    "the model, or the base URL's path, is not found for every request, and "
                    "the failed calls split no batch for the runs after"
                )
            case Busy(error=error) | FailedTellingNothing(error=error):
                return (
                    f"a harmless request failed in a way that tells nothing ({tokens} tokens: "
                    f"{error}): the next run splits the failed calls' batches"
                )
            case Answered():
                return (
                    f"a harmless request was answered ({tokens} tokens): the failed calls are "
                    "their messages', whose batches the next run splits"
                )
            case _:
                assert_never(verdict)


@dataclass
class _Reextraction:
    """One run of :meth:`Audit.reextract`: its user, extractor, version and report, the
    batches still to send, and the ``breaker`` that weighs the evidence (the version's
    calls before this run, then this run's): whether a message keeps failing while other
    calls are answered, and whether a refusal is of every batch (the account's)."""

    user_id: str
    extractor: Extractor
    version: str
    meaning: ByMeaning
    report: ReextractionReport = field(default_factory=ReextractionReport)
    planned_at: int = 0
    """The log's version the run was planned at, when the version covered none of it."""
    limits: BatchLimits = DEFAULT_LIMITS
    blamed: Counter[str] = field(default_factory=Counter)
    """Each message's lone failures that may pass blamed on it (the log's, then this run's)."""
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    todo: deque[list[BatchMessage]] = field(default_factory=deque)
    last_failed: tuple[str, ...] | None = None
    """The messages of this run's last call, if it failed in a way that may pass (and was
    not blamed)."""

    def weigh(self, message_ids: Sequence[str], failed: bool) -> bool:
        """Count a call of ``message_ids`` with the breaker: answered, or failed in a way
        that may pass; returns whether such a failure of a lone message is its own (see
        :meth:`CircuitBreaker.blame`). The same for this run's calls as for the log's."""
        if not failed:
            self.breaker.accepted()
            return False
        self.breaker.failed()
        if len(message_ids) == 1:
            blamed = self.breaker.blame(message_ids[0])
            self.blamed[message_ids[0]] += blamed
            return blamed
        self.breaker.suspect(message_ids)
        return False

    def gives_up(self, message_id: str) -> bool:
        """Whether ``message_id`` failed alone of its own as often as live extraction
        lets a message fail before quarantining it (:meth:`BatchLimits.gives_up`)."""
        return self.limits.gives_up(self.blamed[message_id])

    def later(self, *batches: list[BatchMessage]) -> None:
        """Send ``batches`` after the next batch due (at once when none is): an answer to
        another call between tells their failure from the API's."""
        at = min(1, len(self.todo))
        for batch in reversed(batches):
            self.todo.insert(at, batch)


def verdict_of(failed: Exception | None, extractor: object) -> CheckVerdict:
    """How a harmless request ``extractor`` sent that ``failed`` (``None``: answered)
    fared, by the background's rule (:func:`actors.tells_down`): its credentials refused,
    the model or the base URL's path not found (a 404: every request refused so, the API
    up), the API down, or a failure that tells nothing (busy unless it would repeat). The
    error is told as :func:`memvee._secrets.shown_error` shows it: it is logged and
    stored."""
    if failed is None:
        return Answered()
    said = f"{type(failed).__name__}: {shown_error(failed, extractor)}"
    if isinstance(failed, ExtractorAccessRefusedError):
        return CredentialsRefused(said)
    if isinstance(failed, ExtractorNotFoundError):
        return ModelOrPathNotFound(said)
    if tells_down(failed):
        return Outage()
    return FailedTellingNothing(said) if repeats(failed) else Busy(said)


def record_check(
    decide: Callable[..., Any],
    user_id: str,
    version: str,
    failed_calls: Sequence[Sequence[str]],
    usage: TokenUsage,
    verdict: CheckVerdict,
    extractor: Extractor,
) -> None:
    """Keep a harmless request in ``user_id``'s log (:class:`UserLog.ReextractionChecked`):
    what it showed (``verdict``) of the ``failed_calls`` it judges, and what it cost, for
    ``memvee stats``. One naming no failed call (a cost of its own: the bulk fallback's,
    or a probe whose request's failure was not kept) is no evidence, so it is kept only
    when it spent something. ``decide`` appends to the log (``Audit._decide``); a failure
    to keep it (the user forgotten meanwhile) is logged, not raised: the run goes on."""
    spent = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)
    if not failed_calls and not any((*spent, usage.cache_write_tokens)):
        return

    def record(user_log: UserLog) -> None:
        user_log.record_reextraction_check(
            version,
            failed_calls,
            usage,
            verdict,
            extractor=getattr(extractor, "name", type(extractor).__name__),
            model=getattr(extractor, "model", None),
        )

    try:
        decide(user_id, record, ())
    except MemveeError as failed:
        log.warning(
            "user %r: a harmless request's finding was not recorded (%s)",
            user_id,
            first_line(failed),
        )


_MOST_NAMED = 10
"""How many users an import's error names one by one; past that, how many, the first and
the last imported."""


def _named(user_ids: list[str]) -> str:
    """``user_ids`` (in the order they were imported, a user again for each later run of
    lines) as an error names them: each once for a few, the count with the first and the
    last imported for more, so the error stays one readable line."""
    users = list(dict.fromkeys(user_ids))
    if len(users) <= _MOST_NAMED:
        return ", ".join(map(repr, users))
    return f"{len(users):,} users, the first {user_ids[0]!r}, the last {user_ids[-1]!r}"


def require_projections(store: EventStore, tables: ProjectionTables) -> None:
    """Refuse a memvee log whose projections were never made (written by the event store
    alone, say), with what to do about it, instead of failing on a missing table."""
    with store.engine.connect() as connection:
        found = inspect(connection).has_table(tables.users.name)
    if not found:
        raise NotFoundError(
            f"{store.safe_url} holds a memvee log but no projections: `memvee rebuild` makes them"
        )


def catch_up_if_behind(store: EventStore, tables: ProjectionTables) -> None:
    """Bring projections made by an older version of memvee (or short of the log) up to
    date, as a Memory's open does, before they are read or written: refolded whole from
    the log (a SQLite index of layout 16 is only marked again in place). Up-to-date ones
    are only read, so a read-only database stays readable, but for a log left unfolded
    for an event type this memvee now knows (it was upgraded), refolded so that its user
    is served. Ones being rebuilt are left to the rebuild, with a warning that they hold
    part of the log."""
    projector = Projector(tables)
    with store.engine.connect() as connection:
        log_end = store.max_position(connection)
        state = projector.state(connection)
        behind = not projector.layout_current(connection) or (
            not state.rebuilding and state.position < log_end
        )
    if state.rebuilding and not behind:
        log.warning(
            "the projections are being rebuilt (at event %d of %d): until that ends they "
            "hold part of the log",
            state.position,
            log_end,
        )
    if behind:
        folded = bring_up_to_date(store, tables)
        log.warning("projections were behind the log; folded %d events", folded)
    elif not state.rebuilding:
        try:
            refold_now_readable(store, tables)  # a log left for a newer event, now upgraded
        except (DBAPIError, StorageError) as error:  # a read-only file: served as it is
            log.warning(
                "a log left unfolded could not be refolded now (%s); its user stays refused",
                first_line(error),
            )


_WENT_ON = (
    ": it holds the lines before that one, then goes on otherwise (the file was changed, "
    "or the log was written to after an import of it stopped, such as by a Memory opened "
    "meanwhile closing the task that import left open, as after a crash; `memvee forget "
    "{0}` and import again)"
)
"""What a refused import adds when the log here began as the file's lines: how it may
have come apart from them, and the way out."""


def _check_storable(value: Any, where: str) -> None:
    """Raise :class:`InvalidInputError` if any text in ``value`` (an exported event's
    state, its lists and objects walked) is one no database can store: checked with the
    rest of a user's lines, so none of them is stored (a NUL, refused by PostgreSQL alone,
    and a lone surrogate, by every encoder)."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, where)
            _check_storable(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, where)


def _check_database_file(db_path: str) -> None:
    """Refuse a ``db_path`` that names no file to open: nothing there (or a file where a
    folder should be) is a :class:`NotFoundError`, a folder or a path the system cannot
    look up (too long, not permitted) a :class:`StorageError` naming it."""
    try:
        found = Path(db_path).expanduser().stat()
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotFoundError(f"no memvee database at {db_path} (check db_path)") from None
        raise StorageError(
            f"cannot read the database {db_path}: {error.strerror or error}"
        ) from error
    if stat.S_ISDIR(found.st_mode):
        raise StorageError(f"{db_path} is a folder, not a SQLite file")


class Audit:
    """Access to one memory database's logs and projections, to inspect and mend them.

    With ``create`` (the default) a database that does not exist yet is made, empty;
    without it, a database that holds no memvee log is a :class:`NotFoundError`. A log
    whose projections were never made is one either way: ``memvee rebuild`` makes them.

    On SQLite its first write (an import, a re-extraction, a requeue, a promotion) also
    finishes the rewrite of the file an earlier erasure left owed; reads never do, since
    the rewrite holds every other writer off for as long as it takes.
    """

    def __init__(
        self, db_path: str = "memvee.db", db_url: str | None = None, *, create: bool = True
    ) -> None:
        protect_own_loggers()  # a process may open Audits alone: no Memory put the filter on
        if db_url is None and not create:
            check_db_path(db_path, name="db_path", url_name="db_url")
            _check_database_file(db_path)  # before sqlite_url, which makes the file's folder
        url = db_url if db_url is not None else sqlite_url(db_path)  # "" is no URL: refused
        self.store = EventStore(url, create=create)
        tables = ProjectionTables()
        try:
            if create and self.store.max_position() == 0:
                projector = Projector(tables)
                with (
                    alone_while_upgrading(self.store, projector),
                    self.store.transaction() as connection,
                ):
                    self.store.lock_writers(connection)
                    projector.create(connection)
            require_projections(self.store, tables)
            catch_up_if_behind(self.store, tables)
        except BaseException:
            self.store.close()
            raise
        self._reader = ProjectionReader(tables)
        self._ranker = LexicalRanker(tables)
        self._checkpoints = replay_checkpoints(tables)
        self._scrubber = TraceScrubber(self.store)
        self._writes = False

    def _writing(self) -> None:
        """Begin finishing, in the background, the rewrite an earlier erasure left the
        SQLite file owing, once this Audit first committed a write: only an open that
        writes holds other writers off for it (:meth:`close` tries once more); one that
        wrote nothing (an import of lines all present) leaves it owed."""
        if not self._writes:
            self._writes = True
            self._scrubber.resume()

    def close(self, *, discard_if_empty: bool = False) -> None:
        """Release the database connections, after one last try at scrubbing what an
        erasure left in SQLite's files (a warning names the users whose words stay).
        With ``discard_if_empty``, remove a SQLite file that holds no event and that no
        other store has open (see :meth:`EventStore.close`)."""
        try:
            self._scrubber.stop()
        finally:
            self.store.close(discard_if_empty=discard_if_empty)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log(
        self,
        user_id: str,
        *,
        types: Sequence[str] = (),
        from_version: int | None = None,
        to_version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 500,
    ) -> Iterator[LoggedEvent]:
        """The user's events in order, filtered by type, version and time, read in pages.

        ``since`` and ``until`` filter each event by its own stamp: writers whose clocks
        differ may stamp an event earlier than the one before it, and it is kept all the same.
        An unknown user is a :class:`NotFoundError`; an unknown event type in ``types``, a
        version below 1, ``from_version`` after ``to_version`` or past the end of the log,
        an :class:`InvalidInputError`. A ``to_version`` past the end reads to the end. A
        user forgotten while the pages are read (and maybe written again) is a
        :class:`StorageError`, never a trail cut short or two logs spliced.
        """
        self.logged_version(user_id)
        if from_version is not None:
            from_version = check_count(from_version, "from_version")
        if to_version is not None:
            to_version = check_count(to_version, "to_version")
        page_size = check_count(page_size, "page_size")
        unknown = sorted(set(check_keys(types, "types")) - EVENT_TYPES)
        if unknown:
            raise InvalidInputError(
                f"unknown event type {', '.join(map(repr, unknown))}; "
                f"the types are {', '.join(sorted(EVENT_TYPES))}"
            )
        _check_aware(since, "since")
        _check_aware(until, "until")
        if from_version is not None and to_version is not None and from_version > to_version:
            raise InvalidInputError(
                f"from_version {from_version} is after to_version {to_version}: nothing between"
            )
        # The log itself says where it ends (its summary row may lag, after a rebuild
        # stopped midway); a bound past any log is never sent to the database.
        after = min(from_version or 1, PAST_ANY_VERSION) - 1
        end = PAST_ANY_VERSION if to_version is None else min(to_version, PAST_ANY_VERSION)
        read = False
        for event in self.store.events_in_pages(user_id, page_size, after=after, upto=end):
            read = True
            logged = _logged(event)
            if types and logged.type not in types:
                continue
            if since is not None and logged.recorded_at < since:
                continue
            if until is not None and logged.recorded_at > until:
                continue
            yield logged
        if not read and after > 0:
            last = self.logged_version(user_id)
            raise InvalidInputError(
                f"user {user_id!r} has {last} events; version {from_version} is past the end"
            )

    def state(
        self, user_id: str, *, version: int | None = None, at: datetime | None = None
    ) -> UserState:
        """The user's buffer, tasks and knowledge as of ``version`` or time ``at``, replayed.

        A version past the end of the log is refused, not read as the last one.
        """
        last = self.logged_version(user_id)
        _check_aware(at, "at")
        if version is not None and (version := check_count(version, "version")) > last:
            raise InvalidInputError(
                f"user {user_id!r} has {last} events; version {version} is past the end"
            )
        return state_at(self.store, user_id, version=version, at=at, checkpoints=self._checkpoints)

    def explain(self, user_id: str, entry_id: str) -> Provenance:
        """The provenance of one knowledge entry, current or ended, of any version.

        ``entry_id`` may be any unique start of the id, as the tables show it (git-style).
        Read from the projections (which ``verify`` proves equal to the log) and from the
        one event that recorded the entry, so it is a few lookups however long the user's
        history is.
        """
        self._version_of(user_id)
        check_key(entry_id, "entry_id")
        reader = self._reader
        with self.store.engine.connect() as connection:
            entry_id = self._entry_id(connection, user_id, entry_id)
            entry = reader.entries(connection, user_id, [entry_id])[0]
            task = (
                reader.task_details(connection, user_id, entry.task_id) if entry.task_id else None
            )
            sources = reader.messages(connection, user_id, ids=list(entry.source_message_ids))
            repeat_ids, repeat_count = reader.repeats(
                connection, user_id, entry_id, newest=LISTED_REPEATS
            )
            repeats = reader.messages(connection, user_id, ids=repeat_ids)
            replaced_by = reader.successors(connection, user_id, entry_id)
            supersedes = reader.predecessors(connection, user_id, entry_id)
            version = reader.entry_version(connection, user_id, entry_id)
        task = task or {}
        recorded = self.store.events_of(user_id, after=version - 1, upto=version)
        event: Any = recorded[0] if recorded else None
        entries: list[dict[str, Any]] = getattr(event, "entries", [])
        stored = next((e for e in entries if e["entry_id"] == entry_id), {})
        return Provenance(
            entry_id=entry_id,
            user_id=user_id,
            text=entry.text,
            messages=_source_messages(sources),
            task_id=entry.task_id,
            trigger=_origin(event, task),
            batch=list(getattr(event, "message_ids", ())),
            extractor=entry.extractor,
            model=entry.model,
            input_tokens=getattr(event, "input_tokens", None),
            output_tokens=getattr(event, "output_tokens", None),
            extracted_at=entry.extracted_at,
            version=version,
            replaced_by=replaced_by,
            supersedes=supersedes,
            valid_from=entry.valid_from,
            valid_until=entry.valid_until,
            ended_reason=entry.ended_reason,
            repairs=list(stored.get("repairs", ())),
            cache_read_tokens=getattr(event, "cache_read_tokens", None),
            cache_write_tokens=getattr(event, "cache_write_tokens", None),
            repeated_by=_source_messages(repeats),
            repeated_count=repeat_count,
        )

    def export(self, user_id: str) -> Iterator[str]:
        """The user's log as JSON Lines, one stored event a line, oldest first."""
        self.logged_version(user_id)
        for record in self._exported_records(user_id):
            yield json.dumps(record, separators=(",", ":"))

    def _exported_records(self, user_id: str) -> Iterator[dict[str, Any]]:
        """The user's stored events as the records of an export (none if no log)."""
        for stored in self.store.stored_events_of(user_id):
            try:
                state = exported_state(stored.topic, stored.state)
            except Exception as error:
                if not known_topic(stored.topic):
                    raise NewerEventError(
                        user_log_id(user_id), stored.originator_version, stored.topic
                    ) from error
                raise StorageError(
                    f"version {stored.originator_version} of the log of {user_id!r} cannot be "
                    f"read: {first_line(error)}"
                ) from error
            yield {
                "user_id": user_id,
                "version": stored.originator_version,
                "topic": full_topic(stored.topic),
                "state": state,
            }

    def import_lines(
        self, lines: Iterable[str], *, keep_lookalike_ids: bool = False
    ) -> dict[str, int]:
        """Append exported events to this database, projections folded; returns the
        events appended per user.

        A user id that reads as another's (spaces around it, a character that shows
        nothing, a form other than NFC) is refused, as every write refuses it, unless
        ``keep_lookalike_ids``: then such a user, which an older memvee with a narrower
        check wrote, is imported as it is (with a warning), to be read, processed and
        forgotten here; new messages under the id stay refused.

        Each user's run of lines is checked whole before any of it is stored: every line
        an exported event, the log beginning with the user's own ``Registered`` and its
        versions following one another (else :class:`InvalidInputError`, naming the
        line); a user's lines may come in several runs, each ending where a decision of
        the log ends (a file cut inside one is refused). A user whose log is here already
        is completed when that log holds the same events at the same versions (an import
        stopped part way, or run twice; a log that goes on past the lines is left as it
        is), and refused (:class:`ConflictError`) when one differs: a stopped import is
        finished only while nothing else wrote to the user (a Memory opened meanwhile
        closes a task it left open, as after a crash, and may process the user's
        buffered messages); forgetting the user and importing again is the way out. The
        users before a refused line stay imported, and the error names them. Events are
        appended a thousand a transaction, run on to the end of a decision, so a stopped
        import leaves only whole decisions.
        """
        if isinstance(lines, str | bytes) or not isinstance(lines, Iterable):
            raise InvalidInputError(f"lines must be an iterable of str, not {type(lines).__name__}")
        projector = Projector(ProjectionTables())
        counts: dict[str, int] = {}
        imported: list[str] = []  # the users of the runs of lines stored
        held: HeldRun | None = None  # the current run of lines, of one user, checked
        seen: dict[str, int] = {}  # lines checked per user
        replays: dict[str, ImportReplay] = {}  # each user's log, replayed as checked
        try:
            for number, line in enumerate(_text_lines(lines), start=1):
                if not isinstance(line, str):
                    raise InvalidInputError(f"line {number} is a {type(line).__name__}, not a str")
                if not line.strip():
                    continue
                record = _exported_record(number, line, keep_lookalike_ids)
                user_id = record["user_id"]
                if held is not None and held.user_id != user_id:
                    _check_finished(replays[held.user_id], held)
                    counts[held.user_id] = counts.get(held.user_id, 0) + self._append_imported(
                        held, projector
                    )
                    imported.append(held.user_id)
                    held.close()
                    held = None
                if held is None:
                    held = HeldRun(user_id, number)
                seen[user_id] = seen.get(user_id, 0) + 1
                if user_id not in replays:
                    if keep_lookalike_ids:
                        _warn_if_lookalike(user_id, number)
                    replays[user_id] = ImportReplay(
                        self.store.load(user_id), partial(self.store.events_of, user_id)
                    )
                event = self._checked_import(number, record, seen[user_id])
                try:
                    replays[user_id].check(event, f"line {number}")
                except InvalidInputError:
                    if replays[user_id].stored:  # first the lines it holds: the same log?
                        held.add(line, event)
                        self._imported_before(held)
                    raise
                held.add(line, event)
            if held is not None:
                _check_finished(replays[held.user_id], held)
                counts[held.user_id] = counts.get(held.user_id, 0) + self._append_imported(
                    held, projector
                )
        except (InvalidInputError, ConflictError) as error:
            if not imported:
                raise
            raise type(error)(f"{error} (imported before it: {_named(imported)})") from error
        finally:
            if held is not None:
                held.close()
        return counts

    def _checked_import(self, number: int, record: dict[str, Any], due: int) -> Any:
        """Line ``number``'s event: refused unless its record decodes into version ``due``
        of its user's log, the first (and only the first) being the user's own
        ``Registered``."""
        user_id = record["user_id"]
        _check_storable(record.get("state"), f"line {number}")
        try:
            event = self._decoded(record)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
            raise InvalidInputError(f"line {number} is not an exported event: {error}") from error
        check_fields(event, f"line {number}")
        if event.originator_version != due:
            raise InvalidInputError(
                f"line {number}: version {event.originator_version} of {user_id!r} where {due} "
                "was due (the lines of a log are in order, none left out)"
            )
        first = due == 1
        if first != isinstance(event, UserLog.Registered) or (first and event.user_id != user_id):
            raise InvalidInputError(
                f"line {number}: a log begins with its user's Registered event, and only there"
            )
        return event

    def _decoded(self, record: dict[str, Any]) -> Any:
        return self.store.decode_exported(
            record["user_id"], record["version"], record["topic"], record["state"]
        )

    def _append_imported(self, run: HeldRun, projector: Projector) -> int:
        """Append one user's checked ``run`` of lines, a thousand events a transaction
        (whole decisions, see :func:`_in_decisions`), after those of them this database
        holds already; returns how many were appended."""
        start = self._imported_before(run)
        events = run.events(start, lambda line: self._decoded(json.loads(line)))
        for chunk in _in_decisions(events, IMPORTED_PER_COMMIT):
            try:
                self.store.append([chunk], projector.apply)
            except ConflictError as error:
                version = chunk[0].originator_version
                if self.store.events_of(run.user_id, after=version - 1, upto=version):
                    raise ConflictError(
                        f"the log of {run.user_id!r} grew while it was imported (another "
                        "import of it, or its application writing): import again, and what "
                        "it holds by then is compared and passed over"
                    ) from error
                # Its versions followed what was stored: the clash is with the ids of
                # another user's rows, as after an import under another name.
                raise InvalidInputError(
                    f"the log of {run.user_id!r} holds messages or knowledge entries whose "
                    "ids another user of this database holds (was it imported under another "
                    f"name?): {first_line(error.__cause__ or error)}"
                ) from error
            self._writing()
        return len(run) - start

    def _imported_before(self, run: HeldRun) -> int:
        """How many of one user's ``run`` of lines this database holds already, as the
        same versions of that user's log; :class:`ConflictError` if one it holds
        differs, or its log stops short of the run."""
        lines = run.lines()
        first = json.loads(next(lines))
        user_id, start, number = first["user_id"], first["version"], run.first_line
        wanted: dict[str, Any] | None = first
        held = reached = 0
        for record in self._exported_records(user_id):
            reached = record["version"]
            if reached < start:
                continue
            if wanted is None:
                break  # the log here goes on past this run: written since, or a later run
            if record != wanted:
                went_on = _WENT_ON.format(shlex.quote(user_id)) if held else ""
                raise ConflictError(
                    f"user {user_id!r} already has another log in this database (line "
                    f"{number + held}){went_on}; that user's events were not imported"
                )
            held += 1
            wanted = json.loads(following) if (following := next(lines, None)) else None
        if reached < start - 1:
            raise ConflictError(
                f"user {user_id!r}'s log here ends at version {reached}, and line {number} "
                f"goes on from version {start - 1}; that user's events were not imported"
            )
        return held

    async def reextract(
        self,
        user_id: str,
        extractor: Extractor,
        version: str,
        *,
        batch_size: int = DEFAULT_LIMITS.max_messages,
        max_batch_tokens: int = DEFAULT_LIMITS.max_tokens,
        embedder: Embedder | Literal[False] | None = None,
        report: ReextractionReport | None = None,
    ) -> ReextractionReport:
        """Run the user's processed messages through ``extractor`` into knowledge ``version``.

        The live knowledge stays as it is until :meth:`promote`. Messages still buffered
        or quarantined are left to normal processing, and messages the version covers
        already are not sent again: a run cut short (a crash, the extractor failing) is
        finished by running it again. Batches are bounded as live extraction bounds them:
        at most ``batch_size`` messages and about ``max_batch_tokens`` of prompt.

        A batch that fails the same way every time (refused, unreadable) is split down to
        the message that fails alone, which is left out of the version (its failure
        recorded, and reported) while the rest goes in. A failure that may pass (a 5xx, a
        timeout) is weighed as live extraction weighs it, with the version's failed calls
        kept in the log as evidence: the batch is split, and a lone message that keeps
        failing while other calls are answered is left out too. The API failing whatever
        it is sent (two such failures in a row), overloaded, or refusing every batch (a
        probe refused too: the account or the model refuses every request) stops the run
        with its error, blaming no message, and running it again goes on from
        there; after two failures in a row one harmless request tells an outage (it fails
        too, and the two failures split no batch for the next runs) from messages that
        fail every call (it is answered, and their batches go on splitting). Returns the
        entries extracted and the messages left out: ``report``, when given, is filled in
        as the run goes, so that a caller knows what a run that stopped left out before it
        stopped (the error's notes say it too).

        ``embedder`` is a Memory's (the default local model unless given, ``False`` for
        none): with it, the entries shown beside a batch are chosen as live processing
        chooses them, by meaning as well as by words.
        """
        check_user_id(user_id)
        check_knowledge_version(version)
        check_extractor(extractor)
        limits = BatchLimits(
            check_count(batch_size, "batch_size"), check_count(max_batch_tokens, "max_batch_tokens")
        )
        await check_credentials(extractor)
        return await self._reextract_run(user_id, extractor, version, limits, embedder, report)

    async def _reextract_run(
        self,
        user_id: str,
        extractor: Extractor,
        version: str,
        limits: BatchLimits,
        embedder: Embedder | Literal[False] | None,
        report: ReextractionReport | None,
        only: Collection[str] | None = None,
    ) -> ReextractionReport:
        """Plan and run :meth:`reextract`'s calls, of ``only`` those messages if given (the
        bulk run's fallback through the Messages API sends no message another of its
        Message Batches holds)."""
        run = await asyncio.to_thread(
            self._planned, user_id, extractor, version, limits, embedder, report, only
        )
        try:
            while run.todo:
                await self._reextract_next(run)
        except Exception as stopped:
            if run.report.left_out:
                left_out = ", ".join(run.report.left_out)
                stopped.add_note(f"left out of {version!r} before the run stopped: {left_out}")
            raise
        return run.report

    def _planned(
        self,
        user_id: str,
        extractor: Extractor,
        version: str,
        limits: BatchLimits,
        embedder: Embedder | Literal[False] | None,
        report: ReextractionReport | None,
        only: Collection[str] | None = None,
    ) -> _Reextraction:
        """The user's re-extraction run, planned (on a worker thread: a long log takes a
        while to read and weigh, and the asyncio loop must not wait for it): the messages
        the version does not cover (of ``only``, if given) in bounded batches, the evidence
        of its failed calls weighed."""
        user_log = self.store.load(user_id)
        if user_log is None:
            raise NotFoundError(f"no user {echoed(user_id)} in this database")
        user_log.check_version_name(version)
        meaning = self._by_meaning(embedder)
        # The log as loaded: a message added since is buffered, left to normal processing.
        history = list(self.store.events_in_pages(user_id, upto=user_log.version))
        uncovered = user_log.not_covered_by(version, history)
        todo = [
            BatchMessage.of(event)
            for event in history
            if isinstance(event, UserLog.MessageAdded)
            and event.message_id in uncovered
            and (only is None or event.message_id in only)
        ]
        run = _Reextraction(
            user_id,
            extractor,
            version,
            meaning,
            report or ReextractionReport(),
            user_log.version,
            limits,
        )
        for message_ids, failed in user_log.reextraction_calls(version, history):
            run.weigh(message_ids, failed)
        alone = user_log.failed_reextraction(version, history)
        caps = user_log.reextraction_caps(version, history)
        run.todo.extend(bounded(todo, limits, alone, caps))
        return run

    async def _reextract_next(self, run: _Reextraction) -> None:
        """Re-extract the next batch due. One that fails the same way is split in halves at
        once, down to the message that fails alone: that one is left out, as live
        extraction quarantines it, and recorded as failing alone (the next run sends it in
        a call of its own). A failure that may pass is kept as evidence (see
        :meth:`_may_pass`). A refusal of every batch, or the API overloaded, stops the run
        and pins no message."""
        batch = run.todo.popleft()
        extracted = await self._reextract_batch(run, batch)
        if isinstance(extracted, int):
            run.report.entries += extracted
            run.last_failed = None
            return
        error = extracted
        ids = [m.message_id for m in batch]
        if not repeats(error):
            await self._may_pass(run, batch, error)
            return
        alone = len(batch) == 1
        stop: Exception | None = None
        if isinstance(error, RejectedBatchError) and error.reason is not None:
            probed = error.probe_accepted
            if run.breaker.refused(ids, error.reason, probe_accepted=probed):
                alone, stop = False, EveryBatchRefused(error)
        else:
            run.breaker.succeeded()  # an answer: the API is up
        await asyncio.to_thread(
            self._record_failure, run.user_id, run.version, ids, error, run.extractor, alone
        )
        if stop is not None:
            raise stop from error
        run.last_failed = None
        if len(batch) > 1:
            log.info(
                "user %r: a re-extraction batch of %d messages failed (%s); split",
                run.user_id,
                len(batch),
                shown_error(error, run.extractor),
            )
            half = (len(batch) + 1) // 2
            run.todo.extendleft([batch[half:], batch[:half]])
            return
        self._leave_out(run, ids[0], error)

    async def _may_pass(
        self, run: _Reextraction, batch: list[BatchMessage], error: Exception
    ) -> None:
        """A batch failed in a way that may pass (a 5xx, a timeout): the API down, or a
        message that makes it fail every time. The failure is kept in the log as
        evidence; the batch is split, its halves sent after the next batch due, and a lone
        message that keeps failing while other calls are answered (see
        :meth:`CircuitBreaker.blame`) is left out once blamed as often as live extraction
        blames one before quarantining it (:meth:`BatchLimits.gives_up`), and sent again
        after the next batch before that. Two such failures in a row (the API
        failing whatever it is sent), a lone message failing with nothing else to send
        between, the API overloaded, a refusal whose probe failed (which tells nothing
        of the batch), or one whose probe was refused too (the account or the model
        refuses every request: :class:`EveryRequestRefusedError`) stop the run with the
        error, blaming no message:
        the run again goes on splitting where this one stopped, unless the harmless
        request sent after two failures in a row failed too (:meth:`_check`)."""
        ids = [m.message_id for m in batch]
        if isinstance(error, THE_APIS_STATE):  # never a batch's
            await asyncio.to_thread(
                self._record_failure, run.user_id, run.version, ids, error, run.extractor, False
            )
            raise error
        blamed = run.weigh(ids, failed=True)
        stops = run.last_failed is not None or (len(batch) == 1 and not blamed and not run.todo)
        left_out = blamed and not stops and run.gives_up(ids[0])
        await asyncio.to_thread(
            partial(
                self._record_failure,
                run.user_id,
                run.version,
                ids,
                error,
                run.extractor,
                left_out,
                may_pass=True,
            )
        )
        if run.last_failed is not None:
            await self._check(run, batch, (run.last_failed, tuple(ids)))
        if stops:
            if (finding := run.report.check_finding()) is not None:
                error.add_note(finding)
            raise error
        if left_out:
            self._leave_out(run, ids[0], error)
            return
        run.last_failed = None if blamed else tuple(ids)
        if len(batch) > 1:
            log.info(
                "user %r: a re-extraction batch of %d messages failed (%s); split, the "
                "halves sent after the next batch",
                run.user_id,
                len(batch),
                shown_error(error, run.extractor),
            )
            half = (len(batch) + 1) // 2
            run.later(batch[:half], batch[half:])
        else:
            run.later(batch)

    async def _check(
        self,
        run: _Reextraction,
        batch: list[BatchMessage],
        failed_calls: tuple[tuple[str, ...], tuple[str, ...]],
    ) -> None:
        """Send one harmless request, of one message and no known entries, through the
        run's extractor after two calls in a row (``failed_calls``, both recorded already)
        failed in a way that may pass (the run stops); its :data:`CheckVerdict`
        (:func:`verdict_of`) tells them apart, as nothing else within one run can: an
        outage fails it too (:class:`Outage`: a server error, a timeout, no connection, the
        API overloaded), while calls failing for their messages' sake leave it answered;
        its credentials refused (401, 403: :class:`CredentialsRefused`), the API key or its
        permissions are refused for every request (no outage, but the failed calls are no
        evidence against their messages either), as when it is answered 404
        (:class:`ModelOrPathNotFound`: the model or the base URL's path not found for every
        request); rate limited or asked to wait (:class:`Busy`), or failing in a way that
        would repeat (a refusal, a bug: :class:`FailedTellingNothing`), it tells nothing
        (the background's rule too, :func:`actors.tells_down`). An extractor that declares
        :class:`HarmlessRequests` (Claude's asks for one output token) is pinged; another
        extracts the message. What it cost and showed go into ``run.report`` and the log
        (:class:`UserLog.ReextractionChecked`, naming the failed calls it judges), and an
        INFO log line, its error told without credentials (:func:`shown_error`): not a
        warning, as the run always stops next with the error, the finding as its note."""
        usage, failed = await harmless_request(
            run.extractor, run.user_id, run.version, batch[-1].sent_at
        )
        verdict = verdict_of(failed, run.extractor)
        run.report.check = HarmlessCheck(verdict, usage)
        match verdict:
            case CredentialsRefused(error=error):
                log.info(
                    "user %r: a harmless request's credentials were refused too (%s): the API "
                    "key or its permissions are refused; no batch is split for it",
                    run.user_id,
                    error,
                )
            case ModelOrPathNotFound(error=error):
                log.info(
                    "user %r: a harmless request was answered not found too (%s): the model "
                    "or the base URL's path is not found for every request; no batch is "
                    "split for it",
                    run.user_id,
                    error,
                )
            case Outage():
                log.info(
                    "user %r: a harmless request failed too (%s): the API is down; no batch "
                    "is split for it",
                    run.user_id,
                    "no error told" if failed is None else shown_error(failed, run.extractor),
                )
            case Busy(error=error) | FailedTellingNothing(error=error):
                log.info(
                    "user %r: a harmless request failed in a way that tells nothing (%s); "
                    "the failed calls split their batches as before",
                    run.user_id,
                    error,
                )
            case Answered():
                pass
            case _:
                assert_never(verdict)
        await asyncio.to_thread(
            record_check,
            self._decide,
            run.user_id,
            run.version,
            failed_calls,
            usage,
            verdict,
            run.extractor,
        )

    def _leave_out(self, run: _Reextraction, message_id: str, error: Exception) -> None:
        """Leave ``message_id`` out of the run's version: it fails alone."""
        shown = shown_error(error, run.extractor)
        run.report.left_out[message_id] = shown
        log.warning(
            "user %r: message %s left out of version %r: it fails alone (%s)",
            run.user_id,
            message_id,
            run.version,
            shown,
        )

    async def _reextract_batch(
        self, run: _Reextraction, batch: list[BatchMessage]
    ) -> int | Exception:
        """Extract one batch and record it in the version; returns the entries recorded,
        or how the extractor failed (for the caller to record, see
        :meth:`_record_failure`). Failures of the log (the user forgotten meanwhile)
        are raised."""
        user_id, version = run.user_id, run.version
        task = f"reextract:{version}:{batch[0].message_id}"
        known, replaced = await asyncio.to_thread(self._known, user_id, version, batch, run.meaning)
        ids = [m.message_id for m in batch]
        try:
            answer = run.extractor.extract(ExtractionBatch(user_id, task, tuple(batch), known))
        except Exception as error:  # the extractor's: the caller tells how it fails
            return error
        if not isawaitable(answer):  # the extractor's code, no message's: every call fails so
            raise ExtractorNotAsync(
                f"extractor {run.extractor.name!r}: extract(batch) gave "
                f"{type(answer).__name__}, not an awaitable: it must be async (async def "
                "extract); the run stops, no message blamed"
            )
        try:
            result = await answer
        except Exception as error:  # the extractor's: the caller tells how it fails
            return error
        run.weigh(ids, failed=False)
        known, replaced = await asyncio.to_thread(
            self._with_targets, user_id, version, result.facts, (known, replaced)
        )

        def record(user_log: UserLog) -> int:
            entries = user_log.record_reextraction(
                version,
                ids,
                result.facts,
                result.extractor,
                result.model,
                result.usage,
                batch=batch,
                known=known,
                replaced=replaced,
                since=self.store.events_of(user_id, after=run.planned_at, upto=user_log.version),
            )
            return len(entries)

        try:
            return await asyncio.to_thread(self._decide, user_id, record, ids)
        except AlreadyReextractedError as meanwhile:
            self._recorded_elsewhere(run, batch, meanwhile.message_ids)
            return 0

    def _recorded_elsewhere(
        self, run: _Reextraction, batch: list[BatchMessage], covered: Sequence[str]
    ) -> None:
        """Another run recorded ``covered`` into the version first: this run's answer for
        the batch is dropped, and the batch's other messages are sent again."""
        run.report.recorded_elsewhere.extend(covered)
        done = set(covered)
        rest = [m for m in batch if m.message_id not in done]
        if rest:
            run.todo.appendleft(rest)
        log.warning(
            "user %r: %d messages were recorded into version %r by another run meanwhile; "
            "this run's answer for them is not recorded",
            run.user_id,
            len(covered),
            run.version,
        )

    def _record_failure(
        self,
        user_id: str,
        version: str,
        ids: list[str],
        error: Exception,
        extractor: Extractor,
        alone: bool,
        *,
        text: str | None = None,
        request_id: str | None = None,
        may_pass: bool = False,
        blamed: bool = False,
    ) -> bool:
        """Keep a failed re-extraction call of ``ids`` in the log: what it cost, for
        ``memvee stats``, and whether it failed ``alone``, of its own, in a way that would
        repeat (then the next run sends its messages one a call), with ``text`` (default:
        the error's first line without credentials, :func:`shown_error`) and the Message
        Batches ``request_id`` (recorded once); one whose error ``may_pass`` is kept as
        evidence for the next runs, and a Message Batches request ``blamed`` for a failure
        that may pass but was not every request's (twice, and its messages go one a call).
        A failure that spent nothing, is not its own and is no evidence is not kept; the
        failure itself goes on to the caller. Returns whether it was kept (not when its
        ``request_id`` was recorded already, or the log refused it, the user forgotten
        meanwhile)."""
        usage = error.usage if isinstance(error, ExtractionError) else None

        def record(user_log: UserLog) -> bool:
            return user_log.record_reextraction_failure(
                version,
                ids,
                shown_error(error, extractor) if text is None else text,
                usage or TokenUsage(),
                extractor=getattr(extractor, "name", type(extractor).__name__),
                model=getattr(extractor, "model", None),
                request_id=request_id,
                repeats=alone,
                may_pass=may_pass,
                blamed=blamed,
            )

        try:
            return self._decide(user_id, record, ids)
        except MemveeError as failed:
            log.warning(
                "user %r: a failed re-extraction call%s was not recorded (%s)",
                user_id,
                f" ({request_id})" if request_id else "",
                first_line(failed),
            )
            return False

    async def reextract_in_bulk(
        self,
        user_ids: Iterable[str],
        extractor: ClaudeExtractor,
        version: str,
        *,
        limits: BatchLimits | None = None,
        poll_interval: float = 30.0,
        progress: Callable[[int, int], None] | None = None,
        embedder: Embedder | Literal[False] | None = None,
        direct_fallback: bool = True,
        direct_limit: int = DIRECT_LIMIT,
        listed: bool = False,
    ) -> BulkReport:
        """Re-extract the users' processed messages into ``version`` through the Message
        Batches API (half the price; results within 24 hours, most within one).

        Only messages the version does not cover yet are sent, so running it again after
        a crash (or after requests failed) finishes the job without recording anything
        twice. The live knowledge stays as it is until :meth:`promote`. ``embedder``
        chooses the entries each request is shown, as :meth:`reextract`'s does. With
        ``direct_fallback``, the messages of a Message Batch that failed whole with server
        errors a second time go through the Messages API, by :meth:`reextract`'s rules,
        at full price (``BulkReport.direct``), at most ``direct_limit`` messages a run (the
        rest wait for the next run, ``BulkReport.direct_held``), so an outage of Message
        Batches alone does not send a whole backlog at full price at once. A failure of the
        database stops the run with a :class:`StorageError`; the next run collects what
        this one submitted. A user named who has no log is refused before anything is
        sent, unless the users were ``listed`` from their logs (:meth:`users`): then the
        log was forgotten since, and the user is passed over (``BulkReport.forgotten_users``).
        ``listed`` is the caller's word for it: a ``forget`` leaves no trace of the user
        (no record naming them), so an id that never had a log, passed ``listed``, is
        passed over the same way; pass user ids typed by someone without it.
        """
        from memvee._bulk import BulkReextraction  # imports the anthropic SDK: only now
        from memvee.extractors import ClaudeExtractor

        check_extractor(extractor, ClaudeExtractor)  # Message Batches are Claude's API
        polled = as_seconds(poll_interval)
        if polled is None or not 0 < polled < math.inf:
            raise InvalidInputError(
                "poll_interval must be a positive number of seconds, "
                f"not {echoed_repr(poll_interval)}"
            )
        direct_limit = check_count(direct_limit, "direct_limit")
        users = check_user_ids(user_ids)  # read once: a generator is not read again
        self.check_version_name(users, version)
        await check_credentials(extractor)
        meaning = self._by_meaning(embedder)
        live_limits = limits or DEFAULT_LIMITS

        async def direct(
            user_id: str, message_ids: Collection[str], report: ReextractionReport
        ) -> None:
            await self._reextract_run(
                user_id, extractor, version, live_limits, embedder, report, message_ids
            )

        bulk = BulkReextraction(
            self.store,
            self._reader,
            self._decide,
            extractor,
            version,
            lambda user_id, batch: self._known(user_id, version, batch, meaning),
            self._record_failure,
            limits=limits,
            poll_interval=polled,
            progress=progress,
            direct=direct if direct_fallback else None,
            direct_limit=direct_limit,
        )
        return await bulk.run(users, listed=listed)

    def check_version_name(self, user_ids: Iterable[str], version: str) -> None:
        """Refuse (:class:`InvalidInputError`) a ``version`` the users' re-extraction may
        not record into, before any request is sent: a new name must be one
        :func:`check_new_knowledge_version` takes; one an older memvee let in goes on only
        for users whose logs hold it already."""
        users = check_user_ids(user_ids)
        check_knowledge_version(version)
        try:
            check_new_knowledge_version(version)
        except InvalidInputError:
            for user_id in users:
                user_log = self.store.load(user_id)
                if user_log is not None:
                    user_log.check_version_name(version)

    def _by_meaning(self, embedder: Embedder | Literal[False] | None) -> ByMeaning:
        """What chooses the entries a re-extraction batch is shown by meaning, with
        ``embedder`` (see :meth:`reextract`)."""
        chosen = contained_embedder(embedder)
        index = (
            None
            if chosen is None
            else VectorIndex(self._reader.tables, chosen.name, dimensions=chosen.dimensions)
        )
        return ByMeaning(self.store.engine, index, chosen, fills=True)

    def _known(
        self, user_id: str, version: str, batch: list[BatchMessage], meaning: ByMeaning
    ) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
        """The version's entries a re-extraction batch is shown, as live processing shows
        them, and the chains of ended entries before those."""
        texts = [m.content for m in batch]
        with self.store.engine.connect() as connection:
            current = len(self._reader.knowledge(connection, user_id, version))
        near = meaning.near(user_id, batch, current, version)
        with self.store.engine.connect() as connection:
            return shown_beside(
                connection,
                self._ranker,
                self._reader,
                user_id,
                texts,
                current=current,
                max_batch_tokens=DEFAULT_LIMITS.max_tokens,
                backdated=(min(m.sent_at for m in batch), max(m.sent_at for m in batch)),
                version=version,
                near=near,
            )

    def _with_targets(
        self,
        user_id: str,
        version: str,
        facts: Sequence[ExtractedFact],
        shown: tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
    ) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
        """What a batch was shown, with what the log needs to place its facts that change
        entries of the version (see :func:`projections.shown.with_targets`)."""
        if not targets_of(facts):
            return shown
        with self.store.engine.connect() as connection:
            return with_targets(connection, self._reader, user_id, facts, shown, version)

    def quarantined(self, user_id: str) -> list[QuarantinedMessage]:
        """The user's quarantined messages, each with its last error and attempts."""
        self._version_of(user_id)
        with self.store.engine.connect() as connection:
            return self._reader.quarantined(connection, user_id)

    def quarantine_counts(self) -> dict[str, int]:
        """Every user with quarantined messages, with how many."""
        with self.store.engine.connect() as connection:
            return self._reader.users_with_quarantine(connection)

    def requeue(self, user_id: str, message_ids: Sequence[str] | None = None) -> list[str]:
        """Put the user's quarantined messages (or ``message_ids``) back in the buffer (an
        event); the owning Memory extracts them on its next run. Returns their ids."""
        check_user_id(user_id)
        chosen = None if message_ids is None else check_keys(message_ids, "message_ids")
        return self._decide(user_id, lambda user_log: user_log.requeue(chosen))

    def forget(self, user_id: str) -> ForgetReceipt:
        """Erase the user as :meth:`memvee.Memory.forget` does: their events, snapshots,
        every projection row, their lease (but one another live process holds, which stays
        its own) and their requests of a bulk re-extraction, in one transaction with other
        writers held off; the receipt counts what went.

        A user with no log here erases nothing (a receipt of zeros), and a log that does
        not load is erased all the same. A Memory running on the database learns it as it
        learns another process's erasure: a write it decided on the old log is refused and
        decided again on the new, empty one; the vectors of the user it cached stay in its
        memory (never stored nor returned) until its next search of the user or until they
        are evicted. On SQLite the file is rewritten (``VACUUM``);
        words a failed rewrite or other connections' snapshots keep in the files
        (``scrubbed=False``) are scrubbed in the background until :meth:`close`, which
        tries once more. A database that fails the erasure is a :class:`StorageError`, and
        nothing is erased.
        """
        check_user_id(user_id)
        leases = LeaseTable(self.store.engine, new_owner_id(), ttl=0.0)
        try:
            with self.store.engine.connect() as connection:
                shared = inspect(connection).has_table(leases.table.name)
        except SQLAlchemyError as error:
            raise StorageError(
                f"could not forget user {user_id!r} in {self.store.safe_url}: {first_line(error)}"
            ) from error
        receipt = erase_user(
            self.store, Projector(ProjectionTables()), leases if shared else None, user_id
        )
        if not receipt.scrubbed:
            self._scrubber.later(user_id)
        log.info("user %r forgotten (%d records erased)", user_id, receipt.total)
        return receipt

    def spend(self) -> list[dict[str, Any]]:
        """Tokens spent by extraction, per extractor and model."""
        with self.store.engine.connect() as connection:
            return self._reader.spend(connection)

    def promote(self, user_id: str, version: str) -> list[str]:
        """Make a re-extracted knowledge version the user's live knowledge (an event).

        Returns the ids of the processed messages the version does not cover (processed
        while it was being extracted, say): they go back to the buffer, to be extracted
        into the new live knowledge by the next run, so none of what they said is lost.
        """
        check_user_id(user_id)
        check_key(version, "version")

        def promote(user_log: UserLog) -> list[str]:
            return user_log.promote(
                version, self.store.events_in_pages(user_id, upto=user_log.version)
            )

        return self._decide(user_id, promote)

    def compare(self, user_id: str, a: str = LIVE_KNOWLEDGE, b: str = LIVE_KNOWLEDGE) -> Comparison:
        """Knowledge versions ``a`` and ``b`` of the user side by side, copies counted (a
        re-extracted version with no entry too: promoting it would leave no live entry)."""
        self._version_of(user_id)
        check_key(a, "a")
        check_key(b, "b")
        with self.store.engine.connect() as connection:
            for version in (a, b):
                self._require_version(connection, user_id, version)
            first = [e.text for e in self._reader.knowledge(connection, user_id, a)]
            second = [e.text for e in self._reader.knowledge(connection, user_id, b)]
        return Comparison.of(first, second)

    def unpromoted_versions(self, user_id: str) -> list[str]:
        """The user's re-extracted knowledge versions that :meth:`promote` can make live,
        as the log knows them (a version whose batches found no entry among them; a
        re-extraction that found no processed message made none)."""
        check_user_id(user_id)
        user_log = self.store.load(user_id)
        if user_log is None:
            raise NotFoundError(f"no user {echoed(user_id)} in this database")
        return sorted(user_log.knowledge_versions)

    def knowledge_versions(self, user_id: str) -> dict[str, int]:
        """The user's knowledge versions with their entry counts (``live`` included)."""
        self._version_of(user_id)
        with self.store.engine.connect() as connection:
            return self._reader.knowledge_versions(connection, user_id)

    def knowledge(
        self,
        user_id: str,
        *,
        as_of: datetime | None = None,
        history: bool = False,
        version: str = LIVE_KNOWLEDGE,
    ) -> list[KnowledgeEntry]:
        """The user's live entries valid now (or at ``as_of``), or every one with ``history``
        (ended ones too), oldest first: what :meth:`memvee.Memory.knowledge` returns; or
        those of a re-extracted ``version``, to read before promoting it."""
        self._version_of(user_id)
        _check_aware(as_of, "as_of")
        check_listing(as_of, history)
        check_key(version, "version")
        with self.store.engine.connect() as connection:
            if version != LIVE_KNOWLEDGE:
                self._require_version(connection, user_id, version)
            return self._reader.knowledge(
                connection, user_id, version, as_of=as_of, history=history
            )

    def _require_version(self, connection: Connection, user_id: str, version: str) -> None:
        """:class:`NotFoundError` unless the user holds knowledge ``version`` (a
        re-extracted version with no entry too: only then is the log read)."""
        held = {LIVE_KNOWLEDGE, *self._reader.knowledge_versions(connection, user_id)}
        if version in held:
            return
        held.update(self.unpromoted_versions(user_id))
        if version not in held:
            raise NotFoundError(
                f"user {user_id!r} has no knowledge version {version!r} "
                f"(it has {', '.join(map(repr, sorted(held)))})"
            )

    def logged_version(self, user_id: str) -> int:
        """The version of ``user_id``'s log, read from the log itself; :class:`NotFoundError`
        if there is none here. Whether a user exists is a question for the log, never for
        the projections, which a rebuild (running, or stopped midway) drops and refills."""
        check_user_id(user_id)
        last = self.store.last_version(user_id)
        if last == 0:
            raise NotFoundError(f"no user {echoed(user_id)} in this database")
        return last

    def _version_of(self, user_id: str) -> int:
        """The version of ``user_id``'s log; :class:`NotFoundError` if there is none here."""
        check_user_id(user_id)
        with self.store.engine.connect() as connection:
            summary = self._reader.user(connection, user_id)
            if summary is None:
                refuse_while_rebuilding(Projector(ProjectionTables()), connection)
                refuse_unfolded(Projector(ProjectionTables()), connection, user_id)
        if summary is None:
            raise NotFoundError(f"no user {echoed(user_id)} in this database")
        return summary.version

    def _entry_id(self, connection: Connection, user_id: str, prefix: str) -> str:
        """The one entry id of the user that starts with ``prefix`` (git-style)."""
        found = self._reader.entry_ids_starting(connection, user_id, prefix.strip(), 6)
        if not prefix.strip() or not found:
            raise NotFoundError(f"user {echoed(user_id)} has no knowledge entry {echoed(prefix)}")
        if len(found) > 1 and prefix not in found:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise InvalidInputError(f"entry id {prefix!r} is ambiguous: it starts {shown}")
        return prefix if prefix in found else found[0]

    def _decide(
        self, user_id: str, decide: Callable[[UserLog], T], sources: Sequence[str] = ()
    ) -> T:
        """Decide on a fresh load and append, folding projections; retried on conflicts,
        after a short pause that grows (with some jitter), up to 8 attempts.

        ``sources``, the messages the decision was drawn from, must all still be stored
        when the events are: the transaction that appends checks them, so nothing drawn
        from a forgotten user's words reaches the log they may have begun since.
        """
        projector = Projector(ProjectionTables())
        wanted = set(sources)

        def fold(connection: Connection, recorded: list[Recorded]) -> None:
            if wanted:
                found = self._reader.messages(connection, user_id, ids=list(wanted))
                if len(found) < len(wanted):
                    refuse_while_rebuilding(projector, connection)
                    raise NotFoundError(
                        f"the messages of user {user_id!r} this was drawn from were forgotten"
                    )
            projector.apply(connection, recorded)

        for attempt in range(8):
            if attempt:  # two writers retrying at once would meet again: a growing pause
                time.sleep(random.uniform(0.5, 1.0) * 0.01 * 2**attempt)
            user_log = self.store.load(user_id)
            if user_log is None:
                raise NotFoundError(f"no user {echoed(user_id)} in this database")
            result = decide(user_log)
            try:
                appended = self.store.append(
                    [user_log.collect_events()], fold, origins={user_log.id: user_log.created_on}
                )
            except ConflictError:
                continue
            if appended:
                self._writing()
            return result
        raise ConflictError(f"user {user_id!r} kept changing; try again")

    def search(
        self,
        user_id: str,
        query: str,
        *,
        top_k: int = 10,
        include_messages: bool = False,
        as_of: datetime | None = None,
        embedder: Embedder | Literal[False] | None = None,
        alpha: float = DEFAULT_ALPHA,
        embed_seconds: float | None = SEARCH_EMBED_SECONDS,
        embed_later: Callable[[str], object] | None = None,
    ) -> RetrievalResult:
        """What :meth:`memvee.Memory.retrieve` would hand an agent.

        ``embedder`` and ``alpha`` are a Memory's: the default local model unless given,
        ``False`` for lexical ranking only. As a Memory's search does, it embeds the user's
        items that lack a vector, newest first, for ``embed_seconds`` past a first batch
        (``None``: all of them first, however long that takes), and ranks the rest by
        their words; ``embed_later(user_id)`` is told when some were left.
        """
        self._version_of(user_id)
        top_k = check_query(query, top_k)
        check_flag(include_messages, "include_messages")
        if as_of is not None:
            _check_aware(as_of, "as_of")
        budget = None if embed_seconds is None else as_seconds(embed_seconds)
        if embed_seconds is not None and (budget is None or not budget >= 0):
            raise InvalidInputError(
                "embed_seconds must be a number of seconds, 0 or more, "
                f"not {echoed_repr(embed_seconds)}"
            )
        alpha = check_alpha(alpha, "alpha")
        tables = self._reader.tables
        retriever = Retriever(
            self.store.engine,
            tables,
            contained_embedder(embedder),
            alpha=alpha,
            index_messages=lambda: index_messages(self.store, Projector(tables)),
            embed_budget=budget,
            embed_later=embed_later,
        )
        return retriever.retrieve(user_id, query, top_k, as_of, include_messages)

    def users(self, *, after: str = "", limit: int = 100) -> list[UserSummary]:
        """A page of at most ``limit`` users (1 to :data:`MAX_USERS_PAGE`), in user-id
        order, after user id ``after``. A user whose row holds a time outside years 1 to
        9999 in UTC (a log an older memvee imported) is left out, named in a warning."""
        check_key(after, "after")
        if (limit := check_count(limit, "limit")) > MAX_USERS_PAGE:
            raise InvalidInputError(
                f"limit must be at most {MAX_USERS_PAGE:,} users a page, not {echoed_repr(limit)}"
            )
        with self.store.engine.connect() as connection:
            page = self._reader.users(connection, after=after, limit=limit)
        for user_id, log_id in page.out_of_range.items():
            log.warning(
                "user %r is not listed: the log %s holds a time outside years 1 to 9999 in "
                "UTC (an older memvee imported it); `memvee verify` lists the log, and "
                "forgetting the user erases it",
                user_id,
                log_id,
            )
        return page.listed

    def stats(self) -> dict[str, int]:
        """Totals across the database: events, users, messages, knowledge, tasks by status."""
        with self.store.engine.connect() as connection:
            totals = self._reader.totals(connection)
        return {"events": self.store.count(), **totals}


def _check_finished(replay: ImportReplay, run: HeldRun) -> None:
    """Refuse a user's ``run`` of lines that stops inside a decision: storing it would
    leave a log its commands never wrote (an extraction's entries current beside those
    they replaced), which an import run again could complete only while nothing else
    wrote to the user."""
    try:
        replay.check_finished()
    except InvalidInputError as error:
        raise InvalidInputError(
            f"{error} (a file cut short?); none of {run.user_id!r}'s lines from line "
            f"{run.first_line} on were imported"
        ) from None


def _in_decisions(events: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``events`` in chunks of ``size``, each run on past it to the end of the decision
    under way (the events that :func:`continues_decision` says follow it): a chunk is a
    transaction, and an import stopped after one must leave whole decisions only, never
    an extraction's new entries without the ends of those they replaced."""
    chunk: list[Any] = []
    for event in events:
        if len(chunk) >= size and not continues_decision(event):
            yield chunk
            chunk = []
        chunk.append(event)
    if chunk:
        yield chunk


def _text_lines(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` as they come; a file that is not UTF-8 text is an
    :class:`InvalidInputError` saying how many lines came before."""
    count = 0
    try:
        for line in lines:
            yield line
            count += 1
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"line {count + 1} is not UTF-8 text ({error.reason})") from error


def _exported_record(number: int, line: str, keep_lookalike: bool = False) -> dict[str, Any]:
    """Line ``number`` of an export as a record naming a user id that a write would take
    (an id that reads as another's, such as one with a trailing space, is refused as
    ``add_message`` refuses it: an import writes), or, with ``keep_lookalike``, any id
    reads take."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise TypeError(f"a JSON object was expected, not {type(record).__name__}")
        check_user_id(record["user_id"])
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise InvalidInputError(f"line {number} is not an exported event: {error}") from None
    try:
        check_new_user_id(record["user_id"])
    except InvalidInputError as error:
        if not keep_lookalike:
            raise InvalidInputError(
                f"line {number}: {error} (a user an older memvee wrote so is imported as it "
                "is with --keep-lookalike-ids)"
            ) from None
    version, topic, state = record.get("version"), record.get("topic"), record.get("state")
    if type(version) is not int or version < 1:
        raise InvalidInputError(f"line {number}: the version must be a whole number from 1")
    if not isinstance(topic, str) or not isinstance(state, dict):
        raise InvalidInputError(f"line {number}: the topic must be a string, the state an object")
    return record


def _warn_if_lookalike(user_id: str, number: int) -> None:
    """Warn that ``user_id``, first met at line ``number``, is imported though a write
    refuses it as reading like another id."""
    try:
        check_new_user_id(user_id)
    except InvalidInputError as error:
        log.warning("line %d: user %r is imported as it is (%s)", number, user_id, error)


def _logged(event: Any) -> LoggedEvent:
    data = dict(vars(event))
    return LoggedEvent(
        version=event.originator_version,
        recorded_at=event.timestamp,
        type=type(event).__name__,
        payload={k: v for k, v in data.items() if k not in _HIDDEN},
        summary=describe(event),
    )


def _source_messages(messages: Iterable[Message]) -> list[SourceMessage]:
    """``messages`` as :class:`Provenance` lists them."""
    return [
        SourceMessage(m.message_id, m.seq, m.role, m.content, m.sent_at, m.name) for m in messages
    ]


def _origin(event: Any, task: dict[str, Any]) -> str:
    """What asked for the extraction that recorded an entry (see ``Provenance.trigger``)."""
    if isinstance(event, UserLog.KnowledgeReextracted):
        request = f", request {event.request_id}" if event.request_id else ""
        return f"re-extraction into version {event.knowledge_version!r}{request}"
    return str(task.get("trigger") or "")


def _check_aware(stamp: datetime | None, name: str) -> None:
    """Refuse what a Memory refuses: a time that is not an aware datetime within range."""
    from events import check_time

    check_time(stamp, name)
