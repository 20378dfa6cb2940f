"""Persistence of user logs: eventsourcing over SQLAlchemy, chosen by configuration.

:class:`EventStore` is the one door to the database for the domain. It loads a user's log
(from its latest snapshot), appends the pending events of many logs in ONE transaction
(group commit) while letting the caller write its projection rows in that same
transaction, reads a log's events back, and follows the whole notification log in order.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import random
import re
import select as io_select
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit
from uuid import UUID

import sqlalchemy.exc
from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Mapper,
    StoredEvent,
)
from eventsourcing.utils import resolve_topic
from sqlalchemy import and_, bindparam, func, inspect, or_, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.util import asbool

from events._codec import Decoder, Encoder, Stored
from events._erased_ids import drop_passed_guard, keep_erased_ids_unused
from events._readers import ThreadReaders
from events._sequence import guard_sequence
from events.commits_elsewhere import CommitsElsewhere
from events.errors import (
    ConflictError,
    ConnectionLostError,
    DatabaseInUseError,
    InvalidInputError,
    MemveeError,
    NewerEventError,
    NotFoundError,
    StorageError,
    UnreadableEventError,
    first_line,
)
from events.file_hold import FileHold, file_ident
from events.transcoding import (
    CompactMapper,
    register_time_transcodings,
    time_fields,
    time_from_stored,
)
from events.user_log import EVENT_CLASSES, UserLog, user_log_id

__all__ = [
    "PAST_ANY_VERSION",
    "Durability",
    "EventStore",
    "LoadedLog",
    "Recorded",
    "StoredSnapshot",
    "Unread",
    "check_db_path",
    "driver_url",
    "exported_state",
    "redacted_url",
    "refuse_foreign_database",
    "refuse_foreign_sqlite",
    "sqlite_file",
    "sqlite_url",
    "url_secrets",
]

log = logging.getLogger("memvee.events")

_ORIGINS_NOTED = 100_000
"""How many logs the writer remembers as checked (see :meth:`EventStore._check_origins`)."""

PAST_ANY_VERSION = 2**62
"""A version no log reaches, that every database's integers hold: the open end of a
range of versions."""

StoredSnapshot = StoredEvent
"""A snapshot of a log, encoded as stored (see :meth:`EventStore.snapshot_of`)."""

Durability = Literal["full", "normal"]
"""SQLite durability: ``full`` survives power loss (synchronous=FULL, the default);
``normal`` survives a process kill and is ~2x faster (synchronous=NORMAL)."""


class LoadedLog(NamedTuple):
    """A user's log as loaded, and the snapshot it was loaded from (version 0 and no bytes
    when none was); ``passed_over`` when its latest snapshot could not be used (damaged,
    or older than the state) and the log was replayed from its first event: its owner
    stores a fresh one, or every load would replay it all again."""

    log: UserLog | None
    snapshot_version: int
    snapshot_bytes: int
    passed_over: bool = False


class Recorded(NamedTuple):
    """A domain event with its position in the application-wide notification log.

    A named tuple, not a frozen dataclass: as immutable, and made in a third of the time
    (a frozen dataclass sets each field through ``object.__setattr__``), which counts
    where a rebuild reads a page of tens of thousands of events."""

    notification_id: int
    event: DomainEventProtocol[Any]


@dataclass(frozen=True, slots=True)
class Unread:
    """An event of the notification log that cannot be read, passed over by a read that
    asked to go on (:meth:`EventStore.notifications`): one damaged log stops no other."""

    notification_id: int
    error: UnreadableEventError


@contextmanager
def _of_user(user_id: str) -> Iterator[None]:
    """An :class:`UnreadableEventError` raised within, told of ``user_id``'s log."""
    try:
        yield
    except UnreadableEventError as error:
        raise error.of_user(user_id) from error


def _connection_lost(connection: Connection, error: BaseException) -> bool:
    """Whether ``error`` is the loss of ``connection``: the server ended its session (a
    failover, an idle-session timeout, a proxy), as SQLAlchemy tells, or as psycopg does
    for a statement sent on its own cursor."""
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    if connection.invalidated or connection.closed:
        return connection.invalidated
    driver = connection.connection.driver_connection
    return bool(getattr(driver, "broken", False))


def _lost_a_creation_race(error: BaseException) -> bool:
    text = str(error).lower()
    return "already exists" in text or "pg_type_typname_nsp_index" in text


def _file_readers(
    engine: Engine, busy_timeout_ms: int, before_open: Callable[[], None] | None = None
) -> ThreadReaders | None:
    """Per-thread read connections to the engine's SQLite file; ``None`` for a database
    only the engine's own connections can reach (in memory, or opened with options)."""
    url = engine.url
    database = url.database
    if not database or database == ":memory:" or url.query or database.startswith("file:"):
        return None
    return ThreadReaders(database, busy_timeout_ms, before_open)


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def check_db_path(
    path: str | os.PathLike[str], *, name: str = "a database path", url_name: str = "a URL"
) -> None:
    """Refuse ``path`` (called ``name``) unless it can name a SQLite file: a NUL character
    cannot, and a database URL given as a path would become folders named after the URL,
    its password included, with a new SQLite file in them (``url_name`` is where such a
    URL goes), and an empty one names the folder it is read in (an unset variable). The
    refusal never repeats the path, which may hold a password."""
    text = os.fspath(path)
    if not text.strip():
        raise InvalidInputError(f"{name} must name a file, not be empty")
    if "\x00" in text:
        raise InvalidInputError(f"{name} must not contain a NUL character")
    if text == ":memory:":
        raise InvalidInputError(f"{name} must name a file, not {_IN_MEMORY_REFUSED}")
    _check_not_named_in_memory(str(_resolved(text)))
    if _URL_SCHEME.match(text):
        raise InvalidInputError(
            f"{name} takes the path of a SQLite file, and this one is a database URL: "
            f"give it as {url_name}"
        )


def redacted_url(url: str | URL) -> str:
    """``url`` as it may be shown: its password, and every query parameter that may hold
    one (libpq also takes ``?password=`` and ``?sslpassword=``), as ``***``."""
    if _at_after_password(url):  # where the password ends is unknown: show none of it
        return f"{make_url(url).drivername}://***"
    parsed = make_url(url)
    secret = [key for key in parsed.query if "password" in key.lower()]
    if not secret:
        return parsed.render_as_string(hide_password=True)
    masked = parsed.update_query_dict(dict.fromkeys(secret, "***"))
    return masked.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def url_secrets(url: str) -> tuple[str, ...]:
    """The passwords ``url`` carries (its own, and those of query parameters that may hold
    one), for a log to keep out; none of a URL that does not parse, which is refused with
    its reason where it is opened."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        return ()
    found = [parsed.password or ""]
    for key, value in parsed.query.items():
        if "password" in key.lower():
            found.extend([value] if isinstance(value, str) else value)
    return tuple(secret for secret in found if secret)


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file, creating its folder if missing. A path with a
    ``?`` is given as an SQLite URI filename, percent-quoted: SQLAlchemy ends a URL's
    database at its first ``?`` and unquotes nothing before it. A file standing where a
    folder of the path should be is a :class:`NotADirectoryError` naming that file; a
    folder name longer than the file system takes is the :class:`StorageError` the open
    of that URL gives."""
    check_db_path(path)
    file = _resolved(path)
    url = f"sqlite:///{file.as_uri()}?uri=true" if "?" in str(file) else f"sqlite:///{file}"
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:  # mkdir's words, "File exists", name no problem
        raise NotADirectoryError(
            errno.ENOTDIR, os.strerror(errno.ENOTDIR), error.filename
        ) from error
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        raise StorageError(f"cannot open the event store at {url}: {error.strerror}") from error
    return url


EVENTS_TABLE = "memvee_events"
"""The event log's table (eventsourcing names it after the application, ``memvee``)."""

OWED_REWRITES_TABLE = "memvee_owed_rewrites"
"""On SQLite, one row per erasure whose scrubbing of the files has not finished yet,
numbered in order: it outlives a process killed mid-rewrite. Its ``rewritten`` is set
once a rewrite of the file (:meth:`EventStore.rewrite`) covered it, so that only the
write-ahead log's truncation is left, which any process does without rewriting the file
again (a table of an earlier memvee gets the column at the first such rewrite)."""


def _sqlite_tables(path: str) -> frozenset[str] | None:
    """The tables of the SQLite file at ``path``, read without writing to it (no journal
    mode set, no file made, an empty file left empty); ``None`` when it cannot be read so,
    and the caller's own opening says why."""
    file = Path(path).expanduser().resolve()
    try:
        if not file.is_file():
            return None
    except OSError:  # a name too long for the file system, say
        return None
    try:
        connection = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return frozenset(row[0] for row in rows)
    except sqlite3.Error:
        return None
    finally:
        connection.close()


def _missing(path: Path) -> bool:
    """Whether no file is at ``path``: none there, or a loop of symbolic links that leads
    to none. One that cannot be looked up (a name too long for the file system, a folder
    that may not be searched) is not said missing: the open that follows refuses it,
    saying why."""
    try:
        path.stat()
    except OSError as error:
        return error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
    return False


def _resolved(path: str | Path) -> Path:
    """``path`` made absolute, its symbolic links followed; a loop of them, which leads to
    no file, is a :class:`StorageError` saying so (pathlib's own is a RuntimeError before
    Python 3.13). The refusal does not repeat the path, which may hold a password."""
    looped = StorageError("the SQLite file's path is a loop of symbolic links: it leads to no file")
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError as error:
        raise looped from error
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise looped from error


def refuse_foreign_sqlite(path: str) -> None:
    """Raise :class:`InvalidInputError` if the SQLite file at ``path`` holds another
    program's tables and no memvee log: a command that may create its database (``import``,
    ``serve``) then adds no tables of memvee's to it."""
    tables = _sqlite_tables(path)
    if tables and EVENTS_TABLE not in tables:
        raise InvalidInputError(
            f"{path} holds another program's tables and no memvee log; memvee adds none "
            "of its own to it (give a new file, or one of memvee's)"
        )


def _still_stored(path: Path | None, opened: tuple[int, int]) -> bool:
    """Whether the database file opened as ``opened`` (device, inode) is still a file: at
    ``path``, or moved elsewhere (its folder renamed), as this process's open descriptors
    of it tell (Linux). Deleted, or replaced by another file, a write to it is lost."""
    if file_ident(path) == opened:
        return True
    held = _held_open(opened)
    return held is not None and held.st_nlink > 0


def _held_open(ident: tuple[int, int]) -> os.stat_result | None:
    """The status of the file ``ident`` (device, inode) if this process has it open
    (read through ``/proc/self/fd``, Linux), else ``None``."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            found = os.stat(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == ident:
            return found
    return None


def refuse_hard_links(path: str) -> None:
    """Raise :class:`StorageError` if the SQLite file at ``path`` has more than one name:
    SQLite keeps its write-ahead log and lock beside the name a file is opened by, so two
    connections through two names miss each other's writes and corrupt the file."""
    try:
        found = os.stat(Path(path).expanduser())
    except OSError:
        return  # no file yet (or none to read): opening it says why
    if stat.S_ISDIR(found.st_mode):  # every folder has two names or more
        raise StorageError(f"{path} is a folder, not a SQLite file")
    links = found.st_nlink
    if links > 1:
        raise StorageError(
            f"the SQLite file {path} has {links} names (hard links): SQLite keeps its "
            "write-ahead log beside the name a file is opened by, so writes through two "
            "names corrupt it; keep one name (find the others with `find / -samefile "
            f"{path}`), or copy the file"
        )


