"""An extractor's failure echoing a credential, on the live extraction path
(``Memory.process``): no log record an application's handlers get, no task's error and no
event stored in the user's log shows it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors import _workers
from actors.user_actor import FAULT_REASON, UserActor
from events import ExtractionBatch, ExtractionResult, HarmlessRequests, TokenUsage
from events.errors import ExtractorAccessRefusedError
from memvee import Memory, MemoryConfig, NotFoundError, ProcessingError
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


async def _errors(memory: Memory, user_id: str) -> list[str]:
    """Process ``user_id``'s buffer: every error a user is told of the failure, that of
    each task, of the failure ``process`` raised, and of each message quarantined."""
    errors = await _processed(memory, user_id)
    return [*errors, *(m.error for m in await memory.quarantined(user_id))]


async def _told_without_the_key(
    make_memory: Any, extractor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Ann's batch fails with ``extractor``'s error echoing the key: every text a user or a
    handler is told of it names the failure, and none shows the key."""
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _errors(memory, "ann")
    told = [*errors, *_told(memory, "ann", caplog)]
    assert errors and all("Illegal header value" in error for error in errors), errors
    assert not [text for text in told if "SECRET" in text], told


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


class _Client:
    """An API client as an extractor holds it: its key given to it, not by the
    environment."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.base_url = "https://api.example.com"


class _HoldingItsClient:
    """A custom extractor holding its API client as an attribute, whose batches and
    ``prepare`` fail with what ``fault`` and ``prepare_fault`` give (or answer nothing)."""

    name = "holding"

    def __init__(self, api_key: str) -> None:
        self.client = _Client(api_key)
        self.fault: BaseException | None = None
        self.prepare_fault: BaseException | None = None

    async def prepare(self) -> None:
        if self.prepare_fault is not None:
            raise self.prepare_fault

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if self.fault is not None:
            raise self.fault
        return ExtractionResult(facts=(), extractor=self.name)


@pytest.mark.parametrize("raised", [ValueError, KeyboardInterrupt])
async def test_a_key_held_only_by_the_extractors_client_is_stored_and_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    raised: type[BaseException],
) -> None:
    """The environment gives no key; the extractor's client holds it, and a batch's error
    echoes it, one that fails the batch or one logged with its traceback. Neither the
    task's error, the failure ``process`` raises, the events stored, nor any record's
    text or traceback shows it. The traceback was logged with the key."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    extractor = _HoldingItsClient(KEY)
    extractor.fault = raised(ECHOED)
    await _told_without_the_key(make_memory, extractor, caplog)


