"""Checks that every labelled evaluation set must pass, whatever else it labels."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def check_session_times(conversations: list[dict[str, Any]], min_gap: timedelta) -> None:
    """Session times are ISO UTC, increasing, and at least ``min_gap`` apart."""
    for c in conversations:
        previous: datetime | None = None
        for session in c["sessions"]:
            assert set(session) == {"at", "turns"}, c["id"]
            at = session["at"]
            assert isinstance(at, str) and TIMESTAMP_PATTERN.match(at), (c["id"], at)
            moment = datetime.fromisoformat(at)
            assert moment.utcoffset() == timedelta(0), (c["id"], at)
            if previous is not None:
                assert moment - previous >= min_gap, (c["id"], at)
            previous = moment


def check_turns(conversations: list[dict[str, Any]], per_session: Collection[int]) -> None:
    """Each session has ``per_session`` turns, each a pair of non-empty strings."""
    for c in conversations:
        for s, session in enumerate(c["sessions"]):
            turns = session["turns"]
            assert len(turns) in per_session, (c["id"], s)
            for t, turn in enumerate(turns):
                assert isinstance(turn, list) and len(turn) == 2, (c["id"], s, t)
                for text in turn:
                    assert isinstance(text, str) and text.strip(), (c["id"], s, t)


def check_question_shape(conversations: list[dict[str, Any]], keys: set[str]) -> None:
    """Questions are unique per conversation, have exactly ``keys`` and non-empty texts."""
    for c in conversations:
        texts = [q["question"] for q in c["questions"]]
        assert len(texts) == len(set(texts)), c["id"]
        for q in c["questions"]:
            assert set(q) == keys, (c["id"], q.get("question"))
            assert isinstance(q["question"], str) and q["question"].strip(), c["id"]
            assert isinstance(q["expected"], str) and q["expected"].strip(), c["id"]
            assert isinstance(q["stale"], list), c["id"]


def in_range(conversation: dict[str, Any], ref: Any) -> bool:
    """Whether ``ref`` is a {"session", "turn"} pointer to a turn of ``conversation``."""
    if not isinstance(ref, dict) or set(ref) != {"session", "turn"}:
        return False
    session, turn = ref["session"], ref["turn"]
    if not (isinstance(session, int) and isinstance(turn, int)):
        return False
    sessions = conversation["sessions"]
    return 0 <= session < len(sessions) and 0 <= turn < len(sessions[session]["turns"])


def turn_position(ref: dict[str, Any]) -> tuple[int, int]:
    """A turn pointer as (session, turn)."""
    return ref["session"], ref["turn"]


def check_top_level_shape(data: dict[str, Any]) -> None:
    """A dataset file is a version-1 object holding a list of conversations."""
    assert set(data) == {"version", "conversations"}
    assert data["version"] == 1
    assert isinstance(data["conversations"], list)
