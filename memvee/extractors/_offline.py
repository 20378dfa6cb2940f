"""A deterministic, rule-based extractor that needs no network and no API key.

It recognises a small set of self-disclosures in the user's own messages ("I work at
Acme", "my sister lives in Bergen", "I'm allergic to peanuts") and restates each as a
third-person sentence. It is deliberately conservative: a missed fact costs less than a
wrong one, so questions, negations, hypotheticals and anything it cannot parse are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from events.extraction import (
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
)

__all__ = ["OfflineExtractor", "extract_facts"]

_MAX_OBJECT_WORDS = 12
_MAX_NAME_WORDS = 4

# Sentences and clauses.
_SENTENCE_END = re.compile(r"[.!?\u2026]+(?=\s|$)")
_NEVER_FINAL = frozenset({"mr", "mrs", "ms", "dr", "st", "mt", "prof", "vs", "e.g", "i.e", "no"})
_NAME_SUFFIXES = frozenset({"inc", "ltd", "co", "corp", "jr", "sr", "etc", "u.s", "u.k", "rd"})
_CLAUSE_BREAK = re.compile(
    r"\s*(?:[,;:]\s*(?:(?:and|but|so|plus)\s+)?|\s(?:and|but|so|plus)\s+|\s+-+\s+)(?=(?:i|my)\b)",
    re.IGNORECASE,
)
_ELIDED_SUBJECT = re.compile(
    r"\s*,?\s+and\s+(?=(?:also\s+)?(?:work|live|love|like|enjoy|adore|moved)\b)",
    re.IGNORECASE,
)
_STARTS_WITH_I = re.compile(r"i\b", re.IGNORECASE)
_EDGE_JUNK = ' \t"\u201c\u201d.,;:!?\u2026'

# Objects: what a disclosure is about.
_TRAILING_FILLER = re.compile(
    r"\s+(?:too|as\s+well|also|now|right\s+now|currently|these\s+days|nowadays"
    r"|at\s+the\s+moment|a\s+lot|so\s+much|very\s+much|lol|haha)$",
    re.IGNORECASE,
)
_FIRST_TO_THIRD_PERSON = (
    (re.compile(r"\bmyself\b", re.IGNORECASE), "themselves"),
    (re.compile(r"\bmine\b", re.IGNORECASE), "theirs"),
    (re.compile(r"\bmy\b", re.IGNORECASE), "their"),
    (re.compile(r"\bme\b", re.IGNORECASE), "them"),
)
_NOT_ABOUT_THE_USER = re.compile(r"\b(?:i|you|your|yours|yourself)\b", re.IGNORECASE)
_VAGUE_OBJECTS = frozenset(
    {"it", "that", "this", "them", "those", "these", "him", "her", "everything", "nothing"}
    | {"something", "anything", "stuff", "things", "so", "too", "myself"}
)
_NOUN_SYNONYMS = {"mom": "mother", "mum": "mother", "dad": "father"} | {
    "grandma": "grandmother",
    "grandpa": "grandfather",
}

# Regex building blocks; every rule is matched case-insensitively against a whole clause.
_LEAD_IN = (
    r"(?:(?:and|but|so|also|plus|oh|well|actually|btw|anyway|ok|okay|yes|yeah|hi|hey|hello"
    r"|fyi|honestly|by\s+the\s+way)\b[\s,!]*)*"
)
_ADVERBS = (
    r"(?:(?:also|really|absolutely|currently|now|still|just|recently|totally|truly"
    r"|actually|genuinely|do)\s+)*"
)
_DEGREE = r"(?:(?:also|very|severely|really|quite|extremely|highly|mildly|slightly|deathly)\s+)*"
_I = r"i\s+" + _ADVERBS
_I_AM = r"i(?:\s+am|'m)\s+" + _ADVERBS
_I_HAVE = r"i(?:\s+have|'ve)\s+"
_ARTICLE = r"(?:a|an)\s+"
_NOT_A_ROLE = r"(?!(?:bit|little|lot|tad|few|couple|moment|second|minute|sec)\b)"
_RELATIVES = (
    r"sister|brother|mother|mom|mum|father|dad|wife|husband|partner|son|daughter|friend"
    r"|boyfriend|girlfriend|fianc[e\u00e9]e?|grandmother|grandfather|grandma|grandpa|aunt"
    r"|uncle|cousin|niece|nephew|roommate|boss|colleague"
)
_PETS = r"dog|cat|puppy|kitten|hamster|rabbit|bunny|parrot|bird|horse|fish|turtle|guinea\s+pig"
_KIN_ADJECTIVE = r"(?:(?:little|big|older|younger|elder|eldest|oldest|youngest|twin|best|baby)\s+)?"
_MY_KIN = (
    rf"my\s+(?P<noun>{_KIN_ADJECTIVE}(?:{_RELATIVES}|{_PETS}))"
    r"(?:\s+(?P<alias>(?-i:[A-Z][a-z]+(?:[-'][A-Za-z]+)?)))?"
)


@dataclass(frozen=True, slots=True)
class _Rule:
    """One kind of disclosure: a clause pattern and the sentence it becomes.

    Named groups feed the template: ``obj`` is cleaned into third person, ``name`` must
    look like a name, ``noun``/``verb``/``prep`` are lower-cased. ``alias`` (a name right
    after "my sister") adds a naming fact and stays in the subject.
    """

    pattern: re.Pattern[str]
    template: str

    def facts(self, clause: str) -> Iterator[str] | None:
        """The facts of ``clause``, or None when this rule does not describe it."""
        match = self.pattern.fullmatch(clause)
        if match is None:
            return None
        return self._render(match)

    def _render(self, match: re.Match[str]) -> Iterator[str]:
        values: dict[str, str] = {}
        for group, raw in match.groupdict().items():
            if raw is None:
                continue
            value = _clean(group, raw)
            if value is None:
                return
            values[group] = value
        alias = values.pop("alias", None)
        if alias is None:
            yield self.template.format_map(values)
            return
        if "name" not in values:
            yield f"User's {values['noun']} is called {alias}."
        values["noun"] = f"{values['noun']} {alias}"
        yield self.template.format_map(values)


def _rule(pattern: str, template: str) -> _Rule:
    return _Rule(re.compile(_LEAD_IN + pattern, re.IGNORECASE), template)


_RULES: tuple[_Rule, ...] = (
    _rule(rf"i(?:\s+am|'m)\s+{_DEGREE}allergic\s+to\s+(?P<obj>.+)", "User is allergic to {obj}."),
    _rule(
        rf"(?:{_I}work|{_I_AM}working)\s+(?P<prep>at|for)\s+(?P<obj>.+)", "User works {prep} {obj}."
    ),
    _rule(rf"{_I_AM}employed\s+at\s+(?P<obj>.+)", "User works at {obj}."),
    _rule(rf"{_I_AM}employed\s+by\s+(?P<obj>.+)", "User works for {obj}."),
    _rule(rf"(?:{_I}work|{_I_AM}working)\s+as\s+(?P<obj>{_ARTICLE}.+)", "User works as {obj}."),
    _rule(
        rf"(?:{_I}live|{_I_AM}(?:living|based)|{_I_HAVE}been\s+living)\s+in\s+(?P<obj>.+)",
        "User lives in {obj}.",
    ),
    _rule(rf"(?:{_I_HAVE}|i\s+){_ADVERBS}moved\s+to\s+(?P<obj>.+)", "User moved to {obj}."),
    _rule(rf"{_I}(?P<verb>love|like|enjoy|adore)\s+(?P<obj>.+)", "User {verb}s {obj}."),
    _rule(
        rf"i(?:\s+have|'ve|\s+have\s+got|'ve\s+got)\s+{_ARTICLE}(?P<noun>{_PETS})"
        r"\s+(?:called|named)\s+(?P<name>.+)",
        "User's {noun} is called {name}.",
    ),
    _rule(r"(?:my\s+name\s+is|call\s+me|i\s+go\s+by)\s+(?P<name>.+)", "User's name is {name}."),
    _rule(rf"i(?:\s+am|'m)\s+(?P<obj>{_ARTICLE}{_NOT_A_ROLE}.+)", "User is {obj}."),
    _rule(
        rf"{_MY_KIN}(?:'s\s+name\s+is|\s+is\s+(?:called|named))\s+(?P<name>.+)",
        "User's {noun} is called {name}.",
    ),
    _rule(
        rf"{_MY_KIN}\s+(?:currently\s+|still\s+|now\s+)?lives\s+in\s+(?P<obj>.+)",
        "User's {noun} lives in {obj}.",
    ),
    _rule(
        rf"{_MY_KIN}\s+works\s+(?P<prep>at|for)\s+(?P<obj>.+)", "User's {noun} works {prep} {obj}."
    ),
    _rule(rf"{_MY_KIN}\s+works\s+as\s+(?P<obj>{_ARTICLE}.+)", "User's {noun} works as {obj}."),
    _rule(
        rf"{_MY_KIN}\s+(?:(?:has|'s)\s+)?(?:just\s+|recently\s+)?moved\s+to\s+(?P<obj>.+)",
        "User's {noun} moved to {obj}.",
    ),
    _rule(
        rf"{_MY_KIN}(?:\s+is|'s)\s+{_DEGREE}allergic\s+to\s+(?P<obj>.+)",
        "User's {noun} is allergic to {obj}.",
    ),
    _rule(
        rf"{_MY_KIN}\s+(?P<verb>loves|likes|enjoys|adores)\s+(?P<obj>.+)",
        "User's {noun} {verb} {obj}.",
    ),
    _rule(
        rf"{_MY_KIN}(?:\s+is|'s)\s+(?P<obj>{_ARTICLE}{_NOT_A_ROLE}.+)", "User's {noun} is {obj}."
    ),
)


def _clean(group: str, raw: str) -> str | None:
    """The value of one matched group as it goes into a fact, or None to drop the fact."""
    if group == "obj":
        return _clean_object(raw, max_words=_MAX_OBJECT_WORDS)
    if group == "name":
        name = _clean_object(raw, max_words=_MAX_NAME_WORDS)
        return name if name is not None and name[0].isalpha() else None
    if group == "noun":
        words = raw.casefold().split()
        words[-1] = _NOUN_SYNONYMS.get(words[-1], words[-1])
        return " ".join(words)
    if group == "alias":
        return raw
    return raw.casefold()


def _clean_object(raw: str, *, max_words: int) -> str | None:
    """The object of a disclosure in third person, or None when it is not worth a fact."""
    text = " ".join(raw.split()).strip(_EDGE_JUNK)
    while (shorter := _TRAILING_FILLER.sub("", text).strip(_EDGE_JUNK)) != text:
        text = shorter
    if not text or text.casefold() in _VAGUE_OBJECTS or len(text.split()) > max_words:
        return None
    if _NOT_ABOUT_THE_USER.search(text):
        return None
    for pattern, replacement in _FIRST_TO_THIRD_PERSON:
        text = pattern.sub(replacement, text)
    return text


def _ends_sentence(line: str, start: int, end: re.Match[str]) -> bool:
    """Whether the punctuation ``end`` closes a sentence, not an abbreviation like "St."."""
    if end.group() != ".":
        return True
    before = line[start : end.start()].split()
    last_word = before[-1].casefold().lstrip("(\"'") if before else ""
    if last_word in _NAME_SUFFIXES:
        return line[end.end() :].lstrip()[:1].isupper()
    is_initial = len(last_word) == 1 and last_word.isalpha()
    return last_word not in _NEVER_FINAL and not is_initial


def _statements(text: str) -> Iterator[str]:
    """The sentences of ``text`` that state something: questions are dropped."""
    for line in text.replace("\u2019", "'").splitlines():
        start = 0
        for end in _SENTENCE_END.finditer(line):
            if not _ends_sentence(line, start, end):
                continue
            if "?" not in end.group():
                yield line[start : end.end()]
            start = end.end()
        yield line[start:]


def _clauses(sentence: str) -> Iterator[str]:
    """The clauses of a sentence that each have their own subject ("I ...", "my ...")."""
    for clause in _CLAUSE_BREAK.split(sentence.strip(_EDGE_JUNK)):
        parts = _ELIDED_SUBJECT.split(clause) if _STARTS_WITH_I.match(clause) else [clause]
        yield parts[0].strip(_EDGE_JUNK)
        for part in parts[1:]:
            yield "I " + part.strip(_EDGE_JUNK)


def _message_facts(content: str) -> Iterator[str]:
    """The facts one user message discloses about its author, in the order it states them."""
    for sentence in _statements(content):
        for clause in _clauses(sentence):
            for rule in _RULES:
                facts = rule.facts(clause)
                if facts is not None:
                    yield from facts
                    break


def extract_facts(messages: Iterable[BatchMessage]) -> tuple[ExtractedFact, ...]:
    """The facts the user's own messages disclose, deduplicated, in order of first mention.

    Facts that differ only in case or spacing are one fact citing every message that
    stated it; assistant and system messages are ignored, as they are not the user's word.
    """
    texts: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for message in messages:
        if message.role != "user":
            continue
        for text in _message_facts(message.content):
            key = " ".join(text.casefold().split())
            texts.setdefault(key, text)
            cited = sources.setdefault(key, [])
            if message.message_id not in cited:
                cited.append(message.message_id)
    return tuple(ExtractedFact(texts[key], tuple(sources[key])) for key in texts)


class OfflineExtractor:
    """Rule-based extraction of the user's self-disclosed facts, with no network.

    The fallback when no Claude API key is configured, and a fast deterministic
    extractor for tests: the same batch always yields the same facts in the same order.
    """

    name = "offline"

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """Extract the facts that the batch's user messages state about the user."""
        return ExtractionResult(facts=extract_facts(batch.messages), extractor=self.name)

    async def aclose(self) -> None:
        """Nothing to release; present to satisfy the Extractor protocol."""
