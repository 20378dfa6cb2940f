"""The event store's contract, written once and run on every backend."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection, Transaction
from sqlalchemy.pool import NullPool

from events import (
    ConflictError,
    EventStore,
    ExtractedFact,
    InvalidInputError,
    Recorded,
    StorageError,
    UserLog,
    user_log_id,
)


class EventStoreContract:
    """Subclasses provide ``url``: a fixture naming an empty database."""

    @pytest.fixture
    def store(self, url: str) -> Iterator[EventStore]:
        store = EventStore(url)
        yield store
        store.close()

    def test_an_unknown_user_has_no_log(self, store: EventStore) -> None:
        assert store.load("ghost") is None

    def test_a_forget_that_erases_nothing_owes_the_file_no_rewrite(self, store: EventStore) -> None:
        """Forgetting a user never stored (or already forgotten) leaves no words to
        scrub, so it costs no rewrite of the whole file."""
        with store.transaction() as connection:
            assert store.forget(connection, "nobody") == (0, 0)
            assert store.owed_rewrite(connection) == 0

        assert not store.rewrite_owed

    def test_appended_events_load_back(self, store: EventStore) -> None:
        log = UserLog.register("ann")
        ids = [log.add_message("user", f"m{i}", None, 100) for i in range(3)]
        recorded = store.append([log.collect_events()])
        assert [r.notification_id for r in recorded] == sorted(r.notification_id for r in recorded)
        loaded = store.load("ann")
        assert loaded is not None and list(loaded.pending) == ids and loaded.version == 4

    def test_many_logs_share_one_append(self, store: EventStore) -> None:
        logs = [UserLog.register(f"user-{i}") for i in range(5)]
        for log in logs:
            log.add_message("user", "hello", None, 100)
        store.append([log.collect_events() for log in logs])
        assert all(store.load(f"user-{i}") is not None for i in range(5))
        assert store.max_position() == 10

    def test_a_large_append_gives_each_event_its_own_position_in_order(
        self, store: EventStore
    ) -> None:
        """An append larger than one insert statement (PostgreSQL writes 1,000 events a
        statement) returns each event's position in the order given, and each log's
        events are stored in version order at ascending positions."""
        logs = [UserLog.register(f"user-{i}") for i in range(3)]
        for log in logs:
            for n in range(799):
                log.add_message("user", f"{log.user_id} {n}", None, 100)
        batches = [log.collect_events() for log in logs]
        recorded = store.append(batches)
        events = [e for batch in batches for e in batch]
        assert len(recorded) == len(events) == 2_400
        assert [r.event for r in recorded] == events
        assert len({r.notification_id for r in recorded}) == 2_400
        assert [r.notification_id for r in recorded] == sorted(r.notification_id for r in recorded)
        with store.reading() as connection:
            stored = store.notifications(connection, after=0, limit=3_000)
        assert _where(stored) == _where(recorded)

    @pytest.mark.parametrize("per_log", [20, 400], ids=["one statement", "several statements"])
    def test_an_append_checked_against_its_logs_beginnings_gives_each_event_its_position(
        self, store: EventStore, per_log: int
    ) -> None:
        """Logs stored before, each with when it began, beside a new log in one append:
        checked and inserted (on PostgreSQL as one statement, up to 1,000 events), each
        event comes back with its own position, in the order given, as stored."""
        old = [UserLog.register(f"old-{i}") for i in range(2)]
        store.append([log.collect_events() for log in old])
        before = store.max_position()
        new = UserLog.register("new")
        for log in (*old, new):
            for n in range(per_log):
                log.add_message("user", f"{log.user_id} {n}", None, 100)
        batches = [log.collect_events() for log in (new, *old)]
        recorded = store.append(batches, origins={log.id: log.created_on for log in old})
        events = [e for batch in batches for e in batch]
        assert [r.event for r in recorded] == events
        with store.reading() as connection:
            stored = store.notifications(connection, after=before, limit=3_000)
        assert sorted(_where(stored)) == sorted(_where(recorded))
        assert len({r.notification_id for r in recorded}) == len(events)

    def test_a_log_begun_in_the_same_append_as_a_write_checked_against_it_is_stored(
        self, store: EventStore
    ) -> None:
        """An actor decides a new user's second write before its first is stored (it
        pipelines), and a group commit may take both: the second write's check of when
        the log began finds the first event in this very append."""
        log = UserLog.register("joy")
        log.add_message("user", "first", None, 100)
        first = log.collect_events()
        log.add_message("user", "second", None, 100)
        second = log.collect_events()
        recorded = store.append([first, second], origins={log.id: log.created_on})
        assert [r.event for r in recorded] == [*first, *second]
        loaded = store.load("joy")
        assert loaded is not None and loaded.version == 3

    @pytest.mark.parametrize("per_log", [20, 400], ids=["one statement", "several statements"])
    def test_one_log_begun_again_in_a_checked_append_stores_none_of_its_logs(
        self, store: EventStore, per_log: int
    ) -> None:
        old = [UserLog.register(f"old-{i}") for i in range(3)]
        store.append([log.collect_events() for log in old])
        with store.transaction() as connection:
            store.forget(connection, "old-1")
        store.append([UserLog.register("old-1").collect_events()])
        for log in old:
            for n in range(per_log):
                log.add_message("user", f"{log.user_id} {n}", None, 100)
        position = store.max_position()
        with pytest.raises(ConflictError, match="forgotten and begun again"):
            store.append(
                [log.collect_events() for log in old],
                origins={log.id: log.created_on for log in old},
            )
        assert store.max_position() == position

    def test_a_version_conflict_raises_and_stores_nothing(self, store: EventStore) -> None:
        log = UserLog.register("bo")
        store.append([log.collect_events()])
        first, second = store.load("bo"), store.load("bo")
        assert first is not None and second is not None
        first.add_message("user", "one", None, 100)
        second.add_message("user", "two", None, 100)
        store.append([first.collect_events()])
        position = store.max_position()
        with pytest.raises(ConflictError):
            store.append([second.collect_events()])
        assert store.max_position() == position

    def test_a_failed_group_stores_none_of_its_logs(self, store: EventStore) -> None:
        log = UserLog.register("cy")
        store.append([log.collect_events()])
        again = UserLog.register("cy")
        other = UserLog.register("dee")
        with pytest.raises(ConflictError):
            store.append([other.collect_events(), again.collect_events()])
        assert store.load("dee") is None

    def test_batches_whose_write_was_not_acknowledged_are_found_if_they_are_stored(
        self, store: EventStore
    ) -> None:
        """A write whose acknowledgement was lost is found, with its events' positions;
        one not stored, or whose versions hold another writer's events, is not."""
        ann = UserLog.register("ann")
        batches, recorded = [], []
        for text in ("one", "two", "never stored"):
            ann.add_message("user", text, None, 100)
            batches.append(ann.collect_events())
            if text != "never stored":
                recorded.append(store.append([batches[-1]]))
        bo, rival = UserLog.register("bo"), UserLog.register("bo")
        while rival.created_on == bo.created_on:  # begun by another writer, at another time
            rival = UserLog.register("bo")
        store.append([rival.collect_events()])
        found = store.find_recorded([*batches, bo.collect_events()])
        assert found == [*recorded, None, None]

    @staticmethod
    def _snapshotted(store: EventStore, user: str) -> UserLog:
        """A stored log of 32 events: a snapshot at version 31, one event after it."""
        log = UserLog.register(user)
        for i in range(30):
            log.add_message("user", f"m{i}", None, 100)
        store.append([log.collect_events()])
        store.take_snapshot(log)
        log.add_message("user", "after", None, 100)
        store.append([log.collect_events()])
        return log

    def test_snapshots_give_the_same_state(self, store: EventStore) -> None:
        log = self._snapshotted(store, "eve")
        loaded = store.load("eve")
        assert loaded is not None
        assert loaded.pending == log.pending and loaded.version == log.version

    def test_an_event_whose_log_lacks_the_version_before_it_is_a_conflict(
        self, store: EventStore
    ) -> None:
        """A write decided on a log erased meanwhile must not land past a gap: the writer
        is told to reload, as after a concurrent append."""
        log = UserLog.register("hal")
        for i in range(4):
            log.add_message("user", f"m{i}", None, 100)
        events = log.collect_events()
        store.append([events[:2]])
        position = store.max_position()
        with pytest.raises(ConflictError, match="no version before this event"):
            store.append([events[3:]])
        assert store.max_position() == position
        store.append([events[2:]])
        loaded = store.load("hal")
        assert loaded is not None and loaded.version == 5
        assert store.gaps() == []

    def test_a_write_on_a_log_begun_again_to_its_version_is_a_conflict(
        self, store: EventStore
    ) -> None:
        """Forgotten and begun again up to the version a write follows, the log looks the
        same to the versions: the write says when its log began, and another beginning is
        a conflict; nothing is stored."""
        stale = UserLog.register("ivy")
        stale.add_message("user", "I live in Oslo.", None, 100)
        store.append([stale.collect_events()])
        with store.transaction() as connection:
            store.forget(connection, "ivy")
        begun = UserLog.register("ivy")
        begun.add_message("user", "I live in Rome.", None, 100)
        store.append([begun.collect_events()])
        stale.add_message("user", "Still here.", None, 100)
        position = store.max_position()

        with pytest.raises(ConflictError, match="forgotten and begun again"):
            store.append([stale.collect_events()], origins={stale.id: stale.created_on})

        assert store.max_position() == position
        begun.add_message("user", "Still here.", None, 100)
        store.append([begun.collect_events()], origins={begun.id: begun.created_on})
        loaded = store.load("ivy")
        assert loaded is not None and loaded.version == 3
        assert loaded.created_on == begun.created_on

    @pytest.mark.parametrize("snapshotted", [False, True], ids=["no snapshot", "snapshot"])
    def test_a_log_stored_with_a_gap_in_its_versions_is_a_storage_error_on_load(
        self, store: EventStore, snapshotted: bool
    ) -> None:
        """A gap stored before the database refused them loads as a typed error, not as a
        bare assertion of eventsourcing's, and is never folded over."""
        table = store._events.name
        with store.engine.begin() as connection:
            on = "" if store.is_sqlite else f" ON {table}"
            connection.exec_driver_sql(f"DROP TRIGGER {table}_in_sequence{on}")
        log = UserLog.register("gus")
        for i in range(4):
            log.add_message("user", f"m{i}", None, 100)
        events = log.collect_events()
        if snapshotted:
            store.append([events[:2]])
            store.take_snapshot(store.load("gus"))  # type: ignore[arg-type]
            store.append([events[3:]])
        else:
            store.append([events[2:]])
        with pytest.raises(StorageError, match=r"log of 'gus' is broken: version \d+ where"):
            store.load("gus")
        assert store.gaps() == [(str(user_log_id("gus")), 4 if snapshotted else 3)]

    def test_a_snapshot_that_cannot_be_read_is_passed_over_for_the_events(
        self, store: EventStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A snapshot is a cache of the log: damaged, or of a layout this version cannot
        take, the log loads from its first event instead, and says so."""
        log = self._snapshotted(store, "ivy")
        with store.engine.begin() as connection:
            snapshots = store._snapshots
            connection.execute(snapshots.update().values(state=b'{"not a snapshot'))
        loaded = store.load("ivy")
        assert loaded is not None
        assert loaded.pending == log.pending and loaded.version == log.version == 32
        assert "the snapshot of 'ivy' at version 31 cannot be read" in caplog.text

    def test_an_event_that_cannot_be_read_is_a_storage_error_wherever_it_is_read(
        self, store: EventStore
    ) -> None:
        log = UserLog.register("jo")
        for i in range(3):
            log.add_message("user", f"m{i}", None, 100)
        store.append([log.collect_events()])
        events = store._events
        with store.engine.begin() as connection:
            damaged = events.update().where(events.c.originator_version == 3)
            connection.execute(damaged.values(state=b'{"not an event'))
        unreadable = r"version 3 of log \S+ cannot be read"
        with pytest.raises(StorageError, match=r"log of 'jo' is broken, in .*" + unreadable):
            store.load("jo")
        with pytest.raises(StorageError, match="version 3 of the log of 'jo' cannot be read"):
            store.events_of("jo")
        with pytest.raises(StorageError, match=unreadable):
            list(store.follow())

    def test_a_snapshot_goes_in_with_the_events_that_reach_its_version(
        self, store: EventStore
    ) -> None:
        log = UserLog.register("fay")
        for i in range(30):
            log.add_message("user", f"m{i}", None, 100)
        snapshot = store.snapshot_of(log)
        assert snapshot is not None and snapshot.originator_version == log.version == 31
        events = log.collect_events()
        log.add_message("user", "after the snapshot was taken", None, 100)
        store.append([events], snapshots=[snapshot])
        assert self._snapshot_versions(store) == [31], "stored in the events' transaction"
        store.append([], snapshots=[snapshot])  # stored already: passed over
        assert self._snapshot_versions(store) == [31]
        loaded = store.load("fay")
        assert loaded is not None and loaded.version == 31
        assert loaded.message_count == len(loaded.pending) == 30, "the state when it was taken"

    @pytest.mark.parametrize("refused", [False, True])
    def test_a_snapshot_from_before_the_last_runs_end_was_kept_loads_how_it_ended(
        self, store: EventStore, refused: bool
    ) -> None:
        """A snapshot taken before the log kept how its last task ended does not hide a
        failure recorded before it: the log loads as its events say (its last run failed,
        refused or not), and a takeover or a reopen retries it accordingly."""
        log = UserLog.register("fay")
        log.add_message("user", "m", None, 100)
        log.request_processing("t1", "manual")
        log.start_next()
        log.record_failure("t1", "the API key was refused", refused=refused)
        log.add_message("user", "after the failure", None, 100)
        old_form = Snapshot.take(log)
        for name in ("failed_last", "refused_last"):
            del old_form.state[name]
        store.append([log.collect_events()], snapshots=[StoredEvent(*store._encoder(old_form))])
        assert self._snapshot_versions(store) == [log.version]
        loaded = store.load("fay")
        assert loaded is not None and loaded.version == log.version
        assert (loaded.failed_last, loaded.refused_last) == (True, refused)

    def test_a_snapshot_replaces_the_older_snapshots_of_its_log_only(
        self, store: EventStore
    ) -> None:
        fay, gus = UserLog.register("fay"), UserLog.register("gus")
        store.append([fay.collect_events(), gus.collect_events()])
        store.take_snapshot(gus)
        for i in range(3):
            fay.add_message("user", f"m{i}", None, 100)
            snapshot = store.snapshot_of(fay)
            assert snapshot is not None
            store.append([fay.collect_events()], snapshots=[snapshot])
        gus.add_message("user", "m", None, 100)
        store.append([gus.collect_events()])
        store.take_snapshot(gus)
        assert self._snapshot_versions(store) == [2, 4], "one each: fay's at 4, gus's at 2"
        loaded = store.load("fay")
        assert loaded is not None and loaded.version == 4 and loaded.message_count == 3

    def test_a_snapshot_is_not_stored_when_its_events_are_not(self, store: EventStore) -> None:
        log = UserLog.register("gil")
        store.append([log.collect_events()])
        again = UserLog.register("gil")
        again.add_message("user", "m", None, 100)
        snapshot = store.snapshot_of(again)
        with pytest.raises(ConflictError):
            store.append([again.collect_events()], snapshots=[snapshot] if snapshot else [])
        assert self._snapshot_versions(store) == []

    @staticmethod
    def _snapshot_versions(store: EventStore) -> list[int]:
        table = store._snapshots
        with store.engine.connect() as connection:
            query = select(table.c.originator_version).order_by(table.c.originator_version)
            return [row[0] for row in connection.execute(query)]

    def test_follow_reads_every_event_in_commit_order(self, store: EventStore) -> None:
        for i in range(7):
            log = UserLog.register(f"f{i}")
            store.append([log.collect_events()])
        pages = list(store.follow(page_size=3))
        assert [len(p) for p in pages] == [3, 3, 1]
        ids = [r.notification_id for p in pages for r in p]
        assert ids == sorted(ids) and len(ids) == 7

    def test_events_of_reads_a_version_range(self, store: EventStore) -> None:
        log = UserLog.register("gus")
        for i in range(5):
            log.add_message("user", f"m{i}", None, 100)
        store.append([log.collect_events()])
        events = store.events_of("gus", after=2, upto=4)
        assert [e.originator_version for e in events] == [3, 4]

    def test_events_are_stored_as_eventsourcings_mapper_stores_them(
        self, store: EventStore
    ) -> None:
        """The store writes states with its own encoder; they must be the mapper's bytes."""
        log = UserLog.register("ida")
        ids = [
            log.add_message("user", text, None, 1000, name)
            for text, name in [
                ("plain", None),
                ('quotes " and \\ and\ttabs\nand\x01 controls', "Ann"),
                ("ünïcödé, emoji 🎉, \u2028 separators", "Zoë"),
            ]
        ]
        log.request_processing("t1", "manual")
        log.start_next()
        log.record_knowledge("t1", [ExtractedFact("User is here", (ids[0],))], "offline")
        events = log.collect_events()
        store.append([events])
        mapper = store._app.mapper  # the reference: what eventsourcing itself would store
        expected = [mapper.to_stored_event(e).state for e in events]
        assert [s.state for s in store.stored_events_of("ida")] == expected

    def test_a_log_read_in_pages_is_read_whole_while_it_grows(self, store: EventStore) -> None:
        log = UserLog.register("ivo")
        for n in range(4):
            log.add_message("user", f"m{n}", None, 100)
        store.append([log.collect_events()])
        pages = store.stored_events_of("ivo", page_size=2)
        read = [next(pages).originator_version]
        log.add_message("user", "meanwhile", None, 100)
        store.append([log.collect_events()], origins={log.id: log.created_on})
        read += [s.originator_version for s in pages]
        assert read == [1, 2, 3, 4, 5, 6]

    def test_a_window_of_a_log_read_in_pages_is_its_events_between_two_versions(
        self, store: EventStore
    ) -> None:
        log = UserLog.register("ivo")
        for n in range(6):
            log.add_message("user", f"m{n}", None, 100)
        store.append([log.collect_events()])
        window = store.events_in_pages("ivo", page_size=2, after=2, upto=6)
        assert [e.originator_version for e in window] == [3, 4, 5, 6]
        assert list(store.events_in_pages("ivo", after=7)) == []
        assert list(store.events_in_pages("nobody")) == []

    @pytest.mark.parametrize("begun_again", [False, True], ids=["erased", "begun again"])
    @pytest.mark.parametrize("read", ["stored_events_of", "events_in_pages"])
    def test_a_log_forgotten_while_it_is_read_in_pages_is_an_error_not_part_of_a_log(
        self, store: EventStore, begun_again: bool, read: str
    ) -> None:
        """A log erased between two pages of a read, stored or decoded, is a StorageError,
        never a log cut short nor one spliced with the log begun after it."""
        log = UserLog.register("ivo")
        for n in range(4):
            log.add_message("user", f"old {n}", None, 100)
        store.append([log.collect_events()])
        pages = getattr(store, read)("ivo", page_size=2)
        assert next(pages).originator_version == 1
        with store.transaction() as connection:
            store.forget(connection, "ivo")
        if begun_again:
            again = UserLog.register("ivo")
            for n in range(4):
                again.add_message("user", f"new {n}", None, 100)
            store.append([again.collect_events()])
        assert next(pages).originator_version == 2
        with pytest.raises(StorageError, match="'ivo' was forgotten while their log was read"):
            next(pages)

    @pytest.mark.parametrize("begun_again", [False, True], ids=["erased", "begun again"])
    @pytest.mark.parametrize("write", ["replace_snapshot", "take_snapshot"])
    def test_a_snapshot_of_a_log_forgotten_since_its_load_is_not_stored(
        self, store: EventStore, url: str, begun_again: bool, write: str
    ) -> None:
        """A log erased by another process between its load and its snapshot's write never
        comes back as that snapshot: the log stays forgotten, or the log begun again after
        the erasure loads as its own, and takes its next events."""
        log = UserLog.register("ivo")
        for n in range(4):
            log.add_message("user", f"old {n}", None, 100)
        store.append([log.collect_events()])
        loaded = store.load("ivo")
        assert loaded is not None
        other = EventStore(url)
        try:
            with other.transaction() as connection:
                other.lock_writers(connection)
                other.forget(connection, "ivo")
            if begun_again:
                other.append([UserLog.register("ivo").collect_events()])
        finally:
            other.close()
        assert getattr(store, write)(loaded) is False
        assert self._snapshot_versions(store) == []
        again = store.load("ivo")
        if not begun_again:
            assert again is None
            return
        assert again is not None and again.version == 1 and again.message_count == 0
        again.add_message("user", "new", None, 100)
        store.append([again.collect_events()], origins={again.id: again.created_on})
        assert store.last_version("ivo") == 2

    def test_snapshots_are_encoded_as_eventsourcings_mapper_encodes_them(
        self, store: EventStore
    ) -> None:
        log = UserLog.register("ivy")
        ids = [log.add_message("user", f"m{i} ünïcödé 🎉", None, 1000, "Zoë") for i in range(12)]
        log.request_processing("t1", "manual")
        log.start_next()
        log.record_knowledge("t1", [ExtractedFact("User is here", (ids[0],))], "offline")
        log.add_message("user", "still waiting", None, 100)
        taken = Snapshot.take(log)
        expected = store._app.mapper.to_stored_event(taken)
        assert store._encoder(taken) == (log.id, log.version, expected.topic, expected.state)
        snapshot = store.snapshot_of(log)
        assert snapshot is not None and snapshot.originator_version == log.version
        store.append([log.collect_events()], snapshots=[snapshot])
        loaded = store.load("ivy")
        assert loaded is not None and vars(loaded) == vars(log)

    def test_a_state_orjson_would_write_otherwise_goes_through_the_mapper(
        self, store: EventStore
    ) -> None:
        log = UserLog.register("jon")
        log.add_message("user", "x", None, 100)
        (registered, added) = log.collect_events()
        added.__dict__["content"] = UUID(int=7)  # orjson writes a UUID as a plain string
        store.append([[registered, added]])
        (_, loaded) = store.events_of("jon")
        assert loaded.__dict__["content"] == UUID(int=7)

    def test_another_process_sees_the_events(self, store: EventStore, url: str) -> None:
        log = UserLog.register("hal")
        log.add_message("user", "durable", None, 100)
        store.append([log.collect_events()])
        script = (
            "import sys; from events import EventStore; s = EventStore(sys.argv[1]); "
            "log = s.load('hal'); print(log.message_count)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, url],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert out.stdout.strip() == "1"

    @pytest.mark.parametrize(
        "failing",
        # A connection of the pool (PostgreSQL's) is invalidated only once a rollback failed.
        [("rollback", "invalidate"), ("close",), ("rollback", "invalidate", "close")],
        ids=["invalidate", "close", "every-step"],
    )
    def test_a_failed_write_whose_connection_fails_to_close_raises_its_own_error_and_frees_the_lock(
        self,
        store: EventStore,
        url: str,
        failing: Sequence[str],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Closing a failed write's connection fails: the caller is told the write's own
        failure, the connection's transaction (and on SQLite the write lock) ends at once
        all the same, and the failure to close it is logged."""
        store.append([UserLog.register("cy").collect_events()])
        armed = _fail_on_the_refused_connection(failing, monkeypatch)

        def refuse(connection: Connection, _: list[Recorded]) -> None:
            armed.append(connection)
            raise InvalidInputError("the projection refused the write")

        dee = UserLog.register("dee").collect_events()
        with (
            caplog.at_level(logging.WARNING, logger="memvee.events"),
            pytest.raises(InvalidInputError, match="the projection refused the write"),
        ):
            store.append([dee], refuse)

        started = time.monotonic()
        _take_the_writers_lock(url, within_seconds=2)
        assert time.monotonic() - started < 2
        store.append([dee])
        assert store.load("dee") is not None
        assert any(
            "discarded after a failed transaction" in r.getMessage()
            and any(f"{step} failed" in r.getMessage() for step in failing)
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]

    def test_a_failed_read_whose_rollback_fails_raises_its_own_error(
        self,
        store: EventStore,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Ending a failed read's transaction fails: the reader is told its own failure,
        the failure to end it is logged, and the next reads go on."""
        store.append([UserLog.register("cy").collect_events()])
        armed = _fail_on_the_refused_connection(("rollback",), monkeypatch)
        with (
            caplog.at_level(logging.WARNING, logger="memvee.events"),
            pytest.raises(InvalidInputError, match="the reader gave up"),
            store.reading() as connection,
        ):
            armed.append(connection)
            assert store.max_position(connection) > 0
            raise InvalidInputError("the reader gave up")

        assert store.load("cy") is not None
        assert any(
            "discarded after a failed transaction" in r.getMessage()
            and "rollback failed" in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]

    def test_a_write_whose_commit_fails_is_never_committed_later_and_frees_the_lock(
        self, store: EventStore, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A write's COMMIT fails before the database ended its transaction: the caller is
        told, the transaction ends then and there (another writer takes the lock), and no
        later transaction on the same connection commits the write it was told failed."""
        store.append([UserLog.register("cy").collect_events()])
        _fail_the_next_commit(store, monkeypatch)
        with pytest.raises(Exception, match="the COMMIT was never sent"):
            store.append([UserLog.register("dee").collect_events()])

        _take_the_writers_lock(url, within_seconds=2)
        store.append([UserLog.register("eve").collect_events()])
        assert store.load("dee") is None
        assert store.load("eve") is not None

    def test_a_read_whose_end_fails_leaves_no_snapshot_to_the_next_read(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ending a read fails: the next read sees the log as it is then, not the failed
        read's snapshot kept open on a pooled connection."""
        store.append([UserLog.register("cy").collect_events()])
        with store.reading() as connection:
            before = store.max_position(connection)
        _fail_the_next_commit(store, monkeypatch)
        with (
            pytest.raises(Exception, match="the COMMIT was never sent"),
            store.reading() as connection,
        ):
            assert store.max_position(connection) == before

        store.append([UserLog.register("dee").collect_events()])
        with store.reading() as connection:
            assert store.max_position(connection) > before

    def test_an_interrupt_while_a_failed_read_ends_hands_its_connection_back_first(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A Ctrl-C lands while a failed read's transaction is rolled back: it goes on to
        the caller, but only once the connection is freed (none is left checked out), and
        no warning tells it (a command line would print it beside its own Ctrl-C line)."""
        store.append([UserLog.register("cy").collect_events()])
        pool: Any = store.engine.pool
        checked_out = pool.checkedout()
        armed = _fail_on_the_refused_connection(("rollback",), monkeypatch, KeyboardInterrupt)
        with (
            caplog.at_level(logging.WARNING, logger="memvee.events"),
            pytest.raises(KeyboardInterrupt),
            store.reading() as connection,
        ):
            armed.append(connection)
            raise InvalidInputError("the reader gave up")

        assert pool.checkedout() == checked_out
        assert not [r for r in caplog.records if "discarded" in r.getMessage()]
        assert store.load("cy") is not None


def _fail_the_next_commit(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next COMMIT ``store`` sends fail in its driver before it reaches the
    database (which keeps the transaction open), and the ones after it succeed."""
    dialect = store.engine.dialect
    real = dialect.do_commit
    armed = [True]

    def do_commit(driver_connection: Any) -> None:
        if armed.pop() if armed else False:
            raise dialect.loaded_dbapi.OperationalError("the COMMIT was never sent")
        real(driver_connection)

    monkeypatch.setattr(dialect, "do_commit", do_commit)


def _fail_on_the_refused_connection(
    failing: Sequence[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: type[BaseException] = RuntimeError,
) -> list[Connection]:
    """Make each of ``failing`` (``rollback``, ``invalidate``, ``close``) raise ``raised``
    on the connections put in the list returned, and on no other."""
    armed: list[Connection] = []
    for name in failing:
        owner: type[Connection | Transaction] = Transaction if name == "rollback" else Connection
        real = getattr(owner, name)

        def fails(self: Any, *args: Any, _name: str = name, _real: Any = real, **kw: Any) -> Any:
            connection = self.connection if isinstance(self, Transaction) else self
            if any(connection is a for a in armed):
                raise raised(f"{_name} failed")
            return _real(self, *args, **kw)

        monkeypatch.setattr(owner, name, fails)
    return armed


def _take_the_writers_lock(url: str, *, within_seconds: int) -> None:
    """Take every writer's lock on the log from a connection of another engine, waiting
    ``within_seconds`` at most, and let it go."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {within_seconds * 1000}")
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.exec_driver_sql(f"SET lock_timeout = '{within_seconds}s'")
                connection.exec_driver_sql("LOCK TABLE memvee_events IN EXCLUSIVE MODE")
            connection.rollback()
    finally:
        engine.dispose()


def _where(found: list[Recorded]) -> list[tuple[int, UUID, int]]:
    """Where each event went: its position, log and version."""
    return [(r.notification_id, r.event.originator_id, r.event.originator_version) for r in found]
