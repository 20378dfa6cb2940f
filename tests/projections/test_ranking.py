"""Lexical ranking reads only what matches: a user's other messages cost a search nothing.

The work is counted in SQLite virtual-machine steps (a progress handler on the
connection), which do not depend on the machine's speed.
"""

from __future__ import annotations

import functools
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection

from events import BatchMessage, EventStore, ExtractedFact, UserLog, user_log_id
from events.user_log import LIVE_KNOWLEDGE
from projections import (
    KnowledgeEntry,
    LexicalRanker,
    ProjectionTables,
    Projector,
    index_messages,
    verify,
)
from projections.ranking import MAX_QUERY_TOKENS, fts_match
from projections.search import owned_terms
from tests.support.sqlite_steps import counted_steps

T0 = datetime(2026, 1, 1, tzinfo=UTC)

RARE = tuple(f"theremin lesson {i}" for i in range(30))
"""What the search looks for: enough hits that SQLite's planner, left to itself, reads
them through the user's index rather than by their row numbers."""


def _write(store: EventStore, projector: Projector, user_id: str, contents: list[str]) -> None:
    log = UserLog.register(user_id)
    for content in contents:
        log.add_message("user", content, None, 1000)
    store.append([list(log.collect_events())], projector.apply)
    index_messages(store, projector)


def _steps_of_search(
    store: EventStore, ranker: LexicalRanker, user_id: str
) -> tuple[int, list[str]]:
    """The VM steps a search for "theremin" (40 hits at most) takes, and the contents it
    finds."""
    steps, found = _steps_of(store, ranker, user_id, ["theremin"], 40)
    return steps, sorted(found)


def _steps_of(
    store: EventStore,
    ranker: LexicalRanker,
    user_id: str,
    terms: list[str],
    limit: int,
    added: tuple[str, ...] = (),
) -> tuple[int, list[str]]:
    """The VM steps a search of the user's messages for ``terms`` (and the words their
    topics ``added``) takes, and the contents it finds, best first."""
    steps, found = counted_steps(
        store, lambda connection: ranker.messages(connection, user_id, terms, limit, added=added)
    )
    return steps, [message.content for message, _ in found]


def test_a_search_does_not_walk_the_messages_that_do_not_match(store: EventStore) -> None:
    events, projector = store, Projector(ProjectionTables())
    filler = [f"note {i}: groceries, laundry and the weather" for i in range(2_000)]
    _write(events, projector, "few", [*RARE, *filler[:20]])
    _write(events, projector, "many", [*RARE, *filler])
    ranker = LexicalRanker(projector.tables)
    few_steps, few_found = _steps_of_search(events, ranker, "few")
    many_steps, many_found = _steps_of_search(events, ranker, "many")
    assert few_found == many_found == sorted(RARE)
    # Through the (log_id, seq) index, the hits' rows were found by walking all 2,000
    # other messages of the user: 11 times the steps. By rowid, the same lookups.
    assert many_steps < 2 * few_steps, (few_steps, many_steps)


def test_a_search_with_words_its_topics_add_costs_about_what_one_of_all_its_words_does(
    store: EventStore,
) -> None:
    """ "where do I live?" also searches "city" and "home", and the rows with "live" come
    first. Where most rows hold the words, those rows are ranked first and alone: ranking
    every row, then telling those with "live", doubled the search. With few rows holding
    "live", every one of them still comes before the rows with only the added words."""
    projector = Projector(ProjectionTables())
    topic = [
        f"city home at night, note {i}" + (" where I live" if i % 3 else "") for i in range(600)
    ]
    _write(store, projector, "dense", topic)
    _write(store, projector, "sparse", [*topic[::3], "I live far away", "so I live here"])
    ranker = LexicalRanker(projector.tables)
    all_words = ["live", "city", "home"]
    for user_id, own in (("sparse", 2), ("dense", 30)):
        plain, _ = _steps_of(store, ranker, user_id, all_words, 30)
        tiered, found = _steps_of(store, ranker, user_id, ["live"], 30, added=("city", "home"))
        assert ["live" in text for text in found] == [True] * own + [False] * (30 - own)
        assert user_id == "sparse" or tiered < 1.3 * plain, (user_id, plain, tiered)


