"""The user log aggregate, read as decide/evolve: what each command may emit, and how
each event changes the small state."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from eventsourcing.domain import Snapshot

from events import (
    AlreadyReextractedError,
    Answered,
    BatchLimits,
    ConflictError,
    CredentialsRefused,
    ExtractedFact,
    FailedTellingNothing,
    InvalidInputError,
    Outage,
    TokenUsage,
    UnknownTaskError,
)
from events.store import EventStore
from events.user_log import (
    WHOLE_FAILURES_IN_A_ROW,
    UserLog,
    continues_decision,
    short_message_id,
    user_log_id,
)


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


def test_a_message_added_skips_the_dataclass_init_and_equals_what_trigger_event_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = UserLog.register("alice")
    log.collect_events()
    sent_at = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    with monkeypatch.context() as patched:

        def refused(*_: object, **__: object) -> None:
            raise AssertionError("the event went through its dataclass __init__")

        patched.setattr(UserLog.MessageAdded, "__init__", refused)
        log.add_message("user", "I live in Lisbon.", sent_at, 100, " Ana ")
        log.add_message("assistant", "Nice.", None, 100)
    lean, unnamed = log.collect_events()

    other = UserLog.register("alice")
    other.collect_events()
    state = {
        k: v for k, v in vars(lean).items() if k not in ("originator_id", "originator_version")
    }
    other.trigger_event(UserLog.MessageAdded, **state)
    (built,) = other.collect_events()
    assert lean == built and list(vars(lean)) == list(vars(built))  # the same stored form
    assert lean.name == "Ana" and vars(unnamed)["name"] is None  # type: ignore[attr-defined]
    assert log.version == 3 and log.modified_on == unnamed.timestamp
    assert list(log.pending) == [lean.message_id, unnamed.message_id]  # type: ignore[attr-defined]


def test_a_checked_message_is_recorded_as_add_message_records_it_sent_when_added() -> None:
    log, _ = _log_with(0)
    log.collect_events()
    log.add_checked_message("user", "hello", None, " Ana ")
    log.add_message("user", "hello", None, 100, " Ana ")
    checked, unchecked = log.collect_events()
    assert vars(checked).keys() == vars(unchecked).keys()
    assert (checked.content, checked.name) == ("hello", "Ana")  # type: ignore[attr-defined]
    assert checked.sent_at == checked.timestamp and checked.sent_at.tzinfo is UTC  # type: ignore[attr-defined]
    assert log.version == 3 and log.modified_on == unchecked.timestamp


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


def test_a_request_with_nothing_buffered_and_nothing_running_records_nothing() -> None:
    log, _ = _log_with(0)
    log.collect_events()
    assert not log.request_processing("t1", "manual")
    assert log.collect_events() == [] and log.requested == {}


def test_a_request_kept_though_empty_is_recorded_and_completes_at_once_when_started() -> None:
    """For a caller who hands the task's id to others: they find it in the log."""
    log, _ = _log_with(0)
    log.collect_events()
    assert log.request_processing("t1", "manual", keep_empty=True)
    assert log.start_next() == ("t1", "manual", [])
    names = [type(e).__name__ for e in log.collect_events()]
    assert names == ["ProcessingRequested", "ProcessingStarted", "KnowledgeExtracted"]
    assert log.requested == {} and log.open_tasks == {}


def test_a_task_that_found_nothing_to_do_stands_for_the_next_until_something_is_written() -> None:
    """Asking an idle user again and again records nothing more: the quiet task is it."""
    log, _ = _log_with(0)
    assert log.quiet_since() is None
    log.request_processing("t1", "manual", keep_empty=True)
    log.start_next()
    assert log.quiet_since() == "t1"
    assert Snapshot.take(log).mutate(None).quiet_since() == "t1"
    log.add_message("user", "I moved to Oslo.", None, 10_000)
    assert log.quiet_since() is None


def test_a_snapshot_from_before_quiet_tasks_is_upgraded() -> None:
    log, _ = _log_with(0)
    for name in ("quiet_task", "quiet_at"):
        del log.__dict__[name]
    log.upgrade()
    assert log.quiet_since() is None


@pytest.mark.parametrize("lacking", [("failed_last", "refused_last"), ("failed_last",)])
def test_a_snapshot_from_before_the_last_runs_end_was_kept_is_upgraded(
    lacking: tuple[str, ...],
) -> None:
    """Snapshots taken before the log kept how its last run ended (or kept only whether it
    was refused, and it was not) are upgraded to a last run that neither failed nor was
    refused, and said not whole: only the events before them tell how it ended."""
    log, _ = _log_with(1)
    for name in lacking:
        del log.__dict__[name]
    restored = Snapshot.take(log).mutate(None)
    assert restored.upgrade() is False
    assert (restored.failed_last, restored.refused_last) == (False, False)


def test_a_snapshot_that_kept_a_refusal_but_not_the_failure_is_upgraded_to_a_failed_run() -> None:
    """A snapshot taken between the log keeping refusals and keeping failures, its last run
    refused, tells how that run ended: it failed, and the state is whole."""
    log, _ = _log_with(1)
    log.refused_last = True
    del log.__dict__["failed_last"]
    restored = Snapshot.take(log).mutate(None)
    assert restored.upgrade() is True
    assert (restored.failed_last, restored.refused_last) == (True, True)


