"""The extraction workers: bounded concurrency, paced by the shared circuit breaker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import actors._workers as workers_module
from actors._pacing import CircuitBreaker
from actors._workers import ApiDown, DroppedForForget, ExtractionWorkers, Outcome
from events import (
    BatchMessage,
    ExtractionBatch,
    ExtractionError,
    ExtractionResult,
    HarmlessRequests,
    TokenUsage,
)
from events.errors import (
    EveryRequestRefusedError,
    ExtractionPausedError,
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    ExtractorOverloadedError,
    ExtractorRateLimitedError,
    ProbeFailedError,
)
from events.extraction import extraction_deadline
from memvee import Memory, ProcessingError
from memvee.audit import Audit
from tests.support.extractors import RecordingExtractor


class _DownAPI:
    """An extractor whose API is down: each call fails after a moment (the others arrive
    meanwhile), in a way that may pass."""

    name = "down"

    def __init__(self) -> None:
        self.calls = 0

    async def extract(self, batch: ExtractionBatch) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        raise ConnectionResetError("the API is down")

    async def aclose(self) -> None:
        pass


def test_batches_queued_for_a_slot_when_the_breaker_opens_wait_for_it() -> None:
    """Admission is asked when a call may start, not when the batch arrives: batches
    that waited for the concurrency limit while the breaker opened do not call the API
    once their turn comes (each did, in turn: 57 requests reached a down API from 200
    users where the breaker allowed about 10)."""
    api = _DownAPI()
    breaker = CircuitBreaker(failures=1, cooldown=60.0)
    workers = ExtractionWorkers(api, concurrency=1, breaker=breaker)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    first_done = threading.Event()

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        first_done.set()

    try:
        for n in range(20):
            workers.submit(ExtractionBatch("u", f"task-{n}", ()), done)
        assert first_done.wait(10)
        time.sleep(0.3)  # the queued batches had their turn: without the fix, all called
        assert breaker.is_open
        assert api.calls == 1
        assert len(outcomes) == 1 and isinstance(outcomes[0], ConnectionResetError)
    finally:
        workers.stop()


class _SlowToCancel:
    """An extractor whose call, once cancelled, takes a few more turns of its loop to
    unwind (as an HTTP client closing its connection does)."""

    name = "slow-to-cancel"

    def __init__(self, calls: int) -> None:
        self.calls, self.unwound = calls, 0
        self.all_started = threading.Event()

    async def extract(self, batch: ExtractionBatch) -> Any:
        self.calls -= 1
        if self.calls == 0:
            self.all_started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            self.unwound += 1
        raise AssertionError("never reached")

    async def aclose(self) -> None:
        pass


def test_stop_waits_for_cancelled_extractions_to_unwind() -> None:
    """Stopping cancels every extraction still running, and each ends (its cleanup run,
    its outcome delivered) before the loop stops: none is left pending on a closed loop,
    where the interpreter would destroy it unfinished."""
    api = _SlowToCancel(calls=2)
    workers = ExtractionWorkers(api, concurrency=2)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    workers.submit(ExtractionBatch("u", "task-1", ()), outcomes.append)
    workers.submit(ExtractionBatch("u", "task-2", ()), outcomes.append)
    assert api.all_started.wait(10)
    workers.stop()
    assert api.unwound == 2
    assert len(outcomes) == 2
    assert all(isinstance(o, BaseException) for o in outcomes)


class _DeafToCancel:
    """An extractor that goes on through a cancellation (a bug of its own)."""

    name = "deaf"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.task: asyncio.Task[Any] | None = None

    async def extract(self, batch: ExtractionBatch) -> Any:
        self.task = asyncio.current_task()
        self.started.set()
        for _ in range(2):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
        raise AssertionError("never reached")

    async def aclose(self) -> None:
        pass


def test_stop_gives_up_on_an_extraction_that_does_not_end_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An extraction that goes on through its cancellation does not hold the shutdown
    for longer than the bound: stop returns, and the warning names the extractor."""
    monkeypatch.setattr(workers_module, "_UNWIND_SECONDS", 0.1)
    api = _DeafToCancel()
    workers = ExtractionWorkers(api)  # type: ignore[arg-type]
    workers.submit(ExtractionBatch("u", "task-1", ()), lambda outcome: None)
    assert api.started.wait(10)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="memvee.actors"):
        workers.stop()
    assert time.monotonic() - started < 20, "stop did not wait for the 30 s extraction"
    assert "1 extraction(s) of deaf did not end within 0.1 s" in caplog.text
    assert api.task is not None and not api.task.done()
    api.task._log_destroy_pending = False  # left on the closed loop, as the warning said


