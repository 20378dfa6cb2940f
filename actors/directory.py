"""The actor directory: one live actor per user, spawned on demand, stopped when idle.

Every message to a user actor is sent while holding the directory's lock, and an actor
retires only under that lock with an empty inbox, so a message can never reach an actor
that is stopping: a caller racing a passivation simply gets a fresh actor. What only a
live actor needs (the user's lease) is given up through :meth:`ActorDirectory.release`,
ordered with the registration of a fresh actor, so the fresh actor never relies on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pykka
from pykka._envelope import Envelope
from pykka.messages import ProxyCall

from actors._bridge import BridgedFuture, LoopInbox, inbox_of, settle_future
from events import MemoryClosedError
from events.errors import ActorStoppedError, database_refused, is_database_failure

__all__ = ["ActorDirectory"]

log = logging.getLogger("memvee.actors")

_STOPPED = "the memory is closed: its actors are stopped"

Spawn = Callable[[str, Callable[[str, "pykka.ActorRef[Any]", bool], bool]], "pykka.ActorRef[Any]"]


def ask(ref: pykka.ActorRef[Any], method: str, *args: Any) -> BridgedFuture[Any]:
    """Call ``method(*args)`` on the actor of ``ref``; a future of what it returns.
    Raises ``pykka.ActorDeadError`` if the actor stopped (pykka would only fail the
    future), so that the directory replaces it at once.

    The message a proxy would send, without the proxy: building one introspects the
    actor's attributes (26 tracked objects per actor, for the collector to walk on every
    full collection) and each call through it builds a callable.
    """
    if not ref.is_alive():
        raise pykka.ActorDeadError(f"{ref} not found")
    future: BridgedFuture[Any] = ref.ask(
        ProxyCall(attr_path=(method,), args=args, kwargs={}), block=False
    )  # type: ignore[assignment]
    return future


class _PendingCall:
    """A call from an event loop to a user's actor, answered on that loop when the actor
    replies (one per call in flight, so slotted: the collector walks each)."""

    __slots__ = ("args", "inbox", "later", "method", "resend", "target", "user_id")

    def __init__(
        self,
        user_id: str,
        method: str,
        args: tuple[Any, ...],
        inbox: LoopInbox,
        target: asyncio.Future[Any],
        resend: Callable[[_PendingCall], None] | None,
        later: bool = False,
    ) -> None:
        self.user_id, self.method, self.args = user_id, method, args
        self.inbox, self.target, self.resend = inbox, target, resend
        self.later = later

    def send(self, ref: pykka.ActorRef[Any]) -> None:
        """Queue the call in the actor's inbox, the call itself as the reply's target: no
        pykka future per call. A call answered ``later`` is also the method's last
        argument. Raises ``pykka.ActorDeadError`` if the actor stopped."""
        if not ref.is_alive():
            raise pykka.ActorDeadError(f"{ref} not found")
        args = (*self.args, self) if self.later else self.args
        message = ProxyCall(attr_path=(self.method,), args=args, kwargs={})
        ref.actor_inbox.put(Envelope(message, reply_to=self))  # type: ignore[arg-type]

    def fail(self, error: BaseException) -> None:
        self.inbox.post(settle_future, self.target, False, _typed(error))

    def set(self, value: Any = None) -> None:
        """The actor's reply (pykka sets an envelope's reply target so)."""
        self._answered(True, value)

    def set_exception(self, exc_info: Any = None) -> None:
        """The actor's failure, or pykka's refusal of a call its stopped actor never
        handled: ``exc_info`` as pykka passes it (``None``: the exception being handled)."""
        if exc_info is None:
            exc_info = sys.exc_info()
        error = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
        self._answered(False, error)

    def __call__(self, future: BridgedFuture[Any]) -> None:
        """A future the actor answered with (a write in flight) is set.

        The call is its own callback: no bound method per call in flight."""
        ok, value = future.outcome()
        self._answered(ok, value)

    def _answered(self, ok: bool, value: Any) -> None:
        """The actor answered: with a future (a write in flight), answer when it is set;
        with the call itself, it took the call to answer later: it can no longer be sent
        again to a next actor."""
        if ok and value is self:
            self.resend = None
        elif ok and isinstance(value, BridgedFuture):
            value.add_done_callback(self)
        elif not ok and isinstance(value, pykka.ActorDeadError) and self.resend is not None:
            resend, self.resend = self.resend, None  # the actor stopped before handling it
            resend(self)
        else:
            self.inbox.post(settle_future, self.target, ok, value if ok else _typed(value))


def _typed(error: BaseException) -> BaseException:
    """What a caller is raised for ``error``: a failure of the database (a lock held too
    long, a damaged file) as a :class:`StorageError`, as every other path raises it; an
    actor that stopped before handling the call as an :class:`ActorStoppedError`."""
    if isinstance(error, pykka.ActorDeadError):
        return ActorStoppedError(f"the user's actor stopped before handling the call: {error}")
    return database_refused(error) if is_database_failure(error) else error


SENDS_PER_TURN = 32
"""The most calls from an event loop sent to actors in one turn of that loop."""


class _Outbox:
    """Calls made on one event loop, sent to their actors from that loop a few per turn.

    A burst of calls (a thousand agents answering at once) then never holds the loop for
    the whole burst, and does not wake every actor thread at once to contend with the
    loop for the GIL: other callbacks and timers run between every few sends.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Callable[[_PendingCall], None]
    ) -> None:
        self.loop = loop
        self.inbox = inbox_of(loop)
        self._send = send
        self._queue: deque[_PendingCall] = deque()

    def put(self, call: _PendingCall) -> None:
        """Queue ``call``; sent in order, from the loop, in this turn's callbacks or later."""
        if not self._queue:
            self.loop.call_soon(self._turn)
        self._queue.append(call)

    def flush(self) -> None:
        """Send every queued call now."""
        while self._queue:
            self._deliver(self._queue.popleft())

    def _turn(self) -> None:
        queue = self._queue
        for _ in range(min(SENDS_PER_TURN, len(queue))):
            self._deliver(queue.popleft())
        if queue:
            self.loop.call_soon(self._turn)

    def _deliver(self, call: _PendingCall) -> None:
        """Send ``call``, unless its caller cancelled it while it waited here: then it
        never reaches the actor (a cancelled write is not stored, and nobody awaits it)."""
        if not call.target.cancelled():
            self._send(call)


