"""A deterministic, rule-based extractor that needs no network and no API key.

It recognises a small set of self-disclosures in the user's own messages ("I work at
Acme", "my sister lives in Bergen", "I'm allergic to peanuts") and restates each as a
third-person sentence. It is deliberately conservative: a missed fact costs less than a
wrong one, so questions, negations, hypotheticals, dreams and wishes ("In my dreams, I
live in Paris"), what someone else is quoted saying, pasted text (code, text to
translate, another speaker's lines of a transcript), what its writer takes back as they
say it ("I work at Acme (not anymore)") and anything it cannot parse are skipped, and a
time or common noun is no workplace or home ("I work at night", "I work for tips" and "I
live in a small apartment" name neither; "I work at google", "eBay", "3M" and "a small
town near Oslo" do), nor is a phrase a name unless written as one ("Call me tomorrow").
In a group chat a named speaker's facts are about that speaker ("Ann lives in Oslo.").

Each fact is also read back as a claim (a slot such as "the user's employer" and a value),
as are the batch's known entries that it can parse, so that a repeated fact is marked
``same`` and a changed single-valued slot (a new job, a new city) is an ``update``. A
retraction ("I quit my job", "I don't live in Oslo any more") ``invalidate``s the known
entries of the slot it names, of the value it names if it names one; an entry listing
that value among others is ``update``d to the others. A batch is folded in
the order its messages were sent (:class:`_Batch`), a change inside it naming the earlier
fact of the answer (``target_fact``), so the history is the same however it was batched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import pairwise

from events.extraction import (
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    FactAction,
    KnownEntry,
)
from projections.terms import KIN_NOUNS

__all__ = ["OfflineExtractor", "extract_facts"]

_MAX_OBJECT_WORDS = 12
_MAX_NAME_WORDS = 4

# Sentences and clauses.
_SENTENCE_END = re.compile(r"[.!?\u2026]+(?=\s|$)")
_NEVER_FINAL = frozenset({"mr", "mrs", "ms", "dr", "st", "mt", "prof", "vs", "e.g", "i.e", "no"})
_NAME_SUFFIXES = frozenset({"inc", "ltd", "co", "corp", "jr", "sr", "etc", "u.s", "u.k", "rd"})
_CLAUSE_BREAK = re.compile(
    r"(?<!\s)(?:\s*[,;:]\s*(?:(?:and|but|so|plus)\b(?:\s+(?:now|then|since\s+then|today))?,?\s+)?"
    r"|\s+(?:and|but|so|plus)\b(?:\s+(?:now|then|since\s+then|today))?,?\s+|\s+-+\s+)"
    r"(?=(?:i|my|we)\b)",
    re.IGNORECASE,
)
_ELIDED_SUBJECT = re.compile(
    r"(?<!\s)(?:\s*,)?\s+and\s+(?=(?:also\s+)?(?:work|live|love|like|enjoy|adore|moved)\b)",
    re.IGNORECASE,
)
_SPACES = re.compile(r"[^\S\n]+")
"""A run of spaces within a line: read as one space, so no pattern reads it again and
again (a long run made reading a message take minutes)."""
_STARTS_WITH_I = re.compile(r"i\b", re.IGNORECASE)
_EDGE_JUNK = ' \t"\u201c\u201d.,;:!?\u2026'

# Objects: what a disclosure is about.
_TRAILING_FILLER = re.compile(
    r"\s+(?:too|as\s+well|also|now|right\s+now|currently|these\s+days|nowadays|any\s?more"
    r"|at\s+the\s+moment|a\s+lot|so\s+much|very\s+much|lol|haha|lmao|btw|tho|though|ofc|idk"
    r"|recently|yesterday|[^\w\s]+"
    r"|last\s+(?:week|month|year|weekend)|this\s+(?:week|month|year)"
    r"|a\s+(?:few|couple\s+of)\s+(?:days|weeks|months)\s+ago)$",
    re.IGNORECASE,
)
_FIRST_TO_THIRD_PERSON = (
    (re.compile(r"\bmyself\b", re.IGNORECASE), "themselves"),
    (re.compile(r"(?<!\ba )(?<!\bthe )\bmine\b", re.IGNORECASE), "theirs"),  # not "a mine"
    (re.compile(r"\bmy\b", re.IGNORECASE), "their"),
    (re.compile(r"\bme\b", re.IGNORECASE), "them"),
)
_NOT_ABOUT_THE_USER = re.compile(r"\b(?:i|you|your|yours|yourself)\b", re.IGNORECASE)
_VAGUE_OBJECTS = frozenset(
    {"it", "that", "this", "them", "those", "these", "him", "her", "everything", "nothing"}
    | {"something", "anything", "stuff", "things", "so", "too", "myself"}
)
# Homes and workplaces: what "I live in ..." and "I work at ..." take as one.
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_COUNT = (
    r"(?:a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty"
    r"|thirty|forty|fifty|a\s+few|a\s+couple(?:\s+of)?|couple\s+of|several|many|\d+)"
)
_AGO = _COUNT + r"\s+(?:days?|weeks?|months?|years?|decades?)\s+ago"
"""A time some days or years past, in words or digits ("five years ago", "10 days ago")."""
_FEW = (
    r"(?:a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a\s+few"
    r"|a\s+couple(?:\s+of)?|couple\s+of|several"
)
_WITHIN_A_YEAR = (
    _FEW + r"|fifteen|twenty|thirty|forty|fifty|[1-9]\d?|[1-2]\d\d|3[0-5]\d|36[0-5])\s+days?"
    r"|" + _FEW + r"|fifteen|twenty|thirty|forty|fifty|[1-9]|[1-4]\d|5[0-2])\s+weeks?"
    r"|" + _FEW + r"|[1-9]|1[0-2])\s+months?"
)
"""Days, weeks or months ago within about a year: "twenty days", "12 months" are a recent
past; "thirty months" or "many weeks" is not."""
_TRAILING_WHEN = re.compile(
    r"\s+(?:(?:back\s+)?in\s+(?:(?:early|late|mid)[\s-]+)?(?:(?:the\s+)?(?:spring|summer"
    r"|autumn|fall|winter)|january|february|march|april|may|june|july|august|september"
    r"|october|november|december|\d{4})(?:\s+\d{4})?"
    r"|(?:on|at|during|over|for)\s+(?:the\s+)?(?:(?:mon|tues|wednes|thurs|fri|satur|sun)days?"
    r"|weekends?|weekdays|nights?|(?:spring|summer|autumn|fall|winter)(?:\s+break)?|holidays?)"
    r"|(?:this|next|that)\s+(?:spring|summer|autumn|fall|winter|weekend|week|month|year)"
    r"|at\s+(?:christmas|easter|new\s+year|thanksgiving)|during\s+.+"
    r"|since\s+.+|for\s+(?:a|an|one|two|three|four|five|six|several|many|a\s+few|\d+)\s+"
    r"(?:days?|weeks?|months?|years?|decades?)|" + _AGO + r"|a\s+while\s+(?:ago|back)"
    r"|last\s+(?:spring|summer|autumn|fall|winter|night|(?:mon|tues|wednes|thurs|fri|satur|sun)day)"
    r"|earlier\s+this\s+(?:week|month|year)|(?:every|each)\s+\w+|(?:until|till|til)\s+.+"
    r"|(?:on|by|as\s+of)\s+(?:the\s+)?(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}"
    r"|\d{1,2}(?:st|nd|rd|th)?(?:\s+of)?\s+" + _MONTH + r"(?:,?\s+\d{4})?"
    r"|" + _MONTH + r"\s+\d{1,2}(?:st|nd|rd|th)?(?:,?\s+\d{4})?)"
    r"|all\s+(?:day|night|week|year)(?:\s+long)?|(?:part|full)[\s-]*time|for\s+(?:now|good|the\s+time\s+being)"
    r"|at\s+(?:the\s+age\s+of\s+)?\d+|as\s+of\s+.+|again|for\s+[$\u20ac\u00a3]\S+.*"
    r"|from\s+(?:\d{4}|tomorrow|next\s+\w+|(?:mon|tues|wednes|thurs|fri|satur|sun)day|now\s+on)"
    r"|for\s+(?:work|a\s+(?:new\s+)?job|school|university|college|my\s+\w+))$",
    re.IGNORECASE,
)
"""A time phrase ending a home or workplace: when, not where."""
_NUMBERED = re.compile(r"[a-z]+(?:\s+(?:number|no\.?|#))?\s+#?\w*\d\w*", re.IGNORECASE)
"""A place known by its number ("city 3", "shop number 12")."""
_ARTICLES = frozenset({"a", "an", "the"})
_ASIDE = re.compile(r"\s*(?:[,;(]|\s-+\s|\s?[\u2013\u2014]\s?|\s+but\s+)")
"""Where an aside begins: a comma, semicolon, bracket, dash or "but"."""
_NEXT_CLAUSE = re.compile(r"\s+(?:and|so)\s+(?=[a-z])")
"""Where a writer who capitalises goes on to say something else ("moved to Montreal and
loves it"): a name joined by "and" is capitalised ("Procter and Gamble")."""
_PLACEHOLDER = re.compile(r"[_<>{}\[\]|/]|\b(?:x{3,}|n/?a|tbd|or|either)\b", re.IGNORECASE)
"""A template's blank ("<city>", "___", "XXX") or a choice ("Oslo or Bergen"): no one
place."""
_NAME_WORD = re.compile(r"[^\W\d_][\w'.-]*")
_NAME_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "di", "du", "del", "della", "la", "le", "bin"}
    | {"ibn", "al", "el", "ter", "ten", "y", "dos", "das", "do"}
)
"""Lower-case words inside a name ("Ludwig van Beethoven")."""
_NOT_NAME_WORDS = frozenset(
    {"not", "no", "never", "nobody", "anything", "whatever", "back", "later", "tomorrow"}
    | {"today", "tonight", "now", "soon", "anytime", "again", "sometime", "please", "about"}
    | {"at", "to", "by", "for", "in", "on", "with", "from", "after", "before", "when", "if"}
    | {"the", "a", "an", "and", "or", "but", "this", "that", "it", "what", "maybe", "once"}
)
"""Words no name is made of: negations, times and the words of a longer phrase."""
_NOT_NAMES = frozenset(
    {"a", "an", "my", "your", "his", "her", "our", "their", "its", "this", "that", "these"}
    | {"those", "some", "any", "every", "each", "no", "one", "another", "such", "all", "both"}
    | {"least", "most", "first", "last", "what", "which", "it", "there", "here", "times"}
    | {"same", "other", "whatever", "wherever", "someone", "somebody", "anyone", "everyone"}
    | {"people", "others", "myself", "yourself", "age"}
    | {"night", "nights", "day", "days", "weekends", "weekend", "weekdays", "noon", "midnight"}
    | {"dawn", "dusk", "morning", "mornings", "evening", "evenings", "christmas", "easter"}
    | {"mondays", "tuesdays", "wednesdays", "thursdays", "fridays", "saturdays", "sundays"}
)
"""Words that open no name: articles, possessives, times ("at night", "at Christmas")."""
_COMMON_NOUNS = frozenset(
    {"home", "fear", "hope", "peace", "denial", "poverty", "luxury", "comfort", "harmony"}
    | {"misery", "squalor", "sin", "pain", "debt", "hiding", "exile", "silence", "style"}
    | {"sync", "shifts", "speed", "pace", "random", "ease", "risk", "work", "school", "bed"}
    | {"full", "part", "length", "large", "heart", "theory", "practice", "general", "place"}
    | {"moment", "past", "present", "future", "dark", "now", "denial", "limbo", "bliss"}
    | {"chaos", "hell", "heaven", "terror", "dread", "anxiety", "shame", "despair", "agony"}
    | {"darkness", "isolation", "solitude", "fantasy", "scale", "will", "cost"}
    | {"paradise", "capacity"}
)
"""Common nouns after "live in" or "work at" ("in fear", "at home"): any other word may
open a name, capitalised or not ("I live in oslo", "eBay", "den Haag")."""
_NOT_WORKPLACES = frozenset(
    {"pace", "speed", "rate", "level", "loss", "distance", "desk", "computer", "laptop"}
    | {"table", "minimum", "standstill", "time", "glance", "stretch", "go", "push"}
    | {"capacity", "job", "workplace", "company", "place"}
)
"""What follows "work at a" without naming a workplace ("at a fast pace" ends on one)."""
_TIME_NOUNS = frozenset(
    {"hour", "hours", "minute", "minutes", "while", "lunch", "lunchtime", "breakfast"}
    | {"dinner", "sunrise", "sunset", "dawn", "dusk", "noon", "midnight", "night", "nights"}
    | {"day", "days", "week", "weeks", "month", "months", "year", "years", "weekend"}
    | {"weekends", "shift", "shifts", "time", "times", "moment", "morning", "mornings"}
    | {"evening", "evenings", "afternoon", "afternoons", "overtime", "ages", "bit"}
)
"""Nouns of time: a phrase they head ("at odd hours", "for a while") says when, or how
long, not where."""
_REWARDS = frozenset(
    {"free", "tips", "money", "wage", "wages", "pay", "cash", "peanuts", "nothing", "food"}
    | {"fun", "exposure", "experience", "commission", "living", "salary", "credit", "love"}
)
"""What one works for without it being an employer ("for tips", "for minimum wage")."""
_CARE_HOMES = frozenset(
    {"nursing home", "care home", "retirement home", "group home", "foster home"}
    | {"children's home", "residential home", "retirement community", "assisted living"}
)
"""Homes known by their kind, not by a name ("my grandma lives in a nursing home")."""
_TIME = re.compile(
    r"\d{1,2}(?:[:.]\d{2})?\s*(?:[ap]\.?m\b\.?|o'?clock\b|h\b)?(?:\s|$)", re.IGNORECASE
)
"""A time of day opening a workplace ("at 9am", "at 5 pm", "at 9:30"), not "3M" or "7-Eleven"."""
_PLACE_PREPOSITIONS = frozenset(
    {"in", "on", "at", "near", "by", "with", "of", "for", "from", "downtown", "across"}
    | {"outside", "inside", "next", "close", "around", "behind", "opposite", "where", "and"}
)
_LOWER_CASE_I = re.compile(r"(?<![\w'])i(?:'(?:m|ve|d|ll))?(?![\w']|\.e\.)")
"""The pronoun "i" written lower-case: its writer does not capitalise names either."""

