"""The loopback guard: on any loopback address the server listens on, a request for
another host (DNS rebinding) or from another site is refused before any route runs."""

from __future__ import annotations

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from memvee._server.host_guard import LoopbackOnly


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
