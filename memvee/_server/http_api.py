"""The HTTP JSON API under ``/v1``: one route per :class:`~memvee.Memory` call.

Each route checks the caller's token scope, asks the Memory, and shapes the answer; the
library validates the input (its message is the 422's) and does all the work. A user that
was never written is a 404 everywhere but on the writes, which create users.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, and
those naming the dependencies built in :func:`api_router` must be live objects.
"""

import asyncio
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictStr,
    TypeAdapter,
)
from starlette.convertors import Convertor, register_url_convertor

from actors.erasure import ForgetReceipt
from events import ROLES
from events.errors import echoed
from memvee._memory import Memory
from memvee._retrieval import RetrievalResult, RetrievedEntry, RetrievedMessage
from memvee._server.auth import GRANT_KEY, Grant
from memvee._server.errors import ApiError, mark_reads_only
from memvee._server.known_users import known_summary, require_known
from memvee._server.user_paths import quoted_user_id, user_id_of
from memvee._server.whole_numbers import WholeNumber
from memvee._task import ProcessTask
from memvee.audit import Audit, Provenance
from projections import KnowledgeEntry, Message, UserSummary

__all__ = [
    "ANY_ROUTE_ERRORS",
    "ErrorOut",
    "api_router",
    "error_responses",
    "listing_response",
    "retrieved_response",
]

T = TypeVar("T")


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _not_a_number(value: object) -> object:
    """Refuse a time given as a number (or a string of one), which pydantic would read as
    seconds or, past about 2e10, milliseconds since 1970: which was meant cannot be told."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError(
            "a time is an ISO 8601 string with its offset, such as 2025-03-01T12:00:00Z, "
            "not a number"
        )
    return value


IsoTime = Annotated[datetime, BeforeValidator(_not_a_number)]
"""A time the API takes: an ISO 8601 string, never a number of seconds or milliseconds."""

_ROLE_NAMES: list[JsonValue] = [*sorted(ROLES)]
_ROLES_TEXT = ", ".join(f"'{role}'" for role in sorted(ROLES))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Body):
    """One message to append."""

    role: StrictStr = Field(
        description=f"One of {_ROLES_TEXT}.", json_schema_extra={"enum": _ROLE_NAMES}
    )
    content: StrictStr
    sent_at: IsoTime | None = Field(
        None, description="When it was said: an ISO 8601 time with its offset."
    )
    name: StrictStr | None = Field(None, description="The speaker's name, when known.")


class ExchangeIn(_Body):
    """A user turn and the assistant's answer, appended together."""

    user_message: StrictStr
    assistant_message: StrictStr
    sent_at: IsoTime | None = Field(
        None, description="When it was said: an ISO 8601 time with its offset."
    )
    user_name: StrictStr | None = None
    assistant_name: StrictStr | None = None


class RetrieveIn(_Body):
    """A question to rank the user's knowledge (and optionally raw messages) for."""

    query: StrictStr
    top_k: WholeNumber = Field(10, description="How many results, 1 to 1000.")
    include_messages: StrictBool = False
    as_of: IsoTime | None = Field(
        None, description="Rank what was valid then instead of now (an ISO 8601 time)."
    )


class ErrorOut(BaseModel):
    """Every error answer of the server, whatever its status."""

    error: str = Field(description="A code word a program can act on, such as not_found.")
    message: str = Field(description="What went wrong, for a person.")
    request_id: str | None = Field(description="The request's id in the server's log.")


_ERRORS: dict[int, str] = {
    401: "No token, or a wrong one (unauthorized).",
    403: "The token may not access this user (forbidden), or the request came from "
    "another site to a loopback server (forbidden_origin).",
    404: "No such user, task or entry (not_found).",
    409: "Other writers kept writing first (conflict), or the user was forgotten "
    "meanwhile (user_forgotten).",
    405: "A method the path does not take (method_not_allowed); Allow names those it takes.",
    413: "The body is over --max-body-bytes (payload_too_large).",
    415: "A body not sent with Content-Type: application/json, or sent with a "
    "Content-Encoding (unsupported_media_type).",
    421: "A loopback server asked for another host (misdirected_request).",
    422: "A body, parameter or user id the server cannot take (invalid_input).",
    500: "A defect of the server (internal_error): its log says why under the request id.",
    502: "Extraction failed (processing_failed).",
    503: "Starting, shutting down or rebuilding a user's counters (not_ready: try again; "
    "outcome_unknown: a change cut "
    "short, check before sending it again), or the database is unavailable "
    "(storage_unavailable); Retry-After says when to try again.",
}
"""The error statuses the server answers, and when: the OpenAPI document's words."""

