"""One readable line per event of a user's log, for people (the JSON keeps the payload)."""

from __future__ import annotations

from typing import Any, assert_never

from events import (
    EVENT_CLASSES,
    Answered,
    Busy,
    CheckVerdict,
    CredentialsRefused,
    FailedTellingNothing,
    ModelOrPathNotFound,
    Outage,
    UserLog,
)

__all__ = ["EVENT_TYPES", "describe"]

EVENT_TYPES: frozenset[str] = frozenset(cls.__name__ for cls in EVENT_CLASSES)
"""The names of the events a user's log can hold (what ``memvee log --type`` accepts)."""


def describe(event: Any) -> str:
    """What ``event`` did, in one line: ids cut to 8 characters, texts as they were said."""
    e = event
    tail = f" ({len(e.message_ids)} messages)" if hasattr(e, "message_ids") else ""
    match e:
        case UserLog.Registered():
            return f"log opened for {e.user_id!r}"
        case UserLog.MessageAdded():
            speaker = e.role if not e.name else f"{e.name} ({e.role})"
            return f"#{e.seq} {speaker}: {_flat(e.content)}"
        case UserLog.ProcessingRequested():
            return f"task {e.task_id[:8]} requested ({e.trigger})"
        case UserLog.ProcessingStarted():
            return (
                f"task {e.task_id[:8]} ({e.trigger}) batch {e.batch} claims "
                f"{len(e.message_ids)} messages"
            )
        case UserLog.KnowledgeExtracted():
            texts = "; ".join(entry["text"] for entry in e.entries) or "no entries"
            return f"task {e.task_id[:8]} by {e.extractor}: {_flat(texts)}"
        case UserLog.BatchFailed():
            return f"task {e.task_id[:8]} batch failed, splitting it: {_flat(e.error)}"
        case UserLog.MessagesQuarantined():
            return (
                f"task {e.task_id[:8]} quarantined{tail} after {e.attempts} attempts: "
                f"{_flat(e.error)}"
            )
        case UserLog.MessagesRequeued():
            return f"requeued{tail}"
        case UserLog.KnowledgeReextracted():
            texts = "; ".join(entry["text"] for entry in e.entries) or "no entries"
            return f"version {e.knowledge_version!r} by {e.extractor}{tail}: {_flat(texts)}"
        case UserLog.ReextractionFailed():
            return f"version {e.knowledge_version!r} call failed{tail}: {_flat(e.error)}"
        case UserLog.ReextractionChecked() if not e.failed_calls:
            return f"version {e.knowledge_version!r} harmless request's cost: {_harmless(e)}"
        case UserLog.ReextractionChecked():
            return (
                f"version {e.knowledge_version!r} check after failed calls showed "
                f"{_showed(e.verdict)}"
            )
        case UserLog.KnowledgeSuperseded():
            return f"entry {e.entry_id[:8]} superseded by {e.superseded_by[:8]}"
        case UserLog.KnowledgeEndMoved():
            return f"entry {e.entry_id[:8]} ended earlier: {e.superseded_by[:8]} follows it"
        case UserLog.KnowledgeBeganEarlier():
            return (
                f"entry {e.entry_id[:8]} valid from {e.valid_from:%Y-%m-%d %H:%M}: "
                "said again before it began"
            )
        case UserLog.KnowledgeInvalidatedEarlier():
            return f"entry {e.entry_id[:8]} invalidated earlier: {_flat(e.reason)}"
        case UserLog.KnowledgeInvalidated():
            return f"entry {e.entry_id[:8]} invalidated: {_flat(e.reason)}"
        case UserLog.KnowledgeVersionPromoted():
            return f"version {e.knowledge_version!r} promoted ({e.knowledge_count} entries)"
        case UserLog.MessagesReturned():
            return f"returned to the buffer{tail}: version {e.knowledge_version!r} lacks them"
        case UserLog.ProcessingFailed():
            return f"task {e.task_id[:8]} failed: {_flat(e.error)}"
        case UserLog.ProcessingInterrupted():
            reason = _flat(e.reason).removeprefix("interrupted: ")
            return f"task {e.task_id[:8]} interrupted: {reason}"
    return type(e).__name__


def _flat(text: str) -> str:
    return " ".join(text.split())


def _showed(verdict: CheckVerdict) -> str:
    """What a harmless request judging failed calls showed of them."""
    match verdict:
        case CredentialsRefused(error=error):
            return f"the API key refused: the failed calls blame no message: {_flat(error)}"
        case ModelOrPathNotFound(error=error):
            return (
                "the model or the base URL's path not found: the failed calls blame no "
                f"message: {_flat(error)}"
            )
        case Outage():
            return "the API down: the failed calls blame no message"
        case Busy(error=error) | FailedTellingNothing(error=error):
            return f"nothing: {_flat(error)}"
        case Answered():
            return "the API up: the failed calls were their messages'"
        case _:
            assert_never(verdict)


def _harmless(e: UserLog.ReextractionChecked) -> str:
    """What a harmless request judging no failed call (kept for its cost alone: the bulk
    fallback's, or a probe's) spent, and whether it was answered or failed, and how."""
    spent = sum(t or 0 for t in (e.input_tokens, e.output_tokens))
    verdict = e.verdict
    match verdict:
        case CredentialsRefused(error=error):
            told = f"failed: the API key refused: {_flat(error)}"
        case ModelOrPathNotFound(error=error):
            told = f"failed: the model or the base URL's path not found: {_flat(error)}"
        case Outage():
            told = "failed: the API down"
        case Busy(error=error) | FailedTellingNothing(error=error):
            told = f"failed: {_flat(error)}"
        case Answered():
            told = "answered"
        case _:
            assert_never(verdict)
    return f"{spent} tokens, {told}"
