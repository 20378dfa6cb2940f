"""Empty projection tables in a fresh in-memory SQLite database, for the reference folds of
the replay properties: copied from tables made once, since making the tables and their
indexes anew costs about 50 ms, which those properties paid hundreds of times a run."""

from __future__ import annotations

import functools
import sqlite3

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from projections import ProjectionTables, Projector

__all__ = ["REFERENCE_TABLES", "fresh_reference_database"]

REFERENCE_TABLES = ProjectionTables("reference_")
"""The reference folds' tables, named apart from the live ones."""


def _in_memory(connection: sqlite3.Connection) -> Engine:
    """An engine whose one connection is ``connection`` (closed when it is disposed)."""
    return create_engine("sqlite://", poolclass=StaticPool, creator=lambda: connection)


@functools.cache
def _made_once() -> sqlite3.Connection:
    """A database holding the reference tables as ``Projector.create`` leaves them."""
    made = sqlite3.connect(":memory:", check_same_thread=False)
    with _in_memory(made).begin() as connection:
        Projector(REFERENCE_TABLES).create(connection)
    return made


def fresh_reference_database() -> Engine:
    """A new in-memory database holding :data:`REFERENCE_TABLES`, empty and indexed, as
    ``Projector(REFERENCE_TABLES).create`` makes them; dispose of it when done."""
    copy = sqlite3.connect(":memory:", check_same_thread=False)
    _made_once().backup(copy)
    return _in_memory(copy)
