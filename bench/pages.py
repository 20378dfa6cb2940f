"""Which b-tree each page a lone exchange's commit writes belongs to (not timed).

``python -m bench.pages [EXCHANGES]``: one user writes 50 exchanges, then ``EXCHANGES``
more (100 by default), one at a time at the default durability (WAL, synchronous=FULL).
After each of those commits the write-ahead log's new frames are read off the ``-wal``
file (a 32-byte header, then frames of a 24-byte header and a page; a frame's first 4
bytes are its page number, big-endian) and each page number is named by SQLite's
``dbstat`` table: the table or index whose b-tree holds it. It prints the pages one
commit wrote, on average, by table or index, beside raw sqlite3's two-row commit.

Under synchronous=FULL every page written costs the COMMIT its write and checksum, so
these counts say which tables and indexes an exchange pays for. Page 1 (named
``sqlite_schema``) is also written when the file grows; pages that no b-tree holds (free
ones) are counted under ``(free)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import sys
import tempfile
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from bench.append import ASSISTANT_TEXT, USER_TEXT
from bench.common import BenchConfig, InstantExtractor, Section, Workspace, fmt_num, progress
from bench.reference import raw_commits
from memvee import Memory, MemoryConfig

__all__ = ["FREE", "Breakdown", "WalFrames", "breakdown", "main", "page_owners", "run"]

FREE = "(free)"
"""The name of pages no table or index holds (the free list's)."""

_WAL_HEADER = 32
_FRAME_HEADER = 24
_WARMUP = 50
_RAW_FILE = "raw-full-2-events.db"  # where bench.reference.raw_commits writes its commits


@dataclass(frozen=True, slots=True)
class WalFrames:
    """The frames of a write-ahead log this generation of it holds: its salts, and the
    page number of each frame, in the order written."""

    salts: bytes
    pages: tuple[int, ...]

    @classmethod
    def read(cls, wal: Path) -> WalFrames:
        """The frames of ``wal`` (none when it is missing or empty). A frame whose salts are
        not the header's belongs to an earlier generation of the log, overwritten up to
        there: reading stops at the first one."""
        try:
            data = wal.read_bytes()
        except FileNotFoundError:
            return cls(b"", ())
        if len(data) < _WAL_HEADER:
            return cls(b"", ())
        page_size = struct.unpack(">I", data[8:12])[0]
        salts = data[16:24]
        pages: list[int] = []
        offset = _WAL_HEADER
        while offset + _FRAME_HEADER + page_size <= len(data):
            header = data[offset : offset + _FRAME_HEADER]
            if header[8:16] != salts:
                break
            pages.append(struct.unpack(">I", header[:4])[0])
            offset += _FRAME_HEADER + page_size
        return cls(salts, tuple(pages))

    def since(self, before: WalFrames) -> tuple[int, ...]:
        """The pages written after ``before`` was read: the frames past its last, or all of
        them when the log started over (new salts) since."""
        if self.salts != before.salts:
            return self.pages
        return self.pages[len(before.pages) :]


def page_owners(connection: sqlite3.Connection) -> dict[int, str]:
    """Each page number of the database, by the table or index holding it (``dbstat``)."""
    return {int(page): str(name) for name, page in connection.execute(_DBSTAT)}


_DBSTAT = "SELECT name, pageno FROM dbstat"


@dataclass(slots=True)
class Breakdown:
    """The pages of ``commits`` commits, counted by the table or index they belong to."""

    commits: int = 0
    pages: Counter[str] = field(default_factory=Counter)

    def add(self, written: tuple[int, ...], owners: dict[int, str]) -> None:
        """Count one commit's ``written`` pages."""
        self.commits += 1
        self.pages.update(owners.get(page, FREE) for page in written)

    def per_commit(self) -> list[tuple[str, float]]:
        """Pages per commit by table or index, most first (then by name)."""
        commits = max(self.commits, 1)
        return sorted(
            ((name, count / commits) for name, count in self.pages.items()),
            key=lambda item: (-item[1], item[0]),
        )

    def total(self) -> float:
        """All pages per commit."""
        return sum(self.pages.values()) / max(self.commits, 1)


def _side(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=30)


async def _exchanges(folder: Path, count: int, warmup: int) -> Breakdown:
    path = folder / "pages.db"
    wal = Path(f"{path}-wal")
    found = Breakdown()
    config = MemoryConfig(db_path=str(path))
    async with Memory(config=config, extractor=InstantExtractor(), embedder=False) as memory:
        for _ in range(warmup):
            await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
        with closing(_side(path)) as side:
            for _ in range(count):
                side.execute("PRAGMA wal_checkpoint(PASSIVE)")
                before = WalFrames.read(wal)
                await memory.add_exchange("user", USER_TEXT, ASSISTANT_TEXT)
                found.add(WalFrames.read(wal).since(before), page_owners(side))
    return found


def breakdown(folder: Path, count: int, warmup: int = _WARMUP) -> Breakdown:
    """The pages each of ``count`` lone exchanges' commits wrote, by table or index, after
    ``warmup`` exchanges of the same user (so that the tables are past their first
    pages). Each commit runs alone: no other request shares it."""
    return asyncio.run(_exchanges(folder, count, warmup))


def raw_breakdown(folder: Path, count: int) -> Breakdown:
    """The same for raw sqlite3's two-row commits (WAL, synchronous=FULL)."""
    raw_commits(folder, synchronous="FULL", rows=2, transactions=_WARMUP, warmup=0)
    path = folder / _RAW_FILE
    wal = Path(f"{path}-wal")
    found = Breakdown()
    with closing(_side(path)) as side:
        for _ in range(count):
            side.execute("PRAGMA wal_checkpoint(PASSIVE)")
            before = WalFrames.read(wal)
            raw_commits(folder, synchronous="FULL", rows=2, transactions=1, warmup=0)
            found.add(WalFrames.read(wal).since(before), page_owners(side))
    return found


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """The pages a lone exchange's commit writes, by table or index, beside raw sqlite3."""
    section = Section(
        "Pages a lone exchange's commit writes, by table or index (WAL, FULL)",
        ["table or index", "pages per commit"],
    )
    count = cfg.pick(200, 60)
    progress(f"pages: {count} lone exchanges")
    with workspace.scratch("pages") as folder:
        memvee = breakdown(folder, count)
        raw = raw_breakdown(folder, count)
    for name, pages in memvee.per_commit():
        section.rows.append([name, fmt_num(pages, 2)])
    section.rows.append(["memvee, all pages", fmt_num(memvee.total(), 2)])
    section.rows.append(["raw sqlite3 two-row commit, all pages", fmt_num(raw.total(), 2)])
    section.stat("pages.memvee", "pages").add(memvee.total())
    section.stat("pages.raw", "pages").add(raw.total())
    section.notes.append(
        "Counted, not timed: the frames each commit added to the write-ahead log, named by "
        "dbstat. The same run gives the same counts, give or take a page split."
    )
    return [section]


def main(count: int) -> None:
    """Print the pages per commit of ``count`` lone exchanges, by table or index."""
    with tempfile.TemporaryDirectory(prefix="pages-") as folder:
        memvee = breakdown(Path(folder), count)
        raw = raw_breakdown(Path(folder), count)
    print(f"{memvee.commits} lone exchanges, one user, WAL + synchronous=FULL")
    print("pages a lone exchange's commit writes, by table/index:")
    for name, pages in memvee.per_commit():
        print(f"{pages:8.2f}  {name}")
    print(f"{memvee.total():8.2f}  all (memvee)")
    print(f"{raw.total():8.2f}  all (raw sqlite3 two-row commit)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
