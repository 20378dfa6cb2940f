"""Knowledge extraction with Claude through the Anthropic Messages API.

Claude answers through one forced tool call, ``record_knowledge``, so that its answer is
structured data rather than prose to parse. The prompt (see :mod:`._claude_prompt`) lists
the user's known entries related to the batch, so that each fact can say whether it is
new, repeats a known entry, updates one or invalidates one.

An answer is read strictly for its shape and leniently for its meaning: anything off the
tool's schema (but for a blank text or target), cut (at ``max_tokens``, or where the
context window ended) or missing fails the batch with
:class:`events.errors.InvalidExtractionError`; what an answer of that shape gets slightly
wrong (a citation outside the batch, a target that is not known or blank, a fact with
blank text) is passed on for the engine to repair and record. Every failure says whether
it would repeat: the engine splits a batch that fails the same way, and backs off from an
API that is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import ipaddress
import json
import logging
import math
import numbers
import os
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import anthropic
import httpx2
from anthropic.lib.credentials import default_credentials
from anthropic.types import Message, MessageParam, TextBlockParam

from events.checks import check_model
from events.credentials import CarriesCredentials
from events.errors import (
    INPUT_REFUSED_STATUSES,
    EveryRequestRefusedError,
    ExtractionError,
    ExtractorAccessRefusedError,
    ExtractorNotFoundError,
    ExtractorOverloadedError,
    ExtractorRateLimitedError,
    InvalidExtractionError,
    InvalidInputError,
    MemveeError,
    MissingCredentialsError,
    OversizedMessageError,
    ProbeFailedError,
    RejectedBatchError,
    first_line,
)
from events.extraction import (
    FACT_ACTIONS,
    MAX_TOKENS,
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    FactAction,
    HarmlessRequests,
    KnownEntry,
    TokenUsage,
    estimate_tokens,
    extraction_deadline,
)
from memvee._log_redaction import protect_loggers
from memvee._secrets import (
    BASE_URL_ENV_VAR,
    client_secrets,
    configured_secrets,
    mentions,
    redact,
    userinfo,
)
from memvee.extractors._claude_prompt import (
    SYSTEM_PROMPT,
    TOOL,
    TOOL_CHOICE,
    TOOL_NAME,
    Aliases,
    prefix_tokens,
    user_turn,
)
from memvee.extractors._default import API_KEY_ENV_VAR
from memvee.extractors._model_choice import DEFAULT_MODEL, MODEL_ENV_VAR

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV_VAR",
    "TOOL_NAME",
    "ClaudeExtractor",
    "ProbeResult",
    "cache_minimum",
]

_log = logging.getLogger("memvee.extractors")

_CUSTOM_HEADERS_ENV_VAR = "ANTHROPIC_CUSTOM_HEADERS"
"""Headers the SDK adds to every call, a ``Name: value`` a line (a gateway's key, say)."""

_CLIENT_LOGGERS = ("anthropic", "httpx2", "httpcore2")
"""The loggers of the SDK and of its HTTP client, which log each request's URL."""

_Answer = Literal["accepted", "refused"]
"""How the API answered a probe (see :meth:`ClaudeExtractor._answered`)."""

_Verdict = _Answer | Literal["failed"]
"""How the API answered a probe, or that the probe failed otherwise (see
:meth:`ClaudeExtractor.probe`)."""


class ProbeResult(NamedTuple):
    """What :meth:`ClaudeExtractor.probe` found and what it cost: ``verdict`` "accepted"
    (a refusal of the request was its messages' own), "refused" (the account's or the
    settings') or "failed" (it tells nothing), ``usage``, the tokens the harmless
    request spent, billed at full price, for the caller to record (none when it failed
    before any answer), and, when it failed, the first line of the ``error`` it failed
    with, for the caller to tell."""

    verdict: _Verdict
    usage: TokenUsage
    error: str | None = None


_MAX_DETAIL_CHARS = 200
_OUTPUT_BASE = 512
_OUTPUT_PER_MESSAGE = 100
"""The output budget asked for: room for a few facts per message of the batch."""

_ACTIONS: Final[Mapping[str, FactAction]] = {action: action for action in FACT_ACTIONS}
"""The valid ``action`` values, mapped to themselves with the :data:`FactAction` type."""

_PROBE_TEXT = "Hello."
"""The harmless message of a probe (see :meth:`ClaudeExtractor._settle`)."""

_ENTRY_PROBES = 12
"""Probes that look for the known entries a refusal is caused by, at most, per batch:
enough to find one refused entry among 2,048 (a batch shows at most 100), or two among
30 (see :meth:`ClaudeExtractor._entries_accepted`)."""

_OVER_BY_FIGURES = (
    "the API's figures put it over the context window with no entry shown even with the "
    "smallest output, and memvee's estimate of the rest of its request, scaled by them, within"
)
"""Why a lone message is blamed for its size, when the API's 400 tells it."""

_OVER_BY_PROBE = (
    "refused for its size with no entry shown, a harmless request in its place accepted"
)
"""Why a lone message is blamed for its size, when a probe tells it."""

_OVER_BESIDE_ENTRIES = (
    "refused for its size with no entry shown, after its request with entries was refused "
    "over the context window by figures putting the rest of it, scaled by memvee's estimate, "
    "within (no probe sent)"
)
"""Why a lone message is blamed for its size, when it was sent without its entries because
the figures of its request with them told it (:func:`_alone_may_tell`), no probe sent."""

_OVERLOADED_STATUSES = frozenset({529})
"""Statuses of an API too busy for any request: never the batch's fault."""

_RATE_LIMITED_STATUS = 429
"""The status of a request over one of the account's rate limits."""

_RETRIED_LATER = "retried later"
"""How the error of a batch every request is refused for ends (its whole note)."""

_ACCESS_REFUSED_STATUSES = frozenset({401, 403})
"""Statuses of a request whose credentials or their permissions are refused."""

_NOT_FOUND_STATUS = 404
"""The status of a request naming what the API does not find (a model, a path)."""


def cache_minimum(model: str) -> int:
    """The fewest prompt tokens ``model`` caches; shorter prefixes are silently not cached."""
    name = model.lower()
    if "3-haiku" in name or "3-5-haiku" in name:
        return 2048
    if "haiku" in name or "opus-4-5" in name or "opus-4-6" in name or "opus-5" in name:
        return 4096
    return 1024


class ClaudeExtractor(HarmlessRequests, CarriesCredentials):
    """Extracts knowledge entries with Claude, one forced tool call per batch.

    Each call is bounded by ``timeout`` seconds in total, SDK retries included, because
    the SDK obeys a server's ``retry-after`` without a cap; a failure whose ``retry-after``
    would outlast the call is raised at once with that wait. ``max_tokens`` caps the output
    budget, which otherwise grows with the batch. ``cache_prefix`` marks the static prefix
    for prompt caching (by default when it is long enough for the model to cache it).
    Failures surface as :class:`events.errors.ExtractionError`, never with the API key or
    request headers; the loggers of the SDK and its HTTP client are given a
    :class:`memvee._log_redaction.RedactSecrets` filter, as they log request URLs (a
    gateway's password included).
    """

    name = "claude"

    def __init__(
        self,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 8192,
        cache_prefix: bool | None = None,
    ) -> None:
        """Configure the extractor; without ``client`` one is built on first use. A
        ``model`` given is sent as it is: an empty one, or one with spaces around it or a
        control character, is refused with InvalidInputError, as is one ``MEMVEE_MODEL``
        names (without the spaces around it) that shows nothing or holds a control character.
        A setting of the wrong kind (a float ``max_tokens``, a str ``timeout``) is refused
        by name too, and so is a ``client`` no call could go through (the synchronous
        ``anthropic.Anthropic``, a class, a key given for a client).

        The built client uses the SDK's default construction, so ``ANTHROPIC_API_KEY``
        (without the whitespace around it: a key read from a file keeps its newline) and
        ``ANTHROPIC_BASE_URL`` apply. A base URL (that one, or the given client's) that is
        not an http(s) URL naming a host, and an API key (that one, or the given client's)
        that is blank or holds whitespace, a control character or a character outside
        ASCII, are refused here with InvalidInputError (never showing the key): every call
        would fail, and no batch is at fault. It is built lazily so that it
        belongs to the event loop that runs the extraction (one a loop: an extractor may
        serve several Memories), and closed with it. A ``client`` passed in is used on that
        loop too, and stays open: its pooled connections then belong to a loop that ends
        when the Memory closes, so give each Memory a client of its own, used nowhere else
        (with ``max_retries=0``, the first call of a Memory opened after another used the
        client fails on a stale connection; the SDK's retries hide it).
        """
        _check_kinds(timeout=timeout, max_retries=max_retries, max_tokens=max_tokens, model=model)
        if cache_prefix is not None and not isinstance(cache_prefix, bool):
            raise InvalidInputError(_wrong_kind("cache_prefix", cache_prefix, "a bool or None"))
        if not timeout > 0:
            raise InvalidInputError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0:
            raise InvalidInputError(f"max_retries must be >= 0, got {max_retries!r}")
        if max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {max_tokens!r}")
        # "" stands for the default, as an unset variable read with "" does
        chosen = model or os.environ.get(MODEL_ENV_VAR, "").strip()
        if chosen:
            check_model(chosen, "model" if model else MODEL_ENV_VAR)
        self.model: str = chosen or DEFAULT_MODEL
        # Python's numbers: they are sent with every call, which serialises no numpy scalar.
        self.timeout = timeout if type(timeout) in (int, float) else float(timeout)
        self.max_retries = int(max_retries)
        self.max_tokens = int(max_tokens)
        if cache_prefix is None:
            cache_prefix = prefix_tokens() >= cache_minimum(self.model)
        self.cache_prefix = cache_prefix
        protect_loggers(_CLIENT_LOGGERS)
        if client is not None:
            _check_client(client)
            base_url = getattr(client, "base_url", None)
            if isinstance(base_url, str | httpx2.URL):  # a stand-in (a mock) has none to check
                _check_base_url(str(base_url), "the client's base URL ", InvalidInputError)
            if isinstance(key := getattr(client, "api_key", None), str) and key:
                _check_api_key(key, "the client's API key", InvalidInputError)
        else:
            if (url := os.environ.get(BASE_URL_ENV_VAR)) is not None:
                _check_base_url(url, f"{BASE_URL_ENV_VAR}=", InvalidInputError)
            if key := os.environ.get(API_KEY_ENV_VAR, ""):
                _check_api_key(key.strip(), API_KEY_ENV_VAR, InvalidInputError)
        self._given = client
        self._built: dict[asyncio.AbstractEventLoop | None, anthropic.AsyncAnthropic] = {}
        self._building = threading.Lock()  # Memories extract on loops of their own threads

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client: the one given, or one built from the environment for the running
        event loop (an SDK client's connections belong to one loop, and an extractor may
        serve several Memories, each extracting on a loop of its own).

        Raises ExtractionError, a failure that may pass, when the environment cannot make
        one (see :func:`_build_client`): the configuration is at fault, not a batch.
        """
        if self._given is not None:
            return self._given
        return self._client_for(_running_loop())

    def check_credentials(self) -> None:
        """Raise :class:`MissingCredentialsError` when no call could authenticate: the
        client given carries no credentials, or, without one, the environment gives the
        SDK none (``ANTHROPIC_API_KEY``, ``ANTHROPIC_AUTH_TOKEN``, a profile, an
        ``Authorization`` or ``X-Api-Key`` among ``ANTHROPIC_CUSTOM_HEADERS``). A Memory
        and a re-extraction call it before writing anything, in a thread (a profile is
        read from disk), where every call would otherwise fail alike deep inside the SDK.
        """
        if self._given is not None:
            if issubclass(type(self._given), anthropic.AsyncAnthropic) and not (
                _client_has_credentials(self._given)
            ):
                raise MissingCredentialsError(
                    "the Claude API client given has no credentials: build it with an "
                    "api_key (or auth_token, or credentials)"
                )
            return
        if not _environment_has_credentials():
            raise MissingCredentialsError(
                f"Claude extraction has no credentials: set {API_KEY_ENV_VAR} (or "
                "ANTHROPIC_AUTH_TOKEN, or an Anthropic profile), or give ClaudeExtractor a "
                "client built with an api_key"
            )

    def carried_credentials(self) -> tuple[str, ...]:
        """The credentials of the client given, or of those built already (one a loop):
        none is built for the reading (a client read elsewhere than its loop would be
        built for that read alone, never closed)."""
        with self._building:
            clients = [self._given] if self._given is not None else list(self._built.values())
        return tuple(secret for client in clients for secret in client_secrets(client))

    async def prepare(self) -> None:
        """Build the SDK client of the running loop, unless it is built, in a thread: it
        takes a TLS context (hundreds of milliseconds), which would block the loop and
        every extraction on it, and be charged against the first batch's deadline."""
        if self._given is None and _running_loop() not in self._built:
            await asyncio.to_thread(self._client_for, _running_loop())

    def _client_for(self, loop: asyncio.AbstractEventLoop | None) -> anthropic.AsyncAnthropic:
        """The SDK client of ``loop``, built from the environment the first time."""
        with self._building:
            built = self._built.get(loop)
            if built is None:
                for closed in [k for k in self._built if k is not None and k.is_closed()]:
                    del self._built[closed]
                built = self._built[loop] = _build_client(self.max_retries)
            return built

    def request(self, batch: ExtractionBatch) -> dict[str, Any]:
        """The Messages API parameters for ``batch`` (also what a Message Batches request
        carries as its ``params``)."""
        system: TextBlockParam = {"type": "text", "text": SYSTEM_PROMPT}
        if self.cache_prefix:
            system["cache_control"] = {"type": "ephemeral"}
        turn: MessageParam = {"role": "user", "content": user_turn(batch)}
        return {
            "model": self.model,
            "max_tokens": self.output_budget(batch),
            "system": [system],
            "messages": [turn],
            "tools": [TOOL],
            "tool_choice": TOOL_CHOICE,
        }

    def output_budget(self, batch: ExtractionBatch) -> int:
        """The output tokens asked for: enough for the batch's facts, at most ``max_tokens``.

        A base, more per message, and more per word the user wrote: one long, dense
        message (a pasted biography) states more facts than a short one.
        """
        said = sum(estimate_tokens(m.content) for m in batch.messages if m.role == "user")
        wanted = _OUTPUT_BASE + _OUTPUT_PER_MESSAGE * len(batch.messages) + said // 2
        return min(self.max_tokens, wanted)

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """Ask Claude for the batch's durable facts about the user and read its answer.

        An empty batch is answered without a call. An answer cut at the batch's output
        budget is asked for once more with the whole of ``max_tokens``, so a dense batch
        is not failed for a budget that was a guess (both calls' tokens are counted). A
        refusal that may be the rest of the request's fault (the account's, the model's
        refusing every request, the known entries') is told from the batch's own by
        probes (:meth:`_settle`). Raises ExtractionError when the call fails or times out
        (``repeats`` set when the API refused the batch itself), and
        InvalidExtractionError when the answer cannot be read.
        """
        if not batch.messages:
            return ExtractionResult(facts=(), extractor=self.name, model=self.model)
        await self.prepare()
        return await self._extract(batch, settle=True)

    async def _extract(
        self, batch: ExtractionBatch, *, settle: bool, max_tokens: int | None = None
    ) -> ExtractionResult:
        """One extraction of ``batch`` (two calls for an answer cut at its budget). When
        ``settle`` is set, a refusal that may not be the messages' fault is settled by
        probes: the API's with a reason, and the model's; and a lone message the API's own
        figures put over the context window is blamed for its size at once, no probe sent
        (:func:`_oversized`: one failed attempt of it). ``max_tokens`` replaces the batch's
        output budget (never grown): the room a window left a lone message's input, when
        only the output asked put its request over, which is asked once."""
        request = self.request(batch)
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        spent = TokenUsage()
        answered = False
        try:
            response, spent = await self._answer(request, grow=max_tokens is None)
            answered = True
            result = self.read_answer(batch, response, budget=request["max_tokens"])
        except ExtractionError as failed:  # the cut answer's tokens were spent all the same
            failed.usage = (failed.usage or TokenUsage()).plus(spent)
            if not isinstance(failed, RejectedBatchError):
                raise
            refused = failed
        else:
            return result.spending(result.usage.plus(spent))
        if refused.over_the_window:
            weigh_over_the_window(refused, request, batch)
            room = _room_for_output(refused, batch)
            if room is not None and max_tokens is None:
                return await self._with_output(batch, refused, room, settle=settle)
            if settle and _never_fits(refused, request, batch):
                raise _oversized(refused, batch, _OVER_BY_FIGURES) from refused.__cause__
            if settle and _alone_may_tell(refused, request, batch):
                spent = refused.usage or TokenUsage()
                return await self._without_known(batch, refused, spent, probed=False)
        if settle and _may_be_elsewhere(refused, request, batch, answered=answered):
            return await self._settle(batch, request, refused)
        raise refused

    async def _answer(self, request: dict[str, Any], *, grow: bool) -> tuple[Message, TokenUsage]:
        """The API's answer to ``request``, asked once more with the whole ``max_tokens``
        when cut at a smaller budget and ``grow`` is set, and the tokens a cut answer
        spent (counted in the failure of the call after it)."""
        response = await self._call(request)
        cut = grow and response.stop_reason == "max_tokens"
        if not (cut and request["max_tokens"] < self.max_tokens):
            return response, TokenUsage()
        spent = _usage(response)
        request["max_tokens"] = self.max_tokens
        try:
            return await self._call(request), spent
        except ExtractionError as failed:
            failed.usage = (failed.usage or TokenUsage()).plus(spent)
            raise

    async def _with_output(
        self, batch: ExtractionBatch, refused: RejectedBatchError, room: int, *, settle: bool
    ) -> ExtractionResult:
        """``batch``'s lone message extracted asking ``room`` output tokens, the most its
        input leaves the context window, as ``refused`` (its input and its output budget
        over the window) tells: the message fits a request, with a smaller output; the
        refused call's tokens are counted with the result or the failure."""
        spent = refused.usage or TokenUsage()
        try:
            result = await self._extract(batch, settle=settle, max_tokens=room)
        except ExtractionError as failed:
            failed.usage = spent.plus(failed.usage or TokenUsage())
            raise
        return result.spending(result.usage.plus(spent))

    async def _settle(
        self, batch: ExtractionBatch, request: dict[str, Any], refused: RejectedBatchError
    ) -> ExtractionResult:
        """Whose fault the refusal of ``batch`` is, told by at most two probes (a probe
        the model refuses to answer counts as refused).

        The first probe is ``request`` with a harmless message in place of the batch's,
        all else kept (known entries included): accepted, the batch's messages are at
        fault (``refused`` is raised with ``probe_accepted``, for the engine to split
        the batch), unless a lone message's request was refused for its size with known
        entries shown: that message may fit without them, so it is extracted once more
        without them. A lone message refused for its size with no entry shown, weighing
        more than the rest of the request, is blamed for its size, not sent again:
        :class:`OversizedMessageError`, one failed attempt of the message (quarantined
        after ``max_attempts`` of them, as any lone message refused).
        Refused, and the batch shows no known entries, the account, the settings or the
        model are (a credit balance too low, a usage limit, a gateway's body
        limit below the fixed prompt for a 413, a model refusing whatever it is sent): a
        failure that may pass, blaming no message (:class:`EveryRequestRefusedError`).
        Otherwise a second probe leaves the known entries out too:
        accepted, the user's known entries trip the refusal (an entry a content filter
        blocks, or the entries' size for a request too large), and the batch is extracted
        once more without them (all of them for a prompt over the context window, which
        counts tokens, never refuses an entry for what it says), so no healthy
        message is blamed for the user's stored state; refused, every request is (the
        model's refusal too: a harmless message refused tells nothing against the batch). A
        probe that fails otherwise (the API busy, a timeout) tells nothing: a failure that
        may pass, blaming no message and keeping every entry shown (see :func:`_unsettled`).
        Every call's tokens are the batch's to count.
        """
        spent = refused.usage or TokenUsage()
        verdict, spent = await self._probed(probe_request(request, batch), refused, spent)
        sized_by_entries = refused.too_large and bool(batch.known)
        if verdict == "accepted":
            if sized_by_entries and len(batch.messages) == 1:  # fits alone, maybe
                return await self._without_known(batch, refused, spent)
            refused.usage = spent
            if _alone_too_large(refused, request, batch):
                raise _oversized(refused, batch, _OVER_BY_PROBE) from refused.__cause__
            refused.probe_accepted = True
            raise refused
        if batch.known:
            bare = dataclasses.replace(batch, known=())
            verdict, spent = await self._probed(probe_request(request, bare), refused, spent)
            if verdict == "accepted" and _over_the_window(refused):  # no entry's content
                return await self._without_known(batch, refused, spent)
            if verdict == "accepted":
                kept, spent = await self._entries_accepted(request, batch, refused, spent)
                return await self._without_known(batch, refused, spent, kept)
        if refused.too_large:
            whose = (
                "the API or a gateway in front of it refuses requests of any size, not the batch"
            )
        elif refused.reason is None:
            whose = "the model refuses every request (its policy or the settings), not the batch"
        else:
            whose = "the account or the settings are, not the batch"
        raise EveryRequestRefusedError(
            f"{refused} (a request without the batch's messages is refused too: {whose}; "
            f"{_RETRIED_LATER})",
            usage=spent,
            whole_note=_RETRIED_LATER,
        ) from refused.__cause__

    async def _entries_accepted(
        self,
        request: dict[str, Any],
        batch: ExtractionBatch,
        refused: RejectedBatchError,
        spent: TokenUsage,
    ) -> tuple[tuple[KnownEntry, ...], TokenUsage]:
        """The known entries of ``batch`` that the API accepts shown together (with a
        harmless message, as :meth:`_settle` probes), in their order, and ``spent`` with
        the probes' tokens, in at most :data:`_ENTRY_PROBES` probes. Entries whose turn
        never came are left out too; a probe that fails otherwise than by a refusal raises
        the failure that may pass of :func:`_unsettled`, so that no entry is left out on
        a guess (the batch is retried later showing them all).

        The suspects (refused when shown with the entries kept so far) are halved until
        the one the API refuses is alone: an accepted half is kept whole, and the other
        half of a refused one is set aside unprobed. Then everything set aside is probed
        at once: accepted, it is all kept; refused, it holds another refused entry and
        is searched the same way. One refused entry among N so costs at most
        ceil(log2 N) + 1 probes (6 among 30, 8 among 100).

        Facts extracted without an entry cannot update it (they come back new), so the
        fewer left out, the fewer entries of the user are repeated."""
        kept: list[KnownEntry] = []
        suspects = batch.known  # shown with ``kept``, refused: a refused entry is among them
        set_aside: list[KnownEntry] = []  # halves not probed since they were split off
        for _ in range(_ENTRY_PROBES):
            if len(suspects) > 1:
                half = len(suspects) // 2
                shown, rest = suspects[:half], suspects[half:]
            elif set_aside:  # the refused suspect is found alone, and left out
                shown, rest, set_aside = tuple(set_aside), (), []
            else:
                break
            probe = probe_request(request, dataclasses.replace(batch, known=(*kept, *shown)))
            verdict, spent = await self._probed(probe, refused, spent)
            if verdict == "accepted":
                kept.extend(shown)
                suspects = rest
            else:
                set_aside.extend(rest)
                suspects = shown
        return tuple(e for e in batch.known if e in kept), spent

    async def _without_known(
        self,
        batch: ExtractionBatch,
        refused: RejectedBatchError,
        spent: TokenUsage,
        kept: tuple[KnownEntry, ...] = (),
        *,
        probed: bool = True,
    ) -> ExtractionResult:
        """``batch`` extracted without the known entries that got its request refused,
        showing only ``kept`` (facts about the others then relate to none of them: each
        is new), its tokens counted with ``spent``. Refused again, the batch's messages
        are at fault too; unless the request, ``kept`` shown, was refused for its size: then
        the batch is extracted once more showing no entry, as the entries kept fit beside a
        harmless message but may not beside the batch's. A lone message, outweighing the
        rest of its request, refused for its size showing no entry is blamed for its size
        (:func:`_oversized`), told by a probe when ``probed`` (one was accepted), else by
        the figures of the refusal beside the entries."""
        left_out = [entry.entry_id for entry in batch.known if entry not in kept]
        _log.warning(
            "the Claude API refuses requests for user %r that show their known entries "
            "(%s), not without them: task %s is extracted without entries %s",
            batch.user_id,
            _refusal_told(refused),
            batch.task_id,
            ", ".join(left_out),
        )
        shown = dataclasses.replace(batch, known=kept)
        try:
            result = await self._extract(shown, settle=False)
        except ExtractionError as failed:
            failed.usage = spent.plus(failed.usage or TokenUsage())
            if not isinstance(failed, RejectedBatchError):
                raise
            again = failed
        else:
            return _leaving_out(result.spending(result.usage.plus(spent)), left_out)
        if kept and again.too_large:
            spent = again.usage or TokenUsage()
            return await self._without_known(batch, again, spent, probed=probed)
        request = self.request(shown)
        if _alone_too_large(again, request, shown):
            told = _OVER_BY_PROBE if probed else _OVER_BESIDE_ENTRIES
            raise _oversized(again, shown, told) from again.__cause__
        again.probe_accepted = True
        raise again

    async def _call(self, request: dict[str, Any], *, retries: int | None = None) -> Message:
        """One Messages API call, its failures as ExtractionErrors; the SDK retries it as
        the client does, or ``retries`` times."""
        client = self.client
        if retries is not None:
            client = client.with_options(max_retries=retries)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                retrying = _RetryWithin(_cut_at(deadline), client.max_retries)
                bounded = client.with_middleware(retrying)
                response = await bounded.messages.create(**request, timeout=self.timeout)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise ExtractionError(
                f"Claude extraction timed out after {self.timeout:g}s (model {self.model})"
            ) from exc
        except anthropic.AnthropicError as exc:
            secrets = client_secrets(client)
            cause = None if any(mentions(exc, secret) for secret in secrets) else exc
            error = api_error(exc, secrets)
            raise error from cause
        except TypeError as exc:
            if "authentication" not in str(exc):
                raise
            raise ExtractionError(
                "the Claude API client has no credentials: set ANTHROPIC_API_KEY, or pass a "
                "client with an api_key"
            ) from None
        except ValueError as exc:  # a success status over a body that is not JSON (a proxy)
            raise ExtractionError(
                f"Claude's answer could not be read as JSON ({type(exc).__name__}: "
                f"{first_line(exc)}); a gateway may have answered in its place"
            ) from exc
        if not isinstance(response, Message):  # a body of another content type, as text
            raise ExtractionError(
                f"Claude's answer was a {type(response).__name__}, not a message; a gateway "
                "may have answered in its place"
            )
        kind, stop_reason = getattr(response, "type", None), getattr(response, "stop_reason", None)
        if kind != "message" or stop_reason is None:  # the SDK builds a Message of any JSON
            shown = repr(kind)[:_MAX_DETAIL_CHARS]
            raise ExtractionError(
                f"Claude's answer was JSON of type {shown} with no stop_reason, not a message; "
                "a gateway may have answered in its place"
            )
        return response

    async def probe(self, batch: ExtractionBatch) -> ProbeResult:
        """How the API answers ``batch``'s request with a harmless message in place of its
        messages, all else kept: accepted, a refusal of the request was its messages'
        own; refused, the account's or the settings'; failed, it tells nothing (see
        :meth:`_settle`). For a refusal met elsewhere (a Message Batches request). With the
        tokens the probe spent (:class:`ProbeResult`), billed at full price: the caller
        records them, as :meth:`_settle` counts its probes' as the batch's; and, failed,
        how."""
        try:
            verdict, usage = await self._answered(probe_request(self.request(batch), batch))
        except ExtractionError as failed:
            return ProbeResult("failed", failed.usage or TokenUsage(), first_line(failed))
        return ProbeResult(verdict, usage)

    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        """Send ``batch``'s request asking for one output token, its answer not read, to
        tell whether the API answers at all (``batch`` a harmless message, after calls
        that failed): returns what it spent, or raises the ExtractionError of the call.
        It is sent once, never retried: one request, whose failure is the finding (a
        retry would sleep a ``retry-after`` in the caller's place). The model's refusal
        (``stop_reason`` "refusal") is no answer: it raises RejectedBatchError, a refusal
        that tells nothing of the API, as a 400 would."""
        await self.prepare()
        request = self.request(batch)
        request["max_tokens"] = 1
        answer = await self._call(request, retries=0)
        if answer.stop_reason == "refusal":
            raise RejectedBatchError(
                "Claude refused to answer a harmless request", usage=_usage(answer)
            )
        return _usage(answer)

    async def _probed(
        self, probe: dict[str, Any], refused: RejectedBatchError, spent: TokenUsage
    ) -> tuple[_Answer, TokenUsage]:
        """How the API answers ``probe``, sent to tell whose fault ``refused`` is, and
        ``spent`` with its tokens; a probe that fails otherwise than by a refusal raises
        the failure that may pass of :func:`_unsettled`."""
        try:
            verdict, used = await self._answered(probe)
        except ExtractionError as failed:
            raise _unsettled(refused, failed, spent) from failed
        return verdict, spent.plus(used)

    async def _answered(self, probe: dict[str, Any]) -> tuple[_Answer, TokenUsage]:
        """How the API answers ``probe`` (see :meth:`_settle`), and the tokens it spent:
        accepted, or refused (a 400, 413 or 422, or the model's refusal to answer). It is sent
        as a batch is (:meth:`_call`), so the SDK never sleeps on a ``retry-after`` past
        the call's end; one that fails otherwise (busy, a timeout, no connection) raises
        its ExtractionError, which keeps what the API said (a 529, the wait it asked)."""
        try:
            answer = await self._call(probe)
        except RejectedBatchError:  # 400, 413 or 422: refused however small the request
            return "refused", TokenUsage()
        refusal = answer.stop_reason == "refusal"
        return ("refused" if refusal else "accepted"), _usage(answer)

    def read_answer(
        self, batch: ExtractionBatch, response: Message, *, budget: int | None = None
    ) -> ExtractionResult:
        """The facts of Claude's answer to ``batch``, with its ids mapped back from aliases.

        Raises InvalidExtractionError (or RejectedBatchError for a refusal) with the tokens
        the answer spent when it cannot be used. ``budget`` is the ``max_tokens`` the
        answer was asked with (the batch's :meth:`output_budget` unless given).
        """
        stop_reason = getattr(response, "stop_reason", None)
        usage = _usage(response)
        if stop_reason == "refusal":
            raise RejectedBatchError("Claude refused to answer for this batch", usage=usage)
        if stop_reason == "max_tokens":
            budget = budget or self.output_budget(batch)
            raise InvalidExtractionError(
                f"Claude's answer was cut at max_tokens ({budget}); facts would be lost",
                usage=usage,
            )
        if stop_reason == "model_context_window_exceeded":
            raise InvalidExtractionError(
                "Claude's answer was cut where the model's context window ended; facts "
                "would be lost",
                usage=usage,
            )
        calls = [
            block
            for block in getattr(response, "content", None) or ()
            if getattr(block, "type", None) == "tool_use"
            and getattr(block, "name", None) == TOOL_NAME
        ]
        if not calls:
            raise InvalidExtractionError(
                f"Claude answered without calling {TOOL_NAME} (stop_reason={stop_reason!r})",
                usage=usage,
            )
        aliases = Aliases(batch)
        facts: list[ExtractedFact] = []
        try:
            for call in calls:
                facts.extend(_parse_facts(getattr(call, "input", None), aliases, len(facts)))
        except InvalidExtractionError as invalid:
            raise InvalidExtractionError(str(invalid), usage=usage) from None
        notes = {"response_id": str(getattr(response, "id", "") or "")}
        if stop_reason is not None:
            notes["stop_reason"] = str(stop_reason)
        return ExtractionResult(
            facts=_merge(facts),
            extractor=self.name,
            model=str(getattr(response, "model", None) or self.model),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            notes=notes,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )

    async def aclose(self) -> None:
        """Close the client this extractor built for the running event loop; a client
        passed in stays open."""
        with self._building:
            client = self._built.pop(_running_loop(), None)
        if client is not None:
            await client.close()


def _build_client(max_retries: int) -> anthropic.AsyncAnthropic:
    """An SDK client built from the environment, as the SDK builds one by default.

    Whatever the SDK's construction raises (a base URL it cannot parse, a profile named by
    ``ANTHROPIC_PROFILE`` that is not there), and a base URL it takes but no call could
    reach, is raised as an ExtractionError that may pass: every batch would fail alike, so
    none is blamed, and the run fails saying what to fix. Its text shows no credential.
    """
    secrets = configured_secrets()
    options: dict[str, Any] = {}
    if key := os.environ.get(API_KEY_ENV_VAR, "").strip():
        _check_api_key(key, API_KEY_ENV_VAR, ExtractionError)
        options["api_key"] = key  # a key read from a file keeps its newline: not sent so
    try:
        client = anthropic.AsyncAnthropic(max_retries=max_retries, **options)
    except Exception as exc:  # the SDK raises its parsers' errors (httpx2.InvalidURL) as they are
        cause = None if any(mentions(exc, secret) for secret in secrets) else exc
        problem = redact(f"{type(exc).__name__}: {first_line(exc)}", secrets)
        raise ExtractionError(
            f"the Claude API client cannot be built from its configuration ({problem}"
            f"{_base_url_note()}); fix it and run again"
        ) from cause
    _check_base_url(str(client.base_url), "the Claude API client's base URL ", ExtractionError)
    return client


_AUTH_HEADERS = frozenset({"authorization", "x-api-key"})
"""The request headers that carry a credential, lower-cased."""


def _client_has_credentials(client: anthropic.AsyncAnthropic) -> bool:
    """Whether ``client`` may authenticate its calls: a header its key, token or custom
    headers make, a credentials provider that makes one at each call, or an auth header
    set to ``anthropic.Omit()`` (the SDK's way to call a gateway that needs no key)."""
    headers = client.default_headers
    sent = any(
        k.lower() in _AUTH_HEADERS and (isinstance(v, anthropic.Omit) or (isinstance(v, str) and v))
        for k, v in headers.items()
    )
    return sent or getattr(client, "credentials", None) is not None


def _environment_has_credentials() -> bool:
    """Whether a client built from the environment (:func:`_build_client`) would send a
    credential, as the SDK resolves one: an API key, then its credentials chain (a token,
    a profile, workload identity), or a custom header carrying one. A chain that fails
    (a profile named but broken) is left to the build, which says what to fix."""
    if os.environ.get(API_KEY_ENV_VAR, "").strip():
        return True
    custom = os.environ.get(_CUSTOM_HEADERS_ENV_VAR, "")
    named = {line.partition(":")[0].strip().lower() for line in custom.split("\n")}
    if named & _AUTH_HEADERS:
        return True
    try:
        return default_credentials() is not None
    except Exception:  # raised again, and told, where the client is built
        return True


def _base_url_problem(url: str) -> str | None:
    """What makes ``url`` no base URL for the Claude API (``None``: nothing).

    The SDK takes a relative URL, another scheme or an empty host, and then every call
    fails as if the API were unreachable; one it cannot parse fails every call before it
    is sent.
    """
    if not url.strip():
        return "it is empty (unset it to call the Anthropic API)"
    if url != url.strip():
        return "it has whitespace around it"
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, ValueError) as exc:
        return f"it is not a URL ({first_line(exc)})"
    if parsed.scheme not in ("http", "https"):
        return "it is not an http:// or https:// URL"
    if not parsed.host:
        return "it names no host"
    if not _is_host(parsed.raw_host.decode("ascii", "replace")):
        return f"its host {parsed.host!r} is no host name (letters, digits, '-' and '.')"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"its port {parsed.port} is not from 1 to 65535"
    return None


