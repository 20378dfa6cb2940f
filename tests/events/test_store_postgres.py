"""The event store contract on a PostgreSQL server."""

from __future__ import annotations

import pytest

from tests.events.store_contract import EventStoreContract
from tests.support.backends import postgres_url


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self) -> str:
        return postgres_url()
