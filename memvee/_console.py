"""The ``memvee`` console script's entry: it loads the command line under Ctrl-C handling,
so an interrupt during the second it takes to load is one ``error:`` line and exit 2, as
it is once a command runs, never a traceback; once the command has ended, a Ctrl-C is
ignored (it would interrupt the interpreter's exit as it joins threads)."""

import signal
import sys


def main() -> None:
    """Load :mod:`memvee.cli` and run the command."""
    try:
        from memvee.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(2) from None
    try:
        run()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
