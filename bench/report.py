"""Printing: one rich table per section, then the issues' targets against medians.

A target is never asserted: the table says whether it is met and, when it is not, by how
much, so the figures can be quoted in a closing note as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table

from bench.common import Section, Stat, fmt_ms, fmt_num, fmt_ratio

__all__ = ["Target", "make_console", "print_section", "print_targets", "targets"]

Op = Literal["<=", "<", ">="]


@dataclass(frozen=True, slots=True)
class Target:
    """One line of the issue's targets: a statistic compared with a limit."""

    name: str
    key: str
    op: Op
    limit: float
    fmt: Callable[[float], str]
    unit: str = ""


def make_console() -> Console:
    """A console for stdout, wide enough for the tables when stdout is not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def print_section(console: Console, section: Section) -> None:
    """Print ``section`` as a table, with its notes below it (only the title and the notes
    when it has no rows, e.g. a skipped section)."""
    if not section.rows:
        console.print(f"[italic]{section.title}[/italic]")
        for note in section.notes:
            console.print(f"  [dim]{note}[/dim]")
        console.print()
        return
    table = Table(
        title=section.title,
        title_justify="left",
        box=box.SIMPLE_HEAVY,
        min_width=min(len(section.title) + 2, console.width),
    )
    for i, column in enumerate(section.columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in section.rows:
        table.add_row(*row)
    console.print(table)
    for note in section.notes:
        console.print(f"  [dim]{note}[/dim]")
    console.print()


def targets(sections: Sequence[Section]) -> list[Target]:
    """The issue's targets, named after the sizes this run actually used."""
    facts = {k: v for s in sections for k, v in s.facts.items()}
    sizes = [int(n) for n in facts.get("sizes", "10000,100000").split(",")]
    largest = max(sizes)
    users = int(facts.get("users", "10000"))
    rebuild_events = int(facts.get("rebuild.events", "100000"))
    state_events = int(facts.get("state_at.events", "100000"))
    retrieve_largest = int(facts.get("retrieve.largest", "100000"))
    many_users, per_user = (int(n) for n in facts.get("retrieve.many", "1000,100").split(","))
    return [
        Target(
            "single-user add_exchange p50 ÷ raw 2-row tx p50",
            "append.full.1.p50_ratio",
            "<=",
            2,
            fmt_ratio,
        ),
        Target(
            "100 users: add_exchange/s ÷ raw 2-row tx/s",
            "append.full.100.rate_ratio",
            ">=",
            3,
            fmt_ratio,
        ),
        Target("100 users: add_exchange p99", "append.full.100.p99", "<=", 50, fmt_ms, "ms"),
        Target(
            "1,000 users: add_exchange/s ÷ raw 2-row tx/s",
            "append.full.1000.rate_ratio",
            ">=",
            3,
            fmt_ratio,
        ),
        Target("1,000 users: add_exchange p99", "append.full.1000.p99", "<=", 50, fmt_ms, "ms"),
        Target(
            f"load {largest:,} events (with snapshot)",
            f"load.{largest}.snap",
            "<=",
            20,
            fmt_ms,
            "ms",
        ),
        Target(
            f"load flat: {largest:,} ÷ {min(sizes):,} events (with snapshot)",
            "load.flat",
            "<=",
            1.5,
            fmt_ratio,
        ),
        Target("processing run overhead p50 (one fact)", "process.1.p50", "<=", 5, fmt_ms, "ms"),
        Target(
            f"rebuild {rebuild_events:,} events: events/s ÷ raw SELECT rows/s",
            "rebuild.ratio",
            ">=",
            0.5,
            fmt_ratio,
        ),
        Target(
            f"state --at on a user of {state_events:,} events",
            "state_at.ms",
            "<=",
            300,
            fmt_ms,
            "ms",
        ),
        Target(
            f"retrieve p50 ÷ raw MATCH p50, one user of {retrieve_largest:,} entries",
            f"retrieve.1u.{retrieve_largest}.ratio",
            "<=",
            2,
            fmt_ratio,
        ),
        Target(
            f"retrieve p50, one user of {retrieve_largest:,} entries",
            f"retrieve.1u.{retrieve_largest}.p50",
            "<=",
            10,
            fmt_ms,
            "ms",
        ),
        Target(
            f"retrieve p50 ÷ raw MATCH p50, one of {many_users:,} users x {per_user:,} entries",
            f"retrieve.{many_users}u.{per_user}.ratio",
            "<=",
            2,
            fmt_ratio,
        ),
        Target(
            f"retrieve p50, one of {many_users:,} users x {per_user:,} entries",
            f"retrieve.{many_users}u.{per_user}.p50",
            "<=",
            10,
            fmt_ms,
            "ms",
        ),
        Target(
            "query embedding p50 (default embedder)", "embedder.query_p50", "<=", 5, fmt_ms, "ms"
        ),
        Target(
            "indexing rate (default embedder)",
            "embedder.index_rate",
            ">=",
            150,
            fmt_num,
            "msg/s",
        ),
        Target(
            "hybrid retrieve p50 (default embedder), one user of 10,000 messages",
            "hybrid.10000.hybrid_p50",
            "<=",
            15,
            fmt_ms,
            "ms",
        ),
        Target(
            f"peak RSS after touching {users:,} users (defaults)",
            "rss.defaults.peak_mb",
            "<=",
            150,
            _mb,
            "MB",
        ),
        Target(
            "largest loop stall charged to memvee, 1,000-user run (cold + steady)",
            "append.full.1000.charged_stall",
            "<",
            20,
            fmt_ms,
            "ms",
        ),
        Target(
            "issue 13: one user p50 ÷ raw 2-row commit p50 (peer scenario)",
            "peer.one_p50_raw_ratio",
            "<=",
            2,
            fmt_ratio,
        ),
        Target(
            "issue 13: 100 users' exchanges/s ÷ memv's, same round",
            "peer.rate_ratio",
            ">=",
            1,
            fmt_ratio,
        ),
        Target(
            "issue 13: 100 users: p99 (peer scenario)", "peer.memvee.p99", "<=", 20, fmt_ms, "ms"
        ),
        Target(
            "issue 13: 100 users: CPU per exchange, all threads (peer scenario)",
            "peer.memvee.cpu_us",
            "<=",
            100,
            fmt_num,
            "µs",
        ),
        Target(
            "issue 13: database bytes per stored message ÷ memv's, same round",
            "peer.bytes_ratio",
            "<=",
            3,
            fmt_ratio,
        ),
        Target(
            f"issue 13: rebuild {rebuild_events:,} events ÷ raw SELECT rows/s",
            "rebuild.ratio",
            ">=",
            0.1,
            fmt_ratio,
        ),
        Target(
            "PostgreSQL: add_exchange/s, 4 processes ÷ 1 process",
            "pg.50u.4.scale",
            ">=",
            2,
            fmt_ratio,
        ),
        Target(
            "PostgreSQL: 1-process single-user add_exchange p50 ÷ raw insert p50",
            "pg.1u.1.p50_ratio",
            "<=",
            2,
            fmt_ratio,
        ),
    ]


