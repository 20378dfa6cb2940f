"""Running a server to its end: open the memory, serve, drain on SIGTERM, close.

The HTTP server is uvicorn on a socket the command bound; on SIGTERM (or Ctrl-C) it
stops accepting, lets in-flight requests finish within the drain timeout (refusing, with
a 503, the requests that arrive meanwhile on kept-alive connections), and then the
memory closes with its own grace period for running extraction. The stdio server stops
when its client closes stdin (once every request read is answered), closing the memory
the same way, or on a signal, which reads no more requests, answers those read (a call
still running after the drain timeout answers that its outcome is unknown) and then
interrupts running extraction (its messages stay buffered), as a client signals a stdio
server it wants gone now; a second signal ends the process at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import sys
from contextlib import nullcontext
from importlib.util import find_spec
from types import FrameType
from typing import TYPE_CHECKING

import anyio
import uvicorn

from events import MemveeError
from memvee._memory import Memory
from memvee._server.auth import TokenBook
from memvee._server.commands import die_of, host_and_port
from memvee._server.drain import Drain
from memvee._server.mcp_tools import Cutoff, build_mcp
from memvee._server.stdio_drain import DrainedStdio
from memvee.audit import Audit

if TYPE_CHECKING:
    from memvee._server.app import HttpParser
    from memvee._server.commands import StopSignals

__all__ = ["OpenFailedError", "serve_http", "serve_stdio"]

log = logging.getLogger("memvee.server")


class OpenFailedError(Exception):
    """The memory or its database could not be opened (a bad path or URL, most often)."""


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, saying in the log when a signal starts the drain, and keeping
    kept-alive connections open through the drain.

    uvicorn's own shutdown closes a connection with no request under way at once, and a
    request its client sent on it just then met a reset. Here the listener closes, every
    request that begins afterwards is answered 503 ``not_ready`` with ``Connection:
    close`` (:class:`RefusedWhileDraining`), every answer still to come closes its
    connection too, and a connection left idle closes when its client closes it or at
    uvicorn's keep-alive timeout, as it would without a drain. Only once every connection
    is closed, or the drain timeout has passed, does uvicorn's shutdown close what is left.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info(
            "draining: in-flight requests finish, then the memory closes",
            extra={"event": "draining", "signal": signal.Signals(sig).name},
        )
        super().handle_exit(sig, frame)

    def stop_once(self) -> None:
        """Stop as a SIGTERM would, unless stopping already (uvicorn re-raising its
        signal at the end is no second stop)."""
        if not self.should_exit:
            self.handle_exit(signal.SIGTERM, None)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain: refuse new requests and wait for every connection to close, then leave
        what the drain timeout cut short to uvicorn's shutdown, with the time left."""
        self.drain.start()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        timeout = self.config.timeout_graceful_shutdown
        deadline = math.inf if timeout is None else loop.time() + timeout
        connections = self.server_state.connections
        # uvicorn tells no one when a connection closes; its own wait polls too.
        while connections and not self.force_exit and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL)
        if timeout is not None:
            self.config.timeout_graceful_shutdown = max(0, int(deadline - loop.time()))
        await super().shutdown(sockets)


DRAIN_POLL = 0.01
"""Seconds between two looks at the open connections during the drain (uvicorn's own
wait looks every 0.1 s)."""


async def _open(memory: Memory, db: str, db_url: str | None) -> Audit:
    """Open the memory and an audit reader of the same database."""
    try:
        await memory.open()
        return await asyncio.to_thread(Audit, db, db_url)
    except (MemveeError, OSError) as error:
        await memory.close()
        raise OpenFailedError(f"cannot open the memory: {error}") from error


