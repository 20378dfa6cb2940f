"""Events from outside (an import), checked before a log holds them: an edited export
is refused where the log's own commands could not have written it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from events import BatchMessage, ExtractedFact, InvalidInputError, KnownEntry
from events.imported import ImportReplay
from events.user_log import UserLog


def _extracted() -> tuple[UserLog, list[str], list[dict[str, Any]]]:
    """A log whose two messages (Oslo, Acme) were extracted into an entry each: the log,
    the messages and the entries."""
    log = UserLog.register("alice")
    said = [log.add_message("user", text, None, 100) for text in ("in Oslo", "at Acme")]
    assert log.request_processing("t1", "manual") and log.start_next() is not None
    facts = [
        ExtractedFact("User lives in Oslo", (said[0],)),
        ExtractedFact("User is at Acme", (said[1],)),
    ]
    return log, said, log.record_knowledge("t1", facts, "x")


def _history() -> list[Any]:
    """A log whose first entry was superseded, then re-extracted into a version."""
    log, said, first = _extracted()
    moved = log.add_message("user", "in Bergen", None, 100)
    assert log.request_processing("t2", "manual") and log.start_next() is not None
    update = ExtractedFact("User lives in Bergen", (moved,), "update", first[0]["entry_id"])
    log.record_knowledge("t2", [update], "x")
    log.record_reextraction("v2", [said[0]], [ExtractedFact("User was in Oslo", (said[0],))], "x")
    return [*log.collect_events()]


def _replay(events: list[Any], stored: int = 0) -> None:
    """Check ``events`` as an import onto a log holding the first ``stored`` of them."""
    log = None
    for event in events[:stored]:
        log = event.mutate(log)
    replay = ImportReplay(log, lambda: events[:stored])
    for number, event in enumerate(events[stored:], start=stored + 1):
        replay.check(event, f"line {number}")


def _kind(events: list[Any], kind: type) -> Any:
    return next(e for e in events if isinstance(e, kind))


def _changed(events: list[Any], kind: type, **fields: Any) -> list[Any]:
    """``events`` with the first of ``kind`` changed as an edited export changes it."""
    found = _kind(events, kind)
    return [replace(e, **fields) if e is found else e for e in events]


def test_a_log_its_commands_wrote_imports_whole_or_after_a_stored_start() -> None:
    for stored in (0, 3, 11):
        _replay(_history(), stored)


def test_a_reextraction_of_messages_the_log_never_held_is_refused_with_its_line() -> None:
    events = _history()
    _kind(events, UserLog.KnowledgeReextracted).message_ids.append("m-1")
    with pytest.raises(InvalidInputError, match=r"line 12: message 'm-1' is not in the log"):
        _replay(events)


def test_an_entry_id_an_ended_entry_had_is_not_given_again() -> None:
    """The state keeps valid entries only: the replay remembers every id the log gave,
    the stored log's among them."""
    events = _history()
    ended = _kind(events, UserLog.KnowledgeSuperseded).entry_id
    _kind(events, UserLog.KnowledgeReextracted).entries[0]["entry_id"] = ended
    for stored in (0, 11):
        with pytest.raises(InvalidInputError, match=f"line 12: entry id '{ended}' is taken"):
            _replay(events, stored)


@pytest.mark.parametrize(
    ("field", "value", "refusal"),
    [
        ("repairs", "a note", "a knowledge entry is not well formed"),
        ("repairs", [1, 2], "a knowledge entry is not well formed"),
        ("repairs", None, "a knowledge entry is not well formed"),
        ("text", "", "has no text"),
        ("text", " \n", "has no text"),
    ],
)
def test_an_entry_with_repairs_not_a_list_of_notes_or_no_text_is_refused_with_its_line(
    field: str, value: object, refusal: str
) -> None:
    """``explain`` lists an entry's repairs one note a line, and the log never adds an
    entry without text: such an entry is refused before the import writes anything."""
    events = _history()
    extracted = _kind(events, UserLog.KnowledgeExtracted)
    extracted.entries[0][field] = value
    line = events.index(extracted) + 1
    with pytest.raises(InvalidInputError, match=f"line {line}: .*{refusal}"):
        _replay(events)


