"""The engine: the store, the committer, the extraction workers and the user actors, wired.

It is the synchronous core behind :class:`memvee.Memory`: everything here runs on its own
threads, and the asyncio face only sends messages to it and awaits bridged futures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pykka
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from actors._background import UserWorker
from actors._committer import GroupCommitter
from actors._context import EngineSettings, SharedServices, Shown, TaskObserver, Vectors
from actors._daemon_threads import BATCH_EMBED_SECONDS, DaemonThreads, Once
from actors._dispatcher import Dispatcher
from actors._key_probe import KeyProbe
from actors._pacing import CircuitBreaker, UserBackoff
from actors._timers import Timers
from actors._traces import TraceScrubber
from actors._workers import ExtractionWorkers
from actors.database_claim import DatabaseClaim, ServerClaim, claim_database
from actors.directory import ActorDirectory
from actors.erasure import ForgetReceipt, erase_user
from actors.lease import LeaseTable, new_owner_id
from actors.rebuild_watch import RebuildWatch
from actors.user_actor import Recovered, UserActor
from events import (
    BatchMessage,
    Durability,
    EventStore,
    ExtractedFact,
    Extractor,
    user_log_id,
)
from events.credentials import log_failure
from events.errors import (
    DatabaseInUseError,
    MemveeError,
    StorageError,
    UnreadableEventError,
    first_line,
)
from projections import (
    FoldState,
    LexicalRanker,
    ProjectionReader,
    ProjectionTables,
    Projector,
    bring_up_to_date,
    catch_up,
    index_messages,
    replay_checkpoints,
    take_checkpoint,
    warn_unfolded,
)
from projections.shown import ByMeaning, shown_beside, targets_of, with_targets
from projections.vectors import ContainedEmbedder, VectorIndex

__all__ = ["Engine", "EngineOptions"]

log = logging.getLogger("memvee.actors")

STORE_RETRY_MAX = 30.0
"""The longest wait, in seconds, between retries of a user's task start while the
database fails: once it answers, processing goes on within that."""

FOLLOW_SECONDS = 0.2
"""With leases, how often the live users' logs are looked at for writes of other
processes (a task they ask of a user this process owns) between lease renewals."""

LATE_COMMIT_SECONDS = 2.0
"""How long after the last stored event changes the followers keep reading the requests
anyway: a transaction holding an earlier id may still be committing."""

CLAIM_CHECK_SECONDS = 2.0
"""How often a claim on a database server is checked, and taken again if its session
ended (see :meth:`ServerClaim.keep`)."""

STOPPING_READ = "could not read the entries shown beside a batch: the engine stops"
"""What a batch's read aside ends with when the engine stops before it is done."""

SHOWN_STOP_SECONDS = 10.0
"""How long a close waits for the reads aside still running (they call no embedder, so
only a database that stopped answering holds one that long)."""

_FILLER_STOP_WAIT = 0.5
"""How long a close waits for the background embedding thread to end, whatever its grace:
one between batches ends at once; one held in an embedding call (an API that stalls) is
abandoned, a daemon whose late vectors are dropped."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Everything the engine is built from."""

    url: str
    durability: Durability
    settings: EngineSettings
    idle_timeout: float
    max_live_actors: int
    leases: bool
    lease_ttl: float
    pool_size: int
    actor_threads: int
    extraction_concurrency: int
    extraction_timeout: float
    commit_batch_max: int
    retry_delay: float = 1.0
    retry_delay_max: float = 300.0
    breaker_failures: int = 5
    breaker_cooldown: float = 2.0
    batch_embed_seconds: float = BATCH_EMBED_SECONDS


