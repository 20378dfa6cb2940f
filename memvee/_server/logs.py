"""Structured logs: one JSON object a line on stderr, and an access log with request ids.

JSON lines are what log shippers parse without configuration; stderr keeps stdout free
for the MCP stdio protocol. Request headers are never logged, so neither are tokens, and
every record is cleaned of credentials before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memvee._log_redaction import RedactSecrets
from memvee._secrets import declare_secrets

__all__ = [
    "REQUEST_ID_KEY",
    "AccessLog",
    "JsonFormatter",
    "configure_logging",
    "drop_repeated_defects",
    "logged_already",
    "note_logged",
]

REQUEST_ID_KEY = "memvee.request_id"
"""Where a request's id is put in its ASGI scope."""

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED = 499
"""The access log's status of a request whose client hung up before it was answered
(nginx's "client closed request")."""
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_REQUEST_LINE_LOGGERS = ("httpx", "httpx2")
"""The loggers of the HTTP clients that log a line per request at info."""

access_log = logging.getLogger("memvee.server.access")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message and its extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        # exc_text: the traceback a filter cleaned of a secret (and dropped exc_info for).
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", secrets: Sequence[str] = ()) -> None:
    """Send every log record (memvee's, uvicorn's, the MCP SDK's) as JSON to stderr, with
    no credential in it (see :class:`RedactSecrets`; ``secrets`` adds to those it knows,
    declared to the process: an error's words told to a caller are cleaned of them too).

    An HTTP client's line per request (the Claude API's) shows at ``debug`` only: at
    ``info`` the log is the server's own account of what it was asked.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    declare_secrets(secrets)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(each, _NoWebSocketAdvice) for each in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_NoWebSocketAdvice())
    drop_repeated_defects()
    for name in _REQUEST_LINE_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )


class _NoWebSocketAdvice(logging.Filter):
    """Drops uvicorn's warning of an unsupported upgrade, and its advice to install a
    WebSocket library, which it writes at every request asking for an upgrade: the server
    serves no WebSocket by choice (``ws="none"``) and answers such a request as plain
    HTTP, in the access log as any other; a warning per request any client can send would
    flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_UPGRADE_LINES)


_UPGRADE_LINES: Final = ("Unsupported upgrade request.", "No supported WebSocket library detected")
"""How uvicorn's lines about an upgrade it does not serve begin (:class:`_NoWebSocketAdvice`)."""


_LOGGED_MARK = "_memvee_logged_with_request_id"
"""The key :func:`note_logged` puts in an error's ``__dict__`` once it is logged."""


def note_logged(error: BaseException) -> None:
    """Mark ``error`` as logged with its traceback and request id: the ASGI server's own
    line for it, which it writes as the error leaves the app, would repeat it without the
    id (:class:`_NoRepeatedDefect`). Written in the error's ``__dict__``, which every
    exception has, past its ``__setattr__``: a frozen dataclass's refuses, and a failure
    here would turn the JSON 500 into the server's bare one."""
    vars(error)[_LOGGED_MARK] = True


def logged_already(error: BaseException) -> bool:
    """Whether ``error`` was logged with its traceback and request id (:func:`note_logged`)."""
    return bool(vars(error).get(_LOGGED_MARK, False))


def drop_repeated_defects() -> None:
    """Put :class:`_NoRepeatedDefect` on uvicorn's error logger, once: a crash the app
    logged is then logged once whoever set the logging up (``memvee serve``, or an
    application serving the app under its own uvicorn)."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(each, _NoRepeatedDefect) for each in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_NoRepeatedDefect())


class _NoRepeatedDefect(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" for an error the app logged
    already, with the request id (:func:`note_logged`): a traceback is logged once."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not logged_already(error)


class AccessLog:
    """ASGI middleware: gives every request an id and logs one line when it ends.

    The id is the caller's ``X-Request-ID`` when it is a short token of safe characters,
    else a fresh one; it is echoed in the response header and in error bodies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope[REQUEST_ID_KEY] = request_id
        started = time.perf_counter()
        status = 500  # raised before answering
        answered = False

        async def noting_disconnect() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                status = CLIENT_CLOSED
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                # An answer to a client already gone (a body cut short) was never sent.
                status = status if status == CLIENT_CLOSED else message["status"]
                answered = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, noting_disconnect, send_with_id)
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key.lower() == REQUEST_ID_HEADER:
            given: str = value.decode("latin-1")
            if _GOOD_REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex
