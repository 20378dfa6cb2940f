"""The projector: folds recorded events into the projection tables.

The live engine calls :meth:`Projector.apply` inside the very transaction that stores
the events, so the projections never diverge from the log, and lag it only while a
rebuild runs; rebuilds and catch-ups call it page by page over the whole log. Either way
each projection's fold (:mod:`projections.folds`) runs on the rows the events touch,
loaded first, and only the net rows are written, a bulk statement per table and kind of
change; the stored position moves with the rows, in the same transaction.

While the tables are being rebuilt (:meth:`Projector.begin_rebuild` until
:meth:`Projector.finish_rebuild`), the rebuild alone folds: a live write stores its events
and leaves them to the rebuild, which reads the log to its end. Each rebuild also moves
the tables' generation on, so a process that remembers rows from before reads them back.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Index, bindparam, inspect, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateTable

from events import Recorded, StorageError
from events.errors import NewerEventError, UnreadableEventError
from projections.folds import PROJECTIONS, Projection
from projections.remembered import RememberedRows
from projections.rows import Row, TableRows
from projections.search import (
    MARKED_BY_FIRST_WRITE,
    MARKED_BY_VERSION,
    MARKED_CURRENT,
    MESSAGES_INDEXED,
    SearchIndex,
    search_fingerprint,
)
from projections.sink import Derived, Joined, TableSink, driver_cursor, is_psycopg
from projections.tables import ProjectionTables
from projections.vectors import hold_off_vector_writes

__all__ = ["POSTGRES_SCHEMA_VERSION", "SCHEMA_VERSION", "FoldState", "Folded", "Projector"]

_POSITION = "projections"
_REBUILDING = "rebuilding"
_GENERATION = "generation"
_SCHEMA = "schema"

SCHEMA_VERSION = 18
"""The layout of the projection tables; bump it when a table, a fold or the search
fingerprint (how words are cut and indexed) changes: an older memvee refuses only a
higher number, and would otherwise lay a newer database out again in its own layout.

15 marks current entries in the knowledge index; the ``unreadable`` table came with it, so
a memvee from before that table (14 or lower) refuses a database laid out with it, rather
than serving a user whose log was left unfolded as one with no rows. 16 marks the
citations of a message that said a known entry again (``repeated``). 17 marks each
knowledge version's current entries in SQLite's index apart, so that a version's newest
rows of a word are its own (see :func:`projections.search.current_token`); an index of 16
is marked so in place at the open (:meth:`Projector.create`), and PostgreSQL, which
stores no mark, stays at 16 (:data:`POSTGRES_SCHEMA_VERSION`). 18 marks them by their
version's first write instead of its name, so that a promotion marks no entry again; an
index of 16 or 17 is marked so in place at the open, and PostgreSQL stays at 16."""

POSTGRES_SCHEMA_VERSION = 16
"""The layout of the projection tables on PostgreSQL: :data:`SCHEMA_VERSION` but for a
change of SQLite's index alone (17, 18), which left nothing stored on PostgreSQL otherwise.
Kept there, a database upgrades without a refold, and a memvee of the layout before still
opens it (in a rolling upgrade, say). Bump it with :data:`SCHEMA_VERSION` for any change
that PostgreSQL's tables see."""

_MARKED_IN_PLACE = (16, 17)
"""The SQLite layouts whose index :meth:`Projector.create` marks by each knowledge
version's first write in place (:meth:`projections.search.SearchIndex.mark_by_first_write`),
rather than refolding."""

_MARKS = {16: MARKED_CURRENT, 17: MARKED_BY_VERSION}
"""How SQLite's index of each earlier layout (16 on) marked current entries; later ones by
:data:`~projections.search.MARKED_BY_FIRST_WRITE`."""

VECTORS_SINCE = 10
"""The first schema version whose embeddings' ids are stored as now (16 bytes on SQLite,
see :class:`projections.columns.StoredId`): a refold keeps embeddings of this one on.
Raise it to :data:`SCHEMA_VERSION` when the vectors table's rows change form."""


@dataclass(frozen=True, slots=True)
class Folded:
    """Events folded over the rows they touch, not yet written (:meth:`Projector.fold`)."""

    events: list[Any]
    """The events, in log order."""
    tables: list[tuple[Projection, TableRows]]
    """Each projection the events touch, with its rows as folded."""