# Regex building blocks; every rule is matched case-insensitively against a whole clause.
_PAST_TIME = (
    r"(?:yesterday|recently|lately|last\s+(?:night|week|weekend|month|year)"
    r"|this\s+morning|earlier\s+(?:today|this\s+\w+)"
    r"|(?:" + _WITHIN_A_YEAR + r")\s+ago)"
)
"""A time in the recent past opening a clause ("Yesterday I quit my job", "Two weeks ago
I moved to Bergen", "5 months ago I quit my job"): when the change happened, so what
follows is still the user's now. Years ago is none: a job left then may not be the one
known now, and a wrong end costs more than a missed one. Nor is a time that may lie ahead
("In December", "This year"): it opens plans too."""
_LEAD_IN = (
    r"(?:(?:and|but|so|also|plus|oh|well|actually|btw|anyway|ok|okay|yes|yeah|hi|hey|hello"
    r"|fyi|honestly|by\s+the\s+way|" + _PAST_TIME + r")\b[\s,!]*){0,5}"
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
_KIN_ADJECTIVE = (
    r"(?:(?:other|second|third|fourth)\s+)?"
    r"(?:(?:little|big|older|younger|elder|eldest|oldest|youngest|middle|twin|best|baby)\s+)?"
)
"""How a relative is told from another of their kind: "my other sister" and "my second
sister" are not "my sister", so their facts are their own and end none of hers."""
_MOVED_TO = (
    r"moved\s+(?:back\s+|over\s+|home\s+)?(?:from\s+.+?\s+)?to\s+"
    r"(?:.+?(?:,?\s+and)?,?\s+(?:then|later|finally|eventually"
    r"|afterwards|now)\s+(?:moved\s+|on\s+)?to\s+)*(?P<place>.+?)(?:\s+from\s+.+)?"
)
"""Moved to a place, from another ("moved from Oslo to Bergen", "moved to Bergen from
Oslo"), back ("moved back to Oslo") or on from there ("to Paris and then to Berlin":
the last one)."""
_MY_KIN = (
    rf"my\s+(?P<noun>{_KIN_ADJECTIVE}(?:{_RELATIVES}|{_PETS}))"
    r"(?:\s+(?P<alias>(?-i:[A-Z][a-z]+(?:[-'][A-Za-z]+)?)))?"
)
_MY_KIN_SUBJECT = _MY_KIN.replace("?P<noun>", "?P<kin>")
"""A relative or pet as a retraction names them: its ``kin`` is read as a claim's is."""


@dataclass(frozen=True, slots=True)
class _Naming:
    """A relative's or pet's name given in passing ("my sister Kari lives in Bergen"): it
    adds the name but ends no other, as it may be another sister's."""

    text: str


@dataclass(frozen=True, slots=True)
class _Rule:
    """One kind of disclosure: a clause pattern and the sentence it becomes.

    Named groups feed the template: ``obj`` is cleaned into third person, ``name``,
    ``place`` (a home) and ``employer`` must look like a name (see :func:`_names_a_place`),
    ``noun``/``verb``/``prep`` are lower-cased. ``alias`` (a name right after "my sister")
    adds a naming fact and stays in the subject.
    """

    pattern: re.Pattern[str]
    template: str

    def facts(self, clause: str, *, cased: bool) -> Iterator[str | _Naming] | None:
        """The facts of ``clause``, or None when this rule does not describe it. ``cased``
        says whether its writer capitalises names (see :func:`_writes_in_case`)."""
        match = self.pattern.fullmatch(clause)
        if match is None:
            return None
        return self._render(match, cased=cased)

    def corrected(self, clause: str, value: str, *, cased: bool) -> list[str | _Naming]:
        """The facts of ``clause`` (which this rule describes) with its home, workplace or
        name corrected to ``value`` ("I live in Oslo", "I meant Bergen"); none when it
        names no such thing or ``value`` is no such thing."""
        match = self.pattern.fullmatch(clause)
        group = next((g for g in _CORRECTABLE if match and match.groupdict().get(g)), None)
        if match is None or group is None:
            return []
        facts = self.facts(clause[: match.start(group)] + value, cased=cased)
        return [] if facts is None else list(facts)

    def _render(self, match: re.Match[str], *, cased: bool) -> Iterator[str | _Naming]:
        values: dict[str, str] = {}
        for group, raw in match.groupdict().items():
            if raw is None:
                continue
            value = _clean(group, raw, cased=cased)
            if value is None:
                return
            values[group] = value
        alias = values.pop("alias", None)
        if alias is None:
            yield self.template.format_map(values)
            return
        if "name" not in values:
            yield _Naming(f"User's {values['noun']} is called {alias}.")
        values["noun"] = f"{values['noun']} {alias}"
        yield self.template.format_map(values)


_CORRECTABLE = ("place", "employer", "name", "nickname")
"""The groups a correction may replace: one value of a single-valued slot."""
_CORRECTION = re.compile(
    r"(?:(?:sorry|oops|no|wait|correction|actually)\b[\s,:!-]*)+"
    r"(?:i\s+meant?(?:\s+to\s+say)?|it(?:'s|\s+is|\s+was)|make\s+(?:it|that))?\s*"
    r"(?P<value>(?-i:[A-Z0-9]).*)|i\s+meant?(?:\s+to\s+say)?\s+(?P<meant>(?-i:[A-Z0-9]).*)",
    re.IGNORECASE,
)
"""A clause correcting what the writer just said to a name ("sorry, I meant Bergen",
"Actually, it's Bergen"); "Actually I moved to Bergen" says something new."""


def _rule(pattern: str, template: str) -> _Rule:
    return _Rule(re.compile(_LEAD_IN + pattern, re.IGNORECASE), template)


_RULES: tuple[_Rule, ...] = (
    _rule(rf"i(?:\s+am|'m)\s+{_DEGREE}allergic\s+to\s+(?P<obj>.+)", "User is allergic to {obj}."),
    _rule(
        rf"(?:{_I}work|{_I_AM}working)\s+(?P<prep>at|for)\s+(?P<employer>.+)",
        "User works {prep} {employer}.",
    ),
    _rule(rf"{_I_AM}employed\s+at\s+(?P<employer>.+)", "User works at {employer}."),
    _rule(rf"{_I_AM}employed\s+by\s+(?P<employer>.+)", "User works for {employer}."),
    _rule(rf"(?:{_I}work|{_I_AM}working)\s+as\s+(?P<obj>{_ARTICLE}.+)", "User works as {obj}."),
    _rule(
        rf"(?:{_I}live|{_I_AM}(?:living|based)|{_I_HAVE}been\s+living)\s+in\s+(?P<place>.+)",
        "User lives in {place}.",
    ),
    _rule(rf"(?:{_I_HAVE}|i\s+){_ADVERBS}{_MOVED_TO}", "User lives in {place}."),
    _rule(rf"{_I}(?P<verb>love|like|enjoy|adore)\s+(?P<obj>.+)", "User {verb}s {obj}."),
    _rule(
        rf"i(?:\s+have|'ve|\s+have\s+got|'ve\s+got)\s+{_ARTICLE}(?P<noun>{_PETS})"
        r"\s+(?:called|named)\s+(?P<name>.+)",
        "User's {noun} is called {name}.",
    ),
    _rule(r"my\s+name\s+is\s+(?P<name>.+)", "User's name is {name}."),
    _rule(r"(?:call\s+me|i\s+go\s+by)\s+(?P<nickname>.+)", "User's name is {nickname}."),
    _rule(rf"i(?:\s+am|'m)\s+(?P<obj>{_ARTICLE}{_NOT_A_ROLE}.+)", "User is {obj}."),
    _rule(
        rf"{_MY_KIN}(?:'s\s+name\s+is(?:\s+now)?|\s+is\s+(?:now\s+)?(?:called|named))"
        r"\s+(?P<name>.+)",
        "User's {noun} is called {name}.",
    ),
    _rule(
        rf"{_MY_KIN}\s+(?:currently\s+|still\s+|now\s+)?lives\s+in\s+(?P<place>.+)",
        "User's {noun} lives in {place}.",
    ),
    _rule(
        rf"{_MY_KIN}\s+works\s+(?P<prep>at|for)\s+(?P<employer>.+)",
        "User's {noun} works {prep} {employer}.",
    ),
    _rule(rf"{_MY_KIN}\s+works\s+as\s+(?P<obj>{_ARTICLE}.+)", "User's {noun} works as {obj}."),
    _rule(
        rf"{_MY_KIN}\s+(?:(?:has|'s)\s+)?(?:just\s+|recently\s+)?{_MOVED_TO}",
        "User's {noun} lives in {place}.",
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


@dataclass(frozen=True, slots=True)
class _Retraction:
    """A clause saying that something the user disclosed stopped being true.

    It ends the entries of the slots of ``kinds`` of its ``subject`` (the user, "", or a
    relative, "sister"): those whose value is ``value``, or all of them for no value; an
    entry listing ``value`` among others keeps the others ("peanuts and shellfish").
    ``reason`` is the sentence recorded as why they ended. ``positive`` is the fact it
    retracts, as the rules would state it, to end an entry no slot reads ("User is a
    vegan."). ``speaker`` is who said it (see :class:`_Claim`): only their own entries
    end. A clause that ``states`` a fact besides ("I'm a former nurse") is also read as one.
    """

    reason: str
    kinds: frozenset[str]
    value: str | None
    positive: str | None = None
    exact: bool = False
    speaker: str = ""
    subject: str = ""
    states: bool = False


@dataclass(frozen=True, slots=True)
class _RetractionRule:
    """One kind of retraction: a clause pattern, the reason it gives, the slots it ends.

    An ``obj`` group names the value; the reason takes ``{obj}`` or, with no value, is
    ``bare``. ``positive`` is the retracted fact's template, when a slot may not read it.
    An ``exact`` rule ends only a value it names whole ("I left Acme", not "I left Acme at
    6pm"); others also end a longer value it begins ("I quit my job at Acme": "Acme Corp").
    A ``kin`` group names the relative whose entries end; the reason takes ``{noun}``.
    """

    pattern: re.Pattern[str]
    reason: str
    bare: str
    kinds: frozenset[str]
    positive: str | None = None
    exact: bool = False
    states: bool = False

    def retraction(self, clause: str) -> _Retraction | None:
        """The retraction ``clause`` states, or None when this rule does not describe it."""
        match = self.pattern.fullmatch(clause)
        if match is None:
            return None
        subject, noun = "", ""
        if match.groupdict().get("kin") is not None:
            subject = _subject(match)[0]
            noun = _clean("noun", match["kin"], cased=True) or ""
            if match["alias"] is not None:
                noun = f"{noun} {match['alias']}"
        raw = match.groupdict().get("obj")
        if raw is None:
            bare = self.bare.format(noun=noun)
            return _Retraction(bare, self.kinds, None, subject=subject, states=self.states)
        obj = _clean_object(raw, max_words=_MAX_OBJECT_WORDS)
        if obj is None:
            return None
        positive = None if self.positive is None else self.positive.format(obj=obj)
        reason = self.reason.format(obj=obj, noun=noun)
        return _Retraction(
            reason, self.kinds, obj, positive, self.exact, subject=subject, states=self.states
        )


def _retraction_rule(
    pattern: str,
    reason: str,
    kinds: Iterable[str],
    bare: str = "",
    positive: str | None = None,
    *,
    exact: bool = False,
    states: bool = False,
) -> _RetractionRule:
    compiled = re.compile(_LEAD_IN + pattern, re.IGNORECASE)
    return _RetractionRule(compiled, reason, bare, frozenset(kinds), positive, exact, states)


_NO_LONGER = r"(?:no\s+longer|don't|do\s+not|never)\s+"
_ANY_MORE = r"(?:\s+any\s?more)?"
_NOW = (
    r"(?:\s+(?:now|today|yesterday|recently|right\s+now|these\s+days|at\s+the\s+moment"
    r"|last\s+(?:week|month|year)|this\s+(?:week|month|year)))?"
)
_I_DID = rf"(?:{_I}|i(?:\s+have|'ve)\s+(?:just\s+)?)"
"""I, or I have: "I quit", "I've quit"."""
_EMPLOYER_SLOT, _HOME_SLOT, _ROLE_SLOT = ("employer",), ("home",), ("role",)
_JOB_SLOTS = ("employer", "role")
"""A job left ends where the user worked and as what."""
_RETRACTIONS: tuple[_RetractionRule, ...] = (
    _retraction_rule(
        rf"{_I_DID}(?:quit|left|lost)\s+my\s+job(?:\s+(?:at|with)\s+(?P<obj>.+)|{_NOW})",
        "User left their job at {obj}.",
        _JOB_SLOTS,
        bare="User left their job.",
    ),
    _retraction_rule(
        rf"{_I_DID}(?:quit|left)\s+(?P<obj>.+)",
        "User left {obj}.",
        ("employer", "home"),
        exact=True,
    ),
    _retraction_rule(
        rf"(?:i\s+{_NO_LONGER}work\s+(?:at|for)|{_I}stopped\s+working\s+(?:at|for)"
        r"|i(?:\s+am|'m)\s+(?:no\s+longer|not)\s+working\s+(?:at|for))"
        rf"\s+(?P<obj>.+?){_ANY_MORE}",
        "User no longer works at {obj}.",
        _EMPLOYER_SLOT,
    ),
    _retraction_rule(
        rf"i\s+{_NO_LONGER}work\s+there{_ANY_MORE}|i\s+no\s+longer\s+work",
        "",
        _EMPLOYER_SLOT,
        bare="User no longer works there.",
    ),
    _retraction_rule(
        r"i(?:\s+got|\s+was|\s+have\s+been|'ve\s+been)\s+(?:fired|laid\s+off|let\s+go|sacked)"
        rf"(?:\s+(?:from|at|by)\s+(?P<obj>.+)|{_NOW})",
        "User was let go from {obj}.",
        _JOB_SLOTS,
        bare="User was let go from their job.",
    ),
    _retraction_rule(
        rf"{_I_AM}(?:unemployed|out\s+of\s+work|between\s+jobs|jobless){_NOW}",
        "",
        ("employer", "role"),
        bare="User is out of work.",
    ),
    _retraction_rule(
        rf"(?:(?:{_I_HAVE}|i\s+){_ADVERBS}retired|{_I_AM}retired){_NOW}",
        "",
        ("employer", "role"),
        bare="User is retired.",
    ),
    _retraction_rule(
        rf"(?:i\s+{_NO_LONGER}live\s+in|(?:{_I_HAVE}|i\s+){_ADVERBS}moved\s+"
        rf"(?:away\s+from|out\s+of))\s+(?P<obj>.+?){_ANY_MORE}",
        "User no longer lives in {obj}.",
        _HOME_SLOT,
    ),
    _retraction_rule(
        rf"{_I}live\s+in\s+(?P<obj>.+?)\s+no\s+more",
        "User no longer lives in {obj}.",
        _HOME_SLOT,
    ),
    _retraction_rule(
        rf"{_I}work\s+(?:at|for)\s+(?P<obj>.+?)\s+no\s+more",
        "User no longer works at {obj}.",
        _EMPLOYER_SLOT,
    ),
    _retraction_rule(
        rf"(?:i\s+{_NO_LONGER}(?:like|love|enjoy)|{_I}stopped\s+(?:liking|loving|enjoying))"
        rf"\s+(?P<obj>.+?){_ANY_MORE}",
        "User no longer likes {obj}.",
        ("likes",),
    ),
    _retraction_rule(
        rf"i(?:\s+am|'m)\s+(?:no\s+longer|not)\s+{_DEGREE}allergic\s+to\s+(?P<obj>.+?){_ANY_MORE}",
        "User is no longer allergic to {obj}.",
        ("allergy",),
    ),
    _retraction_rule(
        rf"i(?:\s+am|'m)\s+(?:no\s+longer|not)\s+(?P<obj>(?:{_ARTICLE})?.+?){_ANY_MORE}",
        "User is no longer {obj}.",
        _ROLE_SLOT,
        positive="User is {obj}.",
    ),
    _retraction_rule(
        rf"{_I_AM}{_ARTICLE}(?:former|retired|ex-|ex\s+)(?P<obj>.+)",
        "User is a former {obj}.",
        _ROLE_SLOT,
        states=True,
    ),
    _retraction_rule(
        rf"{_MY_KIN_SUBJECT}\s+(?:no\s+longer\s+lives|(?:doesn't|does\s+not)\s+live)\s+in"
        rf"\s+(?P<obj>.+?){_ANY_MORE}",
        "User's {noun} no longer lives in {obj}.",
        _HOME_SLOT,
    ),
    _retraction_rule(
        rf"{_MY_KIN_SUBJECT}\s+(?:(?:has|'s)\s+)?moved\s+(?:away\s+from|out\s+of)\s+(?P<obj>.+?)",
        "User's {noun} no longer lives in {obj}.",
        _HOME_SLOT,
    ),
    _retraction_rule(
        rf"{_MY_KIN_SUBJECT}\s+(?:no\s+longer\s+works|(?:doesn't|does\s+not)\s+work)"
        rf"\s+(?:at|for)\s+(?P<obj>.+?){_ANY_MORE}",
        "User's {noun} no longer works at {obj}.",
        _EMPLOYER_SLOT,
    ),
    _retraction_rule(
        rf"{_MY_KIN_SUBJECT}\s+(?:(?:has|'s)\s+)?(?:just\s+)?(?:quit|left|lost)\s+"
        rf"(?:his|her|their|its)\s+job(?:\s+(?:at|with)\s+(?P<obj>.+)|{_NOW})",
        "User's {noun} left their job at {obj}.",
        _JOB_SLOTS,
        bare="User's {noun} left their job.",
    ),
)


def _clean(group: str, raw: str, *, cased: bool) -> str | None:
    """The value of one matched group as it goes into a fact, or None to drop the fact."""
    if group == "obj":
        return _clean_object(raw, max_words=_MAX_OBJECT_WORDS)
    if group in ("place", "employer"):
        return _clean_place(raw, cased=cased, workplace=group == "employer")
    if group in ("name", "nickname"):
        return _clean_name(raw, cased=cased, nickname=group == "nickname")
    if group == "noun":
        words = raw.casefold().split()
        words[-1] = KIN_NOUNS.get(words[-1], words[-1])
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


def _clean_name(raw: str, *, cased: bool, nickname: bool) -> str | None:
    """A name as it goes into a fact, or None when the words are no name: "Call me
    tomorrow" and "I go by bus" name no one, nor does "My name is not Bob". What follows
    a comma or dash is an aside ("Anna, nice to meet you"). A writer who capitalises
    capitalises a name (or writes a handle, "user-0042"); one who does not cannot be told
    apart from "call me back" after "call me" or "I go by", so a ``nickname`` is then not
    taken."""
    text = _ASIDE.split(raw, maxsplit=1)[0]
    name = _clean_object(text, max_words=_MAX_NAME_WORDS)
    if name is None or (nickname and not cased):
        return None
    words = name.split()
    if not all(_NAME_WORD.fullmatch(word) for word in words):
        return None
    if any(_no_name_word(word, first=i == 0, cased=cased) for i, word in enumerate(words)):
        return None
    if cased and not all(_written_as_a_name(w) or w in _NAME_PARTICLES for w in words):
        return None
    return name if not cased or _written_as_a_name(words[-1]) else None


def _no_name_word(word: str, *, first: bool, cased: bool) -> bool:
    """Whether ``word`` is one no name is made of; a capitalised word after the first is
    part of a name ("Nguyen Van An"), unless a negation ("Sam Not")."""
    folded = word.casefold()
    if folded not in _NOT_NAME_WORDS:
        return False
    return first or not cased or not word[0].isupper() or folded in {"not", "no", "never"}


def _written_as_a_name(word: str) -> bool:
    """Whether ``word`` is written as a name: capitalised, in a script without case
    ("李雷", "محمد"), or a handle with a digit ("user-0042"), which no common word has."""
    initial = word[0]
    caseless = initial.isalpha() and not initial.isupper() and not initial.islower()
    return initial.isupper() or caseless or any(c.isdigit() for c in word)


def _clean_place(raw: str, *, cased: bool, workplace: bool) -> str | None:
    """A home or workplace as it goes into a fact, or None when it does not look like one:
    when is not where ("in Bergen in May"), and "at night" or "in fear" name no place."""
    text = _without_aside(" ".join(raw.split()).strip(_EDGE_JUNK), cased=cased)
    if cased:
        text = _NEXT_CLAUSE.split(text, maxsplit=1)[0]
    while (shorter := _TRAILING_FILLER.sub("", _TRAILING_WHEN.sub("", text))) != text:
        text = shorter.strip(_EDGE_JUNK)
    if not text or _PLACEHOLDER.search(text):
        return None
    if not _names_a_place(text.split(), cased=cased, workplace=workplace):
        return None
    if _heads_no_place(text.split(), cased=cased, workplace=workplace):
        return None
    return _clean_object(text, max_words=_MAX_OBJECT_WORDS)


def _without_aside(text: str, *, cased: bool) -> str:
    """``text`` up to an aside ("Oslo - sorry", "Google, for now", "Oslo, right"). After
    a comma, a name that places what comes before is kept ("Portland, Oregon")."""
    kept = _ASIDE.split(text, maxsplit=1)[0]
    while kept != text:
        rest = text[len(kept) :]
        part = _ASIDE.split(rest[2:], maxsplit=1)[0] if rest.startswith(", ") else ""
        if not (cased and part[:1].isalpha() and _is_capitalised(part)):
            break
        kept += ", " + part
    return kept


def _heads_no_place(words: Sequence[str], *, cased: bool, workplace: bool) -> bool:
    """Whether the noun heading ``words`` (the last before a place preposition) says when
    or why, not where: a time ("at odd hours", "for a few hours"), a state with no
    article ("in constant fear", not "a nursing home") or, for a workplace, a reward
    ("for tips", "for the money"). A capitalised word of a writer who capitalises is a
    name ("Sunrise Medical")."""
    head: list[str] = []
    for word in words:
        if head and word.casefold() in _PLACE_PREPOSITIONS:
            break
        head.append(word.strip(_EDGE_JUNK))
    noun = head[-1]
    if cased and noun[:1].isupper():
        return False
    folded = noun.casefold()
    if folded in _TIME_NOUNS:
        return True
    if folded in _COMMON_NOUNS and words[0].casefold() not in _ARTICLES:
        return True
    return workplace and folded in _REWARDS


def _names_a_place(words: Sequence[str], *, cased: bool, workplace: bool) -> bool:
    """Whether ``words`` name a home or workplace. A time ("9am", "at night") or a common
    noun ("in fear", "at home") is none, whatever the writer's case; any other word is
    taken, as names may open lower-case or on a digit ("eBay", "den Haag", "3M"). After
    an article, a workplace is taken unless a time or common noun follows it ("a nursing
    home", "the BBC"), and a home only when it names a place ("the Netherlands", "a small
    town near Oslo", not "a small apartment" or "the moment")."""
    text = " ".join(words)
    if _NUMBERED.fullmatch(text):
        return True
    if _TIME.match(text):
        return False
    first = words[0].casefold()
    if first in _ARTICLES:
        rest = words[1:]
        if not rest or not _may_be_a_name(rest[0]):
            return False
        if workplace:
            head = next((w for w in rest if w.casefold() in _PLACE_PREPOSITIONS), None)
            noun = rest[rest.index(head) - 1] if head is not None and head != rest[0] else rest[-1]
            return noun.casefold().strip(_EDGE_JUNK) not in _NOT_WORKPLACES
        if len(rest) == 2 and " ".join(rest).casefold() in _CARE_HOMES:
            return True
        return _names_in(rest, cased=cased, first=first == "the")
    return _may_be_a_name(words[0])


def _may_be_a_name(word: str) -> bool:
    """Whether ``word`` may open a name: it is no time, article, possessive or common noun."""
    folded = word.casefold().strip(_EDGE_JUNK)
    return bool(folded) and folded not in _NOT_NAMES and folded not in _COMMON_NOUNS


def _names_in(words: Sequence[str], *, cased: bool, first: bool) -> bool:
    """Whether a home after an article (``words``) names a place: a capitalised word from
    a writer who capitalises ("the Netherlands", "a flat in Leeds"); else, the word right
    after "the" (``first``) or one after a place preposition ("a town near oslo")."""
    if cased:
        return any(word[:1].isupper() for word in words)
    if first:
        return True
    return any(
        word.casefold() in _PLACE_PREPOSITIONS and _may_be_a_name(after)
        for word, after in pairwise(words)
    )


def _writes_in_case(content: str) -> bool:
    """Whether the writer of ``content`` capitalises, so that a lower-case word is no name:
    not one who writes "i", all lower case or all upper case."""
    if _LOWER_CASE_I.search(content):
        return False
    return any(c.isupper() for c in content) and any(c.islower() for c in content)


def _ends_sentence(line: str, start: int, end: re.Match[str]) -> bool:
    """Whether the punctuation ``end`` closes a sentence, not an abbreviation like "St."."""
    if end.group() != ".":
        return True
    before = line[max(start, end.start() - 64) : end.start()].split()  # a word, not all
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


_MID_CORRECTION = re.compile(
    r"(?<!\s)\s*[,;]\s*(?=(?:sorry|oops|wait|correction)\b[\s,:!-]*"
    r"(?:i\s+mean(?:t)?\s+)?(?-i:[A-Z0-9]))",
    re.IGNORECASE,
)
"""A correction after a comma ("I live in Denver, sorry, Boulder"): a clause of its own."""
_INSTEAD = re.compile(r"[,;]\s*(?:it'?s|it\s+is|but|rather)\s+(?=(?-i:[A-Z0-9]))", re.IGNORECASE)


def _instead(sentence: str) -> str:
    """``sentence`` stating what a negation puts instead ("My name is not Sam, it's Tom"
    says "My name is Tom"), or as it is."""
    instead = _INSTEAD.search(sentence)
    if instead is None:
        return sentence
    head, negation, _ = sentence[: instead.start()].rpartition(" not ")
    return f"{head} {sentence[instead.end() :]}" if negation else sentence


def _clauses(sentence: str) -> Iterator[str]:
    """The clauses of a sentence that each have their own subject ("I ...", "my ..."),
    and the corrections that follow one ("..., sorry, Boulder")."""
    sentence = _instead(sentence.strip(_EDGE_JUNK))
    for clause in (c for p in _MID_CORRECTION.split(sentence) for c in _CLAUSE_BREAK.split(p)):
        parts = _ELIDED_SUBJECT.split(clause) if _STARTS_WITH_I.match(clause) else [clause]
        yield parts[0].strip(_EDGE_JUNK)
        for part in parts[1:]:
            yield "I " + part.strip(_EDGE_JUNK)


_CONDITIONAL = re.compile(
    _LEAD_IN + r"(?:if|when|whenever|once|unless|until|before|after|tomorrow|next|someday"
    r"|one\s+day|maybe|perhaps|in\s+case|for\s+(?:example|instance)|e\.g|imagine|suppose"
    r"|pretend|let's\s+say)\b",
    re.IGNORECASE,
)
"""A sentence that opens on a condition, another time or an example ("If my boss yells
again, I quit my job", "When I was 20, I quit my job", "For example, I live in Paris"):
what it says is not the user's present."""
_IMAGINED = re.compile(
    r"\b(?:(?:in\s+(?:my|our)\s+(?:wildest\s+|own\s+)?(?:day)?(?:dreams?|fantas(?:y|ies)"
    r"|imagination|head|mind)|in\s+(?:another|a\s+(?:perfect|ideal|parallel|different|better)"
    r"|an\s+(?:ideal|alternate|alternative))\s+(?:life|world|universe|reality)"
    r"|hypothetically|ideally)(?=\s*(?:[^\w\s]|$)|\s+(?:i|my)\b)"
    r"|i\s+(?:(?:often|sometimes|always|still|really|just|secretly|only|do)\s+){0,3}"
    r"(?:wish(?:ed)?|dream(?:s|t|ed)?|day-?dream(?:s|t|ed)?|fantasi[sz]ed?|imagined?)\b"
    r"|(?:if\s+only|as\s+if)\b)",
    re.IGNORECASE,
)
"""Where a sentence turns to what is dreamt or wished ("In my dreams, I live in Paris",
"I wish I lived in Paris", "I dream of living in Paris"): from there on, nothing is the
user's present, up to a :data:`_BACK_TO_WHAT_IS`."""
_BACK_TO_WHAT_IS = re.compile(
    r"[\s,;]+but\s+(?:(?:in\s+fact|really|actually)[\s,]+)?(?=(?:i|my)\b)", re.IGNORECASE
)
"""Where a sentence turns back from a dream or a wish to what is: "..., but I live in Oslo"."""
_UNSURE = re.compile(
    r"\b(?:jk|j/k|just\s+kidding|kidding|joking|probably|i\s+guess|i\s+think|not\s+sure)\b",
    re.IGNORECASE,
)
"""A sentence its writer says is a joke or a guess: not a fact to replace another."""
_ASIDE_BREAK = re.compile(r"[,;()\[\]]|\s-+\s|\s?[\u2013\u2014]\s?")
"""What opens or closes an aside within a clause: a comma, semicolon, bracket or dash."""
_UNTIL = r"(?:until|till|til)\s+"
_TAKES_BACK = re.compile(
    r"(?:(?:or|well|haha|lol|oh|ok|okay|actually|at\s+least)\W+)*"
    r"(?:not\s+really|not\s+any\s?more|any\s?more|no\s+(?:more|longer)|not|no"
    r"|(?:i\s+)?(?:did|used\s+to)(?:\s+" + _UNTIL + r".+)?|" + _UNTIL + _PAST_TIME + r")",
    re.IGNORECASE,
)
"""A whole aside that takes its clause back ("not anymore", "well, used to", "or at least
I did until March", "until last month"), not one that merely holds such a word ("usually
until 6pm", "at least until the summer", "she used to live in Oslo")."""
_TAKEN_BACK_AT_END = re.compile(r"(?<![\w'])(?:not|no(?:\s+(?:more|longer))?)\W*$", re.IGNORECASE)
"""A clause that ends on a bare "no", "not" or "no more" ("I live in Oslo haha no")."""


def _taken_back(clause: str) -> bool:
    """Whether the writer takes ``clause`` back in an aside or at its end ("I work at Acme
    (not anymore)", "I live in Oslo, or did until March", "... haha no"): not a current
    fact. Each aside is tested once, whole, so a clause of many commas takes linear time."""
    asides = _ASIDE_BREAK.split(clause)[1:]
    if any(_TAKES_BACK.fullmatch(aside.strip(_EDGE_JUNK)) for aside in asides):
        return True
    return _TAKEN_BACK_AT_END.search(clause) is not None


_JOKE_FIRST = re.compile(
    _LEAD_IN + r"(?:jk|j/k|(?:i'm\s+|i\s+was\s+)?(?:just\s+)?(?:kidding|joking))\b[\s,.!;:-]*",
    re.IGNORECASE,
)
"""A sentence opening on a joke marker: it takes back what was said before it, and what
follows is meant."""

_QUOTED = re.compile(r"[\"\u201c]\s*(?=(?:i|my)\b)[^\"\u201c\u201d\n]*[\"\u201d]", re.IGNORECASE)
"""Words in quotation marks that speak in the first person: someone's quoted words."""
_REPORTED = re.compile(
    r"(?<![\w'])(?P<speaker>[\w']+)\s+(?:(?:just|then|once|always|also)\s+)?(?P<verb>said|says|say|told"
    r"|tells|asked|asks|wrote|writes|replied|replies|texted|texts|messaged|yelled|shouted"
    r"|whispered|added|explained|claimed|claims|insisted|announced|answered|goes|went"
    r"|was\s+like|is\s+like|'s\s+like)(?P<more>(?:\s+[\w']+){0,3}?)\s*(?P<mark>[:,])\s*"
    r"(?=['\"\u201c]?(?:i|my)\b)",
    re.IGNORECASE,
)
"""Someone reporting what was said ("She told me: I work at Google", "My boss says, I
..."): the words that follow are theirs, not the writer's own (see :func:`_reports`)."""
_THE_WRITER = frozenset({"i", "i'd", "i'll", "i've", "we", "you"})
"""Speakers whose reported words are the writer's: the writer, and "you", the assistant
the writer answers ("As you said, I'm allergic to peanuts")."""
_QUOTATIVES = frozenset({"goes", "went"})
_TRAILING_CONJUNCTION = re.compile(r"(?:[\s,;:]+(?:and|but|so|then))?[\s,;:]*$", re.IGNORECASE)


_FENCED = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
"""A fenced code block (to its closing fence, or the end of an unclosed one)."""
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_BLOCK_QUOTE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_LINE_MARKER = re.compile(r"^[ \t]*(?:[-*+\u2022]|#{1,6}|\d{1,3}[.)])[ \t]+", re.MULTILINE)
"""A list item's bullet or number, or a heading's hashes, opening a line."""
_EMPHASIS = re.compile(r"(?<![\w*])(\*\*|__|\*|_)(?=\S)(.{1,300}?)(?<=\S)\1(?![\w*])")
_LABEL = re.compile(
    r"[ \t]*(?P<label>[A-Z][\w.'-]*(?:[ \t]+[A-Z0-9][\w.'-]*){0,2})[ \t]*:(?P<rest>.*)"
)
"""A line opening on a label: a speaker's name in a transcript ("Assistant: ..."), or
a heading ("Note: ...")."""
_OWN_LABELS = frozenset({"user", "me", "i", "human", "myself"})
_HEADINGS = frozenset(
    {"note", "notes", "nb", "update", "edit", "ps", "p.s", "p.s.", "fyi", "btw", "context"}
    | {"background", "correction", "reminder", "info", "fact", "facts", "important", "also"}
    | {"summary", "details", "profile", "bio", "tl;dr", "tldr", "re", "about", "ok", "okay"}
    | {"yes", "no", "well", "so", "hi", "hello", "hey", "thanks", "sure", "actually", "anyway"}
)
"""Labels that head the writer's own words (or open them), not another speaker's."""
_TEXT_TASK = re.compile(
    r"(?:^|(?<=[.!?:]))[ \t]*"
    + _LEAD_IN
    + r"(?:(?:please|pls|kindly|can\s+you|could\s+you|would\s+you|will\s+you)\s+)?"
    r"(?:translate|classify|categori[sz]e|rewrite|rephrase|paraphrase|reword|summari[sz]e"
    r"|proofread|spell-?check|grammar-?check|edit|polish|simplify|transcribe|analy[sz]e|parse"
    r"|correct\s+(?:this|these|the|my)|fix\s+(?:the|my)\s+(?:grammar|spelling)|repeat\s+after)"
    r"(?=[ \t]+\S)",
    re.IGNORECASE | re.MULTILINE,
)
"""An instruction to work on a text: what follows is the text, not the writer's facts."""
_PASTED_TEXT = re.compile(
    r"(?<!\bmy\s)(?<!\byour\s)\b(?:(?:th(?:is|ese)|the|following)\s+(?:\w+\s+)?)?"
    r"(?:sentences?|text|paragraphs?"
    r"|passages?|phrases?|lines?|examples?|excerpt|quote|snippet|transcript|message|e-?mail"
    r"|letter|post|tweet|prompt|input|output|following)\s*:",
    re.IGNORECASE,
)
"""A colon after naming a text ("this sentence:", "the following:"): a text follows,
not the writer's own ("my bio:") nor one answering the assistant's ("your message:")."""


_TASK_END = re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|(?P<end>[.!?]+(?=\s|$)|:|\n)")
"""Where an instruction to work on a text ends (quoted text is part of it)."""


_BARE_OBJECT = re.compile(
    r"[ \t]+(?:th(?:is|ese|at)|it|(?:the[ \t]+)?following)\b(?:[ \t]+(?P<next>[\w'-]+))?",
    re.IGNORECASE,
)
_NOT_A_TEXT = frozenset({"into", "to", "for", "in", "from", "so", "as", "and", "please", "text"})
_TEXT_NOUNS = frozenset({"sentence", "sentences", "paragraph", "passage", "phrase", "line"})


def _follows(content: str, at: int) -> bool:
    """Whether the instruction ending at ``at`` names a text that follows it: "this",
    "the following" or "this sentence", not one given elsewhere ("this article", "my
    diet")."""
    bare = _BARE_OBJECT.match(content, at)
    if bare is None:
        return False
    after = (bare["next"] or "").casefold()
    return not after or after in _NOT_A_TEXT or after in _TEXT_NOUNS


def _without_task_texts(content: str) -> str:
    """``content`` without each instruction to work on a text and the text it names: the
    text after its colon, or the lines after it when it ends its line ("Translate this:
    ...", "Summarize this\n..."). The writer's own next sentences on its line stay
    ("Can you analyze my diet? I'm vegan")."""
    kept, start = [], 0
    while (task := _TEXT_TASK.search(content, start)) is not None:
        kept.append(content[start : task.start()])
        end = next((m for m in _TASK_END.finditer(content, task.end()) if m["end"]), None)
        if end is None or end["end"] in ":\n" or _follows(content, task.end()):
            return "".join(kept)
        if not content[end.end() :].split("\n", 1)[0].strip():
            return "".join(kept)  # the text follows on the next lines
        kept.append(" ")
        start = end.end()
    return "".join(kept) + content[start:]


def _written_by_the_user(content: str, speaker: str | None) -> str:
    """The part of ``content`` its writer says in their own voice: without code, block
    quotes, the lines another speaker says in a pasted transcript ("Assistant: ..."), or
    a text pasted to be worked on ("Translate to French: I work at ..."). Markdown list
    bullets and emphasis are dropped, as they only lay the words out."""
    content = _FENCED.sub("", _BLOCK_QUOTE.sub("", content.replace("\r\n", "\n")))
    content = _INLINE_CODE.sub(" ", content)
    content = _without_task_texts(content)
    pasted = _PASTED_TEXT.search(content)
    if pasted is not None:
        content = content[: pasted.start()]
    lines, others = [], False
    for line in _LINE_MARKER.sub("", content).splitlines():
        label = _LABEL.fullmatch(line)
        if label is not None:
            name = label["label"].casefold().rstrip(".")
            if name in _OWN_LABELS or (speaker is not None and name == speaker.casefold()):
                others, line = False, label["rest"]
            elif name in _HEADINGS:
                line = label["rest"]
            else:
                others = True
        if not others:
            lines.append(_EMPHASIS.sub(r"\2", line))
    return "\n".join(lines)


def _own_words(content: str) -> str:
    """``content`` without what it quotes others saying in the first person. A message
    that is one quotation is the writer's own words in quotation marks."""
    if _QUOTED.fullmatch(content.strip()):
        return content
    return _QUOTED.sub(" ", content)


def _unreported(sentence: str) -> str:
    """``sentence`` up to where it reports someone else's words ("..., and she said: I
    ..."); the writer's own report ("I told her: I live in Oslo") is theirs."""
    for reported in _REPORTED.finditer(sentence):
        if _reports(reported):
            return _TRAILING_CONJUNCTION.sub("", sentence[: reported.start()])
    return sentence


def _unimagined(sentence: str) -> str:
    """``sentence`` without what it dreams or wishes (see :data:`_IMAGINED`), up to a
    "but I ..." that turns back to what is: "I live in Oslo, but in my dreams, I live in
    Paris" and "I wish I lived in Paris, but I live in Oslo" say only where the user lives."""
    kept, at = [], 0
    while (imagined := _IMAGINED.search(sentence, at)) is not None:
        kept.append(_TRAILING_CONJUNCTION.sub("", sentence[at : imagined.start()]))
        back = _BACK_TO_WHAT_IS.search(sentence, imagined.end())
        if back is None:
            break
        at = back.end()
    else:
        kept.append(sentence[at:])
    return "; ".join(part for part in kept if part.strip(_EDGE_JUNK))


def _reports(reported: re.Match[str]) -> bool:
    """Whether a match of :data:`_REPORTED` introduces someone else's words: a third
    party's, after a colon, or after a comma right after the verb ("My boss says, I ...";
    "My doctor told me, I'm allergic to penicillin" is the writer's report, "The
    interview went well, I work at Google" no speech at all)."""
    if reported["speaker"].casefold() in _THE_WRITER:
        return False
    if not reported["more"]:
        return True
    return reported["mark"] == ":" and reported["verb"].casefold() not in _QUOTATIVES


def _message_facts(
    content: str, speaker: str | None = None
) -> Iterator[str | _Naming | _Retraction]:
    """The facts one user message discloses about its author, and what it says stopped
    being true, in the order it states them: about "User", or about the named
    ``speaker`` of a group chat."""
    content = _SPACES.sub(" ", content)
    cased = _writes_in_case(content)
    found: list[str | _Naming | _Retraction] = []
    last: tuple[_Rule, str, int] | None = None  # the last fact's rule, clause and place
    previous = 0  # where the facts of the previous sentence begin in ``found``
    for sentence in _statements(_own_words(_written_by_the_user(content, speaker))):
        sentence = _unimagined(_unreported(sentence)).strip(_EDGE_JUNK)
        if not sentence:
            continue
        joke = _JOKE_FIRST.match(sentence)
        if joke is not None:  # "Just kidding, I live in Boulder": the joke came before
            del found[previous:]
            last, sentence = None, sentence[joke.end() :]
        previous = len(found)
        if _CONDITIONAL.match(sentence.strip(_EDGE_JUNK)) or _UNSURE.search(sentence):
            continue
        for clause in _clauses(sentence):
            if " " not in clause:
                continue  # one word or none states nothing: a quick skip of a long list
            if clause.casefold().endswith(" yet"):
                continue  # "I'm not a nurse yet": not a change, nor a fact
            correction = _CORRECTION.fullmatch(clause)
            if correction is not None:
                value = (correction["value"] or correction["meant"]).strip(_EDGE_JUNK)
                if _OPENS_A_CLAUSE.match(value):
                    clause = value  # "No, I meant I work at Apple": a statement
                else:
                    if last is not None and cased and _is_capitalised(value):
                        fixed = last[0].corrected(last[1], value, cased=cased)
                        if fixed:
                            del found[last[2] :]
                            found.extend(_stated_by(fact, speaker) for fact in fixed)
                    last = None
                    continue
            retraction = next(filter(None, (r.retraction(clause) for r in _RETRACTIONS)), None)
            if retraction is not None:
                found.append(_retraction_by(retraction, speaker))
                last = None
                if not retraction.states:
                    continue
            if _taken_back(clause):
                continue
            for rule in _RULES:
                facts = rule.facts(clause, cased=cased)
                if facts is not None:
                    last = (rule, clause, len(found))
                    found.extend(_stated_by(fact, speaker) for fact in facts)
                    break
    return iter(found)


_OPENS_A_CLAUSE = re.compile(r"(?:i|i'm|i've|my)\b", re.IGNORECASE)


def _is_capitalised(value: str) -> bool:
    """Whether ``value`` is written as a name: each word capitalised but for particles."""
    words = value.split()
    return bool(words) and all(
        w[0].isupper() or w[0].isdigit() or w in _NAME_PARTICLES for w in words
    )


def _said_by(fact: str, speaker: str | None) -> str:
    """``fact`` (about "User") about ``speaker`` instead, when one is named."""
    return fact if speaker is None else speaker + fact.removeprefix("User")


def _stated_by(fact: str | _Naming, speaker: str | None) -> str | _Naming:
    """``fact`` (see :func:`_said_by`) said by ``speaker``; a name given in passing stays one."""
    if isinstance(fact, _Naming):
        return _Naming(_said_by(fact.text, speaker))
    return _said_by(fact, speaker)


def _retraction_by(retraction: _Retraction, speaker: str | None) -> _Retraction:
    """``retraction`` said by ``speaker``: it ends only that speaker's entries."""
    if speaker is None:
        return retraction
    positive = retraction.positive
    return replace(
        retraction,
        reason=_said_by(retraction.reason, speaker),
        positive=None if positive is None else _said_by(positive, speaker),
        speaker=speaker.casefold(),
    )


def _speaker(name: str | None) -> str | None:
    """The name a message's facts are about: None for the user ("User ..."), whom an
    unnamed message, or one named "User", speaks for."""
    if name is None:
        return None
    name = " ".join(name.split())
    return None if not name or name.casefold() == "user" else name


# Claims: a fact read back as the slot it fills and its value. The patterns parse the
# sentences the rules above write, and nothing else.
_ALLERGY = "allergy"
_EMPLOYER = "employer"
_HOME = "home"
_LIKES = "likes"
_NAME = "name"
_ROLE = "role"
_IS_A = "is a"  # "User is a nurse.": a role only when the noun is an occupation
_SINGLE_VALUED = frozenset({_EMPLOYER, _HOME, _NAME, _ROLE})
_ONE_OF_MANY = frozenset(
    {"friend", "cousin", "colleague", "roommate", "aunt", "uncle", "niece", "nephew"}
    | {"grandmother", "grandfather", "grandma", "grandpa", "fish", "bird"}
)
_ONLY_ONE_ADJECTIVES = frozenset({"best", "eldest", "oldest", "youngest"})
_OCCUPATIONS = frozenset(
    {"accountant", "actor", "actress", "analyst", "architect", "artist", "attorney", "author"}
    | {"baker", "barber", "barista", "bartender", "carpenter", "cashier", "chef", "chemist"}
    | {"cleaner", "clerk", "consultant", "cook", "dentist", "designer", "developer", "doctor"}
    | {"driver", "economist", "editor", "electrician", "engineer", "farmer", "firefighter"}
    | {"hairdresser", "journalist", "judge", "lawyer", "lecturer", "librarian", "manager"}
    | {"mechanic", "midwife", "musician", "nurse", "paramedic", "pharmacist", "photographer"}
    | {"physician", "physicist", "physiotherapist", "pilot", "plumber", "professor"}
    | {"programmer", "psychologist", "receptionist", "researcher", "scientist", "secretary"}
    | {"surgeon", "teacher", "technician", "therapist", "translator", "tutor", "vet"}
    | {"veterinarian", "waiter", "waitress", "writer"}
)
_NOT_AN_OCCUPATION = frozenset(
    {"good", "bad", "great", "terrible", "decent", "awful", "amazing", "lousy", "poor"}
    | {"excellent", "huge", "big", "keen", "avid", "aspiring", "wannabe", "amateur", "hobby"}
    | {"former", "retired", "ex", "future", "part-time", "volunteer"}
)
_KIN = (
    rf"(?P<kin>{_KIN_ADJECTIVE}(?:{_RELATIVES}|{_PETS}))"
    r"(?:\s(?P<alias>(?-i:[A-Z][a-z]+(?:[-'][A-Za-z]+)?)))?"
)
_VALUE = r"(?P<value>.+?)\.?"
# A value with a second clause ("Acme and lives in Oslo") is not one this extractor wrote:
# superseding it would also end what the rest of the sentence says.
_SECOND_CLAUSE = re.compile(
    r";|\b(?:and|but)\s+(?:lives|works|moved|loves|likes|enjoys|adores|is|has|was)\b"
)
_CLAIM_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern + _VALUE, re.IGNORECASE), kind)
    for pattern, kind in (
        (r"User is allergic to ", _ALLERGY),
        (r"User works (?:at|for) ", _EMPLOYER),
        (r"User works as ", _ROLE),
        (r"User (?:lives in|moved to) ", _HOME),
        (r"User (?:loves|likes|enjoys|adores) ", _LIKES),
        (r"User's name is ", _NAME),
        (r"User is (?=an? )", _IS_A),
        (rf"User's {_KIN} is called ", _NAME),
        (rf"User's {_KIN} is allergic to ", _ALLERGY),
        (rf"User's {_KIN} works (?:at|for) ", _EMPLOYER),
        (rf"User's {_KIN} works as ", _ROLE),
        (rf"User's {_KIN} (?:lives in|moved to) ", _HOME),
        (rf"User's {_KIN} (?:loves|likes|enjoys|adores) ", _LIKES),
        (rf"User's {_KIN} is (?=an? )", _IS_A),
    )
)


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a fact says, in comparable form: the slot it fills and the value it gives.

    ``slot`` is (kind, speaker, subject): the speaker is "" for the user or a group chat
    speaker's case-folded name, the subject "" for the speaker or the relative's or pet's
    noun ("sister", "sister anna"). A ``single`` slot holds one current value, so a
    different value supersedes the old one; other slots (likes, allergies) accumulate.
    """

    slot: tuple[str, str, str]
    value: str
    single: bool


def _normalized(text: str) -> str:
    """``text`` compared as case- and spacing-insensitive."""
    return " ".join(text.casefold().split())


def _claim(text: str, speakers: Sequence[str] = ()) -> _Claim | None:
    """The claim of a sentence this extractor writes, or None for any other sentence.
    One that opens on a name of ``speakers`` (longest first) is about that speaker."""
    text = " ".join(text.split())
    speaker = ""
    for name in speakers:
        opening = text[: len(name)].casefold()
        if opening == name.casefold() and text[len(name) :].startswith((" ", "'s ")):
            speaker, text = opening, "User" + text[len(name) :]
            break
    for pattern, kind in _CLAIM_PATTERNS:
        match = pattern.fullmatch(text)
        if match is not None:
            return _claim_of(kind, speaker, match)
    return None


def _claim_of(kind: str, speaker: str, match: re.Match[str]) -> _Claim | None:
    """The claim of one matched sentence; None when its value fills no clear slot."""
    value = _normalized(match["value"])
    words = value.split()
    if len(words) > _MAX_OBJECT_WORDS or _SECOND_CLAUSE.search(value):
        return None
    if kind in (_ROLE, _IS_A):
        if words[:1] in (["a"], ["an"]):
            words = words[1:]
        if not words:
            return None
        if kind == _IS_A and not _is_occupation(words):
            return None
        kind = _ROLE
    subject, only_one = _subject(match)
    slot = (kind, speaker, subject)
    return _Claim(slot, " ".join(words), kind in _SINGLE_VALUED and only_one)


def _is_occupation(words: Sequence[str]) -> bool:
    """Whether "User is a <words>" names the user's job ("a nurse"), not a trait ("a vegan")."""
    return (
        len(words) <= 3
        and words[-1] in _OCCUPATIONS
        and not any(word in _NOT_AN_OCCUPATION for word in words)
    )


