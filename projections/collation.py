"""Text keys in code point order on both backends.

SQLite compares text by its UTF-8 bytes, which is code point order; PostgreSQL by the
database's collation, which may be a language's (ICU "en-US" sorts "_x", "10", "a", "B"):
on such a database users were listed in another order than on SQLite, and the page after
a user id held other users. Text keys that are sorted or paged by compare as "C" on
PostgreSQL (the bytes of UTF-8, so code point order too), and the user id column is
declared "C" there, so that its unique index still serves those queries (a table an
earlier memvee made is refolded in this layout, see ``SCHEMA_VERSION``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["code_point_text", "in_code_point_order"]

_CODE_POINT = "C"
"""PostgreSQL's collation that compares the bytes of the text, as SQLite does."""


def code_point_text(length: int) -> String:
    """A column type of text of at most ``length`` characters, compared in code point
    order on PostgreSQL too (SQLite always does)."""
    return String(length).with_variant(String(length, collation=_CODE_POINT), "postgresql")


def in_code_point_order(key: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """Text ``key`` to order or compare by in code point order: told "C" on PostgreSQL,
    where it would follow the database's collation, as it is elsewhere."""
    kind = getattr(key.type, "impl", key.type)
    if dialect == "postgresql" and isinstance(kind, String):
        return key.collate(_CODE_POINT)
    return key
