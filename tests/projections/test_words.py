"""Words: stored text and queries are folded, then cut, by one function, so a word typed
with other case, width or marks meets the stored word."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import search_terms
from projections.search import held_stems, query_words, text_stems, word_pieces

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


_SAYINGS = [
    "I was dying to try the tennis club; lying in bed, tying my shoes, happily relational",
    "東京都に行きたい abc東京def 猫 Straße café naïve ﬁne İZMİR ไปเที่ยวกรุงเทพ 서울에 살아요",
    "generalization possibilities sensitivity reasonably visibility skies news atlas",
]


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(" ".join(_SAYINGS).split()) | st.text(min_size=1, max_size=12),
        max_size=12,
    ).map(" ".join),
    other=st.sampled_from(_SAYINGS),
    data=st.data(),
)
def test_held_stems_are_the_asked_stems_text_stems_finds_in_the_text(
    text: str, other: str, data: st.DataObject
) -> None:
    """:func:`held_stems` looks the asked stems up without stemming the whole text, and
    finds what stemming it would: stems whose words end otherwise ("dying", "die";
    "happily", "happili"), pairs and characters of scripts written without spaces, words
    of another script within one such run ("abc東京def")."""
    pool = sorted({*text_stems(text), *text_stems(other)})
    asked = (
        frozenset(data.draw(st.lists(st.sampled_from(pool), max_size=8))) if pool else frozenset()
    )
    assert held_stems(text, asked) == asked.intersection(text_stems(text))