def _subject(match: re.Match[str]) -> tuple[str, bool]:
    """Who a claim is about, and whether that names one being (so a slot has one value).

    "my friend" may be a different friend each time, so its slots only deduplicate;
    "my best friend", "my sister" and "my friend Tom" are taken to be one person.
    """
    kin = match.groupdict().get("kin")
    if kin is None:
        return "", True
    words = [KIN_NOUNS.get(word, word) for word in kin.casefold().split()]
    alias = match["alias"]
    only_one = (
        alias is not None
        or words[-1] not in _ONE_OF_MANY
        or any(word in _ONLY_ONE_ADJECTIVES for word in words)
    )
    if alias is not None:
        words.append(alias.casefold())
    return " ".join(words), only_one


@dataclass(slots=True)
class _Draft:
    """A fact of the batch being collected: its text, claim and citing messages, and what
    it does: ``new``, ``same`` or ``update`` of a known entry (``target``), or ``update``
    of the draft it ``replaces``. ``ended`` once a later draft replaces it or the batch
    takes it back."""

    text: str
    key: str
    claim: _Claim | None
    action: FactAction = "new"
    target: str | None = None
    replaces: _Draft | None = None
    sources: list[str] = field(default_factory=list)
    restated_by: list[str] = field(default_factory=list)
    ended: bool = False

    @property
    def adds(self) -> bool:
        """Whether the draft adds an entry (a ``same`` only confirms a known one)."""
        return self.action != "same"


