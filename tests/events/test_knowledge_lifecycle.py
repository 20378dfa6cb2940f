"""The knowledge lifecycle, decided by the aggregate: what a batch's facts may add,
supersede or invalidate, and how each event changes the small state. The extractor only
advises; the log decides."""

from __future__ import annotations

import copy
import itertools
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    BatchMessage,
    ExtractedFact,
    InvalidExtractionError,
    KnownEntry,
    ReplacedEntry,
)
from events.checks import MAX_FACT_CHARS
from events.extraction import FactAction
from events.user_log import LIVE_KNOWLEDGE, UserLog
from tests.support.garbage_answers import (
    GARBAGE_TEXTS,
    entries_of,
    garbage_answer,
    garbage_times,
    relisted,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _batch(log: UserLog, task_id: str, *texts: str) -> list[str]:
    ids = [log.add_message("user", text, T0, 1000) for text in texts]
    assert log.request_processing(task_id, "manual")
    log.start_next()
    return ids


def _said(ids: list[str], day: int) -> list[BatchMessage]:
    return [BatchMessage(m, "user", "", T0 + timedelta(days=day)) for m in ids]


def _known(log: UserLog) -> list[str]:
    return [e for e, v in log.valid_entries.items() if v == LIVE_KNOWLEDGE]


def _emitted(log: UserLog) -> list[str]:
    return [type(e).__name__ for e in log.collect_events()]


def test_a_new_fact_is_valid_from_when_its_newest_source_was_said() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    (entry,) = log.record_knowledge(
        "t1", [ExtractedFact("User lives in Oslo.", (ids[0],))], "x", batch=_said(ids, 3)
    )
    assert entry["valid_from"] == (T0 + timedelta(days=3)).isoformat()
    assert _known(log) == [entry["entry_id"]] and log.knowledge_count == 1


def test_an_update_adds_the_new_entry_and_supersedes_the_old_one_when_it_was_said() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x")
    log.collect_events()
    second = _batch(log, "t2", "I moved to Bergen")
    fact = ExtractedFact("User lives in Bergen.", tuple(second), "update", oslo["entry_id"])
    (bergen,) = log.record_knowledge("t2", [fact], "x", batch=_said(second, 30))
    events = log.collect_events()
    names = [type(e).__name__ for e in events]
    assert names[-2:] == ["KnowledgeExtracted", "KnowledgeSuperseded"]
    superseded = events[-1]
    assert isinstance(superseded, UserLog.KnowledgeSuperseded)
    assert (superseded.entry_id, superseded.superseded_by) == (oslo["entry_id"], bergen["entry_id"])
    assert superseded.valid_until == T0 + timedelta(days=30)
    assert _known(log) == [bergen["entry_id"]] and log.knowledge_count == 1


def test_the_same_fact_again_adds_nothing() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I love jazz")
    (jazz,) = log.record_knowledge("t1", [ExtractedFact("User loves jazz.", tuple(first))], "x")
    second = _batch(log, "t2", "I really love jazz")
    repeat = ExtractedFact("User loves jazz.", tuple(second), "same", jazz["entry_id"])
    assert log.record_knowledge("t2", [repeat], "x") == []
    assert _known(log) == [jazz["entry_id"]] and log.knowledge_count == 1


def test_a_fact_said_again_while_it_holds_is_noted_beside_its_entry_not_as_its_source() -> None:
    """ "As I said, I live in Oslo" adds no entry; its extraction notes the message as one
    that said the Oslo entry again (in the live knowledge as in a re-extracted version),
    so that it is outdated with the entry, while the entry's sources stay its own."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x")
    said = _batch(log, "t2", "Lovely weather", "As I said, I live in Oslo")
    repeat = ExtractedFact("User lives in Oslo.", (said[1],), "same", oslo["entry_id"])
    assert log.record_knowledge("t2", [repeat], "x") == []
    (again,) = log.record_reextraction("v2", first, [ExtractedFact("Oslo.", tuple(first))], "y")
    in_version = ExtractedFact("Oslo.", (said[1],), "same", again["entry_id"])
    assert log.record_reextraction("v2", said, [in_version], "y") == []
    extracted, _, reextracted = [e for e in log.collect_events() if hasattr(e, "entries")][-3:]
    assert isinstance(extracted, UserLog.KnowledgeExtracted)
    assert extracted.repeated == {oslo["entry_id"]: [said[1]]} and extracted.entries == []
    assert isinstance(reextracted, UserLog.KnowledgeReextracted)
    assert reextracted.repeated == {again["entry_id"]: [said[1]]}
    assert oslo["source_message_ids"] == first


def test_a_repeat_citing_no_message_of_its_own_notes_none() -> None:
    """A repeat that cites nothing of its batch (no message, or only others') is known
    to be said by no message in particular: it notes none, where a new fact would fall
    back on the batch's user messages."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x")
    _batch(log, "t2", "Lovely weather", "Still in Oslo, by the way")
    facts = [
        ExtractedFact("User lives in Oslo.", (), "same", oslo["entry_id"]),
        ExtractedFact("User lives in Oslo.", (first[0],), "same", oslo["entry_id"]),
    ]
    assert log.record_knowledge("t2", facts, "x") == []
    extracted = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted[-1].repeated is None


def test_a_backdated_update_ends_itself_when_the_newer_entry_began() -> None:
    """Time decides, not arrival: the fact said before the entry it updates is the older
    one, so it ends (replaced by that entry) and the newer entry stays valid."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I moved to Lisbon")
    (lisbon,) = log.record_knowledge(
        "t1", [ExtractedFact("User lives in Lisbon.", tuple(first))], "x", batch=_said(first, 30)
    )
    log.collect_events()
    began = T0 + timedelta(days=30)
    shown = [KnownEntry(lisbon["entry_id"], "User lives in Lisbon.", began)]
    second = _batch(log, "t2", "I live in Oslo")
    fact = ExtractedFact("User lives in Oslo.", tuple(second), "update", lisbon["entry_id"])
    (oslo,) = log.record_knowledge("t2", [fact], "x", batch=_said(second, 3), known=shown)
    ended = log.collect_events()[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded)
    assert (ended.entry_id, ended.superseded_by) == (oslo["entry_id"], lisbon["entry_id"])
    assert ended.valid_until == began
    assert _known(log) == [lisbon["entry_id"]]


def _chain_of_homes() -> tuple[UserLog, str, str, list[ReplacedEntry], list[KnownEntry]]:
    """A log with Oslo from day 1, replaced by Lisbon on day 30: Lisbon is current. With
    the two entries' ids, what the projections hand the aggregate: Oslo as the ended
    entry before Lisbon, and Lisbon as a batch is shown it."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo", "I moved to Lisbon")
    facts = [
        ExtractedFact("User lives in Oslo.", (first[0],)),
        ExtractedFact("User lives in Lisbon.", (first[1],), "update", target_fact=0),
    ]
    oslo, lisbon = log.record_knowledge(
        "t1", facts, "x", batch=[*_said(first[:1], 1), *_said(first[1:], 30)]
    )
    log.collect_events()
    day = T0 + timedelta(days=30)
    before = [ReplacedEntry(oslo["entry_id"], T0 + timedelta(days=1), day, lisbon["entry_id"])]
    shown = [KnownEntry(lisbon["entry_id"], "User lives in Lisbon.", day)]
    return log, oslo["entry_id"], lisbon["entry_id"], before, shown


def _oslo_shown(oslo: str, lisbon: str) -> tuple[KnownEntry, ReplacedEntry]:
    """Oslo (days 1 to 30, replaced by Lisbon) as a backdated batch is shown it: to the
    extractor with its end, to the log as the link it is."""
    began, until = T0 + timedelta(days=1), T0 + timedelta(days=30)
    return KnownEntry(oslo, "User lives in Oslo.", began, until), ReplacedEntry(
        oslo, began, until, lisbon
    )


@pytest.mark.parametrize("names", ["Lisbon", "Oslo"])
def test_a_backdated_update_fits_between_the_ended_entry_and_the_one_that_replaced_it(
    names: str,
) -> None:
    """Imported history: Oslo (day 1) was replaced by Lisbon (day 30), and a message of
    day 10 says Paris. Paris is the home from day 10 until day 30, so Oslo's end moves to
    day 10; no two homes overlap. The same whether the fact names Lisbon, the current
    home, or Oslo, which a backdated batch is shown with its end."""
    log, oslo, lisbon, before, shown = _chain_of_homes()
    if names == "Oslo":
        known, link = _oslo_shown(oslo, lisbon)
        shown, before = [known], [link]
    second = _batch(log, "t2", "I live in Paris")
    target = lisbon if names == "Lisbon" else oslo
    fact = ExtractedFact("User lives in Paris.", tuple(second), "update", target)
    (paris,) = log.record_knowledge(
        "t2", [fact], "x", batch=_said(second, 10), known=shown, replaced=before
    )
    superseded, moved = log.collect_events()[-2:]
    assert isinstance(superseded, UserLog.KnowledgeSuperseded)
    assert (superseded.entry_id, superseded.superseded_by) == (paris["entry_id"], lisbon)
    assert superseded.valid_until == T0 + timedelta(days=30)
    assert isinstance(moved, UserLog.KnowledgeEndMoved)
    assert (moved.entry_id, moved.superseded_by) == (oslo, paris["entry_id"])
    assert moved.valid_until == T0 + timedelta(days=10)
    assert _known(log) == [lisbon] and log.knowledge_count == 1


def test_a_backdated_update_older_than_the_whole_chain_ends_when_the_oldest_began() -> None:
    log, oslo, lisbon, before, shown = _chain_of_homes()
    second = _batch(log, "t2", "I lived in Rome")
    second_said = [BatchMessage(second[0], "user", "", T0 - timedelta(days=5))]
    fact = ExtractedFact("User lives in Rome.", tuple(second), "update", lisbon)
    (rome,) = log.record_knowledge(
        "t2", [fact], "x", batch=second_said, known=shown, replaced=before
    )
    ended = log.collect_events()[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded)
    assert (ended.entry_id, ended.superseded_by) == (rome["entry_id"], oslo)
    assert ended.valid_until == T0 + timedelta(days=1)
    assert _known(log) == [lisbon]


def test_a_repeat_said_before_an_entry_began_makes_it_begin_then_and_ends_its_prior_then() -> None:
    """Lisbon (from day 30, after Oslo from day 1) said again on day 10: Lisbon is the
    home from day 10, citing that message too, and Oslo ends on day 10."""
    log, oslo, lisbon, before, shown = _chain_of_homes()
    said = _batch(log, "t2", "I live in Lisbon")
    repeat = ExtractedFact("User lives in Lisbon.", tuple(said), "same", lisbon)
    assert (
        log.record_knowledge(
            "t2", [repeat], "x", batch=_said(said, 10), known=shown, replaced=before
        )
        == []
    )
    events = log.collect_events()
    moved, began = events[-2:]
    assert isinstance(moved, UserLog.KnowledgeEndMoved)
    assert (moved.entry_id, moved.superseded_by, moved.valid_until) == (
        oslo,
        lisbon,
        T0 + timedelta(days=10),
    )
    assert isinstance(began, UserLog.KnowledgeBeganEarlier)
    assert (began.entry_id, began.valid_from, began.source_message_ids) == (
        lisbon,
        T0 + timedelta(days=10),
        said,
    )
    assert _known(log) == [lisbon]


def test_a_repeat_said_before_the_value_it_replaced_began_is_a_value_before_that() -> None:
    """Lisbon said on day 0, before Oslo (day 1) that Lisbon replaced on day 30: Lisbon
    was the home until Oslo began, a new entry; Oslo and Lisbon keep their times."""
    log, oslo, lisbon, before, shown = _chain_of_homes()
    said = _batch(log, "t2", "I live in Lisbon")
    repeat = ExtractedFact("User lives in Lisbon.", tuple(said), "same", lisbon)
    (first,) = log.record_knowledge(
        "t2", [repeat], "x", batch=_said(said, 0), known=shown, replaced=before
    )
    assert first["repairs"] and _ends(log) == [(first["entry_id"], oslo, T0 + timedelta(days=1))]
    assert _known(log) == [lisbon]


def test_a_repeat_said_while_a_replaced_entry_held_adds_nothing() -> None:
    log, oslo, lisbon, _, _ = _chain_of_homes()
    known, link = _oslo_shown(oslo, lisbon)
    said = _batch(log, "t2", "I live in Oslo")
    repeat = ExtractedFact("User lives in Oslo.", tuple(said), "same", oslo)
    assert (
        log.record_knowledge(
            "t2", [repeat], "x", batch=_said(said, 10), known=[known], replaced=[link]
        )
        == []
    )
    assert _ends(log) == [] and _known(log) == [lisbon]


def test_a_value_said_again_after_it_was_replaced_replaces_what_held_then() -> None:
    """Oslo said again on day 40, after Lisbon replaced it on day 30: Oslo is the home
    again from day 40, and Lisbon ends then."""
    log, oslo, lisbon, _, shown = _chain_of_homes()
    known, link = _oslo_shown(oslo, lisbon)
    said = _batch(log, "t2", "I live in Oslo")
    repeat = ExtractedFact("User lives in Oslo.", tuple(said), "same", oslo)
    (again,) = log.record_knowledge(
        "t2", [repeat], "x", batch=_said(said, 40), known=[known, *shown], replaced=[link]
    )
    assert _ends(log) == [(lisbon, again["entry_id"], T0 + timedelta(days=40))]
    assert _known(log) == [again["entry_id"]]


def test_an_invalidation_said_before_the_entry_began_ends_nothing() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I work at Acme")
    (acme,) = log.record_knowledge(
        "t1", [ExtractedFact("User works at Acme.", tuple(first))], "x", batch=_said(first, 30)
    )
    log.collect_events()
    shown = [KnownEntry(acme["entry_id"], "User works at Acme.", T0 + timedelta(days=30))]
    second = _batch(log, "t2", "I quit my job")
    fact = ExtractedFact("User quit.", tuple(second), "invalidate", acme["entry_id"])
    log.record_knowledge("t2", [fact], "x", batch=_said(second, 3), known=shown)
    assert "KnowledgeInvalidated" not in _emitted(log)
    assert _known(log) == [acme["entry_id"]]


def test_an_invalidation_ends_an_entry_without_a_replacement() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I work at Acme")
    (acme,) = log.record_knowledge("t1", [ExtractedFact("User works at Acme.", tuple(first))], "x")
    log.collect_events()
    second = _batch(log, "t2", "I quit my job")
    quit_ = ExtractedFact(
        "User no longer works at Acme.", tuple(second), "invalidate", acme["entry_id"]
    )
    assert log.record_knowledge("t2", [quit_], "x", batch=_said(second, 9)) == []
    ended = log.collect_events()[-1]
    assert isinstance(ended, UserLog.KnowledgeInvalidated)
    assert ended.entry_id == acme["entry_id"] and ended.reason == "User no longer works at Acme."
    assert ended.source_message_ids == second and ended.valid_until == T0 + timedelta(days=9)
    assert _known(log) == [] and log.knowledge_count == 0


def test_an_unknown_target_cannot_lose_a_fact_and_the_repair_is_recorded() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "I work at Acme")
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],), "update", "no-such-entry"),
        ExtractedFact("User works at Acme.", (ids[1],), "same", "no-such-entry"),
        ExtractedFact("User quit.", (ids[1],), "invalidate", "no-such-entry"),
    ]
    entries = log.record_knowledge("t1", facts, "x")
    assert [e["text"] for e in entries] == [
        "User lives in Oslo.",
        "User works at Acme.",
        "User quit.",
    ]
    assert all("not a current entry; recorded as new" in e["repairs"][0] for e in entries)
    assert "KnowledgeSuperseded" not in _emitted(log)


