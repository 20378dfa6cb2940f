"""Guarantees 3 and 9: a SIGKILL loses no acknowledged message, and the task it cut
short is closed as FAILED on the next open, its messages processed exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from actors import INTERRUPTED_BY_CRASH
from memvee import Memory, MemoryConfig, ProcessStatus
from projections import verify
from tests.support.coverage import coverage
from tests.support.crash_child import LEASE_TTL, POISON, poisoned
from tests.support.extractors import RecordingExtractor

ROOT = Path(__file__).resolve().parents[2]


async def _until_recovered(memory: Memory) -> None:
    """Wait until the killed process's user is taken over and no task of it is open.

    On SQLite that is at once; with leases (PostgreSQL) after the dead owner's lease ends.
    """
    async with asyncio.timeout(30):
        while True:
            tasks = await memory.tasks("victim")
            closed = any(t.error == INTERRUPTED_BY_CRASH for t in tasks)
            if closed and all(t.done for t in tasks):
                return
            await asyncio.sleep(0.05)


def _run_child_until_killed(
    db_url: str, acks_after_extraction: int, mode: str = "auto"
) -> list[str]:
    """Run the crash child, SIGKILL it mid-extraction; return the acknowledged ids."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_child", db_url, mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[str] = []
    extracting = False
    after = 0
    assert child.stdout is not None
    try:
        for line in child.stdout:
            record = json.loads(line)
            if "extracting" in record:
                assert record["extracting"] is True
                extracting = True
                continue
            acked += record["ack"]
            if extracting:
                after += 1
                if after >= acks_after_extraction:
                    break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert extracting, "the child never started extracting"
    return acked


async def test_sigkill_mid_processing_loses_nothing_and_recovery_covers_each_message_once(
    db_url: str,
) -> None:
    acked = _run_child_until_killed(db_url, acks_after_extraction=20)
    extractor = RecordingExtractor()
    config = MemoryConfig(db_url=db_url, lease_ttl=LEASE_TTL)
    async with Memory(config=config, extractor=extractor) as memory:
        await _until_recovered(memory)
        await memory.flush("victim")
        tasks = await memory.tasks("victim")
        interrupted = [t for t in tasks if t.status is ProcessStatus.FAILED]
        assert interrupted and all(t.error == INTERRUPTED_BY_CRASH for t in interrupted)
        assert all(t.done for t in tasks)
        assert await memory.buffer("victim") == []
        logged = [m.message_id for m in await memory.messages("victim")]
        assert set(acked) <= set(logged) and len(logged) == len(set(logged))
        user_messages = [m.message_id for m in await memory.messages("victim") if m.role == "user"]
        covered = Counter(m for e in await memory.knowledge("victim") for m in e.source_message_ids)
        assert covered == Counter(user_messages)
        assert max(Counter(extractor.sent_message_ids).values()) == 1
        engine = memory._engine
        assert engine is not None
        assert verify(engine.store) == []


async def test_recovery_with_auto_process_processes_users_left_over_the_threshold(
    db_url: str,
) -> None:
    acked = _run_child_until_killed(db_url, acks_after_extraction=5, mode="manual")
    extractor = RecordingExtractor()
    config = MemoryConfig(db_url=db_url, auto_process=True, batch_threshold=6, lease_ttl=LEASE_TTL)
    async with Memory(config=config, extractor=extractor) as memory:
        await _until_recovered(memory)
        tasks: list[Any] = await memory.tasks("victim")
        assert [t.trigger for t in tasks if t.status is ProcessStatus.COMPLETED] == ["recovery"]
        assert await memory.buffer("victim") == []
        covered = {m for e in await memory.knowledge("victim") for m in e.source_message_ids}
        assert set(acked[0::2]) <= covered


async def test_sigkill_while_batches_split_and_quarantine_covers_nothing_twice(
    db_url: str,
) -> None:
    acked = _run_child_until_killed(db_url, acks_after_extraction=40, mode="poison")
    extractor = RecordingExtractor()
    extractor.fault = poisoned
    config = MemoryConfig(db_url=db_url, lease_ttl=LEASE_TTL, max_batch_messages=4)
    async with Memory(config=config, extractor=extractor) as memory:
        await _until_settled(memory)
        await memory.flush("victim")
        engine = memory._engine
        assert engine is not None
        found = coverage(engine.store, "victim")
        found.check()
        assert set(acked) <= set(found.messages)
        assert not found.buffered and await memory.buffer("victim") == []
        logged = {m.message_id: m.content for m in await memory.messages("victim")}
        poisoned_ids = {m for m, content in logged.items() if POISON in content}
        assert poisoned_ids and set(found.quarantined) == poisoned_ids
        assert set(found.covered) == set(logged) - poisoned_ids
        assert {q.message_id for q in await memory.quarantined("victim")} == poisoned_ids
        assert verify(engine.store) == []


async def _until_settled(memory: Memory) -> None:
    """Wait until the killed process's user is taken over and none of its tasks is open."""
    async with asyncio.timeout(30):
        while True:
            tasks = await memory.tasks("victim")
            if all(t.done for t in tasks):
                return
            await asyncio.sleep(0.05)
