"""MCP over stdio: every request read before stdin closed gets its answer, and a signal
stops the server even while its client keeps stdin open.

The MCP SDK stops a stdio server as soon as stdin reaches its end, and cancels the
handlers still running (python-sdk issue #2678): a client that writes its requests and
then closes stdin (a script, ``memvee mcp < calls.jsonl``) loses their answers, and a
``remember`` it sent may be cut off after its write. And the SDK reads stdin in a worker
thread that a cancellation waits for, so a signal could not stop a server whose client
sends nothing more. :class:`DrainedStdio` stands between the process's standard streams
and the SDK, on pipes: it passes every line through, notes the JSON-RPC requests read
and the responses written, and shows the SDK the end of stdin once every request has
its response, or at once when told to end. A signal stops the reading the same way, so
that no call already read is cancelled with the SDK's bare "Connection closed" (a
``remember`` that was stored, which its client would send again); calls still running
after ``timeout`` seconds are cut short, to answer whether they may have been carried
out. It works on file descriptors, so the SDK's own guard of stdout (stray prints go to
stderr) stays.

The SDK also drops, with no answer, a line it cannot read as a JSON-RPC message (text
that is not JSON to its parser, such as a lone surrogate escape, or JSON that is no MCP
message): a client that sent such a request would wait for its answer forever. And it
reads a line that is not UTF-8 with the bad bytes replaced, so it would store text the
client never sent. Such a line is answered here instead, as over HTTP and as JSON-RPC 2.0
asks: a parse error or an invalid request, with the request's id wherever one can be read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Self

from memvee._server.request_ids import json_objects, message_ids, refusal

__all__ = ["DrainedStdio"]

log = logging.getLogger("memvee.server")


def _read_request(line: bytes) -> tuple[list[Hashable], bytes | None]:
    """The ids of the requests in ``line``, and the answer to it if it is no MCP message
    the SDK can take (:func:`refusal`, as over HTTP), else ``None``: the SDK would drop
    such a line unanswered, or read text that is not UTF-8 with its bytes replaced."""
    if not line.strip():
        return [], None
    refused = refusal(line)
    if refused is not None:
        return [], refused + b"\n"
    return message_ids(line, requests=True), None


def _cancelled(line: bytes) -> list[Hashable]:
    """The ids of the requests a ``notifications/cancelled`` in ``line`` cancels."""
    found: list[Hashable] = []
    for item in json_objects(line):
        if item.get("method") != "notifications/cancelled":
            continue
        params = item.get("params")
        request = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request, str | int) and not isinstance(request, bool):
            found.append(request)
    return found


class _Lines:
    """Bytes as they come, cut into whole lines (the rest waits for its newline)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes."""
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return lines

    def end(self) -> list[bytes]:
        """The last line, if the bytes ended without a newline."""
        rest, self._rest = self._rest, b""
        return [rest] if rest.strip() else []


class DrainedStdio:
    """While entered, fds 0 and 1 are pipes that two threads pump to and from the real
    stdin and stdout. The end of stdin, or :meth:`stop_reading`, reaches the SDK once
    every request read has been answered; after ``timeout`` seconds ``cut`` is called,
    so that the calls still running answer at once (:class:`~memvee._server.mcp_tools.
    Cutoff`), and the SDK is shown the end soon after. :meth:`end_input` shows it at
    once. Leaving restores both descriptors."""

    def __init__(self, timeout: float, cut: Callable[[], None] = lambda: None) -> None:
        self.timeout = timeout
        self._cut = cut
        self._pending: Counter[Hashable] = Counter()
        self._answered = threading.Condition()
        self._writing = threading.Lock()
        self._ending = False
        self._stopped = False
        self._end_input = _Signal()
        self._stop = _Signal()
        self._real_in = self._real_out = -1
        self._pumps: list[threading.Thread] = []
        self.client_gone = False
        """Whether the client closed its end of stdout: it reads no more answers."""

    def __enter__(self) -> Self:
        self._real_in, self._real_out = os.dup(0), os.dup(1)
        self._end_input.open()
        self._stop.open()
        into_read, into_write = os.pipe()
        out_read, out_write = os.pipe()
        os.dup2(into_read, 0)
        os.dup2(out_write, 1)
        os.close(into_read)
        os.close(out_write)
        self._pumps = [
            threading.Thread(target=self._pump_stdin, args=(into_write,), name="memvee-stdin"),
            threading.Thread(target=self._pump_stdout, args=(out_read,), name="memvee-stdout"),
        ]
        for pump in self._pumps:
            pump.daemon = True
            pump.start()
        return self

    def stop_reading(self) -> None:
        """Pass on no more of stdin, and show the SDK its end once the requests already
        read are answered, as when stdin ends (a signal came)."""
        self._stopped = True
        self._end_input.set()

    def end_input(self) -> None:
        """Show the SDK the end of stdin now, answered or not (a signal came)."""
        with self._answered:
            self._ending = True
            self._answered.notify_all()
        self._end_input.set()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The SDK has written every response by now: the stdout pump forwards what the
        # pipe still holds, then both pumps stop.
        self.end_input()
        self._stop.set()
        for pump in self._pumps:
            pump.join(timeout=10)
        os.dup2(self._real_in, 0)
        os.dup2(self._real_out, 1)
        if any(pump.is_alive() for pump in self._pumps):
            return  # a pump still stuck writing keeps its descriptors: none is reused
        for fd in (self._real_in, self._real_out):
            os.close(fd)
        self._end_input.close()
        self._stop.close()

    def _pump_stdin(self, into: int) -> None:
        """Real stdin to the SDK's pipe; its end once all is answered, or when told."""
        lines = _Lines()
        try:
            while True:
                ready, _, _ = select.select([self._real_in, self._end_input.fd], [], [])
                if self._end_input.fd in ready:
                    if self._ending:
                        return
                    break
                chunk = os.read(self._real_in, 65536)
                if not chunk:
                    self._pass_on(into, lines.end())
                    break
                self._pass_on(into, lines.feed(chunk))
            self._await_answers()
        except OSError as error:  # the SDK is gone (its pipe closed), or stdin failed
            log.info("stdin is no longer passed on: %s", error, extra={"event": "stdin_closed"})
        finally:
            os.close(into)

    def _await_answers(self) -> None:
        """Wait until every request read is answered, or ``timeout`` seconds; then cut the
        calls still running short and give them :data:`CUT_ANSWERS` seconds to answer."""
        with self._answered:
            drained = self._answered.wait_for(self._drained, self.timeout)
            unanswered = sum(self._pending.values())
        if drained:
            return
        log.warning(
            "%s; %d requests still unanswered after %.0f s, answering them now",
            "stopping on a signal" if self._stopped else "stdin closed",
            unanswered,
            self.timeout,
            extra={"event": "stdin_closed"},
        )
        self._cut()
        with self._answered:
            self._answered.wait_for(self._drained, CUT_ANSWERS)

    def _drained(self) -> bool:
        """Nothing is left to wait for: every request is answered, or the end is now."""
        return self._ending or not self._pending

    def _pump_stdout(self, out: int) -> None:
        """The SDK's pipe to the real stdout, noting each response written. Once the client
        closes its end, the server stops as if stdin had ended, and what the SDK still
        writes is dropped rather than failing it on a broken pipe."""
        lines = _Lines()
        try:
            while (chunk := self._read_sdk(out)) is not None:
                written = lines.feed(chunk)
                if written:
                    self._write_out(b"".join(line + b"\n" for line in written))
                answered = [i for line in written for i in message_ids(line, requests=False)]
                if answered:
                    with self._answered:
                        self._pending.subtract(answered)
                        self._pending = +self._pending  # keeps the ids still unanswered
                        self._answered.notify_all()
        except OSError as error:
            log.warning(
                "stdout closed by the client (%s); stopping",
                error,
                extra={"event": "stdout_closed"},
            )
            self.client_gone = True
            self.end_input()
            while self._read_sdk(out) is not None:
                pass
        finally:
            rest = lines.end()
            if rest and not self.client_gone:
                with contextlib.suppress(OSError):
                    self._write_out(rest[0])
            os.close(out)

    def _read_sdk(self, out: int) -> bytes | None:
        """The next bytes the SDK wrote, or ``None`` once it closed its end or the pumps
        were stopped with nothing more in the pipe."""
        ready, _, _ = select.select([out, self._stop.fd], [], [])
        if out not in ready:
            return None
        return os.read(out, 65536) or None

    def _pass_on(self, into: int, lines: list[bytes]) -> None:
        """Pass ``lines`` on to the SDK, noting their requests first (before the SDK can
        answer them); answer here each line the SDK would drop unanswered."""
        passed: list[bytes] = []
        requests: list[Hashable] = []
        cancelled: list[Hashable] = []
        for line in lines:
            ids, refused = _read_request(line)
            if refused is None:
                passed.append(line)
                requests += ids
                cancelled += _cancelled(line)
                continue
            log.warning(
                "answered a line of stdin that is no MCP message: %s",
                refused.decode().strip(),
                extra={"event": "invalid_message"},
            )
            self._write_out(refused)
        if requests or cancelled:
            with self._answered:
                self._pending.update(requests)
                # A cancelled request gets no answer (the SDK sends none): none is awaited.
                self._pending.subtract(cancelled)
                self._pending = +self._pending
                self._answered.notify_all()
        if passed:
            _write_all(into, b"".join(line + b"\n" for line in passed))

    def _write_out(self, data: bytes) -> None:
        """Write whole lines to the real stdout, never inside another writer's line."""
        with self._writing:
            _write_all(self._real_out, data)


CUT_ANSWERS = 5.0
"""Seconds the calls cut short get to write their answers before the SDK sees the end of
stdin (and cancels what is left)."""


class _Signal:
    """A flag a thread blocked in ``select`` sees: a pipe that becomes readable once set."""

    def __init__(self) -> None:
        self.fd = self._write = -1

    def open(self) -> None:
        self.fd, self._write = os.pipe()

    def set(self) -> None:
        if self._write >= 0:  # once closed, the threads that watched it are gone
            os.write(self._write, b"x")

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._write)
        self.fd = self._write = -1


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