class _Outcomes:
    """The outcomes of submitted batches by task id, with an event per task."""

    def __init__(self) -> None:
        self.by_task: dict[str, Outcome] = {}
        self._ended: dict[str, threading.Event] = {}

    def done(self, task_id: str) -> Any:
        ended = self._ended.setdefault(task_id, threading.Event())

        def _done(outcome: Outcome) -> None:
            self.by_task[task_id] = outcome
            ended.set()

        return _done

    def of(self, task_id: str) -> Outcome:
        assert self._ended[task_id].wait(10), f"{task_id} never ended"
        return self.by_task[task_id]


def test_a_forgotten_users_batches_waiting_for_a_slot_are_never_sent() -> None:
    """Dropping a user drops their batches queued behind another extraction; the call
    already out finishes, and a batch of the user submitted afterwards (their new log)
    goes."""
    extractor = RecordingExtractor(gated=True)
    workers = ExtractionWorkers(extractor, concurrency=1)
    outcomes = _Outcomes()
    try:
        workers.submit(ExtractionBatch("bob", "bob-1", ()), outcomes.done("bob-1"))
        assert extractor.started.wait(10)
        for task in ("ann-1", "ann-2"):
            workers.submit(ExtractionBatch("ann", task, ()), outcomes.done(task))
        assert workers.drop("ann") == 2
        assert workers.drop("bob") == 0, "a call already out is not dropped"
        workers.submit(ExtractionBatch("ann", "ann-new", ()), outcomes.done("ann-new"))
        extractor.gate.set()
        assert isinstance(outcomes.of("bob-1"), ExtractionResult)
        assert isinstance(outcomes.of("ann-1"), DroppedForForget)
        assert isinstance(outcomes.of("ann-2"), DroppedForForget)
        assert isinstance(outcomes.of("ann-new"), ExtractionResult)
        assert [b.task_id for b in extractor.batches] == ["bob-1", "ann-new"]
    finally:
        workers.stop()


