"""RedactSecrets: a log record reaches its handlers with no credential in it."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import memvee._log_redaction as redaction
from events import credentials
from events.credentials import configured_secrets
from memvee._log_redaction import OWN_LOGGERS, RedactSecrets, protect_loggers
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

    for name in names:
        logging.getLogger(name).info("%s: key %s", name, API_KEY)

    assert caplog.messages == [f"{name}: key [redacted]" for name in names]


def test_the_loggers_a_memory_protects_are_every_one_memvee_logs_on() -> None:
    """OWN_LOGGERS names each logger the source of memvee's packages makes, and no other:
    a module's logger left out would reach an application's handlers unfiltered. The
    test that logs on each found could pass with a name left out, once its module was
    imported before a Memory opened (the filter put on every existing logger)."""
    assert sorted(OWN_LOGGERS) == _loggers_memvee_logs_on()


class _ReadingTheException(logging.Formatter):
    """An application's formatter that shows the live exception itself, as JSON, Sentry
    or structlog formatters do, with an exception format of its own."""

    def format(self, record: logging.LogRecord) -> str:
        shown = self.formatException(record.exc_info) if record.exc_info else ""
        return f"{record.getMessage()} | {record.exc_text or ''} | {shown}"

    def formatException(self, ei: Any) -> str:
        return f"<{ei[0].__name__}: {ei[1]}>"


def _formatted(error: BaseException, monkeypatch: pytest.MonkeyPatch) -> str:
    """A record logged with ``error`` as its exception through a protected logger, as the
    application's :class:`_ReadingTheException` shows it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    logger = logging.getLogger("tests.redaction.exc_info")
    protect_loggers(["tests.redaction.exc_info"])
    shown: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(_ReadingTheException())
    handler.emit = lambda record: shown.append(handler.format(record))  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        try:
            raise error
        except ValueError:
            logger.error("the call failed", exc_info=True)
    finally:
        logger.removeHandler(handler)
    (line,) = shown
    return line


def test_an_exception_showing_a_secret_reaches_no_formatter_reading_the_live_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record's exception shows the API key: a formatter reading ``exc_info`` itself
    gets no exception, only the cleaned traceback as ``exc_text``. It got the live
    exception, key and all."""
    line = _formatted(ValueError(f"Illegal header value b'{API_KEY}'"), monkeypatch)

    assert "DO-NOT-LEAK" not in line, line
    assert "Illegal header value b'[redacted]'" in line, line


def test_an_exception_showing_no_secret_keeps_the_applications_own_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record's exception shows no secret: it reaches the application's formatter as it
    was logged, which formats it its own way. The filter had formatted it already."""
    line = _formatted(ValueError("boom"), monkeypatch)

    assert line == "the call failed |  | <ValueError: boom>", line


def test_an_exception_naming_a_url_user_but_no_password_keeps_the_applications_own_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL's user name is no credential: an exception naming one reaches the application's
    formatter as it was logged. It lost its exception, as one showing a secret does."""
    refused = ValueError("could not connect to postgresql://memvee@db.internal:5432/memvee")
    line = _formatted(refused, monkeypatch)

    assert line.endswith(
        "| <ValueError: could not connect to postgresql://memvee@db.internal:5432/memvee>"
    ), line


def test_an_exception_showing_a_urls_password_reaches_no_formatter_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password in a URL's user info is a credential however short: the live exception is
    kept from the formatter, its traceback shown cleaned."""
    line = _formatted(ValueError("no route to https://memvee:pw@gateway.example/v1"), monkeypatch)

    assert ":pw@" not in line and "https://***@gateway.example/v1" in line, line


