"""A soak of the whole Memory: users at once writing, processing through a flaky and
poisoned extractor, retrieving, requeueing and forgetting, with actors passivated and the
Memory closed and opened again between phases, now and then a caller giving up on a call,
and now and then the database failing every write and log read for a few milliseconds.

Whatever the interleaving: no acknowledged message is lost, every failure a caller sees is
typed, only a message that failed is quarantined, no message is covered twice or left where
no run will cover it, no task stays open, and the live projections equal a rebuild.

``make soak`` runs it longer, seed after seed (``MEMVEE_SOAK_SECONDS`` per phase,
``MEMVEE_SOAK_SEED``); ``make test`` runs one short round on each backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from memvee import Memory, MemveeError
from tests.support.coverage import checked_coverage
from tests.support.extractors import FlakyExtractor
from tests.support.soak_config import soak_config
from tests.support.store_faults import StoreOutage
from tests.support.verification import differences

SECONDS = float(os.environ.get("MEMVEE_SOAK_SECONDS", "1.5"))
"""How long each phase runs."""
SEED = int(os.environ.get("MEMVEE_SOAK_SEED", "0"))
USERS = 12
PHASES = 3
POISON = "poison"
T = TypeVar("T")


@dataclass
class Ledger:
    """What the callers were told: the messages acknowledged to each user since their last
    forget, and any failure that was not one of memvee's typed errors."""

    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    untyped: list[BaseException] = field(default_factory=list)


async def _caller(
    memory: Memory, user: str, rnd: random.Random, ledger: Ledger, stop: asyncio.Event
) -> None:
    """One user's agent: a random mix of the API's calls, one at a time; one in ten
    waits a few milliseconds at most and gives up (the call is cancelled)."""
    turn = 0
    while not stop.is_set():
        roll = rnd.random()
        patience = rnd.random() * 0.003 if rnd.random() < 0.1 else None
        try:
            if roll < 0.55:
                turn += 1
                said = f"turn {turn}: I live in Lisbon" + (
                    f" {POISON}" if rnd.random() < 0.05 else ""
                )
                stored = await _within(patience, memory.add_exchange(user, said, f"noted {turn}"))
                ledger.acknowledged.setdefault(user, []).extend(m.message_id for m in stored)
            elif roll < 0.65:
                await _within(patience, memory.process(user))
            elif roll < 0.72:
                await _within(patience, memory.retrieve(user, "where do I live"))
            elif roll < 0.74:
                # Given up on, it may still happen: what was acknowledged may go with it.
                ledger.acknowledged.pop(user, None)
                await _within(patience, memory.forget(user))
            elif roll < 0.80:
                held = await memory.quarantined(user)
                if held:
                    chosen = rnd.sample(held, rnd.randint(1, len(held)))
                    await _within(patience, memory.requeue(user, [q.message_id for q in chosen]))
            elif roll < 0.88:
                await memory.buffer(user)
                await memory.tasks(user)
            else:
                await asyncio.sleep(rnd.random() * 0.01)
        except (MemveeError, TimeoutError):
            pass  # a typed failure the caller can act on, or a call it gave up on
        except Exception as error:
            ledger.untyped.append(error)


async def _within(seconds: float | None, call: Awaitable[T]) -> T:
    """``call``, given up on (cancelled, ``TimeoutError``) after ``seconds`` if any."""
    if seconds is None:
        return await call
    return await asyncio.wait_for(call, seconds)


async def _outages(outage: StoreOutage, rnd: random.Random, stop: asyncio.Event) -> None:
    """The database down for 5 to 30 ms every 50 to 300 ms, until ``stop``."""
    while not stop.is_set():
        await asyncio.sleep(rnd.uniform(0.05, 0.3))
        outage.down.set()
        await asyncio.sleep(rnd.uniform(0.005, 0.03))
        outage.down.clear()


async def _phase(db_url: str, seed: int, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    memory = Memory(config=soak_config(db_url), extractor=FlakyExtractor(seed), embedder=False)
    await memory.open()
    assert memory._engine is not None
    outage = StoreOutage(memory._engine.store, monkeypatch)
    try:
        stop = asyncio.Event()
        callers = [
            asyncio.create_task(
                _caller(memory, f"user-{i}", random.Random(rnd.random()), ledger, stop)
            )
            for i in range(USERS)
        ]
        outages = asyncio.create_task(_outages(outage, random.Random(rnd.random()), stop))
        await asyncio.sleep(SECONDS)
        # On a loaded machine the callers may have met no outage yet: run on until they do.
        deadline = asyncio.get_running_loop().time() + 60
        while outage.refused == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*callers, outages)
        assert outage.refused > 0, "the database failed some calls"
    finally:
        outage.down.clear()
        await memory.close()


async def _settle(memory: Memory, user: str) -> None:
    """Process the user until only quarantined messages wait (the extractor no longer
    fails but for poison)."""
    for _ in range(20):
        if not await memory.buffer(user):
            return
        with contextlib.suppress(MemveeError):  # a failed task: the loop tries again
            await memory.process(user)
        await memory.wait_for_processing(user, timeout=30)
    raise AssertionError(f"{user}: messages stay buffered: {await memory.buffer(user)}")


async def test_no_interleaving_of_calls_faults_and_restarts_loses_or_repeats_anything(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger()
    for phase in range(PHASES):
        await _phase(db_url, SEED * PHASES + phase, ledger, monkeypatch)
    assert not ledger.untyped, f"untyped failures reached callers: {ledger.untyped[:3]}"
    assert sum(map(len, ledger.acknowledged.values())) > 0

    extractor = FlakyExtractor(SEED, transient=0.0)
    memory = Memory(config=soak_config(db_url), extractor=extractor, embedder=False)
    await memory.open()
    try:
        for user, acknowledged in sorted(ledger.acknowledged.items()):
            stored = {m.message_id: m for m in await memory.messages(user)}
            lost = [m for m in acknowledged if m not in stored]
            assert not lost, f"{user}: acknowledged messages lost: {lost}"
            await _settle(memory, user)
            assert all(t.done for t in await memory.tasks(user)), f"{user}: a task stays open"
            coverage = checked_coverage(memory, user)  # no message covered twice
            assert not coverage.buffered, f"{user}: left uncovered: {coverage.buffered}"
            # A healthy message is quarantined only when its passing failures were blamed
            # on it: it failed alone, again, while the API answered other calls.
            wrongly = [
                m
                for m, error in coverage.quarantined.items()
                if POISON not in stored[m].content and FlakyExtractor.OUTAGE not in error
            ]
            assert not wrongly, f"{user}: quarantined for no failure of its own: {wrongly}"
    finally:
        await memory.close()

    assert differences(db_url) == []
