"""Fixtures of the bench suites: the database server an eval replays into."""

from __future__ import annotations

import pytest

from tests.support.backends import BACKENDS, postgres_url


@pytest.fixture(params=BACKENDS)
def eval_server(request: pytest.FixtureRequest) -> str | None:
    """Where an eval replays: None for a SQLite file, then the test PostgreSQL server
    (skipped without one, as every PostgreSQL test is)."""
    if request.param == "sqlite":
        return None
    return postgres_url()