async def serve_http(
    listener: socket.socket,
    memory: Memory,
    db: str,
    db_url: str | None,
    *,
    tokens: TokenBook,
    max_body_bytes: int,
    allow_forget: bool,
    mcp_user: str | None,
    host: str,
    drain_timeout: int,
    stops: StopSignals,
) -> None:
    """Serve the HTTP API and MCP on ``listener`` until a signal, then drain and close;
    one that came during the start-up stops the server as soon as it is up."""
    from memvee._server.app import create_app  # FastAPI: only here, so memvee mcp loads none

    audit = await _open(memory, db, db_url)
    try:
        drain = Drain()
        http: HttpParser = "httptools" if find_spec("httptools") else "h11"  # C if installed
        app = create_app(
            memory,
            audit,
            drain=drain,
            tokens=tokens,
            max_body_bytes=max_body_bytes,
            allow_forget=allow_forget,
            mcp_user=mcp_user,
            host=host,
            http_parser=http,
        )
        config = uvicorn.Config(
            app,
            http=http,
            # No route serves a WebSocket: a handshake is the GET it also is, its Upgrade
            # ignored (RFC 9110, 7.8), answered by the app in JSON, not by the WebSocket
            # library's bare 403 or its text/plain 400 for a malformed one.
            ws="none",
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=drain_timeout,
        )
        bound_host, bound_port = listener.getsockname()[:2]
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info(
            "listening on %s",
            host_and_port(bound_host, bound_port),
            extra={
                "event": "listening",
                "host": bound_host,
                "port": bound_port,
                "loop": loop,
                "http": http,
            },
        )
        # uvicorn takes the signals while it serves, then gives them back to ``stops``
        # and re-raises the one that stopped it: only noted, so the memory closes below
        # and the process exits 0.
        server = _DrainingServer(config, drain)
        stops.then(server.stop_once)
        try:
            await server.serve(sockets=[listener])
        finally:
            stops.then(None)
    finally:
        await memory.close()
        await asyncio.to_thread(audit.close)
        log.info("memory closed", extra={"event": "closed"})


async def serve_stdio(
    memory: Memory,
    db: str,
    db_url: str | None,
    *,
    user: str | None,
    allow_forget: bool,
    drain_timeout: int,
    stops: StopSignals,
) -> None:
    """Serve MCP over stdin/stdout until the client closes stdin or a signal comes (during
    the start-up too), once every request read is answered; a call still running after
    ``drain_timeout`` seconds is answered at once (:class:`Cutoff`)."""
    audit = await _open(memory, db, db_url)
    stopping = False
    hurried: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    try:
        cutoff = Cutoff()
        cutoff.bind(loop)
        server = build_mcp(memory, audit, user=user, allow_forget=allow_forget, cutoff=cutoff)
        drained = None if sys.platform == "win32" else DrainedStdio(drain_timeout, cutoff.cut)
        with drained or nullcontext():
            running = asyncio.ensure_future(server.run_stdio_async())

            def stop(sent: signal.Signals | None = None) -> None:
                nonlocal stopping
                if stopping and sent is not None:  # a second signal: stop now
                    _die_of(loop, sent)
                stopping = True
                if drained is None:
                    running.cancel()
                else:  # the requests read are answered first, within the drain timeout
                    drained.stop_reading()
                if running.done():  # stdin closed first and the memory is closing: now
                    hurried.append(loop.create_task(memory.close(grace=0)))

            for sent in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sent, stop, sent)
            if stops.requested:  # during the start-up
                stop()
            try:
                await running
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise
            except BaseExceptionGroup as errors:
                # Stopped with requests in flight (a signal, or the client closing stdout),
                # the SDK's task group fails on the streams the stop closed under it: the
                # stop, not a failure.
                gone = drained is not None and drained.client_gone
                if not (stopping or gone) or errors.subgroup(_not_from_stopping) is not None:
                    raise
    finally:
        # A signal is the client's "stop now" (sent once its closing stdin was not enough):
        # running extraction is interrupted at once, its messages left buffered.
        await memory.close(grace=0 if stopping else None)
        await asyncio.gather(*hurried)
        await asyncio.to_thread(audit.close)
        log.info("memory closed", extra={"event": "closed"})


def _die_of(loop: asyncio.AbstractEventLoop, sent: signal.Signals) -> None:
    """End the process as ``sent`` does by default, as a second signal asks."""
    loop.remove_signal_handler(sent)
    die_of(sent)


def _not_from_stopping(error: BaseException) -> bool:
    """Whether ``error`` (a leaf of an exception group) is more than the SDK's streams
    failing because a stop closed them, or its tasks cancelled by it."""
    if isinstance(error, BaseExceptionGroup):
        return False  # judged by its leaves
    return not isinstance(
        error, anyio.BrokenResourceError | anyio.ClosedResourceError | asyncio.CancelledError
    )
