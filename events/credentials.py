"""The credentials the SDKs take from the environment or an extractor's client carries, and
text cleaned of them.

An API key, a bearer token or a gateway's password in its URL must never show in an
error, a log line or a stored event; the functions here find them and take them out of
any text. They live here, below the engine, so that the extraction workers (``actors``)
and memvee's re-extraction and logging use one definition; they import no client library.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import logging
import os
import re
import sys
import traceback
import types
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import ParseResult, SplitResult, unquote, unquote_plus

from events.errors import first_line

__all__ = [
    "BASE_URL_ENV_VAR",
    "SECRET_ENV_VARS",
    "SECRET_WORDS",
    "CarriesCredentials",
    "carried_by",
    "client_secrets",
    "configured_secrets",
    "credentials_of",
    "held_secrets",
    "known_secrets",
    "log_failure",
    "looks_secret",
    "mask_url_userinfo",
    "named_secrets",
    "redact",
    "says_secret",
    "shown_error",
    "shown_forms",
    "shows_credentials",
    "url_secrets",
    "userinfo",
]

BASE_URL_ENV_VAR: Final = "ANTHROPIC_BASE_URL"
"""The environment variable the SDK takes the API's base URL from (a proxy, a gateway)."""

SECRET_ENV_VARS: Final = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "VOYAGE_API_KEY")
"""The environment variables the SDKs (Anthropic's, Voyage AI's) take credentials from."""

_USERINFO = re.compile(r"[^:/?#]*://([^/?#]*)@")
"""A URL's scheme and the user info before its host, at its start."""

log = logging.getLogger("memvee.events")

_URL_USERINFO_ANYWHERE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]*@")
"""A URL's scheme and the user info before its host, anywhere in a text (up to the last
``@`` before the path, as a password may hold an ``@`` its writer did not escape)."""

SHORTEST_SECRET: Final = 8
"""Secrets shorter than this are taken out of URLs only (as their user info): a gateway's
password of one letter replaced wherever it shows would garble every text, and no API key
is so short."""

_SHOWN_PART = 12
"""The shortest run of a secret's characters taken out of a text where it shows: an API
or gateway that echoes a part of a key ("sk-ant-api03-AbCd...") shows enough of it."""


_SECRET_USER = 8
"""The shortest user, given with a password, taken out of texts on its own (a token
given as the user): a shorter one ("admin") is a name, and taking it out would garble
every text that holds it."""


def userinfo(url: str) -> tuple[str, ...]:
    """The user and password a URL carries before its host (a gateway's basic auth), the
    password alone, which a text may show without the user, and the user alone if it may
    be a token; each as written and percent-decoded, as a client sends it."""
    found = _USERINFO.match(url.strip())
    if not found or not found.group(1):
        return ()
    user, colon, password = found.group(1).partition(":")
    parts = [found.group(1)]
    if colon and password:
        parts.append(password)
    if colon and len(unquote(user)) >= _SECRET_USER:
        parts.append(user)
    return tuple(dict.fromkeys(form for part in parts for form in (part, unquote(part)) if form))


SECRET_WORDS: Final = frozenset(
    {
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "AUTHORIZATION",
    }
)
"""The words of a name saying its value is a credential: an environment variable's
(``OPENAI_API_KEY``, ``HF_TOKEN``, ``PGPASSWORD``, ``GPG_PASSPHRASE``), an attribute's
(``api_key``, ``_auth_token``, ``apiKey``), an HTTP header's (``Authorization``,
``x-api-key``) or a URL query parameter's (``?key=``). Whole words, their plurals, or the
end of a word (:func:`says_secret`): ``AUTHOR``, ``KEYCLOAK`` or ``TOKENIZERS`` say nothing
of the kind."""

_NAME_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
"""The words of a name: split at anything but a letter or digit and where its case
changes (``apiKey``, ``XAPIKey``)."""

_SECRET_WORD_INSIDE = re.compile(r"(?i)key|token|secret|pass|credential|auth")
"""Any of :data:`SECRET_WORDS` (or PASS) anywhere in a name, whole word or not: a name
without one says nothing of a credential, and most names have none."""

