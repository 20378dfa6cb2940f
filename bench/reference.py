"""Physical references: what raw sqlite3 does on the same file system, in the same run.

Every engine figure is printed beside one of these, because absolute numbers on a shared
machine mean little: a committed transaction of the same rows, with the same journal
(WAL) and synchronous setting, is the floor the engine's durability costs cannot go under.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.common import percentile
from events.user_log import new_message_id

__all__ = [
    "MESSAGE_ADDED_TOPIC",
    "RawCommits",
    "Shape",
    "Synchronous",
    "open_reader",
    "raw_commits",
    "raw_read_log",
]

Synchronous = Literal["FULL", "NORMAL"]

MESSAGE_ADDED_TOPIC = "MessageAdded"
"""The topic the engine stores with each message, so the raw rows have the same size."""

_STORED_EVENT_BYTES = 217
"""About the size of one stored MessageAdded state (a short message) in the engine."""

_EVENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS memvee_events ("
    " id INTEGER NOT NULL, originator_id BINARY(16) NOT NULL,"
    " originator_version INTEGER NOT NULL, topic TEXT NOT NULL, state BLOB NOT NULL,"
    " PRIMARY KEY (id))",
    "CREATE UNIQUE INDEX IF NOT EXISTS memvee_events_aggregate_idx"
    " ON memvee_events (originator_id, originator_version)",
)
"""The stored-events table exactly as eventsourcing-sqlalchemy creates it."""

_PROJECTION_DDL = (
    "CREATE TABLE IF NOT EXISTS mv_messages (id INTEGER NOT NULL,"
    " message_id VARCHAR(36) NOT NULL, log_id VARCHAR(36) NOT NULL, seq INTEGER NOT NULL,"
    " version INTEGER NOT NULL, role VARCHAR(16) NOT NULL, content TEXT NOT NULL,"
    " sent_at BIGINT NOT NULL, name VARCHAR(100), buffered INTEGER NOT NULL,"
    " task_id VARCHAR(64), quarantined INTEGER NOT NULL, PRIMARY KEY (id), UNIQUE (message_id))",
    "CREATE UNIQUE INDEX IF NOT EXISTS mv_messages_by_seq ON mv_messages (log_id, seq)",
    "CREATE INDEX IF NOT EXISTS mv_messages_buffered ON mv_messages (log_id, seq)"
    " WHERE buffered = 1",
    "CREATE INDEX IF NOT EXISTS mv_messages_by_task ON mv_messages (task_id)"
    " WHERE task_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS mv_users ("
    " log_id VARCHAR(36) NOT NULL, user_id VARCHAR(256) NOT NULL, version INTEGER NOT NULL,"
    " message_count INTEGER NOT NULL, buffered_count INTEGER NOT NULL,"
    " updated_at BIGINT NOT NULL, PRIMARY KEY (log_id), UNIQUE (user_id))",
    "CREATE TABLE IF NOT EXISTS mv_position ("
    " name VARCHAR(32) NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (name))",
)
"""The projection tables an appended message touches, shaped like the engine's (on
SQLite its ids are 16 bytes and its times integers, see :mod:`projections.columns`)."""

Shape = Literal["events", "engine"]
"""``events``: only the stored-event rows. ``engine``: also the projection rows the engine
writes in the same transaction (a message row per message, the user's counters, the
projection position), i.e. the engine's own transaction in raw sqlite3."""


