"""Guarantee 10: bad input raises a clear ValueError before anything is written."""

from __future__ import annotations

import asyncio
import functools
import math
import numbers
import re
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock

import numpy as np
import pytest

from events import MAX_SENT_AHEAD
from memvee import (
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    Extractor,
    InvalidInputError,
    Memory,
    MemoryClosedError,
    MemoryConfig,
    ProcessingError,
    UnknownTaskError,
)
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor, OfflineExtractor
from projections import dump
from projections.tables import ProjectionTables

EARLY = datetime(1, 1, 1, 2, tzinfo=timezone(timedelta(hours=5)))
"""A time whose UTC value would fall before year 1."""
LATE = datetime(9999, 12, 31, 22, tzinfo=timezone(timedelta(hours=-5)))
"""A time whose UTC value would fall after year 9999."""
SOON = datetime.now(UTC) + timedelta(hours=2)
"""Later than this machine's clock, by more than two clocks may disagree."""
FAR = datetime(9999, 12, 31, tzinfo=UTC)
"""A time at the end of the calendar: in the future."""

BAD_CALLS = [
    ("empty user id", lambda m: m.add_message("", "user", "hi"), "user_id must not be empty"),
    ("blank user id", lambda m: m.add_exchange("  ", "a", "b"), "user_id must not be empty"),
    ("non-string user id", lambda m: m.add_message(42, "user", "hi"), "must be a str"),
    ("unknown role", lambda m: m.add_message("u", "robot", "hi"), "unknown role 'robot'"),
    ("empty content", lambda m: m.add_message("u", "user", ""), "must not be empty"),
    ("blank assistant", lambda m: m.add_exchange("u", "hi", "   "), "assistant message"),
    ("non-string content", lambda m: m.add_message("u", "user", b"x"), "content must be a str"),
    ("oversized content", lambda m: m.add_message("u", "user", "x" * 101), "limit is 100"),
    ("naive sent_at", lambda m: m.add_message("u", "user", "hi", datetime(2026, 1, 1)), "aware"),
    ("unknown task", lambda m: m.get_task("u", "nope"), "no task 'nope'"),
    ("NUL in user id", lambda m: m.add_message("a\x00b", "user", "hi"), "U\\+0000 at index 1"),
    ("control user id", lambda m: m.add_message("\x01\x02", "user", "hi"), "user_id must not"),
    ("zero-width user id", lambda m: m.add_exchange("\u200b\u200d", "a", "b"), "zero-width"),
    ("zero-width name", lambda m: m.add_message("u", "user", "hi", name="\ufeff"), "name must"),
    (
        "line break in name",
        lambda m: m.add_exchange("u", "a", "b", user_name="E\u2028- x"),
        "U\\+2028",
    ),
    ("override in user id", lambda m: m.add_message("u\u202egnp.exe", "user", "hi"), "U\\+202E"),
    ("isolate in name", lambda m: m.add_exchange("u", "a", "b", user_name="\u2067Eve"), "U\\+2067"),
    ("paragraph in user id", lambda m: m.add_message("a\u2029b", "user", "hi"), "U\\+2029 at"),
    ("space after user id", lambda m: m.add_exchange("ann ", "a", "b"), "begin or end with"),
    ("zero-width space in id", lambda m: m.add_exchange("a\u200bnn", "a", "b"), "U\\+200B at"),
    ("BOM before user id", lambda m: m.add_message("\ufeffann", "user", "hi"), "U\\+FEFF at index"),
    ("soft hyphen in user id", lambda m: m.add_exchange("an\u00adn", "a", "b"), "U\\+00AD"),
    ("Khmer vowel in user id", lambda m: m.add_message("ann\u17b4", "user", "a"), "U\\+17B4"),
    ("braille blank in user id", lambda m: m.add_message("ann\u2800", "user", "a"), "U\\+2800"),
    ("decomposed user id", lambda m: m.add_exchange("Jose\u0301", "a", "b"), "NFC"),
    ("surrogate content", lambda m: m.add_message("u", "user", "hi\ud800"), "content contains"),
    ("NUL in content", lambda m: m.add_exchange("u", "a", "b\x00c"), "a NUL character"),
    ("surrogate user id", lambda m: m.add_exchange("u\udc00", "a", "b"), "U\\+DC00 at index 1"),
    ("surrogate name", lambda m: m.add_exchange("u", "a", "b", user_name="\ud83d"), "surrogate"),
    ("surrogate to process", lambda m: m.process("u\ud800"), "user_id contains a lone"),
    ("surrogate to flush", lambda m: m.flush("\ud800"), "user_id contains a lone"),
    ("surrogate query", lambda m: m.retrieve("u", "car\udfff"), "query contains a lone"),
    ("query longer than a message", lambda m: m.retrieve("u", "tea " * 25_001), "over the limit"),
    ("sent_at before year 1 in UTC", lambda m: m.add_message("u", "user", "hi", EARLY), "range"),
    ("sent_at after 9999 in UTC", lambda m: m.add_exchange("u", "a", "b", LATE), "range"),
    ("sent_at hours ahead", lambda m: m.add_message("u", "user", "hi", SOON), "in the future"),
    ("sent_at years ahead", lambda m: m.add_exchange("u", "a", "b", FAR), "in the future"),
    ("as_of before year 1 in UTC", lambda m: m.knowledge("u", as_of=EARLY), "as_of 0001-01-01"),
    ("as_of after 9999 in UTC", lambda m: m.retrieve("u", "car", as_of=LATE), "as_of 9999-12"),
    ("NaN timeout", lambda m: m.wait_for_processing("u", timeout=math.nan), "not nan"),
    ("negative timeout", lambda m: m.wait_for_processing("u", timeout=-1), "0 or more"),
    ("text timeout", lambda m: m.wait_for_processing("u", timeout="5"), "not str"),
    ("one id to requeue", lambda m: m.requeue("u", "id"), "list of strings, not str"),
    ("a number to requeue", lambda m: m.requeue("u", 5), "list of strings, not int"),
    ("a number among ids", lambda m: m.requeue("u", ["a", 5]), "must be a str, not int"),
    ("negative after", lambda m: m.messages("u", after=-1), "after must be 0 or more"),
    ("a bool for after", lambda m: m.messages("u", after=True), "after must be an int"),
    ("zero limit", lambda m: m.messages("u", limit=0), "limit must be 1 or more"),
    ("text limit", lambda m: m.messages("u", limit="5"), "limit must be an int, not str"),
    ("negative offset", lambda m: m.knowledge("u", offset=-1), "offset must be 0 or more"),
    ("a str offset", lambda m: m.knowledge("u", offset="2"), "offset must be an int, not str"),
    ("zero knowledge limit", lambda m: m.knowledge("u", limit=0), "limit must be 1 or more"),
    ("a str for history", lambda m: m.knowledge("u", history="false"), "history must be True"),
    (
        "history and as_of together",
        lambda m: m.knowledge("u", history=True, as_of=datetime.now(UTC)),
        "give as_of or history, not both",
    ),
    (
        "a str for include_messages",
        lambda m: m.retrieve("u", "car", include_messages="no"),
        "include_messages must be True or False, not str",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
async def test_bad_input_raises_a_value_error_and_writes_nothing(
    make_memory: Any, case: str, call: Any, message: str
) -> None:
    memory: Memory = await make_memory(config={"max_content_chars": 100})
    await memory.add_exchange("u", "before", "before")
    engine = memory._engine
    assert engine is not None
    await asyncio.to_thread(engine.index_messages)  # else the committer may, mid-test
    before = (engine.store.max_position(), dump(engine.store.engine, ProjectionTables()))
    with pytest.raises(ValueError, match=message) as raised:
        await call(memory)
    assert isinstance(raised.value, InvalidInputError)
    after = (engine.store.max_position(), dump(engine.store.engine, ProjectionTables()))
    assert after == before


async def test_an_id_no_message_may_be_written_under_still_reads(memory: Memory) -> None:
    """Ids that read as another's are refused on writes only: a user one names, written
    before the check, stays readable and can be forgotten."""
    for lookalike in ("ann ", "a\u200bnn", "Jose\u0301"):
        assert await memory.buffer(lookalike) == []
        assert (await memory.retrieve(lookalike, "tea")).entries == []
        await memory.forget(lookalike)
    await memory.add_exchange("Jos\u00e9", "I drink tea", "ok")
    assert len(await memory.buffer("Jos\u00e9")) == 2


async def test_times_at_the_ends_of_the_range_are_kept_in_utc(memory: Memory) -> None:
    first = datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=5)))
    last = datetime(9999, 12, 31, 18, 59, tzinfo=timezone(timedelta(hours=-5)))
    added = await memory.add_message("u", "user", "at the start", first)
    assert added.sent_at == datetime(1, 1, 1, tzinfo=UTC)
    assert await memory.knowledge("u", as_of=first) == []
    assert await memory.knowledge("u", as_of=last) == []


