"""When extraction may run: a circuit breaker shared by every user, and each user's backoff.

An API that is down must not be hammered by every user at once, and a user whose last
run failed should not retry at once either. Both are in-memory policies of one process:
they decide when a task *starts*, never what it covers, so losing them (a restart) costs
at most an early retry.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection

__all__ = ["CircuitBreaker", "UserBackoff"]

Clock = Callable[[], float]

_BLAME_MEMORY = 10_000
"""How many messages' last failures the breaker remembers (least recent forgotten)."""

_OUTCOME_WINDOW = 200
"""How many of the latest calls' outcomes tell how often the API fails by itself."""

_MIN_EVIDENCE = 20
"""The fewest calls of other messages in that window that give a failure rate to go by;
with fewer, a lone message's failures are weighed without one."""

BLAME_CHANCE = 1e-3
"""A lone message is blamed only when failures at the API's own recent rate would fail
it as often as it failed in a row with at most this chance: behind a gateway that drops
three calls in ten, a message must fail six times in a row, not twice."""


class CircuitBreaker:
    """Pauses every user's extraction while the API keeps failing, then probes it.

    ``failures`` failures in a row that may pass (429, 5xx, timeouts, resets) open it for
    ``cooldown`` seconds: calls wait instead of reaching the API. Then one call at a time
    may probe the API; its success closes the breaker, its failure opens it again for
    twice as long, up to ``max_cooldown`` (or ``cooldown``, if longer: a pause never
    shortens while the API stays down). Any answer, even one that fails the batch for
    good, shows that the API is up, except a refusal of every request (:meth:`refused`).
    """

    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown: float = 2.0,
        max_cooldown: float = 60.0,
        probe_timeout: float = 120.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.base_cooldown = cooldown
        self.max_cooldown = max(max_cooldown, cooldown)
        self.probe_timeout = probe_timeout
        self.on_close: Callable[[], None] = lambda: None
        """Called (on the thread that saw the success) when the breaker closes again."""
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._cooldown = cooldown
        self._open_until: float | None = None
        self._probe_until = 0.0
        self._successes = 0
        self._failed_total = 0
        self._last_failure: OrderedDict[str, tuple[int, int, bool, int]] = OrderedDict()
        self._outcomes: deque[bool] = deque(maxlen=_OUTCOME_WINDOW)  # True: a failure
        self._accepted = 0
        self._last_refusal: tuple[frozenset[str], str, int] | None = None
        self.opened = 0
        """How many times the breaker opened (for logs and tests)."""

    @property
    def is_open(self) -> bool:
        """Whether calls wait (the breaker is open, or probing)."""
        with self._lock:
            return self._open_until is not None

    def paused_for(self) -> float:
        """Seconds until the breaker's current pause ends and a probe may go (0: none, or
        it is already probing)."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(0.0, self._open_until - self._clock())

    def admit(self) -> float:
        """0 if a call may go to the API now, else the seconds to wait before asking again.

        While open, the first caller after the cooldown becomes the probe; the others ask
        again after a while, and go once the probe succeeded.
        """
        with self._lock:
            if self._open_until is None:
                return 0.0
            now = self._clock()
            if now >= self._open_until and now >= self._probe_until:
                self._probe_until = now + self.probe_timeout
                return 0.0
            if now < self._open_until:
                return self._open_until - now
            return min(self._cooldown, self._probe_until - now)

    def succeeded(self) -> None:
        """The API answered: close the breaker."""
        with self._lock:
            self._successes += 1
            self._outcomes.append(False)
            self._failures = 0
            was_open = self._open_until is not None
            self._open_until = None
            self._probe_until = 0.0
            self._cooldown = self.base_cooldown
        if was_open:
            self.on_close()

    def accepted(self) -> None:
        """The API accepted a batch (and answered it): close the breaker."""
        with self._lock:
            self._accepted += 1
        self.succeeded()

    def refused(
        self, message_ids: Collection[str], reason: str, *, probe_accepted: bool = False
    ) -> bool:
        """The API refused a batch of ``message_ids`` for ``reason``; whether it refuses
        every request so (the account's credit, a usage limit, the configuration) rather
        than this batch: the batch refused before it shared none of its messages, was
        refused for the same reason, and no batch was accepted since.

        Such a refusal is a failure that may pass (:meth:`failed`); any other is an answer
        that shows the API up (:meth:`succeeded`). ``probe_accepted``: the API then
        accepted the same request without the batch's messages, which settles it: the
        batch is refused, and that probe is an accepted call, so no refusal before it is
        taken with one after it for a refusal of every batch.
        """
        if probe_accepted:
            self.accepted()  # an answer too
            return False
        batch = frozenset(message_ids)
        with self._lock:
            last = self._last_refusal
            everything = (
                last is not None
                and last[1] == reason
                and last[2] == self._accepted
                and last[0].isdisjoint(batch)
            )
            self._last_refusal = (batch, reason, self._accepted)
        if everything:
            self.failed()
        else:
            self.succeeded()
        return everything

    def failed(self, at_least: float = 0.0) -> None:
        """A call failed in a way that may pass; open (or reopen) the breaker if it keeps
        on, for at least ``at_least`` seconds (what the API asked to wait, if it did)."""
        with self._lock:
            self._failures += 1
            self._failed_total += 1
            self._outcomes.append(True)
            now = self._clock()
            if self._open_until is not None:
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
                self._open_until = now + max(self._cooldown, at_least)
                self._probe_until = 0.0
            elif self._failures >= self.threshold:
                self._open_until = now + max(self._cooldown, at_least)
                self.opened += 1

    def blame(self, message_id: str) -> bool:
        """Whether a lone message's failure (one that may pass, already counted by
        :meth:`failed`) is its own fault rather than the API's.

        It is while the breaker is closed and either the API answered other calls since
        the message last failed, or that failure was blamed too and nothing else failed
        since (the message is all that is being sent, and it keeps failing). The first
        failure of a message is never blamed. (Others failing meanwhile do not clear it:
        two such messages would clear each other for ever.) And when the API fails other
        calls now and then, the message's failures in a row must be too many for that
        rate to explain (:data:`BLAME_CHANCE`): a flaky gateway gets no healthy message
        quarantined, while one that fails every time still is, a few tries later.
        """
        with self._lock:
            previous = self._last_failure.pop(message_id, None)
            streak = 1 if previous is None else previous[3] + 1
            blamed = (
                previous is not None
                and self._open_until is None
                and (
                    self._successes > previous[0]
                    or (previous[2] and self._failed_total == previous[1] + 1)
                )
                and self._unexplained(streak)
            )
            self._note_failure(message_id, blamed, streak)
            return blamed

    def suspect(self, message_ids: Collection[str]) -> None:
        """A batch of ``message_ids`` failed in a way that may pass (already counted by
        :meth:`failed`): each message's failures in a row count it, unblamed, so that one
        whose batches kept failing while other calls were answered is blamed by
        :meth:`blame` when it fails alone after such an answer, as if it had failed alone.
        (Re-extraction splits such batches at once: a sibling half answered between is
        the evidence that the message, not the API, fails.)"""
        with self._lock:
            for message_id in message_ids:
                previous = self._last_failure.pop(message_id, None)
                self._note_failure(message_id, False, 1 if previous is None else previous[3] + 1)

    def _note_failure(self, message_id: str, blamed: bool, streak: int) -> None:
        """Remember a message's latest failure (the calls answered and failed by then,
        whether it was blamed, its failures in a row), the oldest forgotten past
        :data:`_BLAME_MEMORY` messages. Called with the lock held."""
        self._last_failure[message_id] = (self._successes, self._failed_total, blamed, streak)
        while len(self._last_failure) > _BLAME_MEMORY:
            self._last_failure.popitem(last=False)

    def _unexplained(self, streak: int) -> bool:
        """Whether ``streak`` failures in a row are unlikely at the failure rate of the
        other calls among the latest (the streak's own are among them, at most all)."""
        failures = sum(self._outcomes)
        own = min(streak, failures)
        others = len(self._outcomes) - own
        if others < _MIN_EVIDENCE:
            return True
        rate: float = (failures - own) / others
        return bool(rate**streak <= BLAME_CHANCE)


class UserBackoff:
    """Each user's pause after runs that failed in a way that may pass.

    The n-th failure in a row waits ``base * 2**(n-1)`` seconds, at most ``cap``, with
    ±20% jitter so that users who failed together do not retry together.
    """

    def __init__(self, *, base: float = 1.0, cap: float = 300.0, clock: Clock = time.monotonic):
        self.base = base
        self.cap = cap
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}
        self._random = random.Random()

    def failed(self, user_id: str, at_least: float = 0.0) -> float:
        """Count a failure of ``user_id``'s run; returns the seconds until the next may
        start: the backoff, or ``at_least`` (what the API asked to wait) if longer."""
        with self._lock:
            count = self._failures.get(user_id, (0, 0.0))[0] + 1
            delay = min(self.cap, self.base * 2.0 ** min(count - 1, 30))
            delay = max(delay * self._random.uniform(0.8, 1.2), at_least)
            self._failures[user_id] = (count, self._clock() + delay)
            return delay

    def succeeded(self, user_id: str) -> None:
        """``user_id``'s extraction worked: no more waiting."""
        with self._lock:
            self._failures.pop(user_id, None)

    def remaining(self, user_id: str) -> float:
        """Seconds until ``user_id`` may start an automatic run (0: now)."""
        with self._lock:
            found = self._failures.get(user_id)
        return 0.0 if found is None else max(0.0, found[1] - self._clock())
