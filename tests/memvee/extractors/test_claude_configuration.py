"""ClaudeExtractor's own configuration (the base URL it calls, the SDK client it builds
from the environment) is refused or failed as configuration, never blamed on a batch."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock, MagicMock, create_autospec

import anthropic
import numpy as np
import pytest
from sqlalchemy import inspect

from events import UserLog
from events.errors import ExtractionError, InvalidInputError
from events.extraction import BatchMessage, ExtractionBatch
from memvee import Memory, MemoryConfig, ProcessingError
from memvee.audit import Audit
from memvee.errors import MissingCredentialsError
from memvee.extractors import ClaudeExtractor, OfflineExtractor
from projections.bulk_runs import BULK_BATCHES

API_KEY = "sk-ant-test-DO-NOT-LEAK-0123456789abcdef"
PASSWORD = "gateway-pass-DO-NOT-LEAK-42"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BATCH = ExtractionBatch("u1", "t1", (BatchMessage("m-1", "user", "I live in Oslo.", T0),))


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No Anthropic setting but an API key, and a config directory of no profiles."""
    for name in [name for name in os.environ if name.startswith("ANTHROPIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "anthropic"))
    yield monkeypatch


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1", "not a URL"),
        ("::", "not a URL"),
        ("ftp://gateway.example", "not an http:// or https:// URL"),
        ("gateway.example", "not an http:// or https:// URL"),
        ("http://", "names no host"),
        ("", "empty"),
        (" https://api.anthropic.com", "whitespace"),
        ("http://exa mple.com", "its host 'exa%20mple.com' is no host name"),
        ("http://exa%41mple.com", "its host 'exa%41mple.com' is no host name"),
        ("http://127.0.0.1:99999", "its port 99999 is not from 1 to 65535"),
        ("http://127.0.0.1:0", "its port 0 is not from 1 to 65535"),
    ],
)
def test_a_base_url_no_call_could_reach_is_refused_up_front(
    environment: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    environment.setenv("ANTHROPIC_BASE_URL", url)
    with pytest.raises(InvalidInputError, match=f"ANTHROPIC_BASE_URL=.* is refused: .*{problem}"):
        ClaudeExtractor()


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:8080",
        "https://gateway.example/anthropic/",
        "http://claude_gateway:1",
    ],
)
def test_a_base_url_of_a_proxy_or_gateway_is_taken(
    environment: pytest.MonkeyPatch, url: str
) -> None:
    environment.setenv("ANTHROPIC_BASE_URL", url)
    assert str(ClaudeExtractor().client.base_url).rstrip("/") == url.rstrip("/")


def test_a_base_url_of_an_international_host_name_is_taken(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("ANTHROPIC_BASE_URL", "https://bücher.example:65535")
    assert str(ClaudeExtractor().client.base_url) == "https://xn--bcher-kva.example:65535"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("   ", "model must not be empty"),
        ("claude-sonnet-5-5\n", "model must not begin or end with spaces"),
        ("claude\tsonnet", "model must not contain control characters (U+0009 at index 6)"),
    ],
)
def test_a_model_the_api_would_be_sent_as_no_model_is_refused(
    environment: pytest.MonkeyPatch, model: str, says: str
) -> None:
    """They went to the API as they were; "" stands for the default, as it always did."""
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        ClaudeExtractor(model=model)
    assert ClaudeExtractor(model="claude-sonnet-5-5").model == "claude-sonnet-5-5"
    assert ClaudeExtractor(model="").model == ClaudeExtractor().model


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("max_tokens", 1.5, "max_tokens must be an int, not float"),
        ("max_tokens", "8192", "max_tokens must be an int, not str"),
        ("max_tokens", True, "max_tokens must be an int, not bool"),
        ("max_retries", 1.5, "max_retries must be an int, not float"),
        ("max_retries", "2", "max_retries must be an int, not str"),
        ("timeout", "60", "timeout must be a number of seconds, not str"),
        ("timeout", True, "timeout must be a number of seconds, not bool"),
        ("model", 3, "model must be a str or None, not int"),
        ("cache_prefix", "no", "cache_prefix must be a bool or None, not str"),
        ("cache_prefix", np.True_, "cache_prefix must be a bool or None, not numpy.bool"),
        ("max_tokens", np.True_, "max_tokens must be an int, not numpy.bool"),
        ("max_tokens", np.float64(100), "max_tokens must be an int, not numpy.float64"),
    ],
)
def test_a_setting_of_the_wrong_kind_is_refused_by_name(
    environment: pytest.MonkeyPatch, setting: str, value: Any, says: str
) -> None:
    """A float max_tokens was sent with every call (the API takes a whole number only); a
    str failed with a bare TypeError or AttributeError, "no" turned prompt caching on and
    a timeout of True meant one second."""
    with pytest.raises(InvalidInputError, match=re.escape(says)):
        ClaudeExtractor(**{setting: value})


