"""The fault matrix: every way the Messages API can misbehave, through the real
``anthropic`` client and the stand-in server on 127.0.0.1, once and always, and only for
batches that hold one marked message.

Each case must end with nothing lost: within a bounded number of runs every message is
covered by exactly one KnowledgeExtracted or quarantined with its error, and the marked
message never keeps the messages after it from being extracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from actors import Engine
from events import BatchMessage, ExtractionBatch, KnownEntry
from memvee import Memory, MemoryConfig, ProcessingError, ProcessStatus
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor
from tests.support.coverage import checked_coverage
from tests.support.messages_api_server import (
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    default_answer,
    empty_body,
    error_body,
    estimate_tokens,
    fault_when,
    refusal_body,
    text_body,
    tool_use_body,
    truncated_tool_body,
)
from tests.support.verification import differences

MARK = "MARKED"
EXCHANGES = 6
MAX_RUNS = 8
"""Runs (``process`` calls) within which every message must be covered or quarantined."""
EVIDENCE_ALONE: dict[str, Any] = {
    "breaker_failures": 100,
    "retry_delay": 0.01,
    "retry_delay_max": 0.05,
}
"""Memory settings that keep the breaker closed (as while other users' calls pass) and the
retries quick, so that a message's evidence alone decides whether it is blamed."""


def _error(status: int, kind: str, **headers: str) -> Callable[[RecordedRequest], ScriptedResponse]:
    return lambda r: ScriptedResponse(status, error_body(kind, f"scripted {status}"), headers)


def _body(make: Callable[[RecordedRequest], dict[str, Any]]) -> Callable[..., ScriptedResponse]:
    return lambda r: ScriptedResponse(body=make(r))


def _marked_alias(request: RecordedRequest) -> str:
    return next(m["id"] for m in request.messages if MARK in str(m.get("content")))


def _facts(request: RecordedRequest, marked: dict[str, Any]) -> dict[str, Any]:
    """The default answer, with the marked message's fact replaced by ``marked``."""
    answer = default_answer(request).body
    facts = [
        f
        for f in answer["content"][0]["input"]["facts"]
        if f["source_message_ids"] != [_marked_alias(request)]
    ]
    return tool_use_body([*facts, {"text": "User said something marked.", **marked}])


def _marked_fact(text: str) -> Callable[..., ScriptedResponse]:
    """The default answer, with the marked message's fact saying ``text``."""
    return _body(lambda r: _facts(r, {"source_message_ids": [_marked_alias(r)], "text": text}))


OVERLOADED = "529"
"""The API's load, never a message's fault: a message it always meets is never blamed."""

SLOW = "slower than the timeout"
"""The one fault that needs a short client timeout; any other case gets a long one, so an
answer slowed by a busy machine is never taken for this fault."""


TRANSIENT: dict[str, Callable[[RecordedRequest], ScriptedResponse]] = {
    "429 with retry-after": _error(429, "rate_limit_error", **{"retry-after-ms": "5"}),
    "500": _error(500, "api_error"),
    OVERLOADED: _error(529, "overloaded_error"),
    "connection reset": lambda r: ScriptedResponse(reset=True),
    "truncated body": lambda r: ScriptedResponse(body=tool_use_body([]), truncate_at=40),
    "200, a body that is not JSON": lambda r: ScriptedResponse(
        body=b"{not json", headers={"content-type": "application/json"}
    ),
    "200, a gateway's HTML page": lambda r: ScriptedResponse(body=b"<html>Bad gateway</html>"),
    SLOW: lambda r: ScriptedResponse(body=tool_use_body([]), delay=5.0),
}
"""Faults that may pass: the task fails, the batch waits for a later run."""

REPEATING: dict[str, Callable[[RecordedRequest], ScriptedResponse]] = {
    "off-schema input": _body(lambda r: tool_use_body("not a list of facts")),
    "max_tokens, truncated input": _body(
        lambda r: truncated_tool_body({"facts": [{"text": "User said", "source_message_ids": []}]})
    ),
    "max_tokens, invalid input": _body(lambda r: truncated_tool_body({"facts": "User sa"})),
    "max_tokens, empty input": _body(lambda r: truncated_tool_body({})),
    "plain text": _body(lambda r: text_body("The user said several things.")),
    "empty content": _body(lambda r: empty_body()),
    "refusal": _body(lambda r: refusal_body()),
    "400, an invalid request": _error(400, "invalid_request_error"),
}
"""Faults that would repeat: the batch is split, a lone marked message quarantined."""

SLIGHTLY_OFF: dict[str, Callable[[RecordedRequest], ScriptedResponse]] = {
    "new with a target": _body(
        lambda r: _facts(r, {"source_message_ids": [_marked_alias(r)], "target_entry_id": "k1"})
    ),
    "citing a known entry's id": _body(lambda r: _facts(r, {"source_message_ids": ["k1"]})),
    "citing an id not in the batch": _body(lambda r: _facts(r, {"source_message_ids": ["m99"]})),
    "a NUL in the fact": _marked_fact("User said something \x00marked."),
    "a lone surrogate in the fact": _marked_fact("User said something marked.\ud800"),
}
"""Schema-valid answers that are slightly wrong: repaired, never a failure."""

FAULTS = {**TRANSIENT, **REPEATING, **SLIGHTLY_OFF}


class Faulty:
    """Answers ``fault`` to batches that hold the marked message (only the first such
    batch when ``once``), and the default answer to all others."""

    def __init__(self, fault: Callable[[RecordedRequest], ScriptedResponse], once: bool):
        self.fault = fault
        self.once = once
        self.hits = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        if not any(MARK in str(m.get("content")) for m in request.messages):
            return default_answer(request)
        with self._lock:
            self.hits += 1
            if self.once and self.hits > 1:
                return default_answer(request)
        return self.fault(request)


@pytest.fixture
async def claude_memory(
    tmp_path: Path,
    messages_api_server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Memory]:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_api_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-fault-matrix")
    config = MemoryConfig(
        db_path=str(tmp_path / "faults.db"),
        max_batch_messages=4,
        extraction_timeout=10,
        **QUICK_RETRIES,
    )
    callspec = getattr(request.node, "callspec", None)
    fault = callspec.params.get("fault") if callspec is not None else None
    extractor = ClaudeExtractor(timeout=0.5 if fault == SLOW else 5.0, max_retries=1)
    async with Memory(config=config, extractor=extractor, embedder=False) as memory:
        yield memory


def _is_probe(request: RecordedRequest) -> bool:
    """Whether ``request`` is a probe: a harmless message in place of a batch's."""
    return [m.get("content") for m in request.messages] == ["Hello."]


async def _run_until_settled(memory: Memory, user: str) -> int:
    """Call ``process`` until nothing is buffered; returns how many runs it took."""
    for run in range(1, MAX_RUNS + 1):
        with contextlib.suppress(ProcessingError):
            await memory.process(user)
        if not await memory.buffer(user):
            return run
    raise AssertionError(f"messages still buffered after {MAX_RUNS} runs")


@pytest.mark.parametrize("once", [True, False], ids=["once", "always"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_fault_loses_nothing_and_blocks_nothing(
    claude_memory: Memory, messages_api_server: MessagesAPIServer, fault: str, once: bool
) -> None:
    faulty = Faulty(FAULTS[fault], once)
    messages_api_server.set_responder(faulty)
    ids = []
    for i in range(EXCHANGES):
        said = f"{MARK} I collect stamps" if i == 2 else f"I like thing {i}"
        user_message, reply = await claude_memory.add_exchange("ann", said, f"ok {i}")
        ids += [user_message.message_id, reply.message_id]
    marked = ids[4]
    overloaded_for_good = fault == OVERLOADED and not once
    if overloaded_for_good:  # the API's state, never the message's: it waits it out
        for _ in range(MAX_RUNS):
            with contextlib.suppress(ProcessingError):
                await claude_memory.process("ann")
        assert await claude_memory.quarantined("ann") == []
        assert marked in {m.message_id for m in await claude_memory.buffer("ann")}
        faulty.once = True  # the API recovers

    runs = await _run_until_settled(claude_memory, "ann")

    found = checked_coverage(claude_memory, "ann")
    assert faulty.hits >= 1, "the fault must have been served"
    assert set(found.covered) | set(found.quarantined) == set(ids), "nothing lost"
    quarantined = await claude_memory.quarantined("ann")
    if once or fault in SLIGHTLY_OFF or overloaded_for_good:
        assert quarantined == [] and set(found.covered) == set(ids)
    else:
        assert [q.message_id for q in quarantined] == [marked]
        assert quarantined[0].error and quarantined[0].attempts == 3
        assert set(found.covered) == set(ids) - {marked}, "the messages after it got through"
    if fault in REPEATING:
        assert runs == 1, "a batch that fails the same way is split within the run"
    if fault in SLIGHTLY_OFF:
        knowledge = await claude_memory.knowledge("ann")
        stored = [e.text.replace("\ufffd", "") for e in knowledge]  # a surrogate's mark
        assert "User said something marked." in stored
        assert runs == 1


QUICK_RETRIES: dict[str, Any] = {
    "retry_delay": 0.01,
    "retry_delay_max": 0.05,
    "breaker_cooldown": 0.05,
}
"""A Memory's retry delays and breaker pause short enough that a specification's runs
follow each other at once (the default pause, 2 s, cost every run after the fifth failure
in a row that long)."""


@contextlib.asynccontextmanager
async def _memory_over(
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    extractor: Any = None,
    **config: Any,
) -> AsyncIterator[Memory]:
    """A Memory on a SQLite file at ``path`` whose extractor (by default a ClaudeExtractor
    with no SDK retries) finds ``server`` as a deployment finds the API, through the
    environment."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-faults")
    settings = MemoryConfig(db_path=str(path), **config)
    extractor = extractor or ClaudeExtractor(max_retries=0)
    async with Memory(config=settings, extractor=extractor, embedder=False) as memory:
        yield memory


async def test_a_backlog_goes_out_in_bounded_requests_to_a_server_that_refuses_big_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MessagesAPIServer(max_request_bytes=60_000) as server:
        backlog = tmp_path / "backlog.db"
        async with _memory_over(server, monkeypatch, backlog, extraction_timeout=30) as memory:
            for i in range(600):
                await memory.add_exchange("ann", f"I visited city number {i} this year", "ok")
            assert await memory.process("ann") == 600
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []
            found = checked_coverage(memory, "ann")
            assert len(found.covered) == 1_200
        sizes = [len(r.messages) for r in server.requests]
        assert len(sizes) == 24 and max(sizes) == 50
        biggest = max(len(json.dumps(r.body, separators=(",", ":"))) for r in server.requests)
        assert biggest < 60_000, "no request was refused for its size"


async def test_the_breaker_bounds_requests_from_many_users_while_the_api_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overloaded = ScriptedResponse(529, error_body("overloaded_error", "Overloaded"))
    with MessagesAPIServer(responder=lambda r: overloaded) as server:
        users = [f"user{i:03d}" for i in range(200)]
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "breaker.db",
            auto_process=True,
            batch_threshold=2,
            breaker_cooldown=0.2,
            retry_delay=0.1,
            retry_delay_max=1.0,
        ) as memory:
            for user in users:
                await memory.add_exchange(user, f"I live in town {user}", "ok")
            await asyncio.sleep(1.5)
            during = len(server.requests)
            print(f"requests while the API was down: {during} from {len(users)} users")
            assert during <= 30, f"{during} requests reached an API that was down"
            server.set_responder(default_answer)

            async def everyone_extracted() -> bool:
                for user in users:
                    if await memory.buffer(user) or len(await memory.knowledge(user)) != 1:
                        return False
                return True

            async with asyncio.timeout(60):
                while not await everyone_extracted():
                    await asyncio.sleep(0.1)
            for user in users:
                found = checked_coverage(memory, user)
                assert not found.buffered and not found.quarantined


async def test_a_pause_longer_than_a_batch_may_wait_fails_the_run_at_once_saying_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 asking to wait 600 s opens the breaker for that long: another user's explicit
    run then fails at once, sending nothing and blaming nothing, and says when to retry,
    where it used to hang RUNNING for the whole pause, far past ``extraction_timeout``."""
    limited = ScriptedResponse(
        429, error_body("rate_limit_error", "Rate limited"), {"retry-after": "600"}
    )
    with MessagesAPIServer(responder=lambda r: limited) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "paused.db",
            breaker_failures=1,
            extraction_timeout=30,
            retry_delay=0.01,
            retry_delay_max=0.05,
        ) as memory:
            await memory.add_message("ann", "user", "I like tea.")
            with pytest.raises(ProcessingError, match="retry after 600 s"):
                await memory.process("ann")
            server.set_responder(default_answer)
            await memory.add_message("bob", "user", "I like coffee.")
            async with asyncio.timeout(60):  # far less than the pause
                with pytest.raises(ProcessingError, match=r"breaker is open.*retry after 600 s"):
                    await memory.process("bob")
            assert len(server.requests) == 1
            assert await memory.quarantined("bob") == []
            assert [m.content for m in await memory.buffer("bob")] == ["I like coffee."]


CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
    "Billing to upgrade or purchase credits."
)
"""What the API answers every request with (HTTP 400) once an account runs out of credit."""


async def test_an_account_out_of_credit_blames_no_message_of_a_lone_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user, one message: every batch shares it, so no two refused batches are
    disjoint. The request without the batch's messages, refused too, tells the account
    from the message; it used to be quarantined within one run."""
    refused = ScriptedResponse(400, error_body("invalid_request_error", CREDIT))
    with MessagesAPIServer(responder=lambda r: refused) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "lone.db", **QUICK_RETRIES
        ) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            for _ in range(4):
                with pytest.raises(ProcessingError, match="not the batch"):
                    await memory.process("ann")
            assert await memory.quarantined("ann") == []
            assert [m.content for m in await memory.buffer("ann")] == ["I live in Oslo."]
            server.set_responder(default_answer)
            await _run_until_settled(memory, "ann")
            assert not checked_coverage(memory, "ann").buffered


async def test_an_api_that_refuses_every_batch_blames_no_message_and_is_retried_once_it_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = ScriptedResponse(400, error_body("invalid_request_error", CREDIT))
    with MessagesAPIServer(responder=lambda r: refused) as server:
        users = ["ann", "bob", "cy"]
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "credit.db",
            max_batch_messages=4,
            breaker_cooldown=0.05,
            retry_delay=0.01,
            retry_delay_max=0.05,
        ) as memory:
            for user in users:
                for i in range(EXCHANGES):
                    await memory.add_exchange(user, f"I like thing {i}", f"ok {i}")
            for _ in range(3):
                for user in users:
                    with pytest.raises(ProcessingError, match="credit balance is too low"):
                        await memory.process(user)
            for user in users:
                assert await memory.quarantined(user) == []
                assert len(await memory.buffer(user)) == 2 * EXCHANGES
            # Each run sends its first batch and, refused, the same request without the
            # batch's messages, which is refused too: no batch is split or blamed.
            assert len(server.requests) == 2 * 3 * len(users)
            assert sum(map(_is_probe, server.requests)) == 3 * len(users)
            server.set_responder(default_answer)
            for user in users:
                await _run_until_settled(memory, user)
                found = checked_coverage(memory, user)
                assert len(found.covered) == 2 * EXCHANGES and not found.quarantined


TOO_LARGE = ScriptedResponse(
    413,
    error_body("request_too_large", "Request exceeds the maximum allowed number of bytes."),
)
"""What a gateway whose body limit is below memvee's fixed prompt answers every request."""


async def test_a_gateway_refusing_every_request_as_too_large_blames_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 413 to every request, however small: the request without the batch's messages is
    refused too, so the gateway (or the API) refuses everything, not the batch. No message
    is blamed and all stay buffered, to be extracted once requests go through; every
    message of every user used to be quarantined while ``process`` returned 0."""
    users = ["ann", "bob"]
    with MessagesAPIServer(responder=lambda r: TOO_LARGE) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "gateway.db", **QUICK_RETRIES
        ) as memory:
            for user in users:
                for i in range(3):
                    await memory.add_exchange(user, f"I like thing {i}", f"ok {i}")
            for user in users:
                for _ in range(3):
                    with pytest.raises(ProcessingError, match="refuses requests of any size"):
                        await memory.process(user)
                assert await memory.quarantined(user) == []
                assert len(await memory.buffer(user)) == 6
            # Each run sends its batch and, refused, the same request without its messages.
            assert len(server.requests) == 2 * 3 * len(users)
            assert sum(map(_is_probe, server.requests)) == 3 * len(users)
            server.set_responder(default_answer)
            for user in users:
                await _run_until_settled(memory, user)
                found = checked_coverage(memory, user)
                assert len(found.covered) == 6 and not found.quarantined


async def test_a_model_refusing_every_request_gets_no_message_quarantined_and_all_extracted_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model refuses whatever it is sent (HTTP 200, stop reason "refusal": a policy
    change, a misconfigured model), the harmless request too: that tells nothing against
    any message. Six runs of two users (past the three failures a batch is kept whole)
    quarantine none; every message was quarantined within the first run (split down to
    singletons, each refused alone). Once the model answers, all are extracted."""
    users = ["ann", "bob"]
    refusing = _Outage(_body(lambda r: refusal_body()))
    with MessagesAPIServer(responder=refusing) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "refusing.db",
            max_batch_messages=4,
            **QUICK_RETRIES,
        ) as memory:
            for user in users:
                for i in range(EXCHANGES):
                    await memory.add_exchange(user, f"I like thing {i}", f"ok {i}")
            for _ in range(6):
                for user in users:
                    with pytest.raises(ProcessingError, match="the model refuses every request"):
                        await memory.process(user)
            for user in users:
                assert await memory.quarantined(user) == []
                assert len(await memory.buffer(user)) == 2 * EXCHANGES
            refusing.down = False
            for user in users:
                await _run_until_settled(memory, user)
                found = checked_coverage(memory, user)
                assert len(found.covered) == 2 * EXCHANGES and not found.quarantined


