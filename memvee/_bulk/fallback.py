"""The fallback through the Messages API, at full price: the messages of a Message Batch
that failed whole with server errors a second time go through the live re-extraction's
rules, user after user, until the API tells it is down, busy or refuses the key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, assert_never

from actors import THE_APIS_STATE
from events import EventStore, ExtractionError, MemveeError, NotFoundError
from events.errors import EveryRequestRefusedError, first_line
from events.harmless import (
    Answered,
    Busy,
    CredentialsRefused,
    FailedTellingNothing,
    ModelOrPathNotFound,
    Outage,
)
from memvee._secrets import shown_error
from memvee.extractors import ClaudeExtractor

if TYPE_CHECKING:
    from memvee._bulk.claims import Claims
    from memvee._bulk.kept import KeptBatches
    from memvee._bulk.report import BulkReport
    from memvee._bulk.run import Decide
    from memvee.audit import ReextractionReport

log = logging.getLogger("memvee.bulk")

Direct = Callable[[str, Collection[str], "ReextractionReport"], Awaitable[None]]
"""Re-extracts the given messages of a user through the Messages API, by the live
re-extraction's rules (Audit's ``reextract``), filling in the report as it goes: the
fallback for a Message Batch that failed whole with server errors a second time."""


@dataclass(slots=True)
class DirectFallback:
    """Sends through the Messages API the messages of the Message Batches of a run that
    failed whole with server errors a second time (:data:`Direct`, ``None``: never), at
    most ``direct_limit`` messages a run (``None``: all), to the users the run still
    ``claims``, noting in the run's ``kept_batches`` that a user's messages are sent now."""

    store: EventStore
    extractor: ClaudeExtractor
    version: str
    decide: Decide
    claims: Claims
    kept_batches: KeptBatches
    _: KW_ONLY
    direct: Direct | None
    direct_limit: int | None  # the most messages sent directly a run (None: all)
    direct_stopped: bool = False  # the API is down or refuses the key: no more direct calls
    direct_answered: bool = False  # the Messages API answered a call of this run's

    async def send_directly(
        self, row: dict[str, Any], requests: Mapping[str, Any], report: BulkReport
    ) -> None:
        """Send the messages of ``requests`` of ``row`` through the Messages API, user
        after user in the order :meth:`BulkReextraction._plan` put them (least lately tried
        first), noting each user in ``row`` before its first call
        (:meth:`kept.KeptBatches.note_tried`), by the live
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
            if not self.claims.holds(user_id):
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
            await asyncio.to_thread(self.kept_batches.note_tried, row, user_id)
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
        user's request, so no other user's messages are worth a full-price call) or it was
        answered not found (404: the model or the base URL's path, likewise). A lone
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
        if isinstance(verdict, CredentialsRefused | ModelOrPathNotFound):
            return _every_request_refused(stopped, verdict)
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
            case CredentialsRefused() | ModelOrPathNotFound():
                return _every_request_refused(stopped, told)
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


def _stop_tells_api_down(stopped: MemveeError, live: ReextractionReport) -> bool:
    """Whether a user's live re-extraction that ``stopped`` tells the Messages API is
    down, for every user: the harmless request sent after its two failures in a row
    failed too (an :class:`events.Outage`), or it stopped on the API's state (overloaded, every
    batch refused, a probe that failed or was refused too: :data:`actors.THE_APIS_STATE`).
    A harmless request answered, or a lone message failing once with nothing else to
    send, tells only of that user's messages; one whose credentials were refused
    (:class:`events.CredentialsRefused`), or answered not found
    (:class:`events.ModelOrPathNotFound`), tells no outage, though it ends the fallback all
    the same (:meth:`DirectFallback._every_user_stopped`)."""
    if live.check is not None:
        return isinstance(live.check.verdict, Outage)
    return not _lone(stopped) or isinstance(stopped, THE_APIS_STATE)


def _every_request_refused(
    stopped: MemveeError, verdict: CredentialsRefused | ModelOrPathNotFound
) -> EveryRequestRefusedError:
    """The error that ends the Messages API fallback for every user once a harmless
    request after ``stopped`` showed every request refused: its credentials refused, or
    what the requests name (the model, the base URL's path) not found (``verdict``)."""
    match verdict:
        case CredentialsRefused(error=error):
            finding = (
                f"a harmless request's credentials were refused too ({error}): the API key "
                "or its permissions are refused for every request"
            )
        case ModelOrPathNotFound(error=error):
            finding = (
                f"a harmless request was answered not found too ({error}): the model, or the "
                "base URL's path, is not found for every request"
            )
        case _:
            assert_never(verdict)
    stops = "no other user's messages are sent through the Messages API this run"
    log.warning("%s; %s", finding, stops)
    return EveryRequestRefusedError(f"{first_line(stopped)} ({finding}; {stops})")


def _lone(stopped: MemveeError) -> bool:
    """Whether a live re-extraction ``stopped`` on a call failing in a way that may pass
    with nothing else to send (a lone message), which tells nothing of the API at large."""
    return isinstance(stopped, ExtractionError) and not stopped.repeats
