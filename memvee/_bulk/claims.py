"""Claims: how bulk runs of one knowledge version share its users. A run claims each user's
plan (one row a user, by the database's clock) before it submits anything for them, renews
its claims while it runs, and takes over a claim only once its run stopped: by its process
on the same host, by its age elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, uuid4, uuid5

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from actors.lease import database_now
from actors.process_identity import process_alive, process_stat, this_machine
from events import EventStore, StorageError
from events.errors import first_line
from projections.bulk_runs import BULK_BATCHES
from projections.bulk_runs import CLAIM as _CLAIM
from projections.reader import aware

if TYPE_CHECKING:
    from memvee._bulk.report import BulkReport

log = logging.getLogger("memvee.bulk")

CLAIM_RENEW = 10.0
"""Seconds between renewals of a running bulk run's claims (by the database's clock)."""

CLAIM_TTL = timedelta(seconds=3 * CLAIM_RENEW)
"""How long a run's claim on a user's plan holds unrenewed: an older claim is a stopped
run's, and the next run takes the user over. A claim whose run is on this host is judged
by its process instead, whatever its age: taken over at once once it ended, held while it
is alive (:func:`_abandoned`)."""

OLD_CLAIM_TTL = timedelta(minutes=2)
"""How long a claim of an older memvee (which names no process, and renews every 30 s)
holds unrenewed."""

_RUNNING: set[str] = set()
"""The owners of the bulk runs under way in this process: a claim this process made is
held only while its run is (one whose release failed is not held by the process alone)."""


class Claims:
    """A bulk run's claims on its users' plans in ``version``: taken, renewed every
    :data:`CLAIM_RENEW` seconds while the run goes on, dropped once another run took them
    over, and released as the run ends. ``claims`` are the ids of those the run holds,
    ``lost`` those another run took over while this one was stopped."""

    def __init__(self, store: EventStore, version: str) -> None:
        self.store = store
        self.version = version
        self.owner = str(uuid4())
        self.process = _this_process()  # named by its claims, to tell when it ended
        self.claims: list[str] = []
        self.claimed_by: dict[str, str] = {}  # the user of each claim, by its id
        self.lost: set[str] = set()  # claims another run took over while this one was stopped

    def holds(self, user_id: str) -> bool:
        """Whether this run holds its claim on ``user_id``'s plan."""
        return _claim_id(self.version, user_id) in self.claims

    def claim(self, user_id: str, kept_for: Callable[[Connection], set[str]]) -> set[str] | None:
        """Claim ``user_id``'s plan for this run, locking its claim row (read locked, or
        inserted), and read in the same transaction what ``kept_for`` reads (the messages
        the kept Message Batches hold for the user); ``None`` when another run holds the
        user (its claim not :func:`_abandoned`). See :meth:`BulkReextraction._claim`."""
        claim_id = _claim_id(self.version, user_id)
        try:
            with self.store.transaction() as connection:
                now = _database_time(connection)
                held = (
                    connection.execute(
                        select(BULK_BATCHES)
                        .where(BULK_BATCHES.c.local_id == claim_id)
                        .with_for_update()
                    )
                    .mappings()
                    .first()
                )
                mine = {
                    "user": user_id,
                    "owner": self.owner,
                    "messages": [],
                    "known": [],
                    **self.process,
                }
                if held is None:
                    connection.execute(
                        BULK_BATCHES.insert(),
                        {
                            "local_id": claim_id,
                            "knowledge_version": self.version,
                            "api_batch_id": None,
                            "requests": {_CLAIM: mine},
                            "created_at": now,
                        },
                    )
                elif held["requests"][_CLAIM].get("owner") != self.owner:
                    if not _abandoned(held["requests"][_CLAIM], held["created_at"], now):
                        return None
                    taken = connection.execute(
                        BULK_BATCHES.update()
                        .where(BULK_BATCHES.c.local_id == claim_id)
                        .where(BULK_BATCHES.c.created_at == held["created_at"])
                        .values(requests={_CLAIM: mine}, created_at=now)
                    )
                    if taken.rowcount != 1:
                        return None
                pending = kept_for(connection)
        except IntegrityError:  # another run inserted the same claim first
            return None
        except SQLAlchemyError as error:
            raise self.claim_failure(user_id, error) from error
        self.claimed_by[claim_id] = user_id
        self.claims.append(claim_id)
        return pending

    def sweep_forgotten_claims(self) -> None:
        """Remove the claim rows, of any version, that stopped runs left naming a user with
        no log (forgotten after the run claimed them): no run would name that user again to
        take them over. One a run holds, or took over meanwhile, is left alone, its user's
        log not even looked at: a run of thousands of users under way costs no read a user."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(
                    BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests, BULK_BATCHES.c.created_at
                ).where(BULK_BATCHES.c.api_batch_id.is_(None))
            ).all()
            claims = [(i, requests[_CLAIM], at) for i, requests, at in rows if _CLAIM in requests]
            if not claims:
                return
            now = _database_time(connection)
        forgotten = [
            (local_id, renewed)
            for local_id, claim, renewed in claims
            if _abandoned(claim, renewed, now) and self.store.last_version(claim["user"]) == 0
        ]
        for local_id, renewed in forgotten:
            with self.store.transaction() as connection:
                connection.execute(
                    BULK_BATCHES.delete()
                    .where(BULK_BATCHES.c.local_id == local_id)
                    .where(BULK_BATCHES.c.created_at == renewed)
                )

    def claim_failure(self, user_id: str, error: SQLAlchemyError) -> StorageError:
        """The :class:`StorageError` of a claim of ``user_id`` the database failed."""
        return StorageError(
            f"could not claim user {user_id!r} for the bulk re-extraction into "
            f"{self.version!r} in {self.store.safe_url}: {first_line(error)}"
        )

    def held_elsewhere(self, row: dict[str, Any]) -> bool:
        """Whether a kept row not yet given its Message Batch's id is another run's under
        way (one of its users claimed by it), to be left to that run: looking for its
        batch now would find none yet, and plan its requests again."""
        if row["api_batch_id"] is not None:
            return False
        users = {r["user"] for r in row["requests"].values()}
        ids = [_claim_id(self.version, user) for user in users]
        with self.store.engine.connect() as connection:
            now = _database_time(connection)
            claims = (
                connection.execute(
                    select(BULK_BATCHES).where(
                        BULK_BATCHES.c.local_id.in_(bindparam("ids", expanding=True))
                    ),
                    {"ids": ids},
                )
                .mappings()
                .all()
            )
        return any(
            c["requests"][_CLAIM]["user"] in users
            and c["requests"][_CLAIM].get("owner") != self.owner
            and not _abandoned(c["requests"][_CLAIM], c["created_at"], now)
            for c in claims
        )

    async def keep_claims(self) -> None:
        """Renew this run's claims every :data:`CLAIM_RENEW` seconds while it runs."""
        while True:
            await asyncio.sleep(CLAIM_RENEW)
            try:
                await asyncio.to_thread(self.renew_claims)
            except Exception as error:  # the run itself meets a lasting failure
                log.warning("renewing the bulk run's claims failed (%s)", first_line(error))

    def renew_claims(self) -> None:
        """Renew this run's claims; those another run took over meanwhile (this run was
        stopped past :data:`CLAIM_TTL`) are dropped: nothing more is submitted for their
        users."""
        with self.store.transaction() as connection:
            self._renew(connection, list(self.claims))

    def _renew(self, connection: Connection, claims: Sequence[str]) -> set[str]:
        """Renew ``claims`` in ``connection``'s transaction (a compare-and-set against a run
        taking them over); those another run took over are dropped (:meth:`_drop`) and
        returned."""
        renewed = connection.execute(
            BULK_BATCHES.update()
            .where(*self._own_claims(claims))
            .values(created_at=_database_time(connection))
        )
        if renewed.rowcount == len(claims):
            return set()
        lost = set(claims) - self._held(connection, claims)
        self._drop(lost)
        return lost

    def _held(self, connection: Connection, claims: Sequence[str]) -> set[str]:
        """Which of ``claims`` are still this run's."""
        found = connection.execute(select(BULK_BATCHES.c.local_id).where(*self._own_claims(claims)))
        return {local_id for (local_id,) in found}

    def _drop(self, claims: Iterable[str]) -> None:
        """Forget ``claims`` another run took over: their users get nothing more here."""
        for claim_id in claims:
            self.lost.add(claim_id)
            if claim_id in self.claims:
                self.claims.remove(claim_id)

    def insert_held(self, row: dict[str, Any]) -> None:
        """Keep ``row``'s requests of the users this run still holds, renewing their
        claims in the same transaction (a compare-and-set against a run taking them over);
        the requests of the users it no longer holds are taken out of ``row``."""
        users = {request["user"] for request in row["requests"].values()}
        claims = {_claim_id(self.version, user): user for user in users}
        with self.store.transaction() as connection:
            gone = {claims[claim_id] for claim_id in self._renew(connection, list(claims))}
            row["requests"] = {
                custom_id: request
                for custom_id, request in row["requests"].items()
                if request["user"] not in gone
            }
            if row["requests"]:
                connection.execute(BULK_BATCHES.insert(), row)

    def release_claim(self, user_id: str) -> None:
        """Release this run's claim on ``user_id``'s plan (the user has nothing to plan)."""
        claim_id = _claim_id(self.version, user_id)
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(*self._own_claims([claim_id])))
        if claim_id in self.claims:  # not lost meanwhile
            self.claims.remove(claim_id)

    def release_claims(self) -> None:
        """Release every claim this run still holds (not one another run took over)."""
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(*self._own_claims()))

    def _own_claims(self, claims: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Which rows are this run's claims (``claims``, or all) still its own (not taken
        over after they went stale)."""
        owner = BULK_BATCHES.c.requests[(_CLAIM, "owner")].as_string()
        ids = list(self.claims if claims is None else claims)
        return (BULK_BATCHES.c.local_id.in_(ids), owner == self.owner)

    def report_lost(self, report: BulkReport) -> None:
        """Report each user whose claim another run took over (``report.claimed``), or
        whose claim went with the user, forgotten meanwhile (``report.forgotten_users``: a
        forget removes the user's claims, which no other run holds)."""
        for user_id in sorted(self.claimed_by[c] for c in self.lost):
            if user_id in report.claimed or user_id in report.forgotten_users:
                continue
            if self.store.last_version(user_id) == 0:
                log.info("user %r was forgotten meanwhile; nothing more submitted for it", user_id)
                report.forgotten_users.append(user_id)
            else:
                log.info(
                    "user %r was taken over by another run while this one was stopped; "
                    "nothing more submitted for it",
                    user_id,
                )
                report.claimed.append(user_id)


_CLAIM_ID_VERSION = "5"
"""The version digit of every claim row's id, a UUID5 (:func:`_claim_id`), the 15th
character: a kept batch's row is a UUID4's, so a query tells claims by their key alone."""


def _claim_id(version: str, user_id: str) -> str:
    """The row id of the claim on ``user_id``'s plan for ``version``: one per pair."""
    return str(uuid5(NAMESPACE_URL, f"memvee-bulk-claim:{version}\0{user_id}"))


def _database_time(connection: Connection) -> datetime:
    """The database's clock: what claims are renewed and judged by, so that the clocks of
    two hosts running bulk runs may differ."""
    return datetime.fromtimestamp(database_now(connection), UTC)


def _abandoned(claim: Mapping[str, Any], renewed: datetime, now: datetime) -> bool:
    """Whether a claim last renewed at ``renewed`` is a stopped run's, to take over. One
    of this host is while its process has ended and never while it is alive (stopped or
    blocked too, whatever the claim's age: :func:`_alive`); another's once unrenewed past
    :data:`CLAIM_TTL`, past :data:`OLD_CLAIM_TTL` for an older memvee's claim."""
    alive = _alive(claim)
    if alive is not None:
        return not alive
    ttl = CLAIM_TTL if "host" in claim else OLD_CLAIM_TTL
    return now - aware(renewed) > ttl


def _this_process() -> dict[str, Any]:
    """What a claim names its run's process by: its machine
    (:func:`actors.process_identity.this_machine`, kept as ``host``), pid and start time."""
    pid = os.getpid()
    return {"host": this_machine(), "pid": pid, "started": _started(pid)}


def _alive(claim: Mapping[str, Any]) -> bool | None:
    """Whether the process a claim names is alive, running or stopped
    (:func:`actors.process_identity.process_alive`), and, this process, only while the run
    that made the claim goes on (:data:`_RUNNING`). ``None`` where that cannot be told:
    another host's process, or one not looked at."""
    alive = process_alive(claim.get("host"), claim.get("pid"), claim.get("started"))
    if alive and claim.get("pid") == os.getpid():
        return claim.get("owner") in _RUNNING
    return alive


def _started(pid: int) -> str | None:
    """When process ``pid`` started, as the kernel tells it (Linux), or ``None``."""
    stat = process_stat(pid)
    return None if stat is None else stat[1]
