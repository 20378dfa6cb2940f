"""Where folded rows meet SQL: loading the stored rows a fold needs, writing the net rows.

Only the folded columns are read and written (see :data:`~projections.tables.UNFOLDED`).
Every table is written with one bulk statement per kind of change: delete, update, insert
(an executemany; on PostgreSQL, a few rows' insert as one multi-row ``VALUES``). On
SQLite and on PostgreSQL through psycopg 3 the rows go through the DBAPI connection
directly, each value bound as SQLAlchemy would bind it (and, on PostgreSQL, cast to its
column's type as SQLAlchemy renders it), or, for ids on SQLite, as a bytearray that
sqlite3 stores as the very BLOB SQLAlchemy's bytes give (see
:func:`~projections.columns.id_param`): the hot path pays no statement compilation,
which on PostgreSQL cost more CPU than the driver itself. There, the single statements
of a write's tables also go as one (:class:`Joined`). Other drivers go through
SQLAlchemy Core. A table may have a :class:`Derived` column besides, inserted with the
folded ones (PostgreSQL's search vectors).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Table, and_, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from projections.columns import StoredId, id_param
from projections.rows import Row
from projections.tables import folded_columns

__all__ = [
    "Derived",
    "Joined",
    "TableSink",
    "driver_cursor",
    "is_psycopg",
    "matching",
    "stored_form",
]

Convert = Callable[[Any], Any]

_CHUNK = 5000
"""Values per lookup statement (PostgreSQL's bind parameters are limited)."""

_ROWS_IN_ONE_INSERT = 8
"""Most rows inserted with one multi-row ``VALUES`` on PostgreSQL; more go by psycopg's
executemany. An exchange's two rows cost a third of executemany's CPU so; from some 32
rows the server's parsing of the long statement costs more than it saves (256 rows:
9.1 against 6.7 ms, committed)."""

_ROWS_BY_COLUMN = 8
"""Fewest rows whose stored values are worked out a column at a time, and whose SQLite
insert leaves out the columns NULL in every row; fewer go a row at a time with every
column. On a live commit's few rows the columns' and the scan's work costs more than it
saves (callgrind, 2 messages inserted and a user updated: 214,712 instructions a row at a
time, 247,712 a column at a time); on a rebuild's pages of thousands it saves a third."""


class Joined:
    """Single statements of one write that go to PostgreSQL as one: each but the last a
    ``WITH`` clause of the last, so the client and the server handle one statement.

    Data-modifying ``WITH`` clauses all run, on one snapshot, in no set order, so only
    statements that cannot meet are joined: one per table (see :meth:`TableSink.write`),
    besides the position's move. In a micro-benchmark, a transaction of a lone
    exchange's three (its messages, its user, the position) cost the client 380 µs of
    CPU with them apart, 230 µs with them joined.
    """

    __slots__ = ("_params", "_statements", "_tables")

    def __init__(self) -> None:
        self._statements: list[str] = []
        self._params: list[Any] = []
        self._tables: set[str] = set()

    def add(self, table: str, sql: str, params: Sequence[Any]) -> None:
        """Join ``sql``, a statement on ``table``, with its ``params`` (``%s``
        placeholders). A second statement on one table is a ValueError: PostgreSQL
        would apply only one of two changes to a row."""
        if table in self._tables:
            raise ValueError(f"a second statement on {table} cannot join the first")
        self._tables.add(table)
        self._statements.append(sql)
        self._params.extend(params)

    def send(self, cursor: Any) -> None:
        """Run the joined statements on psycopg's ``cursor``; none: nothing is sent."""
        statements = self._statements
        if not statements:
            return
        clauses = ", ".join(f"s{n} AS ({sql})" for n, sql in enumerate(statements[:-1]))
        sql = f"WITH {clauses} {statements[-1]}" if clauses else statements[-1]
        cursor.execute(sql, self._params)
        statements.clear()
        self._params.clear()
        self._tables.clear()


@dataclass(frozen=True, slots=True)
class Derived:
    """A column the database keeps beside a table's folded ones, its value computed from
    each row as it is inserted: not folded, read or compared as one. The folds must set
    what it is computed from at insert only (a message's words, an entry's text)."""

    column: str
    type: TypeEngine[Any]
    value: Callable[[Row], Any]


class TableSink:
    """Reads and writes the rows of one table on one kind of database (and its
    ``derived`` column, if any, on inserts)."""

    def __init__(
        self,
        table: Table,
        key: tuple[str, ...],
        dialect: Dialect,
        derived: Derived | None = None,
    ) -> None:
        self.table = table
        self.key = key
        self.derived = derived
        folded = folded_columns(table)
        self.columns = tuple(c.name for c in folded)
        self.native = dialect.name == "sqlite" or is_psycopg(dialect)
        self._sqlite = dialect.name == "sqlite"
        shared: dict[str, Convert | None] = {}
        bind = {c.name: stored_form(c, dialect, shared) for c in folded}
        written = dict(bind)
        if self._sqlite:  # ids written as bytearrays: see id_param
            written.update({c.name: id_param for c in folded if isinstance(c.type, StoredId)})
        for forms in (bind, written):
            if (log_id := forms.get(REPEATED)) is not None:
                forms[REPEATED] = _remembering(log_id)
        self._bind = bind
        self._written = written
        self._insert_order = _StoredOrder(self.columns, written)
        self._key_order = _StoredOrder(key, written)
        self._updates: dict[tuple[str, ...], tuple[str, _StoredOrder]] = {}
        self._inserts: dict[int, str] = {}
        # A column with a default is never left out: SQLite would store the default where
        # the fold wrote NULL.
        self._nullable = [
            i
            for i, c in enumerate(folded)
            if c.nullable and not c.primary_key and c.server_default is None and c.default is None
        ]
        # One statement per set of columns kept: at most 2 ** len(_nullable) per table,
        # a handful of nullable columns each (sqlite3's own cache keeps 128 a connection).
        self._sqlite_inserts: dict[tuple[int, ...], str] = {}
        self._read = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in folded]
        quote = dialect.identifier_preparer.quote
        self._q_table = quote(table.name)
        self._q = {c: quote(c) for c in self.columns}
        self._mark = {c.name: _mark(c, dialect) for c in folded}
        self._where = " AND ".join(f"{self._q[k]} = {self._mark[k]}" for k in key)
        marks = ", ".join(self._mark[c] for c in self.columns)
        named = ", ".join(self._q[c] for c in self.columns)
        self._core_insert = table.insert()
        if derived is not None:
            marks += f", %s::{derived.type.compile(dialect=dialect)}"
            named += f", {quote(derived.column)}"
            columns = [Column(c.name, c.type) for c in folded]
            extended = Table(table.name, MetaData(), *columns, Column(derived.column, derived.type))
            self._core_insert = extended.insert()
        self._insert_head = _insert_head(self._q_table, named)
        self._insert_row = f"({marks})"
        self._insert_sql = self._insert_head + self._insert_row
        self._delete_sql = f"DELETE FROM {self._q_table} WHERE {self._where}"

    def load(self, connection: Connection, column: str, values: Sequence[Any]) -> list[Row]:
        """The stored rows whose ``column`` has one of ``values``."""
        if not values:
            return []
        if self.native:
            return self._load_native(connection, column, values)
        t = self.table
        query = select(*[t.c[c] for c in self.columns]).where(
            t.c[column].in_(bindparam("values", expanding=True))
        )
        rows = []
        for start in range(0, len(values), _CHUNK):
            chunk = list(values[start : start + _CHUNK])
            for r in connection.execute(query, {"values": chunk}):
                rows.append(dict(zip(self.columns, r, strict=True)))
        return rows

    def write(
        self,
        connection: Connection,
        inserted: list[Row],
        updated: list[Row],
        deleted: list[Hashable],
        joined: Joined | None = None,
    ) -> None:
        """Write the net change: delete, then update, then insert, one statement each.

        With ``joined`` (psycopg), a change that is one single statement joins it, to be
        sent with the write's others; any other runs now, in that order.
        """
        if not (inserted or updated or deleted):
            return
        if self.native:
            self._write_native(connection, inserted, updated, deleted, joined)
            return
        t, key = self.table, self.key
        if deleted:
            where = and_(*[t.c[k] == bindparam(f"k_{k}") for k in key])
            connection.execute(t.delete().where(where), [self._key_params(k) for k in deleted])
        if updated:
            where = and_(*[t.c[k] == bindparam(f"k_{k}") for k in key])
            for changed, rows in _by_changed_columns(updated, key).items():
                statement = (
                    t.update().where(where).values({c: bindparam(f"v_{c}") for c in changed})
                )
                connection.execute(
                    statement,
                    [
                        {**{f"k_{k}": r[k] for k in key}, **{f"v_{c}": r[c] for c in changed}}
                        for r in rows
                    ],
                )
        if inserted:
            derived = self.derived
            if derived is not None:
                inserted = [{**r, derived.column: derived.value(r)} for r in inserted]
            connection.execute(self._core_insert, inserted)

    def _key_params(self, key: Hashable) -> dict[str, Any]:
        values = key if isinstance(key, tuple) else (key,)
        return {f"k_{k}": v for k, v in zip(self.key, values, strict=True)}

    def _load_native(self, connection: Connection, column: str, values: Sequence[Any]) -> list[Row]:
        bind = self._bind[column]
        stored = [v if bind is None or v is None else bind(v) for v in values]
        selected = ", ".join(self._q[c] for c in self.columns)
        cursor = driver_cursor(connection)
        found = []
        for start in range(0, len(stored), _CHUNK):
            chunk = stored[start : start + _CHUNK]
            if self._sqlite:
                where, params = matching(self._q[column], chunk)
            else:  # one array, so one statement (and one prepared plan) for any count
                where, params = f"{self._q[column]} = ANY({self._mark[column]}[])", (chunk,)
            sql = f"SELECT {selected} FROM {self._q_table} WHERE {where}"
            found += cursor.execute(sql, params).fetchall()
        names, read = self.columns, self._read
        return [
            {
                n: v if r is None or v is None else r(v)
                for n, v, r in zip(names, row, read, strict=True)
            }
            for row in found
        ]

    def _write_native(
        self,
        connection: Connection,
        inserted: list[Row],
        updated: list[Row],
        deleted: list[Hashable],
        joined: Joined | None,
    ) -> None:
        statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
        if deleted:
            keys = [k if isinstance(k, tuple) else (k,) for k in deleted]
            statements.append((self._delete_sql, self._key_order.ordered(keys)))
        if updated:
            for changed, rows in _by_changed_columns(updated, self.key).items():
                sql, order = self._update(changed)
                statements.append((sql, order.rows(rows)))
        if inserted and self._sqlite and self.derived is None and len(inserted) >= _ROWS_BY_COLUMN:
            statements.append(self._sqlite_insert(inserted))
        elif inserted:
            values = self._insert_order.rows(inserted)
            if self.derived is not None:
                value = self.derived.value
                values = [(*v, value(row)) for v, row in zip(values, inserted, strict=True)]
            if self._sqlite or len(values) > _ROWS_IN_ONE_INSERT:
                statements.append((self._insert_sql, values))
            else:
                flat = [v for r in values for v in r]
                statements.append((self._multi_row_insert(len(values)), [flat]))
        if joined is not None and not self._sqlite and len(statements) == 1:
            only, params = statements[0]
            if len(params) == 1:
                joined.add(self.table.name, only, params[0])
                return
        cursor = driver_cursor(connection)
        for statement, params in statements:
            _execute(cursor, statement, params)

    def _sqlite_insert(self, rows: list[Row]) -> tuple[str, list[tuple[Any, ...]]]:
        """The insert of ``rows`` on SQLite, leaving out the nullable columns that are NULL
        in every one of them (a page's messages held by no task, entries that have not
        ended): an omitted column is NULL for free, where sqlite3 looks for an adapter for
        every ``None`` it binds, as for bytes (see :func:`~projections.columns.id_param`)."""
        columns = self._insert_order.columns(rows)
        count = len(rows)
        empty = [
            i for i in self._nullable if columns[i][0] is None and columns[i].count(None) == count
        ]
        if not empty:
            return self._insert_sql, list(zip(*columns, strict=True))
        kept = tuple(i for i in range(len(columns)) if i not in empty)
        sql = self._sqlite_inserts.get(kept)
        if sql is None:
            named = ", ".join(self._q[self.columns[i]] for i in kept)
            marks = ", ".join("?" for _ in kept)
            sql = self._sqlite_inserts[kept] = f"{_insert_head(self._q_table, named)}({marks})"
        return sql, list(zip(*[columns[i] for i in kept], strict=True))

    def _multi_row_insert(self, rows: int) -> str:
        """An insert of ``rows`` rows in one ``VALUES`` (PostgreSQL)."""
        sql = self._inserts.get(rows)
        if sql is None:
            sql = self._inserts[rows] = self._insert_head + ", ".join([self._insert_row] * rows)
        return sql

    def _update(self, changed: tuple[str, ...]) -> tuple[str, _StoredOrder]:
        """The statement that sets ``changed`` on a row found by its key, and the order of
        its values (the changed columns, then the key)."""
        found = self._updates.get(changed)
        if found is None:
            sets = ", ".join(f"{self._q[c]} = {self._mark[c]}" for c in changed)
            sql = f"UPDATE {self._q_table} SET {sets} WHERE {self._where}"
            order = _StoredOrder((*changed, *self.key), self._written)
            found = self._updates[changed] = (sql, order)
        return found


