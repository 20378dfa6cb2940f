"""A long listing (every message of a user can be megabytes) is written to JSON a part at a
time in a worker thread, so that it never holds the event loop, or the GIL, for long; what
the client reads is the same document as a listing written at once."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from memvee import Memory
from memvee._server import http_api


class Writes:
    """Delegates to a list's TypeAdapter, noting how many items each call wrote, and where."""

    def __init__(self, adapter: TypeAdapter[list[Any]]) -> None:
        self.adapter = adapter
        self.calls: list[tuple[int, str]] = []

    def dump_json(self, items: list[Any]) -> bytes:
        self.calls.append((len(items), threading.current_thread().name))
        return self.adapter.dump_json(items)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """The messages' listings, watched, written three items at a time."""
    watched = Writes(http_api._MESSAGES)
    monkeypatch.setattr(http_api, "_MESSAGES", watched)
    monkeypatch.setattr(http_api, "LISTED_PER_WRITE", 3)
    return watched


async def test_a_long_listing_is_written_in_parts_off_the_event_loop(
    memory: Memory, client: httpx.AsyncClient, writes: Writes
) -> None:
    for n in range(4):
        await memory.add_exchange("ann", f"turn {n} of ann", f"answer {n}")
    stored = await memory.messages("ann")

    answer = await client.get("/v1/users/ann/messages")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.content) == {
        "messages": http_api._MESSAGES.adapter.dump_python(stored, mode="json")
    }
    assert [size for size, _ in writes.calls] == [3, 3, 2]
    loop_thread = threading.current_thread().name
    assert all(thread != loop_thread for _, thread in writes.calls)


async def test_a_short_listing_is_written_at_once(
    memory: Memory, client: httpx.AsyncClient, writes: Writes
) -> None:
    await memory.add_exchange("bo", "hello", "hi")

    answer = await client.get("/v1/users/bo/messages")

    assert [m["content"] for m in answer.json()["messages"]] == ["hello", "hi"]
    assert [size for size, _ in writes.calls] == [2]


async def test_an_empty_listing_and_one_of_exactly_a_part(
    memory: Memory, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_api, "LISTED_PER_WRITE", 2)
    assert (await client.get("/v1/users/cy/knowledge")).status_code == 404
    await memory.add_exchange("cy", "I live in Oslo.", "Nice.")

    assert (await client.get("/v1/users/cy/knowledge")).json() == {"entries": []}
    assert len((await client.get("/v1/users/cy/messages")).json()["messages"]) == 2
    await memory.add_exchange("cy", "I work as a nurse.", "Good.")
    assert len((await client.get("/v1/users/cy/messages")).json()["messages"]) == 4
