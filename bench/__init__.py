"""memvee's benchmark: ``python -m bench`` (or ``make bench``) prints figures, never asserts.

Each section lives in its own module and returns :class:`bench.common.Section` values
(a table to print plus named statistics); :mod:`bench.report` prints them and checks the
targets of the issues against the medians. Environment knobs: ``BENCH_ROUNDS`` (rounds per
measurement) and ``BENCH_QUICK=1`` (smaller sizes, a smoke test in about a minute).
"""
