"""The HTTP API, driven by an HTTP client against a real ``memvee serve`` on 127.0.0.1:
every call of the issue's list, its status code, and the library's answers in JSON."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.types import INTERNAL_ERROR

from events import ROLES, EventStore, ProcessingError
from events.errors import EmbedderError, ExtractionError, ExtractorRateLimitedError
from memvee import Memory
from memvee._server.app import create_app
from memvee._server.http_api import LISTED_PER_WRITE
from memvee.audit import Audit
from projections import ProjectionTables, Projector
from tests.support.raw_http import head_body
from tests.support.server_process import ServerProcess, wait_until

SAID = "I live in Lisbon and my dog is called Rex."


@pytest.fixture
def user() -> str:
    """A user id no other test of the module's server uses."""
    return f"user-{uuid.uuid4().hex[:12]}"


def add_exchange(http: httpx.Client, user: str, said: str = SAID) -> list[str]:
    answer = http.post(
        f"/v1/users/{user}/exchanges",
        json={"user_message": said, "assistant_message": "Noted!"},
    )
    assert answer.status_code == 201, answer.text
    return [m["message_id"] for m in answer.json()["messages"]]


def test_an_exchange_is_stored_and_answered_with_its_ids(http: httpx.Client, user: str) -> None:
    ids = add_exchange(http, user)

    stored = http.get(f"/v1/users/{user}/messages").json()["messages"]
    assert [m["message_id"] for m in stored] == ids
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == SAID


def test_the_default_body_limit_takes_two_messages_of_the_longest_content_sent_escaped(
    http: httpx.Client, user: str
) -> None:
    """As ``json.dumps`` and ``requests``' ``json=`` send them: every character a ``\\u``
    escape, an emoji two (12 bytes), and still within ``max_content_chars``."""
    longest = "\N{GRINNING FACE}" * 100_000
    body = json.dumps({"user_message": longest, "assistant_message": longest}).encode()
    assert len(body) > 2_400_000

    answer = http.post(
        f"/v1/users/{user}/exchanges", content=body, headers={"content-type": "application/json"}
    )

    assert answer.status_code == 201, answer.text[:300]
    stored = http.get(f"/v1/users/{user}/messages").json()["messages"]
    assert [m["content"] for m in stored] == [longest, longest]


def test_messages_are_listed_a_page_at_a_time(http: httpx.Client, user: str) -> None:
    for n in range(3):
        add_exchange(http, user, f"turn {n}")

    first = http.get(f"/v1/users/{user}/messages", params={"limit": 4}).json()["messages"]
    last = first[-1]["seq"]
    rest = http.get(f"/v1/users/{user}/messages", params={"after": last}).json()["messages"]

    assert [m["seq"] for m in first] == [1, 2, 3, 4]
    assert [(m["seq"], m["content"]) for m in rest] == [(5, "turn 2"), (6, "Noted!")]
    huge = http.get(f"/v1/users/{user}/messages", params={"after": 2**64, "limit": 10**30})
    assert huge.json() == {"messages": []}
    for bad in ({"limit": 0}, {"after": -1}, {"limit": "many"}):
        answer = http.get(f"/v1/users/{user}/messages", params=bad)
        assert (answer.status_code, answer.json()["error"]) == (422, "invalid_input")


def test_a_message_is_stored_with_its_speaker_and_time(http: httpx.Client, user: str) -> None:
    sent = "2026-03-01T09:30:00+00:00"
    answer = http.post(
        f"/v1/users/{user}/messages",
        json={"role": "user", "content": "Hi, I'm Ana.", "sent_at": sent, "name": "Ana"},
    )

    assert answer.status_code == 201
    message = answer.json()["message"]
    assert message["name"] == "Ana"
    assert datetime.fromisoformat(message["sent_at"]) == datetime.fromisoformat(sent)
    assert http.get(f"/v1/users/{user}").json()["message_count"] == 1


