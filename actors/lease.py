"""User leases: one owner process per user, agreed through the shared database.

A process hosts a user's *owning* actor (the one that processes) only while it holds that
user's lease row. Leases expire unless renewed, so when an owner dies another process
takes the user over after ``ttl`` seconds. Expiry is judged by the database's clock,
never by the processes' clocks.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from uuid import uuid4

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from events import user_log_id

__all__ = ["LeaseTable", "database_now", "new_owner_id", "unexpired_leases"]

log = logging.getLogger("memvee.actors")


def new_owner_id() -> str:
    """A name for this process that no other process shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


def database_now(connection: Connection) -> float:
    """The database's clock, in seconds since the epoch: what a lease's expiry is read by."""
    if connection.dialect.name == "postgresql":
        query = "SELECT extract(epoch FROM clock_timestamp())"
    else:
        query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    return float(connection.execute(text(query)).scalar_one())


def unexpired_leases(connection: Connection, prefix: str = "mv_") -> int:
    """How many lease rows have not expired (none where the table is missing): while one
    has not, its owner may be running."""
    table = f"{prefix}leases"
    if not inspect(connection).has_table(table):
        return 0
    now = database_now(connection)
    count = text(f"SELECT count(*) FROM {table} WHERE expires_at > :now")
    return int(connection.execute(count, {"now": now}).scalar_one())


