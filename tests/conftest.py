"""Fixtures shared by every suite: a fresh database, an event store on it, and a Memory."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from events import EventStore, sqlite_url
from memvee import Memory, MemoryConfig
from memvee._secrets import declared_secrets, forget_declared_secrets
from projections import ProjectionTables, Projector
from tests.support.backends import BACKENDS, postgres_url
from tests.support.extractors import RecordingExtractor

_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpx2")


@pytest.fixture(autouse=True)
def _process_set_up_as_it_was() -> Iterator[None]:
    """Puts the logging set-up, the secrets declared to it and the SIGINT/SIGTERM handlers
    back after each test: a command run in-process (``serve``, ``mcp``) sets the root
    handlers to the stream it was given, which a later test's records would meet closed,
    declares its database password for the process's life, which would clean a later
    test's words of it, and ignores the signals it stopped on, which every process a later
    test starts would then ignore too."""
    root = logging.getLogger()
    loggers = [root, *map(logging.getLogger, _SERVER_LOGGERS)]
    kept = [(lg, lg.handlers[:], lg.filters[:], lg.level, lg.propagate) for lg in loggers]
    declared = declared_secrets()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for logger, kept_handlers, kept_filters, level, propagate in kept:
        logger.handlers[:] = kept_handlers
        logger.filters[:] = kept_filters
        logger.setLevel(level)
        logger.propagate = propagate
    forget_declared_secrets(declared)
    for number, handler in handlers.items():
        if signal.getsignal(number) is not handler and handler is not None:
            signal.signal(number, handler)


pytest_plugins = ("tests.support.fixtures",)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file in a fresh folder (the folder does not exist yet)."""
    return tmp_path / "data" / "memvee.db"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """An empty database on each backend: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return sqlite_url(db_path)
    return postgres_url()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    """An event store on a fresh SQLite file, with the projection tables created."""
    store = EventStore(sqlite_url(tmp_path / "store.db"))
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    yield store
    store.close()


@pytest.fixture
def extractor() -> RecordingExtractor:
    """A stand-in extractor that answers one fact per user message."""
    return RecordingExtractor()


@pytest.fixture
async def make_memory(
    db_url: str, extractor: RecordingExtractor
) -> AsyncIterator[Callable[..., Any]]:
    """Open Memories on the test database; every one opened is closed at the end."""
    opened: list[Memory] = []

    async def _make(**options: Any) -> Memory:
        # Lexical retrieval unless a test asks for an embedder (None: the default model).
        options.setdefault("embedder", False)
        config = MemoryConfig(db_url=db_url, **options.pop("config", {}))
        memory = Memory(config=config, extractor=options.pop("extractor", extractor), **options)
        await memory.open()
        opened.append(memory)
        return memory

    yield _make
    for memory in opened:
        await memory.close()


@pytest.fixture
async def memory(make_memory: Callable[..., Any]) -> Memory:
    """An open Memory on a fresh database, manual processing."""
    result: Memory = await make_memory()
    return result