def test_a_snapshot_from_before_processing_requests_and_versions_is_upgraded() -> None:
    """The first memvees' snapshots hold no ``requested`` (processing requests came later)
    nor ``knowledge_versions`` (re-extraction came later): upgraded, the log takes a
    request, runs it and counts a re-extracted version, instead of being broken."""
    log, ids = _log_with(2)
    for name in ("requested", "knowledge_versions"):
        del log.__dict__[name]
    restored = Snapshot.take(log).mutate(None)
    restored.upgrade()
    assert restored.request_processing("t1", "manual")
    assert restored.start_next() == ("t1", "manual", ids)
    assert restored.knowledge_versions == {}


def test_a_task_that_finds_nothing_left_when_it_starts_completes_at_once() -> None:
    log, _ = _log_with(1)
    _start(log, "t1")
    log.request_processing("t2", "manual")
    log.record_knowledge("t1", [], "offline")
    log.collect_events()
    assert log.start_next() == ("t2", "manual", [])
    names = [type(e).__name__ for e in log.collect_events()]
    assert names == ["ProcessingStarted", "KnowledgeExtracted"]
    assert log.open_tasks == {} and log.requested == {} and log.running == {}


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


def test_what_an_extractor_says_that_no_database_can_store_is_repaired_and_noted() -> None:
    log, ids = _log_with(2)
    _start(log, "t1")
    facts = [
        ExtractedFact("User likes \ud800tea\x00.", (ids[0], "m\ud800")),
        ExtractedFact("User lives in Oslo.", (ids[1],), "update", "k\x00"),
        ExtractedFact("\x00", (ids[1],)),
    ]
    entries = log.record_knowledge("t1", facts, "x" * 80, "m\x00" * 100 + "z" * 100)
    tea, oslo = entries
    assert tea["text"] == "User likes \ufffdtea."
    assert tea["repairs"] == [
        "characters no database stores as text were dropped (NUL) or replaced",
        "dropped citations outside the batch: m\ufffd",
    ]
    assert oslo["repairs"] == ["was 'update' of k, not a current entry; recorded as new"]
    (extracted,) = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted.repairs == ["fact 2 had no text; it was dropped"]
    assert extracted.extractor == "x" * 64 and extracted.model == "m" * 100 + "z" * 28
    assert log.knowledge_count == 2


def test_a_failure_is_recorded_with_its_text_made_storable() -> None:
    log, ids = _log_with(1)
    _start(log, "t1")
    log.record_failure("t1", "bad \ud800 answer", extractor="e\x00", model=3)  # type: ignore[arg-type]
    (failed,) = [e for e in log.collect_events() if isinstance(e, UserLog.ProcessingFailed)]
    assert failed.error == "bad \ufffd answer"
    assert list(log.pending) == ids


def test_failure_returns_the_messages_to_the_buffer_in_log_order() -> None:
    log, ids = _log_with(2)
    _start(log, "t1")
    later = log.add_message("user", "later", None, 100)
    log.record_failure("t1", "boom")
    assert list(log.pending) == [*ids, later]
    assert log.open_tasks == {}


def test_a_failure_met_while_the_api_was_down_returns_its_batch_whole() -> None:
    """An outage halves no batch: the next run takes all four messages again, where a
    failure that may be the batch's own halves it."""
    log, ids = _log_with(4)
    _start(log, "t1")
    log.record_failure("t1", "HTTP 529 overloaded; a harmless request failed too", whole=True)
    assert log.caps == {} and log.parked == {}
    assert list(log.pending) == ids and log.open_tasks == {}
    assert list(_start(log, "t2")) == ids
    log.record_failure("t2", "HTTP 500")
    assert log.caps == dict.fromkeys(ids, 2)


def test_messages_that_failed_alone_take_turns_the_one_that_failed_longest_ago_first() -> None:
    """Two messages wait after failing alone, neither blamed: the one that failed alone
    longest ago goes next, so one that keeps failing in a way never blamed on it (an
    overloaded API) does not keep the other waiting for good, whatever their log order."""
    one = BatchLimits(max_messages=1)
    log, (first, second) = _log_with(2)
    claimed = []
    for task_id in ("t1", "t2", "t3", "t4"):
        assert log.request_processing(task_id, "manual")
        started = log.start_next(one)
        assert started is not None
        claimed.append(started[2])
        log.record_failure(task_id, "HTTP 529 overloaded", limits=one)
    assert claimed == [[first], [second], [first], [second]]
    assert log.parked == {first: 0, second: 0} and list(log.pending) == [first, second]


def _fail_whole(log: UserLog, task_id: str) -> list[str]:
    """Start ``task_id`` and fail its batch as one met while the API was down: its claim."""
    claimed = _start(log, task_id)
    log.record_failure(task_id, "HTTP 500; a harmless request failed too", whole=True)
    return claimed


def test_a_batch_left_whole_three_failures_in_a_row_is_split_at_the_fourth() -> None:
    """However the workers keep judging the API down (a harmless request misread, another
    batch's failure, a refused account, a pause), the log splits the batch after
    WHOLE_FAILURES_IN_A_ROW failures left it whole: a message failing of its own frees
    the messages beside it. The stored event says so, so a replay folds the same."""
    log, ids = _log_with(8)
    claims = [_fail_whole(log, f"t{run}") for run in range(WHOLE_FAILURES_IN_A_ROW + 1)]
    assert claims == [ids] * (WHOLE_FAILURES_IN_A_ROW + 1)
    history = log.collect_events()
    failed = [e for e in history if isinstance(e, UserLog.ProcessingFailed)]
    assert [e.whole for e in failed] == [True] * WHOLE_FAILURES_IN_A_ROW + [False]
    replayed: UserLog | None = None
    for event in history:
        replayed = event.mutate(replayed)
    assert replayed is not None and replayed.caps == log.caps == dict.fromkeys(ids, 4)
    assert len(_start(log, "after")) == 4


