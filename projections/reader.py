"""Queries over the projection tables: what the library API and the tools read."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    LargeBinary,
    RowMapping,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    extract,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import NullType

from events import KnownEntry, ReplacedEntry, user_log_id
from events.transcoding import from_micros
from events.user_log import LIVE_KNOWLEDGE
from projections.collation import in_code_point_order
from projections.columns import StoredId, id_text, packed_range, stored_id
from projections.models import (
    BufferedMessage,
    KnowledgeEntry,
    Message,
    QuarantinedMessage,
    TaskRecord,
    UserSummary,
)
from projections.tables import ProjectionTables

__all__ = [
    "ProjectionReader",
    "StoredVersion",
    "aware",
    "buffered_from_row",
    "entry_from_row",
    "message_from_row",
    "task_from_row",
]

MAX_REPLACED_DEPTH = 100
"""How many links back one call of :meth:`ProjectionReader.replaced` follows each chain of
ended entries (what a batch is shown beside its entries); the chains before the entries an
answer changes are then read on to their start (:func:`projections.shown.with_targets`)."""

_OPEN_STATUSES = ("PENDING", "RUNNING")
"""The statuses of a task not yet ended: requested, or running."""


class StoredVersion(NamedTuple):
    """How far a user's stored log goes, and when it began: a copy of the log held in
    memory is of another log (the user was forgotten and began again) when it began
    otherwise, however its version compares."""

    version: int
    began: datetime


class ProjectionReader:
    """Reads one set of projection tables; every per-user read is scoped by construction."""

    def __init__(self, tables: ProjectionTables) -> None:
        self.tables = tables
        # The statements every retrieval runs, built once: building one per call cost
        # more than running it (0.4 ms of a 1.2 ms retrieval, for the outdated messages).
        m, c, k = tables.messages, tables.citations, tables.knowledge
        in_seqs = m.c.seq.in_(bindparam("seqs", expanding=True))
        self._entries_by_ids = select(k).where(k.c.entry_id.in_(bindparam("ids", expanding=True)))
        self._ended_around = (
            select(k.c.entry_id, k.c.text, k.c.valid_from, k.c.valid_until, k.c.superseded_by)
            .where(
                k.c.log_id == bindparam("log_id"),
                k.c.knowledge_version == bindparam("version"),
                k.c.valid_until > bindparam("first", type_=k.c.valid_until.type),
                or_(
                    k.c.superseded_by.is_(None),
                    k.c.valid_from <= bindparam("last", type_=k.c.valid_from.type),
                ),
            )
            .order_by(k.c.valid_until, k.c.version, k.c.ordinal)
            .limit(bindparam("limit", type_=Integer))
        )
        of_version = select(k).where(
            k.c.log_id == bindparam("log_id"), k.c.knowledge_version == bindparam("version")
        )
        at = bindparam("at", type_=k.c.valid_from.type)
        in_order = (k.c.version, k.c.ordinal)
        listings = {
            "ever": of_version,
            "now": of_version.where(k.c.valid_until.is_(None)),
            "then": of_version.where(
                k.c.valid_from <= at, or_(k.c.valid_until.is_(None), k.c.valid_until > at)
            ),
        }
        # One statement a listing, a page of it or the whole: a page is read in the
        # database, off the listing index, not cut from every entry.
        self._knowledge = {
            name: query.order_by(*in_order)
            .limit(bindparam("limit", type_=Integer))
            .offset(bindparam("offset", type_=Integer))
            for name, query in listings.items()
        }
        t, u = tables.tasks, tables.users
        self._task = select(t).where(
            t.c.log_id == bindparam("log_id"), t.c.task_id == bindparam("task_id")
        )
        self._user = select(u).where(u.c.log_id == bindparam("log_id"))
        self._messages_by_ids = select(m).where(
            m.c.message_id.in_(bindparam("ids", expanding=True))
        )
        self._messages_by_ids_and_seqs = self._messages_by_ids.where(in_seqs)
        of_user = select(m).where(m.c.log_id == bindparam("log_id"))
        self._messages_of_user = (
            of_user.where(m.c.seq > bindparam("after")).order_by(m.c.seq).limit(bindparam("limit"))
        )
        self._messages_of_user_by_seqs = of_user.where(in_seqs).order_by(m.c.seq)
        users_turn = select(m.c.name).where(m.c.log_id == bindparam("log_id"), m.c.role == "user")
        self._names_of_turns = [
            users_turn.order_by(order).limit(1) for order in (m.c.seq, m.c.seq.desc())
        ]
        citing = (
            select(c.c.message_id, c.c.log_id)
            .join(k, k.c.entry_id == c.c.entry_id)
            .where(
                c.c.message_id.in_(bindparam("ids", expanding=True)),
                k.c.knowledge_version == LIVE_KNOWLEDGE,
            )
            .group_by(c.c.message_id, c.c.log_id)
        )
        self.replaced_depth = MAX_REPLACED_DEPTH
        """How many links back one call of :meth:`replaced` follows a chain."""
        self._replaced = _replaced_chains(k, self.replaced_depth)
        self._successors = _successor_links(k)
        # A message that said an entry again is outdated by its end only if the entry
        # ended after the message was said: a change dated earlier leaves later words
        # current. The message's time is read for such citations alone.
        said_again = select(m.c.sent_at).where(m.c.message_id == c.c.message_id)
        ended_after = case((k.c.valid_until > said_again.scalar_subquery(), 1), else_=0)
        ended = case((c.c.repeated == 0, 1), else_=ended_after)
        ended_now = case((k.c.valid_until.is_(None), 0), else_=ended)
        self._outdated = citing.having(func.sum(ended_now) == func.count())
        self._sqlite = _SqliteReads(tables, self._outdated)
        ended_then = case((k.c.valid_until <= at, ended), else_=0)
        self._outdated_then = citing.where(k.c.valid_from <= at).having(
            func.sum(ended_then) == func.count()
        )

    def knowledge(
        self,
        connection: Connection,
        user_id: str,
        version: str = LIVE_KNOWLEDGE,
        *,
        as_of: datetime | None = None,
        history: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[KnowledgeEntry]:
        """The user's knowledge entries (live, or of a re-extracted version), oldest first.

        By default only current entries; ``as_of`` gives those valid at that time, and
        ``history=True`` every entry, ended ones included. Of those, the first ``offset``
        are passed over and at most ``limit`` read: a page is read in the database, not
        cut from the whole listing.
        """
        binds: dict[str, Any] = {"log_id": _log(user_id), "version": version}
        listing = "ever" if history else "now" if as_of is None else "then"
        if as_of is not None and not history:
            binds["at"] = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
        # No table holds more rows than a column counts: larger numbers say the same.
        binds.update(
            offset=min(offset, _LARGEST_SEQ), limit=min(limit or _LARGEST_SEQ, _LARGEST_SEQ)
        )
        rows = connection.execute(self._knowledge[listing], binds).mappings()
        return [entry_from_row(user_id, r) for r in rows]

    def entries(self, connection: Connection, user_id: str, ids: list[str]) -> list[KnowledgeEntry]:
        """The user's entries among ``ids`` (any version, ended or not), in no set order."""
        if not ids:
            return []
        rows = connection.execute(self._entries_by_ids, {"ids": ids}).mappings()
        return [entry_from_row(user_id, r) for r in _owned_by(rows, user_id)]

    def ended_around(
        self,
        connection: Connection,
        user_id: str,
        said: tuple[datetime, datetime],
        limit: int,
        version: str = LIVE_KNOWLEDGE,
    ) -> list[tuple[KnownEntry, ReplacedEntry]]:
        """At most ``limit`` of the ended entries of ``version`` that a batch said between
        ``said`` (its first and last messages' times) may place its facts around, those
        that ended first first: the replaced ones valid then, and the last values of
        chains (invalidated) that ended after it began. Each as an extractor is shown it,
        and as the log places facts among ended entries."""
        first, last = said
        binds = {"log_id": _log(user_id), "version": version, "first": first, "last": last}
        found = []
        for entry_id, text, valid_from, valid_until, superseded_by in connection.execute(
            self._ended_around, {**binds, "limit": limit}
        ):
            entry = id_text(entry_id)
            began, ended = aware(valid_from), aware(valid_until)
            successor = None if superseded_by is None else id_text(superseded_by)
            found.append(
                (
                    KnownEntry(entry, text, began, ended),
                    ReplacedEntry(entry, began, ended, successor),
                )
            )
        return found

    def replaced(
        self,
        connection: Connection,
        user_id: str,
        entry_ids: list[str],
        version: str = LIVE_KNOWLEDGE,
    ) -> list[ReplacedEntry]:
        """The chains of ended entries of ``version`` before ``entry_ids``: the entries
        they replaced, those that those replaced, and so on (at most
        :data:`MAX_REPLACED_DEPTH` back). A backdated fact that updates one of ``entry_ids``
        fits in them (see :class:`events.timeline.Timeline`)."""
        if not entry_ids:
            return []
        binds = {"log_id": _log(user_id), "version": version, "ids": entry_ids}
        return [
            ReplacedEntry(
                id_text(entry_id),
                aware(valid_from),
                aware(valid_until),
                id_text(superseded_by),
            )
            for entry_id, valid_from, valid_until, superseded_by in connection.execute(
                self._replaced, binds
            )
        ]

    def messages(
        self,
        connection: Connection,
        user_id: str,
        *,
        ids: list[str] | None = None,
        seqs: list[int] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Message]:
        """The user's messages in log order: all of them, or those with ``ids`` or ``seqs``;
        of all of them, those past seq ``after``, at most ``limit``."""
        if (ids is not None and not ids) or (seqs is not None and not seqs):
            return []
        if ids is not None:
            query = self._messages_by_ids if seqs is None else self._messages_by_ids_and_seqs
            rows = connection.execute(query, {"ids": ids, "seqs": seqs}).mappings()
            found = [message_from_row(user_id, r) for r in _owned_by(rows, user_id)]
            return sorted(found, key=lambda message: message.seq)
        if seqs is not None and connection.dialect.name == "sqlite":
            raw = self._sqlite.messages_by_seqs(connection, _log(user_id), seqs)
            return [message_from_row(user_id, r) for r in raw]
        query = self._messages_of_user if seqs is None else self._messages_of_user_by_seqs
        # No seq is past the column's range, nor are more messages than it counts.
        after, limit = min(after, _LARGEST_SEQ), min(limit or _LARGEST_SEQ, _LARGEST_SEQ)
        parameters = {"log_id": _log(user_id), "seqs": seqs, "after": after, "limit": limit}
        rows = connection.execute(query, parameters).mappings()
        return [message_from_row(user_id, r) for r in rows]

    def entry_ids_starting(
        self, connection: Connection, user_id: str, prefix: str, limit: int
    ) -> list[str]:
        """Up to ``limit`` ids of the user's entries (any version) that start with ``prefix``,
        in order.

        Ids stored as text are compared as text (exactly: SQLite's ``LIKE`` ignores case);
        on SQLite a UUID is stored as its 16 bytes, so a prefix of its text is a range of
        them (:func:`~projections.columns.packed_range`).
        """
        k = self.tables.knowledge
        mine = k.c.log_id == _log(user_id)
        as_text = func.substr(k.c.entry_id, 1, len(prefix)) == literal(prefix, String)
        queries = [select(k.c.entry_id).where(mine, as_text)]
        packed = packed_range(prefix) if connection.dialect.name == "sqlite" else None
        if packed is not None:
            stored = type_coerce(k.c.entry_id, LargeBinary)
            start, end = packed
            in_range = stored >= literal(start, LargeBinary)
            if end is not None:
                in_range = and_(in_range, stored < literal(end, LargeBinary))
            queries.append(select(k.c.entry_id).where(mine, in_range))
        found: set[str] = set()
        in_order = in_code_point_order(k.c.entry_id, connection.dialect.name)
        for query in queries:
            found.update(connection.execute(query.order_by(in_order).limit(limit)).scalars())
        return sorted(found)[:limit]

    def knowledge_versions(self, connection: Connection, user_id: str) -> dict[str, int]:
        """The user's knowledge versions (live and re-extracted) with their entry counts."""
        k = self.tables.knowledge
        rows = connection.execute(
            select(k.c.knowledge_version, func.count())
            .where(k.c.log_id == _log(user_id))
            .group_by(k.c.knowledge_version)
        )
        return {str(name): int(count) for name, count in rows}

    def buffer(self, connection: Connection, user_id: str) -> list[BufferedMessage]:
        """The user's messages not yet covered by knowledge nor quarantined, in log order."""
        m = self.tables.messages
        rows = connection.execute(
            select(m)
            .where(m.c.log_id == _log(user_id), _buffered(m), m.c.quarantined == 0)
            .order_by(m.c.seq)
        ).mappings()
        return [buffered_from_row(user_id, r) for r in rows]

    def quarantined(self, connection: Connection, user_id: str) -> list[QuarantinedMessage]:
        """The user's quarantined messages, in log order, each with its last error."""
        m, q = self.tables.messages, self.tables.quarantine
        rows = connection.execute(
            select(m, q.c.error, q.c.attempts, q.c.quarantined_at, q.c.task_id.label("by"))
            .join(q, q.c.message_id == m.c.message_id)
            .where(m.c.log_id == _log(user_id), _buffered(m))
            .order_by(m.c.seq)
        ).mappings()
        return [
            QuarantinedMessage(
                **_message_fields(user_id, r),
                error=r["error"],
                attempts=r["attempts"],
                quarantined_at=aware(r["quarantined_at"]),
                task_id=r["by"],
            )
            for r in rows
        ]

    def users_with_quarantine(self, connection: Connection) -> dict[str, int]:
        """Every user with quarantined messages, with how many."""
        u = self.tables.users
        rows = connection.execute(
            select(u.c.user_id, u.c.quarantined_count)
            .where(u.c.quarantined_count > 0)
            .order_by(in_code_point_order(u.c.user_id, connection.dialect.name))
        )
        return {str(user): int(count) for user, count in rows}

    def spend(self, connection: Connection) -> list[dict[str, Any]]:
        """Tokens spent by extraction, per extractor and model, most input first."""
        g = self.tables.usage
        sums = [
            func.sum(g.c[name]).label(name)
            for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        ]
        rows = connection.execute(
            select(g.c.extractor, g.c.model, func.count().label("calls"), *sums)
            .group_by(g.c.extractor, g.c.model)
            .order_by(func.sum(g.c.input_tokens).desc())
        ).mappings()
        return [
            {k: (v if k in ("extractor", "model") else int(v)) for k, v in r.items()} for r in rows
        ]

    def task(self, connection: Connection, user_id: str, task_id: str) -> TaskRecord | None:
        """One task of the user, or ``None`` if the log has no such task for them."""
        binds = {"log_id": _log(user_id), "task_id": task_id}
        row = connection.execute(self._task, binds).mappings().first()
        return None if row is None else task_from_row(user_id, row)

    def task_details(
        self, connection: Connection, user_id: str, task_id: str
    ) -> dict[str, Any] | None:
        """Every column of one task's row (extractor, model, tokens...), or ``None``."""
        binds = {"log_id": _log(user_id), "task_id": task_id}
        row = connection.execute(self._task, binds).mappings().first()
        return None if row is None else dict(row)

    def successors(self, connection: Connection, user_id: str, entry_id: str) -> list[str]:
        """The chain of entries that replaced ``entry_id``, nearest first: one recursive
        walk forward along ``superseded_by`` (each step a primary key lookup), ordered
        here, however long the chain."""
        binds = {"log_id": _log(user_id), "id": entry_id}
        links: dict[str, str | None] = {
            entry: after for entry, after in connection.execute(self._successors, binds)
        }
        chain: list[str] = []
        seen = {entry_id}
        current = links.get(entry_id)
        while current is not None and current not in seen:
            chain.append(current)
            seen.add(current)
            current = links.get(current)
        return chain

    def speaker(self, connection: Connection, user_id: str) -> str | None:
        """The name the user's own turns are written under: that of their first and their
        latest user message, when both carry the same one (``None`` otherwise: no name
        given, or a group chat's speakers)."""
        names = {
            connection.execute(query, {"log_id": _log(user_id)}).scalar()
            for query in self._names_of_turns
        }
        return names.pop() if len(names) == 1 else None

    def outdated(
        self,
        connection: Connection,
        user_id: str,
        message_ids: list[str],
        as_of: datetime | None = None,
    ) -> set[str]:
        """Those of ``message_ids`` whose every live entry has ended (what they say is old);
        with ``as_of``, whose every live entry known then had ended by then. An entry a
        message said again (see :meth:`repeats`) counts as ended for it only if it ended
        after the message was sent."""
        if not message_ids:
            return set()
        if as_of is not None:
            at = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
            found = connection.execute(self._outdated_then, {"ids": message_ids, "at": at})
            return {r["message_id"] for r in _owned_by(found.mappings(), user_id)}
        if connection.dialect.name == "sqlite":
            return self._sqlite.outdated(connection, _log(user_id), message_ids)
        rows = connection.execute(self._outdated, {"ids": message_ids}).mappings()
        return {r["message_id"] for r in _owned_by(rows, user_id)}

    def repeats(
        self, connection: Connection, user_id: str, entry_id: str, *, newest: int
    ) -> tuple[list[str], int]:
        """The ids of the ``newest`` messages that said ``entry_id`` again while it held
        (newest first), and how many did: no sources of it, yet outdated with it (see
        :meth:`outdated`). An entry said again thousands of times is read a page only."""
        c, m = self.tables.citations, self.tables.messages
        log_id = _log(user_id)
        said_again = (c.c.log_id == log_id, c.c.entry_id == entry_id, c.c.repeated == 1)
        page = (
            select(c.c.message_id)
            .join(m, m.c.message_id == c.c.message_id)
            .where(*said_again)
            .order_by(m.c.sent_at.desc(), m.c.seq.desc())
            .limit(newest)
        )
        total = connection.execute(select(func.count()).select_from(c).where(*said_again))
        return [id_text(r) for r in connection.execute(page).scalars()], int(total.scalar() or 0)

    def entry_version(self, connection: Connection, user_id: str, entry_id: str) -> int:
        """The log version of the event that recorded ``entry_id`` (0 if unknown)."""
        k = self.tables.knowledge
        found = connection.execute(
            select(k.c.version).where(k.c.log_id == _log(user_id), k.c.entry_id == entry_id)
        ).scalar()
        return int(found or 0)

    def predecessors(self, connection: Connection, user_id: str, entry_id: str) -> list[str]:
        """The entries that ``entry_id`` directly replaced."""
        k = self.tables.knowledge
        rows = connection.execute(
            select(k.c.entry_id).where(k.c.log_id == _log(user_id), k.c.superseded_by == entry_id)
        )
        return [r[0] for r in rows]

    def tasks(self, connection: Connection, user_id: str) -> list[TaskRecord]:
        """Every task of the user, in the order they started."""
        t = self.tables.tasks
        rows = connection.execute(
            select(t).where(t.c.log_id == _log(user_id)).order_by(t.c.requested_version)
        ).mappings()
        return [task_from_row(user_id, r) for r in rows]

    def open_tasks(self, connection: Connection, user_id: str) -> list[TaskRecord]:
        """The user's tasks not yet ended (requested or running), in the order asked."""
        t = self.tables.tasks
        rows = connection.execute(
            select(t)
            .where(t.c.log_id == _log(user_id), t.c.status.in_(_OPEN_STATUSES))
            .order_by(t.c.requested_version)
        ).mappings()
        return [task_from_row(user_id, r) for r in rows]

    def users_with_open_tasks(self, connection: Connection) -> list[str]:
        """Users whose log has tasks not yet ended (interrupted or waiting, after a crash)."""
        t, u = self.tables.tasks, self.tables.users
        rows = connection.execute(
            select(u.c.user_id)
            .where(u.c.log_id.in_(select(t.c.log_id).where(t.c.status.in_(_OPEN_STATUSES))))
            .order_by(in_code_point_order(u.c.user_id, connection.dialect.name))
        )
        return [r[0] for r in rows]

    def users_with_pending(self, connection: Connection, at_least: int) -> list[str]:
        """Users with at least ``at_least`` messages that no task holds."""
        m, u = self.tables.messages, self.tables.users
        pending = (
            select(m.c.log_id)
            .where(_buffered(m), m.c.task_id.is_(None), m.c.quarantined == 0)
            .group_by(m.c.log_id)
            .having(func.count() >= at_least)
        )
        in_order = in_code_point_order(u.c.user_id, connection.dialect.name)
        rows = connection.execute(
            select(u.c.user_id).where(u.c.log_id.in_(pending)).order_by(in_order)
        )
        return [r[0] for r in rows]

    def users_with_failed_run_waiting(self, connection: Connection) -> list[str]:
        """Users whose latest task to end ended FAILED (a failure that may pass, a shutdown)
        and who have messages buffered that no task holds: a retry was owed them, which
        the engine that owed it took with it when it closed.

        Read from the buffer's partial index first, then each such user's latest ended
        task through the index of tasks by their end: it costs what the waiting users
        number, however many tasks any of them failed before."""
        m, t, u = self.tables.messages, self.tables.tasks, self.tables.users
        waiting = select(m.c.log_id).where(
            _buffered(m), m.c.task_id.is_(None), m.c.quarantined == 0
        )
        last_status = (
            select(t.c.status)
            .where(t.c.log_id == u.c.log_id, t.c.finished_version.is_not(None))
            .order_by(t.c.finished_version.desc())
            .limit(1)
            .scalar_subquery()
        )
        in_order = in_code_point_order(u.c.user_id, connection.dialect.name)
        rows = connection.execute(
            select(u.c.user_id)
            .where(u.c.log_id.in_(waiting), last_status == "FAILED")
            .order_by(in_order)
        )
        return [r[0] for r in rows]

    def versions(self, connection: Connection, user_ids: list[str]) -> dict[str, StoredVersion]:
        """The log version (and beginning) of each of ``user_ids`` that has a log."""
        if not user_ids:
            return {}
        u = self.tables.users
        rows = connection.execute(
            select(u.c.user_id, u.c.version, u.c.created_at).where(
                u.c.log_id.in_(bindparam("ids", expanding=True))
            ),
            {"ids": [_log(x) for x in user_ids]},
        )
        return {r[0]: StoredVersion(int(r[1]), aware(r[2])) for r in rows}

    def versions_with_requests(
        self, connection: Connection, user_ids: list[str]
    ) -> dict[str, StoredVersion]:
        """The log version (and beginning) of each of ``user_ids`` with a task requested
        and not yet started."""
        if not user_ids:
            return {}
        t, u = self.tables.tasks, self.tables.users
        rows = connection.execute(
            select(u.c.user_id, u.c.version, u.c.created_at).where(
                u.c.log_id.in_(
                    select(t.c.log_id).where(
                        t.c.status == "PENDING",
                        t.c.log_id.in_(bindparam("ids", expanding=True)),
                    )
                )
            ),
            {"ids": [_log(x) for x in user_ids]},
        )
        return {r[0]: StoredVersion(int(r[1]), aware(r[2])) for r in rows}

    def task_states(self, connection: Connection, task_ids: list[str]) -> list[TaskRecord]:
        """The tasks among ``task_ids`` that the log knows, in any user's log."""
        if not task_ids:
            return []
        t, u = self.tables.tasks, self.tables.users
        rows = connection.execute(
            select(t, u.c.user_id)
            .join(u, u.c.log_id == t.c.log_id)
            .where(t.c.task_id.in_(bindparam("ids", expanding=True))),
            {"ids": task_ids},
        ).mappings()
        return [task_from_row(r["user_id"], r) for r in rows]

    def users(self, connection: Connection, *, after: str = "", limit: int = 100) -> UsersPage:
        """A page of at most ``limit`` users in user-id order (code point order, on both
        backends), starting after ``after``. A row whose time has no datetime (outside years
        1 to 9999 in UTC: folded from a log an older memvee imported) is left out of the
        page and named in it, so one such log hides nobody else."""
        u = self.tables.users
        user_id = in_code_point_order(u.c.user_id, connection.dialect.name)
        raw_time = _raw_time(u.c.updated_at, connection.dialect.name).label("updated_at")
        columns = [c for c in u.c if c.name not in ("created_at", "updated_at")]
        page = UsersPage([], {})
        while (wanted := limit - len(page.listed)) > 0:
            rows = (
                connection.execute(
                    select(*columns, raw_time)
                    .where(user_id > after)
                    .order_by(user_id)
                    .limit(wanted)
                )
                .mappings()
                .all()
            )
            for r in rows:
                try:
                    page.listed.append(_summary(r))
                except (OverflowError, ValueError):
                    page.out_of_range[r["user_id"]] = r["log_id"]
            if len(rows) < wanted:
                break
            after = rows[-1]["user_id"]
        return page

    def totals(self, connection: Connection) -> dict[str, int]:
        """Counts across every user: users, messages, buffered, knowledge, tasks by status."""
        u, t, g = self.tables.users, self.tables.tasks, self.tables.usage
        users, messages, buffered, quarantined, knowledge = connection.execute(
            select(
                func.count(),
                func.coalesce(func.sum(u.c.message_count), 0),
                func.coalesce(func.sum(u.c.buffered_count), 0),
                func.coalesce(func.sum(u.c.quarantined_count), 0),
                func.coalesce(func.sum(u.c.knowledge_count), 0),
            ).select_from(u)
        ).one()
        totals = {
            "users": int(users),
            "messages": int(messages),
            "buffered": int(buffered),
            "quarantined": int(quarantined),
            "knowledge": int(knowledge),
        }
        for status, count in connection.execute(
            select(t.c.status, func.count()).group_by(t.c.status)
        ):
            totals[f"tasks_{str(status).lower()}"] = int(count)
        names = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        spent = connection.execute(
            select(*(func.coalesce(func.sum(g.c[n]), 0) for n in names)).select_from(g)
        ).one()
        totals.update({name: int(value) for name, value in zip(names, spent, strict=True)})
        return totals

    def user(self, connection: Connection, user_id: str) -> UserSummary | None:
        """The counters of one user, or ``None`` for a user never written."""
        row = connection.execute(self._user, {"log_id": _log(user_id)}).mappings().first()
        return None if row is None else _summary(row)