def test_an_entry_updated_twice_in_one_answer_is_followed_by_both_in_time() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x")
    log.collect_events()
    second = _batch(log, "t2", "Bergen", "Rome")
    facts = [
        ExtractedFact("User lives in Bergen.", (second[0],), "update", oslo["entry_id"]),
        ExtractedFact("User lives in Rome.", (second[1],), "update", oslo["entry_id"]),
    ]
    said = [*_said(second[:1], 10), *_said(second[1:], 20)]
    bergen, rome = log.record_knowledge("t2", facts, "x", batch=said)
    ends = [
        (e.entry_id, e.superseded_by, e.valid_until)
        for e in log.collect_events()
        if isinstance(e, UserLog.KnowledgeSuperseded)
    ]
    assert ends == [
        (oslo["entry_id"], bergen["entry_id"], T0 + timedelta(days=10)),
        (bergen["entry_id"], rome["entry_id"], T0 + timedelta(days=20)),
    ]
    assert _known(log) == [rome["entry_id"]]


def test_citations_outside_the_batch_are_dropped_and_noted() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "I work at Acme")
    fact = ExtractedFact("User lives in Oslo.", ("elsewhere", ids[0]))
    (entry,) = log.record_knowledge("t1", [fact], "x")
    assert entry["source_message_ids"] == [ids[0]]
    assert entry["repairs"] == ["dropped citations outside the batch: elsewhere"]


def test_a_fact_citing_nothing_of_its_batch_cites_the_batch_user_messages() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    reply = log.add_message("assistant", "Nice", T0, 1000)
    batch = [BatchMessage(ids[0], "user", "I live in Oslo", T0)]
    log.request_processing("t2", "manual")
    log.record_knowledge("t1", [], "x", batch=batch)
    log.start_next()
    (entry,) = log.record_knowledge(
        "t2",
        [ExtractedFact("User likes it.", ("k1",))],
        "x",
        batch=[BatchMessage(reply, "assistant", "Nice", T0)],
    )
    assert entry["source_message_ids"] == [reply]
    assert entry["repairs"][-1] == "cited no message of its batch; cites the batch's user messages"


def test_a_new_fact_with_a_target_is_new_and_an_empty_fact_is_dropped() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    facts = [
        ExtractedFact("User lives in Oslo.", tuple(ids), "new", "e1"),
        ExtractedFact("   ", tuple(ids)),
    ]
    (entry,) = log.record_knowledge("t1", facts, "x")
    assert entry["repairs"] == ["was new with a target (e1); the target was ignored"]
    extracted = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted[-1].repairs == ["fact 1 had no text; it was dropped"]


def test_a_new_fact_repeated_in_one_answer_is_one_entry_citing_both_sources() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "Oslo is home")
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],)),
        ExtractedFact("User likes tea.", (ids[0],)),
        ExtractedFact("  user lives in  OSLO. ", (ids[1],)),
    ]
    entries = log.record_knowledge("t1", facts, "x")
    assert [(e["text"], e["source_message_ids"]) for e in entries] == [
        ("User lives in Oslo.", ids),
        ("User likes tea.", [ids[0]]),
    ]
    extracted = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted[-1].repairs == ["fact 2 repeated fact 0; merged into it"]
    assert log.knowledge_count == 2


def test_a_repeat_merged_into_an_entry_is_noted_on_that_entry() -> None:
    """Each repair is noted on the entry it shaped: the merged entry says which fact of
    the answer repeated it, and what was repaired in that repeat."""
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I'm a nurse", "I work as a nurse, yes")
    facts = [
        ExtractedFact("User is a nurse.", (ids[0],)),
        ExtractedFact("User is a nurse.", (ids[1], "m-elsewhere")),
    ]
    (entry,) = log.record_knowledge("t1", facts, "x")
    assert entry["source_message_ids"] == ids
    assert entry["repairs"] == [
        "fact 1 repeated fact 0; merged into it",
        "fact 1: dropped citations outside the batch: m-elsewhere",
    ]


def _two_said(log: UserLog, first_day: int, second_day: int) -> list[BatchMessage]:
    ids = _batch(log, "t1", "I live in Oslo", "I moved to Bergen")
    return [*_said(ids[:1], first_day), *_said(ids[1:], second_day)]


def test_a_change_within_one_batch_keeps_both_facts_the_first_ended_by_the_second() -> None:
    log = UserLog.register("ann")
    said = _two_said(log, 1, 5)
    facts = [
        ExtractedFact("User lives in Oslo.", (said[0].message_id,)),
        ExtractedFact("User lives in Bergen.", (said[1].message_id,), "update", target_fact=0),
    ]
    oslo, bergen = log.record_knowledge("t1", facts, "x", batch=said)
    events = log.collect_events()
    ended = events[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded)
    assert (ended.entry_id, ended.superseded_by) == (oslo["entry_id"], bergen["entry_id"])
    assert ended.valid_until == T0 + timedelta(days=5)
    assert _known(log) == [bergen["entry_id"]] and "repairs" not in bergen


def test_a_change_said_before_the_fact_it_replaces_is_the_one_that_ends() -> None:
    log = UserLog.register("ann")
    said = _two_said(log, 5, 1)  # the "later" message was sent first
    facts = [
        ExtractedFact("User lives in Oslo.", (said[0].message_id,)),
        ExtractedFact("User lives in Bergen.", (said[1].message_id,), "update", target_fact=0),
    ]
    oslo, bergen = log.record_knowledge("t1", facts, "x", batch=said)
    ended = log.collect_events()[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded)
    assert (ended.entry_id, ended.superseded_by) == (bergen["entry_id"], oslo["entry_id"])
    assert ended.valid_until == T0 + timedelta(days=5)
    assert _known(log) == [oslo["entry_id"]]


@pytest.mark.parametrize(
    ("replaces", "action"),
    [(1, "update"), (7, "update"), (-1, "update"), (0, "new"), (None, "update")],
)
def test_a_fact_naming_no_earlier_fact_it_can_replace_is_recorded_as_new(
    replaces: int | None, action: FactAction
) -> None:
    log = UserLog.register("ann")
    said = _two_said(log, 1, 5)
    facts = [
        ExtractedFact("User lives in Oslo.", (said[0].message_id,)),
        ExtractedFact("User lives in Bergen.", (said[1].message_id,), action, None, replaces),
    ]
    oslo, bergen = log.record_knowledge("t1", facts, "x", batch=said)
    assert [type(e).__name__ for e in log.collect_events()][-1] == "KnowledgeExtracted"
    assert sorted(_known(log)) == sorted([oslo["entry_id"], bergen["entry_id"]])
    if replaces is not None:
        note = f"named fact {replaces} of its answer, which it cannot replace"
        assert bergen["repairs"][0] == note


def test_a_change_given_a_later_statement_it_cannot_replace_notes_the_fact_the_answer_named() -> (
    None
):
    """A move to Tromso on day 3 names fact 0, Bergen said on day 10; it is given Bergen
    said on day 2 (fact 1, which has the known Bergen begin earlier and adds nothing), so
    it replaces nothing, and its note names fact 0, as the answer did."""
    log = UserLog.register("ann")
    known = _oslo_replaced_by_bergen_on_day_9(log)
    oslo = known[0].entry_id
    log.collect_events()
    facts = [
        ExtractedFact(BERGEN, ("2",), "update", oslo),
        ExtractedFact(BERGEN, ("0",), "update", oslo),
        ExtractedFact("User lives in Tromso.", ("1",), "update", None, 0),
    ]
    added = _process(log, "t2", [2, 3, 10], facts, known)
    (tromso,) = [e for e in added if e["text"] == facts[2].text]
    assert tromso["repairs"][0] == "named fact 0 of its answer, which it cannot replace"


def test_facts_replacing_one_earlier_fact_follow_each_other_in_time() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "Oslo", "Bergen", "Tromso", "Oslo again")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],)),
        ExtractedFact("User lives in Bergen.", (ids[1],), "update", target_fact=0),
        ExtractedFact("User lives in Tromso.", (ids[2],), "update", target_fact=0),
        ExtractedFact("User lives in Oslo.", (ids[3],)),
    ]
    entries = log.record_knowledge("t1", facts, "x", batch=said)
    assert [e["text"] for e in entries] == [
        "User lives in Oslo.",
        "User lives in Bergen.",
        "User lives in Tromso.",
        "User lives in Oslo.",
    ]
    assert all("repairs" not in e for e in entries[:3])
    ends = [
        (e.entry_id, e.superseded_by)
        for e in log.collect_events()
        if isinstance(e, UserLog.KnowledgeSuperseded)
    ]
    oslo, bergen, tromso, again = (e["entry_id"] for e in entries)
    assert ends == [(oslo, bergen), (bergen, tromso), (tromso, again)]
    assert _known(log) == [again], "Oslo said again after it was replaced is that value again"


def _oslo_known(log: UserLog) -> tuple[str, KnownEntry]:
    """Ann's log with "User lives in Oslo." recorded, and it as shown to the next batch."""
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x")
    return oslo["entry_id"], KnownEntry(oslo["entry_id"], "User lives in Oslo.", T0)


def test_a_new_fact_that_repeats_a_shown_entry_is_the_same_as_it() -> None:
    log = UserLog.register("ann")
    oslo, shown = _oslo_known(log)
    log.collect_events()
    ids = _batch(log, "t2", "Oslo is home")
    fact = ExtractedFact("user lives in  OSLO.", tuple(ids))  # the action left out: "new"
    assert log.record_knowledge("t2", [fact], "x", known=[shown]) == []
    (extracted,) = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    assert extracted.repairs == [f"fact 0 was new but repeats {oslo}; the same as it"]
    assert _known(log) == [oslo] and log.knowledge_count == 1


def test_a_new_fact_that_repeats_an_update_of_the_answer_is_merged_into_it() -> None:
    log = UserLog.register("ann")
    oslo, shown = _oslo_known(log)
    ids = _batch(log, "t2", "I moved to Bergen", "Bergen is home now")
    facts = [
        ExtractedFact("User lives in Bergen.", (ids[0],), "update", oslo),
        ExtractedFact("User lives in Bergen.", (ids[1],)),
    ]
    (bergen,) = log.record_knowledge("t2", facts, "x", known=[shown])
    assert bergen["source_message_ids"] == ids
    assert _known(log) == [bergen["entry_id"]]


@pytest.mark.parametrize("repeat", ["new", "same"])
@pytest.mark.parametrize("change", ["update", "invalidate"])
def test_a_change_naming_an_earlier_fact_that_repeats_a_known_entry_ends_that_entry(
    repeat: FactAction, change: FactAction
) -> None:
    """ "Still in Oslo", then "I moved to Bergen" in one answer, the move naming the
    repeat (``target_fact``): the repeat added nothing, so the move ends the known entry
    it repeats, and the user has one home, not two."""
    log = UserLog.register("ann")
    oslo, shown = _oslo_known(log)
    log.collect_events()
    ids = _batch(log, "t2", "Still in Oslo", "I moved to Bergen")
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],), repeat, oslo if repeat == "same" else None),
        ExtractedFact("User lives in Bergen.", (ids[1],), change, target_fact=0),
    ]
    added = log.record_knowledge("t2", facts, "x", batch=_said(ids, 5), known=[shown])
    ended = log.collect_events()[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded | UserLog.KnowledgeInvalidated)
    assert (ended.entry_id, ended.valid_until) == (oslo, T0 + timedelta(days=5))
    note = f"named fact 0 of its answer, which repeats {oslo}; {change}s {oslo}"
    if change == "update":
        (bergen,) = added
        assert bergen["repairs"] == [note]
        assert _known(log) == [bergen["entry_id"]]
    else:
        assert added == [] and _known(log) == []


def test_a_repeat_in_one_answer_said_earlier_moves_the_entry_to_the_earlier_time() -> None:
    """The entry is valid from when the fact was first stated, and cites that message,
    as it would had each message been its own batch: the later statement said it again."""
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "I have lived in Oslo for years")
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],)),
        ExtractedFact("User lives in Oslo.", (ids[1],)),
    ]
    said = [*_said(ids[:1], 10), *_said(ids[1:], 0)]
    (entry,) = log.record_knowledge("t1", facts, "x", batch=said)
    assert entry["valid_from"] == T0.isoformat()
    assert entry["source_message_ids"] == ids[1:]
    assert _repeated(log) == {entry["entry_id"]: ids[:1]}


def test_a_change_repeated_in_one_answer_before_it_was_said_still_begins_when_said() -> None:
    """ "Bergen" said before Oslo began cannot put the move from Oslo before Oslo,
    leaving Oslo current: the move begins when said, and that earlier "Bergen" is a value
    before Oslo, which Oslo replaced (it keeps its start)."""
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "I moved to Bergen", "Bergen, yes")
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],)),
        ExtractedFact("User lives in Bergen.", (ids[1],), "update", target_fact=0),
        ExtractedFact("User lives in Bergen.", (ids[2],)),
    ]
    said = [*_said(ids[:1], 1), *_said(ids[1:2], 5), *_said(ids[2:], 0)]
    _, bergen, before_oslo = log.record_knowledge("t1", facts, "x", batch=said)
    assert bergen["valid_from"] == (T0 + timedelta(days=5)).isoformat()
    assert _known(log) == [bergen["entry_id"]]
    assert before_oslo["source_message_ids"] == ids[2:]
    day = timedelta(days=1)
    assert _history(log) == [
        (BERGEN, T0, T0 + day),
        (OSLO, T0 + day, T0 + 5 * day),
        (BERGEN, T0 + 5 * day, None),
    ]


