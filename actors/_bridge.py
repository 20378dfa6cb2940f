"""The asyncio bridge: pykka futures that resolve asyncio futures without blocking the loop.

Awaiting a pykka future directly calls its blocking ``get()`` on the loop thread. Here the
actor thread hands the result to the loop with ``call_soon_threadsafe`` instead, and a
closed loop is caught on the actor thread (an exception there would kill the actor).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pykka import ThreadingFuture

__all__ = ["BridgedFuture", "resolve_threadsafe", "to_asyncio"]

log = logging.getLogger("memvee.actors")

T = TypeVar("T")


class BridgedFuture(ThreadingFuture[T]):
    """A pykka future that also runs callbacks once its value or exception is set."""

    def __init__(self) -> None:
        super().__init__()
        self._callback_lock = threading.Lock()
        self._callbacks: list[Callable[[BridgedFuture[T]], None]] | None = []

    def set(self, value: Any = None) -> None:
        super().set(value)
        self._run_callbacks()

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        self._run_callbacks()

    def add_done_callback(self, callback: Callable[[BridgedFuture[T]], None]) -> None:
        """Run ``callback(self)`` when the future is set (at once if it already is)."""
        with self._callback_lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback(self)

    def outcome(self) -> tuple[bool, Any]:
        """``(True, value)`` or ``(False, exception)`` of a future that is already set."""
        try:
            return True, self.get(timeout=0)
        except BaseException as error:
            return False, error

    def _run_callbacks(self) -> None:
        with self._callback_lock:
            callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("a future callback failed")


def resolve_threadsafe(
    loop: asyncio.AbstractEventLoop, target: asyncio.Future[T], ok: bool, value: Any
) -> None:
    """Set ``target`` on its loop from any thread; a closed loop is logged, not raised."""

    def _set() -> None:
        if target.done():
            return
        if ok:
            target.set_result(value)
        else:
            target.set_exception(value)

    try:
        loop.call_soon_threadsafe(_set)
    except RuntimeError:
        log.debug("event loop closed before a result could be delivered")


def to_asyncio(future: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """An asyncio future on ``loop`` that follows the pykka ``future``."""
    target: asyncio.Future[Any] = loop.create_future()
    if not isinstance(future, BridgedFuture):
        raise TypeError(f"expected a BridgedFuture, got {type(future).__name__}")
    future.add_done_callback(lambda f: resolve_threadsafe(loop, target, *f.outcome()))
    return target
