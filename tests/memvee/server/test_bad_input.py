"""Bad requests get their documented status and write nothing: malformed JSON and wrong
types (422), what the library refuses (422, with the library's message), unknown users
(404), and bodies over the limit (413), with or without a Content-Length."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from memvee import Memory
from memvee._server.app import HttpParser, create_app
from memvee.audit import Audit
from tests.support.server_process import ServerProcess

LIMIT = 4096


@pytest.fixture(scope="module")
def server_args() -> list[str]:
    return ["--max-body-bytes", str(LIMIT)]


@pytest.fixture
def user(http: httpx.Client) -> str:
    """A user with one stored exchange, so that 'nothing written' can be counted."""
    name = f"user-{uuid.uuid4().hex[:12]}"
    answer = http.post(
        f"/v1/users/{name}/exchanges", json={"user_message": "hello", "assistant_message": "hi"}
    )
    assert answer.status_code == 201
    return name


def message_count(http: httpx.Client, user: str) -> int:
    count: int = http.get(f"/v1/users/{user}").json()["message_count"]
    return count


def post_raw(
    http: httpx.Client, path: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = {"content-type": "application/json", **(headers or {})}
    return http.post(path, content=content, headers=sent)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"role": "user", "content": ', "body: not valid JSON: Expecting value at character 28"),
        (b"[1, 2, 3]", "Input should be a valid dictionary"),
        (b'{"role": "user", "content": 42}', "content: Input should be a valid string"),
        (b'{"role": "user"}', "content: Field required"),
        (b'{"role": "user", "content": "hi", "mood": "happy"}', "mood: Extra inputs"),
        (b'{"role": "user", "content": "hi", "sent_at": "yesterday"}', "sent_at: Input should"),
        (b'{"role": "user", "content": "\xff\xfe"}', "body: not JSON this server can read"),
        (b"[" * 2000 + b"]" * 2000, "nested too deep"),  # within the body limit of 4096
    ],
)
def test_malformed_json_and_wrong_types_are_422_and_write_nothing(
    http: httpx.Client, user: str, body: bytes, says: str
) -> None:
    answer = post_raw(http, f"/v1/users/{user}/messages", body)

    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_input"
    assert says in answer.json()["message"]
    assert message_count(http, user) == 2


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/plain", "'text/plain'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        (None, "no Content-Type"),
        ("text/plain" + "x" * 300, f"'text/plain{'x' * 50}'... (310 characters)"),
        ("text/plain" + "x" * 5_000, f"'text/plain{'x' * 50}'... (5,010 characters)"),
    ],
)
def test_a_json_body_not_typed_as_json_is_415_saying_so_not_that_it_is_no_object(
    http: httpx.Client, user: str, content_type: str | None, named: str
) -> None:
    """The body is not read unless typed as JSON, so the only mistake is its type: 415
    (RFC 9110, 15.5.16), as /mcp answers, naming the type it came with, cut short (the
    answer was "Input should be a valid dictionary", of a body that is one)."""
    body = b'{"role": "user", "content": "hi"}'
    headers = {} if content_type is None else {"content-type": content_type}

    answer = http.post(f"/v1/users/{user}/messages", content=body, headers=headers)

    assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_media_type")
    assert "Content-Type: application/json" in answer.json()["message"]
    assert answer.json()["message"].endswith(f"(it came with {named})")
    assert message_count(http, user) == 2


def test_a_body_typed_as_some_json_is_read_and_an_empty_one_of_another_type_is_422(
    http: httpx.Client, user: str
) -> None:
    """What the README says a 415 is: a body typed ``application/...+json`` is JSON and
    read, and an empty body of any type is no body, whose fields are required."""
    body = b'{"role": "user", "content": "hi"}'
    typed = {"content-type": "application/vnd.x+json"}

    taken = http.post(f"/v1/users/{user}/messages", content=body, headers=typed)
    empty = http.post(
        f"/v1/users/{user}/messages", content=b"", headers={"content-type": "text/plain"}
    )

    assert taken.status_code == 201, taken.text
    assert (empty.status_code, empty.json()["error"]) == (422, "invalid_input")
    assert "Field required" in empty.json()["message"]
    assert message_count(http, user) == 3


@pytest.mark.parametrize("coding", ["gzip", "br", "GZIP, identity"])
def test_a_body_sent_with_a_content_coding_is_415_naming_it_and_writes_nothing(
    http: httpx.Client, user: str, coding: str
) -> None:
    """The server decodes no Content-Encoding, and read the body as it came: gzip's bytes
    were answered as JSON that is not UTF-8 (422), and a plain body said to be br was
    stored. RFC 9110, 15.5.16: a content coding the server does not take is 415."""
    plain = b'{"role": "user", "content": "hi"}'
    body = gzip.compress(plain) if coding.lower().startswith("gzip") else plain

    answer = post_raw(http, f"/v1/users/{user}/messages", body, {"content-encoding": coding})
    identity = post_raw(http, f"/v1/users/{user}/messages", plain, {"content-encoding": "identity"})

    assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_media_type")
    assert f"Content-Encoding {coding!r}" in answer.json()["message"]
    assert identity.status_code == 201, identity.text
    assert message_count(http, user) == 3


def test_a_content_coding_sent_in_two_header_lines_is_refused_as_one_list(
    http: httpx.Client, user: str
) -> None:
    """``Content-Encoding: br`` then ``Content-Encoding: identity`` is the list "br,
    identity" (RFC 9110, 5.3): 415, nothing stored. Only the last line was read, and the
    plain body said to be br was stored."""
    plain = b'{"role": "user", "content": "hi"}'
    headers = [
        ("content-type", "application/json"),
        ("content-encoding", "br"),
        ("content-encoding", "identity"),
    ]

    answer = http.post(f"/v1/users/{user}/messages", content=plain, headers=headers)

    assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_media_type")
    assert message_count(http, user) == 2


def test_a_content_coding_on_mcp_is_415_in_the_json_rpc_shape_and_runs_nothing(
    http: httpx.Client, user: str
) -> None:
    """MCP's transport decodes no content coding either: a plain tool call said to be br
    is refused as the SDK answers its own errors, and nothing is stored. It ran."""
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "remember", "arguments": {"user_id": user, "user_message": "hi"}},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "content-encoding": "br",
    }

    answer = http.post("/mcp", content=json.dumps(call).encode(), headers=headers)

    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == -32600
    assert "Content-Encoding 'br'" in answer.json()["error"]["message"]
    assert message_count(http, user) == 2


@pytest.mark.parametrize("when", [-99999999999, 1740830400, 1740830400.5, "1740830400", "1e9"])
def test_a_time_given_as_a_number_is_422_as_seconds_and_milliseconds_cannot_be_told_apart(
    http: httpx.Client, user: str, when: object
) -> None:
    says = "an ISO 8601 string with its offset, such as 2025-03-01T12:00:00Z, not a number"
    message = {"role": "user", "content": "hi", "sent_at": when}
    exchange = {"user_message": "hi", "assistant_message": "hello", "sent_at": when}
    question = {"query": "where?", "as_of": when}

    answers = [
        http.post(f"/v1/users/{user}/messages", json=message),
        http.post(f"/v1/users/{user}/exchanges", json=exchange),
        http.post(f"/v1/users/{user}/retrieve", json=question),
        http.get(f"/v1/users/{user}/knowledge", params={"as_of": str(when)}),
    ]

    assert [a.status_code for a in answers] == [422] * 4
    assert all(says in a.json()["message"] for a in answers)
    assert message_count(http, user) == 2


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"role": "robot", "content": "hi"}, "unknown role 'robot'"),
        ({"role": "user", "content": ""}, "content"),
        ({"role": "user", "content": "half \ud800 a pair"}, "surrogate"),
        ({"role": "user", "content": "hi", "sent_at": "2026-01-01T10:00:00"}, "timezone"),
    ],
)
def test_what_the_library_refuses_is_422_with_its_message(
    http: httpx.Client, user: str, body: dict[str, Any], says: str
) -> None:
    answer = post_raw(http, f"/v1/users/{user}/messages", json.dumps(body).encode())

    assert answer.status_code == 422
    assert says in answer.json()["message"]
    assert message_count(http, user) == 2


def test_a_bad_exchange_writes_neither_half(http: httpx.Client, user: str) -> None:
    answer = http.post(
        f"/v1/users/{user}/exchanges", json={"user_message": "fine", "assistant_message": ""}
    )

    assert answer.status_code == 422
    assert message_count(http, user) == 2


def test_a_user_id_with_a_control_character_is_422_and_creates_no_user(
    http: httpx.Client,
) -> None:
    answer = http.post("/v1/users/eve%01/messages", json={"role": "user", "content": "hi"})

    assert answer.status_code == 422
    assert "user_id" in answer.json()["message"]
    assert http.get("/v1/users/eve%01").status_code == 422


@pytest.mark.parametrize("escape", ["%FE", "%FF", "%C3", "%E5%8C"])
def test_a_user_id_whose_escapes_are_not_utf8_is_422_and_merges_no_users(
    http: httpx.Client, escape: str
) -> None:
    answer = http.post(f"/v1/users/x{escape}/messages", json={"role": "user", "content": "hi"})

    assert answer.status_code == 422, "was 201, to a user 'x\ufffd' shared by every such id"
    assert answer.json()["message"] == "user_id: its percent-escapes are not UTF-8"
    assert http.get("/v1/users/x%EF%BF%BD").status_code == 404


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("knowledge/a%00/explain", "entry_id contains a NUL character"),
        ("knowledge/%FF/explain", "entry_id: its percent-escapes are not UTF-8"),
        ("tasks/%FF", "task_id: its percent-escapes are not UTF-8"),
    ],
)
def test_a_malformed_entry_or_task_id_is_422_naming_that_id_not_a_404(
    http: httpx.Client, user: str, path: str, says: str
) -> None:
    """Such an id is bad input, not an id the user lacks, nor a fault of the user id."""
    answer = http.get(f"/v1/users/{user}/{path}")

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_input"
    assert answer.json()["message"].startswith(says)


def test_the_explain_tool_answers_a_malformed_entry_id_as_invalid_input(
    http: httpx.Client, user: str
) -> None:
    arguments = {"user_id": user, "entry_id": "a\u0000"}
    params = {"name": "explain_memory", "arguments": arguments}
    answer = http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
        headers={"accept": "application/json, text/event-stream"},
    )

    result = answer.json()["result"]
    assert result["isError"]
    assert result["content"][0]["text"].endswith(
        "invalid_input: entry_id contains a NUL character (U+0000 at index 1), which cannot "
        "be stored as text"
    )


def test_a_user_id_with_a_line_break_is_422_not_a_bare_404(http: httpx.Client) -> None:
    answer = http.post("/v1/users/x%0Ay/messages", json={"role": "user", "content": "hi"})

    assert answer.status_code == 422
    assert "control characters (U+000A at index 1)" in answer.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": "3"},
        {"query": "x", "top_k": 2.5},
        {"query": "x", "top_k": True},
        {"query": 7},
        {"top_k": 3},
        {"query": ""},
        {"query": "  "},
    ],
)
def test_bad_retrieve_arguments_are_422(
    http: httpx.Client, user: str, body: dict[str, Any]
) -> None:
    assert http.post(f"/v1/users/{user}/retrieve", json=body).status_code == 422


def test_a_top_k_with_a_fraction_of_zero_is_that_integer_as_in_json_schema(
    http: httpx.Client, user: str
) -> None:
    body = {"query": "hello hi", "top_k": 1.0, "include_messages": True}
    answer = http.post(f"/v1/users/{user}/retrieve", json=body)

    assert answer.status_code == 200
    assert len(answer.json()["messages"]) == 1


def test_writes_for_an_unknown_user_of_a_read_are_404_and_create_nobody(
    http: httpx.Client,
) -> None:
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"

    assert http.post(f"/v1/users/{stranger}/process").status_code == 404
    assert http.post(f"/v1/users/{stranger}/flush").status_code == 404
    assert http.delete(f"/v1/users/{stranger}").status_code == 404
    assert http.get(f"/v1/users/{stranger}").status_code == 404


def test_a_body_over_the_limit_is_413_and_writes_nothing(http: httpx.Client, user: str) -> None:
    body = json.dumps({"role": "user", "content": "x" * LIMIT}).encode()

    answer = post_raw(http, f"/v1/users/{user}/messages", body)

    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    assert message_count(http, user) == 2


@pytest.mark.parametrize("streamed", [False, True], ids=["with its length", "streamed"])
def test_a_body_over_the_limit_on_mcp_is_413_in_the_json_rpc_shape_an_mcp_client_reads(
    http: httpx.Client, streamed: bool
) -> None:
    """As the SDK's streamable HTTP transport answers its own errors: a JSON-RPC invalid
    request with a null id, not the HTTP API's error shape."""
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"x": "x" * LIMIT}}
    body = json.dumps(call).encode()
    headers = {"content-type": "application/json", "accept": "application/json"}

    content = iter([body[:100], body[100:]]) if streamed else body
    answer = http.post("/mcp", content=content, headers=headers)

    assert ("content-length" in answer.request.headers) is not streamed
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32600,
            "message": f"the request body is over the limit of {LIMIT} bytes",
        },
    }


