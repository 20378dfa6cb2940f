"""Which engines may share a database: a claim each engine holds while it runs.

An engine without leases takes every user of its database as its own: its open closes
any task it finds running as left by a crash, and its close ends every requested task.
A second such engine on the same database, in this process or another, so failed the
first one's running tasks ("the log is gone") and its callers' requests. So an engine
without leases claims the database for itself alone, engines with leases share it, and a
claim that cannot be had is refused at open with :class:`DatabaseInUseError` before
anything is written. A process that dies loses its claims, so a crash never leaves a
database claimed; a server's claim lost while its engine runs (its session ended) is
taken again by :meth:`ServerClaim.keep`, which the engine calls every few seconds (a lock
on an open file cannot be lost).

On a SQLite file the claim is a ``flock`` on ``<database>.memvee-lock``, never on the
database file itself: a process that closes any descriptor of a file loses its POSIX
locks on it, SQLite's included. On PostgreSQL it is a session advisory lock, keyed by the
schema the engine's tables live in, on a connection the claim keeps open, which the
server is told never to end for idling (``idle_session_timeout``). A session can still
end (a server restart, a failover, ``pg_terminate_backend``), and until :meth:`keep`
notices, an engine with leases runs without its claim; so an engine without leases is
also refused while the schema's lease table holds an unexpired lease: a running task's
user is always leased, and its task is not closed as left by a crash. An engine with
leases that died stops holding them after its ``lease_ttl``.

The last holder of a SQLite claim removes the lock file: its release locks the file
alone for a moment to learn that no one else holds it. So that an engine with leases
opening meanwhile is not refused for it, a claim held alone marks the lock file (a
release does not), and a shared claim waits out an unmarked lock held alone.

A job that must run alone on a database (a verify, whose scratch tables another would
drop) holds a claim of its own the same way, under another name (:class:`ClaimPurpose`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from actors.lease import unexpired_leases
from events import DatabaseInUseError, StorageError, driver_url, redacted_url, sqlite_file
from events.errors import first_line
from events.file_hold import same_file, try_flock

__all__ = [
    "LOCK_SUFFIX",
    "VERIFY",
    "ClaimPurpose",
    "DatabaseClaim",
    "FileClaim",
    "ServerClaim",
    "claim_alone",
    "claim_database",
]

log = logging.getLogger("memvee.actors")

LOCK_SUFFIX = ".memvee-lock"
"""What the lock file's name adds to the database file's."""

ALONE_MARK = b"held alone\n"
"""What a SQLite claim held alone writes in its lock file: a lock held alone without it
is the last holder's release, which removes the file at once."""

RELEASE_WAIT_SECONDS = 1.0
"""How long a shared SQLite claim waits out an unmarked lock held alone (a release takes
microseconds; an engine of a memvee that did not mark its lock file holds it for good)."""

RELEASE_POLL_SECONDS = 0.001
"""How often a shared SQLite claim tries again while it waits out a release."""