@dataclass(frozen=True, slots=True)
class FoldState:
    """How far the tables have folded the log, and whether a rebuild is doing it."""

    position: int
    """The id of the last notification folded (0 if none)."""
    rebuilding: bool
    """A rebuild runs, or stopped before the end: only a rebuild folds until it ends."""


class Projector:
    """Applies recorded events to one set of projection tables.

    With ``remember`` (the live path's projector), rows of projections that can check
    them (``Projection.current``) are remembered after each commit, up to that many per
    projection, and not read back by the next fold: the writer reports each
    transaction's outcome with :meth:`committed` or :meth:`discard`. ``on_rebuilding``
    (an attribute too) is called, inside the write, when a write finds the tables being
    rebuilt and leaves its events to the rebuild.
    """

    def __init__(
        self,
        tables: ProjectionTables,
        *,
        remember: int = 0,
        on_rebuilding: Callable[[], None] | None = None,
    ) -> None:
        self.tables = tables
        self.on_rebuilding = on_rebuilding
        self.search = SearchIndex(tables)
        self._sinks: dict[str, dict[str, TableSink]] = {}
        self._remembered = {
            p.table: RememberedRows(p.current, remember, p.began)
            for p in PROJECTIONS
            if p.current is not None and remember > 0
        }
        self._generation: int | None = None
        position = tables.position
        # Monotonic: on a server, transactions of several processes may commit out of id
        # order, and each folds its own events; the position only ever moves forward.
        # While a rebuild runs the row is named otherwise, so a write finds none to move.
        # PostgreSQL: a plain read of the rebuild's row and the generation first, and the
        # row moved after the fold, so the row lock every process's write takes is held
        # for the end alone (held through the fold, 4 processes wrote 1.25x one, not 1.5x).
        self._look = select(position.c.name, position.c.position).where(
            position.c.name.in_((_REBUILDING, _GENERATION))
        )
        self._move_position = (
            position.update()
            .where(position.c.name == _POSITION, position.c.position < bindparam("b_position"))
            .values(position=bindparam("b_position"))
        )
        self._pg_look_sql = (
            f"SELECT name, position FROM {position.name} "
            f"WHERE name IN ('{_REBUILDING}', '{_GENERATION}')"
        )
        self._pg_move_sql = (
            f"UPDATE {position.name} SET position = %s::INTEGER "
            f"WHERE name = '{_POSITION}' AND position < %s::INTEGER"
        )
        # SQLite: two statements, as RETURNING costs Python's driver about 15 µs more.
        self._claim_sql = (
            f"UPDATE {position.name} SET position = max(position, ?) WHERE name = '{_POSITION}'"
        )
        self._generation_sql = f"SELECT position FROM {position.name} WHERE name = '{_GENERATION}'"

    def create(self, connection: Connection, *, rebuilding: bool = False) -> bool:
        """Create the tables and indexes that are missing; ``True`` if the tables start
        empty (at 0).

        Tables of an older layout (another :data:`SCHEMA_VERSION`) are dropped first:
        projections are disposable, and the caller refolds them from the log.
        ``rebuilding`` marks tables that start empty as being rebuilt (see
        :meth:`begin_rebuild`), so that only a fold of the whole log fills them. Tables
        being rebuilt leave out the indexes no fold looks rows up by, for
        :meth:`finish_rebuild` to build once the rows are in: one sort each, not an index
        update per row. Otherwise every missing index is made.
        """
        return self._create(connection, rebuilding=rebuilding)

    def begin_rebuild(self, connection: Connection) -> None:
        """Drop the tables (but the embeddings) and make them again, empty and marked as
        being rebuilt: from then on no live write folds its events (they are left to the
        rebuild), and a process that remembers rows from before reads them back."""
        self._create(connection, rebuilding=True, drop=True)

    def _create(self, connection: Connection, *, rebuilding: bool, drop: bool = False) -> bool:
        position = self.tables.position
        generation = 0
        self._mark_versions_in_place(connection)
        # A rebuild asked for makes the tables again in this layout, whatever older one
        # theirs is (a newer memvee's is refused).
        current = self.layout_current(connection)
        if (drop or not current) and inspect(connection).has_table(position.name):
            generation = self.generation(connection) + 1
            self.drop(connection, keep_vectors=current or self._vectors_current(connection))
        existing = set(inspect(connection).get_table_names())
        for table in self.tables.metadata.sorted_tables:
            if table.name not in existing:
                connection.execute(CreateTable(table))
        fresh = connection.execute(select(position.c.name)).first() is None
        if fresh:
            connection.execute(
                position.insert(),
                [
                    {"name": _REBUILDING if rebuilding else _POSITION, "position": 0},
                    {"name": _SCHEMA, "position": _layout(connection)},
                    {"name": MESSAGES_INDEXED, "position": 0},
                    {"name": _GENERATION, "position": generation},
                ],
            )
        defer = self.state(connection).rebuilding
        _create_missing(
            connection,
            [i for i in self._indexes() if not defer or _folds_read(i, self.tables.prefix)],
        )
        self.search.create(connection)
        return fresh

    def _mark_versions_in_place(self, connection: Connection) -> None:
        """Bring SQLite projections of a layout of :data:`_MARKED_IN_PLACE` (this
        installation's words) to this layout in the caller's transaction: what changed
        since is the mark of current entries in the index, so the index is marked again in
        one statement where a refold of the whole log took seconds to minutes.

        PostgreSQL projections stamped with SQLite's layout 17 (:func:`_misstamped`) are
        stamped with their own."""
        if connection.dialect.name != "sqlite":
            if self._misstamped(connection):
                self._stamp_layout(connection)
            return
        stored = self._stored_layout(connection)
        if stored not in {_sqlite_layout(schema) for schema in _MARKED_IN_PLACE}:
            return
        self.search.mark_by_first_write(connection)
        self._stamp_layout(connection)

    def _misstamped(self, connection: Connection) -> bool:
        """Whether the stored layout is :func:`_misstamped` (read once, as stored)."""
        table = self.tables.position
        if not inspect(connection).has_table(table.name):
            return False
        layout = connection.execute(
            select(table.c.position).where(table.c.name == _SCHEMA)
        ).scalar()
        return layout is not None and _misstamped(int(layout), connection)

    def _stamp_layout(self, connection: Connection) -> None:
        """Store this layout as the projections' own, in the caller's transaction."""
        table = self.tables.position
        connection.execute(
            table.update().where(table.c.name == _SCHEMA).values(position=_layout(connection))
        )

    def _vectors_current(self, connection: Connection) -> bool:
        """Whether the stored embeddings are in this layout's form: their table has its
        columns, and its ids are stored as they are now (since :data:`VECTORS_SINCE`).
        Then an older layout's refold keeps them, as a rebuild does (they belong to item
        ids a refold gives again, and embedding every user again costs minutes, or
        money); ids stored otherwise would match no item, and no forget could erase them."""
        vectors = self.tables.vectors
        catalog = inspect(connection)
        layout = self._stored_layout(connection)
        if layout is None or layout >> 20 < VECTORS_SINCE or not catalog.has_table(vectors.name):
            return False
        found = {column["name"] for column in catalog.get_columns(vectors.name)}
        return found == {column.name for column in vectors.columns}

    def finish_rebuild(self, connection: Connection, position: int) -> None:
        """The rebuild has folded the log up to ``position``, its end (the caller holds
        off every other writer): build the deferred indexes and let live writes fold
        again."""
        self.create_indexes(connection)
        table = self.tables.position
        connection.execute(
            table.update()
            .where(table.c.name == _REBUILDING)
            .values(name=_POSITION, position=position)
        )

    def rebuilt_upto(self, connection: Connection, position: int) -> None:
        """A rebuild has folded the log up to ``position``."""
        table = self.tables.position
        connection.execute(
            table.update().where(table.c.name == _REBUILDING).values(position=position)
        )

    def renew(self, connection: Connection) -> None:
        """Rows were refolded in place (one user's rebuild) or erased (a user forgotten,
        a log marked unreadable): move the generation on, so a process that remembers rows
        from before reads them back, and a page folded ahead no longer holds."""
        table = self.tables.position
        generation = self.generation(connection) + 1
        updated = connection.execute(
            table.update().where(table.c.name == _GENERATION).values(position=generation)
        )
        if not updated.rowcount:
            connection.execute(table.insert(), {"name": _GENERATION, "position": generation})

    def state(self, connection: Connection) -> FoldState:
        """How far the tables have folded the log, and whether a rebuild is doing it.

        Tables of a newer memvee's layout are a :class:`StorageError` (see
        :meth:`layout_current`): every fold, rebuild and check reads this first.
        """
        table = self.tables.position
        query = select(table.c.name, table.c.position).where(
            table.c.name.in_((_POSITION, _REBUILDING, _SCHEMA))
        )
        rows: dict[str, int] = {name: position for name, position in connection.execute(query)}
        _refuse_newer(rows.get(_SCHEMA), connection)
        if _REBUILDING in rows:
            return FoldState(int(rows[_REBUILDING]), rebuilding=True)
        return FoldState(int(rows.get(_POSITION) or 0), rebuilding=False)

    def layout_current(self, connection: Connection) -> bool:
        """Whether the tables exist in this version's layout (not an older memvee's).

        Tables of a newer memvee's layout are a :class:`StorageError`: made again in this
        older layout, they would be made again in theirs by the newer one, back and forth.
        """
        return self._stored_layout(connection) == _layout(connection)

    def layout_older(self, connection: Connection) -> bool:
        """Whether the tables exist in an older memvee's layout: the next open refolds
        them, and until then no query of this version may run against them (a newer
        memvee's is a :class:`StorageError`, as for :meth:`layout_current`)."""
        layout = self._stored_layout(connection)
        return layout is not None and layout != _layout(connection)

    def _stored_layout(self, connection: Connection) -> int | None:
        """The layout the tables were made in; ``None`` when there are none. A newer
        memvee's is a :class:`StorageError`, even to a rebuild asked for."""
        table = self.tables.position
        if not inspect(connection).has_table(table.name):
            return None
        layout = connection.execute(
            select(table.c.position).where(table.c.name == _SCHEMA)
        ).scalar()
        _refuse_newer(layout, connection)
        if layout is not None and _misstamped(int(layout), connection):
            return _layout(connection)
        return None if layout is None else int(layout)

    def generation(self, connection: Connection) -> int:
        """The tables' generation: it moves on when their rows change but by folding the
        log onwards (the tables made again, one user's rows refolded in place or erased)."""
        table = self.tables.position
        found = connection.execute(
            select(table.c.position).where(table.c.name == _GENERATION)
        ).scalar()
        return int(found or 0)

    def create_indexes(self, connection: Connection) -> None:
        """Create every index of the tables that is missing (those a rebuild deferred)."""
        _create_missing(connection, self._indexes())

    def _indexes(self) -> list[Index]:
        return [i for t in self.tables.metadata.sorted_tables for i in sorted(t.indexes, key=_name)]

    def drop(self, connection: Connection, *, keep_vectors: bool = False) -> None:
        """Drop the tables (a rebuild starts from nothing). ``keep_vectors`` keeps the
        embeddings: no fold makes them, they belong to their items' ids, which a refold
        gives again, and embedding a large log again takes minutes."""
        self.search.drop(connection)
        vectors = self.tables.vectors
        dropped = [t for t in self.tables.metadata.sorted_tables if t is not vectors]
        self.tables.metadata.drop_all(connection, tables=dropped if keep_vectors else None)

    def apply(
        self,
        connection: Connection,
        recorded: Sequence[Recorded],
        *,
        move_position: bool = True,
        origins: Mapping[Any, datetime] | None = None,
    ) -> bool:
        """Fold ``recorded`` (in log order) and move the stored position past it; while
        a rebuild runs, fold nothing (the rebuild will). Returns whether it folded.

        ``move_position=False`` is a rebuild's own fold: events it counts itself, or
        events already counted (one user's rebuild).
        ``origins`` tells, by log id, when the stored log began, as the write checked it:
        a remembered row of another log that began otherwise is read back instead.
        """
        if not recorded:
            return True
        position = max(r.notification_id for r in recorded)
        if move_position and not self._claim_position(connection, position):
            return False
        folded = self.fold(connection, recorded, origins=origins)
        if not is_psycopg(connection.dialect):
            self.write(connection, folded)
            if move_position and connection.dialect.name != "sqlite":
                connection.execute(self._move_position, {"b_position": position})
            return True
        joined = Joined()
        self.write(connection, folded, joined)
        if move_position:
            joined.add(self.tables.position.name, self._pg_move_sql, (position, position))
        joined.send(driver_cursor(connection))
        return True

    def fold(
        self,
        connection: Connection,
        recorded: Sequence[Recorded],
        *,
        origins: Mapping[Any, datetime] | None = None,
    ) -> Folded:
        """``recorded`` folded over the stored rows they touch, read through
        ``connection``; nothing is written (see :meth:`write`)."""
        events = [r.event for r in recorded]
        sinks = self._sinks_for(connection.dialect)
        remembered = self._remembered
        tables: list[tuple[Projection, TableRows]] = []
        kinds = frozenset(map(type, events))
        for projection in PROJECTIONS:
            folded = projection.of(events, kinds)
            if folded:
                sink = sinks[projection.table]
                memory = remembered.get(projection.table)
                tables.append(
                    (projection, _folded(projection, folded, connection, sink, memory, origins))
                )
        return Folded(events, tables)

    def write(self, connection: Connection, folded: Folded, joined: Joined | None = None) -> None:
        """Write the net rows of ``folded`` (and, on SQLite, index its entries' words).

        With ``joined`` (psycopg), the tables whose change is one statement join it, to
        be sent by the caller: nothing else in the write may depend on their rows.
        """
        sinks = self._sinks_for(connection.dialect)
        knowledge: tuple[list[Row], list[Row], list[Hashable]] | None = None
        for projection, rows in folded.tables:
            changes = rows.changes()
            sinks[projection.table].write(connection, *changes, joined)
            if projection.table == "knowledge":
                knowledge = changes
            memory = self._remembered.get(projection.table)
            if memory is not None:
                memory.stage(rows)
        # Entries are indexed, or marked again, only by events the knowledge fold folds.
        if knowledge is not None and connection.dialect.name == "sqlite":
            self.search.write(connection, folded.events, knowledge)

    def committed(self) -> None:
        """The transaction of the last :meth:`apply` committed: remember its rows."""
        for memory in self._remembered.values():
            memory.commit()

    def discard(self) -> None:
        """The transaction of the last :meth:`apply` did not commit."""
        for memory in self._remembered.values():
            memory.discard()

    def _sinks_for(self, dialect: Dialect) -> dict[str, TableSink]:
        """The sink of every projection (by its table's role) on ``dialect``."""
        sinks = self._sinks.get(dialect.name)
        if sinks is None:
            derived: dict[str, Derived] = (
                self.search.pg_derived() if dialect.name == "postgresql" else {}
            )
            sinks = {
                p.table: TableSink(
                    getattr(self.tables, p.table), p.key, dialect, derived.get(p.table)
                )
                for p in PROJECTIONS
            }
            self._sinks[dialect.name] = sinks
        return sinks

    def forget(
        self, connection: Connection, log_id: str, *, keep_vectors: bool = False
    ) -> dict[str, int]:
        """Delete every row of one user's log from these tables; returns counts per table.

        ``keep_vectors`` keeps the user's embeddings, as :meth:`drop` does for a rebuild
        (one user's rebuild refolds the rest); an erasure deletes them too. The tables'
        generation moves on in the same transaction, so a page a rebuild read or built
        ahead before the deletion no longer holds, whatever ids were written since.
        """
        hold_off_vector_writes(connection, self.tables)
        for memory in self._remembered.values():
            memory.clear()
        erased: dict[str, int] = {"search": self.search.forget(connection, log_id)}
        vectors, unreadable = self.tables.vectors, self.tables.unreadable
        for table in self.tables.data_tables:
            if keep_vectors and table is vectors:
                continue
            if table is unreadable and not inspect(connection).has_table(table.name):
                continue  # tables made before it: an open makes it
            result = connection.execute(table.delete().where(table.c.log_id == log_id))
            erased[table.name.removeprefix(self.tables.prefix)] = result.rowcount
        self.search.erased(connection)
        self.renew(connection)
        return erased

    def unreadable(self, connection: Connection) -> dict[UUID, UnreadableEventError]:
        """Each log a fold left unfolded, by log id, with the error of its first event
        that cannot be read (naming its user where the fold knew them)."""
        table = self.tables.unreadable
        if not inspect(connection).has_table(table.name):
            return {}
        return {
            UUID(row.log_id): _unreadable_error(row) for row in connection.execute(select(table))
        }

    def still_unfolded(self, connection: Connection, log_id: UUID) -> bool:
        """Whether the log ``log_id`` is still left unfolded (one row, by its key): a
        ``memvee forget`` or ``rebuild --user`` in another process may have ended that."""
        table = self.tables.unreadable
        found = connection.execute(select(table.c.log_id).where(table.c.log_id == str(log_id)))
        return found.first() is not None

    def leave_unfolded(
        self, connection: Connection, errors: Sequence[UnreadableEventError]
    ) -> list[UnreadableEventError]:
        """Leave the logs of ``errors`` unfolded: their rows deleted (but the embeddings,
        as a rebuild keeps them) and each recorded with its error, named with its user
        where the users table knows them, so that a fold goes on past them and their
        user's reads and writes are refused. Returns the errors of the logs newly left."""
        left = self.unreadable(connection)
        users = self.tables.users
        newly: dict[UUID, UnreadableEventError] = {}
        for error in sorted(errors, key=lambda e: e.version):
            if error.log_id in left or error.log_id in newly:
                continue
            log_id = str(error.log_id)
            user = connection.execute(
                select(users.c.user_id).where(users.c.log_id == log_id)
            ).scalar()
            newly[error.log_id] = error if user is None else error.of_user(user)
            self.forget(connection, log_id, keep_vectors=True)
        if newly:
            connection.execute(
                self.tables.unreadable.insert(),
                [
                    {
                        "log_id": str(e.log_id),
                        "user_id": e.user_id,
                        "version": e.version,
                        "reason": e.reason,
                        "topic": e.topic if isinstance(e, NewerEventError) else None,
                    }
                    for e in newly.values()
                ],
            )
        return list(newly.values())

    def pass_over(self, connection: Connection, position: int) -> None:
        """Move the stored position on to ``position`` (never back), past events a
        catch-up left unfolded."""
        connection.execute(self._move_position, {"b_position": position})

    def index_messages(self, connection: Connection, limit: int | None = None) -> int:
        """Index the messages that wait for the full-text index (see
        :meth:`SearchIndex.index_messages`); returns how many."""
        return self.search.index_messages(connection, limit)

    def _claim_position(self, connection: Connection, position: int) -> bool:
        """Move the stored position to ``position`` (SQLite; PostgreSQL's moves after the
        fold) unless a rebuild runs (``False``: fold nothing). Rows remembered from another
        generation of the tables, or while a rebuild ran, are forgotten."""
        claimed: bool
        generation: int | None
        if connection.dialect.name == "sqlite":  # the hot path: no statement to compile
            driver = connection.connection.driver_connection
            assert driver is not None
            claimed = driver.execute(self._claim_sql, (position,)).rowcount > 0
            found = driver.execute(self._generation_sql).fetchone() if claimed else None
            generation = found[0] if found else None
        else:  # the position moves at the end of :meth:`apply`
            if is_psycopg(connection.dialect):
                found = driver_cursor(connection).execute(self._pg_look_sql)
            else:
                found = connection.execute(self._look)
            rows = {name: value for name, value in found}
            claimed, generation = _REBUILDING not in rows, rows.get(_GENERATION)
        if generation != self._generation:
            for memory in self._remembered.values():
                memory.clear()
            self._generation = generation
        if not claimed and self.on_rebuilding is not None:
            self.on_rebuilding()
        return claimed