async def test_a_sent_at_a_little_ahead_of_this_clock_is_kept_and_one_further_refused(
    memory: Memory,
) -> None:
    soon = datetime.now(UTC) + MAX_SENT_AHEAD - timedelta(seconds=30)
    kept = await memory.add_message("u", "user", "said on a clock a little ahead", soon)
    assert kept.sent_at == soon
    local_as_utc = datetime.now(UTC) + timedelta(hours=3)  # UTC+3's clock, labelled UTC
    with pytest.raises(InvalidInputError, match=r"sent_at .* is in the future"):
        await memory.add_exchange("u", "a local time labelled UTC", "ok", local_as_utc)
    assert [m.content for m in await memory.messages("u")] == [kept.content]


class _ClockTime(datetime):
    """A datetime of a subclass, as pandas' ``Timestamp`` or a test clock's are."""


async def test_a_sent_at_of_a_datetime_subclass_is_kept_as_the_plain_utc_time_it_is(
    memory: Memory,
) -> None:
    """A datetime subclass reached the log as it was, whose encoder knows plain datetimes
    only: the write failed with the event library's own error, not one of memvee's."""
    said = _ClockTime(2026, 1, 2, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    user, assistant = await memory.add_exchange("u", "I moved to Oslo", "ok", said)
    assert user.sent_at == assistant.sent_at == datetime(2026, 1, 2, 6, 30, tzinfo=UTC)
    assert type(user.sent_at) is datetime
    assert user.sent_at.tzinfo is UTC
    stored = await memory.messages("u")
    assert [(m.content, m.sent_at) for m in stored] == [
        ("I moved to Oslo", datetime(2026, 1, 2, 6, 30, tzinfo=UTC)),
        ("ok", datetime(2026, 1, 2, 6, 30, tzinfo=UTC)),
    ]
    result = await memory.retrieve("u", "Oslo", as_of=_ClockTime(2026, 2, 1, tzinfo=UTC))
    assert type(result.as_of) is datetime


class _Role(str, Enum):  # noqa: UP042 - what formats apart from its value, as StrEnum does not
    """A role of an agent's own enum, as ``class Role(str, Enum)`` declares one."""

    USER = "user"


async def test_a_message_of_str_subclasses_is_returned_as_it_reads_back(memory: Memory) -> None:
    """The message a write returned held the caller's objects: a role of a str Enum
    formatted as "_Role.USER" there and as "user" once read back."""
    written = await memory.add_message(
        np.str_("ann"), _Role.USER, np.str_("I live in Oslo"), name=np.str_("Ann")
    )
    (read,) = await memory.messages("ann")
    assert written == read
    assert f"{written.role}: {written.content}" == "user: I live in Oslo"
    fields = (written.user_id, written.role, written.content, written.name)
    assert [type(value) for value in fields] == [str, str, str, str]
    first, second = await memory.add_exchange(
        np.str_("ann"), np.str_("I moved"), np.str_("ok"), user_name=np.str_("Ann")
    )
    assert {type(value) for m in (first, second) for value in (m.user_id, m.content)} == {str}
    assert type(first.name) is str


@pytest.mark.parametrize("timeout", [0, 0.5, math.inf, None])
async def test_a_wait_with_nothing_running_returns_at_once(memory: Memory, timeout: Any) -> None:
    assert await memory.wait_for_processing("u", timeout=timeout) == 0


@pytest.mark.parametrize("seconds", [np.int64(2), np.float32(0.5), np.uint8(0)])
async def test_seconds_of_a_numpy_kind_are_waited_as_the_number_they_are(
    make_memory: Any, seconds: Any
) -> None:
    """A numpy number was refused as "timeout must be a number of seconds or None, not
    int64" (float32 too), and a close's grace the same way."""
    memory = await make_memory()

    assert await memory.wait_for_processing("u", timeout=seconds) == 0
    await memory.close(grace=seconds)

    assert not memory.is_open
    with pytest.raises(InvalidInputError, match="timeout must be 0 or more"):
        await memory.wait_for_processing("u", timeout=np.float32("nan"))


async def test_seconds_or_a_count_of_more_digits_than_python_writes_are_refused_by_type(
    memory: Memory,
) -> None:
    """A close's grace, a wait's timeout and a search's top_k of 10**5000 raised ValueError
    ("Exceeds the limit (4300 digits) ...") from the refusal's own repr of the value."""
    with pytest.raises(InvalidInputError, match=r"^timeout must be 0 or more") as timeout:
        await memory.wait_for_processing("u", timeout=-(10**5000))
    with pytest.raises(InvalidInputError, match=r"^top_k must be an int") as top_k:
        await memory.retrieve("u", "tea", top_k=10**5000)
    with pytest.raises(InvalidInputError, match=r"^grace must be a number") as grace:
        await memory.close(grace=10**5000)

    for refused in (timeout.value, top_k.value, grace.value):
        assert str(refused).endswith("not int (too long to write out)")


async def test_a_page_of_more_digits_than_python_writes_is_refused_by_type(
    memory: Memory,
) -> None:
    """A page of messages starting after, or as long as, -10**5000 raised ValueError
    ("Exceeds the limit (4300 digits) ...") from the refusal's own formatting of it."""
    with pytest.raises(InvalidInputError, match=r"^after must be 0 or more") as after:
        await memory.messages("u", after=-(10**5000))
    with pytest.raises(InvalidInputError, match=r"^limit must be 1 or more") as limit:
        await memory.messages("u", limit=-(10**5000))

    for refused in (after.value, limit.value):
        assert str(refused).endswith("not int (too long to write out)")


async def test_unknown_task_error_is_a_value_error(memory: Memory) -> None:
    with pytest.raises(UnknownTaskError):
        await memory.get_task("u", "missing")


async def test_process_with_a_bad_user_id_raises_before_scheduling(memory: Memory) -> None:
    with pytest.raises(InvalidInputError):
        memory.process_async("")
    assert memory._inflight == {}


async def test_a_closed_memory_raises_at_once(tmp_path: Path) -> None:
    memory = Memory(db_path=str(tmp_path / "m.db"))
    with pytest.raises(MemoryClosedError, match="not open"):
        await memory.add_message("u", "user", "hi")
    with pytest.raises(MemoryClosedError):
        memory.process_async("u")
    async with memory:
        await memory.add_message("u", "user", "hi")
        task = memory.process_async("u")
        await task.wait()
    with pytest.raises(MemoryClosedError):
        await memory.knowledge("u")
    with pytest.raises(MemoryClosedError):
        await memory.get_task("u", task.task_id)  # known from before, yet not answered


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("max_live_actors", 1.5, "max_live_actors must be an int, not float"),
        ("batch_threshold", True, "batch_threshold must be an int, not bool"),
        ("pool_size", None, "pool_size must be an int, not NoneType"),
        ("idle_timeout", math.nan, "idle_timeout must be a finite number, not nan"),
        ("extraction_timeout", math.inf, "must be a finite number, not inf"),
        ("lease_ttl", 10**400, "lease_ttl must be at most"),
        ("retry_delay", "1", "retry_delay must be a number, not str"),
        ("shutdown_grace", -0.5, "shutdown_grace must not be negative"),
        ("hybrid_alpha", 1.5, "hybrid_alpha must be a number from 0 to 1, not 1.5"),
        ("auto_process", "yes", "auto_process must be a bool, not str"),
        ("leases", 1, "leases must be a bool or None, not int"),
        ("db_path", "  ", "db_path must name a file"),
        ("db_path", 5, "db_path must be a str or a path, not int"),
        ("db_path", "postgresql://me:s3cret@h/mem", "db_path takes the path of a SQLite file"),
        ("db_path", "sqlite:///mem.db", "this one is a database URL: give it as db_url"),
        ("model", 4, "model must be a str or None, not int"),
        ("model", "   ", "model must not be empty"),
        ("model", "claude-sonnet-5-5\n", "model must not begin or end with spaces"),
        ("model", "claude\x1b", "model must not contain control characters (U+001B at index 6)"),
    ],
)
def test_a_setting_of_the_wrong_kind_is_refused_by_name(
    setting: str, value: Any, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(says)) as refused:
        MemoryConfig(**{setting: value})
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("alpha", [math.nan, -0.5, 1.5, True, "0.3"])
async def test_a_ranking_weight_is_refused_alike_by_a_memorys_config_and_a_search(
    tmp_path: Path, alpha: Any
) -> None:
    """One weight checked twice in two wordings: the config said "hybrid_alpha must be a
    finite number, not nan" or "must not be negative" where a search said "alpha must be
    a number from 0 to 1"."""
    db = str(tmp_path / "m.db")
    async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False) as memory:
        await memory.add_message("u", "user", "I live in Oslo.")
    with pytest.raises(InvalidInputError) as by_config:
        MemoryConfig(hybrid_alpha=alpha)
    with Audit(db) as audit, pytest.raises(InvalidInputError) as by_search:
        audit.search("u", "Oslo", alpha=alpha, embedder=False)
    assert str(by_config.value) == f"hybrid_alpha must be a number from 0 to 1, not {alpha!r}"
    assert str(by_search.value) == f"alpha must be a number from 0 to 1, not {alpha!r}"


