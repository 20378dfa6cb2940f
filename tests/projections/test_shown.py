"""What a batch's facts are placed against: the chains of earlier values are read back
only as far as the batch's times can reach, however long a fact's history is."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import projections.reader
from events import ExtractedFact, ExtractionBatch, ExtractionResult
from memvee import Memory
from projections import ProjectionReader

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TOWNS = ["Oslo", "Bergen", "Tromso", "Bodo", "Alta", "Molde", "Hamar"]
"""Homes from day 10, one a day: a chain of six ended values before the current one,
two walks of three links (the depth of one read here)."""


async def _homes(make_memory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Memory:
    """A memory of ann's homes (:data:`TOWNS`), read back three links a walk."""
    monkeypatch.setattr(projections.reader, "MAX_REPLACED_DEPTH", 3)
    memory: Memory = await make_memory(extractor=_MovesTheCurrentHome(), embedder=False)
    for day, town in enumerate(TOWNS):
        await _say(memory, 10 + day, f"I moved to {town}." if day else f"I live in {town}.")
    return memory


class _MovesTheCurrentHome:
    """Reads "I live in X." as a new home, and "I moved to X." as a change of the current
    one, however old the message: a custom extractor may name any entry, and the log
    places the fact by its time."""

    name = "moves"

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        home = [k.entry_id for k in batch.known if k.valid_until is None]
        facts = tuple(
            ExtractedFact(
                f"User lives in {m.content.split(' to ' if home else ' in ')[-1]}",
                (m.message_id,),
                "update" if home else "new",
                target_entry_id=home[0] if home else None,
            )
            for m in batch.messages
            if m.role == "user"
        )
        return ExtractionResult(facts=facts, extractor=self.name)

    async def aclose(self) -> None:
        pass


async def _say(memory: Memory, at: float, line: str) -> None:
    await memory.add_exchange("ann", line, "Got it.", sent_at=T0 + timedelta(days=at))
    await memory.flush("ann")


def _walks(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The entries each walk back along a chain starts from, as they are read."""
    walks: list[list[str]] = []
    replaced = ProjectionReader.replaced

    def counted(self: ProjectionReader, connection: Any, user_id: str, ids: Any, *a: Any) -> Any:
        walks.append(list(ids))
        return replaced(self, connection, user_id, ids, *a)

    monkeypatch.setattr(ProjectionReader, "replaced", counted)
    return walks


def _days(memory: Memory, entries: Any) -> list[tuple[str, float, float | None]]:
    """Each home's town and the days (from T0) it held, oldest first."""

    def day(at: datetime | None) -> float | None:
        return None if at is None else (at - T0) / timedelta(days=1)

    return [
        (e.text.removeprefix("User lives in ").rstrip("."), day(e.valid_from), day(e.valid_until))
        for e in sorted(entries, key=lambda e: e.valid_from)
    ]


async def test_a_change_said_now_reads_only_the_newest_links_of_a_long_chain(
    make_memory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move said after every home began is placed after the current one: the walk back
    stops at the first link that began before the batch, and reads no further."""
    memory = await _homes(make_memory, monkeypatch)
    walks = _walks(monkeypatch)
    await _say(memory, 20, "I moved to Lyon.")
    assert len(walks) == 1, walks  # the chain shown beside the batch, no walk on
    homes = _days(memory, await memory.knowledge("ann", history=True))
    assert homes[-2:] == [("Hamar", 16, 20), ("Lyon", 20, None)]


async def test_a_backdated_change_deep_in_a_long_chain_is_placed_between_its_neighbours(
    make_memory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move said on day 12.5 as a change of the current home (Hamar), four values back,
    past one read: the walk back from Hamar stops at the home that held then (Tromso),
    and the move fits between it and Bodo."""
    memory = await _homes(make_memory, monkeypatch)
    walks = _walks(monkeypatch)
    await _say(memory, 12.5, "I moved to Lyon.")
    assert len(walks) == 1, walks  # the chains shown reach Tromso: no walk past it
    homes = _days(memory, await memory.knowledge("ann", history=True))
    assert [town for town, _, _ in homes] == [*TOWNS[:3], "Lyon", *TOWNS[3:]]
    for (_, _, until), (_, began, _) in itertools.pairwise(homes):
        assert until == began
    assert homes[-1][2] is None