def _folded(
    projection: Projection,
    events: Sequence[Any],
    connection: Connection,
    sink: TableSink,
    memory: RememberedRows | None = None,
    origins: Mapping[Any, datetime] | None = None,
) -> TableRows:
    """``events`` folded by ``projection`` over the stored rows they touch, loaded first
    (or, with ``memory``, recalled where still current: such a projection touches rows
    by its key only). A row an earlier event of ``events`` adds (``Projection.adds``) is
    not looked up: that event puts it, whatever was stored, before any later one reads it."""
    rows = projection.new_rows()
    wanted: dict[str, dict[Any, None]] = {}
    first: dict[Any, Any] = {}
    touches, adds = projection.touches, projection.adds
    key = projection.key[0]
    added: set[Any] = set()
    seen = 0  # the events before this one whose added rows are in ``added``
    for at, e in enumerate(events):
        for column, value in touches(e):
            if adds is not None and column == key:
                # Asked only once a key is touched: a live commit of messages alone,
                # which touches nothing, asks nothing.
                for earlier in events[seen:at]:
                    if (new := adds(earlier)) is not None:
                        added.add(new)
                seen = at
                if value in added:
                    continue  # put by an earlier event of these, before this one reads it
            wanted.setdefault(column, {})[value] = None
            if memory is not None and value not in first:
                first[value] = e
    if memory is not None and first:
        recalled, missing = memory.recall(first, origins)
        rows.load(recalled)
        wanted = {projection.key[0]: dict.fromkeys(missing)}
    for column, values in wanted.items():
        rows.load(sink.load(connection, column, list(values)))
    evolve = projection.evolve
    for e in events:
        evolve(rows, e)
    return rows


