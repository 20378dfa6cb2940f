"""The claim on a database: an engine without leases holds it alone, engines with leases
share it, and a claim that cannot be had is refused before anything is written. A SQLite
file is claimed through a lock file beside it, a PostgreSQL schema by an advisory lock."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from actors import Engine, database_claim
from actors.database_claim import (
    LOCK_SUFFIX,
    VERIFY,
    DatabaseClaim,
    FileClaim,
    ServerClaim,
    claim_alone,
    claim_database,
)
from actors.lease import LeaseTable
from events import DatabaseInUseError, StorageError, sqlite_url
from memvee import Memory, MemoryConfig
from tests.support.backends import postgres_url
from tests.support.extractors import RecordingExtractor


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "memory.db")


@pytest.fixture
def claims() -> Iterator[list[DatabaseClaim]]:
    held: list[DatabaseClaim] = []
    yield held
    for claim in held:
        claim.release()


def _take(claims: list[DatabaseClaim], url: str, *, shared: bool) -> DatabaseClaim:
    """The claim of the database ``url`` names (released at the end of the test)."""
    claim = claim_database(url, shared=shared)
    assert claim is not None
    claims.append(claim)
    return claim


def test_an_engine_without_leases_holds_the_file_alone(
    url: str, claims: list[DatabaseClaim]
) -> None:
    _take(claims, url, shared=False)
    with pytest.raises(DatabaseInUseError, match=r"leases=True"):
        FileClaim.take(url, shared=False)
    with pytest.raises(DatabaseInUseError, match="a Memory without leases"):
        FileClaim.take(url, shared=True)


def test_engines_with_leases_share_the_file_and_keep_out_one_without(
    url: str, claims: list[DatabaseClaim]
) -> None:
    _take(claims, url, shared=True)
    _take(claims, url, shared=True)
    with pytest.raises(DatabaseInUseError, match="another Memory"):
        FileClaim.take(url, shared=False)


def test_a_released_claim_can_be_taken_again_and_the_last_removes_the_lock_file(
    tmp_path: Path, url: str, claims: list[DatabaseClaim]
) -> None:
    lock_file = tmp_path / ("memory.db" + LOCK_SUFFIX)
    first = _take(claims, url, shared=True)
    second = _take(claims, url, shared=True)
    first.release()
    assert not first.held and lock_file.exists()
    with pytest.raises(DatabaseInUseError):
        FileClaim.take(url, shared=False)
    second.release()
    second.release()
    assert not lock_file.exists()
    _take(claims, url, shared=False)
    assert lock_file.exists()


def test_a_shared_claim_waits_out_the_last_holders_release_instead_of_refusing(
    tmp_path: Path, url: str, claims: list[DatabaseClaim], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last holder's release locks the lock file alone for a moment, to learn it is
    the last, then removes it: an engine with leases opening meanwhile (in another process)
    is not refused for it."""
    lock_file = tmp_path / ("memory.db" + LOCK_SUFFIX)
    releasing = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(releasing, fcntl.LOCK_EX)
    waits: list[int] = []

    def release_ends() -> None:
        waits.append(releasing)
        lock_file.unlink()
        os.close(releasing)

    monkeypatch.setattr(database_claim, "_wait_for_release", release_ends, raising=False)
    _take(claims, url, shared=True)
    assert waits == [releasing]


