"""The PostgreSQL retrieval bench sets memvee beside its own ranked query: that query,
run alone, must be the one the ranker runs and find what the ranker finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from bench.common import BenchConfig, Workspace
from bench.pg_retrieve import ranker_query, run
from bench.pg_worker import psycopg_url
from projections import LexicalRanker
from projections.terms import query_terms


async def test_the_query_alone_finds_the_rankers_messages_in_its_order(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the bench measures PostgreSQL")
    memory = await make_memory()
    for text in ("I work at a bakery.", "Work was long today.", "I like tea."):
        await memory.add_exchange("user", text, "Noted.")
    await memory.add_exchange("other", "I work at the docks.", "Noted.")
    engine = memory._engine
    assert engine is not None
    question = "how was work"
    terms = query_terms(question)
    with engine.store.engine.connect() as connection:
        ranked = LexicalRanker(engine.tables).messages(
            connection, "user", list(terms.own), 10, added=terms.added
        )
    sql, params = ranker_query("user", question, 10)
    with psycopg.connect(psycopg_url(db_url)) as connection:
        rows = connection.execute(sql, params, prepare=False).fetchall()  # type: ignore[arg-type]
    assert [row[1] for row in rows] == [m.message_id for m, _ in ranked]
    assert len(rows) == 2


def test_without_a_server_the_section_says_it_was_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("MEMVEE_TEST_PG_URL", raising=False)
    (section,) = run(BenchConfig(quick=True, rounds=1), Workspace(tmp_path))
    assert section.rows == []
    assert any("Skipped: no PostgreSQL server" in note for note in section.notes)
