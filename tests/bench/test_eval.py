"""The retrieval evaluation harness (bench/eval.py) computes what it claims to.

Only the harness is checked: metric arithmetic on hand-made rankings, the mapping from
dataset positions to message ids, and one small end-to-end run. No score threshold is
asserted; retrieval quality is reported by ``make eval``, not tested.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from bench.eval import (
    DATASET,
    EvalRun,
    QuestionScore,
    Summary,
    backend_name,
    bm25_ranked,
    bm25_scores,
    details_section,
    eval_config,
    evaluate,
    load_dataset,
    main,
    modes_section,
    ranked_ids,
    replay,
    report_section,
    score_question,
    server_url_of,
    summarize,
)
from memvee import Memory, MemoryConfig, RetrievalResult, RetrievedEntry, RetrievedMessage
from memvee.extractors import OfflineExtractor
from projections import KnowledgeEntry, Message
from tests.support.backends import postgres_url

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NO_STALE: frozenset[str] = frozenset()


def _ids(*names: str) -> frozenset[str]:
    return frozenset(names)


# ---------------------------------------------------------------------------- metrics


def test_hit_at_rank_one() -> None:
    score = score_question([_ids("a"), _ids("b")], "a", NO_STALE)
    assert score == QuestionScore(rank=1, stale_at_1=False, empty=False)


def test_hit_at_rank_three_within_an_entry_citing_several_messages() -> None:
    score = score_question([_ids("b"), _ids("c"), _ids("d", "a")], "a", NO_STALE)
    assert score == QuestionScore(rank=3, stale_at_1=False, empty=False)


def test_miss() -> None:
    score = score_question([_ids("b"), _ids("c")], "a", _ids("s"))
    assert score == QuestionScore(rank=None, stale_at_1=False, empty=False)


def test_stale_at_one_counts_only_the_first_item() -> None:
    first = score_question([_ids("s", "b"), _ids("a")], "a", _ids("s"))
    assert first == QuestionScore(rank=2, stale_at_1=True, empty=False)
    later = score_question([_ids("a"), _ids("s")], "a", _ids("s"))
    assert later == QuestionScore(rank=1, stale_at_1=False, empty=False)


def test_empty_ranking() -> None:
    assert score_question([], "a", _ids("s")) == QuestionScore(None, False, True)


def test_summarize_shares() -> None:
    scores = [
        QuestionScore(rank=1, stale_at_1=False, empty=False),
        QuestionScore(rank=3, stale_at_1=False, empty=False),
        QuestionScore(rank=2, stale_at_1=True, empty=False),
        QuestionScore(rank=6, stale_at_1=False, empty=False),
        QuestionScore(rank=None, stale_at_1=False, empty=False),
        QuestionScore(rank=None, stale_at_1=False, empty=True),
    ]
    assert summarize(scores) == Summary(
        questions=6, recall_at_1=1 / 6, recall_at_5=3 / 6, stale_at_1=1 / 6, empty=1 / 6
    )


def test_summarize_nothing_is_nan_not_zero() -> None:
    summary = summarize([])
    assert summary.questions == 0
    assert math.isnan(summary.recall_at_1) and math.isnan(summary.empty)


def test_ranked_ids_lists_entries_then_messages_with_their_neighbours() -> None:
    def message(message_id: str, seq: int, role: str) -> Message:
        return Message(message_id, "u", seq, role, "text", NOW)

    entry = KnowledgeEntry("e1", "u", "fact", "t1", ("m1", "m3"), NOW, "offline", None, NOW)
    result = RetrievalResult(
        "u",
        "query",
        None,
        entries=[RetrievedEntry(entry, 1.0)],
        messages=[RetrievedMessage(message("m5", 5, "user"), 0.5, message("m6", 6, "assistant"))],
    )
    assert ranked_ids(result) == [_ids("m1", "m3"), _ids("m5", "m6")]


# ---------------------------------------------------------------------------- dataset

TINY: dict[str, Any] = {
    "version": 1,
    "conversations": [
        {
            "id": "t01",
            "sessions": [
                {
                    "at": "2026-01-03T10:00:00Z",
                    "turns": [
                        ["I live in Oslo.", "Nice city."],
                        ["On Sundays I practise the theremin.", "What a rare instrument!"],
                        ["What should I cook tonight?", "Try a mushroom risotto."],
                    ],
                },
                {
                    "at": "2026-02-14T18:30:00Z",
                    "turns": [
                        ["I moved to Bergen last week.", "Congratulations on the move!"],
                        ["It rains a lot here.", "Good rain gear helps."],
                    ],
                },
            ],
            "questions": [
                {
                    "question": "where do I live now?",
                    "answer": {"session": 1, "turn": 0},
                    "stale": [{"session": 0, "turn": 0}],
                    "expected": "Bergen",
                },
                {
                    "question": "theremin",
                    "answer": {"session": 0, "turn": 1},
                    "stale": [],
                    "expected": "theremin",
                },
            ],
        },
        {
            "id": "t02",
            "sessions": [
                {
                    "at": "2026-03-01T08:00:00Z",
                    "turns": [
                        ["My name is Zdenka.", "Nice to meet you, Zdenka."],
                        ["I work at Acme as a welder.", "Sounds like hard work."],
                    ],
                }
            ],
            "questions": [
                {
                    "question": "what is the user's job",
                    "answer": {"session": 0, "turn": 1},
                    "stale": [],
                    "expected": "welder",
                }
            ],
        },
    ],
}


def _write_tiny(tmp_path: Path) -> Path:
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(TINY), encoding="utf-8")
    return path


def test_load_dataset_reads_positions_and_utc_times(tmp_path: Path) -> None:
    first, second = load_dataset(_write_tiny(tmp_path))
    assert (first.id, first.user_id) == ("t01", "eval-t01")
    assert first.sessions[1].at == datetime(2026, 2, 14, 18, 30, tzinfo=UTC)
    assert first.sessions[0].turns[1] == (
        "On Sundays I practise the theremin.",
        "What a rare instrument!",
    )
    assert first.questions[0].answer == (1, 0)
    assert first.questions[0].stale == ((0, 0),)
    assert [q.text for q in second.questions] == ["what is the user's job"]


def test_the_shipped_dataset_loads() -> None:
    conversations = load_dataset(DATASET)
    assert conversations
    for conversation in conversations:
        for question in conversation.questions:
            s, t = question.answer
            assert 0 <= t < len(conversation.sessions[s].turns)


async def test_replay_maps_each_position_to_its_user_message(tmp_path: Path) -> None:
    conversation = load_dataset(_write_tiny(tmp_path))[0]
    config = MemoryConfig(db_path=str(tmp_path / "db" / "eval.db"))
    async with Memory(config=config, extractor=OfflineExtractor()) as memory:
        replayed = await replay(memory, conversation)
        stored = {m.message_id: m for m in await memory.messages(replayed.user_id)}
        assert await memory.buffer(replayed.user_id) == []
    expected_positions = {
        (s, t) for s, session in enumerate(conversation.sessions) for t in range(len(session.turns))
    }
    assert set(replayed.user_message_ids) == expected_positions
    assert len(set(replayed.user_message_ids.values())) == len(expected_positions)
    for (s, t), message_id in replayed.user_message_ids.items():
        message = stored[message_id]
        session = conversation.sessions[s]
        assert message.role == "user"
        assert message.content == session.turns[t][0]
        assert message.sent_at == session.at + timedelta(minutes=t)


# ---------------------------------------------------------------------------- the reference


def test_the_bm25_reference_ranks_the_raw_turns_of_each_conversation(tmp_path: Path) -> None:
    first, second = load_dataset(_write_tiny(tmp_path))
    where, theremin = bm25_scores(first, 5)
    # "I live in Oslo." shares "i" and "live" with the question: the stale turn comes first,
    # and the answer ("I moved to Bergen last week.") only fourth, on its "i".
    assert where == QuestionScore(rank=4, stale_at_1=True, empty=False)
    assert theremin == QuestionScore(rank=1, stale_at_1=False, empty=False)
    assert bm25_scores(first, 3)[0].rank is None
    # "what is the user's job" shares no word with "I work at Acme as a welder."
    assert bm25_scores(second, 5) == [QuestionScore(rank=None, stale_at_1=False, empty=False)]
    assert bm25_ranked([first, second]) == [((), 4), ((), 1), ((), None)]


def test_the_reports_put_the_reference_first_and_set_memvee_against_it() -> None:
    reference = Summary(questions=4, recall_at_1=0.25, recall_at_5=0.5, stale_at_1=0.0, empty=0.0)
    ours = Summary(questions=4, recall_at_1=0.5, recall_at_5=0.75, stale_at_1=0.0, empty=0.0)
    run = EvalRun("offline", {True: []}, {True: ours}, 0, 0, 0.0, 0.0)
    section = report_section([run], 4, 0, reference)
    assert section.rows[0][:5] == ["plain BM25", "raw turns", "4", "0.25", "0.50"]
    assert section.rows[1][:5] == ["offline", "True", "4", "0.50", "0.75"]
    assert any("recall@1 2.00x, recall@5 1.50x" in note for note in section.notes)

    modes = modes_section("set", {1.0: [((), 1), ((), None)]}, [((), 2), ((), None)])
    assert [row[:6] for row in modes.rows] == [
        ["plain BM25", "-", "2", "0.00", "0.50", "0.50"],
        ["lexical only", "1.0", "2", "0.50", "0.50", "0.50"],
    ]
    assert any("recall@1 -, recall@5 1.00x, recall@10 1.00x" in n for n in modes.notes)


def test_the_details_name_each_question_with_the_rank_of_its_answer(tmp_path: Path) -> None:
    conversations = load_dataset(_write_tiny(tmp_path))
    section = details_section("set", conversations, [((), 4), (("plain",), 1), ((), None)])
    assert section.rows == [
        ["where do I live now?", "t01", "", "4"],
        ["theremin", "t01", "plain", "1"],
        ["what is the user's job", "t02", "", "-"],
    ]


# ---------------------------------------------------------------------------- end to end


async def test_end_to_end_with_the_offline_extractor(
    tmp_path: Path, eval_server: str | None
) -> None:
    conversations = load_dataset(_write_tiny(tmp_path))
    folder = tmp_path / "db"
    folder.mkdir()
    run = await evaluate(
        conversations, OfflineExtractor(), folder, embedder=False, server_url=eval_server
    )
    assert run.extractor == "offline"
    assert set(run.summaries) == {False, True}
    for include_messages, summary in run.summaries.items():
        assert summary.questions == 3
        assert len(run.scores[include_messages]) == 3
        for value in (summary.recall_at_1, summary.recall_at_5, summary.stale_at_1):
            assert 0.0 <= value <= 1.0
        assert 0.0 <= summary.empty <= 1.0
    assert run.extracted >= 0 and run.current >= 0
    assert run.replay_seconds >= 0 and run.query_seconds >= 0
    # Only the answer message says "theremin": with raw messages it must come first,
    # either as that message or as an entry extracted from it.
    theremin = 1
    assert conversations[0].questions[theremin].text == "theremin"
    assert run.scores[True][theremin].rank == 1


def _eval_databases(server_url: str) -> list[str]:
    engine = create_engine(server_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'memvee_eval_%'")
            )
            return sorted(found.scalars())
    finally:
        engine.dispose()


async def test_an_eval_on_postgresql_replays_into_a_database_of_its_own_dropped_at_the_end(
    tmp_path: Path,
) -> None:
    server = postgres_url()
    before = _eval_databases(server)
    conversations = load_dataset(_write_tiny(tmp_path))
    seen: list[str] = []
    with eval_config(tmp_path, "unused.db", server) as config:
        assert config.db_url is not None
        database = make_url(config.db_url).database
        assert database is not None and database != make_url(server).database
        seen = [d for d in _eval_databases(server) if d not in before]
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            replayed = await replay(memory, conversations[0])
            assert len(await memory.messages(replayed.user_id)) == 10
    assert seen == [database]
    assert _eval_databases(server) == before
    assert not (tmp_path / "unused.db").exists()


def test_the_tables_name_the_backend_memvee_ranked_in() -> None:
    ours = Summary(questions=1, recall_at_1=1.0, recall_at_5=1.0, stale_at_1=0.0, empty=0.0)
    run = EvalRun("offline", {True: []}, {True: ours}, 0, 0, 0.0, 0.0)
    assert "SQLite" in report_section([run], 1, 0).title
    assert "PostgreSQL 15.4" in report_section([run], 1, 0, backend="PostgreSQL 15.4").title
    modes = modes_section("set", {1.0: [((), 1)]}, backend="PostgreSQL 15.4")
    assert "on set, PostgreSQL 15.4" in modes.title
    assert backend_name(None) == "SQLite"


def test_the_eval_is_refused_a_db_url_that_names_no_postgresql_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unset server variable passed on as ``--db-url ""`` stops the run rather than
    printing SQLite's figures under PostgreSQL's name."""
    for given, said in (
        ("", "no PostgreSQL server was given"),
        ("sqlite:////tmp/x.db", "must name a PostgreSQL server"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["--db-url", given])
        assert stopped.value.code == 2
        assert said in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    assert server_url_of(parser, None) is None
    assert server_url_of(parser, "postgresql://u@h/d") == "postgresql+psycopg://u@h/d"


def test_the_postgresql_backend_is_named_with_its_server_version() -> None:
    name = backend_name(postgres_url())
    assert name.startswith("PostgreSQL ") and name.split()[1][0].isdigit()