def test_an_entry_may_hold_its_repairs_as_a_list_of_notes() -> None:
    events = _history()
    _kind(events, UserLog.KnowledgeExtracted).entries[0]["repairs"] = ["was 1,200 characters"]
    _replay(events)


_FIELDS_GAINED_WITH_STARTS = (
    "final",
    "request_id",
    "cache_read_tokens",
    "cache_write_tokens",
    "repairs",
    "followed_by",
    "repeated",
)
"""What an extraction or re-extraction holds that those of the first memvees did not."""


def _as_the_first_memvees_stored(event: Any) -> Any:
    """An extraction or re-extraction of today as the memvees before the knowledge
    lifecycle stored it: none of the fields gained since, its entries without a start."""
    for name in _FIELDS_GAINED_WITH_STARTS:
        event.__dict__.pop(name, None)
    for entry in event.entries:
        del entry["valid_from"]
    return event


def _first_memvees_history() -> list[Any]:
    """A log of the first memvees: an extraction, then a re-extraction into a version (no
    update: the first memvees ended no entry)."""
    log, said, _ = _extracted()
    log.record_reextraction("v2", [said[0]], [ExtractedFact("User was in Oslo", (said[0],))], "x")
    events = [*log.collect_events()]
    for kind in (UserLog.KnowledgeExtracted, UserLog.KnowledgeReextracted):
        _as_the_first_memvees_stored(_kind(events, kind))
    return events


def test_an_entry_the_first_memvees_stored_without_its_start_replays() -> None:
    """Before the knowledge lifecycle an entry held no ``valid_from`` (it is valid from its
    extraction, as the projections read it): a log of then replays, in a verify or an
    import of its export, instead of being called damaged."""
    for stored in (0, 5):
        _replay(_first_memvees_history(), stored)


@pytest.mark.parametrize("kind", [UserLog.KnowledgeExtracted, UserLog.KnowledgeReextracted])
def test_an_entry_that_lost_its_start_in_a_log_of_today_is_refused(kind: type) -> None:
    """An event holding the fields its kind gained with entry starts was written with
    them: an entry of it without its ``valid_from`` was damaged, and would be read as
    valid only from its extraction."""
    events = _history()
    extracted = _kind(events, kind)
    del extracted.entries[0]["valid_from"]
    line = events.index(extracted) + 1
    with pytest.raises(InvalidInputError, match=f"line {line}: a knowledge entry is not well"):
        _replay(events)


def test_an_entry_of_the_first_memvees_beside_one_with_its_start_is_refused() -> None:
    """The first memvees stored no entry's start: an extraction of theirs holding one
    for some entries was edited, and the others lost theirs."""
    events = _first_memvees_history()
    extracted = _kind(events, UserLog.KnowledgeExtracted)
    extracted.entries[1]["valid_from"] = extracted.timestamp.isoformat()
    with pytest.raises(InvalidInputError, match="line 6: a knowledge entry is not well formed"):
        _replay(events)


def _lifecycle_memvees_history() -> list[Any]:
    """A log as the memvees of a1f6344..725a3dc wrote it: extractions in the first
    memvees' form of fields, but their entries holding starts, and the ends of entries."""
    events = _history()
    for event in events:
        if isinstance(event, UserLog.KnowledgeExtracted | UserLog.KnowledgeReextracted):
            for name in _FIELDS_GAINED_WITH_STARTS:
                event.__dict__.pop(name, None)
    return events


def _without_starts(events: list[Any], *versions: int) -> list[Any]:
    """``events`` with every entry of the extractions at ``versions`` without its start."""
    for event in events:
        if event.originator_version in versions:
            for entry in event.entries:
                del entry["valid_from"]
    return events


def test_a_log_of_the_first_lifecycle_memvees_replays() -> None:
    _replay(_lifecycle_memvees_history())


