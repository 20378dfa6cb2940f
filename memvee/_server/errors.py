"""How the library's typed errors reach a caller: one status code and one code word each.

Shared by the HTTP API (status and JSON body) and the MCP tools (the code word leads the
tool's error text), so both faces tell a caller the same thing about the same failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mcp.types import INTERNAL_ERROR, INVALID_REQUEST
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events import (
    ConflictError,
    InvalidInputError,
    MemoryClosedError,
    MemveeError,
    NotFoundError,
    ProcessingError,
    ProcessingTimeoutError,
    StorageError,
)
from events.errors import UserForgottenError, echoed, is_database_failure
from memvee._secrets import every_secret, redact
from memvee._server.logs import REQUEST_ID_KEY, logged_already, note_logged

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "DATABASE_FAILURES",
    "READS_ONLY_KEY",
    "STORAGE_UNAVAILABLE",
    "AnsweredOnShutdown",
    "ApiError",
    "DefectsAnswered",
    "caller_message",
    "classify",
    "described",
    "install_error_handlers",
    "jsonrpc_error",
    "jsonrpc_id_of",
    "mark_reads_only",
    "note_jsonrpc_id",
    "on_path",
]

log = logging.getLogger("memvee.server")

# Most specific first: NotFoundError is an InvalidInputError, ConflictError a StorageError.
_STATUS: tuple[tuple[type[MemveeError], int, str], ...] = (
    (NotFoundError, 404, "not_found"),
    (InvalidInputError, 422, "invalid_input"),
    (MemoryClosedError, 503, "not_ready"),
    (ConflictError, 409, "conflict"),
    (StorageError, 503, "storage_unavailable"),
    (ProcessingTimeoutError, 504, "processing_timeout"),
    (UserForgottenError, 409, "user_forgotten"),  # nothing upstream failed
    (ProcessingError, 502, "processing_failed"),
)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

STORAGE_UNAVAILABLE = "the database is unavailable right now; try again shortly"
"""What a caller is told when the database fails: its own words name its address and
driver, which stay in the server's log."""

DATABASE_FAILURES: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error)
"""The database's own errors, answered as ``storage_unavailable`` should one pass the
library without becoming a :class:`StorageError` (see ``is_database_failure``)."""

RETRY_AFTER = "1"
"""Seconds a 503 asks a client to wait before trying again."""


