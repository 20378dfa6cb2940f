"""The projection reader: lookups by id stay inside the user they are asked for, and an
id prefix finds the ids that start with it, however they are stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from events import EventStore, sqlite_url, user_log_id
from memvee import ProcessingError
from memvee.extractors import OfflineExtractor
from projections import ProjectionReader, ProjectionTables, Projector
from tests.support.backends import postgres_url
from tests.support.sqlite_steps import counted_steps


def _reader_of(memory: Any) -> tuple[Any, ProjectionReader]:
    """An open Memory's engine, and a reader of its tables."""
    engine = memory._engine
    assert engine is not None
    return engine, ProjectionReader(engine.tables)


async def test_ids_of_another_user_find_nothing_and_own_ids_come_in_log_order(
    make_memory: Callable[..., Any],
) -> None:
    memory = await make_memory(extractor=OfflineExtractor())
    for user in ("ann", "bob"):
        await memory.add_exchange(user, "I live in Oslo.", "Nice.")
        await memory.add_exchange(user, "I work at Acme.", "Good.")
        await memory.flush(user)
    engine, reader = _reader_of(memory)
    ann_messages = [m.message_id for m in await memory.messages("ann")]
    ann_entries = [e.entry_id for e in await memory.knowledge("ann")]
    with engine.store.engine.connect() as connection:
        assert reader.messages(connection, "bob", ids=ann_messages) == []
        assert reader.entries(connection, "bob", ann_entries) == []
        found = reader.messages(connection, "ann", ids=ann_messages[::-1])
        assert [m.message_id for m in found] == ann_messages
        assert {e.entry_id for e in reader.entries(connection, "ann", ann_entries)} == set(
            ann_entries
        )
        assert [m.seq for m in reader.messages(connection, "ann", seqs=[3, 1])] == [1, 3]


async def test_outdated_messages_and_messages_by_seq_are_the_users_own(
    make_memory: Callable[..., Any],
) -> None:
    """What every search with messages reads besides its hits: which hits say something
    replaced since, and their neighbours by seq; never another user's."""
    memory = await make_memory(extractor=OfflineExtractor())
    for user in ("ann", "bob"):
        await memory.add_exchange(user, "I live in Oslo.", "Nice.")
        await memory.flush(user)
    await memory.add_exchange("ann", "I moved to Bergen.", "Good.")
    await memory.flush("ann")
    engine, reader = _reader_of(memory)
    ann = [m.message_id for m in await memory.messages("ann")]
    bob = [m.message_id for m in await memory.messages("bob")]
    with engine.store.engine.connect() as connection:
        assert reader.outdated(connection, "ann", ann) == {ann[0]}
        assert reader.outdated(connection, "bob", ann) == set()
        assert reader.outdated(connection, "bob", bob) == set()
        by_seq = reader.messages(connection, "ann", seqs=[4, 2, 9])
        assert [(m.message_id, m.seq, m.content) for m in by_seq] == [
            (ann[1], 2, "Nice."),
            (ann[3], 4, "Good."),
        ]
        assert [m.message_id for m in reader.messages(connection, "bob", seqs=[1, 2])] == bob


def test_entry_ids_starting_with_a_prefix_are_found_by_range_or_text_alike(db_url: str) -> None:
    store = EventStore(db_url)
    tables = ProjectionTables()
    try:
        with store.transaction() as connection:
            Projector(tables).create(connection)
            ids = {
                "ann": [str(uuid4()) for _ in range(200)],
                "bob": [str(uuid4()) for _ in range(50)],
            }
            ids["ann"] += ["0abc-not-a-uuid", "0ABC-upper", "0b5c2f1e-9f4e-4a55-8d1e-2f9b8f1b6c1"]
            rows = [_entry(user, entry_id) for user, owned in ids.items() for entry_id in owned]
            connection.execute(tables.knowledge.insert(), rows)
        reader = ProjectionReader(tables)
        every = sorted(ids["ann"])
        prefixes = ["0", "0a", "0abc", "0ABC", "0b5c2f1e-9f4e", "f", "%", "_"]
        prefixes += [i[:n] for i in every[::20] for n in (3, 9, 36)]
        with store.engine.connect() as connection:
            for prefix in prefixes:
                expected = [i for i in every if i.startswith(prefix)][:6]
                found = reader.entry_ids_starting(connection, "ann", prefix, 6)
                assert found == expected, prefix
    finally:
        store.close()


def _entry(user: str, entry_id: str) -> dict[str, Any]:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "entry_id": entry_id,
        "log_id": str(user_log_id(user)),
        "text": "a fact",
        "task_id": "t1",
        "source_message_ids": [],
        "extracted_at": moment,
        "version": 3,
        "ordinal": 0,
        "knowledge_version": "live",
        "extractor": "offline",
        "model": None,
        "valid_from": moment,
        "valid_until": None,
        "superseded_by": None,
        "ended_reason": None,
        "ended_version": None,
    }


