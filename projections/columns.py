"""The column types the projection tables store times and ids in: compact on SQLite.

PostgreSQL keeps its own types (``timestamptz``, text). On SQLite a time is whole
microseconds since 1970 (8 bytes, where SQLAlchemy's default writes 26 characters of text)
and a canonical UUID is its 16 bytes (not 36 characters): ids are most of a message
row and of every index on it. Both read back as they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from events.transcoding import from_micros, micros_of

__all__ = ["StoredId", "StoredTime", "id_text", "stored_id"]


def stored_id(value: str) -> bytes | str:
    """How SQLite stores id ``value``: a canonical (lowercase, dashed) UUID as its 16
    bytes, any other text as itself, so that every id reads back exactly."""
    if len(value) == 36 and value[8] == "-" and value[23] == "-":
        try:
            packed = bytes.fromhex(value.replace("-", ""))
        except ValueError:
            return value
        if len(packed) == 16 and id_text(packed) == value:
            return packed
    return value


def id_text(value: bytes | str) -> str:
    """The id SQLite stored as ``value`` (see :func:`stored_id`)."""
    if isinstance(value, str):
        return value
    h = value.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class StoredId(TypeDecorator[str]):
    """An id column: text; on SQLite a UUID's 16 bytes (see :func:`stored_id`)."""

    impl = String(36)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        """The 16 bytes of a UUID on SQLite; the text itself otherwise."""
        if value is None or dialect.name != "sqlite":
            return value
        return stored_id(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        """The id as text."""
        if value is None or dialect.name != "sqlite":
            return value  # type: ignore[no-any-return]
        return id_text(value)


class StoredTime(TypeDecorator[datetime]):
    """A time column: PostgreSQL's timestamp with time zone; on SQLite whole microseconds
    since 1970 (an 8-byte integer instead of 26 characters of text). A time without an
    offset is taken as UTC; SQLite's times read back as aware UTC times."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """An integer on SQLite, a timestamp elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Microseconds on SQLite, the time itself elsewhere."""
        if value is None or dialect.name != "sqlite":
            return value
        return micros_of(value if value.tzinfo is not None else value.replace(tzinfo=UTC))

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """The aware time of a stored value."""
        if value is None or dialect.name != "sqlite":
            return value  # type: ignore[no-any-return]
        return from_micros(value)
