"""Each projection names the kinds of event it folds, and every path skips the others: so
an event of any other kind must leave its rows as they were and need none loaded."""

from __future__ import annotations

import copy
from random import Random
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from events import EVENT_CLASSES, ExtractedFact, UserLog
from projections import folds
from projections.folds import PROJECTIONS, Projection
from tests.support.log_operations import EVERY_OPERATION, LogDriver


def _logs_with_every_kind_of_event() -> list[list[Any]]:
    """Logs driven through random operations until each kind of event was recorded."""
    random = Random(13)
    logs: list[list[Any]] = []
    kinds: set[type] = set()
    while kinds != set(EVENT_CLASSES) and len(logs) < 200:
        driver = LogDriver(f"user-{len(logs)}")
        for _ in range(60):
            driver.perform(random.choice(EVERY_OPERATION))
        events = list(driver.log.collect_events())
        kinds.update(type(e) for e in events)
        logs.append(events)
    assert kinds == set(EVENT_CLASSES), "the operations no longer reach every kind of event"
    return logs


LOGS = _logs_with_every_kind_of_event()


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.table)
def test_an_event_a_projection_does_not_fold_changes_none_of_its_rows(
    projection: Projection,
) -> None:
    skipped = 0
    for events in LOGS:
        rows = projection.new_rows()
        for event in events:
            if type(event) in projection.folds:
                projection.evolve(rows, event)
                continue
            before = copy.deepcopy((rows.rows, rows.written))
            assert not projection.touches(event), f"{type(event).__name__} needs rows loaded"
            projection.evolve(rows, event)
            assert (rows.rows, rows.written) == before, f"{type(event).__name__} changed rows"
            skipped += 1
    assert skipped or projection.folds == set(EVENT_CLASSES)


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.table)
def test_folding_only_the_events_a_projection_names_gives_the_same_rows(
    projection: Projection,
) -> None:
    for events in LOGS:
        every, named = projection.new_rows(), projection.new_rows()
        for event in events:
            projection.evolve(every, event)
        for event in projection.of(events):
            projection.evolve(named, event)
        assert named.rows == every.rows


def test_an_earlier_start_of_an_entry_no_row_holds_changes_nothing() -> None:
    """As an UPDATE that matches no row: the rows may lack the entry (not loaded, or an
    imported log that names an entry it never had)."""
    (knowledge,) = [p for p in PROJECTIONS if p.table == "knowledge"]
    began = next(e for log in LOGS for e in log if isinstance(e, UserLog.KnowledgeBeganEarlier))
    rows = knowledge.new_rows()
    knowledge.evolve(rows, began)
    assert rows.rows == {} and not rows.written


def test_a_task_the_first_memvees_started_without_a_request_is_a_running_task() -> None:
    """The first memvees logged no ProcessingRequested: their task begins at its start,
    so that it is listed, and one cut short is found and closed as interrupted."""
    (tasks,) = [p for p in PROJECTIONS if p.table == "tasks"]
    log = UserLog.register("alice")
    said = log.add_message("user", "I live in Oslo", None, 100)
    assert log.request_processing("t1", "manual") and log.start_next() is not None
    started = next(e for e in log.collect_events() if isinstance(e, UserLog.ProcessingStarted))
    rows = tasks.new_rows()
    tasks.evolve(rows, started)
    assert rows.rows["t1"]["status"] == "RUNNING"
    assert rows.rows["t1"]["requested_at"] == rows.rows["t1"]["started_at"] == started.timestamp
    log.record_knowledge("t1", [ExtractedFact("User lives in Oslo", (said,))], "x")
    (extracted,) = log.collect_events()
    tasks.evolve(rows, extracted)
    assert rows.rows["t1"]["status"] == "COMPLETED"
    assert rows.rows["t1"]["knowledge_count"] == 1


def _extracted(log: UserLog, task_id: str, fact: ExtractedFact) -> list[dict[str, Any]]:
    """Run task ``task_id`` over what ``log`` buffered, answering ``fact``."""
    log.request_processing(task_id, "manual")
    log.start_next()
    return log.record_knowledge(task_id, [fact], "x")


def test_a_fact_said_again_is_cited_as_a_repeat_and_is_no_source_of_its_entry() -> None:
    """A repeat's message cites the entry it says again, marked as a repeat (what makes it
    outdated with the entry, and what ``explain`` lists apart), while the entry's row keeps
    its own sources: the repeat's exchange is not hidden behind the entry nor lifts it."""
    log = UserLog.register("ann")
    first = log.add_message("user", "I live in Oslo", None, 100)
    (oslo,) = _extracted(log, "t1", ExtractedFact("User lives in Oslo.", (first,)))
    again = log.add_message("user", "As I said, I live in Oslo", None, 100)
    repeat = ExtractedFact("User lives in Oslo.", (again,), "same", oslo["entry_id"])
    assert _extracted(log, "t2", repeat) == []
    knowledge, citations = (p for p in PROJECTIONS if p.table in ("knowledge", "citations"))
    rows = {p.table: p.new_rows() for p in (knowledge, citations)}
    for event in log.collect_events():
        for projection in (knowledge, citations):
            projection.evolve(rows[projection.table], event)
    assert rows["knowledge"].rows[oslo["entry_id"]]["source_message_ids"] == [first]
    repeated = {key: row["repeated"] for key, row in rows["citations"].rows.items()}
    assert repeated == {(first, oslo["entry_id"]): 0, (again, oslo["entry_id"]): 1}


def test_the_texts_of_log_ids_folded_stay_few_however_many_logs_are_folded() -> None:
    """A fold remembers the text of each log id it met lately, not of every log ever
    folded: a long-running process meets every user."""
    ids = [uuid4() for _ in range(folds._LOG_ID_TEXTS_MAX + 100)]
    for log_id in ids:
        assert folds._log_id(SimpleNamespace(originator_id=log_id)) == str(log_id)
        assert len(folds._log_id_texts) <= folds._LOG_ID_TEXTS_MAX


def test_no_event_class_derives_from_another_so_the_folds_exact_class_match_misses_none() -> None:
    """The folds tell events apart by exact class (``type(e) is``), which a subclass of an
    event would slip past: folded as nothing, silently."""
    for event_class in EVENT_CLASSES:
        others = [c for c in EVENT_CLASSES if c is not event_class]
        assert not issubclass(event_class, tuple(others)), event_class.__name__
