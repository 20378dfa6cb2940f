"""Processes meeting on one database (leases), with extraction through the real
``anthropic`` client and the stand-in Messages API: an owner SIGKILLed mid-extraction, while
the API is down, or while it splits batches and quarantines, is taken over by a surviving
process, and every message ends extracted exactly once or quarantined, none lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from actors import INTERRUPTED_BY_CRASH
from memvee import Memory, MemoryConfig, ProcessingError, ProcessStatus
from memvee.extractors import ClaudeExtractor
from projections import verify
from tests.support.claude_owner import LEASE_TTL, POISON, QUICK_RETRIES
from tests.support.coverage import coverage
from tests.support.messages_api_server import (
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    default_answer,
    error_body,
    fault_when,
    text_body,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def claude_env(messages_api_server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_api_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-key")


class Owner:
    """The owner child (:mod:`tests.support.claude_owner`) and what it printed so far."""

    def __init__(self, db_url: str, exchanges: int, mode: str) -> None:
        child = ["tests.support.claude_owner", db_url, "victim", str(exchanges), mode]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *child],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.acked: list[str] = []
        self.task_id: str | None = None

    async def read_until(self, done: Callable[[], bool], seconds: float = 30) -> None:
        """Read the child's lines, off the loop, until ``done()`` (or its output ends)."""
        stdout = self.process.stdout
        assert stdout is not None
        async with asyncio.timeout(seconds):
            while not done():
                line = await asyncio.to_thread(stdout.readline)
                if not line:
                    return
                record = json.loads(line)
                self.acked += record.get("ack", [])
                self.task_id = record.get("task", self.task_id)

    async def kill(self) -> None:
        """SIGKILL the child and read what it printed before it died."""
        self.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait, 30)
        await self.read_until(lambda: False)


@asynccontextmanager
async def _owner(db_url: str, exchanges: int = 0, mode: str = "once") -> AsyncIterator[Owner]:
    owner = Owner(db_url, exchanges, mode)
    try:
        yield owner
    finally:
        owner.process.kill()
        await asyncio.to_thread(owner.process.wait, 30)


async def _check_each_message_once(memory: Memory, acked: list[str]) -> None:
    """Nothing buffered or open, each acknowledged message logged, each user message
    covered by exactly one entry, and the projections equal to the log."""
    assert await memory.buffer("victim") == []
    assert all(t.done for t in await memory.tasks("victim"))
    logged = await memory.messages("victim")
    assert set(acked) <= {m.message_id for m in logged}
    users = [m.message_id for m in logged if m.role == "user"]
    covered = Counter(m for e in await memory.knowledge("victim") for m in e.source_message_ids)
    assert covered == Counter(users)
    engine = memory._engine
    assert engine is not None
    assert await asyncio.to_thread(verify, engine.store) == []


@pytest.mark.usefixtures("claude_env")
async def test_an_owner_killed_mid_extraction_is_taken_over_and_each_message_extracted_once(
    db_url: str, messages_api_server: MessagesAPIServer
) -> None:
    """The owner's call is in flight at the API when it is killed: the surviving process's
    wait_for_processing ends with the task closed FAILED as a crash, and its flush extracts
    the run's messages once."""
    held, release = threading.Event(), threading.Event()

    def hold_the_first_call(request: RecordedRequest) -> ScriptedResponse:
        if not held.is_set():
            held.set()
            release.wait(30)
        return default_answer(request)

    messages_api_server.set_responder(hold_the_first_call)
    config = MemoryConfig(db_url=db_url, leases=True, lease_ttl=LEASE_TTL)
    try:
        async with _owner(db_url, exchanges=5) as owner:
            await owner.read_until(lambda: owner.task_id is not None)
            assert await asyncio.to_thread(held.wait, 30), "the owner never called the API"
            async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as survivor:
                waiting = asyncio.ensure_future(survivor.wait_for_processing("victim", timeout=30))
                await asyncio.sleep(0.3)
                assert not waiting.done(), "the owner's run is still in flight"
                await owner.kill()
                release.set()
                with pytest.raises(ProcessingError, match="interrupted"):
                    await waiting
                assert owner.task_id is not None
                crashed = await survivor.get_task("victim", owner.task_id)
                assert crashed.status is ProcessStatus.FAILED
                assert crashed.error == INTERRUPTED_BY_CRASH
                await asyncio.wait_for(survivor.flush("victim"), 30)
                await _check_each_message_once(survivor, owner.acked)
                assert len(owner.acked) == 10
    finally:
        release.set()


