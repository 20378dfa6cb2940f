"""The user actor: the single writer of one user's log, and a thin shell around it.

It owns the user's :class:`UserLog` aggregate in memory, asks it to decide and hands the
events to the group committer; the caller is answered once they are durable. Then it
talks to the world: it starts extraction on the worker pool (never on this thread),
records the outcome, and tells the observer how each task moves.

Across processes, only the actor whose process holds the user's lease *owns* the user and
processes; any other process's actor is a *guest* that may append (retrying on version
conflicts) and request processing, which the owner then runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar
from uuid import uuid4

import pykka
from pykka.messages import ProxyCall

from actors._bridge import BridgedFuture, Reply
from actors._committer import STORE_ATTEMPTS, EarlierWriteFailed, Write, store_delay
from actors._context import SharedServices, Shown, ShownAside
from actors._dispatcher import PooledActor
from actors._workers import (
    THE_APIS_STATE,
    ApiDown,
    EveryBatchRefused,
    ExtractorNotAsync,
    Outcome,
    asked_to_wait,
)
from actors.erasure import ForgetReceipt
from events import (
    BatchLimits,
    BatchMessage,
    ConflictError,
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    ExtractionResult,
    InvalidExtractionError,
    InvalidInputError,
    KnownEntry,
    MemveeError,
    NotFoundError,
    Recorded,
    RejectedBatchError,
    ReplacedEntry,
    StorageError,
    StoredSnapshot,
    TokenUsage,
    UserLog,
    estimate_tokens,
    user_log_id,
)
from events.credentials import log_failure, redact
from events.errors import (
    FORGOTTEN_REASON,
    EveryRequestRefusedError,
    ExtractionPausedError,
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    first_line,
    is_database_failure,
    may_pass,
    repeats,
)
from events.user_log import LIVE_KNOWLEDGE, WHOLE_FAILURES_IN_A_ROW
from projections.shown import MAX_KNOWN_ENTRIES, expected_shown, shown_budget

__all__ = ["FAULT_REASON", "FORGOTTEN_REASON", "INTERRUPTED_BY_CRASH", "UserActor"]

log = logging.getLogger("memvee.actors")

INTERRUPTED_BY_CRASH = "interrupted: the process stopped before the task finished"
UNSTORED_REASON = "interrupted: the store failed before the task's end was stored"
"""Why a task is closed that this process ran but could not store the end of."""
FAULT_REASON = "interrupted: an unexpected error in memvee"
"""Why the tasks a user's actor ran are closed when handling a message raised an error no
rule of memvee raises (a defect); the error's type and first line follow."""
DECIDE_RETRY_SECONDS = 10.0
"""How long a decision (a task's start, its outcome...) is taken again on a reloaded log
when other processes keep writing the user first: after a random wait each time
(:func:`conflict_delay`), as an append waits. Eight tries without a wait were lost to
three processes writing one user, failing tasks whose extraction had been paid for."""

APPEND_RETRY_SECONDS = 60.0
"""How long an append that lost a race is decided again: processes writing one user at
once keep losing to the one that wrote last (it alone needs no reload), so a loser waits a
random while (:func:`conflict_delay`) and tries again until the others pause. A count of
tries was not enough: on PostgreSQL a writer once lost 40 in a row to a steady stream."""

CONFLICT_DELAY_MAX = 0.05
"""The longest wait, in seconds, before an append is decided again after a conflict."""

MAX_BATCH_RERUNS = 3
"""Times a batch is extracted again because the live knowledge it was shown was replaced
(a promotion) before its answer was recorded; after that the answer is recorded as is."""

_WRITE_EPOCHS = itertools.count(1)
"""Every (re)load of a log in this process gets a fresh, higher write epoch."""

SNAPSHOT_EVENT_BYTES = 256
"""About the size of one stored event (a message is 200 to 300 bytes): the unit in which a
snapshot's size spaces the next one (see ``UserActor._due_snapshot``)."""

T = TypeVar("T")
Retire = Callable[[str, "pykka.ActorRef[Any]", bool], bool]
NewMessages = Sequence[tuple[str, str, datetime | None, str | None]]
_NONE_KNOWN: tuple[KnownEntry, ...] = ()
"""Shared by every actor with no batch: an empty frozenset of its own is one more object
per live user for the collector to walk."""

_ADDING_ENTRIES = frozenset({"new", "update"})
"""The actions of a fact that add a current entry to those a later batch is shown."""

Appended = Sequence[Any]
"""The events an append committed, in log order: its messages' ``MessageAdded`` among
them (the first append of a log begins with ``Registered``)."""
Started = tuple[str, str, list[str]]


class Recovered(NamedTuple):
    """What a user's recovery did: the ids of the tasks it ``closed``, and how many
    messages it ``held`` back, waiting, after a refused run (a key refused, every request
    refused) that no task of the engine showed passed since (0 when it held none), and
    whether a run of the user is now ``queued`` (requested by it, or stored before)."""

    closed: list[str]
    held: int
    queued: bool = False


