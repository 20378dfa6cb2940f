"""``python -m memvee``: the ``memvee`` command, where its console script is not on PATH."""

from memvee._console import main

main()
