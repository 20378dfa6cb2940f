"""Memory: the library's face, an asyncio API over the user actors.

Every call validates its input on the caller's side first (so bad input writes nothing),
then sends one message to the user's actor and awaits a bridged future: the event loop
never blocks on an actor or on the database. Reads of the projections run on a small
thread pool for the same reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import inspect
import itertools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from uuid import uuid4

from sqlalchemy import Connection

from actors import FORGOTTEN_REASON, Engine, EngineOptions, EngineSettings, inbox_of
from actors.erasure import ForgetReceipt
from events import (
    Extractor,
    InvalidInputError,
    MemoryClosedError,
    ProcessingTimeoutError,
    StorageError,
    UnknownTaskError,
    UserLog,
    as_seconds,
    check_extractor,
    check_flag,
    check_keys,
    check_listing,
    check_message,
    check_name,
    check_new_user_id,
    check_page,
    check_sent_at,
    check_text,
    check_time,
    check_user_id,
)
from events.credentials import redact
from events.errors import (
    MemveeError,
    echoed,
    echoed_repr,
    first_line,
    is_database_failure,
    processing_error,
)
from memvee._config import MemoryConfig
from memvee._log_redaction import protect_own_loggers
from memvee._retrieval import RetrievalResult, Retriever, check_query
from memvee._task import ProcessStatus, ProcessTask
from memvee.embedders import Embedder, LocalDefaultEmbedder
from memvee.embedders._choice import contained_embedder
from memvee.extractors._credentials import check_credentials
from projections import (
    BufferedMessage,
    KnowledgeEntry,
    Message,
    Projector,
    QuarantinedMessage,
    UserSummary,
)
from projections.vectors import ContainedEmbedder

__all__ = ["SHUTDOWN_REASON", "Memory"]

log = logging.getLogger("memvee")

SHUTDOWN_REASON = "interrupted by shutdown"
REMOTE_POLL_SECONDS = 0.05
REMOTE_POLL_MAX = 2.0
_DONE_TASKS_KEPT = 10_000

T = TypeVar("T")


_collected = False


def _start_engine(
    options: EngineOptions,
    extractor: Extractor,
    observer: _LoopObserver,
    embedder: ContainedEmbedder | None,
    gc_freeze: bool,
) -> tuple[Engine, list[tuple[str, list[str]]]]:
    """Make the engine and recover the tasks a stop interrupted (on a worker thread); an
    engine whose recovery fails is stopped, so its threads end and the database is free."""
    engine = Engine(options, extractor, observer, embedder)
    try:
        recovered = engine.recover()
    except BaseException:
        engine.shutdown(SHUTDOWN_REASON)
        raise
    _first_full_collection(gc_freeze)
    return engine, recovered


async def _stop_once_started(
    started: asyncio.Future[tuple[Engine, list[tuple[str, list[str]]]]],
) -> None:
    """Stop the engine of an open that was cancelled, once it has started."""
    try:
        engine, _ = await started
    except BaseException:
        return  # it did not start: _start_engine freed what it took
    await asyncio.to_thread(engine.shutdown, SHUTDOWN_REASON)


def _first_full_collection(freeze: bool) -> None:
    """Run the process's first full collection now, when the first Memory opens; then,
    with ``freeze``, take what survives out of every later collection.

    A process that has just imported memvee's dependencies holds some 90,000 objects the
    collector has not yet counted as long-lived, so its first full collection comes soon
    after, in the first burst of writes, and holds the GIL for tens of milliseconds (one
    run: 55 to 69 ms, every exchange in flight waiting). Taken at open, it costs the same
    once. Every later full collection would walk those objects again (50 to 70 ms each,
    about 15 µs per exchange at 100 users); frozen, they are left out.
    """
    global _collected
    if not _collected:
        _collected = True
        gc.collect()
        if freeze:
            gc.freeze()


class Memory:
    """Long-term memory for an agent: append conversations, get knowledge back.

    Open it with ``async with Memory(...) as memory:`` (or ``await memory.open()`` and
    ``await memory.close()``); every other call on a Memory that is not open raises
    :class:`MemoryClosedError` at once. A Memory belongs to the event loop that opened it.

    ``config`` supplies every setting; the keyword arguments before it override the
    matching fields of ``config`` when they differ from their defaults, in value or type
    (``batch_threshold=10.0`` is refused as ``MemoryConfig`` refuses it). ``embedder``
    adds semantic ranking to retrieval: by default the local
    :class:`~memvee.embedders.OnnxMiniLMEmbedder` (loaded in the background from the open
    on, so that its first search finds it ready), or the
    :class:`~memvee.embedders.Embedder` given; ``False`` keeps retrieval lexical only.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] = "memvee.db",
        db_url: str | None = None,
        auto_process: bool = False,
        batch_threshold: int = 10,
        extractor: Extractor | None = None,
        config: MemoryConfig | None = None,
        embedder: Embedder | Literal[False] | None = None,
    ) -> None:
        _check_parts(config, extractor, embedder)
        base = config or MemoryConfig()
        overrides: dict[str, Any] = {}
        defaults = MemoryConfig()
        for name, value in (
            ("db_path", db_path),
            ("db_url", db_url),
            ("auto_process", auto_process),
            ("batch_threshold", batch_threshold),
        ):
            default = getattr(defaults, name)
            if type(value) is not type(default) or value != default:  # 10.0 == 10, 0 == False
                overrides[name] = value
        self.config = replace(base, **overrides)
        self._extractor = extractor
        self._embedder = embedder
        self._retriever: Retriever | None = None
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._observer: _LoopObserver | None = None
        self._closing = False
        self._inflight: dict[str, dict[str, ProcessTask]] = {}
        # Ended tasks, and whether they were followed through the projection (with
        # leases: in the log, where another process may erase them).
        self._recent: OrderedDict[str, tuple[ProcessTask, bool]] = OrderedDict()
        self._followed: dict[str, ProcessTask] = {}  # open tasks read from the projection
        # Forgets sent whose user's actor has not yet told them done: by erasure, the user
        # and the tasks it erases (those known when it was sent, then those the actor
        # tells of until it is done: it began them before the forget reached it).
        self._erasures: dict[int, tuple[str, set[str]]] = {}
        self._erasure_ids = itertools.count()
        self._poller: asyncio.Future[None] | None = None
        self._opening: _Opening | None = None
        self._open_guard = threading.Lock()  # opens may start in several loops at once
        self._closer: asyncio.Task[None] | None = None
        self._grace_ends = 0.0  # the loop time a close stops waiting for running tasks
        self._grace_cut = asyncio.Event()  # set when a later close brings that forward
        self._stopped: tuple[concurrent.futures.Future[None], threading.Thread] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> Self:
        """Open the database, recover interrupted tasks and start the engine's threads.

        The Memory then belongs to the running event loop: it is used, and closed, there.
        Opens at once (``if not memory.is_open: await memory.open()`` in handlers that
        run together) share one: the later ones wait for it. An open during a close waits
        for the close to end, then opens again; a close during an open waits for the open
        to end, then closes what it started. An open in another loop, while this one opens
        the Memory or after, raises :class:`MemoryClosedError`.
        """
        opening = self._join_opening(asyncio.get_running_loop())
        try:
            async with opening.lock:
                return await self._open()
        finally:
            self._leave_opening(opening)

    def _join_opening(self, loop: asyncio.AbstractEventLoop) -> _Opening:
        """The opens under way in ``loop``, this one counted among them; an open while
        another loop opens the Memory raises :class:`MemoryClosedError`, starting nothing."""
        with self._open_guard:
            opening = self._opening
            if opening is None or opening.loop.is_closed():  # a closed loop opens no more
                opening = self._opening = _Opening(loop)
            elif opening.loop is not loop:
                raise MemoryClosedError(
                    "this Memory is open on another event loop (it is being opened there); "
                    "use it in the loop that opened it, or close it and open it in this one"
                )
            opening.count += 1
            return opening

    def _leave_opening(self, opening: _Opening) -> None:
        """An open has returned; the last of those under way tells the closes waiting."""
        with self._open_guard:
            opening.count -= 1
            if opening.count > 0:
                return
            if self._opening is opening:
                self._opening = None
        opening.ended.set_result(None)

    def _close_under_way(self) -> bool:
        """Whether a close is still closing the Memory: the opens under way then wait for
        it and start nothing, so a later close joins (or cuts short) that close instead."""
        return self._closer is not None and not self._closer.done()

    async def _opened(self) -> None:
        """Wait until the opens under way (if any) have returned, however they ended: a
        close then closes what they started."""
        opening = self._opening
        if opening is None:
            return
        ended = asyncio.wrap_future(opening.ended)
        while not ended.done() and not opening.loop.is_closed():  # a closed loop opens no more
            await asyncio.wait({ended}, timeout=REMOTE_POLL_SECONDS)

    async def _open(self) -> Self:
        closer = self._closer
        running = asyncio.get_running_loop()
        if self._engine is not None and closer is not None and closer.get_loop() is running:
            # A close under way (maybe cancelled, going on in the background): open again
            # once it has ended. Its failure is its caller's to see; this open then starts
            # afresh, or says the Memory is not open if the close left an engine behind.
            with contextlib.suppress(Exception):
                await asyncio.shield(closer)
        if self._engine is not None:
            self._running()  # already open: on this loop it is a no-op, elsewhere an error
            return self
        self._loop = asyncio.get_running_loop()
        self._closing = False
        protect_own_loggers()
        extractor = self._extractor
        if extractor is None:
            extractor = await asyncio.to_thread(
                _default_extractor, self.config.model, self.config.extraction_timeout
            )
        await check_credentials(extractor)
        cfg = self.config
        options = EngineOptions(
            url=cfg.url,
            durability=cfg.durability,
            settings=EngineSettings(
                auto_process=cfg.auto_process,
                batch_threshold=cfg.batch_threshold,
                max_content_chars=cfg.max_content_chars,
                snapshot_interval=cfg.snapshot_interval,
                checkpoint_interval=cfg.checkpoint_interval,
                limits=cfg.batch_limits,
            ),
            idle_timeout=cfg.idle_timeout,
            max_live_actors=cfg.max_live_actors,
            leases=cfg.uses_leases,
            lease_ttl=cfg.lease_ttl,
            pool_size=cfg.pool_size,
            actor_threads=cfg.actor_threads,
            extraction_concurrency=cfg.extraction_concurrency,
            extraction_timeout=cfg.extraction_timeout,
            commit_batch_max=cfg.commit_batch_max,
            retry_delay=cfg.retry_delay,
            retry_delay_max=cfg.retry_delay_max,
            breaker_failures=cfg.breaker_failures,
            breaker_cooldown=cfg.breaker_cooldown,
            batch_embed_seconds=cfg.batch_embed_seconds,
        )
        readers = ThreadPoolExecutor(4, thread_name_prefix="memvee-reader")
        embedder = contained_embedder(self._embedder)
        self._observer = _LoopObserver(self)
        started = asyncio.ensure_future(
            asyncio.to_thread(
                _start_engine, options, extractor, self._observer, embedder, cfg.gc_freeze
            )
        )
        try:
            engine, recovered = await asyncio.shield(started)
        except asyncio.CancelledError:
            # The engine is still starting in its thread: stop it once started, so that
            # a cancelled open leaves no thread behind and the database free.
            readers.shutdown(wait=False)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.ensure_future(_stop_once_started(started)))
            raise
        except BaseException:
            readers.shutdown(wait=False)
            raise
        self._readers = readers
        self._retriever = Retriever(
            engine.store.engine,
            engine.tables,
            embedder,
            alpha=cfg.hybrid_alpha,
            vectors=engine.vectors,
            index_messages=engine.index_messages,
            embed_budget=cfg.search_embed_seconds,
            embed_later=engine.embed_later,
        )
        self._closer, self._stopped = None, None
        self._engine = engine
        if embedder is not None and isinstance(embedder.wrapped, LocalDefaultEmbedder):
            embedder.wrapped.load_in_background()
        if self._extractor is None:
            _warn_if_offline(extractor)
        for user_id, task_ids in recovered:
            for task_id in task_ids:
                log.warning("recovered user %r: task %s closed as interrupted", user_id, task_id)
        return self

    async def close(self, *, grace: float | None = None) -> None:
        """Let running tasks finish within ``grace`` seconds (by default
        ``shutdown_grace``), then stop.

        Tasks still running then end FAILED ("interrupted by shutdown") and their
        messages stay buffered for the next run; writes already handed to the Memory are
        committed first, whatever the grace. Every close returns once the Memory is
        closed (one called while an open is under way waits for it); a close that is
        cancelled goes on to its end in the background, and a later close waits for it, or
        cuts its grace short when given a shorter one (``grace=0``: a process told to stop
        now, while an earlier close waits). Opens made during a close wait for it to end
        before opening again; a later close does not wait for them, only for that close.
        """
        if grace is not None:
            grace = _check_grace(grace)
        if not self._close_under_way():
            await self._opened()
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            return
        seconds = self.config.shutdown_grace if grace is None else grace
        if loop is not asyncio.get_running_loop():
            ends = time.monotonic() + seconds
            if not await self._closed_where_opened(loop, grace):
                await self._close_without(engine, loop, ends)
            return
        self._closing = True
        ends = loop.time() + seconds
        if self._closer is None or self._closer.done():
            self._grace_ends, self._grace_cut = ends, asyncio.Event()
            self._closer = loop.create_task(self._close_here(engine, loop))
        elif ends < self._grace_ends:
            self._grace_ends = ends
            self._grace_cut.set()
        await asyncio.shield(self._closer)

    async def _closed_where_opened(
        self, loop: asyncio.AbstractEventLoop, grace: float | None
    ) -> bool:
        """Close in ``loop``, the running loop that opened the Memory (its tasks and futures
        live there); whether that close ended. One that loop's end cuts short (its
        ``asyncio.run`` returning cancels the close, or closes the loop before it runs, or
        shuts the executor it needs) returns False: the caller then closes without it."""
        if not loop.is_running():
            return False
        closing = self.close(grace=grace)
        try:
            sent = asyncio.run_coroutine_threadsafe(closing, loop)
        except RuntimeError:  # the loop closed meanwhile
            closing.close()
            return False
        waited = asyncio.wrap_future(sent)
        idle = 0  # polls that found the loop stopped: asyncio.run stops it between steps
        while not waited.done() and idle < 2 and not loop.is_closed():
            await asyncio.wait({waited}, timeout=REMOTE_POLL_SECONDS)
            idle = 0 if loop.is_running() else idle + 1
        return waited.done() and not waited.cancelled() and waited.exception() is None

    async def _close_here(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        """Close on the Memory's own loop: the grace for running tasks, then the engine's
        stop, which a cancellation of the grace brings forward and never skips."""
        try:
            engine.drain()
            engine.directory.flush_calls(loop)
            pending = [t._finished for tasks in self._inflight.values() for t in tasks.values()]
            await self._give_grace(pending, loop)
        finally:
            await self._stop_engine(engine)
        await asyncio.sleep(0)
        for tasks in list(self._inflight.values()):
            for task in list(tasks.values()):
                task._mark_finished(ProcessStatus.FAILED, 0, SHUTDOWN_REASON)
        self._inflight.clear()
        self._followed.clear()
        self._erasures.clear()  # a forget not told done by now never will be
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._end_threads()
        self._engine = None

    async def _end_threads(self) -> None:
        """Wait, off the loop, for the search threads. A load of the default embedder begun
        at open is not waited for: the model is the process's, not this Memory's, and a
        script that only writes would close up to a second later for it."""
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)

    async def _give_grace(
        self, pending: Sequence[asyncio.Future[Any]], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Wait until ``pending`` have all ended or the grace has, whose end a later close
        may bring forward (it sets ``_grace_cut``)."""
        waiting: set[asyncio.Future[Any]] = set(pending)
        while waiting and (left := self._grace_ends - loop.time()) > 0:
            self._grace_cut.clear()
            cut = loop.create_task(self._grace_cut.wait())
            try:
                _, waiting = await asyncio.wait(
                    {*waiting, cut}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                cut.cancel()
            waiting.discard(cut)

    async def _stop_engine(self, engine: Engine) -> None:
        """Stop the engine, in a thread of its own begun once whoever asks (a close
        cancelled on its way and the next one), so that it never runs twice at once;
        returns when that thread has ended, even if the caller is cancelled meanwhile."""
        if self._stopped is None:
            stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
            stopped.set_running_or_notify_cancel()

            def stop() -> None:
                try:
                    engine.shutdown(SHUTDOWN_REASON)
                except BaseException as error:
                    stopped.set_exception(error)
                else:
                    stopped.set_result(None)

            thread = threading.Thread(target=stop, name="memvee-close")
            thread.start()
            self._stopped = (stopped, thread)
        stopped, thread = self._stopped
        await asyncio.shield(asyncio.wrap_future(stopped))
        await asyncio.to_thread(thread.join)

    async def _close_without(
        self, engine: Engine, loop: asyncio.AbstractEventLoop, grace_ends: float
    ) -> None:
        """Close from another loop, the one that opened the Memory being stopped, closed or
        at its end (its own close cut short): no task can be awaited on it any more, so the
        grace (until ``grace_ends``, by ``time.monotonic``) watches the engine instead; then
        the engine stops as usual and each handle ends as its task did (the loop would have
        told it), or FAILED as interrupted."""
        self._closing = True
        engine.drain()
        await self._give_grace_elsewhere(engine, grace_ends)
        await self._stop_engine(engine)
        ended = self._observer.undelivered_ends() if self._observer is not None else {}
        for tasks in list(self._inflight.values()):  # the loop's own close may end too
            for task in list(tasks.values()):
                status, count, error, covered = ended.get(
                    task.task_id, ("FAILED", 0, SHUTDOWN_REASON, None)
                )
                task._mark_finished(ProcessStatus(status), count, error, covered)
        if self._poller is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop runs it no more
                loop.call_soon_threadsafe(self._poller.cancel)
        self._inflight.clear()
        self._followed.clear()
        self._erasures.clear()  # a forget the stopped loop never told done
        self._poller = None
        await self._end_threads()
        self._engine = None

    async def _give_grace_elsewhere(self, engine: Engine, ends: float) -> None:
        """Wait, polling, until the engine runs no task of this Memory and no extraction,
        or until ``ends`` (``time.monotonic``), or until another close stops the engine (a
        shorter grace): what the opening loop's own close waits for, seen from the engine
        side, as that loop can no longer be told."""
        while self._stopped is None and self._engine_busy(engine):
            left = ends - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(REMOTE_POLL_SECONDS, left))

    def _engine_busy(self, engine: Engine) -> bool:
        """Whether a task of this Memory has not ended on the engine side (its end is not
        yet posted to the loop), or a batch is still out for extraction."""
        ended = self._observer.undelivered_ends() if self._observer is not None else {}
        handles = [t for tasks in list(self._inflight.values()) for t in list(tasks.values())]
        unended = any(not t.done and t.task_id not in ended for t in handles)
        return unended or engine.workers.in_flight > 0

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """Whether calls are accepted."""
        return self._engine is not None and not self._closing

    # ------------------------------------------------------------------ writes

    async def add_message(
        self,
        user_id: str,
        role: str,
        content: str,
        sent_at: datetime | None = None,
        *,
        name: str | None = None,
    ) -> Message:
        """Append one message; returns it (with its id) once it is committed.

        ``name`` is the speaker's name when the agent knows it (a group chat, a person the
        agent talks to): it is kept in the log, searched with the words, and shown by
        :meth:`RetrievalResult.to_prompt`, so questions that name people find them.
        """
        check_new_user_id(user_id)
        check_message(role, content, self.config.max_content_chars)
        check_name(name)
        sent_at = check_sent_at(sent_at)
        user_id, role, content = _plain(user_id), _plain(role), _plain(content)
        name = None if name is None else _plain(name)
        (message,) = _messages(user_id, await self._append(user_id, (role, content, sent_at, name)))
        return message

    async def add_exchange(
        self,
        user_id: str,
        user_message: str,
        assistant_message: str,
        sent_at: datetime | None = None,
        *,
        user_name: str | None = None,
        assistant_name: str | None = None,
    ) -> tuple[Message, Message]:
        """Append a user turn and the assistant's answer; returns both once committed.

        Cancelled before it left the event loop, nothing is stored; cancelled later, it
        may be (a write on its way is not called back).

        ``user_name`` and ``assistant_name`` are the speakers' names, as for
        :meth:`add_message`.
        """
        check_new_user_id(user_id)
        check_message("user", user_message, self.config.max_content_chars)
        check_message("assistant", assistant_message, self.config.max_content_chars)
        check_name(user_name)
        check_name(assistant_name)
        sent_at = check_sent_at(sent_at)
        user_id, user_message, assistant_message = (
            _plain(user_id),
            _plain(user_message),
            _plain(assistant_message),
        )
        user_name = None if user_name is None else _plain(user_name)
        assistant_name = None if assistant_name is None else _plain(assistant_name)
        appended = await self._append(
            user_id,
            ("user", user_message, sent_at, user_name),
            ("assistant", assistant_message, sent_at, assistant_name),
        )
        first, second = _messages(user_id, appended)
        return first, second

    def _append(
        self, user_id: str, *messages: tuple[str, str, datetime | None, str | None]
    ) -> asyncio.Future[Sequence[Any]]:
        """The messages' write, sent to the user's actor: its future is the committed events.

        A plain function, not a coroutine, and the messages a tuple of tuples (which the
        collector stops tracking): fewer objects per write in flight.
        """
        engine, loop = self._running()
        return engine.directory.call_async(
            loop, user_id, "add_checked_messages", messages, paced=True, answer_later=True
        )

    # ------------------------------------------------------------------ processing

    async def process(self, user_id: str) -> int:
        """Process every buffered message of the user now, in bounded batches; returns the
        entries extracted over all of them.

        Tasks run one at a time: those already requested here (an automatic run, say) go
        first and take the messages they find, so what they extract is counted too (those
        ended by the time this call's own task ends). Only this call's own task failing
        raises: what an earlier one left, this one covers.
        """
        check_user_id(user_id)
        self._running()
        ahead = self._inflight_of(user_id)
        count = await self.process_async(user_id).wait()
        return count + sum(t.knowledge_count for t in ahead if t.done)

    def process_async(self, user_id: str) -> ProcessTask:
        """Schedule processing of the user's buffered messages and return at once.

        The task's request is stored a moment later (with nothing to do it is never
        stored): until then only this Memory finds the task. See :meth:`request_processing`.
        """
        check_user_id(user_id)
        task, _ = self._schedule(user_id, keep_empty=False)
        return task

    async def request_processing(self, user_id: str) -> ProcessTask:
        """Request processing of the user's buffered messages; return the task once its
        request is stored, so that ``get_task`` and ``tasks`` of every Memory on the
        database find it (a service hands its id to a client who may ask another process).

        A request with nothing to do is stored too, and completes at once with no entries;
        asked again while nothing was written to the user since, the task returned is
        that one (COMPLETED), so polling an idle user stores nothing more.
        A user never written raises :class:`NotFoundError`; a request the database refuses
        raises its error (the task ends FAILED); a defect the user's actor meets raises
        :class:`ProcessingError` telling it, as the task does. Cancelling the call does not
        withdraw the request.
        """
        check_user_id(user_id)
        engine, _ = self._running()
        task, sent = self._schedule(user_id, keep_empty=True)
        try:
            quiet = await asyncio.shield(sent)
        except MemveeError:
            raise
        except Exception as fault:  # a defect the actor met: told as the task tells it
            raise processing_error(user_id, task.task_id, self._told(fault, engine)) from None
        if isinstance(quiet, str):  # the last task found nothing either; nothing came since
            _, loop = self._running()
            return ProcessTask(user_id, quiet, "manual", loop, status=ProcessStatus.COMPLETED)
        return task

    def _schedule(
        self, user_id: str, *, keep_empty: bool
    ) -> tuple[ProcessTask, asyncio.Future[Any]]:
        """Register a manual task of the user and send its request to the user's actor; the
        handle, and the call that resolves once the request is stored (or refused)."""
        engine, loop = self._running()
        task = self._register(user_id, str(uuid4()), "manual")
        sent = engine.directory.call_async(
            loop, user_id, "schedule", task.task_id, "manual", keep_empty
        )

        def _check_sent(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            failed = f.exception()
            if failed is not None:
                self._finish(user_id, task.task_id, "FAILED", 0, self._told(failed, engine))
            elif f.result() is False and not task.done:
                self._follow(task)  # another process runs it
            elif not isinstance(f.result(), str):  # a str: a quiet task stands for it
                self._stored(user_id, task.task_id)

        sent.add_done_callback(_check_sent)
        return task, sent

    @staticmethod
    def _told(failure: BaseException, engine: Engine) -> str:
        """``failure``'s first line as a task of ``engine`` tells it, without the
        credentials the environment and the extractor's clients were seen with (the engine
        keeps them once stopped): read on the loop, so the clients are not asked again
        (that may wait for one being built)."""
        return redact(first_line(failure), engine.workers.credentials(gather=False))

    async def flush(self, user_id: str) -> int:
        """Process until nothing of the user is buffered, whatever was already running.

        As for :meth:`process`, only this call's own tasks failing raises: what another
        task left (one another Memory's close interrupted, say), the next of its own covers.
        Closed under it, it raises the :class:`ProcessingError` of its own run the close
        interrupted, or :class:`MemoryClosedError` when it can request no next run (the
        messages left stay buffered for the next open), never another run's failure.
        """
        check_user_id(user_id)
        self._running()
        total, failed = await self._settle(user_id)
        while True:
            self._raise_uncovered(user_id, failed)
            task = self.process_async(user_id)
            total += await task.wait()
            more, failed = await self._settle(user_id)
            total += more
            if task.message_count == 0 and not failed:
                return total

    def _raise_uncovered(self, user_id: str, failed: list[ProcessTask]) -> None:
        """Raise when no next run of this Memory can cover what ``failed`` left: the user
        was forgotten (the messages are gone: that failure), or the Memory closed meanwhile
        (:class:`MemoryClosedError`: those runs were not flush's own, and their messages
        stay buffered for the next open)."""
        for task in failed:
            if task.error == FORGOTTEN_REASON:
                raise processing_error(user_id, task.task_id, task.error)
        if not self.is_open:
            raise MemoryClosedError(
                f"this Memory was closed before flush could run for user {user_id!r}; "
                "what is buffered stays buffered for the next open"
            )

    async def wait_for_processing(self, user_id: str, timeout: float | None = None) -> int:  # noqa: ASYNC109 - the spec names it
        """Wait for the user's tasks in flight when called (with leases, those another
        process runs too); returns the entries they extracted. Runs started meanwhile (a
        user who keeps writing with ``auto_process``) are not waited for: :meth:`flush`
        waits until nothing is buffered.

        On ``timeout`` (seconds) raises :class:`ProcessingTimeoutError` (a ``TimeoutError``)
        and leaves the tasks running.
        """
        check_user_id(user_id)
        seconds = _check_timeout(timeout)
        self._running()
        # In flight now: counted even if they end while the other processes' are looked up.
        ahead = self._inflight_of(user_id)
        await self._follow_tasks_elsewhere(user_id)
        tasks = list({t.task_id: t for t in (*ahead, *self._inflight_of(user_id))}.values())
        if seconds is None or all(t.done for t in tasks):
            return await self._wait_inflight(user_id, tasks)
        try:
            return await asyncio.wait_for(self._wait_inflight(user_id, tasks), seconds)
        except TimeoutError:
            raise ProcessingTimeoutError(
                f"processing of user {user_id!r} still running after {seconds:g} s"
            ) from None

    def _inflight_of(self, user_id: str) -> list[ProcessTask]:
        """The user's tasks in flight now."""
        return list(self._inflight.get(user_id, {}).values())

    async def _wait_inflight(self, user_id: str, tasks: Sequence[ProcessTask]) -> int:
        """Wait for ``tasks``; the entries they extracted, or the first failure raised."""
        total, failed = await _ended(tasks)
        if failed:
            first = failed[0]
            raise processing_error(user_id, first.task_id, first.error or "unknown error")
        return total

    async def _settle(self, user_id: str) -> tuple[int, list[ProcessTask]]:
        """Wait until the user has no task in flight, those started meanwhile too; the
        entries of those that completed, and those that failed."""
        total = 0
        failed: list[ProcessTask] = []
        counted: set[str] = set()
        while tasks := [t for t in self._inflight_of(user_id) if t.task_id not in counted]:
            more, failures = await _ended(tasks)
            counted.update(t.task_id for t in tasks)
            total += more
            failed += failures
        return total, failed

    # ------------------------------------------------------------------ reads

    async def knowledge(
        self,
        user_id: str,
        *,
        as_of: datetime | None = None,
        history: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[KnowledgeEntry]:
        """The user's current knowledge entries, oldest first, each traceable to its task
        and messages.

        ``as_of`` gives the entries valid at that time instead; ``history=True`` gives
        every entry ever extracted, superseded and invalidated ones included. A long
        listing reads a page at a time: the first ``offset`` entries passed over, at most
        ``limit`` read.
        """
        check_user_id(user_id)
        as_of = check_time(as_of, "as_of")
        check_listing(as_of, history)
        offset, limit = check_page(offset, limit, "offset")
        return await self._read(
            lambda c, r: r.knowledge(
                c, user_id, as_of=as_of, history=history, offset=offset, limit=limit
            ),
            user_id,
        )

    async def messages(
        self, user_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Message]:
        """The user's messages, oldest first (the message projection of the log): every
        one, or those whose ``seq`` is past ``after``, at most ``limit`` of them.

        A long history reads a page at a time: pass the last ``seq`` read as ``after``.
        """
        check_user_id(user_id)
        after, limit = check_page(after, limit)
        return await self._read(
            lambda c, r: r.messages(c, user_id, after=after, limit=limit), user_id
        )

    async def retrieve(
        self,
        user_id: str,
        query: str,
        *,
        top_k: int = 10,
        as_of: datetime | None = None,
        include_messages: bool = False,
    ) -> RetrievalResult:
        """The user's knowledge entries most relevant to ``query``, best first.

        Only entries valid now are ranked (or, with ``as_of``, those valid then). With
        ``include_messages=True`` the best matching raw messages (each with the other
        half of its exchange) fill what the entries leave of ``top_k``. Every result
        belongs to ``user_id``: the ranking itself is scoped to that user.
        """
        check_user_id(user_id)
        top_k = check_query(query, top_k)
        as_of = check_time(as_of, "as_of")
        check_flag(include_messages, "include_messages")
        engine, loop = self._running()
        retriever = self._retriever
        assert retriever is not None

        def _run() -> RetrievalResult:
            engine.refuse_unfolded(user_id)  # may read the database: off the loop
            with _reading(engine):
                return retriever.retrieve(user_id, query, top_k, as_of, include_messages)

        return await loop.run_in_executor(self._readers, _run)

    async def forget(self, user_id: str) -> ForgetReceipt:
        """Erase the user: their log, snapshots and every projection row, in one transaction.

        Messages already sent for the user are committed first and erased with the rest;
        running and requested tasks end FAILED. Afterwards nothing of the user can be read
        back, replayed or rebuilt; writing to the user again starts a new, empty log.
        On SQLite the file is then rewritten (``VACUUM``, with writers held off: its time
        grows with the file) so no copy of the words stays in it; ``receipt.scrubbed`` is
        false when that failed or other connections' older snapshots keep the erased words
        in the database files; they are scrubbed in the background. Cancelling the call
        does not stop an erasure already sent (its failure is then logged).

        This Memory's cached vectors of the user are dropped at once; another process's
        Memory on the same database keeps its cached copies in memory (never stored nor
        returned) until its next search of the user or until they are evicted.
        """
        check_user_id(user_id)
        engine, loop = self._running()
        # The handles the erasure ends or erases: the user's tasks begun before it reaches
        # the user's actor. Those known now, and those the actor tells of before it tells
        # the forget done (see _announced); one begun after it runs on the new log and
        # keeps its handle, even when it ends in the inbox batch that answers the forget.
        erased = {t for t, (task, _) in self._recent.items() if task.user_id == user_id}
        erased.update(self._inflight.get(user_id, {}))
        erasure = next(self._erasure_ids)
        self._erasures[erasure] = (user_id, erased)
        erasing: asyncio.Future[ForgetReceipt] = engine.directory.call_async(
            loop, user_id, "forget", erasure
        )
        # Shielded: a caller that stops waiting once it was sent stops no erasure, and its
        # end still drops the user's handles, or is logged if it failed (see _forgotten).
        waited = asyncio.shield(erasing)
        erasing.add_done_callback(
            functools.partial(self._forgotten, user_id, erasure, waited, engine)
        )
        return await waited

    def _erased(self, erasure: object) -> None:
        """The user's actor erased the log (the forget sent as ``erasure``) and told how the
        tasks it ended end: no handle of a task begun before is answered from memory now."""
        if not isinstance(erasure, int):
            return
        _, erased = self._erasures.pop(erasure, ("", set()))
        for task_id in erased:
            self._recent.pop(task_id, None)

    def _forgotten(
        self,
        user_id: str,
        erasure: int,
        waited: asyncio.Future[ForgetReceipt],
        engine: Engine,
        erasing: asyncio.Future[ForgetReceipt],
    ) -> None:
        """The user's erasure has ended, whether its caller still waits or not (its
        handles were dropped as the actor told it done: see :meth:`_erased`). A failure is
        the caller's to see, or, if it stopped waiting, logged."""
        self._erasures.pop(erasure, None)  # a forget that failed erases no task
        if erasing.cancelled():
            return
        failure = erasing.exception()
        if failure is not None:
            if waited.cancelled():
                log.error(
                    "forgetting user %r failed after its caller stopped waiting: %s",
                    user_id,
                    self._told(failure, engine),
                )
            return
        log.info("user %r forgotten (%d records erased)", user_id, erasing.result().total)

    async def buffer(self, user_id: str) -> list[BufferedMessage]:
        """The user's messages not yet covered by knowledge (nor quarantined), in order."""
        check_user_id(user_id)
        return await self._read(lambda c, r: r.buffer(c, user_id), user_id)

    async def quarantined(self, user_id: str) -> list[QuarantinedMessage]:
        """The user's messages that kept failing extraction, each with its last error.

        They were set aside so that they block nothing after them; every other message
        is covered by knowledge or still buffered. :meth:`requeue` puts them back.
        """
        check_user_id(user_id)
        return await self._read(lambda c, r: r.quarantined(c, user_id), user_id)

    async def requeue(self, user_id: str, message_ids: list[str] | None = None) -> int:
        """Put the user's quarantined messages (or those of ``message_ids``) back in the
        buffer, for the next run to extract; returns how many went back.

        An id that is not quarantined raises :class:`InvalidInputError` and nothing moves.
        """
        check_user_id(user_id)
        chosen = None if message_ids is None else check_keys(message_ids, "message_ids")
        engine, loop = self._running()
        returned: list[str] = await engine.directory.call_async(loop, user_id, "requeue", chosen)
        return len(returned)

    async def user(self, user_id: str) -> UserSummary | None:
        """Counters of the user's log, or ``None`` if nothing was ever written for them."""
        check_user_id(user_id)
        return await self._read(lambda c, r: r.user(c, user_id), user_id)

    async def tasks(self, user_id: str) -> list[ProcessTask]:
        """Every task of the user: those in the log, then those still pending."""
        check_user_id(user_id)
        records = await self._read(lambda c, r: r.tasks(c, user_id), user_id)
        handles = [self._handle_for(user_id, rec) for rec in records]
        seen = {h.task_id for h in handles}
        pending = [t for t in self._inflight_of(user_id) if t.task_id not in seen]
        return handles + pending

    async def get_task(self, user_id: str, task_id: str) -> ProcessTask:
        """One task of the user; raises :class:`UnknownTaskError` if there is none.

        A task that ended here is answered from memory while the log still has it: another
        process may have forgotten the user since.
        """
        check_user_id(user_id)
        if not isinstance(task_id, str) or not task_id:
            raise UnknownTaskError(f"task id must be a non-empty str, not {task_id!r}")
        check_text(task_id, "task id")
        engine, _ = self._running()  # a closed Memory answers no call, from its cache neither
        live = self._inflight.get(user_id, {}).get(task_id)
        if live is not None:
            return live
        ended, followed = self._recent.get(task_id, (None, False))
        if ended is not None and ended.user_id != user_id:
            ended = None
        if ended is not None and not followed:
            return ended  # no other process can erase it, or it never reached the log
        read = functools.partial(
            _task_state, user_id=user_id, task_id=task_id, projector=engine.projector
        )
        record, rebuilding = await self._read(read, user_id)
        if ended is not None:
            if record is not None or rebuilding:
                return ended
            self._recent.pop(task_id, None)  # the user's log was erased since it ended
        if record is None:
            raise UnknownTaskError(f"user {echoed(user_id)} has no task {echoed(task_id)}")
        return self._handle_for(user_id, record)

    @property
    def live_actor_count(self) -> int:
        """How many user actors are live (idle ones are stopped after ``idle_timeout``)."""
        return 0 if self._engine is None else self._engine.directory.live_count

    async def _read(self, query: Callable[[Connection, Any], T], user_id: str | None = None) -> T:
        """What ``query`` reads of the projections, on a reader thread; a read of
        ``user_id``'s rows is refused if their log was left unfolded (see
        :meth:`actors.engine.Engine.refuse_unfolded`)."""
        engine, loop = self._running()

        def _run() -> T:
            if user_id is not None:
                engine.refuse_unfolded(user_id)  # may read the database: off the loop
            with _reading(engine), engine.store.engine.connect() as connection:
                return query(connection, engine.reader)

        return await loop.run_in_executor(self._readers, _run)

    # ------------------------------------------------------------------ task registry

    def _running(self) -> tuple[Engine, asyncio.AbstractEventLoop]:
        if self._engine is None or self._loop is None or self._closing:
            raise MemoryClosedError("this Memory is not open; use `async with memory:` or open()")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise MemoryClosedError(
                "this Memory is open on another event loop; use it in the loop that opened "
                "it (one asyncio.run), or close it and open it in this one"
            )
        return self._engine, self._loop

    def _register(
        self, user_id: str, task_id: str, trigger: str, follow: bool = False
    ) -> ProcessTask:
        """The in-flight handle of a task, made on first sight; ``follow`` reads its state
        from the projection too (see :meth:`_follow`)."""
        assert self._loop is not None
        task = self._inflight.setdefault(user_id, {}).get(task_id)
        if task is None:
            task = ProcessTask(user_id, task_id, trigger, self._loop)
            self._inflight[user_id][task_id] = task
        if follow:
            self._follow(task)
        return task

    def _announced(self, user_id: str, task_id: str, trigger: str) -> None:
        """The user's actor began a task (its own request, or one it starts): its handle,
        which a forget of the user sent, but not yet told done, erases too (the actor
        began the task before the forget reached it: one inbox, in order)."""
        self._register(user_id, task_id, trigger)
        for owner, erased in self._erasures.values():
            if owner == user_id:
                erased.add(task_id)

    def _stored(self, user_id: str, task_id: str) -> None:
        """A task's request is committed: with leases, follow it (see :meth:`_follow`)."""
        task = self._inflight.get(user_id, {}).get(task_id)
        if task is not None and self._engine is not None and self._engine.leases is not None:
            self._follow(task)

    async def _follow_tasks_elsewhere(self, user_id: str) -> None:
        """With leases, the user's open tasks this process does not know (another process
        runs them, or was asked to) are followed too, and the user's actor is woken: where
        their owner is gone, this process takes the user over and runs them. (A flush
        needs none of this: the run it asks for waits behind them at their owner.)"""
        engine, loop = self._running()
        if engine.leases is None:
            return
        records = await self._read(lambda c, r: r.open_tasks(c, user_id))
        known = self._inflight.get(user_id, {})
        unknown = [r for r in records if r.task_id not in known and r.task_id not in self._recent]
        for record in unknown:
            self._register(user_id, record.task_id, record.trigger, follow=True)
        if records:  # those followed already too: their actor here may have been stopped
            # Spawning the actor may wait for its lease's release: never on the loop.
            await engine.directory.call_async(loop, user_id, "start_queued")

    def _follow(self, task: ProcessTask) -> None:
        """Track a stored task through the tasks projection until it ends there.

        Another process runs it, or, with leases, may: a process that took the user over
        ends the tasks this one was running, and runs this one's requests; a process that
        forgets the user erases them. A task gone from the projection (outside a rebuild)
        was forgotten.
        """
        self._followed[task.task_id] = task
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_followed())

    async def _poll_followed(self) -> None:
        """Read the state of followed tasks from the log's projection until they end; while
        the database fails, read again less often (up to every ``REMOTE_POLL_MAX`` s).

        Meanwhile the engine knows whose tasks are followed: with leases it takes over
        those users when their owner is gone, though no actor here stands for them."""
        try:
            await self._poll_followed_tasks()
        finally:
            if self._engine is not None:
                self._engine.follow_owners(())

    async def _poll_followed_tasks(self) -> None:
        """The loop of :meth:`_poll_followed`."""
        pause = REMOTE_POLL_SECONDS
        while self._followed and self.is_open and self._engine is not None:
            ids = list(self._followed)
            self._engine.follow_owners({task.user_id for task in self._followed.values()})
            try:
                read = functools.partial(_task_states, ids=ids, projector=self._engine.projector)
                records, rebuilding = await self._read(read)
            except MemoryClosedError:
                return
            except StorageError as error:
                if pause == REMOTE_POLL_SECONDS:
                    log.warning("following %d tasks of other processes: %s", len(ids), error)
                pause = min(REMOTE_POLL_MAX, pause * 2)
                await asyncio.sleep(pause)
                continue
            pause = REMOTE_POLL_SECONDS
            for record in records:
                task = self._followed.get(record.task_id)
                if task is None:
                    continue
                if record.status == "RUNNING":
                    task._mark_running(record.message_count)
                elif record.status in ("COMPLETED", "FAILED"):
                    self._finish(
                        task.user_id,
                        task.task_id,
                        record.status,
                        record.knowledge_count,
                        record.error,
                        record.message_count,
                    )
            if not rebuilding:
                found = {record.task_id for record in records}
                for task_id in ids:
                    gone = self._followed.get(task_id)
                    if gone is not None and task_id not in found:
                        self._finish(gone.user_id, task_id, "FAILED", 0, FORGOTTEN_REASON)
            await asyncio.sleep(REMOTE_POLL_SECONDS)

    def _started(self, user_id: str, task_id: str, message_count: int) -> None:
        task = self._inflight.get(user_id, {}).get(task_id)
        if task is not None:
            task._mark_running(message_count)

    def _finish(
        self,
        user_id: str,
        task_id: str,
        status: str,
        knowledge_count: int,
        error: str | None,
        message_count: int | None = None,
    ) -> None:
        followed = self._followed.pop(task_id, None) is not None
        tasks = self._inflight.get(user_id, {})
        task = tasks.pop(task_id, None)
        if not tasks:
            self._inflight.pop(user_id, None)
        if task is None:
            return
        task._mark_finished(ProcessStatus(status), knowledge_count, error, message_count)
        self._recent[task_id] = (task, followed)
        while len(self._recent) > _DONE_TASKS_KEPT:
            self._recent.popitem(last=False)

    def _handle_for(self, user_id: str, record: Any) -> ProcessTask:
        """The handle of a task read from the log: this Memory's own, one that follows
        the task through the projection while it is open (another Memory or process runs
        it), or one that ended."""
        live = self._inflight.get(user_id, {}).get(record.task_id)
        if live is not None:
            return live
        if record.status in ("PENDING", "RUNNING"):
            task = self._register(user_id, record.task_id, record.trigger, follow=True)
            if record.status == "RUNNING":
                task._mark_running(record.message_count)
            return task
        assert self._loop is not None
        return ProcessTask(
            user_id,
            record.task_id,
            record.trigger,
            self._loop,
            status=ProcessStatus(record.status),
            knowledge_count=record.knowledge_count,
            error=record.error,
            message_count=record.message_count,
        )