@pytest.mark.parametrize(
    ("lost", "stored", "evidence"),
    [
        ((10,), 0, "version 6, a KnowledgeExtracted holding its entries' starts"),
        ((10,), 9, "version 6, a KnowledgeExtracted holding its entries' starts"),
        ((12,), 0, "version 6, a KnowledgeExtracted holding its entries' starts"),
        ((6, 10, 12), 11, "version 11, a KnowledgeSuperseded"),
    ],
)
def test_an_extraction_that_lost_every_start_after_the_lifecycle_began_in_its_log_is_refused(
    lost: tuple[int, ...], stored: int, evidence: str
) -> None:
    """An extraction whose every entry lost its start looks as the first memvees stored
    it; but one following an extraction holding starts, or the end of an entry, in its
    log was written by a memvee that stored starts (a first memvee cannot read an end,
    nor fold an extraction into the tables of one that stored starts): it was damaged."""
    events = _without_starts(_lifecycle_memvees_history(), *lost)
    with pytest.raises(InvalidInputError, match=f"line {lost[-1]}: .*since {evidence}"):
        _replay(events, stored)


def test_an_extraction_that_lost_every_start_is_refused_where_an_end_names_its_entry() -> None:
    """The first two extractions lost every start: the first cannot be told from the first
    memvees', but the end of an entry written with the second (its successor one of its
    entries) shows a memvee that stored starts wrote it."""
    events = _without_starts(_lifecycle_memvees_history(), 6, 10)
    with pytest.raises(InvalidInputError, match=r"line 11: .*the KnowledgeExtracted at version 10"):
        _replay(events)


def _first_memvees_entry_then(change: str) -> list[Any]:
    """A first memvee's log (Oslo extracted without a start), then today's memvee's: a
    message sent in 2020 ("I lived in Bergen") updating Oslo (``change`` "update": the
    older entry, it ends with Oslo, the first memvee's entry, as its successor), or one
    saying Oslo was left ("invalidate": Oslo ends)."""
    log = UserLog.register("alice")
    oslo_said = datetime(2024, 6, 1, tzinfo=UTC)
    said = log.add_message("user", "I live in Oslo", oslo_said, 100)
    assert log.request_processing("t1", "manual") and log.start_next() is not None
    batch = [BatchMessage(said, "user", "I live in Oslo", oslo_said)]
    (oslo,) = log.record_knowledge(
        "t1", [ExtractedFact("User lives in Oslo", (said,))], "x", batch=batch
    )
    first_memvees = [*log.collect_events()]
    extracted = _as_the_first_memvees_stored(_kind(first_memvees, UserLog.KnowledgeExtracted))
    if change == "update":
        when, text = datetime(2020, 1, 1, tzinfo=UTC), "Back in 2020 I lived in Bergen"
    else:
        when, text = datetime.now(UTC), "I left Oslo; I have a cat"
    moved = log.add_message("user", text, when, 100)
    if change == "update":
        facts = [ExtractedFact("User lived in Bergen", (moved,), "update", oslo["entry_id"])]
    else:
        facts = [
            ExtractedFact("User has a cat", (moved,)),
            ExtractedFact("User lives in Oslo", (moved,), "invalidate", oslo["entry_id"]),
        ]
    assert log.request_processing("t2", "manual") and log.start_next() is not None
    known = [KnownEntry(oslo["entry_id"], "User lives in Oslo", extracted.timestamp)]
    batch = [BatchMessage(moved, "user", text, when)]
    log.record_knowledge("t2", facts, "x", batch=batch, known=known)
    return [*first_memvees, *log.collect_events()]


def _first_memvees_entry_updated_by_a_backdated_message() -> list[Any]:
    """:func:`_first_memvees_entry_then` an update by a backdated message."""
    events = _first_memvees_entry_then("update")
    ended = events[-1]
    assert isinstance(ended, UserLog.KnowledgeSuperseded)
    assert ended.superseded_by == _kind(events, UserLog.KnowledgeExtracted).entries[0]["entry_id"]
    return events


