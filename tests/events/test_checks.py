"""The input checks: what callers hand in is refused with a typed error that names the
value and the fault, before anything is decided; everything storable and visible passes."""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from types import FrameType
from typing import Any

import numpy as np
import pytest

from events import InvalidInputError
from events._invisible import BLANK, DEFAULT_IGNORABLE, JOINERS, VARIATION_SELECTORS, code_points
from events.checks import (
    MAX_NAME_CHARS,
    MAX_SENT_AHEAD,
    ROLES,
    as_int,
    as_seconds,
    check_count,
    check_message,
    check_name,
    check_new_user_id,
    check_page,
    check_sent_at,
    check_text,
    check_time,
    check_user_id,
    storable,
)

VISIBLE_TEXTS = ["kim", "Zoë", "東京", "🙂", "a b", "x\u200by", "ñ\u0303"]


@pytest.mark.parametrize("text", VISIBLE_TEXTS)
def test_visible_storable_text_passes_every_check(text: str) -> None:
    check_text(text, "text")
    assert check_user_id(text) == text
    check_name(text)
    for role in ROLES:
        check_message(role, text, 1000)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("a\x00b", r"contains a NUL character \(U\+0000 at index 1\)"),
        ("ok\ud800", r"contains a lone surrogate \(U\+D800 at index 2\)"),
        ("\udfffok", r"contains a lone surrogate \(U\+DFFF at index 0\)"),
    ],
)
def test_text_a_database_cannot_store_is_refused_with_where_it_is(text: str, fault: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^query {fault}"):
        check_text(text, "query")


@pytest.mark.parametrize(
    ("text", "repaired"),
    [
        ("plain", "plain"),
        ("Zoë 東京 🙂", "Zoë 東京 🙂"),
        ("a\x00b", "ab"),
        ("ok\ud800", "ok\ufffd"),
        ("\udfff\x00é", "\ufffdé"),
    ],
)
def test_text_the_engine_records_for_itself_is_repaired_not_refused(
    text: str, repaired: str
) -> None:
    assert storable(text) == repaired
    check_text(storable(text), "repaired text")


@pytest.mark.parametrize(
    ("user_id", "fault"),
    [
        (7, "user_id must be a str, not int"),
        ("u" * 257, "user_id is 257 characters long; the limit is 256"),
        ("", "user_id must not be empty"),
        ("\u200b\u200d\ufeff", "user_id must not be empty, nor only spaces"),
        ("\u3164", "user_id must not be empty"),
        ("a\nb", r"user_id must not contain control characters \(U\+000A at index 1\)"),
        ("a\x00b", "user_id contains a NUL character"),
    ],
)
def test_a_user_id_is_one_visible_line_of_at_most_256_characters(
    user_id: object, fault: str
) -> None:
    with pytest.raises(InvalidInputError, match=fault):
        check_user_id(user_id)


@pytest.mark.parametrize(
    "lookalike",
    [
        "alice ",
        "al\u200bice",
        "al\u200cice",
        "al\u200dice",
        "al\u200eice",
        "alice\ufe0f",
        "alice\u3164",
        "al\u034fice",
        "alice\U000e0061",
        "\ufeffalice",
        "al\u00adice",
        "Jose\u0301",
        "alice\u17b4",  # Khmer inherent vowels: default ignorable
        "alice\u17b5",
        "alice\u2800",  # braille pattern blank
        "alice\u115f",
        "alice\uffa0",
        "alice\u2065",  # unassigned, but reserved as ignorable
        "\u200dalice",
        "\u0645\u200d",  # a joiner joining nothing
        "\ufe0f\u0645",  # a variation selector varying nothing
    ],
)
def test_a_user_id_that_reads_as_another_is_refused_for_writes(lookalike: str) -> None:
    assert check_user_id(lookalike) == lookalike, "reads take it"
    with pytest.raises(InvalidInputError, match="user_id must"):
        check_new_user_id(lookalike)


def test_no_character_that_shows_nothing_is_written_at_the_end_of_a_user_id() -> None:
    """Every default ignorable and blank character, after an ASCII id (where a joiner or
    a variation selector joins or varies nothing either)."""
    points = code_points(DEFAULT_IGNORABLE, BLANK)
    assert [hex(c) for c in sorted(points) if _written(f"alice{chr(c)}")] == []


def _written(user_id: str) -> bool:
    try:
        check_new_user_id(user_id)
    except InvalidInputError:
        return False
    return True


def test_the_default_ignorable_set_holds_every_format_character_and_variation_selector() -> None:
    """Checked against this Python's Unicode data (its format characters and variation
    selectors live in planes 0, 1 and 14): only the format characters Unicode itself keeps
    out of the set are out of it, those that show (prepended concatenation marks) or that
    shape the signs around them (Egyptian hieroglyph controls), and the interlinear
    annotation controls, which the blank ones hold."""
    held = code_points(DEFAULT_IGNORABLE)
    shown = code_points(
        ((0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891)),
        ((0x08E2, 0x08E2), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F)),
    )
    left_out = held | code_points(BLANK) | shown
    planes = (*range(0x20000), *range(0xE0000, 0xE1000))
    kinds = {c: unicodedata.category(chr(c)) for c in planes}
    format_or_selector = [
        c
        for c, kind in kinds.items()
        if kind == "Cf" or (kind == "Mn" and "VARIATION SELECTOR" in unicodedata.name(chr(c)))
    ]
    assert [hex(c) for c in format_or_selector if c not in left_out] == []
    assert code_points(VARIATION_SELECTORS) <= held and code_points(JOINERS) <= held


