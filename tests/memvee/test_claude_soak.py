"""A soak of the REAL extraction path: users at once writing exchanges, processed
automatically in small batches through :class:`ClaudeExtractor`, the ``anthropic`` client
and the stand-in Messages API on 127.0.0.1, which answers each request from a seeded
random menu of the API's passing misbehaviours (rate limits, overloads, 5xx, resets, slow
and truncated answers, tool input that is empty, off-schema or refused, an over-long
prompt) and refuses every request holding a poison message. The Memory is closed and
opened again between phases, its actors passivated all along; a calm phase with the
faults off ends it.

Whatever the mix: every acknowledged message is covered by exactly one extraction or
quarantined with its error, only poison is quarantined, no task stays open, no user is
wedged, the live projections equal a rebuild, every failure a caller sees is typed, and
the API key shows in no log record.

A passing fault passes: no message meets more than ``MAX_ATTEMPTS - 1`` of them, since a
message failing alone ``MAX_ATTEMPTS`` times is quarantined by design, whatever the cause.
The over-long prompt is no exception: a lone message weighing more than the fixed prompt
(some are long enough to take that path) may meet it up to ``MAX_ATTEMPTS - 1`` times, and
is still never quarantined, as a refusal for size is one attempt, never a quarantine.
The body size limit is no such fault: a request over it is refused every time. The seed
fixes the draws and the callers' choices, not the interleaving, so what is asserted holds
whatever order the requests come in; no assertion is about time.

``make soak`` runs it longer, seed after seed (``MEMVEE_CLAUDE_SOAK_SECONDS`` per chaos
phase, ``MEMVEE_CLAUDE_SOAK_SEED``); ``make test`` runs one short round on each backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from memvee import Memory, MemveeError
from memvee.extractors import ClaudeExtractor
from tests.support.coverage import checked_coverage
from tests.support.messages_api_server import (
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    default_answer,
    empty_body,
    error_body,
    refusal_body,
    tool_use_body,
    truncated_tool_body,
)
from tests.support.soak_config import soak_config
from tests.support.verification import differences

SECONDS = float(os.environ.get("MEMVEE_CLAUDE_SOAK_SECONDS", "1.5"))
"""How long each chaos phase runs (at least; it runs on until some faults were served)."""
SEED = int(os.environ.get("MEMVEE_CLAUDE_SOAK_SEED", "0"))
USERS = 8
CHAOS_PHASES = 2
POISON = "poison"
REFUSED = "the stand-in refuses every request holding poison"
API_KEY = "sk-ant-soak-KEY-THAT-MUST-NEVER-BE-LOGGED-0123456789"
FAULT_RATE = 0.3
SIZE_FAULT = "prompt is too long"
"""The passing refusal for size, met by a message once at most."""
MAX_ATTEMPTS = 3
FAULT_BUDGET = MAX_ATTEMPTS - 1
"""How many faulted requests may hold one message: a passing fault passes, so no healthy
message ever fails alone ``MAX_ATTEMPTS`` times because of the chaos alone."""
TIMEOUT = 1.0
"""The client's timeout; the slow answer comes later than that."""
PADDING = " and then some more" * 100
"""Makes a message long, its batch nearer the stand-in's size limit."""
LONG = " and then some more" * 350
"""Makes a message weigh more than the fixed prompt (the system prompt and the tool, some
6,000 bytes): a refusal for size of it alone may tell it too large for any request, so a
passing one must not. Alone (no entry shown) its request is within the stand-in's size
limit; beside another such message, or many entries, it is not."""
MAX_REQUEST_BYTES = 16_000


def _error(status: int, kind: str, **headers: str) -> Callable[[RecordedRequest], ScriptedResponse]:
    return lambda r: ScriptedResponse(status, error_body(kind, f"chaos {status}"), headers)


def _body(make: Callable[[], dict[str, object]]) -> Callable[[RecordedRequest], ScriptedResponse]:
    return lambda r: ScriptedResponse(body=make())


