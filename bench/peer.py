"""memvee beside its peer memv and raw sqlite3, on the write path, in the same run.

The scenarios of issue 13: one user writing 400 exchanges in sequence, then 100 users
writing 8 each, all in flight, at memvee's default durability (WAL, synchronous=FULL);
and the database bytes per stored message after 1,000 users x 10 exchanges with no
extraction, by table for memvee (SQLite's ``dbstat``), and after one user's 5,000. memv
runs in its own scratch venv (``make peer``), found through ``MEMV_PYTHON`` or
``.bench/memv/bin/python``; without it the section says so and measures memvee and
sqlite3 alone.

Both engines write through the same plain loop in a fresh interpreter of their own
(``peers/memv_runner.py``, ``peers/memvee_runner.py``), and on the same interpreter build
when ``make peer`` made ``.bench/memvee`` (or ``MEMVEE_PEER_PYTHON`` names one): memv
needs a Python whose sqlite3 loads extensions, and interpreter builds differ by 10 to 20%
in pure Python speed. The table says which interpreters ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.append import ASSISTANT_TEXT, USER_TEXT, write_histories
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
from bench.reference import raw_commits
from memvee import Memory, MemoryConfig

__all__ = ["memv_python", "memvee_python", "run"]

RUNNER = Path(__file__).resolve().parent / "peers" / "memv_runner.py"
MEMVEE_RUNNER = Path(__file__).resolve().parent / "peers" / "memvee_runner.py"
SIZE_USERS, SIZE_EXCHANGES = 1000, 10


def memv_python() -> Path | None:
    """The Python of the scratch venv that has memv, if one was made."""
    configured = os.environ.get("MEMV_PYTHON")
    path = Path(configured) if configured else PROJECT_ROOT / ".bench" / "memv" / "bin" / "python"
    return path if path.is_file() else None


def memvee_python() -> Path:
    """The Python that runs memvee's side: the peer's build if ``make peer`` made one,
    else this one."""
    configured = os.environ.get("MEMVEE_PEER_PYTHON")
    made = PROJECT_ROOT / ".bench" / "memvee" / "bin" / "python"
    if configured:
        return Path(configured)
    return made if made.is_file() else Path(sys.executable)


def _run(python: Path, runner: Path, folder: Path, single: int, many: int) -> dict[str, Any]:
    """Run one engine's scenarios in a fresh interpreter; its JSON result."""
    done = subprocess.run(
        [str(python), str(runner), str(folder), str(single), str(many), USER_TEXT, ASSISTANT_TEXT],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version.split()[0], sys.executable)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


async def _fill_one(path: Path, exchanges: int) -> None:
    """One user's long history, nothing extracted: every message stays in the log's state
    (what a snapshot holds), the case where snapshots could outgrow the log."""
    config = MemoryConfig(db_path=str(path), durability="normal")
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        for _ in range(exchanges):
            await memory.add_exchange("user-long", USER_TEXT, ASSISTANT_TEXT)


