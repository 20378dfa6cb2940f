"""The request body limit: a body over it gets 413 before anything reads it whole."""

from __future__ import annotations

from mcp.types import INVALID_REQUEST
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memvee._server.errors import error_response, jsonrpc_error

__all__ = ["BodyLimit"]


class _TooLarge(HTTPException):
    """Raised into the app when a chunked body passes the limit mid-stream; an
    HTTPException so that frameworks reading the body answer it as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over the limit of {max_bytes} bytes")


_DRAIN_FACTOR = 4
"""How much of a refused body is read and dropped before the 413, in limits: a client
still sending when the server closes gets a reset instead of the answer."""


class BodyLimit:
    """ASGI middleware: answers 413 to a body over ``max_bytes``; on ``jsonrpc_path``
    (MCP's) in the JSON-RPC error shape the MCP transport answers its own errors in, as
    a client there reads no other.

    A declared ``Content-Length`` over the limit is refused before the app runs; a body
    without one is counted as it streams in, and the app is stopped when it passes. The
    rest of a refused body is read and dropped (up to a few limits' worth), so that the
    client reads the 413 rather than a connection reset; but for a client that waits to
    be asked for it (``Expect: 100-continue``), which sends none once refused.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, *, jsonrpc_path: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.jsonrpc_path = jsonrpc_path

    def _over(self, length: bytes) -> bool:
        """Whether a Content-Length says more than the limit; its digits are compared by
        count first, as Python refuses to convert more than 4,300 of them."""
        digits = length.lstrip(b"0") or b"0"
        return length.isdigit() and (
            len(digits) > len(str(self.max_bytes)) or int(digits) > self.max_bytes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key.lower() == b"content-length" and self._over(value):
                await self._refuse(scope, receive, send, drain=not _asks_first(scope))
                return
        seen = 0
        started = ended = False

        async def counting_receive() -> Message:
            nonlocal seen, ended
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                # A body that has ended has nothing left to drain: waiting for more would
                # wait for the client to give up.
                await self._refuse(scope, receive, send, drain=not ended)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, *, drain: bool = True
    ) -> None:
        if drain:
            await self._drain(receive)
        told = f"the request body is over the limit of {self.max_bytes} bytes"
        answer = (
            jsonrpc_refusal(told)
            if scope["path"] == self.jsonrpc_path
            else error_response(scope, 413, "payload_too_large", told, {"connection": "close"})
        )
        await answer(scope, receive, send)

    async def _drain(self, receive: Receive) -> None:
        """Read what is left of the body, up to a bound, and drop it."""
        budget = _DRAIN_FACTOR * self.max_bytes
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _asks_first(scope: Scope) -> bool:
    """Whether the client waits to be asked for the body (``Expect: 100-continue``): it
    sends none once told a final status (RFC 9110, 10.1.1), and reading would ask for it
    (the server answers ``100 Continue`` at the first read)."""
    return any(
        key.lower() == b"expect" and value.strip().lower() == b"100-continue"
        for key, value in scope["headers"]
    )


def jsonrpc_refusal(told: str, status: int = 413) -> Response:
    """A refusal (``status``) of a body on MCP's path as the SDK's streamable HTTP transport
    answers its own errors: a JSON-RPC invalid request with a null id (no id of an unread
    body is known)."""
    return jsonrpc_error(INVALID_REQUEST, told, status, headers={"connection": "close"})
