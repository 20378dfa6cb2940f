"""Lexical ranking inside the database: BM25 on SQLite FTS5, ``ts_rank`` on PostgreSQL.

Every query names its user inside the ``WHERE`` (and, on SQLite, in every term of the
``MATCH`` itself), so another user's rows are never ranked, never returned and never
crowd a user out. Terms are ORed: one matching word is enough, more matching words rank higher.
The statements are built once, with bound parameters, so a search pays for its SQL
and little else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    DateTime,
    Select,
    Table,
    bindparam,
    func,
    literal_column,
    or_,
    select,
)

from events import user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections.models import KnowledgeEntry, Message
from projections.reader import entry_from_row, message_from_row
from projections.search import PG_CONFIG, SearchIndex, owned_term
from projections.tables import ProjectionTables
from projections.terms import search_terms

__all__ = ["LexicalRanker", "fts_match"]

T = TypeVar("T")

_BM25 = "bm25(0.0, 1.0, 0.0)"
"""FTS5's rank for the index tables: BM25 of the body alone (owner and id weigh nothing)."""

_SPARE_HITS = 16
"""Hits fetched beyond the limit, for the rows the filters drop."""


def fts_match(log_id: str, terms: list[str]) -> str:
    """The FTS5 query for ``terms`` (ORed) in the rows of log ``log_id`` only."""
    ored = " OR ".join(f'"{owned_term(log_id, term)}"' for term in terms)
    return f"body : ({ored})"


class LexicalRanker:
    """Ranks one user's knowledge entries and messages for a list of query terms."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        self.search = SearchIndex(tables)
        k, m = tables.knowledge, tables.messages
        at = bindparam("as_of", type_=DateTime(timezone=True))
        valid: dict[bool, tuple[ColumnElement[bool], ...]] = {
            False: (k.c.valid_until.is_(None),),
            True: (k.c.valid_from <= at, or_(k.c.valid_until.is_(None), k.c.valid_until > at)),
        }
        live = (k.c.log_id == bindparam("log_id"), k.c.knowledge_version == LIVE_KNOWLEDGE)
        self._recent = {
            dated: select(k, literal_column("0.0").label("score"))
            .where(*live, *valid[dated])
            .order_by(k.c.valid_from.desc(), k.c.version)
            .limit(bindparam("limit"))
            for dated in (False, True)
        }
        kfts, mfts = self.search.knowledge_fts, self.search.messages_fts
        self._fts_entries = {
            dated: _fts_select(kfts, k, k.c.entry_id, (*live, *valid[dated]), k.c.valid_from.desc())
            for dated in (False, True)
        }
        self._fts_messages = _fts_select(
            mfts, m, m.c.message_id, (m.c.log_id == bindparam("log_id"),), m.c.seq.desc()
        )
        self._knowledge_beyond = _fts_beyond(kfts)
        self._messages_beyond = _fts_beyond(mfts)
        self._pg_entries = {
            dated: _pg_select(k, k.c.text, (*live, *valid[dated]), k.c.valid_from.desc())
            for dated in (False, True)
        }
        self._pg_messages = _pg_select(
            m, m.c.content, (m.c.log_id == bindparam("log_id"),), m.c.seq.desc()
        )

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
        log_id = str(user_log_id(user_id))
        params: dict[str, Any] = {"log_id": log_id, "limit": limit, "as_of": as_of}
        dated = as_of is not None

        def model(r: Any) -> KnowledgeEntry:
            return entry_from_row(user_id, r)

        if not terms:
            rows = connection.execute(self._recent[dated], params).mappings()
            return [(model(r), 0.0) for r in rows]
        if connection.dialect.name == "sqlite":
            statements = (self._fts_entries[dated], self._knowledge_beyond)
            return self._fts_ranked(connection, statements, log_id, terms, params, model)
        params["query"] = " | ".join(terms)
        rows = connection.execute(self._pg_entries[dated], params).mappings()
        return [(model(r), float(r["score"])) for r in rows]

    def messages(
        self, connection: Connection, user_id: str, terms: list[str], limit: int
    ) -> list[tuple[Message, float]]:
        """The user's messages best matching ``terms`` (none without terms)."""
        if not terms:
            return []
        log_id = str(user_log_id(user_id))
        params: dict[str, Any] = {"log_id": log_id, "limit": limit}

        def model(r: Any) -> Message:
            return message_from_row(user_id, r)

        if connection.dialect.name == "sqlite":
            statements = (self._fts_messages, self._messages_beyond)
            return self._fts_ranked(connection, statements, log_id, terms, params, model)
        params["query"] = " | ".join(terms)
        rows = connection.execute(self._pg_messages, params).mappings()
        return [(model(r), float(r["score"])) for r in rows]

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

    def _fts_ranked(
        self,
        connection: Connection,
        statements: tuple[Select[Any], Select[Any]],
        log_id: str,
        terms: list[str],
        params: dict[str, Any],
        model: Callable[[Any], T],
    ) -> list[tuple[T, float]]:
        """Rank inside FTS5 first, then join and filter only the best hits.

        BM25 is computed once per match and only ``fetch`` rows leave the index; rows
        the filters drop (ended entries, other knowledge versions) are made up for by
        fetching more, until the index has no more hits to give.
        """
        statement, beyond = statements
        limit = params["limit"]
        match = fts_match(log_id, terms)
        fetch = limit + _SPARE_HITS
        while True:
            found = {**params, "match": match, "fetch": fetch}
            rows = connection.execute(statement, found).mappings().all()
            if len(rows) >= limit:
                break
            if rows and rows[0]["hits"] < fetch:
                break
            if connection.execute(beyond, {"match": match, "fetch": fetch}).first() is None:
                break
            fetch *= 4
        return [(model(r), float(r["score"])) for r in rows]


