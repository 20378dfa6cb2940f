"""The `memvee` command as a new user meets it: clear errors, ids that work, readable output."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner, Result

import memvee
import memvee.cli
import memvee.extractors._default
from actors.database_claim import VERIFY, claim_alone
from events import EventStore, UserLog, sqlite_url, user_log_id
from memvee import InvalidInputError, Memory, MemoryConfig
from memvee._log_redaction import RedactSecrets
from memvee.audit import Audit
from memvee.cli import app
from memvee.extractors import OfflineExtractor
from tests.support.server_process import MEMVEE, server_env

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
runner = CliRunner()


def run(*args: str, code: int = 0) -> Result:
    """Invoke ``memvee ARGS``; the exit code must be ``code``."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def one_error_line(result: Result) -> str:
    """The single ``error:`` line a failure prints (never a traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(autouse=True)
def _ctrl_c_as_at_a_terminal() -> None:
    """Python's own Ctrl-C handler, as a command run at a terminal has: a process started
    as a shell script's background job (a CI run) starts with SIGINT ignored, and the
    command line then leaves Ctrl-C alone. The suite's conftest puts the handler back."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A memory database where ann said five things over two months and bob one."""

    async def fill() -> None:
        config = MemoryConfig(db_path=str(tmp_path / "m.db"))
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            said = [
                "I live in Oslo.",
                "I work at Acme.",
                "I love climbing.",
                "My dog is called Rex.",
            ]
            for day, line in enumerate(said):
                await memory.add_exchange("ann", line, "Noted.", sent_at=T0 + timedelta(days=day))
            await memory.flush("ann")
            await memory.add_exchange(
                "ann", "I moved to Bergen.", "Oh!", sent_at=T0 + timedelta(60)
            )
            await memory.flush("ann")
            await memory.add_exchange("bob", "I live in Rome.", "Ciao.", sent_at=T0)
            await memory.flush("bob")

    asyncio.run(fill())
    yield str(tmp_path / "m.db")


@pytest.fixture
def ann_at(db_url: str) -> str:
    """The URL of a memory, on each backend, where ann said where she lives."""

    async def fill() -> None:
        memory = Memory(db_url=db_url, extractor=OfflineExtractor(), embedder=False)
        async with memory:
            await memory.add_exchange("ann", "I live in Oslo.", "Noted.", sent_at=T0)
            await memory.flush("ann")

    asyncio.run(fill())
    return db_url


def test_version_and_help_are_plain() -> None:
    assert re.fullmatch(r"\d+\.\d+.*", memvee.__version__)
    assert run("--version").output.strip() == f"memvee {memvee.__version__}"
    shown = run("rebuild", "--help").output
    assert "--resume" in shown and "<bool>" not in shown and "--db PATH" in shown


