"""What an extractor is shown beside a batch: the user's current entries it may repeat or
change (and, beside a backdated batch, the ended entries around it), and, for the log,
the chains of ended entries before those.

Live processing and re-extraction show entries the same way, so that a re-extracted
version is decided as the live knowledge was: the entries related to the batch's texts
(all of them for a user with few), within a share of the batch's token budget. For a
user with more, "related" is by words and, with an embedder, by meaning: "I'm a nurse"
shares no word with the "User is a doctor." it changes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine

from events import (
    BatchMessage,
    ExtractedFact,
    KnownEntry,
    ReplacedEntry,
    estimate_tokens,
    storable,
)
from events.errors import first_line
from events.user_log import LIVE_KNOWLEDGE
from projections.ranking import LexicalRanker
from projections.reader import ProjectionReader
from projections.vectors import ContainedEmbedder, VectorIndex

__all__ = [
    "KNOWN_SHARE",
    "MAX_ENDED_SHOWN",
    "MAX_KNOWN_ENTRIES",
    "MEANING_TEXTS",
    "ByMeaning",
    "Near",
    "expected_shown",
    "shown_beside",
    "shown_budget",
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

MEANING_TEXTS = 16
"""At most this many of a batch's messages that have no vector yet (its first distinct
ones) are embedded to find the entries near them by meaning, in one call of the
embedder; the others are matched by their words only. A message the background has
embedded already costs no embedding."""


def shown_budget(max_batch_tokens: int) -> int:
    """The tokens the entries shown beside a batch of ``max_batch_tokens`` take at most
    (its :data:`KNOWN_SHARE`), unless a single entry weighs more: what a batch may be
    planned to leave them before they are read."""
    return max_batch_tokens // KNOWN_SHARE


def expected_shown(max_batch_tokens: int, entries: int) -> int:
    """What the entries shown beside a batch of ``max_batch_tokens`` are expected to weigh
    when the user has ``entries`` current ones, before they are read (a batch's first plan
    after a start): their :func:`shown_budget`, or less when so few entries cannot fill it
    at :data:`ENTRY_TOKENS` each."""
    return min(shown_budget(max_batch_tokens), min(entries, MAX_KNOWN_ENTRIES) * ENTRY_TOKENS)


ENTRY_TOKENS = 64
"""What an entry shown beside a batch is expected to weigh (some 250 characters of
English): a fact is a sentence or two, most far shorter. Entries that run longer may cost
a user's first batch after a start one refusal as too large (HTTP 413), whose split
measures them."""

_NEAR_PER_TEXT = 4
"""The fewest entries taken by meaning for each embedded text of a batch."""

log = logging.getLogger("memvee.projections")


class Near:
    """The vectors of a batch's texts, ready to find the current entries nearest each."""

    def __init__(
        self, index: VectorIndex, user_id: str, vectors: list[list[float]], version: str
    ) -> None:
        self.index = index
        self.user_id = user_id
        self.vectors = vectors
        self.version = version
        self.forgotten = index.forgotten(user_id)  # before the search's connection reads

    def entries(
        self, connection: Connection, reader: ProjectionReader, limit: int
    ) -> list[tuple[str, str, datetime]]:
        """(id, text, valid from) of at most ``limit`` current entries, the texts taking
        turns: each one's nearest first, then each one's second, and so on."""
        each = max(_NEAR_PER_TEXT, limit // max(1, len(self.vectors)))
        found = self.index.entries_near_each(
            connection, self.user_id, self.vectors, min(each, limit), self.version, self.forgotten
        )
        order = list(dict.fromkeys(i for turn in itertools.zip_longest(*found) for i in turn))
        read = {e.entry_id: e for e in reader.entries(connection, self.user_id, order[:limit])}
        return [
            (entry.entry_id, entry.text, entry.valid_from)
            for item in order
            if (entry := read.get(item)) is not None and entry.is_current
        ]


class ByMeaning:
    """Embeds a batch's texts so that the entries shown beside it are chosen by meaning as
    well as by words, once the user has more current entries than fit beside a batch.

    Without an embedder (or ``index``) they are chosen by their words only: a warning
    says so, once, when it first matters. ``fills`` is for a caller with no background
    embedding its entries (re-extraction): it embeds those waiting for a vector first.

    Live processing calls the embedder off the user's actor: :meth:`to_embed` says which
    texts lack a vector, :meth:`embed` embeds them on another thread, and :meth:`near`
    takes them as ``embedded`` (a slow embedder must not hold the user's writes).
    """

    def __init__(
        self,
        engine: Engine,
        index: VectorIndex | None,
        embedder: ContainedEmbedder | None,
        *,
        fills: bool = False,
    ) -> None:
        self.engine = engine
        self.index = index
        self.embedder = embedder
        self.fills = fills
        self._warned = False

    def to_embed(self, user_id: str, messages: Sequence[BatchMessage], current: int) -> list[str]:
        """The texts of ``messages`` :meth:`near` wants embedded: at most
        :data:`MEANING_TEXTS` of those with no stored vector, and none when it chooses
        nothing by meaning (see :meth:`near`) or the vectors cannot be read (their words
        then choose). Calls no embedder."""
        if not self._by_meaning(user_id, messages, current):
            return []
        first = _first_texts(messages)
        try:
            stored = self._stored(user_id, first)
        except Exception as error:
            self._words_only(user_id, error)
            return []
        return [text for text, item in first.items() if item not in stored][:MEANING_TEXTS]

    def embed(self, user_id: str, texts: Sequence[str]) -> dict[str, list[float]] | None:
        """The vectors of ``texts`` by text; ``None`` with a warning when the embedder fails
        (whatever it raises): the entries are then chosen by their words."""
        if self.embedder is None or not texts:
            return {}
        try:
            return dict(zip(texts, self.embedder.embed(texts), strict=True))
        except Exception as error:
            self._words_only(user_id, error)
            return None

    def near(
        self,
        user_id: str,
        messages: Sequence[BatchMessage],
        current: int,
        version: str = LIVE_KNOWLEDGE,
        embedded: dict[str, list[float]] | None = None,
    ) -> Near | None:
        """What :func:`shown_beside` needs to choose by meaning beside ``messages``:
        nothing for a user with at most :data:`MAX_KNOWN_ENTRIES` current entries
        (``current``, as the log counts them: all are shown). Else the vectors of the
        messages' texts: those stored, and of the others those in ``embedded`` (given, no
        embedder is called here) or else at most :data:`MEANING_TEXTS` embedded now.
        ``None`` with a warning when embedding fails: the entries are then chosen by their
        words, and the batch is extracted all the same.

        Entries still waiting for their vector (the background embeds them soon after
        they are written) are found by their words only meanwhile, unless ``fills``.
        """
        if not self._by_meaning(user_id, messages, current):
            return None
        assert self.index is not None and self.embedder is not None
        first = _first_texts(messages)
        try:
            if self.fills:
                self.index.fill(self.engine, user_id, self.embedder.embed, messages=False)
            stored = self._stored(user_id, first)
        except Exception as error:
            self._words_only(user_id, error)
            return None
        if embedded is None:
            unstored = [text for text, item in first.items() if item not in stored]
            embedded = self.embed(user_id, unstored[:MEANING_TEXTS])
            if embedded is None:
                return None
        vectors = [
            vector
            for text, item in first.items()
            if (vector := stored.get(item, embedded.get(text))) is not None
        ]
        return Near(self.index, user_id, vectors, version)

    def _by_meaning(self, user_id: str, messages: Sequence[BatchMessage], current: int) -> bool:
        """Whether the entries shown beside ``messages`` are chosen by meaning too: past
        :data:`MAX_KNOWN_ENTRIES` current entries, with an embedder (else a warning, once)."""
        if current <= MAX_KNOWN_ENTRIES or not messages:
            return False
        if self.index is None or self.embedder is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "user %r has more than %d current entries and there is no embedder: "
                    "the entries shown beside a batch are chosen by their words only",
                    user_id,
                    MAX_KNOWN_ENTRIES,
                )
            return False
        return True

    def _stored(self, user_id: str, first: dict[str, str]) -> dict[str, list[float]]:
        """The stored vectors of the messages of ``first`` (text -> message id), by id."""
        assert self.index is not None
        with self.engine.connect() as connection:
            return self.index.message_vectors(connection, user_id, list(first.values()))

    @staticmethod
    def _words_only(user_id: str, error: BaseException) -> None:
        log.warning(
            "user %r: the entries shown beside a batch are chosen by their words only, "
            "the embedder failed (%s)",
            user_id,
            first_line(error),
        )


