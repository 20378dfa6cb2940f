"""Retrieval: the few entries (and messages) that matter for the next prompt.

Lexical ranking runs inside the database; with an :class:`~memvee.embedders.Embedder`
(the default is a local model), a semantic ranking over the user's vectors is fused with
it by a weighted sum of normalised scores: ``alpha`` times the lexical score divided by
the best lexical score (one score for the matches holding the same words of the query,
which their length alone told apart, when their meaning can order them), plus
``1 - alpha`` times the cosine above a noise floor divided by the best one's (nothing at
all when no candidate is near the query; a fact about the user's relatives or things the
query does not name keeps half; the user's own name in the query is embedded as "the
user", and is no word a fact written under it shares with it, see
:meth:`Retriever._name_asked`). With ``include_messages`` entries and raw messages are
ranked together on that one score (a strong message beats a weak fact, and a fact scores
at least as well as the messages it came from, or half their score for a relative's
fact, and a fact found by meaning alone is left out beside a message matching twice as
well and as near: facts are listed first); a message is left out when the returned
entries citing its exchange state the query's words it holds, goes after the remaining
entries when they leave some out, and goes after the rest when its facts were all
replaced. An embedder that fails (an API down, a model that cannot load) leaves the
ranking lexical: a search never fails for it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import operator
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy.exc
from sqlalchemy import Connection, Engine

from events import InvalidInputError, StorageError, as_int, check_text, check_visible
from events.errors import echoed_repr, first_line
from memvee._config import DEFAULT_ALPHA
from projections import KnowledgeEntry, LexicalRanker, Message, ProjectionReader, search_terms
from projections.search import held_stems, index_word, query_words, spoken, text_stems
from projections.tables import ProjectionTables
from projections.terms import KIN_NOUNS, query_terms
from projections.vectors import ContainedEmbedder, VectorIndex, unfit
from projections.words import fold

if TYPE_CHECKING:
    import regex

__all__ = [
    "RetrievalResult",
    "RetrievedEntry",
    "RetrievedMessage",
    "Retriever",
    "check_query",
    "check_top_k",
]

log = logging.getLogger("memvee.retrieval")


MAX_QUERY_CHARS = 100_000
"""The longest query taken: as long as a message may be by default (a longer one would
hold the database for seconds, others' writes waiting)."""


def check_query(query: object, top_k: object) -> int:
    """Refuse a retrieval's query or ``top_k`` before anything runs (InvalidInputError);
    ``top_k`` as an int."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a str, not {type(query).__name__}")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInputError(
            f"query is {len(query):,} characters long, over the limit of {MAX_QUERY_CHARS:,}"
        )
    check_text(query, "query")
    check_visible(query, "query")
    return check_top_k(top_k)


MAX_TOP_K = 1000
"""The most results a retrieval hands back."""


def check_top_k(top_k: object, what: str = "top_k") -> int:
    """Return ``top_k`` as an int if it is a whole number (a numpy integer too) from 1 to
    :data:`MAX_TOP_K`, else raise :class:`InvalidInputError` naming it ``what`` (the
    command line names its option)."""
    count = as_int(top_k)
    if count is None or not 1 <= count <= MAX_TOP_K:
        raise InvalidInputError(
            f"{what} must be an int from 1 to {MAX_TOP_K:,}, not {echoed_repr(top_k)}"
        )
    return count


_CANDIDATES = 4
"""Each ranking proposes ``top_k`` times this many candidates to the fusion."""

_LEAST_CANDIDATES = 50
"""The fewest candidates each ranking proposes, whatever ``top_k`` is: the fusion then
sees the same candidates for any small ``top_k``, so a retrieval's best ``k`` are the
first ``k`` of its best ``k + 1`` (with ``top_k * 4`` alone, the best item of
``top_k=1`` was not always first at ``top_k=3``)."""


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

    An exchange is a user's message and the assistant's reply right after it;
    ``neighbour`` is ``None`` for a message that has no such other half (one of two user
    turns in a row, a system message): it stands alone. ``outdated`` is true when every
    fact extracted from it, or from its ``neighbour``, has since been replaced or
    invalidated (by the ``as_of`` of the retrieval, when given): what it says was true
    once, not then.
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

        Lines past ``max_chars`` are left out, least relevant first; the first line that
        does not fit is cut short (marked with an ellipsis) when a useful part of it fits,
        and a heading never stands without a line under it.
        """
        room = as_int(max_chars)  # a numpy integer too
        if room is None or room < 0:
            raise InvalidInputError(
                f"max_chars must be an int of 0 or more, not {echoed_repr(max_chars)}"
            )
        max_chars = room
        sections: list[tuple[str, list[str]]] = []
        if self.entries:
            facts = [
                f"- {_one_line(hit.entry.text)} (since {hit.entry.valid_from.date().isoformat()})"
                for hit in self.entries
            ]
            sections.append(("Known facts about the user (most relevant first):", facts))
        if self.messages:
            terms = query_terms(self.query)
            asked = [_stems_of(terms.own), _stems_of(terms.added)]
            quoted = []
            for m in self.messages:
                note = " (outdated: no longer true)" if m.outdated else ""
                quoted.append(f"- {_quote(m.message, asked)}{note}")
                if m.neighbour is not None:
                    quoted.append(f"  {_quote(m.neighbour, asked)}")
            sections.append(("Earlier messages that may be relevant:", quoted))
        out: list[str] = []
        room = max_chars + 1  # every line takes its length and a newline; the last has none
        for heading, lines in sections:
            fitted, room, whole = _fit(lines, room - len(heading) - 1)
            if fitted:
                out += [heading, *fitted]
            if not whole:
                break
        return "\n".join(out)


_SHORTEST_CUT = 40
"""The fewest characters of a line worth keeping when the rest of it does not fit."""


def _fit(lines: list[str], room: int) -> tuple[list[str], int, bool]:
    """The leading ``lines`` that fit in ``room`` characters (each with its newline), the
    first that does not cut short if enough of it fits; the room left; and whether every
    line fit whole."""
    fitted: list[str] = []
    for line in lines:
        if len(line) + 1 > room:
            if room - 1 >= _SHORTEST_CUT:
                fitted.append(line[: _cluster_start(line, room - 2)] + "\u2026")
            return fitted, 0, False
        fitted.append(line)
        room -= len(line) + 1
    return fitted, room, True


_LONGEST_LINE = 300
"""The most characters of one fact or message ``to_prompt`` shows (the rest is cut)."""

_BEFORE_MATCH = 80
"""About how many characters a long message's shown part keeps before the word it was
found by."""


def _one_line(text: str) -> str:
    """``text`` on one line and at most :data:`_LONGEST_LINE` characters: a line break in
    a message or a fact never starts a line of the prompt's own (a heading, a fact)."""
    text = " ".join(text.split())
    if len(text) <= _LONGEST_LINE:
        return text
    return text[: _cluster_start(text, _LONGEST_LINE - 1)] + "\u2026"


def _cluster_start(text: str, end: int) -> int:
    """The last place at or before ``end`` where ``text`` can be cut without cutting a
    character a reader sees as one in half (an accent from its letter, an emoji of several
    code points, a flag's pair of regional indicators, a syllable and its vowel sign): the
    last boundary of an extended grapheme cluster (UAX #29, as ``regex``'s ``\\X`` matches
    one); 0 when none is.

    Only ``text`` from the last boundary :func:`_known_boundary` finds is segmented, as a
    slice: ``\\X`` looks back past where a search begins (over a run of regional
    indicators, again for every pair of it), and segmenting from a boundary finds the
    boundaries the whole text has. Up to ``end + 1``: every rule decides a boundary by
    what comes before it and the one character after, so a cut of a message of 100,000
    characters costs about what one of a short line does."""
    end = max(0, min(end, len(text)))
    if end in (0, len(text)):
        return end
    graphemes = _graphemes()
    start = _known_boundary(text, end, graphemes)
    last = graphemes.cluster.findall(text[start : end + 1])[-1]
    return end + 1 - len(last)


def _known_boundary(text: str, end: int, graphemes: _Graphemes) -> int:
    """A grapheme cluster boundary at or before ``end``, whatever ``text`` holds before it,
    found without segmenting the text from its start (0 when none is): the later of the
    last place between two characters that always break (:attr:`_Graphemes.breaking_pair`)
    and, in a run of regional indicators after it, the last place an even number of them
    into the run (GB12 and GB13 pair them from the run's start). A breaking pair comes
    between any two runs, so what :func:`_cluster_start` segments holds two indicators at
    most: ``\\X`` counts a run back to its start at every pair.

    Looked for within :data:`_NEARBY` characters first, then back to the text's start (in
    text with neither that near, e.g. a letter under thousands of marks)."""
    for since in (max(0, end - _NEARBY), 0):
        pair = graphemes.breaking_pair.search(text, since, end + 1)
        found = 0 if pair is None else pair.start() + 1
        indicator = graphemes.indicator.search(text, max(since, found), end + 1)
        if indicator is not None:
            before_run = graphemes.not_indicator.search(text, 0, indicator.start())
            run = 0 if before_run is None else before_run.end()
            paired = run + (indicator.start() - run) // 2 * 2
            if paired > run:
                found = max(found, paired)
        if found:
            return found
    return 0


_NEARBY = 256
"""How far before a cut :func:`_known_boundary` first looks for a boundary."""


@dataclass(frozen=True, slots=True)
class _Graphemes:
    """The patterns :func:`_cluster_start` segments text with, made on the first cut (so
    that importing memvee does not import ``regex``: some 10 ms)."""

    cluster: regex.Pattern[str]
    """One extended grapheme cluster."""
    breaking_pair: regex.Pattern[str]
    """The last two characters UAX #29 breaks between whatever comes before them (searched
    backwards): a first that no rule joins to the next one (not Prepend, GB9b; CR, GB3; nor
    a leading jamo, GB6), and a second that no rule joins to it: not Extend, a joiner or a
    spacing mark (GB9, GB9a), a vowel or trailing jamo (GB7, GB8), nor a consonant after a
    linker or an extending character (GB9c; a few linkers are of class Other), a regional
    indicator after another (GB12, GB13) or a pictograph after a joiner (GB11). The rules
    that look further back than one character (GB9c, GB11, GB12, GB13) apply only to the
    pairs left out."""
    indicator: regex.Pattern[str]
    """The last regional indicator (searched backwards)."""
    not_indicator: regex.Pattern[str]
    """The last character that is no regional indicator (searched backwards)."""


@functools.cache
def _graphemes() -> _Graphemes:
    """The grapheme patterns, compiled once."""
    import regex

    joined = r"\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}\p{GCB=V}\p{GCB=T}\p{InCB=Consonant}"
    ending = (
        r"\p{GCB=Other}\p{GCB=Control}\p{GCB=LF}\p{GCB=Extend}\p{GCB=SpacingMark}"
        r"\p{GCB=V}\p{GCB=T}\p{GCB=LV}\p{GCB=LVT}"
    )
    indicator = r"\p{GCB=Regional_Indicator}"
    return _Graphemes(
        cluster=regex.compile(r"\X"),
        breaking_pair=regex.compile(
            f"(?rV1)[{ending}][^{joined}]"
            rf"|[[{ending}]--[\p{{InCB=Linker}}\p{{InCB=Extend}}]]\p{{InCB=Consonant}}"
            f"|{indicator}[^{joined}{indicator}]"
            rf"|\p{{GCB=ZWJ}}[^{joined}\p{{Extended_Pictographic}}]"
        ),
        indicator=regex.compile(f"(?r){indicator}"),
        not_indicator=regex.compile(f"(?r)[^{indicator}]"),
    )


def _quote(message: Message, asked: list[frozenset[str]]) -> str:
    """``message`` as a prompt line: its day, its speaker and its text, a long text shown
    around the first of its words the query asked for (see :func:`_around`)."""
    day = message.sent_at.date().isoformat()
    text = _around(" ".join(message.content.split()), asked)
    speaker = message.role if not message.name else f"{_one_line(message.name)} ({message.role})"
    return f"[{day}] {speaker}: {text}"


def _stems_of(terms: Iterable[str]) -> frozenset[str]:
    """The index words a query's folded ``terms`` look up (:func:`query_words`): a term
    written without spaces ("東京に行きたい") as its pairs of characters, as it is searched,
    not whole, which a message holds only word for word."""
    return frozenset(query_words(terms))


def _around(text: str, asked: list[frozenset[str]]) -> str:
    """``text`` (on one line) as at most :data:`_LONGEST_LINE` characters: its start, or,
    when the first word it holds of the first set of ``asked`` stems that it holds any of
    lies past that, the part around that word, each end cut marked with an ellipsis. A
    long message found by its last sentence then shows that sentence to the agent. The
    window starts after a space only one close to its start: in text mostly without
    spaces, the first space may stand just before the match."""
    if len(text) <= _LONGEST_LINE:
        return text
    at = next(
        (
            found
            for stems in asked
            for some in _kana_last(stems)
            if (found := _first_word(text, some)) is not None
        ),
        0,
    )
    if at + _BEFORE_MATCH < _LONGEST_LINE:
        return text[: _cluster_start(text, _LONGEST_LINE - 1)] + "\u2026"
    start = min(at - _BEFORE_MATCH, len(text) - _LONGEST_LINE + 2)  # the end: one ellipsis
    space = text.find(" ", start, min(at, start + _LONGEST_WORD))
    start = space + 1 if space >= 0 else _cluster_start(text, start)  # a whole word first
    shown = text[start : _cluster_start(text, start + _LONGEST_LINE - 2)]
    return "\u2026" + shown + ("\u2026" if start + len(shown) < len(text) else "")


def _kana_last(stems: frozenset[str]) -> list[frozenset[str]]:
    """``stems`` with those of kana alone apart, to be looked for last: a Japanese
    question's pairs of kana ("きた", "たい" of "東京に行きたい") stand in most any Japanese
    text, its pairs holding a kanji ("東京") where it speaks of the same thing."""
    kana = frozenset(stem for stem in stems if _KANA.fullmatch(stem))
    return [stems - kana, kana] if kana and kana != stems else [stems]


_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]+")
"""Hiragana and katakana, as folded (half-width katakana folds to these)."""