@dataclass(frozen=True, slots=True)
class _Withdrawal:
    """A retraction of the batch ending one known entry (by id) or one earlier draft."""

    reason: str
    source: str
    ends: str | _Draft


@dataclass(frozen=True, slots=True)
class _Known:
    """A known entry with its comparable text and its claim, if this extractor can read it."""

    entry: KnownEntry
    key: str
    claim: _Claim | None
    position: int

    def recency(self) -> tuple[datetime, int]:
        """Orders entries newest last; the batch order breaks ties."""
        return (self.entry.valid_from, self.position)

    def ends_after(self, moment: datetime) -> bool:
        """Whether the entry is current, or ended after ``moment`` (a backdated batch is
        shown entries that ended since)."""
        return self.entry.valid_until is None or moment < self.entry.valid_until


class _Batch:
    """The batch's facts, folded message by message in the order they were said.

    What stands (the known entries not yet ended, or ended only after the statement, and
    the drafts not yet replaced) is what a new statement is compared with: a repeat of a
    standing draft is reported beside it, as said again; a statement of a standing known
    entry is ``same``; a new value of a single-valued slot updates the slot's standing draft
    (``target_fact``), else the known entry that held when it was said (or the first
    after it); a retraction ends the standing drafts and current known entries it names.
    Statements are folded in the order they were said (``sent_at``), so the answer is the
    one that batches of one message each, in that order, would have given.
    """

    def __init__(self, known: Iterable[KnownEntry], speakers: Iterable[str] = ()) -> None:
        self.speakers = sorted(set(speakers), key=len, reverse=True)
        self.known = [
            _Known(entry, _normalized(entry.text), _claim(entry.text, self.speakers), position)
            for position, entry in enumerate(known)
        ]
        self.items: list[_Draft | _Withdrawal] = []
        self._standing: dict[int, _Draft] = {}  # by id(), in the order they were said
        self._by_key: dict[str, _Draft] = {}
        self._by_claim: dict[_Claim, _Draft] = {}
        self._adding: dict[tuple[str, str, str], list[_Draft]] = {}  # to each slot, oldest first

    def _stand(self, draft: _Draft) -> None:
        """Add ``draft`` to the answer and to the indexes of what stands, so that each
        statement finds its match without a walk over the whole batch."""
        self.items.append(draft)
        self._standing[id(draft)] = draft
        self._by_key[draft.key] = draft
        if draft.claim is not None:
            self._by_claim[draft.claim] = draft
            if draft.adds:
                self._adding.setdefault(draft.claim.slot, []).append(draft)

    def _end(self, draft: _Draft) -> None:
        """Mark ``draft`` replaced or taken back: it no longer stands."""
        draft.ended = True
        del self._standing[id(draft)]
        if self._by_key.get(draft.key) is draft:
            del self._by_key[draft.key]
        if draft.claim is not None:
            if self._by_claim.get(draft.claim) is draft:
                del self._by_claim[draft.claim]
            if draft.adds:
                self._adding[draft.claim.slot].remove(draft)

    def state(self, text: str, message_id: str, said: datetime, *, supersedes: bool = True) -> None:
        """Fold one fact the user stated at ``said``. A repeat of a standing draft by a
        later message is reported as said again by it, as it would be in a later batch (a
        ``same``): the draft stays valid from the message that first stated it, and the
        repeat is outdated with it. A fact that does not ``supersede`` (a
        :class:`_Naming`) ends no other value of its slot."""
        key, claim = _normalized(text), _claim(text, self.speakers)
        if claim is not None and not supersedes:
            claim = replace(claim, single=False)
        draft = self._by_key.get(key)
        if draft is None and claim is not None:
            draft = self._by_claim.get(claim)
        if draft is not None:
            if message_id not in draft.sources and message_id not in draft.restated_by:
                draft.restated_by.append(message_id)
        else:
            draft, taken_back = self._new_draft(text, key, claim, said)
            draft.sources.append(message_id)
            self._stand(draft)
            if taken_back is not None:
                self.items.append(_Withdrawal(text, message_id, taken_back.entry.entry_id))

    def _new_draft(
        self, text: str, key: str, claim: _Claim | None, said: datetime
    ) -> tuple[_Draft, _Known | None]:
        """The draft of a fact said at ``said``, and the ended known entry it takes back
        then, if any (see :meth:`_replacing`)."""
        standing = [k for k in self.known if k.ends_after(said)]
        same = [k for k in standing if k.key == key]
        if not same and claim is not None:
            same = [k for k in standing if k.claim == claim]
        if same:
            target = _at(same, said)
            held = self._held_before(claim, target, said)
            if held is not None:  # another value held then: this one replaced it
                self.known.remove(held)
                return _Draft(text, key, claim, "update", held.entry.entry_id), None
            return _Draft(text, key, claim, "same", target.entry.entry_id), None
        if claim is None or not claim.single:
            return _Draft(text, key, claim), None
        slot = claim.slot
        previous = self._adding.get(slot)
        if previous:
            replaced = previous[-1]
            self._end(replaced)
            return _Draft(text, key, claim, "update", replaces=replaced), None
        rivals = [k for k in standing if k.claim is not None and k.claim.slot == slot]
        if not rivals:
            return _Draft(text, key, claim), None
        rival = _at(rivals, said)
        if rival.entry.valid_from > said:  # older than every value: it comes before them
            return _Draft(text, key, claim, "update", rival.entry.entry_id), None
        self.known.remove(rival)
        return self._replacing(rival, rivals, text, key, claim, said)

    def _replacing(
        self,
        held: _Known,
        rivals: list[_Known],
        text: str,
        key: str,
        claim: _Claim,
        said: datetime,
    ) -> tuple[_Draft, _Known | None]:
        """A new value said while ``held`` held: it updates ``held``. When ``held`` was
        taken back later and another value followed, that value ends the new one: the
        draft updates it (coming before it) and takes ``held`` back when it was said."""
        later = [k for k in rivals if k.entry.valid_from > said]
        if held.entry.valid_until is None or not later:
            return _Draft(text, key, claim, "update", held.entry.entry_id), None
        following = min(later, key=_Known.recency)
        return _Draft(text, key, claim, "update", following.entry.entry_id), held

    def _held_before(self, claim: _Claim | None, entry: _Known, said: datetime) -> _Known | None:
        """The other value of a single-valued ``claim`` that held at ``said``, when the
        known ``entry`` restated then began later; else ``None``."""
        if claim is None or not claim.single or entry.entry.valid_from <= said:
            return None
        held = [
            k
            for k in self.known
            if k.claim is not None
            and k.claim.slot == claim.slot
            and k.claim != claim
            and k.entry.valid_from <= said
            and k.ends_after(said)
        ]
        return max(held, key=_Known.recency, default=None)

    def retract(self, retraction: _Retraction, message_id: str, said: datetime) -> None:
        """Fold one retraction said at ``said``: end what stands that it names (a known
        entry that began later is not ended by it)."""
        for draft in list(self._standing.values()):
            if not draft.adds:
                continue
            rest = _remaining(retraction, draft.claim, draft.text)
            if rest is not None:
                self._end(draft)
                self._stand(self._rest(rest, [*draft.sources, message_id], replaces=draft))
            elif _retracts(retraction, draft.claim, draft.key):
                self._end(draft)
                self.items.append(_Withdrawal(retraction.reason, message_id, draft))
        for k in list(self.known):
            if k.entry.valid_until is not None or k.entry.valid_from > said:
                continue  # ended already, or begun later: a retraction ends nothing more
            rest = _remaining(retraction, k.claim, k.entry.text)
            if rest is not None:
                self.known.remove(k)
                self._stand(self._rest(rest, [message_id], target=k.entry.entry_id))
            elif _retracts(retraction, k.claim, k.key):
                self.known.remove(k)
                self.items.append(_Withdrawal(retraction.reason, message_id, k.entry.entry_id))

    def _rest(
        self,
        text: str,
        sources: list[str],
        *,
        target: str | None = None,
        replaces: _Draft | None = None,
    ) -> _Draft:
        """The draft updating a list that lost one item (``text``: what is left of it),
        citing the messages that said the list and the one that took the item back."""
        claim = _claim(text, self.speakers)
        draft = _Draft(text, _normalized(text), claim, "update", target, replaces)
        draft.sources.extend(dict.fromkeys(sources))
        return draft

    def facts(self) -> tuple[ExtractedFact, ...]:
        """The folded batch as the extractor's answer: each draft and ending where it was
        said, an earlier draft named by its place in the answer."""
        place = {id(item): index for index, item in enumerate(self.items)}
        facts = []
        for item in self.items:
            if isinstance(item, _Withdrawal):
                ends = item.ends
                known = ends if isinstance(ends, str) else None
                within = None if isinstance(ends, str) else place[id(ends)]
                facts.append(
                    ExtractedFact(item.reason, (item.source,), "invalidate", known, within)
                )
            else:
                within = None if item.replaces is None else place[id(item.replaces)]
                facts.append(
                    ExtractedFact(item.text, tuple(item.sources), item.action, item.target, within)
                )
        for item in self.items:
            if isinstance(item, _Draft):
                facts.extend(_restatement(item, message) for message in item.restated_by)
        return tuple(facts)


