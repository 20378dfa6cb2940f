"""ClaudeExtractor on a real AsyncAnthropic client over an in-process mock transport."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import numpy as np
import pytest
from anthropic._data import DEPRECATED_MODELS

import memvee.extractors._claude as claude_module
from actors import harmless_request
from events.errors import (
    EveryRequestRefusedError,
    ExtractionError,
    ExtractorOverloadedError,
    InvalidExtractionError,
    InvalidInputError,
    OversizedMessageError,
    ProbeFailedError,
    RejectedBatchError,
)
from events.extraction import (
    FACT_ACTIONS,
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    Extractor,
    KnownEntry,
    TokenUsage,
)
from memvee.extractors import DEFAULT_MODEL, MODEL_ENV_VAR, ClaudeExtractor, ProbeResult
from tests.support.messages_api_server import (
    error_body,
    prompt_known_entries,
    prompt_messages,
    refusal_body,
    tool_use_body,
)

API_KEY = "sk-ant-test-DO-NOT-LEAK-0123456789abcdef"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BATCH = ExtractionBatch(
    user_id="u1",
    task_id="t1",
    messages=(
        BatchMessage("msg-1", "user", "I work at Acme Corp.", T0),
        BatchMessage("msg-2", "assistant", "Nice! What do you do there?", T0),
        BatchMessage("msg-3", "user", "I'm an engineer. Also, I live in Oslo.", T0),
    ),
)
T_KNOWN = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
KNOWN = (
    KnownEntry("e-city", "User lives in Bergen.", T_KNOWN),
    KnownEntry("e-job", "User works at Acme Corp.", T_KNOWN),
    KnownEntry("e-pet", "User has a cat named <Miso>.", T_KNOWN),
)
KNOWN_BATCH = ExtractionBatch(
    user_id="u1",
    task_id="t2",
    messages=(
        BatchMessage("msg-1", "user", "I still work at Acme.", T0),
        BatchMessage("msg-2", "user", "We moved to Oslo last month.", T0),
        BatchMessage("msg-3", "user", "Sadly Miso passed away.", T0),
    ),
    known=KNOWN,
)
GOOD_FACTS = [
    {"text": "User works at Acme Corp.", "source_message_ids": ["msg-1"]},
    {"text": "User is an engineer.", "source_message_ids": ["msg-3"]},
    {"text": "User lives in Oslo.", "source_message_ids": ["msg-3"]},
]

Step = httpx2.Response | Exception | Callable[[], Awaitable[httpx2.Response]]


class FakeAPI:
    """A scripted Messages endpoint: one step per request, the last step repeats."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx2.Request] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx2.Response):
            return step
        return await step()


def ok(facts: object = GOOD_FACTS, **kw: Any) -> httpx2.Response:
    return httpx2.Response(200, json=tool_use_body(facts, **kw))


def fail(
    status: int, error_type: str, message: str = "scripted", **headers: str
) -> httpx2.Response:
    return httpx2.Response(status, json=error_body(error_type, message), headers=headers)


FAST_RETRY = {"retry-after-ms": "1"}


@pytest.fixture
async def clients() -> AsyncIterator[list[anthropic.AsyncAnthropic]]:
    made: list[anthropic.AsyncAnthropic] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
def claude(
    clients: list[anthropic.AsyncAnthropic],
) -> Callable[..., ClaudeExtractor]:
    def make(api: FakeAPI, *, max_retries: int = 2, **kw: Any) -> ClaudeExtractor:
        client = anthropic.AsyncAnthropic(
            api_key=API_KEY,
            max_retries=max_retries,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(api)),
        )
        clients.append(client)
        return ClaudeExtractor(client=client, **kw)

    return make


Make = Callable[..., ClaudeExtractor]


async def test_happy_path_turns_the_tool_call_into_facts(claude: Make) -> None:
    api = FakeAPI(ok(model="claude-sonnet-5-5-20990101", input_tokens=321, output_tokens=45))
    result = await claude(api, model="claude-sonnet-5-5").extract(BATCH)

    assert result.facts == (
        ExtractedFact("User works at Acme Corp.", ("msg-1",)),
        ExtractedFact("User is an engineer.", ("msg-3",)),
        ExtractedFact("User lives in Oslo.", ("msg-3",)),
    )
    assert result.extractor == "claude"
    assert result.model == "claude-sonnet-5-5-20990101"
    assert (result.input_tokens, result.output_tokens) == (321, 45)
    assert len(api.requests) == 1


async def test_the_request_forces_the_tool_and_lists_every_message(claude: Make) -> None:
    api = FakeAPI(ok())
    await claude(api, model="claude-haiku-5-5", max_tokens=700).extract(BATCH)

    (request,) = api.requests
    body = api.bodies[0]
    assert request.url.path == "/v1/messages"
    assert API_KEY in (
        request.headers.get("authorization", "") + request.headers.get("x-api-key", "")
    )
    assert body["model"] == "claude-haiku-5-5"
    assert body["max_tokens"] == 700, "the output budget is capped by max_tokens"
    (tool,) = body["tools"]
    assert tool["name"] == "record_knowledge"
    fact_schema = tool["input_schema"]["properties"]["facts"]["items"]
    assert fact_schema["properties"]["text"]["type"] == "string"
    assert fact_schema["properties"]["source_message_ids"]["items"] == {"type": "string"}
    assert fact_schema["required"] == ["text", "source_message_ids"]
    assert body["tool_choice"]["type"] == "tool"
    assert body["tool_choice"]["name"] == "record_knowledge"
    listed = prompt_messages(body)
    assert [m["id"] for m in listed] == ["m1", "m2", "m3"], "short aliases, not message ids"
    assert [m["content"] for m in listed] == [m.content for m in BATCH.messages]
    assert [m["role"] for m in listed] == ["user", "assistant", "user"]
    assert {m["at"] for m in listed} == {"2025-03-01T12:00Z"}
    assert not any(m.message_id in json.dumps(body) for m in BATCH.messages)


async def test_numpy_numbers_are_taken_for_settings_and_sent_as_pythons(claude: Make) -> None:
    """A numpy integer was refused for max_tokens ("must be an int, not int64") while a
    numpy float was taken for timeout: any integer is a count and any real a timeout."""
    api = FakeAPI(ok())
    extractor = claude(api, max_tokens=np.int64(700), timeout=np.float32(5))
    assert (extractor.max_tokens, extractor.timeout) == (700, 5.0)
    assert (type(extractor.max_tokens), type(extractor.timeout)) == (int, float)
    await extractor.extract(BATCH)
    assert api.bodies[0]["max_tokens"] == 700
    retries = ClaudeExtractor(max_retries=np.int64(0)).max_retries
    assert (retries, type(retries)) == (0, int)
    # numpy's float64 is a float subclass, which was kept as numpy's
    timeout = ClaudeExtractor(timeout=np.float64(5)).timeout
    assert (timeout, type(timeout)) == (5.0, float)


async def test_the_output_budget_grows_with_the_batch() -> None:
    extractor = ClaudeExtractor(max_tokens=4_000)
    one = ExtractionBatch("u", "t", BATCH.messages[:1])
    assert extractor.output_budget(one) < extractor.output_budget(BATCH) <= 4_000
    many = ExtractionBatch("u", "t", BATCH.messages * 30)
    assert extractor.output_budget(many) == 4_000


async def test_the_prompt_spends_little_beyond_the_words(claude: Make) -> None:
    api = FakeAPI(ok([]))
    doubled = ExtractionBatch("u1", "t3", KNOWN_BATCH.messages * 2, KNOWN)
    await claude(api).extract(KNOWN_BATCH)
    await claude(api).extract(doubled)
    short, long = (_user_prompt(b) for b in api.bodies)
    added = len(KNOWN_BATCH.messages)
    words = sum(len(m.content) for m in KNOWN_BATCH.messages)
    per_message = (len(long) - len(short) - words) / added
    assert per_message < 70, "no UUIDs, microsecond times or indented JSON (was 141)"


async def test_aliases_in_the_answer_map_back_to_message_and_entry_ids(claude: Make) -> None:
    facts = [
        {
            "text": "User lives in Oslo.",
            "source_message_ids": ["m2", " m2"],
            "action": "update",
            "target_entry_id": "k1",
        },
        {"text": "User likes cats.", "source_message_ids": ["m3", "m9"]},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)
    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("msg-2",), "update", "e-city"),
        ExtractedFact("User likes cats.", ("msg-3", "m9")),
    ), "an unknown alias is passed on as given, for the engine to drop"