def test_a_batch_extracted_or_split_ends_a_row_of_failures_left_whole() -> None:
    """The row counts failures left whole one after another: an outage a week after
    another, with batches extracted in between, starts a row of its own."""
    log, _ = _log_with(8)
    for run in range(WHOLE_FAILURES_IN_A_ROW):
        _fail_whole(log, f"t{run}")
    _start(log, "ok")
    log.record_knowledge("ok", [], "offline")
    assert log.failed_whole == 0 and log.keeps_failures_whole
    later = [log.add_message("user", f"later {i}", None, 100) for i in range(4)]
    for run in range(WHOLE_FAILURES_IN_A_ROW):
        assert _fail_whole(log, f"u{run}") == later
    assert log.caps == {} and not log.keeps_failures_whole
    _start(log, "split")
    log.record_failure("split", "HTTP 500")
    assert log.caps == dict.fromkeys(later, 2)
    assert log.failed_whole == 0 and log.keeps_failures_whole


def test_a_failure_stored_before_the_whole_field_existed_still_splits_its_batch() -> None:
    """A ProcessingFailed an older memvee stored has no ``whole``: decoded as the event
    store decodes it (its state as the instance's fields), it folds as it always did."""
    log, ids = _log_with(4)
    _start(log, "t1")
    history = log.collect_events()
    log.record_failure("t1", "HTTP 500")
    (failed,) = log.collect_events()
    older_state = {name: value for name, value in vars(failed).items() if name != "whole"}
    older: UserLog.ProcessingFailed = object.__new__(UserLog.ProcessingFailed)
    object.__setattr__(older, "__dict__", older_state)
    replayed: UserLog | None = None
    for event in [*history, older]:
        replayed = event.mutate(replayed)
    assert replayed is not None and replayed.caps == log.caps == dict.fromkeys(ids, 2)


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


# ------------------------------------------------------------------ bounded batches

LIMITS = BatchLimits(max_messages=4, max_tokens=1_000, max_attempts=3)


def _names(log: UserLog) -> list[str]:
    return [type(e).__name__ for e in log.collect_events()]


def _run_task(log: UserLog, task_id: str, poison: set[str], **fail: bool) -> list[list[str]]:
    """Run ``task_id`` to its end, failing every batch that holds a poisoned message
    (``fail`` is passed to record_failure); returns the batches in the order they ran."""
    log.request_processing(task_id, "manual")
    started = log.start_next(LIMITS)
    assert started is not None
    batches = []
    while task_id in log.open_tasks:
        batch = list(log.open_tasks[task_id])
        batches.append(batch)
        if poison & set(batch):
            log.record_failure(task_id, "bad answer", limits=LIMITS, **fail)
            if not fail.get("repeats"):
                break
        else:
            log.record_knowledge(task_id, [], "x", limits=LIMITS)
    return batches


def test_a_task_cuts_batches_of_chinese_text_near_max_tokens() -> None:
    """A Chinese character costs Claude about a token: 300 of them weigh 312 tokens with
    the envelope, so three such messages fill a batch of 1,000 tokens."""
    log = UserLog.register("alice")
    ids = [
        log.add_message("user", f"{i}" + "我住在北京而周末去爬山。" * 25, None, 1_000)
        for i in range(6)
    ]
    assert _run_task(log, "t1", set()) == [ids[0:3], ids[3:6]]


def test_a_task_covers_what_was_buffered_in_batches_of_at_most_max_messages() -> None:
    log, ids = _log_with(10)
    log.collect_events()
    batches = _run_task(log, "t1", set())
    assert batches == [ids[0:4], ids[4:8], ids[8:10]]
    assert log.pending == {} and log.running == {}
    events = log.collect_events()
    started = [e for e in events if isinstance(e, UserLog.ProcessingStarted)]
    extracted = [e for e in events if isinstance(e, UserLog.KnowledgeExtracted)]
    assert [e.batch for e in started] == [1, 2, 3]
    assert [e.final for e in extracted] == [False, False, True], "only the last batch ends it"


def test_a_batch_stops_before_the_token_budget_but_takes_one_long_message_alone() -> None:
    log = UserLog.register("alice")
    ids = [log.add_message("user", "x" * 1_600, None, 10_000) for _ in range(3)]
    ids.append(log.add_message("user", "x" * 8_000, None, 10_000))
    batches = _run_task(log, "t1", set())
    assert batches == [ids[0:2], [ids[2]], [ids[3]]]


def test_messages_added_while_a_task_runs_are_left_for_the_next_task() -> None:
    log, ids = _log_with(5)
    log.request_processing("t1", "manual")
    log.start_next(LIMITS)
    later = log.add_message("user", "later", None, 100)
    log.record_knowledge("t1", [], "x", limits=LIMITS)
    assert list(log.open_tasks["t1"]) == [ids[4]]
    log.record_knowledge("t1", [], "x", limits=LIMITS)
    assert "t1" not in log.open_tasks and list(log.pending) == [later]


