"""What Claude is sent for one batch: the static prefix (system prompt and tool) and the
user turn, in as few tokens as the task allows.

The user turn lists the user's known entries and the batch's messages as JSON arrays, one
compact object per line, between ``<known_entries>`` and ``<messages>`` tags. Ids are
short per-batch aliases (``m1``...``mN`` for messages, ``k1``...``kN`` for entries), not
36-character UUIDs; :class:`Aliases` maps them back. The prefix never changes between
requests, so that the API can cache it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from anthropic.types import ToolChoiceToolParam, ToolParam

from events.extraction import FACT_ACTIONS, ExtractionBatch

__all__ = [
    "SYSTEM_PROMPT",
    "TOOL",
    "TOOL_CHOICE",
    "TOOL_NAME",
    "Aliases",
    "prefix_tokens",
    "user_turn",
]

TOOL_NAME: Final = "record_knowledge"
"""The one tool Claude must call to answer."""

SYSTEM_PROMPT: Final = f"""\
You maintain the long-term memory of an AI assistant about one user. From the \
conversation messages you are given, extract the durable facts about the user that are \
worth remembering in future conversations: identity, work, home, relationships and the \
people in the user's life, health (such as allergies and diets), preferences, habits, \
skills, possessions, plans, goals and long-running projects. Skip small talk, passing \
moods, one-off requests, questions, and anything the assistant said that the user did not \
confirm.

Write each fact as one short, self-contained sentence in the third person that starts \
with "User" (for example "User works at Acme Corp." or "User's sister lives in Bergen."). \
Resolve pronouns and relative words from the conversation so that the fact makes sense \
on its own a year from now: name the people and places, and turn "next month" into a \
month when the message's time makes it clear. Keep one fact per sentence; do not merge \
unrelated facts, and do not repeat a fact within one answer.

The messages come as a JSON array, oldest first. Each has an id (m1, m2, ...), a role \
(user or assistant), the speaker's name when it is known, the time it was sent (UTC) and \
its content. Give each fact the ids of \
the messages it comes from, using only ids listed in the messages: usually the user's own \
message, plus the assistant's message when the user's answer only makes sense with it \
("Yes, that one" answering "Is it the red car?").

You may also be given the user's known entries: what memory currently holds about the \
user on related topics, as a JSON array, each with an id (k1, k2, ...), its text and the \
day since when it has been valid. An entry with "until" stopped being true then; it is \
shown because some messages were sent before that time. Give each fact an action:
- "new": the fact is not covered by any known entry.
- "same": the fact repeats a known entry, even in other words. Prefer "same" over \
restating a known entry as a new fact, so that memory holds no duplicates. A message sent \
after an entry's "until" that says the same again is "new".
- "update": a newer statement replaces an older known fact about the same thing (the user \
moved to another city, changed jobs, changed a preference). The text states the new fact.
- "invalidate": the user says a known entry stopped being true and gives nothing in its \
place (for example "I quit my job"). The text states what ended, for example "User no \
longer works at Acme Corp.". Use it only when the user says so; a known entry that the \
messages do not mention stays as it is.
"same", "update" and "invalidate" must give the id of the known entry they concern as \
target_entry_id, using only ids of the known entries; "new" never gives one. When the \
messages themselves hold a change, days apart (the user lived in Oslo, and later moved to \
Bergen), record both facts: the later one is an "update" (or "invalidate") whose \
target_entry_id is "f" and the earlier fact's place in your list (f1 for the first fact).

For example, with the known entries
[{{"id":"k1","text":"User lives in Oslo.","since":"2024-06-01"}},
{{"id":"k2","text":"User works at Acme Corp.","since":"2024-06-01"}}]
and the messages
[{{"id":"m1","role":"user","at":"2025-03-01T09:12Z","content":"We finally moved to \
Bergen last week! Still at Acme though."}},
{{"id":"m2","role":"assistant","at":"2025-03-01T09:12Z","content":"Congratulations! Do \
you have pets moving with you?"}},
{{"id":"m3","role":"user","at":"2025-03-01T09:13Z","content":"Just our cat Miso."}}]
the answer is
{{"facts":[{{"text":"User lives in Bergen.","source_message_ids":["m1"],\
"action":"update","target_entry_id":"k1"}},
{{"text":"User works at Acme Corp.","source_message_ids":["m1"],"action":"same",\
"target_entry_id":"k2"}},
{{"text":"User has a cat named Miso.","source_message_ids":["m2","m3"],"action":"new"}}]}}