async def test_duplicate_facts_are_merged_with_all_their_citations(claude: Make) -> None:
    facts = [
        {"text": "User lives in Oslo.", "source_message_ids": ["msg-1"]},
        {"text": "User lives in  Oslo. ", "source_message_ids": ["msg-3", "msg-1"]},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(BATCH)
    assert result.facts == (ExtractedFact("User lives in Oslo.", ("msg-1", "msg-3")),)


async def test_no_facts_is_a_valid_answer(claude: Make) -> None:
    result = await claude(FakeAPI(ok([]))).extract(BATCH)
    assert result.facts == ()


async def test_an_empty_batch_makes_no_call(claude: Make) -> None:
    api = FakeAPI(ok())
    result = await claude(api).extract(ExtractionBatch("u1", "t1", ()))
    assert result.facts == ()
    assert api.requests == []


async def test_what_an_answer_means_is_passed_on_for_the_engine_to_repair(claude: Make) -> None:
    facts = [
        {"text": "User lives in Oslo.", "source_message_ids": ["msg-3", "msg-404"]},
        {"text": "User is new.", "source_message_ids": ["m1"], "target_entry_id": "k9"},
        {"text": "User moved.", "source_message_ids": ["m1"], "action": "update"},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(BATCH)
    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("msg-3", "msg-404")),
        ExtractedFact("User is new.", ("msg-1",), "new", "k9"),
        ExtractedFact("User moved.", ("msg-1",), "update", None),
    )


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ("User lives in Oslo.", "'facts' must be a list"),
        (None, "'facts' must be a list"),
        (["User lives in Oslo."], r"facts\[0\] must be an object"),
        ([{"source_message_ids": ["msg-1"]}], r"facts\[0\].text"),
        ([{"text": 42, "source_message_ids": ["msg-1"]}], r"facts\[0\].text"),
        ([{"text": "User is."}], r"facts\[0\].source_message_ids"),
        ([{"text": "User is.", "source_message_ids": []}], r"facts\[0\].source_message_ids"),
        ([{"text": "User is.", "source_message_ids": "msg-1"}], r"facts\[0\].source_message_ids"),
        ([{"text": "User is.", "source_message_ids": [1]}], r"facts\[0\].source_message_ids"),
    ],
)
async def test_a_schema_break_is_invalid(claude: Make, facts: object, problem: str) -> None:
    with pytest.raises(InvalidExtractionError, match=problem):
        await claude(FakeAPI(ok(facts))).extract(BATCH)


async def test_tool_input_that_is_not_an_object_is_invalid(claude: Make) -> None:
    body = tool_use_body([])
    body["content"][0]["input"] = ["not", "an", "object"]
    with pytest.raises(InvalidExtractionError, match="expected an object"):
        await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)


async def test_an_answer_without_the_tool_call_is_invalid(claude: Make) -> None:
    body = tool_use_body([])
    body["content"] = [{"type": "text", "text": "I'd rather not."}]
    body["stop_reason"] = "end_turn"
    with pytest.raises(InvalidExtractionError, match="without calling record_knowledge"):
        await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)


async def test_a_call_of_another_tool_is_invalid(claude: Make) -> None:
    body = tool_use_body(GOOD_FACTS, tool_name="something_else")
    with pytest.raises(InvalidExtractionError, match="without calling record_knowledge"):
        await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(529, "overloaded_error"), (500, "api_error"), (429, "rate_limit_error")],
)
async def test_retryable_errors_are_retried_by_the_sdk(
    claude: Make, status: int, error_type: str
) -> None:
    api = FakeAPI(
        fail(status, error_type, **FAST_RETRY), fail(status, error_type, **FAST_RETRY), ok()
    )
    result = await claude(api, max_retries=2).extract(BATCH)
    assert len(result.facts) == 3
    assert len(api.requests) == 3


async def test_sdk_backoff_without_retry_after_still_succeeds(claude: Make) -> None:
    api = FakeAPI(fail(529, "overloaded_error"), ok())
    result = await claude(api, max_retries=1).extract(BATCH)
    assert len(result.facts) == 3
    assert len(api.requests) == 2


async def test_retries_exhausted_is_an_extraction_error_with_the_status(claude: Make) -> None:
    api = FakeAPI(fail(529, "overloaded_error", "Overloaded", **FAST_RETRY))
    with pytest.raises(ExtractionError, match="HTTP 529") as caught:
        await claude(api, max_retries=2).extract(BATCH)
    assert not isinstance(caught.value, InvalidExtractionError)
    assert isinstance(caught.value, ExtractorOverloadedError), "never a message's fault"
    assert "OverloadedError" in str(caught.value)
    assert "overloaded_error" in str(caught.value)
    assert len(api.requests) == 3


