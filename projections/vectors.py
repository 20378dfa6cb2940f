"""The vector index: embeddings of a user's entries and messages, for semantic ranking.

It is a projection like the others (dropped by a rebuild, erased by ``forget``), with
one difference: an embedding model computes it, so it is filled lazily, one user at a
time, right before that user is searched, rather than inside the append transaction.
A search therefore always sees every entry and message of its user. Vectors are read
for one user only, inside the query, then ranked by cosine similarity in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
from sqlalchemy import Connection, Engine, Executable, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from events import user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections.reader import ProjectionReader
from projections.search import spoken
from projections.tables import ProjectionTables

__all__ = ["Embed", "NamedEmbedder", "VectorIndex"]

Embed = Callable[[Sequence[str]], list[list[float]]]
"""Maps texts to unit vectors (an Embedder's ``embed``)."""


class NamedEmbedder(Protocol):
    """What the vector projection needs of an embedder: its model's name and ``embed``."""

    name: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        ...


_BATCH = 64


class VectorIndex:
    """Reads and lazily fills one set of projection tables' vectors for one model."""

    def __init__(self, tables: ProjectionTables, model: str) -> None:
        self.tables = tables
        self.model = model
        self._reader = ProjectionReader(tables)

    def fill(self, engine: Engine, user_id: str, embed: Embed, *, messages: bool) -> int:
        """Embed the user's entries (and messages) that have no vector yet; returns how many."""
        log_id = str(user_log_id(user_id))
        v, k, m = self.tables.vectors, self.tables.knowledge, self.tables.messages
        missing: list[tuple[str, str, str]] = []
        with engine.connect() as connection:
            have = select(v.c.item_id).where(v.c.log_id == log_id, v.c.model == self.model)
            rows = connection.execute(
                select(k.c.entry_id, k.c.text).where(
                    k.c.log_id == log_id, k.c.entry_id.not_in(have)
                )
            )
            missing += [(item, text, "entry") for item, text in rows]
            if messages:
                rows = connection.execute(
                    select(m.c.message_id, m.c.content, m.c.name).where(
                        m.c.log_id == log_id, m.c.message_id.not_in(have)
                    )
                )
                missing += [(item, spoken(text, name), "message") for item, text, name in rows]
        for start in range(0, len(missing), _BATCH):
            chunk = missing[start : start + _BATCH]
            vectors = embed([text for _, text, _ in chunk])
            values = [
                {
                    "item_id": item,
                    "model": self.model,
                    "log_id": log_id,
                    "kind": kind,
                    "vector": np.asarray(vector, dtype=np.float32).tobytes(),
                }
                for (item, _, kind), vector in zip(chunk, vectors, strict=True)
            ]
            with engine.begin() as connection:
                connection.execute(self._insert_new(connection), values)
        return len(missing)

    def entries(
        self,
        connection: Connection,
        user_id: str,
        query: Sequence[float],
        limit: int,
        as_of: datetime | None = None,
    ) -> list[tuple[str, float]]:
        """The ids of the user's live entries valid now (or at ``as_of``) nearest ``query``."""
        v, k = self.tables.vectors, self.tables.knowledge
        log_id = str(user_log_id(user_id))
        rows = connection.execute(
            select(v.c.item_id, v.c.vector)
            .join(k, k.c.entry_id == v.c.item_id)
            .where(
                v.c.log_id == log_id,
                v.c.model == self.model,
                k.c.knowledge_version == LIVE_KNOWLEDGE,
                *self._reader.valid(as_of),
            )
        ).all()
        return _nearest(rows, query, limit)

    def messages(
        self, connection: Connection, user_id: str, query: Sequence[float], limit: int
    ) -> list[tuple[str, float]]:
        """The ids of the user's messages nearest ``query``."""
        v = self.tables.vectors
        log_id = str(user_log_id(user_id))
        rows = connection.execute(
            select(v.c.item_id, v.c.vector).where(
                v.c.log_id == log_id, v.c.model == self.model, v.c.kind == "message"
            )
        ).all()
        return _nearest(rows, query, limit)

    def _insert_new(self, connection: Connection) -> Executable:
        v = self.tables.vectors
        if connection.dialect.name == "postgresql":
            return pg_insert(v).on_conflict_do_nothing()
        return sqlite_insert(v).on_conflict_do_nothing()


def _nearest(rows: Sequence[object], query: Sequence[float], limit: int) -> list[tuple[str, float]]:
    """The ``limit`` rows (id, vector bytes) with the highest cosine to the unit ``query``."""
    if not rows or limit <= 0:
        return []
    ids = [row[0] for row in rows]  # type: ignore[index]
    matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)  # type: ignore[index]
    matrix = matrix.reshape(len(ids), -1)
    scores = matrix @ np.asarray(query, dtype=np.float32)
    top = np.argsort(-scores, kind="stable")[:limit]
    return [(ids[i], float(scores[i])) for i in top]