class _Opening:
    """The opens under way in one loop: they run one after the other (the later ones find
    the Memory open), and ``ended`` resolves once the last has returned."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = asyncio.Lock()
        self.count = 0
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()


_TaskEnd = tuple[str, int, str | None, int | None]
"""How a task ended: its status, knowledge count, error and the messages it covered."""


class _LoopObserver:
    """Carries task moves from actor threads to the Memory's event loop, in order."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        assert memory._loop is not None
        # The same inbox as call results, so updates and results keep one order.
        self._inbox = inbox_of(memory._loop)
        self._ends_posted: dict[str, _TaskEnd] = {}

    def _post(self, fn: Callable[..., object], *args: Any) -> None:
        self._inbox.post(fn, *args)

    def undelivered_ends(self) -> dict[str, _TaskEnd]:
        """How each task ended whose end is posted to the loop but not yet run there, by
        id: a close from another loop reads it, as that loop is stopped (or closed) and may
        never run it."""
        return dict(self._ends_posted)

    def task_scheduled(self, user_id: str, task_id: str, trigger: str, *, stored: bool) -> None:
        self._post(self._memory._announced, user_id, task_id, trigger)
        if stored:
            self._post(self._memory._stored, user_id, task_id)

    def task_stored(self, user_id: str, task_id: str) -> None:
        self._post(self._memory._stored, user_id, task_id)

    def task_running(self, user_id: str, task_id: str, message_count: int) -> None:
        self._post(self._memory._started, user_id, task_id, message_count)

    def task_finished(
        self,
        user_id: str,
        task_id: str,
        status: str,
        knowledge_count: int,
        error: str | None,
        covered: int | None = None,
    ) -> None:
        self._ends_posted[task_id] = (status, knowledge_count, error, covered)
        self._post(self._deliver_end, user_id, task_id)

    def user_forgotten(self, user_id: str, erasure: object) -> None:
        self._post(self._memory._erased, erasure)

    def _deliver_end(self, user_id: str, task_id: str) -> None:
        """On the loop: the end has arrived, so the Memory ends the task's handle (a no-op
        for one a close from another loop ended already)."""
        end = self._ends_posted.pop(task_id, None)
        if end is not None:
            self._memory._finish(user_id, task_id, *end)


