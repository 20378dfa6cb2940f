"""The stored form of an event: short topics, UTC times as bare microseconds, any other
offset as its ISO text; events stored in the older forms still read back."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import JSONTranscoder

from events import (
    Answered,
    Busy,
    CredentialsRefused,
    EventStore,
    ExtractedFact,
    FailedTellingNothing,
    ModelOrPathNotFound,
    Outage,
    TokenUsage,
    UserLog,
    errors,
    sqlite_url,
)
from events._codec import Decoder
from events.store import exported_state
from events.transcoding import (
    CompactMapper,
    UtcMicroseconds,
    full_topic,
    micros_of,
    register_time_transcodings,
    time_from_stored,
)

ODD_OFFSET = timezone(timedelta(hours=-7, minutes=-30))


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 30, 13, 0, 33, 200_021, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=ODD_OFFSET),
        datetime(2026, 1, 2, 3, 4, 5),
    ],
)
def test_a_time_reads_back_as_it_was_given(moment: datetime) -> None:
    transcoding = UtcMicroseconds()
    stored = transcoding.encode(moment)
    back = transcoding.decode(orjson.loads(orjson.dumps(stored)))
    assert back == moment
    assert back.utcoffset() == moment.utcoffset()
    assert back.isoformat() == moment.isoformat()
    assert type(stored) is (int if moment.tzinfo is UTC else str)


def test_what_is_not_a_stored_time_is_refused() -> None:
    with pytest.raises(ValueError, match="not a stored time"):
        UtcMicroseconds().decode(1.5)  # type: ignore[arg-type]
    assert time_from_stored({"_type_": "decimal_str", "_data_": "1"}) is None
    assert time_from_stored("2026-01-02") is None


def test_a_log_stores_short_topics_and_bare_utc_times(tmp_path: Path) -> None:
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        log.add_message("user", "hello", None, 1000)
        offset = datetime(2026, 1, 2, 3, 4, 5, tzinfo=ODD_OFFSET)
        log.add_message("user", "from the past", offset, 1000)
        store.append([log.collect_events()])
        stored = list(store.stored_events_of("ann"))
        assert [s.topic for s in stored] == ["Registered", "MessageAdded", "MessageAdded"]
        added = orjson.loads(stored[1].state)
        assert type(added["timestamp"]) is int
        assert type(added["sent_at"]) is int
        assert type(orjson.loads(stored[2].state)["sent_at"]) is int  # kept in UTC by the log
        events = store.events_of("ann")
        assert events[2].sent_at == offset
        assert events[1].timestamp.tzinfo is UTC
        exported = exported_state(stored[2].topic, stored[2].state)
        assert datetime.fromisoformat(exported["sent_at"]) == offset
        assert datetime.fromisoformat(exported["timestamp"]) == events[2].timestamp
        assert full_topic(stored[2].topic) == "events.user_log:UserLog.MessageAdded"
    finally:
        store.close()


@pytest.mark.parametrize("wrapper", ["datetime_iso", "utc_us"])
def test_an_event_stored_in_an_older_form_still_reads_back(tmp_path: Path, wrapper: str) -> None:
    """Full topics and wrapped times (what earlier versions stored), by both decoders."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("bob")
        log.add_message("user", "hello", None, 1000)
        store.append([log.collect_events()])
        moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
        data = moment.isoformat() if wrapper == "datetime_iso" else micros_of(moment)
        stamp = {"_type_": wrapper, "_data_": data}
        old = orjson.dumps(
            {
                "timestamp": stamp,
                "message_id": "m",
                "seq": 1,
                "role": "user",
                "content": "hello",
                "sent_at": stamp,
                "name": None,
            }
        )
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE memvee_events SET state = ?, topic = ? WHERE originator_version = 2",
                (old, "events.user_log:UserLog.MessageAdded"),
            )
        added = store.events_of("bob")[1]
        assert isinstance(added, UserLog.MessageAdded)
        assert added.timestamp == added.sent_at == moment
        (_, stored) = store.stored_events_of("bob")
        assert vars(store._app.mapper.to_domain_event(stored)) == vars(added)
        assert exported_state(stored.topic, old)["sent_at"] == moment.isoformat()
    finally:
        store.close()