def test_a_search_never_returns_another_users_message(store: EventStore) -> None:
    events, projector = store, Projector(ProjectionTables())
    _write(events, projector, "ann", [RARE[0], "nothing here"])
    _write(events, projector, "bob", list(RARE[1:]))
    ranker = LexicalRanker(projector.tables)
    assert _steps_of_search(events, ranker, "ann")[1] == [RARE[0]]
    assert _steps_of_search(events, ranker, "bob")[1] == sorted(RARE[1:])


def test_a_query_searches_a_bounded_number_of_tokens_each_terms_first_pairs_first() -> None:
    """A run of Chinese, Japanese or Korean characters is a token per pair of them: a
    100,000-character query searched for each pair took seconds and held the writer."""
    ideographs = "".join(chr(0x4E00 + i % 20_000) for i in range(100_000))
    match = fts_match("a" * 32, [ideographs, "theremin"])
    tokens = match.count('"') // 2
    assert tokens == MAX_QUERY_TOKENS
    assert owned_terms("a" * 32, "theremin")[0] in match, "the second term is not crowded out"
    assert owned_terms("a" * 32, ideographs[:2])[0] in match


def test_a_long_word_of_another_script_is_searched_whole() -> None:
    """Only runs of Chinese, Japanese or Korean characters are cut: the index keeps any
    other word whole, so a cut one would never match (a 601-character key, say)."""
    word = "q" + "abcdefghij" * 60
    assert owned_terms("a" * 32, word)[0] in fts_match("a" * 32, [word])


def _said_and_extracted(log: UserLog, user_id: str, facts: list[str]) -> list[tuple[str, datetime]]:
    """``user_id`` says each of ``facts`` a day after the one before, and each is extracted
    as it was said, valid from that day: each message's id and day."""
    said: list[tuple[str, datetime]] = []
    for day, fact in enumerate(facts):
        at = T0 + timedelta(days=day)
        message = log.add_message("user", fact, at, 1000)
        assert log.request_processing(f"{user_id}-t{day}", "manual")
        log.start_next()
        batch = [BatchMessage(message, "user", fact, at)]
        log.record_knowledge(
            f"{user_id}-t{day}", [ExtractedFact(fact, (message,))], "x", batch=batch
        )
        said.append((message, at))
    return said


def _learn(store: EventStore, projector: Projector, user_id: str, facts: list[str]) -> None:
    """:func:`_said_and_extracted`, stored and indexed."""
    log = UserLog.register(user_id)
    _said_and_extracted(log, user_id, facts)
    store.append([list(log.collect_events())], projector.apply)
    index_messages(store, projector)


def test_items_scored_alike_rank_newest_first_where_the_limit_cuts_them(
    store: EventStore,
) -> None:
    """A user who said much the same thing thirty times is answered with what they said
    last, not with what the index happens to hold first: the cut keeps a tie's newest."""
    projector = Projector(ProjectionTables())
    said = [f"User had coffee on day {day}." for day in range(30)]
    _learn(store, projector, "ann", said)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        for limit in (1, 3):
            newest = said[::-1][:limit]
            entries = ranker.entries(connection, "ann", ["coffee"], limit)
            assert [e.text for e, _ in entries] == newest
            messages = ranker.messages(connection, "ann", ["coffee"], limit)
            assert [m.content for m, _ in messages] == newest


def _change(
    store: EventStore, projector: Projector, user_id: str, besides: str, values: list[str]
) -> None:
    """``user_id`` says ``besides``, then each of ``values`` a day after the one before,
    each extracted (in a write of its own) as a change of the value before."""
    log = UserLog.register(user_id)
    last: str | None = None
    for day, value in enumerate([besides, *values]):
        said = T0 + timedelta(days=day)
        message = log.add_message("user", value, said, 1000)
        assert log.request_processing(f"t{day}", "manual")
        log.start_next()
        batch = [BatchMessage(message, "user", value, said)]
        action = "new" if day < 2 else "update"
        fact = ExtractedFact(value, (message,), action, target_entry_id=last if day > 1 else None)
        last = log.record_knowledge(f"t{day}", [fact], "x", batch=batch)[0]["entry_id"]
        store.append([list(log.collect_events())], projector.apply)


