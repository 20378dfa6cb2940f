"""Probe Message Batches: one request of one token, with a harmless message in place of a
request's messages, made to tell whether a request refused as too large alone is refused
for its size or whatever its size. A probe is kept until it is canceled, so that one a run
could not cancel is canceled by the next."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast
from uuid import uuid4

import anthropic
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request
from sqlalchemy import select

from events import EventStore, ExtractionBatch, ExtractionError
from events.errors import ProbeFailedError
from memvee._bulk.kept import _PROBE, _PROBES
from memvee._bulk.outcomes import _batches_not_found, _key_refused, _transient
from memvee._secrets import credentials_of
from memvee.extractors import ClaudeExtractor
from memvee.extractors._claude import api_error, probe_request
from projections.bulk_runs import BULK_BATCHES

if TYPE_CHECKING:
    from memvee._bulk.report import BulkReport

log = logging.getLogger("memvee.bulk")

_REFUSED = frozenset({400, 413, 422})
"""HTTP statuses that refuse a request for what it is, however often it is sent."""

_CANCEL_ATTEMPTS = 3
"""Calls that cancel one probe Message Batch, at most, when the API fails for a while."""


class Probes:
    """The probe Message Batches of bulk runs: made, kept until canceled, and canceled
    (this run's own, and those an earlier run left running)."""

    def __init__(self, store: EventStore, extractor: ClaudeExtractor) -> None:
        self.store = store
        self.extractor = extractor

    async def probe_batches(self, batch: ExtractionBatch, report: BulkReport) -> str:
        """How the Message Batches API answers a Message Batch of ``batch``'s request with
        a harmless message in place of its messages (asking for one token): "accepted",
        the batch made is canceled at once and the refusal was the message's size;
        "refused", the API or a gateway in front of it refuses requests of any size;
        "failed", it tells nothing. A probe through the Messages API does not meet a body
        limit of Message Batches' own, so it took a heavy message for the one to blame.
        The probe batch is kept (its id) until it is canceled, so that one this run could
        not cancel, stopped or refused, is canceled by the next (:meth:`cancel_probe`)."""
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
            await asyncio.to_thread(self.keep_probe, made.id)
            kept = True
        finally:
            await self.cancel_probe(client, made.id, report, kept=kept)
        return "accepted"

    async def cancel_probe(
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
        next run to cancel (``report.probes_running``), as does one answered 404 through a
        base URL whose path is wrong (:func:`_path_wrong`); one not ``kept`` (its id could
        not be stored) runs to its end, and the warning says so. A probe the API no longer
        knows, or will not cancel as ended, is forgotten: it runs no more."""
        # The SDK's own retries (backoff, Retry-After): a cancel may be sent again safely.
        retrying = client.with_options(max_retries=_CANCEL_ATTEMPTS - 1)
        try:
            await retrying.messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as error:
            shown = api_error(error, credentials_of(self.extractor))
            unclear = _transient(error) or _key_refused(error) or await _path_wrong(client, error)
            if unclear:  # one request of one token: billed
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
            await asyncio.to_thread(self.forget_probe, batch_id)
        report.probes.append(batch_id)

    def keep_probe(self, batch_id: str) -> None:
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

    def kept_probes(self) -> list[str]:
        """The ids of the probe Message Batches kept by runs of any version, not canceled."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(BULK_BATCHES.c.api_batch_id, BULK_BATCHES.c.requests).where(
                    BULK_BATCHES.c.knowledge_version == _PROBES
                )
            ).all()
        return [batch_id for batch_id, requests in rows if _PROBE in requests and batch_id]

    def forget_probe(self, batch_id: str) -> None:
        """Forget the kept probe Message Batch ``batch_id`` (canceled, or over)."""
        with self.store.transaction() as connection:
            rows = connection.execute(
                select(BULK_BATCHES.c.local_id, BULK_BATCHES.c.requests).where(
                    BULK_BATCHES.c.api_batch_id == batch_id
                )
            ).all()
            probes = [local_id for local_id, requests in rows if _PROBE in requests]
            connection.execute(BULK_BATCHES.delete().where(BULK_BATCHES.c.local_id.in_(probes)))


async def _path_wrong(client: anthropic.AsyncAnthropic, error: anthropic.AnthropicError) -> bool:
    """Whether ``error``, a call's on one probe Message Batch, may tell a base URL whose path
    is wrong rather than a probe the API does not know: a 404 after which the list of
    batches is not found, or cannot be had at all (:func:`_batches_not_found`)."""
    if not isinstance(error, anthropic.NotFoundError):
        return False
    try:
        return await _batches_not_found(client) is not None
    except anthropic.AnthropicError as listing:
        log.warning("listing Message Batches failed too (%s)", type(listing).__name__)
        return True


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
