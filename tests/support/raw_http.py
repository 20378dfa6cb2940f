"""HTTP over a plain socket, for what an HTTP client hides: httpx reads no body after a
HEAD, so a server sending one there would go unseen."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["head_body"]


def head_body(url: str, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes a server sends after the head of its answer to ``HEAD path``: none, as
    HTTP requires (RFC 9110, 9.3.2), unless it breaks the rule."""
    split = urlsplit(url)
    assert split.hostname is not None and split.port is not None, url
    lines = [f"HEAD {path} HTTP/1.1", f"Host: {split.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((split.hostname, split.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        while chunk := sock.recv(65536):  # the server closes the connection after it
            received += chunk
    head, ended, body = received.partition(b"\r\n\r\n")
    assert ended and head.startswith(b"HTTP/1.1 "), received[:200]
    return body
