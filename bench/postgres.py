"""PostgreSQL: add_exchange throughput from 1, 2 and 4 processes beside raw committed inserts.

Issue 4 asks whether adding processes against one PostgreSQL adds throughput. Each
scenario starts N worker processes (:mod:`bench.pg_worker`) that prepare, then start
their measured phase together on a signal; the aggregate rate is every call of every
process over the span from the earliest start to the latest end. Every round measures,
for each N, raw single-row committed INSERTs from N processes first, then the engine from
N processes, so each ratio compares figures taken seconds apart on the same server. The
database is emptied before every scenario. The server comes from ``MEMVEE_TEST_PG_URL``
(``scripts/with-postgres.sh`` starts one); without it the section is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import psycopg

from bench.common import (
    PROJECT_ROOT,
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
from bench.pg_worker import (
    RAW_DDL,
    READY,
    RESULT,
    WorkerPlan,
    WorkerResult,
    psycopg_url,
)
from events import MemveeError
from memvee import Memory, MemoryConfig

__all__ = ["PG_URL_ENV", "Aggregate", "PgScenario", "run", "run_workers", "server_url"]

PG_URL_ENV = "MEMVEE_TEST_PG_URL"
"""Where ``scripts/with-postgres.sh`` puts the throwaway server's SQLAlchemy URL."""

PROCESS_COUNTS = (1, 2, 4)
USERS_PER_PROCESS = 50
"""Users per process in the many-user scenarios (the target key ``pg.50u.4.scale``)."""

_READY_TIMEOUT = 120.0
_RUN_TIMEOUT = 300.0
_LOG_LINE = re.compile(r"^(WARNING|ERROR|CRITICAL) |^Traceback|Error: ")
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Violation)\b")


@dataclass(frozen=True, slots=True)
class PgScenario:
    """``processes`` processes, each with ``users`` users writing ``per_user`` exchanges."""

    processes: int
    users: int
    per_user: int

    @property
    def key(self) -> str:
        """The prefix of this scenario's statistics, e.g. ``pg.50u.4``."""
        return f"pg.{self.users}u.{self.processes}"

    @property
    def label(self) -> str:
        """How the scenario is named in the table."""
        return "1 user" if self.users == 1 else f"{self.users} users each"


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The workers of one scenario taken together."""

    count: int
    seconds: float
    latencies_ms: list[float]
    log_lines: list[str]

    @property
    def rate(self) -> float:
        """Calls per second over the span from the earliest start to the latest end."""
        return self.count / self.seconds

    @property
    def p50(self) -> float:
        """Median latency of one call, in ms."""
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        """99th percentile latency of one call, in ms."""
        return percentile(self.latencies_ms, 99)

    @classmethod
    def of(cls, results: Sequence[WorkerResult], log_lines: list[str]) -> Aggregate:
        """Combine the workers' results: all their calls over their common span."""
        span = max(r.end for r in results) - min(r.start for r in results)
        latencies = [ms for r in results for ms in r.latencies_ms]
        return cls(sum(r.count for r in results), span, latencies, log_lines)


def server_url(section: Section) -> str | None:
    """The test server's URL, or ``None`` after noting in ``section`` that it was skipped."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        section.notes.append(
            f"Skipped: no PostgreSQL server ({PG_URL_ENV} is not set). `make bench` runs "
            "under scripts/with-postgres.sh, which starts one."
        )
        return None
    return url


def reset(url: str) -> None:
    """Drop everything in the server's public schema (as ``tests/support/backends.py``)."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
        connection.execute("CREATE SCHEMA public")


def prepare_raw(url: str) -> None:
    """An empty database with the raw reference's table."""
    reset(url)
    with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
        connection.execute(RAW_DDL)


