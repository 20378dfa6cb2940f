"""The folds: how each event changes the projection rows, as ordered SQL operations.

One function per projection (buffer, tasks, knowledge, messages, users). Each maps a recorded
event to the statements it implies; the projector runs them in log order and batches
consecutive runs of the same statement. Nothing here reads a clock or a random value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
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
    "knowledge_fold",
    "messages_fold",
    "tasks_fold",
    "users_fold",
]

Statement = Insert | Update | Delete
Op = tuple[Statement, dict[str, Any]]
Fold = Callable[["Statements", Recorded], Iterator[Op]]


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
        k = t.tasks
        self.task_insert = k.insert()
        self.task_started = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(
                status="RUNNING",
                message_ids=bindparam("b_message_ids"),
                started_at=bindparam("b_at"),
            )
        )
        self.task_completed = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(
                status="COMPLETED",
                knowledge_count=bindparam("b_count"),
                finished_at=bindparam("b_at"),
                finished_version=bindparam("b_version"),
                extractor=bindparam("b_extractor"),
                model=bindparam("b_model"),
                input_tokens=bindparam("b_input_tokens"),
                output_tokens=bindparam("b_output_tokens"),
            )
        )
        self.task_failed = (
            k.update()
            .where(k.c.task_id == bindparam("b_task_id"))
            .values(
                status="FAILED",
                error=bindparam("b_error"),
                finished_at=bindparam("b_at"),
                finished_version=bindparam("b_version"),
            )
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
        self.user_completed = (
            u.update()
            .where(where_user)
            .values(
                **touched,
                buffered_count=u.c.buffered_count - bindparam("b_covered"),
                knowledge_count=u.c.knowledge_count + bindparam("b_count"),
                tasks_completed=u.c.tasks_completed + 1,
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


def buffer_fold(s: Statements, r: Recorded) -> Iterator[Op]:
    """Messages not yet covered by knowledge, with the task (if any) that holds them."""
    e = r.event
    if isinstance(e, UserLog.MessageAdded):
        yield (
            s.buffer_insert,
            {
                "message_id": e.message_id,
                "log_id": str(e.originator_id),
                "seq": e.seq,
                "version": e.originator_version,
                "role": e.role,
                "content": e.content,
                "sent_at": e.sent_at,
                "task_id": None,
            },
        )
    elif isinstance(e, UserLog.ProcessingStarted):
        for message_id in e.message_ids:
            yield s.buffer_claim, {"b_message_id": message_id, "b_task_id": e.task_id}
    elif isinstance(e, UserLog.KnowledgeExtracted):
        yield s.buffer_covered, {"b_task_id": e.task_id}
    elif isinstance(e, UserLog.ProcessingFailed | UserLog.ProcessingInterrupted):
        yield s.buffer_release, {"b_task_id": e.task_id}


def tasks_fold(s: Statements, r: Recorded) -> Iterator[Op]:
    """Every processing task: PENDING, RUNNING, then COMPLETED or FAILED."""
    e = r.event
    if isinstance(e, UserLog.ProcessingRequested):
        yield (
            s.task_insert,
            {
                "task_id": e.task_id,
                "log_id": str(e.originator_id),
                "trigger": e.trigger,
                "status": "PENDING",
                "message_ids": [],
                "knowledge_count": 0,
                "error": None,
                "requested_at": e.timestamp,
                "started_at": None,
                "finished_at": None,
                "requested_version": e.originator_version,
                "finished_version": None,
                "extractor": None,
                "model": None,
                "input_tokens": None,
                "output_tokens": None,
            },
        )
    elif isinstance(e, UserLog.ProcessingStarted):
        yield (
            s.task_started,
            {
                "b_task_id": e.task_id,
                "b_message_ids": list(e.message_ids),
                "b_at": e.timestamp,
            },
        )
    elif isinstance(e, UserLog.KnowledgeExtracted):
        yield (
            s.task_completed,
            {
                "b_task_id": e.task_id,
                "b_count": len(e.entries),
                "b_at": e.timestamp,
                "b_version": e.originator_version,
                "b_extractor": e.extractor,
                "b_model": e.model,
                "b_input_tokens": e.input_tokens,
                "b_output_tokens": e.output_tokens,
            },
        )
    elif isinstance(e, UserLog.ProcessingFailed):
        yield s.task_failed, _failed(e.task_id, e.error, r)
    elif isinstance(e, UserLog.ProcessingInterrupted):
        yield s.task_failed, _failed(e.task_id, e.reason, r)


def _failed(task_id: str, error: str, r: Recorded) -> dict[str, Any]:
    return {
        "b_task_id": task_id,
        "b_error": error,
        "b_at": _timestamp(r),
        "b_version": r.event.originator_version,
    }


def _timestamp(r: Recorded) -> Any:
    return getattr(r.event, "timestamp")  # noqa: B009 - every aggregate event has one


def knowledge_fold(s: Statements, r: Recorded) -> Iterator[Op]:
    """Knowledge entries, each with its task (or version) and the messages it came from."""
    e = r.event
    if isinstance(e, UserLog.KnowledgeExtracted | UserLog.KnowledgeReextracted):
        if isinstance(e, UserLog.KnowledgeExtracted):
            task_id, knowledge_version = e.task_id, LIVE_KNOWLEDGE
        else:
            task_id, knowledge_version = "", e.knowledge_version
        for ordinal, entry in enumerate(e.entries):
            yield (
                s.knowledge_insert,
                {
                    "ordinal": ordinal,
                    "entry_id": entry["entry_id"],
                    "log_id": str(e.originator_id),
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
    elif isinstance(e, UserLog.KnowledgeSuperseded):
        yield s.knowledge_ended, _ended(e.entry_id, e.valid_until, e.superseded_by, None, r)
    elif isinstance(e, UserLog.KnowledgeInvalidated):
        yield s.knowledge_ended, _ended(e.entry_id, e.valid_until, None, e.reason, r)
    elif isinstance(e, UserLog.KnowledgeVersionPromoted):
        log_id = str(e.originator_id)
        yield s.knowledge_drop_live, {"b_log_id": log_id}
        yield s.knowledge_promote, {"b_log_id": log_id, "b_version_name": e.knowledge_version}


def _valid_from(entry: dict[str, Any], extracted_at: datetime) -> datetime:
    """When an entry became valid; entries recorded before the lifecycle use their extraction."""
    said = entry.get("valid_from")
    return extracted_at if said is None else datetime.fromisoformat(said)


def _ended(
    entry_id: str, until: datetime, by: str | None, reason: str | None, r: Recorded
) -> dict[str, Any]:
    return {
        "b_entry_id": entry_id,
        "b_until": until,
        "b_by": by,
        "b_reason": reason,
        "b_version": r.event.originator_version,
    }


def messages_fold(s: Statements, r: Recorded) -> Iterator[Op]:
    """Every message ever added, covered or not: for recall, provenance and neighbours."""
    e = r.event
    if isinstance(e, UserLog.MessageAdded):
        yield (
            s.message_insert,
            {
                "message_id": e.message_id,
                "log_id": str(e.originator_id),
                "seq": e.seq,
                "version": e.originator_version,
                "role": e.role,
                "content": e.content,
                "sent_at": e.sent_at,
            },
        )


def users_fold(s: Statements, r: Recorded) -> Iterator[Op]:
    """One summary row per user: version and counters, for listings and recovery."""
    e = r.event
    log_id = str(e.originator_id)
    touched = {"b_log_id": log_id, "b_version": e.originator_version, "b_at": _timestamp(r)}
    if isinstance(e, UserLog.Registered):
        yield (
            s.user_insert,
            {
                "log_id": log_id,
                "user_id": e.user_id,
                "version": e.originator_version,
                "message_count": 0,
                "buffered_count": 0,
                "knowledge_count": 0,
                "tasks_completed": 0,
                "tasks_failed": 0,
                "created_at": e.timestamp,
                "updated_at": e.timestamp,
            },
        )
    elif isinstance(e, UserLog.MessageAdded):
        yield s.user_message, {**touched, "b_seq": e.seq}
    elif isinstance(e, UserLog.KnowledgeExtracted):
        yield (
            s.user_completed,
            {
                **touched,
                "b_count": len(e.entries),
                "b_covered": len(e.message_ids),
            },
        )
    elif isinstance(e, UserLog.ProcessingFailed | UserLog.ProcessingInterrupted):
        yield s.user_failed, touched
    elif isinstance(e, UserLog.KnowledgeVersionPromoted):
        yield s.user_promoted, {**touched, "b_count": e.knowledge_count}
    elif isinstance(e, UserLog.KnowledgeSuperseded | UserLog.KnowledgeInvalidated):
        live = 1 if e.knowledge_version == LIVE_KNOWLEDGE else 0
        yield s.user_entry_ended, {**touched, "b_live": live}
    else:
        yield s.user_touched, touched
