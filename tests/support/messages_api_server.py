"""A stand-in for the Anthropic Messages API, served over real HTTP on 127.0.0.1.

Tests point the SDK at it with ``ANTHROPIC_BASE_URL`` to exercise the whole HTTP path
(connections, status codes, ``retry-after``, slow answers) without the internet. Each
request takes the next scripted response from a queue; when the queue is empty the
server answers like Claude would through ``record_knowledge``, with one fact
"User said: <content>" per user message of the batch, citing that message; a fact whose
text equals a known entry's text listed in the prompt is marked "same" with that entry as
its target. Uses the standard library only.

    with MessagesAPIServer() as server:
        server.enqueue_error(529, "overloaded_error", headers={"retry-after-ms": "1"})
        ...  # ANTHROPIC_BASE_URL=server.base_url
        assert len(server.requests) == 2
"""

from __future__ import annotations

import http
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "MESSAGES_PATH",
    "MessagesAPIServer",
    "RecordedRequest",
    "ScriptedResponse",
    "default_answer",
    "error_body",
    "prompt_known_entries",
    "prompt_messages",
    "tool_use_body",
]

MESSAGES_PATH = "/v1/messages"
"""The one endpoint the stand-in serves."""

_MESSAGES_BLOCK = re.compile(r"<messages>\s*(.*?)\s*</messages>", re.DOTALL)
_KNOWN_BLOCK = re.compile(r"<known_entries>\s*(.*?)\s*</known_entries>", re.DOTALL)
_REASONS = {529: "Overloaded"}


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """What the server answers to one request.

    A ``body`` of None with status 200 means the default answer for that request;
    ``delay`` seconds pass before the answer is sent (cut short when the server closes).
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The batch messages listed in the prompt (id, role, sent_at, content)."""
        return prompt_messages(self.body)

    @property
    def known(self) -> list[dict[str, Any]]:
        """The known entries listed in the prompt (id, text, valid_from)."""
        return prompt_known_entries(self.body)


Responder = Callable[[RecordedRequest], ScriptedResponse]


def tool_use_body(
    facts: object,
    *,
    model: str = "claude-standin",
    tool_name: str = "record_knowledge",
    input_tokens: int = 100,
    output_tokens: int = 20,
) -> dict[str, Any]:
    """A Messages API answer whose one content block calls ``tool_name`` with ``facts``.

    ``facts`` is sent as given, so that tests can send schema-breaking input too.
    """
    return {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_standin",
                "name": tool_name,
                "input": {"facts": facts},
            }
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """A Messages API error body, as the real API sends with a 4xx or 5xx status."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def prompt_messages(body: Any) -> list[dict[str, Any]]:
    """The batch messages in a request's prompt: the JSON array between <messages> tags.

    Returns an empty list when the request has no such block.
    """
    return _prompt_block(body, _MESSAGES_BLOCK)


def prompt_known_entries(body: Any) -> list[dict[str, Any]]:
    """The known entries in a request's prompt: the JSON array between <known_entries>
    tags, or an empty list when the prompt lists none.
    """
    return _prompt_block(body, _KNOWN_BLOCK)


def _prompt_block(body: Any, block: re.Pattern[str]) -> list[dict[str, Any]]:
    """The objects of the first JSON array that ``block`` finds in the request's turns."""
    if not isinstance(body, Mapping):
        return []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [b.get("text", "") for b in content if isinstance(b, Mapping)]
        for text in texts:
            found = block.search(text)
            if found is not None:
                listed = json.loads(found.group(1))
                return [m for m in listed if isinstance(m, dict)]
    return []


def default_answer(request: RecordedRequest) -> ScriptedResponse:
    """One fact "User said: <content>" per user message of the batch, citing it.

    A fact whose text equals a known entry's text is "same", targeting that entry.
    """
    batch = request.messages
    known = {e.get("text"): e.get("id") for e in request.known}
    facts: list[dict[str, Any]] = []
    for m in batch:
        if m.get("role") != "user":
            continue
        fact: dict[str, Any] = {
            "text": f"User said: {m['content']}",
            "source_message_ids": [m["id"]],
        }
        if fact["text"] in known:
            fact.update(action="same", target_entry_id=known[fact["text"]])
        facts.append(fact)
    model = request.body.get("model", "claude-standin") if isinstance(request.body, dict) else ""
    body = tool_use_body(
        facts,
        model=str(model),
        input_tokens=10 + sum(len(str(m.get("content", ""))) for m in batch) // 4,
        output_tokens=10 + 10 * len(facts),
    )
    return ScriptedResponse(body=body)


class MessagesAPIServer:
    """A scripted Messages API on 127.0.0.1, on a free port, in a background thread.

    Use it as a context manager; ``base_url`` is what ``ANTHROPIC_BASE_URL`` should be.
    Scripted responses are served in order, one per request, then ``responder`` answers.
    """

    def __init__(self, responder: Responder = default_answer) -> None:
        """Prepare a server; it listens once started (``with`` or :meth:`start`)."""
        self.responder = responder
        self._lock = threading.Lock()
        self._script: deque[ScriptedResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The server's root URL, without a trailing slash."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def enqueue(
        self,
        status: int = 200,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Script the answer to one upcoming request (after those already scripted)."""
        response = ScriptedResponse(status, body, dict(headers or {}), delay)
        with self._lock:
            self._script.append(response)

    def enqueue_error(
        self,
        status: int,
        error_type: str = "api_error",
        message: str = "scripted error",
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Script an API error answer with the real API's error body shape."""
        self.enqueue(status, error_body(error_type, message), headers=headers, delay=delay)

    def enqueue_facts(self, facts: Sequence[Mapping[str, object]] | object, **kw: Any) -> None:
        """Script a successful ``record_knowledge`` answer with exactly ``facts``."""
        self.enqueue(200, tool_use_body(facts, **kw))

    def start(self) -> MessagesAPIServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="messages-api-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; answers still waiting out a delay are dropped."""
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MessagesAPIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _answer(self, request: RecordedRequest) -> tuple[ScriptedResponse, int]:
        with self._lock:
            self._requests.append(request)
            scripted = self._script.popleft() if self._script else None
            number = next(self._ids)
        if scripted is None or (scripted.status == 200 and scripted.body is None):
            answer = self.responder(request)
            if scripted is not None:
                answer = ScriptedResponse(
                    answer.status,
                    answer.body,
                    {**answer.headers, **scripted.headers},
                    scripted.delay,
                )
            return answer, number
        return scripted, number


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        owner: MessagesAPIServer,
    ) -> None:
        super().__init__(address, handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (a test's timeout) are expected; stay quiet about them."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            self._send(ScriptedResponse(400, error_body("invalid_request_error", "bad JSON")), 0)
            return
        if path != MESSAGES_PATH:
            self._send(ScriptedResponse(404, error_body("not_found_error", f"no {path}")), 0)
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer, number = owner._answer(RecordedRequest("POST", path, headers, body))
        if answer.delay > 0 and owner._closing.wait(answer.delay):
            self.close_connection = True
            return
        self._send(answer, number)

    def _send(self, answer: ScriptedResponse, number: int) -> None:
        payload = json.dumps(answer.body if answer.body is not None else {}).encode()
        try:
            reason = _REASONS.get(answer.status) or http.HTTPStatus(answer.status).phrase
        except ValueError:
            reason = "Unknown"
        try:
            self.send_response(answer.status, reason)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.send_header("request-id", f"req_standin_{number}")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""