def entry_from_row(user_id: str, r: Any) -> KnowledgeEntry:
    """A knowledge row as the model callers get (typed by SQLAlchemy, or SQLite's raw row:
    ids as bytes, times as microseconds)."""
    return KnowledgeEntry(
        entry_id=id_text(r["entry_id"]),
        user_id=user_id,
        text=r["text"],
        task_id=r["task_id"],
        source_message_ids=tuple(_ids(r["source_message_ids"])),
        extracted_at=aware(r["extracted_at"]),
        extractor=r["extractor"],
        model=r["model"],
        valid_from=aware(r["valid_from"]),
        valid_until=_maybe_aware(r["valid_until"]),
        superseded_by=StoredId.from_sqlite(r["superseded_by"]),
        ended_reason=r["ended_reason"],
    )


def _replaced_chains(k: Table, depth: int) -> Select[Any]:
    """The statement of :meth:`ProjectionReader.replaced`: a recursive walk back along
    ``superseded_by``, one user's rows of one version at each step (its index)."""
    fields = (k.c.entry_id, k.c.valid_from, k.c.valid_until, k.c.superseded_by)
    of_user = (k.c.log_id == bindparam("log_id"), k.c.knowledge_version == bindparam("version"))
    first = (
        select(*fields, literal(1, Integer).label("depth"))
        .where(*of_user, k.c.superseded_by.in_(bindparam("ids", expanding=True)))
        .cte("chain", recursive=True)
    )
    step = (
        select(*fields, (first.c.depth + 1).label("depth"))
        .join(first, k.c.superseded_by == first.c.entry_id)
        .where(*of_user, first.c.depth < depth)
    )
    chain = first.union_all(step)
    return select(chain.c.entry_id, chain.c.valid_from, chain.c.valid_until, chain.c.superseded_by)


