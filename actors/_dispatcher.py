"""Pooled actors: many pykka actors run by a few threads, each actor one message at a time.

A ``ThreadingActor`` is a thread: thousands of active users meant thousands of runnable
threads fighting over the GIL, stalling the event loop, and a thread start (about a
millisecond) per spawn. A :class:`PooledActor` keeps pykka's actor model (refs, proxies,
futures, ordered inbox, one message at a time) but borrows a thread from a
:class:`Dispatcher` only while it has messages, like dispatchers in Akka or Orleans.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
from pykka import ActorRegistry

from actors._bridge import BridgedFuture, shared_lock
from events.credentials import log_failure

__all__ = ["Dispatcher", "PooledActor"]

log = logging.getLogger("memvee.actors")

_TURN = 64
"""Messages an actor handles before it lets the other actors have the thread."""


class Dispatcher:
    """The threads that run pooled actors, fed by one queue of turns.

    Not a ``ThreadPoolExecutor``: its ``submit`` builds a future, with a condition
    variable, for every call, and the write path schedules a turn per exchange. A turn
    reports its own errors, so nobody needs the future.
    """

    def __init__(self, threads: int) -> None:
        """Start ``threads`` threads; if the platform refuses one, stop those started."""
        self._turns: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        for i in range(threads):
            thread = threading.Thread(target=self._work, name=f"memvee-actor_{i}", daemon=True)
            try:
                thread.start()
            except BaseException:
                self.shutdown()
                raise
            self._threads.append(thread)

    def schedule(self, turn: Callable[[], object]) -> None:
        """Run ``turn()`` on one of the threads."""
        self._turns.put(turn)

    def shutdown(self) -> None:
        """Finish the turns already scheduled, then stop the threads."""
        for _ in self._threads:
            self._turns.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (turn := self._turns.get()) is not None:
            try:
                turn()
            except Exception:
                log.exception("an actor's turn failed")


class _StopFlag:
    """An actor's stopped flag, as pykka uses its ``threading.Event`` (set, is_set, wait),
    with no lock or condition of its own until somebody waits on it: there is one per live
    user, and the collector walks every one of them (so it is the inbox's base: see
    :class:`_Inbox`)."""

    __slots__ = ("_event", "_set")

    _making = threading.Lock()

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        with self._making:
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        with self._making:
            if self._event is None:
                self._event = threading.Event()
                if self._set:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


class _Inbox(_StopFlag):
    """A pooled actor's inbox: putting a message schedules the actor if it is idle. It is
    the actor's stopped flag too.

    There is one per live user, and the collector walks each on every full collection, so
    an idle inbox holds no queue of its own, borrows one of a few shared locks (each
    holds it for a few bytecodes) instead of owning one, and is one object with the flag.
    """

    __slots__ = ("_items", "_lock", "_scheduled", "actor")

    def __init__(self) -> None:
        super().__init__()
        self._lock = shared_lock()
        self._items: deque[Any] | None = None
        self._scheduled = False
        self.actor: PooledActor | None = None

    def put(self, envelope: Any, /) -> None:
        with self._lock:
            items = self._items
            if items is None:
                items = self._items = deque()
            items.append(envelope)
            if self._scheduled or self.actor is None:
                return
            self._scheduled = True
        self.actor._schedule()

    def get(self) -> Any:
        with self._lock:
            return self._pop()

    def empty(self) -> bool:
        return self._items is None

    def take(self) -> Any | None:
        """The next message, or ``None`` (and the actor is idle until the next put)."""
        with self._lock:
            if self._items is not None:
                return self._pop()
            self._scheduled = False
            return None

    def start(self, actor: PooledActor) -> None:
        with self._lock:
            self.actor = actor
            if self._items is None or self._scheduled:
                return
            self._scheduled = True
        actor._schedule()

    def _pop(self) -> Any:
        items = self._items
        if items is None:
            raise IndexError("pop from an empty inbox")
        envelope = items.popleft()
        if not items:
            self._items = None
        return envelope


class PooledActor(pykka.Actor):
    """A pykka actor that runs on a :class:`Dispatcher` instead of a thread of its own."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        # pykka's Event would be five more objects per live actor; the inbox is the flag
        stopped = self.actor_inbox
        self.actor_stopped = self.actor_ref.actor_stopped = stopped  # type: ignore[assignment]
        self._dispatcher = dispatcher

    def _credentials(self) -> tuple[str, ...]:
        """The credentials, beyond the environment's, that no log line of this actor's may
        show: none here; an actor handling an extractor's answers tells its clients'."""
        return ()

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _Inbox()

    @staticmethod
    def _create_future() -> BridgedFuture[Any]:
        return BridgedFuture()

    def _start_actor_loop(self) -> None:
        self._actor_loop_setup()
        inbox: _Inbox = self.actor_inbox  # type: ignore[assignment]
        inbox.start(self)

    def _schedule(self) -> None:
        self._dispatcher.schedule(self._turn)

    def _turn(self) -> None:
        inbox: _Inbox = self.actor_inbox  # type: ignore[assignment]
        for _ in range(_TURN):
            if self.actor_stopped.is_set():
                self._actor_loop_teardown()
                inbox.take()
                return
            envelope = inbox.take()
            if envelope is None:
                return
            self._handle_envelope(envelope)
        self._schedule()

    def _handle_envelope(self, envelope: Any) -> None:
        """One message, handled as pykka's own actor loop handles it."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception as error:
            if envelope.reply_to is not None:
                if log.isEnabledFor(logging.DEBUG):  # a caller's refusal reads no credential
                    log_failure(
                        log,
                        logging.DEBUG,
                        error,
                        self._credentials(),
                        "exception returned from %s to its caller",
                        self,
                    )
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            log.debug("%r in %s; stopping all actors", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()