_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""The characters of a host name as sent (an IDNA name is sent in its xn-- form)."""


def _is_host(host: str) -> bool:
    """Whether ``host``, as the URL sends it, is a host name or an IP address (httpx takes
    a space in a host and sends it percent-encoded, so no call could reach it)."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


def _check_kinds(
    *, timeout: object, max_retries: object, max_tokens: object, model: object
) -> None:
    """Refuse a setting of the wrong kind by name (a bool is no number here): each is sent
    with every call, or bounds it, so a float ``max_tokens`` or a str anywhere would fail
    every call, or fail untyped, rather than be blamed on a batch. Any real number is a
    ``timeout`` and any integer a count (numpy's as well as Python's)."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise InvalidInputError(_wrong_kind("timeout", timeout, "a number of seconds"))
    for name, value in (("max_retries", max_retries), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidInputError(_wrong_kind(name, value, "an int"))
    if model is not None and not isinstance(model, str):
        raise InvalidInputError(_wrong_kind("model", model, "a str or None"))


def _check_client(client: object) -> None:
    """Refuse, with :class:`InvalidInputError`, a ``client`` no call could go through: the
    synchronous SDK client, a class, or anything without a Messages API (a key, say).
    Every batch would fail on it as if the batch were at fault, and be quarantined. A
    stand-in (a mock) is taken, as an application's tests give one."""
    if isinstance(client, anthropic.Anthropic):
        given = "the synchronous anthropic.Anthropic, whose calls would block the event loop"
    elif isinstance(client, type):
        given = f"the class {client.__name__}: give an instance"
    elif not hasattr(client, "messages"):
        given = f"{type(client).__name__}, which has no Messages API"
    else:
        return
    raise InvalidInputError(f"client must be an anthropic.AsyncAnthropic or None, not {given}")


