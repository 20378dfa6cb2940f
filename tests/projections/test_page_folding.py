"""Page folding (rebuilds and replays) gives the very rows the live, commit-by-commit fold
gives, on long histories with every kind of event and pages ending anywhere; and the
store's fast event decoding gives the events eventsourcing's mapper gives."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from events import (
    BatchLimits,
    EventStore,
    ExtractedFact,
    TokenUsage,
    UserLog,
    sqlite_url,
)
from projections import (
    ProjectionTables,
    Projector,
    catch_up,
    dump,
    index_messages,
    rebuild,
    replay,
    state_at,
    verify,
)
from tests.support.reference_tables import reference_state

USERS = ("ann", "ben")


def _step(
    log: UserLog, rng: random.Random, store: EventStore, messages: list[str], tasks: list[int]
) -> None:
    """One random command on ``log`` (its events so far in ``store``), chosen among those
    its state allows."""
    op = rng.choice(
        ["add"] * 4
        + ["start", "extract", "revise", "fail", "crash", "request", "reextract"]
        + ["promote", "requeue", *["reject"] * 5]
    )
    if op == "add":
        sent = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=rng.choice((0, 2)))))
        sent += timedelta(seconds=len(messages), microseconds=rng.choice((0, 1, 999_999)))
        messages.append(log.add_message("user", f"message {len(messages)}", sent, 1000))
    elif op in ("start", "request"):
        tasks[0] += 1
        log.request_processing(f"{log.user_id}-t{tasks[0]}", "manual")
        if op == "start":
            log.start_next(LIMITS)
    elif op in ("extract", "revise", "fail", "reject") and log.open_tasks:
        task = next(iter(log.open_tasks))
        if op in ("fail", "reject"):
            again, blamed = op == "reject", rng.random() < 0.5
            usage = TokenUsage(rng.choice((None, 10)), 5)
            log.record_failure(
                task, "failed", repeats=again, blamed=blamed, usage=usage, limits=LIMITS
            )
            return
        facts = [ExtractedFact(f"fact {m}", (m,)) for m in log.open_tasks[task]]
        live = [e for e, v in log.valid_entries.items() if v == "live"]
        if op == "revise" and facts and live:
            first = facts[0].source_message_ids
            facts[0] = ExtractedFact("revised", first, "update", rng.choice(live))
            others = [e for e in live if e != facts[0].target_entry_id]
            if others:
                facts.append(ExtractedFact("no more", first, "invalidate", rng.choice(others)))
        usage = TokenUsage(rng.choice((None, 100)), 20, rng.choice((None, 0, 900)), 0)
        log.record_knowledge(
            task, facts, "pages", model=rng.choice((None, "m")), usage=usage, limits=LIMITS
        )
    elif op == "crash":
        log.close_interrupted("interrupted", [*log.open_tasks, *log.requested][:2])
    elif op == "reextract":
        held = set(log.pending) | {m for t in log.open_tasks.values() for m in t}
        covered = [m for m in messages if m not in held][-5:]
        if covered:
            facts = [ExtractedFact(f"again {m}", (m,)) for m in covered]
            log.record_reextraction(f"v{log.version}", covered, facts, "pages")
    elif op == "promote" and log.knowledge_versions:
        log.promote(next(iter(log.knowledge_versions)), store.events_of(log.user_id))
    elif op == "requeue" and log.quarantined:
        log.requeue(rng.sample(list(log.quarantined), 1) if rng.random() < 0.5 else None)


LIMITS = BatchLimits(max_messages=3, max_tokens=10_000, max_attempts=2)
"""Small batches and few attempts, so that histories split and quarantine often."""


def _history(folder: Path, seed: int, steps: int = 160) -> EventStore:
    """Two users' interleaved histories, folded live as the engine folds them."""
    store = EventStore(sqlite_url(folder / f"h{seed}.db"))
    projector = Projector(ProjectionTables(), remember=100)  # the engine's: rows remembered
    with store.transaction() as connection:
        projector.create(connection)
    rng = random.Random(seed)
    logs = {u: UserLog.register(u) for u in USERS}
    state: dict[str, tuple[list[str], list[int]]] = {u: ([], [0]) for u in USERS}
    for _ in range(steps):
        batch = []
        for user in rng.sample(USERS, rng.choice((1, 2))):
            _step(logs[user], rng, store, *state[user])
            batch.append(logs[user].collect_events())
        store.append(batch, projector.apply)
        projector.committed()
    index_messages(store, projector)  # what the live path does soon after, in bulk
    return store


