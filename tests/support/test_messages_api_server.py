"""The stand-in Messages API's faults, limits, cache usage and Message Batches API, driven
through the real ``anthropic.AsyncAnthropic`` client over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message

from tests.support import messages_api_server
from tests.support.messages_api_server import (
    BATCHES_PATH,
    CACHE_TTL_SECONDS,
    MESSAGES_PATH,
    MessagesAPIServer,
    RecordedRequest,
    ScriptedResponse,
    cache_prefix_tokens,
    default_answer,
    empty_body,
    error_body,
    estimate_tokens,
    fault_when,
    prompt_known_entries,
    prompt_messages,
    refusal_body,
    text_body,
    truncated_tool_body,
)

MODEL = "claude-sonnet-5-5"
"""A model the SDK does not warn about (it flags claude-sonnet-4-5 as deprecated)."""

LONG_SYSTEM = "You keep the long-term memory of an assistant about one user. " * 80
"""System text well over 1024 estimated tokens (about 5,000 characters)."""


def prompt(*contents: str, known: tuple[str, ...] = ()) -> str:
    """A user turn in the engine's compact format: one JSON object per line."""
    messages = ",\n".join(
        json.dumps({"id": f"m{i}", "role": "user", "content": c}, separators=(",", ":"))
        for i, c in enumerate(contents, 1)
    )
    entries = ",\n".join(
        json.dumps({"id": f"k{i}", "text": t}, separators=(",", ":"))
        for i, t in enumerate(known, 1)
    )
    return (
        f"<known_entries>\n[\n{entries}\n]\n</known_entries>\n"
        f"<messages>\n[\n{messages}\n]\n</messages>\nRecord the facts."
    )


def params(*contents: str, system: Any = None) -> dict[str, Any]:
    """Messages API parameters for one extraction call over ``contents``."""
    made: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": prompt(*contents)}],
    }
    if system is not None:
        made["system"] = system
    return made


def cached_system(text: str = LONG_SYSTEM) -> list[dict[str, Any]]:
    """A system prompt whose one block asks for prompt caching."""
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as running:
        yield running


@pytest.fixture
async def client(server: MessagesAPIServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=server.base_url, max_retries=0, timeout=5.0
    ) as made:
        yield made


async def create(client: anthropic.AsyncAnthropic, *contents: str, **kw: Any) -> Message:
    """One Messages API call over ``contents``."""
    answer: Message = await client.messages.create(**params(*contents, **kw))
    return answer


# Connections.


