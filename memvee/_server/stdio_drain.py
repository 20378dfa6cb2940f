"""MCP over stdio: every request read before stdin closed gets its answer.

The MCP SDK stops a stdio server as soon as stdin reaches its end, and cancels the
handlers still running (python-sdk issue #2678). A client that writes its requests and
then closes stdin (a script, ``memvee mcp < calls.jsonl``) loses their answers, and a
``remember`` it sent may be cut off after its write. :class:`DrainedStdio` stands
between the process's standard streams and the SDK, on pipes: it passes every line
through and notes the JSON-RPC requests read and the responses written, and only shows
the SDK the end of stdin once every request has its response (or ``timeout`` seconds
have passed). It works on file descriptors, so the SDK's own guard of stdout (stray
prints go to stderr) stays in place.
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
from collections import Counter
from collections.abc import Hashable
from types import TracebackType
from typing import Self

__all__ = ["DrainedStdio"]

log = logging.getLogger("memvee.server")

_POLL_SECONDS = 0.05
"""How often the stdout pump looks whether it is asked to stop, when nothing comes."""


def _ids(line: bytes, *, requests: bool) -> list[Hashable]:
    """The ids of the JSON-RPC requests (``requests``) or responses in one line."""
    try:
        message = json.loads(line)
    except ValueError:
        return []
    found: list[Hashable] = []
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), int | str):
            continue
        is_request = "method" in item
        is_response = not is_request and ("result" in item or "error" in item)
        if is_request if requests else is_response:
            found.append(item["id"])
    return found


class DrainedStdio:
    """While entered, fds 0 and 1 are pipes that two threads pump to and from the real
    stdin and stdout; the end of stdin reaches the pipe once every request read has
    been answered, or after ``timeout`` seconds. Leaving restores both descriptors."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: Counter[Hashable] = Counter()
        self._answered = threading.Condition()
        self._stopping = threading.Event()
        self._real_in = self._real_out = -1
        self._stdout_pump: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._real_in, self._real_out = os.dup(0), os.dup(1)
        into_read, into_write = os.pipe()
        out_read, out_write = os.pipe()
        os.dup2(into_read, 0)
        os.dup2(out_write, 1)
        os.close(into_read)
        os.close(out_write)
        threading.Thread(
            target=self._pump_stdin, args=(into_write,), name="memvee-stdin", daemon=True
        ).start()
        self._stdout_pump = threading.Thread(
            target=self._pump_stdout, args=(out_read,), name="memvee-stdout", daemon=True
        )
        self._stdout_pump.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The SDK has written every response by now; the pump forwards what the pipe
        # still holds, then stops.
        self._stopping.set()
        if self._stdout_pump is not None:
            self._stdout_pump.join(timeout=10)
        os.dup2(self._real_in, 0)
        os.dup2(self._real_out, 1)
        os.close(self._real_out)
        # The real stdin stays open: the stdin pump may still be blocked reading it.

    def _pump_stdin(self, into: int) -> None:
        """Real stdin to the SDK's pipe, line by line; its end once all is answered."""
        try:
            with open(self._real_in, "rb", closefd=False) as source:
                for line in source:
                    requests = _ids(line, requests=True)
                    if requests:
                        with self._answered:
                            self._pending.update(requests)
                    _write_all(into, line)
            with self._answered:
                drained = self._answered.wait_for(lambda: not self._pending, self.timeout)
            if not drained:
                log.warning(
                    "stdin closed; %d requests still unanswered after %.0f s, stopping",
                    sum(self._pending.values()),
                    self.timeout,
                    extra={"event": "stdin_closed"},
                )
        except OSError:  # the SDK is gone (the pipe is closed): nothing more to pass on
            pass
        finally:
            os.close(into)

    def _pump_stdout(self, out: int) -> None:
        """The SDK's pipe to the real stdout, noting each response written."""
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([out], [], [], _POLL_SECONDS)
                if not ready:
                    if self._stopping.is_set():
                        break
                    continue
                chunk = os.read(out, 65536)
                if not chunk:
                    break
                _write_all(self._real_out, chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                answered = [i for line in lines for i in _ids(line, requests=False)]
                if answered:
                    with self._answered:
                        self._pending.subtract(answered)
                        self._pending += Counter()  # drops the ids at zero or below
                        self._answered.notify_all()
        except OSError as error:
            log.warning("stdout closed: %s", error, extra={"event": "stdout_closed"})
        finally:
            os.close(out)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