class UserActor(PooledActor):
    """One user's actor; the directory calls its public methods with pykka's ``ProxyCall``
    messages (see :func:`actors.directory.ask`).

    Its own fields are slots: past 30 fields CPython gives an instance a dict of its own,
    one more object per live user for every full collection to walk (pykka's few fields
    stay in the instance's inline values, with no dict, until a proxy reads them)."""

    __slots__ = (
        "_batch_known",
        "_batch_messages",
        "_batch_replaced",
        "_batch_reruns",
        "_checkpointed",
        "_epoch",
        "_last_write",
        "_loaded",
        "_log",
        "_owner",
        "_probe",
        "_requests",
        "_retire",
        "_running",
        "_self_proxy",
        "_services",
        "_shown_round",
        "_shown_tokens",
        "_shut_down",
        "_snapshot_spacing",
        "_snapshot_version",
        "_task_covered",
        "_task_knowledge",
        "_task_log",
        "_task_messages",
        "_took_over",
        "_unended",
        "_wake_due",
        "user_id",
    )

    def __init__(self, user_id: str, services: SharedServices, retire: Retire) -> None:
        super().__init__(services.dispatcher)
        self.user_id = user_id
        self._services = services
        self._retire = retire
        self._log: UserLog | None = None
        self._loaded = False
        self._snapshot_version = 0
        self._snapshot_spacing = 0  # events a snapshot as large as the last one is worth
        self._checkpointed = 0  # checkpoint intervals the log spanned when last asked
        self._epoch = 0
        self._last_write: int | None = None  # the committer's ticket of the last write
        self._running: str | None = None
        self._batch_messages: tuple[BatchMessage, ...] = ()
        self._batch_known = _NONE_KNOWN  # the live entries the batch was shown
        # What the entries shown beside the last batch weighed (None: no batch ran here yet)
        self._shown_tokens: int | None = None
        self._batch_replaced: tuple[ReplacedEntry, ...] = ()  # the ended ones before those
        self._batch_reruns = 0
        self._shown_round = 0  # batches whose shown entries went to be prepared aside
        self._task_messages: Collection[str] = ()  # no set per idle user
        self._task_knowledge = 0
        self._task_covered = 0
        self._task_log: datetime | None = None  # when the running task's log began
        self._wake_due: float | None = None
        self._unended: tuple[str, ...] = ()  # tasks run here whose end could not be stored
        self._requests: tuple[str, ...] = ()  # tasks requested here, maybe not yet started
        self._owner: bool | None = None
        self._probe: str | None = None  # the task queued here as the engine's probe of the key
        self._took_over = False  # the lease was just taken: close the last owner's tasks
        self._shut_down = False  # the engine stops: no task starts or is requested here
        self._self_proxy: Any = None

    @property
    def _myself(self) -> Any:
        """A proxy to this actor, for messages to itself (made on first use: it is costly)."""
        if self._self_proxy is None:
            self._self_proxy = self.actor_ref.proxy()
        return self._self_proxy

    def _start_queued_next(self) -> None:
        """Have :meth:`start_queued` run as this actor's next message, as a call through
        :attr:`_myself` would, without making the proxy: a proxy introspects the actor
        into some 30 objects it keeps for the actor's life, for the collector to walk,
        and every owner that takes a user's lease sends itself this message."""
        self.actor_ref.ask(ProxyCall(attr_path=("start_queued",), args=(), kwargs={}), block=False)

    def on_stop(self) -> None:
        release = self._services.release_lease
        if release is not None and self._owner:
            # Not before this actor's last write landed: the process that takes the user
            # next could forget it, and the write would land on the erased log.
            self._services.committer.wait_for_log(user_log_id(self.user_id))
            try:
                release(self.user_id)
            except Exception:
                log.exception("user %r: could not release the lease", self.user_id)

    def _handle_receive(self, message: Any) -> Any:
        """Handle one message, as pykka does; an error no rule of memvee raises (a defect,
        or a dependency failing where nothing was expected) leaves this actor's state in
        doubt, so the actor starts afresh (:meth:`_start_afresh`) before the error goes
        on to the caller, if any. memvee's own errors and the database's are answers."""
        try:
            return super()._handle_receive(message)
        except Exception as error:
            if not isinstance(error, MemveeError) and not is_database_failure(error):
                self._start_afresh(error)
            raise

    def _start_afresh(self, error: Exception) -> None:
        """After a fault: log it once, close the tasks this actor ran as FAILED (their
        messages back in the buffer) and drop what it held in memory, so the next message
        finds the user as a fresh actor would, loaded from the log.

        The fault counts as a failed attempt of the running task's batch, as any failure
        of it blamed on its messages does (see :meth:`UserLog.record_failure`): the batch
        is split, and a message that meets it alone ``max_attempts`` times is quarantined.
        Tasks that waited behind the closed ones are started now and, with auto-processing,
        the closed tasks' messages are retried after the user's backoff, as after a failure
        that may pass; with nothing closed (or the store failing) the next start waits the
        user's store backoff. Either backoff grows, so a fault that recurs never spins, and
        never sends the same batch to the extractor for ever.
        """
        running, spent = self._running, (self._task_knowledge, self._task_covered)
        log_failure(
            log,
            logging.ERROR,
            error,
            self._credentials(),
            "user %r: an unexpected error in its actor (task running: %s); its tasks end "
            "FAILED and the user is loaded again from the log",
            self.user_id,
            running,
        )
        reason = f"{FAULT_REASON} ({self._describe(error)})"
        ran = tuple(t for t in (running, *self._unended) if t is not None)
        self._no_task()
        self._forget_log()
        self._wake_due = None  # a wake-up the fault met is past, and never ran
        try:
            (ended, quarantined), self._unended = self._close_started(reason, running), ()
        except Exception as failed:  # closed by _advance once the store answers
            log.warning(
                "user %r: the tasks the error ended could not be closed: %s",
                self.user_id,
                self._describe(failed),
            )
            (ended, quarantined), self._unended = (dict.fromkeys(ran, "FAILED"), []), ran
        self._log_quarantined(quarantined, reason)
        for task_id, status in ended.items():
            knowledge, covered = spent if task_id == running else (0, 0)
            covered += len(quarantined) if task_id == running else 0
            self._services.observer.task_finished(
                self.user_id,
                task_id,
                status,
                knowledge,
                reason if status == "FAILED" else None,
                covered,
            )
        if ended and not self._unended:
            self._start_queued_next()
            if self._services.settings.auto_process:
                self._wake_in(self._services.backoff.failed(self.user_id))
        else:
            self._wake_in(self._services.store_backoff.failed(self.user_id))

    def _close_started(self, reason: str, faulted: str | None) -> tuple[dict[str, str], list[str]]:
        """As the owner, close every started task of the reloaded log as FAILED with
        ``reason`` (with no task running here, any such task is one this actor ran), the
        batch out of ``faulted`` (the task running at the fault) as a failure blamed on
        it; returns each task's status by id (COMPLETED: its last message quarantined)
        and the messages quarantined."""
        if not self._owner or not self._lease_held():
            return {}, []
        limits = self._services.settings.limits

        def close(user_log: UserLog | None) -> tuple[dict[str, str], list[str]]:
            if user_log is None or not user_log.started_tasks:
                return {}, []
            ended, quarantined = dict.fromkeys(user_log.started_tasks, "FAILED"), []
            if faulted in user_log.open_tasks:
                quarantined = user_log.record_failure(faulted, reason, blamed=True, limits=limits)
                if faulted not in user_log.started_tasks:
                    ended[faulted] = "COMPLETED" if quarantined else "FAILED"
            user_log.close_interrupted(reason)
            return ended, quarantined

        return self._decide(close)

    def _limits(self) -> BatchLimits:
        """The batch limits a batch of this user is planned by: the configured ones, their
        tokens lowered while the API is learned to take fewer (a 413, a prompt over the
        context window), less what the entries shown beside this user's last batch weighed
        with those its facts added (:meth:`_shown_after`; before this actor ran one, what
        they may weigh: see :meth:`_most_shown`)."""
        shown = self._shown_tokens
        return self._services.request_size.within(
            self._services.settings.limits, self._most_shown() if shown is None else shown
        )

    def _most_shown(self) -> int:
        """What the entries shown beside this user's next batch may weigh, before any batch
        of this actor measured them (after a start, a restart or passivation): nothing for
        a user with no entry to show, else what the user's current entries are expected to
        weigh, at most the share of a batch they are given (one entry for a user whose
        entries all ended: those are shown beside a backdated batch only). Planned as if
        none, a user with many entries would pay a second 413 after a size was learned;
        planned as the whole share, a user with one entry would send a backlog one message
        a request."""
        user_log = self._log
        if user_log is None or (user_log.knowledge_count <= 0 and user_log.latest_end is None):
            return 0
        entries = max(1, user_log.knowledge_count)
        return expected_shown(self._services.settings.limits.max_tokens, entries)

    def _shown_after(self, facts: tuple[ExtractedFact, ...]) -> int:
        """What the entries shown beside this user's next batch may weigh once the running
        batch's ``facts`` are recorded: those it was shown, and the entries its facts add
        (new ones, updates), at most the share of a batch entries are given (unless those
        shown weighed more already). Planned with what the running batch was shown, the
        next batch of a task met a learned request size with the entries this one added
        beside it, and drew a refusal (a 413) for their weight."""
        shown = sum(estimate_tokens(entry.text) for entry in self._batch_known)
        added = sum(estimate_tokens(f.text) for f in facts if f.action in _ADDING_ENTRIES)
        most = shown_budget(self._services.settings.limits.max_tokens)
        return max(shown, min(shown + added, most))

    def _log_quarantined(self, quarantined: list[str], error: str) -> None:
        """Warn of each message quarantined after failing alone ``max_attempts`` times."""
        for message_id in quarantined:
            log.warning(
                "user %r: message %s quarantined after failing alone %d times: %s",
                self.user_id,
                message_id,
                self._services.settings.limits.max_attempts,
                error,
            )

    # ------------------------------------------------------------------ commands

    def add_messages(self, messages: NewMessages, attempt: int = 0) -> BridgedFuture[Appended]:
        """Append ``(role, content, sent_at, name)`` messages, each checked first as
        :meth:`UserLog.add_message` checks it (bad input fails the future, nothing written).

        Returns a future that resolves with the committed events once they are committed
        (their ``MessageAdded`` events are the messages, in order);
        the actor does not wait for the commit, so the next command can be decided while
        this one is being written (the committer keeps the order). A version conflict
        (another process appended) reloads the log and decides again.
        """
        acknowledged: BridgedFuture[Appended] = BridgedFuture()
        self._append(messages, acknowledged, attempt)
        return acknowledged

    def add_checked_messages(self, messages: NewMessages, acknowledged: Reply) -> Reply:
        """:meth:`add_messages` for messages the caller checked already, as the Memory
        checks every write on its loop (``sent_at`` in UTC, or ``None``): they are not
        checked twice on the write path. Unchecked input must go to :meth:`add_messages`.

        The committed events, or the failure, are set on ``acknowledged`` (the caller's
        call, answered later: see ``ActorDirectory.call_async``), which is returned."""
        self._append(messages, acknowledged, 0, checked=True)
        return acknowledged

    def retry_append(
        self,
        messages: NewMessages,
        acknowledged: Reply,
        attempt: int,
        give_up_at: float | None,
        checked: bool = False,
    ) -> None:
        """Decide ``messages`` again on a reloaded log after a conflict, retrying until
        ``give_up_at`` (``time.monotonic``) if it loses again."""
        self._append(messages, acknowledged, attempt, give_up_at, checked=checked)

    def schedule(self, task_id: str, trigger: str, keep_empty: bool = False) -> bool | str:
        """Request task ``task_id``; returns whether this process will run it.

        The owner runs requested tasks one at a time, oldest first; a guest's request is
        run by the owning process. With nothing to do the task ends at once, unstored,
        unless ``keep_empty`` asks for its request to be stored all the same (every process
        then finds it; a user never written is refused with :class:`NotFoundError`): then,
        if the last task found nothing to do and nothing was written since, ``task_id``
        ends at once and that task's id is returned instead (it stands for this request).
        """
        observer = self._services.observer
        owner = self._is_owner()
        leases = self._services.leases
        idle = (
            owner
            and self._running is None
            and not self._took_over
            and (leases is None or leases.fresh(self.user_id))
        )

        quiet: str | None = None

        def request(user_log: UserLog | None) -> tuple[bool, Started | None]:
            nonlocal quiet
            if user_log is None and keep_empty:
                raise NotFoundError(f"no user {self.user_id!r} in this memory")
            quiet = user_log.quiet_since() if keep_empty and user_log is not None else None
            if quiet is not None:
                return False, None
            if user_log is None or not user_log.request_processing(
                task_id, trigger, keep_empty=keep_empty
            ):
                return False, None
            if not idle or self._pause(user_log) > 0:
                return True, None
            return True, user_log.start_next(self._limits())

        requested, started = self._decide(request)
        if not requested:
            observer.task_finished(self.user_id, task_id, "COMPLETED", 0, None)
            return True if quiet is None else quiet
        self._requested_here(task_id)
        if started is not None:
            self._run(started)
        if owner:
            self._advance()
        return owner

    def start_queued(self) -> None:
        """Start the next requested task if this process owns the user and none runs."""
        self._advance()

    def recover(
        self, auto_threshold: int | None, retry_failed: bool = False, probe: str | None = None
    ) -> Recovered:
        """As the owner, close tasks a crash left open as FAILED and run waiting requests.

        With ``auto_threshold``, request processing if enough messages wait; with
        ``retry_failed`` too (the user's last run failed), if any wait, unless that failure
        will not pass by waiting (:attr:`UserLog.refused_last`: a key refused, every
        request refused) and no task of this engine has shown the key accepted since
        (:attr:`SharedServices.key_works`): those are held (:attr:`Recovered.held`), and
        wait for enough messages, a run asked for, or any run of this engine that covers
        messages (the engine owes them a recovery then:
        :class:`actors._key_probe.KeyProbe`). With ``probe``, the user is the engine's
        probe of the key: a run of any message waiting is requested under that task id, or,
        when a request already waits (none more is queued), that request stands for it.
        """
        if not self._is_owner():
            return Recovered([], 0)
        recovered = self._close_stale(auto_threshold, retry_failed=retry_failed, probe=probe)
        self._advance()
        return recovered

    def _close_stale(
        self, auto_threshold: int | None, *, retry_failed: bool = False, probe: str | None = None
    ) -> Recovered:
        """As the owner that just took the user (or opened after a crash): close the
        tasks the last owner left open as FAILED (and those a stopped import left between
        two batches), and request processing if ``auto_threshold`` messages wait, or any
        when the last task to end failed in a way that may pass (``retry_failed``: the
        engine's reopen found so; or the log says so, as at a takeover), or was refused
        and the key is known to work or is probed (task ``probe``, or the request that
        waits already: the engine is told it stands for the probe)."""
        task_id = probe or str(uuid4())
        retry_refused = probe is not None or self._services.key_works.is_set()

        def close_and_request(user_log: UserLog | None) -> tuple[list[str], bool, int, str | None]:
            # One transaction: nobody sees the crash closed but the recovery not requested.
            if user_log is None:
                return [], False, 0, None
            failed = retry_failed or user_log.failed_last
            owed = failed and (retry_refused or not user_log.refused_last)
            stale = [t for t in user_log.started_tasks if t != self._running]
            closed = user_log.close_interrupted(INTERRUPTED_BY_CRASH, stale) if stale else []
            at_least = 1 if auto_threshold is not None and owed else auto_threshold
            requested = (
                at_least is not None
                and len(user_log.pending) >= at_least
                and user_log.request_processing(task_id, "recovery")
            )
            held = failed and auto_threshold is not None and not owed and not requested
            queued = task_id if requested else next(iter(user_log.requested), None)
            return closed, requested, len(user_log.pending) if held else 0, queued

        closed, requested, held, queued = self._decide(close_and_request)
        for closed_id in closed:
            log.warning("user %r: task %s %s", self.user_id, closed_id, INTERRUPTED_BY_CRASH)
            self._services.observer.task_finished(
                self.user_id, closed_id, "FAILED", 0, INTERRUPTED_BY_CRASH
            )
        self._took_over = False
        if requested:
            self._requested_here(task_id)
            self._services.observer.task_scheduled(self.user_id, task_id, "recovery", stored=True)
        if probe is not None and queued is not None:
            self._probe = queued
            if queued != probe:  # told before this actor can tell that request's end
                self._services.probe_stands_as(probe, queued)
        return Recovered(closed, held, queued is not None)

    def _held_at_takeover(self, recovered: Recovered) -> None:
        """Tell the engine of a run refused elsewhere that taking the user over held: this
        engine may not have run anything yet to know its key works, and the user's
        messages would wait for the threshold; the engine probes the key with them."""
        if recovered.held:
            self._services.held_at_takeover(self.user_id, recovered.held)

    def refresh(self, version: int, began: datetime) -> None:
        """The stored log, begun at ``began``, reached ``version`` elsewhere: reload it and
        act on new requests, unless the copy here is of that log and as far along. A copy
        of a log that was forgotten since may be longer than the new one: only when it
        began tells them apart."""
        user_log = self._user_log(create=False)
        if user_log is not None and user_log.version >= version and user_log.created_on == began:
            return
        self._await_last_write()
        self._forget_log()
        self._advance()
        self._probe_ended_elsewhere()

    def _probe_ended_elsewhere(self) -> None:
        """Tell the engine that its probe of the key queued here ended in another process,
        as the log reloaded from the store shows (or that the log is gone): its end is
        never told here, and no other probe could start."""
        probe = self._probe
        if probe is None or not self._loaded:
            return
        user_log = self._log
        if user_log is None or (
            probe != self._running
            and probe not in user_log.requested
            and probe not in user_log.open_tasks
        ):
            self._probe = None
            self._services.probe_gone(probe)

    def _lease_lost(self) -> None:
        """This process lost the user's lease: it processes nothing more of the user, and
        the engine's probe of the key queued here, if any, runs at the new owner's."""
        self._owner = False
        log.warning("user %r: the lease was lost; processing stops here", self.user_id)
        probe, self._probe = self._probe, None
        if probe is not None:
            self._services.probe_gone(probe)

    def renew_ownership(self, owner: bool) -> None:
        """The engine renewed (``True``) or lost (``False``) this user's lease."""
        was, self._owner = self._owner, owner
        if owner and not was:
            log.info("user %r: this process took the user over", self.user_id)
            self._forget_log()
            self._held_at_takeover(self.recover(self._recovery_threshold()))
        elif was and not owner:
            self._lease_lost()

    def shutdown(self, reason: str) -> None:
        """As the owner, end the running task and the tasks requested in this process as
        FAILED with ``reason``; those another process requested are left to the next
        owner."""
        self._shut_down = True
        if not self._owner:
            return
        running, self._running = self._running, None

        shared = self._services.leases is not None

        def close(user_log: UserLog | None) -> list[str]:
            if user_log is None:
                return []
            ours = (running, *self._unended)
            # Another process's requests wait for the next owner: that process still runs.
            requested = [t for t in user_log.requested if not shared or t in self._requests]
            closing = [t for t in user_log.open_tasks if t in ours] + requested
            return user_log.close_interrupted(reason, closing) if closing else []

        for task_id in self._decide(close):
            # The running task keeps what its recorded batches extracted and covered.
            spent = (self._task_knowledge, self._task_covered) if task_id == running else (0, 0)
            self._services.observer.task_finished(
                self.user_id, task_id, "FAILED", spent[0], reason, spent[1]
            )

    def forget(self, erasure: object = None) -> ForgetReceipt:
        """Erase the user once the writes already sent are committed; open tasks end FAILED.

        Calls sent after this one find an empty log and start the user afresh. A log that
        does not load (damaged) is erased all the same: a user can always be forgotten.
        The observer is then told (``user_forgotten``, with ``erasure``) that the tasks it
        heard of so far are gone, in order with their news: the caller knows which tasks
        this actor had begun before the forget, though it hears of some only later.
        """
        self._await_last_write()
        try:
            user_log = self._user_log(create=False, claim=False)  # erasing needs no lease
        except StorageError:
            log.warning("user %r: the log does not load; erasing it", self.user_id, exc_info=True)
            user_log = None
        ended = [] if user_log is None else [*user_log.started_tasks, *user_log.requested]
        erased = self._services.erase(self.user_id)
        try:
            self._running = None
            self._unended = ()
            self._requests = ()
            self._batch_messages = ()
            self._owner = None
            self._forget_log()
        finally:
            self._tell_forgotten(ended, erasure)
        log.info("user %r forgotten: %d events erased", self.user_id, erased.events)
        return erased

    def _tell_forgotten(self, ended: Sequence[str], erasure: object) -> None:
        """Tell the observer that the ``ended`` tasks failed with the user and that the
        forget sent as ``erasure`` is done: the log is gone, so whatever failed after its
        erasure, no handle may go on answering a task erased with it."""
        try:
            for task_id in ended:
                self._services.observer.task_finished(
                    self.user_id, task_id, "FAILED", 0, FORGOTTEN_REASON
                )
        finally:
            self._services.observer.user_forgotten(self.user_id, erasure)

    def extraction_done(self, task_id: str, outcome: Outcome) -> None:
        """Record the outcome of the running batch, then go on with the task's next batch,
        or end the task and start the next requested one."""
        if task_id != self._running:
            # The task ended while its batch was out: the user was forgotten, or the
            # task interrupted. Nothing is lost: its messages went with the user, or
            # back to the buffer.
            log.info(
                "user %r: task %s had ended when its extraction answered; the answer is dropped",
                self.user_id,
                task_id,
            )
            return
        if isinstance(outcome, ExtractionResult):
            result = outcome
            try:
                shown = (self._batch_known, self._batch_replaced)
                since = min((m.sent_at for m in self._batch_messages), default=None)
                shown = self._services.targets(self.user_id, result.facts, shown, since)
                self._batch_known, self._batch_replaced = shown
                self._task_knowledge += self._decide(lambda ul: len(self._record(ul, result)))
                self._task_covered += len(self._batch_messages)
            except _UserForgotten:
                log.info(
                    "user %r: task %s: the user was forgotten elsewhere while its batch was "
                    "out; the answer is dropped",
                    self.user_id,
                    task_id,
                )
                self._batch_ended(task_id, "FAILED", FORGOTTEN_REASON, recorded=False)
                return
            except _KnowledgeReplaced as replaced:
                self._batch_reruns += 1
                log.info(
                    "user %r: task %s: the live knowledge its batch was shown was replaced "
                    "(%s); extracting the batch again",
                    self.user_id,
                    task_id,
                    replaced,
                )
                self._run_batch(task_id, [m.message_id for m in self._batch_messages])
                return
            except MemveeError as refused:
                outcome = refused
                if isinstance(refused, StorageError):
                    outcome = StorageError(f"could not record the outcome: {refused}")
            except Exception as error:  # a defect this answer meets: retried, it would again
                log_failure(
                    log,
                    logging.ERROR,
                    error,
                    self._credentials(),
                    "user %r: task %s: recording the outcome failed",
                    self.user_id,
                    task_id,
                )
                outcome = InvalidExtractionError(
                    f"its answer could not be recorded: {self._describe(error)}"
                )
            else:
                self._services.backoff.succeeded(self.user_id)
                self._services.touched(self.user_id)
                self._batch_ended(task_id, "COMPLETED", None)
                return
            self._batch_failed(task_id, outcome, result.usage)
            return
        self._batch_failed(task_id, outcome)

    def wake(self) -> None:
        """A pause is over: retry what failed (with auto-processing) and start what waits."""
        self._wake_due = None
        self._advance(retry=self._services.settings.auto_process)

    def requeue(self, message_ids: Sequence[str] | None) -> list[str]:
        """Put quarantined messages (all, by default) back in the buffer; returns their ids.

        With auto-processing, a task is requested when the buffer reaches the threshold.
        """
        settings = self._services.settings
        task_id = str(uuid4())

        def requeue(user_log: UserLog | None) -> tuple[list[str], bool]:
            if user_log is None:
                if message_ids:
                    raise InvalidInputError(f"user {self.user_id!r} has no quarantined message")
                return [], False
            returned = user_log.requeue(message_ids)
            auto = (
                bool(returned)
                and settings.auto_process
                and len(user_log.pending) >= settings.batch_threshold
                and user_log.request_processing(task_id, "auto")
            )
            return returned, auto

        returned, auto = self._decide(requeue)
        if auto:
            self._requested_here(task_id)
            self._services.observer.task_scheduled(self.user_id, task_id, "auto", stored=True)
        if returned:
            log.info("user %r: %d quarantined messages requeued", self.user_id, len(returned))
        self._advance()
        return returned

    def passivate(self) -> bool:
        """Stop this actor if it is idle and nobody has a message on its way to it."""
        busy = (
            self._running is not None
            or bool(self._unended)
            or bool(self._owner and self._log is not None and self._log.requested)
        )
        if not self._retire(self.user_id, self.actor_ref, busy):
            return False
        self.stop()
        return True

    # ------------------------------------------------------------------ internals

    def _append(
        self,
        messages: NewMessages,
        acknowledged: Reply,
        attempt: int,
        give_up_at: float | None = None,
        *,
        checked: bool = False,
    ) -> None:
        settings = self._services.settings
        try:  # failures reach the caller through `acknowledged` (a retry has no other way)
            user_log = self._user_log(create=True)
            assert user_log is not None
            for role, content, sent_at, name in messages:
                if checked:
                    user_log.add_checked_message(role, content, sent_at, name)
                else:
                    user_log.add_message(role, content, sent_at, settings.max_content_chars, name)
            auto_task = None
            if settings.auto_process and len(user_log.pending) >= settings.batch_threshold:
                auto_task = str(uuid4())
                if not user_log.request_processing(auto_task, "auto"):
                    auto_task = None
        except BaseException as error:
            self._forget_log()
            acknowledged.set_exception(error)
            return
        events = user_log.collect_events()
        if auto_task is not None:
            self._requested_here(auto_task)
            self._services.observer.task_scheduled(self.user_id, auto_task, "auto", stored=False)
        write = _Append(events, self, _began(user_log, events), messages, acknowledged, attempt)
        write.give_up_at, write.checked = give_up_at, checked
        write.snapshot, write.auto_task = self._due_snapshot(user_log), auto_task
        self._last_write = self._services.committer.submit(write)
        self._maybe_checkpoint()
        if auto_task is not None and self._is_owner():
            self._start_queued_next()

    def write_failed(self, epoch: int) -> None:
        """A pipelined write of ``epoch`` failed: reload the log before the next command."""
        if epoch == self._epoch:
            log.info("user %r: a write failed; reloading the log from the store", self.user_id)
            self._forget_log()

    def _advance(self, *, retry: bool = False) -> None:
        """Start requested tasks while this process owns the user, none runs, the engine
        does not stop, and the user's backoff does not ask to wait (then a wake-up is set).

        A task this actor ran but could not store the end of is closed first, its
        messages back in the buffer. With ``retry`` (or after such a close, with
        auto-processing) a buffer left waiting gets a new task. When the store fails, this
        is tried again after the user's backoff.
        """
        observer = self._services.observer
        while self._running is None and not self._shut_down and self._is_owner():
            step = _Step(self, retry=retry)
            try:
                if self._took_over:
                    self._held_at_takeover(self._close_stale(self._recovery_threshold()))
                if not self._lease_held():
                    return
                self._decide(step)
            except Exception as error:
                delay = self._services.store_backoff.failed(self.user_id)
                log.warning(
                    "user %r: could not start a task (trying again in %.1f s): %s",
                    self.user_id,
                    delay,
                    self._describe(error),
                )
                self._wake_in(delay)
                return
            retry = False
            self._unended = ()
            self._services.store_backoff.succeeded(self.user_id)
            for task_id in step.closed:
                log.warning("user %r: task %s %s", self.user_id, task_id, UNSTORED_REASON)
                observer.task_finished(self.user_id, task_id, "FAILED", 0, UNSTORED_REASON)
            if step.retry_id is not None:
                self._requested_here(step.retry_id)
                observer.task_scheduled(self.user_id, step.retry_id, "retry", stored=True)
            if step.paused > 0:
                self._wake_in(step.paused)
            if step.started is None:
                return
            self._run(step.started)

    def _pause(self, user_log: UserLog) -> float:
        """Seconds to wait before the oldest requested task may start (0: now).

        After a failure that may pass, the user's automatic tasks back off; a caller asking
        for processing is not made to wait. (While the API is down for everyone, the
        breaker holds the batches in the workers instead.)
        """
        if "manual" in user_log.requested.values():
            return 0.0
        return self._services.backoff.remaining(self.user_id)

    def _wake_in(self, delay: float) -> None:
        """Have this user woken in ``delay`` seconds, unless a wake-up comes sooner."""
        due = time.monotonic() + delay
        if self._wake_due is not None and self._wake_due <= due:
            return
        self._wake_due = due
        self._services.wake(self.user_id, delay)

    def _batch_failed(
        self, task_id: str, error: BaseException, spent: TokenUsage | None = None
    ) -> None:
        """Record a failed batch: split it, quarantine a message that keeps failing alone,
        or (for a failure that may pass) end the task and back off, the batch returned
        whole if the API was down for every call (the workers' harmless request failed too).

        ``spent`` is what an answer that could not be recorded cost (the store failed): the
        failure records it, or ``memvee stats`` would never count that paid call.
        """
        again = repeats(error)
        text = self._describe(error)
        wait = asked_to_wait(error)
        claimed = self._batch_messages
        breaker = self._services.breaker
        blamed = (  # never a failed store, an overloaded API, one refusing every batch, nor
            # a refusal whose probe failed: none is evidence against the message
            not again
            and not isinstance(
                error, StorageError | EveryBatchRefused | ExtractorNotAsync | THE_APIS_STATE
            )
            and len(claimed) == 1
            and breaker.blame(claimed[0].message_id)
        )
        whole = isinstance(error, _THE_API_DOWN)  # an outage halves no batch
        refused = isinstance(error, _REFUSED_UNTIL_CHANGED)
        if refused:
            self._services.key_works.clear()
        if isinstance(error, RejectedBatchError) and error.too_large and len(claimed) > 1:
            sent = sum(estimate_tokens(m.content) for m in claimed)
            self._services.request_size.too_large(
                sent,
                self._shown_tokens or 0,
                prompt_tokens=error.prompt_tokens,
                context_tokens=error.context_tokens,
                estimated_tokens=error.estimated_tokens,
                fixed_tokens=error.fixed_tokens,
            )
        usage = error.usage if isinstance(error, ExtractionError) and error.usage else None
        usage = usage or spent or _NO_USAGE
        extractor = self._services.workers.extractor
        limits = self._limits()

        def fail(user_log: UserLog | None) -> tuple[list[str], str]:
            if user_log is None or task_id not in user_log.open_tasks:
                return [], text
            told = text
            if whole and not user_log.keeps_failures_whole:
                split = (
                    f"split all the same: {WHOLE_FAILURES_IN_A_ROW} failures in a row left it "
                    "whole already"
                )
                # The error's note that the batch stays whole no longer holds: it is replaced.
                note = error.whole_note if isinstance(error, ExtractionError) else None
                kept_whole = f"; {note})" if note else None
                if kept_whole and text.endswith(kept_whole):
                    told = f"{text.removesuffix(kept_whole)}; {split})"
                else:
                    told = f"{text} ({split})"
            return user_log.record_failure(
                task_id,
                told,
                repeats=again,
                blamed=blamed,
                whole=whole,
                refused=refused,
                usage=usage,
                extractor=extractor.name,
                model=getattr(extractor, "model", None),
                limits=limits,
            ), told

        try:
            quarantined, text = self._decide(fail)
        except Exception as error:
            log.warning(
                "user %r: task %s: its failure could not be stored (%s); the task is closed "
                "once the store answers",
                self.user_id,
                task_id,
                self._describe(error),
            )
            self._unended = (*self._unended, task_id)
            self._batch_ended(task_id, "FAILED", text, recorded=False)
            return
        self._log_quarantined(quarantined, text)
        self._task_covered += len(quarantined)
        if again or quarantined:
            log.info("user %r: task %s: a batch failed, split: %s", self.user_id, task_id, text)
            self._batch_ended(task_id, "COMPLETED", None)
            return
        log.warning("user %r: task %s failed: %s", self.user_id, task_id, text)
        delay = self._services.backoff.failed(self.user_id, at_least=wait)
        if self._services.settings.auto_process:
            self._wake_in(delay)
        self._batch_ended(task_id, "FAILED", text)

    def _batch_ended(
        self, task_id: str, status: str, error: str | None, *, recorded: bool = True
    ) -> None:
        """Go on with the task's next batch if the log started one; else the task ended."""
        self._task_messages = {*self._task_messages, *(m.message_id for m in self._batch_messages)}
        self._batch_reruns = 0
        user_log = self._log
        if recorded and user_log is not None and task_id in user_log.open_tasks:
            self._run_batch(task_id, list(user_log.open_tasks[task_id]))
            return
        self._no_task()
        self._services.observer.task_finished(
            self.user_id, task_id, status, self._task_knowledge, error, self._task_covered
        )
        self._advance()

    def _no_task(self) -> None:
        """Forget the running task and its batch: none runs here now."""
        self._running = None
        self._batch_messages = ()
        self._batch_known, self._batch_replaced = _NONE_KNOWN, ()
        self._task_messages = ()

    def _run(self, started: Started) -> None:
        """Hand a started task's first batch to the workers (or end it, if it claimed nothing)."""
        observer = self._services.observer
        task_id, trigger, claimed = started
        observer.task_scheduled(self.user_id, task_id, trigger, stored=True)
        if not claimed:
            observer.task_running(self.user_id, task_id, 0)
            observer.task_finished(self.user_id, task_id, "COMPLETED", 0, None)
            return
        self._running = task_id
        self._task_log = None if self._log is None else self._log.created_on
        self._task_messages = ()
        self._task_knowledge = 0
        self._task_covered = 0
        self._batch_reruns = 0
        self._run_batch(task_id, claimed)

    def _run_batch(self, task_id: str, claimed: list[str]) -> None:
        """Read a batch's messages and hand them to the workers."""
        self._services.observer.task_running(
            self.user_id, task_id, len({*self._task_messages, *claimed})
        )
        self._hand_over(task_id, claimed)

    def shown_ready(
        self,
        task_id: str,
        round_: int,
        messages: tuple[BatchMessage, ...],
        shown: Shown | StorageError,
    ) -> None:
        """Hand the batch of ``messages`` to the workers with the entries ``shown`` beside
        it, read aside (see :meth:`_hand_over`), or end it as a failed read; unless its
        task ended meanwhile (forgotten, interrupted, shut down), or this process lost the
        user's lease: then it is dropped, and no extractor is paid for an answer the log
        would refuse (the next owner closes the task)."""
        if task_id != self._running or round_ != self._shown_round:
            log.info(
                "user %r: task %s had ended when the entries shown beside its batch were read",
                self.user_id,
                task_id,
            )
            return
        if self._owner is False:
            log.info(
                "user %r: task %s: the lease was lost while the entries shown beside its "
                "batch were read; the batch is dropped",
                self.user_id,
                task_id,
            )
            self._running = None
            return
        if isinstance(shown, StorageError):
            self._unread(task_id, shown)
            return
        self._to_workers(task_id, messages, shown)

    def _hand_over(self, task_id: str, claimed: list[str]) -> None:
        """Read the batch and hand it to the workers; for a user past
        :data:`MAX_KNOWN_ENTRIES` current entries, what it is shown is prepared off this
        thread (its texts embedded, its related entries searched), so that neither a slow
        embedder nor the searches hold the user's writes (see :meth:`shown_ready`)."""
        try:
            batch = self._batch(task_id, claimed)
        except Exception as error:
            self._unread(task_id, error)
            return
        if batch is not None:
            self._to_workers(task_id, *batch)

    def _to_workers(self, task_id: str, messages: tuple[BatchMessage, ...], shown: Shown) -> None:
        """Hand the batch of ``messages`` to the workers with the entries ``shown`` beside
        it, kept for deciding on its answer."""
        self._batch_messages = messages
        self._batch_known, self._batch_replaced = shown
        self._shown_tokens = sum(estimate_tokens(entry.text) for entry in shown[0])
        batch = ExtractionBatch(self.user_id, task_id, messages, shown[0])
        self._services.workers.submit(batch, self._deliver_to_self(task_id))

    def _unread(self, task_id: str, error: Exception) -> None:
        """End the running batch, which could not be read, as a failed store (a failed read
        never splits a batch)."""
        self._batch_messages = ()
        if not isinstance(error, MemveeError):
            log.warning(
                "user %r: task %s: reading its batch failed", self.user_id, task_id, exc_info=True
            )
            error = StorageError(f"could not read the batch: {self._describe(error)}")
        self.extraction_done(task_id, error)

    def _prepare_aside(
        self,
        task_id: str,
        messages: tuple[BatchMessage, ...],
        current: int,
        backdated: tuple[datetime, datetime] | None,
        aside: ShownAside,
    ) -> None:
        """Have what the batch of ``messages`` is shown prepared off this thread; it comes
        back as :meth:`shown_ready`."""
        self._shown_round += 1
        round_, myself, user_id = self._shown_round, self._myself, self.user_id

        def _ready(shown: Shown | StorageError) -> None:
            if not myself.actor_ref.is_alive():  # a message to it would be dropped unsaid
                log.info(
                    "user %r: task %s ended after its actor stopped (shutdown); the entries "
                    "read for its batch are dropped",
                    user_id,
                    task_id,
                )
                return
            myself.shown_ready(task_id, round_, messages, shown)

        aside(self.user_id, messages, current, backdated, _ready)

    def _record(self, user_log: UserLog | None, result: ExtractionResult) -> list[Any]:
        """Record the running batch's facts (the log goes on with the next batch, if any)."""
        task_id = self._running
        if user_log is None or user_log.created_on != self._task_log:
            raise _UserForgotten
        if task_id is None or task_id not in user_log.open_tasks:
            raise MemveeError(
                f"task {task_id} was closed while its batch was out: another process took "
                "the user over"
            )
        if self._batch_reruns < MAX_BATCH_RERUNS:
            shown = {k.entry_id for k in self._batch_known if k.valid_until is None}
            ended = {
                target
                for fact in result.facts
                if (target := fact.target_entry_id) in shown
                and user_log.valid_entries.get(target) != LIVE_KNOWLEDGE
            }
            if ended:
                raise _KnowledgeReplaced(f"no longer current: {', '.join(sorted(ended))}")
        self._shown_tokens = self._shown_after(result.facts)
        return user_log.record_knowledge(
            task_id,
            result.facts,
            result.extractor,
            result.model,
            result.usage,
            batch=self._batch_messages,
            limits=self._limits(),
            known=self._batch_known,
            replaced=self._batch_replaced,
        )

    def _deliver_to_self(self, task_id: str) -> Callable[[Outcome], None]:
        myself = self._myself

        def _deliver(outcome: Outcome) -> None:
            try:
                myself.extraction_done(task_id, outcome)
            except pykka.ActorDeadError:
                log.info("task %s ended after its actor stopped (shutdown)", task_id)

        return _deliver

    def _batch(
        self, task_id: str, claimed: list[str]
    ) -> tuple[tuple[BatchMessage, ...], Shown] | None:
        """Read the claimed messages back from the log (the state keeps no bodies) and what
        they are shown; ``None``: what they are shown is prepared aside (see
        :meth:`_prepare_aside`)."""
        user_log = self._user_log(create=False)  # reloaded, after a decision that raised
        assert user_log is not None
        versions = user_log.open_tasks[task_id]
        first, last = min(versions.values()), max(versions.values())
        wanted = set(claimed)
        events = self._services.store.events_of(self.user_id, after=first - 1, upto=last)
        messages = tuple(
            BatchMessage.of(e)
            for e in events
            if isinstance(e, UserLog.MessageAdded) and e.message_id in wanted
        )
        self._batch_messages = messages
        times = [m.sent_at for m in messages]
        backdated = (min(times), max(times)) if times and user_log.ends_after(min(times)) else None
        current, aside = user_log.knowledge_count, self._services.shown_aside
        if aside is not None and current > MAX_KNOWN_ENTRIES:
            self._prepare_aside(task_id, messages, current, backdated, aside)
            return None
        return messages, self._services.known(self.user_id, messages, current, backdated)

    def _requested_here(self, task_id: str) -> None:
        """Note a task this process requested (the log keeps no requester); those that
        left the log's requests are dropped from the note."""
        waiting = () if self._log is None else self._log.requested
        self._requests = (*[t for t in self._requests if t in waiting], task_id)

    def _is_owner(self) -> bool:
        if self._owner is None:
            leases = self._services.leases
            self._owner = True if leases is None else leases.try_acquire(self.user_id)
            self._took_over = self._owner and leases is not None
            if self._took_over:  # close the last owner's tasks now, not at the next request
                self._start_queued_next()
        return self._owner

    def _lease_held(self) -> bool:
        """Whether this process still holds the user's lease, asked before a task starts:
        a process stopped or cut off past its lease must not start one (it would run a
        task the new owner may run too, and answer the wrong caller)."""
        leases = self._services.leases
        if leases is None or leases.held(self.user_id):
            return True
        self._lease_lost()
        return False

    def _leaves_for_its_requester(self, user_log: UserLog) -> bool:
        """Whether the next request is another process's and this one closes: started
        now, it would be failed by the close; left, its process runs it once it takes
        the user over."""
        services = self._services
        if services.leases is None or not services.closing.is_set():
            return False
        return next(iter(user_log.requested)) not in self._requests

    def _recovery_threshold(self) -> int | None:
        """With auto-processing, the buffered messages that make a takeover ask for a run."""
        settings = self._services.settings
        return settings.batch_threshold if settings.auto_process else None

    def _user_log(self, *, create: bool, claim: bool = True) -> UserLog | None:
        if self._owner is None and claim:
            self._is_owner()  # the first actor to touch a user claims it
        if not self._loaded:
            self._services.refuse_unfolded(self.user_id)
            self._services.committer.wait_for_log(user_log_id(self.user_id))
            loaded = self._services.store.load_log(self.user_id)
            self._log = loaded.log
            self._loaded = True
            self._epoch = next(_WRITE_EPOCHS)
            self._last_write = None
            # Counted from the stored snapshot: an actor stopped before the next one was
            # due must not start the count again, or a user who writes a little at a time
            # would never be snapshotted, and every load would replay the whole log.
            self._snapshot_version = loaded.snapshot_version
            self._snapshot_spacing = loaded.snapshot_bytes // SNAPSHOT_EVENT_BYTES
            if loaded.passed_over and claim and self._owner and self._log is not None:
                self._snapshot_now(self._log)
            self._checkpointed = self._intervals(0 if self._log is None else self._log.version)
            if self._checkpointed:  # a long log: make sure it has a recent checkpoint
                self._services.checkpoint_due(self.user_id)
            if claim and self._owner and self._running is None and self._log is not None:
                self._start_found_requests(self._log)
        if self._log is None and create:
            self._log = UserLog.register(self.user_id)
        return self._log

    def _start_found_requests(self, user_log: UserLog) -> None:
        """As the owner, have the requests a (re)loaded log holds started once the command
        that loaded it is done: another process may have stored one since the last load,
        and a reload after a conflict (an append's, say) brings the copy here up to date,
        so following other processes' writes would find nothing new to act on."""
        if user_log.requested and self._services.store_backoff.remaining(self.user_id) <= 0:
            self._start_queued_next()  # (a start the store refused waits its backoff)

    def _forget_log(self) -> None:
        """Drop the in-memory log so the next command reloads it from the store.

        A failed save leaves the aggregate ahead of the store; saving it later would
        store a version gap and make the log unloadable.
        """
        self._log = None
        self._loaded = False

    def _decide(self, decide: Callable[[UserLog | None], T]) -> T:
        """Run ``decide`` on the log and commit what it emitted, waiting for the commit.

        On a version conflict (another process appended) reload the log and decide again,
        after a random wait, for up to :data:`DECIDE_RETRY_SECONDS`.
        A decision that wrote nothing, or refused (a message not quarantined, a task not
        known), is made again too if the stored log went on meanwhile (a `memvee` command
        or another process appended): no conflict would tell, and "nothing to process"
        said of old state would leave what arrived in the buffer. A decision that raised
        leaves no event behind: the log is reloaded, whatever it had emitted dropped.
        A store failure that may pass (a connection lost, a statement timeout) is retried
        a few times (see :meth:`_wait_for_the_store`); a commit it cut short that was
        stored all the same is found in the log, not made twice.
        """
        give_up_at = time.monotonic() + DECIDE_RETRY_SECONDS
        attempt = failures = 0
        failed: StorageError | None = None  # the store's last failure, if it was the last
        unsettled: tuple[Any, T] | None = None  # a cut-short commit's first event, result
        while True:
            if attempt and time.monotonic() > give_up_at:
                raise failed or ConflictError(
                    f"user {self.user_id!r}: other writers kept writing first for "
                    f"{DECIDE_RETRY_SECONDS:g} s ({attempt} attempts)"
                )
            attempt += 1
            try:
                if unsettled is not None:
                    if self._stored(unsettled[0]):
                        self._user_log(create=False)  # the log as the commit left it
                        return unsettled[1]
                    unsettled = None
                result = decide(self._user_log(create=False))
            except (InvalidInputError, NotFoundError):
                behind = self._behind_the_store()
                self._forget_log()  # a refusal may come after part of a decision
                if not behind:
                    raise
                continue
            except StorageError as error:
                self._forget_log()
                failures += 1
                failed = self._wait_for_the_store(error, failures, give_up_at)
                continue
            except BaseException:
                self._forget_log()  # never commit what a decision cut short emitted
                raise
            first = next(iter(self._log.pending_events), None) if self._log else None
            try:
                if not self._commit() and self._behind_the_store():
                    self._forget_log()
                    continue
            except ConflictError:
                failed = None
                time.sleep(conflict_delay(attempt))
                continue
            except StorageError as error:
                failures += 1
                failed = self._wait_for_the_store(error, failures, give_up_at)
                unsettled = None if first is None else (first, result)
                continue
            return result

    def _wait_for_the_store(
        self, error: StorageError, failures: int, give_up_at: float
    ) -> StorageError:
        """Wait before the store is tried again after ``error``, its ``failures``-th failure,
        and return it; raise it instead if it would fail again the same way
        (:func:`~events.errors.may_pass`), after :data:`STORE_ATTEMPTS` failures, if the wait
        would end past ``give_up_at``, or once the engine stops (a database that is down never
        holds a close up past its grace)."""
        delay = store_delay(failures)
        stopping = self._services.stopping
        if (
            not may_pass(error)
            or failures >= STORE_ATTEMPTS
            or time.monotonic() + delay > give_up_at
            or stopping.is_set()
        ):
            raise error
        log.info(
            "user %r: the store failed (%s); trying again in %.2f s",
            self.user_id,
            first_line(error),
            delay,
        )
        if stopping.wait(delay):
            raise error
        return error

    def _stored(self, first: Any) -> bool:
        """Whether ``first``, the first event of a commit the store failed, was stored all
        the same (the connection was lost after the commit was sent): the stored log holds
        that very event at its version (see :meth:`EventStore.find_recorded`)."""
        return self._services.store.find_recorded([[first]])[0] is not None

    def _behind_the_store(self) -> bool:
        """Whether the stored log has an event past the version of the one in memory, or
        is another log (the user was forgotten and began again, maybe to fewer events)."""
        store, user_log = self._services.store, self._log
        known = 0 if user_log is None else user_log.version
        if store.events_of(self.user_id, after=known, upto=known + 1):
            return True
        if user_log is None or known == 0:
            return False
        first = next(iter(store.events_of(self.user_id, after=0, upto=1)), None)
        return not isinstance(first, UserLog.Registered) or first.timestamp != user_log.created_on

    def _commit(self) -> list[Any]:
        """Write the pending events and wait until they are committed."""
        if self._log is None:
            return []
        events = self._log.collect_events()
        if not events:
            return []
        snapshot = self._due_snapshot(self._log)
        try:
            recorded = self._services.committer.commit(
                events, self._epoch, snapshot, _began(self._log, events)
            )
        except BaseException:
            self._forget_log()
            raise
        self._maybe_checkpoint()
        return recorded

    def _await_last_write(self) -> bool:
        """Wait until the writes already sent are settled; whether one of them failed."""
        if self._last_write is None:
            return False
        committer = self._services.committer
        committer.wait_for(self._last_write)
        user_log = self._log
        return user_log is not None and committer.failed(user_log.id, self._epoch)

    def _due_snapshot(self, user_log: UserLog) -> StoredSnapshot | None:
        """A snapshot of the log at its new version, every ``snapshot_interval`` events, to
        be stored in the same transaction as the events that reach that version (so no
        wait for the write, and no transaction of its own).

        A large state (thousands of messages waiting for extraction) is snapshotted less
        often: after at least as many events as its last snapshot was large in stored
        events. Encoding it then costs about as much per event as storing the event, and a
        load replays no more bytes of events than the snapshot holds.
        """
        interval = self._services.settings.snapshot_interval
        since = user_log.version - self._snapshot_version
        if not interval or since < interval or since < self._snapshot_spacing:
            return None
        self._snapshot_version = user_log.version  # a failed write reloads, which resets it
        try:
            snapshot = self._services.store.snapshot_of(user_log)
            if snapshot is not None:
                self._snapshot_spacing = len(snapshot.state) // SNAPSHOT_EVENT_BYTES
            return snapshot
        except Exception:  # a snapshot only speeds up loading: never refuse the write for it
            log.warning(
                "user %r: could not snapshot the log at version %d",
                self.user_id,
                user_log.version,
                exc_info=True,
            )
            return None

    def _snapshot_now(self, user_log: UserLog) -> None:
        """As the owner, store a snapshot of ``user_log`` just replayed from its first event
        (its latest snapshot was passed over): a user loaded again and again with no write
        between (one held after a refused run, reopen after reopen) would otherwise replay
        the whole log at each load. A snapshot is the state at its version, whoever stores
        it; it replaces the one passed over."""
        try:
            self._services.store.replace_snapshot(user_log)
            self._snapshot_version = user_log.version
        except MemveeError as error:  # a snapshot only speeds up loading: told, not fatal
            log.warning(
                "user %r: could not store a snapshot at version %d: %s",
                self.user_id,
                user_log.version,
                first_line(error),
            )

    def _maybe_checkpoint(self) -> None:
        """Ask for a checkpoint of the log's replayed state every ``checkpoint_interval``
        events, once the events are committed."""
        user_log = self._log
        if user_log is None or self._intervals(user_log.version) <= self._checkpointed:
            return
        if self._await_last_write():
            return
        self._checkpointed = self._intervals(user_log.version)
        self._services.checkpoint_due(self.user_id)

    def _intervals(self, version: int) -> int:
        """How many checkpoint intervals ``version`` events span (0 with checkpoints off)."""
        interval = self._services.settings.checkpoint_interval
        return version // interval if interval else 0

    def _credentials(self) -> tuple[str, ...]:
        """The credentials none of this actor's log lines may show: the environment's and
        those of the extractor's clients, whose answers and errors it handles
        (:meth:`ExtractionWorkers.credentials`)."""
        return self._services.workers.credentials()

    def _describe(self, error: BaseException) -> str:
        """``error`` as a task's failure text, logged and stored in the user's log: its first
        line (no statement or parameters a database error carries), named by its type
        unless it is one of memvee's, and without a credential (an extractor's error may
        echo an API key: :meth:`ExtractionWorkers.credentials`)."""
        if isinstance(error, MemveeError):
            text = str(error) or type(error).__name__
        else:
            text = f"{type(error).__name__}: {first_line(error)}"
        return redact(text, self._credentials())