_LOOKED_UP = {p.table: {*p.key, *p.indexed} for p in PROJECTIONS}
"""Per table role, the columns the folds look stored rows up by (its key and indexes)."""


def _create_missing(connection: Connection, indexes: Sequence[Index]) -> None:
    """Create those of ``indexes`` the database lacks, their names read from its catalog
    once: asking for each (``checkfirst``) cost PostgreSQL two catalog queries an index,
    a sixth of every open of a Memory there."""
    existing = _index_names(connection)
    for index in indexes:
        if index.name not in existing:
            index.create(connection)


def _index_names(connection: Connection) -> set[str]:
    """The names of the indexes a statement on the connection finds unqualified: SQLite's
    database's, or those of the tables on PostgreSQL's search path."""
    if connection.dialect.name == "postgresql":
        query = (
            "SELECT relname FROM pg_catalog.pg_class "
            "WHERE relkind IN ('i', 'I') AND pg_catalog.pg_table_is_visible(oid)"
        )
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    return set(connection.execute(text(query)).scalars())


def _folds_read(index: Index, prefix: str) -> bool:
    """Whether a fold looks rows up through ``index`` (of a table named with ``prefix``):
    its leading column is one the folds look rows up by, so a rebuild needs it."""
    table = index.table
    assert table is not None
    role = table.name.removeprefix(prefix)
    leading = next(iter(index.columns)).name
    return leading in _LOOKED_UP.get(role, set())


