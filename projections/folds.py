"""The folds: how each event changes the projection rows, as ordered SQL operations.

One function per projection (buffer, tasks, knowledge, messages, users). Each maps a recorded
event to the statements it implies; the projector runs them in log order and batches
consecutive runs of the same statement. Nothing here reads a clock or a random value.
A fold runs for every event of a rebuild, so each finds its handler by the event's class
in one lookup and returns a tuple (no generator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.sql.dml import Delete, Insert, Update

from events import Recorded, UserLog
from events.user_log import LIVE_KNOWLEDGE
from projections.tables import ProjectionTables

__all__ = [
    "Fold",
    "Op",
    "Statements",
    "buffer_fold",
    "citations_fold",
    "knowledge_fold",
    "messages_fold",
    "quarantine_fold",
    "tasks_fold",
    "usage_fold",
    "users_fold",
]

Statement = Insert | Update | Delete
Op = tuple[Statement, dict[str, Any]]
Fold = Callable[["Statements", Recorded], Sequence[Op]]
Handler = Callable[["Statements", Any], tuple[Op, ...]]

_NONE: tuple[Op, ...] = ()
_log_id: Callable[[object], str] = lru_cache(maxsize=4096)(str)
"""A log id as text: ``str`` of the event's UUID, remembered for the logs seen lately."""


class _Handlers(dict[type, Handler | None]):
    """A fold's handlers by event class; other classes resolve as ``isinstance`` would."""

    def __init__(self, handlers: dict[type, Handler], default: Handler | None = None) -> None:
        for a in handlers:
            for b in handlers:
                if a is not b and issubclass(a, b):
                    raise TypeError(f"{a.__name__} would match two handlers")
        super().__init__(handlers)
        self._default = default

    def __missing__(self, kind: type) -> Handler | None:
        handler = next((self[k] for k in kind.__mro__[1:] if dict.__contains__(self, k)), None)
        self[kind] = handler = handler or self._default
        return handler


