"""State at a point: a user's buffer, tasks and knowledge as of a log version or a time.

Computed by folding the user's log, up to that point, in memory, with the very folds the
projection tables are built with (:mod:`projections.folds`); the live projections are
never touched. A replay may start from a checkpoint (:mod:`projections.checkpoints`): the
rows an earlier replay held, so a long log costs only the events after the nearest one.
Reading pages of the log, and dropping messages once they leave the buffer (reading one
back in the rare case a promotion returns it), keeps the memory a replay holds bounded
however long the history is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import EventStore, UserLog, user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections.checkpoints import Checkpoint, Checkpoints
from projections.collector import collector_paused
from projections.folds import PROJECTIONS, evolve_messages
from projections.models import BufferedMessage, KnowledgeEntry, TaskRecord
from projections.reader import buffered_from_row, entry_from_row, task_from_row
from projections.rows import TableRows
from projections.tables import ProjectionTables

__all__ = ["UserState", "replay_checkpoints", "state_at", "take_checkpoint"]

_PAGE = 10_000
REPLAYED = tuple(p for p in PROJECTIONS if p.table in ("messages", "tasks", "knowledge"))
"""The projections :func:`state_at` folds: those whose tables a :class:`UserState` reads."""


@dataclass(frozen=True, slots=True)
class UserState:
    """What the projections held for one user at ``version`` of their log."""

    user_id: str
    version: int
    buffer: list[BufferedMessage]
    tasks: list[TaskRecord]
    knowledge: list[KnowledgeEntry]


def replay_checkpoints(tables: ProjectionTables) -> Checkpoints:
    """The checkpoints stored beside ``tables``, holding the rows a replay folds."""
    return Checkpoints(tables, [p.table for p in REPLAYED])


def state_at(
    store: EventStore,
    user_id: str,
    *,
    version: int | None = None,
    at: datetime | None = None,
    checkpoints: Checkpoints | None = None,
) -> UserState:
    """Replay ``user_id``'s log up to ``version`` (inclusive) or time ``at`` (the events
    up to the first one stamped later); with neither, the state at the end of the log.

    With ``checkpoints``, the replay starts from the nearest one before that point.
    """
    with collector_paused():  # the models too: many objects, none in a cycle
        replay = _Replay.start(store, user_id, version, at, checkpoints)
        replay.fold_log(store, user_id, version, at)
        tables = replay.tables
        return UserState(
            user_id=user_id,
            version=replay.version,
            buffer=_buffer(user_id, tables["messages"]),
            tasks=_tasks(user_id, tables["tasks"]),
            knowledge=_knowledge(user_id, tables["knowledge"]),
        )


def take_checkpoint(
    store: EventStore,
    user_id: str,
    checkpoints: Checkpoints,
    *,
    version: int | None = None,
    min_events: int = 1,
    stop: Callable[[], bool] | None = None,
) -> int | None:
    """Fold ``user_id``'s log from its latest checkpoint up to ``version`` (the end of the
    log by default) and store the result there, if that folds ``min_events`` or more.

    Returns the version checkpointed, or ``None`` when there was not enough to fold, when
    ``stop()`` said so between pages, or when the log was forgotten meanwhile, even if
    begun again since (the check and the write share a transaction that holds off every
    writer, so no checkpoint outlives its user's erasure or mixes two logs). The engine
    calls it on a background thread, so unlike :func:`state_at` it leaves the process's
    garbage collector alone.
    """
    with store.engine.connect() as connection:  # cheap first: no checkpoint is read yet
        origin = store.origin(connection, user_id)
        kept = checkpoints.versions(connection, str(user_log_id(user_id)))
        base = max((v for v in kept if version is None or v <= version), default=0)
        target = base + min_events
        if (version is not None and version < target) or not store.holds(
            connection, user_id, target
        ):
            return None
    replay = _Replay.start(store, user_id, version, None, checkpoints)
    begun = replay.version
    if not replay.fold_log(store, user_id, version, None, stop):
        return None
    if replay.version == begun or replay.latest is None:
        return None
    checkpoint = Checkpoint(
        replay.version,
        replay.latest,
        {table: list(rows.rows.values()) for table, rows in replay.tables.items()},
    )
    with store.transaction() as connection:
        store.lock_writers(connection)
        if store.origin(connection, user_id) != origin or not store.holds(
            connection, user_id, replay.version
        ):
            return None  # forgotten meanwhile, and maybe begun again
        checkpoints.save(connection, str(user_log_id(user_id)), checkpoint)
    return replay.version


def _new_tables() -> dict[str, TableRows]:
    return {p.table: p.new_rows() for p in REPLAYED}


@dataclass(slots=True)
class _Replay:
    """A fold of one log in memory: the replayed tables' rows after ``version``, and the
    latest stamp among the events folded."""

    version: int = 0
    latest: datetime | None = None
    tables: dict[str, TableRows] = field(default_factory=_new_tables)

    @classmethod
    def start(
        cls,
        store: EventStore,
        user_id: str,
        version: int | None,
        at: datetime | None,
        checkpoints: Checkpoints | None,
    ) -> _Replay:
        """From the nearest checkpoint before the point asked for, or from nothing."""
        if checkpoints is None:
            return cls()
        with store.engine.connect() as connection:
            found = checkpoints.nearest(
                connection, str(user_log_id(user_id)), version=version, at=at
            )
        if found is None:
            return cls()
        replay = cls(found.version, found.latest)
        for table, rows in found.rows.items():
            held = replay.tables[table]
            for row in rows:
                held.put(row)
        return replay

    def fold_log(
        self,
        store: EventStore,
        user_id: str,
        version: int | None,
        at: datetime | None,
        stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Fold the log's events after this replay's version, up to ``version`` or ``at``;
        ``False`` if ``stop()`` ended it early (asked before each page)."""
        while version is None or self.version < version:
            if stop is not None and stop():
                return False
            upto = self.version + _PAGE if version is None else min(self.version + _PAGE, version)
            events = store.events_of(user_id, after=self.version, upto=upto)
            whole = len(events)
            if at is not None:
                events = _until(events, at)
            if events:
                self._restore_returned(store, user_id, events)
                self.fold(events)
            if not events or len(events) < whole:
                break
        return True

    def fold(self, events: Sequence[Any]) -> None:
        """Fold ``events`` (the next ones of the log, in order)."""
        for projection in REPLAYED:  # each fold is independent of the others
            rows = self.tables[projection.table]
            for event in projection.of(events):
                projection.evolve(rows, event)
        self.version = events[-1].originator_version
        latest = max(_timestamp(e) for e in events)
        self.latest = latest if self.latest is None else max(self.latest, latest)
        self._drop_settled()

    def _drop_settled(self) -> None:
        """Forget the messages that left the buffer: a :class:`UserState` reads them
        again only if a promotion returns them (see :meth:`_restore_returned`)."""
        messages = self.tables["messages"]
        for key in [k for k, r in messages.rows.items() if r["buffered"] == 0]:
            messages.delete(key)

    def _restore_returned(self, store: EventStore, user_id: str, events: Sequence[Any]) -> None:
        """Read back, as they stood (out of the buffer), the dropped messages that
        ``events`` return to the buffer: each event names their log versions."""
        messages = self.tables["messages"]
        for e in events:
            if type(e) is not UserLog.MessagesReturned:  # as the folds tell events apart
                continue
            for message_id, version in zip(e.message_ids, e.versions, strict=True):
                if message_id in messages.rows:
                    continue
                for added in store.events_of(user_id, after=version - 1, upto=version):
                    if type(added) is UserLog.MessageAdded:
                        evolve_messages(messages, added)
                        messages.update(message_id, buffered=0)


def _until(events: list[Any], at: datetime) -> list[Any]:
    """The events before the first one stamped after ``at``."""
    for i, event in enumerate(events):
        if _timestamp(event) > at:
            return events[:i]
    return events


def _buffer(user_id: str, rows: TableRows) -> list[BufferedMessage]:
    """What :meth:`ProjectionReader.buffer` reads: buffered messages not quarantined, in
    log order."""
    buffered = (r for r in rows.rows.values() if r["buffered"] == 1 and r["quarantined"] == 0)
    return [buffered_from_row(user_id, r) for r in sorted(buffered, key=lambda r: r["seq"])]


def _tasks(user_id: str, rows: TableRows) -> list[TaskRecord]:
    """What :meth:`ProjectionReader.tasks` reads: every task, in the order requested."""
    ordered = sorted(rows.rows.values(), key=lambda r: r["requested_version"])
    return [task_from_row(user_id, r) for r in ordered]


def _knowledge(user_id: str, rows: TableRows) -> list[KnowledgeEntry]:
    """What :meth:`ProjectionReader.knowledge` reads: live entries still valid, in order."""
    current = (
        r
        for r in rows.rows.values()
        if r["knowledge_version"] == LIVE_KNOWLEDGE and r["valid_until"] is None
    )
    ordered = sorted(current, key=lambda r: (r["version"], r["ordinal"]))
    return [entry_from_row(user_id, r) for r in ordered]


def _timestamp(event: object) -> datetime:
    stamp: datetime = getattr(event, "timestamp")  # noqa: B009 - every event has one
    return stamp
