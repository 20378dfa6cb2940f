"""What the command line writes, and how: its two consoles (standard output and error),
which show the control characters of what they print instead of sending them to the
terminal; standard output written in pieces, failing as a full disk does when it was closed
as the process started; and the one ``error:`` line a failure the user can fix ends with.
The command line and the server commands (``memvee serve``, ``memvee mcp``) write so."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

__all__ = [
    "STDOUT",
    "ErrorsUnread",
    "closed_stdout_fails",
    "console",
    "errors",
    "print_error",
    "shown",
    "stdout_closed",
]


class _ClosedStdout(io.TextIOBase):
    """Stands for a standard output closed as the process started (``>&-``), which Python
    leaves None: every write fails as :func:`_open_stdout` fails it."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


@contextlib.contextmanager
def closed_stdout_fails() -> Iterator[None]:
    """While a command line runs, a closed standard output is :class:`_ClosedStdout`:
    click's ``echo``, which writes the help, drops its text when ``sys.stdout`` is None,
    so ``memvee --help >&-`` printed nothing and exited 0."""
    if sys.stdout is not None:
        yield
        return
    stand_in = sys.stdout = _ClosedStdout()
    try:
        yield
    finally:
        if sys.stdout is stand_in:
            sys.stdout = None  # type: ignore[assignment]  # as the process started


_PIPE_CHUNK = 16 * 1024


class _StdoutInPieces:
    """``sys.stdout`` (whichever it is at the time), written a piece at a time: one write
    of megabytes to a pipe whose reader went away can end with no BrokenPipeError (the
    kernel reports the part it took), so the command would go on and exit 0. Writing
    fails as on a full disk when stdout was closed as the process started (``>&-``, a
    cron job's or a daemon's), where Python leaves ``sys.stdout`` None."""

    def write(self, text: str) -> int:
        out = _open_stdout()
        for start in range(0, len(text), _PIPE_CHUNK):
            out.write(text[start : start + _PIPE_CHUNK])
        return len(text)

    def flush(self) -> None:
        if sys.stdout is not None:  # else nothing was written to flush
            sys.stdout.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.stdout, name)


def _open_stdout() -> TextIO:
    """``sys.stdout``; an OSError, which the command reports in one line, if it was
    closed as the process started."""
    if stdout_closed():
        raise OSError(errno.EBADF, "standard output is closed")
    return sys.stdout


def stdout_closed() -> bool:
    """Whether standard output was closed as the process started (``>&-``): Python left
    it None, and a command runs with :class:`_ClosedStdout` in its place."""
    return sys.stdout is None or isinstance(sys.stdout, _ClosedStdout)


class ErrorsUnread(BrokenPipeError):
    """The standard error's reader went away."""


class _ShownConsole(Console):
    """A rich console that shows the control characters of what it is given to print
    (:func:`shown`) instead of sending them: a message, an entry or a version name may
    hold escape sequences, which a terminal would obey. Its own styles still apply.

    What it prints is rendered first, then written: a write that fails (stdout or stderr
    closed, a full disk, a reader gone) fails the print and leaves nothing behind, where
    rich would keep the text and print it before the next command's output in the same
    process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writing = threading.Lock()  # one print's text at a time, as rich writes

    def on_broken_pipe(self) -> None:
        """Fail the write, as any other failed write: rich's own would make this console
        quiet for good, point stdout at the null device and exit 1, so a process running
        commands one after another lost every later error line and all its output."""
        gone = ErrorsUnread if self.stderr else BrokenPipeError
        raise gone(errno.EPIPE, os.strerror(errno.EPIPE))

    def print(self, *objects: Any, **options: Any) -> None:  # type: ignore[override]
        with self.capture() as rendered:
            super().print(*(shown(o) for o in objects), **options)
        text = rendered.get()
        if not text:  # nothing to print, or a quiet console
            return
        try:
            with self._writing:
                self.file.write(text)
                self.file.flush()
        except BrokenPipeError:
            self.on_broken_pipe()


class _Console(_ShownConsole):
    """The standard output's console, whose closed pipe ends the command as the command
    line ends it (exit 141), not with rich's own exit code 1."""


STDOUT: Any = _StdoutInPieces()
# Without markup: what the consoles print holds user ids, messages and extracted entries,
# whose brackets are words ("[/x]" made rich raise); styles are given as Text.
console = _Console(markup=False, file=STDOUT)
errors = _ShownConsole(stderr=True, markup=False)

_SHOWN = {
    **{code: chr(0x2400 + code) for code in range(0x20) if chr(code) not in "\t\n"},
    0x7F: "\u2421",
    **dict.fromkeys(range(0x80, 0xA0), "\ufffd"),
}
"""Control characters as the table shows them: C0's and DEL's pictures (``␛`` for ESC),
U+FFFD for C1's, one character each so that styles stay where they were."""


def shown(cell: Any) -> Any:
    """``cell`` with its control characters made visible: stored text (an extractor's
    error, a message) may hold escape sequences, which a terminal would obey."""
    if isinstance(cell, str):
        return cell.translate(_SHOWN)
    if isinstance(cell, Text):
        visible = cell.copy()
        visible.plain = cell.plain.translate(_SHOWN)
        return visible
    return cell


def print_error(message: str, fallback: str = "error") -> None:
    """``message`` as one ``error:`` line on stderr, whatever lines it held (``fallback``
    when it holds none)."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    error_line = Text.assemble(("error:", "red"), f" {shown(line) or fallback}")
    with contextlib.suppress(OSError, ValueError):  # stderr full or closed: the exit code tells
        errors.print(error_line, soft_wrap=True)
