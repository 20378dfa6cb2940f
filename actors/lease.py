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
from collections.abc import Iterable
from uuid import uuid4

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from events import user_log_id

__all__ = ["LeaseTable", "new_owner_id"]

log = logging.getLogger("memvee.actors")


def new_owner_id() -> str:
    """A name for this process that no other process shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


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
        self._dialect = engine.dialect.name

    def create(self, connection: Connection) -> None:
        """Create the lease table if it is missing (run it while writers are held off)."""
        self.metadata.create_all(connection)

    def _now(self, connection: Connection) -> float:
        if self._dialect == "postgresql":
            query = "SELECT extract(epoch FROM clock_timestamp())"
        else:
            query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
        return float(connection.execute(text(query)).scalar_one())

    def try_acquire(self, user_id: str) -> bool:
        """Take the user's lease if it is free, expired or already ours."""
        t = self.table
        insert = postgresql.insert(t) if self._dialect == "postgresql" else sqlite.insert(t)
        with self.engine.begin() as connection:
            now = self._now(connection)
            statement = insert.values(
                log_id=str(user_log_id(user_id)),
                user_id=user_id,
                owner=self.owner,
                expires_at=now + self.ttl,
            ).on_conflict_do_update(
                index_elements=["log_id"],
                set_={"owner": self.owner, "expires_at": now + self.ttl},
                where=(t.c.owner == self.owner) | (t.c.expires_at < now),
            )
            connection.execute(statement)
            holder = connection.execute(
                select(t.c.owner).where(t.c.log_id == str(user_log_id(user_id)))
            ).scalar()
        return holder == self.owner

    def renew(self, user_ids: Iterable[str]) -> set[str]:
        """Extend our leases on ``user_ids``; returns the users whose lease we lost."""
        wanted = {str(user_log_id(u)): u for u in user_ids}
        if not wanted:
            return set()
        t = self.table
        with self.engine.begin() as connection:
            now = self._now(connection)
            connection.execute(
                update(t)
                .where(t.c.owner == self.owner, t.c.log_id.in_(bindparam("ids", expanding=True)))
                .values(expires_at=now + self.ttl),
                {"ids": list(wanted)},
            )
            held = set(
                connection.execute(
                    select(t.c.log_id).where(
                        t.c.owner == self.owner,
                        t.c.log_id.in_(bindparam("ids", expanding=True)),
                    ),
                    {"ids": list(wanted)},
                ).scalars()
            )
        return {user for log_id, user in wanted.items() if log_id not in held}

    def release(self, user_id: str) -> None:
        """Give the user's lease up (if it is ours)."""
        t = self.table
        with self.engine.begin() as connection:
            connection.execute(
                delete(t).where(t.c.log_id == str(user_log_id(user_id)), t.c.owner == self.owner)
            )

    def forget(self, connection: Connection, user_id: str) -> int:
        """Delete the user's lease row, whoever holds it, in the caller's transaction."""
        t = self.table
        return connection.execute(delete(t).where(t.c.log_id == str(user_log_id(user_id)))).rowcount

    def release_all(self) -> None:
        """Give every lease of ours up (on close)."""
        t = self.table
        with self.engine.begin() as connection:
            connection.execute(delete(t).where(t.c.owner == self.owner))
