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
from actors._request_size import LearnedRequestSize
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
    StorageError,
)

__all__ = [
    "EngineSettings",
    "Erase",
    "KnownEntries",
    "SharedServices",
    "Shown",
    "ShownAside",
    "TargetsPlaced",
    "TaskObserver",
    "Vectors",
    "Wake",
]

Erase = Callable[[str], ForgetReceipt]
"""Deletes every trace of a user in one transaction (see :mod:`actors.erasure`)."""

Vectors = dict[str, list[float]]
"""Vectors of texts, by text."""

Shown = tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]
"""The entries a batch is shown, and the chains of ended entries before those."""

KnownEntries = Callable[
    [str, Sequence[BatchMessage], int, tuple[datetime, datetime] | None],
    Shown,
]
"""Reads the entries an extractor is shown beside a batch's messages (see
:func:`projections.shown.shown_beside`), given how many current entries the user's log
counts and, for a backdated batch, when its first and last messages were sent; and the
chains of ended entries before those (for the log, which places a backdated fact among
them). Calls no embedder: it serves users with few entries, whose batches are not
embedded (see :data:`ShownAside`)."""

ShownAside = Callable[
    [
        str,
        Sequence[BatchMessage],
        int,
        tuple[datetime, datetime] | None,
        Callable[[Shown | StorageError], None],
    ],
    None,
]
"""Prepares what a batch is shown (as :data:`KnownEntries` reads it) on other threads
than the caller's, its texts embedded first where meaning chooses too; then calls back
once with it, or with a :class:`StorageError`: the one a failed read raised, or one
saying that the engine stops (a read dropped or refused at close). A user with
thousands of entries is one ranked search per text of the batch: no actor waits on
those, nor on an embedder."""

TargetsPlaced = Callable[[str, Sequence[ExtractedFact], Shown, datetime | None], Shown]
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

    def user_forgotten(self, user_id: str, erasure: object) -> None:
        """The user's log was erased by the forget given ``erasure`` (handed back as is),
        after every task move of the user it ended or erased was told, and before any of
        a task begun after it: each task heard of until now is gone with the log."""


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
    shown_aside: ShownAside | None = None
    """Prepares what a batch of a user past ``MAX_KNOWN_ENTRIES`` current entries is
    shown off the actor (without, it is read on the actor, by the vectors stored)."""
    closing: threading.Event = field(default_factory=threading.Event)
    """Set when the engine's Memory begins to close: with leases, the owner then starts
    no request of another process, which that process runs once it takes the user over;
    the extraction workers send no harmless request after a failed batch."""
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the engine stops (after the close's grace): a decision waiting for the store
    to answer again gives up, so that a database that is down never holds the close up."""
    request_size: LearnedRequestSize = field(default_factory=LearnedRequestSize)
    """The batch size the API's body limit was learned to take (HTTP 413), in memory."""
    key_works: threading.Event = field(default_factory=threading.Event)
    """Set once a task of this engine covered messages, cleared when a run fails refused
    (the key, every request): while set, a recovery retries a user whose last run was
    refused as any other failed run (see :class:`actors._key_probe.KeyProbe`)."""
    held_at_takeover: Callable[[str, int], None] = lambda _user_id, _waiting: None
    """Told by the actor of a user this process just took over whose last run was refused
    and whose ``waiting`` messages it held (see :attr:`key_works`): the engine probes the
    key with that user, or owes them a retry while another probe runs, as an open does
    (see :class:`actors._key_probe.KeyProbe`)."""
    probe_stands_as: Callable[[str, str], None] = lambda _probe, _task_id: None
    """Told by the actor asked to run the engine's probe of the key as task ``probe`` when
    a request of the user already waited, so none was queued: that request, ``task_id``,
    is the probe now (see :meth:`actors._key_probe.KeyProbe.stands_as`)."""
    probe_gone: Callable[[str], None] = lambda _task_id: None
    """Told by the actor whose task ``task_id``, the engine's probe of the key, will not
    end in this process: the user's lease moved (the new owner runs it), or the task ended
    elsewhere. Another probe may start (see :meth:`actors._key_probe.KeyProbe.probe_over`)."""
    refuse_unfolded: Callable[[str], None] = lambda _user_id: None
    """Raise, for a user whose log the open's fold left unfolded (an event of it cannot be
    read), the typed error naming them: that log is neither loaded nor written."""
