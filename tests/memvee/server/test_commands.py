"""The server commands: the socket ``memvee serve`` listens on, before uvicorn takes it,
and their stop on a signal during the start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from memvee import Memory, _console
from memvee._server import commands
from memvee._server.commands import StopSignals, _listen
from memvee.cli import app
from memvee.extractors import OfflineExtractor
from tests.support.server_process import MEMVEE, ROOT, ServerProcess, server_env

_HELD_OPEN = """
import asyncio, os, sys
from memvee._memory import Memory
opened, gate = Memory.open, int(sys.argv.pop(1))
async def held(self):
    sys.stderr.write("opening\\n"); sys.stderr.flush()
    await asyncio.to_thread(os.read, gate, 1)
    return await opened(self)
Memory.open = held
from memvee._console import main
main()
"""
"""``memvee ARGS`` whose Memory's open says "opening" on stderr, then waits for a byte on
the descriptor given first."""


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


@contextlib.contextmanager
def _held_open(command: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``memvee COMMAND`` in a child whose open waits, once it said "opening", for a byte
    on a pipe: the child, and the pipe's end to write that byte to."""
    held, release = os.pipe()
    server = subprocess.Popen(
        [sys.executable, "-c", _HELD_OPEN, str(held), *command],
        stdin=subprocess.PIPE,  # kept open: a stdio server's client is still there
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=server_env(),
        cwd=ROOT,
        pass_fds=(held,),
    )
    try:
        assert server.stderr is not None
        assert server.stderr.readline() == b"opening\n"
        yield server, release
    finally:
        os.close(held)
        os.close(release)
        server.kill()
        server.wait()


@pytest.mark.parametrize("command", [["mcp"], ["serve", "--port", "0"]])
def test_a_sigterm_during_the_open_stops_the_server_cleanly_with_exit_0(
    tmp_path: Path, command: list[str]
) -> None:
    """The start-up takes seconds on a loaded machine: a SIGTERM then is kept, and the
    server stops once the memory is open, closing it, as it would once serving."""
    db = tmp_path / "memvee.db"
    with _held_open([*command, "--db", str(db), "--lexical"]) as (server, release):
        server.send_signal(signal.SIGTERM)
        os.write(release, b"x")
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors.decode()[-2000:]

    async def reopened() -> list[object]:
        async with Memory(db_path=str(db), extractor=OfflineExtractor(), embedder=False) as m:
            return list(await m.buffer("u"))

    assert asyncio.run(reopened()) == []


def test_a_second_sigterm_during_an_open_that_hangs_ends_the_server(tmp_path: Path) -> None:
    """A database that never answers held the open: the first SIGTERM was kept for once
    the server is up, and every later one with it, so only SIGKILL ended the process."""
    with _held_open(["mcp", "--db", str(tmp_path / "m.db")]) as (server, _):
        for _ in range(300):  # signals sent at once may arrive as one: again until it ends
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.2)
                break
    assert server.returncode == -signal.SIGTERM


def test_a_sigterm_while_the_command_line_loaded_is_taken_as_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console notes a SIGTERM to ``serve`` or ``mcp`` before the command runs (its
    load takes a second or more): the command's signals hand it on to the server."""
    monkeypatch.setattr(_console, "_terminated", True)
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stops:
        assert stops.requested
    assert signal.getsignal(signal.SIGTERM) == before


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_loopback_bare_or_in_brackets_is_served_without_tokens_as_127_0_0_1_is(
    tmp_path: Path, host: str
) -> None:
    args = ["--db", str(tmp_path / "memvee.db"), "--no-auto-process", "--lexical"]
    with ServerProcess(tmp_path / "server.log", [*args, "--host", host]) as server:
        listening = next(r for r in server.records() if r.get("event") == "listening")
        with httpx.Client(base_url=f"http://[::1]:{server.port}", timeout=30) as http:
            exchange = {"user_message": "I live in Oslo.", "assistant_message": "ok"}
            written = http.post("/v1/users/ipv6/exchanges", json=exchange)

    assert listening["host"] == "::1", "the field stays the bare address"
    assert listening["message"] == f"listening on [::1]:{server.port}"
    assert written.status_code == 201


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_is_shown_in_brackets_where_a_port_follows_it(tmp_path: Path) -> None:
    """``listening on ::1:8000`` reads as a port 1 and no address; ``[::1]:8000`` is the
    form a URL and a client take. The listening line's form is asserted above, with the
    server each host starts; here a port taken gives it in the error line."""
    args = ["--db", str(tmp_path / "memvee.db"), "--no-auto-process", "--lexical"]
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [str(MEMVEE), "serve", *args, "--port", str(port), "--host", "::1"],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(),
        )

    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: cannot listen on [::1]:{port}: "), refused.stderr
    assert refused.stderr.count("\n") == 1 and refused.stderr.endswith("\n"), "one line alone"


