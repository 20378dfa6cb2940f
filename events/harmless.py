"""How a harmless request fared: the one verdict a re-extraction run's check ends with.

A run that met two failed calls in a row sends one harmless request before it stops, and
what that request showed decides whether the failed calls are evidence against their
messages. Each outcome is a small frozen class, holding the error's first line only where
the outcome has one, so that a reader matches on one value and no impossible mix of flags
(an outage whose credentials were refused) can be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Answered",
    "Busy",
    "CheckVerdict",
    "CredentialsRefused",
    "FailedTellingNothing",
    "Outage",
]


@dataclass(frozen=True, slots=True)
class Answered:
    """The API answered it: the failed calls were their messages', whose batches the next
    run splits."""

    blames_no_message: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Outage:
    """It failed too, as an outage does (a server error, a timeout, no connection, the API
    overloaded): the API is down, and the failed calls are no evidence against their
    messages."""

    blames_no_message: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class CredentialsRefused:
    """The API refused its credentials (401, 403; ``error`` says which): the API key or its
    permissions are refused for every request, so the failed calls are no evidence
    against their messages either, though the API is up."""

    error: str
    blames_no_message: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Busy:
    """It was rate limited or asked to wait (``error`` says how): the API is up but busy.
    It tells nothing of the failed calls, whose batches split as before, and ``reextract
    --batch-api`` sends no other user's messages at full price in that run."""

    error: str
    blames_no_message: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class FailedTellingNothing:
    """It failed in a way that would repeat (a refusal, a bug; ``error`` says how): it tells
    nothing, and the failed calls split their batches as before."""

    error: str
    blames_no_message: ClassVar[bool] = False


CheckVerdict = Answered | Outage | CredentialsRefused | Busy | FailedTellingNothing
"""How a harmless request fared: one of the five outcomes above. ``blames_no_message``
says whether the failed calls it judges are left out of the evidence (an outage, a refused
API key)."""