class _AskedBreaker(CircuitBreaker):
    """A breaker that counts the batches it was asked to admit and says when it held one."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.asked = 0
        self.holding = threading.Event()

    def admit(self) -> float:
        self.asked += 1
        wait = super().admit()
        if wait > 0:
            self.holding.set()
        return wait


def test_a_forgotten_users_batch_the_breaker_holds_ends_unsent_at_once() -> None:
    """A batch held back while the breaker is open ends as soon as its user is dropped,
    not when the breaker closes, and asks the breaker nothing more (it could otherwise
    take the probe a batch that will call needs)."""
    extractor = RecordingExtractor()
    breaker = _AskedBreaker(failures=1, cooldown=60.0)
    breaker.failed()
    workers = ExtractionWorkers(extractor, concurrency=2, breaker=breaker)
    outcomes = _Outcomes()
    try:
        workers.submit(ExtractionBatch("ann", "ann-1", ()), outcomes.done("ann-1"))
        assert breaker.holding.wait(10)
        assert workers.drop("ann") == 1
        assert isinstance(outcomes.of("ann-1"), DroppedForForget)
        assert extractor.batches == [] and breaker.asked == 1 and breaker.is_open
    finally:
        workers.stop()


def test_a_batch_the_breaker_would_hold_past_the_timeout_fails_at_once_unsent() -> None:
    """A breaker paused longer than a batch may take (a 600 s ``retry-after`` against a
    5 s timeout) fails the batches at once, sent nowhere and holding no slot, carrying the
    remaining pause as ``retry_after``; they used to wait out the whole pause RUNNING."""
    extractor = RecordingExtractor()
    breaker = CircuitBreaker(failures=1, cooldown=2.0)
    breaker.failed(at_least=600.0)
    workers = ExtractionWorkers(extractor, concurrency=1, timeout=5.0, breaker=breaker)
    outcomes = _Outcomes()
    try:
        for task in ("ann-1", "bob-1"):
            workers.submit(ExtractionBatch(task[:3], task, ()), outcomes.done(task))
        for task in ("ann-1", "bob-1"):
            failure = outcomes.of(task)
            assert isinstance(failure, ExtractionPausedError)
            assert failure.retry_after == 600.0 and "retry after 600 s" in str(failure)
        assert extractor.batches == [] and breaker.is_open
    finally:
        workers.stop()


class _Pinged(HarmlessRequests):
    """An extractor of an API failing every batch with ``failure`` (those of ``answered``
    users excepted), which answers (or, with ``ping_failure``, fails) the harmless
    requests it is sent, each costing 5 + 1 tokens. ``calls`` lists the task ids of the
    batches and the harmless requests (``check:`` ones) in the order they were sent."""

    name = "pinged"

    def __init__(
        self,
        failure: Exception,
        ping_failure: Exception | None = None,
        answered: frozenset[str] = frozenset(),
    ) -> None:
        self.failure = failure
        self.ping_failure = ping_failure
        self.answered = answered
        self.pings: list[ExtractionBatch] = []
        self.batches: list[ExtractionBatch] = []
        self.calls: list[str] = []

    async def extract(self, batch: ExtractionBatch) -> Any:
        self.batches.append(batch)
        self.calls.append(batch.task_id)
        if batch.user_id in self.answered:
            return ExtractionResult(facts=(), extractor=self.name)
        raise self.failure

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pings.append(batch)
        self.calls.append(batch.task_id)
        if self.ping_failure is not None:
            raise self.ping_failure
        return TokenUsage(input_tokens=5, output_tokens=1)

    async def aclose(self) -> None:
        pass


def _batch(user_id: str, task_id: str, message_id: str = "m1") -> ExtractionBatch:
    said = BatchMessage(message_id, "user", "I live in Oslo.", datetime(2024, 5, 1, tzinfo=UTC))
    return ExtractionBatch(user_id, task_id, (said,))


def _outcome_of(
    extractor: Any, breaker: CircuitBreaker | None = None, *, timeout: float = 30.0
) -> Outcome:
    """The outcome of one batch of one message sent through workers of ``extractor``."""
    workers = ExtractionWorkers(extractor, concurrency=1, breaker=breaker, timeout=timeout)
    outcomes = _Outcomes()
    try:
        workers.submit(_batch("ann", "ann-1"), outcomes.done("ann-1"))
        return outcomes.of("ann-1")
    finally:
        workers.stop()


def test_a_batch_failing_with_its_harmless_request_tells_the_api_is_down() -> None:
    """A batch fails in a way that may pass and the one harmless request sent after it
    fails too: the API is down, told by :class:`ApiDown` (the batch goes back whole),
    which keeps the failure's text and the request's tokens."""
    extractor = _Pinged(
        ExtractorOverloadedError("HTTP 529 overloaded"),
        ExtractionError("HTTP 500", usage=TokenUsage(input_tokens=3)),
    )
    outcome = _outcome_of(extractor)
    assert isinstance(outcome, ApiDown) and "HTTP 529 overloaded" in str(outcome)
    assert outcome.usage == TokenUsage(input_tokens=3)
    assert [p.messages[0].content for p in extractor.pings] == ["Hello."]


def test_a_batch_failing_while_its_harmless_request_is_answered_keeps_its_own_failure() -> None:
    """Answered, the harmless request shows the API up: the failure is the batch's own
    (split as before), a copy of it carrying the request's tokens to be counted with it."""
    failure = ExtractorOverloadedError("HTTP 529 overloaded", usage=TokenUsage(input_tokens=7))
    extractor = _Pinged(failure)
    outcome = _outcome_of(extractor, CircuitBreaker(failures=2))
    assert type(outcome) is ExtractorOverloadedError and str(outcome) == str(failure)
    assert outcome.usage == TokenUsage(input_tokens=12, output_tokens=1)
    assert len(extractor.pings) == 1


def test_the_copy_carrying_the_harmless_requests_tokens_keeps_the_failures_cause() -> None:
    """The copy of a failure that carries the harmless request's tokens keeps what caused
    it and where it was raised, so the SDK's error still shows in the logs."""
    cause = ConnectionError("socket reset")
    try:
        raise ExtractorOverloadedError("HTTP 529 overloaded") from cause
    except ExtractorOverloadedError as raised:
        failure = raised
    outcome = _outcome_of(_Pinged(failure), CircuitBreaker(failures=2))
    assert outcome is not failure and outcome.__cause__ is cause
    assert outcome.__traceback__ is not None