MENU: dict[str, Callable[[RecordedRequest], ScriptedResponse]] = {
    "429 with retry-after": _error(429, "rate_limit_error", **{"retry-after-ms": "5"}),
    "529": _error(529, "overloaded_error", **{"retry-after-ms": "5"}),
    "500": _error(500, "api_error"),
    "502": _error(502, "api_error"),
    "503": _error(503, "api_error"),
    "reset mid-answer": lambda r: ScriptedResponse(body=tool_use_body([]), truncate_at=30),
    "reset": lambda r: ScriptedResponse(reset=True),
    "slower than the timeout": lambda r: ScriptedResponse(
        body=tool_use_body([]), delay=TIMEOUT * 1.5
    ),
    "empty tool input": _body(lambda: truncated_tool_body({})),
    "truncated tool input": _body(lambda: truncated_tool_body({"facts": "User sa"})),
    "off-schema tool input": _body(lambda: tool_use_body("not a list of facts")),
    "no content": _body(empty_body),
    "refusal": _body(refusal_body),
    SIZE_FAULT: lambda r: ScriptedResponse(
        400, error_body("invalid_request_error", "prompt is too long: 9999 tokens > 9000 maximum")
    ),
}
"""The API's misbehaviours that pass: a later request may well be answered."""


class Chaos:
    """The stand-in's responder: poison is refused (400) every time; with ``rate`` any
    other request gets a fault drawn from :data:`MENU`, unless one of its messages met
    :data:`FAULT_BUDGET` faults already (the over-long prompt as any other); else
    the default answer, citing every message. A :data:`LONG` message alone always draws
    :data:`SIZE_FAULT`, so that the path of a lone message outweighing its request meets
    it."""

    def __init__(self, seed: int, rate: float) -> None:
        self.rate = rate
        self.served: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._faults_met: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        contents = [str(m.get("content")) for m in request.messages]
        if any(POISON in c for c in contents):
            with self._lock:
                self.served["poison refused"] += 1
            return ScriptedResponse(400, error_body("invalid_request_error", REFUSED))
        with self._lock:
            roll, kind = self._random.random(), self._random.choice(list(MENU))
            probe = contents == ["Hello."]  # a harmless request: never a message's budget
            if len(contents) == 1 and LONG in contents[0]:
                kind = SIZE_FAULT  # the fault its size invites, for the path it takes alone
            spent = any(self._faults_met[c] >= FAULT_BUDGET for c in contents)
            if roll >= self.rate or (spent and not probe):
                return default_answer(request)
            if not probe:
                self._faults_met.update(contents)
            if kind == SIZE_FAULT and len(contents) == 1 and LONG in contents[0]:
                self.served["its over-long prompt, to a long message alone"] += 1
            self.served[kind] += 1
        return MENU[kind](request)


@dataclass
class Ledger:
    """What the callers were told: the messages acknowledged to each user, which of them
    were poison, and any failure that was not one of memvee's typed errors."""

    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    poison: set[str] = field(default_factory=set)
    untyped: list[BaseException] = field(default_factory=list)