class _PrefixMakingALogger(str):
    """A logger name to protect whose first comparison makes a logger, as another thread
    may while the loggers are looked through (an HTTP client imported meanwhile)."""

    made = False

    def __eq__(self, other: object) -> bool:
        if not _PrefixMakingALogger.made:
            _PrefixMakingALogger.made = True
            logging.getLogger("memvee_test_late_client.made_meanwhile")
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_logger_made_while_the_loggers_are_looked_through_fails_no_protection() -> None:
    """A logger is made while the existing loggers are looked through for those to
    protect: every one named, or under a name, is protected all the same. The loop over
    logging's own table raised "dictionary changed size during iteration" out of it (out
    of a Memory's open or an Audit's construction)."""
    logging.getLogger("memvee_test_late_client.transport")

    protect_loggers([_PrefixMakingALogger("memvee_test_late_client")])

    assert _PrefixMakingALogger.made
    for name in ("memvee_test_late_client", "memvee_test_late_client.transport"):
        assert sum(isinstance(f, RedactSecrets) for f in logging.getLogger(name).filters) == 1


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("OPENAI_API_KEY", "sk-proj-filter-DO-NOT-LEAK-7", True),
        ("HF_TOKEN", "hf_abcdefghijklmnop1234", True),
        ("PGPASSWORD", "hunter2hunter2", True),
        ("GATEWAY_SECRET", "correcthorsebatterystaple", True),
        ("SOME_AUTH_MODE", "disabled", False),
        ("KEYBOARD_DELAY", "1", False),
        ("SSH_AUTH_SOCK", __file__, False),
        ("GPG_KEY", "A035C8C19219BA821ECEA86B64E628F8D684696D", False),
        ("TURNKEY_RELEASE", "turnkey-2024-05-01", False),
        ("STRIPEKEY", "sk_live_51Hx9aQ2eZvKYlo2C0abcdef", True),
        ("SSHKEY", "AAAAC3NzaC1lZDI1NTE5AAAAIA9x", True),
        ("HMACKEY", "9f86d081884c7d659a2feaa0c55ad015", True),
        ("GPG_PASSPHRASE", "correct horse battery staple", True),
    ],
)
def test_a_variable_whose_name_says_it_holds_a_credential_is_taken_out_of_every_record(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: bool
) -> None:
    """Any provider's key or token in the environment is known to the filter, as to a
    contained embedder (one definition); a short or common value, or a file's path, never
    becomes a pattern every line is cleaned of."""
    monkeypatch.setenv(name, value)
    shown = _cleaned("the client said %s", value)
    assert (value not in shown) is secret


def test_a_log_call_goes_on_while_another_thread_unsets_a_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-0123456789abcdef")
    monkeypatch.setenv("ZZZ_UNSET_MEANWHILE", "y")
    original, calls = credentials.named_secrets, []

    def reading(name: str, value: object) -> tuple[str, ...]:
        calls.append(name)
        if len(calls) == 1:  # another thread, as the environment is read
            monkeypatch.delenv("ZZZ_UNSET_MEANWHILE")
        return original(name, value)

    monkeypatch.setattr(credentials, "named_secrets", reading)
    assert _cleaned("401: key %s refused", "sk-proj-0123456789abcdef") == (
        "401: key [redacted] refused"
    )


def test_an_environment_that_cannot_be_read_leaves_the_secrets_known_last_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    configured_secrets()

    def unreadable() -> tuple[str, ...]:
        raise KeyError("ZZZ_UNSET_MEANWHILE")

    monkeypatch.setattr(redaction, "configured_secrets", unreadable)
    assert _cleaned("refused: %s", API_KEY) == "refused: [redacted]"


class _Unshowable:
    """An object whose ``str`` and ``repr`` both fail."""

    def __str__(self) -> str:
        raise ValueError("cannot be shown")

    __repr__ = __str__


def _filtered(**fields: Any) -> logging.LogRecord:
    """A record made of ``fields``, once a RedactSecrets filtered it (which must keep it)."""
    record = logging.makeLogRecord({"levelno": logging.WARNING, **fields})
    assert RedactSecrets((API_KEY,)).filter(record)
    return record


def test_a_message_whose_text_fails_to_show_is_logged_by_its_types_name() -> None:
    assert _filtered(msg=_Unshowable(), args=()).getMessage() == "<_Unshowable> % ()"


def test_arguments_whose_text_and_repr_fail_are_logged_by_their_types_names() -> None:
    record = _filtered(msg="refused %s with %s", args=(API_KEY, _Unshowable()))
    assert record.getMessage() == "refused %s with %s % (<str>, <_Unshowable>)"


