"""The typed error hierarchy of memvee, re-exported by ``memvee.errors``.

It lives in the domain package because the aggregate is the one place that decides,
so it is also where most errors are raised; the library face re-exports it.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from events.extraction import TokenUsage

__all__ = [
    "ECHOED_CHARS",
    "FORGOTTEN_REASON",
    "INPUT_REFUSED_STATUSES",
    "ActorStoppedError",
    "AlreadyReextractedError",
    "ConflictError",
    "ConnectionLostError",
    "EmbedderError",
    "EveryRequestRefusedError",
    "ExtractionError",
    "ExtractionPausedError",
    "ExtractorAccessRefusedError",
    "ExtractorNotFoundError",
    "ExtractorOverloadedError",
    "ExtractorRateLimitedError",
    "InvalidExtractionError",
    "InvalidInputError",
    "MemoryClosedError",
    "MemveeError",
    "MissingCredentialsError",
    "NewerEventError",
    "NotFoundError",
    "OversizedMessageError",
    "ProbeFailedError",
    "ProcessingError",
    "ProcessingTimeoutError",
    "RejectedBatchError",
    "RejectedTextError",
    "StorageError",
    "TransientStorageError",
    "UnknownTaskError",
    "UnreadableEventError",
    "UserForgottenError",
    "database_refused",
    "echoed",
    "first_line",
    "is_database_failure",
    "may_pass",
    "processing_error",
    "repeats",
]


class MemveeError(Exception):
    """Base class of every error memvee raises on purpose."""


class InvalidInputError(MemveeError, ValueError):
    """Bad input from the caller; raised before anything is written."""


class MissingCredentialsError(InvalidInputError):
    """The Claude extractor has no credentials to call the API with (no
    ``ANTHROPIC_API_KEY`` nor other credentials the SDK finds, or a client given without
    any): raised when a Memory opens or a re-extraction starts, before anything is written,
    instead of every call failing. Its text names what to set, never a secret."""


class NotFoundError(InvalidInputError):
    """A name the database does not hold: a user, a task, an entry or a knowledge version."""


class UnknownTaskError(NotFoundError):
    """A task id that this user's log does not know."""


class MemoryClosedError(MemveeError, RuntimeError):
    """A call on a Memory that is not open: never opened, already closed, or open on
    another event loop than the caller's."""


class StorageError(MemveeError):
    """The event store refused or failed a write; nothing of that write is acknowledged."""


class CheckpointBusyError(StorageError):
    """A ``TRUNCATE`` checkpoint of SQLite's write-ahead log could not complete, because
    another connection (often of another process) was checkpointing, writing or reading
    an older snapshot; nothing failed, and a later try completes once it is done.
    ``busy``, ``frames`` and ``copied`` are the row ``PRAGMA wal_checkpoint(TRUNCATE)``
    returned (frames -1: none counted, the checkpoint did not start)."""

    def __init__(self, busy: int, frames: int, copied: int) -> None:
        super().__init__(
            f"the write-ahead log was not truncated: {_held_off_by(frames, copied)} "
            f"(SQLite's wal_checkpoint(TRUNCATE) returned busy={busy}, frames={frames}, "
            f"copied={copied})"
        )
        self.busy = busy
        self.frames = frames
        self.copied = copied

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from the row it was made with (its message alone would not do), so that
        it crosses a process boundary (pickle) and copies whole."""
        return type(self), (self.busy, self.frames, self.copied), vars(self)


def _held_off_by(frames: int, copied: int) -> str:
    """What kept a checkpoint that returned ``frames`` and ``copied`` from completing."""
    if frames < 0:
        return (
            "another connection was checkpointing the log itself (a commit's automatic "
            "checkpoint, say), so this checkpoint could not start"
        )
    if copied < frames:
        return (
            f"another connection still read an older snapshot, so {copied} of {frames} "
            "frames were copied back"
        )
    return (
        f"all {frames} frames were copied back, but another connection was writing (it "
        "held the write lock) or still reading the log, so the log could not be emptied"
    )


class UnreadableEventError(StorageError):
    """A stored event cannot be read (a damaged file, or an event class this version does
    not know): ``log_id`` and ``version`` name it, ``reason`` says what failed, so that a
    tool can name the user whose log it is (a damaged log can always be forgotten).
    ``user_id`` is that user, where the code that met it knows them: the text names them."""

    def __init__(self, log_id: UUID, version: int, reason: str, user_id: str | None = None) -> None:
        whose = f"log {log_id}" if user_id is None else f"the log of {user_id!r}"
        super().__init__(f"version {version} of {whose} cannot be read: {reason}")
        self.log_id = log_id
        self.version = version
        self.reason = reason
        self.user_id = user_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from the arguments it was made with (its message alone would not do), so
        that it crosses a process boundary (pickle) and copies whole."""
        return type(self), (self.log_id, self.version, self.reason, self.user_id), vars(self)

    def of_user(self, user_id: str) -> UnreadableEventError:
        """This error, told of the log of ``user_id``."""
        return UnreadableEventError(self.log_id, self.version, self.reason, user_id)


