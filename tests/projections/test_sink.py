"""The SQL sink: a user's log id, on every row, is converted once and remembered, and the
rows written read back as they were, on every path to the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text

from events import EventStore, sqlite_url
from projections import ProjectionTables, Projector
from projections.search import SearchIndex, pg_vector, spoken
from projections.sink import _ROWS_BY_COLUMN, Joined, TableSink, _remembering, driver_cursor
from tests.support.backends import postgres_url


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


SINK_PATHS = ("sqlite", "postgres", "postgres-core")
"""The sink's paths: straight to sqlite3, straight to psycopg, and SQLAlchemy Core (any
other driver's), run here on psycopg's connection."""


@pytest.fixture(params=SINK_PATHS)
def sink_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EventStore, bool]]:
    """A store with the projection tables, and whether its sinks go through SQLAlchemy Core."""
    path: str = request.param
    url = sqlite_url(tmp_path / "sink.db") if path == "sqlite" else postgres_url()
    store = EventStore(url)
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    yield store, path == "postgres-core"
    store.close()


def _sink(store: EventStore, table: Table, key: tuple[str, ...], core: bool) -> TableSink:
    sink = TableSink(table, key, store.engine.dialect)
    assert sink.native, "straight to the driver on SQLite and psycopg"
    sink.native = not core
    return sink


def test_users_rows_written_through_the_sink_read_back_as_they_were(
    sink_store: tuple[EventStore, bool],
) -> None:
    store, core = sink_store
    sink = _sink(store, ProjectionTables().users, ("log_id",), core)
    moment = _MOMENT
    rows = [_user(n) for n in range(5)]
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


def test_many_rows_are_inserted_updated_and_deleted_and_read_back(
    sink_store: tuple[EventStore, bool],
) -> None:
    """Many rows (on PostgreSQL, one statement of an array per column for each change),
    of every column type (ids, text with ``%``, a JSON list, times, integers, NULLs):
    updated by groups of changed columns, some deleted, they read back as the fold left
    them."""
    store, core = sink_store
    sink = _sink(store, ProjectionTables().knowledge, ("entry_id",), core)
    moment = _MOMENT
    rows = [_fact(n) for n in range(600)]
    ended = moment.replace(year=2027)
    with store.transaction() as connection:
        sink.write(connection, rows, [], [])
        sink.write(
            connection,
            [],
            [
                *({"entry_id": r["entry_id"], "valid_until": ended} for r in rows[:300]),
                *(
                    {"entry_id": r["entry_id"], "text": "changed", "model": None}
                    for r in rows[300:310]
                ),
            ],
            [r["entry_id"] for r in rows[500:]],
        )
        loaded = sink.load(connection, "log_id", [rows[0]["log_id"]])
    expected = [
        *({**r, "valid_until": ended} for r in rows[:300]),
        *({**r, "text": "changed", "model": None} for r in rows[300:310]),
        *rows[310:500],
    ]
    assert sorted(loaded, key=lambda r: r["version"]) == expected


def test_messages_null_in_every_row_or_in_some_read_back_as_they_were_written(
    sink_store: tuple[EventStore, bool],
) -> None:
    """Inserts of rows whose nullable columns are NULL in all of them (no name), in some
    (the task holding a message), or in none, each alone and mixed, many rows at once and
    a few: on SQLite a column NULL in every one of many rows is left out of the statement;
    every row reads back as written."""
    store, core = sink_store
    sink = _sink(store, ProjectionTables().messages, ("message_id",), core)

    def message(n: int, task: str | None, name: str | None) -> dict[str, Any]:
        return {
            "message_id": f"00000000-0000-7000-8000-{n:012d}",
            "log_id": _LOG_ID,
            "seq": n,
            "version": n,
            "role": "user",
            "content": f"message {n}",
            "sent_at": _MOMENT,
            "name": name,
            "buffered": 1,
            "task_id": task,
            "quarantined": 0,
        }

    many = _ROWS_BY_COLUMN
    writes = [
        [message(n, None, None) for n in range(1, many + 1)],
        [message(n, "task-1" if n % 2 else None, None) for n in range(100, 100 + many)],
        [message(n, "task-2", "Ann") for n in range(200, 200 + many)],
        [message(n, None, None) for n in range(300, 303)],
        [message(n, "task-1" if n % 2 else None, None) for n in range(400, 404)],
        [message(500, None, "Bob")],
    ]
    with store.transaction() as connection:
        for rows in writes:
            sink.write(connection, rows, [], [])
        loaded = sink.load(connection, "log_id", [_LOG_ID])
    assert sorted(loaded, key=itemgetter("seq")) == [row for rows in writes for row in rows]


def test_a_null_written_to_a_column_with_a_default_stays_null() -> None:
    """A nullable column NULL in every one of many rows is left out of SQLite's insert
    only if it has no default: left out, SQLite would store the default instead."""
    table = Table(
        "t",
        MetaData(),
        Column("k", String(8), primary_key=True),
        Column("x", Integer, nullable=True, server_default=text("7")),
    )
    engine = create_engine("sqlite://")
    table.metadata.create_all(engine)
    sink = TableSink(table, ("k",), engine.dialect)
    rows = [{"k": f"k{n}", "x": None} for n in range(_ROWS_BY_COLUMN)]
    with engine.begin() as connection:
        sink.write(connection, rows, [], [])
        stored = connection.execute(text("SELECT k, x FROM t ORDER BY k")).all()
    assert [tuple(r) for r in stored] == [(r["k"], None) for r in rows]


def test_rows_of_a_composite_key_are_inserted_and_deleted_in_bulk(
    sink_store: tuple[EventStore, bool],
) -> None:
    """Citations, keyed by message and entry: many inserted, then many and one deleted
    by both columns of their key, in two writes; the rest read back."""
    many = _ROWS_BY_COLUMN
    store, core = sink_store
    sink = _sink(store, ProjectionTables().citations, ("message_id", "entry_id"), core)
    log_id = _LOG_ID

    def citation(message: int, entry: int) -> dict[str, Any]:
        return {
            "message_id": f"00000000-0000-7000-8000-{message:012d}",
            "entry_id": f"00000000-0000-4000-8000-{entry:012d}",
            "log_id": log_id,
            "repeated": 0,
        }

    rows = [citation(m, e) for m in range(10) for e in range(3)]
    with store.transaction() as connection:
        sink.write(connection, rows, [], [])
        sink.write(connection, [], [], [(r["message_id"], r["entry_id"]) for r in rows[:many]])
        sink.write(connection, [], [], [(rows[10]["message_id"], rows[10]["entry_id"])])
        loaded = sink.load(connection, "log_id", [log_id])
    kept = rows[many:10] + rows[11:]
    key = itemgetter("message_id", "entry_id")
    assert sorted(loaded, key=key) == sorted(kept, key=key)


def test_changes_of_one_statement_join_into_one_and_others_run_at_once() -> None:
    """psycopg: a table's change that is one statement waits in ``joined`` and goes with
    the others as one statement; a change of more statements than one runs at once."""
    store = EventStore(postgres_url())
    tables = ProjectionTables()
    with store.transaction() as connection:
        Projector(tables).create(connection)
    users = TableSink(tables.users, ("log_id",), store.engine.dialect)
    knowledge = TableSink(tables.knowledge, ("entry_id",), store.engine.dialect)
    moment = _MOMENT
    user = _user(0)
    facts = [_fact(n) for n in range(3)]
    try:
        with store.transaction() as connection:
            knowledge.write(connection, facts[:2], [], [])
            joined = Joined()
            users.write(connection, [user], [], [], joined)
            knowledge.write(connection, facts[2:], [], [], joined)
            assert users.load(connection, "log_id", [user["log_id"]]) == []
            assert len(knowledge.load(connection, "log_id", [user["log_id"]])) == 2
            joined.send(driver_cursor(connection))
            assert users.load(connection, "log_id", [user["log_id"]]) == [user]
            assert len(knowledge.load(connection, "log_id", [user["log_id"]])) == 3

            ended = {"entry_id": facts[0]["entry_id"], "valid_until": moment}
            knowledge.write(connection, [], [ended], [facts[1]["entry_id"]], Joined())
            stored = knowledge.load(connection, "log_id", [user["log_id"]])
        assert sorted((r["entry_id"], r["valid_until"]) for r in stored) == [
            (facts[0]["entry_id"], moment),
            (facts[2]["entry_id"], None),
        ], "an update and a delete of one table: two statements, run at once"
    finally:
        store.close()


def test_two_statements_on_one_table_never_join() -> None:
    """PostgreSQL would apply only one of two joined changes to a row: refused."""
    joined = Joined()
    joined.add("mv_users", "UPDATE mv_users SET version = %s", [1])
    with pytest.raises(ValueError, match="second statement on mv_users"):
        joined.add("mv_users", "UPDATE mv_users SET version = %s", [2])


@pytest.mark.parametrize("count", [2, 40])
def test_on_postgresql_inserted_messages_carry_their_search_vector(
    sink_store: tuple[EventStore, bool], count: int
) -> None:
    """The sink writes a message's ``search_vector`` with its row, on either path and in
    one ``VALUES`` or in bulk: the words of its speaker and text, as the index cuts them."""
    store, core = sink_store
    if store.is_sqlite:
        pytest.skip("SQLite indexes messages apart, in bulk")
    tables = ProjectionTables()
    sink = TableSink(
        tables.messages,
        ("message_id",),
        store.engine.dialect,
        SearchIndex(tables).pg_derived()["messages"],
    )
    sink.native = not core
    rows = [
        {
            "message_id": f"00000000-0000-7000-8000-{n:012d}",
            "log_id": _LOG_ID,
            "seq": n,
            "version": n + 1,
            "role": "user",
            "content": f"Ich wohne in der Hauptstraße {n}",
            "sent_at": _MOMENT,
            "name": "Zoë" if n % 2 else None,
            "buffered": 1,
            "task_id": None,
            "quarantined": 0,
        }
        for n in range(count)
    ]
    with store.transaction() as connection:
        sink.write(connection, rows, [], [])
        stored = connection.exec_driver_sql(
            f"SELECT seq, search_vector::text FROM {tables.messages.name} ORDER BY seq"
        ).all()
        expected = connection.exec_driver_sql(
            "SELECT v::tsvector::text FROM unnest(%s::text[]) AS v",
            ([pg_vector(_LOG_ID, spoken(r["content"], r["name"])) for r in rows],),
        ).all()
    assert [vector for _, vector in stored] == [vector for (vector,) in expected]
    assert "'zoe':2" in stored[1][1] and "'hauptstrass'" in stored[0][1]


_MOMENT = datetime(2026, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)
_LOG_ID = "0f8fad5b-d9cb-469f-a165-708677289500"


def _user(n: int) -> dict[str, Any]:
    """A user's summary row."""
    return {
        "log_id": f"0f8fad5b-d9cb-469f-a165-7086772895{n:02d}",
        "user_id": f"user-{n}",
        "version": n,
        "message_count": n,
        "buffered_count": 0,
        "quarantined_count": 0,
        "knowledge_count": 0,
        "tasks_completed": 0,
        "tasks_failed": 0,
        "created_at": _MOMENT,
        "updated_at": _MOMENT,
    }


def _fact(n: int) -> dict[str, Any]:
    """A knowledge entry of user 0, of every column type (text with ``%``, a JSON list,
    times, NULLs)."""
    return {
        "entry_id": f"00000000-0000-4000-8000-{n:012d}",
        "log_id": _LOG_ID,
        "text": f"fact {n}: it's 100% true",
        "task_id": f"task-{n % 7}",
        "source_message_ids": [f"m-{n}", f"m-{n + 1}"],
        "extracted_at": _MOMENT,
        "version": n,
        "ordinal": n % 3,
        "knowledge_version": "v1",
        "extractor": "test",
        "model": None if n % 2 else "model-x",
        "valid_from": _MOMENT,
        "valid_until": None,
        "superseded_by": None,
        "ended_reason": None,
        "ended_version": None,
    }
