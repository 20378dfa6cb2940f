"""Retrieval: the few entries (and messages) that matter for the next prompt.

Lexical ranking runs inside the database; with an :class:`~memvee.embedders.Embedder`
configured, a semantic ranking over the user's vectors is fused with it by reciprocal
rank fusion. Extracted entries always come first; with ``include_messages`` the best
matching raw messages fill the rest of ``top_k``, each with its neighbouring turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine

from memvee.embedders import Embedder
from projections import KnowledgeEntry, LexicalRanker, Message, ProjectionReader, search_terms
from projections.tables import ProjectionTables
from projections.vectors import VectorIndex

__all__ = ["RRF_K", "RetrievalResult", "RetrievedEntry", "RetrievedMessage", "Retriever"]

RRF_K = 60
"""The constant of reciprocal rank fusion: an item's score is the sum of 1 / (RRF_K + rank)."""

_CANDIDATES = 4
"""Each ranking proposes ``top_k`` times this many candidates to the fusion."""

_SPARE_MESSAGES = 8
"""Messages ranked beyond what fills ``top_k``, so outdated ones can step aside."""


@dataclass(frozen=True, slots=True)
class RetrievedEntry:
    """A knowledge entry ranked for a query; ``entry`` carries its provenance."""

    entry: KnowledgeEntry
    score: float

    @property
    def text(self) -> str:
        """The entry's text."""
        return self.entry.text

    @property
    def source_message_ids(self) -> tuple[str, ...]:
        """The messages the entry came from."""
        return self.entry.source_message_ids


@dataclass(frozen=True, slots=True)
class RetrievedMessage:
    """A raw message ranked for a query, with the other half of its exchange.

    ``outdated`` is true when every fact extracted from it has since been replaced or
    invalidated: what it says was true once, not now.
    """

    message: Message
    score: float
    neighbour: Message | None
    outdated: bool = False


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """What :meth:`memvee.Memory.retrieve` found for one user and one query."""

    user_id: str
    query: str
    as_of: datetime | None
    entries: list[RetrievedEntry] = field(default_factory=list)
    messages: list[RetrievedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries) + len(self.messages)

    def to_prompt(self, *, max_chars: int = 4000) -> str:
        """A compact block to paste into a system prompt (empty when nothing was found).

        Lines past ``max_chars`` are left out, least relevant first.
        """
        lines: list[str] = []
        if self.entries:
            lines.append("Known facts about the user (most relevant first):")
            for hit in self.entries:
                since = hit.entry.valid_from.date().isoformat()
                lines.append(f"- {hit.entry.text} (since {since})")
        if self.messages:
            lines.append("Earlier messages that may be relevant:")
            for m in self.messages:
                note = " (outdated: replaced by a later fact)" if m.outdated else ""
                lines.append(f"- {_quote(m.message)}{note}")
                if m.neighbour is not None:
                    lines.append(f"  {_quote(m.neighbour)}")
        out: list[str] = []
        used = 0
        for line in lines:
            if used + len(line) + 1 > max_chars:
                break
            out.append(line)
            used += len(line) + 1
        return "\n".join(out)


def _quote(message: Message) -> str:
    day = message.sent_at.date().isoformat()
    text = " ".join(message.content.split())
    if len(text) > 300:
        text = text[:299] + "\u2026"
    return f"[{day}] {message.role}: {text}"


class Retriever:
    """Runs one retrieval on a reader thread: rank, fuse, fill with messages."""

    def __init__(self, engine: Engine, tables: ProjectionTables, embedder: Embedder | None) -> None:
        self.engine = engine
        self.embedder = embedder
        self._ranker = LexicalRanker(tables)
        self._reader = ProjectionReader(tables)
        self._vectors = None if embedder is None else VectorIndex(tables, embedder.name)

    def retrieve(
        self,
        user_id: str,
        query: str,
        top_k: int,
        as_of: datetime | None,
        include_messages: bool,
    ) -> RetrievalResult:
        """The user's best ``top_k`` entries (then messages) for ``query``."""
        terms = search_terms(query)
        # Fusion needs candidates beyond top_k from each ranking; one ranking does not.
        pool = top_k * _CANDIDATES if self.embedder is not None else top_k
        query_vector = self._embed_query(user_id, query, include_messages)
        with self.engine.connect() as connection:
            lexical = self._ranker.entries(connection, user_id, terms, pool, as_of)
            entry_of = {e.entry_id: e for e, _ in lexical}
            rankings = [[(e.entry_id, score) for e, score in lexical]]
            if query_vector is not None and self._vectors is not None:
                semantic = self._vectors.entries(connection, user_id, query_vector, pool, as_of)
                rankings.append(semantic)
                unseen = [i for i, _ in semantic if i not in entry_of]
                entry_of |= {
                    e.entry_id: e for e in self._reader.entries(connection, user_id, unseen)
                }
            entries = [RetrievedEntry(entry_of[i], score) for i, score in _fuse(rankings)[:top_k]]
            messages: list[RetrievedMessage] = []
            room = top_k - len(entries)
            if include_messages and room > 0:
                cited = {m for hit in entries for m in hit.entry.source_message_ids}
                messages = self._messages(
                    connection, user_id, terms, query_vector, room, cited, as_of
                )
        return RetrievalResult(user_id, query, as_of, entries, messages)

    def _embed_query(self, user_id: str, query: str, include_messages: bool) -> list[float] | None:
        if self.embedder is None or self._vectors is None:
            return None
        self._vectors.fill(self.engine, user_id, self.embedder.embed, messages=include_messages)
        return self.embedder.embed([query])[0]

    def _messages(
        self,
        connection: Connection,
        user_id: str,
        terms: list[str],
        query_vector: list[float] | None,
        room: int,
        cited: set[str],
        as_of: datetime | None,
    ) -> list[RetrievedMessage]:
        pool = room + len(cited) + _SPARE_MESSAGES
        if query_vector is not None:
            pool *= _CANDIDATES
        lexical = self._ranker.messages(connection, user_id, terms, pool)
        message_of = {m.message_id: m for m, _ in lexical}
        rankings = [[(m.message_id, score) for m, score in lexical]]
        if query_vector is not None and self._vectors is not None:
            semantic = self._vectors.messages(connection, user_id, query_vector, pool)
            rankings.append(semantic)
            unseen = [i for i, _ in semantic if i not in message_of]
            found = self._reader.messages(connection, user_id, ids=unseen)
            message_of |= {m.message_id: m for m in found}
        fused = [(i, s) for i, s in _fuse(rankings) if i not in cited]
        stale: set[str] = set()
        if as_of is None:
            # A message whose facts were all replaced states something no longer true.
            stale = self._reader.outdated(connection, user_id, [i for i, _ in fused])
            fused.sort(key=lambda pair: pair[0] in stale)
        ranked = fused[:room]
        hits = [message_of[i] for i, _ in ranked]
        wanted = [m.seq + 1 if m.role == "user" else m.seq - 1 for m in hits]
        around = {m.seq: m for m in self._reader.messages(connection, user_id, seqs=wanted)}
        return [
            RetrievedMessage(message_of[i], score, around.get(seq), i in stale)
            for (i, score), seq in zip(ranked, wanted, strict=True)
        ]


def _fuse(rankings: Sequence[Sequence[tuple[str, float]]]) -> list[tuple[str, float]]:
    """One ranking from several: a lone ranking keeps its scores, several fuse by RRF."""
    if len(rankings) == 1:
        return list(rankings[0])
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])
