"""The table of bulk re-extraction runs: made once, and its making never waits on a run's
writes once it is there."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from projections.bulk_runs import BULK_BATCHES, create_bulk_table, has_kept_index
from tests.support.backends import postgres_url


def test_a_run_starts_without_waiting_for_an_open_write_once_the_kept_index_is_there() -> None:
    """``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on the table before it finds the
    index there (PostgreSQL): each bulk run's start waited behind any transaction holding
    an uncommitted write on the table, and failed once its lock timeout passed. The index
    is looked up in the catalog first, and the start takes no lock on the table."""
    engine = create_engine(postgres_url())
    try:
        with engine.begin() as connection:
            create_bulk_table(connection)
            assert has_kept_index(connection)
        with engine.connect() as writer, engine.connect() as starting, writer.begin():
            writer.execute(
                BULK_BATCHES.insert().values(
                    local_id="x-open",
                    knowledge_version="v9",
                    api_batch_id=None,
                    requests={},
                    created_at=datetime.now(UTC),
                )
            )
            with starting.begin():
                starting.execute(text("SET LOCAL lock_timeout = '200ms'"))
                create_bulk_table(starting)
    finally:
        engine.dispose()


def test_the_kept_index_is_found_in_the_schema_the_search_path_finds_the_table_in() -> None:
    """With a search path whose first schema holds no such table (``"$user", public`` and
    a schema named after the user), the table and its index are found in public, as the
    table's making finds them: the index was looked for in the first schema only, so each
    run's start made it again, waiting behind open writes."""
    engine = create_engine(postgres_url())
    first = f"first_{uuid.uuid4().hex[:8]}"
    searching = create_engine(
        postgres_url(), connect_args={"options": f"-csearch_path={first},public"}
    )
    try:
        with engine.begin() as connection:
            create_bulk_table(connection)
            connection.execute(text(f"CREATE SCHEMA {first}"))
        with searching.connect() as connection:
            assert connection.execute(text("SELECT current_schema()")).scalar() == first
            assert has_kept_index(connection)
    finally:
        searching.dispose()
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {first} CASCADE"))
        engine.dispose()
