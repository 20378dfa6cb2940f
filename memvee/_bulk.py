"""Re-extraction in bulk through the Anthropic Message Batches API, at half the price.

A bulk run brings one knowledge version up to date: every processed message of the chosen
users that the version does not cover yet is planned into bounded batches, submitted as
one Message Batch (or a few, for very large runs: each within the API's limits on requests
and bytes), polled until it ends, and each result recorded as a KnowledgeReextracted event
of its user.

It survives a crash at any point. The requests of each submitted Message Batch are kept
in a small table (:mod:`projections.bulk_runs`) before the batch is created; a later run
for the same version collects the batches left unfinished before planning anything new.
Each recorded event names its request (``request_id``), and a request already recorded in
the user's log is never recorded again. Rows are deleted once their results are recorded,
but that of a batch that failed whole with server errors: the next run plans its messages
again, and a second such failure in a row sends them through the Messages API by the live
re-extraction's rules (:meth:`BulkReextraction._send_directly`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, assert_never, cast
from uuid import NAMESPACE_URL, uuid4, uuid5

import anthropic
import httpx2
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request
from sqlalchemy import Connection, bindparam, func, inspect, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from actors import THE_APIS_STATE
from actors.lease import database_now
from actors.process_identity import process_alive, process_stat, this_machine
from events import (
    AlreadyReextractedError,
    BatchLimits,
    BatchMessage,
    EventStore,
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    InvalidInputError,
    KnownEntry,
    MemveeError,
    NotFoundError,
    RejectedBatchError,
    ReplacedEntry,
    StorageError,
    TokenUsage,
    UserLog,
    bounded,
)
from events.errors import (
    EveryRequestRefusedError,
    ProbeFailedError,
    first_line,
)
from events.harmless import (
    Answered,
    Busy,
    CheckVerdict,
    CredentialsRefused,
    FailedTellingNothing,
    Outage,
)
from memvee._secrets import credentials_of, redact, shown_error
from memvee.extractors import ClaudeExtractor
from memvee.extractors._claude import (
    ProbeResult,
    api_error,
    outweighed,
    probe_request,
)
from projections import ProjectionReader, ProjectionTables, Projector
from projections.bulk_runs import BULK_BATCHES, create_bulk_table, restamped
from projections.bulk_runs import CLAIM as _CLAIM
from projections.reader import aware
from projections.shown import with_targets

if TYPE_CHECKING:
    from memvee.audit import ReextractionReport

__all__ = ["BulkReextraction", "BulkReport"]

log = logging.getLogger("memvee.bulk")

MAX_REQUESTS_PER_BATCH = 10_000
"""Requests per Message Batch, at most (the API takes up to 100,000)."""

MAX_BATCH_BYTES = 240_000_000
"""Bytes of a Message Batch's create body, at most, as the SDK sends it: the API refuses a
body over 256 MB (HTTP 413 ``request_too_large``), and this keeps a margin below that."""

_REQUEST_OVERHEAD = 100
"""Bytes a request takes in the create body beside its ``params``: its custom id and the
JSON around it (a custom id is at most 64 characters)."""

MAX_POLL_OUTAGE = 600.0
"""Seconds of consecutive transient failures (overloaded, 5xx, no connection) that polling
a Message Batch rides out before the run fails: it only reads, and may poll for hours."""

CLOCK_SLACK = timedelta(hours=1)
"""How much earlier than its kept row, by the API's clock, a batch may say it was created
when a run looks for a batch whose creation was never confirmed (the two clocks differ)."""

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

MAX_SHORT_READS = 3
"""Times a kept Message Batch's results may be read short (a download cut, an empty file,
a line missing or broken) before its row is dropped: a gateway that cuts every download
would otherwise hold the batch, and the messages it holds, until the API forgets it."""

_REFUSED = frozenset({400, 413, 422})
"""HTTP statuses that refuse a request for what it is, however often it is sent."""

_CREATE_ATTEMPTS = 3
"""Calls that create one Message Batch, at most, when the API refuses it for a while."""

_CREATE_PAUSE = 1.0
"""Seconds before the second call that creates a Message Batch (doubled for the third)."""

_CANCEL_ATTEMPTS = 3
"""Calls that cancel one probe Message Batch, at most, when the API fails for a while."""


Decide = Callable[[str, Callable[[UserLog], Any], Sequence[str]], Any]
"""Decides on a user's freshly loaded log and appends what it emitted (Audit's), refused
with :class:`NotFoundError` once a message it was drawn from (the third argument) is gone."""

Shown = Callable[[str, list[BatchMessage]], tuple[tuple[KnownEntry, ...], Any]]
"""The version's entries a batch of a user's messages is shown, as live extraction and
synchronous re-extraction show them (Audit's), and the chains of ended entries before."""

Progress = Callable[[int, int], None]
"""Told (requests done, requests in all) while a Message Batch is processed."""

Direct = Callable[[str, Collection[str], "ReextractionReport"], Awaitable[None]]
"""Re-extracts the given messages of a user through the Messages API, by the live
re-extraction's rules (Audit's ``reextract``), filling in the report as it goes: the
fallback for a Message Batch that failed whole with server errors a second time."""

RecordFailure = Callable[..., bool]
"""Keeps a failed re-extraction call in its user's log, what it cost and whether it
failed of its own in a way that repeats (Audit's ``_record_failure``: user, version,
message ids, the error, the extractor, whether it failed alone, and the error's ``text``
and the ``request_id`` by name); returns whether it was kept."""


@dataclass
class BulkReport:
    """What a bulk run did: requests submitted and recorded, entries, what failed, the
    messages ``left_out`` of the version (by id, with why: each failed alone in a way that
    repeats, or is too large for any Message Batch alone; those an earlier run left out are
    told again, not sent), and the kept Message Batches the
    API no longer knows (``lost``: their requests are planned again), and the users
    another run held (``claimed``)."""

    submitted: int = 0
    recorded: int = 0
    skipped: int = 0
    entries: int = 0
    batches: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    forgotten: dict[str, str] = field(default_factory=dict)
    """Requests whose user was forgotten while their Message Batch ran: dropped, not
    failed (nothing is left to record them in, nor to send again)."""
    left_out: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    """Kept Message Batches dropped because their results were read short
    :data:`MAX_SHORT_READS` times: what was read is recorded, and the requests whose
    results were not are planned again (by this run, which collects kept batches first)."""
    claimed: list[str] = field(default_factory=list)
    """Users another run under way re-extracts into the version: nothing new was submitted
    for them (a run of another host stopped in the last :data:`CLAIM_TTL` still holds its
    users; one of this host holds them while its process is alive), or nothing more once
    another run took them over while this one was stopped."""
    collected: list[str] = field(default_factory=list)
    """Users some of whose requests kept by an earlier run this run recorded (its own
    submissions left aside)."""
    probes: list[str] = field(default_factory=list)
    """Probe Message Batches (one request of one token each, made to tell whether a
    request refused as too large alone is refused for its size) this run canceled: its
    own, and those an earlier run left running."""
    probes_running: list[str] = field(default_factory=list)
    """Probe Message Batches this run could not cancel: kept, the next run cancels them."""
    direct: dict[str, int] = field(default_factory=dict)
    """Users whose messages this run sent through the Messages API at full price, and how
    many: their Message Batch failed whole with server errors, as one of the same requests
    had before (of one of their messages). What that path could not extract is in
    ``failed`` (``direct:USER``) and ``left_out``."""
    forgotten_users: list[str] = field(default_factory=list)
    """Users named whose log was forgotten after the run began: nothing was planned for
    them (one named with no log at all stops the run before it begins)."""
    direct_held: int = 0
    """Messages due to go through the Messages API that this run kept for the next one:
    past its bound of messages sent so (``direct_limit``)."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """One request of a bulk run: a user's batch of messages, the entries it was shown,
    and the version of the user's log it was planned at (the version covered none of its
    messages then)."""

    user_id: str
    message_ids: list[str]
    known: list[str]
    planned_at: int
    failing: int = 0
    """The most Message Batches in a row that failed whole with server errors with one of
    these messages in them before this one (kept as :data:`_FAILING`): a message new since
    does not reset its companions' count."""
    tried: str | None = None
    """When the Messages API fallback last sent this user's messages (kept as
    :data:`_DIRECT_TRIED`), ``None`` if never: the fallback reaches users least lately
    tried first."""

    def to_json(self) -> dict[str, Any]:
        kept: dict[str, Any] = {
            "user": self.user_id,
            "messages": self.message_ids,
            "known": self.known,
            "at": self.planned_at,
        }
        if self.failing:
            kept[_FAILING] = self.failing
        if self.tried is not None:
            kept[_DIRECT_TRIED] = self.tried
        return kept


@dataclass(frozen=True, slots=True)
class _Built:
    """A planned request with its ``params`` and the bytes it adds to a create body."""

    planned: _Planned
    params: MessageCreateParamsNonStreaming
    size: int


