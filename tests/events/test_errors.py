"""Which failures of the database may pass if the work is done again, and how a refused
value is shown in a message."""

from __future__ import annotations

import copy
import pickle
import sqlite3
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from events.errors import (
    FORGOTTEN_REASON,
    CheckpointBusyError,
    ConflictError,
    MemveeError,
    StorageError,
    echoed_repr,
    may_pass,
)
from events.extraction import TokenUsage
from memvee import errors


def _stored(cause: BaseException) -> StorageError:
    """A StorageError as the store raises it: SQLAlchemy's error, the driver's inside."""
    refused = StorageError("could not store 1 events")
    refused.__cause__ = OperationalError("INSERT", {}, cause)
    return refused


def _busy_snapshot() -> sqlite3.OperationalError:
    """SQLITE_BUSY_SNAPSHOT, as SQLite raises it: a WAL write whose read snapshot went stale."""
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = 517  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    "cause",
    [
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
        psycopg.errors.IdleSessionTimeout("terminating connection due to idle-session timeout"),
        sqlite3.OperationalError("database is locked"),
        _busy_snapshot(),
    ],
)
def test_a_lost_connection_a_timeout_or_a_lock_may_pass(cause: BaseException) -> None:
    assert may_pass(_stored(cause))


def test_a_constraint_violation_or_a_missing_table_would_fail_the_same_way() -> None:
    unique = psycopg.errors.UniqueViolation("duplicate key value")
    violated = StorageError("could not store 1 events")
    violated.__cause__ = IntegrityError("INSERT", {}, unique)
    assert not may_pass(violated)
    assert not may_pass(ConflictError("a user log was appended to concurrently"))
    assert not may_pass(_stored(sqlite3.OperationalError("no such table: memvee_events")))
    assert not may_pass(StorageError("the event store is closed"))


@pytest.mark.parametrize(
    "cause",
    [
        sqlite3.OperationalError("database table is locked"),
        sqlite3.OperationalError("database schema is locked: main"),
        psycopg.errors.InvalidPassword("password authentication failed for user memvee"),
    ],
)
def test_a_lock_of_the_same_connection_or_a_refused_login_would_fail_the_same_way(
    cause: BaseException,
) -> None:
    """Each got some 10 s of retries on an actor's thread, which other users share."""
    assert not may_pass(_stored(cause))


def test_a_refused_value_is_shown_whole_when_short_cut_when_long_and_by_type_when_unwritable() -> (
    None
):
    """A value of any kind makes a short message, and always one: an int of 5,000 digits
    has no repr (Python refuses to write past 4,300), which made the message itself fail."""
    assert echoed_repr(None) == "None"
    assert echoed_repr("robot") == "'robot'"
    assert echoed_repr(b"r" * 1_000_000).endswith("... (1,000,003 characters)")
    assert len(echoed_repr(list(range(100_000)))) < 100
    assert echoed_repr(10**5000) == "int (too long to write out)"


class _ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("no repr today")


class _ReprGivesNoStr:
    def __repr__(self) -> str:
        return 42  # type: ignore[return-value]


def _nested(depth: int) -> list[Any]:
    """A list holding a list, ``depth`` deep: its repr is deeper than Python recurses."""
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (_ReprFails(), "_ReprFails"),
        (_ReprGivesNoStr(), "_ReprGivesNoStr"),
        (_nested(200_000), "list"),
    ],
    ids=["repr raises", "repr gives no str", "too deep to write"],
)
def test_a_value_whose_repr_fails_is_shown_by_its_type_name(value: object, kind: str) -> None:
    """The message is always made: only int's ValueError was caught, so a repr raising
    RuntimeError, giving no str (TypeError) or too deep (RecursionError) escaped raw."""
    assert echoed_repr(value) == f"{kind} (cannot be written out)"


_LOG_ID = UUID("0f6c1b5e-7d7a-4a53-9d0e-5b1f3c2a9e11")

