"""Rows held in memory while folding: what the sink is told to write is the net change
since the stored rows were loaded, and an indexed column finds the rows that have a value."""

from __future__ import annotations

from projections.rows import TableRows


def _buffer() -> TableRows:
    return TableRows(("message_id",), indexed=("task_id",))


def test_a_new_row_is_inserted_and_a_stored_one_changed_is_updated() -> None:
    rows = _buffer()
    rows.load([{"message_id": "m1", "task_id": None}])
    rows.update("m1", task_id="t1")
    rows.put({"message_id": "m2", "task_id": None})
    assert rows.changes() == (
        [{"message_id": "m2", "task_id": None}],
        [{"message_id": "m1", "task_id": "t1"}],
        [],
    )


def test_a_row_inserted_then_deleted_writes_nothing_and_a_stored_one_deleted_is_deleted() -> None:
    rows = _buffer()
    rows.load([{"message_id": "m1", "task_id": "t1"}])
    rows.put({"message_id": "m2", "task_id": "t1"})
    for key in rows.find("task_id", "t1"):
        rows.delete(key)
    assert rows.changes() == ([], [], ["m1"])


def test_a_stored_row_deleted_and_put_again_is_updated() -> None:
    rows = _buffer()
    rows.load([{"message_id": "m1", "task_id": None}])
    rows.delete("m1")
    rows.put({"message_id": "m1", "task_id": "t2"})
    assert rows.changes() == ([], [{"message_id": "m1", "task_id": "t2"}], [])


def test_changing_or_deleting_a_row_not_held_does_nothing() -> None:
    rows = _buffer()
    rows.update("m9", task_id="t1")
    rows.delete("m9")
    assert rows.changes() == ([], [], [])


def test_the_index_follows_the_rows_as_they_change() -> None:
    rows = _buffer()
    rows.load([{"message_id": "m1", "task_id": None}, {"message_id": "m2", "task_id": None}])
    rows.update("m1", task_id="t1")
    rows.update("m2", task_id="t1")
    rows.update("m1", task_id=None)
    assert rows.find("task_id", "t1") == ["m2"]
    assert rows.find("task_id", "t2") == []


def test_a_loaded_row_never_replaces_one_already_held() -> None:
    rows = _buffer()
    rows.load([{"message_id": "m1", "task_id": "t1"}])
    rows.update("m1", task_id=None)
    rows.load([{"message_id": "m1", "task_id": "t1"}])
    assert rows.get("m1") == {"message_id": "m1", "task_id": None}
    assert rows.find("task_id", "t1") == []


def test_rows_with_a_key_of_several_columns() -> None:
    citations = TableRows(("message_id", "entry_id"))
    citations.put({"message_id": "m1", "entry_id": "e1", "log_id": "l"})
    citations.put({"message_id": "m1", "entry_id": "e2", "log_id": "l"})
    inserted, updated, deleted = citations.changes()
    assert [(r["message_id"], r["entry_id"]) for r in inserted] == [("m1", "e1"), ("m1", "e2")]
    assert updated == deleted == []
    assert citations.get(("m1", "e2")) is not None


def test_a_change_names_only_the_columns_whose_value_differs() -> None:
    """The sink sets only those, so indexes over the other columns are not rewritten."""
    users = TableRows(("log_id",))
    users.load([{"log_id": "l", "user_id": "ann", "version": 3, "count": 1}])
    users.load([{"log_id": "k", "user_id": "bob", "version": 5, "count": 2}])
    stored = users.get("l")
    assert stored is not None
    users.put({**stored, "version": 4})
    users.update("k", version=5, count=2)
    assert users.changes() == ([], [{"log_id": "l", "version": 4}], [])


def test_one_change_given_to_many_rows_changes_each_and_is_left_as_it_was() -> None:
    rows = _buffer()
    rows.load([{"message_id": m, "task_id": None} for m in ("m1", "m2", "m3")])
    held = {"task_id": "t1"}
    for key in ("m1", "m3"):
        rows.change(key, held)
    assert held == {"task_id": "t1"}
    assert rows.find("task_id", "t1") == ["m1", "m3"]
    assert rows.changes()[1] == [
        {"message_id": "m1", "task_id": "t1"},
        {"message_id": "m3", "task_id": "t1"},
    ]


def test_a_row_keeps_its_place_in_an_index_whose_column_a_change_leaves_alone() -> None:
    rows = TableRows(("message_id",), indexed=("task_id", "log_id"))
    rows.load([{"message_id": m, "task_id": None, "log_id": "a"} for m in ("m1", "m2")])
    rows.change("m1", {"task_id": "t1"})
    assert rows.find("log_id", "a") == ["m1", "m2"]
    assert rows.find("task_id", "t1") == ["m1"]


def test_with_nothing_loaded_the_rows_held_are_inserts_and_those_deleted_are_not_written() -> None:
    rows = _buffer()
    rows.put({"message_id": "m1", "task_id": "t1"})
    rows.put({"message_id": "m2", "task_id": None})
    rows.delete("m1")
    assert rows.changes() == ([{"message_id": "m2", "task_id": None}], [], [])


def test_a_change_of_a_row_with_a_one_column_key_names_its_key_and_what_changed() -> None:
    rows = TableRows(("message_id",))
    rows.load([{"message_id": "m1", "task_id": None, "seq": 1}])
    rows.update("m1", task_id="t1")
    assert rows.changes() == ([], [{"message_id": "m1", "task_id": "t1"}], [])
