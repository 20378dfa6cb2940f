"""Stand-in extractors for tests: deterministic, observable, and steerable from a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from events import ExtractedFact, ExtractionBatch, ExtractionError, ExtractionResult


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