def test_process_answers_202_with_a_task_to_poll_until_completed(
    http: httpx.Client, user: str
) -> None:
    add_exchange(http, user)

    started = http.post(f"/v1/users/{user}/process")
    assert started.status_code == 202
    task = started.json()
    assert task["status"] in ("PENDING", "RUNNING", "COMPLETED")
    assert started.headers["location"].endswith(f"/v1/users/{user}/tasks/{task['task_id']}")

    def finished() -> dict[str, object] | None:
        polled = http.get(f"/v1/users/{user}/tasks/{task['task_id']}").json()
        return polled if polled["done"] else None

    done = wait_until(finished, what="task completion")
    assert done["status"] == "COMPLETED"
    assert done["knowledge_count"] == 2
    texts = {e["text"] for e in http.get(f"/v1/users/{user}/knowledge").json()["entries"]}
    assert texts == {"User lives in Lisbon.", "User's dog is called Rex."}


def test_flush_extracts_everything_buffered_before_it_answers(
    http: httpx.Client, user: str
) -> None:
    add_exchange(http, user)

    flushed = http.post(f"/v1/users/{user}/flush")

    assert flushed.status_code == 200
    assert flushed.json() == {"knowledge_count": 2}
    assert http.get(f"/v1/users/{user}").json()["buffered_count"] == 0


def test_knowledge_as_of_and_history(http: httpx.Client, user: str) -> None:
    add_exchange(http, user, "I live in Lisbon.")
    http.post(f"/v1/users/{user}/flush")
    add_exchange(http, user, "I live in Porto now.")
    http.post(f"/v1/users/{user}/flush")

    now = http.get(f"/v1/users/{user}/knowledge").json()["entries"]
    ever = http.get(f"/v1/users/{user}/knowledge", params={"history": "true"}).json()["entries"]
    before = http.get(
        f"/v1/users/{user}/knowledge",
        params={"as_of": (datetime.now(UTC) - timedelta(days=1)).isoformat()},
    ).json()["entries"]

    assert [e["text"] for e in now] == ["User lives in Porto."]
    assert {e["text"] for e in ever} == {"User lives in Lisbon.", "User lives in Porto."}
    assert before == []
    both = http.get(
        f"/v1/users/{user}/knowledge",
        params={"as_of": datetime.now(UTC).isoformat(), "history": "true"},
    )
    assert both.status_code == 422 and "not both" in both.json()["message"]


def test_knowledge_is_listed_a_page_at_a_time(http: httpx.Client, user: str) -> None:
    for said in ("I live in Lisbon.", "I work at Acme.", "My dog is called Rex."):
        add_exchange(http, user, said)
        http.post(f"/v1/users/{user}/flush")
    url = f"/v1/users/{user}/knowledge"

    whole = [e["entry_id"] for e in http.get(url).json()["entries"]]
    first = http.get(url, params={"limit": 2}).json()["entries"]
    rest = http.get(url, params={"offset": 2}).json()["entries"]
    ever = http.get(url, params={"history": "true", "offset": 1, "limit": 1}).json()["entries"]

    assert len(whole) == 3
    assert [e["entry_id"] for e in first + rest] == whole
    assert [e["entry_id"] for e in ever] == whole[1:2]
    huge = http.get(url, params={"offset": 2**64, "limit": 10**30})
    assert huge.json() == {"entries": []}
    for bad in ({"limit": 0}, {"offset": -1}, {"offset": "many"}):
        answer = http.get(url, params=bad)
        assert (answer.status_code, answer.json()["error"]) == (422, "invalid_input")


def test_retrieve_answers_with_the_prompt_block_and_the_ranked_ids(
    http: httpx.Client, user: str
) -> None:
    ids = add_exchange(http, user)
    http.post(f"/v1/users/{user}/flush")

    found = http.post(
        f"/v1/users/{user}/retrieve",
        json={"query": "what is the name of the dog", "top_k": 3, "include_messages": True},
    )

    assert found.status_code == 200
    body = found.json()
    assert "- User's dog is called Rex." in body["prompt"]
    assert body["prompt"].startswith("Known facts about the user")
    assert body["entries"][0]["entry"]["text"] == "User's dog is called Rex."
    assert body["entries"][0]["entry"]["source_message_ids"] == [ids[0]]