async def test_knowledge_read_a_page_at_a_time_is_the_whole_listing_in_parts(
    make_memory: Callable[..., Any],
) -> None:
    """Pages of any size, of the current entries, of those valid at a time and of every
    entry ever, put together give the whole listing in its order; a page past the end is
    empty; and the user's count of current entries is the current listing's length."""
    memory = await make_memory(extractor=OfflineExtractor())
    said = ["I live in Oslo.", "I work at Acme.", "My dog is called Rex."]
    for text in said:
        await memory.add_exchange("ann", text, "Noted.")
        await memory.flush("ann")
    midway = datetime.now(UTC)
    for text in ("I moved to Bergen.", "I work at Initech now.", "I like chess."):
        await memory.add_exchange("ann", text, "Noted.")
        await memory.flush("ann")
    await memory.add_exchange("bob", "I live in Rome.", "Nice.")
    await memory.flush("bob")

    listings: list[dict[str, Any]] = [{}, {"as_of": midway}, {"history": True}]
    for listing in listings:
        whole = [e.entry_id for e in await memory.knowledge("ann", **listing)]
        for size in (1, 2, 4):
            pages = [
                await memory.knowledge("ann", offset=start, limit=size, **listing)
                for start in range(0, len(whole) + size, size)
            ]
            assert [e.entry_id for page in pages for e in page] == whole, (listing, size)
        rest = await memory.knowledge("ann", offset=2, **listing)
        assert [e.entry_id for e in rest] == whole[2:]
        assert await memory.knowledge("ann", offset=10**30, limit=10**30, **listing) == []
    current = await memory.knowledge("ann")
    summary = await memory.user("ann")
    assert summary is not None and summary.knowledge_count == len(current)
    assert len(await memory.knowledge("ann", history=True)) > len(current) > 0
    assert len(await memory.knowledge("ann", as_of=midway)) == len(said)


USER_IDS = ["a", "B", "_x", "é", "Z", "a b", "ab", "a-c", "10", "9", "Ω"]
"""User ids a language's collation orders otherwise than code points do (ICU "en-US":
"_x", "10", "9", "a", "a b", "a-c", "ab", "B", "é", "Z", "Ω")."""


@pytest.fixture
def icu_engine() -> Iterator[sqlalchemy.Engine]:
    """An engine on a fresh database of the PostgreSQL test server whose text collates
    as ICU's "en-US" does; skips where the server has no ICU."""
    server = make_url(postgres_url())
    name = f"memvee_icu_{uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            try:
                connection.execute(
                    sqlalchemy.text(
                        f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                        "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                    )
                )
            except sqlalchemy.exc.DBAPIError as error:
                pytest.skip(f"the PostgreSQL server makes no ICU database: {error.orig}")
        engine = sqlalchemy.create_engine(server.set(database=name))
        yield engine
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    finally:
        admin.dispose()


def _user(user_id: str) -> dict[str, Any]:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "log_id": str(user_log_id(user_id)),
        "user_id": user_id,
        "version": 1,
        "message_count": 2,
        "buffered_count": 2,
        "quarantined_count": 1,
        "knowledge_count": 0,
        "tasks_completed": 0,
        "tasks_failed": 0,
        "created_at": moment,
        "updated_at": moment,
    }


def test_users_are_listed_and_paged_in_code_point_order_whatever_the_collation(
    icu_engine: sqlalchemy.Engine,
) -> None:
    """On a PostgreSQL database collated as a language, users come in code point order,
    as on SQLite, and the page after a user id holds the users after it in that order,
    read off the user id's index (no sort of every user)."""
    tables = ProjectionTables()
    with icu_engine.begin() as connection:
        Projector(tables).create(connection)
        connection.execute(tables.users.insert(), [_user(u) for u in USER_IDS])
    reader = ProjectionReader(tables)
    in_order = sorted(USER_IDS)
    assert in_order[:3] == ["10", "9", "B"]
    statements: list[tuple[str, Any]] = []

    def traced(*args: Any) -> None:
        statements.append((args[2], args[3]))

    with icu_engine.connect() as connection:
        assert [u.user_id for u in reader.users(connection).listed] == in_order
        sqlalchemy.event.listen(connection, "before_cursor_execute", traced)
        page = reader.users(connection, after="a", limit=3)
        sqlalchemy.event.remove(connection, "before_cursor_execute", traced)
        assert [u.user_id for u in page.listed] == ["a b", "a-c", "ab"]
        assert list(reader.users_with_quarantine(connection)) == in_order
        connection.exec_driver_sql("SET enable_seqscan = off")
        connection.exec_driver_sql("SET enable_sort = off")
        (statement, parameters), *_ = statements
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        )
        assert f"Index Scan using {tables.users.name}_user_id_key" in plan, plan
        assert "Sort" not in plan, plan