@pytest.mark.parametrize(
    "own",
    [
        "ann smith",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # an emoji joined into one
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
        "\u0915\u094d\u200d\u0937",  # Devanagari with ZWJ
        "\u2764\ufe0f",  # an emoji with its presentation selector
        "Jos\u00e9",
    ],
)
def test_a_user_id_whose_joiners_a_script_or_emoji_needs_is_written(own: str) -> None:
    assert check_new_user_id(own) == own


def test_a_user_id_of_exactly_256_characters_passes() -> None:
    assert check_user_id("u" * 256) == "u" * 256


@pytest.mark.parametrize("check", [check_user_id, check_new_user_id])
def test_a_printable_ascii_user_id_is_checked_without_a_regular_expression(
    check: Callable[[object], str],
) -> None:
    """Every write checks its user id on the caller's event loop, a thousand at once when
    a thousand users write: most ids, printable ASCII, pass on string methods alone."""
    searches: list[str] = []

    def watch(frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") in {"search", "match"}:
            searches.append(repr(arg))

    sys.setprofile(watch)
    try:
        accepted = check("user-00042@example.org")
    finally:
        sys.setprofile(None)
    assert accepted == "user-00042@example.org"
    assert searches == []


@pytest.mark.parametrize(
    ("user_id", "fault"),
    [
        (" alice", "spaces"),
        ("alice ", "spaces"),
        ("   ", "must not be empty"),
        ("al\tice", "control characters"),
        ("alice\x7f", "control characters"),
        ("alice\x1f", "control characters"),
        (" " * 257, "257 characters long"),
    ],
)
def test_an_ascii_user_id_with_spaces_around_or_a_control_character_is_refused_for_writes(
    user_id: str, fault: str
) -> None:
    with pytest.raises(InvalidInputError, match=fault):
        check_new_user_id(user_id)


def test_no_name_passes_and_a_name_is_a_short_visible_line() -> None:
    check_name(None)
    check_name("n" * MAX_NAME_CHARS)
    with pytest.raises(InvalidInputError, match="name must be a str or None, not int"):
        check_name(3)
    with pytest.raises(InvalidInputError, match=f"at most {MAX_NAME_CHARS} characters"):
        check_name("n" * (MAX_NAME_CHARS + 1))
    with pytest.raises(InvalidInputError, match=r"pass None for no name"):
        check_name(" ")
    with pytest.raises(InvalidInputError, match="name must not contain control characters"):
        check_name("Ann\tLee")


@pytest.mark.parametrize(
    ("role", "content", "fault"),
    [
        ("robot", "hi", r"unknown role 'robot'; expected one of \['assistant', 'system', 'user'\]"),
        (None, "hi", "unknown role None"),
        ("user", b"hi", "content must be a str, not bytes"),
        ("user", "x" * 11, "user message content is 11 characters long; the limit is 10"),
        ("assistant", "  \t\n", "assistant message content must not be empty"),
        ("user", "\u200b", "user message content must not be empty"),
        ("user", "hi\x00", "user message content contains a NUL character"),
        ("system", "é\ud83d", "system message content contains a lone surrogate"),
    ],
)
def test_a_message_has_a_known_role_and_visible_storable_content_within_the_limit(
    role: object, content: object, fault: str
) -> None:
    with pytest.raises(InvalidInputError, match=fault):
        check_message(role, content, 10)


def test_a_message_may_hold_newlines_and_tabs_between_visible_words() -> None:
    check_message("user", "line one\n\tline two", 100)


def test_times_must_say_their_offset_and_come_back_in_utc() -> None:
    assert check_time(None, "sent_at") is None
    lisbon_summer = datetime(2026, 7, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    assert check_time(lisbon_summer, "sent_at") == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)
    assert check_time(lisbon_summer, "sent_at").tzinfo is UTC  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="sent_at must be timezone-aware"):
        check_time(datetime(2026, 7, 1, 12, 0), "sent_at")
    with pytest.raises(InvalidInputError, match="sent_at must be a datetime or None, not str"):
        check_time("2026-07-01", "sent_at")


def test_a_sent_at_may_be_ahead_of_this_clock_by_max_sent_ahead_and_no_more() -> None:
    now = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert check_sent_at(None, now) is None
    assert check_sent_at(now + MAX_SENT_AHEAD, now) == now + MAX_SENT_AHEAD
    in_lisbon = datetime(2026, 7, 1, 13, 4, tzinfo=timezone(timedelta(hours=1)))
    assert check_sent_at(in_lisbon, now) == datetime(2026, 7, 1, 12, 4, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match=r"sent_at 2026-07-01T12:05:00\.000001\+00:00 is"):
        check_sent_at(now + MAX_SENT_AHEAD + timedelta(microseconds=1), now)
    with pytest.raises(InvalidInputError, match="sent_at must be timezone-aware"):
        check_sent_at(datetime(2026, 7, 1, 12, 0), now)


