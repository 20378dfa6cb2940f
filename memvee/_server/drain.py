"""The drain's answers: once a server starts draining, requests that begin are refused with
a 503 that closes their connection, and answers still to come close theirs too.

uvicorn alone closes a kept-alive connection with no request under way the moment its
shutdown starts, so a request a client sends on it just then meets a reset, and the client
cannot tell whether it was stored. The server keeps such connections open through the
drain, and this middleware answers what arrives on them: ``not_ready`` (nothing was done:
send it again elsewhere or later), with ``Connection: close`` so the client opens a new
connection for the next one.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memvee._server.errors import RETRY_AFTER, error_response

__all__ = ["Drain", "RefusedWhileDraining"]


class Drain:
    """Whether the server is draining: set once, by the server, when its shutdown starts."""

    def __init__(self) -> None:
        self._started = False

    @property
    def started(self) -> bool:
        """The drain has begun: no new request is carried out."""
        return self._started

    def start(self) -> None:
        """Begin the drain: requests from now on are refused, answers close connections."""
        self._started = True


class RefusedWhileDraining:
    """ASGI middleware: while ``drain`` runs, a request that begins is answered 503
    ``not_ready`` without reaching ``app``, and every answer, these and those of the
    requests already under way, carries ``Connection: close``."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.started:
            headers = {"Retry-After": RETRY_AFTER, "Connection": "close"}
            stopping = "the server is shutting down; nothing was done, try again shortly"
            answer = error_response(scope, 503, "not_ready", stopping, headers)
            await answer(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.started:
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)
