"""The loopback guard: on any loopback address the server listens on, a request for
another host (DNS rebinding) or from another site is refused before any route runs."""

from __future__ import annotations

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from memvee import Memory
from memvee._server.app import create_app
from memvee._server.host_guard import LoopbackOnly
from memvee.audit import Audit
from tests.support.asgi_lifespan import running_lifespan


async def _route(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("answered")(scope, receive, send)


async def _ask(listening: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=LoopbackOnly(_route, listening))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        return await client.post("/v1/users/u/flush", headers=headers)


@pytest.mark.parametrize(
    ("listening", "own_host"),
    [
        ("127.0.0.1", "127.0.0.1:8000"),
        ("127.0.0.2", "127.0.0.2:8000"),
        ("127.8.9.10", "127.8.9.10"),
        ("::1", "[::1]:8000"),
        ("0:0:0:0:0:0:0:1", "[0:0:0:0:0:0:0:1]:8000"),
        ("localhost", "localhost:8000"),
    ],
)
async def test_every_loopback_address_is_guarded_and_answers_its_own_name(
    listening: str, own_host: str
) -> None:
    rebound = await _ask(listening, {"Host": "attacker.example:8000"})
    assert rebound.status_code == 421 and rebound.json()["error"] == "misdirected_request"
    cross_site = await _ask(listening, {"Host": own_host, "Origin": "http://attacker.example"})
    assert cross_site.status_code == 403 and cross_site.json()["error"] == "forbidden_origin"
    own = await _ask(listening, {"Host": own_host, "Origin": f"http://{own_host}"})
    assert (own.status_code, own.text) == (200, "answered")


async def test_a_server_listening_beyond_loopback_is_left_to_its_tokens() -> None:
    answer = await _ask("0.0.0.0", {"Host": "memory.example.com"})
    assert (answer.status_code, answer.text) == (200, "answered")


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("LOCALHOST:8000", "http://LocalHost:8000"),
        ("localhost.:8000", "http://localhost.:8000"),
        ("Localhost.", "HTTP://LOCALHOST."),
    ],
)
async def test_a_loopback_name_in_any_case_or_with_its_final_dot_is_answered(
    host: str, origin: str
) -> None:
    own = await _ask("127.0.0.1", {"Host": host, "Origin": origin})
    assert (own.status_code, own.text) == (200, "answered")


@pytest.mark.parametrize("host", ["ATTACKER.example:8000", "localhost.attacker.example.", "."])
async def test_folding_the_case_and_final_dot_lets_no_other_host_in(host: str) -> None:
    rebound = await _ask("127.0.0.1", {"Host": host})
    assert rebound.status_code == 421


async def test_mcp_answers_every_host_the_rest_of_the_server_answers(
    memory: Memory, db_url: str
) -> None:
    """A server on port 80 is sent ``Host: localhost`` with no port: the MCP SDK's own
    check refused it with a bare-text 421 while the HTTP API answered it."""
    listed = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"accept": "application/json, text/event-stream"}
    hosts = ["127.0.0.1", "localhost", "LocalHost.", "[::1]", "localhost:8000", "attacker.example"]
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20, host="127.0.0.1")
        transport = httpx.ASGITransport(app=app)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
        ):
            answers = {
                host: await client.post("/mcp", json=listed, headers={**accept, "host": host})
                for host in hosts
            }

    rebound = answers.pop("attacker.example")
    assert {host: a.status_code for host, a in answers.items()} == dict.fromkeys(answers, 200)
    assert all(a.json()["result"]["tools"] for a in answers.values())
    assert rebound.status_code == 421
    assert set(rebound.json()) == {"error", "message", "request_id"}