def test_a_batch_that_fails_the_same_way_is_split_until_the_culprit_is_quarantined() -> None:
    log, ids = _log_with(8)
    poison = ids[5]
    batches = _run_task(log, "t1", {poison}, repeats=True)
    assert batches[:5] == [ids[0:4], ids[4:8], ids[4:6], [ids[4]], [ids[5]]]
    assert batches[5] == ids[6:8], "the messages after the culprit are not held up"
    assert batches[6:] == [[poison], [poison]]
    assert log.quarantined == {poison: 7} and log.pending == {} and log.running == {}
    assert log.caps == {} and log.parked == {}
    quarantined = [e for e in log.collect_events() if isinstance(e, UserLog.MessagesQuarantined)]
    assert [(q.message_ids, q.attempts, q.final) for q in quarantined] == [([poison], 3, True)]


def test_requeue_puts_quarantined_messages_back_in_log_order() -> None:
    log, ids = _log_with(3)
    _run_task(log, "t1", {ids[0]}, repeats=True)
    assert list(log.quarantined) == [ids[0]]
    later = log.add_message("user", "later", None, 100)
    assert log.requeue() == [ids[0]]
    assert list(log.pending) == [ids[0], later] and log.quarantined == {}
    assert _names(log)[-1] == "MessagesRequeued"
    with pytest.raises(InvalidInputError, match="no quarantined message"):
        log.requeue(["nope"])
    assert log.requeue() == [] and _names(log) == []


def test_a_failure_that_may_pass_ends_the_task_and_splits_the_batch_for_the_next_run() -> None:
    log, ids = _log_with(4)
    batches = _run_task(log, "t1", {ids[3]})
    assert batches == [ids[0:4]]
    assert "t1" not in log.running and list(log.pending) == ids
    assert log.caps == {m: 2 for m in ids}
    assert _names(log)[-1] == "ProcessingFailed"
    assert _run_task(log, "t2", set())[0] == ids[0:2]


def test_a_lone_message_failing_in_a_way_that_may_pass_counts_only_when_blamed() -> None:
    log, ids = _log_with(2)
    log.caps = {ids[0]: 1}
    _run_task(log, "t1", {ids[0]})
    assert log.parked == {ids[0]: 0}, "parked, but the first such failure is not counted"
    assert _run_task(log, "t2", {ids[0]}) == [[ids[1]], [ids[0]]], "parked messages go last"
    assert log.parked == {ids[0]: 0}
    for attempt in (1, 2):
        _run_task(log, f"b{attempt}", {ids[0]}, blamed=True)
        assert log.parked == {ids[0]: attempt}
    _run_task(log, "b3", {ids[0]}, blamed=True)
    assert log.quarantined == {ids[0]: 2} and log.parked == {}


def test_an_interrupted_batch_is_not_split() -> None:
    log, ids = _log_with(4)
    _start(log, "t1")
    log.close_interrupted("crash")
    assert log.caps == {} and log.parked == {} and log.running == {}
    assert list(log.pending) == ids


def _cut_between_batches(n: int) -> tuple[UserLog, list[str]]:
    """A log of ``n`` messages whose one task's first batch was recorded, replayed
    without the next batch's claim (written with it): where an import that stopped
    there, or a file cut there, leaves the log."""
    log, ids = _log_with(n)
    log.request_processing("t1", "manual")
    log.start_next(LIMITS)
    log.record_knowledge("t1", [], "x", limits=LIMITS)
    events = log.collect_events()
    assert isinstance(events[-1], UserLog.ProcessingStarted) and events[-1].batch == 2
    cut = None
    for event in events[:-1]:
        cut = event.mutate(cut)
    assert isinstance(cut, UserLog)
    return cut, ids


def test_a_task_cut_between_two_batches_is_closed_as_interrupted_its_scope_left_buffered() -> None:
    """No owner runs a task with no batch out (a batch's outcome and the next batch's
    claim are written together): closing what a crash left closes it too, and the rest
    of its scope, buffered already, goes to the next task."""
    log, ids = _cut_between_batches(10)
    assert log.open_tasks == {} and list(log.running) == ["t1"]
    assert log.close_interrupted("crashed") == ["t1"]
    interrupted = log.collect_events()[-1]
    assert isinstance(interrupted, UserLog.ProcessingInterrupted)
    assert log.running == {} and log.started_tasks == []
    assert list(log.pending) == ids[4:]
    assert _run_task(log, "t2", set()) == [ids[4:8], ids[8:10]]


def test_a_task_cut_between_two_batches_can_be_closed_by_name_and_an_import_may_hold_that() -> None:
    log, _ = _cut_between_batches(6)
    log.check_recordable(
        UserLog.ProcessingInterrupted(
            originator_id=log.id,
            originator_version=log.version + 1,
            timestamp=UserLog.ProcessingInterrupted.create_timestamp(),
            task_id="t1",
            reason="crashed",
        )
    )
    assert log.close_interrupted("crashed", ["t1"]) == ["t1"]
    with pytest.raises(UnknownTaskError):
        log.close_interrupted("crashed", ["t1"])


def test_splits_and_quarantine_survive_a_snapshot() -> None:
    log, ids = _log_with(6)
    _run_task(log, "t1", {ids[1]}, repeats=True)
    log.add_message("user", "later", None, 100)
    _start(log, "t2")
    restored = Snapshot.take(log).mutate(None)
    assert isinstance(restored, UserLog)
    for name in ("pending", "quarantined", "running", "open_tasks", "weights", "caps", "parked"):
        assert getattr(restored, name) == getattr(log, name), name


