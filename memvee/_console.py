"""The ``memvee`` console script's entry: it loads the command line under Ctrl-C handling,
so an interrupt during the second it takes to load is one ``error:`` line and exit 2, as
it is once a command runs, never a traceback."""

import sys


def main() -> None:
    """Load :mod:`memvee.cli` and run the command."""
    try:
        from memvee.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(2) from None
    run()
