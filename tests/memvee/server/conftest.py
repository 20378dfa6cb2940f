"""Fixtures of the server suites: a running ``memvee serve`` and an HTTP client for it,
or the HTTP API over a Memory in the test's own process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from memvee import Memory
from memvee._server.app import create_app
from memvee.audit import Audit
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def server_args() -> list[str]:
    """Options a module adds to its server's command line."""
    return []


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_args: list[str]
) -> Iterator[ServerProcess]:
    """One server per test module on a fresh SQLite file: manual processing, lexical
    retrieval, no tokens (loopback). Tests use their own user ids."""
    folder: Path = tmp_path_factory.mktemp("server")
    args = ["--db", str(folder / "memvee.db"), "--no-auto-process", "--lexical", *server_args]
    with ServerProcess(folder / "server.log", args) as running:
        yield running


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the module's server."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def client(memory: Memory, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API over ``memory``, in this process."""
    app = create_app(memory, Audit(db_url=db_url), max_body_bytes=1 << 20)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client
