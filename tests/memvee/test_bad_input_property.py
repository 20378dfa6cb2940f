"""A property: every public call of a Memory (and of an Audit) refuses generated bad input
with :class:`InvalidInputError` before anything is written: no event, no row, no task.

Each generated call has exactly one bad argument, drawn from what slipped through before:
user ids with control characters or nothing visible, lone surrogates or NUL characters in
text, times that leave the datetime range in UTC, NaN, negative or non-numeric timeouts.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import anthropic
import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memvee import InvalidInputError, Memory
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor, OfflineExtractor

Call = tuple[str, tuple[Any, ...], dict[str, Any]]

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
USER = "u"
"""The user the database holds before any bad call."""


class _NoOffset(tzinfo):
    """A tzinfo that gives no offset: its datetimes are naive, whatever ``tzinfo`` says."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None


def _with(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text with one character of ``inner`` somewhere in it."""
    return st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), inner, st.text(max_size=4))


SURROGATES = st.characters(categories=["Cs"])
CONTROLS = st.characters(categories=["Cc"])
INVISIBLE = st.text(
    st.one_of(
        st.characters(categories=["Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp"]),
        st.sampled_from("\u200b\u200c\u200d\u2060\ufeff\u3164\u2800"),
    ),
    max_size=6,
)
NOT_TEXT = st.one_of(
    st.none(), st.integers(), st.binary(max_size=4), st.lists(st.text(), max_size=2)
)

BAD_USER_IDS = st.one_of(
    INVISIBLE,
    _with(CONTROLS),
    _with(SURROGATES),
    st.text(min_size=257, max_size=300),
    NOT_TEXT.filter(lambda v: v is not None),
)
BAD_CONTENT = st.one_of(INVISIBLE, _with(SURROGATES), _with(st.just("\x00")), NOT_TEXT)
BAD_NAMES = st.one_of(
    INVISIBLE, _with(CONTROLS), _with(SURROGATES), NOT_TEXT.filter(lambda v: v is not None)
)
BAD_VERSIONS = st.one_of(
    INVISIBLE,
    _with(CONTROLS),
    _with(SURROGATES),
    _with(st.sampled_from("\u200b\u2060\ufeff")).map(lambda v: "v" + v),
    st.text(max_size=4).map(lambda v: f" v{v}"),
    st.just("live"),
    NOT_TEXT,
)
BAD_TOP_K = st.one_of(
    st.integers(max_value=0), st.integers(min_value=1001), st.floats(), st.booleans(), st.text()
)
BAD_ROLES = st.one_of(
    st.text(max_size=8).filter(lambda r: r not in {"user", "assistant", "system"}), NOT_TEXT
)


def _offset(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


BAD_TIMES = st.one_of(
    st.builds(  # before year 1 once in UTC
        lambda moment, minutes: moment.replace(tzinfo=_offset(minutes)),
        st.datetimes(max_value=datetime(1, 1, 1, 10)),
        st.integers(min_value=11 * 60, max_value=24 * 60 - 1),
    ),
    st.builds(  # after year 9999 once in UTC
        lambda moment, minutes: moment.replace(tzinfo=_offset(-minutes)),
        st.datetimes(min_value=datetime(9999, 12, 31, 14)),
        st.integers(min_value=10 * 60, max_value=24 * 60 - 1),
    ),
    st.datetimes(),  # naive
    st.datetimes().map(lambda moment: moment.replace(tzinfo=_NoOffset())),
    st.one_of(st.text(max_size=4), st.integers(), st.dates()),
)
BAD_SENT_AT = st.one_of(
    BAD_TIMES,
    st.datetimes(  # ahead of this machine's clock by more than clocks disagree
        min_value=datetime(2100, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
)
BAD_TIMEOUTS = st.one_of(
    st.just(math.nan),
    st.floats(max_value=-1e-9),
    st.integers(max_value=-1),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
)


BAD_EXTRACTORS = st.one_of(
    NOT_TEXT, st.text(max_size=4), st.just(OfflineExtractor), st.just(ClaudeExtractor)
)
"""Not an extractor instance: each went through a re-extraction that recorded every
message's call as failed ("'str' object has no attribute 'extract'")."""
BAD_ALPHAS = st.one_of(
    st.just(math.nan),
    st.floats(max_value=-1e-9),
    st.floats(min_value=1 + 1e-9),
    st.booleans(),
    st.text(max_size=4),
)
BAD_POLLS = st.one_of(st.just(math.nan), st.floats(max_value=0), st.booleans(), st.text(max_size=4))


def _claude() -> ClaudeExtractor:
    """A Claude extractor with credentials, for a server that is never there: a call that
    gets past the checks fails, untyped, instead of reaching the internet."""
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url="http://127.0.0.1:1", max_retries=0
    )
    return ClaudeExtractor(client=client)


