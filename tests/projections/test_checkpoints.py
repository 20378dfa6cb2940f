"""Checkpoints of a replay: stored rows read back exactly, a replay starts from the nearest
one before the point asked for and ends where a replay from nothing ends, a user keeps a
bounded number of them, and none outlives its user's erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import EventStore, sqlite_url, user_log_id
from projections import (
    Checkpoint,
    Checkpoints,
    ProjectionTables,
    Projector,
    replay,
    replay_checkpoints,
    state_at,
    take_checkpoint,
)
from projections.checkpoints import KEPT
from tests.support.log_operations import LogDriver

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def checkpoints() -> Checkpoints:
    return replay_checkpoints(ProjectionTables())


def _drive(store: EventStore, driver: LogDriver, *operations: str) -> None:
    for op in operations:
        driver.perform(op)
        events = driver.log.collect_events()
        if events:
            store.append([events])


def _log_id(user: str) -> str:
    return str(user_log_id(user))


def test_a_checkpoint_reads_back_its_rows_exactly(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    task = {
        "task_id": "t1",
        "log_id": _log_id("ann"),
        "trigger": "auto",
        "status": "COMPLETED",
        "message_count": 2,
        "batches": 1,
        "knowledge_count": 1,
        "error": None,
        "requested_at": T0,
        "started_at": T0 + timedelta(microseconds=1),
        "finished_at": None,
        "requested_version": 4,
        "finished_version": None,
        "extractor": "offline",
        "model": None,
    }
    entry = {
        "entry_id": "0b5c2f1e-9f4e-4a55-8d1e-2f9b8f1b6c11",
        "log_id": _log_id("ann"),
        "text": "Ann lives in Lisbon ✓",
        "task_id": "t1",
        "source_message_ids": ["m1", "m2"],
        "extracted_at": T0,
        "version": 5,
        "ordinal": 0,
        "knowledge_version": "live",
        "extractor": "offline",
        "model": "claude",
        "valid_from": datetime(1999, 12, 31, tzinfo=UTC),
        "valid_until": None,
        "superseded_by": None,
        "ended_reason": None,
        "ended_version": None,
    }
    saved = Checkpoint(5, T0, {"messages": [], "tasks": [task], "knowledge": [entry]})
    with store.transaction() as connection:
        checkpoints.save(connection, _log_id("ann"), saved)
    with store.engine.connect() as connection:
        found = checkpoints.nearest(connection, _log_id("ann"), version=None, at=None)
        assert checkpoints.nearest(connection, _log_id("bob"), version=None, at=None) is None
    assert found == saved
    assert found.rows["tasks"][0]["started_at"].tzinfo is not None


def test_a_replay_starts_from_the_nearest_checkpoint_and_ends_where_one_from_nothing_does(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, "add", "add", "add", "start", "extract", "add")
    first = take_checkpoint(store, "ann", checkpoints)
    _drive(store, driver, "add", "start", "revise", "add", "add")
    second = take_checkpoint(store, "ann", checkpoints)
    assert first is not None and second is not None and first < second
    assert take_checkpoint(store, "ann", checkpoints) is None, "nothing new to fold"
    end = driver.log.version
    with store.engine.connect() as connection:
        log_id = _log_id("ann")
        assert checkpoints.nearest(connection, log_id, version=second - 1, at=None) is not None
        nearest = checkpoints.nearest(connection, log_id, version=second - 1, at=None)
        assert nearest is not None and nearest.version == first
        assert checkpoints.nearest(connection, log_id, version=first - 1, at=None) is None
        latest = checkpoints.nearest(connection, log_id, version=None, at=None)
        assert latest is not None and latest.version == second
        stamped = checkpoints.nearest(connection, log_id, version=None, at=nearest.latest)
        assert stamped is not None and stamped.version == first
    for version in range(1, end + 1):
        expected = state_at(store, "ann", version=version)
        assert state_at(store, "ann", version=version, checkpoints=checkpoints) == expected


def test_a_checkpoint_that_cannot_be_read_is_passed_over_for_an_older_one_or_the_log(
    store: EventStore, checkpoints: Checkpoints, caplog: pytest.LogCaptureFixture
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, "add", "add", "start", "extract", "add")
    first = take_checkpoint(store, "ann", checkpoints)
    _drive(store, driver, "add", "start", "revise", "add")
    second = take_checkpoint(store, "ann", checkpoints)
    assert first is not None and second is not None
    expected = state_at(store, "ann")
    table = checkpoints.table
    with store.engine.begin() as connection:
        connection.execute(table.update().where(table.c.version == second).values(state=b"x"))
    with store.engine.connect() as connection:
        nearest = checkpoints.nearest(connection, _log_id("ann"), version=None, at=None)
    assert nearest is not None and nearest.version == first
    assert f"at version {second} cannot be read" in caplog.text
    assert state_at(store, "ann", checkpoints=checkpoints) == expected
    with store.engine.begin() as connection:
        connection.execute(table.update().values(state=b"x"))
    assert state_at(store, "ann", checkpoints=checkpoints) == expected


def test_a_checkpoint_is_only_taken_once_the_log_grew_by_enough_events(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, "add", "add", "add")
    assert take_checkpoint(store, "ann", checkpoints, min_events=5) is None
    first = take_checkpoint(store, "ann", checkpoints, min_events=4)
    assert first == 4
    _drive(store, driver, "add", "add", "add")
    assert take_checkpoint(store, "ann", checkpoints, min_events=4) is None
    _drive(store, driver, "add")
    assert take_checkpoint(store, "ann", checkpoints, min_events=4) == first + 4
    assert take_checkpoint(store, "ann", checkpoints, version=6, min_events=2) == 6
    assert take_checkpoint(store, "ann", checkpoints, version=7, min_events=2) is None


def test_a_checkpoint_stopped_between_pages_stores_nothing(
    store: EventStore, checkpoints: Checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, *["add"] * 6)
    monkeypatch.setattr(replay, "_PAGE", 2)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # two pages, then stop

    assert take_checkpoint(store, "ann", checkpoints, stop=stop) is None
    with store.engine.connect() as connection:
        assert checkpoints.versions(connection, _log_id("ann")) == []
    assert take_checkpoint(store, "ann", checkpoints, stop=lambda: False) == driver.log.version


def test_messages_requeued_after_a_checkpoint_come_back_to_the_buffer(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, "add", "add", "start", *["reject"] * 5)
    assert take_checkpoint(store, "ann", checkpoints) == driver.log.version
    assert state_at(store, "ann", checkpoints=checkpoints).buffer == []  # both quarantined
    _drive(store, driver, "requeue")
    replayed = state_at(store, "ann", checkpoints=checkpoints)
    assert len(replayed.buffer) == 2
    assert replayed == state_at(store, "ann")


def test_a_user_keeps_a_bounded_number_of_checkpoints_spread_over_the_log(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    driver = LogDriver("ann")
    taken = []
    for _ in range(3 * KEPT):
        _drive(store, driver, "add")
        version = take_checkpoint(store, "ann", checkpoints)
        assert version is not None
        taken.append(version)
    with store.engine.connect() as connection:
        kept = checkpoints.versions(connection, _log_id("ann"))
    assert len(kept) == KEPT
    assert kept[-1] == taken[-1], "the latest stays"
    gaps = [b - a for a, b in zip([0, *kept], kept, strict=False)]
    assert gaps == sorted(gaps, reverse=True), f"older points at a coarser grain: {kept}"
    assert max(gaps) <= 2 * taken[-1] / KEPT, f"spread over the whole log: {kept}"
    assert state_at(store, "ann", checkpoints=checkpoints) == state_at(store, "ann")


def test_no_checkpoint_is_stored_for_a_forgotten_log_and_forgetting_erases_them(
    store: EventStore, checkpoints: Checkpoints
) -> None:
    driver = LogDriver("ann")
    _drive(store, driver, "add", "add")
    assert take_checkpoint(store, "ann", checkpoints) is not None
    with store.transaction() as connection:
        store.forget(connection, "ann")
        erased = Projector(ProjectionTables()).forget(connection, _log_id("ann"))
    assert erased["checkpoints"] == 1
    with store.engine.connect() as connection:
        assert checkpoints.versions(connection, _log_id("ann")) == []
    assert take_checkpoint(store, "ann", checkpoints) is None


def test_no_checkpoint_is_stored_when_the_log_was_forgotten_and_written_again_meanwhile(
    store: EventStore, checkpoints: Checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold that read the first pages of the old log and the last of the new one must
    not be stored as a checkpoint of the new log, even when the new log is as long."""
    _drive(store, LogDriver("ann"), *["add"] * 6)
    monkeypatch.setattr(replay, "_PAGE", 2)
    asked: list[int] = []

    def forget_and_write_again() -> bool:
        asked.append(1)
        if len(asked) == 2:  # between the first page and the second
            with store.transaction() as connection:
                store.forget(connection, "ann")
                Projector(ProjectionTables()).forget(connection, _log_id("ann"))
            _drive(store, LogDriver("ann"), *["add"] * 8)
        return False

    assert take_checkpoint(store, "ann", checkpoints, stop=forget_and_write_again) is None
    with store.engine.connect() as connection:
        assert checkpoints.versions(connection, _log_id("ann")) == []
    assert state_at(store, "ann", checkpoints=checkpoints) == state_at(store, "ann")


def test_a_database_without_the_checkpoint_table_replays_from_nothing(tmp_path: Path) -> None:
    store = EventStore(sqlite_url(tmp_path / "bare.db"))
    try:
        driver = LogDriver("ann")
        _drive(store, driver, "add", "add")
        checkpoints = replay_checkpoints(ProjectionTables())
        assert state_at(store, "ann", checkpoints=checkpoints) == state_at(store, "ann")
    finally:
        store.close()
