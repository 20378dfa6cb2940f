"""MCP messages the SDK cannot take: answered alike on both transports, not dropped.

The SDK drops, unanswered, a stdio line it cannot read as a JSON-RPC message, and reads
a request whose id is not a string or an integer (a float, null, an object) as a
notification, which it answers with nothing: the client waits for ever. Over HTTP it
answers an invalid request with a pydantic dump and no id. :func:`refusal` gives the
one answer both transports send instead, JSON-RPC 2.0's parse error (``-32700``) or
invalid request (``-32600``), with the request's id wherever one can be read (a number
exactly as sent, a fraction or one of any length too): the stdio
drain writes it, and :class:`RefuseInvalidMessages` does over streamable HTTP (400).
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from mcp.types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memvee._server.errors import mark_reads_only, note_jsonrpc_id

__all__ = [
    "NOT_JSON_TYPED",
    "NOT_MCP",
    "RefuseInvalidMessages",
    "json_objects",
    "message_ids",
    "only_reads",
    "refusal",
    "screened",
]

NOT_MCP = (
    'not a JSON-RPC 2.0 message of MCP (a request has "jsonrpc": "2.0", an id, a method '
    "and, if any, object params; batches are not taken)"
)
"""What a refused message is not, as the refusal's ``data`` says."""

NOT_JSON_TYPED = "a POST to /mcp has Content-Type: application/json"
"""Why a POST whose Content-Type is not JSON is refused, as the refusal's ``data`` says."""


class RawNumber(str):
    """A JSON number kept as the text it was sent as: one Python would read otherwise (a
    fraction, as a float) or not at all (an integer past its digit limit), so that a
    refusal echoes such an id exactly and a long number elsewhere hides no id."""


def _integer(text: str) -> int | RawNumber:
    """A JSON integer as an ``int``, or as its text past Python's digit limit."""
    try:
        return int(text)
    except ValueError:
        return RawNumber(text)


def json_objects(body: bytes | str) -> list[dict[str, Any]]:
    """The JSON objects of ``body``: the message, or each of a batch's (none if no JSON);
    bytes that are not UTF-8 are replaced, so that a refusal can still name the id."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        message = json.loads(body, parse_int=_integer, parse_float=RawNumber)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return []
    items = message if isinstance(message, list) else [message]
    return [item for item in items if isinstance(item, dict)]


def message_ids(body: bytes | str, *, requests: bool) -> list[Hashable]:
    """The ids of the JSON-RPC requests (``requests``) or responses in ``body``: strings
    and numbers (a number Python would change as a :class:`RawNumber`)."""
    found: list[Hashable] = []
    for item in json_objects(body):
        if not isinstance(item.get("id"), int | str) or isinstance(item["id"], bool):
            continue
        is_response = "method" not in item and ("result" in item or "error" in item)
        if is_response != requests:  # a request, or what only a request could be
            found.append(item["id"])
    return found


def refusal(body: bytes) -> bytes | None:
    """The JSON-RPC error answering ``body`` if it is no MCP message the SDK can take
    (else ``None``), as :func:`screened` tells."""
    screening = screened(body)
    return screening if isinstance(screening, bytes) else None


def screened(body: bytes) -> JSONRPCMessage | bytes:
    """The MCP message of ``body``, or the JSON-RPC error answering it if it is none the
    SDK can take: a parse error for what is not UTF-8 JSON to the SDK's parser, an
    invalid request for JSON that is no MCP message; for each request id in ``body``
    (in one array for a batch), else with a null id. The body is parsed once (a
    notification twice: the SDK's reading drops the id it is checked for)."""
    try:
        message = jsonrpc_message_adapter.validate_json(body, by_name=False)
    except ValidationError as error:
        unreadable = [e["msg"] for e in error.errors() if e["type"] == "json_invalid"]
    else:
        # The SDK reads a request whose id is not a string or an integer as a
        # notification, and would never answer it.
        if not isinstance(message, JSONRPCNotification) or not any(
            "id" in item for item in json_objects(body)
        ):
            return message
        unreadable = []
    if unreadable:
        return _refused(body, PARSE_ERROR, "Parse error", unreadable[0])
    return _refused(body, INVALID_REQUEST, "Invalid Request", NOT_MCP)


def _typed_as_json(content_type: str | None) -> bool:
    """Whether a POST with ``content_type`` says its body is JSON as the SDK takes it:
    both its checks pass (its security check's refusal is plain text, its transport's
    names no id, and the transport's is case-sensitive)."""
    if content_type is None or not content_type.lower().startswith("application/json"):
        return False
    media = content_type.split(";")[0]
    return any(part.strip() == "application/json" for part in media.split(","))


def _refusal_of_type(body: bytes) -> bytes:
    """The JSON-RPC invalid request answering a POST of ``body`` whose Content-Type is
    not JSON, with each request id ``body`` holds, as :func:`screened` answers."""
    return _refused(body, INVALID_REQUEST, "Invalid Request", NOT_JSON_TYPED)


def _refused(body: bytes, code: int, text: str, data: str) -> bytes:
    """The JSON-RPC error ``code`` answering ``body``: for each request id in it (in one
    array for a batch), else with a null id."""
    ids: list[Hashable | None] = [*message_ids(body, requests=True)] or [None]
    refused = json.dumps({"code": code, "message": text, "data": data})
    answers = [f'{{"jsonrpc": "2.0", "id": {_id_json(i)}, "error": {refused}}}' for i in ids]
    batch = ids != [None] and body.lstrip().startswith(b"[")
    return (f"[{', '.join(answers)}]" if batch else answers[0]).encode()


def _id_json(request_id: Hashable | None) -> str:
    """``request_id`` as JSON, a number exactly as it was sent."""
    return request_id if isinstance(request_id, RawNumber) else json.dumps(request_id)


def only_reads(message: JSONRPCMessage, read_only_tools: frozenset[str]) -> bool:
    """Whether ``message`` changes nothing: it calls no tool outside ``read_only_tools``
    (listing tools, a notification, a ping or a response change nothing either)."""
    if not isinstance(message, JSONRPCRequest | JSONRPCNotification):
        return True
    if message.method != "tools/call":
        return True
    tool = (message.params or {}).get("name")
    return isinstance(tool, str) and tool in read_only_tools


class RefuseInvalidMessages:
    """ASGI middleware: a POST to the MCP ``path`` whose body is no MCP message the SDK
    can take gets 400 and the :func:`refusal` the stdio server writes for the same line,
    and one whose Content-Type is not JSON gets 415 and the same kind of answer
    (:func:`_refusal_of_type`, not the SDK's plain text);
    every other request passes through with its body intact, marked as a read
    (:func:`mark_reads_only`) when it calls no tool but ``read_only_tools``."""

    def __init__(self, app: ASGIApp, path: str, read_only_tools: frozenset[str]) -> None:
        self.app = app
        self.path = path
        self.read_only_tools = read_only_tools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        message = await receive()
        while message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
            message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client hung up mid-body: no one is left to answer
        body = b"".join(chunks)
        typed = _typed_as_json(Headers(scope=scope).get("content-type"))
        screening = screened(body) if typed else _refusal_of_type(body)
        if isinstance(screening, bytes):
            status = 400 if typed else 415
            answer = Response(screening, status, media_type="application/json")
            await answer(scope, receive, send)
            return
        if isinstance(screening, JSONRPCRequest):
            note_jsonrpc_id(scope, _id_json(screening.id))
        if only_reads(screening, self.read_only_tools):
            mark_reads_only(scope)
        await self.app(scope, _replaying(body, receive), send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the ``body`` read already, then what comes next
    (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