def _call(method: str, /, *args: st.SearchStrategy[Any], **kwargs: st.SearchStrategy[Any]) -> Any:
    return st.tuples(st.just(method), st.tuples(*args), st.fixed_dictionaries(kwargs))


def _user_only(*names: str) -> list[Any]:
    """Calls whose only input is the user id."""
    return [_call(name, BAD_USER_IDS) for name in names]


ok = st.just
MEMORY_CALLS: dict[str, list[Any]] = {
    "add_message": [
        _call("add_message", BAD_USER_IDS, ok("user"), ok("hi")),
        _call("add_message", ok(USER), BAD_ROLES, ok("hi")),
        _call("add_message", ok(USER), ok("user"), BAD_CONTENT),
        _call("add_message", ok(USER), ok("user"), ok("hi"), BAD_SENT_AT),
        _call("add_message", ok(USER), ok("user"), ok("hi"), name=BAD_NAMES),
    ],
    "add_exchange": [
        _call("add_exchange", BAD_USER_IDS, ok("hi"), ok("hello")),
        _call("add_exchange", ok(USER), BAD_CONTENT, ok("hello")),
        _call("add_exchange", ok(USER), ok("hi"), BAD_CONTENT),
        _call("add_exchange", ok(USER), ok("hi"), ok("hello"), BAD_SENT_AT),
        _call("add_exchange", ok(USER), ok("hi"), ok("hello"), user_name=BAD_NAMES),
        _call("add_exchange", ok(USER), ok("hi"), ok("hello"), assistant_name=BAD_NAMES),
    ],
    "wait_for_processing": [
        _call("wait_for_processing", BAD_USER_IDS),
        _call("wait_for_processing", ok(USER), BAD_TIMEOUTS),
    ],
    "knowledge": [
        _call("knowledge", BAD_USER_IDS),
        _call("knowledge", ok(USER), as_of=BAD_TIMES),
    ],
    "retrieve": [
        _call("retrieve", BAD_USER_IDS, ok("car")),
        _call("retrieve", ok(USER), st.one_of(_with(SURROGATES), NOT_TEXT)),
        _call("retrieve", ok(USER), ok("car"), as_of=BAD_TIMES),
        _call("retrieve", ok(USER), ok("car"), top_k=BAD_TOP_K),
    ],
    "requeue": [
        _call("requeue", BAD_USER_IDS),
        _call("requeue", ok(USER), st.one_of(st.text(min_size=1), st.lists(NOT_TEXT, min_size=1))),
    ],
    "get_task": [
        _call("get_task", BAD_USER_IDS, ok("t")),
        _call("get_task", ok(USER), st.one_of(_with(SURROGATES), NOT_TEXT, st.just(""))),
    ],
    **{
        name: _user_only(name)
        for name in ("process", "process_async", "request_processing", "flush", "messages")
    },
    **{name: _user_only(name) for name in ("forget", "buffer", "quarantined", "user", "tasks")},
}

