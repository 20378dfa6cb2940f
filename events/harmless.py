"""How a harmless request fared: the one verdict a re-extraction run's check ends with.

A run that met two failed calls in a row sends one harmless request before it stops, and
what that request showed decides whether the failed calls are evidence against their
messages; ``reextract --batch-api``'s full-price fallback sends one after a lone failed
call, and a probe of a Message Batch's refusal kept on its own is told as one too (these
judge no failed call: they are kept for what they cost). Each outcome is a small frozen
class, holding the error's first line only where the outcome has one (never empty: it is
stored and read back as the same outcome), so that a reader matches on one value and no
impossible mix of flags (an outage whose credentials were refused) can be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from events.checks import storable
from events.errors import InvalidInputError

__all__ = [
    "Answered",
    "Busy",
    "CheckVerdict",
    "CredentialsRefused",
    "FailedTellingNothing",
    "ModelOrPathNotFound",
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

    def __post_init__(self) -> None:
        _refuse_untold(self, self.error)


@dataclass(frozen=True, slots=True)
class ModelOrPathNotFound:
    """The API answered that what the request names is not found (404; ``error`` says
    what: a model retired or misspelt, a base URL with a wrong path): every request is
    refused so, whatever its messages, so the failed calls are no evidence against them,
    though the API is up."""

    error: str
    blames_no_message: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _refuse_untold(self, self.error)


@dataclass(frozen=True, slots=True)
class Busy:
    """It was rate limited or asked to wait (``error`` says how): the API is up but busy.
    It tells nothing of the failed calls, whose batches split as before, and ``reextract
    --batch-api`` sends no other user's messages at full price in that run."""

    error: str
    blames_no_message: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _refuse_untold(self, self.error)


@dataclass(frozen=True, slots=True)
class FailedTellingNothing:
    """It failed in a way that tells nothing of the failed calls (``error`` says how): one
    that would repeat (a refusal, a bug), a probe of a refusal that failed or was refused
    too (which may pass), or a busy check an older memvee stored, before it told
    :class:`Busy` apart. The failed calls split their batches as before."""

    error: str
    blames_no_message: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _refuse_untold(self, self.error)


CheckVerdict = (
    Answered | Outage | CredentialsRefused | ModelOrPathNotFound | Busy | FailedTellingNothing
)
"""How a harmless request fared: one of the six outcomes above. ``blames_no_message``
says whether the failed calls it judges are left out of the evidence (an outage, a refused
API key, a model or path not found)."""


def _refuse_untold(verdict: object, error: str) -> None:
    """Refuse (:class:`InvalidInputError`) a failed check's empty ``error``: stored, it
    would be dropped and the check read back as another outcome (answered)."""
    if not storable(error).strip():
        raise InvalidInputError(f"{type(verdict).__name__} needs the error it met, not {error!r}")
