"""The MCP tools through the official SDK's client: over stdio, spawning ``memvee mcp`` as
Claude Desktop does, and over streamable HTTP at ``/mcp`` of a running ``memvee serve``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import httpx
import pytest
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS
from pydantic_core import PydanticSerializationError

from memvee import Memory, Message
from memvee._server import request_ids
from memvee._server.errors import READS_ONLY_KEY, ReadsOnly
from memvee._server.mcp_tools import READ_ONLY_TOOLS, Cutoff, build_mcp
from memvee._server.request_ids import RefuseInvalidMessages
from memvee.audit import Audit
from memvee.errors import NotFoundError
from memvee.extractors import OfflineExtractor
from projections import ProjectionReader, ProjectionTables, Projector
from tests.support.extractors import RecordingExtractor
from tests.support.mcp_clients import call, facts_of, failure, http_session, stdio_session
from tests.support.messages_api_server import MessagesAPIServer, ScriptedResponse
from tests.support.server_process import MEMVEE, ROOT, ServerProcess, server_env, wait_until

SAID = "I live in Lisbon and my dog is called Rex."


async def test_a_single_user_stdio_server_remembers_recalls_and_explains_but_never_forgets(
    tmp_path: Path,
) -> None:
    async with stdio_session(tmp_path, "--user", "alice", "--batch-threshold", "2") as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == {"remember", "recall", "list_memories", "explain_memory"}
        for tool in tools.values():
            assert "user_id" not in tool.input_schema.get("properties", {})
            assert len(tool.description or "") > 100
        assert tools["recall"].annotations is not None
        assert tools["recall"].annotations.read_only_hint is True

        stored = await call(session, "remember", user_message=SAID, assistant_message="Nice!")
        assert len(stored["message_ids"]) == 2

        facts = await facts_of(session, 2)
        first = await call(session, "list_memories", limit=1)
        second = await call(session, "list_memories", limit=1, offset=first["next_offset"])
        past = await call(session, "list_memories", offset=5)
        too_many = await failure(session, "list_memories", limit=501)
        recalled = await call(session, "recall", question="what is the dog called")
        explained = await call(session, "explain_memory", entry_id=recalled["entry_ids"][0])
        refused = await failure(session, "forget_user")

    assert "forget_user" in refused  # not offered without --allow-forget
    assert {f["text"] for f in facts} == {"User lives in Lisbon.", "User's dog is called Rex."}
    assert [f["entry_id"] for f in first["facts"] + second["facts"]] == [
        f["entry_id"] for f in facts
    ]
    assert (first["total"], first["next_offset"]) == (2, 1)
    assert (second["total"], second["next_offset"]) == (2, None)
    assert (past["facts"], past["next_offset"], past["total"]) == ([], None, 2), "was 5"
    assert "limit" in too_many
    assert "- User's dog is called Rex." in recalled["prompt"]
    assert explained["text"] == "User's dog is called Rex."
    assert explained["current"] is True
    assert [s["message_id"] for s in explained["sources"]] == [stored["message_ids"][0]]
    assert explained["sources"][0]["content"] == SAID


async def test_a_multi_user_stdio_server_takes_the_user_per_call_and_may_forget(
    tmp_path: Path,
) -> None:
    async with stdio_session(tmp_path, "--allow-forget", "--batch-threshold", "1") as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert "forget_user" in tools
        assert tools["forget_user"].annotations is not None
        assert tools["forget_user"].annotations.destructive_hint is True
        assert "user_id" in tools["remember"].input_schema["required"]

        await call(session, "remember", user_id="bob", user_message="I live in Oslo.")
        await call(session, "remember", user_id="carol", user_message="I live in Rome.")
        (bobs,) = await facts_of(session, 1, user_id="bob")
        receipt = await call(session, "forget_user", user_id="bob")
        nobody = await failure(session, "forget_user", user_id="nobody-ever")
        after = await call(session, "list_memories", user_id="bob")
        (carols,) = await facts_of(session, 1, user_id="carol")

    assert bobs["text"] == "User lives in Oslo."
    assert receipt["erased_records"] > 0 and receipt["scrubbed"] is True
    assert "not_found: no user 'nobody-ever'" in nobody, "was a receipt of 1 erased record"
    assert after["facts"] == []
    assert carols["text"] == "User lives in Rome."


async def test_two_stdio_servers_share_one_database_file(tmp_path: Path) -> None:
    """Each Claude Code session spawns its own ``memvee mcp`` on the same file."""
    async with (
        stdio_session(tmp_path, "--user", "erin", "--batch-threshold", "1") as first,
        stdio_session(tmp_path, "--user", "erin", "--batch-threshold", "1") as second,
    ):
        await call(first, "remember", user_message="I live in Lisbon.")
        await call(second, "remember", user_message="My dog is called Rex.")
        seen_by_first = await facts_of(first, 2)
        seen_by_second = await facts_of(second, 2)

    expected = {"User lives in Lisbon.", "User's dog is called Rex."}
    assert {f["text"] for f in seen_by_first} == expected
    assert {f["text"] for f in seen_by_second} == expected


async def test_tool_errors_say_what_went_wrong(tmp_path: Path) -> None:
    async with stdio_session(tmp_path, "--user", "dave") as session:
        empty = await failure(session, "remember", user_message="")
        await call(session, "remember", user_message="I live in Kyiv.")
        unknown = await failure(session, "explain_memory", entry_id="no-such-entry")

    assert "invalid_input: user message content must not be empty" in empty
    assert "not_found:" in unknown
    assert "no-such-entry" in unknown


def _stdio_script(
    db: Path, calls: list[dict[str, Any]], *options: str
) -> subprocess.CompletedProcess[bytes]:
    """``memvee mcp`` for user eve run over a whole session written to its stdin at once."""
    return subprocess.run(
        [str(MEMVEE), "mcp", "--db", str(db), "--lexical", "--user", "eve", *options],
        input="".join(json.dumps(c) + "\n" for c in calls).encode(),
        capture_output=True,
        env=server_env(),
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_a_request_the_client_cancelled_is_not_waited_for_once_stdin_closes(
    tmp_path: Path,
) -> None:
    """The SDK answers no cancelled request; the drain must not wait out its timeout."""
    client = {"name": "script", "version": "1"}
    calls = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "recall", "arguments": {"question": "where"}},
        },
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}},
    ]
    # Waiting the drain out would fail the script's timeout.
    done = _stdio_script(tmp_path / "m.db", calls, "--drain-timeout", "3600")
    assert done.returncode == 0, done.stderr.decode()
    assert b"still unanswered" not in done.stderr


def test_requests_written_before_stdin_closes_are_all_answered_and_done(tmp_path: Path) -> None:
    """A script's whole session in one file: the server stops only once each is answered."""

    def request(number: int, method: str, **params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": number, "method": method, "params": params}

    def remember(number: int, said: str) -> dict[str, Any]:
        arguments = {"user_message": said, "assistant_message": "Noted."}
        return request(number, "tools/call", name="remember", arguments=arguments)

    client = {"name": "script", "version": "1"}
    said = [f"I have a cat number {n}." for n in range(5)]
    calls = [
        request(1, "initialize", protocolVersion="2025-06-18", capabilities={}, clientInfo=client),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *(remember(10 + n, line) for n, line in enumerate(said)),
        request(20, "tools/call", name="recall", arguments={"question": "cat"}),
    ]
    db = tmp_path / "memvee.db"
    done = _stdio_script(db, calls)

    assert done.returncode == 0, done.stderr.decode()
    answers = {a["id"]: a for a in map(json.loads, done.stdout.decode().splitlines())}
    assert sorted(answers) == [1, 10, 11, 12, 13, 14, 20]
    assert not any(a["result"].get("isError") for a in answers.values())
    with Audit(db_path=str(db)) as audit:
        logged = [e.payload["content"] for e in audit.log("eve", types=["MessageAdded"])]
    assert sorted(logged[::2]) == said


def test_a_line_the_sdk_cannot_read_is_answered_while_the_client_waits(tmp_path: Path) -> None:
    """The SDK drops such a line with no answer; a client keeping stdin open would wait for
    it forever. JSON-RPC 2.0's errors answer it, with the request's id where it has one."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "script", "version": "1"},
        },
    }
    lone_surrogate = (
        '{"jsonrpc": "2.0", "id": "s", "method": "tools/call", "params": {"name": "remember", '
        '"arguments": {"user_message": "I live in \\ud800 Oslo."}}}'
    )
    lines = [
        json.dumps(initialize),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": "oops"}),
        lone_surrogate,
        "not json",
        "[" * 5000,  # deeper than the parsers go: it killed the stdin reader
        json.dumps({"jsonrpc": "2.0", "id": None, "method": "tools/list"}),
        json.dumps({"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"}),
        json.dumps({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}),
        json.dumps({"jsonrpc": "2.0", "id": 4}),
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    ]
    db = tmp_path / "memvee.db"
    with subprocess.Popen(
        [str(MEMVEE), "mcp", "--db", str(db), "--lexical", "--user", "eve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(),
        cwd=ROOT,
    ) as server:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("".join(line + "\n" for line in lines).encode())
        server.stdin.flush()
        answers = _read_answers(server.stdout, 10, within=30)  # stdin still open
        server.stdin.close()
        assert server.wait(timeout=30) == 0

    errors = {a["id"]: a["error"] for a in answers if "error" in a}
    assert errors[2]["code"] == -32600 and errors[2]["message"] == "Invalid Request"
    assert errors["s"]["code"] == -32700 and "hex escape" in errors["s"]["data"]
    assert errors[4]["code"] == -32600, "its id is echoed (was null)"
    assert errors[1.5]["code"] == -32600, "a number is echoed as sent (was null)"
    unnamed = [a["error"]["code"] for a in answers if a["id"] is None]
    assert sorted(unnamed) == [-32700, -32700, -32600, -32600], "ids no request has"
    assert {a["id"] for a in answers if "result" in a} == {1, 5}
    with Audit(db_path=str(db)) as audit, pytest.raises(NotFoundError):
        next(audit.log("eve"))  # the refused remember stored nothing


def _read_answers(stdout: IO[bytes], count: int, *, within: float) -> list[dict[str, Any]]:
    """``count`` lines of ``stdout`` as JSON, failing (not hanging) past ``within`` s."""
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(answers) < count:
        ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"{count - len(answers)} answers never came; got {answers}"
        answers.append(json.loads(stdout.readline()))
    return answers


MALFORMED = {
    "JSON-RPC 1.0": b'{"jsonrpc": "1.0", "id": 4, "method": "tools/list"}',
    "params not an object": b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": "x"}',
    "a batch": b'[{"jsonrpc": "2.0", "id": 6, "method": "tools/list"}]',
    "a lone surrogate": b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": '
    b'{"name": "recall", "arguments": {"question": "\\ud800"}}}',
    "text not UTF-8": b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": '
    b'{"name": "remember", "arguments": {"user_message": "caf\xe9 au lait"}}}',
    "an id MCP does not take": b'{"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"}',
    "a number past Python's digits": b'{"jsonrpc": "2.0", "id": 9, "method": "tools/call", '
    b'"params": {"name": "recall", "arguments": {"question": "x", "max_results": 1'
    + b"0" * 5000
    + b"}}}",
    "no usable id": b'{"jsonrpc": "2.0", "id": null, "method": "tools/list"}',
}
"""Lines no MCP server can take, each answered with an error rather than dropped."""


def test_a_malformed_message_gets_the_same_answer_over_stdio_and_http(
    tmp_path: Path, http: httpx.Client
) -> None:
    """Parse error or invalid request, with the request's id where it has a usable one
    (a number as it was sent, though MCP takes no fraction and Python reads no integer of
    over 4,300 digits), and a short message: the same words over both transports, and
    nothing stored (a line that is not UTF-8 was stored with U+FFFD in place of its
    bytes)."""
    client = {"name": "script", "version": "1"}
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
    hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    session = [json.dumps(hello).encode(), json.dumps(initialized).encode(), *MALFORMED.values()]
    db = tmp_path / "memvee.db"
    done = subprocess.run(
        [str(MEMVEE), "mcp", "--db", str(db), "--lexical", "--user", "eve"],
        input=b"".join(line + b"\n" for line in session),
        capture_output=True,
        env=server_env(),
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    headers = {"content-type": "application/json", "accept": "application/json"}
    over_http = [http.post("/mcp", content=body, headers=headers) for body in MALFORMED.values()]

    def named(answer: Any) -> tuple[Any, Any]:
        return (answer[0] if isinstance(answer, list) else answer)["id"], answer

    over_stdio = dict(map(named, map(json.loads, done.stdout.splitlines())))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert [answer.status_code for answer in over_http] == [400] * len(MALFORMED)
    assert dict(named(answer.json()) for answer in over_http) == {
        i: a for i, a in over_stdio.items() if i != 0
    }
    refused = [answer.json() for answer in over_http]
    firsts = [answer[0] if isinstance(answer, list) else answer for answer in refused]
    assert [(a["id"], a["error"]["code"]) for a in firsts] == [
        (4, -32600),
        (5, -32600),
        (6, -32600),
        (7, -32700),
        (8, -32700),
        (1.5, -32600),
        (9, -32700),
        (None, -32600),
    ]
    assert not any("pydantic" in answer.text for answer in over_http)
    with Audit(db_path=str(db)) as audit, pytest.raises(NotFoundError):
        next(audit.log("eve"))


def _initialized(
    tmp_path: Path, user: str, stderr: int, env: dict[str, str] | None = None, *options: str
) -> subprocess.Popen[bytes]:
    """``memvee mcp --user USER`` (with ``options``) on a new database, its session
    initialized; ``env`` adds to the test's environment."""
    client = {"name": "script", "version": "1"}
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
    hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    server = subprocess.Popen(
        [
            str(MEMVEE),
            *("mcp", "--db", str(tmp_path / "memvee.db"), "--lexical", "--user", user),
            *options,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=server_env(env),
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(json.dumps(hello).encode() + b"\n")
    server.stdin.flush()
    assert json.loads(server.stdout.readline())["id"] == 0
    return server


def test_sigterm_with_calls_in_flight_answers_each_call_read_truthfully_then_stops(
    tmp_path: Path,
) -> None:
    """A signal reads no more requests but lets the calls read finish before the server
    stops: no remember is answered "Connection closed" though it was stored, which a
    client would send again and so store twice."""
    server = _initialized(tmp_path, "ivy", subprocess.PIPE)
    try:
        assert server.stdin is not None and server.stdout is not None
        lines = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
        for number in range(1, 151):
            call_params = {
                "name": "remember",
                "arguments": {"user_message": f"I have {number} cats."},
            }
            lines.append(
                {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": call_params}
            )
        server.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        server.stdin.flush()
        first = server.stdout.readline()  # the calls are under way
        server.send_signal(signal.SIGTERM)
        rest, errors = server.communicate(timeout=60)
    finally:
        server.kill()
        server.wait()

    assert server.returncode == 0, errors.decode()[-2000:]
    assert b"Traceback" not in errors, "was: exit 1 and the SDK task group's traceback"
    answers = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert [a for a in answers if "error" in a] == [], "was: -32000 Connection closed"
    stored = {m.message_id for m in asyncio.run(_messages(tmp_path / "memvee.db", "ivy"))}
    for answer in answers:
        assert not answer["result"].get("isError"), answer
        said = json.loads(answer["result"]["content"][0]["text"])["message_ids"]
        assert set(said) <= stored


def test_sigterm_stops_a_stdio_server_at_once_keeping_what_extraction_was_given(
    tmp_path: Path,
) -> None:
    """SIGTERM is a client's "stop now" to a stdio server, stdin open or not: extraction
    hanging on the API gets no grace, its task ends FAILED as interrupted and the turn
    stays buffered."""
    with MessagesAPIServer(lambda request: ScriptedResponse(delay=600.0)) as api:
        env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": api.base_url}
        server = _initialized(tmp_path, "una", subprocess.PIPE, env, "--batch-threshold", "1")
        try:
            assert server.stdin is not None and server.stdout is not None
            remember = {"name": "remember", "arguments": {"user_message": "I live in Oslo"}}
            lines = [
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": remember},
            ]
            server.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
            server.stdin.flush()
            assert json.loads(server.stdout.readline())["id"] == 1
            wait_until(lambda: api.requests, what="the extraction's call")
            server.send_signal(signal.SIGTERM)  # stdin stays open: the SDK is reading it
            _, errors = server.communicate(timeout=60)
        finally:
            server.kill()
            server.wait()

    assert server.returncode == 0, errors.decode()[-2000:]
    buffered, tasks = asyncio.run(_stored(tmp_path / "memvee.db", "una"))
    assert buffered == ["I live in Oslo"]
    assert tasks == [("FAILED", "interrupted by shutdown")]


async def _stored(db: Path, user: str) -> tuple[list[str], list[tuple[str, str | None]]]:
    """What ``user`` has buffered in ``db``, and how each of their tasks ended."""
    async with Memory(db_path=str(db), extractor=OfflineExtractor(), embedder=False) as memory:
        buffered = [m.content for m in await memory.buffer(user)]
        return buffered, [(t.status.value, t.error) for t in await memory.tasks(user)]


async def _messages(db: Path, user: str) -> list[Message]:
    """The messages ``user`` has in ``db``."""
    async with Memory(db_path=str(db), extractor=OfflineExtractor(), embedder=False) as memory:
        return await memory.messages(user)


def test_a_client_that_closes_the_servers_stdout_stops_it_cleanly(tmp_path: Path) -> None:
    """A client that stops reading (it died, or hung up) reads no more answers: the server
    stops as if stdin had ended, though stdin stays open, with one line saying why."""
    server = _initialized(tmp_path, "una", subprocess.PIPE)
    try:
        assert server.stdin is not None and server.stdout is not None and server.stderr
        server.stdout.close()
        lines = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
        for number in range(1, 51):
            arguments = {"user_message": f"I have {number} cats."}
            params = {"name": "remember", "arguments": arguments}
            lines.append({"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": params})
        server.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        server.stdin.flush()
        assert server.wait(timeout=60) == 0
        errors = server.stderr.read().decode()
    finally:
        server.kill()
        server.wait()

    assert "Traceback" not in errors, "was: exit 1 and the SDK task group's traceback"
    said = [json.loads(line) for line in errors.splitlines() if "stdout_closed" in line]
    assert len(said) == 1 and said[0]["message"].startswith("stdout closed by the client")


def test_a_stdio_server_started_with_stdin_closed_refuses_before_opening_anything(
    tmp_path: Path,
) -> None:
    """A closed descriptor 0 would go to the next file opened (the database's), and the
    SDK would then put the null device in its place."""
    db = tmp_path / "memvee.db"
    done = subprocess.run(
        [str(MEMVEE), "mcp", "--db", str(db)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=server_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(0),  # the child closes its own stdin
    )
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        .strip()
        .endswith("error: stdin and stdout must be open: memvee mcp speaks MCP over them")
    )
    assert not db.exists()


async def test_streamable_http_serves_the_same_tools_beside_the_http_api(
    server: ServerProcess,
) -> None:
    user = f"user-{uuid.uuid4().hex[:12]}"
    async with (
        http_session(server.url) as session,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        names = {tool.name for tool in (await session.list_tools()).tools}
        stored = await call(session, "remember", user_id=user, user_message=SAID)
        flushed = await http.post(f"/v1/users/{user}/flush")  # the server does not auto-process
        assert flushed.status_code == 200, flushed.text
        facts = await facts_of(session, 2, user_id=user)
        recalled = await call(session, "recall", user_id=user, question="where does the user live")

    assert names == {"remember", "recall", "list_memories", "explain_memory"}
    assert len(stored["message_ids"]) == 1
    assert {f["text"] for f in facts} == {"User lives in Lisbon.", "User's dog is called Rex."}
    assert recalled["entry_ids"][0] in {f["entry_id"] for f in facts}
    assert "Lisbon" in recalled["prompt"]


async def test_an_mcp_client_configured_with_a_trailing_slash_is_served_as_at_mcp(
    server: ServerProcess,
) -> None:
    """Clients are often given ``/mcp/``: the SDK followed the 307 to ``/mcp`` until the
    slash redirect went, then got -32601 Not Found; ``/mcp/`` is now ``/mcp`` itself."""
    user = f"user-{uuid.uuid4().hex[:12]}"
    async with http_session(server.url, path="/mcp/") as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        stored = await call(session, "remember", user_id=user, user_message=SAID)

    assert names == {"remember", "recall", "list_memories", "explain_memory"}
    assert len(stored["message_ids"]) == 1


def test_a_request_whose_id_mcp_does_not_take_is_refused_over_http_not_dropped(
    http: httpx.Client,
) -> None:
    """The SDK reads such a request as a notification and answers 202 with nothing, so
    the client would wait for ever; it is refused as over stdio, and others still pass."""
    headers = {"accept": "application/json, text/event-stream"}
    answers = [
        http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": bad, "method": "tools/list"}, headers=headers
        )
        for bad in (None, 1.5, {"a": 1}, [1], True)
    ]
    listed = http.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, headers=headers
    )
    notified = http.post(
        "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )

    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == -32600
    assert [answer.json()["id"] for answer in answers] == [None, 1.5, None, None, None]
    assert listed.status_code == 200 and listed.json()["id"] == 7
    assert {tool["name"] for tool in listed.json()["result"]["tools"]} >= {"remember", "recall"}
    assert notified.status_code == 202


def test_mcp_takes_only_post_as_a_stateless_server_has_no_stream_or_session_to_offer(
    http: httpx.Client,
) -> None:
    """A GET opened an event stream on which a stateless server never sends a message,
    kept open with pings for ever, and a DELETE had no session to end but was listed in
    ``Allow``: both are 405, naming POST, as JSON-RPC errors (a client then goes on
    without them, as MCP allows)."""
    accept = {"accept": "application/json, text/event-stream"}
    for method in ("GET", "DELETE", "PUT"):
        with http.stream(method, "/mcp", headers=accept, timeout=5) as answer:
            assert answer.status_code == 405, (method, answer.headers)
            assert answer.headers["allow"] == "POST", method
            answer.read()
        error = answer.json()
        assert (error["id"], error["error"]["code"]) == (None, -32600), method
    listed = http.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, headers=accept
    )
    assert listed.status_code == 200 and listed.json()["id"] == 7


def test_a_post_not_typed_as_json_is_refused_as_json_rpc_naming_its_request(
    http: httpx.Client,
) -> None:
    """MCP takes a POST only as ``application/json``; one typed otherwise, or not at all,
    (the SDK's media type is case-sensitive) is refused as every other message MCP cannot
    take, with its id, so that its client can match the answer (was the SDK's plain-text
    400 "Invalid Content-Type header", or a 415 with a null id)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    accept = "application/json, text/event-stream"
    answers = [
        http.post("/mcp", content=body, headers={"accept": accept, "content-type": typed})
        for typed in ("text/plain", "", "application/x-www-form-urlencoded", "Application/JSON")
    ]
    typed_json = http.post(
        "/mcp",
        content=body,
        headers={"accept": accept, "content-type": "application/json; charset=utf-8"},
    )

    for answer in answers:
        assert answer.status_code == 415, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["id"] == 7, answer.text
        assert answer.json()["error"]["code"] == -32600
        assert "Content-Type: application/json" in answer.json()["error"]["data"]
    assert typed_json.status_code == 200 and typed_json.json()["id"] == 7


@pytest.mark.parametrize("path", ["/mcp", "/v1/users/hung-up/messages"])
def test_a_client_hanging_up_mid_body_is_logged_as_closed_not_as_an_error(
    server: ServerProcess, path: str
) -> None:
    """On MCP as on the HTTP API's routes: no traceback, and the access line says the
    client closed the request (499), not that the server failed (500) or that the body
    was bad (422: no answer was sent)."""
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    request_id = f"hung-up-mid-body-{path.count('/')}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {server.url.removeprefix('http://')}\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as hanging_up:
        hanging_up.sendall(head.encode() + body[:10])
        time.sleep(0.3)

    def logged() -> list[dict[str, Any]]:
        return [r for r in server.records() if r.get("request_id") == request_id]

    (line,) = wait_until(logged, what="the access log line")
    assert (line["path"], line["status"]) == (path, 499)
    time.sleep(0.3)
    assert not [r for r in server.records() if r.get("level") == "error"]


async def test_explain_memory_names_who_said_each_source(make_memory: Any, db_url: str) -> None:
    memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_message("room", "user", "I live in Oslo.", name="Maria")
    await memory.flush("room")
    (entry,) = await memory.knowledge("room")
    audit = Audit(db_url=db_url)
    try:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client  # the in-process client answers as a session does
            explained = await call(
                session, "explain_memory", user_id="room", entry_id=entry.entry_id
            )
    finally:
        audit.close()
    assert [(s["role"], s["name"]) for s in explained["sources"]] == [("user", "Maria")]


async def test_explain_memory_lists_the_messages_that_said_a_fact_again(
    make_memory: Any, db_url: str
) -> None:
    """As the CLI and the HTTP API: a later "As I said" is no source, yet is listed."""
    memory = await make_memory(extractor=OfflineExtractor())
    for said in ("I live in Oslo.", "As I said, I live in Oslo."):
        await memory.add_exchange("eve", said, "ok")
        await memory.flush("eve")
    (oslo,) = await memory.knowledge("eve")
    audit = Audit(db_url=db_url)
    try:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client
            explained = await call(session, "explain_memory", user_id="eve", entry_id=oslo.entry_id)
    finally:
        audit.close()
    assert [s["content"] for s in explained["sources"]] == ["I live in Oslo."]
    assert [s["content"] for s in explained["said_again_by"]] == ["As I said, I live in Oslo."]
    assert explained["said_again_count"] == 1


async def test_forget_user_erases_a_user_a_rebuild_has_not_refolded_yet(
    memory: Memory, db_url: str
) -> None:
    """As the HTTP API's DELETE: the log says whether the user exists, so a rebuild that
    dropped her rows (running, or stopped before its end) leaves her erasable."""
    await memory.add_exchange("ann", "My passport number is X1234567", "ok")
    with Audit(db_url=db_url) as audit:
        with audit.store.transaction() as connection:  # a rebuild's first step
            audit.store.lock_writers(connection)
            Projector(ProjectionTables()).begin_rebuild(connection)
        async with Client(build_mcp(memory, audit, allow_forget=True)) as client:
            session: Any = client  # the in-process client answers as a session does
            forgotten = await call(session, "forget_user", user_id="ann")
            again = await failure(session, "forget_user", user_id="ann")
        assert forgotten["erased_records"] >= 3 and audit.store.last_version("ann") == 0
    assert "not_found: no user 'ann'" in again


async def test_a_page_of_list_memories_reads_that_page_and_no_other_fact(
    make_memory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is read in the database (one fact past it, to tell whether another page
    follows), and the total comes from the user's summary: a user with many facts costs a
    page of them, not all of them, at every page."""
    memory = await make_memory(extractor=OfflineExtractor())
    said = ["I live in Oslo.", "I work at Acme.", "My dog is called Rex.", "I moved to Bergen."]
    for text in [*said, "I like chess.", "My sister is called Ana."]:
        await memory.add_exchange("ann", text, "Noted.")
        await memory.flush("ann")
    current = [e.entry_id for e in await memory.knowledge("ann")]
    read: list[int] = []
    knowledge = ProjectionReader.knowledge

    def counted(self: ProjectionReader, *args: Any, **kwargs: Any) -> Any:
        found = knowledge(self, *args, **kwargs)
        read.append(len(found))
        return found

    monkeypatch.setattr(ProjectionReader, "knowledge", counted)
    audit = Audit(db_url=db_url)
    try:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client  # the in-process client answers as a session does
            pages = [await call(session, "list_memories", user_id="ann", limit=2)]
            while (start := pages[-1]["next_offset"]) is not None:
                page = await call(session, "list_memories", user_id="ann", limit=2, offset=start)
                pages.append(page)
    finally:
        audit.close()

    assert [f["entry_id"] for page in pages for f in page["facts"]] == current
    assert {page["total"] for page in pages} == {len(current)}
    assert len(current) == 5 and len(pages) == 3
    assert read == [3, 3, 1], "each page read two facts and the one after them, no more"


async def test_remember_starts_no_extraction_on_a_memory_that_does_not_auto_process(
    memory: Memory, db_url: str, extractor: RecordingExtractor
) -> None:
    """As a write over the HTTP API: ``memvee serve --no-auto-process`` leaves extraction
    to process and flush, so turns remembered over MCP cost no API call (was a task each)."""
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client
            for n in range(3):
                stored = await call(session, "remember", user_id="ann", user_message=f"Cat {n}.")
                assert "task_id" not in stored
    await memory.wait_for_processing("ann")

    assert extractor.batches == []
    assert await memory.tasks("ann") == []
    summary = await memory.user("ann")
    assert summary is not None and summary.buffered_count == 3


async def test_remember_extracts_once_the_batch_threshold_is_reached_not_every_turn(
    make_memory: Any, db_url: str, extractor: RecordingExtractor
) -> None:
    """With auto-processing, turns are batched as the memory's ``batch_threshold`` says."""
    memory = await make_memory(config={"auto_process": True, "batch_threshold": 4})
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit, user="ann")) as client:
            session: Any = client
            await call(session, "remember", user_message="I live in Oslo.", assistant_message="Ok")
            await memory.wait_for_processing("ann")
            before_threshold = len(extractor.batches)
            await call(session, "remember", user_message="I have a dog.", assistant_message="Ok")
            await memory.wait_for_processing("ann")

    assert before_threshold == 0, "was a batch per remembered turn"
    assert [len(batch.messages) for batch in extractor.batches] == [4]


async def test_an_unknown_tool_argument_or_prompt_name_is_echoed_cut_short(
    memory: Memory, db_url: str
) -> None:
    """A tool, argument or prompt name the server does not know is repeated as every
    caller's id is, whole up to 60 characters, else its start and its length, not
    thousands of them."""
    long_name = "r" * 5_000
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit, user="ann")) as client:
            session: Any = client
            no_such_tool = await failure(session, long_name, user_message="hi")
            no_such_argument = await failure(
                session, "remember", user_message="hi", **{long_name: "x"}
            )
            with pytest.raises(MCPError) as no_such_prompt:
                await client.get_prompt(long_name, {"user_id": "ann"})

    cut = f"{long_name[:60]!r}... (5,000 characters)"
    assert no_such_tool.startswith(f"invalid_input: no tool {cut} (tools: remember,")
    assert no_such_argument.startswith(f"invalid_input: remember takes no argument {cut} (")
    assert no_such_prompt.value.message == f"Unknown prompt: {cut}"
    assert long_name not in no_such_tool + no_such_argument
    assert await memory.messages("ann") == []


