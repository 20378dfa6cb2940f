"""The offline extractor: which self-disclosures it finds and how it states them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.extraction import (
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    Extractor,
)
from memvee.extractors import OfflineExtractor

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def message(message_id: str, content: str, role: str = "user") -> BatchMessage:
    return BatchMessage(message_id, role, content, T0 + timedelta(seconds=len(message_id)))


def batch(*messages: BatchMessage) -> ExtractionBatch:
    return ExtractionBatch(user_id="u1", task_id="t1", messages=messages)


async def extract(*messages: BatchMessage) -> ExtractionResult:
    return await OfflineExtractor().extract(batch(*messages))


async def texts_of(content: str) -> list[str]:
    result = await extract(message("m1", content))
    return [fact.text for fact in result.facts]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # Work.
        ("I work at Acme Corp.", "User works at Acme Corp."),
        ("I work for Initech", "User works for Initech."),
        ("I'm working at a bakery these days", "User works at a bakery."),
        ("I am employed by the city", "User works for the city."),
        ("I work as a nurse", "User works as a nurse."),
        # Home.
        ("I live in Oslo.", "User lives in Oslo."),
        ("I'm based in Berlin", "User lives in Berlin."),
        ("I've been living in Lisbon", "User lives in Lisbon."),
        ("I moved to Paris", "User moved to Paris."),
        ("I've just moved to St. Louis", "User moved to St. Louis."),
        # Health.
        ("I am allergic to peanuts", "User is allergic to peanuts."),
        ("I'm severely allergic to bee stings!", "User is allergic to bee stings."),
        # Preferences.
        ("I love hiking.", "User loves hiking."),
        ("I really like jazz", "User likes jazz."),
        ("I enjoy long walks on the beach", "User enjoys long walks on the beach."),
        # Identity and occupation.
        ("My name is Sam Smith", "User's name is Sam Smith."),
        ("Call me Max", "User's name is Max."),
        ("I'm a nurse", "User is a nurse."),
        ("I am an architect", "User is an architect."),
        # Family and friends.
        ("My sister lives in Bergen.", "User's sister lives in Bergen."),
        ("My brother is called Tom", "User's brother is called Tom."),
        ("My wife's name is Ada", "User's wife is called Ada."),
        ("My mom is a teacher", "User's mother is a teacher."),
        ("My dad works for the post office", "User's father works for the post office."),
        ("My husband moved to Rome", "User's husband moved to Rome."),
        ("My son is allergic to cats", "User's son is allergic to cats."),
        ("My best friend loves chess", "User's best friend loves chess."),
        # Pets.
        ("My dog is called Rex.", "User's dog is called Rex."),
        ("my cat is named Luna", "User's cat is called Luna."),
        ("I have a parrot named Kiwi", "User's parrot is called Kiwi."),
    ],
)
async def test_each_pattern_becomes_a_third_person_sentence(content: str, expected: str) -> None:
    assert await texts_of(content) == [expected]


async def test_case_and_trailing_punctuation_do_not_matter() -> None:
    assert await texts_of("i LIVE IN oslo!!!") == ["User lives in oslo."]
    assert await texts_of("I live in Oslo...") == ["User lives in Oslo."]


async def test_contractions_with_straight_or_curly_apostrophes() -> None:
    assert await texts_of("I\u2019m allergic to shellfish") == ["User is allergic to shellfish."]
    assert await texts_of("I've moved to Berlin") == ["User moved to Berlin."]


async def test_first_person_words_in_the_object_become_third_person() -> None:
    assert await texts_of("I like my coffee black") == ["User likes their coffee black."]


async def test_filler_at_the_end_is_dropped() -> None:
    assert await texts_of("I really love hiking too") == ["User loves hiking."]
    assert await texts_of("I live in Oslo now") == ["User lives in Oslo."]


async def test_a_named_relative_gives_the_name_and_the_fact() -> None:
    assert await texts_of("My sister Anna lives in Bergen") == [
        "User's sister is called Anna.",
        "User's sister Anna lives in Bergen.",
    ]


async def test_several_facts_from_one_message_in_order() -> None:
    content = (
        "Hi there, I work at Acme Inc. and I live in Oslo. "
        "I'm allergic to peanuts; my dog's name is Rex! I love hiking and skiing."
    )
    assert await texts_of(content) == [
        "User works at Acme Inc.",
        "User lives in Oslo.",
        "User is allergic to peanuts.",
        "User's dog is called Rex.",
        "User loves hiking and skiing.",
    ]


async def test_and_with_an_elided_subject_splits_the_user_clause() -> None:
    assert await texts_of("I live in Oslo and work at Acme") == [
        "User lives in Oslo.",
        "User works at Acme.",
    ]


async def test_abbreviations_do_not_end_a_sentence() -> None:
    assert await texts_of("I moved to St. Louis. Dr. Who is my hero.") == [
        "User moved to St. Louis.",
    ]


@pytest.mark.parametrize(
    "content",
    [
        "Do I like hiking?",
        "I don't like cheese.",
        "I do not work at Acme.",
        "I used to live in Oslo.",
        "If I moved to Oslo, I would love skiing.",
        "I love it.",
        "I like your answer.",
        "I'm a bit tired.",
        "My parents live in Oslo and work at the university.",
        "The weather is nice today.",
        "",
    ],
)
async def test_questions_negations_hypotheticals_and_vague_statements_give_nothing(
    content: str,
) -> None:
    assert await texts_of(content) == []


async def test_only_user_messages_count() -> None:
    result = await extract(
        message("m1", "I work at Anthropic.", role="assistant"),
        message("m2", "I live in Oslo.", role="system"),
        message("m3", "I love jazz."),
    )
    assert result.facts == (ExtractedFact("User loves jazz.", ("m3",)),)


async def test_each_fact_cites_the_message_it_came_from() -> None:
    result = await extract(
        message("m1", "I live in Oslo."),
        message("m2", "Nice weather today."),
        message("m3", "I work at Acme. I love jazz."),
    )
    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("m1",)),
        ExtractedFact("User works at Acme.", ("m3",)),
        ExtractedFact("User loves jazz.", ("m3",)),
    )


async def test_the_same_fact_twice_is_one_fact_citing_every_source() -> None:
    result = await extract(
        message("m1", "I live in Oslo."),
        message("m2", "I love jazz."),
        message("m3", "As I said, i live in OSLO!"),
        message("m4", "I live in Oslo. I live in Oslo."),
    )
    assert result.facts == (
        ExtractedFact("User lives in Oslo.", ("m1", "m3", "m4")),
        ExtractedFact("User loves jazz.", ("m2",)),
    )


async def test_the_result_names_the_offline_extractor_and_no_model() -> None:
    result = await extract(message("m1", "I live in Oslo."))
    assert result.extractor == "offline"
    assert result.model is None
    assert result.input_tokens is None
    assert result.output_tokens is None


async def test_an_empty_batch_has_no_facts() -> None:
    result = await OfflineExtractor().extract(batch())
    assert result.facts == ()


async def test_deterministic_across_calls_and_instances() -> None:
    messages = (
        message("m1", "I work at Acme and I live in Oslo. My sister Anna lives in Bergen."),
        message("m2", "Sure, noted.", role="assistant"),
        message("m3", "I'm allergic to peanuts. I love hiking. I live in Oslo."),
    )
    first = await OfflineExtractor().extract(batch(*messages))
    extractor = OfflineExtractor()
    again = [await extractor.extract(batch(*messages)) for _ in range(3)]
    assert all(result == first for result in again)
    assert len(first.facts) == 6


async def test_is_an_extractor_and_closes_cleanly() -> None:
    extractor = OfflineExtractor()
    assert isinstance(extractor, Extractor)
    assert extractor.name == "offline"
    await extractor.aclose()
