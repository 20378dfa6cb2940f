"""The request size an API's body limit was learned to take: a batch refused as too large
(HTTP 413) is split until it fits, and the batches after it start within that size
instead of paying the same refusals again, each of them.

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
    """The most prompt tokens of messages a batch may weigh, as 413s taught (thread-safe)."""

    def __init__(
        self, retest_after: float = RETEST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._retest_after = retest_after
        self._clock = clock
        self._lock = threading.Lock()
        self._most: int | None = None
        self._until = 0.0

    def too_large(self, tokens: int) -> None:
        """A batch weighing ``tokens`` was refused as too large: batches from now on weigh
        at most half of it (the split's size), or less if a smaller one was refused."""
        with self._lock:
            now = self._clock()
            most = self._most if self._most is not None and now < self._until else None
            half = max(1, tokens // 2)
            self._most = half if most is None else min(most, half)
            self._until = now + self._retest_after

    def within(self, limits: BatchLimits) -> BatchLimits:
        """``limits`` with ``max_tokens`` lowered to the size learned, while it holds."""
        with self._lock:
            most = self._most if self._clock() < self._until else None
        if most is None or most >= limits.max_tokens:
            return limits
        return dataclasses.replace(limits, max_tokens=most)