async def test_a_tool_takes_exactly_the_arguments_its_schema_allows(
    memory: Memory, db_url: str
) -> None:
    """A misspelt argument is refused, not dropped (the reply would be lost without a
    word), and an integer is an integer, not ``true`` or ``"2"``: ``invalid_input``, as the
    HTTP API answers 422. Every input schema says so; a reply that reads as JSON is text."""
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit, user="ann")) as client:
            session: Any = client
            misspelt = await failure(
                session, "remember", user_message="My sister is Ann.", assistant_reply="Noted."
            )
            flag = await failure(session, "recall", question="Ann", max_results=True)
            text = await failure(session, "list_memories", limit="2")
            await call(session, "remember", user_message="List them.", assistant_message='["a"]')
            schemas = {t.name: t.input_schema for t in (await session.list_tools()).tools}

    assert misspelt.startswith("invalid_input: remember takes no argument 'assistant_reply'")
    assert flag.startswith("invalid_input: max_results:")
    assert text.startswith("invalid_input: limit:")
    assert [m.content for m in await memory.messages("ann")] == ["List them.", '["a"]']
    assert {name: s.get("additionalProperties") for name, s in schemas.items()} == dict.fromkeys(
        schemas, False
    )


async def test_every_text_argument_schema_states_the_length_the_tool_takes(
    make_memory: Any, db_url: str
) -> None:
    """A model sees the limits in the input schema (``maxLength``, the memory's own for a
    message) instead of meeting them as an error; one over them is still refused with
    the library's words."""
    memory = await make_memory(config={"max_content_chars": 1_000})
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client
            schemas = {t.name: t.input_schema for t in (await session.list_tools()).tools}
            too_long = await failure(session, "remember", user_id="ann", user_message="x" * 1_001)

    def longest(tool: str, argument: str) -> int | None:
        spelled = schemas[tool]["properties"][argument]
        texts = [s for s in [spelled, *spelled.get("anyOf", [])] if s.get("type") == "string"]
        assert len(texts) == 1, spelled
        length: int | None = texts[0].get("maxLength")
        return length

    assert {tool: longest(tool, "user_id") for tool in schemas} == dict.fromkeys(schemas, 256)
    assert longest("remember", "user_message") == 1_000
    assert longest("remember", "assistant_message") == 1_000
    assert longest("recall", "question") == 100_000
    assert longest("explain_memory", "entry_id") is None
    assert too_long.startswith("invalid_input: user message content is 1001 characters long")