def _first_texts(messages: Sequence[BatchMessage]) -> dict[str, str]:
    """Each non-blank text of ``messages``, with the first message that says it."""
    first: dict[str, str] = {}
    for message in messages:
        if message.content.strip():
            first.setdefault(message.content, message.message_id)
    return first


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
    near: Near | None = None,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """The entries of ``version`` shown beside a batch of ``texts``, and the chains of
    ended entries before them.

    Those are the current entries, the most related first (``current`` is how many the
    log counts): past :data:`MAX_KNOWN_ENTRIES`, those matching the texts' words take
    turns with those ``near`` them by meaning (see :meth:`ByMeaning.near`). A batch older
    than some end the log recorded (``backdated``: when its first and last messages were
    sent) is first shown the ended entries around it (at most :data:`MAX_ENDED_SHOWN`,
    see :meth:`ProjectionReader.ended_around`): else it could start a value beside one
    that held then, or after one that was taken back.
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
    if near is not None and current > MAX_KNOWN_ENTRIES:
        by_meaning = near.entries(connection, reader, MAX_KNOWN_ENTRIES)
        related = list(
            {
                entry[0]: entry
                for turn in itertools.zip_longest(related, by_meaning)
                for entry in turn
                if entry is not None
            }.values()
        )
    budget = shown_budget(max_batch_tokens)
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
    *,
    since: datetime | None = None,
) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
    """``shown`` (what :func:`shown_beside` gave) with what the log needs to place the
    ``facts`` that change entries: the current entries they change without having been
    shown them (a custom extractor may name any), and the chain of ended entries before
    every entry they change (one read stops :data:`MAX_REPLACED_DEPTH` links back). A
    backdated fact is placed by when its target and those before it began: else it could
    end an entry before it began, or overlap the start of a long chain.

    ``since`` is when the batch's first message was sent: no fact of it begins earlier,
    so a chain is read back only to its first link that began before then (or before a
    target did), where the log's placing stops (see :meth:`Timeline.replace`); without
    it, every chain is read whole.
    """
    known, replaced = shown
    seen = {k.entry_id for k in known}
    targets = targets_of(facts)
    unshown = [t for t in targets if t not in seen]
    began = {k.entry_id: k.valid_from for k in known}
    if unshown:
        read = reader.entries(connection, user_id, unshown)
        began.update((e.entry_id, e.valid_from) for e in read)
        current = [e for e in read if e.is_current]
        if current:
            known = (*known, *(KnownEntry(e.entry_id, e.text, e.valid_from) for e in current))
            replaced = (
                *replaced,
                *reader.replaced(connection, user_id, [e.entry_id for e in current], version),
            )
    starts = [began[t] for t in targets if t in began]
    floor = None if since is None else min([since, *starts])
    return known, (
        *replaced,
        *_rest_of_chains(connection, reader, user_id, targets, replaced, version, floor),
    )


def _rest_of_chains(
    connection: Connection,
    reader: ProjectionReader,
    user_id: str,
    targets: Sequence[str],
    replaced: Sequence[ReplacedEntry],
    version: str,
    since: datetime | None,
) -> list[ReplacedEntry]:
    """The links of the chains before ``targets`` that ``replaced`` stops short of: a
    walk back that ends on a link as deep as one read goes reads on from it, unless that
    link began before ``since`` (nothing placed at ``since`` or later looks further)."""
    before: dict[str | None, list[ReplacedEntry]] = {}
    for link in replaced:
        before.setdefault(link.superseded_by, []).append(link)
    more: list[ReplacedEntry] = []
    walking: list[tuple[str, int, datetime | None]] = [(target, 0, None) for target in targets]
    seen: set[str] = set()
    while walking:
        entry, depth, began = walking.pop()
        if entry in seen:
            continue
        seen.add(entry)
        if since is not None and began is not None and began < since:
            continue
        links = before.get(entry)
        if links is None and depth >= reader.replaced_depth:
            read = reader.replaced(connection, user_id, [entry], version)
            for link in read:
                before.setdefault(link.superseded_by, []).append(link)
            more.extend(read)
            links, depth = before.get(entry), 0
        walking.extend((link.entry_id, depth + 1, link.valid_from) for link in links or ())
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
