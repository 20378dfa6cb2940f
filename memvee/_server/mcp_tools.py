"""The MCP face: five tools a model can choose between from their names and descriptions.

``remember`` stores a turn (extraction follows the memory's own processing rules, as for
a write over HTTP), ``recall`` answers a question with a block ready for the prompt,
``list_memories`` and ``explain_memory`` show what is known and why, and ``forget_user``
(only when the server allows it) erases a user.
The user is the server's (``--user``) or a tool argument; over HTTP each call is checked
against the caller's token scope, as the HTTP API's calls are.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.types import INVALID_PARAMS, GetPromptResult, InputRequiredResult, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError, create_model

from events import MemveeError
from events.checks import MAX_USER_ID_CHARS
from events.errors import echoed
from memvee._memory import Memory
from memvee._retrieval import MAX_QUERY_CHARS
from memvee._server.auth import GRANT_KEY, Grant
from memvee._server.errors import (
    DATABASE_FAILURES,
    ApiError,
    caller_message,
    classify,
    described,
)
from memvee._server.known_users import require_known
from memvee._server.logs import REQUEST_ID_KEY
from memvee._server.whole_numbers import whole_number
from memvee.audit import Audit, SourceMessage

__all__ = ["READ_ONLY_TOOLS", "Cutoff", "build_mcp"]

log = logging.getLogger("memvee.server")

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = (
    "Long-term memory of the user across conversations. Call recall before answering "
    "anything that may depend on what the user told you before; call remember when the "
    "user shares something worth keeping (facts about themselves, preferences, plans, "
    "people, decisions, corrections)."
)

UserId = Annotated[
    str,
    Field(
        description="The id of the user whose memory this is; use the same id for every "
        "call about the same person."
    ),
]


class Remembered(BaseModel):
    """What remember stored."""

    message_ids: list[str]
    note: str = (
        "Stored; the words are searchable now. Facts are extracted from them later, in the "
        "background, several turns at a time."
    )


class Recalled(BaseModel):
    """What recall found, as a block to use in the answer."""

    prompt: str = Field(description="Known facts and earlier messages, most relevant first.")
    entry_ids: list[str] = Field(description="Ids of the facts, for explain_memory.")
    message_ids: list[str]


class Fact(BaseModel):
    """One fact memory holds about the user."""

    entry_id: str
    text: str
    since: datetime


class Facts(BaseModel):
    """A page of the facts currently known about the user, oldest first."""

    facts: list[Fact]
    total: int = Field(description="How many facts are known about the user now.")
    next_offset: int | None = Field(
        description="The offset of the next page; null when this page is the last."
    )


class Source(BaseModel):
    """A message a fact was extracted from."""

    message_id: str
    role: str
    content: str
    sent_at: datetime
    name: str | None = Field(None, description="Who said it (in a group), when it was given.")


class Explanation(BaseModel):
    """Where a fact came from and what became of it."""

    entry_id: str
    text: str
    current: bool = Field(description="False once replaced by a later fact or taken back.")
    sources: list[Source]
    extracted_at: datetime
    extractor: str
    model: str | None
    replaced_by: list[str]
    ended_reason: str | None
    said_again_by: list[Source] = Field(
        default_factory=list,
        description="Later messages that said it again while it held (the newest 50 at most, "
        "listed oldest first): not its sources, but outdated with it.",
    )
    said_again_count: int = Field(
        0, description="How many messages said it again in all, those not listed included."
    )


class Forgotten(BaseModel):
    """The receipt of an erasure."""

    erased_records: int
    erased_at: datetime
    scrubbed: bool = Field(
        description="False while the erased words may still be in the database files "
        "(other readers hold older snapshots); they are removed in the background."
    )


class Cutoff:
    """The end of a stopping server's grace: once :meth:`cut`, a tool call still running
    is answered at once, saying whether it may have been carried out, instead of being
    cancelled by the SDK with a bare "Connection closed" (after which a client would
    send a stored ``remember`` again)."""

    def __init__(self) -> None:
        self._cut = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_cut(self) -> bool:
        """The grace is over: tool calls are answered without waiting for their work."""
        return self._cut.is_set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take :meth:`cut` calls from other threads to ``loop``, the tools' loop."""
        self._loop = loop

    def cut(self) -> None:
        """End the grace (from any thread once bound)."""
        if self._loop is None:
            self._cut.set()
        else:
            self._loop.call_soon_threadsafe(self._cut.set)

    async def run(self, work: Callable[[], Awaitable[R]], *, reads_only: bool) -> R:
        """The result of ``work()``, or, when the grace ends first, a tool error as the
        HTTP drain answers: ``not_ready`` if it only reads or never began, else
        ``outcome_unknown`` (a write handed to the memory goes on to its commit)."""
        if self.is_cut:
            raise ToolError(f"not_ready: {_NOT_STARTED}")
        running = asyncio.ensure_future(work())
        ended = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({running, ended}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client cancelled the call, or the SDK stopped
            running.cancel()
            raise
        finally:
            ended.cancel()
        if running.done():
            return running.result()
        running.cancel()
        raise ToolError(
            f"not_ready: {_CUT_SHORT}" if reads_only else f"outcome_unknown: {_UNKNOWN}"
        )


_NOT_STARTED = "the server is shutting down; nothing was done, try again shortly"
_CUT_SHORT = "the server is shutting down; try again shortly"
_UNKNOWN = (
    "the server shut down before it could answer; the request may have been carried out: "
    "check before sending it again"
)


def build_mcp(
    memory: Memory,
    audit: Audit,
    *,
    user: str | None = None,
    allow_forget: bool = False,
    cutoff: Cutoff | None = None,
) -> MCPServer[Any]:
    """An MCP server whose tools act on ``memory``: for ``user`` only when one is given
    (the tools then take no user id), else for the user each call names. Each tool takes
    exactly the arguments its input schema gives (:class:`_ExactTool`), and once
    ``cutoff`` is cut a call still running is answered at once (:meth:`Cutoff.run`)."""

    async def remember(
        user_id: UserId,
        user_message: Annotated[str, Field(description="What the user said, verbatim.")],
        ctx: Context[Any, Any],
        assistant_message: Annotated[
            str | None, Field(description="Your reply to it, if it adds context.")
        ] = None,
    ) -> Remembered:
        _check_scope(ctx, user_id)
        if assistant_message is None:
            stored = [await memory.add_message(user_id, "user", user_message)]
        else:
            stored = list(await memory.add_exchange(user_id, user_message, assistant_message))
        return Remembered(message_ids=[m.message_id for m in stored])

    async def recall(
        user_id: UserId,
        question: Annotated[str, Field(description="The question or topic to look up.")],
        ctx: Context[Any, Any],
        max_results: Annotated[int, Field(ge=1, le=50, description="At most this many.")] = 8,
    ) -> Recalled:
        _check_scope(ctx, user_id)
        found = await memory.retrieve(user_id, question, top_k=max_results, include_messages=True)
        prompt = await asyncio.to_thread(found.to_prompt)  # long messages: off the loop
        return Recalled(
            prompt=prompt or "Nothing relevant is known about this user yet.",
            entry_ids=[hit.entry.entry_id for hit in found.entries],
            message_ids=[hit.message.message_id for hit in found.messages],
        )

    async def list_memories(
        user_id: UserId,
        ctx: Context[Any, Any],
        limit: Annotated[
            int, Field(ge=1, le=MAX_LISTED, description="At most this many facts.")
        ] = LISTED,
        offset: Annotated[int, Field(ge=0, description="Facts to skip (next_offset).")] = 0,
    ) -> Facts:
        _check_scope(ctx, user_id)
        # One past the page says whether another follows; the total is the count the
        # user's summary keeps, so a page never reads the facts of the other pages.
        page = await memory.knowledge(user_id, offset=offset, limit=limit + 1)
        summary = await memory.user(user_id)
        count = summary.knowledge_count if summary else 0
        listed = page[:limit]
        return Facts(
            facts=[Fact(entry_id=e.entry_id, text=e.text, since=e.valid_from) for e in listed],
            total=max(count, offset + len(listed)) if listed else count,
            next_offset=offset + limit if len(page) > limit else None,
        )

    async def explain_memory(
        user_id: UserId,
        entry_id: Annotated[str, Field(description="A fact's id from recall or list_memories.")],
        ctx: Context[Any, Any],
    ) -> Explanation:
        _check_scope(ctx, user_id)
        await require_known(memory, audit, user_id)
        found = await asyncio.to_thread(audit.explain, user_id, entry_id)
        return Explanation(
            entry_id=found.entry_id,
            text=found.text,
            current=found.valid_until is None,
            sources=[_source(m) for m in found.messages],
            extracted_at=found.extracted_at,
            extractor=found.extractor,
            model=found.model,
            replaced_by=found.replaced_by,
            ended_reason=found.ended_reason,
            said_again_by=[_source(m) for m in found.repeated_by],
            said_again_count=found.repeated_count,
        )

    async def forget_user(user_id: UserId, ctx: Context[Any, Any]) -> Forgotten:
        _check_scope(ctx, user_id)
        await require_known(memory, audit, user_id)  # as the HTTP API's DELETE answers 404
        receipt = await memory.forget(user_id)
        return Forgotten(
            erased_records=receipt.total, erased_at=receipt.erased_at, scrubbed=receipt.scrubbed
        )

    tools: list[tuple[Callable[..., Awaitable[Any]], str]] = [
        (remember, REMEMBER),
        (recall, RECALL),
        (list_memories, LIST_MEMORIES),
        (explain_memory, EXPLAIN_MEMORY),
    ]
    if allow_forget:
        tools.append((forget_user, FORGET_USER))
    content = memory.config.max_content_chars
    lengths = {
        "user_id": MAX_USER_ID_CHARS,
        "user_message": content,
        "assistant_message": content,
        "question": MAX_QUERY_CHARS,
    }
    exact: list[Tool] = []
    for fn, description in tools:
        tool = _with_tool_errors(fn)
        if cutoff is not None:
            tool = _until_cut(tool, cutoff, reads_only=fn.__name__ in READ_ONLY_TOOLS)
        if user is not None:
            tool = _for_user(tool, user)
        exact.append(_exact_tool(tool, fn.__name__, description, _hints(fn.__name__), lengths))
    return _MemveeServer(
        "memvee",
        instructions=INSTRUCTIONS,
        version=importlib.metadata.version("memvee"),
        tools=exact,
    )


class _MemveeServer(MCPServer[Any]):
    """The SDK's server, but for a tool or prompt it does not list: calling an unknown tool
    is an ``invalid_input`` tool error, as every tool error begins with its code word, and
    asking for an unknown prompt is the client's mistake, answered as JSON-RPC's invalid
    params, as an unknown resource is (the SDK answered it as a crash of its own, error
    code 0 or -32603, and logged a traceback at error level for each)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        """The tool ``name`` called, or an ``invalid_input`` tool error naming the tools
        when there is no such tool (the SDK's began 'Unknown tool', no code word)."""
        tools = [tool.name for tool in await self.list_tools()]
        if name not in tools:
            raise ToolError(f"invalid_input: no tool {echoed(name)} (tools: {', '.join(tools)})")
        return await super().call_tool(name, arguments, context)

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        """The prompt ``name`` rendered, or invalid params when there is no such prompt."""
        if name not in {prompt.name for prompt in await self.list_prompts()}:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {echoed(name)}")
        return await super().get_prompt(name, arguments, context)


READ_ONLY_TOOLS = frozenset({"recall", "list_memories", "explain_memory"})
"""The tools that change nothing: so their annotations say, and a call of them cut short
by the drain is answered "try again"."""


def _hints(name: str) -> ToolAnnotations:
    """What the tool ``name`` does to memory, as a client is told: only reads, adds, or
    erases."""
    return ToolAnnotations(
        read_only_hint=name in READ_ONLY_TOOLS, destructive_hint=name == "forget_user"
    )


REMEMBER = (
    "Save a turn of the conversation to the user's long-term memory. Call it when the user "
    "shares something worth keeping across conversations: facts about themselves, "
    "preferences, plans, people in their life, decisions, or a correction of something "
    "said before. Pass the user's words verbatim, and your reply if it adds context. "
    "Returns at once: the words themselves are searchable right away; facts are extracted "
    "from them later, in the background, several turns at a time, and then show up in "
    "recall."
)
RECALL = (
    "Look up what long-term memory knows about the user that bears on a question or "
    "topic. Call it before answering anything that may depend on the user's past: their "
    "preferences, history, people, plans or earlier requests. Returns a ready-to-use text "
    "block of known facts (most relevant first, each with the date it became true) and "
    "earlier relevant messages, plus the facts' ids for explain_memory."
)
LIST_MEMORIES = (
    "List the facts currently known about the user, oldest first, each with its id and "
    "the date it became true, a page at a time: 'total' says how many there are, and "
    "'next_offset', when not null, is the offset of the next page. Use it when the user "
    "asks what you remember about them or to review memory as a whole; to answer a "
    "specific question, recall is better."
)
LISTED = 100
"""Facts a page of list_memories holds unless asked otherwise: a tool's answer goes into
a model's context, where thousands of facts at once would crowd everything else out."""
MAX_LISTED = 500
"""The most facts one page of list_memories may hold."""
EXPLAIN_MEMORY = (
    "Show where one remembered fact came from: the exact messages it was extracted from "
    "(with their dates), when and by what it was extracted, and whether a later fact "
    "replaced it. Use it when the user asks how you know something or disputes a fact. "
    "Takes a fact's id from recall or list_memories."
)
FORGET_USER = (
    "Permanently erase everything remembered about the user: every message and every "
    "fact. This cannot be undone. Only call it when the user explicitly asks you to "
    "forget everything about them, after confirming with them."
)


class _ExactTool(Tool):
    """A tool that takes its arguments exactly as its input schema gives them: an argument
    it does not name (a misspelt one would be dropped) or a value not of the type named
    (``true``, ``"2"`` or ``2.5`` for an integer; ``2.0`` is one, as in JSON Schema) is an
    ``invalid_input`` tool error, as the HTTP API answers 422 to the same mistakes."""

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        """Refuse ``arguments`` the schema does not allow, else run the tool with them; its
        error is answered as it said it, code word first."""
        arguments = _whole_numbers_as_integers(arguments, self.fn_metadata.arg_model)
        try:
            self.fn_metadata.arg_model.model_validate(arguments)
        except ValidationError as error:
            problems = [self._problem(p) for p in error.errors()]
            raise ToolError(f"invalid_input: {'; '.join(problems)}") from error
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as error:
            # The SDK puts "Error executing tool <name>: " before a tool's own error; it
            # is answered as the tool said it, its code word first.
            if isinstance(error, UnexpectedToolError):
                # A crash after the tool returned (the SDK failing to convert its result)
                cause = error.__cause__ or error
                raise _crashed(self.name, cause, _request_ids([context])) from cause
            if isinstance(error.__cause__, ToolError):
                raise ToolError(str(error.__cause__)) from error.__cause__
            raise

    def _problem(self, problem: Any) -> str:
        """What is wrong with one argument, naming the arguments the tool takes when the
        caller gave one it does not."""
        if problem["type"] != "extra_forbidden":
            return described(problem, "arguments")
        takes = ", ".join(self.fn_metadata.arg_model.model_fields)
        return f"{self.name} takes no argument {echoed(str(problem['loc'][0]))} (it takes {takes})"


class _TakenAsSent(FuncMetadata):
    """The SDK's argument handling but for its guess at JSON inside strings: a reply that
    reads as a JSON array is kept as the text it is, not refused as a list."""

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` as sent."""
        return data


def _whole_numbers_as_integers(arguments: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """``arguments`` with each integer argument given as a number of no fraction (``8.0``)
    as that integer, leaving the rest for the model to judge."""
    integers = {name for name, field in model.model_fields.items() if field.annotation is int}
    return {
        name: whole_number(value) if name in integers else value
        for name, value in arguments.items()
    }


def _exact_tool(
    fn: Callable[..., Awaitable[Any]],
    name: str,
    description: str,
    hints: ToolAnnotations,
    lengths: dict[str, int],
) -> Tool:
    """The tool ``fn`` as an :class:`_ExactTool`: its arguments model forbids other names
    and converts no value, and its input schema says so (``additionalProperties: false``),
    and gives each text argument named in ``lengths`` its most characters (``maxLength``),
    which the library checks, in its own words."""
    tool = _ExactTool.from_function(fn, name=name, description=description, annotations=hints)
    loose = tool.fn_metadata
    arguments = create_model(
        loose.arg_model.__name__,
        __base__=loose.arg_model,
        __cls_kwargs__={"extra": "forbid", "strict": True},
    )
    metadata = _TakenAsSent(
        arg_model=arguments,
        output_schema=loose.output_schema,
        output_model=loose.output_model,
        wrap_output=loose.wrap_output,
    )
    schema = arguments.model_json_schema(by_alias=True)
    for argument, spelled in schema["properties"].items():
        for text in [spelled, *spelled.get("anyOf", [])]:
            if argument in lengths and text.get("type") == "string":
                text["maxLength"] = lengths[argument]
    return tool.model_copy(update={"fn_metadata": metadata, "parameters": schema})


def _check_scope(ctx: Context[Any, Any], user_id: str) -> None:
    """Over HTTP, refuse a user outside the caller's token scope (stdio has no tokens)."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    grant = scope.get(GRANT_KEY, Grant()) if isinstance(scope, dict) else Grant()
    if not grant.covers(user_id):
        raise ApiError(403, "forbidden", f"this token may not access user {echoed(user_id)}")


TOOL_FAILURES: tuple[type[Exception], ...] = (MemveeError, ApiError, *DATABASE_FAILURES)
"""What a tool answers as a tool error with its code word; anything else is a bug."""


def _with_tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the library's typed errors into tool errors that say what went wrong."""

    @functools.wraps(fn)
    async def tool(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except TOOL_FAILURES as error:
            status, code = classify(error)
            ids = _request_ids([*args, *kwargs.values()])
            if status >= 500:
                log.warning("tool %s: %s: %s", fn.__name__, code, error, extra=ids)
            told = caller_message(error, ids.get("request_id") or ids.get("rpc_id"))
            raise ToolError(f"{code}: {told}") from error
        except (ToolError, MCPError):
            raise
        except Exception as error:  # a bug
            raise _crashed(fn.__name__, error, _request_ids([*args, *kwargs.values()])) from error

    return tool


def _crashed(tool: str, error: BaseException, ids: dict[str, object]) -> ToolError:
    """The tool error a crash of ``tool`` is answered with, once logged: its text may hold
    anything (a database address, a message), so it stays in the log, and the caller is
    told the request id to find it by."""
    log.error("tool %s: internal_error: %r", tool, error, exc_info=error, extra=ids)
    request = ids.get("request_id") or ids.get("rpc_id")
    return ToolError(
        f"internal_error: the tool {tool} failed unexpectedly; the server's log says why "
        f"(request {request})"
    )


def _until_cut(
    fn: Callable[P, Awaitable[R]], cutoff: Cutoff, *, reads_only: bool
) -> Callable[P, Awaitable[R]]:
    """The tool ``fn``, answered at once when ``cutoff`` is cut (:meth:`Cutoff.run`)."""

    @functools.wraps(fn)
    async def tool(*args: P.args, **kwargs: P.kwargs) -> R:
        return await cutoff.run(functools.partial(fn, *args, **kwargs), reads_only=reads_only)

    return tool


def _request_ids(arguments: list[object]) -> dict[str, object]:
    """The ids a tool's log lines carry: the HTTP request's (as every line of that request
    has), and the JSON-RPC request's (the only one over stdio)."""
    ctx = next((a for a in arguments if isinstance(a, Context)), None)
    if ctx is None:
        return {}
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    http_id = scope.get(REQUEST_ID_KEY) if isinstance(scope, dict) else None
    return {"request_id": http_id, "rpc_id": ctx.request_id}


def _for_user(fn: Callable[..., Awaitable[R]], user_id: str) -> Callable[..., Awaitable[R]]:
    """The tool ``fn`` with its ``user_id`` fixed: the parameter leaves its schema."""
    signature = inspect.signature(fn, eval_str=True)
    params = [p for name, p in signature.parameters.items() if name != "user_id"]

    @functools.wraps(fn)
    async def tool(*args: Any, **kwargs: Any) -> R:
        return await fn(*args, user_id=user_id, **kwargs)

    del tool.__wrapped__  # type: ignore[attr-defined]
    tool.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    tool.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "user_id"}
    return tool


def _source(message: SourceMessage) -> Source:
    """``message`` as the tools show a message a fact came from."""
    return Source(
        message_id=message.message_id,
        role=message.role,
        content=message.content,
        sent_at=message.sent_at,
        name=message.name,
    )