def test_the_refusal_never_shows_a_password_the_base_url_carries(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("ANTHROPIC_BASE_URL", f"https://memvee:{PASSWORD}@[::1")
    with pytest.raises(InvalidInputError) as caught:
        ClaudeExtractor()
    assert PASSWORD not in str(caught.value) and "https://***@" in str(caught.value)


async def test_a_memory_whose_default_extractor_has_a_malformed_base_url_does_not_open(
    environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo in ``ANTHROPIC_BASE_URL`` is told when the Memory opens, before any message
    could be blamed for it."""
    environment.setenv("ANTHROPIC_BASE_URL", "http://[::1")
    with pytest.raises(InvalidInputError, match="ANTHROPIC_BASE_URL='http://\\[::1' is refused"):
        async with Memory(db_path=str(tmp_path / "m.db"), embedder=False):
            pass


async def test_a_given_client_whose_base_url_no_call_could_reach_is_refused() -> None:
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url="ftp://gateway.example")
    try:
        with pytest.raises(InvalidInputError, match=r"client.s base URL .* not an http"):
            ClaudeExtractor(client=client)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: anthropic.Anthropic(api_key=API_KEY), "synchronous anthropic.Anthropic"),
        (lambda: anthropic.AsyncAnthropic, "the class AsyncAnthropic"),
        (lambda: API_KEY, "str"),
    ],
    ids=["synchronous client", "client class", "api key"],
)
def test_a_client_that_is_no_async_messages_client_is_refused_by_what_it_is(
    make: Any, said: str
) -> None:
    """A synchronous client (or a key, or the class) was taken: every batch then failed on
    it as if the batch were at fault, and each message was quarantined, process()
    returning 0 without an error. The refusal names the kind given, never a key."""
    with pytest.raises(
        InvalidInputError, match=r"client must be an anthropic\.AsyncAnthropic"
    ) as refused:
        ClaudeExtractor(client=make())
    assert said in str(refused.value)
    assert API_KEY not in str(refused.value)


def test_a_key_read_from_a_file_with_its_newline_is_sent_without_it(
    environment: pytest.MonkeyPatch,
) -> None:
    """As ``MEMVEE_MODEL`` is, the key is taken without the whitespace around it; with its
    newline every call failed as "could not reach the Claude API", nothing saying why."""
    environment.setenv("ANTHROPIC_API_KEY", f" {API_KEY}\n")
    assert ClaudeExtractor().client.api_key == API_KEY


@pytest.mark.parametrize(
    "key",
    [
        f"{API_KEY[:10]} {API_KEY[10:]}",
        f"{API_KEY}\x7f",
        f"{API_KEY}\u2019",
        f"{API_KEY}\r\nx",
        " \n",
    ],
    ids=["a space", "a control character", "a curly quote", "a line break", "blank"],
)
async def test_a_key_no_request_header_can_carry_is_refused_up_front(
    environment: pytest.MonkeyPatch, key: str
) -> None:
    """A key with whitespace, a control character or a character outside ASCII inside
    (or one that is only whitespace) is refused when the extractor is made (a Memory's
    default one, when it opens), never shown, where every run failed as if the API were
    unreachable; a given client's key is checked so too."""
    environment.setenv("ANTHROPIC_API_KEY", key)
    with pytest.raises(InvalidInputError, match="ANTHROPIC_API_KEY is refused") as caught:
        ClaudeExtractor()
    assert "DO-NOT-LEAK" not in str(caught.value)
    client = anthropic.AsyncAnthropic(api_key=f"{API_KEY}\n")
    try:
        with pytest.raises(InvalidInputError, match="client's API key is refused") as caught:
            ClaudeExtractor(client=client)
        assert "DO-NOT-LEAK" not in str(caught.value)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("ANTHROPIC_BASE_URL", f"http://memvee:{PASSWORD}@[::1", "cannot be built"),
        ("ANTHROPIC_BASE_URL", "ftp://gateway.example", "base URL .* is refused"),
    ],
)
async def test_a_client_the_environment_cannot_make_fails_the_run_and_blames_no_batch(
    environment: pytest.MonkeyPatch, setting: str, value: str, said: str
) -> None:
    """The environment changed after the extractor was configured: the client built for
    the extraction's loop fails every batch alike, so the failure may pass."""
    claude = ClaudeExtractor()
    environment.setenv(setting, value)
    with pytest.raises(ExtractionError, match=said) as caught:
        await claude.extract(BATCH)
    assert not caught.value.repeats
    assert "DO-NOT-LEAK" not in str(caught.value)


