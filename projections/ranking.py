"""Lexical ranking inside the database: BM25 on SQLite FTS5, ``ts_rank`` on PostgreSQL.

Every query names its user inside the ``WHERE`` (and, on SQLite, in every term of the
``MATCH`` itself), so another user's rows are never ranked, never returned and never
crowd a user out. Terms are ORed: one matching word is enough, more matching words rank higher.
The words a query's topics add count for less than its own (see :data:`ADDED_WEIGHT`).
The statements are built once, with bound parameters, so a search pays for its SQL
and little else.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    CompoundSelect,
    Connection,
    Select,
    String,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSQUERY
from sqlalchemy.sql.util import ClauseAdapter

from events import user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections.columns import StoredTime, stored_id
from projections.models import KnowledgeEntry, Message
from projections.reader import aware, entry_from_row, message_from_row
from projections.search import (
    MAX_QUERY_TOKENS,
    PG_VECTOR,
    SearchIndex,
    current_token,
    own_and_added_words,
    owner_token,
    pg_owner_query,
    pg_words,
    query_words,
)
from projections.tables import ProjectionTables
from projections.terms import query_terms

__all__ = [
    "ADDED_WEIGHT",
    "MAX_QUERY_TOKENS",
    "LexicalRanker",
    "NewestRows",
    "WordRows",
    "fts_match",
    "pg_queries",
]

T = TypeVar("T")

_SPARE_HITS = 4
"""Hits fetched beyond the limit, for the rows the filters drop."""

_NEWEST_PER_WORD = 256
"""How many rows of each word, the newest, a bounded search ranks (see
:meth:`LexicalRanker.related`): a word found in more of the user's rows weighs little in
BM25, and ranking all of them made the entries shown beside each batch cost what the
user's entries number, so that extracting a backlog took time growing with its square."""

_WINDOW_PER_WORD = 4 * _NEWEST_PER_WORD
"""How many of each word's newest index rows of the user's current entries of the
search's knowledge version a bounded search looks among for the rows that pass its
filters (the newest :data:`_NEWEST_PER_WORD` of them kept): a fixed window of the
version's own, so the search costs the same however many rows another version holds, and
another version's newer rows never crowd its own out (a window of every version's rows
showed a live batch none of its own beside a re-extraction that wrote 1,024 newer ones).
A word with fewer index rows is searched whole. Both backends take the same window."""


@dataclass(frozen=True, slots=True)
class WordRows:
    """The rows of one word a bounded search ranks on SQLite (index rowids), and whether
    they are every row of the word that passes the search's filters (``whole``)."""

    rows: list[int]
    whole: bool


NewestRows = dict[tuple[str, tuple[Any, ...]], WordRows]
"""The rows of each word a bounded search found on SQLite (by the word's FTS5 query and
the filters they passed), for later searches of the same batch to reuse."""

_RELATED_PER_TEXT = 4
"""The fewest entries :meth:`LexicalRanker.related` takes of each text of a batch."""

ADDED_WEIGHT = 0.75
"""The share of its rank a row keeps when it matches only words a query's topics added
("city" for "where do I live?"); a row matching the query's own words is lifted by the
best such score, so it ranks above all of them (:func:`_tiered`). SQLite's BM25 counts a
word found in more than half of a user's rows for almost nothing, and "User lives in
Oslo." fell below "User loves the city of Rome." (and out, under the retrieval's
relevance floor); ``ts_rank`` ranked them the same. Chosen on ``make eval``."""


def fts_match(log_id: str, terms: list[str]) -> str:
    """The FTS5 query for ``terms`` (ORed) in the rows of log ``log_id`` only, at most
    :data:`MAX_QUERY_TOKENS` tokens of them (see :func:`query_words`)."""
    return _fts_words(owner_token(log_id), query_words(terms))


def _fts_words(owner: str, words: list[str]) -> str:
    """The FTS5 query for the index ``words`` (ORed) of ``owner``'s rows."""
    ored = " OR ".join(f'"{owner}{word}"' for word in words)
    return f"body : ({ored})"


