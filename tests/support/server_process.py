"""A ``memvee serve`` process for tests: started on 127.0.0.1 on a free port, stopped after.

The server binds port 0 itself and logs the port it got, so there is no window in which
another process could take a port the test picked. Its JSON log lines go to a file the
test can read; the process runs without an Anthropic key (offline extraction) unless the
test passes one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

MEMVEE = Path(sys.executable).with_name("memvee")
"""The ``memvee`` console script of the running interpreter's environment."""

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without API keys or tokens, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MEMVEE_API_TOKENS")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.02)


class ServerProcess:
    """``memvee serve --port 0 ARGS`` in a child process; ``url`` once it listens."""

    def __init__(
        self, log_path: Path, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        self.args = list(args)
        self.env = server_env(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start the process and wait until it listens."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MEMVEE), "serve", "--port", "0", *self.args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=self.env,
            )
        try:
            listening = wait_until(
                lambda: self._listening() or self._died(), STARTUP_TIMEOUT, "server start"
            )
        except BaseException:
            self.kill()
            raise
        self.port = int(listening["port"])
        return self

    def _listening(self) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("event") == "listening":
                return record
        return None

    def _died(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The server's JSON log lines so far (other lines are skipped)."""
        found = []
        for line in self.log().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server."""
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise

    def kill(self) -> None:
        """SIGKILL: no drain, no close."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def __enter__(self) -> Self:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
