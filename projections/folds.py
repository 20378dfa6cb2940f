"""The projections: how each event changes the rows of each read model, in plain Python.

One definition per projection (quarantine, tasks, usage, knowledge, citations, messages
with the buffer, users), used by every path that folds the log: the live fold inside each append,
rebuilds and catch-ups page by page, and :func:`~projections.replay.state_at` in memory.
Each projection has two small functions over one event:

- ``touches``: the stored rows it may change (by primary key, or by an indexed column),
  which are loaded before the events of a commit or page are folded;
- ``evolve``: the change itself, on the rows held in a :class:`TableRows`;
- optionally ``adds``: the key of the row an event puts without looking it up (its
  ``touches`` name none), so that a later event of the same commit or page that touches
  that row finds it folded already and needs no stored row read for it;
- optionally ``current``: whether a row the live fold committed is still the stored one
  when the next event of its key comes, so the live path may remember it instead of
  reading it back (see :mod:`projections.remembered`), with ``began``, the column that
  tells when the row's log began.

Each also names the kinds of event it folds (``folds``): the others change none of its
rows, so every path skips them (a commit of messages alone never runs the knowledge fold).

Each fold tells events apart by their exact class (``match type(e)``), as
:meth:`Projection.of` picks them: no event class derives from another, and ``isinstance``
against eventsourcing's event classes costs about 0.4 µs each time it fails (a class
pattern in a ``match`` more), where most checks of a fold fail.

Nothing here reads a clock, a random value or the database; SQL is only the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events import EVENT_CLASSES, UserLog
from events.user_log import LIVE_KNOWLEDGE
from projections.rows import Row, TableRows

__all__ = ["ENTRY_EVENTS", "EVERY_EVENT", "PROJECTIONS", "Lookup", "Projection", "utc"]

Lookup = tuple[str, Any]
"""Stored rows a fold needs: those whose column (the key or an indexed one) has a value."""

NOTHING: tuple[Lookup, ...] = ()

_log_id_texts: dict[int, str] = {}
"""Log ids as text (``str`` of the event's UUID), by the UUID's number, for the logs seen
lately: a UUID's own ``__hash__`` is Python code, an ``int``'s is not."""
_LOG_ID_TEXTS_MAX = 4096
_last_log_id: list[tuple[object, str]] = [(None, "")]
"""The latest log id and its text: consecutive events mostly share one UUID object."""


EVERY_EVENT: frozenset[type] = frozenset(EVENT_CLASSES)
"""What a projection that every event changes folds."""


@dataclass(frozen=True, slots=True)
class Projection:
    """One read model: its table (by role), key, indexes and fold."""

    table: str
    key: tuple[str, ...]
    folds: frozenset[type]
    touches: Callable[[Any], Sequence[Lookup]]
    evolve: Callable[[TableRows, Any], None]
    indexed: tuple[str, ...] = ()
    adds: Callable[[Any], Any] | None = None
    current: Callable[[Row, Any], bool] | None = None
    began: str | None = None

    def new_rows(self) -> TableRows:
        """An empty in-memory set of this projection's rows."""
        return TableRows(self.key, self.indexed)

    def of(self, events: Sequence[Any], kinds: frozenset[type] | None = None) -> Sequence[Any]:
        """The events of ``events`` this projection folds, in order. ``kinds``, the types
        of ``events`` if the caller knows them, spares a look at each event when this
        projection folds none of them (a commit of messages, for most projections)."""
        if self.folds is EVERY_EVENT:
            return events
        folds = self.folds
        if kinds is not None and folds.isdisjoint(kinds):
            return []
        return [e for e in events if type(e) in folds]


def _log_id(e: Any) -> str:
    uuid = e.originator_id
    last, text = _last_log_id[0]
    if uuid is not last:
        number = uuid.int
        found = _log_id_texts.get(number)
        if found is None:
            if len(_log_id_texts) >= _LOG_ID_TEXTS_MAX:
                _log_id_texts.clear()
            found = _log_id_texts[number] = str(uuid)
        text = found
        _last_log_id[0] = (uuid, text)
    return text


def utc(moment: datetime) -> datetime:
    """Times are stored in UTC: SQLite keeps no offset, and reads assume UTC."""
    if moment.tzinfo is UTC or moment.tzinfo is None:  # a decoded event's times are UTC
        return moment
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------- quarantine


def quarantine_touches(e: Any) -> Sequence[Lookup]:
    """Quarantined messages that a requeue takes out."""
    if type(e) is UserLog.MessagesRequeued:
        return [("message_id", m) for m in e.message_ids]
    return NOTHING


def evolve_quarantine(rows: TableRows, e: Any) -> None:
    """Messages that kept failing, with the last error, until they are requeued."""
    match type(e):
        case UserLog.MessagesQuarantined:
            for message_id in e.message_ids:
                rows.put(
                    {
                        "message_id": message_id,
                        "log_id": _log_id(e),
                        "task_id": e.task_id,
                        "error": e.error,
                        "attempts": e.attempts,
                        "quarantined_at": e.timestamp,
                        "version": e.originator_version,
                    }
                )
        case UserLog.MessagesRequeued:
            for message_id in e.message_ids:
                rows.delete(message_id)


# ---------------------------------------------------------------------- tasks


def tasks_touches(e: Any) -> Sequence[Lookup]:
    """The task an event of its life changes."""
    match type(e):
        case (
            UserLog.ProcessingStarted
            | UserLog.KnowledgeExtracted
            | UserLog.MessagesQuarantined
            | UserLog.ProcessingFailed
            | UserLog.ProcessingInterrupted
        ):
            return [("task_id", e.task_id)]
    return NOTHING


def task_requested(e: Any) -> str | None:
    """The task a :class:`UserLog.ProcessingRequested` puts (``None`` for any other event)."""
    return e.task_id if type(e) is UserLog.ProcessingRequested else None


def evolve_tasks(rows: TableRows, e: Any) -> None:
    """Every processing task: PENDING, RUNNING, then COMPLETED or FAILED."""
    match type(e):
        case UserLog.ProcessingRequested:
            rows.put(
                {
                    "task_id": e.task_id,
                    "log_id": _log_id(e),
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
                }
            )
        case UserLog.ProcessingStarted if e.batch > 1:
            rows.update(e.task_id, batches=e.batch)
        case UserLog.ProcessingStarted if rows.get(e.task_id) is None:
            rows.put(_started_unrequested(e))
        case UserLog.ProcessingStarted:
            rows.update(e.task_id, status="RUNNING", batches=1, started_at=e.timestamp)
        case UserLog.KnowledgeExtracted:
            _batch_ended(rows, e, len(e.entries), extractor=e.extractor, model=e.model)
        case UserLog.MessagesQuarantined:
            _batch_ended(rows, e, 0)
        case UserLog.ProcessingFailed:
            rows.update(e.task_id, status="FAILED", error=e.error, **_finished(e))
        case UserLog.ProcessingInterrupted:
            rows.update(e.task_id, status="FAILED", error=e.reason, **_finished(e))


def _started_unrequested(e: Any) -> dict[str, Any]:
    """The row of a task the first memvees started without a request in the log (they
    logged none): requested as it started."""
    return {
        "task_id": e.task_id,
        "log_id": _log_id(e),
        "trigger": e.trigger,
        "status": "RUNNING",
        "message_count": 0,
        "batches": 1,
        "knowledge_count": 0,
        "error": None,
        "requested_at": e.timestamp,
        "started_at": e.timestamp,
        "finished_at": None,
        "requested_version": e.originator_version,
        "finished_version": None,
        "extractor": None,
        "model": None,
    }


def _batch_ended(rows: TableRows, e: Any, knowledge: int, **changes: Any) -> None:
    """A batch of the task covered (or quarantined) its messages; the last one ends it."""
    task = rows.get(e.task_id)
    if task is None:
        return
    if e.final:
        changes.update(status="COMPLETED", **_finished(e))
    rows.update(
        e.task_id,
        knowledge_count=task["knowledge_count"] + knowledge,
        message_count=task["message_count"] + len(e.message_ids),
        **changes,
    )


def _finished(e: Any) -> dict[str, Any]:
    return {"finished_at": e.timestamp, "finished_version": e.originator_version}


# ---------------------------------------------------------------------- usage

_SPENDING: dict[type, str] = {
    UserLog.KnowledgeExtracted: "extracted",
    UserLog.KnowledgeReextracted: "reextracted",
    UserLog.ReextractionFailed: "reextract failed",
    UserLog.ReextractionChecked: "reextract failed",
    UserLog.BatchFailed: "failed",
    UserLog.ProcessingFailed: "failed",
    UserLog.MessagesQuarantined: "quarantined",
}
"""The events that may have spent tokens, with the kind of spending each records."""


def evolve_usage(rows: TableRows, e: Any) -> None:
    """The tokens every extraction spent, one row per event that spent any: what
    ``memvee stats`` sums."""
    kind = _SPENDING.get(type(e))
    if kind is None:
        return
    tokens = {
        "input_tokens": e.input_tokens or 0,
        "output_tokens": e.output_tokens or 0,
        "cache_read_tokens": getattr(e, "cache_read_tokens", None) or 0,
        "cache_write_tokens": getattr(e, "cache_write_tokens", None) or 0,
    }
    if any(tokens.values()):
        rows.put(
            {
                "usage_id": f"{_log_id(e)}:{e.originator_version}",
                "log_id": _log_id(e),
                "kind": kind,
                "extractor": getattr(e, "extractor", None),
                "model": getattr(e, "model", None),
                **tokens,
                "recorded_at": e.timestamp,
            }
        )


# ---------------------------------------------------------------------- knowledge


def knowledge_touches(e: Any) -> Sequence[Lookup]:
    """The entry an event ends or moves; every entry of the user when a version is
    promoted."""
    match type(e):
        case (
            UserLog.KnowledgeSuperseded
            | UserLog.KnowledgeInvalidated
            | UserLog.KnowledgeEndMoved
            | UserLog.KnowledgeInvalidatedEarlier
            | UserLog.KnowledgeBeganEarlier
        ):
            return [("entry_id", e.entry_id)]
        case UserLog.KnowledgeVersionPromoted:
            return [("log_id", _log_id(e))]
    return NOTHING


def evolve_knowledge(rows: TableRows, e: Any) -> None:
    """Knowledge entries, each with its task (or version) and the messages it came from."""
    match type(e):
        case UserLog.KnowledgeExtracted:
            _add_entries(rows, e, e.task_id, LIVE_KNOWLEDGE)
        case UserLog.KnowledgeReextracted:
            _add_entries(rows, e, "", e.knowledge_version)
        case UserLog.KnowledgeSuperseded:
            _end_entry(rows, e, superseded_by=e.superseded_by, ended_reason=None)
        case UserLog.KnowledgeInvalidated | UserLog.KnowledgeInvalidatedEarlier:
            _end_entry(rows, e, superseded_by=None, ended_reason=e.reason)
        case UserLog.KnowledgeEndMoved:  # ended when it was: only the end moves
            rows.update(
                e.entry_id,
                valid_until=utc(e.valid_until),
                superseded_by=e.superseded_by,
                ended_reason=None,
            )
        case UserLog.KnowledgeBeganEarlier:  # said before it began: valid from then
            if (row := rows.rows.get(e.entry_id)) is not None:
                cited = [*row["source_message_ids"], *e.source_message_ids]
                rows.update(
                    e.entry_id,
                    valid_from=utc(e.valid_from),
                    source_message_ids=list(dict.fromkeys(cited)),
                )
        case UserLog.KnowledgeVersionPromoted:
            for entry_id in rows.find("log_id", _log_id(e)):
                version = rows.rows[entry_id]["knowledge_version"]
                if version == LIVE_KNOWLEDGE:
                    rows.delete(entry_id)
                elif version == e.knowledge_version:
                    rows.update(entry_id, knowledge_version=LIVE_KNOWLEDGE)


def _add_entries(rows: TableRows, e: Any, task_id: str, knowledge_version: str) -> None:
    for ordinal, entry in enumerate(e.entries):
        said = entry.get("valid_from")
        rows.put(
            {
                "entry_id": entry["entry_id"],
                "log_id": _log_id(e),
                "text": entry["text"],
                "task_id": task_id,
                "source_message_ids": list(entry["source_message_ids"]),
                "extracted_at": e.timestamp,
                "version": e.originator_version,
                "ordinal": ordinal,
                "knowledge_version": knowledge_version,
                "extractor": e.extractor,
                "model": e.model,
                "valid_from": e.timestamp if said is None else utc(datetime.fromisoformat(said)),
                "valid_until": None,
                "superseded_by": None,
                "ended_reason": None,
                "ended_version": None,
            }
        )


def _end_entry(rows: TableRows, e: Any, **why: Any) -> None:
    rows.update(
        e.entry_id, valid_until=utc(e.valid_until), ended_version=e.originator_version, **why
    )


# ---------------------------------------------------------------------- citations

ENTRY_EVENTS: tuple[type, ...] = (UserLog.KnowledgeExtracted, UserLog.KnowledgeReextracted)
"""The events that add knowledge entries: each cites the messages it came from, and the
search index indexes its entries' words."""


def evolve_citations(rows: TableRows, e: Any) -> None:
    """Which entries each message was cited by: provenance read from the message's side.

    A message that said a known entry again while it held (``repeated``, absent from an
    older memvee's events) is marked so: it is outdated with the entry, unless the entry
    ended before it was said, but it is no source of it (the knowledge rows, which decide
    what a returned entry stands for, leave it out)."""
    if type(e) in ENTRY_EVENTS:
        for entry in e.entries:
            _cite(rows, e, entry["entry_id"], entry["source_message_ids"], repeated=0)
        for entry_id, message_ids in (e.repeated or {}).items():
            _cite(rows, e, entry_id, message_ids, repeated=1)
    elif type(e) is UserLog.KnowledgeBeganEarlier:
        _cite(rows, e, e.entry_id, e.source_message_ids, repeated=0)


def _cite(rows: TableRows, e: Any, entry_id: str, message_ids: list[str], repeated: int) -> None:
    """Have ``message_ids`` cite ``entry_id``: as its sources, or as words that said it
    again (``repeated``)."""
    for message_id in message_ids:
        rows.put(
            {
                "message_id": message_id,
                "entry_id": entry_id,
                "log_id": _log_id(e),
                "repeated": repeated,
            }
        )


# ---------------------------------------------------------------------- messages


def messages_touches(e: Any) -> Sequence[Lookup]:
    """Buffered messages an event claims, moves, requeues or returns; or those its task
    holds."""
    match type(e):
        case UserLog.MessageAdded:  # most events of a log: a new row, nothing to look up
            return NOTHING
        case (
            UserLog.ProcessingStarted
            | UserLog.MessagesQuarantined
            | UserLog.MessagesRequeued
            | UserLog.MessagesReturned
        ):
            return [("message_id", m) for m in e.message_ids]
        case (
            UserLog.KnowledgeExtracted
            | UserLog.BatchFailed
            | UserLog.ProcessingFailed
            | UserLog.ProcessingInterrupted
        ):
            return [("task_id", e.task_id)]
    return NOTHING


def message_added(e: Any) -> str | None:
    """The message a :class:`UserLog.MessageAdded` puts (``None`` for any other event):
    a page of the log claims and covers mostly messages it added itself."""
    return e.message_id if type(e) is UserLog.MessageAdded else None


def evolve_messages(rows: TableRows, e: Any) -> None:
    """Every message ever added, for recall, provenance and neighbours; and the buffer:
    whether knowledge has yet to cover it, and the task (if any) that holds it."""
    match type(e):
        case UserLog.MessageAdded:
            rows.put(
                {
                    "message_id": e.message_id,
                    "log_id": _log_id(e),
                    "seq": e.seq,
                    "version": e.originator_version,
                    "role": e.role,
                    "content": e.content,
                    "sent_at": utc(e.sent_at),
                    "name": e.name,
                    "buffered": 1,
                    "task_id": None,
                    "quarantined": 0,
                }
            )
        case UserLog.ProcessingStarted:
            held = {"task_id": e.task_id}
            for message_id in e.message_ids:
                rows.change(message_id, held)
        case UserLog.KnowledgeExtracted:
            covered = {"buffered": 0, "task_id": None}
            for key in rows.find("task_id", e.task_id):
                rows.change(key, covered)
        case UserLog.BatchFailed | UserLog.ProcessingFailed | UserLog.ProcessingInterrupted:
            released = {"task_id": None}
            for key in rows.find("task_id", e.task_id):
                rows.change(key, released)
        case UserLog.MessagesQuarantined:
            for message_id in e.message_ids:
                rows.update(message_id, task_id=None, quarantined=1)
        case UserLog.MessagesRequeued:
            for message_id in e.message_ids:
                rows.update(message_id, quarantined=0)
        case UserLog.MessagesReturned:
            for message_id in e.message_ids:
                rows.update(message_id, buffered=1)


# ---------------------------------------------------------------------- users


def users_touches(e: Any) -> Sequence[Lookup]:
    """The user's summary row, which every event changes. The first creates it, so its
    lookup finds nothing; it is looked up all the same, so that no row remembered from an
    erased log of the same user passes for the stored one (see ``current``)."""
    return [("log_id", _log_id(e))]


def evolve_users(rows: TableRows, e: Any) -> None:
    """One summary row per user: version and counters, for listings and recovery."""
    log_id = _log_id(e)
    if type(e) is UserLog.Registered:
        rows.put(
            {
                "log_id": log_id,
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
            }
        )
        return
    user = rows.rows.get(log_id)
    if user is None:
        return
    match type(e):
        case UserLog.MessageAdded:  # most events: no other case is tried
            rows.change(
                log_id,
                {
                    "version": e.originator_version,
                    "updated_at": e.timestamp,
                    "message_count": e.seq,
                    "buffered_count": user["buffered_count"] + 1,
                },
            )
            return
        case UserLog.KnowledgeExtracted:
            changes: dict[str, Any] = {
                "buffered_count": user["buffered_count"] - len(e.message_ids),
                "knowledge_count": user["knowledge_count"] + len(e.entries),
                "tasks_completed": user["tasks_completed"] + int(e.final),
            }
        case UserLog.MessagesQuarantined:
            changes = {
                "buffered_count": user["buffered_count"] - len(e.message_ids),
                "quarantined_count": user["quarantined_count"] + len(e.message_ids),
                "tasks_completed": user["tasks_completed"] + int(e.final),
            }
        case UserLog.MessagesRequeued:
            changes = {
                "buffered_count": user["buffered_count"] + len(e.message_ids),
                "quarantined_count": user["quarantined_count"] - len(e.message_ids),
            }
        case UserLog.ProcessingFailed | UserLog.ProcessingInterrupted:
            changes = {"tasks_failed": user["tasks_failed"] + 1}
        case UserLog.KnowledgeVersionPromoted:
            changes = {"knowledge_count": e.knowledge_count}
        case UserLog.MessagesReturned:
            changes = {"buffered_count": user["buffered_count"] + len(e.message_ids)}
        case UserLog.KnowledgeSuperseded | UserLog.KnowledgeInvalidated:
            live = 1 if e.knowledge_version == LIVE_KNOWLEDGE else 0
            changes = {"knowledge_count": user["knowledge_count"] - live}
        case _:
            changes = {}
    changes["version"] = e.originator_version
    changes["updated_at"] = e.timestamp
    rows.change(log_id, changes)


def user_row_current(row: Row, e: Any) -> bool:
    """Every event sets its log's version on the row, and a log's versions are unique: a
    row at the version before ``e`` has folded every earlier event and nothing else."""
    return bool(row["version"] == e.originator_version - 1)


def _none(e: Any) -> Sequence[Lookup]:
    """The fold only inserts rows: it needs none stored."""
    return NOTHING


PROJECTIONS: tuple[Projection, ...] = (
    Projection(
        "quarantine",
        ("message_id",),
        frozenset({UserLog.MessagesQuarantined, UserLog.MessagesRequeued}),
        quarantine_touches,
        evolve_quarantine,
    ),
    Projection(
        "tasks",
        ("task_id",),
        frozenset(
            {
                UserLog.ProcessingRequested,
                UserLog.ProcessingStarted,
                UserLog.KnowledgeExtracted,
                UserLog.MessagesQuarantined,
                UserLog.ProcessingFailed,
                UserLog.ProcessingInterrupted,
            }
        ),
        tasks_touches,
        evolve_tasks,
        adds=task_requested,
    ),
    Projection("usage", ("usage_id",), frozenset(_SPENDING), _none, evolve_usage),
    Projection(
        "knowledge",
        ("entry_id",),
        frozenset(
            {
                UserLog.KnowledgeExtracted,
                UserLog.KnowledgeReextracted,
                UserLog.KnowledgeSuperseded,
                UserLog.KnowledgeInvalidated,
                UserLog.KnowledgeEndMoved,
                UserLog.KnowledgeInvalidatedEarlier,
                UserLog.KnowledgeBeganEarlier,
                UserLog.KnowledgeVersionPromoted,
            }
        ),
        knowledge_touches,
        evolve_knowledge,
        ("log_id",),
    ),
    Projection(
        "citations",
        ("message_id", "entry_id"),
        frozenset(
            {
                UserLog.KnowledgeExtracted,
                UserLog.KnowledgeReextracted,
                UserLog.KnowledgeBeganEarlier,
            }
        ),
        _none,
        evolve_citations,
    ),
    Projection(
        "messages",
        ("message_id",),
        frozenset(
            {
                UserLog.MessageAdded,
                UserLog.ProcessingStarted,
                UserLog.KnowledgeExtracted,
                UserLog.BatchFailed,
                UserLog.ProcessingFailed,
                UserLog.ProcessingInterrupted,
                UserLog.MessagesQuarantined,
                UserLog.MessagesRequeued,
                UserLog.MessagesReturned,
            }
        ),
        messages_touches,
        evolve_messages,
        ("task_id",),
        adds=message_added,
    ),
    Projection(
        "users",
        ("log_id",),
        EVERY_EVENT,
        users_touches,
        evolve_users,
        current=user_row_current,
        began="created_at",
    ),
)
"""Every projection folded from the log alone, in the order their tables are written."""
