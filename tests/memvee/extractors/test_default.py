"""default_extractor: Claude when an API key is configured, offline rules otherwise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memvee import Memory, StorageError
from memvee.extractors import (
    DEFAULT_MODEL,
    MODEL_ENV_VAR,
    ClaudeExtractor,
    OfflineExtractor,
    _default,
    default_extractor,
)

API_KEY = "sk-ant-default-DO-NOT-LEAK-42"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: not warned yet, no model override."""
    monkeypatch.setattr(_default, "_offline_warned", False)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)


def offline_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "memvee.extractors" and r.levelno == logging.WARNING
    ]


async def test_a_key_selects_claude_with_the_given_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)

    extractor = default_extractor(model="claude-haiku-5-5", timeout=12.5)

    assert isinstance(extractor, ClaudeExtractor)
    assert (extractor.model, extractor.timeout) == ("claude-haiku-5-5", 12.5)
    plain = default_extractor()
    assert isinstance(plain, ClaudeExtractor) and plain.model == DEFAULT_MODEL
    assert offline_warnings(caplog) == []
    assert API_KEY not in caplog.text
    await extractor.aclose()


@pytest.mark.parametrize("key", [None, "", "   "])
def test_no_key_selects_the_offline_rules(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    if key is None:
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ANTHROPIC_API_KEY", key)

    assert isinstance(default_extractor(), OfflineExtractor)


def test_running_offline_is_warned_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    caplog.set_level(logging.WARNING, logger="memvee.extractors")

    for _ in range(3):
        default_extractor()

    (warning,) = offline_warnings(caplog)
    assert "offline" in warning.getMessage()
    assert "ANTHROPIC_API_KEY" in warning.getMessage()


async def test_a_memory_without_a_key_warns_of_running_offline_once_it_has_opened(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A database that cannot be opened is the one thing an open that fails says."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    caplog.set_level(logging.WARNING, logger="memvee.extractors")
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(StorageError, match="is a folder"):
        async with Memory(db_path=str(folder), embedder=False):
            pass
    assert offline_warnings(caplog) == []
    async with Memory(db_path=str(tmp_path / "m.db"), embedder=False):
        (warning,) = offline_warnings(caplog)
    assert "running offline" in warning.getMessage()


def test_a_memory_extracting_offline_never_loads_the_anthropic_sdk(tmp_path: Path) -> None:
    script = f"""
import asyncio, sys
from memvee import Memory, MemoryConfig
from memvee.extractors import OfflineExtractor

async def main() -> None:
    config = MemoryConfig(db_path={str(tmp_path / "m.db")!r})
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo.", "Nice.")
        await memory.flush("ann")
    async with Memory(config=config, embedder=False) as memory:  # no key: offline
        await memory.retrieve("ann", "Oslo")

asyncio.run(main())
print("anthropic" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_command_line_and_a_claude_extractor_never_load_the_offline_rules() -> None:
    """Compiling the rules takes a tenth of a second of every start: only an extractor
    that runs them loads them."""
    script = """
import sys
import memvee.cli
from memvee.extractors import default_extractor

default_extractor()  # a key is set: Claude, and no warning of running offline
print("memvee.extractors._offline" in sys.modules)
"""
    env = {**os.environ, "ANTHROPIC_API_KEY": API_KEY}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