def _successor_links(k: Table) -> Select[Any]:
    """The statement of :meth:`ProjectionReader.successors`: every (entry, successor) link
    reachable forward from entry ``id`` of one user. ``UNION`` (not ``ALL``) keeps each
    link once, so a cycle ends the walk."""
    fields = (k.c.entry_id, k.c.superseded_by)
    first = (
        select(*fields)
        .where(k.c.log_id == bindparam("log_id"), k.c.entry_id == bindparam("id"))
        .cte("ahead", recursive=True)
    )
    step = (
        select(*fields)
        .join(first, k.c.entry_id == first.c.superseded_by)
        .where(k.c.log_id == bindparam("log_id"))
    )
    ahead = first.union(step)
    return select(ahead.c.entry_id, ahead.c.superseded_by)


def _buffered(m: Table) -> ColumnElement[bool]:
    """Buffered messages, said with a literal: SQLite only uses the partial index of the
    buffer when the query repeats its condition, and a bound parameter does not."""
    return m.c.buffered == literal_column("1")


def buffered_from_row(user_id: str, r: Any) -> BufferedMessage:
    """A buffered message's row as the model callers get."""
    return BufferedMessage(**_message_fields(user_id, r), task_id=r["task_id"])


_LARGEST_SEQ = 2**31 - 1
"""The largest seq a message can have: its column is an INTEGER (32 bits on PostgreSQL)."""


