"""The rebuild's CPU breakdown: every stage it times is a step a rebuild takes, and the
stages with the rest account for the whole rebuild."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bench.rebuild import REBUILD_STAGES, _build_users, rebuild_breakdown
from bench.stages import timing
from events import EventStore, sqlite_url
from projections import rebuild


def test_every_stage_the_breakdown_times_is_called_by_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    written = _build_users(path, 3, 40)
    store = EventStore(sqlite_url(path), durability="normal")
    try:
        spent: dict[str, int] = defaultdict(int)
        with timing(spent, REBUILD_STAGES):  # pages of 20 events: some are read ahead
            assert rebuild(store, page_size=20) == written
    finally:
        store.close()
    assert set(spent) == {name for name, _, _ in REBUILD_STAGES}


def test_the_stages_and_the_rest_add_up_to_the_whole_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    written = _build_users(path, 3, 40)
    store = EventStore(sqlite_url(path), durability="normal")
    try:
        folded, breakdown = rebuild_breakdown(store)
    finally:
        store.close()
    assert folded == written
    stages = [breakdown[name] for name, _, _ in REBUILD_STAGES]
    assert breakdown["rest"] >= 0
    assert sum(stages) + breakdown["rest"] == breakdown["total"]
