"""The extraction worker pool: a bounded number of extractions on their own event loop.

Extraction is slow (an LLM call), so it never runs on a user actor's thread nor on the
caller's asyncio loop: it runs here, at most ``concurrency`` at a time, each bounded by
``timeout`` seconds. Outcomes go back to whoever submitted them through a callback.
A forgotten user's batches that wait here (for a free slot, or for the breaker) are
dropped, never sent: the user's text goes to no API after ``forget`` returned. A batch
that fails in a way that may pass is followed by one harmless request, which tells an
outage (the batch goes back whole) from a failure of the batch's own (it is split).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from actors._pacing import CircuitBreaker
from events import (
    BatchMessage,
    ExtractionBatch,
    ExtractionError,
    ExtractionResult,
    Extractor,
    HarmlessRequests,
    InvalidExtractionError,
    RejectedBatchError,
    TokenUsage,
    check_result,
)
from events.credentials import carried_by, configured_secrets, log_failure, redact
from events.errors import (
    EveryRequestRefusedError,
    ExtractionPausedError,
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    ExtractorOverloadedError,
    ExtractorRateLimitedError,
    ProbeFailedError,
    first_line,
    repeats,
)
from events.extraction import extraction_deadline

__all__ = [
    "RETRIED_WHOLE",
    "THE_APIS_STATE",
    "ApiDown",
    "DroppedForForget",
    "EveryBatchRefused",
    "ExtractionWorkers",
    "Outcome",
    "asked_to_wait",
    "harmless_request",
]

log = logging.getLogger("memvee.actors")

Outcome = ExtractionResult | BaseException
"""What an extraction ended with: a result, or the error that failed the batch."""


RETRIED_WHOLE = "the batch is retried later, whole"
"""How the error of a batch kept whole ends (its note, in parentheses, closes it)."""


_UNWIND_SECONDS = 5.0
"""How long stopping waits for cancelled extractions to end before it closes the loop."""


class ExtractorNotAsync(ExtractionError):
    """The extractor's ``extract(batch)`` gave no awaitable (a plain ``def``): every batch
    fails so until the code is fixed, so the batch is retried later, whole, and none of its
    messages is blamed."""


class EveryBatchRefused(ExtractionError):
    """The API refuses every batch for one reason (see :meth:`CircuitBreaker.refused`):
    the batch is retried later, whole, and none of its messages is blamed."""

    def __init__(self, refusal: RejectedBatchError) -> None:
        super().__init__(
            f"{refusal} (the API refuses every batch so; retried later, no message blamed)",
            usage=refusal.usage,
        )


class ApiDown(ExtractionError):
    """A batch failed in a way that may pass while the API was down for every call (a
    harmless request sent after it failed too, or one sent after another batch while it
    was out): the batch is retried later, whole, and none of its messages is blamed."""


THE_APIS_STATE = (
    ExtractorOverloadedError
    | ProbeFailedError
    | ExtractionPausedError
    | ApiDown
    | EveryRequestRefusedError
)
"""Failures that say how the API is, never how a batch's messages are: never blamed.
The background, ``memvee reextract`` (a run meeting one stops at once) and ``reextract
--batch-api``'s full-price fallback (it ends for every user) share this one rule."""


class DroppedForForget(ExtractionError):
    """The batch's user was forgotten before the batch was sent: it never went to the API
    (its task ended with the user; this outcome is dropped like a late answer)."""


