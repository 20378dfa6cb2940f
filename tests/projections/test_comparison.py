"""Comparing two listings of a table, streamed in key order: what verify reports."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from events import StorageError
from projections.comparison import Difference, Listing, Row, differences, sortable


def listing(*rows: Row, key_width: int = 1) -> Listing:
    """A listing of ``rows`` (already in key order), keyed by their first columns."""
    return Listing("t", [(tuple(sortable(v) for v in row[:key_width]), row) for row in rows])


def test_equal_listings_differ_in_nothing() -> None:
    rows = [("a", 1), ("b", 2)]

    assert list(differences(listing(*rows), listing(*rows))) == []


def test_a_row_on_one_side_only_and_a_changed_row() -> None:
    live = listing(("a", 1), ("b", 2), ("d", 4))
    rebuilt = listing(("a", 1), ("b", 20), ("c", 3))

    assert list(differences(live, rebuilt)) == [
        Difference("t", ("b", 2), ("b", 20)),
        Difference("t", None, ("c", 3)),
        Difference("t", ("d", 4), None),
    ]


def test_the_rows_of_one_key_are_compared_as_a_multiset() -> None:
    live = listing(("a", "x"), ("a", "y"), ("a", "y"))
    rebuilt = listing(("a", "y"), ("a", "x"))

    assert list(differences(live, rebuilt)) == [Difference("t", ("a", "y"), None)]


def test_a_key_of_two_columns_tells_rows_apart_by_both() -> None:
    live = listing(("m1", "e1"), ("m1", "e2"), key_width=2)
    rebuilt = listing(("m1", "e2"), key_width=2)

    assert list(differences(live, rebuilt)) == [Difference("t", ("m1", "e1"), None)]


def test_rows_out_of_key_order_are_refused_not_misread() -> None:
    live = listing(("b", 1), ("a", 1))

    with pytest.raises(StorageError, match="out of key order"):
        list(differences(live, listing(("a", 1), ("b", 1))))


def test_stored_values_sort_as_sqlite_sorts_them() -> None:
    values: list[object] = [b"\x00\x01", "zz", None, 7, "a", b"\xff", 2.5, "\u00e9"]
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (v)")
        connection.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
        ordered = [row[0] for row in connection.execute("SELECT v FROM t ORDER BY v")]

    assert sorted(values, key=sortable) == ordered


def test_both_sides_are_read_in_step_never_whole() -> None:
    read = {"live": 0, "rebuilt": 0}
    apart = []

    def rows(side: str) -> Iterator[tuple[Row, Row]]:
        for n in range(1000):
            read[side] += 1
            apart.append(abs(read["live"] - read["rebuilt"]))
            yield (sortable(n),), (n,)

    assert list(differences(Listing("t", rows("live")), Listing("t", rows("rebuilt")))) == []
    assert read == {"live": 1000, "rebuilt": 1000}
    assert max(apart) <= 2
