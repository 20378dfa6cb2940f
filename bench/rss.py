"""Peak RSS after touching 10,000 users, and how many actors are live at the end.

Each configuration runs in a fresh subprocess (``python -m bench.rss --child``) so that
the other sections' memory does not count. The child opens a Memory, notes its RSS
(the reference: the engine with no user), touches every user once with add_message
through a fixed number of concurrent writers, and reports the peak RSS (the larger of a
10 ms psutil sampler and the kernel's high-water mark, VmHWM), the live actor count and
the thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.common import (
    PROJECT_ROOT,
    BenchConfig,
    InstantExtractor,
    Section,
    Stat,
    Workspace,
    cell,
    fmt_num,
    progress,
)
from memvee import Memory, MemoryConfig

__all__ = ["ChildPlan", "run"]

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """What one child process does."""

    label: str
    folder: str
    users: int
    concurrency: int
    idle_timeout: float
    max_live_actors: int


class _Sampler:
    """Samples the process RSS every 10 ms on a thread and keeps the maximum."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak: int = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _high_water_mark() -> int:
    """The kernel's peak RSS of this process image (VmHWM), in bytes; 0 if unknown.

    Not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so a
    child of a big benchmark process would report the parent's peak.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def _touch_users(plan: ChildPlan) -> dict[str, float]:
    config = MemoryConfig(
        db_path=str(Path(plan.folder) / "memvee.db"),
        idle_timeout=plan.idle_timeout,
        max_live_actors=plan.max_live_actors,
    )
    process = psutil.Process()
    sampler = _Sampler()
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        baseline = process.memory_info().rss
        pending = iter(range(plan.users))

        async def writer() -> None:
            for i in pending:
                await memory.add_message(f"user-{i:05d}", "user", "I love long walks.")

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(plan.concurrency)))
        seconds = time.perf_counter() - started
        live = memory.live_actor_count
        threads = process.num_threads()
        at_end = process.memory_info().rss
    sampled = sampler.stop()
    return {
        "baseline_mb": baseline / _MB,
        "peak_mb": max(sampled, _high_water_mark()) / _MB,
        "end_mb": at_end / _MB,
        "live_actors": live,
        "threads": threads,
        "seconds": seconds,
    }


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rss")
    parser.add_argument("--child", required=True, help="a ChildPlan as JSON")
    plan = ChildPlan(**json.loads(parser.parse_args(argv).child))
    print(json.dumps(asyncio.run(_touch_users(plan))))


def _run_child(plan: ChildPlan, timeout: float) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.rss", "--child", json.dumps(asdict(plan))],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"child exited {done.returncode}: {tail}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Run each configuration in its own subprocess; returns one table."""
    users = cfg.pick(10_000, 2_000)
    defaults = MemoryConfig()
    configs = [
        ("defaults", defaults.idle_timeout, defaults.max_live_actors),
        ("idle_timeout=1 s", 1.0, defaults.max_live_actors),
    ]
    section = Section(
        f"Memory: peak RSS after touching {users:,} users (one add_message each, "
        "100 concurrent writers), one fresh process per run",
        [
            "configuration",
            "RSS after open\nMB (reference)",
            "peak RSS\nMB",
            "peak - open\nKB per user",
            "RSS at end\nMB",
            "live actors\nat end",
            "threads\nat end",
            "users / s",
        ],
    )
    runs = 1 if cfg.quick else min(cfg.rounds, 2)
    for key, idle, max_live in configs:
        for run_no in range(1, runs + 1):
            progress(f"rss: {key}, run {run_no}/{runs} ({users:,} users, subprocess)")
            with workspace.scratch("rss") as folder:
                plan = ChildPlan(key, str(folder), users, 100, idle, max_live)
                try:
                    result = _run_child(plan, timeout=600)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    section.notes.append(f"{key}: the child failed: {error}")
                    continue
            stat = f"rss.{key}"
            for name, unit in (
                ("baseline_mb", "MB"),
                ("peak_mb", "MB"),
                ("end_mb", "MB"),
                ("live_actors", "actors"),
                ("threads", "threads"),
            ):
                section.stat(f"{stat}.{name}", unit).add(result[name])
            section.stat(f"{stat}.per_user_kb", "KB").add(
                (result["peak_mb"] - result["baseline_mb"]) * 1024 / users
            )
            section.stat(f"{stat}.rate", "users/s").add(users / result["seconds"])
        section.rows.append(_row(section, key))
    section.facts["users"] = str(users)
    section.notes.append(
        f"Median of {runs} run(s) per configuration (memory is not a timing; each run takes "
        f"tens of seconds). Defaults: max_live_actors={defaults.max_live_actors}, "
        f"idle_timeout={defaults.idle_timeout:g} s."
    )
    return [section]


def _one_decimal(value: float) -> str:
    return fmt_num(value, 1)


def _row(section: Section, key: str) -> list[str]:
    def get(name: str) -> Stat:
        return section.stats.get(f"rss.{key}.{name}") or Stat("")

    one = _one_decimal
    return [
        key,
        cell(get("baseline_mb"), one),
        cell(get("peak_mb"), one),
        cell(get("per_user_kb"), one),
        cell(get("end_mb"), one),
        cell(get("live_actors"), fmt_num),
        cell(get("threads"), fmt_num),
        cell(get("rate"), fmt_num),
    ]


if __name__ == "__main__":
    _child(sys.argv[1:])