def test_importing_memvee_loads_no_engine_until_a_name_is_used() -> None:
    """So the command's Ctrl-C handling is in place before the second the engine takes."""
    probe = (
        "import sys, memvee; before = 'sqlalchemy' in sys.modules or 'memvee._memory' in "
        "sys.modules; memvee.Memory; print(before, 'memvee._memory' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]


def test_every_public_name_of_memvee_loads_from_the_module_it_lives_in() -> None:
    """The lazily loaded names, the exported ones and the typed imports are one list."""
    import importlib

    assert sorted(memvee.__all__) == sorted(memvee._HOMES)
    for name, home in memvee._HOMES.items():
        assert getattr(memvee, name) is getattr(importlib.import_module(home), name)
    assert "Memory" in dir(memvee)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        memvee.Nothing  # noqa: B018


def test_every_public_name_of_memvee_says_what_it_is() -> None:
    """``help(memvee.X)`` and an editor's hover show a docstring, type aliases too."""
    import inspect

    undocumented = [n for n in memvee.__all__ if not inspect.getdoc(getattr(memvee, n))]
    assert undocumented == []
    assert str(inspect.getdoc(memvee.FactAction)).startswith("What an extracted fact does")


def test_ctrl_c_while_the_command_loads_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import atexit
    import builtins

    import memvee._console
    from memvee._console import _CtrlC, main

    ctrl_c = _CtrlC()
    monkeypatch.setattr(memvee._console, "_ctrl_c", ctrl_c)
    at_exit: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", at_exit.append)  # not this test run's exit
    load = builtins.__import__

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "memvee.cli":
            raise KeyboardInterrupt
        return load(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: interrupted\n"
    assert at_exit == [ctrl_c.leave] and ctrl_c.exit_code == 2


_LATE_CTRL_C = """
import os, signal, sys, threading, time
import memvee.cli
from memvee._console import main

command = memvee.cli.main

def exit_joins_a_thread_and_ctrl_c_comes():
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)

def then_ctrl_c():
    try:
        command()
    finally:
        threading.Thread(target=exit_joins_a_thread_and_ctrl_c_comes).start()

memvee.cli.main = then_ctrl_c
sys.argv = ["memvee", *sys.argv[1:]]
main()
"""


def test_ctrl_c_once_the_command_ended_leaves_its_result_and_exit_code(db: str) -> None:
    """The interpreter's exit joins the threads the command left (a pool's, an actor's):
    a Ctrl-C then printed a traceback ("Exception ignored in threading._shutdown")."""
    done = subprocess.run(
        [sys.executable, "-c", _LATE_CTRL_C, "verify", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == "projections match the log"


def test_a_librarys_report_of_a_ctrl_c_in_its_cleanup_is_not_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SQLAlchemy's pool logs a Ctrl-C that stops it closing a connection, with its
    traceback; the command says "error: interrupted" alone. Other warnings print."""
    root = logging.getLogger()
    before = list(root.handlers)
    memvee.cli._log_warnings_but_not_interrupts()
    try:
        pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            pool.error("Exception closing connection", exc_info=True)
        logging.getLogger("memvee").warning("a warning the user should see")
    finally:
        root.handlers[:] = before
    assert capsys.readouterr().err == "a warning the user should see\n"


def test_a_warning_prints_no_credential(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library's warning that shows a URL with its user info, or the API key, prints
    them masked."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-cli-DO-NOT-LEAK-123456")
    root = logging.getLogger()
    before = list(root.handlers)
    memvee.cli._log_warnings_but_not_interrupts()
    try:
        logging.getLogger("httpx2").warning(
            "retrying https://gwuser:pw-DO-NOT-LEAK@gateway.example/v1 with %s",
            "sk-ant-cli-DO-NOT-LEAK-123456",
        )
    finally:
        root.handlers[:] = before
    assert capsys.readouterr().err == "retrying https://***@gateway.example/v1 with [redacted]\n"


@contextlib.contextmanager
def _warnings_printed_as_the_command_line_prints_them() -> Iterator[None]:
    """The command line's warning handler on the root logger while the block runs."""
    root = logging.getLogger()
    before = list(root.handlers)
    memvee.cli._log_warnings_but_not_interrupts()
    try:
        yield
    finally:
        root.handlers[:] = before


@pytest.mark.parametrize("redacted_by", ["its logger", "the handler, first"])
def test_a_librarys_report_of_a_ctrl_c_whose_traceback_shows_a_password_is_not_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redacted_by: str
) -> None:
    """A Ctrl-C stops a library's cleanup while it handles an error showing a URL's
    password: the redacting filter takes the live exception off the record, whether its
    logger's (memvee's own, an API client's) or the handler's ran first, and the report is
    still not printed. It was printed, its traceback cleaned, as the interrupt went unseen."""
    pool = logging.getLogger("memvee_test_cli.pool")
    if redacted_by == "its logger":
        monkeypatch.setattr(pool, "filters", [RedactSecrets()])
    with _warnings_printed_as_the_command_line_prints_them():
        if redacted_by == "the handler, first":
            logging.getLogger().handlers[-1].filters.reverse()
        try:
            raise ConnectionError("closing postgresql://memvee:pw-DO-NOT-LEAK@db/memvee")
        except ConnectionError:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                pool.error("Exception closing connection", exc_info=True)
        logging.getLogger("memvee").warning("a warning the user should see")
    assert capsys.readouterr().err == "a warning the user should see\n"


def test_a_warning_quoting_stored_text_shows_its_escape_sequences_instead_of_sending_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A warning quoting an extractor's error (which may echo a message) sent the
    message's escape sequences to the operator's terminal, which obeyed them."""
    with _warnings_printed_as_the_command_line_prints_them():
        logging.getLogger("memvee").warning(
            "message m1 left out (%s)", "refused: \x1b]0;owned\x07\x1b[2J\x9b31m"
        )
    assert (
        capsys.readouterr().err
        == "message m1 left out (refused: \u241b]0;owned\u2407\u241b[2J\ufffd31m)\n"
    )


def test_a_warning_quoting_a_line_break_stays_one_line_so_it_cannot_forge_an_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A warning quoting stored text with a line break printed a second line of the text's
    choosing, such as one reading like the command's own ``error:`` line."""
    with _warnings_printed_as_the_command_line_prints_them():
        logging.getLogger("memvee").warning(
            "message m1 left out (%s)", "refused\nerror: database is corrupt"
        )
    assert capsys.readouterr().err.splitlines() == [
        "message m1 left out (refused\u2424error: database is corrupt)"
    ]


def test_a_warning_with_a_traceback_keeps_the_tracebacks_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the warning's own text is kept on one line: the traceback a warning carries is
    still printed line by line."""
    with _warnings_printed_as_the_command_line_prints_them():
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("memvee").warning("cleanup failed", exc_info=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "cleanup failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_ctrl_c_while_typer_reads_the_command_line_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(memvee.cli._Commands, "make_context", interrupted)
    assert one_error_line(run("users", code=2)) == "error: interrupted"


def test_python_dash_m_memvee_is_the_memvee_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "memvee", "--version"],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"memvee {memvee.__version__}")


@pytest.mark.parametrize(
    "command",
    [["users"], ["users", "--json"], ["export", "ann"], ["state", "ann"], ["--version"]],
    ids=" ".join,
)
def test_a_closed_stdout_is_one_error_line_not_a_traceback(
    db: str,
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``memvee users >&-`` (a cron job's, a daemon's): Python leaves ``sys.stdout`` None,
    and the command ended with an AttributeError traceback and exit code 1; it fails as
    on a full disk instead."""
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as ended:
        app([*command, "--db", db] if command != ["--version"] else command)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "error: standard output is closed\n"


def test_an_import_into_a_path_through_a_file_names_the_file_that_is_no_folder(
    db: str, tmp_path: Path
) -> None:
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--db", db, "--out", str(exported))
    result = run("import", str(exported), "--db", f"{exported}/m.db", code=2)
    assert one_error_line(result) == f"error: Not a directory: {exported}"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_import_into_a_folder_that_takes_no_file_is_one_error_line_without_a_warning(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new file: neither the database nor the record that guards it can be
    made there, and the open's failure alone is told."""
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--db", db, "--out", str(exported))
    with _warnings_printed_as_the_command_line_prints_them():
        result = run("import", str(exported), "--db", "/proc/memvee-test.db", code=2)
    assert "cannot open the event store" in one_error_line(result)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["log", "ann"], ["users"], ["import", "ann.jsonl"]])
@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_db_path_is_refused_as_empty(
    command: list[str], path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--db "$MEMVEE_DB"`` with the variable unset: the reading commands said "no memvee
    database at  (check --db)" and import that the working folder "is a folder"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ann.jsonl").write_text("")
    result = run(*command, "--db", path, code=2)
    assert one_error_line(result) == "error: --db must name a file, not be empty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.jsonl"]


@pytest.mark.parametrize(
    ("command", "named"), [(["export", "ann", "--out", ""], "--out"), (["import", " "], "FILE")]
)
def test_an_empty_file_to_export_to_or_import_from_is_refused_as_empty(
    db: str, command: list[str], named: str
) -> None:
    """``Path("")`` is the working folder: an export said "Is a directory: .", and an import
    "No such file or directory", naming no file."""
    result = run(*command, "--db", db, code=2)
    assert one_error_line(result) == f"error: {named} must name a file, not be empty"


def test_a_command_after_one_whose_output_could_not_be_written_prints_only_its_own(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table that could not be written stayed in the console's buffer, and the next
    command run in the same process printed it before its own output."""
    clean = run("users", "--db", db).output
    with monkeypatch.context() as closed:
        closed.setattr(sys, "stdout", None)
        with pytest.raises(SystemExit):
            app(["users", "--db", db])
    assert run("users", "--db", db).output == clean


class _FullStream(io.StringIO):
    """A stream on a full disk: every write fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_command_after_one_whose_error_line_could_not_be_written_prints_only_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error console kept the error line that could not be written (stderr on a full
    disk), and the next command run in the same process printed it before its own."""
    missing = str(tmp_path / "missing.db")
    clean = run("log", "ann", "--db", missing, code=2).output
    with monkeypatch.context() as full:
        full.setattr(sys, "stderr", _FullStream())
        with pytest.raises(SystemExit):
            app(["log", "ann", "--db", missing])
    assert run("log", "ann", "--db", missing, code=2).output == clean


class _UnreadStream(io.StringIO):
    """A pipe whose reader went away: every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.mark.parametrize("command", [["--help"], ["log", "--help"]], ids=" ".join)
def test_help_to_a_closed_stdout_is_one_error_line_not_a_silent_success(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memvee --help >&-``: click's echo drops what it writes when ``sys.stdout`` is None,
    so the help was lost and the command exited 0; it fails as ``--version`` does."""
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as ended:
        app(command)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "error: standard output is closed\n"
    assert sys.stdout is None  # the stand-in for the closed stream is gone with the command


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["log", "--help"]], ids=" ".join)
def test_help_or_version_to_a_reader_that_stopped_reading_ends_as_a_command_does(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memvee --help | head -0``: the top level's help and version are written while click
    parses the command line, where click ended a broken pipe with exit code 1; they end as
    a command whose reader went away does: exit code 141 and no error line."""
    monkeypatch.setattr(sys, "stdout", _UnreadStream())
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # put back if click wraps it
    with pytest.raises(SystemExit) as ended:
        app(command)
    assert ended.value.code == 141
    assert capsys.readouterr().err == ""


def test_a_command_after_one_whose_error_line_met_a_closed_pipe_prints_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich's answer to a broken pipe made the error console quiet for good (and pointed
    stdout at the null device), so in a process running commands one after another every
    later error line was lost; the command whose line could not be written fails as on a
    full disk."""
    missing = str(tmp_path / "missing.db")
    clean = run("log", "ann", "--db", missing, code=2).output
    monkeypatch.setattr(memvee.cli.errors, "quiet", False)  # restored if it is made quiet
    with monkeypatch.context() as unread:
        unread.setattr(sys, "stderr", _UnreadStream())
        unread.setattr(sys, "stdout", io.StringIO())  # has no descriptor to point elsewhere
        with pytest.raises(SystemExit) as ended:
            app(["log", "ann", "--db", missing])
    assert ended.value.code == 2
    assert run("log", "ann", "--db", missing, code=2).output == clean


def test_a_terminal_that_cannot_print_a_user_id_gets_it_escaped_not_a_traceback(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "m.db")

    async def fill() -> None:
        async with Memory(config=MemoryConfig(db_path=db), embedder=False) as memory:
            await memory.add_exchange("東京", "hi", "hello")

    asyncio.run(fill())
    done = subprocess.run(
        [str(MEMVEE), "users", "--db", db],
        capture_output=True,
        text=True,
        env={**server_env(), "PYTHONIOENCODING": "ascii"},
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "\\u6771\\u4eac" in done.stdout


@pytest.mark.parametrize(
    "command", [["users"], ["stats"], ["log", "ann"], ["verify"], ["rebuild"], ["users", "--json"]]
)
def test_reading_a_missing_database_is_an_error_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "nodir" / "nope.db"
    result = run(*command, "--db", str(missing), code=2)
    assert "no memvee database" in one_error_line(result)
    assert list(tmp_path.iterdir()) == []
    url = run(*command, "--db-url", f"sqlite:///{missing}", code=2)
    assert "no memvee database" in one_error_line(url)
    assert list(tmp_path.iterdir()) == []


def test_an_sqlite_uri_filename_reads_the_file_it_names(db: str, tmp_path: Path) -> None:
    """``sqlite:///file:PATH?mode=ro&uri=true`` opens the file read-only (SQLAlchemy's form
    of an SQLite URI): the reading commands find the file at PATH, not at ``file:PATH``."""
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    missing = f"sqlite:///file:{tmp_path / 'nope.db'}?mode=ro&uri=true"

    users = run("users", "--json", "--db-url", read_only)
    knowledge = run("knowledge", "ann", "--db-url", read_only)

    assert {user["user_id"] for user in json.loads(users.output)} == {"ann", "bob"}
    assert "Bergen" in knowledge.output
    assert "no memvee database at" in one_error_line(run("stats", "--db-url", missing, code=2))
    assert not (tmp_path / "nope.db").exists()


def test_a_db_path_with_a_question_mark_is_read_as_that_file(tmp_path: Path) -> None:
    """--db went into a URL unquoted: refused for an unknown SQLite URL parameter 'v'."""
    db = tmp_path / "notes?v=2.db"

    async def fill() -> None:
        config = MemoryConfig(db_path=db)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange("ann", "I live in Oslo.", "Noted.")

    asyncio.run(fill())
    users = json.loads(run("users", "--json", "--db", str(db)).output)

    assert [user["user_id"] for user in users] == ["ann"]
    assert "I live in Oslo." in run("log", "ann", "--db", str(db)).output
    over_itself = run("export", "ann", "--db", str(db), "--out", str(db), code=2)
    assert "is the database itself" in one_error_line(over_itself)
    assert not (tmp_path / "notes").exists()


@pytest.mark.parametrize("command", [["users"], ["import", "lines.jsonl"]])
def test_a_sqlite_url_with_a_parameter_nothing_reads_is_one_error_line_and_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lines.jsonl").write_text("")
    url = f"sqlite:///{tmp_path / 'x.db'}?bogus=1"

    line = one_error_line(run(*command, "--db-url", url, code=2))

    assert "--db-url: unknown SQLite URL parameter 'bogus'" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.jsonl"]


@pytest.mark.parametrize("command", [["users"], ["import", "lines.jsonl"], ["rebuild"]])
def test_a_database_url_given_as_db_is_refused_and_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lines.jsonl").write_text("")

    line = one_error_line(run(*command, "--db", "postgresql://me:s3cret@h/mem", code=2))

    assert "give it as --db-url" in line and "s3cret" not in line
    assert [p.name for p in tmp_path.iterdir()] == ["lines.jsonl"]


def test_a_password_in_the_query_of_db_url_is_not_shown() -> None:
    url = "postgresql://me:s3cret@127.0.0.1:1/mem?password=s3cret&connect_timeout=2"

    line = one_error_line(run("users", "--db-url", url, code=2))

    assert "cannot open the event store at" in line and "s3cret" not in line


def test_a_password_with_an_unencoded_at_is_refused_without_any_of_it() -> None:
    """Else the driver is handed the rest of the password as the host, and says so."""
    url = "postgresql://app:pa@Secr3tPart@127.0.0.1:1/db"

    line = one_error_line(run("users", "--db-url", url, code=2))

    assert "write each '@' in the password as %40" in line and "Secr3t" not in line


@pytest.mark.parametrize(
    "command",
    [["users"], ["stats"], ["log", "ann"], ["state", "ann"], ["verify"], ["rebuild"]],
)
def test_reading_another_programs_database_is_an_error_and_leaves_it_as_it_was(
    tmp_path: Path, command: list[str]
) -> None:
    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    result = run(*command, "--db", str(other), code=2)
    assert "holds no memvee log" in one_error_line(result)
    with sqlite3.connect(other) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_schema")]
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert names == ["notes"]
    assert journal == "delete", "was switched to WAL before it was refused"


def test_reading_an_empty_file_is_an_error_and_leaves_it_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert "holds no memvee log" in one_error_line(run("users", "--db", str(empty), code=2))
    assert empty.stat().st_size == 0, "was made a 4 KB database"


def test_a_database_file_with_two_names_is_one_error_line(tmp_path: Path, db: str) -> None:
    alias = tmp_path / "alias.db"
    alias.hardlink_to(db)
    for name in (db, str(alias)):
        result = run("users", "--db", name, code=2)
        assert "has 2 names (hard links)" in one_error_line(result)


@pytest.mark.parametrize("command", [["import", "{export}"], ["serve"], ["mcp"]])
def test_a_command_that_may_create_its_database_adds_no_tables_to_another_programs(
    tmp_path: Path, db: str, command: list[str]
) -> None:
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    args = [part.format(export=exported) for part in command]
    result = run(*args, "--db", str(other), code=2)
    assert "holds another program's tables and no memvee log" in one_error_line(result)
    with sqlite3.connect(other) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_schema")]
    assert names == ["notes"]


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["mcp", "--user", "me"]])
def test_a_server_without_an_api_key_that_cannot_open_its_database_prints_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Running offline is warned once the memory has opened: before, the warning came
    first, and the error was not the one line a failure prints."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setattr(memvee.extractors._default, "_offline_warned", False)
    folder = tmp_path / "adir"
    folder.mkdir()
    result = run(*command, "--db", str(folder), code=2)
    assert "is a folder, not a SQLite file" in one_error_line(result)


@pytest.mark.parametrize("command", ["users", "mcp"])
def test_an_empty_db_url_is_refused_not_taken_for_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The servers too (`serve` opens as `mcp` does): they took it for no URL, and
    served ./memvee.db."""
    monkeypatch.chdir(tmp_path)
    result = run(command, "--db-url", "", code=2)
    assert "--db-url is not a database URL" in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("beside", ["", "-wal", ".memvee-lock"])
def test_an_export_is_never_written_over_the_database_it_reads(db: str, beside: str) -> None:
    before = run("log", "ann", "--json", "--db", db).output
    target = db + beside
    result = run("export", "ann", "--out", target, "--db", db, code=2)
    assert "is the database itself; give another file" in one_error_line(result)
    assert run("log", "ann", "--json", "--db", db).output == before, "was replaced by JSONL"


def test_an_export_never_writes_its_file_in_progress_over_a_database(
    db: str, tmp_path: Path
) -> None:
    """An export to ``snap`` of a database named ``snap.partial`` used to write over it."""
    database = tmp_path / "snap.partial"
    Path(db).rename(database)
    before = run("log", "ann", "--json", "--db", str(database)).output

    run("export", "ann", "--out", str(tmp_path / "snap"), "--db", str(database))

    assert run("log", "ann", "--json", "--db", str(database)).output == before
    assert (tmp_path / "snap").read_text().count("\n") == before.count('"version"')


def _export_in_a_process(
    db: str, out: str, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``memvee export ann --db DB --out OUT`` in a process of its own, which has no
    descriptor open past stderr but ``pass_fds``."""
    return subprocess.run(
        [str(MEMVEE), "export", "ann", "--db", db, "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(),
        timeout=60,
        check=False,
        close_fds=True,
        pass_fds=pass_fds,
    )


@pytest.mark.parametrize("fd", range(3, 8))
def test_an_export_to_a_descriptor_the_process_did_not_get_leaves_the_database_whole(
    db: str, fd: int
) -> None:
    """``--out /dev/fd/N`` names the descriptor as the export starts, before the database
    opens: one it was not given is one error line. It was opened once the database was,
    and ``/dev/fd/4`` was the database's own descriptor: the export emptied it."""
    before = Path(db).read_bytes()
    done = _export_in_a_process(db, f"/dev/fd/{fd}")
    assert (done.returncode, done.stderr) == (
        2,
        f"error: No such file or directory: /dev/fd/{fd}\n",
    )
    assert Path(db).read_bytes() == before
    for beside in ("-wal", "-shm", ".memvee-held"):
        written = Path(db + beside)
        assert not written.exists() or b'"user_id"' not in written.read_bytes(), beside


def test_an_export_to_a_descriptor_of_a_file_beside_the_database_under_another_name_is_refused(
    db: str, tmp_path: Path
) -> None:
    """The file a descriptor has open is compared with the database's files by inode, not
    by the name it was opened by: a hard link to the write-ahead log of the database (open
    in another process), given as ``/dev/fd/N``, was written over with the log."""
    with Audit(db_path=db) as audit:
        audit.users()
        wal = Path(db + "-wal")
        other = tmp_path / "notes.jsonl"
        other.hardlink_to(wal)
        descriptor = os.open(other, os.O_WRONLY)
        try:
            done = _export_in_a_process(db, f"/dev/fd/{descriptor}", pass_fds=(descriptor,))
        finally:
            os.close(descriptor)
        assert b'"user_id"' not in wal.read_bytes()
    assert (done.returncode, done.stderr) == (
        2,
        f"error: --out /dev/fd/{descriptor} is the database itself; give another file\n",
    )


def test_an_export_to_a_symbolic_link_loop_is_one_error_line(db: str, tmp_path: Path) -> None:
    """It was a traceback (``Path.resolve``'s RuntimeError) and exit code 1."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = run("export", "ann", "--out", str(tmp_path / "a"), "--db", db, code=2)
    assert one_error_line(result).startswith("error: Too many levels of symbolic links: ")


@pytest.mark.parametrize(
    ("folder", "says"),
    [("missing", "No such file or directory"), ("a-file", "Not a directory")],
)
def test_an_export_into_a_folder_that_is_not_there_names_the_file_given(
    db: str, tmp_path: Path, folder: str, says: str
) -> None:
    """The error named the file written beside the target (``.a.jsonl.x1y2.partial``),
    which the user never gave."""
    (tmp_path / "a-file").touch()
    out = tmp_path / folder / "a.jsonl"
    result = run("export", "ann", "--out", str(out), "--db", db, code=2)
    assert one_error_line(result) == f"error: {says}: {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "m.db"]


def test_an_export_to_a_file_whose_name_is_near_the_limit_is_written(
    db: str, tmp_path: Path
) -> None:
    """Its 251 bytes are a legal name, but the file written beside it took the name with
    more around it, past 255 bytes, and the export failed blaming the file given: "File
    name too long"."""
    out = tmp_path / ("a" * 245 + ".jsonl")
    run("export", "ann", "--out", str(out), "--db", db)
    assert out.read_text() == run("export", "ann", "--db", db).output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.db", out.name])


def test_an_error_that_cannot_be_printed_still_exits_2(db: str) -> None:
    with open("/dev/full", "w") as full:
        ended = subprocess.run(
            [sys.executable, "-m", "memvee", "log", "nobody", "--db", db],
            stderr=full,
            stdout=subprocess.DEVNULL,
            check=False,
        )
    assert ended.returncode == 2


def test_control_characters_in_stored_text_are_shown_not_sent_to_the_terminal(
    tmp_path: Path,
) -> None:
    async def fill() -> None:
        config = MemoryConfig(db_path=str(tmp_path / "m.db"))
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange("ann", "I like \x1b[31mred\x1b[0m wine\x07", "Noted.")

    asyncio.run(fill())
    shown = run("log", "ann", "--db", str(tmp_path / "m.db")).output
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\u241b[31mred\u241b[0m" in shown


def test_an_error_line_keeps_the_spaces_of_the_id_it_names(db: str) -> None:
    line = one_error_line(run("explain", "ann", "  no  such  ", "--db", db, code=2))
    assert "'  no  such  '" in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["users", "--limit", "abc"], "Invalid value for '--limit'"),
        (["users", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["log"], "Missing argument 'user'"),
    ],
)
def test_a_usage_error_is_one_error_line_not_a_usage_block(args: list[str], says: str) -> None:
    assert says in one_error_line(run(*args, code=2))


def test_a_database_that_refuses_is_one_line_without_its_statement(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.exc

    def refused(*args: Any, **kwargs: Any) -> Any:
        cause = sqlite3.OperationalError("attempt to write a readonly database")
        raise sqlalchemy.exc.OperationalError("DROP TABLE secret_statement", {"p": 1}, cause)

    monkeypatch.setattr(memvee.cli, "verify_projections", refused)
    result = run("verify", "--db", db, code=2)
    line = one_error_line(result)
    assert line == "error: the database refused: attempt to write a readonly database"


def test_an_interrupted_command_is_one_error_line(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(memvee.cli, "verify_projections", interrupted)
    assert one_error_line(run("verify", "--db", db, code=2)) == "error: interrupted"


@pytest.mark.parametrize(
    "command",
    [
        ["users"],
        ["verify"],
        ["rebuild"],
        ["rebuild", "--resume"],
        ["rebuild", "--user", "ann"],
        ["export", "ann"],
    ],
    ids=" ".join,
)
def test_a_database_a_newer_memvee_laid_out_is_refused_not_laid_out_again(
    db: str, command: list[str]
) -> None:
    """Every command, a rebuild asked for too: made again in this older layout, the tables
    would be made again in theirs by the newer memvee, back and forth."""
    from projections import SCHEMA_VERSION

    newer = (SCHEMA_VERSION + 1) << 20
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE mv_position SET position = ? WHERE name = 'schema'", (newer,))
    line = one_error_line(run(*command, "--db", db, code=2))
    assert (
        f"newer memvee's layout ({SCHEMA_VERSION + 1}; this memvee reads {SCHEMA_VERSION}" in line
    )
    with sqlite3.connect(db) as connection:
        (layout,) = connection.execute("SELECT position FROM mv_position WHERE name = 'schema'")
    assert layout == (newer,), "was laid out again in the older layout"


def test_verify_of_a_database_an_older_memvee_laid_out_says_so_without_querying_it(
    db: str,
) -> None:
    """Tables of an older schema (here a column of another name) are not drift and cannot
    be queried as this memvee lays them out: one line says what refolds them, exit 2."""
    from projections import SCHEMA_VERSION

    older = (SCHEMA_VERSION - 1) << 20
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE mv_position SET position = ? WHERE name = 'schema'", (older,))
        connection.execute("ALTER TABLE mv_messages RENAME COLUMN id TO older_id")
    line = one_error_line(run("verify", "--db", db, code=2))
    assert line == (
        "error: the projections are of an older memvee's layout: they are refolded when a "
        "Memory next opens the database, or by `memvee rebuild`; verify compares them after "
        "that"
    )
    with sqlite3.connect(db) as connection:
        (layout,) = connection.execute("SELECT position FROM mv_position WHERE name = 'schema'")
    assert layout == (older,), "verify refolded the live tables"
    run("rebuild", "--db", db)
    assert "projections match the log" in run("verify", "--db", db).output


def test_a_memory_the_servers_open_refuses_a_database_a_newer_memvee_laid_out(db: str) -> None:
    from projections import SCHEMA_VERSION

    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE mv_position SET position = ? WHERE name = 'schema'",
            ((SCHEMA_VERSION + 1) << 20,),
        )

    async def open_it() -> None:
        async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False):
            pass

    with pytest.raises(memvee.StorageError, match="newer memvee's layout"):
        asyncio.run(open_it())


def test_a_log_without_projections_is_an_error_line_that_says_rebuild_and_rebuild_mends_it(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "bare.db"
    store = EventStore(sqlite_url(bare))  # the event store alone makes no projections
    log = UserLog.register("ann")
    log.add_message("user", "I live in Oslo", None, 100)
    store.append([log.collect_events()])
    store.close()
    for command in (["users"], ["stats"], ["log", "ann"], ["state", "ann"], ["verify"]):
        line = one_error_line(run(*command, "--db", str(bare), code=2))
        assert "no projections" in line and "memvee rebuild" in line, command
    rebuilt = run("rebuild", "--db", str(bare)).output
    assert rebuilt == "rebuilt the projections from 2 events\n", "no progress bar off a terminal"
    assert "ann" in run("users", "--db", str(bare)).output
    assert "projections match the log" in run("verify", "--db", str(bare)).output


def test_an_unreachable_server_is_one_error_line_without_the_password() -> None:
    result = run("stats", "--db-url", "postgresql+psycopg://me:s3cret@127.0.0.1:1/x", code=2)
    line = one_error_line(result)
    assert "cannot open" in line and "s3cret" not in line
    assert "not a database URL" in one_error_line(run("stats", "--db-url", "nonsense", code=2))
    port = one_error_line(run("stats", "--db-url", "postgresql://me:s3cret@h:port/x", code=2))
    assert "--db-url is not a database URL" in port and "s3cret" not in port


@pytest.mark.parametrize(
    "command",
    [
        ["log", "carol"],
        ["state", "carol"],
        ["search", "carol", "where"],
        ["export", "carol"],
        ["rebuild", "--user", "carol"],
        ["compare", "carol"],
        ["knowledge", "carol"],
        ["explain", "carol", "0123"],
        ["quarantine", "carol"],
        ["requeue", "carol"],
    ],
)
def test_an_unknown_user_is_an_error_not_empty_output(db: str, command: list[str]) -> None:
    result = run(*command, "--db", db, code=2)
    assert "no user 'carol'" in one_error_line(result)


def test_rebuilding_a_user_of_an_older_layout_refolds_the_whole_layout_first(db: str) -> None:
    """Every command refolds tables an older memvee laid out before it writes them: a
    user's rebuild too, so a verify right after finds nothing to refuse."""
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE mv_position SET position = position - (1 << 20) WHERE name = 'schema'"
        )
    assert "older memvee" in one_error_line(run("verify", "--db", db, code=2))
    assert "from" in run("rebuild", "--user", "ann", "--db", db).output
    assert run("verify", "--db", db).exit_code == 0


def test_unknown_versions_event_types_and_points_past_the_end_are_errors(db: str) -> None:
    compared = run("compare", "ann", "live", "nope", "--db", db, code=2)
    assert "no knowledge version 'nope'" in one_error_line(compared)
    typed = run("log", "ann", "--type", "MessageAdd", "--db", db, code=2)
    assert "unknown event type 'MessageAdd'" in one_error_line(typed)
    last = json.loads(run("log", "ann", "--json", "--limit", "1000", "--db", db).output)[-1]
    past = run("state", "ann", "--at", str(last["version"] + 1), "--db", db, code=2)
    assert "past the end" in one_error_line(past)
    assert run("state", "ann", "--at", str(last["version"]), "--db", db).exit_code == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["log", "ann", "--from-version", "0"], "--from-version must be 1 or more, not 0"),
        (["log", "ann", "--to-version", "-3"], "--to-version must be 1 or more, not -3"),
        (
            ["log", "ann", "--from-version", "5", "--to-version", "2"],
            "--from-version 5 is after --to-version 2: nothing between",
        ),
        (["search", "ann", "x", "--top-k", "0"], "--top-k must be an int from 1 to 1,000, not 0"),
        (["search", "ann", "x", "--top-k", "1001"], "--top-k must be an int from"),
    ],
)
def test_a_numeric_option_out_of_range_is_named_as_the_user_typed_it(
    db: str, args: list[str], says: str
) -> None:
    line = one_error_line(run(*args, "--db", db, code=2))
    assert says in line
    assert "_version" not in line and "top_k" not in line


