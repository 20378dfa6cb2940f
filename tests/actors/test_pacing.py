"""When extraction may run: the breaker every user shares, and each user's backoff."""

from __future__ import annotations

import pytest

from actors._pacing import CircuitBreaker, UserBackoff


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failures=3, cooldown=2.0, max_cooldown=8.0, clock=clock)


def test_the_breaker_opens_after_failures_in_a_row_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    assert breaker.admit() == 0 and not breaker.is_open
    breaker.failed()
    assert breaker.is_open and breaker.opened == 1
    assert breaker.admit() == 2.0


def test_after_the_cooldown_one_probe_goes_and_its_answer_closes_the_breaker() -> None:
    clock = Clock()
    closed: list[bool] = []
    breaker = _breaker(clock)
    breaker.on_close = lambda: closed.append(True)
    for _ in range(3):
        breaker.failed()
    clock.now += 2.0
    assert breaker.admit() == 0, "the probe"
    assert breaker.admit() > 0, "one probe at a time"
    breaker.succeeded()
    assert not breaker.is_open and closed == [True]
    assert breaker.admit() == 0


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failed()
    waits = []
    for _ in range(4):
        clock.now += 100
        assert breaker.admit() == 0
        breaker.failed()
        waits.append(breaker.admit())
    assert waits == [4.0, 8.0, 8.0, 8.0]


def test_a_failed_probe_never_pauses_for_less_than_the_first_cooldown() -> None:
    """The engine caps the breaker at min(60 s, retry_delay_max): a breaker_cooldown above
    that paused 120 s, then 60 s once the probe failed, halving while the API stayed down."""
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=120.0, max_cooldown=60.0, clock=clock)
    breaker.failed()
    waits = [breaker.admit()]
    for _ in range(2):
        clock.now += 1000
        assert breaker.admit() == 0
        breaker.failed()
        waits.append(breaker.admit())
    assert waits == [120.0, 120.0, 120.0]


def test_a_lone_message_is_blamed_only_on_evidence_that_the_api_works() -> None:
    breaker = _breaker(Clock())
    breaker.failed()
    assert not breaker.blame("m"), "the first failure is never blamed"
    breaker.succeeded()  # another call went through
    breaker.failed()
    assert breaker.blame("m")
    breaker.failed()
    assert breaker.blame("m"), "it is all that is sent and it keeps failing"
    breaker.failed()  # another message fails too: the API may be down
    breaker.failed()
    assert not breaker.blame("m")


def test_two_messages_that_keep_failing_among_answered_calls_are_both_blamed() -> None:
    """Two users' poison messages fail in turn while a third user's calls go through:
    each other's failures must not clear the evidence against them."""
    breaker = _breaker(Clock())
    for message in ("a", "b"):
        breaker.failed()
        assert not breaker.blame(message)
    breaker.succeeded()
    for _ in range(3):
        for message in ("a", "b"):
            breaker.failed()
            assert breaker.blame(message)
        breaker.succeeded()


def test_a_message_whose_batch_failed_is_blamed_when_it_fails_alone_after_an_answer() -> None:
    """A batch that failed counts against each of its messages, unblamed: once another
    call was answered, the message failing alone is blamed; with no answer between (the
    API down), it is not."""
    breaker = _breaker(Clock())
    breaker.failed()
    breaker.suspect(["m", "n"])
    breaker.failed()
    assert not breaker.blame("n"), "nothing was answered since its batch failed"
    breaker.succeeded()  # the other half of the batch went through
    breaker.failed()
    assert breaker.blame("m")


def _calls(breaker: CircuitBreaker, outcomes: str) -> None:
    """Other messages' calls: ``.`` one answered, ``x`` one failed."""
    for outcome in outcomes:
        if outcome == "x":
            breaker.failed()
        else:
            breaker.succeeded()


def test_behind_a_gateway_that_fails_calls_at_random_a_lone_message_needs_a_long_streak() -> None:
    """Three calls in ten fail whatever they carry: four failures in a row of one message
    are what that rate gives now and then (it was quarantined), six are not."""
    breaker = _breaker(Clock())
    _calls(breaker, "..x...x..x" * 10)
    blamed = []
    for _ in range(8):
        breaker.failed()
        blamed.append(breaker.blame("m"))
        _calls(breaker, "..x...x..x")
    assert blamed == [False] * 5 + [True] * 3