def is_psycopg(dialect: Dialect) -> bool:
    """Whether ``dialect`` is PostgreSQL through psycopg 3, whose connection memvee's hot
    path drives directly."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def driver_cursor(connection: Connection) -> Any:
    """What runs raw statements on ``connection``'s DBAPI connection (SQLite's or
    psycopg's): ``execute(sql, params)`` returning rows to fetch, and ``executemany``."""
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver if connection.dialect.name == "sqlite" else driver.cursor()


def _execute(cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``sql`` for each of ``rows``: one row as a plain statement (psycopg's executemany
    enters and leaves a pipeline, two more waits for the server), more in bulk."""
    if len(rows) == 1:
        cursor.execute(sql, rows[0])
    else:
        cursor.executemany(sql, rows)


def _insert_head(table: str, named: str) -> str:
    """An insert's text up to its values: into ``table`` (quoted), the ``named`` columns."""
    return f"INSERT INTO {table} ({named}) VALUES "


def _mark(column: Column[Any], dialect: Dialect) -> str:
    """The placeholder of a value of ``column``: SQLite's ``?``; psycopg's ``%s`` cast to
    the column's type as SQLAlchemy renders it, so the server reads each value as
    SQLAlchemy's statements had it read (a ``bool`` into an integer column, say)."""
    if dialect.name == "sqlite":
        return "?"
    return f"%s::{column.type.compile(dialect=dialect)}"


_FEW_IDS = 64
"""More 16-byte ids than this are looked up as one blob (:data:`_CUT_IDS`), not one
parameter each."""

_CUT_IDS = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2) "
    "SELECT substr(?1, i * 16 + 1, 16) FROM n"
)
"""The 16-byte ids joined in blob ``?1``, ``?2`` of them, cut apart by SQLite itself."""


