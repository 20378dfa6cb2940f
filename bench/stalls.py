"""Who stalls the event loop: the collector, or code; and how much of the heap the
collector walks is memvee's.

A stall of the loop is either code holding the GIL (a long callback on the loop, or another
thread) or the garbage collector, which holds the GIL while it walks every tracked object of
the process, memvee's and the load generator's alike. :class:`LoopStallMeter` splits each
stall into the collector's time inside it, code on the loop (the loop thread's own CPU
time, the load generator's own told apart) and the loop waiting for the GIL;
:func:`objects_held` counts the
tracked objects a Memory keeps alive, so the collector's time can be shared out between
memvee and everything else in the process by the objects each makes it walk.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

__all__ = ["GcPauseMeter", "LoopStallMeter", "Stall", "objects_held"]


class GcPauseMeter:
    """The longest garbage collection between start and stop, whichever thread ran it,
    and the collector's running total (what :class:`LoopStallMeter` subtracts).

    The collector holds the GIL while it runs, so an event loop waits at least that long.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.total = 0.0
        self._by_thread: dict[int, float] = {}
        self._began = 0.0
        self._running = False

    def total_on(self, thread: int) -> float:
        """The collector's running total on the thread of ident ``thread``."""
        return self._by_thread.get(thread, 0.0)

    def start(self) -> None:
        """Start timing collections."""
        gc.callbacks.append(self._timed)

    def reset(self) -> float:
        """Return the longest collection so far (seconds) and start a new maximum."""
        worst, self.longest = self.longest, 0.0
        return worst

    def stop(self) -> float:
        """Stop timing; returns the longest collection since the last reset (seconds)."""
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        return self.longest

    def running_since(self, moment: float) -> float:
        """How long a collection not yet added to :attr:`total` has run since ``moment``.

        A loop waiting for the GIL through a collection on another thread takes it back
        inside that thread's "stop" callback (a callback is Python code, where a waiting
        thread gets its turn), before the callback adds the collection to the total: the
        loop would see its stall without the collection that caused it.
        """
        if not self._running:
            return 0.0
        return max(0.0, time.perf_counter() - max(self._began, moment))

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
            self._running = True
            return
        took = now - self._began
        self.total += took
        thread = threading.get_ident()
        self._by_thread[thread] = self._by_thread.get(thread, 0.0) + took
        if took > self.longest:
            self.longest = took
        self._running = False


@dataclass(frozen=True, slots=True)
class Stall:
    """One late wake-up of the loop: how late, how much of it the collector ran (on any
    thread, and on the loop's own), how much CPU the loop's thread used in it, and how
    much of that CPU was the load generator's own code (see
    :meth:`LoopStallMeter.load_generator`)."""

    late: float
    collecting: float
    loop_cpu: float = 0.0
    collecting_on_loop: float = 0.0
    generator: float = 0.0

    @property
    def outside_collections(self) -> float:
        """The part of the stall that was not the collector: code on the loop, or the loop
        waiting for the GIL while other threads ran."""
        return max(0.0, self.late - self.collecting)

    @property
    def waiting(self) -> float:
        """The part outside collections with the loop's thread off the CPU: waiting for the
        GIL (held by other threads; the load generator runs none) or in a blocking call."""
        code_on_loop = max(0.0, self.loop_cpu - self.collecting_on_loop)
        return max(0.0, self.outside_collections - code_on_loop)

    def charged(self, share: float) -> float:
        """The part charged to whoever holds ``share`` of the tracked objects: the code part
        but the load generator's own (an upper bound) and that share of the collector's."""
        return max(0.0, self.outside_collections - self.generator) + self.collecting * share


