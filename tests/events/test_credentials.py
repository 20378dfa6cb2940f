"""The credentials events.credentials finds (the environment's, read while other threads
change it), and log_failure: a failure logged with its traceback, cleaned of the
credentials given, as a record every formatter reads the usual way."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from events import credentials
from events.credentials import configured_secrets, log_failure
from memvee._server.logs import JsonFormatter

KEY = "sk-ant-api03-SECRETSECRETSECRET"
"""A key only an extractor's client holds: the environment gives none."""


class _Kept(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, _Kept]]:
    """A logger of its own, not propagating, with a handler keeping its records."""
    logger = logging.getLogger("tests.events.log_failure")
    kept = _Kept()
    logger.addHandler(kept)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, kept
    logger.removeHandler(kept)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    logger.filters.clear()


def _raised() -> RuntimeError:
    """An error, raised and caught so it has a traceback, that echoes the key."""
    try:
        raise RuntimeError(f"Illegal header value b'{KEY}\\n'")
    except RuntimeError as error:
        return error


def test_a_traceback_showing_a_key_is_the_records_cleaned_exception_text_not_its_message(
    logged: tuple[logging.Logger, _Kept],
) -> None:
    """The record's message is the message alone, formatted with its arguments, a literal
    ``%`` of one without kept; its cleaned traceback is its ``exc_text``, no live exception
    beside it; it names the caller as where it was logged. The traceback was put into the
    message (which a literal ``%`` then broke) and ``exc_text`` was empty."""
    logger, kept = logged

    log_failure(logger, logging.ERROR, _raised(), (KEY,), "user %r: task %s failed", "ann", "t1")
    log_failure(logger, logging.ERROR, _raised(), (KEY,), "100% of the batch failed")

    record, literal = kept.records
    assert record.getMessage() == "user 'ann': task t1 failed"
    assert literal.getMessage() == "100% of the batch failed"
    assert record.exc_info is None and record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert "RuntimeError: Illegal header value b'[redacted]" in record.exc_text
    assert "SECRET" not in f"{record.getMessage()} {record.exc_text}"
    assert record.levelno == logging.ERROR
    assert record.funcName == (
        "test_a_traceback_showing_a_key_is_the_records_cleaned_exception_text_not_its_message"
    )


def test_a_json_log_line_carries_the_cleaned_traceback_in_its_exception_field(
    logged: tuple[logging.Logger, _Kept],
) -> None:
    """The server's JSON line of such a record: the message in "message", the cleaned
    traceback in "exception", no key anywhere. The traceback was in "message", and the
    line had no "exception"."""
    logger, kept = logged

    log_failure(logger, logging.ERROR, _raised(), (KEY,), "closing the extractor failed")

    line = JsonFormatter().format(kept.records[0])
    entry = json.loads(line)
    assert entry["message"] == "closing the extractor failed"
    assert "RuntimeError: Illegal header value b'[redacted]" in entry["exception"]
    assert "SECRET" not in line


def test_a_failure_logged_cleaned_obeys_the_loggers_level_filters_and_disabling(
    logged: tuple[logging.Logger, _Kept],
) -> None:
    """As ``logger.log`` would: below the logger's level, refused by its filter, or with
    the logger disabled, no record reaches a handler; a filter sees the record."""
    logger, kept = logged
    seen: list[str] = []

    def refusing(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return False

    logger.setLevel(logging.WARNING)
    log_failure(logger, logging.INFO, _raised(), (KEY,), "below the level")
    logger.setLevel(logging.DEBUG)
    logger.addFilter(refusing)
    log_failure(logger, logging.ERROR, _raised(), (KEY,), "refused by a filter")
    logger.removeFilter(refusing)
    logger.disabled = True
    try:
        log_failure(logger, logging.ERROR, _raised(), (KEY,), "the logger is disabled")
    finally:
        logger.disabled = False

    assert kept.records == []
    assert seen == ["refused by a filter"]


def test_a_traceback_showing_no_key_goes_as_the_live_exception(
    logged: tuple[logging.Logger, _Kept],
) -> None:
    """A failure showing none of the credentials keeps its live exception, for the
    application's own format."""
    logger, kept = logged
    error = _raised()

    log_failure(logger, logging.ERROR, error, ("a-key-of-another-client-42",), "failed")

    (record,) = kept.records
    assert record.getMessage() == "failed"
    assert record.exc_info is not None and record.exc_info[1] is error


ENV_KEY = "sk-proj-0123456789abcdef"
"""A key an application sets in the environment while a logger reads it."""


def _changing_the_environment_at_the_first_variable(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]
) -> None:
    """Make the next read of the environment run ``change`` (another thread's) as it
    looks at its first variable, the environment having changed since the last read."""
    monkeypatch.setenv("MEMVEE_TEST_TICK", str(id(change)))
    original = credentials.named_secrets
    calls = []

    def reading(name: str, value: object) -> tuple[str, ...]:
        calls.append(name)
        if len(calls) == 1:
            change()
        return original(name, value)

    monkeypatch.setattr(credentials, "named_secrets", reading)