async def test_401_is_not_retried(claude: Make) -> None:
    api = FakeAPI(fail(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(ExtractionError, match="HTTP 401") as caught:
        await claude(api, max_retries=2).extract(BATCH)
    assert "AuthenticationError" in str(caught.value)
    assert len(api.requests) == 1


async def test_a_read_timeout_is_an_extraction_error(claude: Make) -> None:
    api = FakeAPI(httpx2.ReadTimeout("read timed out"))
    with pytest.raises(ExtractionError, match="timed out") as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert "APITimeoutError" in str(caught.value)


async def test_a_connection_failure_is_an_extraction_error(claude: Make) -> None:
    api = FakeAPI(httpx2.ConnectError("connection refused"))
    with pytest.raises(ExtractionError, match="APIConnectionError"):
        await claude(api, max_retries=0).extract(BATCH)


async def test_our_timeout_bounds_a_slow_answer(claude: Make) -> None:
    async def slow() -> httpx2.Response:
        await asyncio.sleep(30)
        return ok()

    started = time.monotonic()
    with pytest.raises(ExtractionError, match=r"timed out after 0\.2s"):
        await claude(FakeAPI(slow), timeout=0.2).extract(BATCH)
    assert time.monotonic() - started < 20, "the 30 s answer was not waited for"


@pytest.mark.parametrize("wait", ["30", "3600"])
async def test_a_retry_after_that_would_outlast_our_timeout_fails_at_once_with_its_wait(
    claude: Make, wait: str
) -> None:
    """The SDK would sleep through the whole timeout (it obeys any retry-after) and the
    call end as a timeout; the 429 is told at once, its wait kept for the next run."""
    api = FakeAPI(fail(429, "rate_limit_error", **{"retry-after": wait}), ok())
    started = time.monotonic()
    with pytest.raises(ExtractionError, match="HTTP 429") as caught:
        await claude(api, timeout=30, max_retries=2).extract(BATCH)
    assert time.monotonic() - started < 20, "neither the wait nor our timeout was slept"
    assert caught.value.retry_after == float(wait) and not caught.value.repeats
    assert not isinstance(caught.value, ExtractorOverloadedError), "it may be the batch's"
    assert len(api.requests) == 1


async def test_a_retry_after_within_our_timeout_is_waited_for_and_retried(claude: Make) -> None:
    api = FakeAPI(fail(429, "rate_limit_error", **{"retry-after-ms": "300"}), ok())
    started = time.monotonic()
    result = await claude(api, timeout=10, max_retries=2).extract(BATCH)
    assert len(result.facts) == 3 and len(api.requests) == 2
    assert time.monotonic() - started >= 0.3


async def test_the_api_key_never_reaches_errors_or_logs(
    claude: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures: list[ExtractionError] = []
    scenarios: list[tuple[FakeAPI, dict[str, Any]]] = [
        (FakeAPI(fail(401, "authentication_error", "invalid x-api-key")), {}),
        (FakeAPI(fail(400, "invalid_request_error", f"bad key {API_KEY}")), {}),
        (FakeAPI(fail(500, "api_error", **FAST_RETRY)), {"max_retries": 1}),
        (FakeAPI(httpx2.ReadTimeout("slow")), {"max_retries": 0}),
        (FakeAPI(httpx2.ConnectError("refused")), {"max_retries": 0}),
        (FakeAPI(ok([{"text": "x", "source_message_ids": "nope"}])), {}),
    ]
    for api, kw in scenarios:
        with pytest.raises(ExtractionError) as caught:
            await claude(api, **kw).extract(BATCH)
        failures.append(caught.value)
        assert api.requests, "the scenario must reach the API"

    for failure in failures:
        assert API_KEY not in str(failure)
        assert API_KEY not in repr(failure)
        assert API_KEY not in "".join(traceback.format_exception(failure))
    assert "[redacted]" in str(failures[1])
    assert caplog.records, "the SDK logs at debug level; the check must see them"
    assert API_KEY not in caplog.text
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


async def test_a_part_of_the_key_an_api_echoes_never_reaches_an_error(claude: Make) -> None:
    """A gateway that says which key it refused ("sk-ant-...-Ab12...") shows enough of it."""
    echoed = f"Incorrect API key provided: {API_KEY[:20]}...{API_KEY[-6:]}"
    api = FakeAPI(fail(401, "authentication_error", echoed))
    with pytest.raises(ExtractionError) as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert API_KEY[:20] not in str(caught.value) and "Incorrect API key provided" in str(
        caught.value
    )


def test_model_comes_from_the_argument_then_the_env_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    assert ClaudeExtractor().model == DEFAULT_MODEL
    monkeypatch.setenv(MODEL_ENV_VAR, "claude-haiku-5-5")
    assert ClaudeExtractor().model == "claude-haiku-5-5"
    assert ClaudeExtractor(model="claude-opus-5-5").model == "claude-opus-5-5"


async def test_the_default_model_is_not_deprecated(claude: Make) -> None:
    assert DEFAULT_MODEL not in DEPRECATED_MODELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        await claude(FakeAPI(ok()), model=DEFAULT_MODEL).extract(BATCH)


@pytest.mark.parametrize(
    "kw", [{"timeout": 0}, {"timeout": -1.0}, {"max_retries": -1}, {"max_tokens": 0}]
)
def test_bad_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        ClaudeExtractor(**kw)


async def test_a_client_passed_in_stays_open_after_aclose(
    clients: list[anthropic.AsyncAnthropic], claude: Make
) -> None:
    extractor = claude(FakeAPI(ok()))
    await extractor.extract(BATCH)
    await extractor.aclose()
    assert not clients[0].is_closed()
    assert isinstance(extractor, Extractor)
    assert extractor.name == "claude"


def _user_prompt(body: dict[str, Any]) -> str:
    (turn,) = body["messages"]
    assert turn["role"] == "user"
    content = turn["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


async def test_known_entries_are_listed_before_the_messages(claude: Make) -> None:
    api = FakeAPI(ok([]))
    await claude(api).extract(KNOWN_BATCH)

    body = api.bodies[0]
    prompt = _user_prompt(body)
    assert prompt.index("<known_entries>") < prompt.index("</known_entries>")
    assert prompt.index("</known_entries>") < prompt.index("<messages>")
    assert "<Miso>" not in prompt, "'<' in an entry must not open a tag"
    assert prompt_known_entries(body) == [
        {"id": f"k{i}", "text": e.text, "since": "2024-06-01"} for i, e in enumerate(KNOWN, 1)
    ]
    assert [m["id"] for m in prompt_messages(body)] == ["m1", "m2", "m3"]
    system = body["system"][0]["text"]
    for action in FACT_ACTIONS:
        assert f'"{action}"' in system
    assert "target_entry_id" in system


async def test_an_ended_entry_is_listed_with_when_it_stopped_being_true(claude: Make) -> None:
    """A backdated batch is shown entries taken back after its first message: the model
    sees until when each held, and the system prompt says what that means."""
    until = datetime(2025, 2, 1, 8, 30, tzinfo=UTC)
    ended = KnownEntry("e-old", "User lives in Oslo.", T_KNOWN, until)
    api = FakeAPI(ok([]))
    await claude(api).extract(replace(KNOWN_BATCH, known=(*KNOWN[:1], ended)))

    body = api.bodies[0]
    assert prompt_known_entries(body) == [
        {"id": "k1", "text": KNOWN[0].text, "since": "2024-06-01"},
        {"id": "k2", "text": ended.text, "since": "2024-06-01", "until": "2025-02-01T08:30Z"},
    ]
    assert '"until"' in body["system"][0]["text"]


async def test_a_batch_without_known_entries_lists_none(claude: Make) -> None:
    api = FakeAPI(ok())
    result = await claude(api).extract(BATCH)

    body = api.bodies[0]
    assert "<known_entries>" not in _user_prompt(body)
    assert "no known entries" in _user_prompt(body)
    assert prompt_known_entries(body) == []
    assert all(f.action == "new" and f.target_entry_id is None for f in result.facts)


async def test_the_tool_schema_offers_action_and_target(claude: Make) -> None:
    api = FakeAPI(ok())
    await claude(api).extract(KNOWN_BATCH)

    fact_schema = api.bodies[0]["tools"][0]["input_schema"]["properties"]["facts"]["items"]
    action = fact_schema["properties"]["action"]
    assert action["type"] == "string"
    assert action["enum"] == ["new", "same", "update", "invalidate"]
    assert action["default"] == "new"
    assert fact_schema["properties"]["target_entry_id"]["type"] == "string"
    assert fact_schema["required"] == ["text", "source_message_ids"]
    assert fact_schema["additionalProperties"] is False


async def test_same_update_and_invalidate_parse_with_their_targets(claude: Make) -> None:
    facts = [
        {
            "text": "User works at Acme Corp.",
            "source_message_ids": ["msg-1"],
            "action": "same",
            "target_entry_id": "e-job",
        },
        {
            "text": "User lives in Oslo.",
            "source_message_ids": ["msg-2"],
            "action": "update",
            "target_entry_id": "e-city",
        },
        {
            "text": "User no longer has a cat named Miso.",
            "source_message_ids": ["msg-3"],
            "action": "invalidate",
            "target_entry_id": "e-pet",
        },
        {"text": "User recently moved.", "source_message_ids": ["msg-2"], "action": "new"},
        {"text": "User is sad about Miso.", "source_message_ids": ["msg-3"]},
        {
            "text": "User misses Miso.",
            "source_message_ids": ["msg-3"],
            "action": None,
            "target_entry_id": None,
        },
    ]
    result = await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)

    assert result.facts == (
        ExtractedFact("User works at Acme Corp.", ("msg-1",), "same", "e-job"),
        ExtractedFact("User lives in Oslo.", ("msg-2",), "update", "e-city"),
        ExtractedFact("User no longer has a cat named Miso.", ("msg-3",), "invalidate", "e-pet"),
        ExtractedFact("User recently moved.", ("msg-2",), "new", None),
        ExtractedFact("User is sad about Miso.", ("msg-3",)),
        ExtractedFact("User misses Miso.", ("msg-3",)),
    )


async def test_duplicates_merge_only_with_the_same_action_and_target(claude: Make) -> None:
    same = {"action": "same", "target_entry_id": "e-job"}
    facts = [
        {"text": "User works at Acme Corp.", "source_message_ids": ["msg-1"], **same},
        {"text": "User works at  Acme Corp.", "source_message_ids": ["msg-2"], **same},
        {"text": "User works at Acme Corp.", "source_message_ids": ["msg-3"]},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)

    assert result.facts == (
        ExtractedFact("User works at Acme Corp.", ("msg-1", "msg-2"), "same", "e-job"),
        ExtractedFact("User works at Acme Corp.", ("msg-3",), "new", None),
    )


async def test_a_change_within_the_messages_names_the_earlier_fact_of_the_answer(
    claude: Make,
) -> None:
    oslo = {"text": "User lives in Oslo.", "source_message_ids": ["msg-2"]}
    facts = [
        {"text": "User works at Acme Corp.", "source_message_ids": ["msg-1"]},
        oslo,
        {**oslo, "source_message_ids": ["msg-1"]},  # merged into the second fact
        {
            "text": "User lives in Bergen.",
            "source_message_ids": ["msg-3"],
            "action": "update",
            "target_entry_id": "f3",  # the repeat of Oslo: the merged fact, now the second
        },
        {
            "text": "User no longer works at Acme Corp.",
            "source_message_ids": ["msg-3"],
            "action": "invalidate",
            "target_entry_id": "f1",
        },
        {
            "text": "User likes f9.",
            "source_message_ids": ["msg-3"],
            "action": "update",
            "target_entry_id": "f9",
        },  # no such earlier fact: passed on as an entry id
    ]
    result = await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)
    assert result.facts == (
        ExtractedFact("User works at Acme Corp.", ("msg-1",)),
        ExtractedFact("User lives in Oslo.", ("msg-2", "msg-1")),
        ExtractedFact("User lives in Bergen.", ("msg-3",), "update", None, 1),
        ExtractedFact("User no longer works at Acme Corp.", ("msg-3",), "invalidate", None, 0),
        ExtractedFact("User likes f9.", ("msg-3",), "update", "f9"),
    )


async def test_the_prompt_and_the_tool_say_how_to_name_an_earlier_fact(claude: Make) -> None:
    api = FakeAPI(ok())
    await claude(api).extract(KNOWN_BATCH)
    (body,) = api.bodies
    assert "(f1 for the first fact)" in body["system"][0]["text"]
    target = body["tools"][0]["input_schema"]["properties"]["facts"]["items"]["properties"]
    assert "f1, f2" in target["target_entry_id"]["description"]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"action": "delete", "target_entry_id": "e-city"}, r"facts\[0\]\.action.*'delete'"),
        ({"action": "UPDATE", "target_entry_id": "e-city"}, r"facts\[0\]\.action"),
        ({"action": 1}, r"facts\[0\]\.action"),
        ({"action": ["same"], "target_entry_id": "e-city"}, r"facts\[0\]\.action"),
        ({"action": "update", "target_entry_id": 7}, r"facts\[0\]\.target_entry_id"),
    ],
)
async def test_a_bad_action_or_target_is_invalid(
    claude: Make, extra: dict[str, object], problem: str
) -> None:
    facts = [{"text": "User lives in Oslo.", "source_message_ids": ["msg-2"], **extra}]
    with pytest.raises(InvalidExtractionError, match=problem):
        await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)


