"""The loopback guard: a server on loopback answers only requests meant for loopback.

A page in the user's browser can reach a loopback server two ways: by DNS rebinding (its
own host name, pointed at 127.0.0.1, so the browser treats memvee as that page's site)
and by cross-site requests a browser sends without asking (a form's POST). Either way,
without tokens, it could read, write and erase every user's memory. The MCP SDK guards its
own route against both; this applies the SDK's same check to every route of the server.
"""

from __future__ import annotations

import ipaddress
import re

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from memvee._server.auth import is_loopback
from memvee._server.errors import error_response

__all__ = ["LoopbackOnly", "loopback_names", "transport_security"]


def loopback_names(host: str) -> list[str]:
    """The ``Host`` names a request for a server listening on loopback ``host`` may carry:
    the usual loopback names, and ``host`` itself as written and compressed (an IPv6
    address in brackets)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        written = {host, str(address)}
        names |= {f"[{a}]" for a in written} if address.version == 6 else written
    return sorted(names)


_AUTHORITY = re.compile(r"(?P<name>\[[^\]]*\]|[^:]*)(?P<port>:[0-9]*)?")


def _canonical_authority(authority: str) -> str:
    """``authority`` as the guard compares it: host names are case-insensitive and
    ``localhost.`` (the absolute form) names ``localhost``, so both are folded."""
    found = _AUTHORITY.fullmatch(authority.lower())
    if found is None:
        return authority
    name = found["name"]
    if len(name) > 1 and name.endswith("."):
        name = name[:-1]
    return name + (found["port"] or "")


def _canonical_origin(origin: str) -> str:
    scheme, separator, authority = origin.partition("://")
    if not separator:
        return origin
    return f"{scheme.lower()}://{_canonical_authority(authority)}"


def _canonical_headers(scope: Scope) -> Scope:
    """``scope`` with its ``Host`` and ``Origin`` folded, for the guard and every route
    behind it (the MCP SDK checks them again, comparing exactly)."""
    headers: list[tuple[bytes, bytes]] = []
    changed = False
    for key, value in scope["headers"]:
        if key in (b"host", b"origin"):
            text = value.decode("latin-1")
            folded = _canonical_authority(text) if key == b"host" else _canonical_origin(text)
            if folded != text:
                value, changed = folded.encode("latin-1"), True
        headers.append((key, value))
    return {**scope, "headers": headers} if changed else scope


def transport_security(host: str) -> TransportSecuritySettings:
    """The one ``Host``/``Origin`` policy of a server listening on ``host``, for
    :class:`LoopbackOnly` and for the MCP SDK's own check on ``/mcp`` alike: on loopback,
    loopback names with or without a port (a server on port 80 is sent ``Host: localhost``);
    elsewhere, none (tokens guard it)."""
    if not is_loopback(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = loopback_names(host)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}{port}" for name in names for port in ("", ":*")],
        allowed_origins=[f"http://{name}{port}" for name in names for port in ("", ":*")],
    )


class LoopbackOnly:
    """ASGI middleware: on a server listening on loopback, a request whose ``Host`` is no
    loopback name (a rebound DNS name) gets 421, and one whose ``Origin`` is another site
    gets 403, before any route runs; names are compared as DNS compares them (any case,
    with or without the final dot). A server listening elsewhere is passed through:
    there, tokens guard it."""

    def __init__(self, app: ASGIApp, host: str) -> None:
        self.app = app
        self._check = (
            TransportSecurityMiddleware(transport_security(host)) if is_loopback(host) else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._check is not None:
            scope = _canonical_headers(scope)
            refused = await self._check.validate_request(Request(scope))
            if refused is not None:
                misdirected = refused.status_code == 421
                answer = error_response(
                    scope,
                    refused.status_code,
                    "misdirected_request" if misdirected else "forbidden_origin",
                    "this loopback server answers only requests for a loopback host"
                    if misdirected
                    else "this loopback server answers no request from another site",
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)
