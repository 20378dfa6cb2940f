"""The full-text index: knowledge entries and messages, searchable per user.

SQLite keeps two FTS5 tables beside the projections (one for entries, one for messages),
whose tokenizer splits nothing memvee's own cutting keeps together.
Entries are indexed by :func:`search_fold` in the transaction that adds them. Messages are
indexed in bulk a little later (:meth:`SearchIndex.index_messages`): an FTS5 index writes
a new segment at every commit, which cost more than the rest of a one-exchange commit, so
the write path leaves it to a later transaction that indexes many at once. Every message
with a row number above the stored ``messages_indexed`` position waits to be indexed, and
every search of messages indexes what waits first, so a search never misses one. Every
indexed word is stemmed, then prefixed with its owner (the log id as 32 hex digits), so
each user has posting lists of their own: a search is scoped to one user by the very terms
it looks up, and costs what that user's matches cost, however many other users share the
words. The stemming happens here, before the prefix, because a stemmer run on the prefixed
token strips differently ("careful" and "career" would meet as ``car``).
PostgreSQL needs no extra rows: the knowledge and message tables each get a stored
``search_vector`` column under a GIN index, and the rankers query it directly. The
projection writes fill it (:func:`pg_vector`) with the very words SQLite's index gets,
cut, folded and stemmed here, not by PostgreSQL's parser, and the owner's token at weight
A; queries are the same words (:func:`pg_query`), so both backends find the same rows.
The owner's token scopes a search in the index itself, as the prefix does on SQLite, and
the stored lexemes are ranked without parsing the text again: with the text parsed per
row, a user of 10,000 messages took 60 ms a search.
"""

from __future__ import annotations

import itertools
import threading
import unicodedata
import zlib
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any
from uuid import UUID

import Stemmer
from sqlalchemy import Column, Connection, MetaData, Table, Text, inspect, text
from sqlalchemy.dialects.postgresql import TSVECTOR

from projections.columns import id_param, id_text
from projections.comparison import Listing, sortable
from projections.folds import ENTRY_EVENTS
from projections.rows import Row
from projections.sink import Derived
from projections.tables import ProjectionTables
from projections.words import LAYOUT as WORDS_LAYOUT
from projections.words import UNSPACED_RUN, fold, word_pieces
from projections.words import words as folded_words

__all__ = [
    "LONGEST_WORD_BYTES",
    "MARKED_BY_FIRST_WRITE",
    "MARKED_BY_VERSION",
    "MARKED_CURRENT",
    "MAX_QUERY_TOKENS",
    "MESSAGES_INDEXED",
    "PG_VECTOR",
    "MessageBodies",
    "SearchIndex",
    "current_token",
    "held_stems",
    "index_word",
    "indexed_layout",
    "own_and_added_words",
    "owned_terms",
    "owned_words",
    "owner_token",
    "pg_owner_query",
    "pg_query",
    "pg_vector",
    "pg_words",
    "query_words",
    "search_fingerprint",
    "spoken",
    "text_stems",
    "word_pieces",
]

_TOKENIZER = "ascii"
"""FTS5's tokenizer: it splits the stored words only where memvee's own cutting splits
them (:func:`word_pieces`), at ASCII spaces, and keeps every other character in its token.
``unicode61`` cut at the vowel signs memvee keeps in words (Indic, Khmer, Burmese), and a
piece left without its owner's prefix matched other words, even of other scripts."""

MAX_QUERY_TOKENS = 128
"""At most this many index tokens are searched for one query: a term is one token, but a
run of Chinese, Japanese or Korean characters is a token per pair of them (100,000 such
characters made a query of 100,000 tokens: seconds of SQLite, holding its writer). The
first pairs of each term go first."""

_LONGEST_RUN = 4 * MAX_QUERY_TOKENS
"""The characters of a long query term written without spaces (Chinese, Thai) that are
looked at: more cannot give pairs that are searched. Other words stay whole (the index
keeps them whole, however long)."""

PG_VECTOR = "search_vector"
"""The stored column of a row's lexemes on PostgreSQL (see :meth:`SearchIndex.create`)."""
LONGEST_WORD_BYTES = 2046
"""The most UTF-8 bytes of a word either index holds, the longest lexeme PostgreSQL
stores: a longer word (a pasted token, a hash) is cut to its longest start within them,
whole characters, in stored text and in queries alike, on both backends. Left out of
PostgreSQL's vector and query instead, SQLite found such a word and PostgreSQL never did."""
_CUT_FREE_CHARS = LONGEST_WORD_BYTES // 4
"""A word of at most this many characters fits in :data:`LONGEST_WORD_BYTES` whatever it
spells (a character is at most 4 bytes): only a longer one is measured."""
_PG_VECTOR_BYTES = 1_000_000
"""Lexemes past this many bytes of a row are left out (a tsvector holds under 1 MiB)."""
_PG_SHORT = 511
"""ASCII text of at most this many characters needs no look at its lexemes: none is
empty, they fit a vector, and ASCII words hold no quote."""
_PG_FILL_PAGE = 2000
"""Rows whose vectors an older table's migration computes per statement."""