@pytest.mark.parametrize("target", ["", "  "])
@pytest.mark.parametrize("action", ["new", "update"])
async def test_an_empty_or_blank_target_is_no_target(
    claude: Make, action: str, target: str
) -> None:
    """Schema-valid, and how models spell an absent target: the fact is used as if it
    named none (an "update" of nothing is then the engine's to record as new)."""
    facts = [
        {
            "text": "User lives in Oslo.",
            "source_message_ids": ["msg-2"],
            "action": action,
            "target_entry_id": target,
        },
        {"text": "User works at Acme Corp.", "source_message_ids": ["msg-1"]},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(KNOWN_BATCH)
    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("msg-2",), action, None),  # type: ignore[arg-type]
        ExtractedFact("User works at Acme Corp.", ("msg-1",)),
    )


@pytest.mark.parametrize("text", ["", " ", "\n\t "])
async def test_a_fact_with_blank_text_is_passed_on_for_the_engine_to_drop(
    claude: Make, text: str
) -> None:
    """The rest of the answer is used; the engine drops the blank fact and records that
    it did, where the whole batch used to fail and its messages end quarantined."""
    facts = [
        {"text": text, "source_message_ids": ["msg-1"]},
        {"text": "User lives in Oslo.", "source_message_ids": ["msg-3"]},
    ]
    result = await claude(FakeAPI(ok(facts))).extract(BATCH)
    assert result.facts == (
        ExtractedFact("", ("msg-1",)),
        ExtractedFact("User lives in Oslo.", ("msg-3",)),
    )


async def test_the_tool_schema_asks_for_text_and_targets_that_are_not_blank(
    claude: Make,
) -> None:
    """The model is told what the parser repairs, so that the two agree."""
    api = FakeAPI(ok())
    await claude(api).extract(KNOWN_BATCH)
    schema = api.bodies[0]["tools"][0]["input_schema"]
    properties = schema["properties"]["facts"]["items"]["properties"]
    for name in ("text", "target_entry_id"):
        pattern = re.compile(properties[name]["pattern"])
        assert pattern.search("User likes tea.") and pattern.search(" k1 ")
        assert not pattern.search("") and not pattern.search(" \t\n")


async def test_an_answer_cut_at_max_tokens_is_never_used_and_repeats(claude: Make) -> None:
    body = tool_use_body(GOOD_FACTS[:1], input_tokens=50, output_tokens=812)
    body["stop_reason"] = "max_tokens"
    api = FakeAPI(httpx2.Response(200, json=body))
    extractor = claude(api)
    with pytest.raises(InvalidExtractionError, match=r"cut at max_tokens \(8192\)") as caught:
        await extractor.extract(BATCH)
    assert caught.value.repeats
    budget = extractor.output_budget(BATCH)
    assert [b["max_tokens"] for b in api.bodies] == [budget, 8192], "asked again with it all"
    assert caught.value.usage is not None and caught.value.usage.output_tokens == 2 * 812


async def test_an_answer_cut_at_the_batchs_budget_is_asked_again_with_all_of_max_tokens(
    claude: Make,
) -> None:
    cut = tool_use_body(GOOD_FACTS[:1], input_tokens=50, output_tokens=612)
    cut["stop_reason"] = "max_tokens"
    whole = tool_use_body(GOOD_FACTS, input_tokens=50, output_tokens=1300)
    api = FakeAPI(httpx2.Response(200, json=cut), httpx2.Response(200, json=whole))
    extractor = claude(api)
    result = await extractor.extract(BATCH)
    assert [f.text for f in result.facts] == [f["text"] for f in GOOD_FACTS]
    assert [b["max_tokens"] for b in api.bodies] == [extractor.output_budget(BATCH), 8192]
    assert (result.input_tokens, result.output_tokens) == (100, 1912), "both calls counted"


async def test_a_cut_answers_tokens_are_counted_when_asking_again_fails(claude: Make) -> None:
    cut = tool_use_body(GOOD_FACTS[:1], input_tokens=1000, output_tokens=4000)
    cut["stop_reason"] = "max_tokens"
    api = FakeAPI(httpx2.Response(200, json=cut), fail(529, "overloaded_error", **FAST_RETRY))
    with pytest.raises(ExtractionError, match="529") as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.usage is not None
    assert (caught.value.usage.input_tokens, caught.value.usage.output_tokens) == (1000, 4000)


@pytest.mark.parametrize("count", [2**63, -5, "12", 1.5, None])
async def test_a_token_count_that_is_no_count_is_unknown_not_a_failure(
    claude: Make, count: object
) -> None:
    """The SDK builds its answer unchecked: a count no database column holds (or no
    count at all) would fail every attempt to record the outcome."""
    body = tool_use_body(GOOD_FACTS)
    body["usage"] = {"input_tokens": count, "output_tokens": 7}
    cut = tool_use_body(GOOD_FACTS[:1])
    cut.update(stop_reason="max_tokens", usage={"input_tokens": count, "output_tokens": "x"})
    result = await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)
    assert (result.input_tokens, result.output_tokens) == (None, 7)
    api = FakeAPI(httpx2.Response(200, json=cut), fail(529, "overloaded_error", **FAST_RETRY))
    with pytest.raises(ExtractionError, match="529") as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.usage == TokenUsage(None, None, None, None)


async def test_a_long_dense_message_gets_a_budget_for_its_words(claude: Make) -> None:
    bio = " ".join(f"I have fact number {i} about me." for i in range(300))
    long_one = ExtractionBatch("u1", "t1", (BatchMessage("m", "user", bio, T0),))
    short_one = ExtractionBatch("u1", "t1", (BatchMessage("m", "user", "I like tea", T0),))
    extractor = claude(FakeAPI(ok()))
    assert extractor.output_budget(short_one) < 640
    assert extractor.output_budget(long_one) > 612 + len(bio) // 10


@pytest.mark.parametrize(
    ("content", "stop_reason", "error"),
    [
        ([], "end_turn", InvalidExtractionError),
        (
            [{"type": "text", "text": "Sure! The user lives in Oslo."}],
            "end_turn",
            InvalidExtractionError,
        ),
        ([], "refusal", RejectedBatchError),
    ],
)
async def test_plain_text_an_empty_answer_and_a_refusal_fail_the_batch_and_repeat(
    claude: Make, content: list[Any], stop_reason: str, error: type[Exception]
) -> None:
    body = tool_use_body([])
    body.update(content=content, stop_reason=stop_reason)
    # A refusal is probed with a harmless message in the batch's place: answered here.
    with pytest.raises(error) as caught:
        await claude(FakeAPI(httpx2.Response(200, json=body), ok())).extract(BATCH)
    assert isinstance(caught.value, ExtractionError) and caught.value.repeats
    if isinstance(caught.value, RejectedBatchError):
        assert caught.value.reason is None, "the model refused: the API took the batch"
        assert caught.value.probe_accepted, "the harmless message was answered"


async def test_a_harmless_request_the_model_refuses_is_refused_not_answered(
    claude: Make,
) -> None:
    """A ping the model refuses (HTTP 200, stop_reason "refusal") tells the API answers
    nothing: it is a refusal that repeats, with its tokens, never an answer (the bulk
    fallback took it for one and went on, user after user, at full price)."""
    extractor = claude(FakeAPI(httpx2.Response(200, json=refusal_body(input_tokens=7))))
    usage, failed = await harmless_request(extractor, "ann", "v2", datetime.now(UTC))
    assert isinstance(failed, RejectedBatchError) and failed.repeats
    assert usage.input_tokens == 7


