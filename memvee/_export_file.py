"""Where ``memvee export`` writes a user's log: standard output once the whole log was
read, or the file ``--out`` names, settled before the database opens and never the
database itself or a file beside it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from actors.database_claim import LOCK_SUFFIX, VERIFY
from events import InvalidInputError, sqlite_file
from events.file_hold import HELD_SUFFIX
from memvee._output import STDOUT

__all__ = ["ExportFile", "database_files", "is_standard_output", "print_lines"]

_SPOOL_BYTES = 16 * 1024 * 1024
"""How much of an export to stdout waits in memory before it goes to a temporary file."""


def is_standard_output(path: Path) -> bool:
    """Whether ``path`` is the file standard output writes to (``/dev/stdout``, or the
    file it was sent to), whose own descriptor, not a second one, must write the log."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # no such file; no descriptor (a test's)
        return False


_BESIDE_DATABASE = ("-wal", "-shm", "-journal", LOCK_SUFFIX, VERIFY.suffix, HELD_SUFFIX)
"""The files SQLite and memvee keep beside a database file."""


def database_files(url: str) -> list[Path]:
    """The SQLite database ``url`` names and the files beside it (:data:`_BESIDE_DATABASE`),
    by the path given and by the file a link names; none for a database server."""
    path = sqlite_file(make_url(url))
    if path is None:
        return []
    given = Path(path).expanduser()
    named = Path(os.path.realpath(given.parent)) / given.name
    files = []
    for database in dict.fromkeys([named, Path(os.path.realpath(given))]):
        files += [database, *(database.with_name(database.name + s) for s in _BESIDE_DATABASE)]
    return files


def print_lines(lines: Iterator[str]) -> None:
    """Print ``lines`` once every one of them was read: a failed export prints none, so
    ``memvee export ann > ann.jsonl`` never leaves a log cut short that looks whole. They
    wait in memory up to ``_SPOOL_BYTES``, in a temporary file past that."""
    with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, "w+", encoding="utf-8") as spool:
        for line in lines:
            spool.write(line + "\n")
        spool.seek(0)
        shutil.copyfileobj(spool, STDOUT)


_PARTIAL_PREFIX = ".memvee-export."
"""How the file an export is written to, beside its target, begins."""


class ExportFile:
    """The file ``export --out`` writes, settled before the database opens (a symbolic
    link loop, a missing descriptor are one error line then). A regular file is written
    beside and moved in place once whole, so a failed export leaves no truncated one; a
    device, a pipe or an open file of a process (``/dev/fd/N``) is opened at once and
    written through that handle: opened once the database was, ``/dev/fd/4`` was the
    database's own descriptor, and the export emptied it.

    Neither may be the database or a file beside it (:func:`database_files`): refused by
    name, and by inode (a hard link, a descriptor, another mount of it) both before the
    database opens and once it has, when its journals and memvee's files are there."""

    def __init__(self, given: Path, database: list[Path]) -> None:
        self.given = given
        self._database = database
        self._target = _linked_file(given)
        self._opened: int | None = None
        if self._target is None or (self._target.exists() and not self._target.is_file()):
            # Not truncated yet: it may be the database, which the check below refuses.
            self._opened = os.open(given, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            self._refuse_database()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the handle opened for a device, a pipe or a descriptor, if any."""
        if self._opened is not None:
            opened, self._opened = self._opened, None
            os.close(opened)

    def write(self, lines: Iterator[str]) -> int:
        """Write ``lines``; returns how many."""
        if self._opened is not None:
            self._refuse_database()
            if stat.S_ISREG(os.fstat(self._opened).st_mode):
                os.ftruncate(self._opened, 0)
            opened, self._opened = self._opened, None
            with open(opened, "w", encoding="utf-8") as file:
                return sum(file.write(line + "\n") > 0 for line in lines)
        assert self._target is not None
        return self._replace(self._target, lines)

    def _replace(self, target: Path, lines: Iterator[str]) -> int:
        """Write ``lines`` to a new file beside ``target`` and move it over ``target``. A
        symbolic link ``given`` is kept: the file it names is replaced, never the link."""
        try:
            # A prefix of its own, not the target's name: a name near the 255-byte limit,
            # with more around it, was too long for the file beside it, and the export failed.
            descriptor, name = tempfile.mkstemp(
                prefix=_PARTIAL_PREFIX, suffix=".partial", dir=target.parent
            )
        except OSError as error:  # told of the file given, not of the one made beside it
            raise OSError(error.errno, error.strerror, str(self.given)) from error
        partial = Path(name)  # a new file of its own: never one that was there, a database
        try:
            with open(descriptor, "w", encoding="utf-8") as file:
                count = sum(file.write(line + "\n") > 0 for line in lines)
            self._refuse_database()  # the database's files are all there by now
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return count

    def _refuse_database(self) -> None:
        """Refuse to write when the file written is the database or one beside it."""
        if self._opened is not None:
            written: os.stat_result | None = os.fstat(self._opened)
        else:
            assert self._target is not None
            if self._target in self._database:
                raise self._is_the_database()
            written = _stat_of(self._target)
        if written is None:
            return
        for kept in self._database:
            held = _stat_of(kept)
            if held is not None and os.path.samestat(written, held):
                raise self._is_the_database()

    def _is_the_database(self) -> InvalidInputError:
        return InvalidInputError(f"--out {self.given} is the database itself; give another file")


def _stat_of(path: Path) -> os.stat_result | None:
    """``path``'s status, its links followed; ``None`` when there is no such file (nor
    the folder it would be in)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


_MOST_LINKS = 40
"""How many symbolic links in a row :func:`_linked_file` follows, as Linux does."""


def _linked_file(path: Path) -> Path | None:
    """The path ``path`` names once its symbolic links are followed; ``None`` when one of
    them is an open file of a process (``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``):
    a file moved in place there would replace the link (as root, ``/dev/stdout`` itself),
    not the file the descriptor has open."""
    for _ in range(_MOST_LINKS):
        folder = Path(os.path.realpath(path.parent))
        if folder.parent.parent == Path("/proc") and folder.name == "fd":
            return None
        if not path.is_symlink():
            return folder / path.name
        path = path.parent / path.readlink()
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
