"""Text cleaned of credentials, as memvee's logs and API errors show it.

Which credentials there are and how a text is cleaned of them is defined once, in
:mod:`events.credentials` (the extraction workers use it too); this module adds what only
memvee's side needs: URLs' user info masked in log lines, and whether an error shows one.
"""

from __future__ import annotations

import re

from events.credentials import (
    BASE_URL_ENV_VAR,
    SECRET_ENV_VARS,
    client_secrets,
    configured_secrets,
    credentials_of,
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

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]*@")
"""A URL's scheme and the user info before its host, anywhere in a text (up to the last
``@`` before the path, as a password may hold an ``@`` its writer did not escape)."""


def mask_url_userinfo(text: str) -> str:
    """``text`` with the user info of every URL in it (``user:password@``) shown as
    ``***@``: whoever logs a URL (an HTTP client's request line) shows no credential."""
    return _URL_USERINFO.sub(r"\1***@", text)


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