def _imported_under(newer: str, day: int, *older: str) -> tuple[UserLog, str, list[str]]:
    """A log whose entry ``newer`` began on ``day``, then a running batch of ``older``
    messages said on days 0, 1, ... (history imported late)."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", newer)
    (entry,) = log.record_knowledge(
        "t1", [ExtractedFact(newer, tuple(first))], "x", batch=_said(first, day)
    )
    ids = _batch(log, "t2", *older)
    log.collect_events()
    return log, entry["entry_id"], ids


def _ends(log: UserLog) -> list[tuple[str, str | None, datetime]]:
    return [
        (e.entry_id, getattr(e, "superseded_by", None), e.valid_until)
        for e in log.collect_events()
        if isinstance(e, UserLog.KnowledgeSuperseded | UserLog.KnowledgeInvalidated)
    ]


def test_a_change_within_imported_history_fits_between_the_old_fact_and_the_newer_one() -> None:
    log, bergen, ids = _imported_under("User lives in Bergen.", 9, "Oslo", "Paris")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],), "update", bergen),
        ExtractedFact("User lives in Paris.", (ids[1],), "update", None, 0),
    ]
    known = [KnownEntry(bergen, "User lives in Bergen.", T0 + timedelta(days=9))]
    oslo, paris = log.record_knowledge("t2", facts, "x", batch=said, known=known)
    assert _ends(log) == [
        (oslo["entry_id"], paris["entry_id"], T0 + timedelta(days=1)),
        (paris["entry_id"], bergen, T0 + timedelta(days=9)),
    ]
    assert _known(log) == [bergen]


def test_an_imported_fact_taken_back_ends_when_it_was_taken_back() -> None:
    log, bergen, ids = _imported_under("User lives in Bergen.", 9, "Oslo", "not Oslo")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User lives in Oslo.", (ids[0],), "update", bergen),
        ExtractedFact("User no longer lives in Oslo.", (ids[1],), "invalidate", None, 0),
    ]
    known = [KnownEntry(bergen, "User lives in Bergen.", T0 + timedelta(days=9))]
    (oslo,) = log.record_knowledge("t2", facts, "x", batch=said, known=known)
    assert _ends(log) == [(oslo["entry_id"], None, T0 + timedelta(days=1))]
    assert _known(log) == [bergen]


def test_an_invalidation_said_before_an_entry_began_leaves_it_current_for_later_facts() -> None:
    log, acme, ids = _imported_under("User works at Acme.", 30, "quit", "Acme")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User left their job.", (ids[0],), "invalidate", acme),
        ExtractedFact("User works at Acme.", (ids[1],), "same", acme),
    ]
    known = [KnownEntry(acme, "User works at Acme.", T0 + timedelta(days=30))]
    assert log.record_knowledge("t2", facts, "x", batch=said, known=known) == []
    assert _ends(log) == [] and _known(log) == [acme] and log.knowledge_count == 1


def _invalidated_home() -> tuple[UserLog, KnownEntry]:
    """Oslo from day 10, taken back on day 20 ("I don't live in Oslo any more"): no
    current home, and the ended Oslo as a backdated batch is shown it."""
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    (oslo,) = log.record_knowledge(
        "t1", [ExtractedFact("User lives in Oslo.", tuple(first))], "x", batch=_said(first, 10)
    )
    second = _batch(log, "t2", "I don't live in Oslo any more")
    gone = ExtractedFact("User left Oslo.", tuple(second), "invalidate", oslo["entry_id"])
    log.record_knowledge("t2", [gone], "x", batch=_said(second, 20))
    log.collect_events()
    began, ended = T0 + timedelta(days=10), T0 + timedelta(days=20)
    return log, KnownEntry(oslo["entry_id"], "User lives in Oslo.", began, ended)


def _on_day(log: UserLog, day: int, fact: ExtractedFact, known: KnownEntry) -> list[str]:
    """Record ``fact`` as the answer to a batch of one message said on ``day``, shown
    ``known``; the ids of the entries it added."""
    (message,) = _batch(log, "t3", "a backdated message")
    placed = ExtractedFact(fact.text, (message,), fact.action, fact.target_entry_id)
    entries = log.record_knowledge("t3", [placed], "x", batch=_said([message], day), known=[known])
    return [e["entry_id"] for e in entries]


def test_an_update_older_than_an_invalidated_entry_ends_when_that_entry_began() -> None:
    """Bergen said on day 5, Oslo days 10 to 20: Bergen is the home until Oslo began, and
    Oslo keeps the end it was taken back at; no two homes overlap, none is current."""
    log, oslo = _invalidated_home()
    update = ExtractedFact("User lives in Bergen.", (), "update", oslo.entry_id)
    (bergen,) = _on_day(log, 5, update, oslo)
    assert _ends(log) == [(bergen, oslo.entry_id, oslo.valid_from)]
    assert _known(log) == []


def test_an_update_said_while_an_invalidated_entry_was_valid_ends_it_then() -> None:
    log, oslo = _invalidated_home()
    update = ExtractedFact("User lives in Bergen.", (), "update", oslo.entry_id)
    (bergen,) = _on_day(log, 15, update, oslo)
    (moved,) = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeEndMoved)]
    assert (moved.entry_id, moved.superseded_by) == (oslo.entry_id, bergen)
    assert moved.valid_until == T0 + timedelta(days=15)
    assert _known(log) == [bergen]


def test_an_update_said_after_an_invalidated_entry_ended_ends_nothing() -> None:
    log, oslo = _invalidated_home()
    update = ExtractedFact("User lives in Bergen.", (), "update", oslo.entry_id)
    (bergen,) = _on_day(log, 25, update, oslo)
    assert _ends(log) == [] and _known(log) == [bergen]


@pytest.mark.parametrize("action", ["same", "new"])
def test_a_repeat_said_before_an_invalidated_entry_began_makes_it_begin_then(
    action: FactAction,
) -> None:
    """Oslo said on day 5 too: Oslo was the home from day 5, and cites that message."""
    log, oslo = _invalidated_home()
    target = oslo.entry_id if action == "same" else None
    said = _batch(log, "t3", "I live in Oslo")
    repeat = ExtractedFact("User lives in Oslo.", tuple(said), action, target)
    assert log.record_knowledge("t3", [repeat], "x", batch=_said(said, 5), known=[oslo]) == []
    (began,) = _began_earlier_in(log.collect_events())
    assert (began.entry_id, began.valid_from) == (oslo.entry_id, T0 + timedelta(days=5))
    assert began.source_message_ids == said and _known(log) == []


@pytest.mark.parametrize("action", ["same", "new"])
@pytest.mark.parametrize("day", [15, 25])
def test_a_repeat_of_an_invalidated_entry_is_that_entry_while_it_held_and_new_after(
    action: FactAction, day: int
) -> None:
    """Oslo (days 10 to 20) said again on day 15 adds nothing; on day 25, after it was
    taken back, it is the home again, a new current entry."""
    log, oslo = _invalidated_home()
    target = oslo.entry_id if action == "same" else None
    added = _on_day(log, day, ExtractedFact("User lives in Oslo.", (), action, target), oslo)
    assert _ends(log) == [] and _known(log) == added and len(added) == (day > 20)


def _home_taken_back_then_bergen() -> tuple[UserLog, KnownEntry, KnownEntry]:
    """Oslo from day 10, taken back on day 20, then Bergen from day 30 (current)."""
    log, oslo = _invalidated_home()
    said = _batch(log, "t3", "I moved to Bergen")
    (bergen,) = log.record_knowledge(
        "t3", [ExtractedFact("User lives in Bergen.", tuple(said))], "x", batch=_said(said, 30)
    )
    log.collect_events()
    return log, oslo, KnownEntry(bergen["entry_id"], bergen["text"], T0 + timedelta(days=30))


def test_a_change_to_a_value_that_began_later_makes_that_entry_begin_then() -> None:
    """A message of day 15 says Bergen, while Oslo held: Bergen, known from day 30, is
    the home from day 15 and replaces Oslo then; no second Bergen beside it."""
    log, oslo, bergen = _home_taken_back_then_bergen()
    said = _batch(log, "t4", "I moved to Bergen")
    update = ExtractedFact("User lives in Bergen.", tuple(said), "update", oslo.entry_id)
    assert (
        log.record_knowledge("t4", [update], "x", batch=_said(said, 15), known=[oslo, bergen]) == []
    )
    moved, began = log.collect_events()[-2:]
    assert isinstance(moved, UserLog.KnowledgeEndMoved)
    assert (moved.entry_id, moved.superseded_by) == (oslo.entry_id, bergen.entry_id)
    assert moved.valid_until == T0 + timedelta(days=15)
    assert isinstance(began, UserLog.KnowledgeBeganEarlier)
    assert (began.entry_id, began.valid_from) == (bergen.entry_id, T0 + timedelta(days=15))
    assert _known(log) == [bergen.entry_id]


def test_a_repeat_before_its_entry_began_keeps_its_start_if_another_ended_one_held() -> None:
    """Bergen (from day 30) said on day 5, but Oslo held from day 10 to 20: Oslo may be
    another home, so Bergen's start stays (the log does not know which facts are values
    of one another) and the repeat is noted."""
    log, oslo, bergen = _home_taken_back_then_bergen()
    said = _batch(log, "t4", "I live in Bergen")
    repeat = ExtractedFact("User lives in Bergen.", tuple(said), "same", bergen.entry_id)
    assert (
        log.record_knowledge("t4", [repeat], "x", batch=_said(said, 5), known=[oslo, bergen]) == []
    )
    events = log.collect_events()
    assert not _began_earlier_in(events) and _known(log) == [bergen.entry_id]
    extracted = events[-1]
    assert isinstance(extracted, UserLog.KnowledgeExtracted) and extracted.repairs


def _began_earlier_in(events: list[Any]) -> list[UserLog.KnowledgeBeganEarlier]:
    return [e for e in events if isinstance(e, UserLog.KnowledgeBeganEarlier)]


def test_an_invalidation_said_while_a_taken_back_entry_held_takes_it_back_then() -> None:
    log, oslo = _invalidated_home()
    gone = ExtractedFact("User left Oslo early.", (), "invalidate", oslo.entry_id)
    assert _on_day(log, 15, gone, oslo) == []
    events = log.collect_events()
    assert not any(isinstance(e, UserLog.KnowledgeInvalidated) for e in events)
    (ended,) = [e for e in events if isinstance(e, UserLog.KnowledgeInvalidatedEarlier)]
    assert (ended.entry_id, ended.valid_until) == (oslo.entry_id, T0 + timedelta(days=15))
    assert ended.reason == "User left Oslo early." and _known(log) == []


@pytest.mark.parametrize("day", [5, 25])
def test_an_invalidation_said_when_a_taken_back_entry_did_not_hold_ends_nothing(day: int) -> None:
    log, oslo = _invalidated_home()
    gone = ExtractedFact("User left Oslo.", (), "invalidate", oslo.entry_id)
    assert _on_day(log, day, gone, oslo) == []
    events = log.collect_events()
    assert not any(isinstance(e, UserLog.KnowledgeInvalidated) for e in events)
    extracted = events[-1]
    assert isinstance(extracted, UserLog.KnowledgeExtracted)
    assert extracted.repairs == [f"invalidation of {oslo.entry_id}, which had ended: ends nothing"]


def test_an_invalidation_of_a_replaced_entry_ends_nothing() -> None:
    log, oslo, lisbon, _, _ = _chain_of_homes()
    known, link = _oslo_shown(oslo, lisbon)
    said = _batch(log, "t2", "I left Oslo")
    gone = ExtractedFact("User left Oslo.", tuple(said), "invalidate", oslo)
    log.record_knowledge("t2", [gone], "x", batch=_said(said, 10), known=[known], replaced=[link])
    assert _ends(log) == [] and _known(log) == [lisbon]


def test_an_ended_entry_the_batch_was_not_shown_is_no_target() -> None:
    log, oslo = _invalidated_home()
    (message,) = _batch(log, "t3", "I moved to Bergen")
    update = ExtractedFact("User lives in Bergen.", (message,), "update", oslo.entry_id)
    (bergen,) = log.record_knowledge("t3", [update], "x", batch=_said([message], 5))
    assert bergen["repairs"] and _ends(log) == [] and _known(log) == [bergen["entry_id"]]


def test_a_fact_said_again_later_in_its_answer_is_noted_as_a_repeat_not_a_source() -> None:
    """The entry is valid from, and cites, the message that first said it; the later one
    said it again, as it would be in a later batch, whatever the answer's order."""
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I like jazz", "I like jazz, really")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=3 * i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User likes jazz.", (ids[0],)),
        ExtractedFact("User likes jazz.", (ids[1],)),
    ]
    (jazz,) = log.record_knowledge("t1", facts, "x", batch=said)
    assert jazz["source_message_ids"] == ids[:1] and jazz["valid_from"] == T0.isoformat()
    assert _repeated(log) == {jazz["entry_id"]: ids[1:]}
    again = UserLog.register("ann")
    ids = _batch(again, "t1", "I like jazz", "I like jazz, really")
    said = [BatchMessage(m, "user", "", T0 + timedelta(days=3 * i)) for i, m in enumerate(ids)]
    facts = [
        ExtractedFact("User likes jazz.", (ids[1],)),
        ExtractedFact("User likes jazz.", (ids[0],)),
    ]
    (jazz,) = again.record_knowledge("t1", facts, "x", batch=said)
    assert jazz["source_message_ids"] == ids[:1]
    assert _repeated(again) == {jazz["entry_id"]: ids[1:]}


def _repeated(log: UserLog) -> dict[str, list[str]] | None:
    """What the log's last extraction noted as said again."""
    extracted = [e for e in log.collect_events() if isinstance(e, UserLog.KnowledgeExtracted)]
    return extracted[-1].repeated


def test_a_fact_longer_than_the_limit_is_cut_and_the_cut_noted() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    (entry,) = log.record_knowledge("t1", [ExtractedFact("word " * 1000, tuple(ids))], "x")
    assert len(entry["text"]) <= MAX_FACT_CHARS and entry["text"].endswith("word\u2026")
    assert entry["repairs"] == [f"was 4999 characters long; cut to {MAX_FACT_CHARS}"]


