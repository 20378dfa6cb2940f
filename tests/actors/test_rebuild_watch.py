"""A process whose writes find the projections being rebuilt watches the rebuild: one
that goes on is left to itself, one that has stopped moving is finished by the process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from actors.rebuild_watch import RebuildWatch
from projections import FoldState


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


class _Rebuild:
    """A rebuild at the positions given, one per look, then at the last one for good."""

    def __init__(self, *positions: int, ends: bool = False) -> None:
        self.positions = list(positions)
        self.ends = ends
        self.looks = 0
        self.finished = threading.Event()

    def state(self) -> FoldState:
        self.looks += 1
        if self.finished.is_set() or (self.ends and len(self.positions) == 1):
            return FoldState(self.positions[-1], rebuilding=False)
        position = self.positions.pop(0) if len(self.positions) > 1 else self.positions[0]
        return FoldState(position, rebuilding=True)

    def finish(self, stopping: Callable[[], bool]) -> int:
        self.finished.set()
        return 7


def test_a_rebuild_that_stops_moving_is_finished_by_the_process() -> None:
    rebuild = _Rebuild(10, 20, 30)
    watch = RebuildWatch(rebuild.state, rebuild.finish, interval=0.01)
    watch.seen()
    watch.seen()  # a second write while watching changes nothing
    _wait_for(rebuild.finished.is_set)
    assert rebuild.looks >= 4  # 10, 20, 30, then 30 again: stopped
    watch.stop()


def test_a_rebuild_that_moves_on_to_its_end_is_left_to_itself() -> None:
    rebuild = _Rebuild(10, 20, 30, ends=True)
    watch = RebuildWatch(rebuild.state, rebuild.finish, interval=0.01)
    watch.seen()
    _wait_for(lambda: rebuild.looks >= 3)
    time.sleep(0.1)
    assert not rebuild.finished.is_set()
    watch.stop()


def test_closing_stops_the_finishing_after_the_page_at_hand() -> None:
    pages: list[int] = []

    def finish(stopping: Callable[[], bool]) -> int:
        while not stopping():
            pages.append(1)
            time.sleep(0.01)
        return len(pages)

    watch = RebuildWatch(lambda: FoldState(5, rebuilding=True), finish, interval=0.01)
    watch.seen()
    _wait_for(lambda: len(pages) > 3)
    watch.stop()
    stopped_at = len(pages)
    time.sleep(0.05)
    assert len(pages) <= stopped_at + 1


async def test_a_memory_finishes_a_rebuild_stopped_while_it_writes(
    db_url: str, make_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from events import EventStore
    from projections import rebuild, verify

    monkeypatch.setattr("actors.rebuild_watch.STALL_SECONDS", 0.2)
    memory = await make_memory()
    for n in range(30):
        await memory.add_exchange("ann", f"I live in Oslo, says message {n}", "ok")
    store = EventStore(db_url)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(store, progress=stop, page_size=10)
    await memory.add_exchange("ann", "written while the rebuild stood stopped", "ok")
    deadline = time.monotonic() + 30
    while "written while the rebuild stood stopped" not in [
        m.content for m in await memory.messages("ann")
    ]:
        assert time.monotonic() < deadline, "the stopped rebuild was never finished"
        await asyncio.sleep(0.05)
    assert verify(store) == []
    store.close()
