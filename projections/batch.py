"""Folding a page of the log at once: the folds' statements applied to rows held in memory.

A rebuild or a replay folds thousands of events per transaction. Executing every fold
statement in SQL costs a statement per event; here a page's statements are applied, in
order, to the rows they touch (read up front), and only the net result is written back:
the rows inserted, changed or deleted, a few bulk statements per table. What each statement
does is read from the statement itself (its WHERE and SET clauses), so the folds remain the
one definition of the projections; a statement this module cannot interpret is refused
when the folder is built, never misread.

On SQLite the rows are kept in the database's own form (the strings SQLAlchemy would bind)
and go through the DBAPI cursor directly; on PostgreSQL they go through SQLAlchemy.
"""

from __future__ import annotations

import gc
import json
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Table, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnElement,
    Null,
)
from sqlalchemy.sql.sqltypes import NullType

__all__ = ["PageFolder", "collector_paused"]

Row = dict[str, Any]
Params = dict[str, Any]
Value = Callable[[Row, Params], Any]
"""An expression of a statement: its value for a row (before the statement) and params."""
Convert = Callable[[Any], Any]

_NO_ROW: Row = {}
_ARITHMETIC: dict[Any, Callable[[Any, Any], Any]] = {
    operators.add: operator.add,
    operators.sub: operator.sub,
}
_PRELOAD_CHUNK = 5000


class PageFolder:
    """Applies pages of fold operations (statement, params) to one database."""

    def __init__(self, statements: Iterable[Insert | Update | Delete], dialect: Dialect) -> None:
        self.native = dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._tables: dict[Table, _Table] = {}
        self._plans: dict[Any, _Plan] = {}
        known: list[tuple[Insert | Update | Delete, Table]] = []
        converters: dict[str, Convert | None] = {}
        for statement in statements:
            table = statement.table
            if not isinstance(table, Table):
                raise NotImplementedError(f"cannot fold into {table!r}")
            known.append((statement, table))
            if table not in self._tables:
                self._tables[table] = _Table(table, dialect, self.native, converters)
            if not isinstance(statement, Insert):
                self._tables[table].append_only = False
        # Every lookup first: a plan keeps an index up to date only if it knows of it.
        lookups: dict[Any, tuple[str, list[tuple[str, Value]]]] = {
            statement: _lookup(statement, self._tables[table])
            for statement, table in known
            if not isinstance(statement, Insert)
        }
        for statement, table in known:
            self._plans[statement] = _plan(statement, self._tables[table], lookups.get(statement))

    def apply(self, connection: Connection, ops: Iterable[tuple[Any, Params]]) -> None:
        """Apply ``ops`` in order, as executing each would, then write the net rows."""
        tables = self._tables.values()
        with self._lock:  # the page's rows live in the tables: one page at a time
            try:
                planned = []
                plans = self._plans
                for statement, params in ops:
                    plan = plans.get(statement)
                    if plan is None:
                        raise NotImplementedError(f"no plan for the statement {statement}")
                    if plan.gather is not None:
                        plan.gather(params)
                    planned.append((plan.apply, params))
                for table in tables:
                    table.preload(connection, self.native)
                for apply, params in planned:
                    apply(params)
                for table in tables:
                    table.flush(connection, self.native)
            finally:
                for table in tables:
                    table.reset()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page is read and folded.

    A page makes hundreds of thousands of objects that live until it is written, which
    the collector would scan over and over for nothing: none is part of a cycle, so
    reference counting frees them all once the page is done.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Plan:
    """How one statement changes the rows in memory, and which rows it needs first."""

    def __init__(self, apply: Callable[[Params], None], gather: Callable[[Params], None] | None):
        self.apply = apply
        self.gather = gather


