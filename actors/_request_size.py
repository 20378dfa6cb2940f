"""The request size an API's body limit or model's context window was learned to take: a
batch refused as too large (HTTP 413, or a 400 saying the prompt is too long) is split
until it fits, and the batches after it start within that size instead of paying the same
refusals again, each of them.

Kept in memory for one engine, never stored: a limit raised since (a gateway's setting,
another deployment) is found again once :data:`RETEST_SECONDS` pass without a refusal.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from events import BatchLimits

RETEST_SECONDS = 600.0
"""How long a learned size holds after the last refusal that lowered it; then batches go
out at the configured size again, one refusal and its split learning it anew."""


class LearnedRequestSize:
    """The most prompt tokens a batch's request may weigh, its messages and the known
    entries shown beside them, as refusals for size taught (thread-safe). Each user's
    batches take their messages within it less the entries that user's last batch was
    shown: one user's many entries do not shrink another's batches. (The fixed prompt, the same in
    every request, is left out of both sides.)"""

    def __init__(
        self, retest_after: float = RETEST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._retest_after = retest_after
        self._clock = clock
        self._lock = threading.Lock()
        self._most: int | None = None
        self._until = 0.0

    def too_large(
        self,
        messages: int,
        shown: int = 0,
        *,
        prompt_tokens: int | None = None,
        context_tokens: int | None = None,
        estimated_tokens: int | None = None,
        fixed_tokens: int | None = None,
    ) -> None:
        """A request was refused as too large, its messages weighing ``messages`` tokens
        and the entries shown beside them ``shown``: requests from now on weigh at most
        what its split sends (the entries and half the messages), or less if a smaller one
        was refused. Messages weighing nothing teach nothing: their size was not measured,
        and learning from it would cut every batch to one message.

        A refusal that named the prompt's tokens and the most the model's context window
        takes (``prompt_tokens`` > ``context_tokens``) tells better than a split, with
        memvee's estimates of the whole request (``estimated_tokens``) and of its fixed
        part (``fixed_tokens``): the share of the messages and entries the window leaves
        room for, the API's tokens being weighed in memvee's (they may differ twofold), a
        tenth to spare. Without those estimates, the request less what it was over, never
        less than the split: an excess in the API's tokens, taken off memvee's, would cut
        every batch to one message. A size still refused is learned again, smaller."""
        if messages <= 0:
            return
        split = max(1, shown + messages // 2)
        sent = messages + shown
        fits = _fits(sent, prompt_tokens, context_tokens, estimated_tokens, fixed_tokens)
        if fits is None or (estimated_tokens is None and fits < split):
            fits = split
        with self._lock:
            now = self._clock()
            most = self._most if self._most is not None and now < self._until else None
            self._most = fits if most is None else min(most, fits)
            self._until = now + self._retest_after

    def within(self, limits: BatchLimits, shown: int = 0) -> BatchLimits:
        """``limits`` with ``max_tokens`` lowered, while a learned size holds, to what that
        size leaves the messages of a batch shown entries weighing ``shown`` tokens (at
        least 1: a batch always takes one message)."""
        with self._lock:
            most = self._most if self._clock() < self._until else None
        if most is None:
            return limits
        left = max(1, most - shown)
        if left >= limits.max_tokens:
            return limits
        return dataclasses.replace(limits, max_tokens=left)


def _fits(
    sent: int,
    prompt_tokens: int | None,
    context_tokens: int | None,
    estimated_tokens: int | None = None,
    fixed_tokens: int | None = None,
) -> int | None:
    """The most a request whose messages and entries weighed ``sent`` may weigh, by a
    refusal that named its ``prompt_tokens`` over the ``context_tokens`` the window takes,
    a tenth to spare, or None when the figures are missing or tell nothing (not over).

    With memvee's ``estimated_tokens`` of the request, the window is turned into memvee's
    count (scaled as the request's estimate is to the API's count of it), the request's
    ``fixed_tokens`` taken out, and ``sent`` cut to the share of its estimate that room
    holds; without, the API's excess is taken off ``sent`` as it is."""
    if prompt_tokens is None or context_tokens is None or prompt_tokens <= context_tokens:
        return None
    fixed = fixed_tokens or 0
    if estimated_tokens is not None and estimated_tokens > fixed:
        window = context_tokens * estimated_tokens // prompt_tokens
        within = sent * max(0, window - fixed) // (estimated_tokens - fixed)
    else:
        within = sent - (prompt_tokens - context_tokens)
    return max(1, within - within // 10)