def _unreadable_error(row: Any) -> UnreadableEventError:
    """The error a row of the unreadable table records."""
    log_id = UUID(row.log_id)
    if row.topic is not None:
        return NewerEventError(log_id, row.version, row.topic, row.user_id)
    return UnreadableEventError(log_id, row.version, row.reason, row.user_id)


def _name(index: Index) -> str:
    return str(index.name)


def _refuse_newer(layout: int | None, connection: Connection) -> None:
    """Raise :class:`StorageError` if ``layout`` (a stored one) is a newer memvee's, by the
    schema version of ``connection``'s backend."""
    schema = _schema_version(connection)
    if layout is not None and int(layout) >> 20 > schema and not _misstamped(layout, connection):
        raise StorageError(
            f"the projections are of a newer memvee's layout ({int(layout) >> 20}; this "
            f"memvee reads {schema} and older): upgrade memvee to use this database"
        )


def _misstamped(layout: int, connection: Connection) -> bool:
    """Whether ``layout`` is SQLite's layout 17 stored on PostgreSQL (by memvees of 6a8fd55
    to e7bd1a1, before PostgreSQL kept a number of its own): its tables hold nothing of it,
    so they are read as of PostgreSQL's own layout, not refused as a newer memvee's."""
    return connection.dialect.name != "sqlite" and int(layout) == _sqlite_layout(17)


def _schema_version(connection: Connection) -> int:
    """The schema version of the projection tables on ``connection``'s backend."""
    return SCHEMA_VERSION if connection.dialect.name == "sqlite" else POSTGRES_SCHEMA_VERSION


def _layout(connection: Connection) -> int:
    """What the stored layout must be on ``connection``'s database: the schema version,
    and the words the index would hold (another stemmer refolds, so a message is always
    unindexed as it was indexed). PostgreSQL's is of :data:`POSTGRES_SCHEMA_VERSION`."""
    if connection.dialect.name == "sqlite":
        return _sqlite_layout(SCHEMA_VERSION)
    fingerprint = search_fingerprint(MARKED_CURRENT)  # no mark stored
    return POSTGRES_SCHEMA_VERSION << 20 | fingerprint & 0xFFFFF  # fits a 32-bit column


def _sqlite_layout(schema: int) -> int:
    """The stored layout of SQLite projections of ``schema`` (16 or later) and this
    installation's words: from 17 on, the index marks knowledge versions apart."""
    fingerprint = search_fingerprint(_MARKS.get(schema, MARKED_BY_FIRST_WRITE))
    return schema << 20 | fingerprint & 0xFFFFF