def _first_word(text: str, stems: frozenset[str]) -> int | None:
    """Where the first word of ``text`` that the index stems to one of ``stems`` begins
    (``None``: it holds none, or it holds too many words like them to tell soon); where
    no space comes shortly before it (Japanese, a comma-separated line), where the part
    that matched begins, never the text's start. Only the distinct words holding a stem's
    start (case- and accent-blind) are stemmed, at most :data:`_MOST_STEMMED` of them, so
    a long message costs about a scan."""
    if not stems:
        return None
    starts = sorted({_start_of(stem) for stem in stems}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, starts)))
    seen: dict[str, bool] = {}
    for place, folded in _folded_parts(text):
        for hit in pattern.finditer(folded):
            space = folded.rfind(" ", max(0, hit.start() - _LONGEST_WORD), hit.start())
            begin = space + 1 if space >= 0 else hit.start()  # text without spaces: the hit
            end = folded.find(" ", hit.end(), hit.end() + _LONGEST_WORD)
            word = folded[begin : end if end >= 0 else hit.end() + _LONGEST_WORD]
            if word not in seen:
                if len(seen) == _MOST_STEMMED:
                    return None
                seen[word] = not stems.isdisjoint(text_stems(word))
            if seen[word]:
                return place(begin)
    return None


def _start_of(stem: str) -> str:
    """What every word stemmed to ``stem`` begins with, folded: the stem itself but for a
    last "i" (the stemmer writes "happy" as "happi")."""
    return stem[:-1] if len(stem) > 1 and stem.endswith("i") else stem


