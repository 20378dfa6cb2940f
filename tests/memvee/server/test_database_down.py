"""While the database fails, callers are told so in words that name nothing of it (its
address and driver stay in the server's log), with a hint to try again; the HTTP API and
the MCP tools alike."""

from __future__ import annotations

import logging
import sqlite3

import httpx
import pytest
import sqlalchemy.exc
from mcp.server.mcpserver.exceptions import ToolError

from actors.user_actor import UserActor
from memvee import Memory, StorageError
from memvee._retrieval import Retriever
from memvee._server.app import create_app
from memvee._server.errors import STORAGE_UNAVAILABLE
from memvee._server.mcp_tools import _with_tool_errors
from memvee.audit import Audit
from tests.support.asgi_lifespan import running_lifespan
from tests.support.store_faults import OUTAGE_ERROR, StoreOutage


@pytest.fixture
def outage(memory: Memory, monkeypatch: pytest.MonkeyPatch) -> StoreOutage:
    """The memory's database, down."""
    assert memory._engine is not None
    down = StoreOutage(memory._engine.store, monkeypatch)
    down.down.set()
    return down


async def test_the_http_api_answers_503_with_retry_after_and_the_log_keeps_the_detail(
    memory: Memory,
    outage: StoreOutage,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = {"user_message": "I live in Oslo", "assistant_message": "ok"}
    with caplog.at_level(logging.WARNING, logger="memvee.server"):
        answer = await client.post("/v1/users/ann/exchanges", json=said)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert (body["error"], body["message"]) == ("storage_unavailable", STORAGE_UNAVAILABLE)
    assert memory._engine is not None
    address = memory._engine.store.safe_url
    assert address not in answer.text
    logged = [r for r in caplog.records if r.name == "memvee.server"]
    # The log names the database for the operator (its user info masked by memvee's filter).
    where = address.rpartition("@")[2]
    assert any(OUTAGE_ERROR in r.getMessage() and where in r.getMessage() for r in logged)
    assert all(getattr(r, "request_id", None) == body["request_id"] for r in logged)

    outage.down.clear()
    assert (await client.post("/v1/users/ann/exchanges", json=said)).status_code == 201


async def test_a_process_request_the_database_refuses_is_a_503_not_a_location(
    memory: Memory, outage: StoreOutage, client: httpx.AsyncClient
) -> None:
    """A 202 would hand out a Location that no server could ever find."""
    outage.down.clear()
    await memory.add_exchange("ann", "I live in Oslo", "ok")
    outage.down.set()

    refused = await client.post("/v1/users/ann/process")

    assert (refused.status_code, refused.json()["error"]) == (503, "storage_unavailable")
    assert "location" not in refused.headers


async def test_a_tool_says_the_database_is_unavailable_without_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = "postgresql+psycopg://memvee@db.internal:5432/memvee"

    @_with_tool_errors
    async def remember() -> None:
        raise StorageError(f"could not store 2 events in {address}: connection refused")

    with (
        caplog.at_level(logging.WARNING, logger="memvee.server"),
        pytest.raises(ToolError) as refused,
    ):
        await remember()
    assert str(refused.value) == f"storage_unavailable: {STORAGE_UNAVAILABLE}"
    # The operator's log names the database; its user info is masked once any Memory
    # has put memvee's redacting filter on the server's logger.
    assert any("@db.internal:5432/memvee" in r.getMessage() for r in caplog.records)


async def test_a_tools_database_failure_is_logged_under_its_request_ids(
    memory: Memory, db_url: str, outage: StoreOutage, caplog: pytest.LogCaptureFixture
) -> None:
    """As every line of an HTTP request is: an operator finds the failure of the call."""
    call = {
        "jsonrpc": "2.0",
        "id": "rpc-7",
        "method": "tools/call",
        "params": {"name": "remember", "arguments": {"user_id": "ann", "user_message": "Hi"}},
    }
    headers = {"accept": "application/json, text/event-stream", "x-request-id": "http-7"}
    app = create_app(memory, Audit(db_url=db_url), max_body_bytes=1 << 20)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING, logger="memvee.server"):
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
        ):
            answer = await client.post("/mcp", json=call, headers=headers)
    assert answer.status_code == 200, answer.text
    (logged,) = [r for r in caplog.records if "tool remember" in r.getMessage()]
    assert (getattr(logged, "request_id", None), getattr(logged, "rpc_id", None)) == (
        "http-7",
        "rpc-7",
    )


_STATEMENT = "INSERT INTO mv_leases (log_id, owner) VALUES (?, ?)"


def _locked() -> sqlalchemy.exc.OperationalError:
    """What SQLAlchemy raises for a lock held past the busy timeout: the statement and its
    parameters ride along, and must reach no caller."""
    return sqlalchemy.exc.OperationalError(
        _STATEMENT, ("6dee89d9", "host:1:a"), sqlite3.OperationalError("database is locked")
    )


async def test_a_database_error_raised_in_an_actor_is_a_503_that_names_no_statement(
    memory: Memory, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise _locked()

    monkeypatch.setattr(UserActor, "_user_log", refuse)
    said = {"user_message": "I live in Oslo", "assistant_message": "ok"}
    answer = await client.post("/v1/users/ann/exchanges", json=said)
    assert answer.status_code == 503 and answer.json()["error"] == "storage_unavailable"
    with pytest.raises(StorageError, match="database is locked") as raised:
        await memory.add_exchange("ann", "I live in Oslo", "ok")
    assert "INSERT" not in str(raised.value) and "host:1:a" not in str(raised.value)


async def test_a_damaged_file_met_on_a_raw_cursor_is_a_503_and_a_tool_error(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def damaged(*args: object, **kwargs: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Retriever, "retrieve", damaged)
    answer = await client.post("/v1/users/ann/retrieve", json={"query": "Oslo"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["message"] == STORAGE_UNAVAILABLE

    @_with_tool_errors
    async def recall() -> None:
        raise _locked()

    with pytest.raises(ToolError) as refused:
        await recall()
    assert str(refused.value) == f"storage_unavailable: {STORAGE_UNAVAILABLE}"
