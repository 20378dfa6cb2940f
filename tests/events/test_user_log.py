"""The user log aggregate, read as decide/evolve: what each command may emit, and how
each event changes the small state."""

from __future__ import annotations

import pytest
from eventsourcing.domain import Snapshot

from events import ExtractedFact, InvalidExtractionError, InvalidInputError, UnknownTaskError
from events.user_log import UserLog, user_log_id


def _log_with(n: int) -> tuple[UserLog, list[str]]:
    log = UserLog.register("alice")
    ids = [log.add_message("user", f"m{i}", None, 100) for i in range(n)]
    return log, ids


def test_one_log_per_user_with_a_stable_id() -> None:
    assert UserLog.register("alice").id == user_log_id("alice") == user_log_id("alice")
    assert user_log_id("alice") != user_log_id("bob")


def test_add_message_emits_message_added_and_buffers_it() -> None:
    log, ids = _log_with(2)
    events = log.collect_events()
    assert [type(e).__name__ for e in events] == ["Registered", "MessageAdded", "MessageAdded"]
    assert [e.seq for e in events[1:]] == [1, 2]  # type: ignore[attr-defined]
    assert list(log.pending) == ids and log.message_count == 2


def test_add_message_refuses_bad_input_and_emits_nothing() -> None:
    log, _ = _log_with(0)
    log.collect_events()
    for role, content in [("robot", "x"), ("user", ""), ("user", "x" * 101)]:
        with pytest.raises(InvalidInputError):
            log.add_message(role, content, None, 100)
    assert log.collect_events() == []


def _start(log: UserLog, task_id: str, trigger: str = "manual") -> list[str]:
    assert log.request_processing(task_id, trigger)
    started = log.start_next()
    assert started is not None and started[0] == task_id
    return started[2]


def test_a_request_queues_a_task_and_start_next_claims_every_buffered_message() -> None:
    log, ids = _log_with(3)
    assert log.request_processing("t1", "manual")
    assert log.requested == {"t1": "manual"}
    assert log.start_next() == ("t1", "manual", ids)
    assert log.pending == {} and list(log.open_tasks["t1"]) == ids and log.requested == {}
    assert log.start_next() is None


def test_tasks_run_one_at_a_time_oldest_request_first() -> None:
    log, ids = _log_with(1)
    log.request_processing("t1", "manual")
    log.request_processing("t2", "manual")
    assert log.start_next() == ("t1", "manual", ids)
    assert log.start_next() is None
    log.record_knowledge("t1", [], "offline")
    assert log.start_next() == ("t2", "manual", [])


def test_a_task_with_nothing_to_claim_completes_at_once() -> None:
    log, _ = _log_with(0)
    log.collect_events()
    log.request_processing("t1", "manual")
    assert log.start_next() == ("t1", "manual", [])
    events = log.collect_events()
    assert [type(e).__name__ for e in events] == [
        "ProcessingRequested",
        "ProcessingStarted",
        "KnowledgeExtracted",
    ]
    assert log.open_tasks == {} and log.requested == {}


def test_an_auto_request_is_dropped_while_another_request_waits() -> None:
    log, _ = _log_with(1)
    assert log.request_processing("t1", "manual")
    assert not log.request_processing("t2", "auto")
    assert list(log.requested) == ["t1"]


def test_a_known_task_cannot_be_requested_twice() -> None:
    log, _ = _log_with(1)
    log.request_processing("t1", "manual")
    with pytest.raises(InvalidInputError, match="already known"):
        log.request_processing("t1", "manual")


def test_record_knowledge_closes_the_task_and_covers_its_messages() -> None:
    log, ids = _log_with(2)
    _start(log, "t1")
    entries = log.record_knowledge("t1", [ExtractedFact("User is x", (ids[0],))], "offline")
    assert entries[0]["source_message_ids"] == [ids[0]]
    assert log.open_tasks == {} and log.pending == {} and log.knowledge_count == 1
    last = log.collect_events()[-1]
    assert isinstance(last, UserLog.KnowledgeExtracted) and last.message_ids == ids


@pytest.mark.parametrize(
    ("fact", "message"),
    [
        (ExtractedFact("x", ("elsewhere",)), "outside its batch"),
        (ExtractedFact("  ", ()), "empty text"),
        (ExtractedFact("x", ()), "cites no message"),
    ],
)
def test_record_knowledge_refuses_facts_that_break_the_contract(
    fact: ExtractedFact, message: str
) -> None:
    log, _ = _log_with(1)
    _start(log, "t1")
    log.collect_events()
    with pytest.raises(InvalidExtractionError, match=message):
        log.record_knowledge("t1", [fact], "claude")
    assert log.collect_events() == [] and "t1" in log.open_tasks


def test_failure_returns_the_messages_to_the_buffer_in_log_order() -> None:
    log, ids = _log_with(2)
    _start(log, "t1")
    later = log.add_message("user", "later", None, 100)
    log.record_failure("t1", "boom")
    assert list(log.pending) == [*ids, later]
    assert log.open_tasks == {}


def test_close_interrupted_closes_every_open_task() -> None:
    log, ids = _log_with(2)
    _start(log, "t1", "auto")
    log.request_processing("t2", "manual")
    assert log.close_interrupted("crashed") == ["t1"]
    assert list(log.requested) == ["t2"]
    assert log.close_interrupted("shutdown", ["t2"]) == ["t2"]
    assert log.requested == {}
    assert list(log.pending) == ids
    assert isinstance(log.collect_events()[-1], UserLog.ProcessingInterrupted)


def test_outcomes_for_unknown_tasks_are_refused() -> None:
    log, _ = _log_with(1)
    with pytest.raises(UnknownTaskError):
        log.record_failure("nope", "x")
    with pytest.raises(UnknownTaskError):
        log.record_knowledge("nope", [], "offline")


def test_state_stays_small_and_snapshots_round_trip() -> None:
    log, _ = _log_with(50)
    _start(log, "t1")
    log.record_knowledge("t1", [], "offline")
    snapshot = Snapshot.take(log)
    assert set(snapshot.state) >= {"pending", "open_tasks", "message_count"}
    assert not any("m1" in repr(v) for v in snapshot.state.values())
    restored = snapshot.mutate(None)
    assert isinstance(restored, UserLog)
    assert restored.message_count == 50 and restored.pending == {}