def _folded_parts(text: str) -> Iterator[tuple[Callable[[int], int], str]]:
    """``text`` folded as the index folds it, in parts, each with the map from a place in
    it to where that character's source stands in ``text``: one part, unless folding
    changes the length of some character ("ß", "ﬁ", a decomposed accent, a half-width
    kana's sound mark) and folding its characters one by one does not give the same text
    (a Korean syllable written in jamo); then a part per run of non-spaces, each mapped
    character by character too unless that run itself composes, so that a jamo syllable
    elsewhere does not shift the places of the other runs."""
    folded = fold(text)
    if text.isascii():
        yield _same_place, folded
        return
    each = {c: fold(c) for c in set(_FOLDED_AS_THEMSELVES.sub("", text))}
    if len(folded) == len(text) and all(len(f) == 1 for f in each.values()):
        yield _same_place, folded
        return
    mapped = _mapped(text, folded, each, 0)
    if mapped is not None:
        yield mapped, folded
        return
    for part in re.finditer(r"\S+", text):
        run = part.group()
        folded_run = fold(run)
        place = _mapped(run, folded_run, each, part.start())
        yield place or functools.partial(operator.add, part.start()), folded_run


def _mapped(
    text: str, folded: str, each: dict[str, str], offset: int
) -> Callable[[int], int] | None:
    """The map from a place in ``folded`` to where its source stands (``text`` beginning
    at ``offset``), taken from the lengths of its characters' foldings ``each`` (a
    character missing from it folds as itself, :data:`_FOLDED_AS_THEMSELVES`); ``None``
    when folding them one by one does not give ``folded`` (something composes)."""
    pieces = list(map(each.get, text, text))
    if "".join(pieces) != folded:
        return None
    ends = list(itertools.accumulate(map(len, pieces)))  # of each character's folding
    return functools.partial(_after, offset, ends)


def _after(offset: int, ends: list[int], at: int) -> int:
    """Where the character whose folding holds place ``at`` stands, ``ends`` being where
    each character's folding ends and ``offset`` where the first character stands."""
    return offset + bisect.bisect_right(ends, at)


def _same_place(at: int) -> int:
    """A place in text whose folding kept every character in its place: the same."""
    return at


_FOLDED_AS_THEMSELVES = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\U00020000-\U0002f7ff\U00030000-\U000323af]+"
)
"""Runs of characters that folding leaves as they are, each alone: the CJK ideographs (not
the compatibility ones) and the Korean syllables (one may still take a trailing jamo into
it, which the whole text's folding shows). :func:`_folded_parts` folds only the other
characters one by one: a long Chinese text holds thousands of distinct ideographs, whose
folding one by one cost more than the rest of the search."""

_LONGEST_WORD = 64
"""How far around a hit :func:`_first_word` looks for the ends of its word."""

_MOST_STEMMED = 256
"""The most distinct words :func:`_first_word` stems in one message."""


@dataclass
class _Candidate:
    """One entry or message proposed by either ranking, with its raw scores.

    ``item`` is ``None`` for a message only the semantic ranking proposed, until it is
    read: most of those never make the cut, so their rows are read only when they might.
    """

    item: KnowledgeEntry | Message | None
    lexical: float = 0.0
    cosine: float | None = None
    score: float = 0.0
    own: float = 0.0
    """Its fused score before :func:`_lift_entries`: how well it matches the query itself,
    which orders the facts a message lifts alike."""
    key: str = ""
    unembedded: bool = False
    """Whether it has no vector yet, or the embedder refuses its text (its cosine is
    unknown, not low)."""
    meant: float = 0.0
    """Its semantic share as fused (:func:`_semantic`, times ``subject_share``): what it
    scores by meaning alone, alike on every backend (one embedder gives the cosines)."""
    subject_share: float = 1.0
    """The part of a semantic share (and of a source message's score) it keeps:
    :data:`_OTHER_SUBJECT_SHARE` for a fact about someone or something of the user's that
    the query does not name, 1 otherwise."""

    @property
    def is_message(self) -> bool:
        return not isinstance(self.item, KnowledgeEntry)


