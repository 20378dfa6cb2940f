"""What every section shares: the run's configuration, statistics, scratch space and helpers.

Measurements are repeated in rounds because the machine is shared and noisy; a
:class:`Stat` keeps one sample per round and is reported by its median (with the range).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from events import ExtractedFact, ExtractionBatch, ExtractionResult

__all__ = [
    "PROJECT_ROOT",
    "BenchConfig",
    "InstantExtractor",
    "Section",
    "Stat",
    "Workspace",
    "cell",
    "fmt_ms",
    "fmt_num",
    "fmt_ratio",
    "fmt_us",
    "percentile",
    "progress",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The project folder: scratch databases go below it, on the project's own file system."""

_progress = Console(stderr=True, highlight=False)


def progress(message: str) -> None:
    """Say what the benchmark is doing now, on stderr, so stdout holds only the tables."""
    _progress.log(message, _stack_offset=2)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """The run's knobs, read from the environment (``BENCH_ROUNDS``, ``BENCH_QUICK``)."""

    quick: bool
    rounds: int

    @classmethod
    def from_env(cls) -> BenchConfig:
        """Quick mode when ``BENCH_QUICK`` is set to anything but 0/empty; rounds default 5 (3)."""
        quick = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0", "false", "no")
        default_rounds = 3 if quick else 5
        raw = os.environ.get("BENCH_ROUNDS", "").strip()
        rounds = int(raw) if raw else default_rounds
        if rounds < 1:
            raise ValueError(f"BENCH_ROUNDS must be at least 1, not {rounds}")
        return cls(quick=quick, rounds=rounds)

    def pick(self, full: int, quick: int) -> int:
        """``full`` in a full run, ``quick`` in quick mode."""
        return quick if self.quick else full


@dataclass(slots=True)
class Stat:
    """One figure measured in several rounds: its samples, reported by their median."""

    unit: str
    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        """Record the value of one round."""
        self.samples.append(value)

    @property
    def median(self) -> float:
        """The median over rounds (NaN before any round)."""
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def low(self) -> float:
        """The smallest round."""
        return min(self.samples) if self.samples else math.nan

    @property
    def high(self) -> float:
        """The largest round."""
        return max(self.samples) if self.samples else math.nan


@dataclass(slots=True)
class Section:
    """One table of the report, and the named statistics the targets are checked on.

    ``facts`` holds findings that are not numbers (for example the SQLite pragmas seen).
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def stat(self, key: str, unit: str) -> Stat:
        """The statistic ``key``, created on first use."""
        if key not in self.stats:
            self.stats[key] = Stat(unit)
        return self.stats[key]


class Workspace:
    """Scratch folders under ``<project>/.bench-tmp``, removed when the run ends.

    The databases must live on the project's file system so that the raw sqlite3
    reference and the engine pay the same fsync.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or PROJECT_ROOT / ".bench-tmp"
        self._created_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def mkdtemp(self, prefix: str) -> Path:
        """A fresh empty folder for one measurement."""
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.run_dir))

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A fresh folder that is deleted (with its databases) when the block ends."""
        folder = self.mkdtemp(prefix)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cleanup(self) -> None:
        """Delete this run's folder, and ``.bench-tmp`` itself if this run created it."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._created_root:
            with suppress(OSError):
                self.root.rmdir()


class InstantExtractor:
    """An :class:`events.Extractor` that answers at once, so a run measures only the engine.

    It returns ``facts`` facts (at most one per message), each citing one message of the
    batch, so the KnowledgeExtracted path with its projection rows is exercised.
    """

    name = "instant"

    def __init__(self, facts: int = 1) -> None:
        self.facts = facts
        self.calls = 0

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """One fact per message, up to ``facts``; no I/O, no awaiting."""
        self.calls += 1
        chosen = batch.messages[: self.facts]
        facts = tuple(
            ExtractedFact(f"fact {i} of task {batch.task_id}", (m.message_id,))
            for i, m in enumerate(chosen)
        )
        return ExtractionResult(facts=facts, extractor=self.name)

    async def aclose(self) -> None:
        """Nothing to release."""
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` with linear interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _spread(stat: Stat, fmt: Callable[[float], str]) -> str:
    if len(stat.samples) < 2:
        return ""
    return f"\n[dim]{fmt(stat.low)}-{fmt(stat.high)}[/dim]"


def fmt_num(value: float, digits: int = 0) -> str:
    """A number with thousands separators (``-`` for NaN)."""
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def fmt_us(value: float) -> str:
    """Microseconds, to a tenth."""
    return fmt_num(value, 1)


def fmt_ms(value: float) -> str:
    """Milliseconds with a precision that suits their size."""
    if math.isnan(value):
        return "-"
    if value < 1:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    """A ratio such as ``2.4x``."""
    if math.isnan(value):
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:,.1f}x"


def cell(stat: Stat, fmt: Callable[[float], str]) -> str:
    """A table cell: the median, with the min-max range of the rounds below it, dimmed."""
    return fmt(stat.median) + _spread(stat, fmt)
