"""What extraction sends to Claude: request bytes and tokens per 1,000 messages, before and
after bounded batches and the compact prompt, and the prompt cache on a run through the
stand-in Messages API.

The messages are the turns of the evaluation conversations (``tests/data/eval``), each
batch shown 20 known entries, as a user with some history would be. "Before" is the
request memvee built until bounded batches came: every buffered message in one request,
36-character ids, microsecond times and indented JSON, the prefix never cached. It is
rebuilt here (:func:`previous_request`) so that both are measured on the same messages in
the same run. Tokens are estimated at four bytes each.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from bench.common import BenchConfig, Section, Workspace, fmt_num, progress
from events import BatchLimits, BatchMessage, ExtractionBatch, KnownEntry
from memvee import Memory, MemoryConfig
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor
from memvee.extractors._claude_prompt import TOOL, TOOL_CHOICE
from tests.support.messages_api_server import MessagesAPIServer

__all__ = ["PREVIOUS_SYSTEM_PROMPT", "previous_request", "run"]

MESSAGES = 1_000
KNOWN = 20
DATASET = Path(__file__).resolve().parents[1] / "tests" / "data" / "eval" / "conversations.json"


PREVIOUS_SYSTEM_PROMPT = (
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
    "If nothing is worth remembering, record an empty list. Always answer by calling "
    "the record_knowledge tool."
)
"""The system prompt before issue 10 (shorter, with no worked example, never cached)."""


def _turns() -> list[tuple[str, str]]:
    """The evaluation conversations' exchanges, repeated until there are enough."""
    data = json.loads(DATASET.read_text(encoding="utf-8"))
    turns = [
        (user, assistant)
        for conversation in data["conversations"]
        for session in conversation["sessions"]
        for user, assistant in session["turns"]
    ]
    return (turns * (MESSAGES // (2 * len(turns)) + 1))[: MESSAGES // 2]


def _messages() -> list[BatchMessage]:
    start = datetime(2026, 1, 3, 10, 0, 0, 123456, tzinfo=UTC)
    out = []
    for i, (user, assistant) in enumerate(_turns()):
        at = start + timedelta(minutes=7 * i, microseconds=i)
        out.append(BatchMessage(str(uuid4()), "user", user, at))
        out.append(BatchMessage(str(uuid4()), "assistant", assistant, at))
    return out


def _known() -> tuple[KnownEntry, ...]:
    since = datetime(2025, 11, 2, 8, 30, 15, 250000, tzinfo=UTC)
    return tuple(
        KnownEntry(str(uuid4()), f"User likes hobby number {i} a lot.", since) for i in range(KNOWN)
    )


def previous_request(batch: ExtractionBatch, max_tokens: int = 2048) -> dict[str, Any]:
    """The Messages API body memvee sent for ``batch`` before issue 10 (for comparison)."""
    known = [
        {"id": e.entry_id, "text": e.text, "valid_from": e.valid_from.isoformat()}
        for e in batch.known
    ]
    messages = [
        {"id": m.message_id, "role": m.role, "sent_at": m.sent_at.isoformat(), "content": m.content}
        for m in batch.messages
    ]

    def listing(items: list[dict[str, str]]) -> str:
        return json.dumps(items, ensure_ascii=False, indent=1).replace("<", "\\u003c")

    prompt = (
        "Here are the user's known entries related to this batch, as a JSON array. "
        "Each has an id, its text and the time since which it has been valid.\n"
        f"<known_entries>\n{listing(known)}\n</known_entries>\n"
        "Here are the messages of one conversation batch, oldest first, as a JSON array. "
        "Each has an id, a role (user or assistant), a timestamp and the content.\n"
        f"<messages>\n{listing(messages)}\n</messages>\n"
        "Record the durable facts about the user with record_knowledge, citing message ids "
        "and giving each fact its action."
    )
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": max_tokens,
        "system": PREVIOUS_SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": prompt}],
        "tools": [TOOL],
        "tool_choice": TOOL_CHOICE,
    }


def _size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def _batches(messages: list[BatchMessage], size: int) -> list[ExtractionBatch]:
    known = _known()
    return [
        ExtractionBatch("bench", f"t{i}", tuple(messages[i : i + size]), known)
        for i in range(0, len(messages), size)
    ]


async def _through_the_standin(folder: Path) -> dict[str, int]:
    """1,000 messages of 10 users processed through the stand-in; its cache counters and
    the tokens memvee recorded."""
    with MessagesAPIServer() as server:
        os.environ["ANTHROPIC_BASE_URL"] = server.base_url
        os.environ["ANTHROPIC_API_KEY"] = "sk-bench-standin"
        url = f"sqlite:///{folder / 'standin.db'}"
        config = MemoryConfig(db_url=url, extraction_concurrency=4)
        turns = _turns()
        async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as memory:
            for i, (said, answered) in enumerate(turns):
                await memory.add_exchange(f"user{i % 10}", said, answered)
            for user in range(10):
                await memory.process(f"user{user}")
        with Audit(db_url=url) as audit:
            totals = audit.stats()
        return {
            "requests": len(server.requests),
            "cache_writes": server.cache_writes,
            "cache_reads": server.cache_reads,
            "input_tokens": totals["input_tokens"],
            "cache_read_tokens": totals["cache_read_tokens"],
            "cache_write_tokens": totals["cache_write_tokens"],
        }


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Two tables: the request sizes, and the prompt cache on a run through the stand-in."""
    progress("prompt sizes")
    messages = _messages()
    words = sum(len(m.content.encode()) for m in messages)
    extractor = ClaudeExtractor(model="claude-sonnet-5-5")
    limits = BatchLimits()
    sizes = Section(
        f"Extraction requests per {MESSAGES:,} messages (evaluation conversations, "
        f"{KNOWN} known entries per request; tokens estimated at 4 bytes)",
        [
            "request format",
            "requests",
            "bytes",
            "est. tokens",
            "billed-equivalent\ntokens",
            "bytes / message\nbeyond the prefix",
            "words share",
        ],
    )
    variants = {
        "before: all buffered in one request": [
            previous_request(b) for b in _batches(messages, len(messages))
        ],
        f"before, in batches of {limits.max_messages}": [
            previous_request(b) for b in _batches(messages, limits.max_messages)
        ],
        f"after: batches of {limits.max_messages}, aliases, compact JSON": [
            extractor.request(b) for b in _batches(messages, limits.max_messages)
        ],
    }
    for label, bodies in variants.items():
        total = sum(_size(b) for b in bodies)
        prefix = sum(_size({"system": b["system"], "tools": b["tools"]}) for b in bodies)
        cached = (
            bool(bodies[0]["system"][0].get("cache_control"))
            if isinstance(bodies[0]["system"], list)
            else False
        )
        per_prefix = prefix / len(bodies)
        # A cached prefix costs 1.25x once (the write), then 0.1x per read.
        billed_prefix = (
            per_prefix * 1.25 + per_prefix * 0.1 * (len(bodies) - 1) if cached else prefix
        )
        billed = (total - prefix + billed_prefix) / 4
        sizes.stat(f"prompt.{label}.bytes", "B").add(total)
        sizes.rows.append(
            [
                label,
                str(len(bodies)),
                fmt_num(total),
                fmt_num(total / 4),
                fmt_num(billed),
                fmt_num((total - prefix) / MESSAGES),
                f"{100 * words / total:.1f}%",
            ]
        )
    sizes.notes.append(
        "Billed-equivalent tokens count a cached prefix at 1.25x for the request that writes "
        "it and 0.1x for every request that reads it (5-minute lifetime); before, the prefix "
        "was never cached. One request for the whole backlog is unbounded: 5,000 buffered "
        "messages made one 1.15 MB request, refused by a size limit on every run."
    )
    progress("prompt cache through the stand-in")
    with workspace.scratch("prompt") as folder:
        saved = {k: os.environ.get(k) for k in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")}
        try:
            cache = asyncio.run(_through_the_standin(folder))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    hits = Section(
        f"Prompt cache on a run through the stand-in Messages API ({MESSAGES:,} messages, "
        "10 users, default batch limits)",
        [
            "requests",
            "cache writes",
            "cache reads",
            "input tokens",
            "cache read tokens",
            "cache write tokens",
        ],
    )
    hits.rows.append(
        [
            fmt_num(cache["requests"]),
            fmt_num(cache["cache_writes"]),
            fmt_num(cache["cache_reads"]),
            fmt_num(cache["input_tokens"]),
            fmt_num(cache["cache_read_tokens"]),
            fmt_num(cache["cache_write_tokens"]),
        ]
    )
    hits.notes.append(
        "Cache figures are the stand-in's simulation of the API's rules (prefix of at least "
        "1,024 tokens, 5-minute lifetime), as recorded by memvee from each answer's usage."
    )
    return [sizes, hits]
