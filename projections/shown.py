"""What an extractor is shown beside a batch: the user's current entries it may repeat or
change (and, beside a backdated batch, the ended entries around it), and, for the log,
the chains of ended entries before those.

Live processing and re-extraction show entries the same way, so that a re-extracted
version is decided as the live knowledge was: the entries related to the batch's texts
(all of them for a user with few), within a share of the batch's token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from events import ExtractedFact, KnownEntry, ReplacedEntry, estimate_tokens, storable
from events.user_log import LIVE_KNOWLEDGE
from projections.ranking import LexicalRanker
from projections.reader import ProjectionReader

__all__ = [
    "KNOWN_SHARE",
    "MAX_ENDED_SHOWN",
    "MAX_KNOWN_ENTRIES",
    "shown_beside",
    "targets_of",
    "with_targets",
]

MAX_KNOWN_ENTRIES = 100
"""At most this many entries (current and ended) go to an extractor beside each batch."""

MAX_ENDED_SHOWN = 20
"""At most this many ended entries go to an extractor beside a backdated batch, those
that ended first first."""

KNOWN_SHARE = 4
"""The entries shown beside a batch take at most this fraction (one in ``KNOWN_SHARE``)
of the batch's token budget on top of it, the most related first, at least one."""


def shown_beside(
    connection: Connection,
    ranker: LexicalRanker,
    reader: ProjectionReader,
    user_id: str,
    texts: Sequence[str],
    *,
    current: int,
    max_batch_tokens: int,
    backdated: tuple[datetime, datetime] | None = None,
    version: str = LIVE_KNOWLEDGE,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """The entries of ``version`` shown beside a batch of ``texts``, and the chains of
    ended entries before them.

    Those are the current entries, the most related first (``current`` is how many the
    log counts). A batch older than some end the log recorded (``backdated``: when its
    first and last messages were sent) is first shown the ended entries around it (at
    most :data:`MAX_ENDED_SHOWN`, see :meth:`ProjectionReader.ended_around`): else it
    could start a value beside one that held then, or after one that was taken back.
    """
    ended = (
        reader.ended_around(connection, user_id, backdated, MAX_ENDED_SHOWN, version)
        if backdated is not None
        else []
    )
    related = (
        ranker.related(connection, user_id, list(texts), MAX_KNOWN_ENTRIES, current, version)
        if current > 0
        else []
    )
    budget = max_batch_tokens // KNOWN_SHARE
    shown: list[KnownEntry] = []  # a list: see projections.rows
    for known in [*(k for k, _ in ended), *(KnownEntry(*entry) for entry in related)]:
        budget -= estimate_tokens(known.text)
        if shown and (budget < 0 or len(shown) >= MAX_KNOWN_ENTRIES):
            break
        shown.append(known)
    if not shown:
        return (), ()
    chains = reader.replaced(connection, user_id, [k.entry_id for k in shown], version)
    placed = {k.entry_id for k in shown}
    ends = [link for known, link in ended if known.entry_id in placed]
    return tuple(shown), (*ends, *chains)


def with_targets(
    connection: Connection,
    reader: ProjectionReader,
    user_id: str,
    facts: Sequence[ExtractedFact],
    shown: tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
    version: str = LIVE_KNOWLEDGE,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """``shown`` (what :func:`shown_beside` gave) with what the log needs to place the
    ``facts`` that change entries: the current entries they change without having been
    shown them (a custom extractor may name any), and the whole chain of ended entries
    before every entry they change (one read stops :data:`MAX_REPLACED_DEPTH` links
    back). A backdated fact is placed by when its target and those before it began: else
    it could end an entry before it began, or overlap the start of a long chain."""
    known, replaced = shown
    seen = {k.entry_id for k in known}
    targets = targets_of(facts)
    unshown = [t for t in targets if t not in seen]
    if unshown:
        current = [e for e in reader.entries(connection, user_id, unshown) if e.is_current]
        if current:
            known = (*known, *(KnownEntry(e.entry_id, e.text, e.valid_from) for e in current))
            replaced = (
                *replaced,
                *reader.replaced(connection, user_id, [e.entry_id for e in current], version),
            )
    return known, (
        *replaced,
        *_rest_of_chains(connection, reader, user_id, targets, replaced, version),
    )


def _rest_of_chains(
    connection: Connection,
    reader: ProjectionReader,
    user_id: str,
    targets: Sequence[str],
    replaced: Sequence[ReplacedEntry],
    version: str,
) -> list[ReplacedEntry]:
    """The links of the chains before ``targets`` that ``replaced`` stops short of: a
    walk back that ends on a link as deep as one read goes reads on from it."""
    before: dict[str | None, list[ReplacedEntry]] = {}
    for link in replaced:
        before.setdefault(link.superseded_by, []).append(link)
    more: list[ReplacedEntry] = []
    walking = [(target, 0) for target in targets]
    seen: set[str] = set()
    while walking:
        entry, depth = walking.pop()
        if entry in seen:
            continue
        seen.add(entry)
        links = before.get(entry)
        if links is None and depth >= reader.replaced_depth:
            read = reader.replaced(connection, user_id, [entry], version)
            for link in read:
                before.setdefault(link.superseded_by, []).append(link)
            more.extend(read)
            links, depth = before.get(entry), 0
        walking.extend((link.entry_id, depth + 1) for link in links or ())
    return more


def targets_of(facts: Sequence[ExtractedFact]) -> list[str]:
    """The entries ``facts`` change, once each; a target no database can store as text is
    left out (no entry has such an id, and the log repairs the fact). A caller with none
    need not read anything for :func:`with_targets`."""
    return list(
        dict.fromkeys(
            target
            for fact in facts
            if (target := fact.target_entry_id) is not None and storable(target) == target
        )
    )
