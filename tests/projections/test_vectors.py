"""The vector index: a search bounds what it embeds itself, and the background filler
gives way to searches without ever being held off for good."""

from __future__ import annotations

import math
import threading
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Connection, delete, event, insert, select, update

from events import BatchMessage, EventStore, ExtractedFact, MemveeError, UserLog, user_log_id
from events.errors import RejectedTextError
from events.store import sqlite_url
from events.user_log import LIVE_KNOWLEDGE
from projections import (
    LexicalRanker,
    ProjectionReader,
    ProjectionTables,
    Projector,
    rebuild_user,
)
from projections import vectors as vectors_module
from projections.shown import Near, shown_beside
from projections.vectors import VectorIndex
from tests.support.embedders import ConceptEmbedder
from tests.support.stores import store_of_messages, write_afresh


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    """A log whose user ``ann`` has said 20 things, none embedded yet."""
    store = store_of_messages(tmp_path / "log.db", "ann", [f"thing number {n}" for n in range(20)])
    yield store
    store.close()


def _fill_in_background(
    index: VectorIndex, store: EventStore, embedder: ConceptEmbedder
) -> tuple[threading.Thread, list[frozenset[str]]]:
    """A background fill of ``ann`` on a thread of its own, and where it puts its result."""
    left: list[frozenset[str]] = []
    thread = threading.Thread(  # a daemon: a fill held off for good must not hang the run
        target=lambda: left.append(
            index.fill(store.engine, "ann", embedder.embed, messages=True, background=True)
        ),
        daemon=True,
    )
    thread.start()
    return thread, left


def test_a_background_fill_waits_for_a_search_to_end(store: EventStore) -> None:
    index, embedder = VectorIndex(ProjectionTables(), "test-concepts"), ConceptEmbedder()
    with index.searching():
        thread, left = _fill_in_background(index, store, embedder)
        thread.join(0.2)
        assert embedder.calls == 0, "held off before its first batch"
    thread.join(10)
    assert left == [frozenset()] and embedder.calls == 3  # 20 texts, 8 a batch


def test_searches_that_never_pause_do_not_hold_the_background_off_for_good(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vectors_module, "_HOLD_OFF", 0.05)
    index, embedder = VectorIndex(ProjectionTables(), "test-concepts"), ConceptEmbedder()
    with index.searching():
        thread, left = _fill_in_background(index, store, embedder)
        thread.join(10)
        assert left == [frozenset()], "every text embedded while a search ran throughout"