class LoopStallMeter:
    """A ticker task that sleeps 1 ms in a loop and records how late it wakes up.

    A stall is the time beyond the requested sleep: anything that blocks the event loop
    (a blocking call, a long burst of callbacks, a lost GIL) shows up as a late wake-up.
    With a :class:`GcPauseMeter`, each stall also records the collector's time inside it
    (the loop's own thread cannot tick while any thread collects, so no collection
    straddles a tick).
    """

    def __init__(self, collections: GcPauseMeter | None = None, interval: float = 0.001) -> None:
        self.interval = interval
        self.max_stall = 0.0
        self.stalls: list[Stall] = []
        self.generator_total = 0.0
        self._generator_ended = 0.0
        self._collections = collections
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def reset(self) -> float:
        """Return the largest stall so far (seconds) and start a new maximum."""
        worst, self.max_stall = self.max_stall, 0.0
        return worst

    async def stop(self) -> float:
        """Stop ticking; returns the largest stall since the last reset (seconds)."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.max_stall

    @contextmanager
    def load_generator(self) -> Iterator[None]:
        """Mark code on the loop as the load generator's (starting a thousand users' tasks,
        say): its CPU time there, less the collector's, is not charged to the code measured.
        """
        me = threading.get_ident()
        collections = self._collections or GcPauseMeter()
        used, collected = time.thread_time(), collections.total_on(me)
        try:
            yield
        finally:
            spent = time.thread_time() - used - (collections.total_on(me) - collected)
            self.generator_total += max(0.0, spent)
            self._generator_ended = time.perf_counter()

    def worst_charged(self, share: float) -> float:
        """The largest stall charged to a holder of ``share`` of the tracked objects."""
        return max((s.charged(share) for s in self.stalls), default=0.0)

    async def _tick(self) -> None:
        clock, cpu, me = time.perf_counter, time.thread_time, threading.get_ident()
        collections = self._collections or GcPauseMeter()
        while True:
            before, used = clock(), cpu()
            collected, on_loop = collections.total, collections.total_on(me)
            generated = self.generator_total
            await asyncio.sleep(self.interval)
            late = clock() - before - self.interval
            if late > self.max_stall:
                self.max_stall = late
            if late > 0.001:
                unaccounted = collections.running_since(before)
                spent = min(collections.total - collected + unaccounted, late)
                spent_on_loop = min(collections.total_on(me) - on_loop, spent)
                # only what ran once the tick was due made it late, not what ran while it slept
                due = before + self.interval
                generator = min(
                    self.generator_total - generated,
                    late - spent,
                    max(0.0, self._generator_ended - due),
                )
                self.stalls.append(Stall(late, spent, cpu() - used, spent_on_loop, generator))


_STATIC = (type, types.ModuleType, types.FunctionType, types.CodeType)


def objects_held(
    root: object, *, besides: tuple[object, ...] = (), own_code: tuple[str, ...] = ()
) -> int:
    """How many tracked objects ``root`` keeps alive: those reachable from it, not through
    modules, classes, module-level functions or code (the program, not its state), nor
    through ``besides`` (the event loop, which holds every task of the load generator).

    With ``own_code`` (folders of source files), an asyncio task reached from ``root`` (a
    caller waiting on one of its futures) is the caller's, as are its coroutines: only the
    coroutines of its await chain that run code from those folders (the API's own frames)
    are counted, with what they hold.

    Frozen objects (``gc.freeze()``) are walked through but not counted: the collector
    leaves them out, so they cost it nothing.
    """
    walked = {id(o) for o in gc.get_objects()} if gc.get_freeze_count() else None
    boundary = {id(o) for o in besides}
    boundary.update(id(vars(m)) for m in list(sys.modules.values()) if m is not None)
    seen = {id(root)}
    todo: list[object] = [root]
    count = 0
    while todo:
        obj = todo.pop()
        if walked is None or id(obj) in walked:
            count += 1
        for ref in gc.get_referents(obj):
            key = id(ref)
            if key in seen or key in boundary or not gc.is_tracked(ref):
                continue
            if isinstance(ref, _STATIC) and not (
                isinstance(ref, types.FunctionType) and ref.__closure__
            ):
                continue
            if own_code and _callers(ref, own_code):
                boundary.add(key)
                for coroutine in _own_awaits(ref, own_code):
                    if id(coroutine) not in seen:
                        seen.add(id(coroutine))
                        todo.append(coroutine)
                continue
            seen.add(key)
            todo.append(ref)
    return count


def _coroutine_of(obj: object) -> object:
    """A task's coroutine; anything else as it is."""
    return obj.get_coro() if isinstance(obj, asyncio.Task) else obj


def _callers(obj: object, own_code: tuple[str, ...]) -> bool:
    """Whether ``obj`` is a task or coroutine of somebody else's code."""
    coroutine = _coroutine_of(obj)
    return isinstance(coroutine, types.CoroutineType) and not _is_own(coroutine, own_code)


def _is_own(coroutine: types.CoroutineType[Any, Any, Any], own_code: tuple[str, ...]) -> bool:
    return coroutine.cr_code.co_filename.startswith(own_code)


def _own_awaits(
    waiter: object, own_code: tuple[str, ...]
) -> list[types.CoroutineType[Any, Any, Any]]:
    """The coroutines of ``waiter``'s await chain (a task's, or a coroutine's and those it
    awaits) whose code is in one of the ``own_code`` folders."""
    found = []
    coroutine = _coroutine_of(waiter)
    while isinstance(coroutine, types.CoroutineType):
        if _is_own(coroutine, own_code):
            found.append(coroutine)
        coroutine = coroutine.cr_await
    return found
