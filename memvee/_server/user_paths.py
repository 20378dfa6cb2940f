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
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

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
            if unquote(text) == scope["path"]:  # nothing in between rewrote the path
                scope = {**scope, "path": _decoded_but_kept(text)}
        await self.app(scope, receive, send)


def user_id_of(routed: str) -> str:
    """The user id a routed path segment stands for (``%2F`` and ``%25`` decoded)."""
    return _KEPT.sub(lambda m: _KEPT_FORMS[m.group(0).lower()], routed)


def quoted_user_id(user_id: str) -> str:
    """``user_id`` as a path segment that routes back to it (for a ``Location``)."""
    return user_id.replace("%", "%25").replace("/", "%2F")


def _decoded_but_kept(raw: str) -> str:
    """``raw`` percent-decoded, but for the escapes :func:`user_id_of` decodes later."""
    parts = _KEPT.split(raw)
    kept = _KEPT.findall(raw)
    out = [unquote(parts[0])]
    for escape, part in zip(kept, parts[1:], strict=True):
        out += [escape, unquote(part)]
    return "".join(out)