async def test_a_lone_message_too_large_for_the_gateway_is_still_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same request without the message is accepted: the message's own size is at
    fault, and it is quarantined as before, the others extracted."""
    with MessagesAPIServer(responder=fault_when(MARK, TOO_LARGE)) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "big.db", max_attempts=1) as memory:
            await memory.add_message("ann", "user", f"{MARK} a very long story")
            await memory.add_message("ann", "user", "I live in Oslo.")
            await _run_until_settled(memory, "ann")
            [quarantined] = await memory.quarantined("ann")
            assert "413" in quarantined.error
            assert len(checked_coverage(memory, "ann").covered) == 1


async def test_a_gateways_password_in_the_base_url_never_shows_in_errors_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``ANTHROPIC_BASE_URL=http://admin:password@gateway``: a gateway that echoes the
    password (as written in the URL, or decoded) gets it redacted from the quarantine
    error stored in the log and from the warnings, as an API key is; it used to show."""
    password = "hunter2 pass@word"
    echoed = f"upstream auth admin:hunter2%20pass%40word failed ({password})"
    refused = ScriptedResponse(400, error_body("invalid_request_error", echoed))
    with MessagesAPIServer(responder=fault_when(MARK, refused)) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "pw.db", max_attempts=1) as memory:
            gateway = server.base_url.replace("://", "://admin:hunter2%20pass%40word@")
            monkeypatch.setenv("ANTHROPIC_BASE_URL", gateway)
            await memory.add_message("ann", "user", f"{MARK} something")
            with caplog.at_level(logging.WARNING):
                await memory.process("ann")
            [quarantined] = await memory.quarantined("ann")
    assert "upstream auth [redacted] failed ([redacted])" in quarantined.error
    shown = quarantined.error + caplog.text
    assert "hunter2" not in shown and "pass%40word" not in shown


BLOCKED = "Output blocked by content filtering policy"
"""What the API answers (HTTP 400) a request whose messages its filter blocks."""


async def test_messages_refused_alike_for_user_after_user_are_each_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users processed in turn, each with one message the API refuses with the same text
    while it accepts the request without it: each message is quarantined in its user's
    run. Each refusal, following another user's with no batch accepted in between, used
    to be taken for a refusal of every batch: only the first user's was ever blamed."""
    refused = ScriptedResponse(400, error_body("invalid_request_error", BLOCKED))
    with MessagesAPIServer(responder=fault_when(MARK, refused)) as server:
        users = ["ann", "bob", "cy"]
        async with _memory_over(
            server, monkeypatch, tmp_path / "blocked.db", max_attempts=1
        ) as memory:
            for user in users:
                await memory.add_message(user, "user", f"{MARK} something {user} said")
            for user in users:
                await memory.process(user)
                [quarantined] = await memory.quarantined(user)
                assert BLOCKED in quarantined.error
                assert not checked_coverage(memory, user).buffered
            # Each user's batch, refused, and the same request without it, accepted.
            assert len(server.requests) == 2 * len(users)
            assert sum(map(_is_probe, server.requests)) == len(users)