@dataclass(frozen=True, slots=True)
class RawCommits:
    """The outcome of a run of committed raw transactions."""

    transactions: int
    rows_per_transaction: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Committed transactions per second."""
        return self.transactions / self.seconds

    @property
    def p50_ms(self) -> float:
        """Median latency of one committed transaction, in ms."""
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        """99th percentile latency of one committed transaction, in ms."""
        return percentile(self.latencies, 99) * 1000


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"could not turn on WAL for {path}: journal_mode={mode}")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    return connection


def raw_commits(
    folder: Path,
    *,
    synchronous: Synchronous,
    rows: int,
    transactions: int,
    shape: Shape = "events",
    warmup: int = 50,
) -> RawCommits:
    """Commit ``transactions`` transactions of ``rows`` messages each.

    The event rows are the same shape and size as the engine's MessageAdded events (one
    aggregate, consecutive versions), in a fresh database file in ``folder``; with
    ``shape="engine"`` each transaction also writes the engine's projection rows.
    """
    path = folder / f"raw-{synchronous.lower()}-{rows}-{shape}.db"
    connection = _connect(path, synchronous)
    try:
        for statement in _EVENTS_DDL + (_PROJECTION_DDL if shape == "engine" else ()):
            connection.execute(statement)
        log_id = uuid.uuid4()
        originator = log_id.bytes
        if shape == "engine":
            connection.execute(
                "INSERT INTO mv_users VALUES (?, 'raw-user', 0, 0, 0, 0)",
                (originator,),
            )
            connection.execute("INSERT INTO mv_position VALUES ('projections', 0)")
        state = os.urandom(_STORED_EVENT_BYTES)
        insert = (
            "INSERT INTO memvee_events (originator_id, originator_version, topic, state)"
            " VALUES (?, ?, ?, ?)"
        )
        message = (
            "INSERT INTO mv_messages VALUES (NULL, ?, ?, ?, ?, 'user', ?, ?, NULL, 1, NULL, 0)"
        )
        users = (
            "UPDATE mv_users SET version = ?, message_count = message_count + ?,"
            " buffered_count = buffered_count + ?, updated_at = ? WHERE log_id = ?"
        )
        position = "UPDATE mv_position SET position = ? WHERE name = 'projections'"
        content = "I live in Lisbon and I work at a small bakery near the river."
        version = 0
        latencies: list[float] = []
        clock = time.perf_counter
        started = 0.0
        for i in range(warmup + transactions):
            if i == warmup:
                started = clock()
            before = clock()
            connection.execute("BEGIN")
            for _ in range(rows):
                version += 1
                connection.execute(insert, (originator, version, MESSAGE_ADDED_TOPIC, state))
            if shape == "engine":
                now = time.time_ns() // 1000
                for k in range(rows):
                    connection.execute(
                        message,
                        (
                            uuid.UUID(new_message_id()).bytes,
                            originator,
                            version - k,
                            version - k,
                            content,
                            now,
                        ),
                    )
                connection.execute(users, (version, rows, rows, now, originator))
                connection.execute(position, (version,))
            connection.execute("COMMIT")
            if i >= warmup:
                latencies.append(clock() - before)
        seconds = clock() - started
    finally:
        connection.close()
    return RawCommits(transactions, rows, seconds, latencies)


def open_reader(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection for :func:`raw_read_log` (kept open, like a pool's)."""
    return sqlite3.connect(path, check_same_thread=False)


def raw_read_log(
    connection: sqlite3.Connection, originator_id: uuid.UUID, *, use_snapshot: bool
) -> int:
    """Read one log the way the repository does, without decoding: returns the rows read.

    With ``use_snapshot`` it reads the latest snapshot row and the events after it; else
    every event of the log. This is the floor for :meth:`events.EventStore.load`.
    """
    key = originator_id.bytes
    after = 0
    rows = 0
    if use_snapshot:
        snapshot = connection.execute(
            "SELECT originator_version, topic, state FROM memvee_snapshots"
            " WHERE originator_id = ? ORDER BY originator_version DESC LIMIT 1",
            (key,),
        ).fetchone()
        if snapshot is not None:
            after = int(snapshot[0])
            rows += 1
    events = connection.execute(
        "SELECT originator_version, topic, state FROM memvee_events"
        " WHERE originator_id = ? AND originator_version > ? ORDER BY originator_version",
        (key, after),
    ).fetchall()
    return rows + len(events)
