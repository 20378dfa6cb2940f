"""The database refuses an event whose log lacks the version before it.

A log loads only if its versions follow one another. A write decided on a log that was
erased meanwhile (a user forgotten by another process, say) would otherwise land on the
erased log past a gap, and the log would never load again. With this trigger such an
insert fails as a constraint does, which the store reports as a conflict: the writer
reloads the log and decides again. The lookup is one probe of the unique index on
(originator_id, originator_version), made in the database's own code.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

__all__ = ["GAP_MESSAGE", "guard_sequence"]

GAP_MESSAGE = "memvee: the log has no version before this event"

_PG_LOCK = 0x6D76_5345  # one creator at a time when processes open a new database at once


def guard_sequence(engine: Engine, table: str) -> None:
    """Create the trigger on the events ``table`` if it is missing."""
    name = f"{table}_in_sequence"
    previous = (
        f"SELECT 1 FROM {table} WHERE originator_id = NEW.originator_id "
        "AND originator_version = NEW.originator_version - 1"
    )
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE INSERT ON {table} "
                f"WHEN NEW.originator_version > 1 AND NOT EXISTS ({previous}) "
                f"BEGIN SELECT RAISE(ABORT, '{GAP_MESSAGE}'); END"
            )
            return
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        found = connection.execute(
            text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass(:table)"),
            {"name": name, "table": table},
        ).first()
        if found:
            return
        connection.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF NEW.originator_version > 1 AND NOT EXISTS ({previous}) THEN "
            f"RAISE EXCEPTION '{GAP_MESSAGE}' USING ERRCODE = 'integrity_constraint_violation'; "
            "END IF; RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
