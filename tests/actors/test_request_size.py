"""The request size learned from an API's body limit (HTTP 413) or context window (a 400
saying the prompt is too long)."""

from __future__ import annotations

import pytest

from actors._request_size import LearnedRequestSize
from events import BatchLimits


class _Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_refused_as_too_large_halves_the_tokens_of_the_batches_after_it() -> None:
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    assert learned.within(limits) is limits
    learned.too_large(12_000)
    assert learned.within(limits).max_tokens == 6_000
    learned.too_large(6_000)
    assert learned.within(limits).max_tokens == 3_000
    learned.too_large(10_000)
    assert learned.within(limits).max_tokens == 3_000, "a larger refusal does not raise it"
    assert learned.within(limits).max_messages == limits.max_messages


def test_a_learned_size_is_tried_again_at_the_configured_size_after_a_while() -> None:
    """A limit raised since (a gateway's setting) is used again: the learned size holds
    for ``retest_after`` seconds past the last refusal, then the configured one does."""
    clock = _Clock()
    learned, limits = LearnedRequestSize(retest_after=60, clock=clock), BatchLimits()
    learned.too_large(limits.max_tokens)
    clock.now += 59
    assert learned.within(limits).max_tokens == limits.max_tokens // 2
    clock.now += 2
    assert learned.within(limits) is limits
    learned.too_large(8_000)
    assert learned.within(limits).max_tokens == 4_000, "learned anew, not from the old size"


def test_a_learned_size_above_the_configured_one_leaves_the_limits_as_they_are() -> None:
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=1_000)
    learned.too_large(50_000)
    assert learned.within(limits) is limits


def test_messages_that_weigh_nothing_refused_as_too_large_teach_no_size() -> None:
    """Messages buffered before their weights were kept weigh 0: a 413 on them used to
    teach a size of 1 token, every user's batches single messages for 600 s."""
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(0)
    assert learned.within(limits) is limits
    learned.too_large(0, shown=4_000)
    assert learned.within(limits) is limits


def test_the_size_learned_holds_the_entries_shown_and_each_batch_takes_its_own_out() -> None:
    """A 413 on 2,000 tokens of messages beside 8,000 of entries teaches the split's
    size, 9,000 tokens of request: a batch shown no entries takes 9,000 of messages, one
    shown 9,500 of entries a single message; a user's many entries do not shrink another
    user's batches to their size."""
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(2_000, shown=8_000)
    assert learned.within(limits).max_tokens == 9_000
    assert learned.within(limits, shown=3_000).max_tokens == 6_000
    assert learned.within(limits, shown=9_500).max_tokens == 1


def test_a_prompt_over_the_context_by_a_named_count_teaches_the_size_less_the_excess() -> None:
    """The API's 400 names the prompt's tokens and the window's: the request less what it
    was over (a tenth to spare) is learned, not half of it, and a later refusal of a
    smaller request lowers it again."""
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(10_000, shown=2_000, prompt_tokens=13_000, context_tokens=12_000)
    assert learned.within(limits).max_tokens == 9_900
    assert learned.within(limits, shown=2_000).max_tokens == 7_900
    learned.too_large(7_000, prompt_tokens=9_000, context_tokens=8_000)
    assert learned.within(limits).max_tokens == 5_400


def test_a_refusal_for_size_naming_no_excess_halves_the_batch_as_a_413_does() -> None:
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(12_000, prompt_tokens=12_000, context_tokens=12_000)
    assert learned.within(limits).max_tokens == 6_000


@pytest.mark.parametrize(
    ("sent", "prompt_tokens", "estimated_tokens", "learned_max"),
    [(6_000, 24_000, 8_000, 600), (12_000, 9_000, 18_000, 9_450)],
    ids=["thrice", "half"],
)
def test_an_api_counting_otherwise_than_memvee_teaches_the_share_its_window_leaves(
    sent: int, prompt_tokens: int, estimated_tokens: int, learned_max: int
) -> None:
    """The API's excess is in its own tokens. Thrice: 24,000 counted for a request memvee
    put at 8,000 (2,000 of them the fixed prompt) over a window of 8,000 leaves, in
    memvee's count, 2,666 of window and 666 of it for the 6,000 of messages (less a
    tenth), not 6,000 less the API's 16,000 of excess (one message for every user). Half:
    9,000 counted for 18,000 leaves the larger share, 9,450 of the 12,000 sent."""
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(
        sent,
        prompt_tokens=prompt_tokens,
        context_tokens=8_000,
        estimated_tokens=estimated_tokens,
        fixed_tokens=2_000,
    )
    assert learned.within(limits).max_tokens == learned_max


def test_an_excess_named_with_no_estimate_of_the_request_never_teaches_less_than_a_split() -> None:
    """Without memvee's estimate of the request, an excess in the API's tokens cannot be
    weighed in memvee's: taken off as it is, an API counting twice memvee's estimate
    would cut every batch to one message for 600 s; the split's half is learned instead."""
    learned, limits = LearnedRequestSize(clock=_Clock()), BatchLimits(max_tokens=20_000)
    learned.too_large(6_000, prompt_tokens=24_000, context_tokens=8_000)
    assert learned.within(limits).max_tokens == 3_000