def test_a_header_of_thousands_of_digits_is_only_a_header(http: httpx.Client, user: str) -> None:
    digits = {"X-Trace": "9" * 5000}  # more than Python converts to an int
    body = json.dumps({"role": "user", "content": "I live in Oslo."}).encode()

    answer = post_raw(http, f"/v1/users/{user}/messages", body, headers=digits)

    assert answer.status_code == 201, answer.text
    assert message_count(http, user) == 3


@pytest.mark.parametrize("path", ["/v1/users/{user}/messages", "/mcp"])
def test_a_streamed_body_without_length_is_cut_at_the_limit(
    http: httpx.Client, user: str, path: str
) -> None:
    """Answered at once on every route, also when only the last piece passes the limit:
    MCP's own reading of the body once waited for more of a body that had ended, until
    the client gave up."""

    def chunks() -> Iterator[bytes]:
        start = b'{"role": "user", "content": "'
        yield start
        for _ in range((LIMIT - len(start)) // 512):
            yield b"x" * 512
        yield b"x" * 600 + b'"}'

    answer = http.post(
        path.format(user=user),
        content=chunks(),
        headers={"content-type": "application/json", "accept": "application/json"},
        timeout=10,
    )

    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413
    assert message_count(http, user) == 2


def test_a_body_just_under_the_limit_is_stored(http: httpx.Client, user: str) -> None:
    body = json.dumps({"role": "user", "content": "x" * (LIMIT - 100)}).encode()

    assert post_raw(http, f"/v1/users/{user}/messages", body).status_code == 201
    assert message_count(http, user) == 3


def _exchanged(server: ServerProcess, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """The status line, headers and body of the first answer to ``request`` (raw bytes)
    sent on a connection of its own, read within a few seconds."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            assert chunk, f"the connection closed before an answer: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = connection.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\n{key}\r\n"
)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/users/nobody-ws/messages", 404, "not_found"),
        ("/no/such/route", 404, "not_found"),
        ("/v1/users/%FF/messages", 422, "invalid_input"),
    ],
)
@pytest.mark.parametrize(
    "key", ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""], ids=["keyed", "keyless"]
)
def test_a_websocket_handshake_gets_the_json_error_its_request_would_as_plain_http(
    server: ServerProcess, path: str, status: int, error: str, key: str
) -> None:
    """The server serves no WebSocket: a handshake, well-formed or not (no key), is the
    plain GET it also is, its Upgrade ignored (RFC 9110, 7.8), as an h2c one's is, and
    answered with the API's JSON error and request id. It was a bare 403, or the
    WebSocket library's text/plain 400, with no request id and no access log line."""
    got, headers, body = _exchanged(server, _HANDSHAKE.format(path=path, key=key).encode())

    assert got.split(" ")[1] == str(status), got
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] == error and answer["request_id"] == headers["x-request-id"]


def test_a_websocket_handshake_to_a_route_is_answered_as_its_get(server: ServerProcess) -> None:
    handshake = _HANDSHAKE.format(path="/healthz", key="Sec-WebSocket-Key: eA==\r\n")

    got, _, body = _exchanged(server, handshake.encode())

    assert got.split(" ")[1] == "200" and json.loads(body) == {"status": "ok"}
    assert "WebSocket library" not in server.log_path.read_text(encoding="utf-8")


def test_a_request_sent_after_a_handshake_on_its_connection_is_never_left_hanging(
    server: ServerProcess,
) -> None:
    """The parser holds back whatever follows a request asking for an upgrade as the other
    protocol's: the handshake's answer closes the connection, so a request sent next on it
    is not left unanswered until the client gives up (the client sends it again on a new
    connection). Nor is each handshake a warning in the log, which any client could
    flood."""
    handshake = _HANDSHAKE.format(path="/healthz", key="Sec-WebSocket-Key: eA==\r\n")
    then = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    # Half uvicorn's keep-alive timeout (5 s), which would end a hanging connection too.
    with socket.create_connection(("127.0.0.1", server.port), timeout=2.5) as connection:
        connection.sendall((handshake + then).encode())
        received = b""
        while chunk := connection.recv(65536):  # a timeout fails the test: left hanging
            received += chunk

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close" in head.lower()
    assert body == b'{"status":"ok"}'
    assert "Unsupported upgrade request" not in server.log_path.read_text(encoding="utf-8")


def test_a_body_over_the_limit_announced_with_expect_100_continue_is_413_before_it_is_sent(
    server: ServerProcess, http: httpx.Client, user: str
) -> None:
    """A client that asks first (``Expect: 100-continue``, as curl does for large bodies)
    is told 413 at once, and sends nothing (RFC 9110, 10.1.1): the server asked for the
    body to drop it, then waited for it, and answered only once it had come."""
    request = (
        f"POST /v1/users/{user}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        f"Content-Length: {4 * LIMIT}\r\n\r\n"
    )

    got, headers, body = _exchanged(server, request.encode())

    assert got.split(" ")[1] == "413", got
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == "payload_too_large"
    assert message_count(http, user) == 2


@contextlib.asynccontextmanager
async def _serving(
    memory: Memory, db_url: str, parser: HttpParser, *, told: bool = True
) -> AsyncIterator[int]:
    """The server over ``memory`` on ``parser``, as ``memory serve`` runs it (the app told
    which parser serves it unless ``told`` is false), listening on 127.0.0.1 at the port
    yielded, until the block ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with Audit(db_url=db_url) as audit:
        app = create_app(
            memory, audit, max_body_bytes=1 << 20, http_parser=parser if told else None
        )
        config = uvicorn.Config(app, http=parser, ws="none", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield listener.getsockname()[1]
        finally:
            server.should_exit = True
            await serving


async def _received_on_one_connection(port: int, sent: bytes) -> bytes:
    """What the server on ``port`` sends back to ``sent`` on one connection, until it
    closes it or is silent for a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    received = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 1.0)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    writer.close()
    return received