_NO_USAGE = TokenUsage()

_THE_API_DOWN = ApiDown | ExtractionPausedError | EveryRequestRefusedError
"""Failures met while the API was down or refusing every call (a harmless request failed
or was refused too, or the breaker held the batch unsent): their batch returns unsplit."""


_REFUSED_UNTIL_CHANGED = (
    EveryRequestRefusedError | ExtractorAccessRefusedError | ExtractorNotFoundError
)
"""Failures that waiting does not make pass (every request refused, the credentials
refused, what the request names not found): a reopened Memory does not retry their task;
a run does once enough messages wait for one (the batch threshold) or when asked for,
after the key or the settings change."""


class _UserForgotten(Exception):
    """Another process forgot the user while a batch was out (and the user may have begun
    again: another log): the answer is of words that are gone, and the task ended with
    the log it was in."""


class _KnowledgeReplaced(Exception):
    """A batch's answer names live entries it was shown that are no longer current: the
    live knowledge was replaced (a promotion) while the batch was out, so the answer is
    of knowledge that is gone, and the batch is extracted again against the new one."""


class _Step:
    """One step of :meth:`UserActor._advance`, called with the log to decide on (again
    after a conflict, so it sets every field each time); the fields say what it did."""

    def __init__(self, actor: UserActor, *, retry: bool) -> None:
        self.actor, self.retry = actor, retry
        self.closed: list[str] = []
        self.retry_id: str | None = None
        self.paused = 0.0
        self.started: Started | None = None

    def __call__(self, user_log: UserLog | None) -> None:
        actor, settings = self.actor, self.actor._services.settings
        self.closed, self.retry_id, self.paused, self.started = [], None, 0.0, None
        if user_log is None:
            return
        unended = [t for t in actor._unended if t in user_log.open_tasks]
        if unended:
            self.closed = user_log.close_interrupted(UNSTORED_REASON, unended)
        if (
            (self.retry or (self.closed and settings.auto_process))
            and not user_log.requested
            and not user_log.open_tasks
            and user_log.pending
        ):
            self.retry_id = str(uuid4())
            if not user_log.request_processing(self.retry_id, "retry"):
                self.retry_id = None
        if not user_log.requested or actor._leaves_for_its_requester(user_log):
            return
        self.paused = actor._pause(user_log)
        if self.paused <= 0:
            self.started = user_log.start_next(actor._limits())