def test_a_search_of_current_entries_never_scores_a_facts_past_values(
    store: EventStore,
) -> None:
    """A fact changed forty times is found with one ranking in the index, of the current
    entries alone: the ended ones are not scored and dropped, fetching more each round,
    until the whole history was ranked. A search as of a past day still finds that day's."""
    projector = Projector(ProjectionTables())
    towns = [f"User lives in Town{day}." for day in range(40)]
    _change(store, projector, "ann", "User lives near the sea.", towns)
    ranker = LexicalRanker(projector.tables)
    ranked: list[str] = []
    with store.engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.set_trace_callback(ranked.append)
        try:
            found = ranker.entries(connection, "ann", ["lives"], 2)
        finally:
            driver.set_trace_callback(None)
        then = ranker.entries(
            connection, "ann", ["lives"], 2, as_of=T0 + timedelta(days=6, hours=1)
        )
    assert sorted(e.text for e, _ in found) == ["User lives in Town39.", "User lives near the sea."]
    assert sorted(e.text for e, _ in then) == ["User lives in Town5.", "User lives near the sea."]
    assert len([sql for sql in ranked if "bm25(" in sql]) == 1, ranked


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="FTS5's bm25 counts the rows and their average length over the whole table, "
    "every user's: a word in most of Ann's rows weighs almost nothing while she is alone "
    "and nearly as much as a rare one once other users' rows fill the table",
)
def test_another_users_messages_leave_a_users_ranking_as_it_was(store: EventStore) -> None:
    """Bob's thousand lines share no word with Ann's query, yet (on SQLite) they lift her
    messages that say "booked" from under her one about the cake to above it."""
    events, projector = store, Projector(ProjectionTables())
    ann = [
        "Booked the venue, booked the band, booked the photographer",
        "A cake tasting on Friday",
        "I booked a table",
        "We booked flights",
    ]
    _write(events, projector, "ann", ann)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        alone = ranker.messages(connection, "ann", ["booked", "cake"], 10)
    _write(events, projector, "bob", [f"Bob talks about gardening, line {i}" for i in range(1000)])
    with store.engine.connect() as connection:
        beside_bob = ranker.messages(connection, "ann", ["booked", "cake"], 10)
    assert [m.content for m, _ in beside_bob] == [m.content for m, _ in alone]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="FTS5's bm25 counts the rows and their average length over the whole table, "
    "every user's (as for messages, above)",
)
def test_another_users_entries_leave_a_users_ranking_as_it_was(store: EventStore) -> None:
    """Bob's facts share no word with Ann's query, yet (on SQLite, by FTS5's counts of
    the whole table) they lifted her entries that say "booked" above her one about the
    cake."""
    projector = Projector(ProjectionTables())
    ann = [
        "User booked the venue, booked the band and booked the photographer.",
        "User had a cake tasting on Friday.",
        "User booked a table.",
        "User booked flights.",
    ]
    _learn(store, projector, "ann", ann)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        alone = ranker.entries(connection, "ann", ["booked", "cake"], 10)
    _learn(store, projector, "bob", [f"Bob grows tomatoes, row {i}." for i in range(300)])
    with store.engine.connect() as connection:
        beside_bob = ranker.entries(connection, "ann", ["booked", "cake"], 10)
    assert [e.text for e, _ in beside_bob] == [e.text for e, _ in alone]
    assert alone[0][0].text == "User had a cake tasting on Friday."


def test_a_users_messages_score_as_fts5s_bm25_scores_them_while_the_index_is_theirs_alone(
    store: EventStore,
) -> None:
    """The formula is FTS5's (its k1, b and floor of a common word's weight): only the
    rows it counts are the user's."""
    projector = Projector(ProjectionTables())
    said = [
        "the cat sat on the mat",
        "a cat and a dog and another cat",
        "dogs bark",
        "the weather is fine today, the sun is out and the birds sing loudly",
        "cat",
    ]
    _write(store, projector, "ann", said)
    ranker = LexicalRanker(projector.tables)
    fts = ranker.search.messages_fts.name
    with store.engine.connect() as connection:
        found = ranker.messages(connection, "ann", ["cat", "weather"], 10)
        ranked = connection.exec_driver_sql(
            f"SELECT rowid, -bm25({fts}) FROM {fts} WHERE {fts} MATCH ?",
            (fts_match(str(user_log_id("ann")), ["cat", "weather"]),),
        ).all()
    by_row = dict(ranked)
    assert {m.content: score for m, score in found} == pytest.approx(
        {said[row - 1]: score for row, score in by_row.items()}
    )


