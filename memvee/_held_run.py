"""One user's run of import lines, held until every line of it is checked.

An import stores none of a user's run unless all of it is sound, so the run is held
whole first. A short run is held in memory with its decoded events, to be stored without
decoding twice; a run past :data:`DECODED_KEPT` lines goes to a temporary file instead,
and its events are decoded again, a chunk at a time, as they are stored: an export of
any length imports in bounded memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["DECODED_KEPT", "HeldRun"]

DECODED_KEPT = 5_000
"""Lines of a run held in memory with their events (a decoded event takes a few
kilobytes); past them, the run is held in a temporary file."""


class HeldRun:
    """The checked lines of one user's run, the first of them line ``first_line`` of the
    input, and their events while the run has at most ``kept`` lines (by default
    :data:`DECODED_KEPT`)."""

    def __init__(self, user_id: str, first_line: int, kept: int | None = None) -> None:
        self.user_id = user_id
        self.first_line = first_line
        self._kept = DECODED_KEPT if kept is None else kept
        self._lines: list[str] = []
        self._events: list[Any] = []
        self._file: IO[str] | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> bool:
        """Whether the run went to a temporary file (its events are decoded again)."""
        return self._file is not None

    def add(self, line: str, event: Any) -> None:
        """Hold the checked ``line`` and its decoded ``event``."""
        if self._file is None and self._count >= self._kept:
            self._file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by close()
            self._file.writelines(_one_line(held) for held in self._lines)
            self._lines, self._events = [], []
        if self._file is not None:
            self._file.write(_one_line(line))
        else:
            self._lines.append(line)
            self._events.append(event)
        self._count += 1

    def lines(self) -> Iterator[str]:
        """The held lines, in order."""
        if self._file is None:
            yield from self._lines
            return
        self._file.seek(0)
        # Not ``yield from``: closing this generator would close the file as well.
        for line in self._file:  # noqa: UP028
            yield line

    def events(self, start: int, decode: Callable[[str], Any]) -> Iterator[Any]:
        """The events of the lines from number ``start`` (from 0) on: those held, or each
        line's ``decode``."""
        if self._file is None:
            yield from self._events[start:]
            return
        for number, line in enumerate(self.lines()):
            if number >= start:
                yield decode(line)

    def close(self) -> None:
        """Delete the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _one_line(line: str) -> str:
    """``line`` as one line of the file: a JSON text's raw line breaks can only be
    whitespace between its tokens, so they become spaces."""
    return line.replace("\r", " ").replace("\n", " ") + "\n"
