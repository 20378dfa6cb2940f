"""Operating the server: SIGTERM drains (the in-flight request finishes, then the memory
closes), SIGKILL mid-load loses no acknowledged write, two server processes share one
PostgreSQL database through their HTTP APIs, and a server never opens a SQLite file that
an application holds alone."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import EventStore
from memvee import Memory, MemoryConfig, ProcessStatus
from memvee._server.app import create_app
from memvee._server.errors import AnsweredOnShutdown
from memvee._server.mcp_tools import READ_ONLY_TOOLS
from memvee._server.request_ids import RefuseInvalidMessages
from memvee.audit import Audit
from memvee.extractors import OfflineExtractor
from tests.support.backends import postgres_url
from tests.support.extractors import RecordingExtractor
from tests.support.messages_api_server import MessagesAPIServer, RecordedRequest, ScriptedResponse
from tests.support.messages_api_server import default_answer as claude_answer
from tests.support.server_process import MEMVEE, ServerProcess, server_env, wait_until


def exchange(http: httpx.Client, user: str, said: str) -> list[str]:
    answer = http.post(
        f"/v1/users/{user}/exchanges", json={"user_message": said, "assistant_message": "ok"}
    )
    answer.raise_for_status()
    return [m["message_id"] for m in answer.json()["messages"]]


def messages(http: httpx.Client, user: str) -> list[dict[str, Any]]:
    answer = http.get(f"/v1/users/{user}/messages")
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["messages"]
    return found


def test_sigterm_lets_the_request_in_flight_finish_then_closes_the_memory(
    tmp_path: Path,
) -> None:
    gate = threading.Event()

    def held(request: RecordedRequest) -> ScriptedResponse:
        gate.wait(30)  # the extraction call stays in flight until the test opens the gate
        return claude_answer(request)

    db = tmp_path / "memvee.db"
    args = ["--db", str(db), "--no-auto-process", "--lexical"]
    with MessagesAPIServer(held) as claude:
        env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": claude.base_url}
        server = ServerProcess(tmp_path / "server.log", args, env).start()
        with (
            server,
            httpx.Client(base_url=server.url, timeout=60) as http,
            ThreadPoolExecutor(1) as pool,
        ):
            exchange(http, "alice", "I live in Lisbon.")
            flushing = pool.submit(http.post, "/v1/users/alice/flush")
            wait_until(lambda: claude.requests, what="the extraction call")

            server.signal(signal.SIGTERM)
            wait_until(
                lambda: any(r.get("event") == "draining" for r in server.records()),
                what="the drain",
            )
            gate.set()
            flushed = flushing.result(timeout=60)
            http.close()  # a pooled connection left idle holds the drain to its keep-alive
            assert server.process is not None
            exit_code = server.process.wait(60)

    assert flushed.status_code == 200
    assert flushed.json() == {"knowledge_count": 1}
    assert exit_code == 0
    events = [r.get("event") for r in server.records()]
    assert events.index("draining") < events.index("closed")

    async def knowledge() -> list[str]:
        async with Memory(str(db), extractor=OfflineExtractor(), embedder=False) as memory:
            return [e.text for e in await memory.knowledge("alice")]

    assert asyncio.run(knowledge()) == ["User said: I live in Lisbon."]


def test_a_client_still_sending_its_body_when_the_drain_ends_gets_a_503_not_a_500(
    tmp_path: Path,
) -> None:
    args = ["--db", str(tmp_path / "memvee.db"), "--lexical", "--drain-timeout", "1"]
    server = ServerProcess(tmp_path / "server.log", args).start()
    with server:
        uploads = []
        for path in ("/v1/users/hal/messages", "/mcp"):
            upload = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            upload.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                "\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100"
                '\r\n\r\n{"role": "us'.encode()
            )
            uploads.append(upload)
        # Answered only once the server read what came before it on the other connections.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        server.signal(signal.SIGTERM)
        answers = [_all_of(upload) for upload in uploads]
        assert server.process is not None
        exit_code = server.process.wait(60)

    assert exit_code == 0
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"] == "not_ready"
    assert "Traceback" not in server.log(), "was: uvicorn's 500 and a traceback per request"


def test_a_request_sent_on_an_idle_kept_alive_connection_during_the_drain_gets_a_503(
    tmp_path: Path,
) -> None:
    """uvicorn closed such a connection when its shutdown began, and a request its client
    sent just then met a reset, the client unable to tell whether it was stored. It stays
    open while the drain runs: the request is refused, and every answer closes its
    connection."""
    args = ["--db", str(tmp_path / "memvee.db"), "--lexical"]
    server = ServerProcess(tmp_path / "server.log", args).start()
    with server:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _answer_on(idle).startswith(b"HTTP/1.1 200")  # kept alive, idle
        upload = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        body = json.dumps({"role": "user", "content": "I live in Oslo."}).encode()
        head = (
            "POST /v1/users/kim/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        upload.sendall(head.encode() + body[:5])  # a request in flight holds the drain
        # Answered only once the server read what came before it on the other connections.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        server.signal(signal.SIGTERM)
        wait_until(lambda: _refused(server.port), what="the listener closed by the drain")
        late = json.dumps({"role": "user", "content": "I moved to Rome."}).encode()
        idle.sendall(
            b"POST /v1/users/kim/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(late), late)
        )
        refused = _all_of(idle)
        upload.sendall(body[5:])
        finished = _all_of(upload)
        assert server.process is not None
        exit_code = server.process.wait(60)

    refused_head, _, refused_body = refused.partition(b"\r\n\r\n")
    assert refused_head.startswith(b"HTTP/1.1 503"), f"was closed unanswered: {refused!r}"
    assert b"connection: close" in refused_head.lower()
    assert json.loads(refused_body)["error"] == "not_ready"
    finished_head = finished.partition(b"\r\n\r\n")[0]
    assert finished_head.startswith(b"HTTP/1.1 201")
    assert b"connection: close" in finished_head.lower()
    assert exit_code == 0

    async def stored() -> list[str]:
        async with Memory(str(tmp_path / "memvee.db"), embedder=False) as memory:
            return [m.content for m in await memory.messages("kim")]

    assert asyncio.run(stored()) == ["I live in Oslo."]


def _answer_on(connection: socket.socket) -> bytes:
    """One whole answer read from a kept-alive ``connection``, its body sized by
    ``Content-Length``."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    sizes = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    size = int(sizes[0].partition(b":")[2])
    while len(body) < size:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