async def test_a_profile_that_is_not_there_keeps_every_message_buffered(
    environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a key the SDK reads ``ANTHROPIC_PROFILE``'s file, and fails to build the
    client when it is missing: each process() fails saying so, and no message is
    quarantined for it."""
    environment.delenv("ANTHROPIC_API_KEY")
    environment.setenv("ANTHROPIC_PROFILE", "absent")
    config = MemoryConfig(db_path=str(tmp_path / "m.db"), retry_delay=0.01, retry_delay_max=0.01)
    async with Memory(config=config, extractor=ClaudeExtractor(), embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "Nice city!")
        for _ in range(3):
            with pytest.raises(ProcessingError, match=r"cannot be built .*CredentialsError"):
                await memory.process("ann")
        assert len(await memory.buffer("ann")) == 2
        assert await memory.quarantined("ann") == []


@pytest.mark.parametrize(
    "make",
    [MagicMock, AsyncMock, lambda: MagicMock(spec=anthropic.AsyncAnthropic)],
    ids=["MagicMock", "AsyncMock", "spec"],
)
def test_a_stand_in_client_an_application_tests_with_is_taken(make: Any) -> None:
    """A mock has no base URL to check: the extractor is made with it, as before the
    check was added."""
    client = make()
    assert ClaudeExtractor(client=client).client is client


@pytest.fixture
def no_credentials(environment: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No API key, token, profile or custom header anywhere the SDK looks."""
    environment.delenv("ANTHROPIC_API_KEY")
    environment.delenv("ANTHROPIC_CONFIG_DIR")
    environment.setenv("HOME", str(tmp_path / "home"))
    environment.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    return environment


async def test_a_memory_with_the_claude_extractor_and_no_credentials_refuses_to_open(
    no_credentials: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No ANTHROPIC_API_KEY: the Memory says so when it opens, as a typed error, before
    the database is made, where it used to open and fail every task it ran."""
    db = tmp_path / "m.db"
    memory = Memory(config=MemoryConfig(db_path=str(db)), extractor=ClaudeExtractor())
    with pytest.raises(MissingCredentialsError, match="set ANTHROPIC_API_KEY"):
        await memory.open()
    assert not db.exists(), "nothing written"
    assert not memory.is_open


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ANTHROPIC_API_KEY", API_KEY),
        ("ANTHROPIC_AUTH_TOKEN", API_KEY),
        ("ANTHROPIC_CUSTOM_HEADERS", f"X-Api-Key: {API_KEY}"),
    ],
)
def test_any_credential_the_sdk_would_send_is_taken(
    no_credentials: pytest.MonkeyPatch, setting: str, value: str
) -> None:
    no_credentials.setenv(setting, value)
    ClaudeExtractor().check_credentials()


def test_a_client_given_without_credentials_is_refused_and_one_with_a_key_taken(
    no_credentials: pytest.MonkeyPatch,
) -> None:
    bare = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9")
    with pytest.raises(MissingCredentialsError, match="client given has no credentials"):
        ClaudeExtractor(client=bare).check_credentials()
    keyed = anthropic.AsyncAnthropic(api_key=API_KEY, base_url="http://127.0.0.1:9")
    ClaudeExtractor(client=keyed).check_credentials()


def test_a_client_for_a_gateway_that_needs_no_key_is_taken(
    no_credentials: pytest.MonkeyPatch,
) -> None:
    """The SDK's route to a keyless gateway is an auth header set to ``Omit``: no
    credential is sent, and none is wanted."""
    keyless = anthropic.AsyncAnthropic(
        base_url="http://127.0.0.1:9", default_headers={"Authorization": anthropic.Omit()}
    )
    ClaudeExtractor(client=keyless).check_credentials()


@pytest.mark.parametrize(
    "stand_in",
    [
        lambda: MagicMock(spec=anthropic.AsyncAnthropic),
        lambda: create_autospec(anthropic.AsyncAnthropic, instance=True),
    ],
    ids=["magicmock-spec", "create-autospec"],
)
def test_a_stand_in_client_with_the_sdk_client_spec_passes_the_credentials_check(
    no_credentials: pytest.MonkeyPatch, stand_in: Any
) -> None:
    ClaudeExtractor(client=stand_in()).check_credentials()


async def test_a_bulk_reextraction_without_credentials_is_refused_before_anything_is_kept(
    no_credentials: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Message Batches path called the SDK directly: its TypeError ("Could not resolve
    authentication method") came out of the run after the batch's requests were kept."""
    url = f"sqlite:///{tmp_path / 'bulk.db'}"
    async with Memory(config=MemoryConfig(db_url=url), extractor=OfflineExtractor()) as memory:
        await memory.add_exchange("ann", "I live in Oslo", "ok")
        await memory.flush("ann")
    with Audit(db_url=url) as audit:
        with pytest.raises(MissingCredentialsError):
            await audit.reextract_in_bulk(["ann"], ClaudeExtractor(max_retries=0), "v2")
        with pytest.raises(MissingCredentialsError):
            await audit.reextract("ann", ClaudeExtractor(max_retries=0), "v2")
        with audit.store.engine.connect() as connection:
            assert not inspect(connection).has_table(BULK_BATCHES.name)
        assert not any(
            isinstance(e, UserLog.ReextractionFailed) for e in audit.store.events_of("ann")
        )
