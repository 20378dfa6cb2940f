"""Where the 100-user write scenario's time goes, by thread, and how busy the writer is.

Every exchange is written by a group commit, one at a time, so the writes are the pipe
the whole scenario goes through. A fresh interpreter runs the scenario unprofiled and
reads each thread's CPU clock (``pthread_getcpuclockid``) before and after. It also
times every write (``GroupCommitter._write``, on whichever thread ran it) and the commit
inside it: the share of the wall time spent writing, and how much of that the writing
thread was on the CPU. A writer busy nearly all the time but on the CPU for only part of
it is waiting: in the commit, for the disk; elsewhere, mostly for the GIL that the other
threads hold.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PROJECT_ROOT, BenchConfig, Section, Workspace, cell, fmt_us, progress

__all__ = ["GROUPS", "PER_USER", "USERS", "WriteClock", "group_of", "run", "scenario", "thread_cpu"]

GROUPS = ("event loop", "actors", "committer", "other threads")
"""The threads, grouped as the table shows them."""

USERS, PER_USER = 100, 40
"""The scenario: this many users in flight, each writing this many exchanges in sequence."""


def group_of(name: str) -> str:
    """The group of the thread called ``name`` (memvee names its threads)."""
    if name == "MainThread":
        return "event loop"
    if name.startswith("memvee-actor_"):
        return "actors"
    if name == "memvee-committer":
        return "committer"
    return "other threads"


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread so far, by thread name (threads whose clock
    cannot be read are left out)."""
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        ident = thread.ident
        if ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(ident)
            found[thread.name] = time.clock_gettime(clock)
        except (AttributeError, OSError):
            continue
    return found