@pytest.mark.usefixtures("claude_env")
async def test_an_api_down_while_the_owner_dies_leaves_every_message_to_a_later_run(
    db_url: str, messages_api_server: MessagesAPIServer
) -> None:
    """The API answers 529 (with and without retry-after) or resets the connection while
    the owner auto-processes, backs off and opens its breaker; it is killed, the survivor
    takes the user over and fails a run of its own on the outage. Once the API is back,
    every message is extracted once and none was quarantined."""
    healthy = threading.Event()
    down = Counter[str]()

    def down_until_healthy(request: RecordedRequest) -> ScriptedResponse:
        if healthy.is_set():
            return default_answer(request)
        down["calls"] += 1
        kind = down["calls"] % 3
        if kind == 0:
            return ScriptedResponse(reset=True)
        headers = {"retry-after-ms": "20"} if kind == 1 else {}
        return ScriptedResponse(529, error_body("overloaded_error", "Overloaded"), headers)

    messages_api_server.set_responder(down_until_healthy)
    config = MemoryConfig(
        db_url=db_url, leases=True, lease_ttl=LEASE_TTL, max_batch_messages=4, **QUICK_RETRIES
    )
    async with (
        _owner(db_url, mode="auto") as owner,
        Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as survivor,
    ):
        await owner.read_until(lambda: down["calls"] >= 8)
        await survivor.add_exchange("victim", "I love tea", "ok")
        await owner.kill()
        with pytest.raises(ProcessingError):
            await asyncio.wait_for(survivor.process("victim"), 30)
        healthy.set()
        await asyncio.wait_for(survivor.flush("victim"), 30)
        assert await survivor.quarantined("victim") == []
        await _check_each_message_once(survivor, owner.acked)


@pytest.mark.usefixtures("claude_env")
async def test_an_owner_killed_while_it_splits_and_quarantines_leaves_each_message_once(
    db_url: str, messages_api_server: MessagesAPIServer
) -> None:
    """The API answers plain text to every batch holding a poisoned message: the owner
    splits those batches and quarantines the poisoned messages alone, and is killed
    midway. The survivor goes on: the poisoned messages end quarantined, every other
    one covered by exactly one entry."""
    messages_api_server.set_responder(
        fault_when(POISON, lambda r: ScriptedResponse(body=text_body("Several things.")))
    )
    config = MemoryConfig(db_url=db_url, leases=True, lease_ttl=LEASE_TTL, max_batch_messages=4)
    async with (
        _owner(db_url, mode="poison") as owner,
        Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as survivor,
    ):
        await owner.read_until(lambda: len(messages_api_server.requests) >= 12)
        await owner.kill()
        await asyncio.wait_for(survivor.add_exchange("victim", "I love tea", "ok"), 30)
        await asyncio.wait_for(survivor.flush("victim"), 30)
        assert await survivor.buffer("victim") == []
        assert all(t.done for t in await survivor.tasks("victim"))
        engine = survivor._engine
        assert engine is not None
        found = coverage(engine.store, "victim")
        found.check()
        logged = {m.message_id: m.content for m in await survivor.messages("victim")}
        assert set(owner.acked) <= set(logged)
        poisoned = {m for m, content in logged.items() if POISON in content}
        assert poisoned and set(found.quarantined) == poisoned
        assert set(found.covered) == set(logged) - poisoned
        assert await asyncio.to_thread(verify, engine.store) == []