def test_an_entries_search_does_not_walk_the_entries_that_do_not_match(store: EventStore) -> None:
    """The hits' knowledge rows are looked up by their ids: through the user's (log,
    version) index, the planner walked every entry of the user to find a few."""
    projector = Projector(ProjectionTables())
    filler = [f"User noted groceries and laundry, list {i}." for i in range(400)]
    _learn(store, projector, "few", [*RARE[:10], *filler[:10]])
    _learn(store, projector, "many", [*RARE[:10], *filler])
    ranker = LexicalRanker(projector.tables)
    steps: dict[str, int] = {}
    for user_id in ("few", "many"):
        counted, found = counted_steps(store, functools.partial(_theremin_entries, ranker, user_id))
        assert sorted(e.text for e, _ in found) == sorted(RARE[:10])
        steps[user_id] = counted
    assert steps["many"] < 2 * steps["few"], steps


def _theremin_entries(
    ranker: LexicalRanker, user_id: str, connection: Connection
) -> list[tuple[KnowledgeEntry, float]]:
    """The user's ten entries best matching "theremin"."""
    return ranker.entries(connection, user_id, ["theremin"], 10)


def _related_steps(
    store: EventStore, ranker: LexicalRanker, user_id: str, texts: list[str], current: int
) -> tuple[int, list[str]]:
    """The SQLite steps the entries shown beside a batch of ``texts`` took, and their
    texts."""
    steps, found = counted_steps(
        store, lambda connection: ranker.related(connection, user_id, texts, 100, current)
    )
    return steps, [text for _, text, _ in found]


def test_the_entries_shown_beside_a_batch_cost_about_the_same_however_many_share_its_words(
    store: EventStore,
) -> None:
    """A backlog's facts share their common words ("likes", "very"): each text of a batch
    ranked every entry holding one, so the batches at the end of a 10,000-message backlog
    cost many times those at its start (extraction time grew with the square of the
    backlog). Only the newest rows of each word are ranked: ten times the entries take
    about the same steps, and the entry a text names by its rare word is still shown
    first."""
    projector = Projector(ProjectionTables())
    facts = [f"User likes thing{i} very much indeed." for i in range(4_000)]
    _learn(store, projector, "few", facts[-400:])
    _learn(store, projector, "many", facts)
    ranker = LexicalRanker(projector.tables)
    named = range(3_600, 4_000, 8)
    texts = [f"I like thing{i} very much" for i in named]
    few, few_shown = _related_steps(store, ranker, "few", texts, 400)
    many, many_shown = _related_steps(store, ranker, "many", texts, 4_000)
    assert few_shown[:50] == many_shown[:50] == [facts[i] for i in named]
    assert many < 3 * few, (few, many)


def test_the_entries_shown_beside_a_batch_are_the_newest_of_each_word_on_either_backend(
    db_url: str,
) -> None:
    """A bounded search ranks only the newest rows of each word on PostgreSQL as on
    SQLite, so both show the same entries beside a batch: an old entry saying a common
    word thrice outranks every newer one, and is left out on both once the word has more
    rows than are ranked (PostgreSQL ranked every matching entry, and showed it first)."""
    store = EventStore(db_url)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    said = [f"User likes thing{i}." for i in range(300)]
    _learn(store, projector, "ann", ["User likes likes likes cheese.", *said])
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        shown = ranker.related(connection, "ann", ["I like it"], 5, len(said) + 1)
    assert [text for _, text, _ in shown] == said[::-1][:5]
    store.close()


