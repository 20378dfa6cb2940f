"""A user's reads are planned through that user's rows, and lookups by key by key.

SQLite has no statistics here, so its planner guesses, and two guesses cost as much as a
history is long. It takes an equality on ``log_id`` over an ``IN`` list of a few keys: a
statement naming both the owner and the keys walks every row of the user through the
``log_id`` index (a search with messages, for a user of 40,000 messages, spent 7 of its
17 ms so). And between two indexes of one column each it picks by their order, so an
index over every user's rows (``knowledge_version``, ``status``) could serve a read of
one user. Every statement a Memory runs on SQLite for writes, extraction, hybrid searches
and reads is traced here, and checked against its query plan.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
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

_ONE_USER = re.compile(r"\blog_id = x'[0-9a-f]+'")
"""A statement that names its user."""

_EVERY_USERS = re.compile(
    r"USING (?:COVERING )?INDEX \w+_(?:knowledge_version|status)\b|^SCAN mv_\w+(?:$| USING)"
)
"""A plan step that reads rows of every user: an index of a column shared by all users'
rows, or a whole table."""


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Path, set[str]]]:
    """A database two users wrote, were extracted, searched and audited in, and every
    statement run on it meanwhile (each once, values expanded)."""
    statements: set[str] = set()

    def on_connect(connection: object, _record: object) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.set_trace_callback(statements.add)

    path = tmp_path / "plans.db"
    event.listen(Pool, "connect", on_connect)
    try:
        await _workload(path)
    finally:
        event.remove(Pool, "connect", on_connect)
    yield path, statements


async def _workload(path: Path) -> None:
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
        await memory.knowledge("ann", history=True)
        await memory.knowledge("ann", offset=2, limit=3)
        await memory.knowledge("ann", history=True, offset=1, limit=2)
        await memory.messages("ann", after=5, limit=20)
        await memory.tasks("ann")
        await memory.buffer("ann")
    with Audit(str(path)) as audit:
        audit.explain("ann", entries[-1].entry_id)
        audit.search("ann", "city", top_k=20, include_messages=True, embedder=False)
        audit.state("ann")


def _plans(path: Path, statements: set[str]) -> dict[str, list[str]]:
    """Each read or change among ``statements`` with the steps of its query plan."""
    planner = sqlite3.connect(path)
    try:
        return {
            statement: [step for *_, step in planner.execute(f"EXPLAIN QUERY PLAN {statement}")]
            for statement in statements
            if statement.lstrip().upper().startswith(("SELECT", "WITH", "DELETE", "UPDATE"))
        }
    finally:
        planner.close()


def test_no_lookup_by_keys_walks_a_users_rows(traced: tuple[Path, set[str]]) -> None:
    path, statements = traced
    plans = _plans(path, {s for s in statements if _KEY_LIST.search(s)})
    assert plans, "the workload looks rows up by lists of keys"
    walks = {s: step for s, steps in plans.items() for step in steps if step.endswith("(log_id=?)")}
    assert walks == {}


def test_no_read_of_one_user_goes_through_every_users_rows(
    traced: tuple[Path, set[str]],
) -> None:
    path, statements = traced
    plans = _plans(path, {s for s in statements if _ONE_USER.search(s)})
    assert len(plans) > 20, "the workload reads users' rows"
    wide = {s: step for s, steps in plans.items() for step in steps if _EVERY_USERS.search(step)}
    assert wide == {}


def test_a_page_of_a_users_knowledge_is_read_in_order_without_sorting_all_of_it(
    traced: tuple[Path, set[str]],
) -> None:
    """A listing's page is read off the user's rows of the listing index, in order: no
    sort of every entry of the user to find one page (at 5,000 facts the last page of
    101 took 10 to 13 ms so, 2.6 to 4.4 ms off the index)."""
    path, statements = traced
    listing = "ORDER BY mv_knowledge.version, mv_knowledge.ordinal"
    pages = {s for s in statements if listing in s and " OFFSET " in s}
    plans = _plans(path, pages)
    assert len(plans) >= 2, "the workload reads pages of knowledge"
    sorted_ = {s: steps for s, steps in plans.items() if any("TEMP B-TREE" in x for x in steps)}
    assert sorted_ == {}


def test_a_chain_of_replaced_entries_is_walked_link_by_link_through_its_index(
    traced: tuple[Path, set[str]],
) -> None:
    """Each link back along ``superseded_by`` is one index search: a step that reads the
    user's rows instead makes a batch of a long chain cost its length squared (a user who
    moved 1,500 times took 16.7 s to flush, 2.8 s through the index)."""
    path, statements = traced
    plans = _plans(path, {s for s in statements if "WITH RECURSIVE chain" in s})
    assert plans, "the workload walks chains of replaced entries"
    steps = [step for steps in plans.values() for step in steps if "mv_knowledge" in step]
    assert steps
    assert [s for s in steps if not s.endswith("superseded_by=?)")] == []
