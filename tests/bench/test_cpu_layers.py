"""The CPU breakdown charges each sampled stack to the innermost layer it recognises."""

from __future__ import annotations

from bench.cpu import breakdown, layer_of


def test_the_innermost_known_frame_decides_the_layer() -> None:
    stack = [
        "Thread.run (threading.py:982)",
        "GroupCommitter._write (actors/_committer.py:99)",
        "Projector.apply (projections/projector.py:117)",
        "owner_token (projections/search.py:49)",
        "UUID.__init__ (uuid.py:222)",
    ]
    assert layer_of(stack) == "uuid"
    assert layer_of(stack[:4]) == "memvee projections (folds)"
    assert layer_of(["<module> (<string>:1)"]) == "other (interpreter, C extensions)"


def test_collapsed_stacks_are_counted_by_layer() -> None:
    raw = (
        "a (actors/_committer.py:1);b (sqlalchemy/engine/base.py:2) 7\n"
        "a (actors/_committer.py:1);c (sqlalchemy/sql/compiler.py:3) 2\n"
        "a (actors/_committer.py:1) 1\n"
        "malformed line\n"
    )
    assert breakdown(raw) == {
        "SQLAlchemy: execution, pool, results": 7,
        "SQLAlchemy: statements and compilation": 2,
        "memvee actors (engine, committer)": 1,
    }


def test_samples_taken_while_importing_modules_are_left_out() -> None:
    raw = (
        "<module> (bench/cpu.py:1);_find_and_load (<frozen importlib._bootstrap>:1);"
        "<module> (sqlalchemy/sql/compiler.py:1) 40\n"
        "a (actors/_committer.py:1) 3\n"
    )
    assert breakdown(raw) == {"memvee actors (engine, committer)": 3}
