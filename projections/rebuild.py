"""Rebuild the projections from the log, and check that they equal the live ones.

The log is the single source of truth: dropping every projection table and folding the
log again must give the same rows. A rebuild moves its stored position page by page in
the same transaction as the rows, so an interrupted rebuild resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter, sleep
from typing import Any

from sqlalchemy import Connection, Engine, select

from events import EventStore, Recorded, StorageError, user_log_id
from projections.collector import collector_paused
from projections.folds import PROJECTIONS
from projections.projector import Projector
from projections.search import SearchIndex
from projections.tables import LIVE_PREFIX, ProjectionTables, folded_columns

__all__ = [
    "Difference",
    "catch_up",
    "dump",
    "index_messages",
    "rebuild",
    "rebuild_user",
    "verify",
]

Progress = Callable[[int, int], None]
"""Called with (events folded so far, last position of the log)."""

SCRATCH_PREFIX = "mvscratch_"

PAGE_SIZE = 10_000
"""Events folded per transaction by a rebuild: a page's rows are netted in memory."""

_CONTENDED = 0.002
"""Seconds of waiting for the writers' lock that tell a fold of pages that others write."""

_SQLITE_TURN = 0.1
"""Seconds a fold of pages on SQLite waits between pages once others write: SQLite's busy
handler looks again at most every 100 ms, so a writer would otherwise find the lock taken
again at each look and wait for the whole rebuild (5.5 s in a test of 10 s)."""


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
    with store.transaction() as connection:
        store.lock_writers(connection)
        if resume:
            projector.create(connection, rebuilding=True)
        else:
            projector.begin_rebuild(connection)
    folded = _fold_to_end(store, projector, page_size, progress)
    index_messages(store, projector, page_size)
    return folded


def _fold_to_end(
    store: EventStore, projector: Projector, page_size: int, progress: Progress | None = None
) -> int:
    """Fold the log from the tables' stored position to its end, a page per transaction,
    each read and folded while every other writer is held off, so no event is folded
    twice or passed over, whoever else writes, folds or rebuilds at the same time. A
    rebuild's last page ends it (:meth:`Projector.finish_rebuild`)."""
    folded, contended = 0, False
    last = store.max_position() if progress is not None else 0
    while True:
        with collector_paused(), store.transaction() as connection:
            asked = perf_counter()
            store.lock_writers(connection)
            contended = contended or perf_counter() - asked > _CONTENDED
            state = projector.state(connection)
            page = store.notifications(connection, after=state.position, limit=page_size)
            if state.rebuilding:
                projector.apply(connection, page, move_position=False)
                reached = page[-1].notification_id if page else state.position
                if len(page) < page_size:
                    projector.finish_rebuild(connection, reached)
                else:
                    projector.rebuilt_upto(connection, reached)
            else:
                projector.apply(connection, page)
        folded += len(page)
        if page and progress is not None:
            progress(page[-1].notification_id, max(last, page[-1].notification_id))
        if len(page) < page_size:
            return folded
        if contended and store.is_sqlite:
            sleep(_SQLITE_TURN)


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
    """
    projector = Projector(tables or ProjectionTables(LIVE_PREFIX))
    folded = 0
    with store.transaction() as connection:
        store.lock_writers(connection)
        _refuse_while_rebuilding(projector, connection)
        projector.forget(connection, str(user_log_id(user_id)))
        after = 0
        while page := store.events_of(user_id, after=after, upto=after + page_size):
            recorded = [Recorded(e.originator_version, e) for e in page]
            projector.apply(connection, recorded, move_position=False)
            folded += len(page)
            after = page[-1].originator_version
        projector.index_messages(connection)
        projector.renew(connection)
    return folded


def _refuse_while_rebuilding(projector: Projector, connection: Connection) -> None:
    if projector.state(connection).rebuilding:
        raise StorageError(
            "the projections are being rebuilt, or a rebuild stopped before the end of the "
            "log: let it end, or finish it with `memvee rebuild --resume`"
        )


def catch_up(store: EventStore, tables: ProjectionTables, page_size: int = PAGE_SIZE) -> int:
    """Fold the events the projections have not seen yet, finishing a rebuild that
    stopped (or helping one that runs); safe while others write."""
    projector = Projector(tables)
    folded = _fold_to_end(store, projector, page_size)
    index_messages(store, projector)
    return folded


def index_messages(store: EventStore, projector: Projector, page_size: int | None = None) -> int:
    """Index every message that waits for the full-text index, holding off other writers
    (nothing happens when none waits), ``page_size`` a transaction; returns how many."""
    with store.engine.connect() as connection:
        if not projector.search.unindexed(connection):
            return 0
    done = 0
    while True:
        with collector_paused(), store.transaction() as connection:
            store.lock_writers(connection)
            indexed = projector.index_messages(connection, page_size)
        done += indexed
        if page_size is None or indexed < page_size:
            return done


def dump(engine: Engine, tables: ProjectionTables) -> dict[str, list[tuple[Any, ...]]]:
    """Every folded row of every projection table, ordered by its fold's key, keyed by
    table role (unfolded columns, which a rebuild may fill differently, are left out)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    keys = {p.table: p.key for p in PROJECTIONS}
    with engine.connect() as connection:
        for table in tables.folded_tables:
            role = table.name.removeprefix(tables.prefix)
            query = select(*folded_columns(table)).order_by(*(table.c[k] for k in keys[role]))
            out[role] = [tuple(r) for r in connection.execute(query)]
        out.update(SearchIndex(tables).dump(connection))
    return out


@dataclass(frozen=True, slots=True)
class Difference:
    """A row present (or different) on one side only."""

    table: str
    live: tuple[Any, ...] | None
    rebuilt: tuple[Any, ...] | None


def verify(store: EventStore, live: ProjectionTables | None = None) -> list[Difference]:
    """Rebuild into scratch tables and list every difference from the live projections,
    after every event of the log that follows no stored version of its log (table
    ``events``, live ``(log id, version)``: that log cannot load)."""
    live = live or ProjectionTables(LIVE_PREFIX)
    with store.engine.connect() as connection:
        _refuse_while_rebuilding(Projector(live), connection)
    index_messages(store, Projector(live))  # messages waiting for the index are not a difference
    scratch = ProjectionTables(SCRATCH_PREFIX)
    rebuild(store, scratch)
    try:
        expected, actual = dump(store.engine, live), dump(store.engine, scratch)
    finally:
        with store.transaction() as connection:
            Projector(scratch).drop(connection)
    differences = [Difference("events", gap, None) for gap in store.gaps()]
    for table, live_rows in expected.items():
        live_by_key = {row[0]: row for row in live_rows}
        rebuilt_by_key = {row[0]: row for row in actual[table]}
        for key in sorted(live_by_key.keys() | rebuilt_by_key.keys(), key=str):
            a, b = live_by_key.get(key), rebuilt_by_key.get(key)
            if a != b:
                differences.append(Difference(table, a, b))
    return differences