@pytest.mark.parametrize("seed", [6, 7, 9])
def test_page_folding_equals_the_live_fold(tmp_path: Path, seed: int) -> None:
    store = _history(tmp_path, seed)
    try:
        kinds = {type(e).__name__ for u in USERS for e in store.events_of(u)}
        assert {
            "KnowledgeSuperseded",
            "KnowledgeInvalidated",
            "KnowledgeVersionPromoted",
            "ProcessingFailed",
            "ProcessingInterrupted",
            "BatchFailed",
            "MessagesQuarantined",
            "MessagesRequeued",
            "MessagesReturned",
        } <= kinds, kinds
        live = dump(store.engine, ProjectionTables())
        for page_size in (1, 7, 10_000):
            rebuild(store, page_size=page_size)
            assert dump(store.engine, ProjectionTables()) == live
        assert verify(store) == []
        page = replay._PAGE
        try:
            replay._PAGE = 5
            for user in USERS:
                last = len(store.events_of(user))
                for version in range(1, last + 1, 5):
                    assert state_at(store, user, version=version) == reference_state(
                        store, user, version
                    )
        finally:
            replay._PAGE = page
        for user in USERS:
            assert state_at(store, user) == reference_state(store, user, 2**31)
    finally:
        store.close()


def test_catching_up_a_half_folded_projection_ends_equal(tmp_path: Path) -> None:
    store = _history(tmp_path, 5, steps=80)
    partial = ProjectionTables("mvpartial_")

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            rebuild(store, partial, progress=stop, page_size=37)
        assert 0 < catch_up(store, partial, page_size=11) < store.max_position()
        assert dump(store.engine, partial) == dump(store.engine, ProjectionTables())
    finally:
        store.close()


def test_fast_decoding_gives_the_mappers_events(tmp_path: Path) -> None:
    store = _history(tmp_path, 4, steps=90)
    mapper = store._app.mapper  # the reference decoder
    try:
        with store.engine.connect() as connection:
            fast = store.notifications(connection, after=0, limit=10_000)
            rows = list(connection.execute(store._notifications, {"after": 0, "limit": 10_000}))
        assert len(fast) == len(rows) > 50
        for recorded, row in zip(fast, rows, strict=True):
            expected = mapper.to_domain_event(StoredEvent(row[1], row[2], row[3], row[4]))
            _same_event(recorded.event, expected)
        for user in USERS:
            for event, stored in zip(
                store.events_of(user), store.stored_events_of(user), strict=True
            ):
                _same_event(event, mapper.to_domain_event(stored))
        # States the fast path must leave to the mapper: nested markers, a class version.
        log_id, decode = uuid4(), store._decoder
        topic = "events.user_log:UserLog.ProcessingFailed"
        stamp = {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+02:00"}
        for state in (
            {"timestamp": stamp, "task_id": "t", "error": {"nested": stamp}},
            {"timestamp": stamp, "task_id": "t", "error": "e", "class_version": 1},
            {"timestamp": stamp, "task_id": "t", "error": '"_type_"'},
        ):
            encoded = mapper.transcoder.encode(state)
            expected = mapper.to_domain_event(StoredEvent(log_id, 3, topic, encoded))
            _same_event(decode(log_id, 3, topic, encoded), expected)
    finally:
        store.close()


def _same_event(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    assert list(vars(actual).items()) == list(vars(expected).items())
    for a, b in zip(vars(actual).values(), vars(expected).values(), strict=True):
        assert type(a) is type(b)
