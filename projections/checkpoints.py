"""Checkpoints: a user's replayed state stored every so many events of their log.

``state --at`` folds a log in memory (:mod:`projections.replay`); on a long log that is
most of its cost. A checkpoint is the rows such a fold held at one version, so a replay
starts from the nearest one at or before the point asked for, and folds only the events
after it. Checkpoints come from the log alone, through the same folds, so they are
disposable like every projection: dropped with the tables on a new layout or a rebuild,
erased with the user.

A user keeps at most :data:`KEPT` checkpoints, spread over the log: storing one more drops
the one closest to the checkpoint before it, so old points stay reachable at a coarser
grain and the space they take grows with the log, not with its square.

A checkpoint is stored as one compressed JSON document: per table, each row as an object
of its folded columns, times as microseconds since 1970.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Table, inspect, select

from events.transcoding import from_micros
from projections.columns import StoredTime
from projections.rows import Row
from projections.tables import ProjectionTables, folded_columns

__all__ = ["KEPT", "Checkpoint", "Checkpoints"]

log = logging.getLogger("memvee.projections")

KEPT = 8
"""The most checkpoints a user keeps."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The replayed rows of one user's log after ``version``, whose events are all stamped
    at or before ``latest``."""

    version: int
    latest: datetime
    rows: Mapping[str, Sequence[Row]]


class Checkpoints:
    """Reads and writes the checkpoints of the tables under one prefix.

    ``roles`` are the tables a checkpoint holds rows of (by role: ``"messages"``...).
    """

    def __init__(self, tables: ProjectionTables, roles: Sequence[str]) -> None:
        self.table = tables.checkpoints
        self._forms = {role: _RowForm(getattr(tables, role)) for role in roles}

    def nearest(
        self, connection: Connection, log_id: str, *, version: int | None, at: datetime | None
    ) -> Checkpoint | None:
        """The latest checkpoint of ``log_id`` at or before ``version`` whose events are all
        at or before ``at`` (either may be ``None``: no bound); ``None`` if there is none,
        or no table to hold them (a database no engine has opened yet). One that cannot be
        read is passed over with a warning."""
        if not inspect(connection).has_table(self.table.name):
            return None
        c = self.table.c
        query = select(c.version, c.latest, c.state).where(c.log_id == log_id)
        if version is not None:
            query = query.where(c.version <= version)
        if at is not None:
            query = query.where(c.latest <= at)
        for found in connection.execute(query.order_by(c.version.desc()).limit(KEPT)):
            try:
                document = orjson.loads(zlib.decompress(found.state))
                rows = {role: form.rows(document[role]) for role, form in self._forms.items()}
            except (zlib.error, ValueError, KeyError, TypeError) as error:
                # Disposable, like every projection: an older one, or the log, does.
                log.warning(
                    "the checkpoint of log %s at version %d cannot be read (%s); passed over",
                    log_id,
                    found.version,
                    error,
                )
                continue
            return Checkpoint(found.version, found.latest, rows)
        return None

    def save(self, connection: Connection, log_id: str, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` of ``log_id`` and thin out the older ones (a checkpoint at
        that version already there is kept: both come from the same events)."""
        c = self.table.c
        exists = select(c.version).where(c.log_id == log_id, c.version == checkpoint.version)
        if connection.execute(exists).first() is not None:
            return
        document = {role: form.values(checkpoint.rows[role]) for role, form in self._forms.items()}
        connection.execute(
            self.table.insert(),
            {
                "log_id": log_id,
                "version": checkpoint.version,
                "latest": checkpoint.latest,
                "state": zlib.compress(orjson.dumps(document)),
            },
        )
        self._thin(connection, log_id)

    def versions(self, connection: Connection, log_id: str) -> list[int]:
        """The versions ``log_id`` has checkpoints at, oldest first (none without a table)."""
        if not inspect(connection).has_table(self.table.name):
            return []
        return self._stored_versions(connection, log_id)

    def _stored_versions(self, connection: Connection, log_id: str) -> list[int]:
        c = self.table.c
        query = select(c.version).where(c.log_id == log_id).order_by(c.version)
        return list(connection.execute(query).scalars())

    def _thin(self, connection: Connection, log_id: str) -> None:
        """Drop checkpoints beyond :data:`KEPT`, each time the one closest to the one
        before it (the latest always stays)."""
        versions = self._stored_versions(connection, log_id)  # the table is there: we wrote
        c = self.table.c
        while len(versions) > KEPT:
            older = versions[:-1]  # the latest always stays
            gaps = [v - before for before, v in zip([0, *older], older, strict=False)]
            closest = versions.pop(gaps.index(min(gaps)))
            connection.execute(self.table.delete().where(c.log_id == log_id, c.version == closest))


class _RowForm:
    """One table's rows as JSON objects of their folded columns, times as microseconds,
    and back (decoding the objects is orjson's work, in C: most of reading a checkpoint)."""

    def __init__(self, table: Table) -> None:
        folded = folded_columns(table)
        self.columns = tuple(str(c.name) for c in folded)
        self.times = tuple(str(c.name) for c in folded if isinstance(c.type, StoredTime))

    def values(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            stored = {name: row[name] for name in self.columns}
            for name in self.times:
                stored[name] = StoredTime.to_sqlite(stored[name])
            out.append(stored)
        return out

    def rows(self, stored: list[dict[str, Any]]) -> list[Row]:
        for row in stored:
            for name in self.times:
                micros = row[name]
                if micros is not None:
                    row[name] = from_micros(micros)
        return stored