class _Table:
    """One table's rows for the current page: those read up front and those written since."""

    def __init__(
        self, table: Table, dialect: Dialect, native: bool, shared: dict[str, Convert | None]
    ) -> None:
        self.table = table
        self.columns = tuple(c.name for c in table.columns)
        keys = list(table.primary_key.columns)
        self.key = keys[0].name if len(keys) == 1 else ""
        for column in table.columns:
            if column.default is not None or column.server_default is not None:
                raise NotImplementedError(f"{table.name}.{column.name} has a default")
        self.convert: dict[str, Convert | None] = {
            c.name: _converter(c, dialect, shared) if native else None for c in table.columns
        }
        self.append_only = True
        self.indexed: set[str] = set()
        self.wanted: dict[str, set[Any]] = {}
        self.rows: dict[Any, Row] = {}
        self.original: dict[Any, Row] = {}
        self.index: dict[str, dict[Any, dict[Any, None]]] = {}
        self.appended: list[Sequence[Any]] = []
        quote = dialect.identifier_preparer.quote
        self._q_table = quote(table.name)
        self._q_columns = [quote(c) for c in self.columns]

    def lookup(self, column: str) -> None:
        """Rows will be looked up by ``column``: index it (the key needs no index)."""
        if not self.key:
            raise NotImplementedError(f"{self.table.name} has no single-column key")
        self.wanted.setdefault(column, set())
        if column != self.key:
            self.indexed.add(column)
            self.index.setdefault(column, {})

    # ------------------------------------------------------------------ page life

    def preload(self, connection: Connection, native: bool) -> None:
        """Read every stored row the page's statements may touch."""
        for column, values in self.wanted.items():
            values.discard(None)
            if not values:
                continue
            for row in self._select(connection, column, list(values), native):
                key = row[self.key]
                if key not in self.original:
                    self.original[key] = dict(row)
                    self.rows[key] = row
                    self._index_add(key, row)

    def flush(self, connection: Connection, native: bool) -> None:
        """Write the page's net changes: deleted, changed and new rows."""
        if self.append_only:
            self._write(connection, native, "insert", self.appended)
            return
        rows, original = self.rows, self.original
        deleted = [(key,) for key in original if key not in rows]
        changed = [r for k, r in rows.items() if k in original and r != original[k]]
        added = [r for k, r in rows.items() if k not in original]
        self._write(connection, native, "delete", deleted)
        self._write(connection, native, "update", changed)
        self._write(connection, native, "insert", [tuple(r.values()) for r in added])

    def reset(self) -> None:
        """Forget the page (its rows are written, or its transaction failed)."""
        for values in self.wanted.values():
            values.clear()
        for entries in self.index.values():
            entries.clear()
        self.rows.clear()
        self.original.clear()
        self.appended.clear()

    # ------------------------------------------------------------------ rows

    def duplicate(self, key: Any) -> IntegrityError:
        """The error of inserting a row whose key is taken, as the primary key would raise."""
        message = f"duplicate key {key!r}"
        return IntegrityError(f"INSERT INTO {self.table.name}", None, ValueError(message))

    def matching(self, column: str, value: Any) -> list[Any]:
        """The keys of the rows where ``column`` equals ``value`` (SQL: never for NULL)."""
        if value is None:
            return []
        if column == self.key:
            return [value] if value in self.rows else []
        return list(self.index[column].get(value, ()))

    def delete(self, key: Any) -> None:
        """Remove the row ``key``."""
        self._index_remove(key, self.rows.pop(key))

    def _index_add(self, key: Any, row: Row) -> None:
        for column in self.indexed:
            _reindex(self.index[column], row[column], key)

    def _index_remove(self, key: Any, row: Row) -> None:
        for column in self.indexed:
            _unindex(self.index[column], row[column], key)

    # ------------------------------------------------------------------ database

    def _select(
        self, connection: Connection, column: str, values: list[Any], native: bool
    ) -> Iterable[Row]:
        columns = self.columns
        if native:
            query = (
                f"SELECT {', '.join(self._q_columns)} FROM {self._q_table} WHERE "
                f"{self._q_columns[columns.index(column)]} IN (SELECT value FROM json_each(?))"
            )
            result = connection.exec_driver_sql(query, (json.dumps(values),))
            return [dict(zip(columns, r, strict=True)) for r in result]
        t = self.table
        query_ = select(t).where(t.c[column].in_(bindparam("values", expanding=True)))
        rows = []
        for start in range(0, len(values), _PRELOAD_CHUNK):
            chunk = values[start : start + _PRELOAD_CHUNK]
            for r in connection.execute(query_, {"values": chunk}):
                rows.append(dict(zip(columns, r, strict=True)))
        return rows

    def _write(self, connection: Connection, native: bool, kind: str, rows: list[Any]) -> None:
        if not rows:
            return
        if native:
            cursor = connection.connection.driver_connection
            assert cursor is not None
            cursor.executemany(self._native_sql(kind), [self._native_row(kind, r) for r in rows])
            return
        t, key = self.table, self.key
        if kind == "insert":
            connection.execute(t.insert(), [dict(zip(self.columns, r, strict=True)) for r in rows])
        elif kind == "delete":
            where = t.c[key] == bindparam("k_key")
            connection.execute(t.delete().where(where), [{"k_key": r[0]} for r in rows])
        else:
            others = [c for c in self.columns if c != key]
            statement = (
                t.update()
                .where(t.c[key] == bindparam("k_key"))
                .values({c: bindparam(f"v_{c}") for c in others})
            )
            params = [{"k_key": r[key], **{f"v_{c}": r[c] for c in others}} for r in rows]
            connection.execute(statement, params)

    def _native_sql(self, kind: str) -> str:
        q_key = self._q_columns[self.columns.index(self.key)] if self.key else ""
        if kind == "insert":
            marks = ", ".join("?" for _ in self.columns)
            return f"INSERT INTO {self._q_table} ({', '.join(self._q_columns)}) VALUES ({marks})"
        if kind == "delete":
            return f"DELETE FROM {self._q_table} WHERE {q_key} = ?"
        sets = ", ".join(f"{q} = ?" for q in self._q_columns if q != q_key)
        return f"UPDATE {self._q_table} SET {sets} WHERE {q_key} = ?"

    def _native_row(self, kind: str, row: Any) -> Sequence[Any]:
        if kind != "update":
            values: Sequence[Any] = row
            return values
        key = self.key
        return [*(v for c, v in row.items() if c != key), row[key]]