def sqlite_file(parsed: URL) -> str | None:
    """The path of the file a SQLite URL names, an SQLite URI filename's
    (``sqlite:///file:path?mode=ro&uri=true``) included; ``None`` for another backend or an
    in-memory database."""
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path and path.startswith("file:"):
        path = None if parsed.query.get("mode") == "memory" else unquote(urlsplit(path).path)
    return None if path in (None, "", ":memory:") else path


def refuse_foreign_database(url: str) -> None:
    """:func:`refuse_foreign_sqlite` for the file a SQLite URL names; a URL of another
    backend, or of an in-memory database, is let through."""
    path = sqlite_file(make_url(url))
    if path is not None:
        refuse_foreign_sqlite(path)


def _check_driver(parsed: URL) -> None:
    """Refuse a URL of a database SQLAlchemy does not know (one line, not its plugin
    loader's traceback), and a PostgreSQL URL whose driver is not installed with a line
    naming memvee's extra that installs it, not the driver's bare ``No module named``."""
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise InvalidInputError(
            f"memvee cannot use a {parsed.drivername!r} database: give a sqlite:/// or "
            "postgresql:// URL"
        ) from None
    if parsed.get_driver_name() == "psycopg" and importlib.util.find_spec("psycopg") is None:
        raise StorageError(
            "PostgreSQL needs the psycopg driver: install memvee's postgres extra "
            "(pip install 'memvee[postgres]')"
        )


_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
"""URL schemes that name no driver, and the driver of memvee's ``postgres`` extra: SQLAlchemy
would ask for psycopg2 (or know no ``postgres`` at all), while hosting platforms hand out
``postgres://`` and ``postgresql://`` URLs."""


def driver_url(url: str, *, name: str = "the database URL") -> str:
    """``url`` with the PostgreSQL driver of memvee's ``postgres`` extra (psycopg 3) when it
    names no driver; any other URL as it is.

    Text that is no database URL, or names an in-memory SQLite database, is refused with
    :class:`InvalidInputError`, called ``name``; the refusal never repeats the URL, which
    may hold a password.
    """
    # SQLAlchemy's own errors quote the whole URL, so they are not chained.
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise InvalidInputError(
            f"{name} is not a database URL (dialect[+driver]://user:password@host/database)"
        ) from None
    except ValueError:
        raise InvalidInputError(f"{name} is not a database URL: its port is no number") from None
    if _at_after_password(url):
        raise InvalidInputError(
            f"{name} holds an '@' after the one that ends its password: write each '@' in "
            "the password as %40, else part of the password is taken for the host"
        )
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInputError(
            f"memvee cannot use a {parsed.drivername!r} database: give a sqlite:/// or "
            "postgresql:// URL"
        )
    given = url if driver is None else parsed.render_as_string(hide_password=False)
    _check_not_in_memory(parsed, given)
    _check_sqlite_parameters(parsed, name)
    if "\x00" in (sqlite_file(parsed) or ""):
        raise InvalidInputError(f"{name} names a file with a NUL character, which none holds")
    return given