def _wrong_kind(name: str, value: object, expected: str) -> str:
    """Says ``name`` must be ``expected``, naming the type given by its module too unless
    it is a builtin: numpy's bool is also called ``bool``."""
    kind = type(value)
    named = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{name} must be {expected}, not {named}"


def _check_base_url(url: str, named: str, error: type[MemveeError]) -> None:
    """Raise ``error`` saying why ``url`` (``named`` so in its text) is refused as the
    API's base URL, if it is; a password the URL carries is never shown."""
    problem = _base_url_problem(url)
    if problem is not None:
        raise error(f"{named}{redact(url, userinfo(url))!r} is refused: {problem}")


def _check_api_key(key: str, named: str, error: type[MemveeError]) -> None:
    """Raise ``error`` if ``key`` (``named`` so in its text) cannot be an API key: a blank
    one, or one holding whitespace, a control character or a character outside printable
    ASCII, which no request header can carry (every call would fail as if the API were
    unreachable). The key itself is never shown."""
    if not key:
        problem = "it is blank"
    elif any(not "!" <= char <= "~" for char in key):
        problem = "it holds whitespace, a control character or a character that is not ASCII"
    else:
        return
    raise error(f"{named} is refused: {problem}; fix it and run again")


def _base_url_note() -> str:
    """Where the SDK took its base URL from, when the environment set it: the likely culprit."""
    url = os.environ.get(BASE_URL_ENV_VAR)
    if url is None:
        return ""
    return f"; {BASE_URL_ENV_VAR}={redact(url, userinfo(url))!r}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this call, ``None`` outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def probe_request(request: dict[str, Any], batch: ExtractionBatch) -> dict[str, Any]:
    """``request`` (model, system prompt, tools, ``max_tokens``) with a user turn that
    shows ``batch``'s known entries and a harmless message in place of its messages."""
    last = batch.messages[-1]
    harmless = BatchMessage("probe", "user", _PROBE_TEXT, last.sent_at)
    turn = user_turn(dataclasses.replace(batch, messages=(harmless,)))
    return {**request, "messages": [{"role": "user", "content": turn}]}