# ---------------------------------------------------------------------- statements


def _lookup(statement: Update | Delete, table: _Table) -> tuple[str, list[tuple[str, Value]]]:
    """The column a statement finds its rows by (the key if it can), and its conditions."""
    where = _conditions(statement, table)
    if not where:
        raise NotImplementedError(f"no WHERE clause in {statement}")
    names = [c for c, _ in where]
    lookup = table.key if table.key in names else names[0]
    table.lookup(lookup)
    return lookup, where


def _plan(
    statement: Insert | Update | Delete,
    table: _Table,
    found: tuple[str, list[tuple[str, Value]]] | None,
) -> _Plan:
    """What ``statement`` does to ``table``'s rows, read from its clauses."""
    if isinstance(statement, Insert):
        return _insert_plan(statement, table)
    assert found is not None
    lookup, where = found
    first = dict(where)[lookup]
    others = [(c, v) for c, v in where if c != lookup]
    wanted = table.wanted[lookup]

    def gather(params: Params) -> None:
        wanted.add(first(_NO_ROW, params))

    def targets(params: Params) -> list[Any]:
        keys = table.matching(lookup, first(_NO_ROW, params))
        if not others or not keys:
            return keys
        rest = [(c, v(_NO_ROW, params)) for c, v in others]
        rows = table.rows
        return [k for k in keys if all(v is not None and rows[k][c] == v for c, v in rest)]

    if isinstance(statement, Delete):

        def delete(params: Params) -> None:
            for key in targets(params):
                table.delete(key)

        return _Plan(delete, gather)
    assign = _assigner(_assignments(statement, table), table)
    rows = table.rows
    if lookup != table.key or others:

        def update_matching(params: Params) -> None:
            for key in targets(params):
                assign(key, rows[key], params)

        return _Plan(update_matching, gather)

    def update_by_key(params: Params) -> None:
        # The common case, by primary key: one dict lookup.
        key = first(_NO_ROW, params)
        row = rows.get(key)
        if row is not None:
            assign(key, row, params)

    return _Plan(update_by_key, gather)


