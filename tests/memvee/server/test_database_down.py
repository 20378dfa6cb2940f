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
from memvee._server.errors import STORAGE_UNAVAILABLE
from memvee._server.mcp_tools import _with_tool_errors
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
    assert any(OUTAGE_ERROR in r.getMessage() and address in r.getMessage() for r in logged)
    assert all(getattr(r, "request_id", None) == body["request_id"] for r in logged)

    outage.down.clear()
    assert (await client.post("/v1/users/ann/exchanges", json=said)).status_code == 201


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
    assert any(address in r.getMessage() for r in caplog.records)


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
