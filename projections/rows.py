"""One table's rows held in memory while a commit, a page or a replay is folded.

The folds read and change rows here, by primary key (or through a secondary index such as
the task holding buffered messages); what was stored before is loaded in first, and the
net change (rows inserted, updated, deleted) is what the sink writes back afterwards.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["Row", "TableRows"]

Row = dict[str, Any]
"""A row as a dict of column values, in the projection's Python form."""


class TableRows:
    """The rows of one table that a fold run has loaded or written, keyed by primary key.

    A row absent here is absent for the folds: changing or deleting it does nothing, as an
    UPDATE or DELETE matching no row would. Columns named in ``indexed`` can be searched
    with :meth:`find`.
    """

    def __init__(self, key: tuple[str, ...], indexed: tuple[str, ...] = ()) -> None:
        self.key_columns = key
        self._single_key = key[0] if len(key) == 1 else None
        self.rows: dict[Hashable, Row] = {}
        self.stored: dict[Hashable, Row] = {}
        self.written: dict[Hashable, None] = {}
        self._indexes: dict[str, dict[Any, dict[Hashable, None]]] = {c: {} for c in indexed}

    def key_of(self, row: Row) -> Hashable:
        """The primary key of ``row``: a column's value, or a tuple of them."""
        columns = self.key_columns
        if len(columns) == 1:
            key: Hashable = row[columns[0]]
            return key
        # From a list, not a generator: on CPython 3.11 a tuple grown from a generator can
        # be caught half-built by gc.get_objects() on another thread, and then fails with
        # SystemError: a group commit failed this way while the add_exchange bench walked
        # the heap.
        return tuple([row[c] for c in columns])

    def load(self, rows: Iterable[Row]) -> None:
        """Add rows read from the database; a row already held here is kept as it is."""
        for row in rows:
            key = self.key_of(row)
            if key not in self.rows and key not in self.stored:
                self.stored[key] = dict(row)
                self.rows[key] = row
                self._index(key, row)

    def get(self, key: Hashable) -> Row | None:
        """The row with primary key ``key``, or ``None``."""
        return self.rows.get(key)

    def find(self, column: str, value: Any) -> list[Hashable]:
        """The keys of the rows whose indexed ``column`` equals ``value``, in the order they took
        that value (a change of another column leaves a row where it was)."""
        return list(self._indexes[column].get(value, ()))

    def put(self, row: Row) -> None:
        """Insert ``row``, or replace the row with its key."""
        single = self._single_key
        key = row[single] if single is not None else self.key_of(row)
        old = self.rows.get(key)
        if old is not None:
            self._unindex(key, old)
        self.rows[key] = row
        if self._indexes:
            self._index(key, row)
        self.written[key] = None

    def update(self, key: Hashable, **changes: Any) -> None:
        """Change some columns of the row ``key``, if there is one."""
        self.change(key, changes)

    def change(self, key: Hashable, changes: Row) -> None:
        """:meth:`update` with the changes as a dict: the folds that change a row on
        every event build it once, not again as keyword arguments."""
        row = self.rows.get(key)
        if row is None:
            return
        for column, index in self._indexes.items():
            if column in changes and (new := changes[column]) != (old := row[column]):
                if old is not None:
                    keys = index[old]
                    del keys[key]
                    if not keys:
                        del index[old]
                if new is not None:
                    index.setdefault(new, {})[key] = None
        row.update(changes)
        self.written[key] = None

    def delete(self, key: Hashable) -> None:
        """Remove the row ``key``, if there is one."""
        row = self.rows.pop(key, None)
        if row is not None:
            self._unindex(key, row)
            self.written[key] = None

    def changes(self) -> tuple[list[Row], list[Row], list[Hashable]]:
        """The net change since loading: rows to insert, changes to stored rows (their key
        and the columns whose value differs, so an index on an unchanged column is left
        alone), keys to delete."""
        rows, stored, single = self.rows, self.stored, self._single_key
        if not stored:  # nothing loaded (a live commit's messages): only inserts
            return [row for key in self.written if (row := rows.get(key)) is not None], [], []
        inserted, updated, deleted = [], [], []
        for key in self.written:
            row = rows.get(key)
            if row is None:
                if key in stored:
                    deleted.append(key)
            elif key in stored:
                before = stored[key]
                changed = {c: v for c, v in row.items() if c not in before or before[c] != v}
                if not changed:
                    continue
                if single is not None:
                    updated.append({single: key, **changed})
                else:
                    updated.append({**{c: row[c] for c in self.key_columns}, **changed})
            else:
                inserted.append(row)
        return inserted, updated, deleted

    def _index(self, key: Hashable, row: Row) -> None:
        for column, index in self._indexes.items():
            value = row[column]
            if value is not None:
                index.setdefault(value, {})[key] = None

    def _unindex(self, key: Hashable, row: Row) -> None:
        for column, index in self._indexes.items():
            value = row[column]
            if value is not None:
                keys = index[value]
                del keys[key]
                if not keys:
                    del index[value]