_RAISED: dict[str, Callable[[], MemveeError]] = {
    "ActorStoppedError": lambda: errors.ActorStoppedError("the actor of 'ann' stopped"),
    "AlreadyReextractedError": lambda: errors.AlreadyReextractedError("taken", ["m1", "m2"]),
    "ConflictError": lambda: errors.ConflictError("appended first by another writer"),
    "ConnectionLostError": lambda: errors.ConnectionLostError("the server ended the session"),
    "DatabaseInUseError": lambda: errors.DatabaseInUseError("open in another Memory"),
    "EmbedderError": lambda: errors.EmbedderError("the embedder raised SystemExit"),
    "EveryRequestRefusedError": lambda: errors.EveryRequestRefusedError("key refused"),
    "ExtractionError": lambda: errors.ExtractionError(
        "bad answer", usage=TokenUsage(input_tokens=10, output_tokens=2), retry_after=3.0
    ),
    "ExtractionPausedError": lambda: errors.ExtractionPausedError("paused", retry_after=30.0),
    "ExtractorAccessRefusedError": lambda: errors.ExtractorAccessRefusedError("401"),
    "ExtractorNotFoundError": lambda: errors.ExtractorNotFoundError("404: no such model"),
    "ExtractorOverloadedError": lambda: errors.ExtractorOverloadedError("529", retry_after=5.0),
    "ExtractorRateLimitedError": lambda: errors.ExtractorRateLimitedError("429", retry_after=1.0),
    "InvalidExtractionError": lambda: errors.InvalidExtractionError("off schema"),
    "InvalidInputError": lambda: errors.InvalidInputError("user_id must not be empty"),
    "MemoryClosedError": lambda: errors.MemoryClosedError("this Memory is not open"),
    "MemveeError": lambda: errors.MemveeError("something failed"),
    "MissingCredentialsError": lambda: errors.MissingCredentialsError("no ANTHROPIC_API_KEY"),
    "NewerEventError": lambda: errors.NewerEventError(_LOG_ID, 7, "events.New", "ann"),
    "NotFoundError": lambda: errors.NotFoundError("no user 'ann'"),
    "OlderLayoutError": lambda: errors.OlderLayoutError("layout 16"),
    "ProbeFailedError": lambda: errors.ProbeFailedError(
        "probe failed", refusal=errors.RejectedBatchError("too long"), harmless_accepted=True
    ),
    "ProcessingError": lambda: errors.ProcessingError("ann", "task-1", "the API is down"),
    "ProcessingTimeoutError": lambda: errors.ProcessingTimeoutError("waited 30 s"),
    "OversizedMessageError": lambda: errors.OversizedMessageError("too large", too_large=True),
    "RejectedBatchError": lambda: errors.RejectedBatchError("refused", reason="too long"),
    "RejectedTextError": lambda: errors.RejectedTextError("refused text"),
    "StorageError": lambda: errors.StorageError("could not store 1 events"),
    "TransientStorageError": lambda: errors.TransientStorageError("database is locked"),
    "UnknownTaskError": lambda: errors.UnknownTaskError("no task 'nope'"),
    "UnreadableEventError": lambda: errors.UnreadableEventError(_LOG_ID, 3, "bad JSON", None),
    "UserForgottenError": lambda: errors.UserForgottenError("ann", "task-1", FORGOTTEN_REASON),
}
"""One of each error memvee.errors exports, made as the code that raises it makes it."""

_ALSO_RAISED: dict[str, Callable[[], MemveeError]] = {
    "CheckpointBusyError": lambda: CheckpointBusyError(0, 12, 7),
}
"""The errors of several arguments ``events`` raises beside those memvee.errors exports."""


def test_a_sample_of_every_exported_error_is_checked_below() -> None:
    assert set(_RAISED) == set(errors.__all__)


@pytest.mark.parametrize("name", sorted({**_RAISED, **_ALSO_RAISED}))
@pytest.mark.parametrize(
    "carry",
    [lambda e: pickle.loads(pickle.dumps(e)), copy.copy, copy.deepcopy],
    ids=["pickled", "copied", "deep-copied"],
)
def test_every_error_is_carried_across_processes_and_copied_whole(
    name: str, carry: Callable[[MemveeError], MemveeError]
) -> None:
    """An error of several arguments was rebuilt from its message alone: a ProcessingError
    raised in a worker process (a process pool, a task queue) never reached the parent,
    whose unpickling failed with a TypeError, and ``copy.copy`` of one failed alike."""
    raised = {**_RAISED, **_ALSO_RAISED}[name]()
    carried = carry(raised)
    assert type(carried) is type(raised)
    assert str(carried) == str(raised)
    assert carried.args == raised.args
    assert vars(carried).keys() == vars(raised).keys()
    assert repr(vars(carried)) == repr(vars(raised))
