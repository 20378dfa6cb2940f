"""Rebuild the projections from the log, and check that they equal the live ones.

The log is the single source of truth: dropping every projection table and folding the
log again must give the same rows. A rebuild moves its stored position page by page in
the same transaction as the rows, so an interrupted rebuild resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import random
import shlex
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic, sleep
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection, Engine, delete, inspect
from sqlalchemy.exc import OperationalError

from events import (
    EventStore,
    InvalidInputError,
    OlderLayoutError,
    Recorded,
    StorageError,
    Unread,
    user_log_id,
)
from events.errors import NewerEventError, UnreadableEventError, first_line
from events.imported import ImportReplay
from events.transcoding import known_topic
from projections.collector import collector_paused
from projections.comparison import Difference, Listing, differences, table_listing
from projections.folds import PROJECTIONS
from projections.projector import Folded, FoldState, Projector
from projections.search import MessageBodies, SearchIndex
from projections.tables import LIVE_PREFIX, ProjectionTables
from projections.vectors import drop_vectors_of_gone_items
from projections.writer_turns import WriterTurns

__all__ = [
    "Difference",
    "alone_while_upgrading",
    "bring_up_to_date",
    "catch_up",
    "dump",
    "forget_in_scratch",
    "index_messages",
    "rebuild",
    "rebuild_user",
    "refold_now_readable",
    "refuse_older_layout",
    "refuse_unfolded",
    "refuse_while_rebuilding",
    "verify",
    "warn_unfolded",
]

log = logging.getLogger("memvee.projections")

_T = TypeVar("_T")

Progress = Callable[[int, int], None]
"""Called with (events folded so far, last position of the log)."""

Dump = dict[str, list[tuple[Any, ...]]]
"""Rows of every projection table by table role, as :func:`dump` reads them."""

SCRATCH_PREFIX = "mvscratch_"

PAGE_SIZE = 10_000
"""Events folded per transaction by a rebuild: a page's rows are netted in memory."""

DDL_LOCK_WAIT_MS = 500
"""On PostgreSQL, the longest a transaction that drops or alters projection tables (a
rebuild's start, an open refolding an older layout) waits for the readers of one table
before it lets go of every table and tries again: at most half the server's
``deadlock_timeout`` (1 s by default), after which a deadlock fails one of the two sides
(:func:`_ddl_lock_wait_ms`)."""

DDL_RETRY_SECONDS = 10.0
"""How long such a transaction lets go of its tables for readers; after that it waits for
them as long as it takes (a read that deadlocks with it then may fail, as a busy server's
reads always could)."""

_LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's state of a statement that waited out its ``lock_timeout``."""

_READ_ROUNDS = 50
"""Times :func:`verify` folds the log's end and looks for a snapshot that holds no more."""


def rebuild(
    store: EventStore,
    tables: ProjectionTables | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    page_size: int = PAGE_SIZE,
) -> int:
    """Drop and refold every projection from the log; returns the number of events folded.

    Safe while others write: until the rebuild reaches the end of the log, live writes
    store their events and leave them to it, and each page is read and folded while every
    other writer is held off. With ``resume=True`` the tables are kept and folding
    continues from their stored position (so does the next :func:`catch_up`, as a
    Memory's open). The indexes no fold reads are built at the end, once the rows are in.
    """
    projector = Projector(tables or ProjectionTables(LIVE_PREFIX))
    _start_rebuild(store, projector, resume=resume)
    turns = WriterTurns(store.is_sqlite)
    folded = _fold_to_end(store, projector, page_size, turns, progress)
    _index_in_pages(store, projector, page_size, turns)
    return folded


def _start_rebuild(store: EventStore, projector: Projector, *, resume: bool) -> None:
    """Mark the projections as being rebuilt (dropped and made again, unless ``resume``),
    with every other writer held off, letting go of the tables for live reads
    (:func:`_yielding_to_readers`)."""
    with alone_while_upgrading(store, projector):
        if resume:
            _yielding_to_readers(store, lambda c: projector.create(c, rebuilding=True))
        else:
            _yielding_to_readers(store, projector.begin_rebuild)