async def test_an_integer_argument_may_be_written_as_a_number_with_no_fraction(
    make_memory: Any, db_url: str
) -> None:
    """JSON Schema's ``integer`` is any number with no fraction, so ``2.0`` is taken as
    ``2``; ``2.5`` is no integer: ``invalid_input``."""
    memory = await make_memory(extractor=OfflineExtractor())
    for text in ("I live in Oslo.", "I work at Acme.", "My dog is called Rex."):
        await memory.add_exchange("ann", text, "Noted.")
    await memory.flush("ann")
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit, user="ann")) as client:
            session: Any = client
            page = await call(session, "list_memories", limit=1.0, offset=1.0)
            recalled = await call(session, "recall", question="Oslo", max_results=1.0)
            fraction = await failure(session, "recall", question="Oslo", max_results=1.5)

    current = [e.entry_id for e in await memory.knowledge("ann")]
    assert [f["entry_id"] for f in page["facts"]] == current[1:2]
    assert page["next_offset"] == 2
    assert len(recalled["entry_ids"]) == 1
    assert fraction.startswith("invalid_input: max_results:")


async def test_an_mcp_post_is_parsed_once_to_screen_it_and_tell_whether_it_only_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body of a call, up to a megabyte of a remembered message, is parsed on the
    event loop once: the message the refusal check read also tells whether the call only
    reads (answered "try again" when a shutdown cuts it short) or changes something."""
    parses: list[bytes] = []
    json_objects = request_ids.json_objects
    adapter = request_ids.jsonrpc_message_adapter

    class CountingAdapter:
        def validate_json(self, body: bytes, **options: Any) -> Any:
            parses.append(body)
            return adapter.validate_json(body, **options)

    def counted(body: bytes | str) -> list[dict[str, Any]]:
        parses.append(body if isinstance(body, bytes) else body.encode())
        return json_objects(body)

    monkeypatch.setattr(request_ids, "jsonrpc_message_adapter", CountingAdapter())
    monkeypatch.setattr(request_ids, "json_objects", counted)
    passed: list[tuple[bytes, bool]] = []

    async def mcp(scope: Any, receive: Any, send: Any) -> None:
        passed.append(((await receive())["body"], scope[READS_ONLY_KEY].known))

    screening = RefuseInvalidMessages(mcp, "/mcp", READ_ONLY_TOOLS)
    sent = []
    for tool in ("recall", "remember"):
        arguments = {"user_id": "ann", "user_message": "I live in Oslo. " * 1000}
        call = {"name": tool, "arguments": arguments}
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        sent.append(body.encode())

        async def receive(body: bytes = sent[-1]) -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [(b"content-type", b"application/json")],
            READS_ONLY_KEY: ReadsOnly(),
        }
        await screening(scope, receive, None)

    assert passed == [(sent[0], True), (sent[1], False)], "recall only reads, remember writes"
    assert parses == sent, "each body parsed once"


async def test_a_call_still_running_when_the_drain_ends_answers_whether_it_was_done(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a stopping stdio server's drain timeout is over, the calls still running are
    answered at once, as the HTTP drain answers: a write may have been carried out
    (``outcome_unknown``: check before sending it again), a read is simply sent again
    (``not_ready``), and a call that begins after the cut did nothing."""
    running: list[str] = []

    async def hanging(user_id: str, *args: Any, **kwargs: Any) -> Any:
        running.append(user_id)
        await asyncio.Event().wait()

    monkeypatch.setattr(memory, "add_message", hanging)
    monkeypatch.setattr(memory, "retrieve", hanging)
    cutoff = Cutoff()

    async def cut_once_both_run() -> None:
        while len(running) < 2:
            await asyncio.sleep(0)
        cutoff.cut()

    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit, user="ann", cutoff=cutoff)) as client:
            session: Any = client
            write, read, _ = await asyncio.gather(
                failure(session, "remember", user_message="I live in Oslo."),
                failure(session, "recall", question="Oslo"),
                cut_once_both_run(),
            )
            late = await failure(session, "list_memories")

    assert "outcome_unknown: the server shut down before it could answer" in write
    assert "not_ready: the server is shutting down; try again" in read
    assert "not_ready: the server is shutting down; nothing was done" in late


