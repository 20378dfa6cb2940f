"""``retrieve`` with hybrid ranking (the default local embedder) beside lexical-only ranking,
on one user with 1,000, 10,000 (and, in full mode, 100,000) messages, in the same run.

The user's messages are the evaluation conversations' turns, numbered so that no two are
alike, processed by the offline extractor. Vectors are embedded before timing (as the
background filler does after writes); each timed ``retrieve`` includes embedding the
query, both rankings over entries and messages, the fusion and the neighbours.

The event loop's largest stall during a process's first search is measured in fresh
interpreters (``python -m bench.hybrid FOLDER PAUSE``), where nothing of the model is loaded
yet and no write has had a message embedded (a restarted service's first question): the
search ``PAUSE`` seconds after the Memory opened, beside the five after it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    PROJECT_ROOT,
    BenchConfig,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    percentile,
    progress,
)
from bench.stalls import LoopStallMeter
from events import sqlite_url
from memvee import Memory, MemoryConfig
from memvee.extractors import OfflineExtractor

__all__ = ["run"]

DATASET = Path(__file__).resolve().parents[1] / "tests" / "data" / "eval" / "people.json"
QUERIES = [
    "Where did Maria move to?",
    "which seafood makes her sick",
    "what does her brother do for a living",
    "when is the trip to Lisbon",
    "what is the name of the dog",
    "who is getting married next year",
]


def _turns() -> list[tuple[str, str]]:
    data = json.loads(DATASET.read_text(encoding="utf-8"))
    return [
        (user, assistant)
        for conversation in data["conversations"]
        for session in conversation["sessions"]
        for user, assistant in session["turns"]
    ]


async def _measure(folder: Path, messages: int, rounds: int) -> dict[str, list[float]]:
    """Build one user of ``messages`` messages; time retrieve, hybrid and lexical."""
    turns = _turns()
    url = sqlite_url(folder / "hybrid.db")
    config = MemoryConfig(db_url=url, durability="normal")
    timings: dict[str, list[float]] = {"hybrid": [], "lexical": []}
    async with Memory(config=config, extractor=OfflineExtractor()) as memory:
        for i in range(messages // 2):
            user, assistant = turns[i % len(turns)]
            await memory.add_exchange("bench", f"{user} ({i})", assistant)
            if i % 500 == 499:
                await memory.flush("bench")
        await memory.flush("bench")
        engine = memory._engine
        assert engine is not None and engine.vector_filler is not None
        await memory.retrieve("bench", "warm up", include_messages=True)
        await asyncio.to_thread(engine.vector_filler.wait_idle, 3600)
        from memvee._retrieval import Retriever

        lexical = Retriever(engine.store.engine, engine.tables, None)
        for _ in range(rounds):
            for query in QUERIES:
                started = time.perf_counter()
                await memory.retrieve("bench", query, include_messages=True)
                timings["hybrid"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await asyncio.to_thread(lexical.retrieve, "bench", query, 10, None, True)
                timings["lexical"].append(time.perf_counter() - started)
    return timings


def _embedder_figures(section: Section, rounds: int) -> None:
    """Query embedding latency and indexing throughput of the default local model."""
    from memvee.embedders import OnnxMiniLMEmbedder

    embedder = OnnxMiniLMEmbedder()
    embedder.embed(["warm up"])
    texts = [f"{user} ({i})" for i, (user, _) in enumerate(_turns()[:512])]
    for _ in range(rounds):
        latencies = []
        for query in QUERIES * 10:
            started = time.perf_counter()
            embedder.embed([query])
            latencies.append(time.perf_counter() - started)
        section.stat("embedder.query_p50", "ms").add(percentile(latencies, 50) * 1000)
        started = time.perf_counter()
        embedder.embed(texts)
        section.stat("embedder.index_rate", "msg/s").add(
            len(texts) / (time.perf_counter() - started)
        )


async def _first_search(folder: Path, pause: float) -> dict[str, float]:
    """The loop's largest stall (ms) during the first search of this process, ``pause``
    seconds after its Memory opened with the default embedder, and during the five after."""
    config = MemoryConfig(db_url=sqlite_url(folder / "first.db"), durability="normal")
    stalls: dict[str, float] = {}
    async with Memory(config=config, extractor=OfflineExtractor()) as memory:
        await asyncio.sleep(pause)
        meter = LoopStallMeter()
        meter.start()
        await asyncio.sleep(0.01)
        for i, query in enumerate(QUERIES):
            meter.reset()
            await memory.retrieve("bench", query, include_messages=True)
            await asyncio.sleep(0.002)
            name = "first" if i == 0 else "later"
            stalls[name] = max(stalls.get(name, 0.0), meter.reset() * 1000)
        await meter.stop()
    return stalls


def _first_search_figures(section: Section, workspace: Workspace, rounds: int) -> None:
    """The first search's loop stall beside the later ones', each round in a fresh
    interpreter, the search at once after the open and one second after it."""
    for pause in (0.0, 1.0):
        for _ in range(rounds):
            with workspace.scratch("first-search") as folder:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.hybrid", str(folder), str(pause)],
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            stalls = json.loads(done.stdout.splitlines()[-1])
            for name, stall in stalls.items():
                section.stat(f"first_search.{pause:g}.{name}", "ms").add(stall)


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Two tables: the default embedder's own figures, then retrieve p50/p99 hybrid and
    lexical at each size."""
    model = Section(
        "The default embedder (all-MiniLM-L6-v2 int8 on onnxruntime, 2 threads)",
        ["figure", "measured"],
    )
    progress("default embedder: query latency and indexing rate")
    _embedder_figures(model, cfg.rounds)
    progress("default embedder: the first search's loop stall, in fresh processes")
    _first_search_figures(model, workspace, cfg.rounds)
    model.rows += [
        ["query embedding p50 ms", cell(model.stats["embedder.query_p50"], fmt_ms)],
        [
            "indexing messages / s (batches of 32)",
            cell(model.stats["embedder.index_rate"], fmt_num),
        ],
    ]
    for pause, when in ((0.0, "at once after the open"), (1.0, "1 s after the open")):
        for name, which in (("first", "first search"), ("later", "five later searches")):
            model.rows.append(
                [
                    f"{which}, {when}: loop stall, ms",
                    cell(model.stats[f"first_search.{pause:g}.{name}"], fmt_ms),
                ]
            )
    sizes = [1_000, 10_000] if cfg.quick else [1_000, 10_000, 100_000]
    section = Section(
        "retrieve with hybrid ranking (default embedder) beside lexical only: one user, "
        "messages included, top 10",
        [
            "messages",
            "hybrid p50 ms",
            "hybrid p99 ms",
            "lexical p50 ms",
            "lexical p99 ms",
            "hybrid ÷ lexical p50",
        ],
    )
    for size in sizes:
        progress(f"hybrid retrieve, {size:,} messages")
        with workspace.scratch("hybrid") as folder:
            timings = asyncio.run(_measure(folder, size, rounds=cfg.pick(10, 4)))
        key = f"hybrid.{size}"
        hybrid_p50 = percentile(timings["hybrid"], 50) * 1000
        lexical_p50 = percentile(timings["lexical"], 50) * 1000
        section.stat(f"{key}.hybrid_p50", "ms").add(hybrid_p50)
        section.stat(f"{key}.hybrid_p99", "ms").add(percentile(timings["hybrid"], 99) * 1000)
        section.stat(f"{key}.lexical_p50", "ms").add(lexical_p50)
        section.stat(f"{key}.lexical_p99", "ms").add(percentile(timings["lexical"], 99) * 1000)
        section.stat(f"{key}.ratio", "x").add(hybrid_p50 / lexical_p50)
        stats = section.stats
        section.rows.append(
            [
                f"{size:,}",
                cell(stats[f"{key}.hybrid_p50"], fmt_ms),
                cell(stats[f"{key}.hybrid_p99"], fmt_ms),
                cell(stats[f"{key}.lexical_p50"], fmt_ms),
                cell(stats[f"{key}.lexical_p99"], fmt_ms),
                cell(stats[f"{key}.ratio"], fmt_ratio),
            ]
        )
    section.notes.append(
        "Hybrid includes embedding the query (about 4 ms on two cores) and the semantic "
        "ranking over the user's cached message vectors; entry vectors are read per query."
    )
    return [model, section]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_first_search(Path(sys.argv[1]), float(sys.argv[2])))))
