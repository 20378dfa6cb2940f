"""Where the CPU of one exchange goes: a py-spy sampling profile across all threads.

A child process runs the 100-user write scenario (:func:`bench.threads.scenario`: 100
users, each writing exchanges in sequence, all in flight; default durability) under
``py-spy record --gil``: every thread, but only the one holding the GIL at each sample, so
threads waiting for the GIL or a lock are not counted as working. Each sample is charged
to the innermost frame that belongs to a known layer, so a sample in ``uuid4`` called from
an actor counts as uuid, and one in SQLAlchemy's compiler called from a fold counts as
SQLAlchemy. SQLite's own C code runs without the GIL, so its time is not in these shares.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench import stages, threads
from bench.common import BenchConfig, Section, Workspace, progress

__all__ = ["LAYERS", "layer_of", "run"]

LAYERS: tuple[tuple[str, str], ...] = (
    ("uuid", r"\(uuid\.py"),
    ("json encoding and decoding", r"\(json/|orjson"),
    ("eventsourcing: events, mapper, recorder", r"\(eventsourcing/"),
    ("SQLAlchemy: statements and compilation", r"\(sqlalchemy/sql/"),
    ("SQLAlchemy: execution, pool, results", r"\(sqlalchemy/"),
    ("sqlite3 driver", r"\(sqlite3/"),
    ("pykka: actor messages", r"\(pykka/"),
    ("memvee projections (folds)", r"\(projections/"),
    ("memvee events (aggregate, store)", r"\(events/"),
    ("memvee actors (engine, committer)", r"\(actors/"),
    ("memvee API (Memory)", r"\(memvee/"),
    ("threads, queues, futures", r"\((threading|queue)\.py|\(concurrent/"),
    ("asyncio event loop", r"\(asyncio/"),
    ("the load generator", r"\(bench/"),
)
"""Layers in the order they are tried, innermost frame first: the first that matches."""

_COMPILED = [(name, re.compile(pattern)) for name, pattern in LAYERS]


def layer_of(stack: list[str]) -> str:
    """The layer charged for one sampled stack (outermost frame first, as py-spy writes)."""
    for frame in reversed(stack):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
    return "other (interpreter, C extensions)"


def breakdown(raw: str) -> Counter[str]:
    """Samples per layer from py-spy's raw (collapsed-stack) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if "_find_and_load" in stack:  # importing modules at start-up, not writing
            continue
        if stack and count.isdigit():
            counts[layer_of(stack.split(";"))] += int(count)
    return counts


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Profile the 100-user scenario once (the share of CPU samples per layer), time it by
    thread (:mod:`bench.threads`), then time the write path in one thread by stage, beside
    raw sqlite3 (:mod:`bench.stages`)."""
    return [_layers(workspace), threads.run(cfg, workspace), stages.run(cfg, workspace)]


def _layers(workspace: Workspace) -> Section:
    """The share of CPU samples per layer in one profiled run of the 100-user scenario."""
    section = Section(
        "CPU of the write path by layer: py-spy samples of the GIL holder, "
        f"{threads.USERS} users x {threads.PER_USER} exchanges in flight",
        ["layer", "share of samples", "µs / exchange (profiled run)"],
    )
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        section.notes.append("py-spy is not installed (it is in the dev extra): not measured.")
        return section
    progress("cpu profile of the 100-user write scenario")
    with workspace.scratch("cpu") as folder:
        out = folder / "samples.txt"
        spy_options = ["--gil", "--format", "raw", "--rate", "500", "--output", str(out)]
        spied = [sys.executable, "-m", "bench.cpu", str(folder)]
        done = subprocess.run(
            [spy, "record", *spy_options, "--", *spied],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            section.notes.append(f"py-spy failed: {done.stderr.strip().splitlines()[-1:]}")
            return section
        counts = breakdown(out.read_text(encoding="utf-8"))
    found = re.search(r"cpu_us_per_exchange=([\d.]+)", done.stdout)
    per_exchange = float(found.group(1)) if found else 0.0
    total = sum(counts.values()) or 1
    section.stat("cpu.us_per_exchange", "µs").add(per_exchange)
    for name, count in counts.most_common():
        share = count / total
        section.rows.append([name, f"{share:.1%}", f"{share * per_exchange:,.0f}"])
    section.rows.append(["all (process CPU time / exchanges)", "100%", f"{per_exchange:,.0f}"])
    section.notes.append(
        "Each sample is charged to the innermost frame of a known layer. The µs column "
        "splits the profiled run's process CPU per exchange (sampling included, so higher "
        "than the unprofiled figure of the add_exchange and peer sections) by those shares."
    )
    return section


if __name__ == "__main__":
    found = asyncio.run(threads.scenario(Path(sys.argv[1]), threads.USERS, threads.PER_USER))
    cpu = sum(found["threads"].values())
    print(f"cpu_us_per_exchange={cpu / found['exchanges'] * 1e6:.1f}")