class ApiError(Exception):
    """A refusal of the server itself, such as a user out of the token's scope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def classify(error: Exception) -> tuple[int, str]:
    """The HTTP status and code word of an error raised by the library or the server."""
    if isinstance(error, ApiError):
        return error.status, error.code
    if is_database_failure(error):  # one no library path turned into a StorageError
        return 503, "storage_unavailable"
    for kind, status, code in _STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal_error"


def caller_message(error: Exception, request_id: object = None) -> str:
    """What a caller is told of ``error``: its own words for a refusal (4xx); for a
    failure of the server (5xx) its words cleaned of every secret the log is cleaned of
    (:func:`~memvee._secrets.every_secret`: an upstream's URL with its password, a key,
    the database's password), or none at all for an error the API has no
    word for (``internal_error``: :func:`unexpected`, its words left to the log), nor for
    a failing database."""
    storage = isinstance(error, StorageError) and not isinstance(error, ConflictError)
    if storage or is_database_failure(error):
        return STORAGE_UNAVAILABLE
    status, code = classify(error)
    if code == "internal_error":
        return unexpected(request_id)
    if status >= 500:
        return redact(str(error), every_secret())
    return str(error)


def unexpected(request_id: object) -> str:
    """What a caller is told of a defect: nothing of its words, which may hold a secret,
    but where the server's log tells it."""
    return f"the server failed unexpectedly; its log says why (request {request_id})"


def described(problem: Mapping[str, Any], whole: str) -> str:
    """One of pydantic's validation problems as ``place: what``, the place dotted (``whole``
    when the problem is with the input as a whole), as every ``invalid_input`` names it."""
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
    return f"{where or whole}: {problem.get('msg', 'invalid')}"


def error_response(
    scope: Scope, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error answer: ``{error, message, request_id}``."""
    return JSONResponse(
        {"error": code, "message": message, "request_id": scope.get(REQUEST_ID_KEY)},
        status_code=status,
        headers=headers,
    )


def jsonrpc_error(
    code: int,
    told: str,
    status: int,
    headers: dict[str, str] | None = None,
    id_json: str = "null",
) -> Response:
    """An error on MCP's path as the SDK's streamable HTTP transport answers its own: a
    JSON-RPC error with the request's id as JSON (``id_json``, exactly as it was sent), or
    null when none is known (an unread, or unparsed, body)."""
    error = json.dumps({"code": code, "message": told})
    body = f'{{"jsonrpc": "2.0", "id": {id_json}, "error": {error}}}'
    return Response(body, status, media_type="application/json", headers=headers)


def _body(request: Request, status: int, code: str, message: str) -> JSONResponse:
    return error_response(request.scope, status, code, message)


_UNREADABLE_BODY = (
    "body: not JSON this server can read (text that is not UTF-8, a number of more than "
    "4,300 digits, or arrays or objects nested too deep)"
)
"""What bodies FastAPI cannot parse, short of malformed JSON, have in common."""


def _unread(body: object) -> bool:
    """Whether a body FastAPI validated is the bytes it was sent as: one it did not read as
    JSON, as it takes only a body typed as JSON."""
    return isinstance(body, bytes) and bool(body)


def _named(content_type: str | None) -> str:
    """A refused Content-Type as an answer repeats it: cut short, as every echo is."""
    return "no Content-Type" if content_type is None else echoed(content_type)


def install_error_handlers(
    app: FastAPI, routes: Sequence[BaseRoute], jsonrpc_path: str | None = None
) -> None:
    """Answer every error with ``{"error", "message", "request_id"}`` and its status (a
    defect with 500 ``internal_error``, its words and traceback left to the log under the
    request id; on ``jsonrpc_path``, MCP's, as a JSON-RPC error); a 405 names in
    ``Allow`` the methods of every one of ``routes`` at its path (FastAPI keeps an
    included router's routes out of ``app.routes``)."""
    # Here, not at the top: the MCP tools share this module, and memvee mcp loads no FastAPI.
    from fastapi.exceptions import RequestValidationError

    async def on_known(request: Request, error: Exception) -> JSONResponse:
        status, code = classify(error)
        request_id = request.scope.get(REQUEST_ID_KEY)
        if status >= 500:
            traceback = error if code == "internal_error" else None
            log.warning("%s: %s", code, error, exc_info=traceback, extra={"request_id": request_id})
        headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
        told = caller_message(error, request_id)
        return error_response(request.scope, status, code, told, headers)

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        found = error.errors()
        if any(p.get("loc") == ("body",) and _unread(p.get("input")) for p in found):
            # RFC 9110, 15.5.16: the body itself was never looked at, so its type is the
            # one mistake told, before any other the request may hold.
            sent_as = request.headers.get("content-type")
            return _body(
                request,
                415,
                "unsupported_media_type",
                "body: not read, as it is not typed as JSON: send it with Content-Type: "
                f"application/json (it came with {_named(sent_as)})",
            )
        problems = []
        for problem in found:
            if problem.get("type") == "json_invalid":  # its place is a character offset
                at = problem.get("loc", ("body", "?"))[-1]
                why = problem.get("ctx", {}).get("error", "JSON decode error")
                problems.append(f"body: not valid JSON: {why} at character {at}")
                continue
            problems.append(described(problem, "body"))
        return _body(request, 422, "invalid_input", "; ".join(problems))

    async def on_http(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 400:  # FastAPI: a body json.loads refused, but not as JSON
            return _body(request, 422, "invalid_input", _UNREADABLE_BODY)
        code = _HTTP_CODES.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = _allowed_methods(routes, request.scope)
        if on_path(request.scope, jsonrpc_path):  # a method MCP's route does not take
            return jsonrpc_error(INVALID_REQUEST, str(error.detail), error.status_code, headers)
        return error_response(request.scope, error.status_code, code, str(error.detail), headers)

    async def on_defect(request: Request, error: Exception) -> Response:
        # Starlette raises the error again once this answer is sent: the ASGI server's own
        # line for it, without the request id, is dropped (note_logged).
        return _logged_defect(request.scope, error, jsonrpc_path)

    app.add_exception_handler(Exception, on_defect)
    app.add_exception_handler(MemveeError, on_known)
    app.add_exception_handler(ApiError, on_known)
    for database_failure in DATABASE_FAILURES:
        app.add_exception_handler(database_failure, on_known)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)


def _logged_defect(scope: Scope, error: Exception, jsonrpc_path: str | None) -> Response:
    """Log ``error``, a defect, once with its traceback under the request's id (marked, so
    that the ASGI server's line for it, without the id, is dropped), and give the 500 that
    answers it, naming that id (on ``jsonrpc_path``, a JSON-RPC error)."""
    request_id = scope.get(REQUEST_ID_KEY)
    log.error(
        "internal_error: %s", type(error).__name__, exc_info=error, extra={"request_id": request_id}
    )
    note_logged(error)
    told = unexpected(request_id)
    if on_path(scope, jsonrpc_path):
        return jsonrpc_error(INTERNAL_ERROR, told, 500, id_json=jsonrpc_id_of(scope))
    return error_response(scope, 500, "internal_error", told)


def on_path(scope: Scope, path: str | None) -> bool:
    """Whether the request of ``scope`` is for ``path``, with a trailing slash or not
    (``/mcp/`` is served as ``/mcp``)."""
    return path is not None and scope.get("path") in (path, path + "/")


class DefectsAnswered:
    """ASGI middleware, just inside the access log: an error that one of the server's own
    middlewares raises, outside FastAPI's handlers, is handled as a route's defect is (see
    :func:`install_error_handlers`): logged once under the request id the access log
    names, and answered with the 500 naming it if no answer began; then raised on, as
    Starlette raises a route's, for the ASGI server to end the connection. Without it,
    uvicorn answered a bare text/plain 500 and logged the traceback with no request id.
    A route's defect, logged already, is only raised on."""

    def __init__(self, app: ASGIApp, *, jsonrpc_path: str | None = None) -> None:
        self.app = app
        self.jsonrpc_path = jsonrpc_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def noting(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except Exception as error:
            if logged_already(error):
                raise
            answer = _logged_defect(scope, error, self.jsonrpc_path)
            if not answered:
                await answer(scope, receive, send)
            raise


def _allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The methods of every one of ``routes`` at the path of ``scope``, as a 405's
    ``Allow`` must list them: Starlette names only the first route's, and
    ``/v1/users/{user}`` has a route for ``GET`` and another for ``DELETE``."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")  # taken wherever GET is (HeadAsGet)
    return ", ".join(sorted(methods))


READS_ONLY_KEY = "memvee.reads_only"
"""Where :class:`AnsweredOnShutdown` puts a request's :class:`ReadsOnly` in its scope."""


class ReadsOnly:
    """Whether a request sent by a method that may change things (a POST) is known to
    only read: set once, by the route or middleware that can tell."""

    def __init__(self) -> None:
        self.known = False


class JsonRpcId:
    """The id of the JSON-RPC request a request on MCP's path carries, as JSON: set once
    its body is read and parsed, for a defect's answer to name it."""

    def __init__(self) -> None:
        self.json = "null"


JSONRPC_ID_KEY = "memvee.jsonrpc_id"
"""Where :class:`AnsweredOnShutdown` puts a request's :class:`JsonRpcId` in its scope."""


def note_jsonrpc_id(scope: Scope, id_json: str) -> None:
    """Note that the request of ``scope`` carries the JSON-RPC id ``id_json``."""
    holder = scope.get(JSONRPC_ID_KEY)
    if isinstance(holder, JsonRpcId):
        holder.json = id_json


def jsonrpc_id_of(scope: Scope) -> str:
    """The JSON-RPC id noted for the request of ``scope`` (:func:`note_jsonrpc_id`), as
    JSON: ``null`` when none is known."""
    holder = scope.get(JSONRPC_ID_KEY)
    return holder.json if isinstance(holder, JsonRpcId) else "null"


def mark_reads_only(scope: Scope) -> None:
    """Note that the request of ``scope`` changes nothing, such as a retrieve or an MCP
    call of read-only tools: cut short by the drain, it is answered ``not_ready``."""
    reads_only = scope.get(READS_ONLY_KEY)
    if isinstance(reads_only, ReadsOnly):
        reads_only.known = True


class AnsweredOnShutdown:
    """ASGI middleware: a request that the server's shutdown cancels before its answer
    began is answered 503 with ``Connection: close``, instead of the ASGI server's bare 500
    and a traceback in the log.

    A read (a safe method, or a request marked by :func:`mark_reads_only`), or a request
    cut while the app waited for the rest of its body (a route acts only on a whole
    body), was not acted on: ``not_ready``, try again. Any other change
    may have been carried out (a write handed to the Memory goes on to its commit; a
    route that takes no body, such as ``DELETE /v1/users/{user}``, never reads it):
    ``outcome_unknown``, so that a client checks before sending it again rather than
    acting twice.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = received = awaiting_body = False
        reads_only = scope[READS_ONLY_KEY] = ReadsOnly()  # scopes are copied past here
        scope[JSONRPC_ID_KEY] = JsonRpcId()

        async def noting(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        async def receiving() -> Message:
            nonlocal received, awaiting_body
            awaiting_body = not received  # stays set when the shutdown cancels the wait
            message = await receive()
            awaiting_body = False
            if message["type"] == "http.request" and not message.get("more_body", False):
                received = True
            return message

        try:
            await self.app(scope, receiving, noting)
        except asyncio.CancelledError:
            if answered:
                raise
            headers = {"Retry-After": RETRY_AFTER, "Connection": "close"}
            read = reads_only.known or scope.get("method") in _SAFE_METHODS
            if not awaiting_body and not read:
                unknown = (
                    "the server shut down before it could answer; the request may have been "
                    "carried out: check before sending it again"
                )
                answer = error_response(scope, 503, "outcome_unknown", unknown, headers)
            else:
                stopping = "the server is shutting down; try again shortly"
                answer = error_response(scope, 503, "not_ready", stopping, headers)
            await answer(scope, receive, send)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: cut short, they can simply be sent again."""
