"""Bearer tokens: who may call the server, and which users each token may touch.

A token is either unscoped (every user) or scoped to a user-id prefix, so one server can
serve several tenants without one tenant's token reaching another's users. Only the
SHA-256 digest of each token is kept, so no token can leak through a repr, a traceback or
a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from events import InvalidInputError
from memvee._server.errors import error_response

__all__ = [
    "GRANT_KEY",
    "OPEN_PATHS",
    "TOKENS_ENV_VAR",
    "BearerAuth",
    "Grant",
    "TokenBook",
    "is_loopback",
]

TOKENS_ENV_VAR = "MEMVEE_API_TOKENS"
"""Comma-separated tokens, each ``TOKEN`` (every user) or ``TOKEN:PREFIX``."""

GRANT_KEY = "memvee.grant"
"""Where the authenticated :class:`Grant` is put in the ASGI scope of a request."""

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
"""Paths served without a token: probes and the API description hold no user data."""

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class Grant:
    """What one authenticated caller may touch: the users whose id starts with ``prefix``."""

    prefix: str = ""

    def covers(self, user_id: str) -> bool:
        """Whether this grant reaches ``user_id``."""
        return user_id.startswith(self.prefix)


class TokenBook:
    """The accepted tokens, kept as digests, each with its grant."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self._grants: dict[bytes, Grant] = {}
        for token, prefix in entries:
            if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
                raise InvalidInputError(
                    f"every API token needs {MIN_TOKEN_CHARS} or more characters and no spaces"
                )
            if not token.isascii():  # HTTP clients differ in how they encode other text
                raise InvalidInputError(
                    "every API token must be ASCII: an Authorization header carries other "
                    "characters in whichever encoding the client chose, so it would never match"
                )
            digest, grant = _digest(token), Grant(prefix)
            if self._grants.setdefault(digest, grant) != grant:
                raise InvalidInputError(
                    "an API token is listed twice with different user prefixes; which one "
                    "it may use would be a guess"
                )

    def __len__(self) -> int:
        return len(self._grants)

    def __repr__(self) -> str:
        return f"TokenBook({len(self)} tokens)"

    @classmethod
    def parse(cls, text: str) -> TokenBook:
        """Tokens separated by commas or newlines, each ``TOKEN`` or ``TOKEN:PREFIX``;
        blank lines and lines starting with ``#`` are skipped. ``TOKEN:`` is refused: an
        empty prefix would grant every user, most likely by an unset variable."""
        entries = []
        for line in text.replace(",", "\n").splitlines():
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            token, scoped, prefix = item.partition(":")
            if scoped and not prefix.strip():
                raise InvalidInputError(
                    "an API token is followed by ':' and no user prefix (an unset variable?); "
                    "list it alone to grant every user"
                )
            entries.append((token.strip(), prefix.strip()))
        return cls(entries)

    @classmethod
    def load(cls, tokens_file: Path | None) -> TokenBook:
        """The tokens of ``MEMVEE_API_TOKENS`` and of ``tokens_file`` together; a
        ``tokens_file`` that lists no token is refused, as the caller meant to require
        tokens (a file not filled yet would have served every caller on loopback)."""
        text = os.environ.get(TOKENS_ENV_VAR, "")
        if tokens_file is not None:
            try:
                # utf-8-sig: a byte order mark (Notepad writes one) is not part of a token
                listed = tokens_file.read_text(encoding="utf-8-sig")
            except OSError as error:
                raise InvalidInputError(
                    f"cannot read the tokens file {str(tokens_file)!r}: {error.strerror}"
                ) from error
            except UnicodeDecodeError as error:
                raise InvalidInputError(
                    f"the tokens file {str(tokens_file)!r} is not UTF-8 text ({error.reason} "
                    f"at byte {error.start})"
                ) from error
            if not cls.parse(listed):
                raise InvalidInputError(
                    f"the tokens file {str(tokens_file)!r} holds no token: list one a line, "
                    "TOKEN or TOKEN:USER_ID_PREFIX"
                )
            text += "\n" + listed
        return cls.parse(text)

    def grant_for(self, authorization: str | None) -> Grant | None:
        """The grant of an ``Authorization: Bearer`` header value, or None if it is wrong."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        wanted = _digest(token.strip())
        found = None
        for digest, grant in self._grants.items():  # every digest, in constant time each
            if hmac.compare_digest(digest, wanted):
                found = grant
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: checks the bearer token of every request off :data:`OPEN_PATHS`.

    A missing or wrong token gets 401; the caller's :class:`Grant` goes in the scope for
    the routes and tools to check each user id against (403 when out of scope). Without
    tokens (allowed on loopback only) every caller gets every user.
    """

    def __init__(self, app: ASGIApp, tokens: TokenBook) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.tokens:
            scope[GRANT_KEY] = Grant()
        elif scope["path"] not in OPEN_PATHS:
            header = _header(scope, b"authorization")
            grant = self.tokens.grant_for(header)
            if grant is None:
                await _unauthorized(scope, receive, send)
                return
            scope[GRANT_KEY] = grant
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    answer = error_response(
        scope,
        401,
        "unauthorized",
        "a valid bearer token is required (Authorization: Bearer <token>)",
        {"www-authenticate": 'Bearer realm="memvee"'},
    )
    await answer(scope, receive, send)
