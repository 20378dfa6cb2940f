"""``memvee serve`` and ``memvee mcp``: the server's two commands, added to the CLI.

This module imports only typer and the command line's output at load time, so the CLI
starts (and says what to install) without the ``server`` extra; the server's libraries
load when a command runs.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Self

import typer

from events import (
    check_db_path,
    check_new_user_id,
    driver_url,
    refuse_foreign_database,
    refuse_foreign_sqlite,
    url_secrets,
)
from memvee._config import DEFAULT_DB, MemoryConfig
from memvee._console import terminated_while_loading
from memvee._output import print_error, stdout_closed

if TYPE_CHECKING:
    from memvee._memory import Memory

__all__ = ["MAX_BODY_BYTES", "StopSignals", "register_commands"]

MAX_BODY_BYTES = 3 * 1024 * 1024
"""3 MiB by default: room for an exchange of two 100,000-character messages however they
are sent, even as JSON's ``\\u`` escapes (12 bytes for a character outside the BMP, so
2.4 MB for the two) as ``json.dumps`` writes them by default."""

DEFAULT_BATCH_THRESHOLD = MemoryConfig().batch_threshold
"""The library's own default: a server extracts as a Memory made without options does."""

DbOption = Annotated[str, typer.Option("--db", help="SQLite file of the memory.")]
DbUrlOption = Annotated[
    str | None, typer.Option("--db-url", help="SQLAlchemy URL instead of --db.")
]
AllowForget = Annotated[
    bool, typer.Option("--allow-forget", help="Offer the MCP tool that erases a user.")
]
Lexical = Annotated[
    bool, typer.Option("--lexical", help="Rank by words only (no embedding model).")
]
BatchThreshold = Annotated[
    int,
    typer.Option(
        "--batch-threshold",
        min=1,
        help="Buffered messages of a user that start a background extraction.",
    ),
]


class LogLevelName(StrEnum):
    """The levels ``--log-level`` takes: a typo is a usage error, not a traceback."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogLevel = Annotated[
    LogLevelName,
    typer.Option("--log-level", case_sensitive=False, help="debug, info, warning or error."),
]


class StopSignals:
    """SIGTERM and SIGINT taken as "stop", from a server command's first line on: one that
    comes while the server starts up (imports, the open, the bind) is kept, not the
    default action that kills the process, and the server stops as soon as it is up."""

    def __init__(self) -> None:
        self.requested = False
        self._then: Callable[[], None] | None = None
        self._before: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Self:
        """Take both signals (in the main thread) until the server takes them, and the
        SIGTERM the console noted while the command line loaded."""
        for sent in (signal.SIGTERM, signal.SIGINT):
            self._before[sent] = signal.signal(sent, self._handle)
        self.requested = self.requested or terminated_while_loading()
        return self

    def __exit__(self, *exc: object) -> None:
        """Give the signals back to the handlers they had (the command has ended)."""
        for sent, before in self._before.items():
            signal.signal(sent, before)

    def then(self, act: Callable[[], None] | None) -> None:
        """Call ``act`` (safe to run in a signal handler) on a stop, now if one came;
        ``None``: only note the stops from now on."""
        self._then = act
        if self.requested and act is not None:
            act()

    def _handle(self, signum: int, frame: object) -> None:
        """Stop once up; a second signal before then (an open that hangs) ends the process
        as the signal's default action does."""
        if self.requested and self._then is None:
            die_of(signum)
            return
        self.requested = True
        if self._then is not None:
            self._then()


def die_of(signum: int) -> None:
    """End the process as ``signum`` does by default (a second stop signal asks it)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _fail(message: str) -> NoReturn:
    """A failure the user can fix: one ``error:`` line on stderr, exit code 2, written as
    every command's is: the control characters of what it quotes (a --host, a path) are
    shown, not sent to the terminal to be obeyed."""
    print_error(message)
    raise typer.Exit(code=2)


def _check_installed(*libraries: str) -> None:
    """Fail in one line, naming the server extra, unless each of ``libraries`` (what the
    command is about to load) imports."""
    for library in libraries:
        try:
            importlib.import_module(library)
        except ImportError as error:
            name = error.name or library
            _fail(f"{name} is missing: install the server extra, pip install 'memvee[server]'")


def serve(
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8000,
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="File of bearer tokens, one a line: TOKEN or TOKEN:USER_ID_PREFIX."),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Larger request bodies get 413.")
    ] = MAX_BODY_BYTES,
    allow_forget: AllowForget = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Serve the MCP tools for this user only.")
    ] = None,
    auto_process: Annotated[
        bool, typer.Option(help="Extract in the background once enough messages are buffered.")
    ] = True,
    batch_threshold: BatchThreshold = DEFAULT_BATCH_THRESHOLD,
    lexical: Lexical = False,
    drain_timeout: Annotated[
        int, typer.Option(min=0, help="Seconds in-flight requests get after SIGTERM.")
    ] = 30,
    log_level: LogLevel = LogLevelName.INFO,
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /docs) and MCP over streamable HTTP (/mcp).

    Bearer tokens come from MEMVEE_API_TOKENS (comma-separated) and --tokens-file; each
    is TOKEN (every user) or TOKEN:PREFIX (users whose id starts with PREFIX). They are
    required to listen on anything but loopback. SIGTERM lets in-flight requests finish,
    then closes the memory.
    """
    with StopSignals() as stops:
        _check_installed("fastapi", "mcp", "uvicorn")
        from memvee._server.auth import TokenBook, is_loopback
        from memvee._server.logs import configure_logging

        host = _bare_host(host)
        if user is not None:
            _check_user(user)
        try:
            tokens = TokenBook.load(tokens_file)
        except ValueError as error:
            _fail(str(error))
        if not tokens and not is_loopback(host):
            _fail(
                f"listening on {host} needs bearer tokens: set MEMVEE_API_TOKENS or --tokens-file"
            )
        listener = _listen(host, port)
        configure_logging(log_level.value, url_secrets(db_url) if db_url else ())
        from memvee._server.running import serve_http

        _run(
            serve_http(
                listener,
                _memory(
                    db,
                    db_url,
                    lexical=lexical,
                    auto_process=auto_process,
                    batch_threshold=batch_threshold,
                ),
                db,
                db_url,
                tokens=tokens,
                max_body_bytes=max_body_bytes,
                allow_forget=allow_forget,
                mcp_user=user,
                host=host,
                drain_timeout=drain_timeout,
                stops=stops,
            )
        )


