"""Times and ids in the projection tables: compact on SQLite, and read back as written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, insert, select
from sqlalchemy.dialects import postgresql

from projections.columns import StoredId, StoredTime, id_param, id_text, packed_range, stored_id
from projections.sink import _ROWS_BY_COLUMN, TableSink
from projections.tables import ProjectionTables, folded_columns

ODD_OFFSET = timezone(timedelta(hours=-7, minutes=-30))


def _table() -> Table:
    return Table(
        "t", MetaData(), Column("id", StoredId(), primary_key=True), Column("at", StoredTime())
    )


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (
            datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        ),
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=ODD_OFFSET),
            datetime(2026, 1, 2, 10, 34, 5, tzinfo=UTC),
        ),
        (datetime(1, 1, 1), datetime(1, 1, 1, tzinfo=UTC)),
        (
            datetime(9999, 12, 31, 23, 59, 59, 999_999),
            datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        ),
        (None, None),
    ],
)
def test_a_time_is_stored_as_microseconds_and_reads_back_in_utc(
    moment: datetime | None, expected: datetime | None
) -> None:
    engine = create_engine("sqlite://")
    table = _table()
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(insert(table), {"id": "a", "at": moment})
        (raw,) = connection.exec_driver_sql("SELECT at FROM t").one()
        (back,) = connection.execute(select(table.c.at)).one()
    assert back == expected
    assert raw is None if moment is None else type(raw) is int
    if back is not None:
        assert back.tzinfo is UTC
    if moment is not None and moment.tzinfo is not None:
        assert back == moment  # the same instant


@pytest.mark.parametrize(
    ("value", "packed"),
    [
        ("9f6c1d2e-4b7a-4e3f-8a1b-2c3d4e5f6a7b", True),
        ("01a22cc6-6d5a-74d2-9987-ef9f14482c79", True),
        ("01A22CC6-6D5A-74D2-9987-EF9F14482C79", False),  # not canonical: kept as text
        ("01a22cc6-6d5a-74d2-9987-ef9f14482c7 ", False),
        ("0 a22cc6-6d5a-74d2-9987-ef9f14482c79", False),
        ("01a22cc6-6d5a-74d2-9987-ef9f1448-c79", False),
        ("01a22cc6-6d5a-74d2-9987-ef9f14 82c79", False),
        ("task-1", False),
        ("", False),
    ],
)
def test_an_id_reads_back_exactly_and_a_uuid_takes_16_bytes(value: str, packed: bool) -> None:
    stored = stored_id(value)
    assert (type(stored) is bytes and len(stored) == 16) is packed
    assert id_text(stored) == value
    engine = create_engine("sqlite://")
    table = _table()
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(insert(table), {"id": value, "at": None})
        (raw,) = connection.exec_driver_sql("SELECT id FROM t").one()
        found = [
            tuple(r) for r in connection.execute(select(table.c.id).where(table.c.id == value))
        ]
    assert raw == stored
    assert found == [(value,)]


@pytest.mark.parametrize(
    "value",
    ["9f6c1d2e-4b7a-4e3f-8a1b-2c3d4e5f6a7b", "01A22CC6-6D5A-74D2-9987-EF9F14482C79", "task-1"],
)
def test_an_id_written_as_a_parameter_is_stored_as_the_same_value_stored_id_gives(
    value: str,
) -> None:
    """The sink hands sqlite3 a UUID's 16 bytes as a bytearray (bound with no adapter
    lookup): SQLite stores the very BLOB of :func:`stored_id`, and any other id as text."""
    param = id_param(value)
    assert param == stored_id(value)
    assert type(param) is (bytearray if type(stored_id(value)) is bytes else str)
    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id)")
        connection.exec_driver_sql("INSERT INTO t VALUES (?)", (param,))
        (raw,) = connection.exec_driver_sql("SELECT id FROM t").one()
        (found,) = connection.exec_driver_sql(
            "SELECT count(*) FROM t WHERE id = ?", (stored_id(value),)
        ).one()
    assert raw == stored_id(value) and type(raw) is type(stored_id(value))
    assert found == 1


@pytest.mark.parametrize("count", [1, _ROWS_BY_COLUMN])
def test_the_sink_writes_what_sqlalchemy_writes(count: int) -> None:
    """The hot path writes through the driver, ids as bytearrays: SQLite must store the
    very values, of the very storage classes, that SQLAlchemy's own insert stores (a few
    rows, written a row at a time, and many, a column at a time)."""
    table = ProjectionTables().messages
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=ODD_OFFSET)
    rows = [
        {
            "message_id": str(uuid4()),
            "log_id": "9f6c1d2e-4b7a-4e3f-8a1b-2c3d4e5f6a7b",
            "seq": n,
            "version": n,
            "role": "user",
            "content": "hello",
            "sent_at": moment,
            "name": None if n % 2 else "Ann",
            "buffered": 1,
            "task_id": "task-1",
            "quarantined": 0,
        }
        for n in range(count)
    ]
    columns = [c.name for c in folded_columns(table)]
    shown = ", ".join(f"{c}, typeof({c})" for c in columns)
    stored = []
    for through_sink in (True, False):
        engine = create_engine("sqlite://")
        table.metadata.create_all(engine)
        with engine.begin() as connection:
            if through_sink:
                TableSink(table, ("message_id",), engine.dialect).write(connection, rows, [], [])
            else:
                connection.execute(insert(table), rows)
            stored.append(
                connection.exec_driver_sql(f"SELECT {shown} FROM {table.name} ORDER BY seq").all()
            )
    assert len(stored[0]) == count
    assert stored[0] == stored[1]


def test_postgresql_keeps_its_own_types() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    assert StoredTime().process_bind_param(moment, dialect) is moment
    assert StoredId().process_bind_param("01a22cc6-6d5a-74d2-9987-ef9f14482c79", dialect) == (
        "01a22cc6-6d5a-74d2-9987-ef9f14482c79"
    )


def test_a_prefix_of_a_uuid_is_the_range_of_packed_ids_that_start_so() -> None:
    ids = sorted(str(uuid4()) for _ in range(300))
    ids += ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]
    for full in ids:
        for cut in (1, 5, 8, 9, 10, 14, 23, 24, 35, 36):
            prefix = full[:cut]
            packed = packed_range(prefix)
            assert packed is not None
            start, end = packed
            inside = {
                i for i in ids if start <= stored_id(i) and (end is None or stored_id(i) < end)
            }
            assert inside == {i for i in ids if i.startswith(prefix)}, prefix
    assert packed_range("") == (b"", None)
    assert packed_range("fff")[1] is None  # type: ignore[index]
    for never in ("0B5C", "0b5g", "0b5c2f1e9", "0b5c2f1e-9f4e-4a55-8d1e-2f9b8f1b6c11a", "-"):
        assert packed_range(never) is None, never