async def test_a_refusal_a_known_entry_causes_blames_no_message_and_memory_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API refuses every request whose prompt shows one of the user's entries (a
    stored fact its filter blocks). The probe used to replace the known entries with the
    batch's messages, was accepted, and each new, healthy message was quarantined; now
    the batch is extracted without the entries and nothing is blamed."""
    refused = ScriptedResponse(400, error_body("invalid_request_error", BLOCKED))

    def respond(request: RecordedRequest) -> ScriptedResponse:
        if any(MARK in str(entry.get("text")) for entry in request.known):
            return refused
        return default_answer(request)

    with MessagesAPIServer() as server:
        async with _memory_over(server, monkeypatch, tmp_path / "known.db") as memory:
            await memory.add_message("eve", "user", f"I once said {MARK} words")
            await memory.process("eve")
            server.set_responder(respond)
            healthy = [f"I like healthy thing {i}" for i in range(4)]
            for text in healthy:
                await memory.add_message("eve", "user", text)
            await memory.process("eve")

            assert await memory.quarantined("eve") == []
            found = checked_coverage(memory, "eve")
            assert not found.buffered and not found.quarantined
            known = [entry.text for entry in await memory.knowledge("eve")]
            assert all(any(text in entry for entry in known) for text in healthy)
            # The refused batch, the probe with its entries (refused), the probe
            # without them (accepted), the batch without them.
            assert len(server.requests) == 1 + 4 and sum(map(_is_probe, server.requests)) == 2


async def test_automatic_runs_wait_as_long_as_a_rate_limit_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 asking to retry after 30 s: the user's next automatic run waits for it,
    though the backoff alone (10 ms, doubling) would have called a few times a second."""
    limited = ScriptedResponse(
        429, error_body("rate_limit_error", "rate limited"), headers={"retry-after": "30"}
    )
    with MessagesAPIServer(responder=lambda r: limited) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "limited.db",
            auto_process=True,
            batch_threshold=2,
            retry_delay=0.01,
            retry_delay_max=0.05,
        ) as memory:
            await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
            async with asyncio.timeout(30):
                while not server.requests:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            assert len(server.requests) == 1
            assert len(await memory.buffer("ann")) == 2


async def test_an_overloaded_api_never_gets_a_message_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overloaded each time ann's lone message is sent, while bob's calls go through in
    between: the API's load, not the message, so it stays buffered (it was blamed and
    quarantined on the fourth run) and is extracted once the API is free."""
    busy_runs = 4
    sent: list[int] = []

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if any("Oslo" in str(m.get("content")) for m in request.messages):
            sent.append(1)
            if len(sent) <= busy_runs:
                return ScriptedResponse(
                    529, error_body("overloaded_error", "Overloaded"), {"retry-after-ms": "1"}
                )
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        db = tmp_path / "overloaded.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            await _ann_fails_while_bob_is_answered(memory, busy_runs, "HTTP 529")
            assert await memory.process("ann") == 1
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []


async def _ann_fails_while_bob_is_answered(memory: Memory, runs: int, error: str) -> None:
    """Process ann ``runs`` times, each failing with ``error``, with one of bob's messages
    answered after each run: evidence that the API works, and ann's message is still
    never quarantined."""
    for run in range(runs):
        with pytest.raises(ProcessingError, match=error):
            await memory.process("ann")
        await memory.add_message("bob", "user", f"I like thing {run}.")
        assert await memory.process("bob") == 1
        assert await memory.quarantined("ann") == []


async def test_a_refusal_whose_probe_fails_never_gets_a_healthy_message_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann has a stored entry the API's filter refuses whenever it is shown, so the batch
    of her healthy new message is refused (400), and each probe sent to tell whose fault
    that is fails (a 500; a 529 alike) while bob's calls are answered in between. A probe
    that fails tells nothing of the message: it stays buffered (it was blamed and
    quarantined by the fourth run) and is extracted once the probes are answered."""
    busy = True

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if [m.get("content") for m in request.messages] == ["Hello."] and busy:
            return ScriptedResponse(500, error_body("api_error", "busy"))
        if any(MARK in str(k.get("text")) for k in request.known):
            return ScriptedResponse(400, error_body("invalid_request_error", "Output blocked"))
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        db = tmp_path / "probe-busy.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            await memory.add_message("ann", "user", f"My cat is {MARK}.")
            assert await memory.process("ann") == 1
            await memory.add_message("ann", "user", "My cat is called Miso.")
            await _ann_fails_while_bob_is_answered(memory, 4, "probing whose fault it is failed")
            busy = False
            assert await memory.process("ann") == 1
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []


def _probe_resets_and_marked_refused(request: RecordedRequest) -> ScriptedResponse:
    """The model refuses every batch holding the marked message; each probe of whose fault
    that is (the batch's request, a harmless message in its place) meets a connection
    reset; the workers' one-token harmless request and every other batch are answered."""
    if [m.get("content") for m in request.messages] == ["Hello."]:
        if request.body.get("max_tokens") != 1:
            return ScriptedResponse(reset=True)
        return default_answer(request)
    if any(MARK in str(m.get("content")) for m in request.messages):
        return ScriptedResponse(body=refusal_body())
    return default_answer(request)