def matching(column: str, values: list[Any]) -> tuple[str, tuple[Any, ...]]:
    """A ``WHERE`` for ``column`` in ``values`` and its parameters (SQLite).

    Text and numbers go as one JSON array, so the statement is the same for any count.
    16-byte ids cannot: a few go as ``IN (?, ...)`` padded to a power of two (a handful of
    statements for SQLite's statement cache, not one per count); more go as one blob that
    SQLite cuts apart (:data:`_CUT_IDS`), as a rebuild's page of thousands does: 7,000
    parameters cost it about 12 ms to parse and bind, the blob about 2.
    """
    if len(values) == 1:
        return f"{column} = ?", (values[0],)
    if not any(type(v) is bytes for v in values):
        return f"{column} IN (SELECT value FROM json_each(?))", (json.dumps(values),)
    if len(values) > _FEW_IDS and all(type(v) is bytes and len(v) == 16 for v in values):
        return f"{column} IN ({_CUT_IDS})", (b"".join(values), len(values))
    size = 1 << (len(values) - 1).bit_length()
    padded = (*values, *(values[-1:] * (size - len(values))))
    return f"{column} IN ({', '.join('?' * size)})", padded


def _by_changed_columns(
    updated: list[Row], key: tuple[str, ...]
) -> dict[tuple[str, ...], list[Row]]:
    """Changes grouped by the columns they set (the key excepted), one statement each."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in updated:
        changed = tuple([c for c in row if c not in key])  # a list first: see TableRows.key_of
        groups.setdefault(changed, []).append(row)
    return groups


class _StoredOrder:
    """Rows' values in one column order, each as it is written: as SQLAlchemy would bind
    it, or the same stored value bound more cheaply (ids on SQLite: ``id_param``)."""

    def __init__(self, names: Sequence[str], written: dict[str, Convert | None]) -> None:
        self._get = operator.itemgetter(*names)
        self._single = len(names) == 1
        self._converted: list[tuple[int, Convert]] = [
            (i, convert) for i, n in enumerate(names) if (convert := written[n]) is not None
        ]

    def rows(self, rows: Sequence[Row]) -> list[Sequence[Any]]:
        """The stored values of each of ``rows``, in order."""
        get = self._get
        if self._single:
            return self.ordered([(get(row),) for row in rows])
        return self.ordered(list(map(get, rows)))

    def ordered(self, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        """The stored values of ``rows`` whose values are already in order (a delete's
        keys). From :data:`_ROWS_BY_COLUMN` rows they are worked out a column at a time
        (a page's thousands then cost a loop per converted column, not a loop over the
        converted columns of every row); fewer, a row at a time."""
        if len(rows) >= _ROWS_BY_COLUMN:
            return list(zip(*self._converted_columns(list(zip(*rows, strict=True))), strict=True))
        out: list[Sequence[Any]] = []
        for row in rows:
            values = list(row)
            for i, convert in self._converted:
                value = values[i]
                if value is not None:
                    values[i] = convert(value)
            out.append(values)
        return out

    def columns(self, rows: Sequence[Row]) -> list[Sequence[Any]]:
        """The stored values of ``rows`` (at least one), a sequence per column in order."""
        get = self._get
        if self._single:
            return self._converted_columns([[get(row) for row in rows]])
        return self._converted_columns(list(zip(*map(get, rows), strict=True)))

    def _converted_columns(self, columns: list[Sequence[Any]]) -> list[Sequence[Any]]:
        """``columns``, each converted column replaced by its stored values."""
        for i, convert in self._converted:
            columns[i] = [v if v is None else convert(v) for v in columns[i]]
        return columns


REPEATED = "log_id"
"""The column whose few values come back on every row of a user: its stored forms are
remembered, not converted again for every row."""

_REMEMBERED_FORMS = 4096


def _remembering(convert: Convert) -> Convert:
    """``convert``, remembering its latest results (``lru_cache`` keeps them out of the
    collector's walks)."""
    return functools.lru_cache(maxsize=_REMEMBERED_FORMS)(convert)


def stored_form(
    column: Column[Any], dialect: Dialect, shared: dict[str, Convert | None]
) -> Convert | None:
    """What SQLAlchemy binds for a value of ``column`` (``None``: the value itself).

    Columns of one type share their converter (and so its memory of the last datetime).
    """
    kind = repr(column.type)
    if kind in shared:
        return shared[kind]
    bind: Convert | None = column.type.dialect_impl(dialect).bind_processor(dialect)
    shared[kind] = bind
    return bind