class LexicalRanker:
    """Ranks one user's knowledge entries and messages for a list of query terms."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        self.search = SearchIndex(tables)
        k, m = tables.knowledge, tables.messages
        at = bindparam("as_of", type_=StoredTime())
        valid: dict[bool, tuple[ColumnElement[bool], ...]] = {
            False: (k.c.valid_until.is_(None),),
            True: (k.c.valid_from <= at, or_(k.c.valid_until.is_(None), k.c.valid_until > at)),
        }
        live = (k.c.log_id == bindparam("log_id"), k.c.knowledge_version == bindparam("version"))
        self._recent = {
            dated: select(k, literal_column("0.0").label("score"))
            .where(*live, *valid[dated])
            .order_by(k.c.valid_from.desc(), *_newest_first(k))
            .limit(bindparam("limit"))
            for dated in (False, True)
        }
        self._current = (
            select(k.c.entry_id, k.c.text, k.c.valid_from)
            .where(*live, *valid[False])
            .order_by(k.c.version, k.c.ordinal)
        )
        kfts, mfts = self.search.knowledge_fts.name, self.search.messages_fts.name
        # FTS5 keeps a row's columns in its "_content" shadow table, keyed by rowid
        # (c2 is item_id): a keyed lookup, where a rowid IN (...) on the FTS5 table scans.
        # The unary + keeps SQLite off the (log_id, knowledge_version) index, by which it
        # walked every entry of the user (70 ms at 10,000) to find a few hits.
        entry_rows = _SqliteRows(
            source=f"{kfts}_content AS f JOIN {k.name} AS k ON k.entry_id = f.c2",
            hit="f.id",
            columns="k.*",
            kept="+k.log_id = ? AND +k.knowledge_version = ? AND ",
        )
        self._sqlite_entries = {
            False: _SqliteSearch(kfts, entry_rows.kept_also("k.valid_until IS NULL"), marked=True),
            True: _SqliteSearch(
                kfts,
                entry_rows.kept_also(
                    "k.valid_from <= ? AND (k.valid_until IS NULL OR k.valid_until > ?)"
                ),
            ),
        }
        # The unary + keeps SQLite off the (log_id, seq) index: by it, the planner walked
        # every message of the user to find a few hits, where the rowids find them at once.
        message_rows = _SqliteRows(source=f"{m.name} AS m", hit="m.id", columns="m.*", kept="")
        self._sqlite_messages = {
            False: _SqliteSearch(mfts, message_rows.kept_also("+m.log_id = ?"), weights=""),
            True: _SqliteSearch(
                mfts, message_rows.kept_also("+m.log_id = ? AND m.sent_at <= ?"), weights=""
            ),
        }
        self._pg_window_where = {
            dated: (*live, *(() if dated else valid[False])) for dated in (False, True)
        }
        self._pg_where = {dated: (*live, *valid[dated]) for dated in (False, True)}
        # One array parameter, not one per id: a window of many words holds thousands, and
        # PostgreSQL parsed a list of 20,000 in 230-290 ms, where an array took 80-100 ms.
        self._pg_among_newest = k.c.entry_id == any_(bindparam("newest", type_=ARRAY(String())))
        self._pg_entries = {
            (dated, added): _pg_select(k, (*live, *valid[dated]), _newest_first(k), added)
            for dated in (False, True)
            for added in (False, True)
        }
        self._pg_messages = {
            (dated, added): _pg_select(
                m,
                (m.c.log_id == bindparam("log_id"), *((m.c.sent_at <= at,) if dated else ())),
                (m.c.seq.desc(),),
                added,
            )
            for dated in (False, True)
            for added in (False, True)
        }

    def entries(
        self,
        connection: Connection,
        user_id: str,
        terms: list[str],
        limit: int,
        as_of: datetime | None = None,
        version: str = LIVE_KNOWLEDGE,
        *,
        added: Sequence[str] = (),
        bounded: bool = False,
        newest: NewestRows | None = None,
    ) -> list[tuple[KnowledgeEntry, float]]:
        """The user's entries (live, or of knowledge ``version``) valid now (or at
        ``as_of``) best matching ``terms``, or the words their topics ``added``
        (:data:`ADDED_WEIGHT`).

        With no terms, the most recent valid entries, each scored 0. ``bounded`` ranks
        only the newest :data:`_NEWEST_PER_WORD` rows of each word among its newest
        :data:`_WINDOW_PER_WORD` of the version, so that the search costs about the
        same however many entries share its common words, in any version;
        ``newest`` keeps the rows each word found, so the searches of one batch, which
        share their common words, look each up once (SQLite).
        """
        log_id = str(user_log_id(user_id))
        params: dict[str, Any] = {
            "log_id": log_id,
            "version": version,
            "limit": limit,
            "as_of": as_of,
        }
        dated = as_of is not None

        def model(r: Any) -> KnowledgeEntry:
            return entry_from_row(user_id, r)

        if not terms:
            rows = connection.execute(self._recent[dated], params).mappings()
            return [(model(r), 0.0) for r in rows]
        own, extra_words = own_and_added_words(terms, added)
        if connection.dialect.name == "sqlite":
            extra = () if as_of is None else (StoredTime.to_sqlite(as_of),) * 2
            current = None if dated else self.search.first_write(connection, log_id, version)
            if not dated and current is None:
                return []  # the version holds no entry of the user
            matches = _fts_matches(log_id, own, extra_words, current=current)
            words = (
                tuple(
                    _fts_matches(log_id, [word], [], current=current)[0]
                    for word in dict.fromkeys([*own, *extra_words])
                )
                if bounded
                else ()
            )
            found = self._sqlite_entries[dated].run(
                connection,
                matches,
                limit,
                (stored_id(log_id), version, *extra),
                words,
                newest,
            )
            ranked = sorted(
                _tiered(found), key=lambda hit: (-hit[1], -hit[0]["version"], -hit[0]["ordinal"])
            )
            return [(model(row), score) for row, score in ranked[:limit]]
        queries = pg_queries(own, extra_words)
        if not queries:
            return []
        params.update(queries, owner=pg_owner_query(log_id))
        statement = self._pg_entries[dated, "own" in queries]
        every = dict.fromkeys([*own, *extra_words]) if bounded else {}
        pg_terms = [w for word in every if (w := pg_words([word]))]
        if pg_terms:
            params.update({f"word{i}": word for i, word in enumerate(pg_terms)})
            chosen = connection.execute(self._pg_newest(dated, len(pg_terms)), params)
            params["newest"] = list(dict.fromkeys(entry_id for (entry_id,) in chosen))
            if not params["newest"]:
                return []
            statement = statement.where(self._pg_among_newest)
        rows = connection.execute(statement, params).mappings()
        return [(model(r), score) for r, score in _tiered(_pg_hits(rows))]

    def _pg_newest(self, dated: bool, words: int) -> CompoundSelect[Any]:
        """The ids of the entries a bounded search ranks on PostgreSQL, as SQLite's do,
        read before the ranking (as SQLite reads its rows): within one statement, without
        statistics, the planner scanned every word's window again for each of the
        version's entries (rescans of a backward index scan, hundreds of them). For each of
        the ``words`` bound as ``word0``..., its newest :data:`_WINDOW_PER_WORD` entries of
        the user's knowledge version (by the log version that wrote them, then their place
        in it; the current ones, undated, as SQLite's index marks them), and of those the
        newest :data:`_NEWEST_PER_WORD` that pass the search's filters.

        Dated, SQLite's window counts the index rows of every version, and of entries a
        promotion removed (its index keeps them), so the two may differ there;
        :meth:`related`, the one bounded search, is never dated."""
        k = self.tables.knowledge
        vector: ColumnClause[Any] = literal_column(f"{k.name}.{PG_VECTOR}")
        owner = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("owner"))
        windows = [
            select(
                k.c.entry_id,
                k.c.version,
                k.c.ordinal,
                k.c.log_id,
                k.c.knowledge_version,
                k.c.valid_from,
                k.c.valid_until,
            )
            .where(
                vector.op("@@")(_pg_tsquery(f"word{i}").op("&&")(owner)),
                *self._pg_window_where[dated],
            )
            .order_by(k.c.version.desc(), k.c.ordinal.desc())
            .limit(_WINDOW_PER_WORD)
            .subquery()
            for i in range(words)
        ]
        # The window's own columns filtered, not the table joined again by entry id: with
        # no statistics yet, the planner joined it through the user's index, row by row.
        newest = [
            select(window.c.entry_id)
            .where(*(ClauseAdapter(window).traverse(c) for c in self._pg_where[dated]))
            .order_by(window.c.version.desc(), window.c.ordinal.desc())
            .limit(_NEWEST_PER_WORD)
            .subquery()
            for window in windows
        ]
        return union_all(*(select(n.c.entry_id) for n in newest))

    def messages(
        self,
        connection: Connection,
        user_id: str,
        terms: list[str],
        limit: int,
        as_of: datetime | None = None,
        *,
        added: Sequence[str] = (),
    ) -> list[tuple[Message, float]]:
        """The user's messages (sent by ``as_of``, when given) best matching ``terms``, or
        the words their topics ``added`` (:data:`ADDED_WEIGHT`); none without terms."""
        if not terms:
            return []
        log_id = str(user_log_id(user_id))
        params: dict[str, Any] = {"log_id": log_id, "limit": limit, "as_of": as_of}
        dated = as_of is not None

        def model(r: Any) -> Message:
            return message_from_row(user_id, r)

        own, extra_words = own_and_added_words(terms, added)
        if connection.dialect.name == "sqlite":
            extra = () if as_of is None else (StoredTime.to_sqlite(as_of),)
            matches = _fts_matches(log_id, own, extra_words)
            found = self._sqlite_messages[dated].run(
                connection, matches, limit, (stored_id(log_id), *extra)
            )
            ranked = sorted(_tiered(found), key=lambda hit: (-hit[1], -hit[0]["seq"]))
            return [(model(row), score) for row, score in ranked[:limit]]
        queries = pg_queries(own, extra_words)
        if not queries:
            return []
        params.update(queries, owner=pg_owner_query(log_id))
        statement = self._pg_messages[dated, "own" in queries]
        rows = connection.execute(statement, params).mappings()
        return [(model(r), score) for r, score in _tiered(_pg_hits(rows))]

    def related(
        self,
        connection: Connection,
        user_id: str,
        texts: list[str],
        limit: int,
        current: int,
        version: str = LIVE_KNOWLEDGE,
    ) -> list[tuple[str, str, datetime]]:
        """(id, text, valid from) of the current entries (live, or of knowledge
        ``version``) an extractor should see beside ``texts``: all of them when the user
        has at most ``limit`` (``current`` is how many the log counts), else the ``limit``
        that best match the texts.

        Each text is searched on its own and the texts take turns, each one's best match
        first, then each one's second, and so on: a short statement ("I moved to Bergen")
        finds the entry it changes however many words the rest of the batch has. Each
        search ranks only the newest rows of each of its words (see :data:`_NEWEST_PER_WORD`
        and :data:`_WINDOW_PER_WORD`): BM25 scores a bounded number of rows, though FTS5
        still walks the words' lists.
        """
        if current <= 0:
            return []
        if current <= limit:
            binds = {"log_id": str(user_log_id(user_id)), "version": version}
            rows = connection.execute(self._current, binds)
            return [(entry_id, text, aware(valid_from)) for entry_id, text, valid_from in rows]
        queries = list(dict.fromkeys(t for text in texts if (t := query_terms(text)).own))
        each = max(_RELATED_PER_TEXT, limit // max(1, len(queries)))
        newest: NewestRows = {}
        found = [
            self.entries(
                connection,
                user_id,
                list(q.own),
                min(each, limit),
                version=version,
                added=q.added,
                bounded=True,
                newest=newest,
            )
            for q in queries
        ]
        shown: dict[str, tuple[str, str, datetime]] = {}
        for turn in itertools.zip_longest(*found):
            for hit in turn:
                if hit is not None and len(shown) < limit:
                    entry = hit[0]
                    shown.setdefault(entry.entry_id, (entry.entry_id, entry.text, entry.valid_from))
        return list(shown.values())


def _tiered(hits: list[tuple[T, float, bool]]) -> list[tuple[T, float]]:
    """Each hit with its score, from its rank (higher is better) and whether it matches
    the query's own words: a hit matching only the words its topics added keeps
    :data:`ADDED_WEIGHT` of its rank, and one matching its own words is lifted by the
    best of those scores, so it always ranks above them."""
    lift = ADDED_WEIGHT * max((rank for _, rank, own in hits if not own), default=0.0)
    return [(hit, rank + lift if own else ADDED_WEIGHT * rank) for hit, rank, own in hits]


def _fts_matches(
    log_id: str, own: list[str], added: list[str], *, current: int | None = None
) -> tuple[str, ...]:
    """The FTS5 queries of a search: of the query's ``own`` index words and, if its
    topics ``added`` any, of every word; with ``current``, the first write of a knowledge
    version, of that version's entries marked current only
    (:func:`~projections.search.current_token`):
    the ended ones, every past value of a fact, and the other versions' are never scored.
    The owner column weighs 0, so the ranks are the same."""
    owner = owner_token(log_id)
    only = "" if current is None else f' AND owner : "{current_token(owner, current)}"'
    queries = (own, *(([*own, *added],) if added else ()))
    return tuple(f"({_fts_words(owner, words)}){only}" for words in queries)


def pg_queries(own: list[str], added: list[str]) -> dict[str, str]:
    """The ``tsquery`` parameters of a search on PostgreSQL: ``query`` (every word) and,
    if its topics ``added`` any, ``own`` (the query's own words); none without a word
    to look up."""
    query = pg_words([*own, *added])
    if not query:
        return {}
    if not pg_words(added):
        return {"query": query}
    return {"query": query, "own": pg_words(own)}


def _pg_hits(rows: Any) -> list[tuple[Any, float, bool]]:
    """PostgreSQL's ranked rows as hits for :func:`_tiered` (``mine``: matching the
    query's own words; every row does when its topics added none)."""
    return [(r, float(r["score"]), bool(r.get("mine", True))) for r in rows]


@dataclass(frozen=True, slots=True)
class _SqliteRows:
    """The projection rows a search on SQLite returns, as SQL: joined from ``source``,
    found by their index rowid ``hit``, and ``kept`` only where they pass its filters
    (bound in that order)."""

    source: str
    hit: str
    columns: str
    kept: str

    def kept_also(self, condition: str) -> _SqliteRows:
        """These rows, kept only where ``condition`` holds as well."""
        return replace(self, kept=self.kept + condition)

    def of_hits(self) -> str:
        """The rows of the index rowids put in for ``{ids}`` (bound marks)."""
        return (
            f"SELECT {self.hit} AS hit, {self.columns} FROM {self.source} "
            f"WHERE {self.hit} IN ({{ids}}) AND {self.kept}"
        )

    def kept_of(self) -> str:
        """The index rowids kept of a JSON list of them (bound first, its filters after)."""
        # CROSS JOIN keeps the list the outer loop, each row looked up by its key.
        return (
            f"SELECT {self.hit} FROM json_each(?) AS w CROSS JOIN {self.source} "
            f"WHERE {self.hit} = w.value AND {self.kept}"
        )


class _SqliteSearch:
    """One ranked search on SQLite, in plain statements on the DBAPI cursor.

    First BM25 inside FTS5 (computed once per match; only the best hits leave the
    index, hits scored alike by row number, newest first: a row's number follows the
    order messages and entries were written, so a limit that cuts a tie keeps its newest,
    as on PostgreSQL), then the projection rows of those hits, filtered. A search with
    words its topics added ranks the rows with the query's own words first, and the
    others only when those leave room (see :meth:`_hits`, :func:`_tiered`): ranking
    every row and matching the own words again cost up to twice as much where many
    rows match. Rows the filter drops
    (ended entries, other knowledge versions) are made up for by fetching more hits,
    until the index has no more to give. A search is a few hundred microseconds of
    SQLite, so it skips SQLAlchemy's statement and row machinery on purpose; the model
    builders read SQLite's raw row forms. ``marked``: the FTS5 queries of a bounded
    search's words match only rows that pass its filters (see :meth:`_word_rows`).
    """

    def __init__(
        self,
        fts: str,
        rows: _SqliteRows,
        weights: str = ", 0.0, 1.0, 0.0",
        *,
        marked: bool = False,
    ) -> None:
        self.marked = marked
        hits = f"SELECT rowid, bm25({fts}{weights}) AS rank FROM {fts} WHERE {fts} MATCH ?"
        order = "ORDER BY rank, rowid DESC LIMIT ?"
        self.hits_sql = f"{hits} {order}"
        # The unary + keeps the rowids from FTS5, which looked each one up in every
        # word's list again (a hundred times slower); walked once, the index ranks only
        # the rows kept.
        self.own_hits_sql = (
            f"{hits} AND +rowid IN (SELECT rowid FROM {fts} WHERE {fts} MATCH ?) {order}"
        )
        # The index alone: the newest rows of a word, whatever knowledge version they are of.
        self.window_sql = f"SELECT rowid FROM {fts} WHERE {fts} MATCH ? ORDER BY rowid DESC LIMIT ?"
        self.kept_sql = rows.kept_of()
        # The rowid range spares FTS5 the rows older or newer than every candidate (another
        # knowledge version's, mostly); json_each keeps the candidates one parameter
        # however many they are.
        span = "rowid >= ? AND rowid <= ?"
        within = f"AND {span} AND +rowid IN (SELECT value FROM json_each(?))"
        self.hits_within_sql = f"{hits} {within} {order}"
        self.own_hits_within_sql = (
            f"{hits} AND +rowid IN (SELECT rowid FROM {fts} WHERE {fts} MATCH ? "
            f"AND {span}) {within} {order}"
        )
        self.rows_sql = rows.of_hits()

    def run(
        self,
        connection: Connection,
        matches: tuple[str, ...],
        limit: int,
        filters: tuple[Any, ...],
        words: tuple[str, ...] = (),
        newest: NewestRows | None = None,
    ) -> list[tuple[dict[str, Any], float, bool]]:
        """The rows of the best hits of ``matches`` (the query's own words, then, if its
        topics added any, every word) that pass the filters, with their rank (higher is
        better) and whether they match the query's own words. Given the queries of each of
        its ``words``, only the newest rows of each are ranked (see :meth:`_newest`; those
        found already taken from ``newest``, those looked up added to it)."""
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            ranked = self._newest(cursor, words, filters, {} if newest is None else newest)
            if ranked == []:
                return []
            within = None if ranked is None else (ranked[0], ranked[-1], json.dumps(ranked))
            fetch = limit + _SPARE_HITS
            while True:
                hits = self._hits(cursor, matches, fetch, within)
                if not hits:
                    return []
                marks = ", ".join("?" * len(hits))
                cursor.execute(self.rows_sql.format(ids=marks), (*hits, *filters))
                names = [column[0] for column in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                if len(rows) >= limit or len(hits) < fetch:
                    return [(row, -hits[row["hit"]][0], hits[row["hit"]][1]) for row in rows]
                fetch *= 4
        finally:
            cursor.close()

    def _newest(
        self, cursor: Any, words: tuple[str, ...], filters: tuple[Any, ...], known: NewestRows
    ) -> list[int] | None:
        """The rows a bounded search ranks (index rowids, oldest first): of each of
        ``words``, its rows :meth:`_word_rows` reads (the newest :data:`_NEWEST_PER_WORD`
        that pass the ``filters``, the search's knowledge version); None when each word's
        rows are all there (every row is ranked then, as cheaply). None is ranked when no
        row of any word passes.

        Each word's rows are read from a bounded stretch of the index, never by walking it
        until enough rows of the version passed (that read every newer row of another
        version): a search of the version's current entries (``marked``) reads its newest
        rows off the index alone, as its FTS5 query matches only those; any other reads
        the word's newest :data:`_WINDOW_PER_WORD` index rows, as PostgreSQL takes them,
        and filters them in one read. A word's rows already ``known`` are not looked up
        again; those looked up are kept there."""
        if not words:
            return None
        rows: set[int] = set()
        whole = True
        for word in words:
            found = known.get((word, filters))
            if found is None:
                found = known[word, filters] = self._word_rows(cursor, word, filters)
            whole = whole and found.whole
            rows.update(found.rows)
        if whole:
            return None
        return sorted(rows)

    def _word_rows(self, cursor: Any, word: str, filters: tuple[Any, ...]) -> WordRows:
        """The newest :data:`_NEWEST_PER_WORD` rows that pass the ``filters`` among the
        newest :data:`_WINDOW_PER_WORD` rows of the FTS5 query ``word``.

        A search of current entries (``marked``) matches only rows of its version's current
        entries, by their mark (:func:`~projections.search.current_token`), every one of
        which passes the filters: its newest :data:`_NEWEST_PER_WORD` rows are read off
        the index alone. Reading the whole window and filtering it by the knowledge rows
        took 40% of the word search beside a batch of a user of 5,000 entries."""
        if self.marked:
            newest = [
                rowid for (rowid,) in cursor.execute(self.window_sql, (word, _NEWEST_PER_WORD))
            ]
            return WordRows(newest, len(newest) < _NEWEST_PER_WORD)
        window = [rowid for (rowid,) in cursor.execute(self.window_sql, (word, _WINDOW_PER_WORD))]
        kept = [rowid for (rowid,) in cursor.execute(self.kept_sql, (json.dumps(window), *filters))]
        kept.sort(reverse=True)
        whole = len(window) < _WINDOW_PER_WORD and len(kept) < _NEWEST_PER_WORD
        return WordRows(kept[:_NEWEST_PER_WORD], whole)

    def _hits(
        self,
        cursor: Any,
        matches: tuple[str, ...],
        fetch: int,
        within: tuple[int, int, str] | None = None,
    ) -> dict[int, tuple[float, bool]]:
        """The best ``fetch`` hits of ``matches``: rowid to (BM25 of every word, whether
        the row has one of the query's own words), those that have first; only rows
        ``within`` the oldest and newest rowids and the list given, when given (see
        :meth:`_newest`).

        The rows with own words are ranked first, and alone (BM25 is most of a search's
        work); the rows with only added words are ranked only when those leave room.
        """
        hits_sql = self.hits_sql if within is None else self.hits_within_sql
        if len(matches) == 1:
            found = cursor.execute(hits_sql, (matches[0], *(within or ()), fetch)).fetchall()
            return {hit: (rank, True) for hit, rank in found}
        own, every = matches
        if within is None:
            mine = cursor.execute(self.own_hits_sql, (every, own, fetch)).fetchall()
        else:
            oldest, newest, listed = within
            mine = cursor.execute(
                self.own_hits_within_sql,
                (every, own, oldest, newest, oldest, newest, listed, fetch),
            ).fetchall()
        hits = {hit: (rank, True) for hit, rank in mine}
        if len(hits) < fetch:
            found = cursor.execute(hits_sql, (every, *(within or ()), fetch)).fetchall()
            for hit, rank in found:
                if len(hits) < fetch:
                    hits.setdefault(hit, (rank, False))
        return hits


def _newest_first(knowledge: Table) -> tuple[ColumnElement[Any], ...]:
    """The order of ``knowledge`` rows scored alike, newest first: by the log version that
    wrote them, then their place in it, as SQLite's index numbers its rows (and as
    :meth:`LexicalRanker.entries` sorts them there), so a limit that cuts a tie keeps the
    same rows on both backends. Their ``valid_from`` does not: a batch's facts share it."""
    return (knowledge.c.version.desc(), knowledge.c.ordinal.desc())


def _pg_select(
    table: Table,
    where: tuple[ColumnElement[bool], ...],
    tiebreak: tuple[ColumnElement[Any], ...],
    added: bool,
) -> Select[Any]:
    """``table``'s rows matching ``query``, a ``tsquery`` literal of ORed words
    (:func:`~projections.search.pg_words`), by ``ts_rank`` (PostgreSQL); with ``added``
    (words the query's topics added), those matching ``own``, the query's own words,
    first (``mine``; see :func:`_tiered`).

    The owner's token (``owner``) is looked up in the same index as the terms, so the
    index finds only the user's matches; the ``WHERE`` on the user stays besides.

    ``ts_rank`` ignores a row's length, where SQLite's bm25 favours the shorter text; its
    length normalizations and ``ts_rank_cd`` were measured on ``make eval-postgres`` and
    each lowered the default ranking's recall somewhere (README, "Retrieval evaluation").
    """
    vector: ColumnClause[Any] = literal_column(f"{table.name}.{PG_VECTOR}")
    terms = _pg_tsquery("query")
    owner = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("owner"))
    score = func.ts_rank(vector, terms).label("score")
    mine = vector.op("@@")(_pg_tsquery("own")).label("mine")
    order = (mine.desc(), score.desc()) if added else (score.desc(),)
    return (
        select(table, score, *((mine,) if added else ()))
        .where(vector.op("@@")(terms.op("&&")(owner)), *where)
        .order_by(*order, *tiebreak)
        .limit(bindparam("limit"))
    )


def _pg_tsquery(name: str) -> ColumnElement[Any]:
    """The ``tsquery`` bound as parameter ``name``."""
    return cast(bindparam(name, type_=Text()), TSQUERY)
