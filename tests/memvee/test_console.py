"""The ``memvee`` console script's entry: a handled Ctrl-C ends it with its exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memvee._console
from memvee._console import _CtrlC
from memvee.cli import app
from tests.support.server_process import server_env

_CTRL_C_INSIDE_EXEC_AS_THE_CLI_LOADS = """
import importlib.abc, importlib.util, signal, sys
from memvee._console import main

# Python leaves SIGINT ignored when it started so (a background job of a shell script).
signal.signal(signal.SIGINT, signal.default_int_handler)


class CtrlCInsideExec(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "memvee.cli":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec("import os, signal\\nos.kill(os.getpid(), signal.SIGINT)\\nwhile True: pass")


sys.meta_path.insert(0, CtrlCInsideExec())
main()
"""


def _run_as_python_dash_m(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as ``python -m`` runs memvee (the way CPython's exit code differs),
    with the command ``users``."""
    (folder / "entry.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "entry", "users"],
        capture_output=True,
        text=True,
        cwd=folder,
        env=server_env(),
        timeout=60,
        check=False,
    )


def test_a_ctrl_c_handled_inside_exec_ends_python_dash_m_memvee_with_exit_code_2(
    tmp_path: Path,
) -> None:
    """CPython 3.11 marks a KeyboardInterrupt raised inside ``exec()`` (dataclasses builds
    methods so, as the engine loads) as never handled, though memvee handles it:
    ``python -m memvee`` printed "error: interrupted" and then died by SIGINT (130)."""
    done = _run_as_python_dash_m(tmp_path, _CTRL_C_INSIDE_EXEC_AS_THE_CLI_LOADS)
    assert (done.returncode, done.stderr) == (2, "error: interrupted\n")


def test_a_ctrl_c_the_command_handles_is_noted_for_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while a command runs (here as it opens the database) is noted, so that the
    process leaves with exit code 2 whatever CPython marked."""
    ctrl_c = _CtrlC()
    monkeypatch.setattr(memvee._console, "_ctrl_c", ctrl_c)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(memvee.cli, "_audit", interrupted)
    result = CliRunner().invoke(app, ["users", "--db", str(tmp_path / "m.db")])
    assert (result.exit_code, result.output) == (2, "error: interrupted\n")
    assert ctrl_c.handled


_CTRL_C_AS_TYPER_BUILDS_THE_COMMAND = """
import sys
import typer.main
from memvee._console import main


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


typer.main.get_command = interrupted
main()
"""


def test_a_ctrl_c_as_typer_builds_the_command_is_one_line_and_exit_code_2(
    tmp_path: Path,
) -> None:
    """Before any command runs, typer reads every command's annotations: a Ctrl-C there
    escaped every handler, a traceback and a death by SIGINT."""
    done = _run_as_python_dash_m(tmp_path, _CTRL_C_AS_TYPER_BUILDS_THE_COMMAND)
    assert (done.returncode, done.stderr) == (2, "error: interrupted\n")