class _Held:
    """One submitted batch: whether it was sent to the extractor, or dropped first (decided
    under the workers' lock, so a forget and a send never cross), and how many harmless
    requests had failed when it was sent."""

    __slots__ = ("down_told", "dropped", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.dropped = False
        self.down_told = 0


def asked_to_wait(error: BaseException) -> float:
    """The seconds an extraction's failure asked to wait before calling again (0: none)."""
    return (error.retry_after or 0.0) if isinstance(error, ExtractionError) else 0.0


_HARMLESS_TEXT = "Hello."
"""The one message of a harmless request, sent to tell whether the API answers at all."""


async def harmless_request(
    extractor: Extractor, user_id: str, label: str, sent_at: datetime
) -> tuple[TokenUsage, Exception | None]:
    """Send one harmless request (one message, no known entries) through ``extractor``, to
    tell whether its API answers at all: what it cost, and the exception it failed with, if
    it did (an outage fails it with an error that may pass; see :func:`repeats`). An
    extractor that declares :class:`HarmlessRequests` is pinged; another extracts it.
    ``label`` names what asks (a knowledge version, a task) in the request's task id."""
    harmless = ExtractionBatch(
        user_id, f"check:{label}", (BatchMessage("check", "user", _HARMLESS_TEXT, sent_at),)
    )
    try:
        if isinstance(extractor, HarmlessRequests):
            return await extractor.ping(harmless), None
        return (await extractor.extract(harmless)).usage, None
    except Exception as failed:  # the request's verdict: its failure is the finding
        usage = failed.usage if isinstance(failed, ExtractionError) else None
        return usage or TokenUsage(), failed


HARMLESS_REQUEST_SECONDS = 10.0
"""The longest a harmless request after a failed batch may take (or ``timeout``, if that
is shorter): its answer is one token, so a request that takes longer finds the API down,
and the failed batch's slot is not held for a second full timeout."""


def tells_down(failed: Exception) -> bool:
    """Whether a harmless request's failure shows the API down for every call: a 5xx (an
    overloaded API's 529 too), a timeout or no connection. A rate limit (429) or a failure
    asking to wait tells nothing (the failed batch may have used the account's limit up
    itself), nor does a refusal or a failure that would repeat. Refused credentials (401,
    403) and what the requests name not found (404: a model retired or misspelt, a base
    URL's wrong path) are no outage either: the API answered, refusing every request so,
    which each caller tells apart before this rule (the background keeps the batch whole,
    as :class:`EveryRequestRefusedError`; ``memvee reextract`` records a refused or not
    found check, whose failed calls split nothing; ``reextract --batch-api``'s full-price
    fallback stops for every user). Background extraction, ``memvee reextract`` and that
    fallback judge by this one rule; a misjudged outage costs the background a few runs
    at most (:data:`events.user_log.WHOLE_FAILURES_IN_A_ROW`)."""
    return not (
        repeats(failed)
        or asked_to_wait(failed) > 0
        or isinstance(
            failed,
            ExtractorRateLimitedError | ExtractorAccessRefusedError | ExtractorNotFoundError,
        )
    )


def _with_spent(failure: Exception, spent: TokenUsage, secrets: Sequence[str]) -> Exception:
    """``failure`` carrying ``spent`` (a harmless request's tokens) with its own tokens,
    so the failure records both: a copy, since an extractor may raise one exception object
    each time; one that is no ExtractionError becomes one, its whole text without
    ``secrets`` (:func:`redact`), repeating as the original would (:func:`repeats`)."""
    if spent == TokenUsage():
        return failure
    if isinstance(failure, ExtractionError):
        # A shallow copy made without __init__, whose signature a subclass may change.
        carried = type(failure).__new__(type(failure), *failure.args)
        vars(carried).update(vars(failure))
        carried.__cause__, carried.__context__ = failure.__cause__, failure.__context__
        carried.__suppress_context__ = failure.__suppress_context__
        carried.__traceback__ = failure.__traceback__
        carried.usage = spent if failure.usage is None else failure.usage.plus(spent)
        return carried
    shown = redact(str(failure), secrets)
    wrapped = ExtractionError(f"{type(failure).__name__}: {shown}", usage=spent)
    wrapped.repeats = repeats(failure)
    wrapped.__cause__ = failure
    return wrapped


class ExtractionWorkers:
    """Runs an :class:`Extractor` on a private event loop thread with bounded concurrency.

    Every outcome is reported to ``breaker``: an answer (even one that fails the batch for
    good) shows that the API is up, a failure that may pass counts towards pausing. While
    the breaker is open, batches wait here (their tasks stay RUNNING) instead of calling;
    while it pauses for longer than ``timeout``, they fail at once instead
    (:class:`ExtractionPausedError`). A failure that may pass is judged by one harmless
    request (see :meth:`_judged`), sent at once from the batch's slot.

    The tokens a batch's calls spent are counted when its outcome is recorded (the answer,
    or the failure carrying what its calls spent: the harmless request, the extractor's
    probes of a refusal, the try without known entries). Calls whose outcome is never
    recorded are not counted: in a process that dies before that record, and in a live
    one when the store refuses both the answer and then the failure, the task ending
    interrupted (:class:`UserLog.ProcessingInterrupted` carries no usage). At most those of
    the batches in flight (``concurrency``), each its call and the few its failure adds.
    Counting each call as it is answered would cost a write per call; the loss is left
    bounded instead.
    """

    def __init__(
        self,
        extractor: Extractor,
        *,
        concurrency: int = 4,
        timeout: float = 120.0,
        breaker: CircuitBreaker | None = None,
        closing: threading.Event | None = None,
    ):
        self.extractor = extractor
        self.timeout = timeout
        self._closing = closing or threading.Event()  # set: the engine is closing
        self._not_async: str | None = None  # why extract cannot be called, once it showed
        self.breaker = breaker or CircuitBreaker()
        self._resumed = asyncio.Event()
        self.breaker.on_close = self._resume
        self._loop = asyncio.new_event_loop()
        self._semaphore: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._pending: set[Future[ExtractionResult]] = set()
        self._held: dict[str, set[_Held]] = {}  # per user, the batches submitted, not ended
        self._lock = threading.Lock()
        self._down_told = 0  # harmless requests that failed: each told the API was down
        self._carried: frozenset[str] = frozenset()  # every credential its clients carried
        self._gathering = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="memvee-extraction", daemon=True)
        self._thread.start()

    def submit(self, batch: ExtractionBatch, done: Callable[[Outcome], None]) -> None:
        """Extract ``batch`` in the background and call ``done`` with the outcome."""
        held = _Held()
        with self._lock:
            self._held.setdefault(batch.user_id, set()).add(held)
        future = asyncio.run_coroutine_threadsafe(self._extract(batch, held), self._loop)
        with self._lock:
            self._pending.add(future)

        def _finished(f: Future[ExtractionResult]) -> None:
            with self._lock:
                self._pending.discard(f)
                mine = self._held.get(batch.user_id)
                if mine is not None:
                    mine.discard(held)
                    if not mine:
                        del self._held[batch.user_id]
            outcome: Outcome
            if f.cancelled():
                outcome = ExtractionError("extraction cancelled by shutdown")
            else:
                error = f.exception()
                outcome = error if error is not None else f.result()
            try:
                done(outcome)
            except Exception:
                log.exception("delivering the outcome of task %s failed", batch.task_id)

        future.add_done_callback(_finished)

    def drop(self, user_id: str) -> int:
        """Drop every batch of ``user_id`` submitted and not yet sent (the user was
        forgotten); returns how many. A call already out finishes (its answer is dropped
        by the user's actor); a batch submitted afterwards, of the user's new log, goes.
        """
        with self._lock:
            waiting = [h for h in self._held.get(user_id, ()) if not h.sent and not h.dropped]
            for held in waiting:
                held.dropped = True
        if waiting:
            log.info(
                "user %r forgotten: %d batch(es) waiting for extraction dropped unsent",
                user_id,
                len(waiting),
            )
            self._resume()  # those the breaker holds end now, not when it closes
        return len(waiting)

    def _resume(self) -> None:
        """The breaker closed: let the batches it held go (called from any thread)."""
        self._loop.call_soon_threadsafe(self._resumed.set)

    def credentials(self, *, gather: bool = True) -> tuple[str, ...]:
        """The credentials no text of an extraction's failure may show, for any thread to
        tell one (a user's actor): the environment's, those the extractor's clients carry
        now, and every one they carried before (:meth:`_gather`), so one a client held
        before it changed is still taken out of a late failure's text, and one of a client
        no batch went with yet out of a fault met before. Without ``gather``, only those
        seen already: the clients are not asked, which may wait for one being built (the
        asyncio loop must not)."""
        if gather:
            self._gather()
        return tuple(dict.fromkeys((*configured_secrets(), *self._carried)))

    def _gather(self) -> None:
        """Keep the credentials the extractor's clients carry now with those seen before
        (:func:`carried_by`: never a property of the extractor's, never failing). The set
        is replaced, never changed, so another thread reads a whole one; two threads
        adding at once both keep theirs."""
        found = frozenset(carried_by(self.extractor))
        if found <= self._carried:
            return
        with self._gathering:
            self._carried = self._carried | found

    def _shown(self, failure: BaseException, *, whole: bool = False) -> str:
        """``failure``'s first line (or ``whole`` text) without a credential of the
        environment or the extractor's clients, for a log line or an error's text."""
        return redact(str(failure) if whole else first_line(failure), self.credentials())

    @property
    def in_flight(self) -> int:
        """Extractions submitted and not finished."""
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        """Cancel what still runs and let it unwind, close the extractor and stop the
        loop thread."""
        if self._loop.is_closed():  # its thread ended (it never should): nothing runs
            self._thread.join(timeout=10)
            return
        closing = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            closing.result(timeout=_UNWIND_SECONDS + 10)
        except Exception as error:
            log_failure(
                log, logging.ERROR, error, self.credentials(), "closing the extractor failed"
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        """Cancel every extraction and wait for each to end (an HTTP call closes its
        connection as it unwinds, over a few turns of the loop), then close the
        extractor: none is left pending on a stopped loop, to be destroyed unfinished."""
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        if running:
            _, stuck = await asyncio.wait(running, timeout=_UNWIND_SECONDS)
            if stuck:
                log.warning(
                    "%d extraction(s) of %s did not end within %g s of being cancelled",
                    len(stuck),
                    self.extractor.name,
                    _UNWIND_SECONDS,
                )
        await self._aclose()

    async def _extract(self, batch: ExtractionBatch, held: _Held) -> ExtractionResult:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._concurrency)
        if held.dropped:  # no need to queue for a slot
            raise self._dropped(batch)
        self._refuse_long_pause()
        async with self._semaphore:
            # Admitted only once a call may start: batches queued behind the semaphore
            # while the breaker opened must not go to the API when their turn comes.
            while (wait := self._admit(held)) > 0:
                self._refuse_long_pause()
                self._resumed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._resumed.wait(), wait)
            if held.dropped:
                raise self._dropped(batch)
            try:
                result = await self._attempt(batch, held)
            except ProbeFailedError as failure:
                if not _known_entries_suspected(failure, batch):
                    raise
                result = await self._without_known(batch, failure, held)
        self.breaker.accepted()
        return check_result(result, self.extractor.name)

    async def _attempt(self, batch: ExtractionBatch, held: _Held) -> object:
        """One extraction of ``batch`` in the slot held: the extractor's answer, or its
        failure as the breaker and a harmless request judge it (:meth:`_judged`)."""
        try:
            try:
                async with asyncio.timeout(self.timeout):  # a custom prepare() may hang too
                    await self._prepare()
            finally:  # a failed prepare's text may show the client's key too
                self._gather()
            began = self._loop.time()
            async with asyncio.timeout(self.timeout) as cut:
                # Each batch runs in a task of its own: the value ends with its context.
                extraction_deadline.set(cut.when())
                try:
                    result = await self._answer(batch)
                finally:  # a client the call made itself may show in its failure
                    self._gather()
            self._note_blocking(batch, self._loop.time() - began)
        except TimeoutError:
            self.breaker.failed()
            timed_out = ExtractionError(
                f"extraction of task {batch.task_id} timed out after {self.timeout:g} s"
            )
            raise await self._judged(batch, timed_out, held) from None
        except Exception as error:
            if isinstance(error, RejectedBatchError) and error.reason is not None:
                ids = [m.message_id for m in batch.messages]
                probed = error.probe_accepted
                if self.breaker.refused(ids, error.reason, probe_accepted=probed):
                    raise EveryBatchRefused(error) from error
            elif repeats(error):  # an answer, even a model's refusal: the API is up
                self.breaker.succeeded()
            else:
                self.breaker.failed(asked_to_wait(error))
                judged = await self._judged(batch, error, held)
                if judged is not error:  # a copy keeps its own cause: the SDK's error
                    raise judged from judged.__cause__ or error
            raise
        return result

    async def _without_known(
        self, batch: ExtractionBatch, failure: ProbeFailedError, held: _Held
    ) -> object:
        """``batch``, a lone message whose request showing known entries was refused (the
        probe that would tell whose fault failed, a harmless request then accepted),
        extracted once more without them: the refusal may be an entry's, and blaming the
        message for it would quarantine a healthy one. Refused again, the message is
        (split and quarantined as any refusal); the first try's tokens count either way."""
        left_out = ",".join(entry.entry_id for entry in batch.known)
        log.warning(
            "task %s: a request showing known entries was refused and the probe of whose "
            "fault it is failed (%s): the message is extracted once more without entries %s",
            batch.task_id,
            self._shown(failure),
            left_out,
        )
        spent = failure.usage or TokenUsage()
        try:
            result = await self._attempt(dataclasses.replace(batch, known=()), held)
        except Exception as again:  # whatever it is, the first try's tokens were spent
            carried = _with_spent(again, spent, self.credentials())
            raise carried from carried.__cause__
        if not isinstance(result, ExtractionResult):
            return result  # check_result refuses it
        return dataclasses.replace(
            result.spending(result.usage.plus(spent)),
            notes={**result.notes, "known_entries_left_out": left_out},
        )

    async def _judged(self, batch: ExtractionBatch, failure: Exception, held: _Held) -> Exception:
        """What ``batch``'s failure that may pass (counted by the breaker already) tells:
        :class:`ApiDown` when the API is down for every call, else ``failure`` itself, as
        the batch's own (split as before).

        An extractor that declares :class:`HarmlessRequests` is sent one harmless request
        at once: failed with a 5xx (529 too), a timeout or no connection
        (:func:`tells_down`), the API is down; its credentials refused (401, 403), the
        account is refused for every call (:class:`EveryRequestRefusedError`: whole too,
        never said to be an outage), as every request is when what it names is not found
        (404: a model retired or misspelt); answered, the failure is the batch's; rate
        limited or refused otherwise, it tells nothing (the failure is told as it was). A
        refusal whose probe failed (:class:`ProbeFailedError`), the harmless request
        accepted, is no refusal of every request: the batch's own (split like any refusal)
        or, with known entries shown, a failure that may pass, for which a lone message is
        tried again without them (:func:`_refused_alone`), so a lone message the API
        refuses is quarantined however its probes fare, rather than retried by every run,
        and a healthy one shown beside a refused entry is extracted. Its
        answer only judges this failure: it is no answered call for the breaker, whose
        :meth:`blame` would take it for evidence against a lone message the API fails for
        its size. None is sent after a failure that asked to wait (the user's backoff
        honours the wait; a request now would meet the same limit, and a wait here would
        hold the slot), or that a harmless request told already
        (:class:`EveryRequestRefusedError`), nor to another extractor, nor once the engine
        is closing; nor when one that followed another batch failed while this one was out
        and the breaker is open still (the API is down, whoever's messages opened it). The
        request's tokens go with the failure's. (However often the workers say down, the
        user's log splits the batch after a few failures in a row kept whole: see
        :meth:`UserLog.record_failure`.)
        """
        if (
            not isinstance(self.extractor, HarmlessRequests)
            or isinstance(failure, ExtractorNotAsync | EveryRequestRefusedError)
            or asked_to_wait(failure) > 0
            or self._closing.is_set()
        ):
            return failure
        usage = failure.usage if isinstance(failure, ExtractionError) else None
        shown = self._shown(failure, whole=True)
        if self._down_told > held.down_told and self.breaker.is_open:
            return ApiDown(
                f"{shown} (a harmless request failed while the batch was out: the API is "
                f"down; {RETRIED_WHOLE})",
                usage=usage,
                whole_note=RETRIED_WHOLE,
            )
        spent, ping_failed = await self._ping(batch)
        refusal = None if ping_failed is None else _every_request_refused(ping_failed)
        if ping_failed is not None and refusal is not None:
            found, consequence, why = refusal
            log.info(
                "task %s: a harmless request %s (%s): %s, the batch is retried whole",
                batch.task_id,
                found,
                self._shown(ping_failed),
                consequence,
            )
            return EveryRequestRefusedError(
                f"{shown} ({why}, not the batch; {RETRIED_WHOLE})",
                usage=spent if usage is None else usage.plus(spent),
                whole_note=RETRIED_WHOLE,
            )
        if ping_failed is None and (refused := _refused_alone(failure, batch)) is not None:
            self.breaker.succeeded()  # it answered the batch and accepted the harmless one
            log.info(
                "task %s: a harmless request was accepted after a probe of the batch's "
                "refusal failed: the refusal is not every request's",
                batch.task_id,
            )
            return _with_spent(refused, spent, self.credentials())
        if ping_failed is None or not tells_down(ping_failed):
            return _with_spent(failure, spent, self.credentials())
        self._down_told += 1
        if not self.breaker.is_open:  # the outage it met already paces every call
            self.breaker.failed()
        log.info(
            "task %s: a harmless request failed too (%s): the API is down, the batch is "
            "retried whole",
            batch.task_id,
            self._shown(ping_failed),
        )
        return ApiDown(
            f"{shown} (a harmless request failed too: the API is down; {RETRIED_WHOLE})",
            usage=spent if usage is None else usage.plus(spent),
            whole_note=RETRIED_WHOLE,
        )

    async def _ping(self, batch: ExtractionBatch) -> tuple[TokenUsage, Exception | None]:
        """One harmless request once ``batch`` failed, bounded by
        :data:`HARMLESS_REQUEST_SECONDS` (or ``timeout``, if shorter): what it spent, and
        what it failed with, if it did."""
        limit = min(HARMLESS_REQUEST_SECONDS, self.timeout)
        try:
            async with asyncio.timeout(limit) as cut:
                extraction_deadline.set(cut.when())
                sent_at = max((m.sent_at for m in batch.messages), default=datetime.now(UTC))
                return await harmless_request(self.extractor, batch.user_id, batch.task_id, sent_at)
        except TimeoutError:
            return TokenUsage(), ExtractionError(
                f"the harmless request timed out after {limit:g} s"
            )

    def _admit(self, held: _Held) -> float:
        """As :meth:`CircuitBreaker.admit`, for a batch that is marked sent when admitted;
        0 without asking the breaker (no probe taken) once the batch is dropped."""
        with self._lock:
            if held.dropped:
                return 0.0
            wait = self.breaker.admit()
            held.sent = wait <= 0
            held.down_told = self._down_told
            return wait

    def _refuse_long_pause(self) -> None:
        """Fail the batch at once if the breaker pauses for longer than a batch may take
        (``timeout``), as after a long ``retry-after``: waiting would hold its task (and a
        slot) far past the timeout, so it fails as the API asked, to be retried later."""
        pause = self.breaker.paused_for()
        if pause <= self.timeout:
            return
        wait = float(math.ceil(pause))
        raise ExtractionPausedError(
            "extraction paused for every user: the API kept failing (the circuit breaker "
            f"is open); the batch was not sent; retry after {wait:g} s",
            retry_after=wait,
        )

    def _dropped(self, batch: ExtractionBatch) -> DroppedForForget:
        """The outcome of a batch dropped unsent, its user forgotten."""
        log.debug(
            "user %r: task %s: the batch is not sent, the user was forgotten",
            batch.user_id,
            batch.task_id,
        )
        return DroppedForForget(
            f"task {batch.task_id} not extracted: user {batch.user_id!r} was forgotten"
        )

    def _note_blocking(self, batch: ExtractionBatch, seconds: float) -> None:
        """Warn of an answer that came past the timeout: the timeout could not cut it off,
        so the extractor blocked this loop (and every other extraction with it)."""
        if seconds > self.timeout:
            log.warning(
                "extractor %r answered task %s after %.1f s, past the %g s timeout, which "
                "could not cut it off: it blocks the extraction loop (a blocking call in "
                "`async def extract`?); run blocking work with asyncio.to_thread",
                self.extractor.name,
                batch.task_id,
                seconds,
                self.timeout,
            )

    async def _answer(self, batch: ExtractionBatch) -> object:
        """The extractor's answer to ``batch``. What it raises that would stop this loop
        (``KeyboardInterrupt``, ``SystemExit``) or pass for a shutdown (a
        ``CancelledError`` nobody asked for, as some HTTP stacks leak) fails the batch
        instead, as an answer that repeats: retried as it is, it would fail again."""
        name = self.extractor.name
        if self._not_async is not None:  # called again, it would block and be paid again
            raise ExtractorNotAsync(self._not_async)
        try:
            answer = self.extractor.extract(batch)
            if not inspect.isawaitable(answer):
                self._not_async = (
                    f"extractor {name!r}: extract(batch) gave {type(answer).__name__}, not an "
                    "awaitable: it must be async (async def extract); it is called no more "
                    "until the Memory opens again"
                )
                raise ExtractorNotAsync(self._not_async)
            return await answer
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # a shutdown, or the timeout's own
                raise
            failure: BaseException = error
        except (KeyboardInterrupt, SystemExit) as error:
            failure = error
        told = self._shown(failure, whole=True)
        log_failure(  # its traceback as text: a handler's filter knows no client's key
            log,
            logging.ERROR,
            failure,
            self.credentials(),
            "extractor %r raised %s on task %s; the batch fails",
            name,
            type(failure).__name__,
            batch.task_id,
            live=False,
        )
        raise InvalidExtractionError(
            f"extractor {name!r} raised {type(failure).__name__}: {told}"
        ) from failure

    async def _prepare(self) -> None:
        """Let the extractor get ready for a call (an SDK client built off this loop)
        before the batch's timeout starts: what it takes once is no batch's to pay for."""
        prepare: Any = getattr(self.extractor, "prepare", None)
        if prepare is not None:
            await prepare()

    async def _aclose(self) -> None:
        aclose: Any = getattr(self.extractor, "aclose", None)
        if aclose is not None:
            await aclose()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()