async def _answers_on_one_connection(
    memory: Memory, db_url: str, parser: HttpParser, first_headers: str
) -> bytes:
    """What the server, on ``parser``, sends back on one connection to a GET /healthz with
    ``first_headers`` and a GET /readyz sent right after it, until it closes or is silent
    for a second."""
    async with _serving(memory, db_url, parser) as port:
        return await _received_on_one_connection(
            port,
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{first_headers}\r\n"
            "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        )


@pytest.mark.parametrize(
    ("parser", "first_headers", "answers", "closed"),
    [
        ("httptools", "Upgrade: h2c\r\n", 2, False),
        ("httptools", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n", 1, True),
        ("h11", "Upgrade: h2c\r\n", 1, True),
    ],
)
async def test_only_a_request_its_parser_holds_as_an_upgrade_closes_its_connection(
    memory: Memory, db_url: str, parser: HttpParser, first_headers: str, answers: int, closed: bool
) -> None:
    """httptools holds a connection only after ``Upgrade`` with ``Connection: upgrade``:
    an ``Upgrade`` alone keeps it, and the request sent next is answered on it; h11 holds
    on ``Upgrade`` alone, whose answer closes the connection, never left hanging."""
    received = await _answers_on_one_connection(memory, db_url, parser, first_headers)

    assert received.count(b"HTTP/1.1 200 ") == answers
    assert (b"\r\nconnection: close" in received.lower()) == closed


@pytest.mark.parametrize(
    ("parser", "upgrade", "body_lost"),
    [
        ("httptools", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n", True),
        ("httptools", "Upgrade: websocket\r\nConnection: upgrade\r\n", True),
        ("httptools", "Upgrade: h2c\r\n", False),
        ("h11", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n", False),
    ],
)
async def test_a_post_asking_for_an_upgrade_is_served_with_its_body_or_refused_in_json(
    memory: Memory, db_url: str, parser: HttpParser, upgrade: str, body_lost: bool
) -> None:
    """A POST with a body and an ``Upgrade`` (curl --http2 sends h2c's on plain http) is
    the plain POST it also is. Where the parser takes the body for the new protocol's
    (httptools, with ``Connection: upgrade``), the app never sees it: the request is
    refused, 422 in the JSON error shape naming why, and nothing is written. It used to
    be answered as if sent with no body ("body: Field required"). Elsewhere its body is
    read and the message written."""
    body = json.dumps({"role": "user", "content": "I live in Oslo"}).encode()
    request = (
        f"POST /v1/users/upgrading/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with _serving(memory, db_url, parser) as port:
        received = await _received_on_one_connection(port, request)

    head, _, answer = received.partition(b"\r\n\r\n")
    status = head.split(b" ")[1]
    stored = [m.content for m in await memory.messages("upgrading")]
    if body_lost:
        assert status == b"422", received
        refusal = json.loads(answer)
        assert refusal["error"] == "invalid_input"
        assert refusal["message"].startswith("body: not read"), refusal["message"]
        assert f"x-request-id: {refusal['request_id']}".encode() in head.lower()
        assert b"\r\nconnection: close" in head.lower()
        assert stored == []
    else:
        assert status == b"201", received
        assert stored == ["I live in Oslo"]


@pytest.mark.parametrize(
    ("parser", "told", "upgrade"),
    [
        ("h11", False, "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"),
        ("httptools", True, "Upgrade: \r\nConnection: Upgrade\r\n"),
    ],
)
async def test_a_post_asking_for_an_upgrade_whose_body_its_parser_read_is_served(
    memory: Memory, db_url: str, parser: HttpParser, told: bool, upgrade: str
) -> None:
    """A POST with a body and an upgrade asked for is refused only where httptools took its
    body (``Upgrade`` naming a protocol, with ``Connection: upgrade``). On h11, the app not
    told which parser serves it, or with an empty ``Upgrade``, the body is read, and the
    message written. Both used to be refused, 422, their body read."""
    body = json.dumps({"role": "user", "content": "I live in Oslo"}).encode()
    request = (
        f"POST /v1/users/upgrading/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with _serving(memory, db_url, parser, told=told) as port:
        received = await _received_on_one_connection(port, request)

    assert received.split(b" ")[1] == b"201", received
    assert [m.content for m in await memory.messages("upgrading")] == ["I live in Oslo"]