def _task_states(
    connection: Connection, reader: Any, *, ids: list[str], projector: Projector
) -> tuple[list[Any], bool]:
    """The stored states of the tasks ``ids``, and whether a rebuild is folding the log
    (then a task missing from the projection may be only not yet folded)."""
    states: list[Any] = reader.task_states(connection, ids)
    return states, projector.state(connection).rebuilding


def _task_state(
    connection: Connection, reader: Any, *, user_id: str, task_id: str, projector: Projector
) -> tuple[Any, bool]:
    """The stored state of the user's task ``task_id`` (``None`` if the log has none), and
    whether a rebuild is folding the log (then a missing task may be only not yet folded)."""
    record = reader.task(connection, user_id, task_id)
    return record, record is None and projector.state(connection).rebuilding


def _default_extractor(model: str | None, timeout: float) -> Extractor:
    """Built on a thread: importing the anthropic SDK alone takes about a second. Its
    warning of running offline waits for the open to succeed (:func:`_warn_if_offline`)."""
    from memvee.extractors._default import quiet_default_extractor

    return quiet_default_extractor(model=model, timeout=timeout)


def _warn_if_offline(extractor: Extractor) -> None:
    """Warn that the default extractor runs offline, once the Memory has opened: a
    database that cannot be opened is then told alone, on one line."""
    from memvee.extractors._default import warn_if_offline

    warn_if_offline(extractor)


