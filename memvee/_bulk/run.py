"""The bulk run itself (:class:`BulkReextraction`): it plans the messages a knowledge
version does not cover yet into requests, submits them as Message Batches, polls them and
records each result in its user's log, with its claims, kept rows, recorder, probes and
fallback as collaborators."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import uuid4

import anthropic
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request
from sqlalchemy import Connection, select, union_all
from sqlalchemy.exc import SQLAlchemyError

from actors._request_size import LearnedRequestSize
from events import (
    BatchLimits,
    BatchMessage,
    EventStore,
    ExtractionBatch,
    ExtractionError,
    InvalidInputError,
    KnownEntry,
    NotFoundError,
    RejectedBatchError,
    StorageError,
    UserLog,
    bounded,
    estimate_tokens,
)
from events.errors import ExtractorNotFoundError, first_line
from memvee._bulk.claims import (
    _CLAIM_ID_VERSION,
    _RUNNING,
    CLAIM_TTL,
    Claims,
    _claim_id,
)
from memvee._bulk.fallback import Direct, DirectFallback
from memvee._bulk.kept import (
    _DIRECT_TRIED,
    _FAILED_WHOLE,
    _FAILING,
    MAX_SHORT_READS,
    KeptBatches,
    _failed_whole,
    _KeptRow,
    _last_tried,
    _order,
    _Planned,
)
from memvee._bulk.outcomes import (
    _batches_not_found,
    _blamable,
    _maybe_created,
    _model_refused,
    _refusal,
    _refused_for,
    _results,
    _server_error,
    _short_read,
    _transient,
    split_again,
)
from memvee._bulk.probes import Probes, _refused_whatever_size
from memvee._bulk.record import Recorder
from memvee._bulk.report import BulkReport
from memvee._secrets import credentials_of, redact
from memvee.extractors import ClaudeExtractor
from memvee.extractors._claude import (
    ProbeResult,
    api_error,
    outweighed,
    weigh_over_the_window,
)
from projections import ProjectionReader
from projections.bulk_runs import BULK_BATCHES, ID_VERSION
from projections.reader import aware

log = logging.getLogger("memvee.bulk")

_FORGOTTEN_BEFORE_SENT = "its user was forgotten before its messages were sent again"
"""How a request refused for its size is told when its user was forgotten before its
messages went again (``BulkReport.forgotten``)."""

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

_CREATE_ATTEMPTS = 3
"""Calls that create one Message Batch, at most, when the API refuses it for a while."""

_CREATE_PAUSE = 1.0
"""Seconds before the second call that creates a Message Batch (doubled for the third)."""


Decide = Callable[[str, Callable[[UserLog], Any], Sequence[str]], Any]
"""Decides on a user's freshly loaded log and appends what it emitted (Audit's), refused
with :class:`NotFoundError` once a message it was drawn from (the third argument) is gone."""

Shown = Callable[[str, list[BatchMessage]], tuple[tuple[KnownEntry, ...], Any]]
"""The version's entries a batch of a user's messages is shown, as live extraction and
synchronous re-extraction show them (Audit's), and the chains of ended entries before."""

Progress = Callable[[int, int], None]
"""Told (requests done, requests in all) while a Message Batch is processed."""

RecordFailure = Callable[..., bool]
"""Keeps a failed re-extraction call in its user's log, what it cost and whether it
failed of its own in a way that repeats (Audit's ``_record_failure``: user, version,
message ids, the error, the extractor, whether it failed alone, and the error's ``text``
and the ``request_id`` by name); returns whether it was kept."""


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
        self.extractor = extractor
        self.version = version
        self.shown = shown
        self.limits = limits or BatchLimits()
        self.poll_interval = poll_interval
        self.progress = progress or (lambda done, total: None)
        # failing counts of messages to plan again, each with the log version planned at
        self.failing: dict[str, dict[str, list[tuple[int, int | None]]]] = {}
        self.failed_whole: dict[str, set[str]] = {}  # kept rows that failed whole, by user
        self.last_tried: dict[str, str] = {}  # when a fallback last sent each user's messages
        self.dropped: dict[str, set[str]] = {}  # messages of kept batches dropped, by user
        self._kept: dict[str, _KeptRow] = {}  # the kept rows a claim decoded, by id
        self.request_size = LearnedRequestSize()
        self.shown_weight: dict[str, int] = {}  # what a user's refused request was shown
        self.again: list[_Planned] = []  # requests refused for size, to submit split
        self.splitting: dict[str, str] = {}  # why each refused for size, until sent again
        # the messages of requests an earlier run kept that were refused for size, by user
        self.split_earlier: dict[str, dict[str, set[str]]] = {}
        # lone messages of those, by user: each goes again alone, showing no entry, asking
        # the output kept (None: the whole max_tokens)
        self.lone_earlier: dict[str, dict[str, int | None]] = {}
        self.kept_batches = KeptBatches(store, version)
        self.claiming = Claims(store, version)
        self.recorder = Recorder(store, reader, decide, extractor, version, shown, record_failure)
        self.probes = Probes(store, extractor)
        self.fallback = DirectFallback(
            store,
            extractor,
            version,
            decide,
            self.claiming,
            self.kept_batches,
            direct=direct,
            direct_limit=direct_limit,
        )

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
            await asyncio.to_thread(self.kept_batches.create_table)
            await asyncio.to_thread(self.claiming.sweep_forgotten_claims)
        except SQLAlchemyError as error:
            raise self._storage_failure(error) from error
        await self.extractor.prepare()
        client = self.extractor.client
        _RUNNING.add(self.claiming.owner)
        renewing = asyncio.create_task(self.claiming.keep_claims())
        try:
            for batch_id in await asyncio.to_thread(self.probes.kept_probes):
                await self.probes.cancel_probe(client, batch_id, report)
            for row in await asyncio.to_thread(self.kept_batches.unfinished):
                if _failed_whole(row):  # taken user by user, as :meth:`_claim` claims them
                    for request in row["requests"].values():
                        self.failed_whole.setdefault(request["user"], set()).add(row["local_id"])
                elif not await asyncio.to_thread(self.claiming.held_elsewhere, row):
                    await self._finish(client, row, report, earlier=True)
            planned = await asyncio.to_thread(self._plan, user_ids, report)
            await self._submit_all(client, planned, report)
        except anthropic.AnthropicError as error:
            raise api_error(error, credentials_of(self.extractor)) from None
        except SQLAlchemyError as error:
            raise self._storage_failure(error) from error
        finally:
            renewing.cancel()
            _RUNNING.discard(self.claiming.owner)
            try:
                await asyncio.to_thread(self.claiming.release_claims)
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

    def _storage_failure(self, error: SQLAlchemyError) -> StorageError:
        """The :class:`StorageError` a run raises for a failure of the database no step of
        it turned into one: its driver's words, without the statement and parameters."""
        return StorageError(
            f"the bulk re-extraction into {self.version!r} failed in {self.store.safe_url}: "
            f"{first_line(error)}"
        )

    # ------------------------------------------------------------------ claims

    def _claim(self, user_id: str) -> set[str] | None:
        """Claim the user's plan for this run, in the transaction that reads the kept
        Message Batches; returns the messages they hold (not to plan again), or ``None``
        when another run holds the user (its claim not :func:`claims._abandoned`).

        The claim locks one row, the user's claim row (read locked, or inserted), and
        commits; only then are the user's requests taken out of the kept rows that failed
        whole, in a transaction of their own that locks them by id
        (:meth:`_take_failed_whole`). Neither holds the claim row while it waits for a kept
        row, nor a kept row while it waits for the claim row, so the claim waits in no
        circle with a ``forget`` of the user, whichever it locks first: the claim rows
        (:func:`projections.bulk_runs.forget_bulk_requests`) or the lowest id (an older
        memvee's). A claim that waited for a forget finds the claim row gone, and claims
        the user afresh."""
        pending = self.claiming.claim(
            user_id, lambda connection: self._kept_for(connection, user_id)
        )
        if pending is None:
            return None
        try:
            if self.failed_whole.get(user_id):
                with self.store.transaction() as connection:
                    self._take_failed_whole(connection, user_id)
        except SQLAlchemyError as error:
            raise self.claiming.claim_failure(user_id, error) from error
        return pending

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
        of_version = select(BULK_BATCHES.c.local_id).where(
            BULK_BATCHES.c.knowledge_version == self.version
        )
        # Three ranges of the index of kept rows: a "!=" of the id's kind, or an OR with
        # the batch's id, is read through the version's index, every claim of it.
        kept = union_all(
            of_version.where(ID_VERSION < _CLAIM_ID_VERSION),
            of_version.where(ID_VERSION > _CLAIM_ID_VERSION),
            of_version.where(
                ID_VERSION == _CLAIM_ID_VERSION, BULK_BATCHES.c.api_batch_id.is_not(None)
            ),
        )
        ids = set(connection.execute(kept).scalars())
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
        A lone message whose request an earlier run kept was refused for its size goes
        alone, showing no entry and asking the output it may (:attr:`lone_earlier`), as
        :meth:`_split_again` sends this run's own: sent as before, it would be refused the
        same way a Message Batch later, and be told split though sent no smaller.
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
                self.lone_earlier.pop(user_id, None)
                for request_id, why in self._splitting_earlier(user_id):
                    report.forgotten[request_id] = f"{why}; {_FORGOTTEN_BEFORE_SENT}"
                self.claiming.release_claim(user_id)
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
            limits = self.request_size.within(self.limits, self.shown_weight.get(user_id, 0))
            split = self.split_earlier.pop(user_id, {})
            lone = self.lone_earlier.pop(user_id, {})
            for batch in bounded(todo, limits, {*failed, *lone}):
                ids = [m.message_id for m in batch]
                alone = len(ids) == 1 and ids[0] in lone
                shown = () if alone else self.shown(user_id, batch)[0]
                known = [k.entry_id for k in shown]
                count = max(failing.get(m, 0) for m in ids)
                tried = self.last_tried.get(user_id)
                of = tuple(r for r, held in split.items() if held.intersection(ids))
                output = lone[ids[0]] if alone else None
                planned.append(
                    _Planned(user_id, ids, known, user_log.version, count, tried, output, of)
                )
        return sorted(planned, key=lambda p: _last_tried(p.tried, p.user_id))

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
            todo.extendleft(reversed(self.again))
            self.again.clear()

    async def _next_chunk(
        self, todo: deque[_Planned], budget: int, report: BulkReport
    ) -> list[_Built]:
        """The next requests of ``todo`` that one Message Batch takes: within
        :data:`MAX_REQUESTS_PER_BATCH` and ``budget`` bytes (a request over ``budget`` goes
        alone); a request planned before the run learned a size is cut within it first
        (:meth:`_within_learned`), and one too large for any batch is split
        (:meth:`_split`)."""
        chunk: list[_Built] = []
        size = 0
        while todo and len(chunk) < MAX_REQUESTS_PER_BATCH:
            parts = await asyncio.to_thread(self._within_learned, todo[0])
            if parts is not None:
                todo.popleft()
                todo.extendleft(reversed(parts))
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

    def _within_learned(self, planned: _Planned) -> list[_Planned] | None:
        """``planned`` cut into requests within the size this run learned from a refusal
        for size (:class:`LearnedRequestSize`), as a plan made now would cut it, or
        ``None`` when it is within already (or no size is learned: then nothing is read).
        A request planned before the size was learned would go out at the configured
        size, be refused again and be split a Message Batch later (up to 24 hours)."""
        if self.request_size.within(self.limits) == self.limits:
            return None
        batch = self.recorder.batch("planned", planned.to_json())
        shown = sum(estimate_tokens(k.text) for k in batch.known)
        parts = list(bounded(batch.messages, self.request_size.within(self.limits, shown)))
        if len(parts) < 2:
            return None
        cut = []
        for part in parts:
            entries, _ = self.shown(planned.user_id, part)
            ids = [m.message_id for m in part]
            cut.append(replace(planned, message_ids=ids, known=[k.entry_id for k in entries]))
        return cut

    def _build(self, planned: _Planned) -> _Built:
        """The Messages API ``params`` of a planned request, and the bytes it adds to the
        create body, measured as the SDK encodes it (compact JSON, UTF-8)."""
        batch = self.recorder.batch("planned", planned.to_json())
        params = cast(MessageCreateParamsNonStreaming, self.extractor.request(batch))
        # billed only as generated; less only where the context window asked for less
        params["max_tokens"] = planned.max_tokens or self.extractor.max_tokens
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
        (:meth:`Probes.probe_batches`): otherwise the API (or a gateway in front of it) refuses
        requests of any size, and the run stops, leaving none out."""
        batch = await asyncio.to_thread(self.recorder.batch, "planned", planned.to_json())
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
        verdict = await self.probes.probe_batches(batch, report) if probe else "accepted"
        if verdict != "accepted":
            raise _refused_whatever_size(why, verdict)
        message_id = messages[0].message_id
        error = RejectedBatchError(why)
        await asyncio.to_thread(self.recorder.record_failure, planned.to_json(), error, None)
        report.left_out[message_id] = why
        log.warning(
            "user %r: message %s left out of version %r: its request is too large alone (%s)",
            planned.user_id,
            message_id,
            self.version,
            why,
        )

    async def _submit(
        self, client: anthropic.AsyncAnthropic, chunk: list[_Built], report: BulkReport
    ) -> dict[str, Any] | None:
        """Keep the requests, then create the Message Batch and keep its id; ``None`` when
        nothing is left to submit.

        Only the requests of users this run still holds are kept and sent, checked as they
        are kept (:meth:`Claims.insert_held`): a user another run took over while this one was
        stopped is its (``report.claimed``).

        Each custom id ends with the kept row's id, so a batch whose creation was never
        confirmed (a crash, a connection lost mid-call) can be told among the account's
        batches later (:meth:`_created_for`). The create call is never retried blindly:
        the SDK would create a second batch, billed too, when the first one's answer was
        lost; an answer that refused it is retried here, and a lost answer is looked for.
        """
        chunk = [
            b for b in chunk if _claim_id(self.version, b.planned.user_id) not in self.claiming.lost
        ]
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
            await asyncio.to_thread(self.claiming.insert_held, row)
        await asyncio.to_thread(self.claiming.report_lost, report)
        if not row["requests"]:
            await self._tell_split(chunk, row, report)
            return None
        requests: list[Request] = [
            {"custom_id": custom_id, "params": built[custom_id].params}
            for custom_id in row["requests"]
        ]
        created = await self._create(client, row, requests)
        row["api_batch_id"] = created
        await asyncio.to_thread(self.kept_batches.set_batch_id, local_id, created)
        await self._tell_split(chunk, row, report)
        log.info("submitted %d requests as Message Batch %s", len(requests), created)
        return row

    async def _tell_split(
        self, chunk: list[_Built], row: dict[str, Any], report: BulkReport
    ) -> None:
        """Tell each request refused for its size whose messages a request of ``chunk``
        sends again (:attr:`_Planned.split_of`) in ``report.split``, once it is submitted
        in ``row``; one whose user was forgotten before it was sent is told in
        ``report.forgotten`` instead (nothing is left to send), and one whose user another
        run took over in neither (``report.claimed`` names the user)."""
        sent = {request["user"] for request in row["requests"].values()}
        for built in chunk:
            user_id = built.planned.user_id
            for request_id in built.planned.split_of:
                why = self.splitting.pop(request_id, None)
                if why is None:  # told already, by an earlier part of its messages
                    continue
                if user_id in sent:
                    report.split[request_id] = why
                elif await asyncio.to_thread(self.store.last_version, user_id) == 0:
                    report.forgotten[request_id] = f"{why}; {_FORGOTTEN_BEFORE_SENT}"

    def _splitting_earlier(self, user_id: str) -> list[tuple[str, str]]:
        """The requests of ``user_id`` an earlier run kept that were refused for their size
        and are still to be sent again, with why, taken out of those waiting."""
        return [
            (request_id, self.splitting.pop(request_id))
            for request_id in self.split_earlier.pop(user_id, {})
            if request_id in self.splitting
        ]

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
                        await asyncio.to_thread(self.kept_batches.delete, row["local_id"])
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
            await asyncio.to_thread(self.kept_batches.delete, row["local_id"])
            return
        if row["api_batch_id"] is None:
            row["api_batch_id"] = batch_id
            await asyncio.to_thread(self.kept_batches.set_batch_id, row["local_id"], batch_id)
        total = len(row["requests"])
        try:
            answers, short = await self._ended_results(client, batch_id, total)
        except anthropic.NotFoundError as missing:
            await self._batches_answer(client, batch_id, missing)
            log.warning(
                "Message Batch %s is not known to the API (deleted, past its 29 days, or "
                "another workspace's): its %d requests are planned again",
                batch_id,
                total,
            )
            report.lost.append(batch_id)
            self._drop_row(row)
            await asyncio.to_thread(self.kept_batches.delete, row["local_id"])
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
            recorded = await asyncio.to_thread(self.recorder.recorded, user_id)
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
                        self.recorder.record,
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
                elif isinstance(entries, ExtractionError) and split_again(entries, request):
                    await self._split_again(
                        custom_id, request_id, request, entries, report, earlier=earlier
                    )
                elif isinstance(entries, ExtractionError):
                    report.failed[request_id] = str(entries)
                    own = entries.repeats or (blamable and _server_error(outcome))
                    if own and await asyncio.to_thread(self.recorder.fails_alone, request):
                        report.left_out[request["messages"][0]] = str(entries)
                else:
                    report.recorded += 1
                    report.entries += entries
                    if earlier and user_id not in report.collected:
                        report.collected.append(user_id)
        if short is None and not blamable:
            again = {k: r for k, r in row["requests"].items() if int(r.get(_FAILING, 0))}
            if again and not earlier:
                await self.fallback.send_directly(row, again, report)
            await asyncio.to_thread(self.kept_batches.keep_failed_whole, row)
            return
        await asyncio.to_thread(self.kept_batches.delete, row["local_id"])

    async def _split_again(
        self,
        custom_id: str,
        request_id: str,
        request: dict[str, Any],
        refused: ExtractionError,
        report: BulkReport,
        *,
        earlier: bool,
    ) -> None:
        """A request of a Message Batch refused for its size (:func:`split_again`): the size
        is learned (:class:`LearnedRequestSize`, from the API's figures when it names them,
        as the live path learns it), so the run plans within it from then on, and its
        messages go again within it, at most half of them a request, or, a lone message,
        with no entry shown, or asking the live path's output budget when only the output
        asked overflowed the window (``smaller_output``). One an ``earlier`` run kept is not
        sent again here: its messages are no longer held once its row is deleted, and this
        run's plan takes them, within the size learned, whether or not it names their user
        (as it plans a dropped kept row's, :attr:`dropped`); a lone message alone, showing
        no entry and asking the smaller output, as here (:attr:`lone_earlier`). Each is told in
        ``report.split`` once a request of its messages is submitted (:meth:`_tell_split`)."""
        batch = await asyncio.to_thread(self.recorder.batch, custom_id, request)
        if not batch.messages:  # forgotten meanwhile: nothing to send
            return
        self.splitting[request_id] = str(refused)
        shown = sum(estimate_tokens(k.text) for k in batch.known)
        if len(batch.messages) > 1 and isinstance(refused, RejectedBatchError):
            params = self.extractor.request(batch)
            params["max_tokens"] = self.extractor.max_tokens
            if refused.over_the_window:
                weigh_over_the_window(refused, params, batch, output_grows=False)
            self.request_size.too_large(
                sum(estimate_tokens(m.content) for m in batch.messages),
                shown,
                prompt_tokens=refused.prompt_tokens,
                context_tokens=refused.context_tokens,
                estimated_tokens=refused.estimated_tokens,
                fixed_tokens=refused.fixed_tokens,
            )
            self.shown_weight[batch.user_id] = shown
        log.info(
            "user %r: a bulk request of %d messages was refused for its size (%s); sent "
            "again split",
            batch.user_id,
            len(batch.messages),
            refused,
        )
        output = refused.smaller_output if isinstance(refused, RejectedBatchError) else None
        if earlier:
            held = {m.message_id for m in batch.messages}
            self.dropped.setdefault(batch.user_id, set()).update(held)
            self.split_earlier.setdefault(batch.user_id, {})[request_id] = held
            if len(batch.messages) == 1:
                self.lone_earlier.setdefault(batch.user_id, {})[batch.messages[0].message_id] = (
                    output
                )
            return
        at: int | None = request.get("at")
        if at is None:  # an older memvee's request: planned now
            at = await asyncio.to_thread(self.store.last_version, batch.user_id)
        planned = _Planned(
            batch.user_id,
            [m.message_id for m in batch.messages],
            [],
            at,
            int(request.get(_FAILING, 0)),
            request.get(_DIRECT_TRIED),
            output,
            (request_id,),
        )
        if len(batch.messages) == 1:
            self.again.append(planned)
            return
        messages = list(batch.messages)
        half = dict.fromkeys(planned.message_ids, (len(messages) + 1) // 2)
        limits = self.request_size.within(self.limits, shown)
        for part in bounded(messages, limits, caps=half):
            entries, _ = await asyncio.to_thread(self.shown, batch.user_id, part)
            ids = [m.message_id for m in part]
            known = [k.entry_id for k in entries]
            self.again.append(replace(planned, message_ids=ids, known=known))

    async def _batches_answer(
        self, client: anthropic.AsyncAnthropic, batch_id: str, missing: anthropic.NotFoundError
    ) -> None:
        """Check that the list of Message Batches answers through ``client`` after Message
        Batch ``batch_id`` was answered ``missing`` (404): only then does the 404 say the API
        does not know the batch (:func:`_batches_not_found`). The list not found too, the
        base URL's path is wrong, and the batch may still run at the API:
        :class:`ExtractorNotFoundError` stops the run, the batch kept for a run with the
        right URL to collect, not submitted and paid for again. Any other failure of the
        list is raised as it is, the batch kept too."""
        not_found = await _batches_not_found(client)
        if not_found is not None:
            secrets = credentials_of(self.extractor)
            listing = api_error(not_found, secrets)
            raise ExtractorNotFoundError(
                f"Message Batch {batch_id} was not found ({api_error(missing, secrets)}), nor "
                f"the list of Message Batches ({listing}): the base URL's path is not found, "
                "not the batch gone; it is kept for a run with the right URL to collect",
                retry_after=listing.retry_after,
            ) from None

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
        reads = await asyncio.to_thread(self.kept_batches.count_short_read, row["local_id"])
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

    async def _ended_results(
        self, client: anthropic.AsyncAnthropic, batch_id: str, total: int, *, told: bool = True
    ) -> tuple[dict[str, Any], str | None]:
        """Poll a Message Batch until it ends, telling progress (``told``); then its
        results, and why they could not be read whole, if they could not (see
        :func:`_results`). A 404 on the results once the batch is answered as ended is no
        batch gone but its results URL not found: :class:`ExtractorNotFoundError` stops the
        run, the batch kept, never submitted and paid for again (only a 404 on the batch
        itself, raised as it is, may say the API does not know it)."""
        while True:
            found = await self._retrieve(client, batch_id)
            counts = found.request_counts
            done = counts.succeeded + counts.errored + counts.canceled + counts.expired
            if told:
                self.progress(done, total)
            if found.processing_status == "ended":
                secrets = credentials_of(self.extractor)
                try:
                    return await _results(client, batch_id, secrets)
                except anthropic.NotFoundError as missing:
                    path = urlsplit(found.results_url or "").path or "its results URL"
                    error = api_error(missing, secrets)
                    raise ExtractorNotFoundError(
                        redact(
                            f"Message Batch {batch_id} ended, but its results were not found "
                            f"at {path} ({error}): the batch is kept for a run that can "
                            "download them, none of its requests submitted again",
                            secrets,
                        ),
                        retry_after=error.retry_after,
                    ) from None
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
        kept = await asyncio.to_thread(self.kept_batches.kept_batch_ids)
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
        forgotten meanwhile, and their requests are dropped as such (:meth:`Recorder.record`)."""
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
        :meth:`Recorder.record`). The request probed is the first due whose messages are still
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
                recorded_of[user_id] = await asyncio.to_thread(self.recorder.recorded, user_id)
            if f"{row['api_batch_id']}:{custom_id}" in recorded_of[user_id]:
                continue
            batch = await asyncio.to_thread(self.recorder.batch, custom_id, request)
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
