"""The write path's CPU in one thread, stage by stage, beside raw sqlite3 doing its SQL.

The event loop, the actors' messages and the threads are left out. Users' logs decide two
messages each (as their actors do) and are written as the committer writes them, all on
this thread, timing its CPU; a second pass times each stage of the write. Two shapes:
group commits of 50 exchanges of 100 users (the committer under load), and one user
writing alone, a commit per exchange (an agent with one user at a time). Beside each, in
the same round, raw sqlite3 writes the rows those commits wrote, ready made, into a copy
of the database: the events, the messages, the users' rows, the positions and the
messages' full-text index, one transaction per commit. That is what SQLite alone costs.
Both at the default durability (synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import default

import events._codec
import projections.projector
from actors._committer import GroupCommitter, Write
from bench.append import ASSISTANT_TEXT, USER_TEXT, write_histories
from bench.common import (
    BenchConfig,
    Section,
    Workspace,
    cell,
    fmt_ratio,
    fmt_us,
    progress,
)
from events import EventStore, UserLog, sqlite_url
from projections import ProjectionTables, Projector
from projections.columns import id_text
from projections.search import SearchIndex, owned_words, spoken
from projections.sink import TableSink

__all__ = [
    "SHAPES",
    "Row",
    "Shape",
    "Stages",
    "decide",
    "measure_commits",
    "run",
    "stage_rows",
    "timing",
]


@dataclass(frozen=True, slots=True)
class Shape:
    """How the measured exchanges are committed: ``per_commit`` exchanges of distinct
    users (out of ``users``) per commit, ``commits`` commits per pass."""

    name: str
    users: int
    per_commit: int
    commits: int


SHAPES = (Shape("grouped", 100, 50, 40), Shape("lone", 1, 1, 400))
"""Group commits under load, and one user writing alone."""

Stages = tuple[tuple[str, object, str], ...]
"""Stages of a write: each one's name, and the function (owner, attribute) timed for it."""


_STAGES: Stages = (
    ("encode the events", events._codec.Encoder, "__call__"),
    ("insert the events", EventStore, "_insert"),
    ("fold: load and evolve rows", projections.projector, "_folded"),
    ("write the projection rows", TableSink, "write"),
    ("full-text index the messages", SearchIndex, "index_messages"),
    ("commit", default.DefaultDialect, "do_commit"),
)
"""The stages of one group commit, and the function each is timed around."""


def run(cfg: BenchConfig, workspace: Workspace) -> Section:
    """Time the decision and the write of each shape's commits in one thread, and the raw
    SQL of the same rows."""
    grouped = SHAPES[0]
    section = Section(
        "The write path in one thread, by stage, beside raw sqlite3 writing the same rows",
        [
            "stage",
            f"{grouped.users} users, {grouped.per_commit} exchanges per commit: CPU µs / exchange",
            "one user, a commit per exchange: CPU µs / exchange",
        ],
    )
    with workspace.scratch("stages") as folder:
        seed = folder / "seed.db"
        asyncio.run(write_histories(seed, max(shape.users for shape in SHAPES), 1))
        for round_no in range(1, cfg.rounds + 1):
            progress(f"write stages round {round_no}/{cfg.rounds}")
            for shape in SHAPES:
                _round(section, folder, seed, shape)
    stage_rows(section, "stages", _STAGES, "raw sqlite3: the same rows' SQL, ready made")
    section.notes.append(
        "CPU time of this thread (time.thread_time), medians over rounds. The stages are "
        "timed in a second pass of the same commits, with a timer around each stage's "
        "function (a thread_time call is a system call of about a microsecond, and the "
        "timed pass runs well above the untimed one); 'the rest' is that pass's write less "
        "its stages, so it holds the timers' own cost. The untimed total is the figure to "
        "set beside the raw SQL: the "
        "difference is memvee's Python on the write path; the add_exchange and peer "
        "sections add the loop, the actors' messages and the threads. A lone user's "
        "messages wait for the full-text index until 256 events have gathered, so their "
        "indexing shows as a share of that pass."
    )
    return section