def _may_be_elsewhere(
    refused: RejectedBatchError, request: dict[str, Any], batch: ExtractionBatch, *, answered: bool
) -> bool:
    """Whether the refusal of ``batch`` may be the rest of the request's fault, for probes
    to settle: the API's refusal with a reason (the account's, the settings'); a model's
    refusal (of the known entries shown, or of every request: a policy, a model that
    refuses all it is sent); and a refusal for size (a 413, a prompt over the context
    window) of a lone message or of a request whose messages weigh no more than the rest
    of it, as a body limit below the fixed prompt refuses every request (a larger one is
    split, smaller, by the engine)."""
    if refused.too_large:
        return len(batch.messages) == 1 or outweighed(request, batch)
    return refused.reason is not None or answered


def outweighed(request: dict[str, Any], batch: ExtractionBatch) -> bool:
    """Whether ``batch``'s messages weigh no more than the rest of ``request`` (the fixed
    prompt, the tool, the known entries): a body limit that refuses such a request as
    too large refuses the request without them about as surely, so the messages are not
    what makes it too large."""
    return _size(request) <= 2 * _size(probe_request(request, batch))


def _size(request: dict[str, Any]) -> int:
    """About the bytes of ``request``'s body."""
    return len(json.dumps(request, ensure_ascii=False, default=str).encode())