@pytest.mark.parametrize("alpha", [np.float32(0.5), Fraction(1, 2)], ids=["numpy", "fraction"])
async def test_a_ranking_weight_of_any_real_kind_is_taken_by_a_config_and_a_search_as_a_float(
    tmp_path: Path, alpha: Any
) -> None:
    """The check took only int and float, so a numpy float32 or a Fraction was refused as
    "not a number" by both (a search took them before the check was shared)."""
    db = str(tmp_path / "m.db")
    async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False) as memory:
        await memory.add_message("u", "user", "I live in Oslo.")
        await memory.flush("u")
    kept = MemoryConfig(hybrid_alpha=alpha).hybrid_alpha
    assert (kept, type(kept)) == (0.5, float)
    with Audit(db) as audit:
        assert audit.search("u", "Oslo", alpha=alpha, embedder=False).entries


@pytest.mark.parametrize(
    ("method", "extractor", "says"),
    [
        (
            "reextract",
            OfflineExtractor,
            "an Extractor instance, not the class OfflineExtractor: give OfflineExtractor()",
        ),
        (
            "reextract_in_bulk",
            ClaudeExtractor,
            "a ClaudeExtractor instance, not the class ClaudeExtractor: give ClaudeExtractor()",
        ),
        (
            "reextract_in_bulk",
            OfflineExtractor,
            "a ClaudeExtractor instance, not the class OfflineExtractor",
        ),
    ],
)
async def test_an_extractor_class_given_to_a_reextraction_is_refused_saying_what_to_give(
    tmp_path: Path, method: str, extractor: type, says: str
) -> None:
    """A class that would do, given for its instance, is told how to give one, by the one
    check a Memory and both re-extractions share: the bulk run's own check said only
    "not the class ClaudeExtractor"."""
    db = str(tmp_path / "m.db")
    async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False) as memory:
        await memory.add_message("u", "user", "I live in Oslo.")
    users: Any = ["u"] if method == "reextract_in_bulk" else "u"
    with Audit(db) as audit, pytest.raises(InvalidInputError) as refused:
        await getattr(audit, method)(users, extractor, "v2")
    assert str(refused.value) == f"extractor must be {says}"


