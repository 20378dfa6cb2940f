"""Text cleaned of credentials, as memvee's logs and API errors show it.

Which credentials there are and how a text is cleaned of them is defined once, in
:mod:`events.credentials` (the extraction workers use it too); this module adds what only
memvee's side needs: URLs' user info masked in log lines, and whether an error shows one.
"""

from __future__ import annotations

from collections.abc import Iterable

from events.credentials import (
    BASE_URL_ENV_VAR,
    SECRET_ENV_VARS,
    client_secrets,
    configured_secrets,
    credentials_of,
    mask_url_userinfo,
    redact,
    shown_error,
    shown_forms,
    userinfo,
)

__all__ = [
    "BASE_URL_ENV_VAR",
    "SECRET_ENV_VARS",
    "client_secrets",
    "configured_secrets",
    "credentials_of",
    "declare_secrets",
    "declared_secrets",
    "every_secret",
    "forget_declared_secrets",
    "mask_url_userinfo",
    "mentions",
    "redact",
    "shown_error",
    "userinfo",
]


_declared: list[tuple[str, ...]] = [()]
"""The secrets the process was handed outside its environment (:func:`declare_secrets`),
replaced as one tuple so a reader on another thread sees the old set or the new one."""


def declare_secrets(secrets: Iterable[str]) -> None:
    """Make ``secrets`` (a ``--db-url``'s password, which no environment variable holds)
    known to every log filter and every answer cleaned of secrets, for the process's life:
    the one set both read, so a 5xx never shows what the log hides."""
    _declared[0] = tuple(dict.fromkeys((*_declared[0], *secrets)))


def declared_secrets() -> tuple[str, ...]:
    """The secrets :func:`declare_secrets` was handed so far."""
    return _declared[0]


def forget_declared_secrets(kept: tuple[str, ...] = ()) -> None:
    """Let the process know only ``kept`` of the secrets declared to it (a test putting the
    process back as it found it)."""
    _declared[0] = tuple(kept)


def every_secret() -> tuple[str, ...]:
    """Every secret the process knows: the environment's (:func:`configured_secrets`, read
    now) and those declared to it (:func:`declare_secrets`); what a caller's words are
    cleaned of, as the log is."""
    return (*configured_secrets(), *_declared[0])


def mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``exc`` or an exception it chains to shows ``secret`` in its text."""
    forms = shown_forms(secret)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        shown = f"{current}\n{current.args!r}"
        if any(form in shown for form in forms):
            return True
        current = current.__cause__ or current.__context__
    return False
