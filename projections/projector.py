"""The projector: folds recorded events into the projection tables.

The live engine calls :meth:`Projector.apply` inside the very transaction that stores
the events, so the projections never lag and never diverge from the log; a rebuild
calls it page by page over the whole log. Either way the stored position moves with
the rows, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select

from events import Recorded
from projections.folds import (
    Fold,
    Op,
    Statements,
    buffer_fold,
    knowledge_fold,
    tasks_fold,
    users_fold,
)
from projections.tables import ProjectionTables

__all__ = ["FOLDS", "Projector"]

FOLDS: tuple[Fold, ...] = (buffer_fold, tasks_fold, knowledge_fold, users_fold)
"""Every projection, each folding the log on its own tables."""

_POSITION = "projections"


class Projector:
    """Applies recorded events to one set of projection tables."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        self._statements = Statements(tables)
        position = tables.position
        # Monotonic: on a server, transactions of several processes may commit out of id
        # order, and each folds its own events; the position only ever moves forward.
        self._move_position = (
            position.update()
            .where(position.c.name == _POSITION, position.c.position < bindparam("b_position"))
            .values(position=bindparam("b_position"))
        )

    def create(self, connection: Connection) -> bool:
        """Create the tables if they are missing; ``True`` if the position had to start at 0."""
        self.tables.metadata.create_all(connection)
        if connection.execute(select(self.tables.position.c.name)).first() is not None:
            return False
        connection.execute(self.tables.position.insert(), {"name": _POSITION, "position": 0})
        return True

    def drop(self, connection: Connection) -> None:
        """Drop the tables (a rebuild starts from nothing)."""
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
        if move_position:
            self._set_position(connection, max(r.notification_id for r in recorded))

    def forget(self, connection: Connection, log_id: str) -> None:
        """Delete every row of one user's log from these tables."""
        for table in self.tables.data_tables:
            connection.execute(table.delete().where(table.c.log_id == log_id))

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