def test_an_unknown_action_cannot_be_read_and_fails_the_batch() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    log.collect_events()
    with pytest.raises(InvalidExtractionError):
        log.record_knowledge("t1", [ExtractedFact("User x.", tuple(ids), "delete")], "x")  # type: ignore[arg-type]
    assert log.collect_events() == []


def test_a_reextracted_version_has_its_own_lifecycle_and_promotion_keeps_only_valid_entries() -> (
    None
):
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo", "I moved to Bergen")
    (live,) = log.record_knowledge("t1", [ExtractedFact("User lives in Oslo.", (ids[0],))], "x")
    (old,) = log.record_reextraction("v2", ids, [ExtractedFact("Oslo.", (ids[0],))], "y")
    update = ExtractedFact("Bergen.", (ids[1],), "update", old["entry_id"])
    live_target = ExtractedFact("Rome.", (ids[1],), "update", live["entry_id"])
    (new, rome) = log.record_reextraction("v2", ids, [update, live_target], "y")
    assert log.knowledge_versions == {"v2": 2} and log.knowledge_count == 1
    log.promote("v2", [*log.pending_events])
    assert sorted(_known(log)) == sorted([new["entry_id"], rome["entry_id"]])
    assert log.knowledge_count == 2


def test_promotion_returns_to_the_buffer_the_processed_messages_the_version_lacks() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo", "I work at Acme")
    log.record_knowledge("t1", [ExtractedFact("Oslo.", (first[0],))], "x")
    log.record_reextraction("v2", first, [ExtractedFact("Lives in Oslo.", (first[0],))], "y")
    later = _batch(log, "t2", "I love jazz")  # processed while v2 was being extracted
    log.record_knowledge("t2", [ExtractedFact("Jazz.", (later[0],))], "x")
    waiting = log.add_message("user", "I have a cat", T0, 1000)
    history = [*log.pending_events]
    assert log.promote("v2", history) == later
    promoted, returned = log.collect_events()[len(history) :]
    assert isinstance(promoted, UserLog.KnowledgeVersionPromoted)
    assert isinstance(returned, UserLog.MessagesReturned)
    assert (returned.knowledge_version, returned.message_ids) == ("v2", later)
    assert list(log.pending) == [*later, waiting], "back in log order, before later messages"
    assert log.weights[later[0]] > 0, "weighed again for the batch's token budget"
    assert log.knowledge_count == 1 and len(_known(log)) == 1


def test_a_promoted_version_of_the_same_name_covers_nothing_of_a_later_one() -> None:
    log = UserLog.register("ann")
    first = _batch(log, "t1", "I live in Oslo")
    log.record_knowledge("t1", [ExtractedFact("Oslo.", (first[0],))], "x")
    log.record_reextraction("v2", first, [ExtractedFact("Lives in Oslo.", (first[0],))], "y")
    assert log.promote("v2", [*log.pending_events]) == []
    second = _batch(log, "t2", "I love jazz")
    log.record_knowledge("t2", [ExtractedFact("Jazz.", (second[0],))], "x")
    log.record_reextraction("v2", second, [ExtractedFact("Loves jazz.", (second[0],))], "y")
    assert log.promote("v2", [*log.pending_events]) == first


def test_promotion_refuses_a_history_that_is_not_the_whole_log() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    log.record_knowledge("t1", [ExtractedFact("Oslo.", (ids[0],))], "x")
    log.record_reextraction("v2", ids, [ExtractedFact("Lives in Oslo.", (ids[0],))], "y")
    history = [*log.pending_events]
    with pytest.raises(ValueError, match="ends at version 5, the log of 'ann' at 6"):
        log.promote("v2", history[:-1])
    other = UserLog.register("bob")
    with pytest.raises(ValueError, match="not the log of 'ann'"):
        log.promote("v2", [*other.pending_events])
    assert log.knowledge_versions == {"v2": 1}, "nothing was decided"


def test_state_from_an_older_snapshot_is_upgraded_and_cannot_lose_facts() -> None:
    log = UserLog.register("ann")
    ids = _batch(log, "t1", "I live in Oslo")
    del log.__dict__["valid_entries"]
    log.upgrade()
    assert log.valid_entries == {}
    fact = ExtractedFact("User lives in Bergen.", tuple(ids), "update", "entry-before-upgrade")
    assert [e["text"] for e in log.record_knowledge("t1", [fact], "x")] == ["User lives in Bergen."]


def test_the_log_knows_when_a_batch_is_older_than_an_end_it_recorded() -> None:
    """A batch sent before the latest end of an entry is backdated (it is shown the
    entries ended since); one sent after it is not, and reads nothing more. A log from a
    snapshot that lacks the latest end takes every batch as possibly backdated."""
    log, oslo = _invalidated_home()
    assert oslo.valid_until is not None
    assert log.ends_after(oslo.valid_until - timedelta(seconds=1))
    assert not log.ends_after(oslo.valid_until)
    assert not UserLog.register("bob").ends_after(T0)
    del log.__dict__["latest_end"]
    log.upgrade()
    assert log.ends_after(T0 + timedelta(days=10_000))


OSLO, BERGEN = "User lives in Oslo.", "User lives in Bergen."
_ENDS = (
    UserLog.KnowledgeSuperseded,
    UserLog.KnowledgeInvalidated,
    UserLog.KnowledgeEndMoved,
    UserLog.KnowledgeInvalidatedEarlier,
)


def _history(log: UserLog) -> list[tuple[str, datetime, datetime | None]]:
    """Each entry of ``log`` (its events not yet collected) as its text and validity,
    in time order: what two batchings of the same messages must agree on."""
    held: dict[str, list[Any]] = {}
    for event in log.collect_events():
        if isinstance(event, UserLog.KnowledgeExtracted):
            for e in event.entries:
                held[e["entry_id"]] = [e["text"], datetime.fromisoformat(e["valid_from"]), None]
        elif isinstance(event, _ENDS):
            held[event.entry_id][2] = event.valid_until
        elif isinstance(event, UserLog.KnowledgeBeganEarlier):
            held[event.entry_id][1] = event.valid_from
    return sorted((tuple(h) for h in held.values()), key=lambda h: (h[1], h[0]))


def _process(
    log: UserLog,
    task_id: str,
    days: list[int],
    facts: list[ExtractedFact],
    known: list[KnownEntry],
    replaced: tuple[ReplacedEntry, ...] = (),
) -> list[dict[str, Any]]:
    """Record ``facts`` for a batch of the messages said on ``days`` (the facts cite them
    as ``"0"``, ``"1"``... for their place in the batch), shown ``known`` and the chains
    of ended entries ``replaced``."""
    ids = _batch(log, task_id, *(f"message {d}" for d in days))
    said = [
        BatchMessage(m, "user", "", T0 + timedelta(days=d)) for m, d in zip(ids, days, strict=True)
    ]
    cited = [
        ExtractedFact(
            f.text,
            tuple(ids[int(m)] for m in f.source_message_ids),
            f.action,
            f.target_entry_id,
            f.target_fact,
        )
        for f in facts
    ]
    return log.record_knowledge(task_id, cited, "x", batch=said, known=known, replaced=replaced)


def _shown(entry: dict[str, Any]) -> KnownEntry:
    return KnownEntry(entry["entry_id"], entry["text"], datetime.fromisoformat(entry["valid_from"]))


def _lives_in_oslo(log: UserLog) -> tuple[str, KnownEntry]:
    """``log`` with "User lives in Oslo." said on day 1, and that entry as shown next."""
    (oslo,) = _process(log, "t1", [1], [ExtractedFact(OSLO, ("0",))], [])
    return oslo["entry_id"], _shown(oslo)


@pytest.mark.parametrize("repeat", ["same", "new"])
@pytest.mark.parametrize(("change", "text"), [("update", BERGEN), ("invalidate", "Not Oslo.")])
def test_a_fact_said_again_after_its_batch_ended_it_is_that_value_again(
    change: FactAction, text: str, repeat: FactAction
) -> None:
    """Oslo known; "I moved to Bergen" (or "I don't live in Oslo any more") on day 5 and
    "I'm back in Oslo" on day 9, in one batch: Oslo holds again from day 9, as when each
    message is its own batch."""
    one = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(one)
    again = ExtractedFact(OSLO, ("1",), repeat, oslo if repeat == "same" else None)
    _process(one, "t2", [5, 9], [ExtractedFact(text, ("0",), change, oslo), again], [shown])

    each = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(each)
    ended = _process(each, "t2", [5], [ExtractedFact(text, ("0",), change, oslo)], [shown])
    if change == "update":
        (bergen,) = ended
        back = ExtractedFact(OSLO, ("0",), "update", bergen["entry_id"])
        _process(each, "t3", [9], [back], [_shown(bergen)])
    else:
        _process(each, "t3", [9], [ExtractedFact(OSLO, ("0",))], [])

    history = _history(one)
    assert history == _history(each)
    assert history[-1] == (OSLO, T0 + timedelta(days=9), None)


def test_a_repeat_said_before_its_answer_replaced_the_fact_is_noted_and_adds_nothing() -> None:
    """ "I live in Oslo" (day 1), "Oslo is lovely" (day 3), "I moved to Bergen" (day 5),
    the move naming the first fact, in one answer: one home at a time, as when each
    message is its own batch."""
    one = UserLog.register("ann")
    facts = [
        ExtractedFact(OSLO, ("0",)),
        ExtractedFact(BERGEN, ("2",), "update", target_fact=0),
        ExtractedFact(OSLO, ("1",)),
    ]
    added = _process(one, "t1", [1, 3, 5], facts, [])

    each = UserLog.register("ann")
    first, shown = _lives_in_oslo(each)
    (bergen,) = _process(each, "t2", [5], [ExtractedFact(BERGEN, ("0",), "update", first)], [shown])
    ended = KnownEntry(first, OSLO, T0 + timedelta(days=1), T0 + timedelta(days=5))
    _process(each, "t3", [3], [ExtractedFact(OSLO, ("0",))], [ended, _shown(bergen)])

    assert _history(one) == _history(each) == _OSLO_THEN_BERGEN_ON_DAY_5
    assert len(added[0]["source_message_ids"]) == 1, "the repeat is no source of the first"


def test_an_update_repeated_earlier_in_one_answer_begins_at_the_earlier_statement() -> None:
    """Oslo known; "I moved to Bergen today" (day 5) and "Settling in in Bergen" (day 8),
    the update citing the later message and the earlier one a repeat: Oslo ends on day 5,
    as when each message is its own batch."""
    one = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(one)
    facts = [ExtractedFact(BERGEN, ("1",), "update", oslo), ExtractedFact(BERGEN, ("0",))]
    _process(one, "t2", [5, 8], facts, [shown])

    each = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(each)
    (bergen,) = _process(each, "t2", [5], [ExtractedFact(BERGEN, ("0",), "update", oslo)], [shown])
    same = ExtractedFact(BERGEN, ("0",), "same", bergen["entry_id"])
    _process(each, "t3", [8], [same], [_shown(bergen)])

    assert _history(one) == _history(each) == _OSLO_THEN_BERGEN_ON_DAY_5


_OSLO_THEN_BERGEN_ON_DAY_5 = [
    (OSLO, T0 + timedelta(days=1), T0 + timedelta(days=5)),
    (BERGEN, T0 + timedelta(days=5), None),
]
"""The history of a user known in Oslo from day 1 who moved to Bergen on day 5."""


BERLIN = "User lives in Berlin."
_MAY, _JUNE, _AUGUST = 5, 6, 8


@pytest.mark.parametrize(
    "listed", [["may", "june", "august"], ["may", "august", "june"], ["august", "may", "june"]]
)
def test_a_change_between_two_statements_of_a_fact_in_one_batch_ends_only_the_earlier(
    listed: list[str],
) -> None:
    """ "I live in Bergen" in May, "I moved to Berlin" in June and "Back in Bergen" in
    August, in one batch, the answer listing them in any order (the move naming May's
    fact): one home at a time, Bergen again from August, as when each message is its own
    batch."""
    facts = {
        "may": ExtractedFact(BERGEN, ("0",)),
        "june": ExtractedFact(BERLIN, ("1",), "update", target_fact=listed.index("may")),
        "august": ExtractedFact(BERGEN, ("2",)),
    }
    log = UserLog.register("ann")
    _process(log, "t1", [_MAY, _JUNE, _AUGUST], [facts[said] for said in listed], [])

    assert _history(log) == [
        (BERGEN, T0 + timedelta(days=_MAY), T0 + timedelta(days=_JUNE)),
        (BERLIN, T0 + timedelta(days=_JUNE), T0 + timedelta(days=_AUGUST)),
        (BERGEN, T0 + timedelta(days=_AUGUST), None),
    ]


_GONE = "User does not live there any more."
"""A statement taking the home back ("I don't live in Bergen any more")."""


def _story(rng: random.Random) -> tuple[list[str], list[int], bool]:
    """A random batch of statements of one fact, the home: what each message says (a
    home, or :data:`_GONE`), the day each was sent (some on the same day), and whether
    Oslo was known from day 1 before it."""
    homes = [rng.choice((OSLO, BERGEN) if rng.random() < 0.6 else (OSLO, BERGEN, BERLIN))]
    for _ in range(rng.randint(1, 6)):
        gone = homes[-1] != _GONE and rng.random() < 0.1
        homes.append(_GONE if gone else rng.choice((OSLO, BERGEN, BERLIN)))
    if rng.random() < 0.2:
        days = sorted(rng.randint(2, 6) for _ in homes)
    else:
        days = list(range(2, len(homes) + 2))
    return homes, days, rng.random() < 0.4