class NewerEventError(UnreadableEventError):
    """A stored event of a type this memvee does not know: a newer memvee wrote it (a
    rolling upgrade, or a file a newer one wrote). Nothing is damaged and nothing is lost:
    this user's log reads again once memvee is upgraded; other users' logs read on.
    ``topic`` names the event type."""

    def __init__(self, log_id: UUID, version: int, topic: str, user_id: str | None = None) -> None:
        super().__init__(
            log_id,
            version,
            f"its event type {topic!r} was written by a newer memvee; upgrade memvee to read it",
            user_id,
        )
        self.topic = topic

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from the arguments it was made with, as :class:`UnreadableEventError`."""
        return type(self), (self.log_id, self.version, self.topic, self.user_id), vars(self)

    def of_user(self, user_id: str) -> NewerEventError:
        """This error, told of the log of ``user_id``."""
        return NewerEventError(self.log_id, self.version, self.topic, user_id)


class OlderLayoutError(StorageError):
    """The projections are of an older memvee's layout, not yet refolded into this one's:
    what they hold cannot be compared or read as this memvee lays them out. The next open
    of a Memory (or ``memvee rebuild``) refolds them from the log."""


class ConflictError(StorageError):
    """Another writer appended to the same user log first (optimistic concurrency)."""


class AlreadyReextractedError(ConflictError):
    """Another run recorded a re-extraction of some of a batch's messages into the
    version first (two runs of one user and version at once): the batch's answer is not
    recorded, so no fact is in the version twice. ``message_ids`` are those covered."""

    def __init__(self, message: str, message_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message_ids = tuple(message_ids)


class ConnectionLostError(StorageError):
    """The connection a write ran on was lost (the server ended the session: a failover,
    an idle-session timeout, a proxy) before the write's COMMIT was sent: nothing of it
    was stored, so it may be sent again at once on a fresh connection."""


class TransientStorageError(StorageError):
    """A write failed each time it was tried on a failure of the database that may pass
    (a statement timeout, a serialization failure or a deadlock, a SQLite file locked by
    another connection too long, a lost connection), and was found not stored: nothing of
    it is in the log, so the caller may send it again, at once or a little later."""


class DatabaseInUseError(StorageError):
    """A Memory's open was refused: another Memory has its database (SQLite file or
    PostgreSQL schema) open, and they cannot share it (only Memories with leases can)."""


class EmbedderError(MemveeError):
    """A user's embedder raised what is no ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``): on a memvee thread that is an embedder failure like any other (what
    it embeds is found by its words meanwhile), never the end of the thread. Also an
    embedder's error whose text showed a credential, told without it."""


class ActorStoppedError(MemveeError):
    """A user's actor stopped before it handled a call, and the fresh actor the call was
    sent to again stopped too: nothing of the call was done; calling again starts anew."""


class ExtractionError(MemveeError):
    """An extractor failed on a batch (network, timeout, refusal, bad answer).

    ``repeats`` tells the engine whether sending the same batch again would fail the same
    way: a batch that repeats its failure is split and, down to one message, quarantined;
    one that does not (the API was down, slow or busy) is retried later, backing off.
    This base class does not repeat. ``usage`` holds the tokens the failed call spent;
    ``retry_after`` the seconds the API asked to wait before calling again (its
    ``retry-after``), which the user's backoff and the breaker then wait at least.
    ``whole_note`` is the clause that says the batch is kept whole, when the message
    ends with it (``f"; {whole_note})"``): the user's log, splitting such a batch all the
    same, replaces that clause rather than telling both.
    """

    repeats: bool = False
    whole_note: str | None = None

    def __init__(
        self,
        message: str,
        *,
        usage: TokenUsage | None = None,
        retry_after: float | None = None,
        whole_note: str | None = None,
    ) -> None:
        super().__init__(message)
        self.usage = usage
        self.retry_after = retry_after
        self.whole_note = whole_note


