"""`make demo`: two users chat, knowledge is extracted in the background (offline rules).

Prints the task states as they change, the knowledge extracted with the messages each
entry came from, and the event log of one user. Needs no API key and no network.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from events import EventStore, sqlite_url
from memvee import Memory, MemoryConfig
from memvee._event_lines import describe
from memvee.audit import Audit
from memvee.extractors import OfflineExtractor

CONVERSATIONS: dict[str, list[tuple[str, str]]] = {
    "alice": [
        ("Hi! I work at Acme Robotics.", "Nice to meet you, Alice."),
        ("I work as an engineer there.", "Engineering, nice."),
        ("I live in Oslo, close to the fjord.", "Oslo is beautiful."),
        ("My sister lives in Bergen.", "Do you visit her often?"),
        ("I am allergic to peanuts, so careful with recipes.", "Noted, no peanuts."),
        ("My dog is called Rex.", "Rex is a great name."),
        ("I love hiking in the mountains.", "Any favourite trail?"),
    ],
    "bob": [
        ("Hello, I live in Lisbon.", "Olá Bob!"),
        ("I work at a small bakery downtown.", "Fresh bread every day!"),
        ("I love jazz and old vinyl records.", "Great taste."),
        ("My cat is named Miso.", "Cute."),
        ("What's the weather like?", "I cannot check live weather, sorry."),
    ],
}

LATER: list[tuple[str, str]] = [
    ("Big news: I moved to Bergen last week!", "Congratulations on the move!"),
    ("And I work at Fjord Analytics now.", "A new job too, exciting."),
    ("We hiked Ulriken on Sunday, the view was unreal.", "Sounds amazing."),
]

QUESTIONS = ("Where does she live now?", "Where does she work?", "That Sunday hike?")


async def _watch(memory: Memory, console: Console, stop: asyncio.Event) -> None:
    """Print each task's status whenever it changes."""
    seen: dict[str, str] = {}
    while not stop.is_set():
        for user in CONVERSATIONS:
            for task in await memory.tasks(user):
                status = task.status.value
                if seen.get(task.task_id) != status:
                    seen[task.task_id] = status
                    extra = f" entries={task.knowledge_count}" if task.done else ""
                    console.print(
                        f"  [cyan]task[/] {task.task_id[:8]} user={user} trigger={task.trigger}"
                        f" -> [bold]{status}[/]{extra}"
                    )
        await asyncio.sleep(0.002)


async def run(db: str) -> None:
    """Run the scripted conversations and print what memvee made of them."""
    console = Console()
    config = MemoryConfig(db_path=db, auto_process=True, batch_threshold=4)
    async with Memory(config=config, extractor=OfflineExtractor()) as memory:
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(memory, console, stop))
        console.rule("conversation (auto-processing every 4 messages)")
        for turn in range(max(len(c) for c in CONVERSATIONS.values())):
            for user, exchanges in CONVERSATIONS.items():
                if turn < len(exchanges):
                    said, answer = exchanges[turn]
                    await memory.add_exchange(user, said, answer)
                    console.print(f"[green]{user}[/]: {said}")
        for user in CONVERSATIONS:
            await memory.flush(user)
        await asyncio.sleep(0.02)
        stop.set()
        await watcher

        console.rule("knowledge, with the messages each entry came from")
        for user in CONVERSATIONS:
            messages = {m.message_id: m.content for m in await memory.messages(user)}
            table = Table("entry", "from message(s)", title=f"{user}")
            for entry in await memory.knowledge(user):
                table.add_row(entry.text, " | ".join(messages[m] for m in entry.source_message_ids))
            console.print(table)

        console.rule("a month later, alice's facts change")
        for said, answer in LATER:
            await memory.add_exchange("alice", said, answer)
            console.print(f"[green]alice[/]: {said}")
        await memory.flush("alice")
        for entry in await memory.knowledge("alice", history=True):
            if entry.superseded_by is not None:
                console.print(f"  [yellow]superseded[/] {entry.text!r}")
        for question in QUESTIONS:
            result = await memory.retrieve("alice", question, top_k=3, include_messages=True)
            console.rule(f"retrieve(alice, {question!r}).to_prompt()")
            console.print(result.to_prompt(), markup=False)

        console.rule("forget bob")
        receipt = await memory.forget("bob")
        console.print(
            f"erased {receipt.events} events, {receipt.snapshots} snapshots and "
            f"{sum(receipt.rows.values())} projection rows; bob's messages now: "
            f"{len(await memory.messages('bob'))}"
        )
    _print_log(console, db, "alice")
    _tour(console, db)


def _print_log(console: Console, db: str, user: str) -> None:
    """The raw event log of one user: the single source of truth."""
    store = EventStore(sqlite_url(db))
    try:
        console.rule(f"event log of {user}")
        table = Table("v", "event", "payload")
        for event in store.events_of(user):
            table.add_row(str(event.originator_version), type(event).__name__, describe(event))
        console.print(table)
    finally:
        store.close()


def _tour(console: Console, db: str) -> None:
    """A short tour of the audit tooling on the demo database (also `memvee --help`)."""
    with Audit(db_path=db) as audit:
        console.rule("tooling: memvee stats")
        console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in audit.stats().items()))
        entry = audit.state("alice").knowledge[0]
        found = audit.explain("alice", entry.entry_id)
        console.rule(f"tooling: memvee explain alice {entry.entry_id[:8]}...")
        console.print(
            f"{found.text!r} came from message #{found.messages[0].seq} "
            f"{found.messages[0].content!r}, task {found.task_id[:8]} ({found.trigger}), "
            f"extractor {found.extractor}, batch of {len(found.batch)} messages"
        )
        earlier = audit.state("alice", version=8)
        console.rule("tooling: memvee state alice --at 8")
        console.print(
            f"at version 8 alice had {len(earlier.buffer)} buffered messages, "
            f"{len(earlier.tasks)} task(s) and {len(earlier.knowledge)} knowledge entries"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m memvee.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="demo.db", help="SQLite file to write (default demo.db)")
    args = parser.parse_args(argv)
    if Path(args.db).exists():  # its script over an old run would tell another story
        print(
            f"error: {args.db} exists: the demo writes a new database "
            "(remove it, or give --db another file)",
            file=sys.stderr,
        )
        sys.exit(2)
    asyncio.run(run(args.db))


if __name__ == "__main__":
    main(None)