def _answer(rng: random.Random, homes: list[str], known: str | None) -> list[ExtractedFact]:
    """An answer stating ``homes`` (a fact per message, citing it by its place), listed
    in a random order in which a change comes after a statement of the value it ends,
    which it names: a repeat is new (or the same as the ``known`` Oslo entry), a change
    an update (or invalidation) of the value before, a return to a value said earlier
    sometimes a repeat of it, a value after one taken back new."""
    before = [OSLO if known else None, *homes[:-1]]
    changes = [b not in (None, _GONE, home) for b, home in zip(before, homes, strict=True)]
    new_value = (b != home for b, home in zip(before, homes, strict=True))
    values = [*itertools.accumulate(new_value, initial=0 if known else -1)][1:]
    """For each message, the value (a run of equal statements) it states: the known one 0."""
    listed: list[int] = []
    left = list(range(len(homes)))
    while left:
        ready = [
            i
            for i in left
            if not changes[i]
            or (values[i] == 1 and known)
            or any(values[j] == values[i] - 1 for j in listed)
        ]
        listed.append(rng.choice(ready))
        left.remove(listed[-1])
    answer: list[ExtractedFact] = []
    for i in listed:
        home, cites = homes[i], (str(i),)
        ended = [p for p, j in enumerate(listed[: len(answer)]) if values[j] == values[i] - 1]
        said_before = home in homes[:i] and _GONE not in homes[:i]
        if not changes[i] or (said_before and rng.random() < 0.3):
            same = values[i] == 0 and known and rng.random() < 0.7
            answer.append(
                ExtractedFact(home, cites, "same", known) if same else ExtractedFact(home, cites)
            )
        else:
            action: FactAction = "invalidate" if home == _GONE else "update"
            if values[i] == 1 and known:
                answer.append(ExtractedFact(home, cites, action, known))
            else:
                answer.append(ExtractedFact(home, cites, action, target_fact=rng.choice(ended)))
    return answer


def _broken(seed: int) -> set[str]:
    """The rules that one batch of :func:`_story` (``seed``), answered as by
    :func:`_answer`, breaks in the history of the home."""
    rng = random.Random(seed)
    homes, days, knows_oslo = _story(rng)
    log = UserLog.register("ann")
    known: list[KnownEntry] = []
    oslo = None
    if knows_oslo:
        oslo, shown = _lives_in_oslo(log)
        known = [shown]
    _process(log, "t2", days, _answer(rng, homes, oslo), known)
    history = sorted(_history(log), key=lambda h: (h[1], h[2] or datetime.max.replace(tzinfo=UTC)))
    starts = [(OSLO, T0 + timedelta(days=1))] if knows_oslo else []
    for i, home in enumerate(homes):
        if not starts or home != starts[-1][0]:
            starts.append((home, T0 + timedelta(days=days[i])))
    said = [
        (home, at, starts[k + 1][1] if k + 1 < len(starts) else None)
        for k, (home, at) in enumerate(starts)
        if home != _GONE
    ]
    broken = set()
    if any(a[2] is None or a[2] > b[1] for a, b in itertools.pairwise(history)):
        broken.add("two values at once")
    if sum(h[2] is None for h in history) > 1:
        broken.add("more than one current value")
    if any((h[0], h[1]) not in starts for h in history):
        broken.add("a value not begun at the statement that said it")
    if sorted(history, key=str) != sorted(said, key=str):
        broken.add("not the history of the statements in time order")
    return broken


def test_one_batch_keeps_one_value_of_a_fact_at_a_time_whatever_order_its_answer_lists() -> None:
    """A fuzzer: random statements of one fact in one batch (changes, repeats, returns to
    an earlier value, take-backs, messages sent at once, a known value before them),
    answered in any order an extractor may list them. The history holds one value at a
    time, each begun at the statement that said it, and is the one the statements give
    in time order: a repeat is a citation, not a value of its own."""
    first_broken: dict[str, int] = {}
    for seed in range(300):
        for rule in _broken(seed):
            first_broken.setdefault(rule, seed)
    assert first_broken == {}, "each rule broken, with the first seed that breaks it"


def _successors(history: list[Any]) -> dict[str, str | None]:
    """Each entry of ``history`` with the last entry recorded as replacing it, if any."""
    successor: dict[str, str | None] = {}
    for event in history:
        if isinstance(event, UserLog.KnowledgeExtracted):
            successor.update((e["entry_id"], None) for e in event.entries)
        elif isinstance(event, UserLog.KnowledgeSuperseded | UserLog.KnowledgeEndMoved):
            successor[event.entry_id] = event.superseded_by
    return successor


def _chains(successor: dict[str, str | None]) -> dict[str, str]:
    """Each entry with the first entry of its chain: the entries linked by ``successor``
    (a chain is the values of one fact)."""
    linked = {entry: {entry} for entry in successor}
    for entry, after in successor.items():
        if after is not None and linked[entry] is not linked[after]:
            merged = linked[entry] | linked[after]
            for each in merged:
                linked[each] = merged
    return {entry: min(chain) for entry, chain in linked.items()}


def _record_garbage(
    log: UserLog, rng: random.Random, task_id: str, history: list[Any], sent: dict[str, datetime]
) -> list[Any]:
    """Record one garbage answer (:func:`garbage_answer`) for a new batch of ``log``,
    shown the entries ``history`` recorded, then check what an answer may never do: take
    longer than :data:`_RECORD_BOUND` (a loop), leave a chain with two current values,
    drop an entry, or drop a fact that states something (each is an entry, or cites one
    of the batch or of those shown, by its words). Returns the batch's events; ``sent``
    gathers when each message was sent."""
    ids = _batch(log, task_id, *["m"] * rng.randint(1, 4))
    recorded = entries_of(history)
    known = [k for k in recorded.values() if k.entry_id in _known(log) or rng.random() < 0.3]
    facts = garbage_answer(rng, ids, known)
    batch = garbage_times(rng, ids)
    sent.update((m.message_id, m.sent_at) for m in batch)
    new = _within_bound(lambda: log.record_knowledge(task_id, facts, "x", batch=batch, known=known))
    answered = log.collect_events()
    history += answered
    current = _known(log)
    assert set(recorded) | {e["entry_id"] for e in new} == set(entries_of(history))
    successor = _successors(history)
    chains = _chains(successor)
    assert len({chains[e] for e in current}) == len(current), "a chain with two current values"
    ended = {e.entry_id for e in history if hasattr(e, "valid_until") and hasattr(e, "entry_id")}
    assert set(chains) == set(current) | ended, "an entry neither current nor ended"
    for entry in successor:
        seen = {entry}
        while (entry := successor[entry]) is not None:  # type: ignore[assignment]
            assert entry not in seen, "a chain that replaces itself, with no last value"
            seen.add(entry)
    stated = {_words(e.text) for e in known} | {_words(e["text"]) for e in new}
    for fact in facts:
        if fact.action in ("new", "update") and fact.text.strip("\u200b "):
            assert _words(fact.text) in stated, f"fact {fact.text[:20]!r} was lost"
    return answered


def _last_ends(history: list[Any]) -> dict[str, datetime]:
    """Each entry that ``history`` ended, with its last end."""
    return {
        e.entry_id: e.valid_until
        for e in history
        if hasattr(e, "valid_until") and hasattr(e, "entry_id")
    }


def _citations(history: list[Any]) -> dict[str, set[str]]:
    """Each entry that ``history`` recorded, with the messages that stated it: its
    sources and those that said it again."""
    cited: dict[str, set[str]] = {}
    for event in history:
        if isinstance(event, UserLog.KnowledgeExtracted):
            for e in event.entries:
                cited.setdefault(e["entry_id"], set()).update(e["source_message_ids"])
            for entry_id, messages in (event.repeated or {}).items():
                cited.setdefault(entry_id, set()).update(messages)
    return cited


_RECORD_BOUND = 60.0
"""Seconds one garbage answer may take to record: far beyond what any takes (well under
one), so only a loop reaches it."""

_LOOPED: list[str] = []
"""Set once a record did not return: later examples fail at once, so that hypothesis
shrinking the failure does not wait out the bound again for each of its tries."""


def _within_bound(record: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What ``record`` returns, run in a thread so that a loop fails the test after
    :data:`_RECORD_BOUND` seconds instead of hanging the suite (the thread is left to
    the process's exit)."""
    returned: list[list[dict[str, Any]]] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(record())
        except BaseException as error:  # re-raised in the test's thread below
            raised.append(error)

    assert not _LOOPED, _LOOPED[0]
    worker = threading.Thread(target=run, name="garbage-record", daemon=True)
    worker.start()
    worker.join(_RECORD_BOUND)
    if worker.is_alive():
        _LOOPED.append(f"recording an answer did not return in {_RECORD_BOUND} s")
        raise AssertionError(_LOOPED[0])
    if raised:
        raise raised[0]
    return returned[0]


def _late_citations(answered: list[Any], sent: dict[str, datetime]) -> list[str]:
    """The messages of a batch that cite an entry (as its source or as said again) that
    the batch's events ``answered`` end before they were sent."""
    cited = _citations(answered)
    return [
        m
        for entry_id, end in _last_ends(answered).items()
        for m in cited.get(entry_id, ())
        if end < sent[m]
    ]


def _words(text: str) -> str:
    return " ".join(text.casefold().split())[:200]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rng=st.randoms(use_true_random=False), batches=st.integers(1, 4))
def test_any_answer_is_recorded_keeping_one_current_value_a_chain_and_every_entry(
    rng: random.Random, batches: int
) -> None:
    """A fuzzer of answers no extractor should give (updates naming unknown entries,
    their own fact, their own text, each other in cycles; duplicates, empty texts,
    citations outside the batch, messages sent at once or in reverse), batch after batch
    of one log: each is recorded and returns, and no chain of values ends up with two
    current ones, no entry is lost and no fact that states something."""
    log = UserLog.register("ann")
    history: list[Any] = log.collect_events()
    sent: dict[str, datetime] = {}
    for task in range(batches):
        _record_garbage(log, rng, f"t{task}", history, sent)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rng=st.randoms(use_true_random=False), batches=st.integers(1, 4))
def test_no_entry_of_any_answer_ends_before_a_message_that_cites_it_was_sent(
    rng: random.Random, batches: int
) -> None:
    """The same garbage answers: no entry a batch ends ends before a message of that
    batch citing it (as its source, or as saying it again) was sent."""
    log = UserLog.register("ann")
    history: list[Any] = log.collect_events()
    sent: dict[str, datetime] = {}
    for task in range(batches):
        answered = _record_garbage(log, rng, f"t{task}", history, sent)
        assert _late_citations(answered, sent) == []


def _oslo_replaced_on_day_5(log: UserLog) -> list[KnownEntry]:
    """``log`` with "user lives in  OSLO." said on day 0 and replaced by Bergen on day 5,
    and that Oslo as a later batch is shown it (ended)."""
    (oslo,) = _process(log, "t0", [0], [ExtractedFact(GARBAGE_TEXTS[2], ("0",))], [])
    moved = ExtractedFact(BERGEN, ("0",), "update", oslo["entry_id"])
    _process(log, "t1", [5], [moved], [_shown(oslo)])
    ended = T0 + timedelta(days=5)
    return [KnownEntry(oslo["entry_id"], oslo["text"], T0, ended)]


def _oslo_said_on_day_2(log: UserLog) -> list[KnownEntry]:
    """``log`` with "user lives in  OSLO." said on day 2, and that entry as shown next."""
    (oslo,) = _process(log, "t0", [2], [ExtractedFact(GARBAGE_TEXTS[2], ("0",))], [])
    return [_shown(oslo)]


def _oslo_said_on_day_5(log: UserLog) -> list[KnownEntry]:
    """``log`` with "user lives in  OSLO." said on day 5, and that entry as shown next."""
    (oslo,) = _process(log, "t0", [5], [ExtractedFact(GARBAGE_TEXTS[2], ("0",))], [])
    return [_shown(oslo)]


def _oslo_replaced_by_bergen_on_day_9(log: UserLog) -> list[KnownEntry]:
    """``log`` with Oslo said on day 1 and replaced by Bergen on day 9, and both as a
    later batch is shown them (Oslo ended)."""
    (oslo,) = _process(log, "t0", [1], [ExtractedFact(OSLO, ("0",))], [])
    moved = ExtractedFact(BERGEN, ("0",), "update", oslo["entry_id"])
    (bergen,) = _process(log, "t1", [9], [moved], [_shown(oslo)])
    ended = T0 + timedelta(days=9)
    return [
        KnownEntry(oslo["entry_id"], oslo["text"], T0 + timedelta(days=1), ended),
        _shown(bergen),
    ]


def _cat_said_on_day_9(log: UserLog) -> list[KnownEntry]:
    """``log`` with "User has a cat." said on day 9, and that entry as shown next."""
    (cat,) = _process(log, "t0", [9], [ExtractedFact(GARBAGE_TEXTS[3], ("0",))], [])
    return [_shown(cat)]


_OSLO_ID = "the known Oslo"
"""Stands for the entry id of the first known entry (the known Oslo, or the known cat of
seed 28281) in :data:`_LATE_CITING_ANSWERS`."""

_GarbageAnswer = tuple[Callable[[UserLog], list[KnownEntry]] | None, list[int], list[ExtractedFact]]

_LATE_CITING_ANSWERS: dict[str, _GarbageAnswer] = {
    "14743": (
        _oslo_said_on_day_2,
        [10, 2, 2, 2],
        [
            ExtractedFact(BERGEN, ("1",), "update", _OSLO_ID, 0),
            ExtractedFact(BERGEN, ("0",), "new", "no such entry", 1),
            ExtractedFact(OSLO, ("0",), "new", None, 2),
            ExtractedFact(GARBAGE_TEXTS[7], (), "invalidate", None, 4),
            ExtractedFact(GARBAGE_TEXTS[7], ("1",), "update", _OSLO_ID, 3),
        ],
    ),
    "28281": (
        _cat_said_on_day_9,
        [1, 1, 1, 5],
        [
            ExtractedFact(BERGEN, ("1",), "update", _OSLO_ID, 1),
            ExtractedFact(BERGEN, (), "invalidate", None, 1),
            ExtractedFact(GARBAGE_TEXTS[3], (), "update"),
            ExtractedFact(GARBAGE_TEXTS[3], ("1",), "update", None, 2),
        ],
    ),
}
"""The garbage answers, cut down to what still fails, of the seeds of 30,000 (the
late-citation test's answers drawn from ``random.Random(seed)``) that end an entry before
a message citing it: the known state a batch was shown, the days its messages were sent
on, and the answer (citing ``"0"``, ``"1"``... for the messages' places)."""

