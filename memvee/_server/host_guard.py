"""The loopback guard: a server on loopback answers only requests meant for loopback.

A page in the user's browser can reach a loopback server two ways: by DNS rebinding (its
own host name, pointed at 127.0.0.1, so the browser treats memvee as that page's site)
and by cross-site requests a browser sends without asking (a form's POST). Either way,
without tokens, it could read, write and erase every user's memory. The MCP SDK guards its
own route against both; this applies the SDK's same check to every route of the server.
"""

from __future__ import annotations

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from memvee._server.errors import error_response

__all__ = ["LOOPBACK_HOSTS", "LoopbackOnly"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""The listening hosts the guard applies to (those the MCP SDK guards too)."""

_LOOPBACK_ONLY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1", "localhost", "[::1]", "127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=[
        *(
            f"http://{host}{port}"
            for host in ("127.0.0.1", "localhost", "[::1]")
            for port in ("", ":*")
        )
    ],
)


class LoopbackOnly:
    """ASGI middleware: on a server listening on loopback, a request whose ``Host`` is no
    loopback name (a rebound DNS name) gets 421, and one whose ``Origin`` is another site
    gets 403, before any route runs. A server listening elsewhere is passed through:
    there, tokens guard it."""

    def __init__(self, app: ASGIApp, host: str) -> None:
        self.app = app
        self._check = (
            TransportSecurityMiddleware(_LOOPBACK_ONLY) if host in LOOPBACK_HOSTS else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._check is not None:
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
