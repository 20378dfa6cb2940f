"""The full-text index stems each word before scoping it to its owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from memvee.extractors import OfflineExtractor
from projections.search import index_word, owned_words, owner_token

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