def test_a_key_set_while_the_environment_is_read_is_known_at_the_next_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _changing_the_environment_at_the_first_variable(
        monkeypatch, lambda: monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    )
    configured_secrets()
    assert ENV_KEY in configured_secrets()


DEVELOPER_ENVIRONMENT = {
    "GIT_AUTHOR_NAME": "Margaret Hamilton-Developer",
    "GIT_AUTHOR_EMAIL": "margaret.hamilton@example.com",
    "GIT_COMMITTER_NAME": "Continuous Integration Bot",
    "KEYCLOAK_URL": "https://keycloak.internal.example.com/realms/main",
    "KEYCLOAK_REALM": "production-realm-2024",
    "TIKTOKEN_CACHE_DIR": "/var/cache/tiktoken-encodings",
    "TOKENIZERS_PARALLELISM": "falsefalsefalsefalse",
    "AUTHOR_DISPLAY_NAME": "Documentation Writers Team",
    "KEYBOARD_LAYOUT": "international-us-2024",
    "XDG_SESSION_TYPE": "wayland-session-type",
    "CI_COMMIT_AUTHOR": "Build Runner <runner42@example.com>",
    "HOSTNAME": "build-runner-2024-0042",
}
"""Variables a developer's or a CI runner's environment holds, none of them a credential."""

CREDENTIALS = {
    "OPENAI_API_KEY": "sk-proj-0123456789abcdefABCDEF",
    "HF_TOKEN": "hf_0123456789abcdefABCDEFghij",
    "PGPASSWORD": "pg-password-2024-x",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY0123",
    "GITHUB_TOKEN": "ghp_0123456789abcdefABCDEFghijkl",
}
"""Variables holding credentials, each taken out of every text."""


