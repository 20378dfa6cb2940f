"""The replay properties' reference databases: copies of tables made once, each as fresh as
tables made anew."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, text

from projections import Projector
from tests.support.reference_tables import REFERENCE_TABLES, fresh_reference_database


def _schema_and_rows(engine: Engine) -> tuple[Sequence[Any], dict[str, Sequence[Any]]]:
    """Every table, index and trigger the database defines, and every row it holds."""
    with engine.connect() as connection:
        schema = connection.execute(
            text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        ).all()
        rows = {
            name: connection.execute(text(f'SELECT * FROM "{name}"')).all()
            for kind, name, _, _ in schema
            if kind == "table"
        }
    return schema, rows


def test_a_fresh_reference_database_holds_what_the_projector_makes_and_nothing_more() -> None:
    made = create_engine("sqlite://")
    with made.begin() as connection:
        Projector(REFERENCE_TABLES).create(connection)
    copy = fresh_reference_database()
    try:
        schema, rows = _schema_and_rows(copy)
        assert (schema, rows) == _schema_and_rows(made)
        assert any(name == REFERENCE_TABLES.position.name for _, name, _, _ in schema)
    finally:
        copy.dispose()
        made.dispose()


def test_rows_written_into_one_reference_database_are_in_no_later_one() -> None:
    written = fresh_reference_database()
    position = REFERENCE_TABLES.position
    with written.begin() as connection:
        connection.execute(position.insert(), {"name": "written here", "position": 7})
    later = fresh_reference_database()
    try:
        with later.connect() as connection:
            names = connection.execute(position.select().with_only_columns(position.c.name))
            assert "written here" not in names.scalars().all()
        with written.connect() as connection:
            names = connection.execute(position.select().with_only_columns(position.c.name))
            assert "written here" in names.scalars().all()
    finally:
        written.dispose()
        later.dispose()