def message_from_row(user_id: str, r: Any) -> Message:
    """A message row as the model callers get (typed by SQLAlchemy, or SQLite's raw row)."""
    return Message(**_message_fields(user_id, r))


def _message_fields(user_id: str, r: Any) -> dict[str, Any]:
    """The fields every model of a message has, from a message row."""
    return {
        "message_id": id_text(r["message_id"]),
        "user_id": user_id,
        "seq": r["seq"],
        "role": r["role"],
        "content": r["content"],
        "sent_at": aware(r["sent_at"]),
        "name": r["name"],
    }


def aware(stamp: datetime | int | str) -> datetime:
    """A stored time as an aware UTC datetime (a raw SQLite row holds microseconds; a
    PostgreSQL row, its session's time zone)."""
    if isinstance(stamp, int):
        return from_micros(stamp)
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    return stamp.astimezone(UTC) if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _ids(value: list[str] | str) -> list[str]:
    """A JSON list of ids, decoded (SQLAlchemy does it; a raw row holds the text)."""
    decoded: list[str] = json.loads(value) if isinstance(value, str) else value
    return decoded


def _maybe_aware(stamp: datetime | int | None) -> datetime | None:
    return None if stamp is None else aware(stamp)


def _log(user_id: str) -> str:
    return str(user_log_id(user_id))


