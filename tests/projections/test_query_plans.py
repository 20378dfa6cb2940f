"""Lookups by a list of keys are planned by key, never by walking a user's rows.

Without statistics, SQLite's planner takes an equality on ``log_id`` over an ``IN`` list
of a few keys: a statement naming both the owner and the keys then walks every row of
the user through the ``log_id`` index, and costs as much as the user's history is
long (a search with messages, for a user of 40,000 messages, spent 7 of its 17 ms so).
Here every statement a Memory runs on SQLite for writes, extraction, hybrid searches and
reads is traced, and each one with a list of keys is checked against its query plan.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.pool import Pool

from memvee import Memory, MemoryConfig
from memvee.audit import Audit
from memvee.extractors import OfflineExtractor
from tests.support.embedders import ConceptEmbedder

_KEY = r"(?:x'[0-9a-f]+'|\d+)"
_KEY_LIST = re.compile(rf"\bIN \({_KEY}(?:, {_KEY})+\)")
"""An IN list of keys (ids, row numbers): from two or three of them on, depending on the
table, SQLite's planner prefers an equality on the owner."""


@pytest.fixture
def traced() -> Iterator[list[str]]:
    """Every statement run on SQLite connections opened meanwhile, values expanded."""
    statements: list[str] = []

    def on_connect(connection: object, _record: object) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.set_trace_callback(statements.append)

    event.listen(Pool, "connect", on_connect)
    try:
        yield statements
    finally:
        event.remove(Pool, "connect", on_connect)


async def test_no_lookup_by_keys_walks_a_users_rows(tmp_path: Path, traced: list[str]) -> None:
    path = tmp_path / "plans.db"
    config = MemoryConfig(db_path=str(path))
    async with Memory(
        config=config, extractor=OfflineExtractor(), embedder=ConceptEmbedder()
    ) as memory:
        for user in ("ann", "bob"):
            for i in range(30):
                await memory.add_exchange(user, f"I moved to city number {i}.", "Noted.")
            await memory.flush(user)
        for question in ("where do I live", "which city", "moved"):
            await memory.retrieve("ann", question, top_k=10, include_messages=True)
            await memory.retrieve("ann", question, top_k=10)
        entries = await memory.knowledge("ann")
        await memory.messages("ann", after=5, limit=20)
    audit = Audit(str(path))
    try:
        audit.explain("ann", entries[-1].entry_id)
        audit.search("ann", "city", top_k=20, include_messages=True, embedder=False)
    finally:
        audit.close()

    with_keys = {
        s
        for s in traced
        if _KEY_LIST.search(s) and s.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE"))
    }
    assert with_keys, "the workload looks rows up by lists of keys"
    planner = sqlite3.connect(path)
    try:
        walks = {
            statement: step
            for statement in with_keys
            for *_, step in planner.execute(f"EXPLAIN QUERY PLAN {statement}")
            if step.endswith("(log_id=?)")
        }
    finally:
        planner.close()
    assert walks == {}
