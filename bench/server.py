"""``python -m bench.server``: the HTTP layer's cost, the same workload two ways in one run.

N concurrent clients (default 100) each add exchanges to their own user and retrieve
for them, ``ROUNDS`` times: once through a ``memvee serve`` on loopback (httpx, one
connection per client) and once through the Python API of a Memory in this process.
Prints requests/s and p50/p99 latency of each side and the ratio of the p50s (target:
the HTTP side at most 2x the Python API's p50 at 100 clients). Both sides use the offline
extractor, manual processing and lexical retrieval on a fresh SQLite file; the HTTP
clients run in this process, so they share the machine's cores with the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from memvee import Memory, MemoryConfig
from memvee.extractors import OfflineExtractor

CLIENTS = int(os.environ.get("BENCH_SERVER_CLIENTS", "100"))
ROUNDS = int(os.environ.get("BENCH_SERVER_ROUNDS", "5"))
MEMVEE = Path(sys.executable).with_name("memvee")

Op = Callable[[str, int], Awaitable[None]]


async def _drive(add: Op, retrieve: Op) -> tuple[float, list[float]]:
    """Run the workload; returns the wall time and every operation's latency (s)."""
    latencies: list[float] = []

    async def client(number: int) -> None:
        user = f"bench-{number}"
        for round_no in range(ROUNDS):
            for op in (add, retrieve):
                started = time.perf_counter()
                await op(user, round_no)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return time.perf_counter() - started, latencies


def _said(round_no: int) -> str:
    return f"Round {round_no}: I live in city number {round_no} and I like tea."


async def _python_api(folder: Path) -> tuple[float, list[float]]:
    config = MemoryConfig(db_path=str(folder / "python.db"))
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:

        async def add(user: str, round_no: int) -> None:
            await memory.add_exchange(user, _said(round_no), "Noted.")

        async def retrieve(user: str, round_no: int) -> None:
            found = await memory.retrieve(user, "where does the user live", include_messages=True)
            found.to_prompt()

        await _drive(add, add)  # warm-up: same users, more history
        return await _drive(add, retrieve)


def _start_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY",)}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(MEMVEE),
                "serve",
                "--db",
                str(folder / "http.db"),
                "--port",
                "0",
                "--no-auto-process",
                "--lexical",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"event": "listening"' in line:
                return process, f"http://127.0.0.1:{json.loads(line)['port']}"
        if process.poll() is not None:
            raise RuntimeError(f"memvee serve exited: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("memvee serve did not start within 60 s")


async def _http_api(url: str) -> tuple[float, list[float]]:
    # Idle connections expire before uvicorn's 5 s keep-alive closes them under a request.
    limits = httpx.Limits(
        max_connections=CLIENTS, max_keepalive_connections=CLIENTS, keepalive_expiry=4
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def add(user: str, round_no: int) -> None:
            answer = await http.post(
                f"/v1/users/{user}/exchanges",
                json={"user_message": _said(round_no), "assistant_message": "Noted."},
            )
            answer.raise_for_status()

        async def retrieve(user: str, round_no: int) -> None:
            answer = await http.post(
                f"/v1/users/{user}/retrieve",
                json={"query": "where does the user live", "include_messages": True},
            )
            answer.raise_for_status()

        await _drive(add, add)
        return await _drive(add, retrieve)


def _row(name: str, wall: float, latencies: list[float]) -> tuple[str, ...]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        name,
        f"{len(latencies) / wall:,.0f}",
        f"{statistics.median(ordered) * 1000:.1f}",
        f"{p99 * 1000:.1f}",
    )


def _server_side(log: Path) -> list[float]:
    """The server's own handling time of each measured request, from its access log (s)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if '"duration_ms"' in line]
    measured = lines[len(lines) // 2 :]  # the second half: after the warm-up
    return [record["duration_ms"] / 1000 for record in measured]


def main() -> None:
    """Run both sides and print the table and the p50 ratio."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="memvee-bench-server-") as scratch:
        folder = Path(scratch)
        wall_py, lat_py = asyncio.run(_python_api(folder))
        process, url = _start_server(folder)
        try:
            wall_http, lat_http = asyncio.run(_http_api(url))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        handled = _server_side(folder / "server.log")
    table = Table(
        "through",
        "requests/s",
        "p50 ms",
        "p99 ms",
        title=f"{CLIENTS} clients x {ROUNDS} rounds of add_exchange + retrieve",
    )
    table.add_row(*_row("Python API (in process)", wall_py, lat_py))
    table.add_row(*_row("HTTP API (memvee serve, loopback)", wall_http, lat_http))
    table.add_row(*_row("  of which handled in the server", wall_http, handled))
    console.print(table)
    ratio = statistics.median(lat_http) / statistics.median(lat_py)
    verdict = "met" if ratio <= 2 else "NOT met"
    console.print(f"HTTP p50 / Python p50 = {ratio:.2f} (target <= 2: {verdict})")
    inside = statistics.median(handled) / statistics.median(lat_py)
    console.print(f"server-side p50 / Python p50 = {inside:.2f} (the rest is the client and TCP)")


if __name__ == "__main__":
    main()
