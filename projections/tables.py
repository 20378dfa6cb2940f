"""The SQL tables the projections fold the log into, under one name prefix.

A prefix lets a rebuild write a scratch copy beside the live tables and compare them.
Rows are keyed by the log id (derived from the user id), so events need not repeat it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    literal_column,
    text,
)

from events import MAX_EXTRACTOR_CHARS, MAX_MODEL_CHARS
from projections.collation import code_point_text
from projections.columns import StoredId, StoredTime

__all__ = ["LIVE_PREFIX", "UNFOLDED", "ProjectionTables", "folded_columns"]

LIVE_PREFIX = "mv_"
"""The prefix of the live projection tables."""

UNFOLDED = "unfolded"
"""The ``info`` key that marks a column the database fills, not a fold: a message's
number, which SQLite's full-text index uses as the message's row id. A rebuild may number
differently."""


def folded_columns(table: Table) -> list[Column[Any]]:
    """The columns of ``table`` that the folds write and compare (all but unfolded ones)."""
    return [c for c in table.columns if not c.info.get(UNFOLDED)]


class ProjectionTables:
    """The messages, quarantine, tasks, usage, knowledge, citations, users and position
    tables under ``prefix``.

    The buffer is the messages with ``buffered`` set, each with the task that holds it
    (if any); a message stays buffered while quarantined (``quarantined`` is 1 then), so
    that a requeue only flips it back, and the quarantine table holds why. A partial
    index keeps the buffer's lookups to the buffered messages. Knowledge rows keep their
    history: ``valid_until`` is set when a later entry supersedes one (``superseded_by``)
    or the user says it stopped being true. Usage rows are the tokens each extraction
    spent, one row per event that spent any. A message's ``id`` numbers it for the
    full-text index (SQLite gives it at insert). Checkpoints hold a user's replayed state
    every so many events (see :mod:`projections.checkpoints`). Unreadable holds each log
    a fold met an event of that cannot be read: that log is left unfolded (no row of it
    elsewhere), its user's reads and writes refused, every other log folded on.
    """

    def __init__(self, prefix: str = LIVE_PREFIX) -> None:
        self.prefix = prefix
        self.metadata = MetaData()
        self.quarantine = Table(
            f"{prefix}quarantine",
            self.metadata,
            Column("message_id", StoredId(), primary_key=True),
            Column("log_id", StoredId(), nullable=False, index=True),
            Column("task_id", String(64), nullable=False),
            Column("error", Text, nullable=False),
            Column("attempts", Integer, nullable=False),
            Column("quarantined_at", StoredTime(), nullable=False),
            Column("version", Integer, nullable=False),
        )
        self.tasks = Table(
            f"{prefix}tasks",
            self.metadata,
            Column("task_id", String(64), primary_key=True),
            Column("log_id", StoredId(), nullable=False, index=True),
            Column("trigger", String(16), nullable=False),
            Column("status", String(16), nullable=False, index=True),
            Column("message_count", Integer, nullable=False),
            Column("batches", Integer, nullable=False),
            Column("knowledge_count", Integer, nullable=False),
            Column("error", Text, nullable=True),
            Column("requested_at", StoredTime(), nullable=False),
            Column("started_at", StoredTime(), nullable=True),
            Column("finished_at", StoredTime(), nullable=True),
            Column("requested_version", Integer, nullable=False),
            Column("finished_version", Integer, nullable=True),
            Column("extractor", String(MAX_EXTRACTOR_CHARS), nullable=True),
            Column("model", String(MAX_MODEL_CHARS), nullable=True),
            # A user's latest ended task is read off its end, with no walk of every task
            # the user ever ran (a reopen reads it for each user with messages waiting).
            Index(f"{prefix}tasks_by_end", "log_id", "finished_version"),
        )
        self.usage = Table(
            f"{prefix}usage",
            self.metadata,
            Column("usage_id", String(48), primary_key=True),
            Column("log_id", StoredId(), nullable=False, index=True),
            Column("kind", String(16), nullable=False),
            Column("extractor", String(MAX_EXTRACTOR_CHARS), nullable=True),
            Column("model", String(MAX_MODEL_CHARS), nullable=True),
            Column("input_tokens", Integer, nullable=False),
            Column("output_tokens", Integer, nullable=False),
            Column("cache_read_tokens", Integer, nullable=False),
            Column("cache_write_tokens", Integer, nullable=False),
            Column("recorded_at", StoredTime(), nullable=False),
        )
        self.knowledge = Table(
            f"{prefix}knowledge",
            self.metadata,
            Column("entry_id", StoredId(), primary_key=True),
            Column("log_id", StoredId(), nullable=False, index=True),
            Column("text", Text, nullable=False),
            Column("task_id", String(64), nullable=False),
            Column("source_message_ids", JSON, nullable=False),
            Column("extracted_at", StoredTime(), nullable=False),
            Column("version", Integer, nullable=False),
            Column("ordinal", Integer, nullable=False),
            Column("knowledge_version", String(64), nullable=False, index=True),
            Column("extractor", String(MAX_EXTRACTOR_CHARS), nullable=False),
            Column("model", String(MAX_MODEL_CHARS), nullable=True),
            Column("valid_from", StoredTime(), nullable=False),
            Column("valid_until", StoredTime(), nullable=True),
            Column("superseded_by", StoredId(), nullable=True),
            Column("ended_reason", Text, nullable=True),
            Column("ended_version", Integer, nullable=True),
            # A user's listing, in order: a page is read off it, with no sort of them all.
            Index(
                f"{prefix}knowledge_listing", "log_id", "knowledge_version", "version", "ordinal"
            ),
            # A chain of replaced entries is walked back one link at a time: without it each
            # link scans the user's rows, and a batch of a long chain costs its length squared.
            Index(
                f"{prefix}knowledge_replaced",
                "log_id",
                "knowledge_version",
                "superseded_by",
                sqlite_where=text("superseded_by IS NOT NULL"),
                postgresql_where=text("superseded_by IS NOT NULL"),
            ),
        )
        self.messages = Table(
            f"{prefix}messages",
            self.metadata,
            Column("id", Integer, primary_key=True, info={UNFOLDED: True}),
            Column("message_id", StoredId(), nullable=False, unique=True),
            Column("log_id", StoredId(), nullable=False),
            Column("seq", Integer, nullable=False),
            Column("version", Integer, nullable=False),
            Column("role", String(16), nullable=False),
            Column("content", Text, nullable=False),
            Column("sent_at", StoredTime(), nullable=False),
            Column("name", String(100), nullable=True),
            Column("buffered", Integer, nullable=False),
            Column("task_id", String(64), nullable=True),
            Column("quarantined", Integer, nullable=False),
            Index(f"{prefix}messages_by_seq", "log_id", "seq", unique=True),
        )
        messages = self.messages.c
        Index(
            f"{prefix}messages_buffered",
            messages.log_id,
            messages.seq,
            sqlite_where=messages.buffered == literal_column("1"),
            postgresql_where=messages.buffered == literal_column("1"),
        )
        Index(
            f"{prefix}messages_by_task",
            messages.task_id,
            sqlite_where=messages.task_id.is_not(None),
            postgresql_where=messages.task_id.is_not(None),
        )
        self.citations = Table(
            f"{prefix}citations",
            self.metadata,
            Column("message_id", StoredId(), primary_key=True),
            Column("entry_id", StoredId(), primary_key=True),
            Column("log_id", StoredId(), nullable=False, index=True),
            Column("repeated", Integer, nullable=False),
        )
        self.vectors = Table(
            f"{prefix}vectors",
            self.metadata,
            Column("item_id", StoredId(), primary_key=True),
            Column("model", String(128), primary_key=True),
            Column("log_id", StoredId(), nullable=False),
            Column("kind", String(8), nullable=False),
            Column("vector", LargeBinary, nullable=False),
            Index(f"{prefix}vectors_by_log", "log_id", "model", "kind"),
        )
        self.users = Table(
            f"{prefix}users",
            self.metadata,
            Column("log_id", StoredId(), primary_key=True),
            Column("user_id", code_point_text(256), nullable=False, unique=True),
            Column("version", Integer, nullable=False),
            Column("message_count", Integer, nullable=False),
            Column("buffered_count", Integer, nullable=False),
            Column("quarantined_count", Integer, nullable=False),
            Column("knowledge_count", Integer, nullable=False),
            Column("tasks_completed", Integer, nullable=False),
            Column("tasks_failed", Integer, nullable=False),
            Column("created_at", StoredTime(), nullable=False),
            Column("updated_at", StoredTime(), nullable=False),
        )
        self.checkpoints = Table(
            f"{prefix}checkpoints",
            self.metadata,
            Column("log_id", StoredId(), primary_key=True),
            Column("version", Integer, primary_key=True),
            Column("latest", StoredTime(), nullable=False),
            Column("state", LargeBinary, nullable=False),
        )
        self.unreadable = Table(
            f"{prefix}unreadable",
            self.metadata,
            Column("log_id", StoredId(), primary_key=True),
            Column("user_id", code_point_text(256)),
            Column("version", Integer, nullable=False),
            Column("reason", Text, nullable=False),
            Column("topic", Text),
        )
        self.position = Table(
            f"{prefix}position",
            self.metadata,
            Column("name", String(32), primary_key=True),
            Column("position", Integer, nullable=False),
        )

    @property
    def data_tables(self) -> tuple[Table, ...]:
        """The tables that hold a user's rows (everything but the position)."""
        return (*self.folded_tables, self.vectors, self.checkpoints, self.unreadable)

    @property
    def folded_tables(self) -> tuple[Table, ...]:
        """The tables folded from the log alone; vectors also depend on an embedding model."""
        return (
            self.quarantine,
            self.tasks,
            self.usage,
            self.knowledge,
            self.citations,
            self.messages,
            self.users,
        )