_SECRET_ENDINGS: Final = (
    "KEY",
    "KEYS",
    "TOKEN",
    "TOKENS",
    "SECRET",
    "SECRETS",
    "PASSWORD",
    "PASSWORDS",
    "PASSWD",
    "PASSPHRASE",
    "PASSPHRASES",
    "CREDENTIAL",
    "CREDENTIALS",
)
"""Endings of a word that is a credential's name on its own, words joined with no
separator (``PGPASSWORD``, ``AUTHTOKEN``, ``STRIPEKEY``, ``SSHKEYS``): ``KEYCLOAK``,
``TOKENIZERS`` or ``AUTHOR`` end otherwise. A word ending in KEY names a key whatever
comes before it (a provider, a cipher, a use), but for the ordinary words of
:data:`_NOT_SECRET_WORDS`: a name wrongly taken costs a value that must still look like a
key (:func:`looks_secret`), one wrongly spared shows a credential."""

_NOT_SECRET_WORDS: Final = frozenset(
    {
        "TIKTOKEN",
        *("MONKEY", "DONKEY", "TURKEY", "HOCKEY", "JOCKEY", "WHISKEY", "LACKEY", "TURNKEY"),
        *("HOTKEY", "SMOKEY", "VALKEY", "YUBIKEY"),
    }
)
"""Words ending as a credential's name does that name something else, singular: OpenAI's
tokenizer (whose ``TIKTOKEN_CACHE_DIR`` a developer's environment often holds), and
ordinary words ending in KEY (an animal, a sport, a drink, a keyboard's shortcut, the
Redis fork whose ``VALKEY_HOST`` names a server, a hardware key's make). Only
words that clearly name no secret: a public key's name (``PUBKEY``) is still taken, its
value must look like a key (:func:`looks_secret`)."""

_SCHEMES: Final = frozenset({"bearer", "basic", "token"})
"""The HTTP authorization schemes whose credential follows a space (``Bearer sk-...``)."""


def says_secret(name: str) -> bool:
    """Whether ``name`` says the value it holds is a credential: one of its words is one of
    :data:`SECRET_WORDS` or its plural, or ends as a credential's name does, words joined
    (``PGPASSWORD``, ``NGROK_AUTHTOKEN``, ``STRIPEKEY``, ``api_keys``); ``PWD``, the
    working directory's variable, does not, nor an ordinary word ending in KEY
    (``MONKEY``, ``TURNKEY``: :data:`_NOT_SECRET_WORDS`). A number or an encoding ending the
    name (``DB_PASS_2``, ``TOKEN_FILE_2``: :func:`_qualifiers`) is no word of it. The one
    definition every search for a credential here uses."""
    if _SECRET_WORD_INSIDE.search(name) is None:  # most names: one search in C tells
        return False
    words = _words_of(name)
    if words and words[-1] in _LOCATION_WORDS and not _names_base64(name):
        return False  # but GOOGLE_CREDENTIALS_FILE_B64: a key file's content, encoded
    if _ends_in_pass(words):  # SMTP_PASS, RABBITMQ_DEFAULT_PASS; PASS_COUNT is none
        return True
    return any(_says_secret(word) for word in words)


def _ends_in_pass(words: list[str]) -> bool:
    """Whether a name's ``words`` end in PASS for a password (``SMTP_PASS``), not a
    filter's pass band (``HIGH_PASS``: :data:`_FILTER_PASSES`)."""
    if not words or words[-1] != "PASS":
        return False
    return len(words) == 1 or words[-2] not in _FILTER_PASSES


_FILTER_PASSES: Final = frozenset({"HIGH", "LOW", "BAND", "ALL"})
"""Words before PASS that name a filter (``HIGH_PASS``, ``LOW_PASS_2``, ``BAND_PASS``,
``ALL_PASS``), whose value ("filter at 2000 Hz") is no password: taken for a passphrase,
its words would be cut out of every line showing them."""


