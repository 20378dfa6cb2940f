"""An extractor's answer is checked for the types the log records before anything of it
is: a custom extractor's answer of another shape fails its batch as an answer that
repeats, never the write of its outcome at every retry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from events import (
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    ExtractionResult,
    InvalidExtractionError,
    bounded,
    check_result,
    estimate_tokens,
)


def _result(**changes: Any) -> ExtractionResult:
    fields: dict[str, Any] = {
        "facts": (ExtractedFact("User likes tea.", ("m1",)),),
        "extractor": "custom",
        "model": "m-1",
        "input_tokens": 10,
        "output_tokens": 2,
    }
    return ExtractionResult(**{**fields, **changes})


def test_an_answer_of_the_recorded_types_passes_as_it_is() -> None:
    result = _result()
    assert check_result(result, "custom") is result
    empty = ExtractionResult(facts=[], extractor="custom")  # type: ignore[arg-type]
    assert check_result(empty, "custom") is empty


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (None, "NoneType, not an ExtractionResult"),
        ({"facts": []}, "dict, not an ExtractionResult"),
        (_result(facts="User likes tea."), "facts as a str, not a tuple of ExtractedFact"),
        (_result(facts=({"text": "tea"},)), r"facts\[0\] as a dict, not an ExtractedFact"),
        (_result(facts=(ExtractedFact(42, ("m1",)),)), r"facts\[0\] with a text or action"),  # type: ignore[arg-type]
        (
            _result(facts=(ExtractedFact("tea", ("m1",), None),)),  # type: ignore[arg-type]
            r"facts\[0\] with a text or action",
        ),
        (
            _result(facts=(ExtractedFact("tea", "m1"),)),  # type: ignore[arg-type]
            r"facts\[0\]\.source_message_ids that are not a tuple of str",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1", 7)),)),  # type: ignore[arg-type]
            r"facts\[0\]\.source_message_ids that are not a tuple of str",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1",), "update", 7),)),  # type: ignore[arg-type]
            r"facts\[0\]\.target_entry_id as a int",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1",), "update", target_fact="0"),)),  # type: ignore[arg-type]
            r"facts\[0\]\.target_fact = '0', not an index or None",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1",), "update", target_fact=[0]),)),  # type: ignore[arg-type]
            r"facts\[0\]\.target_fact = \[0\], not an index or None",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1",), "update", target_fact={}),)),  # type: ignore[arg-type]
            r"facts\[0\]\.target_fact = \{\}, not an index or None",
        ),
        (
            _result(facts=(ExtractedFact("tea", ("m1",), "update", target_fact=True),)),  # type: ignore[arg-type]
            r"facts\[0\]\.target_fact = True, not an index or None",
        ),
        (_result(extractor=None), "an extractor name that is a NoneType, not a str"),
        (_result(model=3.5), "a model that is a float, not a str or None"),
        (_result(input_tokens=-1), "input_tokens = -1, not a count of tokens or None"),
        (_result(input_tokens=2**63), f"input_tokens = {2**63}, not a count of tokens or None"),
        (_result(output_tokens="20"), "output_tokens = '20', not a count of tokens or None"),
        (_result(cache_read_tokens=True), "cache_read_tokens = True, not a count"),
    ],
)
def test_an_answer_of_another_shape_is_an_invalid_answer_that_says_what_is_wrong(
    answer: object, problem: str
) -> None:
    with pytest.raises(InvalidExtractionError, match=f"^extractor 'custom' returned {problem}"):
        check_result(answer, "custom")
    assert InvalidExtractionError.repeats, "its batch is split, not retried as it is"


def _message(i: int, chars: int) -> BatchMessage:
    return BatchMessage(f"m{i}", "user", "x" * chars, datetime(2026, 1, 1, tzinfo=UTC))


def test_bounded_cuts_batches_by_messages_and_by_prompt_size_one_message_at_least() -> None:
    limits = BatchLimits(max_messages=3, max_tokens=1_000)
    small = [_message(i, 40) for i in range(7)]
    assert [len(b) for b in bounded(small, limits)] == [3, 3, 1]
    large = [_message(i, 1_800) for i in range(3)]  # 462 tokens each: two fit
    assert [len(b) for b in bounded(large, limits)] == [2, 1]
    huge = [_message(i, 100_000) for i in range(2)]
    assert [len(b) for b in bounded(huge, limits)] == [1, 1]


def test_ascii_text_is_estimated_at_four_characters_a_token_beside_its_envelope() -> None:
    assert estimate_tokens("") == 12
    assert estimate_tokens("I live in Oslo " * 20) == 300 // 4 + 12


def test_text_of_other_scripts_is_estimated_by_what_its_characters_cost_claude() -> None:
    """A CJK character, kana, hangul or emoji is about a token; a letter of Greek,
    Cyrillic, Hebrew, Arabic or accented Latin about half of one; ASCII a quarter."""
    assert estimate_tokens("我住在北京" * 100) == 500 + 12
    assert estimate_tokens("東京に住んでいます서울" * 10) == 110 + 12
    assert estimate_tokens("🙂" * 40) == 40 + 12
    assert estimate_tokens("Москва" * 20) == 120 // 2 + 12
    assert estimate_tokens("été à " * 20) == (60 + 2 * 60) // 4 + 12
    assert estimate_tokens("\ud800" * 8) == 8 + 12, "a lone surrogate is weighed, not refused"


def test_bounded_cuts_a_batch_of_chinese_text_near_its_token_bound() -> None:
    limits = BatchLimits(max_messages=50, max_tokens=1_000)
    chinese = [
        BatchMessage(
            f"m{i}", "user", "我住在北京而周末去爬山。" * 25, datetime(2026, 1, 1, tzinfo=UTC)
        )
        for i in range(5)
    ]  # 300 characters, 312 tokens each: three fit
    assert [len(b) for b in bounded(chinese, limits)] == [3, 2]


def test_bounded_sends_the_messages_of_failed_batches_alone_after_the_rest() -> None:
    messages = [_message(i, 40) for i in range(5)]
    batches = bounded(messages, BatchLimits(), alone={"m1", "m3"})
    assert [[m.message_id for m in b] for b in batches] == [["m0", "m2", "m4"], ["m1"], ["m3"]]


def test_bounded_keeps_the_split_of_batches_that_failed_in_a_way_that_may_pass() -> None:
    """A message capped by a split goes in a batch of at most that many messages, as
    live extraction cuts a batch split for its next try, and one capped at one after the
    rest; the others fill batches as usual."""
    messages = [_message(i, 40) for i in range(7)]
    batches = bounded(messages, BatchLimits(max_messages=4), caps={"m1": 2, "m2": 2, "m3": 1})
    assert [[m.message_id for m in b] for b in batches] == [
        ["m0", "m1"],
        ["m2", "m4"],
        ["m5", "m6"],
        ["m3"],
    ]
