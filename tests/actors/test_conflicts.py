"""A decision that other processes keep beating to the log is taken again, after random
waits, until it lands: a task's start and outcome are not failed for a lost race."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from actors import BridgedFuture
from actors.user_actor import UserActor, _Append
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


async def test_a_write_that_lost_a_race_after_its_actor_stopped_is_decided_by_the_next(
    memory: Memory,
) -> None:
    """The user's actor stopped (idle, or evicted) before its lost race came back: the
    write used to fail with ConflictError, though a lost race is retried for a minute;
    the user's next actor decides it again."""
    await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
    assert memory._engine is not None
    directory = memory._engine.directory
    ref = directory._actors["ann"]
    actor = ref._actor_weakref()
    await asyncio.to_thread(directory.passivate_idle, 0.0)
    assert await asyncio.to_thread(ref.actor_stopped.wait, 10)
    acknowledged: BridgedFuture[Any] = BridgedFuture()
    said = (("user", "I moved to Bergen.", datetime.now(UTC), None),)
    write = _Append([], actor, None, said, acknowledged, 1)
    await asyncio.to_thread(write.settled, None, ConflictError("another process wrote first"))
    await asyncio.to_thread(acknowledged.get, timeout=30)
    contents = [m.content for m in await memory.messages("ann")]
    assert contents == ["I live in Oslo.", "Nice.", "I moved to Bergen."]
