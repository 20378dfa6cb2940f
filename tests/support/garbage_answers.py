"""Answers no extractor should give, drawn at random: facts naming unknown entries, facts
of their own answer (themselves, later ones, each other in cycles) with their own texts,
duplicates, empty texts, citations outside the batch, and messages sent at equal or
reversed times. Used by the tests that check a user's log survives any answer."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from events import FACT_ACTIONS, BatchMessage, ExtractedFact, KnownEntry, UserLog

__all__ = ["GARBAGE_TEXTS", "entries_of", "garbage_answer", "garbage_times", "relisted"]

GARBAGE_TEXTS = (
    "User lives in Oslo.",
    "User lives in Bergen.",
    "user lives in  OSLO.",
    "User has a cat.",
    "",
    "   ",
    "\u200b",
    "Oslo " * 250,
)
"""Texts an answer's facts draw from: repeats in other cases and spacing, nothing that
shows, and one longer than a fact may be."""

_START = datetime(2026, 3, 1, tzinfo=UTC)


def garbage_times(rng: random.Random, messages: Sequence[str]) -> list[BatchMessage]:
    """The batch of ``messages``, sent on days drawn from a few: some at once, some in
    reverse."""
    return [
        BatchMessage(m, "user", "", _START + timedelta(days=rng.choice((0, 1, 1, 2, 5, 9))))
        for m in messages
    ]


def garbage_answer(
    rng: random.Random, messages: Sequence[str], known: Sequence[KnownEntry]
) -> list[ExtractedFact]:
    """An answer of up to eight facts for a batch of ``messages`` shown ``known``: any
    action, any target (known or not), any fact of the answer named (itself, a later one,
    one out of range), citations of the batch, of nothing or of no message of it, and an
    update or invalidation often stating the very text of the fact it names."""
    count = rng.randint(0, 8)
    cited = [*messages, "ghost"]
    targets = [None, "no such entry", *(k.entry_id for k in known)]
    facts = []
    for index in range(count):
        named = rng.choice((None, None, index, index - 1, count, -1, rng.randrange(count)))
        facts.append(
            ExtractedFact(
                rng.choice(GARBAGE_TEXTS),
                tuple(rng.choice(cited) for _ in range(rng.randint(0, 3))),
                rng.choice(FACT_ACTIONS),
                rng.choice(targets) if rng.random() < 0.5 else None,
                named,
            )
        )
    for index, fact in enumerate(facts):
        named = fact.target_fact
        if named is not None and 0 <= named < count and rng.random() < 0.5:
            text = facts[named].text
            facts[index] = ExtractedFact(
                text, fact.source_message_ids, fact.action, fact.target_entry_id, named
            )
    return facts


def relisted(
    rng: random.Random, facts: Sequence[ExtractedFact], batch: Sequence[BatchMessage]
) -> list[ExtractedFact]:
    """``facts`` listed in another random order that says the same: a fact still after
    the earlier fact of the answer it names (and before a later one it names), facts
    said by the same newest message of ``batch`` in their order, and each
    ``target_fact`` renumbered to name the same fact."""
    said = {m.message_id: (m.sent_at, place) for place, m in enumerate(batch)}
    last = max(said.values())
    own = [max((said[m] for m in f.source_message_ids if m in said), default=last) for f in facts]
    count = len(facts)
    after: dict[int, set[int]] = {index: set() for index in range(count)}
    for index, fact in enumerate(facts):
        named = fact.target_fact
        if named is not None and 0 <= named < count and named != index:
            after[max(index, named)].add(min(index, named))
        after[index].update(e for e in range(index) if own[e] == own[index])
    order: list[int] = []
    while len(order) < count:
        placed = set(order)
        order.append(
            rng.choice([i for i in range(count) if i not in placed and after[i] <= placed])
        )
    place = {old: new for new, old in enumerate(order)}
    return [
        facts[old]
        if (named := facts[old].target_fact) is None
        else replace(facts[old], target_fact=place.get(named, named))
        for old in order
    ]


def entries_of(history: Iterable[Any]) -> dict[str, KnownEntry]:
    """Every entry that ``history`` (a log's events) recorded, of any knowledge version,
    as a batch would be shown it: its text, start and end (if it ended)."""
    entries: dict[str, KnownEntry] = {}
    for event in history:
        if isinstance(event, UserLog.KnowledgeExtracted | UserLog.KnowledgeReextracted):
            for e in event.entries:
                start = datetime.fromisoformat(e["valid_from"])
                entries[e["entry_id"]] = KnownEntry(e["entry_id"], e["text"], start)
        elif isinstance(event, UserLog.KnowledgeBeganEarlier) and event.entry_id in entries:
            known = entries[event.entry_id]
            entries[known.entry_id] = KnownEntry(
                known.entry_id, known.text, event.valid_from, known.valid_until
            )
        elif hasattr(event, "valid_until") and getattr(event, "entry_id", None) in entries:
            known = entries[event.entry_id]
            entries[known.entry_id] = KnownEntry(
                known.entry_id, known.text, known.valid_from, event.valid_until
            )
    return entries
