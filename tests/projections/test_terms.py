"""Query terms: what a question is about, as words to OR in a full-text search."""

from __future__ import annotations

from projections import search_terms
from projections.terms import MAX_TERMS


def test_stop_words_go_and_the_rest_keeps_its_order() -> None:
    assert search_terms("Where does she live now?", expand=False) == ["live"]
    assert search_terms("What's the user's DOG called?", expand=False) == ["dog", "called"]
    assert search_terms("what do you know about me?") == []
    assert search_terms("When did she move to the US?", expand=False) == ["move", "us"]


def test_a_topic_word_brings_its_topic_along_after_the_query_words() -> None:
    terms = search_terms("what's her job, in Oslo?")
    assert terms[:2] == ["job", "oslo"]
    assert {"work", "occupation", "profession"} <= set(terms)
    assert "allergic" in search_terms("allergies")


def test_for_a_living_is_about_work_not_about_living_somewhere() -> None:
    terms = search_terms("what does he do for a living")
    assert "work" in terms and "live" not in terms and "living" not in terms


def test_terms_are_capped() -> None:
    assert len(search_terms(" ".join(f"word{i}" for i in range(100)))) == 32


def test_a_query_of_more_words_than_searched_keeps_its_longest_in_order() -> None:
    """An agent passes the user's whole turn: the rare keyword at its end is kept."""
    filler = " ".join(f"w{n}" for n in range(60))
    terms = search_terms(f"{filler} quokka", expand=False)
    assert len(terms) == MAX_TERMS and terms[-1] == "quokka"
    assert terms[:-1] == [f"w{n}" for n in range(10, 41)], "the longest, in the query's order"


def test_a_query_of_more_words_than_searched_keeps_its_topic_words_first() -> None:
    """ "I moved" says what a long turn changes: a topic word outranks a longer word."""
    filler = " ".join(f"longerword{n}" for n in range(60))
    terms = search_terms(f"{filler} I moved", expand=False)
    assert len(terms) == MAX_TERMS and terms[-1] == "moved"


def test_a_stop_word_written_as_a_name_is_kept() -> None:
    """People are called Will, Don or May: capitalised past a sentence's first word, or
    as the one word of a query, a stop word is a name."""
    assert search_terms("What did Don say?", expand=False) == ["don", "say"]
    assert search_terms("What did Will say? And Maria?", expand=False) == ["will", "say", "maria"]
    assert search_terms("Don") == ["don"]
    assert search_terms("Will") == ["will"]


def test_a_stop_word_capitalised_as_english_does_is_still_dropped() -> None:
    assert search_terms("Will you tell me what she did?", expand=False) == []
    assert search_terms("What did I say? Where did we go?", expand=False) == ["say", "go"]
    assert search_terms("WHAT DID DON SAY", expand=False) == ["say"]
    assert search_terms("Who am I?") == []