def test_explain_traces_an_entry_to_its_messages(http: httpx.Client, user: str) -> None:
    answer = http.post(
        f"/v1/users/{user}/exchanges",
        json={"user_message": SAID, "assistant_message": "Noted!", "user_name": "Maria"},
    )
    assert answer.status_code == 201, answer.text
    ids = [m["message_id"] for m in answer.json()["messages"]]
    http.post(f"/v1/users/{user}/flush")
    entry = http.get(f"/v1/users/{user}/knowledge").json()["entries"][0]

    explained = http.get(f"/v1/users/{user}/knowledge/{entry['entry_id']}/explain")

    assert explained.status_code == 200
    body = explained.json()
    assert body["text"] == entry["text"]
    assert [m["message_id"] for m in body["messages"]] == [ids[0]]
    assert body["messages"][0]["content"] == SAID
    assert (body["messages"][0]["role"], body["messages"][0]["name"]) == ("user", "Maria")
    assert body["extractor"] == "offline"


def test_forget_answers_with_the_receipt_and_the_user_is_gone(
    http: httpx.Client, user: str
) -> None:
    add_exchange(http, user)
    http.post(f"/v1/users/{user}/flush")

    forgotten = http.delete(f"/v1/users/{user}")

    assert forgotten.status_code == 200
    receipt = forgotten.json()
    assert receipt["receipt"]["user_id"] == user
    assert receipt["receipt"]["events"] > 0
    assert receipt["total"] >= receipt["receipt"]["events"]
    assert receipt["receipt"]["scrubbed"] is True
    assert http.get(f"/v1/users/{user}/knowledge").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/users/{user}"),
        ("GET", "/v1/users/{user}/knowledge"),
        ("GET", "/v1/users/{user}/messages"),
        ("POST", "/v1/users/{user}/process"),
        ("POST", "/v1/users/{user}/flush"),
        ("GET", "/v1/users/{user}/tasks/some-task"),
        ("GET", "/v1/users/{user}/knowledge/some-entry/explain"),
        ("DELETE", "/v1/users/{user}"),
    ],
)
def test_an_unknown_user_is_404_and_stays_unknown(
    http: httpx.Client, user: str, method: str, path: str
) -> None:
    answer = http.request(method, path.format(user=user))

    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    assert user in answer.json()["message"]
    assert http.get(f"/v1/users/{user}").status_code == 404


async def test_a_user_a_rebuild_has_not_refolded_yet_is_known_and_forgotten_over_http(
    memory: Memory, client: httpx.AsyncClient, db_url: str
) -> None:
    """Who exists is the log's to say, not the projections' a rebuild drops and refills:
    while one runs (or after it stopped before its end) a stored user is no 404. Her
    counters are not ready yet, and DELETE erases her log."""
    await memory.add_exchange("ann", "My passport number is X1234567", "ok")
    store = EventStore(db_url)
    try:
        with store.transaction() as connection:  # a rebuild's first step
            store.lock_writers(connection)
            Projector(ProjectionTables()).begin_rebuild(connection)

        summary = await client.get("/v1/users/ann")
        assert (summary.status_code, summary.json()["error"]) == (503, "not_ready")
        assert (await client.get("/v1/users/ann/messages")).status_code == 200
        forgotten = await client.delete("/v1/users/ann")
        assert forgotten.status_code == 200, forgotten.text
        assert forgotten.json()["receipt"]["events"] == 3
        assert store.last_version("ann") == 0
        assert (await client.delete("/v1/users/ann")).status_code == 404
    finally:
        store.close()


async def test_the_not_ready_answer_echoes_a_long_user_id_cut_short(
    memory: Memory, client: httpx.AsyncClient, db_url: str
) -> None:
    """While a rebuild has not refolded a user's counters, the 503 names her as every
    answer names a caller's id: its first 60 characters and its length, not 256."""
    long_id = "a" * 256
    await memory.add_exchange(long_id, "I live in Oslo.", "ok")
    store = EventStore(db_url)
    try:
        with store.transaction() as connection:
            store.lock_writers(connection)
            Projector(ProjectionTables()).begin_rebuild(connection)

        summary = await client.get(f"/v1/users/{long_id}")
    finally:
        store.close()

    assert summary.status_code == 503
    message = summary.json()["message"]
    assert long_id not in message
    assert f"the counters of user {long_id[:60]!r}... (256 characters)" in message


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/users", "/healthz/", "/readyz/"])
def test_a_prefix_of_a_route_or_a_route_with_a_slash_added_is_404_never_a_redirect(
    http: httpx.Client, method: str, path: str
) -> None:
    """Starlette's slash redirect answered /v1/users with a 307 to /v1/users/ (a
    user path with an empty id): a client expects the JSON error of any unknown path."""
    answer = http.request(method, path)

    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert answer.json()["error"] == "not_found"