_STEMMED: dict[str, str] = {}
"""Stems of the words seen lately (a stem depends on the word alone): looked up, not
stemmed again, for the words of a conversation keep coming back."""
_STEMMED_MAX = 16_384
MESSAGES_INDEXED = "messages_indexed"
"""The position row holding the last message row number (``messages.id``) indexed."""
_INDEX_PAGE = 2000
"""Messages read and indexed per statement by :meth:`SearchIndex.index_messages`."""
MARKED_CURRENT = "current marked"
"""How the index marked current entries in layouts 15 and 16 (each as a live one), and
how PostgreSQL's, which stores no mark, still names its words (see :func:`indexed_layout`)."""
MARKED_BY_VERSION = "current marked by version"
"""SQLite's layout 17: a current entry marked by its knowledge version's name, so a
promotion marked again every current entry of both versions."""
MARKED_BY_FIRST_WRITE = "current marked by its version's first write"
"""SQLite's layout 18: a current entry marked by its version's first write
(:func:`current_token`), which a promotion leaves as it is."""


def _current_mark_sql(knowledge: str, row: str) -> str:
    """SQL of the mark after its owner token of ``row``, a current knowledge row (an alias
    of the ``knowledge`` table): what :func:`current_token` adds. The smallest log version
    of its user's rows of its knowledge version is one read of the listing's index."""
    return (
        f"'now' || (SELECT min(i.version) FROM {knowledge} AS i "
        f"WHERE i.log_id = {row}.log_id AND i.knowledge_version = {row}.knowledge_version)"
    )


@lru_cache(maxsize=4096)
def owner_token(log_id: str) -> str:
    """The single search token naming a log: its id without hyphens."""
    return UUID(log_id).hex


_stemmers = threading.local()


def index_word(word: str) -> str:
    """One word as the index compares it: folded as stored text is (:func:`fold`: case,
    width, diacritics), stemmed.

    The Snowball English stemmer (PyStemmer) runs on the bare word, so the prefix added
    after it never changes what is stripped.
    """
    return _stems([fold(word)])[0]


def _stems(words: list[str]) -> list[str]:
    """The Snowball stem of each case-folded, diacritic-free word: remembered ones looked
    up, else all stemmed in one call."""
    stemmed = _STEMMED
    try:
        return [stemmed[word] for word in words]
    except KeyError:
        pass
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:  # A Stemmer object is not safe to share between threads.
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    stems: list[str] = stemmer.stemWords(words)
    if any(len(stem) > _CUT_FREE_CHARS for stem in stems):
        stems = [_within_longest(stem) for stem in stems]
    if len(stemmed) > _STEMMED_MAX:
        stemmed.clear()
    stemmed.update(zip(words, stems, strict=True))
    return stems


def _within_longest(stem: str) -> str:
    """``stem`` cut to its longest start of at most :data:`LONGEST_WORD_BYTES` UTF-8 bytes
    (a character cut through is left out whole)."""
    if len(stem) <= _CUT_FREE_CHARS:
        return stem
    return stem.encode()[:LONGEST_WORD_BYTES].decode(errors="ignore")


def text_stems(text: str) -> list[str]:
    """The stems of stored ``text``, in order: what both backends index."""
    return _stems(word_pieces(text, singles=True))


def held_stems(text: str, stems: frozenset[str]) -> frozenset[str]:
    """Those of ``stems`` (stems as :func:`text_stems` cuts stored text) that ``text``
    holds: ``stems.intersection(text_stems(text))``, found without stemming all of
    ``text``, so that a long text costs a scan, not a stemmer call a word (a search among
    60 messages of 20,000 Chinese characters took 5 s, not 0.02 s). A pair or character
    of a script written without spaces is looked for as it is among the text's words;
    another stem is looked for among the text's words that begin with it less its last
    two characters, and only those are stemmed (:func:`_stem_start`)."""
    if not stems:
        return frozenset()
    sought = _sought(stems)
    found = folded_words(text)
    held: set[str] = set()
    if sought.unspaced and not text.isascii():
        joined = " ".join(found)
        held.update(stem for stem in sought.unspaced if stem in joined)
    if sought.spaced:
        distinct = set(found)
        parts = distinct if text.isascii() else {p for w in distinct for p in _spaced_parts(w)}
        maybe = [part for part in parts if part.startswith(sought.starts)]
        if maybe:
            held.update(sought.spaced.intersection(_stems(maybe)))
    return frozenset(held)


@dataclass(frozen=True, slots=True)
class _Sought:
    """Query stems as :func:`held_stems` looks for them."""

    unspaced: frozenset[str]
    """The pairs and characters of scripts written without spaces, looked for as they are."""
    spaced: frozenset[str]
    """The other stems, compared with the stems of the words that may be them."""
    starts: tuple[str, ...]
    """How the words that may be them begin (:func:`_stem_start`)."""


@lru_cache(maxsize=64)
def _sought(stems: frozenset[str]) -> _Sought:
    """``stems`` sorted for :func:`held_stems`, once a query (a search checks every
    candidate against the same stems)."""
    unspaced = frozenset(stem for stem in stems if UNSPACED_RUN.fullmatch(stem))
    spaced = stems - unspaced
    return _Sought(unspaced, spaced, tuple({_stem_start(stem) for stem in spaced}))


