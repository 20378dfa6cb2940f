"""The ``memvee`` command line: read the log, replay state, rebuild and verify projections,
erase a user.

Every command takes ``--db PATH`` or ``--db-url URL``; only ``import`` creates a missing
database. The reading commands print tables for people and ``--json`` for scripts (times
in ISO 8601). Exit codes: 0 ok, 1 drift found (``verify``) or failed batch requests
(``reextract --batch-api``), 2 a failure the user can fix, said in one ``error:`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as _RichTable
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from typer.core import TyperGroup

from actors import TraceScrubber
from actors.database_claim import VERIFY, claim_alone
from events import (
    EventStore,
    Extractor,
    InvalidInputError,
    MemveeError,
    NotFoundError,
    StorageError,
    check_count,
    check_db_path,
    check_user_id,
    driver_url,
    refuse_foreign_database,
    refuse_foreign_sqlite,
    short_message_id,
    sqlite_file,
    sqlite_url,
)
from events.errors import (
    EmbedderError,
    NewerEventError,
    UnreadableEventError,
    database_refused,
    is_database_failure,
)
from memvee._config import DEFAULT_DB, SEARCH_EMBED_SECONDS
from memvee._console import handled_interrupt
from memvee._export_file import ExportFile, database_files, is_standard_output, print_lines
from memvee._log_redaction import RedactSecrets, exception_type
from memvee._output import (
    STDOUT,
    ErrorsUnread,
    closed_stdout_fails,
    console,
    errors,
    print_error,
    shown,
)
from memvee._retrieval import check_top_k
from memvee._server import register_commands
from memvee.audit import (
    DIRECT_LIMIT,
    MAX_USERS_PAGE,
    Audit,
    ReextractionReport,
    SourceMessage,
    catch_up_if_behind,
    require_projections,
)

if TYPE_CHECKING:
    from memvee.extractors import ClaudeExtractor
from projections import ProjectionTables, Projector, rebuild_user
from projections import rebuild as rebuild_projections
from projections import verify as verify_projections

__all__ = ["app", "main"]

_T = TypeVar("_T")

_INTERRUPTED = 128 + signal.SIGINT
"""The exit code typer gives a Ctrl-C outside a command's own run."""


