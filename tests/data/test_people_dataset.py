"""Structural checks for the labelled people set in eval/people.json.

The set has the shape of eval/conversations.json (each question points at the user message
(session, turn) that states the current answer; "stale" points at earlier user messages
that stated a value which has since changed) with two additions: every conversation names
its speakers ("user_name", "assistant_name"), and every question is labelled with "kinds":

- "names_person": the question names someone (the user or a person in the user's life);
- "paraphrase": the question shares no content word with the answer's user message;
- "changed": the fact changed, so "stale" is not empty;
- "plain": none of the above.

The conversations are long (many sessions of small talk and distractors) so that matching
words alone is not enough. These tests check the data only, never a retrieval score.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from tests.data.dataset_checks import (
    check_question_shape,
    check_session_times,
    check_top_level_shape,
    check_turns,
    in_range,
    turn_position,
)

DATASET = Path(__file__).parent / "eval" / "people.json"

MIN_CONVERSATIONS = 30
MIN_QUESTIONS = 150
MIN_QUESTIONS_PER_KIND = {"paraphrase": 40, "names_person": 40, "changed": 30}
MIN_QUESTIONS_PER_CONVERSATION = 4
MIN_CHANGED_ACROSS_SESSIONS = 20
SESSIONS_PER_CONVERSATION = range(6, 11)
TURNS_PER_SESSION = range(6, 13)
MIN_SESSION_GAP = timedelta(days=1)

KINDS = frozenset({"names_person", "paraphrase", "changed", "plain"})
CONVERSATION_KEYS = {"id", "user_name", "assistant_name", "sessions", "questions"}
QUESTION_KEYS = {"question", "answer", "stale", "expected", "kinds"}

ID_PATTERN = re.compile(r"^p\d{2,}$")
TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
FIRST_NAME_PATTERN = re.compile(r"^[^\W\d_]+$")
WORD_PATTERN = re.compile(r"[^\W_]+")

# The words a "paraphrase" question may share with its answer's user message.
# fmt: off
STOP_WORDS = frozenset({
    # articles, conjunctions and prepositions
    "a", "an", "the", "and", "or", "but", "if", "than", "so", "of", "to", "in", "on", "at",
    "for", "with", "from", "by", "about", "as", "into", "over", "after", "before", "up",
    "down", "out", "off",
    # auxiliary and modal verbs
    "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "doing",
    "done", "have", "has", "had", "having", "will", "would", "can", "could", "should",
    "shall", "may", "might", "must",
    # pronouns and determiners
    "i", "me", "my", "mine", "myself", "you", "your", "yours", "he", "him", "his", "she",
    "her", "hers", "it", "its", "we", "us", "our", "they", "them", "their", "this", "that",
    "these", "those", "there", "here", "any", "some", "all", "user",
    # question words and small adverbs
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "not", "no",
    "too", "very", "just", "also", "now", "then",
    # what an apostrophe leaves behind: "I'm" -> "i" "m", "Maria's" -> "maria" "s"
    "s", "t", "m", "d", "ll", "re", "ve",
})
# fmt: on


@cache
def _load() -> dict[str, Any]:
    with DATASET.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _conversations() -> list[dict[str, Any]]:
    conversations: list[dict[str, Any]] = _load()["conversations"]
    return conversations


def _questions() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(c, q) for c in _conversations() for q in c["questions"]]


def _user_message(conversation: dict[str, Any], ref: dict[str, Any]) -> str:
    text: str = conversation["sessions"][ref["session"]]["turns"][ref["turn"]][0]
    return text


def _user_messages(conversation: dict[str, Any]) -> list[str]:
    return [turn[0] for session in conversation["sessions"] for turn in session["turns"]]


def _content_words(text: str) -> set[str]:
    """Lowercased words without stop words, a final plural "s" dropped ("parks" -> "park")."""
    words: set[str] = set()
    for word in WORD_PATTERN.findall(text.casefold()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def _is_paraphrase(conversation: dict[str, Any], question: dict[str, Any]) -> bool:
    answer = _user_message(conversation, question["answer"])
    return not _content_words(question["question"]) & _content_words(answer)


def _named_people(conversation: dict[str, Any], question: str) -> set[str]:
    """The user's name, and capitalised words after the first that the user also wrote."""
    words = WORD_PATTERN.findall(question)
    named = {w for w in words if w == conversation["user_name"]}
    written = set(WORD_PATTERN.findall(" ".join(_user_messages(conversation))))
    named.update(w for w in words[1:] if w[0].isupper() and w != "I" and w in written)
    return named


def test_top_level_shape() -> None:
    check_top_level_shape(_load())