def _learn_and_reextract(
    store: EventStore, projector: Projector, user_id: str, live: list[str], again: list[str]
) -> None:
    """``user_id`` says one message a day, each extracted live as the fact of ``live`` at
    its place, then re-extracted into knowledge version "v2" as the fact of ``again``
    there (a re-extraction under way: the version is not promoted)."""
    log = UserLog.register(user_id)
    said = _said_and_extracted(log, user_id, live)
    for (message, at), fact in zip(said, again, strict=True):
        batch = [BatchMessage(message, "user", fact, at)]
        log.record_reextraction(
            "v2", [message], [ExtractedFact(fact, (message,))], "x", batch=batch
        )
    store.append([list(log.collect_events())], projector.apply)


def test_a_batch_is_shown_the_newest_entries_of_its_own_knowledge_version_on_either_backend(
    db_url: str,
) -> None:
    """While a re-extraction is under way its version holds entries of its own, all newer
    than the live ones: a batch extracted for either version is shown the newest entries
    of that version holding its words, the same on both backends. SQLite took each word's
    newest rows of every version before keeping the batch's (a live batch then saw none of
    its own: the newest were all the re-extraction's), PostgreSQL after."""
    store = EventStore(db_url)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    live = [f"User likes thing{i}." for i in range(300)]
    again = [f"User likes widget{i}." for i in range(300)]
    _learn_and_reextract(store, projector, "ann", live, again)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        shown = {
            version: [
                text
                for _, text, _ in ranker.related(connection, "ann", ["I like it"], 5, 300, version)
            ]
            for version in (LIVE_KNOWLEDGE, "v2")
        }
    assert shown == {LIVE_KNOWLEDGE: live[::-1][:5], "v2": again[::-1][:5]}
    store.close()


def _learn_in_two_versions(
    store: EventStore, projector: Projector, user_id: str, live: list[str], again: list[str]
) -> None:
    """``user_id`` says four messages, the ``live`` facts extracted from them, then the
    ``again`` facts re-extracted from them into knowledge version "v2" (not promoted), a
    quarter of each from each message: every v2 entry is newer than every live one."""
    log = UserLog.register(user_id)
    said: list[tuple[str, datetime]] = []
    for day in range(4):
        at = T0 + timedelta(days=day)
        message = log.add_message("user", "I like things", at, 1000)
        assert log.request_processing(f"{user_id}-t{day}", "manual")
        log.start_next()
        facts = [ExtractedFact(fact, (message,)) for fact in live[day::4]]
        batch = [BatchMessage(message, "user", "I like things", at)]
        log.record_knowledge(f"{user_id}-t{day}", facts, "x", batch=batch)
        said.append((message, at))
    for day, (message, at) in enumerate(said):
        facts = [ExtractedFact(fact, (message,)) for fact in again[day::4]]
        batch = [BatchMessage(message, "user", "I like things", at)]
        log.record_reextraction("v2", [message], facts, "x", batch=batch)
    store.append([list(log.collect_events())], projector.apply)


def _related_of(
    ranker: LexicalRanker, user_id: str, texts: list[str], version: str, connection: Connection
) -> list[tuple[str, str, datetime]]:
    """The 40 entries of knowledge ``version`` shown beside a batch of ``texts``."""
    return ranker.related(connection, user_id, texts, 40, 10**6, version)


@pytest.mark.parametrize("version", [LIVE_KNOWLEDGE, "v2"])
def test_the_entries_shown_beside_a_batch_cost_about_the_same_however_many_the_other_version_holds(
    store: EventStore, version: str
) -> None:
    """A batch of one knowledge version (live, or a re-extraction's) is shown entries of
    its own version only, and the other's rows sharing its words cost it about nothing:
    SQLite walked the index newest first until 256 rows of the batch's version passed,
    reading every row of the other version on the way (a re-extraction's batch beside
    20,000 live entries took 36 million steps, 6.7 s). Ten times the other version's
    rows take under twice the steps, and the entry a text names by its rare word is still
    shown first."""
    projector = Projector(ProjectionTables())
    own = [f"User likes thing{i} very much indeed." for i in range(200)]
    for user_id, others in (("few", 2_000), ("many", 20_000)):
        other = [f"User likes widget{i} very much indeed." for i in range(others)]
        live, again = (own, other) if version == LIVE_KNOWLEDGE else (other, own)
        _learn_in_two_versions(store, projector, user_id, live, again)
    ranker = LexicalRanker(projector.tables)
    named = range(0, 200, 10)
    texts = [f"I like thing{i} very much" for i in named]
    steps: dict[str, int] = {}
    shown: dict[str, list[str]] = {}
    for user_id in ("few", "many"):
        steps[user_id], found = counted_steps(
            store, functools.partial(_related_of, ranker, user_id, texts, version)
        )
        shown[user_id] = [text for _, text, _ in found]
    assert shown["few"][:20] == shown["many"][:20] == [own[i] for i in named]
    assert steps["many"] < 2 * steps["few"], steps