def _assigner(sets: list[tuple[str, Value]], table: _Table) -> Callable[[Any, Row, Params], None]:
    """Sets the columns of a row as an UPDATE does (every value is read from the old row),
    keeping the indexes of the columns it changes in step."""
    columns = [column for column, _ in sets]
    values = [value for _, value in sets]
    moves = [(i, c, table.index[c]) for i, c in enumerate(columns) if c in table.indexed]

    def assign(key: Any, row: Row, params: Params) -> None:
        new = [value(row, params) for value in values]
        for i, column, index in moves:
            if row[column] != new[i]:
                _unindex(index, row[column], key)
                _reindex(index, new[i], key)
        for column, value in zip(columns, new, strict=False):
            row[column] = value

    return assign


def _reindex(index: dict[Any, dict[Any, None]], value: Any, key: Any) -> None:
    if value is not None:
        index.setdefault(value, {})[key] = None


def _unindex(index: dict[Any, dict[Any, None]], value: Any, key: Any) -> None:
    if value is not None:
        entries = index[value]
        del entries[key]
        if not entries:
            del index[value]


def _insert_plan(statement: Insert, table: _Table) -> _Plan:
    if statement._values or statement.select is not None:
        raise NotImplementedError(f"only plain INSERTs of parameters fold: {statement}")
    values = _row_values(table)
    if table.append_only:
        appended = table.appended

        def append(params: Params) -> None:
            appended.append(values(params))

        return _Plan(append, None)
    names, key_name, rows = table.columns, table.key, table.rows
    indexes = [(c, table.index[c]) for c in table.indexed]

    def insert(params: Params) -> None:
        row = dict(zip(names, values(params), strict=False))
        key = row[key_name]
        if key in rows:
            raise table.duplicate(key)
        rows[key] = row
        for column, index in indexes:
            _reindex(index, row[column], key)

    return _Plan(insert, None)


def _row_values(table: _Table) -> Callable[[Params], Sequence[Any]]:
    """An inserted row's values in column order, as bound (a missing column is NULL)."""
    names = table.columns
    get = operator.itemgetter(*names)
    converted = [(i, c) for i, c in enumerate(table.convert[n] for n in names) if c is not None]

    def values(params: Params) -> Sequence[Any]:
        try:
            row: Sequence[Any] = get(params)
        except KeyError:  # a column left out is NULL, as in SQL, never bound
            return tuple(_bound(params, n, table.convert[n]) for n in names)
        if not converted:
            return row
        out = list(row)
        for i, convert in converted:
            out[i] = convert(out[i])
        return out

    if len(names) < 2:
        raise NotImplementedError(f"{table.table.name} has fewer than two columns")
    return values


def _bound(params: Params, name: str, convert: Convert | None) -> Any:
    if name not in params:
        return None
    return params[name] if convert is None else convert(params[name])


def _conditions(statement: Update | Delete, table: _Table) -> list[tuple[str, Value]]:
    """The WHERE clause as (column, value) equalities, all of which must hold."""
    clause = statement.whereclause
    if clause is None:
        return []
    parts: Sequence[Any] = [clause]
    if isinstance(clause, BooleanClauseList):
        if clause.operator is not operators.and_:
            raise NotImplementedError(f"only AND in WHERE clauses fold: {statement}")
        parts = list(clause.clauses)
    out = []
    for part in parts:
        if not isinstance(part, BinaryExpression) or part.operator is not operators.eq:
            raise NotImplementedError(f"only column = value conditions fold: {statement}")
        column, other = part.left, part.right
        if not _is_column_of(column, table):
            column, other = other, column
        if not _is_column_of(column, table) or not isinstance(other, BindParameter):
            raise NotImplementedError(f"only column = value conditions fold: {statement}")
        out.append((column.name, _expression(other, table, column.name)))
    return out