def _refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused (the listener is closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=30).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize(
    ("method", "body_done", "reads_body", "error"),
    [
        ("POST", True, True, "outcome_unknown"),
        ("DELETE", True, True, "outcome_unknown"),
        ("POST", False, True, "not_ready"),
        ("GET", True, True, "not_ready"),
        ("DELETE", True, False, "outcome_unknown"),
        ("POST", True, False, "outcome_unknown"),
        ("DELETE", False, False, "outcome_unknown"),
    ],
)
async def test_a_change_cut_short_by_the_drain_says_its_outcome_is_unknown_not_try_again(
    method: str, body_done: bool, reads_body: bool, error: str
) -> None:
    """A write handed to the Memory goes on to its commit: "try again" would store it twice.
    Only a read, or a request cut while waiting for the rest of its body, is safe to send
    again; a route that takes no body (``DELETE /v1/users/{user}``, ``POST .../flush``)
    acts without ever reading it, so its cut is a change that may have happened."""
    acting = asyncio.Event()
    client_sending = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while reads_body and (await receive()).get("more_body", False):
            pass
        acting.set()
        await asyncio.Event().wait()  # the write, until the drain cancels it

    chunks = [{"type": "http.request", "body": b"{}", "more_body": not body_done}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        client_sending.set()
        await asyncio.Event().wait()  # the client still sending
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/v1/users/dup", "headers": []}
    request = asyncio.create_task(AnsweredOnShutdown(app)(scope, receive, send))
    reached = asyncio.ensure_future(acting.wait())
    waiting = asyncio.ensure_future(client_sending.wait())
    await asyncio.wait([reached, waiting], return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    waiting.cancel()
    request.cancel()
    await request
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"] == error


def _all_of(upload: socket.socket) -> bytes:
    """Everything the server sent on ``upload`` until it closed the connection."""
    received = b""
    with upload, contextlib.suppress(ConnectionResetError):  # a reset after the answer
        while chunk := upload.recv(65536):
            received += chunk
    return received


def test_sigkill_mid_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "memvee.db"
    args = ["--db", str(db), "--lexical"]
    acked: dict[str, list[str]] = {f"user-{i}": [] for i in range(8)}
    lock = threading.Lock()
    stop = threading.Event()

    def load(url: str, user: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for n in itertools.count():
                if stop.is_set():
                    return
                try:
                    ids = exchange(http, user, f"I live in city number {n}.")
                except (httpx.TransportError, httpx.HTTPStatusError):
                    return  # the server is gone
                with lock:
                    acked[user].extend(ids)

    with (
        ServerProcess(tmp_path / "server.log", args) as server,
        ThreadPoolExecutor(len(acked)) as pool,
    ):
        try:
            for user in acked:
                pool.submit(load, server.url, user)
            wait_until(lambda: sum(map(len, acked.values())) >= 200, what="200 acked messages")
            server.kill()
        finally:
            stop.set()

    with (
        ServerProcess(tmp_path / "restarted.log", args) as restarted,
        httpx.Client(base_url=restarted.url, timeout=30) as http,
    ):
        for user, ids in acked.items():
            if not ids:
                continue  # its client had no answer yet when the server died
            stored_ids = [m["message_id"] for m in messages(http, user)]
            assert len(stored_ids) == len(set(stored_ids))
            assert set(ids) <= set(stored_ids), user


def test_two_servers_share_one_postgres_database(tmp_path: Path) -> None:
    url = postgres_url()
    EventStore(url).close()  # create the schema once, before the servers race to
    args = ["--db-url", url, "--no-auto-process", "--lexical"]
    users = [f"user-{i}" for i in range(6)]
    with (
        ServerProcess(tmp_path / "a.log", args) as a,
        ServerProcess(tmp_path / "b.log", args) as b,
        httpx.Client(base_url=a.url, timeout=60) as via_a,
        httpx.Client(base_url=b.url, timeout=60) as via_b,
    ):
        acked: dict[str, list[str]] = {user: [] for user in users}

        def write(user: str) -> None:
            for n in range(6):
                http = via_a if n % 2 == 0 else via_b
                acked[user] += exchange(http, user, f"I live in city number {n}.")

        with ThreadPoolExecutor(len(users)) as pool:
            list(pool.map(write, users))

        for user in users[:3]:
            assert via_a.post(f"/v1/users/{user}/flush").status_code == 200
        for user in users[3:]:
            assert via_b.post(f"/v1/users/{user}/flush").status_code == 200

        for user in users:
            seen_by_a = messages(via_a, user)
            seen_by_b = messages(via_b, user)
            assert [m["message_id"] for m in seen_by_a] == [m["message_id"] for m in seen_by_b]
            assert sorted(m["message_id"] for m in seen_by_a) == sorted(acked[user])
            summary = via_b.get(f"/v1/users/{user}").json()
            assert summary["buffered_count"] == 0
            knows_a = via_a.get(f"/v1/users/{user}/knowledge").json()["entries"]
            knows_b = via_b.get(f"/v1/users/{user}/knowledge").json()["entries"]
            assert knows_a == knows_b
            assert len(knows_a) > 0

        started = via_b.post(f"/v1/users/{users[0]}/process").json()
        polled = wait_until(
            lambda: via_b.get(f"/v1/users/{users[0]}/tasks/{started['task_id']}").json()["done"],
            what="a task started through the other server",
        )
        assert polled


@pytest.fixture
async def two_servers(
    make_memory: Any, db_url: str
) -> AsyncIterator[tuple[Memory, httpx.AsyncClient, Memory]]:
    """Two servers on one database (behind one load balancer, say), in this process: the
    first one's Memory and a client of its HTTP API, and the second one's Memory, which
    its task route asks (``get_task``)."""
    first, second = [await make_memory(config={"leases": True}) for _ in range(2)]
    app = create_app(first, Audit(db_url=db_url), max_body_bytes=1 << 20)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield first, client, second


async def test_a_task_location_answered_by_one_server_is_found_at_once_by_another(
    two_servers: tuple[Memory, httpx.AsyncClient, Memory], extractor: RecordingExtractor
) -> None:
    _, first, second = two_servers
    extractor.gate.clear()
    said = {"user_message": "I live in Oslo", "assistant_message": "ok"}
    assert (await first.post("/v1/users/ann/exchanges", json=said)).status_code == 201

    started = await first.post("/v1/users/ann/process")

    assert started.status_code == 202
    found = await second.get_task("ann", _task_of(started.headers["location"]))
    assert found.status in (ProcessStatus.PENDING, ProcessStatus.RUNNING)
    extractor.gate.set()
    assert await found.wait() == 1


async def test_a_task_with_nothing_to_process_is_found_completed_by_another_server(
    two_servers: tuple[Memory, httpx.AsyncClient, Memory],
) -> None:
    _, first, second = two_servers
    said = {"user_message": "I live in Oslo", "assistant_message": "ok"}
    assert (await first.post("/v1/users/ann/exchanges", json=said)).status_code == 201
    assert (await first.post("/v1/users/ann/flush")).status_code == 200

    started = await first.post("/v1/users/ann/process")

    assert (started.status_code, started.json()["status"]) == (202, "COMPLETED")
    found = await second.get_task("ann", _task_of(started.headers["location"]))
    assert (found.status, found.knowledge_count) == (ProcessStatus.COMPLETED, 0)


def _task_of(location: str) -> str:
    """The task id a ``Location`` names."""
    path = httpx.URL(location).path
    assert path.startswith("/v1/users/ann/tasks/")
    return path.rsplit("/", 1)[1]


async def test_a_server_refuses_a_sqlite_file_an_application_holds_alone(tmp_path: Path) -> None:
    """The application's Memory has no leases, so it takes every task in the file as its
    own: a server beside it would close them as left by a crash. It is refused at open."""
    db = tmp_path / "app.db"
    async with Memory(config=MemoryConfig(db_path=str(db)), embedder=False) as app:
        await app.add_exchange("ann", "I live in Oslo.", "ok")
        done = await asyncio.to_thread(
            subprocess.run,
            [str(MEMVEE), "serve", "--db", str(db), "--port", "0", "--lexical"],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(),
        )
        assert len(await app.messages("ann")) == 2

    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the memory: the SQLite file ")
    assert "open in a Memory without leases" in last
    assert "Traceback" not in done.stderr


async def test_a_retrieve_cut_short_by_the_drain_says_try_again(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrieve is a read sent as POST: cut short, nothing was changed, so it is
    answered ``not_ready`` (try again) as a GET would be, not ``outcome_unknown``."""
    retrieving = asyncio.Event()

    async def retrieve(*args: Any, **kwargs: Any) -> Any:
        retrieving.set()
        await asyncio.Event().wait()  # the ranking, until the drain cancels it

    monkeypatch.setattr(memory, "retrieve", retrieve)
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            request = asyncio.create_task(http.post("/v1/users/ann/retrieve", json={"query": "x"}))
            await retrieving.wait()
            request.cancel()  # as the server's shutdown cancels it
            answer = await request

    assert (answer.status_code, answer.json()["error"]) == (503, "not_ready")


@pytest.mark.parametrize(
    ("calls", "error"),
    [
        ({"method": "tools/call", "params": {"name": "recall", "arguments": {}}}, "not_ready"),
        ({"method": "tools/list"}, "not_ready"),
        ({"method": "tools/call", "params": {"name": "remember"}}, "outcome_unknown"),
    ],
)
async def test_an_mcp_post_cut_short_by_the_drain_is_a_read_when_it_calls_only_reading_tools(
    calls: dict[str, Any], error: str
) -> None:
    """Over streamable HTTP every MCP message is a POST: one that calls no tool but those
    that only read (recall, list_memories, explain_memory) is answered "try again"."""
    acting = asyncio.Event()

    async def mcp(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        acting.set()
        await asyncio.Event().wait()  # the tool, until the drain cancels it

    app = AnsweredOnShutdown(RefuseInvalidMessages(mcp, "/mcp", READ_ONLY_TOOLS))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        message = {"jsonrpc": "2.0", "id": 1, **calls}
        request = asyncio.create_task(http.post("http://127.0.0.1/mcp", json=message))
        await acting.wait()
        request.cancel()
        answer = await request

    assert (answer.status_code, answer.json()["error"]) == (503, error)