@pytest.mark.parametrize(
    ("status", "error_type", "again"),
    [
        (400, "invalid_request_error", True),
        (413, "request_too_large", True),
        (401, "authentication_error", False),
        (429, "rate_limit_error", False),
        (500, "api_error", False),
        (529, "overloaded_error", False),
    ],
)
async def test_an_error_that_refuses_the_request_itself_repeats_others_may_pass(
    claude: Make, status: int, error_type: str, again: bool
) -> None:
    api = FakeAPI(fail(status, error_type, "messages: roles must alternate", **FAST_RETRY), ok())
    with pytest.raises(ExtractionError) as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.repeats is again
    if again:  # the reason, by which the engine tells a refusal of every batch
        assert isinstance(caught.value, RejectedBatchError)
        reason = f"HTTP {status} {error_type}: messages: roles must alternate"
        assert caught.value.reason == (None if status == 413 else reason), "size: the batch's"
        assert caught.value.too_large is (status == 413)


@pytest.mark.parametrize(
    ("message", "figures"),
    [
        ("prompt is too long: 215047 tokens > 200000 maximum", (215047, 200000)),
        ("Prompt is too long", (None, None)),
    ],
)
async def test_a_400_saying_the_prompt_is_too_long_is_a_request_too_large(
    claude: Make, message: str, figures: tuple[int | None, int | None]
) -> None:
    """The real API refuses a prompt over the model's context window with a 400, not a
    413: it is told as a request too large (split by the engine, learned as a size, no
    reason by which batches would be taken for refused alike), with the tokens the API
    names, and a batch of several messages is sent no probe."""
    said = (BatchMessage(f"m-{i}", "user", f"I visited city {i}.", T0) for i in range(120))
    many = replace(BATCH, messages=tuple(said))
    api = FakeAPI(fail(400, "invalid_request_error", message), ok())
    with pytest.raises(RejectedBatchError, match=r"(?i)prompt is too long") as caught:
        await claude(api, max_retries=0).extract(many)
    refused = caught.value
    assert refused.too_large and refused.reason is None and refused.repeats
    assert (refused.prompt_tokens, refused.context_tokens) == figures
    assert len(api.requests) == 1, "no probe: the engine splits it, smaller"


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "30"}, 30.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "86400"}, 3600.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
async def test_the_wait_a_refusal_asks_for_is_carried_by_the_error(
    claude: Make, headers: dict[str, str], wait: float | None
) -> None:
    """So that memvee's own retries (the user's backoff, the breaker) do not come back
    sooner than the API asked, however the SDK's own retries are set."""
    api = FakeAPI(fail(429, "rate_limit_error", "rate limited", **headers))
    with pytest.raises(ExtractionError) as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.retry_after == wait and not caught.value.repeats
    if wait:
        assert f"retry after {wait:g} s" in str(caught.value)


CREDIT = "Your credit balance is too low to access the Anthropic API."


@pytest.mark.parametrize("status", [400, 422])
async def test_a_refusal_of_a_request_without_the_batch_too_blames_the_account_not_the_batch(
    claude: Make, status: int
) -> None:
    """Asked once the batch is refused: the same request (model, system prompt, tools,
    max_tokens) with a harmless message in place of the batch's. Refused too, the batch
    is not at fault, so the failure may pass: its messages are retried, never blamed."""
    api = FakeAPI(fail(status, "invalid_request_error", CREDIT))
    with pytest.raises(ExtractionError, match="credit balance is too low") as caught:
        await claude(api, max_retries=0).extract(BATCH)

    assert not caught.value.repeats and not isinstance(caught.value, RejectedBatchError)
    assert "not the batch" in str(caught.value)
    batch, probe = api.bodies
    assert {k: v for k, v in probe.items() if k != "messages"} == {
        k: v for k, v in batch.items() if k != "messages"
    }
    assert not any(m.content in json.dumps(probe["messages"]) for m in BATCH.messages)


async def test_a_refusal_the_probe_does_not_share_is_the_batchs_own(claude: Make) -> None:
    """The accepted probe was answered, so its tokens are spent: the failed batch counts
    them, as ``memvee stats`` sums what each batch spent. The error says the probe was
    accepted, so the engine blames the batch and counts an accepted call."""
    probe = ok(input_tokens=5000, output_tokens=300)
    api = FakeAPI(fail(400, "invalid_request_error", "prompt is too long"), probe)
    with pytest.raises(RejectedBatchError, match="prompt is too long") as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.repeats and caught.value.probe_accepted and len(api.requests) == 2
    assert caught.value.usage == TokenUsage(5000, 300, 0, 0)


BLOCKED = "Output blocked by content filtering policy"


def shown(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The texts of the known entries and of the messages a request's prompt shows."""
    known = [e["text"] for e in prompt_known_entries(body)]
    return known, [m["content"] for m in prompt_messages(body)]


async def test_a_probe_keeps_all_of_the_request_but_the_batchs_messages(claude: Make) -> None:
    """Known entries included: an accepted probe then proves the messages at fault."""
    api = FakeAPI(fail(400, "invalid_request_error", BLOCKED), ok())
    with pytest.raises(RejectedBatchError) as caught:
        await claude(api, max_retries=0).extract(KNOWN_BATCH)
    assert caught.value.probe_accepted and len(api.requests) == 2
    batch, probe = api.bodies
    assert {k: v for k, v in probe.items() if k != "messages"} == {
        k: v for k, v in batch.items() if k != "messages"
    }
    known, messages = shown(probe)
    assert known == [e.text for e in KNOWN] and messages == ["Hello."]


def model_refusal(input_tokens: int = 0) -> httpx2.Response:
    return httpx2.Response(200, json=refusal_body(input_tokens=input_tokens, output_tokens=0))


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [(ok(input_tokens=5000, output_tokens=3), "accepted"), (model_refusal(5000), "refused")],
    ids=["accepted", "refused by the model"],
)
async def test_a_probe_tells_its_verdict_and_the_tokens_it_spent_by_name(
    claude: Make, answer: httpx2.Response, verdict: str
) -> None:
    """``ClaudeExtractor.probe``, for a refusal met elsewhere, says how the harmless
    request was answered and what it cost, each by name, for the caller to record."""
    result = await claude(FakeAPI(answer), max_retries=0).probe(BATCH)
    assert isinstance(result, ProbeResult)
    assert (result.verdict, result.usage.input_tokens) == (verdict, 5000)


async def test_a_probe_that_fails_tells_so_and_that_it_spent_nothing(claude: Make) -> None:
    """A harmless request failing with a server error tells nothing, and cost nothing."""
    api = FakeAPI(fail(500, "api_error", "boom"))
    result = await claude(api, max_retries=0).probe(BATCH)
    assert isinstance(result, ProbeResult)
    assert (result.verdict, result.usage) == ("failed", TokenUsage())


async def test_a_probe_that_fails_tells_the_first_line_of_its_error(claude: Make) -> None:
    """A failed harmless request tells how it failed, for the caller to keep: a probe
    kept on its own lost its error."""
    api = FakeAPI(fail(500, "api_error", "boom"))
    result = await claude(api, max_retries=0).probe(BATCH)
    assert result.error is not None and "HTTP 500" in result.error and "boom" in result.error


class EntryFilter(FakeAPI):
    """An API whose filter refuses every request showing a known entry or a message that
    holds one of ``blocked``; a probe (the harmless message alone) is answered with no
    facts."""

    def __init__(self, refused: Callable[[], httpx2.Response], *blocked: str) -> None:
        super().__init__(refused())
        self.refused = refused
        self.blocked = blocked

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        known, messages = shown(json.loads(request.content))
        if any(word in text for text in [*known, *messages] for word in self.blocked):
            return self.refused()
        if messages == ["Hello."]:
            return ok(facts=[], input_tokens=100, output_tokens=10)
        return ok(input_tokens=1000, output_tokens=200)