def mcp(
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="The one user of this server (else each call names one)."),
    ] = None,
    allow_forget: AllowForget = False,
    batch_threshold: BatchThreshold = DEFAULT_BATCH_THRESHOLD,
    lexical: Lexical = False,
    drain_timeout: Annotated[
        int,
        typer.Option(
            min=0, help="Seconds the requests still running get once stdin closes or on SIGTERM."
        ),
    ] = 30,
    log_level: LogLevel = LogLevelName.WARNING,
) -> None:
    """Serve MCP over stdio, as Claude Desktop and Claude Code start local servers.

    Extraction runs in the background, in this process; logs go to stderr. When the
    client closes stdin, every request it sent is answered before the server stops.
    """
    with StopSignals() as stops:
        _check_installed("mcp", "uvicorn")
        from memvee._server.logs import configure_logging

        if sys.stdin is None or stdout_closed():  # closed when the process started
            # Their descriptors would go to the next files opened, the database's among them.
            _fail("stdin and stdout must be open: memvee mcp speaks MCP over them")
        if user is not None:
            _check_user(user)
        configure_logging(log_level.value, url_secrets(db_url) if db_url else ())
        from memvee._server.running import serve_stdio

        _run(
            serve_stdio(
                _memory(
                    db, db_url, lexical=lexical, auto_process=True, batch_threshold=batch_threshold
                ),
                db,
                db_url,
                user=user,
                allow_forget=allow_forget,
                drain_timeout=drain_timeout,
                stops=stops,
            )
        )


def register_commands(app: typer.Typer) -> None:
    """Add ``serve`` and ``mcp`` to the ``memvee`` command."""
    app.command()(serve)
    app.command()(mcp)


def _run(main: Coroutine[None, None, None]) -> None:
    """Run a server to its end; a memory that cannot be opened is one error line."""
    from memvee._server.running import OpenFailedError

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main)
    except OpenFailedError as error:
        _fail(str(error))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the server extra brings it, except on
    Windows), else asyncio's own: the server's loop parses and answers every request, and
    uvloop does its share of that in C."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _bare_host(host: str) -> str:
    """``host`` as the socket and the loopback checks take it: an IPv6 address may be
    written in brackets, as in a URL (``[::1]``), and is then unwrapped. An empty one,
    which the socket takes for every address, is refused (an unset variable)."""
    if not host.strip():
        _fail("--host must name an address (0.0.0.0 for every one), not be empty")
    if not host.startswith("["):
        return host
    inside = host[1:-1] if host.endswith("]") else ""
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        _fail(f"--host {host}: only an IPv6 address goes in brackets, as in [::1]")
    return inside


def host_and_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:8000``), as
    ``::1:8000`` would read as a port of 1."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_user(user: str) -> None:
    """Refuse a ``--user`` every write of the server would refuse (a pasted space)."""
    try:
        check_new_user_id(user)
    except ValueError as error:
        _fail(f"--user: {error}")


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen first, so a taken port is one error line, not a trace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on connections whose
    # socket says so; with Nagle on, a kept-alive client's delayed ack held each answer's
    # body back for 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Connections made from here on wait in the backlog until uvicorn accepts them,
        # so a client told "listening" is never refused.
        sock.listen(2048)
    except OSError as error:
        sock.close()
        _fail(f"cannot listen on {host_and_port(host, port)}: {error.strerror or error}")
    sock.set_inheritable(True)
    return sock


def _memory(
    db: str, db_url: str | None, *, lexical: bool, auto_process: bool, batch_threshold: int
) -> Memory:
    from memvee import Memory, MemoryConfig

    if db_url is not None and db != DEFAULT_DB:
        _fail("give --db or --db-url, not both")
    if db_url is not None:
        refuse_foreign_database(driver_url(db_url, name="--db-url"))  # named as typed
    else:
        check_db_path(db, name="--db", url_name="--db-url")
        refuse_foreign_sqlite(db)
    # Leases on a SQLite file too: every Claude Code session spawns its own `memvee mcp`,
    # and those processes share the file.
    config = MemoryConfig(
        db_path=db,
        db_url=db_url,
        auto_process=auto_process,
        batch_threshold=batch_threshold,
        leases=True,
    )
    return Memory(config=config, embedder=False if lexical else None)