class KeyWatch(logging.Handler):
    """Formats every log record (its traceback too) and keeps those showing the key."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        text = self.format(record)
        if API_KEY in text or API_KEY[-20:] in text:
            self.leaks.append(text)


@pytest.fixture
def key_watch() -> Iterator[KeyWatch]:
    watch = KeyWatch()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        root.setLevel(level)


def _memory(db_url: str) -> Memory:
    extractor = ClaudeExtractor(timeout=TIMEOUT, max_retries=1)
    return Memory(
        config=soak_config(db_url, max_attempts=MAX_ATTEMPTS, extraction_timeout=20),
        extractor=extractor,
        embedder=False,
    )


async def _caller(
    memory: Memory, user: str, rnd: random.Random, ledger: Ledger, stop: asyncio.Event
) -> None:
    """One user's agent: mostly exchanges (some long, some poison), now and then an
    explicit run, a search, a requeue of what is quarantined, a look at its tasks."""
    turn = len(ledger.acknowledged.get(user, ()))
    while not stop.is_set():
        roll = rnd.random()
        try:
            if roll < 0.6:
                turn += 1
                poison = rnd.random() < 0.05
                said = f"{user} turn {turn}: I live in Lisbon" + (f" {POISON}" if poison else "")
                length = rnd.random()
                said += PADDING if length < 0.15 else LONG if length < 0.22 else ""
                stored = await memory.add_exchange(user, said, f"{user} noted {turn}")
                ledger.acknowledged.setdefault(user, []).extend(m.message_id for m in stored)
                if poison:
                    ledger.poison.add(stored[0].message_id)
            elif roll < 0.68:
                await memory.process(user)
            elif roll < 0.74:
                await memory.retrieve(user, "where do I live")
            elif roll < 0.78:
                # Poison only: a healthy message requeued would hide its wrongful quarantine.
                held = [q.message_id for q in await memory.quarantined(user)]
                poison = [m for m in held if m in ledger.poison]
                if poison:
                    await memory.requeue(user, [rnd.choice(poison)])
            elif roll < 0.85:
                await memory.buffer(user)
                await memory.tasks(user)
            else:
                await asyncio.sleep(rnd.random() * 0.02)
        except MemveeError:
            pass  # a typed failure the caller can act on
        except Exception as error:
            ledger.untyped.append(error)


async def _chaos_phase(db_url: str, seed: int, chaos: Chaos, ledger: Ledger) -> None:
    """The users at work for :data:`SECONDS` (on, until some faults were served), then
    the Memory closed with whatever is in flight."""
    rnd = random.Random(seed)
    served_before = sum(chaos.served.values())
    memory = _memory(db_url)
    await memory.open()
    try:
        stop = asyncio.Event()
        callers = [
            asyncio.create_task(
                _caller(memory, f"user-{i}", random.Random(rnd.random()), ledger, stop)
            )
            for i in range(USERS)
        ]
        await asyncio.sleep(SECONDS)
        deadline = asyncio.get_running_loop().time() + 60
        while sum(chaos.served.values()) - served_before < 10:
            assert asyncio.get_running_loop().time() < deadline, "the chaos served no faults"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*callers)
    finally:
        await memory.close()


async def _flush_until_settled(memory: Memory, user: str) -> None:
    """Flush the user until only quarantined messages wait (poison needs a few runs: a
    batch refused is split, a lone message refused again is quarantined)."""
    for _ in range(10):
        if not await memory.buffer(user):
            return
        with contextlib.suppress(MemveeError):  # poison met: the next flush splits on
            await memory.flush(user)
        await memory.wait_for_processing(user, timeout=30)
    raise AssertionError(f"{user}: messages stay buffered: {await memory.buffer(user)}")


async def test_the_apis_misbehaviours_mixed_at_random_lose_repeat_wedge_or_leak_nothing(
    db_url: str, monkeypatch: pytest.MonkeyPatch, key_watch: KeyWatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    chaos = Chaos(SEED, FAULT_RATE)
    ledger = Ledger()
    with MessagesAPIServer(chaos, max_request_bytes=MAX_REQUEST_BYTES) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        for phase in range(CHAOS_PHASES):
            await _chaos_phase(db_url, SEED * CHAOS_PHASES + phase, chaos, ledger)
        assert not ledger.untyped, f"untyped failures reached callers: {ledger.untyped[:3]}"
        assert sum(map(len, ledger.acknowledged.values())) > 0

        chaos.rate = 0.0  # the calm phase
        memory = _memory(db_url)
        await memory.open()
        try:
            for user, acknowledged in sorted(ledger.acknowledged.items()):
                stored = {m.message_id: m for m in await memory.messages(user)}
                lost = [m for m in acknowledged if m not in stored]
                assert not lost, f"{user}: acknowledged messages lost: {lost}"
                await _flush_until_settled(memory, user)
                fresh, _ = await memory.add_exchange(user, f"{user} calm: I moved to Porto", "ok")
                await memory.flush(user)
                assert not await memory.buffer(user), f"{user}: wedged"
                assert all(t.done for t in await memory.tasks(user)), f"{user}: a task stays open"
                coverage = checked_coverage(memory, user)  # none covered twice
                assert not coverage.buffered, f"{user}: left uncovered: {coverage.buffered}"
                assert fresh.message_id in coverage.covered, f"{user}: wedged"
                poison = {m for m in acknowledged if m in ledger.poison}
                healthy = set(coverage.quarantined) - poison
                wrongly = {stored.get(m, m): coverage.quarantined[m] for m in healthy}
                assert not healthy, f"{user}: healthy messages quarantined: {wrongly}"
                assert set(coverage.quarantined) == poison, f"{user}: poison was covered"
                for error in coverage.quarantined.values():
                    assert REFUSED in error and API_KEY not in error
        finally:
            await memory.close()
        served = dict(chaos.served)
        print(f"seed {SEED}: {len(server.requests)} requests; served {served}")
        print(f"log records: {key_watch.records}")

    assert differences(db_url) == []
    assert not key_watch.leaks, f"the API key in a log record: {key_watch.leaks[:2]}"