@pytest.mark.parametrize(
    ("refused", "spent"),
    [
        (lambda: fail(400, "invalid_request_error", BLOCKED), 0),
        (lambda: model_refusal(input_tokens=7), 7),
    ],
    ids=["http-refusal", "model-refusal"],
)
async def test_a_refusal_a_known_entry_causes_extracts_the_batch_without_that_entry(
    claude: Make,
    caplog: pytest.LogCaptureFixture,
    refused: Callable[[], httpx2.Response],
    spent: int,
) -> None:
    """The probe with the known entries is refused, the one without them accepted: the
    user's stored state trips the API (an entry its filter blocks), not the messages.
    Halves of the entries are probed to find the one refused, and the batch is extracted
    again showing the others (facts about them still update them) rather than blamed.
    Every call's tokens count; the warning names the entry by id, never by its text."""
    api = EntryFilter(refused, "cat named")
    with caplog.at_level(logging.WARNING, logger="memvee.extractors"):
        result = await claude(api, max_retries=0).extract(KNOWN_BATCH)

    assert [f.text for f in result.facts] == [f["text"] for f in GOOD_FACTS]
    assert result.notes["known_entries_left_out"] == "e-pet"
    assert (result.input_tokens, result.output_tokens) == (1300 + 2 * spent, 230)
    bodies = [shown(body) for body in api.bodies]
    city, job, pet = (e.text for e in KNOWN)
    assert [known for known, _ in bodies] == [
        [city, job, pet],  # the batch
        [city, job, pet],  # the probe showing every entry
        [],  # the probe showing none
        [city],  # halving: the first half is accepted, so the other holds the refused
        [city, job],  # e-pet is then the one, without a probe of its own
        [city, job],  # the batch again
    ]
    assert bodies[-1][1] == bodies[0][1]
    [warning] = caplog.records
    assert "e-pet" in warning.getMessage() and "e-city" not in warning.getMessage()
    assert not any(e.text in caplog.text for e in KNOWN)


async def test_entries_left_out_for_a_request_too_large_are_told_so_not_as_a_refusal(
    claude: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """A body limit (a gateway's 413) that the known entries push a request over leaves
    entries out as a filter's refusal does; the warning says the request was too large,
    not that the model refused to answer (it answered every request it was sent)."""
    api = EntryFilter(lambda: fail(413, "request_too_large", "Request too large"), "cat named")
    with caplog.at_level(logging.WARNING, logger="memvee.extractors"):
        result = await claude(api, max_retries=0).extract(KNOWN_BATCH)

    assert result.notes["known_entries_left_out"] == "e-pet"
    [warning] = caplog.records
    assert "HTTP 413" in warning.getMessage(), warning.getMessage()
    assert "model refused" not in warning.getMessage()


async def test_several_refused_entries_among_many_are_each_left_out_in_bounded_probes(
    claude: Make,
) -> None:
    entries = tuple(KnownEntry(f"e-{i}", f"User fact number {i}.", T_KNOWN) for i in range(12))
    batch = replace(KNOWN_BATCH, known=entries)
    api = EntryFilter(lambda: fail(400, "invalid_request_error", BLOCKED), "number 2.", "number 9.")
    result = await claude(api, max_retries=0).extract(batch)

    assert result.notes["known_entries_left_out"] == "e-2,e-9"
    final, _ = shown(api.bodies[-1])
    assert final == [e.text for e in entries if e.entry_id not in {"e-2", "e-9"}]
    assert len(api.requests) <= 3 + claude_module._ENTRY_PROBES + 1


def _entry_probes(api: FakeAPI) -> int:
    """The probes that looked for the refused entries: those with the harmless message
    but the first two (with every entry, then with none)."""
    return sum(shown(body)[1] == ["Hello."] for body in api.bodies) - 2


@pytest.mark.parametrize(
    ("count", "refused"),
    [(2, 0), (30, 5), (30, 29), (100, 50), (200, 10)],
)
async def test_one_refused_entry_among_n_is_found_in_at_most_log2_n_plus_one_probes(
    claude: Make, count: int, refused: int
) -> None:
    """Only the refused entry is left out, however many are shown: an accepted half is
    kept whole, and what was set aside while narrowing down is probed all at once. It
    used to be probed a part at a time, last, so that 101 of 200 were left out when the
    probes ran out (and facts about them came back new, repeating the user's entries)."""
    entries = tuple(KnownEntry(f"e-{i}", f"User fact number {i}.", T_KNOWN) for i in range(count))
    batch = replace(KNOWN_BATCH, known=entries)
    blocked = f"number {refused}."
    api = EntryFilter(lambda: fail(400, "invalid_request_error", BLOCKED), blocked)
    result = await claude(api, max_retries=0).extract(batch)

    assert result.notes["known_entries_left_out"] == f"e-{refused}"
    assert shown(api.bodies[-1])[0] == [e.text for e in entries if e.entry_id != f"e-{refused}"]
    assert _entry_probes(api) <= math.ceil(math.log2(count)) + 1


async def test_the_probes_find_one_refused_entry_among_2048_or_two_among_30(
    claude: Make,
) -> None:
    """What :data:`_ENTRY_PROBES` is said to be enough for, at the worst places."""
    assert math.ceil(math.log2(2048)) + 1 == claude_module._ENTRY_PROBES
    entries = tuple(KnownEntry(f"e-{i}", f"User fact number {i}.", T_KNOWN) for i in range(30))
    api = EntryFilter(
        lambda: fail(400, "invalid_request_error", BLOCKED), "number 1.", "number 12."
    )
    result = await claude(api, max_retries=0).extract(replace(KNOWN_BATCH, known=entries))
    assert result.notes["known_entries_left_out"] == "e-1,e-12"
    assert _entry_probes(api) <= claude_module._ENTRY_PROBES


async def test_entries_whose_probes_ran_out_are_left_out(
    claude: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claude_module, "_ENTRY_PROBES", 1)
    api = EntryFilter(lambda: fail(400, "invalid_request_error", BLOCKED), "Acme Corp")
    result = await claude(api, max_retries=0).extract(KNOWN_BATCH)

    assert result.notes["known_entries_left_out"] == "e-job,e-pet"
    assert shown(api.bodies[-1])[0] == [KNOWN[0].text]


@pytest.mark.parametrize(
    ("status", "error_type", "raised"),
    [
        (529, "overloaded_error", ExtractorOverloadedError),
        (429, "rate_limit_error", ProbeFailedError),
    ],
)
async def test_a_probe_is_sent_as_a_batch_is_and_keeps_the_wait_the_api_asked_for(
    claude: Make, status: int, error_type: str, raised: type[ExtractionError]
) -> None:
    """A probe answered with a retry-after longer than the call may last is not retried
    by the SDK (it would sleep it through to a timeout, the wait lost): its failure is
    raised at once with that wait, which the user's next automatic run then keeps."""
    api = FakeAPI(
        fail(400, "invalid_request_error", BLOCKED),
        fail(status, error_type, "busy", **{"retry-after": "30"}),
    )
    with pytest.raises(raised, match="retry after 30 s") as caught:
        await claude(api, max_retries=2, timeout=10).extract(BATCH)
    assert caught.value.retry_after == 30.0 and not caught.value.repeats
    assert len(api.requests) == 2, "the probe was not retried"


class BusyWhileSearching(EntryFilter):
    """An :class:`EntryFilter` that is overloaded for ``burst`` requests right after the
    probe showing no entries, as the search for the refused entry begins."""

    def __init__(self, burst: int, *blocked: str) -> None:
        super().__init__(lambda: fail(400, "invalid_request_error", BLOCKED), *blocked)
        self.burst = burst

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        bare = [shown(body) for body in self.bodies].count(([], ["Hello."]))
        if bare and self.burst > 0:
            self.requests.append(request)
            self.burst -= 1
            return fail(529, "overloaded_error", "Overloaded", **FAST_RETRY)
        return await super().__call__(request)


async def test_a_search_probe_that_fails_otherwise_leaves_no_entry_out(claude: Make) -> None:
    """A 529 burst longer than the SDK's retries while the refused entry is searched for
    tells nothing: the batch is a failure that may pass, never extracted without every
    known entry (facts about them would come back new, so that the user would keep both
    "lives in Oslo" and "lives in Bergen"), and retried later showing them all."""
    api = BusyWhileSearching(3, "cat named")
    with pytest.raises(ExtractorOverloadedError, match="probing whose fault it is") as caught:
        await claude(api, max_retries=2).extract(KNOWN_BATCH)
    assert not caught.value.repeats and caught.value.retry_after == 0.001
    assert [messages for _, messages in map(shown, api.bodies[1:])] == [["Hello."]] * 5

    retried = await claude(BusyWhileSearching(0, "cat named"), max_retries=0).extract(KNOWN_BATCH)
    assert retried.notes["known_entries_left_out"] == "e-pet"


async def test_a_batch_refused_with_and_without_the_known_entries_is_its_own(
    claude: Make,
) -> None:
    """Its messages are refused on their own too, while the API took a request without
    them: the batch is blamed (and split by the engine), its calls' tokens counted."""
    api = EntryFilter(lambda: fail(400, "invalid_request_error", BLOCKED), "Miso")
    with pytest.raises(RejectedBatchError, match=BLOCKED) as caught:
        await claude(api, max_retries=0).extract(KNOWN_BATCH)
    assert caught.value.probe_accepted and len(api.requests) == 6
    assert caught.value.usage == TokenUsage(300, 30, 0, 0)


async def test_a_model_refusal_is_the_batchs_own_only_when_the_harmless_message_is_answered(
    claude: Make,
) -> None:
    """The model's refusal is probed with a harmless message in the batch's place (one
    probe, two with known entries): answered, the refusal is the batch's, which repeats;
    refused too, the model refuses every request (a policy, a misconfigured model), which
    tells nothing against the batch: a failure that may pass, retried later. Both used to
    be the batch's, so a model refusing everything got every message quarantined."""
    api = FakeAPI(model_refusal(), ok())
    with pytest.raises(RejectedBatchError) as caught:
        await claude(api, max_retries=0).extract(BATCH)
    assert caught.value.probe_accepted and caught.value.repeats and len(api.requests) == 2
    for batch, calls in ((BATCH, 2), (KNOWN_BATCH, 3)):
        api = FakeAPI(model_refusal())
        with pytest.raises(EveryRequestRefusedError, match="the model refuses every") as refused:
            await claude(api, max_retries=0).extract(batch)
        assert not refused.value.repeats and len(api.requests) == calls


async def test_an_api_refusing_every_request_blames_no_batch_that_shows_known_entries(
    claude: Make,
) -> None:
    """Both probes refused: the account is, whatever the batch shows; two probes at most."""
    api = FakeAPI(fail(400, "invalid_request_error", CREDIT))
    with pytest.raises(ExtractionError, match="not the batch") as caught:
        await claude(api, max_retries=0).extract(KNOWN_BATCH)
    assert not isinstance(caught.value, RejectedBatchError) and not caught.value.repeats
    assert len(api.requests) == 3


@pytest.mark.parametrize("known", [True, False], ids=["known-entries", "no-entries"])
@pytest.mark.parametrize(
    ("status", "error_type", "raised"),
    [
        (529, "overloaded_error", ExtractorOverloadedError),
        (500, "api_error", ProbeFailedError),
        (429, "rate_limit_error", ProbeFailedError),
    ],
)
async def test_a_probe_that_fails_otherwise_tells_nothing_and_leaves_no_entry_out(
    claude: Make, known: bool, status: int, error_type: str, raised: type[ExtractionError]
) -> None:
    """The API busy when probed says nothing of whose fault the refusal is: no second
    probe, no extraction without the entries (its facts would all count as new,
    duplicating the user's), and a failure that may pass of a type the engine never
    blames on a message, saying what the probe met."""
    api = FakeAPI(
        fail(400, "invalid_request_error", BLOCKED),
        fail(status, error_type, "busy"),
        ok(),
    )
    with pytest.raises(raised, match="probing whose fault it is failed too") as caught:
        await claude(api, max_retries=0).extract(KNOWN_BATCH if known else BATCH)
    assert not isinstance(caught.value, RejectedBatchError) and not caught.value.repeats
    assert f"HTTP {status}" in str(caught.value) and BLOCKED in str(caught.value)
    assert len(api.requests) == 2


async def test_a_client_without_credentials_fails_the_run_and_blames_no_batch(
    clients: list[anthropic.AsyncAnthropic], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    api = FakeAPI(ok())
    client = anthropic.AsyncAnthropic(
        max_retries=0, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(api))
    )
    clients.append(client)
    with pytest.raises(ExtractionError, match="no credentials: set ANTHROPIC_API_KEY") as caught:
        await ClaudeExtractor(client=client).extract(BATCH)
    assert not caught.value.repeats and not api.requests


async def test_an_answer_cut_where_the_context_window_ended_is_never_used(claude: Make) -> None:
    body = tool_use_body(GOOD_FACTS)
    body["stop_reason"] = "model_context_window_exceeded"
    with pytest.raises(InvalidExtractionError, match="context window") as caught:
        await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)
    assert caught.value.repeats, "split: a smaller batch leaves room for the answer"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {},
        {"type": "message"},
        {"type": "message", "content": [], "stop_reason": None},
    ],
)
async def test_a_success_over_json_that_is_no_message_may_pass(
    claude: Make, body: dict[str, Any]
) -> None:
    """A gateway answering 200 in the API's place: the batch is not at fault."""
    with pytest.raises(ExtractionError, match="a gateway may have answered") as caught:
        await claude(FakeAPI(httpx2.Response(200, json=body)), max_retries=0).extract(BATCH)
    assert not caught.value.repeats and not isinstance(caught.value, InvalidExtractionError)