_QUALIFIERS_REVERSED = re.compile(r"(?i)(?:46esab|46b|\d|[^a-z0-9])*")
"""What may end a name after the word saying what it holds, read from the name's end
(matched on the name reversed, in one pass): numbers (``DB_PASSWORD_2``,
``PGPASSWORD2``), an encoding (``PASSWORD_B64``, ``passwordBase64``) and the separators
between them. ``DB_PASSWORD_2`` holds a password as ``DB_PASSWORD`` does, words with
spaces between them included, and ``TOKEN_FILE_2`` a path as ``TOKEN_FILE`` does."""


def _qualifiers(name: str) -> str:
    """The numbers and encoding ending ``name`` (:data:`_QUALIFIERS_REVERSED`), if any."""
    if name[-1:].isalpha():  # most names: ending in a letter, they end in no qualifier
        return ""
    found = _QUALIFIERS_REVERSED.match(name[::-1])
    return name[len(name) - found.end() :] if found and found.end() else ""


def _words_of(name: str) -> list[str]:
    """The words of ``name``, upper-cased, without the numbers or encoding ending it
    (:func:`_qualifiers`): its last word says what its value is."""
    bare = name[: len(name) - len(_qualifiers(name))] or name
    return [word.upper() for word in _NAME_WORDS.findall(bare)]


def _names_base64(name: str) -> bool:
    """Whether ``name`` ends saying its value is encoded in base64 (``PASSWORD_B64``)."""
    qualifiers = _qualifiers(name)
    return bool(qualifiers) and _BASE64.search(qualifiers) is not None


_BASE64 = re.compile(r"(?i)b(?:ase)?64")
"""How a name's ending says base64 (:func:`_names_base64`)."""


def _says_secret(word: str) -> bool:
    """Whether one word of a name, upper-cased, says its value is a credential."""
    singular = word.removesuffix("S")
    if word in _NOT_SECRET_WORDS or singular in _NOT_SECRET_WORDS:
        return False
    return word.endswith(_SECRET_ENDINGS) or word in SECRET_WORDS or singular in SECRET_WORDS


_LOCATION_WORDS: Final = frozenset(
    {"PATH", "FILE", "DIR", "FOLDER", "SOCK", "SOCKET", "HOME", "CACHE", "URL", "URI", "ENDPOINT"}
)
"""Last words of a name that holds where a credential is, not the credential itself
(``SSH_AUTH_SOCK``, ``HF_TOKEN_PATH``, ``ACTIONS_ID_TOKEN_REQUEST_URL``): its value, a
path or an address, would cut runs of every path out of unrelated lines. A URL's own
credentials are still found (:func:`url_secrets`)."""

_HELD_ITEMS = 100
"""The most items of a mapping an object holds (its default headers) looked through."""


def looks_secret(value: str, *, spaced: bool = False) -> bool:
    """Whether ``value``, held under a name :func:`says_secret` says is one, is taken for a
    credential: at least :data:`SHORTEST_SECRET` characters with no space inside (unless
    ``spaced``: held under a name saying a passphrase, :func:`_names_passphrase`), holding
    a digit or at least twice as long (a key, a token, a password), and neither a path
    to an existing file nor a URL (whose credentials :func:`url_secrets` finds). A short
    or common value (``1``, ``disabled``) never becomes a pattern every text is cleaned
    of, nor a sentence under another name. A value shaped like a path that names no file
    is taken: a key may begin with a slash (one AWS secret key in 64 does), and names
    saying a location are no credential's names (:func:`says_secret`)."""
    value = value.strip()
    if len(value) < SHORTEST_SECRET or (not spaced and any(each.isspace() for each in value)):
        return False
    if not any(each.isdigit() for each in value) and len(value) < 2 * SHORTEST_SECRET:
        return False
    if "://" in value:
        return False
    return _PATH_START.match(value) is None or not _names_a_file(value)


def _names_a_file(value: str) -> bool:
    """Whether ``value`` is the path of something on this machine (``~`` expanded)."""
    try:
        return os.path.exists(os.path.expanduser(value))
    except (OSError, ValueError):
        return False


_PATH_START = re.compile(r"[/~.]|[A-Za-z]:[\\/]")
"""How a file's path starts: absolute, under the home directory, relative to the working
directory, or on a Windows drive (``C:\\``)."""