class Statements:
    """Prepared statements over one set of tables, shared so consecutive ops can batch."""

    def __init__(self, tables: ProjectionTables) -> None:
        t = self.tables = tables
        b = t.buffer
        self.buffer_insert = b.insert()
        self.buffer_claim = (
            b.update()
            .where(b.c.message_id == bindparam("b_message_id"))
            .values(task_id=bindparam("b_task_id"))
        )
        self.buffer_covered = b.delete().where(b.c.task_id == bindparam("b_task_id"))
        self.buffer_release = (
            b.update().where(b.c.task_id == bindparam("b_task_id")).values(task_id=None)
        )
        self.buffer_quarantined = (
            b.update()
            .where(b.c.message_id == bindparam("b_message_id"))
            .values(task_id=None, quarantined=1)
        )
        self.buffer_requeued = (
            b.update().where(b.c.message_id == bindparam("b_message_id")).values(quarantined=0)
        )
        q = t.quarantine
        self.quarantine_insert = q.insert()
        self.quarantine_delete = q.delete().where(q.c.message_id == bindparam("b_message_id"))
        self.usage_insert = t.usage.insert()
        k = t.tasks
        self.task_insert = k.insert()
        self.task_started = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(status="RUNNING", batches=1, started_at=bindparam("b_at"))
        )
        self.task_next_batch = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(batches=bindparam("b_batch"))
        )
        progressed: dict[str, Any] = {
            "knowledge_count": k.c.knowledge_count + bindparam("b_count"),
            "message_count": k.c.message_count + bindparam("b_covered"),
        }
        finished: dict[str, Any] = {
            "finished_at": bindparam("b_at"),
            "finished_version": bindparam("b_version"),
        }
        extracted_by: dict[str, Any] = {
            "extractor": bindparam("b_extractor"),
            "model": bindparam("b_model"),
        }
        self.task_progressed = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(**progressed, **extracted_by)
        )
        self.task_completed = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(status="COMPLETED", **progressed, **extracted_by, **finished)
        )
        self.task_quarantined = (
            k.update().where(k.c.task_id == bindparam("b_task_id")).values(**progressed)
        )
        self.task_quarantined_last = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(status="COMPLETED", **progressed, **finished)
        )
        self.task_failed = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(status="FAILED", error=bindparam("b_error"), **finished)
        )
        self.knowledge_insert = t.knowledge.insert()
        kn = t.knowledge
        self.knowledge_drop_live = kn.delete().where(
            kn.c.log_id == bindparam("b_log_id"), kn.c.knowledge_version == LIVE_KNOWLEDGE
        )
        self.knowledge_ended = (
            kn.update()
            .where(kn.c.entry_id == bindparam("b_entry_id"))
            .values(
                valid_until=bindparam("b_until"),
                superseded_by=bindparam("b_by"),
                ended_reason=bindparam("b_reason"),
                ended_version=bindparam("b_version"),
            )
        )
        self.message_insert = t.messages.insert()
        self.citation_insert = t.citations.insert()
        self.knowledge_promote = (
            kn.update()
            .where(
                kn.c.log_id == bindparam("b_log_id"),
                kn.c.knowledge_version == bindparam("b_version_name"),
            )
            .values(knowledge_version=LIVE_KNOWLEDGE)
        )
        u = t.users
        self.user_insert = u.insert()
        where_user = u.c.log_id == bindparam("b_log_id")
        touched: dict[str, Any] = {
            "version": bindparam("b_version"),
            "updated_at": bindparam("b_at"),
        }
        self.user_message = (
            u.update()
            .where(where_user)
            .values(
                **touched,
                message_count=bindparam("b_seq"),
                buffered_count=u.c.buffered_count + 1,
            )
        )
        self.user_touched = u.update().where(where_user).values(**touched)
        self.user_promoted = (
            u.update().where(where_user).values(**touched, knowledge_count=bindparam("b_count"))
        )
        self.user_extracted = (
            u.update()
            .where(where_user)
            .values(
                **touched,
                buffered_count=u.c.buffered_count - bindparam("b_covered"),
                knowledge_count=u.c.knowledge_count + bindparam("b_count"),
                tasks_completed=u.c.tasks_completed + bindparam("b_final"),
            )
        )
        self.user_quarantined = (
            u.update()
            .where(where_user)
            .values(
                **touched,
                buffered_count=u.c.buffered_count - bindparam("b_moved"),
                quarantined_count=u.c.quarantined_count + bindparam("b_moved"),
                tasks_completed=u.c.tasks_completed + bindparam("b_final"),
            )
        )
        self.user_requeued = (
            u.update()
            .where(where_user)
            .values(
                **touched,
                buffered_count=u.c.buffered_count + bindparam("b_moved"),
                quarantined_count=u.c.quarantined_count - bindparam("b_moved"),
            )
        )
        self.user_entry_ended = (
            u.update()
            .where(where_user)
            .values(**touched, knowledge_count=u.c.knowledge_count - bindparam("b_live"))
        )
        self.user_failed = (
            u.update().where(where_user).values(**touched, tasks_failed=u.c.tasks_failed + 1)
        )


def buffer_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Messages not yet covered by knowledge, with the task (if any) that holds them."""
    handler = _BUFFER[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _buffer_message(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.buffer_insert, {**_message_values(e), "task_id": None, "quarantined": 0}),)


def _utc(moment: datetime) -> datetime:
    """Times are stored in UTC: SQLite keeps no offset, and reads assume UTC."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment


def _message_values(e: Any) -> dict[str, Any]:
    """The columns a message row has in both the buffer and the message projection."""
    return {
        "message_id": e.message_id,
        "log_id": _log_id(e.originator_id),
        "seq": e.seq,
        "version": e.originator_version,
        "role": e.role,
        "content": e.content,
        "sent_at": _utc(e.sent_at),
        "name": e.name,
    }


def _buffer_claim(s: Statements, e: Any) -> tuple[Op, ...]:
    claim, task_id = s.buffer_claim, e.task_id
    return tuple((claim, {"b_message_id": m, "b_task_id": task_id}) for m in e.message_ids)


def _buffer_covered(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.buffer_covered, {"b_task_id": e.task_id}),)


def _buffer_release(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.buffer_release, {"b_task_id": e.task_id}),)


