"""The README's first snippet runs as pasted into a file, and creates ./memvee.db."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_first_snippet_runs_when_pasted_into_a_file(tmp_path: Path) -> None:
    snippet = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    (tmp_path / "example.py").write_text(snippet, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    ran = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "User lives in Oslo." in ran.stdout
    assert (tmp_path / "memvee.db").is_file()