def test_with_the_api_answering_every_other_call_a_lone_message_is_blamed_at_once() -> None:
    breaker = _breaker(Clock())
    _calls(breaker, "." * 100)
    breaker.failed()
    assert not breaker.blame("m"), "the first failure is never blamed"
    _calls(breaker, ".")
    breaker.failed()
    assert breaker.blame("m")


def test_nothing_is_blamed_while_the_breaker_is_open() -> None:
    breaker = _breaker(Clock())
    breaker.failed()
    breaker.blame("m")
    breaker.succeeded()
    for _ in range(3):
        breaker.failed()
    assert breaker.is_open and not breaker.blame("m")


CREDIT = "HTTP 400 invalid_request_error: Your credit balance is too low"
BLOCKED = "HTTP 400 invalid_request_error: Output blocked by content filtering policy"


def test_batches_sharing_no_message_refused_alike_are_a_refusal_of_every_batch() -> None:
    breaker = _breaker(Clock())
    assert not breaker.refused(["a", "b", "c", "d"], CREDIT), "one refusal tells nothing"
    assert not breaker.refused(["a", "b"], CREDIT), "half of it: still maybe the batch"
    assert not breaker.refused(["a"], CREDIT)
    assert breaker.refused(["b"], CREDIT), "another message, the same refusal"
    assert breaker.refused(["e", "f"], CREDIT)
    assert not breaker.is_open
    assert breaker.refused(["g"], CREDIT)
    assert breaker.is_open, "a refusal of every batch is a failure that may pass"


def test_a_refusal_is_the_batchs_own_after_an_acceptance_or_for_another_reason() -> None:
    breaker = _breaker(Clock())
    breaker.refused(["a"], CREDIT)
    breaker.accepted()
    assert not breaker.refused(["b"], CREDIT), "a batch went through in between"
    assert not breaker.refused(["c"], "HTTP 400 invalid_request_error: prompt is too long")
    breaker.succeeded()  # an answer, not an acceptance: no evidence the API takes batches
    assert not breaker.refused(["d"], CREDIT), "not the reason of the refusal just before"
    assert breaker.refused(["e"], CREDIT)
    breaker.accepted()
    assert not breaker.refused(["f"], CREDIT)


def test_a_refusal_whose_probe_was_accepted_is_the_batchs_own_and_breaks_the_chain() -> None:
    """Messages the API refuses for one fixed text (a content filter), each in a batch of
    its own, while it accepts the same request without them: none is taken for a refusal
    of every batch, and none lets the refusal after it be taken for one."""
    breaker = _breaker(Clock())
    for message in ["a", "b", "c", "d", "e"]:
        assert not breaker.refused([message], BLOCKED, probe_accepted=True)
    assert not breaker.refused(["f"], BLOCKED), "an accepted probe came just before"
    assert breaker.refused(["g"], BLOCKED), "without probes, the same check as ever"
    assert not breaker.refused(["h"], BLOCKED, probe_accepted=True)
    assert not breaker.is_open


def test_a_users_backoff_doubles_up_to_the_cap_and_ends_with_a_success() -> None:
    clock = Clock()
    backoff = UserBackoff(base=1.0, cap=5.0, clock=clock)
    delays = [backoff.failed("ann") for _ in range(5)]
    for delay, nominal in zip(delays, [1, 2, 4, 5, 5], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    assert backoff.remaining("ann") == pytest.approx(delays[-1]) and backoff.remaining("bob") == 0
    clock.now += delays[-1]
    assert backoff.remaining("ann") == 0
    backoff.succeeded("ann")
    assert 0.8 <= backoff.failed("ann") <= 1.2


def test_the_wait_the_api_asked_for_holds_back_the_users_next_run_and_the_breaker() -> None:
    """A 429's retry-after: the user's automatic run waits at least that long, and an
    open breaker stays open at least that long, though the backoff alone is shorter."""
    clock = Clock()
    backoff = UserBackoff(base=1.0, cap=5.0, clock=clock)
    assert backoff.failed("ann", at_least=30.0) == 30.0
    assert backoff.remaining("ann") == 30.0
    assert 0.8 <= backoff.failed("bob", at_least=0.5) <= 1.2, "a shorter wait changes nothing"
    breaker = _breaker(clock)
    breaker.failed()
    breaker.failed()
    breaker.failed(at_least=30.0)
    assert breaker.admit() == 30.0
    clock.now += 30.0
    assert breaker.admit() == 0, "the probe"
    breaker.failed(at_least=20.0)
    assert breaker.admit() == 20.0, "reopened for the wait asked, longer than 4 s"
