"""The verdicts of a harmless request (events.harmless)."""

from __future__ import annotations

import pytest

from events import Busy, CredentialsRefused, FailedTellingNothing, InvalidInputError


@pytest.mark.parametrize("verdict", [Busy, FailedTellingNothing, CredentialsRefused])
@pytest.mark.parametrize("error", ["", "  ", "\x00"], ids=["empty", "blank", "a NUL"])
def test_a_failed_check_without_the_error_it_met_is_refused(
    verdict: type[Busy | FailedTellingNothing | CredentialsRefused], error: str
) -> None:
    """A verdict that holds an error refuses one telling nothing: stored, it would be
    dropped, and the check read back as another outcome (answered, or a refusal of
    "HTTP 401 or 403"). It was accepted."""
    with pytest.raises(InvalidInputError, match=verdict.__name__):
        verdict(error)
