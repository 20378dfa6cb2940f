"""A long listing (every message of a user can be megabytes) is written to JSON a part at a
time in a worker thread, so that it never holds the event loop, or the GIL, for long; what
the client reads is the same document as a listing written at once. A retrieve's answer is
built and written the same way."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from memvee import Memory
from memvee._retrieval import RetrievalResult
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


async def test_a_retrieved_answer_is_built_and_written_off_the_event_loop(
    memory: Memory, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its messages, a retrieve can answer tens of megabytes: its prompt block and its
    JSON are made in a worker thread, the messages a part at a time as a listing's, and
    the client reads the same document as one written at once."""
    for n in range(4):
        await memory.add_exchange("ann", f"My dog number {n} is called Rex.", f"Noted {n}.")
    watched = Writes(http_api._RANKED_MESSAGES)
    monkeypatch.setattr(http_api, "_RANKED_MESSAGES", watched)
    monkeypatch.setattr(http_api, "LISTED_PER_WRITE", 3)
    to_prompt = RetrievalResult.to_prompt
    prompted: list[str] = []

    def prompt(self: RetrievalResult, **kwargs: Any) -> str:
        prompted.append(threading.current_thread().name)
        return to_prompt(self, **kwargs)

    monkeypatch.setattr(RetrievalResult, "to_prompt", prompt)
    asked = {"query": "dog Rex", "include_messages": True}
    found = await memory.retrieve("ann", "dog Rex", include_messages=True)

    answer = await client.post("/v1/users/ann/retrieve", json=asked)

    assert answer.status_code == 200
    assert json.loads(answer.content) == {
        "prompt": to_prompt(found),
        "entries": [],
        "messages": watched.adapter.dump_python(found.messages, mode="json"),
    }
    loop_thread = threading.current_thread().name
    assert prompted and all(thread != loop_thread for thread in prompted)
    assert len(found.messages) > 3 and len(watched.calls) > 1
    assert all(thread != loop_thread for _, thread in watched.calls)