class BulkReextraction:
    """Re-extracts users' processed messages into ``version`` through Message Batches.

    ``limits`` bounds each request as live extraction bounds its batches, and ``shown``
    picks the entries it is shown; ``poll_interval`` is how often a running Message Batch
    is looked at.
    """

    def __init__(
        self,
        store: EventStore,
        reader: ProjectionReader,
        decide: Decide,
        extractor: ClaudeExtractor,
        version: str,
        shown: Shown,
        record_failure: RecordFailure,
        *,
        limits: BatchLimits | None = None,
        poll_interval: float = 30.0,
        progress: Progress | None = None,
        direct: Direct | None = None,
        direct_limit: int | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.decide = decide
        self.extractor = extractor
        self.version = version
        self.shown = shown
        self.record_failure = record_failure
        self.limits = limits or BatchLimits()
        self.poll_interval = poll_interval
        self.progress = progress or (lambda done, total: None)
        self.direct = direct
        self.direct_limit = direct_limit  # the most messages sent directly a run (None: all)
        self.direct_stopped = False  # the API is down or refuses the key: no more direct calls
        self.direct_answered = False  # the Messages API answered a call of this run's
        # failing counts of messages to plan again, each with the log version planned at
        self.failing: dict[str, dict[str, list[tuple[int, int | None]]]] = {}
        self.failed_whole: dict[str, set[str]] = {}  # kept rows that failed whole, by user
        self.last_tried: dict[str, str] = {}  # when a fallback last sent each user's messages
        self.owner = str(uuid4())
        self.process = _this_process()  # named by its claims, to tell when it ended
        self.claims: list[str] = []
        self.claimed_by: dict[str, str] = {}  # the user of each claim, by its id
        self.lost: set[str] = set()  # claims another run took over while this one was stopped
        self.dropped: dict[str, set[str]] = {}  # messages of kept batches dropped, by user
        self._kept: dict[str, _KeptRow] = {}  # the kept rows a claim decoded, by id

    async def run(self, user_ids: Sequence[str], *, listed: bool = False) -> BulkReport:
        """Collect what an earlier run left unfinished, then submit, poll and record the
        messages of ``user_ids`` that the version does not cover yet. Each user's plan is
        claimed before anything is submitted, so a second run at once submits nothing for
        the users this one holds (``BulkReport.claimed``). ``user_ids`` ``listed`` from the
        logs there were (``reextract --all``) are never refused for a missing log: it was
        forgotten since (``BulkReport.forgotten_users``)."""
        report = BulkReport()
        try:
            if not listed:
                await asyncio.to_thread(self._check_logs, user_ids)
            await asyncio.to_thread(self._create_table)
            await asyncio.to_thread(self._sweep_forgotten_claims)
        except SQLAlchemyError as error:
            raise self._storage_failure(error) from error
        await self.extractor.prepare()
        client = self.extractor.client
        _RUNNING.add(self.owner)
        renewing = asyncio.create_task(self._keep_claims())
        try:
            for batch_id in await asyncio.to_thread(self._kept_probes):
                await self._cancel_probe(client, batch_id, report)
            for row in await asyncio.to_thread(self._unfinished):
                if _failed_whole(row):  # taken user by user, as :meth:`_claim` claims them
                    for request in row["requests"].values():
                        self.failed_whole.setdefault(request["user"], set()).add(row["local_id"])
                elif not await asyncio.to_thread(self._held_elsewhere, row):
                    await self._finish(client, row, report, earlier=True)
            planned = await asyncio.to_thread(self._plan, user_ids, report)
            await self._submit_all(client, planned, report)
        except anthropic.AnthropicError as error:
            raise api_error(error, credentials_of(self.extractor)) from None
        except SQLAlchemyError as error:
            raise self._storage_failure(error) from error
        finally:
            renewing.cancel()
            _RUNNING.discard(self.owner)
            try:
                await asyncio.to_thread(self._release_claims)
            except Exception as error:  # the run's own outcome is what its caller gets
                log.warning(
                    "releasing the bulk run's claims failed (%s); they lapse after %g s",
                    first_line(error),
                    CLAIM_TTL.total_seconds(),
                )
            await self.extractor.aclose()
        return report

    def _check_logs(self, user_ids: Sequence[str]) -> None:
        """Refuse (:class:`InvalidInputError`) a run naming a user who has no log, before
        anything is collected or submitted: one forgotten later, while the run goes on, is
        passed over instead (``BulkReport.forgotten_users``), as is one of users listed
        from their logs, whenever it was forgotten."""
        for user_id in user_ids:
            if self.store.last_version(user_id) == 0:
                raise InvalidInputError(f"user {user_id!r} has no log")

    def _sweep_forgotten_claims(self) -> None:
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

    def _storage_failure(self, error: SQLAlchemyError) -> StorageError:
        """The :class:`StorageError` a run raises for a failure of the database no step of
        it turned into one: its driver's words, without the statement and parameters."""
        return StorageError(
            f"the bulk re-extraction into {self.version!r} failed in {self.store.safe_url}: "
            f"{first_line(error)}"
        )

    # ------------------------------------------------------------------ plan and submit

    def _plan(self, user_ids: Sequence[str], report: BulkReport) -> list[_Planned]:
        """Every user's processed messages not yet in the version, in bounded batches;
        those of requests that failed before go one a request, after the rest (so one
        that always fails keeps none of the others out of the version). A user another
        run holds is passed over (``report.claimed``; one not named, only logged). A user
        not named, whose requests were in a kept batch this run dropped, gets those
        messages planned again only (:attr:`dropped`): no run naming them may come. A
        message the user's log left out of the version is not planned (it would fail
        again, billed, and hold the user's version back for good): it is reported left out
        again, with the error that left it out, as a run without Message Batches reports it.
        The users the Messages API fallback tried least lately (never, first) are planned
        first, so a fallback that ends early at its first user reaches another each run."""
        planned: list[_Planned] = []
        others = [user_id for user_id in self.dropped if user_id not in user_ids]
        for user_id in [*user_ids, *others]:
            pending = self._claim(user_id)
            if pending is None:  # the report names it; its reader says so once
                log.info(
                    "user %r is being re-extracted into %r by another run; nothing new "
                    "submitted for it",
                    user_id,
                    self.version,
                )
                if user_id not in others:  # one not named is that run's, not this one's
                    report.claimed.append(user_id)
                continue
            user_log = self.store.load(user_id)
            if user_log is None:  # forgotten since the run began: nothing to plan
                self._release_claim(user_id)
                if user_id not in others:
                    log.info("user %r was forgotten after the bulk run began; passed over", user_id)
                    report.forgotten_users.append(user_id)
                continue
            events = self.store.events_of(user_id, upto=user_log.version)
            uncovered = user_log.not_covered_by(self.version, events)
            if user_id in others:
                pending = pending | (set(uncovered) - self.dropped[user_id])
            left_out = user_log.left_out_of(self.version, events) & set(uncovered)
            report.left_out.update(_why_left_out(events, self.version, left_out))
            todo = [
                BatchMessage.of(e)
                for e in events
                if isinstance(e, UserLog.MessageAdded)
                and e.message_id in uncovered
                and e.message_id not in pending
                and e.message_id not in left_out
            ]
            failed = user_log.failed_reextraction(self.version, events)
            failing = _since_promoted(self.failing.get(user_id, {}), events, self.version)
            for batch in bounded(todo, self.limits, failed):
                shown, _ = self.shown(user_id, batch)
                known = [k.entry_id for k in shown]
                ids = [m.message_id for m in batch]
                count = max(failing.get(m, 0) for m in ids)
                tried = self.last_tried.get(user_id)
                planned.append(_Planned(user_id, ids, known, user_log.version, count, tried))
        return sorted(planned, key=lambda p: _last_tried(p.tried, p.user_id))

    def _take_failed_whole(self, connection: Connection, user_id: str) -> None:
        """Take ``user_id``'s requests out of the kept rows whose Message Batch failed whole
        with server errors, once this run claimed the user (in ``connection``'s transaction,
        locking the rows by id, as a ``forget`` locks the kept rows once it locked the claim
        rows, and an older memvee's by id alone): their
        messages are planned again by this run, each request carrying how many batches of
        its messages failed so (:attr:`failing`). Those of users this run does not claim
        (another run holds them, or none names them) stay kept with their count.

        A count outlives a promotion of the version (:func:`_since_promoted`) and nothing
        else: no age, and no other batch answered meanwhile, says the API recovered for
        these requests (a batch answered while they failed whole points at them, not at an
        outage), and a count that lapsed so would let a request failing every run of a
        daily or weekly job fail, billed, for good. A stale count costs at most one pass
        of ``direct_limit`` messages at full price."""
        rows = connection.execute(
            select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests)
            .where(BULK_BATCHES.c.local_id.in_(sorted(self.failed_whole.pop(user_id, ()))))
            .order_by(BULK_BATCHES.c.local_id)
            .with_for_update()
        ).all()
        for local_id, requests in rows:
            where = BULK_BATCHES.c.local_id == local_id
            taken = {
                k: r
                for k, r in requests.items()
                if r.get("user") == user_id and r.get(_FAILED_WHOLE)
            }
            if not taken:
                continue
            counts = self.failing.setdefault(user_id, {})
            for request in taken.values():
                count = (int(request[_FAILING]), request.get("at"))
                for message_id in request["messages"]:
                    counts.setdefault(message_id, []).append(count)
                tried = request.get(_DIRECT_TRIED)
                last = self.last_tried.get(user_id)
                if _last_tried(tried, user_id) > _last_tried(last, user_id):
                    self.last_tried[user_id] = tried
            left = {k: r for k, r in requests.items() if k not in taken}
            if left:
                connection.execute(BULK_BATCHES.update().where(where).values(requests=left))
            else:
                connection.execute(BULK_BATCHES.delete().where(where))

    async def _submit_all(
        self, client: anthropic.AsyncAnthropic, planned: list[_Planned], report: BulkReport
    ) -> None:
        """Submit ``planned`` in order as Message Batches, each collected before the next.

        Each batch holds at most :data:`MAX_REQUESTS_PER_BATCH` requests and ``budget``
        bytes of create body (:data:`MAX_BATCH_BYTES` at first). A batch the API refuses as
        too large (413) was not made: its requests go again, in batches of at most half its
        bytes from then on; a request refused so alone is split in its messages, down to the
        message that is too large alone, which is left out of the version (:meth:`_split`).
        """
        todo = deque(planned)
        budget = MAX_BATCH_BYTES
        while todo:
            chunk = await self._next_chunk(todo, budget, report)
            if not chunk:
                continue
            try:
                row = await self._submit(client, chunk, report)
            except anthropic.APIStatusError as error:
                if error.status_code != 413:
                    raise
                shown = api_error(error, credentials_of(self.extractor))
                size = sum(b.size for b in chunk)
                if len(chunk) > 1:
                    budget = min(budget, size // 2)
                    log.warning(
                        "a Message Batch of %d requests (%d bytes) was refused as too large "
                        "(%s); its requests go again in batches of at most %d bytes",
                        len(chunk),
                        size,
                        shown,
                        budget,
                    )
                    todo.extendleft(reversed([b.planned for b in chunk]))
                else:
                    await self._split(chunk[0].planned, todo, report, str(shown), probe=True)
                continue
            if row is None:
                continue
            report.submitted += len(row["requests"])
            await self._finish(client, row, report)

    async def _next_chunk(
        self, todo: deque[_Planned], budget: int, report: BulkReport
    ) -> list[_Built]:
        """The next requests of ``todo`` that one Message Batch takes: within
        :data:`MAX_REQUESTS_PER_BATCH` and ``budget`` bytes (a request over ``budget`` goes
        alone); a request too large for any batch is split first (:meth:`_split`)."""
        chunk: list[_Built] = []
        size = 0
        while todo and len(chunk) < MAX_REQUESTS_PER_BATCH:
            built = await asyncio.to_thread(self._build, todo[0])
            if built.size > MAX_BATCH_BYTES:
                todo.popleft()
                why = (
                    f"request_too_large: its request is {built.size} bytes, over the "
                    f"{MAX_BATCH_BYTES} a Message Batch may carry"
                )
                await self._split(built.planned, todo, report, why)
                continue
            if chunk and size + built.size > budget:
                break
            todo.popleft()
            chunk.append(built)
            size += built.size
        return chunk

    def _build(self, planned: _Planned) -> _Built:
        """The Messages API ``params`` of a planned request, and the bytes it adds to the
        create body, measured as the SDK encodes it (compact JSON, UTF-8)."""
        batch = self._batch("planned", planned.to_json())
        params = cast(MessageCreateParamsNonStreaming, self.extractor.request(batch))
        params["max_tokens"] = self.extractor.max_tokens  # billed only as generated
        encoded = json.dumps(params, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return _Built(planned, params, len(encoded.encode()) + _REQUEST_OVERHEAD)

    async def _split(
        self,
        planned: _Planned,
        todo: deque[_Planned],
        report: BulkReport,
        why: str,
        *,
        probe: bool = False,
    ) -> None:
        """A request too large for a Message Batch alone: its messages go in two requests
        at the front of ``todo``, each keeping its failing count and fallback stamp, or,
        one message, it is left out of the version as the synchronous path leaves out one
        that fails alone (its failure kept in its user's log as one that repeats, and
        reported). When the API refused it (``probe``), that
        is only for a message that weighs more than the fixed prompt around it, once the
        same request with a harmless message in its place is accepted as a Message Batch
        (:meth:`_probe_batches`): otherwise the API (or a gateway in front of it) refuses
        requests of any size, and the run stops, leaving none out."""
        batch = await asyncio.to_thread(self._batch, "planned", planned.to_json())
        messages = list(batch.messages)
        if len(messages) > 1:
            half = (len(messages) + 1) // 2
            for part in (messages[half:], messages[:half]):
                shown, _ = await asyncio.to_thread(self.shown, planned.user_id, part)
                ids = [m.message_id for m in part]
                known = [k.entry_id for k in shown]
                todo.appendleft(replace(planned, message_ids=ids, known=known))
            log.info(
                "user %r: a bulk request of %d messages is too large (%s); split",
                planned.user_id,
                len(messages),
                why,
            )
            return
        if not messages:  # forgotten meanwhile: nothing to send
            return
        if probe and outweighed(self.extractor.request(batch), batch):
            raise _refused_whatever_size(why, "outweighed")
        verdict = await self._probe_batches(batch, report) if probe else "accepted"
        if verdict != "accepted":
            raise _refused_whatever_size(why, verdict)
        message_id = messages[0].message_id
        error = RejectedBatchError(why)
        await asyncio.to_thread(self._record_failure, planned.to_json(), error, None)
        report.left_out[message_id] = why
        log.warning(
            "user %r: message %s left out of version %r: its request is too large alone (%s)",
            planned.user_id,
            message_id,
            self.version,
            why,
        )

    async def _probe_batches(self, batch: ExtractionBatch, report: BulkReport) -> str:
        """How the Message Batches API answers a Message Batch of ``batch``'s request with
        a harmless message in place of its messages (asking for one token): "accepted",
        the batch made is canceled at once and the refusal was the message's size;
        "refused", the API or a gateway in front of it refuses requests of any size;
        "failed", it tells nothing. A probe through the Messages API does not meet a body
        limit of Message Batches' own, so it took a heavy message for the one to blame.
        The probe batch is kept (its id) until it is canceled, so that one this run could
        not cancel, stopped or refused, is canceled by the next (:meth:`_cancel_probe`)."""
        client = self.extractor.client.with_options(max_retries=0)
        params = cast(
            MessageCreateParamsNonStreaming, probe_request(self.extractor.request(batch), batch)
        )
        params["max_tokens"] = 1
        probe: Request = {"custom_id": f"probe-{uuid4()}", "params": params}
        try:
            made = await client.messages.batches.create(requests=[probe])
        except anthropic.APIStatusError as error:
            return "refused" if error.status_code in _REFUSED else "failed"
        except anthropic.AnthropicError:
            return "failed"
        kept = False
        try:
            await asyncio.to_thread(self._keep_probe, made.id)
            kept = True
        finally:
            await self._cancel_probe(client, made.id, report, kept=kept)
        return "accepted"

    async def _cancel_probe(
        self,
        client: anthropic.AsyncAnthropic,
        batch_id: str,
        report: BulkReport,
        *,
        kept: bool = True,
    ) -> None:
        """Cancel the probe Message Batch ``batch_id`` and forget it (``report.probes``),
        calling again while the API fails for a while. One still not canceled, or whose
        cancel the API refused the key for (401, 403: nothing was done), stays kept for the
        next run to cancel (``report.probes_running``); one not ``kept`` (its id could not
        be stored) runs to its end, and the warning says so. A probe the API no longer
        knows, or will not cancel as ended, is forgotten: it runs no more."""
        # The SDK's own retries (backoff, Retry-After): a cancel may be sent again safely.
        retrying = client.with_options(max_retries=_CANCEL_ATTEMPTS - 1)
        try:
            await retrying.messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as error:
            shown = api_error(error, credentials_of(self.extractor))
            if _transient(error) or _key_refused(error):  # one request of one token: billed
                if not kept:
                    log.warning(
                        "canceling probe Message Batch %s failed (%s), and its id could not "
                        "be kept for a later run to cancel: it runs to its end (one request "
                        "of one token)",
                        batch_id,
                        shown,
                    )
                    return
                log.warning(
                    "canceling probe Message Batch %s failed (%s); the next run cancels it",
                    batch_id,
                    shown,
                )
                report.probes_running.append(batch_id)
                return
            log.info("probe Message Batch %s is not canceled (%s): it is over", batch_id, shown)
        if kept:
            await asyncio.to_thread(self._forget_probe, batch_id)
        report.probes.append(batch_id)

    async def _submit(
        self, client: anthropic.AsyncAnthropic, chunk: list[_Built], report: BulkReport
    ) -> dict[str, Any] | None:
        """Keep the requests, then create the Message Batch and keep its id; ``None`` when
        nothing is left to submit.

        Only the requests of users this run still holds are kept and sent, checked as they
        are kept (:meth:`_insert_held`): a user another run took over while this one was
        stopped is its (``report.claimed``).

        Each custom id ends with the kept row's id, so a batch whose creation was never
        confirmed (a crash, a connection lost mid-call) can be told among the account's
        batches later (:meth:`_created_for`). The create call is never retried blindly:
        the SDK would create a second batch, billed too, when the first one's answer was
        lost; an answer that refused it is retried here, and a lost answer is looked for.
        """
        chunk = [b for b in chunk if _claim_id(self.version, b.planned.user_id) not in self.lost]
        local_id = str(uuid4())
        ids = [f"r{i}-{local_id}" for i in range(1, len(chunk) + 1)]
        built = dict(zip(ids, chunk, strict=True))
        kept = {custom_id: b.planned.to_json() for custom_id, b in built.items()}
        row: dict[str, Any] = {
            "local_id": local_id,
            "knowledge_version": self.version,
            "api_batch_id": None,
            "requests": kept,
            "created_at": datetime.now(UTC),
        }
        if kept:
            await asyncio.to_thread(self._insert_held, row)
        self._report_lost(report)
        if not row["requests"]:
            return None
        requests: list[Request] = [
            {"custom_id": custom_id, "params": built[custom_id].params}
            for custom_id in row["requests"]
        ]
        created = await self._create(client, row, requests)
        row["api_batch_id"] = created
        await asyncio.to_thread(self._set_batch_id, local_id, created)
        log.info("submitted %d requests as Message Batch %s", len(requests), created)
        return row

    def _report_lost(self, report: BulkReport) -> None:
        """Report each user whose claim another run took over (``report.claimed``)."""
        for user_id in sorted(self.claimed_by[c] for c in self.lost):
            if user_id not in report.claimed:
                log.info(
                    "user %r was taken over by another run while this one was stopped; "
                    "nothing more submitted for it",
                    user_id,
                )
                report.claimed.append(user_id)

    async def _create(
        self, client: anthropic.AsyncAnthropic, row: dict[str, Any], requests: list[Request]
    ) -> str:
        """Create the Message Batch of ``row``; returns its id. A refusal that may pass
        (rate limited, overloaded) is retried; a lost answer is looked for among the
        account's batches before the batch is created again, as is an answer that names no
        batch (a gateway's ``200 {}``: the batch may have been made). Any other refusal (one as too
        large, 413, which the caller splits for) made nothing: the row is deleted."""
        once = client.with_options(max_retries=0)
        pause = _CREATE_PAUSE
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            last = attempt == _CREATE_ATTEMPTS
            unclear: Exception
            try:
                created = await once.messages.batches.create(requests=requests)
            except anthropic.AnthropicError as error:
                shown = api_error(error, credentials_of(self.extractor))
                if not _maybe_created(error):
                    if last or not _transient(error):
                        await asyncio.to_thread(self._delete, row["local_id"])
                        raise
                    log.warning("creating a Message Batch was refused (%s); trying again", shown)
                    await asyncio.sleep(pause)
                    pause *= 2
                    continue
                unclear = error
            else:
                batch_id = getattr(created, "id", None)
                if isinstance(batch_id, str) and batch_id:
                    return batch_id
                shown = ExtractionError(
                    "creating a Message Batch got an answer naming no batch (a gateway may "
                    "have answered in the API's place)"
                )
                unclear = shown
            log.warning(
                "creating a Message Batch got no clear answer (%s); looking whether it was made",
                shown,
            )
            await asyncio.sleep(pause)
            found = await self._created_for(client, row)
            if found is not None:
                return found
            if last:
                raise unclear
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # the last attempt returns or raises

    # ------------------------------------------------------------------ poll and record

    async def _finish(
        self,
        client: anthropic.AsyncAnthropic,
        row: dict[str, Any],
        report: BulkReport,
        *,
        earlier: bool = False,
    ) -> None:
        """Wait for one Message Batch to end, then record its results in log order; the
        users of one an ``earlier`` run kept are told as collected (``report.collected``)."""
        unread: list[str] = []
        batch_id = row["api_batch_id"] or await self._created_for(client, row, unread)
        if batch_id is None:
            if unread:  # may be the row's batch: counted as a short read of it
                why = "its results were cut before their first line"
                await self._read_short(row, unread[0], why, report)
            # Never created, or made by an older memvee that cannot tell it: plan again.
            self._drop_row(row)
            await asyncio.to_thread(self._delete, row["local_id"])
            return
        if row["api_batch_id"] is None:
            row["api_batch_id"] = batch_id
            await asyncio.to_thread(self._set_batch_id, row["local_id"], batch_id)
        total = len(row["requests"])
        try:
            answers, short = await self._ended_results(client, batch_id, total)
        except anthropic.NotFoundError:
            log.warning(
                "Message Batch %s is not known to the API (deleted, past its 29 days, or "
                "another workspace's): its %d requests are planned again",
                batch_id,
                total,
            )
            report.lost.append(batch_id)
            self._drop_row(row)
            await asyncio.to_thread(self._delete, row["local_id"])
            return
        short = short or _short_read(answers, row["requests"], total)
        if short is not None:
            await self._read_short(row, batch_id, short, report)
            self._drop_row(row)
        report.batches.append(batch_id)
        by_user: dict[str, list[tuple[int, str]]] = {}
        for custom_id, request in row["requests"].items():
            by_user.setdefault(request["user"], []).append((_order(custom_id), custom_id))
        recorded_of: dict[str, set[str]] = {}  # read only for the users of refused requests
        refused_all, probed = await self._refused_all(row, answers, recorded_of)
        model_refusal, probed_model = await self._model_refusal(row, answers, recorded_of)
        probed.update(probed_model)
        blamable = _blamable(answers)
        for user_id, requests in by_user.items():
            recorded = await asyncio.to_thread(self._recorded, user_id)
            for _, custom_id in sorted(requests):
                request_id = f"{batch_id}:{custom_id}"
                if request_id in recorded:
                    report.skipped += 1
                    continue
                if custom_id not in answers:  # read short run after run: planned again
                    continue
                outcome = answers[custom_id]
                request = row["requests"][custom_id]
                try:
                    entries = await asyncio.to_thread(
                        self._record,
                        custom_id,
                        request,
                        outcome,
                        request_id,
                        refused_all,
                        blamable,
                        model_refusal,
                        probed.get(custom_id),
                    )
                except NotFoundError as gone:  # the user was forgotten while the batch ran
                    report.forgotten[request_id] = str(gone)
                    continue
                if entries is None:
                    report.skipped += 1
                elif isinstance(entries, ExtractionError):
                    report.failed[request_id] = str(entries)
                    own = entries.repeats or (blamable and _server_error(outcome))
                    if own and await asyncio.to_thread(self._fails_alone, request):
                        report.left_out[request["messages"][0]] = str(entries)
                else:
                    report.recorded += 1
                    report.entries += entries
                    if earlier and user_id not in report.collected:
                        report.collected.append(user_id)
        if short is None and not blamable:
            again = {k: r for k, r in row["requests"].items() if int(r.get(_FAILING, 0))}
            if again and not earlier:
                await self._send_directly(row, again, report)
            await asyncio.to_thread(self._keep_failed_whole, row)
            return
        await asyncio.to_thread(self._delete, row["local_id"])

    async def _send_directly(
        self, row: dict[str, Any], requests: Mapping[str, Any], report: BulkReport
    ) -> None:
        """Send the messages of ``requests`` of ``row`` through the Messages API, user
        after user in the order :meth:`_plan` put them (least lately tried first), noting
        each user in ``row`` before its first call (:meth:`_note_tried`), by the live
        re-extraction's rules (:data:`Direct`): a fallback that ends early at the same place
        run after run reaches another user each run, none starved behind it, even when each
        run is killed there. Their Message Batch failed whole with server
        errors, as one of their messages' had before. A message the user's log left out of
        the version is not sent (it would fail again, at full price), nor one past the run's
        :attr:`direct_limit` (``report.direct_held``: its batch is kept, and the next run
        sends it). That path blames only what its rules blame and stops at two failures in
        a row; a user's run that stopped ends the fallback for the rest of this run only
        when it tells the API is down or refuses the API key for every request
        (:meth:`_every_user_stopped`), else the next user goes on. Users another run took
        over, or forgotten, are passed over."""
        from memvee.audit import ReextractionReport  # the audit imports this module lazily

        if self.direct is None:
            return
        by_user: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        for custom_id, request in requests.items():
            by_user.setdefault(request["user"], []).extend(request["messages"])
            failed.setdefault(request["user"], []).append(f"{row['api_batch_id']}:{custom_id}")
        for user_id, message_ids in by_user.items():
            if self.direct_stopped:
                return
            if _claim_id(self.version, user_id) not in self.claims:
                continue
            left_out = await asyncio.to_thread(self._left_out, user_id)
            sent = [m for m in message_ids if m not in left_out]
            held = 0
            if self.direct_limit is not None:
                room = max(self.direct_limit - sum(report.direct.values()), 0)
                held = len(sent[room:])
                report.direct_held += held
                sent = sent[:room]
            if not sent:
                continue
            live = ReextractionReport()
            await asyncio.to_thread(self._note_tried, row, user_id)
            report.direct[user_id] = report.direct.get(user_id, 0) + len(sent)
            log.warning(
                "user %r: %d messages go through the Messages API at full price: their "
                "Message Batch failed whole with server errors twice",
                user_id,
                len(sent),
            )
            try:
                await self.direct(user_id, sent, live)
            except NotFoundError:  # forgotten meanwhile: nothing to send
                del report.direct[user_id]
            except MemveeError as stopped:
                every_user = await self._every_user_stopped(user_id, stopped, live)
                self.direct_stopped = every_user is not None
                told = stopped if every_user is None else every_user
                shown = shown_error(told, self.extractor)
                report.failed[f"direct:{user_id}"] = shown
            else:  # what failed in the batch is extracted or left out now, but the held
                self.direct_answered = True
                for request_id in failed[user_id] if not held else ():
                    report.failed.pop(request_id, None)
            report.entries += live.entries
            report.left_out.update(live.left_out)

    async def _every_user_stopped(
        self, user_id: str, stopped: MemveeError, live: ReextractionReport
    ) -> MemveeError | None:
        """The error that ends the fallback for every user after ``user_id``'s live
        re-extraction ``stopped`` (``None``: the next user goes on): ``stopped`` itself when
        it tells the Messages API is down (:func:`_stop_tells_api_down`), an
        :class:`EveryRequestRefusedError` saying so when a harmless request's credentials
        were refused (401, 403: the API key or its permissions are refused for every
        user's request, so no other user's messages are worth a full-price call). A lone
        message failing once with nothing else to send tells nothing by itself: until a
        call of this run's fallback was answered, one harmless request is sent then. A
        harmless request that failed, the live run's or this one, ends the fallback for the
        run when it tells the API down or busy (rate limited or asked to wait, as
        :func:`actors.tells_down` judges it: each further user would cost failed full-price
        calls and their waits); the users not reached keep their Message Batches for the
        next run. One failing in a way that would repeat (a 400) tells only of itself, and
        the next user goes on. So an outage, a rate limit or a refused key costs one failed call and
        that request, not a failed call for every user with a message or two to send."""
        # the audit imports this module lazily
        from memvee.audit import harmless_request, record_check, verdict_of

        verdict = None if live.check is None else live.check.verdict
        if isinstance(verdict, CredentialsRefused):
            return _fallback_key_refused(stopped, verdict.error)
        if _stop_tells_api_down(stopped, live):
            return stopped
        if verdict is not None:  # the live run sent its own harmless request
            return stopped if isinstance(verdict, Busy) else None
        if not _lone(stopped) or self.direct_answered:
            return None
        usage, failed = await harmless_request(
            self.extractor, user_id, self.version, datetime.now(UTC)
        )
        log.info(
            "user %r: a harmless request after a lone message failed (%d tokens): %s",
            user_id,
            (usage.input_tokens or 0) + (usage.output_tokens or 0),
            "answered" if failed is None else f"failed too ({shown_error(failed, self.extractor)})",
        )
        told = verdict_of(failed, self.extractor)
        await asyncio.to_thread(
            record_check, self.decide, user_id, self.version, (), usage, told, self.extractor
        )
        match told:
            case Answered():
                self.direct_answered = True
                return None
            case CredentialsRefused(error=error):
                return _fallback_key_refused(stopped, error)
            case FailedTellingNothing():  # the request's own failure, not the API's state
                return None
            case Busy():  # rate limited or asked to wait: not down, but busy
                log.warning(
                    "user %r: the harmless request was rate limited or asked to wait; no "
                    "other user's messages are sent through the Messages API this run (their "
                    "Message Batches stay kept for the next run)",
                    user_id,
                )
                return stopped
            case Outage():  # the API down: every further user's call would fail so
                return stopped
            case _:
                assert_never(told)

    def _left_out(self, user_id: str) -> set[str]:
        """The messages ``user_id``'s log left out of the version (none once forgotten)."""
        user_log = self.store.load(user_id)
        if user_log is None:
            return set()
        events = self.store.events_of(user_id, upto=user_log.version)
        return user_log.left_out_of(self.version, events)

    def _keep_failed_whole(self, row: dict[str, Any]) -> None:
        """Keep ``row``, whose Message Batch failed whole with server errors, for the next
        run to plan its messages again, counting one more such failure in each request
        (read back by :meth:`_take_failed_whole`); each request keeps what the fallback
        noted in it (:meth:`_note_tried`). A ``forget`` at once waits for the update instead
        of being undone by it (:meth:`_change_requests`)."""

        def counted(_: Connection, requests: dict[str, Any]) -> dict[str, Any]:
            return {
                k: {**r, _FAILING: int(r.get(_FAILING, 0)) + 1, _FAILED_WHOLE: True}
                for k, r in requests.items()
            }

        self._change_requests(row, counted)

    def _note_tried(self, row: dict[str, Any], user_id: str) -> None:
        """Note in ``user_id``'s requests of the kept ``row`` that the Messages API fallback
        sends their messages now (:data:`_DIRECT_TRIED`, by the database's clock), before
        its first call: a run killed while that call waits (a timeout, SIGTERM, Ctrl-C)
        still moves the user behind the others for the next run. A row without the user's
        requests (forgotten meanwhile) is left as it is."""

        def noted(connection: Connection, requests: dict[str, Any]) -> dict[str, Any] | None:
            if not any(r.get("user") == user_id for r in requests.values()):
                return None
            now = _database_time(connection).isoformat()
            return {
                k: {**r, _DIRECT_TRIED: now} if r.get("user") == user_id else r
                for k, r in requests.items()
            }

        self._change_requests(row, noted)

    def _change_requests(
        self,
        row: dict[str, Any],
        change: Callable[[Connection, dict[str, Any]], dict[str, Any] | None],
    ) -> None:
        """Replace the requests of the kept ``row`` with what ``change`` makes of them
        (``None``: left as they are), in place. The row is read locked, so a ``forget`` at
        once waits for the update instead of being undone by it; its requests of a user
        forgotten before are gone already, and a row gone or emptied is left alone. Its
        stamp moves (:func:`projections.bulk_runs.restamped`), so a run that decoded it
        before decodes it again at its next claim of their user (:meth:`_kept_for`)."""
        with self.store.transaction() as connection:
            kept = connection.execute(
                select(BULK_BATCHES.c.requests, BULK_BATCHES.c.created_at)
                .where(BULK_BATCHES.c.local_id == row["local_id"])
                .with_for_update()
            ).first()
            if kept is None or not kept.requests:
                return
            changed = change(connection, kept.requests)
            if changed is None:
                return
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == row["local_id"])
                .values(requests=changed, created_at=restamped(kept.created_at))
            )

    def _drop_row(self, row: dict[str, Any]) -> None:
        """Note the messages of a kept row dropped before all were recorded, for
        :meth:`_plan` to plan again, whichever users the run was given."""
        for request in row["requests"].values():
            self.dropped.setdefault(request["user"], set()).update(request["messages"])

    async def _read_short(
        self, row: dict[str, Any], batch_id: str, short: str, report: BulkReport
    ) -> None:
        """Count a short read of ``row``'s results (``short`` says how) and raise the
        :class:`ExtractionError` that keeps the batch for the next run; at the
        :data:`MAX_SHORT_READS`-th, return instead: the caller records what was read and
        drops the row, so the requests not read go back to the plan (``report.unread``)."""
        reads = await asyncio.to_thread(self._count_short_read, row["local_id"])
        if reads < MAX_SHORT_READS:
            raise ExtractionError(
                f"the results of Message Batch {batch_id} could not be read ({short}); the "
                f"next run collects them again (read short {reads} of {MAX_SHORT_READS} "
                "times before the batch is dropped)"
            )
        log.warning(
            "the results of Message Batch %s were read short %d times (%s): what was read "
            "is recorded, and the requests not read are planned again",
            batch_id,
            reads,
            short,
        )
        report.unread.append(batch_id)

    def _count_short_read(self, local_id: str) -> int:
        """Count one more short read of the kept row ``local_id``'s results, kept in each
        of its requests (older memvees ignore the key; no column to add); returns how many
        reads were short so far (1 when the row is gone: another run collected it). The
        row is read locked, as :meth:`_keep_failed_whole` reads it."""
        with self.store.transaction() as connection:
            requests = connection.execute(
                select(BULK_BATCHES.c.requests)
                .where(BULK_BATCHES.c.local_id == local_id)
                .with_for_update()
            ).scalar()
            if not requests:
                return 1
            reads = max(int(r.get(_SHORT_READS, 0)) for r in requests.values()) + 1
            counted = {k: {**r, _SHORT_READS: reads} for k, r in requests.items()}
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == local_id)
                .values(requests=counted)
            )
        return reads

    async def _ended_results(
        self, client: anthropic.AsyncAnthropic, batch_id: str, total: int, *, told: bool = True
    ) -> tuple[dict[str, Any], str | None]:
        """Poll a Message Batch until it ends, telling progress (``told``); then its
        results, and why they could not be read whole, if they could not (see
        :func:`_results`)."""
        while True:
            found = await self._retrieve(client, batch_id)
            counts = found.request_counts
            done = counts.succeeded + counts.errored + counts.canceled + counts.expired
            if told:
                self.progress(done, total)
            if found.processing_status == "ended":
                return await _results(client, batch_id, credentials_of(self.extractor))
            await asyncio.sleep(self.poll_interval)

    async def _created_for(
        self,
        client: anthropic.AsyncAnthropic,
        row: dict[str, Any],
        unread: list[str] | None = None,
    ) -> str | None:
        """The id of the Message Batch made of ``row``'s requests whose creation was never
        confirmed, if the API has one; ``None`` if it has none (or the row is an older
        memvee's, whose custom ids cannot tell its batch from another run's). A batch whose
        results are cut before their first line cannot be told: an ExtractionError, or,
        given ``unread``, it is passed over and listed there (for the caller to count as a
        short read of the row: :data:`MAX_SHORT_READS`).

        A batch tells its requests' custom ids only in its results, so each batch of the
        same size created since the row (give or take :data:`CLOCK_SLACK`) and kept by no
        other run is waited for, those created nearest the row first, and taken if its
        results are the row's requests (another application's batch of the same size on
        the account may be waited for before the run's own).
        """
        wanted = set(row["requests"])
        if not all(custom_id.endswith(f"-{row['local_id']}") for custom_id in wanted):
            return None
        began = aware(row["created_at"])
        kept = await asyncio.to_thread(self._kept_batch_ids)
        candidates: list[tuple[float, str]] = []
        async for batch in client.messages.batches.list(limit=100):
            if batch.created_at < began - CLOCK_SLACK:
                break  # listed newest first
            counts = batch.request_counts
            size = (
                counts.processing
                + counts.succeeded
                + counts.errored
                + counts.canceled
                + counts.expired
            )
            if size == len(wanted) and batch.id not in kept:
                candidates.append((abs((batch.created_at - began).total_seconds()), batch.id))
        for _, batch_id in sorted(candidates):  # created nearest the row: its own, most likely
            try:
                answers, cut = await self._ended_results(client, batch_id, len(wanted), told=False)
            except anthropic.NotFoundError:
                continue
            if cut is not None and not answers and unread is not None:
                unread.append(batch_id)
                continue
            if cut is not None and not answers:
                raise ExtractionError(
                    f"the results of Message Batch {batch_id} could not be read ({cut}), to "
                    "tell whether it holds a run's kept requests; the next run looks again"
                )
            if set(answers) & wanted:  # each custom id names the kept row: read short too
                log.info("found Message Batch %s, made of a run's kept requests", batch_id)
                return batch_id
        return None

    async def _refused_all(
        self, row: Any, answers: Mapping[str, Any], recorded_of: dict[str, set[str]]
    ) -> tuple[frozenset[str], dict[str, ProbeResult]]:
        """The reasons a Message Batch's requests were refused for that are the account's
        or the settings' (a credit balance too low, a model mistyped), not the requests':
        no request succeeded, and one refused so, sent again at once with a harmless
        message in place of its messages, is not accepted either (as the live path's
        probe tells it; accepted, the requests refused so are their messages' own). With
        what each probe spent, by the request it was sent for, to be counted in that
        request's failure. The request probed for a reason is the first not recorded yet
        (:meth:`_first_due`) whose messages are still stored: a reason whose requests are
        all recorded (the batch collected again) is neither probed nor billed again, and one
        whose requests due have no messages left is not probed either: their users were
        forgotten meanwhile, and their requests are dropped as such (:meth:`_record`)."""
        refused_all = set()
        probed: dict[str, ProbeResult] = {}
        for reason in _refused_for(answers):
            refused_so = (c for c, o in answers.items() if _refusal(o) == reason)
            target = await self._first_due(row, refused_so, recorded_of)
            if target is None:
                continue
            custom_id, batch = target
            probed[custom_id] = await self.extractor.probe(batch)
            if probed[custom_id].verdict != "accepted":
                refused_all.add(reason)
        return frozenset(refused_all), probed

    async def _model_refusal(
        self, row: Any, answers: Mapping[str, Any], recorded_of: dict[str, set[str]]
    ) -> tuple[str | None, dict[str, ProbeResult]]:
        """How the API answers a harmless request where the model refused requests of a
        Message Batch (a succeeded answer, ``stop_reason`` "refusal"), one probe a Message
        Batch, as the live path's (:meth:`ClaudeExtractor.probe`): the first request
        refused so, its messages replaced by a harmless one and no known entries shown.
        "accepted": the refusals are the requests' own; "refused": the model refuses every
        request (its policy or the settings), no message is blamed; "failed": it tells
        nothing, so the refusals are the requests' own, as before the probe (see
        :func:`_refusal_told`). ``None``: the model refused no request not recorded yet
        whose messages are still stored (:meth:`_first_due`: one collected again is neither
        probed nor billed again; one whose user was forgotten meanwhile is dropped as such,
        :meth:`_record`). The request probed is the first due whose messages are still
        stored. With what the probe spent, by the request it was sent for, to be counted in
        that request's failure."""
        refused = sorted((c for c, o in answers.items() if _model_refused(o)), key=_order)
        target = await self._first_due(row, refused, recorded_of)
        if target is None:
            return None, {}
        custom_id, batch = target
        probed = await self.extractor.probe(replace(batch, known=()))
        verdict, spent = probed.verdict, probed.usage
        log.info(
            "the model refused %d requests of Message Batch %s; a harmless request in %s's "
            "place was %s (%d tokens)",
            len(refused),
            row["api_batch_id"],
            custom_id,
            verdict,
            (spent.input_tokens or 0) + (spent.output_tokens or 0),
        )
        return verdict, {custom_id: probed}

    async def _first_due(
        self, row: Any, custom_ids: Iterable[str], recorded_of: dict[str, set[str]]
    ) -> tuple[str, ExtractionBatch] | None:
        """The first of ``custom_ids`` (requests of ``row``) that is due (its user's log has
        not recorded it yet) and whose messages are still stored, with the batch it was made
        of (``None``: none is, or those due are of users forgotten meanwhile): a Message Batch
        collected again once its requests were recorded (a run stopped before clearing its
        kept row) probes none of them again, nor bills their probes, and a probe is never
        sent for messages that are gone (its verdict would blame the requests of others
        unasked). ``recorded_of`` keeps each user's recorded request ids once read, so a
        batch with no refusal reads no log for it."""
        for custom_id in custom_ids:
            request = row["requests"].get(custom_id)
            if request is None:  # not one of the row's requests: nothing of it is recorded
                continue
            user_id = request["user"]
            if user_id not in recorded_of:
                recorded_of[user_id] = await asyncio.to_thread(self._recorded, user_id)
            if f"{row['api_batch_id']}:{custom_id}" in recorded_of[user_id]:
                continue
            batch = await asyncio.to_thread(self._batch, custom_id, request)
            if batch.messages:
                return custom_id, batch
        return None

    async def _retrieve(self, client: anthropic.AsyncAnthropic, batch_id: str) -> Any:
        """The Message Batch as the API sees it now; transient failures (overloaded, 5xx,
        no connection) are ridden out, backing off, for up to :data:`MAX_POLL_OUTAGE` seconds."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        pause = self.poll_interval
        while True:
            try:
                return await client.messages.batches.retrieve(batch_id)
            except anthropic.AnthropicError as error:
                if not _transient(error) or loop.time() - began >= MAX_POLL_OUTAGE:
                    raise
                shown = api_error(error, credentials_of(self.extractor))
                log.warning("polling Message Batch %s failed (%s); trying again", batch_id, shown)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)

    def _record(
        self,
        custom_id: str,
        request: dict[str, Any],
        outcome: Any,
        request_id: str,
        refused_all: frozenset[str],
        blamable: bool,
        model_refusal: str | None = None,
        probed: ProbeResult | None = None,
    ) -> int | ExtractionError | None:
        """Record one request's answer; returns the entries added, how it failed, or
        ``None`` when its user's log has it recorded already; raises ``NotFoundError`` when
        the user was forgotten while the batch ran, whether it succeeded or failed (nothing
        is left to retry). ``refused_all``: the reasons the API refused every request of the
        Message Batch for (see :func:`_refused_all`);
        ``blamable``: whether a server error of a request is evidence against its messages
        (see :func:`_blamable`); ``model_refusal``: how a harmless request fared where the
        model refused requests of the Message Batch (see :meth:`_model_refusal`);
        ``probed``: how a probe sent for this request's refusal fared and what it spent,
        counted in its failure (a probed request is one that failed), or on its own when
        that failure is not kept (:meth:`_keep_probe_alone`)."""
        if outcome.type != "succeeded":
            failure = _failure(outcome, credentials_of(self.extractor), refused_all)
            failure.usage = _with_probe(failure.usage, probed)
            blamed = blamable and _server_error(outcome)
            self._keep_failure(request, failure, request_id, probed, blamed=blamed)
            return failure
        batch = self._batch(custom_id, request)
        try:
            result = self.extractor.read_answer(
                batch, outcome.message, budget=self.extractor.max_tokens
            )
        except ExtractionError as read:
            error = _refusal_told(read, outcome, model_refusal)
            error.usage = _with_probe(error.usage, probed)
            self._keep_failure(request, error, request_id, probed)
            return error
        current = self._known(batch.user_id)
        texts = {e.text.casefold(): e.entry_id for e in current}
        facts = [_same_if_known(f, texts) for f in result.facts]
        known, replaced = self._placed(batch, current, facts)

        def record(user_log: UserLog) -> int | None:
            if user_log.recorded_request(request_id):
                return None  # recorded meanwhile, by another run collecting the same batch
            return len(
                user_log.record_reextraction(
                    self.version,
                    list(request["messages"]),
                    facts,
                    result.extractor,
                    result.model,
                    result.usage,
                    batch=batch.messages,
                    request_id=request_id,
                    known=known,
                    replaced=replaced,
                    since=self._since(batch.user_id, request.get("at"), user_log.version),
                )
            )

        try:
            count: int | None = self.decide(batch.user_id, record, list(request["messages"]))
        except AlreadyReextractedError as meanwhile:  # another run recorded them first
            log.warning("request %s not recorded: %s", request_id, meanwhile)
            return None
        return count

    def _keep_failure(
        self,
        request: dict[str, Any],
        error: ExtractionError,
        request_id: str,
        probed: ProbeResult | None,
        *,
        blamed: bool = False,
    ) -> None:
        """Keep a failed request in its user's log (:meth:`_record_failure`), and the probe
        sent for it on its own when that failure is not kept (:meth:`_keep_probe_alone`).
        Raises ``NotFoundError`` when it was not kept because the user was forgotten
        meanwhile: :meth:`_finish` drops it as a forgotten user's request (nothing to
        retry), as it drops one that succeeded."""
        if self._record_failure(request, error, request_id, blamed=blamed):
            return
        if self._gone(request):
            raise NotFoundError(
                f"the messages of user {request['user']!r} this request was drawn from were "
                "forgotten"
            )
        self._keep_probe_alone(request["user"], probed)

    def _keep_probe_alone(self, user_id: str, probed: ProbeResult | None) -> None:
        """Keep what a probe spent in ``user_id``'s log on its own, as a check naming no
        failed call (:func:`memvee.audit.record_check`), when the failure of the request it
        was sent for, which counts it, was not kept (another run recorded the request
        first): billed, it shows in ``memvee stats`` either way, and ``memvee log`` tells
        how it fared (:func:`_probe_verdict`)."""
        from memvee.audit import record_check  # imports this module lazily

        if probed is None:
            return
        told = _probe_verdict(probed, credentials_of(self.extractor))
        record_check(self.decide, user_id, self.version, (), probed.usage, told, self.extractor)

    def _gone(self, request: dict[str, Any]) -> bool:
        """Whether some of ``request``'s messages are no longer stored: its user was
        forgotten meanwhile (a forget erases every message of the user). Not while the
        projections are being rebuilt (or a rebuild stopped midway): rows not refolded
        yet are missing, and say nothing of a forget (as the log's own check has it)."""
        with self.store.engine.connect() as connection:
            if Projector(ProjectionTables()).state(connection).rebuilding:
                return False
            found = self.reader.messages(connection, request["user"], ids=list(request["messages"]))
        return len(found) < len(set(request["messages"]))

    def _since(self, user_id: str, planned_at: int | None, upto: int) -> list[Any]:
        """The user's events since a request was planned (none known for an older
        memvee's request: only its request id is checked)."""
        if planned_at is None:
            return []
        return list(self.store.events_of(user_id, after=planned_at, upto=upto))

    def _record_failure(
        self,
        request: dict[str, Any],
        error: ExtractionError,
        request_id: str | None,
        *,
        blamed: bool = False,
    ) -> bool:
        """Keep a failed request in its user's log (what it was billed, and whether it
        failed of its own in a way that repeats, or is ``blamed`` for a server error a
        second time: then the next run sends its messages one a request); kept once however
        many runs collect it. Returns whether this call kept it."""
        return self.record_failure(
            request["user"],
            self.version,
            list(request["messages"]),
            error,
            self.extractor,
            error.repeats,
            text=str(error),
            request_id=request_id,
            blamed=blamed,
        )

    def _fails_alone(self, request: dict[str, Any]) -> bool:
        """Whether the one message of a request that failed of its own is left out of the
        version: its failures pin it to a request of its own (as its user's log tells,
        :meth:`UserLog.failed_reextraction`: one that repeats, or a server error twice)."""
        if len(request["messages"]) != 1:
            return False
        user_log = self.store.load(request["user"])
        if user_log is None:
            return False
        events = self.store.events_of(request["user"], upto=user_log.version)
        return request["messages"][0] in user_log.failed_reextraction(self.version, events)

    def _batch(self, custom_id: str, request: dict[str, Any]) -> ExtractionBatch:
        """The batch a request was made of, read back from the log and the projections."""
        user_id = request["user"]
        with self.store.engine.connect() as connection:
            messages = self.reader.messages(connection, user_id, ids=list(request["messages"]))
            entries = self.reader.entries(connection, user_id, list(request["known"]))
        order = {entry_id: i for i, entry_id in enumerate(request["known"])}
        known = sorted(entries, key=lambda e: order[e.entry_id])
        return ExtractionBatch(
            user_id,
            f"bulk:{self.version}:{custom_id}",
            tuple(BatchMessage.of(m) for m in messages),
            tuple(KnownEntry(e.entry_id, e.text, e.valid_from, e.valid_until) for e in known),
        )

    def _known(self, user_id: str) -> list[Any]:
        """The version's current entries of the user (those a request may repeat)."""
        with self.store.engine.connect() as connection:
            return self.reader.knowledge(connection, user_id, self.version)

    def _placed(
        self, batch: ExtractionBatch, current: list[Any], facts: list[ExtractedFact]
    ) -> tuple[tuple[KnownEntry, ...], tuple[ReplacedEntry, ...]]:
        """What the log needs to place ``facts`` in the version, as the synchronous path
        gives it: the entries the request was shown, those it would be shown now (earlier
        requests of the run may have ended some), the version's current ones (a request may
        repeat one it was not shown), and the chains of ended entries before them and
        before the targets of facts."""
        # No messages: the user was forgotten meanwhile, which the decision is refused for.
        now, chains = (
            self.shown(batch.user_id, list(batch.messages)) if batch.messages else ((), ())
        )
        known = {k.entry_id: k for k in batch.known}
        for k in now:
            known.setdefault(k.entry_id, k)
        for e in current:
            known.setdefault(e.entry_id, KnownEntry(e.entry_id, e.text, e.valid_from))
        with self.store.engine.connect() as connection:
            return with_targets(
                connection,
                self.reader,
                batch.user_id,
                facts,
                (tuple(known.values()), tuple(chains)),
                self.version,
            )

    def _recorded(self, user_id: str) -> set[str]:
        """The request ids already recorded in the user's log."""
        user_log = self.store.load(user_id)
        return set() if user_log is None else set(user_log.reextraction_requests)

    # ------------------------------------------------------------------ the table

    def _create_table(self) -> None:
        """Create the table unless it is there; another run creating it at once is fine."""
        try:
            with self.store.transaction() as connection:
                create_bulk_table(connection)
        except DBAPIError:
            with self.store.engine.connect() as connection:
                if not inspect(connection).has_table(BULK_BATCHES.name):
                    raise

    def _unfinished(self) -> list[dict[str, Any]]:
        """The version's kept Message Batches, oldest first (claims and probes left aside)."""
        with self.store.engine.connect() as connection:
            return [r for r in self._rows(connection) if _requests(r)]

    def _keep_probe(self, batch_id: str) -> None:
        """Keep the id of a probe Message Batch until it is canceled."""
        row = {
            "local_id": str(uuid4()),
            "knowledge_version": _PROBES,
            "api_batch_id": batch_id,
            "requests": {_PROBE: {}},
            "created_at": datetime.now(UTC),
        }
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.insert(), row)

    def _kept_probes(self) -> list[str]:
        """The ids of the probe Message Batches kept by runs of any version, not canceled."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(BULK_BATCHES.c.api_batch_id, BULK_BATCHES.c.requests).where(
                    BULK_BATCHES.c.knowledge_version == _PROBES
                )
            ).all()
        return [batch_id for batch_id, requests in rows if _PROBE in requests and batch_id]

    def _forget_probe(self, batch_id: str) -> None:
        """Forget the kept probe Message Batch ``batch_id`` (canceled, or over)."""
        with self.store.transaction() as connection:
            rows = connection.execute(
                select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests).where(
                    BULK_BATCHES.c.api_batch_id == batch_id
                )
            ).all()
            probes = [local_id for local_id, requests in rows if _PROBE in requests]
            connection.execute(BULK_BATCHES.delete().where(BULK_BATCHES.c.local_id.in_(probes)))

    def _rows(self, connection: Connection) -> list[dict[str, Any]]:
        rows = connection.execute(
            select(BULK_BATCHES)
            .where(BULK_BATCHES.c.knowledge_version == self.version)
            .order_by(BULK_BATCHES.c.created_at)
        ).mappings()
        return [dict(r) for r in rows]

    def _kept_for(self, connection: Connection, user_id: str) -> set[str]:
        """The messages of ``user_id`` the version's kept Message Batches hold, as
        ``connection``'s transaction sees them: every batch kept before it, one a run that
        ended a moment ago kept too, and none marked failed whole since (those are noted
        in :attr:`failed_whole`, for the claim to take the user's requests out of them).

        The ids of the kept rows are read each time (claims left aside by their key,
        without decoding them); the requests only of a row not read before (:attr:`_kept`),
        or of one read before as holding the user's messages whose stamp (``created_at``)
        moved since. So a run of thousands of users decodes each kept row once, and again
        only once it changed in place where the claim looks. A change in place that takes
        messages out of what a claim reads as held (a mark of failed whole, a ``forget``)
        moves the row's stamp (:func:`restamped`); none puts messages in (a batch is kept as
        a new row), so a row read before as holding none of the user's holds none now. A run
        taking a user's failed-whole requests out moves no stamp: the claim reads those
        again, locked, before it takes them (:meth:`_take_failed_whole`). Only the stamps
        of rows holding the user are read: on SQLite, a column after a row's requests is
        reached through all their pages."""
        ids = set(
            connection.execute(
                select(BULK_BATCHES.c.local_id).where(
                    BULK_BATCHES.c.knowledge_version == self.version,
                    or_(
                        BULK_BATCHES.c.api_batch_id.is_not(None),
                        func.substr(BULK_BATCHES.c.local_id, 15, 1) != _CLAIM_ID_VERSION,
                    ),
                )
            ).scalars()
        )
        for gone in self._kept.keys() - ids:
            del self._kept[gone]
        holding = sorted(i for i, row in self._kept.items() if user_id in row.messages)
        if holding:
            moved = connection.execute(
                select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.created_at).where(
                    BULK_BATCHES.c.local_id.in_(holding)
                )
            ).all()
            for local_id, stamp in moved:
                if stamp != self._kept[local_id].stamp:
                    del self._kept[local_id]
        unread = sorted(ids - self._kept.keys())
        if unread:
            for local_id, requests, stamp in connection.execute(
                select(
                    BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests, BULK_BATCHES.c.created_at
                ).where(BULK_BATCHES.c.local_id.in_(unread))
            ).all():
                self._kept[local_id] = _KeptRow.of(requests, stamp)
        for local_id, row in self._kept.items():
            if user_id in row.failed_whole:
                self.failed_whole.setdefault(user_id, set()).add(local_id)
        return set().union(*(row.messages.get(user_id, set()) for row in self._kept.values()))

    def _claim(self, user_id: str) -> set[str] | None:
        """Claim the user's plan for this run, in the transaction that reads the kept
        Message Batches; returns the messages they hold (not to plan again), or ``None``
        when another run holds the user (its claim not :func:`_abandoned`).

        The claim locks one row, the user's claim row (read locked, or inserted), and
        commits; only then are the user's requests taken out of the kept rows that failed
        whole, in a transaction of their own that locks them by id
        (:meth:`_take_failed_whole`). Neither holds the claim row while it waits for a kept
        row, nor a kept row while it waits for the claim row, so the claim waits in no
        circle with a ``forget`` of the user, whichever it locks first: the claim rows
        (:func:`projections.bulk_runs.forget_bulk_requests`) or the lowest id (an older
        memvee's). A claim that waited for a forget finds the claim row gone, and claims
        the user afresh."""
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
                pending = self._kept_for(connection, user_id)
        except IntegrityError:  # another run inserted the same claim first
            return None
        except SQLAlchemyError as error:
            raise self._claim_failure(user_id, error) from error
        self.claimed_by[claim_id] = user_id
        self.claims.append(claim_id)
        try:
            if self.failed_whole.get(user_id):
                with self.store.transaction() as connection:
                    self._take_failed_whole(connection, user_id)
        except SQLAlchemyError as error:
            raise self._claim_failure(user_id, error) from error
        return pending

    def _claim_failure(self, user_id: str, error: SQLAlchemyError) -> StorageError:
        """The :class:`StorageError` of a claim of ``user_id`` the database failed."""
        return StorageError(
            f"could not claim user {user_id!r} for the bulk re-extraction into "
            f"{self.version!r} in {self.store.safe_url}: {first_line(error)}"
        )

    def _held_elsewhere(self, row: dict[str, Any]) -> bool:
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

    async def _keep_claims(self) -> None:
        """Renew this run's claims every :data:`CLAIM_RENEW` seconds while it runs."""
        while True:
            await asyncio.sleep(CLAIM_RENEW)
            try:
                await asyncio.to_thread(self._renew_claims)
            except Exception as error:  # the run itself meets a lasting failure
                log.warning("renewing the bulk run's claims failed (%s)", first_line(error))

    def _renew_claims(self) -> None:
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

    def _insert_held(self, row: dict[str, Any]) -> None:
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

    def _release_claim(self, user_id: str) -> None:
        """Release this run's claim on ``user_id``'s plan (the user has nothing to plan)."""
        claim_id = _claim_id(self.version, user_id)
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(*self._own_claims([claim_id])))
        if claim_id in self.claims:  # not lost meanwhile
            self.claims.remove(claim_id)

    def _release_claims(self) -> None:
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(*self._own_claims()))

    def _own_claims(self, claims: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Which rows are this run's claims (``claims``, or all) still its own (not taken
        over after they went stale)."""
        owner = BULK_BATCHES.c.requests[(_CLAIM, "owner")].as_string()
        ids = list(self.claims if claims is None else claims)
        return (BULK_BATCHES.c.local_id.in_(ids), owner == self.owner)

    def _set_batch_id(self, local_id: str, batch_id: str) -> None:
        with self.store.transaction() as connection:
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == local_id)
                .values(api_batch_id=batch_id)
            )

    def _kept_batch_ids(self) -> set[str]:
        """The ids of the Message Batches every kept run (of any version) is waiting for."""
        with self.store.engine.connect() as connection:
            found = connection.execute(
                select(BULK_BATCHES.c.api_batch_id).where(BULK_BATCHES.c.api_batch_id.is_not(None))
            )
            return {batch_id for (batch_id,) in found}

    def _delete(self, local_id: str) -> None:
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(BULK_BATCHES.c.local_id == local_id))


_RUNNING: set[str] = set()
"""The owners of the bulk runs under way in this process: a claim this process made is
held only while its run is (one whose release failed is not held by the process alone)."""

_SHORT_READS = "short_reads"
"""The key of a kept request that counts its batch's short reads (see :data:`MAX_SHORT_READS`)."""

