"""The server's JSON logs: what ``configure_logging`` lets through, and that no
credential is ever in it, at any level."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn

import memvee._secrets
from events import ProcessingError
from events.extraction import BatchMessage, ExtractionBatch
from memvee import Memory
from memvee._server.app import ClosedAfterUpgrade, HeadAsGet, create_app
from memvee._server.limits import BodyLimit
from memvee._server.logs import configure_logging
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor
from tests.support.messages_api_server import MessagesAPIServer

API_KEY = "sk-ant-logs-DO-NOT-LEAK-0123456789"
GATEWAY_PASSWORD = "S3cretProxyPw-DO-NOT-LEAK"
DB_PASSWORD = "hunter2-of-the-database"
BATCH = ExtractionBatch(
    "u1", "t1", (BatchMessage("m-1", "user", "I live in Oslo.", datetime(2025, 3, 1, tzinfo=UTC)),)
)
_TOUCHED_LOGGERS = ("", "httpx", "httpx2")


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What the server's log handler writes to stderr, read once the test is done; the
    process's logging is put back after."""
    loggers = [logging.getLogger(name) for name in _TOUCHED_LOGGERS]
    levels = [logger.level for logger in loggers]
    handlers = logging.getLogger().handlers[:]
    yield lambda: capsys.readouterr().err
    logging.getLogger().handlers[:] = handlers
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    """The stand-in Messages API, reached through a base URL carrying a gateway's
    credentials."""
    with MessagesAPIServer() as running:
        base_url = running.base_url.replace("://", f"://gwuser:{GATEWAY_PASSWORD}@")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
        yield running


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def _extract() -> None:
    extractor = ClaudeExtractor(timeout=5.0, max_retries=0)
    try:
        await extractor.extract(BATCH)
    finally:
        await extractor.aclose()


async def test_at_info_an_api_call_writes_no_request_line(
    logs: Callable[[], str], gateway: MessagesAPIServer
) -> None:
    configure_logging("info")
    await _extract()

    text = logs()
    assert len(gateway.requests) == 1
    assert not [r for r in _records(text) if r["logger"] in ("httpx2", "httpx")]
    assert GATEWAY_PASSWORD not in text and "gwuser" not in text


async def test_at_debug_request_lines_show_the_url_without_its_credentials(
    logs: Callable[[], str], gateway: MessagesAPIServer
) -> None:
    configure_logging("debug")
    await _extract()

    text = logs()
    records = _records(text)
    shown = f"POST http://***@{gateway.base_url.removeprefix('http://')}/v1/messages"
    assert any(r["logger"] == "httpx2" and shown in r["message"] for r in records)
    assert any(r["logger"] == "anthropic._base_client" and shown in r["message"] for r in records)
    assert GATEWAY_PASSWORD not in text and "gwuser" not in text and API_KEY not in text


