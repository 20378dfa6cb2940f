"""A property: for random sequences of operations (add, process in bounded batches, fail in
ways that repeat or pass, quarantine, requeue, crash-recover, re-extract and promote),
the state replayed at every version equals the live state recorded at that version and the
state the same folds give when the whole prefix is folded into fresh tables at once, and
rebuilding the projections (in pages of any size) gives back the live ones. One definition
of each fold (projections.folds) is behind all of them: the live path folds commit by
commit over stored rows, a rebuild page by page, and state --at in memory alone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from events import BatchLimits, EventStore, ExtractedFact, Recorded, UserLog, sqlite_url
from projections import (
    ProjectionReader,
    ProjectionTables,
    Projector,
    UserState,
    dump,
    rebuild,
    replay,
    state_at,
)


def _covered(log: UserLog, messages: list[str]) -> list[str]:
    """The ``messages`` that are neither buffered nor held by a task."""
    held = set(log.pending) | {m for t in log.open_tasks.values() for m in t}
    return [m for m in messages if m not in held]


def _revising(log: UserLog, facts: list[ExtractedFact]) -> list[ExtractedFact]:
    """``facts`` with the first updating a live entry and one more ending another."""
    live = [e for e, v in log.valid_entries.items() if v == "live"]
    if not facts or not live:
        return facts
    first = facts[0]
    revised = [ExtractedFact(first.text, first.source_message_ids, "update", live[0])]
    if len(live) > 1:
        revised.append(
            ExtractedFact("no longer true", first.source_message_ids, "invalidate", live[-1])
        )
    return revised + facts[1:]


OPERATIONS = st.lists(
    st.sampled_from(
        [
            *("add", "add", "add", "start", "extract", "revise", "fail", "crash"),
            *("reextract", "promote", "reject", "reject", "blamed", "requeue"),
        ]
    ),
    min_size=1,
    max_size=40,
)

LIMITS = BatchLimits(max_messages=3, max_tokens=10_000, max_attempts=2)
"""Small batches and few attempts, so that tasks run several batches, split and quarantine."""


def _sql_state_at(
    store: EventStore, user_id: str, version: int | None = None, at: datetime | None = None
) -> UserState:
    """The reference: the log up to that point folded into fresh tables in one go."""
    tables = ProjectionTables("reference_")
    projector = Projector(tables)
    engine = create_engine("sqlite://", poolclass=StaticPool)
    events = store.events_of(user_id, upto=version)
    if at is not None:
        events = [e for e in events if getattr(e, "timestamp") <= at]  # noqa: B009
    with engine.begin() as connection:
        projector.create(connection)
        projector.apply(connection, [Recorded(e.originator_version, e) for e in events])
    reader = ProjectionReader(tables)
    with engine.connect() as connection:
        state = UserState(
            user_id=user_id,
            version=events[-1].originator_version if events else 0,
            buffer=reader.buffer(connection, user_id),
            tasks=reader.tasks(connection, user_id),
            knowledge=reader.knowledge(connection, user_id),
        )
    engine.dispose()
    return state


def _live(store: EventStore, reader: ProjectionReader) -> Any:
    with store.engine.connect() as connection:
        return (
            reader.buffer(connection, "p"),
            reader.tasks(connection, "p"),
            reader.knowledge(connection, "p"),
        )


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=OPERATIONS)
def test_replay_at_every_version_equals_live_and_rebuild_equals_live(
    operations: list[str], tmp_path_factory: Any
) -> None:
    folder: Path = tmp_path_factory.mktemp("prop")
    store = EventStore(sqlite_url(folder / "p.db"))
    tables = ProjectionTables()
    projector = Projector(tables)
    reader = ProjectionReader(tables)
    with store.transaction() as connection:
        projector.create(connection)
    log = UserLog.register("p")
    seen: dict[int, Any] = {}
    messages: list[str] = []
    tasks = 0
    try:
        for op in operations:
            if op == "add":
                messages.append(log.add_message("user", f"message {len(messages)}", None, 1000))
            elif op == "start":
                tasks += 1
                log.request_processing(f"t{tasks}", "manual")
                log.start_next(LIMITS)
            elif op in ("extract", "revise", "fail", "reject", "blamed") and log.open_tasks:
                task = next(iter(log.open_tasks))
                if op in ("extract", "revise"):
                    facts = [ExtractedFact(f"fact {m}", (m,)) for m in log.open_tasks[task]]
                    if op == "revise":
                        facts = _revising(log, facts)
                    log.record_knowledge(task, facts, "property", limits=LIMITS)
                else:
                    log.record_failure(
                        task,
                        f"failed on purpose ({op})",
                        repeats=op == "reject",
                        blamed=op == "blamed",
                        limits=LIMITS,
                    )
            elif op == "requeue":
                log.requeue()
            elif op == "crash":
                log.close_interrupted("interrupted: crash")
            elif op == "reextract":
                covered = _covered(log, messages)
                if covered:
                    facts = [ExtractedFact(f"again {m}", (m,)) for m in covered]
                    log.record_reextraction(f"v{log.version}", covered, facts, "property")
            elif op == "promote" and log.knowledge_versions:
                log.promote(next(iter(log.knowledge_versions)))
            events = log.collect_events()
            if events:
                store.append([events], projector.apply)
                seen[log.version] = _live(store, reader)
        for version, live in seen.items():
            replayed = state_at(store, "p", version=version)
            assert (replayed.buffer, replayed.tasks, replayed.knowledge) == live
            assert replayed == _sql_state_at(store, "p", version=version)
        stamps = [getattr(e, "timestamp") for e in store.events_of("p")]  # noqa: B009
        for at in stamps[:: max(1, len(stamps) // 4)]:
            assert state_at(store, "p", at=at) == _sql_state_at(store, "p", at=at)
        page = replay._PAGE
        try:
            replay._PAGE = 3  # pages end anywhere: rows come back from earlier pages
            for version in seen:
                assert state_at(store, "p", version=version) == _sql_state_at(store, "p", version)
        finally:
            replay._PAGE = page
        before = dump(store.engine, tables)
        for page_size in (1, 4, 10_000):
            rebuild(store, tables, page_size=page_size)
            assert dump(store.engine, tables) == before
    finally:
        store.close()