def named_secrets(name: str, value: object) -> tuple[str, ...]:
    """The credentials a value held under ``name`` shows: itself if a string the name
    says is one (:func:`says_secret`, :func:`looks_secret`) but a public key's id
    (``GPG_KEY``: :func:`_public_key_id`), or the token after its scheme (``Bearer
    sk-...``) if that looks like one; a passphrase of words whole, under a name saying
    one (:func:`_names_passphrase`), with the token after a scheme it may begin with too;
    what a value under a name saying base64 decodes to; a URL's user info and the values
    of its query parameters named so, for a string holding ``://`` or any value a name
    saying URL holds (an ``httpx.URL``); and, for a mapping (HTTP headers), the
    credentials of its items."""
    if issubclass(type(value), Mapping):
        items = itertools.islice(value.items(), _HELD_ITEMS)  # type: ignore[attr-defined]
        return tuple(
            secret
            for key, held in items
            if issubclass(type(key), str) and issubclass(type(held), str)
            for secret in named_secrets(key, held)
        )
    if issubclass(type(value), str):
        value = str.__str__(value)  # type: ignore[arg-type]  # no subclass's __str__
    elif issubclass(type(value), _url_types()) and re.search(r"(?i)url|endpoint", name):
        value = str(value)
    else:
        return ()
    found: list[str] = []
    if says_secret(name) and not _public_key_id(name, value):
        found.extend(_held_credentials(name, value))
    if "://" in value:
        found.extend(url_secrets(value))
    return tuple(found)


def _held_credentials(name: str, value: str) -> list[str]:
    """The credentials ``value`` shows, held under ``name`` that says it holds one
    (:func:`named_secrets`)."""
    found: list[str] = []
    spaced = _names_passphrase(name)
    scheme, _, token = value.strip().partition(" ")
    schemed = scheme.lower() in _SCHEMES
    if schemed and looks_secret(token.strip()):  # a client sends the token alone
        found.append(token.strip())  # first: the runs of the whole would cut its scheme
    if (spaced or not schemed) and looks_secret(value, spaced=spaced):
        found.append(value)
    if _names_base64(name):  # its encoding may look like no key ('aHVudGVyMjI=')
        decoded = _base64_text(value)
        if decoded is not None and looks_secret(decoded, spaced=spaced):
            found.append(decoded)
        elif decoded is not None:  # a key file's text: PEM lines, JSON with a key in it
            found.extend(_key_material(decoded))
    return found


_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/=_-]{20,}")
"""A run of base64 (or hex, or URL-safe) characters long enough to be a key's: a PEM
body's line, a JSON key file's ``private_key`` line or key id; a URL, an e-mail address
or a word, which hold other characters, are no such run."""

_KEY_MATERIAL_KEPT: Final = 100
"""How many runs :func:`_key_material` takes of one key file at most."""


def _key_material(text: str) -> list[str]:
    """The runs of a decoded key file's ``text`` that hold its key (:data:`_KEY_MATERIAL`,
    with a digit: not a word of the file's labels), its JSON's ``\\n`` escapes taken for
    the line breaks they are; at most :data:`_KEY_MATERIAL_KEPT`."""
    runs = _KEY_MATERIAL.finditer(text.replace("\\n", "\n"))
    keyish = (run.group(0) for run in runs if any(each.isdigit() for each in run.group(0)))
    return list(itertools.islice(dict.fromkeys(keyish), _KEY_MATERIAL_KEPT))