def _restatement(draft: _Draft, message_id: str) -> ExtractedFact:
    """The fact ``message_id`` stated by saying ``draft`` again: the same as the known
    entry it confirms, or else its text anew, which the engine notes as said again of the
    entry the draft adds (it was sent after that began)."""
    if draft.action == "same":
        return ExtractedFact(draft.text, (message_id,), "same", draft.target)
    return ExtractedFact(draft.text, (message_id,), "new")


def _at(entries: list[_Known], said: datetime) -> _Known:
    """Of ``entries``, the one holding at ``said`` (the latest begun by then), else the
    first to begin after it."""
    begun = [k for k in entries if k.entry.valid_from <= said]
    if begun:
        return max(begun, key=_Known.recency)
    return min(entries, key=_Known.recency)


def _retracts(retraction: _Retraction, claim: _Claim | None, key: str) -> bool:
    """Whether ``retraction`` ends the fact of ``claim`` (with normalized text ``key``)."""
    if retraction.positive is not None and _without_article(retraction.positive) == (
        _without_article(key)
    ):
        return True
    if claim is None or claim.slot[0] not in retraction.kinds:
        return False
    if claim.slot[1:] != (retraction.speaker, retraction.subject):
        return False
    if retraction.value is None:
        return True
    value = _claim_value(retraction.value)
    if retraction.exact:
        return claim.value == value
    return claim.value == value or claim.value.startswith(value + " ")


