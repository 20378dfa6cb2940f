"""The full-text index stems each word before scoping it to its owner; messages wait for
it and go in in bulk, and a search indexes what waits before it looks."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import unicodedata
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import Stemmer
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    BatchMessage,
    DatabaseInUseError,
    EventStore,
    ExtractedFact,
    StorageError,
    UserLog,
    sqlite_url,
    user_log_id,
)
from events.file_hold import FileHold
from events.user_log import LIVE_KNOWLEDGE
from memvee._retrieval import Retriever
from memvee.extractors import OfflineExtractor
from projections import (
    SCHEMA_VERSION,
    LexicalRanker,
    ProjectionTables,
    Projector,
    index_messages,
    verify,
)
from projections.columns import id_text
from projections.projector import POSTGRES_SCHEMA_VERSION
from projections.ranking import fts_match
from projections.rebuild import bring_up_to_date
from projections.search import (
    _TOKENIZER,
    LONGEST_WORD_BYTES,
    PG_VECTOR,
    SearchIndex,
    index_word,
    indexed_layout,
    owned_words,
    owner_token,
    pg_query,
    pg_vector,
    word_pieces,
)
from tests.support.older_layouts import SCHEMA_OF_INDEXED_LAYOUT, mark_as_layout_17

T0 = datetime(2026, 1, 1, tzinfo=UTC)

KEPT_APART = [
    ("careful", "career"),
    ("career", "car"),
    ("careful", "cars"),
    ("university", "universe"),
    ("general", "generous"),
    ("organ", "organization"),
    ("news", "new"),
    ("police", "policy"),
]
"""Word pairs that a stemmer run on the owner-prefixed token merged into one term."""

BROUGHT_TOGETHER = [
    ("drives", "driving"),
    ("works", "working"),
    ("cars", "car"),
    ("Café", "cafe"),
    ("NURSES", "nurse"),
]
"""Forms of one word that must still meet in the index."""


@pytest.mark.parametrize(("one", "other"), KEPT_APART)
def test_words_with_different_meanings_stay_apart(one: str, other: str) -> None:
    assert index_word(one) != index_word(other)


@pytest.mark.parametrize(("one", "other"), BROUGHT_TOGETHER)
def test_forms_of_one_word_meet(one: str, other: str) -> None:
    assert index_word(one) == index_word(other)


def test_the_owner_prefix_goes_on_after_the_stem() -> None:
    log_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    owner = owner_token(log_id)
    assert owned_words(log_id, "Careful drivers") == f"{owner}care {owner}driver"


def test_plain_ascii_text_and_text_with_accents_index_each_word_the_same_way() -> None:
    """ASCII text is case-folded whole (the fast path); other text word by word."""
    log_id = "12345678-1234-5678-1234-567812345678"
    owner = owner_token(log_id)
    for text in ["Careful DRIVERS, 3 cars_and trucks!", "Crème brûlée at the Café", "İstanbul"]:
        words = [owner + index_word(w) for w in re.findall(r"[^\W_]+", text)]
        assert owned_words(log_id, text) == " ".join(words)


def test_text_with_combining_accents_indexes_as_the_same_text_precomposed() -> None:
    log_id = "12345678-1234-5678-1234-567812345678"
    composed = "naïve résumé at the Café"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert owned_words(log_id, decomposed) == owned_words(log_id, composed)
    assert len(owned_words(log_id, decomposed).split()) == 5


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        (
            "東京都に住んでいます",
            ["東京", "京都", "都に", "に住", "住ん", "んて", "てい", "いま", "ます"],  # folded
        ),
        ("猫", ["猫"]),
        ("I love 寿司 and ramen", ["i", "love", "寿司", "and", "ramen"]),
        ("iPhone手机很好", ["iphone", "手机", "机很", "很好"]),
        ("서울에 살아요", ["서울", "울에", "살아", "아요"]),
    ],
)
def test_chinese_japanese_and_korean_runs_are_indexed_as_pairs_of_characters(
    text: str, pieces: list[str]
) -> None:
    assert word_pieces(text) == pieces


def test_stored_text_also_indexes_each_character_of_a_run_so_one_character_words_are_found() -> (
    None
):
    assert word_pieces("我有一只猫", singles=True) == [
        *["我有", "有一", "一只", "只猫"],
        *["我", "有", "一", "只", "猫"],
    ]
    assert word_pieces("猫", singles=True) == ["猫"]


@pytest.mark.parametrize(
    ("stroked", "plain"),
    [("Tromsø", "tromso"), ("Łódź", "lodz"), ("Đakovo", "dakovo"), ("Æbleskiver", "aebleskiv")],
)
def test_letters_with_a_stroke_index_as_their_plain_letters(stroked: str, plain: str) -> None:
    assert index_word(stroked) == index_word(plain) == plain


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_ascii_text_indexes_as_word_by_word_stemming_would(text: str) -> None:
    """The fast path (a byte translation, stems remembered) gives what stemming each
    word found by the regular expression, with no memory, gives."""
    log_id = "12345678-1234-5678-1234-567812345678"
    owner = owner_token(log_id)
    stemmer = Stemmer.Stemmer("english")
    words = [owner + stemmer.stemWord(w.casefold()) for w in re.findall(r"[^\W_]+", text)]
    assert owned_words(log_id, text) == " ".join(words)
    assert owned_words(log_id, text) == " ".join(words), "again, from remembered stems"


async def test_a_search_for_one_word_of_a_pair_does_not_find_the_other(
    make_memory: Callable[..., Any],
) -> None:
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    await memory.add_exchange("ann", "I drive an old Volvo car.", "Nice.")
    await memory.add_exchange("ann", "I am allergic to peanuts, so be careful.", "Noted.")
    await memory.add_exchange("ann", "My career is in nursing.", "Great.")
    await memory.flush("ann")
    result = await memory.retrieve("ann", "what car does she drive?", include_messages=True)
    texts = [hit.text for hit in result.entries] + [m.message.content for m in result.messages]
    assert texts and all("peanut" not in t and "career" not in t for t in texts)
    assert any("Volvo" in t for t in texts)


async def test_a_message_typed_with_combining_accents_or_in_japanese_is_found_by_its_words(
    make_memory: Callable[..., Any],
) -> None:
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    await memory.add_exchange("ann", unicodedata.normalize("NFD", "Ma naïveté me perd"), "Oh.")
    await memory.add_exchange("ann", "東京都に住んでいます", "いいですね")
    await memory.add_exchange("ann", "I like tea", "Nice.")
    await memory.add_exchange("ann", "我有一只猫", "很好")
    await memory.add_exchange("ann", "I grew up in Tromsø", "Cold!")

    async def found(query: str) -> list[str]:
        result = await memory.retrieve("ann", query, include_messages=True)
        return [m.message.content for m in result.messages]

    assert [unicodedata.normalize("NFC", t) for t in await found("naïveté")] == [
        "Ma naïveté me perd"
    ]
    assert await found("東京") == ["東京都に住んでいます"]
    assert await found("京都に住む") == ["東京都に住んでいます"]
    assert await found("猫") == ["我有一只猫"]
    assert await found("Tromso") == ["I grew up in Tromsø"]


SAID = [
    "Ich wohne in der Hauptstraße 5",
    "My e-mail is bob@example.com",
    "東京都に住んでいます",
    "\ufb01nancial planning is my job",
    "I visited Malmö",
    "Great day (ﾟ∀ﾟ) at the lake",
    "The ferry across İstanbul was late",
    "كَتَبَ الطالبُ رسالةً",
    "Ọ̀ṣun is a river",
    "ｺｰﾋｰが好きです",
    "ฉันอาศัยอยู่ในกรุงเทพ",
]
"""Messages whose words need more than lower-casing to meet a query (QA's cases); a
halfwidth sound mark alone ("ﾟ") folds to no word at all."""

FOUND_AS_SAID = [
    ("Hauptstraße", ["Ich wohne in der Hauptstraße 5"], []),
    ("Hauptstrasse", ["Ich wohne in der Hauptstraße 5"], []),
    ("bob@example.com", ["My e-mail is bob@example.com"], []),
    ("東京", ["東京都に住んでいます"], []),
    ("\ufb01nancial", ["\ufb01nancial planning is my job"], []),
    ("financial", ["\ufb01nancial planning is my job"], []),
    ("Malmo", ["I visited Malmö"], []),
    ("Malmö", ["I visited Malmö"], []),
    ("Groß", [], ["Jürgen Groß works at Großmann."]),
    ("Großmann", [], ["Jürgen Groß works at Großmann."]),
    ("Zoe", ["I live in Oslo"], []),
    ("Zoë", ["I live in Oslo"], []),
    ("lake (ﾟ∀ﾟ)", ["Great day (ﾟ∀ﾟ) at the lake"], []),
    ("İstanbul", ["The ferry across İstanbul was late"], []),
    ("كتب", ["كَتَبَ الطالبُ رسالةً"], []),
    ("Osun", ["Ọ̀ṣun is a river"], []),
    ("コーヒー", ["ｺｰﾋｰが好きです"], []),
    ("กรุงเทพ", ["ฉันอาศัยอยู่ในกรุงเทพ"], []),
]
"""Queries repeating a stored word, with the messages and the entries each finds."""


async def test_a_query_repeating_a_stored_word_finds_the_same_rows_on_every_backend(
    make_memory: Callable[..., Any],
) -> None:
    """Both backends index and query the same normalised words (ß as "ss", ligatures
    unfolded, accents and other marks typed or not, "İ" as "i", e-mail addresses by their
    parts, Chinese, Japanese (half-width or not), Korean and Thai by pairs, speakers'
    names, entries' text): PostgreSQL once parsed the raw text itself and missed every
    one; queries were cut before they were folded, stored text after."""
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    for line in SAID:
        await memory.add_exchange("ann", line, "ok")
    await memory.add_exchange("ann", "I work at Großmann", "ok", user_name="Jürgen Groß")
    await memory.process("ann")
    await memory.add_exchange("ann", "I live in Oslo", "ok", user_name="Zoë")
    found = {}
    for query, _, _ in FOUND_AS_SAID:
        result = await memory.retrieve("ann", query, include_messages=True, top_k=3)
        found[query] = (
            [m.message.content for m in result.messages],
            [e.text for e in result.entries],
        )
    assert found == {query: (messages, entries) for query, messages, entries in FOUND_AS_SAID}


SAID_WITH_VOWEL_SIGNS = [
    "मुझे किताब पसंद है",
    "कि",
    "मैं हिन्दी बोलता हूँ",
    "ನಾನು ಕನ್ನಡ ಮಾತನಾಡುತ್ತೇನೆ",
    "தமிழ் மொழி",
    "ကျွန်တော် မြန်မာ",
    "ខ្ញុំស្រលាញ់",
]
"""Messages whose words are spelled with vowel signs (Hindi, Kannada, Tamil, Burmese,
Khmer): marks that stay in their words."""

FOUND_BY_WHOLE_WORDS = [
    ("किताब", ["मुझे किताब पसंद है"]),
    ("कि", ["कि"]),
    ("क", []),
    ("हिन्दी", ["मैं हिन्दी बोलता हूँ"]),
    ("ह", []),
    ("ಕನ್ನಡ", ["ನಾನು ಕನ್ನಡ ಮಾತನಾಡುತ್ತೇನೆ"]),
    ("ನ", []),
    ("க", []),
    ("မြန်မာ", ["ကျွန်တော် မြန်မာ"]),
    ("ខ្ញុំ", ["ខ្ញុំស្រលាញ់"]),
]
"""Queries in those scripts and the messages each finds: a letter without its vowel sign
is another word, and one script never finds another."""


async def test_words_spelled_with_vowel_signs_find_the_same_rows_on_every_backend(
    make_memory: Callable[..., Any],
) -> None:
    """Messages and entries alike are found by their whole words only: SQLite's
    tokenizer cut stored words at each vowel sign, so "क" found "किताब", "ह" found "है"
    and a Khmer word found a Burmese message, where PostgreSQL found none."""
    memory = await make_memory(embedder=False)
    for line in SAID_WITH_VOWEL_SIGNS:
        await memory.add_exchange("ann", line, "ok")

    async def found() -> dict[str, tuple[list[str], list[str]]]:
        hits = {}
        for query, _ in FOUND_BY_WHOLE_WORDS:
            result = await memory.retrieve("ann", query, include_messages=True, top_k=10)
            hits[query] = (
                sorted(m.message.content for m in result.messages),
                sorted(e.text.removeprefix("User said: ") for e in result.entries),
            )
        return hits

    assert await found() == {query: (said, []) for query, said in FOUND_BY_WHOLE_WORDS}
    await memory.process("ann")  # an entry per message, found in its message's place
    assert await found() == {query: ([], said) for query, said in FOUND_BY_WHOLE_WORDS}


def test_the_sqlite_index_keeps_each_word_as_memvee_cuts_it(indexed_store: Any) -> None:
    """FTS5 splits stored text only where memvee's cutting does: each indexed message
    holds its owned words, whole, whatever the script (marks kept in words, letters
    of scripts newer than SQLite's Unicode tables)."""
    store, projector = indexed_store
    ann = UserLog.register("ann")
    said = [*SAID_WITH_VOWEL_SIGNS, "ශ්‍රී ලංකා", "བོད་ཡིག", "𞤀𞤣𞤤𞤢𞤥", "ᱚᱞ ᱪᱤᱠᱤ"]
    _write(store, projector, *((ann, line) for line in said))
    assert index_messages(store, projector) == len(said)
    m = projector.search.messages_fts.name
    with store.engine.connect() as connection:
        vocabulary = f"fts5vocab(main, {m}, instance)"
        connection.exec_driver_sql(f"CREATE VIRTUAL TABLE temp.words USING {vocabulary}")
        indexed = connection.exec_driver_sql(
            "SELECT doc, term FROM temp.words ORDER BY doc, offset"
        ).all()
    by_message = [[term for _, term in terms] for _, terms in groupby(indexed, itemgetter(0))]
    assert by_message == [owned_words(str(ann.id), line).split() for line in said]


async def test_an_index_cut_at_vowel_signs_is_made_again_when_the_memory_opens(
    make_memory: Callable[..., Any], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database indexed by the earlier tokenizer, which cut words at vowel signs, has
    its index tables made again with this one on first open, not only refilled."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the tokenizer is SQLite's")
    with monkeypatch.context() as earlier:
        earlier.setattr("projections.search._TOKENIZER", "unicode61 remove_diacritics 2")
        memory = await make_memory(embedder=False)
        await memory.add_exchange("ann", "मुझे किताब पसंद है", "ok")
        result = await memory.retrieve("ann", "क", include_messages=True)
        assert [m.message.content for m in result.messages] == ["मुझे किताब पसंद है"]
        await memory.close()
    reopened = await make_memory(embedder=False)
    for query, said in (("क", []), ("किताब", ["मुझे किताब पसंद है"])):
        result = await reopened.retrieve("ann", query, include_messages=True)
        assert [m.message.content for m in result.messages] == said, query


async def test_a_message_of_the_longest_chinese_text_is_stored_and_found_on_every_backend(
    make_memory: Callable[..., Any],
) -> None:
    """A pair and a single a character: PostgreSQL's vector of 100,000 distinct
    characters passed its 1 MiB and the write failed; it keeps what fits."""
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    draw = random.Random(7)
    ideographs = "".join(chr(draw.randrange(0x4E00, 0x9FFF)) for _ in range(99_990))
    await memory.add_exchange("ann", ideographs, "ok")
    result = await memory.retrieve("ann", ideographs[:4], include_messages=True, top_k=1)
    assert [m.message.content for m in result.messages] == [ideographs]


async def test_messages_are_indexed_without_a_copy_of_their_words_and_forget_unindexes_them(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the full-text tables are SQLite's")
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    for user in ("ann", "bob"):
        await memory.add_exchange(user, f"My parrot is called Kiwi, says {user}.", "Cute!")
        await memory.add_exchange(user, "!!!", "?")  # no word: nothing to index
    engine = memory._engine
    assert engine is not None
    await asyncio.to_thread(engine.index_messages)  # bob's words are in the index, then
    await memory.forget("bob")
    index = SearchIndex(engine.tables)
    m, messages = index.messages_fts.name, engine.tables.messages.name
    with engine.store.engine.connect() as connection:
        connection.exec_driver_sql(f"INSERT INTO {m}({m}, rank) VALUES ('integrity-check', 1)")
        words = connection.exec_driver_sql(f"SELECT count(*) FROM {m}_data").scalar()
        assert (
            words
            and not connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE name = ?", (f"{m}_content",)
            ).first()
        )
        vocabulary = f"fts5vocab(main, {m}, instance)"
        connection.exec_driver_sql(f"CREATE VIRTUAL TABLE temp.words USING {vocabulary}")
        docs = [r[0] for r in connection.exec_driver_sql("SELECT DISTINCT doc FROM temp.words")]
        marks = ", ".join("?" * len(docs))
        numbered = connection.exec_driver_sql(
            f"SELECT message_id FROM {messages} WHERE id IN ({marks}) ORDER BY id", tuple(docs)
        )
        indexed = [id_text(r[0]) for r in numbered]
        assert len(indexed) == len(docs), "every indexed message is a row: bob's went with his"
    ann = {message.message_id: message.content for message in await memory.messages("ann")}
    assert [ann[item] for item in indexed] == ["My parrot is called Kiwi, says ann.", "Cute!"]
    found = await memory.retrieve("ann", "parrot", include_messages=True)
    assert [hit.message.content for hit in found.messages][:1] == [
        "My parrot is called Kiwi, says ann."
    ]


def _indexed_docs(store: EventStore, index: SearchIndex) -> int:
    m = index.messages_fts.name
    with store.engine.connect() as connection:
        return int(connection.exec_driver_sql(f"SELECT count(*) FROM {m}_docsize").scalar() or 0)


def _write(store: EventStore, projector: Projector, *messages: tuple[UserLog, str]) -> None:
    for log, content in messages:
        log.add_message("user", content, None, 1000)
    store.append(
        [log.collect_events() for log in {id(m[0]): m[0] for m in messages}.values()],
        projector.apply,
    )


@pytest.fixture
def indexed_store(tmp_path: Path) -> Any:
    store = EventStore(sqlite_url(tmp_path / "s.db"))
    projector = Projector(ProjectionTables())
    with store.transaction() as connection:
        projector.create(connection)
    yield store, projector
    store.close()


def test_messages_wait_for_the_index_and_go_in_oldest_first_in_bulk(indexed_store: Any) -> None:
    store, projector = indexed_store
    ann, bob = UserLog.register("ann"), UserLog.register("bob")
    _write(store, projector, (ann, "parrots talk"), (bob, "cats sleep"), (ann, "!!!"))
    _write(store, projector, (bob, "dogs bark"))
    with store.engine.connect() as connection:
        assert projector.search.unindexed(connection)
    assert _indexed_docs(store, projector.search) == 0, "the write leaves them waiting"
    with store.transaction() as connection:
        assert projector.index_messages(connection, limit=3) == 3
    assert _indexed_docs(store, projector.search) == 2, "a message without a word is passed"
    assert index_messages(store, projector) == 1
    assert index_messages(store, projector) == 0
    with store.engine.connect() as connection:
        assert not projector.search.unindexed(connection)
    assert _indexed_docs(store, projector.search) == 3


def test_a_row_number_freed_by_an_erasure_and_given_again_still_gets_indexed(
    indexed_store: Any,
) -> None:
    """SQLite numbers a new row after the highest left, so erasing the user who holds the
    highest numbers hands them out again: they must count as waiting once more."""
    store, projector = indexed_store
    ann, bob = UserLog.register("ann"), UserLog.register("bob")
    _write(store, projector, (ann, "parrots talk"))
    _write(store, projector, (bob, "cats sleep"), (bob, "cats purr"))
    assert index_messages(store, projector) == 3
    with store.transaction() as connection:
        projector.forget(connection, str(bob.id))
    carl = UserLog.register("carl")
    _write(store, projector, (carl, "cats hunt"))
    assert index_messages(store, projector) == 1
    ranker = LexicalRanker(projector.tables)
    with store.engine.connect() as connection:
        found = ranker.messages(connection, "carl", ["cats"], 5)
    assert [message.content for message, _ in found] == ["cats hunt"]


def test_a_search_indexes_what_waits_before_it_looks(indexed_store: Any) -> None:
    store, projector = indexed_store
    ann = UserLog.register("ann")
    _write(store, projector, (ann, "my parrot is called Kiwi"))
    tables = projector.tables
    blind = Retriever(store.engine, tables, None)
    assert blind.retrieve("ann", "parrot", 5, None, True).messages == []
    retriever = Retriever(
        store.engine, tables, None, index_messages=lambda: index_messages(store, projector)
    )
    found = retriever.retrieve("ann", "parrot", 5, None, True).messages
    assert [hit.message.content for hit in found] == ["my parrot is called Kiwi"]


STORED_ALIKE = [
    "Careful DRIVERS, 3 cars_and trucks! Cars, cars.",
    unicodedata.normalize("NFD", "Jürgen Groß: naïve résumé at the Café in Malmö"),
    "\ufb01nancial planning, bob@example.com",
    "我有一只猫, 東京都に住んでいます, 서울에 살아요",
    "Æbleskiver in Tromsø and Łódź",
    "x" * 3000 + " short",
    "ж" * 1100 + " " + "ა" * 700,
]
"""Texts whose stored words take every step of the index's cutting and folding."""


def test_postgresql_stores_the_words_sqlite_indexes_and_a_query_looks_up_the_same(
    db_url: str,
) -> None:
    """One definition of a text's words for both backends: the lexemes PostgreSQL keeps
    of :func:`pg_vector` are SQLite's indexed words without the owner prefix, each with
    as many positions as it occurs (a word too long for PostgreSQL cut alike on both),
    and the query of a text's words looks up on PostgreSQL what it looks up on SQLite."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the stored lexemes are PostgreSQL's")
    log_id = "12345678-1234-5678-1234-567812345678"
    owner = owner_token(log_id)
    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as connection:
            for said in STORED_ALIKE:
                words = [w.removeprefix(owner) for w in owned_words(log_id, said).split()]
                expected = {w: words.count(w) for w in words}
                stored = connection.execute(
                    sqlalchemy.text(
                        "SELECT lexeme, cardinality(positions), weights[1] "
                        "FROM unnest(CAST(:v AS tsvector))"
                    ),
                    {"v": pg_vector(log_id, said)},
                ).all()
                assert {w: n for w, n, weight in stored if weight == "D"} == expected, said[:40]
                assert [(w, weight) for w, _, weight in stored if weight != "D"] == [
                    (f"o{owner}", "A")
                ]
                terms = said.split()
                on_sqlite = re.findall(f'"{owner}([^"]*)"', fts_match(log_id, terms))
                on_postgresql = connection.execute(
                    sqlalchemy.text("SELECT querytree(CAST(:q AS tsquery))"),
                    {"q": pg_query(terms)},
                ).scalar()
                assert on_postgresql.replace("'", "").split(" | ") == on_sqlite, said[:40]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("word", "kept"),
    [
        ("abc" * 700 + "z", "abc" * 682),
        ("ж" * 1100, "ж" * 1023),
        ("a" + "ა" * 700, "a" + "ა" * 681),
    ],
)
def test_a_word_longer_than_postgresql_stores_is_cut_alike_in_stored_text_and_queries(
    word: str, kept: str
) -> None:
    """A word of more UTF-8 bytes than PostgreSQL's longest lexeme (a pasted token) is
    indexed as its longest start within them, whole characters, on both backends, and a
    query of the word looks that start up."""
    log_id = "12345678-1234-5678-1234-567812345678"
    owner = owner_token(log_id)
    assert len(kept.encode()) <= LONGEST_WORD_BYTES < len(kept.encode()) + 3
    assert owned_words(log_id, f"token {word}").split() == [owner + "token", owner + kept]
    assert f"'{kept}'" in pg_vector(log_id, f"token {word}")
    assert pg_query([word]) == f"'{kept}'"
    assert fts_match(log_id, [word]) == fts_match(log_id, [kept])


async def test_a_message_holding_a_word_longer_than_postgresql_stores_is_found_by_it(
    make_memory: Callable[..., Any],
) -> None:
    """Both backends find a message by a word of over 2,046 UTF-8 bytes (an API token,
    a long Cyrillic word), as by any other."""
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    token, cyrillic = "abc" * 700 + "z", "ж" * 1100
    await memory.add_exchange("ann", f"my api token is {token}", "noted")
    await memory.add_exchange("ann", f"слово {cyrillic}", "ok")
    for word, said in ((token, f"my api token is {token}"), (cyrillic, f"слово {cyrillic}")):
        found = await memory.retrieve("ann", word, include_messages=True)
        assert [hit.message.content for hit in found.messages] == [said]


async def test_on_postgresql_a_text_naming_another_users_token_does_not_reach_their_search(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """PostgreSQL's index holds each row's lexemes and its owner's token at weight A; a
    message that spells out another user's token holds it at no weight, so it never
    passes for that user's row."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the stored lexemes are PostgreSQL's")
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    ann_token = "o" + owner_token(str(user_log_id("ann")))
    await memory.add_exchange("ann", "My parrot is called Kiwi.", "Cute!")
    await memory.add_exchange("bob", f"{ann_token} parrot parrot parrot", "Hm.")
    found = await memory.retrieve("ann", "parrot", include_messages=True)
    assert [m.message.content for m in found.messages] == ["My parrot is called Kiwi."]


async def test_on_postgresql_tables_of_the_earlier_index_get_the_stored_lexemes(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """Earlier layouts indexed an expression that parsed each row's text again at every
    search; opening such tables adds the stored lexemes (and their index) in place."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the stored lexemes are PostgreSQL's")
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    await memory.add_exchange("ann", "My parrot is called Kiwi.", "Cute!")
    await memory.flush("ann")
    await memory.add_exchange("ann", "A parrot lives long.", "Decades!")
    engine = memory._engine
    assert engine is not None
    tables = engine.tables
    with engine.store.engine.begin() as connection:
        for table in (tables.knowledge, tables.messages):
            connection.exec_driver_sql(f"ALTER TABLE {table.name} DROP COLUMN search_vector")
            connection.exec_driver_sql(
                f"CREATE INDEX {table.name}_search ON {table.name} "
                "USING gin (to_tsvector('english', log_id))"
            )
    await memory.close()
    reopened = await make_memory(extractor=OfflineExtractor(), embedder=False)
    found = await reopened.retrieve("ann", "parrot", include_messages=True)
    assert [e.text for e in found.entries] == ["User's parrot is called Kiwi."]
    assert [m.message.content for m in found.messages] == ["A parrot lives long."]
    with engine.store.engine.connect() as connection:
        indexes = {
            name
            for (name,) in connection.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename IN (%s, %s)",
                (tables.knowledge.name, tables.messages.name),
            )
        }
    assert {
        f"{tables.knowledge.name}_search_vector",
        f"{tables.messages.name}_search_vector",
    } <= indexes
    assert not indexes & {f"{tables.knowledge.name}_search", f"{tables.messages.name}_search"}


async def test_on_postgresql_lexemes_the_server_parsed_give_way_to_the_words_both_backends_index(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """The layout before kept lexemes PostgreSQL parsed from the raw text (a generated
    column), which missed "Groß" and "Malmo": opening its tables makes the column plain
    and fills it with the words SQLite indexes, as a rebuild fills it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the stored lexemes are PostgreSQL's")
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    await memory.add_exchange("ann", "I work at Großmann", "ok", user_name="Jürgen Groß")
    await memory.process("ann")
    await memory.add_exchange("ann", "I visited Malmö", "Nice!")
    engine = memory._engine
    assert engine is not None
    tables, store = engine.tables, engine.store
    with store.engine.begin() as connection:
        for table, words in (
            (tables.knowledge, "text"),
            (tables.messages, "coalesce(name || ': ', '') || content"),
        ):
            connection.exec_driver_sql(f"ALTER TABLE {table.name} DROP COLUMN search_vector")
            connection.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
                "(setweight(to_tsvector('simple', 'o' || replace(log_id, '-', '')), 'A') || "
                f"to_tsvector('english', {words})) STORED"
            )
            connection.exec_driver_sql(
                f"CREATE INDEX {table.name}_search_vector ON {table.name} USING gin (search_vector)"
            )
    await memory.close()
    reopened = await make_memory(extractor=OfflineExtractor(), embedder=False)
    found = await reopened.retrieve("ann", "Groß", include_messages=True)
    assert [e.text for e in found.entries] == ["Jürgen Groß works at Großmann."]
    found = await reopened.retrieve("ann", "Malmo", include_messages=True)
    assert [m.message.content for m in found.messages] == ["I visited Malmö"]
    with store.engine.connect() as connection:
        generated = connection.exec_driver_sql(
            "SELECT string_agg(attgenerated, '') FROM pg_attribute "
            "WHERE attname = 'search_vector' AND attrelid IN (%s::regclass, %s::regclass)",
            (tables.knowledge.name, tables.messages.name),
        ).scalar()
    assert generated == ""
    assert verify(store) == []
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE {tables.messages.name} SET search_vector = 'malmo'")
    assert {d.table for d in verify(store)} == {"messages_search_vector"}


def test_a_new_way_of_indexing_words_comes_with_a_new_schema_version() -> None:
    """An older memvee refuses a database only by a higher schema version: had the
    tokenizer changed under the same number, it would take the newer index for its own
    older one and lay the database out again, undoing the change for every process."""
    came_with = SCHEMA_OF_INDEXED_LAYOUT.get(indexed_layout())
    assert came_with is not None and came_with <= SCHEMA_VERSION
    assert came_with > max(v for k, v in SCHEMA_OF_INDEXED_LAYOUT.items() if k != indexed_layout())


_EARLIER_WORDS_LAYOUT = "nfc|cjk-bigrams-and-singles|strokes"
"""How an earlier memvee cut words (cut, then folded), as its search fingerprint names it."""


async def test_an_index_of_an_earlier_word_cutting_is_rebuilt_when_the_memory_opens(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    """A layout number of the earlier cutting (same schema, stemmer and tokenizer) makes
    the projections refold, the index with them, so the stored words are cut as queries
    are."""
    memory = await make_memory(extractor=OfflineExtractor())
    await memory.add_exchange("ann", "The ferry across İstanbul was late", "ok")
    await memory.close()
    fingerprint = zlib.crc32(f"{Stemmer.version()}|{_TOKENIZER}|{_EARLIER_WORDS_LAYOUT}".encode())
    schema = SCHEMA_VERSION if db_url.startswith("sqlite") else POSTGRES_SCHEMA_VERSION
    earlier = schema << 20 | fingerprint & 0xFFFFF
    tables = ProjectionTables()
    index = SearchIndex(tables)
    store = EventStore(db_url)
    with store.transaction() as connection:  # the earlier words: none found
        position = tables.position.name
        connection.exec_driver_sql(
            f"UPDATE {position} SET position = {earlier} WHERE name = 'schema'"
        )
        if db_url.startswith("sqlite"):
            m = index.messages_fts.name
            connection.exec_driver_sql(f"INSERT INTO {m}({m}) VALUES ('delete-all')")
        else:
            connection.exec_driver_sql(f"UPDATE {tables.messages.name} SET {PG_VECTOR} = NULL")
    store.close()
    reopened = await make_memory(extractor=OfflineExtractor())
    result = await reopened.retrieve("ann", "İstanbul", include_messages=True, top_k=1)
    assert [m.message.content for m in result.messages] == ["The ferry across İstanbul was late"]


def _layout_16() -> int:
    """The layout memvee of schema 16 stored and compares for equality (this
    installation's stemmer and Unicode): its index marked every version's current entries
    alike."""
    marked_alike = next(k for k, v in SCHEMA_OF_INDEXED_LAYOUT.items() if v == 15)
    words = f"{Stemmer.version()}|unicode {unicodedata.unidata_version}|{marked_alike}"
    return 16 << 20 | zlib.crc32(words.encode()) & 0xFFFFF


def _laid_out_and_learned(
    url: str,
) -> tuple[EventStore, ProjectionTables, Projector, dict[str, list[str]]]:
    """A store at ``url`` with projections laid out as now and Ann's facts learned live
    and again (:func:`_learn_live_and_again`), and what a batch is shown there, fresh."""
    store = EventStore(url)
    tables = ProjectionTables()
    projector = Projector(tables)
    with store.transaction() as connection:
        projector.create(connection)
    _learn_live_and_again(store, projector)
    return store, tables, projector, _shown(store, tables)


def _learn_live_and_again(store: EventStore, projector: Projector) -> None:
    """Ann's facts of three messages, live, then re-extracted into "v2" (not promoted), one
    of them changed in each answer (an ended entry of each version)."""
    log = UserLog.register("ann")
    said = []
    for day in range(3):
        at = T0 + timedelta(days=day)
        message = log.add_message("user", "hello", at, 1000)
        assert log.request_processing(f"t{day}", "manual")
        log.start_next()
        facts = [
            ExtractedFact(f"User likes tea{day}.", (message,)),
            ExtractedFact(f"User likes cake{day}.", (message,), "update", target_fact=0),
        ]
        log.record_knowledge(f"t{day}", facts, "x", batch=[BatchMessage(message, "user", "hi", at)])
        said.append((message, at))
    for day, (message, at) in enumerate(said):
        facts = [
            ExtractedFact(f"User likes jazz{day}.", (message,)),
            ExtractedFact(f"User likes opera{day}.", (message,), "update", target_fact=0),
        ]
        batch = [BatchMessage(message, "user", "hi", at)]
        log.record_reextraction("v2", [message], facts, "x", batch=batch)
    store.append([list(log.collect_events())], projector.apply)


def _shown(store: EventStore, tables: ProjectionTables) -> dict[str, list[str]]:
    """What a batch of each knowledge version is shown beside it, and a search finds."""
    ranker = LexicalRanker(tables)
    with store.engine.connect() as connection:
        shown = {
            version: [
                t for _, t, _ in ranker.related(connection, "ann", ["I like"], 9, 99, version)
            ]
            for version in (LIVE_KNOWLEDGE, "v2")
        }
        found = ranker.entries(connection, "ann", ["likes"], 9, version="v2")
    return {**shown, "found": sorted(entry.text for entry, _ in found)}


def test_a_sqlite_index_of_layout_16_is_marked_by_version_in_place_when_opened(
    tmp_path: Path,
) -> None:
    """A SQLite database of layout 16, whose index marked a re-extraction's current
    entries as live ones, opens folding no event: its index is marked by version in place,
    and searches as a fresh one. The layout's change refolded the whole log (101,975
    events: 12.5 s, writers held off)."""
    store, tables, projector, fresh = _laid_out_and_learned(sqlite_url(tmp_path / "m.db"))
    k = projector.search.knowledge_fts.name
    with store.transaction() as connection:  # as memvee of layout 16 left it
        connection.exec_driver_sql(
            f"UPDATE {k} SET owner = substr(owner, 1, 32) || 'now' WHERE owner LIKE '%now_%'"
        )
        connection.exec_driver_sql(
            f"UPDATE {tables.position.name} SET position = {_layout_16()} WHERE name = 'schema'"
        )
    assert bring_up_to_date(store, tables) == 0
    assert _shown(store, tables) == fresh
    assert fresh["v2"] == ["User likes opera2.", "User likes opera1.", "User likes opera0."]
    with store.engine.connect() as connection:
        assert projector.layout_current(connection)
    assert verify(store) == []
    store.close()


def _index_owners(store: EventStore, projector: Projector) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(
            owner
            for (owner,) in connection.exec_driver_sql(
                f"SELECT owner FROM {projector.search.knowledge_fts.name}"
            )
        )


def test_a_sqlite_file_of_layout_17_another_store_has_open_is_not_upgraded_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of an older memvee still open on a file of layout 17 would go on marking
    its writes as 17 does, in an index the upgrade marked by first write, where no
    search finds them. So the open that would upgrade the file in place is refused with
    :class:`DatabaseInUseError` while another store has the file open, writing nothing;
    once that store is closed, the open upgrades it."""
    monkeypatch.setattr("events.store.HOLD_ALONE_SECONDS", 0.3)  # how long the open waits
    url = sqlite_url(tmp_path / "m.db")
    older = EventStore(url)  # the process of memvee 17 that keeps running
    tables = ProjectionTables()
    projector = Projector(tables)
    with older.transaction() as connection:
        projector.create(connection)
    _learn_live_and_again(older, projector)
    mark_as_layout_17(older, projector)
    marked_by_17 = _index_owners(older, projector)
    opener = EventStore(url)
    with pytest.raises(DatabaseInUseError, match="older memvee processes first"):
        bring_up_to_date(opener, ProjectionTables())
    assert _index_owners(opener, projector) == marked_by_17
    with opener.engine.connect() as connection:
        assert projector.layout_older(connection)
    older.close()
    assert bring_up_to_date(opener, ProjectionTables()) == 0
    assert _index_owners(opener, projector) != marked_by_17
    with opener.engine.connect() as connection:
        assert projector.layout_current(connection)
    assert verify(opener) == []
    another = EventStore(url)  # the file is shared again once upgraded
    assert another.max_position() == opener.max_position()
    another.close()
    opener.close()


def test_a_sqlite_file_of_layout_17_that_cannot_be_held_is_upgraded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where no store can hold the file (no ``flock`` on its file system, Windows), no
    open can tell whether another store has it open: the upgrade goes on, and says in a
    warning that an older memvee still running on the file was not looked for."""
    monkeypatch.setattr(FileHold, "take", classmethod(lambda cls, database, *, create: None))
    url = sqlite_url(tmp_path / "m.db")
    older = EventStore(url)
    projector = Projector(ProjectionTables())
    with older.transaction() as connection:
        projector.create(connection)
    _learn_live_and_again(older, projector)
    mark_as_layout_17(older, projector)
    opener = EventStore(url)
    try:
        with caplog.at_level(logging.WARNING, logger="memvee.events"):
            assert bring_up_to_date(opener, ProjectionTables()) == 0
        with opener.engine.connect() as connection:
            assert projector.layout_current(connection)
        assert "without checking that no other process" in caplog.text
    finally:
        opener.close()
        older.close()


def test_stores_opening_a_sqlite_file_of_layout_17_at_one_moment_all_open_it_upgraded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores of this memvee opening one file of layout 17 at the same moment (processes
    started together) each hold the file when they find it must be upgraded alone: each
    waits for the others, holding nothing meanwhile, rather than refusing them. One marks
    the index in place; the others find it upgraded and open it as it is."""
    url = sqlite_url(tmp_path / "m.db")
    tables = ProjectionTables()
    projector = Projector(tables)
    maker = EventStore(url)
    with maker.transaction() as connection:
        projector.create(connection)
    _learn_live_and_again(maker, projector)
    fresh = _shown(maker, tables)
    mark_as_layout_17(maker, projector)
    maker.close()
    marked: list[int] = []
    mark = SearchIndex.mark_by_first_write

    def counted(index: SearchIndex, connection: sqlalchemy.Connection) -> int:
        marked.append(mark(index, connection))
        return marked[-1]

    monkeypatch.setattr(SearchIndex, "mark_by_first_write", counted)
    openers = [EventStore(url) for _ in range(4)]  # each holds the file before any upgrades
    barrier = threading.Barrier(len(openers))

    def open_at_once(store: EventStore) -> int:
        barrier.wait()
        return bring_up_to_date(store, ProjectionTables())

    try:
        with ThreadPoolExecutor(len(openers)) as pool:
            folded = list(pool.map(open_at_once, openers))
        assert folded == [0] * len(openers)
        assert len(marked) == 1
        for store in openers:
            with store.engine.connect() as connection:
                assert projector.layout_current(connection)
        assert _shown(openers[0], tables) == fresh
    finally:
        for store in openers:
            store.close()


def test_a_sqlite_index_of_layout_17_is_marked_by_first_write_in_place_when_opened(
    tmp_path: Path,
) -> None:
    """A SQLite database of layout 17, whose index marked current entries by their
    knowledge version's name (live ones bare of it), opens folding no event: its current
    entries are marked by their version's first write in place, and it searches as a
    fresh one, a rebuild alike."""
    store, tables, projector, fresh = _laid_out_and_learned(sqlite_url(tmp_path / "m.db"))
    mark_as_layout_17(store, projector)
    assert _shown(store, tables) != fresh  # the marks of 17 are not read as this layout's
    assert bring_up_to_date(store, tables) == 0
    assert _shown(store, tables) == fresh
    assert fresh["v2"] == ["User likes opera2.", "User likes opera1.", "User likes opera0."]
    with store.engine.connect() as connection:
        assert projector.layout_current(connection)
    assert verify(store) == []
    store.close()


def test_postgresql_projections_keep_the_layout_a_memvee_of_16_opens(db_url: str) -> None:
    """PostgreSQL stores no mark of a current entry, so layout 17 (SQLite's index alone)
    leaves its projections at 16: an older memvee still opens them in a rolling upgrade,
    and this one opens them folding no event. Laid out as 17, they were refolded whole,
    and locked memvee 16 out."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's layout")
    store, tables, _, fresh = _laid_out_and_learned(db_url)
    with store.engine.connect() as connection:
        stored = connection.exec_driver_sql(
            f"SELECT position FROM {tables.position.name} WHERE name = 'schema'"
        ).scalar()
    assert stored == _layout_16()
    assert bring_up_to_date(store, tables) == 0
    assert _shown(store, tables) == fresh
    store.close()


def test_postgresql_projections_stamped_with_sqlites_layout_17_open_as_their_own(
    db_url: str,
) -> None:
    """PostgreSQL projections stamped with SQLite's layout 17 (by memvees of 6a8fd55 to
    e7bd1a1, before PostgreSQL kept a number of its own) hold nothing of it: they open
    folding no event, stamped with their own layout, rather than refused as a newer
    memvee's with nothing to upgrade to."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's layout")
    store, tables, _, fresh = _laid_out_and_learned(db_url)
    marked_by_version = next(k for k, v in SCHEMA_OF_INDEXED_LAYOUT.items() if v == 17)
    words = f"{Stemmer.version()}|unicode {unicodedata.unidata_version}|{marked_by_version}"
    stamped = 17 << 20 | zlib.crc32(words.encode()) & 0xFFFFF
    with store.transaction() as connection:
        connection.exec_driver_sql(
            f"UPDATE {tables.position.name} SET position = {stamped} WHERE name = 'schema'"
        )
    assert bring_up_to_date(store, tables) == 0
    with store.engine.connect() as connection:
        stored = connection.exec_driver_sql(
            f"SELECT position FROM {tables.position.name} WHERE name = 'schema'"
        ).scalar()
    assert stored == _layout_16()
    assert _shown(store, tables) == fresh
    store.close()


def test_postgresql_projections_of_a_later_postgresql_layout_are_refused_not_laid_out_again(
    db_url: str,
) -> None:
    """PostgreSQL's layout number is its own (16 while SQLite's is 17): one above it is a
    newer memvee's, refused as on SQLite, not taken for an older one and refolded back
    and forth with that memvee."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's layout")
    store = EventStore(db_url)
    tables = ProjectionTables()
    with store.transaction() as connection:
        Projector(tables).create(connection)
        newer = (POSTGRES_SCHEMA_VERSION + 1) << 20
        connection.exec_driver_sql(
            f"UPDATE {tables.position.name} SET position = {newer} WHERE name = 'schema'"
        )
    with pytest.raises(StorageError, match="newer memvee's layout"):
        bring_up_to_date(store, tables)
    store.close()