def _stem_start(stem: str) -> str:
    """How every word stemmed to ``stem`` begins: ``stem`` less its last two characters
    (one at least). The Snowball English stemmer rewrites a word's ending only, and
    leaves at most the last two characters of its stem unlike the word ("dying" gives
    "die", "happy" "happi"): every one of 125,000 words tried began so."""
    return stem[: max(1, len(stem) - 2)]


def _spaced_parts(word: str) -> list[str]:
    """The parts of a folded ``word`` that :func:`word_pieces` stems whole: the word, or,
    in a word holding runs of a script written without spaces, the parts between them."""
    if word.isascii() or UNSPACED_RUN.search(word) is None:
        return [word]
    return [part for part in UNSPACED_RUN.split(word) if part and not UNSPACED_RUN.fullmatch(part)]


def current_token(owner: str, first_write: int) -> str:
    """The token in the ``owner`` column of an indexed entry that is current (no
    ``valid_until``), in place of the bare owner token, for an entry of the knowledge
    version whose rows of the user begin at log version ``first_write`` (the smallest
    ``version`` of them, see :meth:`SearchIndex.first_write`): a search of a version's
    current entries matches it, so it never meets the ended ones, however many changes a
    fact had, nor another version's (a re-extraction's newer rows crowded a live batch's
    window of a word out, and the reverse). One token either way, so BM25 (which counts a
    row's tokens) ranks alike.

    A promotion keeps the mark: the promoted rows become the live ones, and the live rows
    they replace leave the knowledge table, so live's rows begin where the promoted
    version's began; marked by the version's name, each current entry of both versions
    was marked again (40,000 entries: 29 s of SQLite, writers held off). A version's rows
    are written at log versions no other version's ever were, so no two versions, even of
    one name, or live before and after a promotion, share a mark."""
    return f"{owner}now{first_write}"


def owned_words(log_id: str, text: str) -> str:
    """``text`` as the index stores it: each word stemmed, then prefixed with its owner.

    Query terms go through the same steps (:func:`owned_terms`), so both sides meet.
    """
    return _owned(owner_token(log_id), text)


def _owned(owner: str, text: str) -> str:
    stems = text_stems(text)
    if not stems:
        return ""
    return owner + f" {owner}".join(stems)


def owned_terms(log_id: str, term: str) -> list[str]:
    """One query term as the index stores it for log ``log_id``: one token, or the pairs
    of a run of a script written without spaces (:func:`word_pieces`)."""
    owner = owner_token(log_id)
    return [owner + stem for stem in _stems(word_pieces(term))]


def query_words(terms: Iterable[str]) -> list[str]:
    """The distinct words query ``terms`` look up in either backend's index: each term as
    :func:`owned_terms` cuts it, without the owner, at most :data:`MAX_QUERY_TOKENS` of
    them, the terms taking turns (each one's first pairs first)."""
    pieces = [_stems(word_pieces(_bounded(term)))[:MAX_QUERY_TOKENS] for term in terms]
    interleaved = (w for turn in itertools.zip_longest(*pieces) for w in turn if w)
    return list(itertools.islice(dict.fromkeys(interleaved), MAX_QUERY_TOKENS))


def own_and_added_words(own: Iterable[str], added: Iterable[str]) -> tuple[list[str], list[str]]:
    """The words a query's ``own`` terms look up (:func:`query_words`), and those the
    terms its topics ``added`` look up besides, within :data:`MAX_QUERY_TOKENS` in all:
    a word both look up ("live" of "lives") counts as the query's own."""
    words = query_words(own)
    mine = set(words)
    extra = [word for word in query_words(added) if word not in mine]
    return words, extra[: MAX_QUERY_TOKENS - len(words)]


def _bounded(term: str) -> str:
    """``term``, cut to :data:`_LONGEST_RUN` characters if it is that long and holds runs
    of a script written without spaces (it becomes their pairs)."""
    if len(term) <= _LONGEST_RUN or term.isascii():
        return term
    head = term[:_LONGEST_RUN]
    return term if UNSPACED_RUN.search(fold(head)) is None else head


def pg_vector(log_id: str, text: str) -> str:
    """A row's ``search_vector`` on PostgreSQL, as a ``tsvector`` literal: the owner's
    token at weight A, then each stem of ``text`` that SQLite's index holds at its
    position (``ts_rank`` counts them), as it is: PostgreSQL parses nothing again. The
    server merges a stem's positions (keeping 256 of them, numbered to 16,383)."""
    stems = text_stems(text)
    if len(text) > _PG_SHORT or not text.isascii():
        stems = _pg_lexemes(stems)
    owner = f"o{owner_token(log_id)}:1A"
    return owner + "".join([f" '{stem}':{at}" for at, stem in enumerate(stems, 2)])


def pg_query(terms: Iterable[str]) -> str:
    """The ``tsquery`` literal of query ``terms`` ORed, as :func:`pg_vector` stores them
    (``""``: no word to look up)."""
    return pg_words(query_words(terms))