def prepare_engine(url: str) -> None:
    """An empty database with memvee's schema, created once here so that the workers do
    not race to create it (as the many-process test does with its ``EventStore``)."""
    reset(url)

    async def open_and_close() -> None:
        config = MemoryConfig(db_url=url, leases=True)
        async with Memory(config=config, extractor=InstantExtractor(), embedder=False):
            pass

    asyncio.run(open_and_close())


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def _started(plans: Sequence[WorkerPlan], logs: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Start one worker per plan (stderr to a file in ``logs``); kill leftovers at the end."""
    with ExitStack() as stack:
        workers: list[subprocess.Popen[str]] = []
        try:
            for plan in plans:
                log: IO[str] = stack.enter_context((logs / f"worker-{plan.index}.log").open("w"))
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.pg_worker", json.dumps(asdict(plan))],
                        cwd=PROJECT_ROOT,
                        env=_worker_env(),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                )
            yield workers
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()


def _read_ready(worker: subprocess.Popen[str]) -> str:
    assert worker.stdout is not None
    return worker.stdout.readline().strip()


def _log_lines(logs: Path) -> list[str]:
    """The warnings, errors and traceback heads the workers logged."""
    lines: list[str] = []
    for path in sorted(logs.glob("worker-*.log")):
        lines += [f"{path.stem}: {line}" for line in path.read_text().splitlines()]
    return [line for line in lines if _LOG_LINE.search(line.split(": ", 1)[1])]


def run_workers(plans: Sequence[WorkerPlan], logs: Path) -> Aggregate:
    """Start the workers, wait until all are prepared, release them together, combine.

    Raises :class:`RuntimeError` with a worker's error if one fails or hangs.
    """
    with _started(plans, logs) as workers:
        pool = ThreadPoolExecutor(len(workers))
        try:
            ready = [
                future.result(timeout=_READY_TIMEOUT)
                for future in [pool.submit(_read_ready, worker) for worker in workers]
            ]
        except TimeoutError:
            ready = []
        finally:
            if not ready or any(line != READY for line in ready):
                for worker in workers:  # unblocks the readers with end-of-file
                    worker.kill()
            pool.shutdown(wait=True)
        if not ready or any(line != READY for line in ready):
            raise RuntimeError(f"a worker did not get ready: {_failure(logs)}")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("GO\n")
            worker.stdin.flush()
        results: list[WorkerResult] = []
        deadline = time.monotonic() + _RUN_TIMEOUT
        for worker in workers:
            out, _ = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [line for line in out.splitlines() if line.startswith(RESULT)]
            if worker.returncode != 0 or not lines:
                raise RuntimeError(f"a worker exited {worker.returncode}: {_failure(logs)}")
            results.append(WorkerResult(**json.loads(lines[-1][len(RESULT) :])))
    return Aggregate.of(results, _log_lines(logs))


def _failure(logs: Path) -> str:
    """Each failed worker's exception line (or last log line), for the section's notes."""
    found = []
    for path in sorted(logs.glob("worker-*.log")):
        lines = path.read_text().strip().splitlines()
        errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
        if errors or lines:
            found.append(f"{path.stem}: {(errors or lines)[-1][:300]}")
    return "; ".join(found) or "no log"


def _engine_plans(url: str, processes: int, scenario: PgScenario) -> list[WorkerPlan]:
    return [
        WorkerPlan("engine", url, i, 1, users=scenario.users, per_user=scenario.per_user)
        for i in range(processes)
    ]


def _raw_plans(url: str, processes: int, seconds: float) -> list[WorkerPlan]:
    return [WorkerPlan("raw", url, i, 50, seconds=seconds) for i in range(processes)]


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Measure raw inserts and add_exchange from 1, 2 and 4 processes in interleaved rounds."""
    section = Section(
        "PostgreSQL: add_exchange from 1, 2 and 4 processes (one Memory each, leases on) "
        "beside raw single-row committed INSERTs from as many processes, in the same run",
        [
            "scenario",
            "processes",
            "add_exchange\n/ s",
            "p50 ms",
            "p99 ms",
            "raw inserts\n/ s",
            "raw\np50 ms",
            "ex/s ÷\nraw/s",
            "scaling vs\n1 process",
            "raw scaling\nvs 1 process",
            "p50 ÷\nraw p50",
        ],
    )
    url = server_url(section)
    if url is None:
        return [section]
    cpus = os.cpu_count() or 1
    section.facts["cpus"] = str(cpus)
    many = [PgScenario(n, USERS_PER_PROCESS, cfg.pick(30, 12)) for n in PROCESS_COUNTS]
    single = PgScenario(1, 1, cfg.pick(500, 200))
    raw_seconds = 1.5 if not cfg.quick else 0.75
    rounds = min(cfg.rounds, 2 if cfg.quick else 5)
    problems: dict[str, int] = {}
    for round_no in range(1, rounds + 1):
        raws: dict[int, Aggregate] = {}
        bases: dict[int, Aggregate] = {}
        for scenario in [*many, single]:
            n = scenario.processes
            prefix = f"postgres round {round_no}/{rounds}: {n} process{'es' if n > 1 else ''}"
            try:
                if scenario is not single:
                    progress(f"{prefix}, raw inserts")
                    prepare_raw(url)
                    with workspace.scratch("pg-raw") as logs:
                        raws[n] = run_workers(_raw_plans(url, n, raw_seconds), logs)
                    _record_raw(section, n, raws[n], raws.get(1))
                progress(f"{prefix}, add_exchange, {scenario.label}")
                prepare_engine(url)
                with workspace.scratch("pg-engine") as logs:
                    result = run_workers(_engine_plans(url, n, scenario), logs)
            except (RuntimeError, subprocess.TimeoutExpired, psycopg.Error, MemveeError) as error:
                section.notes.append(f"Round {round_no}, {scenario.label} x {n}: failed: {error}")
                continue
            for line in result.log_lines:
                problems[line] = problems.get(line, 0) + 1
            _record_engine(section, scenario, result, raws.get(n), bases.get(scenario.users))
            if n == 1:
                bases[scenario.users] = result
    for scenario in [*many, single]:
        section.rows.append(_row(section, scenario, single))
    _notes(section, many, single, raw_seconds, rounds, cpus, problems)
    return [section]


def _record_raw(section: Section, processes: int, raw: Aggregate, base: Aggregate | None) -> None:
    """Record a raw run; ``base`` is this round's one-process raw run (for the scaling)."""
    key = f"pg.raw.{processes}"
    section.stat(f"{key}.rate", "rows/s").add(raw.rate)
    section.stat(f"{key}.p50", "ms").add(raw.p50)
    if base is not None:
        section.stat(f"{key}.scale", "x").add(raw.rate / base.rate)


def _record_engine(
    section: Section,
    scenario: PgScenario,
    result: Aggregate,
    raw: Aggregate | None,
    base: Aggregate | None,
) -> None:
    """Record an engine run beside this round's raw run from as many processes (``raw``)
    and this round's one-process run of the same scenario (``base``)."""
    key = scenario.key
    section.stat(f"{key}.rate", "ex/s").add(result.rate)
    section.stat(f"{key}.p50", "ms").add(result.p50)
    section.stat(f"{key}.p99", "ms").add(result.p99)
    if raw is not None:
        section.stat(f"{key}.rate_ratio", "x").add(result.rate / raw.rate)
        section.stat(f"{key}.p50_ratio", "x").add(result.p50 / raw.p50)
    if base is not None:
        section.stat(f"{key}.scale", "x").add(result.rate / base.rate)


def _row(section: Section, scenario: PgScenario, single: PgScenario) -> list[str]:
    """The table row of ``scenario``; scaling only for 2+ processes, p50 ratio for one user."""
    key = scenario.key
    raw_key = f"pg.raw.{scenario.processes}"
    if f"{key}.rate" not in section.stats:
        return [scenario.label, str(scenario.processes), "failed", *[""] * 8]

    def show(name: str, fmt: Callable[[float], str], when: bool = True) -> str:
        stat = section.stats.get(name)
        return cell(stat, fmt) if stat is not None and when else ""

    scaled = scenario is not single and scenario.processes > 1
    return [
        scenario.label,
        str(scenario.processes),
        show(f"{key}.rate", fmt_num),
        show(f"{key}.p50", fmt_ms),
        show(f"{key}.p99", fmt_ms),
        show(f"{raw_key}.rate", fmt_num),
        show(f"{raw_key}.p50", fmt_ms),
        show(f"{key}.rate_ratio", fmt_ratio),
        show(f"{key}.scale", fmt_ratio, scaled),
        show(f"{raw_key}.scale", fmt_ratio, scaled),
        show(f"{key}.p50_ratio", fmt_ratio, scenario is single),
    ]


def _notes(
    section: Section,
    many: Sequence[PgScenario],
    single: PgScenario,
    raw_seconds: float,
    rounds: int,
    cpus: int,
    problems: dict[str, int],
) -> None:
    per_process = many[0].users * many[0].per_user
    section.notes.append(
        f"Median of {rounds} round(s). Per process and round: {many[0].users} users each "
        f"writing {many[0].per_user} exchanges concurrently ({per_process:,} exchanges), or "
        f"one user writing {single.per_user} in sequence; raw: {raw_seconds:g} s of INSERT + "
        "COMMIT of one row (id bigserial, payload text with both texts of an exchange) on one "
        "psycopg connection. Rates: all calls of all processes over the span from the "
        "earliest start to the latest end; the processes prepare first (open the Memory, "
        "one warm-up exchange per user to take its lease and spawn its actor) and start "
        "their measured phase together. The database is emptied before every scenario."
    )
    section.notes.append(
        f"This machine has {cpus} CPU core{'s' if cpus != 1 else ''}, shared by the worker "
        "processes and the PostgreSQL server: the raw scaling column shows what the "
        "machine itself allows."
    )
    if problems:
        total = sum(problems.values())
        section.notes.append(f"Worker logs: {total:,} warning/error line(s); most frequent:")
        for line, count in sorted(problems.items(), key=lambda kv: -kv[1])[:5]:
            section.notes.append(f"  {count} x {line[:200]}")
    else:
        section.notes.append("Worker logs: no warnings or errors.")
