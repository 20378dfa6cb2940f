"""The requests a bulk run keeps in :mod:`projections.bulk_runs` before it submits them, and
what their rows say: the keys of a kept request (its failing count, its short reads, when
the fallback last tried its user), how a planned request is kept, and how a claim decodes a
kept row. Older memvees read the same rows, so a key's meaning never changes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, inspect, select
from sqlalchemy.exc import DBAPIError

from events import EventStore
from memvee._bulk.claims import _database_time
from projections.bulk_runs import BULK_BATCHES, create_bulk_table, has_kept_index, restamped
from projections.bulk_runs import CLAIM as _CLAIM
from projections.reader import aware

log = logging.getLogger("memvee.bulk")

MAX_SHORT_READS = 3
"""Times a kept Message Batch's results may be read short (a download cut, an empty file,
a line missing or broken) before its row is dropped: a gateway that cuts every download
would otherwise hold the batch, and the messages it holds, until the API forgets it."""

_SHORT_READS = "short_reads"
"""The key of a kept request that counts its batch's short reads (see :data:`MAX_SHORT_READS`)."""

_FAILING = "failing"
"""The key of a kept request that counts the Message Batches of its messages that failed
whole with server errors in a row before (:attr:`_Planned.failing`); older memvees ignore
it."""

_FAILED_WHOLE = "failed_whole"
"""The key of a kept request whose Message Batch failed whole with server errors: the next
run plans its messages again instead of collecting it (an older memvee collects it again,
blames nothing and plans them again too)."""

_DIRECT_TRIED = "direct_tried"
"""The key of a kept request that notes when the Messages API fallback last sent its
user's messages (ISO 8601, the database's clock, noted before the first call:
:meth:`KeptBatches.note_tried`); :meth:`BulkReextraction._plan` puts users least lately
tried first. A request without it (of a user never tried, or one an older memvee planned
again: it rebuilds requests from its own fields, dropping the note) goes first."""

_OUTPUT = "max_tokens"
"""The key of a kept request that asked less output than the extractor's whole
``max_tokens`` (:attr:`_Planned.max_tokens`); older memvees ignore it and ask the whole."""

_PROBE = "probe"
"""The key of a probe row's one entry: a probe Message Batch not canceled yet, not a
request (:meth:`probes.Probes.probe_batches`)."""

_PROBES = " probe Message Batches "
"""The ``knowledge_version`` of probe rows: no version can be named so (spaces around),
so a run of any version, an older memvee's too, never takes one for its kept batches."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """One request of a bulk run: a user's batch of messages, the entries it was shown,
    and the version of the user's log it was planned at (the version covered none of its
    messages then)."""

    user_id: str
    message_ids: list[str]
    known: list[str]
    planned_at: int
    failing: int = 0
    """The most Message Batches in a row that failed whole with server errors with one of
    these messages in them before this one (kept as :data:`_FAILING`): a message new since
    does not reset its companions' count."""
    tried: str | None = None
    """When the Messages API fallback last sent this user's messages (kept as
    :data:`_DIRECT_TRIED`), ``None`` if never: the fallback reaches users least lately
    tried first."""
    max_tokens: int | None = None
    """The output asked, when less than the extractor's whole ``max_tokens`` (kept as
    :data:`_OUTPUT`): a lone message whose request the model's context window refused only
    for the output asked beside it goes again asking the live path's output budget."""
    split_of: tuple[str, ...] = ()
    """The requests refused for their size (by request id) whose messages this one sends
    again: each is told in ``BulkReport.split`` once a request of its messages is
    submitted. Not kept: a request kept is told when it is submitted, or never."""

    def to_json(self) -> dict[str, Any]:
        kept: dict[str, Any] = {
            "user": self.user_id,
            "messages": self.message_ids,
            "known": self.known,
            "at": self.planned_at,
        }
        if self.failing:
            kept[_FAILING] = self.failing
        if self.tried is not None:
            kept[_DIRECT_TRIED] = self.tried
        if self.max_tokens is not None:
            kept[_OUTPUT] = self.max_tokens
        return kept


def _requests(row: Mapping[str, Any]) -> bool:
    """Whether a kept row holds requests of a Message Batch (not a claim, nor a probe)."""
    return _CLAIM not in row["requests"] and _PROBE not in row["requests"]