def test_a_snapshot_from_before_bounded_batches_is_upgraded() -> None:
    log, ids = _log_with(3)
    for name in ("weights", "caps", "parked", "quarantined", "running"):
        del log.__dict__[name]
    log.upgrade()
    assert _run_task(log, "t1", set()) == [ids]


def test_message_ids_sort_in_the_order_written_and_their_short_forms_tell_them_apart() -> None:
    """Ids ordered by time keep one commit's messages together in the indexes; their
    first digits are shared, so the short form shown to people is the random end."""
    _, ids = _log_with(500)
    assert ids == sorted(ids)
    assert len({short_message_id(i) for i in ids}) == len(ids)


def test_a_failed_batch_and_a_quarantine_record_the_cache_tokens_they_spent() -> None:
    spent = TokenUsage(
        input_tokens=40, output_tokens=5, cache_read_tokens=900, cache_write_tokens=70
    )
    log, _ = _log_with(2)
    _start(log, "t1")
    log.record_failure("t1", "cut at max_tokens", repeats=True, usage=spent, limits=LIMITS)
    log.record_failure("t1", "cut at max_tokens", repeats=True, usage=spent, limits=LIMITS)
    failures = [
        e
        for e in log.collect_events()
        if isinstance(e, UserLog.BatchFailed | UserLog.MessagesQuarantined)
    ]
    assert failures and all(
        (e.cache_read_tokens, e.cache_write_tokens) == (900, 70) for e in failures
    )


def test_a_reextraction_request_is_recorded_once_and_kept_by_the_state() -> None:
    """Two runs collecting one Message Batch may both decide on a request: the state
    folds each recorded request id, and a second record of it is refused."""
    log, ids = _log_with(1)
    facts = [ExtractedFact("User is x", (ids[0],))]
    log.record_reextraction("v2", ids, facts, "offline", request_id="batch:r1")
    assert log.recorded_request("batch:r1") and not log.recorded_request("batch:r2")
    log.collect_events()
    with pytest.raises(ConflictError, match="recorded already"):
        log.record_reextraction("v2", ids, facts, "offline", request_id="batch:r1")
    assert log.collect_events() == []
    restored = Snapshot.take(log).mutate(None)
    assert isinstance(restored, UserLog)
    assert restored.reextraction_requests == {"batch:r1": "v2"}
    del restored.__dict__["reextraction_requests"]  # a snapshot from before
    restored.upgrade()
    assert restored.reextraction_requests == {}


def test_a_reextraction_of_messages_the_version_came_to_cover_since_its_plan_is_refused() -> None:
    """Two runs of one user into one version at once: the one recording second is refused
    for the messages the first recorded after both planned, so no fact is there twice; a
    promotion of the version's name since leaves them uncovered again."""
    log, ids = _log_with(3)
    facts = [ExtractedFact("User is x", (ids[0],))]
    log.record_reextraction("v2", ids[:2], facts, "offline")
    since = log.collect_events()
    with pytest.raises(AlreadyReextractedError, match="2 of the batch's 3 messages") as refused:
        log.record_reextraction("v2", ids, facts, "offline", since=since)
    assert refused.value.message_ids == tuple(ids[:2])
    assert log.collect_events() == []
    log.record_reextraction("v3", ids, facts, "offline", since=since)
    since += log.collect_events()
    log.promote("v2", since)
    later = [*since, *log.collect_events()]
    assert log.record_reextraction("v2", ids, facts, "offline", since=later)


def test_only_a_reextraction_call_failing_of_its_own_pins_its_messages() -> None:
    """The next run sends one a call only the messages of a failed re-extraction call that
    repeats: one that may pass (the API busy after an answer cut short) is kept for the
    tokens it spent, and pins none."""
    log, ids = _log_with(3)
    spent = TokenUsage(input_tokens=700, output_tokens=4096)
    log.record_reextraction_failure("v2", ids, "HTTP 529 overloaded", spent)
    assert log.record_reextraction_failure("v2", ids[:1], "refused", TokenUsage(), repeats=True)
    events = log.collect_events()
    assert [e.repeats for e in events if isinstance(e, UserLog.ReextractionFailed)] == [
        False,
        True,
    ]
    assert log.failed_reextraction("v2", events) == {ids[0]}