def _check_parts(config: object, extractor: object, embedder: object) -> None:
    """Refuse a configuration, extractor or embedder of the wrong kind when the Memory is
    made, not when its first extraction or search fails on it."""
    if config is not None and not isinstance(config, MemoryConfig):
        raise InvalidInputError(f"config must be a MemoryConfig, not {type(config).__name__}")
    if extractor is not None:
        check_extractor(extractor)
    if embedder is not None and embedder is not False:
        _check_embedder(embedder)


def _check_embedder(embedder: object) -> None:
    """Refuse an embedder every search would fail on, falling back to words alone: one that
    is not an :class:`Embedder`, or whose name, dimensions or embed are of the wrong kind."""
    if isinstance(embedder, type) or not isinstance(embedder, Embedder):
        raise InvalidInputError(
            "embedder must be an Embedder (a name, dimensions and embed(texts)), False or "
            f"None, not {type(embedder).__name__}"
        )
    name, dimensions = embedder.name, embedder.dimensions
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"an embedder's name must be a non-blank str, not {name!r}")
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise InvalidInputError(
            f"the embedder {name!r} must give dimensions as a positive int (the length of "
            f"its vectors), not {dimensions!r}"
        )
    if _is_async(embedder.embed):
        raise InvalidInputError(
            f"the embedder {name!r} must have a plain embed(texts), not an async one: "
            "it is called on a thread, off the event loop"
        )


