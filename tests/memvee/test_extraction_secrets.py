"""An extractor's failure echoing a credential, on the live extraction path
(``Memory.process``): no log record an application's handlers get, no task's error and no
event stored in the user's log shows it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from events import ExtractionBatch, ExtractionResult, HarmlessRequests, TokenUsage
from events.errors import ExtractorAccessRefusedError
from memvee import Memory
from tests.support.extractors import RecordingExtractor

KEY = "sk-ant-api03-SECRETSECRETSECRET"
"""The API key the environment gives; the tests look for its middle, "SECRET"."""

ECHOED = f"Illegal header value b'{KEY}\\n'"
"""An HTTP client's refusal of a key read from a file with its newline: it echoes the key."""


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    caplog.set_level(logging.DEBUG, logger="memvee")


def _told(memory: Memory, user_id: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every text the failure may have been told in: each stored event of the user's log,
    and each record the root logger's handlers got, traceback included."""
    engine = memory._engine
    assert engine is not None
    stored = [repr(vars(event)) for event in engine.store.events_of(user_id)]
    return [*stored, caplog.text, *(r.getMessage() for r in caplog.records)]


async def _processed(memory: Memory, user_id: str) -> list[str]:
    """Process ``user_id``'s buffer: the error of each of the user's tasks, and that of the
    failure ``process`` raised, if it did."""
    (outcome,) = await asyncio.gather(memory.process(user_id), return_exceptions=True)
    errors = [task.error for task in await memory.tasks(user_id) if task.error]
    return [*errors, *([str(outcome)] if isinstance(outcome, BaseException) else [])]


@pytest.mark.parametrize("raised", [ValueError, ConnectionError, KeyboardInterrupt])
async def test_an_extractors_error_echoing_the_api_key_is_stored_and_logged_without_it(
    make_memory: Any,
    extractor: RecordingExtractor,
    caplog: pytest.LogCaptureFixture,
    raised: type[BaseException],
) -> None:
    """A custom extractor fails with an error echoing the API key the environment gives:
    one that repeats (the message ends quarantined), one that may pass (the task fails) or
    one that would stop the extraction loop (logged with its traceback). The task's error,
    the failure ``process`` raises, the events stored and every log record tell the failure
    without the key. They were stored and logged as it was."""
    memory: Memory = await make_memory()
    extractor.fault = lambda batch: raised(ECHOED)
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _processed(memory, "ann")
    quarantined = [m.error for m in await memory.quarantined("ann")]
    told = [*errors, *quarantined, *_told(memory, "ann", caplog)]
    assert any("Illegal header value" in text for text in [*errors, *quarantined]), told
    assert not [text for text in told if "SECRET" in text], told


class _FailingAsTheApiDoes(HarmlessRequests):
    """Fails every batch with an error that may pass, echoing the API key; its harmless
    request fails with ``ping_failure`` or, without one, answers for 5 + 1 tokens."""

    name = "failing"

    def __init__(self, ping_failure: Exception | None) -> None:
        self.ping_failure = ping_failure
        self.pings = 0

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        raise ConnectionError(ECHOED)

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        self.pings += 1
        if self.ping_failure is not None:
            raise self.ping_failure
        return TokenUsage(input_tokens=5, output_tokens=1)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    "ping_failure",
    [ConnectionError(ECHOED), ExtractorAccessRefusedError(f"HTTP 401: {ECHOED}"), None],
    ids=["down", "refused", "answered"],
)
async def test_a_harmless_request_after_a_failure_echoing_the_api_key_tells_it_without_it(
    make_memory: Any, caplog: pytest.LogCaptureFixture, ping_failure: Exception | None
) -> None:
    """A batch fails with an error echoing the API key, and so does the harmless request
    sent after it (the API down, or the key refused), or it answers (its tokens go with
    the failure): the lines logged of the harmless request, the task's error and the
    events stored tell the failures without the key. They were logged and stored as they
    were."""
    extractor = _FailingAsTheApiDoes(ping_failure)
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _processed(memory, "ann")
    told = [*errors, *_told(memory, "ann", caplog)]
    assert extractor.pings == 1
    assert errors and all("Illegal header value" in error for error in errors), errors
    if ping_failure is not None:
        harmless = [r.getMessage() for r in caplog.records if "harmless" in r.getMessage()]
        assert harmless and all("Illegal header value" in line for line in harmless), harmless
    assert not [text for text in told if "SECRET" in text], told
