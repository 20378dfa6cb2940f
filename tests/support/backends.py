"""The databases every suite runs on: SQLite always, PostgreSQL when a server is given.

``scripts/with-postgres.sh`` starts a throwaway server and exports its URL as
``MEMVEE_TEST_PG_URL``; in CI a missing server is an error, elsewhere those tests skip.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text

PG_URL_ENV = "MEMVEE_TEST_PG_URL"
BACKENDS = ("sqlite", "postgres")


def postgres_url() -> str:
    """The test server's URL with an empty schema, or skip (fail in CI) without one."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs every suite on PostgreSQL but {PG_URL_ENV} is not set")
        pytest.skip(f"no PostgreSQL server ({PG_URL_ENV} is not set)")
    reset(url)
    return url


def reset(url: str) -> None:
    """Drop everything in the server's public schema."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