@pytest.mark.parametrize("change", ["update", "invalidate"])
def test_an_extraction_that_lost_every_start_is_refused_where_its_decision_changes_an_entry(
    change: str,
) -> None:
    """Today's memvee's extraction, after a first memvee's, lost every start, but its
    decision changes an entry (ends the first memvee's, or an older one it added): a
    first memvee writes no such change, so the starts were lost."""
    events = _first_memvees_entry_then(change)
    last = [e for e in events if isinstance(e, UserLog.KnowledgeExtracted)][-1]
    _as_the_first_memvees_stored(last)
    with pytest.raises(InvalidInputError, match="in the decision the KnowledgeExtracted"):
        _replay(events)


def test_an_end_naming_a_first_memvees_entry_as_its_successor_after_an_upgrade_replays() -> None:
    """The first memvees' entry holds no start, but the end naming it was written by
    today's memvee in a later decision, not with it: nothing was lost, and the log
    replays (in a verify, or an import of its export) whole or onto its stored part."""
    events = _first_memvees_entry_updated_by_a_backdated_message()
    for stored in (0, 5, 9):
        _replay(events, stored)


def test_an_end_whose_successor_the_log_never_had_is_refused() -> None:
    events = _changed(_history(), UserLog.KnowledgeSuperseded, superseded_by="e-1")
    with pytest.raises(InvalidInputError, match="entry 'e-1' is not in the log"):
        _replay(events)


def test_a_repeat_of_an_entry_the_log_never_had_is_refused() -> None:
    """A repeat notes messages that said an entry of the log again: one naming an entry
    the log never gave would have them outdated by nothing."""
    events = _history()
    oslo = _kind(events, UserLog.KnowledgeExtracted).entries[0]["entry_id"]
    extracted = [e for e in events if isinstance(e, UserLog.KnowledgeExtracted)][-1]
    index, said = events.index(extracted), list(extracted.message_ids)
    events[index] = replace(extracted, repeated={"e-1": said})
    with pytest.raises(InvalidInputError, match=f"line {index + 1}: entry 'e-1' is not in the log"):
        _replay(events)
    events[index] = replace(extracted, repeated={oslo: said})
    _replay(events)


def _oslo_said_twice_in_one_batch() -> tuple[list[Any], dict[str, Any], list[str]]:
    """A log whose one extraction adds Oslo from the first message and notes the second,
    a day later, as said again: its events, the entry and the two messages."""
    log = UserLog.register("alice")
    said = [log.add_message("user", text, None, 100) for text in ("in Oslo", "still Oslo")]
    assert log.request_processing("t1", "manual") and log.start_next() is not None
    facts = [ExtractedFact("User lives in Oslo", (m,)) for m in said]
    sent = [
        BatchMessage(m, "user", "", datetime(2025, 1, day, tzinfo=UTC))
        for day, m in [(1, said[0]), (2, said[1])]
    ]
    (oslo,) = log.record_knowledge("t1", facts, "x", batch=sent)
    return [*log.collect_events()], oslo, said


def test_a_repeat_of_an_entry_its_own_extraction_added_imports() -> None:
    """A fact said again later in the batch that first stated it is noted as a repeat of
    the entry that batch adds, which the log holds once that extraction is in it."""
    events, oslo, said = _oslo_said_twice_in_one_batch()
    assert _kind(events, UserLog.KnowledgeExtracted).repeated == {oslo["entry_id"]: said[1:]}
    _replay(events)


def test_a_repeat_naming_a_source_of_the_entry_its_own_extraction_added_is_refused() -> None:
    """A message is a source of the entry or words said again of it, never both: an edited
    log whose extraction notes its entry's own source as said again is refused."""
    events, oslo, said = _oslo_said_twice_in_one_batch()
    extracted = _kind(events, UserLog.KnowledgeExtracted)
    edited = replace(extracted, repeated={oslo["entry_id"]: said})
    events[events.index(extracted)] = edited
    with pytest.raises(InvalidInputError, match="one of its own sources"):
        _replay(events)


