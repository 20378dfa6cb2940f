"""Checks of what callers hand in: bad input is refused with a clear, typed error before
anything is decided or written.

Each check raises :class:`~events.errors.InvalidInputError` naming the value and what is
wrong with it. Text is checked for what some backend cannot store (a NUL, a lone
surrogate), so a write never fails deep inside one database and not another.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from events._invisible import (
    BLANK,
    DEFAULT_IGNORABLE,
    JOINERS,
    VARIATION_SELECTORS,
    char_class,
    code_points,
)
from events.errors import InvalidInputError, echoed_repr

__all__ = [
    "MAX_EXTRACTOR_CHARS",
    "MAX_MODEL_CHARS",
    "MAX_NAME_CHARS",
    "MAX_SENT_AHEAD",
    "MAX_TOKENS",
    "MAX_USER_ID_CHARS",
    "ROLES",
    "as_int",
    "check_count",
    "check_extractor",
    "check_flag",
    "check_key",
    "check_keys",
    "check_listing",
    "check_message",
    "check_model",
    "check_name",
    "check_new_user_id",
    "check_page",
    "check_sent_at",
    "check_text",
    "check_time",
    "check_unmistakable",
    "check_user_id",
    "check_user_ids",
    "check_visible",
    "shows_something",
    "storable",
]

ROLES: frozenset[str] = frozenset({"user", "assistant", "system"})
"""The roles a message may have."""


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Control characters; the line and paragraph separators, which break lines too; and the
bidirectional embeddings, overrides and isolates, which make text that follows them on the
same line show in another order (an id that reads as another's in a listing)."""
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Mn", "Me", "Zs", "Zl", "Zp"})
_SHOWS_NOTHING = code_points(DEFAULT_IGNORABLE, BLANK)
"""Characters drawn as nothing whatever their category (the Hangul fillers are letters)."""
_FILLERS = frozenset(
    chr(c) for c in _SHOWS_NOTHING if unicodedata.category(chr(c)) not in {*_INVISIBLE, "Cn"}
)
"""The letters and symbols among them (unassigned ones are not counted: a user an older
check let in stays readable)."""


def check_text(value: str, what: str) -> None:
    """Raise :class:`InvalidInputError` if ``value`` holds a character that some database
    cannot store (a lone surrogate is not UTF-8, and PostgreSQL text holds no NUL): it
    would otherwise fail deep inside a write, or only on one backend."""
    if value.isascii() and "\x00" not in value:  # most text: no surrogate, and no NUL
        return
    found = _UNSTORABLE.search(value)
    if found is not None:
        char = found.group()
        kind = "a NUL character" if char == "\x00" else "a lone surrogate"
        raise InvalidInputError(
            f"{what} contains {kind} (U+{ord(char):04X} at index {found.start()}), "
            "which cannot be stored as text"
        )


def storable(value: str) -> str:
    """``value`` without the characters that some database cannot store as text: each NUL
    dropped (it never means anything in text), each lone surrogate replaced by U+FFFD.

    For text the engine records but no caller handed in (an extractor's answer, an error's
    message): it is repaired, not refused, so that a bad answer never stops a user's
    processing by failing every write of its outcome.
    """
    if value.isascii() and "\x00" not in value:
        return value
    return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))


_PLAINLY_VISIBLE = re.compile("[!-~]")
"""ASCII letters, digits and signs: one is enough to show, and most text has one early."""


def shows_something(value: str) -> bool:
    """Whether ``value`` shows at least one character: not only spaces, control characters,
    combining marks alone or characters that show nothing (a zero-width space, a braille
    blank, a Hangul filler)."""
    if _PLAINLY_VISIBLE.search(value) is not None:
        return True
    return any(
        unicodedata.category(char) not in _INVISIBLE and char not in _FILLERS for char in value
    )


def check_visible(value: str, what: str, hint: str = "") -> None:
    """Raise :class:`InvalidInputError` unless ``value`` shows at least one character."""
    if not shows_something(value):
        raise InvalidInputError(
            f"{what} must not be empty, nor only spaces, control or zero-width characters{hint}"
        )


def _check_no_control(value: str, what: str) -> None:
    """Raise :class:`InvalidInputError` if ``value`` holds a control character (a NUL, a
    newline, U+2028, a bidirectional override...): names and ids are single lines shown as
    they read, and PostgreSQL text cannot hold a NUL."""
    found = _CONTROL.search(value)
    if found is not None:
        raise InvalidInputError(
            f"{what} must not contain control characters "
            f"(U+{ord(found.group()):04X} at index {found.start()})"
        )


