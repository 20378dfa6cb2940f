"""What the Anthropic API answered a bulk run, and what it tells: a Message Batch's results
read, each result classified (refused as invalid, refused by the model, a server error) into
the failure kept for its request, and failed API calls judged (may pass, key refused, may
have made the batch all the same)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anthropic
import httpx2

from events import ExtractionError, RejectedBatchError, TokenUsage
from events.errors import EveryRequestRefusedError, first_line
from events.harmless import Answered, CheckVerdict, FailedTellingNothing
from memvee._secrets import redact
from memvee.extractors._claude import ProbeResult, over_the_context


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


async def _batches_not_found(client: anthropic.AsyncAnthropic) -> anthropic.NotFoundError | None:
    """The 404 the list of Message Batches (a page of one) is answered with through
    ``client``, or ``None`` when it answers. Asked after a 404 on one batch: the API answers
    ``not_found_error`` for a batch it does not know and for a path it does not serve alike,
    so only a list that answers says the batch is unknown; a list not found too says the
    base URL's path is wrong, and the batch may still run at the API. Any other failure of
    the list is raised."""
    try:
        await client.messages.batches.list(limit=1)
    except anthropic.NotFoundError as error:
        return error
    return None


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
    refusal, or each request's own, which a probe tells). A prompt over the model's context
    window is no such reason: it is the request's size, split by the run, and a probe per
    request refused so (each names its own tokens) was billed for nothing."""
    if any(getattr(o, "type", None) == "succeeded" for o in outcomes.values()):
        return {}
    refused: dict[str, str] = {}
    for custom_id, outcome in outcomes.items():
        reason = _refusal(outcome)
        if reason is not None and over_the_context(reason, reason) is None:
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


def _failure(outcome: Any, secrets: Sequence[str], refused_all: frozenset[str]) -> ExtractionError:
    """The error of a request that did not succeed: one the API refused as invalid (too
    long, malformed) repeats, unless its reason is one of ``refused_all`` (the API
    refused every request so: retried later, no message blamed); an expired, canceled or
    errored one (overloaded, a server error) may pass. One refused for its size, a prompt
    over the model's context window (as the Messages API's 400 says it) or a body over a
    size limit (``request_too_large``, the Messages API's 413), is a request too large, as
    it is there, however many were refused so: the run sends its messages again smaller
    and learns the size (:func:`split_again`); a lone message refused so with no entry
    shown repeats, and is left out."""
    detail = getattr(getattr(outcome, "error", None), "error", None)
    text = redact(f"{outcome.type}: {getattr(detail, 'message', '') or outcome.type}", secrets)
    if getattr(detail, "type", None) == "request_too_large":
        return RejectedBatchError(text, too_large=True)
    reason = _refusal(outcome)
    over = over_the_context(text, redact(reason, secrets)) if reason is not None else None
    if over is not None:
        return over
    if reason is not None and reason not in refused_all:
        return RejectedBatchError(text, reason=reason)
    if reason is not None:
        text += " (the API refused every request so; retried later, no message blamed)"
    return ExtractionError(text)


def split_again(error: ExtractionError, request: Mapping[str, Any]) -> bool:
    """Whether a kept ``request`` that failed with ``error`` is sent again smaller rather
    than blamed: refused for its size (over the model's context window, a 413) while it
    held several messages, or one shown beside known entries, which a request showing
    none may fit (as the Messages API path extracts a lone message without them), or one
    whose input fits the window with a smaller output asked (``smaller_output``, set by
    :meth:`Recorder.record`: a live call asks its output budget, not the whole
    ``max_tokens`` a Message Batches request asks)."""
    if not (isinstance(error, RejectedBatchError) and error.too_large):
        return False
    if error.smaller_output is not None:
        return True
    return len(request["messages"]) > 1 or bool(request.get("known"))


def smaller_output(refused: RejectedBatchError, budget: int) -> int | None:
    """``budget``, the output a live call asks, when the model's context window refused
    ``refused`` for the output asked beside its input (its figures name both: "input
    length and max_tokens exceed context limit"), ``budget`` is less, and the input
    leaves the window room for it (the API's own count of the input, exact: the same
    request asking less is the same input); ``None`` otherwise."""
    prompt, window, output = refused.prompt_tokens, refused.context_tokens, refused.output_tokens
    if prompt is None or window is None or output is None or budget >= output:
        return None
    return budget if prompt - output + budget <= window else None


def fixed_fills_the_window(refused: RejectedBatchError, output: int) -> bool:
    """Whether the part of the prompt every request has (``fixed_tokens``, as
    :func:`weigh_over_the_window` estimates it), scaled to the API's count as the request's
    estimate is to the API's count of it, with ``output`` asked when the window counted
    the output too, reaches the model's context window: then no request fits, whatever
    message it carries, and a refusal over the window blames none."""
    prompt, window = refused.prompt_tokens, refused.context_tokens
    estimated, fixed = refused.estimated_tokens, refused.fixed_tokens
    if prompt is None or window is None or estimated is None or fixed is None:
        return False
    asked = refused.output_tokens or 0  # the figures count it in both, estimates too
    given, estimated_input, fixed_input = prompt - asked, estimated - asked, fixed - asked
    if estimated_input <= 0:
        return False
    extra = output if refused.output_tokens is not None else 0
    return fixed_input * given + extra * estimated_input >= window * estimated_input