def test_numbers_too_large_for_the_database_are_read_or_refused_in_one_line(db: str) -> None:
    huge = str(2**80)
    whole = run("log", "ann", "--json", "--limit", str(2**63 - 1), "--db", db).output
    assert json.loads(whole), "was a traceback: islice takes no such stop"
    past_log = run("log", "ann", "--from-version", huge, "--json", "--db", db, code=2)
    assert f"version {huge} is past the end" in one_error_line(past_log)
    everything = run("log", "ann", "--json", "--limit", "1000", "--db", db).output
    assert run(
        "log", "ann", "--to-version", huge, "--json", "--limit", "1000", "--db", db
    ).output == (everything)
    paged = run("users", "--limit", huge, "--db", db, code=2)
    assert "--limit must be from 1 to 10,000" in one_error_line(paged)
    below = run("log", "ann", "--from-version", "0", "--db", db, code=2)
    assert "--from-version must be 1 or more" in one_error_line(below)
    long = run("state", "ann", "--at", "9" * 5000, "--db", db, code=2)
    assert "a version has at most 19 digits, not 5000" in one_error_line(long)
    past = run("state", "ann", "--at", str(2**63), "--db", db, code=2)
    assert "past the end" in one_error_line(past)
    superscript = run("state", "ann", "--at", "²", "--db", db, code=2)
    assert "neither a version nor an ISO time" in one_error_line(superscript)


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (the CLI's tree as typer builds it), by its path."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, subcommand in subcommands.items():
        yield from _commands(subcommand, (*path, name))


def _takes_ints(parameter: Any) -> bool:
    """Whether ``parameter`` reads its value as an int (``int``, ``int | None``,
    ``list[int]``), not a bool."""
    annotation = parameter.type_descriptor.annotation
    return annotation is int or int in typing.get_args(annotation)


def _int_parameters() -> Iterator[tuple[str, ...]]:
    """Every int parameter of every command, as the command line giving it 5,000 digits
    (``DIGITS``), the command's required arguments given ``ann``: a new option is covered
    without this list being edited."""
    for path, command in _commands(typer.main.get_command(app)):
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        db = ("--db", "DB") if any("--db" in p.opts for p in command.params) else ()
        for parameter in command.params:
            if not _takes_ints(parameter):
                continue
            if parameter.param_type_name == "argument":
                given = [
                    "DIGITS" if each is parameter else "ann"
                    for each in arguments
                    if each.required or each is parameter
                ]
                yield (*path, *given, *db)
            else:
                required = ["ann" for each in arguments if each.required]
                yield (*path, *required, parameter.opts[0], "DIGITS", *db)


_INT_PARAMETERS = list(_int_parameters())


def test_the_int_parameters_are_read_off_every_command() -> None:
    """The list the 5,000-digit specification runs over holds every command's int
    options, those of ``compare`` and ``mcp`` as well."""
    named = {(given[0], given[given.index("DIGITS") - 1]) for given in _INT_PARAMETERS}
    assert {("compare", "--limit"), ("mcp", "--drain-timeout"), ("serve", "--port")} <= named


@pytest.mark.parametrize(
    "given",
    _INT_PARAMETERS,
    ids=[f"{given[0]} {given[given.index('DIGITS') - 1]}" for given in _INT_PARAMETERS],
)
def test_a_number_of_more_digits_than_python_converts_is_one_error_line_naming_the_option(
    db: str, given: tuple[str, ...]
) -> None:
    """An int parameter given 5,000 digits (past the 4,300 Python converts) is refused
    while the command line is read: one line naming it, without the digits, exit 2."""
    argv = [{"DIGITS": "9" * 5000, "DB": db}.get(part, part) for part in given]
    line = one_error_line(run(*argv, code=2))
    named = given[given.index("DIGITS") - 1]
    assert f"Invalid value for '{named}'" in line if named.startswith("-") else named in line
    assert len(line) < 200


@pytest.mark.parametrize("command", ["serve", "mcp"])
def test_an_unknown_log_level_is_a_usage_error_not_a_traceback(command: str) -> None:
    result = run(command, "--log-level", "loud", code=2)
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in result.output
    assert "Traceback" not in result.output


def test_knowledge_lists_entries_with_ids_that_explain_accepts(db: str) -> None:
    now = json.loads(run("knowledge", "ann", "--json", "--db", db).output)
    texts = [e["text"] for e in now]
    assert "User lives in Bergen." in texts and "User lives in Oslo." not in texts
    history = json.loads(run("knowledge", "ann", "--history", "--json", "--db", db).output)
    assert {"User lives in Oslo.", "User lives in Bergen."} <= {e["text"] for e in history}
    then = json.loads(run("knowledge", "ann", "--as-of", "2026-01-20", "--json", "--db", db).output)
    assert "User lives in Oslo." in [e["text"] for e in then]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT.*[+-]\d\d:\d\d", e["valid_from"]) for e in now)
    table = run("knowledge", "ann", "--db", db).output
    short = now[0]["entry_id"][:8]
    assert short in table
    explained = json.loads(run("explain", "ann", short, "--json", "--db", db).output)
    assert explained["entry_id"] == now[0]["entry_id"]
    firsts: dict[str, int] = {}
    for entry in history:
        firsts[entry["entry_id"][0]] = firsts.get(entry["entry_id"][0], 0) + 1
    shared = [c for c, n in firsts.items() if n > 1]
    if shared:
        ambiguous = run("explain", "ann", shared[0], "--db", db, code=2)
        assert "ambiguous" in one_error_line(ambiguous)
    assert "has no knowledge entry" in one_error_line(
        run("explain", "ann", "zzzz", "--db", db, code=2)
    )


def test_text_that_looks_like_markup_is_shown_as_it_was_said(tmp_path: Path) -> None:
    """Brackets in a user id, a message or an entry are words, not styles to apply."""
    db, user, said = str(tmp_path / "m.db"), "[/x]ann", "I love [red]jazz[/]."

    async def fill() -> None:
        config = MemoryConfig(db_path=db)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange(user, said, "Noted [/bold].")
            await memory.flush(user)
            await memory.add_message(user, "user", "and [bold]more[/bold] [/]")
            await memory.add_message("[/y]bob", "user", "hi")

    asyncio.run(fill())
    entries = json.loads(run("knowledge", user, "--json", "--db", db).output)
    assert [e["text"] for e in entries] == ["User loves [red]jazz[/]."]
    entry = entries[0]["entry_id"][:8]
    shown = {
        "log": run("log", user, "--db", db).output,
        "state": run("state", user, "--db", db).output,
        "knowledge": run("knowledge", user, "--db", db).output,
        "explain": run("explain", user, entry, "--db", db).output,
        "search": run("search", user, "jazz", "--lexical", "--db", db).output,
        "users": run("users", "--db", db).output,
    }
    assert "[red]jazz[/]" in shown["log"] and "[/bold]" in shown["log"]
    assert "[bold]more[/bold] [/]" in shown["state"]
    for command in ("knowledge", "explain", "search"):
        assert "User loves [red]jazz[/]." in shown[command], command
    assert "I love [red]jazz[/]." in shown["explain"]
    assert "[/x]ann" in shown["users"] and "[/x]ann" in shown["knowledge"]
    assert "more users follow: --after '[/x]ann'" in run("users", "--limit", "1", "--db", db).output


def test_state_prints_a_bounded_number_of_rows_and_says_how_many_more(db: str) -> None:
    async def buffer_more() -> None:
        config = MemoryConfig(db_path=db, auto_process=False)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            for n in range(3):
                await memory.add_message("bob", "user", f"buffered number {n}")

    asyncio.run(buffer_more())
    shown = run("state", "bob", "--limit", "2", "--db", db).output
    everything = json.loads(run("state", "bob", "--limit", "2", "--json", "--db", db).output)

    assert "buffered number 1" in shown and "buffered number 2" not in shown
    assert "1 more buffered messages: --json lists all (or a larger --limit)" in shown
    assert [m["content"] for m in everything["buffer"]][-1] == "buffered number 2"
    assert "--limit" in one_error_line(run("state", "bob", "--limit", "0", "--db", db, code=2))


def test_knowledge_prints_a_bounded_number_of_rows_and_says_how_many_more(db: str) -> None:
    everything = json.loads(run("knowledge", "ann", "--json", "--limit", "1", "--db", db).output)
    shown = run("knowledge", "ann", "--limit", "1", "--db", db).output

    assert len(everything) >= 3  # --json lists all, whatever the limit
    assert everything[0]["entry_id"][:8] in shown
    assert all(e["entry_id"][:8] not in shown for e in everything[1:])
    more = f"{len(everything) - 1} more knowledge entries: --json lists all (or a larger --limit)"
    assert more in shown
    assert "--limit" in one_error_line(run("knowledge", "ann", "--limit", "0", "--db", db, code=2))


def test_search_ranks_what_has_no_vector_yet_by_its_words_and_says_so(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As retrieve does: a long backlog of unembedded messages once made it wait minutes."""
    monkeypatch.setattr("memvee.cli.SEARCH_EMBED_SECONDS", 0)  # one batch, however fast
    note = "have no vector yet and were ranked by their words"

    budgeted = run("search", "ann", "Oslo", "--messages", "--db", db).output
    everything = run("search", "ann", "Oslo", "--messages", "--embed-all", "--db", db).output
    again = run("search", "ann", "Oslo", "--messages", "--db", db).output

    assert note in budgeted and "--embed-all embeds them first" in budgeted
    assert "I live in Oslo." in budgeted
    assert note not in everything and note not in again, "the vectors were kept"


def test_ctrl_c_while_search_embeds_is_one_error_line_not_a_lexical_answer(
    ann_at: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C that lands while the embedding model loads or embeds stops the search, as
    anywhere else, and the embedder's failure it caused is not printed. It was taken for
    that failure: a warning with its traceback, the search ranked by words, and exit 0."""
    from memvee.embedders._onnx import LocalDefaultEmbedder

    def ctrl_c(self: LocalDefaultEmbedder, texts: Any) -> list[list[float]]:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the signal's handler runs here
        raise AssertionError("Ctrl-C did not stop the embedder")

    monkeypatch.setattr(LocalDefaultEmbedder, "embed", ctrl_c)
    with _warnings_printed_as_the_command_line_prints_them():
        stopped = run("search", "ann", "Oslo", "--db-url", ann_at, code=2)
    assert one_error_line(stopped) == "error: interrupted"
    assert capsys.readouterr().err == ""


def test_export_through_a_symbolic_link_replaces_the_file_it_names_and_keeps_the_link(
    db: str, tmp_path: Path
) -> None:
    """The link is the user's: the export lands in the file it names. The link was
    replaced by a file of its own, and the file it named kept its old content."""
    (tmp_path / "kept").mkdir()
    real = tmp_path / "kept" / "ann.jsonl"
    real.write_text("old\n", encoding="utf-8")
    link = tmp_path / "ann-link.jsonl"
    link.symlink_to(real)
    run("export", "ann", "--out", str(link), "--db", db)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.read_text(encoding="utf-8") == run("export", "ann", "--db", db).output


def test_export_to_a_link_naming_its_own_standard_output_writes_there(
    db: str, tmp_path: Path
) -> None:
    """``--out /dev/stdout`` with stdout sent to a file: that file holds the log alone, as
    without ``--out``. The link (as root, /dev/stdout itself) was replaced by a regular
    file, and the redirected output held only the closing line."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    sent = tmp_path / "sent.jsonl"
    with sent.open("w", encoding="utf-8") as stdout:
        done = subprocess.run(
            [str(MEMVEE), "export", "ann", "--out", str(link), "--db", db],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=server_env(),
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stderr) == (0, "")
    assert link.is_symlink()
    assert sent.read_text(encoding="utf-8") == run("export", "ann", "--db", db).output


def test_a_ctrl_c_that_something_the_command_called_swallowed_still_ends_it_interrupted(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that catches ``KeyboardInterrupt`` (as memvee's embedders' containment
    does) does not make a Ctrl-C go unheard: the command ends with "error: interrupted"
    (after what it printed before it could hear it) and exit 2. It exited 0."""

    def swallowing_a_ctrl_c(self: Audit, **page: Any) -> list[Any]:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        return []

    monkeypatch.setattr(Audit, "users", swallowing_a_ctrl_c)
    ended = run("users", "--db", db, code=2).output
    assert ended.splitlines()[-1] == "error: interrupted" and "Traceback" not in ended


def _swallowing_a_ctrl_c() -> None:
    """A library's cleanup that catches the Ctrl-C that lands in it."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the signal's handler runs here
    except KeyboardInterrupt:
        pass


def test_a_warning_after_a_ctrl_c_something_swallowed_is_still_printed(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once a Ctrl-C came, only an embedder's failure (which it caused) goes unprinted, not
    what else goes wrong: every record was dropped."""
    users = Audit.users

    def swallowing_then_failing(self: Audit, **page: Any) -> Any:
        _swallowing_a_ctrl_c()
        logging.getLogger("events.store").error("a connection could not be rolled back")
        return users(self, **page)

    monkeypatch.setattr(Audit, "users", swallowing_then_failing)
    with _warnings_printed_as_the_command_line_prints_them():
        ended = run("users", "--db", db, code=2).output
    assert ended.splitlines()[-1] == "error: interrupted"
    assert capsys.readouterr().err == "a connection could not be rolled back\n"


def test_a_ctrl_c_a_command_heard_is_not_heard_again_by_a_later_call_of_its_function(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A program calling a command's function after a command ended interrupted gets its
    answer: the Ctrl-C stayed noted, and the call raised ``KeyboardInterrupt``."""
    users = Audit.users

    def swallowing(self: Audit, **page: Any) -> Any:
        _swallowing_a_ctrl_c()
        return users(self, **page)

    monkeypatch.setattr(Audit, "users", swallowing)
    run("users", "--db", db, code=2)
    monkeypatch.setattr(Audit, "users", users)
    try:
        memvee.cli.search(
            "ann",
            "Oslo",
            top_k=5,
            messages=False,
            as_of=None,
            lexical=True,
            embed_all=False,
            as_json=True,
            db=db,
            db_url=None,
        )
    except KeyboardInterrupt:  # not taken for a Ctrl-C of the test run itself
        pytest.fail("the Ctrl-C of the command before was heard again")
    assert json.loads(capsys.readouterr().out)["user_id"] == "ann"


def test_ctrl_c_after_reextract_promoted_prints_the_promotion_then_interrupted(
    ann_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C as the promotion commits is asyncio.run's to take (the run stops at its
    next ``await``): the command says what it promoted, then "error: interrupted", exit 2.
    The command's own handler made it land mid-statement, and it said only "interrupted"
    though the promotion was in the log."""
    promote = Audit.promote

    def promoted_then_ctrl_c(self: Audit, *args: Any, **kwargs: Any) -> Any:
        done = promote(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(Audit, "promote", promoted_then_ctrl_c)
    ended = run("reextract", "ann", "--promote", "--db-url", ann_at, code=2).output
    assert "ann: 1 entries extracted; 'reextracted' promoted" in ended
    assert ended.splitlines()[-1] == "error: interrupted" and "Traceback" not in ended
    with Audit(db_url=ann_at) as audit:
        assert audit.knowledge("ann")[0].text == "User lives in Oslo."


def test_the_log_reads_one_line_per_event_and_json_keeps_the_payload(db: str) -> None:
    shown = run("log", "ann", "--db", db).output
    assert "#1 user: I live in Oslo." in shown
    assert "{" not in shown and "MessageAdded" in shown and "KnowledgeSuperseded" in shown
    full = json.loads(run("log", "ann", "--json", "--db", db).output)
    added = next(e for e in full if e["type"] == "MessageAdded")
    assert added["payload"]["content"] == "I live in Oslo."
    assert datetime.fromisoformat(added["recorded_at"]).tzinfo is not None
    assert "T" in added["payload"]["sent_at"]


def test_paged_listings_say_when_more_rows_follow(db: str) -> None:
    first = run("users", "--limit", "1", "--db", db)
    assert "more users follow: --after 'ann'" in first.output
    last = run("users", "--after", "ann", "--limit", "1", "--db", db)
    assert "bob" in last.output and "more users" not in last.output
    paged = run("log", "ann", "--limit", "2", "--db", db)
    assert "more events follow: --from-version 3" in paged.output
    assert "more events" not in run("log", "bob", "--db", db).output


def test_users_past_the_last_page_says_there_are_none_not_an_empty_table(ann_at: str) -> None:
    """As ``quarantine`` and ``knowledge`` say they found nothing. It printed a table's
    header and no rows."""
    assert run("users", "--after", "ann", "--db-url", ann_at).output == "no users after 'ann'\n"
    assert json.loads(run("users", "--after", "ann", "--json", "--db-url", ann_at).output) == []


def test_stats_counts_the_events_that_are_there_after_forget(db: str) -> None:
    before = json.loads(run("stats", "--json", "--db", db).output)["events"]
    bob = len(json.loads(run("log", "bob", "--json", "--db", db).output))

    async def forget() -> None:
        async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.forget("bob")

    asyncio.run(forget())
    assert json.loads(run("stats", "--json", "--db", db).output)["events"] == before - bob


def test_forget_asks_first_on_a_terminal_then_erases_the_user_and_prints_the_receipt(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memvee.cli, "_on_a_terminal", lambda: True)
    events = len(json.loads(run("log", "ann", "--json", "--db", db).output))

    declined = runner.invoke(app, ["forget", "ann", "--db", db], input="n\n")
    assert declined.exit_code == 2
    assert f"Erase 'ann' and all memvee holds of them ({events} events) for good?" in (
        declined.output
    )
    assert "error: not confirmed: nothing of 'ann' was erased" in declined.output

    erased = runner.invoke(app, ["forget", "ann", "--db", db], input="y\n")
    assert erased.exit_code == 0, erased.output
    assert f"│ events             │ {events:<6} │" in erased.output, "the refusal erased none"
    assert "│ messages rows      │ 10     │" in erased.output
    assert re.search(r"erased \d+ records of 'ann' at \d{4}-\d\d-\d\d ", erased.output)
    assert "may stay" not in erased.output
    assert "no user 'ann'" in one_error_line(run("log", "ann", "--db", db, code=2))


def test_forget_whose_question_meets_the_end_of_input_says_nothing_was_erased(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-D at the question ended the command with "error: aborted", after the question
    on its line, which said neither why nor what became of the user."""
    monkeypatch.setattr(memvee.cli, "_on_a_terminal", lambda: True)

    ended = runner.invoke(app, ["forget", "ann", "--db", db], input="")

    assert ended.exit_code == 2
    question, told = ended.stderr.splitlines()
    assert question.startswith("Erase 'ann' and all memvee holds of them")
    assert told == "error: no answer (the input ended): nothing of 'ann' was erased"
    assert "no user" not in run("log", "ann", "--db", db).output


def test_forget_interrupted_at_its_question_says_so(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at the question is an interrupt, as anywhere else in a command (click makes
    it the same ``Abort`` as the input's end)."""
    monkeypatch.setattr(memvee.cli, "_on_a_terminal", lambda: True)
    monkeypatch.setattr(memvee.cli.typer, "confirm", _pressed_ctrl_c)

    ended = runner.invoke(app, ["forget", "ann", "--db", db])

    assert (ended.exit_code, ended.stderr.splitlines()[-1]) == (2, "error: interrupted")
    assert "no user" not in run("log", "ann", "--db", db).output


def test_forget_whose_question_cannot_be_answered_tells_why_on_a_line_of_its_own(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question fails otherwise than by the input's end (its output closed): the error
    line starts a line of its own; it followed the question on its line."""
    monkeypatch.setattr(memvee.cli, "_on_a_terminal", lambda: True)

    def lost_output(question: str, **options: Any) -> bool:
        typer.echo(f"{question} [y/N]: ", err=True, nl=False)
        raise OSError("standard output is closed")

    monkeypatch.setattr(memvee.cli.typer, "confirm", lost_output)

    ended = runner.invoke(app, ["forget", "ann", "--db", db])

    assert ended.exit_code == 2
    question, told = ended.stderr.splitlines()
    assert question.startswith("Erase 'ann'") and told.startswith("error: ")
    assert "no user" not in run("log", "ann", "--db", db).output


def _pressed_ctrl_c(question: str, **options: Any) -> bool:
    """``typer.confirm`` met by a Ctrl-C: an ``Abort`` raised while handling it, as click's."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise typer.Abort() from None


def test_forget_without_a_terminal_needs_yes_and_prints_the_receipt_as_json(db: str) -> None:
    """Where no one can be asked (a script, a pipe), nothing is erased without --yes."""
    refused = run("forget", "bob", "--db", db, code=2)
    assert one_error_line(refused) == (
        "error: forget erases 'bob' for good: give --yes to confirm (no terminal to ask on)"
    )

    answer = json.loads(run("forget", "bob", "--yes", "--json", "--db", db).output)

    receipt = answer["receipt"]
    assert (receipt["user_id"], receipt["scrubbed"]) == ("bob", True)
    assert receipt["rows"]["messages"] == 2, "the refusal erased none"
    assert receipt["rows"]["users"] == 1 and receipt["events"] > 2
    assert answer["total"] == receipt["events"] + receipt["snapshots"] + sum(
        receipt["rows"].values()
    )
    datetime.fromisoformat(receipt["erased_at"])
    again = run("forget", "bob", "--yes", "--db", db, code=2)
    assert one_error_line(again) == "error: no user 'bob' in this database"


@pytest.mark.parametrize(
    ("version", "said"),
    [
        ("live ", "the knowledge version must not begin or end with spaces"),
        ("v\tx\x1b[31m", "the knowledge version must not contain control characters (U+0009"),
    ],
)
def test_reextract_refuses_a_new_version_name_that_reads_as_another_in_one_line(
    db: str, version: str, said: str
) -> None:
    """As a new user id is: 'live ' would read as the live version in every table."""
    refused = run("reextract", "--all", "--as", version, "--db", db, code=2)
    assert one_error_line(refused).startswith(f"error: {said}")
    assert "KnowledgeReextracted" not in run("log", "ann", "--db", db).output


def test_import_refuses_a_missing_file_and_a_user_who_already_has_another_log(
    db: str, tmp_path: Path
) -> None:
    missing = run("import", str(tmp_path / "nope.jsonl"), "--db", db, code=2)
    assert "No such file" in one_error_line(missing)
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    first = json.loads(exported.read_text().splitlines()[1])
    assert "_type_" not in exported.read_text()
    assert datetime.fromisoformat(first["state"]["sent_at"]) == T0
    again = run("import", str(exported), "--db", db)
    assert again.output.strip() == "'ann': its whole log is here already"
    lines = exported.read_text().splitlines()
    said = json.loads(lines[3])
    said["state"]["content"] = "I never said this"
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join([*lines[:3], json.dumps(said)]) + "\n")
    refused = run("import", str(other), "--db", db, code=2)
    assert "'ann' already has another log in this database (line 4)" in one_error_line(refused)
    fresh = tmp_path / "fresh" / "copy.db"
    assert "imported" in run("import", str(exported), "--db", str(fresh)).output
    assert fresh.is_file()
    assert run("verify", "--db", str(fresh)).exit_code == 0
    copied = json.loads(run("log", "ann", "--json", "--limit", "1000", "--db", str(fresh)).output)
    original = json.loads(run("log", "ann", "--json", "--limit", "1000", "--db", db).output)
    assert copied == original


def test_importing_a_users_export_under_another_name_says_so(db: str, tmp_path: Path) -> None:
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    renamed = []
    for line in exported.read_text().splitlines():
        record = json.loads(line)
        record["user_id"] = "ann-again"
        if record["state"].get("user_id") == "ann":
            record["state"]["user_id"] = "ann-again"
        renamed.append(json.dumps(record))
    (tmp_path / "renamed.jsonl").write_text("\n".join(renamed) + "\n")
    refused = run("import", str(tmp_path / "renamed.jsonl"), "--db", db, code=2)
    line = one_error_line(refused)
    assert "the log of 'ann-again' holds messages or knowledge entries whose ids" in line
    assert "concurrently" not in line, "was: a user log was appended to concurrently"


@pytest.mark.parametrize("command", [["import", "x.jsonl"], ["stats"], ["rebuild"]])
def test_a_folder_given_as_the_database_is_said_to_be_one(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    argv = [str(tmp_path / a) if a.endswith(".jsonl") else a for a in command]
    line = one_error_line(run(*argv, "--db", str(folder), code=2))
    assert "hard links" not in line and ("folder" in line or "no memvee database" in line)


@pytest.mark.parametrize(
    ("lookalike", "says"),
    [
        ("ann ", "must not begin or end with spaces"),
        ("ann\u200b", "characters that show nothing"),
        ("ann\u17b4", "characters that show nothing"),
        ("ann\u2800", "characters that show nothing"),
        ("a\u0301nn", "Unicode NFC"),
    ],
)
def test_import_refuses_a_user_id_that_reads_as_another_as_every_write_does(
    db: str, tmp_path: Path, lookalike: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who reads as "ann" but is not, made by an import where add_message refuses
    the id: two users that look like one, and one no write could reach. Unless asked to:
    an older memvee, whose check was narrower, may have written such a user, who must be
    able to move with their log."""
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    renamed = []
    for line in exported.read_text().splitlines():
        record = json.loads(line)
        record["user_id"] = lookalike
        if record["state"].get("user_id") == "ann":
            record["state"]["user_id"] = lookalike
        renamed.append(json.dumps(record))
    (tmp_path / "lookalike.jsonl").write_text("\n".join(renamed) + "\n")
    fresh = tmp_path / "fresh.db"
    line = one_error_line(
        run("import", str(tmp_path / "lookalike.jsonl"), "--db", str(fresh), code=2)
    )
    assert line.startswith("error: line 1: user_id ") and says in line
    assert "--keep-lookalike-ids" in line
    assert not fresh.exists(), "the database the import made, with nothing in it"

    kept = run(
        "import", str(tmp_path / "lookalike.jsonl"), "--db", str(fresh), "--keep-lookalike-ids"
    )
    assert f"imported {len(renamed)} events of {lookalike!r}" in kept.stdout
    assert "is imported as it is" in caplog.text and says in caplog.text
    assert len(json.loads(run("log", lookalike, "--db", str(fresh), "--json").stdout)) == len(
        renamed
    )


@pytest.mark.parametrize(
    ("escape", "says"), [("\\u0000", "a NUL character"), ("\\udc00", "a lone surrogate")]
)
def test_import_refuses_text_no_database_stores_before_storing_any_line(
    db: str, tmp_path: Path, escape: str, says: str
) -> None:
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    lines = exported.read_text().splitlines()
    said = max(i for i, line in enumerate(lines) if '"content":"' in line)
    lines[said] = lines[said].replace('"content":"', f'"content":"{escape}', 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    fresh = tmp_path / "fresh.db"
    line = one_error_line(run("import", str(bad), "--db", str(fresh), code=2))
    assert f"line {said + 1} contains {says}" in line, "was a traceback, or stored"
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fresh"))
    assert made == [], "the database the import made, with nothing in it"


@pytest.mark.parametrize(
    ("field", "says"),
    [("sent_at", "after it was recorded"), ("valid_from", "begins at 2099-01-01")],
)
def test_import_refuses_a_message_or_an_entry_from_after_it_was_recorded(
    db: str, tmp_path: Path, field: str, says: str
) -> None:
    """``add_message`` refuses a time ahead of the clock; an edited export holding one
    made an entry that ends before it begins."""
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    lines = exported.read_text().splitlines()
    edited = next(i for i, line in enumerate(lines) if f'"{field}":"' in line)
    record = json.loads(lines[edited])
    if field == "sent_at":
        record["state"]["sent_at"] = "2099-01-01T00:00:00+00:00"
    else:
        record["state"]["entries"][0]["valid_from"] = "2099-01-01T00:00:00+00:00"
    lines[edited] = json.dumps(record)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    line = one_error_line(run("import", str(bad), "--db", str(tmp_path / "fresh.db"), code=2))
    assert f"line {edited + 1}: " in line and says in line


def test_import_refuses_a_time_outside_years_1_to_9999_in_utc_and_makes_no_database(
    tmp_path: Path,
) -> None:
    """Such a time was imported (exit 0), then ``users`` and every write for the user
    failed on it for good."""
    log = "events.user_log:UserLog"
    registered = {
        "user_id": "alice",
        "version": 1,
        "topic": f"{log}.Registered",
        "state": {
            "timestamp": "9999-12-31T23:59:59-14:00",
            "originator_topic": log,
            "user_id": "alice",
        },
    }
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps(registered) + "\n")
    result = run("import", str(late), "--db", str(tmp_path / "new.db"), code=2)
    assert "line 1: 'timestamp' of the Registered" in one_error_line(result)
    assert "outside years 1 to 9999" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.jsonl"]


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_import_of_a_file_with_no_log_is_refused_and_makes_no_database(
    tmp_path: Path, text: str
) -> None:
    """An empty file (an export that failed) used to exit 0 with a new, empty database."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text(text)
    line = one_error_line(run("import", str(empty), "--db", str(tmp_path / "new.db"), code=2))
    assert "holds no exported log" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_a_failed_import_into_a_new_database_url_removes_it_too(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    url = f"sqlite:///{tmp_path / 'new.db'}"

    run("import", str(empty), "--db-url", url, code=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_a_failed_import_keeps_the_new_database_another_store_opened_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application that opened the file the import made must not lose it under it."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    database = tmp_path / "new.db"
    opened: list[EventStore] = []
    import_lines = Audit.import_lines

    def an_application_opens_it_meanwhile(audit: Audit, *args: Any, **kwargs: Any) -> Any:
        opened.append(EventStore(sqlite_url(str(database))))
        return import_lines(audit, *args, **kwargs)

    monkeypatch.setattr(Audit, "import_lines", an_application_opens_it_meanwhile)
    try:
        run("import", str(empty), "--db", str(database), code=2)
        assert database.exists()
        opened[0].count()  # still its file: no "deleted or replaced while open"
    finally:
        opened[0].close()


def test_import_takes_a_byte_order_mark_and_refuses_what_is_not_text(
    db: str, tmp_path: Path
) -> None:
    exported = run("export", "ann", "--db", db).output
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + exported.replace("\n", "\r\n").encode())
    assert "imported" in run("import", str(marked), "--db", str(tmp_path / "a.db")).output
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00 not text\n")
    refused = run("import", str(binary), "--db", str(tmp_path / "b.db"), code=2)
    assert "line 1 is not UTF-8 text" in one_error_line(refused)
    listed = tmp_path / "listed.jsonl"
    listed.write_text('["not", "an", "event"]\n')
    refused = run("import", str(listed), "--db", str(tmp_path / "c.db"), code=2)
    assert "line 1 is not an exported event: a JSON object was expected, not list" in (
        one_error_line(refused)
    )


def _renamed(lines: list[str], user: str) -> list[str]:
    """An export's lines as another user's: the records and the Registered event."""
    records = [json.loads(line) for line in lines]
    for record in records:
        record["user_id"] = user
    records[0]["state"]["user_id"] = user
    return [json.dumps(r) for r in records]


def _registered_as(line: str, user: str, version: int = 1) -> str:
    """A Registered line of an export, for ``user`` and at ``version``."""
    record = json.loads(line)
    record["state"]["user_id"] = user
    record["version"] = version
    return json.dumps(record)


def _edited(lines: list[str], kind: str, change: Callable[[dict[str, Any]], Any]) -> list[str]:
    """The lines with the first event of ``kind`` changed by ``change`` (its record)."""
    records = [json.loads(line) for line in lines]
    change(next(r for r in records if r["topic"].endswith(f".{kind}")))
    return [json.dumps(r) for r in records]


def _first_entry(**changed: Any) -> Callable[[dict[str, Any]], Any]:
    """A change of an extraction's record: its first entry's fields."""
    return lambda record: record["state"]["entries"][0].update(changed)


def _one_id_twice(record: dict[str, Any]) -> None:
    """An extraction's second entry given the first one's id."""
    entries = record["state"]["entries"]
    entries[1]["entry_id"] = entries[0]["entry_id"]


def _twice(lines: list[str]) -> list[str]:
    """The second message given the first one's id."""
    records = [json.loads(line) for line in lines]
    first, second = [r for r in records if r["topic"].endswith(".MessageAdded")][:2]
    second["state"]["message_id"] = first["state"]["message_id"]
    return [json.dumps(r) for r in records]


BROKEN_EXPORTS = [
    (
        "a message whose content is a number",
        lambda a, b: _edited(a, "MessageAdded", lambda r: r["state"].update(content=123)),
        "'content' of the MessageAdded is not a str: 123",
    ),
    (
        "a message of no known role",
        lambda a, b: _edited(a, "MessageAdded", lambda r: r["state"].update(role="hacker")),
        "unknown role 'hacker'",
    ),
    (
        "a message out of its seq",
        lambda a, b: _edited(a, "MessageAdded", lambda r: r["state"].update(seq=7)),
        "message seq 7 where 1 was due",
    ),
    ("a message id said twice", lambda a, b: _twice(a), "comes twice"),
    (
        "a Registered without its topic",
        lambda a, b: _edited(a, "Registered", lambda r: r["state"].pop("originator_topic")),
        "line 1: the Registered has no 'originator_topic'",
    ),
    (
        "a version that is text",
        lambda a, b: _edited(a, "Registered", lambda r: r.update(version="1")),
        "line 1: the version must be a whole number from 1",
    ),
    (
        "an entry without its text",
        lambda a, b: _edited(
            a, "KnowledgeExtracted", lambda r: r["state"]["entries"][0].pop("text")
        ),
        "a knowledge entry is not well formed",
    ),
    (
        "an entry that lost its valid_from",
        lambda a, b: _edited(
            a, "KnowledgeExtracted", lambda r: r["state"]["entries"][0].pop("valid_from")
        ),
        "a knowledge entry is not well formed",
    ),
    (
        "the end of an entry the log never had",
        lambda a, b: _edited(
            a, "KnowledgeSuperseded", lambda r: r["state"].update(entry_id="no-such-entry")
        ),
        "knowledge version 'live' has no valid entry 'no-such-entry'",
    ),
    (
        "an entry citing a message the log never held",
        lambda a, b: _edited(a, "KnowledgeExtracted", _first_entry(source_message_ids=["m-1"])),
        "cites 'm-1', a message not of its batch",
    ),
    (
        "an entry citing no message",
        lambda a, b: _edited(a, "KnowledgeExtracted", _first_entry(source_message_ids=[])),
        "cites no message",
    ),
    (
        "two entries with one id",
        lambda a, b: _edited(a, "KnowledgeExtracted", _one_id_twice),
        "comes twice",
    ),
    (
        "an extraction covering part of its batch",
        lambda a, b: _edited(
            a, "KnowledgeExtracted", lambda r: r["state"].update(message_ids=["m-1"])
        ),
        "does not cover the 8 messages its batch claimed",
    ),
    (
        "a negative count of tokens",
        lambda a, b: _edited(
            a, "KnowledgeExtracted", lambda r: r["state"].update(input_tokens=-1_000_000)
        ),
        "input_tokens is -1000000, not a count of tokens",
    ),
    ("a line left out", lambda a, b: a[:3] + a[4:], "line 4: version 5 of 'ann' where 4 was due"),
    ("lines out of order", lambda a, b: [a[1], a[0], *a[2:]], "line 1: version 2 of 'ann'"),
    (
        "another user's Registered",
        lambda a, b: [_registered_as(a[0], "zed"), *a[1:]],
        "line 1: a log begins with its user's Registered event, and only there",
    ),
    (
        "a second Registered",
        lambda a, b: [*a, _registered_as(a[0], "ann", len(a) + 1)],
        "a log begins with its user's Registered event, and only there",
    ),
    (
        "bob's log broken after ann's",
        lambda a, b: a + b[:2] + b[3:],
        "version 4 of 'bob' where 3 was due (the lines of a log are in order, none left out) "
        "(imported before it: 'ann')",
    ),
]


def test_an_import_stopped_after_many_users_names_a_few_of_them_on_its_one_line(
    tmp_path: Path, db_url: str
) -> None:
    """Past ten users imported before the broken line, the error says how many, the first
    and the last, instead of listing every one: it listed them all, one line of megabytes
    for a file of many users."""
    source = str(tmp_path / "source.db")

    async def fill() -> None:
        async with Memory(db_path=source, extractor=OfflineExtractor(), embedder=False) as memory:
            for n in range(12):
                await memory.add_message(f"u{n:02d}", "user", "I live in Oslo.")

    asyncio.run(fill())
    with Audit(db_path=source) as audit:
        logs = [line for n in range(12) for line in audit.export(f"u{n:02d}")]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*logs, logs[-1]]) + "\n", encoding="utf-8")
    line = one_error_line(run("import", str(broken), "--db-url", db_url, code=2))
    assert line.endswith("(imported before it: 11 users, the first 'u00', the last 'u10')")


def test_an_import_stopped_after_many_users_names_the_last_one_it_imported(
    tmp_path: Path,
) -> None:
    """ "The last" is the user whose lines were imported last, one that came back in a
    later run of lines too: it was the last of the users met for the first time."""
    source = str(tmp_path / "source.db")

    async def fill() -> None:
        async with Memory(db_path=source, extractor=OfflineExtractor(), embedder=False) as memory:
            for n in range(12):
                await memory.add_message(f"u{n:02d}", "user", "I live in Oslo.")
            await memory.add_message("u00", "user", "I work at Acme.")

    asyncio.run(fill())
    with Audit(db_path=source) as audit:
        logs = {f"u{n:02d}": list(audit.export(f"u{n:02d}")) for n in range(12)}
    first = logs.pop("u00")
    runs = [*first[:-1], *(line for log in logs.values() for line in log), first[-1]]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*runs, logs["u05"][-1]]) + "\n", encoding="utf-8")
    line = one_error_line(run("import", str(broken), "--db", str(tmp_path / "m.db"), code=2))
    assert line.endswith("(imported before it: 12 users, the first 'u00', the last 'u00')")


@pytest.mark.parametrize(
    ("case", "broken", "message"), BROKEN_EXPORTS, ids=[c[0] for c in BROKEN_EXPORTS]
)
def test_import_checks_each_users_lines_before_storing_any(
    db: str, tmp_path: Path, case: str, broken: Any, message: str
) -> None:
    ann = run("export", "ann", "--db", db).output.splitlines()
    bob = _renamed(ann, "bob")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(broken(ann, bob)) + "\n")
    copy = str(tmp_path / "copy.db")
    refused = run("import", str(damaged), "--db", copy, code=2)
    assert message in one_error_line(refused)
    if "imported before it" not in message:
        assert not Path(copy).exists(), "the database the import made, with nothing in it"
        return
    users = json.loads(run("users", "--json", "--db", copy).output)
    assert [u["user_id"] for u in users] == ["ann"]
    assert run("verify", "--db", copy).exit_code == 0


def test_a_damaged_event_is_one_error_line_and_a_failed_export_leaves_no_partial_log(
    db: str, tmp_path: Path
) -> None:
    """verify and rebuild name the user whose log holds it, whom a forget would mend."""
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE memvee_events SET state = x'7b22' WHERE originator_version = 3")
    unreadable = "version 3 of "
    for command in (["log", "ann"], ["state", "ann"], ["verify"]):
        assert unreadable in one_error_line(run(*command, "--db", db, code=2)), command
    for command, kept in (
        (["verify"], "nothing was compared"),
        (["rebuild"], "nothing was dropped"),
    ):
        line = one_error_line(run(*command, "--db", db, code=2))
        assert "version 3 of the log of 'ann' cannot be read" in line, command
        assert f"{kept}: restore the database, or forget 'ann'" in line, command
    assert unreadable in one_error_line(run("export", "ann", "--db", db, code=2))  # no line
    out = tmp_path / "ann.jsonl"
    out.write_text("an earlier export\n")
    refused = run("export", "ann", "--out", str(out), "--db", db, code=2)
    assert unreadable in one_error_line(refused)
    assert out.read_text() == "an earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ann.jsonl",
        "m.db",
        "m.db-shm",
        "m.db-wal",
    ]