def pg_words(words: list[str]) -> str:
    """The ``tsquery`` literal of the index ``words`` (:func:`query_words`) ORed."""
    return " | ".join(f"'{word}'" for word in _pg_lexemes(words))


def _pg_lexemes(words: list[str]) -> list[str]:
    """``words`` as PostgreSQL can store them: none empty (a lone halfwidth sound mark,
    "ﾟ", folds to nothing, which a ``tsvector`` refuses), no more than a vector holds,
    quoted where need be (none is too long: :func:`_stems` cuts them)."""
    words = [w for w in words if w]
    joined = "".join(words)
    if len(joined) * 4 + len(words) * 9 > _PG_VECTOR_BYTES:
        words = _fitting(words)
    if "'" in joined or "\\" in joined:
        words = [w.replace("\\", "\\\\").replace("'", "''") for w in words]
    return words


def _fitting(words: list[str]) -> list[str]:
    """The first of ``words`` a ``tsvector`` holds.

    Its size counts, for each distinct word, an entry of 4 bytes, the word, a byte of
    alignment and 2 for its count of positions, and 2 bytes a position (256 at most);
    counting the words' bytes alone let a long Chinese text (a pair and a single per
    character) pass 1 MiB and fail its write."""
    kept: list[str] = []
    seen: dict[str, int] = {}
    size = 0
    for word in words:
        length = len(word) if word.isascii() else len(word.encode())
        times = seen.get(word, 0)
        size += length + 9 if times == 0 else 2 if times < 256 else 0
        if size > _PG_VECTOR_BYTES:
            break
        seen[word] = times + 1
        kept.append(word)
    return kept


@dataclass(frozen=True, slots=True)
class MessageBodies:
    """A page of messages as the full-text index stores them, read after indexed
    position ``after``: the ids of every row read, and the bodies of those with words."""

    after: int
    ids: list[int]
    bodies: list[tuple[int, str]]