def test_one_exception_object_raised_each_time_is_charged_one_request_each_time() -> None:
    """The failure carries the harmless request's tokens in a copy: an extractor that
    raises the same exception object every time (a stored error) is not charged every
    earlier request again with each failure."""
    failure = ExtractionError("HTTP 500 upstream failed")
    extractor = _Pinged(failure)
    workers = ExtractionWorkers(extractor, concurrency=1, breaker=CircuitBreaker(failures=100))
    outcomes = _Outcomes()
    charged = []
    try:
        for run in range(3):
            workers.submit(_batch("ann", f"ann-{run}"), outcomes.done(f"ann-{run}"))
            outcome = outcomes.of(f"ann-{run}")
            assert isinstance(outcome, ExtractionError)
            charged.append(outcome.usage)
    finally:
        workers.stop()
    assert charged == [TokenUsage(input_tokens=5, output_tokens=1)] * 3
    assert failure.usage is None


@pytest.mark.parametrize(
    "ping_failure",
    [
        ExtractorRateLimitedError("HTTP 429 rate limited"),
        ExtractionError("HTTP 503 unavailable", retry_after=1.0),
    ],
    ids=["rate limited", "asked to wait"],
)
def test_a_harmless_request_rate_limited_or_asked_to_wait_tells_nothing(
    ping_failure: ExtractionError,
) -> None:
    """The failed batch may have used the account's rate limit up itself: such a failure
    of the harmless request is no sign of an outage, so the batch's failure is told as it
    was (split), and the breaker counts it alone."""
    breaker = CircuitBreaker(failures=2)
    extractor = _Pinged(ExtractionError("HTTP 500 upstream failed"), ping_failure)
    outcome = _outcome_of(extractor, breaker)
    assert isinstance(outcome, ExtractionError) and not isinstance(outcome, ApiDown)
    assert len(extractor.pings) == 1 and not breaker.is_open


def test_a_harmless_request_met_overloaded_tells_the_api_is_down() -> None:
    """A 529 answering the harmless request is the API overloaded for every call, as a
    5xx is: the batch goes back whole (the user's log bounds how often in a row)."""
    extractor = _Pinged(
        ExtractionError("HTTP 500 upstream failed"), ExtractorOverloadedError("HTTP 529")
    )
    outcome = _outcome_of(extractor, CircuitBreaker(failures=100))
    assert isinstance(outcome, ApiDown) and len(extractor.pings) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_harmless_request_refused_its_credentials_tells_the_account_refused_not_down(
    status: int,
) -> None:
    """A refused key (or its permissions) is no outage: the API answered. The batch goes
    back whole all the same, as for an account refused every request, its error saying
    so; the breaker counts the batch's failure alone, as no outage paces every call."""
    breaker = CircuitBreaker(failures=2)
    extractor = _Pinged(
        ExtractionError("HTTP 500 upstream failed"),
        ExtractorAccessRefusedError(f"HTTP {status} refused"),
    )
    outcome = _outcome_of(extractor, breaker)
    assert isinstance(outcome, EveryRequestRefusedError) and not isinstance(outcome, ApiDown)
    assert "credentials were refused too" in str(outcome) and "down" not in str(outcome)
    assert len(extractor.pings) == 1 and not breaker.is_open
    assert not workers_module.tells_down(ExtractorAccessRefusedError(f"HTTP {status}"))


def test_a_harmless_request_answered_not_found_tells_every_request_refused_not_down() -> None:
    """A 404 (a model retired or misspelt, a base URL's wrong path) is the API's answer to
    every request, no outage: the batch goes back whole saying what is not found, and the
    rule every caller shares (``memvee reextract`` and its bulk fallback too) tells no
    outage by it."""
    breaker = CircuitBreaker(failures=2)
    missing = ExtractorNotFoundError("HTTP 404 model: claude-retired")
    extractor = _Pinged(missing, missing)
    outcome = _outcome_of(extractor, breaker)
    assert isinstance(outcome, EveryRequestRefusedError) and not isinstance(outcome, ApiDown)
    assert "not found for every request" in str(outcome) and "down" not in str(outcome)
    assert not breaker.is_open
    assert not workers_module.tells_down(ExtractorNotFoundError("HTTP 404 model: x"))


def test_a_failure_that_is_no_extraction_error_carries_the_harmless_requests_tokens() -> None:
    extractor = _Pinged(ConnectionResetError("reset by peer"))
    outcome = _outcome_of(extractor)
    assert isinstance(outcome, ExtractionError) and not isinstance(outcome, ApiDown)
    assert str(outcome) == "ConnectionResetError: reset by peer"
    assert outcome.usage == TokenUsage(input_tokens=5, output_tokens=1)