def _base64_text(value: str) -> str | None:
    """The text ``value`` encodes in base64 (standard or URL-safe alphabet, padded or
    not), if it is base64 of UTF-8 text."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, validate=True)
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


_PUBLIC_KEY_NAMES: Final = frozenset({"GPG_KEY", "PGP_KEY", "GPG_KEYS"})
"""The names of a public key's id as Docker's official images set them (Python's
``GPG_KEY``, others' ``GPG_KEYS``), exactly: any other name holding hex digits (``gpgKey``,
``MY_GPG_KEY``) may hold a secret."""

_KEY_ID = re.compile(r"(?:0x)?(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{40})")
"""An OpenPGP key's long id (16 hex digits) or its fingerprint (40): a short id (8) is as
short as many a hex secret, and no image names its key by one."""


def _public_key_id(name: str, value: str) -> bool:
    """Whether ``value`` is the long id or fingerprint of the public key ``name`` names
    (``GPG_KEY=A035C8C1...``): no credential, and taking it out would redact every log line
    showing it. Only a value so shaped: under the same name a private key stays secret."""
    return name in _PUBLIC_KEY_NAMES and _KEY_ID.fullmatch(value.strip()) is not None


_PASSPHRASE_ENDINGS: Final = ("PASSWORD", "PASSWD", "PASSPHRASE")
"""Endings of a name's last word (singular) saying it holds a password or passphrase."""


def _names_passphrase(name: str) -> bool:
    """Whether ``name``'s last word says it holds a password or a passphrase
    (``GPG_PASSPHRASE``, ``PGPASSWORD``, ``dbPassword``, ``SMTP_PASS``, ``DB_PASSWORD_2``:
    :func:`_words_of`), which may be words with spaces
    between them ("correct horse battery staple"). Not a name that merely holds such a
    word (``PASSWORD_POLICY``, ``PASSWORD_HINT``), whose sentences are no secret."""
    words = _words_of(name)
    return _ends_in_pass(words) or (
        bool(words) and words[-1].removesuffix("S").endswith(_PASSPHRASE_ENDINGS)
    )


def _url_types() -> tuple[type, ...]:
    """The URL types whose text is the URL itself, shown by ``str`` with no other effect:
    urllib's, and httpx's and yarl's if imported (by a client); no other object's
    ``__str__`` is run, which may do anything."""
    found: list[type] = [SplitResult, ParseResult]
    for module, name in (("httpx", "URL"), ("yarl", "URL")):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type):
            found.append(kind)
    return tuple(found)


def url_secrets(url: str) -> tuple[str, ...]:
    """The credentials ``url`` carries: its user info (:func:`userinfo`) and the value of
    every query parameter :func:`says_secret` names (``?key=``, ``&access_token=``), as
    written and decoded as a server decodes it (``%20`` and ``+`` as a space), spaces
    and all once one of these forms looks like a credential: a server's error shows the
    value it decoded."""
    found = list(userinfo(url))
    query = url.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if says_secret(unquote_plus(name)):
            spaced = _names_passphrase(unquote_plus(name))
            forms = (value, unquote(value), unquote_plus(value))
            if any(looks_secret(form, spaced=spaced) for form in forms):
                found.extend(form for form in forms if len(form.strip()) >= SHORTEST_SECRET)
    return tuple(dict.fromkeys(found))


def configured_secrets() -> tuple[str, ...]:
    """The credentials the environment gives: those the SDKs read (:data:`SECRET_ENV_VARS`,
    the user info of :data:`BASE_URL_ENV_VAR`) and every variable's value its name says is
    one (:func:`named_secrets`: any provider's ``*_API_KEY``, a ``*_TOKEN``), as the
    environment is at each call, so that one set later is known too: never shown.

    Worked out from one copy of the environment taken first, and cached with that copy:
    a variable set or unset by another thread meanwhile neither fails the read nor hides
    itself behind an answer cached for an environment it was not in."""
    raw = getattr(os.environ, "_data", None)  # CPython's: compared at C speed
    seen, told = _environment_read[0]  # one read of the pair: the answer fits its copy
    if raw is not None and raw == seen:
        return told
    snapshot = _environment_copy(raw)
    told = _secrets_in({_decoded(name): _decoded(value) for name, value in snapshot.items()})
    _environment_read[0] = (snapshot if raw is not None else None, told)
    return told


def known_secrets() -> tuple[str, ...]:
    """What :func:`configured_secrets` found last, without reading the environment again:
    what a caller that must not fail (a logger's filter) falls back on."""
    return _environment_read[0][1]


_environment_read: list[tuple[Mapping[Any, Any] | None, tuple[str, ...]]] = [(None, ())]
"""The copy of the environment :func:`configured_secrets` last worked from, and what it
found there, replaced as one pair: a logger's filter asks at every record, and reading
every variable costs far more than telling the environment has not changed."""