def test_a_log_cut_inside_a_decision_is_refused_where_it_stops_or_goes_on() -> None:
    """An extraction and the end of the entry it replaced are committed together: a log
    holding the one without the other (an export cut short, a line taken out) is none
    the log's commands wrote, and would keep both homes current."""
    events = _history()
    ended = events.index(_kind(events, UserLog.KnowledgeSuperseded))
    replay = ImportReplay(None)
    for number, event in enumerate(events[:ended], start=1):
        replay.check(event, f"line {number}")
    decision = rf"line {ended}, a KnowledgeExtracted, was written in one commit with 1 event"
    with pytest.raises(InvalidInputError, match=rf"stop inside a decision: {decision}"):
        replay.check_finished()
    after = events[ended + 1]
    left_out = [*events[:ended], replace(after, originator_version=after.originator_version - 1)]
    with pytest.raises(InvalidInputError, match=rf"line {ended + 1}: {decision} .* is missing"):
        _replay(left_out)
    twice = [*events[: ended + 1], replace(events[ended], originator_version=ended + 2)]
    with pytest.raises(InvalidInputError, match=rf"Superseded only follows .*: {decision}"):
        _replay(twice)


def test_an_older_memvees_log_which_counts_no_decision_is_taken_as_it_comes() -> None:
    """Before extractions counted the events written after them, a cut there cannot be
    told from a decision that wrote nothing more."""
    older = [
        replace(e, followed_by=None) if isinstance(e, UserLog.KnowledgeExtracted) else e
        for e in _history()
    ]
    ended = older.index(_kind(older, UserLog.KnowledgeSuperseded))
    replay = ImportReplay(None)
    for number, event in enumerate(older[:ended], start=1):
        replay.check(event, f"line {number}")
    replay.check_finished()
    _replay(older)


LATE = datetime.fromisoformat("9999-12-31T23:59:59-14:00")
"""A time with an offset that, once in UTC, falls after year 9999."""
EARLY = datetime.fromisoformat("0001-01-01T00:00:00+14:00")
"""A time with an offset that, once in UTC, falls before year 1."""


@pytest.mark.parametrize(
    ("kind", "field", "moment"),
    [
        (UserLog.Registered, "timestamp", LATE),
        (UserLog.MessageAdded, "timestamp", LATE),
        (UserLog.MessageAdded, "sent_at", EARLY),
    ],
)
def test_a_time_that_falls_outside_years_1_to_9999_in_utc_is_refused_with_its_line(
    kind: type, field: str, moment: datetime
) -> None:
    """Times are kept in UTC, and ``add_message`` refuses one that has no UTC form:
    imported, it stopped its user's log from loading for good."""
    events = _changed(_history(), kind, **{field: moment})
    line = events.index(_kind(events, kind)) + 1
    with pytest.raises(InvalidInputError, match=f"line {line}: '{field}' .* is out of range"):
        _replay(events)


def test_an_entry_that_begins_outside_years_1_to_9999_in_utc_is_refused_with_its_line() -> None:
    events = _history()
    extracted = _kind(events, UserLog.KnowledgeExtracted)
    extracted.entries[0]["valid_from"] = EARLY.isoformat()
    line = events.index(extracted) + 1
    with pytest.raises(InvalidInputError, match=f"line {line}: the valid_from .* is out of range"):
        _replay(events)


def test_a_log_recorded_in_the_last_minutes_of_year_9999_is_checked_without_overflow() -> None:
    """A message may be sent, and an entry begin, a little after it was recorded (clocks
    disagree): the comparison adds nothing to a time that could run past year 9999."""
    end = datetime(9999, 12, 31, 23, 58, tzinfo=UTC)
    log = UserLog.register("bob")
    said = log.add_message("user", "I live in Oslo", None, 100)
    assert log.request_processing("t1", "manual") and log.start_next() is not None
    log.record_knowledge("t1", [ExtractedFact("User lives in Oslo", (said,))], "x")
    events = [
        replace(e, sent_at=end) if isinstance(e, UserLog.MessageAdded) else e
        for e in log.collect_events()
    ]
    _kind(events, UserLog.KnowledgeExtracted).entries[0]["valid_from"] = end.isoformat()
    _replay([replace(e, timestamp=end) for e in events])