If nothing is worth remembering, record an empty list. Always answer by calling the \
{TOOL_NAME} tool, and nothing else."""

_NOT_BLANK: Final = r"\S"
"""The JSON Schema pattern of a string that is not blank: a fact's text and a target.

Models tend to spell an absent target as an empty string, and a fact with nothing to say
as a blank one; the parser still reads such an answer (see :func:`._claude._parse_facts`).
"""

TOOL: Final[ToolParam] = {
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
                            "pattern": _NOT_BLANK,
                            "description": 'One third-person sentence starting with "User".',
                        },
                        "source_message_ids": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "description": "The ids (m1, m2, ...) of the messages it comes from.",
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
                            "pattern": _NOT_BLANK,
                            "description": (
                                "The id (k1, k2, ...) of the known entry this fact repeats, "
                                "updates or invalidates, or f1, f2, ... for an earlier fact "
                                "of this list that it updates or invalidates; required for "
                                'those actions, absent for "new".'
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

TOOL_CHOICE: Final[ToolChoiceToolParam] = {
    "type": "tool",
    "name": TOOL_NAME,
    "disable_parallel_tool_use": True,
}


def prefix_tokens() -> int:
    """About how many tokens the static prefix (tool and system prompt) has."""
    return (len(json.dumps(TOOL)) + len(SYSTEM_PROMPT)) // 4


class Aliases:
    """The short ids of one batch's prompt: ``m1``... for its messages, ``k1``... for the
    known entries, in the order the batch lists them."""

    def __init__(self, batch: ExtractionBatch) -> None:
        self.messages = {f"m{i}": m.message_id for i, m in enumerate(batch.messages, 1)}
        self.entries = {f"k{i}": e.entry_id for i, e in enumerate(batch.known, 1)}

    def message(self, alias: str) -> str:
        """The message id behind ``alias`` (an unknown alias is returned as given, for the
        engine to drop as a citation outside the batch)."""
        return self.messages.get(alias.strip(), alias)

    def entry(self, alias: str) -> str:
        """The entry id behind ``alias`` (an unknown one is returned as given)."""
        return self.entries.get(alias.strip(), alias)

    @staticmethod
    def fact(alias: str, before: int) -> int | None:
        """The place in the answer (from 0) of fact ``alias`` (``f1``...), when it names
        one of the ``before`` facts listed ahead of the one naming it; else ``None``."""
        alias = alias.strip()
        if alias[:1] != "f" or not alias[1:].isdigit():
            return None
        place = int(alias[1:]) - 1
        return place if 0 <= place < before else None


def user_turn(batch: ExtractionBatch) -> str:
    """The user turn: the known entries (if any), then the batch's messages."""
    if batch.known:
        known = [
            {
                "id": f"k{i}",
                "text": e.text,
                "since": _day(e.valid_from),
                **({"until": _minute(e.valid_until)} if e.valid_until is not None else {}),
            }
            for i, e in enumerate(batch.known, 1)
        ]
        known_section = (
            "The user's known entries related to these messages:\n"
            f"<known_entries>\n{_listing(known)}\n</known_entries>\n"
        )
    else:
        known_section = "The user has no known entries related to these messages.\n"
    messages = [
        {
            "id": f"m{i}",
            "role": m.role,
            **({"name": m.name} if m.name else {}),
            "at": _minute(m.sent_at),
            "content": m.content,
        }
        for i, m in enumerate(batch.messages, 1)
    ]
    return (
        f"{known_section}"
        f"The messages, oldest first:\n<messages>\n{_listing(messages)}\n</messages>\n"
        f"Record the durable facts about the user with {TOOL_NAME}."
    )


def _listing(items: Sequence[Mapping[str, Any]]) -> str:
    """``items`` as a JSON array with one compact object per line, "<" escaped so that no
    text can close a tag early."""
    lines = ",\n".join(
        json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in items
    )
    return f"[{lines}]".replace("<", "\\u003c")


def _minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")