def test_a_reextraction_failure_that_may_pass_is_kept_as_evidence_and_splits_the_next_run() -> None:
    """A call that failed in a way that may pass is recorded though it spent nothing: the
    next run reads it among the version's calls, and sends its messages in halves (a
    lone one alone); a promotion of the version's name clears what came before."""
    log, ids = _log_with(5)
    assert log.record_reextraction_failure("v2", ids, "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction("v2", ids[3:4], [], "x")
    log.record_reextraction_failure("v2", ids[:2], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[4:], "HTTP 500", TokenUsage(), may_pass=True)
    events = log.collect_events()
    assert log.reextraction_calls("v2", events) == [
        (tuple(ids), True),
        (tuple(ids[3:4]), False),
        (tuple(ids[:2]), True),
        (tuple(ids[4:]), True),
    ]
    assert log.reextraction_caps("v2", events) == {
        ids[0]: 1,
        ids[1]: 1,
        ids[2]: 3,
        ids[3]: 3,
        ids[4]: 1,
    }
    assert log.failed_reextraction("v2", events) == set(), "none failed of its own"
    assert log.reextraction_caps("v3", events) == {}


def test_the_two_failed_calls_of_an_outage_are_kept_but_are_no_evidence_for_the_next_run() -> None:
    """The two failed calls a check names as met in an outage (a harmless request failed
    after them too) stay recorded, with their tokens, but neither is read among the
    version's calls, so neither halves a batch; a failed call before those still does."""
    log, ids = _log_with(6)
    log.record_reextraction_failure("v2", ids[:2], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction("v2", ids[5:], [], "x")
    log.record_reextraction_failure("v2", ids[2:4], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[4:5], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_check(
        "v2", [ids[2:4], ids[4:5]], TokenUsage(input_tokens=9, output_tokens=1), Outage()
    )
    events = log.collect_events()
    assert len([e for e in events if isinstance(e, UserLog.ReextractionFailed)]) == 3
    (check,) = [e for e in events if isinstance(e, UserLog.ReextractionChecked)]
    assert (check.input_tokens, check.output_tokens) == (9, 1)
    assert log.reextraction_calls("v2", events) == [(tuple(ids[:2]), True), (tuple(ids[5:]), False)]
    assert log.reextraction_caps("v2", events) == {ids[0]: 1, ids[1]: 1}


def test_an_outage_leaves_out_the_calls_it_names_whatever_another_run_logged_between() -> None:
    """Two runs of the user at once: run A's two failed calls (an outage) have run B's
    failed call between them. The check names A's calls, so B's stays evidence and halves
    its batch, while neither of A's does."""
    log, ids = _log_with(6)
    log.record_reextraction_failure("v2", ids[0:2], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[2:4], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[4:6], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_check("v2", [ids[0:2], ids[4:6]], TokenUsage(), Outage())
    events = log.collect_events()
    assert log.reextraction_calls("v2", events) == [(tuple(ids[2:4]), True)]
    assert log.reextraction_caps("v2", events) == {ids[2]: 1, ids[3]: 1}


def test_a_check_whose_api_key_was_refused_leaves_out_the_calls_it_names_as_an_outage_does() -> (
    None
):
    """A harmless request refused its credentials (401, 403) shows every request refused:
    like an outage, neither failed call it names is evidence against its messages, though
    both stay recorded; the refusal it met is kept as its error. It is stored as an outage
    too, so that an older memvee, which knows no ``refused``, leaves the calls out as well."""
    log, ids = _log_with(4)
    log.record_reextraction_failure("v2", ids[0:2], "HTTP 401", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[2:4], "HTTP 401", TokenUsage(), may_pass=True)
    log.record_reextraction_check(
        "v2", [ids[0:2], ids[2:4]], TokenUsage(), CredentialsRefused("HTTP 401")
    )
    events = log.collect_events()
    (check,) = [e for e in events if isinstance(e, UserLog.ReextractionChecked)]
    assert check.refused and check.outage and check.error == "HTTP 401"
    assert check.verdict == CredentialsRefused("HTTP 401")
    assert log.reextraction_calls("v2", events) == []
    assert log.reextraction_caps("v2", events) == {}


def test_a_check_that_was_answered_or_told_nothing_leaves_the_failed_calls_as_evidence() -> None:
    """A harmless request answered, or failing in a way that would repeat, says nothing
    against the failed calls' messages being at fault: both calls still halve batches."""
    log, ids = _log_with(4)
    log.record_reextraction_failure("v2", ids[0:2], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_failure("v2", ids[2:4], "HTTP 500", TokenUsage(), may_pass=True)
    log.record_reextraction_check("v2", [ids[0:2], ids[2:4]], TokenUsage(), Answered())
    log.record_reextraction_check(
        "v2", [ids[0:2], ids[2:4]], TokenUsage(), FailedTellingNothing("ValueError: a bug")
    )
    events = log.collect_events()
    assert [c for c, _ in log.reextraction_calls("v2", events)] == [
        tuple(ids[0:2]),
        tuple(ids[2:4]),
    ]


def test_a_message_blamed_for_a_failure_that_may_pass_twice_is_pinned_once_not_before() -> None:
    """A server error blamed on a call is kept though it spent nothing; a message blamed so
    a second time is sent in a call of its own, until a promotion of the version."""
    log, ids = _log_with(3)
    assert log.record_reextraction_failure("v2", ids, "errored", TokenUsage(), blamed=True)
    assert log.failed_reextraction("v2", [*log.pending_events]) == set()
    log.record_reextraction_failure("v2", ids[1:], "errored", TokenUsage(), blamed=True)
    assert log.failed_reextraction("v2", [*log.pending_events]) == set(ids[1:])
    log.record_reextraction("v2", ids[:1], [], "x")
    log.promote("v2", [*log.pending_events])
    log.record_reextraction_failure("v2", ids[1:2], "errored", TokenUsage(), blamed=True)
    assert log.failed_reextraction("v2", [*log.pending_events]) == set()


def test_a_message_is_left_out_once_it_failed_of_its_own_in_a_call_of_its_own() -> None:
    """A message failing of its own with others is pinned, not left out; failing so alone,
    or blamed alone once pinned, it is left out of the version, until a promotion."""
    log, ids = _log_with(4)
    log.record_reextraction_failure("v2", ids[:2], "refused", TokenUsage(), repeats=True)
    assert log.left_out_of("v2", [*log.pending_events]) == set()
    log.record_reextraction_failure("v2", ids[:1], "refused", TokenUsage(), repeats=True)
    log.record_reextraction_failure("v2", ids[2:3], "errored", TokenUsage(), blamed=True)
    assert log.left_out_of("v2", [*log.pending_events]) == {ids[0]}
    log.record_reextraction_failure("v2", ids[2:3], "errored", TokenUsage(), blamed=True)
    assert log.left_out_of("v2", [*log.pending_events]) == {ids[0], ids[2]}
    log.record_reextraction("v2", ids[3:], [], "x")
    log.promote("v2", [*log.pending_events])
    assert log.left_out_of("v2", [*log.pending_events]) == set()


def test_a_reextraction_failure_stored_before_repeats_was_kept_loads_as_one_that_may_pass(
    store: EventStore,
) -> None:
    """Events of older logs have no ``repeats``: they load, and pin no message."""
    log, ids = _log_with(2)
    log.record_reextraction_failure("v2", ids, "cut short", TokenUsage(input_tokens=5))
    store.append([log.collect_events()])
    table = store._events.name
    with store.engine.begin() as connection:
        rows = connection.exec_driver_sql(f"SELECT rowid, state FROM {table}").all()
        older = [(rowid, json.loads(state)) for rowid, state in rows]
        stripped = [rowid for rowid, state in older if "repeats" in state]
        assert len(stripped) == 1
        for rowid, state in older:
            if state.pop("repeats", None) is not None:
                dumped = json.dumps(state, separators=(",", ":")).encode()
                connection.exec_driver_sql(
                    f"UPDATE {table} SET state = ? WHERE rowid = ?", (dumped, rowid)
                )
    events = store.events_of("alice")
    (failed,) = [e for e in events if isinstance(e, UserLog.ReextractionFailed)]
    assert failed.repeats is False and failed.input_tokens == 5
    assert store.load("alice").failed_reextraction("v2", events) == set()  # type: ignore[union-attr]


def test_an_extraction_stored_before_repeats_were_noted_loads_as_one_that_repeated_nothing(
    store: EventStore,
) -> None:
    """Events of older logs have no ``repeated``: they load, their repeats noting none."""
    log, ids = _log_with(1)
    _start(log, "t1")
    log.record_knowledge("t1", [ExtractedFact("User is m0.", (ids[0],))], "x")
    store.append([log.collect_events()])
    table = store._events.name
    with store.engine.begin() as connection:
        rows = connection.exec_driver_sql(f"SELECT rowid, state FROM {table}").all()
        older = [(rowid, json.loads(state)) for rowid, state in rows]
        assert len([rowid for rowid, state in older if "repeated" in state]) == 1
        for rowid, state in older:
            if state.pop("repeated", "absent") != "absent":
                dumped = json.dumps(state, separators=(",", ":")).encode()
                connection.exec_driver_sql(
                    f"UPDATE {table} SET state = ? WHERE rowid = ?", (dumped, rowid)
                )
    (extracted,) = [
        e for e in store.events_of("alice") if isinstance(e, UserLog.KnowledgeExtracted)
    ]
    assert "repeated" not in vars(extracted) and extracted.repeated is None
    assert store.load("alice").knowledge_count == 1  # type: ignore[union-attr]


def _decided_history() -> list[UserLog.Event]:
    """Every kind of event the commands emit about tasks and knowledge: batches that
    split and quarantine, an update that supersedes, an invalidation, a re-extraction
    promoted with messages returned, an interrupted task."""
    log, ids = _log_with(8)
    _run_task(log, "t1", {ids[5]}, repeats=True)
    log.requeue()
    facts = [ExtractedFact("User lives in Oslo", (ids[0],)), ExtractedFact("User is x", (ids[1],))]
    assert log.request_processing("t2", "manual") and log.start_next() is not None
    first = log.record_knowledge("t2", facts, "x")
    log.add_message("user", "moved", None, 100)
    log.add_message("user", "quit", None, 100)
    assert log.request_processing("t3", "manual") and log.start_next() is not None
    moved, quit_ = log.open_tasks["t3"]
    changes = [
        ExtractedFact("User lives in Bergen", (moved,), "update", first[0]["entry_id"]),
        ExtractedFact("User quit x", (quit_,), "invalidate", first[1]["entry_id"]),
    ]
    log.record_knowledge("t3", changes, "x", usage=TokenUsage(10, 2))
    log.record_reextraction("v2", ids[:2], [ExtractedFact("User is y", (ids[1],))], "x")
    log.record_reextraction_failure("v2", ids[2:3], "refused", TokenUsage(5, 0), repeats=True)
    log.add_message("user", "waiting", None, 100)
    log.promote("v2", [*log.pending_events])
    _start(log, "t4")
    log.close_interrupted("stopped")
    return [*log.collect_events()]


def test_a_decision_counts_the_events_it_writes_after_its_first_and_only_those_continue_it() -> (
    None
):
    """A decision's events are committed together. An extraction counts those it writes
    after it (the ends of the entries it replaced, its task's next batch), a promotion
    the messages it returned; only such events continue a decision, so a log cut before
    them is known to be cut, and an import never commits half of one."""
    log, ids = _log_with(6)
    log.request_processing("t1", "manual")
    log.start_next(LIMITS)
    opening = log.collect_events()
    oslo = log.record_knowledge(
        "t1", [ExtractedFact("User lives in Oslo", (ids[0],))], "x", limits=LIMITS
    )
    decisions = [log.collect_events()]
    bergen = ExtractedFact("User lives in Bergen", (ids[4],), "update", oslo[0]["entry_id"])
    log.record_knowledge("t1", [bergen], "x", limits=LIMITS)
    decisions.append(log.collect_events())
    log.record_reextraction("v2", ids[:1], [ExtractedFact("User was in Oslo", (ids[0],))], "x")
    decisions.append(log.collect_events())
    log.promote("v2", [*opening, *(e for decision in decisions for e in decision)])
    decisions.append(log.collect_events())
    kinds = [[type(e).__name__ for e in decision] for decision in decisions]
    assert kinds == [
        ["KnowledgeExtracted", "ProcessingStarted"],
        ["KnowledgeExtracted", "KnowledgeSuperseded"],
        ["KnowledgeReextracted"],
        ["KnowledgeVersionPromoted", "MessagesReturned"],
    ]
    for first, *after in decisions:
        assert first.followed_by == len(after)  # type: ignore[attr-defined]
        assert not continues_decision(first) and all(map(continues_decision, after))
    assert not any(map(continues_decision, opening))


def test_every_event_the_commands_emit_is_recordable_where_they_emitted_it() -> None:
    """An import replays what a log's own commands wrote: none of it is refused."""
    history = _decided_history()
    kinds = {type(e).__name__ for e in history}
    assert {"MessagesQuarantined", "KnowledgeSuperseded", "KnowledgeInvalidated"} <= kinds
    assert {"ReextractionFailed", "MessagesReturned", "ProcessingInterrupted"} <= kinds
    log = None
    for event in history:
        if log is not None:
            log.check_recordable(event)
        log = event.mutate(log)


def _recordable(history: list[UserLog.Event], index: int, **changed: object) -> None:
    """Check ``history[index]``, changed by ``changed``, on the log replayed before it."""
    log = None
    for event in history[:index]:
        log = event.mutate(log)
    assert log is not None
    log.check_recordable(replace(history[index], **changed))


def _index(history: list[UserLog.Event], kind: type, nth: int = 0) -> int:
    return [i for i, e in enumerate(history) if isinstance(e, kind)][nth]


def test_an_event_the_commands_could_not_have_emitted_there_is_not_recordable() -> None:
    """What an edited export says is refused before a replay would fold it in: an
    outcome covering part of its batch (the rest would be in no state a run covers),
    entries citing messages outside their batch or none, an entry id given twice, an
    end in a version that does not hold the entry, a promotion miscounting, messages
    returned while still buffered, tokens no count can be, a task closed that never ran."""
    history = _decided_history()
    extracted = _index(history, UserLog.KnowledgeExtracted, -1)
    entries = history[extracted].entries  # type: ignore[attr-defined]
    cases: list[tuple[int, dict[str, object], str]] = [
        (
            extracted,
            {"message_ids": history[extracted].message_ids[:1]},
            "does not cover the 2 messages",
        ),  # type: ignore[attr-defined]
        (extracted, {"final": False}, "is not final: nothing of its scope waits"),
        (extracted, {"input_tokens": -1}, "input_tokens is -1, not a count of tokens"),
        (extracted, {"output_tokens": 2**63}, "not a count of tokens"),
        (extracted, {"entries": [{**entries[0], "source_message_ids": []}]}, "cites no message"),
        (extracted, {"entries": [{**entries[0], "source_message_ids": ["m"]}]}, "not of its batch"),
        (extracted, {"entries": [entries[0], entries[0]]}, "comes twice"),
        (extracted, {"repeated": {"e": ["m"]}}, "repeat of entry 'e' names 'm', a message not"),
        (extracted, {"repeated": {"e": []}}, "repeat of entry 'e' names no message"),
        (_index(history, UserLog.ProcessingStarted, 1), {"batch": 5}, "no batch 4 before"),
        (_index(history, UserLog.KnowledgeSuperseded), {"knowledge_version": "v2"}, "no valid"),
        (_index(history, UserLog.KnowledgeVersionPromoted), {"knowledge_count": 9}, "holds 1"),
        (_index(history, UserLog.KnowledgeReextracted), {"knowledge_version": "live"}, "live"),
        (_index(history, UserLog.ProcessingInterrupted), {"task_id": "t9"}, "no running task"),
    ]
    for index, changed, refusal in cases:
        with pytest.raises(InvalidInputError, match=refusal):
            _recordable(history, index, **changed)
    returned = _index(history, UserLog.MessagesReturned)
    waiting = [e for e in history if isinstance(e, UserLog.MessageAdded)][-1]
    buffered = waiting.message_id  # added before the promotion, still buffered
    with pytest.raises(InvalidInputError, match="is not processed"):
        _recordable(history, returned, message_ids=[buffered], versions=[1], weights=[1])


def test_a_fact_that_shows_nothing_is_dropped_as_a_blank_one_is() -> None:
    """Zero-width spaces and a braille blank read as no text at all: the fact is dropped
    and the repair noted, where it used to become an entry that shows nothing."""
    log, ids = _log_with(1)
    _start(log, "t1")
    facts = [
        ExtractedFact("\u200b\u2800\u200b", (ids[0],)),
        ExtractedFact(" \u3164\ufeff\u00ad ", (ids[0],)),
        ExtractedFact("User likes tea.\u200b", (ids[0],)),
    ]
    (kept,) = log.record_knowledge("t1", facts, "offline")
    assert kept["text"] == "User likes tea.\u200b"
    (extracted,) = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted.repairs == [
        "fact 0 showed no text (only characters that show nothing); it was dropped",
        "fact 1 showed no text (only characters that show nothing); it was dropped",
    ]
    assert log.knowledge_count == 1
