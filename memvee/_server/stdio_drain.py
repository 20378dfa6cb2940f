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
its response (or ``timeout`` seconds have passed), or at once when told to end. It works
on file descriptors, so the SDK's own guard of stdout (stray prints go to stderr) stays.

The SDK also drops, with no answer, a line it cannot read as a JSON-RPC message (text
that is not JSON to its parser, such as a lone surrogate escape, or JSON that is no MCP
message): a client that sent such a request would wait for its answer forever. Such a
line is answered here instead, as JSON-RPC 2.0 asks: a parse error or an invalid request,
with the request's id wherever one can be read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
from collections import Counter
from collections.abc import Hashable
from types import TracebackType
from typing import Any, Self

from mcp.types import JSONRPCRequest, jsonrpc_message_adapter
from pydantic import ValidationError

from memvee._server.request_ids import NOT_MCP, has_unusable_id

__all__ = ["DrainedStdio"]

log = logging.getLogger("memvee.server")

PARSE_ERROR, INVALID_REQUEST = -32700, -32600


def _objects(line: bytes) -> list[dict[str, Any]]:
    """The JSON objects of one line: the message, or each of a batch's (none if no JSON)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return []
    items = message if isinstance(message, list) else [message]
    return [item for item in items if isinstance(item, dict)]


def _ids(line: bytes, *, requests: bool) -> list[Hashable]:
    """The ids of the JSON-RPC requests (``requests``) or responses in one line."""
    found: list[Hashable] = []
    for item in _objects(line):
        if not isinstance(item.get("id"), int | str):
            continue
        is_response = "method" not in item and ("result" in item or "error" in item)
        if is_response != requests:  # a request, or what only a request could be
            found.append(item["id"])
    return found


def _read_request(line: bytes) -> tuple[list[Hashable], bytes | None]:
    """The ids of the requests in ``line``, read as the SDK reads it, and the JSON-RPC
    error answering the line if the SDK would drop it unanswered (else ``None``): a parse
    error for text its parser cannot read, an invalid request for JSON that is no MCP
    message; for each request id in the line, else with a null id."""
    text = line.decode("utf-8", errors="replace")  # as the SDK reads stdin
    if not text.strip():
        return [], None
    try:
        message = jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValidationError as error:
        unreadable = [e["msg"] for e in error.errors() if e["type"] == "json_invalid"]
    else:
        if not has_unusable_id(text):
            return ([message.id] if isinstance(message, JSONRPCRequest) else []), None
        unreadable = []
    code, message_text, data = (
        (PARSE_ERROR, "Parse error", unreadable[0])
        if unreadable
        else (INVALID_REQUEST, "Invalid Request", NOT_MCP)
    )
    ids = _ids(line, requests=True)
    refusal = {"code": code, "message": message_text, "data": data}
    answers: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": i, "error": refusal} for i in ids or [None]
    ]
    batch = ids and text.lstrip().startswith("[")  # a batch's answers go in one array
    return [], json.dumps(answers if batch else answers[0]).encode() + b"\n"


def _cancelled(line: bytes) -> list[Hashable]:
    """The ids of the requests a ``notifications/cancelled`` in ``line`` cancels."""
    found: list[Hashable] = []
    for item in _objects(line):
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
    stdin and stdout. The end of stdin reaches the SDK once every request read has been
    answered (or after ``timeout`` seconds), or at once after :meth:`end_input`. Leaving
    restores both descriptors."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: Counter[Hashable] = Counter()
        self._answered = threading.Condition()
        self._writing = threading.Lock()
        self._ending = False
        self._end_input = _Signal()
        self._stop = _Signal()
        self._real_in = self._real_out = -1
        self._pumps: list[threading.Thread] = []

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
                    return
                chunk = os.read(self._real_in, 65536)
                if not chunk:
                    self._pass_on(into, lines.end())
                    break
                self._pass_on(into, lines.feed(chunk))
            with self._answered:
                drained = self._answered.wait_for(
                    lambda: self._ending or not self._pending, self.timeout
                )
                unanswered = sum(self._pending.values())
            if not drained:
                log.warning(
                    "stdin closed; %d requests still unanswered after %.0f s, stopping",
                    unanswered,
                    self.timeout,
                    extra={"event": "stdin_closed"},
                )
        except OSError as error:  # the SDK is gone (its pipe closed), or stdin failed
            log.info("stdin is no longer passed on: %s", error, extra={"event": "stdin_closed"})
        finally:
            os.close(into)

    def _pump_stdout(self, out: int) -> None:
        """The SDK's pipe to the real stdout, noting each response written."""
        lines = _Lines()
        try:
            while True:
                ready, _, _ = select.select([out, self._stop.fd], [], [])
                if out not in ready:  # stopped, and the pipe holds nothing more
                    return
                chunk = os.read(out, 65536)
                if not chunk:
                    return
                written = lines.feed(chunk)
                if written:
                    self._write_out(b"".join(line + b"\n" for line in written))
                answered = [i for line in written for i in _ids(line, requests=False)]
                if answered:
                    with self._answered:
                        self._pending.subtract(answered)
                        self._pending = +self._pending  # keeps the ids still unanswered
                        self._answered.notify_all()
        except OSError as error:
            log.warning("stdout closed: %s", error, extra={"event": "stdout_closed"})
        finally:
            rest = lines.end()
            if rest:
                with contextlib.suppress(OSError):
                    self._write_out(rest[0])
            os.close(out)

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
