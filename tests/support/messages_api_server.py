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

It can also misbehave the way the real API and the network in front of it do, per request:
reset the connection (``reset=True``), cut the body short (``truncate_at``), answer late
(``delay``), refuse, stop at ``max_tokens``, answer with text or nothing (the body
builders), reject requests over a size or prompt-token limit, and send a gateway's HTML
error page (a ``bytes`` body). :func:`fault_when` aims a fault at the requests whose batch
holds a marker. Usage reports simulate prompt caching, and the Message Batches API
(``client.messages.batches``) is served too, on the same responder.

Token counts are estimates, never a tokenizer: a request's prompt is the byte length of its
body as compact JSON (the SDK's own encoding) divided by 4, see :func:`estimate_tokens`.
"""

from __future__ import annotations

import hashlib
import http
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "BATCHES_PATH",
    "CACHE_TTL_SECONDS",
    "MESSAGES_PATH",
    "MessagesAPIServer",
    "RecordedRequest",
    "Responder",
    "ScriptedResponse",
    "cache_prefix_tokens",
    "default_answer",
    "empty_body",
    "error_body",
    "estimate_tokens",
    "fault_when",
    "prompt_known_entries",
    "prompt_messages",
    "refusal_body",
    "text_body",
    "tool_use_body",
    "truncated_tool_body",
]

MESSAGES_PATH = "/v1/messages"
"""The Messages API endpoint: one model call per request."""

BATCHES_PATH = "/v1/messages/batches"
"""The Message Batches API root: create and list here, then ``/{id}``, ``/{id}/results``,
``/{id}/cancel``."""

CACHE_TTL_SECONDS = 300.0
"""How long a cached prompt prefix lives after its last write or read (the 5-minute TTL)."""

_LONG_CACHE_TTL_SECONDS = 3600.0
"""The lifetime of a prefix cached with ``cache_control`` ``{"ttl": "1h"}``."""

_MESSAGES_OPEN = "<messages>"
_MESSAGES_CLOSE = "</messages>"
_KNOWN_OPEN = "<known_entries>"
_KNOWN_CLOSE = "</known_entries>"
_MESSAGES_BLOCK = re.compile(r"<messages>\s*(.*?)\s*</messages>", re.DOTALL)
_KNOWN_BLOCK = re.compile(r"<known_entries>\s*(.*?)\s*</known_entries>", re.DOTALL)
_REASONS = {529: "Overloaded"}
_BATCH_LIFETIME = timedelta(hours=24)
_RESULT_TYPES = ("processing", "succeeded", "errored", "canceled", "expired")


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """What the server answers to one request.

    A ``body`` of None with status 200 means the default answer for that request;
    ``delay`` seconds pass before the answer is sent (cut short when the server closes).
    A ``bytes`` body is sent verbatim (content-type text/html unless ``headers`` name one),
    like the error page of a gateway in front of the API. ``reset`` drops the connection
    with a TCP reset instead of answering; ``truncate_at`` sends the status line and the
    full content-length but only that many bytes of the body, then closes the connection.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    truncate_at: int | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it; header names are lower-case.

    For a request of a message batch, ``body`` holds that request's ``params`` and
    ``custom_id`` its id; for a plain Messages API call ``custom_id`` is None.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    custom_id: str | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The batch messages listed in the prompt (id, role, sent_at, content)."""
        return prompt_messages(self.body)

    @property
    def known(self) -> list[dict[str, Any]]:
        """The known entries listed in the prompt (id, text, valid_from)."""
        return prompt_known_entries(self.body)


Responder = Callable[[RecordedRequest], ScriptedResponse]
"""Answers one request; the server calls it when no scripted response is queued."""


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A ``usage`` dict shaped like the real API's, with no prompt caching."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }


def _message_body(
    content: list[dict[str, Any]],
    stop_reason: str,
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """A complete Messages API answer around ``content``."""
    return {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(input_tokens, output_tokens),
    }


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
    return _message_body(
        [{"type": "tool_use", "id": "toolu_standin", "name": tool_name, "input": {"facts": facts}}],
        "tool_use",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def truncated_tool_body(
    input_obj: object,
    *,
    model: str = "claude-standin",
    tool_name: str = "record_knowledge",
    input_tokens: int = 100,
    output_tokens: int = 4096,
) -> dict[str, Any]:
    """An answer cut off at ``max_tokens`` inside its tool call: the ``tool_use`` block's
    input is ``input_obj`` exactly as given (typically a partial ``{"facts": [...]}``).

    This is how the real API answers when the output budget runs out mid-call: the stop
    reason says "max_tokens" and the tool input is whatever was complete by then.
    """
    block: dict[str, Any] = {
        "type": "tool_use",
        "id": "toolu_standin",
        "name": tool_name,
        "input": input_obj,
    }
    return _message_body(
        [block],
        "max_tokens",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def refusal_body(
    *,
    model: str = "claude-standin",
    text: str | None = None,
    category: str | None = None,
    input_tokens: int = 100,
    output_tokens: int = 1,
) -> dict[str, Any]:
    """An answer the safety classifiers stopped: stop reason "refusal", no tool call.

    The content is empty, or one text block when ``text`` is given (what was said before
    the refusal); ``stop_details`` carries the refusal's ``category``.
    """
    content = [] if text is None else [{"type": "text", "text": text}]
    body = _message_body(
        content,
        "refusal",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    body["stop_details"] = {"type": "refusal", "category": category, "explanation": None}
    return body


def text_body(
    text: str,
    *,
    model: str = "claude-standin",
    stop_reason: str = "end_turn",
    input_tokens: int = 100,
    output_tokens: int | None = None,
) -> dict[str, Any]:
    """An answer in prose instead of the forced tool call: one text block, "end_turn".

    ``output_tokens`` defaults to the text's length / 4.
    """
    return _message_body(
        [{"type": "text", "text": text}],
        stop_reason,
        model=model,
        input_tokens=input_tokens,
        output_tokens=max(1, len(text) // 4) if output_tokens is None else output_tokens,
    )


def empty_body(
    *, model: str = "claude-standin", input_tokens: int = 100, output_tokens: int = 0
) -> dict[str, Any]:
    """An answer with no content blocks at all and stop reason "end_turn"."""
    return _message_body(
        [], "end_turn", model=model, input_tokens=input_tokens, output_tokens=output_tokens
    )


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """A Messages API error body, as the real API sends with a 4xx or 5xx status."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def estimate_tokens(body: Any) -> int:
    """The stand-in's prompt size for a request body: its bytes as compact JSON // 4.

    The SDK sends compact JSON, so for a Messages API call this is the HTTP body's length
    divided by 4; no tokenizer is involved, only a stable, monotonic estimate.
    """
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return len(encoded) // 4


def cache_prefix_tokens(body: Any) -> int:
    """The tokens of the prompt prefix a request asks to cache, or 0 when it asks none.

    A request asks when its ``system`` is a list of blocks whose last block carries
    ``cache_control`` of type "ephemeral"; the prefix is the tools (as compact JSON) plus
    the system text, estimated as characters // 4. The minimum cacheable size is the
    server's ``min_cache_tokens``, not checked here.
    """
    found = _cache_breakpoint(body)
    return 0 if found is None else found[1]


def _cache_breakpoint(body: Any) -> tuple[str, int, float] | None:
    """The cache key (hash of model, tools and system), prefix tokens and TTL seconds of
    a request whose last system block has an ephemeral ``cache_control``."""
    if not isinstance(body, Mapping):
        return None
    system = body.get("system")
    if not isinstance(system, list) or not system or not isinstance(system[-1], Mapping):
        return None
    control = system[-1].get("cache_control")
    if not isinstance(control, Mapping) or control.get("type") != "ephemeral":
        return None
    tools = json.dumps(body.get("tools") or [], ensure_ascii=False, separators=(",", ":"))
    text = "".join(str(b.get("text", "")) for b in system if isinstance(b, Mapping))
    key = hashlib.sha256(
        json.dumps([str(body.get("model")), tools, text], ensure_ascii=False).encode()
    ).hexdigest()
    ttl = _LONG_CACHE_TTL_SECONDS if control.get("ttl") == "1h" else CACHE_TTL_SECONDS
    return key, (len(tools) + len(text)) // 4, ttl


def prompt_messages(body: Any) -> list[dict[str, Any]]:
    """The batch messages in a request's prompt: the JSON objects between <messages> tags.

    Returns an empty list when the request has no such block.
    """
    return _prompt_block(body, _MESSAGES_OPEN, _MESSAGES_CLOSE, _MESSAGES_BLOCK)


def prompt_known_entries(body: Any) -> list[dict[str, Any]]:
    """The known entries in a request's prompt: the JSON objects between <known_entries>
    tags, or an empty list when the prompt lists none.
    """
    return _prompt_block(body, _KNOWN_OPEN, _KNOWN_CLOSE, _KNOWN_BLOCK)


def _prompt_block(
    body: Any, opening: str, closing: str, block: re.Pattern[str]
) -> list[dict[str, Any]]:
    """The objects listed after the first ``opening`` tag in the request's turns.

    The listing may be one JSON array (indented or compact, one object per line) or bare
    objects one per line; raises ValueError when a tag is there but its listing is not
    JSON, so that a malformed prompt fails the test instead of reading as empty.
    """
    for text in _turn_texts(body):
        start = text.find(opening)
        if start < 0:
            continue
        listed = _decode_listing(text, start + len(opening), closing)
        if listed is None:
            found = block.search(text)
            if found is None:
                raise ValueError(f"{opening} has no {closing} in the prompt")
            decoded = json.loads(found.group(1))
            listed = decoded if isinstance(decoded, list) else [decoded]
        return [item for item in listed if isinstance(item, dict)]
    return []


def _turn_texts(body: Any) -> Iterator[str]:
    """The text of every turn of a request, in order (string or text-block content)."""
    if not isinstance(body, Mapping):
        return
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]