async def test_a_lone_refused_message_whose_probe_keeps_failing_is_quarantined_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each probe of the refusal fails, but the harmless request sent after it is
    accepted: the API answers, and accepts a request without the batch's messages, so the
    refusal is the batch's own. The lone message is quarantined, saying why, and the
    messages after it are extracted; it used to stay buffered, every run failing on it."""
    with MessagesAPIServer(responder=_probe_resets_and_marked_refused) as server:
        db = tmp_path / "probe-reset.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            await memory.add_message("ann", "user", f"{MARK} I collect stamps")
            for i in range(3):
                await memory.add_message("ann", "user", f"I like thing {i}")
            runs = await _run_until_settled(memory, "ann")
            await memory.add_message("ann", "user", "I live in Oslo.")
            assert await memory.process("ann") == 1, "a later message is extracted"
            [quarantined] = await memory.quarantined("ann")
            found = checked_coverage(memory, "ann")
    assert MARK in quarantined.content
    assert "refused" in quarantined.error and "harmless request was accepted" in quarantined.error
    assert quarantined.attempts == 3
    assert len(found.covered) == 4 and not found.buffered
    assert runs <= 3


def _entry_refused_and_its_probe_fails(request: RecordedRequest) -> ScriptedResponse:
    """A content filter refuses every request showing the known entry marked ``MARK``; the
    probe of whose fault that is (a harmless message, the entry still shown) meets a 500;
    every request without the entry is answered (the workers' harmless request too)."""
    if not any(MARK in str(entry.get("text")) for entry in request.known):
        return default_answer(request)
    if [m.get("content") for m in request.messages] == ["Hello."]:
        return ScriptedResponse(500, error_body("api_error", "Internal server error"))
    return ScriptedResponse(body=refusal_body())


async def test_a_message_refused_for_a_known_entry_shown_beside_it_is_extracted_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API refuses ann's new message only for an entry of hers shown beside it, and the
    probe that would tell so fails; a harmless request is then accepted. The message is
    extracted once more without the entries, in the same run, not quarantined: the
    harmless request, showing neither, could not tell the message from the entry."""
    with MessagesAPIServer(responder=default_answer) as server:
        db = tmp_path / "entry-refused.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            await memory.add_message("ann", "user", f"I live in Oslo {MARK}")
            assert await memory.process("ann") == 1
            server.set_responder(_entry_refused_and_its_probe_fails)
            await memory.add_message("ann", "user", "I work at the harbour office")
            runs = await _run_until_settled(memory, "ann")
            quarantined = await memory.quarantined("ann")
            known = [entry.text for entry in await memory.knowledge("ann")]
            found = checked_coverage(memory, "ann")
    assert quarantined == [] and runs == 1
    assert any("harbour" in text for text in known), known
    assert len(found.covered) == 2 and not found.buffered
    retried = [r for r in server.requests if "harbour" in str(r.messages) and not r.known]
    assert len(retried) == 1, "extracted once more without the entries"


async def test_a_run_that_failed_transiently_is_retried_by_the_background_after_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An automatic run extracts its first batch, then meets a 429 asking to wait 30 s,
    leaving two messages buffered (fewer than the threshold); the Memory closes before
    the retry is due. Reopened, the background retries them by itself: nothing used to
    until the user's next message or an explicit run."""
    limited = ScriptedResponse(
        429, error_body("rate_limit_error", "Rate limited"), {"retry-after": "30"}
    )
    answered: list[RecordedRequest] = []

    def first_batch_only(request: RecordedRequest) -> ScriptedResponse:
        if answered:
            return limited
        answered.append(request)
        return default_answer(request)

    settings: dict[str, Any] = {
        "auto_process": True,
        "batch_threshold": 4,
        "max_batch_messages": 2,
    }
    db = tmp_path / "reopened.db"
    with MessagesAPIServer(responder=first_batch_only) as server:
        async with _memory_over(server, monkeypatch, db, **settings) as memory:
            for i in range(2):
                await memory.add_exchange("ann", f"I like thing {i}", f"ok {i}")
            with contextlib.suppress(ProcessingError):
                await memory.wait_for_processing("ann", timeout=30)
            assert len(await memory.buffer("ann")) == 2
        server.set_responder(default_answer)
        async with _memory_over(server, monkeypatch, db, **settings) as memory:
            async with asyncio.timeout(10):  # far less than the 30 s the 429 asked
                while await memory.buffer("ann"):
                    await asyncio.sleep(0.05)
            found = checked_coverage(memory, "ann")
    assert len(found.covered) == 4 and not found.quarantined


_REFUSED_KEY = ScriptedResponse(401, error_body("authentication_error", "invalid x-api-key"))
_REFUSED_SETTINGS: dict[str, Any] = {"auto_process": True, "batch_threshold": 10}


async def _runs_refused_for_the_key(
    server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, db: Path, users: list[str]
) -> int:
    """Each of ``users`` says one exchange, fewer messages than the threshold, and their
    runs fail on the key ``server`` refuses; returns how many requests each run sent."""
    server.set_responder(lambda _: _REFUSED_KEY)
    async with _memory_over(server, monkeypatch, db, **_REFUSED_SETTINGS) as memory:
        for user in users:
            await memory.add_exchange(user, f"{user} lives in Oslo.", "Nice.")
            with pytest.raises(ProcessingError):
                await memory.process(user)
    return len(server.requests) // len(users)


async def test_a_reopen_with_the_key_still_refused_spends_one_run_not_one_per_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request is refused for its API key (401), so five users' runs fail, their
    messages buffered, fewer than the threshold. Reopened, with the key still refused,
    the background retries one user, the probe of the key, and no other: waiting does not
    make that failure pass, and each reopen used to spend two requests per user on it. The
    others wait for a run showing the key works: a user's next run, once it is fixed."""
    users = [f"u{n}" for n in range(5)]
    db = tmp_path / "refused-key.db"
    with MessagesAPIServer() as server:
        per_run = await _runs_refused_for_the_key(server, monkeypatch, db, users)
        sent = len(server.requests)
        async with _memory_over(server, monkeypatch, db, **_REFUSED_SETTINGS) as memory:
            for user in users:
                with contextlib.suppress(ProcessingError):
                    await memory.wait_for_processing(user, timeout=10)
            await _until(lambda: len(memory._engine.key_probe.owed) == len(users))
            assert 0 < len(server.requests) - sent <= per_run, "one probe of the key"
            assert all([await memory.buffer(user) for user in users])
            probed = len(server.requests)
            with pytest.raises(ProcessingError):
                await memory.process("u0")
            assert len(server.requests) > probed
            server.set_responder(default_answer)
            await memory.process("u0")
            await _until_extracted(memory, users)


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Return once ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def _until_extracted(memory: Memory, users: list[str], timeout: float = 30) -> None:
    """Return once no message of ``users`` waits, each run ended; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while any([await memory.buffer(user) for user in users]):
        assert asyncio.get_running_loop().time() < deadline, "messages left waiting"
        await asyncio.sleep(0.05)
    for user in users:
        await memory.wait_for_processing(user, timeout=timeout)


async def test_users_whose_runs_a_key_refused_are_retried_at_the_reopen_after_it_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five users' runs failed on a refused key, their messages buffered, fewer than the
    threshold. The key fixed, a reopen extracts every user's waiting messages with no new
    message: one user's run probes the key first, then the others run; they used to wait
    for the threshold."""
    users = [f"u{n}" for n in range(5)]
    db = tmp_path / "fixed-key.db"
    with MessagesAPIServer() as server:
        await _runs_refused_for_the_key(server, monkeypatch, db, users)
        server.set_responder(default_answer)
        async with _memory_over(server, monkeypatch, db, **_REFUSED_SETTINGS) as memory:
            deadline = asyncio.get_running_loop().time() + 30
            while any([await memory.buffer(user) for user in users]):
                assert asyncio.get_running_loop().time() < deadline, "messages left waiting"
                await asyncio.sleep(0.05)
            for user in users:
                await memory.wait_for_processing(user, timeout=30)
                assert len(checked_coverage(memory, user).covered) == 2


async def test_users_refused_are_retried_once_the_probes_run_passes_after_failing_on_an_overload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key fixed, the API overloaded at the reopen (529 to the probe's request and to
    the harmless one judging it): the background retries the probe's user under a new
    task, accepted, and the others are then retried too, with no new message; they used
    to wait for the threshold, the probe's own task having failed."""
    users = [f"u{n}" for n in range(5)]
    db = tmp_path / "overloaded-at-reopen.db"
    with MessagesAPIServer() as server:
        await _runs_refused_for_the_key(server, monkeypatch, db, users)
        overloads = [ScriptedResponse(529, error_body("overloaded_error", "Overloaded"))] * 2

        def overloaded_first(request: RecordedRequest) -> ScriptedResponse:
            return overloads.pop() if overloads else default_answer(request)

        server.set_responder(overloaded_first)
        settings = {**_REFUSED_SETTINGS, "retry_delay": 0.05, "retry_delay_max": 0.1}
        async with _memory_over(server, monkeypatch, db, **settings) as memory:
            await _until_extracted(memory, users)
            for user in users:
                assert len(checked_coverage(memory, user).covered) == 2


async def test_users_refused_are_retried_once_a_request_a_crash_left_runs_for_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four users' runs refused on the key, two messages each waiting; "big" passed the
    threshold while backing off, so its automatic request was stored, and the process died
    with it waiting. The key fixed, a reopen probes "big" (the most waiting): its stored
    request runs, accepted, and the others are retried; the probe's own request, never
    recorded beside the stored one, used to be the only run they waited for."""
    from actors.user_actor import UserActor

    users = [f"u{n}" for n in range(4)]
    db = tmp_path / "crashed-with-a-request.db"
    with MessagesAPIServer() as server:
        server.set_responder(lambda _: _REFUSED_KEY)
        with monkeypatch.context() as crash:  # no shutdown ends the stored request
            crash.setattr(UserActor, "shutdown", lambda actor, reason: None)
            async with _memory_over(
                server, monkeypatch, db, retry_delay=30, shutdown_grace=0.1, **_REFUSED_SETTINGS
            ) as memory:
                for user in [*users, "big"]:
                    await memory.add_exchange(user, f"{user} lives in Oslo.", "Nice.")
                    with pytest.raises(ProcessingError):
                        await memory.process(user)
                for i in range(5):
                    await memory.add_exchange("big", f"I keep fact {i} in mind.", "ok")
                async with asyncio.timeout(10):
                    while not [t for t in await memory.tasks("big") if t.trigger == "auto"]:
                        await asyncio.sleep(0.02)
        server.set_responder(default_answer)
        async with _memory_over(server, monkeypatch, db, **_REFUSED_SETTINGS) as memory:
            await _until_extracted(memory, [*users, "big"])


async def test_users_a_retry_finds_refused_again_stay_owed_to_the_next_accepted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five users' runs refused on the key; a reopen, the key still refused, holds them.
    The key fixed, u0's run is accepted, but another run is refused before the others'
    retry recovers them (the key is refused again for the engine): the retry holds them
    again, and they stay owed, retried at the next accepted run; they used to be dropped
    and wait for the threshold."""
    from actors.engine import Engine

    users = [f"u{n}" for n in range(5)]
    db = tmp_path / "refused-again.db"
    with MessagesAPIServer() as server:
        await _runs_refused_for_the_key(server, monkeypatch, db, users)
        async with _memory_over(server, monkeypatch, db, **_REFUSED_SETTINGS) as memory:
            engine = memory._engine
            await _until(lambda: len(engine.key_probe.owed) == len(users))
            server.set_responder(default_answer)
            retry_refused = Engine._retry_refused

            def refused_again_first(self: Engine, owed: list[str], threshold: int | None) -> None:
                self.services.key_works.clear()  # as a run refused meanwhile does
                retry_refused(self, owed, threshold)

            with monkeypatch.context() as race:
                race.setattr(Engine, "_retry_refused", refused_again_first)
                await memory.process("u0")
                await _until(lambda: engine.key_probe.owed == frozenset(users[1:]))
            assert all([await memory.buffer(user) for user in users[1:]])
            await memory.add_exchange("u0", "u0 works in Bergen.", "Nice.")
            await memory.process("u0")
            await _until_extracted(memory, users)


async def test_a_retry_after_past_the_memorys_extraction_timeout_is_told_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine cuts a call at its extraction_timeout, shorter here than the
    extractor's own: a 429 asking for 120 s is the task's failure at once, its wait kept,
    not slept through to a timeout."""
    limited = ScriptedResponse(
        429, error_body("rate_limit_error", "slow down"), headers={"retry-after": "120"}
    )
    with MessagesAPIServer(responder=lambda r: limited) as server:
        cut = tmp_path / "cut.db"
        async with _memory_over(
            server, monkeypatch, cut, ClaudeExtractor(), extraction_timeout=30
        ) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            started = asyncio.get_running_loop().time()
            with pytest.raises(ProcessingError, match=r"HTTP 429 .*retry after 120 s"):
                await memory.process("ann")
            assert asyncio.get_running_loop().time() - started < 20, "not cut at the timeout"
        assert len(server.requests) == 1


async def test_an_overloaded_api_that_backs_off_past_the_timeout_is_not_blamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """529s without a retry-after: the SDK's own backoff between retries ran past the
    extraction_timeout, the 529 became a timeout, and the timeout was blamed."""

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if any("Oslo" in str(m.get("content")) for m in request.messages):
            return ScriptedResponse(529, error_body("overloaded_error", "Overloaded"))
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "backoff.db",
            ClaudeExtractor(max_retries=4),
            extraction_timeout=3.0,  # under the SDK's 4 backoffs (5.6 s at least), over bob's call
            retry_delay=0.01,
            retry_delay_max=0.05,
        ) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            for run in range(4):
                with pytest.raises(ProcessingError, match="HTTP 529"):
                    await memory.process("ann")
                await memory.add_message("bob", "user", f"I like thing {run}.")
                assert await memory.process("bob") == 1
            assert await memory.quarantined("ann") == []


class _Paced:
    """A custom extractor that sends every batch through one task it started during its
    first batch (pacing its calls): that task keeps the first call's context."""

    name = "paced"

    def __init__(self) -> None:
        self.inner = ClaudeExtractor()
        self.queue: asyncio.Queue[Any] | None = None
        self.worker: asyncio.Task[None] | None = None

    async def _drain(self) -> None:
        assert self.queue is not None
        while True:
            batch, answer = await self.queue.get()
            try:
                answer.set_result(await self.inner.extract(batch))
            except Exception as error:
                answer.set_exception(error)

    async def extract(self, batch: Any) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._drain())
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((batch, answer))
        return await answer

    async def aclose(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        await self.inner.aclose()


async def test_an_earlier_batchs_deadline_does_not_stop_a_later_calls_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[RecordedRequest] = []

    def responder(request: RecordedRequest) -> ScriptedResponse:
        seen.append(request)
        if len(seen) == 2:
            return ScriptedResponse(
                429, error_body("rate_limit_error", "slow down"), {"retry-after-ms": "200"}
            )
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        paced = tmp_path / "paced.db"
        async with _memory_over(
            server, monkeypatch, paced, _Paced(), extraction_timeout=3.0
        ) as memory:
            await memory.add_message("bob", "user", "I like tea.")
            assert await memory.process("bob") == 1
            await asyncio.sleep(3.2)  # the first batch's deadline is past
            await memory.add_message("ann", "user", "I live in Oslo.")
            assert await memory.process("ann") == 1, "the SDK retried the 429"
    assert len(seen) == 3


OUTAGES: dict[str, Callable[[RecordedRequest], ScriptedResponse]] = {
    "500": _error(500, "api_error"),
    "503": _error(503, "api_error"),
    "529": _error(529, "overloaded_error"),
    "connection reset": lambda r: ScriptedResponse(reset=True),
}
"""An API down for every request, the harmless ones too. (A harmless request rate
limited tells nothing: see HARMLESS_TOLD_NOTHING.)"""


class _Outage:
    """Answers ``fault`` to every request while ``down``, and as Claude would after."""

    def __init__(self, fault: Callable[[RecordedRequest], ScriptedResponse]) -> None:
        self.fault = fault
        self.down = True

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        return self.fault(request) if self.down else default_answer(request)


async def _three_runs_in_an_outage_then_one_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outage: _Outage, extractor: Any = None
) -> tuple[list[bool], list[int]]:
    """Fail three runs of ann's eight buffered messages in ``outage``, end it and run once
    more, which extracts all eight: whether each request of the three runs was a harmless
    one, and how many messages each request of the run after held."""
    with MessagesAPIServer(responder=outage) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "outage.db",
            extractor,
            **QUICK_RETRIES,
        ) as memory:
            for i in range(8):
                await memory.add_message("ann", "user", f"I like thing {i}.")
            for _ in range(3):
                with pytest.raises(ProcessingError):
                    await memory.process("ann")
            outage.down = False
            during = len(server.requests)
            assert await memory.process("ann") == 8
            assert await memory.quarantined("ann") == []
        requests = list(server.requests)
    return [_is_probe(r) for r in requests[:during]], [len(r.messages) for r in requests[during:]]


