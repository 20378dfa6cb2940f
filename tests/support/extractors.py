"""Stand-in extractors for tests: deterministic, observable, and steerable from a test."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any

from events import (
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    ExtractionResult,
    InvalidExtractionError,
    RejectedBatchError,
)


def unreadable_when(word: str) -> Callable[[ExtractionBatch], BaseException | None]:
    """A :attr:`RecordingExtractor.fault`: every batch holding a message with ``word`` gets
    an unreadable answer (a failure that repeats, so its message ends quarantined)."""

    def fault(batch: ExtractionBatch) -> BaseException | None:
        if any(word in m.content for m in batch.messages):
            return InvalidExtractionError("unreadable answer")
        return None

    return fault


async def quarantine_stamps(memory: Any, extractor: RecordingExtractor, user: str) -> None:
    """Write "I collect stamps" (whose answers are unreadable, so it ends quarantined) and
    "I live in Oslo" for ``user``, and process them."""
    extractor.fault = unreadable_when("stamps")
    await memory.add_exchange(user, "I collect stamps", "ok")
    await memory.add_exchange(user, "I live in Oslo", "ok")
    await memory.process(user)


class RecordingExtractor:
    """Returns one fact per user message and records every batch it was given.

    ``gate`` (when set) holds every extraction until the test opens it; ``fail_next``
    makes the next ``n`` extractions raise; ``delay`` sleeps before answering; ``fault``
    (a function of the batch) names the error to raise for a batch, or ``None``.
    """

    name = "recording"

    def __init__(self, *, delay: float = 0.0, gated: bool = False) -> None:
        self.batches: list[ExtractionBatch] = []
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.fail_next = 0
        self.answer: Callable[[ExtractionBatch], tuple[ExtractedFact, ...]] | None = None
        self.fault: Callable[[ExtractionBatch], BaseException | None] | None = None
        self._lock = threading.Lock()

    @property
    def sent_message_ids(self) -> list[str]:
        """Every message id handed to the extractor, in order, with repeats."""
        with self._lock:
            return [m.message_id for b in self.batches for m in b.messages]

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        with self._lock:
            self.batches.append(batch)
        self.started.set()
        if not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait, 30)
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise ExtractionError("stand-in extractor failed on purpose")
        fault = None if self.fault is None else self.fault(batch)
        if fault is not None:
            raise fault
        if self.answer is not None:
            facts = self.answer(batch)
        else:
            facts = tuple(
                ExtractedFact(f"User said: {m.content}", (m.message_id,))
                for m in batch.messages
                if m.role == "user"
            )
        return ExtractionResult(facts, self.name, model="stand-in")

    async def aclose(self) -> None:
        return None


class FlakyExtractor:
    """Fails as a real API does, from a seed: a batch holding ``poison`` is refused every
    time (it repeats, so it is split and quarantined); any other batch fails now and then
    for a passing reason (``transient``: an outage, retried later), or answers late; else
    one fact per message, citing it.
    """

    name = "flaky"
    OUTAGE = "the stand-in API is down for a moment"
    REFUSAL = "the stand-in API refuses this batch every time"

    def __init__(self, seed: int, *, poison: str = "poison", transient: float = 0.1) -> None:
        self.poison = poison
        self.transient = transient
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if any(self.poison in m.content for m in batch.messages):
            raise RejectedBatchError(self.REFUSAL)
        with self._lock:
            roll, late = self._random.random(), self._random.random() * 0.02
        if roll < self.transient:
            raise ExtractionError(self.OUTAGE)
        if roll < 2 * self.transient:
            await asyncio.sleep(late)
        facts = tuple(
            ExtractedFact(f"User said: {m.content}", (m.message_id,)) for m in batch.messages
        )
        return ExtractionResult(facts, self.name, model="stand-in")

    async def aclose(self) -> None:
        return None
