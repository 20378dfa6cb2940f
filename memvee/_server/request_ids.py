"""MCP requests whose id MCP does not take: refused, on both transports, not dropped.

MCP ids are strings or integers. The SDK reads a request with any other id (a float,
null, an object) as a notification, passes the id over and answers nothing, so the client
waits for ever. :func:`has_unusable_id` finds such a message; the stdio drain answers it
``-32600``, and :class:`RefuseUnusableIds` does over streamable HTTP (400).
"""

from __future__ import annotations

import json

from mcp.types import INVALID_REQUEST, JSONRPCNotification, jsonrpc_message_adapter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["NOT_MCP", "RefuseUnusableIds", "has_unusable_id"]

NOT_MCP = (
    'not a JSON-RPC 2.0 message of MCP (a request has "jsonrpc": "2.0", an id, a method '
    "and, if any, object params; batches are not taken)"
)
"""What a refused message is not, as the refusal's ``data`` says."""


def _has_id(body: bytes | str) -> bool:
    """Whether ``body`` is one JSON object with an ``id`` member (of any value)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return False
    return isinstance(message, dict) and "id" in message


def has_unusable_id(body: bytes | str) -> bool:
    """Whether the SDK would read ``body`` as a notification though it carries an id: a
    request whose id is not a string or an integer, which would never be answered."""
    try:
        message = jsonrpc_message_adapter.validate_json(body, by_name=False)
    except ValidationError:
        return False  # the SDK answers what it cannot read
    return isinstance(message, JSONRPCNotification) and _has_id(body)


class RefuseUnusableIds:
    """ASGI middleware: a POST to the MCP ``path`` carrying a request with an unusable id
    gets 400 and a JSON-RPC ``Invalid Request`` error, as the SDK answers other messages
    it cannot take; every other request passes through with its body intact."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body = await Request(scope, receive).body()
        if has_unusable_id(body):
            error = {"code": INVALID_REQUEST, "message": "Invalid Request", "data": NOT_MCP}
            answer = JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, 400)
            await answer(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # a disconnect, once the app has the body
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