def test_a_user_whose_time_falls_past_year_9999_is_named_apart_and_hides_nobody_else(
    db_url: str,
) -> None:
    """On PostgreSQL the driver failed to read such a row's time, so listing anyone failed;
    SQLite listed everyone else and named the log."""
    store = EventStore(db_url)
    tables = ProjectionTables()
    with store.transaction() as connection:
        Projector(tables).create(connection)
        connection.execute(tables.users.insert(), [_user(u) for u in ("alice", "ann", "bob")])
        past_9999 = (
            "'9999-12-31T23:59:59-14:00'"
            if store.engine.dialect.name == "postgresql"
            else str(253_402_300_800_000_000 + 14 * 3_600_000_000)
        )
        connection.exec_driver_sql(
            f"UPDATE {tables.users.name} SET updated_at = {past_9999} WHERE user_id = 'alice'"
        )

    with store.engine.connect() as connection:
        page = ProjectionReader(tables).users(connection)

    assert [u.user_id for u in page.listed] == ["ann", "bob"]
    assert page.listed[0].updated_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert page.out_of_range == {"alice": str(user_log_id("alice"))}
    store.close()


def test_a_user_whose_time_is_before_year_1_or_infinite_is_named_apart_and_hides_nobody_else(
    db_url: str,
) -> None:
    """PostgreSQL read the time as text, which names a year before 1 without its era: a
    time stored as 1 BC (year 1 at +14:00) or 44 BC was listed as year 1 or 44 AD. A time
    past any microseconds a bigint holds is named apart as well."""
    store = EventStore(db_url)
    tables = ProjectionTables()
    year_1 = -62_135_596_800_000_000  # 0001-01-01T00:00Z, in microseconds since 1970
    times = {  # user: (as PostgreSQL is given it, as SQLite stores it)
        "ann": ("'0001-01-01T00:00:00+14:00'", year_1 - 14 * 3_600_000_000),
        "cy": ("'0001-01-01T00:00:00.000007-03:30'", year_1 + 12_600_000_007),
        "dee": ("'0044-03-15 12:00:00+00 BC'", -63_517_780_800_000_000),
        "eve": ("'infinity'", 2**63 - 1),
    }
    postgresql = store.engine.dialect.name == "postgresql"
    with store.transaction() as connection:
        Projector(tables).create(connection)
        users = ("ann", "bob", "cy", "dee", "eve")
        connection.execute(tables.users.insert(), [_user(u) for u in users])
        for user, (text, micros) in times.items():
            connection.exec_driver_sql(
                f"UPDATE {tables.users.name} SET updated_at = {text if postgresql else micros}"
                f" WHERE user_id = '{user}'"
            )

    with store.engine.connect() as connection:
        page = ProjectionReader(tables).users(connection)

    assert [(u.user_id, u.updated_at) for u in page.listed] == [
        ("bob", datetime(2026, 1, 1, tzinfo=UTC)),
        ("cy", datetime(1, 1, 1, 3, 30, 0, 7, tzinfo=UTC)),
    ]
    assert page.out_of_range == {u: str(user_log_id(u)) for u in ("ann", "dee", "eve")}
    store.close()


async def test_the_successors_of_an_entry_are_read_in_one_statement_however_long_the_chain(
    make_memory: Callable[..., Any],
) -> None:
    """``explain`` reads what replaced an entry, nearest first, in one walk forward: not a
    lookup per link, which grew with every change of the fact."""
    memory = await make_memory(extractor=OfflineExtractor())
    for town in ("Oslo", "Bergen", "Tromsø", "Bodø", "Molde"):
        verb = "live in" if town == "Oslo" else "moved to"
        await memory.add_exchange("ann", f"I {verb} {town}.", "Noted.")
        await memory.flush("ann")
    await memory.add_exchange("bob", "I live in Oslo.", "Noted.")
    await memory.flush("bob")
    engine, reader = _reader_of(memory)
    history = await memory.knowledge("ann", history=True)
    assert len(history) == 5
    ids = [e.entry_id for e in sorted(history, key=lambda e: e.valid_from)]
    statements: list[str] = []

    def traced(*args: Any) -> None:
        statements.append(args[2])

    with engine.store.engine.connect() as connection:
        sqlalchemy.event.listen(connection, "before_cursor_execute", traced)
        assert reader.successors(connection, "ann", ids[0]) == ids[1:]
        sqlalchemy.event.remove(connection, "before_cursor_execute", traced)
        assert reader.successors(connection, "ann", ids[2]) == ids[3:]
        assert reader.successors(connection, "ann", ids[-1]) == []
        assert reader.successors(connection, "bob", ids[0]) == []
    assert len(statements) == 1, statements