@pytest.mark.parametrize("fault", list(OUTAGES))
async def test_an_outage_of_three_runs_leaves_the_batch_whole_for_the_run_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Each failed run sends one harmless request, which fails too: the API is down, so
    ann's eight buffered messages go out in one request once it answers, not split by
    the outage into four (1, 1, 2, 4)."""
    outage = _Outage(OUTAGES[fault])
    harmless, after = await _three_runs_in_an_outage_then_one_after(tmp_path, monkeypatch, outage)
    assert harmless == [False, True] * 3 and after == [8]


async def test_an_account_out_of_credit_for_three_runs_leaves_the_batch_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run's batch is refused and so is the request without its messages: the
    account is refused, not the batch, which goes out whole once credit is back (no
    further harmless request is sent: the extractor's own told it)."""
    outage = _Outage(lambda r: ScriptedResponse(400, error_body("invalid_request_error", CREDIT)))
    harmless, after = await _three_runs_in_an_outage_then_one_after(tmp_path, monkeypatch, outage)
    assert harmless == [False, True] * 3 and after == [8]


async def test_a_batch_held_unsent_by_a_long_pause_goes_out_whole_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The breaker paused for 600 s fails bob's run at once, his batch never sent: that
    tells nothing of the batch, so his eight messages go out in one request once a
    Memory may call again, not two halves."""
    limited = ScriptedResponse(
        429, error_body("rate_limit_error", "Rate limited"), {"retry-after": "600"}
    )
    with MessagesAPIServer(responder=lambda r: limited) as server:
        db = tmp_path / "paused-whole.db"
        async with _memory_over(
            server, monkeypatch, db, breaker_failures=1, extraction_timeout=30
        ) as memory:
            await memory.add_message("ann", "user", "I like tea.")
            with pytest.raises(ProcessingError, match="retry after 600 s"):
                await memory.process("ann")
            for i in range(8):
                await memory.add_message("bob", "user", f"I like thing {i}.")
            with pytest.raises(ProcessingError, match="breaker is open"):
                await memory.process("bob")
        server.set_responder(default_answer)
        async with _memory_over(server, monkeypatch, db) as memory:
            assert await memory.process("bob") == 8
        assert [len(r.messages) for r in server.requests[1:]] == [8]


async def test_an_extractor_without_harmless_requests_splits_a_batch_an_outage_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custom extractor that does not declare HarmlessRequests is sent none: the
    outage splits the batch as it always did."""
    undeclared = _Paced()
    undeclared.inner = ClaudeExtractor(max_retries=0)
    outage = _Outage(OUTAGES["500"])
    harmless, after = await _three_runs_in_an_outage_then_one_after(
        tmp_path, monkeypatch, outage, undeclared
    )
    assert harmless == [False] * 3 and after == [1, 1, 2, 4]


async def test_a_message_answered_529_every_time_is_still_split_away_from_its_neighbours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API is up (it answers the harmless requests) but meets one of ann's eight
    messages overloaded each time: the failures are the batch's, split as before, so the
    seven beside it are extracted within a few runs; the marked one waits, never blamed
    (the reverted attempt kept the batch whole: all eight waited for good)."""
    marked_overloaded = fault_when(MARK, _error(529, "overloaded_error"))
    with MessagesAPIServer(responder=marked_overloaded) as server:
        db = tmp_path / "poison.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            for i in range(8):
                said = f"{MARK} I collect stamps" if i == 3 else f"I like thing {i}."
                await memory.add_message("ann", "user", said)
            for _ in range(MAX_RUNS):
                with contextlib.suppress(ProcessingError):
                    await memory.process("ann")
                if len(await memory.buffer("ann")) == 1:
                    break
            left = [m.content for m in await memory.buffer("ann")]
            assert left == [f"{MARK} I collect stamps"]
            assert await memory.quarantined("ann") == []
            assert len(checked_coverage(memory, "ann").covered) == 7


class _FailsOnce:
    """Answers 529 to every batch holding the marked message, and a 500 to the first lone
    request for the message saying ``flaky``; Claude's answer to all else."""

    def __init__(self, flaky: str) -> None:
        self.flaky = flaky
        self.failed = False

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        said = [str(m.get("content")) for m in request.messages]
        if any(MARK in text for text in said):
            return _error(529, "overloaded_error")(request)
        if said == [self.flaky] and not self.failed:
            self.failed = True
            return _error(500, "api_error")(request)
        return default_answer(request)


async def test_a_message_that_failed_alone_once_is_not_kept_behind_one_that_always_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann's first message meets 529 each time it goes (never blamed, it waits), and her
    second a 500 the one time it went alone: both wait as messages that failed alone, and
    they take turns, so the second is extracted by a later run rather than waiting for
    good behind the first."""
    flaky = "I like thing 1."
    with MessagesAPIServer(responder=_FailsOnce(flaky)) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "turns.db", max_batch_messages=1, **EVIDENCE_ALONE
        ) as memory:
            await memory.add_message("ann", "user", f"{MARK} I collect stamps")
            await memory.add_message("ann", "user", flaky)
            for _ in range(4):
                with contextlib.suppress(ProcessingError):
                    await memory.process("ann")
            left = [m.content for m in await memory.buffer("ann")]
            assert left == [f"{MARK} I collect stamps"]
            assert await memory.quarantined("ann") == []
            assert len(checked_coverage(memory, "ann").covered) == 1


async def test_a_harmless_requests_tokens_are_counted_with_the_failed_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch fails with a 500 (no tokens) and the harmless request after it is
    answered (one output token): the failure is the batch's, and what the request spent
    shows in ``memvee stats`` as a failed call's tokens do."""
    answers = iter([ScriptedResponse(500, error_body("api_error", "boom"))])

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request):
            return ScriptedResponse(body=text_body("Hi", output_tokens=1))
        return next(answers, None) or default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        db = tmp_path / "tokens.db"
        async with _memory_over(server, monkeypatch, db) as memory:
            await memory.add_message("ann", "user", "I like tea.")
            with pytest.raises(ProcessingError, match="HTTP 500"):
                await memory.process("ann")
        assert [_is_probe(r) for r in server.requests] == [False, True]
    with Audit(db_path=str(db)) as audit:
        stats = audit.stats()
    assert stats["output_tokens"] == 1 and stats["input_tokens"] > 0


LONG = 1500
"""Characters of message text past which the gateway below fails a request."""


def _large_requests_fail(request: RecordedRequest) -> ScriptedResponse:
    """A gateway that answers 500 to every request holding more than :data:`LONG`
    characters of messages, and passes smaller ones (the harmless requests among them)."""
    if sum(len(str(m.get("content"))) for m in request.messages) > LONG:
        return ScriptedResponse(500, error_body("api_error", "upstream failed"))
    return default_answer(request)


async def test_a_gateway_failing_every_large_request_gets_no_healthy_long_message_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann's two long messages fail alone with a 500 run after run, each failure followed
    by a harmless request that is answered. That answer judges the failure (the batch's:
    split) but is no call of another message answered meanwhile, so neither message is
    blamed: counted as one, it got a healthy message quarantined by the fifth run. (The
    breaker is kept closed, as it is while other users' calls pass, so that evidence
    alone decides.)"""
    with MessagesAPIServer(responder=_large_requests_fail) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "large.db",
            **EVIDENCE_ALONE,
        ) as memory:
            for i in range(2):
                await memory.add_message("ann", "user", f"My story, part {i}: " + "word " * 400)
            for _ in range(MAX_RUNS):
                with pytest.raises(ProcessingError, match="HTTP 500"):
                    await memory.process("ann")
            assert await memory.quarantined("ann") == []
            assert len(await memory.buffer("ann")) == 2
        assert sum(map(_is_probe, server.requests)) == MAX_RUNS


async def test_a_rate_limited_batch_sends_no_harmless_request_even_as_the_memory_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 asking to wait 1 s: the task fails at once, told as it was, and the user's
    backoff waits as asked. No harmless request is sent: one waited for in the batch's
    slot held the close and went out after it began."""
    asked = threading.Event()

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request):
            return default_answer(request)
        asked.set()
        return ScriptedResponse(
            429,
            error_body("rate_limit_error", "request too large for your per-minute limit"),
            {"retry-after": "1"},
        )

    with MessagesAPIServer(responder=responder) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "limited-close.db",
            auto_process=True,
            batch_threshold=2,
            retry_delay=0.01,
            retry_delay_max=0.05,
        ) as memory:
            await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
            assert await asyncio.to_thread(asked.wait, 30)
        assert server.requests and not any(map(_is_probe, server.requests))


HARMLESS_TOLD_NOTHING = {
    "429": ScriptedResponse(
        429,
        error_body(
            "rate_limit_error", "Number of request tokens has exceeded your per-minute limit"
        ),
        {"retry-after": "1"},
    ),
}
"""Answers to a harmless request that tell nothing of an outage: the failed batch may
have used the account's rate limit up itself (an overloaded API's 529 tells the API
down, as a 5xx does; the log's row of failures kept whole bounds what that costs)."""


@pytest.mark.parametrize("answer", list(HARMLESS_TOLD_NOTHING))
async def test_a_message_failing_every_time_is_split_away_while_harmless_requests_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """One of ann's eight messages makes the API answer 500 every time, and each harmless
    request after a failure is rate limited. That is no outage: the
    batch is split as before, and the seven beside the marked message are extracted
    (read as the API down, all eight were kept whole for good)."""

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request):
            return HARMLESS_TOLD_NOTHING[answer]
        if any(MARK in str(m.get("content")) for m in request.messages):
            return ScriptedResponse(500, error_body("api_error", "upstream failed"))
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        db = tmp_path / "told-nothing.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            for i in range(8):
                said = f"{MARK} I collect stamps" if i == 3 else f"I like thing {i}."
                await memory.add_message("ann", "user", said)
            for _ in range(2 * MAX_RUNS):
                with contextlib.suppress(ProcessingError):
                    await memory.process("ann")
            assert len(checked_coverage(memory, "ann").covered) == 7


async def test_a_harmless_request_is_sent_once_whatever_the_clients_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extractor as shipped retries a call twice, but not its harmless request: one
    request tells, and a retry would sleep the retry-after of a 529 in the batch's slot,
    other users' batches waiting behind it."""

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request):
            overloaded = error_body("overloaded_error", "Overloaded")
            return ScriptedResponse(529, overloaded, {"retry-after": "1"})
        return ScriptedResponse(500, error_body("api_error", "boom"), {"x-should-retry": "false"})

    with MessagesAPIServer(responder=responder) as server:
        db = tmp_path / "one-harmless.db"
        async with _memory_over(
            server, monkeypatch, db, ClaudeExtractor(), extraction_timeout=30
        ) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            with pytest.raises(ProcessingError, match="HTTP 500"):
                await memory.process("ann")
        assert [_is_probe(r) for r in server.requests] == [False, True]