def _buffer_quarantined(s: Statements, e: Any) -> tuple[Op, ...]:
    return tuple((s.buffer_quarantined, {"b_message_id": m}) for m in e.message_ids)


def _buffer_requeued(s: Statements, e: Any) -> tuple[Op, ...]:
    return tuple((s.buffer_requeued, {"b_message_id": m}) for m in e.message_ids)


_BUFFER = _Handlers(
    {
        UserLog.MessageAdded: _buffer_message,
        UserLog.ProcessingStarted: _buffer_claim,
        UserLog.KnowledgeExtracted: _buffer_covered,
        UserLog.BatchFailed: _buffer_release,
        UserLog.ProcessingFailed: _buffer_release,
        UserLog.ProcessingInterrupted: _buffer_release,
        UserLog.MessagesQuarantined: _buffer_quarantined,
        UserLog.MessagesRequeued: _buffer_requeued,
    }
)


def quarantine_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Messages that kept failing, with the last error, until they are requeued."""
    handler = _QUARANTINE[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _quarantined(s: Statements, e: Any) -> tuple[Op, ...]:
    log_id = _log_id(e.originator_id)
    return tuple(
        (
            s.quarantine_insert,
            {
                "message_id": m,
                "log_id": log_id,
                "task_id": e.task_id,
                "error": e.error,
                "attempts": e.attempts,
                "quarantined_at": e.timestamp,
                "version": e.originator_version,
            },
        )
        for m in e.message_ids
    )


def _requeued(s: Statements, e: Any) -> tuple[Op, ...]:
    return tuple((s.quarantine_delete, {"b_message_id": m}) for m in e.message_ids)


_QUARANTINE = _Handlers(
    {UserLog.MessagesQuarantined: _quarantined, UserLog.MessagesRequeued: _requeued}
)


def tasks_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Every processing task: PENDING, RUNNING, then COMPLETED or FAILED."""
    handler = _TASKS[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _task_requested(s: Statements, e: Any) -> tuple[Op, ...]:
    return (
        (
            s.task_insert,
            {
                "task_id": e.task_id,
                "log_id": _log_id(e.originator_id),
                "trigger": e.trigger,
                "status": "PENDING",
                "message_count": 0,
                "batches": 0,
                "knowledge_count": 0,
                "error": None,
                "requested_at": e.timestamp,
                "started_at": None,
                "finished_at": None,
                "requested_version": e.originator_version,
                "finished_version": None,
                "extractor": None,
                "model": None,
            },
        ),
    )


def _task_started(s: Statements, e: Any) -> tuple[Op, ...]:
    if e.batch > 1:
        return ((s.task_next_batch, {"b_task_id": e.task_id, "b_batch": e.batch}),)
    return ((s.task_started, {"b_task_id": e.task_id, "b_at": e.timestamp}),)


def _task_extracted(s: Statements, e: Any) -> tuple[Op, ...]:
    values = {
        "b_task_id": e.task_id,
        "b_count": len(e.entries),
        "b_covered": len(e.message_ids),
        "b_extractor": e.extractor,
        "b_model": e.model,
    }
    if not e.final:
        return ((s.task_progressed, values),)
    return ((s.task_completed, {**values, **_finished(e)}),)


def _task_quarantined(s: Statements, e: Any) -> tuple[Op, ...]:
    values = {"b_task_id": e.task_id, "b_count": 0, "b_covered": len(e.message_ids)}
    if not e.final:
        return ((s.task_quarantined, values),)
    return ((s.task_quarantined_last, {**values, **_finished(e)}),)


def _task_failed(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.task_failed, {"b_task_id": e.task_id, "b_error": e.error, **_finished(e)}),)


def _task_interrupted(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.task_failed, {"b_task_id": e.task_id, "b_error": e.reason, **_finished(e)}),)


def _finished(e: Any) -> dict[str, Any]:
    return {"b_at": e.timestamp, "b_version": e.originator_version}


_TASKS = _Handlers(
    {
        UserLog.ProcessingRequested: _task_requested,
        UserLog.ProcessingStarted: _task_started,
        UserLog.KnowledgeExtracted: _task_extracted,
        UserLog.MessagesQuarantined: _task_quarantined,
        UserLog.ProcessingFailed: _task_failed,
        UserLog.ProcessingInterrupted: _task_interrupted,
    }
)