class LeaseTable:
    """Acquires, renews and releases user leases for one owner."""

    def __init__(self, engine: Engine, owner: str, ttl: float, prefix: str = "mv_") -> None:
        self.engine = engine
        self.owner = owner
        self.ttl = ttl
        self.metadata = MetaData()
        self.table = Table(
            f"{prefix}leases",
            self.metadata,
            Column("log_id", String(36), primary_key=True),
            Column("user_id", String(256), nullable=False),
            Column("owner", String(128), nullable=False),
            Column("expires_at", Float, nullable=False),
        )
        forgotten = self.table.c.user_id == literal_column("''")
        self._forgotten = forgotten
        self._forgotten_index = Index(
            f"{prefix}leases_forgotten_users",
            self.table.c.user_id,
            postgresql_where=forgotten,
            sqlite_where=forgotten,
        )
        self._dialect = engine.dialect.name
        self._renewed: dict[str, float] = {}  # user -> time.monotonic() a renewal began

    def fresh(self, user_id: str) -> bool:
        """Whether our lease on the user was taken or renewed less than ``ttl / 2`` ago by
        this process's clock, so it cannot have expired yet (no database read)."""
        began = self._renewed.get(user_id)
        return began is not None and time.monotonic() - began < self.ttl / 2

    def held(self, user_id: str) -> bool:
        """Whether we hold the user's lease: :meth:`fresh`, or else asked of the database
        (taking the lease again if it expired and nobody took it). A process that was
        stopped or cut off past its lease learns here that another took the user over."""
        return self.fresh(user_id) or self.try_acquire(user_id)

    def create(self, connection: Connection) -> None:
        """Create the lease table and its index of forgotten users' rows if missing (run
        it while writers are held off), and delete the expired rows of forgotten users
        (see :meth:`forget`). The index keys a column no renewal changes, so a renewal
        stays an in-place (HOT) update on PostgreSQL."""
        self.metadata.create_all(connection)
        self._forgotten_index.create(connection, checkfirst=True)  # a table of an older memvee
        self._sweep_forgotten(connection, database_now(connection))

    def _sweep_forgotten(self, connection: Connection, now: float) -> None:
        """Delete the expired lease rows :meth:`forget` kept for a live owner (their user
        blanked): an owner that died before letting the user go would leave the row, and
        its ``log_id`` tells whoever knows a user id that the user was here. Read off the
        partial index of those rows (the blank is written in the statement, so a plan
        made for any parameters still matches the index): every renewal runs it, and a
        scan of the whole table took 19 ms at 200,000 leases."""
        t = self.table
        connection.execute(delete(t).where(self._forgotten, t.c.expires_at < now))

    def try_acquire(self, user_id: str) -> bool:
        """Take the user's lease if it is free, expired or already ours."""
        t = self.table
        began = time.monotonic()
        insert = postgresql.insert(t) if self._dialect == "postgresql" else sqlite.insert(t)
        with self.engine.begin() as connection:
            now = database_now(connection)
            statement = insert.values(
                log_id=str(user_log_id(user_id)),
                user_id=user_id,
                owner=self.owner,
                expires_at=now + self.ttl,
            ).on_conflict_do_update(
                index_elements=["log_id"],
                set_={"user_id": user_id, "owner": self.owner, "expires_at": now + self.ttl},
                where=(t.c.owner == self.owner) | (t.c.expires_at < now),
            )
            connection.execute(statement)
            holder = connection.execute(
                select(t.c.owner).where(t.c.log_id == str(user_log_id(user_id)))
            ).scalar()
        if holder != self.owner:
            self._renewed.pop(user_id, None)
            return False
        self._renewed[user_id] = began
        return True

    def renew(self, user_ids: Iterable[str]) -> set[str]:
        """Extend our leases on ``user_ids``; returns the users whose lease we lost."""
        wanted = {str(user_log_id(u)): u for u in user_ids}
        if not wanted:
            return set()
        t = self.table
        began = time.monotonic()
        with self.engine.begin() as connection:
            now = database_now(connection)
            connection.execute(
                update(t)
                .where(t.c.owner == self.owner, t.c.log_id.in_(bindparam("ids", expanding=True)))
                .values(expires_at=now + self.ttl),
                {"ids": list(wanted)},
            )
            self._sweep_forgotten(connection, now)
            held = set(
                connection.execute(
                    select(t.c.log_id).where(
                        t.c.owner == self.owner,
                        t.c.log_id.in_(bindparam("ids", expanding=True)),
                    ),
                    {"ids": list(wanted)},
                ).scalars()
            )
        lost = set()
        for log_id, user in wanted.items():
            if log_id in held:
                self._renewed[user] = began
            else:
                self._renewed.pop(user, None)
                lost.add(user)
        return lost

    def vacant(self, user_ids: Iterable[str]) -> list[str]:
        """Those of ``user_ids`` no other process holds: their lease is free, expired (by
        the database's clock) or ours."""
        wanted = {str(user_log_id(u)): u for u in user_ids}
        if not wanted:
            return []
        t = self.table
        with self.engine.connect() as connection:
            now = database_now(connection)
            held = set(
                connection.execute(
                    select(t.c.log_id).where(
                        t.c.log_id.in_(bindparam("ids", expanding=True)),
                        t.c.owner != self.owner,
                        t.c.expires_at >= now,
                    ),
                    {"ids": list(wanted)},
                ).scalars()
            )
        return [user for log_id, user in wanted.items() if log_id not in held]

    def release(self, user_id: str) -> None:
        """Give the user's lease up (if it is ours)."""
        t = self.table
        self._renewed.pop(user_id, None)
        with self.engine.begin() as connection:
            connection.execute(
                delete(t).where(t.c.log_id == str(user_log_id(user_id)), t.c.owner == self.owner)
            )

    def forget(self, connection: Connection, user_id: str) -> int:
        """Erase the user's lease row in the caller's transaction; returns the rows deleted.

        Ours, or an expired one, is deleted. One another process holds (unexpired, by the
        database's clock) stays, with the user's name blanked: that process is alive and
        trusts its lease for ``ttl / 2`` without a read, so deleting the row would let a
        third process take the user over under a task it starts on the new log. The owner
        deletes it when it lets the user go; if it dies first, the next renewal or open of
        any process deletes it once it expired.
        """
        t = self.table
        self._renewed.pop(user_id, None)
        log_id = str(user_log_id(user_id))
        now = database_now(connection)
        deleted = connection.execute(
            delete(t).where(
                t.c.log_id == log_id, (t.c.owner == self.owner) | (t.c.expires_at < now)
            )
        ).rowcount
        connection.execute(update(t).where(t.c.log_id == log_id).values(user_id=""))
        return deleted

    def release_all(self) -> None:
        """Give every lease of ours up (on close)."""
        t = self.table
        self._renewed.clear()
        with self.engine.begin() as connection:
            connection.execute(delete(t).where(t.c.owner == self.owner))