_MENDED_LATE_CITING_ANSWERS: dict[str, _GarbageAnswer] = {
    "16339": (
        None,
        [3, 2, 2, 1],
        [
            ExtractedFact("User has a cat.", (), "same"),
            ExtractedFact(OSLO, ("3",), "new", None, 0),
            ExtractedFact(GARBAGE_TEXTS[2], ("2",)),
            ExtractedFact(BERGEN, ("3",), "update", None, 2),
        ],
    ),
    "17299": (
        _oslo_replaced_on_day_5,
        [2, 1, 1],
        [
            ExtractedFact(OSLO, ("0",), "same", "no such entry"),
            ExtractedFact(OSLO, ("1",), "update", None, 0),
        ],
    ),
    "18238": (
        _oslo_said_on_day_5,
        [9, 2, 1],
        [
            ExtractedFact(OSLO, ("0",), "same", None, -1),
            ExtractedFact(GARBAGE_TEXTS[3], ("2",), "same"),
            ExtractedFact(BERGEN, ("0", "1"), "update", None, -1),
            ExtractedFact(GARBAGE_TEXTS[2], ("2",), "invalidate", None, -1),
            ExtractedFact(GARBAGE_TEXTS[3], (), "update", _OSLO_ID, 5),
        ],
    ),
    "18806": (
        _oslo_replaced_by_bergen_on_day_9,
        [0, 0, 1, 2],
        [
            ExtractedFact(OSLO, ("2", "3", "0"), "new", None, 2),
            ExtractedFact(BERGEN, ("2", "1"), "update", _OSLO_ID),
            ExtractedFact(BERGEN, (), "new", None, 1),
        ],
    ),
}
"""Answers of :data:`_LATE_CITING_ANSWERS`' kind that once ended an entry before a message
citing it: 16339, a move naming the later of two statements of Oslo (it ends the earlier
one); 17299, a change naming a repeat of an ended known entry said while that held (it
names the entry and waits no more); 18238, an update of a known Oslo that the answer had
begin earlier, stating a cat said before Oslo was known to begin (the cat is no longer
made the value before Oslo, ending where Oslo began as known, after the answer moved that
start); and 18806, a move to a known Bergen said before Bergen began, which ends the
ended Oslo earlier (Oslo said again after that move is that value again, not a repeat of
the Oslo that had ended)."""


def _late_citations_of(answer: _GarbageAnswer) -> list[Any]:
    """The entries that ``answer``, recorded for its batch, ends before a message of the
    batch citing them (:func:`_late_citations`)."""
    given_known, days, facts = answer
    log = UserLog.register("ann")
    known = given_known(log) if given_known is not None else []
    log.collect_events()
    ids = _batch(log, "late", *(f"message {day}" for day in days))
    said = [
        BatchMessage(m, "user", "", T0 + timedelta(days=d)) for m, d in zip(ids, days, strict=True)
    ]
    named = {_OSLO_ID: known[0].entry_id} if known else {}
    cited = [
        ExtractedFact(
            f.text,
            tuple(ids[int(m)] for m in f.source_message_ids),
            f.action,
            named.get(f.target_entry_id or "", f.target_entry_id),
            f.target_fact,
        )
        for f in facts
    ]
    log.record_knowledge("late", cited, "x", batch=said, known=known)
    return _late_citations(log.collect_events(), {m.message_id: m.sent_at for m in said})


_LATE_CITING_DEFECTS = {
    "14743": "known defect: an update naming a value its answer replaced twice (Oslo, then "
    "Bergen, then Oslo again), said while Bergen held, is dated after the statements of the "
    "chain's last value only (Plan.dated jumps to it), so Bergen, said again later, ends "
    "before that message; stepping through each value of the chain instead mends it but "
    "walks the chain for every change (4,000 moves: 0.3 s -> 27 s)",
    "28281": "known defect: an update said before the known entry it names began is the "
    "older value, begun when it was said, so it cuts short the value the answer had placed "
    "before that entry (a move said earlier, stated later by a repeat merged into it) at "
    "its start, before the repeat's message; dating it after that value's last statement "
    "would make it no older value at all",
}
"""Why each of :data:`_LATE_CITING_ANSWERS` still ends an entry before a message citing it."""


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(
            seed,
            marks=pytest.mark.xfail(
                strict=True, raises=AssertionError, reason=_LATE_CITING_DEFECTS[seed]
            ),
        )
        for seed in sorted(_LATE_CITING_ANSWERS)
    ],
)
def test_the_known_garbage_answers_that_end_an_entry_before_a_message_citing_it(
    seed: str,
) -> None:
    """The answers the seed loop found breaking the rule that no entry a batch ends ends
    before a message of that batch citing it: a strict xfail, so that mending the defect
    shows here, while the hypothesis test above states the rule for the answers it draws."""
    assert _late_citations_of(_LATE_CITING_ANSWERS[seed]) == []


@pytest.mark.parametrize("seed", sorted(_MENDED_LATE_CITING_ANSWERS))
def test_the_garbage_answers_once_ending_an_entry_before_a_message_citing_it_no_longer_do(
    seed: str,
) -> None:
    """The answers of the seed loop that broke that rule before it was mended for them
    keep it: no entry their batch ends ends before a message of the batch citing it."""
    assert _late_citations_of(_MENDED_LATE_CITING_ANSWERS[seed]) == []


def _decided(answered: list[Any]) -> list[tuple[Any, ...]]:
    """What a batch's events ``answered`` decide, whatever the entries' ids: each entry
    (by its text and sources) with its start, its end, what replaced it, and the messages
    that said it again."""
    named: dict[str, tuple[str, tuple[str, ...]]] = {}
    decided: dict[str, dict[str, Any]] = {}
    for event in answered:
        if isinstance(event, UserLog.KnowledgeExtracted):
            for e in event.entries:
                named[e["entry_id"]] = (e["text"], tuple(sorted(e["source_message_ids"])))
                decided[e["entry_id"]] = {"from": datetime.fromisoformat(e["valid_from"])}
            for entry_id, messages in (event.repeated or {}).items():
                decided.setdefault(entry_id, {})["again"] = tuple(sorted(messages))
        elif isinstance(event, UserLog.KnowledgeBeganEarlier):
            decided.setdefault(event.entry_id, {})["from"] = event.valid_from
        elif hasattr(event, "valid_until") and hasattr(event, "entry_id"):
            ending = decided.setdefault(event.entry_id, {})
            ending["until"] = event.valid_until
            successor = getattr(event, "superseded_by", None)
            ending["by"] = named.get(successor, successor) if successor else None
    return sorted(
        (
            (
                named.get(entry_id, entry_id),
                *sorted(d.items()),
            )
            for entry_id, d in decided.items()
        ),
        key=repr,
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rng=st.randoms(use_true_random=False), batches=st.integers(1, 3))
def test_the_same_answer_listed_in_any_order_decides_the_same_history(
    rng: random.Random, batches: int
) -> None:
    """The garbage answers again, the last batch's listed in other orders that say the
    same (each change still after the fact of the answer it names, facts said by one
    message in their order): the batch decides the same entries, starts, ends and
    repeats, as the order facts were said decides, not the order they are listed in."""
    log = UserLog.register("ann")
    history: list[Any] = log.collect_events()
    sent: dict[str, datetime] = {}
    for task in range(batches - 1):
        _record_garbage(log, rng, f"t{task}", history, sent)
    task_id = f"t{batches - 1}"
    ids = _batch(log, task_id, *["m"] * rng.randint(1, 4))
    known = [
        k for k in entries_of(history).values() if k.entry_id in _known(log) or rng.random() < 0.3
    ]
    facts = garbage_answer(rng, ids, known)
    batch = garbage_times(rng, ids)
    decided = []
    for answer in [facts, *(relisted(rng, facts, batch) for _ in range(3))]:
        relisting = copy.deepcopy(log)
        relisting.record_knowledge(task_id, answer, "x", batch=batch, known=known)
        decided.append(_decided(relisting.collect_events()))
    assert decided[1:] == [decided[0]] * 3


def _one_batch(days: list[int], facts: list[ExtractedFact]) -> UserLog:
    """Ann's log after one batch of messages sent on ``days`` (``m0``, ``m1``, ... in
    the facts' citations stand for them), answered with ``facts``."""
    log = UserLog.register("ann")
    ids = _batch(log, "t1", *(f"day {day}" for day in days))
    said = [
        BatchMessage(m, "user", "", T0 + timedelta(days=d)) for m, d in zip(ids, days, strict=True)
    ]
    cited = {f"m{place}": m for place, m in enumerate(ids)}
    log.record_knowledge(
        "t1",
        [
            ExtractedFact(
                f.text,
                tuple(cited[m] for m in f.source_message_ids),
                f.action,
                f.target_entry_id,
                f.target_fact,
            )
            for f in facts
        ],
        "x",
        batch=said,
    )
    return log


def _days(*history: tuple[str, int, int | None]) -> list[tuple[str, datetime, datetime | None]]:
    return [
        (text, T0 + timedelta(days=start), None if end is None else T0 + timedelta(days=end))
        for text, start, end in history
    ]


def test_an_update_to_the_very_value_of_the_fact_it_names_is_a_repeat_of_that_fact() -> None:
    """ "Oslo" on day 2, then "Oslo" listed as a change of that fact on day 6: one value,
    current from day 2 and citing both, not one that ends itself and leaves none."""
    log = _one_batch([2, 6], [ExtractedFact(OSLO, ("m0",)), _update(OSLO, "m1", 0)])
    assert _history(log) == _days((OSLO, 2, None))


def test_a_change_of_an_update_to_its_own_value_ends_that_value_and_returns() -> None:
    """The same, then a move to Bergen naming the repeat: Oslo ends at the move."""
    log = _one_batch(
        [2, 6],
        [ExtractedFact(OSLO, ("m0",)), _update(OSLO, "m1", 0), _update(BERGEN, "m1", 1)],
    )
    assert _history(log) == _days((OSLO, 2, 6), (BERGEN, 6, None))


def test_a_value_said_before_the_one_a_change_names_keeps_its_start() -> None:
    """Bergen on day 1, Oslo (listed new) on day 2, back to Bergen on day 3 naming Oslo:
    the first Bergen is the value Oslo replaced, from day 1, not a start moved to day 3."""
    log = _one_batch(
        [1, 2, 3],
        [ExtractedFact(BERGEN, ("m0",)), ExtractedFact(OSLO, ("m1",)), _update(BERGEN, "m2", 1)],
    )
    assert _history(log) == _days((BERGEN, 1, 2), (OSLO, 2, 3), (BERGEN, 3, None))


def test_changes_naming_each_other_back_to_the_first_value_return_with_one_current() -> None:
    """Bergen on day 5, Oslo on day 3 naming it (the older one), Bergen again on day 7
    naming Oslo, Berlin that day naming that: the links could close a loop; they are
    placed once each, and only Berlin holds at the end."""
    log = _one_batch(
        [5, 3, 7],
        [
            ExtractedFact(BERGEN, ("m0",)),
            _update(OSLO, "m1", 0),
            _update(BERGEN, "m2", 1),
            _update("User lives in Berlin.", "m2", 2),
        ],
    )
    history = _history(log)
    assert [h for h in history if h[2] is None] == _days(("User lives in Berlin.", 7, None))
    assert history[:2] == _days((OSLO, 3, 5), (BERGEN, 5, 7))


def _update(text: str, message: str, named: int) -> ExtractedFact:
    return ExtractedFact(text, (message,), "update", target_fact=named)


def test_a_change_to_a_value_said_before_ends_the_named_value_after_its_repeat() -> None:
    """Oslo on day 1, Bergen (listed new) on day 2, Oslo again on day 3, a move from
    that first Oslo to Bergen on day 4: Oslo holds until the move, not until day 2
    before its own repeat, as when each message is its own batch."""
    log = _one_batch(
        [1, 2, 3, 4],
        [
            ExtractedFact(OSLO, ("m0",)),
            ExtractedFact(BERGEN, ("m1",)),
            ExtractedFact(OSLO, ("m2",)),
            _update(BERGEN, "m3", 0),
        ],
    )
    assert _history(log) == _days((OSLO, 1, 4), (BERGEN, 2, None), (BERGEN, 4, None))


def test_a_change_of_a_known_value_said_again_after_the_new_one_ends_it_at_the_change() -> None:
    """Oslo known from day 1; one batch: Bergen (new) on day 2, Oslo said again on day 3,
    a move from Oslo to Bergen on day 4: Oslo held while it was said again, until the
    move, as when each message is its own batch."""
    log = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(log)
    facts = [
        ExtractedFact(BERGEN, ("0",)),
        ExtractedFact(OSLO, ("1",), "same", oslo),
        ExtractedFact(BERGEN, ("2",), "update", oslo),
    ]
    _process(log, "t2", [2, 3, 4], facts, [shown])
    assert _history(log) == _days((OSLO, 1, 4), (BERGEN, 2, None), (BERGEN, 4, None))


def test_a_value_said_again_after_the_one_a_change_names_began_is_not_the_value_before_it() -> None:
    """Bergen on day 1, Oslo on day 2, Bergen again on day 3, back to Bergen on day 4
    naming Oslo: Bergen, said on day 3, does not end on day 2 as the value Oslo replaced."""
    log = _one_batch(
        [1, 2, 3, 4],
        [
            ExtractedFact(BERGEN, ("m0",)),
            ExtractedFact(OSLO, ("m1",)),
            ExtractedFact(BERGEN, ("m2",)),
            _update(BERGEN, "m3", 1),
        ],
    )
    assert _history(log) == _days((BERGEN, 1, None), (OSLO, 2, 4), (BERGEN, 4, None))


@pytest.mark.parametrize("change_listed", [1, 2])
def test_a_change_cited_before_the_fact_it_names_is_decided_wherever_the_answer_lists_it(
    change_listed: int,
) -> None:
    """Oslo and Bergen both cited on day 5, and a move from that Oslo to Bergen cited on
    day 3 (a change said before the fact it names), listed before or after the other
    Bergen: the same history either way, the move folded after Oslo by its own time. It
    is the older value, Bergen until Oslo began; the Bergen said after Oslo on day 5 is
    Bergen again."""
    facts = [ExtractedFact(OSLO, ("m1",)), ExtractedFact(BERGEN, ("m1",))]
    facts.insert(change_listed, _update(BERGEN, "m0", 0))
    log = _one_batch([3, 5], facts)
    assert _history(log) == _days((BERGEN, 3, 5), (BERGEN, 5, None), (OSLO, 5, 5))


_PARIS = "User lives in Paris."
_LEFT_OSLO = "User does not live in Oslo any more."


