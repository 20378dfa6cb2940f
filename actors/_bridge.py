"""The asyncio bridge: pykka futures that resolve asyncio futures without blocking the loop.

Awaiting a pykka future directly calls its blocking ``get()`` on the loop thread. Here the
actor side hands results to the loop through a :class:`LoopInbox` instead: one wake-up of
the loop per burst of results (not one per result), in the order they were posted, and a
closed loop is caught on the posting thread (an exception there would kill an actor).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from pykka import Future, Timeout

__all__ = [
    "BridgedFuture",
    "LoopInbox",
    "Reply",
    "inbox_of",
    "one_wakeup",
    "settle_future",
    "shared_lock",
]

log = logging.getLogger("memvee.actors")

T = TypeVar("T")

_DRAIN_SLICE = 32
_UNSET = Future()._get_hook_result
"""pykka's marker of a get hook not run yet, shared by every future (pykka makes one each)."""


_LOCKS = tuple(threading.Lock() for _ in range(64))
_next_lock = itertools.count()


def shared_lock() -> threading.Lock:
    """One of a fixed set of locks, taken in turn, for objects that hold a lock for a few
    bytecodes: a lock is an object the collector tracks, and one lock for all of them
    would make every thread wait on whichever holder the GIL switched away from."""
    return _LOCKS[next(_next_lock) % len(_LOCKS)]


class Reply(Protocol):
    """Where a result is set once, as pykka sets a future: a :class:`BridgedFuture`, or a
    call from the event loop that its actor answers later (``ActorDirectory.call_async``)."""

    def set(self, value: Any = None) -> None: ...

    def set_exception(self, exc_info: Any = None) -> None: ...


class BridgedFuture(Future[T]):
    """A light pykka future that runs callbacks once its value or exception is set.

    Unlike pykka's ThreadingFuture it allocates no condition variable unless somebody
    blocks in :meth:`get`, which on the hot path nobody does; it borrows a shared lock
    (:func:`shared_lock`) and makes its list of callbacks only for a second callback.
    """

    _get_hook = None
    _get_hook_result: Any = _UNSET

    def __init__(self) -> None:  # pykka's __init__ only sets the two defaults above
        self._lock = shared_lock()
        self._done = False
        self._value: Any = None
        self._exc_info: Any = None
        self._event: threading.Event | None = None
        self._callbacks: Callable[[BridgedFuture[T]], None] | list[Any] | None = None

    def get(self, *, timeout: float | None = None) -> Any:
        if self._get_hook is not None:
            return super().get(timeout=timeout)
        with self._lock:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None and not event.wait(timeout):
            raise Timeout(f"{timeout} seconds")
        if self._exc_info is not None:
            _, value, traceback = self._exc_info
            raise value.with_traceback(traceback)
        return self._value

    def set(self, value: Any = None) -> None:
        self._settle(value, None)

    def set_exception(self, exc_info: Any = None) -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        self._settle(None, exc_info)

    def add_done_callback(self, callback: Callable[[BridgedFuture[T]], None]) -> None:
        """Run ``callback(self)`` when the future is set (at once if it already is)."""
        with self._lock:
            if not self._done:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = callback
                elif isinstance(callbacks, list):
                    callbacks.append(callback)
                else:
                    self._callbacks = [callbacks, callback]
                return
        callback(self)

    def outcome(self) -> tuple[bool, Any]:
        """``(True, value)`` or ``(False, exception)`` of a future that is already set."""
        if self._exc_info is not None:
            return False, self._exc_info[1]
        return True, self._value

    def _settle(self, value: Any, exc_info: Any) -> None:
        with self._lock:
            if self._done:
                raise queue.Full
            self._value, self._exc_info, self._done = value, exc_info, True
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        if callbacks is None:
            return
        for callback in callbacks if isinstance(callbacks, list) else (callbacks,):
            try:
                callback(self)
            except Exception:
                log.exception("a future callback failed")


