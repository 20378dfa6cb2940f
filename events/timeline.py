"""When knowledge entries stop being valid: the timeline a batch's facts are placed in.

The aggregate decides which entries a batch ends; this module says *when*, by time and
not by the order facts arrive. An entry that replaces another begins a new value of the
same fact. If it is newer, the other ends when it begins. If it is older (a backdated
message, an import of old history), it fits in the chain of values before the other:
after the latest one that began before it, which now ends when it begins, and until the
next one began.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from events.extraction import KnownEntry

__all__ = ["Around", "Ending", "ReplacedEntry", "Timeline"]


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
        """Place entry ``new``, which replaces ``old``. The walks along the chain stop
        at an entry met before, so no chain, however linked, holds them up; an entry
        never replaces itself."""
        if new == old:
            return
        ends, start, old_start = self.ends, self.began[new], self.began.get(old)
        if old_start is not None and start < old_start:  # the new fact is the older one
            later, seen = old, {old, new}
            while (prior := self._latest_before(later)) is not None and start < self.began[prior]:
                if prior in seen:
                    prior = None  # a link back into the walk: fit in before ``later``
                    break
                seen.add(prior)
                later = prior
            if prior is not None:
                ends[prior] = Ending(start, successor=new)
            ends[new] = Ending(self.began[later], successor=later)
            return
        current = self._held_at(old, start, besides=new)
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
        """End ``target`` at ``at``, unless it had not begun or had already ended by then:
        words that take back a value another replaced already end nothing, not the value
        that followed it. An entry that another replaced before the batch keeps its
        recorded end; one taken back then is taken back earlier."""
        start, ending = self.began.get(target), self.ends.get(target)
        if (start is not None and at < start) or (ending is not None and ending.at <= at):
            return
        recorded = self._recorded.get(target)
        if recorded is not None and recorded.successor is not None:
            return
        self.ends[target] = Ending(at, reason=reason, sources=sources)

    def ended(self) -> Iterator[tuple[str, Ending]]:
        """The entries that were valid and now end, with their ends."""
        return ((e, end) for e, end in self.ends.items() if e not in self._recorded)

    def begun_earlier(self) -> Iterator[tuple[str, datetime]]:
        """The known entries that now begin earlier, with their new starts."""
        return iter(self._earlier.items())

    def moved(self) -> Iterator[tuple[str, Ending]]:
        """The ended entries given that now end earlier, with their ends."""
        return (
            (e, end)
            for e, end in self.ends.items()
            if e in self._recorded and end is not self._recorded[e]
        )

    def _held_at(self, entry: str, at: datetime, besides: str | None = None) -> str:
        """The value of ``entry``'s chain that held at ``at``: ``entry``, or, when it was
        replaced by then, what followed it, and so on. The walk stops at an entry met
        before (or ``besides``), so no chain, however linked, holds it up."""
        current, seen = entry, {entry, besides}
        while (ending := self.ends.get(current)) and ending.successor and ending.at <= at:
            if ending.successor in seen:
                break  # a link back into the walk: stop at the last entry not yet seen
            seen.add(ending.successor)
            current = ending.successor
        return current

    def _latest_before(self, entry: str) -> str | None:
        """The latest begun of the entries that ``entry`` replaced, if any."""
        before = [e for e, end in self.ends.items() if end.successor == entry and e in self.began]
        return max(before, key=self.began.__getitem__, default=None)


class Around:
    """What a batch was shown of the entries around its times, to place a fact said before
    an entry it names began: when each ``known`` entry began (and, for ended ones, ended),
    the chains before them (``replaced``), and which are the version's ``valid`` ones.
    ``words`` gives the form in which two texts state the same.

    A repeat or a value said before an entry began can only move that entry's start when
    no other ended entry held in between: the log does not know which entries are values
    of one fact, and one that held then may be another value of it.
    """

    def __init__(
        self,
        known: Sequence[KnownEntry],
        replaced: Iterable[ReplacedEntry],
        valid: Collection[str],
        words: Callable[[str], str],
    ) -> None:
        self.valid = valid
        self.began = {k.entry_id: k.valid_from for k in known}
        self.ended = {
            k.entry_id: (k, k.valid_until)
            for k in known
            if k.valid_until is not None and k.entry_id not in valid
        }
        self.successor: dict[str, str] = {}
        self.prior_began: dict[str, datetime] = {}  # when the value each entry replaced began
        for link in replaced:
            if (successor := link.superseded_by) is not None:
                self.successor[link.entry_id] = successor
                before = self.prior_began.get(successor, link.valid_from)
                self.prior_began[successor] = max(before, link.valid_from)
        self._words = words
        self._by_words: dict[str, list[KnownEntry]] = {}
        for k in known:
            self._by_words.setdefault(words(k.text), []).append(k)

    @property
    def succeeded(self) -> Collection[str]:
        """The ended entries that another entry replaced."""
        return self.successor.keys()

    def taken_back_after(self, entry: str, said: datetime) -> bool:
        """Whether the ended ``entry`` held at ``said`` and was taken back (not replaced)
        after it: an invalidation said then takes it back earlier."""
        if entry not in self.ended or entry in self.successor:
            return False
        known, until = self.ended[entry]
        return known.valid_from <= said < until

    def began_later(self, entry: str, said: datetime) -> bool:
        """Whether the known ``entry`` began after ``said``."""
        return said < self.began.get(entry, said)

    def repeat_before(
        self, entry: str, said: datetime, besides: str | None = None
    ) -> Literal["earlier", "older", "held"]:
        """How ``entry``, said again at ``said`` before it began, is placed: it begins
        then (``earlier``); the statement is older than the value it replaced (``older``:
        a value before that one); or, when another ended entry (not ``besides``) held in
        between, its start stays (``held``)."""
        prior = self.prior_began.get(entry)
        if prior is not None and said <= prior:
            return "older"
        start = self.began[entry]
        for other, (known, until) in self.ended.items():
            if other in (entry, besides) or self.successor.get(other) == entry:
                continue
            if known.valid_from < start and said < until:
                return "held"
        return "earlier"

    def joined(
        self, target: str | None, text: str, said: datetime
    ) -> tuple[str, str | None] | None:
        """The known entry that an update of the ended ``target`` to ``text``, said at
        ``said`` while ``target`` held, states before it began, when nothing came between
        ``target``'s end and that entry. That entry then begins at ``said``; with it, the
        entry it now replaces: ``target``, unless it had replaced ``target`` already (its
        start moving ends ``target`` then). ``None`` when the update is a value of its own.
        """
        if target is None or target not in self.ended:
            return None
        held, until = self.ended[target]
        if not held.valid_from <= said < until:
            return None
        successor = self.successor.get(target)
        for known in self._by_words.get(self._words(text), ()):
            entry = known.entry_id
            if entry == target or known.valid_from < until:
                continue
            if successor is None and entry not in self.prior_began:
                replaces: str | None = target
            elif successor == entry:
                replaces = None
            else:
                continue
            if self.repeat_before(entry, said, besides=target) == "earlier":
                return entry, replaces
        return None
