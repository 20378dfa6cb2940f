"""MemoryConfig: every knob of a Memory in one immutable value."""

from __future__ import annotations

import os
from dataclasses import dataclass

from events import BatchLimits, Durability, InvalidInputError, driver_url

__all__ = ["DEFAULT_ALPHA", "MemoryConfig"]

DEFAULT_ALPHA = 0.4
"""The lexical weight of hybrid retrieval (the semantic one is ``1 - alpha``); chosen by
``make eval`` on the evaluation sets (see README, "Retrieval evaluation")."""


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """How a :class:`memvee.Memory` stores, processes and shuts down.

    ``db_path`` is the SQLite file (made with its folder if missing); ``db_url``, when
    given, is a SQLAlchemy URL instead, such as ``postgresql://user:password@host/db``
    (a URL that names no driver uses psycopg 3). An in-memory SQLite database is refused:
    memvee's threads each open their own connection.

    ``leases`` gives each user one owning process through lease rows in the database (on
    by default for server databases, off for SQLite files); ``lease_ttl`` is how long a
    dead owner keeps its users before another process takes them over. ``pool_size``
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
    up to ``retry_delay_max``; ``breaker_failures`` such failures in a row pause every
    user's extraction for ``breaker_cooldown`` seconds (doubling while the API stays down),
    then one run probes the API.

    Every ``snapshot_interval`` events a user's log is snapshotted, in place of its last
    snapshot, so it loads in constant time (a large state, such as thousands of messages
    waiting for extraction, after as many events as its snapshot is large in stored
    events, so snapshots cost about as much per event as the events); every
    ``checkpoint_interval`` events its replayed state is stored in the background, so
    ``state --at`` near the end of a log folds at most about that many events (a user
    keeps eight, older points further apart). 0 turns either off.

    ``hybrid_alpha`` is the lexical weight of hybrid retrieval (the semantic ranking gets
    ``1 - hybrid_alpha``); see :class:`memvee.Memory` for the embedder.

    ``gc_freeze`` (on by default): when the process's first Memory opens, after one full
    collection, ``gc.freeze()`` moves every object then alive (the imported libraries,
    most of a process's heap) out of the cyclic collector's reach. Later full
    collections walk only what came after, so they stop holding the event loop for tens
    of milliseconds. Reference cycles among those objects that become garbage later are
    never freed; turn it off if the process creates and drops such cycles at scale
    before opening a Memory.
    """

    db_path: str = "memvee.db"
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
    gc_freeze: bool = True

    def __post_init__(self) -> None:
        positive = {
            "batch_threshold": self.batch_threshold,
            "max_content_chars": self.max_content_chars,
            "max_live_actors": self.max_live_actors,
            "extraction_concurrency": self.extraction_concurrency,
            "commit_batch_max": self.commit_batch_max,
            "idle_timeout": self.idle_timeout,
            "extraction_timeout": self.extraction_timeout,
            "lease_ttl": self.lease_ttl,
            "pool_size": self.pool_size,
            "actor_threads": self.actor_threads,
            "max_batch_messages": self.max_batch_messages,
            "max_batch_tokens": self.max_batch_tokens,
            "max_attempts": self.max_attempts,
            "retry_delay": self.retry_delay,
            "retry_delay_max": self.retry_delay_max,
            "breaker_failures": self.breaker_failures,
            "breaker_cooldown": self.breaker_cooldown,
        }
        for name, value in positive.items():
            if value <= 0:
                raise InvalidInputError(f"{name} must be positive, not {value!r}")
        for name, count in (
            ("shutdown_grace", self.shutdown_grace),
            ("snapshot_interval", self.snapshot_interval),
            ("checkpoint_interval", self.checkpoint_interval),
        ):
            if count < 0:
                raise InvalidInputError(f"{name} must not be negative, not {count!r}")
        if not 0.0 <= self.hybrid_alpha <= 1.0:
            raise InvalidInputError(f"hybrid_alpha must be from 0 to 1, not {self.hybrid_alpha!r}")
        if self.db_url:
            driver_url(self.db_url, name="db_url")
        if self.durability not in ("full", "normal"):
            raise InvalidInputError(
                f"durability must be 'full' or 'normal', not {self.durability!r}"
            )

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
        if self.db_url:
            return self.db_url
        from events import sqlite_url

        return sqlite_url(os.fspath(self.db_path))