def test_a_failure_stores_its_whole_flag_only_when_it_is_set(tmp_path: Path) -> None:
    """A failure that split its batch stores no ``whole``, so an older memvee, which does
    not know the field, reads it without a warning; one an outage left whole stores it.
    Both read back as they were recorded, and the log folds as it did live."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        for i in range(4):
            log.add_message("user", f"I like thing {i}.", None, 1000)
        for task_id, whole in [("t1", True), ("t2", False)]:
            assert log.request_processing(task_id, "manual") and log.start_next()
            log.record_failure(task_id, "HTTP 500", whole=whole)
        store.append([log.collect_events()])
        stored = [s for s in store.stored_events_of("ann") if s.topic == "ProcessingFailed"]
        states = [orjson.loads(s.state) for s in stored]
        assert [state.get("whole") for state in states] == [True, None]
        older_fields = {f.name for f in dataclasses.fields(UserLog.ProcessingFailed)} - {"whole"}
        assert older_fields.issuperset(states[1])
        failures = [e for e in store.events_of("ann") if isinstance(e, UserLog.ProcessingFailed)]
        assert [e.whole for e in failures] == [True, False]
        replayed = store.load("ann")
        assert (
            replayed is not None
            and replayed.caps == log.caps != {}
            and list(replayed.pending) == list(log.pending)
        )
    finally:
        store.close()


def test_a_check_reads_back_as_the_verdict_it_recorded_a_busy_api_included(
    tmp_path: Path,
) -> None:
    """Each verdict of a harmless request is stored as the flags every memvee reads
    (``outage``, ``refused`` and ``busy`` only when true, ``error``) and read back as
    itself: a busy API as busy, not as a failure telling nothing."""
    recorded = [
        Answered(),
        Outage(),
        CredentialsRefused("HTTP 401"),
        Busy("HTTP 429"),
        FailedTellingNothing("ValueError: a bug"),
    ]
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        ids = [log.add_message("user", f"I like thing {i}.", None, 1000) for i in range(2)]
        for verdict in recorded:
            log.record_reextraction_check("v2", [ids], TokenUsage(), verdict)
        store.append([log.collect_events()])
        stored = [s for s in store.stored_events_of("ann") if s.topic == "ReextractionChecked"]
        flags = [
            {
                k: v
                for k, v in orjson.loads(s.state).items()
                if k in ("outage", "refused", "busy", "error")
            }
            for s in stored
        ]
        assert flags == [
            {"outage": False, "error": None},
            {"outage": True, "error": None},
            {"outage": True, "refused": True, "error": "HTTP 401"},
            {"outage": False, "busy": True, "error": "HTTP 429"},
            {"outage": False, "error": "ValueError: a bug"},
        ]
        checks = [e for e in store.events_of("ann") if isinstance(e, UserLog.ReextractionChecked)]
        assert [c.verdict for c in checks] == recorded
    finally:
        store.close()


def test_a_busy_check_an_older_memvee_stored_reads_back_as_a_failure_telling_nothing(
    tmp_path: Path,
) -> None:
    """A busy check stored before ``busy`` existed holds its error alone, as a failure
    telling nothing does: it reads back as one, as it always did, with ``busy`` false."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        ids = [log.add_message("user", f"I like thing {i}.", None, 1000) for i in range(2)]
        log.record_reextraction_check("v2", [ids], TokenUsage(), Busy("HTTP 429"))
        store.append([log.collect_events()])
        (stored,) = [s for s in store.stored_events_of("ann") if s.topic == "ReextractionChecked"]
        older = {k: v for k, v in orjson.loads(stored.state).items() if k != "busy"}
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE memvee_events SET state = ? WHERE originator_version = ?",
                (orjson.dumps(older), stored.originator_version),
            )
        (check,) = [e for e in store.events_of("ann") if isinstance(e, UserLog.ReextractionChecked)]
        assert not check.busy
        assert check.verdict == FailedTellingNothing("HTTP 429")
    finally:
        store.close()