def _learn_beside_newer_rows_of_the_other_version(
    store: EventStore,
    projector: Projector,
    user_id: str,
    version: str,
    own: list[str],
    other: list[str],
) -> None:
    """``user_id``'s facts ``own`` are extracted into knowledge ``version`` (live, or the
    re-extraction "v2"), each from a message of its own, then ``other`` into the other
    version, all at once and newer than every ``own`` row: a re-extraction under way
    beside a live batch, or live batches beside one of a re-extraction."""
    log = UserLog.register(user_id)
    if version == LIVE_KNOWLEDGE:
        (message, at), *_ = _said_and_extracted(log, user_id, own)
        batch = [BatchMessage(message, "user", own[0], at)]
        facts = [ExtractedFact(fact, (message,)) for fact in other]
        log.record_reextraction("v2", [message], facts, "x", batch=batch)
    else:
        notes = [f"Note {i}." for i in range(len(own))]
        said = _said_and_extracted(log, user_id, notes)
        for (message, at), note, fact in zip(said, notes, own, strict=True):
            batch = [BatchMessage(message, "user", note, at)]
            log.record_reextraction(
                "v2", [message], [ExtractedFact(fact, (message,))], "x", batch=batch
            )
        message = log.add_message("user", "I like things", T0 + timedelta(days=len(own)), 1000)
        assert log.request_processing(f"{user_id}-later", "manual")
        log.start_next()
        batch = [BatchMessage(message, "user", "I like things", T0 + timedelta(days=len(own)))]
        facts = [ExtractedFact(fact, (message,)) for fact in other]
        log.record_knowledge(f"{user_id}-later", facts, "x", batch=batch)
    store.append([list(log.collect_events())], projector.apply)


@pytest.mark.parametrize("version", [LIVE_KNOWLEDGE, "v2"])
def test_a_batch_is_shown_its_own_versions_newest_entries_however_many_newer_the_other_holds(
    db_url: str, version: str
) -> None:
    """Each knowledge version's rows of a word are a window of their own: a live batch
    beside a re-extraction that wrote 1,100 newer entries saying "likes" (and a
    re-extraction's batch beside as many newer live ones) is shown the newest of its own
    version's entries saying it, alike on both backends. Each word's newest rows of every
    version were looked among, so the other version's crowded every one of them out."""
    store = EventStore(db_url)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    own = [f"User likes thing{i}." for i in range(300)]
    other = [f"User likes widget{i}." for i in range(1_100)]
    _learn_beside_newer_rows_of_the_other_version(store, projector, "ann", version, own, other)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        shown = ranker.related(connection, "ann", ["I like it"], 5, 10**6, version)
    assert [text for _, text, _ in shown] == own[::-1][:5]
    store.close()


def test_a_promoted_versions_entries_are_searched_as_the_live_ones(store: EventStore) -> None:
    """A re-extraction's current entries are marked in the index as its own, apart from
    the live ones; once the version is promoted they are searched as live entries (and
    the live ones they replaced no more), as a rebuild of the log marks them."""
    projector = Projector(ProjectionTables())
    log = UserLog.register("ann")
    said = _said_and_extracted(log, "ann", ["User likes tea.", "User likes cake."])
    again = ["User likes jazz.", "User likes opera."]
    for (message, at), fact in zip(said, again, strict=True):
        batch = [BatchMessage(message, "user", fact, at)]
        log.record_reextraction(
            "v2", [message], [ExtractedFact(fact, (message,))], "x", batch=batch
        )
    history = list(log.collect_events())
    store.append([history], projector.apply)
    log.promote("v2", history)
    store.append([list(log.collect_events())], projector.apply)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        found = ranker.entries(connection, "ann", ["likes"], 10)
        shown = ranker.related(connection, "ann", ["I like it"], 1, 2)
        left = ranker.entries(connection, "ann", ["likes"], 10, version="v2")
    assert sorted(entry.text for entry, _ in found) == again
    assert [text for _, text, _ in shown] == again[1:]
    assert left == []
    assert verify(store) == []


