"""SQLite never numbers a new event with the id of an erased one.

The events table's ``id INTEGER PRIMARY KEY`` is SQLite's rowid: a new row gets the
highest id kept plus one, so an erasure that deleted the last events would have the next
writes numbered as they were. Every reader that keeps a position in the log (a rebuild's
or a catch-up's fold, a follower of the notifications) would then pass over the new events
as already read. PostgreSQL's sequence never gives a number twice; on SQLite an erasure
that lowers the highest id records the one it deleted (:func:`keep_erased_ids_unused`),
and the next insert, of any writer, numbers its rows after it: a trigger puts a stand-in
row at that id just before the insert's first row is numbered, and takes it out, with the
record, as soon as that row is in. The stand-in never outlives the statement, so no reader
ever sees it. The table's layout is unchanged, and a database that never had an erasure
gets neither the record's table nor the triggers.

Once a row is numbered after the record, SQLite's own numbering (the highest id plus one)
passes it as well, and the triggers only cost every insert their ``WHEN`` check: the
writer takes them and the record away (:func:`drop_passed_guard`) in the transaction of
its first insert after it opened or erased, or after the file's data version told it that
another connection committed (read by a write checking its logs' origins anyway),
holding the write lock, so no other connection is erasing meanwhile, and the next erasure
that lowers the highest id makes them again. The drop is optional cleanup, made under a
savepoint: its failure is logged and the write goes on, the guard whole.
"""

from __future__ import annotations

import logging
import sqlite3

from sqlalchemy import Connection

__all__ = ["drop_passed_guard", "keep_erased_ids_unused"]

log = logging.getLogger("memvee.events")

_STAND_IN = "x'" + "00" * 16 + "'"
"""The stand-in row's log id: no user's (theirs are uuid5 of their name), at version 0,
which no event has (a log begins at 1), so neither the unique index nor the sequence
guard (:mod:`events._sequence`) ever meets it."""


def keep_erased_ids_unused(connection: Connection, table: str, highest: int) -> None:
    """In the caller's erasure transaction on SQLite: if the erasure deleted the events
    table's highest ids, ``highest`` being the highest before it, have the next insert
    number its rows after ``highest`` (the table and triggers made if missing)."""
    kept = connection.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table}").scalar_one()
    if kept >= highest:
        return
    record = _record(table)
    connection.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {record} (id INTEGER NOT NULL)")
    connection.exec_driver_sql(
        f"CREATE TRIGGER IF NOT EXISTS {table}_after_erased BEFORE INSERT ON {table} "
        f"WHEN NEW.originator_version > 0 AND EXISTS (SELECT 1 FROM {record} WHERE id > 0) "
        f"BEGIN UPDATE {record} SET id = -id; "
        f"INSERT INTO {table} (id, originator_id, originator_version, topic, state) "
        f"SELECT upto, {_STAND_IN}, 0, '', x'' FROM (SELECT -min(id) AS upto FROM {record}) "
        f"WHERE upto > (SELECT coalesce(max(id), 0) FROM {table}); END"
    )
    connection.exec_driver_sql(
        f"CREATE TRIGGER IF NOT EXISTS {table}_stand_in_out AFTER INSERT ON {table} "
        f"WHEN NEW.originator_version > 0 AND EXISTS (SELECT 1 FROM {record}) "
        f"BEGIN DELETE FROM {table} WHERE originator_id = {_STAND_IN} "
        f"AND originator_version = 0; DELETE FROM {record}; END"
    )
    # Two erasures with no write between: the record keeps the higher end.
    connection.exec_driver_sql(f"DELETE FROM {record} WHERE abs(id) < ?", (highest,))
    connection.exec_driver_sql(
        f"INSERT INTO {record} SELECT ? WHERE NOT EXISTS (SELECT 1 FROM {record})", (highest,)
    )


def _record(table: str) -> str:
    """The table holding the highest erased id of ``table`` not yet passed."""
    return f"{table}_erased_upto"


def _guard_parts(driver: sqlite3.Connection, table: str) -> set[str]:
    """The names of the record of ``table``'s erased ids and of its triggers the file
    holds: a writer that opens on a file another process erased in checks at its first
    insert."""
    names = (_record(table), *_triggers(table))
    found = driver.execute(
        "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?)", names
    ).fetchall()
    return {name for (name,) in found}


def _triggers(table: str) -> tuple[str, str]:
    """The triggers that number ``table``'s next insert past its record of erased ids."""
    return f"{table}_after_erased", f"{table}_stand_in_out"


def drop_passed_guard(driver: sqlite3.Connection, table: str) -> bool:
    """In a transaction holding SQLite's write lock (right after an insert): drop the
    record of ``table``'s erased ids and its two triggers if a row is numbered past every
    erased id (the record is empty, or none above the highest id is left), or if a trigger
    is missing (the record then guards nothing); returns whether the writer should look
    for it again at its next insert: True while it stands waiting for ids to pass, False
    once it is dropped or absent, and False too after a failed drop, though the guard
    then still stands.

    Dropping it is cleanup the write does not need: it runs under a savepoint, and a
    failure (a full disk, a busy schema) is rolled back to it and logged, the guard left
    whole (ids are still never given again) and the write going on. The writer stops
    looking after such a failure, rather than failing again and logging at every insert;
    a store looks again once it erases or another connection commits (data_version)."""
    parts = _guard_parts(driver, table)
    record = _record(table)
    if record not in parts:
        return False
    whole = parts == {record, *_triggers(table)}
    if whole:
        waiting = driver.execute(
            f"SELECT 1 FROM {record} WHERE abs(id) > (SELECT coalesce(max(id), 0) FROM {table})"
        ).fetchone()
        if waiting is not None:
            return True
    driver.execute("SAVEPOINT drop_passed_guard")
    try:
        for trigger in _triggers(table):
            driver.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        driver.execute(f"DROP TABLE {record}")
    except sqlite3.Error as error:
        driver.execute("ROLLBACK TO drop_passed_guard")
        driver.execute("RELEASE drop_passed_guard")
        log.warning(
            "the guard keeping the erased ids of %s unused could not be dropped (%s: %s); "
            "it stays, costing each insert its check, until a later write looks again",
            table,
            type(error).__name__,
            error,
        )
        return False
    driver.execute("RELEASE drop_passed_guard")
    return False