async def test_no_part_of_a_key_or_token_reaches_an_error_even_cut(
    clients: list[anthropic.AsyncAnthropic],
) -> None:
    key = "sk-ant-api03-" + "k" * 99
    token = "bearer-token-" + "t" * 40
    prefix = "upstream gateway said: " + "." * 150  # the key straddles the 200-character cut
    for credentials, secret in (({"api_key": key}, key), ({"auth_token": token}, token)):
        api = FakeAPI(fail(401, "authentication_error", f"{prefix} invalid credential {secret}"))
        client = anthropic.AsyncAnthropic(
            **credentials,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(api)),
        )
        clients.append(client)
        with pytest.raises(ExtractionError) as caught:
            await ClaudeExtractor(client=client).extract(BATCH)
        shown = "".join(traceback.format_exception(caught.value))
        assert secret[:20] not in shown, shown


async def test_timeouts_and_connection_errors_may_pass(claude: Make) -> None:
    for step in (httpx2.ReadTimeout("slow"), httpx2.ConnectError("refused")):
        with pytest.raises(ExtractionError) as caught:
            await claude(FakeAPI(step), max_retries=0).extract(BATCH)
        assert not caught.value.repeats


async def test_the_static_prefix_is_cached_when_the_model_can_cache_it(claude: Make) -> None:
    api = FakeAPI(ok())
    await claude(api, model="claude-sonnet-5-5").extract(BATCH)
    await claude(api, model="claude-haiku-4-5").extract(BATCH)
    sonnet, haiku = api.bodies
    assert sonnet["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in haiku["system"][0], "4,096 tokens is more than the prefix"
    assert sonnet["system"][0]["text"] == haiku["system"][0]["text"]
    assert sonnet["tools"] == haiku["tools"]


async def test_cache_reads_and_writes_are_read_from_the_usage(claude: Make) -> None:
    body = tool_use_body(GOOD_FACTS)
    body["usage"].update(cache_read_input_tokens=1200, cache_creation_input_tokens=0)
    result = await claude(FakeAPI(httpx2.Response(200, json=body))).extract(BATCH)
    assert (result.cache_read_tokens, result.cache_write_tokens) == (1200, 0)
    assert result.usage.cache_read_tokens == 1200


async def test_a_speakers_name_goes_with_the_message(claude: Make) -> None:
    api = FakeAPI(ok([]))
    named = ExtractionBatch(
        "u1", "t9", (BatchMessage("msg-1", "user", "I moved to Lisbon.", T0, "Maria"),)
    )
    await claude(api).extract(named)
    (listed,) = prompt_messages(api.bodies[0])
    assert listed["name"] == "Maria"
    await claude(api).extract(BATCH)
    assert all("name" not in m for m in prompt_messages(api.bodies[1]))


class SizeLimit(FakeAPI):
    """An API that takes ``limit`` tokens of what a prompt shows (its known entries' and
    messages' texts, four characters a token): a request over it is refused as the real
    API refuses a prompt over the context window (400 naming both counts), or, with
    ``status`` 413, as a gateway's body limit does."""

    def __init__(self, limit: int, status: int = 400) -> None:
        super().__init__(ok())
        self.limit = limit
        self.status = status

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        known, messages = shown(json.loads(request.content))
        tokens = sum(map(len, [*known, *messages])) // 4
        if tokens > self.limit and self.status == 413:
            return fail(413, "request_too_large", "Request exceeds the maximum allowed size.")
        if tokens > self.limit:
            told = f"prompt is too long: {tokens} tokens > {self.limit} maximum"
            return fail(400, "invalid_request_error", told)
        return ok(facts=[{"text": "User likes rivers.", "source_message_ids": ["msg-1"]}])


@pytest.mark.parametrize(("status", "requests"), [(400, 4), (413, 17)])
async def test_a_message_fitting_alone_but_not_with_entries_kept_is_extracted_with_none(
    claude: Make, status: int, requests: int
) -> None:
    """The entries alone are over the limit beside a harmless message, and the message
    fits alone only. Over the context window (a count of tokens, never an entry's
    content), it is extracted at once showing no entry; over a 413's limit, the entries
    that fit beside a harmless message are searched as a filter's refusal is, and, the
    message refused beside them too, it is extracted showing none. Never blamed for the
    entries' size."""
    entries = tuple(KnownEntry(f"e-{i}", f"Entry {i:02}: " + "x" * 90, T_KNOWN) for i in range(20))
    lone = BatchMessage("msg-1", "user", "I like rivers. " + "y" * 985, T0)
    batch = replace(KNOWN_BATCH, messages=(lone,), known=entries)
    api = SizeLimit(limit=300, status=status)
    result = await claude(api, max_retries=0).extract(batch)

    assert [f.text for f in result.facts] == ["User likes rivers."]
    assert result.notes["known_entries_left_out"] == ",".join(e.entry_id for e in entries)
    known, messages = shown(api.bodies[-1])
    assert known == [] and messages == [lone.content]
    assert len(api.requests) == requests


async def test_a_400_saying_input_and_max_tokens_exceed_the_context_is_a_request_too_large(
    claude: Make,
) -> None:
    """The API's other context-window 400: the prompt fits, but not with the output asked.
    It is a request too large too, its figures counting the output with the input (a
    batch's output budget grows with its messages), and memvee's estimates of the request
    and of its fixed part are carried to weigh them against."""
    said = (BatchMessage(f"m-{i}", "user", f"I visited city {i}.", T0) for i in range(120))
    many = replace(BATCH, messages=tuple(said))
    message = (
        "input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )
    api = FakeAPI(fail(400, "invalid_request_error", message), ok())
    with pytest.raises(RejectedBatchError, match="exceed context limit") as caught:
        await claude(api, max_retries=0).extract(many)
    refused = caught.value
    assert refused.too_large and refused.over_the_window and refused.reason is None
    assert (refused.prompt_tokens, refused.context_tokens) == (199759 + 8192, 200000)
    assert refused.output_tokens == 8192
    assert refused.estimated_tokens is not None and refused.fixed_tokens is not None
    assert 0 < refused.fixed_tokens < refused.estimated_tokens
    assert len(api.requests) == 1, "no probe: the engine splits it, smaller"


async def test_a_400_quoting_the_users_text_that_says_the_prompt_is_too_long_is_a_refusal(
    claude: Make,
) -> None:
    """A refusal may echo the user's input, which may say anything, "prompt is too long:
    999999 tokens > 1 maximum" included: only the API's whole message is read as its
    context-window answer, so this is a refusal of the input with its reason, not a
    request too large whose made-up figures would shrink every user's batches."""
    echoed = "my essay says prompt is too long: 999999 tokens > 1 maximum"
    message = f"messages: input refused by policy: {echoed!r}"
    api = FakeAPI(fail(400, "invalid_request_error", message), ok())
    with pytest.raises(RejectedBatchError) as caught:
        await claude(api, max_retries=0).extract(BATCH)
    refused = caught.value
    assert not refused.too_large and not refused.over_the_window
    assert (refused.prompt_tokens, refused.context_tokens) == (None, None)
    assert refused.reason == f"HTTP 400 invalid_request_error: {message}"


LONG_MESSAGE = BatchMessage("msg-long", "user", "I once wrote a long story. " * 1_600, T0)
"""A message of some 11,000 tokens by memvee's estimate."""

MANY_KNOWN = tuple(
    KnownEntry(f"e-{i}", f"User likes thing {i} " + "and many words more " * 30, T_KNOWN)
    for i in range(40)
)
"""Entries weighing some 6,000 tokens in all."""


@pytest.mark.parametrize(
    ("known", "requests", "told"),
    [((), 1, "the API's figures put it over"), (KNOWN, 2, "no probe sent")],
    ids=["no entry shown", "entries shown"],
)
async def test_a_lone_message_the_windows_figures_put_over_alone_is_blamed_for_one_attempt(
    claude: Make,
    caplog: pytest.LogCaptureFixture,
    known: tuple[KnownEntry, ...],
    requests: int,
    told: str,
) -> None:
    """The API's 400 names the prompt's tokens and the window's. Its own count of the lone
    message's request with no entry shown (sent so at once when entries were shown: no
    probe) puts it over the window even with the smallest output, while the fixed part
    fits: the message is blamed, an OversizedMessageError that counts as one failed
    attempt, not sent again (a passing fault may refuse it so too), its error and log
    saying what was tried, with its user, task and id."""
    lone = replace(KNOWN_BATCH, messages=(LONG_MESSAGE,), known=known)
    too_long = "prompt is too long: 24000 tokens > 8000 maximum"
    api = FakeAPI(fail(400, "invalid_request_error", too_long))
    with (
        caplog.at_level(logging.WARNING, logger="memvee.extractors"),
        pytest.raises(OversizedMessageError, match="one failed attempt") as caught,
    ):
        await claude(api, max_retries=0).extract(lone)
    assert caught.value.too_large and caught.value.probe_accepted and caught.value.repeats
    assert (caught.value.prompt_tokens, caught.value.context_tokens) == (24000, 8000)
    assert told in str(caught.value) and "harmless" not in str(caught.value)
    assert len(api.requests) == requests
    logged = [r.getMessage() for r in caplog.records if "blamed" in r.getMessage()]
    assert len(logged) == 1 and told in logged[0]
    assert "msg-long" in logged[0] and "'u1'" in logged[0] and "t2" in logged[0]


async def test_a_lone_message_over_the_window_only_beside_its_entries_is_not_oversized(
    claude: Make,
) -> None:
    """The figures put the request over the window, but the message without its many
    entries within it: it may fit, so it is sent without them at once (a prompt over the
    window is never an entry's content, and the figures put the fixed part within it: no
    probe tells more) and extracted, never taken for too large for any request."""
    message = BatchMessage("msg-1", "user", "I moved to Oslo. " * 400, T0)
    batch = replace(KNOWN_BATCH, messages=(message,), known=MANY_KNOWN)
    too_long = "prompt is too long: 10000 tokens > 8000 maximum"
    api = FakeAPI(fail(400, "invalid_request_error", too_long), ok(), ok())
    result = await claude(api, max_retries=0).extract(batch)
    assert result.notes["known_entries_left_out"] == ",".join(e.entry_id for e in MANY_KNOWN)
    assert len(api.requests) == 2, "the batch, then its message without the entries"


async def test_figures_that_put_the_fixed_part_over_the_window_too_blame_no_message(
    claude: Make,
) -> None:
    """The figures put even the part of the request every request has over the window:
    every request may be refused, which a probe tells, not the message's size."""
    lone = replace(BATCH, messages=(LONG_MESSAGE,))
    too_long = "prompt is too long: 24000 tokens > 1000 maximum"
    api = FakeAPI(fail(400, "invalid_request_error", too_long))
    with pytest.raises(EveryRequestRefusedError):
        await claude(api, max_retries=0).extract(lone)
    assert len(api.requests) == 2, "the batch, then the probe"


@pytest.mark.parametrize(
    ("known", "requests"), [((), 2), (KNOWN, 3)], ids=["no entry shown", "entries shown"]
)
async def test_a_lone_message_over_the_body_limit_with_no_entry_shown_is_blamed_for_one_attempt(
    claude: Make, known: tuple[KnownEntry, ...], requests: int
) -> None:
    """A 413 names no figures: the lone message's request is refused, the same request
    with a harmless message in place of it accepted, and (with entries shown) the message
    refused again without them: the message is blamed, an OversizedMessageError counted
    as one failed attempt (the engine quarantines it after ``max_attempts``), never sent
    again within the attempt, as a passing fault may refuse it so too."""
    lone = replace(KNOWN_BATCH, messages=(LONG_MESSAGE,), known=known)
    too_large = fail(413, "request_too_large", "Request too large")
    api = FakeAPI(too_large, ok(), too_large, ok())
    with pytest.raises(OversizedMessageError, match="HTTP 413") as caught:
        await claude(api, max_retries=0).extract(lone)
    assert caught.value.too_large and caught.value.probe_accepted
    assert "a harmless request in its place accepted" in str(caught.value)
    assert len(api.requests) == requests