def test_a_secret_in_a_message_an_extra_or_a_traceback_is_redacted(
    logs: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    configure_logging("info", secrets=[DB_PASSWORD])
    log = logging.getLogger("memvee.test")
    try:
        raise RuntimeError(f"refused key {API_KEY}")
    except RuntimeError:
        log.warning(
            "connecting with %s", DB_PASSWORD, extra={"dsn": f"pw={DB_PASSWORD}"}, exc_info=True
        )

    text = logs()
    (record,) = _records(text)
    assert record["message"] == "connecting with [redacted]"
    assert record["dsn"] == "pw=[redacted]"
    assert "RuntimeError: refused key [redacted]" in record["exception"]
    assert DB_PASSWORD not in text and API_KEY not in text


async def _served_once(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    """``body`` posted to ``path`` of ``app`` served by uvicorn as ``memvee serve`` runs it
    (no WebSocket library, its logs through the server's handler)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http="h11", ws="none", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            return await http.post(path, json=body)
    finally:
        server.should_exit = True
        await serving


async def test_a_defect_is_logged_once_with_its_traceback_under_the_request_id_and_no_secret(
    logs: Callable[[], str], memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 500 tells the caller the log says why under its request id: the one line with
    the traceback carries that id, cleaned of the password the error shows. uvicorn's own
    "Exception in ASGI application" line, without the id, no longer repeats it."""
    monkeypatch.setenv("DB_PASSWORD", DB_PASSWORD)

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"postgresql://memvee:{DB_PASSWORD}@db/memvee and {DB_PASSWORD}")

    monkeypatch.setattr(memory, "retrieve", crash)
    configure_logging("info")
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        answer = await _served_once(app, "/v1/users/ann/retrieve", {"query": "x"})

    text = logs()
    assert answer.status_code == 500
    with_traceback = [record for record in _records(text) if "exception" in record]
    assert [(r["logger"], r["level"], r["request_id"]) for r in with_traceback] == [
        ("memvee.server", "error", answer.headers["x-request-id"])
    ]
    shown = with_traceback[0]["exception"]
    assert "RuntimeError: postgresql://***@db/memvee and [redacted]" in shown
    assert DB_PASSWORD not in text


async def test_a_5xxs_words_are_cleaned_of_the_secrets_given_to_the_log_as_the_log_is(
    logs: Callable[[], str], memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password handed to ``configure_logging`` (``--db-url``'s, in no environment
    variable) is taken out of a 502's words told to the caller, as out of the log."""
    monkeypatch.setattr(memvee._secrets, "_declared", [()])  # the process's set put back
    password = "Sup3rSecretDbPw-not-in-env"

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise ProcessingError("ann", "t-1", f'FATAL: password "{password}" rejected')

    monkeypatch.setattr(memory, "retrieve", fail)
    configure_logging("info", secrets=[password])
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        answer = await _served_once(app, "/v1/users/ann/retrieve", {"query": "x"})

    assert answer.status_code == 502
    assert answer.json()["message"] == (
        "processing task t-1 for user 'ann' failed: FATAL: password \"[redacted]\" rejected"
    )
    assert password not in logs()


@dataclass(frozen=True)
class _FrozenDefect(Exception):
    """An exception that refuses every attribute set on it, as a frozen dataclass does."""

    why: str


async def test_a_defect_that_takes_no_attribute_is_answered_as_json_and_logged_once(
    logs: Callable[[], str], memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error whose class refuses attributes (a frozen dataclass) is answered as any
    defect, a JSON 500 naming the request, its traceback logged once under that id."""

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise _FrozenDefect("bad")

    monkeypatch.setattr(memory, "retrieve", crash)
    configure_logging("info")
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        answer = await _served_once(app, "/v1/users/ann/retrieve", {"query": "x"})

    request_id = answer.headers["x-request-id"]
    assert (answer.status_code, answer.json()["error"]) == (500, "internal_error")
    with_traceback = [record for record in _records(logs()) if "exception" in record]
    assert [(r["logger"], r["request_id"]) for r in with_traceback] == [
        ("memvee.server", request_id)
    ]


async def test_a_defect_is_logged_once_when_an_application_serves_the_app_its_own_way(
    caplog: pytest.LogCaptureFixture,
    memory: Memory,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Served under an application's uvicorn, with no ``configure_logging``, a crash's
    traceback is logged once, by memvee with the request id, not again by uvicorn."""
    monkeypatch.setattr(logging.getLogger("uvicorn.error"), "filters", [])

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("defect")

    monkeypatch.setattr(memory, "retrieve", crash)
    caplog.set_level(logging.INFO)
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        answer = await _served_once(app, "/v1/users/ann/retrieve", {"query": "x"})

    logged = [
        (record.name, getattr(record, "request_id", None))
        for record in caplog.records
        if record.exc_info or record.exc_text
    ]
    assert logged == [("memvee.server", answer.headers["x-request-id"])]


@pytest.mark.parametrize(
    "middleware", [ClosedAfterUpgrade, BodyLimit, HeadAsGet], ids=["outermost", "guard", "inner"]
)
async def test_a_defect_in_a_middleware_is_answered_and_logged_once_under_its_request_id(
    logs: Callable[[], str],
    memory: Memory,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    middleware: type,
) -> None:
    """A crash in one of the server's own middlewares, outside FastAPI's handlers, is
    answered as a route's defect is, a JSON 500 naming the request, and its traceback is
    logged once under that id. It was uvicorn's bare text/plain 500 with no id, and
    uvicorn's "Exception in ASGI application" line with no id either, so the access
    log's 500 could not be tied to its traceback."""

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("defect in a middleware")

    monkeypatch.setattr(middleware, "__call__", crash)
    configure_logging("info")
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        answer = await _served_once(app, "/v1/users/ann/retrieve", {"query": "x"})

    request_id = answer.headers.get("x-request-id")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal_error",
        "message": f"the server failed unexpectedly; its log says why (request {request_id})",
        "request_id": request_id,
    }
    records = _records(logs())
    with_traceback = [record for record in records if "exception" in record]
    assert [(r["logger"], r["level"], r["request_id"]) for r in with_traceback] == [
        ("memvee.server", "error", request_id)
    ]
    assert "RuntimeError: defect in a middleware" in with_traceback[0]["exception"]
    (access,) = [r for r in records if r["logger"] == "memvee.server.access"]
    assert (access["status"], access["request_id"]) == (500, request_id)