_REFUSING_EVERY_REQUEST: tuple[tuple[type[ExtractionError], str, str, str], ...] = (
    (
        ExtractorAccessRefusedError,
        "was refused too",
        "the account is refused",
        "a harmless request's credentials were refused too: the API key or its permissions "
        "are refused for every request",
    ),
    (
        ExtractorNotFoundError,
        "was answered not found too",
        "every request is refused",
        "a harmless request was answered so too: what the requests name (the model, the "
        "base URL's path) is not found for every request",
    ),
)
"""The failures of a harmless request that refuse every request, not the batch: each with
what the request met, what follows, and why the batch's failure is told so."""


def _every_request_refused(ping_failed: Exception) -> tuple[str, str, str] | None:
    """What a harmless request's ``ping_failed`` tells if it refuses every request (a key
    refused, a model or path not found), else None."""
    for kind, found, consequence, why in _REFUSING_EVERY_REQUEST:
        if isinstance(ping_failed, kind):
            return found, consequence, why
    return None


def _known_entries_suspected(failure: ProbeFailedError, batch: ExtractionBatch) -> bool:
    """Whether ``failure`` leaves a lone message of ``batch`` to be tried again without the
    known entries shown: its refusal's probe failed, a harmless request (no entries) was
    then accepted, so the message or an entry shown beside it is refused."""
    return failure.harmless_accepted and bool(batch.known) and len(batch.messages) == 1


