"""The one-line summaries of events that ``memvee log`` shows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.user_actor import INTERRUPTED_BY_CRASH
from events import UserLog
from memvee._event_lines import describe


def test_an_interrupted_task_says_interrupted_once() -> None:
    event = UserLog.ProcessingInterrupted(
        originator_id=uuid.uuid4(),
        originator_version=7,
        timestamp=datetime.now(UTC),
        task_id="59769978-aaaa-bbbb-cccc-dddddddddddd",
        reason=INTERRUPTED_BY_CRASH,
    )
    assert describe(event) == (
        "task 59769978 interrupted: the process stopped before the task finished"
    )


@pytest.mark.parametrize(
    ("found", "said"),
    [
        ({}, "answered"),
        ({"error": "ExtractionError: HTTP 400: bad"}, "failed: ExtractionError: HTTP 400: bad"),
        ({"outage": True}, "failed: the API down"),
        ({"outage": True, "refused": True}, "failed: the API key refused: HTTP 401 or 403"),
    ],
    ids=["answered", "failed", "the API down", "the API key refused"],
)
def test_a_harmless_request_judging_no_failed_call_is_told_as_what_it_cost_and_how_it_fared(
    found: dict[str, Any], said: str
) -> None:
    """A harmless request kept for its cost alone (the bulk fallback's, or a probe's)
    judges no failed call: its line says what it cost and whether it was answered, not a
    verdict on failed calls it never named."""
    event = UserLog.ReextractionChecked(
        originator_id=uuid.uuid4(),
        originator_version=7,
        timestamp=datetime.now(UTC),
        knowledge_version="v2",
        failed_calls=[],
        input_tokens=7_000,
        output_tokens=1,
        **{"outage": False, **found},
    )
    assert describe(event) == f"version 'v2' harmless request's cost: 7001 tokens, {said}"
