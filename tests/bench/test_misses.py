"""The diagnostic of misses at 1 (bench/misses.py) names the kind of item that came first.

Only the labelling is checked, on hand-made results; the replay it runs is bench.eval's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench.eval import load_dataset
from bench.misses import cause, first_item, misses
from memvee import RetrievalResult, RetrievedEntry, RetrievedMessage
from projections import KnowledgeEntry, Message
from tests.bench.test_eval import TINY

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _message(text: str, role: str = "user", score: float = 0.5) -> RetrievedMessage:
    return RetrievedMessage(Message("m1", "u", 1, role, text, NOW), score, None)


def _entry(text: str, score: float) -> RetrievedEntry:
    entry = KnowledgeEntry("e1", "u", text, "t1", ("m1",), NOW, "offline", None, NOW)
    return RetrievedEntry(entry, score)


def _result(
    query: str,
    entries: list[RetrievedEntry] | None = None,
    messages: list[RetrievedMessage] | None = None,
) -> RetrievalResult:
    return RetrievalResult("u", query, None, entries or [], messages or [])


def test_a_first_item_stating_a_changed_value_is_stale_whether_entry_or_message() -> None:
    entry = _result("q", [_entry("User lives in Graz.", 0.9)])
    message = _result("q", messages=[_message("I live in Graz.")])
    assert cause(entry, (0, 1), [(0, 1)], "q") == "stale entry (value never replaced)"
    assert cause(message, (0, 1), [(0, 1)], "q") == "stale message"


def test_a_fact_weaker_than_a_message_it_is_listed_before_is_told_apart() -> None:
    weaker = _result("q", [_entry("User lives in Graz.", 0.4)], [_message("x", score=0.8)])
    stronger = _result("q", [_entry("User lives in Graz.", 0.9)], [_message("x", score=0.8)])
    assert cause(weaker, (0, 0), [], "q") == "fact listed before a stronger message"
    assert cause(stronger, (0, 0), [], "q") == "other fact"


def test_a_first_message_is_labelled_by_speaker_question_and_shared_words() -> None:
    query = "which kayak do I paddle?"
    cases = {
        "Should I buy a kayak?": "user question",
        "Kayaks are fun.": "assistant reply",
        "My kayak is red.": "short message sharing a query word",
        "My old kayak is still in the shed behind the house by the lake.": (
            "message sharing a query word"
        ),
        "I spend weekends on the river.": "message found by meaning",
    }
    for text, label in cases.items():
        role = "assistant" if label == "assistant reply" else "user"
        result = _result(query, messages=[_message(text, role)])
        assert cause(result, (0, 0), [], query) == label, text


def test_a_question_that_returned_nothing_is_a_miss_of_its_own_cause() -> None:
    """A result with no item is a miss like any other (it was left out of the list and
    the count): nothing came first, and its cause says so."""
    empty = _result("which kayak do I paddle?")
    assert cause(empty, None, [], "which kayak do I paddle?") == "nothing returned"
    assert first_item(empty) == ("nothing", "", 0.0)
    first = _result("q", messages=[_message("My kayak is red.", score=0.7)])
    assert first_item(first) == ("user message", "My kayak is red.", 0.7)


def test_the_misses_of_a_set_are_its_questions_whose_answer_is_not_first(
    tmp_path: Path, eval_server: str | None
) -> None:
    """Replayed as bench.eval replays it (into a SQLite file, or a database of its own on
    PostgreSQL), a set gives every question's answer rank, and the misses are exactly the
    questions ranked other than first, each with that rank."""
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(TINY), encoding="utf-8")
    found, ranks = misses(path, server_url=eval_server)
    questions = [(c.id, q.text) for c in load_dataset(path) for q in c.questions]
    assert len(ranks) == len(questions) == 3
    assert ranks[1] == 1  # only the answer says "theremin"
    missed = [(q, rank) for q, rank in zip(questions, ranks, strict=True) if rank != 1]
    assert [((m.conversation, m.question), m.answer_rank) for m in found] == missed
    for miss in found:
        assert (miss.first_kind == "nothing") == (miss.cause == "nothing returned")
