"""Text cleaned of credentials, as memvee's logs and API errors show it.

Which credentials there are and how a text is cleaned of them is defined once, in
:mod:`events.credentials` (the extraction workers use it too); this module adds what only
memvee's side needs: URLs' user info masked in log lines, and whether an error shows one.
"""

from __future__ import annotations

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
    "mask_url_userinfo",
    "mentions",
    "redact",
    "shown_error",
    "userinfo",
]


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