class Retriever:
    """Runs one retrieval on a reader thread: rank lexically and semantically, fuse, pick.

    ``alpha`` is the lexical weight of the fusion (1: lexical only, 0: semantic only);
    ``vectors`` shares the engine's vector index (and its cache) when given;
    ``index_messages`` is called before messages are searched, so that none waiting for
    the full-text index is missed. A search embeds what has no vector yet for at most
    ``embed_budget`` seconds past its first batch (``None``: all of it) and hands what it
    left to ``embed_later(user_id)``, the background filler.
    """

    def __init__(
        self,
        engine: Engine,
        tables: ProjectionTables,
        embedder: ContainedEmbedder | None,
        *,
        alpha: float = DEFAULT_ALPHA,
        vectors: VectorIndex | None = None,
        index_messages: Callable[[], object] | None = None,
        embed_budget: float | None = None,
        embed_later: Callable[[str], object] | None = None,
    ) -> None:
        self.engine = engine
        self._index_messages = index_messages
        self._embed_budget = embed_budget
        self._embed_later = embed_later
        self.embedder = embedder
        self.alpha = alpha
        self._ranker = LexicalRanker(tables)
        self._reader = ProjectionReader(tables)
        if embedder is not None and vectors is None:
            vectors = VectorIndex(tables, embedder.name, dimensions=embedder.dimensions)
        self._vectors = None if embedder is None else vectors

    def retrieve(
        self,
        user_id: str,
        query: str,
        top_k: int,
        as_of: datetime | None,
        include_messages: bool,
    ) -> RetrievalResult:
        """The user's best ``top_k`` entries (and messages) for ``query``, on one score.

        Where ``query`` calls the user by the name their own messages carry, it is
        embedded as "the user", and that name is no word a fact written under it shares
        with the query (:meth:`_name_asked`, :class:`_Worded`)."""
        pool = max(top_k * _CANDIDATES, _LEAST_CANDIDATES)
        candidates: dict[str, _Candidate] = {}
        with self._erasures_watched(user_id) as erased, self.engine.connect() as connection:
            name = self._name_asked(connection, user_id, query, include_messages)
            as_user = query if name is None else _named_as_user(query, name)
            terms = query_terms(query)
            own, added = list(terms.own), terms.added
            query_vector, unembedded = self._embed_query(
                connection, user_id, as_user, include_messages
            )
            if include_messages and self._index_messages is not None:
                self._index_messages()
            ranked = self._ranker.entries(connection, user_id, own, pool, as_of, added=added)
            for entry, score in ranked:
                candidates[entry.entry_id] = _Candidate(entry, lexical=score)
            if include_messages:
                found = self._ranker.messages(connection, user_id, own, pool, as_of, added=added)
                for message, score in found:
                    candidates[message.message_id] = _Candidate(message, lexical=score)
            if query_vector is not None and self._vectors is not None:
                self._add_semantic(connection, user_id, query_vector, pool, as_of, candidates)
                if include_messages:
                    self._add_semantic_messages(
                        connection, user_id, query_vector, pool, as_of, candidates, erased
                    )
            if as_of is not None:
                self._read_messages(connection, user_id, list(candidates.values()))
                candidates = {
                    k: c
                    for k, c in candidates.items()
                    if not isinstance(c.item, Message) or c.item.sent_at <= as_of
                }
            for key in unembedded.intersection(candidates):
                candidates[key].unembedded = True
            alpha = self.alpha if query_vector is not None else 1.0
            worded = _Worded(frozenset().union(*(text_stems(t) for t in (*own, *added))), name)
            _fuse(list(candidates.values()), alpha, query, worded.words)
            _lift_entries(candidates, worded)
            return self._pick(
                connection,
                user_id,
                query,
                as_of,
                top_k,
                candidates,
                bool(own),
                _stems_of(own),
                worded,
                alpha,
            )

    def _add_semantic(
        self,
        connection: Connection,
        user_id: str,
        query_vector: list[float],
        pool: int,
        as_of: datetime | None,
        candidates: dict[str, _Candidate],
    ) -> None:
        assert self._vectors is not None
        nearest = self._vectors.entries(connection, user_id, query_vector, pool, as_of)
        unseen = [i for i, _ in nearest if i not in candidates]
        for entry in self._reader.entries(connection, user_id, unseen):
            candidates[entry.entry_id] = _Candidate(entry)
        for item, cosine in nearest:
            if item in candidates:
                candidates[item].cosine = cosine

    @contextmanager
    def _erasures_watched(self, user_id: str) -> Iterator[threading.Event | None]:
        """What a search's connection reads of the user's vectors may be cached unless this
        is set: the user was forgotten meanwhile (see :meth:`VectorIndex.watching`)."""
        if self._vectors is None:
            yield None
            return
        with self._vectors.watching(user_id) as erased:
            yield erased

    def _add_semantic_messages(
        self,
        connection: Connection,
        user_id: str,
        query_vector: list[float],
        pool: int,
        as_of: datetime | None,
        candidates: dict[str, _Candidate],
        erased: threading.Event | None,
    ) -> None:
        assert self._vectors is not None
        nearest = self._vectors.messages(connection, user_id, query_vector, pool, as_of, erased)
        for item, cosine in nearest:
            candidates.setdefault(item, _Candidate(None, key=item)).cosine = cosine

    def _read_messages(
        self, connection: Connection, user_id: str, candidates: Sequence[_Candidate]
    ) -> None:
        """Read the rows of the messages among ``candidates`` that have none yet."""
        unread = {c.key: c for c in candidates if c.item is None}
        if unread:
            for message in self._reader.messages(connection, user_id, ids=list(unread)):
                unread[message.message_id].item = message

    def _pick(
        self,
        connection: Connection,
        user_id: str,
        query: str,
        as_of: datetime | None,
        top_k: int,
        candidates: dict[str, _Candidate],
        searched: bool,
        asked: frozenset[str],
        worded: _Worded,
        alpha: float,
    ) -> RetrievalResult:
        """The best ``top_k`` on the fused score (none below :data:`RELEVANCE_FLOOR` of the
        best, nor, when the query has words to search (``searched``), any that scores 0: a
        query unrelated to everything finds nothing; one without such words, "who am I?",
        gets the most recent facts, scored 0, beside what its meaning finds, and before any
        message; nor, beside messages, a fact a fresh message outmatches,
        :func:`_not_outmatched`), a message shown with the other half of its exchange: an
        exchange is shown once (as is one said again word for word), left out when the
        returned entries say it (:meth:`_Exchanges.hidden`, by the stems of the query's own
        words, ``asked``), kept beside them when they leave out some of the query's words
        it holds, yielding its slot to each entry ranked above the next message still to be
        placed (:class:`_Queue`), and comes last when either half is outdated."""
        for key, proposed in candidates.items():
            proposed.key = key
        ranked = sorted(candidates.values(), key=_ranking)
        if ranked:
            floor = RELEVANCE_FLOOR * ranked[0].score
            ranked = [
                c
                for c in ranked
                if (c.score >= floor and (c.score > 0 or not searched))
                or not (searched or c.is_message)  # the recent facts a wordless query gets
            ]
        messages = [c for c in ranked if c.is_message]
        stale: set[str] = set()
        if messages:
            # A message whose facts were all replaced states something no longer true.
            keys = [c.key for c in messages]
            stale = self._reader.outdated(connection, user_id, keys, as_of)
        facts: Iterator[_Candidate] = (c for c in ranked if not c.is_message)
        if searched:
            fresh = [c for c in messages if c.key not in stale]
            facts = _not_outmatched(
                facts,
                fresh,
                worded,
                alpha,
                functools.partial(self._read_messages, connection, user_id),
            )
        entries = list(itertools.islice(facts, top_k))
        queue = _Queue(entries, messages, stale, facts_first=not searched)
        exchanges = _Exchanges(stale, asked)
        chosen = _Chosen(exchanges)
        beside: set[str] = set()
        while len(chosen) < top_k and (candidate := queue.pop()) is not None:
            if candidate.is_message and candidate.key not in exchanges.partner:
                window = [candidate, *queue.upcoming_messages(2 * top_k - 1)]
                self._read_messages(connection, user_id, window)
                self._read_partners(connection, user_id, as_of, window, exchanges)
            item = candidate.item
            if item is None:
                continue  # erased since it was embedded
            if isinstance(item, KnowledgeEntry):
                exchanges.cite(item)
                chosen.drop_told_by(item)
                if (waiting := chosen.waiting_for_fact()) is not None:
                    beside.add(waiting.key)
                    queue.put_back(waiting)
                chosen.add(candidate)
            elif exchanges.hidden(item) or chosen.shows(item):
                continue
            elif exchanges.cited(item) and candidate.key not in beside:
                beside.add(candidate.key)
                queue.put_back(candidate)
            elif exchanges.outdated(candidate.key) and candidate.key not in stale:
                stale.add(candidate.key)
                queue.outdate(candidate)  # fresh itself, but its exchange is not: last
            else:
                chosen.add(candidate)
        return RetrievalResult(
            user_id,
            query,
            as_of,
            [
                RetrievedEntry(c.item, c.score)
                for c in chosen.entries
                if isinstance(c.item, KnowledgeEntry)
            ],
            [
                RetrievedMessage(
                    c.item, c.score, exchanges.partner[c.key], exchanges.outdated(c.key)
                )
                for c in chosen.messages.values()
                if isinstance(c.item, Message)
            ],
        )

    def _read_partners(
        self,
        connection: Connection,
        user_id: str,
        as_of: datetime | None,
        candidates: Sequence[_Candidate],
        exchanges: _Exchanges,
    ) -> None:
        """Read the other half of the exchange of each message among ``candidates`` not
        yet looked at (none when it was sent after ``as_of``), and which are outdated."""
        unread = [
            c.item
            for c in candidates
            if isinstance(c.item, Message) and c.key not in exchanges.partner
        ]
        if not unread:
            return
        seqs = {seq for m in unread if (seq := _partner_seq(m)) is not None}
        found = self._reader.messages(connection, user_id, seqs=sorted(seqs))
        by_seq = {m.seq: m for m in found if as_of is None or m.sent_at <= as_of}
        partners = [_other_half(m, by_seq) for m in unread]
        for message, partner in zip(unread, partners, strict=True):
            exchanges.partner[message.message_id] = partner
        ids = [
            p.message_id for p in partners if p is not None and p.message_id not in exchanges.stale
        ]
        exchanges.stale |= self._reader.outdated(connection, user_id, ids, as_of)

    def _embed_query(
        self, connection: Connection, user_id: str, query: str, include_messages: bool
    ) -> tuple[list[float] | None, frozenset[str]]:
        """The vector of ``query`` (as :meth:`_name_asked` has it), once the user's items
        have theirs (or the budget is spent), with the ids of the items left without one;
        no vector (rank lexically) without an embedder, when it fails, or when the query's
        vector is not ``dimensions`` finite floats."""
        if self.embedder is None or self._vectors is None:
            return None, frozenset()
        try:
            with self._vectors.searching():
                left = self._vectors.fill(
                    self.engine,
                    user_id,
                    self.embedder.embed,
                    messages=include_messages,
                    budget=self._embed_budget,
                )
                vector = self.embedder.embed([query])[0]
            if left and self._embed_later is not None:
                self._embed_later(user_id)
            problem = unfit(vector, self.embedder.dimensions)
            if problem is not None:
                log.warning(
                    "user %r: the embedder %r gave the query a vector of %s; this search "
                    "ranks lexically",
                    user_id,
                    self.embedder.name,
                    problem,
                )
                return None, frozenset()
            return vector, left | self._vectors.refused(user_id)
        except (sqlalchemy.exc.OperationalError, StorageError) as error:
            # Storing the vectors failed (a read-only file, a lock), not the embedder.
            log.warning(
                "user %r: the vectors could not be stored (%s); this search ranks lexically",
                user_id,
                first_line(getattr(error, "orig", None) or error),
            )
            return None, frozenset()
        except Exception:
            log.warning(
                "user %r: the embedder %r failed; this search ranks lexically",
                user_id,
                self.embedder.name,
                exc_info=True,
            )
            return None, frozenset()

    def _name_asked(
        self, connection: Connection, user_id: str, query: str, include_messages: bool
    ) -> str | None:
        """The name the user's own messages carry (:meth:`ProjectionReader.speaker`) where
        ``query`` calls the user by it (:func:`_named_as_user`), else ``None``. Every fact
        and message is about the user, and each turn is indexed and embedded after its
        speaker's name, so that name tells none apart: embedded, it drew the query to the
        short messages it is spoken in ("Maria: Not really.") above the one that answers a
        question about Maria, so the query is embedded with "the user" in its place; and it
        heads every fact written under it ("Maria is a vet."), so that each seemed to share
        a word with the query and was kept first beside a message answering far better
        (:class:`_Worded` tells shared words without it). The lexical search keeps the
        name: dropping it there reshuffled the rankings of ``make eval``'s people set for
        no gain (recall@10 0.95 to 0.94).

        The name is read only where it is used: with an embedder, or beside messages (a
        fact is weighed against messages only then); a lexical search of the entries alone
        ranks the same without it and is spared the read. It is read in the search's
        ``connection``, whose transaction then ends, the read failed or not: no transaction
        waits on the embedder (on PostgreSQL it would keep a rebuild from dropping the
        tables it read). A read the database fails is logged and the search goes on without
        the name, as it would for a user who never gave one."""
        if self._vectors is None and not include_messages:
            return None
        try:
            name = self._reader.speaker(connection, user_id)
        except sqlalchemy.exc.SQLAlchemyError as error:
            log.warning(
                "user %r: the name their messages carry could not be read (%s); this search "
                "goes on without it",
                user_id,
                first_line(getattr(error, "orig", None) or error),
            )
            return None
        finally:
            connection.rollback()
        if name is None or _named_as_user(query, name) == query:
            return None
        return name


