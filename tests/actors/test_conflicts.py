"""A decision that other processes keep beating to the log is taken again, after random
waits, until it lands: a task's start and outcome are not failed for a lost race."""

from __future__ import annotations

from typing import Any

import pytest

from actors.user_actor import UserActor
from events import ConflictError
from memvee import Memory


async def test_a_decision_beaten_twenty_times_in_a_row_still_lands(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when three processes write one user: its requests, start and outcome each lost
    a race twenty times, where eight tries without a wait used to fail the task."""
    await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
    lost = 0
    commit = UserActor._commit

    def losing(actor: UserActor) -> list[Any]:
        nonlocal lost
        if actor._log is not None and actor._log.pending_events and lost < 60:
            lost += 1
            if lost % 20:  # each decision loses 19 times, then lands
                actor._forget_log()
                raise ConflictError("another process wrote to the log first")
        return commit(actor)

    monkeypatch.setattr(UserActor, "_commit", losing)
    await memory.process("ann")

    assert lost >= 40, "the request and the start each lost their races"
    assert await memory.buffer("ann") == []
    (task,) = await memory.tasks("ann")
    assert task.status.value == "COMPLETED" and task.message_count == 2
