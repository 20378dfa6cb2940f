"""RedactSecrets: a log record reaches its handlers with no credential in it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memvee._log_redaction import RedactSecrets, protect_loggers
from memvee._secrets import mask_url_userinfo

API_KEY = "sk-ant-filter-DO-NOT-LEAK-42"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    yield


def _cleaned(msg: str, *args: object, secrets: tuple[str, ...] = ()) -> str:
    record = logging.makeLogRecord({"msg": msg, "args": args, "levelno": logging.INFO})
    assert RedactSecrets(secrets).filter(record)
    return record.getMessage()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "POST http://gw:pw@127.0.0.1:8080/v1/messages",
            "POST http://***@127.0.0.1:8080/v1/messages",
        ),
        ("https://token@gateway.example", "https://***@gateway.example"),
        ("postgresql+psycopg://u:p@ss@db/x?a=1", "postgresql+psycopg://***@db/x?a=1"),
        ("'http://u:p@h' and 'http://v:q@k/'", "'http://***@h' and 'http://***@k/'"),
        (
            "mail bob@example.com at http://example.com/a@b",
            "mail bob@example.com at http://example.com/a@b",
        ),
    ],
)
def test_the_user_info_of_every_url_is_masked(text: str, shown: str) -> None:
    assert mask_url_userinfo(text) == shown
    assert _cleaned("%s", text) == shown


def test_the_environments_credentials_are_redacted_wherever_they_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gw:gateway-password-7@gateway.example")
    assert _cleaned("key %s, password %s", API_KEY, "gateway-password-7") == (
        "key [redacted], password [redacted]"
    )


def test_the_voyage_api_key_is_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOYAGE_API_KEY", "pa-voyage-key-1234567890\n")
    assert _cleaned("embedder failed: %r", "pa-voyage-key-1234567890\n") == (
        "embedder failed: '[redacted]'"
    )


def test_a_short_secret_is_masked_in_urls_only() -> None:
    """Replacing a two-letter password wherever it shows would garble every line."""
    assert _cleaned("pw at http://u:pw@h/", secrets=("pw",)) == "pw at http://***@h/"


def test_arguments_that_do_not_fit_the_message_still_log_cleaned() -> None:
    assert _cleaned("%s and %s", "http://u:p@h/") == "%s and %s % ('http://***@h/',)"


def test_protected_loggers_clean_records_for_any_handler(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logger's filters see only its own records, so each existing child gets one."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    child = logging.getLogger("memvee_test_client.transport")
    protect_loggers(["memvee_test_client"])
    protect_loggers(["memvee_test_client"])
    caplog.set_level(logging.INFO)

    child.info("GET http://u:p@h/ as %s", API_KEY)

    assert caplog.messages == ["GET http://***@h/ as [redacted]"]
    assert sum(isinstance(f, RedactSecrets) for f in child.filters) == 1


_LOGGER_NAMED = re.compile(r'getLogger\("(memvee[\w.]*)"\)')


def _loggers_memvee_logs_on() -> list[str]:
    """The name of every logger the source of memvee's packages (its engine's too) makes."""
    root = Path(__file__).resolve().parents[2]
    return sorted(
        {
            name
            for package in ("memvee", "actors", "events", "projections")
            for path in (root / package).rglob("*.py")
            for name in _LOGGER_NAMED.findall(path.read_text(encoding="utf-8"))
        }
    )


async def test_every_logger_memvee_logs_on_cleans_its_records_once_a_memory_opens(
    make_memory: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application's handlers carry no filter of memvee's: once a Memory opens, every
    logger memvee logs on (a module's imported later too, ``memvee.audit``'s) takes the
    credentials out of its records before they reach them. None did."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    await make_memory()
    caplog.set_level(logging.INFO)
    names = _loggers_memvee_logs_on()
    assert {"memvee", "memvee.actors", "memvee.audit", "memvee.events"} <= set(names)

    for name in names:
        logging.getLogger(name).info("%s: key %s", name, API_KEY)

    assert caplog.messages == [f"{name}: key [redacted]" for name in names]