def task_from_row(user_id: str, r: Any) -> TaskRecord:
    """A task row as the model callers get."""
    return TaskRecord(
        task_id=r["task_id"],
        user_id=user_id,
        trigger=r["trigger"],
        status=r["status"],
        message_count=r["message_count"],
        knowledge_count=r["knowledge_count"],
        error=r["error"],
        requested_at=aware(r["requested_at"]),
        started_at=_maybe_aware(r["started_at"]),
        finished_at=_maybe_aware(r["finished_at"]),
        batches=r["batches"],
    )


class UsersPage(NamedTuple):
    """A page of users, and the users left out of it because a time of their row has no
    datetime (user id to log id)."""

    listed: list[UserSummary]
    out_of_range: dict[str, str]


_FAR_MICROS = 10**18
"""About 31,700 years: far outside the years 1 to 9999 a datetime holds."""


def _raw_time(column: Any, dialect: str) -> Any:
    """``column`` as microseconds since 1970, for :func:`aware` to read or refuse: what
    SQLite holds, and on PostgreSQL its epoch, since the driver itself fails on a time past
    year 9999 before any row of the page reaches memvee (and text of a time before year 1
    in UTC would name the year without its era). PostgreSQL's is held within
    :data:`_FAR_MICROS` of 1970, so a time past what a bigint holds (``infinity``) is
    refused like any other instead of failing the page."""
    if dialect == "postgresql":
        micros = extract("epoch", column) * 1_000_000
        return cast(func.least(func.greatest(micros, -_FAR_MICROS), _FAR_MICROS), BigInteger)
    return type_coerce(column, NullType())