_COPY_ATTEMPTS: Final = 10
"""How often a copy of an environment without CPython's ``_data`` is tried again when
another thread changed it while it was copied."""


def _environment_copy(raw: Mapping[Any, Any] | None) -> dict[Any, Any]:
    """A copy of the environment made at once: of CPython's underlying ``dict`` (copied in
    C, which no other thread interrupts), or else of ``os.environ``, tried again while
    another thread changes it under the copy."""
    if type(raw) is dict:
        return raw.copy()
    for _ in range(_COPY_ATTEMPTS - 1):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):  # a variable unset, or set, while it was copied
            continue
    return dict(os.environ)


def _decoded(text: object) -> str:
    """A name or value of the environment's underlying mapping as ``os.environ`` shows it
    (bytes on POSIX, decoded as the file system's names are)."""
    return os.fsdecode(text) if isinstance(text, bytes) else str(text)


def _secrets_in(environment: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials ``environment`` gives (:func:`configured_secrets`)."""
    found = [environment.get(name) for name in SECRET_ENV_VARS]
    url = environment.get(BASE_URL_ENV_VAR)
    named = (secret for name, value in environment.items() for secret in named_secrets(name, value))
    secrets = [secret for secret in found if secret]
    return tuple(dict.fromkeys((*secrets, *(userinfo(url) if url else ()), *named)))


def held_secrets(holder: object) -> tuple[str, ...]:
    """The credentials ``holder`` (an embedder, an extractor) keeps in its own attributes
    and in those of the objects they hold (its clients, public or private), one level
    down and no further: each :func:`named_secrets`. Only instances' own attributes are
    read, never a property (which may build a client, or fail, at each read)."""
    found: list[str] = []
    for name, value in _own_attributes(holder):
        found.extend(named_secrets(name, value))
        if _may_hold_credentials(value):
            for inner, held in _own_attributes(value):
                found.extend(named_secrets(inner, held))
    return tuple(dict.fromkeys(found))


def _own_attributes(holder: object) -> list[tuple[str, object]]:
    """``holder``'s instance attributes (its ``__dict__``), none if it has none."""
    own = _instance_dict(holder)
    if own is None or issubclass(type(holder), type | types.ModuleType):
        return []
    return [(name, value) for name, value in list(own.items()) if type(name) is str]


def _instance_dict(holder: object) -> dict[str, object] | None:
    """``holder``'s own ``__dict__`` as Python keeps it, read through the slot its type
    got from Python, never through a property of that name (a lazy proxy's, forwarding
    to an object it would build); none if it has no such slot."""
    for kind in type(holder).__mro__:
        slot = vars(kind).get("__dict__")
        if slot is not None:
            if type(slot) not in (types.GetSetDescriptorType, types.MemberDescriptorType):
                return None
            own = slot.__get__(holder, type(holder))
            return own if type(own) is dict else None
    return None


def _may_hold_credentials(value: object) -> bool:
    """Whether ``value`` is an object whose own attributes may hold credentials (an API
    client): no plain value, container, class, module or function."""
    plain = (str, bytes, int, float, Mapping, list, tuple, set, frozenset, type)
    callables = (types.ModuleType, types.FunctionType, types.MethodType)
    return value is not None and not issubclass(type(value), (*plain, *callables))


def client_secrets(client: object) -> tuple[str, ...]:
    """The credentials ``client`` sends (an API key, a bearer token, the user info of its
    base URL: a gateway's password): never shown."""
    found = (getattr(client, "api_key", None), getattr(client, "auth_token", None))
    secrets = tuple(secret for secret in found if isinstance(secret, str) and secret)
    base_url = getattr(client, "base_url", None)
    return (*secrets, *(userinfo(str(base_url)) if base_url is not None else ()))


class CarriesCredentials(ABC):
    """An extractor whose API clients carry credentials it can tell without building one
    (:class:`ClaudeExtractor`). Declared by subclassing, as no attribute of another
    extractor is read but an instance's own ``client`` (a property may build a client,
    or fail, at each read)."""

    @abstractmethod
    def carried_credentials(self) -> tuple[str, ...]:
        """The credentials of the clients this extractor holds now (given, or built
        already), from any thread, never building one."""


def carried_by(extractor: object) -> tuple[str, ...]:
    """The credentials ``extractor``'s API clients carry: those a
    :class:`CarriesCredentials` tells, else those it and the objects it holds keep in
    their own attributes (:func:`held_secrets`: no property is triggered), and those of
    a ``client`` it holds (:func:`client_secrets`). Reading them never fails a batch: a
    failure is logged at debug level and none is given."""
    try:
        if issubclass(type(extractor), CarriesCredentials):
            return tuple(extractor.carried_credentials())  # type: ignore[attr-defined]
        client = (_instance_dict(extractor) or {}).get("client")
        held = held_secrets(extractor)
        return tuple(dict.fromkeys((*held, *(() if client is None else client_secrets(client)))))
    except Exception as error:
        log.debug(
            "the credentials of extractor %r could not be read (%s); the environment's are used",
            getattr(type(extractor), "name", type(extractor).__name__),
            type(error).__name__,
        )
        return ()


def credentials_of(extractor: object) -> tuple[str, ...]:
    """The credentials the environment gives (:func:`configured_secrets`), and those
    ``extractor`` (or an embedder) and its API clients carry (:func:`carried_by`): never
    shown."""
    return (*configured_secrets(), *carried_by(extractor))


def shown_error(error: BaseException, extractor: object) -> str:
    """``error``'s first line as a log line, a report or a stored event may show it: without
    the credentials ``extractor``'s client or the environment carries
    (:func:`credentials_of`), as an error may echo a key (an HTTP header refused for the
    newline a key read from a file kept)."""
    return redact(first_line(error), credentials_of(extractor))


def log_failure(
    logger: logging.Logger,
    level: int,
    error: BaseException,
    secrets: Sequence[str],
    msg: str,
    *args: object,
    live: bool = True,
) -> None:
    """Log ``msg % args`` at ``level`` with ``error``'s traceback, showing none of
    ``secrets``, as ``logger.log`` would (its level, filters and handlers), the caller
    named as where it was logged.

    A traceback showing one (or a URL's password) goes as the record's ``exc_text``,
    cleaned of it, with no live exception, which a formatter reading ``exc_info`` would
    show whole (a logger's filter knows the environment's credentials, not those an
    extractor's client holds): formatters keeping the traceback apart from the message
    (JSON's "exception" field) still do. One showing none goes as ``exc_info``, for the
    application's own format, unless not ``live`` (an error no filter should take for
    the application's own, say a KeyboardInterrupt an extractor raised)."""
    if not logger.isEnabledFor(level):
        return
    trace = "".join(traceback.format_exception(error)).rstrip()
    if live and not shows_credentials(trace, secrets):
        logger.log(level, msg, *args, exc_info=error, stacklevel=2)
        return
    path, line, function, _ = logger.findCaller(stacklevel=2)
    record = logger.makeRecord(logger.name, level, path, line, msg, args, None, function)
    record.exc_text = redact(trace, secrets)
    logger.handle(record)


def mask_url_userinfo(text: str) -> str:
    """``text`` with the user info of every URL in it (``user:password@``) shown as
    ``***@``: whoever logs a URL (an HTTP client's request line) shows no credential."""
    return _URL_USERINFO_ANYWHERE.sub(r"\1***@", text)


def shows_credentials(text: str, secrets: Sequence[str]) -> bool:
    """Whether ``text`` shows a credential :func:`redact` takes out: a URL's password, or
    one of ``secrets``. A URL's user name alone is no credential, though it is masked."""
    for found in _URL_USERINFO_ANYWHERE.finditer(text):
        if ":" in found.group(0)[len(found.group(1)) :]:
            return True
    masked = mask_url_userinfo(text)
    return redact(masked, secrets) != masked


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with the user info of every URL masked (:func:`mask_url_userinfo`) and
    every secret of at least :data:`SHORTEST_SECRET` characters, and every run of at least
    :data:`_SHOWN_PART` of its characters, replaced by ``[redacted]``: a shorter one (a
    gateway's password of a letter) is taken out of URLs only."""
    text = mask_url_userinfo(text)
    for forms, whole, parts in _redaction_plan(tuple(secrets)):
        for form in forms:
            text = text.replace(form, "[redacted]")
        if parts is not None:
            text = _redact_parts(text, whole, parts)
    return text


_SecretPlan = tuple[tuple[str, ...], str, "tuple[frozenset[str], re.Pattern[str]] | None"]
"""How one secret is taken out of a text: its shown forms longest first, the secret
stripped, and its runs of :data:`_SHOWN_PART` characters with the pattern finding any
(``None`` when it is shorter than a run)."""

_PLANS_KEPT: Final = 16
"""How many sets of secrets :func:`_redaction_plan` keeps the plan of: a few callers each
ask with their own (the log filter, an API error, an extractor's failure), one set at a
time, the environment's changing only now and then."""


@functools.lru_cache(maxsize=_PLANS_KEPT)
def _redaction_plan(secrets: tuple[str, ...]) -> tuple[_SecretPlan, ...]:
    """What :func:`redact` does for each of ``secrets`` long enough to be taken out,
    worked out once per set of secrets (a log filter asks with the same set at every
    record, whatever its size): no secret's forms sorted, nor its pattern compiled, again
    while the set is unchanged."""
    plan: list[_SecretPlan] = []
    for secret in dict.fromkeys(secrets):
        whole = secret.strip()
        if len(whole) < SHORTEST_SECRET:
            continue
        parts = _parts_of(whole) if len(whole) >= _SHOWN_PART else None
        plan.append((_longest_first(secret), whole, parts))
    return tuple(plan)


def shown_forms(secret: str) -> set[str]:
    """The ways ``secret`` may be shown: as it is, without the whitespace around it (a key
    read from a file keeps its newline, which a header refuses, and the error shows the
    rest), escaped as a repr shows it, and as a JSON string does (a JSON log line: a
    quote or a non-ASCII character escaped)."""
    forms = {secret, secret.strip(), repr(secret)[1:-1], *_json_forms(secret)}
    return {form for form in forms if form}


_SECRETS_KEPT: Final = 1024
"""How many secrets' forms and patterns are kept, beyond the plans: when the environment
changes, the plan of its new set is made of the secrets already worked out."""


@functools.lru_cache(maxsize=_SECRETS_KEPT)
def _longest_first(secret: str) -> tuple[str, ...]:
    """:func:`shown_forms` of ``secret``, longest first (a form inside another is taken
    after it)."""
    return tuple(sorted(shown_forms(secret), key=len, reverse=True))


def _json_forms(secret: str) -> tuple[str, str]:
    """``secret`` inside a JSON string, with non-ASCII characters escaped (``json.dumps``'
    default) and not."""
    return json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]


@functools.lru_cache(maxsize=_SECRETS_KEPT)
def _parts_of(secret: str) -> tuple[frozenset[str], re.Pattern[str]]:
    """Every run of :data:`_SHOWN_PART` characters of ``secret``, and one pattern finding
    any of them: most texts hold none, and one search tells so."""
    starts = frozenset(secret[i : i + _SHOWN_PART] for i in range(len(secret) - _SHOWN_PART + 1))
    return starts, re.compile("|".join(map(re.escape, sorted(starts))))


def _redact_parts(text: str, secret: str, parts: tuple[frozenset[str], re.Pattern[str]]) -> str:
    """``text`` with every run of :data:`_SHOWN_PART` or more characters of ``secret``
    (found by ``parts``, :func:`_parts_of`) replaced by ``[redacted]``."""
    starts, anywhere = parts
    if anywhere.search(text) is None:
        return text
    kept: list[str] = []
    i = 0
    while i < len(text):
        if text[i : i + _SHOWN_PART] not in starts:
            kept.append(text[i])
            i += 1
            continue
        end = i + _SHOWN_PART
        while end < len(text) and text[i : end + 1] in secret:
            end += 1
        kept.append("[redacted]")
        i = end
    return "".join(kept)