def _named_as_user(query: str, name: str) -> str:
    """``query`` with ``name`` read as "the user" where it stands as a whole word written
    as the name is (so the verb in "where will Will go?" stays), but for a name followed by
    a pronoun: "Will I ever move back?" asks with the verb a user named Will shares."""
    pattern = rf"(?<!\w){re.escape(name)}(?!\w)(?!\s+(?:{_PRONOUNS})\b)"
    return re.sub(pattern, "the user", query)


_PRONOUNS = "I|you|he|she|it|we|they|my|your|his|her|its|our|their|me|us|them|there|this|that"
"""Words that follow a name used as a verb or a helper ("May I", "Will you"), never one
that names the user."""


def _lift_entries(candidates: dict[str, _Candidate], worded: _Worded) -> None:
    """An entry scores at least as well as the best of its source messages: it states what
    they said, so a message that matches makes its fact match (and the fact comes first),
    while the facts it lifts alike keep the order of their own scores (:func:`_ranking`).
    A fact about someone of the user's the query does not name keeps only its share of
    the message's score (:data:`_OTHER_SUBJECT_SHARE`): "My mother lives in Stavanger"
    matches "where do I live?" by its words, but the question is about the user.

    A fact sharing none of the query's words (``worded``, when it has some) is not lifted:
    its message may match by a part the fact does not state ("I'm allergic to shellfish.
    Help me pick a restaurant for her birthday later?" is near "what does she do on Friday
    nights?", "User is allergic to shellfish." is not), and, lifted, it was listed before
    the message that answers."""
    for candidate in candidates.values():
        item = candidate.item
        if isinstance(item, KnowledgeEntry) and (
            not worded.words or _shares_word(candidate, item, worded)
        ):
            sources = [
                candidate.subject_share * candidates[m].score
                for m in item.source_message_ids
                if m in candidates
            ]
            candidate.score = max([candidate.score, *sources])


RELEVANCE_FLOOR = 0.2
"""The share of the best candidate's score below which a candidate is not returned: an
item that weak only fills a slot (and a fact that weak would be read first). Chosen on
``make eval``: it cost no recall@10, and took recall@1 from 0.39 back to 0.46."""


OUTMATCHED_FACT_SHARE = 0.5
"""A fact found by meaning alone is not returned beside a fresh (not outdated) message it
matches less than this share as well as (weighed by :func:`_not_outmatched`) and whose
cosine to the query is no lower than its own. Chosen on ``make eval`` (default weight, top 10): 0.3,
0.5 and 0.7 all raised recall@1 on both sets (0.56 and 0.44 without the rule: 0.58 and
0.44, 0.60 and 0.46, 0.60 and 0.47) and cost no recall@5 or @10; 0.5 is the middle."""