def _refusal_told(refused: RejectedBatchError) -> str:
    """What refused a request, for a log line: the API's reason, a prompt over the
    model's context window, a body over a size limit (HTTP 413, which gives none), or
    else the model's refusal to answer."""
    if refused.reason is not None:
        return refused.reason
    if refused.context_tokens is not None and refused.output_tokens is not None:
        return (
            f"HTTP 400: the prompt and the output asked were over the model's context window "
            f"({refused.prompt_tokens} tokens > {refused.context_tokens})"
        )
    if refused.context_tokens is not None:
        return (
            f"HTTP 400: the prompt was over the model's context window "
            f"({refused.prompt_tokens} tokens > {refused.context_tokens})"
        )
    if _over_the_window(refused):
        return "HTTP 400: the prompt was over the model's context window"
    if refused.too_large:
        return "HTTP 413: the request was over a body size limit"
    return "the model refused to answer"


def _unsettled(
    refused: RejectedBatchError, failed: ExtractionError, spent: TokenUsage
) -> ExtractionError:
    """The failure that may pass for ``refused`` when a probe asking whose fault it is
    failed otherwise than by a refusal (``failed``): it tells nothing, so no message is
    blamed (:class:`ProbeFailedError`, carrying ``refused`` for a later harmless request to
    settle, or the probe's own ExtractorOverloadedError) and the batch is retried later, no
    sooner than the probe's ``retry-after`` asks."""
    told = f"{refused} (a request probing whose fault it is failed too: {failed}; retried later)"
    if isinstance(failed, ExtractorOverloadedError):
        return ExtractorOverloadedError(told, usage=spent, retry_after=failed.retry_after)
    return ProbeFailedError(told, usage=spent, retry_after=failed.retry_after, refusal=refused)