def _is_async(function: object) -> bool:
    """Whether calling ``function`` gives a coroutine: an ``async def`` function or method,
    a partial of one, or an object whose ``__call__`` is one."""
    while isinstance(function, functools.partial):
        function = function.func
    if inspect.iscoroutinefunction(function):
        return True
    if inspect.isroutine(function) or isinstance(function, type):
        return False
    return callable(function) and inspect.iscoroutinefunction(type(function).__call__)


async def _ended(tasks: Sequence[ProcessTask]) -> tuple[int, list[ProcessTask]]:
    """Wait for ``tasks`` to end (some may have ended already); the entries of those that
    completed, and those that failed."""
    if tasks:
        await asyncio.wait([t._finished for t in tasks])
    failed = [t for t in tasks if t.status is ProcessStatus.FAILED]
    completed = [t for t in tasks if t.status is not ProcessStatus.FAILED]
    return sum(t.knowledge_count for t in completed), failed


def _check_grace(grace: object) -> float:
    """A close's grace as a float of seconds (a real number of any kind, a numpy one too,
    from 0 to what a thread's wait takes), else :class:`InvalidInputError`."""
    seconds = as_seconds(grace)
    if seconds is None:
        raise InvalidInputError(
            f"grace must be a number of seconds >= 0, not {type(grace).__name__}"
        )
    if not 0 <= seconds <= threading.TIMEOUT_MAX:  # NaN too
        raise _grace_refused(grace)
    return seconds


