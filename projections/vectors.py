"""The vector index: embeddings of a user's entries and messages, for semantic ranking.

It is a projection like the others (dropped by a rebuild, erased by ``forget``), with
one difference: an embedding model computes it, so it is filled outside the append
transaction: in the background after writes, and for one user right before that user is
searched. A search embeds what is missing for a short while only (see
:meth:`VectorIndex.fill`'s budget): a long backlog never holds up an agent's turn, and
what is left waits for the background, ranked lexically meanwhile. Vectors are read for
one user only, then ranked by cosine similarity in memory.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from itertools import compress
from typing import Any, Protocol, TypeVar

import numpy as np
from sqlalchemy import (
    BindParameter,
    Connection,
    Engine,
    Executable,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from events import user_log_id
from events.credentials import configured_secrets, credentials_of, redact, shows_credentials
from events.errors import (
    INPUT_REFUSED_STATUSES,
    EmbedderError,
    MemveeError,
    RejectedTextError,
    first_line,
)
from events.transcoding import micros_of
from events.user_log import LIVE_KNOWLEDGE
from projections.search import spoken
from projections.tables import ProjectionTables

__all__ = [
    "CACHE_BYTES",
    "ContainedEmbedder",
    "Embed",
    "NamedEmbedder",
    "VectorIndex",
    "contained",
    "drop_vectors_of_gone_items",
    "hold_off_vector_writes",
    "unfit",
]

Embed = Callable[[Sequence[str]], list[list[float]]]
"""Maps texts to unit vectors (an Embedder's ``embed``)."""


def contained(embed: Embed, secrets: Callable[[], Sequence[str]] = configured_secrets) -> Embed:
    """``embed``, raising :class:`EmbedderError` for what it raises that is no ``Exception``
    (``KeyboardInterrupt``, ``SystemExit``): a user's embedder failing so on a memvee
    thread fails that call, as any embedder failure, instead of ending the thread (on an
    actor's thread, pykka would stop every actor).

    An error whose traceback shows one of ``secrets`` (the credentials the embedder or its
    HTTP client keeps, or the environment's: an API key echoed by a 401) is raised again
    as one told without them (:func:`_told_without`), since every path that embeds logs
    what it raised."""

    def call(texts: Sequence[str]) -> list[list[float]]:
        try:
            return embed(texts)
        except Exception as error:
            shown = secrets()
            if shows_credentials("".join(traceback.format_exception(error)), shown):
                raise _told_without(error, shown) from None
            raise
        except BaseException as error:
            shown = secrets()
            said = f": {redact(first_line(error), shown)}" if str(error).strip() else ""
            told = EmbedderError(f"the embedder raised {type(error).__name__}{said}")
            if shows_credentials("".join(traceback.format_exception(error)), shown):
                raise told from None
            raise told from error

    return call


def _told_without(error: Exception, secrets: Sequence[str]) -> MemveeError:
    """``error`` as an embedder failure whose text shows none of ``secrets``: a
    :class:`RejectedTextError` still for a text refused, else an :class:`EmbedderError`.
    Raised ``from None``, it keeps ``error`` as its context, unshown, where
    :func:`_rejects_text` still reads the HTTP status."""
    kind = RejectedTextError if isinstance(error, RejectedTextError) else EmbedderError
    return kind(f"the embedder raised {type(error).__name__}: {redact(first_line(error), secrets)}")


class NamedEmbedder(Protocol):
    """What the vector projection needs of an embedder: its model's name, the length of
    its vectors and ``embed``."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        ...


class ContainedEmbedder:
    """A user's ``embedder`` with its ``embed`` :func:`contained`: wrapped once where the
    embedder enters memvee, so that every path that embeds (a search, the background
    fill, the entries shown beside a batch) fails alike on what is no ``Exception``, and
    logs no failure showing the credentials the embedder or its clients keep (an API key,
    a token, a header's, a URL's: :func:`~events.credentials.carried_by`, as an
    extractor's are read) or the environment gives (any variable its name says holds one:
    :func:`~events.credentials.configured_secrets`, which the loggers' filter reads too)."""

    def __init__(self, embedder: NamedEmbedder) -> None:
        self.wrapped = embedder
        self.name = embedder.name
        self.dimensions = embedder.dimensions
        self.embed = contained(embedder.embed, lambda: credentials_of(embedder))


log = logging.getLogger("memvee.projections")

_BATCH = 8
"""Texts per batch of a fill: small, so that a search's first batch (always embedded)
is short, and a background fill soon gives the model over to a search that starts (with
32, a search behind a backlog of long texts took 1.0 s instead of 0.6 s)."""
_HOLD_OFF = 0.5
"""The longest a background fill waits for searches to end before its next batch."""
_READ_BY_ID = 500
"""How many entry vectors one statement reads by id."""
_ENTRY_OVERHEAD = 160
"""The memory a kept entry vector takes beside its bytes: its id's string, the bytes
object's header and its dict slot (tracemalloc: 168 B an entry at 384 dims, 156 at 64)."""

_FILLED_KEPT = 100_000
"""Users whose last filled log version is remembered (least recent forgotten)."""
_CANARY = "memvee"
"""A text every embedder takes: whether it does tells a text the embedder refuses (one
too long for an embedding API, say) from an embedder that is down."""

_STRIKES = 3
"""The fills, :data:`_STRIKE_GAP` apart at least, a text must fail alone in (while the
embedder takes others) before it is taken for one the embedder refuses, unless the
embedder says so at once."""
_STRIKE_GAP = 60.0
"""The seconds between two failures of a text that both count: the fills of a burst of
timeouts or of 429s (a search's, the background's after each write) count as one."""

_T = TypeVar("_T")

_Missing = tuple[str, str, str]
"""An item without a vector: its id, its text and its kind (``entry`` or ``message``)."""


def unfit(vector: object, dimensions: int | None) -> str | None:
    """What makes ``vector`` no vector of an embedder of ``dimensions`` floats (``None``:
    nothing): one of another length ranks nothing beside the others, and one holding a
    NaN or an infinity ranks nothing at all."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        return "no sequence of floats"
    if array.ndim != 1 or (dimensions is not None and array.size != dimensions):
        return f"{array.size} dimensions, not {dimensions}"
    if not np.isfinite(array).all():
        return "values that are not finite numbers"
    return None


def hold_off_vector_writes(connection: Connection, tables: ProjectionTables) -> None:
    """Make vector writes of ``tables`` wait until ``connection``'s transaction ends, as
    an erasure must: a vector embedded meanwhile is then checked against what it left.

    On SQLite the transaction holds the database's one write lock already.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"LOCK TABLE {tables.vectors.name} IN EXCLUSIVE MODE"))


def drop_vectors_of_gone_items(
    connection: Connection, tables: ProjectionTables, log_id: str
) -> int:
    """Delete the log's vectors (of every model) whose entry or message ``tables`` no
    longer hold; returns how many. One user's rebuild keeps their vectors, as a rebuild
    does, but only those of the items its refold gives again: a vector of an item gone
    ranks nothing and still tells what its text said."""
    v, k, m = tables.vectors, tables.knowledge, tables.messages
    entries = select(k.c.entry_id).where(k.c.log_id == log_id)
    messages = select(m.c.message_id).where(m.c.log_id == log_id)
    gone = or_(
        and_(v.c.kind == "entry", v.c.item_id.not_in(entries)),
        and_(v.c.kind == "message", v.c.item_id.not_in(messages)),
    )
    return int(connection.execute(delete(v).where(v.c.log_id == log_id, gone)).rowcount or 0)


CACHE_BYTES = 320 * 2**20
"""The most memory the cached message and entry vectors take together: some 200,000 of
the default embedder's 384 floats, 50,000 of an embedding API's 1,536 (it counted
vectors, so a longer embedder could hold GBs)."""


class VectorIndex:
    """Reads and fills one set of projection tables' vectors for one model.

    The message vectors of recently searched users are also kept in memory, each with
    when its message was sent (at most ``cache_bytes`` of vectors in all, whatever their
    length, least recently used users dropped first): a search then costs one count
    query and one matrix product, not a read of every vector, a look into the past as
    well. The cache is kept exact: it is filled from the table, extended by
    :meth:`fill`, reloaded whenever the user's message count says something was added
    elsewhere, and dropped by the fill that begins each search once the log's beginning
    says another process forgot the user (who may have written as many messages again
    since).

    The vectors of the current entries a search beside a batch ranked are kept too, by
    entry id, within the same bytes: which entries are current, and their order, is
    read every time, so what is ranked is what a read of every vector gives, but only
    the vectors of entries new since the last batch are read (a backlog's batches read
    what its batch added, not every entry's vector again). Both kinds share one order of
    use by log: past ``cache_bytes`` the logs used longest ago lose both.

    A user erased by another process stays in this one's memory until the next search
    of theirs (whose fill sees the log began again, or is gone) or until evicted: only
    :meth:`forget` in this process drops it at once.
    """

    def __init__(
        self,
        tables: ProjectionTables,
        model: str,
        *,
        dimensions: int | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.tables = tables
        self.model = model
        self.dimensions = dimensions
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._searches = 0
        self._searches_ended = threading.Condition()
        self._cache: OrderedDict[str, _Vectors] = OrderedDict()
        self._filled: OrderedDict[str, tuple[int, datetime, bool]] = OrderedDict()
        """Per log, the version and beginning a fill covered, and whether with messages."""
        self._refused: OrderedDict[str, set[tuple[str, str]]] = OrderedDict()
        """Per log, the (kind, id) of items whose text the embedder refuses while it
        embeds others: left out of later fills (in this process), ranked lexically."""
        self._strikes: OrderedDict[str, dict[tuple[str, str], tuple[int, float]]] = OrderedDict()
        """Per log, how many fills each (kind, id) failed alone in, and when the last one
        that counted did (see :data:`_STRIKES`)."""
        self._fills: dict[str, list[threading.Event]] = {}
        """Per log, the events of the fills that run, set when the log is forgotten."""
        self._entry_vectors: dict[str, dict[str, dict[str, bytes]]] = {}
        """Per log, per knowledge version, the vector bytes of the current entries the last
        search beside a batch ranked, by entry id (an id is a UUID4 and its vector never
        changes): the next search reads only the vectors of entries new to it."""
        self._entry_held: dict[str, int] = {}
        """Per log, the memory its kept entry vectors take (see :func:`_entry_bytes`)."""
        self._used: OrderedDict[str, None] = OrderedDict()
        """The logs with message or entry vectors kept, the one used longest ago first."""
        self._forgets: OrderedDict[str, int] = OrderedDict()
        """Per log, the number of its last :meth:`forget` (counted over every log), the
        :data:`FORGETS_KEPT` latest: a read of its entry vectors that one overlapped keeps
        nothing (it may have read the erased log's)."""
        self._forgets_let_go = 0
        """The highest number let go of from :attr:`_forgets`: what any other log reads as
        its last forget's, so a read overlapping a forget whose number was let go still
        sees a change."""
        self._forgets_counted = 0
        v, k, m, u = tables.vectors, tables.knowledge, tables.messages, tables.users
        # What every search runs, built once (building a statement costs more than
        # running it on a user's rows).
        mine: BindParameter[Any] = bindparam("log_id")
        self._version = select(u.c.version, u.c.created_at).where(u.c.log_id == mine)
        self._began = select(u.c.created_at).where(u.c.log_id == mine)
        self._message_count = select(func.count()).where(m.c.log_id == mine)

        def embedded(kind: str) -> Any:
            return select(v.c.item_id).where(
                v.c.log_id == mine, v.c.model == model, v.c.kind == kind
            )

        self._unembedded_entries = (
            select(k.c.entry_id, k.c.text)
            .where(k.c.log_id == mine, k.c.entry_id.not_in(embedded("entry")))
            .order_by(k.c.version.desc(), k.c.ordinal)
        )
        self._unembedded_messages = (
            select(m.c.message_id, m.c.content, m.c.name)
            .where(m.c.log_id == mine, m.c.message_id.not_in(embedded("message")))
            .order_by(m.c.seq.desc())
        )
        # Each row read with the key that puts it newest first (see _newest_first): a
        # stable ranking over them breaks ties as lexical ranking does, the same way
        # before and after a rebuild, which stores the rows in another order. No two
        # messages of a log share a seq: the sending time after it breaks no tie.
        self._message_vectors = (
            select(v.c.item_id, v.c.vector, m.c.seq, m.c.sent_at)
            .join(m, m.c.message_id == v.c.item_id)
            .where(v.c.log_id == mine, v.c.model == model, v.c.kind == "message")
        )
        version_entries = (
            select(v.c.item_id, v.c.vector, k.c.valid_from, k.c.version, k.c.ordinal)
            .join(k, k.c.entry_id == v.c.item_id)
            .where(
                v.c.log_id == bindparam("log_id"),
                v.c.model == model,
                v.c.kind == "entry",
                k.c.knowledge_version == bindparam("version"),
            )
        )
        # By key alone, owner checked on each row (as in _insert_kept).
        self._messages_by_id = select(v.c.item_id, v.c.vector, v.c.log_id, v.c.kind).where(
            v.c.item_id.in_(bindparam("ids", expanding=True)), v.c.model == model
        )
        self._entries_by_id = self._messages_by_id  # owner and kind checked on each row
        self._entries_now = version_entries.where(k.c.valid_until.is_(None))
        # The current entries of a version that have a vector of the model, without the
        # vectors, each checked by an EXISTS on the vectors' key (PostgreSQL without
        # statistics plans a bitmap heap scan per row: slower than the join of
        # _entries_now, which a read with nothing kept uses instead).
        has_vector = (
            select(v.c.item_id).where(v.c.item_id == k.c.entry_id, v.c.model == model).exists()
        )
        self._current_keys = select(k.c.entry_id, k.c.valid_from, k.c.version, k.c.ordinal).where(
            k.c.log_id == mine,
            k.c.knowledge_version == bindparam("version"),
            k.c.valid_until.is_(None),
            has_vector,
        )
        at = bindparam("at", type_=k.c.valid_from.type)
        self._entries_then = version_entries.where(
            k.c.valid_from <= at, or_(k.c.valid_until.is_(None), k.c.valid_until > at)
        )

    def fill(
        self,
        engine: Engine,
        user_id: str,
        embed: Embed,
        *,
        messages: bool,
        stop: Callable[[], bool] = lambda: False,
        budget: float | None = None,
        background: bool = False,
        writing: Callable[[], AbstractContextManager[bool]] = lambda: nullcontext(True),
    ) -> frozenset[str]:
        """Embed the user's entries (and messages) that have no vector yet, newest first;
        returns the ids of those it left without one (none when it took up every one).

        A fill remembers the log version it covered: while the log has not moved, the next
        one is a single lookup. That lookup also reads when the log began: a log another
        process erased and began again is another log, whatever its version and message
        count, so what this index remembers of the erased one (its cached vectors among
        it) is dropped first. ``stop`` is asked between batches of texts; once it says
        so, the fill ends early (what it embedded is kept). With ``budget`` (a search's),
        it ends after the batch during which ``budget`` seconds passed: a search embeds
        a short backlog whole and, of a long one (an import, a rebuild, a burst of
        writes), what fits, leaving the rest to the background filler and to lexical
        ranking meanwhile. A ``background`` fill holds off between batches while a
        search runs (see :meth:`searching`), half a second at most each time. Each batch's
        vectors are stored within ``writing()``, and only if it yields ``True``: the
        background filler's says no once it was stopped, so a batch an embedder answers
        after ``close`` is dropped, never written.

        A text the embedder refuses while it takes others is left without a vector, with
        a warning, so that one message no embedding API accepts never keeps the rest of
        its user from semantic ranking (one that fails alone otherwise, as in a burst of
        timeouts, is embedded again by later fills: see :meth:`_strike`); an embedder
        that takes nothing at all, or gives vectors of another length than its
        ``dimensions``, fails the fill. A vector that holds a NaN or an infinity is not
        stored: it counts as a failure of its text, which is left to a later fill.

        Once :meth:`forget` is called for the user, the fill sends no further batch to the
        embedder (one already out finishes; its vectors are taken back as the erasure's).
        ``embed`` is a :class:`ContainedEmbedder`'s: what a user's embedder raises that is
        no ``Exception`` then fails it as any embedder failure.
        """
        log_id = str(user_log_id(user_id))
        with self._erasures_watched(log_id) as erased:
            missing: list[tuple[str, str, str]] = []
            with engine.connect() as connection:
                stored = connection.execute(self._version, {"log_id": log_id}).first()
                version, began = (None, None) if stored is None else stored
                self._drop_unless_began(log_id, began)
                with self._lock:
                    done = self._filled.get(log_id)
                covered = (
                    done is not None and done[:2] == (version, began) and (done[2] or not messages)
                )
                if version is not None and covered:
                    return frozenset()

                rows = connection.execute(self._unembedded_entries, {"log_id": log_id})
                missing += [(item, text, "entry") for item, text in rows]
                if messages and not self._complete(connection, log_id):
                    rows = connection.execute(self._unembedded_messages, {"log_id": log_id})
                    missing += [(item, spoken(text, name), "message") for item, text, name in rows]
            with self._lock:
                refused = set(self._refused.get(log_id, ()))
            missing = [m for m in missing if (m[2], m[0]) not in refused]
            deadline = None if budget is None else time.monotonic() + budget
            taken = 0
            unstored: list[_Missing] = []
            while taken < len(missing) and not stop():
                if taken and deadline is not None and time.monotonic() >= deadline:
                    break
                if background and not self._hold_off_for_searches(stop):
                    break
                if erased.is_set():
                    log.info("user %r was forgotten: the fill of their vectors ends", user_id)
                    return frozenset(item for item, _, _ in missing[taken:])
                chunk = missing[taken : taken + _BATCH]
                taken += len(chunk)
                embedded = self._embedded(user_id, log_id, chunk, embed)
                self._check_lengths(embedded)
                embedded = self._finite(user_id, log_id, embedded)
                vectored = {item for (item, _, _), _ in embedded}
                unstored += [m for m in chunk if m[0] not in vectored]
                values = [
                    {
                        "item_id": item,
                        "model": self.model,
                        "log_id": log_id,
                        "kind": kind,
                        "vector": np.asarray(vector, dtype=np.float32).tobytes(),
                    }
                    for (item, _, kind), vector in embedded
                ]
                with writing() as allowed:
                    if not allowed:
                        return frozenset(item for item, _, _ in missing[taken - len(chunk) :])
                    if values:
                        with engine.begin() as connection:
                            self._insert_kept(connection, log_id, values)
            if stop():
                return frozenset(item for item, _, _ in missing[taken:])
            if messages:
                with engine.connect() as connection:
                    if not self._complete(connection, log_id):
                        self._load(connection, log_id, erased)
            left = [*self._to_retry(log_id, unstored), *missing[taken:]]
            if left:  # not covered: the next fill takes up the rest
                return frozenset(item for item, _, _ in left)
            with self._lock:  # a log erased meanwhile may reach this version anew
                if version is not None and began is not None and not erased.is_set():
                    self._filled[log_id] = (int(version), began, messages)
                    self._filled.move_to_end(log_id)
                    while len(self._filled) > _FILLED_KEPT:
                        self._filled.popitem(last=False)
            return frozenset()

    def refused(self, user_id: str) -> frozenset[str]:
        """The ids of the user's items whose text the embedder refuses (as this process
        has seen): they have no vector, so their words alone rank them."""
        with self._lock:
            found = self._refused.get(str(user_log_id(user_id)), ())
            return frozenset(item for _, item in found)

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Mark a search embedding its user's backlog and its query: background fills
        wait between batches until it ends (half a second at most each time), so the
        search has the model to itself."""
        with self._searches_ended:
            self._searches += 1
        try:
            yield
        finally:
            with self._searches_ended:
                self._searches -= 1
                self._searches_ended.notify_all()

    def _hold_off_for_searches(self, stop: Callable[[], bool]) -> bool:
        """Wait until no search runs, for at most :data:`_HOLD_OFF` seconds (searches that
        never pause must not stop the background for good); ``False`` if ``stop()`` said
        so first."""
        until = time.monotonic() + _HOLD_OFF
        with self._searches_ended:
            while self._searches and time.monotonic() < until:
                if stop():
                    return False
                self._searches_ended.wait(min(0.1, max(0.0, until - time.monotonic())))
        return not stop()

    def entries(
        self,
        connection: Connection,
        user_id: str,
        query: Sequence[float],
        limit: int,
        as_of: datetime | None = None,
        version: str = LIVE_KNOWLEDGE,
    ) -> list[tuple[str, float]]:
        """The ids of the user's entries (live, or of knowledge ``version``) valid now (or
        at ``as_of``) nearest ``query``."""
        log_id = str(user_log_id(user_id))
        binds = {"log_id": log_id, "version": version}
        if as_of is None:
            found = connection.execute(self._entries_now, binds)
        else:
            at = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
            found = connection.execute(self._entries_then, {**binds, "at": at})
        rows = _newest_first(found.all())
        return _nearest(self._of_its_length(connection, log_id, rows), query, limit)

    def message_vectors(
        self, connection: Connection, user_id: str, ids: Sequence[str]
    ) -> dict[str, list[float]]:
        """The stored vectors of the user's messages among ``ids`` (those embedded yet, of
        the embedder's length)."""
        if not ids:
            return {}
        log_id = str(user_log_id(user_id))
        found = connection.execute(self._messages_by_id, {"ids": list(ids)})
        return {
            item: np.frombuffer(vector, dtype=np.float32).tolist()
            for item, vector, owner, kind in found
            if owner == log_id
            and kind == "message"
            and (self.dimensions is None or len(vector) == 4 * self.dimensions)
        }

    def entries_near_each(
        self,
        connection: Connection,
        user_id: str,
        queries: Sequence[Sequence[float]],
        limit: int,
        version: str = LIVE_KNOWLEDGE,
        forgotten: int | None = None,
    ) -> list[list[str]]:
        """For each of ``queries``, the ids of the ``limit`` current entries of knowledge
        ``version`` nearest it, the nearest first: the user's vectors are gathered once
        for them all, those read for the last batch kept (see :meth:`_current_entry_rows`).

        ``forgotten`` is :meth:`forgotten` of the user as read before ``connection`` first
        read: a :meth:`forget` of theirs since then may have erased what it reads, which is
        then not kept."""
        log_id = str(user_log_id(user_id))
        rows = self._current_entry_rows(
            connection, log_id, version, self.forgotten(user_id) if forgotten is None else forgotten
        )
        vectors = _Vectors.of(_newest_first(rows))
        return [[item for item, _ in vectors.nearest(query, limit)] for query in queries]

    def forgotten(self, user_id: str) -> int:
        """A number that changes whenever :meth:`forget` is called for the user on this
        index (and, seldom, when another user's forget lets go of the user's mark)."""
        with self._lock:
            return self._forgets.get(str(user_log_id(user_id)), self._forgets_let_go)

    def _current_entry_rows(
        self, connection: Connection, log_id: str, version: str, forgotten: int
    ) -> list[tuple[Any, ...]]:
        """The rows (id, vector bytes, valid from, version, ordinal) of the log's current
        entries of knowledge ``version`` that have a vector of the embedder's length: the
        very rows a read of them all gives. Which entries and their order are read each
        time; the vector bytes only of the entries the last such read did not give (see
        :attr:`_entry_vectors`), so a backlog's batches do not read and decode every
        entry's vector again. With none kept, all are read in one join, faster than the
        listing and the reads by id."""
        with self._lock:
            kept = dict(self._entry_vectors.get(log_id, {}).get(version, {}))
        if not kept:
            found = connection.execute(self._entries_now, {"log_id": log_id, "version": version})
            rows = list(self._of_its_length(connection, log_id, found.all()))
            self._keep_entry_vectors(log_id, version, {row[0]: row[1] for row in rows}, forgotten)
            return rows
        keys = connection.execute(self._current_keys, {"log_id": log_id, "version": version}).all()
        unread = [row[0] for row in keys if row[0] not in kept]
        for start in range(0, len(unread), _READ_BY_ID):
            found = connection.execute(
                self._entries_by_id, {"ids": unread[start : start + _READ_BY_ID]}
            )
            mine = [(i, b) for i, b, owner, kind in found if owner == log_id and kind == "entry"]
            kept.update(self._of_its_length(connection, log_id, mine))
        rows = [(row[0], kept[row[0]], *row[1:]) for row in keys if row[0] in kept]
        self._keep_entry_vectors(log_id, version, {row[0]: row[1] for row in rows}, forgotten)
        return rows

    def _keep_entry_vectors(
        self, log_id: str, version: str, vectors: dict[str, bytes], forgotten: int
    ) -> None:
        """Keep ``vectors`` as the log's current entries' of ``version`` (those ended since
        the last read are let go), unless a :meth:`forget` came since ``forgotten`` was
        read; the logs used longest ago are dropped past ``cache_bytes``."""
        with self._lock:
            if self._forgets.get(log_id, self._forgets_let_go) != forgotten:
                return
            kept = self._entry_vectors.setdefault(log_id, {})
            kept[version] = vectors
            self._entry_held[log_id] = _entry_bytes(kept)
            self._use(log_id)
            self._evict()

    def _use(self, log_id: str) -> None:
        """Mark the log's kept vectors, of either kind, as the ones used last (under the
        lock)."""
        self._used[log_id] = None
        self._used.move_to_end(log_id)

    def _evict(self) -> None:
        """Drop the message and entry vectors of the logs used longest ago, both kinds
        together, until what is kept fits in ``cache_bytes`` (under the lock); the last log
        used keeps its own, whatever their size."""
        total = sum(c.nbytes for c in self._cache.values()) + sum(self._entry_held.values())
        while total > self.cache_bytes and len(self._used) > 1:
            log_id, _ = self._used.popitem(last=False)
            dropped = self._cache.pop(log_id, None)
            total -= (0 if dropped is None else dropped.nbytes) + self._entry_held.pop(log_id, 0)
            self._entry_vectors.pop(log_id, None)

    def messages(
        self,
        connection: Connection,
        user_id: str,
        query: Sequence[float],
        limit: int,
        as_of: datetime | None = None,
        erased: threading.Event | None = None,
    ) -> list[tuple[str, float]]:
        """The ids of the user's messages (sent by ``as_of``, when given) nearest
        ``query``. The user's vectors are cached with when each message was sent, so a
        look into the past ranks those of the messages sent by then without reading them
        again. The cache is checked against the log by the :meth:`fill` each search begins
        with, not again here (no query more).

        ``connection`` may see the log as it was before an erasure: the vectors it reads
        are cached only with ``erased``, from :meth:`watching` entered before
        ``connection`` first read, and only if it is not set (the log was not forgotten
        since)."""
        log_id = str(user_log_id(user_id))
        with self._lock:
            cached = self._cache.get(log_id)
            if cached is not None:
                self._use(log_id)
        if cached is None:
            cached = self._load(connection, log_id, erased)
        if as_of is not None:
            cached = cached.sent_by(as_of)
        return cached.nearest(query, limit)

    def forget(self, user_id: str) -> None:
        """Drop the user's cached vectors (their rows were erased or rebuilt) and stop the
        fills of their log that run: the texts those read before the erasure are not sent
        to the embedder any more."""
        log_id = str(user_log_id(user_id))
        with self._lock:
            self._forgets_counted += 1
            self._forgets[log_id] = self._forgets_counted
            self._forgets.move_to_end(log_id)
            while len(self._forgets) > FORGETS_KEPT:
                self._forgets_let_go = self._forgets.popitem(last=False)[1]
            self._drop(log_id)
            for erased in self._fills.get(log_id, ()):
                erased.set()

    def _drop_unless_began(self, log_id: str, began: datetime | None) -> None:
        """Drop what is remembered of the log unless it is of the log that began at
        ``began`` (``None``: no log is stored): another process forgot the user since it
        was read."""
        with self._lock:
            cached = self._cache.get(log_id)
            done = self._filled.get(log_id)
            if (cached is not None and cached.began != began) or (
                done is not None and done[1] != began
            ):
                self._drop(log_id)

    def _drop(self, log_id: str) -> None:
        """Forget the log's cached vectors, covered version and refused texts (under the
        lock)."""
        self._cache.pop(log_id, None)
        self._entry_vectors.pop(log_id, None)
        self._entry_held.pop(log_id, None)
        self._used.pop(log_id, None)
        self._filled.pop(log_id, None)
        self._refused.pop(log_id, None)
        self._strikes.pop(log_id, None)

    @contextmanager
    def watching(self, user_id: str) -> Iterator[threading.Event]:
        """An event :meth:`forget` sets if it erases the user's log from now until the
        block ends: a search enters it before it opens its connection, so that what that
        connection reads of a log erased meanwhile is not cached (see :meth:`messages`)."""
        with self._erasures_watched(str(user_log_id(user_id))) as erased:
            yield erased

    @contextmanager
    def _erasures_watched(self, log_id: str) -> Iterator[threading.Event]:
        """An event :meth:`forget` sets if it erases the log while a fill or a search
        runs. Watched from before they read: an erasure committed earlier leaves nothing
        to read, one committed later sets the event."""
        erased = threading.Event()
        with self._lock:
            self._fills.setdefault(log_id, []).append(erased)
        try:
            yield erased
        finally:
            with self._lock:
                watching = self._fills[log_id]
                watching.remove(erased)
                if not watching:
                    del self._fills[log_id]

    def _embedded(
        self, user_id: str, log_id: str, chunk: list[_Missing], embed: Embed
    ) -> list[tuple[_Missing, list[float]]]:
        """``chunk``'s items with their vectors; when the embedder refuses the batch but
        takes other text, the batch is halved until the texts it refuses stand alone."""
        try:
            return list(zip(chunk, embed([text for _, text, _ in chunk]), strict=True))
        except Exception as error:
            self._check_alive(embed, error)
            if len(chunk) == 1:
                self._strike(user_id, log_id, chunk[0], error)
                return []
            half = len(chunk) // 2
            return [
                *self._embedded(user_id, log_id, chunk[:half], embed),
                *self._embedded(user_id, log_id, chunk[half:], embed),
            ]

    def _strike(self, user_id: str, log_id: str, missing: _Missing, error: Exception) -> None:
        """Count a fill in which the item's text failed alone while the embedder took
        others. It is refused (left out of this process's later fills) once the error
        says the text itself is rejected, or after :data:`_STRIKES` fills far enough
        apart; until then a later fill embeds it again."""
        item, _, kind = missing
        key, now = (kind, item), time.monotonic()
        with self._lock:
            strikes = _remembered(self._strikes, log_id, dict)
            count, last = strikes.get(key, (0, now - _STRIKE_GAP))
            if _rejects_text(error):
                count = _STRIKES
            elif now - last >= _STRIKE_GAP:
                count, last = count + 1, now
            strikes[key] = (count, last)
            refused = count >= _STRIKES
            if refused:
                _remembered(self._refused, log_id, set).add(key)
        if refused:
            log.warning(
                "user %r: the embedder refuses the text of %s %s (%s); it is ranked lexically only",
                user_id,
                kind,
                item,
                error,
            )
        else:
            log.warning(
                "user %r: the embedder failed on the text of %s %s (%s); a later fill "
                "embeds it again",
                user_id,
                kind,
                item,
                error,
            )

    def _finite(
        self, user_id: str, log_id: str, embedded: list[tuple[_Missing, list[float]]]
    ) -> list[tuple[_Missing, list[float]]]:
        """``embedded`` without the vectors holding a NaN or an infinity (a glitch of the
        model or its API): stored, one would leave its item unfindable by meaning for good;
        left out, it is a strike of its text (see :meth:`_strike`), so a later fill embeds
        it again, and a text the embedder never gives a finite vector is at last refused."""
        kept = []
        for pair in embedded:
            missing, vector = pair
            problem = unfit(vector, self.dimensions)
            if problem is None:
                kept.append(pair)
            else:
                self._strike(user_id, log_id, missing, MemveeError(f"a vector of {problem}"))
        return kept

    def _to_retry(self, log_id: str, unstored: list[_Missing]) -> list[_Missing]:
        """The items of ``unstored`` a later fill embeds again: all but those refused."""
        with self._lock:
            refused = self._refused.get(log_id, set())
            return [m for m in unstored if (m[2], m[0]) not in refused]

    def _check_lengths(self, embedded: list[tuple[_Missing, list[float]]]) -> None:
        """Fail as a failing embedder does when it gives vectors of another length than
        it declares: stored, they would be dropped as another model's on reading, and
        every later fill would send the user's whole history again."""
        if self.dimensions is None:
            return
        wrong = next((n for _, v in embedded if (n := len(v)) != self.dimensions), None)
        if wrong is not None:
            raise MemveeError(
                f"the embedder {self.model!r} gives vectors of {wrong} dimensions, not the "
                f"{self.dimensions} it declares: give it the dimensions its model gives"
            )

    @staticmethod
    def _check_alive(embed: Embed, error: Exception) -> None:
        """Raise ``error`` again unless the embedder takes a text it must take: then the
        embedder is down (or misconfigured), not the texts it was given at fault."""
        try:
            embed([_CANARY])
        except Exception:
            raise error from None

    def _of_its_length(self, connection: Connection, log_id: str, rows: Sequence[Any]) -> Any:
        """``rows`` (id, vector bytes) of the embedder's length; the others (its model
        changed under the same name) are taken away, to be embedded again as vectors
        never made, instead of failing every search."""
        if self.dimensions is None:
            return rows
        size = 4 * self.dimensions
        other = [row[0] for row in rows if len(row[1]) != size]
        if not other:
            return rows
        v = self.tables.vectors
        assert connection.engine is not None
        with connection.engine.begin() as writer:
            writer.execute(
                delete(v).where(
                    v.c.log_id == log_id, v.c.model == self.model, v.c.item_id.in_(other)
                )
            )
        log.warning(
            "%d vectors of another length than the embedder %r gives (%d) were dropped, "
            "to be embedded again",
            len(other),
            self.model,
            self.dimensions,
        )
        with self._lock:
            self._filled.pop(log_id, None)
        return [row for row in rows if len(row[1]) == size]

    def _complete(self, connection: Connection, log_id: str) -> bool:
        """Whether the cache holds a vector of every message of the log the embedder takes."""
        with self._lock:
            cached = self._cache.get(log_id)
            refused = sum(kind == "message" for kind, _ in self._refused.get(log_id, ()))
        if cached is None:
            return False
        count = connection.execute(self._message_count, {"log_id": log_id}).scalar()
        return cached.count + refused == int(count or 0)

    def _load(
        self, connection: Connection, log_id: str, erased: threading.Event | None
    ) -> _Vectors:
        """Read the log's message vectors, and keep them in the cache if the log's
        erasures were watched (``erased``, from before ``connection`` first read) and
        none came: the vectors read may be the erased log's, which a new log's count
        could pass for. They are kept with when the log began, read before them: a log
        erased and begun again between the two reads is then only reloaded once more."""
        began = connection.execute(self._began, {"log_id": log_id}).scalar()
        rows = _newest_first(connection.execute(self._message_vectors, {"log_id": log_id}).all())
        loaded = _Vectors.of_messages(self._of_its_length(connection, log_id, rows), began)
        with self._lock:
            if erased is None or erased.is_set():
                return loaded
            self._cache[log_id] = loaded
            self._use(log_id)
            self._evict()
        return loaded

    def _insert_kept(self, connection: Connection, log_id: str, values: list[Any]) -> None:
        """Insert the vectors, then take back those whose entry or message is no longer
        stored: the user was forgotten while they were embedded, and a vector gives away
        what its text said.

        The insert holds the write lock (SQLite) or a lock on the vector table that an
        erasure waits for (see :func:`hold_off_vector_writes`), so the check that follows
        reads every erasure committed before, and none commits until this one ends.
        """
        connection.execute(self._insert_new(connection), values)
        k, m, v = self.tables.knowledge, self.tables.messages, self.tables.vectors
        kept: set[str] = set()
        for kind, column, table in (("entry", k.c.entry_id, k), ("message", m.c.message_id, m)):
            wanted = [row["item_id"] for row in values if row["kind"] == kind]
            if wanted:
                # By key alone, owner checked on each row: naming the owner in the WHERE
                # sends SQLite through the user's whole log_id index instead.
                found = select(column, table.c.log_id).where(column.in_(wanted))
                kept.update(item for item, owner in connection.execute(found) if owner == log_id)
        gone = [row["item_id"] for row in values if row["item_id"] not in kept]
        if gone:
            connection.execute(
                delete(v).where(
                    v.c.log_id == log_id, v.c.model == self.model, v.c.item_id.in_(gone)
                )
            )

    def _insert_new(self, connection: Connection) -> Executable:
        v = self.tables.vectors
        if connection.dialect.name == "postgresql":
            return pg_insert(v).on_conflict_do_nothing()
        return sqlite_insert(v).on_conflict_do_nothing()


class _Vectors:
    """One log's vectors as a matrix, with their ids, when the log began (to tell them
    from a log of the same user erased and begun again) and, for messages, when each was
    sent (microseconds since 1970, as SQLite stores it)."""

    def __init__(
        self,
        ids: list[str],
        matrix: np.ndarray[Any, np.dtype[np.float32]],
        began: datetime | None = None,
        sent: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    ) -> None:
        self.ids = ids
        self.matrix = matrix
        self.began = began
        self.sent = sent

    @classmethod
    def of(cls, rows: Sequence[Any], began: datetime | None = None) -> _Vectors:
        """The rows (id, vector bytes, ...) in their order."""
        ids = [row[0] for row in rows]
        if not ids:
            return cls([], np.zeros((0, 0), dtype=np.float32), began)
        matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
        return cls(ids, matrix.reshape(len(ids), -1), began)

    @classmethod
    def of_messages(cls, rows: Sequence[Any], began: datetime | None) -> _Vectors:
        """Message rows (id, vector bytes, sequence, when sent) in their order, each with
        when it was sent: a look into the past then needs no read of them."""
        vectors = cls.of(rows, began)
        sent = np.fromiter((micros_of(row[3]) for row in rows), dtype=np.int64, count=len(rows))
        return cls(vectors.ids, vectors.matrix, began, sent)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """The memory its vectors and sending times take (ids aside)."""
        return self.matrix.nbytes + (0 if self.sent is None else self.sent.nbytes)

    def sent_by(self, moment: datetime) -> _Vectors:
        """Those of the messages sent by ``moment`` (a time without an offset is UTC), in
        the same order: the very rows a read of those alone gives, so they rank as such a
        read would, ties and all. Itself when every message was sent by then."""
        assert self.sent is not None, "vectors of messages, loaded with when each was sent"
        at = micros_of(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
        kept = self.sent <= at
        if kept.all():
            return self
        ids = list(compress(self.ids, kept))
        return _Vectors(ids, self.matrix[kept], self.began, self.sent[kept])

    def nearest(self, query: Sequence[float], limit: int) -> list[tuple[str, float]]:
        """The ``limit`` ids with the highest cosine to ``query``; equal ones (to within
        :data:`COSINE_TIE` of their group's best, see :func:`_tied`) in row order (the
        loaded rows are newest first), whichever of them the limit cuts."""
        if not self.ids or limit <= 0 or self.matrix.shape[1] != len(query):
            return []  # vectors of another model: none is near, till they are made again
        # einsum's own loop, not BLAS: OpenBLAS's gemv hands a few thousand rows to its
        # threads, which then contend with the embedder's for the cores (20 ms against
        # 0.4 ms at 5,000 rows on a busy two-core machine).
        scores = np.einsum("ij,j->i", self.matrix, np.asarray(query, dtype=np.float32))
        if limit < len(self.ids):
            # Every row within COSINE_TIE of the limit's score: the leader of its group is
            # at or above it, so the whole group is among them (ties with it included);
            # then a stable sort of those few: an unstable partition alone picks any tie.
            bound = -np.partition(-scores, limit - 1)[limit - 1]
            top = np.flatnonzero(scores >= bound - COSINE_TIE)
        else:
            top = np.arange(len(self.ids))
        cosines = _tied(scores[top], limit)
        best = np.argsort(-cosines, kind="stable")[:limit]
        return [(self.ids[top[i]], float(cosines[i])) for i in best]


FORGETS_KEPT = 4096
"""How many logs' last forgets a :class:`VectorIndex` remembers: a process forgetting
users for months keeps no mark of each (a search in flight reads its log's mark before
its connection opens, so only the few logs being read need theirs)."""


COSINE_TIE = 1e-6
"""How far apart two cosines may be and still tie: one text embedded twice (in batches of
other sizes), or one vector multiplied among other rows, gives cosines a few float32 bits
apart; texts that differ in meaning are further apart than that."""


def _tied(
    scores: np.ndarray[Any, np.dtype[np.float32]], limit: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``scores`` with each within :data:`COSINE_TIE` of its group's leader given the
    leader's value, groups taken best first (a leader is the best score not in a higher
    group), as far as the group of the ``limit``-th best: the copies of an exchange said
    again tie, so that the newest ranks first (on both backends) rather than whichever the
    last bits favour. Tied to the leader, never to the next higher score, close scores do
    not chain into one tie, and the best ``k`` are the first ``k`` of the best ``k + 1``."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    negated = -ranked.astype(np.float64)  # ascending, as a search needs
    starts = _leaders(negated, min(limit, len(ranked)))
    tied = ranked.copy()
    if len(starts):
        ends = np.append(starts[1:], _group_end(negated, int(starts[-1])))
        tied[: ends[-1]] = np.repeat(ranked[starts], ends - starts)
    out = np.empty_like(scores)
    out[order] = tied
    return out


def _leaders(negated: np.ndarray[Any, np.dtype[np.float64]], cut: int) -> np.ndarray[Any, Any]:
    """The positions before ``cut`` of the groups' leaders in ``negated`` (ascending): each
    the first past its predecessor's group. A score more than :data:`COSINE_TIE` from the
    one before leads for sure; only runs of closer scores are walked, group by group, over
    ends found at once, so no leader costs a search of its own."""
    near = negated[1:cut] <= negated[: max(cut - 1, 0)] + COSINE_TIE  # ties the one before
    sure = np.flatnonzero(np.concatenate(([cut > 0], ~near)))
    if not near.any():
        return sure
    ends = np.searchsorted(negated, negated[:cut] + COSINE_TIE, side="right").tolist()
    inside = [False, *near.tolist()]
    walked: list[int] = []
    for run in np.flatnonzero(np.concatenate(([False], near[:-1])) < near).tolist():
        start = ends[run]
        while start < cut and inside[start]:
            walked.append(start)
            start = ends[start]
    return np.sort(np.concatenate((sure, np.asarray(walked, dtype=sure.dtype))))


def _group_end(negated: np.ndarray[Any, np.dtype[np.float64]], start: int) -> int:
    """The position past the group ``start`` leads: the scores within :data:`COSINE_TIE` of it."""
    return int(np.searchsorted(negated, negated[start] + COSINE_TIE, side="right"))


def _remembered(kept: OrderedDict[str, _T], log_id: str, new: Callable[[], _T]) -> _T:
    """The log's value in ``kept``, made by ``new`` if missing, now the most recent one
    (the least recent are forgotten past :data:`_FILLED_KEPT` logs)."""
    value = kept.setdefault(log_id, new())
    kept.move_to_end(log_id)
    while len(kept) > _FILLED_KEPT:
        kept.popitem(last=False)
    return value


def _rejects_text(error: BaseException) -> bool:
    """Whether ``error``, or one it chains to, says the input itself is refused: a
    :class:`RejectedTextError`, or an HTTP client's error of a status in
    :data:`INPUT_REFUSED_STATUSES`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RejectedTextError):
            return True
        statuses = (getattr(current, name, None) for name in ("status_code", "http_status"))
        if any(status in INPUT_REFUSED_STATUSES for status in statuses):
            return True
        current = current.__cause__ or current.__context__
    return False


def _entry_bytes(kept: dict[str, dict[str, bytes]]) -> int:
    """The memory the kept vectors of one log's entries take, ids and dicts counted."""
    return sum(
        len(vector) + _ENTRY_OVERHEAD for vectors in kept.values() for vector in vectors.values()
    )


def _newest_first(rows: Sequence[Any]) -> list[Any]:
    """``rows`` (id, vector bytes, then the keys that order the item: a message's sequence,
    an entry's start, version and ordinal) newest first. Sorted here rather than by the
    query, which would sort the vectors along in a temporary table."""
    return sorted(rows, key=lambda row: tuple(row[2:]), reverse=True)


def _nearest(rows: Sequence[object], query: Sequence[float], limit: int) -> list[tuple[str, float]]:
    """The ``limit`` rows (id, vector bytes) with the highest cosine to the unit ``query``,
    ranked as cached vectors are (:meth:`_Vectors.nearest`)."""
    return _Vectors.of(rows).nearest(query, limit)
