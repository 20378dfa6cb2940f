"""The live projections of a database checked against a rebuild from its log."""

from __future__ import annotations

from events import EventStore
from projections import Difference, verify


def differences(db_url: str) -> list[Difference]:
    """What :func:`projections.verify` finds in the database at ``db_url`` (closed after)."""
    store = EventStore(db_url)
    try:
        return verify(store)
    finally:
        store.close()