MAX_USER_ID_CHARS = 256
"""The longest user id."""


def _is_plain_id(value: str) -> bool:
    """Whether ``value`` is printable ASCII within the length limit with no space at either
    end: an id every user id check passes (its first character shows, none is a control
    character, ASCII is NFC), found by string methods alone.

    Most ids are such, and every write checks its id on the caller's event loop, a
    thousand of them at once in a burst of users: the full checks cost several times more.
    Only a plain ``str`` is trusted with it: a subclass may answer these methods its own way.
    """
    return (
        0 < len(value) <= MAX_USER_ID_CHARS
        and value.isascii()
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    )


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it names a user, else raise :class:`InvalidInputError`."""
    if not isinstance(user_id, str):
        raise InvalidInputError(f"user_id must be a str, not {type(user_id).__name__}")
    if type(user_id) is str and _is_plain_id(user_id):
        return user_id
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidInputError(
            f"user_id is {len(user_id)} characters long; the limit is {MAX_USER_ID_CHARS}"
        )
    check_text(user_id, "user_id")
    check_visible(user_id, "user_id")
    _check_no_control(user_id, "user_id")
    return user_id


def check_user_ids(user_ids: object) -> list[str]:
    """The ids of ``user_ids`` (a list, tuple or other iterable, but not one id) as a list,
    each checked as :func:`check_user_id`: read once, so a generator is not used up by its
    check, else raise :class:`InvalidInputError`."""
    return [check_user_id(user_id) for user_id in check_keys(user_ids, "user_ids")]


_NEEDED = code_points(JOINERS, VARIATION_SELECTORS)
_LOOKALIKE = re.compile(
    char_class(_SHOWS_NOTHING - _NEEDED)
    + rf"|(?:\A|(?<=[\x00-\x7f])){char_class(_NEEDED)}"
    + rf"|{char_class(code_points(JOINERS))}(?=[\x00-\x7f]|\Z)"
)
"""Characters that show nothing, not even a space (Unicode's default ignorable ones and the
blank ones): an id holding one reads as another's. Joiners and variation selectors, which
scripts and emoji need, count only where they join or vary nothing: first, after ASCII,
and (joiners) last or before ASCII."""


def check_new_user_id(user_id: object) -> str:
    """Return ``user_id`` if a message may be written under it, else raise
    :class:`InvalidInputError`: over :func:`check_user_id`, an id that would read the same
    as another one is refused (spaces around it, a character that shows nothing, a form
    other than Unicode NFC), so that two users never look like one. Reads take any id
    :func:`check_user_id` does, so the users such ids name stay readable."""
    if type(user_id) is str and _is_plain_id(user_id):
        return user_id
    user_id = check_user_id(user_id)
    check_unmistakable(user_id, "user_id")
    return user_id


def check_unmistakable(name: str, what: str) -> None:
    """Raise :class:`InvalidInputError` if ``name``, given to something new (a user id, a
    knowledge version), would read the same as another name or show what it is not: none
    of it visible, spaces around it, a control character, a character that shows nothing,
    a form other than Unicode NFC. ``what`` names it in the error."""
    check_visible(name, what)
    if name.strip() != name:
        raise InvalidInputError(f"{what} must not begin or end with spaces")
    _check_no_control(name, what)
    if name.isascii():
        return
    found = _LOOKALIKE.search(name)
    if found is not None:
        raise InvalidInputError(
            f"{what} must not contain characters that show nothing "
            f"(U+{ord(found.group()):04X} at index {found.start()})"
        )
    if not unicodedata.is_normalized("NFC", name):
        raise InvalidInputError(
            f"{what} must be in Unicode NFC (composed) form, as "
            f"unicodedata.normalize('NFC', ...) gives: another form reads the same"
        )


MAX_NAME_CHARS = 100
"""The longest speaker name a message may carry."""

MAX_EXTRACTOR_CHARS = 64
"""The longest extractor name the log records beside an outcome."""

MAX_MODEL_CHARS = 128
"""The longest model name the log records beside an outcome."""


def check_model(model: str, what: str) -> None:
    """Raise :class:`InvalidInputError` unless ``model`` can name a model: the API is sent
    it as it is, so spaces around it, a control character or nothing visible would fail
    every call."""
    check_text(model, what)
    check_unmistakable(model, what)


def check_extractor(extractor: object, kind: type | None = None) -> None:
    """Raise :class:`InvalidInputError` unless ``extractor`` is an extractor instance (a
    name the log can record and an ``extract`` that is no class), of ``kind`` if given:
    anything else fails every batch it is given, and each failure would be recorded
    against the messages. (A plain ``extract`` may hand back another's coroutine, as
    wrappers do: one that gives no awaitable is told at its first call.)"""
    expected = "an Extractor" if kind is None else f"a {kind.__name__}"
    if isinstance(extractor, type):
        fits = kind is None or issubclass(extractor, kind)
        raise InvalidInputError(
            f"extractor must be {expected} instance, not the class {extractor.__name__}"
            + (f": give {extractor.__name__}()" if fits else "")
        )
    if kind is not None and not isinstance(extractor, kind):
        raise InvalidInputError(
            f"extractor must be {expected} instance, not {type(extractor).__name__}"
        )
    name = getattr(extractor, "name", None)
    extract = getattr(extractor, "extract", None)
    if not (isinstance(name, str) and callable(extract)):
        raise InvalidInputError(
            "extractor must be an Extractor (a name and an async extract(batch)), "
            f"not {type(extractor).__name__}"
        )
    if isinstance(extract, type):  # called, it makes an instance of the batch, never a result
        raise InvalidInputError(
            f"the extractor's extract must be an async method, not the class {extract.__name__}"
        )
    if not name.strip() or len(name) > MAX_EXTRACTOR_CHARS:
        raise InvalidInputError(  # the log records it beside every outcome
            f"an extractor's name must be 1 to {MAX_EXTRACTOR_CHARS} characters, "
            f"not {len(name)}: {name[:MAX_EXTRACTOR_CHARS]!r}"
        )
    check_text(name, "the extractor's name")


MAX_TOKENS = 2**63 - 1
"""The most tokens an event may say a call spent: what a 64-bit column holds."""

MAX_FACT_CHARS = 1000
"""The longest fact text the log records: a fact is a sentence or two, and a longer answer
(a custom extractor pasting a message) is cut, the cut noted, rather than stored whole."""


def check_name(name: object) -> None:
    """Raise :class:`InvalidInputError` unless ``name`` is ``None`` or a speaker's name."""
    if name is None:
        return
    if not isinstance(name, str):
        raise InvalidInputError(f"name must be a str or None, not {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(
            f"name must be at most {MAX_NAME_CHARS} characters long, not {len(name)}"
        )
    check_text(name, "name")
    check_visible(name, "name", " (pass None for no name)")
    _check_no_control(name, "name")