def _decode_listing(text: str, position: int, closing: str) -> list[Any] | None:
    """JSON values from ``position`` up to ``closing``: arrays are flattened, other values
    kept; separating whitespace and commas are skipped. None when it does not decode.

    Decoding value by value, rather than cutting at the closing tag first, keeps a tag
    quoted inside a JSON string from ending the listing early.
    """
    decoder = json.JSONDecoder()
    values: list[Any] = []
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ","):
            position += 1
        if text.startswith(closing, position):
            return values
        if position >= len(text):
            return None
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])


def default_answer(request: RecordedRequest) -> ScriptedResponse:
    """One fact "User said: <content>" per user message of the batch, citing it.

    A fact whose text equals a known entry's text is "same", targeting that entry. The
    usage reports the request's :func:`estimate_tokens` as input tokens.
    """
    batch = request.messages
    known = {e.get("text"): e.get("id") for e in request.known}
    facts: list[dict[str, Any]] = []
    for m in batch:
        if m.get("role") != "user":
            continue
        fact: dict[str, Any] = {
            "text": f"User said: {m.get('content')}",
            "source_message_ids": [m.get("id")],
        }
        if fact["text"] in known:
            fact.update(action="same", target_entry_id=known[fact["text"]])
        facts.append(fact)
    model = request.body.get("model", "claude-standin") if isinstance(request.body, dict) else ""
    body = tool_use_body(
        facts,
        model=str(model),
        input_tokens=max(1, estimate_tokens(request.body)),
        output_tokens=10 + 10 * len(facts),
    )
    return ScriptedResponse(body=body)


