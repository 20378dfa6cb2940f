"""The README tells the truth: its first snippet runs as pasted into a file (and creates
./memvee.db), every ``memvee`` command and option it shows exists, its list of the user
log's events is the log's, its configuration table gives each setting's default, its HTTP
table each route the server has, and it names every section of the benchmark."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from events import EVENT_CLASSES
from memvee import Memory, MemoryConfig
from memvee.audit import Audit
from memvee.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")


def test_the_first_snippet_runs_when_pasted_into_a_file(tmp_path: Path) -> None:
    snippet = re.findall(r"```python\n(.*?)```", TEXT, re.S)[0]
    (tmp_path / "example.py").write_text(snippet, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    ran = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "User lives in Oslo." in ran.stdout
    assert (tmp_path / "memvee.db").is_file()


def _shown_invocations() -> list[str]:
    """Every ``memvee ...`` the README shows: the lines of its shell blocks (each command
    of a ``&&`` chain, comments cut) and its inline code that begins with ``memvee``."""
    shown: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", TEXT, re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0]
            shown += [part.strip() for part in command.split("&&")]
    shown += re.findall(r"`(memvee [^`]*)`", TEXT)
    # `memvee mcp` also runs as a path to the installed script (Claude Code's line).
    shown += re.findall(r"/bin/(memvee [^\n`#]*)", TEXT)
    return [s for s in shown if s.startswith("memvee ")]


def _options(command: typer.core.TyperCommand | TyperGroup) -> set[str]:
    """Every spelling of every option ``command`` takes (``--promote`` and ``--no-promote``)."""
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("shown", sorted(set(_shown_invocations())))
def test_every_memvee_command_and_option_the_readme_shows_exists(shown: str) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    words = shown.split()[1:]
    name = next((w for w in words if not w.startswith("-")), None)
    if words[0].startswith("--") or name is None:  # an option of `memvee` itself
        command: typer.core.TyperCommand | TyperGroup = group
    else:
        assert name in group.commands, f"{shown!r}: no command {name!r}"
        command = group.commands[name]
    shown_options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", shown))
    assert shown_options <= _options(command), f"{shown!r}: unknown options"


def test_the_readme_names_every_event_of_the_user_log() -> None:
    listed = re.search(r"with the events (.*?)\. Its state", TEXT, re.S)
    assert listed is not None, "the README's list of the user log's events moved"
    named = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert named == {event.__name__ for event in EVENT_CLASSES}


def _stated_default(text: str) -> object:
    """A default as the configuration table writes it (``60 s``, ``20,000``, ``"full"``,
    ``on``), as a value; ``None`` for one told in words."""
    text = text.strip().strip("`").strip('"')
    if text == "on":
        return True
    number = text.removesuffix(" s").replace(",", "")
    if re.fullmatch(r"\d+", number):
        return int(number)
    if re.fullmatch(r"\d+\.\d+", number):
        return float(number)
    return text if re.fullmatch(r"[a-z]+", text) else None


def _configuration_table() -> dict[str, str]:
    """Each setting the configuration table names, with its default cell's part for it
    (a row of two settings gives two defaults, comma-separated; "" when it tells them in
    words)."""
    table: dict[str, str] = {}
    for names, cell in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (.*?) \| .* \|$", TEXT, re.M):
        settings = re.findall(r"`(\w+)`", names)
        parts = cell.split(", ")
        told = parts if len(parts) == len(settings) else [""] * len(settings)
        table.update(zip(settings, told, strict=True))
    return table


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    table = _configuration_table()
    told_in_use = {"db_path", "db_url", "auto_process", "batch_threshold"}  # see "Use"
    defaults = {field.name: field.default for field in dataclasses.fields(MemoryConfig)}
    assert set(table) == set(defaults) - told_in_use
    stated = {name: _stated_default(text) for name, text in table.items()}
    numbers_and_words = {name: value for name, value in stated.items() if value is not None}
    assert numbers_and_words == {name: defaults[name] for name in numbers_and_words}


def test_the_readme_names_every_section_of_the_benchmark_in_its_order() -> None:
    from bench.__main__ import SECTIONS  # the sections' modules, imported only here

    listed = re.search(r"runs some\nof its sections, which are (.*?)\n\(", TEXT, re.S)
    assert listed is not None, "the README's list of the benchmark's sections moved"
    assert re.findall(r"`(\w+)`", listed.group(1)) == [name for name, _ in SECTIONS]


def test_every_route_of_the_readmes_http_table_is_served_with_its_query_parameters(
    tmp_path: Path,
) -> None:
    from fastapi.routing import APIRoute  # the server extra, imported only here

    from memvee._server.http_api import api_router

    database = str(tmp_path / "routes.db")
    with Audit(database) as audit:  # the router keeps them, calls neither
        router = api_router(Memory(db_path=database, embedder=False), audit)
    served = {
        (method, re.sub(r"\{user_id:\w+\}", "{user}", route.path)): {
            param.alias for param in route.dependant.query_params
        }
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    shown = re.findall(r"^\| [^|]+ \| `(GET|POST|DELETE) (/v1/[^`?]*)\??([^`]*)`", TEXT, re.M)
    assert {(method, path) for method, path, _ in shown} == set(served)
    for method, path, query in shown:
        asked = set(re.findall(r"(\w+)=", query))
        assert asked <= served[method, path], f"{method} {path}: no {asked - served[method, path]}"


@pytest.mark.parametrize(
    ("retry_delay_max", "breaker_cooldown", "longest"),
    [(300.0, 2.0, 60.0), (10.0, 2.0, 10.0), (0.5, 2.0, 2.0)],
    ids=["60 s", "retry_delay_max", "first pause"],
)
async def test_the_breakers_longest_pause_is_the_one_the_readme_and_config_state(
    tmp_path: Path, retry_delay_max: float, breaker_cooldown: float, longest: float
) -> None:
    """Both said "doubling, at most 60 s" (or nothing of a cap), though the breaker's pauses
    stop at retry_delay_max when shorter, and never go below the first."""
    row = re.search(r"^\| `breaker_failures`, `breaker_cooldown` \|.*$", TEXT, re.M)
    assert row is not None, "the README's row of the breaker moved"
    assert "up to 60 s or `retry_delay_max` if shorter, yet never below the first pause" in (
        row.group(0)
    )
    docstring = " ".join((MemoryConfig.__doc__ or "").split())
    assert (
        "up to 60 seconds or ``retry_delay_max`` if shorter, yet never below ``breaker_cooldown``"
        in docstring
    )
    memory = Memory(
        db_path=str(tmp_path / "m.db"),
        embedder=False,
        config=MemoryConfig(retry_delay_max=retry_delay_max, breaker_cooldown=breaker_cooldown),
    )
    await memory.open()
    try:
        assert memory._engine is not None
        assert memory._engine.breaker.max_cooldown == longest
    finally:
        await memory.close()