def _without_article(text: str) -> str:
    """``text`` normalized, without the article of what someone is ("is a vegan": "is
    vegan"), so that "I'm not vegan any more" takes back "User is a vegan."."""
    return _IS_AN.sub(r"\1 ", _normalized(text))


_IS_AN = re.compile(r"\b(is|as) an? ")
_LIST_ITEMS = re.compile(r"\s*,\s*(?:(?:and|or)\s+)?|\s+(?:and|or|&)\s+")


def _remaining(retraction: _Retraction, claim: _Claim | None, text: str) -> str | None:
    """The fact ``text`` without the one item of its list that ``retraction`` takes back
    ("User is allergic to shellfish." of "... to peanuts and shellfish."), or None when
    its claim lists no such item among others: taking back one item keeps the rest."""
    if claim is None or claim.single or retraction.value is None:
        return None
    if claim.slot[0] not in retraction.kinds:
        return None
    if claim.slot[1:] != (retraction.speaker, retraction.subject):
        return None
    text = " ".join(text.split()).removesuffix(".")
    listed = text[len(text) - len(claim.value) :]
    if _normalized(listed) != claim.value:
        return None
    items = _LIST_ITEMS.split(listed)
    value = _claim_value(retraction.value)
    kept = [item for item in items if _normalized(item) != value]
    if len(items) < 2 or not kept or len(kept) == len(items):
        return None
    listing = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
    return text[: len(text) - len(listed)] + listing + "."


