"""Query terms: a natural-language question turned into the words worth searching for.

Agents ask questions ("where does she live now?"), not keyword queries. The words are
lower-cased, stop words are dropped, and what is left is ORed by the rankers, so one
matching word is enough and more matching words rank higher.
"""

from __future__ import annotations

import re

__all__ = ["STOP_WORDS", "search_terms"]

MAX_TERMS = 32
"""At most this many distinct terms are searched (the first ones of the query)."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are aren as at be because been before
    being below between both but by can cannot could couldn did didn do does doesn doing don
    down during each few for from further had hadn has hasn have haven having he her here hers
    herself him himself his how i if in into is isn it its itself let me more most mustn my
    myself no nor not now of off on once only or other ought our ours ourselves out over own
    same shan she should shouldn so some such than that the their theirs them themselves then
    there these they this those through to too under until up very was wasn we were weren
    what when where which while who whom why will with won would wouldn you your yours
    yourself yourselves d ll m re s t ve also just still ever anything something tell know
    remember user please us anymore days currently right
"""

STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())
"""English words too common to say what a question is about (and the parts of contractions)."""


def search_terms(query: str) -> list[str]:
    """The distinct content words of ``query``, lower-cased, in order of first use."""
    words = (w.casefold() for w in _WORD.findall(query))
    terms = dict.fromkeys(w for w in words if w not in STOP_WORDS)
    return list(terms)[:MAX_TERMS]