def _assignments(statement: Update, table: _Table) -> list[tuple[str, Value]]:
    """The SET clause as (column, new value from the old row) pairs."""
    sets = []
    for target, expression in (statement._values or {}).items():
        name = target if isinstance(target, str) else getattr(target, "name", None)
        if name not in table.convert:
            raise NotImplementedError(f"cannot set {target!r} in {statement}")
        sets.append((name, _expression(expression, table, name)))
    if not sets or statement._ordered_values:
        raise NotImplementedError(f"only UPDATE ... SET with values() folds: {statement}")
    return sets


def _expression(expression: Any, table: _Table, target: str | None) -> Value:
    """A value expression: a parameter, a literal, NULL, a column, or + and - of those.

    Parameters and literals are converted as the ``target`` column binds them (a
    parameter typed otherwise is refused); column values are already in stored form.
    """
    convert = None if target is None else table.convert[target]
    if isinstance(expression, BindParameter):
        kind = expression.type
        column_type = None if target is None else table.table.c[target].type
        if (
            column_type is not None
            and not isinstance(kind, NullType)
            and repr(kind) != repr(column_type)
        ):
            raise NotImplementedError(f"a parameter typed unlike its column: {expression}")
        if expression.unique or expression.callable is not None:
            # A literal of the statement (a value given to where() or values()).
            literal = expression.effective_value
            constant = literal if convert is None else convert(literal)
            return lambda row, params: constant
        key = expression.key
        if expression.required:
            if convert is None:
                return lambda row, params: params[key]
            return lambda row, params: convert(params[key])
        default = expression.value
        if convert is None:
            return lambda row, params: params.get(key, default)
        return lambda row, params: convert(params.get(key, default))
    if isinstance(expression, Null):
        return lambda row, params: None
    if _is_column_of(expression, table):
        name = expression.name
        return lambda row, params: row[name]
    if isinstance(expression, BinaryExpression) and expression.operator in _ARITHMETIC:
        if table.convert.get(getattr(expression.left, "name", ""), None) is not None:
            raise NotImplementedError(f"arithmetic on a converted column: {expression}")
        left = _expression(expression.left, table, None)
        right = _expression(expression.right, table, None)
        combine = _ARITHMETIC[expression.operator]

        def arithmetic(row: Row, params: Params) -> Any:
            a, b = left(row, params), right(row, params)
            return None if a is None or b is None else combine(a, b)

        if convert is None:
            return arithmetic
        return lambda row, params: convert(arithmetic(row, params))
    raise NotImplementedError(f"cannot fold the expression {expression!r}")


def _is_column_of(element: Any, table: _Table) -> bool:
    return isinstance(element, ColumnElement) and getattr(element, "table", None) is table.table


# ---------------------------------------------------------------------- stored forms


def _converter(
    column: Column[Any], dialect: Dialect, shared: dict[str, Convert | None]
) -> Convert | None:
    """What SQLAlchemy binds for a value of ``column`` (``None``: the value itself).

    Columns of one type share their converter (and so its memory of the last datetime).
    """
    kind = repr(column.type)
    if kind in shared:
        return shared[kind]
    bind: Convert | None = column.type.dialect_impl(dialect).bind_processor(dialect)
    if bind is not None and isinstance(column.type, DateTime):
        fast = _fast_datetime(bind)
        bind = fast if _same_datetimes(fast, bind) else bind
    shared[kind] = bind
    return bind


def _fast_datetime(bind: Convert) -> Convert:
    """SQLite's DATETIME bind, without its per-field formatting for plain datetimes."""

    last: list[Any] = [None, None]  # the latest datetime and its text: one event binds twice

    def convert(value: Any) -> Any:
        if value is last[0] and value is not None:
            return last[1]
        if type(value) is datetime:
            text = value.isoformat(" ", "microseconds")[:26]
            last[0], last[1] = value, text
            return text
        return bind(value)

    return convert


def _same_datetimes(fast: Convert, bind: Convert) -> bool:
    """Whether ``fast`` gives what SQLAlchemy's own ``bind`` gives, on telling samples."""
    plus_two = timezone(timedelta(hours=2))
    samples = [
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=plus_two),
        datetime(999, 12, 31, 23, 59, 59, 1),
        datetime(2026, 6, 7),
    ]
    return all(fast(s) == bind(s) for s in samples)
