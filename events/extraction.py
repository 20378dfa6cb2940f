"""What an extractor sees and answers: the contract between the engine and Claude.

The engine hands an :class:`ExtractionBatch` (the messages of one processing task) to an
:class:`Extractor` and records its :class:`ExtractionResult` as a KnowledgeExtracted event.
These are plain values so that extractors stay testable without the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from events.errors import InvalidExtractionError

__all__ = [
    "FACT_ACTIONS",
    "MAX_TOKENS",
    "BatchLimits",
    "BatchMessage",
    "ExtractedFact",
    "ExtractionBatch",
    "ExtractionResult",
    "Extractor",
    "FactAction",
    "KnownEntry",
    "TokenUsage",
    "bounded",
    "check_result",
    "estimate_tokens",
    "extraction_deadline",
]

FactAction = Literal["new", "same", "update", "invalidate"]
# On the alias itself: a bare string after it would be lost to help() and inspect.getdoc.
FactAction.__doc__ = """What an extracted fact does to the user's knowledge.

``new`` adds an entry; ``same`` repeats a known entry (nothing is added); ``update``
adds an entry that supersedes a known one (the user moved, changed jobs...);
``invalidate`` ends a known entry without a replacement ("I quit my job").
"""

FACT_ACTIONS: tuple[FactAction, ...] = ("new", "same", "update", "invalidate")

extraction_deadline: ContextVar[float | None] = ContextVar("extraction_deadline", default=None)
"""The event loop's time at which the engine cuts the running ``extract`` call (its
``extraction_timeout``), ``None`` outside one: an extractor that would otherwise wait
past it (a retry after the ``retry-after`` an API asked for) can stop at once instead."""


_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 12
"""What a message costs in the prompt beyond its words: its id, role, time and JSON."""

_BELOW_LEAD = bytes(range(0xC0))
"""The bytes that start no multi-byte UTF-8 character (ASCII and continuation bytes)."""

_BELOW_WIDE_LEAD = bytes(range(0xE0))
"""The bytes that start no UTF-8 character of three or four bytes (U+0800 and up)."""


def estimate_tokens(content: str) -> int:
    """About how many prompt tokens a message of ``content`` costs, with its envelope.

    Claude's tokenizer merges bytes by how common they are, so the cost per character
    follows the script: four ASCII characters a token (English), two characters a token
    for those of two UTF-8 bytes (accented Latin, Greek, Cyrillic, Hebrew, Arabic
    letters), and one token for each character of three or four bytes (CJK ideographs,
    kana, hangul, Indic and Thai letters, emoji), which seldom merge: Chinese costs about
    a token a character, and four characters a token let a batch "of 20,000 tokens" hold
    75,000 of them. Erring high costs at most an extra request; low, an oversized prompt.
    No tokenizer is called, so it stays cheap on every append: ASCII text is counted by
    its length alone, other text by its UTF-8 lead bytes.
    """
    if content.isascii():
        return len(content) // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE
    leads = content.encode("utf-8", "surrogatepass").translate(None, _BELOW_LEAD)
    wide = len(leads.translate(None, _BELOW_WIDE_LEAD))
    narrow = len(leads) - wide
    plain = len(content) - len(leads)
    quarters = plain + 2 * narrow + _CHARS_PER_TOKEN * wide
    return quarters // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How big one extraction batch may be, and how often a lone message may fail.

    A batch takes at most ``max_messages`` buffered messages and about ``max_tokens`` of
    prompt (estimated by :func:`estimate_tokens`; one message is always taken, however
    long). A message that fails alone ``max_attempts`` times is quarantined.
    """

    max_messages: int = 50
    max_tokens: int = 20_000
    max_attempts: int = 3

    def full(self, count: int, tokens: int, weight: int, cap: int | None = None) -> bool:
        """Whether a batch of ``count`` messages weighing ``tokens`` is full before a
        message weighing ``weight``: the one rule every batch is cut by (live, re-extracted
        or sent in bulk). ``cap`` lowers ``max_messages`` (after a split); an empty batch
        always takes its first message, however long."""
        most = self.max_messages if cap is None else min(cap, self.max_messages)
        return count >= most or (count > 0 and tokens + weight > self.max_tokens)

    def gives_up(self, attempts: int) -> bool:
        """Whether a lone message is set aside after ``attempts`` failures of its own:
        quarantined by live extraction, left out of a re-extracted version. The one rule
        both go by, so a flaky API costs neither path a healthy message."""
        return attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The tokens one call spent: input, output, and the input read from or written to
    the prompt cache (counted apart from ``input_tokens``, as the Messages API does)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None

    def plus(self, more: TokenUsage) -> TokenUsage:
        """The tokens of two calls together (unknown counts stay unknown when both are)."""

        def total(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return TokenUsage(
            total(self.input_tokens, more.input_tokens),
            total(self.output_tokens, more.output_tokens),
            total(self.cache_read_tokens, more.cache_read_tokens),
            total(self.cache_write_tokens, more.cache_write_tokens),
        )


@dataclass(frozen=True, slots=True)
class BatchMessage:
    """One message of a batch, with the id that extracted facts must cite."""

    message_id: str
    role: str
    content: str
    sent_at: datetime
    name: str | None = None

    @classmethod
    def of(cls, message: _Said) -> BatchMessage:
        """The batch's copy of a stored message (a ``MessageAdded``, or a row of one)."""
        return cls(message.message_id, message.role, message.content, message.sent_at, message.name)


class _Said(Protocol):
    """What a stored message gives a batch."""

    @property
    def message_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def sent_at(self) -> datetime: ...
    @property
    def name(self) -> str | None: ...


def bounded(
    messages: Iterable[BatchMessage],
    limits: BatchLimits,
    alone: Collection[str] = frozenset(),
    caps: Mapping[str, int] | None = None,
) -> Iterator[list[BatchMessage]]:
    """``messages`` cut into batches as live extraction cuts them (:meth:`BatchLimits.full`),
    in order; those of ``alone`` (whose batch failed the same way before) go one a batch
    after the rest, as live extraction sends a message that failed alone, so that none
    of them fails the others again. A batch holding a message of ``caps`` takes at most
    that many messages (a split kept from a failed batch); one capped at one (a suspect
    of failures that may pass) goes after the rest too, so that the messages nobody
    suspects are answered first and never wait behind it."""
    caps = caps or {}
    batch: list[BatchMessage] = []
    tokens = 0
    cap: int | None = None
    held: list[BatchMessage] = []
    for message in messages:
        own = caps.get(message.message_id)
        if message.message_id in alone or own == 1:
            held.append(message)
            continue
        weight = estimate_tokens(message.content)
        joined = own if cap is None else cap if own is None else min(cap, own)
        if limits.full(len(batch), tokens, weight, joined):
            yield batch
            batch, tokens, joined = [], 0, own
        batch.append(message)
        tokens += weight
        cap = joined
    if batch:
        yield batch
    for message in held:
        yield [message]


def halved_caps(failed_calls: Iterable[Sequence[str]]) -> dict[str, int]:
    """The most messages each message of ``failed_calls`` (each a call's messages) is sent
    with next: half its failed call, the smallest half where it failed more than once,
    one for a lone message (see :func:`bounded`)."""
    caps: dict[str, int] = {}
    for message_ids in failed_calls:
        half = (len(message_ids) + 1) // 2
        for message_id in message_ids:
            caps[message_id] = min(caps.get(message_id, half), half)
    return caps


@dataclass(frozen=True, slots=True)
class KnownEntry:
    """A knowledge entry of the user that a batch may repeat or change: a current one
    (no ``valid_until``), or one invalidated after the batch's first message was sent,
    which a backdated batch is shown so that it can place its facts around that entry."""

    entry_id: str
    text: str
    valid_from: datetime
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExtractionBatch:
    """The messages of one processing task of one user, oldest first.

    ``known`` holds the user's current entries related to the batch (and, for a batch
    older than some of the user's ended entries, those), so that the extractor can say
    when a fact repeats, updates or invalidates one of them.
    """

    user_id: str
    task_id: str
    messages: tuple[BatchMessage, ...]
    known: tuple[KnownEntry, ...] = ()

    @property
    def message_ids(self) -> frozenset[str]:
        """The ids a fact of this batch may cite."""
        return frozenset(m.message_id for m in self.messages)


@dataclass(frozen=True, slots=True)
class ExtractedFact:
    """One knowledge entry as the extractor states it, with the messages it came from.

    ``action`` says what the fact does to the known entries; ``same``, ``update`` and
    ``invalidate`` name the known entry they concern in ``target_entry_id``. An ``update``
    or ``invalidate`` of a fact stated earlier in the same answer (the batch holds the
    change: "I live in Oslo", later "I moved to Bergen") names that fact's index in the
    answer in ``target_fact`` instead, so the history holds both, whatever the batching.
    """

    text: str
    source_message_ids: tuple[str, ...]
    action: FactAction = "new"
    target_entry_id: str | None = None
    target_fact: int | None = None


@dataclass(frozen=True, slots=True)
class ExtractionResult:
    """An extractor's answer for one batch."""

    facts: tuple[ExtractedFact, ...]
    extractor: str
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    notes: dict[str, str] = field(default_factory=dict)
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None

    @property
    def usage(self) -> TokenUsage:
        """The tokens the extraction spent."""
        return TokenUsage(
            self.input_tokens, self.output_tokens, self.cache_read_tokens, self.cache_write_tokens
        )

    def spending(self, usage: TokenUsage) -> ExtractionResult:
        """This answer counting ``usage`` as its tokens (what the calls it took spent)."""
        return replace(
            self,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )


@runtime_checkable
class Extractor(Protocol):
    """Turns a batch of messages into knowledge entries.

    ``extract`` runs on the engine's extraction loop (never on a user actor's thread),
    beside the other extractions: it must not block (a blocking call goes through
    ``asyncio.to_thread``), or it holds them all and no timeout can cut it off. It raises
    :class:`events.errors.ExtractionError` to fail the batch, which returns the batch's
    messages to the buffer. Set the error's ``repeats`` (or raise
    :class:`~events.errors.InvalidExtractionError`) when the same batch would fail again:
    the engine then splits it rather than backing off. Any other exception counts as
    repeating, except ``OSError`` and ``TimeoutError``. An extractor that holds clients
    may also have an ``async aclose()``: the engine awaits it when it stops, and an
    ``async prepare()``: the engine awaits it before each batch's timeout starts, to build
    what a call needs off the loop once (one without either is as welcome, so neither is
    part of the protocol).
    """

    name: str

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """Extract knowledge entries from ``batch``."""
        ...


class HarmlessRequests(ABC):
    """An extractor that can send a harmless request cheaply, to tell whether its API
    answers at all (a re-extraction run stopped by two failed calls in a row asks it).
    Declared by subclassing: a method named ``ping`` on any other extractor is its own
    business, and such an extractor is sent a batch of one harmless message instead."""

    @abstractmethod
    async def ping(self, batch: ExtractionBatch) -> TokenUsage:
        """Send ``batch`` (one harmless message) as cheaply as the API allows, its answer
        not read: returns what it spent, or raises the call's ExtractionError."""


MAX_TOKENS = 2**53
"""More tokens than any call spends: a larger count is a bad answer (a database's integer
column holds at most 2**63 - 1, and a sum of counts must fit too)."""

_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def check_result(result: object, extractor: str) -> ExtractionResult:
    """``result``, if it is an :class:`ExtractionResult` of the types the log records;
    else :class:`~events.errors.InvalidExtractionError`, an answer that repeats (its batch
    is split, a lone message quarantined).

    The dataclasses do not check their fields, so a custom extractor's answer of another
    shape would otherwise fail inside the write of its outcome, again at every retry.
    """

    def invalid(problem: str) -> InvalidExtractionError:
        return InvalidExtractionError(f"extractor {extractor!r} returned {problem}")

    def named(value: object) -> str:
        return type(value).__name__

    if not isinstance(result, ExtractionResult):
        raise invalid(f"{named(result)}, not an ExtractionResult")
    if not isinstance(result.facts, tuple | list):
        raise invalid(f"facts as a {named(result.facts)}, not a tuple of ExtractedFact")
    for index, fact in enumerate(result.facts):
        if not isinstance(fact, ExtractedFact):
            raise invalid(f"facts[{index}] as a {named(fact)}, not an ExtractedFact")
        if not isinstance(fact.text, str) or not isinstance(fact.action, str):
            raise invalid(f"facts[{index}] with a text or action that is not a str")
        ids = fact.source_message_ids
        if not isinstance(ids, tuple | list) or not all(isinstance(i, str) for i in ids):
            raise invalid(f"facts[{index}].source_message_ids that are not a tuple of str")
        if fact.target_entry_id is not None and not isinstance(fact.target_entry_id, str):
            raise invalid(f"facts[{index}].target_entry_id as a {named(fact.target_entry_id)}")
        earlier = fact.target_fact
        if earlier is not None and (isinstance(earlier, bool) or not isinstance(earlier, int)):
            raise invalid(f"facts[{index}].target_fact = {earlier!r}, not an index or None")
    if not isinstance(result.extractor, str):
        raise invalid(f"an extractor name that is a {named(result.extractor)}, not a str")
    if result.model is not None and not isinstance(result.model, str):
        raise invalid(f"a model that is a {named(result.model)}, not a str or None")
    for name in _TOKEN_FIELDS:
        value = getattr(result, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS
        ):
            raise invalid(f"{name} = {value!r}, not a count of tokens or None")
    return result