@contextmanager
def alone_while_upgrading(store: EventStore, projector: Projector) -> Iterator[None]:
    """Run the block, which opens or rebuilds the projection tables, with the SQLite file
    held alone (:meth:`EventStore.held_alone`) if they are of an older memvee's layout:
    a process of that memvee still running on the file would go on writing in its own
    layout into tables this one has changed (an index of layout 17 marked by first write
    in place, say, where its marks would be found by no search of 18). Such an open is
    refused with :class:`DatabaseInUseError`, before anything is written, while another
    store keeps the file open for :data:`~events.store.HOLD_ALONE_SECONDS`. Processes
    opening such a file at the same moment wait for each other: one upgrades it, and the
    others, finding it upgraded, go on as an open of an up-to-date file does."""
    if not _layout_older(store, projector):
        yield
        return
    refusal = (
        f"the projections of {store.safe_url} are of an older memvee's layout and must "
        "be upgraded with the file held alone, but another process or Memory (in this "
        "process or another) keeps it open: stop every process using it, older memvee "
        "processes first (they would go on writing in the old layout), then open it "
        "again; or another process is opening it at this moment: open again"
    )
    with store.held_alone(refusal, functools.partial(_layout_older, store, projector)):
        yield


def _layout_older(store: EventStore, projector: Projector) -> bool:
    """Whether the projection tables are of an older memvee's layout, read now."""
    with store.engine.connect() as connection:
        return projector.layout_older(connection)


def _yielding_to_readers(store: EventStore, change: Callable[[Connection], _T]) -> _T:
    """Run ``change``, which may drop or alter projection tables, in a transaction that
    holds every other writer off; returns what it returned.

    On PostgreSQL a table is dropped or altered once its readers are done, and a live
    read of two tables (a task joined to its user, as a Memory following another
    process's task reads it) may hold the one changed later while it waits for the one
    changed first: each side waits for the other, and the server fails one of them after
    its ``deadlock_timeout`` (the live read, or this change). So for
    :data:`DDL_RETRY_SECONDS` a statement waits for a table at most
    :data:`DDL_LOCK_WAIT_MS`, and less than the server's ``deadlock_timeout``
    (:func:`_ddl_lock_wait_ms`); past that the transaction lets go of every table, the
    read goes on, and ``change`` is tried again shortly after, in a new transaction.
    """
    patient_from = monotonic() + DDL_RETRY_SECONDS
    while True:
        try:
            with store.transaction() as connection:
                store.lock_writers(connection)
                if not store.is_sqlite and monotonic() < patient_from:
                    wait_ms = _ddl_lock_wait_ms(connection)
                    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
                return change(connection)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            log.debug("waiting for readers of the projection tables: %s", first_line(error))
            sleep(random.uniform(0.05, 0.2))


