"""What every user actor shares: the store, the committer, the workers and the settings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from actors._committer import GroupCommitter
from actors._dispatcher import Dispatcher
from actors._pacing import CircuitBreaker, UserBackoff
from actors._workers import ExtractionWorkers
from actors.erasure import ForgetReceipt
from actors.lease import LeaseTable
from events import (
    BatchLimits,
    BatchMessage,
    EventStore,
    ExtractedFact,
    KnownEntry,
    ReplacedEntry,
)

__all__ = [
    "EmbedAside",
    "EngineSettings",
    "Erase",
    "KnownEntries",
    "SharedServices",
    "TargetsPlaced",
    "TaskObserver",
    "ToEmbed",
    "Vectors",
    "Wake",
]

Erase = Callable[[str], ForgetReceipt]
"""Deletes every trace of a user in one transaction (see :mod:`actors.erasure`)."""

Vectors = dict[str, list[float]]
"""Vectors of texts, by text."""

KnownEntries = Callable[
    [str, Sequence[BatchMessage], int, tuple[datetime, datetime] | None, Vectors],
    tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
]
"""Reads the entries an extractor is shown beside a batch's messages (see
:func:`projections.shown.shown_beside`), given how many current entries the user's log
counts, for a backdated batch when its first and last messages were sent, and the vectors
of the batch's texts embedded aside (see :data:`EmbedAside`); and the chains of ended
entries before those (for the log, which places a backdated fact among them). Calls no
embedder."""

ToEmbed = Callable[[str, Sequence[BatchMessage], int], list[str]]
"""The texts of a batch to embed before its entries are read, given how many current
entries the user's log counts (see :meth:`projections.shown.ByMeaning.to_embed`)."""

EmbedAside = Callable[[str, list[str], Callable[[Vectors | None], None]], None]
"""Embeds a user's texts on another thread than the caller's, then calls back with their
vectors (``None``: the embedder failed), so that no actor waits on an embedder."""

TargetsPlaced = Callable[
    [
        str,
        Sequence[ExtractedFact],
        tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
        datetime | None,
    ],
    tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
]
"""Adds to what a batch was shown what the log needs to place the facts of its answer
that change entries, back to when the batch's first message was sent (see
:func:`projections.shown.with_targets`); a failed read is a StorageError."""

Wake = Callable[[str, float], None]
"""Asks for a user's actor to be woken (its ``wake`` method) in some seconds."""


class TaskObserver(Protocol):
    """Hears how tasks move, from actor threads; implementations must be thread-safe."""

    def task_scheduled(self, user_id: str, task_id: str, trigger: str, *, stored: bool) -> None:
        """A task was requested by the engine itself (auto-processing, recovery, a retry)
        or started here.

        ``stored`` is false while its request is still being written: :meth:`task_stored`
        says when it is (a task whose request is never stored ends with
        :meth:`task_finished`).
        """

    def task_stored(self, user_id: str, task_id: str) -> None:
        """The request of a task announced unstored is committed."""

    def task_running(self, user_id: str, task_id: str, message_count: int) -> None:
        """A batch of a task started (its ProcessingStarted is committed); the task has
        taken on ``message_count`` distinct messages so far."""

    def task_finished(
        self,
        user_id: str,
        task_id: str,
        status: str,
        knowledge_count: int,
        error: str | None,
        covered: int | None = None,
    ) -> None:
        """A task ended ``COMPLETED`` or ``FAILED`` and its outcome is committed (if any):
        its batches extracted ``knowledge_count`` entries and covered (extracted or
        quarantined) ``covered`` messages, as the log counts them (``None``: the count of
        messages it took on stands)."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The knobs a user actor needs."""

    auto_process: bool
    batch_threshold: int
    max_content_chars: int
    snapshot_interval: int
    checkpoint_interval: int = 10_000
    limits: BatchLimits = field(default_factory=BatchLimits)


Later = Callable[[float, Callable[[], None], Callable[[], None]], None]
"""Run a callback in so many seconds, or the second one if the engine stops first."""


@dataclass(frozen=True, slots=True)
class SharedServices:
    """The services all user actors of one engine share.

    ``touched`` says that a user has new messages or entries to embed (in the background);
    ``checkpoint_due`` that a user's log grew by another checkpoint interval, so its
    replayed state should be stored (in the background). ``backoff`` paces a user's runs
    after extraction failures; ``store_backoff`` paces the retries of a user's task start
    while the database fails, and never holds a run back once it answers. ``later``
    runs a callback after a delay (a write's retry after a conflict). ``closing`` is set
    once the Memory begins to close.
    """

    store: EventStore
    committer: GroupCommitter
    workers: ExtractionWorkers
    observer: TaskObserver
    settings: EngineSettings
    dispatcher: Dispatcher
    known: KnownEntries
    erase: Erase
    breaker: CircuitBreaker
    backoff: UserBackoff
    wake: Wake
    touched: Callable[[str], None]
    checkpoint_due: Callable[[str], None]
    store_backoff: UserBackoff
    later: Later
    targets: TargetsPlaced
    leases: LeaseTable | None = None
    release_lease: Callable[[str], None] | None = None
    """Give the user's lease up unless an actor of the user is live here (see
    :meth:`actors.directory.ActorDirectory.release`); set with ``leases``."""
    call_user: Callable[..., object] | None = None
    """Call ``(user_id, method, *args)`` on the user's actor, spawning one if none is live
    (a write's retry whose actor stopped meanwhile)."""
    to_embed: ToEmbed | None = None
    embed_aside: EmbedAside | None = None
    """With ``to_embed``: embeds a batch's texts off the actor before its entries are read
    (without, its entries are read with the vectors stored)."""
    closing: threading.Event = field(default_factory=threading.Event)
    """Set when the engine's Memory begins to close: with leases, the owner then starts
    no request of another process, which that process runs once it takes the user over."""
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the engine stops (after the close's grace): a decision waiting for the store
    to answer again gives up, so that a database that is down never holds the close up."""
    refuse_unfolded: Callable[[str], None] = lambda _user_id: None
    """Raise, for a user whose log the open's fold left unfolded (an event of it cannot be
    read), the typed error naming them: that log is neither loaded nor written."""
