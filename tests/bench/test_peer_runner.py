"""memvee's side of the peer comparison runs in a fresh interpreter and reports what the
peer's runner reports: latencies, wall time and CPU for one user and for 100 users."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.peer import MEMVEE_RUNNER, _run


def test_the_memvee_runner_reports_every_exchange_it_was_asked_for(tmp_path: Path) -> None:
    """And, for one user, as many raw sqlite3 commits, timed in blocks between theirs."""
    result = _run(Path(sys.executable), MEMVEE_RUNNER, tmp_path, 60, 1)
    one = result["one_user"]
    assert len(one["latencies"]) == 60
    assert len(one["raw_latencies"]) == 60, "raw sqlite3's commits take turns with the exchanges"
    assert all(latency > 0 for latency in one["latencies"] + one["raw_latencies"])
    hundred = result["hundred_users"]
    assert len(hundred["latencies"]) == 100
    assert hundred["seconds"] > 0 and hundred["cpu_seconds"] > 0
    assert all(latency > 0 for latency in hundred["latencies"])
    assert result["python"] == sys.version.split()[0]