class ActorDirectory:
    """Finds or spawns the actor of a user, and passivates idle actors."""

    def __init__(self, spawn: Spawn, *, idle_timeout: float = 60.0, max_live: int = 1000) -> None:
        self._spawn = spawn
        self.idle_timeout = idle_timeout
        self.max_live = max_live
        self._lock = threading.Lock()
        # A live user is its actor's reference here, and no other object the collector walks:
        # when each was last used (floats) and which were asked to stop (strings) are in a
        # dict the collector does not track and in one set.
        self._actors: OrderedDict[str, pykka.ActorRef[Any]] = OrderedDict()  # LRU first
        self._last_used: dict[str, float] = {}
        self._asked_to_stop: set[str] = set()
        self._spawning: dict[str, list[_PendingCall]] = {}
        self._releasing: dict[str, threading.Event] = {}  # user -> set when the release ends
        self._outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = (
            weakref.WeakKeyDictionary()
        )
        self._last_outbox: _Outbox | None = None
        self._spawner = ThreadPoolExecutor(2, thread_name_prefix="memvee-spawner")
        self._closing = False
        self._stopped = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="memvee-reaper", daemon=True)
        self._reaper.start()
        self.spawned = 0
        self.retired = 0
        self._retire = self.retire  # one bound method shared by every actor, not one each

    # ------------------------------------------------------------------ calls

    def call(self, user_id: str, method: str, *args: Any) -> BridgedFuture[Any]:
        """Call ``method(*args)`` on the user's actor (spawning it if needed).

        Spawning (building the actor) happens outside the lock, so a spawn
        never holds up calls to other users' actors.
        """
        while True:
            with self._lock:
                ref = self._touch(user_id)
                if ref is not None:
                    try:
                        return ask(ref, method, *args)
                    except pykka.ActorDeadError:
                        self._forget_dead(user_id)
            self._spawn_entry(user_id)

    def call_live(self, user_id: str, method: str, *args: Any) -> BridgedFuture[Any] | None:
        """Call ``method(*args)`` on the user's actor if it is live (``None`` if not),
        neither spawning one nor marking it used: the engine's own calls (lease renewals,
        following other processes' writes) must not keep an idle actor from stopping."""
        with self._lock:
            if self._stopped.is_set():
                raise MemoryClosedError(_STOPPED)
            ref = self._actors.get(user_id)
            if ref is None:
                return None
            try:
                return ask(ref, method, *args)
            except pykka.ActorDeadError:
                self._forget_dead(user_id)
                return None

    def _touch(self, user_id: str) -> pykka.ActorRef[Any] | None:
        """The user's live actor, marked as just used (lock held)."""
        if self._stopped.is_set():
            raise MemoryClosedError(_STOPPED)
        ref = self._actors.get(user_id)
        if ref is not None:
            self._actors.move_to_end(user_id)
            self._last_used[user_id] = time.monotonic()
        return ref

    def _forget_dead(self, user_id: str) -> None:
        """Drop an actor that died on its own (lock held); the next call spawns anew."""
        log.warning("the actor of user %r had died; starting a new one", user_id)
        self._unregister(user_id)

    def _spawn_entry(self, user_id: str) -> None:
        """Start an actor for ``user_id`` and register it, unless another call won."""
        ref = self._spawn(user_id, self._retire)
        with self._unreleased(user_id):
            if user_id in self._actors or self._stopped.is_set():
                ref.stop(block=False)
                return
            self._register(user_id, ref)

    @contextlib.contextmanager
    def _unreleased(self, user_id: str) -> Iterator[None]:
        """Hold the lock once no release of ``user_id`` is on its way (see :meth:`release`):
        an actor registered under it then never takes something about to be given up."""
        while True:
            with self._lock:
                releasing = self._releasing.get(user_id)
                if releasing is None:
                    yield
                    return
            releasing.wait()

    def release(self, user_id: str, give_up: Callable[[str], None]) -> bool:
        """Run ``give_up(user_id)`` (give up what only a live actor of the user needs: its
        lease) unless the user has a live actor here; returns whether it ran.

        A stopped actor and the engine release after the actor left the directory, while
        a caller may already have spawned the next one, which takes the lease again (it
        is still ours): a release then would delete the lease under it. So no release runs
        while an actor is registered, and none is registered while a release runs.
        """
        done = threading.Event()
        with self._lock:
            if user_id in self._actors:
                return False
            self._releasing[user_id] = done
        try:
            give_up(user_id)
        finally:
            with self._lock:
                if self._releasing.get(user_id) is done:
                    del self._releasing[user_id]
            done.set()
        return True

    def _register(self, user_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Add a live actor (lock held); ask the least recently used beyond the cap to stop."""
        self._actors[user_id] = ref
        self._last_used[user_id] = time.monotonic()
        self.spawned += 1
        excess = len(self._actors) - self.max_live
        if excess > 0:
            for old in list(itertools.islice(self._actors, excess)):
                self._ask_to_stop(old)

    def _unregister(self, user_id: str) -> None:
        """Remove a user's actor from the directory (lock held)."""
        del self._actors[user_id]
        del self._last_used[user_id]
        self._asked_to_stop.discard(user_id)

    def _ask_to_stop(self, user_id: str) -> None:
        """Send the user's actor one passivation request (lock held); never another before
        the actor answers it."""
        if user_id in self._asked_to_stop:
            return
        self._asked_to_stop.add(user_id)
        with contextlib.suppress(pykka.ActorDeadError):
            ask(self._actors[user_id], "passivate")

    def call_async(
        self,
        loop: asyncio.AbstractEventLoop,
        user_id: str,
        method: str,
        *args: Any,
        paced: bool = False,
        answer_later: bool = False,
    ) -> asyncio.Future[Any]:
        """Like :meth:`call`, from ``loop``'s thread and resolved on ``loop``.

        A ``paced`` call is sent from the loop a few per turn (see :class:`_Outbox`): for
        calls the caller awaits, so the loop turns. Any other call is sent at once, after
        the paced calls queued before it. Calls made in order reach the actor in that
        order, also behind a spawn, which happens off the loop.

        With ``answer_later`` the method is given the call (a :class:`~actors._bridge.Reply`)
        as its last argument, sets its result there once it has one, and returns the call:
        a write answers once committed, with no future of its own in between.
        """
        outbox = self._last_outbox
        if outbox is None or outbox.loop is not loop:
            outbox = self._outbox_of(loop)
        target: asyncio.Future[Any] = loop.create_future()
        call = _PendingCall(user_id, method, args, outbox.inbox, target, self._send, answer_later)
        if paced:
            outbox.put(call)
        else:
            outbox.flush()
            self._send(call)
        return target

    def _outbox_of(self, loop: asyncio.AbstractEventLoop) -> _Outbox:
        """``loop``'s outbox (made on its first call), remembered as the last one used: a
        Memory belongs to one loop, so its calls skip the lookup."""
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = _Outbox(loop, self._send)
        self._last_outbox = outbox
        return outbox

    def flush_calls(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send every call ``loop`` has queued now (before a shutdown stops the actors)."""
        outbox = self._outboxes.get(loop)
        if outbox is not None:
            outbox.flush()

    def _send(self, call: _PendingCall) -> None:
        """Send ``call`` to its user's actor, or queue it behind the actor's spawn; a call
        that cannot be sent fails its caller."""
        user_id = call.user_id
        try:
            with self._lock:
                ref = self._touch(user_id)
                if ref is not None:
                    try:
                        call.send(ref)
                        return
                    except pykka.ActorDeadError:
                        self._forget_dead(user_id)
                waiting = self._spawning.get(user_id)
                if waiting is not None:
                    waiting.append(call)
                    return
                if self._closing:
                    raise MemoryClosedError(_STOPPED)
                self._spawning[user_id] = [call]
            self._spawner.submit(self._spawn_and_drain, user_id)
        except Exception as error:
            with self._lock:
                if self._spawning.get(user_id) == [call]:
                    del self._spawning[user_id]
            call.fail(error)

    def _spawn_and_drain(self, user_id: str) -> None:
        """Spawn ``user_id``'s actor, then send it the calls that waited, in order."""
        try:
            ref = self._spawn(user_id, self._retire)
        except Exception as error:
            log.exception("could not start the actor of user %r", user_id)
            with self._lock:
                failed = self._spawning.pop(user_id, [])
            for call in failed:
                call.fail(error)
            return
        with self._unreleased(user_id):
            waiting = self._spawning.pop(user_id, [])
            existing = self._actors.get(user_id)
            if existing is not None or self._stopped.is_set():
                ref.stop(block=False)
            else:
                self._register(user_id, ref)
            target = ref if existing is None else existing
            for call in waiting:
                if self._stopped.is_set():
                    call.fail(MemoryClosedError(_STOPPED))
                    continue
                try:
                    call.send(target)
                except Exception as error:
                    call.fail(error)

    def live_users(self) -> list[str]:
        """The users whose actor is live now."""
        with self._lock:
            return list(self._actors)

    @property
    def live_count(self) -> int:
        """How many user actors are live."""
        with self._lock:
            return len(self._actors)

    # ------------------------------------------------------------------ lifecycle

    def retire(self, user_id: str, ref: pykka.ActorRef[Any], busy: bool) -> bool:
        """An actor answers a passivation request: remove it unless it is ``busy`` or a
        message is on its way to it. Returns whether the actor must stop."""
        with self._lock:
            if self._actors.get(user_id) is not ref:
                return not busy
            self._asked_to_stop.discard(user_id)
            if busy or not ref.actor_inbox.empty():
                return False
            self._unregister(user_id)
            self.retired += 1
            return True

    def passivate_idle(self, older_than: float | None = None) -> None:
        """Ask idle actors (and the least recently used beyond ``max_live``) to stop."""
        limit = self.idle_timeout if older_than is None else older_than
        now = time.monotonic()
        with self._lock:
            candidates = [u for u, used in self._last_used.items() if now - used >= limit]
            excess = len(self._actors) - self.max_live
            if excess > 0:
                seen = set(candidates)
                candidates += [u for u in itertools.islice(self._actors, excess) if u not in seen]
            for user_id in candidates:
                self._ask_to_stop(user_id)

    def end_spawns(self) -> None:
        """Start no actor from now on, and return once those starting are live with the
        calls that waited for them sent: a shutdown then finds them in :meth:`live_users`."""
        with self._lock:
            self._closing = True
        self._spawner.shutdown(wait=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every actor after it has handled the messages already sent to it, those
        that wait for their actor's spawn included."""
        self.end_spawns()
        with self._lock:
            self._stopped.set()
            refs = list(self._actors.values())
            self._actors.clear()
            self._last_used.clear()
            self._asked_to_stop.clear()
        self._reaper.join(timeout=5)
        futures = [ref.stop(block=False) for ref in refs]
        for future in futures:
            try:
                future.get(timeout=timeout)
            except Exception:
                log.exception("an actor did not stop cleanly")

    def _reap(self) -> None:
        interval = max(0.05, min(self.idle_timeout / 2, 1.0))
        while not self._stopped.wait(interval):
            try:
                self.passivate_idle()
            except Exception:
                log.exception("passivating idle actors failed")
