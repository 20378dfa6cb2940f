"""BM25 of one user's rows of a SQLite FTS5 index, counted over that user's rows alone.

FTS5's own ``bm25()`` counts the rows, their average length and (here, since every
indexed word carries its owner's prefix) nothing else over the whole table: a user's
ranking moved as other users' rows filled it, so one user's results told of how much the
others had said. This is the same formula (FTS5's k1, b and floor of a word's weight),
with the user's rows and tokens from :meth:`~projections.search.SearchIndex.counted`,
and each word's rows and occurrences read from the index's ``fts5vocab`` instance table:
the words are the user's own, so only the user's rows are read.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projections.search import row_tokens

__all__ = ["K1", "B", "BodyWords", "UserBm25"]

K1 = 1.2
"""FTS5's k1: how soon more occurrences of a word in a row stop counting."""
B = 0.75
"""FTS5's b: how much a row's length lowers its score."""
_VOCABS = "memvee_fts5vocab"
"""The key, in a DBAPI connection's info, of the vocab tables made on it (temporary:
one connection's own)."""
_LEAST_WEIGHT = 1e-6
"""The weight FTS5 gives a word found in half a user's rows or more (its IDF would be
zero or negative)."""


@dataclass(frozen=True, slots=True)
class BodyWords:
    """The index words a search looks up for one user: ``own`` (the query's) and
    ``added`` (its topics'), each prefixed with the owner; with ``current``, only rows
    whose owner column is ``current`` are ranked (entries in force)."""

    own: Sequence[str]
    added: Sequence[str]
    current: str | None = None


class UserBm25:
    """Ranks one user's rows of the FTS5 table ``fts``.

    ``column`` names the one column the words are looked up in (``None``: the table has
    one); ``owner_column`` is that of the owner token in the ``_content`` table (entries
    only), which says whether an entry is current.
    """

    def __init__(self, fts: str, column: str | None = None, owner_column: str | None = None):
        self.vocab = f"temp.{fts}_instances"
        self.create_vocab = (
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.vocab} "
            f"USING fts5vocab(main, {fts}, instance)"
        )
        in_column = "" if column is None else f" AND v.col = '{column}'"
        marked = "NULL" if owner_column is None else f"c.{owner_column}"
        joined = "" if owner_column is None else f" JOIN {fts}_content AS c ON c.id = v.doc"
        self.sql = (
            f"SELECT v.doc, v.term, d.sz, {marked} FROM {self.vocab} AS v "
            f"JOIN {fts}_docsize AS d ON d.id = v.doc{joined} "
            f"WHERE v.term IN ({{terms}}){in_column}"
        )

    def scored(
        self, connection: Any, cursor: Any, words: BodyWords, rows: int, tokens: int
    ) -> list[tuple[bool, float, int]]:
        """(whether it has one of the query's own words, score, row id) of every row
        ``words`` find (the current ones only, if asked): the larger, the better, so rows
        scored alike go newest first. ``rows`` and ``tokens`` are the user's in this
        index; ``connection`` is the SQLAlchemy one whose DBAPI ``cursor`` reads."""
        terms = list(dict.fromkeys([*words.own, *words.added]))
        if not terms:
            return []
        made: set[str] = connection.connection.info.setdefault(_VOCABS, set())
        if self.vocab not in made:
            cursor.execute(self.create_vocab)
            made.add(self.vocab)
        sql = self.sql.format(terms=", ".join("?" * len(terms)))
        found = cursor.execute(sql, terms).fetchall()
        return _scores(found, set(words.own), words.current, rows, tokens)


def best(scored: list[tuple[bool, float, int]], fetch: int) -> dict[int, tuple[float, bool]]:
    """The best ``fetch`` of the rows :meth:`UserBm25.scored` scored, best first: row id
    to (score, whether it has one of the query's own words), those that have first."""
    return {doc: (score, mine) for mine, score, doc in heapq.nlargest(fetch, scored)}


def _scores(
    found: list[tuple[int, str, bytes, str | None]],
    own: set[str],
    current: str | None,
    rows: int,
    tokens: int,
) -> list[tuple[bool, float, int]]:
    """(whether it has an ``own`` word, BM25, row id) of each row in the instances
    ``found`` (row id, word, FTS5 size record, owner column): every row counts for the
    words' frequencies, only the ``current`` ones (if given) are scored."""
    counts: dict[int, dict[str, int]] = {}
    sizes: dict[int, bytes] = {}
    seen: dict[str, int] = {}
    for doc, term, size, owner in found:
        frequencies = counts.get(doc)
        if frequencies is None:
            frequencies = counts[doc] = {}
            if current is None or owner == current:
                sizes[doc] = size
        if term in frequencies:
            frequencies[term] += 1
        else:
            frequencies[term] = 1
            seen[term] = seen.get(term, 0) + 1
    rows = max(rows, len(counts), 1)
    weights = {term: _weight(rows, hits) * (K1 + 1) for term, hits in seen.items()}
    per_token = K1 * B * rows / max(tokens, 1)
    fixed = K1 * (1 - B)
    scored = []
    for doc, size in sizes.items():
        lengthened = fixed + per_token * row_tokens(size)
        frequencies = counts[doc]
        score = 0.0
        for term, frequency in frequencies.items():
            score += weights[term] * frequency / (frequency + lengthened)
        scored.append((not own.isdisjoint(frequencies), score, doc))
    return scored


def _weight(rows: int, hits: int) -> float:
    """FTS5's IDF of a word found in ``hits`` of ``rows``, never below its floor."""
    idf = math.log((rows - hits + 0.5) / (hits + 0.5))
    return idf if idf > 0 else _LEAST_WEIGHT
