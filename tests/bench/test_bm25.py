"""The plain BM25 reference (bench/bm25.py) ranks as Okapi BM25 says it should.

It is the floor memvee's recall is read against in ``make eval``, so its arithmetic is
checked here on hand-made documents; no retrieval score is asserted.
"""

from __future__ import annotations

import math

import pytest

from bench.bm25 import BM25, words


def test_words_are_lower_cased_runs_of_word_characters() -> None:
    assert words("I moved to Bergen, last week!") == ["i", "moved", "to", "bergen", "last", "week"]
    assert words("Zoë's café") == ["zoë", "s", "café"]
    assert words("...") == []


def test_a_score_is_the_okapi_formula() -> None:
    index = BM25(["red fox", "red red dog", "cat"], k1=1.2, b=0.75)
    average = (2 + 3 + 1) / 3
    idf_red = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    norm = 1.2 * (1 - 0.75 + 0.75 * 3 / average)
    assert index.score("red", 1) == pytest.approx(idf_red * 2 * 2.2 / (2 + norm))
    assert index.score("red", 2) == 0.0


def test_a_rare_word_outweighs_a_common_one() -> None:
    index = BM25(["apple banana", "apple cherry", "apple pear"])
    assert index.rank("apple cherry", 3)[0] == 1


def test_repeating_a_word_adds_less_and_less() -> None:
    index = BM25(["rain", "rain rain", "rain rain rain rain", "sun sun sun sun"], b=0.0)
    one, two, four = (index.score("rain", i) for i in range(3))
    assert one < two < four
    assert two - one > four - two


def test_a_longer_document_is_marked_down_for_its_length() -> None:
    index = BM25(["oslo", "oslo is a city in norway with long winters"])
    assert index.rank("oslo", 2) == [0, 1]
    flat = BM25(["oslo", "oslo is a city in norway with long winters"], b=0.0)
    assert flat.score("oslo", 0) == pytest.approx(flat.score("oslo", 1))


def test_only_documents_sharing_a_word_are_ranked_best_first_and_at_most_top() -> None:
    index = BM25(["the cat sat", "a dog ran", "the cat and the hat", "cat"])
    assert index.rank("cat", 10) == [3, 0, 2]
    assert index.rank("cat", 2) == [3, 0]
    assert index.rank("zebra", 10) == []
    assert index.rank("", 10) == []


def test_ties_keep_document_order() -> None:
    index = BM25(["same words", "other", "same words"])
    assert index.rank("same", 5) == [0, 2]


def test_an_empty_collection_ranks_nothing() -> None:
    assert BM25([]).rank("anything", 5) == []
