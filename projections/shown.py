"""What an extractor is shown beside a batch: the user's current entries it may repeat or
change, and, for the log, the chains of ended entries before those.

Live processing and re-extraction show entries the same way, so that a re-extracted
version is decided as the live knowledge was: the entries related to the batch's texts
(all of them for a user with few), within a share of the batch's token budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from events import ExtractedFact, KnownEntry, ReplacedEntry, estimate_tokens
from events.user_log import LIVE_KNOWLEDGE
from projections.ranking import LexicalRanker
from projections.reader import ProjectionReader

__all__ = ["KNOWN_SHARE", "MAX_KNOWN_ENTRIES", "shown_beside", "with_named_targets"]

MAX_KNOWN_ENTRIES = 100
"""At most this many current entries go to an extractor beside each batch."""

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
    version: str = LIVE_KNOWLEDGE,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """The current entries of ``version`` shown beside a batch of ``texts`` (the most
    related first; ``current`` is how many the log counts), and the chains of ended
    entries before them."""
    if current <= 0:
        return (), ()
    related = ranker.related(connection, user_id, list(texts), MAX_KNOWN_ENTRIES, current, version)
    budget = max_batch_tokens // KNOWN_SHARE
    shown: list[KnownEntry] = []  # a list: see projections.rows
    for entry in related:
        known = KnownEntry(*entry)
        budget -= estimate_tokens(known.text)
        if shown and budget < 0:
            break
        shown.append(known)
    replaced = reader.replaced(connection, user_id, [k.entry_id for k in shown], version)
    return tuple(shown), tuple(replaced)


def with_named_targets(
    connection: Connection,
    reader: ProjectionReader,
    user_id: str,
    facts: Sequence[ExtractedFact],
    shown: tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]],
    version: str = LIVE_KNOWLEDGE,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """``shown`` (what :func:`shown_beside` gave) with the current entries that ``facts``
    change without having been shown them (a custom extractor may name any), and the
    chains before those: the log places a backdated fact by when its target began, and
    would otherwise end that entry before it began."""
    known, replaced = shown
    seen = {k.entry_id for k in known}
    named = list(
        dict.fromkeys(
            target
            for fact in facts
            if (target := fact.target_entry_id) is not None
            and target not in seen
            and _storable(target)
        )
    )
    if not named:
        return shown
    current = [e for e in reader.entries(connection, user_id, named) if e.is_current]
    if not current:
        return shown
    ids = [e.entry_id for e in current]
    return (
        (*known, *(KnownEntry(e.entry_id, e.text, e.valid_from) for e in current)),
        (*replaced, *reader.replaced(connection, user_id, ids, version)),
    )


def _storable(text: str) -> bool:
    """Whether ``text`` can be sent to a database (an answer's target may not be; no entry
    has such an id, and the log repairs the target)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
