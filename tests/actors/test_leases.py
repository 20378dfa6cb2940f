"""Leases: one owning process per user. A guest may append and ask for processing, but
only the lease holder extracts; when the holder goes away, a guest takes the user over."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

import actors.engine as engine_module
from actors import Engine
from actors.engine import FOLLOW_SECONDS, LATE_COMMIT_SECONDS
from actors.lease import LeaseTable, database_now
from events import EventStore, user_log_id
from events.errors import ExtractorAccessRefusedError
from memvee import Memory, MemoryConfig, ProcessingError, ProcessTask
from projections.reader import StoredVersion
from tests.support.extractors import RecordingExtractor, unreadable_when
from tests.support.store_faults import queue_and_stop

HOLDING_TTL = 3.0
"""Long enough that a loaded machine never lets a renewal come late: an owner keeps the
user until it closes (which frees the lease) unless a test stalls it on purpose."""

EXPIRING_TTL = 1.2
"""For tests that stall an owner and wait for its lease to expire: long enough that the
owner keeps its lease until the test stalls it, renewals coming late on a loaded machine
(at 0.6 s a CI run at load 6.5 on two cores saw an owner lose it before it began)."""


def _config(db_url: str, lease_ttl: float = HOLDING_TTL, **extra: Any) -> MemoryConfig:
    return MemoryConfig(db_url=db_url, leases=True, lease_ttl=lease_ttl, **extra)


async def test_only_the_lease_holder_extracts_and_a_guest_task_completes_through_it(
    db_url: str,
) -> None:
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor()
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I work at Acme", "ok")
        task = guest.process_async("u")
        assert await task.wait() == 2
        assert task.message_count == 4, "the messages the owner's run covered, as the log says"
        assert (await guest.get_task("u", task.task_id)).message_count == 4
        assert guest_extractor.batches == []
        assert len(owner_extractor.batches) == 1
        assert len(await guest.knowledge("u")) == 2
        assert await guest.buffer("u") == []
    finally:
        await guest.close()
        await owner.close()


async def test_a_guests_task_starts_at_the_owner_between_lease_renewals(db_url: str) -> None:
    # Leases renewed every 200 s: the owner must follow its users' logs more often.
    config = MemoryConfig(db_url=db_url, leases=True, lease_ttl=600)
    owner_extractor = RecordingExtractor()
    owner = await Memory(config=config, extractor=owner_extractor).open()
    guest = await Memory(config=config, extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        for n, text in enumerate(["I work at Acme", "I collect stamps"], start=1):
            await guest.add_exchange("u", text, "ok")
            assert await asyncio.wait_for(guest.process("u"), 60) == (2 if n == 1 else 1)
            assert len(owner_extractor.batches) == n
    finally:
        await guest.close()
        await owner.close()


async def test_a_guest_requeues_what_the_owner_quarantined_since_the_guest_read_the_log(
    db_url: str,
) -> None:
    owner_extractor = RecordingExtractor()
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I collect stamps", "ok")  # the guest holds the log now
        owner_extractor.fault = unreadable_when("stamps")
        await owner.process("u")
        (stuck,) = await guest.quarantined("u")
        # The guest's copy of the log predates the quarantine: refusing the id as "not
        # quarantined" would be deciding on old state.
        assert await guest.requeue("u", [stuck.message_id]) == 1
        owner_extractor.fault = None
        assert await guest.process("u") > 0
        assert await guest.buffer("u") == [] and await guest.quarantined("u") == []
    finally:
        await guest.close()
        await owner.close()


async def test_a_guest_processes_the_new_log_of_a_user_the_owner_forgot(db_url: str) -> None:
    owner = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I work at Acme", "ok")
        assert await guest.process("u") == 2
        assert await guest.process("u") == 0  # the guest's copy: read again, nothing waits
        await owner.forget("u")
        await owner.add_exchange("u", "I moved to Rome", "ok")  # a new log, 3 events long
        # The guest's copy is the forgotten log, longer than the new one: no event past
        # it tells, only the stored log's first event.
        assert await guest.process("u") == 1
        assert await guest.buffer("u") == []
    finally:
        await guest.close()
        await owner.close()


async def test_the_owner_runs_a_guests_request_its_own_write_reloaded_the_log_with(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner writes to the user just after a guest asked for processing: its write
    conflicts, reloads the log (the request in it) and lands. The owner now knows the log
    as far as it goes, so following other processes' writes finds nothing new: the reload
    itself must start the request (it used to stay PENDING for good)."""
    config = _config(db_url, lease_ttl=600)  # no renewal (and its refresh) during the test
    owner = await Memory(config=config, extractor=RecordingExtractor()).open()
    guest = await Memory(config=config, extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        assert await owner.process("u") == 1  # the owner holds the log, as it stands
        following, looked = _pause_following(owner, monkeypatch)
        assert await asyncio.to_thread(looked.wait, 10)
        await guest.add_exchange("u", "I work at Acme", "ok")
        task = guest.process_async("u")
        await guest.add_exchange("u", "I collect stamps", "ok")  # after the request landed
        await owner.add_exchange("u", "I love tea", "ok")  # conflicts: the log is reloaded
        following.set()
        assert await asyncio.wait_for(task.wait(), 20) == 3
        assert await guest.buffer("u") == []
    finally:
        await guest.close()
        await owner.close()


async def test_the_owner_runs_requests_on_the_new_log_of_a_user_another_process_forgot(
    db_url: str,
) -> None:
    """A third process forgets a user the owner has processed, and the owner keeps its
    lease through it (its renewal finds it still held); a guest then begins the user's
    new log, shorter than the owner's copy of the erased one, and asks for processing.
    The owner must see that its copy is of another log, not ahead of the stored one, and
    run the request."""
    config = _config(db_url, lease_ttl=600)  # the test renews the owner's leases itself
    owner = await Memory(config=config, extractor=RecordingExtractor()).open()
    guest = await Memory(config=config, extractor=RecordingExtractor()).open()
    third = await Memory(config=config, extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await owner.add_exchange("u", "I work at Acme", "ok")
        assert await owner.process("u") == 2
        await third.forget("u")
        await third.close()
        engine = owner._engine
        assert engine is not None and engine.leases is not None
        await asyncio.to_thread(engine._renew_and_follow, engine.leases)
        assert await asyncio.to_thread(_holder, engine.leases, "u") == engine.leases.owner
        await guest.add_exchange("u", "I moved to Rome", "ok")  # a new log, 3 events long
        task = guest.process_async("u")
        assert await asyncio.wait_for(task.wait(), 20) == 1
        assert [e.text for e in await guest.knowledge("u")] == ["User said: I moved to Rome"]
    finally:
        await third.close()
        await guest.close()
        await owner.close()


async def test_the_owner_keeps_the_user_through_a_forget_in_another_process(
    db_url: str,
) -> None:
    """Another process forgets a user the owner holds, then writes to her while the
    owner extracts her new log. The owner is alive and trusts its lease between renewals:
    the forget used to delete its lease row, so the other process's write took the user
    over and closed the owner's task as if the owner had crashed, its extraction wasted."""
    config = _config(db_url, lease_ttl=600)  # no renewal during the test
    owner_extractor, other_extractor = RecordingExtractor(gated=True), RecordingExtractor()
    owner = await Memory(config=config, extractor=owner_extractor).open()
    other = await Memory(config=config, extractor=other_extractor).open()
    try:
        engine = owner._engine
        assert engine is not None and engine.leases is not None
        leases = engine.leases
        await owner.add_exchange("u", "I work at Acme", "ok")
        await other.forget("u")
        await owner.add_exchange("u", "I live in Oslo", "ok")  # the new log
        task = owner.process_async("u")
        assert await asyncio.to_thread(owner_extractor.started.wait, 10)
        await other.add_exchange("u", "I love tea", "ok")
        assert await asyncio.to_thread(_holder, leases, "u") == leases.owner
        owner_extractor.gate.set()
        assert await asyncio.wait_for(task.wait(), 20) == 1
        assert [b.messages[0].content for b in owner_extractor.batches] == ["I live in Oslo"]
        assert other_extractor.batches == []
        assert [m.content for m in await other.buffer("u")] == ["I love tea", "ok"]
    finally:
        owner_extractor.gate.set()
        await other.close()
        await owner.close()


def test_forgetting_a_user_keeps_only_a_lease_another_live_process_holds_and_not_her_name(
    db_url: str,
) -> None:
    """Our lease and an expired one go with the user; another process's live lease stays
    its own (blanked of the user's name), so it is not taken over while it runs."""
    store = EventStore(db_url)
    try:
        mine, theirs, gone = (LeaseTable(store.engine, name, ttl=600) for name in "abc")
        with store.engine.begin() as connection:
            mine.create(connection)
        assert theirs.try_acquire("held") and mine.try_acquire("mine")
        assert gone.try_acquire("expired")
        t = mine.table
        with store.engine.begin() as connection:
            expired = t.c.log_id == str(user_log_id("expired"))
            connection.execute(update(t).where(expired).values(expires_at=0.0))
        with store.engine.begin() as connection:
            deleted = [mine.forget(connection, user) for user in ("held", "mine", "expired")]
        assert deleted == [0, 1, 1]
        with store.engine.connect() as connection:
            rows = connection.execute(select(t.c.log_id, t.c.user_id, t.c.owner)).all()
        assert [tuple(row) for row in rows] == [(str(user_log_id("held")), "", "b")]
        assert theirs.renew(["held"]) == set() and not mine.try_acquire("held")
        assert mine.try_acquire("mine") and gone.try_acquire("expired")
    finally:
        store.close()


def test_a_forgotten_users_kept_lease_goes_once_it_expires_though_its_owner_died(
    db_url: str,
) -> None:
    """The row kept for a live owner tells, by its key, that the user was here: if the
    owner dies holding it, the next renewal of any process (or an open) deletes it once
    it expired; a live one stays."""
    store = EventStore(db_url)
    try:
        dead, live, forgetter = (LeaseTable(store.engine, name, ttl=600) for name in "abc")
        with store.engine.begin() as connection:
            forgetter.create(connection)
        assert dead.try_acquire("ann") and live.try_acquire("bob") and live.try_acquire("cat")
        with store.engine.begin() as connection:
            assert [forgetter.forget(connection, u) for u in ("ann", "bob")] == [0, 0]
        t = forgetter.table
        with store.engine.begin() as connection:  # the dead owner's lease runs out
            owned_by_dead = t.c.owner == "a"
            connection.execute(update(t).where(owned_by_dead).values(expires_at=0.0))
        assert live.renew(["bob", "cat"]) == set()
        with store.engine.connect() as connection:
            rows = connection.execute(select(t.c.user_id, t.c.owner)).all()
        assert sorted(tuple(row) for row in rows) == [("", "b"), ("cat", "b")]
    finally:
        store.close()


def test_a_renewal_deletes_forgotten_users_expired_leases_off_an_index_not_a_scan(
    db_url: str,
) -> None:
    """Every renewal's sweep of forgotten users' rows read the whole lease table (19 ms at
    200,000 leases on PostgreSQL); a table an older memvee made gets the index at open.
    The planner picks the index by itself among 5,000 other leases (counted, on
    PostgreSQL, before it plans)."""
    store = EventStore(db_url)
    try:
        leases = LeaseTable(store.engine, "a", ttl=600)
        with store.engine.begin() as connection:
            leases.create(connection)
            connection.execute(sqlalchemy.text("DROP INDEX mv_leases_forgotten_users"))  # older
            leases.create(connection)
            others = [
                {"log_id": f"{n:036d}", "user_id": f"u{n}", "owner": "b", "expires_at": 1e12}
                for n in range(5_000)
            ]
            connection.execute(leases.table.insert(), others)
            if store.engine.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE mv_leases")
        assert leases.try_acquire("ann")
        statements: list[tuple[str, Any]] = []

        def traced(*args: Any) -> None:
            statements.append((args[2], args[3]))

        sqlalchemy.event.listen(store.engine, "before_cursor_execute", traced)
        assert leases.renew(["ann"]) == set()
        sqlalchemy.event.remove(store.engine, "before_cursor_execute", traced)
        (sweep, parameters), *_ = [s for s in statements if s[0].lstrip().startswith("DELETE")]
        explain = "EXPLAIN " if store.engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        with store.engine.connect() as connection:
            plan = str(connection.exec_driver_sql(explain + sweep, parameters).all())
        assert "mv_leases_forgotten_users" in plan, plan
    finally:
        store.close()


def test_a_renewal_writes_its_lease_row_in_place_on_postgresql(db_url: str) -> None:
    """A heap-only (HOT) update: no index keys the column a renewal writes, so the row's
    new version needs no new entry in the table's indexes (its primary key grew at every
    renewal while an index keyed ``expires_at``)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("HOT updates are PostgreSQL's")
    store = EventStore(db_url)
    try:
        leases = LeaseTable(store.engine, "a", ttl=600)
        with store.engine.begin() as connection:
            leases.create(connection)
        assert leases.try_acquire("ann") and leases.try_acquire("bob")
        counted: list[tuple[int, int]] = []

        def count_in_its_transaction(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().startswith("UPDATE"):
                with connection.connection.dbapi_connection.cursor() as own:
                    own.execute(
                        "SELECT pg_stat_get_xact_tuples_updated('mv_leases'::regclass),"
                        " pg_stat_get_xact_tuples_hot_updated('mv_leases'::regclass)"
                    )
                    counted.append(own.fetchone())

        sqlalchemy.event.listen(store.engine, "after_cursor_execute", count_in_its_transaction)
        try:
            assert leases.renew(["ann", "bob"]) == set()
        finally:
            sqlalchemy.event.remove(store.engine, "after_cursor_execute", count_in_its_transaction)
        assert counted == [(2, 2)]
    finally:
        store.close()


def _pause_following(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Hold ``memory``'s following of other processes' writes until the first event is
    set; the second is set once a look was skipped (none is under way any more)."""
    engine = memory._engine
    assert engine is not None
    follow, following, looked = engine._follow_new_writes, threading.Event(), threading.Event()

    def paused() -> None:
        if following.is_set():
            follow()
        else:
            looked.set()

    monkeypatch.setattr(engine, "_follow_new_writes", paused)
    return following, looked


async def test_a_guest_takes_the_user_over_when_the_owner_leaves(db_url: str) -> None:
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor()
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I love tea", "ok")
        await owner.close()
        assert await guest.process("u") == 2
        assert len(guest_extractor.batches) == 1 and owner_extractor.batches == []
    finally:
        await guest.close()


async def test_a_guests_request_waits_for_the_next_owner_when_the_owner_closes(
    db_url: str,
) -> None:
    """The owner closes while a guest's request waits behind the owner's running task: the
    owner's own task ends FAILED, as a close ends it, but the guest still runs and waits
    for its request, which the guest runs once it has taken the user over."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(
        config=_config(db_url, shutdown_grace=0.2), extractor=owner_extractor
    ).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        owners, guests = await _a_guest_waits_behind_the_owner(owner, owner_extractor, guest)
        await owner.close()
        with pytest.raises(ProcessingError, match="interrupted by shutdown"):
            await owners.wait()
        assert await asyncio.wait_for(guests.wait(), 30) == 2
        assert sorted(e.text for e in await guest.knowledge("u")) == [
            "User said: I live in Oslo",
            "User said: I work at Acme",
        ]
        assert await guest.buffer("u") == []
    finally:
        await guest.close()
        await owner.close()


async def test_a_guest_waits_for_the_tasks_the_owner_runs(db_url: str) -> None:
    """wait_for_processing waits for every in-flight task of the user, however started:
    in a guest, also those the owner started (its own auto-processing, say)."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        owner.process_async("u")
        assert await asyncio.to_thread(owner_extractor.started.wait, 10)
        waiting = asyncio.ensure_future(guest.wait_for_processing("u", timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the owner's task still runs"
        owner_extractor.gate.set()
        assert await waiting == 1
        assert [e.text for e in await guest.knowledge("u")] == ["User said: I live in Oslo"]
    finally:
        await guest.close()
        await owner.close()


async def test_a_handle_a_guest_reads_of_a_task_the_owner_runs_follows_it_to_the_end(
    db_url: str,
) -> None:
    """get_task and tasks in a guest give handles of the owner's running task that end
    when it ends (they used to stay RUNNING, so wait() never returned)."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        running = owner.process_async("u")
        assert await asyncio.to_thread(owner_extractor.started.wait, 10)
        read = await guest.get_task("u", running.task_id)
        (listed,) = await guest.tasks("u")
        assert read.status.value == "RUNNING" and listed.task_id == running.task_id
        owner_extractor.gate.set()
        assert await asyncio.wait_for(read.wait(), 30) == 1
        assert await asyncio.wait_for(listed.wait(), 30) == 1
        assert read.status.value == listed.status.value == "COMPLETED"
    finally:
        await guest.close()
        await owner.close()


async def test_auto_processing_triggered_by_a_guest_runs_once_at_the_owner(db_url: str) -> None:
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor()
    config = _config(db_url, auto_process=True, batch_threshold=4)
    owner = await Memory(config=config, extractor=owner_extractor).open()
    guest = await Memory(config=config, extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I work at Acme", "ok")
        await guest.wait_for_processing("u", timeout=30)
        await owner.wait_for_processing("u", timeout=30)
        assert await owner.buffer("u") == []
        assert guest_extractor.batches == []
        sent = [m for b in owner_extractor.batches for m in b.messages]
        assert len(sent) == len({m.message_id for m in sent}) == 4
    finally:
        await guest.close()
        await owner.close()


@pytest.mark.parametrize("snapshot", ["as now", "before the runs end was kept"])
async def test_a_guest_taking_over_a_user_whose_last_run_failed_retries_the_few_waiting(
    db_url: str, snapshot: str
) -> None:
    """The owner's run failed (a failure that may pass), two messages left buffered, fewer
    than the threshold, and the owner closed before its paced retry: the guest taking the
    user over runs them, as a reopen would; it used to wait for the threshold. So too with
    the user's latest snapshot in the form a memvee before the log kept how its last run
    ended wrote (no failed_last): the failure recorded before it is still seen; the
    takeover read the snapshot's upgrade as a run that had not failed."""
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor()
    config = _config(db_url, auto_process=True, batch_threshold=10, retry_delay=60)
    owner = await Memory(config=config, extractor=owner_extractor).open()
    guest = await Memory(config=config, extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        owner_extractor.fail_next = 1
        with pytest.raises(ProcessingError):
            await owner.process("u")
        await guest.add_exchange("u", "I work at Acme", "ok")
        if snapshot != "as now":
            assert owner._engine is not None
            store = owner._engine.store
            stored = store.load("u")
            assert stored is not None and stored.failed_last
            old_form = Snapshot.take(stored)
            for name in ("failed_last", "refused_last"):
                del old_form.state[name]
            store.append([], snapshots=[StoredEvent(*store._encoder(old_form))])
        await owner.close()
        await _until(lambda: len(guest_extractor.sent_message_ids) == 4)
        await guest.wait_for_processing("u", timeout=30)
        assert await guest.buffer("u") == []
        sent = [m for b in guest_extractor.batches for m in b.messages]
        assert len(sent) == 4
    finally:
        await guest.close()
        await owner.close()


@pytest.mark.parametrize(
    "guest_ran_first", [True, False], ids=["its key shown to work", "having run nothing"]
)
async def test_a_guest_taking_over_a_user_whose_key_was_refused_retries_them(
    db_url: str, guest_ran_first: bool
) -> None:
    """The owner's run failed on a refused key, four messages left buffered, fewer than the
    threshold. The guest taking the user over runs those messages: as a reopen does once
    its probe of the key is accepted when a run of its own showed its key works, and as
    that probe itself when it has run nothing yet. It used to leave them for the threshold
    (or, having run nothing, for some other run of its own to show the key works)."""
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor()
    owner_extractor.fault = lambda _: ExtractorAccessRefusedError("HTTP 401: invalid x-api-key")
    config = _config(db_url, auto_process=True, batch_threshold=10, retry_delay=60)
    owner = await Memory(config=config, extractor=owner_extractor).open()
    guest = await Memory(config=config, extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        with pytest.raises(ProcessingError):
            await owner.process("u")
        if guest_ran_first:
            await guest.add_exchange("v", "I work at Acme", "ok")
            assert await guest.process("v") == 1
        await guest.add_exchange("u", "I play chess", "ok")
        await owner.close()
        await _until(lambda: "u" in _users_sent(guest_extractor), 30)
        await guest.wait_for_processing("u", timeout=30)
        assert await guest.buffer("u") == []
        sent = [b for b in list(guest_extractor.batches) if b.user_id == "u"]
        assert sum(len(b.messages) for b in sent) == 4
    finally:
        await guest.close()
        await owner.close()


async def test_a_probe_of_the_key_that_a_waiting_request_stood_for_ends_with_that_request(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's run failed on a refused key and the owner stalls; the guest takes the
    user over by two runs asked of it, so its probe of the key finds a request waiting
    and queues none: that request stands for the probe, and once both runs ended another
    probe may start. The probe used to stay in flight for a task never recorded, and the
    guest never probed the key again (the users it took over owed for ever)."""
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor(gated=True)
    owner_extractor.fault = lambda _: ExtractorAccessRefusedError("HTTP 401: invalid x-api-key")
    config = dict(auto_process=True, batch_threshold=10, retry_delay=60)
    owner = await Memory(
        config=_config(db_url, EXPIRING_TTL, **config), extractor=owner_extractor
    ).open()
    guest = await Memory(config=_config(db_url, **config), extractor=guest_extractor).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        with pytest.raises(ProcessingError):
            await owner.process("u")
        await _stall(owner, monkeypatch)
        first, second = guest.process_async("u"), guest.process_async("u")
        assert await asyncio.to_thread(guest_extractor.started.wait, 30)
        await asyncio.sleep(1)  # the probe of the key, on a thread of its own, finds them
        guest_extractor.gate.set()
        await first.wait()
        await second.wait()
        assert guest._engine is not None
        await _until(lambda: guest._engine.key_probe.start_probe("the next probe"), 10)
    finally:
        monkeypatch.undo()
        guest_extractor.gate.set()
        await guest.close()
        await owner.close()


async def test_a_probe_of_the_key_whose_users_lease_moved_away_lets_another_probe_start(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest takes over a user whose key was refused by a run of its own, its probe of
    the key queued behind that run; then it stalls, and a third process takes the user over
    and runs the probe. Back, the guest learns its lease is gone: another probe may start.
    It used to wait for ever for that probe to end here, and never probed the key again."""
    owner_extractor, guest_extractor = RecordingExtractor(), RecordingExtractor(gated=True)
    owner_extractor.fault = lambda _: ExtractorAccessRefusedError("HTTP 401: invalid x-api-key")
    config = dict(auto_process=True, batch_threshold=10, retry_delay=60)
    owner = await Memory(
        config=_config(db_url, EXPIRING_TTL, **config), extractor=owner_extractor
    ).open()
    guest = await Memory(
        config=_config(db_url, EXPIRING_TTL, **config), extractor=guest_extractor
    ).open()
    third = None
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        with pytest.raises(ProcessingError):
            await owner.process("u")
        await _stall(owner, monkeypatch)
        guest.process_async("u")
        assert await asyncio.to_thread(guest_extractor.started.wait, 30)
        assert guest._engine is not None
        probe = guest._engine.key_probe
        await asyncio.sleep(2)  # the probe of the key, on a thread of its own, is queued
        assert not probe.start_probe("a probe while the first is in flight")
        await _stall(guest, monkeypatch)
        third = await Memory(
            config=_config(db_url, **config), extractor=RecordingExtractor()
        ).open()
        await third.add_exchange("u", "I like tea", "ok")
        await asyncio.wait_for(third.wait_for_processing("u"), 30)
        monkeypatch.undo()
        guest_extractor.gate.set()
        await _until(lambda: probe.start_probe("the next probe"), 10)
    finally:
        monkeypatch.undo()
        guest_extractor.gate.set()
        if third is not None:
            await third.close()
        await guest.close()
        await owner.close()


def _users_sent(extractor: RecordingExtractor) -> set[str]:
    """The users whose batches ``extractor`` was given."""
    return {batch.user_id for batch in list(extractor.batches)}


async def test_a_guest_follows_its_task_through_a_database_that_fails_for_a_while(
    db_url: str,
) -> None:
    """The guest reads its task's state from the database; reads that fail meanwhile only
    delay that, and the task still ends for the guest once the database answers."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        assert guest._engine is not None
        reader, down = guest._engine.reader, threading.Event()
        task_states = reader.task_states

        def failing(*args: Any) -> Any:
            if down.is_set():
                raise OperationalError("SELECT", {}, Exception("server closed the connection"))
            return task_states(*args)

        reader.task_states = failing
        down.set()
        task = guest.process_async("u")
        assert await asyncio.to_thread(owner_extractor.started.wait, 30)
        owner_extractor.gate.set()
        await asyncio.sleep(0.3)  # the owner ends the task; the guest cannot read it yet
        assert not task.done
        down.clear()
        assert await asyncio.wait_for(task.wait(), 30) == 1
    finally:
        await guest.close()
        await owner.close()


async def test_a_stopping_actor_keeps_the_lease_until_its_last_write_landed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may take the user once the lease goes, and forget it: the write
    would then land on the erased log, past a gap in its versions."""
    memory = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        engine = memory._engine
        assert engine is not None and engine.leases is not None
        await memory.add_exchange("ann", "I live in Oslo", "ok")
        queued = await queue_and_stop(memory, "ann", monkeypatch)
        await asyncio.sleep(0.1)
        leases = engine.leases
        assert await asyncio.to_thread(_holder, leases, "ann") == leases.owner
        await queued.release()
        async with asyncio.timeout(10):
            while await asyncio.to_thread(_holder, leases, "ann") is not None:
                await asyncio.sleep(0.01)
    finally:
        await memory.close()


async def _a_guest_waits_behind_the_owner(
    owner: Memory, owner_extractor: RecordingExtractor, guest: Memory
) -> tuple[ProcessTask, ProcessTask]:
    """The owner extracts "I live in Oslo" (held at its extractor's gate); the guest said
    "I work at Acme" and asked for processing, which waits behind it. Both tasks."""
    await owner.add_exchange("u", "I live in Oslo", "ok")
    owners = owner.process_async("u")
    assert await asyncio.to_thread(owner_extractor.started.wait, 10)
    await guest.add_exchange("u", "I work at Acme", "ok")
    return owners, await guest.request_processing("u")  # stored, so a forget finds it


def _holder(leases: LeaseTable, user_id: str) -> str | None:
    t = leases.table
    with leases.engine.connect() as connection:
        found = select(t.c.owner).where(t.c.log_id == str(user_log_id(user_id)))
        owner: str | None = connection.execute(found).scalar()
    return owner


async def test_open_tasks_end_failed_everywhere_when_another_process_forgets_the_user(
    db_url: str,
) -> None:
    """A third process forgets the user while the owner extracts: the guest's task, the
    owner's own queued one and every wait on them end (the guest's used to stay PENDING
    for good once the task's row was erased, and its wait and flush to hang)."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    third = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        running, guests = await _a_guest_waits_behind_the_owner(owner, owner_extractor, guest)
        queued = await owner.request_processing("u")
        waiting = asyncio.ensure_future(guest.wait_for_processing("u", timeout=30))
        await asyncio.sleep(0.2)
        assert not guests.done and not queued.done
        await third.forget("u")
        for task in (guests, queued):
            with pytest.raises(ProcessingError, match="forgotten"):
                await asyncio.wait_for(task.wait(), 20)
        with pytest.raises(ProcessingError, match="forgotten"):
            await waiting
        owner_extractor.gate.set()
        with pytest.raises(ProcessingError):
            await asyncio.wait_for(running.wait(), 20)
        assert await guest.knowledge("u") == [] and await guest.buffer("u") == []
    finally:
        owner_extractor.gate.set()
        await third.close()
        await guest.close()
        await owner.close()


async def _stalled_mid_extraction(
    owner: Memory, extractor: RecordingExtractor, monkeypatch: pytest.MonkeyPatch
) -> ProcessTask:
    """The owner's task on 'u', held in its extraction while the owner can neither renew
    nor take a lease (as a stopped process), once its lease on 'u' has expired."""
    await owner.add_exchange("u", "I live in Oslo", "ok")
    stalled = owner.process_async("u")
    assert await asyncio.to_thread(extractor.started.wait, 10)
    await _stall(owner, monkeypatch)
    return stalled


async def _stall(owner: Memory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner can neither renew nor take a lease from now on (as a stopped process);
    returns once its leases have expired."""
    assert owner._engine is not None and owner._engine.leases is not None
    leases = owner._engine.leases

    def unreachable(*args: Any) -> Any:
        raise OperationalError("UPDATE", {}, Exception("the process is stopped"))

    monkeypatch.setattr(leases, "renew", unreachable)
    monkeypatch.setattr(leases, "try_acquire", unreachable)
    stalled_at = _expired_leases_at(leases)[0]
    # A renewal already under way sets its own start plus ``ttl`` at most: past the stall
    # plus ``ttl`` by the database's clock, with none of the owner's leases live, it is gone.
    await _until(lambda: _all_expired_after(leases, stalled_at + leases.ttl), 10 * leases.ttl)


def _expired_leases_at(leases: LeaseTable) -> tuple[float, bool]:
    """The database's clock (what a lease's expiry is read by) and whether every lease of
    ``leases``' owner has expired by it."""
    t = leases.table
    with leases.engine.connect() as connection:
        now = database_now(connection)
        live = connection.execute(
            select(t.c.log_id).where(t.c.owner == leases.owner, t.c.expires_at >= now)
        ).first()
    return now, live is None


def _all_expired_after(leases: LeaseTable, moment: float) -> bool:
    """Whether the database's clock is past ``moment`` and no lease of the owner is live."""
    now, expired = _expired_leases_at(leases)
    return now > moment and expired


async def test_a_process_that_takes_a_stalled_owners_user_closes_its_task_and_runs_its_own(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner stalls mid-extraction (it cannot renew) and its lease expires; a process
    that first touches the user then takes it over: it closes the stalled task, which the
    owner's handle shows at once, and runs its own request. When the owner comes back it
    starts nothing more: its lease is gone."""
    owner_extractor, guest_extractor = RecordingExtractor(gated=True), RecordingExtractor()
    owner = await Memory(config=_config(db_url, EXPIRING_TTL), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=guest_extractor).open()
    try:
        stalled = await _stalled_mid_extraction(owner, owner_extractor, monkeypatch)
        await guest.add_exchange("u", "I work at Acme", "ok")
        assert await asyncio.wait_for(guest.process("u"), 30) == 2
        with pytest.raises(ProcessingError, match="interrupted"):
            await asyncio.wait_for(stalled.wait(), 20)
        monkeypatch.undo()
        owner_extractor.gate.set()
        await owner.add_exchange("u", "I collect stamps", "ok")
        assert await asyncio.wait_for(owner.process("u"), 30) == 1
        assert len(owner_extractor.batches) == 1, "the owner extracted nothing after its stall"
        assert sorted(e.text for e in await owner.knowledge("u")) == [
            "User said: I collect stamps",
            "User said: I live in Oslo",
            "User said: I work at Acme",
        ]
    finally:
        owner_extractor.gate.set()
        await guest.close()
        await owner.close()


async def test_a_process_that_takes_a_stalled_owners_user_by_appending_closes_its_task(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking the user over by writing to it, with no request of its own, the new owner
    still closes the task the stalled owner left open: nobody waits on it for ever."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url, EXPIRING_TTL), extractor=owner_extractor).open()
    guest = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        stalled = await _stalled_mid_extraction(owner, owner_extractor, monkeypatch)
        await guest.add_exchange("u", "I work at Acme", "ok")
        with pytest.raises(ProcessingError, match="interrupted"):
            await asyncio.wait_for(stalled.wait(), 20)
        await asyncio.wait_for(guest.wait_for_processing("u"), 20)
        [task] = await guest.tasks("u")
        assert (task.task_id, task.status.value) == (stalled.task_id, "FAILED")
        assert "interrupted" in (task.error or "")
        assert len(await guest.buffer("u")) == 4, "the stalled batch's messages wait again"
    finally:
        owner_extractor.gate.set()
        await guest.close()
        await owner.close()


async def test_a_closing_owner_leaves_a_request_of_another_process_to_that_process(
    db_url: str,
) -> None:
    """The owner's running task ends within its close's grace: the owner does not start
    the guest's request behind it (it used to, and then failed it "interrupted by
    shutdown"); the guest runs it once it has taken the user over."""
    owner_extractor, guest_extractor = RecordingExtractor(gated=True), RecordingExtractor()
    owner = await Memory(
        config=_config(db_url, shutdown_grace=10), extractor=owner_extractor
    ).open()
    guest = await Memory(config=_config(db_url), extractor=guest_extractor).open()
    try:
        owners, guests = await _a_guest_waits_behind_the_owner(owner, owner_extractor, guest)
        await asyncio.sleep(0.2)
        closing = asyncio.ensure_future(owner.close())
        await asyncio.sleep(0.2)
        owner_extractor.gate.set()
        await asyncio.wait_for(closing, 30)
        assert await owners.wait() == 1
        assert await asyncio.wait_for(guests.wait(), 30) == 1
        assert len(owner_extractor.batches) == len(guest_extractor.batches) == 1
    finally:
        owner_extractor.gate.set()
        await guest.close()
        await owner.close()


_BEGAN = datetime(2026, 1, 1, tzinfo=UTC)


class _FollowedLog:
    """Stands for the engine's store, reader and directory: a log whose last id stays 5
    while a request of user "u" at version 7 commits late (it took an earlier id)."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.refreshed: list[tuple[str, int]] = []
        self.looks = 0
        self.store = self
        self.engine = self
        self.reader = self
        self.directory = self
        self._followed_position = -1
        self._followed_until = 0.0

    def connect(self) -> Any:
        return contextlib.nullcontext(None)

    def max_position(self, _: Any) -> int:
        return 5

    def live_users(self) -> list[str]:
        return ["u"]

    def versions_with_requests(self, _: Any, users: list[str]) -> dict[str, StoredVersion]:
        self.looks += 1
        return {u: StoredVersion(v, _BEGAN) for u, v in self.requests.items()}

    def call_live(self, user: str, method: str, version: int, began: datetime) -> None:
        self.refreshed.append((user, version))


def test_a_request_committed_after_a_later_id_is_still_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL a transaction may commit after one holding a later id: the last id
    seen does not change, and the owner missed the request until its next renewal."""
    clock = [100.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0])
    engine = _FollowedLog()
    follow = Engine._follow_new_writes.__get__(engine)
    follow()  # the id moved to 5: nothing requested yet
    engine.requests["u"] = 7  # the late commit, below id 5
    clock[0] += FOLLOW_SECONDS
    follow()
    assert engine.refreshed == [("u", 7)]
    clock[0] += LATE_COMMIT_SECONDS
    looks = engine.looks
    follow()
    assert engine.looks == looks, "long after the last change, one read of the last id"


async def _until(condition: Any, seconds: float = 10.0) -> None:
    """Wait until ``condition()`` (run off the loop) is true."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(condition):
            await asyncio.sleep(0.02)


async def test_an_idle_owner_stops_and_frees_the_lease_for_another_process(db_url: str) -> None:
    """The lease renewals (every 0.1 s here) are the engine's, not the application's: an
    actor idle for ``idle_timeout`` stops all the same (it never did with leases), and
    gives up its lease, so another process takes the user at once."""
    owner_extractor, other_extractor = RecordingExtractor(), RecordingExtractor()
    owner = await Memory(
        config=_config(db_url, lease_ttl=0.3, idle_timeout=0.5), extractor=owner_extractor
    ).open()
    other = await Memory(config=_config(db_url), extractor=other_extractor).open()
    try:
        assert owner._engine is not None and owner._engine.leases is not None
        leases = owner._engine.leases
        await owner.add_exchange("u", "I live in Oslo", "ok")
        assert await asyncio.to_thread(_holder, leases, "u") == leases.owner
        await _until(lambda: owner.live_actor_count == 0 and _holder(leases, "u") is None)
        assert await asyncio.wait_for(other.process("u"), 30) == 1
        assert owner_extractor.batches == [] and len(other_extractor.batches) == 1
    finally:
        await other.close()
        await owner.close()


async def test_a_guest_whose_actor_was_stopped_takes_the_user_over_when_the_owner_closes(
    db_url: str,
) -> None:
    """The guest's actor for the user is stopped (beyond ``max_live_actors``) while its
    request waits behind the owner's task; the owner then closes. The guest follows the
    task, so it takes the user over and runs it (it used to wait for ever: only a live
    actor took a user over)."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(
        config=_config(db_url, shutdown_grace=0.2), extractor=owner_extractor
    ).open()
    guest = await Memory(
        config=_config(db_url, lease_ttl=0.6, max_live_actors=1), extractor=RecordingExtractor()
    ).open()
    try:
        owners, guests = await _a_guest_waits_behind_the_owner(owner, owner_extractor, guest)
        await guest.add_exchange("v", "I like tea", "ok")  # evicts the guest's actor of u
        assert guest._engine is not None
        directory = guest._engine.directory
        await _until(lambda: "u" not in directory.live_users())
        await owner.close()
        with pytest.raises(ProcessingError, match="interrupted by shutdown"):
            await owners.wait()
        assert await asyncio.wait_for(guests.wait(), 10) == 2
        assert await guest.buffer("u") == []
    finally:
        owner_extractor.gate.set()
        await guest.close()
        await owner.close()


async def test_a_guest_whose_actor_was_stopped_takes_a_dead_owners_user_over(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the owner stalls (as a killed process) while it extracts the guest's
    request, until its lease expires: the guest takes the user over and its task ends,
    interrupted."""
    owner_extractor = RecordingExtractor(gated=True)
    owner = await Memory(config=_config(db_url, EXPIRING_TTL), extractor=owner_extractor).open()
    guest = await Memory(
        config=_config(db_url, lease_ttl=0.6, max_live_actors=1), extractor=RecordingExtractor()
    ).open()
    try:
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await guest.add_exchange("u", "I work at Acme", "ok")
        guests = guest.process_async("u")
        assert await asyncio.to_thread(owner_extractor.started.wait, 10)
        await guest.add_exchange("v", "I like tea", "ok")  # evicts the guest's actor of u
        assert guest._engine is not None
        directory = guest._engine.directory
        await _until(lambda: "u" not in directory.live_users())
        await _stall(owner, monkeypatch)
        with pytest.raises(ProcessingError, match="interrupted"):
            await asyncio.wait_for(guests.wait(), 10)
        assert len(await guest.buffer("u")) == 4, "the stalled batch's messages wait again"
    finally:
        owner_extractor.gate.set()
        await guest.close()
        await owner.close()


async def test_a_stopped_actors_release_never_takes_the_lease_from_the_users_next_actor(
    db_url: str,
) -> None:
    """An idle actor stops and gives the lease up, the release held up (by a busy
    database); the user writes again meanwhile. The next actor starts only once the
    release ended and takes the lease anew, so this process stays the owner when
    another process writes. The release used to delete the lease that actor had just
    taken (still ours) from under it: the other process then took the user over while
    this one extracted, and extracted the same messages again."""
    owner = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    other = await Memory(config=_config(db_url), extractor=RecordingExtractor()).open()
    try:
        assert owner._engine is not None and owner._engine.leases is not None
        directory, leases = owner._engine.directory, owner._engine.leases
        release, try_acquire = leases.release, leases.try_acquire
        releasing, retaken, released = threading.Event(), threading.Event(), threading.Event()

        def held_up_release(user_id: str) -> None:
            releasing.set()
            # Without the fix the next actor takes the lease well within this wait (then
            # it handles what it sent itself before the lease goes); with the fix it waits
            # for this release, so the wait runs out.
            if retaken.wait(0.1):
                directory.call_live(user_id, "start_queued").get(timeout=10)
            release(user_id)
            released.set()

        def recorded_try_acquire(user_id: str) -> bool:
            taken = try_acquire(user_id)
            if taken and releasing.is_set():
                retaken.set()
            return taken

        leases.release = held_up_release  # type: ignore[method-assign]
        leases.try_acquire = recorded_try_acquire  # type: ignore[method-assign]
        await owner.add_exchange("u", "I live in Oslo", "ok")
        await asyncio.to_thread(directory.passivate_idle, 0.0)
        assert await asyncio.to_thread(releasing.wait, 10)
        await owner.add_exchange("u", "I work at Acme", "ok")
        assert await asyncio.to_thread(released.wait, 10)
        await other.add_exchange("u", "I like tea", "ok")
        assert await asyncio.to_thread(_holder, leases, "u") == leases.owner
    finally:
        await other.close()
        await owner.close()