def bytes_by_table(path: Path) -> dict[str, int]:
    """Bytes of each table and index of a SQLite file, after a WAL checkpoint."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
    return {str(name): int(size) for name, size in rows}


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """One table of figures side by side, and one of memvee's bytes per message by table."""
    single, many = 400, 8
    section = Section(
        "Write path beside the peer: memvee, memv 0.1.2 and raw sqlite3 (WAL, FULL), same run",
        ["figure", "raw sqlite3", "memvee", "memv", "memvee ÷ memv"],
    )
    python = memv_python()
    ours = memvee_python()
    peer: list[dict[str, Any]] = []
    for round_no in range(1, cfg.rounds + 1):
        progress(f"peer round {round_no}/{cfg.rounds}: raw sqlite3 and memvee")
        with workspace.scratch("peer") as folder:
            raw = raw_commits(folder, synchronous="FULL", rows=2, transactions=single)
            section.stat("peer.raw.rate", "tx/s").add(raw.rate)
            (folder / "runs").mkdir()
            _add_runs(section, "memvee", _run(ours, MEMVEE_RUNNER, folder / "runs", single, many))
            asyncio.run(write_histories(folder / "size.db", SIZE_USERS, SIZE_EXCHANGES))
            sizes = bytes_by_table(folder / "size.db")
        messages = SIZE_USERS * SIZE_EXCHANGES * 2
        section.stat("peer.memvee.bytes", "B").add(sum(sizes.values()) / messages)
        for name, size in sizes.items():
            section.stat(f"peer.bytes.{name}", "B").add(size / messages)
        if python is not None:
            progress(f"peer round {round_no}/{cfg.rounds}: memv")
            with workspace.scratch("memv") as folder:
                peer.append(_run(python, RUNNER, folder, single, many))
            _add_runs(section, "memv", peer[-1])
            section.stat("peer.memv.bytes", "B").add(peer[-1]["bytes_per_message"])
        _add_ratios(section, with_peer=python is not None)
    _rows(section, python is not None)
    section.notes.append(
        f"Interpreters: memvee on Python {_version(ours)}"
        + (f"; memv on Python {_version(python)}." if python is not None else ".")
    )
    sizes_section = Section(
        f"memvee database bytes per stored message, by table and index "
        f"({SIZE_USERS:,} users x {SIZE_EXCHANGES} exchanges, no extraction)",
        ["table or index", "bytes / message"],
    )
    names = sorted(
        (k for k in section.stats if k.startswith("peer.bytes.")),
        key=lambda k: -section.stats[k].median,
    )
    for key in names:
        sizes_section.rows.append(
            [key.removeprefix("peer.bytes."), f"{section.stats[key].median:,.0f}"]
        )
    sizes_section.rows.append(["all", f"{section.stats['peer.memvee.bytes'].median:,.0f}"])
    return [section, sizes_section, _long_history(cfg, workspace)]


def _long_history(cfg: BenchConfig, workspace: Workspace) -> Section:
    """memvee's bytes per stored message by table for one user's long history."""
    exchanges = cfg.pick(5_000, 1_000)
    section = Section(
        f"memvee database bytes per stored message, one user x {exchanges:,} exchanges "
        "(no extraction, so every message stays in the log's snapshotted state)",
        ["table or index", "bytes / message"],
    )
    progress(f"peer: one user's history of {exchanges:,} exchanges")
    with workspace.scratch("long") as folder:
        asyncio.run(_fill_one(folder / "long.db", exchanges))
        sizes = bytes_by_table(folder / "long.db")
    messages = exchanges * 2
    shown = sorted(sizes.items(), key=lambda kv: -kv[1])
    for name, size in shown:
        if size / messages >= 1:
            section.rows.append([name, f"{size / messages:,.0f}"])
    section.rows.append(["all", f"{sum(sizes.values()) / messages:,.0f}"])
    section.stat("peer.long.bytes", "B").add(sum(sizes.values()) / messages)
    section.notes.append(
        "Durability NORMAL (the bytes do not depend on it). Only a log's latest snapshot "
        "is kept, and a large state is snapshotted after as many events as it is large in "
        "stored events: kept every 100 events, snapshots made this 4,941 bytes per message "
        "at 5,000 exchanges, and grew with the square of the history."
    )
    return section


def _add_runs(section: Section, engine: str, result: dict[str, Any]) -> None:
    """One round's figures of ``engine`` from its runner's JSON (memvee's runner also
    times raw sqlite3's two-row commits, in turns with its one user's exchanges)."""
    hundred = result["hundred_users"]
    raw = result["one_user"].get("raw_latencies")
    if raw:
        section.stat("peer.raw.p50", "ms").add(percentile(raw, 50) * 1000)
    exchanges = len(hundred["latencies"])
    one_p50 = percentile(result["one_user"]["latencies"], 50) * 1000
    section.stat(f"peer.{engine}.one_p50", "ms").add(one_p50)
    section.stat(f"peer.{engine}.rate", "ex/s").add(exchanges / hundred["seconds"])
    section.stat(f"peer.{engine}.p50", "ms").add(percentile(hundred["latencies"], 50) * 1000)
    section.stat(f"peer.{engine}.p99", "ms").add(percentile(hundred["latencies"], 99) * 1000)
    section.stat(f"peer.{engine}.cpu_us", "µs").add(hundred["cpu_seconds"] / exchanges * 1e6)


