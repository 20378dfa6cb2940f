"""The engine's own cost of one processing run, with an extractor that answers at once.

A user gets 10 buffered messages (five exchanges), then ``await memory.process(user)`` is
timed: it schedules the task on the user's actor, commits ProcessingStarted, reads the
messages back, hops to the extraction loop and back, commits KnowledgeExtracted and
resolves the task on the caller's loop. With an instant extractor, all of that is
overhead. Two committed transactions are the physical floor, so a raw sqlite3 committed
transaction at the same durability is measured in every round beside it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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
from bench.reference import raw_commits
from memvee import Memory, MemoryConfig

__all__ = ["measure_processing", "run"]

_EXCHANGES_PER_RUN = 5
"""Five exchanges buffer the 10 messages of one run."""


async def measure_processing(
    folder: Path, facts: int, runs: int, warmup: int
) -> tuple[list[float], list[int]]:
    """Seconds of each measured ``process()`` call over 10 buffered messages, and the
    entry counts of the runs that did not extract ``facts`` entries (should be none)."""
    config = MemoryConfig(db_path=str(folder / "memvee.db"))
    latencies: list[float] = []
    wrong: list[int] = []
    async with Memory(config=config, extractor=InstantExtractor(facts), embedder=False) as memory:
        user = "processing-user"
        for i in range(warmup + runs):
            for _ in range(_EXCHANGES_PER_RUN):
                await memory.add_exchange(user, "I am allergic to peanuts.", "Noted, thanks!")
            started = time.perf_counter()
            extracted = await memory.process(user)
            elapsed = time.perf_counter() - started
            if extracted != facts:
                wrong.append(extracted)
            if i >= warmup:
                latencies.append(elapsed)
    return latencies, wrong


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Time processing runs with 0 and 1 fact in rounds; returns one table."""
    runs = cfg.pick(200, 50)
    section = Section(
        f"Processing overhead: await memory.process() over 10 buffered messages, "
        f"instant extractor, durability full ({runs} runs per round)",
        [
            "extractor answer",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "raw 1-row tx\np50 ms",
            "p50 ÷ raw\ntx p50",
        ],
    )
    variants = {0: "no fact", 1: "one fact"}
    for round_no in range(1, cfg.rounds + 1):
        progress(f"processing round {round_no}/{cfg.rounds}")
        with workspace.scratch("processing") as folder:
            raw = raw_commits(folder, synchronous="FULL", rows=1, transactions=cfg.pick(1000, 300))
            section.stat("process.raw_p50", "ms").add(raw.p50_ms)
            for facts in variants:
                with workspace.scratch("processing") as db_folder:
                    latencies, wrong = asyncio.run(
                        measure_processing(db_folder, facts, runs, warmup=10)
                    )
                if wrong:
                    section.notes.append(
                        f"round {round_no}: {len(wrong)} runs returned {wrong[:3]} entries, "
                        f"expected {facts}"
                    )
                key = f"process.{facts}"
                p50 = percentile(latencies, 50) * 1000
                section.stat(f"{key}.p50", "ms").add(p50)
                section.stat(f"{key}.p99", "ms").add(percentile(latencies, 99) * 1000)
                section.stat(f"{key}.mean", "ms").add(sum(latencies) / len(latencies) * 1000)
                section.stat(f"{key}.ratio", "x").add(p50 / raw.p50_ms)
    for facts, label in variants.items():
        key = f"process.{facts}"
        stats = section.stats
        section.rows.append(
            [
                label,
                cell(stats[f"{key}.p50"], fmt_ms),
                cell(stats[f"{key}.p99"], fmt_ms),
                cell(stats[f"{key}.mean"], fmt_ms),
                cell(stats["process.raw_p50"], fmt_ms),
                cell(stats[f"{key}.ratio"], fmt_ratio),
            ]
        )
    section.notes.append(
        "One run = two committed transactions (ProcessingStarted, then KnowledgeExtracted), "
        "a read of the claimed messages, and hops between the caller's loop, the user's "
        "actor, the group committer and the extraction loop."
    )
    return [section]
