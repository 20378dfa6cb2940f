"""Query terms: a natural-language question turned into the words worth searching for.

Agents ask questions ("where does she live now?"), not keyword queries. The words are
cut and folded as the index cuts and folds stored text (:func:`projections.words.words`),
stop words are dropped, and what is left is ORed by the rankers, so one matching word is
enough and more matching words rank higher. The words a query's topics add
(:class:`QueryTerms`) count for less than its own. A stop word written as a name is kept ("What
did Will say?", "Don"): people are called Will, Don or May.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from projections.words import words as folded_words

__all__ = ["KIN_NOUNS", "STOP_WORDS", "QueryTerms", "query_terms", "search_terms"]

MAX_TERMS = 32
"""At most this many distinct terms are searched: the query's own words before the words
its topics add and, of a query with more words than that (an agent passing the user's
whole turn), the words of a personal-fact topic ("moved", "job") and then the longest, as
longer words are the rarer ones."""

_SENTENCE_END = re.compile(r"[.!?\u2026\n]+")
_LETTERS = re.compile(r"[^\W\d_]+")

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
    remember user please anymore days currently right everything summarize summarise
    summary recap recall
"""

STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())
"""English words too common to say what a question is about (and the parts of contractions)."""

KIN_NOUNS: dict[str, str] = {
    "mom": "mother",
    "mum": "mother",
    "dad": "father",
    "grandma": "grandmother",
    "grandpa": "grandfather",
}
"""Everyday words for relatives, and the noun facts name them by ("mom": "mother"): the
offline extractor writes the noun, and a question's word finds it."""


_CONCEPTS: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "job jobs work works worked working occupation profession career employer employed"
        " role trade retired retire unemployed fired laid quit",
        "live lives lived home city town moved move house flat apartment address neighbourhood",
        "allergy allergies allergic intolerant intolerance",
        "hobby hobbies pastime interests enjoy enjoys love loves",
        "pet pets dog dogs cat cats puppy kitten",
        "diet diets vegan vegetarian eat eats food fasting",
        "health condition conditions diagnosed illness disease medication medications medicine",
        "partner girlfriend boyfriend wife husband fiance fiancee dating married spouse",
        "kids kid children child son sons daughter daughters twins baby",
        "exercise sport sports workout gym training",
        "study studies studying student degree course major",
    )
)
"""Personal-fact topics whose words stand for each other in a question.

Agents ask "what's her job?" of a memory that holds "I work as a nurse"; no stemmer links
the two. A query word of a topic adds the topic's other words: they widen what matches,
and an entry (or a message) matching the query's own words ranks above every entry (or
message) matching only added ones (see :class:`~projections.ranking.LexicalRanker`); the
two kinds are ranked apart, so a message with added words only can outscore an entry.
"""

_TOPIC_WORDS: frozenset[str] = frozenset().union(*_CONCEPTS)

_PHRASES = ((re.compile(r"\bfor\s+a\s+living\b", re.IGNORECASE), " work "),)


@dataclass(frozen=True, slots=True)
class QueryTerms:
    """A query's search terms: its ``own`` content words, and the words its topics
    ``added`` (none of them its own), which the rankers weigh less."""

    own: tuple[str, ...]
    added: tuple[str, ...] = ()


def query_terms(query: str, *, expand: bool = True) -> QueryTerms:
    """The distinct content words of ``query``, folded as the index folds them, in order
    of first use, and (with ``expand``) the other words of each personal-fact topic they
    touch, at most :data:`MAX_TERMS` in all."""
    for phrase, replacement in _PHRASES:
        query = phrase.sub(replacement, query)
    words = folded_words(query)
    named = _names(query, words) if any(w in STOP_WORDS for w in words) else frozenset()
    own = list(dict.fromkeys(w for w in words if w not in STOP_WORDS or w in named))
    if len(own) > MAX_TERMS:
        # stable: of equals, the earlier first
        kept = set(sorted(own, key=lambda w: (w not in _TOPIC_WORDS, -len(w)))[:MAX_TERMS])
        own = [w for w in own if w in kept]
    added: dict[str, None] = {}
    if expand:
        for word in own:
            for group in _CONCEPTS:
                if word in group:
                    added.update(dict.fromkeys(w for w in sorted(group) if w not in own))
    return QueryTerms(tuple(own), tuple(added)[: MAX_TERMS - len(own)])


def search_terms(query: str, *, expand: bool = True) -> list[str]:
    """The terms of :func:`query_terms` in one list: the query's own words, then those
    its topics add."""
    terms = query_terms(query, expand=expand)
    return [*terms.own, *terms.added]


def _names(query: str, words: list[str]) -> frozenset[str]:
    """The words ``query`` (its folded ``words``) writes as names: capitalised ("Will",
    not "WILL" or "I") past the first word of a sentence, where English would not
    capitalise a common word; or the one word of a query of a single capitalised word
    ("Don")."""
    named: set[str] = set()
    for sentence in _SENTENCE_END.split(query):
        for at, word in enumerate(_LETTERS.findall(sentence)):
            if len(word) > 1 and word.istitle() and (at or len(words) == 1):
                named.update(folded_words(word))
    return frozenset(named)