_FAILING = "failing"
"""The key of a kept request that counts the Message Batches of its messages that failed
whole with server errors in a row before (:attr:`_Planned.failing`); older memvees ignore
it."""

_FAILED_WHOLE = "failed_whole"
"""The key of a kept request whose Message Batch failed whole with server errors: the next
run plans its messages again instead of collecting it (an older memvee collects it again,
blames nothing and plans them again too)."""

_DIRECT_TRIED = "direct_tried"
"""The key of a kept request that notes when the Messages API fallback last sent its
user's messages (ISO 8601, the database's clock, noted before the first call:
:meth:`BulkReextraction._note_tried`); :meth:`BulkReextraction._plan` puts users least lately
tried first. A request without it (of a user never tried, or one an older memvee planned
again: it rebuilds requests from its own fields, dropping the note) goes first."""

_PROBE = "probe"
"""The key of a probe row's one entry: a probe Message Batch not canceled yet, not a
request (:meth:`BulkReextraction._probe_batches`)."""

_PROBES = " probe Message Batches "
"""The ``knowledge_version`` of probe rows: no version can be named so (spaces around),
so a run of any version, an older memvee's too, never takes one for its kept batches."""


def _requests(row: Mapping[str, Any]) -> bool:
    """Whether a kept row holds requests of a Message Batch (not a claim, nor a probe)."""
    return _CLAIM not in row["requests"] and _PROBE not in row["requests"]


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


