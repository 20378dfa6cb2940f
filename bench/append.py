"""add_exchange throughput and latency with 1, 100 and 1,000 concurrent users.

Each user is an asyncio task on one loop writing exchanges in sequence, as an agent
serving that user would. Every round first measures raw sqlite3 committed transactions
of the same two rows at the same durability on the same file system, then the engine
scenarios, so each ratio compares figures taken a few seconds apart. A ticker task on
the loop records the largest event-loop stall of every scenario.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import actors
import events
import memvee
import projections
from bench.common import (
    BenchConfig,
    InstantExtractor,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    percentile,
    progress,
)
from bench.reference import Shape, Synchronous, raw_commits
from bench.stalls import GcPauseMeter, LoopStallMeter, objects_held
from events import Durability
from memvee import Memory, MemoryConfig

__all__ = ["Scenario", "ScenarioRun", "run", "run_scenario", "write_exchanges", "write_histories"]

USER_TEXT = "I live in Lisbon and I work at a small bakery near the river."
ASSISTANT_TEXT = "That sounds lovely! How long have you been working there?"

_DURABILITIES: tuple[Durability, ...] = ("full", "normal")
_SYNCHRONOUS: dict[Durability, Synchronous] = {"full": "FULL", "normal": "NORMAL"}
_SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_RAW_KINDS: tuple[tuple[int, Shape], ...] = ((1, "events"), (2, "events"), (2, "engine"))
"""Raw transactions measured: one event row, the two rows of an exchange, and those two
with the projection rows the engine writes beside them (2 buffer rows, 2 updates)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """``users`` concurrent users each writing ``per_user`` exchanges at ``durability``."""

    users: int
    per_user: int
    durability: Durability
    long: bool = False
    """Long conversations: each log grows past several snapshot intervals in the run."""

    @property
    def key(self) -> str:
        """The prefix of this scenario's statistics."""
        return f"append.{self.durability}.{self.users}" + (".long" if self.long else "")

    @property
    def label(self) -> str:
        """How the scenario is named in the table."""
        noun = "user" if self.users == 1 else "users"
        label = f"{self.users:,} {noun}, {self.durability}"
        return f"{label}, {self.per_user:,} each" if self.long else label

    @property
    def warmup_per_user(self) -> int:
        """Unmeasured exchanges per user first: they spawn the actors and register the logs."""
        return max(1, 50 // self.users)


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    """What one run of a scenario measured."""

    exchanges: int
    seconds: float
    latencies: list[float]
    cold_latencies: list[float]
    stall: float
    cold_stall: float
    gc_pause: float
    cold_gc_pause: float
    transactions: int | None
    pragmas: tuple[str, str] | None
    cpu_seconds: float
    loop_cpu_seconds: float
    code_stall: float
    waiting_stall: float
    generator_stall: float
    memvee_share: float
    charged_stall: float
    share_with_callers: float
    charged_with_callers: float

    @property
    def rate(self) -> float:
        """Acknowledged exchanges per second in the measured phase."""
        return self.exchanges / self.seconds


async def write_histories(
    path: Path, users: int, exchanges: int, durability: Durability = "full"
) -> None:
    """``users`` users (``user-00000`` on) with ``exchanges`` exchanges each, 100 users
    in flight at a time, nothing extracted."""
    config = MemoryConfig(db_path=str(path), durability=durability)
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        for start in range(0, users, 100):
            batch = range(start, min(start + 100, users))
            await asyncio.gather(
                *(write_exchanges(memory, f"user-{i:05d}", exchanges, []) for i in batch)
            )


async def write_exchanges(memory: Memory, user_id: str, count: int, latencies: list[float]) -> None:
    """``count`` exchanges of ``user_id`` in sequence, each one's latency added to
    ``latencies``."""
    clock = time.perf_counter
    for _ in range(count):
        before = clock()
        await memory.add_exchange(user_id, USER_TEXT, ASSISTANT_TEXT)
        latencies.append(clock() - before)


def _engine(memory: Memory) -> Any:
    """The running engine, for read-only introspection (commit counter, pragmas)."""
    return getattr(memory, "_engine", None)


def _transactions(memory: Memory) -> int | None:
    engine = _engine(memory)
    committer = getattr(engine, "committer", None)
    count = getattr(committer, "transactions", None)
    return count if isinstance(count, int) else None


def engine_pragmas(memory: Memory) -> tuple[str, str] | None:
    """The journal mode and synchronous level of a pooled engine connection."""
    engine = _engine(memory)
    if engine is None or not engine.store.is_sqlite:
        return None
    with engine.store.engine.connect() as connection:
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        level = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    return str(journal).upper(), _SYNC_NAMES.get(int(level), str(level))


async def run_scenario(folder: Path, scenario: Scenario) -> ScenarioRun:
    """Open a fresh Memory in ``folder``, warm every user up, then measure ``scenario``."""
    config = MemoryConfig(db_path=str(folder / "memvee.db"), durability=scenario.durability)
    users = [f"user-{i:05d}" for i in range(scenario.users)]
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        pragmas = engine_pragmas(memory)
        collections = GcPauseMeter()
        meter = LoopStallMeter(collections)
        meter.start()
        collections.start()
        cold: list[float] = []
        with meter.load_generator():
            writes = asyncio.gather(
                *(write_exchanges(memory, u, scenario.warmup_per_user, cold) for u in users)
            )
        await writes
        cold_stall, cold_gc_pause = meter.reset(), collections.reset()
        before_tx = _transactions(memory)
        latencies: list[float] = []
        cpu, loop_cpu = time.process_time(), time.thread_time()
        started = time.perf_counter()
        with meter.load_generator():
            writes = asyncio.gather(
                *(write_exchanges(memory, u, scenario.per_user, latencies) for u in users)
            )
        await writes
        seconds = time.perf_counter() - started
        cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
        stall, gc_pause = await meter.stop(), collections.stop()
        after_tx = _transactions(memory)
        share, share_with_callers = await _memvee_share(memory, users)
    transactions = None if before_tx is None or after_tx is None else after_tx - before_tx
    return ScenarioRun(
        exchanges=len(latencies),
        seconds=seconds,
        latencies=latencies,
        cold_latencies=cold,
        stall=stall,
        cold_stall=cold_stall,
        gc_pause=gc_pause,
        cold_gc_pause=cold_gc_pause,
        transactions=transactions,
        pragmas=pragmas,
        cpu_seconds=cpu,
        loop_cpu_seconds=loop_cpu,
        code_stall=max((s.outside_collections for s in meter.stalls), default=0.0),
        waiting_stall=max((s.waiting for s in meter.stalls), default=0.0),
        generator_stall=max((s.generator for s in meter.stalls), default=0.0),
        memvee_share=share,
        charged_stall=meter.worst_charged(share),
        share_with_callers=share_with_callers,
        charged_with_callers=meter.worst_charged(share_with_callers),
    )


async def _memvee_share(memory: Memory, users: list[str]) -> tuple[float, float]:
    """The share of the process's tracked objects that the Memory keeps alive, the larger
    of: at rest after the run, and with a write of every user in flight (not timed).

    First without the callers' tasks and coroutines its futures wake (the load
    generator's, but for memvee's own API frames in them), then with them.
    """
    loop = asyncio.get_running_loop()

    def shares() -> tuple[float, float]:
        total = len(gc.get_objects())
        own = objects_held(memory, besides=(loop,), own_code=OWN_CODE)
        return own / total, objects_held(memory, besides=(loop,)) / total

    at_rest = shares()
    wave = asyncio.gather(*(write_exchanges(memory, u, 1, []) for u in users))
    await asyncio.sleep(0.02)
    in_flight = shares()
    await wave
    return max(at_rest[0], in_flight[0]), max(at_rest[1], in_flight[1])


OWN_CODE = tuple(
    str(Path(package.__file__).parent) + os.sep
    for package in (memvee, actors, events, projections)
    if package.__file__ is not None
)
"""memvee's source folders: the coroutines running code from them are memvee's."""


def scenarios(cfg: BenchConfig) -> list[Scenario]:
    """The scenarios of issue 3: 1, 100 and 1,000 users at full durability, 1 and 1,000
    at normal durability (the documented faster option); and 100 users with long
    conversations, whose logs are snapshotted as they grow (every 100 events by default)
    and whose tables outgrow the page cache, as a memory in service does."""
    single = cfg.pick(2000, 200)
    return [
        Scenario(1, single, "full"),
        Scenario(100, cfg.pick(40, 10), "full"),
        Scenario(100, cfg.pick(300, 120), "full", long=True),
        Scenario(1000, cfg.pick(5, 2), "full"),
        Scenario(1, single, "normal"),
        Scenario(1000, cfg.pick(5, 2), "normal"),
    ]


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Measure raw sqlite3 and the engine in interleaved rounds; returns both tables."""
    reference = Section(
        "Raw sqlite3 reference: committed transactions (WAL, same file system, in the same run)",
        ["synchronous", "rows per transaction", "tx / s", "p50 ms", "p99 ms"],
    )
    section = Section(
        "add_exchange: concurrent users, each writing exchanges in sequence",
        [
            "scenario",
            "exchanges / s",
            "p50 ms",
            "p99 ms",
            "exchanges\nper commit",
            "CPU ms / exchange:\nprocess / loop",
            "cold start:\np99 ms / stall ms",
            "ex/s ÷ raw\n2-row tx/s",
            "p50 ÷ raw\n2-row p50",
        ],
    )
    plan = scenarios(cfg)
    raw_count = cfg.pick(2000, 500)
    for round_no in range(1, cfg.rounds + 1):
        for durability in _DURABILITIES:
            sync = _SYNCHRONOUS[durability]
            progress(f"append round {round_no}/{cfg.rounds}: raw sqlite3, synchronous={sync}")
            with workspace.scratch("raw") as folder:
                for rows, shape in _RAW_KINDS:
                    raw = raw_commits(
                        folder, synchronous=sync, rows=rows, transactions=raw_count, shape=shape
                    )
                    key = _raw_key(durability, rows, shape)
                    reference.stat(f"{key}.rate", "tx/s").add(raw.rate)
                    reference.stat(f"{key}.p50", "ms").add(raw.p50_ms)
                    reference.stat(f"{key}.p99", "ms").add(raw.p99_ms)
            raw_rate = reference.stats[f"{_raw_key(durability, 2)}.rate"].samples[-1]
            raw_p50 = reference.stats[f"{_raw_key(durability, 2)}.p50"].samples[-1]
            shaped_p50 = reference.stats[f"{_raw_key(durability, 2, 'engine')}.p50"].samples[-1]
            for scenario in (s for s in plan if s.durability == durability):
                progress(f"append round {round_no}/{cfg.rounds}: {scenario.label}")
                with workspace.scratch("append") as folder:
                    result = asyncio.run(run_scenario(folder, scenario))
                _record(section, scenario, result, raw_rate, raw_p50)
                section.stat(f"{scenario.key}.p50_shaped_ratio", "x").add(
                    percentile(result.latencies, 50) * 1000 / shaped_p50
                )
    for durability in _DURABILITIES:
        for rows, shape in _RAW_KINDS:
            key = _raw_key(durability, rows, shape)
            reference.rows.append(
                [
                    _SYNCHRONOUS[durability],
                    f"{rows} event{'s' if rows > 1 else ''}"
                    + (" + projection rows" if shape == "engine" else ""),
                    cell(reference.stats[f"{key}.rate"], fmt_num),
                    cell(reference.stats[f"{key}.p50"], fmt_ms),
                    cell(reference.stats[f"{key}.p99"], fmt_ms),
                ]
            )
    for scenario in plan:
        section.rows.append(_row(section, scenario))
    measured = ", ".join(f"{s.label}: {s.users * s.per_user:,}" for s in plan)
    section.notes.append(f"Measured exchanges per round - {measured}.")
    section.notes.append(
        "Each round opens a fresh database; a warm-up exchange per user (50 for one user) "
        "spawns the actors first and is reported as 'cold start'. Ratios are taken per "
        "round against that round's raw two-row transaction, then the median is printed. "
        "A latency ratio is shown for one user only: with many users it measures queueing. "
        "CPU per exchange: the whole process (all threads) and the event-loop thread alone "
        "(with the 1 ms ticker)."
    )
    shaped = [
        f"{s.label}: {fmt_ratio(section.stats[f'{s.key}.p50_shaped_ratio'].median)}"
        for s in plan
        if s.users == 1
    ]
    section.notes.append(
        "p50 ÷ raw p50 of the engine's own transaction shape (2 events + projection rows): "
        + "; ".join(shaped)
        + "."
    )
    pragmas = section.facts.get("pragmas.full")
    if pragmas:
        section.notes.append(f"Engine connection at default durability: {pragmas}.")
    return [reference, section, _stalls(section, plan)]


def _stalls(section: Section, plan: list[Scenario]) -> Section:
    """The loop's largest stalls of each scenario, split by cause, from ``section``'s stats."""
    stalls = Section(
        "add_exchange: the event loop's largest stalls, and memvee's share of them",
        [
            "scenario",
            "max loop\nstall ms",
            "longest\nGC ms",
            "largest stall\noutside GC ms",
            "largest wait\nfor the GIL ms",
            "load generator's\nstarts ms",
            "memvee's share of\ntracked objects",
            "largest stall\ncharged to memvee ms",
            "share, callers'\ntasks counted",
            "charged, callers'\ntasks counted ms",
        ],
    )
    stats = section.stats
    for scenario in plan:
        key = scenario.key
        stalls.rows.append(
            [
                scenario.label,
                cell(stats[f"{key}.run_stall"], fmt_ms),
                cell(stats[f"{key}.gc"], fmt_ms),
                cell(stats[f"{key}.code_stall"], fmt_ms),
                cell(stats[f"{key}.waiting_stall"], fmt_ms),
                cell(stats[f"{key}.generator_stall"], fmt_ms),
                f"{stats[f'{key}.memvee_share'].median:.0f}%",
                cell(stats[f"{key}.charged_stall"], fmt_ms),
                f"{stats[f'{key}.share_with_callers'].median:.0f}%",
                cell(stats[f"{key}.charged_with_callers"], fmt_ms),
            ]
        )
    stalls.notes.append(
        "Cold start and measured phase together. A stall is a late wake-up of a 1 ms ticker "
        "on the loop. Each is split into the collector's time inside it (the collector holds "
        "the GIL, whichever thread runs it) and the rest: code on the loop or in other "
        "threads, all charged to memvee as an upper bound, but for the load generator's "
        "starting of its users' tasks (a coroutine and a task per user, all at once, on the "
        "loop's CPU clock less the collector's time there: 'load generator's starts'; the rest "
        "of its code is a few lines per exchange). Of the rest, the time the loop's thread "
        "was off the CPU (its CPU clock) is the loop waiting for the GIL held by other "
        "threads, memvee's (the load generator runs none): 'largest wait for the GIL'. "
        "The collector walks "
        "every tracked object of the process, so its time is charged to memvee by the share "
        "of tracked objects the Memory keeps alive: those reachable from it, not through "
        "modules, classes, module-level functions or the event loop, the larger of at rest "
        "after the run and with one write per user in flight. A caller's task (and its "
        "coroutines) reached from a future memvee will resolve is the caller's, so it is "
        "not counted, but for memvee's own API coroutines in its await chain; the last two "
        "columns count it as memvee's, as earlier runs did. The rest of the collector's "
        "time is the load generator's tasks and the imported libraries' objects."
    )
    return stalls


def _raw_key(durability: Durability, rows: int, shape: Shape = "events") -> str:
    """The prefix of a raw reference's statistics, e.g. ``raw.full.2``."""
    return f"raw.{durability}.{rows}" + ("" if shape == "events" else f".{shape}")


def _record(
    section: Section, scenario: Scenario, result: ScenarioRun, raw_rate: float, raw_p50: float
) -> None:
    key = scenario.key
    p50 = percentile(result.latencies, 50) * 1000
    p99 = percentile(result.latencies, 99) * 1000
    section.stat(f"{key}.exchanges", "exchanges").add(result.exchanges)
    section.stat(f"{key}.cpu", "ms").add(result.cpu_seconds / result.exchanges * 1000)
    section.stat(f"{key}.loop_cpu", "ms").add(result.loop_cpu_seconds / result.exchanges * 1000)
    section.stat(f"{key}.rate", "ex/s").add(result.rate)
    section.stat(f"{key}.p50", "ms").add(p50)
    section.stat(f"{key}.p99", "ms").add(p99)
    section.stat(f"{key}.stall", "ms").add(result.stall * 1000)
    section.stat(f"{key}.cold_p99", "ms").add(percentile(result.cold_latencies, 99) * 1000)
    section.stat(f"{key}.cold_stall", "ms").add(result.cold_stall * 1000)
    section.stat(f"{key}.run_stall", "ms").add(max(result.stall, result.cold_stall) * 1000)
    section.stat(f"{key}.gc", "ms").add(max(result.gc_pause, result.cold_gc_pause) * 1000)
    section.stat(f"{key}.code_stall", "ms").add(result.code_stall * 1000)
    section.stat(f"{key}.waiting_stall", "ms").add(result.waiting_stall * 1000)
    section.stat(f"{key}.generator_stall", "ms").add(result.generator_stall * 1000)
    section.stat(f"{key}.memvee_share", "%").add(result.memvee_share * 100)
    section.stat(f"{key}.charged_stall", "ms").add(result.charged_stall * 1000)
    section.stat(f"{key}.share_with_callers", "%").add(result.share_with_callers * 100)
    section.stat(f"{key}.charged_with_callers", "ms").add(result.charged_with_callers * 1000)
    section.stat(f"{key}.rate_ratio", "x").add(result.rate / raw_rate)
    section.stat(f"{key}.p50_ratio", "x").add(p50 / raw_p50)
    if result.transactions:
        section.stat(f"{key}.per_commit", "ex/tx").add(result.exchanges / result.transactions)
    if result.pragmas is not None:
        journal, sync = result.pragmas
        section.facts[f"pragmas.{scenario.durability}"] = (
            f"journal_mode={journal}, synchronous={sync}"
        )


def _row(section: Section, scenario: Scenario) -> list[str]:
    key = scenario.key
    stats = section.stats
    per_commit = stats.get(f"{key}.per_commit")
    cold = (
        f"{fmt_ms(stats[f'{key}.cold_p99'].median)} / {fmt_ms(stats[f'{key}.cold_stall'].median)}"
    )
    return [
        scenario.label,
        cell(stats[f"{key}.rate"], fmt_num),
        cell(stats[f"{key}.p50"], fmt_ms),
        cell(stats[f"{key}.p99"], fmt_ms),
        "-" if per_commit is None else fmt_num(per_commit.median, 1),
        f"{fmt_ms(stats[f'{key}.cpu'].median)} / {fmt_ms(stats[f'{key}.loop_cpu'].median)}",
        cold,
        cell(stats[f"{key}.rate_ratio"], fmt_ratio),
        cell(stats[f"{key}.p50_ratio"], fmt_ratio) if scenario.users == 1 else "",
    ]
