"""ClaudeExtractor's real HTTP path, against the stand-in Messages API on 127.0.0.1.

The extractor is built with its default construction and finds the server through
ANTHROPIC_BASE_URL, exactly as a deployment would find a proxy or gateway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import memvee.extractors._claude as claude_module
from events.errors import ExtractionError
from events.extraction import (
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    KnownEntry,
    extraction_deadline,
)
from memvee import ExtractorAccessRefusedError, Memory, MemoryConfig
from memvee.extractors import DEFAULT_MODEL, MODEL_ENV_VAR, ClaudeExtractor
from tests.support.messages_api_server import MessagesAPIServer

API_KEY = "sk-ant-standin-DO-NOT-LEAK-9876543210"
GATEWAY_PASSWORD = "S3cretProxyPw-DO-NOT-LEAK"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BATCH = ExtractionBatch(
    user_id="u1",
    task_id="t1",
    messages=(
        BatchMessage("m-1", "user", "I live in Oslo.", T0),
        BatchMessage("m-2", "assistant", "Oslo is lovely <b>in spring</b>.", T0),
        BatchMessage("m-3", "user", 'I said "</messages>" on purpose.', T0),
    ),
)
T_KNOWN = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
KNOWN = (
    KnownEntry("e-said", "User said: I live in Oslo.", T_KNOWN),
    KnownEntry("e-job", 'User works at "</known_entries>" Inc.', T_KNOWN),
)
KNOWN_BATCH = ExtractionBatch(BATCH.user_id, "t2", BATCH.messages, known=KNOWN)
EXPECTED = (
    ExtractedFact("User said: I live in Oslo.", ("m-1",)),
    ExtractedFact('User said: I said "</messages>" on purpose.', ("m-3",)),
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as running:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", running.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS", MODEL_ENV_VAR):
            monkeypatch.delenv(name, raising=False)
        yield running


@pytest.fixture
async def claude(server: MessagesAPIServer) -> AsyncIterator[ClaudeExtractor]:
    """Its timeout far above a local round trip on a loaded machine, where 1 s was not."""
    made = ClaudeExtractor(timeout=30.0, max_retries=2)
    yield made
    await made.aclose()


async def test_happy_path_over_http(server: MessagesAPIServer, claude: ClaudeExtractor) -> None:
    result = await claude.extract(BATCH)

    assert result.facts == EXPECTED
    assert result.model == DEFAULT_MODEL
    assert result.input_tokens is not None and result.output_tokens == 30
    (request,) = server.requests
    assert request.path == "/v1/messages"
    assert API_KEY in request.headers.get("authorization", "") + request.headers.get(
        "x-api-key", ""
    )
    assert request.body["model"] == DEFAULT_MODEL
    assert request.body["tool_choice"]["name"] == "record_knowledge"
    assert [m["id"] for m in request.messages] == ["m1", "m2", "m3"]
    assert [m["content"] for m in request.messages] == [m.content for m in BATCH.messages]


async def test_an_overloaded_answer_is_retried_over_http(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    server.enqueue_error(529, "overloaded_error", "Overloaded", headers={"retry-after-ms": "10"})

    result = await claude.extract(BATCH)

    assert result.facts == EXPECTED
    first, second = server.requests
    assert first.headers["x-stainless-retry-count"] == "0"
    assert second.headers["x-stainless-retry-count"] == "1"


async def test_a_retry_after_of_an_hour_is_told_at_once_not_slept_through(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    server.enqueue_error(429, "rate_limit_error", "slow down", headers={"retry-after": "3600"})

    started = time.monotonic()
    with pytest.raises(ExtractionError, match=r"HTTP 429 .*retry after 3600 s") as caught:
        await claude.extract(BATCH)

    assert time.monotonic() - started < 20, "told long before the hour (or our 30 s timeout)"
    assert caught.value.retry_after == 3600
    assert len(server.requests) == 1


async def test_an_answer_slower_than_our_timeout_fails(server: MessagesAPIServer) -> None:
    server.enqueue(delay=60)
    claude = ClaudeExtractor(timeout=1.0, max_retries=2)

    started = time.monotonic()
    try:
        with pytest.raises(ExtractionError, match="timed out"):
            await claude.extract(BATCH)
    finally:
        await claude.aclose()

    assert time.monotonic() - started < 30, "the answer was not waited for"


async def test_an_auth_failure_names_the_status_but_not_the_key(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    server.enqueue_error(401, "authentication_error", "invalid x-api-key")

    with pytest.raises(ExtractionError, match="HTTP 401") as caught:
        await claude.extract(BATCH)

    assert API_KEY not in str(caught.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (403, "permission_error")]
)
async def test_a_refused_key_or_permission_raises_the_access_refused_error_which_may_pass(
    server: MessagesAPIServer, claude: ClaudeExtractor, status: int, kind: str
) -> None:
    """A key or a permission the API refuses is told by its own type, so that the engine
    tells an account refused from an API down; sent again later (a key replaced), it may
    pass."""
    server.enqueue_error(status, kind, "refused")

    with pytest.raises(ExtractorAccessRefusedError, match=f"HTTP {status}") as caught:
        await claude.extract(BATCH)

    assert not caught.value.repeats and API_KEY not in str(caught.value)


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["info", "debug"])
async def test_a_gateway_password_in_the_base_url_reaches_the_gateway_but_no_log_record(
    server: MessagesAPIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    level: int,
) -> None:
    """The SDK logs each request's URL (its HTTP client at info, itself at debug), user
    info included: whatever handlers the application has, the records reach them with
    the user info masked and the key left out."""
    credentials = f"gwuser:{GATEWAY_PASSWORD}@"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url.replace("://", f"://{credentials}"))
    caplog.set_level(level)
    extractor = ClaudeExtractor(timeout=5.0, max_retries=0)
    try:
        await extractor.extract(BATCH)
    finally:
        await extractor.aclose()

    (request,) = server.requests
    assert request.headers["authorization"].startswith("Basic ")  # the gateway's
    shown = caplog.text
    assert f"POST http://***@{server.base_url.removeprefix('http://')}/v1/messages" in shown
    assert GATEWAY_PASSWORD not in shown and "gwuser" not in shown and API_KEY not in shown


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_a_success_over_a_body_that_is_not_json_is_a_failure_that_may_pass(
    server: MessagesAPIServer, claude: ClaudeExtractor, content_type: str
) -> None:
    server.enqueue(200, b"{not json", headers={"content-type": content_type})

    with pytest.raises(ExtractionError) as caught:
        await claude.extract(BATCH)

    assert type(caught.value) is ExtractionError and not caught.value.repeats
    assert "a gateway may have answered in its place" in str(caught.value)
    assert API_KEY not in str(caught.value)


async def test_the_client_is_built_lazily_and_rebuilt_after_aclose(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    assert (await claude.extract(BATCH)).facts == EXPECTED
    await claude.aclose()
    assert (await claude.extract(BATCH)).facts == EXPECTED
    assert len(server.requests) == 2


async def test_known_entries_reach_the_server_and_same_comes_back(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    result = await claude.extract(KNOWN_BATCH)

    assert result.facts == (
        ExtractedFact("User said: I live in Oslo.", ("m-1",), "same", "e-said"),
        EXPECTED[1],
    )
    (request,) = server.requests
    assert request.known == [
        {"id": f"k{i}", "text": e.text, "since": f"{e.valid_from:%Y-%m-%d}"}
        for i, e in enumerate(KNOWN, 1)
    ]
    assert [m["id"] for m in request.messages] == ["m1", "m2", "m3"]


async def test_update_and_invalidate_over_http(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    server.enqueue_facts(
        [
            {
                "text": "User lives in Oslo.",
                "source_message_ids": ["m1"],
                "action": "update",
                "target_entry_id": "k1",
            },
            {
                "text": "User no longer works there.",
                "source_message_ids": ["m3"],
                "action": "invalidate",
                "target_entry_id": "k2",
            },
        ]
    )

    result = await claude.extract(KNOWN_BATCH)

    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("m-1",), "update", "e-said"),
        ExtractedFact("User no longer works there.", ("m-3",), "invalidate", "e-job"),
    )


async def test_a_target_outside_the_known_entries_is_passed_on_over_http(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    server.enqueue_facts(
        [
            {
                "text": "User lives in Oslo.",
                "source_message_ids": ["m1"],
                "action": "update",
                "target_entry_id": "e-404",
            }
        ]
    )

    (fact,) = (await claude.extract(KNOWN_BATCH)).facts
    assert fact == ExtractedFact("User lives in Oslo.", ("m-1",), "update", "e-404")
    assert len(server.requests) == 1


async def test_without_known_entries_the_prompt_lists_none(
    server: MessagesAPIServer, claude: ClaudeExtractor
) -> None:
    assert (await claude.extract(BATCH)).facts == EXPECTED
    (request,) = server.requests
    assert request.known == []


@pytest.mark.parametrize("around", ["\n", " ", "\t"])
async def test_a_key_with_whitespace_around_it_is_sent_without_it(
    server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, around: str
) -> None:
    """A key read from a file keeps its newline, which no HTTP header may hold: it is sent
    without the whitespace around it, where every call failed as if the API were
    unreachable ("APIConnectionError: LocalProtocolError"), nothing saying to fix the key."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY + around)
    extractor = ClaudeExtractor(timeout=5.0, max_retries=0)
    try:
        assert (await extractor.extract(BATCH)).facts == EXPECTED
    finally:
        await extractor.aclose()
    (request,) = server.requests
    sent = {k.lower(): v for k, v in request.headers.items()}
    assert sent.get("x-api-key", sent.get("authorization", "")).removeprefix("Bearer ") == API_KEY


async def test_the_client_is_built_off_the_extraction_loop_before_a_batchs_deadline(
    server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Building the SDK client (a TLS context, hundreds of milliseconds) happens in a
    thread before the first batch's timeout starts: it used to run on the extraction
    loop, blocking it and charged against that batch's deadline, so a short
    ``extraction_timeout`` failed a healthy batch that had sent nothing."""
    built: list[tuple[str, float | None]] = []
    real = claude_module._build_client

    def recording(max_retries: int) -> Any:
        built.append((threading.current_thread().name, extraction_deadline.get()))
        return real(max_retries)

    monkeypatch.setattr(claude_module, "_build_client", recording)
    config = MemoryConfig(db_path=str(tmp_path / "m.db"))
    async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0), embedder=False) as m:
        await m.add_exchange("ann", "I live in Oslo.", "ok")
        await m.process("ann")
    assert len(built) == 1
    (thread, deadline), *_ = built
    assert thread != "memvee-extraction" and deadline is None
    assert len(server.requests) == 1
