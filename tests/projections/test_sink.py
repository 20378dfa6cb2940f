"""The SQL sink: a user's log id, on every row, is converted once and remembered, and the
rows written read back as they were."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from events import EventStore
from projections import ProjectionTables
from projections.sink import TableSink, _remembering


def test_a_repeated_value_is_converted_once_and_the_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("projections.sink._REMEMBERED_FORMS", 3)
    calls: list[str] = []

    def convert(value: str) -> bytes:
        calls.append(value)
        return value.encode()

    remembering = _remembering(convert)
    assert [remembering(v) for v in ["a", "b", "a", "a", "b"]] == [b"a", b"b", b"a", b"a", b"b"]
    assert calls == ["a", "b"]
    for value in ["c", "d", "a"]:
        remembering(value)
    assert calls == ["a", "b", "c", "d", "a"], "full at three: forgotten, then converted again"


def test_users_rows_written_through_the_sink_read_back_as_they_were(store: EventStore) -> None:
    tables = ProjectionTables()
    sink = TableSink(tables.users, ("log_id",), store.engine.dialect)
    moment = datetime(2026, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {
            "log_id": f"0f8fad5b-d9cb-469f-a165-7086772895{n:02d}",
            "user_id": f"user-{n}",
            "version": n,
            "message_count": n,
            "buffered_count": 0,
            "quarantined_count": 0,
            "knowledge_count": 0,
            "tasks_completed": 0,
            "tasks_failed": 0,
            "created_at": moment,
            "updated_at": moment,
        }
        for n in range(5)
    ]
    with store.transaction() as connection:
        sink.write(connection, rows, [], [])
        again = [{**rows[0], "version": 9, "updated_at": moment.replace(second=1)}]
        sink.write(
            connection,
            [],
            [{"log_id": rows[0]["log_id"], "version": 9, "updated_at": again[0]["updated_at"]}],
            [],
        )
        loaded = sink.load(connection, "log_id", [r["log_id"] for r in rows])
    by_id = {r["log_id"]: r for r in loaded}
    assert by_id[rows[0]["log_id"]] == again[0]
    assert [by_id[r["log_id"]] for r in rows[1:]] == rows[1:]