def test_an_answered_harmless_request_is_no_evidence_against_a_lone_message() -> None:
    """A lone message the API fails every time (a gateway failing every large request)
    while it answers the harmless request after each failure: the answers judge the
    failures, they are no calls of other messages answered meanwhile, so the breaker
    never blames the message (it would be quarantined, healthy, a few runs later)."""
    breaker = CircuitBreaker(failures=100)
    extractor = _Pinged(ExtractionError("HTTP 500 upstream failed"))
    workers = ExtractionWorkers(extractor, concurrency=1, breaker=breaker)
    outcomes = _Outcomes()
    try:
        blamed = []
        for run in range(4):
            workers.submit(_batch("ann", f"ann-{run}"), outcomes.done(f"ann-{run}"))
            assert isinstance(outcomes.of(f"ann-{run}"), ExtractionError)
            blamed.append(breaker.blame("m1"))
    finally:
        workers.stop()
    assert blamed == [False] * 4 and len(extractor.pings) == 4


def test_the_breaker_opened_by_a_batchs_failure_still_hears_its_harmless_request() -> None:
    """The failure that opens the breaker may be the batch's own (several users' batches
    the API fails for their messages open it alike): a harmless request tells, answered
    here, so the failure is the batch's and its batch is split, not kept whole."""
    extractor = _Pinged(ConnectionResetError("reset by peer"))
    breaker = CircuitBreaker(failures=1, cooldown=60.0)
    outcome = _outcome_of(extractor, breaker)
    assert isinstance(outcome, ExtractionError) and not isinstance(outcome, ApiDown)
    assert len(extractor.pings) == 1 and breaker.is_open


def test_no_harmless_request_follows_a_failure_once_another_failed_while_it_was_out() -> None:
    """bob's batch fails after ann's did and after the harmless request that followed
    hers failed too, which opened the breaker: the API is down, told without another
    request, and bob's batch goes back whole too."""
    ann_judged = asyncio.Event()

    class _Racing(_Pinged):
        async def extract(self, batch: ExtractionBatch) -> Any:
            if batch.user_id == "bob":
                await ann_judged.wait()
            return await super().extract(batch)

        async def ping(self, batch: ExtractionBatch) -> TokenUsage:
            try:
                return await super().ping(batch)
            finally:
                asyncio.get_running_loop().call_soon(ann_judged.set)

    extractor = _Racing(ConnectionResetError("reset by peer"), ExtractionError("HTTP 500"))
    workers = ExtractionWorkers(extractor, concurrency=2, breaker=CircuitBreaker(failures=2))
    outcomes = _Outcomes()
    try:
        workers.submit(_batch("bob", "bob-1", "m2"), outcomes.done("bob-1"))
        workers.submit(_batch("ann", "ann-1"), outcomes.done("ann-1"))
        assert isinstance(outcomes.of("ann-1"), ApiDown)
        assert isinstance(outcomes.of("bob-1"), ApiDown)
    finally:
        workers.stop()
    assert extractor.calls == ["ann-1", "check:ann-1", "bob-1"]


def test_the_breakers_probe_failing_is_followed_by_a_harmless_request() -> None:
    """The breaker open, a batch goes as its probe and fails: a harmless request still
    tells whose failure it was (answered here: the batch's, split). Its answer closes no
    breaker; the next batch the API answers does."""
    breaker = CircuitBreaker(failures=1, cooldown=0.0)
    breaker.failed()
    extractor = _Pinged(
        ExtractorOverloadedError("HTTP 529 overloaded"), answered=frozenset({"bob"})
    )
    workers = ExtractionWorkers(extractor, concurrency=1, breaker=breaker)
    outcomes = _Outcomes()
    try:
        workers.submit(_batch("ann", "ann-1"), outcomes.done("ann-1"))
        outcome = outcomes.of("ann-1")
        assert isinstance(outcome, ExtractorOverloadedError) and not isinstance(outcome, ApiDown)
        assert len(extractor.pings) == 1 and breaker.is_open
        workers.submit(_batch("bob", "bob-1", "m2"), outcomes.done("bob-1"))
        assert isinstance(outcomes.of("bob-1"), ExtractionResult)
        assert not breaker.is_open
    finally:
        workers.stop()


def test_no_harmless_request_follows_a_failure_asking_to_wait() -> None:
    """A failure with a retry-after is told as it was, at once: the user's backoff waits
    as asked, and the batch's slot is free for other users' batches meanwhile (a harmless
    request after the wait used to hold it, and the backoff waited again)."""
    failure = ExtractionError("HTTP 429 rate limited", retry_after=0.5)
    extractor = _Pinged(failure, answered=frozenset({"bob"}))
    workers = ExtractionWorkers(extractor, concurrency=1, timeout=30.0)
    outcomes = _Outcomes()
    try:
        workers.submit(_batch("ann", "ann-1"), outcomes.done("ann-1"))
        workers.submit(_batch("bob", "bob-1", "m2"), outcomes.done("bob-1"))
        assert outcomes.of("ann-1") is failure
        assert isinstance(outcomes.of("bob-1"), ExtractionResult)
    finally:
        workers.stop()
    assert extractor.calls == ["ann-1", "bob-1"]


