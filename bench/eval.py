"""``python -m bench.eval``: retrieval quality on the labelled conversations of the eval set.

Each conversation is replayed session by session into a fresh database (extraction runs
after every session, so later sessions can supersede earlier facts), then every question
is asked with and without raw messages. A question is answered when a ranked item cites
(an entry) or is (a message) the user message that states the current value; it is
stale at 1 when the first item cites or is a message with a value that has since changed.
The offline extractor always runs; Claude runs only when ``ANTHROPIC_API_KEY`` is set.
Scores are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from bench.bm25 import BM25
from bench.common import PROJECT_ROOT, Section, progress
from bench.report import make_console, print_section
from events import InvalidInputError, driver_url
from memvee import Extractor, Memory, MemoryConfig, RetrievalResult
from memvee._config import DEFAULT_ALPHA
from memvee.extractors import ClaudeExtractor, OfflineExtractor
from memvee.extractors._default import API_KEY_ENV_VAR
from projections.vectors import ContainedEmbedder

__all__ = [
    "DATASET",
    "TOP_K",
    "Conversation",
    "EvalRun",
    "Question",
    "QuestionScore",
    "Replayed",
    "Session",
    "Summary",
    "add_db_url_argument",
    "backend_name",
    "bm25_ranked",
    "bm25_scores",
    "details_section",
    "eval_config",
    "evaluate",
    "load_dataset",
    "main",
    "ranked_ids",
    "replay",
    "score_question",
    "server_url_of",
    "summarize",
]

DATASET = PROJECT_ROOT / "tests" / "data" / "eval" / "conversations.json"
"""The labelled evaluation set (its shape is checked by tests/data/test_eval_dataset.py)."""

TOP_K = 5
"""How many items each retrieval returns; recall@5 therefore counts every returned item."""

_CONCURRENT_CONVERSATIONS = 8
"""Conversations replayed at once: each is its own user, so they only share the database."""

_COLUMNS = (
    "extractor",
    "include_messages",
    "questions",
    "recall@1",
    "recall@5",
    "stale@1",
    "empty",
)
"""The columns of the results table: one row per extractor and retrieval mode."""

Position = tuple[int, int]
"""A turn of a conversation: (session index, turn index), both from 0."""


# ---------------------------------------------------------------------------- dataset


@dataclass(frozen=True, slots=True)
class Session:
    """One sitting of a conversation: when it started and its (user, assistant) turns."""

    at: datetime
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Question:
    """A question with the user turn that states the current answer and any stale turns."""

    text: str
    answer: Position
    stale: tuple[Position, ...]
    expected: str
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Conversation:
    """One labelled conversation: its sessions in order and the questions asked after it."""

    id: str
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]
    user_name: str | None = None
    assistant_name: str | None = None

    @property
    def user_id(self) -> str:
        """The memvee user the conversation is replayed as."""
        return f"eval-{self.id}"


def _position(ref: dict[str, Any]) -> Position:
    return int(ref["session"]), int(ref["turn"])


def load_dataset(path: Path = DATASET) -> list[Conversation]:
    """The conversations of the JSON file at ``path`` (the eval set's format, version 1)."""
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    conversations: list[Conversation] = []
    for raw in data["conversations"]:
        sessions = tuple(
            Session(
                at=datetime.fromisoformat(s["at"].replace("Z", "+00:00")),
                turns=tuple((str(user), str(assistant)) for user, assistant in s["turns"]),
            )
            for s in raw["sessions"]
        )
        questions = tuple(
            Question(
                text=q["question"],
                answer=_position(q["answer"]),
                stale=tuple(_position(ref) for ref in q["stale"]),
                expected=q["expected"],
                kinds=tuple(q.get("kinds", ())),
            )
            for q in raw["questions"]
        )
        conversations.append(
            Conversation(
                str(raw["id"]),
                sessions,
                questions,
                raw.get("user_name"),
                raw.get("assistant_name"),
            )
        )
    return conversations


# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class QuestionScore:
    """Where one question's answer was found: its 1-based ``rank`` (None when missed),
    whether the first item is stale, and whether nothing came back at all."""

    rank: int | None
    stale_at_1: bool
    empty: bool


@dataclass(frozen=True, slots=True)
class Summary:
    """Shares over ``questions`` questions (NaN when there are none)."""

    questions: int
    recall_at_1: float
    recall_at_5: float
    stale_at_1: float
    empty: float


def ranked_ids(result: RetrievalResult) -> list[frozenset[str]]:
    """The message ids each ranked item stands for, best first: an entry's sources, then
    each raw message with the other half of its exchange, shown with it (memvee shows an
    exchange once, as one item; the reference is scored by exchange too)."""
    ranked = [frozenset(hit.source_message_ids) for hit in result.entries]
    for hit in result.messages:
        halves = {hit.message.message_id}
        if hit.neighbour is not None:
            halves.add(hit.neighbour.message_id)
        ranked.append(frozenset(halves))
    return ranked


def score_question(
    ranked: Sequence[frozenset[str]], answer_id: str, stale_ids: frozenset[str]
) -> QuestionScore:
    """Score one ranking: the first position whose ids include ``answer_id``, and whether
    position 1 includes any of ``stale_ids``."""
    rank = next((i for i, ids in enumerate(ranked, start=1) if answer_id in ids), None)
    stale = bool(ranked) and not ranked[0].isdisjoint(stale_ids)
    return QuestionScore(rank=rank, stale_at_1=stale, empty=not ranked)


def summarize(scores: Sequence[QuestionScore]) -> Summary:
    """Recall at 1 and 5, stale at 1 and the empty share over ``scores``."""
    n = len(scores)

    def share(test: Callable[[QuestionScore], bool]) -> float:
        return sum(1 for s in scores if test(s)) / n if n else math.nan

    return Summary(
        questions=n,
        recall_at_1=share(lambda s: s.rank == 1),
        recall_at_5=share(lambda s: s.rank is not None and s.rank <= 5),
        stale_at_1=share(lambda s: s.stale_at_1),
        empty=share(lambda s: s.empty),
    )


def bm25_scores(conversation: Conversation, top: int) -> list[QuestionScore]:
    """Each question of ``conversation`` scored on the plain BM25 reference: every user and
    assistant message of every session a document, each ranked message shown with the
    other half of its exchange (as memvee shows it), the ``top`` best exchanges."""
    turns: list[frozenset[str]] = []
    texts: list[str] = []
    for s, session in enumerate(conversation.sessions):
        for t, (user_text, assistant_text) in enumerate(session.turns):
            turn = frozenset({_turn_key((s, t)), f"{s}:{t}:assistant"})
            turns += [turn, turn]
            texts += [user_text, assistant_text]
    index = BM25(texts)
    scores: list[QuestionScore] = []
    for question in conversation.questions:
        ranked = list(dict.fromkeys(turns[i] for i in index.rank(question.text, 2 * top)))[:top]
        stale = frozenset(_turn_key(p) for p in question.stale)
        scores.append(score_question(ranked, _turn_key(question.answer), stale))
    return scores


def _turn_key(position: Position) -> str:
    """The reference's name for the user message at ``position``."""
    return f"{position[0]}:{position[1]}:user"


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class Replayed:
    """A conversation written into memvee: the id of each user message by its position,
    and how many knowledge entries its extraction runs produced."""

    user_id: str
    user_message_ids: dict[Position, str]
    extracted: int


@dataclass(frozen=True, slots=True)
class EvalRun:
    """One extractor's results per ``include_messages`` mode (each question's score, in
    dataset order, and their summary), the entries extracted (and still current at the
    end), and the seconds spent replaying and asking."""

    extractor: str
    scores: dict[bool, list[QuestionScore]]
    summaries: dict[bool, Summary]
    extracted: int
    current: int
    replay_seconds: float
    query_seconds: float


async def replay(memory: Memory, conversation: Conversation) -> Replayed:
    """Add every turn, session by session (turn ``i`` sent ``i`` minutes after the session
    starts, with the speakers' names when the set gives them), and flush the user after
    each session, as an agent would between sittings."""
    user_id = conversation.user_id
    ids: dict[Position, str] = {}
    extracted = 0
    for s, session in enumerate(conversation.sessions):
        for t, (user_text, assistant_text) in enumerate(session.turns):
            sent_at = session.at + timedelta(minutes=t)
            user_message, _ = await memory.add_exchange(
                user_id,
                user_text,
                assistant_text,
                sent_at=sent_at,
                user_name=conversation.user_name,
                assistant_name=conversation.assistant_name,
            )
            ids[(s, t)] = user_message.message_id
        extracted += await memory.flush(user_id)
    return Replayed(user_id, ids, extracted)


async def _ask(
    memory: Memory, conversation: Conversation, replayed: Replayed, include_messages: bool
) -> list[QuestionScore]:
    scores: list[QuestionScore] = []
    for question in conversation.questions:
        result = await memory.retrieve(
            replayed.user_id, question.text, top_k=TOP_K, include_messages=include_messages
        )
        answer_id = replayed.user_message_ids[question.answer]
        stale_ids = frozenset(replayed.user_message_ids[p] for p in question.stale)
        scores.append(score_question(ranked_ids(result), answer_id, stale_ids))
    return scores


async def evaluate(
    conversations: Sequence[Conversation],
    extractor: Extractor,
    folder: Path,
    embedder: Any = None,
    server_url: str | None = None,
) -> EvalRun:
    """Replay ``conversations`` into a new database with ``extractor``, then ask every
    question in both modes: a SQLite file in ``folder``, left for the caller to delete, or,
    given a PostgreSQL ``server_url``, a database of its own there (see :func:`eval_config`).

    ``embedder`` is passed to the Memory (default: memvee's default, hybrid ranking).
    """
    with eval_config(folder, "eval.db", server_url) as config:
        return await _evaluate(conversations, extractor, config, embedder)


async def _evaluate(
    conversations: Sequence[Conversation],
    extractor: Extractor,
    config: MemoryConfig,
    embedder: Any,
) -> EvalRun:
    limit = asyncio.Semaphore(_CONCURRENT_CONVERSATIONS)
    name = str(getattr(extractor, "name", type(extractor).__name__))
    async with Memory(config=config, extractor=extractor, embedder=embedder) as memory:

        async def _one(conversation: Conversation) -> Replayed:
            async with limit:
                return await replay(memory, conversation)

        started = time.perf_counter()
        replayed = await asyncio.gather(*(_one(c) for c in conversations))
        replay_seconds = time.perf_counter() - started
        engine = memory._engine
        if engine is not None and engine.vector_filler is not None:
            # Ranking as it settles: a search leaves a long backlog to this filler.
            await asyncio.to_thread(engine.vector_filler.wait_idle, 3600)
        started = time.perf_counter()
        scores: dict[bool, list[QuestionScore]] = {}
        for include_messages in (False, True):
            scores[include_messages] = []
            for conversation, written in zip(conversations, replayed, strict=True):
                asked = await _ask(memory, conversation, written, include_messages)
                scores[include_messages].extend(asked)
        query_seconds = time.perf_counter() - started
        current = 0
        for written in replayed:
            current += len(await memory.knowledge(written.user_id))
    return EvalRun(
        extractor=name,
        scores=scores,
        summaries={mode: summarize(found) for mode, found in scores.items()},
        extracted=sum(r.extracted for r in replayed),
        current=current,
        replay_seconds=replay_seconds,
        query_seconds=query_seconds,
    )


def _run(
    conversations: Sequence[Conversation], extractor: Extractor, server_url: str | None
) -> EvalRun:
    with tempfile.TemporaryDirectory(prefix="memvee-eval-") as folder:
        return asyncio.run(evaluate(conversations, extractor, Path(folder), server_url=server_url))


# ---------------------------------------------------------------------------- backends


@contextmanager
def eval_config(folder: Path, name: str, server_url: str | None = None) -> Iterator[MemoryConfig]:
    """The configuration a replay writes with: the SQLite file ``name`` in ``folder``, or,
    given a PostgreSQL ``server_url``, a database made for this replay alone on that server
    and dropped when the block ends, so runs never see each other's rows."""
    if server_url is None:
        yield MemoryConfig(db_path=str(folder / name), durability="normal")
        return
    server = make_url(server_url)
    database = f"memvee_eval_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}" TEMPLATE template0'))
        try:
            url = server.set(database=database).render_as_string(hide_password=False)
            yield MemoryConfig(db_url=url, durability="normal")
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def backend_name(server_url: str | None) -> str:
    """The database a run replays into, as its reports name it."""
    if server_url is None:
        return "SQLite"
    admin = create_engine(make_url(server_url))
    try:
        with admin.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
    finally:
        admin.dispose()
    return f"PostgreSQL {str(version).split()[0]}"


# ---------------------------------------------------------------------------- report


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _ratio(ours: float, reference: float) -> str:
    """``ours`` as a multiple of ``reference`` ("-" when either is missing or zero)."""
    if math.isnan(ours) or math.isnan(reference) or reference == 0.0:
        return "-"
    return f"{ours / reference:.2f}x"


_REFERENCE = "plain BM25"
"""The reference's label in the tables: :class:`bench.bm25.BM25` over the raw turns."""

_REFERENCE_NOTE = (
    "plain BM25: the reference, measured on the same questions in this run; every user and "
    "assistant message of the conversation is a document, lower-cased words, no stemming "
    "(bench/bm25.py); a hit stands for its whole exchange, as memvee's do, each exchange "
    "counted once."
)


def report_section(
    runs: Sequence[EvalRun],
    total_questions: int,
    with_stale: int,
    reference: Summary | None = None,
    backend: str = "SQLite",
) -> Section:
    """The results as one table: a row per extractor and ``include_messages`` mode, and
    the plain BM25 ``reference`` measured on the same questions, when given; ``backend``
    names the database memvee ranked in."""
    section = Section(
        title=(
            f"Retrieval on the eval set, {backend} (top_k={TOP_K}; scores are reported, "
            "never asserted)"
        ),
        columns=list(_COLUMNS),
    )
    if reference is not None:
        section.rows.append(
            [
                _REFERENCE,
                "raw turns",
                str(reference.questions),
                _share(reference.recall_at_1),
                _share(reference.recall_at_5),
                _share(reference.stale_at_1),
                _share(reference.empty),
            ]
        )
    for run in runs:
        for include_messages, summary in run.summaries.items():
            section.rows.append(
                [
                    run.extractor,
                    str(include_messages),
                    str(summary.questions),
                    _share(summary.recall_at_1),
                    _share(summary.recall_at_5),
                    _share(summary.stale_at_1),
                    _share(summary.empty),
                ]
            )
    for run in runs:
        section.notes.append(
            f"{run.extractor}: {run.extracted:,} knowledge entries extracted "
            f"({run.current:,} still current); replay with extraction "
            f"{run.replay_seconds:,.1f} s, {2 * total_questions:,} retrievals "
            f"{run.query_seconds:,.1f} s."
        )
    section.notes.append(
        "A hit: an entry citing the answer's user message, or that message itself."
    )
    if reference is not None:
        section.notes.append(_REFERENCE_NOTE)
        for run in runs:
            ours = run.summaries.get(True)
            if ours is not None:
                section.notes.append(
                    f"{run.extractor}, messages included, against the reference: recall@1 "
                    f"{_ratio(ours.recall_at_1, reference.recall_at_1)}, recall@5 "
                    f"{_ratio(ours.recall_at_5, reference.recall_at_5)}."
                )
    section.notes.append(
        f"stale@1 is over all questions; {with_stale} of {total_questions} have an "
        "earlier value that has since changed."
    )
    return section


# ---------------------------------------------------------------------------- ranking modes

ALPHAS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
"""The lexical weights swept: 1.0 is lexical only, 0.0 semantic only."""

MODE_TOP_K = 10

Ranked = list[tuple[tuple[str, ...], int | None]]
"""Each question's kinds and the rank of its answer (None when missed)."""


@dataclass(frozen=True, slots=True)
class ModeScores:
    """Recall at 1, 5 and 10 of one ranking mode over ``questions`` questions."""

    questions: int
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float


def mode_scores(ranked: Ranked, kind: str | None = None) -> ModeScores:
    """Recall over the questions (of ``kind``, when given)."""
    ranks = [rank for kinds, rank in ranked if kind is None or kind in kinds]
    n = len(ranks)

    def share(k: int) -> float:
        return sum(1 for r in ranks if r is not None and r <= k) / n if n else math.nan

    return ModeScores(n, share(1), share(5), share(10))


async def evaluate_modes(
    conversations: Sequence[Conversation],
    folder: Path,
    embedder: Any,
    server_url: str | None = None,
) -> dict[float, Ranked]:
    """Replay with the offline extractor (into ``folder``, or a database of its own on
    the PostgreSQL ``server_url``: see :func:`eval_config`), then rank every question
    (messages included, top 10) at each lexical weight of :data:`ALPHAS`."""
    with eval_config(folder, "modes.db", server_url) as config:
        return await _evaluate_modes(conversations, config, embedder)


async def _evaluate_modes(
    conversations: Sequence[Conversation], config: MemoryConfig, embedder: Any
) -> dict[float, Ranked]:
    from memvee._retrieval import Retriever

    limit = asyncio.Semaphore(_CONCURRENT_CONVERSATIONS)
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:

        async def _one(conversation: Conversation) -> Replayed:
            async with limit:
                return await replay(memory, conversation)

        replayed = await asyncio.gather(*(_one(c) for c in conversations))
        engine = memory._engine
        assert engine is not None
        results: dict[float, Ranked] = {}
        contained = ContainedEmbedder(embedder)
        for alpha in ALPHAS:
            retriever = Retriever(
                engine.store.engine, engine.tables, None if alpha == 1.0 else contained, alpha=alpha
            )
            ranked: Ranked = []
            for conversation, written in zip(conversations, replayed, strict=True):
                for question in conversation.questions:
                    result = await asyncio.to_thread(
                        retriever.retrieve, written.user_id, question.text, MODE_TOP_K, None, True
                    )
                    answer_id = written.user_message_ids[question.answer]
                    scored = score_question(ranked_ids(result), answer_id, frozenset())
                    ranked.append((question.kinds, scored.rank))
            results[alpha] = ranked
    return results


def bm25_ranked(conversations: Sequence[Conversation]) -> Ranked:
    """Each question's kinds and the rank of its answer among the plain BM25 reference's
    top :data:`MODE_TOP_K` turns."""
    return [
        (question.kinds, score.rank)
        for conversation in conversations
        for question, score in zip(
            conversation.questions, bm25_scores(conversation, MODE_TOP_K), strict=True
        )
    ]


def modes_section(
    name: str,
    results: dict[float, Ranked],
    reference: Ranked | None = None,
    backend: str = "SQLite",
) -> Section:
    """A table of recall per lexical weight (lexical only and semantic only included), with
    recall@10 per kind of question where the set labels kinds; the plain BM25
    ``reference`` first, when given, and each mode's recall@10 against it; ``backend``
    names the database memvee ranked in."""
    kinds = sorted({k for ranked in results.values() for ks, _ in ranked for k in ks})
    section = Section(
        title=(
            f"Ranking modes on {name}, {backend} (offline extractor, messages included, top 10)"
        ),
        columns=[
            "ranking",
            "alpha",
            "questions",
            "recall@1",
            "recall@5",
            "recall@10",
            *(f"@10 {k}" for k in kinds),
        ],
    )
    rows: list[tuple[str, str, Ranked]] = []
    if reference is not None:
        rows.append((_REFERENCE, "-", reference))
    for alpha, ranked in results.items():
        label = "lexical only" if alpha == 1.0 else "semantic only" if alpha == 0.0 else "hybrid"
        rows.append((label, f"{alpha:.1f}", ranked))
    for label, alpha_text, ranked in rows:
        scores = mode_scores(ranked)
        section.rows.append(
            [
                label,
                alpha_text,
                str(scores.questions),
                _share(scores.recall_at_1),
                _share(scores.recall_at_5),
                _share(scores.recall_at_10),
                *(_share(mode_scores(ranked, k).recall_at_10) for k in kinds),
            ]
        )
    if reference is not None:
        section.notes.append(_REFERENCE_NOTE)
        floor = mode_scores(reference)
        for alpha in (a for a in (DEFAULT_ALPHA, 1.0) if a in results):
            ours = mode_scores(results[alpha])
            label = "lexical only" if alpha == 1.0 else f"memvee's default (hybrid, alpha {alpha})"
            section.notes.append(
                f"{label} against the reference: recall@1 "
                f"{_ratio(ours.recall_at_1, floor.recall_at_1)}, recall@5 "
                f"{_ratio(ours.recall_at_5, floor.recall_at_5)}, recall@10 "
                f"{_ratio(ours.recall_at_10, floor.recall_at_10)}."
            )
    return section


def details_section(name: str, conversations: Sequence[Conversation], ranked: Ranked) -> Section:
    """Each question of ``conversations`` with the rank of its answer in ``ranked`` (their
    questions in dataset order, as :func:`evaluate_modes` gives them): run at two commits,
    the rows tell which question a change of recall gained or lost."""
    section = Section(
        title=f"Each question of {name} at memvee's default weight (alpha {DEFAULT_ALPHA:.1f})",
        columns=["question", "conversation", "kinds", f"rank (top {MODE_TOP_K})"],
    )
    questions = [(c.id, q) for c in conversations for q in c.questions]
    for (conversation, question), (kinds, rank) in zip(questions, ranked, strict=True):
        section.rows.append(
            [question.text, conversation, ",".join(kinds), "-" if rank is None else str(rank)]
        )
    section.notes.append("-: the answer is not among the items returned.")
    return section


def choose_alpha(per_set: Sequence[dict[float, Ranked]]) -> float:
    """The hybrid weight with the best recall@10 averaged over the sets (then recall@5)."""
    hybrid = [a for a in ALPHAS if 0.0 < a < 1.0]

    def mean(alpha: float, pick: Callable[[ModeScores], float]) -> float:
        return sum(pick(mode_scores(results[alpha])) for results in per_set) / len(per_set)

    return max(
        hybrid, key=lambda a: (mean(a, lambda s: s.recall_at_10), mean(a, lambda s: s.recall_at_5))
    )


def main(argv: list[str] | None = None) -> int:
    """Evaluate with the offline extractor (and Claude when a key is set); print the table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__)
    parser.add_argument("--dataset", type=Path, default=DATASET, help="the eval set (JSON)")
    parser.add_argument(
        "--details",
        action="store_true",
        help="also print the rank of each question's answer at the default weight, per set",
    )
    add_db_url_argument(parser)
    args = parser.parse_args(argv)
    server_url = server_url_of(parser, args.db_url)
    backend = backend_name(server_url)
    conversations = load_dataset(args.dataset)
    total = sum(len(c.questions) for c in conversations)
    with_stale = sum(1 for c in conversations for q in c.questions if q.stale)
    console = make_console()
    console.print(
        f"[bold]memvee retrieval evaluation[/bold] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - "
        f"{len(conversations)} conversations, {total} questions - {backend} - "
        f"Python {platform.python_version()}"
    )
    console.print()
    runs: list[EvalRun] = []
    progress("extractor offline")
    runs.append(_run(conversations, OfflineExtractor(), server_url))
    if os.environ.get(API_KEY_ENV_VAR, "").strip():
        progress("extractor claude")
        try:
            runs.append(_run(conversations, ClaudeExtractor(), server_url))
        except Exception as error:
            console.print(f"[red]Claude run failed:[/red] {type(error).__name__}: {error}")
            console.print()
    else:
        console.print(f"Claude skipped: {API_KEY_ENV_VAR} is not set.")
        console.print()
    reference = summarize([score for c in conversations for score in bm25_scores(c, TOP_K)])
    print_section(console, report_section(runs, total, with_stale, reference, backend))
    paths = [args.dataset, *(p for p in EXTRA_DATASETS if p != args.dataset)]
    _print_modes(console, paths, details=args.details, server_url=server_url, backend=backend)
    return 0


def add_db_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--db-url``: replay into PostgreSQL instead of a SQLite file."""
    parser.add_argument(
        "--db-url",
        metavar="URL",
        help=(
            "replay into a fresh database on this PostgreSQL server (dropped at the end) "
            "instead of a SQLite file; `make eval-postgres` passes the throwaway server of "
            "scripts/with-postgres.sh"
        ),
    )


def server_url_of(parser: argparse.ArgumentParser, db_url: str | None) -> str | None:
    """The PostgreSQL server ``--db-url`` names (None: SQLite); an empty or non-PostgreSQL
    URL stops the command, as an unset server variable passed on would otherwise run the
    SQLite eval under a PostgreSQL label."""
    if db_url is None:
        return None
    if not db_url.strip():
        parser.error("--db-url is empty: no PostgreSQL server was given")
    try:
        url = driver_url(db_url, name="--db-url")
    except InvalidInputError as error:
        parser.error(str(error))
    if make_url(url).get_backend_name() != "postgresql":
        parser.error("--db-url must name a PostgreSQL server")
    return url


EXTRA_DATASETS = (PROJECT_ROOT / "tests" / "data" / "eval" / "people.json",)
"""More labelled sets for the ranking modes: long two-person conversations."""


def _print_modes(
    console: Any,
    paths: Sequence[Path],
    *,
    details: bool = False,
    server_url: str | None = None,
    backend: str = "SQLite",
) -> None:
    """Lexical, semantic and hybrid ranking on each set, and the weight they point to; with
    ``details``, each question's rank at the default weight too."""
    from memvee.embedders import OnnxMiniLMEmbedder

    embedder = OnnxMiniLMEmbedder()
    per_set: list[dict[float, Ranked]] = []
    for path in paths:
        if not path.exists():
            continue
        progress(f"ranking modes on {path.name}")
        conversations = load_dataset(path)
        with tempfile.TemporaryDirectory(prefix="memvee-eval-") as folder:
            results = asyncio.run(evaluate_modes(conversations, Path(folder), embedder, server_url))
        per_set.append(results)
        reference = bm25_ranked(conversations)
        print_section(console, modes_section(path.name, results, reference, backend))
        if details and DEFAULT_ALPHA in results:
            print_section(
                console, details_section(path.name, conversations, results[DEFAULT_ALPHA])
            )
    if per_set:
        best = choose_alpha(per_set)
        console.print(
            f"The hybrid weight with the best recall@10 averaged over these sets: alpha = "
            f"{best:.1f} (memvee's default is {DEFAULT_ALPHA:.1f})."
        )


if __name__ == "__main__":
    sys.exit(main())