def test_a_user_path_with_no_user_id_is_refused_as_an_empty_user_id(http: httpx.Client) -> None:
    answer = http.get("/v1/users/")

    assert answer.status_code == 422
    assert answer.json()["message"].startswith("user_id must not be empty")


def test_retrieve_for_an_unknown_user_is_404(http: httpx.Client, user: str) -> None:
    answer = http.post(f"/v1/users/{user}/retrieve", json={"query": "anything"})

    assert answer.status_code == 404


def test_an_unknown_task_or_entry_of_a_known_user_is_404(http: httpx.Client, user: str) -> None:
    add_exchange(http, user)

    task = http.get(f"/v1/users/{user}/tasks/{uuid.uuid4()}")
    entry = http.get(f"/v1/users/{user}/knowledge/{uuid.uuid4()}/explain")

    assert (task.status_code, task.json()["error"]) == (404, "not_found")
    assert (entry.status_code, entry.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("path", "echoes"),
    [
        ("tasks/{long}", "has no task 'tttttttttt"),
        ("knowledge/{long}/explain", "has no knowledge entry 'tttttttttt"),
    ],
)
def test_an_unknown_id_of_thousands_of_characters_is_echoed_cut_short_in_the_404(
    http: httpx.Client, user: str, path: str, echoes: str
) -> None:
    add_exchange(http, user)

    answer = http.get(f"/v1/users/{user}/" + path.format(long="t" * 5000))

    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    message = answer.json()["message"]
    assert echoes in message and "(5,000 characters)" in message
    assert len(message) < 300, message


def test_an_unknown_user_id_at_the_length_limit_is_echoed_cut_short_in_the_404(
    http: httpx.Client,
) -> None:
    stranger = "u" * 256

    answer = http.get(f"/v1/users/{stranger}")

    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    assert answer.json()["message"] == f"no user {'u' * 60!r}... (256 characters) in this database"


def test_a_user_id_that_ends_like_a_route_is_reached_with_its_slash_encoded(
    http: httpx.Client, user: str
) -> None:
    owner, inner = user, f"{user}/messages"
    add_exchange(http, owner, "I am the owner.")
    add_exchange(http, inner.replace("/", "%2F"), "I am the inner one.")

    summary = http.get(f"/v1/users/{user}%2Fmessages").json()
    inner_said = http.get(f"/v1/users/{user}%2Fmessages/messages").json()["messages"]
    owner_said = http.get(f"/v1/users/{user}/messages").json()["messages"]
    started = http.post(f"/v1/users/{user}%2Fmessages/process")

    assert summary["user_id"] == inner
    assert [m["content"] for m in inner_said] == ["I am the inner one.", "Noted!"]
    assert {m["user_id"] for m in inner_said} == {inner}
    assert [m["content"] for m in owner_said] == ["I am the owner.", "Noted!"]
    location = started.headers["location"]
    assert f"/v1/users/{user}%2Fmessages/tasks/" in location
    assert http.get(location).json()["user_id"] == inner


@pytest.mark.parametrize("name", ["北京", "Ёж 🙂", "q?x#y z&a=b", "50%/team", ".", ".."])
def test_the_location_of_a_task_is_encoded_for_any_user_id(http: httpx.Client, name: str) -> None:
    user = name if name in (".", "..") else f"{uuid.uuid4().hex[:8]}-{name}"
    segment = (
        quote(user, safe="").replace(".", "%2E") if name in (".", "..") else quote(user, safe="")
    )
    add_exchange(http, segment)

    started = http.post(f"/v1/users/{segment}/process")

    assert started.status_code == 202, "was 500: the header could not be encoded"
    location = started.headers["location"]
    assert location.isascii() and " " not in location and "?" not in location
    assert http.get(location).json()["user_id"] == user


