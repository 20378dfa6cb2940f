"""The one-line summaries of events that ``memvee log`` shows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

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