async def test_a_batch_failing_after_the_close_began_sends_no_harmless_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann's batch is out when the Memory begins to close and fails during the grace:
    its failure is told as it was, and no request goes out after the close began."""
    close_began, arrived = threading.Event(), threading.Event()
    drain = Engine.drain

    def draining(engine: Engine) -> None:
        drain(engine)
        close_began.set()

    monkeypatch.setattr(Engine, "drain", draining)

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request):
            return default_answer(request)
        arrived.set()
        assert close_began.wait(30), "the Memory never began to close"
        return ScriptedResponse(500, error_body("api_error", "boom"))

    with MessagesAPIServer(responder=responder) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "close-failing.db",
            auto_process=True,
            batch_threshold=2,
            shutdown_grace=30,
        ) as memory:
            await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
            assert await asyncio.to_thread(arrived.wait, 30)
        assert server.requests and not any(map(_is_probe, server.requests))


async def test_a_batch_the_workers_keep_judging_down_is_split_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway fails every harmless request with a 500, and the API fails one of ann's
    eight messages each time while it answers the rest: each failure reads as an outage.
    The log splits the batch all the same after three failures in a row left it whole,
    so the seven healthy messages are extracted; the marked one waits, never blamed."""

    def responder(request: RecordedRequest) -> ScriptedResponse:
        if _is_probe(request) or any(MARK in str(m.get("content")) for m in request.messages):
            return ScriptedResponse(500, error_body("api_error", "upstream failed"))
        return default_answer(request)

    with MessagesAPIServer(responder=responder) as server:
        async with _memory_over(
            server,
            monkeypatch,
            tmp_path / "misjudged.db",
            **EVIDENCE_ALONE,
        ) as memory:
            for i in range(8):
                said = f"{MARK} I collect stamps" if i == 3 else f"I like thing {i}."
                await memory.add_message("ann", "user", said)
            for _ in range(24):
                with contextlib.suppress(ProcessingError):
                    await memory.process("ann")
            assert len(checked_coverage(memory, "ann").covered) == 7
            assert [m.content for m in await memory.buffer("ann")] == [f"{MARK} I collect stamps"]
            assert await memory.quarantined("ann") == []


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (403, "permission_error")]
)
async def test_a_refused_api_key_is_told_as_the_account_refused_not_the_api_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, kind: str
) -> None:
    """The API refuses the key (or its permissions) for every request, the harmless one
    after a failed batch too: the run's error says the credentials are refused, never that
    the API is down, and ann's eight messages stay whole, going out in one request once
    the key is accepted again."""
    refused = _Outage(_error(status, kind))
    with MessagesAPIServer(responder=refused) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "refused-key.db", retry_delay=0.01
        ) as memory:
            for i in range(8):
                await memory.add_message("ann", "user", f"I like thing {i}.")
            with pytest.raises(ProcessingError) as caught:
                await memory.process("ann")
            assert f"HTTP {status}" in caught.value.error
            assert "credentials were refused too" in caught.value.error
            assert "down" not in caught.value.error
            refused.down = False
            during = len(server.requests)
            assert await memory.process("ann") == 8
        assert [_is_probe(r) for r in server.requests[:during]] == [False, True]
        assert [len(r.messages) for r in server.requests[during:]] == [8]


async def test_a_model_the_api_does_not_find_is_told_as_refused_for_every_request_not_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API answers every request with 404 "model: ..." (a model retired or misspelt),
    the harmless one after a failed batch too: it is up, and the run's error says that
    what the requests name is not found for every request, never that the API is down;
    ann's eight messages stay whole, none quarantined, and go out in one request once the
    model is found again."""
    missing = _Outage(
        lambda r: ScriptedResponse(404, error_body("not_found_error", "model: claude-retired"))
    )
    with MessagesAPIServer(responder=missing) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "missing-model.db", retry_delay=0.01
        ) as memory:
            for i in range(8):
                await memory.add_message("ann", "user", f"I like thing {i}.")
            errors = []
            for _ in range(2):
                with pytest.raises(ProcessingError) as caught:
                    await memory.process("ann")
                errors.append(caught.value.error)
            assert await memory.quarantined("ann") == []
            missing.down = False
            during = len(server.requests)
            assert await memory.process("ann") == 8
    for error in errors:
        assert "HTTP 404" in error and "model: claude-retired" in error
        assert "not found for every request, not the batch" in error
        assert "down" not in error
    assert [_is_probe(r) for r in server.requests[:during]] == [False, True] * 2
    assert [len(r.messages) for r in server.requests[during:]] == [8]


@pytest.mark.parametrize(
    ("fault", "kept_whole", "finding"),
    [
        (
            OUTAGES["500"],
            "the batch is retried later, whole)",
            "(a harmless request failed too: the API is down; ",
        ),
        (
            lambda request: ScriptedResponse(400, error_body("invalid_request_error", CREDIT)),
            "retried later)",
            "(a request without the batch's messages is refused too: the account or the "
            "settings are, not the batch; ",
        ),
    ],
    ids=["outage", "credit balance"],
)
async def test_the_failure_that_splits_a_batch_kept_whole_says_only_that_it_splits(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[RecordedRequest], ScriptedResponse],
    kept_whole: str,
    finding: str,
) -> None:
    """Three runs in an outage (or with the account refused every request, its credit
    balance too low) leave ann's batch whole, and the fourth splits it all the same: its
    error says so, in place of the note that the batch is retried later (whole)."""
    outage = _Outage(fault)
    with MessagesAPIServer(responder=outage) as server:
        async with _memory_over(
            server, monkeypatch, tmp_path / "fourth.db", **QUICK_RETRIES
        ) as memory:
            for i in range(8):
                await memory.add_message("ann", "user", f"I like thing {i}.")
            errors = []
            for _ in range(4):
                with pytest.raises(ProcessingError) as caught:
                    await memory.process("ann")
                errors.append(caught.value.error)
    assert all(e.endswith(kept_whole) for e in errors[:3]), errors
    assert errors[3].endswith(
        f"{finding}split all the same: 3 failures in a row left it whole already)"
    ), errors[3]
    assert "retried later" not in errors[3]


def _nothing_learned(request: RecordedRequest) -> ScriptedResponse:
    """An answer with no fact: the batches' requests stay their messages' size (no known
    entry is shown beside them)."""
    return ScriptedResponse(body=tool_use_body([], model="claude-standin", input_tokens=1))


async def test_a_413_caused_by_one_users_many_entries_leaves_another_users_batches_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ann's 100 entries, shown beside her next 40 messages, make a request over the body
    limit (413); Bob, with few entries, still sends his 200 messages in four batches of
    50, each under the limit. The size learned from Ann's refusal was her messages' alone,
    halved, and every user's batches were cut to it: 11 requests of 19 for Bob."""
    fill = " and I really enjoyed the long walk by the sea with my old friends from school"
    with MessagesAPIServer(default_answer) as server:
        db = tmp_path / "entries.db"
        async with _memory_over(server, monkeypatch, db, extraction_timeout=30) as memory:
            for i in range(100):
                await memory.add_exchange("ann", f"Fact {i}: I went to place {i}{fill}", "ok")
            await memory.process("ann")
            server.max_request_bytes = 27_000
            for i in range(20):
                await memory.add_exchange("ann", f"News {i}: I saw film {i}{fill}", "ok")
            await memory.process("ann")
            sizes = [len(json.dumps(r.body, separators=(",", ":"))) for r in server.requests]
            assert max(sizes) > 27_000, "Ann's entries took her request over the limit"
            bobs_first = len(server.requests)
            for i in range(100):
                await memory.add_exchange("bob", f"Day {i}: I went to town {i}{fill}", "ok")
            await memory.process("bob")
            assert await memory.buffer("bob") == [] and await memory.buffer("ann") == []
    assert [len(r.messages) for r in server.requests[bobs_first:]] == [50, 50, 50, 50]


async def test_batches_after_a_request_too_large_start_within_the_size_that_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body limit below a full batch's size: the first batch is refused (413) and split
    until it fits; the batches after it start within the size learned, so a backlog of
    eight full batches costs about one request a half batch plus one refusal (18, 1
    refused), not a refusal and a split each (24, 8 refused)."""
    limit = 15_000
    story = "I walked along the river and watched the boats go by. " * 8
    with MessagesAPIServer(_nothing_learned, max_request_bytes=limit) as server:
        backlog = tmp_path / "limit.db"
        async with _memory_over(server, monkeypatch, backlog, extraction_timeout=30) as memory:
            for i in range(200):
                await memory.add_exchange("ann", f"Day {i}: {story}", "ok")
            await memory.process("ann")
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []
    sizes = [len(json.dumps(r.body, separators=(",", ":"))) for r in server.requests]
    too_large = [size for size in sizes if size > limit]
    assert len(too_large) <= 2, "the size that fit is remembered"
    assert len(sizes) - len(too_large) <= 17, "about one request a half batch"


async def test_a_users_first_batch_after_a_restart_is_planned_with_the_entries_it_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Carol's 40 entries were extracted before a restart. After it, Bob's backlog meets
    the body limit (one 413) and the size learned is his messages' alone; Carol's first
    batch since the restart is then planned with what her entries may weigh beside it,
    not as if she had none: none of her requests is refused. (Her first one was refused
    too, then split.)"""
    limit = 15_000
    story = "I walked along the river and watched the boats go by. " * 8
    fill = " and I really enjoyed the long walk by the sea with my old friends from school"
    db = tmp_path / "restart.db"
    with MessagesAPIServer() as server:
        async with _memory_over(server, monkeypatch, db, extraction_timeout=30) as memory:
            for i in range(40):
                await memory.add_exchange("carol", f"Fact {i}: I went to place {i}{fill}", "ok")
            await memory.process("carol")
        server.max_request_bytes, server.responder = limit, _nothing_learned
        restarted = len(server.requests)
        async with _memory_over(server, monkeypatch, db, extraction_timeout=30) as memory:
            for i in range(50):
                await memory.add_exchange("bob", f"Day {i}: {story}", "ok")
            await memory.process("bob")
            carols_first = len(server.requests)
            for i in range(5):
                await memory.add_exchange("carol", f"Day {i}: {story}", "ok")
            await memory.process("carol")
            assert await memory.buffer("carol") == [] and await memory.quarantined("carol") == []
    refused = [len(json.dumps(r.body, separators=(",", ":"))) > limit for r in server.requests]
    assert sum(refused[restarted:carols_first]) == 1, "Bob's first batch taught the size"
    assert all(len(r.known) == 40 for r in server.requests[carols_first:])
    assert sum(refused[carols_first:]) == 0, "Carol's batches were planned to fit"


def _prompt_tokens(request: RecordedRequest) -> int:
    """The stand-in's count of ``request``'s prompt tokens, as its context limit counts."""
    return estimate_tokens(request.body)


