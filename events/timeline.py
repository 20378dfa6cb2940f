"""When knowledge entries stop being valid: the timeline a batch's facts are placed in.

The aggregate decides which entries a batch ends; this module says *when*, by time and
not by the order facts arrive. An entry that replaces another begins a new value of the
same fact. If it is newer, the other ends when it begins. If it is older (a backdated
message, an import of old history), it fits in the chain of values before the other:
after the latest one that began before it, which now ends when it begins, and until the
next one began.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Ending", "ReplacedEntry", "Timeline"]


@dataclass(frozen=True, slots=True)
class ReplacedEntry:
    """An ended entry: one link of the chain of values before a later entry (the one
    that replaced it, ``superseded_by``), or, with no ``superseded_by``, the last value
    of a chain, invalidated. A backdated fact may fit in among them."""

    entry_id: str
    valid_from: datetime
    valid_until: datetime
    superseded_by: str | None


@dataclass(slots=True)
class Ending:
    """When an entry stops being valid: replaced by ``successor``, or invalidated for
    ``reason`` by the messages ``sources``."""

    at: datetime
    successor: str | None = None
    reason: str = ""
    sources: list[str] = field(default_factory=list)


class Timeline:
    """The starts and ends of the entries one batch touches.

    It holds the entries the batch adds and the known ones it names (their starts), and
    the chains of ended entries before those (``replaced``, with their ends). Placing each
    of the batch's steps in turn gives the ends to record: :meth:`ended` for entries that
    were valid, :meth:`moved` for ended ones that now end earlier, and the starts:
    :meth:`begun_earlier` for known entries said again before they began.
    """

    def __init__(self, began: dict[str, datetime], replaced: Iterable[ReplacedEntry] = ()) -> None:
        self.began = dict(began)
        self.ends: dict[str, Ending] = {}
        for entry in replaced:
            self.began.setdefault(entry.entry_id, entry.valid_from)
            self.ends[entry.entry_id] = Ending(entry.valid_until, successor=entry.superseded_by)
        self._recorded = dict(self.ends)
        self._earlier: dict[str, datetime] = {}

    def replace(self, new: str, old: str) -> None:
        """Place entry ``new``, which replaces ``old``."""
        ends, start, old_start = self.ends, self.began[new], self.began.get(old)
        if old_start is not None and start < old_start:  # the new fact is the older one
            later = old
            while (prior := self._latest_before(later)) is not None and start < self.began[prior]:
                later = prior
            if prior is not None:
                ends[prior] = Ending(start, successor=new)
            ends[new] = Ending(self.began[later], successor=later)
            return
        current = old
        while (ending := ends.get(current)) and ending.successor and ending.at <= start:
            current = ending.successor  # ended before the new one began: look at what followed
        ending = ends.get(current)
        if ending is not None and ending.at <= start:
            return  # invalidated before the new one began: nothing of it is left to end
        if ending is not None and ending.successor is not None:
            ends[new] = Ending(ending.at, successor=ending.successor)  # in between the two
        ends[current] = Ending(start, successor=new)

    def begin_earlier(self, entry: str, at: datetime) -> None:
        """Have ``entry`` begin at ``at`` (a repeat of it was said then): the value it
        replaced now ends then. Nothing moves when ``at`` is not before its start, or not
        after the start of the value it replaced."""
        start = self.began.get(entry)
        if start is None or at >= start:
            return
        prior = self._latest_before(entry)
        if prior is not None:
            if at <= self.began[prior]:
                return
            self.ends[prior] = Ending(at, successor=entry)
        self.began[entry] = at
        self._earlier[entry] = at

    def invalidate(self, target: str, at: datetime, reason: str, sources: list[str]) -> None:
        """End ``target`` at ``at``, unless it had not begun or had already ended by then.
        An entry that had ended before the batch keeps its recorded end."""
        start, ending = self.began.get(target), self.ends.get(target)
        if (start is not None and at < start) or (ending is not None and ending.at <= at):
            return
        if target in self._recorded:
            return
        self.ends[target] = Ending(at, reason=reason, sources=sources)

    def ended(self) -> Iterator[tuple[str, Ending]]:
        """The entries that were valid and now end, with their ends."""
        return ((e, end) for e, end in self.ends.items() if e not in self._recorded)

    def begun_earlier(self) -> Iterator[tuple[str, datetime]]:
        """The known entries that now begin earlier, with their new starts."""
        return iter(self._earlier.items())

    def moved(self) -> Iterator[tuple[str, Ending]]:
        """The ended entries of the chains given that now end earlier, with their ends."""
        return (
            (e, end)
            for e, end in self.ends.items()
            if e in self._recorded and end is not self._recorded[e]
        )

    def _latest_before(self, entry: str) -> str | None:
        """The latest begun of the entries that ``entry`` replaced, if any."""
        before = [e for e, end in self.ends.items() if end.successor == entry and e in self.began]
        return max(before, key=self.began.__getitem__, default=None)
