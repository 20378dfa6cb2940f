"""Which database file the open event stores of a SQLite path hold: a record beside it.

SQLite keeps a database's write-ahead log and shared memory beside the name it opened,
and nothing in them says which file they belong to: a file replaced at its path (a
backup moved over it) while a store still has the old one open leaves the old file's log
there, and a connection that opens the path reads that log beside the new file and
corrupts it for good. So every store open on a SQLite file holds a shared ``flock`` on
``<database>.memvee-held`` and that file names (device, inode) the database its holders
opened. The first holder (none other holds the lock) writes it; an opener whose path now
names another file while a holder lives is refused, before any connection opens the
path. The last holder removes the record, and the kernel drops the lock of a process
that dies, so a crash never leaves a file held.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

from events.errors import StorageError

__all__ = ["HELD_SUFFIX", "FileHold", "file_ident", "same_file", "try_flock"]

log = logging.getLogger("memvee.events")

HELD_SUFFIX = ".memvee-held"
"""What the record's name adds to the database file's."""

FileIdent = tuple[int, int]
"""A file's device and inode."""


class FileHold:
    """A store's hold on the SQLite file at a path, and the file (device, inode) it is."""

    def __init__(self, record: Path, descriptor: int, ident: FileIdent | None) -> None:
        self.record = record
        self.ident = ident
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, database: Path, *, create: bool) -> FileHold | None:
        """Hold the SQLite file at ``database`` (made empty first, with ``create``, if
        missing, so that the record names the file SQLite then opens).

        Raises :class:`StorageError` while a store (in this process or another) holds
        another file that was at this path: its journals may be there. Returns ``None``
        where nothing can be recorded (Windows, a folder that takes no new file), and
        the caller's open goes on unguarded, as before there was a record.
        """
        if sys.platform == "win32":
            return None
        record = database.with_name(database.name + HELD_SUFFIX)
        while True:
            try:
                descriptor = os.open(record, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:  # a read-only file system: no one writes there
                quiet = error.errno in _QUIET or not create or _unmakeable(database, error)
                _unguarded(record, database, error, quiet=quiet)
                return None
            try:
                hold = cls._held(record, descriptor, database, create=create)
            except StorageError:
                os.close(descriptor)
                raise
            except OSError as error:  # no flock here (some network file systems), a full disk
                os.close(descriptor)
                _unguarded(record, database, error, quiet=False)
                return None
            except BaseException:
                os.close(descriptor)
                raise
            if hold is not None:
                return hold
            os.close(descriptor)  # the last holder removed the record meanwhile: again

    @classmethod
    def _held(
        cls, record: Path, descriptor: int, database: Path, *, create: bool
    ) -> FileHold | None:
        """The hold on ``descriptor`` (the record opened), or ``None`` when the record
        was removed meanwhile and must be opened again."""
        first = _locked(descriptor, record)
        if first is None:
            return None
        ident = file_ident(database)
        if first:
            if ident is None and create:
                ident = _made_empty(database)
            _write_record(descriptor, ident)
        elif _recorded(os.pread(descriptor, 64, 0)) != ident:
            raise StorageError(
                f"the SQLite file {database} was replaced (or deleted) while a Memory, in "
                "this process or another, still has the file that was there open: its "
                "write-ahead log at that path would be read beside this file and corrupt "
                "it. Close that Memory (its close removes the old log), then open again"
            )
        return cls(record, descriptor, ident)

    @property
    def held(self) -> bool:
        """Whether the hold is still held."""
        return self._descriptor is not None

    def alone(self) -> bool:
        """Whether no other store, in this process or another, holds the file: if so, the
        hold is held alone from now on, so that none opens the file until :meth:`share`.
        If not, the hold may be left holding nothing (``flock`` converts by letting go
        first), so that the last other holder's release may remove the record meanwhile:
        :meth:`share` holds the file again, whatever this answered."""
        descriptor = self._descriptor
        return (
            descriptor is not None and try_flock(descriptor) and same_file(descriptor, self.record)
        )

    def let_go(self) -> None:
        """Hold nothing until :meth:`share`, the record kept: an opener waiting to hold
        the file alone lets another waiting alike have it first, where each keeping its
        share would keep every other from ever having it alone."""
        import fcntl  # not on Windows, where take() returns None

        descriptor = self._descriptor
        if descriptor is not None:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def share(self) -> None:
        """Hold the file shared again after :meth:`alone` or :meth:`let_go`: other stores
        may open it from now on (waits out another opener's moment alone). Where the last
        other holder removed the record meanwhile, a record naming this hold's file is
        made again (or joined, if a new opener made one): else the next opener would
        take itself for the first holder, and an open of another file put at the path
        would no longer be refused while this store has the old one open.

        Raises :class:`StorageError` if a store opened another file put at the path
        meanwhile (each would read the other's write-ahead log)."""
        import fcntl  # not on Windows, where take() returns None

        descriptor = self._descriptor
        if descriptor is None:
            return
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        if same_file(descriptor, self.record):
            return
        self._descriptor = None
        os.close(descriptor)
        self._descriptor = self._recorded_again()

    def _recorded_again(self) -> int | None:
        """The record, opened again and held shared, naming this hold's file (see
        :meth:`share`); ``None`` where it cannot be made (the store goes on unguarded,
        as :meth:`take` does)."""
        database = self.record.with_name(self.record.name.removesuffix(HELD_SUFFIX))
        while True:
            try:
                descriptor = os.open(self.record, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                _unguarded(self.record, database, error, quiet=False)
                return None
            try:
                first = _locked(descriptor, self.record)
                if first:
                    _write_record(descriptor, self.ident)
                elif first is not None and _recorded(os.pread(descriptor, 64, 0)) != self.ident:
                    raise StorageError(
                        f"the SQLite file {database} was replaced while this store had the "
                        "file that was there open, and another store has opened the new "
                        "one: each would read the other's write-ahead log at that path. "
                        "Close both, then open again"
                    )
            except BaseException:
                os.close(descriptor)
                raise
            if first is not None:
                return descriptor
            os.close(descriptor)  # the last holder removed the record meanwhile: again

    def release(self) -> None:
        """Give the hold up; the last holder removes the record. Idempotent."""

        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            if try_flock(descriptor) and same_file(descriptor, self.record):
                self.record.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot remove %s: %s", self.record, error.strerror or error)
        finally:
            os.close(descriptor)


def try_flock(descriptor: int, *, shared: bool = False) -> bool:
    """Take ``flock`` on ``descriptor`` without waiting, shared or alone; whether it was
    had (an error other than "held by another", such as no locks on this file system,
    is raised)."""
    import fcntl  # not on Windows, whose callers return before

    try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _locked(descriptor: int, record: Path) -> bool | None:
    """Lock the ``record`` open on ``descriptor``: alone, if no one holds it (``True``,
    left so for the caller to write it, then :func:`_write_record`), else shared once
    another opener's or a release's moment alone is over (``False``); ``None`` if the
    record was removed meanwhile (its holders gone), to be opened again."""
    import fcntl  # not on Windows, whose callers return before

    first = try_flock(descriptor)
    if not first:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
    if not same_file(descriptor, record):
        return None
    return first


def _write_record(descriptor: int, ident: FileIdent | None) -> None:
    """Write ``ident`` into the record held alone on ``descriptor``, then hold it shared:
    only openers wait for that moment, and they read it whole."""
    import fcntl  # not on Windows, whose callers return before

    text = b"" if ident is None else f"{ident[0]} {ident[1]}\n".encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text, 0)
    fcntl.flock(descriptor, fcntl.LOCK_SH)


def file_ident(path: str | Path | None) -> FileIdent | None:
    """The device and inode of the file at ``path`` (``None``: no file there)."""
    if path is None:
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _made_empty(database: Path) -> FileIdent | None:
    """Make an empty file at ``database`` (SQLite takes it for an empty database) and
    return what it is; ``None`` if it cannot be made (SQLite's open then says why)."""
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError:
        return None
    return file_ident(database)


def _recorded(text: bytes) -> FileIdent | None:
    """The file a record names (``None``: none, or a record that cannot be read)."""
    parts = text.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``descriptor``."""
    held = os.fstat(descriptor)
    return file_ident(path) == (held.st_dev, held.st_ino)


_QUIET = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""Why a record cannot be opened that says nothing is wrong: a read-only file system, or
a folder this user may read but not write (a reader of another user's database)."""


def _unmakeable(database: Path, error: OSError) -> bool:
    """Whether ``error``, met making the record beside a ``database`` that is not there,
    says the database cannot be made either (no such folder, one that takes no file, or a
    name the file system refuses as too long): the open that follows then fails and says
    why, and a warning first would be a second line about the same failure."""
    if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return False
    try:
        return not database.exists()
    except OSError:  # its own name is too long to look up: it cannot be there either
        return True


def _unguarded(record: Path, database: Path, error: OSError, *, quiet: bool) -> None:
    """Say that ``database`` is opened without a hold (``record`` could not be used)."""
    log.log(
        logging.DEBUG if quiet else logging.WARNING,
        "cannot hold %s (%s): an open of %s after it was replaced under another store is "
        "not refused",
        record,
        error.strerror or error,
        database,
    )