def fault_when(
    marker: str,
    fault: ScriptedResponse | Callable[[RecordedRequest], ScriptedResponse],
    otherwise: Responder = default_answer,
) -> Responder:
    """A responder that answers ``fault`` to every request whose prompt lists a batch
    message containing ``marker``, and leaves the others to ``otherwise``.

    It lets a test poison one batch among many (say one user's) while the rest succeed;
    ``fault`` may be a fixed answer or a function of the request.
    """

    def respond(request: RecordedRequest) -> ScriptedResponse:
        if any(marker in str(m.get("content", "")) for m in request.messages):
            return fault if isinstance(fault, ScriptedResponse) else fault(request)
        return otherwise(request)

    return respond


def _rfc3339(moment: datetime | None) -> str | None:
    """``moment`` as the API writes times (UTC, "Z"), or None."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class _Batch:
    """The server-side state of one message batch.

    ``results`` are computed when the batch is created, keyed by custom_id; they are
    replaced by "canceled" or "expired" results if the batch ends that way instead.
    """

    id: str
    requests: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    created_at: datetime
    status: str = "in_progress"
    retrievals: int = 0
    cancel_initiated_at: datetime | None = None
    ended_at: datetime | None = None

    def end(self, outcome: str | None = None) -> None:
        """End processing; every result becomes ``outcome`` ("canceled", "expired") if
        given, otherwise the computed results stand."""
        if self.status == "ended":
            return
        if outcome is not None:
            self.results = {custom_id: {"type": outcome} for custom_id in self.results}
        self.status = "ended"
        self.ended_at = datetime.now(UTC)

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The MessageBatch object the API returns for this batch."""
        counts = dict.fromkeys(_RESULT_TYPES, 0)
        if self.status == "ended":
            for result in self.results.values():
                counts[result["type"]] += 1
        else:
            counts["processing"] = len(self.requests)
        ended = self.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": counts,
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.created_at + _BATCH_LIFETIME),
            "ended_at": _rfc3339(self.ended_at),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(self.cancel_initiated_at),
            "results_url": f"{base_url}{BATCHES_PATH}/{self.id}/results" if ended else None,
        }


