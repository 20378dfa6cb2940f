"""Recording one request's answer of a Message Batch in its user's log: the facts read off a
succeeded answer placed in the version as the synchronous path places them, or the failure
kept with what it cost (and any probe sent for it); each request is recorded once, whichever
run collects it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events import (
    AlreadyReextractedError,
    BatchMessage,
    EventStore,
    ExtractedFact,
    ExtractionBatch,
    ExtractionError,
    KnownEntry,
    NotFoundError,
    RejectedBatchError,
    ReplacedEntry,
    UserLog,
)
from memvee._bulk.kept import _OUTPUT
from memvee._bulk.outcomes import (
    _failure,
    _probe_verdict,
    _refusal_told,
    _server_error,
    _with_probe,
    fixed_fills_the_window,
    smaller_output,
    split_again,
)
from memvee._secrets import credentials_of
from memvee.extractors import ClaudeExtractor
from memvee.extractors._claude import ProbeResult, outweighed, weigh_over_the_window
from projections import ProjectionReader, ProjectionTables, Projector
from projections.shown import with_targets

if TYPE_CHECKING:
    from memvee._bulk.run import Decide, RecordFailure, Shown

log = logging.getLogger("memvee.bulk")


@dataclass(frozen=True, slots=True)
class Recorder:
    """Records the answers of a bulk run's requests in their users' logs, into ``version``:
    ``decide`` appends to a user's freshly loaded log, ``shown`` tells the entries a batch
    is shown now, and ``keep_failed`` keeps a failed call (Audit's)."""

    store: EventStore
    reader: ProjectionReader
    decide: Decide
    extractor: ClaudeExtractor
    version: str
    shown: Shown
    keep_failed: RecordFailure

    def record(
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
        Message Batch for (see :meth:`BulkReextraction._refused_all`);
        ``blamable``: whether a server error of a request is evidence against its messages
        (see :func:`outcomes._blamable`); ``model_refusal``: how a harmless request fared
        where the model refused requests of the Message Batch (see
        :meth:`BulkReextraction._model_refusal`);
        ``probed``: how a probe sent for this request's refusal fared and what it spent,
        counted in its failure (a probed request is one that failed), or on its own when
        that failure is not kept (:meth:`_keep_probe_alone`)."""
        if outcome.type != "succeeded":
            failure = _failure(outcome, credentials_of(self.extractor), refused_all)
            failure = self._whatever_size(custom_id, request, failure)
            failure.usage = _with_probe(failure.usage, probed)
            blamed = blamable and _server_error(outcome)
            self._keep_failure(request, failure, request_id, probed, blamed=blamed)
            return failure
        batch = self.batch(custom_id, request)
        try:
            asked = int(request.get(_OUTPUT) or self.extractor.max_tokens)
            result = self.extractor.read_answer(batch, outcome.message, budget=asked)
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

    def _whatever_size(
        self, custom_id: str, request: dict[str, Any], failure: ExtractionError
    ) -> ExtractionError:
        """``failure``, judged when it is a refusal for size (a 413, a prompt over the
        model's context window) of a lone message's request showing no entry. Over the
        window for the output asked beside an input that leaves room for the live path's
        output budget: ``smaller_output`` set, for the run to send it again asking that
        (:func:`split_again`). A failure that may pass, blaming none, when no request of
        any message fits: the fixed prompt with the smallest output asked fills the window
        (:func:`fixed_fills_the_window`), or the message weighs no more than the fixed
        prompt around it (:func:`outweighed`: the API or a gateway refuses requests of any
        size); a run of such refusals would split down to every message and leave each
        out. Otherwise the message is too large for any request alone, and left out."""
        if not isinstance(failure, RejectedBatchError) or not failure.too_large:
            return failure
        if split_again(failure, request):
            return failure
        batch = self.batch(custom_id, request)
        if not batch.messages:
            return failure
        asked = int(request.get(_OUTPUT) or self.extractor.max_tokens)
        params = {**self.extractor.request(batch), "max_tokens": asked}
        budget = self.extractor.output_budget(batch)
        if failure.over_the_window:
            weigh_over_the_window(failure, params, batch, output_grows=False)
            failure.smaller_output = smaller_output(failure, budget)
            if failure.smaller_output is not None:
                return failure
            if fixed_fills_the_window(failure, min(asked, budget)):
                return ExtractionError(
                    f"{failure} (the fixed prompt of its request with the output asked "
                    "fills the model's context window: no request fits, whatever its "
                    "message; retried later, no message blamed)"
                )
        if outweighed(params, batch):
            whose = (
                "the model's context window is too small for any request"
                if failure.over_the_window
                else "the API or a gateway in front of it refuses requests of any size"
            )
            return ExtractionError(
                f"{failure} (the message weighs no more than the fixed prompt of its "
                f"request: {whose}, not the message; retried later, no message blamed)"
            )
        if failure.over_the_window and failure.output_tokens is not None:
            return RejectedBatchError(
                f"{failure} (the message is over the window alone: its input with the "
                f"{budget} output tokens a live call asks does not fit either)",
                usage=failure.usage,
                reason=failure.reason,
                too_large=True,
                **failure.size_figures(),
            )
        return failure

    def _keep_failure(
        self,
        request: dict[str, Any],
        error: ExtractionError,
        request_id: str,
        probed: ProbeResult | None,
        *,
        blamed: bool = False,
    ) -> None:
        """Keep a failed request in its user's log (:meth:`record_failure`), and the probe
        sent for it on its own when that failure is not kept (:meth:`_keep_probe_alone`).
        Raises ``NotFoundError`` when it was not kept because the user was forgotten
        meanwhile: :meth:`BulkReextraction._finish` drops it as a forgotten user's request
        (nothing to retry), as it drops one that succeeded."""
        if self.record_failure(request, error, request_id, blamed=blamed):
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
        how it fared (:func:`outcomes._probe_verdict`)."""
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

    def record_failure(
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
        many runs collect it. Returns whether this call kept it. A request refused for its
        size that the run sends again smaller (:func:`split_again`) pins none of its
        messages: its size is at fault, not they."""
        return self.keep_failed(
            request["user"],
            self.version,
            list(request["messages"]),
            error,
            self.extractor,
            error.repeats and not split_again(error, request),
            text=str(error),
            request_id=request_id,
            blamed=blamed,
        )

    def fails_alone(self, request: dict[str, Any]) -> bool:
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

    def batch(self, custom_id: str, request: dict[str, Any]) -> ExtractionBatch:
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

    def recorded(self, user_id: str) -> set[str]:
        """The request ids already recorded in the user's log."""
        user_log = self.store.load(user_id)
        return set() if user_log is None else set(user_log.reextraction_requests)


def _same_if_known(fact: ExtractedFact, current: dict[str, str]) -> ExtractedFact:
    """A "new" fact whose text is already a current entry of the version repeats it.

    Requests of one bulk run cannot see each other's entries, so the same fact may come
    back from several of them; it is recorded once.
    """
    target = current.get(fact.text.casefold()) if fact.action == "new" else None
    if target is None:
        return fact
    return ExtractedFact(fact.text, fact.source_message_ids, "same", target)