def _order(custom_id: str) -> int:
    """A request's place in its run: ``r12`` (an older memvee's) and ``r12-<run>`` are 12th."""
    return int(custom_id[1:].split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class _KeptRow:
    """What a claim needs of one kept row, decoded: the messages its requests hold by
    user, the users of its requests that failed whole (planned again:
    :meth:`BulkReextraction._take_failed_whole`), and the row's stamp as it was read."""

    messages: dict[str, set[str]]
    failed_whole: frozenset[str]
    stamp: Any

    @classmethod
    def of(cls, requests: Mapping[str, Any], stamp: Any) -> _KeptRow:
        """A kept row's ``requests``, decoded; none of a claim or a probe."""
        messages: dict[str, set[str]] = {}
        failed_whole: set[str] = set()
        if _requests({"requests": requests}):
            for request in requests.values():
                if request.get(_FAILED_WHOLE):
                    failed_whole.add(request["user"])
                else:
                    messages.setdefault(request["user"], set()).update(request["messages"])
        return cls(messages, frozenset(failed_whole), stamp)


async def _results(
    client: anthropic.AsyncAnthropic, batch_id: str, secrets: Sequence[str]
) -> tuple[dict[str, Any], str | None]:
    """Each request's result of an ended Message Batch, by ``custom_id``, and what cut the
    download short (a connection cut, a line that is not JSON, told without ``secrets``), if
    anything did: the lines read before it are kept."""
    answers: dict[str, Any] = {}
    try:
        async for result in await client.messages.batches.results(batch_id):
            answers[result.custom_id] = result.result
    except (httpx2.TransportError, ValueError) as error:  # the SDK's own httpx
        return answers, redact(f"{type(error).__name__}: {first_line(error)}", secrets)
    return answers, None


def _short_read(answers: Mapping[str, Any], requests: Mapping[str, Any], total: int) -> str | None:
    """Why ``answers`` read whole are short of the kept ``requests`` (an empty file, one cut
    at a line's end), or ``None``: the API gives every request of a batch a result."""
    missing = len(set(requests) - set(answers))
    if not missing:
        return None
    return f"{missing} of its {total} requests have no result in the download"


def _transient(error: anthropic.AnthropicError) -> bool:
    """Whether a failed API call may well succeed a moment later: overloaded, rate
    limited, a server error or no connection."""
    if isinstance(error, anthropic.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return isinstance(error, anthropic.APIConnectionError)


def _key_refused(error: anthropic.AnthropicError) -> bool:
    """Whether the API refused the call's API key or its permissions (401, 403): the call
    did nothing, whatever it asked for."""
    return isinstance(error, anthropic.APIStatusError) and error.status_code in (401, 403)


def _maybe_created(error: anthropic.AnthropicError) -> bool:
    """Whether a failed create call may have made its Message Batch all the same: no
    answer came (a connection lost, a timeout), or a server error other than overloaded
    (529, which turns a call away before it does anything) came instead of it."""
    if isinstance(error, anthropic.APIStatusError):
        return error.status_code >= 500 and error.status_code != 529
    return isinstance(error, anthropic.APIConnectionError)


def _refusal(outcome: Any) -> str | None:
    """Why the API refused a request as invalid (``invalid_request_error``), if it did."""
    if getattr(outcome, "type", None) != "errored":
        return None
    detail = getattr(getattr(outcome, "error", None), "error", None)
    if getattr(detail, "type", None) != "invalid_request_error":
        return None
    return str(getattr(detail, "message", "") or "invalid_request_error")


def _refused_for(outcomes: Mapping[str, Any]) -> dict[str, str]:
    """When no request of a Message Batch succeeded: each reason its requests were
    refused as invalid for, with one request refused so (the account's or the settings'
    refusal, or each request's own, which a probe tells)."""
    if any(getattr(o, "type", None) == "succeeded" for o in outcomes.values()):
        return {}
    refused: dict[str, str] = {}
    for custom_id, outcome in outcomes.items():
        reason = _refusal(outcome)
        if reason is not None:
            refused.setdefault(reason, custom_id)
    return refused


def _model_refused(outcome: Any) -> bool:
    """Whether a request of a Message Batch succeeded with the model's refusal to answer
    (``stop_reason`` "refusal")."""
    if getattr(outcome, "type", None) != "succeeded":
        return False
    return getattr(getattr(outcome, "message", None), "stop_reason", None) == "refusal"


def _refusal_told(error: ExtractionError, outcome: Any, verdict: str | None) -> ExtractionError:
    """The failure of a request whose answer could not be read (``error``): a model's
    refusal blames no message only when a harmless request in its place was refused too
    (``verdict``, see :meth:`BulkReextraction._model_refusal`): the model refuses every
    request, a failure that may pass, whose messages are planned again next run. Answered,
    or failed (it tells nothing), the refusal is the request's own, split and, alone, left
    out: kept unblamed while its probes fail, such a request was sent again, billed, every
    run, its other messages never recorded."""
    if verdict != "refused" or not _model_refused(outcome):
        return error
    return EveryRequestRefusedError(
        f"{error} (a harmless request was refused too: the model refuses every request "
        "(its policy or the settings), not the request; retried later, no message blamed)",
        usage=error.usage,
    )


def _probe_verdict(probed: ProbeResult, secrets: Sequence[str]) -> CheckVerdict:
    """How a probe kept on its own fared, as its check tells it (without ``secrets``):
    answered, or refused too or failed, and how, which tells nothing of the calls (it judges
    none)."""
    if probed.verdict == "refused":
        return FailedTellingNothing("a probe of a refusal was refused too")
    if probed.verdict == "failed":
        how = redact(probed.error, secrets) if probed.error else "no error told"
        return FailedTellingNothing(f"a probe of a refusal failed too: {how}")
    return Answered()


def _with_probe(usage: TokenUsage | None, probed: ProbeResult | None) -> TokenUsage | None:
    """A failed request's ``usage`` with what the probe of its refusal spent (``probed``),
    as the live path counts its probes' tokens as the batch's."""
    if probed is None:
        return usage
    return (usage or TokenUsage()).plus(probed.usage)


def _server_error(outcome: Any) -> bool:
    """Whether a request came back ``errored`` with a server error (``api_error``)."""
    if getattr(outcome, "type", None) != "errored":
        return False
    detail = getattr(getattr(outcome, "error", None), "error", None)
    return getattr(detail, "type", None) == "api_error"


def _blamable(outcomes: Mapping[str, Any]) -> bool:
    """Whether a server error of a request of a Message Batch is evidence against its
    messages: not when every request read came back so, however few (an outage of the API,
    or of Message Batches alone, cannot be told from requests that fail every time: the
    second time, their messages go through the Messages API, whose rules tell). A message
    blamed twice goes alone next run (:meth:`UserLog.failed_reextraction`), so one such
    error on first sight pins nothing."""
    return not all(_server_error(o) for o in outcomes.values())


def _stop_tells_api_down(stopped: MemveeError, live: ReextractionReport) -> bool:
    """Whether a user's live re-extraction that ``stopped`` tells the Messages API is
    down, for every user: the harmless request sent after its two failures in a row
    failed too (an :class:`events.Outage`), or it stopped on the API's state (overloaded, every
    batch refused, a probe that failed or was refused too: :data:`actors.THE_APIS_STATE`).
    A harmless request answered, or a lone message failing once with nothing else to
    send, tells only of that user's messages; one whose credentials were refused
    (:class:`events.CredentialsRefused`) tells no outage, though it ends the fallback all
    the same (:meth:`BulkReextraction._every_user_stopped`)."""
    if live.check is not None:
        return isinstance(live.check.verdict, Outage)
    return not _lone(stopped) or isinstance(stopped, THE_APIS_STATE)


def _fallback_key_refused(stopped: MemveeError, refusal: str) -> EveryRequestRefusedError:
    """The error that ends the Messages API fallback for every user once a harmless
    request's credentials were refused (``refusal``) after ``stopped``."""
    log.warning(
        "a harmless request's credentials were refused (%s): the API key or its permissions "
        "are refused for every request; no other user's messages are sent through the "
        "Messages API this run",
        refusal,
    )
    return EveryRequestRefusedError(
        f"{first_line(stopped)} (a harmless request's credentials were refused too "
        f"({refusal}): the API key or its permissions are refused for every request; no "
        "other user's messages are sent through the Messages API this run)"
    )


def _lone(stopped: MemveeError) -> bool:
    """Whether a live re-extraction ``stopped`` on a call failing in a way that may pass
    with nothing else to send (a lone message), which tells nothing of the API at large."""
    return isinstance(stopped, ExtractionError) and not stopped.repeats


def _why_left_out(events: Iterable[Any], version: str, left_out: Collection[str]) -> dict[str, str]:
    """Why each of the ``left_out`` messages was left out of ``version``: the error of the
    last failed call of it alone, read off the user's ``events``."""
    why: dict[str, str] = {}
    for e in events:
        if (
            isinstance(e, UserLog.ReextractionFailed)
            and e.knowledge_version == version
            and len(e.message_ids) == 1
            and e.message_ids[0] in left_out
        ):
            why[e.message_ids[0]] = f"left out by an earlier run, not sent again: {e.error}"
    return why


def _since_promoted(
    failing: Mapping[str, Sequence[tuple[int, int | None]]], events: Iterable[Any], version: str
) -> dict[str, int]:
    """The largest failing count (:attr:`BulkReextraction.failing`) of each message among
    its requests planned since ``version`` was last promoted in the user's ``events``: a
    count from before belongs to the version promoted, as the log's own evidence of failed
    calls does (:meth:`UserLog.failed_reextraction`), not to the new one of the same name."""
    promoted = max(
        (
            e.originator_version
            for e in events
            if isinstance(e, UserLog.KnowledgeVersionPromoted) and e.knowledge_version == version
        ),
        default=0,
    )
    return {
        m: max((count for count, at in counts if at is None or at >= promoted), default=0)
        for m, counts in failing.items()
    }


_NEVER_TRIED = datetime.min.replace(tzinfo=UTC)
"""Where a user the fallback never tried stands in its order: before any other."""


def _last_tried(stamp: object, user_id: str) -> datetime:
    """When a kept request's :data:`_DIRECT_TRIED` says the fallback last tried its user
    ``user_id``, to order users by (one never tried, before any). A note that is no ISO
    8601 time (edited by hand, a number) counts as never tried, with a warning, rather
    than failing every bulk run's claim of the user."""
    if stamp is None:
        return _NEVER_TRIED
    try:
        if not isinstance(stamp, str):
            raise TypeError(f"a {type(stamp).__name__}, not ISO 8601 text")
        return aware(datetime.fromisoformat(stamp))
    except (TypeError, ValueError) as unreadable:
        log.warning(
            "user %r: a kept bulk request's %s note %r cannot be read (%s); the user counts "
            "as never tried by the Messages API fallback",
            user_id,
            _DIRECT_TRIED,
            stamp,
            unreadable,
        )
        return _NEVER_TRIED


def _failed_whole(row: Mapping[str, Any]) -> bool:
    """Whether a kept row's Message Batch failed whole with server errors (see
    :data:`_FAILED_WHOLE`)."""
    return any(r.get(_FAILED_WHOLE) for r in row["requests"].values())


def _failure(outcome: Any, secrets: Sequence[str], refused_all: frozenset[str]) -> ExtractionError:
    """The error of a request that did not succeed: one the API refused as invalid (too
    long, malformed) repeats, unless its reason is one of ``refused_all`` (the API
    refused every request so: retried later, no message blamed); an expired, canceled or
    errored one (overloaded, a server error) may pass."""
    detail = getattr(getattr(outcome, "error", None), "error", None)
    text = redact(f"{outcome.type}: {getattr(detail, 'message', '') or outcome.type}", secrets)
    reason = _refusal(outcome)
    if reason is not None and reason not in refused_all:
        return RejectedBatchError(text, reason=reason)
    if reason is not None:
        text += " (the API refused every request so; retried later, no message blamed)"
    return ExtractionError(text)


def _refused_whatever_size(why: str, verdict: str) -> ExtractionError:
    """The error that stops a run whose lone message was refused as too large (``why``)
    while it weighs no more than the fixed prompt around it (``verdict`` "outweighed": a
    Message Batch is refused by a limit of its own), or a Message Batch of the request
    without it was not accepted either: the message is not blamed,
    and the run may be made again later."""
    if verdict == "outweighed":
        return ExtractionError(
            f"{why} (the message weighs no more than the fixed prompt of its request: the "
            "API or a gateway in front of it refuses requests of any size, not the message; "
            "nothing is left out, run again later)"
        )
    if verdict == "refused":
        return ExtractionError(
            f"{why} (a request without the message is refused too: the API or a gateway "
            "in front of it refuses requests of any size, not the message; nothing is "
            "left out, run again later)"
        )
    return ProbeFailedError(
        f"{why} (a request probing whose fault it is failed too; nothing is left out, "
        "run again later)"
    )


def _same_if_known(fact: ExtractedFact, current: dict[str, str]) -> ExtractedFact:
    """A "new" fact whose text is already a current entry of the version repeats it.

    Requests of one bulk run cannot see each other's entries, so the same fact may come
    back from several of them; it is recorded once.
    """
    target = current.get(fact.text.casefold()) if fact.action == "new" else None
    if target is None:
        return fact
    return ExtractedFact(fact.text, fact.source_message_ids, "same", target)