def test_a_not_found_check_reads_back_as_not_found_and_as_an_outage_where_the_flag_is_unknown(
    tmp_path: Path,
) -> None:
    """A harmless request answered 404 (a model or a base URL's path not found) is stored
    with ``not_found`` and ``outage`` and its error, and reads back as it was recorded;
    without ``not_found`` (what an older memvee, which does not know the field, reads) it
    reads as an outage, which leaves the failed calls out of the evidence all the same.
    Checks of every other verdict store no ``not_found``."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        ids = [log.add_message("user", f"I like thing {i}.", None, 1000) for i in range(2)]
        others = [Answered(), Outage(), CredentialsRefused("HTTP 401"), Busy("HTTP 429")]
        for verdict in (ModelOrPathNotFound("HTTP 404 model: claude-retired"), *others):
            log.record_reextraction_check("v2", [ids], TokenUsage(), verdict)
        store.append([log.collect_events()])
        stored = [s for s in store.stored_events_of("ann") if s.topic == "ReextractionChecked"]
        states = [orjson.loads(s.state) for s in stored]
        assert {k: states[0][k] for k in ("outage", "not_found", "error")} == {
            "outage": True,
            "not_found": True,
            "error": "HTTP 404 model: claude-retired",
        }
        assert "refused" not in states[0] and "busy" not in states[0]
        assert not [state for state in states[1:] if "not_found" in state]
        checks = [e for e in store.events_of("ann") if isinstance(e, UserLog.ReextractionChecked)]
        assert checks[0].verdict == ModelOrPathNotFound("HTTP 404 model: claude-retired")
        assert [c.verdict for c in checks[1:]] == others
        older = {k: v for k, v in states[0].items() if k != "not_found"}
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE memvee_events SET state = ? WHERE originator_version = ?",
                (orjson.dumps(older), stored[0].originator_version),
            )
        reread = [e for e in store.events_of("ann") if isinstance(e, UserLog.ReextractionChecked)]
        assert reread[0].verdict == Outage() and reread[0].verdict.blames_no_message
    finally:
        store.close()


def test_a_check_stores_its_refused_flag_only_when_it_is_set(tmp_path: Path) -> None:
    """A re-extraction check that was not refused stores no ``refused`` (what events
    recorded before the field hold), so an older memvee reads it without a warning; one
    whose API key was refused stores it. Both read back as recorded, the first as false."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        ids = [log.add_message("user", f"I like thing {i}.", None, 1000) for i in range(2)]
        for verdict in (CredentialsRefused("HTTP 401"), FailedTellingNothing("HTTP 401")):
            log.record_reextraction_check("v2", [ids], TokenUsage(), verdict)
        store.append([log.collect_events()])
        stored = [s for s in store.stored_events_of("ann") if s.topic == "ReextractionChecked"]
        states = [orjson.loads(s.state) for s in stored]
        assert [state.get("refused") for state in states] == [True, None]
        fields = {f.name for f in dataclasses.fields(UserLog.ReextractionChecked)}
        assert (fields - {"refused"}).issuperset(states[1])
        checks = [e for e in store.events_of("ann") if isinstance(e, UserLog.ReextractionChecked)]
        assert [c.refused for c in checks] == [True, False]
        older = [e for e in store._app.repository.event_store.get(checks[1].originator_id)]
        assert [e.refused for e in older if isinstance(e, UserLog.ReextractionChecked)] == [
            True,
            False,
        ]
    finally:
        store.close()


def test_the_compact_form_goes_through_a_compressor() -> None:
    """A configured compressor (or cipher) wraps the compact state; times still come back."""
    transcoder = JSONTranscoder()
    register_time_transcodings(transcoder)
    mapper = CompactMapper(transcoder, compressor=ZlibCompressor())
    log = UserLog.register("cy")
    log.add_message("user", "squeezed", datetime(2026, 5, 6, 7, 8, 9, tzinfo=ODD_OFFSET), 1000)
    for event in log.collect_events():
        stored = mapper.to_stored_event(event)
        assert stored.topic == type(event).__name__
        assert orjson.loads(ZlibCompressor().decompress(stored.state))["timestamp"] > 0
        assert vars(mapper.to_domain_event(stored)) == vars(event)


@pytest.mark.parametrize("compressed", [False, True], ids=["compact JSON", "compressed"])
def test_the_time_of_a_stored_event_reads_as_the_events_own(compressed: bool) -> None:
    """What the write path reads of a log's first event to know when the log began: off
    the compact JSON, else through the whole event, the same time either way."""
    transcoder = JSONTranscoder()
    register_time_transcodings(transcoder)
    mapper = CompactMapper(transcoder, compressor=ZlibCompressor() if compressed else None)
    decoder = Decoder(mapper)
    log = UserLog.register("dee")
    (registered,) = log.collect_events()
    stored = mapper.to_stored_event(registered)
    args = (stored.originator_id, 1, stored.topic, stored.state)

    assert decoder.timestamp(*args) == registered.timestamp == log.created_on
    if not compressed:  # the form earlier versions stored: the time wrapped
        wrapped = {"_type_": "datetime_iso", "_data_": registered.timestamp.isoformat()}
        older = orjson.dumps({**orjson.loads(stored.state), "timestamp": wrapped})
        assert decoder.timestamp(*args[:3], older) == registered.timestamp


