"""Knowledge extraction with Claude through the Anthropic Messages API.

Claude answers through one forced tool call, ``record_knowledge``, so that its answer is
structured data rather than prose to parse. The prompt lists the user's known entries
related to the batch, so that each fact can say whether it is new, repeats a known entry,
updates one or invalidates one. The answer is checked before it is trusted: anything
off-schema, citing messages outside the batch, or targeting an entry that is not known,
fails the batch with :class:`events.errors.InvalidExtractionError` instead of writing
doubtful knowledge.
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
from events.extraction import (
    FACT_ACTIONS,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    FactAction,
)

__all__ = ["DEFAULT_MODEL", "MODEL_ENV_VAR", "TOOL_NAME", "ClaudeExtractor"]

DEFAULT_MODEL: Final = "claude-sonnet-5-5"
"""The model used when neither the constructor nor ``MEMVEE_MODEL`` names one."""

MODEL_ENV_VAR: Final = "MEMVEE_MODEL"
"""The environment variable that overrides :data:`DEFAULT_MODEL`."""

TOOL_NAME: Final = "record_knowledge"
"""The one tool Claude must call to answer."""

_MAX_DETAIL_CHARS = 200

_ACTIONS: Final[Mapping[str, FactAction]] = {action: action for action in FACT_ACTIONS}
"""The valid ``action`` values, mapped to themselves with the :data:`FactAction` type."""

_TARGETING_ACTIONS: Final = frozenset(action for action in FACT_ACTIONS if action != "new")

_SYSTEM_PROMPT = (
    "You maintain the long-term memory of an AI assistant about one user. From the "
    "conversation messages you are given, extract the durable facts about the user that "
    "are worth remembering in future conversations: identity, work, home, relationships, "
    "health (such as allergies), preferences, habits, plans and long-running projects. "
    "Skip small talk, passing moods, questions, and anything the assistant said that the "
    "user did not confirm. Write each fact as one short, self-contained sentence in the "
    'third person that starts with "User" (for example "User works at Acme Corp." or '
    '"User\'s sister lives in Bergen."). Give each fact the ids of the messages it comes '
    "from, using only ids that appear in the batch.\n\n"
    "You may also be given the user's known entries: what memory currently holds about "
    "the user on related topics, each with an id, its text and since when it has been "
    "valid. Give each fact an action:\n"
    '- "new": the fact is not covered by any known entry.\n'
    '- "same": the fact repeats a known entry, even in other words. Prefer "same" over '
    "restating a known entry as a new fact, so that memory holds no duplicates.\n"
    '- "update": a newer statement replaces an older known fact about the same thing '
    "(the user moved to another city, changed jobs, changed a preference). The text "
    "states the new fact.\n"
    '- "invalidate": the user says a known entry stopped being true and gives nothing in '
    'its place (for example "I quit my job"). The text states what ended, for example '
    '"User no longer works at Acme Corp.". Use it only when the user says so; a known '
    "entry that the messages do not mention stays as it is.\n"
    '"same", "update" and "invalidate" must give the id of the known entry they concern '
    'as target_entry_id, using only ids of the known entries; "new" never gives one.\n\n'
    f"If nothing is worth remembering, record an empty list. Always answer by calling "
    f"the {TOOL_NAME} tool."
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
                        "action": {
                            "type": "string",
                            "enum": list(FACT_ACTIONS),
                            "default": "new",
                            "description": (
                                "new: not covered by a known entry; same: repeats a known "
                                "entry; update: supersedes a known entry; invalidate: a "
                                "known entry stopped being true, with no replacement."
                            ),
                        },
                        "target_entry_id": {
                            "type": "string",
                            "description": (
                                "The id of the known entry this fact repeats, updates or "
                                'invalidates; required for those actions, absent for "new".'
                            ),
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
    """The user turn: known entries between <known_entries> tags, then the batch's messages
    between <messages> tags, each section as a JSON array.

    JSON keeps boundaries unambiguous whatever the entries and messages contain, and "<"
    is escaped so that none of them can close a tag early.
    """
    known = [
        {"id": e.entry_id, "text": e.text, "valid_from": e.valid_from.isoformat()}
        for e in batch.known
    ]
    if known:
        known_section = (
            "Here are the user's known entries related to this batch, as a JSON array. "
            "Each has an id, its text and the time since which it has been valid.\n"
            f"<known_entries>\n{_json_listing(known)}\n</known_entries>\n"
        )
    else:
        known_section = (
            "The user has no known entries related to this batch, so every fact is new.\n"
        )
    messages = [
        {
            "id": m.message_id,
            "role": m.role,
            "sent_at": m.sent_at.isoformat(),
            "content": m.content,
        }
        for m in batch.messages
    ]
    return (
        f"{known_section}"
        "Here are the messages of one conversation batch, oldest first, as a JSON array. "
        "Each has an id, a role (user or assistant), a timestamp and the content.\n"
        f"<messages>\n{_json_listing(messages)}\n</messages>\n"
        f"Record the durable facts about the user with {TOOL_NAME}, citing message ids "
        "and giving each fact its action."
    )


def _json_listing(items: list[dict[str, str]]) -> str:
    """``items`` as indented JSON with "<" escaped, safe to put between tags."""
    return json.dumps(items, ensure_ascii=False, indent=1).replace("<", "\\u003c")


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
        _check_targets(facts, frozenset(e.entry_id for e in batch.known))
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
    """The facts of one ``record_knowledge`` input, or InvalidExtractionError.

    A missing or null ``action`` means "new" and a null ``target_entry_id`` means none,
    since models often spell an absent optional field as null.
    """
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
        raw_action = item.get("action")
        if raw_action is None:
            action: FactAction | None = "new"
        else:
            action = _ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
        if action is None:
            shown = repr(raw_action)[:_MAX_DETAIL_CHARS]
            raise invalid(f"facts[{index}].action must be one of {FACT_ACTIONS}, got {shown}")
        target = item.get("target_entry_id")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise invalid(f"facts[{index}].target_entry_id must be a non-empty string")
        if action == "new" and target is not None:
            raise invalid(
                f"facts[{index}] is 'new' but has a target_entry_id; only same, update "
                "and invalidate target a known entry"
            )
        if action in _TARGETING_ACTIONS and target is None:
            raise invalid(f"facts[{index}] is {action!r} but has no target_entry_id")
        facts.append(
            ExtractedFact(" ".join(text.split()), tuple(dict.fromkeys(ids)), action, target)
        )
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


def _check_targets(facts: Sequence[ExtractedFact], known: frozenset[str]) -> None:
    """Every same/update/invalidate fact must target one of the batch's known entries."""
    for index, fact in enumerate(facts):
        if fact.target_entry_id is not None and fact.target_entry_id not in known:
            shown = repr(fact.target_entry_id[:_MAX_DETAIL_CHARS])
            raise InvalidExtractionError(
                f"Claude's fact {index} ({fact.action!r}) targets entry id {shown}, "
                "which is not one of the batch's known entries"
            )


def _merge(facts: Sequence[ExtractedFact]) -> tuple[ExtractedFact, ...]:
    """Facts with the same text, action and target become one fact citing all their
    messages; facts that differ in action or target stay apart for the engine to judge.
    """
    merged: dict[tuple[str, FactAction, str | None], dict[str, None]] = {}
    for fact in facts:
        key = (fact.text, fact.action, fact.target_entry_id)
        merged.setdefault(key, {}).update(dict.fromkeys(fact.source_message_ids))
    return tuple(
        ExtractedFact(text, tuple(ids), action, target)
        for (text, action, target), ids in merged.items()
    )


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