def _add_ratios(section: Section, *, with_peer: bool) -> None:
    """The latest round's ratios, each between figures of that same round (the targets of
    issue 13 are ratios to raw sqlite3 and to memv measured side by side)."""
    stats = section.stats

    def latest(name: str) -> float:
        return stats[name].samples[-1]

    section.stat("peer.one_p50_raw_ratio", "x").add(
        latest("peer.memvee.one_p50") / latest("peer.raw.p50")
    )
    if not with_peer:
        return
    for name in ("rate", "bytes"):
        section.stat(f"peer.{name}_ratio", "x").add(
            latest(f"peer.memvee.{name}") / latest(f"peer.memv.{name}")
        )


def _rows(section: Section, with_peer: bool) -> None:
    stats = section.stats

    def ratio(name: str) -> str:
        if not with_peer:
            return "-"
        return fmt_ratio(stats[f"peer.memvee.{name}"].median / stats[f"peer.memv.{name}"].median)

    def peer(name: str, fmt: Any) -> str:
        return cell(stats[f"peer.memv.{name}"], fmt) if with_peer else "not installed"

    raw_p50 = stats["peer.raw.p50"].median
    section.rows += [
        [
            "one user: add_exchange p50 ms",
            cell(stats["peer.raw.p50"], fmt_ms),
            cell(stats["peer.memvee.one_p50"], fmt_ms)
            + f" ({fmt_ratio(stats['peer.memvee.one_p50'].median / raw_p50)} raw)",
            peer("one_p50", fmt_ms),
            ratio("one_p50"),
        ],
        [
            "100 users: exchanges / s",
            cell(stats["peer.raw.rate"], fmt_num) + " (one commit each)",
            cell(stats["peer.memvee.rate"], fmt_num),
            peer("rate", fmt_num),
            ratio("rate"),
        ],
        [
            "100 users: p50 ms",
            "",
            cell(stats["peer.memvee.p50"], fmt_ms),
            peer("p50", fmt_ms),
            ratio("p50"),
        ],
        [
            "100 users: p99 ms",
            "",
            cell(stats["peer.memvee.p99"], fmt_ms),
            peer("p99", fmt_ms),
            ratio("p99"),
        ],
        [
            "100 users: CPU µs / exchange (all threads)",
            "",
            f"{stats['peer.memvee.cpu_us'].median:,.0f}",
            f"{stats['peer.memv.cpu_us'].median:,.0f}" if with_peer else "not installed",
            ratio("cpu_us"),
        ],
        [
            "bytes / stored message",
            "",
            f"{stats['peer.memvee.bytes'].median:,.0f}",
            f"{stats['peer.memv.bytes'].median:,.0f}" if with_peer else "not installed",
            ratio("bytes"),
        ],
    ]
    if not with_peer:
        section.notes.append(
            "memv is not installed: run `make peer` (a scratch venv in .bench/memv) or set "
            "MEMV_PYTHON to a Python that has memv 0.1.2."
        )
    section.notes.append(
        "Same texts for both; memv with auto-processing off and a stand-in embedder that is "
        "never called; memvee with an instant extractor that never runs (no process call)."
    )
    section.notes.append(
        "Raw sqlite3's one-user p50 is timed in memvee's runner, in blocks of 50 two-row "
        "commits taking turns with blocks of 50 of memvee's exchanges, so the ratio sets "
        "both in the same moments of the machine; its rate, in the bench's process."
    )