@pytest.mark.parametrize("host", ["[localhost]", "[127.0.0.1]", "[::1", "[]"])
def test_a_host_in_brackets_that_is_no_ipv6_address_is_one_error_line_and_exit_2(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run in this process (a ``memvee`` process costs seconds to start, four times over);
    that a real one refusing its host prints that one line alone is shown above, with a
    taken port. A host taken would fail the run where it begins to listen, not serve."""

    def listen(host: str, port: int) -> socket.socket:
        raise AssertionError(f"--host {host!r} was taken: serving on it")

    monkeypatch.setattr(commands, "_listen", listen)
    database = str(tmp_path / "memvee.db")
    done = CliRunner().invoke(app, ["serve", "--db", database, "--port", "0", "--host", host])

    assert done.exit_code == 2
    assert (
        done.stderr == f"error: --host {host}: only an IPv6 address goes in brackets, as in [::1]\n"
    )
    assert not (tmp_path / "memvee.db").exists()


def test_a_server_command_error_shows_the_control_characters_it_quotes(tmp_path: Path) -> None:
    """The errors of serve and mcp were echoed as they came, so an escape sequence in the
    --host or path they quote reached the terminal, to be obeyed; they show it as every
    other command's error line does (and one line stays one line)."""
    done = CliRunner().invoke(
        app, ["serve", "--db", str(tmp_path / "m.db"), "--host", "[\x1b[2J\n]", "--port", "0"]
    )

    assert done.exit_code == 2
    assert done.stderr == (
        "error: --host [\u241b[2J ]: only an IPv6 address goes in brackets, as in [::1]\n"
    )
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("host", ["", "  "])
def test_an_empty_host_is_refused_as_empty(tmp_path: Path, host: str) -> None:
    """``--host "$HOST"`` with the variable unset listens on every address; it was refused
    as "listening on  needs bearer tokens", naming no address, or served with them."""
    done = CliRunner().invoke(
        app, ["serve", "--db", str(tmp_path / "m.db"), "--host", host, "--port", "0"]
    )

    assert done.exit_code == 2
    assert (
        done.stderr == "error: --host must name an address (0.0.0.0 for every one), not be empty\n"
    )


def test_a_stdio_server_started_with_stdout_closed_refuses_before_opening_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memvee mcp >&-``: Python leaves ``sys.stdout`` None, which the command line stands
    in for with a stream whose writes fail; the server took the stand-in for an open
    stdout and started, to end in a traceback."""
    monkeypatch.setattr(sys, "stdout", None)

    with pytest.raises(SystemExit) as ended:
        app(["mcp", "--db", str(tmp_path / "m.db")])

    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        "error: stdin and stdout must be open: memvee mcp speaks MCP over them\n"
    )
    assert not (tmp_path / "m.db").exists()


def test_the_stdio_server_serves_without_loading_fastapi(tmp_path: Path) -> None:
    """``memvee mcp`` speaks MCP alone: FastAPI, a quarter of a second of its start, is the
    HTTP face's, which only ``memvee serve`` loads."""
    done = subprocess.run(
        [str(MEMVEE), "mcp", "--db", str(tmp_path / "m.db"), "--lexical"],
        stdin=subprocess.DEVNULL,  # the client gone at once: the server stops, exit 0
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env({"PYTHONPROFILEIMPORTTIME": "1"}),
        cwd=ROOT,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "memvee._server.mcp_tools" in imported
    assert "fastapi" not in imported