WHOLE_SETTINGS = [
    "batch_threshold",
    "max_content_chars",
    "max_live_actors",
    "extraction_concurrency",
    "commit_batch_max",
    "pool_size",
    "max_batch_messages",
    "max_batch_tokens",
    "max_attempts",
    "breaker_failures",
    "snapshot_interval",
    "checkpoint_interval",
]
"""The settings that are whole numbers, bounded by what a database's integer holds."""


@pytest.mark.parametrize("setting", WHOLE_SETTINGS)
def test_a_whole_number_setting_past_what_a_database_holds_is_refused(setting: str) -> None:
    """2**63 went through and failed at open, untyped, in the SQL of batch_threshold."""
    assert getattr(MemoryConfig(**{setting: 2**31 - 1}), setting) == 2**31 - 1
    for value in (2**31, 2**63):
        with pytest.raises(InvalidInputError, match=f"^{setting} must be at most 2147483647"):
            MemoryConfig(**{setting: value})


def test_a_setting_of_a_numpy_kind_is_kept_as_the_python_number_it_is() -> None:
    """A count or duration read from an array or a DataFrame was refused as "must be an
    int, not int64"; it is kept as a plain int or float, which every database binds."""
    config = MemoryConfig(
        batch_threshold=np.int64(5),  # type: ignore[arg-type]
        idle_timeout=np.float32(1.5),  # type: ignore[arg-type]
        shutdown_grace=np.uint8(0),  # type: ignore[arg-type]
        search_embed_seconds=np.float32(0.25),  # type: ignore[arg-type]
    )

    kept = (config.batch_threshold, config.idle_timeout, config.shutdown_grace)
    assert kept == (5, 1.5, 0) and [type(v) for v in kept] == [int, float, int]
    assert type(config.search_embed_seconds) is float
    memory = Memory(batch_threshold=np.int64(7), embedder=False)  # type: ignore[arg-type]
    assert type(memory.config.batch_threshold) is int
    with pytest.raises(InvalidInputError, match="batch_threshold must be an int, not float64"):
        MemoryConfig(batch_threshold=np.float64(5))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="idle_timeout must be a finite number"):
        MemoryConfig(idle_timeout=np.float32("inf"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="lease_ttl must be at most"):
        MemoryConfig(lease_ttl=Fraction(10**400))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value", "refusal"),
    [
        ("lease_ttl", Fraction(10**5000), "lease_ttl must be at most"),
        ("lease_ttl", 10**5000, "lease_ttl must be at most"),
        ("batch_threshold", 10**5000, "batch_threshold must be at most"),
        ("batch_threshold", -(10**5000), "batch_threshold must be positive"),
        ("hybrid_alpha", 10**5000, "hybrid_alpha must be a number from 0 to 1"),
    ],
    ids=["fraction", "duration", "count", "negative count", "weight"],
)
def test_a_setting_of_more_digits_than_python_writes_is_refused_by_its_type(
    setting: str, value: object, refusal: str
) -> None:
    """MemoryConfig(lease_ttl=Fraction(10**5000)) raised ValueError ("Exceeds the limit
    (4300 digits) for integer string conversion") from its own refusal's repr of it."""
    with pytest.raises(InvalidInputError, match=rf"^{refusal}") as refused:
        MemoryConfig(**{setting: value})
    assert str(refused.value).endswith("(too long to write out)")