async def test_a_failed_prepare_echoing_the_key_only_the_client_holds_is_stored_without_it(
    make_memory: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extractor's ``prepare`` fails, before any batch went, with an error echoing the
    key its client alone holds: the task's error, the failure ``process`` raises, the
    events stored and the "task failed" line show it without the key. They showed it, as
    the client's credentials were read only once a prepare succeeded."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    extractor = _HoldingItsClient(KEY)
    extractor.prepare_fault = ConnectionError(ECHOED)
    await _told_without_the_key(make_memory, extractor, caplog)


class _MakingItsClientOnFirstUse(_HoldingItsClient):
    """A custom extractor that makes its API client in its first batch's call."""

    name = "lazy"

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        del self.client
        self.api_key = api_key

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        if "client" not in vars(self):
            self.client = _Client(self.api_key)
        return await super().extract(batch)


@pytest.mark.parametrize("raised", [ValueError, ConnectionError])
async def test_a_key_of_a_client_made_by_the_failing_call_itself_is_stored_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    raised: type[BaseException],
) -> None:
    """The extractor makes its client in its first call, which fails echoing the key: the
    first failure's texts show it without the key, as the later ones do. The client's
    credentials were read only after a prepare, so the first failure was stored as it came."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    extractor = _MakingItsClientOnFirstUse(KEY)
    extractor.fault = raised(ECHOED)
    await _told_without_the_key(make_memory, extractor, caplog)


async def test_a_key_the_client_held_before_it_changed_is_still_taken_out_of_failures(
    make_memory: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch went with the client's first key; the client is then replaced by one with
    another key, and a batch's error echoes the first (a late answer, a cached header):
    it is stored and told without it. Only the latest client's credentials were kept."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    extractor = _HoldingItsClient(KEY)
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I like tea", "ok")
    await memory.process("ann")

    extractor.client = _Client("sk-ant-api03-ANOTHERANOTHERKEY")
    extractor.fault = ValueError(ECHOED)
    await memory.add_exchange("ann", "I like coffee", "ok")
    errors = await _errors(memory, "ann")
    told = [*errors, *_told(memory, "ann", caplog)]
    assert errors and all("Illegal header value" in error for error in errors), errors
    assert not [text for text in told if "SECRET" in text], told


class _ClientOnDemand:
    """A custom extractor whose ``client`` is a property: each read builds a client, or
    fails when ``failing`` (an SDK refusing a configuration it lacks)."""

    name = "on-demand"

    def __init__(self, *, failing: bool) -> None:
        self.failing = failing
        self.built = 0

    @property
    def client(self) -> _Client:
        self.built += 1
        if self.failing:
            raise RuntimeError("OPENAI_API_KEY is not set")
        return _Client(KEY)

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        return ExtractionResult(facts=(), extractor=self.name)


@pytest.mark.parametrize("failing", [False, True], ids=["building", "raising"])
async def test_a_custom_extractors_client_property_is_never_read_for_its_credentials(
    make_memory: Any, failing: bool
) -> None:
    """A custom extractor's ``client`` property (building a client at each read, or
    raising) is never triggered by the engine: its batches are extracted, none fails or
    is quarantined. Each batch read it (a client built and never closed; a RuntimeError
    that failed every batch)."""
    extractor = _ClientOnDemand(failing=failing)
    memory: Memory = await make_memory(extractor=extractor)
    for turn in range(2):
        await memory.add_exchange("ann", f"I like tea {turn}", "ok")
        await memory.process("ann")

    assert extractor.built == 0
    assert [task.status.value for task in await memory.tasks("ann")] == ["COMPLETED"] * 2
    assert await memory.quarantined("ann") == []


async def test_a_custom_extractors_multi_line_error_is_stored_whole(
    make_memory: Any, extractor: RecordingExtractor
) -> None:
    """A custom extractor's error of several lines (raised as an error the engine wraps)
    is stored and told whole, without the key: the detail after its first line is what
    its user needs. Only its first line was kept."""
    extractor.fault = lambda batch: KeyboardInterrupt(f"refused\nthe header was {ECHOED}")
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _errors(memory, "ann")
    assert errors and all("Illegal header value" in error for error in errors), errors
    assert not [error for error in errors if "SECRET" in error], errors


async def test_a_short_gateway_password_is_taken_out_of_urls_only(
    make_memory: Any, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's URL carries a password of one letter: an extractor's error is stored
    as it reads, but the URL's user info it shows is masked. Every "s" of every stored
    error was replaced."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://memvee:s@gateway.example.com")
    extractor.fault = lambda batch: ValueError(
        "response is missing its 'facts' list (https://memvee:s@gateway.example.com/v1)"
    )
    memory: Memory = await make_memory()
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _errors(memory, "ann")
    assert errors and all(
        "response is missing its 'facts' list (https://***@gateway.example.com/v1)" in error
        for error in errors
    ), errors


def _logged(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    """Each record whose message holds ``part``: its message and the traceback it carries
    as text (``exc_text``), as a formatter shows them."""
    records = [r for r in caplog.records if part in r.getMessage()]
    return [f"{r.getMessage()}\n{r.exc_text or ''}" for r in records]


def _traceback_text_shown(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each record's live exception as a formatter reading ``exc_info`` shows it."""
    formatter = logging.Formatter()
    return [formatter.formatException(r.exc_info) for r in caplog.records if r.exc_info]


