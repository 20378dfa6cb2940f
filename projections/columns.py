"""The column types the projection tables store times and ids in: compact on SQLite.

PostgreSQL keeps its own types (``timestamptz``, text). On SQLite a time is whole
microseconds since 1970 (8 bytes, where SQLAlchemy's default writes 26 characters of text)
and a canonical UUID is its 16 bytes (not 36 characters): ids are most of a message
row and of every index on it. Both read back as they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from events.transcoding import from_micros, micros_of

__all__ = ["StoredId", "StoredTime", "id_param", "id_text", "packed_range", "stored_id"]


def stored_id(value: str) -> bytes | str:
    """How SQLite stores id ``value``: a canonical (lowercase, dashed) UUID as its 16
    bytes, any other text as itself, so that every id reads back exactly."""
    return _packed(value, bytes)


def id_param(value: str) -> bytearray | str:
    """:func:`stored_id` as a value to write through Python's sqlite3: 16 bytes as a
    bytearray, which it binds as the very same BLOB without looking for an adapter
    (for bytes it looks, and formats then drops an AttributeError: about half a
    microsecond for every id a rebuild writes)."""
    return _packed(value, bytearray)


_Packed = TypeVar("_Packed", bytes, bytearray)


def _packed(value: str, kind: type[_Packed]) -> _Packed | str:
    if (
        len(value) == 36
        and value[8] == value[13] == value[18] == value[23] == "-"
        and value == value.lower()
    ):
        try:
            # Any other dash, or whitespace (which fromhex skips), leaves fewer bytes.
            packed = kind.fromhex(value.replace("-", ""))
        except ValueError:
            return value
        if len(packed) == 16:
            return packed
    return value


def id_text(value: bytes | str) -> str:
    """The id SQLite stored as ``value`` (see :func:`stored_id`)."""
    if isinstance(value, str):
        return value
    h = value.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_DASHES = (8, 13, 18, 23)
"""Where a canonical UUID's text has its dashes."""


def packed_range(prefix: str) -> tuple[bytes, bytes | None] | None:
    """The 16-byte ids (see :func:`stored_id`) whose text starts with ``prefix``: from the
    first, inclusive, to the second, exclusive (``None``: to the end); ``None`` when no
    canonical UUID's text can start so."""
    if len(prefix) > 36 or prefix != prefix.lower():
        return None
    digits = []
    for i, char in enumerate(prefix):
        if i in _DASHES:
            if char != "-":
                return None
        elif char in "0123456789abcdef":
            digits.append(char)
        else:
            return None
    if not digits:
        return b"", None
    width = 4 * (32 - len(digits))
    start = int("".join(digits), 16)
    end = (start + 1) << width
    return (start << width).to_bytes(16), None if end >> 128 else end.to_bytes(16)


class _CompactOnSqlite(TypeDecorator[Any]):
    """A column type whose values SQLite stores converted, other databases as they are.

    The converters are called directly as SQLAlchemy's processors: they run for every
    value of every row the hot path writes, so no ``process_bind_param`` layer sits
    between."""

    cache_ok = True

    @staticmethod
    def to_sqlite(value: Any) -> Any:
        """What SQLite stores for ``value`` (``None`` stays ``None``)."""
        raise NotImplementedError

    @staticmethod
    def from_sqlite(value: Any) -> Any:
        """The value SQLite's stored ``value`` stands for (``None`` stays ``None``)."""
        raise NotImplementedError

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Converted on SQLite, as is elsewhere."""
        return self.to_sqlite(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Converted back on SQLite, as is elsewhere."""
        return self.from_sqlite(value) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Any:
        """SQLite's converter itself; SQLAlchemy's chain elsewhere."""
        return self.to_sqlite if dialect.name == "sqlite" else super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """SQLite's converter back itself; SQLAlchemy's chain elsewhere."""
        if dialect.name == "sqlite":
            return self.from_sqlite
        return super().result_processor(dialect, coltype)


class StoredId(_CompactOnSqlite):
    """An id column: text; on SQLite a UUID's 16 bytes (see :func:`stored_id`)."""

    impl = String(36)
    cache_ok = True

    @staticmethod
    def to_sqlite(value: str | None) -> bytes | str | None:
        """The 16 bytes of a canonical UUID, any other id as its text."""
        return None if value is None else stored_id(value)

    @staticmethod
    def from_sqlite(value: bytes | str | None) -> str | None:
        """The id as text."""
        return None if value is None else id_text(value)


class StoredTime(_CompactOnSqlite):
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

    @staticmethod
    def to_sqlite(value: datetime | None) -> int | None:
        """Microseconds since 1970 (a time without an offset is taken as UTC)."""
        if value is None:
            return None
        return micros_of(value if value.tzinfo is not None else value.replace(tzinfo=UTC))

    @staticmethod
    def from_sqlite(value: int | None) -> datetime | None:
        """The aware UTC time."""
        return None if value is None else from_micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """The aware UTC time on every backend: PostgreSQL gives its session's time zone
        (the server's, or a URL's), which would show another day than the one stored."""
        if dialect.name == "sqlite":
            return self.from_sqlite(value)
        return value.astimezone(UTC) if isinstance(value, datetime) else value