def _claim_value(value: str) -> str:
    """A retraction's value as a claim gives it: normalized, without a leading article."""
    words = _normalized(value).rstrip(".").split()
    return " ".join(words[1:] if words[:1] in (["a"], ["an"]) else words)


def extract_facts(
    messages: Iterable[BatchMessage], known: Iterable[KnownEntry] = ()
) -> tuple[ExtractedFact, ...]:
    """The facts the user's own messages disclose, related to ``known`` and to each other.

    Facts that differ only in case or spacing, or give the same value for the same slot,
    are one fact citing every message that stated it. A single-valued slot given another
    value updates the earlier one, and a retraction invalidates what it names, whether
    that was known or said earlier in the batch, so the history is the same however the
    messages were batched. Facts come in the order they were said. Assistant and system
    messages are ignored, as they are not the user's word. A named speaker of a group
    chat states facts about themselves ("Ann lives in Oslo."), which replace only their own.
    """
    said = [m for m in sorted(messages, key=lambda m: m.sent_at) if m.role == "user"]
    speakers = {name for m in said if (name := _speaker(m.name)) is not None}
    batch = _Batch(known, speakers)
    for message in said:  # sorted stably: log order on ties
        for found in _message_facts(message.content, _speaker(message.name)):
            if isinstance(found, _Retraction):
                batch.retract(found, message.message_id, message.sent_at)
            elif isinstance(found, _Naming):
                batch.state(found.text, message.message_id, message.sent_at, supersedes=False)
            else:
                batch.state(found, message.message_id, message.sent_at)
    return batch.facts()


class OfflineExtractor:
    """Rule-based extraction of the user's self-disclosed facts, with no network.

    The fallback when no Claude API key is configured, and a fast deterministic
    extractor for tests: the same batch always yields the same facts in the same order.
    """

    name = "offline"

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """Extract the facts that the batch's user messages state, against its known entries."""
        facts = extract_facts(batch.messages, batch.known)
        return ExtractionResult(facts=facts, extractor=self.name)

    async def aclose(self) -> None:
        """Nothing to release; present to satisfy the Extractor protocol."""