def _usage(response: object) -> TokenUsage:
    """The tokens an answer says it spent; a count that is no count (text, negative, past
    any call's) is unknown rather than a failure: the SDK builds its answer unchecked."""
    usage = getattr(response, "usage", None)

    def count(name: str) -> int | None:
        value = getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKENS:
            return value
        return None

    return TokenUsage(
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
        cache_read_tokens=count("cache_read_input_tokens"),
        cache_write_tokens=count("cache_creation_input_tokens"),
    )


def _parse_facts(payload: object, aliases: Aliases, offset: int = 0) -> list[ExtractedFact]:
    """The facts of one ``record_knowledge`` input, or InvalidExtractionError.

    Only the shape is checked here. A missing or null ``action`` means "new" and a null or
    blank ``target_entry_id`` means none, since models often spell an absent optional
    field so; what the values mean is for the engine to judge (it records a "same", an
    "update" or an "invalidate" without a target as new, and drops a fact whose text is
    blank, noting each repair). A target ``f1``, ``f2``... names an earlier fact of the
    input, which comes after ``offset`` facts of earlier inputs.
    """

    def invalid(problem: str) -> InvalidExtractionError:
        return InvalidExtractionError(f"Claude's {TOOL_NAME} input is invalid: {problem}")

    if not isinstance(payload, Mapping):
        raise invalid(f"expected an object, got {type(payload).__name__}")
    items = payload.get("facts")
    if not isinstance(items, list):
        raise invalid(f"'facts' must be a list, got {type(items).__name__}")
    facts: list[ExtractedFact] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise invalid(f"facts[{index}] must be an object, got {type(item).__name__}")
        text = item.get("text")
        if not isinstance(text, str):
            raise invalid(f"facts[{index}].text must be a string")
        ids = item.get("source_message_ids")
        if not _is_string_list(ids) or not ids:
            raise invalid(f"facts[{index}].source_message_ids must be a non-empty list of strings")
        raw_action = item.get("action")
        if raw_action is None:
            action: FactAction | None = "new"
        else:
            action = _ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
        if action is None:
            shown = repr(raw_action)[:_MAX_DETAIL_CHARS]
            raise invalid(f"facts[{index}].action must be one of {FACT_ACTIONS}, got {shown}")
        target = item.get("target_entry_id")
        if target is not None and not isinstance(target, str):
            raise invalid(f"facts[{index}].target_entry_id must be a string")
        if target is not None and not target.strip():
            target = None
        sources = tuple(dict.fromkeys(aliases.message(i) for i in ids))
        place = None if target is None else aliases.fact(target, index)
        earlier = None if place is None else offset + place
        entry = None if target is None or place is not None else aliases.entry(target)
        facts.append(ExtractedFact(" ".join(text.split()), sources, action, entry, earlier))
    return facts


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _merge(facts: Sequence[ExtractedFact]) -> tuple[ExtractedFact, ...]:
    """Facts with the same text, action and target become one fact citing all their
    messages, at the first one's place; facts that differ in action or target stay apart
    for the engine to judge. A fact naming an earlier fact of the answer names it at its
    place among the merged facts."""
    merged: dict[tuple[str, FactAction, str | None, int | None], dict[str, None]] = {}
    positions: dict[tuple[str, FactAction, str | None, int | None], int] = {}
    place: list[int] = []  # each fact's place among the merged ones
    for fact in facts:
        earlier = None if fact.target_fact is None else place[fact.target_fact]
        key = (fact.text, fact.action, fact.target_entry_id, earlier)
        place.append(positions.setdefault(key, len(positions)))
        merged.setdefault(key, {}).update(dict.fromkeys(fact.source_message_ids))
    return tuple(
        ExtractedFact(text, tuple(ids), action, target, earlier)
        for (text, action, target, earlier), ids in merged.items()
    )