async def test_batches_after_a_prompt_over_the_context_start_within_the_size_that_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context window below a full batch's prompt: the real API answers HTTP 400 "prompt
    is too long: N tokens > M maximum", not a 413. That is a request too large, as a 413
    is: the batch is split until it fits, no probe is sent, and the batches after it start
    within the size learned from the tokens the API named: 17 requests, 1 refused, where
    every batch used to be refused, probed and split (32 requests, 8 refused, 8 probes)."""
    limit = 4_000
    story = "I walked along the river and watched the boats go by. " * 8
    with MessagesAPIServer(_nothing_learned, max_prompt_tokens=limit) as server:
        backlog = tmp_path / "context.db"
        async with _memory_over(server, monkeypatch, backlog, extraction_timeout=30) as memory:
            for i in range(200):
                await memory.add_exchange("ann", f"Day {i}: {story}", "ok")
            await memory.process("ann")
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []
            assert len(checked_coverage(memory, "ann").covered) == 400
    tokens = [_prompt_tokens(r) for r in server.requests]
    assert not any(map(_is_probe, server.requests)), "a request too large needs no probe"
    assert sum(t > limit for t in tokens) == 1, "the size that fit is remembered"
    assert len(tokens) <= 17, "about one request a half batch, not a refusal and a split each"


async def _requests_for_a_backlog_over(
    server: MessagesAPIServer, path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """How many requests Ann's backlog of 200 long exchanges takes ``server`` to extract,
    every message covered, none quarantined."""
    story = "I walked along the river and watched the boats go by. " * 8
    with server:
        async with _memory_over(server, monkeypatch, path, extraction_timeout=30) as memory:
            for i in range(200):
                await memory.add_exchange("ann", f"Day {i}: {story}", "ok")
            await _run_until_settled(memory, "ann")
            assert await memory.quarantined("ann") == []
            assert len(checked_coverage(memory, "ann").covered) == 400
    return len(server.requests)


@pytest.mark.parametrize("scale", [2.0, 3.0, 4.0])
async def test_an_api_counting_more_tokens_than_memvee_estimates_is_fitted_no_worse_than_halving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: float
) -> None:
    """The API counts ``scale`` times memvee's estimate of a prompt. The tokens its 400
    names are weighed against memvee's estimate of the request, so the size learned is
    what the window leaves in memvee's count: no more requests than halving the batch
    takes without figures (the API's excess taken off memvee's tokens as it was learned
    one message for every user: 401 requests where halving took 39, at scale 3)."""

    def server(names_tokens: bool) -> MessagesAPIServer:
        return MessagesAPIServer(
            _nothing_learned, max_prompt_tokens=8_000, token_scale=scale, names_tokens=names_tokens
        )

    named = await _requests_for_a_backlog_over(server(True), tmp_path / "named.db", monkeypatch)
    halved = await _requests_for_a_backlog_over(server(False), tmp_path / "bare.db", monkeypatch)
    assert named < halved, "the figures named teach more than a split would"


async def test_a_prompt_within_the_context_but_not_with_its_output_teaches_a_size_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real API's other context-window 400: "input length and `max_tokens` exceed
    context limit: N + O > M". It is a request too large too, learned from both figures
    (a batch's output budget grows with its messages as its input does): one refusal, no
    probe, every message extracted (it used to be a refusal with a reason, every batch
    refused, probed and split)."""
    window = 9_000
    server = MessagesAPIServer(_nothing_learned, max_prompt_tokens=window, counts_max_tokens=True)
    requests = await _requests_for_a_backlog_over(server, tmp_path / "window.db", monkeypatch)
    refused = [r for r in server.requests if _prompt_tokens(r) + r.body["max_tokens"] > window]
    assert len(refused) == 1 and not any(map(_is_probe, server.requests))
    assert requests <= 16, "about one request a half batch"


ECHOED = "prompt is too long: 999999 tokens > 1 maximum"


def _refusing_by_echo(request: RecordedRequest) -> ScriptedResponse:
    """The API refusing a request that shows the marked message, echoing its text."""
    for message in request.messages:
        if MARK in message["content"]:
            said = f"messages: input refused by policy: {message['content']!r}"
            return ScriptedResponse(400, error_body("invalid_request_error", said))
    return default_answer(request)


async def test_a_refusal_echoing_a_message_that_says_the_prompt_is_too_long_is_its_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ann's message says "prompt is too long: 999999 tokens > 1 maximum", and the API's
    refusal of it quotes it. That is the API refusing her message, quarantined with its
    reason, not a request too large whose made-up figures would have every user's batches
    take one message for ten minutes (Bob's 200 messages went in 200 requests)."""
    with MessagesAPIServer(_refusing_by_echo) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "echo.db") as memory:
            for i in range(20):
                await memory.add_exchange("ann", f"Day {i}: I went to town.", "ok")
            await memory.add_message("ann", "user", f"{MARK} my essay says {ECHOED}")
            await _run_until_settled(memory, "ann")
            [quarantined] = await memory.quarantined("ann")
            assert "input refused by policy" in quarantined.error
            first = len(server.requests)
            for i in range(100):
                await memory.add_exchange("bob", f"Day {i}: I went to the sea.", "ok")
            await _run_until_settled(memory, "bob")
            assert len(checked_coverage(memory, "bob").covered) == 200
    bobs = [len(r.messages) for r in server.requests[first:]]
    assert len(bobs) <= 4, f"Bob's batches are as large as configured: {bobs}"


async def test_a_message_over_the_context_only_with_its_entries_is_extracted_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ann's 100 entries, shown beside her long new message, take its prompt over the
    context window (400 "prompt is too long"), while the entries with a short message fit,
    and so does the message alone. Only the request's size is wrong: the message is
    extracted once more without the entries, never quarantined (it used to be blamed, the
    probe with the entries accepted, and quarantined)."""
    fill = " and I really enjoyed the long walk by the sea with my old friends from school"
    with MessagesAPIServer(default_answer) as server:
        db = tmp_path / "entries.db"
        async with _memory_over(server, monkeypatch, db, max_attempts=1) as memory:
            for i in range(100):
                await memory.add_exchange("ann", f"Fact {i}: I went to place {i}{fill}", "ok")
            await memory.process("ann")
            first = len(server.requests)
            server.max_prompt_tokens = 6_000
            await memory.add_message("ann", "user", "News: I went to place 7 again" + fill * 20)
            await _run_until_settled(memory, "ann")
            assert await memory.quarantined("ann") == []
            knowledge = [e.text for e in await memory.knowledge("ann")]
            assert any(text.startswith("User said: News:") for text in knowledge)
    refused, probe, alone = server.requests[first:]
    assert _prompt_tokens(refused) > 6_000 and len(refused.known) == 100
    assert _is_probe(probe) and _prompt_tokens(probe) <= 6_000, "the entries fit without it"
    assert not _is_probe(alone) and alone.known == [], "tried once more without the entries"


async def test_a_message_over_the_whole_context_is_quarantined_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message whose prompt alone is over the context window: refused however it is
    sent, it is quarantined with the API's words for it, as a lone message over a body
    limit (413) is, and the messages beside it are extracted, within the run. The batch
    of three is split without a probe, and the API's figures show the message alone over
    the window: it is sent without the entry shown beside it at once, and that request,
    refused by the API's own figures, blames it for one attempt. It is quarantined after
    its three attempts: 9 requests, 7 refused, no probe (each attempt used to be probed,
    then tried once more without the entries: 12 requests, 7 refused, 3 probes; a resend
    refused alike quarantined it at its first: 6, 4, 0)."""
    with MessagesAPIServer(default_answer, max_prompt_tokens=4_000) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "huge.db") as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            await memory.add_message("ann", "user", f"{MARK} " + "a very long story " * 1_200)
            await memory.add_message("ann", "user", "I work as a nurse.")
            runs = await _run_until_settled(memory, "ann")
            [quarantined] = await memory.quarantined("ann")
            assert "prompt is too long" in quarantined.error
            assert len(checked_coverage(memory, "ann").covered) == 2
    tokens = [_prompt_tokens(r) for r in server.requests]
    assert runs == 1 and len(tokens) == 9 and quarantined.attempts == 3
    assert sum(t > 4_000 for t in tokens) == 7 and not any(map(_is_probe, server.requests))


