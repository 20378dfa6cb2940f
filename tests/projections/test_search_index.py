"""The full-text index stems each word before scoping it to its owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from memvee.extractors import OfflineExtractor
from projections.columns import id_text
from projections.search import _WORD as _WORDS
from projections.search import SearchIndex, index_word, owned_words, owner_token

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
        words = [owner + index_word(w) for w in _WORDS.findall(text)]
        assert owned_words(log_id, text) == " ".join(words)


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


async def test_messages_are_indexed_without_a_copy_of_their_words_and_forget_unindexes_them(
    make_memory: Callable[..., Any], db_url: str
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the full-text tables are SQLite's")
    memory = await make_memory(extractor=OfflineExtractor(), embedder=False)
    for user in ("ann", "bob"):
        await memory.add_exchange(user, f"My parrot is called Kiwi, says {user}.", "Cute!")
        await memory.add_exchange(user, "!!!", "?")  # no word: nothing to index
    await memory.forget("bob")
    engine = memory._engine
    assert engine is not None
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