class _Append(Write):
    """An append's write, told how it ended on the writing thread: acknowledges the caller
    with the committed events, or has the actor decide the messages again after a
    conflict.

    One object per write in flight, the committer's request and its outcome together: a
    burst of writes leaves the collector fewer objects to walk.
    """

    __slots__ = (
        "acknowledged",
        "actor",
        "attempt",
        "auto_task",
        "checked",
        "give_up_at",
        "messages",
    )

    attempts = STORE_ATTEMPTS
    """An append's caller learns of a failure only once it is settled, and cannot tell a
    statement timeout from data loss: the committer tries it again first (the store's
    failure may pass), looking for it in the log before each try, so it is stored once."""

    def __init__(
        self,
        events: Sequence[Any],
        actor: UserActor,
        origin: datetime | None,
        messages: NewMessages,
        acknowledged: Reply,
        attempt: int,
    ) -> None:
        super().__init__(events, actor._epoch, origin=origin)
        self.actor, self.messages, self.acknowledged = actor, messages, acknowledged
        self.attempt = attempt
        self.auto_task: str | None = None
        self.give_up_at: float | None = None
        """When (``time.monotonic``) to stop retrying; set at the first lost race."""
        self.checked = False
        """Whether the caller checked the messages (see ``UserActor.add_checked_messages``)."""

    def settled(self, recorded: list[Recorded] | None, error: BaseException | None) -> None:
        actor, services = self.actor, self.actor._services
        if error is None:
            if self.auto_task is not None:
                services.observer.task_stored(actor.user_id, self.auto_task)
            self.acknowledged.set(self.events)
            services.touched(actor.user_id)
            return
        # An actor stopped meanwhile (idle, or evicted) is not told: its next one loads the log.
        with contextlib.suppress(pykka.ActorDeadError):
            actor.actor_ref.proxy().write_failed(self.epoch)
        lost = not isinstance(error, EarlierWriteFailed)  # else one before it lost
        now = time.monotonic()
        if self.give_up_at is None:
            self.give_up_at = now + APPEND_RETRY_SECONDS
        if isinstance(error, ConflictError) and (not lost or now < self.give_up_at):
            if self.auto_task is not None:
                services.observer.task_finished(actor.user_id, self.auto_task, "COMPLETED", 0, None)
            self.attempt += lost
            services.later(conflict_delay(self.attempt), self._retry, self._dropped)
            return
        if self.auto_task is not None:
            services.observer.task_finished(
                actor.user_id, self.auto_task, "FAILED", 0, f"not requested: {first_line(error)}"
            )
        self.acknowledged.set_exception(error)

    def _retry(self) -> None:
        """Decide the messages again on the reloaded log (a timer's callback), in the
        user's actor, or in a new one if it stopped meanwhile."""
        retry = (self.messages, self.acknowledged, self.attempt, self.give_up_at, self.checked)
        try:
            self.actor.actor_ref.proxy().retry_append(*retry)
            return
        except pykka.ActorDeadError:
            pass
        call_user = self.actor._services.call_user
        try:
            if call_user is None:
                raise RuntimeError("no directory to spawn the user's actor")
            call_user(self.actor.user_id, "retry_append", *retry)
        except (RuntimeError, MemveeError):  # the engine stopped meanwhile
            self._dropped()

    def _dropped(self) -> None:
        """The retry will not run (the engine or the actor stopped first): say so."""
        self.acknowledged.set_exception(
            ConflictError("the write was not retried after a conflict: memvee was stopping")
        )


def conflict_delay(attempt: int) -> float:
    """A random wait before an append's ``attempt``-th retry: up to 1 ms at first,
    doubling to :data:`CONFLICT_DELAY_MAX`, so that processes that conflicted spread out."""
    return random.uniform(0, min(CONFLICT_DELAY_MAX, 0.001 * 2 ** (attempt - 1)))


def _began(user_log: UserLog, events: Sequence[Any]) -> datetime | None:
    """When the log ``events`` were decided on began, for their write to check that the
    stored log is still that one; ``None`` when they begin the log."""
    return None if isinstance(events[0], UserLog.Registered) else user_log.created_on
