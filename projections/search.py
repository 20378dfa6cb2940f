"""The full-text index: knowledge entries and messages, searchable per user.

SQLite keeps two FTS5 tables beside the projections (one for entries, one for messages),
filled by :func:`search_fold` in the same transaction as the rows they index. Every
indexed word is stemmed, then prefixed with its owner (the log id as 32 hex digits), so
each user has posting lists of their own: a search is scoped to one user by the very terms
it looks up, and costs what that user's matches cost, however many other users share the
words. The stemming happens here, before the prefix, because a stemmer run on the prefixed
token strips differently ("careful" and "career" would meet as ``car``).
PostgreSQL needs no extra rows: expression GIN indexes over the knowledge and message
text do the job, and the rankers query them directly.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from uuid import UUID

import Stemmer
from sqlalchemy import Column, Connection, MetaData, Table, Text, text

from events import UserLog
from projections.tables import ProjectionTables

__all__ = [
    "PG_SPOKEN",
    "SearchIndex",
    "index_word",
    "owned_term",
    "owned_words",
    "owner_token",
    "spoken",
]

_TOKENIZER = "unicode61 remove_diacritics 2"
PG_CONFIG = "english"
"""The PostgreSQL text-search configuration (stemming and stop words)."""


_WORD = re.compile(r"[^\W_]+")


@lru_cache(maxsize=4096)
def owner_token(log_id: str) -> str:
    """The single search token naming a log: its id without hyphens."""
    return UUID(log_id).hex


_stemmers = threading.local()


def index_word(word: str) -> str:
    """One word as the index compares it: case-folded, without diacritics, stemmed.

    The Snowball English stemmer (PyStemmer) runs on the bare word, so the prefix added
    after it never changes what is stripped.
    """
    word = word.casefold()
    if not word.isascii():
        word = "".join(
            c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)
        )
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:  # A Stemmer object is not safe to share between threads.
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    stem: str = stemmer.stemWord(word)
    return stem


def owned_words(log_id: str, text: str) -> str:
    """``text`` as the index stores it: each word stemmed, then prefixed with its owner.

    Query terms go through the same steps (:func:`owned_term`), so both sides meet.
    """
    owner = owner_token(log_id)
    return " ".join(owner + index_word(word) for word in _WORD.findall(text))


def owned_term(log_id: str, term: str) -> str:
    """One query term as the index stores it for log ``log_id``."""
    return owner_token(log_id) + index_word(term)


class SearchIndex:
    """The index tables (SQLite) or indexes (PostgreSQL) of one set of projection tables."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        metadata = MetaData()
        self.knowledge_fts = _fts_table(f"{tables.prefix}knowledge_fts", metadata)
        self.messages_fts = _fts_table(f"{tables.prefix}messages_fts", metadata)

    def create(self, connection: Connection) -> None:
        """Create the index if it is missing."""
        if _is_sqlite(connection):
            for table in (self.knowledge_fts, self.messages_fts):
                connection.execute(
                    text(
                        f"CREATE VIRTUAL TABLE IF NOT EXISTS {table.name} USING fts5("
                        f"owner, body, item_id UNINDEXED, tokenize='{_TOKENIZER}')"
                    )
                )
        elif connection.dialect.name == "postgresql":
            k, m = self.tables.knowledge, self.tables.messages
            for table, indexed in ((k, "text"), (m, PG_SPOKEN)):
                connection.execute(
                    text(
                        f"CREATE INDEX IF NOT EXISTS {table.name}_search ON {table.name} "
                        f"USING gin (to_tsvector('{PG_CONFIG}', {indexed}))"
                    )
                )

    def drop(self, connection: Connection) -> None:
        """Drop the index tables (PostgreSQL's indexes go with their tables)."""
        if _is_sqlite(connection):
            for table in (self.knowledge_fts, self.messages_fts):
                connection.execute(text(f"DROP TABLE IF EXISTS {table.name}"))

    def forget(self, connection: Connection, log_id: str) -> int:
        """Delete one log's index rows; returns how many went."""
        if not _is_sqlite(connection):
            return 0
        erased = 0
        for table in (self.knowledge_fts, self.messages_fts):
            result = connection.execute(
                text(
                    f"DELETE FROM {table.name} WHERE rowid IN "
                    f"(SELECT rowid FROM {table.name} WHERE {table.name} MATCH :owner)"
                ),
                {"owner": f'owner : "{owner_token(log_id)}"'},
            )
            erased += result.rowcount
            # Rewrites the index b-trees, so the deleted words leave the file too.
            connection.execute(text(f"INSERT INTO {table.name}({table.name}) VALUES('optimize')"))
        return erased

    def dump(self, connection: Connection) -> dict[str, list[tuple[Any, ...]]]:
        """Every index row in a stable order, for comparing a rebuild with the live index."""
        if not _is_sqlite(connection):
            return {}
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in (self.knowledge_fts, self.messages_fts):
            role = table.name.removeprefix(self.tables.prefix)
            rows = connection.execute(
                text(f"SELECT item_id, owner, body FROM {table.name} ORDER BY item_id, rowid")
            )
            out[role] = [tuple(r) for r in rows]
        return out


def search_fold(index: SearchIndex, e: Any) -> Iterator[tuple[Table, dict[str, Any]]]:
    """SQLite index rows (their table and values): every message, and every entry ever
    extracted (live or not).

    Entries are never removed when they end or a version is promoted: the rankers join
    the knowledge rows, which say what is valid, so the index only has to grow.
    """
    log_id = str(e.originator_id)
    if isinstance(e, UserLog.MessageAdded):
        yield (
            index.messages_fts,
            {
                "owner": owner_token(log_id),
                "body": owned_words(log_id, spoken(e.content, e.name)),
                "item_id": e.message_id,
            },
        )
    elif isinstance(e, UserLog.KnowledgeExtracted | UserLog.KnowledgeReextracted):
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


PG_SPOKEN = "coalesce(name || ': ', '') || content"
"""A message row as PostgreSQL searches it: :func:`spoken`, in SQL (the GIN index's
expression, which the ranking query repeats word for word so that the index is used)."""


def spoken(content: str, name: str | None) -> str:
    """What a message is indexed and embedded as: its words, after its speaker's name."""
    return content if not name else f"{name}: {content}"


def _fts_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name, metadata, Column("owner", Text), Column("body", Text), Column("item_id", Text)
    )


def _is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite"
