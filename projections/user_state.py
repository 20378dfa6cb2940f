"""A user's buffer, tasks and knowledge folded in memory: what :func:`state_at` replays.

The same projections as the SQL folds (:mod:`projections.folds`), evolved in plain
dicts, for one user at a time: replaying a long history to a point needs no database
round trips. The replay tests compare it, at every version, with the SQL folds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from events import UserLog
from events.user_log import LIVE_KNOWLEDGE
from projections.models import BufferedMessage, KnowledgeEntry, TaskRecord

__all__ = ["UserStateFold"]


class UserStateFold:
    """Folds one user's events, in log order, into the rows a :class:`UserState` holds."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.buffer: dict[str, BufferedMessage] = {}
        self.held: dict[str, str] = {}
        self.quarantined: set[str] = set()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.knowledge: dict[str, tuple[str, tuple[int, int], KnowledgeEntry]] = {}

    def evolve(self, e: Any) -> None:
        """Apply one event (events that change none of these rows are skipped)."""
        handler = _HANDLERS.get(type(e))
        if handler is None:
            handler = next((h for c, h in _HANDLERS.items() if isinstance(e, c)), _skip)
            _HANDLERS[type(e)] = handler
        handler(self, e)

    def _message_added(self, e: Any) -> None:
        self.buffer[e.message_id] = BufferedMessage(
            e.message_id, self.user_id, e.seq, e.role, e.content, _utc(e.sent_at), None, e.name
        )

    def _requested(self, e: Any) -> None:
        self.tasks[e.task_id] = {
            "task_id": e.task_id,
            "user_id": self.user_id,
            "trigger": e.trigger,
            "status": "PENDING",
            "message_count": 0,
            "batches": 0,
            "knowledge_count": 0,
            "error": None,
            "requested_at": e.timestamp,
            "started_at": None,
            "finished_at": None,
        }

    def _started(self, e: Any) -> None:
        self._claim(e.message_ids, e.task_id)
        if e.batch > 1:
            self._task(e.task_id, batches=e.batch)
        else:
            self._task(e.task_id, status="RUNNING", batches=1, started_at=e.timestamp)

    def _extracted(self, e: Any) -> None:
        for message_id in [k for k, task in self.held.items() if task == e.task_id]:
            del self.held[message_id]
            self.buffer.pop(message_id, None)
        self._progress(e, len(e.entries))
        self._add_entries(e, e.task_id, LIVE_KNOWLEDGE)

    def _quarantined(self, e: Any) -> None:
        self._release(e.task_id)
        self.quarantined.update(e.message_ids)
        self._progress(e, 0)

    def _requeued(self, e: Any) -> None:
        self.quarantined.difference_update(e.message_ids)

    def _progress(self, e: Any, knowledge: int) -> None:
        """A batch of the task ended, covering or quarantining its messages."""
        task = self.tasks.get(e.task_id)
        if task is None:
            return
        task["knowledge_count"] += knowledge
        task["message_count"] += len(e.message_ids)
        if e.final:
            task.update(status="COMPLETED", finished_at=e.timestamp)

    def _reextracted(self, e: Any) -> None:
        self._add_entries(e, "", e.knowledge_version)

    def _superseded(self, e: Any) -> None:
        self._end(e.entry_id, valid_until=e.valid_until, superseded_by=e.superseded_by)

    def _invalidated(self, e: Any) -> None:
        self._end(e.entry_id, valid_until=e.valid_until, ended_reason=e.reason)

    def _promoted(self, e: Any) -> None:
        self.knowledge = {
            key: (LIVE_KNOWLEDGE if version == e.knowledge_version else version, at, entry)
            for key, (version, at, entry) in self.knowledge.items()
            if version != LIVE_KNOWLEDGE
        }

    def _failed(self, e: Any) -> None:
        self._release(e.task_id)
        error = e.error if isinstance(e, UserLog.ProcessingFailed) else e.reason
        self._task(e.task_id, status="FAILED", error=error, finished_at=e.timestamp)

    def _batch_failed(self, e: Any) -> None:
        self._release(e.task_id)

    def current_buffer(self) -> list[BufferedMessage]:
        """The buffered messages in log order, each with the task holding it, if any
        (quarantined ones are not buffered)."""
        quarantined = self.quarantined
        messages = sorted(
            (m for m in self.buffer.values() if m.message_id not in quarantined),
            key=lambda m: m.seq,
        )
        return [
            m if m.message_id not in self.held else replace(m, task_id=self.held[m.message_id])
            for m in messages
        ]

    def current_tasks(self) -> list[TaskRecord]:
        """The tasks in the order they were requested."""
        return [TaskRecord(**task) for task in self.tasks.values()]

    def current_knowledge(self) -> list[KnowledgeEntry]:
        """The live entries still valid, in the order they were recorded."""
        live = [
            (at, entry)
            for version, at, entry in self.knowledge.values()
            if version == LIVE_KNOWLEDGE and entry.valid_until is None
        ]
        return [entry for _, entry in sorted(live, key=lambda pair: pair[0])]

    def _claim(self, message_ids: list[str], task_id: str) -> None:
        for message_id in message_ids:
            if message_id in self.buffer:
                self.held[message_id] = task_id

    def _release(self, task_id: str) -> None:
        for message_id in [k for k, task in self.held.items() if task == task_id]:
            del self.held[message_id]

    def _task(self, task_id: str, **changes: Any) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.update(changes)

    def _add_entries(self, e: Any, task_id: str, version: str) -> None:
        for ordinal, entry in enumerate(e.entries):
            said = entry.get("valid_from")
            self.knowledge[entry["entry_id"]] = (
                version,
                (e.originator_version, ordinal),
                KnowledgeEntry(
                    entry_id=entry["entry_id"],
                    user_id=self.user_id,
                    text=entry["text"],
                    task_id=task_id,
                    source_message_ids=tuple(entry["source_message_ids"]),
                    extracted_at=e.timestamp,
                    extractor=e.extractor,
                    model=e.model,
                    valid_from=e.timestamp if said is None else _utc(datetime.fromisoformat(said)),
                ),
            )

    def _end(self, entry_id: str, **changes: Any) -> None:
        found = self.knowledge.get(entry_id)
        if found is not None:
            version, at, entry = found
            if "valid_until" in changes:
                changes["valid_until"] = _utc(changes["valid_until"])
            self.knowledge[entry_id] = (version, at, replace(entry, **changes))


def _skip(fold: UserStateFold, e: Any) -> None:
    """Events that change none of a UserState's rows."""


_HANDLERS: dict[type, Callable[[UserStateFold, Any], None]] = {
    UserLog.MessageAdded: UserStateFold._message_added,
    UserLog.ProcessingRequested: UserStateFold._requested,
    UserLog.ProcessingStarted: UserStateFold._started,
    UserLog.KnowledgeExtracted: UserStateFold._extracted,
    UserLog.KnowledgeReextracted: UserStateFold._reextracted,
    UserLog.KnowledgeSuperseded: UserStateFold._superseded,
    UserLog.KnowledgeInvalidated: UserStateFold._invalidated,
    UserLog.KnowledgeVersionPromoted: UserStateFold._promoted,
    UserLog.BatchFailed: UserStateFold._batch_failed,
    UserLog.MessagesQuarantined: UserStateFold._quarantined,
    UserLog.MessagesRequeued: UserStateFold._requeued,
    UserLog.ProcessingFailed: UserStateFold._failed,
    UserLog.ProcessingInterrupted: UserStateFold._failed,
}
"""Each event class's evolve step (subclasses resolve as ``isinstance`` would)."""


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
