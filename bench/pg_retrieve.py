"""``python -m bench pg_retrieve``: lexical retrieval on PostgreSQL as one user's history grows.

One user's history is written in steps (1,000 then 10,000 messages) among 500 other users
of 20 messages each, the tables analyzed as autovacuum would, and at each step the user
is asked the same questions through ``Memory.retrieve``, with and without messages. Beside
it, in the same moments, memvee's own ranked message query runs alone on psycopg: what
the database costs for the search itself. A search that grows with the history (say, one
that parses every message of the user again) shows as a p50 that grows with it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql

from bench.common import (
    BenchConfig,
    InstantExtractor,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_ratio,
    percentile,
    progress,
)
from bench.pg_worker import psycopg_url
from bench.postgres import reset, server_url
from events import user_log_id
from memvee import Memory, MemoryConfig
from projections import LexicalRanker, ProjectionTables
from projections.ranking import pg_queries
from projections.search import own_and_added_words, pg_owner_query
from projections.terms import query_terms

__all__ = ["ranker_query", "run"]

QUESTIONS = (
    "where does the user live",
    "what food do I like",
    "how was work",
    "who did I go hiking with",
    "when is the dentist appointment",
)
"""Questions whose words match a share of the history each (see :func:`_turn`)."""

STEPS = (1_000, 10_000)
"""The user's messages at each measurement."""

OTHERS, OTHER_EXCHANGES = 500, 10


def _turn(i: int) -> tuple[str, str]:
    """Exchange ``i`` of a history whose topics come back every five exchanges."""
    topic = i % 5
    if topic == 0:
        return f"I moved to city number {i % 40} last month.", "That's a big change!"
    if topic == 1:
        return f"My favourite food is dish number {i % 30}.", "Sounds tasty."
    if topic == 2:
        return f"I went hiking with friend number {i}.", "Hiking is great exercise."
    if topic == 3:
        return f"Work was busy today, meeting {i} ran long.", "Hope you get some rest."
    return f"Remind me about the dentist appointment {i}.", "I will."


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Measure retrieve p50 at each step of one user's history, beside the raw query."""
    del workspace  # the data lives in the PostgreSQL server
    section = Section(
        "PostgreSQL: lexical retrieve for one user as their history grows (500 other "
        "users), beside memvee's ranked message query alone on psycopg, same run",
        [
            "user's\nmessages",
            "retrieve p50 ms\n(messages)",
            "retrieve p99 ms\n(messages)",
            "retrieve p50 ms\n(entries only)",
            "message query\nalone p50 ms",
            "retrieve ÷\nquery alone",
        ],
    )
    url = server_url(section)
    if url is None:
        return [section]
    asks = cfg.pick(200, 50)
    reset(url)
    asyncio.run(_measure(url, section, asks))
    for step in STEPS:
        key = f"pg_retrieve.{step}"
        if f"{key}.p50" not in section.stats:
            continue
        section.rows.append(
            [
                f"{step:,}",
                cell(section.stats[f"{key}.p50"], fmt_ms),
                cell(section.stats[f"{key}.p99"], fmt_ms),
                cell(section.stats[f"{key}.entries_p50"], fmt_ms),
                cell(section.stats[f"{key}.raw_p50"], fmt_ms),
                cell(section.stats[f"{key}.ratio"], fmt_ratio),
            ]
        )
    section.notes.append(
        f"{asks} retrievals per step, top 10, the questions in turn; one history, so one "
        "round (no range). The query alone is the statement memvee's ranker runs, with the "
        "same parameters."
    )
    return [section]


async def _measure(url: str, section: Section, asks: int) -> None:
    config = MemoryConfig(db_url=url)
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        progress(f"pg_retrieve: {OTHERS} other users of {2 * OTHER_EXCHANGES} messages")
        for i in range(OTHER_EXCHANGES):
            await asyncio.gather(
                *(memory.add_exchange(f"other-{j}", *_turn(i + j)) for j in range(OTHERS))
            )
        written = 0
        for step in STEPS:
            progress(f"pg_retrieve: the user's history up to {step:,} messages")
            while written < step // 2:
                batch = range(written, min(written + 200, step // 2))
                await asyncio.gather(*(memory.add_exchange("user", *_turn(i)) for i in batch))
                written = batch.stop
            await asyncio.to_thread(_analyze, url)
            await _ask(memory, url, section, f"pg_retrieve.{step}", asks)


async def _ask(memory: Memory, url: str, section: Section, key: str, asks: int) -> None:
    for question in QUESTIONS:  # warm the caches and plans
        await memory.retrieve("user", question, include_messages=True)
    clock = time.perf_counter
    with_messages: list[float] = []
    entries_only: list[float] = []
    for i in range(asks):
        question = QUESTIONS[i % len(QUESTIONS)]
        started = clock()
        await memory.retrieve("user", question, top_k=10, include_messages=True)
        with_messages.append(clock() - started)
        started = clock()
        await memory.retrieve("user", question, top_k=10)
        entries_only.append(clock() - started)
    raw = await asyncio.to_thread(_query_alone, url, asks)
    p50 = percentile(with_messages, 50) * 1000
    section.stat(f"{key}.p50", "ms").add(p50)
    section.stat(f"{key}.p99", "ms").add(percentile(with_messages, 99) * 1000)
    section.stat(f"{key}.entries_p50", "ms").add(percentile(entries_only, 50) * 1000)
    section.stat(f"{key}.raw_p50", "ms").add(raw)
    section.stat(f"{key}.ratio", "x").add(p50 / raw)


def _analyze(url: str) -> None:
    """Statistics as autovacuum would gather them on a server in service."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
        connection.execute("ANALYZE")


def _query_alone(url: str, asks: int) -> float:
    """The p50 (ms) of memvee's ranked message query run alone, as the ranker runs it
    (the pool a search asks for with top 10: 40 rows), planned for its parameters each
    time: a plan made once for any parameters (psycopg prepares a statement from its
    fifth run on a connection) took 140-175 ms here."""
    queries = [ranker_query("user", question, 40) for question in QUESTIONS]
    timings: list[float] = []
    with psycopg.connect(psycopg_url(url)) as connection:
        for i in range(asks):
            sql, params = queries[i % len(queries)]
            started = time.perf_counter()
            connection.execute(sql, params, prepare=False).fetchall()
            timings.append(time.perf_counter() - started)
    return percentile(timings, 50) * 1000


def ranker_query(user_id: str, question: str, limit: int) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of the ranked message query memvee's lexical ranker runs
    for ``question`` on PostgreSQL (its first column is the message row's ``id``)."""
    terms = query_terms(question)
    queries = pg_queries(*own_and_added_words(terms.own, terms.added))
    # not dated (as_of=None); with the words the question's topics add, if any
    statement = LexicalRanker(ProjectionTables())._pg_messages[False, "own" in queries]
    compiled = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined,no-untyped-call]
    log_id = str(user_log_id(user_id))
    params = compiled.construct_params(
        {"log_id": log_id, "limit": limit, "owner": pg_owner_query(log_id), **queries}
    )
    return str(compiled), dict(params)
