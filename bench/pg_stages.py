"""``python -m bench pg_stages``: the PostgreSQL write path's CPU in one thread, by stage.

As :mod:`bench.stages` does on SQLite: users' logs decide two messages each (as their
actors do) and the committer writes them on this thread, timing its CPU; a second pass
times each stage of the write. Two shapes: group commits of 50 exchanges of 100 users,
and one user writing alone, a commit per exchange. Beside them, in the same round, raw
psycopg commits one single-row INSERT per exchange (the ``postgres`` section's raw
reference): the client's CPU for a write at the floor. The server's CPU is not in these
figures; on a machine whose cores the server shares, it slows the client's wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from sqlalchemy.engine import default

import projections.projector
from actors._committer import GroupCommitter
from bench.append import ASSISTANT_TEXT, USER_TEXT
from bench.common import BenchConfig, Section, Workspace, progress
from bench.pg_worker import RAW_DDL, RAW_TABLE, psycopg_url
from bench.postgres import reset, server_url
from bench.stages import SHAPES, Shape, Stages, decide, measure_commits, stage_rows
from events import EventStore, UserLog
from projections import ProjectionTables, Projector
from projections.sink import Joined, TableSink

__all__ = ["STAGES", "run"]

STAGES: Stages = (
    ("insert the events, checking when their logs began", EventStore, "_insert_checking_psycopg"),
    ("look at the position", Projector, "_claim_position"),
    ("fold: load and evolve rows", projections.projector, "_folded"),
    ("bind the projection rows", TableSink, "write"),
    ("write the rows, moving the position", Joined, "send"),
    ("commit", default.DefaultDialect, "do_commit"),
)
"""The stages of one PostgreSQL write, its statements between begin and commit, and the
function each is timed around; the transaction's start is the rest."""


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Time the decision and the write of each shape's commits in one thread, by stage,
    beside raw psycopg's committed inserts."""
    del workspace  # the data lives in the PostgreSQL server
    grouped = SHAPES[0]
    section = Section(
        "The PostgreSQL write path in one thread, by stage, beside raw psycopg inserts",
        [
            "stage",
            f"{grouped.users} users, {grouped.per_commit} exchanges per commit: CPU µs / exchange",
            "one user, a commit per exchange: CPU µs / exchange",
        ],
    )
    url = server_url(section)
    if url is None:
        return [section]
    for round_no in range(1, cfg.rounds + 1):
        progress(f"postgres write stages round {round_no}/{cfg.rounds}")
        for shape in SHAPES:
            _round(section, url, shape)
        raw = _raw_insert(url, SHAPES[-1].commits)
        for shape in SHAPES:
            section.stat(f"pg_stages.{shape.name}.raw", "µs").add(raw)
            total = section.stats[f"pg_stages.{shape.name}.total"].samples[-1]
            section.stat(f"pg_stages.{shape.name}.raw_ratio", "x").add(total / raw)
    stage_rows(
        section,
        "pg_stages",
        STAGES,
        "raw psycopg: one committed single-row INSERT",
        (("statements of one commit, between BEGIN and COMMIT", "statements", _count),),
    )
    section.notes.append(
        "CPU time of this thread (time.thread_time), medians over rounds; the server's CPU "
        "is not counted. The stages are timed in a second pass of the same commits, with a "
        "timer around each stage's function; 'the rest' is that pass's write less its "
        "stages. Raw psycopg commits one INSERT of a row (id, both texts of an exchange) "
        "per exchange, as the postgres section's raw workers do: the client's floor for "
        "a committed write."
    )
    return [section]


def _round(section: Section, url: str, shape: Shape) -> None:
    """One round of ``shape`` on an emptied database: the engine's decide and write, all
    on this thread."""
    reset(url)
    store = EventStore(url)
    tables = ProjectionTables()
    projector = Projector(tables, remember=1000)
    with store.transaction() as connection:
        projector.create(connection)
    committer = GroupCommitter(store, projector, 256)
    try:
        logs: list[UserLog | None] = []
        for n in range(shape.users):
            log = UserLog.register(f"user-{n:05d}")
            store.append([log.collect_events()], projector.apply)
            logs.append(log)
        key = f"pg_stages.{shape.name}"
        measure_commits(section, key, committer, logs, shape, STAGES)
        batch, _ = decide(logs, 2 * shape.commits + 1, shape)
        with counting_statements() as sent:
            committer._write(batch)
        section.stat(f"{key}.statements", "").add(len(sent))
    finally:
        committer.stop()
        store.close()


@contextmanager
def counting_statements() -> Iterator[list[str]]:
    """The statements psycopg runs while the block runs (each ``execute`` and
    ``executemany``), as a list of their texts; the transaction's BEGIN and COMMIT,
    which psycopg sends on its own, are not among them."""
    sent: list[str] = []
    with ExitStack() as stack:
        for name in ("execute", "executemany"):
            original = getattr(psycopg.Cursor, name)
            stack.callback(setattr, psycopg.Cursor, name, original)
            setattr(psycopg.Cursor, name, _counted(original, sent))
        yield sent


def _counted(method: Callable[..., Any], sent: list[str]) -> Callable[..., Any]:
    def run(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return method(cursor, query, *args, **kwargs)

    return run


def _raw_insert(url: str, count: int) -> float:
    """CPU µs of this thread per committed single-row INSERT through psycopg."""
    payload = f"{USER_TEXT}\n{ASSISTANT_TEXT}"
    insert = f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)"
    with psycopg.connect(psycopg_url(url)) as connection:
        connection.execute(RAW_DDL)
        connection.commit()
        for _ in range(10):  # psycopg prepares a statement after its fifth run
            connection.execute(insert, (payload,))
            connection.commit()
        started = time.thread_time_ns()
        for _ in range(count):
            connection.execute(insert, (payload,))
            connection.commit()
        return (time.thread_time_ns() - started) / count / 1e3


def _count(value: float) -> str:
    return f"{value:,.0f}"
