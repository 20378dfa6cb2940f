"""The server's ASGI app: the HTTP API under ``/v1`` and MCP at ``/mcp`` on one port.

Requests pass the access log (request id), the answer to a defect of the middlewares
after it, the refusal of a body the parser took for an upgrade's, ``/mcp/`` taken as
``/mcp``, the body limit, the token check, the refusal of compressed bodies, the refusal
of bodies that are no MCP message the SDK can take, the user-path decoding, and ``HEAD``
taken as ``GET``, in that order, before FastAPI routes them; the MCP route comes from the
official SDK's streamable HTTP app, whose session manager lives as long as the app.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.errors import echoed
from memvee._memory import Memory
from memvee._server.auth import BearerAuth, TokenBook
from memvee._server.drain import Drain, RefusedWhileDraining
from memvee._server.errors import (
    AnsweredOnShutdown,
    DefectsAnswered,
    error_response,
    install_error_handlers,
    on_path,
)
from memvee._server.host_guard import LoopbackOnly, transport_security
from memvee._server.http_api import ANY_ROUTE_ERRORS, ErrorOut, api_router, error_responses
from memvee._server.limits import BodyLimit, jsonrpc_refusal
from memvee._server.logs import AccessLog, drop_repeated_defects
from memvee._server.mcp_tools import READ_ONLY_TOOLS, build_mcp
from memvee._server.request_ids import RefuseInvalidMessages
from memvee._server.user_paths import EncodedSlashes
from memvee.audit import Audit

__all__ = ["create_app"]


class Readiness(BaseModel):
    """Whether the memory accepts calls: ``ready`` or ``not_ready``."""

    status: str


_READINESS: dict[int | str, dict[str, object]] = {
    **error_responses(routes=ANY_ROUTE_ERRORS),
    200: {"model": Readiness},
    503: {
        "model": Readiness | ErrorOut,
        "description": "The memory is starting or closing ({status: not_ready}), or the "
        "server is draining (an error answer, not_ready).",
    },
}


def create_app(
    memory: Memory,
    audit: Audit,
    *,
    tokens: TokenBook | None = None,
    max_body_bytes: int,
    allow_forget: bool = False,
    mcp_user: str | None = None,
    host: str = "127.0.0.1",
    drain: Drain | None = None,
    http_parser: HttpParser | None = None,
) -> ASGIApp:
    """The whole server over an open ``memory``; the caller opens and closes it.

    ``tokens`` (none: no authentication, for loopback) guard everything but the probes
    and the API description; ``host`` is where the server listens: on loopback, every
    route answers only requests for a loopback host from no other site
    (:class:`LoopbackOnly`), against DNS rebinding and cross-site requests. Once
    ``drain`` (the server's) starts, requests that begin are refused and answers close
    their connections (:class:`RefusedWhileDraining`). ``http_parser`` is the HTTP/1
    parser the ASGI server uses (uvicorn's ``http``), which tells which requests asking
    for an upgrade hold their connection (:class:`ClosedAfterUpgrade`); none: any might.
    A defect is logged once, with its request id, under uvicorn too when an application
    serves this app without :func:`~memvee._server.logs.configure_logging`
    (:func:`~memvee._server.logs.drop_repeated_defects`).
    """
    drop_repeated_defects()
    mcp = build_mcp(memory, audit, user=mcp_user, allow_forget=allow_forget)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        max_request_body_size=max_body_bytes,
        transport_security=transport_security(host),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            yield

    api = FastAPI(
        title="memvee",
        version=importlib.metadata.version("memvee"),
        description="Long-term memory for LLM agents: append conversations, get knowledge "
        "back, each entry traceable to its messages. MCP is served at /mcp.",
        lifespan=lifespan,
        redoc_url=None,
        # Starlette's slash redirect would answer /v1/users (a prefix of the user routes)
        # with a 307 to /v1/users/, not the JSON error every other unknown path gets
        # (/mcp/ is served as /mcp by McpWithSlash).
        redirect_slashes=False,
    )

    @api.get("/healthz", tags=["probes"], responses=error_responses(routes=ANY_ROUTE_ERRORS))
    async def healthz() -> dict[str, str]:
        """The process is up and serving requests."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["probes"], responses=_READINESS)
    async def readyz() -> JSONResponse:
        """The memory is open and accepts calls (503 while starting or shutting down)."""
        ready = memory.is_open
        return JSONResponse(
            {"status": "ready" if ready else "not_ready"}, status_code=200 if ready else 503
        )

    router = api_router(memory, audit)
    api.include_router(router)
    api.router.routes.extend(_posts_only(mcp_app.routes))
    install_error_handlers(api, [*api.router.routes, *router.routes], jsonrpc_path="/mcp")
    routed = RefuseInvalidMessages(EncodedSlashes(HeadAsGet(api, "/mcp")), "/mcp", READ_ONLY_TOOLS)
    guarded = BodyLimit(
        BearerAuth(UncodedBodies(routed, jsonrpc_path="/mcp"), tokens or TokenBook()),
        max_body_bytes,
        jsonrpc_path="/mcp",
    )
    answered = AnsweredOnShutdown(LoopbackOnly(guarded, host))
    drained = RefusedWhileDraining(answered, drain or Drain())
    upgraded = ClosedAfterUpgrade(McpWithSlash(drained, "/mcp"), http_parser, jsonrpc_path="/mcp")
    return AccessLog(DefectsAnswered(upgraded, jsonrpc_path="/mcp"))


HttpParser = Literal["h11", "httptools"]
"""The HTTP/1 parsers uvicorn serves with."""


class ClosedAfterUpgrade:
    """ASGI middleware: the answer to a request asking for an upgrade (a WebSocket or h2c
    handshake, served as the plain request it also is) closes its connection when the
    parser holds back what the client sends after it, as the other protocol's: a request
    sent next on the same connection would wait unanswered until the client's timeout;
    closed, the client opens another.

    h11 holds on an ``Upgrade`` header alone; httptools only when ``Connection`` names
    ``upgrade`` too, and other requests (an ``Upgrade`` a proxy passed on, without the
    token) keep their connection. The parser unknown, any ``Upgrade`` closes.

    httptools also takes such a request's body for the other protocol's, when ``Upgrade``
    names one, and hands the app none: a request that has one (a POST sent with curl's
    ``--http2`` on plain http) is refused, 422 ``invalid_input`` (on ``jsonrpc_path``, in
    JSON-RPC's shape), rather than served as if it had been sent empty. Where the body is
    read (h11, an empty ``Upgrade``) or the parser is unknown, the request is served."""

    def __init__(
        self, app: ASGIApp, parser: HttpParser | None = None, *, jsonrpc_path: str | None = None
    ) -> None:
        self.app = app
        self.parser = parser
        self.jsonrpc_path = jsonrpc_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._held(scope.get("headers", ())):
            await self.app(scope, receive, send)
            return
        if self._body_taken(scope["headers"]):
            told = (
                "body: not read: a request asking for an upgrade (Upgrade, with Connection: "
                "upgrade) has its body taken for the other protocol's by this server, which "
                "upgrades none: send it without Upgrade"
            )
            refusal = (
                jsonrpc_refusal(told, 422)
                if on_path(scope, self.jsonrpc_path)
                else error_response(scope, 422, "invalid_input", told, {"connection": "close"})
            )
            await refusal(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)

    def _held(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the parser holds the connection after a request with ``headers``."""
        if not any(name == b"upgrade" for name, _ in headers):
            return False
        if self.parser != "httptools":
            return True
        return _names_upgrade(headers)

    def _body_taken(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether httptools took the body of a request it holds as an upgrade, with
        ``headers``, for the other protocol's: an ``Upgrade`` naming a protocol, with
        ``Connection: upgrade``. With the parser unknown, the request is served: refused,
        a body h11 read would be lost."""
        if self.parser != "httptools" or not _names_upgrade(headers):
            return False
        if not any(name == b"upgrade" and value.strip() for name, value in headers):
            return False
        return any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in headers
        )


def _names_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``Connection`` names ``upgrade`` among its tokens, in any copy of it."""
    return any(
        token.strip().lower() == b"upgrade"
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    )


class McpWithSlash:
    """ASGI middleware: ``/mcp/`` is routed as ``/mcp`` (clients are often configured with
    the slash, and the SDK's client follows no redirect once the slash redirect is off),
    before the guards, so it passes the same checks, limits and handler; the access log
    keeps the path the client asked for."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path + "/":
            scope = {**scope, "path": self.path, "raw_path": self.path.encode()}
        await self.app(scope, receive, send)


class UncodedBodies:
    """ASGI middleware: a body sent with a Content-Encoding other than ``identity`` is
    answered 415 before anything reads it (RFC 9110, 15.5.16). The server decodes none, and
    read such a body as it came: gzip's bytes as JSON that is not UTF-8, a plain body said
    to be compressed as if it were not. On ``jsonrpc_path`` (MCP's, whose transport decodes
    none either) the refusal is told in JSON-RPC's shape, as an MCP client reads it."""

    def __init__(self, app: ASGIApp, jsonrpc_path: str) -> None:
        self.app = app
        self.jsonrpc_path = jsonrpc_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coding = _content_coding(scope) if scope["type"] == "http" else None
        if coding is None:
            await self.app(scope, receive, send)
            return
        told = (
            f"body: sent with Content-Encoding {echoed(coding)}, which this server does not "
            "decode: send it uncompressed"
        )
        answer = (
            jsonrpc_refusal(told, 415)
            if scope["path"] == self.jsonrpc_path
            else error_response(scope, 415, "unsupported_media_type", told, {"connection": "close"})
        )
        await answer(scope, receive, send)


def _content_coding(scope: Scope) -> str | None:
    """The Content-Encoding of a request that has a body, unless it names no coding but
    ``identity``: every copy of the header, as one list (RFC 9110, 5.3), so a second copy
    saying ``identity`` hides no first one."""
    named_by: dict[bytes, list[bytes]] = {}
    for key, value in scope["headers"]:
        named_by.setdefault(key.lower(), []).append(value)
    lengths = named_by.get(b"content-length", [])
    has_body = any(length != b"0" for length in lengths) or b"transfer-encoding" in named_by
    coding = b", ".join(named_by.get(b"content-encoding", [])).decode("latin-1")
    named = {part.strip().lower() for part in coding.split(",")} - {"", "identity"}
    return coding if has_body and named else None


def _posts_only(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The MCP transport's routes, taking ``POST`` alone (any other method is a 405 naming
    it): a stateless server sends nothing on the event stream a ``GET`` would open, which
    stayed open, pinged, for ever, and has no session for a ``DELETE`` to end."""
    return [
        Route(route.path, route.endpoint, methods=["POST"], name=route.name)
        if isinstance(route, Route)
        else route
        for route in routes
    ]


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` is answered as its ``GET`` would be, without the body
    (every server must take it where it takes GET, and FastAPI's routes take only the
    methods they name); ``HEAD`` on ``skipped`` (MCP, where a GET opens an event stream)
    is left to its route."""

    def __init__(self, app: ASGIApp, skipped: str) -> None:
        self.app = app
        self.skipped = skipped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"] == self.skipped:
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