def usage_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """The tokens every extraction spent (batches extracted, failed, quarantined, and
    re-extracted), one row per event that spent any: what ``memvee stats`` sums."""
    kind = _SPENDING.get(type(r.event))
    return _NONE if kind is None else _spent(s, r.event, kind)


def _spent(s: Statements, e: Any, kind: str) -> tuple[Op, ...]:
    tokens = {
        "input_tokens": e.input_tokens or 0,
        "output_tokens": e.output_tokens or 0,
        "cache_read_tokens": getattr(e, "cache_read_tokens", None) or 0,
        "cache_write_tokens": getattr(e, "cache_write_tokens", None) or 0,
    }
    if not any(tokens.values()):
        return _NONE
    log_id = _log_id(e.originator_id)
    return (
        (
            s.usage_insert,
            {
                "usage_id": f"{log_id}:{e.originator_version}",
                "log_id": log_id,
                "kind": kind,
                "extractor": getattr(e, "extractor", None),
                "model": getattr(e, "model", None),
                **tokens,
                "recorded_at": e.timestamp,
            },
        ),
    )


_SPENDING: dict[type, str] = {
    UserLog.KnowledgeExtracted: "extracted",
    UserLog.KnowledgeReextracted: "reextracted",
    UserLog.BatchFailed: "failed",
    UserLog.MessagesQuarantined: "quarantined",
}
"""The events that may have spent tokens, with the kind of spending each records."""


def knowledge_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Knowledge entries, each with its task (or version) and the messages it came from."""
    handler = _KNOWLEDGE[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _knowledge_extracted(s: Statements, e: Any) -> tuple[Op, ...]:
    return _entries(s, e, e.task_id, LIVE_KNOWLEDGE)


def _knowledge_reextracted(s: Statements, e: Any) -> tuple[Op, ...]:
    return _entries(s, e, "", e.knowledge_version)


def _entries(s: Statements, e: Any, task_id: str, knowledge_version: str) -> tuple[Op, ...]:
    log_id = _log_id(e.originator_id)
    return tuple(
        (
            s.knowledge_insert,
            {
                "ordinal": ordinal,
                "entry_id": entry["entry_id"],
                "log_id": log_id,
                "text": entry["text"],
                "task_id": task_id,
                "knowledge_version": knowledge_version,
                "source_message_ids": list(entry["source_message_ids"]),
                "extracted_at": e.timestamp,
                "version": e.originator_version,
                "extractor": e.extractor,
                "model": e.model,
                "valid_from": _valid_from(entry, e.timestamp),
                "valid_until": None,
                "superseded_by": None,
                "ended_reason": None,
                "ended_version": None,
            },
        )
        for ordinal, entry in enumerate(e.entries)
    )


def _valid_from(entry: dict[str, Any], extracted_at: datetime) -> datetime:
    """When an entry became valid; entries recorded before the lifecycle use their extraction."""
    said = entry.get("valid_from")
    return extracted_at if said is None else _utc(datetime.fromisoformat(said))


def _knowledge_superseded(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.knowledge_ended, _ended(e.entry_id, _utc(e.valid_until), e.superseded_by, None, e)),)


def _knowledge_invalidated(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.knowledge_ended, _ended(e.entry_id, _utc(e.valid_until), None, e.reason, e)),)


def _ended(
    entry_id: str, until: datetime, by: str | None, reason: str | None, e: Any
) -> dict[str, Any]:
    return {
        "b_entry_id": entry_id,
        "b_until": until,
        "b_by": by,
        "b_reason": reason,
        "b_version": e.originator_version,
    }


def _knowledge_promoted(s: Statements, e: Any) -> tuple[Op, ...]:
    log_id = _log_id(e.originator_id)
    return (
        (s.knowledge_drop_live, {"b_log_id": log_id}),
        (s.knowledge_promote, {"b_log_id": log_id, "b_version_name": e.knowledge_version}),
    )


_KNOWLEDGE = _Handlers(
    {
        UserLog.KnowledgeExtracted: _knowledge_extracted,
        UserLog.KnowledgeReextracted: _knowledge_reextracted,
        UserLog.KnowledgeSuperseded: _knowledge_superseded,
        UserLog.KnowledgeInvalidated: _knowledge_invalidated,
        UserLog.KnowledgeVersionPromoted: _knowledge_promoted,
    }
)


def citations_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Which entries each message was cited by: provenance read from the message's side."""
    handler = _CITATIONS[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _cited(s: Statements, e: Any) -> tuple[Op, ...]:
    log_id = _log_id(e.originator_id)
    return tuple(
        (s.citation_insert, {"message_id": m, "entry_id": entry["entry_id"], "log_id": log_id})
        for entry in e.entries
        for m in entry["source_message_ids"]
    )


_CITATIONS = _Handlers({UserLog.KnowledgeExtracted: _cited, UserLog.KnowledgeReextracted: _cited})


def messages_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """Every message ever added, covered or not: for recall, provenance and neighbours."""
    handler = _MESSAGES[type(r.event)]
    return _NONE if handler is None else handler(s, r.event)


def _message_added(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.message_insert, _message_values(e)),)