def test_an_export_whose_user_is_forgotten_while_it_runs_fails_and_writes_no_file(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read a page of one event at a time, the user's log erased after the first: one
    error line, exit 2, and neither the output file nor a partial one left behind."""
    read = EventStore.stored_events_of

    def erased_after_one(store: EventStore, user_id: str, page_size: int = 1000) -> Any:
        pages = read(store, user_id, page_size=1)
        yield next(pages)
        with store.transaction() as connection:
            store.forget(connection, user_id)
        yield from pages

    monkeypatch.setattr(EventStore, "stored_events_of", erased_after_one)
    out = tmp_path / "ann.jsonl"
    refused = run("export", "ann", "--out", str(out), "--db", db, code=2)
    assert "'ann' was forgotten while their log was read" in one_error_line(refused)
    assert not out.exists() and not (tmp_path / "ann.jsonl.partial").exists()


def test_verify_reports_a_log_that_does_not_replay_and_forget_still_erases_it(
    db: str,
) -> None:
    """A message whose content a damaged database holds as a number: the log cannot be
    replayed as a load would, so verify exits 1 naming it; the user can still be
    forgotten."""
    with sqlite3.connect(db) as connection:
        rowid, state = next(
            row
            for row in connection.execute("SELECT id, state FROM memvee_events")
            if b'"content":"I work at Acme."' in row[1]
        )
        damaged = state.replace(b'"content":"I work at Acme."', b'"content":123')
        connection.execute("UPDATE memvee_events SET state = ? WHERE id = ?", (damaged, rowid))
    report = json.loads(run("verify", "--json", "--db", db, code=1).output)
    broken = report[0]  # then the rows its content changed
    assert broken["table"] == "events" and broken["rebuilt"] is None
    assert "'content' of the MessageAdded is not a str: 123" in broken["live"][2]

    async def forget() -> None:
        async with Memory(db_path=db, extractor=OfflineExtractor(), embedder=False) as memory:
            receipt = await memory.forget("ann")
            assert receipt.events > 0 and await memory.messages("ann") == []

    asyncio.run(forget())
    assert run("verify", "--db", db).output.strip() == "projections match the log"


def test_verify_after_a_rebuild_reports_an_entry_that_lost_its_start(db: str) -> None:
    """An entry of an extraction this memvee stored, its ``valid_from`` gone from the
    database: a rebuild reads it as valid from its extraction, as the projections read
    the first memvees' entries, but the log is damaged and verify says so."""
    with sqlite3.connect(db) as connection:
        rowid, state = next(
            row
            for row in connection.execute(
                "SELECT id, state FROM memvee_events WHERE topic = 'KnowledgeExtracted'"
            )
        )
        stored = json.loads(state)
        del stored["entries"][0]["valid_from"]
        damaged = json.dumps(stored).encode()
        connection.execute("UPDATE memvee_events SET state = ? WHERE id = ?", (damaged, rowid))
    run("rebuild", "--db", db)
    report = json.loads(run("verify", "--json", "--db", db, code=1).output)
    assert [d["table"] for d in report] == ["events"]
    assert "a knowledge entry is not well formed" in report[0]["live"][2]


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database whose user's log prints far more than a pipe's buffer holds."""
    db = tmp_path_factory.mktemp("long") / "long.db"

    async def fill() -> None:
        async with Memory(config=MemoryConfig(db_path=str(db)), embedder=False) as memory:
            for start in range(0, 1200, 100):
                await asyncio.gather(
                    *(
                        memory.add_exchange("ann", f"{'a long message ' * 20} {i}", "ok")
                        for i in range(start, start + 100)
                    )
                )

    asyncio.run(fill())
    return db


@pytest.mark.parametrize(
    "command",
    [
        ["export", "ann"],
        ["state", "ann", "--limit", "3000"],
        ["state", "ann", "--json"],
        ["log", "ann", "--limit", "3000"],
        ["log", "ann", "--json", "--limit", "3000"],
    ],
    ids=" ".join,
)
def test_a_reader_that_stops_reading_ends_the_command_quietly(
    long_log: Path, command: list[str]
) -> None:
    """``memvee export ann | head``: once the reader is gone, the command stops as one
    killed by SIGPIPE (141), with no error line and nothing from the exit's flush; tables
    and JSON alike (a table exited 1, from rich, and one large write of JSON exited 0)."""
    with subprocess.Popen(
        [str(MEMVEE), *command, "--db", str(long_log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(),
    ) as run_:
        assert run_.stdout is not None and run_.stderr is not None
        assert len(run_.stdout.read(10)) == 10
        run_.stdout.close()
        stderr = run_.stderr.read().decode()
        code = run_.wait(timeout=60)

    assert code == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr


def test_reextract_with_claude_needs_an_api_key(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = run("reextract", "ann", "--extractor", "claude", "--db", db, code=2)
    assert "ANTHROPIC_API_KEY" in one_error_line(result)


def test_reextract_with_claude_takes_an_auth_token_as_the_library_does(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI asked for ANTHROPIC_API_KEY alone; the library takes a token or a profile
    too. Past the credential check, the malformed base URL is what is refused."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "anthropic"))
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "::")
    result = run("reextract", "ann", "--extractor", "claude", "--db", db, code=2)
    assert "ANTHROPIC_BASE_URL='::' is refused" in one_error_line(result)


@pytest.mark.parametrize("url", ["http://[::1", "::"])
def test_reextract_with_claude_refuses_a_malformed_base_url_in_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """A typo in ANTHROPIC_BASE_URL is the user's to fix: one line, exit 2, no message
    left out for it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    result = run("reextract", "ann", "--extractor", "claude", "--db", db, code=2)
    assert f"ANTHROPIC_BASE_URL={url!r} is refused" in one_error_line(result)


@pytest.mark.parametrize("model", ["claude\x07sonnet", "claude\u200bsonnet"])
def test_reextract_with_claude_refuses_a_memvee_model_no_call_could_use_in_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """MEMVEE_MODEL with a control character or one that shows nothing was sent with every
    call, and each failed; --model with the same name is refused. Nothing is written."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1")  # never the internet
    monkeypatch.setenv("MEMVEE_MODEL", model)
    result = run("reextract", "ann", "--extractor", "claude", "--db", db, code=2)
    assert one_error_line(result).startswith("error: MEMVEE_MODEL must not contain")
    with Audit(db) as audit:
        assert audit.unpromoted_versions("ann") == []


def test_import_refuses_a_line_with_a_bad_user_id_and_search_a_bad_top_k_or_query(
    db: str, tmp_path: Path
) -> None:
    exported = tmp_path / "ann.jsonl"
    run("export", "ann", "--out", str(exported), "--db", db)
    line = json.loads(exported.read_text().splitlines()[0])
    line["user_id"] = "a\u0000b"
    (tmp_path / "bad.jsonl").write_text(json.dumps(line) + "\n")
    target = tmp_path / "target.db"
    bad = run("import", str(tmp_path / "bad.jsonl"), "--db", str(target), code=2)
    assert "line 1" in one_error_line(bad)
    zero = run("search", "ann", "x", "--top-k", "0", "--lexical", "--db", db, code=2)
    assert "--top-k must be an int from 1 to 1,000, not 0" in one_error_line(zero)
    blank = run("search", "ann", " ", "--lexical", "--db", db, code=2)
    assert "query must not be empty" in one_error_line(blank)
    with Audit(db) as audit, pytest.raises(InvalidInputError, match="top_k"):
        audit.search("ann", "where", top_k="5")  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [["stats"], ["knowledge", "ann"], ["verify"]])
def test_a_damaged_database_file_is_one_error_line_not_a_traceback(
    db: str, tmp_path: Path, command: list[str]
) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(Path(db).read_bytes())
    with damaged.open("r+b") as file:  # the first table's root page, overwritten
        file.seek(4096)
        file.write(b"\xff" * 100)
    failed = run(*command, "--db", str(damaged), code=2)
    assert one_error_line(failed) == "error: the database refused: database disk image is malformed"


def test_escape_sequences_in_what_was_said_or_asked_reach_no_terminal(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")

    async def fill() -> None:
        config = MemoryConfig(db_path=db)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange("eve", "I love jazz \x1b[2J\x1b[31mred", "nice")
            await memory.process("eve")

    asyncio.run(fill())
    (entry,) = json.loads(run("knowledge", "eve", "--json", "--db", db).output)
    explained = run("explain", "eve", entry["entry_id"], "--db", db).output
    searched = run("search", "eve", "jazz \x1b[31m", "--lexical", "--db", db).output
    for output in (explained, searched):
        assert "\x1b" not in output and "\u241b[2J" in output


def test_a_rebuild_that_would_stop_at_an_unreadable_event_drops_nothing(db: str) -> None:
    with sqlite3.connect(db) as connection:  # one event of ann's log, damaged
        connection.execute(
            "UPDATE memvee_events SET state = ? WHERE id = "
            "(SELECT min(id) FROM memvee_events WHERE originator_version = 3)",
            (b"\x00damaged",),
        )
    before = run("knowledge", "bob", "--json", "--db", db).output
    refused = one_error_line(run("rebuild", "--db", db, code=2))
    assert "cannot be read" in refused and "nothing was dropped" in refused
    assert run("knowledge", "bob", "--json", "--db", db).output == before
    assert json.loads(before), "bob's knowledge is still there to read"


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["stats", "--db", "other.db", "--db-url", "sqlite:///x.db"], "not both"),
        (["rebuild", "--resume", "--user", "ann"], "drop --user"),
        (["reextract", "ann", "--as", "v2", "--model", "claude-x"], "--extractor claude"),
        (["reextract", "ann", "--all"], "give one USER or --all, not both"),
    ],
)
def test_flags_that_would_be_passed_over_are_refused(db: str, flags: list[str], said: str) -> None:
    with_db = flags if "--db" in flags else [*flags, "--db", db]
    assert said in one_error_line(run(*with_db, code=2))


def test_a_verify_while_another_runs_is_refused_not_broken(db: str) -> None:
    running = claim_alone(sqlite_url(db), VERIFY)  # as the other verify holds it
    assert running is not None
    try:
        refused = one_error_line(run("verify", "--db", db, code=2))
        assert "another verify runs on this database" in refused
    finally:
        running.release()
    assert "projections match the log" in run("verify", "--db", db).output


def test_a_resume_with_no_rebuild_stopped_says_so_and_changes_nothing(db: str) -> None:
    before = run("knowledge", "ann", "--json", "--db", db).output
    said = run("rebuild", "--resume", "--db", db).output
    assert said.strip() == "no rebuild to resume: none was stopped midway"
    assert run("knowledge", "ann", "--json", "--db", db).output == before


def _as_a_newer_memvee_writes(db: str, user_log: bytes | None = None) -> None:
    """Give each message and extraction (of the log ``user_log``, else of every log) a
    field this memvee does not know, and each knowledge entry a key of its own, as a newer
    memvee sharing the database would store them."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT id, originator_id, state FROM memvee_events "
            "WHERE topic IN ('MessageAdded', 'KnowledgeExtracted')"
        ).fetchall()
        for rowid, log_id, state in rows:
            if user_log is not None and log_id != user_log:
                continue
            newer = json.loads(state)
            newer["mood"] = "a secret mood"
            for entry in newer.get("entries", ()):
                entry["confidence"] = 0.9
            connection.execute(
                "UPDATE memvee_events SET state = ? WHERE id = ?",
                (json.dumps(newer).encode(), rowid),
            )


