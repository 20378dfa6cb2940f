"""Rebuild the projections from the log, and check that they equal the live ones.

The log is the single source of truth: dropping every projection table and folding the
log again must give the same rows. A rebuild moves its stored position page by page in
the same transaction as the rows, so an interrupted rebuild resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from events import EventStore, Recorded, user_log_id
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


def rebuild(
    store: EventStore,
    tables: ProjectionTables | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    page_size: int = PAGE_SIZE,
) -> int:
    """Drop and refold every projection from the log; returns the number of events folded.

    With ``resume=True`` the tables are kept and folding continues from their stored
    position. The indexes no fold reads are built at the end, once the rows are in.
    Run it while no Memory writes to the database.
    """
    projector = Projector(tables or ProjectionTables(LIVE_PREFIX))
    with store.transaction() as connection:
        if not resume:
            projector.drop(connection)
        projector.create(connection, defer_indexes=True)
        position = projector.position(connection)
    last = store.max_position()
    folded = 0
    pages = store.follow(after=position, page_size=page_size)
    while True:
        with collector_paused():
            page = next(pages, None)
            if page is None:
                break
            with store.transaction() as connection:
                projector.apply(connection, page)
        folded += len(page)
        if progress is not None:
            progress(page[-1].notification_id, last)
    while True:
        with collector_paused(), store.transaction() as connection:
            if projector.index_messages(connection, page_size) < page_size:
                break
    with store.transaction() as connection:
        projector.create_indexes(connection)
    return folded


def rebuild_user(
    store: EventStore,
    user_id: str,
    tables: ProjectionTables | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> int:
    """Drop one user's projection rows and fold their log again; returns events folded.

    One transaction, with every other writer held off, so it is safe beside live writers
    and either fully done or not at all.
    """
    projector = Projector(tables or ProjectionTables(LIVE_PREFIX))
    folded = 0
    with store.transaction() as connection:
        store.lock_writers(connection)
        projector.forget(connection, str(user_log_id(user_id)))
        after = 0
        while page := store.events_of(user_id, after=after, upto=after + page_size):
            recorded = [Recorded(e.originator_version, e) for e in page]
            projector.apply(connection, recorded, move_position=False)
            folded += len(page)
            after = page[-1].originator_version
        projector.index_messages(connection)
    return folded


def catch_up(store: EventStore, tables: ProjectionTables, page_size: int = 2000) -> int:
    """Fold the events the projections have not seen yet; safe while others write.

    Each page is read and folded while every other writer is held off, so no event can
    be folded twice even when other processes append (and fold) at the same time.
    """
    projector = Projector(tables)
    folded = 0
    while True:
        with store.transaction() as connection:
            store.lock_writers(connection)
            position = projector.position(connection)
            page = store.notifications(connection, after=position, limit=page_size)
            if page:
                projector.apply(connection, page)
        if not page:
            index_messages(store, projector)
            return folded
        folded += len(page)


def index_messages(store: EventStore, projector: Projector) -> int:
    """Index every message that waits for the full-text index, holding off other writers
    (nothing happens when none waits); returns how many."""
    with store.engine.connect() as connection:
        if not projector.search.unindexed(connection):
            return 0
    with store.transaction() as connection:
        store.lock_writers(connection)
        return projector.index_messages(connection)


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
