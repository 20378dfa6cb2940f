"""The socket ``memvee serve`` listens on, before uvicorn takes it."""

from __future__ import annotations

import asyncio
import socket

from memvee._server.commands import _listen


async def test_connections_it_accepts_send_small_answers_at_once() -> None:
    """Nagle's algorithm off (TCP_NODELAY): with it on, a kept-alive client's delayed
    acknowledgement held each answer's body back for 40 ms (44 ms a call with httpx)."""
    listening = _listen("127.0.0.1", 0)
    port = listening.getsockname()[1]
    nodelay: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = writer.get_extra_info("socket")
        nodelay.append(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            while not nodelay:
                await asyncio.sleep(0.01)
        writer.close()

    assert nodelay[0] != 0