def test_a_record_the_filter_fails_to_clean_shows_nothing_it_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unforeseen failure while cleaning never lets the record through as given: it
    may hold a secret, so it shows only that it was withheld, and the log call goes on."""

    def failing(text: str, secrets: object) -> str:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(RedactSecrets, "clean", staticmethod(failing))
    record = logging.makeLogRecord(
        {"msg": "refused %s", "args": (API_KEY,), "levelno": logging.WARNING, "hint": API_KEY}
    )
    assert RedactSecrets().filter(record)
    shown = f"{record.getMessage()} {vars(record)}"
    assert API_KEY not in shown
    assert record.getMessage() == (
        "(a log record was withheld: cleaning it of secrets failed, RuntimeError)"
    )


def test_a_malformed_exception_is_left_for_the_handler_to_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As with no filter: the handler's formatter fails, and logging reports it."""
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda _, record: reported.append(record))
    logger = logging.getLogger("tests.memvee.malformed_exc_info")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    logger.addFilter(RedactSecrets())
    logger.propagate = False
    try:
        logger.warning("failed", exc_info=(ValueError,))  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
        logger.filters.clear()
        logger.propagate = True
    assert [record.msg for record in reported] == ["failed"]


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        (
            "SSH_AUTH_SOCK",
            "/tmp/ssh-XXXXk3Jd0123/agent.4242",
            "cleaned /tmp/ssh-XXXXk3Jd9999/agent.1 up",
        ),
        (
            "HF_TOKEN_PATH",
            "/home/runner/.cache/huggingface/token",
            "opened /home/runner/.cache/memvee/events.db",
        ),
        ("HF_TOKEN_PATH", "~/.cache/huggingface/token2", "opened ~/.cache/huggingface/hub"),
        ("MY_KEY_FILE", "C:\\Users\\runner\\keys\\id_ed25519", "read C:\\Users\\runner\\notes"),
        (
            "ADMIN_PASSWORD_FILE",
            "/run/secrets/admin_password",
            "mounted /run/secrets/db_password_2 read-only",
        ),
        ("DB_PASSWORD_FILE_2", "/run/secrets/db_password_2", "mounted /run/secrets/admin_password"),
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "https://pipelines.actions.githubusercontent.com/abc123/idtoken",
            "GET https://pipelines.actions.githubusercontent.com/abc123/other",
        ),
    ],
)
def test_a_path_or_url_under_a_secret_sounding_name_cuts_nothing_out_of_other_lines(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, line: str
) -> None:
    """A name saying where a credential is (a socket, a path, a file, a URL) holds no
    credential: its value taken for one, the runs of its characters would be cut out of
    every line sharing them. ``ADMIN_PASSWORD_FILE`` (Docker's ``*_FILE`` convention)
    names the file the password is read from; what the file holds is not read here (a
    log filter opening files could block or fail at each change of the environment)."""
    monkeypatch.setenv(name, value)
    assert _cleaned("%s", line) == line