class _SecondsWithoutRepr(float):
    """A real number whose repr fails: a float kind of a library, written carelessly."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr today")


async def test_a_number_whose_repr_fails_is_taken_as_a_weight_or_a_grace_or_refused_by_type(
    tmp_path: Path,
) -> None:
    """check_alpha and a close's grace made their refusal, with the value's repr, before
    checking: a fine weight or grace whose repr raised was refused by a raw RuntimeError,
    and a wrong one as well."""
    assert MemoryConfig(hybrid_alpha=_SecondsWithoutRepr(0.5)).hybrid_alpha == 0.5
    with pytest.raises(InvalidInputError, match=r"^hybrid_alpha must be a number from 0 to 1"):
        MemoryConfig(hybrid_alpha=_SecondsWithoutRepr(2.0))
    memory = Memory(db_path=str(tmp_path / "m.db"), extractor=OfflineExtractor(), embedder=False)
    await memory.open()
    with pytest.raises(
        InvalidInputError, match=r"^grace must be a number of seconds >= 0"
    ) as grace:
        await memory.close(grace=_SecondsWithoutRepr(-1.0))
    assert str(grace.value).endswith("not _SecondsWithoutRepr (cannot be written out)")
    await memory.close(grace=_SecondsWithoutRepr(1.0))
    assert not memory.is_open


async def test_a_memory_with_the_largest_batch_threshold_opens_and_buffers(
    make_memory: Any,
) -> None:
    """Its open asks the database which users have that many messages waiting."""
    with pytest.raises(InvalidInputError, match="batch_threshold must be at most"):
        Memory(embedder=False, auto_process=True, batch_threshold=2**63)
    memory: Memory = await make_memory(auto_process=True, batch_threshold=2**31 - 1)
    await memory.add_exchange("u", "I live in Oslo", "ok")
    assert len(await memory.buffer("u")) == 2


def test_a_database_url_given_as_db_path_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="give it as db_url"):
        Memory(db_path="postgresql://me:s3cret@h/mem")

    assert list(tmp_path.iterdir()) == []


def test_a_configuration_shows_no_password_of_its_database() -> None:
    config = MemoryConfig(db_url="postgresql://me:s3cret@h/mem?sslpassword=s3cret&sslmode=require")

    shown = repr(config)

    assert "s3cret" not in shown
    assert "db_url='postgresql://me:***@h/mem?sslmode=require&sslpassword=***'" in shown
    assert "batch_threshold=10" in shown


class _Named:
    """An extractor with the given name (the log records it beside every outcome)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def extract(self, batch: Any) -> Any:
        raise AssertionError("never called")


class _ExtractIsAClass:
    """An extractor whose ``extract`` is a class: callable, but called with a batch it
    raised for every message (dict(batch): not iterable), each then blamed."""

    name = "k"
    extract = dict


