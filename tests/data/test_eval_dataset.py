"""Structural checks for the labelled retrieval evaluation set in eval/conversations.json.

Each question points at the user message (session, turn) that states the current answer;
"stale" points at earlier user messages that stated a value which has since changed.
"""

from __future__ import annotations

import json
import re
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

DATASET = Path(__file__).parent / "eval" / "conversations.json"

MIN_CONVERSATIONS = 36
MIN_QUESTIONS = 90
MIN_CHANGED_FACT_CONVERSATIONS = 15
SESSIONS_PER_CONVERSATION = range(2, 5)
TURNS_PER_SESSION = range(4, 9)
QUESTIONS_PER_CONVERSATION = range(2, 5)
MIN_SESSION_GAP = timedelta(days=1)

ID_PATTERN = re.compile(r"^c\d{2,}$")
TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@cache
def _load() -> dict[str, Any]:
    with DATASET.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _conversations() -> list[dict[str, Any]]:
    conversations: list[dict[str, Any]] = _load()["conversations"]
    return conversations


def _user_message(conversation: dict[str, Any], ref: dict[str, Any]) -> str:
    text: str = conversation["sessions"][ref["session"]]["turns"][ref["turn"]][0]
    return text


def test_top_level_shape() -> None:
    check_top_level_shape(_load())


def test_counts() -> None:
    conversations = _conversations()
    assert len(conversations) >= MIN_CONVERSATIONS
    assert sum(len(c["questions"]) for c in conversations) >= MIN_QUESTIONS
    changed = [c["id"] for c in conversations if any(q["stale"] for q in c["questions"])]
    assert len(changed) >= MIN_CHANGED_FACT_CONVERSATIONS


def test_ids_are_unique_and_well_formed() -> None:
    ids = [c["id"] for c in _conversations()]
    assert len(ids) == len(set(ids))
    for cid in ids:
        assert ID_PATTERN.match(cid), cid


def test_conversation_keys() -> None:
    for c in _conversations():
        assert set(c) == {"id", "sessions", "questions"}, c["id"]
        assert len(c["sessions"]) in SESSIONS_PER_CONVERSATION, c["id"]
        assert len(c["questions"]) in QUESTIONS_PER_CONVERSATION, c["id"]


def test_session_times_are_iso_utc_and_increasing() -> None:
    check_session_times(_conversations(), MIN_SESSION_GAP)


def test_turns_are_pairs_of_non_empty_strings() -> None:
    check_turns(_conversations(), TURNS_PER_SESSION)


def test_question_shape() -> None:
    check_question_shape(_conversations(), {"question", "answer", "stale", "expected"})


def test_references_arein_range() -> None:
    for c in _conversations():
        for q in c["questions"]:
            assert in_range(c, q["answer"]), (c["id"], q["question"])
            for ref in q["stale"]:
                assert in_range(c, ref), (c["id"], q["question"], ref)


def test_expected_appears_in_answer_message_only() -> None:
    """The answer's user message states the value; no other message repeats it."""
    for c in _conversations():
        for q in c["questions"]:
            expected = q["expected"].casefold()
            where = (c["id"], q["question"])
            assert expected in _user_message(c, q["answer"]).casefold(), where
            answer = turn_position(q["answer"])
            for s, session in enumerate(c["sessions"]):
                for t, turn in enumerate(session["turns"]):
                    user, assistant = turn[0], turn[1]
                    assert expected not in assistant.casefold(), (*where, s, t)
                    if (s, t) != answer:
                        assert expected not in user.casefold(), (*where, s, t)


def test_stale_references_precede_the_answer() -> None:
    for c in _conversations():
        for q in c["questions"]:
            answer = turn_position(q["answer"])
            positions = [turn_position(ref) for ref in q["stale"]]
            assert len(positions) == len(set(positions)), (c["id"], q["question"])
            for position in positions:
                assert position < answer, (c["id"], q["question"], position)


def test_changed_facts_span_sessions() -> None:
    """At least the required number of conversations change a fact in a later session."""
    across = {
        c["id"]
        for c in _conversations()
        for q in c["questions"]
        if any(ref["session"] < q["answer"]["session"] for ref in q["stale"])
    }
    assert len(across) >= MIN_CHANGED_FACT_CONVERSATIONS