def test_an_update_naming_a_fact_its_answer_replaced_already_changes_the_value_after_it() -> None:
    """Oslo on day 1, a move to Bergen naming it on day 2, then on day 3 a move to Paris
    naming Oslo again: the update follows the chain to Bergen, the value then, and ends
    it on day 3."""
    log = _one_batch(
        [1, 2, 3],
        [
            ExtractedFact(OSLO, ("m0",)),
            _update(BERGEN, "m1", 0),
            ExtractedFact(_PARIS, ("m2",), "update", target_fact=0),
        ],
    )
    assert _history(log) == _days((OSLO, 1, 2), (BERGEN, 2, 3), (_PARIS, 3, None))


_OSLO_AGAIN = "User lives in Oslo again."


def _back_in_oslo(back: str, message: str, oslo: str | None, bergen: int) -> ExtractedFact:
    """ "I'm back in Oslo", said by ``message``, as an answer may list it: the same as
    Oslo's entry ``oslo`` (in its words, or other ones), new, or an update of the Bergen
    fact (fact ``bergen``; in Oslo's words, or other ones)."""
    words = _OSLO_AGAIN if back.endswith("in other words") else OSLO
    if back.startswith("same"):
        return ExtractedFact(words, (message,), "same", oslo)
    if back.startswith("update"):
        return ExtractedFact(words, (message,), "update", target_fact=bergen)
    return ExtractedFact(words, (message,))


def _taken_back_in_one_batch_and_in_batches_of_one(
    oslo_known: bool, back: str | None, each_names_first: bool = False
) -> tuple[UserLog, UserLog]:
    """Ann's log after "I live in Oslo" (day 1, known before the batch or in it), "I moved
    to Bergen" (day 2), maybe "I'm back in Oslo" (day 5, listed as ``back`` says), and "I
    don't live in Oslo any more" (day 3, or 8 after a return), the move and the taking-back
    naming the first Oslo (its fact, or its entry when known): in one batch, and with each
    message a batch of its own, the taking-back naming the value shown then or, with
    ``each_names_first``, the first Oslo, shown ended with the chain of values after it."""
    days = [2, 3] if back is None else [2, 5, 8]
    if oslo_known:
        one = UserLog.register("ann")
        oslo, shown = _lives_in_oslo(one)
        facts = [ExtractedFact(BERGEN, ("0",), "update", oslo)]
        if back is not None:
            facts.append(_back_in_oslo(back, "1", oslo, 0))
        facts.append(ExtractedFact(_LEFT_OSLO, (str(len(facts)),), "invalidate", oslo))
        _process(one, "t2", days, facts, [shown])
    else:
        facts = [ExtractedFact(OSLO, ("m0",)), _update(BERGEN, "m1", 0)]
        if back is not None:
            facts.append(_back_in_oslo(back, "m2", None, 1))
        facts.append(ExtractedFact(_LEFT_OSLO, (f"m{len(facts)}",), "invalidate", target_fact=0))
        one = _one_batch([1, *days], facts)

    each = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(each)
    (bergen,) = _process(each, "t2", [2], [ExtractedFact(BERGEN, ("0",), "update", oslo)], [shown])
    if back is None:
        replaced = KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=2))
        taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", oslo)
        _process(each, "t3", [3], [taking_back], [replaced])
    else:
        moved_back = _back_in_oslo(back, "0", None, 0)
        moved_back = ExtractedFact(moved_back.text, ("0",), "update", bergen["entry_id"])
        (again,) = _process(each, "t3", [5], [moved_back], [_shown(bergen)])
        if each_names_first:
            ended = [KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=2))]
            chain = (
                ReplacedEntry(oslo, shown.valid_from, T0 + timedelta(days=2), bergen["entry_id"]),
                ReplacedEntry(
                    bergen["entry_id"],
                    T0 + timedelta(days=2),
                    T0 + timedelta(days=5),
                    again["entry_id"],
                ),
            )
            taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", oslo)
            _process(each, "t4", [8], [taking_back], [_shown(again), *ended], chain)
        else:
            taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", again["entry_id"])
            _process(each, "t4", [8], [taking_back], [_shown(again)])
    return one, each


@pytest.mark.parametrize("oslo_known", [False, True], ids=["oslo in the batch", "oslo known"])
def test_words_taking_back_a_value_its_batch_replaced_already_end_nothing_as_across_batches(
    oslo_known: bool,
) -> None:
    """ "I live in Oslo" (day 1), "I moved to Bergen" (day 2), "I don't live in Oslo any
    more" (day 3), the move and the taking-back both naming Oslo (its fact in the batch,
    or its entry when Oslo was known before): the words deny only Oslo, which had ended,
    so Bergen stays current, as when each message is its own batch."""
    one, each = _taken_back_in_one_batch_and_in_batches_of_one(oslo_known, None)
    history = _history(one)
    assert history == _history(each)
    assert history == _days((OSLO, 1, 2), (BERGEN, 2, None))


@pytest.mark.parametrize(
    ("oslo_known", "back"),
    [
        pytest.param(False, "new", id="return listed new"),
        pytest.param(False, "update", id="return listed as a change of Bergen"),
        pytest.param(True, "same", id="known oslo, return listed the same as it"),
        pytest.param(
            True, "same in other words", id="known oslo, return in other words the same as it"
        ),
        pytest.param(True, "new", id="known oslo, return listed new"),
        pytest.param(True, "update", id="known oslo, return listed as a change of Bergen"),
    ],
)
def test_words_taking_back_a_value_said_again_after_its_batch_replaced_it_end_the_return(
    oslo_known: bool, back: str
) -> None:
    """ "I live in Oslo" (day 1), "I moved to Bergen" (day 2), "I'm back in Oslo" (day 5,
    in Oslo's words or listed the same as Oslo), "I don't live in Oslo any more" (day 8),
    the taking-back naming the first Oslo: Oslo said again held when it was said, so the
    words end that value, as when each message is its own batch."""
    one, each = _taken_back_in_one_batch_and_in_batches_of_one(oslo_known, back)
    history = _history(one)
    assert history == _history(each)
    back_words = _OSLO_AGAIN if back.endswith("in other words") else OSLO
    assert history == _days((OSLO, 1, 2), (BERGEN, 2, 5), (back_words, 5, 8))


@pytest.mark.parametrize("oslo_known", [False, True], ids=["oslo in the batch", "oslo known"])
def test_words_taking_back_the_first_value_end_nothing_when_only_other_words_return_to_it(
    oslo_known: bool,
) -> None:
    """ "I live in Oslo" (day 1), "I moved to Bergen" (day 2), "I'm back in Oslo" (day 5)
    listed as a change of Bergen in other words ("User lives in Oslo again."), "I don't
    live in Oslo any more" (day 8) naming the first Oslo: the answer does not say the
    return is Oslo again, so the words deny only the Oslo that ended on day 2 and the
    return stays current, as when each message is its own batch and the taking-back
    names that first Oslo."""
    one, each = _taken_back_in_one_batch_and_in_batches_of_one(
        oslo_known, "update in other words", each_names_first=True
    )
    history = _history(one)
    assert history == _history(each)
    assert history == _days((OSLO, 1, 2), (BERGEN, 2, 5), (_OSLO_AGAIN, 5, None))


_JAZZ = "User loves jazz."


@pytest.mark.parametrize(
    ("first", "moved", "gone"),
    [
        pytest.param(OSLO, "User lives in Baerum, near Oslo.", _LEFT_OSLO, id="near oslo"),
        pytest.param(OSLO, "User lives in Bergen, not in Oslo.", _LEFT_OSLO, id="not in oslo"),
        pytest.param(
            OSLO, "User lives in Bergen and works in Oslo.", _LEFT_OSLO, id="works in oslo"
        ),
        pytest.param(
            OSLO, "User moved from Oslo and lives in Bergen.", _LEFT_OSLO, id="moved from oslo"
        ),
        pytest.param("🏠🇳🇴", BERGEN, "Not 🏠🇳🇴 any more.", id="a value of no word"),
    ],
)
def test_words_taking_back_a_replaced_value_keep_what_replaced_it_though_it_has_its_words(
    first: str, moved: str, gone: str
) -> None:
    """A value (day 1), a move naming it to one whose words include all of its words, or
    to any value when it has no word (day 2), then words taking the first value back
    naming it (day 3): what replaced it is another value, not that one said again, so it
    stays current, as when each message is its own batch."""
    one = _one_batch(
        [1, 2, 3],
        [
            ExtractedFact(first, ("m0",)),
            _update(moved, "m1", 0),
            ExtractedFact(gone, ("m2",), "invalidate", target_fact=0),
        ],
    )

    each = UserLog.register("ann")
    (said,) = _process(each, "t1", [1], [ExtractedFact(first, ("0",))], [])
    first_id, began = said["entry_id"], datetime.fromisoformat(said["valid_from"])
    moving = ExtractedFact(moved, ("0",), "update", first_id)
    (replacing,) = _process(each, "t2", [2], [moving], [_shown(said)])
    ended = KnownEntry(first_id, first, began, T0 + timedelta(days=2))
    link = ReplacedEntry(first_id, began, T0 + timedelta(days=2), replacing["entry_id"])
    taking_back = ExtractedFact(gone, ("0",), "invalidate", first_id)
    _process(each, "t3", [3], [taking_back], [_shown(replacing), ended], (link,))

    history = _history(one)
    assert history == _history(each)
    assert history == _days((first, 1, 2), (moved, 2, None))


@pytest.mark.parametrize(
    "bergen", [BERGEN, "User lives in Bergen, not in Oslo."], ids=["bergen", "not in oslo"]
)
def test_words_taking_back_a_known_value_replaced_before_a_backdated_batch_keep_its_successor(
    bergen: str,
) -> None:
    """Oslo known from day 1, replaced on day 3 by a known Bergen (whose words may include
    all of Oslo's); a batch older than that end (day 2, about jazz) says "I don't live in
    Oslo any more" on day 8 naming the known Oslo: Bergen is not Oslo said again, so it
    stays current, as when each message is its own batch."""

    def oslo_then_bergen(log: UserLog) -> tuple[KnownEntry, dict[str, Any], ReplacedEntry]:
        oslo, shown = _lives_in_oslo(log)
        moved = ExtractedFact(bergen, ("0",), "update", oslo)
        (replacing,) = _process(log, "t2", [3], [moved], [shown])
        ended = KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=3))
        link = ReplacedEntry(oslo, shown.valid_from, ended.valid_until, replacing["entry_id"])
        return ended, replacing, link

    one = UserLog.register("ann")
    ended, replacing, link = oslo_then_bergen(one)
    facts = [
        ExtractedFact(_JAZZ, ("0",)),
        ExtractedFact(_LEFT_OSLO, ("1",), "invalidate", ended.entry_id),
    ]
    _process(one, "t3", [2, 8], facts, [_shown(replacing), ended], (link,))

    each = UserLog.register("ann")
    ended, replacing, link = oslo_then_bergen(each)
    shown = [_shown(replacing), ended]
    _process(each, "t3", [2], [ExtractedFact(_JAZZ, ("0",))], shown, (link,))
    taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", ended.entry_id)
    _process(each, "t4", [8], [taking_back], shown, (link,))

    history = _history(one)
    assert history == _history(each)
    assert history == _days((OSLO, 1, 3), (_JAZZ, 2, None), (bergen, 3, None))


def _backdated_taking_back(back: str, each_names_first: bool = False) -> tuple[UserLog, UserLog]:
    """Ann's log after Oslo, known from day 1, and Bergen, known from day 3 replacing it,
    then a batch older than that end (its first message, day 2, about jazz) shown both:
    "I'm back in Oslo" (day 5, listed as ``back`` says) and "I don't live in Oslo any
    more" (day 8) naming the known Oslo; and with each message a batch of its own, the
    taking-back naming the value shown then or, with ``each_names_first``, the first
    Oslo, shown ended with the chain of values after it."""

    def oslo_then_bergen(log: UserLog) -> tuple[str, KnownEntry, dict[str, Any]]:
        oslo, shown = _lives_in_oslo(log)
        moved = ExtractedFact(BERGEN, ("0",), "update", oslo)
        (bergen,) = _process(log, "t2", [3], [moved], [shown])
        return oslo, shown, bergen

    one = UserLog.register("ann")
    oslo, shown, bergen = oslo_then_bergen(one)
    ended = KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=3))
    link = ReplacedEntry(oslo, shown.valid_from, T0 + timedelta(days=3), bergen["entry_id"])
    returned = _back_in_oslo(back, "1", oslo, 0)
    if back.startswith("update"):
        returned = ExtractedFact(returned.text, ("1",), "update", bergen["entry_id"])
    facts = [
        ExtractedFact(_JAZZ, ("0",)),
        returned,
        ExtractedFact(_LEFT_OSLO, ("2",), "invalidate", oslo),
    ]
    _process(one, "t3", [2, 5, 8], facts, [_shown(bergen), ended], (link,))

    each = UserLog.register("ann")
    oslo, shown, bergen = oslo_then_bergen(each)
    ended = KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=3))
    _process(each, "t3", [2], [ExtractedFact(_JAZZ, ("0",))], [_shown(bergen), ended])
    moved_back = ExtractedFact(returned.text, ("0",), "update", bergen["entry_id"])
    (again,) = _process(each, "t4", [5], [moved_back], [_shown(bergen)])
    if each_names_first:
        day_3, day_5 = T0 + timedelta(days=3), T0 + timedelta(days=5)
        chain = (
            ReplacedEntry(oslo, shown.valid_from, day_3, bergen["entry_id"]),
            ReplacedEntry(bergen["entry_id"], day_3, day_5, again["entry_id"]),
        )
        taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", oslo)
        _process(each, "t5", [8], [taking_back], [_shown(again), ended], chain)
    else:
        taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", again["entry_id"])
        _process(each, "t5", [8], [taking_back], [_shown(again)])
    return one, each


@pytest.mark.parametrize(
    "back",
    ["same", "same in other words", "new", pytest.param("update", id="update of bergen")],
)
def test_words_taking_back_a_known_value_replaced_before_a_backdated_batch_end_its_return(
    back: str,
) -> None:
    """Oslo known from day 1, Bergen known from day 3 replacing it; a batch older than
    that end (its first message, day 2, about jazz) is shown both: "I'm back in Oslo"
    (day 5, in Oslo's words or listed the same as Oslo) and "I don't live in Oslo any
    more" (day 8) naming the known Oslo. The taking-back follows Oslo's chain past Bergen
    to Oslo said again and ends it on day 8, as when each message is its own batch."""
    one, each = _backdated_taking_back(back)
    history = _history(one)
    assert history == _history(each)
    returned = _OSLO_AGAIN if back.endswith("in other words") else OSLO
    assert history == _days((OSLO, 1, 3), (_JAZZ, 2, None), (BERGEN, 3, 5), (returned, 5, 8))


