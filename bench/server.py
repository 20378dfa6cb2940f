"""``python -m bench.server``: the HTTP layer's cost, the same workload two ways in one run.

N concurrent clients (default 100) each add exchanges to their own user and retrieve
for them, ``ROUNDS`` times: once through a ``memvee serve`` on loopback (aiohttp, one
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
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from bench.common import (
    BenchConfig,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    progress,
)
from memvee import Memory, MemoryConfig
from memvee.extractors import OfflineExtractor

CLIENTS = int(os.environ.get("BENCH_SERVER_CLIENTS", "100"))
ROUNDS = int(os.environ.get("BENCH_SERVER_ROUNDS", "5"))
MEMVEE = Path(sys.executable).with_name("memvee")

Op = Callable[[str, int], Awaitable[None]]


async def _drive(add: Op, retrieve: Op, clients: int) -> tuple[float, list[float]]:
    """Run the workload with ``clients`` clients in flight; returns the wall time and every
    operation's latency (s)."""
    latencies: list[float] = []

    async def client(number: int) -> None:
        user = f"bench-{number}"
        for round_no in range(ROUNDS):
            for op in (add, retrieve):
                started = time.perf_counter()
                await op(user, round_no)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return time.perf_counter() - started, latencies


def _said(round_no: int) -> str:
    return f"Round {round_no}: I live in city number {round_no} and I like tea."


async def _python_api(folder: Path, clients: int) -> tuple[float, list[float]]:
    config = MemoryConfig(db_path=str(folder / "python.db"), leases=True)  # as the server's
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:

        async def add(user: str, round_no: int) -> None:
            await memory.add_exchange(user, _said(round_no), "Noted.")

        async def retrieve(user: str, round_no: int) -> None:
            found = await memory.retrieve(user, "where does the user live", include_messages=True)
            found.to_prompt()

        await _drive(add, add, clients)  # warm-up: same users, more history
        return await _drive(add, retrieve, clients)


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
                url = f"http://127.0.0.1:{json.loads(line)['port']}"
                _wait_healthy(url, deadline)
                return process, url
        if process.poll() is not None:
            raise RuntimeError(f"memvee serve exited: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("memvee serve did not start within 60 s")


def _wait_healthy(url: str, deadline: float) -> None:
    """Until the server answers its liveness probe (it logs "listening" just before)."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"memvee serve at {url} did not answer /healthz")


async def _http_api(url: str, clients: int) -> tuple[float, list[float]]:
    # aiohttp's client parses in C: the load generator must cost little next to the server.
    connector = aiohttp.TCPConnector(limit=clients, keepalive_timeout=4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:

        async def add(user: str, round_no: int) -> None:
            body = {"user_message": _said(round_no), "assistant_message": "Noted."}
            async with http.post(f"/v1/users/{user}/exchanges", json=body) as answer:
                answer.raise_for_status()
                await answer.read()

        async def retrieve(user: str, round_no: int) -> None:
            body = {"query": "where does the user live", "include_messages": True}
            async with http.post(f"/v1/users/{user}/retrieve", json=body) as answer:
                answer.raise_for_status()
                await answer.read()

        await _drive(add, add, clients)
        return await _drive(add, retrieve, clients)


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


def measure(clients: int = CLIENTS) -> dict[str, tuple[float, list[float]]]:
    """Both sides of the workload with ``clients`` clients in one run: (wall seconds,
    latencies) of each, and the server's own handling times (from its access log) under
    ``handled``."""
    with tempfile.TemporaryDirectory(prefix="memvee-bench-server-") as scratch:
        folder = Path(scratch)
        python = asyncio.run(_python_api(folder, clients))
        process, url = _start_server(folder)
        try:
            http = asyncio.run(_http_api(url, clients))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        handled = _server_side(folder / "server.log")
    return {"python": python, "http": http, "handled": (http[0], handled)}


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """The ``server`` section of ``python -m bench``: one table and the p50 ratios, with
    ``CLIENTS`` clients in flight and with one client whose connection is kept alive (a
    sequential agent: there, a server that let Nagle's algorithm hold its answers waited
    40 ms a call for the client's delayed acknowledgement)."""
    section = Section(
        f"The HTTP layer's cost: {CLIENTS} clients, then one, x {ROUNDS} rounds of "
        "add_exchange + retrieve, through memvee serve on loopback and through the Python "
        "API, same run",
        ["through", "requests / s", "p50 ms", "p99 ms"],
    )
    crowds = {"": CLIENTS, "one.": 1}
    for round_no in range(1, cfg.rounds + 1):
        progress(f"server round {round_no}/{cfg.rounds}")
        for crowd, clients in crowds.items():
            found = measure(clients)
            for name, (wall, latencies) in found.items():
                key = f"server.{crowd}{name}"
                section.stat(f"{key}.rate", "req/s").add(len(latencies) / wall)
                section.stat(f"{key}.p50", "ms").add(statistics.median(latencies) * 1000)
                section.stat(f"{key}.p99", "ms").add(_p99(latencies) * 1000)
            section.stat(f"server.{crowd}ratio", "x").add(
                statistics.median(found["http"][1]) / statistics.median(found["python"][1])
            )
    labels = {
        "python": "Python API (in process)",
        "http": "HTTP API (memvee serve, loopback)",
        "handled": "  of which handled in the server",
    }
    for crowd, clients in crowds.items():
        section.rows.append([f"{clients} client{'s' if clients > 1 else ''}", "", "", ""])
        for name, label in labels.items():
            key = f"server.{crowd}{name}"
            section.rows.append(
                [
                    label,
                    cell(section.stats[f"{key}.rate"], fmt_num),
                    cell(section.stats[f"{key}.p50"], fmt_ms),
                    cell(section.stats[f"{key}.p99"], fmt_ms),
                ]
            )
    section.notes.append(
        f"HTTP p50 / Python API p50: {fmt_ratio(section.stats['server.ratio'].median)} with "
        f"{CLIENTS} clients (target <= 2x), "
        f"{fmt_ratio(section.stats['server.one.ratio'].median)} with one kept-alive client. "
        "The load generator (aiohttp) shares the two cores with the server."
    )
    return [section]


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    """Run both sides once and print the table and the p50 ratio."""
    console = Console()
    found = measure()
    table = Table(
        "through",
        "requests/s",
        "p50 ms",
        "p99 ms",
        title=f"{CLIENTS} clients x {ROUNDS} rounds of add_exchange + retrieve",
    )
    table.add_row(*_row("Python API (in process)", *found["python"]))
    table.add_row(*_row("HTTP API (memvee serve, loopback)", *found["http"]))
    table.add_row(*_row("  of which handled in the server", *found["handled"]))
    console.print(table)
    ratio = statistics.median(found["http"][1]) / statistics.median(found["python"][1])
    verdict = "met" if ratio <= 2 else "NOT met"
    console.print(f"HTTP p50 / Python p50 = {ratio:.2f} (target <= 2: {verdict})")


if __name__ == "__main__":
    main()