def test_a_harmless_request_is_cut_at_a_short_limit_of_its_own() -> None:
    """A batch that failed holds its slot for one more request, not for another whole
    ``timeout``: the harmless request gets HARMLESS_REQUEST_SECONDS."""
    remaining: list[float] = []

    class _Timed(_Pinged):
        async def ping(self, batch: ExtractionBatch) -> TokenUsage:
            deadline = extraction_deadline.get()
            assert deadline is not None
            remaining.append(deadline - asyncio.get_running_loop().time())
            return await super().ping(batch)

    extractor = _Timed(ConnectionResetError("reset by peer"))
    _outcome_of(extractor, timeout=120.0)
    assert len(remaining) == 1 and remaining[0] <= workers_module.HARMLESS_REQUEST_SECONDS


def test_no_harmless_request_is_sent_once_the_engine_is_closing() -> None:
    """A batch failing while the Memory closes is told as it was: no request goes out
    after the close began, nor holds its grace."""
    closing = threading.Event()
    closing.set()
    extractor = _Pinged(ConnectionResetError("reset by peer"))
    workers = ExtractionWorkers(extractor, concurrency=1, closing=closing)
    outcomes = _Outcomes()
    try:
        workers.submit(_batch("ann", "ann-1"), outcomes.done("ann-1"))
        assert isinstance(outcomes.of("ann-1"), ConnectionResetError)
    finally:
        workers.stop()
    assert extractor.pings == []


def test_a_harmless_request_that_outlasts_the_timeout_tells_the_api_is_down() -> None:
    class _Hanging(_Pinged):
        async def ping(self, batch: ExtractionBatch) -> TokenUsage:
            self.pings.append(batch)
            await asyncio.Event().wait()
            raise AssertionError("never answered")

    extractor = _Hanging(ConnectionResetError("reset by peer"))
    outcome = _outcome_of(extractor, timeout=0.2)
    assert isinstance(outcome, ApiDown) and len(extractor.pings) == 1


def test_an_extractor_not_declaring_harmless_requests_is_sent_none() -> None:
    """Without :class:`HarmlessRequests` a failure is told as it was: no request is sent
    (a ``ping`` of its own is its own business)."""

    class _Undeclared:
        name = "undeclared"
        pings = 0

        async def extract(self, batch: ExtractionBatch) -> Any:
            raise ConnectionResetError("reset by peer")

        async def ping(self, batch: ExtractionBatch) -> TokenUsage:
            self.pings += 1
            return TokenUsage()

    extractor = _Undeclared()
    outcome = _outcome_of(extractor)
    assert isinstance(outcome, ConnectionResetError) and extractor.pings == 0


@pytest.mark.parametrize("again", [ExtractionError("refused again"), RuntimeError("a bug")])
async def test_the_first_tries_tokens_count_however_the_try_without_known_entries_fails(
    memory: Memory, db_url: str, extractor: RecordingExtractor, again: Exception
) -> None:
    """A lone message refused while known entries were shown (the probe failing, a
    harmless request accepted) is tried once more without them; that try failing in any
    way, even by an extractor's own bug, the tokens the first try spent are recorded with
    the failure (they were lost when it raised anything but an ExtractionError)."""
    await memory.add_message("u", "user", "I live in Oslo")
    assert await memory.process("u") == 1

    refused: list[ExtractionBatch] = []

    def fault(batch: ExtractionBatch) -> Exception:
        if batch.known:
            refused.append(batch)
            spent = TokenUsage(input_tokens=100, output_tokens=7)
            return ProbeFailedError("refused; probe failed", usage=spent, harmless_accepted=True)
        return again

    extractor.fault = fault
    with Audit(db_url=db_url) as audit:
        before = audit.stats()["output_tokens"]
    await memory.add_message("u", "user", "I work at Acme")
    with contextlib.suppress(ProcessingError):  # an extractor's bug repeats: quarantined
        await memory.process("u")
    assert refused
    with Audit(db_url=db_url) as audit:
        assert audit.stats()["output_tokens"] - before == 7 * len(refused)
