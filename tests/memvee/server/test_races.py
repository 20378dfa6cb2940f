"""Calls that race on one user: processing that the user's erasure cuts short is a
conflict the caller caused, not a failure upstream to try again; over HTTP and MCP."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from memvee import Memory
from memvee._server.mcp_tools import _with_tool_errors
from tests.support.extractors import RecordingExtractor

SAID = {"user_message": "I work at Acme and live in Paris", "assistant_message": "ok"}


async def test_a_flush_cut_short_by_forgetting_its_user_is_a_409_user_forgotten(
    extractor: RecordingExtractor, client: httpx.AsyncClient
) -> None:
    extractor.gate.clear()
    assert (await client.post("/v1/users/ann/exchanges", json=SAID)).status_code == 201
    processing = asyncio.create_task(client.post("/v1/users/ann/flush"))
    assert await asyncio.to_thread(extractor.started.wait, 10)

    assert (await client.delete("/v1/users/ann")).status_code == 200
    extractor.gate.set()
    answer = await processing

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "user_forgotten"
    assert "the user was forgotten" in answer.json()["message"]


async def test_a_tool_error_for_processing_cut_short_by_forgetting_says_user_forgotten(
    memory: Memory, extractor: RecordingExtractor
) -> None:
    @_with_tool_errors
    async def flush() -> int:
        return await memory.flush("ann")

    extractor.gate.clear()
    await memory.add_exchange("ann", SAID["user_message"], SAID["assistant_message"])
    flushing = asyncio.create_task(flush())
    assert await asyncio.to_thread(extractor.started.wait, 10)

    await memory.forget("ann")
    extractor.gate.set()
    with pytest.raises(ToolError, match=r"^user_forgotten: .*the user was forgotten$"):
        await flushing