def test_fields_a_newer_memvee_added_are_passed_over_by_every_read_and_kept_by_export(
    db: str, tmp_path: Path
) -> None:
    """A rolling upgrade: what this memvee shows of a log is the same with or without the
    newer fields (its audit log shows no field it does not know); an export keeps them
    (nothing is lost), an import of it reads past them, and the next exchange folds on."""
    reads = (
        ["state", "ann"],
        ["state", "ann", "--at", "5"],
        ["knowledge", "ann", "--json"],
        ["search", "ann", "Oslo", "--lexical"],
    )
    before = [run(*command, "--db", db).output for command in reads]
    _as_a_newer_memvee_writes(db)
    assert [run(*command, "--db", db).output for command in reads] == before
    logged = json.loads(run("log", "ann", "--json", "--limit", "1000", "--db", db).output)
    assert all("mood" not in event["payload"] for event in logged)
    exported = run("export", "ann", "--db", db).output
    assert '"mood": "a secret mood"' in exported.replace('":"', '": "')
    assert "confidence" in exported
    assert "from" in run("rebuild", "--db", db).output
    assert run("verify", "--db", db).exit_code == 0
    (tmp_path / "ann.jsonl").write_text(exported)
    copy = str(tmp_path / "copy.db")
    assert "imported" in run("import", str(tmp_path / "ann.jsonl"), "--db", copy).output
    assert run("knowledge", "ann", "--json", "--db", copy).output == before[2]

    async def go_on() -> list[str]:
        config = MemoryConfig(db_path=db)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange("ann", "I love jazz.", "Nice.")
            await memory.flush("ann")
            return [entry.text for entry in await memory.knowledge("ann")]

    assert "User loves jazz." in asyncio.run(go_on())


