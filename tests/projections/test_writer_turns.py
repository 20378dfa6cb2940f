"""A long run of transactions that hold every writer off (rebuild, catch-up, verify)
leaves SQLite's writers a turn: once a second while none has shown itself, at every gap
once one has committed, never on PostgreSQL (it queues them)."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from events import sqlite_url
from projections import rebuild, verify
from projections.writer_turns import PROBE_AFTER, TURN, WriterTurns
from tests.support.stores import store_of_messages


@pytest.fixture
def turns_taken(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(importlib.import_module("projections.writer_turns"), "sleep", taken.append)
    return taken


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The turns' clock, in seconds, as the test sets it."""
    now = [0.0]
    monkeypatch.setattr(
        importlib.import_module("projections.writer_turns"), "monotonic", lambda: now[0]
    )
    return now


def test_while_no_other_writer_shows_itself_a_gap_gets_a_turn_once_a_second(
    tmp_path: Path, turns_taken: list[float], clock: list[float]
) -> None:
    engine = create_engine(sqlite_url(tmp_path / "alone.db"))
    turns = WriterTurns(sqlite=True)
    taken_at = []
    with engine.connect() as connection:
        for _ in range(16):  # a page every 0.25 s: 4 s
            clock[0] += PROBE_AFTER / 4
            turns.note(connection)
            turns.between()
            if len(turns_taken) > len(taken_at):
                taken_at.append(round(clock[0], 1))
    assert turns_taken == [TURN] * 4
    assert taken_at == [1.0, 2.0, 3.0, 4.0]


def test_a_run_shorter_than_a_second_takes_no_turn(
    tmp_path: Path, turns_taken: list[float], clock: list[float]
) -> None:
    engine = create_engine(sqlite_url(tmp_path / "alone.db"))
    turns = WriterTurns(sqlite=True)
    with engine.connect() as connection:
        for _ in range(200):  # pages of one event: 200 gaps in 0.9 s
            clock[0] += 0.9 / 200
            turns.note(connection)
            turns.between()
    assert turns_taken == []


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[Engine, sqlite3.Connection]]:
    """An engine on a database file, and another connection to it, ready to write."""
    path = tmp_path / "shared.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE writes (n INTEGER)")
    yield create_engine(sqlite_url(path)), other
    other.close()


def test_once_another_connection_has_committed_every_gap_gets_a_turn(
    shared: tuple[Engine, sqlite3.Connection], turns_taken: list[float]
) -> None:
    engine, other = shared
    turns = WriterTurns(sqlite=True)
    with engine.connect() as connection:
        turns.note(connection)
        turns.between()
        other.execute("INSERT INTO writes VALUES (1)")  # a writer got in
        for _ in range(5):
            turns.note(connection)
            turns.between()
    assert turns_taken == [TURN] * 5


def test_a_commit_made_elsewhere_while_the_runs_connection_was_replaced_gets_a_turn(
    shared: tuple[Engine, sqlite3.Connection], turns_taken: list[float]
) -> None:
    """A failed transaction replaces the store's writer connection mid-run. Every new
    connection reads the same first data_version, the one the old connection read while
    nothing was committed elsewhere: a writer that committed between the two went unseen,
    and its turns were skipped until the run's next probe a second later."""
    pooled, other = shared
    engine = create_engine(pooled.url, poolclass=NullPool)
    turns = WriterTurns(sqlite=True)
    with engine.connect() as connection:
        turns.note(connection)
        turns.between()
    other.execute("INSERT INTO writes VALUES (1)")  # a writer got in
    with engine.connect() as connection:  # a new connection: the old one was discarded
        turns.note(connection)
        turns.between()
    assert turns_taken == [TURN]


def test_a_run_that_left_the_lock_free_for_a_turns_length_owes_no_turn_at_the_next_gap(
    shared: tuple[Engine, sqlite3.Connection], turns_taken: list[float]
) -> None:
    """A rebuild reads and folds each page without the lock: once that took at least a
    turn's length, a waiting writer has had its turn, also once one has shown itself; a
    shorter time off the lock counts for nothing."""
    engine, other = shared
    turns = WriterTurns(sqlite=True)
    with engine.connect() as connection:
        turns.note(connection)
        other.execute("INSERT INTO writes VALUES (1)")  # a writer got in
        turns.note(connection)
        turns.left_free(TURN)
        turns.between()
        assert turns_taken == []
        turns.left_free(TURN / 2)
        turns.between()
    assert turns_taken == [TURN]


def test_postgresql_queues_its_writers_so_no_turn_is_taken(
    turns_taken: list[float], clock: list[float]
) -> None:
    turns = WriterTurns(sqlite=False)
    for _ in range(3):
        clock[0] += PROBE_AFTER
        turns.note(None)  # type: ignore[arg-type]  # no connection is read
        turns.between()
    assert turns_taken == []


def test_a_rebuild_beside_another_writer_leaves_it_a_turn_between_every_two_pages(
    tmp_path: Path, turns_taken: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of_messages(tmp_path / "log.db", "ann", [f"message {n}" for n in range(200)])
    other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    other.execute("CREATE TABLE writes (n INTEGER)")
    steps: list[str] = []
    lock_writers = store.lock_writers

    def locked(connection: Any) -> None:
        steps.append("lock")
        lock_writers(connection)

    def page_folded(done: int, total: int) -> None:
        if steps.count("page") == 2:
            other.execute("INSERT INTO writes VALUES (1)")  # a writer gets in
            steps.append("written")
        steps.append("page")

    monkeypatch.setattr(store, "lock_writers", locked)
    monkeypatch.setattr(
        importlib.import_module("projections.writer_turns"),
        "sleep",
        lambda seconds: steps.append("turn"),
    )
    try:
        rebuild(store, page_size=20, progress=page_folded)
        written = steps.index("written")
        assert "turn" not in steps[:written]  # 2 pages: no turn due yet
        noticed = steps.index("lock", written + 1)  # the next page sees the commit
        locks = [n for n, step in enumerate(steps) if step == "lock" and n > noticed]
        assert len(locks) >= 8
        for a, b in zip([noticed, *locks], locks, strict=False):
            assert "turn" in steps[a:b], " ".join(steps)
        assert verify(store) == []
    finally:
        store.close()
        other.close()