class LoopInbox:
    """Runs callables on one event loop, posted from any thread, in posting order.

    Posts that arrive while a drain is already scheduled ride along with it, so a burst
    of results costs the loop one wake-up. No lock on the loop's side: a poster preempted
    while holding one would make the loop wait for it through a switch of the GIL. The
    queue's append and pop are atomic, and only the loop pops; a drain clears the
    scheduled flag before it pops, so a post it misses schedules the next one (at worst a
    drain finds nothing).

    The inbox holds its loop weakly (the registry of inboxes must not keep a loop alive)
    and owns its eventfd: the descriptor is closed only through :meth:`_close_bell`, once
    its loop is closed or collected, under the lock a ring takes, so a late post never
    writes to a closed descriptor or to a file that reused its number. Whoever removes
    the loop's reader of that descriptor (``loop.remove_reader``) stops the inbox's
    deliveries for good: unlike ``call_soon_threadsafe``'s callbacks, which still run
    once something else wakes the loop, its drain is never scheduled again (not guarded:
    a check of the reader would cost every ring a look into the loop's selector).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, bell: bool = False) -> None:
        self._loop = weakref.ref(loop)
        self._pending: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._scheduled = False
        self._bell_lock = threading.Lock()
        self._bell: int | None = _ring_on(loop, self._rung) if bell else None
        """The eventfd that wakes the loop straight into a drain, ``None`` once closed."""
        self._rings = self._bell is not None
        """Whether the eventfd wakes the loop (otherwise its ``call_soon_threadsafe``)."""
        if self._rings:
            weakref.finalize(loop, self._close_bell).atexit = False

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; a closed loop is not raised: the first post
        after it closed is logged at debug level, later ones return at once unlogged (the
        drain it failed to schedule stays marked scheduled) and never run. Inside
        :func:`one_wakeup` the loop is woken at the end of the block."""
        self._pending.append((fn, args))
        if self._scheduled:
            return
        held = getattr(_held, "inboxes", None)
        if held is not None:
            held[self] = None
            return
        self._wake()

    def _close_bell(self) -> None:
        """Close the eventfd of a closed or collected loop (a no-op without one). The
        number is forgotten under the ring's lock before it is closed."""
        with self._bell_lock:
            bell, self._bell = self._bell, None
        if bell is not None:
            os.close(bell)

    def _wake(self) -> None:
        """Have the loop drain the inbox, unless a drain is scheduled already."""
        if self._scheduled:
            return
        self._scheduled = True
        loop = self._loop()
        if not self._rings:
            try:
                if loop is None:
                    raise RuntimeError("event loop collected")
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                log.debug("event loop closed before a result could be delivered")
            return
        lock = self._bell_lock
        lock.acquire()  # not ``with``: that costs a ring about 150 ns more on Python 3.11
        try:
            if self._bell is not None and loop is not None and not loop.is_closed():
                os.eventfd_write(self._bell, 1)
                return
        finally:
            lock.release()
        log.debug("event loop closed before a result could be delivered")

    def _rung(self) -> None:
        """Drain on the loop, woken by the eventfd. The count is read before the drain
        clears the scheduled flag: a post that sees the flag cleared rings again, and that
        ring must survive until the next read. The loop runs, so its bell is open."""
        assert self._bell is not None
        with contextlib.suppress(BlockingIOError):  # none counted: a spurious wake-up
            os.eventfd_read(self._bell)
        self._drain()

    def _drain(self) -> None:
        # A bounded slice per loop iteration, so a burst of results cannot hold the loop
        # (timers, other tasks) for long; the rest runs in the next iterations.
        self._scheduled = False
        pending = self._pending
        items = [pending.popleft() for _ in range(min(len(pending), _DRAIN_SLICE))]
        if pending and not self._scheduled:
            self._scheduled = True
            loop = self._loop()
            assert loop is not None  # a drain runs on its loop
            loop.call_soon(self._drain)
        for fn, args in items:
            try:
                fn(*args)
            except Exception:
                log.exception("a callback posted to the event loop failed")


