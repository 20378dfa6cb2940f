"""User ids in the API's paths: a slash inside an id may be sent encoded, as ``%2F``.

The routes take the user id as a path (``/v1/users/{user_id:path}/messages``), so an id
such as ``team/alice`` can be written as it is. But an id that ends like a route, as
``team/messages`` does, cannot: ``GET /v1/users/team/messages`` is the messages of
``team``. ASGI servers hand the app a decoded path, in which ``team%2Fmessages`` has
become that same ambiguous path, so this middleware routes on the raw path instead,
with ``%2F`` (and ``%25``, for an id with a percent sign) kept encoded inside the user
segment, and :func:`user_id_of` decodes them once the route has matched.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from events import InvalidInputError, check_user_id
from memvee._server.errors import error_response

__all__ = ["EncodedSlashes", "quoted_user_id", "user_id_of"]

_USERS = "/v1/users/"
_KEPT = re.compile(r"%(?:2[fF]|25)")
_KEPT_FORMS = {"%2f": "/", "%25": "%"}


class EncodedSlashes:
    """ASGI middleware: routes ``/v1/users/`` requests on their raw path, decoded except
    for ``%2F`` and ``%25``, so an encoded slash stays inside the user id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and scope["path"].startswith(_USERS):
            text = raw.decode("latin-1").partition("?")[0]
            problem = _unroutable(text)
            if problem is not None:
                await error_response(scope, 422, "invalid_input", problem)(scope, receive, send)
                return
            if unquote(text) == scope["path"]:  # nothing in between rewrote the path
                scope = {**scope, "path": _decoded_but_kept(text)}
        await self.app(scope, receive, send)


def user_id_of(routed: str) -> str:
    """The user id a routed path segment stands for (``%2F`` and ``%25`` decoded)."""
    return _KEPT.sub(lambda m: _KEPT_FORMS[m.group(0).lower()], routed)


def quoted_user_id(user_id: str) -> str:
    """``user_id`` as a path segment that routes back to it (for a ``Location``): every
    character but letters, digits and ``_.-~`` percent-encoded, as UTF-8, and the dots of
    a ``.`` or ``..`` too, which clients would otherwise resolve as the path's own."""
    if user_id in (".", ".."):
        return user_id.replace(".", "%2E")
    return quote(user_id, safe="")


def _unroutable(raw: str) -> str | None:
    """Why the user path ``raw`` names no user, where routing would not say it well:
    escapes that are not UTF-8 (decoded leniently, different ids would become one), or a
    line break, which no route matches (it would be a bare 404)."""
    try:
        path = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return f"{_badly_escaped(raw)}: its percent-escapes are not UTF-8"
    user_part = path[len(_USERS) :]
    if "\n" in user_part:
        try:
            check_user_id(user_part)  # names the control character and where it is
        except InvalidInputError as error:
            return str(error)
    return None


_ID_SEGMENTS = (
    (re.compile(r"/knowledge/([^/]*)/explain$"), "entry_id"),
    (re.compile(r"/tasks/([^/]*)$"), "task_id"),
)
"""The routes whose last segments hold another id than the user's, matched as routing
matches them (the user path takes all before)."""


def _badly_escaped(raw: str) -> str:
    """Which id of the user path ``raw`` has escapes that are not UTF-8."""
    for route, name in _ID_SEGMENTS:
        found = route.search(raw)
        if found is not None:
            try:
                unquote(found.group(1), errors="strict")
            except UnicodeDecodeError:
                return name
            break
    return "user_id"


def _decoded_but_kept(raw: str) -> str:
    """``raw`` percent-decoded, but for the escapes :func:`user_id_of` decodes later."""
    parts = _KEPT.split(raw)
    kept = _KEPT.findall(raw)
    out = [unquote(parts[0])]
    for escape, part in zip(kept, parts[1:], strict=True):
        out += [escape, unquote(part)]
    return "".join(out)