async def test_the_sqlite_fast_path_finds_the_outdated_messages_the_statement_finds(
    make_memory: Callable[..., Any],
) -> None:
    """SQLite reads the outdated messages on its DBAPI cursor; what it finds is what the
    statement PostgreSQL runs finds: a message whose fact ended, a repeat said before the
    end (outdated) and one said after it (current), and a message whose fact holds."""
    memory = await make_memory(extractor=OfflineExtractor())
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for day, said in (
        (0, "I live in Oslo."),
        (0, "I love jazz."),
        (2, "As I said, I live in Oslo."),
        (9, "Like I said, I live in Oslo."),
        (5, "I moved to Bergen."),
    ):
        await memory.add_exchange("ann", said, "Nice.", sent_at=start + timedelta(days=day))
        await memory.flush("ann")
    engine, reader = _reader_of(memory)
    ids = [m.message_id for m in await memory.messages("ann")]
    owner = str(user_log_id("ann"))
    with engine.store.engine.connect() as connection:
        fast = reader.outdated(connection, "ann", ids)
        rows = connection.execute(reader._outdated, {"ids": ids}).mappings()
        stated = {r["message_id"] for r in rows if r["log_id"] == owner}
    assert fast == stated
    contents = {m.message_id: m.content for m in await memory.messages("ann")}
    assert sorted(contents[i] for i in fast) == ["As I said, I live in Oslo.", "I live in Oslo."]


async def test_users_whose_last_run_failed_with_messages_waiting_are_found_and_no_others(
    make_memory: Callable[..., Any], extractor: Any
) -> None:
    """The users a reopened engine owes a retry: ann's last run failed, her messages
    still buffered. Not bob, whose last run completed before he wrote again, nor cy,
    whose failed run was followed by one that completed."""
    memory = await make_memory()
    for user in ("ann", "bob", "cy"):
        await memory.add_exchange(user, "I live in Oslo.", "Nice.")
    await memory.process("bob")
    await memory.add_exchange("bob", "I work at Acme.", "Good.")
    for user in ("ann", "cy"):
        extractor.fail_next = 1
        with pytest.raises(ProcessingError):
            await memory.process(user)
    await memory.process("cy")
    engine, reader = _reader_of(memory)
    with engine.store.engine.connect() as connection:
        assert reader.users_with_failed_run_waiting(connection) == ["ann"]


def test_the_users_owed_a_retry_are_found_in_steps_that_do_not_grow_with_one_users_failed_tasks(
    tmp_path: Path,
) -> None:
    """What a reopen reads at once: ann, with a message waiting, failed 300 or 3,000
    runs; each user's latest ended task is read off an index, so ten times her failures
    cost about the same SQLite steps (it took minutes at open for 20,000 of them)."""
    steps: dict[int, int] = {}
    for failures in (300, 3_000):
        store = EventStore(sqlite_url(tmp_path / f"failed{failures}.db"))
        tables = ProjectionTables()
        try:
            with store.transaction() as connection:
                Projector(tables).create(connection)
                users = ["ann", *(f"u{n:03d}" for n in range(50))]
                connection.execute(tables.users.insert(), [_user(u) for u in users])
                connection.execute(tables.messages.insert(), [_waiting(u) for u in users])
                ended = [_task("ann", "FAILED", v) for v in range(1, failures + 1)]
                ended += [_task(u, "COMPLETED", 1) for u in users[1:]]
                connection.execute(tables.tasks.insert(), ended)
            reader = ProjectionReader(tables)
            steps[failures], found = counted_steps(store, reader.users_with_failed_run_waiting)
            assert found == ["ann"]
        finally:
            store.close()
    assert steps[3_000] < 1.5 * steps[300], steps


def _waiting(user: str) -> dict[str, Any]:
    """A message of ``user`` buffered, held by no task."""
    return {
        "message_id": str(uuid4()),
        "log_id": str(user_log_id(user)),
        "seq": 1,
        "version": 1,
        "role": "user",
        "content": "I live in Oslo.",
        "sent_at": datetime(2026, 1, 1, tzinfo=UTC),
        "name": None,
        "buffered": 1,
        "task_id": None,
        "quarantined": 0,
    }


def _task(user: str, status: str, finished_version: int) -> dict[str, Any]:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "task_id": str(uuid4()),
        "log_id": str(user_log_id(user)),
        "trigger": "retry",
        "status": status,
        "message_count": 1,
        "batches": 1,
        "knowledge_count": 0,
        "error": None,
        "requested_at": moment,
        "started_at": moment,
        "finished_at": moment,
        "requested_version": finished_version,
        "finished_version": finished_version,
        "extractor": None,
        "model": None,
    }