def _grace_refused(grace: object) -> InvalidInputError:
    """The refusal of ``grace``, made only for a grace refused: one taken is never written
    out."""
    return InvalidInputError(f"grace must be a number of seconds >= 0, not {echoed_repr(grace)}")


def _check_timeout(timeout: object) -> float | None:
    """Seconds to wait (a real number of any kind, a numpy one too), ``None`` for no limit
    (as infinity), else :class:`InvalidInputError`: NaN or a negative wait would silently
    mean "never" or "give up at once"."""
    if timeout is None:
        return None
    seconds = as_seconds(timeout)
    if seconds is None:
        raise InvalidInputError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not seconds >= 0:
        raise InvalidInputError(
            f"timeout must be 0 or more seconds (None waits without limit), "
            f"not {echoed_repr(timeout)}"
        )
    return None if math.isinf(seconds) else seconds


@contextlib.contextmanager
def _reading(engine: Engine) -> Iterator[None]:
    """A read of ``engine``'s database, whose failure (SQLAlchemy's, or a raw cursor's) is
    a :class:`StorageError` naming the database but not the statement."""
    try:
        yield
    except Exception as error:
        if not is_database_failure(error):
            raise
        raise StorageError(
            f"cannot read from {engine.store.safe_url}: {first_line(error)}"
        ) from error


def _plain(text: str) -> str:
    """``text`` as a plain str: a subclass (numpy's ``str_``, a ``str`` Enum's member) is
    stored as its characters, and the message a write returns must read as it reads back
    (a ``str`` Enum formats as its member's name, not its value)."""
    return text if type(text) is str else str.__str__(text)


def _messages(user_id: str, appended: Sequence[Any]) -> list[Message]:
    """The messages an append committed, built from its events on the caller's loop (not
    kept alive while the write is in flight)."""
    return [
        Message(e.message_id, user_id, e.seq, e.role, e.content, e.sent_at, e.name)
        for e in appended
        if isinstance(e, UserLog.MessageAdded)
    ]