class MessagesAPIServer:
    """A scripted Messages API on 127.0.0.1, on a free port, in a background thread.

    Use it as a context manager; ``base_url`` is what ``ANTHROPIC_BASE_URL`` should be.
    Scripted responses are served in order, one per request, then ``responder`` answers.
    Requests of a message batch take their answers the same way, when the batch is
    created. Options (None means no limit):

    - ``max_request_bytes``: a Messages API body larger than this gets HTTP 413,
      "request_too_large", like the real API's request size limit, and so does a request
      of a message batch whose ``params`` (as compact JSON) are: an errored result
      carrying that error;
    - ``max_batch_bytes``: a Message Batches create body larger than this gets HTTP 413,
      "request_too_large", like the real API's 256 MB limit on a batch (nothing is made);
    - ``max_prompt_tokens``: a request whose :func:`estimate_tokens` exceeds this gets
      HTTP 400 "prompt is too long: N tokens > M maximum" (an errored batch result);
    - ``counts_max_tokens``: with ``max_prompt_tokens``, the model's context window holds
      the output asked too, as the real API's does: a prompt within it whose tokens and
      ``max_tokens`` exceed it gets HTTP 400 "input length and `max_tokens` exceed context
      limit: N + O > M, decrease input length or `max_tokens` and try again";
    - ``token_scale``: how many times :func:`estimate_tokens` the context limits count a
      prompt (a tokenizer counting more, or fewer, tokens than memvee estimates);
    - ``names_tokens``: whether "prompt is too long" names the tokens (the API's 400 has
      not always: without them, the engine can only halve the batch);
    - ``min_cache_tokens``: the smallest prefix that prompt caching caches;
    - ``batch_polls``: how many retrievals find a batch still "in_progress" before it ends;
    - ``clock``: the monotonic time source of cache expiry, for tests that jump ahead.

    Requests over a limit are recorded but take no scripted response.
    """

    def __init__(
        self,
        responder: Responder = default_answer,
        *,
        max_request_bytes: int | None = None,
        max_batch_bytes: int | None = None,
        max_prompt_tokens: int | None = None,
        counts_max_tokens: bool = False,
        token_scale: float = 1.0,
        names_tokens: bool = True,
        min_cache_tokens: int = 1024,
        batch_polls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare a server; it listens once started (``with`` or :meth:`start`)."""
        self.responder = responder
        self.max_request_bytes = max_request_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_prompt_tokens = max_prompt_tokens
        self.counts_max_tokens = counts_max_tokens
        self.token_scale = token_scale
        self.names_tokens = names_tokens
        self.min_cache_tokens = min_cache_tokens
        self.batch_polls = batch_polls
        self._clock = clock
        self._lock = threading.Lock()
        self._script: deque[ScriptedResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._all_requests: list[RecordedRequest] = []
        self._cache: dict[str, float] = {}
        self._cache_writes = 0
        self._cache_reads = 0
        self._batches: dict[str, _Batch] = {}
        self._batches_fault: Callable[[RecordedRequest], ScriptedResponse | None] | None = None
        self._batch_ids = itertools.count(1)
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
        """A copy of the Messages API calls (POST /v1/messages) so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def all_requests(self) -> list[RecordedRequest]:
        """A copy of every HTTP request so far on any path, batch calls included."""
        with self._lock:
            return list(self._all_requests)

    @property
    def cache_writes(self) -> int:
        """How many answers reported writing their prompt prefix to the cache."""
        with self._lock:
            return self._cache_writes

    @property
    def cache_reads(self) -> int:
        """How many answers reported reading their prompt prefix from the cache."""
        with self._lock:
            return self._cache_reads

    @property
    def batches(self) -> list[dict[str, Any]]:
        """The message batches created so far, oldest first, each a dict with its "id",
        "requests" (as sent), "processing_status" and "retrievals" (GETs of the batch)."""
        with self._lock:
            return [
                {
                    "id": b.id,
                    "requests": list(b.requests),
                    "processing_status": b.status,
                    "retrievals": b.retrievals,
                }
                for b in self._batches.values()
            ]

    @property
    def batch_retrievals(self) -> int:
        """How many times any batch was retrieved (GET /v1/messages/batches/{id})."""
        with self._lock:
            return sum(b.retrievals for b in self._batches.values())

    def set_responder(self, responder: Responder) -> None:
        """Answer later unscripted requests with ``responder``; safe while serving."""
        with self._lock:
            self.responder = responder

    def set_batches_fault(
        self, fault: Callable[[RecordedRequest], ScriptedResponse | None] | None
    ) -> None:
        """Answer each later Message Batches call with what ``fault`` returns for it, or as
        usual when that is None (an outage, a download cut short); safe while serving."""
        with self._lock:
            self._batches_fault = fault

    def expire_batch(self, batch_id: str) -> None:
        """End a batch that is still processing as the API does after 24 hours: every
        request "expired". A batch that has already ended is left alone."""
        with self._lock:
            self._batches[batch_id].end("expired")

    def enqueue(
        self,
        status: int = 200,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        reset: bool = False,
        truncate_at: int | None = None,
    ) -> None:
        """Script the answer to one upcoming request (after those already scripted)."""
        response = ScriptedResponse(status, body, dict(headers or {}), delay, reset, truncate_at)
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

    # The request paths, called from the handler threads.

    def _next_id(self) -> int:
        """A fresh number for the ``request-id`` header."""
        with self._lock:
            return next(self._ids)

    def _log(self, request: RecordedRequest) -> None:
        """Keep ``request`` in :attr:`all_requests`."""
        with self._lock:
            self._all_requests.append(request)

    def _messages_call(self, request: RecordedRequest, size: int) -> tuple[ScriptedResponse, int]:
        """Record a Messages API call of ``size`` body bytes and choose its answer."""
        with self._lock:
            self._requests.append(request)
            number = next(self._ids)
        rejected = self._over_limit(request.body, size)
        return (rejected or self._respond(request)), number

    def _over_limit(self, body: Any, size: int | None) -> ScriptedResponse | None:
        """The real API's refusal of a request over a size or prompt limit, if it is."""
        too_large = self._too_many_bytes(size)
        if too_large is not None:
            return too_large
        window = self.max_prompt_tokens
        if window is not None:
            tokens = size // 4 if size is not None else estimate_tokens(body)
            tokens = int(tokens * self.token_scale)
            if tokens > window:
                message = "prompt is too long"
                if self.names_tokens:
                    message += f": {tokens} tokens > {window} maximum"
                return ScriptedResponse(400, error_body("invalid_request_error", message))
            output = body.get("max_tokens", 0) if isinstance(body, dict) else 0
            if self.counts_max_tokens and tokens + output > window:
                message = (
                    f"input length and `max_tokens` exceed context limit: {tokens} + {output} "
                    f"> {window}, decrease input length or `max_tokens` and try again"
                )
                return ScriptedResponse(400, error_body("invalid_request_error", message))
        return None

    def _too_many_bytes(self, size: int | None) -> ScriptedResponse | None:
        """The real API's 413 for a request body of ``size`` bytes over
        ``max_request_bytes``, if it is."""
        limit = self.max_request_bytes
        if limit is None or size is None or size <= limit:
            return None
        message = f"Request exceeds the maximum allowed number of bytes ({size} > {limit})."
        return ScriptedResponse(413, error_body("request_too_large", message))

    def _respond(self, request: RecordedRequest) -> ScriptedResponse:
        """The next scripted answer, or the responder's (with simulated cache usage).

        A scripted entry without a body (status 200) asks for the responder's answer but
        lends it its headers, delay, reset and truncation.
        """
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            responder = self.responder
        if scripted is not None and not (scripted.status == 200 and scripted.body is None):
            return scripted
        try:
            answer = responder(request)
        except Exception as exc:  # a broken responder should fail the client loudly
            message = f"stand-in responder failed: {type(exc).__name__}: {exc}"
            return ScriptedResponse(500, error_body("api_error", message))
        answer = self._with_cache_usage(request.body, answer)
        if scripted is None:
            return answer
        return ScriptedResponse(
            answer.status,
            answer.body,
            {**answer.headers, **scripted.headers},
            scripted.delay or answer.delay,
            scripted.reset or answer.reset,
            scripted.truncate_at if scripted.truncate_at is not None else answer.truncate_at,
        )

    def _with_cache_usage(self, body: Any, answer: ScriptedResponse) -> ScriptedResponse:
        """``answer`` with its usage rewritten as prompt caching would report it.

        Only successful message bodies are touched. Without a cache breakpoint (or with a
        prefix under ``min_cache_tokens``) both cache counts are 0; with one, the first
        request of a prefix writes it and later ones within its TTL read it, and
        ``input_tokens`` counts only the uncached rest of the prompt.
        """
        message = answer.body
        if answer.status != 200 or not isinstance(message, Mapping):
            return answer
        usage = message.get("usage")
        if message.get("type") != "message" or not isinstance(usage, Mapping):
            return answer
        usage = {**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
        found = _cache_breakpoint(body)
        if found is not None and found[1] >= self.min_cache_tokens:
            key, prefix, ttl = found
            with self._lock:
                now = self._clock()
                hit = self._cache.get(key, float("-inf")) > now
                self._cache[key] = now + ttl
                if hit:
                    self._cache_reads += 1
                else:
                    self._cache_writes += 1
            if hit:
                usage["cache_read_input_tokens"] = prefix
            else:
                usage["cache_creation_input_tokens"] = prefix
                window = "ephemeral_1h_input_tokens" if ttl > CACHE_TTL_SECONDS else None
                usage["cache_creation"][window or "ephemeral_5m_input_tokens"] = prefix
            usage["input_tokens"] = max(1, estimate_tokens(body) - prefix)
        return ScriptedResponse(
            answer.status,
            {**message, "usage": usage},
            answer.headers,
            answer.delay,
            answer.reset,
            answer.truncate_at,
        )

    def _batches_call(self, request: RecordedRequest, size: int) -> ScriptedResponse:
        """Serve one Message Batches API call of ``size`` body bytes: create, list,
        retrieve, results, cancel, delete."""
        with self._lock:
            fault = self._batches_fault
        answer = None if fault is None else fault(request)
        if answer is not None:
            return answer
        parts = request.path[len(BATCHES_PATH) :].strip("/").split("/")
        batch_id = parts[0]
        action = parts[1] if len(parts) > 1 else ""
        route = (request.method, bool(batch_id), action)
        if route == ("POST", False, ""):
            limit = self.max_batch_bytes
            if limit is not None and size > limit:
                message = f"Request exceeds the maximum allowed number of bytes ({size} > {limit})."
                return ScriptedResponse(413, error_body("request_too_large", message))
            return self._create_batch(request)
        if route == ("GET", False, ""):
            return self._list_batches()
        if len(parts) > 2 or route not in {
            ("GET", True, ""),
            ("GET", True, "results"),
            ("POST", True, "cancel"),
            ("DELETE", True, ""),
        }:
            return _not_found(request.path)
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _not_found(request.path, f"no message batch {batch_id}")
            if action == "results":
                return self._results(batch)
            if action == "cancel":
                if batch.status == "in_progress":
                    batch.status = "canceling"
                    batch.cancel_initiated_at = datetime.now(UTC)
            elif request.method == "DELETE":
                if batch.status != "ended":
                    message = f"message batch {batch_id} is still processing; cancel it first"
                    return ScriptedResponse(400, error_body("invalid_request_error", message))
                del self._batches[batch_id]
                return ScriptedResponse(body={"id": batch_id, "type": "message_batch_deleted"})
            else:
                batch.retrievals += 1
                if batch.status == "canceling":
                    batch.end("canceled")
                elif batch.status == "in_progress" and batch.retrievals > self.batch_polls:
                    batch.end()
            return ScriptedResponse(body=batch.to_json(self.base_url))

    def made_then_reset(self, request: RecordedRequest) -> ScriptedResponse:
        """For a batches fault: create the batch ``request`` asks for, then drop the
        connection instead of answering (the API made it; its caller never hears)."""
        self._create_batch(request)
        return ScriptedResponse(reset=True)

    def _create_batch(self, request: RecordedRequest) -> ScriptedResponse:
        """Check a batch, answer each of its requests now, and return it "in_progress"."""
        items = request.body.get("requests") if isinstance(request.body, Mapping) else None
        problem = _batch_problem(items)
        if problem is not None:
            return ScriptedResponse(400, error_body("invalid_request_error", problem))
        assert isinstance(items, list)
        results = {
            item["custom_id"]: self._batch_result(request, item["custom_id"], item["params"])
            for item in items
        }
        with self._lock:
            batch_id = f"msgbatch_standin_{next(self._batch_ids)}"
            batch = _Batch(batch_id, list(items), results, datetime.now(UTC))
            self._batches[batch_id] = batch
            return ScriptedResponse(body=batch.to_json(self.base_url))

    def _batch_result(self, create: RecordedRequest, custom_id: str, params: Any) -> dict[str, Any]:
        """The result of one request of a batch, as its results file will list it.

        Delays are ignored (a batch is slow anyway); a reset or truncated answer becomes
        an "api_error", as a failure inside the API would.
        """
        request = RecordedRequest("POST", create.path, create.headers, params, custom_id)
        size = len(json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode())
        answer = (
            self._too_many_bytes(size) or self._over_limit(params, None) or self._respond(request)
        )
        if answer.reset or answer.truncate_at is not None:
            return {"type": "errored", "error": error_body("api_error", "Internal server error")}
        if answer.status == 200:
            return {"type": "succeeded", "message": answer.body}
        error = answer.body
        if not (isinstance(error, Mapping) and error.get("type") == "error"):
            error = error_body("api_error", f"HTTP {answer.status}")
        return {"type": "errored", "error": error}

    def _list_batches(self) -> ScriptedResponse:
        """Every batch, newest first, as one page."""
        with self._lock:
            data = [b.to_json(self.base_url) for b in reversed(self._batches.values())]
        return ScriptedResponse(
            body={
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    def _results(self, batch: _Batch) -> ScriptedResponse:
        """The results file of an ended batch as JSONL, in reverse request order so that
        callers must match results by custom_id (the API promises no order)."""
        if batch.status != "ended":
            message = f"message batch {batch.id} has not ended; no results yet"
            return ScriptedResponse(400, error_body("invalid_request_error", message))
        lines = [
            json.dumps({"custom_id": custom_id, "result": result}) + "\n"
            for custom_id, result in reversed(batch.results.items())
        ]
        return ScriptedResponse(
            body="".join(lines).encode(), headers={"content-type": "application/binary"}
        )


def _batch_problem(items: Any) -> str | None:
    """Why a batch's ``requests`` list would be refused, or None when it is well formed."""
    if not isinstance(items, list) or not items:
        return "requests: a non-empty list is required"
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            return f"requests.{index}: an object is required"
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return f"requests.{index}.custom_id: a non-empty string is required"
        if custom_id in seen:
            return f"requests.{index}.custom_id: {custom_id!r} is not unique in the batch"
        seen.add(custom_id)
        if not isinstance(item.get("params"), Mapping):
            return f"requests.{index}.params: an object is required"
    return None


def _not_found(path: str, message: str | None = None) -> ScriptedResponse:
    """The API's 404 answer."""
    return ScriptedResponse(404, error_body("not_found_error", message or f"no {path}"))


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
    # Headers and body go out in two writes: with Nagle on, a kept-alive client's delayed
    # acknowledgement held the body back 40 ms an answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        """Batch retrieval, listing and results."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Messages API calls, batch creation and cancellation."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Batch deletion."""
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        """Read the request, route it, and deliver the answer."""
        owner = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            bad = ScriptedResponse(400, error_body("invalid_request_error", "bad JSON"))
            self._send(bad, owner._next_id())
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = RecordedRequest(method, path, headers, body)
        if method == "POST" and path == MESSAGES_PATH:
            owner._log(request)
            answer, number = owner._messages_call(request, len(raw))
            self._deliver(answer, number)
        elif path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/"):
            owner._log(request)
            self._deliver(owner._batches_call(request, len(raw)), owner._next_id())
        else:
            self._send(_not_found(path), owner._next_id())

    def _deliver(self, answer: ScriptedResponse, number: int) -> None:
        """Send ``answer`` after its delay, or misbehave as it says."""
        if answer.delay > 0 and self.server.owner._closing.wait(answer.delay):
            self.close_connection = True
            return
        if answer.reset:
            self._reset()
            return
        self._send(answer, number)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST: SO_LINGER (1, 0), then close the socket
        now (the read buffer first, which holds a reference), so no FIN goes out first."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass

    def _send(self, answer: ScriptedResponse, number: int) -> None:
        """Write the status line, headers and body (or its first ``truncate_at`` bytes)."""
        if isinstance(answer.body, bytes):
            payload = answer.body
            content_type = "text/html; charset=utf-8"
        else:
            payload = json.dumps(answer.body if answer.body is not None else {}).encode()
            content_type = "application/json"
        try:
            reason = _REASONS.get(answer.status) or http.HTTPStatus(answer.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = {
            "content-type": content_type,
            "content-length": str(len(payload)),
            "request-id": f"req_standin_{number}",
        }
        headers.update((name.lower(), value) for name, value in answer.headers.items())
        if answer.truncate_at is not None:
            payload = payload[: max(0, answer.truncate_at)]
            self.close_connection = True
        try:
            self.send_response(answer.status, reason)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""