AUDIT_CALLS: dict[str, list[Any]] = {
    "log": [
        _call("log", BAD_USER_IDS),
        _call("log", ok(USER), since=BAD_TIMES),
        _call("log", ok(USER), until=BAD_TIMES),
    ],
    "state": [_call("state", BAD_USER_IDS), _call("state", ok(USER), at=BAD_TIMES)],
    "search": [
        _call("search", BAD_USER_IDS, ok("car"), embedder=ok(False)),
        _call("search", ok(USER), ok("car"), as_of=BAD_TIMES, embedder=ok(False)),
        _call("search", ok(USER), ok("car"), alpha=BAD_ALPHAS, embedder=ok(False)),
    ],
    **{
        name: [_call(name, BAD_USER_IDS, *extra)]
        for name, extra in (
            ("explain", (ok("entry"),)),
            ("export", ()),
            ("quarantined", ()),
            ("requeue", ()),
            ("promote", (ok("v2"),)),
            ("compare", ()),
            ("knowledge_versions", ()),
            ("unpromoted_versions", ()),
            ("forget", ()),
            ("logged_version", ()),
        )
    },
    "reextract": [
        _call("reextract", BAD_USER_IDS, ok(None), ok("v2")),
        _call("reextract", ok(USER), ok(None), BAD_VERSIONS),
        _call("reextract", ok(USER), BAD_EXTRACTORS, ok("v2"), embedder=ok(False)),
    ],
    "check_version_name": [
        _call("check_version_name", st.lists(BAD_USER_IDS, min_size=1, max_size=2), ok("v2")),
        _call("check_version_name", ok([USER]), BAD_VERSIONS),
    ],
    "reextract_in_bulk": [
        _call(
            "reextract_in_bulk", st.lists(BAD_USER_IDS, min_size=1, max_size=2), ok(None), ok("v2")
        ),
        _call(
            "reextract_in_bulk",
            ok([USER]),
            st.one_of(BAD_EXTRACTORS, st.builds(OfflineExtractor)),
            ok("v2"),
            embedder=ok(False),
        ),
        _call(
            "reextract_in_bulk",
            ok([USER]),
            st.builds(_claude),
            ok("v2"),
            poll_interval=BAD_POLLS,
            embedder=ok(False),
        ),
    ],
    "knowledge": [_call("knowledge", BAD_USER_IDS), _call("knowledge", ok(USER), as_of=BAD_TIMES)],
}
AUDIT_CALLS = {name: calls for name, calls in AUDIT_CALLS.items() if hasattr(Audit, name)}
AUDIT_WITHOUT_INPUT = {"close", "import_lines", "quarantine_counts", "spend", "stats", "users"}


def _public(cls: type, ignored: set[str]) -> set[str]:
    """The public methods of ``cls`` that take input."""
    return {
        name
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name not in ignored
    }


async def _run(target: Any, call: Call) -> Any:
    name, args, kwargs = call
    result = getattr(target, name)(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    if inspect.isgenerator(result):
        return list(result)
    return result


def test_every_public_call_is_covered() -> None:
    assert _public(Memory, {"open", "close"}) == set(MEMORY_CALLS)
    assert _public(Audit, AUDIT_WITHOUT_INPUT) == set(AUDIT_CALLS)


@pytest.fixture
async def held_memory(make_memory: Callable[..., Any]) -> Memory:
    """A Memory holding one user with knowledge and a buffered exchange."""
    memory: Memory = await make_memory()
    await memory.add_exchange(USER, "I drive a red car", "noted", datetime(2026, 1, 1, tzinfo=UTC))
    await memory.process(USER)
    await memory.add_exchange(USER, "I work in Oslo", "noted")
    engine = memory._engine
    assert engine is not None
    await asyncio.to_thread(engine.index_messages)  # else the committer may, mid-test
    return memory


@pytest.fixture
def held(held_memory: Memory) -> Callable[[], tuple[Any, ...]]:
    """Reads what a call could have written: the rows of every table (a write appends an
    event, so adds rows) and the Memory's tasks in flight."""
    assert held_memory._engine is not None
    engine = held_memory._engine.store.engine
    names = sqlalchemy.inspect(engine).get_table_names()
    counts = sqlalchemy.text(
        "SELECT " + ", ".join(f'(SELECT count(*) FROM "{name}")' for name in names)
    )

    def read() -> tuple[Any, ...]:
        with engine.connect() as connection:
            rows = tuple(connection.execute(counts).one())
        return rows, {user: sorted(tasks) for user, tasks in held_memory._inflight.items()}

    return read


@PROPERTY
@given(call=st.one_of([variant for variants in MEMORY_CALLS.values() for variant in variants]))
async def test_memory_refuses_bad_input_and_writes_nothing(
    held_memory: Memory, held: Callable[[], tuple[Any, ...]], call: Call
) -> None:
    before = held()
    with pytest.raises(InvalidInputError) as raised:
        await _run(held_memory, call)
    assert str(raised.value)
    assert held() == before


@pytest.fixture
def audit(held_memory: Memory, db_url: str) -> Iterator[Audit]:
    """An Audit on the database of ``held_memory``."""
    opened = Audit(db_url=db_url)
    yield opened
    opened.close()


@PROPERTY
@given(call=st.one_of([variant for variants in AUDIT_CALLS.values() for variant in variants]))
async def test_audit_refuses_bad_input_and_writes_nothing(
    audit: Audit, held: Callable[[], tuple[Any, ...]], call: Call
) -> None:
    before = held()
    with pytest.raises(InvalidInputError) as raised:
        await _run(audit, call)
    assert str(raised.value)
    assert held() == before
