"""Words: stored text and queries are folded, then cut, by one function, so a word typed
with other case, width or marks meets the stored word."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import search_terms
from projections.search import query_words, word_pieces

STORED = "We moved to İstanbul last year, our office is in İZMİR"


@pytest.mark.parametrize("query", ["İstanbul", "istanbul", "ISTANBUL", "İzmir", "izmir"])
def test_a_capital_dotted_i_is_folded_before_the_word_is_cut(query: str) -> None:
    """ "İ" case-folds to "i" and a combining dot: cut before it was stripped, a query's
    "İstanbul" looked up "i" and "stanbul"."""
    assert query_words(search_terms(query)) == query_words(search_terms(query.casefold()))
    assert set(query_words(search_terms(query))) <= set(query_words([STORED]))
    assert len(query_words(search_terms(query))) == 1


def test_every_letter_whose_case_folding_adds_a_mark_stays_in_one_word() -> None:
    """ "İ", "ǰ" and the Greek letters with breathings and iota subscripts."""
    letters = [
        chr(c)
        for c in range(0x10000)
        if chr(c).isalpha() and any(unicodedata.combining(x) for x in chr(c).casefold())
    ]
    assert len(letters) > 20
    for letter in letters:
        word = f"ab{letter}cd"
        assert len(word_pieces(word)) == 1, letter
        assert query_words(search_terms(word)) == query_words([word.casefold()]), letter


@pytest.mark.parametrize(
    ("marked", "bare"),
    [
        ("كَتَبَ الطالبُ", "كتب الطالب"),  # Arabic harakat
        ("שָׁלוֹם עֲלֵיכֶם", "שלום עליכם"),  # Hebrew niqqud
        ("Ọ̀ṣun", "Osun"),  # Yoruba tone marks, no precomposed form
        ("x\u0301\u0323yz", "xyz"),  # two marks on a letter, no precomposed form
        ("Thăng Long", "Thang Long"),
        ("葛\U000e0100城", "葛城"),  # an ideographic variation selector
    ],
)
def test_a_word_typed_with_marks_is_the_word_typed_without(marked: str, bare: str) -> None:
    assert word_pieces(marked, singles=True) == word_pieces(bare, singles=True)
    assert len(word_pieces(marked)) == len(bare.split())


def test_marks_that_spell_a_word_stay_in_it() -> None:
    """Indic vowel signs are marks of combining class 0: they are letters of the word,
    which was cut at each of them."""
    assert word_pieces("मैं दिल्ली में रहता हूँ") == ["मैं", "दिलली", "में", "रहता", "हूँ"]


def test_half_width_katakana_are_cut_as_the_full_width_ones() -> None:
    stored = word_pieces("ｺｰﾋｰが好きです", singles=True)
    assert stored == word_pieces("コーヒーが好きです", singles=True)
    assert set(word_pieces("コーヒー")) <= set(stored)
    assert set(word_pieces("ｶﾀｶﾅ")) <= set(word_pieces("カタカナで書きました", singles=True))


def test_thai_written_without_spaces_is_cut_into_pairs_of_characters() -> None:
    """Like Chinese: a word of a sentence is found by its pairs."""
    stored = word_pieces("ฉันอาศัยอยู่ในกรุงเทพ", singles=True)
    assert set(word_pieces("กรุงเทพ")) <= set(stored)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_folded_words_fold_to_themselves(text: str) -> None:
    """A query's terms are folded words, folded again when looked up: nothing changes."""
    pieces = word_pieces(text)
    assert word_pieces(" ".join(pieces)) == pieces