def _round(section: Section, folder: Path, seed: Path, shape: Shape) -> None:
    """One round of ``shape``: the engine's decide and write on a copy of ``seed``, then
    raw sqlite3 writing the same rows on another copy."""
    path = _copy(seed, folder / "engine.db")
    store = EventStore(sqlite_url(path))
    tables = ProjectionTables()
    # Its writes are called here, on this thread, so the committer's own thread never sees
    # one: no idle index pass of that thread may run between them.
    committer = GroupCommitter(store, Projector(tables, remember=1000), 256, index_idle=3600.0)
    try:
        logs = [store.load(f"user-{n:05d}") for n in range(shape.users)]
        # The raw floor writes from the seed's end, so from here: every log in sequence.
        first_event, first_message = _last_ids(path, tables)
        total = measure_commits(section, f"stages.{shape.name}", committer, logs, shape, _STAGES)
    finally:
        committer.stop()
        store.close()
    commits = _written(path, tables, first_event, first_message, shape)
    raw = _raw_write(_copy(seed, folder / "raw.db"), tables, commits[: shape.commits])
    exchanges = shape.commits * shape.per_commit
    section.stat(f"stages.{shape.name}.raw", "µs").add(raw / exchanges / 1e3)
    section.stat(f"stages.{shape.name}.raw_ratio", "x").add(total / raw)


Row = tuple[str, str, Callable[[float], str]]
"""A table row of a stage bench: its label, its statistic's key, how a value prints."""


def stage_rows(
    section: Section, key: str, stages: Stages, raw: str, counted: tuple[Row, ...] = ()
) -> None:
    """The rows of a stage bench's table, a column per shape, from the statistics
    :func:`measure_commits` recorded under ``key`` and the raw reference's (labelled
    ``raw``): the decision, each stage, the rest, the total, ``counted``, the raw
    reference and the total's ratio to it."""
    stats = section.stats

    def row(label: str, name: str, fmt: Callable[[float], str] = fmt_us) -> None:
        section.rows.append(
            [label, *(cell(stats[f"{key}.{shape.name}.{name}"], fmt) for shape in SHAPES)]
        )

    row("decide (the actor: two messages, UserLog)", "decide")
    for name, _, _ in stages:
        row(f"write: {name}", name)
    row("write: the rest (transaction, settling)", "rest")
    row("decide + write, not timed by stage", "total")
    for label, name, fmt in counted:
        row(label, name, fmt)
    row(raw, "raw")
    row(f"decide + write ÷ {raw.split(':')[0]}", "raw_ratio", fmt_ratio)


def measure_commits(
    section: Section,
    key: str,
    committer: GroupCommitter,
    logs: list[UserLog | None],
    shape: Shape,
    stages: Stages,
) -> float:
    """Decide and write ``shape``'s commits with ``committer`` on this thread: a warm-up
    commit, a pass timed whole, then a pass timed by stage. Records, per exchange, the
    decision, the untimed total, each stage and the rest under ``key``; returns the
    total's CPU nanoseconds (decide and write, first pass)."""
    committer._write(decide(logs, 0, shape)[0])  # every statement seen once
    decided = written = 0
    for commit in range(1, shape.commits + 1):
        batch, spent = decide(logs, commit, shape)
        started = time.thread_time_ns()
        committer._write(batch)
        written += time.thread_time_ns() - started
        decided += spent
    timed: dict[str, int] = dict.fromkeys((name for name, _, _ in stages), 0)
    staged = 0
    with timing(timed, stages):
        for commit in range(shape.commits + 1, 2 * shape.commits + 1):
            batch, _ = decide(logs, commit, shape)
            started = time.thread_time_ns()
            committer._write(batch)
            staged += time.thread_time_ns() - started
    exchanges = shape.commits * shape.per_commit

    def add(name: str, nanoseconds: float) -> None:
        section.stat(f"{key}.{name}", "µs").add(nanoseconds / exchanges / 1e3)

    add("decide", decided)
    add("total", decided + written)
    for name, spent in timed.items():
        add(name, spent)
    add("rest", staged - sum(timed.values()))
    return decided + written