def test_an_event_type_only_a_newer_memvee_knows_stops_that_users_log_alone_and_loses_nothing(
    db: str,
) -> None:
    """A newer memvee sharing the database stored an event of a new type in ann's log (and
    folded it into the projections, as every write does). What reads ann's log says to
    upgrade, never to forget ann; rebuild and verify refuse whole, dropping nothing; bob is
    read and written as before, and ann's event stays stored. An export holding such an
    event is refused by import the same way, before storing any line."""
    exported = run("export", "ann", "--db", db).output.splitlines()
    edited = {"user_id": "ann", "version": len(exported) + 1, "state": {}}
    edited["topic"] = "events.user_log:UserLog.MessageEdited"
    newer_file = Path(db).parent / "newer.jsonl"
    newer_file.write_text("\n".join([*exported, json.dumps(edited)]) + "\n")
    copy = Path(db).parent / "copy.db"
    refused = one_error_line(run("import", str(newer_file), "--db", str(copy), code=2))
    assert "a newer memvee wrote it? upgrade memvee" in refused and not copy.exists()
    with sqlite3.connect(db) as connection:
        log_id, version = connection.execute(
            "SELECT originator_id, max(originator_version) FROM memvee_events "
            "WHERE originator_id = (SELECT originator_id FROM memvee_events WHERE id = 1)"
        ).fetchone()
        connection.execute(
            "INSERT INTO memvee_events (originator_id, originator_version, topic, state) "
            "VALUES (?, ?, 'MessageEdited', ?)",
            (log_id, version + 1, b'{"timestamp":1767603600000000}'),
        )
        connection.execute(
            "UPDATE mv_position SET position = position + 1 WHERE name = 'projections'"
        )
    newer = "'MessageEdited' was written by a newer memvee"
    for command in (
        ["log", "ann"],
        ["state", "ann"],
        ["export", "ann"],
        ["rebuild", "--user", "ann"],
    ):
        line = one_error_line(run(*command, "--db", db, code=2))
        assert newer in line and "upgrade memvee" in line, command
    assert "I live in Oslo." in run("state", "ann", "--at", "3", "--db", db).output
    assert "User lives in Bergen." in run("search", "ann", "Bergen", "--db", db).output
    bob = run("knowledge", "bob", "--json", "--db", db).output
    ann = run("knowledge", "ann", "--json", "--db", db).output
    for command, kept in (
        (["verify"], "nothing was compared"),
        (["rebuild"], "nothing was dropped"),
    ):
        line = one_error_line(run(*command, "--db", db, code=2))
        assert f"version {version + 1} of the log of 'ann' was written by a newer memvee" in line
        assert "MessageEdited" in line, command
        assert f"{kept}: nothing is damaged, upgrade memvee" in line and "forget" not in line
    assert run("knowledge", "ann", "--json", "--db", db).output == ann
    assert run("knowledge", "bob", "--json", "--db", db).output == bob

    async def write() -> list[str]:
        config = MemoryConfig(db_path=db)
        async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
            await memory.add_exchange("bob", "I love jazz.", "Nice.")
            await memory.flush("bob")
            with pytest.raises(memvee.errors.NewerEventError, match="upgrade memvee"):
                await memory.add_exchange("ann", "I love jazz.", "Nice.")
            return [entry.text for entry in await memory.knowledge("bob")]

    assert "User loves jazz." in asyncio.run(write())
    with sqlite3.connect(db) as connection:
        (last,) = connection.execute(
            "SELECT topic FROM memvee_events WHERE originator_id = ? "
            "ORDER BY originator_version DESC LIMIT 1",
            (log_id,),
        ).fetchone()
    assert last == "MessageEdited"