def _index_rows_a_promotion_writes(store: EventStore, user_id: str, entries: int) -> int:
    """The rows (SQLite's count of changes) the index work of promoting ``user_id``'s
    re-extraction writes: ``entries`` messages, each extracted live and again into "v2"
    as one current entry. The promoted entries are then searched as the live ones."""
    projector = Projector(ProjectionTables())
    log = UserLog.register(user_id)
    said = _said_and_extracted(log, user_id, [f"User likes tea{i}." for i in range(entries)])
    for i, (message, at) in enumerate(said):
        fact = f"User likes jazz{i}."
        batch = [BatchMessage(message, "user", fact, at)]
        log.record_reextraction(
            "v2", [message], [ExtractedFact(fact, (message,))], "x", batch=batch
        )
    history = list(log.collect_events())
    store.append([history], projector.apply)
    log.promote("v2", history)
    written = 0
    write = projector.search.write

    def counted_write(connection: Connection, *args: object, **kwargs: object) -> None:
        nonlocal written
        driver = connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        before = driver.total_changes
        write(connection, *args, **kwargs)  # type: ignore[arg-type]
        written += driver.total_changes - before

    projector.search.write = counted_write  # type: ignore[method-assign]
    store.append([list(log.collect_events())], projector.apply)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        found = ranker.entries(connection, user_id, ["likes"], 3)
        left = ranker.entries(connection, user_id, ["likes"], 3, version="v2")
    assert [entry.text for entry, _ in found] == [
        f"User likes jazz{entries - 1 - i}." for i in range(3)
    ]
    assert left == []
    assert verify(store) == []
    return written


def test_a_promotions_index_work_does_not_grow_with_the_versions_entries(
    store: EventStore,
) -> None:
    """A promotion marks no entry of the index again: a current entry is marked by its
    knowledge version's first write, which the promoted rows keep as the live ones, and
    the live rows replaced keep a mark no search reads. Marked by the version's name,
    every current entry of both versions was rewritten (an FTS5 update deletes and
    inserts every token of the row): 40,000 entries took 29 s of SQLite, writers held off,
    against a 30 s busy timeout."""
    few = _index_rows_a_promotion_writes(store, "few", 10)
    many = _index_rows_a_promotion_writes(store, "many", 200)
    assert many == few, (few, many)


def test_a_version_extracted_again_under_a_promoted_name_is_searched_apart_from_live(
    store: EventStore,
) -> None:
    """The live entries a promotion of "v2" made keep the mark of v2's first write; a later
    re-extraction named "v2" again begins at a later write, so its 1,100 newer entries
    saying "likes" are a window of their own: a live batch is still shown the newest of
    its own, and a rebuild of the log marks both alike."""
    projector = Projector(ProjectionTables())
    log = UserLog.register("ann")
    said = _said_and_extracted(log, "ann", [f"Note {i}." for i in range(5)])
    own = [f"User likes thing{i}." for i in range(5)]
    for (message, at), fact in zip(said, own, strict=True):
        batch = [BatchMessage(message, "user", fact, at)]
        log.record_reextraction(
            "v2", [message], [ExtractedFact(fact, (message,))], "x", batch=batch
        )
    history = list(log.collect_events())
    store.append([history], projector.apply)
    log.promote("v2", history)
    message, at = said[-1]
    newer = [ExtractedFact(f"User likes widget{i}.", (message,)) for i in range(1_100)]
    batch = [BatchMessage(message, "user", "Note 4.", at)]
    log.record_reextraction("v2", [message], newer, "x", batch=batch)
    store.append([list(log.collect_events())], projector.apply)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        shown = ranker.related(connection, "ann", ["I like it"], 3, 10**6)
        again = ranker.related(connection, "ann", ["I like it"], 3, 10**6, "v2")
    assert [text for _, text, _ in shown] == own[::-1][:3]
    assert [text for _, text, _ in again] == [f"User likes widget{i}." for i in (1099, 1098, 1097)]
    assert verify(store) == []