async def test_a_fault_in_the_users_actor_echoing_the_clients_own_key_is_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A defect met while the user's actor handles the extractor's answer echoes the key
    the extractor's client alone holds: the actor starts afresh, and the line logged of the
    fault tells it with its traceback cleaned of the key; no record's live exception, which
    a formatter reads, shows it. The fault was logged with its live exception, key and all."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    def faulting(self: UserActor, task_id: str, outcome: object) -> None:
        raise RuntimeError(ECHOED)

    monkeypatch.setattr(UserActor, "extraction_done", faulting)
    memory: Memory = await make_memory(extractor=_HoldingItsClient(KEY))
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _processed(memory, "ann")
    told = [*errors, *_told(memory, "ann", caplog), *_traceback_text_shown(caplog)]
    faults = _logged(caplog, "unexpected error")
    assert errors and all(FAULT_REASON in error for error in errors), errors
    assert faults and all("Illegal header value b'[redacted]" in line for line in faults), faults
    assert not [text for text in told if "SECRET" in text], told


async def test_a_defect_recording_an_answer_echoing_the_clients_own_key_is_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recording the extractor's answer meets a defect echoing the key its client alone
    holds: the batch fails, and neither the line logged of it nor any record's live
    exception shows the key. The line was logged with its live exception, key and all."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    def faulting(self: UserActor, user_log: object, result: object) -> list[str]:
        raise RuntimeError(ECHOED)

    monkeypatch.setattr(UserActor, "_record", faulting)
    memory: Memory = await make_memory(extractor=_HoldingItsClient(KEY))
    await memory.add_exchange("ann", "I like tea", "ok")

    errors = await _errors(memory, "ann")
    told = [*errors, *_told(memory, "ann", caplog), *_traceback_text_shown(caplog)]
    failed = _logged(caplog, "recording the outcome")
    assert errors and all("Illegal header value" in error for error in errors), errors
    assert failed and all("Illegal header value b'[redacted]" in line for line in failed), failed
    assert not [text for text in told if "SECRET" in text], told


class _FailingToClose(_HoldingItsClient):
    """A custom extractor whose ``aclose`` fails echoing the key its client holds."""

    name = "failing-to-close"

    async def aclose(self) -> None:
        raise ConnectionError(ECHOED)


async def test_an_extractor_failing_to_close_echoing_its_clients_key_is_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Memory closes and the extractor's ``aclose`` fails echoing the key its client
    alone holds: the line logged of it tells the failure cleaned of the key, and no
    record's live exception shows it. It was logged with its live exception, key and all."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    memory: Memory = await make_memory(extractor=_FailingToClose(KEY))

    await memory.close()

    told = [caplog.text, *(r.getMessage() for r in caplog.records)]
    closing = _logged(caplog, "closing the extractor")
    assert closing and all("Illegal header value b'[redacted]" in line for line in closing)
    assert not [text for text in [*told, *_traceback_text_shown(caplog)] if "SECRET" in text]


async def test_a_fault_in_the_users_actor_at_shutdown_echoing_the_clients_key_is_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Memory closes and the user's actor, closing its tasks, meets a fault echoing the
    key the extractor's client alone holds: the engine's line of it tells the failure with
    its traceback cleaned of the key, and no record's live exception shows it. The engine
    logged it with its live exception, key and all."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    memory: Memory = await make_memory(extractor=_HoldingItsClient(KEY))
    await memory.add_exchange("ann", "I like tea", "ok")
    await memory.process("ann")

    def faulting(self: UserActor, reason: str) -> None:
        raise RuntimeError(ECHOED)

    monkeypatch.setattr(UserActor, "shutdown", faulting)
    await memory.close()

    told = [caplog.text, *(r.getMessage() for r in caplog.records), *_traceback_text_shown(caplog)]
    closing = _logged(caplog, "closing a user's tasks at shutdown failed")
    assert closing and all("Illegal header value b'[redacted]" in line for line in closing)
    assert not [text for text in told if "SECRET" in text], told


