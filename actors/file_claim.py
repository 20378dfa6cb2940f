"""Which engines may share a SQLite file: a lock on a file beside it.

An engine without leases takes every user of its database as its own: its open closes
any task it finds running as left by a crash, and its close ends every requested task.
A second such engine on the same file, in this process or another, so failed the first
one's running tasks ("the log is gone") and its callers' requests. So an engine without
leases claims the file for itself alone, engines with leases share it, and a claim that
cannot be had is refused at open with :class:`DatabaseInUseError` before anything is
written. The kernel drops the claim of a process that dies (``flock``), so a crash never
leaves the file claimed.

The lock is taken on ``<database>.memvee-lock``, never on the database file itself: a
process that closes any descriptor of a file loses its POSIX locks on it, SQLite's
included. A database server needs no claim: its processes coordinate through leases.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from events import DatabaseInUseError, StorageError

__all__ = ["LOCK_SUFFIX", "FileClaim"]

log = logging.getLogger("memvee.actors")

LOCK_SUFFIX = ".memvee-lock"
"""What the lock file's name adds to the database file's."""


class FileClaim:
    """A held claim on a SQLite file: alone (no leases) or shared (leases)."""

    def __init__(self, lock_path: Path, descriptor: int) -> None:
        self.lock_path = lock_path
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, url: str, *, shared: bool) -> FileClaim | None:
        """Claim the SQLite file ``url`` names, shared or alone; ``None`` for a database
        server, or where the platform has no ``flock`` (Windows).

        Raises :class:`DatabaseInUseError` if another engine holds a claim that this one
        cannot share, :class:`StorageError` if the lock file cannot be opened; on a file
        system that cannot lock, warns and returns ``None``.
        """
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database or sys.platform == "win32":
            return None
        database = Path(parsed.database).expanduser().resolve()  # a link: the file it names
        lock_path = database.with_name(database.name + LOCK_SUFFIX)
        while True:
            try:
                descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise StorageError(
                    f"cannot open the lock file {lock_path} beside the database: "
                    f"{error.strerror or error}"
                ) from error
            try:
                had = _locked(descriptor, shared=shared)
            except OSError as error:  # a file system without flock (some network ones)
                os.close(descriptor)
                log.warning(
                    "%s cannot be locked (%s): nothing keeps a second Memory off this "
                    "database; open Memories that share it with leases",
                    lock_path,
                    error.strerror or error,
                )
                return None
            current = _same_file(descriptor, lock_path)
            if had and current:
                return cls(lock_path, descriptor)
            os.close(descriptor)
            if current:
                raise DatabaseInUseError(_refusal(database, shared=shared))
            # Its last holder removed it between our open and our lock: take the new one.

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
            if _locked(descriptor, shared=False) and _same_file(descriptor, self.lock_path):
                self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)


def _locked(descriptor: int, *, shared: bool) -> bool:
    """Take ``flock`` on ``descriptor`` without waiting; whether it was had."""
    import fcntl  # not on Windows, where take() returns before

    try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``descriptor``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _refusal(database: Path, *, shared: bool) -> str:
    holder = "a Memory without leases" if shared else "another Memory"
    return (
        f"the SQLite file {database} is open in {holder} (in this process or another): "
        "Memories that share a SQLite file must all be opened with "
        "MemoryConfig(leases=True); otherwise open one Memory per file and share it"
    )