_held = threading.local()


def one_wakeup() -> AbstractContextManager[None]:
    """Posts this thread makes inside the block wake each loop once, when the block ends:
    a group commit's acknowledgements, posted one by one, would otherwise wake the loop
    again each time it drained the ones before, and pull it into the GIL while the
    committer still settles the rest. The posts keep their order; a block inside another
    wakes at the outer block's end."""
    return _OneWakeup()


_NOT_ENTERED: dict[LoopInbox, None] = {}
"""A :class:`_OneWakeup` not entered yet holds this (never filled: a block holds its own)."""


class _OneWakeup:
    """:func:`one_wakeup`'s block: a class, not a generator, as it is entered on every
    write (a generator's context manager costs a lone exchange about 2 µs more)."""

    __slots__ = ("_inboxes",)

    def __init__(self) -> None:
        # Set, not left unset and asked with hasattr: that raised and caught an
        # AttributeError on every write.
        self._inboxes: dict[LoopInbox, None] | None = _NOT_ENTERED

    def __enter__(self) -> None:
        # Entered twice, its first exit would leave the thread holding its posts.
        if self._inboxes is not _NOT_ENTERED:
            raise RuntimeError("a one_wakeup() block is entered once")
        if getattr(_held, "inboxes", None) is not None:
            self._inboxes = None  # inside another block: the outer one wakes the loops
            return
        self._inboxes = _held.inboxes = {}

    def __exit__(self, *_: object) -> None:
        inboxes = self._inboxes
        if inboxes is _NOT_ENTERED:  # it would end the hold of the block it is inside
            raise RuntimeError("a one_wakeup() block is exited once entered")
        if inboxes is None:
            return
        _held.inboxes = None
        for inbox in inboxes:
            inbox._wake()


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = (
    weakref.WeakKeyDictionary()
)
_inboxes_lock = threading.Lock()


def inbox_of(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """The one inbox of ``loop`` (one per loop keeps every post in a single order). Making
    one closes the eventfds of closed loops and forgets their inboxes, so a process
    running loop after loop (``asyncio.run`` in turn) holds a descriptor per open loop."""
    with _inboxes_lock:
        inbox = _inboxes.get(loop)
        if inbox is None:
            for closed in [other for other in _inboxes if other.is_closed()]:
                _inboxes.pop(closed)._close_bell()
            inbox = _inboxes[loop] = LoopInbox(loop, bell=True)
        return inbox


def _ring_on(loop: asyncio.AbstractEventLoop, drain: Callable[[], None]) -> int | None:
    """An eventfd that runs ``drain`` on ``loop`` when written, read by the loop's
    selector: a wake-up without ``call_soon_threadsafe``'s self-pipe, its callback object
    and its second, refused read (about 10 µs of the loop's time a wake). ``None`` where
    there is no eventfd (not Linux), no selector loop, or when called off the loop's
    thread (a reader is added from the loop only). The inbox owns the descriptor and
    closes it once the loop is closed or collected (:meth:`LoopInbox._close_bell`)."""
    eventfd = getattr(os, "eventfd", None)
    if eventfd is None or not isinstance(loop, asyncio.SelectorEventLoop):
        return None
    try:
        if asyncio.get_running_loop() is not loop:
            return None
    except RuntimeError:  # no loop running on this thread
        return None
    bell: int = eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        loop.add_reader(bell, drain)
    except BaseException:
        os.close(bell)
        raise
    return bell


def settle_future(target: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Set ``target`` to ``value`` (``ok``) or fail it with ``value``, unless it is done
    (cancelled by its waiter); posted to the target's loop through its inbox."""
    if target.done():
        return
    if ok:
        target.set_result(value)
    else:
        target.set_exception(value)
