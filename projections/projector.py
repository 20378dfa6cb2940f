"""The projector: folds recorded events into the projection tables.

The live engine calls :meth:`Projector.apply` inside the very transaction that stores
the events, so the projections never lag and never diverge from the log; a rebuild
calls :meth:`Projector.apply_page` page by page over the whole log, which runs the same
folds but writes only each page's net rows. Either way the stored position moves with
the rows, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, inspect, select
from sqlalchemy.sql.dml import Delete, Insert, Update

from events import Recorded
from projections.batch import PageFolder
from projections.folds import (
    Fold,
    Op,
    Statements,
    buffer_fold,
    citations_fold,
    knowledge_fold,
    messages_fold,
    quarantine_fold,
    tasks_fold,
    usage_fold,
    users_fold,
)
from projections.search import SearchIndex, search_fold
from projections.tables import ProjectionTables

__all__ = ["FOLDS", "SCHEMA_VERSION", "Projector"]

FOLDS: tuple[Fold, ...] = (
    buffer_fold,
    quarantine_fold,
    tasks_fold,
    usage_fold,
    knowledge_fold,
    citations_fold,
    messages_fold,
    users_fold,
)
"""Every projection, each folding the log on its own tables."""

_POSITION = "projections"
_SCHEMA = "schema"

SCHEMA_VERSION = 7
"""The layout of the projection tables; bump it when a table or fold changes."""


class Projector:
    """Applies recorded events to one set of projection tables."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        self.search = SearchIndex(tables)
        self._statements = Statements(tables)
        self._folders: dict[str, PageFolder] = {}
        position = tables.position
        # Monotonic: on a server, transactions of several processes may commit out of id
        # order, and each folds its own events; the position only ever moves forward.
        self._move_position = (
            position.update()
            .where(position.c.name == _POSITION, position.c.position < bindparam("b_position"))
            .values(position=bindparam("b_position"))
        )

    def create(self, connection: Connection) -> bool:
        """Create the tables if they are missing; ``True`` if they start empty (at 0).

        Tables of an older layout (another :data:`SCHEMA_VERSION`) are dropped first:
        projections are disposable, and the caller refolds them from the log.
        """
        position = self.tables.position
        if inspect(connection).has_table(position.name):
            stored = connection.execute(
                select(position.c.position).where(position.c.name == _SCHEMA)
            ).scalar()
            if stored != SCHEMA_VERSION:
                self.drop(connection)
        self.tables.metadata.create_all(connection)
        self.search.create(connection)
        if connection.execute(select(position.c.name)).first() is not None:
            return False
        connection.execute(
            position.insert(),
            [
                {"name": _POSITION, "position": 0},
                {"name": _SCHEMA, "position": SCHEMA_VERSION},
            ],
        )
        return True

    def drop(self, connection: Connection) -> None:
        """Drop the tables (a rebuild starts from nothing)."""
        self.search.drop(connection)
        self.tables.metadata.drop_all(connection)

    def apply(
        self, connection: Connection, recorded: Sequence[Recorded], *, move_position: bool = True
    ) -> None:
        """Fold ``recorded`` (in log order) and move the stored position past it.

        ``move_position=False`` refolds events already counted (one user's rebuild).
        """
        if not recorded:
            return
        for fold in FOLDS:
            _run(connection, (op for r in recorded for op in fold(self._statements, r)))
        if connection.dialect.name == "sqlite":
            _run(connection, (op for r in recorded for op in search_fold(self.search, r)))
        if move_position:
            self._set_position(connection, max(r.notification_id for r in recorded))

    def apply_page(
        self,
        connection: Connection,
        recorded: Sequence[Recorded],
        *,
        move_position: bool = True,
        folds: Sequence[Fold] = FOLDS,
        search: bool = True,
    ) -> None:
        """Fold ``recorded`` as :meth:`apply` does, with the page netted in memory first.

        The same rows, in a few statements per table however long the page: for rebuilds
        and replays. ``folds`` and ``search`` narrow the projections folded (a replay only
        needs some); ``move_position`` is as for :meth:`apply`.
        """
        if not recorded:
            return
        dialect = connection.dialect
        folder = self._folders.get(dialect.name)
        if folder is None:
            folder = self._folders[dialect.name] = PageFolder(self._all_statements(), dialect)
        statements, index = self._statements, self.search
        searched = search and dialect.name == "sqlite"
        ops: list[Op] = []
        for r in recorded:  # event by event: each table still sees its ops in log order
            for fold in folds:
                ops.extend(fold(statements, r))
            if searched:
                ops.extend(search_fold(index, r))
        folder.apply(connection, ops)
        if move_position:
            self._set_position(connection, max(r.notification_id for r in recorded))

    def _all_statements(self) -> Iterator[Insert | Update | Delete]:
        """Every statement the folds may yield (a page folder plans them all up front)."""
        for owner in (self._statements, self.search):
            for value in vars(owner).values():
                if isinstance(value, Insert | Update | Delete):
                    yield value

    def forget(self, connection: Connection, log_id: str) -> dict[str, int]:
        """Delete every row of one user's log from these tables; returns counts per table."""
        erased: dict[str, int] = {}
        for table in self.tables.data_tables:
            result = connection.execute(table.delete().where(table.c.log_id == log_id))
            erased[table.name.removeprefix(self.tables.prefix)] = result.rowcount
        erased["search"] = self.search.forget(connection, log_id)
        return erased

    def position(self, connection: Connection) -> int:
        """The id of the last notification folded into these tables (0 if none)."""
        table = self.tables.position
        found = connection.execute(
            select(table.c.position).where(table.c.name == _POSITION)
        ).scalar()
        return int(found or 0)

    def _set_position(self, connection: Connection, position: int) -> None:
        connection.execute(self._move_position, {"b_position": position})


def _run(connection: Connection, ops: Any) -> None:
    """Execute ``ops`` in order, batching consecutive uses of one statement."""
    current: Op | None = None
    params: list[dict[str, Any]] = []
    for statement, values in ops:
        if current is not None and statement is not current[0]:
            connection.execute(current[0], params)
            params = []
        current = (statement, values)
        params.append(values)
    if current is not None:
        connection.execute(current[0], params)
