"""Drive a user's log through named operations, the way the engine would: add, process in
bounded batches, extract, revise, repeat, backdate, fail in ways that repeat or pass, quarantine,
requeue, crash, re-extract (or fail to) and promote. Used by the tests that need logs of
every kind of event."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from events import (
    Answered,
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    FactAction,
    KnownEntry,
    Outage,
    ReplacedEntry,
    TokenUsage,
    UserLog,
)
from tests.support.garbage_answers import entries_of, garbage_answer, garbage_times

__all__ = ["EVERY_OPERATION", "LIMITS", "LogDriver"]

LIMITS = BatchLimits(max_messages=3, max_tokens=10_000, max_attempts=2)
"""Small batches and few attempts, so that tasks run several batches, split and quarantine."""

EVERY_OPERATION = (
    *("add", "add", "add", "start", "extract", "revise", "fail", "crash"),
    *("reextract", "reextract_failed", "promote", "reject", "reject", "blamed", "requeue"),
    *("backdate", "reextract_checked"),
    *("repeat_earlier", "take_back_earlier", "repeat"),
)
"""The operations :meth:`LogDriver.perform` knows (repeated ones are drawn more often)."""


def _revising(log: UserLog, facts: list[ExtractedFact]) -> list[ExtractedFact]:
    """``facts`` with the first updating a live entry and one more ending another."""
    live = [e for e, v in log.valid_entries.items() if v == "live"]
    if not facts or not live:
        return facts
    first = facts[0]
    revised = [ExtractedFact(first.text, first.source_message_ids, "update", live[0])]
    if len(live) > 1:
        revised.append(
            ExtractedFact("no longer true", first.source_message_ids, "invalidate", live[-1])
        )
    return revised + facts[1:]


class LogDriver:
    """One user's log and what the operations on it have added so far."""

    def __init__(self, user_id: str) -> None:
        self.log = UserLog.register(user_id)
        self.history: list[Any] = [*self.log.pending_events]
        self.messages: list[str] = []
        self.tasks = 0
        self.answers: random.Random | None = None
        """Draws the answers of the ``garbage`` operation (which does nothing without it)."""

    def perform(self, op: str) -> None:
        """Apply one operation; one that does not apply now (no open task) does nothing.
        Its events stay to be collected, and are noted in :attr:`history`."""
        before = len(self.log.pending_events)
        self._perform(op)
        self.history += self.log.pending_events[before:]

    def _perform(self, op: str) -> None:
        log = self.log
        if op == "add":
            self.messages.append(
                log.add_message("user", f"message {len(self.messages)}", None, 1000)
            )
        elif op == "start":
            self.tasks += 1
            log.request_processing(f"t{self.tasks}", "manual")
            log.start_next(LIMITS)
        elif op == "take_back_earlier" and log.open_tasks:
            self._take_back_earlier(next(iter(log.open_tasks)))
        elif op == "repeat" and log.open_tasks:
            self._repeat(next(iter(log.open_tasks)))
        elif op in ("backdate", "repeat_earlier") and log.open_tasks:
            self._backdate(next(iter(log.open_tasks)), "update" if op == "backdate" else "same")
        elif op in ("extract", "revise", "fail", "reject", "blamed") and log.open_tasks:
            task = next(iter(log.open_tasks))
            if op in ("extract", "revise"):
                facts = [ExtractedFact(f"fact {m}", (m,)) for m in log.open_tasks[task]]
                if op == "revise":
                    facts = _revising(log, facts)
                log.record_knowledge(task, facts, "property", limits=LIMITS)
            else:
                log.record_failure(
                    task,
                    f"failed on purpose ({op})",
                    repeats=op == "reject",
                    blamed=op == "blamed",
                    limits=LIMITS,
                )
        elif op == "garbage" and log.open_tasks and self.answers is not None:
            self._answer_garbage(next(iter(log.open_tasks)), self.answers)
        elif op == "requeue":
            log.requeue()
        elif op == "crash":
            log.close_interrupted("interrupted: crash")
        elif op == "reextract":
            covered = self._covered()
            if covered:
                facts = [ExtractedFact(f"again {m}", (m,)) for m in covered]
                log.record_reextraction(f"v{log.version}", covered, facts, "property")
        elif op == "reextract_failed":
            covered = self._covered()
            if covered:
                spent = TokenUsage(input_tokens=40, output_tokens=4)
                repeats = len(covered) == 1  # a message failing alone; a batch may pass
                log.record_reextraction_failure(
                    f"v{log.version}", covered, "cut short", spent, repeats=repeats
                )
        elif op == "reextract_checked":
            covered = self._covered()
            if covered:
                version = f"v{log.version}"
                log.record_reextraction_failure(
                    version, covered, "HTTP 500", TokenUsage(), may_pass=True
                )
                spent = TokenUsage(input_tokens=20, output_tokens=1)
                verdict = Outage() if len(covered) > 1 else Answered()
                log.record_reextraction_check(version, [covered], spent, verdict)
        elif op == "promote" and log.knowledge_versions:
            log.promote(next(iter(log.knowledge_versions)), self.history)

    def _repeat(self, task: str) -> None:
        """Record the task's batch as saying the newest live entry again while it holds,
        its first message citing it so and a second fact citing nothing (which notes no
        message). Nothing happens if no entry is live."""
        live = [e for e, v in self.log.valid_entries.items() if v == "live"]
        if live:
            first = next(iter(self.log.open_tasks[task]))
            facts = [
                ExtractedFact("said again", (first,), "same", live[-1]),
                ExtractedFact("said again, citing nothing", (), "same", live[0]),
            ]
            self.log.record_knowledge(task, facts, "property", limits=LIMITS)

    def _backdate(self, task: str, action: FactAction) -> None:
        """Record the task's batch as said between a live entry and the one it replaced,
        updating (or repeating) the live one: the engine's import of older history (it
        ends the older entry earlier; a repeat makes the live one begin earlier too).
        Nothing happens if no live entry replaced another."""
        began: dict[str, datetime] = {}
        ended: dict[str, tuple[str, datetime]] = {}
        for e in self.history:
            if isinstance(e, UserLog.KnowledgeExtracted | UserLog.KnowledgeReextracted):
                began.update(
                    (x["entry_id"], datetime.fromisoformat(x["valid_from"])) for x in e.entries
                )
            elif isinstance(e, UserLog.KnowledgeSuperseded | UserLog.KnowledgeEndMoved):
                ended[e.entry_id] = (e.superseded_by, e.valid_until)
            elif isinstance(e, UserLog.KnowledgeBeganEarlier):
                began[e.entry_id] = e.valid_from
        live = [e for e, v in self.log.valid_entries.items() if v == "live"]
        chains = {
            entry: [
                ReplacedEntry(before, began[before], until, after)
                for before, (after, until) in ended.items()
                if after == entry
            ]
            for entry in live
        }
        current = next((e for e in live if chains[e]), None)
        if current is None:
            return
        replaced = chains[current]
        prior = max(r.valid_from for r in replaced)
        if not prior < began[current]:
            return
        said = prior + (began[current] - prior) / 2
        batch = list(self.log.open_tasks[task])
        self.log.record_knowledge(
            task,
            [ExtractedFact(f"before {current}", tuple(batch), action, current)],
            "property",
            batch=[BatchMessage(m, "user", "", said) for m in batch],
            limits=LIMITS,
            known=[KnownEntry(current, "", began[current])],
            replaced=replaced,
        )

    def _answer_garbage(self, task: str, answers: random.Random) -> None:
        """Record the task's batch with an answer drawn from ``answers`` (see
        :func:`garbage_answer`), shown the live entries."""
        batch = list(self.log.open_tasks[task])
        live = self.log.valid_entries
        shown = [k for k in entries_of(self.history).values() if live.get(k.entry_id) == "live"]
        self.log.record_knowledge(
            task,
            garbage_answer(answers, batch, shown),
            "property",
            batch=garbage_times(answers, batch),
            limits=LIMITS,
            known=shown,
        )

    def _take_back_earlier(self, task: str) -> None:
        """Record the task's batch as said while an entry that was taken back later held,
        taking it back then (a backdated retraction). Nothing happens if no entry of the
        live knowledge was taken back after it began."""
        began: dict[str, datetime] = {}
        taken_back: dict[str, datetime] = {}
        for e in self.history:
            if isinstance(e, UserLog.KnowledgeExtracted):
                began.update(
                    (x["entry_id"], datetime.fromisoformat(x["valid_from"])) for x in e.entries
                )
            elif isinstance(e, UserLog.KnowledgeInvalidated | UserLog.KnowledgeInvalidatedEarlier):
                taken_back[e.entry_id] = e.valid_until
            elif isinstance(e, UserLog.KnowledgeVersionPromoted):
                began.clear()
        held = [
            (e, began[e], until) for e, until in taken_back.items() if began.get(e, until) < until
        ]
        if not held:
            return
        entry, start, until = held[0]
        said = start + (until - start) / 2
        batch = list(self.log.open_tasks[task])
        self.log.record_knowledge(
            task,
            [ExtractedFact("taken back earlier", tuple(batch), "invalidate", entry)],
            "property",
            batch=[BatchMessage(m, "user", "", said) for m in batch],
            limits=LIMITS,
            known=[KnownEntry(entry, "", start, until)],
        )

    def _covered(self) -> list[str]:
        """The messages that are neither buffered nor held by a task."""
        held = set(self.log.pending) | {m for t in self.log.open_tasks.values() for m in t}
        return [m for m in self.messages if m not in held]