@pytest.mark.parametrize(
    ("part", "says"),
    [
        ({"config": {"batch_threshold": 3}}, "config must be a MemoryConfig, not dict"),
        ({"extractor": 5}, "extractor must be an Extractor (a name and an async extract(batch))"),
        (
            {"extractor": _ExtractIsAClass()},
            "the extractor's extract must be an async method, not the class dict",
        ),
        ({"extractor": _Named("x" * 65)}, "an extractor's name must be 1 to 64 characters, not 65"),
        ({"extractor": _Named(" ")}, "an extractor's name must be 1 to 64 characters, not 1"),
        ({"extractor": _Named("a\x00b")}, "the extractor's name contains a NUL character"),
        ({"embedder": "minilm"}, "embedder must be an Embedder"),
        ({"embedder": True}, "embedder must be an Embedder"),
    ],
)
def test_a_part_of_the_wrong_kind_is_refused_when_the_memory_is_made(
    part: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        Memory(**part)


class _AsyncCall:
    """An object whose call is async: it can be an extractor's extract."""

    async def __call__(self, batch: Any) -> Any:
        raise AssertionError("never called")


class _Embedder:
    """An embedder with the given name, dimensions and embed."""

    def __init__(self, name: Any = "e", dimensions: Any = 3, embed: Any = None) -> None:
        self.name, self.dimensions = name, dimensions
        self.embed = embed or (lambda texts: [[1.0, 0.0, 0.0] for _ in texts])


async def _async_embed(texts: Any) -> Any:
    raise AssertionError("never called")


def test_an_extractor_class_given_for_an_extractor_is_refused_when_the_memory_is_made() -> None:
    """Accepted, it failed every batch, and every message of every user ended quarantined."""
    says = "extractor must be an Extractor instance, not the class _Named: give _Named()"
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        Memory(extractor=_Named, embedder=False)


class _SyncExtractor:
    """An extractor whose extract is a plain function answering at once: never awaitable."""

    name = "sync"
    calls = 0

    def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        self.calls += 1  # a paid call whose answer is dropped, that blocks the loop
        return ExtractionResult((), self.name)


class _Delegating:
    """An extractor whose plain ``extract`` hands back another's coroutine, as wrappers do."""

    name = "delegating"

    def extract(self, batch: ExtractionBatch) -> Any:
        return _BareExtractor().extract(batch)


async def test_a_plain_extract_fails_each_run_saying_so_and_blames_no_message(
    tmp_path: Path,
) -> None:
    """It quarantined every message of every user, its runs reporting success. It is
    called once: again, it would block the extraction loop and be paid for again."""
    extractor = _SyncExtractor()
    memory = Memory(db_path=str(tmp_path / "m.db"), extractor=extractor, embedder=False)
    async with memory:
        await memory.add_message("u", "user", "hi")
        for _ in range(memory.config.max_attempts + 1):
            with pytest.raises(ProcessingError, match="must be async"):
                await memory.process("u")
        assert await memory.quarantined("u") == []
        assert [m.content for m in await memory.buffer("u")] == ["hi"]
        assert extractor.calls == 1


async def test_a_plain_extract_that_gives_a_coroutine_extracts(tmp_path: Path) -> None:
    memory = Memory(db_path=str(tmp_path / "m.db"), extractor=_Delegating(), embedder=False)
    async with memory:
        await memory.add_message("u", "user", "hi")
        assert await memory.process("u") == 1


@pytest.mark.parametrize(
    "extract",
    [functools.partial(_Named("x").extract), _AsyncCall(), AsyncMock()],
    ids=["partial", "async __call__", "AsyncMock"],
)
def test_an_extract_that_is_async_another_way_is_accepted(extract: Any) -> None:
    extractor = _Named("x")
    extractor.extract = extract  # type: ignore[method-assign]
    assert Memory(extractor=extractor, embedder=False).config.batch_threshold == 10


@pytest.mark.parametrize(
    ("embedder", "says"),
    [
        (_Embedder(dimensions="3"), "the embedder 'e' must give dimensions as a positive int"),
        (_Embedder(dimensions=-3), "as a positive int (the length of its vectors), not -3"),
        (_Embedder(dimensions=0), "as a positive int (the length of its vectors), not 0"),
        (_Embedder(dimensions=True), "as a positive int (the length of its vectors), not True"),
        (_Embedder(name=""), "an embedder's name must be a non-blank str, not ''"),
        (_Embedder(name=" "), "an embedder's name must be a non-blank str, not ' '"),
        (_Embedder(name=5), "an embedder's name must be a non-blank str, not 5"),
        (_Embedder(embed=_async_embed), "must have a plain embed(texts), not an async one"),
        (_Embedder, "embedder must be an Embedder"),
    ],
)
def test_an_embedder_every_search_would_fail_on_is_refused_when_the_memory_is_made(
    embedder: Any, says: str
) -> None:
    """Accepted, every search ranked by words alone and logged a traceback."""
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        Memory(embedder=embedder)
    assert Memory(embedder=_Embedder()).config.batch_threshold == 10


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_threshold must be positive"):
        MemoryConfig(batch_threshold=0)
    with pytest.raises(ValueError, match="durability"):
        MemoryConfig(durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_interval must not be negative, not -1"):
        MemoryConfig(checkpoint_interval=-1)
    assert MemoryConfig(checkpoint_interval=0).checkpoint_interval == 0  # off
    # Every actor thread is started at open: 100,000 failed there, untyped, after 12 s.
    with pytest.raises(InvalidInputError, match="actor_threads must be at most 1024, not 100000"):
        MemoryConfig(actor_threads=100_000)
    assert MemoryConfig(actor_threads=1024).actor_threads == 1024
    with pytest.raises(InvalidInputError, match="search_embed_seconds must not be negative"):
        MemoryConfig(search_embed_seconds=-0.5)
    with pytest.raises(InvalidInputError, match="search_embed_seconds must be a finite number"):
        MemoryConfig(search_embed_seconds=float("nan"))
    assert MemoryConfig(search_embed_seconds=None).search_embed_seconds is None  # no bound
    with pytest.raises(InvalidInputError, match=r"^db_url is not a database URL") as refused:
        MemoryConfig(db_url="postgresql://me:s3cret@db.example:port/mem")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_db_url_is_refused_not_taken_for_db_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset variable read with a default of "" is no database: None means db_path."""
    monkeypatch.chdir(tmp_path)
    for refuse in (lambda: MemoryConfig(db_url=url), lambda: Memory(db_url=url)):
        with pytest.raises(InvalidInputError, match=r"^db_url is not a database URL"):
            refuse()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("batch_threshold", 10.0, "batch_threshold must be an int, not float"),
        ("auto_process", 0, "auto_process must be a bool, not int"),
        ("db_url", "sqlite:///:memory:", "memvee needs a SQLite file, not an in-memory database"),
        ("db_url", "sqlite://", "memvee needs a SQLite file, not an in-memory database"),
    ],
)
def test_a_memory_refuses_what_its_configuration_refuses_when_it_is_made(
    setting: str, value: Any, says: str
) -> None:
    """Memory dropped 10.0 and 0 as equal to their defaults, and took an in-memory
    database until its open."""
    for make in (MemoryConfig, Memory):
        with pytest.raises(InvalidInputError, match=re.escape(says)):
            make(**{setting: value})


def test_a_db_path_given_as_a_path_is_kept_as_a_str(tmp_path: Path) -> None:
    """db_path is typed str: it held the Path it was given (and mypy refused a Path for
    Memory's db_path, which takes one)."""
    memory = Memory(db_path=tmp_path / "m.db", embedder=False)
    config = MemoryConfig(db_path=tmp_path / "c.db")  # type: ignore[arg-type]

    assert (memory.config.db_path, config.db_path) == (
        str(tmp_path / "m.db"),
        str(tmp_path / "c.db"),
    )
    assert type(memory.config.db_path) is str and type(config.db_path) is str


async def test_db_path_folder_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "memory.db"
    async with Memory(db_path=str(target)) as memory:
        await memory.add_message("u", "user", "I live in Oslo")
    assert target.exists()


async def test_add_exchange_returns_the_committed_messages(memory: Memory) -> None:
    user, assistant = await memory.add_exchange("u", "hello", "hi there")
    assert (user.role, user.content, user.seq) == ("user", "hello", 1)
    assert (assistant.role, assistant.content, assistant.seq) == ("assistant", "hi there", 2)
    assert user.message_id != assistant.message_id
    buffered = await memory.buffer("u")
    assert [m.message_id for m in buffered] == [user.message_id, assistant.message_id]


async def test_messages_are_read_a_page_at_a_time(memory: Memory) -> None:
    for n in range(3):
        await memory.add_exchange("u", f"question {n}", f"answer {n}")
    await memory.add_exchange("v", "another user's", "turn")

    pages, after = [], 0
    while page := await memory.messages("u", after=after, limit=4):
        pages.append([m.content for m in page])
        after = page[-1].seq

    assert pages == [
        ["question 0", "answer 0", "question 1", "answer 1"],
        ["question 2", "answer 2"],
    ]
    assert [m.seq for m in await memory.messages("u", after=5)] == [6]
    assert [m.seq for m in await memory.messages("u", limit=1)] == [1]
    assert await memory.messages("u", after=10**30) == []  # past any seq a column holds
    assert len(await memory.messages("u", after=2, limit=10**30)) == 4
    assert len(await memory.messages("u")) == 6


@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint16])
async def test_a_count_of_a_numpy_integer_kind_reads_as_the_int_it_is(
    memory: Memory, kind: Any
) -> None:
    """top_k=np.int64(3) (what an array's argmax or a DataFrame cell gives) was refused as
    "must be an int from 1 to 1,000, not np.int64(3)", though a numpy float is a weight."""
    for n in range(3):
        await memory.add_exchange("u", f"green tea {n}", f"noted {n}")
    await memory.flush("u")

    page = await memory.messages("u", after=kind(1), limit=kind(2))
    entries = await memory.knowledge("u", offset=kind(1), limit=kind(1))
    found = await memory.retrieve("u", "green tea", top_k=kind(2))

    assert [m.seq for m in page] == [2, 3]
    assert [e.text for e in entries] == ["User said: green tea 1"]
    assert len(found.entries) == 2
    for refused in (np.float64(2.0), np.bool_(True)):
        with pytest.raises(InvalidInputError, match="top_k must be an int"):
            await memory.retrieve("u", "green tea", top_k=refused)


class _UnconvertibleIntegral:
    """A registered integral kind whose conversions raise, as a broken numeric type's may."""

    def __index__(self) -> int:
        raise RuntimeError("no index")

    def __float__(self) -> float:
        raise RuntimeError("no float")


numbers.Integral.register(_UnconvertibleIntegral)


@pytest.mark.parametrize(
    "odd",
    [np.timedelta64(5, "s"), _UnconvertibleIntegral()],
    ids=["numpy timedelta64", "integral that converts not"],
)
async def test_an_integral_kind_that_gives_no_number_is_refused_naming_the_parameter_and_type(
    make_memory: Any, odd: Any
) -> None:
    """numpy counts a timedelta64 as an integer kind, yet it gives no int nor float: the
    conversion's own TypeError (or a registered kind's RuntimeError) escaped raw."""
    kind = type(odd).__name__
    with pytest.raises(InvalidInputError, match=rf"^batch_threshold must be an int, not {kind}"):
        MemoryConfig(batch_threshold=odd)
    with pytest.raises(InvalidInputError, match=rf"^idle_timeout must be a number, not {kind}"):
        MemoryConfig(idle_timeout=odd)
    memory = await make_memory()
    with pytest.raises(InvalidInputError, match=rf"^limit must be an int, not {kind}"):
        await memory.messages("u", limit=odd)
    with pytest.raises(InvalidInputError, match=r"^top_k must be an int"):
        await memory.retrieve("u", "green tea", top_k=odd)
    with pytest.raises(InvalidInputError, match=rf"^timeout must be a number .*, not {kind}"):
        await memory.wait_for_processing("u", timeout=odd)
    with pytest.raises(InvalidInputError, match=rf"^grace must be a number .*, not {kind}"):
        await memory.close(grace=odd)


async def test_a_refused_role_or_requeued_id_of_any_length_is_echoed_cut_short(
    memory: Memory,
) -> None:
    """An unknown role or message id of a million characters made an error (and a 400 of
    the HTTP API) a million characters long; they are echoed as an unknown task id is."""
    await memory.add_exchange("u", "green tea", "noted")

    with pytest.raises(InvalidInputError) as role:
        await memory.add_message("u", "r" * 1_000_000, "hi")
    with pytest.raises(InvalidInputError) as requeued:
        await memory.requeue("u", ["m" * 1_000_000])

    assert str(role.value).startswith("unknown role 'rrrr")
    assert str(requeued.value).startswith("user 'u' has no quarantined message 'mmmm")
    for refused in (role.value, requeued.value):
        assert "(1,000,000 characters)" in str(refused) and len(str(refused)) < 200
    assert len(await memory.messages("u")) == 2


async def test_a_role_that_is_no_str_is_echoed_cut_short(memory: Memory) -> None:
    """add_message("u", b"r" * 1_000_000, "hi") gave an error of 1,000,065 characters: a
    role that is no str was repeated whole, by its repr."""
    with pytest.raises(InvalidInputError) as refused:
        await memory.add_message("u", b"r" * 1_000_000, "hi")  # type: ignore[arg-type]

    assert str(refused.value).startswith("unknown role b'rrrr")
    assert "(1,000,003 characters)" in str(refused.value) and len(str(refused.value)) < 200
    assert await memory.messages("u") == []


async def test_an_unreachable_server_gives_a_clear_storage_error_without_the_password() -> None:
    from memvee import StorageError

    url = "postgresql+psycopg://memvee:s3cret@127.0.0.1:1/memvee"
    with pytest.raises(StorageError, match="cannot open the event store at") as raised:
        await Memory(db_url=url).open()
    assert "s3cret" not in str(raised.value)


class _BareExtractor:
    """The least an extractor is: a name and ``extract``; no ``aclose``."""

    name = "bare"

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        facts = tuple(ExtractedFact(f"said {m.content}", (m.message_id,)) for m in batch.messages)
        return ExtractionResult(facts, self.name)


async def test_an_extractor_without_aclose_is_an_extractor(tmp_path: Path) -> None:
    extractor: Extractor = _BareExtractor()  # the protocol asks no aclose (mypy checks)
    memory = Memory(db_path=str(tmp_path / "m.db"), extractor=extractor, embedder=False)
    async with memory:
        await memory.add_message("u", "user", "hi")
        assert await memory.process("u") == 1
    assert not memory.is_open


async def test_a_write_is_checked_once_on_the_callers_loop_not_again_in_the_users_actor(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import events.user_log

    checked_in_the_actor: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        events.user_log, "check_message", lambda *args: checked_in_the_actor.append(args)
    )
    user, assistant = await memory.add_exchange("u", "hello", "hi there", user_name="Ana")
    assert checked_in_the_actor == []
    assert (user.content, user.name, assistant.content) == ("hello", "Ana", "hi there")
    with pytest.raises(InvalidInputError, match="name must"):
        await memory.add_exchange("u", "hello", "hi", assistant_name="\ufeff")
    with pytest.raises(InvalidInputError, match="aware"):
        await memory.add_exchange("u", "hello", "hi", datetime(2026, 1, 1))
    assert [m.content for m in await memory.buffer("u")] == ["hello", "hi there"]


@pytest.mark.parametrize(
    "message",
    [
        ("robot", "hi", None, None),
        ("user", "", None, None),
        ("user", "naive", datetime(2026, 1, 1), None),
        ("user", "a\x00b", None, None),
        ("user", "named", None, "\ufeff"),
    ],
    ids=["unknown role", "empty", "naive sent_at", "control character", "invisible name"],
)
async def test_the_users_actor_asked_directly_checks_what_it_appends(
    memory: Memory, message: tuple[object, ...]
) -> None:
    """Only the Memory's own write skips the actor's checks (it checked on its loop): the
    actors package used directly refuses bad input and writes nothing."""
    engine, loop = memory._running()
    with pytest.raises(InvalidInputError):
        await engine.directory.call_async(loop, "u", "add_messages", (message,), paced=True)
    assert await memory.buffer("u") == []


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("claude\x07sonnet", "MEMVEE_MODEL must not contain control characters (U+0007"),
        ("claude\u200bsonnet", "MEMVEE_MODEL must not contain characters that show nothing"),
        ("\u200b", "MEMVEE_MODEL must not be empty"),
    ],
)
async def test_a_model_in_memvee_model_no_call_could_use_is_refused_before_anything_is_written(
    model: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MEMVEE_MODEL was only stripped of spaces: a control character or one that shows
    nothing went to the API with every batch, each failing, where MemoryConfig(model=...)
    refuses the same name."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1")  # never the internet
    monkeypatch.setenv("MEMVEE_MODEL", model)
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        async with Memory(db_path=str(tmp_path / "m.db")):
            pass
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