class _Commands(TyperGroup):
    """Runs the commands; a failure the user can fix ends one with an ``error:`` line and
    exit code 2 (memvee's typed errors, bad input among them, and files that cannot be
    read), not a traceback. Any other exception is a bug and keeps its traceback."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """Parse the command line, where the top level's ``--help`` and ``--version`` are
        written: a reader gone meanwhile ends it as it ends a command (click exited 1)."""
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError as gone:
            raise _unread(gone) from None

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        try:
            with _ctrl_c_noted():
                done = super().invoke(ctx)
                _stop_if_interrupted()  # a Ctrl-C that something it called swallowed
                return done
        except BrokenPipeError as gone:
            raise _unread(gone) from None
        except (MemveeError, OSError) as error:
            raise _bad_input(error) from error
        except Exception as error:
            # The database refused (a read-only file, a lock held past the busy timeout, a
            # damaged file): its driver's words, never the statement and its parameters.
            if not is_database_failure(error):
                raise
            cause = getattr(error, "orig", None) or error
            raise _bad_input(database_refused(cause)) from None
        except KeyboardInterrupt:
            raise _interrupted() from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line; a usage error (an unknown option, a value of the wrong
        type) is one ``error:`` line and exit code 2, as every other failure the user can
        fix, not click's usage block."""
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            with closed_stdout_fails():
                code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.TyperException as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # `memvee` alone: the help
                show: Any = getattr(error, "show", None)
                if show is not None:
                    show()
                sys.exit(getattr(error, "exit_code", 2))
            format_message: Any = getattr(error, "format_message", None)
            told = format_message() if format_message is not None else str(error)
            sys.exit(_bad_input(InvalidInputError(told)).exit_code)
        except typer.Abort:
            sys.exit(_bad_input(InvalidInputError("aborted")).exit_code)
        except OSError as error:  # --version or --help could not be written
            sys.exit(_bad_input(error).exit_code)
        except KeyboardInterrupt:
            code = _INTERRUPTED
        if code == _INTERRUPTED:  # typer's answer to Ctrl-C while it parses or exits
            sys.exit(_interrupted().exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _unread(gone: BrokenPipeError) -> typer.Exit:
    """The output's reader went away (``memvee log ann | head``): end quietly, as a command
    killed by SIGPIPE does, with nothing more written to the pipe."""
    if not isinstance(gone, ErrorsUnread):  # stdout itself is still read
        _silence_stdout()
    return typer.Exit(code=128 + signal.SIGPIPE)


_ctrl_c_pressed = False
"""Whether a Ctrl-C came while the command ran (see :func:`_ctrl_c_noted`)."""


def _note_ctrl_c(signum: int, frame: object) -> None:
    """Python's own answer to Ctrl-C (a ``KeyboardInterrupt`` where the main thread is),
    noted in :data:`_ctrl_c_pressed`."""
    global _ctrl_c_pressed
    _ctrl_c_pressed = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """Take Ctrl-C as Python does, and note it (:func:`_note_ctrl_c`): memvee turns what an
    embedder raises that is no ``Exception`` into that embedder's failure, so a Ctrl-C
    landing in the embedding model would otherwise let a search go on by words
    (:func:`_stop_if_interrupted` asks). Only on the main thread, and only where Python's
    own handler is in place (a server installs its own). The note is cleared as the block
    ends, so a later call of a command's function in this process hears no old Ctrl-C."""
    global _ctrl_c_pressed
    _ctrl_c_pressed = False
    main = threading.current_thread() is threading.main_thread()
    noting = main and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if noting:
        signal.signal(signal.SIGINT, _note_ctrl_c)
    try:
        yield
    finally:
        if noting and signal.getsignal(signal.SIGINT) is _note_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _ctrl_c_pressed = False


def _run_async(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` under Python's own Ctrl-C handler rather than
    :func:`_note_ctrl_c`: asyncio.run takes Ctrl-C over only from Python's (cancelling
    ``main`` at its next ``await``, then raising ``KeyboardInterrupt``). Under the noting
    one a Ctrl-C landed mid-statement: right after a promotion committed, the command said
    only "interrupted", not what it had promoted."""
    noting = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is _note_ctrl_c
    )
    if noting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(main)
    finally:
        if noting and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _note_ctrl_c)


def _stop_if_interrupted() -> None:
    """End the command as interrupted if a Ctrl-C came that something it called took for
    its own failure (an embedder's): before it prints an answer where it can, else once it
    returns."""
    if _ctrl_c_pressed:
        raise KeyboardInterrupt


def _interrupted() -> typer.Exit:
    """A Ctrl-C the command handled: one ``error:`` line and exit code 2."""
    handled_interrupt()
    return _bad_input(InvalidInputError("interrupted"))


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test runner's buffer)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


app = typer.Typer(
    cls=_Commands,
    help="memvee: long-term memory for LLM agents.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class Table(_RichTable):
    """A rich table whose title, headers and cells show control characters instead of
    sending them."""

    def __init__(self, *headers: Any, **options: Any) -> None:
        if "title" in options:
            options["title"] = shown(options["title"])
        super().__init__(*(shown(h) for h in headers), **options)

    def add_row(self, *renderables: Any, **options: Any) -> None:
        super().add_row(*(shown(cell) for cell in renderables), **options)


DbOption = Annotated[str, typer.Option("--db", metavar="PATH", help="SQLite file of the memory.")]
DbUrlOption = Annotated[
    str | None, typer.Option("--db-url", metavar="URL", help="SQLAlchemy URL instead of --db.")
]


def _version(show: bool) -> None:
    if show:
        from memvee import __version__

        STDOUT.write(f"memvee {__version__}\n")
        STDOUT.flush()
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """memvee: long-term memory for LLM agents."""


def _url(db: str, db_url: str | None, *, create: bool = False) -> str:
    """The database URL of ``--db``/``--db-url``; a SQLite file must exist unless ``create``.

    So a typo in a path is an error, not a new empty database (and folder) left behind.
    """
    if db_url is not None and db != DEFAULT_DB:
        raise InvalidInputError("give --db or --db-url, not both")
    if db_url is None:
        check_db_path(db, name="--db", url_name="--db-url")
        if not create and not Path(db).expanduser().is_file():
            raise NotFoundError(f"no memvee database at {db} (check --db)")
        if create:
            refuse_foreign_sqlite(db)
        return sqlite_url(db)
    path = sqlite_file(make_url(driver_url(db_url, name="--db-url")))
    if not create and path is not None and not Path(path).is_file():
        raise NotFoundError(f"no memvee database at {path} (check --db-url)")
    if create:
        refuse_foreign_database(db_url)
    return db_url


def _rebuilding(store: EventStore) -> bool:
    """Whether the projections are being rebuilt, or a rebuild stopped midway."""
    with store.engine.connect() as connection:
        return Projector(ProjectionTables()).state(connection).rebuilding


def _store(db: str, db_url: str | None) -> EventStore:
    return EventStore(_url(db, db_url), create=False)


def _audit(db: str, db_url: str | None, *, create: bool = False) -> Audit:
    return Audit(db_url=_url(db, db_url, create=create), create=create)


def _bar(label: str, unit: str = "") -> Progress:
    """A transient progress bar that says how much of how many is done (on a terminal
    only: elsewhere it would leave an empty line in the output)."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}".rstrip()),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@app.command()
def rebuild(
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted rebuild (the next open also does).")
    ] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Rebuild only this user's rows.")
    ] = None,
) -> None:
    """Drop every projection (or one user's rows) and fold the event log again.

    Safe while the application writes: its writes are kept, and folded by the rebuild.
    The whole log is read first: an event that cannot be read (a damaged file) stops the
    rebuild before anything is dropped, since every user's rows would be gone until it
    is mended. On SQLite it then finishes the rewrite of the file an earlier erasure left
    owed, as every command that writes does.
    """
    if user is not None and resume:
        raise InvalidInputError("--resume finishes a rebuild of every projection; drop --user")
    store = _store(db, db_url)
    try:
        if user is None and not resume:
            _every_event_reads(store)
        if user is not None:
            check_user_id(user)
            if not store.events_of(user, upto=1):
                raise NotFoundError(f"no user {user!r} in this database")
            tables = ProjectionTables()
            require_projections(store, tables)
            catch_up_if_behind(store, tables)  # an older layout is refolded whole first
            folded = rebuild_user(store, user)
            TraceScrubber(store).finish_owed()
            console.print(f"rebuilt the projections of {user!r} from {folded} events")
            return
        if resume and not _rebuilding(store):
            console.print("no rebuild to resume: none was stopped midway")
            return
        with _bar("rebuilding") as bar:
            job = bar.add_task("rebuild", total=store.max_position())
            folded = rebuild_projections(
                store, resume=resume, progress=lambda done, total: bar.update(job, completed=done)
            )
        TraceScrubber(store).finish_owed()
        console.print(f"rebuilt the projections from {folded} events")
    finally:
        store.close()


def _every_event_reads(store: EventStore) -> None:
    """Read every event of the log, to refuse a rebuild that would stop at one that cannot
    be read (:class:`StorageError`, naming it) before it drops anything."""
    with _bar("reading the log") as bar:
        job = bar.add_task("read", total=store.max_position())
        try:
            for page in store.follow(page_size=10_000):
                bar.update(job, completed=page[-1].notification_id)
        except UnreadableEventError as error:
            raise _damaged(store, error, "nothing was dropped", "rebuild") from error


def _damaged(store: EventStore, error: UnreadableEventError, kept: str, then: str) -> StorageError:
    """An unreadable event, told with the user whose log it is (from the users projection,
    when it lists the log) and what to do about it: a damaged log can always be forgotten;
    one a newer memvee wrote is read by upgrading (forgetting it would lose it)."""
    users = ProjectionTables().users
    user = error.user_id
    try:
        with store.engine.connect() as connection:
            user = (
                user
                or connection.execute(
                    select(users.c.user_id).where(users.c.log_id == str(error.log_id))
                ).scalar()
            )
    except SQLAlchemyError:
        pass
    if isinstance(error, NewerEventError):
        whose = f"of log {error.log_id}" if user is None else f"of the log of {user!r}"
        return StorageError(
            f"version {error.version} {whose} was written by a newer memvee (event type "
            f"{error.topic!r}); {kept}: nothing is damaged, upgrade memvee, then {then}"
        )
    if user is None:
        return StorageError(
            f"{error}; {kept}: restore the database, or forget the user of that log (a "
            f"damaged log can always be forgotten), then {then}"
        )
    return StorageError(
        f"version {error.version} of the log of {user!r} cannot be read: {error.reason}; "
        f"{kept}: restore the database, or forget {user!r} (a damaged log can always be "
        f"forgotten: `memvee forget USER`, Memory.forget, or DELETE /v1/users/{{user}} of "
        f"`memvee serve`), then {then}"
    )


@app.command()
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Rebuild into scratch tables and report every difference from the live ones; one
    verify runs at a time on a database.

    Exits 1 when any projection row differs from the log, when a log cannot load (an event
    follows no stored version of its log, or one that cannot be read is in a log a fold
    left unfolded: table ``events``, naming the user), or when a stored snapshot cannot
    be taken by a load (table ``snapshots``). An event that cannot be read in a log the
    projections still hold (damaged after it was folded: nothing to compare its rows
    with), or of a type only a newer memvee knows, is an error naming the user or the log
    (exit 2),
    as are a snapshot table that cannot be read and projections of an older memvee's
    layout: not drift, they are compared once an open or ``memvee rebuild`` has refolded
    them. On SQLite it then finishes the rewrite of the file an earlier erasure left owed,
    as every command that writes does (it writes its scratch tables).
    """
    url = _url(db, db_url)
    claim = claim_alone(url, VERIFY)  # one verify at a time: each drops the scratch tables
    try:
        store = EventStore(url, create=False)
        try:
            require_projections(store, ProjectionTables())
            try:
                differences = verify_projections(store)
            except UnreadableEventError as error:
                raise _damaged(store, error, "nothing was compared", "verify") from error
            TraceScrubber(store).finish_owed()  # it wrote its scratch tables
        finally:
            store.close()
    finally:
        if claim is not None:
            claim.release()
    if as_json:
        _print_json([dataclasses.asdict(d) for d in differences])
    elif not differences:
        console.print("projections match the log")
    else:
        table = Table("table", "live", "rebuilt", title=f"{len(differences)} differences")
        for d in differences[:50]:
            table.add_row(d.table, repr(d.live), repr(d.rebuilt))
        console.print(table)
    if differences:
        raise typer.Exit(code=1)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RowsOption = Annotated[
    int, typer.Option("--limit", help="Print at most this many rows a table (--json: all).")
]
ROWS = 100
"""Rows a listing prints by default: a table of 50,000 rows took 20 s to print and no one
reads it; the rest is counted on stderr, and ``--json`` lists everything."""


def _print_json(data: Any) -> None:
    STDOUT.write(json.dumps(data, default=_plain, indent=2) + "\n")
    STDOUT.flush()


def _plain(value: object) -> object:
    """JSON for what ``json`` cannot write: times in ISO 8601, the rest as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _bad_input(error: Exception) -> typer.Exit:
    message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if isinstance(error, OSError) and error.filename:
        message = f"{message}: {error.filename}"
    print_error(message, type(error).__name__)
    return typer.Exit(code=2)


@app.command("log")
def log_(
    user: Annotated[str, typer.Argument(help="The user whose log to print.")],
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only events of this type (repeatable).")
    ] = None,
    from_version: Annotated[int | None, typer.Option(help="First version.")] = None,
    to_version: Annotated[int | None, typer.Option(help="Last version.")] = None,
    limit: Annotated[int, typer.Option(help="Print at most this many events.")] = 200,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """A user's event log, in order: one line per event (the whole payload with --json)."""
    check_count(limit, "--limit")
    # Checked here as well as by Audit.log, so that the error names the options as typed.
    for option, bound in (("--from-version", from_version), ("--to-version", to_version)):
        if bound is not None:
            check_count(bound, option)
    if from_version is not None and to_version is not None and from_version > to_version:
        raise InvalidInputError(
            f"--from-version {from_version} is after --to-version {to_version}: nothing between"
        )
    with _audit(db, db_url) as audit:
        events = list(
            itertools.islice(
                audit.log(
                    user,
                    types=event_type or (),
                    from_version=from_version,
                    to_version=to_version,
                ),
                min(limit, sys.maxsize - 1) + 1,
            )
        )
    more, events = events[limit:], events[:limit]
    if as_json:
        _print_json([dataclasses.asdict(e) for e in events])
    else:
        table = Table("v", "recorded", "event", "what", title=f"event log of {user!r}")
        table.columns[2].no_wrap = True
        for e in events:
            table.add_row(str(e.version), f"{e.recorded_at:%Y-%m-%d %H:%M:%S}", e.type, e.summary)
        console.print(table)
    if more:
        errors.print(f"more events follow: --from-version {more[0].version} (or a larger --limit)")


@app.command()
def state(
    user: Annotated[str, typer.Argument(help="The user whose state to replay.")],
    at: Annotated[
        str | None, typer.Option(help="A log version, or an ISO time (UTC if no zone).")
    ] = None,
    limit: RowsOption = ROWS,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """The user's buffer, tasks and knowledge as of a version or time, replayed from the log."""
    check_count(limit, "--limit")
    version, moment = _point(at)
    with _audit(db, db_url) as audit:
        replayed = audit.state(user, version=version, at=moment)
    if as_json:
        _print_json(dataclasses.asdict(replayed))
        return
    console.print(f"state of {user!r} at version {replayed.version}")
    tasks = Table("task", "trigger", "status", "covered", "entries", "error", title="tasks")
    for t in replayed.tasks[:limit]:
        tasks.add_row(
            t.task_id[:8],
            t.trigger,
            t.status,
            str(t.message_count),
            str(t.knowledge_count),
            t.error or "",
        )
    knowledge = Table("entry", "text", "from messages", title="knowledge")
    for k in replayed.knowledge[:limit]:
        sources = ", ".join(short_message_id(m) for m in k.source_message_ids)
        knowledge.add_row(k.entry_id[:8], k.text, sources)
    buffered = Table("#", "role", "content", "task", title="buffer")
    for m in replayed.buffer[:limit]:
        buffered.add_row(str(m.seq), m.role, m.content[:80], (m.task_id or "")[:8])
    console.print(tasks, knowledge, buffered)
    counts = {
        "tasks": len(replayed.tasks),
        "knowledge entries": len(replayed.knowledge),
        "buffered messages": len(replayed.buffer),
    }
    for what, count in counts.items():
        _say_more(count, limit, what)


def _say_more(count: int, limit: int, what: str) -> None:
    """Say on stderr how many ``what`` a table left out, and how to see them."""
    if count > limit:
        errors.print(f"{count - limit:,} more {what}: --json lists all (or a larger --limit)")


@app.command()
def knowledge(
    user: Annotated[str, typer.Argument(help="The user.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time: what was valid then.")
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Every entry, ended ones too.")
    ] = False,
    version: Annotated[
        str, typer.Option("--version", help="A re-extracted version's entries, not live's.")
    ] = "live",
    limit: RowsOption = ROWS,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """The user's live knowledge (or a re-extracted version's): each entry with the id
    `explain` takes, oldest first."""
    check_count(limit, "--limit")
    if history and as_of is not None:
        raise InvalidInputError("give --as-of or --history, not both")
    at = None if as_of is None else _parse_time(as_of)
    with _audit(db, db_url) as audit:
        entries = audit.knowledge(user, as_of=at, history=history, version=version)
    if as_json:
        _print_json([dataclasses.asdict(e) for e in entries])
        return
    table = Table("entry", "text", "valid from", "until", title=f"knowledge of {user!r}")
    for e in entries[:limit]:
        until = "" if e.valid_until is None else f"{e.valid_until:%Y-%m-%d %H:%M}"
        table.add_row(e.entry_id[:8], e.text, f"{e.valid_from:%Y-%m-%d %H:%M}", until)
    console.print(table if entries else f"{user!r} has no knowledge entries")
    _say_more(len(entries), limit, "knowledge entries")


@app.command()
def explain(
    user: Annotated[str, typer.Argument(help="The user the entry belongs to.")],
    entry: Annotated[str, typer.Argument(help="The knowledge entry id.")],
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """How a knowledge entry came to be: its messages, task, batch, extractor and model."""
    with _audit(db, db_url) as audit:
        found = audit.explain(user, entry)
    if as_json:
        _print_json(dataclasses.asdict(found))
        return
    console.print(Text(found.text, style="bold"))
    console.print(
        (f"task {found.task_id} ({found.trigger})" if found.task_id else found.trigger)
        + f", version {found.version}, "
        f"{found.extracted_at:%Y-%m-%d %H:%M:%S} UTC, by {found.extractor}"
        + (f" / {found.model}" if found.model else "")
        + (
            f", tokens {found.input_tokens} in / {found.output_tokens} out"
            + (f" / {found.cache_read_tokens} cached" if found.cache_read_tokens else "")
            if found.input_tokens is not None
            else ""
        )
    )
    console.print(_messages_table("from the messages", found.messages))
    if found.repeated_by:
        console.print(_messages_table("said again by", found.repeated_by))
        left_out = found.repeated_count - len(found.repeated_by)
        if left_out > 0:
            errors.print(
                f"{left_out:,} more messages said it again: the newest "
                f"{len(found.repeated_by):,} are listed"
            )
    until = "now" if found.valid_until is None else f"{found.valid_until:%Y-%m-%d %H:%M:%S}"
    console.print(f"valid from {found.valid_from:%Y-%m-%d %H:%M:%S} until {until}")
    if found.ended_reason:
        console.print(f"ended: {found.ended_reason}")
    for repair in found.repairs:
        console.print(f"repaired: {repair}")
    console.print(
        f"batch of {len(found.batch)} messages; "
        f"replaced by: {', '.join(found.replaced_by) or 'none'}; "
        f"replaces: {', '.join(found.supersedes) or 'none'}"
    )


def _messages_table(title: str, messages: list[SourceMessage]) -> Table:
    """The messages ``explain`` lists under ``title``, one a row."""
    table = Table("#", "speaker", "message", "sent", title=title)
    for m in messages:
        speaker = m.role if not m.name else f"{m.name} ({m.role})"
        table.add_row(str(m.seq), speaker, m.content, f"{m.sent_at:%Y-%m-%d %H:%M:%S}")
    return table


@app.command()
def export(
    user: Annotated[str, typer.Argument(help="The user whose log to export.")],
    out: Annotated[str | None, typer.Option(help="File to write (default: stdout).")] = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """A user's whole log as JSON Lines, to import into another database."""
    if out is not None:
        _refuse_empty(out, "--out")
        if is_standard_output(Path(out)):  # /dev/stdout: the log alone, as without --out
            out = None
    if out is None:
        with _audit(db, db_url) as audit:
            print_lines(audit.export(user))
        return
    # Settled before the database opens: /dev/fd/N then names none of its descriptors.
    with (
        ExportFile(Path(out), database_files(_url(db, db_url))) as written,
        _audit(db, db_url) as audit,
    ):
        count = written.write(audit.export(user))
    console.print(f"exported {count} events of {user!r} to {out}")


def _refuse_empty(path: str, name: str) -> None:
    """Refuse an empty ``path`` (called ``name``): as a Path it is the working folder, and
    the error would name that folder or no file at all."""
    if not path.strip():
        raise InvalidInputError(f"{name} must name a file, not be empty")


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="A JSON Lines file written by `memvee export`.")],
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    keep_lookalike_ids: Annotated[
        bool,
        typer.Option(
            "--keep-lookalike-ids",
            help="Import users whose ids a write refuses as reading like another's "
            "(written by an older memvee) as they are.",
        ),
    ] = False,
) -> None:
    """Append exported logs to this database. Run it again after it stopped: a log
    imported in part is completed, one imported whole is left; a user who has another
    log here is refused. A database file the import made and stored nothing in is
    removed again."""
    _refuse_empty(file, "FILE")
    url = _url(db, db_url, create=True)
    path = sqlite_file(make_url(driver_url(url)))
    made = path is not None and not Path(path).expanduser().exists()
    # utf-8-sig: a byte order mark (an editor's, on Windows) is not part of line 1
    with open(file, encoding="utf-8-sig") as lines:
        audit = Audit(db_url=url, create=True)
        try:
            counts = audit.import_lines(lines, keep_lookalike_ids=keep_lookalike_ids)
            if not counts:
                raise InvalidInputError(f"{file} holds no exported log: nothing to import")
        finally:
            audit.close(discard_if_empty=made)
    for user, count in counts.items():
        if count:
            console.print(f"imported {count} events of {user!r}")
        else:
            console.print(f"{user!r}: its whole log is here already")


@app.command()
def reextract(
    user: Annotated[str | None, typer.Argument(help="The user (or use --all).")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Every user.")] = False,
    extractor: Annotated[str, typer.Option(help="offline or claude.")] = "offline",
    model: Annotated[str | None, typer.Option(help="Claude model (with claude).")] = None,
    version: Annotated[str, typer.Option("--as", help="Name of the new version.")] = "reextracted",
    promote: Annotated[bool, typer.Option(help="Promote the new version at once.")] = False,
    batch_api: Annotated[
        bool,
        typer.Option(
            "--batch-api",
            help="Go through the Message Batches API (Claude only): half the price, "
            "results within 24 h; run it again to resume after a crash.",
        ),
    ] = False,
    poll: Annotated[
        float, typer.Option(help="Seconds between looks at a running Message Batch.")
    ] = 30.0,
    direct_fallback: Annotated[
        bool,
        typer.Option(
            "--direct-fallback/--no-direct-fallback",
            help="With --batch-api: send the messages of a Message Batch that failed whole "
            "with server errors a second time through the Messages API, at full price.",
        ),
    ] = True,
    direct_limit: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --batch-api: the most messages a run sends through the Messages API "
            "so; the rest wait for the next run.",
        ),
    ] = DIRECT_LIMIT,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Extract users' processed history again into a separate knowledge version.

    A message that fails alone the same way every time is left out of the version and
    listed (exit code 1, as when some Message Batches requests failed: run it again to
    retry them; those of a user forgotten while the batch ran are listed as dropped, and
    leave the exit code alone). A user whose re-extraction stops (the API down) is one
    error line, after what it left out before, and the others go on; the exit code is
    then 2 (run it again to go on), as when ``--promote`` left users unpromoted that
    another bulk run holds.
    """
    if (user is None) == (not all_users):
        raise InvalidInputError(
            "give one USER or --all, not both" if all_users else "name one USER or give --all"
        )
    if batch_api and extractor != "claude":
        raise InvalidInputError("--batch-api needs --extractor claude")
    if not poll > 0:
        raise InvalidInputError("--poll must be positive")
    chosen = _extractor(extractor, model)
    with _audit(db, db_url) as audit:
        targets = [user] if user is not None else _all_users(audit)
        audit.check_version_name(targets, version)
        if batch_api:
            _reextract_in_bulk(
                audit,
                targets,
                cast("ClaudeExtractor", chosen),
                version,
                poll,
                promote,
                direct_fallback=direct_fallback,
                direct_limit=direct_limit,
                listed=user is None,
            )
            return
        failed, left_out = _run_async(_reextract_users(audit, targets, chosen, version, promote))
        if failed or left_out:
            raise typer.Exit(code=2 if failed else 1)


async def _reextract_users(
    audit: Audit, targets: list[str], extractor: Extractor, version: str, promote: bool
) -> tuple[int, int]:
    """``reextract`` without ``--batch-api``, user after user on one event loop (the
    extractor's connections belong to it), with a progress bar. A user whose
    re-extraction fails is one ``error:`` line and the others go on; returns how many
    users failed and how many messages were left out."""
    failed = left_out = 0
    try:
        with _bar("re-extracting", "users") as bar:
            job = bar.add_task("re-extracting", total=len(targets))
            for target in targets:
                report = ReextractionReport()
                try:
                    await audit.reextract(target, extractor, version, report=report)
                except MemveeError as error:  # this user's: reported, and the others go on
                    failed += 1
                    left_out += _print_left_out(target, report)
                    if (finding := report.check_finding()) is not None:
                        console.print(Text.assemble(("check:", "yellow"), f" {target}: {finding}"))
                    print_error(f"user {target!r}: {error}")
                    continue
                finally:
                    bar.advance(job)
                left_out += _print_left_out(target, report)
                if version not in audit.unpromoted_versions(target):
                    console.print(f"{target}: nothing processed to re-extract; no {version!r}")
                    continue
                returned = audit.promote(target, version) if promote else []
                held = len(audit.knowledge(target, version="live" if promote else version))
                out = f", {len(report.left_out)} messages left out" if report.left_out else ""
                if report.recorded_elsewhere:
                    out += (
                        f", {len(report.recorded_elsewhere)} recorded meanwhile by another "
                        "run (not recorded again)"
                    )
                where = f"{version!r} promoted: {held} current in the live knowledge"
                if not promote:
                    where = f"{held} current in version {version!r}"
                console.print(f"{target}: {report.entries} entries extracted{out}; {where}")
                _print_returned(target, version, returned)
    finally:
        aclose: Any = getattr(extractor, "aclose", None)
        if aclose is not None:
            await aclose()
    return failed, left_out


def _print_left_out(user_id: str, report: ReextractionReport) -> int:
    """A line for each of the first 20 messages ``report`` left out; returns how many it
    left out in all."""
    for message_id, why in list(report.left_out.items())[:20]:
        line = f" {user_id} {message_id}: {shown(why)}"
        console.print(Text.assemble(("left out:", "yellow"), line))
    return len(report.left_out)


def _reextract_in_bulk(
    audit: Audit,
    targets: list[str],
    extractor: ClaudeExtractor,
    version: str,
    poll: float,
    promote: bool,
    *,
    direct_fallback: bool,
    direct_limit: int,
    listed: bool,
) -> None:
    """``reextract --batch-api``: submit, poll with a progress bar, collect and record;
    ``targets`` ``listed`` from the logs (``--all``) are passed over once forgotten."""
    with _bar("Message Batch", "requests") as bar:
        job = bar.add_task("batch", total=None)
        report = _run_async(
            audit.reextract_in_bulk(
                targets,
                extractor,
                version,
                poll_interval=poll,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
                direct_fallback=direct_fallback,
                direct_limit=direct_limit,
                listed=listed,
            )
        )
    console.print(
        f"{report.recorded} requests recorded ({report.entries} entries in version "
        f"{version!r}), {report.skipped} already recorded, {len(report.failed)} failed"
    )
    for request_id, error in list(report.failed.items())[:20]:
        console.print(Text.assemble(("failed:", "yellow"), f" {request_id}: {error}"))
    for request_id, why in list(report.split.items())[:20]:
        console.print(
            Text.assemble(("split:", "yellow"), f" {request_id}: {shown(why)}; sent again smaller")
        )
    for message_id, why in list(report.left_out.items())[:20]:
        console.print(Text.assemble(("left out:", "yellow"), f" {message_id}: {shown(why)}"))
    for user_id, sent in report.direct.items():
        console.print(
            Text.assemble(
                ("direct:", "yellow"),
                f" {user_id}: {sent} messages sent through the Messages API at full price "
                "(their Message Batch failed whole with server errors twice)",
            )
        )
    if report.direct_held:
        console.print(
            Text.assemble(
                ("direct:", "yellow"),
                f" {report.direct_held} more messages wait for the next run "
                f"(--direct-limit {direct_limit} a run)",
            )
        )
    for request_id in list(report.forgotten)[:20]:
        console.print(
            Text.assemble(
                ("forgotten meanwhile, dropped:", "yellow"),
                f" {request_id}: its user was forgotten before it was recorded or sent again",
            )
        )
    for user_id in report.forgotten_users:
        console.print(
            Text.assemble(
                ("forgotten meanwhile:", "yellow"),
                f" {user_id} was forgotten after the run began; nothing (more) submitted for it",
            )
        )
    for batch_id in report.lost:
        console.print(
            Text.assemble(
                ("lost:", "yellow"),
                f" Message Batch {batch_id} is not known to the API; its requests are "
                "planned again",
            )
        )
    for batch_id in report.unread:
        console.print(
            Text.assemble(
                ("dropped:", "yellow"),
                f" the results of Message Batch {batch_id} were read short run after run; "
                "what was read is recorded, the rest is planned again",
            )
        )
    for batch_id in report.probes_running:
        console.print(
            Text.assemble(
                ("probe:", "yellow"),
                f" Message Batch {batch_id} (one request of one token, made to tell why a "
                "request was refused) could not be canceled; the next run cancels it",
            )
        )
    if report.probes:
        count = len(report.probes)
        console.print(f"{count} probe Message Batch{'' if count == 1 else 'es'} canceled")
    for user_id in report.claimed:
        done = (
            "its kept requests recorded, nothing new" if user_id in report.collected else "nothing"
        )
        console.print(
            Text.assemble(
                ("claimed:", "yellow"),
                f" {user_id} is being re-extracted into {version!r} by another run; {done} "
                "submitted for it",
            )
        )
    if promote and not report.failed:
        for target in targets:
            if target not in report.claimed and target not in report.forgotten_users:
                _promote_unless_forgotten(audit, target, version)
        if report.claimed:
            print_error(
                f"{version!r} not promoted for {len(report.claimed)} of {len(targets)} users: "
                "another run holds them (claimed: above); once it ends, run this again, or "
                f"`memvee promote USER {version}`"
            )
            raise typer.Exit(code=2)
    if report.failed or report.left_out:
        raise typer.Exit(code=1)


def _promote_unless_forgotten(audit: Audit, user_id: str, version: str) -> None:
    """Promote ``version`` for ``user_id`` after a bulk run, if it is unpromoted; a user
    forgotten while the run ran is told as such and passed over, so the users after them
    are promoted still (there is nothing left of them to promote)."""
    try:
        if version in audit.unpromoted_versions(user_id):
            _print_returned(user_id, version, audit.promote(user_id, version))
    except NotFoundError:
        console.print(
            Text.assemble(
                ("forgotten meanwhile:", "yellow"),
                f" {user_id} was forgotten while the run ran; nothing to promote",
            )
        )


@app.command("promote")
def promote_(
    user: Annotated[str, typer.Argument(help="The user.")],
    version: Annotated[str, typer.Argument(help="The knowledge version to make live.")],
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Make a re-extracted knowledge version the user's live knowledge."""
    with _audit(db, db_url) as audit:
        returned = audit.promote(user, version)
    console.print(f"{version!r} is now the live knowledge of {user!r}")
    _print_returned(user, version, returned)


def _print_returned(user: str, version: str, returned: list[str]) -> None:
    """Say which processed messages a promotion sent back to the buffer, if any."""
    if returned:
        console.print(
            f"{user}: {len(returned)} processed messages that {version!r} does not cover went "
            "back to the buffer, to be extracted into the live knowledge by the next run"
        )


@app.command()
def compare(
    user: Annotated[str, typer.Argument(help="The user.")],
    a: Annotated[str, typer.Argument(help="One knowledge version.")] = "live",
    b: Annotated[str, typer.Argument(help="The other.")] = "reextracted",
    limit: RowsOption = ROWS,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Two knowledge versions of a user side by side; copies of an entry one holds more
    often than the other are listed as extra copies."""
    check_count(limit, "--limit")
    with _audit(db, db_url) as audit:
        found = audit.compare(user, a, b)
    if as_json:
        _print_json(dataclasses.asdict(found))
        return
    columns = {
        f"only in {a}": found.only_in_a,
        f"only in {b}": found.only_in_b,
        "in both": found.in_both,
    }
    if found.extra_in_a or found.extra_in_b:
        columns[f"extra copies in {a}"] = found.extra_in_a
        columns[f"extra copies in {b}"] = found.extra_in_b
    table = Table(*columns)
    rows = max(map(len, columns.values()))
    for i in range(min(rows, limit)):
        table.add_row(*(col[i] if i < len(col) else "" for col in columns.values()))
    console.print(table)
    _say_more(rows, limit, "rows")


@app.command()
def search(
    user: Annotated[str, typer.Argument(help="The user.")],
    query: Annotated[str, typer.Argument(help="The question, in plain words.")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many results.")] = 10,
    messages: Annotated[
        bool, typer.Option("--messages", help="Rank raw messages with the entries.")
    ] = False,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time: what was valid then.")
    ] = None,
    lexical: Annotated[
        bool,
        typer.Option("--lexical", help="Rank by words only, without the embedding model."),
    ] = False,
    embed_all: Annotated[
        bool,
        typer.Option(
            "--embed-all",
            help="Embed every item of the user that has no vector yet first (slow on a long "
            "backlog); by default, as retrieve does, the rest is ranked by its words.",
        ),
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """What retrieve would hand an agent for QUERY, best first on one score."""
    if lexical and embed_all:
        raise InvalidInputError("give --lexical or --embed-all, not both (--lexical embeds none)")
    check_top_k(top_k, "--top-k")
    left: list[str] = []
    with _audit(db, db_url) as audit:
        at = None if as_of is None else _parse_time(as_of)
        found = audit.search(
            user,
            query,
            top_k=top_k,
            include_messages=messages,
            as_of=at,
            embedder=False if lexical else None,
            embed_seconds=None if embed_all else SEARCH_EMBED_SECONDS,
            embed_later=left.append,
        )
    _stop_if_interrupted()
    if left:
        errors.print(
            f"some of {user!r}'s items have no vector yet and were ranked by their words (an "
            "open Memory embeds them in the background): --embed-all embeds them first"
        )
    if as_json:
        _print_json(dataclasses.asdict(found))
        return
    rows = [
        (hit.score, "entry", hit.text, f"{hit.entry.valid_from:%Y-%m-%d}") for hit in found.entries
    ] + [
        (
            m.score,
            "message" + (" (outdated)" if m.outdated else ""),
            f"{m.message.name or m.message.role}: {m.message.content}",
            f"{m.message.sent_at:%Y-%m-%d}",
        )
        for m in found.messages
    ]
    table = Table("#", "score", "kind", "text", "since / sent", title=f"{user}: {query}")
    # One score, best first, but outdated messages last: the order retrieve hands over.
    for rank, (score, kind, text, when) in enumerate(
        sorted(rows, key=lambda row: (row[1].endswith("(outdated)"), -row[0])), start=1
    ):
        table.add_row(str(rank), f"{score:.3f}", kind, text, when)
    console.print(table)


def _parse_time(value: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{value!r} is not an ISO time") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _extractor(name: str, model: str | None) -> Extractor:
    from memvee.extractors import ClaudeExtractor, OfflineExtractor

    if name == "offline":
        if model is not None:
            raise InvalidInputError(
                "--model chooses Claude's model: give it with --extractor claude"
            )
        return OfflineExtractor()
    if name == "claude":
        claude = ClaudeExtractor(model=model)
        claude.check_credentials()  # the library's own check: a key, a token or a profile
        return claude
    raise InvalidInputError(f"unknown extractor {name!r}; use offline or claude")


def _all_users(audit: Audit) -> list[str]:
    found: list[str] = []
    while page := audit.users(after=found[-1] if found else "", limit=500):
        found += [u.user_id for u in page]
    return found


@app.command()
def users(
    after: Annotated[str, typer.Option(help="Start after this user id.")] = "",
    limit: Annotated[int, typer.Option(help="Users per page.")] = 100,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """The users of the memory, with their counters, in user-id order."""
    if not 1 <= limit <= MAX_USERS_PAGE:
        raise InvalidInputError(f"--limit must be from 1 to {MAX_USERS_PAGE:,}, not {limit}")
    with _audit(db, db_url) as audit:
        page = audit.users(after=after, limit=limit)
        more = len(page) == limit and audit.users(after=page[-1].user_id, limit=1)
    if more:
        errors.print(f"more users follow: --after {page[-1].user_id!r}")
    if as_json:
        _print_json([dataclasses.asdict(u) for u in page])
        return
    if not page:
        console.print(f"no users after {after!r}" if after else "no users")
        return
    table = Table("user", "version", "messages", "buffered", "knowledge", "tasks ok", "failed")
    for u in page:
        table.add_row(
            u.user_id,
            str(u.version),
            str(u.message_count),
            str(u.buffered_count),
            str(u.knowledge_count),
            str(u.tasks_completed),
            str(u.tasks_failed),
        )
    console.print(table)


@app.command()
def stats(
    as_json: JsonOption = False, db: DbOption = DEFAULT_DB, db_url: DbUrlOption = None
) -> None:
    """Totals of the memory: events, users, messages, knowledge, tasks by status, and the
    tokens extraction spent (input, output, cached), in all and per extractor and model."""
    with _audit(db, db_url) as audit:
        totals = audit.stats()
        spend = audit.spend()
    if as_json:
        _print_json({**totals, "spend": spend})
        return
    table = Table("what", "count", title="memvee stats")
    for name, count in totals.items():
        table.add_row(name.replace("_", " "), f"{count:,}")
    console.print(table)
    if not spend:
        return
    by_model = Table(
        "extractor",
        "model",
        "calls",
        "input",
        "output",
        "cache read",
        "cache write",
        title="tokens spent",
    )
    for row in spend:
        by_model.add_row(
            row["extractor"] or "",
            row["model"] or "",
            *(f"{row[k]:,}" for k in ("calls", "input_tokens", "output_tokens")),
            *(f"{row[k]:,}" for k in ("cache_read_tokens", "cache_write_tokens")),
        )
    console.print(by_model)


@app.command()
def quarantine(
    user: Annotated[
        str | None, typer.Argument(help="The user (without: every user with any).")
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Messages set aside because they kept failing extraction, with their last error."""
    with _audit(db, db_url) as audit:
        if user is None:
            counts = audit.quarantine_counts()
            found = None
        else:
            found = audit.quarantined(user)
    if found is None:
        if as_json:
            _print_json(counts)
            return
        table = Table("user", "quarantined", title="users with quarantined messages")
        for name, count in counts.items():
            table.add_row(name, f"{count:,}")
        console.print(table if counts else "no quarantined messages")
        return
    if as_json:
        _print_json([dataclasses.asdict(m) for m in found])
        return
    table = Table(
        "#", "message", "role", "content", "attempts", "error", title=f"{user}: quarantine"
    )
    for m in found:
        shown = short_message_id(m.message_id)
        table.add_row(str(m.seq), shown, m.role, m.content, str(m.attempts), m.error)
    console.print(table if found else f"{user!r} has no quarantined messages")


@app.command()
def requeue(
    user: Annotated[str, typer.Argument(help="The user whose quarantined messages to requeue.")],
    message: Annotated[
        list[str] | None, typer.Option("--message", help="Only this message id (repeatable).")
    ] = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Put quarantined messages back in the buffer, to be extracted on the next run.

    --message takes a whole id, or its last digits as `memvee quarantine` shows them."""
    with _audit(db, db_url) as audit:
        if message:
            message = _whole_ids(message, [m.message_id for m in audit.quarantined(user)])
        returned = audit.requeue(user, message or None)
    console.print(f"requeued {len(returned)} messages of {user!r}")


@app.command()
def forget(
    user: Annotated[str, typer.Argument(help="The user to erase.")],
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Erase without asking (needed where stdin is no terminal)."),
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
) -> None:
    """Erase a user for good, as Memory.forget does: their events, snapshots and every
    projection row, in one transaction; prints what was erased. Asks first unless --yes.

    A damaged log is erased all the same. A Memory running on the database meanwhile
    starts the user afresh where it writes next; what it already sent to an API for the
    user is not kept."""
    check_user_id(user)
    if not yes and not _on_a_terminal():
        raise InvalidInputError(
            f"forget erases {user!r} for good: give --yes to confirm (no terminal to ask on)"
        )
    with _audit(db, db_url) as audit:
        events = audit.logged_version(user)
        question = f"Erase {user!r} and all memvee holds of them ({events:,} events) for good?"
        answer = True if yes else _answer(question)
        if answer is None:
            raise InvalidInputError(f"no answer (the input ended): nothing of {user!r} was erased")
        if not answer:
            raise InvalidInputError(f"not confirmed: nothing of {user!r} was erased")
        receipt = audit.forget(user)
    if as_json:
        _print_json({"receipt": dataclasses.asdict(receipt), "total": receipt.total})
        return
    table = Table("what", "erased", title=f"forgot {user!r}")
    table.add_row("events", f"{receipt.events:,}")
    table.add_row("snapshots", f"{receipt.snapshots:,}")
    for name, count in receipt.rows.items():
        table.add_row(f"{name.replace('_', ' ')} rows", f"{count:,}")
    console.print(table)
    console.print(
        f"erased {receipt.total:,} records of {user!r} at {receipt.erased_at:%Y-%m-%d %H:%M:%S} UTC"
        + (
            ""
            if receipt.scrubbed
            else "; their words may stay in the database files until the other connections "
            "reading it finish and a checkpoint runs (see the warning)"
        )
    )


def _answer(question: str) -> bool | None:
    """The person's yes or no to ``question``, asked on stderr; ``None`` when the input
    ended first (Ctrl-D), which click's ``Abort`` made "error: aborted". A Ctrl-C, which
    click makes the same ``Abort``, stays an interrupt."""
    try:
        return typer.confirm(question, err=True)
    except typer.Abort as stopped:
        typer.echo(err=True)  # the error line starts a line, not after the question
        if isinstance(stopped.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        return None
    except BaseException:  # a closed output, say: its error line too starts a line
        typer.echo(err=True)
        raise


def _on_a_terminal() -> bool:
    """Whether standard input is a terminal, where a person can be asked to confirm."""
    return sys.stdin is not None and sys.stdin.isatty()


def _whole_ids(given: list[str], ids: list[str]) -> list[str]:
    """The ids among ``ids`` that ``given`` names whole or by their last digits; a text
    that names none is kept as it is (the refusal names it), one that names several is
    refused."""
    chosen = []
    for text in given:
        named = [i for i in ids if i == text] or [i for i in ids if text and i.endswith(text)]
        if len(named) > 1:
            raise InvalidInputError(f"--message {text!r} ends {len(named)} ids: give more digits")
        chosen.append(named[0] if named else text)
    return chosen


def _point(at: str | None) -> tuple[int | None, datetime | None]:
    """``--at`` as a version (an integer) or a time (ISO 8601; UTC when no zone is given)."""
    if at is None:
        return None, None
    if at.isascii() and at.isdigit():
        digits = at.lstrip("0") or "0"
        if len(digits) > 19:  # past any log, and past what int() takes past 4,300
            raise InvalidInputError(f"--at: a version has at most 19 digits, not {len(digits)}")
        return int(digits), None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError as error:
        raise InvalidInputError(f"--at {at!r} is neither a version nor an ISO time") from error
    return None, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


register_commands(app)  # serve, mcp


def main() -> None:
    """Entry point of the ``memvee`` console script."""
    _replace_what_cannot_print()
    _log_warnings_but_not_interrupts()
    app()


def _log_warnings_but_not_interrupts() -> None:
    """Print warnings to stderr, as Python does for a program that configures no logging,
    but not a library's report of a Ctrl-C that stopped its cleanup (SQLAlchemy's pool
    logs one with its traceback), nor, once a Ctrl-C came, an embedder's failure (one it
    stopped logs it): the command then ends with one ``error:`` line. No
    credential is printed (see :class:`RedactSecrets`), nor a control character sent."""

    def not_an_interrupt(record: logging.LogRecord) -> bool:
        if _ctrl_c_pressed and _tells_an_embedders_failure(record):
            return False  # the Ctrl-C made it fail: the command says "interrupted"
        kind = exception_type(record)  # also once a redacting filter took the exception off
        return kind is None or not issubclass(kind, KeyboardInterrupt)

    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(not_an_interrupt)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(_ShownFormatter())
    logging.getLogger().addHandler(handler)


def _tells_an_embedders_failure(record: logging.LogRecord) -> bool:
    """Whether ``record`` reports an embedder's failure (an :class:`EmbedderError` it was
    logged with or quotes), which is what a Ctrl-C landing in the embedder becomes."""
    kind = exception_type(record)
    if kind is not None and issubclass(kind, EmbedderError):
        return True
    quoted = record.args if isinstance(record.args, tuple) else ()
    return any(isinstance(each, EmbedderError) for each in quoted)


class _ShownFormatter(logging.Formatter):
    """Shows the control characters of a warning (as :func:`~memvee._output.shown` does)
    instead of sending them to the terminal: a warning may quote stored text (an extractor's
    error, a message). The warning's own text stays on one line (a line break shown as
    ``␤``), so a quoted text cannot print a line of its own that reads like the command's
    ``error:`` line; a traceback after it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\n", "\u2424")

    def format(self, record: logging.LogRecord) -> str:
        return str(shown(super().format(record)))


def _replace_what_cannot_print() -> None:
    """Let standard output and error write a character their encoding lacks as an escape
    (a user id in another script on an ASCII terminal) instead of failing the command."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
