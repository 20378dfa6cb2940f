"""A property: for random sequences of operations (add, process, fail, crash-recover,
re-extract and promote),
the state replayed at every version equals the live state recorded at that version, and
rebuilding the projections gives back the live ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import EventStore, ExtractedFact, UserLog, sqlite_url
from projections import (
    ProjectionReader,
    ProjectionTables,
    Projector,
    dump,
    rebuild,
    state_at,
)


def _covered(log: UserLog, messages: list[str]) -> list[str]:
    """The ``messages`` that are neither buffered nor held by a task."""
    held = set(log.pending) | {m for t in log.open_tasks.values() for m in t}
    return [m for m in messages if m not in held]


OPERATIONS = st.lists(
    st.sampled_from(
        ["add", "add", "add", "start", "extract", "fail", "crash", "reextract", "promote"]
    ),
    min_size=1,
    max_size=30,
)


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
                log.start_next()
            elif op in ("extract", "fail") and log.open_tasks:
                task = next(iter(log.open_tasks))
                if op == "extract":
                    facts = [ExtractedFact(f"fact {m}", (m,)) for m in log.open_tasks[task]]
                    log.record_knowledge(task, facts, "property")
                else:
                    log.record_failure(task, "failed on purpose")
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
        before = dump(store.engine, tables)
        rebuild(store, tables)
        assert dump(store.engine, tables) == before
    finally:
        store.close()
