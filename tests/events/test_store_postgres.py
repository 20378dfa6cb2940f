"""The event store contract on a PostgreSQL server."""

from __future__ import annotations

import pytest

from events import EventStore
from tests.events.store_contract import EventStoreContract
from tests.support.backends import postgres_url


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self) -> str:
        return postgres_url()


def test_a_plain_postgresql_url_opens_the_store() -> None:
    """``postgresql://`` names no driver: the store uses psycopg 3 (memvee's ``postgres`` extra),
    where SQLAlchemy alone would ask for psycopg2."""
    url = postgres_url()
    plain = "postgresql://" + url.split("://", 1)[1]
    store = EventStore(plain)
    try:
        assert store.max_position() == 0
    finally:
        store.close()
