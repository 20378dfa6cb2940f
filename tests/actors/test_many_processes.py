"""Many processes, one memory: four processes share 24 users; one is SIGKILLed halfway
and restarted. Every acknowledged message is in the log exactly once, every message is
covered by exactly one KnowledgeExtracted, no batch is extracted twice, and the rebuilt
projections equal the live ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any

from events import EventStore, UserLog
from memvee import Memory, MemoryConfig
from projections import verify
from tests.support.cluster_worker import LEASE_TTL
from tests.support.extractors import RecordingExtractor

ROOT = Path(__file__).resolve().parents[2]
USERS = 24
ROUNDS = 4
WORKERS = 4


def _start(db_url: str, name: str, rounds: int, seed: int, out: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.cluster_worker",
            db_url,
            name,
            str(USERS),
            str(rounds),
            str(seed),
        ],
        cwd=ROOT,
        stdout=out,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line of a killed process may be cut short
    return records


def _acks(path: Path) -> int:
    return sum(1 for r in _records(path) if "ack" in r) if path.exists() else 0


async def test_four_processes_one_killed_and_restarted(db_url: str, tmp_path: Path) -> None:
    EventStore(db_url).close()  # create the schema once, before the processes race to
    outputs = [tmp_path / f"worker-{i}.jsonl" for i in range(WORKERS)]
    files = [path.open("w") for path in outputs]
    workers = [_start(db_url, f"w{i}", ROUNDS, i, files[i]) for i in range(WORKERS)]
    async with asyncio.timeout(240):
        while _acks(outputs[0]) < USERS * ROUNDS // 2:
            await asyncio.sleep(0.05)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(timeout=30)
    restarted_out = tmp_path / "worker-0-restarted.jsonl"
    files.append(restarted_out.open("w"))
    outputs.append(restarted_out)
    workers.append(_start(db_url, "w0-restarted", ROUNDS // 2, 100, files[-1]))
    for worker in workers[1:]:
        assert await asyncio.to_thread(worker.wait, 240) == 0
    for file in files:
        file.close()

    records = [r for path in outputs for r in _records(path)]
    acked = [m for r in records if "ack" in r for m in r["ack"]]
    extracting = [r for r in records if "extracting" in r]

    config = MemoryConfig(db_url=db_url, leases=True, lease_ttl=LEASE_TTL)
    final = RecordingExtractor()
    async with Memory(config=config, extractor=final) as memory:
        for i in range(USERS):
            await memory.flush(f"user-{i}")
        engine = memory._engine
        assert engine is not None
        store = engine.store
        events = [r.event for page in store.follow() for r in page]
        assert await asyncio.to_thread(verify, store) == []
        for i in range(USERS):
            assert await memory.buffer(f"user-{i}") == []

    logged = Counter(e.message_id for e in events if isinstance(e, UserLog.MessageAdded))
    assert set(acked) <= set(logged), "an acknowledged message is missing from the log"
    assert max(logged.values()) == 1, "a message was logged twice"
    assert len(set(acked)) == len(acked)

    extracted = [e for e in events if isinstance(e, UserLog.KnowledgeExtracted)]
    covered = Counter(m for e in extracted for m in e.message_ids)
    assert set(covered) == set(logged), "a message is covered by no KnowledgeExtracted"
    assert max(covered.values()) == 1, "a message is covered twice"

    completed = {e.task_id for e in extracted if e.message_ids}
    batches = Counter(r["extracting"] for r in extracting)
    batches.update(b.task_id for b in final.batches)
    assert all(batches[task] == 1 for task in completed), "a batch was extracted twice"
    sent_in_completed = Counter(
        m for r in extracting if r["extracting"] in completed for m in r["messages"]
    )
    sent_in_completed.update(
        m.message_id for b in final.batches if b.task_id in completed for m in b.messages
    )
    assert sent_in_completed == Counter(set(logged)), "each message in one completed batch"
    assert len({r["by"] for r in extracting}) > 1, "processing must be spread over processes"


def test_processes_writing_one_user_at_once_each_get_every_write_through(
    db_url: str, tmp_path: Path
) -> None:
    """Four processes, four writers each, all on one user: a process that loses a race
    reloads the log and decides again, waiting a random while, until the others pause: none
    is starved by the one that wrote last (which alone needs no reload), and every
    add_exchange succeeds."""
    writers, exchanges = 4, 100
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.same_user_writer",
                db_url,
                name,
                str(writers),
                str(exchanges),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for name in "ABCD"
    ]
    reports = [json.loads(p.communicate(timeout=300)[0].splitlines()[-1]) for p in processes]
    assert [r["errors"] for r in reports] == [[]] * 4
    assert [r["acknowledged"] for r in reports] == [writers * exchanges] * 4
    store = EventStore(db_url)
    try:
        added = [e for e in store.events_of("shared") if isinstance(e, UserLog.MessageAdded)]
    finally:
        store.close()
    assert len(added) == 4 * writers * exchanges * 2