def test_counts() -> None:
    conversations = _conversations()
    assert len(conversations) >= MIN_CONVERSATIONS
    assert len(_questions()) >= MIN_QUESTIONS
    kinds = Counter(kind for _, q in _questions() for kind in q["kinds"])
    for kind, least in MIN_QUESTIONS_PER_KIND.items():
        assert kinds[kind] >= least, (kind, kinds[kind])


def test_ids_are_unique_and_well_formed() -> None:
    ids = [c["id"] for c in _conversations()]
    assert len(ids) == len(set(ids))
    for cid in ids:
        assert ID_PATTERN.match(cid), cid


def test_conversation_keys_and_sizes() -> None:
    for c in _conversations():
        assert set(c) == CONVERSATION_KEYS, c["id"]
        assert len(c["sessions"]) in SESSIONS_PER_CONVERSATION, c["id"]
        assert len(c["questions"]) >= MIN_QUESTIONS_PER_CONVERSATION, c["id"]


def test_speakers_have_distinct_first_names() -> None:
    for c in _conversations():
        user, assistant = c["user_name"], c["assistant_name"]
        for name in (user, assistant):
            assert isinstance(name, str) and FIRST_NAME_PATTERN.match(name), (c["id"], name)
            assert name[0].isupper(), (c["id"], name)
        assert user != assistant, c["id"]


def test_session_times_are_iso_utc_increasing_and_a_day_apart() -> None:
    check_session_times(_conversations(), MIN_SESSION_GAP)


def test_turns_are_pairs_of_non_empty_strings() -> None:
    check_turns(_conversations(), TURNS_PER_SESSION)


def test_question_shape() -> None:
    conversations = _conversations()
    check_question_shape(conversations, QUESTION_KEYS)
    for c in conversations:
        for q in c["questions"]:
            assert isinstance(q["kinds"], list), c["id"]


def test_references_arein_range() -> None:
    for c, q in _questions():
        assert in_range(c, q["answer"]), (c["id"], q["question"])
        for ref in q["stale"]:
            assert in_range(c, ref), (c["id"], q["question"], ref)


def test_expected_appears_in_answer_message_only() -> None:
    """The answer's user message states the value; no other message repeats it."""
    for c, q in _questions():
        expected = q["expected"].casefold()
        where = (c["id"], q["question"])
        assert expected in _user_message(c, q["answer"]).casefold(), where
        answer = turn_position(q["answer"])
        for s, session in enumerate(c["sessions"]):
            for t, (user, assistant) in enumerate(session["turns"]):
                assert expected not in assistant.casefold(), (*where, s, t)
                if (s, t) != answer:
                    assert expected not in user.casefold(), (*where, s, t)


def test_stale_references_precede_the_answer() -> None:
    for c, q in _questions():
        answer = turn_position(q["answer"])
        positions = [turn_position(ref) for ref in q["stale"]]
        assert len(positions) == len(set(positions)), (c["id"], q["question"])
        for position in positions:
            assert position < answer, (c["id"], q["question"], position)


def test_changed_facts_mostly_change_in_a_later_session() -> None:
    across = [
        q
        for _, q in _questions()
        if any(ref["session"] < q["answer"]["session"] for ref in q["stale"])
    ]
    assert len(across) >= MIN_CHANGED_ACROSS_SESSIONS


def test_kinds_are_known_and_plain_stands_alone() -> None:
    for c, q in _questions():
        kinds = q["kinds"]
        where = (c["id"], q["question"])
        assert kinds, where
        assert len(kinds) == len(set(kinds)), where
        assert set(kinds) <= KINDS, where
        if "plain" in kinds:
            assert kinds == ["plain"], where


def test_changed_means_stale_references() -> None:
    for c, q in _questions():
        assert ("changed" in q["kinds"]) == bool(q["stale"]), (c["id"], q["question"])


def test_paraphrase_means_no_shared_content_word() -> None:
    """A question is labelled "paraphrase" exactly when it shares no content word with the
    answer's user message (lowercased, stop words dropped, a plural "s" dropped)."""
    for c, q in _questions():
        assert ("paraphrase" in q["kinds"]) == _is_paraphrase(c, q), (c["id"], q["question"])


def test_names_person_questions_name_someone() -> None:
    for c, q in _questions():
        if "names_person" in q["kinds"]:
            assert _named_people(c, q["question"]), (c["id"], q["question"])


def test_content_words_drop_stop_words_and_plurals() -> None:
    assert _content_words("I'm allergic to the prawns") == {"allergic", "prawn"}
    assert _content_words("Which seafood makes her ill?") == {"seafood", "make", "ill"}
    assert _content_words("a glass of water") == {"glass", "water"}
