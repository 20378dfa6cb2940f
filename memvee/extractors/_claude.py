"""Knowledge extraction with Claude through the Anthropic Messages API.

Claude answers through one forced tool call, ``record_knowledge``, so that its answer is
structured data rather than prose to parse. The answer is checked before it is trusted:
anything off-schema, or citing messages outside the batch, fails the batch with
:class:`events.errors.InvalidExtractionError` instead of writing doubtful knowledge.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from typing import Final

import anthropic
from anthropic.types import Message, MessageParam, ToolChoiceToolParam, ToolParam

from events.errors import ExtractionError, InvalidExtractionError, InvalidInputError
from events.extraction import ExtractedFact, ExtractionBatch, ExtractionResult

__all__ = ["DEFAULT_MODEL", "MODEL_ENV_VAR", "TOOL_NAME", "ClaudeExtractor"]

DEFAULT_MODEL: Final = "claude-sonnet-5-5"
"""The model used when neither the constructor nor ``MEMVEE_MODEL`` names one."""

MODEL_ENV_VAR: Final = "MEMVEE_MODEL"
"""The environment variable that overrides :data:`DEFAULT_MODEL`."""

TOOL_NAME: Final = "record_knowledge"
"""The one tool Claude must call to answer."""

_MAX_DETAIL_CHARS = 200

_SYSTEM_PROMPT = (
    "You maintain the long-term memory of an AI assistant about one user. From the "
    "conversation messages you are given, extract the durable facts about the user that "
    "are worth remembering in future conversations: identity, work, home, relationships, "
    "health (such as allergies), preferences, habits, plans and long-running projects. "
    "Skip small talk, passing moods, questions, and anything the assistant said that the "
    "user did not confirm. Write each fact as one short, self-contained sentence in the "
    'third person that starts with "User" (for example "User works at Acme Corp." or '
    '"User\'s sister lives in Bergen."). Give each fact the ids of the messages it comes '
    "from, using only ids that appear in the batch. If nothing is worth remembering, "
    f"record an empty list. Always answer by calling the {TOOL_NAME} tool."
)

_TOOL: Final[ToolParam] = {
    "name": TOOL_NAME,
    "description": (
        "Record the durable facts learned about the user, each with the ids of the "
        "messages it was learned from."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "description": "The facts about the user; empty if there are none.",
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {
                            "type": "string",
                            "minLength": 1,
                            "description": 'One third-person sentence starting with "User".',
                        },
                        "source_message_ids": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "description": "The ids of the messages this fact comes from.",
                        },
                    },
                    "required": ["text", "source_message_ids"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["facts"],
        "additionalProperties": False,
    },
}

_TOOL_CHOICE: Final[ToolChoiceToolParam] = {
    "type": "tool",
    "name": TOOL_NAME,
    "disable_parallel_tool_use": True,
}


def _prompt(batch: ExtractionBatch) -> str:
    """The user turn: the batch's messages as JSON between <messages> tags.

    JSON keeps message boundaries unambiguous whatever the messages contain, and "<" is
    escaped so that no message can close the tag early.
    """
    messages = [
        {
            "id": m.message_id,
            "role": m.role,
            "sent_at": m.sent_at.isoformat(),
            "content": m.content,
        }
        for m in batch.messages
    ]
    listing = json.dumps(messages, ensure_ascii=False, indent=1).replace("<", "\\u003c")
    return (
        "Here are the messages of one conversation batch, oldest first, as a JSON array. "
        "Each has an id, a role (user or assistant), a timestamp and the content.\n"
        f"<messages>\n{listing}\n</messages>\n"
        f"Record the durable facts about the user with {TOOL_NAME}, citing message ids."
    )


class ClaudeExtractor:
    """Extracts knowledge entries with Claude, one forced tool call per batch.

    Each call is bounded by ``timeout`` seconds in total, SDK retries included, because
    the SDK obeys a server's ``retry-after`` without a cap. Failures surface as
    :class:`events.errors.ExtractionError`, never with the API key or request headers.
    """

    name = "claude"

    def __init__(
        self,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 2048,
    ) -> None:
        """Configure the extractor; without ``client`` one is built on first use.

        The built client uses the SDK's default construction, so ``ANTHROPIC_API_KEY``
        and ``ANTHROPIC_BASE_URL`` apply. It is built lazily so that it belongs to the
        event loop that runs the extraction.
        """
        if not timeout > 0:
            raise InvalidInputError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0:
            raise InvalidInputError(f"max_retries must be >= 0, got {max_retries!r}")
        if max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {max_tokens!r}")
        self.model: str = model or os.environ.get(MODEL_ENV_VAR, "").strip() or DEFAULT_MODEL
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self._client = client
        self._owns_client = client is None

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(max_retries=self.max_retries)
        return self._client

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """Ask Claude for the batch's durable facts about the user and check its answer.

        An empty batch is answered without a call. Raises ExtractionError when the call
        fails or times out, and InvalidExtractionError when the answer is unusable.
        """
        if not batch.messages:
            return ExtractionResult(facts=(), extractor=self.name, model=self.model)
        client = self._get_client()
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                response = await client.messages.create(
                    model=self.model,
                    max_tokens=self.max_tokens,
                    system=_SYSTEM_PROMPT,
                    messages=[_user_turn(batch)],
                    tools=[_TOOL],
                    tool_choice=_TOOL_CHOICE,
                    timeout=self.timeout,
                )
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise ExtractionError(
                f"Claude extraction timed out after {self.timeout:g}s (model {self.model})"
            ) from exc
        except anthropic.AnthropicError as exc:
            key = client.api_key
            cause = None if key and _mentions(exc, key) else exc
            raise ExtractionError(_describe(exc, key)) from cause
        return self._result(batch, response)

    def _result(self, batch: ExtractionBatch, response: Message) -> ExtractionResult:
        stop_reason = getattr(response, "stop_reason", None)
        calls = [
            block
            for block in getattr(response, "content", None) or ()
            if getattr(block, "type", None) == "tool_use"
            and getattr(block, "name", None) == TOOL_NAME
        ]
        if not calls:
            raise InvalidExtractionError(
                f"Claude answered without calling {TOOL_NAME} (stop_reason={stop_reason!r})"
            )
        facts: list[ExtractedFact] = []
        for call in calls:
            facts.extend(_parse_facts(getattr(call, "input", None), stop_reason))
        _check_citations(facts, batch.message_ids)
        usage = getattr(response, "usage", None)
        notes = {"response_id": str(getattr(response, "id", "") or "")}
        if stop_reason is not None:
            notes["stop_reason"] = str(stop_reason)
        return ExtractionResult(
            facts=_merge(facts),
            extractor=self.name,
            model=str(getattr(response, "model", None) or self.model),
            input_tokens=getattr(usage, "input_tokens", None),
            output_tokens=getattr(usage, "output_tokens", None),
            notes=notes,
        )

    async def aclose(self) -> None:
        """Close the client this extractor built; a client passed in stays open."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _user_turn(batch: ExtractionBatch) -> MessageParam:
    return {"role": "user", "content": _prompt(batch)}