@dataclass(frozen=True, slots=True)
class _Worded:
    """The words a query asks, as stored text is cut (:func:`text_stems`: a run written
    without spaces as its pairs and its single characters), to tell which texts share one
    and how many they hold, from the texts alone: the same on every backend, whose
    lexical scores (bm25, ts_rank) differ in scale."""

    words: frozenset[str]
    name: str | None = None
    """The user's name where the query calls the user by it: written at the head of a text
    it is the subject every fact of the user is written under ("Noor is a vet."), no word
    the text shares with the query, so a lexical score (which counts it) tells none;
    elsewhere it is one ("Austin works at a bank in Austin." for "what about Austin?")."""

    def share(self, text: str) -> float:
        """The part of the query's words ``text`` holds (0 when the query has none), the
        user's name at its head left out."""
        if not self.words:
            return 0.0
        if self.name is not None and (head := _headed_by(self.name, text)) is not None:
            text = text[head.end() :]
        return len(self.words.intersection(text_stems(text))) / len(self.words)


def _headed_by(name: str, text: str) -> re.Match[str] | None:
    """Where ``text`` opens on ``name``, written as the name is and as a whole word."""
    return re.match(rf"\s*{re.escape(name)}(?!\w)", text)


def _not_outmatched(
    facts: Iterable[_Candidate],
    fresh: Sequence[_Candidate],
    worded: _Worded,
    alpha: float,
    read: Callable[[Sequence[_Candidate]], None],
) -> Iterator[_Candidate]:
    """The ``facts`` (in their order) but those sharing no word with the query (``worded``)
    that a message of ``fresh`` outmatches: one at least as near the query in meaning that
    matches over twice as well (:data:`OUTMATCHED_FACT_SHARE`), each weighed as the fused
    score is, ``alpha`` times a lexical part plus ``1 - alpha`` times its semantic share
    (a fact as well as its source messages, as :func:`_lift_entries` has it), but with the
    part of the query's words a message holds, over the most any of ``fresh`` holds, as
    its lexical part: the texts give it alike on both backends, where the share of the best
    bm25 or ts_rank score split them. A result lists its facts before its messages, and a
    prompt shows them first, so such a fact would be read before a message that answers
    the question far better: the default model puts most short facts about the user a
    little above its noise floor for any question about them ("User lives in Bergen." for
    "what is my cat called?"). A fact holding one of the query's words stays ("User lives
    in Bergen." for "did I live in Oslo?", beside "Oslo was too cold, living here is
    better"; "用户养了一只猫" for "我的猫叫什么名字", by 猫, which the query is not searched by
    but stored text is indexed by), as does one nearer in meaning than every such message
    ("User is a teacher." for "what is my job?", beside a reply that shares a word)."""
    weights: dict[str, float] | None = None
    below: list[float] = []
    nearest: list[float] = []
    for fact in facts:
        entry = fact.item
        assert isinstance(entry, KnowledgeEntry)
        if _shares_word(fact, entry, worded):
            yield fact
            continue
        if weights is None:  # weighed once, when a fact first needs it
            read(fresh)
            weights = _message_weights(fresh, worded, alpha)
            weighed = sorted((weights[m.key], _cosine_of(m)) for m in fresh if m.key in weights)
            weighed.reverse()
            below = [-weight for weight, _ in weighed]  # ascending
            nearest = list(itertools.accumulate((cosine for _, cosine in weighed), max))
        # As :func:`_lift_entries` does: a fact matches as well as its source messages.
        lifted = (fact.subject_share * weights.get(m, 0.0) for m in entry.source_message_ids)
        weight = max((1 - alpha) * fact.meant, *lifted)
        above = bisect.bisect_left(below, -weight / OUTMATCHED_FACT_SHARE)
        if not above or nearest[above - 1] < _cosine_of(fact):
            yield fact


def _shares_word(fact: _Candidate, entry: KnowledgeEntry, worded: _Worded) -> bool:
    """Whether the fact ``entry`` (ranked as ``fact``) holds a word the query asks
    (``worded``, the user's name at its head aside)."""
    # A lexical score tells a shared word at once; the texts tell the rest alike.
    return (fact.lexical > 0 and worded.name is None) or worded.share(entry.text) > 0


def _message_weights(
    fresh: Sequence[_Candidate], worded: _Worded, alpha: float
) -> dict[str, float]:
    """How well each read message of ``fresh`` matches the query, by its key, as
    :func:`_not_outmatched` weighs it: ``alpha`` times the part of the query's words it
    holds over the most any holds, plus ``1 - alpha`` times its semantic share."""
    shares = {m.key: worded.share(m.item.content) for m in fresh if isinstance(m.item, Message)}
    best = max(shares.values(), default=0.0) or 1.0
    return {
        m.key: alpha * shares[m.key] / best + (1 - alpha) * m.meant
        for m in fresh
        if m.key in shares
    }


def _cosine_of(candidate: _Candidate) -> float:
    """A candidate's cosine to the query, 0 when the semantic ranking gave it none."""
    return 0.0 if candidate.cosine is None else candidate.cosine


def _partner_seq(message: Message) -> int | None:
    """Where the other half of ``message``'s exchange would be: the reply right after a
    user's turn, the user's turn right before a reply; nowhere for a system message."""
    if message.role == "user":
        return message.seq + 1
    if message.role == "assistant":
        return message.seq - 1
    return None


def _other_half(message: Message, by_seq: dict[int, Message]) -> Message | None:
    """The other half of ``message``'s exchange among the messages read (``by_seq``): the
    message at :func:`_partner_seq` if it has the other role of a user's turn and its
    reply. Its neighbour of the same role (two user turns in a row, as in a group chat)
    is no exchange of it, so the message stands alone."""
    seq = _partner_seq(message)
    other = None if seq is None else by_seq.get(seq)
    if other is None or {message.role, other.role} != {"user", "assistant"}:
        return None
    return other