@dataclass
class WriteClock:
    """Wall and CPU seconds spent inside timed calls, counted once when they nest.

    The sums are not locked: the calls it times must not overlap across threads (memvee
    writes one group commit at a time)."""

    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0

    def __post_init__(self) -> None:
        self._depth = threading.local()

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Count the block's wall and thread CPU time (not again inside itself)."""
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                self.wall += time.perf_counter() - wall
                self.cpu += time.thread_time() - cpu
                self.calls += 1

    def active(self) -> bool:
        """Whether this thread is inside a timed call."""
        return bool(getattr(self._depth, "value", 0))

    def wrap(
        self, function: Callable[..., Any], *, within: WriteClock | None = None
    ) -> Callable[..., Any]:
        """``function``, timed (with ``within``: only inside that clock's timed calls)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if within is not None and not within.active():
                return function(*args, **kwargs)
            with self.timing():
                return function(*args, **kwargs)

        return timed

    def reset(self) -> None:
        """Start counting from nothing."""
        self.wall, self.cpu, self.calls = 0.0, 0.0, 0


async def scenario(folder: Path, users: int, per_user: int) -> dict[str, Any]:
    """``users`` users in flight, each writing ``per_user`` exchanges after a warm-up one:
    the measured phase's seconds, each thread's CPU seconds, and the writes' and their
    commits' wall and CPU seconds. It wraps the committer's write and the dialect's commit
    for good, so it runs in an interpreter of its own."""
    from sqlalchemy.engine.default import DefaultDialect

    from actors._committer import GroupCommitter
    from bench.append import write_exchanges
    from bench.common import InstantExtractor
    from memvee import Memory, MemoryConfig

    writes, commits = WriteClock(), WriteClock()
    GroupCommitter._write = writes.wrap(GroupCommitter._write)  # type: ignore[method-assign]
    DefaultDialect.do_commit = commits.wrap(  # type: ignore[method-assign]
        DefaultDialect.do_commit, within=writes
    )
    config = MemoryConfig(db_path=str(folder / "memvee.db"))
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        names = [f"user-{i:05d}" for i in range(users)]
        await asyncio.gather(*(write_exchanges(memory, u, 1, []) for u in names))
        before = thread_cpu()
        writes.reset()
        commits.reset()
        started = time.perf_counter()
        await asyncio.gather(*(write_exchanges(memory, u, per_user, []) for u in names))
        seconds = time.perf_counter() - started
        after = thread_cpu()
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return {
        "exchanges": users * per_user,
        "seconds": seconds,
        "threads": spent,
        "write_wall": writes.wall,
        "write_cpu": writes.cpu,
        "writes": writes.calls,
        "commit_wall": commits.wall,
        "commit_cpu": commits.cpu,
    }


def measure(folder: Path, users: int = USERS, per_user: int = PER_USER) -> dict[str, Any]:
    """One run of the scenario in a fresh interpreter; what :func:`scenario` reports."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.threads", str(folder), str(users), str(per_user)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=PROJECT_ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the thread-time run failed: {done.stderr.strip()[-400:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def run(cfg: BenchConfig, workspace: Workspace) -> Section:
    """The scenario's CPU by thread group and the writes' wall and CPU time, medians of
    ``cfg.rounds`` runs."""
    section = Section(
        f"Where the time goes by thread: {USERS} users x {PER_USER} exchanges in flight, "
        "unprofiled",
        ["", "µs / exchange", "share of the wall time"],
    )
    for round_no in range(1, cfg.rounds + 1):
        progress(f"thread time round {round_no}/{cfg.rounds}")
        with workspace.scratch("threads") as folder:
            _record(section, measure(folder))
    stats = section.stats
    rows = [(group, f"CPU: {group}") for group in GROUPS] + [
        ("all", "CPU: all threads"),
        ("write_wall", "writing (group commits), wall time"),
        ("write_cpu", "  of which the writing thread on the CPU"),
        ("write_off", "  of which off the CPU"),
        ("commit_off", "    in the commit (the disk)"),
        ("other_off", "    elsewhere (mostly waiting for the GIL)"),
    ]
    for key, label in rows:
        us, share = stats[f"threads.{key}.us"], stats[f"threads.{key}.share"]
        section.rows.append([label, cell(us, fmt_us), cell(share, _pct)])
    section.notes.append(
        "Thread CPU clocks read before and after the measured phase, in a fresh "
        "interpreter; the writes timed around GroupCommitter._write on whichever thread ran "
        "them, and their commits (the WAL's write and fsync) around the driver's commit. A "
        "share of the wall time near 100% for the writes means they follow each other "
        "without a gap: the committer is the bottleneck, and its time off the CPU outside "
        "the commit is mostly the GIL, held by the loop and the actors as they take the "
        "last commit's acknowledgements and decide the next exchanges."
    )
    return section


def _record(section: Section, found: dict[str, Any]) -> None:
    """One run's figures as the section's statistics."""
    exchanges, seconds = found["exchanges"], found["seconds"]

    def add(key: str, cpu_seconds: float) -> None:
        section.stat(f"threads.{key}.us", "µs").add(cpu_seconds / exchanges * 1e6)
        section.stat(f"threads.{key}.share", "%").add(cpu_seconds / seconds * 100)

    by_group = dict.fromkeys(GROUPS, 0.0)
    for name, spent in found["threads"].items():
        by_group[group_of(name)] += spent
    for group, spent in by_group.items():
        add(group, spent)
    add("all", sum(by_group.values()))
    add("write_wall", found["write_wall"])
    add("write_cpu", found["write_cpu"])
    write_off = found["write_wall"] - found["write_cpu"]
    commit_off = found["commit_wall"] - found["commit_cpu"]
    add("write_off", write_off)
    add("commit_off", commit_off)
    add("other_off", write_off - commit_off)


def _pct(value: float) -> str:
    return f"{value:.0f}%"


if __name__ == "__main__":
    counts = [int(a) for a in sys.argv[2:4]] if len(sys.argv) > 3 else [USERS, PER_USER]
    print(json.dumps(asyncio.run(scenario(Path(sys.argv[1]), *counts))))