def _ddl_lock_wait_ms(connection: Connection) -> int:
    """How long, in milliseconds, a statement of :func:`_yielding_to_readers` waits for a
    table on PostgreSQL: :data:`DDL_LOCK_WAIT_MS`, or half the server's
    ``deadlock_timeout`` if that is less (a server set to look for deadlocks sooner would
    otherwise fail a live read first), and never 0, which waits for ever."""
    deadlock_ms = connection.exec_driver_sql(
        "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
    ).scalar_one()
    return max(1, min(DDL_LOCK_WAIT_MS, int(deadlock_ms) // 2))


def _fold_to_end(
    store: EventStore,
    projector: Projector,
    page_size: int,
    turns: WriterTurns,
    progress: Progress | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Fold the log from the tables' stored position to its end, a page per transaction,
    each written while every other writer is held off, so no event is folded twice or
    passed over, whoever else writes, folds or rebuilds at the same time. A rebuild's
    last page ends it (:meth:`Projector.finish_rebuild`).

    A rebuild reads and folds each full page without holding writers off
    (:func:`_fold_ahead`), then writes it while they are, if the log and the tables are
    still as it read them: writers wait for the writing alone, not for the folding. The
    last page, and any page whose log or tables changed meanwhile, is read and folded
    while they are held off.
    """
    folded = 0
    last = store.max_position() if progress is not None else 0
    while True:
        read = functools.partial(_fold_ahead, store, projector, page_size)
        with collector_paused():
            with _ahead_then_locked(store, turns, read) as (ahead, connection):
                page = _write_page(store, projector, connection, page_size, ahead)
            count, ids = len(page.recorded), page.ids
            del page, ahead  # freed while paused: see _ahead_then_locked
        folded += count
        if ids and progress is not None:
            progress(ids[-1], max(last, ids[-1]))
        if len(ids) < page_size or stopping():
            return folded
        turns.between()


@dataclass(frozen=True, slots=True)
class _Page:
    """A page of the log as a fold reads it: the events that read, and those that cannot
    be read (:class:`Unread`), which leave their logs unfolded."""

    recorded: list[Recorded]
    unread: list[Unread]
    ids: list[int] = field(init=False)
    """The notification ids of the rows read, in order (read or not): worked out once, as
    each step of writing a page asks for them."""

    def __post_init__(self) -> None:
        ids = [r.notification_id for r in self.recorded]
        if self.unread:
            ids = sorted(ids + [u.notification_id for u in self.unread])
        object.__setattr__(self, "ids", ids)

    def foldable(self, unfolded: Collection[UUID]) -> list[Recorded]:
        """The page's events but those of logs left ``unfolded``, and those of a log from
        its event in this page that cannot be read on: a log is never folded around a hole."""
        if not unfolded and not self.unread:
            return self.recorded
        stops: dict[UUID, int] = {}
        for u in self.unread:
            stops[u.error.log_id] = min(u.error.version, stops.get(u.error.log_id, u.error.version))
        return [
            r
            for r in self.recorded
            if r.event.originator_id not in unfolded
            and r.event.originator_version
            < stops.get(r.event.originator_id, r.event.originator_version + 1)
        ]


def _read_page(store: EventStore, connection: Connection, after: int, limit: int) -> _Page:
    """The next ``limit`` rows of the log after ``after``, those that cannot be read set
    apart rather than raised."""
    unread: list[Unread] = []
    recorded = store.notifications(connection, after=after, limit=limit, unread=unread)
    return _Page(recorded, unread)


def _apply_page(
    projector: Projector, connection: Connection, page: _Page, *, move_position: bool
) -> None:
    """Fold ``page`` (:meth:`_Page.foldable`) in ``connection``, then leave the logs of its
    events that cannot be read unfolded (:func:`_leave_unfolded`); with ``move_position``
    the stored position moves past the whole page, the events passed over too."""
    foldable = page.foldable(projector.unreadable(connection).keys())
    projector.apply(connection, foldable, move_position=move_position)
    _leave_unfolded(projector, connection, page)
    if move_position and len(foldable) < len(page.ids):
        projector.pass_over(connection, page.ids[-1])


def _leave_unfolded(projector: Projector, connection: Connection, page: _Page) -> None:
    """Leave the logs of ``page``'s events that cannot be read unfolded, warning of each
    newly left in the live tables (a verify's scratch ones serve no one)."""
    if page.unread:
        for error in projector.leave_unfolded(connection, [u.error for u in page.unread]):
            if projector.tables.prefix == LIVE_PREFIX:
                warn_unfolded(error)


def warn_unfolded(error: UnreadableEventError) -> None:
    """Log, as a WARNING, that a log is left unfolded for ``error``, and the way out."""
    whose = f"log {error.log_id}" if error.user_id is None else f"user {error.user_id!r}"
    if isinstance(error, NewerEventError):
        again = (
            "the next open refolds it"
            if error.user_id is None
            else (f"or `memvee rebuild --user {shlex.quote(error.user_id)}` once it is")
        )
        way_out = f"upgrade memvee ({again}): nothing is lost"
    elif error.user_id is None:
        way_out = (
            "`memvee verify` lists it by that log id; restore the database, or forget the "
            "user whose log it is (a damaged log can always be forgotten; a user's log id "
            "is uuid5 of their id, see `events.user_log_id`)"
        )
    else:
        way_out = (
            "`memvee verify` lists it; restore the database, or "
            f"`memvee forget {shlex.quote(error.user_id)}` (a damaged log can always be forgotten)"
        )
    log.warning(
        "%s; %s is not served (their reads and writes fail), every other user is: %s",
        error,
        whose,
        way_out,
    )


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A page of a rebuild read and folded while writers went on, to write once they are
    held off if nothing it read has changed since."""

    state: FoldState
    generation: int
    page: _Page
    folded: Folded

    def holds(self, store: EventStore, projector: Projector, connection: Connection) -> bool:
        """Whether the tables and the log are still as the page read them (read in
        ``connection``, with writers held off): the same position and generation (no
        other fold or rebuild, no refold in place), and the same events in the page's
        range (none came in a gap, as PostgreSQL's writers commit out of order, nor was
        any erased): counted, where the page held every id of its range."""
        if projector.state(connection) != self.state:
            return False
        if projector.generation(connection) != self.generation:
            return False
        ids = self.page.ids
        after, last = self.state.position, ids[-1]
        if last - after == len(ids):  # every id of its range: the count tells
            return store.count_between(connection, after, last) == len(ids)
        return store.ids_between(connection, after, last) == ids


def _fold_ahead(store: EventStore, projector: Projector, page_size: int) -> _Ahead | None:
    """The next full page of a running rebuild, read and folded in one snapshot without
    holding writers off; ``None`` when no rebuild runs (live writes fold too) or less
    than a page is left (the end is read while writers are held off, so no event
    written meanwhile is left behind)."""
    with store.reading() as connection:
        state = projector.state(connection)
        if not state.rebuilding or store.max_position(connection) - state.position < page_size:
            return None
        page = _read_page(store, connection, state.position, page_size)
        if len(page.ids) < page_size:
            return None
        generation = projector.generation(connection)
        foldable = page.foldable(projector.unreadable(connection).keys())
        return _Ahead(state, generation, page, projector.fold(connection, foldable))


def _write_page(
    store: EventStore,
    projector: Projector,
    connection: Connection,
    page_size: int,
    ahead: _Ahead | None,
) -> _Page:
    """Write the next page in ``connection``, whose transaction holds writers off: the
    page folded ahead if it still holds, else one read and folded now. Returns it."""
    if ahead is not None and ahead.holds(store, projector, connection):
        projector.write(connection, ahead.folded)
        state, page = ahead.state, ahead.page
        _leave_unfolded(projector, connection, page)
    else:
        state = projector.state(connection)
        page = _read_page(store, connection, state.position, page_size)
        _apply_page(projector, connection, page, move_position=not state.rebuilding)
    if state.rebuilding:
        reached = page.ids[-1] if page.ids else state.position
        if len(page.ids) < page_size:
            projector.finish_rebuild(connection, reached)
        else:
            projector.rebuilt_upto(connection, reached)
    return page


def rebuild_user(
    store: EventStore,
    user_id: str,
    tables: ProjectionTables | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> int:
    """Drop one user's projection rows and fold their log again; returns events folded.

    One transaction, with every other writer held off, so it is safe beside live writers
    and either fully done or not at all. Refused (:class:`StorageError`) while a rebuild
    of every projection runs or stopped before its end: that rebuild folds the user too.
    As a full rebuild, it keeps the user's vectors (a process's cached ones stay right,
    and nothing is embedded again), but those of items the refold does not give again,
    and drops their checkpoints, as a full rebuild does (derived from the log, they may
    be what the rebuild is to mend; a long log gets one again when its user next loads).
    Tables of an older memvee's layout are refused (:class:`OlderLayoutError`): an open,
    or a full rebuild, refolds them first.
    """
    projector = Projector(tables or ProjectionTables(LIVE_PREFIX))
    log_id = str(user_log_id(user_id))
    folded = 0
    with store.transaction() as connection:
        store.lock_writers(connection)
        refuse_while_rebuilding(projector, connection)
        refuse_older_layout(projector, connection)
        projector.forget(connection, log_id, keep_vectors=True)
        after = 0
        while page := store.events_of(user_id, after=after, upto=after + page_size):
            recorded = [Recorded(e.originator_version, e) for e in page]
            projector.apply(connection, recorded, move_position=False)
            folded += len(page)
            after = page[-1].originator_version
        drop_vectors_of_gone_items(connection, projector.tables, log_id)
        projector.index_messages(connection)
        projector.renew(connection)
    return folded


def refuse_older_layout(projector: Projector, connection: Connection) -> None:
    """Raise :class:`OlderLayoutError` if the projections are of an older memvee's layout:
    they are not drift but tables the next open refolds, and this version's queries
    would misread them (another word cutting) or fail on them (other columns)."""
    if projector.layout_older(connection):
        raise OlderLayoutError(
            "the projections are of an older memvee's layout: they are refolded when a "
            "Memory next opens the database, or by `memvee rebuild`; verify compares them "
            "after that"
        )


def refuse_unfolded(projector: Projector, connection: Connection, user_id: str) -> None:
    """Raise the :class:`UnreadableEventError` (naming the user) for which a fold left
    ``user_id``'s log unfolded, if one did: none of their rows is there to read."""
    unfolded = projector.unreadable(connection).get(user_log_id(user_id))
    if unfolded is not None:
        raise unfolded.of_user(user_id)


def refuse_while_rebuilding(projector: Projector, connection: Connection) -> None:
    """Raise :class:`StorageError` while the projections are being rebuilt (or a rebuild
    stopped midway): they hold part of the log, so what they lack says nothing."""
    if projector.state(connection).rebuilding:
        raise StorageError(
            "the projections are being rebuilt, or a rebuild stopped before the end of the "
            "log: let it end, or finish it with `memvee rebuild --resume`"
        )


def bring_up_to_date(
    store: EventStore,
    tables: ProjectionTables,
    prepare: Callable[[Connection], object] | None = None,
) -> int:
    """What an open of the database does: create the tables that are missing (new ones
    marked as being rebuilt, so refolded from the whole log; an older layout's dropped
    first) while every other writer is held off, ``prepare`` in the same transaction
    (letting go of the tables for live reads: :func:`_yielding_to_readers`), then
    :func:`catch_up`, then refold the logs left unfolded for an event type this memvee
    now knows; returns the events folded.

    A log with an event that cannot be read is left unfolded, its user's reads and writes
    refused (:meth:`Projector.leave_unfolded`): it never stops the open for everyone.
    """
    projector = Projector(tables)
    with alone_while_upgrading(store, projector):
        _yielding_to_readers(store, functools.partial(_open_tables, projector, prepare))
    folded = catch_up(store, tables)
    return folded + refold_now_readable(store, tables)


def _open_tables(
    projector: Projector, prepare: Callable[[Connection], object] | None, connection: Connection
) -> None:
    """What :func:`bring_up_to_date` does first, in one transaction holding writers off:
    the missing tables made (an older layout's dropped first), then ``prepare``."""
    projector.create(connection, rebuilding=True)
    if prepare is not None:
        prepare(connection)


def refold_now_readable(store: EventStore, tables: ProjectionTables) -> int:
    """Refold each log left unfolded for an event type an older memvee did not know, if
    this one knows it (it was upgraded): its user is served again, their id read from the
    log where the fold that left it knew none. Returns events folded. Writes nothing when
    no such log is left (a read of that small table), so a command may call it each time."""
    with store.engine.connect() as connection:
        left = Projector(tables).unreadable(connection)
    folded = 0
    for log_id, error in left.items():
        if not isinstance(error, NewerEventError) or not known_topic(error.topic):
            continue
        try:
            user_id = error.user_id or store.user_of_log(log_id)
            if user_id is not None:
                folded += rebuild_user(store, user_id, tables)
        except UnreadableEventError as still:
            warn_unfolded(still)
            _left_again(store, tables, log_id, still)
    return folded


def _left_again(
    store: EventStore, tables: ProjectionTables, log_id: UUID, error: UnreadableEventError
) -> None:
    """Record ``error`` as what keeps the log ``log_id`` unfolded now, in place of the
    event type an upgrade made known: the next command does not refold it again (under
    the writers' hold) only to meet the same error."""
    table = tables.unreadable
    with store.transaction() as connection:
        connection.execute(delete(table).where(table.c.log_id == str(log_id)))
        Projector(tables).leave_unfolded(connection, [error])


def catch_up(
    store: EventStore,
    tables: ProjectionTables,
    page_size: int = PAGE_SIZE,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Fold the events the projections have not seen yet, finishing a rebuild that
    stopped (or helping one that runs); safe while others write. ``stopping`` is asked
    between pages: once it says so, the catch-up ends early, what it folded kept."""
    projector = Projector(tables)
    turns = WriterTurns(store.is_sqlite)
    folded = _fold_to_end(store, projector, page_size, turns, stopping=stopping)
    if not stopping():
        index_messages(store, projector)
    return folded


def index_messages(store: EventStore, projector: Projector) -> int:
    """Index every message that waits for the full-text index, holding off other writers
    (nothing happens when none waits); returns how many.

    Not while a rebuild runs: the messages that wait are the rebuild's, up to all of
    them, and indexing them at once would hold every writer off for seconds; the rebuild
    indexes them a page at a time once it has folded the log.
    """
    with store.engine.connect() as connection:
        if not projector.search.unindexed(connection):
            return 0
    with store.transaction() as connection:
        store.lock_writers(connection)
        if projector.state(connection).rebuilding:
            return 0
        return projector.index_messages(connection)


def _index_in_pages(
    store: EventStore, projector: Projector, page_size: int, turns: WriterTurns
) -> None:
    """:func:`index_messages`, ``page_size`` messages a transaction, with turns between.

    Each page's words are read and built without holding writers off
    (:func:`_bodies_ahead`), then stored while they are, if the page is still the next
    to index (:meth:`_Bodies.holds`); else it is read and built while they wait.
    """
    with store.engine.connect() as connection:
        if not projector.search.unindexed(connection):
            return
    while True:
        turns.between()
        read = functools.partial(_bodies_ahead, store, projector, page_size)
        with collector_paused():
            with _ahead_then_locked(store, turns, read) as (ahead, connection):
                if ahead is not None and ahead.holds(projector, connection):
                    projector.search.write_bodies(connection, ahead.bodies)
                    done = len(ahead.bodies.ids)
                else:
                    done = projector.index_messages(connection, page_size)
            del ahead  # freed while paused: see _ahead_then_locked
        if done < page_size:
            return


@contextmanager
def _ahead_then_locked(
    store: EventStore, turns: WriterTurns, read_ahead: Callable[[], _T | None]
) -> Iterator[tuple[_T | None, Connection]]:
    """What ``read_ahead`` reads (and builds) without holding writers off, then a
    transaction that holds them off, to write it in if it still holds. Reading ahead for
    a turn's length or more counts as the writers' turn.

    Callers pause the collector (:func:`collector_paused`) around it and drop what it
    read before the collector resumes: a page's hundreds of thousands of objects, all
    born while it was paused, are then freed by their reference counts, where the first
    collection after the pause scanned them all, still alive (about 2% of a rebuild)."""
    started = monotonic()
    ahead = read_ahead()
    if ahead is not None:
        turns.left_free(monotonic() - started)
    with store.transaction() as connection:
        store.lock_writers(connection)
        turns.note(connection)
        yield ahead, connection


@dataclass(frozen=True, slots=True)
class _Bodies:
    """A page of messages' index words, built while writers went on, to store once they
    are held off if it is still the next page to index."""

    generation: int
    bodies: MessageBodies

    def holds(self, projector: Projector, connection: Connection) -> bool:
        """Whether the page is still the next to index (read in ``connection``, with
        writers held off): the same generation of the tables, the indexed position where
        it was read, and the same message rows in its range."""
        if projector.generation(connection) != self.generation:
            return False
        return projector.search.still_waiting(connection, self.bodies)


def _bodies_ahead(store: EventStore, projector: Projector, page_size: int) -> _Bodies | None:
    """The next page of messages to index, their words built in one snapshot without
    holding writers off; ``None`` when none waits."""
    with store.reading() as connection:
        bodies = projector.search.bodies(connection, page_size)
        if bodies is None:
            return None
        return _Bodies(projector.generation(connection), bodies)


def dump(source: Engine | Connection, tables: ProjectionTables) -> Dump:
    """Every folded row of every projection table, ordered by its fold's key, keyed by
    table role (unfolded columns, which a rebuild may fill differently, are left out);
    read through ``source``, a connection (and its transaction) or an engine."""
    if isinstance(source, Engine):
        with source.connect() as connection:
            return dump(connection, tables)
    return {listing.table: list(listing.rows) for listing in listings(source, tables)}


def listings(connection: Connection, tables: ProjectionTables) -> Iterator[Listing]:
    """Each projection table's rows in key order, and the search index's, read through
    ``connection`` one table after another (see :mod:`projections.comparison`)."""
    keys = {p.table: p.key for p in PROJECTIONS}
    for table in tables.folded_tables:
        role = table.name.removeprefix(tables.prefix)
        yield table_listing(connection, table, role, keys[role])
    yield from SearchIndex(tables).listings(connection)


@contextmanager
def _at_one_point(
    store: EventStore, live: ProjectionTables, scratch: ProjectionTables
) -> Iterator[Connection]:
    """A reading connection that sees both sides as of one point of the log. The scratch
    tables are brought to the end of the log (and both sides' messages indexed) while
    every other writer waits; then both are read in one snapshot, if the log there is as
    it was folded (else once more): writers wait for the folding only, never for the
    reading."""
    current, rebuilt = Projector(live), Projector(scratch)
    turns = WriterTurns(store.is_sqlite)
    for _ in range(_READ_ROUNDS):
        turns.between()
        with store.transaction() as connection:
            store.lock_writers(connection)
            turns.note(connection)
            refuse_older_layout(current, connection)
            refuse_while_rebuilding(current, connection)
            while (
                page := _read_page(store, connection, rebuilt.state(connection).position, PAGE_SIZE)
            ).ids:
                _apply_page(rebuilt, connection, page, move_position=True)
            for projector in (current, rebuilt):
                projector.index_messages(connection)
            folded = (store.max_position(connection), store.count(connection))
        with store.reading() as connection:
            if (store.max_position(connection), store.count(connection)) == folded:
                yield connection
                return
    raise StorageError(
        f"the log changed between folding and reading {_READ_ROUNDS} times: run verify again"
    )


def forget_in_scratch(connection: Connection, log_id: str) -> None:
    """Delete one log's rows from :func:`verify`'s scratch tables, if they exist (a verify
    runs, or one was killed): a forgotten user leaves no row anywhere.

    The caller holds every other writer off (:meth:`EventStore.lock_writers`), as
    everything that makes or drops the scratch tables does first (:func:`_drop_scratch`):
    the tables cannot go between the look and the delete, nor a drop take their locks in
    another order than the delete's.
    """
    scratch = ProjectionTables(SCRATCH_PREFIX)
    if inspect(connection).has_table(scratch.position.name):
        Projector(scratch).forget(connection, log_id)


def unreplayable(
    store: EventStore, unfolded: Mapping[UUID, UnreadableEventError]
) -> list[tuple[str, int, str]]:
    """Each log one of whose events is not well formed or does not replay (as a load
    would replay it), or cannot be read and was left ``unfolded`` by the live tables'
    fold, as (log id, version of that event, why, naming the user where the fold knew
    them); a gap is left to :meth:`EventStore.gaps`. An event that cannot be read in a log
    the live tables hold is raised (:class:`UnreadableEventError`): their rows of it are
    what was folded before it was damaged, and there is nothing to compare them with."""
    replays: dict[Any, ImportReplay] = {}
    broken: dict[Any, tuple[str, int, str]] = {}
    unread: list[Unread] = []
    for page in store.follow(unread=unread):
        for recorded in page:
            event = recorded.event
            log_id = event.originator_id
            if log_id in broken:
                continue
            replay = replays.setdefault(log_id, ImportReplay(None))
            try:
                replay.check(event, f"version {event.originator_version}")
            except InvalidInputError as error:
                broken[log_id] = (str(log_id), event.originator_version, str(error))
                del replays[log_id]
    for u in unread:
        left = unfolded.get(u.error.log_id)
        if left is None or isinstance(u.error, NewerEventError):
            raise u.error  # (a newer memvee's event: nothing is damaged, upgrade to read it)
        found = broken.get(left.log_id)
        if found is None or found[1] > left.version:
            broken[left.log_id] = (str(left.log_id), left.version, str(left))
    return list(broken.values())


def verify(store: EventStore, live: ProjectionTables | None = None) -> list[Difference]:
    """Rebuild into scratch tables and list every difference from the live projections,
    after every event of the log that follows no stored version of its log (table
    ``events``, live ``(log id, version)``) and every log that does not replay or holds an
    event that cannot be read (live ``(log id, version, why)``, its first event that breaks
    it, the why naming its user): such logs cannot load. An event that cannot be read is
    listed so when a fold left its log unfolded in the live tables, and raised as an
    :class:`UnreadableEventError` otherwise (see :func:`unreplayable`); one of a type only
    a newer memvee knows is a :class:`NewerEventError`: nothing is damaged.
    A stored snapshot a load cannot take is listed too (table ``snapshots``, live ``(log
    id, version, why)``); a snapshot table that cannot be read is a :class:`StorageError`.
    Live projections of an older memvee's layout are an :class:`OlderLayoutError`, not
    differences: they are compared once an open (or a rebuild) has refolded them."""
    live = live or ProjectionTables(LIVE_PREFIX)
    with store.engine.connect() as connection:
        refuse_older_layout(Projector(live), connection)
        refuse_while_rebuilding(Projector(live), connection)
        unfolded = Projector(live).unreadable(connection)
    broken = unreplayable(store, unfolded)
    scratch = ProjectionTables(SCRATCH_PREFIX)
    rebuild(store, scratch)
    found = [Difference("events", gap, None) for gap in store.gaps()]
    found += [Difference("events", log, None) for log in broken]
    found += [Difference("snapshots", bad, None) for bad in store.unreadable_snapshots()]
    try:
        with _at_one_point(store, live, scratch) as connection:
            for expected, actual in zip(
                listings(connection, live), listings(connection, scratch), strict=True
            ):
                found += differences(expected, actual)
    finally:
        _drop_scratch(store, scratch)
    return found


def _drop_scratch(store: EventStore, scratch: ProjectionTables) -> None:
    """Drop :func:`verify`'s scratch tables while every other writer is held off: an
    erasure deletes from them holding writers off too (:func:`forget_in_scratch`), so on
    PostgreSQL the two take the tables' locks one after the other, never crosswise (a
    deadlock), and the tables never go while an erasure is about to delete from them."""
    with store.transaction() as connection:
        store.lock_writers(connection)
        Projector(scratch).drop(connection)
