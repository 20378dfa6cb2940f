"""Lexical ranking inside the database: BM25 on SQLite FTS5, ``ts_rank`` on PostgreSQL.

Every query names its user inside the ``WHERE`` (and, on SQLite, inside the ``MATCH``
itself), so another user's rows are never ranked, never returned and never crowd a
user out. Terms are ORed: one matching word is enough, more matching words rank higher.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnClause, Connection, Select, func, literal_column, select

from events import user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections.models import KnowledgeEntry, Message
from projections.reader import ProjectionReader, entry_from_row, message_from_row
from projections.search import PG_CONFIG, SearchIndex, owner_token
from projections.tables import ProjectionTables
from projections.terms import search_terms

__all__ = ["LexicalRanker", "fts_match"]


def fts_match(log_id: str, terms: list[str]) -> str:
    """The FTS5 query for ``terms`` (ORed) in the rows of log ``log_id`` only."""
    ored = " OR ".join(f'"{term}"' for term in terms)
    return f'owner : "{owner_token(log_id)}" AND body : ({ored})'


class LexicalRanker:
    """Ranks one user's knowledge entries and messages for a list of query terms."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        self.search = SearchIndex(tables)
        self._reader = ProjectionReader(tables)

    def entries(
        self,
        connection: Connection,
        user_id: str,
        terms: list[str],
        limit: int,
        as_of: datetime | None = None,
    ) -> list[tuple[KnowledgeEntry, float]]:
        """The user's live entries valid now (or at ``as_of``) best matching ``terms``.

        With no terms, the most recent valid entries, each scored 0.
        """
        k = self.tables.knowledge
        log_id = str(user_log_id(user_id))
        where = (k.c.log_id == log_id, k.c.knowledge_version == LIVE_KNOWLEDGE)
        valid = self._reader.valid(as_of)
        if not terms:
            query: Select[Any] = select(k, literal_column("0.0").label("score"))
            query = query.where(*where, *valid).order_by(k.c.valid_from.desc(), k.c.version)
        elif connection.dialect.name == "sqlite":
            fts: ColumnClause[Any] = literal_column(self.search.knowledge_fts.name)
            bm25 = func.bm25(fts, 0.0, 1.0, 0.0)
            query = (
                select(k, (-bm25).label("score"))
                .select_from(
                    self.search.knowledge_fts.join(
                        k, k.c.entry_id == self.search.knowledge_fts.c.item_id
                    )
                )
                .where(fts.match(fts_match(log_id, terms)), *where, *valid)
                .order_by(bm25, k.c.valid_from.desc())
            )
        else:
            vector = func.to_tsvector(literal_column(f"'{PG_CONFIG}'::regconfig"), k.c.text)
            tsquery = func.to_tsquery(
                literal_column(f"'{PG_CONFIG}'::regconfig"), " | ".join(terms)
            )
            rank = func.ts_rank(vector, tsquery)
            query = (
                select(k, rank.label("score"))
                .where(vector.op("@@")(tsquery), *where, *valid)
                .order_by(rank.desc(), k.c.valid_from.desc())
            )
        rows = connection.execute(query.limit(limit)).mappings()
        return [(entry_from_row(user_id, r), float(r["score"])) for r in rows]

    def related(
        self, connection: Connection, user_id: str, texts: list[str], limit: int
    ) -> list[KnowledgeEntry]:
        """The current entries an extractor should see beside ``texts``: all of them when
        there are at most ``limit``, else the ``limit`` that best match the texts' words."""
        current = self.entries(connection, user_id, [], limit + 1)
        if len(current) <= limit:
            return [entry for entry, _ in reversed(current)]
        terms = search_terms(" ".join(texts))
        return [entry for entry, _ in self.entries(connection, user_id, terms, limit)]

    def messages(
        self, connection: Connection, user_id: str, terms: list[str], limit: int
    ) -> list[tuple[Message, float]]:
        """The user's messages best matching ``terms`` (none without terms)."""
        if not terms:
            return []
        m = self.tables.messages
        log_id = str(user_log_id(user_id))
        if connection.dialect.name == "sqlite":
            fts: ColumnClause[Any] = literal_column(self.search.messages_fts.name)
            bm25 = func.bm25(fts, 0.0, 1.0, 0.0)
            query: Select[Any] = (
                select(m, (-bm25).label("score"))
                .select_from(
                    self.search.messages_fts.join(
                        m, m.c.message_id == self.search.messages_fts.c.item_id
                    )
                )
                .where(fts.match(fts_match(log_id, terms)), m.c.log_id == log_id)
                .order_by(bm25, m.c.seq.desc())
            )
        else:
            vector = func.to_tsvector(literal_column(f"'{PG_CONFIG}'::regconfig"), m.c.content)
            tsquery = func.to_tsquery(
                literal_column(f"'{PG_CONFIG}'::regconfig"), " | ".join(terms)
            )
            rank = func.ts_rank(vector, tsquery)
            query = (
                select(m, rank.label("score"))
                .where(vector.op("@@")(tsquery), m.c.log_id == log_id)
                .order_by(rank.desc(), m.c.seq.desc())
            )
        rows = connection.execute(query.limit(limit)).mappings()
        return [(message_from_row(user_id, r), float(r["score"])) for r in rows]
