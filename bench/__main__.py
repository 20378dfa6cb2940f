"""``python -m bench``: run every section, print its table, then the targets; exit 0.

Sections run one after another in this process, except the RSS section, which starts its
own subprocesses. Scratch databases live under ``.bench-tmp`` in the project and are
deleted at the end, also when a section fails.
"""

from __future__ import annotations

import logging
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from bench import append, load, processing, rss
from bench.common import PROJECT_ROOT, BenchConfig, Section, Workspace, progress
from bench.report import make_console, print_section, print_targets

SectionRunner = Callable[[BenchConfig, Workspace], list[Section]]

SECTIONS: list[tuple[str, SectionRunner]] = [
    ("add_exchange", append.run),
    ("load", load.run),
    ("processing", processing.run),
    ("rss", rss.run),
]


def code_version() -> str:
    """The commit the engine code comes from, and whether it has uncommitted changes.

    Read-only git queries; figures are only comparable between runs of the same code.
    """
    engine_dirs = ["memvee", "actors", "events", "projections"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *engine_dirs],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted engine changes" if dirty else "")


def main() -> int:
    """Run the benchmark as configured by the environment; always returns 0 once printed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = BenchConfig.from_env()
    console = make_console()
    load1, load5, _ = os.getloadavg()
    console.print(
        f"[bold]memvee benchmark[/bold] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - "
        f"{code_version()} - "
        f"{'QUICK mode' if cfg.quick else 'full mode'}, {cfg.rounds} rounds per measurement - "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load average {load1:.2f} / {load5:.2f} (1 / 5 min)"
    )
    console.print()
    started = time.perf_counter()
    workspace = Workspace()
    sections: list[Section] = []
    try:
        for name, runner in SECTIONS:
            progress(f"section {name}")
            try:
                produced = runner(cfg, workspace)
            except Exception:
                console.print(f"[red]section {name} failed:[/red]\n{traceback.format_exc()}")
                continue
            for section in produced:
                print_section(console, section)
            sections.extend(produced)
    finally:
        workspace.cleanup()
    met, checked = print_targets(console, sections)
    load1, load5, _ = os.getloadavg()
    console.print(
        f"{met} of {checked} targets met. Whole run: {time.perf_counter() - started:,.0f} s; "
        f"load average at the end {load1:.2f} / {load5:.2f} (1 / 5 min)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
