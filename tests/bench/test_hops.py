"""The hop-by-hop table of one user's add_exchange: every hop an exchange crosses is
printed, from the caller's call to its resuming, with the driver's COMMIT apart, the sums
the time above raw is split into, and the pages each commit wrote beside raw sqlite3's."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench import hops
from bench.common import Section


def test_every_hop_of_an_exchange_is_printed_in_the_order_it_is_crossed(
    tmp_path: Path,
) -> None:
    section = Section("hops", [])
    hops.record(section, hops.measure(tmp_path, 6, block_size=3))
    hops.table(section)

    printed = [row[0] for row in section.rows]
    crossed = [f"{start} -> {end}" for start, end in itertools.pairwise(hops.ORDER)]
    assert printed[: len(crossed)] == crossed
    assert "driver COMMIT -> committed" in printed
    assert printed[len(crossed) :] == [
        "add_exchange, end to end",
        "raw sqlite3 two-row commit (WAL, FULL), same blocks",
        "end to end ÷ raw",
        "of it: the driver's COMMIT (SQLite, its fsync)",
        "of it: waiting for a thread or the loop to wake",
        "of it: Python on the loop and the actor's thread",
        "pages written per commit: memvee",
        "pages written per commit: raw sqlite3",
    ]


def test_the_parts_add_up_to_the_whole_and_both_engines_wrote_pages(tmp_path: Path) -> None:
    section = Section("hops", [])
    hops.record(section, hops.measure(tmp_path, 4, block_size=2))

    stats = {key: stat.samples for key, stat in section.stats.items()}
    commit, handovers, rest = (stats[f"hops.{k}"][0] for k in ("commit", "handovers", "rest"))
    assert commit + handovers + rest == pytest.approx(stats["hops.total"][0])
    assert stats["hops.frames"][0] >= 1
    assert stats["hops.raw_frames"][0] >= 1


def test_the_stamped_functions_are_put_back_after_the_run(tmp_path: Path) -> None:
    originals = [getattr(owner, name) for _, owner, name, _ in hops.HOPS]
    hops.measure(tmp_path, 2, block_size=1)
    assert [getattr(owner, name) for _, owner, name, _ in hops.HOPS] == originals