def _summary(r: Any) -> UserSummary:
    return UserSummary(
        user_id=r["user_id"],
        version=r["version"],
        message_count=r["message_count"],
        buffered_count=r["buffered_count"],
        knowledge_count=r["knowledge_count"],
        tasks_completed=r["tasks_completed"],
        tasks_failed=r["tasks_failed"],
        updated_at=aware(r["updated_at"]),
        quarantined_count=r["quarantined_count"],
    )


class _SqliteReads:
    """Two reads every retrieval with messages runs, as plain statements on SQLite's
    DBAPI cursor: SQLAlchemy renders a statement with an expanding ``IN`` anew at every
    call, which cost 200-370 µs around a 60 µs statement. The outdated messages are read
    by :attr:`ProjectionReader._outdated` itself, rendered once (:class:`_RenderedOnce`);
    the messages by seqs, as ``_messages_of_user_by_seqs`` reads them elsewhere.
    """

    def __init__(self, tables: ProjectionTables, outdated: Select[Any]) -> None:
        self._statement = outdated
        self._by_seqs = (
            f"SELECT * FROM {tables.messages.name} WHERE log_id = ? AND seq IN ({{marks}}) "
            "ORDER BY seq"
        )

    @functools.cached_property
    def _outdated(self) -> _RenderedOnce:
        """The outdated rule rendered for SQLite, at its first use (a PostgreSQL reader
        never renders it)."""
        return _RenderedOnce(self._statement, "ids")

    def outdated(self, connection: Connection, log_id: str, message_ids: list[str]) -> set[str]:
        """Those of ``message_ids`` of log ``log_id`` whose every live entry has ended
        (looked up by key, the owner checked on each row, as :func:`_owned_by` does)."""
        owner = stored_id(log_id)
        rows = self._outdated.rows(connection, message_ids)
        return {id_text(r["message_id"]) for r in rows if r["log_id"] == owner}

    def messages_by_seqs(
        self, connection: Connection, log_id: str, seqs: list[int]
    ) -> list[dict[str, Any]]:
        """The raw rows of log ``log_id``'s messages at ``seqs``, in log order."""
        sql = self._by_seqs.format(marks=", ".join("?" * len(seqs)))
        return _driver_rows(connection, sql, [stored_id(log_id), *seqs])