ANY_ROUTE_ERRORS = (403, 405, 421, 500, 503)
"""Errors every route may answer, the probes too: the loopback guard's, a method the path
does not take, a defect's, and the drain's."""

_ANY_USER_ROUTE = (*ANY_ROUTE_ERRORS, 401, 422)
"""Errors every route of ``/v1`` may answer: a token's, and a user id's."""


def error_responses(
    *statuses: int, routes: tuple[int, ...] = _ANY_USER_ROUTE
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's errors: ``statuses`` and those of all its
    ``routes``, each an :class:`ErrorOut`."""
    return {
        status: {"model": ErrorOut, "description": _ERRORS[status]}
        | ({"headers": {"Retry-After": _RETRY_AFTER}} if status == 503 else {})
        | ({"headers": {"Allow": _ALLOW}} if status == 405 else {})
        for status in sorted({*routes, *statuses})
    }


_RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
_ALLOW = {"description": "The methods the path takes.", "schema": {"type": "string"}}


class MessageOut(BaseModel):
    """The stored message, with its id."""

    message: Message


class ExchangeOut(BaseModel):
    """The two stored messages, user turn first."""

    messages: list[Message]


class TaskOut(BaseModel):
    """A processing task: PENDING, RUNNING, COMPLETED or FAILED."""

    task_id: str
    user_id: str
    trigger: str
    status: str
    done: bool
    message_count: int
    knowledge_count: int
    error: str | None

    @classmethod
    def of(cls, task: ProcessTask) -> "TaskOut":
        """The API's view of a library task handle."""
        return cls(
            task_id=task.task_id,
            user_id=task.user_id,
            trigger=task.trigger,
            status=task.status.value,
            done=task.done,
            message_count=task.message_count,
            knowledge_count=task.knowledge_count,
            error=task.error,
        )


class FlushOut(BaseModel):
    """What a flush extracted."""

    knowledge_count: int


class KnowledgeOut(BaseModel):
    """The user's knowledge entries."""

    entries: list[KnowledgeEntry]


class MessagesOut(BaseModel):
    """The user's messages, oldest first."""

    messages: list[Message]


class RetrieveOut(BaseModel):
    """Ranked entries and messages, and the ``to_prompt()`` block made of them."""

    prompt: str
    entries: list[RetrievedEntry]
    messages: list[RetrievedMessage]


class ForgetOut(BaseModel):
    """The receipt of an erasure: what was deleted, and when."""

    receipt: ForgetReceipt
    total: int


_SUB_RESOURCES = (
    "messages",
    "exchanges",
    "process",
    "flush",
    "retrieve",
    "knowledge",
    "knowledge/[^/]+/explain",
    "tasks/[^/]+",
)
"""What follows the user id in the paths of the routes below it, as regular expressions."""


class _UserOnly(Convertor[str]):
    """A user path that does not end in one of :data:`_SUB_RESOURCES`: ``/v1/users/ann/
    messages`` names the messages of ``ann``, so a method that route does not take is a
    405 there, not the user ``ann/messages`` forgotten or read (that user is named
    ``ann%2Fmessages``, see :mod:`memvee._server.user_paths`)."""

    regex = rf"(?!.*/(?:{'|'.join(_SUB_RESOURCES)})$).*"

    def convert(self, value: str) -> str:
        """The user path as routed."""
        return value

    def to_string(self, value: str) -> str:
        """The user path as written in a URL."""
        return value


register_url_convertor("user_only", _UserOnly())


def api_router(memory: Memory, audit: Audit) -> APIRouter:
    """The ``/v1`` routes over an open ``memory`` (``audit`` reads the same database)."""
    router = APIRouter(prefix="/v1")

    async def scoped(request: Request, user_id: str) -> str:
        user_id = user_id_of(user_id)
        grant = request.scope.get(GRANT_KEY, Grant())
        if not grant.covers(user_id):
            raise ApiError(403, "forbidden", f"this token may not access user {echoed(user_id)}")
        return user_id

    async def known(user_id: Annotated[str, Depends(scoped)]) -> str:
        await require_known(memory, audit, user_id)
        return user_id

    User = Annotated[str, Depends(scoped)]
    KnownUser = Annotated[str, Depends(known)]

    @router.post(
        "/users/{user_id:path}/messages",
        status_code=201,
        tags=["write"],
        responses=error_responses(409, 413, 415),
    )
    async def add_message(user_id: User, body: MessageIn) -> MessageOut:
        """Append one message; answered once it is durable."""
        stored = await memory.add_message(
            user_id, body.role, body.content, body.sent_at, name=body.name
        )
        return MessageOut(message=stored)

    @router.post(
        "/users/{user_id:path}/exchanges",
        status_code=201,
        tags=["write"],
        responses=error_responses(409, 413, 415),
    )
    async def add_exchange(user_id: User, body: ExchangeIn) -> ExchangeOut:
        """Append a user turn and the assistant's answer; answered once both are durable."""
        first, second = await memory.add_exchange(
            user_id,
            body.user_message,
            body.assistant_message,
            body.sent_at,
            user_name=body.user_name,
            assistant_name=body.assistant_name,
        )
        return ExchangeOut(messages=[first, second])

    @router.post(
        "/users/{user_id:path}/process",
        status_code=202,
        tags=["processing"],
        responses={202: {"headers": {"Location": _TASK_LOCATION}}, **error_responses(404, 409)},
    )
    async def process(user_id: KnownUser, request: Request, response: Response) -> TaskOut:
        """Start extracting the user's buffered messages; poll the task it answers with.

        Answered once the request is stored: its ``Location`` works on every server of the
        database, also for a task that had nothing to do (it is stored COMPLETED)."""
        task = await memory.request_processing(user_id)
        response.headers["location"] = str(
            request.url_for("get_task", user_id=quoted_user_id(user_id), task_id=task.task_id)
        )
        return TaskOut.of(task)

    @router.get(
        "/users/{user_id:path}/tasks/{task_id}",
        tags=["processing"],
        responses=error_responses(404),
    )
    async def get_task(user_id: KnownUser, task_id: str) -> TaskOut:
        """One processing task of the user: its status, and what it extracted."""
        return TaskOut.of(await memory.get_task(user_id, task_id))

    @router.post(
        "/users/{user_id:path}/flush",
        tags=["processing"],
        responses=error_responses(404, 409, 502),
    )
    async def flush(user_id: KnownUser) -> FlushOut:
        """Process until nothing of the user is buffered; answers when done."""
        return FlushOut(knowledge_count=await memory.flush(user_id))

    @router.get(
        "/users/{user_id:path}/knowledge/{entry_id}/explain",
        tags=["read"],
        responses=error_responses(404),
    )
    async def explain(user_id: KnownUser, entry_id: str) -> Provenance:
        """Where a knowledge entry came from: its messages, task, extractor and fate."""
        return await asyncio.to_thread(audit.explain, user_id, entry_id)

    @router.get(
        "/users/{user_id:path}/knowledge",
        tags=["read"],
        response_model=KnowledgeOut,
        responses=error_responses(404),
    )
    async def knowledge(
        user_id: KnownUser,
        as_of: Annotated[
            IsoTime | None, Query(description="Entries valid then (an ISO 8601 time).")
        ] = None,
        history: Annotated[bool, Query(description="Every entry ever extracted.")] = False,
        offset: Annotated[int, Query(ge=0, description="Entries to pass over first.")] = 0,
        limit: Annotated[int | None, Query(ge=1, description="At most this many.")] = None,
    ) -> Response:
        """The user's current knowledge entries (or those valid ``as_of``, or all), oldest
        first: every one, or a page (``offset`` entries passed over, at most ``limit``)."""
        entries = await memory.knowledge(
            user_id, as_of=as_of, history=history, offset=offset, limit=limit
        )
        return listing_response("entries", _ENTRIES, entries)

    @router.get(
        "/users/{user_id:path}/messages",
        tags=["read"],
        response_model=MessagesOut,
        responses=error_responses(404),
    )
    async def messages(
        user_id: KnownUser,
        after: Annotated[int, Query(ge=0, description="Only messages past this seq.")] = 0,
        limit: Annotated[int | None, Query(ge=1, description="At most this many.")] = None,
    ) -> Response:
        """The user's messages, oldest first: every one, or a page (``after`` the last
        ``seq`` read, at most ``limit``)."""
        listed = await memory.messages(user_id, after=after, limit=limit)
        return listing_response("messages", _MESSAGES, listed)

    @router.post(
        "/users/{user_id:path}/retrieve",
        tags=["read"],
        dependencies=[Depends(_reads_only)],
        response_model=RetrieveOut,
        responses=error_responses(404, 413, 415),
    )
    async def retrieve(user_id: User, body: RetrieveIn) -> Response:
        """The user's knowledge most relevant to a query, and a block for a prompt."""
        found = await memory.retrieve(
            user_id,
            body.query,
            top_k=body.top_k,
            as_of=body.as_of,
            include_messages=body.include_messages,
        )
        if not found:  # only then is it worth a read to tell an unknown user (404)
            await known(user_id)
        return await retrieved_response(found)

    @router.get("/users/{user_id:user_only}", tags=["read"], responses=error_responses(404))
    async def user(user_id: User) -> UserSummary:
        """Counters of the user's log; while a rebuild has not refolded them yet, 503
        ``not_ready``."""
        summary = await known_summary(memory, audit, user_id)
        if summary is None:
            raise ApiError(
                503,
                "not_ready",
                f"the counters of user {echoed(user_id)} are being rebuilt; try again",
            )
        return summary

    @router.delete(
        "/users/{user_id:user_only}", tags=["write"], responses=error_responses(404, 409)
    )
    async def forget(user_id: KnownUser) -> ForgetOut:
        """Erase the user: their log, snapshots and every row folded from it."""
        receipt = await memory.forget(user_id)
        return ForgetOut(receipt=receipt, total=receipt.total)

    return router


_TASK_LOCATION = {
    "description": "Where to poll the task (GET), on any server of the database.",
    "schema": {"type": "string"},
}


def _reads_only(request: Request) -> None:
    """Mark a read sent as POST: cut short by the drain, it is answered "try again"."""
    mark_reads_only(request.scope)


LISTED_PER_WRITE = 500
"""Items of a listing written to JSON at a time. Writing holds the GIL throughout, so a
whole listing written at once (every message of a user can be megabytes) would hold up
every other request for as long, even in a thread; a part this size takes a millisecond
or two, and a listing no longer than it is written at once on the event loop."""

_MESSAGES = TypeAdapter(list[Message])
_ENTRIES = TypeAdapter(list[KnowledgeEntry])


def listing_response(field: str, adapter: TypeAdapter[list[T]], items: list[T]) -> Response:
    """``{field: items}`` as a JSON response; a long listing is streamed, its parts written
    in a thread one at a time."""
    head, tail = b'{"' + field.encode() + b'":', b"}"
    if len(items) <= LISTED_PER_WRITE:
        return Response(head + adapter.dump_json(items) + tail, media_type="application/json")

    def parts() -> Iterator[bytes]:
        yield head
        yield from _written(adapter, items)
        yield tail

    return StreamingResponse(parts(), media_type="application/json")


_PROMPT = TypeAdapter(str)
_RANKED_ENTRIES = TypeAdapter(list[RetrievedEntry])
_RANKED_MESSAGES = TypeAdapter(list[RetrievedMessage])


async def retrieved_response(found: RetrievalResult) -> Response:
    """``found`` as :class:`RetrieveOut` in JSON, built in a thread a part at a time as a
    long listing is written: with its messages, an answer can be tens of megabytes, which
    built on the event loop would hold up every other request. It is built whole before
    its answer begins, so that a drain that cuts it short still answers "try again"."""

    def parts() -> list[bytes]:
        prompt = _PROMPT.dump_json(found.to_prompt())
        entries = list(_written(_RANKED_ENTRIES, found.entries))
        messages = list(_written(_RANKED_MESSAGES, found.messages))
        return [b'{"prompt":', prompt, b',"entries":', *entries, b',"messages":', *messages, b"}"]

    return StreamingResponse(iter(await asyncio.to_thread(parts)), media_type="application/json")


def _written(adapter: TypeAdapter[list[T]], items: list[T]) -> Iterator[bytes]:
    """``items`` as one JSON array, written :data:`LISTED_PER_WRITE` items at a time."""
    yield b"["
    for start in range(0, len(items), LISTED_PER_WRITE):
        part = adapter.dump_json(items[start : start + LISTED_PER_WRITE])
        yield (b"," if start else b"") + part[1:-1]
    yield b"]"