class DatabaseClaim(Protocol):
    """A claim an engine holds on its database until it releases it."""

    @property
    def held(self) -> bool:
        """Whether the claim is still held."""
        ...

    def release(self) -> None:
        """Give the claim up. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class ClaimPurpose:
    """A claim on a database for one job, beside the engines' own: a lock file of its
    own suffix (SQLite), an advisory lock of its own name (PostgreSQL), and what a second
    holder is told."""

    suffix: str
    name: str
    refusal: str


VERIFY = ClaimPurpose(
    ".memvee-verify-lock",
    "memvee verify claim",
    "another verify runs on this database (they would drop each other's scratch tables); "
    "let it end, then verify again",
)
"""The claim of a verify: one at a time per database."""


def claim_alone(url: str, purpose: ClaimPurpose) -> DatabaseClaim | None:
    """Claim the database ``url`` names for ``purpose``, alone: :class:`DatabaseInUseError`
    (saying ``purpose.refusal``) while another holds it; ``None`` where it cannot be
    claimed (see :meth:`FileClaim.take`)."""
    if make_url(url).get_backend_name() == "postgresql":
        return ServerClaim.take(url, shared=False, purpose=purpose)
    return FileClaim.take(url, shared=False, purpose=purpose)


def claim_database(url: str, *, shared: bool) -> DatabaseClaim | None:
    """Claim the database ``url`` names, shared (an engine with leases) or alone;
    ``None`` where the database cannot be claimed (see :meth:`FileClaim.take`)."""
    if make_url(url).get_backend_name() == "postgresql":
        return ServerClaim.take(url, shared=shared)
    return FileClaim.take(url, shared=shared)


class FileClaim:
    """A held claim on a SQLite file: alone (no leases) or shared (leases)."""

    def __init__(self, lock_path: Path, descriptor: int) -> None:
        self.lock_path = lock_path
        self._descriptor: int | None = descriptor

    @classmethod
    def take(
        cls, url: str, *, shared: bool, purpose: ClaimPurpose | None = None
    ) -> FileClaim | None:
        """Claim the SQLite file ``url`` names, shared or alone; ``None`` for a database
        server, or where the platform has no ``flock`` (Windows).

        Raises :class:`DatabaseInUseError` if another engine holds a claim that this one
        cannot share (a shared claim first waits out the last holder's release, up to
        :data:`RELEASE_WAIT_SECONDS`), :class:`StorageError` if the lock file cannot be
        opened or marked; on a file system that cannot lock, warns and returns ``None``.
        """
        file = sqlite_file(make_url(url))
        if file is None or sys.platform == "win32":
            return None
        database = Path(file).expanduser().resolve()  # a link: the file it names
        suffix = LOCK_SUFFIX if purpose is None else purpose.suffix
        lock_path = database.with_name(database.name + suffix)
        deadline: float | None = None
        while True:
            try:
                descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise StorageError(
                    f"cannot open the lock file {lock_path} beside the database: "
                    f"{error.strerror or error}"
                ) from error
            try:
                had = try_flock(descriptor, shared=shared)
            except OSError as error:  # a file system without flock (some network ones)
                os.close(descriptor)
                log.warning(
                    "%s cannot be locked (%s): nothing keeps a second Memory off this "
                    "database; open Memories that share it with leases",
                    lock_path,
                    error.strerror or error,
                )
                return None
            current = same_file(descriptor, lock_path)
            if had and current:
                return cls._marked(lock_path, descriptor, shared=shared)
            if current and shared and not _marked_alone(descriptor):
                if deadline is None:
                    deadline = time.monotonic() + RELEASE_WAIT_SECONDS
                if time.monotonic() < deadline:  # the last holder's release: it ends at once
                    os.close(descriptor)
                    _wait_for_release()
                    continue
            os.close(descriptor)
            if current:
                told = _refusal(database, shared=shared) if purpose is None else purpose.refusal
                raise DatabaseInUseError(told)
            # Its last holder removed it between our open and our lock: take the new one.

    @classmethod
    def _marked(cls, lock_path: Path, descriptor: int, *, shared: bool) -> FileClaim:
        """The claim just locked on ``descriptor``, its lock file marked if it is held
        alone, or cleared of the mark an engine that died holding it alone left."""
        claim = cls(lock_path, descriptor)
        try:
            if not shared:
                os.pwrite(descriptor, ALONE_MARK, 0)
            elif _marked_alone(descriptor):
                os.ftruncate(descriptor, 0)  # no one holds it alone while it is shared
        except OSError as error:
            claim.release()
            raise StorageError(
                f"cannot write the lock file {lock_path} beside the database: "
                f"{error.strerror or error}"
            ) from error
        return claim

    @property
    def held(self) -> bool:
        """Whether the claim is still held."""
        return self._descriptor is not None

    def release(self) -> None:
        """Give the claim up; the last holder removes the lock file. Idempotent."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            if try_flock(descriptor, shared=False) and same_file(descriptor, self.lock_path):
                # Unmarked, the lock is a release's: an engine with leases opening now
                # waits it out instead of taking it for a claim held alone.
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, 0)
                self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)


def _marked_alone(descriptor: int) -> bool:
    """Whether the lock file open on ``descriptor`` says a claim holds it alone (only
    :data:`ALONE_MARK` is ever written to it)."""
    return os.fstat(descriptor).st_size > 0


def _wait_for_release() -> None:
    """Let another engine's release of its claim end before the lock is tried again."""
    time.sleep(RELEASE_POLL_SECONDS)


def _refusal(database: Path | str, *, shared: bool) -> str:
    holder = "a Memory without leases" if shared else "another Memory"
    if isinstance(database, Path):
        return (
            f"the SQLite file {database} is open in {holder} (in this process or another): "
            "Memories that share a SQLite file must all be opened with "
            "MemoryConfig(leases=True); otherwise open one Memory per file and share it"
        )
    return (
        f"the database {database} is open in {holder} (in this process or another): "
        "Memories that share a database must all use leases (the default on PostgreSQL: "
        "leave MemoryConfig.leases unset or True)"
    )


