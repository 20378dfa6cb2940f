"""Clients of the MCP face for tests, from the official ``mcp`` SDK: a session over stdio
with a spawned ``memvee mcp``, or over streamable HTTP with a running ``memvee serve``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.support.server_process import MEMVEE, ROOT, server_env


@asynccontextmanager
async def stdio_session(tmp_path: Path, *args: str) -> AsyncIterator[ClientSession]:
    """A client session with ``memvee mcp ARGS`` on a fresh database, spawned over stdio."""
    params = StdioServerParameters(
        command=str(MEMVEE),
        args=["mcp", "--db", str(tmp_path / "memvee.db"), "--lexical", *args],
        env=server_env(),
        cwd=ROOT,
    )
    with (tmp_path / "mcp-stderr.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(
    url: str, token: str | None = None, path: str = "/mcp"
) -> AsyncIterator[ClientSession]:
    """A client session with the MCP endpoint of a running server, at ``path``."""
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as client,
        streamable_http_client(f"{url}{path}", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that should succeed; its structured answer."""
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    return structured


async def failure(session: ClientSession, tool: str, **arguments: Any) -> str:
    """Call a tool that should fail; the error text the model would read."""
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert result.is_error
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def facts_of(session: ClientSession, count: int, **user: str) -> list[dict[str, Any]]:
    """Poll list_memories until the background extraction has produced ``count`` facts."""
    async with asyncio.timeout(30):
        while True:
            facts: list[dict[str, Any]] = (await call(session, "list_memories", **user))["facts"]
            if len(facts) >= count:
                return facts
            await asyncio.sleep(0.05)