_PYSQLITE_PARAMETERS = frozenset(
    {"uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
)
"""The query parameters of a SQLite URL SQLAlchemy hands to Python's ``sqlite3``."""

_SQLITE_URI_PARAMETERS = frozenset(
    {"vfs", "mode", "cache", "psow", "nolock", "immutable", "modeof"}
)
"""Those SQLite itself reads from a URI filename, which SQLAlchemy passes on only with
``uri=true``."""


def _check_sqlite_parameters(parsed: URL, name: str) -> None:
    """Refuse a query parameter of a SQLite URL that nothing reads: SQLAlchemy drops
    it without a word, so a misspelt ``timout`` or a ``mode=ro`` without ``uri=true``
    (a file opened for writing after all) would go unnoticed. ``uri=true`` and a ``file:``
    name go together: either alone opens a file other than the one memvee checks."""
    if parsed.get_backend_name() != "sqlite":
        return
    uri = parsed.query.get("uri", "false")
    try:
        as_uri = asbool(uri if isinstance(uri, str) else uri[-1])
    except ValueError:
        raise InvalidInputError(
            f"{name}: the SQLite URL parameter 'uri' takes true or false"
        ) from None
    named_as_uri = (parsed.database or "").startswith("file:")
    if as_uri and not named_as_uri:
        raise InvalidInputError(
            f"{name}: uri=true needs a file: name (sqlite:///file:PATH?...&uri=true); "
            "without one SQLite takes the query for part of the file's name"
        )
    if named_as_uri and not as_uri:
        raise InvalidInputError(
            f"{name}: a file: name needs uri=true (sqlite:///file:PATH?...&uri=true); "
            "without it the name is taken for a relative path starting with 'file:'"
        )
    known = _PYSQLITE_PARAMETERS | (_SQLITE_URI_PARAMETERS if as_uri else frozenset())
    for parameter in parsed.query:
        if parameter in known:
            continue
        if parameter in _SQLITE_URI_PARAMETERS:
            raise InvalidInputError(
                f"{name}: the SQLite URL parameter {parameter!r} is read only with uri=true "
                "and a file: name (sqlite:///file:PATH?...&uri=true)"
            )
        raise InvalidInputError(
            f"{name}: unknown SQLite URL parameter {parameter!r}; SQLite URLs take "
            f"{', '.join(sorted(_PYSQLITE_PARAMETERS))}, and with uri=true "
            f"{', '.join(sorted(_SQLITE_URI_PARAMETERS))}"
        )


def _at_after_password(url: str | URL) -> bool:
    """Whether a URL with a password holds another '@' after the one that ends it, before
    its query or in a query parameter's name: SQLAlchemy ends the password at its first
    '@', so an unencoded one in it puts the rest of the password in the host (or the
    database, or the query), for every message that names them to show."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    if make_url(url).password is None:
        return False
    rest = url.partition("://")[2]
    after = rest[rest.index("@", rest.index(":")) + 1 :]  # a user name holds no ':'
    before_query, _, query = after.partition("?")
    names = (name for name, _ in parse_qsl(query, keep_blank_values=True))
    return "@" in before_query or any("@" in name for name in names)


def _check_not_in_memory(parsed: URL, given: str) -> None:
    """Refuse an in-memory SQLite database: every connection to one opens a database of
    its own, and the store's threads each use their own connection. ``given`` is the URL
    as the event store's library gets it."""
    if parsed.get_backend_name() != "sqlite":
        return
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise InvalidInputError(f"memvee needs a SQLite file, not {_IN_MEMORY_REFUSED}")
    _check_not_named_in_memory(given)


def _check_not_named_in_memory(text: str) -> None:
    """Refuse a SQLite file's path or URL holding ``:memory:`` or ``mode=memory``
    anywhere: eventsourcing_sqlalchemy reads such a URL as an in-memory database, one
    connection shared by every thread and no write lock."""
    if ":memory:" in text or "mode=memory" in text:
        raise InvalidInputError(
            "memvee cannot open a SQLite file whose path or URL holds ':memory:' or "
            "'mode=memory' anywhere: the event store would take it for an in-memory database "
            "and let writers share one connection; rename the folder or file"
        )


def _driver_commit(connection: Connection) -> None:
    """COMMIT what the driver alone wrote; a failure raised as SQLAlchemy's
    :class:`~sqlalchemy.exc.DBAPIError` (the callers of a transaction catch those)."""
    # The driver's own connection: its pool wrapper finds commit through __getattr__, once
    # an AttributeError was raised and caught (about 1 µs of every lone write).
    driver: Any = connection.connection.driver_connection
    try:
        connection.dialect.do_commit(driver)
    except sqlite3.Error as error:
        raise sqlalchemy.exc.DBAPIError.instance("COMMIT", None, error, sqlite3.Error) from error


def _discard(connection: Connection, what: str) -> None:
    """Close ``connection`` (called ``what`` in the log) for good after a failed
    transaction, whatever closing it raises: an open one keeps its transaction, and on
    SQLite the write lock every other writer waits for, until it is garbage-collected.

    When SQLAlchemy's invalidation fails, the driver's own connection is closed, which
    rolls its transaction back. A failure here is logged, never raised: the caller is
    raising the failure of the transaction, and that is the one to tell.
    """
    driver = _driver_connection(connection)
    invalidated = False
    try:
        connection.invalidate()
        invalidated = True
    except Exception as error:
        _log_discard_failure(what, "invalidated", error)
    finally:
        if not invalidated:  # a KeyboardInterrupt too: the lock is freed before it goes on
            _close_driver(driver, what)
    try:
        connection.close()
    except Exception as error:
        _log_discard_failure(what, "closed", error)
        _close_driver(driver, what)


def _driver_connection(connection: Connection) -> Any:
    """The driver's own connection under ``connection``, ``None`` once SQLAlchemy let
    go of it (invalidated, closed: it is closed already)."""
    if connection.invalidated or connection.closed:
        return None
    return connection.connection.dbapi_connection


def _close_driver(driver: Any, what: str) -> None:
    """Close the driver's connection ``driver`` of ``what``, the discard's last resort:
    closing without a commit rolls its transaction back. Closing one twice does nothing."""
    if driver is None:
        return
    try:
        driver.close()
    except Exception as error:
        _log_discard_failure(what, "closed by its driver", error)


def _log_discard_failure(what: str, done: str, error: BaseException) -> None:
    """Tell that ``what`` could not be ``done`` while it was discarded, and why: the
    failure is not raised (the transaction's own is), so the log is where it is seen. An
    interrupt (Ctrl-C) is raised, and told by whoever catches it: noted at debug only."""
    level = logging.WARNING if isinstance(error, Exception) else logging.DEBUG
    log.log(
        level,
        "%s, discarded after a failed transaction, could not be %s: %s",
        what,
        done,
        first_line(error),
    )
    log.debug("discarding %s failed", what, exc_info=True)


@contextmanager
def _transaction_on(connection: Connection, safe_url: str) -> Iterator[Connection]:
    """A transaction on ``connection``, of the pool of the database at ``safe_url``,
    committed if its body succeeds (SQLAlchemy's ``Engine.begin``, but total on failure).

    Failed, it is rolled back and the connection handed back to the pool; if either of
    those fails, the connection is discarded (:func:`_discard`) and the failure logged,
    and the body's (or the commit's) own failure is the one raised, not the rollback's.
    """
    try:
        transaction = connection.begin()
    except BaseException:
        _discard(connection, f"a connection to {safe_url}")
        raise
    try:
        yield connection
        transaction.commit()
    except BaseException:
        try:
            # Even an inactive one (a failed COMMIT): rolling it back detaches it, so the
            # pool rolls the connection back rather than keep its transaction and locks.
            transaction.rollback()
            connection.close()
        except BaseException as error:
            what = f"a connection to {safe_url}"
            _log_discard_failure(what, "rolled back and handed back to the pool", error)
            _discard(connection, what)
            if not isinstance(error, Exception):
                raise  # an interrupt goes on once the connection is freed
        raise
    connection.close()


class _WriterTransaction:
    """A write transaction of a SQLite store on its one writer connection, under its write
    lock: a class, not a generator, as it is entered on every write (a generator's
    context manager cost a lone exchange about 7,000 more instructions, 1-2 µs).

    SQLite takes one writer at a time anyway, so the writer keeps its connection
    instead of checking one out of the pool and resetting it for every transaction
    (about 12 µs of a one-exchange write). A transaction that fails discards it, so no
    state a failed transaction left behind reaches the next one.

    No SQLAlchemy transaction is begun for it: SQLAlchemy's begin sends nothing to
    pysqlite, whose driver begins the transaction at its first INSERT, UPDATE, DELETE or
    REPLACE (DDL before it is not in the transaction: a body that needs it in is one that
    holds writers off first, :meth:`EventStore.lock_writers`), and its bookkeeping cost a
    one-exchange write about 2% of its instructions. A statement sent through SQLAlchemy
    begins one itself, which is then committed through it; a COMMIT of the driver's alone
    that fails is raised as SQLAlchemy's error, as the other's is.
    """

    __slots__ = ("_connection", "_lock", "_store")

    def __init__(self, store: EventStore, lock: Any) -> None:
        self._store, self._lock = store, lock
        self._connection: Connection | None = None

    def __enter__(self) -> Connection:
        # Entered again, the same thread would wait for its own lock for ever.
        if self._connection is not None:
            raise RuntimeError("a transaction() is entered once")
        self._lock.__enter__()
        try:
            store = self._store
            connection = store._writer
            if connection is None:
                connection = store._connect_writer()
        except BaseException as error:
            self._lock.__exit__(type(error), error, error.__traceback__)
            raise
        self._connection = connection
        return connection

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        connection = self._connection
        assert connection is not None, "exited without being entered"
        try:
            if kind is None:
                try:
                    if connection.in_transaction():
                        connection.commit()
                    else:
                        _driver_commit(connection)
                    return
                except BaseException:
                    self._discard(connection)
                    raise
            self._discard(connection)
        finally:
            self._lock.__exit__(kind, error, trace)

    def _discard(self, connection: Connection) -> None:
        """Close the writer's connection for good, not handed back to the pool."""
        self._store._writer = None
        _discard(connection, f"the writer's connection to {self._store.safe_url}")


_IN_MEMORY_REFUSED = (
    "an in-memory database: each of memvee's threads opens its own connection, and would "
    "find a new, empty database there"
)


_TIME_TYPE = "datetime_iso"


def exported_state(topic: str, state: bytes) -> dict[str, Any]:
    """A stored event's state for an export: plain JSON, times as ISO 8601 strings.

    Times are stored compact or wrapped (:mod:`events.transcoding`);
    :meth:`EventStore.decode_exported` wraps them again from the event class's fields.
    """
    data: dict[str, Any] = json.loads(state)
    times = time_fields(resolve_topic(topic))
    exported: dict[str, Any] = {}
    for name, value in data.items():
        moment = time_from_stored(value, bare=name in times)
        exported[name] = value if moment is None else moment.isoformat()
    return exported


class _MemveeApplication(Application[UUID]):
    """The eventsourcing application holding every user log of one database."""

    name = "memvee"
    is_snapshotting_enabled = True

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """eventsourcing's transcodings, then memvee's compact times."""
        super().register_transcodings(transcoder)
        register_time_transcodings(transcoder)

    def construct_mapper(self) -> Mapper[UUID]:
        """eventsourcing's mapper (with any configured compressor or cipher), compact."""
        made = super().construct_mapper()
        return CompactMapper(made.transcoder, made.compressor, made.cipher)


_EVENTS_PER_INSERT = 1000
"""Events per insert statement on PostgreSQL (4 bind parameters each, of 65,535)."""

_SQLITE_ROWS_IN_ONE_INSERT = 8
"""Most events inserted with one multi-row ``VALUES`` on SQLite, whose cursor then tells
the last id (a lone exchange's write needs no statement to ask for it); more go by
executemany, one statement each count would cost SQLite's statement cache."""


def _sqlite_rows(stored: Sequence[Stored]) -> list[tuple[bytearray, int, str, bytearray]]:
    """Event (or snapshot) rows as Python's sqlite3 binds them without an adapter: the id's
    16 bytes and the state as bytearrays, stored as the very same BLOBs (for a bytes value
    sqlite3 looks for an adapter, formatting then dropping an AttributeError: about half a
    microsecond a value, and a lone exchange's write binds four)."""
    return [(bytearray(i.bytes), v, t, bytearray(s)) for i, v, t, s in stored]


_BATCHES_PER_LOOKUP = 256
"""Batches looked for per query by :meth:`EventStore.find_recorded` (3 bind parameters
each, of the 999 an old SQLite takes)."""

STALLED_TRANSACTION_SECONDS = 30
"""How long PostgreSQL keeps a memvee session idle inside a transaction before it ends
the session: a process stopped there (paused, swapped out, cut off) would otherwise hold
its locks, and a forget's or a rebuild's lock on the log stops every writer of every
process until it resumes. memvee's own transactions never wait so long between
statements. A setting of the server, the role or the URL's options is kept (0 too)."""


def _end_stalled_transactions(dbapi_connection: Any, _: Any) -> None:
    """Set :data:`STALLED_TRANSACTION_SECONDS` on a new PostgreSQL session (committed, so
    that the pool's rollback on return keeps it)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            "SELECT set_config(name, %s, false) FROM pg_settings "
            "WHERE name = 'idle_in_transaction_session_timeout' AND source = 'default'",
            (f"{STALLED_TRANSACTION_SECONDS * 1000:.0f}ms",),
        )
    finally:
        cursor.close()
    dbapi_connection.commit()


def _refuse_ended_session(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Have the pool replace a connection whose session the server ended while it sat in
    the pool (an idle-session timeout, a restart, ``pg_terminate_backend``): with no
    statement out, its socket has something to read (the server's farewell). A poll tells
    without the round trip a pre-ping would add to every transaction."""
    try:
        socket = dbapi_connection.fileno()
    except Exception as error:
        raise sqlalchemy.exc.DisconnectionError(first_line(error)) from error
    if hasattr(io_select, "poll"):
        poll = io_select.poll()
        poll.register(socket, io_select.POLLIN)
        ended = bool(poll.poll(0))
    else:
        ended = bool(io_select.select([socket], [], [], 0)[0])
    if ended:
        raise sqlalchemy.exc.DisconnectionError("the server ended the session")


HOLD_ALONE_SECONDS = 5.0
"""How long an open that must hold its SQLite file alone (:meth:`EventStore.held_alone`)
waits for the other stores to let go of it before it is refused."""

_HOLD_ALONE_BACKOFF = (0.01, 0.1)
"""The range, in seconds, of the random pause between two tries to hold a file alone:
openers waiting at the same moment try at different times, so one finds none holding it."""


def _wait_alone(hold: FileHold, refusal: str, needed: Callable[[], bool]) -> bool:
    """Hold ``hold``'s file alone (``True``), or shared again once ``needed()`` says no
    (``False``: another opener made the change meanwhile), waiting for the others'
    holds at most :data:`HOLD_ALONE_SECONDS`, past which :class:`DatabaseInUseError`
    says ``refusal``.

    Between tries it holds nothing (:meth:`FileHold.let_go`): openers that each kept their
    own share while trying to hold the file alone would refuse each other. Each try that
    fails takes its share back, which waits out another's moment alone (its change made),
    then asks ``needed()`` again."""
    give_up_at = time.monotonic() + HOLD_ALONE_SECONDS
    try:
        while not hold.alone():
            hold.share()
            if not needed():
                return False
            if time.monotonic() >= give_up_at:
                raise DatabaseInUseError(refusal)
            hold.let_go()
            time.sleep(random.uniform(*_HOLD_ALONE_BACKOFF))
        if needed():
            return True
    except BaseException:
        hold.share()
        raise
    hold.share()
    return False


class EventStore:
    """Loads, appends and follows user logs in one database.

    The caller (a user's actor) must be the single writer of a log in this process;
    version conflicts from elsewhere surface as :class:`ConflictError`. With
    ``create=False`` a database without memvee's log is refused (:class:`NotFoundError`)
    instead of given one; with ``create``, a SQLite file holding another program's tables
    and no memvee log is refused (:class:`InvalidInputError`), never written to.
    """

    def __init__(
        self,
        url: str,
        *,
        durability: Durability = "full",
        busy_timeout_ms: int = 30_000,
        pool_size: int = 10,
        create: bool = True,
    ) -> None:
        url = driver_url(url)
        parsed = make_url(url)
        _check_driver(parsed)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.safe_url = redacted_url(parsed)
        file = sqlite_file(parsed)
        self._hold: FileHold | None = None
        if file is not None:
            refuse_hard_links(file)
            if not create and _missing(Path(file).expanduser()):
                raise NotFoundError(f"no memvee database at {self.safe_url}: no such file")
            # Before anything reads the path: its journals may be another file's.
            makes = create and parsed.query.get("mode") != "ro"
            self._hold = FileHold.take(_resolved(file), create=makes)
        try:
            self._open(url, file, durability, busy_timeout_ms, pool_size, create)
        except BaseException:
            if self._hold is not None:
                self._hold.release()
            raise

    def _open(
        self,
        url: str,
        file: str | None,
        durability: Durability,
        busy_timeout_ms: int,
        pool_size: int,
        create: bool,
    ) -> None:
        """The rest of :meth:`__init__`, once the file is held: open the application and
        its engine, check the log is there (or make it), and build the statements."""
        found: frozenset[str] | None = None  # the tables, where read without writing
        if file is not None and not create:
            found = _sqlite_tables(file)  # before any connection sets WAL on it
            if found is not None and EVENTS_TABLE not in found:
                raise NotFoundError(
                    f"no memvee database at {self.safe_url}: it holds no memvee log"
                )
        elif file is not None:
            refuse_foreign_sqlite(file)  # another program's file stays as it is
        env = {
            "PERSISTENCE_MODULE": "eventsourcing_sqlalchemy",
            "SQLALCHEMY_URL": url,
            "CREATE_TABLE": "y" if create else "n",
            "IS_SNAPSHOTTING_ENABLED": "y",
        }
        for attempt in range(3):
            try:
                self._app = _MemveeApplication(env=env)
                break
            except Exception as error:
                # Processes opening a new database at once race to create its tables.
                if attempt < 2 and _lost_a_creation_race(error):
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise StorageError(
                    f"cannot open the event store at {self.safe_url}: {first_line(error)}"
                ) from error
        self._datastore: Any = getattr(self._app.recorder, "datastore")  # noqa: B009
        if self._datastore.write_lock is not None:
            # eventsourcing's is a Semaphore, written in Python around a Condition: a plain
            # lock keeps the writers one at a time as well, for less on every transaction.
            self._datastore.write_lock = threading.Lock()
        engine: Engine = self._datastore.engine
        if not self.is_sqlite:
            # A bounded pool, shared with eventsourcing. No ping at checkout (a round trip
            # per transaction): a session the server ended is seen by a poll of its socket;
            # one lost later fails its statement and is discarded with the pool's others,
            # and a write it failed before COMMIT was sent raises ConnectionLostError, which
            # the group committer sends again at once.
            engine.dispose()
            engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
            sa_event.listen(engine, "connect", _end_stalled_transactions)
            sa_event.listen(engine, "checkout", _refuse_ended_session)
            self._datastore.engine = engine
            self._datastore.session_maker = sessionmaker(bind=engine)
        if self.is_sqlite:
            synchronous = "FULL" if durability == "full" else "NORMAL"

            def _pragmas(dbapi_connection: sqlite3.Connection, _: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.execute("PRAGMA secure_delete=ON")  # deleted words zeroed: actors.erasure
                cursor.close()

            sa_event.listen(engine, "connect", _pragmas)
            engine.dispose()
        self._file = None if file is None else Path(file).expanduser().absolute()
        self._file_id = None if self._file is None else file_ident(self._file)
        if self._hold is not None and self._hold.ident is not None:
            self._file_id = self._hold.ident  # the file checked, should another be there now
        self._wal = None if file is None else f"{Path(file).expanduser().resolve()}-wal"
        self._wal_id = file_ident(self._wal)
        if self._file_id is not None:
            sa_event.listen(engine, "do_connect", lambda *_: self._refuse_another_file())
        self._readers = (
            _file_readers(engine, busy_timeout_ms, self._refuse_another_file)
            if self.is_sqlite
            else None
        )
        self.durability = durability
        self._writer: Connection | None = None
        self._rewritten = 0
        """The last erasure (:data:`OWED_REWRITES_TABLE`) a successful rewrite covered."""
        self._settled = 0
        """The last erasure this process recorded finished (:meth:`settle_rewrites`)."""
        self._events = getattr(self._app.recorder, "events_record_cls").__table__  # noqa: B009
        if not create:
            if found is None:  # the log not seen without writing yet: another backend, say
                self._require_event_log(engine)  # and read-only files and roles stay usable
        else:
            try:
                guard_sequence(engine, self._events.name)
            except Exception as error:  # a role that may write rows but not make triggers
                log.warning(
                    "the event store at %s opened without its guard of log versions: %s",
                    self.safe_url,
                    first_line(error),
                )
        snapshot_store: Any = self._app.snapshots
        snapshots = snapshot_store.recorder.events_record_cls.__table__
        events = self._events
        # Built once: SQLAlchemy then reuses their compiled form from its cache.
        self._snapshots = snapshots
        self._last_snapshot = (
            select(snapshots.c.originator_version, snapshots.c.topic, snapshots.c.state)
            .where(snapshots.c.originator_id == bindparam("log_id"))
            .order_by(snapshots.c.originator_version.desc())
            .limit(1)
        )
        self._log_events = (
            select(events.c.originator_version, events.c.topic, events.c.state)
            .where(
                events.c.originator_id == bindparam("log_id"),
                events.c.originator_version > bindparam("after"),
                events.c.originator_version <= bindparam("upto"),
            )
            .order_by(events.c.originator_version)
        )
        self._found_events = select(
            events.c.id,
            events.c.originator_id,
            events.c.originator_version,
            events.c.topic,
            events.c.state,
        )
        self._last_version = select(func.coalesce(func.max(events.c.originator_version), 0)).where(
            events.c.originator_id == bindparam("log_id")
        )
        self._max_id = select(func.coalesce(func.max(events.c.id), 0))
        self._count = select(func.count()).select_from(events)
        self._raw_ids_between = f"SELECT id FROM {events.name} WHERE id > ? AND id <= ? ORDER BY id"
        self._ids_between = (
            select(events.c.id)
            .where(events.c.id > bindparam("after"), events.c.id <= bindparam("upto"))
            .order_by(events.c.id)
        )
        self._raw_count_between = f"SELECT count(*) FROM {events.name} WHERE id > ? AND id <= ?"
        self._count_between = (
            select(func.count())
            .select_from(events)
            .where(events.c.id > bindparam("after"), events.c.id <= bindparam("upto"))
        )
        self._notifications = (
            select(
                events.c.id,
                events.c.originator_id,
                events.c.originator_version,
                events.c.topic,
                events.c.state,
            )
            .where(events.c.id > bindparam("after"))
            .order_by(events.c.id)
            .limit(bindparam("limit"))
        )
        self._raw_notifications = (
            f"SELECT id, originator_id, originator_version, topic, state FROM {events.name} "
            "WHERE id > ? ORDER BY id LIMIT ?"
        )
        self._raw_last_snapshot = (
            f"SELECT originator_version, topic, state FROM {snapshots.name} "
            "WHERE originator_id = ? ORDER BY originator_version DESC LIMIT 1"
        )
        self._raw_log_events = (
            f"SELECT originator_version, topic, state FROM {events.name} WHERE originator_id = ? "
            "AND originator_version > ? AND originator_version <= ? ORDER BY originator_version"
        )
        self._raw_origins = (
            f"SELECT originator_id, topic, state FROM {events.name} "
            "WHERE originator_version = 1 AND originator_id IN ({})"
        )
        self._origins = select(events.c.originator_id, events.c.topic, events.c.state).where(
            events.c.originator_version == 1,
            events.c.originator_id.in_(bindparam("log_ids", expanding=True)),
        )
        self._decoder = Decoder(self._app.mapper)
        self._encoder = Encoder(self._app.mapper)
        self._commits_elsewhere = CommitsElsewhere()
        self._outside_commits = 0
        self._erased_guard = self.is_sqlite
        """Whether the events table may have the triggers keeping erased ids unused, which
        the next insert drops once passed (:func:`drop_passed_guard`): any file at open
        (another process may have erased), after this store's own erasures, and once
        SQLite's data version, read to check a write's origins, tells that another
        connection committed (a ``memvee forget`` beside a ``serve``)."""
        self._origins_current: dict[int, int] = {}
        """The logs checked (by their ids' integers: a UUID is an object the collector
        walks, one per user seen, long after the user's actor stopped; an integer is not),
        each with the count of other connections' commits it was checked at."""
        self._insert_sql = (
            f"INSERT INTO {events.name} (originator_id, originator_version, topic, state) "
            "VALUES (?, ?, ?, ?)"
        )
        self._sqlite_inserts: dict[int, str] = {}
        self._insert_snapshot_sql = (
            f"INSERT OR IGNORE INTO {snapshots.name} "
            "(originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)"
        )
        self._prune_snapshots_sql = (
            f"DELETE FROM {snapshots.name} WHERE originator_id = ? AND originator_version < ?"
        )
        self._prune_snapshots = snapshots.delete().where(
            snapshots.c.originator_id == bindparam("b_log"),
            snapshots.c.originator_version < bindparam("b_version"),
        )
        self._insert_returning = self._events.insert().returning(
            self._events.c.id, sort_by_parameter_order=True
        )
        # psycopg 3: the write's statements straight to the driver, as on SQLite (through
        # SQLAlchemy each cost a one-exchange write about 100 µs more of CPU than the
        # driver's own). A multi-row VALUES inserts the events in their order (a log's
        # versions follow each other, which its guard trigger checks row by row).
        dialect = engine.dialect
        self._psycopg = dialect.name == "postgresql" and dialect.driver == "psycopg"
        kind = {c.name: c.type.compile(dialect=dialect) for c in events.columns}
        self._pg_insert_head = (
            f"INSERT INTO {events.name} (originator_id, originator_version, topic, state) VALUES "
        )
        self._pg_insert_row = (
            f"(%s::{kind['originator_id']}, %s::{kind['originator_version']}, "
            f"%s::{kind['topic']}, %s::{kind['state']})"
        )
        self._pg_inserts: dict[int, str] = {}
        self._pg_origins_sql = (
            f"SELECT originator_id, topic, state FROM {events.name} "
            f"WHERE originator_version = 1 AND originator_id = ANY(%s::{kind['originator_id']}[])"
        )
        self._pg_inserted_and_origins = (
            "SELECT id, originator_id, originator_version, "
            f"NULL::{kind['topic']}, NULL::{kind['state']} FROM inserted UNION ALL "
            f"SELECT NULL::{kind['id']}, originator_id, 1, topic, state FROM {events.name} "
            f"WHERE originator_version = 1 AND originator_id = ANY(%s::{kind['originator_id']}[])"
        )
        self._conflicts: tuple[type[BaseException], ...] = (
            IntegrityError,
            sqlalchemy.exc.IntegrityError,
            sqlite3.IntegrityError,
            dialect.loaded_dbapi.IntegrityError,
        )

    def _require_event_log(self, engine: Engine) -> None:
        """Refuse a database without memvee's event log (another program's, say): opened
        without ``create``, it is neither read as an empty memory nor written to."""
        try:
            found = inspect(engine).has_table(self._events.name)
        except Exception as error:
            self._app.close()
            raise StorageError(
                f"cannot open the event store at {self.safe_url}: {first_line(error)}"
            ) from error
        if not found:
            self._app.close()
            raise NotFoundError(f"no memvee database at {self.safe_url}: it holds no memvee log")

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, shared with the projections of the same database."""
        engine: Engine = self._datastore.engine
        return engine

    def _connect_writer(self) -> Connection:
        """Open the SQLite writer's connection (a failed transaction discarded the last).

        The first look through it counts as a commit elsewhere
        (:class:`CommitsElsewhere`), so a log begun again meanwhile is checked."""
        self._writer = self.engine.connect()
        return self._writer

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction: on SQLite on the store's one writer connection, under its
        write lock (:class:`_WriterTransaction`); elsewhere on a pooled connection."""
        lock = self._datastore.write_lock
        if lock is None:
            return _transaction_on(self.engine.connect(), self.safe_url)
        return _WriterTransaction(self, lock)

    @contextmanager
    def held_alone(self, refusal: str, needed: Callable[[], bool]) -> Iterator[None]:
        """Keep every other store, in this process or another, off this SQLite file while
        the block runs, if ``needed()`` still says so once the file is held alone: a
        change that stores running elsewhere would not follow (an older memvee's, say) is
        made under it, and one opening meanwhile waits until the block ends.

        While another has the file open, the opener waits for it, letting go of its own
        hold meanwhile, since others opening the file at the same moment to make the same
        change wait alike (:func:`_wait_alone`): once one has made it, ``needed()`` says
        no to the others, whose blocks then run with the file shared. After
        :data:`HOLD_ALONE_SECONDS` it is refused with :class:`DatabaseInUseError`
        (saying ``refusal``), before the block runs. Where the file is not held
        (PostgreSQL; a SQLite file where no lock can be taken, said in a warning), the
        block runs as it is."""
        hold = self._hold
        if hold is None and self.is_sqlite:
            log.warning(
                "%s cannot be held alone here (no lock on its file system): it is changed "
                "without checking that no other process, an older memvee's, has it open",
                self.safe_url,
            )
        if hold is None or not hold.held:
            yield
            return
        alone = _wait_alone(hold, refusal, needed)
        try:
            yield
        finally:
            if alone:
                hold.share()

    def load(self, user_id: str) -> UserLog | None:
        """The log of ``user_id`` from its latest snapshot and later events, or ``None``."""
        return self.load_log(user_id).log

    def load_log(self, user_id: str) -> LoadedLog:
        """The log of ``user_id`` (see :meth:`load`) and the snapshot it was loaded from.

        A snapshot that cannot be read (damaged, or of a layout this version cannot
        take) is passed over with a warning: the log is loaded from its first event, and
        the next snapshot replaces it. So is, quietly, a snapshot that does not tell what
        only the events before it can (:meth:`UserLog.upgrade`: how the last task ended,
        before the log kept it). An event that cannot be read, or a version left out,
        is a :class:`StorageError`: the log is the truth, and is never folded around a hole.
        """
        log_id = user_log_id(user_id)
        seen = self._outside_commits  # before reading: what it counts, the load sees
        snapshot, rows = self._snapshot_and_rows(log_id, user_id, snapshots=True)
        aggregate: Any = None
        passed_over = False
        if snapshot is not None:
            try:
                aggregate = self._decode(log_id, snapshot).mutate(None)
                whole = aggregate.upgrade()
            except Exception as error:  # a snapshot is a cache: replay the log instead
                log.warning(
                    "the snapshot of %r at version %d cannot be read (%s); loading the log "
                    "from its first event",
                    user_id,
                    snapshot[0],
                    first_line(error),
                )
                aggregate, passed_over = None, True
                snapshot, rows = self._snapshot_and_rows(log_id, user_id, snapshots=False)
            else:
                if not whole:
                    log.debug("the snapshot of %r is older than its state: replaying", user_id)
                    aggregate, passed_over = None, True
                    snapshot, rows = self._snapshot_and_rows(log_id, user_id, snapshots=False)
        expected = 1 if snapshot is None else snapshot[0] + 1
        for row in rows:
            if row[0] != expected:  # mutate would fail a bare assert, or fold the gap over
                raise StorageError(
                    f"the log of {user_id!r} is broken: version {row[0]} where {expected} "
                    f"was due, in {self.safe_url}"
                )
            try:
                aggregate = self._decode(log_id, row).mutate(aggregate)
            except NewerEventError as error:  # nothing is broken: a newer memvee reads it
                raise error.of_user(user_id) from error
            except Exception as error:
                raise StorageError(
                    f"the log of {user_id!r} is broken, in {self.safe_url}: {first_line(error)}"
                ) from error
            expected += 1
        if aggregate is None:
            return LoadedLog(None, 0, 0)
        assert isinstance(aggregate, UserLog)
        self._note_origin_current(log_id, seen)
        if snapshot is None:
            return LoadedLog(aggregate, 0, 0, passed_over)
        return LoadedLog(aggregate, snapshot[0], len(snapshot[2]))

    def _snapshot_and_rows(
        self, log_id: UUID, user_id: str, *, snapshots: bool
    ) -> tuple[Any, list[Any]]:
        """The log's latest snapshot (``None`` without one, or without ``snapshots``) and
        the rows of its events after it."""
        if self._readers is not None:
            # Straight to the driver, on the thread's own connection: the first touch of
            # every user pays this, and SQLAlchemy's statements and pool cost more than
            # the two queries.
            key = log_id.bytes
            found = (
                self._read(self._raw_last_snapshot, (key,), "load the log", user_id)
                if snapshots
                else None
            )
            snapshot = found[0] if found else None
            after = 0 if snapshot is None else snapshot[0]
            rows = self._read(
                self._raw_log_events, (key, after, PAST_ANY_VERSION), "load the log", user_id
            )
            return snapshot, list(rows)
        with self._reading("load the log", user_id), self.engine.connect() as connection:
            snapshot = (
                connection.execute(self._last_snapshot, {"log_id": log_id}).first()
                if snapshots
                else None
            )
            after = None if snapshot is None else snapshot[0]
            return snapshot, self._select_events(connection, log_id, after, None)

    def _select_events(
        self, connection: Connection, log_id: UUID, after: int | None, upto: int | None
    ) -> list[Any]:
        bounds = {"log_id": log_id, "after": after or 0, "upto": upto or PAST_ANY_VERSION}
        return list(connection.execute(self._log_events, bounds))

    def _decode(self, log_id: UUID, row: Any) -> Any:
        state = bytes(row[2]) if isinstance(row[2], memoryview) else row[2]
        return self._decoder(log_id, row[0], row[1], state)

    def append(
        self,
        batches: Sequence[Sequence[DomainEventProtocol[Any]]],
        in_transaction: Callable[[Connection, list[Recorded]], object] | None = None,
        snapshots: Sequence[StoredSnapshot] = (),
        origins: Mapping[UUID, datetime] | None = None,
    ) -> list[Recorded]:
        """Store the events of several logs in ONE transaction and return their positions.

        ``in_transaction`` runs inside that transaction (projection rows), so either the
        events and every row they imply are committed together, or nothing is.
        ``snapshots`` (see :meth:`snapshot_of`) go in the same transaction; one already
        stored at its version is left as it is, and the older snapshots of its log go.

        ``origins`` gives, for logs that existed before this append, when each began
        (``UserLog.created_on`` of the log its events were decided on). A log that no
        longer begins then was forgotten and begun again, maybe up to the very version
        these events follow, where the versions alone cannot tell: a :class:`ConflictError`.
        """
        events = [e for batch in batches for e in batch]
        if not events and not snapshots:
            return []
        stored = [self._encoder(e) for e in events]
        self._refuse_another_file()
        lost = False  # the connection, before COMMIT was sent
        try:
            with self.transaction() as connection:
                try:
                    recorded = self._write(connection, events, stored, origins)
                    if in_transaction is not None and recorded:
                        in_transaction(connection, recorded)
                    if snapshots:
                        self._insert_snapshots(connection, snapshots)
                except Exception as error:
                    lost = _connection_lost(connection, error)
                    raise
        except self._conflicts as error:
            raise ConflictError(
                f"a user log was appended to concurrently: {first_line(error)}"
            ) from error
        except MemveeError:
            raise  # ``in_transaction`` refused the write, and said why
        except Exception as error:
            kind = ConnectionLostError if lost else StorageError
            raise kind(
                f"could not store {len(events)} events in {self.safe_url}: {first_line(error)}"
            ) from error
        return recorded

    def _write(
        self,
        connection: Connection,
        events: list[DomainEventProtocol[Any]],
        stored: list[Stored],
        origins: Mapping[UUID, datetime] | None,
    ) -> list[Recorded]:
        """Insert ``events`` (``stored``, encoded) and check ``origins`` (see :meth:`append`)."""
        if origins and self._psycopg and 0 < len(stored) <= _EVENTS_PER_INSERT:
            ids = self._insert_checking_psycopg(connection, stored, origins)
        else:
            ids = self._insert(connection, stored) if stored else []
            if origins:  # after the insert: the write lock is held
                self._check_origins(connection, origins)
            if self._erased_guard and ids:  # the insert holds the write lock: see _erased_ids
                driver = connection.connection.driver_connection
                assert isinstance(driver, sqlite3.Connection)
                self._erased_guard = drop_passed_guard(driver, self._events.name)
        return [Recorded(n, e) for n, e in zip(ids, events, strict=True)]

    def _check_origins(self, connection: Connection, origins: Mapping[UUID, datetime]) -> None:
        """Refuse the write unless every log of ``origins`` still begins when it says: one
        query for all of them, their first events' times read off the stored JSON.

        On SQLite only the logs that may have changed are read: SQLite's data version
        tells the writer's connection whether another connection (another process) has
        committed since it last looked, and a log loaded or checked since then is as it
        was. Every other process's commit makes each log due for one check again.
        """
        if self.is_sqlite:
            driver = connection.connection.driver_connection
            assert driver is not None
            if self._commits_elsewhere.since_last_look(driver):
                self._outside_commits += 1
                self._erased_guard = True  # another process may have erased
            seen, checked = self._outside_commits, self._origins_current
            origins = {i: b for i, b in origins.items() if checked.get(i.int, -1) < seen}
            if not origins:
                return
            keys = [i.bytes for i in origins]
            size = 1 << (len(keys) - 1).bit_length()  # a few statements for SQLite's cache
            sql = self._raw_origins.format(", ".join("?" * size))
            found = driver.execute(sql, [*keys, *keys[-1:] * (size - len(keys))])
            rows = {UUID(bytes=row[0]): row[1:] for row in found}
        elif self._psycopg:
            driver = connection.connection.driver_connection
            assert driver is not None
            found = driver.cursor().execute(self._pg_origins_sql, (list(origins),))
            rows = {row[0]: row[1:] for row in found}
        else:
            found = connection.execute(self._origins, {"log_ids": list(origins)})
            rows = {row[0]: row[1:] for row in found}
        self._judge_origins(origins, rows)

    def _judge_origins(
        self, origins: Mapping[UUID, datetime], rows: Mapping[UUID, tuple[Any, ...]]
    ) -> None:
        """Refuse the write unless each log of ``origins`` begins, by its first event's
        ``(topic, state)`` in ``rows``, when it says (see :meth:`_check_origins`)."""
        timestamp = self._decoder.timestamp
        for log_id, began in origins.items():
            row = rows.get(log_id)
            if row is None or timestamp(log_id, 1, row[0], bytes(row[1])) != began:
                raise ConflictError(
                    "a user log was forgotten and begun again (by another process) since "
                    "this write was decided on it"
                )
        for log_id in origins:
            self._note_origin_current(log_id, self._outside_commits)

    def _note_origin_current(self, log_id: UUID, seen: int) -> None:
        """Note that ``log_id`` began as its writer knows it once ``seen`` commits of other
        connections were counted (SQLite; see :meth:`_check_origins`)."""
        if not self.is_sqlite:
            return
        checked = self._origins_current
        if len(checked) >= _ORIGINS_NOTED:
            checked.clear()  # a bound on memory: each log is checked once more
        checked[log_id.int] = seen

    def _insert(self, connection: Connection, stored: list[Stored]) -> list[int]:
        """Insert event rows; returns their notification ids in the order of ``stored``."""
        if self.is_sqlite:
            # Straight to the driver, ids as their 16 bytes (SQLAlchemy's UUID binding and
            # statement handling cost more than the insert). From its first insert this
            # transaction holds SQLite's write lock, so the new rows got consecutive ids
            # ending at last_insert_rowid().
            driver = connection.connection.driver_connection
            assert driver is not None
            bound = _sqlite_rows(stored)
            if len(stored) <= _SQLITE_ROWS_IN_ONE_INSERT:  # its cursor tells the last id
                params = [value for row in bound for value in row]
                last = driver.execute(self._sqlite_insert_sql(len(stored)), params).lastrowid
            else:
                driver.executemany(self._insert_sql, bound)
                last = driver.execute("SELECT last_insert_rowid()").fetchone()[0]
            return list(range(int(last) - len(stored) + 1, int(last) + 1))
        # No table lock: every writer folds its own events in its own transaction, so
        # the projections never need commit order to equal id order.
        if self._psycopg:
            return self._insert_psycopg(connection, stored)
        rows = [
            {"originator_id": i, "originator_version": v, "topic": t, "state": s}
            for i, v, t, s in stored
        ]
        return [row[0] for row in connection.execute(self._insert_returning, rows)]

    def _insert_psycopg(self, connection: Connection, stored: list[Stored]) -> list[int]:
        """:meth:`_insert` on psycopg: a multi-row ``VALUES`` per 1,000 events, each
        event's id read back by its log and version (``RETURNING`` promises no order)."""
        driver = connection.connection.driver_connection
        assert driver is not None
        cursor, ids = driver.cursor(), {}
        for start in range(0, len(stored), _EVENTS_PER_INSERT):
            chunk = stored[start : start + _EVENTS_PER_INSERT]
            sql = self._pg_insert_sql(len(chunk))
            found = cursor.execute(sql, [v for row in chunk for v in row]).fetchall()
            ids.update({(row[1], row[2]): row[0] for row in found})
        return [ids[i, v] for i, v, _, _ in stored]

    def _sqlite_insert_sql(self, count: int) -> str:
        """The insert of ``count`` events in one multi-row ``VALUES`` (SQLite)."""
        sql = self._sqlite_inserts.get(count)
        if sql is None:
            head, _, row = self._insert_sql.partition(" VALUES ")
            sql = self._sqlite_inserts[count] = f"{head} VALUES {', '.join([row] * count)}"
        return sql

    def _pg_insert_sql(self, count: int) -> str:
        """The insert of ``count`` events in one multi-row ``VALUES`` (psycopg), returning
        each row's id with its log and version."""
        sql = self._pg_inserts.get(count)
        if sql is None:
            marks = ", ".join([self._pg_insert_row] * count)
            sql = self._pg_inserts[count] = (
                f"{self._pg_insert_head}{marks} RETURNING id, originator_id, originator_version"
            )
        return sql

    def _insert_checking_psycopg(
        self, connection: Connection, stored: list[Stored], origins: Mapping[UUID, datetime]
    ) -> list[int]:
        """:meth:`_insert_psycopg` of one statement's events and :meth:`_check_origins`
        as ONE statement: the insert a ``WITH`` clause, its ids beside the first events
        of ``origins``' logs. The check reads the snapshot the insert runs on, taken once
        the statement holds its lock on the events, which an erasure (another process's
        forgetting of a log) holds exclusively: one that committed before is seen, and
        none can commit until this transaction ends, as with two statements.

        That snapshot does not hold the rows the statement inserts, so a log that begins
        in this very append (a new user's first write, with the next one its actor
        decided meanwhile) is judged by its first event as given here.
        """
        driver = connection.connection.driver_connection
        assert driver is not None
        rows: dict[UUID, tuple[Any, ...]] = {
            i: (t, s) for i, v, t, s in stored if v == 1 and i in origins
        }
        sql = (
            f"WITH inserted AS ({self._pg_insert_sql(len(stored))}) {self._pg_inserted_and_origins}"
        )
        params = [v for row in stored for v in row]
        params.append([i for i in origins if i not in rows])
        ids = {}
        for event_id, log_id, version, topic, state in driver.cursor().execute(sql, params):
            if event_id is None:
                rows[log_id] = (topic, state)
            else:
                ids[log_id, version] = event_id
        self._judge_origins(origins, rows)
        return [ids[i, v] for i, v, _, _ in stored]

    def _insert_snapshots(
        self, connection: Connection, snapshots: Sequence[StoredSnapshot]
    ) -> None:
        """Insert snapshot rows, passing over any already stored at its version, and delete
        the older snapshots of their logs.

        Only a log's latest snapshot is ever loaded, and a snapshot is as large as the
        log's state (a buffer of thousands of messages waiting for extraction is most of
        it): kept, every snapshot would make the store grow with the square of the log.
        """
        if self.is_sqlite:
            driver = connection.connection.driver_connection
            assert driver is not None
            rows = _sqlite_rows(
                [
                    (UUID(str(s.originator_id)), s.originator_version, s.topic, s.state)
                    for s in snapshots
                ]
            )
            driver.executemany(self._insert_snapshot_sql, rows)
            driver.executemany(self._prune_snapshots_sql, [row[:2] for row in rows])
            return
        connection.execute(
            postgresql.insert(self._snapshots).on_conflict_do_nothing(),
            [
                {
                    "originator_id": s.originator_id,
                    "originator_version": s.originator_version,
                    "topic": s.topic,
                    "state": s.state,
                }
                for s in snapshots
            ],
        )
        connection.execute(
            self._prune_snapshots,
            [{"b_log": s.originator_id, "b_version": s.originator_version} for s in snapshots],
        )

    def events_of(
        self, user_id: str, *, after: int | None = None, upto: int | None = None
    ) -> list[DomainEventProtocol[Any]]:
        """The events of ``user_id``'s log with ``after < version <= upto``, in order."""
        log_id = user_log_id(user_id)
        if not self.is_sqlite:
            with self._reading("read the events", user_id), self.engine.connect() as connection:
                rows = self._select_events(connection, log_id, after, upto)
            with _of_user(user_id):
                return [self._decode(log_id, row) for row in rows]
        # Raw rows, fetched at once: SQLite stores the id as its 16 bytes.
        bounds = (log_id.bytes, after or 0, upto or PAST_ANY_VERSION)
        raw: Sequence[Any]
        if self._readers is not None:
            raw = self._read(self._raw_log_events, bounds, "read the events", user_id)
        else:
            with self._reading("read the events", user_id), self.engine.connect() as connection:
                raw = connection.exec_driver_sql(self._raw_log_events, bounds).fetchall()
        decode = self._decoder
        with _of_user(user_id):
            return [decode(log_id, version, topic, state) for version, topic, state in raw]

    def find_recorded(
        self, batches: Sequence[Sequence[DomainEventProtocol[Any]]]
    ) -> list[list[Recorded] | None]:
        """For each batch (one log's events, at consecutive versions), its events with
        their positions if that very batch is stored, else ``None``: a write whose
        acknowledgement was lost (its connection dropped after COMMIT was sent) is found
        in the log, not written twice.

        A batch is stored when its log holds an event at each of its versions, the first
        of the same type and time as the batch's (another writer's would be of another
        time). One query per :data:`_BATCHES_PER_LOOKUP` batches.
        """
        rows: dict[tuple[Any, int], Any] = {}
        events = self._events
        try:
            with self.engine.connect() as connection:
                for start in range(0, len(batches), _BATCHES_PER_LOOKUP):
                    ranges = [
                        and_(
                            events.c.originator_id == batch[0].originator_id,
                            events.c.originator_version.between(
                                batch[0].originator_version, batch[-1].originator_version
                            ),
                        )
                        for batch in batches[start : start + _BATCHES_PER_LOOKUP]
                    ]
                    for row in connection.execute(self._found_events.where(or_(*ranges))):
                        rows[row[1], row[2]] = row
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise StorageError(
                f"could not look for {len(batches)} written batches of events in "
                f"{self.safe_url}: {first_line(error)}"
            ) from error
        return [self._stored_as(batch, rows) for batch in batches]

    def _stored_as(
        self, batch: Sequence[DomainEventProtocol[Any]], rows: Mapping[tuple[Any, int], Any]
    ) -> list[Recorded] | None:
        """``batch`` with its positions if ``rows`` (by log and version) hold it (see
        :meth:`find_recorded`), else ``None``."""
        keys = [(e.originator_id, e.originator_version) for e in batch]
        found = [rows[key] for key in keys if key in rows]
        if not batch or len(found) < len(batch):
            return None
        first: Any = batch[0]
        stored: Any = self._decode(first.originator_id, found[0][2:])
        if type(stored) is not type(first) or stored.timestamp != first.timestamp:
            return None
        return [Recorded(row[0], event) for row, event in zip(found, batch, strict=True)]

    @contextmanager
    def _reading(self, doing: str, user_id: str) -> Iterator[None]:
        """A failed read through SQLAlchemy (``doing`` of ``user_id``) as a
        :class:`StorageError`."""
        try:
            yield
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise StorageError(
                f"could not {doing} of {user_id!r} from {self.safe_url}: {first_line(error)}"
            ) from error

    def _read(
        self, statement: str, parameters: tuple[Any, ...], doing: str, user_id: str
    ) -> list[Any]:
        """The rows of a read on the calling thread's own connection (a SQLite file); a
        failed read (``doing`` of ``user_id``) is a :class:`StorageError`, and the thread's
        next read reconnects."""
        assert self._readers is not None
        try:
            return self._readers.get().execute(statement, parameters).fetchall()
        except sqlite3.Error as error:
            self._readers.discard()
            raise StorageError(
                f"could not {doing} of {user_id!r} from {self.safe_url}: {first_line(error)}"
            ) from error

    def stored_events_of(self, user_id: str, page_size: int = 1000) -> Iterator[StoredEvent]:
        """The user's events as stored (topic and serialized state), oldest first, in pages:
        a log forgotten (and maybe begun again) between pages is a :class:`StorageError`."""
        log_id = user_log_id(user_id)
        for page in self._pages_of(user_id, page_size):
            for version, topic, state in page:
                state = bytes(state) if isinstance(state, memoryview) else state
                yield StoredEvent(log_id, version, topic, state)

    def events_in_pages(
        self, user_id: str, page_size: int = 1000, *, after: int = 0, upto: int | None = None
    ) -> Iterator[DomainEventProtocol[Any]]:
        """The events of ``user_id``'s log with ``after < version <= upto``, in order, read
        in pages: a log forgotten (and maybe begun again) between pages is a
        :class:`StorageError`, never one log cut short or two spliced together."""
        log_id = user_log_id(user_id)
        for page in self._pages_of(user_id, page_size, after, upto):
            with _of_user(user_id):
                events = [self._decode(log_id, row) for row in page]
            yield from events

    def _pages_of(
        self, user_id: str, page_size: int, after: int = 0, upto: int | None = None
    ) -> Iterator[list[Any]]:
        """The rows (version, topic, state) of ``user_id``'s log past ``after`` (up to
        ``upto``), a page at a time.

        Each page is read in one snapshot with the log's first event, so that a log
        forgotten (and maybe begun again) between pages is a :class:`StorageError`, never
        one log cut short or two spliced together.
        """
        log_id = user_log_id(user_id)
        end = PAST_ANY_VERSION if upto is None else upto
        began: bytes | None = None
        first = True
        while after < end:
            with self._reading("read the events", user_id), self.reading() as connection:
                origin = self.origin(connection, user_id)
                if first:
                    began, first = origin, False
                elif origin != began:
                    raise StorageError(
                        f"user {user_id!r} was forgotten while their log was read "
                        f"(after {after} events): the events read are no longer their log"
                    )
                rows = self._select_events(connection, log_id, after, min(after + page_size, end))
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def decode_exported(
        self, user_id: str, version: int, topic: str, state: dict[str, Any]
    ) -> DomainEventProtocol[Any]:
        """An event of an export (see :func:`exported_state`) as a domain event of this store.

        Times may be plain ISO 8601 strings (as exports write them) or the transcoder's
        own ``{"_type_": "datetime_iso", ...}`` form (as older exports did).
        """
        try:
            cls = resolve_topic(topic)
        except Exception as error:
            raise ValueError(
                f"unknown event topic {topic!r} (a newer memvee wrote it? upgrade memvee to "
                "import it)"
            ) from error
        if cls not in EVENT_CLASSES:
            raise ValueError(f"unknown event topic {topic!r}")
        state = dict(state)
        for name in time_fields(cls):
            if isinstance(state.get(name), str):
                state[name] = {"_type_": _TIME_TYPE, "_data_": state[name]}
        stored = StoredEvent(
            user_log_id(user_id), int(version), topic, json.dumps(state).encode("utf-8")
        )
        return self._app.mapper.to_domain_event(stored)

    def follow(
        self, after: int = 0, page_size: int = 1000, unread: list[Unread] | None = None
    ) -> Iterator[list[Recorded]]:
        """Every event of every log after notification ``after``, in pages, in commit order;
        with ``unread``, one that cannot be read is added to it and passed over (see
        :meth:`notifications`)."""
        position = after
        while True:
            passed: list[Unread] = []
            with self.engine.connect() as connection:
                page = self.notifications(
                    connection, after=position, limit=page_size, unread=passed
                )
            if unread is None and passed:
                raise passed[0].error
            if unread is not None:
                unread += passed
            ids = [r.notification_id for r in page] + [u.notification_id for u in passed]
            if not ids:
                return
            if page:
                yield page
            position = max(ids)

    def notifications(
        self,
        connection: Connection,
        *,
        after: int,
        limit: int,
        unread: list[Unread] | None = None,
    ) -> list[Recorded]:
        """Up to ``limit`` events of every log after notification ``after``, in order.

        An event that cannot be read is an :class:`UnreadableEventError`; with ``unread``
        it is added to that list instead and left out, so that a fold of the whole log
        goes on past one damaged log (the page then holds fewer than ``limit`` events
        though the log goes on: the rows read are the page and ``unread`` together).
        """
        page: list[Recorded] = []
        if not self.is_sqlite:
            rows = connection.execute(self._notifications, {"after": after, "limit": limit})
            for row in rows:
                try:
                    page.append(Recorded(row[0], self._decode(row[1], row[2:])))
                except UnreadableEventError as error:
                    if unread is None:
                        raise
                    unread.append(Unread(row[0], error))
            return page
        # Raw rows: SQLite gives each id as 16 bytes, made into one UUID per log here.
        decode = self._decoder
        ids: dict[bytes, UUID] = {}
        driver = connection.connection.driver_connection
        assert driver is not None
        for n, raw_id, version, topic, state in driver.execute(
            self._raw_notifications, (after, limit)
        ).fetchall():
            log_id = ids.get(raw_id)
            if log_id is None:
                log_id = ids[raw_id] = UUID(bytes=raw_id)
            try:
                page.append(Recorded(n, decode(log_id, version, topic, state)))
            except UnreadableEventError as error:
                if unread is None:
                    raise
                unread.append(Unread(n, error))
        return page

    def forget(self, connection: Connection, user_id: str) -> tuple[int, int]:
        """Delete every event and snapshot of ``user_id``'s log, in the caller's transaction.

        Returns (events, snapshots) deleted. On SQLite an erasure that deleted any owes
        the file a :meth:`rewrite`, recorded in the same transaction so a process killed
        before the rewrite finishes leaves it owed to the next open. The ids of the
        deleted events are never given again (:mod:`events._erased_ids`).
        """
        log_id = user_log_id(user_id)
        highest = self.max_position(connection) if self.is_sqlite else 0
        events = connection.execute(
            self._events.delete().where(self._events.c.originator_id == log_id)
        ).rowcount
        if events and self.is_sqlite:
            keep_erased_ids_unused(connection, self._events.name, highest)
            self._erased_guard = True
        snapshots = connection.execute(
            self._snapshots.delete().where(self._snapshots.c.originator_id == log_id)
        ).rowcount
        if events + snapshots:
            self.owe_rewrite(connection)
        return events, snapshots

    def owe_rewrite(self, connection: Connection) -> None:
        """Record, in the caller's erasure transaction, that the SQLite file is owed a
        :meth:`rewrite` (nothing on PostgreSQL, whose files are not scrubbed)."""
        if not self.is_sqlite:
            return
        connection.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {OWED_REWRITES_TABLE} "
            "(erasure INTEGER PRIMARY KEY AUTOINCREMENT, rewritten INTEGER)"
        )
        connection.exec_driver_sql(f"INSERT INTO {OWED_REWRITES_TABLE} DEFAULT VALUES")

    def owed_rewrite(self, connection: Connection | None = None) -> int:
        """The last erasure no rewrite of the file covered yet (0: none is owed), read in
        ``connection`` if given: an erasure reads its own in its transaction."""
        last, rewritten = self._owed_erasures(connection)
        return last if last > rewritten else 0

    def _owed_erasures(self, connection: Connection | None = None) -> tuple[int, int]:
        """The last erasure not yet scrubbed, and the last one a rewrite recorded in the
        file covered (:data:`OWED_REWRITES_TABLE`); zeros when none is owed."""
        if not self.is_sqlite:
            return 0, 0
        if connection is None:
            with self.engine.connect() as connection:
                return self._owed_erasures(connection)
        found = inspect(connection)
        if not found.has_table(OWED_REWRITES_TABLE):
            return 0, 0
        columns = {column["name"] for column in found.get_columns(OWED_REWRITES_TABLE)}
        rewritten = (
            "max(CASE WHEN rewritten IS NOT NULL THEN erasure END)"
            if "rewritten" in columns
            else "0"
        )
        last, through = connection.exec_driver_sql(
            f"SELECT max(erasure), {rewritten} FROM {OWED_REWRITES_TABLE}"
        ).one()
        return int(last or 0), int(through or 0)

    @property
    def scrub_owed(self) -> bool:
        """Whether an erasure's scrubbing of the SQLite files has not finished: its
        rewrite (:attr:`rewrite_owed`), or the write-ahead log's truncation after it."""
        last, _ = self._owed_erasures()
        return last > 0

    @property
    def rewrite_owed(self) -> bool:
        """Whether an erasure's words may be left in the unused space of live pages
        (SQLite): an erasure's rewrite, of this process or an earlier one, not finished."""
        return self.owed_rewrite() > self._rewritten

    def last_version(self, user_id: str) -> int:
        """The version of ``user_id``'s last event, as the log has it (0: no log here):
        never a projection's, which a rebuild may be refilling."""
        with self.engine.connect() as connection:
            found = connection.execute(self._last_version, {"log_id": user_log_id(user_id)})
            return int(found.scalar_one())

    def holds(self, connection: Connection, user_id: str, version: int) -> bool:
        """Whether ``user_id``'s log has an event at ``version`` (read in ``connection``)."""
        found = self._select_events(connection, user_log_id(user_id), version - 1, version)
        return bool(found)

    def user_of_log(self, log_id: UUID) -> str | None:
        """The user whose log ``log_id`` is, read from its first event (``None`` with no
        such log): a log known by its id alone is named once that event reads. Raises
        :class:`UnreadableEventError` if it cannot be read."""
        with self.engine.connect() as connection:
            found = self._select_events(connection, log_id, 0, 1)
        if not found:
            return None
        first = self._decode(log_id, found[0])
        return first.user_id if isinstance(first, UserLog.Registered) else None

    def origin(self, connection: Connection, user_id: str) -> bytes | None:
        """The stored first event of ``user_id``'s log, ``None`` with no log (read in
        ``connection``): a log forgotten and begun again has another, so a reader of many
        pages can tell that the log it began with is still the one stored."""
        found = self._select_events(connection, user_log_id(user_id), 0, 1)
        return bytes(found[0][2]) if found else None

    def lock_writers(self, connection: Connection) -> None:
        """Hold off every other writer of the log until ``connection``'s transaction ends."""
        if self.is_sqlite:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text(f"LOCK TABLE {self._events.name} IN EXCLUSIVE MODE"))

    def rewrite(self, through: int | None = None) -> None:
        """Rewrite the SQLite file from its live rows alone (``VACUUM``), with every other
        writer held off meanwhile (no-op elsewhere), unless a rewrite that succeeded
        already covered erasure ``through`` (:meth:`owed_rewrite`; every one by default),
        this process's or another's: each records it in the file, for :meth:`settle_rewrites`.

        ``secure_delete`` zeroes deleted rows and freed pages, but a page SQLite rebuilt
        while rows moved between pages keeps their former bytes in its unused middle, out of
        reach of a later deletion: only rewriting every page leaves no erased words there.
        A rewrite covers the erasures committed before it starts, so one running when
        another erasure commits does not count for it. Raises :class:`StorageError` (a full
        disk, say); the rewrite stays owed until one succeeds.
        """
        lock = self._datastore.write_lock
        if not self.is_sqlite or lock is None:
            return
        with lock:
            try:
                with self.engine.connect() as connection:
                    covers, rewritten = self._owed_erasures(connection)
                    self._rewritten = max(self._rewritten, rewritten)
                    if covers <= self._rewritten or (
                        through is not None and through <= self._rewritten
                    ):
                        return
                    connection.commit()  # VACUUM runs outside a transaction
                    driver = connection.connection.driver_connection
                    assert driver is not None
                    driver.execute("VACUUM")
            except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
                raise StorageError(
                    f"the database file was not rewritten: {first_line(error)}"
                ) from error
            self._rewritten = max(self._rewritten, covers)
        self._record_rewritten(covers)

    def _record_rewritten(self, through: int) -> None:
        """Record in the file that a rewrite covered the erasures up to ``through``, so
        another process only truncates the write-ahead log for them. A failure is logged:
        another process then rewrites the file once more, which scrubs no less."""
        try:
            with self.transaction() as connection:
                self.lock_writers(connection)
                columns = inspect(connection).get_columns(OWED_REWRITES_TABLE)
                if "rewritten" not in {column["name"] for column in columns}:
                    connection.exec_driver_sql(
                        f"ALTER TABLE {OWED_REWRITES_TABLE} ADD COLUMN rewritten INTEGER"
                    )
                connection.exec_driver_sql(
                    f"UPDATE {OWED_REWRITES_TABLE} SET rewritten = 1 "
                    "WHERE erasure <= ? AND rewritten IS NULL",
                    (through,),
                )
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
            log.warning(
                "the rewrite of %s is not recorded in it; another process may rewrite it again: %s",
                self.safe_url,
                first_line(error),
            )

    def settle_rewrites(self) -> bool:
        """Record as finished the erasures a successful rewrite covered, once the
        write-ahead log holding its pages was truncated too: whether any was. A failure
        leaves them owed (the next open rewrites the file once more) and is logged."""
        rewritten = self._rewritten
        if not self.is_sqlite or rewritten <= self._settled:
            return False
        try:
            with self.transaction() as connection:
                settled = inspect(connection).has_table(OWED_REWRITES_TABLE) and bool(
                    connection.exec_driver_sql(
                        f"DELETE FROM {OWED_REWRITES_TABLE} WHERE erasure <= ?", (rewritten,)
                    ).rowcount
                )
            self._settled = max(self._settled, rewritten)
            return settled
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
            log.warning(
                "the erasures rewritten away stay marked owed in %s: %s",
                self.safe_url,
                first_line(error),
            )
            return False

    def max_position(self, connection: Connection | None = None) -> int:
        """The id of the last committed notification (0 for an empty database), read in
        ``connection`` if given."""
        if connection is not None:
            return int(connection.execute(self._max_id).scalar_one())
        with self.engine.connect() as connection:
            return self.max_position(connection)

    def count(self, connection: Connection | None = None) -> int:
        """How many events the store holds (erased ones are gone, so not counted), read
        in ``connection`` if given."""
        if connection is not None:
            return int(connection.execute(self._count).scalar_one())
        with self.engine.connect() as connection:
            return self.count(connection)

    def ids_between(self, connection: Connection, after: int, upto: int) -> list[int]:
        """The ids of the stored events past notification ``after`` up to ``upto``, in
        order, read in ``connection``: a page read earlier is still the log there if its
        ids are these (none came in a gap since, none was erased)."""
        if self.is_sqlite:  # a page's thousands of ids, without SQLAlchemy's rows
            driver = connection.connection.driver_connection
            assert driver is not None
            found = driver.execute(self._raw_ids_between, (after, upto)).fetchall()
            return [n for (n,) in found]
        rows = connection.execute(self._ids_between, {"after": after, "upto": upto})
        return [int(n) for n in rows.scalars()]

    def count_between(self, connection: Connection, after: int, upto: int) -> int:
        """How many stored events lie past notification ``after`` up to ``upto``, read in
        ``connection``: where a page read earlier held every id of that range, it is still
        the log there if the count is still the page's (ids are distinct integers), and
        no id is sent back."""
        if self.is_sqlite:
            driver = connection.connection.driver_connection
            assert driver is not None
            return int(driver.execute(self._raw_count_between, (after, upto)).fetchone()[0])
        found = connection.execute(self._count_between, {"after": after, "upto": upto})
        return int(found.scalar_one())

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction that sees the whole database at one point, while
        writers go on: SQLite's deferred transaction (its snapshot begins at the first
        read), PostgreSQL's REPEATABLE READ. Failed, the read's own error is raised, not
        one of ending its transaction (:func:`_transaction_on`)."""
        if self.is_sqlite:
            with _transaction_on(self.engine.connect(), self.safe_url) as connection:
                connection.exec_driver_sql("BEGIN")
                yield connection
            return
        pooled = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        with _transaction_on(pooled, self.safe_url) as connection:
            yield connection

    def gaps(self) -> list[tuple[str, int]]:
        """Every stored event that follows no stored version of its log, as (log id,
        version): such a log cannot load. The database refuses them since it has its
        guard of versions; a database written before may hold some."""
        e = self._events
        before = e.alias("before")
        follows = (
            select(before.c.originator_version)
            .where(
                before.c.originator_id == e.c.originator_id,
                before.c.originator_version == e.c.originator_version - 1,
            )
            .exists()
        )
        found = select(e.c.originator_id, e.c.originator_version).where(
            e.c.originator_version > 1, ~follows
        )
        with self.engine.connect() as connection:
            rows = connection.execute(found.order_by(e.c.id)).all()
        return [(str(UUID(bytes=i) if isinstance(i, bytes) else i), v) for i, v in rows]

    def unreadable_snapshots(self) -> list[tuple[str, int, str]]:
        """Each stored snapshot a load cannot take (damaged, or of a layout this version
        cannot read), as (log id, version, why): a load passes over it and replays the
        whole log. A snapshot table the database cannot read at all is a
        :class:`StorageError`, as it is to every load of a log with a snapshot."""
        s = self._snapshots
        query = select(s.c.originator_id, s.c.originator_version, s.c.topic, s.c.state)
        found = []
        try:
            with self.engine.connect() as connection:
                for log_id, version, topic, state in connection.execute(query):
                    try:
                        self._decode(log_id, (version, topic, state)).mutate(None).upgrade()
                    except Exception as error:  # the reason is the finding
                        found.append((str(log_id), int(version), first_line(error)))
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise StorageError(
                f"could not read the snapshots in {self.safe_url}: {first_line(error)}"
            ) from error
        return found

    def snapshot_of(self, user_log: UserLog) -> StoredSnapshot | None:
        """A snapshot of ``user_log`` at its version, encoded now (the log moves on), for
        :meth:`append` to store with the events that reach that version; ``None`` when the
        store keeps no snapshots."""
        if self._app.snapshots is None:
            return None
        # The encoder writes what the mapper would, a few times faster: a snapshot holds
        # the whole state, and its encoding holds the GIL.
        return StoredEvent(*self._encoder(Snapshot.take(user_log)))

    def take_snapshot(self, user_log: UserLog) -> bool:
        """Store a snapshot of ``user_log`` at its (committed) version, in place of the
        log's older ones, unless the log was forgotten or begun again since it was read
        (:meth:`_holds_as_loaded`). Returns whether it was stored."""
        snapshot = self.snapshot_of(user_log)
        if snapshot is None:
            return False
        with self.transaction() as connection:
            if not self._holds_as_loaded(connection, user_log):
                return False
            self._insert_snapshots(connection, [snapshot])
        return True

    def replace_snapshot(self, user_log: UserLog) -> bool:
        """Store a snapshot of ``user_log`` at its (committed) version in place of the
        log's snapshots at that version and older: one passed over at a load (damaged, or
        older than the state) may hold that very version, and would otherwise stay.

        The log was read outside this transaction: it is stored only if the log still
        holds that version and begins as loaded (:meth:`_holds_as_loaded`), so an erasure
        committed since (another process's) never gets the erased state back as a snapshot.
        Returns whether it was stored. Raises :class:`StorageError` when the database
        refuses it."""
        snapshot = self.snapshot_of(user_log)
        if snapshot is None:
            return False
        try:
            with self.transaction() as connection:
                if not self._holds_as_loaded(connection, user_log):
                    return False
                connection.execute(
                    self._prune_snapshots,
                    {"b_log": snapshot.originator_id, "b_version": snapshot.originator_version + 1},
                )
                self._insert_snapshots(connection, [snapshot])
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
            raise StorageError(
                f"could not store a snapshot of {user_log.user_id!r} in {self.safe_url}: "
                f"{first_line(error)}"
            ) from error
        return True

    def _holds_as_loaded(self, connection: Connection, user_log: UserLog) -> bool:
        """Whether the log still holds an event at ``user_log``'s version and begins as it
        did when read (the append's check of its origin, :meth:`_check_origins`): a log
        forgotten since, or begun again, gets no snapshot of the state read (told at info).

        Read in ``connection``'s transaction once it holds erasures off until it ends: on
        SQLite the write lock; on PostgreSQL a lock on the events that an erasure's
        (:meth:`lock_writers`) waits for, and that waits for one under way, taken before
        the statements that read, so they see its deletions."""
        if self.is_sqlite:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text(f"LOCK TABLE {self._events.name} IN ROW SHARE MODE"))
        try:
            self._check_origins(connection, {user_log.id: user_log.created_on})
        except ConflictError:
            held = False
        else:
            held = self.holds(connection, user_log.user_id, user_log.version)
        if not held:
            log.info(
                "no snapshot of %r stored at version %d: the log was forgotten (or begun "
                "again) since it was read",
                user_log.user_id,
                user_log.version,
            )
        return held

    def _refuse_another_file(self) -> None:
        """Raise :class:`StorageError` once the SQLite file this store opened was deleted
        or replaced: a write to it would be lost, and a connection opened by its path would
        read the file now there beside the old one's write-ahead log, and corrupt it."""
        if self._file_id is None:
            return
        if not _still_stored(self._file, self._file_id):
            raise StorageError(
                f"the database file {self._file} was deleted or replaced while open: "
                "nothing more is written to it, nor read from a file now at its path (open "
                "the Memory again)"
            )
        wal = file_ident(self._wal)
        if wal != self._wal_id:
            self._note_wal(wal)

    def _note_wal(self, found: tuple[int, int] | None) -> None:
        """Take ``found`` for the file's write-ahead log, now at its path (``None``:
        none), unless the one noted before was deleted while this process's connections
        still write to it: raise :class:`StorageError`, as a write there is in no file.

        SQLite itself deletes the log only when its last connection closes, so a log
        this process still holds open that has no name was deleted by someone else."""
        noted = self._wal_id
        if noted is not None:
            held = _held_open(noted)
            if held is not None and held.st_nlink == 0:
                raise StorageError(
                    f"the write-ahead log {self._wal} of the database file was deleted or "
                    "replaced while open: nothing more is written to it (open the Memory "
                    "again; the writes it held since the last checkpoint are in no file)"
                )
        self._wal_id = found

    def _unused_and_empty(self) -> bool:
        """Whether this store's SQLite file holds no event and no other store has it open,
        the file then held alone until :meth:`close` releases it."""
        hold = self._hold
        if hold is None or hold.ident is None or not hold.alone():
            return False
        if self._file is None or file_ident(self._file) != hold.ident:
            return False
        try:
            return self.count() == 0
        except MemveeError as error:
            log.warning("cannot tell whether %s holds events (%s): it is kept", self._file, error)
            return False

    def _stale_journals(self) -> list[tuple[Path, tuple[int, int]]]:
        """The write-ahead log and shared-memory files at the path of a file deleted or
        replaced under this store that this process holds open: its own, which SQLite's
        close leaves there (the file was unlinked) for the next opener of the path to
        read beside another file."""
        if self._file_id is None or _still_stored(self._file, self._file_id):
            return []
        found = []
        for suffix in ("-wal", "-shm"):
            journal = Path(f"{self._file}{suffix}")
            ident = file_ident(journal)
            if ident is not None and _held_open(ident) is not None:
                found.append((journal, ident))
        return found

    def close(self, *, discard_if_empty: bool = False) -> None:
        """Release every database connection (and, if the file was deleted or replaced
        meanwhile, remove the journals this store left at its path). With
        ``discard_if_empty``, a SQLite file that holds no event and that no other store,
        in this process or another, has open is removed too, with its journals: what an
        import that made the file and stored nothing leaves."""
        discard = discard_if_empty and self._unused_and_empty()
        stale = self._stale_journals()
        if self._readers is not None:
            self._readers.close()
        lock = self._datastore.write_lock
        if lock is not None:
            with lock:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
        self._app.close()
        self.engine.dispose()
        for journal, ident in stale:
            if file_ident(journal) == ident:
                journal.unlink(missing_ok=True)
                log.warning("removed %s, left by a database file deleted or replaced", journal)
        if discard:  # held alone until the release: no store opens the file meanwhile
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{Path(str(self._file)).resolve()}{suffix}").unlink(missing_ok=True)
        if self._hold is not None:
            self._hold.release()  # only now may the path be opened again: its journals are gone
