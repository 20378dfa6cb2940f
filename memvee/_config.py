"""MemoryConfig: every knob of a Memory in one immutable value."""

from __future__ import annotations

import math
import numbers
import operator
import os
import threading
from dataclasses import dataclass, fields

from actors._daemon_threads import BATCH_EMBED_SECONDS
from events import (
    BatchLimits,
    Durability,
    InvalidInputError,
    check_db_path,
    check_model,
    driver_url,
    redacted_url,
)
from events.errors import echoed_repr

__all__ = ["DEFAULT_ALPHA", "DEFAULT_DB", "SEARCH_EMBED_SECONDS", "MemoryConfig", "check_alpha"]

DEFAULT_DB = "memvee.db"
"""The SQLite file of a Memory (and of the command line) given no database."""

DEFAULT_ALPHA = 0.3
"""The lexical weight of hybrid retrieval (the semantic one is ``1 - alpha``); chosen by
``make eval`` on the evaluation sets (see README, "Retrieval evaluation")."""

SEARCH_EMBED_SECONDS = 0.2
"""How long a search embeds the items that wait for a vector, past a first small batch,
before it ranks the rest by their words (see ``MemoryConfig.search_embed_seconds``)."""


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """How a :class:`memvee.Memory` stores, processes and shuts down.

    ``db_path`` is the SQLite file (made with its folder if missing; a path object is kept
    as its ``str``); ``db_url``, when
    given, is a SQLAlchemy URL instead, such as ``postgresql://user:password@host/db``
    (a URL that names no driver uses psycopg 3). An in-memory SQLite database is refused:
    memvee's threads each open their own connection.

    ``leases`` gives each user one owning process through lease rows in the database (on
    by default for server databases, off for SQLite files); without them a Memory holds
    its database alone (its SQLite file, or its PostgreSQL schema), and a second one on it
    is refused with :class:`~memvee.errors.DatabaseInUseError` (on PostgreSQL, also while a
    user lease there has not expired). ``lease_ttl`` is how long
    a dead owner keeps its users before another process takes them over. ``pool_size``
    bounds the connections to a database server (twice that with overflow);
    ``actor_threads`` is how many threads run the user actors (each actor runs on one of
    them only while it has messages, one message at a time).

    ``durability="full"`` (the default) keeps every acknowledged message across a process
    kill and a power loss (SQLite WAL with synchronous=FULL); ``"normal"`` survives a
    process kill only and is about twice as fast.

    Extraction goes in bounded batches of at most ``max_batch_messages`` messages and
    about ``max_batch_tokens`` of prompt. A batch that fails in a way that would repeat is
    split; a message that fails alone ``max_attempts`` times is quarantined. After a
    failure that may pass, a user's automatic runs wait ``retry_delay`` seconds, doubling
    up to ``retry_delay_max`` (which caps the first pause too); ``breaker_failures`` such
    failures in a row pause every user's extraction for ``breaker_cooldown`` seconds,
    then one run probes the API; each pause while it stays down doubles, up to 60 seconds
    or ``retry_delay_max`` if shorter, yet never below ``breaker_cooldown``.

    Every ``snapshot_interval`` events a user's log is snapshotted, in place of its last
    snapshot, so it loads in constant time (a large state, such as thousands of messages
    waiting for extraction, after as many events as its snapshot is large in stored
    events, so snapshots cost about as much per event as the events); every
    ``checkpoint_interval`` events its replayed state is stored in the background, so
    ``state --at`` near the end of a log folds at most about that many events (a user
    keeps eight, older points further apart). 0 turns either off.

    ``hybrid_alpha`` is the lexical weight of hybrid retrieval (the semantic ranking gets
    ``1 - hybrid_alpha``); see :class:`memvee.Memory` for the embedder. Entries and
    messages are embedded in the background as they come; a search embeds those still
    waiting itself, for at most ``search_embed_seconds`` past a first small batch, and
    ranks the rest lexically until the background has embedded them (``None``: a search
    embeds all of them first, however long that takes). Past 100 current entries, a
    batch's texts are embedded to choose the entries shown beside it: for at most
    ``batch_embed_seconds``, after which the batch goes on with them chosen by words.

    ``gc_freeze`` (on by default): when the process's first Memory opens, after one full
    collection, ``gc.freeze()`` moves every object then alive (the imported libraries,
    most of a process's heap) out of the cyclic collector's reach. Later full
    collections walk only what came after, so they stop holding the event loop for tens
    of milliseconds. Reference cycles among those objects that become garbage later are
    never freed; turn it off if the process creates and drops such cycles at scale
    before opening a Memory.
    """

    db_path: str = DEFAULT_DB
    db_url: str | None = None
    auto_process: bool = False
    batch_threshold: int = 10
    durability: Durability = "full"
    max_content_chars: int = 100_000
    idle_timeout: float = 60.0
    max_live_actors: int = 1000
    extraction_concurrency: int = 4
    extraction_timeout: float = 120.0
    shutdown_grace: float = 10.0
    snapshot_interval: int = 100
    checkpoint_interval: int = 10_000
    commit_batch_max: int = 256
    model: str | None = None
    leases: bool | None = None
    lease_ttl: float = 10.0
    pool_size: int = 10
    actor_threads: int = 8
    max_batch_messages: int = 50
    max_batch_tokens: int = 20_000
    max_attempts: int = 3
    retry_delay: float = 1.0
    retry_delay_max: float = 300.0
    breaker_failures: int = 5
    breaker_cooldown: float = 2.0
    hybrid_alpha: float = DEFAULT_ALPHA
    search_embed_seconds: float | None = SEARCH_EMBED_SECONDS
    batch_embed_seconds: float = BATCH_EMBED_SECONDS
    gc_freeze: bool = True

    def __post_init__(self) -> None:
        for name in _COUNTS:
            _check_number(self, name, whole=True, positive=True)
        for name in _SECONDS:
            _check_number(self, name, whole=False, positive=True)
        for name in _INTERVALS:
            _check_number(self, name, whole=True, positive=False)
        _check_number(self, "shutdown_grace", whole=False, positive=False)
        object.__setattr__(self, "hybrid_alpha", check_alpha(self.hybrid_alpha, "hybrid_alpha"))
        if self.search_embed_seconds is not None:
            _check_number(self, "search_embed_seconds", whole=False, positive=False)
        if self.actor_threads > MAX_ACTOR_THREADS:  # each is started at open
            raise InvalidInputError(
                f"actor_threads must be at most {MAX_ACTOR_THREADS}, not {self.actor_threads!r}"
            )
        for name in ("auto_process", "gc_freeze"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(_wrong_type(self, name, "a bool"))
        if self.leases is not None and not isinstance(self.leases, bool):
            raise InvalidInputError(_wrong_type(self, "leases", "a bool or None"))
        if not isinstance(self.db_path, str | os.PathLike):
            raise InvalidInputError(_wrong_type(self, "db_path", "a str or a path"))
        check_db_path(self.db_path, name="db_path", url_name="db_url")
        object.__setattr__(self, "db_path", os.fspath(self.db_path))  # a Path is kept as str
        for name in ("db_url", "model"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InvalidInputError(_wrong_type(self, name, "a str or None"))
        if self.db_url is not None:  # "" too: an unset variable read with a default of ""
            driver_url(self.db_url, name="db_url")
        if self.model:  # "" stands for the default, as an unset variable read with "" does
            check_model(self.model, "model")
        if self.durability not in ("full", "normal"):
            raise InvalidInputError(
                f"durability must be 'full' or 'normal', not {self.durability!r}"
            )

    def __repr__(self) -> str:
        """The settings, with the password of ``db_url`` (and any in its query) hidden: a
        configuration gets logged."""

        def shown(name: str) -> object:
            value = getattr(self, name)
            return redacted_url(value) if name == "db_url" and value is not None else value

        return f"MemoryConfig({', '.join(f'{f.name}={shown(f.name)!r}' for f in fields(self))})"

    @property
    def batch_limits(self) -> BatchLimits:
        """The bounds of one extraction batch."""
        return BatchLimits(self.max_batch_messages, self.max_batch_tokens, self.max_attempts)

    @property
    def uses_leases(self) -> bool:
        """Whether user ownership goes through leases (default: not on SQLite)."""
        if self.leases is not None:
            return self.leases
        return not self.url.startswith("sqlite")

    @property
    def url(self) -> str:
        """The SQLAlchemy URL this configuration opens."""
        if self.db_url is not None:
            return self.db_url
        from events import sqlite_url

        return sqlite_url(os.fspath(self.db_path))


MAX_ACTOR_THREADS = 1024
"""The most threads the user actors may run on: all are started when a Memory opens, and
past a few thousand the platform refuses to start more."""

MAX_WHOLE = 2**31 - 1
"""The most a whole-number setting may be: what every database's integer column holds
(settings such as ``batch_threshold`` reach SQL), and far past any real count."""

_COUNTS = (
    "batch_threshold",
    "max_content_chars",
    "max_live_actors",
    "extraction_concurrency",
    "commit_batch_max",
    "pool_size",
    "actor_threads",
    "max_batch_messages",
    "max_batch_tokens",
    "max_attempts",
    "breaker_failures",
)
"""Settings that count something: whole numbers, more than 0."""

_SECONDS = (
    "idle_timeout",
    "extraction_timeout",
    "lease_ttl",
    "retry_delay",
    "retry_delay_max",
    "breaker_cooldown",
    "batch_embed_seconds",
)
"""Settings that are durations: finite numbers of seconds, more than 0."""

_INTERVALS = ("snapshot_interval", "checkpoint_interval")
"""Settings that count events, 0 turning them off."""


def check_alpha(alpha: object, name: str) -> float:
    """``alpha`` (called ``name``) as a Python float if it is a lexical weight of hybrid
    retrieval: a real number from 0 to 1 (a numpy float or a Fraction too), never a bool
    or NaN. A Memory's ``hybrid_alpha`` and a search's ``alpha`` are one weight, refused
    alike."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise _weight_refused(alpha, name)
    try:
        weight = float(alpha)
    except OverflowError:  # a Fraction or an int too large for a float
        raise _weight_refused(alpha, name) from None
    if not 0 <= weight <= 1:  # NaN too
        raise _weight_refused(alpha, name)
    return weight


def _weight_refused(alpha: object, name: str) -> InvalidInputError:
    """The refusal of ``alpha`` as the weight ``name``, made only for a weight refused: a
    weight taken is never written out."""
    return InvalidInputError(f"{name} must be a number from 0 to 1, not {echoed_repr(alpha)}")


def _check_number(config: MemoryConfig, name: str, *, whole: bool, positive: bool) -> None:
    """Refuse setting ``name`` unless it is a finite number (a whole one if ``whole``, never
    a bool), more than 0 if ``positive``, else 0 or more, and at most ``MAX_WHOLE`` (whole)
    or ``threading.TIMEOUT_MAX`` seconds; keep it as a Python int or float (a numpy
    number, which no database binds, included)."""
    given = getattr(config, name)
    kinds = numbers.Integral if whole else numbers.Real
    if isinstance(given, bool) or not isinstance(given, kinds):
        raise InvalidInputError(_wrong_type(config, name, "an int" if whole else "a number"))
    try:
        value = _plain_number(given)
    except Exception as error:  # a numpy timedelta64, a registered kind that converts not
        raise InvalidInputError(
            _wrong_type(config, name, "an int" if whole else "a number")
        ) from error
    if value is None:  # a Fraction too large for a float (a whole number is an int)
        raise InvalidInputError(
            f"{name} must be at most {threading.TIMEOUT_MAX:.0f} seconds, not {echoed_repr(given)}"
        )
    object.__setattr__(config, name, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, not {echoed_repr(value)}")
    if whole and value > MAX_WHOLE:
        raise InvalidInputError(f"{name} must be at most {MAX_WHOLE}, not {echoed_repr(value)}")
    if not whole and value > threading.TIMEOUT_MAX:  # what a thread's wait takes
        raise InvalidInputError(
            f"{name} must be at most {threading.TIMEOUT_MAX:.0f} seconds, not {echoed_repr(value)}"
        )
    if positive and value <= 0:
        raise InvalidInputError(f"{name} must be positive, not {echoed_repr(value)}")
    if not positive and value < 0:
        raise InvalidInputError(f"{name} must not be negative, not {echoed_repr(value)}")


def _plain_number(value: numbers.Real) -> int | float | None:
    """``value`` as a Python int (a whole number) or float, ``None`` if it is too large
    for a float."""
    if isinstance(value, numbers.Integral):
        return operator.index(value)
    try:
        return float(value)
    except OverflowError:  # a Fraction
        return None


def _wrong_type(config: MemoryConfig, name: str, expected: str) -> str:
    return f"{name} must be {expected}, not {type(getattr(config, name)).__name__}"