class ExtractorOverloadedError(ExtractionError):
    """The extractor's service said it is overloaded (HTTP 529): a state of the service
    that may pass, which the engine never blames on the messages of the batch it met,
    however often a message meets it. (A rate limit, 429, may be a batch's own: a
    request larger than a per-minute token limit is refused so each time.)"""


class ExtractorRateLimitedError(ExtractionError):
    """The extractor's service said a rate limit of the account is reached (HTTP 429): a
    failure that may pass, which may be a batch's own (a request larger than a per-minute
    token limit) but never shows that the service is down."""


class ExtractorAccessRefusedError(ExtractionError):
    """The extractor's service refused the request's credentials or their permissions
    (HTTP 401 or 403): a failure that may pass (a key replaced, a permission granted),
    which never shows that the service is down. A harmless request refused so shows the
    API key or its permissions refused for every request: background extraction keeps the
    batch whole (:class:`EveryRequestRefusedError`); ``memvee reextract`` stops the run,
    its failed calls no evidence against their messages (its report's check a
    ``CredentialsRefused``); ``reextract --batch-api``'s full-price fallback stops at that
    user, sending no other user's messages that run. A batch's own may be its messages' (a
    gateway's filter refusing a text with a 403)."""


class ExtractorNotFoundError(ExtractionError):
    """The extractor's service answered that what the request names is not found (HTTP
    404: a model retired, misspelt or not open to the account, a base URL with a wrong
    path): a failure that may pass (the settings fixed), which never shows that the
    service is down, as it answered. A harmless request answered so shows every request
    refused, whatever its messages: background extraction keeps the batch whole
    (:class:`EveryRequestRefusedError`)."""


class ProbeFailedError(ExtractionError):
    """The API refused a batch, and a request sent to tell whose fault that is failed
    otherwise than by a refusal (a 429, a 5xx, a timeout, no connection): it tells nothing
    of the batch, so this is a failure that may pass, which the engine never blames on the
    batch's messages. ``retry_after`` is what that request was asked to wait. (One the API
    met overloaded raises :class:`ExtractorOverloadedError` instead, never blamed either.)

    ``refusal`` is the batch's refusal, for whoever learns more to settle it: a harmless
    request the API then accepts makes it no refusal of every request, so the batch's own
    when it showed no known entries (the background workers then split the batch, as for
    any refusal); with known entries shown, ``harmless_accepted`` is set: an entry may be
    what is refused, so the workers try a lone message once more without them, and only
    its refusal then counts against it (a message the API refuses each time is still
    quarantined rather than retried by every run).
    """

    def __init__(
        self,
        message: str,
        *,
        usage: TokenUsage | None = None,
        retry_after: float | None = None,
        refusal: RejectedBatchError | None = None,
        harmless_accepted: bool = False,
    ) -> None:
        super().__init__(message, usage=usage, retry_after=retry_after)
        self.refusal = refusal
        self.harmless_accepted = harmless_accepted


class EveryRequestRefusedError(ExtractionError):
    """The API refused a batch, and a request without the batch's messages (a harmless
    one) was refused too: the account, the settings or a gateway refuse every request
    (a credit balance too low, a usage limit, a body limit below the fixed prompt). A
    failure that may pass, already told by a harmless request: never blamed on the
    batch's messages, and the batch is retried later, whole."""


class ExtractionPausedError(ExtractionError):
    """The breaker shared by every user is open (the API kept failing) for longer than a
    batch may wait: the batch fails at once, sent to no API, a failure that may pass that
    is never blamed on its messages. ``retry_after`` is the breaker's remaining pause."""


class InvalidExtractionError(ExtractionError):
    """An extractor's answer could not be read: off-schema, cut at max_tokens, or no answer."""

    repeats = True