def _refused_alone(failure: Exception, batch: ExtractionBatch) -> ExtractionError | None:
    """What ``failure``, a refusal of ``batch`` whose probe failed (:class:`ProbeFailedError`),
    tells once a harmless request (no known entries, a harmless message) was just accepted:
    the API answers, and does not refuse every request. With no known entry shown, nothing
    but the batch's messages is left to refuse: the refusal itself, the batch's own. With
    known entries shown, one of them may be what is refused (the probe that would tell
    failed): the failure still may pass (``harmless_accepted``), and a lone message is
    tried once more without them (:meth:`ExtractionWorkers._without_known`), its own
    refusal then settled as above. None for any other failure."""
    if not isinstance(failure, ProbeFailedError) or failure.refusal is None:
        return None
    refusal = failure.refusal
    probe = first_line(failure.__cause__) if failure.__cause__ is not None else "unknown"
    told = f"{refusal} (a request probing whose fault it is failed: {probe}; a harmless request"
    if not batch.known:
        return RejectedBatchError(
            f"{told} was accepted: the batch's messages are refused)",
            usage=failure.usage,
            reason=refusal.reason,
            probe_accepted=True,
            too_large=refusal.too_large,
            **refusal.size_figures(),
        )
    return ProbeFailedError(
        f"{told} was accepted: the batch's messages or the known entries shown are refused; "
        "a lone message is tried again without the entries)",
        usage=failure.usage,
        retry_after=failure.retry_after,
        refusal=refusal,
        harmless_accepted=True,
    )