def check_message(role: object, content: object, max_chars: int) -> None:
    """Raise :class:`InvalidInputError` unless ``role`` and ``content`` make a valid message."""
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidInputError(
            f"unknown role {echoed_repr(role)}; expected one of {sorted(ROLES)}"
        )
    if not isinstance(content, str):
        raise InvalidInputError(f"content must be a str, not {type(content).__name__}")
    if len(content) > max_chars:
        raise InvalidInputError(
            f"{role} message content is {len(content)} characters long; the limit is {max_chars}"
        )
    if content.isascii() and "\x00" not in content and _PLAINLY_VISIBLE.search(content):
        return  # most messages: storable and visible (what the checks below find, sooner)
    what = f"{role} message content"
    check_text(content, what)
    check_visible(content, what)


def _zone_name(zone: object) -> str:
    """How a refusal names a time zone: its repr, or its class's name if even that fails."""
    try:
        return repr(zone)
    except Exception:
        return type(zone).__name__


def check_time(moment: object, what: str) -> datetime | None:
    """Return ``moment`` in UTC (``None`` stays ``None``), else raise
    :class:`InvalidInputError`: times are kept in UTC, so a time must say its offset and
    must still fall within years 1 to 9999 once in UTC. A datetime subclass (pandas'
    ``Timestamp``, a test clock's) is returned as a plain datetime: the log stores only
    those."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise InvalidInputError(f"{what} must be a datetime or None, not {type(moment).__name__}")
    try:
        offset = moment.utcoffset()
    except Exception as error:  # a tzinfo whose offset is no offset, or that gives none
        raise InvalidInputError(
            f"{what} has a time zone {_zone_name(moment.tzinfo)} that gives no valid offset: "
            f"{type(error).__name__}: {error}"
        ) from None
    if offset is None:
        raise InvalidInputError(
            f"{what} must be timezone-aware, e.g. datetime.now(UTC) or 2026-11-26T10:00:00+00:00"
        )
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(
            f"{what} {moment.isoformat()} is out of range: in UTC it falls outside years 1 to 9999"
        ) from None
    if type(utc) is datetime:
        return utc
    return datetime(
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, UTC
    )


MAX_SENT_AHEAD = timedelta(minutes=5)
"""How far past this machine's clock a message's ``sent_at`` may be: clocks that disagree
by this much are the caller's and this one's, not a message from the future."""


def check_sent_at(moment: object, now: datetime | None = None) -> datetime | None:
    """:func:`check_time` for a message's ``sent_at``, which must also not be later than
    ``now`` (this machine's clock) by more than :data:`MAX_SENT_AHEAD`.

    A time hours or years ahead is a caller's mistake (a local time labelled UTC, seconds
    read as milliseconds), and it would not fail on its own: the facts of that message
    would begin in the future, and every message said until then would be taken as said
    before them.
    """
    checked = check_time(moment, "sent_at")
    if checked is None:
        return None
    now = datetime.now(UTC) if now is None else now
    if checked > now + MAX_SENT_AHEAD:
        raise InvalidInputError(
            f"sent_at {checked.isoformat()} is in the future (this machine's clock says "
            f"{now.isoformat(timespec='seconds')}); pass when the message was sent, or None "
            "for now"
        )
    return checked


def check_flag(value: object, what: str) -> bool:
    """Return ``value`` if it is a bool, else raise :class:`InvalidInputError` (a string
    such as ``"false"`` is not taken as true)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def check_listing(as_of: object, history: object) -> None:
    """Raise :class:`InvalidInputError` unless a knowledge listing asks for at most one of
    ``as_of`` (the entries valid then) and ``history`` (every entry, ended ones too)."""
    if check_flag(history, "history") and as_of is not None:
        raise InvalidInputError(
            "give as_of or history, not both: history lists every entry, ended ones too"
        )