def _failed_whole(row: Mapping[str, Any]) -> bool:
    """Whether a kept row's Message Batch failed whole with server errors (see
    :data:`_FAILED_WHOLE`)."""
    return any(r.get(_FAILED_WHOLE) for r in row["requests"].values())


def _order(custom_id: str) -> int:
    """A request's place in its run: ``r12`` (an older memvee's) and ``r12-<run>`` are 12th."""
    return int(custom_id[1:].split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class _KeptRow:
    """What a claim needs of one kept row, decoded: the messages its requests hold by
    user, the users of its requests that failed whole (planned again:
    :meth:`BulkReextraction._take_failed_whole`), and the row's stamp as it was read."""

    messages: dict[str, set[str]]
    failed_whole: frozenset[str]
    stamp: Any

    @classmethod
    def of(cls, requests: Mapping[str, Any], stamp: Any) -> _KeptRow:
        """A kept row's ``requests``, decoded; none of a claim or a probe."""
        messages: dict[str, set[str]] = {}
        failed_whole: set[str] = set()
        if _requests({"requests": requests}):
            for request in requests.values():
                if request.get(_FAILED_WHOLE):
                    failed_whole.add(request["user"])
                else:
                    messages.setdefault(request["user"], set()).update(request["messages"])
        return cls(messages, frozenset(failed_whole), stamp)


_NEVER_TRIED = datetime.min.replace(tzinfo=UTC)
"""Where a user the fallback never tried stands in its order: before any other."""


def _last_tried(stamp: object, user_id: str) -> datetime:
    """When a kept request's :data:`_DIRECT_TRIED` says the fallback last tried its user
    ``user_id``, to order users by (one never tried, before any). A note that is no ISO
    8601 time (edited by hand, a number) counts as never tried, with a warning, rather
    than failing every bulk run's claim of the user."""
    if stamp is None:
        return _NEVER_TRIED
    try:
        if not isinstance(stamp, str):
            raise TypeError(f"a {type(stamp).__name__}, not ISO 8601 text")
        return aware(datetime.fromisoformat(stamp))
    except (TypeError, ValueError) as unreadable:
        log.warning(
            "user %r: a kept bulk request's %s note %r cannot be read (%s); the user counts "
            "as never tried by the Messages API fallback",
            user_id,
            _DIRECT_TRIED,
            stamp,
            unreadable,
        )
        return _NEVER_TRIED


class KeptBatches:
    """The rows a bulk run of ``version`` keeps in :data:`BULK_BATCHES`: the table made,
    the version's kept Message Batches read, a row's requests changed in place (a whole
    failure counted, the fallback's try noted, a short read counted), its batch's id set,
    and the row deleted once its results are recorded."""

    def __init__(self, store: EventStore, version: str) -> None:
        self.store = store
        self.version = version

    def create_table(self) -> None:
        """Create the table unless it is there; another run creating it at once is fine.
        The index of kept rows left missing after a failure is logged as a warning, not
        raised: the run still works, each claim reading more rows through the version's
        index."""
        try:
            with self.store.transaction() as connection:
                create_bulk_table(connection)
        except DBAPIError as error:
            with self.store.engine.connect() as connection:
                if not inspect(connection).has_table(BULK_BATCHES.name):
                    raise
                if not has_kept_index(connection):
                    log.warning(
                        "bulk run of version %r: the index of kept rows of %s could not be "
                        "made (%s: %s); claims read the version's rows through its index "
                        "instead until a later run makes it",
                        self.version,
                        BULK_BATCHES.name,
                        type(error.orig).__name__,
                        str(error.orig).splitlines()[0] if str(error.orig) else "",
                    )

    def unfinished(self) -> list[dict[str, Any]]:
        """The version's kept Message Batches, oldest first (claims and probes left aside)."""
        with self.store.engine.connect() as connection:
            return [r for r in self._rows(connection) if _requests(r)]

    def _rows(self, connection: Connection) -> list[dict[str, Any]]:
        """Every row of the version, its claims too, oldest first."""
        rows = connection.execute(
            select(BULK_BATCHES)
            .where(BULK_BATCHES.c.knowledge_version == self.version)
            .order_by(BULK_BATCHES.c.created_at)
        ).mappings()
        return [dict(r) for r in rows]

    def keep_failed_whole(self, row: dict[str, Any]) -> None:
        """Keep ``row``, whose Message Batch failed whole with server errors, for the next
        run to plan its messages again, counting one more such failure in each request
        (read back by :meth:`BulkReextraction._take_failed_whole`); each request keeps what
        the fallback noted in it (:meth:`note_tried`). A ``forget`` at once waits for the
        update instead of being undone by it (:meth:`_change_requests`)."""

        def counted(_: Connection, requests: dict[str, Any]) -> dict[str, Any]:
            return {
                k: {**r, _FAILING: int(r.get(_FAILING, 0)) + 1, _FAILED_WHOLE: True}
                for k, r in requests.items()
            }

        self._change_requests(row, counted)

    def note_tried(self, row: dict[str, Any], user_id: str) -> None:
        """Note in ``user_id``'s requests of the kept ``row`` that the Messages API fallback
        sends their messages now (:data:`_DIRECT_TRIED`, by the database's clock), before
        its first call: a run killed while that call waits (a timeout, SIGTERM, Ctrl-C)
        still moves the user behind the others for the next run. A row without the user's
        requests (forgotten meanwhile) is left as it is."""

        def noted(connection: Connection, requests: dict[str, Any]) -> dict[str, Any] | None:
            if not any(r.get("user") == user_id for r in requests.values()):
                return None
            now = _database_time(connection).isoformat()
            return {
                k: {**r, _DIRECT_TRIED: now} if r.get("user") == user_id else r
                for k, r in requests.items()
            }

        self._change_requests(row, noted)

    def _change_requests(
        self,
        row: dict[str, Any],
        change: Callable[[Connection, dict[str, Any]], dict[str, Any] | None],
    ) -> None:
        """Replace the requests of the kept ``row`` with what ``change`` makes of them
        (``None``: left as they are), in place. The row is read locked, so a ``forget`` at
        once waits for the update instead of being undone by it; its requests of a user
        forgotten before are gone already, and a row gone or emptied is left alone. Its
        stamp moves (:func:`projections.bulk_runs.restamped`), so a run that decoded it
        before decodes it again at its next claim of their user
        (:meth:`BulkReextraction._kept_for`)."""
        with self.store.transaction() as connection:
            kept = connection.execute(
                select(BULK_BATCHES.c.requests, BULK_BATCHES.c.created_at)
                .where(BULK_BATCHES.c.local_id == row["local_id"])
                .with_for_update()
            ).first()
            if kept is None or not kept.requests:
                return
            changed = change(connection, kept.requests)
            if changed is None:
                return
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == row["local_id"])
                .values(requests=changed, created_at=restamped(kept.created_at))
            )

    def count_short_read(self, local_id: str) -> int:
        """Count one more short read of the kept row ``local_id``'s results, kept in each
        of its requests (older memvees ignore the key; no column to add); returns how many
        reads were short so far (1 when the row is gone: another run collected it). The
        row is read locked, as :meth:`keep_failed_whole` reads it."""
        with self.store.transaction() as connection:
            requests = connection.execute(
                select(BULK_BATCHES.c.requests)
                .where(BULK_BATCHES.c.local_id == local_id)
                .with_for_update()
            ).scalar()
            if not requests:
                return 1
            reads = max(int(r.get(_SHORT_READS, 0)) for r in requests.values()) + 1
            counted = {k: {**r, _SHORT_READS: reads} for k, r in requests.items()}
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == local_id)
                .values(requests=counted)
            )
        return reads

    def set_batch_id(self, local_id: str, batch_id: str) -> None:
        """Keep the id of the Message Batch made of the kept row ``local_id``."""
        with self.store.transaction() as connection:
            connection.execute(
                BULK_BATCHES.update()
                .where(BULK_BATCHES.c.local_id == local_id)
                .values(api_batch_id=batch_id)
            )

    def kept_batch_ids(self) -> set[str]:
        """The ids of the Message Batches every kept run (of any version) is waiting for."""
        with self.store.engine.connect() as connection:
            found = connection.execute(
                select(BULK_BATCHES.c.api_batch_id).where(BULK_BATCHES.c.api_batch_id.is_not(None))
            )
            return {batch_id for (batch_id,) in found}

    def delete(self, local_id: str) -> None:
        """Delete the kept row ``local_id``: nothing more is collected from it."""
        with self.store.transaction() as connection:
            connection.execute(BULK_BATCHES.delete().where(BULK_BATCHES.c.local_id == local_id))