async def test_every_connection_it_accepts_sends_small_answers_at_once(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nagle's algorithm is off (TCP_NODELAY), as on ``memvee serve``: with it on, a
    kept-alive client's delayed acknowledgement held each answer's body back for 40 ms, which
    made a test of a hundred Message Batches calls wait seconds for nothing."""
    nodelay: list[int] = []
    accept = messages_api_server._Handler.setup

    def setup(handler: messages_api_server._Handler) -> None:
        accept(handler)
        nodelay.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(messages_api_server._Handler, "setup", setup)
    await create(client, "hello")
    await create(client, "hello again")

    assert nodelay, "the call went through a connection the stand-in accepted"
    assert all(nodelay), nodelay


# Connection faults.


async def test_a_reset_raises_a_connection_error_and_the_next_call_works(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(reset=True)

    with pytest.raises(anthropic.APIConnectionError):
        await create(client, "hello")

    assert (await create(client, "hello")).stop_reason == "tool_use"
    assert len(server.requests) == 2


async def test_a_truncated_body_raises_a_connection_error(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(truncate_at=12)

    with pytest.raises(anthropic.APIConnectionError):
        await create(client, "hello")


async def test_a_truncated_scripted_error_body_also_fails(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(529, error_body("overloaded_error", "Overloaded"), truncate_at=5)

    with pytest.raises(anthropic.APIError):
        await create(client, "hello")


async def test_a_slow_answer_times_out(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(delay=2)

    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.1).messages.create(**params("hello"))


async def test_a_gateway_html_page_is_a_server_error(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(502, b"<html><body>502 Bad Gateway</body></html>")

    with pytest.raises(anthropic.InternalServerError) as caught:
        await create(client, "hello")

    assert caught.value.status_code == 502
    assert caught.value.response.headers["content-type"].startswith("text/html")


# Size limits.


async def test_a_body_over_max_request_bytes_gets_413() -> None:
    with MessagesAPIServer(max_request_bytes=2000) as server:
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=server.base_url, max_retries=0
        ) as client:
            assert (await create(client, "short")).stop_reason == "tool_use"
            with pytest.raises(anthropic.ContentTooLargeError) as caught:
                await create(client, "x" * 3000)

    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert len(server.requests) == 2


async def test_a_prompt_over_max_prompt_tokens_gets_400_with_the_count() -> None:
    with MessagesAPIServer(max_prompt_tokens=500) as server:
        server.enqueue_error(500)  # a rejected request takes no scripted answer
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=server.base_url, max_retries=0
        ) as client:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await create(client, "y" * 4000)
            with pytest.raises(anthropic.InternalServerError):
                await create(client, "short")

    (too_long, _) = server.requests
    tokens = estimate_tokens(too_long.body)
    assert tokens > 1000
    assert f"prompt is too long: {tokens} tokens > 500 maximum" in str(caught.value)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# Prompt caching.


async def test_the_first_cached_request_writes_and_the_next_reads(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    first = await create(client, "one", system=cached_system())
    second = await create(client, "two", system=cached_system())

    prefix = cache_prefix_tokens(server.requests[0].body)
    assert prefix >= 1024
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.input_tokens == estimate_tokens(server.requests[1].body) - prefix
    assert (server.cache_writes, server.cache_reads) == (1, 1)


async def test_no_cache_control_or_a_short_prefix_caches_nothing(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    plain = await create(client, "one", system=LONG_SYSTEM)
    short = await create(client, "two", system=cached_system("Be brief."))
    again = await create(client, "three", system=cached_system("Be brief."))

    for answer in (plain, short, again):
        assert answer.usage.cache_creation_input_tokens == 0
        assert answer.usage.cache_read_input_tokens == 0
    assert plain.usage.input_tokens == estimate_tokens(server.requests[0].body)
    assert (server.cache_writes, server.cache_reads) == (0, 0)


async def test_another_prefix_writes_again_and_an_expired_one_is_rewritten() -> None:
    clock = FakeClock()
    with MessagesAPIServer(clock=clock) as server:
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=server.base_url, max_retries=0
        ) as client:
            await create(client, "one", system=cached_system())
            other = await create(client, "one", system=cached_system(LONG_SYSTEM + "More."))
            clock.now += CACHE_TTL_SECONDS - 1
            read = await create(client, "two", system=cached_system())
            clock.now += CACHE_TTL_SECONDS + 1
            rewritten = await create(client, "three", system=cached_system())

    assert other.usage.cache_creation_input_tokens
    assert read.usage.cache_read_input_tokens  # the read refreshed the TTL
    assert rewritten.usage.cache_creation_input_tokens
    assert (server.cache_writes, server.cache_reads) == (3, 1)


# Body builders.


async def test_refusal_text_empty_and_truncated_bodies_parse_as_messages(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.enqueue(body=refusal_body(model=MODEL))
    server.enqueue(body=text_body("I cannot find any facts.", model=MODEL))
    server.enqueue(body=empty_body(model=MODEL))
    server.enqueue(body=truncated_tool_body({"facts": [{"text": "User li"}]}, model=MODEL))

    refusal, text, empty, truncated = [await create(client, "hello") for _ in range(4)]

    assert refusal.stop_reason == "refusal"
    assert refusal.stop_details is not None and refusal.stop_details.type == "refusal"
    assert not [b for b in refusal.content if b.type == "tool_use"]
    assert text.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in text.content] == [
        ("text", "I cannot find any facts.")
    ]
    assert (empty.stop_reason, empty.content) == ("end_turn", [])
    assert truncated.stop_reason == "max_tokens"
    (block,) = truncated.content
    assert block.type == "tool_use" and block.input == {"facts": [{"text": "User li"}]}
    for answer in (refusal, text, empty, truncated):
        assert answer.usage.input_tokens > 0
        assert answer.usage.cache_read_input_tokens == 0


# Choosing faults.


async def test_fault_when_hits_only_batches_with_the_marker(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.set_responder(
        fault_when("POISON", ScriptedResponse(500, error_body("api_error", "boom")))
    )

    ok = await create(client, "fine")
    with pytest.raises(anthropic.InternalServerError, match="boom"):
        await create(client, "fine", "this is POISON")

    assert ok.stop_reason == "tool_use"
    assert len(server.requests) == 2


async def test_fault_when_takes_a_function_and_a_fallback_and_can_reset(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    seen: list[str] = []

    def refuse(request: RecordedRequest) -> ScriptedResponse:
        seen.append(request.messages[0]["id"])
        return ScriptedResponse(body=refusal_body(model=MODEL))

    def drop(request: RecordedRequest) -> ScriptedResponse:
        return ScriptedResponse(reset=True)

    server.set_responder(fault_when("RST", drop, otherwise=fault_when("NO", refuse)))

    assert (await create(client, "NO thanks")).stop_reason == "refusal"
    assert (await create(client, "hello")).stop_reason == "tool_use"
    with pytest.raises(anthropic.APIConnectionError):
        await create(client, "RST now")
    server.set_responder(default_answer)
    assert (await create(client, "RST again")).stop_reason == "tool_use"
    assert seen == ["m1"]


async def test_a_failing_responder_answers_500_naming_the_error(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    def broken(request: RecordedRequest) -> ScriptedResponse:
        raise KeyError("content")

    server.set_responder(broken)

    with pytest.raises(anthropic.InternalServerError, match="stand-in responder failed"):
        await create(client, "hello")


# Prompt parsing.


def test_the_prompt_listings_parse_in_every_layout() -> None:
    compact = {"messages": [{"role": "user", "content": prompt("a", "b", known=("k",))}]}
    lines = (
        "<messages>\n"
        '{"id":"m1","role":"user","content":"says \\"</messages>\\" here"}\n'
        '{"id":"m2","role":"user","content":"b"}\n'
        "</messages>"
    )
    blocks = {"messages": [{"role": "user", "content": [{"type": "text", "text": lines}]}]}

    assert [m["id"] for m in prompt_messages(compact)] == ["m1", "m2"]
    assert prompt_known_entries(compact) == [{"id": "k1", "text": "k"}]
    assert [m["content"] for m in prompt_messages(blocks)] == ['says "</messages>" here', "b"]
    assert prompt_known_entries(blocks) == []
    assert prompt_messages({"messages": [{"role": "user", "content": "no tags"}]}) == []
    with pytest.raises(ValueError):
        prompt_messages({"messages": [{"role": "user", "content": "<messages>[{]</messages>"}]})


# Message Batches.


def batch_requests(*contents: str) -> list[Any]:
    """One batch request per content, with custom ids "r1", "r2", ..."""
    return [{"custom_id": f"r{i}", "params": params(c)} for i, c in enumerate(contents, 1)]


async def test_a_batch_runs_from_create_to_results_keyed_by_custom_id(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    server.set_responder(
        fault_when("BAD", ScriptedResponse(529, error_body("overloaded_error", "Overloaded")))
    )

    created = await client.messages.batches.create(
        requests=batch_requests("I live in Oslo.", "BAD input", "I like tea.")
    )
    polled = await client.messages.batches.retrieve(created.id)
    ended = await client.messages.batches.retrieve(created.id)
    results = [r async for r in await client.messages.batches.results(created.id)]

    assert created.id == "msgbatch_standin_1"
    assert created.processing_status == polled.processing_status == "in_progress"
    assert created.request_counts.processing == 3 and created.results_url is None
    assert ended.processing_status == "ended" and ended.ended_at is not None
    assert ended.results_url == f"{server.base_url}{BATCHES_PATH}/{created.id}/results"
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (2, 1)
    assert [r.custom_id for r in results] == ["r3", "r2", "r1"]
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["r1"].type == "succeeded"
    assert [f["text"] for f in by_id["r1"].message.content[0].input["facts"]] == [  # type: ignore[union-attr]
        "User said: I live in Oslo."
    ]
    assert by_id["r2"].type == "errored"
    assert by_id["r2"].error.error.type == "overloaded_error"
    (batch,) = server.batches
    assert batch["id"] == created.id
    assert [r["custom_id"] for r in batch["requests"]] == ["r1", "r2", "r3"]
    assert batch["retrievals"] == server.batch_retrievals == 3  # results() retrieves too
    assert server.requests == []  # batch requests are not Messages API calls
    assert [r.path for r in server.all_requests][:2] == [
        BATCHES_PATH,
        f"{BATCHES_PATH}/{created.id}",
    ]


async def test_batch_requests_take_scripted_answers_and_prompt_limits() -> None:
    with MessagesAPIServer(batch_polls=0, max_prompt_tokens=400) as server:
        server.enqueue_error(500, "api_error", "scripted")
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=server.base_url, max_retries=0
        ) as client:
            created = await client.messages.batches.create(
                requests=batch_requests("a", "b", "z" * 2000)
            )
            results = {
                r.custom_id: r.result
                async for r in await client.messages.batches.results(created.id)
            }

    assert results["r1"].type == "errored" and results["r1"].error.error.message == "scripted"
    assert results["r2"].type == "succeeded"
    assert results["r3"].type == "errored"
    assert "prompt is too long" in results["r3"].error.error.message


async def test_batch_requests_over_the_context_window_or_a_body_limit_carry_the_apis_errors() -> (
    None
):
    """Each shape the API errors a request of a batch with for its size: a prompt over
    the window, a prompt and ``max_tokens`` over it, a body over the request limit."""
    prompt_over = MessagesAPIServer(batch_polls=0, max_prompt_tokens=400)
    output_over = MessagesAPIServer(batch_polls=0, max_prompt_tokens=600, counts_max_tokens=True)
    body_over = MessagesAPIServer(batch_polls=0, max_request_bytes=3000)
    told: list[tuple[str, str]] = []
    for server, content in (
        (prompt_over, "z" * 2000),
        (output_over, "z" * 1800),
        (body_over, "z" * 3000),
    ):
        with server:
            async with anthropic.AsyncAnthropic(
                api_key="sk-test", base_url=server.base_url, max_retries=0
            ) as client:
                created = await client.messages.batches.create(
                    requests=batch_requests("short", content)
                )
                results = {
                    r.custom_id: r.result
                    async for r in await client.messages.batches.results(created.id)
                }
        assert results["r1"].type == "succeeded"
        assert results["r2"].type == "errored"
        told.append((results["r2"].error.error.type, results["r2"].error.error.message))

    (prompt, output, body) = told
    assert prompt[0] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 400 maximum", prompt[1])
    assert output[0] == "invalid_request_error"
    assert re.fullmatch(
        r"input length and `max_tokens` exceed context limit: \d+ \+ \d+ > 600, decrease "
        r"input length or `max_tokens` and try again",
        output[1],
    )
    assert body[0] == "request_too_large"
    assert body[1].startswith("Request exceeds the maximum allowed number of bytes")


async def test_a_batch_body_over_max_batch_bytes_gets_413_and_is_not_made() -> None:
    with MessagesAPIServer(max_batch_bytes=3000) as server:
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=server.base_url, max_retries=0
        ) as client:
            with pytest.raises(anthropic.ContentTooLargeError) as caught:
                await client.messages.batches.create(requests=batch_requests("x" * 3000))
            created = await client.messages.batches.create(requests=batch_requests("short"))

    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert [b["id"] for b in server.batches] == [created.id]


async def test_a_canceled_batch_ends_with_every_request_canceled(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    created = await client.messages.batches.create(requests=batch_requests("a", "b"))

    canceling = await client.messages.batches.cancel(created.id)
    ended = await client.messages.batches.retrieve(created.id)
    results = [r async for r in await client.messages.batches.results(created.id)]

    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert ended.processing_status == "ended"
    assert ended.request_counts.canceled == 2 and ended.request_counts.processing == 0
    assert sorted((r.custom_id, r.result.type) for r in results) == [
        ("r1", "canceled"),
        ("r2", "canceled"),
    ]


async def test_expired_listed_deleted_and_unknown_batches(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    created = await client.messages.batches.create(requests=batch_requests("a"))
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.delete(created.id)

    server.expire_batch(created.id)
    expired = await client.messages.batches.retrieve(created.id)
    listed = [b.id async for b in client.messages.batches.list()]
    results = [r.result.type async for r in await client.messages.batches.results(created.id)]
    deleted = await client.messages.batches.delete(created.id)

    assert expired.request_counts.expired == 1
    assert listed == [created.id]
    assert results == ["expired"]
    assert deleted.id == created.id
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(created.id)
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.create(requests=[])


async def test_results_before_the_batch_ends_are_refused(
    server: MessagesAPIServer, client: anthropic.AsyncAnthropic
) -> None:
    created = await client.messages.batches.create(requests=batch_requests("a"))

    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        await client.messages.batches.results(created.id)  # the first retrieval: in progress

    assert server.batches[0]["processing_status"] == "in_progress"
    assert MESSAGES_PATH not in [r.path for r in server.all_requests]