@dataclass(slots=True)
class _Exchanges:
    """The exchanges of the messages a retrieval looked at: the other half of each (by
    message id), the outdated messages among both halves, what each shows (its ``words``,
    to tell an exchange said again word for word), and the messages the returned entries
    cite, each with the query's words (the index's stems of them, of ``asked``) those
    entries state (``stated``)."""

    stale: set[str]
    asked: frozenset[str] = frozenset()
    partner: dict[str, Message | None] = field(default_factory=dict)
    words: dict[str, tuple[tuple[str, str, str], ...]] = field(default_factory=dict)
    stated: dict[str, frozenset[str]] = field(default_factory=dict)
    holds: dict[str, frozenset[str]] = field(default_factory=dict)

    def halves(self, key: str) -> tuple[str, ...]:
        partner = self.partner.get(key)
        return (key,) if partner is None else (key, partner.message_id)

    def cite(self, entry: KnowledgeEntry) -> None:
        """Count ``entry`` as returned: each message it came from is cited, by what it states."""
        states = self._asked_in(entry.entry_id, entry.text)
        for key in entry.source_message_ids:
            self.stated[key] = self.stated.get(key, frozenset()) | states

    def cited(self, item: KnowledgeEntry | Message | None) -> bool:
        """Whether ``item`` is a message a returned entry cites either half of the exchange of."""
        return isinstance(item, Message) and any(
            half in self.stated for half in self.halves(item.message_id)
        )

    def hidden(self, item: KnowledgeEntry | Message | None) -> bool:
        """Whether ``item`` is a message whose exchange the returned entries say: one cites
        either half, and those citing either half state every word of the query the two
        halves hold. Judged by the exchange, not a half: a fact citing only the reply
        ("Noted!", none of the query's words) states nothing of what the user's half was
        found by, and "User lives in Lima." leaves the door code of "I live in Lima and the
        door code of my flat is 4411" out, so that message stays for "what is my door code?"."""
        if not isinstance(item, Message) or not self.cited(item):
            return False
        partner = self.partner.get(item.message_id)
        halves = [item] if partner is None else [item, partner]
        held = frozenset().union(*(self._asked_in(h.message_id, h.content) for h in halves))
        said = frozenset().union(*(self.stated.get(h.message_id, frozenset()) for h in halves))
        return held <= said

    def _asked_in(self, key: str, text: str) -> frozenset[str]:
        """The query's words that ``text``, of the message or entry ``key``, holds (found
        once an item)."""
        held = self.holds.get(key)
        if held is None:
            held = self.asked.intersection(text_stems(text)) if self.asked else frozenset()
            self.holds[key] = held
        return held

    def outdated(self, key: str) -> bool:
        """Whether either half of ``key``'s exchange is outdated."""
        return any(half in self.stale for half in self.halves(key))

    def said(self, message: Message) -> tuple[tuple[str, str, str], ...]:
        """What ``message``'s exchange shows, each half by speaker and its text casefolded
        with its white space collapsed, in the order they were said (read once a message)."""
        said = self.words.get(message.message_id)
        if said is None:
            partner = self.partner.get(message.message_id)
            halves = [message] if partner is None else [message, partner]
            said = tuple(
                (m.role, m.name or "", " ".join(m.content.casefold().split()))
                for m in sorted(halves, key=lambda m: m.seq)
            )
            self.words[message.message_id] = said
        return said


_Rank = tuple[float, bool, float, float, str]

_AFTER_THE_ENTRIES: _Rank = (math.inf, True, 0.0, 0.0, "")
"""The turn of a message put back with no fresh message left behind it: after every entry."""


class _Queue:
    """The candidates :meth:`Retriever._pick` has yet to look at, in turn: the entries and
    the fresh messages merged by rank (with ``facts_first``, a query without a word to
    search, every entry first: "who am I?" asks for the user's facts), then the outdated
    messages (``stale``).

    A message put back (kept beside its facts) ranks above every message still waiting, so
    it goes before them all, in the turn of the first of them: the entries ranked above that
    one still come first, and no weaker message takes its slot. Taking a candidate and
    putting one back cost O(1)."""

    def __init__(
        self,
        entries: Sequence[_Candidate],
        messages: Sequence[_Candidate],
        stale: set[str],
        *,
        facts_first: bool,
    ) -> None:
        self._entries = deque((_ranking(c), c) for c in entries)
        self._fresh = deque((_ranking(c), c) for c in messages if c.key not in stale)
        self._old = deque(c for c in messages if c.key in stale)
        self._stale = stale
        self._facts_first = facts_first

    def pop(self) -> _Candidate | None:
        """The next candidate to look at, or ``None`` when none is left."""
        if self._entries and (
            self._facts_first or not self._fresh or self._entries[0][0] < self._fresh[0][0]
        ):
            return self._entries.popleft()[1]
        if self._fresh:
            return self._fresh.popleft()[1]
        return self._old.popleft() if self._old else None

    def put_back(self, message: _Candidate) -> None:
        """Look at ``message``, taken earlier, again before every message still waiting."""
        if message.key in self._stale:
            self._old.appendleft(message)
        else:
            turn = self._fresh[0][0] if self._fresh else _AFTER_THE_ENTRIES
            self._fresh.appendleft((turn, message))

    def outdate(self, message: _Candidate) -> None:
        """Look at ``message`` again after every other candidate."""
        self._old.append(message)

    def upcoming_messages(self, count: int) -> list[_Candidate]:
        """The next ``count`` messages waiting (whose rows are read together)."""
        waiting = itertools.chain((c for _, c in self._fresh), self._old)
        return list(itertools.islice(waiting, count))


class _Chosen:
    """The entries and messages picked so far, in the order picked. The messages are
    indexed by each half of their exchange and by what they say, so that telling whether
    one already shows a message, or which ones an entry may now tell, reads no other."""

    def __init__(self, exchanges: _Exchanges) -> None:
        self.entries: list[_Candidate] = []
        self.messages: dict[str, _Candidate] = {}
        self._exchanges = exchanges
        self._by_half: dict[str, str] = {}
        self._by_said: dict[tuple[tuple[str, str, str], ...], str] = {}

    def __len__(self) -> int:
        return len(self.entries) + len(self.messages)

    def add(self, candidate: _Candidate) -> None:
        if not isinstance(candidate.item, Message):
            self.entries.append(candidate)
            return
        self.messages[candidate.key] = candidate
        for half in self._exchanges.halves(candidate.key):
            self._by_half[half] = candidate.key
        self._by_said[self._exchanges.said(candidate.item)] = candidate.key

    def shows(self, message: Message) -> bool:
        """Whether a picked message shows ``message``: as itself, as its partner, or word
        for word (the same question asked again and answered alike says nothing new; items
        scored alike rank newest first, so the newest is the one shown)."""
        return message.message_id in self._by_half or self._exchanges.said(message) in self._by_said

    def drop_told_by(self, entry: KnowledgeEntry) -> None:
        """Drop the messages whose exchange the entries, ``entry`` now among them, say
        (:meth:`_Exchanges.hidden`): only the messages ``entry`` cites can have become so."""
        cited = {self._by_half[m] for m in entry.source_message_ids if m in self._by_half}
        for key in cited:
            if self._exchanges.hidden(self.messages[key].item):
                self._drop(key)

    def waiting_for_fact(self) -> _Candidate | None:
        """Drop, and return, the last message picked when an entry cites it: it gives its
        slot to the entry now picked (one slot each, so one message for each entry), while
        a message picked after it (ranked below it) keeps its place."""
        if not self.messages:
            return None
        last = self.messages[next(reversed(self.messages))]
        return self._drop(last.key) if self._exchanges.cited(last.item) else None

    def _drop(self, key: str) -> _Candidate:
        candidate = self.messages.pop(key)
        for half in self._exchanges.halves(key):
            if self._by_half.get(half) == key:
                del self._by_half[half]
        if isinstance(candidate.item, Message):
            said = self._exchanges.said(candidate.item)
            if self._by_said.get(said) == key:
                del self._by_said[said]
        return candidate


def _ranking(candidate: _Candidate) -> tuple[float, bool, float, float, str]:
    """Best first: by score, then an entry before a message (a fact its message lifts
    comes first), then by its own score (the facts one message lifts alike come in the
    order of what each says), the newest entry first, and by id; messages tied so keep
    the rankings' order (newest first). No tie is left to the order rows are read in."""
    item = candidate.item
    if isinstance(item, KnowledgeEntry):
        newest = -item.valid_from.timestamp()
        return (-candidate.score, False, -candidate.own, newest, item.entry_id)
    return (-candidate.score, True, -candidate.own, 0.0, "")


