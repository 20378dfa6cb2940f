"""`make demo` runs on the embedded default with no API key and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_offline_and_shows_tasks_knowledge_and_the_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env["COLUMNS"] = "120"
    result = subprocess.run(
        [sys.executable, "-m", "memvee.demo", "--db", str(tmp_path / "demo.db")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-> PENDING" in out or "-> RUNNING" in out
    assert "-> COMPLETED" in out
    assert "User lives in Oslo" in out and "I live in Oslo" in out
    assert "event log of alice" in out and "KnowledgeExtracted" in out
    assert "memvee explain alice" in out and "came from message" in out
    assert "at version 8 alice had" in out
    assert "superseded 'User lives in Oslo.'" in out and "KnowledgeSuperseded" in out
    live = out.split("'Where does she live now?'")[1].split("retrieve(alice,")[0]
    work = out.split("'Where does she work?'")[1].split("retrieve(alice,")[0]
    assert "- User lives in Bergen." in live and "Fjord Analytics" in work
    assert "user: We hiked Ulriken on Sunday" in out
    assert "bob's messages now: 0" in out


def test_the_demo_refuses_a_database_that_exists_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """Its script over an old run's log would print another story (stale tasks, the
    first run's facts as current): it writes only a new file."""
    db = tmp_path / "demo.db"
    db.write_bytes(b"kept")
    result = subprocess.run(
        [sys.executable, "-m", "memvee.demo", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {db} exists: the demo writes a new database (remove it, or give --db another file)"
    ]
    assert db.read_bytes() == b"kept"