def test_users_lists_everyone_else_and_names_a_log_holding_a_time_outside_years_1_to_9999(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An older memvee imported alice's log opened at 9999-12-31T23:59:59-14:00 (10000 in
    UTC) and folded it; ``users`` then crashed with a traceback for everyone."""
    alice = user_log_id("alice")
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO memvee_events (originator_id, originator_version, topic, state) "
            "VALUES (?, 1, 'Registered', ?)",
            (
                alice.bytes,
                b'{"timestamp":{"_type_":"utc_us","_data_":"9999-12-31T23:59:59-14:00"},'
                b'"originator_topic":"events.user_log:UserLog","user_id":"alice"}',
            ),
        )
    run("stats", "--db", db)  # folds it, as the older memvee did
    caplog.clear()
    caplog.set_level(logging.WARNING)
    listed = run("users", "--db", db).output
    assert "ann" in listed and "bob" in listed and "alice" not in listed
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'alice'" in warned[0] and str(alice) in warned[0]
    assert "outside years 1 to 9999" in warned[0] and "memvee verify" in warned[0]
    first = json.loads(run("users", "--limit", "1", "--json", "--db", db).stdout)
    assert [u["user_id"] for u in first] == ["ann"]
    assert "events" in run("verify", "--db", db, code=1).output


def _owe_a_rewrite(db: str) -> None:
    """Leave the file owing a rewrite, as a process stopped between a forget's commit and
    its rewrite does."""
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS memvee_owed_rewrites "
            "(erasure INTEGER PRIMARY KEY AUTOINCREMENT)"
        )
        connection.execute("INSERT INTO memvee_owed_rewrites DEFAULT VALUES")
    connection.close()


def _rewrites_owed(db: str) -> int:
    with sqlite3.connect(db) as connection:
        (owed,) = connection.execute("SELECT count(*) FROM memvee_owed_rewrites").fetchone()
    connection.close()
    return int(owed)


@pytest.mark.parametrize("command", ["import", "reextract", "rebuild", "verify"])
def test_a_writing_command_finishes_the_rewrite_an_earlier_erasure_left_owed(
    db: str, tmp_path: Path, command: str
) -> None:
    """Only the next Memory's open used to finish it, so a file used from the command line
    alone kept the erased words in its pages for good."""
    exported = tmp_path / "bob.jsonl"
    run("export", "bob", "--out", str(exported), "--db", db)
    run("forget", "bob", "--yes", "--db", db)
    _owe_a_rewrite(db)
    args = {
        "import": ["import", str(exported)],
        "reextract": ["reextract", "ann", "--as", "v2"],
        "rebuild": ["rebuild"],
        "verify": ["verify"],
    }[command]

    run(*args, "--db", db)

    assert _rewrites_owed(db) == 0


@pytest.mark.parametrize("command", ["import", "requeue", "reextract"])
def test_a_writing_command_that_writes_nothing_leaves_the_rewrite_owed(
    db: str, tmp_path: Path, command: str
) -> None:
    """An import of a log all present, a requeue of no message, or a re-extraction into a
    version covering every message already, held every other writer off for a rewrite
    though it committed nothing."""
    exported = tmp_path / "bob.jsonl"
    run("export", "bob", "--out", str(exported), "--db", db)
    run("reextract", "ann", "--as", "v2", "--db", db)
    _owe_a_rewrite(db)
    args = {
        "import": ["import", str(exported)],
        "requeue": ["requeue", "ann"],
        "reextract": ["reextract", "ann", "--as", "v2"],
    }[command]

    run(*args, "--db", db)

    assert _rewrites_owed(db) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["users"],
        ["stats"],
        ["log", "ann"],
        ["knowledge", "ann"],
        ["search", "ann", "Oslo"],
        ["export", "ann"],
        ["quarantine"],
    ],
)
def test_a_read_command_leaves_the_rewrite_an_earlier_erasure_left_owed(
    db: str, args: list[str]
) -> None:
    """The rewrite holds every other process's writes off for as long as it takes (seconds
    on a file of a few hundred MB): a read is no time to run it."""
    _owe_a_rewrite(db)

    run(*args, "--db", db)

    assert _rewrites_owed(db) == 1


def test_on_a_read_only_database_an_owed_rewrite_is_one_warning_and_no_traceback(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    _owe_a_rewrite(db)
    caplog.set_level(logging.DEBUG, logger="memvee")
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"

    read = run("users", "--db-url", read_only)
    wrote = runner.invoke(app, ["requeue", "ann", "--db-url", read_only])

    assert "Traceback" not in read.output + wrote.output
    assert not any(r.exc_info for r in caplog.records), "no traceback logged"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) <= 1 and all("left to an open that can write" in m for m in warned)
    assert _rewrites_owed(db) == 1
