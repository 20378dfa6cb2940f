"""The PostgreSQL write stages: each round records every stage it prints, and the engine
wrote what it decided."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from bench import pg_stages
from bench.common import Section
from bench.stages import Shape
from tests.support.backends import postgres_url


def test_a_round_times_every_stage_of_the_writes_it_stored() -> None:
    url = postgres_url()
    section = Section("pg stages", [])
    pg_stages._round(section, url, Shape("test", 4, 2, 3))

    stats = section.stats
    names = [name for name, _, _ in pg_stages.STAGES]
    for key in ("decide", "total", "rest", "statements", *names):
        assert len(stats[f"pg_stages.test.{key}"].samples) == 1, key
    assert all(stats[f"pg_stages.test.{key}"].samples[0] > 0 for key in ("decide", "total", *names))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            # 4 registrations, then a warm-up commit, two passes of three and the
            # counted commit, two exchanges each: four events a commit.
            events = connection.execute(text("SELECT count(*) FROM memvee_events")).scalar_one()
            messages = connection.execute(text("SELECT count(*) FROM mv_messages")).scalar_one()
    finally:
        engine.dispose()
    assert events == 4 + 8 * 4
    assert messages == 8 * 4
    # The events with their logs' check, the look, the users' rows, the messages with
    # the position's move.
    assert stats["pg_stages.test.statements"].samples == [4]


def test_the_raw_reference_is_a_committed_insert_per_call() -> None:
    url = postgres_url()
    assert pg_stages._raw_insert(url, 20) > 0
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM bench_raw_inserts")).scalar_one()
    finally:
        engine.dispose()
    assert rows == 30
