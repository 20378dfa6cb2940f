"""Calls from the event loop: awaited ("paced") calls are sent a few per turn of the loop,
in order; any other call is sent at once, after the paced calls queued before it; and
closing a Memory sends what is queued before the actors stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors._dispatcher import Dispatcher, PooledActor
from actors.directory import SENDS_PER_TURN, ActorDirectory
from memvee import Memory, MemoryConfig
from tests.support.extractors import RecordingExtractor
from tests.support.futures import count_futures_made


class _Recorder(PooledActor):
    def __init__(self, dispatcher: Dispatcher, received: list[int]) -> None:
        super().__init__(dispatcher)
        self.received = received

    def note(self, n: int) -> int:
        self.received.append(n)
        return n


@dataclass
class _Recording:
    """A directory whose actors record the numbers they receive, and the sends it made."""

    directory: ActorDirectory
    received: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)


@pytest.fixture
def recording(dispatcher: Dispatcher) -> Iterator[_Recording]:
    received: list[int] = []
    directory = ActorDirectory(lambda user_id, retire: _Recorder.start(dispatcher, received))
    recording = _Recording(directory, received)
    send = directory._send

    def counted(call: Any) -> None:
        recording.sent.append(call.args[0])
        send(call)

    directory._send = counted  # type: ignore[method-assign]
    yield recording
    directory.stop()


async def test_paced_calls_are_sent_a_few_per_turn_of_the_loop_in_order(
    recording: _Recording,
) -> None:
    loop, sent = asyncio.get_running_loop(), recording.sent
    futures = [recording.directory.call_async(loop, "u", "note", n, paced=True) for n in range(100)]
    assert sent == [], "nothing is sent before the loop turns"
    turns = 0
    while len(sent) < 100:
        await asyncio.sleep(0)
        turns += 1
        assert len(sent) <= SENDS_PER_TURN * turns
    assert turns >= 100 // SENDS_PER_TURN
    assert await asyncio.gather(*futures) == list(range(100))
    assert recording.received == list(range(100))


async def test_a_call_is_answered_on_the_loop_without_a_future_of_its_own(
    recording: _Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write crosses from the loop to an actor and back: the call is the reply's
    target itself, so no pykka future is made, locked and called back per call."""
    made = count_futures_made(monkeypatch)
    loop, directory = asyncio.get_running_loop(), recording.directory
    assert await directory.call_async(loop, "u", "note", 1) == 1  # spawns the actor
    made.clear()
    answers = [directory.call_async(loop, "u", "note", n, paced=n % 2 == 0) for n in range(10)]
    assert await asyncio.gather(*answers) == list(range(10))
    assert made == []


async def test_a_call_sent_at_once_goes_after_the_paced_calls_queued_before_it(
    recording: _Recording,
) -> None:
    loop, directory = asyncio.get_running_loop(), recording.directory
    paced = [directory.call_async(loop, "u", "note", n, paced=True) for n in range(50)]
    now = directory.call_async(loop, "u", "note", 50)
    assert recording.sent == list(range(51)), "sent before the loop turned, in order"
    assert await now == 50
    await asyncio.gather(*paced)
    assert recording.received == list(range(51))


async def test_a_paced_call_cancelled_before_it_was_sent_never_reaches_its_actor(
    recording: _Recording,
) -> None:
    loop = asyncio.get_running_loop()
    futures = [recording.directory.call_async(loop, "u", "note", n, paced=True) for n in range(6)]
    futures[1].cancel()
    futures[4].cancel()
    assert await asyncio.gather(*futures[:1], *futures[2:4], futures[5]) == [0, 2, 3, 5]
    assert recording.sent == recording.received == [0, 2, 3, 5]


async def test_an_add_cancelled_before_it_left_the_loop_is_not_stored(tmp_path: Path) -> None:
    """The caller saw it fail, and retries it: stored as well, it would be there twice."""
    async with Memory(db_path=tmp_path / "m.db", extractor=RecordingExtractor()) as memory:
        adds = [
            asyncio.ensure_future(memory.add_exchange("u", f"said {n}", "ok")) for n in range(4)
        ]
        await asyncio.sleep(0)  # each runs to its first await: queued, not yet sent
        adds[2].cancel()
        await asyncio.gather(*adds, return_exceptions=True)
        said = [m.content for m in await memory.messages("u") if m.role == "user"]
        assert said == ["said 0", "said 1", "said 3"]


async def test_closing_sends_the_queued_writes_and_they_are_kept(tmp_path: Path) -> None:
    config = MemoryConfig(db_path=str(tmp_path / "m.db"))
    memory = Memory(config=config, extractor=RecordingExtractor())
    await memory.open()
    writes = [
        asyncio.ensure_future(memory.add_exchange(f"user-{i}", f"hello {i}", "hi"))
        for i in range(3 * SENDS_PER_TURN)
    ]
    await asyncio.sleep(0)  # each write has run up to its queued call
    await memory.close()
    assert all(len(w.result()) == 2 for w in writes)
    async with Memory(config=config, extractor=RecordingExtractor()) as again:
        for i in range(3 * SENDS_PER_TURN):
            assert [m.content for m in await again.buffer(f"user-{i}")] == [f"hello {i}", "hi"]