@pytest.mark.parametrize("suffix", ["/team/alice", "%25", "%252F"])
def test_a_user_id_with_a_slash_or_a_percent_sign_round_trips(
    http: httpx.Client, user: str, suffix: str
) -> None:
    decoded = user + suffix.replace("%25", "%")
    add_exchange(http, user + suffix)

    assert http.get(f"/v1/users/{user}{suffix}").json()["user_id"] == decoded
    assert http.get(f"/v1/users/{user}{suffix}/messages").json()["messages"][0]["user_id"] == (
        decoded
    )


def test_the_server_runs_on_uvloop_and_parses_http_in_c(server: ServerProcess) -> None:
    (listening,) = [r for r in server.records() if r.get("event") == "listening"]

    assert (listening["loop"], listening["http"]) == ("uvloop", "httptools")


def test_probes_and_the_openapi_document(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200

    document = http.get("/openapi.json").json()

    paths = set(document["paths"])
    assert "/v1/users/{user_id}/exchanges" in paths
    assert "/v1/users/{user_id}/retrieve" in paths
    assert "/v1/users/{user_id}/knowledge/{entry_id}/explain" in paths


def test_a_method_a_route_does_not_take_is_405_naming_those_it_takes_in_allow(
    http: httpx.Client, user: str
) -> None:
    """As HTTP requires of a 405 (RFC 9110, 15.5.6), so that a client can tell its mistake.
    A path ending in a route's name is that route's, never the user route's (a user id
    ending so is sent with its slash encoded): DELETE there does not forget a user."""
    add_exchange(http, user)
    add_exchange(http, f"{user}%2Fmessages", "I am the inner one.")
    nested = {"tasks/x": "has no task 'x'", "knowledge/e1/explain": "has no knowledge entry 'e1'"}
    for path in nested:
        add_exchange(http, f"{user}%2F{path.replace('/', '%2F')}", "I am an inner one.")

    summary = http.put(f"/v1/users/{user}", json={})
    messages = http.request("OPTIONS", f"/v1/users/{user}/messages")
    retrieve = http.put(f"/v1/users/{user}/retrieve")
    deleted = http.delete(f"/v1/users/{user}/messages")
    read = http.get(f"/v1/users/{user}/process")

    assert (summary.status_code, summary.json()["error"]) == (405, "method_not_allowed")
    assert summary.headers["allow"] == "DELETE, GET, HEAD"
    assert (messages.status_code, messages.headers["allow"]) == (405, "GET, HEAD, POST")
    assert (retrieve.status_code, retrieve.headers["allow"]) == (405, "POST")
    assert (deleted.status_code, deleted.headers["allow"]) == (405, "GET, HEAD, POST")
    assert (read.status_code, read.headers["allow"]) == (405, "POST")
    assert http.get(f"/v1/users/{user}%2Fmessages").json()["message_count"] == 2
    for path, unknown in nested.items():
        deleted = http.delete(f"/v1/users/{user}/{path}")
        read = http.get(f"/v1/users/{user}/{path}")
        inner = http.get(f"/v1/users/{user}%2F{path.replace('/', '%2F')}")

        assert (deleted.status_code, deleted.headers["allow"]) == (405, "GET, HEAD"), path
        assert read.status_code == 404, path
        assert read.json()["message"] == f"user {user!r} {unknown}", path
        assert inner.json()["message_count"] == 2, path


def test_head_answers_as_get_would_without_the_body(http: httpx.Client, user: str) -> None:
    """Every server must take HEAD where it takes GET (RFC 9110, 9.1): a monitor that
    probes with HEAD would read a 405 as the server being down."""
    add_exchange(http, user)
    streamed = f"{user}-long"  # a listing of over LISTED_PER_WRITE items is streamed
    for n in range(LISTED_PER_WRITE // 2 + 1):
        add_exchange(http, streamed, f"turn {n}")
    paths = ("/healthz", "/readyz", f"/v1/users/{user}", f"/v1/users/{user}/messages")

    for path in (*paths, f"/v1/users/{streamed}/messages"):
        got, head = http.get(path), http.head(path)

        assert head.status_code == 200, path
        assert head_body(str(http.base_url), path) == b"", path  # httpx reads none after HEAD
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
    assert "content-length" not in got.headers  # the streamed listing's
    unknown = http.head(f"/v1/users/{user}-unknown")
    assert (unknown.status_code, unknown.content) == (404, b"")
    assert http.get(f"/v1/users/{user}/messages").json()["messages"][0]["content"] == SAID


def test_the_openapi_document_lists_every_role_a_message_may_have(http: httpx.Client) -> None:
    role = http.get("/openapi.json").json()["components"]["schemas"]["MessageIn"]["properties"][
        "role"
    ]

    assert role["enum"] == sorted(ROLES)
    assert all(f"'{name}'" in role["description"] for name in ROLES)


def test_the_openapi_document_describes_the_errors_the_server_sends(
    http: httpx.Client, user: str
) -> None:
    """Every error a route can answer is listed with the one shape the server sends,
    ``{error, message, request_id}``, never FastAPI's ``{detail: [...]}``; the 202 names
    its Location, and /readyz its 503."""
    document = http.get("/openapi.json").json()
    refused = http.post(f"/v1/users/{user}/messages", json={"role": "robot", "content": "x"})
    operations = {
        (method.upper(), path): op
        for path, ops in document["paths"].items()
        for method, op in ops.items()
    }

    def statuses(method: str, path: str) -> list[str]:
        return sorted(operations[method, path]["responses"])

    def schema(response: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = response["content"]["application/json"]["schema"]
        return found

    error_out = {"$ref": "#/components/schemas/ErrorOut"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert set(document["components"]["schemas"]["ErrorOut"]["properties"]) == set(refused.json())
    assert all(
        schema(answer) == error_out
        for (_, path), op in operations.items()
        if path.startswith("/v1/")
        for status, answer in op["responses"].items()
        if int(status) >= 400
    )
    messages = "/v1/users/{user_id}/messages"
    assert statuses("POST", messages) == [
        *("201", "401", "403", "405", "409", "413", "415", "421", "422", "500", "503")
    ]
    read = ["200", "401", "403", "404", "405", "421", "422", "500", "503"]
    assert statuses("GET", "/v1/users/{user_id}") == read
    assert statuses("POST", "/v1/users/{user_id}/flush")[-3:] == ["500", "502", "503"]
    process = operations["POST", "/v1/users/{user_id}/process"]["responses"]["202"]
    assert "Location" in process["headers"]
    assert schema(process) == {"$ref": "#/components/schemas/TaskOut"}
    assert "503" in operations["GET", "/readyz"]["responses"]
    assert "Allow" in operations["GET", "/healthz"]["responses"]["405"]["headers"]


def test_every_answer_carries_a_request_id_that_the_access_log_names(
    http: httpx.Client, server: ServerProcess, user: str
) -> None:
    mine = http.get("/healthz", headers={"x-request-id": "trace-123"})
    fresh = http.get(f"/v1/users/{user}")

    assert mine.headers["x-request-id"] == "trace-123"
    assert len(fresh.headers["x-request-id"]) == 32
    assert fresh.json()["request_id"] == fresh.headers["x-request-id"]

    def logged() -> list[dict[str, object]]:
        return [r for r in server.records() if r.get("request_id") == "trace-123"]

    (line,) = wait_until(logged, what="the access log line")
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)


def test_a_loopback_server_answers_no_rebound_host_nor_another_site(
    http: httpx.Client, server: ServerProcess
) -> None:
    """DNS rebinding (a page's own host name pointed at 127.0.0.1) and cross-site requests
    a browser sends unasked are refused on every route, as the MCP SDK refuses them on /mcp."""
    port = server.url.rsplit(":", 1)[1]
    rebound = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
    for method, path in (
        ("GET", "/v1/users/guarded/messages"),
        ("DELETE", "/v1/users/guarded"),
        ("POST", "/v1/users/guarded/flush"),
    ):
        answer = http.request(method, path, headers=rebound)
        assert answer.status_code == 421, (method, path, answer.text)
        assert answer.json()["error"] == "misdirected_request"
    cross_site = http.post("/v1/users/guarded/flush", headers={"Origin": "http://evil.example"})
    assert cross_site.status_code == 403 and cross_site.json()["error"] == "forbidden_origin"
    same_site = http.get(
        "/v1/users/guarded/messages", headers={"Origin": f"http://127.0.0.1:{port}"}
    )
    assert same_site.status_code in (200, 404), same_site.text
    assert http.get(f"http://localhost:{port}/healthz").status_code == 200
    spelled = {"Host": f"LocalHost.:{port}", "Origin": f"http://LOCALHOST:{port}"}
    listed = http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**spelled, "accept": "application/json, text/event-stream"},
    )
    assert listed.status_code == 200, listed.text


async def _post_in_process(
    memory: Memory,
    db_url: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` to ``path`` of an app serving ``memory`` in this process, its
    failures answered as the server answers them (not raised into the test)."""
    with Audit(db_url=db_url) as audit:
        app = create_app(memory, audit, max_body_bytes=1 << 20)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.post(path, json=body, headers=headers)


async def test_a_route_that_crashes_answers_the_json_internal_error_without_its_words(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the API has no word for (a defect) is answered in the API's one error
    shape, 500 ``internal_error``, naming the request whose log line tells why: it was
    Starlette's text/plain "Internal Server Error". Its own words, which may hold a
    password, go to the log only."""

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("postgresql://memvee:s3cret@db/memvee is gone")

    monkeypatch.setattr(memory, "retrieve", crash)
    answer = await _post_in_process(memory, db_url, "/v1/users/ann/retrieve", {"query": "x"})

    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    request_id = answer.headers["x-request-id"]
    assert answer.json() == {
        "error": "internal_error",
        "message": f"the server failed unexpectedly; its log says why (request {request_id})",
        "request_id": request_id,
    }


@pytest.mark.parametrize(
    "kind", [EmbedderError, ExtractionError, ExtractorRateLimitedError, RuntimeError]
)
async def test_a_500_never_shows_the_errors_own_words(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch, kind: type[Exception]
) -> None:
    """A library error the API has no status for (an embedder's, an extractor's) is a 500
    as a defect is: its words, which may name an upstream's URL with its password or a
    key, go to the log under the request id the answer names, not to the caller."""
    monkeypatch.setenv("DB_PASSWORD", "s3cretDbPassw0rd")

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise kind(
            "embedder at https://u:s3cretDbPassw0rd@emb.example failed; key s3cretDbPassw0rd"
        )

    monkeypatch.setattr(memory, "retrieve", crash)
    answer = await _post_in_process(memory, db_url, "/v1/users/ann/retrieve", {"query": "x"})

    request_id = answer.headers["x-request-id"]
    assert (answer.status_code, answer.json()) == (
        500,
        {
            "error": "internal_error",
            "message": f"the server failed unexpectedly; its log says why (request {request_id})",
            "request_id": request_id,
        },
    )


async def test_a_processing_failures_words_reach_the_caller_without_a_secret(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 502 ``processing_failed`` tells the caller what failed upstream, its words
    cleaned of every configured secret (an upstream URL's password, a key)."""
    monkeypatch.setenv("DB_PASSWORD", "s3cretDbPassw0rd")

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise ProcessingError(
            "ann", "t-1", "extractor at https://u:s3cretDbPassw0rd@x.example: 401 s3cretDbPassw0rd"
        )

    monkeypatch.setattr(memory, "retrieve", fail)
    answer = await _post_in_process(memory, db_url, "/v1/users/ann/retrieve", {"query": "x"})

    assert answer.status_code == 502
    assert answer.json()["message"] == (
        "processing task t-1 for user 'ann' failed: extractor at https://***@x.example: "
        "401 [redacted]"
    )


async def test_a_defect_on_mcp_is_answered_as_a_jsonrpc_error_naming_the_request(
    memory: Memory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer on ``/mcp`` is JSON-RPC, a defect's too: an internal error (-32603)
    with the id of the JSON-RPC request, naming the HTTP request whose log line tells
    why."""

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("defect in the session manager")

    monkeypatch.setattr(StreamableHTTPSessionManager, "handle_request", crash)
    answer = await _post_in_process(
        memory,
        db_url,
        "/mcp",
        {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}},
        headers={"accept": "application/json, text/event-stream"},
    )

    request_id = answer.headers["x-request-id"]
    told = f"the server failed unexpectedly; its log says why (request {request_id})"
    assert (answer.status_code, answer.json()) == (
        500,
        {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {
                "code": INTERNAL_ERROR,
                "message": told,
            },
        },
    )
