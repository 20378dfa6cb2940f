"""``python -m bench [SECTION ...]``: run the sections, print their tables, then the targets.

Without arguments every section runs; naming sections (``python -m bench postgres``) runs
only those, in the order given. Exit 0 once printed (2 for an unknown section name).
Sections run one after another in this process, except the RSS and PostgreSQL sections,
which start their own subprocesses. Scratch databases live under ``.bench-tmp`` in the
project and are deleted at the end, also when a section fails.
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

from bench import (
    append,
    cpu,
    hops,
    hybrid,
    load,
    pages,
    peer,
    pg_retrieve,
    pg_stages,
    postgres,
    processing,
    prompt,
    rebuild,
    retrieve,
    returning,
    rss,
    server,
)
from bench.common import PROJECT_ROOT, BenchConfig, Section, Workspace, progress
from bench.report import make_console, print_section, print_targets

SectionRunner = Callable[[BenchConfig, Workspace], list[Section]]

SECTIONS: list[tuple[str, SectionRunner]] = [
    ("add_exchange", append.run),
    ("load", load.run),
    ("returning", returning.run),
    ("processing", processing.run),
    ("prompt", prompt.run),
    ("rebuild", rebuild.run),
    ("retrieve", retrieve.run),
    ("hybrid", hybrid.run),
    ("rss", rss.run),
    ("postgres", postgres.run),
    ("pg_retrieve", pg_retrieve.run),
    ("pg_stages", pg_stages.run),
    ("peer", peer.run),
    ("hops", hops.run),
    ("pages", pages.run),
    ("cpu", cpu.run),
    ("server", server.run),
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


def select_sections(names: list[str]) -> list[tuple[str, SectionRunner]]:
    """The sections named (all of them when none is), or :class:`ValueError` for a typo."""
    if not names:
        return list(SECTIONS)
    known = dict(SECTIONS)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [(name, known[name]) for name in dict.fromkeys(names)]


def main(argv: list[str] | None = None) -> int:
    """Run the sections named in ``argv`` (default: all) as the environment configures.

    Returns 0 once printed, 2 for an unknown section name.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(
            f"usage: python -m bench [SECTION ...]; sections: {', '.join(n for n, _ in SECTIONS)}"
        )
        return 0
    try:
        selected = select_sections(args)
    except ValueError as error:
        print(f"python -m bench: {error}", file=sys.stderr)
        return 2
    cfg = BenchConfig.from_env()
    console = make_console()
    load1, load5, _ = os.getloadavg()
    console.print(
        f"[bold]memvee benchmark[/bold] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - "
        f"{code_version()} - "
        f"{'QUICK mode' if cfg.quick else 'full mode'}, {cfg.rounds} rounds per measurement - "
        f"sections: {', '.join(name for name, _ in selected)} - "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load average {load1:.2f} / {load5:.2f} (1 / 5 min)"
    )
    console.print()
    started = time.perf_counter()
    workspace = Workspace()
    sections: list[Section] = []
    try:
        for name, runner in selected:
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