def _copy(seed: Path, target: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(seed, target)
    return target


def decide(logs: list[UserLog | None], commit: int, shape: Shape) -> tuple[list[Write], int]:
    """The requests of one commit (two messages of each of its users) and the CPU
    nanoseconds their decisions took."""
    started = time.thread_time_ns()
    batch = []
    for n in range(shape.per_commit):
        user_log = logs[(commit * shape.per_commit + n) % shape.users]
        assert user_log is not None
        user_log.add_message("user", USER_TEXT, None, 100_000)
        user_log.add_message("assistant", ASSISTANT_TEXT, None, 100_000)
        batch.append(Write(user_log.collect_events(), 0, origin=user_log.created_on))
    return batch, time.thread_time_ns() - started


@contextmanager
def timing(spent: dict[str, int], stages: Stages) -> Iterator[None]:
    """Add the CPU time of each stage's function to ``spent`` while the block runs."""
    with ExitStack() as stack:
        for name, owner, attribute in stages:
            original = getattr(owner, attribute)
            setattr(owner, attribute, _timed(original, spent, name))
            stack.callback(setattr, owner, attribute, original)
        yield


def _timed(function: Callable[..., Any], spent: dict[str, int], name: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.thread_time_ns() - started

    return timed


def _last_ids(path: Path, tables: ProjectionTables) -> tuple[int, int]:
    with sqlite3.connect(path) as connection:
        (event,) = connection.execute("SELECT max(id) FROM memvee_events").fetchone()
        (message,) = connection.execute(f"SELECT max(id) FROM {tables.messages.name}").fetchone()
    return int(event), int(message)


_Commit = dict[str, list[tuple[Any, ...]]]


def _written(
    path: Path, tables: ProjectionTables, after_event: int, after_message: int, shape: Shape
) -> list[_Commit]:
    """The rows each measured commit wrote, ready made: events, message rows, the users'
    rows (as they ended), and the messages' index bodies."""
    messages, users = tables.messages.name, tables.users.name
    per_commit = 2 * shape.per_commit
    with sqlite3.connect(path) as connection:
        event_rows = connection.execute(
            "SELECT originator_id, originator_version, topic, state FROM memvee_events "
            "WHERE id > ? ORDER BY id",
            (after_event,),
        ).fetchall()
        names = [c.name for c in tables.messages.columns]
        message_rows = connection.execute(
            f"SELECT {', '.join(names)} FROM {messages} WHERE id > ? ORDER BY id",
            (after_message,),
        ).fetchall()
        user_columns = [c.name for c in tables.users.columns if c.name != "log_id"]
        user_rows = {
            row[-1]: row
            for row in connection.execute(f"SELECT {', '.join(user_columns)}, log_id FROM {users}")
        }
    at = {name: i for i, name in enumerate(names)}
    commits = []
    for start in range(0, len(event_rows), per_commit):
        written = message_rows[start : start + per_commit]
        touched = dict.fromkeys(row[at["log_id"]] for row in written)
        commits.append(
            {
                "events": event_rows[start : start + per_commit],
                "messages": written,
                "users": [user_rows[log_id] for log_id in touched],
                "index": [
                    (
                        row[at["id"]],
                        owned_words(
                            id_text(row[at["log_id"]]), spoken(row[at["content"]], row[at["name"]])
                        ),
                    )
                    for row in written
                ],
            }
        )
    return commits


def _raw_write(path: Path, tables: ProjectionTables, commits: list[_Commit]) -> int:
    """Write ``commits`` with stdlib sqlite3, a transaction each; returns CPU nanoseconds."""
    messages = tables.messages
    user_columns = [c.name for c in tables.users.columns if c.name != "log_id"]
    index = SearchIndex(tables).messages_fts.name
    statements = {
        "events": "INSERT INTO memvee_events (originator_id, originator_version, topic, state) "
        "VALUES (?, ?, ?, ?)",
        "messages": f"INSERT INTO {messages.name} ({', '.join(c.name for c in messages.columns)})"
        f" VALUES ({', '.join('?' * len(messages.columns))})",
        "users": f"UPDATE {tables.users.name} SET {', '.join(f'{c} = ?' for c in user_columns)}"
        " WHERE log_id = ?",
        "index": f"INSERT INTO {index} (rowid, body) VALUES (?, ?)",
    }
    position = f"UPDATE {tables.position.name} SET position = position + 1 WHERE name = ?"
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=FULL")
        started = time.thread_time_ns()
        for commit in commits:
            writer.execute("BEGIN")
            for kind, sql in statements.items():
                writer.executemany(sql, commit[kind])
            writer.execute(position, ("projections",))
            writer.execute(position, ("messages_indexed",))
            writer.execute("COMMIT")
        return time.thread_time_ns() - started
    finally:
        writer.close()
