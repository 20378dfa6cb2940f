"""A logging filter that takes credentials out of log records before anything writes them.

HTTP clients log the URL of every request, user info included (a gateway's
``ANTHROPIC_BASE_URL=http://user:password@host``), and a library's text may show a key.
:class:`RedactSecrets` cleans a record of both: memvee puts it on the handlers it sets
up (``memvee serve``, ``memvee mcp``, the CLI), on its own loggers when a Memory or an
Audit opens (:data:`OWN_LOGGERS`) and on the loggers of the API clients it makes, so neither its own
logs nor an application's handlers show a credential.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Final

from events.credentials import known_secrets, shows_credentials
from memvee._secrets import configured_secrets, declared_secrets, redact

__all__ = [
    "OWN_LOGGERS",
    "RedactSecrets",
    "exception_type",
    "protect_loggers",
    "protect_own_loggers",
]

OWN_LOGGERS: Final = (
    "memvee",
    "memvee.actors",
    "memvee.audit",
    "memvee.bulk",
    "memvee.events",
    "memvee.extractors",
    "memvee.projections",
    "memvee.retrieval",
    "memvee.server",
    "memvee.server.access",
)
"""Every logger memvee's packages (its engine's too) log on: each is given the filter by
name, as a module imported later (``memvee.audit``) makes its logger only then, and a
logger's filter sees only the records logged on it."""

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_installing = threading.Lock()

_taken_off: weakref.WeakKeyDictionary[logging.LogRecord, type[BaseException]] = (
    weakref.WeakKeyDictionary()
)
"""The type of each live exception a :class:`RedactSecrets` took off a record, for as long
as the record lives: kept aside, not on the record, where a formatter would show it."""


def exception_type(record: logging.LogRecord) -> type[BaseException] | None:
    """The type of the exception ``record`` was logged with, if any, even once a
    :class:`RedactSecrets` took the live exception off it: a filter deciding by it (the
    CLI's, hiding a library's report of a Ctrl-C) then holds whichever filter runs first."""
    if record.exc_info and record.exc_info[0] is not None:
        return record.exc_info[0]
    return _taken_off.get(record)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message, exception text, stack and string extras with the user
    info of every URL masked and every known secret replaced by ``[redacted]``.

    The known secrets are those the environment gives (the SDKs' variables and every one
    whose name says it holds a credential: :func:`~events.credentials.configured_secrets`,
    the definition a contained embedder's failures are cleaned by too; read at each
    record, so a key set later is covered too), those declared to the process
    (:func:`~memvee._secrets.declare_secrets`: a database password, which a 5xx's words
    are cleaned of too) and ``secrets`` given here. The record is changed in place, so
    every handler it reaches sees it clean.

    A record's exception whose traceback shows one of them (or a URL's password) reaches
    the handlers as that traceback cleaned (``exc_text``) and without ``exc_info``: a
    formatter that reads the live exception (JSON, Sentry, structlog) gets no exception
    rather than the secret its text shows (the type stays known to :func:`exception_type`,
    for a filter deciding by it); one whose traceback shows none is left as it
    was, for the application's own ``formatException``. A secret held only in an
    exception's attributes or its frames' locals, not in its text, is not looked for. No
    other secret is known here: memvee logs an extractor's failure, whose text may show its
    client's key, as text already cleaned of it.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Clean ``record``; never drop it, and never fail the log call: the environment
        unreadable, the secrets found last are taken out still; a message whose text or
        arguments cannot be shown is shown by what can be (their types' names); an
        exception that cannot be formatted is left for the handler, whose ``handleError``
        reports it as it would with no filter."""
        try:
            self._clean_record(record)
        except Exception as error:  # unforeseen: a record not known clean shows nothing
            _withhold(record, error)
        return True

    def _clean_record(self, record: logging.LogRecord) -> None:
        """Clean ``record`` in place (:meth:`filter`)."""
        try:
            environment = configured_secrets()
        except Exception:  # the logging call must go on; what was known is still redacted
            environment = known_secrets()
        secrets = (*environment, *declared_secrets(), *self.secrets)
        try:
            message = record.getMessage()
            unformatted = False
        except Exception:  # arguments that do not fit or fail to show: show what can be
            message, unformatted = _shown_unformatted(record), True
        cleaned = self.clean(message, secrets)
        if unformatted or cleaned != message:
            record.msg, record.args = cleaned, ()
        shown = record.exc_text
        if not shown and record.exc_info:
            try:
                shown = logging.Formatter().formatException(record.exc_info)
            except Exception:  # malformed: the handler's formatter fails alike, and reports it
                shown = None
        if shown and shows_credentials(shown, secrets):
            # The live exception would show it to whoever reads it.
            if record.exc_info and record.exc_info[0] is not None:
                _taken_off[record] = record.exc_info[0]
            record.exc_text, record.exc_info = self.clean(shown, secrets), None
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info, secrets)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, key, self.clean(value, secrets))

    @staticmethod
    def clean(text: str, secrets: Sequence[str]) -> str:
        """``text`` with URL user info masked and ``secrets`` redacted (:func:`redact`)."""
        return redact(text, secrets)


def protect_loggers(prefixes: Iterable[str]) -> None:
    """Put a :class:`RedactSecrets` on every logger named by, or under, one of
    ``prefixes`` (a library's loggers, such as an HTTP client's), once each.

    A logger's filters see only the records logged on it, not its children's, so each
    one that exists is given its own; the application's handlers then get clean records.
    A logger made by another thread meanwhile is not looked for (nor does it fail this).
    """
    names = tuple(prefixes)
    with _installing:
        # A copy made at once: another thread may make a logger while these are looked at.
        known = tuple(logging.root.manager.loggerDict)
        existing = [
            name
            for name in known
            if any(name == prefix or name.startswith(f"{prefix}.") for prefix in names)
        ]
        for name in {*names, *existing}:
            logger = logging.getLogger(name)
            if not any(isinstance(each, RedactSecrets) for each in logger.filters):
                logger.addFilter(RedactSecrets())


def protect_own_loggers() -> None:
    """Put a :class:`RedactSecrets` on every logger memvee logs on (:data:`OWN_LOGGERS`),
    once each: an application's handlers may carry no filter, and a Memory or an Audit
    (a process that only re-extracts) may be the first of memvee's objects it opens."""
    protect_loggers(OWN_LOGGERS)


def _withhold(record: logging.LogRecord, error: Exception) -> None:
    """Empty ``record`` of everything it would show but where it comes from, told instead
    that cleaning it failed: a secret it held must not reach a log for the failure."""
    record.msg = (
        f"(a log record was withheld: cleaning it of secrets failed, {type(error).__name__})"
    )
    record.args = ()
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    for key, value in list(vars(record).items()):
        if key not in _RECORD_FIELDS and isinstance(value, str):
            setattr(record, key, "[withheld]")


def _shown_unformatted(record: logging.LogRecord) -> str:
    """A record's message and arguments that could not be formatted together, as
    ``msg % args``: each shown by its ``str`` or ``repr``, or by its type's name where
    those fail too, so that showing them never fails."""
    try:
        msg = str(record.msg)
    except Exception:
        msg = f"<{type(record.msg).__name__}>"
    try:
        args = repr(record.args)
    except Exception:
        args = _type_names(record.args)
    return f"{msg} % {args}"


def _type_names(args: object) -> str:
    """``args`` shown by the names of its items' types (or its own), which never fails."""
    if type(args) is tuple:
        return "(" + ", ".join(f"<{type(each).__name__}>" for each in args) + ")"
    return f"<{type(args).__name__}>"
