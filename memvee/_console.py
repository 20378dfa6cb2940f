"""The ``memvee`` console script's entry: it loads the command line under Ctrl-C handling,
so an interrupt during the second it takes to load is one ``error:`` line and exit 2, as
it is once a command runs, never a traceback; once the command has ended, a Ctrl-C is
ignored (it would interrupt the interpreter's exit as it joins threads). A SIGTERM to
``memvee serve`` or ``memvee mcp`` while it loads is noted, not fatal: the server stops
once up and exits 0, as for one that comes later.

A Ctrl-C that lands while Python runs code given to ``exec()`` (``dataclasses`` builds
its methods so, as the engine loads) is marked by CPython 3.11 as never handled, even
when memvee handles it: ``python -m memvee`` then ended by SIGINT (status 130), not with
the exit code the command chose. After a handled Ctrl-C, the process therefore leaves
with that code itself, as the last thing its exit does (:class:`_CtrlC`)."""

import atexit
import os
import signal
import sys
from typing import NoReturn

_FLUSH_FAILED = 120
"""The exit code Python gives when it cannot flush standard output or error at exit."""


class _CtrlC:
    """Whether a Ctrl-C was handled, and the exit code the command then ended with."""

    def __init__(self) -> None:
        self.handled = False
        self.exit_code: int | None = None

    def ended(self, code: object) -> None:
        """Note the exit code of ``SystemExit(code)``, as Python computes it, if a Ctrl-C
        was handled before it."""
        if self.handled:
            self.exit_code = 0 if code is None else code if isinstance(code, int) else 1

    def leave(self) -> None:
        """Run last at exit (threads joined, every other exit handler run): after a
        handled Ctrl-C, flush standard output and error and end with the command's exit
        code, before CPython can turn it into a death by SIGINT."""
        if self.exit_code is None:
            return
        code = self.exit_code
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                code = _FLUSH_FAILED
        os._exit(code)


_ctrl_c = _CtrlC()


def handled_interrupt() -> None:
    """Note that the command handled a Ctrl-C (it ends with an ``error:`` line and exit
    code 2): the process then leaves with that code itself."""
    _ctrl_c.handled = True


_SERVERS = ("serve", "mcp")
"""The commands that SIGTERM stops with exit 0, however early it comes."""

_terminated = False


def terminated_while_loading() -> bool:
    """Whether a SIGTERM came while the command line of a server command loaded: the
    server takes it as its stop once up."""
    return _terminated


def _note_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True


def main() -> None:
    """Load :mod:`memvee.cli` and run the command."""
    atexit.register(_ctrl_c.leave)  # the first registered runs last
    server = len(sys.argv) > 1 and sys.argv[1] in _SERVERS
    if server:  # its own handler takes over once it runs
        signal.signal(signal.SIGTERM, _note_sigterm)
    try:
        try:
            from memvee.cli import main as run
        except KeyboardInterrupt:
            _interrupted()
        try:
            run()
        except KeyboardInterrupt:  # before the command's own handling (typer builds it)
            _interrupted()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if server:  # exiting: SIGTERM kills again
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except SystemExit as stop:
        _ctrl_c.ended(stop.code)
        raise


def _interrupted() -> NoReturn:
    """End a Ctrl-C no command handled as one handles it: one line, exit code 2."""
    handled_interrupt()
    if sys.stderr is not None:  # None when stderr was closed at start
        sys.stderr.write("error: interrupted\n")
    raise SystemExit(2) from None
