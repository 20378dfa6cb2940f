"""The databases every suite runs on: SQLite always, PostgreSQL when a server is given.

``scripts/with-postgres.sh`` starts a throwaway server and exports its URL as
``MEMVEE_TEST_PG_URL``; in CI a missing server is an error, elsewhere those tests skip.
Each pytest-xdist worker gets a database of its own on that server, so workers that reset
their schema at the same time never clash.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, make_url, text

PG_URL_ENV = "MEMVEE_TEST_PG_URL"
BACKENDS = ("sqlite", "postgres")


def postgres_url() -> str:
    """The test server's URL with an empty schema, or skip (fail in CI) without one."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs every suite on PostgreSQL but {PG_URL_ENV} is not set")
        pytest.skip(f"no PostgreSQL server ({PG_URL_ENV} is not set)")
    url = _worker_database(url)
    reset(url)
    return url


_made: dict[str, str] = {}


def _worker_database(url: str) -> str:
    """The URL of this xdist worker's own database on the server (made on first use), or
    ``url`` itself outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    if url not in _made:
        server = make_url(url)
        name = f"{server.database}_{worker}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                found = connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first()
                if found is None:
                    connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        finally:
            admin.dispose()
        _made[url] = server.set(database=name).render_as_string(hide_password=False)
    return _made[url]


def reset(url: str) -> None:
    """Drop everything in the server's public schema."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