def test_a_key_beginning_with_a_slash_is_taken_out_though_it_looks_like_a_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One AWS secret key in 64 begins with a slash: a value shaped like a path that names
    no file is still a credential under a name saying so."""
    key = "/wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    assert _cleaned("signing with %s failed", key) == "signing with [redacted] failed"


def test_a_url_under_a_secret_sounding_name_has_only_its_credentials_taken_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_TOKEN_URL", "https://gw.example/v1?token=tok-0123456789abc")
    assert _cleaned("GET https://gw.example/v1?token=tok-0123456789abc") == (
        "GET https://gw.example/v1?token=[redacted]"
    )


def _cleaned_of(variable: tuple[str, str], line: str, shown: tuple[str, ...]) -> str:
    """``line`` as RedactSecrets logs it once the test set ``variable`` (a name and value)
    in the environment, checked first to show none of ``shown`` (the credential's forms):
    a failure names the variable and which form leaked by its place in ``shown``, never
    the form itself."""
    cleaned = _cleaned("%s", line)
    leaked = [f"form {index}" for index, form in enumerate(shown) if form in cleaned]
    assert leaked == [], f"{variable[0]}: {leaked} shown"
    return cleaned


@pytest.mark.parametrize(
    ("name", "value", "line", "logged"),
    [
        (
            "DB_PASSWORD",
            "Token abc12345",
            "api: 401 for Authorization: Token abc12345 (user svc)",
            "api: 401 for Authorization: Token [redacted] (user svc)",
        ),
        (
            "DB_PASSWORD",
            "Token abc12345",
            "retrying with token abc12345 in 2 s",
            "retrying with token [redacted] in 2 s",
        ),
        (
            "SMTP_PASSWORD",
            "Bearer xyzQ8w7e6r5t",
            "smtp: 535 5.7.8 credentials xyzQ8w7e6r5t rejected",
            "smtp: 535 5.7.8 credentials [redacted] rejected",
        ),
    ],
    ids=["DB_PASSWORD-with-scheme", "DB_PASSWORD-token-alone", "SMTP_PASSWORD-token-alone"],
)
def test_a_token_written_with_its_scheme_under_a_password_name_is_taken_out_alone_too(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, line: str, logged: str
) -> None:
    """A password variable holding a token after its scheme word (``Token``, ``Bearer``)
    is taken whole, a passphrase as it may be, and its token alone too: a client sends
    and echoes the token without its scheme. Only a token too short to cut a run of
    characters out of was shown."""
    monkeypatch.setenv(name, value)
    token = value.partition(" ")[2]
    assert _cleaned_of((name, value), line, (value, token)) == logged


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PASSWORD_2", "correct horse battery staple"),
        ("PGPASSWORD2", "correct horse battery staple"),
        ("SMTP_PASS", "my dog Rex was born in 2019"),
        ("RABBITMQ_DEFAULT_PASS", "my dog Rex was born in 2019"),
        ("DB_PASS_2", "s3cretPassw0rd"),
    ],
    ids=["DB_PASSWORD_2", "PGPASSWORD2", "SMTP_PASS", "RABBITMQ_DEFAULT_PASS", "DB_PASS_2"],
)
def test_a_passphrase_under_a_password_name_numbered_or_shortened_is_taken_out(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A second password (``DB_PASSWORD_2``) or one under PASS (``SMTP_PASS``) may be
    words with spaces between them as ``DB_PASSWORD``'s may: a number after the name's
    word, or PASS for PASSWORD, changes nothing of what it holds."""
    monkeypatch.setenv(name, value)
    line = f"FATAL: password authentication failed (tried '{value}')"
    cleaned = _cleaned_of((name, value), line, (value,))
    assert cleaned == "FATAL: password authentication failed (tried '[redacted]')"


def test_the_decoded_password_under_a_base64_name_is_taken_out_as_well_as_its_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``PASSWORD_B64`` holds a password encoded for a file or a CI secret: the application
    decodes and sends the password itself, which an error then shows."""
    password = "s3cretPassw0rd!"
    encoded = "czNjcmV0UGFzc3cwcmQh"  # base64 of the password
    monkeypatch.setenv("PASSWORD_B64", encoded)
    line = f"login failed with {password} (from {encoded})"
    cleaned = _cleaned_of(("PASSWORD_B64", encoded), line, (password, encoded))
    assert cleaned == "login failed with [redacted] (from [redacted])"


@pytest.mark.parametrize(
    ("query", "line", "shown"),
    [
        (
            "user=bot&password=correct+horse+battery+staple",
            "login refused: password 'correct horse battery staple' for bot",
            "correct horse battery staple",
        ),
        (
            "access_token=tok%20abc%2F0123456789",
            "GET /v1 refused: token 'tok abc/0123456789' expired",
            "tok abc/0123456789",
        ),
        (
            "password=s3cr3t+pa55word",
            "login refused: password 's3cr3t pa55word' for bot",
            "s3cr3t pa55word",
        ),
    ],
    ids=["password-plus-for-space", "access_token-percent-encoded", "password-of-two-words"],
)
def test_a_urls_query_credential_is_taken_out_as_the_server_decodes_it(
    monkeypatch: pytest.MonkeyPatch, query: str, line: str, shown: str
) -> None:
    """A query's value is written with ``+`` or ``%20`` for a space: the server, and the
    errors it answers, show it decoded, a ``+`` as a space, whatever name holds it."""
    url = f"https://gw.example/login?{query}"
    monkeypatch.setenv("GATEWAY_URL", url)
    cleaned = _cleaned_of(("GATEWAY_URL", url), line, (shown,))
    assert cleaned == line.replace(shown, "[redacted]")