class RejectedBatchError(ExtractionError):
    """The API refused the batch itself (a 400 such as "prompt is too long", or a refusal).

    ``reason`` is what the API answered an HTTP refusal with (``None`` for a model's
    refusal, and for a request too large, which a batch split in halves makes smaller).
    When batches that share no message are refused for the same reason, with no batch
    accepted in between, the account or the configuration is refused, not the batches (a
    credit balance too low, a usage limit): the engine then retries later and blames no
    message. ``too_large``: the request was refused for its size, by an HTTP 413 (too
    large for the API or for a gateway in front of it) or by a 400 saying the prompt is
    too long for the model's context window, which names its ``prompt_tokens`` and the
    ``context_tokens`` the window takes (None when not named): a batch split in halves
    is smaller, and those figures tell how much smaller the requests after it must be.
    ``over_the_window`` says the API's whole message was such a 400 (read once, where it
    is answered: a message quoting the user's text is never read again for the phrase);
    ``estimated_tokens`` is memvee's own estimate of that request's prompt and
    ``fixed_tokens`` of the part of it every request has (None when not estimated), by
    which the API's figures are turned into memvee's count (the two may differ twofold).
    ``output_tokens``: the ``max_tokens`` asked, when the window refused the prompt with
    it (``prompt_tokens`` then counts both), None when the prompt alone was over.
    ``smaller_output``: set by whoever judged that only the output asked overflowed the
    window, the smaller ``max_tokens`` the same input fits it with (the bulk path sends a
    lone message's request again asking that, as a live call would, before blaming it).

    ``probe_accepted`` says the extractor settled that itself: the API accepted the same
    request with a harmless message in place of the batch's, so the batch is at fault
    whatever other batches were refused for, and that accepted call counts as one.
    """

    repeats = True

    def __init__(
        self,
        message: str,
        *,
        usage: TokenUsage | None = None,
        reason: str | None = None,
        probe_accepted: bool = False,
        too_large: bool = False,
        prompt_tokens: int | None = None,
        context_tokens: int | None = None,
        over_the_window: bool = False,
        estimated_tokens: int | None = None,
        fixed_tokens: int | None = None,
        output_tokens: int | None = None,
        smaller_output: int | None = None,
    ) -> None:
        super().__init__(message, usage=usage)
        self.reason = reason
        self.probe_accepted = probe_accepted
        self.too_large = too_large
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens
        self.over_the_window = over_the_window
        self.estimated_tokens = estimated_tokens
        self.fixed_tokens = fixed_tokens
        self.output_tokens = output_tokens
        self.smaller_output = smaller_output

    def size_figures(self) -> dict[str, Any]:
        """What the API and memvee told of the refused request's size, as keyword
        arguments: an error standing for this refusal (a probe's verdict, a message
        oversized) carries them on."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "context_tokens": self.context_tokens,
            "over_the_window": self.over_the_window,
            "estimated_tokens": self.estimated_tokens,
            "fixed_tokens": self.fixed_tokens,
            "output_tokens": self.output_tokens,
        }


class OversizedMessageError(RejectedBatchError):
    """A lone message blamed for its size: weighing more than the rest of its request, its
    request with no known entry shown was refused for its size (a 413, or the API's own
    count over the context window even with the smallest output) while a request without
    it fits (a probe accepted, or the API's figures tell it). The refusal may be a passing
    fault, so it is counted as one failed attempt of the message, not sent again at once:
    the engine quarantines it after ``max_attempts`` such attempts, spread over its retry
    backoff, as any lone message refused; requeued, it is tried again."""


INPUT_REFUSED_STATUSES = frozenset({400, 413, 422})
"""The HTTP statuses by which an API (Claude's, an embedding API) refuses the request's
input itself (too long, malformed): sent again, it would fail the same way."""


class RejectedTextError(MemveeError):
    """An embedder refused a text itself (an input over an embedding API's limit, an HTTP
    400): sending it again would fail the same way, so it is left to lexical ranking at
    once. Any other error of an embedder (a timeout, a busy or failing API) is retried."""


class ProcessingError(MemveeError):
    """A processing task ended FAILED; carries the task and the failure text."""

    def __init__(self, user_id: str, task_id: str, error: str) -> None:
        super().__init__(f"processing task {task_id} for user {user_id!r} failed: {error}")
        self.user_id = user_id
        self.task_id = task_id
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from the arguments it was made with (its message alone would not do), so
        that it crosses a process boundary (a worker's, pickled) and copies whole."""
        return type(self), (self.user_id, self.task_id, self.error), vars(self)


FORGOTTEN_REASON = "the user was forgotten"
"""The ``error`` of a task that ended because its user was forgotten while it ran."""


class UserForgottenError(ProcessingError):
    """A processing task ended because its user was forgotten while it ran: nothing
    failed, and running it again cannot help (the messages are gone)."""


def processing_error(user_id: str, task_id: str, error: str) -> ProcessingError:
    """The error a wait for a task that ended FAILED with ``error`` raises."""
    kind = UserForgottenError if error == FORGOTTEN_REASON else ProcessingError
    return kind(user_id, task_id, error)


class ProcessingTimeoutError(MemveeError, TimeoutError):
    """Waiting for processing took longer than the caller's timeout; the work goes on."""


def repeats(error: BaseException) -> bool:
    """Whether sending the same batch again would fail the same way.

    An :class:`ExtractionError` says so itself; network errors, timeouts and memvee's own
    errors (storage) may pass; any other exception (a bug of an extractor on this input)
    is taken to repeat, so the batch is split rather than retried forever.
    """
    if isinstance(error, ExtractionError):
        return error.repeats
    return not isinstance(error, OSError | TimeoutError | MemveeError)


ECHOED_CHARS = 60
"""The most of a value given by a caller that a message about it repeats."""


def echoed(value: str) -> str:
    """``value`` quoted as a message repeats it: whole up to :data:`ECHOED_CHARS`
    characters, else its start and its length, so that an id or header of any length
    sent in makes no message of that length."""
    if len(value) <= ECHOED_CHARS:
        return repr(value)
    return f"{value[:ECHOED_CHARS]!r}... ({len(value):,} characters)"


def echoed_repr(value: object) -> str:
    """``value`` as a message about it shows it: a str as :func:`echoed` quotes it, any
    other value by its repr cut the same way, or by its type's name when it has no repr
    (an int past the digits Python writes out, a repr that raises, gives no str or nests
    deeper than Python recurses), so that the message is always made."""
    if isinstance(value, str):
        return echoed(value)
    try:
        text = repr(value)
    except ValueError:  # int's limit on the digits it converts
        return f"{type(value).__name__} (too long to write out)"
    except Exception:  # the value's own repr failed: its type still names it
        return f"{type(value).__name__} (cannot be written out)"
    if len(text) <= ECHOED_CHARS:
        return text
    return f"{text[:ECHOED_CHARS]}... ({len(text):,} characters)"


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s text (or its type's name): a driver's message without
    the statement and parameters SQLAlchemy appends, for messages and logs."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def is_database_failure(error: BaseException) -> bool:
    """Whether ``error`` is the database's own: SQLAlchemy's, or a driver's raised on the
    raw cursors of the hot paths (sqlite3's, psycopg's): a lock held too long, a damaged
    file, a server gone."""
    if isinstance(error, SQLAlchemyError | sqlite3.Error):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.Error)


def database_refused(error: BaseException) -> StorageError:
    """A :class:`StorageError` for a failure of the database (:func:`is_database_failure`):
    the driver's words, never the statement and parameters SQLAlchemy appends to them."""
    refused = StorageError(f"the database refused: {first_line(error)}")
    refused.__cause__ = error
    return refused


_PASSING_STATES = frozenset(
    {"40001", "40P01", "53300", "55P03", "57014", "57P01", "57P02", "57P03", "57P05"}
)
"""PostgreSQL's states of a failure that may pass, beside its connection failures (class
08): a serialization failure, a deadlock, too many connections, a lock not had, a statement
cancelled (a timeout), a server shutting down or restarting, an idle session ended."""


def may_pass(error: BaseException) -> bool:
    """Whether the database failure behind ``error`` (a :class:`StorageError`, say) may pass
    if the work is done again: a connection lost, a statement cancelled by a timeout, a
    serialization failure or a deadlock, a SQLite file locked by another connection too
    long. A constraint violation, a malformed statement, a refused login, a table locked by
    the same connection or a failure memvee names itself would repeat."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, DBAPIError):
            if cause.connection_invalidated:
                return True
            cause = cause.orig
            continue
        if isinstance(cause, sqlite3.OperationalError):
            code = getattr(cause, "sqlite_errorcode", None)
            if code is None:
                return str(cause).startswith("database is locked")
            return int(code) & 0xFF == sqlite3.SQLITE_BUSY  # BUSY_SNAPSHOT, _RECOVERY, _TIMEOUT
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None and isinstance(cause, psycopg.OperationalError):
            state = getattr(cause, "sqlstate", None)
            return state is None or state.startswith("08") or state in _PASSING_STATES
        cause = cause.__cause__
    return False