def _fuse(
    candidates: Sequence[_Candidate], alpha: float, query: str, asked: frozenset[str]
) -> None:
    """Set each candidate's score: ``alpha`` times its lexical score divided by the best
    one, plus ``1 - alpha`` times its semantic share (:func:`_semantic`; 0 for a candidate
    the semantic ranking did not propose, and for all when none reaches
    :data:`COSINE_MATCH`). The share starts at an absolute floor, not at the worst
    candidate: a min-max scale made the least unrelated candidate a perfect match, and a
    small gap in cosine a large one in score. A fact about someone or something of the
    user's that ``query`` does not name keeps :data:`_OTHER_SUBJECT_SHARE` of its share. A
    candidate without a vector (not embedded yet, or refused by the embedder) has no
    cosine to tell: its lexical score stands for both (words shared with the query go
    with a near meaning), so its good matches are not pushed below the embedded items'
    poor ones. Candidates holding the same words of the query (``asked``, as stored text
    is cut) match it alike by their words, so they share one lexical score
    (:func:`_alike_by_words`) and their meaning orders them; with no meaning to order
    them (``alpha`` 1: no query vector, or a lexical ranking asked for; or no candidate
    near the query) BM25's order stands."""
    nearest = max((c.cosine for c in candidates if c.cosine is not None), default=0.0)
    matched = nearest >= COSINE_MATCH
    if alpha < 1 and matched:
        _alike_by_words(candidates, asked)
    best = max((c.lexical for c in candidates), default=0.0)
    asked = _query_words(query)
    for c in candidates:
        lexical = c.lexical / best if best > 0 else 0.0
        semantic = lexical if c.unembedded else _semantic(c.cosine, nearest) if matched else 0.0
        if isinstance(c.item, KnowledgeEntry) and not _names_subject(c.item.text, asked):
            c.subject_share = _OTHER_SUBJECT_SHARE
        c.meant = c.subject_share * semantic
        c.score = c.own = alpha * lexical + (1 - alpha) * c.meant


def _alike_by_words(candidates: Sequence[_Candidate], asked: frozenset[str]) -> None:
    """Give the lexical matches of a kind (entries, messages: two indexes, two scales)
    holding the same words of the query (``asked``; a message's speaker's name, which it
    is indexed with, included) one lexical score, so that their meaning orders them: BM25
    tells those apart only by their length and by how often they repeat a word, which
    says nothing of which one answers. "Imran keeps checking the fuel economy screen like
    it's a video game." outscored "He runs a phone repair shop on Oldham Road" for "What
    does Imran do?" by being shorter, the name being the one word of the question either
    holds.

    The matches holding a set of the query's words score the least of theirs or, when
    greater, the most the matches holding a part of that set score: a match holding every
    word of the query another holds, and more, never scores below it lexically (a long
    message holding "tennis" and "club" put the short answer holding both below every
    message holding "tennis" alone). The least, not the best: lifted to the best, every message
    holding only the user's name matched as well as the shortest of them did, and crowded
    answers holding no word of the question out. A match holding none of ``asked`` (the
    index cut it otherwise) keeps its score."""
    least: dict[tuple[str, frozenset[str]], float] = {}
    held: list[tuple[_Candidate, tuple[str, frozenset[str]]]] = []
    for candidate in candidates:
        item = candidate.item
        if candidate.lexical <= 0 or item is None:
            continue
        if isinstance(item, KnowledgeEntry):
            kind, text = "entry", item.text
        else:
            kind, text = "message", spoken(item.content, item.name)
        words = held_stems(text, asked)
        if not words:
            continue
        held.append((candidate, (kind, words)))
        least[kind, words] = min(least.get((kind, words), math.inf), candidate.lexical)
    shared = {
        (kind, words): max(
            score for (other, part), score in least.items() if other == kind and part <= words
        )
        for kind, words in least
    }
    for candidate, group in held:
        candidate.lexical = shared[group]


COSINE_MATCH = 0.2
"""The cosine the query's nearest candidate must reach for the semantic ranking to count
at all: below it, the default model (all-MiniLM-L6-v2) saw nothing the query is about
("what is the capital of Australia?" is 0.19 from the message "I'm allergic to
peanuts.", 0.11 from the fact "User is allergic to peanuts."; "what can't I eat?" is 0.37
from the fact). It costs ``make eval`` the few questions the model puts that far from
every text, the answer included, and that share no word with it (see README,
"Retrieval evaluation")."""

COSINE_FLOOR = 0.1
"""The cosine at or below which a candidate's semantic share is 0: about what the default
model gives two unrelated texts. Some answers of ``make eval`` sit barely above it (a
question can be far from the statement that answers it), so it is not higher."""


def _semantic(cosine: float | None, nearest: float) -> float:
    """The semantic share of a cosine: 0 at :data:`COSINE_FLOOR` or below (or without a
    cosine), growing linearly to 1 at the ``nearest`` candidate's cosine (a query and the
    texts of one conversation can all be near, when they share a speaker's name)."""
    if cosine is None or nearest <= COSINE_FLOOR:
        return 0.0
    return max(0.0, (cosine - COSINE_FLOOR) / (nearest - COSINE_FLOOR))


_OTHER_SUBJECT_SHARE = 0.5
"""The part of its semantic share, and of its source message's whole score, a fact about
someone or something of the user's keeps when the query does not name it: "User's sister
lives in Trondheim." reads as close to "Where does Ann live?" as "User lives in Bergen."
does, or closer, yet the question is about the user."""

_OWNED_SUBJECT = re.compile(
    r"(?!(?:It|He|She|That|There|Here|What|Who|Where|Let)['\u2019]s\b)"
    r"(?:User|[^\W\d_]+(?:[-\s][^\W\d_]+)?)['\u2019]s\s+"
    r"(?:(?P<phrase>[^\W\d_]+(?:\s+[^\W\d_]+){0,3}?)\s+(?:lives|lived"
    r"|works|worked|is|was|are|were|has|had|likes|loves|moved|studies|owns|goes|plays)\b"
    r"|(?P<word>[^\W\d_]+))"
)
"""The subject of a fact about someone or something of the user's, as the extractors
write it ("User's sister ...", "User's older brother ...", "User's friend Tom ...", or
with the speaker's name for "User" where the conversation names them: "Maria's friend
Joana ..."): the words before its verb (or its first word). A contraction ("It's",
"She's") owns nothing."""


def _query_words(query: str) -> frozenset[str]:
    """The query's words and those of the topics it touches, as the index compares them."""
    return frozenset(index_word(KIN_NOUNS.get(term, term)) for term in search_terms(query))


def _names_subject(text: str, asked: frozenset[str]) -> bool:
    """Whether a fact is about the user, or about someone or something of the user's that
    the query (its words ``asked``) names."""
    possessive = "'s" in text or "\u2019s" in text  # a quick test first: most facts have none
    owned = _OWNED_SUBJECT.match(text) if possessive else None
    if owned is None:
        return True
    subject = owned["phrase"] or owned["word"]
    return any(index_word(word) in asked for word in subject.split())