async def test_a_users_first_batch_after_a_restart_reserves_only_what_her_few_entries_weigh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dave has one entry from before a restart. After it, Bob's backlog teaches the body
    limit (one 413); Dave's backlog of twelve messages then fits one request beside his
    one entry, and goes in one: the room kept for the entries shown is what his one entry
    may weigh. It used to be a quarter of the configured batch, more than the size learned
    left, and his first batch took one message (two requests)."""
    limit = 15_000
    story = "I walked along the river and watched the boats go by. " * 8
    db = tmp_path / "restart.db"
    with MessagesAPIServer() as server:
        async with _memory_over(server, monkeypatch, db, extraction_timeout=30) as memory:
            await memory.add_exchange(
                "dave", "I went to Oslo with my old friends from school", "ok"
            )
            await memory.process("dave")
        server.max_request_bytes, server.responder = limit, _nothing_learned
        async with _memory_over(server, monkeypatch, db, extraction_timeout=30) as memory:
            for i in range(50):
                await memory.add_exchange("bob", f"Day {i}: {story}", "ok")
            await memory.process("bob")
            daves_first = len(server.requests)
            for i in range(12):
                await memory.add_exchange("dave", f"Day {i}: {story}", "ok")
            await memory.process("dave")
            assert await memory.buffer("dave") == [] and await memory.quarantined("dave") == []
    daves = server.requests[daves_first:]
    assert [len(r.known) for r in daves] == [1]
    assert len(json.dumps(daves[0].body, separators=(",", ":"))) <= limit


@pytest.mark.parametrize("probe", ["refused", "accepted"])
async def test_a_long_lone_message_its_entries_take_over_the_body_limit_is_extracted_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: str
) -> None:
    """Ann's entries shown beside her long message make a request over the body limit
    (413); beside the harmless message of a probe they are ``probe`` too; without them
    the message fits. The entries that fit beside a probe's short message do not fit
    beside the long one: the batch is extracted with none rather than its message
    blamed, where it used to be quarantined after three runs (found by
    test_claude_soak)."""
    fill = " and I really enjoyed the long walk by the sea with my old friends from school"
    long_message = "I live in Lisbon" + " and then some more" * 100
    with MessagesAPIServer() as server:
        db = tmp_path / "entries.db"
        async with _memory_over(server, monkeypatch, db, **QUICK_RETRIES) as memory:
            for i in range(40):
                await memory.add_exchange("ann", f"Fact {i}: I live in place {i}{fill}", "ok")
            await memory.process("ann")
            await memory.add_message("ann", "user", long_message)
            server.max_request_bytes = 1  # every request refused, to weigh its parts
            with pytest.raises(ProcessingError):
                await memory.process("ann")
            full, probe_size, bare = (
                len(json.dumps(r.body, separators=(",", ":"))) for r in server.requests[-3:]
            )
            alone = bare + full - probe_size
            limit = bare + (probe_size - bare) // 2 if probe == "refused" else probe_size + 100
            assert alone < limit < full
            server.max_request_bytes = limit
            for _ in range(MAX_RUNS):
                with contextlib.suppress(ProcessingError):
                    await memory.process("ann")
            assert await memory.quarantined("ann") == []
            assert await memory.buffer("ann") == []
            assert not checked_coverage(memory, "ann").buffered


def _refused(server: MessagesAPIServer, requests: list[RecordedRequest]) -> int:
    """How many of ``requests`` ``server`` refused for their size (over its body limit or
    its context window)."""
    refused = 0
    for request in requests:
        size = len(json.dumps(request.body, separators=(",", ":")).encode())
        window = server.max_prompt_tokens
        over_window = window is not None and _prompt_tokens(request) > window
        limit = server.max_request_bytes
        refused += over_window or (limit is not None and size > limit)
    return refused


async def test_a_lone_message_over_the_body_limit_with_no_entries_is_quarantined_after_its_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, db_url: str
) -> None:
    """Ann, with no known entry, sends a message too large for the body limit on its own:
    its lone request is refused (413) and the same request with a harmless message in
    place of it is accepted, which blames the message for one attempt (a 413 may be a
    passing fault, so it is never quarantined at once). After its three attempts it is
    quarantined, saying why, its neighbours extracted within the run: 9 requests, 4
    refused, 3 probes (a resend refused alike quarantined it at its first: 6, 3, 1)."""
    caplog.set_level(logging.WARNING)
    with MessagesAPIServer(default_answer, max_request_bytes=12_000) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "u.db", db_url=db_url) as memory:
            await memory.add_message("ann", "assistant", "How was your day?")
            await memory.add_message("ann", "user", f"{MARK} " + "a very long story " * 1_200)
            await memory.add_message("ann", "assistant", "What a story!")
            runs = await _run_until_settled(memory, "ann")
            [quarantined] = await memory.quarantined("ann")
            print(
                "Q413",
                quarantined.attempts,
                len(server.requests),
                _refused(server, server.requests),
                sum(map(_is_probe, server.requests)),
            )
            assert "413" in quarantined.error and "blamed for its size" in quarantined.error
            assert quarantined.attempts == 3
            found = checked_coverage(memory, "ann")
            assert len(found.covered) == 2 and not found.buffered
            assert all(t.done for t in await memory.tasks("ann")), "no task is left open"
    assert differences(db_url) == [], "the projections equal a rebuild"
    requests = server.requests
    assert runs == 1
    assert (len(requests), _refused(server, requests), sum(map(_is_probe, requests))) == (9, 4, 3)
    assert any(
        "blamed" in r.getMessage() and quarantined.message_id in r.getMessage()
        for r in caplog.records
    ), "the quarantine is logged with the message it took"


async def test_a_lone_message_the_windows_figures_show_too_large_is_quarantined_without_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Ann's entries are shown beside her message whose prompt is over the context window
    on its own: the API's 400 names its tokens and the window's, by which the fixed part
    fits. The message is sent without the entries at once (no probe), and the API's own
    figures for that request put it over the window even with the smallest output: one
    attempt blamed on it. It is quarantined after its three attempts, without a probe:
    9 requests, 7 refused (each attempt used to be probed and tried once more without
    the entries: 12 requests, 7 refused, 3 probes; a resend refused alike quarantined it
    at its first: 6, 4), and no task is left open."""
    with MessagesAPIServer(default_answer, max_prompt_tokens=4_000) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "u.db", db_url=db_url) as memory:
            await memory.add_message("ann", "user", "I live in Oslo.")
            await memory.process("ann")
            first = len(server.requests)
            await memory.add_message("ann", "user", "I work as a nurse.")
            await memory.add_message("ann", "user", f"{MARK} " + "a very long story " * 1_200)
            await memory.add_message("ann", "user", "I have a cat.")
            runs = await _run_until_settled(memory, "ann")
            [quarantined] = await memory.quarantined("ann")
            assert "prompt is too long" in quarantined.error
            found = checked_coverage(memory, "ann")
            assert len(found.covered) == 3 and not found.buffered
            assert all(t.done for t in await memory.tasks("ann")), "no task is left open"
    assert differences(db_url) == [], "the projections equal a rebuild"
    requests = server.requests[first:]
    assert runs == 1 and not any(map(_is_probe, requests))
    assert (len(requests), _refused(server, requests)) == (9, 7)


T0_FAULTS = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
"""When the messages and entries an extractor is given directly were sent."""

PASSING_SIZE_FAULTS = {
    "413": ScriptedResponse(413, error_body("request_too_large", "Request too large")),
    "prompt is too long": ScriptedResponse(
        400, error_body("invalid_request_error", "prompt is too long: 9999 tokens > 9000 maximum")
    ),
}
"""Refusals for size a gateway or the API may answer once, for no limit of its own (the
Claude soak serves the second as a passing fault)."""


@pytest.mark.parametrize("refusals", [1, 2], ids=["once", "twice in a row"])
@pytest.mark.parametrize("fault", list(PASSING_SIZE_FAULTS))
async def test_a_long_lone_message_refused_for_its_size_a_few_times_is_extracted_not_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str, fault: str, refusals: int
) -> None:
    """No limit at all: a flaky gateway refuses the requests holding Ann's long message
    alone (it outweighs the fixed prompt) for their size ``refusals`` times in a row, the
    same refusal with the same figures, then answers. Each refusal is one attempt of the
    message, never a quarantine, so the same request sent at its next attempt is
    extracted within the run (one refusal quarantined it at once; so did two alike within
    one attempt). Requests: one a refusal (each 413 probed), then the one answered."""
    left = {"refusals": refusals}

    def flaky(request: RecordedRequest) -> ScriptedResponse:
        lone = [m.get("content") for m in request.messages]
        if len(lone) == 1 and MARK in str(lone[0]) and left["refusals"]:
            left["refusals"] -= 1
            return PASSING_SIZE_FAULTS[fault]
        return default_answer(request)

    with MessagesAPIServer(flaky) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "u.db", db_url=db_url) as memory:
            await memory.add_message("ann", "user", f"{MARK} " + "a very long story " * 1_200)
            runs = await _run_until_settled(memory, "ann")
            assert await memory.quarantined("ann") == []
            found = checked_coverage(memory, "ann")
            assert len(found.covered) == 1 and not found.buffered
            assert all(t.done for t in await memory.tasks("ann")), "no task is left open"
    assert differences(db_url) == [], "the projections equal a rebuild"
    requests = server.requests
    probes = sum(map(_is_probe, requests))
    assert runs == 1 and left["refusals"] == 0
    probed = fault == "413"
    assert (len(requests), probes) == (refusals * (1 + probed) + 1, refusals * probed)
    assert requests[-1].body == requests[0].body, "the same request, sent once more"


async def test_a_message_that_fits_the_window_alone_is_extracted_though_its_entries_count_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ann's message is in Chinese, her 100 known entries in English: the API counts her
    Chinese at some three quarters of memvee's estimate and the entries at about it. Her
    request with the entries is over the 8,500-token window; alone, the API counts the
    message's request 8,232 tokens, within it. The refusal's figures, scaled as the whole
    request's count is to memvee's estimate, overstated the message alone (9,934) and
    took it for too large for any request; it is sent without the entries, no probe, and
    extracted, its entries noted as left out."""
    message = BatchMessage("msg-cjk", "user", "我喜欢在河边散步看船。" * 818, T0_FAULTS)
    known = tuple(
        KnownEntry(f"e-{i}", f"User likes thing {i} " + "and many words more " * 60, T0_FAULTS)
        for i in range(100)
    )
    batch = ExtractionBatch(user_id="ann", task_id="t1", messages=(message,), known=known)
    with MessagesAPIServer(default_answer, max_prompt_tokens=8_500) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-faults")
        extractor = ClaudeExtractor(max_retries=0)
        try:
            result = await extractor.extract(batch)
        finally:
            await extractor.aclose()
    assert result.facts
    assert result.notes["known_entries_left_out"] == ",".join(e.entry_id for e in known)
    with_entries, alone = (_prompt_tokens(r) for r in server.requests)
    assert with_entries > 8_500 >= alone and alone == 8_232
    assert server.requests[1].known == [] and not any(map(_is_probe, server.requests))


async def test_a_lone_message_over_the_window_only_with_its_output_budget_is_extracted_asking_less(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """The window holds the output asked too: Ann's long message's prompt fits it, with
    its output budget it does not ("input length and `max_tokens` exceed context
    limit"). It is sent once more asking the output the window leaves its input, and
    extracted within the run, never taken for too large for any request (it was
    quarantined at once, though a smaller ``max_tokens`` fits): 2 requests, no probe."""
    with MessagesAPIServer(
        default_answer, max_prompt_tokens=8_000, counts_max_tokens=True
    ) as server:
        async with _memory_over(server, monkeypatch, tmp_path / "u.db", db_url=db_url) as memory:
            await memory.add_message("ann", "user", f"{MARK} " + "a very long story " * 1_250)
            runs = await _run_until_settled(memory, "ann")
            assert await memory.quarantined("ann") == []
            found = checked_coverage(memory, "ann")
            assert len(found.covered) == 1 and not found.buffered
    assert differences(db_url) == [], "the projections equal a rebuild"
    first, again = server.requests
    assert runs == 1 and first.body["max_tokens"] > 8_000 - _prompt_tokens(first)
    assert again.body["max_tokens"] == 8_000 - _prompt_tokens(again) >= 512
    assert again.messages == first.messages


async def test_a_users_entries_grown_by_a_tasks_first_batch_are_planned_beside_its_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Bob's backlog teaches the body limit (one 413). Ann, with no entry yet, sends a
    backlog of two batches in one task: the first batch's facts are shown beside the
    second, whose plan leaves them room: her backlog takes six requests, none refused. It
    was planned as if she still had none: 22 messages beside her 12 new entries drew a
    413, whose split taught a size so small that her backlog took 21 requests."""
    limit = 13_600
    story = "I walked along the river and watched the boats go by. " * 8
    fill = "with my old friends from school"
    with MessagesAPIServer(_nothing_learned, max_request_bytes=limit) as server:
        db = tmp_path / "growing.db"
        async with _memory_over(
            server, monkeypatch, db, db_url=db_url, extraction_timeout=30
        ) as memory:
            for i in range(50):
                await memory.add_exchange("bob", f"Day {i}: {story}", "ok")
            await memory.process("bob")
            server.set_responder(default_answer)
            anns_first = len(server.requests)
            for i in range(40):
                await memory.add_exchange("ann", f"Fact {i}: I went to place {i} {fill}", story)
            await memory.process("ann")
            assert await memory.buffer("ann") == [] and await memory.quarantined("ann") == []
            assert len(checked_coverage(memory, "ann").covered) == 80
            assert [t.status for t in await memory.tasks("ann")] == [ProcessStatus.COMPLETED]
    assert differences(db_url) == [], "the projections equal a rebuild"
    sizes = [len(json.dumps(r.body, separators=(",", ":"))) for r in server.requests]
    assert sum(size > limit for size in sizes[:anns_first]) == 1, "Bob's backlog taught it"
    anns = server.requests[anns_first:]
    assert [len(r.known) for r in anns][:2] == [0, 12], "her second batch shows the first's"
    assert sum(size > limit for size in sizes[anns_first:]) == 0, "planned beside her entries"
    assert len(anns) <= 6, "six requests, none refused"
