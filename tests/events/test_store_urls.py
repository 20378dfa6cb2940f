"""Where the store opens, as users give it: a URL that names no driver gets psycopg 3 (the
driver of memvee's ``postgres`` extra); text that is no URL, an in-memory SQLite database
and a path with a NUL character are refused before anything opens."""

from __future__ import annotations

import pytest

from events import EventStore, InvalidInputError, driver_url, sqlite_url


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgresql://u:secret@db.example:5432/mem",
            "postgresql+psycopg://u:secret@db.example:5432/mem",
        ),
        ("postgres://u:secret@db.example/mem", "postgresql+psycopg://u:secret@db.example/mem"),
        (
            "postgresql://localhost/mem?sslmode=require",
            "postgresql+psycopg://localhost/mem?sslmode=require",
        ),
    ],
)
def test_a_postgresql_url_without_a_driver_uses_psycopg_3(given: str, used: str) -> None:
    assert driver_url(given) == used


@pytest.mark.parametrize(
    "given",
    [
        "postgresql+psycopg://u:p@h/db",
        "postgresql+psycopg2://u:p@h/db",
        "sqlite:////tmp/memvee.db",
        "mysql://u:p@h/db",
    ],
)
def test_a_url_naming_its_driver_or_another_database_is_kept(given: str) -> None:
    assert driver_url(given) == given


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("not a url", "is not a database URL (dialect"),
        ("postgresql://me:s3cret@db.example:port/mem", "its port is no number"),
    ],
)
def test_text_that_is_no_database_url_is_refused_without_repeating_it(
    given: str, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"^db_url ") as refused:
        driver_url(given, name="db_url")
    assert says in str(refused.value)
    assert "s3cret" not in str(refused.value) and refused.value.__cause__ is None


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"]
)
def test_an_in_memory_sqlite_database_is_refused_before_anything_opens(url: str) -> None:
    with pytest.raises(InvalidInputError, match="needs a SQLite file"):
        EventStore(url)


def test_a_database_path_with_a_nul_character_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="NUL character"):
        sqlite_url("memory\x00.db")