class Engine:
    """Owns the engine's threads and the database for one open Memory."""

    def __init__(
        self,
        options: EngineOptions,
        extractor: Extractor,
        observer: TaskObserver,
        embedder: ContainedEmbedder | None = None,
    ):
        self.options = options
        with ExitStack() as undo:  # what a start that fails gives back
            self.store = EventStore(
                options.url, durability=options.durability, pool_size=options.pool_size
            )
            undo.callback(self.store.close)
            # Before the first write (recovery); opening the store only creates what is missing.
            self.claim: DatabaseClaim | None = claim_database(options.url, shared=options.leases)
            if self.claim is not None:
                undo.callback(self.claim.release)
            self._start(options, extractor, observer, embedder, undo)
            undo.pop_all()

    def _start(
        self,
        options: EngineOptions,
        extractor: Extractor,
        observer: TaskObserver,
        embedder: ContainedEmbedder | None,
        undo: ExitStack,
    ) -> None:
        """Build the engine's parts and start their threads; ``undo`` stops each started
        one if a later part fails to start."""
        self.tables = ProjectionTables()
        # The users written lately: the live actors' (their rows are not read back).
        self.projector = Projector(self.tables, remember=options.max_live_actors)
        self.reader = ProjectionReader(self.tables)
        self.ranker = LexicalRanker(self.tables)
        self.leases = (
            LeaseTable(self.store.engine, new_owner_id(), options.lease_ttl)
            if options.leases
            else None
        )
        self.unfolded: dict[UUID, UnreadableEventError] = {}
        """The logs the open's fold left unfolded, by log id (see :meth:`refuse_unfolded`)."""
        self._catch_up()
        self.committer = GroupCommitter(self.store, self.projector, options.commit_batch_max)
        undo.callback(self.committer.stop)
        self.timers = Timers()
        undo.callback(self.timers.stop)
        self.scrubber = TraceScrubber(self.store)
        undo.callback(self.scrubber.stop)
        self.scrubber.resume()
        self.rebuild_watch = RebuildWatch(self._fold_state, self._finish_rebuild)
        undo.callback(self.rebuild_watch.stop)
        self.projector.on_rebuilding = self.rebuild_watch.seen
        self.breaker = CircuitBreaker(
            failures=options.breaker_failures,
            cooldown=options.breaker_cooldown,
            max_cooldown=min(60.0, options.retry_delay_max),
            probe_timeout=options.extraction_timeout + 5,
        )
        self.backoff = UserBackoff(base=options.retry_delay, cap=options.retry_delay_max)
        self.vectors = (
            None
            if embedder is None
            else VectorIndex(self.tables, embedder.name, dimensions=embedder.dimensions)
        )
        self.meaning = ByMeaning(self.store.engine, self.vectors, embedder)
        # As many as the actors': a slow embedder (a remote API) holds one user's batch, not all.
        self._meaning_threads = DaemonThreads(options.actor_threads, name="meaning")
        undo.callback(self._meaning_threads.stop)
        # Apart from those: a hung embedder never holds the reads of the batches that gave up on it.
        self._shown_threads = DaemonThreads(options.actor_threads, name="shown")
        undo.callback(self._shown_threads.stop)
        self.vector_filler = None if embedder is None else self._filler(embedder)
        if self.vector_filler is not None:
            undo.callback(self.vector_filler.stop)
        self.checkpoints = replay_checkpoints(self.tables)
        self.checkpointer = UserWorker(self._checkpoint, name="checkpoints", delay=0)
        undo.callback(self.checkpointer.stop)
        closing = threading.Event()  # see SharedServices.closing
        self.workers = ExtractionWorkers(
            extractor,
            concurrency=options.extraction_concurrency,
            timeout=options.extraction_timeout,
            breaker=self.breaker,
            closing=closing,
        )
        undo.callback(self.workers.stop)
        self.dispatcher = Dispatcher(options.actor_threads)
        undo.callback(self.dispatcher.shutdown)
        self._stopping = threading.Event()
        key_works = threading.Event()
        self.key_probe = KeyProbe(observer, key_works)
        self.services = SharedServices(
            self.store,
            self.committer,
            self.workers,
            self.key_probe,
            options.settings,
            self.dispatcher,
            self._known_entries,
            self._erase,
            self.breaker,
            self.backoff,
            self._wake_later,
            self.embed_later,
            self.checkpointer.touch,
            UserBackoff(base=options.retry_delay, cap=STORE_RETRY_MAX),
            self.timers.call_later,
            self._targets_placed,
            self.leases,
            None if self.leases is None else self._release_lease,
            self._call_user,
            shown_aside=self._shown_aside,
            closing=closing,
            stopping=self._stopping,
            refuse_unfolded=self.refuse_unfolded,
            key_works=key_works,
            held_at_takeover=self._held_at_takeover,
            probe_stands_as=self.key_probe.stands_as,
            probe_gone=self.key_probe.probe_over,
        )
        self.directory = ActorDirectory(
            self._spawn, idle_timeout=options.idle_timeout, max_live=options.max_live_actors
        )
        self._followed_position = -1  # the last event stored at the last look
        self._followed_until = 0.0  # looks go on past an unchanged position until then
        self._followed_users: frozenset[str] = frozenset()  # see follow_owners
        self._ticker: threading.Thread | None = None
        if self.leases is not None:
            self._ticker = threading.Thread(target=self._tick, name="memvee-leases", daemon=True)
            self._ticker.start()
        self._claim_keeper: threading.Thread | None = None
        if isinstance(self.claim, ServerClaim):
            self._claim_keeper = threading.Thread(
                target=self._keep_claim, args=(self.claim,), name="memvee-claim", daemon=True
            )
            self._claim_keeper.start()

    def _known_entries(
        self,
        user_id: str,
        messages: Sequence[BatchMessage],
        current: int,
        backdated: tuple[datetime, datetime] | None,
    ) -> Shown:
        """What an extractor sees beside a batch of a user with few entries, and the chains
        before it (see :func:`projections.shown.shown_beside`), read on the user's actor
        (no embedder is called; a user with more is read aside, see :meth:`_shown_aside`)."""
        return self._read_shown(
            user_id, messages, current, backdated, {}, self.store.engine.connect
        )

    def _read_shown(
        self,
        user_id: str,
        messages: Sequence[BatchMessage],
        current: int,
        backdated: tuple[datetime, datetime] | None,
        embedded: Vectors,
        connect: Callable[[], Connection],
    ) -> Shown:
        """What :meth:`_known_entries` reads, on a connection ``connect`` opens."""
        if current <= 0 and backdated is None:
            return (), ()
        near = self.meaning.near(user_id, messages, current, embedded=embedded)
        with connect() as connection:
            return shown_beside(
                connection,
                self.ranker,
                self.reader,
                user_id,
                [m.content for m in messages],
                current=current,
                max_batch_tokens=self.options.settings.limits.max_tokens,
                backdated=backdated,
                near=near,
            )

    def _shown_aside(
        self,
        user_id: str,
        messages: Sequence[BatchMessage],
        current: int,
        backdated: tuple[datetime, datetime] | None,
        ready: Callable[[Shown | StorageError], None],
    ) -> None:
        """Prepare what a batch of ``messages`` is shown on the shown threads, then call
        ``ready`` once with it, or with a StorageError (a failed read's, or one saying
        that the engine stops before the read ran): the texts
        lacking a vector are embedded first on a meaning thread (see :meth:`_embed_aside`),
        and the entries are read once the vectors came or their deadline passed. The
        ranked searches of a user with thousands of entries take a while: the user's
        actor goes on with its writes meanwhile."""
        once: Once[Shown | StorageError] = Once(ready)

        def _read(embedded: Vectors | None) -> None:
            self._aside(
                user_id,
                once,
                lambda: self._read_shown(
                    user_id, messages, current, backdated, embedded or {}, self._connect_aside
                ),
            )

        def _prepare() -> Shown | None:
            texts = self.meaning.to_embed(user_id, messages, current)
            if not texts:
                return self._read_shown(
                    user_id, messages, current, backdated, {}, self._connect_aside
                )
            self._embed_aside(user_id, texts, _read)
            return None

        self._aside(user_id, once, _prepare)

    def _aside(
        self, user_id: str, once: Once[Shown | StorageError], read: Callable[[], Shown | None]
    ) -> None:
        """Run ``read`` on a shown thread and tell ``once`` what it read (``None``: it
        tells later), or the StorageError it raised; a read the threads never run, as
        they stopped first, tells that the engine stops."""

        def _job() -> None:
            try:
                self._refuse_once_stopping()
                shown = read()
            except Exception as error:
                once(_read_failed(user_id, error))
                return
            if shown is not None:
                once(shown)

        def _stopped() -> None:
            once(StorageError(STOPPING_READ))

        self._shown_threads.submit(_job, dropped=_stopped)

    def _connect_aside(self) -> Connection:
        """A connection for a read on a shown thread, refused once the engine stops: a
        read that outlived ``close`` would open a pool on the closed store."""
        self._refuse_once_stopping()
        return self.store.engine.connect()

    def _refuse_once_stopping(self) -> None:
        """Raise the StorageError a read aside ends with once the engine stops."""
        if self._stopping.is_set():
            raise StorageError(STOPPING_READ)

    def _embed_aside(
        self, user_id: str, texts: list[str], ready: Callable[[Vectors | None], None]
    ) -> None:
        """Embed a batch's ``texts`` on a meaning thread, then call ``ready`` once with
        their vectors: ``None`` when the embedder failed, did not answer within
        ``batch_embed_seconds`` (the batch goes on by words; a late answer is dropped), or
        the engine stops."""
        once = Once(ready)

        def _job() -> None:
            if not once.told:  # a job whose batch went on by words need not embed
                once(self.meaning.embed(user_id, texts))

        def _stopped() -> None:
            once(None)

        if not self._meaning_threads.submit(_job, dropped=_stopped):
            return
        self.timers.call_later(
            self.options.batch_embed_seconds, lambda: self._embed_late(user_id, once)
        )

    def _embed_late(self, user_id: str, once: Once[Vectors | None]) -> None:
        """The deadline of a batch's embedding passed: unless the vectors came first, the
        batch goes on with the entries beside it chosen by words (and a warning says so)."""
        if once(None):
            log.warning(
                "user %r: the embedder did not answer a batch's texts within %s s; the "
                "entries shown beside it are chosen by their words only",
                user_id,
                self.options.batch_embed_seconds,
            )

    def _targets_placed(
        self,
        user_id: str,
        facts: Sequence[ExtractedFact],
        shown: Shown,
        since: datetime | None,
    ) -> Shown:
        """What a batch was shown, with what the log needs to place its facts that
        change entries, none before ``since`` (see :func:`projections.shown.with_targets`)."""
        if not targets_of(facts):  # most answers: no connection taken
            return shown
        try:
            with self.store.engine.connect() as connection:
                return with_targets(connection, self.reader, user_id, facts, shown, since=since)
        except SQLAlchemyError as error:
            raise StorageError(
                f"could not read the entries a batch changes: {first_line(error)}"
            ) from error

    def _filler(self, embedder: ContainedEmbedder) -> UserWorker:
        """The background thread that embeds what users add, as the vector projection
        (stored only while it is not stopped: what an embedder answers after close is
        dropped)."""
        index = self.vectors
        assert index is not None
        engine = self.store.engine
        return UserWorker(
            lambda user, stop: index.fill(
                engine,
                user,
                embedder.embed,
                messages=True,
                stop=stop,
                background=True,
                writing=stop.unless_set,
            ),
            name="embedding",
        )

    def _checkpoint(self, user_id: str, stopping: Callable[[], bool]) -> None:
        """Store ``user_id``'s replayed state at the end of their log (background), once
        the log has grown by half an interval or more since the latest checkpoint."""
        least = max(1, self.options.settings.checkpoint_interval // 2)
        version = take_checkpoint(
            self.store, user_id, self.checkpoints, min_events=least, stop=stopping
        )
        log.debug("user %r: checkpoint at version %s", user_id, version)

    def embed_later(self, user_id: str) -> None:
        """Have the background filler embed what ``user_id`` has without a vector (after
        writes, and when a search left part of a backlog)."""
        if self.vector_filler is not None:
            self.vector_filler.touch(user_id)

    def _wake_later(self, user_id: str, delay: float) -> None:
        """Wake ``user_id``'s actor in ``delay`` seconds (a retry, or a pause that ends)."""
        self.timers.call_later(delay, lambda: self._wake(user_id))

    def _call_user(self, user_id: str, method: str, *args: Any) -> object:
        """Call ``method`` on the user's actor, spawning one if none is live."""
        return self.directory.call(user_id, method, *args)

    def _wake(self, user_id: str) -> None:
        """Tell ``user_id``'s actor that its pause ended (spawning it if it was idle)."""
        if self._stopping.is_set():
            return
        try:
            self.directory.call(user_id, "wake")
        except RuntimeError:
            log.info("user %r: not woken, the engine is stopping", user_id)

    def _erase(self, user_id: str) -> ForgetReceipt:
        """Erase the user, then stop what this process would still send of their texts:
        the batches waiting for extraction and the embedding of their backlog."""
        receipt = erase_user(self.store, self.projector, self.leases, user_id)
        self.unfolded.pop(user_log_id(user_id), None)
        self.workers.drop(user_id)
        if not receipt.scrubbed:
            self.scrubber.later(user_id)
        if self.vectors is not None:
            self.vectors.forget(user_id)
        return receipt

    def _spawn(self, user_id: str, retire: Any) -> pykka.ActorRef[Any]:
        return UserActor.start(user_id, self.services, retire)

    def _catch_up(self) -> None:
        """Create the projection tables and fold whatever of the log they have not seen:
        new tables are rebuilt from the whole log, and a rebuild that stopped (or runs in
        another process) is carried to its end."""
        # Under the writers' lock, so processes opening a new database at once do not race.
        leases = None if self.leases is None else self.leases.create
        try:
            with self.store.engine.connect() as connection:
                known = self.projector.unreadable(connection)
            folded = bring_up_to_date(self.store, self.tables, leases)
            self._read_unfolded()
        except SQLAlchemyError as error:  # a lock timeout, a server restarting
            raise StorageError(
                f"cannot bring the projections of {self.store.safe_url} up to date: "
                f"{first_line(error)}"
            ) from error
        if folded:
            log.warning("projections were behind the log; folded %d events", folded)
        for log_id, unread in self.unfolded.items():
            if log_id in known:  # left by an earlier open: this one's fold did not warn
                warn_unfolded(unread)

    def _read_unfolded(self) -> None:
        """Read which logs a fold left unfolded (see :meth:`refuse_unfolded`)."""
        with self.store.engine.connect() as connection:
            self.unfolded = self.projector.unreadable(connection)

    def refuse_unfolded(self, user_id: str) -> None:
        """Raise the :class:`UnreadableEventError` (naming the user) for which the open's
        fold left ``user_id``'s log unfolded, if it did: their rows are not there, and no
        write may be folded onto them; every other user is served. A log found unfolded
        is looked up again first: a forget or a refold in another process may have ended
        that, and the user is then served (the common path, any other user, reads nothing)."""
        if not self.unfolded:
            return
        log_id = user_log_id(user_id)
        error = self.unfolded.get(log_id)
        if error is None:
            return
        try:
            with self.store.engine.connect() as connection:
                if not self.projector.still_unfolded(connection, log_id):
                    self.unfolded.pop(log_id, None)
                    return
        except SQLAlchemyError as failure:  # cannot tell: the refusal stands
            log.debug("looking an unfolded log up again failed (%s)", first_line(failure))
        raise error.of_user(user_id)

    def _fold_state(self) -> FoldState:
        with self.store.engine.connect() as connection:
            return self.projector.state(connection)

    def _finish_rebuild(self, stopping: Callable[[], bool]) -> int:
        """Carry a rebuild that stopped to its end; the logs it left unfolded are then
        refused here too (:meth:`refuse_unfolded`)."""
        folded = catch_up(self.store, self.tables, stopping=stopping)
        self._read_unfolded()
        return folded

    def index_messages(self) -> int:
        """Index the messages that wait for the full-text index (a search calls it first);
        returns how many."""
        return index_messages(self.store, self.projector)

    def recover(self) -> list[tuple[str, list[str]]]:
        """Close tasks a crash left open; schedule users left over the threshold and, with
        auto-processing, users whose last run failed with messages still buffered, however
        few: the retry the background owed them (after a failure that may pass, or a task
        cut by a shutdown) left with the engine that closed, and no later run would cover
        those messages until the user's next message or an explicit run. A failure that
        waiting does not make pass (a key refused, every request refused) is retried so for
        one user first, a probe of the key, and for the others once a run of this engine
        is accepted (:meth:`_probe_the_key`): a key still refused costs one run an open.

        Returns the users recovered with the ids of the tasks closed for each.
        """
        settings = self.options.settings
        with self.store.engine.connect() as connection:
            crashed = self.reader.users_with_open_tasks(connection)
            waiting, retried = (
                (
                    self.reader.users_with_pending(connection, settings.batch_threshold),
                    self.reader.users_with_failed_run_waiting(connection),
                )
                if settings.auto_process
                else ([], [])
            )
        threshold = settings.batch_threshold if settings.auto_process else None
        owed = set(retried)
        futures = [
            (user, self.directory.call(user, "recover", threshold, user in owed))
            for user in dict.fromkeys(crashed + waiting + retried)
        ]
        recovered: list[tuple[str, Recovered]] = [(user, f.get()) for user, f in futures]
        held = {user: r.held for user, r in recovered if r.held}
        if held:
            self._probe_the_key(held, threshold)
        return [(user, r.closed) for user, r in recovered]

    def _probe_the_key(self, held: dict[str, int], threshold: int | None) -> None:
        """Retry one user of ``held`` (users whose last run was refused, with how many
        messages wait), the one with the most waiting, as a probe of the key, and the others
        once any run of this engine covers messages (:class:`KeyProbe`): a key still refused
        costs that one run, not one per user, and a key fixed since the runs were refused
        leaves no user's messages waiting for the threshold, even when the probe's run fails
        in a way that passes, or runs under another id. A request of the user waiting
        already stands for the probe (none more is queued); a user whose recovery queues no
        run (none is owed any more, its lease lost) hands the probe to the next."""
        ranked = sorted(held, key=held.__getitem__, reverse=True)
        self.key_probe.owe(ranked, self._retry_after_probe(threshold))
        for probe in ranked:
            task_id = str(uuid4())
            if not self.key_probe.start_probe(task_id):
                return  # another probe runs: these wait owed to it
            try:
                queued = self.directory.call(probe, "recover", threshold, True, task_id).get()
            except BaseException:
                self.key_probe.probe_over(task_id)
                raise
            if queued.queued:
                log.info("user %r: retried first, to see whether the refused key works now", probe)
                return
            self.key_probe.probe_over(task_id)

    def _held_at_takeover(self, user_id: str, waiting: int) -> None:
        """A user taken over here (told on its actor) had its last run refused elsewhere,
        and ``waiting`` messages were held: probe the key with them, or owe them a retry
        while another probe runs (:meth:`_probe_the_key`), on a thread of their own (the
        probe calls that actor). Else they would wait for the threshold until some other
        run of this engine showed the key works, if any ever did."""
        if self._stopping.is_set():
            return
        settings = self.options.settings
        threshold = settings.batch_threshold if settings.auto_process else None
        threading.Thread(
            target=self._probe_after_takeover,
            args=({user_id: waiting}, threshold),
            name="memvee-key-probe",
            daemon=True,
        ).start()

    def _probe_after_takeover(self, held: dict[str, int], threshold: int | None) -> None:
        """:meth:`_probe_the_key` for users taken over; a failure is logged, never raised
        on a thread nobody joins (the users stay owed to the next accepted run)."""
        try:
            self._probe_the_key(held, threshold)
        except RuntimeError:  # the engine stops: the next open or takeover probes them
            return
        except Exception as error:  # an actor's fault: it may echo a client's key
            log_failure(
                log,
                logging.WARNING,
                error,
                self.workers.credentials(),
                f"probing the key with users taken over ({', '.join(held)}) failed",
            )

    def _retry_after_probe(self, threshold: int | None) -> Callable[[list[str]], None]:
        """What retries the users owed a run once a run showed the key works (told on that
        run's actor): a thread of their own recovers them."""

        def retry(users: list[str]) -> None:
            if not self._stopping.is_set():
                threading.Thread(
                    target=self._retry_refused,
                    args=(users, threshold),
                    name="memvee-key-probe",
                    daemon=True,
                ).start()

        return retry

    def _retry_refused(self, users: list[str], threshold: int | None) -> None:
        """Recover ``users`` again now that the key works (their refused runs are owed).

        Those a recovery holds again (a run refused since the accepted one told the
        engine the key is refused again) stay owed to the next accepted run
        (:meth:`KeyProbe.owe`), rather than wait for the threshold."""
        try:
            futures = [self.directory.call(u, "recover", threshold, True) for u in users]
        except RuntimeError:  # the engine stops: the next open retries them
            return
        held: list[str] = []
        for user, future in zip(users, futures, strict=True):
            try:
                if future.get().held:
                    held.append(user)
            except Exception as error:  # an actor's fault: it may echo a client's key
                log_failure(
                    log,
                    logging.WARNING,
                    error,
                    self.workers.credentials(),
                    f"user {user!r}: retrying a run refused before the key was fixed failed",
                )
        if held:
            self.key_probe.owe(held, self._retry_after_probe(threshold))

    def _keep_claim(self, claim: ServerClaim) -> None:
        """Check the database claim every :data:`CLAIM_CHECK_SECONDS` until the engine
        stops, taking it again when its session ended (a server restart): without it a
        second engine could take the database this one runs on."""
        lost: type[MemveeError] | None = None  # told once a kind of loss
        while not self._stopping.wait(CLAIM_CHECK_SECONDS):
            try:
                claim.keep()
            except DatabaseInUseError as error:
                if lost is not DatabaseInUseError:
                    log.error("the database claim is lost to another engine: %s", error)
                lost = DatabaseInUseError
            except MemveeError as error:
                if lost is None:
                    log.warning(
                        "the database claim cannot be taken again yet (tried every %g s): %s",
                        CLAIM_CHECK_SECONDS,
                        error,
                    )
                    lost = MemveeError
            else:
                lost = None

    def _tick(self) -> None:
        """Renew our leases, take over users whose owner died, follow logs written elsewhere.

        Between renewals the live users' logs are followed every ``FOLLOW_SECONDS``, so a
        task another process asks of a user this one owns starts within that, not at the
        next renewal; when no event was stored since the last look, that is one read.
        """
        assert self.leases is not None
        renew_every = max(0.05, self.leases.ttl / 3)
        renew_at = time.monotonic() + renew_every
        while not self._stopping.wait(min(FOLLOW_SECONDS, renew_every)):
            renewing = time.monotonic() >= renew_at
            try:
                if renewing:
                    renew_at = time.monotonic() + renew_every
                    self._renew_and_follow(self.leases)
                else:
                    self._follow_new_writes()
            except SQLAlchemyError as error:  # the database is down or restarting
                if renewing:
                    log.warning(
                        "renewing leases failed (trying again in %.1f s): %s",
                        renew_every,
                        first_line(error),
                    )
                else:  # the renewal, due soon, says it once
                    log.debug("following other processes' writes failed: %s", first_line(error))
            except Exception:
                log.exception(
                    "%s failed; retrying",
                    "renewing leases" if renewing else "following other processes' writes",
                )

    def follow_owners(self, users: Iterable[str]) -> None:
        """The users with open tasks this process waits on (the Memory's followed tasks):
        with leases, any of them whose lease nobody holds is taken over here, its actor
        spawned if it was stopped, so those tasks end even where the owner is gone."""
        self._followed_users = frozenset(users)

    def _renew_and_follow(self, leases: LeaseTable) -> None:
        """Renew the live users' leases (taking those whose owner is gone), tell their
        actors, and take over the followed users no live actor here stands for."""
        live = self.directory.live_users()
        if live:
            self._renew(leases, live)
        orphaned = self._followed_users.difference(live)
        if orphaned:
            for user in leases.vacant(orphaned):
                log.info("user %r: the owner of a task followed here is gone", user)
                try:
                    self.directory.call(user, "start_queued")
                except RuntimeError:
                    return

    def _renew(self, leases: LeaseTable, live: list[str]) -> None:
        lost = leases.renew(live)
        taken = {user for user in lost if leases.try_acquire(user)}
        lost -= taken
        with self.store.engine.connect() as connection:
            versions = self.reader.versions(connection, [u for u in live if u not in lost])
        for user in live:
            try:
                told = self.directory.call_live(user, "renew_ownership", user not in lost)
                if told is None:
                    if user in taken:  # its actor stopped meanwhile: nobody here owns it
                        self._release_lease(user)
                    continue
                if user in versions:
                    self.directory.call_live(user, "refresh", *versions[user])
            except RuntimeError:
                return

    def _release_lease(self, user_id: str) -> None:
        """Give the user's lease up, unless an actor of the user is live here again."""
        assert self.leases is not None
        self.directory.release(user_id, self.leases.release)

    def _follow_new_writes(self) -> None:
        """Refresh the live users with a task requested and not yet started (by another
        process, say), if any event was stored since the last look; an actor that knows
        that log to that version already does nothing."""
        live = self.directory.live_users()
        if not live:
            return
        with self.store.engine.connect() as connection:
            position = self.store.max_position(connection)
            now = time.monotonic()
            if position == self._followed_position and now >= self._followed_until:
                return
            waiting = self.reader.versions_with_requests(connection, live)
        if position != self._followed_position:
            # On PostgreSQL a transaction may commit after one that took a later id, so the
            # last id alone can hide it: keep looking a while after each change.
            self._followed_until = now + LATE_COMMIT_SECONDS
        self._followed_position = position
        for user, stored in waiting.items():
            try:
                self.directory.call_live(user, "refresh", *stored)
            except RuntimeError:
                return

    def drain(self) -> None:
        """The Memory begins to close: with leases, start no other process's request."""
        self.services.closing.set()

    def shutdown(self, reason: str) -> None:
        """End the remaining tasks as FAILED with ``reason`` (those of actors still starting
        too: they start first), then stop every thread."""
        self.drain()
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        if self._claim_keeper is not None:
            self._claim_keeper.join(timeout=10)
        self.directory.end_spawns()  # an actor still starting ends its tasks too
        futures = [self.directory.call(u, "shutdown", reason) for u in self.directory.live_users()]
        for future in futures:
            try:
                future.get(timeout=30)
            except UnreadableEventError as error:  # refused, or a newer memvee's: no task ran
                log.warning("closing a user's tasks at shutdown: %s", error)
            except Exception as error:  # an actor's fault: it may echo a client's key
                log_failure(
                    log,
                    logging.ERROR,
                    error,
                    self.workers.credentials(),
                    "closing a user's tasks at shutdown failed",
                )
        self.timers.stop()
        self.rebuild_watch.stop()
        if self.vector_filler is not None:  # one held in an embedding call is abandoned
            self.vector_filler.stop(wait=_FILLER_STOP_WAIT)
        self.checkpointer.stop()
        self._meaning_threads.stop()
        self._shown_threads.stop(wait=SHOWN_STOP_SECONDS)  # their reads end before the store
        self.directory.stop()
        self.dispatcher.shutdown()
        self.workers.stop()
        self.committer.stop()
        self.scrubber.stop()
        if self.leases is not None:
            try:
                self.leases.release_all()
            except Exception:
                log.exception("could not release the leases")
        self.store.close()
        if self.claim is not None:
            self.claim.release()


def _read_failed(user_id: str, error: Exception) -> StorageError:
    """The StorageError a batch's task ends with when the entries shown beside it could
    not be read (an unexpected error is logged with its trace first)."""
    if isinstance(error, StorageError):
        return error
    if not isinstance(error, SQLAlchemyError):
        log.warning(
            "user %r: reading the entries shown beside a batch failed", user_id, exc_info=True
        )
    return StorageError(f"could not read the entries shown beside a batch: {first_line(error)}")