def test_words_taking_back_a_known_value_replaced_before_a_backdated_batch_keep_other_words() -> (
    None
):
    """The same, "I'm back in Oslo" listed as a change of Bergen in other words ("User
    lives in Oslo again."): the answer does not say the return is Oslo again, so the
    taking-back denies only the Oslo that ended on day 3 and the return stays current, as
    when each message is its own batch and the taking-back names that first Oslo."""
    one, each = _backdated_taking_back("update in other words", each_names_first=True)
    history = _history(one)
    assert history == _history(each)
    assert history == _days((OSLO, 1, 3), (_JAZZ, 2, None), (BERGEN, 3, 5), (_OSLO_AGAIN, 5, None))


def test_a_change_is_never_given_a_later_listed_move_to_name_that_waits_for_a_later_fact() -> None:
    """Oslo on day 1, "I don't live in Oslo any more" on day 3 naming it, Bergen on day 4,
    and Oslo listed last as a move from Bergen said on day 2: that move is decided only
    after Bergen, so the taking-back names the first Oslo and ends it on day 3, as one
    message a batch does, instead of naming the later-decided move, finding nothing to end
    and being kept as a current fact of its own."""
    log = _one_batch(
        [1, 2, 3, 4],
        [
            ExtractedFact(OSLO, ("m0",)),
            ExtractedFact(_LEFT_OSLO, ("m2",), "invalidate", target_fact=0),
            ExtractedFact(BERGEN, ("m3",)),
            _update(OSLO, "m1", 2),
        ],
    )
    history = _history(log)
    assert _LEFT_OSLO not in [text for text, _, _ in history]
    assert history[0] == _days((OSLO, 1, 3))[0]


@pytest.mark.parametrize(
    ("listed", "named"),
    [
        pytest.param("said", "day 1", id="in the order said, naming day 1"),
        pytest.param("said", "day 3", id="in the order said, naming day 3"),
        pytest.param("day 3 first", "day 3", id="day 3 listed first and named"),
        pytest.param("change between", "day 3", id="day 3 named, the change listed between"),
    ],
)
@pytest.mark.parametrize(
    ("change", "text"),
    [("update", BERGEN), ("invalidate", _LEFT_OSLO)],
    ids=["move", "taking back"],
)
def test_a_change_naming_either_statement_of_a_value_said_twice_in_its_batch_ends_the_first(
    change: FactAction, text: str, listed: str, named: str
) -> None:
    """ "I live in Oslo" (day 1), "I moved to Bergen" (or "I don't live in Oslo any
    more", day 2), "I live in Oslo" (day 3), in one batch, the change naming either
    statement of Oslo: it ends the Oslo that held when it was said, and the day-3 Oslo is
    that value again, as when each message is its own batch, whichever statement the
    answer named and wherever it lists them."""
    first, then = ExtractedFact(OSLO, ("m0",)), ExtractedFact(OSLO, ("m2",))
    if listed == "said":
        named_fact = 1 if named == "day 3" else 0
        facts = [first, then, ExtractedFact(text, ("m1",), change, target_fact=named_fact)]
    elif listed == "day 3 first":
        facts = [then, first, ExtractedFact(text, ("m1",), change, target_fact=0)]
    else:
        facts = [then, ExtractedFact(text, ("m1",), change, target_fact=0), first]
    one = _one_batch([1, 2, 3], facts)

    each = UserLog.register("ann")
    oslo, shown = _lives_in_oslo(each)
    ended = _process(each, "t2", [2], [ExtractedFact(text, ("0",), change, oslo)], [shown])
    if change == "update":
        back = ExtractedFact(OSLO, ("0",), "update", ended[0]["entry_id"])
        _process(each, "t3", [3], [back], [_shown(ended[0])])
    else:
        _process(each, "t3", [3], [ExtractedFact(OSLO, ("0",))], [])

    history = _history(one)
    assert history == _history(each)
    between = [(BERGEN, 2, 3)] if change == "update" else []
    assert sorted(history) == sorted(_days((OSLO, 1, 2), *between, (OSLO, 3, None)))


@pytest.mark.parametrize("first", ["new", "update"], ids=["oslo new", "oslo a move from bergen"])
@pytest.mark.parametrize(
    ("change", "text"),
    [("update", _PARIS), ("invalidate", _LEFT_OSLO)],
    ids=["move", "taking back"],
)
def test_a_change_naming_a_value_taken_back_and_said_again_ends_the_value_said_again(
    change: FactAction, text: str, first: FactAction
) -> None:
    """ "I live in Oslo" (day 1, or day 2 as a move from Bergen of day 1), "I don't live in
    Oslo any more" (the next day), "I live in Oslo" (the day after, listed new), then "I
    moved to Paris" (or "I don't live in Oslo any more" again, a day later) naming the
    first Oslo: it ends the Oslo said again, which held when it was said, as when each
    message is its own batch, however the answer listed the first Oslo."""
    at = 0 if first == "new" else 1  # the first Oslo's place in the answer and batch
    facts = [
        *([] if first == "new" else [ExtractedFact(BERGEN, ("m0",))]),
        ExtractedFact(OSLO, ("m0",)) if first == "new" else _update(OSLO, "m1", 0),
        ExtractedFact(_LEFT_OSLO, (f"m{at + 1}",), "invalidate", target_fact=at),
        ExtractedFact(OSLO, (f"m{at + 2}",)),
        ExtractedFact(text, (f"m{at + 3}",), change, target_fact=at),
    ]
    one = _one_batch(list(range(1, len(facts) + 1)), facts)

    each = UserLog.register("ann")
    if first == "new":
        oslo, shown = _lives_in_oslo(each)
    else:
        (bergen,) = _process(each, "t0", [1], [ExtractedFact(BERGEN, ("0",))], [])
        moved = ExtractedFact(OSLO, ("0",), "update", bergen["entry_id"])
        (said,) = _process(each, "t1", [2], [moved], [_shown(bergen)])
        oslo, shown = said["entry_id"], _shown(said)
    day = at + 1
    taking_back = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", oslo)
    _process(each, "t2", [day + 1], [taking_back], [shown])
    (again,) = _process(each, "t3", [day + 2], [ExtractedFact(OSLO, ("0",))], [])
    changing = ExtractedFact(text, ("0",), change, again["entry_id"])
    _process(each, "t4", [day + 3], [changing], [_shown(again)])

    history = _history(one)
    assert history == _history(each)
    before = [] if first == "new" else [(BERGEN, 1, 2)]
    after = [(_PARIS, day + 3, None)] if change == "update" else []
    expected = [*before, (OSLO, day, day + 1), (OSLO, day + 2, day + 3), *after]
    assert history == _days(*expected)


def test_a_value_said_after_an_update_that_followed_its_chain_ended_it_is_that_value_again() -> (
    None
):
    """Oslo on day 1, a move to Bergen naming it on day 2, a move to Paris naming Oslo on
    day 3, then Bergen said again on day 4: the move to Paris ended Bergen on day 3, so
    that statement is Bergen again from day 4, not a citation of the Bergen that ended
    before it was said."""
    log = _one_batch(
        [1, 2, 3, 4],
        [
            ExtractedFact(OSLO, ("m0",)),
            _update(BERGEN, "m1", 0),
            ExtractedFact(_PARIS, ("m2",), "update", target_fact=0),
            ExtractedFact(BERGEN, ("m3",)),
        ],
    )
    history = _history(log)
    assert history[:2] == _days((OSLO, 1, 2), (BERGEN, 2, 3))
    assert (BERGEN, T0 + timedelta(days=4)) in [(text, start) for text, start, _ in history]


def _oslo_from_day_1(log: UserLog, taken_back: bool) -> tuple[str, KnownEntry]:
    """``log`` with "User lives in Oslo." said on day 1, maybe taken back on day 6, and
    that entry as a batch sent before day 6 is shown it."""
    oslo, shown = _lives_in_oslo(log)
    if not taken_back:
        return oslo, shown
    gone = ExtractedFact(_LEFT_OSLO, ("0",), "invalidate", oslo)
    _process(log, "t1", [6], [gone], [shown])
    return oslo, KnownEntry(oslo, OSLO, shown.valid_from, T0 + timedelta(days=6))


@pytest.mark.parametrize("repeat", ["same", "new"])
@pytest.mark.parametrize("named_by", ["fact", "entry"])
@pytest.mark.parametrize(("change", "text"), [("update", BERGEN), ("invalidate", _LEFT_OSLO)])
@pytest.mark.parametrize("taken_back", [False, True], ids=["oslo current", "oslo ended later"])
def test_a_change_naming_a_repeat_of_a_known_entry_is_placed_by_its_own_time(
    taken_back: bool, change: FactAction, text: str, named_by: str, repeat: FactAction
) -> None:
    """Oslo known from day 1 (current, or taken back on day 6, after the batch's first
    message); one batch: "I moved to Bergen" (or "I don't live in Oslo any more") on day
    2 and "I live in Oslo" on day 10, one fact citing both that repeats the known Oslo
    (listed as the same as it, or as new in its words), the change naming that fact or
    Oslo's entry: the change ends Oslo on day 2, when it was said, without waiting for
    the repeat, and the Oslo said on day 10 is that value again, as when each message is
    its own batch."""
    one = UserLog.register("ann")
    oslo, shown = _oslo_from_day_1(one, taken_back)
    named: dict[str, Any] = {"target_fact": 0} if named_by == "fact" else {"target_entry_id": oslo}
    facts = [
        ExtractedFact(OSLO, ("0", "1"), repeat, oslo if repeat == "same" else None),
        ExtractedFact(text, ("0",), change, **named),
    ]
    _process(one, "t2", [2, 10], facts, [shown])

    each = UserLog.register("ann")
    oslo, shown = _oslo_from_day_1(each, taken_back)
    ended = _process(each, "t2", [2], [ExtractedFact(text, ("0",), change, oslo)], [shown])
    if change == "update":
        (bergen,) = ended
        back = ExtractedFact(OSLO, ("0",), "update", bergen["entry_id"])
        _process(each, "t3", [10], [back], [_shown(bergen)])
    else:
        _process(each, "t3", [10], [ExtractedFact(OSLO, ("0",))], [])

    history = _history(one)
    assert history == _history(each)
    between = [(BERGEN, 2, 10)] if change == "update" else []
    assert sorted(history) == sorted(_days((OSLO, 1, 2), *between, (OSLO, 10, None)))


_BODO, _TROMSO = "User lives in Bodo.", "User lives in Tromso."


def _bodo_bergen_tromso(
    log: UserLog,
) -> tuple[str, str, list[KnownEntry], tuple[ReplacedEntry, ...]]:
    """``log`` knowing Bodo from day 0, Bergen from day 2 and Tromso from day 9: Bergen's and
    Tromso's ids, and the entries and chain a backdated batch is shown."""
    (bodo,) = _process(log, "k0", [0], [ExtractedFact(_BODO, ("0",))], [])
    (bergen,) = _process(
        log, "k1", [2], [ExtractedFact(BERGEN, ("0",), "update", bodo["entry_id"])], [_shown(bodo)]
    )
    (tromso,) = _process(
        log,
        "k2",
        [9],
        [ExtractedFact(_TROMSO, ("0",), "update", bergen["entry_id"])],
        [_shown(bergen)],
    )
    day = lambda n: T0 + timedelta(days=n)  # noqa: E731
    shown = [
        KnownEntry(bodo["entry_id"], _BODO, day(0), day(2)),
        KnownEntry(bergen["entry_id"], BERGEN, day(2), day(9)),
        _shown(tromso),
    ]
    chain = (
        ReplacedEntry(bodo["entry_id"], day(0), day(2), bergen["entry_id"]),
        ReplacedEntry(bergen["entry_id"], day(2), day(9), tromso["entry_id"]),
    )
    return bergen["entry_id"], tromso["entry_id"], shown, chain


@pytest.mark.parametrize(
    "back_to_bergen",
    [
        lambda bergen: ExtractedFact(BERGEN, ("2",)),
        lambda bergen: ExtractedFact(BERGEN, ("2",), "same", bergen),
        lambda bergen: ExtractedFact(BERGEN, ("2",), "update", None, 1),
    ],
    ids=["new", "same as the known Bergen", "update of the day-3 move"],
)
def test_a_later_move_of_a_backdated_batch_naming_a_value_it_replaced_already_still_ends_what_holds(
    back_to_bergen: Callable[[str], ExtractedFact],
) -> None:
    """Known: Bodo, Bergen from day 2, Tromso from day 9. A backdated batch says "moved to
    Tromso" on day 3 and "back in Tromso" on day 7 (both updates of the known Bergen) and
    "moved to Bergen" on day 6. The day-7 move was read as Tromso beginning earlier, which it
    had already, so it ended nothing and Bergen stayed current: one message a batch ends in
    Tromso from day 7."""
    batch = UserLog.register("ann")
    bergen, _, shown, chain = _bodo_bergen_tromso(batch)
    facts = [
        ExtractedFact(_TROMSO, ("0",), "update", bergen),
        ExtractedFact(_TROMSO, ("1",), "update", bergen),
        back_to_bergen(bergen),
    ]
    _process(batch, "b", [7, 3, 6], facts, shown, chain)

    each = UserLog.register("ann")
    bergen, tromso, shown, chain = _bodo_bergen_tromso(each)
    _process(each, "e1", [3], [ExtractedFact(_TROMSO, ("0",), "update", bergen)], shown, chain)
    (again,) = _process(
        each,
        "e2",
        [6],
        [ExtractedFact(BERGEN, ("0",), "update", tromso)],
        [KnownEntry(tromso, _TROMSO, T0 + timedelta(days=3))],
    )
    _process(
        each,
        "e3",
        [7],
        [ExtractedFact(_TROMSO, ("0",), "update", again["entry_id"])],
        [_shown(again)],
    )

    def homes(log: UserLog) -> list[tuple[str, int, int | None]]:
        return [
            (text, (begun - T0).days, None if ended is None else (ended - T0).days)
            for text, begun, ended in _history(log)
        ]

    expected = [(_BODO, 0, 2), (BERGEN, 2, 3), (_TROMSO, 3, 6), (BERGEN, 6, 7), (_TROMSO, 7, None)]
    assert homes(each) == expected
    assert homes(batch) == expected