_MESSAGES = _Handlers({UserLog.MessageAdded: _message_added})


def users_fold(s: Statements, r: Recorded) -> Sequence[Op]:
    """One summary row per user: version and counters, for listings and recovery."""
    handler = _USERS[type(r.event)]
    assert handler is not None  # every event touches its user
    return handler(s, r.event)


def _user_registered(s: Statements, e: Any) -> tuple[Op, ...]:
    return (
        (
            s.user_insert,
            {
                "log_id": _log_id(e.originator_id),
                "user_id": e.user_id,
                "version": e.originator_version,
                "message_count": 0,
                "buffered_count": 0,
                "quarantined_count": 0,
                "knowledge_count": 0,
                "tasks_completed": 0,
                "tasks_failed": 0,
                "created_at": e.timestamp,
                "updated_at": e.timestamp,
            },
        ),
    )


def _user_message(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.user_message, {**_touched(e), "b_seq": e.seq}),)


def _user_extracted(s: Statements, e: Any) -> tuple[Op, ...]:
    values = {"b_count": len(e.entries), "b_covered": len(e.message_ids), "b_final": int(e.final)}
    return ((s.user_extracted, {**_touched(e), **values}),)


def _user_quarantined(s: Statements, e: Any) -> tuple[Op, ...]:
    values = {"b_moved": len(e.message_ids), "b_final": int(e.final)}
    return ((s.user_quarantined, {**_touched(e), **values}),)


def _user_requeued(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.user_requeued, {**_touched(e), "b_moved": len(e.message_ids)}),)


def _user_failed(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.user_failed, _touched(e)),)


def _user_promoted(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.user_promoted, {**_touched(e), "b_count": e.knowledge_count}),)


def _user_entry_ended(s: Statements, e: Any) -> tuple[Op, ...]:
    live = 1 if e.knowledge_version == LIVE_KNOWLEDGE else 0
    return ((s.user_entry_ended, {**_touched(e), "b_live": live}),)


def _user_touched(s: Statements, e: Any) -> tuple[Op, ...]:
    return ((s.user_touched, _touched(e)),)


def _touched(e: Any) -> dict[str, Any]:
    return {
        "b_log_id": _log_id(e.originator_id),
        "b_version": e.originator_version,
        "b_at": e.timestamp,  # every aggregate event has one
    }


_USERS = _Handlers(
    {
        UserLog.Registered: _user_registered,
        UserLog.MessageAdded: _user_message,
        UserLog.KnowledgeExtracted: _user_extracted,
        UserLog.MessagesQuarantined: _user_quarantined,
        UserLog.MessagesRequeued: _user_requeued,
        UserLog.ProcessingFailed: _user_failed,
        UserLog.ProcessingInterrupted: _user_failed,
        UserLog.KnowledgeVersionPromoted: _user_promoted,
        UserLog.KnowledgeSuperseded: _user_entry_ended,
        UserLog.KnowledgeInvalidated: _user_entry_ended,
    },
    default=_user_touched,
)