def test_a_snapshot_reads_back_as_eventsourcings_mapper_reads_it(tmp_path: Path) -> None:
    """Snapshots hold times inside their state: the store's decoder walks to them and must
    give the mapper's very event; a string that looks like a marker's key sends the state
    to the mapper itself."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("eve")
        ids = [log.add_message("user", f"m{i} ünïcödé", None, 1000, "Zoë") for i in range(30)]
        log.request_processing("t1", "manual")
        log.start_next()
        log.record_knowledge("t1", [ExtractedFact("Eve is here", (ids[0],))], "offline")
        log.request_processing("t2", "manual")
        log.start_next()  # a task left open: its dict holds times of its own
        plain = Snapshot.take(log)
        nested = Snapshot.take(log)
        nested.__dict__["state"] = dict(nested.state)
        nested.state["extra"] = [
            {"at": datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=UTC), "deeper": [ODD_OFFSET_TIME]},
            {"not": "a marker", "_data_": 1},
        ]
        decoy = Snapshot.take(log)
        decoy.__dict__["state"] = {**decoy.state, "note": "_type_"}
        mapper = store._app.mapper
        for taken, fast in ((plain, True), (nested, True), (decoy, False)):
            stored = mapper.to_stored_event(taken)
            assert (store._decoder._parse(stored.state) is not None) is fast
            decoded = store._decoder(
                stored.originator_id, stored.originator_version, stored.topic, stored.state
            )
            assert vars(decoded) == vars(mapper.to_domain_event(stored))
    finally:
        store.close()


ODD_OFFSET_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=ODD_OFFSET)


@pytest.mark.parametrize(
    ("left_out", "added"),
    [((), "tone"), (("name",), "mood")],  # a field is noted once a process: one each
    ids=["every field", "a default left out"],
)
def test_fields_a_newer_memvee_added_to_an_event_are_read_past_and_logged_once_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left_out: tuple[str, ...], added: str
) -> None:
    """A rolling upgrade: a newer memvee stored a MessageAdded with a field this one does
    not know, beside every field or with one left out for its default (as optional flags
    are stored only when set). Every decoder reads the event as this memvee knows it, and
    the log says once which field of which type it passed over, never the value."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        log.add_message("user", "hello", None, 1000)
        log.add_message("user", "again", None, 1000)
        store.append([log.collect_events()])
        with store.engine.begin() as connection:
            for (version,) in connection.exec_driver_sql(
                "SELECT originator_version FROM memvee_events WHERE topic = 'MessageAdded'"
            ).fetchall():
                state = orjson.loads(
                    connection.exec_driver_sql(
                        "SELECT state FROM memvee_events WHERE originator_version = ?", (version,)
                    ).scalar_one()
                )
                kept = {k: v for k, v in state.items() if k not in left_out}
                newer = orjson.dumps({**kept, added: "a secret tone"})
                connection.exec_driver_sql(
                    "UPDATE memvee_events SET state = ? WHERE originator_version = ?",
                    (newer, version),
                )
        with caplog.at_level("INFO", logger="memvee.events"):
            events = store.events_of("ann")
            stored = list(store.stored_events_of("ann"))
            by_mapper = store._app.mapper.to_domain_event(stored[1])
            followed = [r.event for page in store.follow() for r in page]
        assert [e.content for e in events[1:]] == ["hello", "again"]  # type: ignore[attr-defined]
        assert all(added not in vars(e) for e in [*events, by_mapper, *followed])
        assert vars(by_mapper) == vars(events[1])
        noted = [r.getMessage() for r in caplog.records if f"'{added}'" in r.getMessage()]
        assert len(noted) == 1 and "MessageAdded" in noted[0]
        assert "secret" not in caplog.text
    finally:
        store.close()


def test_an_event_of_a_type_only_a_newer_memvee_knows_is_a_typed_error_for_its_log_alone(
    tmp_path: Path,
) -> None:
    """A newer memvee stored an event of a type this one does not know: reading that log
    says so (upgrade, nothing is damaged), by every decoder; the other logs read on, and
    the event stays stored."""
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        for user in ("ann", "bob"):
            log = UserLog.register(user)
            log.add_message("user", f"{user} here", None, 1000)
            store.append([log.collect_events()])
        (registered, _) = store.stored_events_of("ann")
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO memvee_events (originator_id, originator_version, topic, state) "
                "VALUES (?, 3, 'MessageEdited', ?)",
                (registered.originator_id.bytes, b'{"timestamp":1767603600000000}'),
            )
        for read in (lambda: store.events_of("ann"), lambda: list(store.follow())):
            with pytest.raises(errors.UnreadableEventError) as raised:
                read()
            assert "'MessageEdited' was written by a newer memvee" in str(raised.value)
            assert "upgrade memvee" in str(raised.value)
            assert isinstance(raised.value, errors.NewerEventError)
            assert (raised.value.version, raised.value.topic) == (3, "MessageEdited")
        assert [e.content for e in store.events_of("bob")[1:]] == ["bob here"]  # type: ignore[attr-defined]
        assert [s.topic for s in store.stored_events_of("ann")][-1] == "MessageEdited"
    finally:
        store.close()
