"""A property: for random sequences of operations (add, process in bounded batches, fail in
ways that repeat or pass, quarantine, requeue, crash-recover, re-extract and promote),
the state replayed at every version equals the live state recorded at that version and the
state the same folds give when the whole prefix is folded into fresh tables at once, and
rebuilding the projections (in pages of any size) gives back the live ones, and a replay
that starts from a checkpoint gives the same state as one from the start. One definition
of each fold (projections.folds) is behind all of them: the live path folds commit by
commit over stored rows, a rebuild page by page, and state --at in memory alone."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import EventStore, sqlite_url
from projections import (
    ProjectionReader,
    ProjectionTables,
    Projector,
    UserState,
    dump,
    index_messages,
    rebuild,
    replay,
    replay_checkpoints,
    state_at,
    take_checkpoint,
)
from tests.support.log_operations import EVERY_OPERATION, LogDriver
from tests.support.reference_tables import reference_state

OPERATIONS = st.lists(st.sampled_from(EVERY_OPERATION), min_size=1, max_size=40)


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
    _check_replay(operations, tmp_path_factory.mktemp("prop"), LogDriver("p"))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    operations=st.lists(st.sampled_from((*EVERY_OPERATION, "garbage", "garbage")), max_size=40),
    answers=st.randoms(use_true_random=False),
)
def test_replay_equals_live_and_rebuild_whatever_the_extractor_answers(
    operations: list[str], answers: random.Random, tmp_path_factory: Any
) -> None:
    """The same property with answers no extractor should give among the operations (see
    tests.support.garbage_answers): what the log made of them replays and rebuilds alike."""
    driver = LogDriver("p")
    driver.answers = answers
    _check_replay(["add", "start", *operations], tmp_path_factory.mktemp("prop"), driver)


def _check_replay(operations: list[str], folder: Path, driver: LogDriver) -> None:
    """Perform ``operations`` with ``driver`` on a store in ``folder``, then check that
    the state replayed at every version and time, from the start or a checkpoint, and the
    rebuilt projections equal the live ones."""
    store = EventStore(sqlite_url(folder / "p.db"))
    tables = ProjectionTables()
    projector = Projector(tables)
    reader = ProjectionReader(tables)
    with store.transaction() as connection:
        projector.create(connection)
    log = driver.log
    seen: dict[int, Any] = {}
    try:
        for op in operations:
            driver.perform(op)
            events = log.collect_events()
            if events:
                store.append([events], projector.apply)
                seen[log.version] = _live(store, reader)
        references: dict[tuple[int | None, datetime | None], UserState] = {}

        def reference(version: int | None = None, at: datetime | None = None) -> UserState:
            """The log folded into fresh tables, once for each point the checks ask for."""
            if (version, at) not in references:
                references[version, at] = reference_state(store, "p", version, at)
            return references[version, at]

        for version, live in seen.items():
            replayed = state_at(store, "p", version=version)
            assert (replayed.buffer, replayed.tasks, replayed.knowledge) == live
            assert replayed == reference(version)
        stamps = [getattr(e, "timestamp") for e in store.events_of("p")]  # noqa: B009
        for at in stamps[:: max(1, len(stamps) // 4)]:
            assert state_at(store, "p", at=at) == reference(at=at)
        page = replay._PAGE
        try:
            replay._PAGE = 3  # pages end anywhere: rows come back from earlier pages
            for version in seen:
                assert state_at(store, "p", version=version) == reference(version)
        finally:
            replay._PAGE = page
        checkpoints = replay_checkpoints(tables)
        for version in list(seen)[1::2]:
            take_checkpoint(store, "p", checkpoints, version=version)
        for version in seen:
            from_checkpoint = state_at(store, "p", version=version, checkpoints=checkpoints)
            assert from_checkpoint == reference(version)
        for at in stamps:
            from_checkpoint = state_at(store, "p", at=at, checkpoints=checkpoints)
            assert from_checkpoint == reference(at=at)
        index_messages(store, projector)  # the live path indexes messages in bulk, later
        before = dump(store.engine, tables)
        for page_size in (1, 4, 10_000):
            rebuild(store, tables, page_size=page_size)
            assert dump(store.engine, tables) == before
    finally:
        store.close()
