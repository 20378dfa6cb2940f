"""Where bulk re-extraction runs are kept until their results are recorded.

Not a projection: the table says where a run is, not what a log says. Each row is one
submitted Message Batch, with what each of its requests holds (its user, its messages,
the known entries its prompt listed). It names users, so forgetting a user removes that
user's requests from it (:func:`forget_bulk_requests`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    func,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.schema import CreateIndex

__all__ = [
    "BULK_BATCHES",
    "CLAIM",
    "ID_VERSION",
    "create_bulk_table",
    "forget_bulk_requests",
    "has_kept_index",
    "restamped",
]

_METADATA = MetaData()

BULK_BATCHES = Table(
    "memvee_bulk_batches",
    _METADATA,
    Column("local_id", String(36), primary_key=True),
    Column("knowledge_version", String(64), nullable=False, index=True),
    Column("api_batch_id", String(128), nullable=True),
    Column("requests", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""Submitted Message Batches whose results are not recorded yet, with what each request
holds: its user, its messages and the known entries its prompt listed. A kept row's
``created_at`` is when it was kept, moved by a microsecond each time what its requests hold
for a user changes in place (:func:`restamped`)."""

CLAIM = "claim"
"""The key of a claim row's one entry: a run's hold on one user's plan, not a request."""

ID_VERSION = func.substr(BULK_BATCHES.c.local_id, literal_column("15"), literal_column("1"))
"""The UUID version digit of a row's id (its 15th character), which tells a claim (a
UUID5) from a kept Message Batch (a UUID4) by the key alone (see ``memvee._bulk.claims``).
Its numbers are written out, not bound: only the very expression of an index is read
through it."""

_KEPT_INDEX = Index(
    "memvee_bulk_batches_kept",
    BULK_BATCHES.c.knowledge_version,
    ID_VERSION,
    BULK_BATCHES.c.api_batch_id,
)
"""A version's rows by the kind their id tells, then their batch's id: each claim reads
the ids of its version's kept rows through it, never reaching the version's claims (one a
user), which its index by version alone walked, a claim costing what the run had claimed."""


def restamped(created_at: datetime) -> datetime:
    """The ``created_at`` of a kept row whose requests change in place (a user's taken out
    by a ``forget``, all marked failed whole): a microsecond later, so that a run that
    decoded the row before tells by its key columns alone that it must decode it again,
    while the row still says, to the microsecond, when it was kept (a run looking for a
    batch whose creation was never confirmed allows an hour of slack around it)."""
    return created_at + timedelta(microseconds=1)


_INDEX_FOUND = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name",
    "postgresql": (
        "SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(:table) AND c.relname = :name"
    ),
}
"""How each backend's catalog says an index is there, read without locking its table: on
PostgreSQL, an index of the table the search path finds (as the table's own making does),
whichever schema that is, not only the first."""


def create_bulk_table(connection: Connection) -> None:
    """Create the table and its indexes, unless they are there (a bulk run creates them
    on first use; a table an older memvee made lacks the index of kept rows).

    The index is looked up in the catalog first and created only when missing: on
    PostgreSQL even ``CREATE INDEX IF NOT EXISTS`` locks the table (SHARE) before it
    finds the index there, so every run's start waited behind any open write on it."""
    _METADATA.create_all(connection)
    if not has_kept_index(connection):
        connection.execute(CreateIndex(_KEPT_INDEX, if_not_exists=True))


def has_kept_index(connection: Connection) -> bool:
    """Whether the table's index of kept rows is there (a backend whose catalog is not
    known here is assumed to lack it: creating it, if it is there, does nothing)."""
    found = _INDEX_FOUND.get(connection.dialect.name)
    if found is None:
        return False
    names = {"name": _KEPT_INDEX.name, "table": BULK_BATCHES.name}
    return connection.execute(text(found), names).first() is not None


def forget_bulk_requests(connection: Connection, user_id: str) -> int:
    """Remove ``user_id``'s requests from every kept run, in the caller's transaction; a
    run left with none is removed. Returns how many requests were removed (a claim on the
    user's plan counts as one). (A run still at the API leaves the user's answers there: a
    later collection finds no request for them, and records nothing.)

    The rows are read locked, so that a run counting a failure in one at once writes it
    back whole, and either waits for the other. The user's claim rows are locked first, then
    the kept rows, each in the order of their ids: a claim of an earlier memvee locks the
    claim row, then the kept rows, in one transaction, and this order waits in no circle
    with it. A claim of this one commits its claim row before it locks the kept rows (by
    id), so it meets no forget in a circle, this one's nor an earlier memvee's (by id)."""
    if not inspect(connection).has_table(BULK_BATCHES.name):
        return 0
    holding = [
        (local_id, CLAIM in requests)
        for local_id, requests in connection.execute(
            select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests)
        ).all()
        if any(r.get("user") == user_id for r in requests.values())
    ]
    removed = 0
    for claims in (True, False):
        ids = [local_id for local_id, claim in holding if claim is claims]
        if ids:
            removed += _remove_requests(connection, user_id, ids)
    return removed


def _remove_requests(connection: Connection, user_id: str, ids: list[str]) -> int:
    """Remove ``user_id``'s requests from the rows ``ids``, locked in the order of their
    ids; returns how many were removed."""
    removed = 0
    for local_id, requests, created_at in connection.execute(
        select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests, BULK_BATCHES.c.created_at)
        .where(BULK_BATCHES.c.local_id.in_(ids))
        .order_by(BULK_BATCHES.c.local_id)
        .with_for_update()
    ).all():
        kept: dict[str, Any] = {k: r for k, r in requests.items() if r.get("user") != user_id}
        if len(kept) == len(requests):
            continue
        removed += len(requests) - len(kept)
        row = BULK_BATCHES.c.local_id == local_id
        if kept:
            changed = {"requests": kept, "created_at": restamped(created_at)}
            connection.execute(BULK_BATCHES.update().where(row).values(**changed))
        else:
            connection.execute(BULK_BATCHES.delete().where(row))
    return removed
