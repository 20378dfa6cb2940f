"""Remembered rows: the live fold reuses a row it committed only while that row is still
the stored one; a failed write, a write by another process or an erasure costs a read,
never a wrong row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from events import EventStore, UserLog, user_log_id
from projections import ProjectionTables, Projector, dump, verify
from projections.folds import PROJECTIONS
from projections.remembered import RememberedRows
from projections.rows import TableRows


class _Event:
    def __init__(self, version: int) -> None:
        self.originator_version = version


def _current(row: dict[str, Any], e: Any) -> bool:
    return bool(row["version"] == e.originator_version - 1)


def _written(*rows: dict[str, Any]) -> TableRows:
    table = TableRows(("key",))
    for row in rows:
        table.put(row)
    return table


def test_a_row_is_recalled_once_committed_and_only_while_current() -> None:
    memory = RememberedRows(_current, limit=10)
    memory.stage(_written({"key": "a", "version": 3}))
    assert memory.recall({"a": _Event(4)}) == ([], ["a"]), "staged, not yet committed"
    memory.commit()
    assert memory.recall({"a": _Event(4)}) == ([{"key": "a", "version": 3}], [])
    assert memory.recall({"a": _Event(6)}) == ([], ["a"]), "another writer moved it on"
    recalled, _ = memory.recall({"a": _Event(4)})
    recalled[0]["version"] = 99
    assert memory.recall({"a": _Event(4)})[0] == [{"key": "a", "version": 3}], "a copy"


def test_a_discarded_write_and_a_deleted_row_are_not_remembered() -> None:
    memory = RememberedRows(_current, limit=10)
    memory.stage(_written({"key": "a", "version": 1}))
    memory.commit()
    memory.stage(_written({"key": "a", "version": 2}))
    memory.discard()
    assert memory.recall({"a": _Event(3)}) == ([], ["a"])
    assert memory.recall({"a": _Event(2)})[0] == [{"key": "a", "version": 1}]
    deleted = _written({"key": "a", "version": 2})
    deleted.delete("a")
    memory.stage(deleted)
    memory.commit()
    assert memory.recall({"a": _Event(2)}) == ([], ["a"])


def test_the_least_recently_written_rows_go_beyond_the_limit() -> None:
    memory = RememberedRows(_current, limit=2)
    for key in ("a", "b", "c"):
        memory.stage(_written({"key": key, "version": 1}))
        memory.commit()
    memory.stage(_written({"key": "b", "version": 2}))
    memory.commit()
    memory.stage(_written({"key": "d", "version": 1}))
    memory.commit()
    first = {k: _Event(2) for k in "acd"} | {"b": _Event(3)}
    found, missing = memory.recall(first)
    assert sorted(r["key"] for r in found) == ["b", "d"]
    assert sorted(missing) == ["a", "c"]


def test_only_the_users_row_is_remembered() -> None:
    assert [p.table for p in PROJECTIONS if p.current is not None] == ["users"]


def _append(store: EventStore, projector: Projector, log: UserLog, messages: int) -> None:
    for n in range(messages):
        log.add_message("user", f"message {n}", None, 1000)
    store.append([log.collect_events()], projector.apply)
    projector.committed()


def _users_row(store: EventStore, user: str) -> tuple[Any, ...]:
    rows = dump(store.engine, ProjectionTables())["users"]
    return next(r for r in rows if r[1] == user)


def test_a_failed_write_leaves_the_next_fold_reading_the_stored_row(store: EventStore) -> None:
    live = Projector(ProjectionTables(), remember=10)
    log = UserLog.register("ann")
    _append(store, live, log, 2)

    def fail_after_folding(connection: Any, recorded: Any) -> None:
        live.apply(connection, recorded)
        raise RuntimeError("disk full")

    log.add_message("user", "lost", None, 1000)
    with pytest.raises(Exception, match="disk full"):
        store.append([log.collect_events()], fail_after_folding)
    live.discard()
    log = store.load("ann")
    assert log is not None
    _append(store, live, log, 1)
    assert _users_row(store, "ann")[3] == 3, "three messages stored"
    assert verify(store) == []


def test_a_row_another_process_moved_on_is_read_back(store: EventStore) -> None:
    ours, theirs = (Projector(ProjectionTables(), remember=10) for _ in range(2))
    _append(store, ours, UserLog.register("ann"), 2)
    elsewhere = store.load("ann")
    assert elsewhere is not None
    _append(store, theirs, elsewhere, 3)
    here = store.load("ann")
    assert here is not None
    _append(store, ours, here, 1)
    assert _users_row(store, "ann")[3] == 6
    assert verify(store) == []


def test_an_erased_user_registered_again_starts_a_fresh_row(store: EventStore) -> None:
    live = Projector(ProjectionTables(), remember=10)
    _append(store, live, UserLog.register("ann"), 0)
    other = Projector(ProjectionTables())  # another process erases ann's rows and log
    with store.transaction() as connection:
        other.forget(connection, str(user_log_id("ann")))
        connection.execute(text("DELETE FROM memvee_events"))
    _append(store, live, UserLog.register("ann"), 1)
    assert _users_row(store, "ann")[3] == 1
    assert verify(store) == []
