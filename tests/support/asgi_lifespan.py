"""Run an ASGI app's lifespan in a test, as a server would around its requests: the MCP
routes answer only while their session manager runs (started by the app's lifespan), and
httpx's in-process transport runs no lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp

__all__ = ["running_lifespan"]


@asynccontextmanager
async def running_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Start ``app``'s lifespan, yield while it runs, then shut it down."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events = {"startup": asyncio.Event(), "shutdown": asyncio.Event()}

    async def send(message: Any) -> None:
        kind = str(message["type"]).removeprefix("lifespan.")
        if kind.endswith(".failed"):
            raise RuntimeError(f"the app's lifespan failed: {message.get('message')}")
        events[kind.removesuffix(".complete")].set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    )  # type: ignore[arg-type]
    await asyncio.wait_for(events["startup"].wait(), 10)
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(events["shutdown"].wait(), 10)
        await task