def _fts_select(
    fts: Table,
    table: Table,
    key: ColumnElement[Any],
    where: tuple[ColumnElement[bool], ...],
    tiebreak: ColumnElement[Any],
) -> Select[Any]:
    """``table``'s rows for the best ``fetch`` index hits of ``match``, ranked, filtered."""
    rank: ColumnClause[Any] = literal_column("rank")
    hits = (
        select(fts.c.item_id, rank.label("rank"))
        .where(literal_column(fts.name).match(bindparam("match")), rank.match(_BM25))
        .order_by(rank)
        .limit(bindparam("fetch"))
        .cte(f"{fts.name}_hits")
    )
    counted = select(func.count()).select_from(hits).scalar_subquery()
    return (
        select(table, (-hits.c.rank).label("score"), counted.label("hits"))
        .join_from(hits, table, key == hits.c.item_id)
        .where(*where)
        .order_by(hits.c.rank, tiebreak)
        .limit(bindparam("limit"))
    )


def _fts_beyond(fts: Table) -> Select[Any]:
    """Any hit of ``match`` past the first ``fetch`` (are there more to fetch?)."""
    return (
        select(fts.c.item_id)
        .where(literal_column(fts.name).match(bindparam("match")))
        .offset(bindparam("fetch"))
        .limit(1)
    )


def _pg_select(
    table: Table,
    text: ColumnElement[str],
    where: tuple[ColumnElement[bool], ...],
    tiebreak: ColumnElement[Any],
) -> Select[Any]:
    """``table``'s rows matching the ORed ``query`` terms, by ``ts_rank`` (PostgreSQL)."""
    config: ColumnClause[Any] = literal_column(f"'{PG_CONFIG}'::regconfig")
    vector = func.to_tsvector(config, text)
    tsquery = func.to_tsquery(config, bindparam("query"))
    rank = func.ts_rank(vector, tsquery)
    return (
        select(table, rank.label("score"))
        .where(vector.op("@@")(tsquery), *where)
        .order_by(rank.desc(), tiebreak)
        .limit(bindparam("limit"))
    )