class _Recording(ConceptEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.append(list(texts))
        return super().embed(texts)


def test_a_search_with_a_budget_embeds_one_batch_at_least_newest_first(store: EventStore) -> None:
    index, embedder = VectorIndex(ProjectionTables(), "test-concepts"), _Recording()
    left = index.fill(store.engine, "ann", embedder.embed, messages=True, budget=0)
    assert len(left) == 12 and embedder.calls == 1
    assert embedder.texts[0] == [f"thing number {n}" for n in range(19, 11, -1)]
    again = index.fill(store.engine, "ann", embedder.embed, messages=True, budget=0)
    assert len(again) == 4 and again < left, "the next fill takes up the rest"
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert embedder.calls == 3, "the last fill found the log covered"


class _Gated(ConceptEmbedder):
    """Holds its ``held``-th batch until ``gate`` opens, so a forget can come while that
    batch is out."""

    def __init__(self, held: int = 1) -> None:
        super().__init__()
        self.held = held
        self.out = threading.Event()
        self.gate = threading.Event()
        self.texts: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.append(list(texts))
        if len(self.texts) == self.held:
            self.out.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return super().embed(texts)


def test_a_fill_sends_no_batch_of_a_user_forgotten_while_it_runs(store: EventStore) -> None:
    index, embedder = VectorIndex(ProjectionTables(), "test-concepts"), _Gated()
    thread, left = _fill_in_background(index, store, embedder)
    assert embedder.out.wait(10)
    index.forget("ann")
    embedder.gate.set()
    thread.join(10)
    assert len(embedder.texts) == 1, "only the batch already out went to the embedder"
    assert len(left[0]) == 12, "the texts it read before the erasure are left"
    again = index.fill(store.engine, "ann", embedder.embed, messages=True)
    assert again == frozenset() and len(embedder.texts) == 3, "a fill after it runs whole"


def test_a_fill_ending_as_its_user_is_forgotten_does_not_pass_the_new_log_for_covered(
    store: EventStore,
) -> None:
    """A fill whose last batch was out when the user was forgotten does not remember the
    erased log's version as covered: the new log, at that same version, is embedded."""
    index, embedder = VectorIndex(ProjectionTables(), "test-concepts"), _Gated(held=3)
    thread, left = _fill_in_background(index, store, embedder)
    assert embedder.out.wait(10)
    index.forget("ann")
    embedder.gate.set()
    thread.join(10)
    assert left == [frozenset()] and len(embedder.texts) == 3
    write_afresh(store, "ann", [f"new thing {n}" for n in range(20)])
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert len(embedder.texts) == 6, "the new log's 20 texts were embedded"


def test_a_search_reading_as_its_user_is_forgotten_keeps_none_of_the_erased_vectors(
    store: EventStore,
) -> None:
    """A search whose connection saw the log before it was erased reads the erased
    vectors; it ranks by them, but does not cache them: the next search of the new log,
    of the same length, ranks by the new log's own vectors."""
    embedder = ConceptEmbedder()
    VectorIndex(ProjectionTables(), embedder.name).fill(
        store.engine, "ann", embedder.embed, messages=True
    )
    index = VectorIndex(ProjectionTables(), embedder.name)
    query = embedder.embed(["thing"])[0]
    with index.watching("ann") as erased, store.reading() as before:
        erased_ids = {item for item, _ in index.messages(before, "ann", query, 50, erased=erased)}
        write_afresh(store, "ann", [f"new thing {n}" for n in range(20)])
        index.forget("ann")
        seen = index.messages(before, "ann", query, 50, erased=erased)
        assert {item for item, _ in seen} == erased_ids, "the old snapshot's own vectors"
    index.fill(store.engine, "ann", embedder.embed, messages=True)
    with store.reading() as now:
        found = {item for item, _ in index.messages(now, "ann", query, 50)}
    assert found and not found & erased_ids


def test_a_log_another_process_forgot_and_began_again_is_searched_by_its_own_vectors(
    db_url: str,
) -> None:
    """Another process forgets the user, who writes as many messages again: the log has
    the version and message count this index cached, yet the fill a search begins with
    drops the erased log's vectors and embeds the new ones; the search ranks by those."""
    embedder = ConceptEmbedder()
    store = store_of_messages(db_url, "ann", ["my cat sleeps", "a jazz band"])
    other = EventStore(db_url)
    try:
        index = VectorIndex(ProjectionTables(), embedder.name)
        query = embedder.embed(["tell me about my pet"])[0]

        def search() -> set[str]:
            index.fill(store.engine, "ann", embedder.embed, messages=True)
            with store.reading() as connection:
                return {item for item, _ in index.messages(connection, "ann", query, 50)}

        erased = search()
        write_afresh(other, "ann", ["my kitten purrs", "jazz tunes"])
        with store.reading() as connection:
            stored = ProjectionReader(ProjectionTables()).messages(connection, "ann")
        new = {message.message_id for message in stored}
        assert len(erased) == len(new) == 2 and not erased & new
        assert search() == new
    finally:
        other.close()
        store.close()


def test_messages_equally_near_rank_newest_first_however_their_vectors_are_stored(
    tmp_path: Path,
) -> None:
    """As lexical ranking breaks ties: the same messages come first before and after a
    rebuild, which stores the vectors in another order, also where the limit cuts ties."""
    said = ["I reside", "jazz band", "I reside", "I reside", "jazz band", "I reside"]
    store = store_of_messages(tmp_path / "log.db", "ann", said)
    embedder, tables = ConceptEmbedder(), ProjectionTables()
    VectorIndex(tables, embedder.name).fill(store.engine, "ann", embedder.embed, messages=True)
    v, m = tables.vectors, tables.messages
    with store.reading() as connection:
        by_seq = dict(connection.execute(select(m.c.seq, m.c.message_id)).all())
        rows = [r._asdict() for r in connection.execute(select(v))]
    newest = [by_seq[seq] for seq in sorted(by_seq, reverse=True) if said[seq - 1] == "I reside"]
    query = embedder.embed(["home"])[0]
    rows.sort(key=lambda row: row["item_id"])
    for stored in (rows, rows[::-1]):
        with store.engine.begin() as connection:
            connection.execute(delete(v))
            connection.execute(insert(v), stored)
        index = VectorIndex(tables, embedder.name)
        with store.reading() as connection:
            for limit in (1, 2, 3):
                found = [item for item, _ in index.messages(connection, "ann", query, limit)]
                assert found == newest[:limit]
            then = index.messages(connection, "ann", query, 2, as_of=datetime.now(UTC))
            assert [item for item, _ in then] == newest[:2]
    store.close()


def test_copies_of_a_message_rank_newest_first_though_their_cosines_differ_in_the_last_bits(
    db_url: str,
) -> None:
    """One text embedded in batches of other sizes gets vectors a bit or two apart, and the
    oldest copy of a question asked again came first; the copies tie and the newest comes
    first, from the cache and from the rows alike."""
    said = ["my favourite colour", "jazz band", "my favourite colour", "my favourite colour"]
    store = store_of_messages(db_url, "ann", said)
    embedder, tables = ConceptEmbedder(), ProjectionTables()
    VectorIndex(tables, embedder.name).fill(store.engine, "ann", embedder.embed, messages=True)
    v, m = tables.vectors, tables.messages
    with store.reading() as connection:
        by_seq = dict(connection.execute(select(m.c.seq, m.c.message_id)).all())
        oldest = connection.execute(select(v.c.vector).where(v.c.item_id == by_seq[1])).one()[0]
    vector = np.frombuffer(oldest, dtype=np.float32)
    nudged = np.nextafter(vector, 2 * vector).astype(np.float32)  # one bit further out
    with store.engine.begin() as connection:
        connection.execute(
            update(v).where(v.c.item_id == by_seq[1]).values(vector=nudged.tobytes())
        )
    index, query = VectorIndex(tables, embedder.name), embedder.embed(["favourite colour"])[0]
    newest = [by_seq[4], by_seq[3], by_seq[1]]
    try:
        with store.reading() as connection:
            for limit in (1, 2, 3):
                cached = index.messages(connection, "ann", query, limit)
                read = _stored_then(connection, tables, query, limit, datetime.now(UTC))
                assert [item for item, _ in cached] == newest[:limit]
                assert read == cached
            assert len({cosine for _, cosine in index.messages(connection, "ann", query, 3)}) == 1
    finally:
        store.close()


def test_close_cosines_tie_with_their_groups_best_so_the_best_k_lead_the_best_k_plus_one() -> None:
    """Cosines a hair apart (0.4e-6, under :data:`COSINE_TIE`) tie only with the best of
    their group, not each with the next: chained, 40 of them spanning 16e-6 were one tie,
    ranked newest first, so ``nearest(1)`` was not the first of ``nearest(40)``."""
    count = 40
    cosines = 0.5 + np.arange(count) * 0.4e-6  # rows newest first: the newest the least near
    rows = [
        (f"m{n}", np.array([c, math.sqrt(1 - c * c)], dtype=np.float32).tobytes())
        for n, c in enumerate(cosines)
    ]
    nearest = [vectors_module._nearest(rows, [1.0, 0.0], k) for k in range(1, count + 1)]
    for k, best in enumerate(nearest, start=1):
        assert best == nearest[-1][:k], k
    exact = dict(zip((item for item, _ in rows), cosines, strict=True))
    for item, score in nearest[-1]:
        assert -1e-7 <= score - exact[item] <= vectors_module.COSINE_TIE + 1e-7, item  # float32


def test_ties_over_a_long_cut_take_a_few_array_searches_not_one_per_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search as large as the user's items ties a whole cut: 3000 cosines, pairs 0.6e-6
    apart (one tie each) with 5e-6 between pairs, each given its pair's best. Its groups
    are found with a couple of array searches; a search per group took 200 ms for 100k."""
    pairs = 1500
    best = 0.9 - np.arange(pairs) * 5e-6
    scores = np.stack((best, best - 0.6e-6), axis=1).ravel().astype(np.float32)
    searches = 0
    search = np.searchsorted

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal searches
        searches += 1
        return search(*args, **kwargs)

    monkeypatch.setattr(np, "searchsorted", counted)
    tied = vectors_module._tied(scores, len(scores))
    assert np.array_equal(tied, np.repeat(scores[::2], 2))
    assert searches <= 2


def _stored_then(
    connection: Connection,
    tables: ProjectionTables,
    query: Sequence[float],
    limit: int,
    at: datetime,
) -> list[tuple[str, float]]:
    """The ranking a read of the stored vectors of the messages sent by ``at`` gives (the
    store holds one user): what the cache must give, to the last tie and bit."""
    v, m = tables.vectors, tables.messages
    found = connection.execute(
        select(v.c.item_id, v.c.vector, m.c.seq)
        .join(m, m.c.message_id == v.c.item_id)
        .where(v.c.kind == "message", m.c.sent_at <= at)
    )
    return vectors_module._nearest(vectors_module._newest_first(found.all()), query, limit)


def test_a_look_into_the_past_ranks_the_cached_vectors_as_a_read_of_those_sent_by_then(
    db_url: str,
) -> None:
    """Once a user's message vectors are cached, a search as of a past time reads none of
    them again, and ranks the very messages (scores and order of ties included) that a
    read of the stored vectors of those sent by then ranks: before the first, at a
    message's own sending time, between, after the last; with messages imported out of
    the order they were sent in, some at the same time; after the user's rebuild and
    after a forget and a new log. The cache is left whole for the present."""
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    said = ["I reside in Oslo", "my cat", "I reside in Oslo", "jazz band", "my dog"]
    minutes = [30, 0, 10, 50, 10]  # imported: seq and sending time disagree
    store = store_of_messages(
        db_url, "ann", said, sent_at=[start + timedelta(minutes=n) for n in minutes]
    )
    embedder, tables = ConceptEmbedder(), ProjectionTables()
    index = VectorIndex(tables, embedder.name, dimensions=embedder.dimensions)
    queries = [embedder.embed([text])[0] for text in ("where do I live", "my pet", "music")]
    at = [start + timedelta(minutes=n) for n in (-1, 0, 10, 30, 50, 60 * 24 * 400)]

    def agrees(count: int) -> None:
        index.fill(store.engine, "ann", embedder.embed, messages=True)
        looks = list(product(at, queries, (1, 2, 10)))
        read: list[Any] = []
        with store.reading() as connection:
            expected = [_stored_then(connection, tables, q, lim, w) for w, q, lim in looks]
            event.listen(connection, "before_cursor_execute", lambda *args: read.append(args[2]))
            found = [index.messages(connection, "ann", q, limit, as_of=w) for w, q, limit in looks]
            present = index.messages(connection, "ann", queries[0], 10)
        assert read == [], "no vector read again"
        assert found == expected
        assert len(present) == count, "the cache holds every message still"

    try:
        agrees(5)
        rebuild_user(store, "ann", tables)
        index.forget("ann")
        agrees(5)
        moved = ["my home city", "a jazz tune", "my kitten", "I live in Bergen"]
        later = [start + timedelta(minutes=n) for n in (40, 5, 40, 20)]
        write_afresh(store, "ann", moved, sent_at=later)
        index.forget("ann")
        agrees(4)
    finally:
        store.close()


def test_a_query_of_another_length_than_the_stored_vectors_is_near_none(store: EventStore) -> None:
    embedder = ConceptEmbedder()
    index = VectorIndex(ProjectionTables(), embedder.name, dimensions=embedder.dimensions)
    index.fill(store.engine, "ann", embedder.embed, messages=True)
    shorter = embedder.embed(["thing"])[0][:32]
    with store.reading() as connection:
        assert index.messages(connection, "ann", shorter, 5, as_of=datetime.now(UTC)) == []
        assert index.entries(connection, "ann", shorter, 5) == []


class _Mislabelled(_Recording):
    """Declares 64 dimensions and gives 32, as a model other than the one named would."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [vector[:32] for vector in super().embed(texts)]


def test_an_embedder_giving_vectors_of_another_length_than_it_declares_fails_the_fill(
    store: EventStore,
) -> None:
    """As a failing embedder does: stored, its vectors would be dropped on reading and the
    whole history sent again by every fill."""
    embedder = _Mislabelled()
    index = VectorIndex(ProjectionTables(), embedder.name, dimensions=embedder.dimensions)
    for _ in range(2):
        with pytest.raises(MemveeError, match="gives vectors of 32 dimensions, not the 64"):
            index.fill(store.engine, "ann", embedder.embed, messages=True)
    assert [len(texts) for texts in embedder.texts] == [8, 8], "one batch a fill, no more"
    with store.reading() as connection:
        assert connection.execute(select(ProjectionTables().vectors)).all() == []


class _Glitching(ConceptEmbedder):
    """Gives the text ``glitch`` a vector of NaNs, while ``glitching``."""

    glitch = "thing number 19"
    glitching = True

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = super().embed(texts)
        nan = [float("nan")] * self.dimensions
        pairs = zip(texts, vectors, strict=True)
        return [nan if self.glitching and t == self.glitch else v for t, v in pairs]


def test_a_vector_that_is_not_finite_is_not_stored_and_its_item_is_embedded_again_later(
    store: EventStore,
) -> None:
    embedder, tables = _Glitching(), ProjectionTables()
    index = VectorIndex(tables, embedder.name, dimensions=embedder.dimensions)
    left = index.fill(store.engine, "ann", embedder.embed, messages=True)
    assert len(left) == 1, "the glitched message is left for a later fill"
    with store.reading() as connection:
        assert len(connection.execute(select(tables.vectors)).all()) == 19
    embedder.glitching = False
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    query = embedder.embed([embedder.glitch])[0]
    with store.reading() as connection:
        assert len(connection.execute(select(tables.vectors)).all()) == 20
        assert index.messages(connection, "ann", query, 1)[0][0] in left


def test_a_text_the_embedder_always_gives_a_vector_that_is_not_finite_is_refused_after_three_fills(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three fills far enough apart (see ``_STRIKE_GAP``; here any are), as any text
    that fails alone."""
    monkeypatch.setattr(vectors_module, "_STRIKE_GAP", 0.0)
    embedder = _Glitching()
    index = VectorIndex(ProjectionTables(), embedder.name, dimensions=embedder.dimensions)
    for _ in range(2):
        (left,) = index.fill(store.engine, "ann", embedder.embed, messages=True)
        assert index.refused("ann") == frozenset()
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert index.refused("ann") == {left}
    calls = embedder.calls
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert embedder.calls == calls, "not sent again"


class _Failing(_Recording):
    """Fails every batch holding the text ``failing`` with ``error``, while it is set;
    takes every other batch (the canary's among them)."""

    failing = "thing number 19"

    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.error is not None and self.failing in texts:
            raise self.error
        return super().embed(texts)


def test_a_text_failing_alone_in_a_burst_of_timeouts_is_embedded_again_once_they_end(
    store: EventStore,
) -> None:
    embedder, tables = _Failing(TimeoutError("the embedding API timed out")), ProjectionTables()
    index = VectorIndex(tables, embedder.name, dimensions=embedder.dimensions)
    for _ in range(4):  # a search's fill, the background's after each write...
        assert len(index.fill(store.engine, "ann", embedder.embed, messages=True)) == 1
    assert index.refused("ann") == frozenset(), "a burst of timeouts says nothing of the text"
    embedder.error = None
    assert index.fill(store.engine, "ann", embedder.embed, messages=True) == frozenset()
    assert [embedder.failing] in embedder.texts[-1:], "sent again, and embedded"
    with store.reading() as connection:
        assert len(connection.execute(select(tables.vectors)).all()) == 20


def test_a_text_is_refused_when_the_embedder_says_so_or_after_failing_alone_in_three_fills(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three fills far enough apart (see ``_STRIKE_GAP``; here any are)."""
    monkeypatch.setattr(vectors_module, "_STRIKE_GAP", 0.0)
    rejected = _Failing(RejectedTextError("the embedding API answered 400: too long"))
    index = VectorIndex(ProjectionTables(), rejected.name, dimensions=rejected.dimensions)
    assert index.fill(store.engine, "ann", rejected.embed, messages=True) == frozenset()
    (left,) = index.refused("ann")
    calls = rejected.calls
    assert index.fill(store.engine, "ann", rejected.embed, messages=True) == frozenset()
    assert rejected.calls == calls, "not sent again"

    failing = _Failing(MemveeError("the embedding API answered 503"))
    index = VectorIndex(ProjectionTables(), failing.name, dimensions=failing.dimensions)
    for _ in range(2):
        assert index.fill(store.engine, "ann", failing.embed, messages=True) == {left}
        assert index.refused("ann") == frozenset()
    index.fill(store.engine, "ann", failing.embed, messages=True)
    assert index.refused("ann") == {left}


def test_the_cache_holds_vectors_up_to_its_bytes_dropping_the_user_searched_longest_ago(
    tmp_path: Path,
) -> None:
    """It counted vectors, whatever their length: an embedding API's 1,536 floats made
    its 200,000 some 1.2 GB held for the Memory's life."""
    store = store_of_messages(tmp_path / "log.db", "ann", [f"ann thing {n}" for n in range(10)])
    write_afresh(store, "bob", [f"bob thing {n}" for n in range(10)])
    embedder, tables = ConceptEmbedder(), ProjectionTables()
    one_user = 10 * (4 * embedder.dimensions + 8)
    index = VectorIndex(tables, embedder.name, cache_bytes=one_user)
    query = embedder.embed(["thing"])[0]
    for user in ("ann", "bob"):
        index.fill(store.engine, user, embedder.embed, messages=True)
    with store.reading() as connection:
        for user in ("ann", "bob"):
            assert len(index.messages(connection, user, query, 10)) == 10
    assert list(index._cache) == [str(user_log_id("bob"))]
    store.close()


_KEY = "sk-embed-carried-key-0123456789"


class _Holding:
    """An API client (or an embedder) given its attributes in code."""

    def __init__(self, **attributes: object) -> None:
        self.__dict__.update(attributes)


class _EchoingItsKey:
    """An embedder behind an API that refuses its key and echoes it back (a 401), the key
    kept wherever ``carrier`` puts it."""

    name = "echo"
    dimensions = 3

    def __init__(self, carrier: dict[str, object]) -> None:
        self.__dict__.update(carrier)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError(f"401 Unauthorized: GET https://api.example/v1?key={_KEY} ({_KEY})")


@pytest.mark.parametrize(
    ("carrier", "environment"),
    [
        ({"client": _Holding(api_key=_KEY)}, {}),
        ({"api_key": _KEY}, {}),
        ({"_auth_token": f"  {_KEY}\n"}, {}),
        ({"_client": _Holding(api_key=_KEY)}, {}),
        ({"client": _Holding(default_headers={"Authorization": f"Bearer {_KEY}"})}, {}),
        ({"session": _Holding(_headers={"x-api-key": _KEY})}, {}),
        ({"client": _Holding(base_url=f"https://api.example/v1?key={_KEY}")}, {}),
        ({"_base_url": httpx.URL(f"https://gw.example/?access_token={_KEY}")}, {}),
        ({}, {"OPENAI_API_KEY": _KEY}),
        ({}, {"MISTRAL_TOKEN": _KEY}),
    ],
    ids=[
        "client's api_key",
        "its own api_key",
        "a private token",
        "a private client",
        "a client's default headers",
        "a session's headers",
        "a base URL's query",
        "a URL object's query",
        "OPENAI_API_KEY",
        "any provider's token variable",
    ],
)
def test_an_embedders_failure_never_shows_a_key_it_or_its_client_or_the_environment_holds(
    monkeypatch: pytest.MonkeyPatch, carrier: dict[str, object], environment: dict[str, str]
) -> None:
    """Wherever the key is kept (an attribute of the embedder or of a client it holds,
    public or private, a header, a URL's query, any provider's environment variable), the
    failure a contained embedder raises, as its traceback is logged, shows none of it."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    embedder = vectors_module.ContainedEmbedder(_EchoingItsKey(carrier))
    with pytest.raises(MemveeError) as raised:
        embedder.embed(["x"])
    shown = "".join(traceback.format_exception(raised.value))
    assert "401 Unauthorized" in shown
    assert _KEY[:12] not in shown and _KEY[-12:] not in shown


def _entries_said(store: EventStore, user_id: str, facts: list[str | ExtractedFact]) -> UserLog:
    """``user_id`` says ``facts`` (a text, extracted as said; or the fact given, which may
    change an entry) fifty at a time, each fifty extracted in one batch, in their order
    (the last the newest); the log, to say more."""
    log = UserLog.register(user_id)
    _say(store, log, facts)
    return log


def _say(store: EventStore, log: UserLog, facts: list[str | ExtractedFact]) -> None:
    """:func:`_entries_said` of the log ``log``, stored and projected."""
    said = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=log.version or 0)
    for start in range(0, len(facts), 50):
        chunk = facts[start : start + 50]
        texts = [fact if isinstance(fact, str) else fact.text for fact in chunk]
        batch = [
            BatchMessage(log.add_message("user", t, said, 1000), "user", t, said) for t in texts
        ]
        task = f"{log.user_id}-t{log.version}"
        assert log.request_processing(task, "manual")
        log.start_next()
        extracted = [
            ExtractedFact(fact, (m.message_id,))
            if isinstance(fact, str)
            else ExtractedFact(
                fact.text, (m.message_id,), fact.action, target_entry_id=fact.target_entry_id
            )
            for fact, m in zip(chunk, batch, strict=True)
        ]
        log.record_knowledge(task, extracted, "x", batch=batch)
    store.append([list(log.collect_events())], Projector(ProjectionTables()).apply)


def _store(db_url: str) -> EventStore:
    store = EventStore(db_url)
    with store.transaction() as connection:
        Projector(ProjectionTables()).create(connection)
    return store


def _current(store: EventStore, user_id: str) -> dict[str, str]:
    """The text of each of the user's current live entries, by id."""
    with store.reading() as connection:
        return {
            e.entry_id: e.text
            for e in ProjectionReader(ProjectionTables()).knowledge(connection, user_id)
        }


def _vector_reads(index: VectorIndex, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many entry vectors each read of the database gave ``index`` (every vector read
    passes the check of its length), appended as they come."""
    reads: list[int] = []
    checked = index._of_its_length

    def counting(connection: Connection, log_id: str, rows: Sequence[Any]) -> Any:
        reads.append(len(rows))
        return checked(connection, log_id, rows)

    monkeypatch.setattr(index, "_of_its_length", counting)
    return reads


def test_a_batch_reads_the_vectors_of_the_entries_new_since_the_last_not_every_one_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every current entry's vector was read and decoded beside each batch, so that a
    backlog's batches cost more as its entries grew (a 10,000-message flush: 2 ms of a
    batch at its start, 0.3-0.7 s at its end, 5,000 entries): the next batch reads only
    the vectors of the entries added since, and ranks as a read of them all does."""
    store = _store(db_url)
    embedder = ConceptEmbedder()
    log = _entries_said(store, "ann", [f"User noted groceries, list {i}." for i in range(300)])
    index = VectorIndex(ProjectionTables(), embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    reads = _vector_reads(index, monkeypatch)
    query = embedder.embed(["my job"])[0]
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 5)
    assert sum(reads) == 300
    _say(store, log, ["User works as a nurse.", "User has a dog."])
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    reads.clear()
    with store.reading() as connection:
        (near,) = index.entries_near_each(connection, "ann", [query], 5)
        fresh = VectorIndex(ProjectionTables(), embedder.name)
        assert [near] == fresh.entries_near_each(connection, "ann", [query], 5)
    assert sum(reads) == 2, "the two new entries' vectors only"
    assert _current(store, "ann")[near[0]] == "User works as a nurse."
    store.close()


def test_an_old_fact_said_again_in_other_words_is_shown_beside_a_batch_past_thousands_of_newer(
    db_url: str,
) -> None:
    """6ecf492 ranked only the newest 2,048 entries by meaning: past them "I'm a nurse."
    was no longer shown "User is a doctor.", which it changes, so both stayed current. The
    oldest entry is still shown, for a first batch and for the next, from kept vectors."""
    store = _store(db_url)
    embedder = ConceptEmbedder()
    filler = [f"User noted groceries, list {i}." for i in range(2_100)]
    log = _entries_said(store, "ann", ["User is a doctor.", *filler])
    tables = ProjectionTables()
    index = VectorIndex(tables, embedder.name)
    ranker, reader = LexicalRanker(tables), ProjectionReader(tables)
    for batch in (["I'm a nurse."], ["Still a nurse, honestly."]):
        index.fill(store.engine, "ann", embedder.embed, messages=False)
        near = Near(index, "ann", embedder.embed(batch), LIVE_KNOWLEDGE)
        with store.engine.connect() as connection:
            known, _ = shown_beside(
                connection,
                ranker,
                reader,
                "ann",
                batch,
                current=len(_current(store, "ann")),
                max_batch_tokens=20_000,
                near=near,
            )
        assert "User is a doctor." in [k.text for k in known], batch
        _say(store, log, [f"User noted chores, list {i}." for i in range(3)])
    store.close()


def test_entries_ended_added_or_promoted_between_two_batches_are_ranked_as_stored(
    db_url: str,
) -> None:
    """The kept vectors never stand for what the tables no longer hold: an entry a later
    batch replaced is not ranked, its successor is, and a promoted knowledge version's
    entries are ranked as the live ones the next batch sees (their count alone may not
    change), as by an index that reads every vector afresh."""
    store = _store(db_url)
    embedder = ConceptEmbedder()
    log = _entries_said(
        store, "ann", ["User works as a doctor.", *[f"User noted list {i}." for i in range(120)]]
    )
    index = VectorIndex(ProjectionTables(), embedder.name)
    query = embedder.embed(["what is my job"])[0]

    def nearest() -> list[str]:
        index.fill(store.engine, "ann", embedder.embed, messages=False)
        with store.reading() as connection:
            (found,) = index.entries_near_each(connection, "ann", [query], 3)
            fresh = VectorIndex(ProjectionTables(), embedder.name)
            assert [found] == fresh.entries_near_each(connection, "ann", [query], 3)
        texts = _current(store, "ann")
        return [texts[item] for item in found]

    assert nearest()[0] == "User works as a doctor."
    doctor = next(i for i, t in _current(store, "ann").items() if t == "User works as a doctor.")
    _say(store, log, [ExtractedFact("User works as a nurse.", (), "update", doctor)])
    assert nearest()[0] == "User works as a nurse."
    assert "User works as a doctor." not in nearest()
    projector = Projector(ProjectionTables())
    first = log.add_message("user", "I am a vet now.", None, 1000)
    said = [BatchMessage(first, "user", "I am a vet now.", datetime.now(UTC))]
    vet = ExtractedFact("User works as a vet.", (first,))
    log.record_reextraction("v2", [first], [vet], "x", batch=said)
    store.append([list(log.collect_events())], projector.apply)
    log.promote("v2", store.events_of("ann"))
    store.append([list(log.collect_events())], projector.apply)
    assert nearest()[0] == "User works as a vet."
    assert set(_current(store, "ann").values()) == {"User works as a vet."}
    store.close()


@pytest.mark.parametrize("others_forgotten", [0, 3], ids=["alone", "mark let go"])
def test_a_read_of_entry_vectors_overlapping_a_forget_keeps_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others_forgotten: int
) -> None:
    """A search beside a batch whose read overlapped an erasure (its connection opened
    before :meth:`VectorIndex.forget`) ranks by what it read but keeps none of it: the
    next search reads every vector of the user again; one that did not overlap keeps them.
    So too once other users' forgets let go of the user's mark: an index remembers the
    last forgets of :data:`FORGETS_KEPT` logs only (a process forgetting users for months
    kept a mark of each, 128 bytes a user)."""
    monkeypatch.setattr(vectors_module, "FORGETS_KEPT", 2, raising=False)
    store = _store(sqlite_url(tmp_path / "log.db"))
    embedder = ConceptEmbedder()
    _entries_said(store, "ann", [f"User noted list {i}." for i in range(120)])
    index = VectorIndex(ProjectionTables(), embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    query = embedder.embed(["list"])[0]
    reads = _vector_reads(index, monkeypatch)
    before = index.forgotten("ann")
    index.forget("ann")
    for other in ("bob", "cy", "di")[:others_forgotten]:
        index.forget(other)
    assert len(index._forgets) <= 2
    with store.reading() as connection:
        assert index.entries_near_each(connection, "ann", [query], 3, forgotten=before)[0]
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    assert reads == [120, 120], "read whole after the overlapping read, then kept"
    store.close()


def _statements(connection: Connection) -> list[str]:
    """The statements ``connection`` runs from now on, appended as they come."""
    run: list[str] = []

    def note(*args: Any) -> None:
        run.append(args[2])

    event.listen(connection, "before_cursor_execute", note)
    return run


def test_a_users_first_batch_reads_every_entry_and_its_vector_in_one_statement(
    db_url: str,
) -> None:
    """With nothing kept (the first batch of a process, after a forget or an eviction) the
    entries were listed and their vectors then read 500 ids at a time: 20,000 entries on
    PostgreSQL took 0.9-1.4 s instead of 0.3-0.7 s. One join reads them all, as before."""
    store = _store(db_url)
    embedder = ConceptEmbedder()
    _entries_said(store, "ann", [f"User noted groceries, list {i}." for i in range(1_200)])
    index = VectorIndex(ProjectionTables(), embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    query = embedder.embed(["groceries"])[0]
    with store.reading() as connection:
        run = _statements(connection)
        (near,) = index.entries_near_each(connection, "ann", [query], 5)
        assert len(run) == 1, run
        assert [near] == index.entries_near_each(connection, "ann", [query], 5)
    store.close()


def test_a_forget_lets_go_of_the_users_kept_entry_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forget in this process drops the entry vectors kept of the user's erased log: the
    next search reads every vector again, none is taken from memory."""
    store = _store(sqlite_url(tmp_path / "log.db"))
    embedder = ConceptEmbedder()
    _entries_said(store, "ann", [f"User noted list {i}." for i in range(120)])
    index = VectorIndex(ProjectionTables(), embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    query = embedder.embed(["list"])[0]
    reads = _vector_reads(index, monkeypatch)
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    index.forget("ann")
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    assert reads == [120, 120], "read whole again after the forget"
    store.close()


def test_a_forget_of_another_user_leaves_a_users_read_of_entry_vectors_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob's erasure says nothing of what Ann's search read: it is kept (the count of
    forgets was one for every user, so any forget made a read overlapping it read whole
    again at the next batch)."""
    store = _store(sqlite_url(tmp_path / "log.db"))
    embedder = ConceptEmbedder()
    _entries_said(store, "ann", [f"User noted list {i}." for i in range(120)])
    index = VectorIndex(ProjectionTables(), embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    query = embedder.embed(["list"])[0]
    reads = _vector_reads(index, monkeypatch)
    before = index.forgotten("ann")
    index.forget("bob")
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3, forgotten=before)
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    assert reads == [120], "the second search takes every vector from memory"
    store.close()


def test_a_search_beside_a_batch_keeps_nothing_of_a_forget_since_its_vectors_were_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """:class:`Near` takes the user's count of forgets when the batch is embedded, before
    its search's connection opens: a forget between the two may erase what that connection
    reads, which is then not kept (the next search reads every vector again)."""
    store = _store(sqlite_url(tmp_path / "log.db"))
    embedder = ConceptEmbedder()
    _entries_said(store, "ann", [f"User noted list {i}." for i in range(120)])
    tables = ProjectionTables()
    index = VectorIndex(tables, embedder.name)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    reads = _vector_reads(index, monkeypatch)
    near = Near(index, "ann", embedder.embed(["list"]), LIVE_KNOWLEDGE)
    index.forget("ann")
    for _ in range(2):
        with store.reading() as connection:
            assert near.entries(connection, ProjectionReader(tables), 3)
    assert reads == [120, 120], "read whole after the overlapping search, then kept"
    store.close()


def test_entry_and_message_vectors_are_dropped_by_one_order_of_use_within_cache_bytes(
    tmp_path: Path,
) -> None:
    """Message vectors were dropped before any entry vectors, each kind in its own order:
    a long-idle user's entry vectors outlived recently searched users' messages, and both
    kinds together could hold nearly twice ``cache_bytes``. The user used longest ago
    loses both kinds first, and what is kept fits in ``cache_bytes``."""
    store = store_of_messages(tmp_path / "log.db", "bob", [f"bob thing {n}" for n in range(30)])
    write_afresh(store, "carol", [f"carol thing {n}" for n in range(30)])
    _entries_said(store, "ann", [f"User noted list {i}." for i in range(10)])
    embedder, tables = ConceptEmbedder(), ProjectionTables()
    one_users_messages = 30 * (4 * embedder.dimensions + 8)
    index = VectorIndex(tables, embedder.name, cache_bytes=2 * one_users_messages + 10)
    index.fill(store.engine, "ann", embedder.embed, messages=False)
    query = embedder.embed(["thing"])[0]
    with store.reading() as connection:
        index.entries_near_each(connection, "ann", [query], 3)
    assert index._entry_vectors, "ann's entry vectors are kept"
    for user in ("bob", "carol"):
        index.fill(store.engine, user, embedder.embed, messages=True)
        with store.reading() as connection:
            assert len(index.messages(connection, user, query, 30)) == 30
    assert list(index._cache) == [str(user_log_id("bob")), str(user_log_id("carol"))]
    assert index._entry_vectors == {}, "ann, used longest ago, was dropped"
    store.close()


def test_the_memory_counted_of_kept_entry_vectors_is_what_they_hold() -> None:
    """Only the vector bytes were counted: 50,000 entries of 384 floats held 11% more than
    ``cache_bytes`` allowed, of 64 floats 61% more (each entry's id, the bytes object and
    its dict slot weigh some 160 B)."""
    entries = 2_000
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = {str(uuid.uuid4()): np.full(64, i, np.float32).tobytes() for i in range(entries)}
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert vectors_module._entry_bytes({LIVE_KNOWLEDGE: kept}) >= 0.9 * held