def test_a_shared_claim_is_refused_at_once_by_a_claim_held_alone(
    tmp_path: Path, url: str, claims: list[DatabaseClaim], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_wait() -> None:
        pytest.fail("a claim held alone is no release to wait out")

    lock_file = tmp_path / ("memory.db" + LOCK_SUFFIX)
    monkeypatch.setattr(database_claim, "_wait_for_release", no_wait)
    _take(claims, url, shared=False)
    assert lock_file.read_bytes() == database_claim.ALONE_MARK
    with pytest.raises(DatabaseInUseError, match="a Memory without leases"):
        FileClaim.take(url, shared=True)


def test_a_lock_held_alone_that_no_release_ends_is_refused_after_the_wait(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine of a memvee that did not mark its lock file holds it alone for good."""
    monkeypatch.setattr(database_claim, "RELEASE_WAIT_SECONDS", 0.0)
    holder = os.open(tmp_path / ("memory.db" + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(DatabaseInUseError, match="a Memory without leases"):
            FileClaim.take(url, shared=True)
    finally:
        os.close(holder)


def test_the_same_file_by_another_path_is_the_same_claim(
    tmp_path: Path, claims: list[DatabaseClaim]
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "memory.db").touch()
    (tmp_path / "sub" / "link.db").symlink_to(tmp_path / "memory.db")
    _take(claims, sqlite_url(tmp_path / "memory.db"), shared=False)
    for other in (
        f"{tmp_path}/sub/../memory.db",
        f"{tmp_path}/sub/link.db",
        f"file:{tmp_path}/memory.db?mode=rwc&uri=true",  # an SQLite URI filename
    ):
        with pytest.raises(DatabaseInUseError):
            FileClaim.take(f"sqlite:///{other}", shared=False)


def test_another_database_file_beside_it_is_free(
    tmp_path: Path, claims: list[DatabaseClaim]
) -> None:
    _take(claims, sqlite_url(tmp_path / "a.db"), shared=False)
    _take(claims, sqlite_url(tmp_path / "b.db"), shared=False)


@contextmanager
def _held_in_another_process(kind: str, url: str) -> Iterator[None]:
    """A process holding ``kind`` (``FileClaim`` or ``ServerClaim``) on ``url`` alone,
    until the block ends, when it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            f"from actors.database_claim import {kind}\n"
            f"claim = {kind}.take({url!r}, shared=False)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_process_that_dies_leaves_the_file_free(url: str, claims: list[DatabaseClaim]) -> None:
    with _held_in_another_process("FileClaim", url), pytest.raises(DatabaseInUseError):
        FileClaim.take(url, shared=True)
    _take(claims, url, shared=False)


def test_a_shared_claim_clears_the_mark_of_a_claim_held_alone_by_a_process_that_died(
    tmp_path: Path, url: str, claims: list[DatabaseClaim]
) -> None:
    """Else the next release's moment alone would be taken for a claim held alone."""
    lock_file = tmp_path / ("memory.db" + LOCK_SUFFIX)
    lock_file.write_bytes(database_claim.ALONE_MARK)  # and no lock: its holder is gone
    _take(claims, url, shared=True)
    assert lock_file.read_bytes() == b""


def test_a_database_server_takes_no_file_claim() -> None:
    assert FileClaim.take("postgresql+psycopg://u@127.0.0.1:1/db", shared=False) is None


async def test_a_second_memory_without_leases_is_refused_and_the_first_runs_on(
    tmp_path: Path,
) -> None:
    db = tmp_path / "memory.db"
    extractor = RecordingExtractor(gated=True)
    first = await Memory(config=MemoryConfig(db_path=str(db)), extractor=extractor).open()
    try:
        await first.add_exchange("u", "I live in Oslo", "ok")
        task = first.process_async("u")
        await asyncio.to_thread(extractor.started.wait, 10)
        for leases in (None, False, True):
            second = Memory(config=MemoryConfig(db_path=str(db), leases=leases))
            with pytest.raises(DatabaseInUseError, match=str(db)):
                await second.open()
        extractor.gate.set()
        assert await task.wait() == 1
        assert [e.text for e in await first.knowledge("u")] == ["User said: I live in Oslo"]
    finally:
        await first.close()
    again = await Memory(config=MemoryConfig(db_path=str(db))).open()
    try:
        assert len(await again.knowledge("u")) == 1
    finally:
        await again.close()


async def test_memories_with_leases_share_a_file(tmp_path: Path) -> None:
    config = MemoryConfig(db_path=str(tmp_path / "memory.db"), leases=True)
    async with Memory(config=config) as one, Memory(config=config) as other:
        await one.add_exchange("u", "I live in Oslo", "ok")
        assert len(await other.messages("u")) == 2
        with pytest.raises(DatabaseInUseError):
            await Memory(config=MemoryConfig(db_path=config.db_path)).open()


def test_a_lock_file_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / ("memory.db" + LOCK_SUFFIX)).mkdir()
    with pytest.raises(StorageError, match=r"cannot open the lock file .* Is a directory"):
        FileClaim.take(sqlite_url(tmp_path / "memory.db"), shared=False)


def test_a_file_system_that_cannot_lock_leaves_the_file_unclaimed_with_a_warning(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert FileClaim.take(url, shared=False) is None
    assert "nothing keeps a second Memory off this database" in caplog.text


async def _open_failing_to_catch_up(config: MemoryConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open a Memory whose engine fails while it starts (catching up), as it must."""

    def failing(engine: Engine) -> None:
        raise StorageError("catching up failed")

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_catch_up", failing)
        with pytest.raises(StorageError, match="catching up failed"):
            await Memory(config=config, embedder=False).open()


def _open_files(path: Path) -> int:
    """How many of this process's descriptors are open on ``path`` (Linux)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


async def test_an_engine_that_fails_to_start_frees_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "memory.db"
    config = MemoryConfig(db_path=str(db))
    async with Memory(config=config, embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")
    await _open_failing_to_catch_up(config, monkeypatch)
    assert _open_files(db) == 0
    assert not (tmp_path / ("memory.db" + LOCK_SUFFIX)).exists()


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_url() -> str:
    return postgres_url()


def test_on_postgresql_an_engine_without_leases_holds_the_schema_alone(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    alone = _take(claims, pg_url, shared=False)
    with pytest.raises(DatabaseInUseError, match=r"another Memory.*leases"):
        ServerClaim.take(pg_url, shared=False)
    with pytest.raises(
        DatabaseInUseError, match=r"schema public\) is open in a Memory without leases"
    ):
        ServerClaim.take(pg_url, shared=True)
    alone.release()
    alone.release()
    assert not alone.held
    _take(claims, pg_url, shared=True)
    _take(claims, pg_url, shared=True)
    with pytest.raises(DatabaseInUseError):
        ServerClaim.take(pg_url, shared=False)


def test_on_postgresql_a_released_claim_is_free_before_its_session_has_ended(
    pg_url: str, claims: list[DatabaseClaim], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends a closed session's backend, and the lock with it, a moment after
    the client closed it: a claim taken right after a release (a Memory closed and opened
    again) found the schema still held now and then. The release unlocks first, so the
    claim is free even while the old session lives on (here, never closed)."""
    lingering: list[object] = []
    monkeypatch.setattr(database_claim, "_close_quietly", lingering.append)
    alone = _take(claims, pg_url, shared=False)
    alone.release()
    monkeypatch.undo()
    try:
        _take(claims, pg_url, shared=False).release()
    finally:
        for connection in lingering:
            connection.close()  # type: ignore[attr-defined]
    assert len(lingering) == 1


def test_on_postgresql_another_schema_is_another_claim(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    engine = create_engine(pg_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS tenant_b CASCADE"))
            connection.execute(text("CREATE SCHEMA tenant_b"))
    finally:
        engine.dispose()
    other = make_url(pg_url).update_query_dict({"options": "-csearch_path=tenant_b"})
    _take(claims, pg_url, shared=False)
    _take(claims, other.render_as_string(hide_password=False), shared=False)


def test_on_postgresql_a_process_that_dies_leaves_the_schema_free(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    with _held_in_another_process("ServerClaim", pg_url), pytest.raises(DatabaseInUseError):
        ServerClaim.take(pg_url, shared=True)
    deadline = time.monotonic() + 30  # the server ends the dead session on its own time
    while True:
        try:
            _take(claims, pg_url, shared=False)
            return
        except DatabaseInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _end_claim_sessions(pg_url: str) -> int:
    """End the server sessions that hold memvee's advisory locks, as a server restart
    does; returns how many."""
    engine = create_engine(pg_url)
    try:
        with engine.begin() as connection:
            ended = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(ended)


def test_on_postgresql_a_claim_whose_session_ended_is_taken_again(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    alone = ServerClaim.take(pg_url, shared=False)
    claims.append(alone)
    alone.keep()  # its session lives: nothing to do
    assert _end_claim_sessions(pg_url) == 1
    alone.keep()
    assert alone.held
    with pytest.raises(DatabaseInUseError):
        ServerClaim.take(pg_url, shared=True)
    assert _end_claim_sessions(pg_url) == 1
    other = ServerClaim.take(pg_url, shared=False)  # got in while the claim was lost
    with pytest.raises(DatabaseInUseError):
        alone.keep()
    assert not alone.held
    other.release()
    alone.keep()
    assert alone.held
    alone.release()
    alone.keep()
    assert not alone.held, "a released claim is not taken again"
    _take(claims, pg_url, shared=False)


async def test_on_postgresql_no_memory_without_leases_opens_while_one_with_leases_lost_its_claim(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the engine with leases takes its lost claim again, its running task's lease
    keeps out a Memory that would close that task as left by a crash."""
    monkeypatch.setattr("actors.engine.CLAIM_CHECK_SECONDS", 3600.0)  # not taken again
    extractor = RecordingExtractor(gated=True)
    shared = MemoryConfig(db_url=pg_url, leases=True)
    async with Memory(config=shared, extractor=extractor, embedder=False) as running:
        await running.add_exchange("u", "I live in Oslo", "ok")
        task = running.process_async("u")
        await asyncio.to_thread(extractor.started.wait, 10)
        assert _end_claim_sessions(pg_url) == 1
        alone = Memory(config=MemoryConfig(db_url=pg_url, leases=False), embedder=False)
        with pytest.raises(DatabaseInUseError, match=r"in use by a Memory with leases"):
            await alone.open()
        extractor.gate.set()
        assert await task.wait() == 1
    async with Memory(config=MemoryConfig(db_url=pg_url, leases=False), embedder=False):
        pass  # the leases were given up at close


def test_on_postgresql_a_claim_held_alone_is_refused_while_a_user_lease_lives(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    store = create_engine(pg_url)
    try:
        leases = LeaseTable(store, "a live engine", ttl=600)
        with store.begin() as connection:
            leases.create(connection)
        assert leases.try_acquire("u")
        with pytest.raises(DatabaseInUseError, match=r"\(1 user lease\(s\) not expired\)"):
            ServerClaim.take(pg_url, shared=False)
        _take(claims, pg_url, shared=True).release()
        verify = claim_alone(pg_url, VERIFY)  # a claim of its own, beside the engines
        assert verify is not None
        verify.release()
        leases.release_all()
    finally:
        store.dispose()
    _take(claims, pg_url, shared=False)


def test_on_postgresql_the_claim_session_outlives_the_servers_idle_session_timeout(
    pg_url: str, claims: list[DatabaseClaim]
) -> None:
    database = make_url(pg_url).database
    _alter(pg_url, f'ALTER DATABASE "{database}" SET idle_session_timeout = 50')
    try:
        claim = _take(claims, pg_url, shared=True)
        time.sleep(0.3)  # six times the server's limit on an idle session
    finally:
        _alter(pg_url, f'ALTER DATABASE "{database}" RESET idle_session_timeout')
    assert claim.held
    assert _end_claim_sessions(pg_url) == 1, "the server ended the claim's session for idling"


def _alter(pg_url: str, statement: str) -> None:
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


async def test_on_postgresql_a_memory_without_leases_takes_its_lost_claim_again(
    pg_url: str,
) -> None:
    alone = MemoryConfig(db_url=pg_url, leases=False)
    async with Memory(config=alone, embedder=False) as memory:
        assert _end_claim_sessions(pg_url) == 1
        deadline = time.monotonic() + 30
        while True:  # taken again within seconds; until then a second one may get in
            try:
                second = await Memory(config=alone, embedder=False).open()
            except DatabaseInUseError:
                break
            await second.close()
            assert time.monotonic() < deadline, "the claim was never taken again"
            await asyncio.sleep(0.2)
        await memory.add_exchange("u", "I live in Oslo", "ok")
        assert len(await memory.buffer("u")) == 2


def test_an_unreachable_server_cannot_be_claimed_and_its_password_is_not_shown() -> None:
    url = "postgresql+psycopg://memvee:s3cret@127.0.0.1:1/memvee?connect_timeout=2"
    with pytest.raises(StorageError, match="cannot claim the database at") as raised:
        ServerClaim.take(url, shared=False)
    assert "s3cret" not in str(raised.value)


async def test_on_postgresql_a_second_memory_without_leases_is_refused_and_the_first_runs_on(
    pg_url: str,
) -> None:
    extractor = RecordingExtractor(gated=True)
    alone = MemoryConfig(db_url=pg_url, leases=False)
    first = await Memory(config=alone, extractor=extractor, embedder=False).open()
    try:
        await first.add_exchange("u", "I live in Oslo", "ok")
        task = first.process_async("u")
        await asyncio.to_thread(extractor.started.wait, 10)
        for leases in (None, False, True):
            second = Memory(config=MemoryConfig(db_url=pg_url, leases=leases), embedder=False)
            with pytest.raises(
                DatabaseInUseError, match=r"is open in (a Memory without leases|another Memory)"
            ):
                await second.open()
        extractor.gate.set()
        assert await task.wait() == 1
    finally:
        await first.close()
    shared = MemoryConfig(db_url=pg_url)
    async with Memory(config=shared, embedder=False) as one, Memory(config=shared) as other:
        assert len(await one.knowledge("u")) == len(await other.knowledge("u")) == 1
        with pytest.raises(DatabaseInUseError):
            await Memory(config=alone, embedder=False).open()


async def test_on_postgresql_an_engine_that_fails_to_start_gives_its_claim_back(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = MemoryConfig(db_url=pg_url, leases=False)
    await _open_failing_to_catch_up(config, monkeypatch)
    async with Memory(config=config, embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_verify_at_a_time_holds_a_claim_of_its_own_beside_the_engines(
    backend: str, tmp_path: Path, claims: list[DatabaseClaim]
) -> None:
    url = sqlite_url(tmp_path / "memory.db") if backend == "sqlite" else postgres_url()
    _take(claims, url, shared=False)  # an engine without leases runs: a verify may too
    verifying = claim_alone(url, VERIFY)
    assert verifying is not None
    claims.append(verifying)
    with pytest.raises(DatabaseInUseError, match="another verify runs on this database"):
        claim_alone(url, VERIFY)
    verifying.release()
    again = claim_alone(url, VERIFY)
    assert again is not None
    claims.append(again)


class _Checks:
    """Stands for the engine's stop event: ``rounds`` checks, then the engine stops."""

    def __init__(self, rounds: int) -> None:
        self.left = rounds

    def wait(self, _: float) -> bool:
        self.left -= 1
        return self.left < 0


class _FlakyClaim:
    """A server claim whose checks fail as scripted (``None``: it holds)."""

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)

    def keep(self) -> None:
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def test_a_claim_lost_to_a_server_restart_is_a_warning_and_another_engine_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the server is down the claim is taken again at each check (it said "cannot
    be taken again" at ERROR, then was); another engine holding it is an error."""
    down = StorageError("cannot claim the database: connection refused")
    taken = DatabaseInUseError("another engine holds the database")
    claim = _FlakyClaim(down, down, None, down, taken, taken)
    engine = type("EngineStandIn", (), {"_stopping": _Checks(6)})()
    with caplog.at_level("WARNING", logger="memvee.actors"):
        Engine._keep_claim(engine, claim)  # type: ignore[arg-type]
    told = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert told == [
        ("WARNING", "the database claim cannot be taken again yet (tried every 2 s)"),
        ("WARNING", "the database claim cannot be taken again yet (tried every 2 s)"),
        ("ERROR", "the database claim is lost to another engine"),
    ]