class ServerClaim:
    """A held claim on a PostgreSQL database: a session advisory lock, shared (leases) or
    exclusive, held by a connection of its own.

    The server drops the lock with the session, so a process that dies holds it no
    longer. A session that ends while the claim is held (a server restart, a broken
    connection) loses it too: :meth:`keep`, called now and then, takes it again. A claim
    held alone is refused while unexpired user leases show an engine with leases may be
    running on the schema meanwhile.
    """

    def __init__(
        self,
        url: str,
        engine: Engine,
        connection: Connection,
        *,
        shared: bool,
        purpose: ClaimPurpose | None = None,
    ) -> None:
        self._url = url
        self._shared = shared
        self._purpose = purpose
        self._engine = engine
        self._connection: Connection | None = connection
        self._released = False
        self._lock = threading.Lock()

    @classmethod
    def take(cls, url: str, *, shared: bool, purpose: ClaimPurpose | None = None) -> ServerClaim:
        """Claim the PostgreSQL database ``url`` names, shared or alone.

        Raises :class:`DatabaseInUseError` if another engine holds a claim that this one
        cannot share, or (an engine's claim alone) while a user lease has not expired;
        :class:`StorageError` if the server cannot be reached.
        """
        engine = create_engine(driver_url(url), poolclass=NullPool)
        try:
            connection = _locked_session(engine, url, shared=shared, purpose=purpose)
        except Exception:
            engine.dispose()
            raise
        return cls(url, engine, connection, shared=shared, purpose=purpose)

    @property
    def held(self) -> bool:
        """Whether the claim is still held (as far as this process knows)."""
        return self._connection is not None

    def keep(self) -> None:
        """Take the claim again on a new session if its session has ended (one round trip
        tells while it lives); nothing to do once it is released. Raises
        :class:`DatabaseInUseError` if another engine took it meanwhile,
        :class:`StorageError` if the server cannot be reached."""
        with self._lock:
            connection = self._connection
            if self._released:
                return
        if connection is not None:
            try:
                connection.execute(text("SELECT 1"))
                return
            except SQLAlchemyError as error:
                log.warning(
                    "the database claim's session at %s ended (%s); taking the claim again",
                    redacted_url(self._url),
                    first_line(error),
                )
            with self._lock:
                self._connection = None
            _close_quietly(connection)
        again = _locked_session(self._engine, self._url, shared=self._shared, purpose=self._purpose)
        with self._lock:
            released = self._released
            if not released:
                self._connection = again
        if released:  # meanwhile
            _close_quietly(again)
        else:
            log.warning("the database claim at %s is held again", redacted_url(self._url))

    def release(self) -> None:
        """Give the claim up: its session unlocks, then closes. Idempotent.

        Unlocked first, not only closed: the server ends a closed session's backend, and
        with it the lock, a moment after the client has gone, so a claim taken right after
        (a Memory opened again) could still find it held."""
        with self._lock:
            connection, self._connection = self._connection, None
            self._released = True
        if connection is not None:
            try:
                connection.execute(text("SELECT pg_advisory_unlock_all()"))
            except SQLAlchemyError:
                log.debug("unlocking the claim failed; closing its session drops it", exc_info=True)
            _close_quietly(connection)
        self._engine.dispose()


def _locked_session(
    engine: Engine, url: str, *, shared: bool, purpose: ClaimPurpose | None = None
) -> Connection:
    """A new session of ``engine`` that holds the claim's advisory lock on ``url``'s
    schema, shared or alone; raises as :meth:`ServerClaim.take`."""
    connection: Connection | None = None
    try:
        # Autocommit: an idle session left in a transaction would hold back vacuum.
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        _never_idle_out(connection)
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        name = "memvee database claim" if purpose is None else purpose.name
        had = connection.execute(text(f"SELECT {lock}(:key)"), {"key": _lock_key(name, schema)})
        leased = 0
        if had.scalar_one():
            if shared or purpose is not None:
                return connection
            leased = unexpired_leases(connection)
            if not leased:
                return connection
    except SQLAlchemyError as error:
        if connection is not None:
            _close_quietly(connection)
        raise StorageError(
            f"cannot claim the database at {redacted_url(url)}: {first_line(error)}"
        ) from error
    _close_quietly(connection)
    if purpose is not None:
        raise DatabaseInUseError(purpose.refusal)
    where = f"{redacted_url(url)} (schema {schema})"
    if leased:
        raise DatabaseInUseError(_leased_refusal(where, leased))
    raise DatabaseInUseError(_refusal(where, shared=shared))


def _never_idle_out(connection: Connection) -> None:
    """Keep the server from ending the claim's session for idling between checks (its
    ``idle_session_timeout``, PostgreSQL 14 on): the lock would go with it."""
    version = connection.dialect.server_version_info or ()
    if version >= (14,):
        connection.execute(text("SET idle_session_timeout = 0"))


def _leased_refusal(database: str, leased: int) -> str:
    return (
        f"the database {database} is in use by a Memory with leases ({leased} user "
        "lease(s) not expired): Memories that share a database must all use leases (the "
        "default on PostgreSQL: leave MemoryConfig.leases unset or True); a Memory that "
        "stopped without closing holds its leases until their lease_ttl runs out"
    )


def _lock_key(name: str, schema: str) -> int:
    """The advisory lock key of the claim ``name`` on memvee's tables in ``schema``: a
    signed 64-bit number."""
    digest = hashlib.blake2b(f"{name}:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except SQLAlchemyError:
        log.debug("closing the claim's connection failed; the server drops it", exc_info=True)
