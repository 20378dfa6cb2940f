"""How a Message Batch request that did not succeed is told as a failure."""

from __future__ import annotations

from types import SimpleNamespace

from events import RejectedBatchError
from memvee._bulk.outcomes import _failure


def _errored(error_type: str, message: str) -> SimpleNamespace:
    """A request's ``errored`` result, as Message Batches reports it."""
    detail = SimpleNamespace(type=error_type, message=message)
    return SimpleNamespace(type="errored", error=SimpleNamespace(error=detail))


def test_an_errored_request_whose_prompt_is_over_the_window_is_a_request_too_large() -> None:
    """As the Messages API's 400 is: split and its size learned, with the figures named,
    not a refusal with a reason by which every request refused so is taken for the
    account's, nor a message blamed for its content."""
    outcome = _errored(
        "invalid_request_error", "prompt is too long: 215047 tokens > 200000 maximum"
    )
    failure = _failure(outcome, (), frozenset())
    assert isinstance(failure, RejectedBatchError)
    assert failure.too_large and failure.over_the_window and failure.reason is None
    assert (failure.prompt_tokens, failure.context_tokens) == (215047, 200000)
    refused_all = frozenset({"prompt is too long: 215047 tokens > 200000 maximum"})
    assert _failure(outcome, (), refused_all).too_large  # type: ignore[attr-defined]


def test_an_errored_request_quoting_the_phrase_in_its_refusal_keeps_its_reason() -> None:
    message = "messages: input refused by policy: 'it says prompt is too long'"
    failure = _failure(_errored("invalid_request_error", message), (), frozenset())
    assert isinstance(failure, RejectedBatchError)
    assert not failure.too_large and failure.reason == message