@pytest.mark.parametrize("when", ["before any batch", "after the client changed"])
async def test_a_fault_in_the_users_actor_echoing_the_current_clients_key_is_logged_without_it(
    make_memory: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The user's actor meets a fault echoing the key the extractor's client holds now, no
    batch having gone with that client (none went yet, or the client was replaced since):
    the actor's line of the fault and the debug line of the error returned to its caller
    tell it with their traceback cleaned of the key, and no record's live exception shows
    it. They showed it, as only the keys of clients a batch went with were known."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    changed = when == "after the client changed"
    extractor = _HoldingItsClient("sk-ant-api03-FORMERFORMERFORMER" if changed else KEY)
    memory: Memory = await make_memory(extractor=extractor)
    await memory.add_exchange("ann", "I like tea", "ok")
    if changed:  # a batch goes with the former client, which is then replaced
        await memory.process("ann")
        extractor.client = _Client(KEY)

    def faulting(self: UserActor, *args: object) -> None:
        raise RuntimeError(ECHOED)

    monkeypatch.setattr(UserActor, "schedule", faulting)
    await asyncio.gather(memory.process("ann"), return_exceptions=True)

    logged = [
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *_traceback_text_shown(caplog),
    ]
    faults = [*_logged(caplog, "unexpected error"), *_logged(caplog, "returned from")]
    assert len(faults) == 2 and all("Illegal header value b'[redacted]" in f for f in faults)
    assert not [text for text in logged if "SECRET" in text], logged


@pytest.mark.parametrize("call", ["process", "request_processing"])
async def test_a_task_the_users_actor_faulted_scheduling_tells_the_fault_without_the_key(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The user's actor meets a fault echoing the key the extractor's client holds while it
    schedules a task: ``process`` and ``request_processing`` raise a ProcessingError telling
    the fault with the key taken out. The task's error was the fault's first line as it
    came, and ``request_processing`` raised the actor's fault itself."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    memory: Memory = await make_memory(extractor=_HoldingItsClient(KEY))
    await memory.add_exchange("ann", "I like tea", "ok")
    await memory.process("ann")  # a batch went: the client's key is known

    def faulting(self: UserActor, *args: object) -> None:
        raise RuntimeError(ECHOED)

    monkeypatch.setattr(UserActor, "schedule", faulting)
    with pytest.raises(ProcessingError) as raised:
        await getattr(memory, call)("ann")

    assert "Illegal header value b'[redacted]" in str(raised.value)
    assert "SECRET" not in str(raised.value)


async def test_a_task_refused_on_the_loop_never_asks_the_extractors_clients(
    make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's request is refused (an unknown user): telling its failure on the asyncio
    loop reads the credentials seen already and never asks the extractor's clients, which
    may wait for a client being built, stalling the loop."""
    memory: Memory = await make_memory(extractor=_HoldingItsClient(KEY))
    await memory.add_exchange("ann", "I like tea", "ok")
    await memory.process("ann")
    asked_on: list[str] = []
    real = _workers.carried_by

    def carried_by(extractor: object) -> list[str]:
        asked_on.append(threading.current_thread().name)
        return list(real(extractor))

    monkeypatch.setattr(_workers, "carried_by", carried_by)
    loop_thread = threading.current_thread().name
    with pytest.raises(NotFoundError):
        await memory.request_processing("nobody")

    assert loop_thread not in asked_on, asked_on


def test_a_fault_told_once_the_memory_closed_from_another_loop_is_without_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's request is out on loop A when the Memory is closed from another loop, and
    the user's actor then meets a fault echoing the client's key: once loop A runs again,
    ``request_processing`` tells the fault without the key. It told it whole, the keys the
    closed engine had seen gone with it."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    memory = Memory(
        config=MemoryConfig(db_url=f"sqlite:///{tmp_path / 'm.db'}"),
        extractor=_HoldingItsClient(KEY),
        embedder=False,
    )
    loop_a = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(memory.open())
        loop_a.run_until_complete(memory.add_exchange("ann", "I like tea", "ok"))
        loop_a.run_until_complete(memory.process("ann"))  # a batch went: the key is seen

        def slow_fault(self: UserActor, *args: object) -> None:
            time.sleep(0.5)
            raise RuntimeError(ECHOED)

        monkeypatch.setattr(UserActor, "schedule", slow_fault)
        asked = loop_a.create_task(memory.request_processing("ann"))
        loop_a.run_until_complete(asyncio.sleep(0.05))
        asyncio.run(memory.close(grace=0))
        with pytest.raises(ProcessingError) as raised:
            loop_a.run_until_complete(asked)
    finally:
        loop_a.close()

    assert "Illegal header value b'[redacted]" in str(raised.value)
    assert "SECRET" not in str(raised.value)