class _ThirtyHoursAhead(tzinfo):
    """A broken time zone: an offset past the 24 hours datetime allows."""

    def utcoffset(self, moment: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, moment: datetime | None) -> None:
        return None


class _SecondsNotTimedelta(tzinfo):
    """A broken time zone: an offset given as a number of seconds."""

    def utcoffset(self, moment: datetime | None) -> Any:
        return 3600

    def dst(self, moment: datetime | None) -> None:
        return None


class _WithoutOffset(tzinfo):
    """A time zone that never implemented ``utcoffset`` (tzinfo's own raises)."""


class _LookupFails(tzinfo):
    """A time zone whose offset comes from a lookup that fails."""

    def utcoffset(self, moment: datetime | None) -> timedelta:
        raise LookupError("no rules for this zone")


@pytest.mark.parametrize(
    "zone", [_ThirtyHoursAhead(), _SecondsNotTimedelta(), _WithoutOffset(), _LookupFails()]
)
def test_a_time_zone_that_gives_no_valid_offset_is_a_typed_refusal_naming_it(
    zone: tzinfo,
) -> None:
    name = type(zone).__name__
    with pytest.raises(InvalidInputError, match=f"as_of has a time zone .*{name}.* no valid"):
        check_time(datetime(2026, 1, 1, tzinfo=zone), "as_of")


def test_a_time_that_leaves_the_calendar_once_in_utc_is_refused() -> None:
    edge = datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1)))
    with pytest.raises(InvalidInputError, match="outside years 1 to 9999"):
        check_time(edge, "valid_from")


class _ClaimsPrintable(str):
    """A str whose methods say it is printable whatever it holds."""

    def isprintable(self) -> bool:
        return True


@pytest.mark.parametrize("check", [check_user_id, check_new_user_id])
def test_a_str_subclass_is_checked_by_its_characters_not_by_its_own_methods(
    check: Callable[[object], str],
) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        check(_ClaimsPrintable("a\x00b"))


def test_an_integral_kind_that_gives_no_int_is_no_whole_number() -> None:
    """numpy's timedelta64 is an integer kind to numpy, yet operator.index refuses it: its
    TypeError escaped as_int, and every count check that uses it, raw."""
    assert as_int(np.timedelta64(5, "s")) is None
    with pytest.raises(InvalidInputError, match=r"^limit must be an int, not timedelta64"):
        check_count(np.timedelta64(5, "s"), "limit")


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (2, 2.0),
        (0.25, 0.25),
        (Fraction(1, 4), 0.25),
        (np.int64(3), 3.0),
        (np.float32(0.5), 0.5),
        pytest.param(10**5000, math.inf, id="an int past a float"),
        pytest.param(-(10**5000), -math.inf, id="a negative int past a float"),
        pytest.param(Fraction(10**5000, 3), math.inf, id="a Fraction past a float"),
    ],
)
def test_a_real_number_of_any_kind_is_seconds_as_a_python_float(
    given: object, seconds: float
) -> None:
    """One reading of a number of seconds for every wait the library takes: a Python float
    (what a timer or a thread's wait takes), infinite where too large for one."""
    taken = as_seconds(given)
    assert taken == seconds and type(taken) is float


@pytest.mark.parametrize(
    "given", [True, np.bool_(True), "1", None, 1j, np.timedelta64(5, "s"), Decimal("1")]
)
def test_what_is_no_real_number_is_no_number_of_seconds(given: object) -> None:
    """A bool, text, a complex number, numpy's timedelta64 (an integer kind that gives no
    float) and a Decimal (no numbers.Real) are no seconds: the caller refuses them."""
    assert as_seconds(given) is None


def test_a_count_or_a_start_of_more_digits_than_python_writes_is_refused_by_its_type() -> None:
    """A refused count or page start was written whole into its message: one of 10**5000
    raised ValueError (int's limit on the digits it converts), not InvalidInputError."""
    with pytest.raises(InvalidInputError, match=r"^limit must be 1 or more, not int \(too"):
        check_count(-(10**5000), "limit")
    with pytest.raises(InvalidInputError, match=r"^after must be 0 or more, not int \(too"):
        check_page(-(10**5000), None)
    with pytest.raises(InvalidInputError, match=r"^limit must be 1 or more, not int \(too"):
        check_page(0, -(10**5000))


class _RoleWithoutRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr today")


def test_a_role_whose_repr_fails_is_refused_as_an_unknown_role_named_by_its_type() -> None:
    """The refusal of such a role raised the repr's own RuntimeError instead."""
    with pytest.raises(InvalidInputError, match=r"^unknown role _RoleWithoutRepr \(cannot"):
        check_message(_RoleWithoutRepr(), "hi", 100)