def _short_pragmas(pragmas: str) -> str:
    return pragmas.replace("journal_mode=", "").replace("synchronous=", "")


def _mb(value: float) -> str:
    return fmt_num(value, 1)


def _verdict(target: Target, value: float) -> tuple[str, str]:
    """``(met, how much missed)`` for ``value`` against ``target``."""
    if math.isnan(value):
        return "[yellow]n/a[/yellow]", "not measured"
    if target.op == "<=":
        met = value <= target.limit
    elif target.op == "<":
        met = value < target.limit
    else:
        met = value >= target.limit
    if met:
        return "[green]yes[/green]", ""
    if target.op == ">=":
        short = target.limit / value if value > 0 else math.inf
        return "[red]no[/red]", f"{short:.1f}x too low"
    missed = f"{value / target.limit:.1f}x the limit"
    if target.unit:
        missed += f" (+{target.fmt(value - target.limit)} {target.unit})"
    return "[red]no[/red]", missed


def print_targets(console: Console, sections: Sequence[Section]) -> tuple[int, int]:
    """Print the targets table; returns ``(met, checked)``, not counting unmeasured ones."""
    stats: dict[str, Stat] = {k: v for s in sections for k, v in s.stats.items()}
    facts = {k: v for s in sections for k, v in s.facts.items()}
    table = Table(
        title="Targets of the issues (medians over rounds; never asserted)",
        title_justify="left",
        box=box.SIMPLE_HEAVY,
    )
    table.add_column("target", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("range", justify="right")
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("met", justify="center")
    table.add_column("missed by")
    met_count = checked = unmeasured = 0
    expected = "journal_mode=WAL, synchronous=FULL"
    durability = facts.get("pragmas.full", "")
    if durability:
        ok = durability == expected
        table.add_row(
            "default durability (survives kill and power loss)",
            _short_pragmas(durability),
            "",
            _short_pragmas(expected),
            "[green]yes[/green]" if ok else "[red]no[/red]",
            "",
        )
        checked += 1
        met_count += ok
    for target in targets(sections):
        stat = stats.get(target.key)
        value = math.nan if stat is None else stat.median
        met, missed = _verdict(target, value)
        unit = f" {target.unit}" if target.unit else ""
        spread = (
            f"{target.fmt(stat.low)}-{target.fmt(stat.high)}"
            if stat is not None and len(stat.samples) > 1
            else ""
        )
        table.add_row(
            target.name,
            f"{target.fmt(value)}{unit}",
            spread,
            f"{target.op} {target.fmt(target.limit)}{unit}",
            met,
            missed,
        )
        if math.isnan(value):
            unmeasured += 1
            continue
        checked += 1
        met_count += "yes" in met
    console.print(table)
    faster = facts.get("pragmas.normal")
    if faster:
        console.print(f"  [dim]Documented faster option, durability='normal': {faster}.[/dim]")
    console.print(
        "  [dim]'load flat' is read as: the largest history loads within 1.5x of the "
        "smallest.[/dim]"
    )
    if unmeasured:
        console.print(
            f"  [dim]{unmeasured} target(s) not measured in this run (section skipped, "
            "failed or not selected) and not counted below.[/dim]"
        )
    cpus = facts.get("cpus")
    if cpus:
        console.print(
            f"  [dim]PostgreSQL scaling is measured on a machine with {cpus} CPU core(s), "
            "shared by the worker processes and the server.[/dim]"
        )
    console.print()
    return met_count, checked
