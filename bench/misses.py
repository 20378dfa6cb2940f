"""``python -m bench.misses``: why retrieval misses the answer at 1 on the eval sets.

Each set is replayed as ``bench.eval`` replays it (offline extractor, messages included,
hybrid ranking at memvee's default weight or ``--alpha``, top 10); for every question
whose answer is not the first item, the first item is printed with the answer's own rank
and text, and the misses are counted by cause (:func:`cause`). Figures are printed, never
asserted."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.eval import (
    DATASET,
    EXTRA_DATASETS,
    MODE_TOP_K,
    Conversation,
    Position,
    Replayed,
    add_db_url_argument,
    backend_name,
    eval_config,
    load_dataset,
    ranked_ids,
    replay,
    server_url_of,
)
from memvee import Memory, MemoryConfig, RetrievalResult
from memvee._config import DEFAULT_ALPHA
from memvee._retrieval import Retriever
from memvee.extractors import OfflineExtractor
from projections.search import text_stems
from projections.terms import query_terms
from projections.vectors import ContainedEmbedder

__all__ = ["Miss", "cause", "first_item", "main", "misses"]

_SHORT_WORDS = 8
"""A message of at most this many words is "short": it holds few words beside the query's."""


@dataclass(frozen=True, slots=True)
class Miss:
    """A question whose answer was not first: what was, and where the answer came."""

    conversation: str
    question: str
    expected: str
    first_kind: str
    first_text: str
    first_score: float
    first_position: Position | None
    answer_rank: int | None
    answer_text: str
    cause: str


def cause(
    result: RetrievalResult,
    first_position: Position | None,
    stale: Sequence[Position],
    query: str,
) -> str:
    """The kind of item that came first, as one label: an entry or a message stating a
    value since changed (``stale``); a fact listed before a message that outscores it, or
    another fact; a user's message that only asks; an assistant's reply; a short message
    sharing a word of the query, or a longer one; a message found by meaning alone; or
    nothing returned at all (every item under the floor, or none found)."""
    if not result.entries and not result.messages:
        return "nothing returned"
    if result.entries:
        if first_position in stale:
            return "stale entry (value never replaced)"
        strongest = max((hit.score for hit in result.messages), default=0.0)
        if result.entries[0].score < strongest:
            return "fact listed before a stronger message"
        return "other fact"
    if first_position in stale:
        return "stale message"
    message = result.messages[0].message
    text = message.content
    if message.role == "user" and text.rstrip().endswith("?"):
        return "user question"
    if message.role == "assistant":
        return "assistant reply"
    asked = frozenset().union(*(text_stems(t) for t in query_terms(query).own))
    if asked.isdisjoint(text_stems(text)):
        return "message found by meaning"
    if len(text.split()) <= _SHORT_WORDS:
        return "short message sharing a query word"
    return "message sharing a query word"


def first_item(result: RetrievalResult) -> tuple[str, str, float]:
    """The kind, text and score of the item ``result`` lists first (facts come before
    messages); ``("nothing", "", 0.0)`` when it returned none."""
    if result.entries:
        return "entry", result.entries[0].text, result.entries[0].score
    if result.messages:
        hit = result.messages[0]
        return f"{hit.message.role} message", hit.message.content, hit.score
    return "nothing", "", 0.0


async def _misses(
    conversations: Sequence[Conversation], config: MemoryConfig, alpha: float
) -> tuple[list[Miss], list[int | None]]:
    """Replay ``conversations`` and rank each question: the questions missed at 1, and
    the rank of every question's answer (None when it is not returned)."""
    from memvee.embedders import OnnxMiniLMEmbedder

    found: list[Miss] = []
    ranks: list[int | None] = []
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
        replayed: list[Replayed] = [await replay(memory, c) for c in conversations]
        engine = memory._engine
        assert engine is not None
        retriever = Retriever(
            engine.store.engine,
            engine.tables,
            ContainedEmbedder(OnnxMiniLMEmbedder()),
            alpha=alpha,
        )
        for conversation, written in zip(conversations, replayed, strict=True):
            by_id = {i: p for p, i in written.user_message_ids.items()}
            turns = {
                (s, t): user
                for s, session in enumerate(conversation.sessions)
                for t, (user, _) in enumerate(session.turns)
            }
            for question in conversation.questions:
                result = await asyncio.to_thread(
                    retriever.retrieve, written.user_id, question.text, MODE_TOP_K, None, True
                )
                ranked = ranked_ids(result)
                answer_id = written.user_message_ids[question.answer]
                rank = next((i for i, ids in enumerate(ranked, 1) if answer_id in ids), None)
                ranks.append(rank)
                if rank == 1:
                    continue
                first = next((by_id[i] for i in ranked[0] if i in by_id), None) if ranked else None
                kind, text, score = first_item(result)
                found.append(
                    Miss(
                        conversation.id,
                        question.text,
                        question.expected,
                        kind,
                        text,
                        score,
                        first,
                        rank,
                        turns[question.answer],
                        cause(result, first, question.stale, question.text),
                    )
                )
    return found, ranks


def misses(
    path: Path, alpha: float = DEFAULT_ALPHA, server_url: str | None = None
) -> tuple[list[Miss], list[int | None]]:
    """The questions of the set at ``path`` missed at 1, and every answer's rank, ranked
    at the lexical weight ``alpha``; replayed into a SQLite file, or a database of its own
    on the PostgreSQL ``server_url`` (see :func:`bench.eval.eval_config`)."""
    with (
        tempfile.TemporaryDirectory(prefix="memvee-misses-") as folder,
        eval_config(Path(folder), "misses.db", server_url) as config,
    ):
        return asyncio.run(_misses(load_dataset(path), config, alpha))


def main(argv: list[str] | None = None) -> int:
    """Print each miss at 1 of every set, then the misses counted by cause."""
    parser = argparse.ArgumentParser(prog="python -m bench.misses", description=__doc__)
    parser.add_argument("--dataset", type=Path, action="append", help="a set (repeatable)")
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="the lexical weight (default: memvee's)"
    )
    add_db_url_argument(parser)
    args = parser.parse_args(argv)
    server_url = server_url_of(parser, args.db_url)
    backend = backend_name(server_url)
    paths = args.dataset or [DATASET, *EXTRA_DATASETS]
    for path in paths:
        found, ranks = misses(path, args.alpha, server_url)
        recall = [
            sum(1 for r in ranks if r is not None and r <= k) / len(ranks) for k in (1, 5, 10)
        ]
        print(
            f"== {path.name} on {backend}: {len(found)} of {len(ranks)} questions missed at 1; "
            f"recall@1 {recall[0]:.3f}, @5 {recall[1]:.3f}, @10 {recall[2]:.3f}"
        )
        for miss in found:
            print(
                f"- [{miss.conversation}] {miss.question!r} (expected {miss.expected!r}; "
                f"answer at {miss.answer_rank}: {miss.answer_text[:90]!r})"
            )
            print(
                f"    first: {miss.first_kind} {miss.first_score:.3f} turn {miss.first_position}"
                f" {miss.first_text[:110]!r}"
            )
            print(f"    cause: {miss.cause}")
        print(f"-- causes on {path.name}:")
        for label, count in Counter(m.cause for m in found).most_common():
            print(f"   {count:3d}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
