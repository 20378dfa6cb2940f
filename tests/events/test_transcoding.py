"""Times inside stored events: UTC ones as whole microseconds, any other offset as its ISO
text, and events stored in eventsourcing's own ISO form still read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from events import EventStore, UserLog, sqlite_url
from events.store import exported_state
from events.transcoding import UtcMicroseconds, time_from_stored

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


def test_the_events_of_a_log_store_their_times_as_microseconds(tmp_path: Path) -> None:
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("ann")
        log.add_message("user", "hello", None, 1000)
        offset = datetime(2026, 1, 2, 3, 4, 5, tzinfo=ODD_OFFSET)
        log.add_message("user", "from the past", offset, 1000)
        store.append([log.collect_events()])
        stored = list(store.stored_events_of("ann"))
        added = orjson.loads(stored[1].state)
        assert added["timestamp"]["_type_"] == "utc_us"
        assert type(added["timestamp"]["_data_"]) is int
        assert type(orjson.loads(stored[2].state)["sent_at"]["_data_"]) is int
        events = store.events_of("ann")
        assert events[2].sent_at == offset  # the log keeps every time in UTC
        exported = exported_state(stored[2].state)
        assert datetime.fromisoformat(exported["sent_at"]) == offset
        assert datetime.fromisoformat(exported["timestamp"]) == events[2].timestamp
    finally:
        store.close()


def test_an_event_stored_with_iso_times_still_reads_back(tmp_path: Path) -> None:
    store = EventStore(sqlite_url(tmp_path / "t.db"))
    try:
        log = UserLog.register("bob")
        log.add_message("user", "hello", None, 1000)
        store.append([log.collect_events()])
        stamp = "2026-01-02T03:04:05.000006+00:00"
        with store.engine.begin() as connection:
            old = orjson.dumps(
                {"timestamp": {"_type_": "datetime_iso", "_data_": stamp}, "user_id": "bob"}
            )
            connection.exec_driver_sql(
                "UPDATE memvee_events SET state = ? WHERE originator_version = 1", (old,)
            )
        first = store.events_of("bob")[0]
        assert first.timestamp == datetime.fromisoformat(stamp)
        assert exported_state(old)["timestamp"] == stamp
    finally:
        store.close()