def test_no_value_of_a_developers_or_ci_environment_is_taken_for_a_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {**DEVELOPER_ENVIRONMENT, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    found = configured_secrets()
    assert [value for value in DEVELOPER_ENVIRONMENT.values() if value in found] == []
    assert [value for value in CREDENTIALS.values() if value not in found] == []


@pytest.mark.parametrize(
    ("name", "value", "found"),
    [
        ("Authorization", "Bearer sk-ant-0123456789abcdef", ("sk-ant-0123456789abcdef",)),
        ("authorization", "Basic dXNlcjpwYXNzd29yZDEy", ("dXNlcjpwYXNzd29yZDEy",)),
        ("x-api-key", "sk-ant-0123456789abcdef", ("sk-ant-0123456789abcdef",)),
        ("apiKey", "AIzaSy0123456789abcdef", ("AIzaSy0123456789abcdef",)),
        (
            "url",
            "https://api.example.com/v1?key=AIzaSy0123456789abcdef",
            ("AIzaSy0123456789abcdef",),
        ),
        ("NGROK_AUTHTOKEN", "2abcDEF1234567890ghijKLmnop", ("2abcDEF1234567890ghijKLmnop",)),
        ("STRIPE_SECRETKEY", "sk_live_51Habcdef0123", ("sk_live_51Habcdef0123",)),
        ("MY_ACCESSTOKEN", "ya29.a0Af0123456789", ("ya29.a0Af0123456789",)),
        ("CLOUDFLARE_APITOKEN", "cf-0123456789abcdef", ("cf-0123456789abcdef",)),
        ("BOT_OAUTHTOKEN", "xoxb-0123456789-abc", ("xoxb-0123456789-abc",)),
        ("PRIVATEKEY", "pk_0123456789abcdef", ("pk_0123456789abcdef",)),
        ("SECRETS", "s3cr3t-0123456789", ("s3cr3t-0123456789",)),
        ("TOKENS", "tok-0123456789abc", ("tok-0123456789abc",)),
        ("api_keys", "key-0123456789abc", ("key-0123456789abc",)),
        ("authtoken", "at-0123456789abcdef", ("at-0123456789abcdef",)),
        (
            "url",
            "https://api.example.com/v1?accesstoken=ya29.a0Af0123456789",
            ("ya29.a0Af0123456789",),
        ),
        ("MONKEY", "banana", ()),
        ("api_token", "Margaret Hamilton 2024 developer", ()),
        ("secret_note", "not the one 0123456789", ()),
        ("author", "Margaret Hamilton 0123456789", ()),
    ],
)
def test_a_value_is_taken_for_a_credential_only_under_a_name_whose_words_say_so(
    name: str, value: str, found: tuple[str, ...]
) -> None:
    assert credentials.named_secrets(name, value) == found


DOCKER_GPG_KEY = "A035C8C19219BA821ECEA86B64E628F8D684696D"
"""The ``GPG_KEY`` Docker's official Python images set: the fingerprint of the public key
the Python release is verified with, which many log lines of a container may show."""


def test_the_public_key_fingerprint_under_gpg_key_is_no_credential_but_a_gpg_secret_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name whose words are GPG or PGP and KEY holding a key id or fingerprint (hex
    digits) names a public key; the same name holding anything else (a private key,
    base64-encoded for a CI secret), a passphrase or a private key stay credentials."""
    passphrase, private = "correct-horse-battery-2024", "LS0tLS1CRUdJTiBQR1AgUFJJVkFURQ=="
    environment = {
        "GPG_KEY": DOCKER_GPG_KEY,
        "PGP_KEY": "0x64E628F8D684696D",
        "GPG_PASSPHRASE": passphrase,
        "GPG_PRIVATE_KEY": private,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    found = configured_secrets()

    assert DOCKER_GPG_KEY not in found and "0x64E628F8D684696D" not in found
    assert passphrase in found and private in found
    assert credentials.named_secrets("GPG_KEY", private) == (private,)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPG_KEY", DOCKER_GPG_KEY),
        ("GPG_KEYS", DOCKER_GPG_KEY),
        ("PGP_KEY", "0x64E628F8D684696D"),
        ("GPG_KEY", "64E628F8D684696D"),
    ],
)
def test_a_public_keys_fingerprint_or_long_id_under_gpg_key_is_no_credential(
    name: str, value: str
) -> None:
    assert credentials.named_secrets(name, value) == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPG_KEY", "D684696D"),
        ("PGP_KEY", "0xD684696D"),
        ("GPG_KEY", "64E628F8D684696D64E6"),
        ("GPGKEY", DOCKER_GPG_KEY),
        ("gpgKey", DOCKER_GPG_KEY),
        ("gpg_key", DOCKER_GPG_KEY),
        ("GPG-KEY", DOCKER_GPG_KEY),
        ("PGP_KEYS", DOCKER_GPG_KEY),
        ("MY_GPG_KEY", DOCKER_GPG_KEY),
    ],
)
def test_hex_under_another_name_or_of_another_length_than_a_gpg_key_id_is_a_credential(
    name: str, value: str
) -> None:
    """Only the names Docker's images set (``GPG_KEY``, ``PGP_KEY``, ``GPG_KEYS``) holding
    a fingerprint (40 hex digits) or a long key id (16) are spared: a short id (8) is too
    much like a hex secret, and any other name holding hex digits may hold a secret."""
    assert credentials.named_secrets(name, value) == (value,)


@pytest.mark.parametrize(
    ("name", "value", "found"),
    [
        ("GPG_PASSPHRASE", "correct horse battery staple", ("correct horse battery staple",)),
        ("PGPASSWORD", "token of my love 2024", ("token of my love 2024",)),
        ("dbPassword", "  tr0ub4dor and 3  ", ("  tr0ub4dor and 3  ",)),
        ("SMTP_PASSWORDS", "first one 2024, second", ("first one 2024, second",)),
        (
            "url",
            "https://h.example/login?password=correct%20horse%20battery%20staple",
            ("correct%20horse%20battery%20staple", "correct horse battery staple"),
        ),
        ("GPG_PASSPHRASE", "a b c d", ()),
        ("PASSWORD_POLICY", "at least 12 characters and 1 digit", ()),
        ("PASSWORD_HINT", "the name of my first dog, 1999", ()),
        ("api_token", "Margaret Hamilton 2024 developer", ()),
        ("SECRET_NOTE", "not the one 0123456789", ()),
    ],
)
def test_a_passphrase_of_words_is_a_credential_only_under_a_password_or_passphrase_name(
    name: str, value: str, found: tuple[str, ...]
) -> None:
    """A passphrase may be words with spaces between them: under a name whose last word
    says password or passphrase it is taken whole (no scheme read off its first word);
    under any other name a value with spaces is a sentence, kept, so that it never becomes
    a pattern every text is cleaned of."""
    assert credentials.named_secrets(name, value) == found


ORDINARY_WORDS_ENDING_IN_KEY = (
    *("MONKEY", "TURNKEY_BUILD_ID", "HOCKEY_TEAM", "whiskeyVersion", "DONKEY_RELEASE"),
    *("TURKEY", "JOCKEY", "LACKEY", "HOTKEY", "MONKEYS", "hotkeys", "DISC_JOCKEY_NAME"),
    *("VALKEY_HOST", "YUBIKEY_SERIAL", "SMOKEY_MODE"),
)
"""Names whose word ending in KEY is an ordinary word (an animal, a drink, a sport, a
keyboard's shortcut, the Redis fork, a hardware key's make), not a key."""


@pytest.mark.parametrize("name", ORDINARY_WORDS_ENDING_IN_KEY)
def test_a_word_merely_ending_in_key_names_no_credential(name: str) -> None:
    """``MONKEY`` is one word, not MON and KEY: its value, however much it looks like a
    key, is kept, while joined credential names (``APIKEY``, ``SECRETKEY``) still say so."""
    assert credentials.named_secrets(name, "build-2024-0042-a1b2c3") == ()


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        *[(name, True) for name in ("SMTP_PASS", "RABBITMQ_DEFAULT_PASS", "DB_PASS", "dbPass")],
        *[(name, False) for name in ("PASS_COUNT", "BYPASS_CACHE", "COMPASS_URL", "PASSES")],
    ],
)
def test_pass_as_a_names_last_word_names_a_password(name: str, credential: bool) -> None:
    """``SMTP_PASS`` (RabbitMQ's image sets ``RABBITMQ_DEFAULT_PASS``) holds a password;
    PASS anywhere else in a name (a count, a bypass) says nothing of one."""
    found = credentials.named_secrets(name, "s3cretPassw0rd")
    assert found == (("s3cretPassw0rd",) if credential else ())


@pytest.mark.parametrize("name", ["HIGH_PASS", "LOW_PASS_2", "BAND_PASS", "ALL_PASS"])
def test_a_filters_pass_band_names_no_password(name: str) -> None:
    """``HIGH_PASS`` names a filter, not a password: its words ("filter at 2000 Hz") are
    no passphrase, and are not cut out of the lines showing them."""
    line = "applying the filter at 2000 Hz to the signal"
    found = credentials.named_secrets(name, "filter at 2000 Hz")
    assert found == ()
    assert credentials.redact(line, found) == line


KEY_FILE_CONTENT = base64.b64encode(b"\xfe\xed\xfe\xed" + bytes(range(256))).decode()
SERVICE_ACCOUNT = base64.b64encode(
    b'{"type": "service_account", "private_key": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"}'
).decode()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIGNING_KEY_FILE_B64", KEY_FILE_CONTENT),
        ("SSH_PRIVATE_KEY_FILE_BASE64", KEY_FILE_CONTENT),
        ("GOOGLE_CREDENTIALS_FILE_BASE64", SERVICE_ACCOUNT),
    ],
)
def test_a_key_files_content_encoded_under_a_file_name_is_a_credential(
    name: str, value: str
) -> None:
    """``*_FILE_B64`` holds no path but the key file itself, encoded for a CI secret: it
    is taken out of lines, where ``*_FILE`` (a path) is not."""
    line = f"keystore load failed: {value}"
    assert value in credentials.named_secrets(name, value)
    assert credentials.redact(line, credentials.named_secrets(name, value)) == (
        "keystore load failed: [redacted]"
    )


@pytest.mark.parametrize(
    ("encoded", "password"),
    [
        ("aHVudGVyMjI=", "hunter22"),
        ("aHVudGVyMjI", "hunter22"),
        ("cHc-Pj9-MTJhYg", "pw>>?~12ab"),
        ("c2VjPz4+MXg=", "sec?>>1x"),
    ],
    ids=["padded-no-digit", "unpadded", "url-safe-unpadded", "standard"],
)
def test_the_password_under_a_base64_name_is_taken_whatever_its_encoding_looks_like(
    encoded: str, password: str
) -> None:
    """The application decodes ``PASSWORD_B64`` and sends the password itself: that is
    taken out of lines even when the encoding looks like no key (no digit, short), is
    unpadded or written in the URL-safe alphabet."""
    line = f"password authentication failed ({password})"
    found = credentials.named_secrets("PASSWORD_B64", encoded)
    assert password in found
    assert credentials.redact(line, found) == "password authentication failed ([redacted])"


@pytest.mark.parametrize("password", ['pa"ss w0rd', "pässw0rd 12", "naïve-tok3n\\x"])
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["ascii", "unicode"])
def test_a_password_is_taken_out_of_a_json_line_as_json_escapes_it(
    password: str, ensure_ascii: bool
) -> None:
    """A JSON log line shows a password with its quote, backslash or non-ASCII letter
    escaped (``pa\\"ss``, ``p\\u00e4ss``): that form is taken out too."""
    line = json.dumps({"event": "login", "password": password}, ensure_ascii=ensure_ascii)
    found = credentials.named_secrets("DB_PASSWORD", password)
    assert credentials.redact(line, found) == '{"event": "login", "password": "[redacted]"}'


JOINED_KEY_NAMES = (
    *("APIKEY", "SECRETKEY", "PRIVATEKEYS", "MY_ACCESSKEY", "OPENAIAPIKEY", "PASSKEY"),
    *("OPENAIKEY", "HMACKEY", "STRIPEKEY", "SLACKKEY", "AWSKEY", "MASTERKEY", "SIGNINGKEY"),
    *("SSHKEY", "DEPLOYKEY", "PRIVKEY", "SSL_PRIVKEY", "JWTKEY", "AESKEY", "ENCKEY", "ROOTKEY"),
    *("ACCOUNTKEY", "AZURE_STORAGE_ACCOUNTKEY", "STORAGEKEY", "SHAREDKEY", "WEBHOOKKEY"),
    *("ROUTINGKEY", "PAGERDUTY_ROUTINGKEY", "INTEGRATIONKEY", "WRITEKEY", "SEGMENT_WRITEKEY"),
    *("READKEY", "HASHKEY", "SALTKEY", "CIPHERKEY", "CRYPTOKEY", "SIGNKEY", "OAUTHKEY"),
    *("MAILGUNKEY", "SENDGRIDKEY", "TWILIOKEY", "FIREBASEKEY", "GOOGLEKEY", "CONSUMERKEY"),
    *("ALGOLIA_ADMINKEY", "DD_APPKEY", "NPMKEY", "PYPIKEY", "KMSKEY", "VAULTKEY", "UNSEALKEY"),
    *("MACKEY", "CSRFKEY", "COOKIEKEY", "SESSIONKEY", "DJANGOKEY", "BOTKEY"),
    *("SECRET_KEYBASE", "RAILS_SECRETKEY", "BEARERKEY", "LARAVEL_APPKEY", "LICENSEKEYS"),
    *("hmackey", "sshkey", "privkey", "jwtkey", "deploykey", "writekey", "routingkey"),
    *("accountkey", "SSHKEYS", "DEPLOYKEYS", "HMACKEYS", "PRIVKEYS", "PUBKEY", "HOMEKEY"),
)
"""Names joining a provider's or a kind of key's name to KEY or KEYS, the review's list:
each a credential's name (fail closed: a public key's name is taken too)."""


@pytest.mark.parametrize("name", JOINED_KEY_NAMES)
def test_a_word_ending_in_key_or_keys_names_a_credential(name: str) -> None:
    """Whatever word comes before KEY (a provider, a cipher, a use): the value is taken,
    not only after a word saying which key."""
    value = "a8F3kQ9zL2mX7pR4tV6wY1bN5cD0eG8h"
    assert credentials.named_secrets(name, value) == (value,)


class _LazyProxy:
    """A lazy proxy as libraries make them: its class, its ``__dict__`` and every other
    attribute forwarded to an object it builds at the first read (here: noted)."""

    def __init__(self, built: list[str]) -> None:
        object.__setattr__(self, "_built", built)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        object.__getattribute__(self, "_built").append("__class__")
        return dict

    @property
    def __dict__(self) -> dict[str, object]:  # type: ignore[override]
        object.__getattribute__(self, "_built").append("__dict__")
        return {"api_key": "sk-built-0123456789abcdef"}


class _Shown:
    """An object whose ``__str__`` does something (here: is noted)."""

    def __init__(self, shown: list[str]) -> None:
        self.shown = shown

    def __str__(self) -> str:
        self.shown.append("__str__")
        return "https://user:password-0123456789@gateway.example"


def test_reading_what_an_embedder_holds_triggers_no_proxy_and_shows_no_other_object() -> None:
    touched: list[str] = []
    embedder = types.SimpleNamespace(
        api_key="sk-ant-0123456789abcdef",
        client=_LazyProxy(touched),
        endpoint_url=_Shown(touched),
        base_url=httpx.URL("https://gw:gateway-password-7@gateway.example"),
    )
    assert credentials.held_secrets(embedder) == (
        "sk-ant-0123456789abcdef",
        "gw:gateway-password-7",
        "gateway-password-7",
    )
    assert credentials.carried_by(embedder) == credentials.held_secrets(embedder)
    assert touched == []


def test_a_hundred_secrets_are_worked_out_once_not_at_every_text_cleaned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A log filter cleans every record of the same set of secrets: however many there
    are, no secret's pattern is compiled again while the set is unchanged."""
    secrets = tuple(hashlib.sha256(bytes([n])).hexdigest()[:32] for n in range(100))
    credentials.redact("warming up", secrets)
    compiled: list[object] = []
    compile_pattern = re.compile

    def counting(*args: Any, **kwargs: Any) -> re.Pattern[str]:
        compiled.append(args[0])
        return compile_pattern(*args, **kwargs)

    monkeypatch.setattr(credentials.re, "compile", counting)
    for n in range(100):
        shown = f"record {n} shows {secrets[n]}"
        assert credentials.redact(shown, secrets) == f"record {n} shows [redacted]"
    assert compiled == []


_PEM_LINES = (
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MqzPmeP2Cn8Aq3oGWbEq1Qx5T2Zr9yL0dHk4bN6mF8sJ3vR1pW7cX0eY5uI2oA4",
)
_PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(_PEM_LINES) + "\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "content",
    [
        _PEM,
        json.dumps(
            {
                "type": "service_account",
                "client_email": "memvee@example.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
                "private_key": _PEM,
            }
        ),
    ],
    ids=["pem", "service-account-json"],
)
def test_the_key_in_a_key_files_encoded_content_is_taken_line_by_line(content: str) -> None:
    """A key file encoded under ``*_FILE_B64`` decodes to text with spaces and line breaks,
    no secret whole: each line of its key is taken, its labels, URLs and addresses not."""
    encoded = base64.b64encode(content.encode()).decode()
    secrets = credentials.named_secrets("SIGNING_KEY_FILE_B64", encoded)

    line = f"key rejected: {_PEM_LINES[1]} at https://oauth2.googleapis.com/token"
    assert credentials.redact(line, secrets) == (
        "key rejected: [redacted] at https://oauth2.googleapis.com/token"
    )
    assert credentials.redact("memvee@example.iam.gserviceaccount.com", secrets) == (
        "memvee@example.iam.gserviceaccount.com"
    )