async def test_a_prompt_the_server_does_not_offer_is_invalid_params_not_a_logged_crash(
    memory: Memory, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Asking for a prompt the server does not list is the client's mistake, answered as
    asking for an unknown resource is (the SDK answered error code 0, and logged a
    traceback at error level for each)."""
    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit)) as client:
            listed = await client.list_prompts()
            with pytest.raises(MCPError) as refused:
                await client.get_prompt("summarize", {"user_id": "ann"})

    assert listed.prompts == []
    assert refused.value.code == INVALID_PARAMS
    assert "summarize" in refused.value.message
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _raised(record: logging.LogRecord) -> str:
    """The name of the exception ``record`` carries: its live one's, or that its cleaned
    traceback ends with (a filter drops the live one when its text shows a secret)."""
    if record.exc_info and record.exc_info[0] is not None:
        return record.exc_info[0].__name__
    return (record.exc_text or "").splitlines()[-1].partition(":")[0]


async def test_every_tool_error_begins_with_its_code_word(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A program can act on a tool error's first word, whether the arguments were refused,
    the memory refused the call, the tool crashed, the SDK did converting what it returned
    or there is no such tool (the SDK began these 'Error executing tool remember' and
    'Unknown tool: rememberr'). A crash's own words may hold anything, so they go to the
    log, and the caller gets the request id."""

    async def crash(*args: object, **kwargs: object) -> Message:
        raise RuntimeError("postgresql://memvee:s3cret@db/memvee is gone")

    async def unsendable(*args: object, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(message_id="\ud800")  # the SDK cannot encode what it returns

    with Audit(db_url=db_url) as audit:
        async with Client(build_mcp(memory, audit)) as client:
            session: Any = client
            mistyped = await failure(session, "list_memories", user_id="ann", limit="2")
            refused = await failure(session, "remember", user_id="ann", user_message="a\x00b")
            unknown = await failure(session, "explain_memory", user_id="nobody", entry_id="e1")
            no_such_tool = await failure(session, "rememberr", user_id="ann", user_message="hi")
            monkeypatch.setattr(memory, "add_message", crash)
            crashed = await failure(session, "remember", user_id="ann", user_message="hi")
            monkeypatch.setattr(memory, "add_message", unsendable)
            unconverted = await failure(session, "remember", user_id="ann", user_message="hi")

    assert mistyped.startswith("invalid_input: limit")
    assert refused.startswith("invalid_input: user message content contains a NUL")
    assert unknown.startswith("not_found: ")
    assert no_such_tool == (
        "invalid_input: no tool 'rememberr' (tools: remember, recall, list_memories, "
        "explain_memory)"
    )
    assert crashed.startswith("internal_error: the tool remember failed unexpectedly")
    assert "s3cret" not in crashed
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The crash's traceback shows a password: it is logged cleaned, without the live one.
    assert [_raised(r) for r in logged if r.exc_info or r.exc_text] == [
        "RuntimeError",
        PydanticSerializationError.__name__,
    ]
    assert "s3cret" not in caplog.text
    assert f"(request {logged[0].__dict__['rpc_id']})" in crashed
    assert unconverted.startswith("internal_error: the tool remember failed unexpectedly")
    assert f"(request {logged[1].__dict__['rpc_id']})" in unconverted