def as_int(value: object) -> int | None:
    """``value`` as a Python int if it is a whole number of an integral kind (an int, a
    numpy integer), never a bool; else ``None``. The int, not the value: a database
    driver binds no numpy integer. An integral kind that gives no int (numpy's
    ``timedelta64``, a registered class whose ``__index__`` raises) is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    try:
        return operator.index(value)
    except Exception:  # whatever its __index__ raises: the caller refuses it by its type
        return None


def as_seconds(value: object) -> float | None:
    """``value`` as a Python float if it is a real number of any kind (an int, a float, a
    Fraction, a numpy number), never a bool, and infinite with its sign if too large for a
    float; else ``None``. A real kind that gives no float (numpy's ``timedelta64``, a
    registered class whose ``__float__`` raises) is no number of seconds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int or a Fraction past a float's range
        return -math.inf if value < 0 else math.inf
    except Exception:  # whatever its __float__ raises: the caller refuses it by its type
        return None


def check_count(value: object, what: str) -> int:
    """Return ``value`` as an int if it is a whole number (see :func:`as_int`) of 1
    or more, else raise :class:`InvalidInputError`."""
    count = as_int(value)
    if count is None:
        raise InvalidInputError(f"{what} must be an int, not {type(value).__name__}")
    if count < 1:
        raise InvalidInputError(f"{what} must be 1 or more, not {echoed_repr(count)}")
    return count


def check_page(after: object, limit: object, start: str = "after") -> tuple[int, int | None]:
    """A page of a listing, past ``after`` (a whole number of 0 or more, called ``start``)
    and of at most ``limit`` (``None``, or a whole number of 1 or more), as ints; else
    raise :class:`InvalidInputError`."""
    skipped = as_int(after)
    if skipped is None:
        raise InvalidInputError(f"{start} must be an int, not {type(after).__name__}")
    if skipped < 0:
        raise InvalidInputError(f"{start} must be 0 or more, not {echoed_repr(skipped)}")
    return skipped, None if limit is None else check_count(limit, "limit")


def check_key(value: object, what: str) -> str:
    """Return ``value`` if it is a string a database can store (an id, a version's name,
    a place to start from), else raise :class:`InvalidInputError`."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    check_text(value, what)
    return value


def check_keys(values: object, what: str) -> list[str]:
    """The strings of ``values`` (a list, tuple or other iterable, but not one string) as
    a list, each checked as :func:`check_key`, else raise :class:`InvalidInputError`."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} must be a list of strings, not {type(values).__name__}")
    return [check_key(value, what) for value in values]
