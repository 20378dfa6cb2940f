"""The thread table: each thread's own CPU clock is read and charged to its group, the
writes are timed once however they nest, and a run's seconds become the µs per exchange
and the shares of the wall time the table prints."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import threads
from bench.common import BenchConfig, Workspace


def test_memvee_threads_are_grouped_by_their_names() -> None:
    assert threads.group_of("MainThread") == "event loop"
    assert threads.group_of("memvee-actor_0") == "actors"
    assert threads.group_of("memvee-actor_11") == "actors"
    assert threads.group_of("memvee-committer") == "committer"
    assert threads.group_of("memvee-checkpoints") == "other threads"
    assert threads.group_of("asyncio_0") == "other threads"


def test_a_thread_is_charged_its_own_cpu_time_not_its_wall_time() -> None:
    spun, release = threading.Event(), threading.Event()

    def spin() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.03:
            pass
        spun.set()
        release.wait()

    def sleep() -> None:
        release.wait()

    busy = threading.Thread(target=spin, name="test-busy")
    idle = threading.Thread(target=sleep, name="test-idle")
    busy.start()
    idle.start()
    try:
        assert spun.wait(10)
        found = threads.thread_cpu()
    finally:
        release.set()
        busy.join()
        idle.join()
    assert found["test-busy"] >= 0.03
    assert found["test-idle"] < 0.02


def test_nested_writes_are_timed_once() -> None:
    clock = threads.WriteClock()

    def write(depth: int) -> int:
        if depth:
            return int(timed(depth - 1))
        return 7

    timed = clock.wrap(write)
    assert timed(3) == 7
    assert clock.calls == 1
    assert clock.wall >= clock.cpu >= 0


def test_a_clock_within_another_counts_only_inside_its_calls() -> None:
    outer, inner = threads.WriteClock(), threads.WriteClock()
    commit = inner.wrap(lambda: None, within=outer)
    commit()
    assert inner.calls == 0
    outer.wrap(commit)()
    assert (outer.calls, inner.calls) == (1, 1)
    outer.reset()
    assert (outer.calls, outer.wall, outer.cpu) == (0, 0.0, 0.0)


def test_a_failed_write_is_still_timed_and_its_error_passes_through() -> None:
    clock = threads.WriteClock()

    def write() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        clock.wrap(write)()
    assert clock.calls == 1
    with clock.timing():
        pass
    assert clock.calls == 2


def test_a_run_is_printed_per_exchange_and_as_shares_of_its_wall_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = {
        "exchanges": 1000,
        "seconds": 2.0,
        "threads": {
            "MainThread": 0.1,
            "memvee-actor_0": 0.05,
            "memvee-actor_1": 0.15,
            "memvee-committer": 1.2,
            "memvee-checkpoints": 0.02,
        },
        "write_wall": 1.9,
        "write_cpu": 1.1,
        "writes": 40,
        "commit_wall": 0.4,
        "commit_cpu": 0.1,
    }

    def measure(folder: Path) -> dict[str, Any]:
        return run

    monkeypatch.setattr(threads, "measure", measure)
    section = threads.run(BenchConfig(quick=True, rounds=2), Workspace(tmp_path / "ws"))
    printed = {row[0]: (row[1].split("\n")[0], row[2].split("\n")[0]) for row in section.rows}
    assert printed == {
        "CPU: event loop": ("100.0", "5%"),
        "CPU: actors": ("200.0", "10%"),
        "CPU: committer": ("1,200.0", "60%"),
        "CPU: other threads": ("20.0", "1%"),
        "CPU: all threads": ("1,520.0", "76%"),
        "writing (group commits), wall time": ("1,900.0", "95%"),
        "  of which the writing thread on the CPU": ("1,100.0", "55%"),
        "  of which off the CPU": ("800.0", "40%"),
        "    in the commit (the disk)": ("300.0", "15%"),
        "    elsewhere (mostly waiting for the GIL)": ("500.0", "25%"),
    }
    assert len(section.stats["threads.committer.us"].samples) == 2


def test_the_scenario_runs_in_a_fresh_interpreter_and_reports_every_figure(
    tmp_path: Path,
) -> None:
    found = threads.measure(tmp_path, users=3, per_user=2)
    assert found["exchanges"] == 6
    assert found["writes"] >= 1
    assert 0 < found["write_cpu"] <= found["write_wall"]
    assert 0 < found["commit_cpu"] <= found["commit_wall"] <= found["write_wall"]
    assert found["seconds"] > 0
    groups = {threads.group_of(name) for name in found["threads"]}
    assert {"event loop", "actors", "committer"} <= groups