def api_error(exc: anthropic.AnthropicError, secrets: Sequence[str]) -> ExtractionError:
    """The ExtractionError for a failed API call: status, error type and request id, never
    ``secrets`` (taken out before any text is cut, so no part of one is left); one that
    refused the request itself (400, 413, 422) repeats, a 413 or a 400 saying the prompt
    is too long (over the model's context window) as a request too large; a 404 (a model
    or path not found) is :class:`ExtractorNotFoundError`, the API's answer to every
    request, not an outage."""
    kind = type(exc).__name__
    if isinstance(exc, anthropic.APIStatusError):
        parts = [f"Claude API returned HTTP {exc.status_code} ({kind}"]
        if exc.type:
            parts.append(f", {exc.type}")
        parts.append(")")
        message = redact(exc.api_message or "", secrets)
        if message:
            parts.append(f": {message[:_MAX_DETAIL_CHARS]}")
        if exc.request_id:
            parts.append(f" [request-id {exc.request_id}]")
        wait = retry_after(exc.response.headers)
        if wait is not None:
            parts.append(f"; retry after {wait:g} s")
        text = redact("".join(parts), secrets)
        if exc.status_code == 413:  # split, the batch is smaller; small, it is probed
            return RejectedBatchError(text, too_large=True)
        over = over_the_context(text, message) if exc.status_code == 400 else None
        if over is not None:
            return over
        if exc.status_code in INPUT_REFUSED_STATUSES:
            reason = redact(f"HTTP {exc.status_code} {exc.type}: {message}", secrets)
            return RejectedBatchError(text, reason=reason)
        if exc.status_code in _OVERLOADED_STATUSES:
            return ExtractorOverloadedError(text, retry_after=wait)
        if exc.status_code == _RATE_LIMITED_STATUS:
            return ExtractorRateLimitedError(text, retry_after=wait)
        if exc.status_code in _ACCESS_REFUSED_STATUSES:
            return ExtractorAccessRefusedError(text, retry_after=wait)
        if exc.status_code == _NOT_FOUND_STATUS:
            return ExtractorNotFoundError(text, retry_after=wait)
        return ExtractionError(text, retry_after=wait)
    if isinstance(exc, anthropic.APITimeoutError):
        text = f"Claude API request timed out ({kind}) after the SDK's retries"
    elif isinstance(exc, anthropic.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unknown cause"
        text = f"could not reach the Claude API ({kind}: {cause}) after the SDK's retries"
    else:
        text = f"Claude API call failed ({kind}): {redact(str(exc), secrets)[:_MAX_DETAIL_CHARS]}"
    return ExtractionError(redact(text, secrets))


_PROMPT_TOO_LONG = re.compile(
    r"\s*prompt is too long(?::\s*(\d+)\s*tokens\s*>\s*(\d+)\s*maximum)?\.?\s*",
    re.IGNORECASE,
)
"""The API's whole 400 message for a prompt over the model's context window, with the
prompt's tokens and the window's when it names them."""

_INPUT_AND_OUTPUT_OVER = re.compile(
    r"\s*input length and `?max_tokens`? exceed context limit:\s*(\d+)\s*\+\s*(\d+)\s*>\s*"
    r"(\d+)\s*,\s*decrease input length or `?max_tokens`? and try again\.?\s*",
    re.IGNORECASE,
)
"""The API's whole 400 message for a prompt that fits the context window but leaves it
too little for the output asked (``max_tokens``): the input's tokens, the output's, the
window's."""


def over_the_context(text: str, message: str) -> RejectedBatchError | None:
    """The refusal, told as ``text``, of a request the API's whole ``message`` says is
    over the model's context window, or None when it says anything else: a request too
    large, as a 413 is (the engine splits the batch and learns the size), with the
    prompt's tokens and the most the window leaves it when the message names them. It is
    no refusal of the input's content.

    The message must be one of the API's two context-window answers from end to end: a
    message that merely quotes one (a refusal echoing the user's text) is the API's
    refusal of that input, never figures to learn a size from. Over with the output
    asked (``max_tokens``, which the window holds too), the output counts in the
    request's tokens: a batch's output budget grows with its messages as its input does."""
    prompt_over = _PROMPT_TOO_LONG.fullmatch(message)
    if prompt_over is not None:
        prompt, context = prompt_over.groups()
        if prompt is None or context is None:
            return RejectedBatchError(text, too_large=True, over_the_window=True)
        return RejectedBatchError(
            text,
            too_large=True,
            over_the_window=True,
            prompt_tokens=int(prompt),
            context_tokens=int(context),
        )
    with_output = _INPUT_AND_OUTPUT_OVER.fullmatch(message)
    if with_output is None:
        return None
    given, output, window = (int(figure) for figure in with_output.groups())
    return RejectedBatchError(
        text,
        too_large=True,
        over_the_window=True,
        prompt_tokens=given + output,
        context_tokens=window,
        output_tokens=output,
    )


def weigh_over_the_window(
    refused: RejectedBatchError,
    request: dict[str, Any],
    batch: ExtractionBatch,
    *,
    output_grows: bool = True,
) -> None:
    """Set on ``refused``, a refusal of ``request`` (``batch``'s) for a prompt over the
    context window, memvee's estimates of the request's prompt tokens and of the part of
    them every request has (the system prompt, the tool, the turn's text with no message
    or entry), each with the output asked when the window held that too: what the API's
    count of the excess is weighed against. The output asked is the batch's budget, which
    ``output_grows`` with its messages past a base; a Message Batches request asks the
    whole ``max_tokens`` (``output_grows`` False), every request of it."""
    empty = dataclasses.replace(batch, messages=(), known=())
    fixed = {**request, "messages": [{"role": "user", "content": user_turn(empty)}]}
    refused.estimated_tokens = _estimated_prompt(request)
    refused.fixed_tokens = _estimated_prompt(fixed)
    if refused.output_tokens is not None:  # the output asked was over the window too
        output = refused.output_tokens
        refused.estimated_tokens += output
        refused.fixed_tokens += min(output, _OUTPUT_BASE) if output_grows else output


def _estimated_prompt(request: dict[str, Any]) -> int:
    """Memvee's estimate of the prompt tokens of ``request`` (its compact JSON as text)."""
    body = json.dumps(request, ensure_ascii=False, separators=(",", ":"), default=str)
    return estimate_tokens(body)


def _never_fits(
    refused: RejectedBatchError, request: dict[str, Any], batch: ExtractionBatch
) -> bool:
    """Whether the API's figures in ``refused`` (weighed by :func:`weigh_over_the_window`)
    show the lone message of ``batch``, shown with no known entry and weighing more than
    the rest of its request (:func:`_outweighs_the_rest`), over the context window even
    with the smallest output asked, while the fixed part alone fits (else every request
    may be refused, for probes to tell). Only the API's own count of a request without
    entries puts the message over: an estimate scaled by a request's count with entries
    would weigh the message by the entries' script (see :func:`_alone_may_tell`). That
    the fixed part fits is memvee's estimate scaled by the API's figures, a veto only:
    judged over, the refusal is left to probes. Told, the message is blamed for one
    failed attempt, never quarantined at once: a passing fault may carry such figures."""
    prompt, window = refused.prompt_tokens, refused.context_tokens
    estimated, fixed = refused.estimated_tokens, refused.fixed_tokens
    if batch.known or None in (prompt, window, estimated, fixed):
        return False
    assert prompt is not None and window is not None and estimated and fixed is not None
    if fixed * prompt > window * estimated or not _outweighs_the_rest(request, batch):
        return False
    output = refused.output_tokens
    smallest_output = 0 if output is None else min(output, _OUTPUT_BASE)
    return prompt - (output or 0) + smallest_output > window


def _alone_may_tell(
    refused: RejectedBatchError, request: dict[str, Any], batch: ExtractionBatch
) -> bool:
    """Whether the lone message of ``batch``, weighing more than the rest of its request
    and refused over the context window beside its known entries, is to be sent without
    them at once, no probe asked: the API's figures put the fixed part within the window,
    and a prompt over it is never refused for an entry's content, so only the message's
    own request, its refusal's figures, tells whether it fits any request."""
    prompt, window = refused.prompt_tokens, refused.context_tokens
    estimated, fixed = refused.estimated_tokens, refused.fixed_tokens
    if not batch.known or None in (prompt, window, estimated, fixed):
        return False
    assert prompt is not None and window is not None and estimated and fixed is not None
    return fixed * prompt <= window * estimated and _outweighs_the_rest(request, batch)


def _alone_too_large(
    refused: RejectedBatchError, request: dict[str, Any], batch: ExtractionBatch
) -> bool:
    """Whether ``refused``, the refusal of ``request`` for its size while a request
    without ``batch``'s lone message fits, blames the message for its size
    (:func:`_oversized`), with no resend nor retry without entries: no known entry is
    shown, the message outweighs the rest of its request, and it is not its output alone
    that put it over the window (a smaller ``max_tokens`` fits, :func:`_room_for_output`
    with a useful output or not)."""
    if not refused.too_large or batch.known or not _outweighs_the_rest(request, batch):
        return False
    prompt, window, output = refused.prompt_tokens, refused.context_tokens, refused.output_tokens
    if prompt is None or window is None or output is None:
        return True
    return prompt - output + _OUTPUT_BASE > window


def _room_for_output(refused: RejectedBatchError, batch: ExtractionBatch) -> int | None:
    """The output tokens a context window leaves ``batch``'s lone message, when only the
    output asked put its request over the window (``refused`` names the input's tokens
    and the output's): at least :data:`_OUTPUT_BASE`, less than asked; None otherwise."""
    prompt, window, output = refused.prompt_tokens, refused.context_tokens, refused.output_tokens
    if len(batch.messages) != 1 or prompt is None or window is None or output is None:
        return None
    room = window - (prompt - output)
    return room if _OUTPUT_BASE <= room < output else None


def _outweighs_the_rest(request: dict[str, Any], batch: ExtractionBatch) -> bool:
    """Whether ``batch`` is a lone message that weighs more than the rest of ``request``
    with no known entry shown (the fixed prompt, the tool), as :func:`outweighed` judges:
    only such a message, refused for its size where a request without it fits, is blamed
    for its size with no further request (:func:`_oversized`). A refusal for size of a
    smaller one tells too little against it (its known entries may be at fault): it is
    probed and tried without them first."""
    if len(batch.messages) != 1:
        return False
    bare = dataclasses.replace(batch, known=())
    alone = {**request, "messages": [{"role": "user", "content": user_turn(bare)}]}
    return not outweighed(alone, bare)


def _oversized(
    refused: RejectedBatchError, batch: ExtractionBatch, why: str
) -> OversizedMessageError:
    """``refused``, the refusal of ``batch``'s lone message for its size where a request
    without it fits (``why`` says how that is known), blamed on the message and logged
    with its user, task and message: one failed attempt of it, not sent again now (a
    passing fault may refuse it so too), quarantined after ``max_attempts`` of them."""
    message = batch.messages[0].message_id
    _log.warning(
        "the Claude API refuses message %s of user %r (task %s) for its size (%s): %s, so "
        "it is blamed for one failed attempt",
        message,
        batch.user_id,
        batch.task_id,
        _refusal_told(refused),
        why,
    )
    return OversizedMessageError(
        f"{refused} (the message is blamed for its size, one failed attempt: {why})",
        usage=refused.usage,
        probe_accepted=True,
        too_large=True,
        **refused.size_figures(),
    )


def _leaving_out(result: ExtractionResult, left_out: list[str]) -> ExtractionResult:
    """``result`` noting the known entries it was extracted without (``left_out``)."""
    return dataclasses.replace(
        result, notes={**result.notes, "known_entries_left_out": ",".join(left_out)}
    )


def _over_the_window(refused: RejectedBatchError) -> bool:
    """Whether ``refused`` is the API's 400 for a prompt over the model's context window
    (as :func:`over_the_context` read it when the API answered)."""
    return refused.too_large and refused.over_the_window


class _RetryWithin(anthropic.Middleware):
    """Stops the SDK's retries at a failed attempt whose wait (its ``retry-after``, or the
    SDK's own backoff without one) would outlast ``ends`` (the loop time at which this
    call or the engine's timeout cuts it): the call would end as a timeout, having waited
    in vain, and what the API said would be lost (a 529 blamed on the batch as a
    timeout, the wait a 429 asked for). The attempt's error is raised at once instead,
    which the user's next run then keeps (the SDK's own ``x-should-retry`` answer is
    how it is told)."""

    def __init__(self, ends: float | None, max_retries: int) -> None:
        self._ends = ends
        self._max_retries = max_retries

    async def handle_async(
        self, request: anthropic.APIRequest, call_next: anthropic.AsyncCallNext
    ) -> Any:
        response = await call_next(request)
        answer = response.http_response
        if answer.is_success or request.retries_taken >= self._max_retries:
            return response
        wait = retry_after(answer.headers)
        if wait is None:
            wait = min(_SDK_FIRST_BACKOFF * 2**request.retries_taken, _SDK_LONGEST_BACKOFF)
        ends = self._ends
        if ends is not None and asyncio.get_running_loop().time() + wait >= ends:
            answer.headers["x-should-retry"] = "false"
        return response


_SDK_FIRST_BACKOFF, _SDK_LONGEST_BACKOFF = 0.5, 8.0
"""The SDK's backoff between retries without a ``retry-after``: doubling from the first,
at most the longest (its jitter only shortens it)."""


def _cut_at(deadline: asyncio.Timeout) -> float | None:
    """The loop time at which this call is cut: by ``deadline`` or by the engine's
    ``extraction_timeout``, whichever comes first. An engine deadline already past is
    another call's, seen by a task an extractor started during it: not this one's."""
    now = asyncio.get_running_loop().time()
    cuts = [deadline.when(), extraction_deadline.get()]
    return min((t for t in cuts if t is not None and t > now), default=None)


_LONGEST_RETRY_AFTER = 3600.0
"""The longest wait a ``retry-after`` is taken at (a larger one is read as this)."""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a response's ``retry-after-ms`` or ``retry-after`` header asks to wait
    (a number of seconds, or an HTTP date), at most an hour; ``None`` without one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                continue
            seconds = (when - datetime.now(UTC)).total_seconds()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), _LONGEST_RETRY_AFTER)
    return None