def _parse_facts(payload: object, stop_reason: object) -> list[ExtractedFact]:
    """The facts of one ``record_knowledge`` input, or InvalidExtractionError."""
    hint = " (the answer hit max_tokens)" if stop_reason == "max_tokens" else ""

    def invalid(problem: str) -> InvalidExtractionError:
        return InvalidExtractionError(f"Claude's {TOOL_NAME} input is invalid: {problem}{hint}")

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
        if not isinstance(text, str) or not text.strip():
            raise invalid(f"facts[{index}].text must be a non-empty string")
        ids = item.get("source_message_ids")
        if not _is_string_list(ids) or not ids:
            raise invalid(f"facts[{index}].source_message_ids must be a non-empty list of strings")
        facts.append(ExtractedFact(" ".join(text.split()), tuple(dict.fromkeys(ids))))
    return facts


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_citations(facts: Sequence[ExtractedFact], allowed: frozenset[str]) -> None:
    for index, fact in enumerate(facts):
        unknown = [i for i in fact.source_message_ids if i not in allowed]
        if unknown:
            shown = ", ".join(repr(i[:_MAX_DETAIL_CHARS]) for i in unknown[:5])
            raise InvalidExtractionError(
                f"Claude's fact {index} cites message ids that are not in the batch: {shown}"
            )


def _merge(facts: Sequence[ExtractedFact]) -> tuple[ExtractedFact, ...]:
    """Facts with the same text become one fact citing all their messages."""
    merged: dict[str, dict[str, None]] = {}
    for fact in facts:
        merged.setdefault(fact.text, {}).update(dict.fromkeys(fact.source_message_ids))
    return tuple(ExtractedFact(text, tuple(ids)) for text, ids in merged.items())


def _describe(exc: anthropic.AnthropicError, api_key: str | None) -> str:
    """A message for a failed API call: status, error type and request id, never secrets."""
    kind = type(exc).__name__
    if isinstance(exc, anthropic.APIStatusError):
        parts = [f"Claude API returned HTTP {exc.status_code} ({kind}"]
        if exc.type:
            parts.append(f", {exc.type}")
        parts.append(")")
        if exc.api_message:
            parts.append(f": {exc.api_message[:_MAX_DETAIL_CHARS]}")
        if exc.request_id:
            parts.append(f" [request-id {exc.request_id}]")
        text = "".join(parts)
    elif isinstance(exc, anthropic.APITimeoutError):
        text = f"Claude API request timed out ({kind}) after the SDK's retries"
    elif isinstance(exc, anthropic.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unknown cause"
        text = f"could not reach the Claude API ({kind}: {cause}) after the SDK's retries"
    else:
        text = f"Claude API call failed ({kind}): {str(exc)[:_MAX_DETAIL_CHARS]}"
    return _redact(text, api_key)


def _mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``exc`` or an exception it chains to shows ``secret`` in its text."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if secret in str(current) or secret in repr(current.args):
            return True
        current = current.__cause__ or current.__context__
    return False


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text
