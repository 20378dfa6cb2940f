"""Plain Okapi BM25 over raw text: the reference retrieval has to beat.

What a developer writes in fifty lines before reaching for a memory library: words
lower-cased and split on non-word characters, no stemming, no stop words, every turn of
a conversation a document of its own. ``make eval`` ranks every question with it beside
memvee, in the same run, so memvee's recall is read as a gain over this floor.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["BM25", "words"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """``text`` as the reference indexes it: lower-cased runs of word characters."""
    return _WORD.findall(text.lower())


class BM25:
    """An Okapi BM25 index over ``documents`` (with Lucene's always-positive idf).

    ``k1`` is how fast repeating a word stops adding to a document's score; ``b`` is how
    much a long document is marked down for its length.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._counts = [Counter(words(d)) for d in documents]
        self._lengths = [sum(c.values()) for c in self._counts]
        total = len(self._counts)
        self._average = sum(self._lengths) / total if total else 0.0
        having: Counter[str] = Counter()
        for counts in self._counts:
            having.update(counts.keys())
        self._idf = {
            word: math.log(1.0 + (total - n + 0.5) / (n + 0.5)) for word, n in having.items()
        }

    def score(self, query: str, document: int) -> float:
        """The BM25 score of document number ``document`` for ``query``."""
        counts = self._counts[document]
        norm = self.k1 * (1.0 - self.b + self.b * self._lengths[document] / self._average)
        total = 0.0
        for word in words(query):
            tf = counts.get(word, 0)
            if tf:
                total += self._idf[word] * tf * (self.k1 + 1.0) / (tf + norm)
        return total

    def rank(self, query: str, top: int) -> list[int]:
        """The numbers of the ``top`` best documents for ``query``, best first (ties in
        document order); a document sharing no word with the query is not ranked."""
        scored = [(self.score(query, i), i) for i in range(len(self._counts))]
        ranked = sorted((s for s in scored if s[0] > 0.0), key=lambda s: (-s[0], s[1]))
        return [i for _, i in ranked[:top]]
