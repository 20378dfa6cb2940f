"""Shared pytest fixtures, loaded as a plugin (``pytest_plugins`` or ``-p``).

Register it once in ``tests/conftest.py`` with
``pytest_plugins = ("tests.support.fixtures",)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.messages_api_server import MessagesAPIServer

__all__ = ["messages_api_server"]


@pytest.fixture
def messages_api_server() -> Iterator[MessagesAPIServer]:
    """A running stand-in Messages API server, closed after the test."""
    with MessagesAPIServer() as server:
        yield server
