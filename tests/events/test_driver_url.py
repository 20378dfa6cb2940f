"""Database URLs as users hand them in: one that names no driver gets psycopg 3, the
driver of memvee's ``postgres`` extra."""

from __future__ import annotations

import pytest

from events.store import driver_url


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


def test_text_that_is_no_url_is_left_for_the_store_to_refuse() -> None:
    assert driver_url("not a url") == "not a url"