class _RenderedOnce:
    """``statement`` rendered once as SQLite's SQL, its expanding ``IN`` list (the bound
    parameter ``expanding``) left open: run on the DBAPI cursor with the list's values,
    it reads what the statement reads, the one definition of what it asks."""

    def __init__(self, statement: Select[Any], expanding: str) -> None:
        dialect = sqlite.dialect()
        compiled = statement.compile(dialect=dialect)
        self._head, self._tail = compiled.string.split(f"__[POSTCOMPILE_{expanding}]")
        processors = {
            n: b.type.dialect_impl(dialect).bind_processor(dialect)
            for n, b in compiled.binds.items()
        }
        self._store = processors[expanding] or (lambda value: value)
        names = list(compiled.positiontup or ())
        at = names.index(expanding)
        fixed = [_bound(processors[n], compiled.params[n]) for n in names]
        self._before, self._after = fixed[:at], fixed[at + 1 :]

    def rows(self, connection: Connection, values: list[Any]) -> list[dict[str, Any]]:
        """The rows the statement reads with its ``IN`` list holding ``values``."""
        params = [*self._before, *map(self._store, values), *self._after]
        sql = self._head + ", ".join("?" * len(values)) + self._tail
        return _driver_rows(connection, sql, params)


def _bound(process: Callable[[Any], Any] | None, value: Any) -> Any:
    """``value`` as the driver is given it."""
    return value if process is None else process(value)


def _driver_rows(connection: Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """The rows of ``sql`` run on the connection's DBAPI cursor, by column name."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _owned_by(rows: Iterable[RowMapping], user_id: str) -> Iterator[RowMapping]:
    """The rows of ``user_id``'s log among rows looked up by their (global) keys.

    Lookups by a list of ids name no owner in the ``WHERE``: SQLite would then walk the
    user's whole index on ``log_id`` instead of finding each id by its key. Rows of any
    other log are dropped here, so an id never reaches across users.
    """
    log_id = _log(user_id)
    return (row for row in rows if row["log_id"] == log_id)
