"""How one batch's facts are decided: the plan of what each fact of an extractor's answer
does to the entries of a knowledge version, folded in the order the facts were said, not
the order the answer lists them in, as batches of one message each would fold them.

:func:`plan_facts` decides, repairing what an extractor got slightly wrong; :class:`Plan`
holds the decisions (entries to add, steps that end entries) that
:class:`~events.user_log.UserLog` turns into events, placing each step in a
:class:`~events.timeline.Timeline`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events.checks import MAX_FACT_CHARS, shows_something, storable
from events.errors import InvalidExtractionError
from events.extraction import FACT_ACTIONS, ExtractedFact, FactAction, KnownEntry
from events.timeline import Around

__all__ = ["Plan", "plan_facts", "same_words"]

_NOT_YET = datetime.min.replace(tzinfo=UTC)  # a fact not yet dated


@dataclass
class Plan:
    """What a batch's facts do, in the answer's order: entries to add (each with the
    repairs made to it and the messages that first stated it), and ``steps`` that end
    entries: ``("replace", place)`` for the added entry at ``place`` replacing its
    :attr:`replaces` (a known entry's id, or an earlier added entry's place), and
    ``("invalidate", i)`` for :attr:`invalidated` ``[i]``, ``("earlier", i)`` for a known
    entry said again before it began (:attr:`earlier` ``[i]``: the entry, when, and the
    messages that said it), and ``("joins", i)`` for such an entry that now replaces
    another known one (:attr:`joins` ``[i]``: the two). Repairs of facts that added no
    entry are in :attr:`repairs`; the entries (known ones, and added ones by place) said
    again while they held, with the messages that cited them so, in :attr:`repeated`;
    the added entries that are a value said again after it ended, with that value, in
    :attr:`again` (known entries' words, by id, are in :attr:`known_words`)."""

    added: list[ExtractedFact] = field(default_factory=list)
    said_by: list[tuple[str, ...]] = field(default_factory=list)
    replaces: list[str | int | None] = field(default_factory=list)
    notes: list[list[str]] = field(default_factory=list)
    invalidated: list[tuple[str | int, ExtractedFact, datetime]] = field(default_factory=list)
    steps: list[tuple[str, int]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    earlier: list[tuple[str, datetime, list[str]]] = field(default_factory=list)
    joins: list[tuple[str, str]] = field(default_factory=list)
    ends: dict[str | int, tuple[datetime, bool]] = field(default_factory=dict)
    repeated: dict[str | int, list[str]] = field(default_factory=dict)
    cited: list[dict[int, tuple[str, ...]]] = field(default_factory=list)
    followed: dict[str | int, str | int] = field(default_factory=dict)
    dated_at: dict[int, datetime] = field(default_factory=dict)
    known_words: dict[str, str] = field(default_factory=dict)
    again: dict[int, str | int] = field(default_factory=dict)
    _towards: dict[str | int, str | int] = field(default_factory=dict, init=False, repr=False)
    _walks_chains: bool = field(default=False, init=False, repr=False)

    def start(self, place: int, said_at: dict[str, datetime]) -> datetime:
        """When the entry added at ``place`` begins: its first statement, or, for a change
        dated later (:meth:`dated`), then."""
        first = _said(self.said_by[place], said_at)
        return max(first, self.dated_at.get(place, first))

    def dated(
        self,
        value: str | int,
        said: datetime,
        said_at: dict[str, datetime],
        action: FactAction,
        began: datetime | None = None,
    ) -> datetime:
        """When a change said at ``said`` ends ``value`` (a known entry that ``began``
        then, or an added entry's place): no earlier than the latest message of the
        answer stating ``value`` (:meth:`said_before`), so an entry never ends before a
        message of its batch that states it, however late the answer had the change
        follow the fact it names; for an update, when the answer replaced ``value`` by
        then, the same for the value that followed it, which the update ends
        (:meth:`changed`). A change said before ``value`` began is placed by time as it
        is (the older value)."""
        at, seen = said, set()
        while value not in seen:
            seen.add(value)
            if isinstance(value, int):
                began = self.start(value, said_at)
            stated = self.statements(value)
            if began is not None and at < began:
                return at
            at = max([at, *(said_at[m] for m in stated if m in said_at)])
            end = self.ended_at(value, at)
            if action != "update" or end is None or not end[1]:
                return at
            value, began = self.latest(value), None
        return at

    def statements(self, value: str | int) -> list[str]:
        """The messages of the answer that state ``value``: those that said it again and,
        for an added entry's place, the messages it cites."""
        cited = () if isinstance(value, str) else self.added[value].source_message_ids
        return [*cited, *self.repeated.get(value, ())]

    def said_before(self, value: str | int, at: datetime, said_at: dict[str, datetime]) -> bool:
        """Whether every message of the answer that states ``value`` (:meth:`statements`)
        was sent before ``at``, so ``value`` may end then without ending before its own
        words."""
        return all(said_at[m] < at for m in self.statements(value) if m in said_at)

    def ended_by(
        self, target: str | int, at: datetime, action: FactAction, said_at: dict[str, datetime]
    ) -> None:
        """Note that a fact of the answer said at ``at`` ends ``target`` (a known entry,
        or an added entry's place, unless it was said before that began) by ``action``:
        a repeat of ``target`` said later is that value again, not the same entry."""
        if isinstance(target, int) and at < self.start(target, said_at):
            return
        end = self.ends.get(target)
        if end is None or at < end[0]:
            self.ends[target] = (at, action == "update")

    def changed(
        self, target: str | int, at: datetime, action: FactAction, said_at: dict[str, datetime]
    ) -> None:
        """Note that a change said at ``at`` ends ``target`` (:meth:`ended_by`) or, for an
        update when the answer had replaced ``target`` by then, the last value of its
        chain, which the timeline ends in its place (:meth:`Timeline.replace`). An
        invalidation of a replaced value ends nothing, as it would in a batch of its own:
        its words deny only that value, which no longer held."""
        end = self.ended_at(target, at)
        if action == "update" and end is not None and end[1]:
            self.ended_by(self.latest(target), at, action, said_at)
        self.ended_by(target, at, action, said_at)

    def taken_back(self, target: str | int, at: datetime, around: Around) -> str | int:
        """What an invalidation naming ``target``, said at ``at``, ends: when ``target``
        had been replaced by then (by the answer, or before the batch, as ``around``
        knew it), the value of its chain that held then if that is ``target`` said again
        (:meth:`restates`), since the words deny that value; otherwise ``target``, which
        then ends nothing (:meth:`changed`)."""
        held, seen = target, {target}
        while (following := self._replaced_by(held, at, around)) is not None:
            if following in seen:
                return target
            seen.add(following)
            held = following
        if held == target or self.ended_at(held, at) is not None:
            return target
        return held if self.restates(held, target) else target

    def restates(self, value: str | int, named: str | int) -> bool:
        """Whether ``value`` is ``named`` said again: the answer listed it as that value
        again (the same as it, after it ended), or it is in ``named``'s words
        (:func:`same_words`). A value whose words merely include ``named``'s ("User lives
        in Bergen, not in Oslo.") is another one, as is a return in other words listed
        as a change of what replaced ``named``: the answer does not say it is ``named``."""
        if isinstance(value, int) and self.again.get(value) == named:
            return True
        words = self._words(named)
        return words is not None and self._words(value) == words

    def _replaced_by(self, value: str | int, at: datetime, around: Around) -> str | int | None:
        """The value that replaced ``value`` by ``at``: in the answer, or, for a known
        entry that ended before the batch, the one that followed it then."""
        end = self.ended_at(value, at)
        if end is not None:
            return self.followed.get(value) if end[1] else None
        if isinstance(value, str) and value in around.successor:
            known_end = around.ended.get(value)
            if known_end is not None and known_end[1] <= at:
                return around.successor[value]
        return None

    def _words(self, value: str | int) -> str | None:
        """The form in which ``value`` (a known entry, or an added entry's place) states
        its fact (:func:`same_words`); ``None`` for a known entry not shown."""
        if isinstance(value, int):
            return same_words(self.added[value].text)
        return self.known_words.get(value)

    def ended_at(self, target: str | int | None, said: datetime) -> tuple[datetime, bool] | None:
        """When an earlier fact of the answer ended ``target``, if it did by ``said``, and
        whether it replaced it (else it was taken back)."""
        end = None if target is None else self.ends.get(target)
        return end if end is not None and end[0] <= said else None

    def begin_earlier(
        self, target: str, said: datetime, sources: list[str], replacing: str | None = None
    ) -> None:
        """Have the known entry ``target`` begin at ``said``, when ``sources`` said it,
        and replace the known entry ``replacing`` then, if any."""
        self.steps.append(("earlier", len(self.earlier)))
        self.earlier.append((target, said, sources))
        if replacing is not None:
            self.steps.append(("joins", len(self.joins)))
            self.joins.append((target, replacing))

    def said_again(self, target: str | int, messages: Sequence[str]) -> None:
        """Note that ``messages`` said ``target`` (a known entry, or an added entry's
        place) again while it held: they are outdated once it ends after them. A repeat
        citing no message of its own (the batch stood in for it) notes nothing."""
        if messages:
            noted = self.repeated.setdefault(target, [])
            noted.extend(m for m in messages if m not in noted)

    def begun_before(
        self, place: int, messages: Sequence[str], said_at: dict[str, datetime]
    ) -> bool:
        """Whether ``messages`` (some, each of known time, none the entry's own sources)
        were all sent once the entry added at ``place`` began, at that instant included:
        saying it again then, they repeat it, as they would in a later batch, rather than
        being its sources."""
        start = self.start(place, said_at)
        own = set(self.added[place].source_message_ids)
        return bool(messages) and all(
            m in said_at and m not in own and start <= said_at[m] for m in messages
        )

    def said_again_apart(self, entries: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
        """:attr:`repeated` by entry id (``entries``: one for each added fact, in the
        plan's order), less the messages that the same answer has the entry begin with
        (:attr:`earlier`) or cite: those are its sources, not words said again."""
        begun = {(target, m) for target, _, sources in self.earlier for m in sources}
        ids = {place: entry["entry_id"] for place, entry in enumerate(entries)}
        cites = {entry["entry_id"]: set(entry["source_message_ids"]) for entry in entries}
        apart: dict[str, list[str]] = {}
        for target, messages in self.repeated.items():
            entry_id = ids[target] if isinstance(target, int) else target
            own = cites.get(entry_id, set())
            noted = apart.setdefault(entry_id, [])
            noted.extend(
                m
                for m in messages
                if (entry_id, m) not in begun and m not in own and m not in noted
            )
        return {target: messages for target, messages in apart.items() if messages}

    def began(self, target: str, around: Around) -> datetime | None:
        """When the known entry ``target`` begins: as ``around`` knew it, or earlier
        when a statement of the answer said before it moved its start
        (:meth:`begin_earlier`)."""
        known = around.began.get(target)
        moved = [at for entry, at, _ in self.earlier if entry == target]
        return min(moved, default=known) if known is None else min([known, *moved])

    def begins_after(self, target: str, said: datetime, around: Around) -> bool:
        """Whether the known entry ``target`` (:meth:`began`) begins after ``said``."""
        began = self.began(target, around)
        return began is not None and said < began

    def end_within(self, target: str | int, fact: ExtractedFact, at: datetime) -> None:
        """Have ``fact``, dated ``at``, invalidate ``target`` (a known entry, or an added
        entry's place)."""
        self.steps.append(("invalidate", len(self.invalidated)))
        self.invalidated.append((target, fact, at))

    def add(
        self,
        fact: ExtractedFact,
        replaces: str | int | None,
        notes: list[str],
        index: int,
        dated: datetime | None = None,
        older_than: datetime | None = None,
    ) -> None:
        """Add an entry for ``fact``, fact ``index`` of the answer, replacing ``replaces``,
        begun when it was said or, for a change :meth:`dated` later, at ``dated``. A
        change said before ``replaces`` began (then ``older_than``) is the older value:
        it ends then and ``replaces`` follows it, as the timeline places it."""
        place = len(self.added)
        if dated is not None:
            self.dated_at[place] = dated
        if replaces is not None:
            self.steps.append(("replace", place))
            if older_than is None:
                self.follow(self.latest(replaces), place)
            else:
                self.follow(place, replaces)
        self.added.append(fact)
        self.said_by.append(fact.source_message_ids)
        self.replaces.append(replaces)
        self.notes.append(notes)
        self.cited.append({index: fact.source_message_ids})
        if older_than is not None:
            self.ends[place] = (older_than, True)

    def in_answer_order(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` (one for each added fact) in the order the answer first listed
        them, though the plan folds the facts in the order they were said."""
        places = sorted(range(len(entries)), key=lambda place: min(self.cited[place]))
        return [entries[place] for place in places]

    def _cite(self, place: int, index: int, sources: list[str]) -> None:
        """Have the entry at ``place`` cite ``sources`` too (fact ``index`` said it),
        its citations in the order the answer listed its facts."""
        cited = self.cited[place]
        cited[index] = (*cited.get(index, ()), *sources)
        ids = dict.fromkeys(m for each in sorted(cited) for m in cited[each])
        fact = self.added[place]
        self.added[place] = ExtractedFact(fact.text, tuple(ids), fact.action, fact.target_entry_id)

    def latest(self, value: str | int) -> str | int:
        """The last value of the plan's chain through ``value`` (a known entry, or an
        added entry's place): the entry that followed it, and so on; ``value`` if none.
        Each value found keeps a shortcut to it (:meth:`follow`), so that asking for every
        change of a long chain does not walk the chain each time."""
        if self._walks_chains:
            seen = {value}
            while (following := self.followed.get(value)) is not None and following not in seen:
                seen.add(following)
                value = following
            return value
        last = value
        while (ahead := self._towards.get(last)) is not None:
            last = ahead
        while value != last:
            self._towards[value], value = last, self._towards[value]
        return last

    def follow(self, value: str | int, follower: str | int) -> None:
        """Note that ``follower`` replaced ``value`` in the plan's chains. A chain only
        grows at its last value, so a shortcut to that value (:meth:`latest`) leads on to
        ``follower``; a link that breaks that (``value`` followed already, or a cycle) has
        every later lookup walk the chain, stopping at a value met before."""
        if not self._walks_chains and (value in self.followed or self.latest(follower) == value):
            self._walks_chains = True
        self.followed[value] = follower
        self._towards[value] = follower

    def adoptable(self, place: int, named: str | int) -> bool:
        """Whether the entry added at ``place`` may be the first statement of an update
        of ``named`` said after it, or the value before ``named``: it is not ``named``,
        and no link of the plan touches it (it replaces nothing, nothing follows it,
        nothing ended it), so linking it to ``named`` cannot close a cycle."""
        return (
            place != named
            and self.replaces[place] is None
            and place not in self.followed
            and place not in self.ends
        )

    def precede(self, place: int, follower: str | int, began: datetime, index: int) -> None:
        """Have the entry added at ``place`` (fact ``index`` of the answer), said before
        ``follower`` began at ``began``, be the value ``follower`` replaced: it keeps its
        start and ends at ``began``, as a backdated fact would (see :class:`Timeline`)."""
        self.steps.append(("replace", place))
        self.replaces[place] = follower
        self.ends[place] = (began, True)
        self.repairs.append(
            f"fact {index} is the value before {follower}, which a change to it named"
        )

    def adopt(
        self,
        place: int,
        replaces: str | int,
        after: datetime,
        sources: list[str],
        said_at: dict[str, datetime],
        index: int,
        notes: list[str],
    ) -> None:
        """Have the entry added at ``place`` be fact ``index`` of the answer, a change
        of ``replaces`` (which began at ``after``) to it, said by ``sources``: one value
        from the earlier statement, where batches of one message each would record the
        change as a second entry of it. It keeps its start, which the caller sees is after
        ``after`` and after every statement of ``replaces`` (:meth:`said_before`): a value
        said before the one it replaces precedes it instead (:meth:`precede`)."""
        merged = f"fact {index} changed to this value, said before; merged into it"
        self.steps.append(("replace", place))
        self.replaces[place] = replaces
        self.follow(self.latest(replaces), place)
        notes = [merged, *(f"fact {index}: {n}" for n in notes)]
        self.merge(place, sources, said_at, after, notes, index)
        self.repairs.append(merged)

    def merge(
        self,
        place: int,
        sources: list[str],
        said_at: dict[str, datetime],
        after: datetime | None,
        notes: list[str],
        index: int,
    ) -> None:
        """Have the entry added at ``place`` cite ``sources`` too (fact ``index`` of the
        answer, a repeat of it, was merged), noting the merge in ``notes``: it is valid
        from when it was first stated, which is when ``sources`` said it if they were sent
        earlier (``said_at``), as it would be had the repeat come in a later batch. An
        entry that replaces another begins earlier only while it stays ``after`` the start
        of the value it replaced (``None``: it keeps its start), so a repeat cannot put it
        before that value."""
        self._cite(place, index, sources)
        self.notes[place] = [*self.notes[place], *notes]
        said = _said(sources, said_at)
        if self.replaces[place] is not None and (after is None or said <= after):
            return
        if said < self.start(place, said_at):
            self.said_by[place] = tuple(sources)


def plan_facts(
    facts: Sequence[ExtractedFact],
    allowed: frozenset[str],
    fallback: list[str],
    known: Sequence[KnownEntry],
    said_at: dict[str, datetime],
    around: Around,
) -> Plan:
    """Decide what each fact does to the valid entries of the version ``around`` was
    made for, repairing what the extractor got slightly wrong (each repair is noted)
    rather than losing the batch. The facts are decided in the order they were said
    (:func:`_in_time_order`), not the order the answer lists them in, as batches of one
    message each would decide them, but for an update to a value stated earlier in
    the batch, which joins that statement (:meth:`Plan.adopt`).

    A target that is neither a valid entry of the version nor an ended one the batch was
    shown (``known`` with an end) turns the fact into a new entry, so a confused
    extractor cannot lose facts; citations outside the batch are dropped; a fact left
    citing nothing cites the batch's user messages. A text over :data:`MAX_FACT_CHARS`
    is cut; a new fact that repeats an earlier fact of the answer, which nothing of the
    answer ended before it was said, said it again when all its own messages were sent
    after that entry began (:attr:`Plan.repeated`, as a later batch notes it), else is
    merged into it (valid from the earlier statement, yet after the value it replaced
    began); said after another fact of the answer ended that one, it is that value
    again, as is a repeat of a known entry said after such an end (unless the answer
    stated that value again already: it cites that). An update that repeats a new fact
    said before it, which nothing ended, is that fact's entry, begun at the earlier of
    the two statements said after the value it replaces began. A change naming an
    earlier fact of the answer (``target_fact``) ends what that fact added or the known
    entry it repeats (naming a statement said after it of a value the answer stated
    before it too, it names that earlier statement: :func:`_statements_named`), and one
    that repeats an entry of ``known`` not ended when it was said (``said_at`` gives the
    messages' times) is the same as it. A repeat said before
    the entry began, and an update to a value known to begin later, are placed by
    :class:`~events.timeline.Around`. A repeat said while the entry held adds only the
    messages it cited itself to :attr:`Plan.repeated` (none when it fell back on the
    batch's). A repeat said after the entry ended is that value again, after what
    replaced it (if anything did). An update naming an entry that the answer replaced
    before it was said ends the value of the chain that held then (:meth:`Plan.changed`);
    an invalidation of such an entry ends nothing, as across batches, unless the value
    that held then is that entry said again, which it ends (:meth:`Plan.taken_back`). A
    change is dated no earlier than the answer's latest statement of the value it ends
    (:meth:`Plan.dated`); one said before that value began is the older value (an
    invalidation then ends nothing). An invalidation of an entry ended before the batch
    ends nothing, unless it was said while an entry later taken back held (that entry is
    then taken back earlier) or while that entry said again held, after what replaced it
    (:meth:`Plan.taken_back`). Only a fact with no text, or none that shows (spaces,
    zero-width and blank characters), is dropped.
    """
    deciding = _Deciding(facts, allowed, fallback, known, said_at, around)
    for index in _in_time_order(facts, said_at, deciding.listed_repeats, deciding.renamed):
        fact = _read(deciding, index)
        if fact is not None:
            _decide(deciding, fact)
    return deciding.plan


class _Deciding:
    """One answer being decided into :attr:`plan`: what its facts are checked against
    (the batch's messages, their times, the entries ``around`` it) and what the facts
    decided so far leave for the next ones."""

    def __init__(
        self,
        facts: Sequence[ExtractedFact],
        allowed: frozenset[str],
        fallback: list[str],
        known: Sequence[KnownEntry],
        said_at: dict[str, datetime],
        around: Around,
    ) -> None:
        self.facts, self.allowed, self.fallback = facts, allowed, fallback
        self.said_at, self.around = said_at, around
        self.plan = Plan(known_words={k.entry_id: same_words(k.text) for k in known})
        self.shown = {same_words(k.text): k.entry_id for k in known if k.entry_id in around.valid}
        self.ended_shown = {same_words(k.text): (k, until) for k, until in around.ended.values()}
        self.new_texts: dict[str, tuple[int, int]] = {}  # text -> (entry in the plan, fact)
        self.added_by: dict[int, int] = {}  # fact -> the entry in the plan it added
        self.repeats: dict[int, str] = {}  # fact -> the known entry it was found to repeat
        self.listed_repeats = _listed_repeats(facts, around, self.shown, said_at)
        self.renamed = _statements_named(facts, said_at, self.listed_repeats)

    def adds(self, index: int, text: str) -> None:
        """Note that fact ``index`` adds the plan's next entry, in ``text``."""
        self.new_texts[same_words(text)] = (len(self.plan.added), index)
        self.added_by[index] = len(self.plan.added)


@dataclass
class _Fact:
    """One fact of the answer as it is being decided: its place in the answer, its text
    and citations as repaired (``own``: the batch's messages it cited itself), what it
    does to which entry, the repairs noted so far, when it was said and, for one found
    to be a known value said again, that value (``restates``)."""

    index: int
    text: str
    sources: list[str]
    own: tuple[str, ...]
    action: FactAction
    target: str | None
    notes: list[str]
    said: datetime = _NOT_YET
    restates: str | int | None = None

    def repaired(self) -> ExtractedFact:
        """The fact as it is recorded."""
        return ExtractedFact(self.text, tuple(self.sources), self.action, self.target)


def _read(deciding: _Deciding, index: int) -> _Fact | None:
    """Fact ``index`` of the answer with its text and citations repaired (each repair
    noted), or ``None`` when it has no text that shows (noted in the plan's repairs)."""
    fact, plan = deciding.facts[index], deciding.plan
    if fact.action not in FACT_ACTIONS:
        raise InvalidExtractionError(f"fact {fact.text!r}: unknown action {fact.action!r}")
    text = storable(fact.text).strip()
    if not text:
        plan.repairs.append(f"fact {index} had no text; it was dropped")
        return None
    if not shows_something(text):
        plan.repairs.append(
            f"fact {index} showed no text (only characters that show nothing); it was dropped"
        )
        return None
    notes: list[str] = []
    if text != fact.text.strip():
        notes.append("characters no database stores as text were dropped (NUL) or replaced")
    if len(text) > MAX_FACT_CHARS:
        notes.append(f"was {len(text)} characters long; cut to {MAX_FACT_CHARS}")
        text = _cut(text)
    sources = list(dict.fromkeys(fact.source_message_ids))
    outside = [m for m in sources if m not in deciding.allowed]
    if outside:
        sources = [m for m in sources if m in deciding.allowed]
        dropped = storable(", ".join(outside))
        notes.append(f"dropped citations outside the batch: {dropped}")
    own = tuple(sources)
    if not sources:
        sources = list(deciding.fallback)
        notes.append("cited no message of its batch; cites the batch's user messages")
    return _Fact(index, text, sources, own, fact.action, fact.target_entry_id, notes)


def _decide(deciding: _Deciding, fact: _Fact) -> None:
    """Decide what ``fact`` does, in the order of :func:`plan_facts`' rules: a change of
    an earlier fact of the answer; a target repaired; a value that had ended or not yet
    begun; a repeat of a fact of the answer; then by its action."""
    earlier = deciding.renamed.get(fact.index, deciding.facts[fact.index].target_fact)
    if earlier is not None and _names_fact(deciding, fact, earlier):
        return
    _check_target(deciding, fact)
    if _after_an_end(deciding, fact) or _before_a_start(deciding, fact):
        return
    if _repeats_answer(deciding, fact):
        return
    if fact.action == "new":
        deciding.adds(fact.index, fact.text)
        deciding.plan.add(fact.repaired(), None, fact.notes, fact.index)
    elif fact.action == "update":
        _update(deciding, fact)
    elif fact.action == "invalidate":
        _invalidate(deciding, fact)
    else:
        assert fact.target is not None
        deciding.repeats[fact.index] = fact.target
        deciding.plan.said_again(fact.target, fact.own)
        deciding.plan.repairs.extend(f"repeat of {fact.target}: {note}" for note in fact.notes)


def _names_fact(deciding: _Deciding, fact: _Fact, earlier: int) -> bool:
    """Have ``fact``, naming fact ``earlier`` of the answer (the one it names, or the
    statement it was given: :func:`_statements_named`), change what that added
    (:func:`_change_within`; then ``True``: decided), or the known entry it repeats;
    otherwise note that it cannot replace the fact the answer named."""
    index, action, target = fact.index, fact.action, fact.target
    names_back = earlier < index or index in deciding.renamed
    within = deciding.added_by.get(earlier) if names_back else None
    ends = action in ("update", "invalidate") and target is None
    if ends and within is not None:
        _change_within(deciding, fact, earlier, within)
        return True
    named = deciding.listed_repeats.get(earlier, deciding.repeats.get(earlier))
    if ends and names_back and named is not None:
        fact.target = named
        fact.notes.append(
            f"named fact {earlier} of its answer, which repeats {named}; {action}s {named}"
        )
    else:
        listed = deciding.facts[index].target_fact
        fact.notes.append(f"named fact {listed} of its answer, which it cannot replace")
    return False


def _change_within(deciding: _Deciding, fact: _Fact, earlier: int, within: int) -> None:
    """Have ``fact`` update or invalidate the entry added at ``within`` (by fact
    ``earlier``): a change to its own value merges into it; one to a value the answer
    stated before joins that statement (:meth:`Plan.adopt`) or precedes it."""
    plan, said_at, index = deciding.plan, deciding.said_at, fact.index
    action, sources, notes, text = fact.action, fact.sources, fact.notes, fact.text
    in_answer = ExtractedFact(text, tuple(sources), action)
    said = plan.dated(within, _said(sources, said_at), said_at, action)
    same = same_words(text)
    if (
        action == "update"
        and same == same_words(plan.added[within].text)
        and plan.ended_at(within, said) is None
    ):
        deciding.added_by[index] = within
        merged = f"fact {index} changed fact {earlier} to its own value; merged"
        notes = [merged, *(f"fact {index}: {n}" for n in notes)]
        after = _replaced_start(plan, within, deciding.around, said_at)
        plan.merge(within, sources, said_at, after, notes, index)
        plan.repairs.append(merged)
        return
    stated = deciding.new_texts.get(same) if action == "update" else None
    if stated is not None and plan.adoptable(stated[0], within):
        began = plan.start(within, said_at)
        first_said = plan.start(stated[0], said_at)
        if began < first_said and plan.said_before(within, first_said, said_at):
            deciding.added_by[index] = stated[0]
            plan.adopt(stated[0], within, began, sources, said_at, index, notes)
            plan.ended_by(within, plan.start(stated[0], said_at), action, said_at)
            return
        if first_said < began and plan.said_before(stated[0], began, said_at):
            plan.precede(stated[0], within, began, stated[1])
    ending = plan.taken_back(within, said, deciding.around) if action == "invalidate" else within
    plan.changed(ending, said, action, said_at)
    if action == "update":
        deciding.adds(index, text)
        within_began = plan.start(within, said_at)
        older_than = within_began if said < within_began else None
        plan.add(in_answer, within, notes, index, said, older_than)
    elif said < plan.start(within, said_at):
        plan.repairs.append(f"invalidation of fact {earlier}, said before it began: ends nothing")
    else:
        plan.end_within(ending, in_answer, said)
        plan.repairs.extend(f"invalidation of fact {earlier}: {n}" for n in notes)


def _check_target(deciding: _Deciding, fact: _Fact) -> None:
    """Repair ``fact``'s target: a new fact's target is ignored, a change of an entry
    that is neither valid nor an ended one shown is new, and a new fact in the words of
    a valid entry, or of an ended one it was said before the end of (or after what
    replaced it), is the same as it. Date it (:attr:`_Fact.said`) as :meth:`Plan.dated`
    says."""
    plan, around, notes, index = deciding.plan, deciding.around, fact.notes, fact.index
    if fact.action == "new" and fact.target is not None:
        notes.append(f"was new with a target ({storable(fact.target)}); the target was ignored")
    elif (
        fact.action != "new" and fact.target not in around.valid and fact.target not in around.ended
    ):
        notes.append(
            f"was {fact.action!r} of {storable(fact.target or 'no entry')}, not a current entry; "
            "recorded as new"
        )
        fact.action = "new"
    fact.said = _said(fact.sources, deciding.said_at)
    target = fact.target
    if fact.action in ("update", "invalidate") and target in around.valid:
        assert target is not None
        began = plan.began(target, around)
        fact.said = plan.dated(target, fact.said, deciding.said_at, fact.action, began)
    same = same_words(fact.text)
    if fact.action == "new" and deciding.shown.get(same) in around.valid:
        fact.target, fact.action = deciding.shown[same], "same"
        plan.repairs.append(f"fact {index} was new but repeats {fact.target}; the same as it")
    elif (
        fact.action == "new"
        and (match := deciding.ended_shown.get(same))
        and (
            fact.said < match[1]
            or match[0].entry_id in around.succeeded
            or plan.ended_at(match[0].entry_id, fact.said) is not None
        )
    ):
        fact.target, fact.action = match[0].entry_id, "same"
        plan.repairs.append(f"fact {index} was new but repeats {fact.target}; the same as it")


def _after_an_end(deciding: _Deciding, fact: _Fact) -> bool:
    """Have ``fact``, naming an entry ended by an earlier fact of the answer or before
    the batch, do what it does then (:func:`_against_ended`): a repeat said after the end
    is that value again; an invalidation of an ended entry ends nothing (then ``True``:
    decided) unless it takes back an entry earlier or that value said again."""
    plan, around, said, notes = deciding.plan, deciding.around, fact.said, fact.notes
    target = fact.target
    if fact.action == "same" and target and (end := plan.ended_at(target, said)):
        live = deciding.new_texts.get(same_words(fact.text))
        if live is not None and plan.ended_at(live[0], said) is None:
            notes.append(f"repeats {target}, ended when it was said, as fact {live[1]} did")
            fact.action, fact.target = "new", None
        else:
            fact.action = _against_ended(target, end[0], fact.action, said, notes, end[1])
            fact.target = None if fact.action == "new" else target
            fact.restates = fact.target
            if fact.action == "update" and fact.target is not None:
                plan.ended_by(plan.latest(fact.target), said, fact.action, deciding.said_at)
    target = fact.target
    if target in around.ended:
        assert target is not None
        if fact.action == "same":
            fact.restates = target
        replaced = target in around.succeeded
        ended_at = around.ended[target][1]
        fact.action = _against_ended(target, ended_at, fact.action, said, notes, replaced)
        if fact.action == "new":
            fact.target = None
        elif (
            fact.action == "invalidate"
            and not around.taken_back_after(target, said)
            and plan.taken_back(target, said, around) == target
        ):
            plan.repairs.append(f"invalidation of {target}, which had ended: ends nothing")
            return True
    return False


def _before_a_start(deciding: _Deciding, fact: _Fact) -> bool:
    """Place ``fact``, a repeat or an update of a known entry said before it began, as
    :class:`~events.timeline.Around` says: an entry said again earlier begins then (or
    keeps its start when another ended entry held between), an update may state a known
    entry before it began, ending then the entry it updates, so that a repeat of that
    one said later is that value again (each then ``True``: decided); a repeat said
    before the value it replaced began is an update."""
    plan, around, said, notes = deciding.plan, deciding.around, fact.said, fact.notes
    target = fact.target
    if fact.action == "same" and target is not None and around.began_later(target, said):
        placing = around.repeat_before(target, said)
        if placing == "older":
            notes.append(f"repeats {target}, said before the value it replaced began")
            fact.action = "update"
        else:
            if placing == "earlier":
                plan.begin_earlier(target, said, fact.sources)
            else:
                notes.append(f"said before {target} began, while another ended entry held")
            deciding.repeats[fact.index] = target
            plan.repairs.extend(f"repeat of {target}: {note}" for note in notes)
            return True
    if (
        fact.action == "update"
        and (joined := around.joined(target, fact.text, said)) is not None
        and not ((end := plan.ended_at(target, said)) is not None and end[1])
    ):
        assert target is not None
        plan.begin_earlier(joined[0], said, fact.sources, replacing=joined[1])
        if target not in plan.followed:
            plan.follow(target, joined[0])
        plan.ended_by(target, said, fact.action, deciding.said_at)
        plan.repairs.extend(f"update of {target}: {note}" for note in notes)
        return True
    return False


def _repeats_answer(deciding: _Deciding, fact: _Fact) -> bool:
    """Have ``fact``, new in the words of an earlier fact of the answer, say that again
    (its messages sent once that entry began), merge into it, or, said after a change
    of the answer replaced it, be that value again (each ``True``: decided); said after
    the answer took it back, it stays new."""
    plan, said_at, index, notes = deciding.plan, deciding.said_at, fact.index, fact.notes
    again = deciding.new_texts.get(same_words(fact.text)) if fact.action == "new" else None
    if again is None:
        return False
    if (end := plan.ended_at(again[0], fact.said)) is not None:
        notes.append(f"repeats fact {again[1]}, which had ended when it was said")
        if not end[1]:
            return False
        fact.action, fact.target = "update", None
        notes[-1] += ": that value again, after what replaced it"
        plan.ended_by(plan.latest(again[0]), fact.said, fact.action, said_at)
        deciding.adds(index, fact.text)
        plan.again[len(plan.added)] = again[0]
        plan.add(ExtractedFact(fact.text, tuple(fact.sources), "update"), again[0], notes, index)
        return True
    added, first = again
    deciding.added_by[index] = added
    if plan.begun_before(added, fact.own, said_at):
        plan.said_again(added, fact.own)
        plan.repairs.extend(f"repeat of fact {first}: {note}" for note in notes)
        return True
    merged = f"fact {index} repeated fact {first}; merged into it"
    after = _replaced_start(plan, added, deciding.around, said_at)
    notes = [merged, *(f"fact {index}: {n}" for n in notes)]
    plan.merge(added, fact.sources, said_at, after, notes, index)
    plan.repairs.append(merged)
    return True


def _update(deciding: _Deciding, fact: _Fact) -> None:
    """Add ``fact``'s entry replacing its target: joining a statement of the same value
    earlier in the answer said after the target began (:meth:`Plan.adopt`), or before
    that statement the target follows (:meth:`Plan.precede`); said before the target
    began (as the answer moved its start: :meth:`Plan.began`), it is the older value."""
    plan, said_at, around, index = deciding.plan, deciding.said_at, deciding.around, fact.index
    target, said = fact.target, fact.said
    assert target is not None
    known_from = plan.began(target, around)
    stated = deciding.new_texts.get(same_words(fact.text))
    if (
        stated is not None
        and plan.adoptable(stated[0], target)
        and target in around.valid
        and known_from is not None
        and known_from < said
    ):
        first_said = plan.start(stated[0], said_at)
        if known_from < first_said and plan.said_before(target, first_said, said_at):
            deciding.added_by[index] = stated[0]
            plan.adopt(stated[0], target, known_from, fact.sources, said_at, index, fact.notes)
            plan.ended_by(target, first_said, fact.action, said_at)
            return
        if first_said < known_from and plan.said_before(stated[0], known_from, said_at):
            plan.precede(stated[0], target, known_from, stated[1])
    target_began = plan.began(target, around)
    older = target_began is not None and said < target_began
    if not older:
        plan.changed(target, said, fact.action, said_at)
    deciding.adds(index, fact.text)
    if fact.restates is not None:
        plan.again[len(plan.added)] = fact.restates
    repaired = fact.repaired()
    plan.add(repaired, target, fact.notes, index, said, target_began if older else None)


def _invalidate(deciding: _Deciding, fact: _Fact) -> None:
    """End ``fact``'s target when it was said, or what :meth:`Plan.taken_back` says it
    takes back; said before the target began, it ends nothing."""
    plan, target, said = deciding.plan, fact.target, fact.said
    assert target is not None
    if plan.begins_after(target, said, deciding.around):
        plan.repairs.append(f"invalidation of {target}, said before it began: ends nothing")
        return
    ending = plan.taken_back(target, said, deciding.around)
    plan.changed(ending, said, fact.action, deciding.said_at)
    plan.end_within(ending, fact.repaired(), said)
    plan.repairs.extend(f"invalidation of {target}: {note}" for note in fact.notes)


def _listed_repeats(
    facts: Sequence[ExtractedFact],
    around: Around,
    shown: dict[str, str],
    said_at: dict[str, datetime],
) -> dict[int, str]:
    """The facts of the answer that repeat a known entry (listed as the same as it, or
    new with its words, ``shown``, as is a repeat of an entry not known), each with that
    entry: a change naming such a fact (``target_fact``) names that entry, as batches of
    one message each would have it, and is placed by its own time, so a repeat said after
    it is that value again. An entry that had ended (``around``) counts only when every
    change naming its repeat was said while it held."""
    valid, ended = around.valid, around.ended
    ended_words = {same_words(k.text): k.entry_id for k, _ in ended.values()}
    own = _said_order(facts, said_at)
    changes_said: dict[int, list[datetime]] = {}  # fact -> when the changes naming it were said
    for change, named in enumerate(facts):
        earlier = named.target_fact
        if (
            earlier is not None
            and 0 <= earlier < change
            and named.action in ("update", "invalidate")
            and named.target_entry_id is None
        ):
            changes_said.setdefault(earlier, []).append(own[change][0])
    repeated: dict[int, str] = {}
    for index, fact in enumerate(facts):
        text = storable(fact.text).strip()
        if not shows_something(text):
            continue
        words = same_words(_cut(text))
        if fact.action == "same" and (
            fact.target_entry_id in valid or fact.target_entry_id in ended
        ):
            entry = fact.target_entry_id
        elif fact.action in ("new", "same"):
            entry = shown.get(words, ended_words.get(words))
        else:
            continue
        if entry is None:
            continue
        if entry in valid:
            repeated[index] = entry
        elif entry in ended:
            changes = changes_said.get(index)
            if changes and max(changes) < ended[entry][1]:
                repeated[index] = entry
    return repeated


def _cut(text: str) -> str:
    """``text`` cut to :data:`MAX_FACT_CHARS`, an ellipsis marking the cut."""
    if len(text) <= MAX_FACT_CHARS:
        return text
    return text[: MAX_FACT_CHARS - 1].rstrip() + "\u2026"


def _said_order(
    facts: Sequence[ExtractedFact], said_at: dict[str, datetime]
) -> list[tuple[datetime, int]]:
    """For each of ``facts``, when its newest cited message was sent and that message's
    place in the batch (the batch's last message when it cites none of known time): the
    key that orders facts as they were said."""
    said = {m: (at, place) for place, (m, at) in enumerate(said_at.items())}
    unknown = max(said.values(), default=(datetime.min.replace(tzinfo=UTC), 0))
    return [
        max((said[m] for m in fact.source_message_ids if m in said), default=unknown)
        for fact in facts
    ]


def _statements_named(
    facts: Sequence[ExtractedFact], said_at: dict[str, datetime], repeats: Collection[int]
) -> dict[int, int]:
    """The changes of the answer naming a statement of a value that is not the latest
    said before them, each with that latest statement: the value the change ended when
    it was said, as batches of one message each have it, whichever statement the answer
    named. So a move on day 2 naming Oslo said on day 3 names Oslo of day 1, and one on
    day 4 naming Oslo of day 1, taken back on day 2, names Oslo said again on day 3.
    Statements are facts listed new, the same as an entry or as a change to the value
    (Oslo as a move from Bergen), compared in :func:`same_words`; a change naming a
    repeat of a known entry (``repeats``) names that entry already."""
    own = _said_order(facts, said_at)
    order = [(own[index], index) for index in range(len(facts))]
    words = [same_words(_cut(storable(fact.text).strip())) for fact in facts]
    stated = [
        fact.action in ("new", "same", "update") and shows_something(words[i])
        for i, fact in enumerate(facts)
    ]
    statements: dict[str, list[tuple[tuple[datetime, int], int]]] = {}  # words -> in order
    for said in sorted(order):
        if stated[said[1]]:
            statements.setdefault(words[said[1]], []).append(said)
    renamed: dict[int, int] = {}
    for index, fact in enumerate(facts):
        named = fact.target_fact
        if (
            fact.action not in ("update", "invalidate")
            or fact.target_entry_id is not None
            or named is None
            or not 0 <= named < index
            or named in repeats
            or not stated[named]
        ):
            continue
        in_order = statements[words[named]]
        said_before = bisect_left(in_order, order[index])
        latest = next(
            (
                i
                for _, i in reversed(in_order[:said_before])
                if _waits_for_none_after(facts, i, index)
            ),
            named,
        )
        if latest != named:
            renamed[index] = latest
    return renamed


def _waits_for_none_after(facts: Sequence[ExtractedFact], statement: int, change: int) -> bool:
    """Whether a change listed at ``change`` can be given ``statement`` to name: a change
    waits only for facts listed before it (:func:`_in_time_order`), so a statement listed
    after it must not wait for a fact of its own (a move said before the fact it moves
    from is decided after that fact, too late for the change)."""
    return statement < change or facts[statement].action != "update"


def _in_time_order(
    facts: Sequence[ExtractedFact],
    said_at: dict[str, datetime],
    repeats: Collection[int] = (),
    renamed: dict[int, int] | None = None,
) -> list[int]:
    """The places of ``facts`` in the order they were said (``said_at``, in the batch's
    order: messages sent at once in the order they were written), a change never before
    the earlier fact of the answer it names, and in the answer's order when they cite the
    same message: the order batches of one message each would fold them in, whatever
    order the answer lists its facts in. A change said before the fact it names waits for
    it, then takes its turn by its own time among the facts still to fold, so where the
    answer lists it decides nothing; one naming a repeat of a known entry (``repeats``)
    names that entry and waits for nothing, and one given another statement of the value
    it names (``renamed``, see :func:`_statements_named`) names that one."""
    own = _said_order(facts, said_at)
    renamed = renamed or {}
    waiting: dict[int, list[int]] = {}  # fact -> the later facts of the answer naming it
    for index, fact in enumerate(facts):
        earlier = renamed.get(index, fact.target_fact)
        if earlier is not None and 0 <= earlier < index and earlier not in repeats:
            waiting.setdefault(earlier, []).append(index)
    named = {index for changes in waiting.values() for index in changes}
    ready = [(own[index], index) for index in range(len(facts)) if index not in named]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        for change in waiting.get(index, ()):
            heapq.heappush(ready, (own[change], change))
    return order


def _said(sources: Sequence[str], said_at: dict[str, datetime]) -> datetime:
    """When the newest of ``sources`` was sent (now, if the times are not known)."""
    times = [said_at[m] for m in sources if m in said_at]
    return max(times) if times else datetime.now(UTC)


def _against_ended(
    entry_id: str,
    until: datetime,
    action: FactAction,
    said: datetime,
    notes: list[str],
    replaced: bool,
) -> FactAction:
    """What a fact said at ``said`` that repeats or changes ``entry_id`` (ended at
    ``until``, before the batch or by an earlier fact of it) does. A repeat said after
    the entry ended is that value again (noted in ``notes``): an update, placed after
    what ``replaced`` the entry, or a new entry when nothing did."""
    if action != "same" or said < until:
        return action
    notes.append(f"repeats {entry_id}, which had ended when it was said: that value again")
    return "update" if replaced else "new"


def _replaced_start(
    plan: Plan, place: int, around: Around, said_at: dict[str, datetime]
) -> datetime | None:
    """When the value that the entry added at ``place`` replaces began (for a known one
    that had ended, when it ended: the new entry follows what came after it); ``None``
    when it replaces nothing, or a known entry whose start is not known."""
    replaced = plan.replaces[place]
    if replaced is None:
        return None
    if isinstance(replaced, int):
        return plan.start(replaced, said_at)
    if replaced in around.ended:
        return around.ended[replaced][1]
    return around.began.get(replaced)


def same_words(text: str) -> str:
    """``text`` as facts are compared for repeats: case-folded, spacing collapsed."""
    return " ".join(text.casefold().split())
