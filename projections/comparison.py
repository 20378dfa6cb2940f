"""Two sets of projection tables compared row by row, streamed: what :func:`verify` reports.

Each table is read on both sides in the order of its key and the two streams are merged,
so memory holds one key's rows at a time however large the tables are (reading whole
tables first took 790 MB for a log of 100,000 events). Rows meet by their whole key: both
columns of a citation, a message and a word's position in the index. The rows of one key
are compared as a multiset, so a row held twice on one side is a difference too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, column, select

from events import StorageError
from projections.collation import in_code_point_order
from projections.tables import folded_columns

__all__ = ["Difference", "Listing", "Row", "differences", "sortable", "table_listing"]

_YIELD_PER = 2000
"""Rows fetched at a time from each side."""


Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """A row present (or different) on one side only."""

    table: str
    live: Row | None
    rebuilt: Row | None


def _as_stored(row: Row) -> Row:
    return row


@dataclass(frozen=True, slots=True)
class Listing:
    """One table's rows as a comparison reads them: stored values, each row with its key,
    in key order.

    A key is made of stored values (see :func:`sortable`), so that Python orders keys
    exactly as the database ordered the rows: the merge relies on it, and refuses rows
    out of order. Rows are compared as stored (both sides store a value alike) and
    ``shown`` as the tables read them back, in reports and dumps.
    """

    table: str
    keyed_rows: Iterable[tuple[Row, Row]]
    shown: Callable[[Row], Row] = _as_stored

    @property
    def rows(self) -> Iterator[Row]:
        """The rows alone, as shown."""
        shown = self.shown
        return (shown(row) for _, row in self.keyed_rows)


def sortable(stored: Any) -> tuple[Any, ...]:
    """A value as stored, made comparable in the order SQLite sorts mixed types (NULL,
    numbers, text, blobs) and the order both databases sort text and blobs in (by code
    point, by byte)."""
    if stored is None:
        return (0,)
    if isinstance(stored, bytes):
        return (3, stored)
    if isinstance(stored, str):
        return (2, stored)
    return (1, stored)


def table_listing(connection: Connection, table: Table, role: str, key: tuple[str, ...]) -> Listing:
    """The folded columns of ``table`` (named ``role``), in the order of its ``key``."""
    columns = folded_columns(table)
    names = [c.name for c in columns]
    at = [names.index(k) for k in key]
    dialect = connection.dialect
    read = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
    order = [in_code_point_order(table.c[k], dialect.name) for k in key]
    # Untyped columns: the values as stored, converted only for the rows shown.
    query = select(*(column(n) for n in names)).select_from(table).order_by(*order)
    rows = connection.execution_options(yield_per=_YIELD_PER).execute(query)

    def shown(row: Row) -> Row:
        return tuple(v if r is None or v is None else r(v) for v, r in zip(row, read, strict=True))

    keyed = ((tuple(sortable(row[i]) for i in at), tuple(row)) for row in rows)
    return Listing(role, keyed, shown)


def differences(live: Listing, rebuilt: Listing) -> Iterator[Difference]:
    """Every difference between two listings of one table, in key order: a key's row on
    one side only, or changed (both rows, where each side holds one row the other lacks)."""
    left, right = _grouped(live), _grouped(rebuilt)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield from _unmatched(live, a[1], [])
            a = next(left, None)
        elif a is None or b[0] < a[0]:
            yield from _unmatched(live, [], b[1])
            b = next(right, None)
        else:
            yield from _unmatched(live, a[1], b[1])
            a, b = next(left, None), next(right, None)


def _grouped(listing: Listing) -> Iterator[tuple[Row, list[Row]]]:
    """The listing's rows, a list per key, refusing keys that come out of order."""
    current: Row | None = None
    group: list[Row] = []
    for key, row in listing.keyed_rows:
        if current is not None and key != current:
            if key < current:
                raise StorageError(
                    f"verify read the {listing.table} table out of key order "
                    f"({key!r} after {current!r}); it cannot compare it"
                )
            yield current, group
            group = []
        current = key
        group.append(row)
    if current is not None:
        yield current, group


def _unmatched(listing: Listing, live: list[Row], rebuilt: list[Row]) -> Iterator[Difference]:
    """The rows of one key that the other side lacks; pairs of them as changed rows (both
    listings are of one table, shown alike)."""
    if live == rebuilt:
        return
    left = list(live)
    only_rebuilt = []
    for row in rebuilt:
        if row in left:
            left.remove(row)
        else:
            only_rebuilt.append(row)
    for i in range(max(len(left), len(only_rebuilt))):
        yield Difference(
            listing.table,
            listing.shown(left[i]) if i < len(left) else None,
            listing.shown(only_rebuilt[i]) if i < len(only_rebuilt) else None,
        )
