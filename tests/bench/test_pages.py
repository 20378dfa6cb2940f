"""The pages a commit writes, read off the write-ahead log and named by the table or index
whose b-tree holds each (counted, never timed)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from bench import pages


def _database(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    connection.execute("CREATE INDEX notes_by_body ON notes (body)")
    connection.execute("CREATE TABLE untouched (id INTEGER PRIMARY KEY)")
    return connection


def test_a_commit_is_traced_to_the_table_and_index_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    wal = Path(f"{path}-wal")
    with closing(_database(path)) as connection:
        before = pages.WalFrames.read(wal)
        connection.execute("INSERT INTO notes (body) VALUES ('one'), ('two')")
        written = pages.WalFrames.read(wal).since(before)
        found = pages.Breakdown()
        found.add(written, pages.page_owners(connection))

    assert dict(found.per_commit()) == {"notes": 1.0, "notes_by_body": 1.0}
    assert found.total() == 2.0


def test_a_log_that_started_over_counts_only_the_new_generations_frames(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.db"
    wal = Path(f"{path}-wal")
    with closing(_database(path)) as connection:
        for body in ("one", "two", "three"):
            connection.execute("INSERT INTO notes (body) VALUES (?)", (body,))
        before = pages.WalFrames.read(wal)
        connection.execute("PRAGMA wal_checkpoint(RESTART)")
        connection.execute("INSERT INTO notes (body) VALUES ('four')")
        written = pages.WalFrames.read(wal).since(before)
        owners = pages.page_owners(connection)

    assert len(before.pages) > 2
    assert sorted(owners[page] for page in written) == ["notes", "notes_by_body"]


def test_a_lone_exchange_is_broken_down_into_the_log_and_the_messages_pages(
    tmp_path: Path,
) -> None:
    found = pages.breakdown(tmp_path, 3, warmup=2)

    written = dict(found.per_commit())
    assert found.commits == 3
    assert written["memvee_events"] >= 1
    assert written["mv_messages"] >= 1
    assert found.total() == sum(written.values())