def _promotion_index_steps(store: EventStore, user_id: str, changes: int) -> int:
    """The SQLite steps the index work of promoting ``user_id``'s re-extraction takes:
    20 messages, each extracted live and again into "v2" as a fact changed ``changes``
    times in its answer (one current entry and ``changes`` ended ones of each version)."""
    projector = Projector(ProjectionTables())
    log = UserLog.register(user_id)
    said: list[tuple[str, datetime]] = []
    for day in range(20):
        at = T0 + timedelta(days=day)
        message = log.add_message("user", "I moved", at, 1000)
        assert log.request_processing(f"{user_id}-t{day}", "manual")
        log.start_next()
        batch = [BatchMessage(message, "user", "I moved", at)]
        log.record_knowledge(f"{user_id}-t{day}", _moves(message, day, changes), "x", batch=batch)
        said.append((message, at))
    for day, (message, at) in enumerate(said):
        batch = [BatchMessage(message, "user", "I moved", at)]
        log.record_reextraction("v2", [message], _moves(message, day, changes), "x", batch=batch)
    history = list(log.collect_events())
    store.append([history], projector.apply)
    log.promote("v2", history)
    steps = 0
    write = projector.search.write

    def counted_write(connection: Connection, *args: object, **kwargs: object) -> None:
        nonlocal steps

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        driver = connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.set_progress_handler(count, 1)
        try:
            write(connection, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            driver.set_progress_handler(None, 1)

    projector.search.write = counted_write  # type: ignore[method-assign]
    store.append([list(log.collect_events())], projector.apply)
    assert verify(store) == []
    return steps


def _moves(message: str, day: int, changes: int) -> list[ExtractedFact]:
    """A fact of ``day`` stated, then changed ``changes`` times in the same answer."""
    return [ExtractedFact(f"User lives in town{day}x0.", (message,))] + [
        ExtractedFact(f"User lives in town{day}x{i}.", (message,), "update", target_fact=i - 1)
        for i in range(1, changes + 1)
    ]


def test_a_promotions_index_work_does_not_grow_with_the_ended_entries(
    store: EventStore,
) -> None:
    """A promotion leaves an ended entry's index row alone, removed or promoted: it keeps
    its bare owner token. Rewriting each (an FTS5 update deletes and inserts every token
    of the row) made a promotion's index work grow with every entry of both versions: ten
    ended ones a fact cost 11 times the steps (3 once only the marks that changed were
    written, none since a promotion marks nothing again)."""
    few = _promotion_index_steps(store, "few", 0)
    many = _promotion_index_steps(store, "many", 10)
    assert many <= few, (few, many)


def test_entries_scored_alike_are_listed_newest_written_first_alike_on_both_backends(
    db_url: str,
) -> None:
    """Entries scored alike, ten of each batch sharing its day, are listed newest written
    first (the batch's last fact first), and a limit cutting them keeps the same ones on
    both backends, searched, shown beside a batch or listed as the most recent for a query
    without words: SQLite ordered them by day and then as its index gave them, PostgreSQL by
    day alone, and the two kept different ones."""
    store = EventStore(db_url)
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    log = UserLog.register("ann")
    for day in range(3):
        at = T0 + timedelta(days=day)
        message = log.add_message("user", "hello", at, 1000)
        assert log.request_processing(f"t{day}", "manual")
        log.start_next()
        facts = [ExtractedFact(f"User likes thing{day}x{i}.", (message,)) for i in range(10)]
        batch = [BatchMessage(message, "user", "hello", at)]
        log.record_knowledge(f"t{day}", facts, "x", batch=batch)
    store.append([list(log.collect_events())], projector.apply)
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        found = [entry.text for entry, _ in ranker.entries(connection, "ann", ["likes"], 15)]
        shown = [text for _, text, _ in ranker.related(connection, "ann", ["I like it"], 15, 10**6)]
        recent = [entry.text for entry, _ in ranker.entries(connection, "ann", [], 15)]
    newest = [f"User likes thing{day}x{i}." for day in (2, 1) for i in range(9, -1, -1)][:15]
    assert found == shown == newest
    assert recent == newest
    store.close()