class SearchIndex:
    """The index tables (SQLite) or indexes (PostgreSQL) of one set of projection tables.

    On SQLite, entries go in a plain FTS5 table (entries are few, and promoted versions
    leave the knowledge table while their index rows stay). Messages, the bulk of a
    memory, go in a contentless FTS5 table, which keeps the index and no copy of the
    words, under the message row's ``id``: a search maps its hits back through it, and
    the rows above the ``messages_indexed`` position are those still to index.
    Erasing a user's message rows needs their indexed words again, so they are
    recomputed from the messages (the stemmer's version is part of the schema, see
    :func:`search_fingerprint`, so they are always recomputed the same way).
    """

    _LEGACY = ("messages_search",)
    """Index tables of earlier layouts, dropped with the index."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        metadata = MetaData()
        self.knowledge_fts = _fts_table(f"{tables.prefix}knowledge_fts", metadata)
        self.messages_fts = Table(f"{tables.prefix}messages_fts", metadata, Column("body", Text))
        position, messages = tables.position.name, tables.messages.name
        self._indexed_sql = f"SELECT position FROM {position} WHERE name = ?"
        self._waiting_sql = (
            f"SELECT id, log_id, content, name FROM {messages} WHERE id > ? ORDER BY id LIMIT ?"
        )
        self._ids_sql = f"SELECT id FROM {messages} WHERE id > ? AND id <= ? ORDER BY id"
        self._count_sql = f"SELECT count(*) FROM {messages} WHERE id > ? AND id <= ?"
        self._index_sql = f"INSERT INTO {self.messages_fts.name} (rowid, body) VALUES (?, ?)"
        self._move_indexed_sql = f"UPDATE {position} SET position = ? WHERE name = ?"
        self._first_write_sql = (
            f"SELECT min(version) FROM {tables.knowledge.name} "
            "WHERE log_id = ? AND knowledge_version = ?"
        )
        self._unindexed_sql = (
            f"SELECT (SELECT coalesce(max(id), 0) FROM {tables.messages.name}) > "
            f"(SELECT position FROM {tables.position.name} WHERE name = ?)"
        )

    def create(self, connection: Connection) -> None:
        """Create the index if it is missing."""
        if _is_sqlite(connection):
            k, m = self.knowledge_fts.name, self.messages_fts.name
            connection.execute(
                text(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {k} USING fts5("
                    f"owner, body, item_id UNINDEXED, tokenize='{_TOKENIZER}')"
                )
            )
            # An entry's row by its id, for marking it again when it ends (see write).
            connection.execute(text(f"CREATE INDEX IF NOT EXISTS {k}_item ON {k}_content (c2)"))
            connection.execute(
                text(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {m} USING fts5("
                    f"body, content='', tokenize='{_TOKENIZER}')"
                )
            )
        elif connection.dialect.name == "postgresql":
            catalog = inspect(connection)
            for table in (self.tables.knowledge, self.tables.messages):
                columns = {c["name"]: c for c in catalog.get_columns(table.name)}
                found = columns.get(PG_VECTOR)
                # Earlier layouts had no column, or one PostgreSQL parsed from the raw text
                # (generated): a plain one takes its place, filled as the writes fill it.
                # Only then: an ALTER locks the table, even to do nothing.
                if found is None or found.get("computed"):
                    self._pg_migrate(connection, table)
                connection.execute(text(f"DROP INDEX IF EXISTS {table.name}_search"))
                connection.execute(
                    text(
                        f"CREATE INDEX IF NOT EXISTS {table.name}_{PG_VECTOR} ON {table.name} "
                        f"USING gin ({PG_VECTOR})"
                    )
                )

    def pg_derived(self) -> dict[str, Derived]:
        """The ``search_vector`` columns the projection writes fill on PostgreSQL, by
        table role: each inserted entry's and message's :func:`pg_vector`."""
        return {
            "knowledge": Derived(PG_VECTOR, TSVECTOR(), _entry_vector),
            "messages": Derived(PG_VECTOR, TSVECTOR(), _message_vector),
        }

    def _pg_migrate(self, connection: Connection, table: Table) -> None:
        """Give ``table``, of an earlier layout, the plain ``search_vector`` column, each
        row's filled as :func:`pg_vector` makes it, a page of rows per statement (the GIN
        index is made once they are in)."""
        name = table.name
        connection.execute(text(f"DROP INDEX IF EXISTS {name}_{PG_VECTOR}"))
        connection.execute(text(f"ALTER TABLE {name} DROP COLUMN IF EXISTS {PG_VECTOR}"))
        connection.execute(text(f"ALTER TABLE {name} ADD COLUMN {PG_VECTOR} tsvector"))
        if table is self.tables.knowledge:
            key, read, key_type = "entry_id", "text, NULL", "text"
        else:
            key, read, key_type = "id", "content, name", "integer"
        page = text(
            f"SELECT {key}, log_id, {read} FROM {name} WHERE {key} > :after "
            f"ORDER BY {key} LIMIT {_PG_FILL_PAGE}"
        )
        fill = text(
            f"UPDATE {name} SET {PG_VECTOR} = v.vector::tsvector FROM unnest("
            f"CAST(:keys AS {key_type}[]), CAST(:vectors AS text[])) AS v(key, vector) "
            f"WHERE {name}.{key} = v.key"
        )
        after: Any = "" if key_type == "text" else 0
        while rows := connection.execute(page, {"after": after}).all():
            vectors = [
                pg_vector(log_id, spoken(said, speaker)) for _, log_id, said, speaker in rows
            ]
            connection.execute(fill, {"keys": [row[0] for row in rows], "vectors": vectors})
            after = rows[-1][0]

    def drop(self, connection: Connection) -> None:
        """Drop the index tables (PostgreSQL's indexes go with their tables)."""
        if _is_sqlite(connection):
            legacy = [f"{self.tables.prefix}{name}" for name in self._LEGACY]
            for name in (self.knowledge_fts.name, self.messages_fts.name, *legacy):
                connection.execute(text(f"DROP TABLE IF EXISTS {name}"))

    def write(
        self,
        connection: Connection,
        events: Iterable[Any],
        knowledge: tuple[list[Row], list[Row], list[Hashable]] = ([], [], []),
    ) -> None:
        """Index the entries ``events`` extract (SQLite), marking those current by the
        net ``knowledge`` rows written with them (inserted, updated, deleted), and mark
        again the stored entries whose ``valid_until`` those rows changed; their messages
        wait for :meth:`index_messages`.

        A promotion marks nothing again (see :func:`current_token`): the rows it moves to
        live keep their mark, and those it deletes keep theirs, which no search reads
        (their version's first write is no version's any more; :meth:`listings` shows
        them bare, as a refold that deletes them in the fold that wrote them leaves them).
        """
        inserted, updated, _ = knowledge
        cursor = connection.connection.driver_connection
        assert cursor is not None
        current = [row for row in inserted if row["valid_until"] is None]
        first_writes = {
            (log_id, version): self._first_write(cursor, log_id, version)
            for log_id, version in {(row["log_id"], row["knowledge_version"]) for row in current}
        }
        marks = {
            row["entry_id"]: first_writes[row["log_id"], row["knowledge_version"]]
            for row in current
        }
        entries = [
            (_marked(row["owner"], marks.get(row["item_id"])), row["body"], row["item_id"])
            for e in events
            if type(e) in ENTRY_EVENTS
            for _, row in search_fold(self, e)
        ]
        ended = [row["entry_id"] for row in updated if "valid_until" in row]
        if not (entries or ended):
            return
        k = self.knowledge_fts.name
        cursor.executemany(
            f"INSERT INTO {k} (owner, body, item_id) VALUES (?, ?, ?)",
            [(owner, body, id_param(item)) for owner, body, item in entries],
        )
        if ended:
            # The owner column holds its owner's token whether marked or not; the mark is
            # read off the entry's knowledge row as written. A row whose mark stays (an end
            # moved) is left alone: an FTS5 update deletes and inserts every token of it.
            knowledge_rows = self.tables.knowledge.name
            mark = (
                f"coalesce((SELECT {_current_mark_sql(knowledge_rows, 'n')} "
                f"FROM {knowledge_rows} AS n WHERE n.entry_id = ?1 AND n.valid_until IS NULL), '')"
            )
            cursor.executemany(
                f"UPDATE {k} SET owner = substr(owner, 1, 32) || {mark} "
                f"WHERE rowid IN (SELECT id FROM {k}_content "
                f"WHERE c2 = ?1 AND substr(c0, 33) IS NOT {mark})",
                [(id_param(str(key)),) for key in ended],
            )

    def first_write(self, connection: Connection, log_id: str, version: str) -> int | None:
        """The log version of the first entry of knowledge ``version`` the log ``log_id``
        holds (SQLite; ``None`` when it holds none): what its current entries are marked
        by (:func:`current_token`)."""
        cursor = connection.connection.driver_connection
        assert cursor is not None
        return self._first_write(cursor, log_id, version)

    def _first_write(self, cursor: Any, log_id: str, version: str) -> int | None:
        found = cursor.execute(self._first_write_sql, (id_param(str(log_id)), version))
        first: int | None = found.fetchone()[0]
        return first

    def mark_by_first_write(self, connection: Connection) -> int:
        """Mark again, in SQLite's index of an earlier layout (16 or 17), the current
        entries its marks named otherwise (each as a live one, or by its version's name):
        the one change of layout 18 (:func:`current_token`), made in place in the caller's
        transaction, where a refold of the whole log took seconds to minutes. Returns the
        index rows marked."""
        k, knowledge = self.knowledge_fts.name, self.tables.knowledge.name
        mark = _current_mark_sql(knowledge, "n")
        return int(
            connection.exec_driver_sql(
                f"UPDATE {k} SET owner = substr(owner, 1, 32) || (SELECT {mark} "
                f"FROM {knowledge} AS n WHERE n.entry_id = {k}.item_id) "
                f"WHERE rowid IN (SELECT f.id FROM {k}_content AS f JOIN {knowledge} AS n "
                f"ON n.entry_id = f.c2 WHERE n.valid_until IS NULL "
                f"AND substr(f.c0, 33) IS NOT {mark})"
            ).rowcount
        )

    def unindexed(self, connection: Connection) -> bool:
        """Whether some message waits to be indexed (SQLite; a quick look, no lock)."""
        if not _is_sqlite(connection):
            return False
        cursor = connection.connection.driver_connection
        assert cursor is not None
        found = cursor.execute(self._unindexed_sql, (MESSAGES_INDEXED,)).fetchone()
        return bool(found and found[0])

    def index_messages(self, connection: Connection, limit: int | None = None) -> int:
        """Index the messages that wait (at most ``limit``), oldest row first; returns how
        many were read. Run it in a transaction that holds off every other writer, so no
        message is indexed twice. A message without a word is passed over (no search could
        find it)."""
        if not _is_sqlite(connection):
            return 0
        done = 0
        while limit is None or done < limit:
            page = _INDEX_PAGE if limit is None else min(_INDEX_PAGE, limit - done)
            bodies = self.bodies(connection, page)
            if bodies is None:
                break
            self.write_bodies(connection, bodies)
            done += len(bodies.ids)
            if len(bodies.ids) < page:
                break
        return done

    def bodies(self, connection: Connection, limit: int) -> MessageBodies | None:
        """The next ``limit`` messages that wait for the index, as it would store them
        (SQLite); ``None`` when none waits. Only reads: a rebuild builds them while
        writers go on, and writes them once they are held off (:meth:`write_bodies`)."""
        cursor = connection.connection.driver_connection
        assert cursor is not None
        found = cursor.execute(self._indexed_sql, (MESSAGES_INDEXED,)).fetchone()
        after = found[0] if found else 0
        rows = cursor.execute(self._waiting_sql, (after, limit)).fetchall()
        if not rows:
            return None
        owners: dict[bytes | str, str] = {}
        bodies = []
        for number, log_id, content, name in rows:
            owner = owners.get(log_id)
            if owner is None:
                owner = owners[log_id] = _owner_of(log_id)
            body = _owned(owner, spoken(content, name))
            if body:
                bodies.append((number, body))
        return MessageBodies(after, [row[0] for row in rows], bodies)

    def write_bodies(self, connection: Connection, bodies: MessageBodies) -> None:
        """Store ``bodies`` in the index and move the indexed position past them."""
        cursor = connection.connection.driver_connection
        assert cursor is not None
        cursor.executemany(self._index_sql, bodies.bodies)
        cursor.execute(self._move_indexed_sql, (bodies.ids[-1], MESSAGES_INDEXED))

    def still_waiting(self, connection: Connection, bodies: MessageBodies) -> bool:
        """Whether ``bodies`` are still the next messages to index, read in
        ``connection`` with writers held off: the indexed position where it was, and the
        same message rows in their range (none erased meanwhile), counted where the page
        held every row number of its range (row numbers are distinct integers)."""
        cursor = connection.connection.driver_connection
        assert cursor is not None
        found = cursor.execute(self._indexed_sql, (MESSAGES_INDEXED,)).fetchone()
        if (found[0] if found else 0) != bodies.after:
            return False
        after, last, count = bodies.after, bodies.ids[-1], len(bodies.ids)
        if last - after == count:  # every row number of its range (as a rebuild's pages)
            (rows,) = cursor.execute(self._count_sql, (after, last)).fetchone()
            return bool(rows == count)
        ids = cursor.execute(self._ids_sql, (after, last)).fetchall()
        return [row[0] for row in ids] == bodies.ids

    def erased(self, connection: Connection) -> None:
        """Message rows were deleted: the indexed position moves back to the last row left,
        because SQLite numbers the next row after it and that row must wait to be indexed."""
        if not _is_sqlite(connection):
            return
        position, messages = self.tables.position.name, self.tables.messages.name
        connection.exec_driver_sql(
            f"UPDATE {position} SET position = min(position, "
            f"(SELECT coalesce(max(id), 0) FROM {messages})) WHERE name = ?",
            (MESSAGES_INDEXED,),
        )

    def forget(self, connection: Connection, log_id: str) -> int:
        """Delete one log's index rows; returns how many went.

        Runs before the log's message rows go: their words are needed to unindex them.
        """
        if not _is_sqlite(connection):
            return 0
        owner = owner_token(log_id)
        k = self.knowledge_fts.name
        erased = connection.execute(
            text(f"DELETE FROM {k} WHERE rowid IN (SELECT rowid FROM {k} WHERE {k} MATCH :q)"),
            {"q": f'owner : ("{owner}" *)'},  # the bare token, or marked current
        ).rowcount
        erased += self._forget_messages(connection, log_id)
        for name in (k, self.messages_fts.name):
            # Rewrites the index b-trees, so the deleted words leave the file too.
            connection.execute(text(f"INSERT INTO {name}({name}) VALUES('optimize')"))
        return erased

    def _forget_messages(self, connection: Connection, log_id: str) -> int:
        m, messages = self.messages_fts.name, self.tables.messages
        cursor = connection.connection.driver_connection
        assert cursor is not None
        # Every indexed word of the log starts with its owner token: one prefix query.
        found = [
            r[0]
            for r in cursor.execute(
                f"SELECT rowid FROM {m} WHERE {m} MATCH ?", (f'"{owner_token(log_id)}" *',)
            )
        ]
        unindexed: list[tuple[int, str]] = []
        for start in range(0, len(found), 500):
            chunk = found[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = cursor.execute(
                f"SELECT id, content, name FROM {messages.name} WHERE id IN ({marks})", chunk
            )
            unindexed += [(i, owned_words(log_id, spoken(c, n))) for i, c, n in rows]
        if len(unindexed) < len(found):
            unindexed += self._orphans(cursor, log_id, set(found) - {i for i, _ in unindexed})
        cursor.executemany(f"INSERT INTO {m} ({m}, rowid, body) VALUES ('delete', ?, ?)", unindexed)
        return len(unindexed)

    def _orphans(self, cursor: Any, log_id: str, rowids: set[int]) -> list[tuple[int, str]]:
        """The indexed words of ``rowids``, whose message rows are gone (deleted by hand):
        a contentless index unindexes a row only given its words, so they are read back
        from the index itself, in their order (each term tokenizes as itself)."""
        words = self._word_instances(cursor)
        owner = owner_token(log_id)
        found = cursor.execute(
            f"SELECT doc, term FROM {words} WHERE term >= ? AND term < ? ORDER BY doc, offset",
            (owner, owner[:-1] + chr(ord(owner[-1]) + 1)),  # the terms owner starts
        )
        return [
            (doc, " ".join(term for _, term in terms))
            for doc, terms in groupby(found, key=itemgetter(0))
            if doc in rowids
        ]

    def _word_instances(self, driver: Any) -> str:
        """The name of a table of the messages index's words, one row per word of each
        message (doc, term, offset), made on ``driver``'s connection if missing."""
        m = self.messages_fts.name
        words = f"temp.{m}_words"
        driver.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {words} USING fts5vocab(main, {m}, instance)"
        )
        return words

    def listings(self, connection: Connection) -> list[Listing]:
        """The index's rows in a stable order, for comparing a rebuild with the live index
        (see :mod:`projections.comparison`): knowledge rows by entry, and each message's
        words with their positions, a row per message (row ids are not kept equal by a
        rebuild), an entry's owner bare once its knowledge row is gone. Words whose
        message row is gone come first, as one row without an id.
        On PostgreSQL, each row's ``search_vector`` by the row's id.
        """
        if not _is_sqlite(connection):
            return [
                self._pg_listing(connection, self.tables.knowledge, "entry_id"),
                self._pg_listing(connection, self.tables.messages, "message_id"),
            ]
        driver = connection.connection.driver_connection
        assert driver is not None
        prefix, k, m = self.tables.prefix, self.knowledge_fts.name, self.messages_fts.name
        words = self._word_instances(driver)
        # An entry a promotion deleted keeps the mark it had (see write): a refold that
        # deletes it in the fold that wrote it leaves it bare, and no search reads it.
        knowledge = driver.execute(
            "SELECT f.item_id, CASE WHEN n.entry_id IS NULL THEN substr(f.owner, 1, 32) "
            f"ELSE f.owner END, f.body FROM {k} AS f "
            f"LEFT JOIN {self.tables.knowledge.name} AS n ON n.entry_id = f.item_id "
            "ORDER BY 1, f.rowid"
        )
        instances = driver.execute(
            f"SELECT s.message_id, v.term, v.offset FROM {words} AS v "
            f"LEFT JOIN {self.tables.messages.name} AS s ON s.id = v.doc ORDER BY 1, 3"
        )
        word = itemgetter(1, 2)
        by_message = (
            (message_id, tuple(map(word, found)))
            for message_id, found in groupby(instances, key=itemgetter(0))
        )
        return [
            Listing(k.removeprefix(prefix), (((sortable(r[0]),), r) for r in knowledge), _id_first),
            Listing(
                m.removeprefix(prefix), (((sortable(r[0]),), r) for r in by_message), _id_first
            ),
        ]

    def _pg_listing(self, connection: Connection, table: Table, key: str) -> Listing:
        """``table``'s stored vectors (as text) by the row's ``key``, in code point order."""
        rows = connection.execution_options(yield_per=_INDEX_PAGE).execute(
            text(f'SELECT {key}, {PG_VECTOR}::text FROM {table.name} ORDER BY {key} COLLATE "C"')
        )
        role = f"{table.name.removeprefix(self.tables.prefix)}_{PG_VECTOR}"
        return Listing(role, (((sortable(row[0]),), tuple(row)) for row in rows))


def _id_first(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row whose first value is a stored id (or none), as read back."""
    return (None if row[0] is None else id_text(row[0]), *row[1:])


def search_fingerprint(marked: str = MARKED_BY_FIRST_WRITE) -> int:
    """A number that changes when indexed words would: the stemmer's version, the Unicode
    version folding follows (both the installation's) and :func:`indexed_layout` (stored
    with the schema; a change refolds the projections), its current entries ``marked``
    as there."""
    unicode = unicodedata.unidata_version
    layout = indexed_layout(marked)
    return zlib.crc32(f"{Stemmer.version()}|unicode {unicode}|{layout}".encode())


def indexed_layout(marked: str = MARKED_BY_FIRST_WRITE) -> str:
    """How memvee cuts, folds and indexes words, named (the stemmer's and Unicode's
    versions, which the installation brings, aside): a change to it comes with a new
    schema version, so that an older memvee refuses the database rather than laying it
    out again in its own way. ``marked`` names how current entries are marked: SQLite's
    index of this layout by :data:`MARKED_BY_FIRST_WRITE`, of earlier ones by
    :data:`MARKED_BY_VERSION` (17) or :data:`MARKED_CURRENT` (16), which PostgreSQL's
    keeps: it stores no mark (see :data:`projections.projector.POSTGRES_SCHEMA_VERSION`)."""
    return f"{_TOKENIZER}|{WORDS_LAYOUT}|cut {LONGEST_WORD_BYTES} bytes|{marked}"


def search_fold(index: SearchIndex, e: Any) -> Iterator[tuple[Table, dict[str, Any]]]:
    """SQLite index rows (their table and values) of every entry ever extracted (live or
    not). Messages are indexed from their rows instead (:meth:`SearchIndex.index_messages`).

    Entries are never removed when they end or a version is promoted: the rankers join
    the knowledge rows, which say what is valid. The owner column is the bare owner's
    token here; :meth:`SearchIndex.write` marks the current ones, by their knowledge
    version's first write (:func:`current_token`), and marks them again when they end.
    """
    if type(e) in ENTRY_EVENTS:
        log_id = str(e.originator_id)
        owner = owner_token(log_id)
        for entry in e.entries:
            yield (
                index.knowledge_fts,
                {
                    "owner": owner,
                    "body": owned_words(log_id, entry["text"]),
                    "item_id": entry["entry_id"],
                },
            )


def _marked(owner: str, first_write: int | None) -> str:
    """The owner column of an indexed entry: ``owner``, or, for a current entry of the
    knowledge version first written at ``first_write``, its current token."""
    return owner if first_write is None else current_token(owner, first_write)


def _entry_vector(row: Row) -> str:
    return pg_vector(row["log_id"], row["text"])


def _message_vector(row: Row) -> str:
    return pg_vector(row["log_id"], spoken(row["content"], row["name"]))


def pg_owner_query(log_id: str) -> str:
    """The PostgreSQL ``simple`` text query of the owner's token of ``log_id``, at weight A
    (no word of a text is stored at that weight, so no text can pass for an owner)."""
    return f"o{owner_token(log_id)}:A"


def spoken(content: str, name: str | None) -> str:
    """What a message is indexed and embedded as: its words, after its speaker's name."""
    return content if not name else f"{name}: {content}"


def _owner_of(log_id: bytes | str) -> str:
    """The owner token of a log id as a row stores it (see ``stored_id``)."""
    return log_id.hex() if isinstance(log_id, bytes) else owner_token(log_id)


def _fts_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name, metadata, Column("owner", Text), Column("body", Text), Column("item_id", Text)
    )


def _is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite"
