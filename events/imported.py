"""Events that come from outside (an import): checked before a log holds them.

A log's own events are decided by the aggregate, so they are well formed. An exported
file can be edited, cut or made by another program, and one bad event would leave its
user's log unloadable for good (not even forgettable). So each imported event must have
every field of the type its class declares, a message must be one ``add_message`` would
have accepted, each event one the log's own commands could have emitted where it stands
(an outcome covering its batch, entries citing it, ids given once), and the user's events
must replay, one by one, as a load would replay them.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import cache
from typing import Any, ClassVar, TypeVar, Union

from events.checks import MAX_SENT_AHEAD, check_message, check_name, check_time
from events.errors import InvalidInputError
from events.user_log import UserLog, continues_decision

__all__ = ["ImportReplay", "check_fields"]

_ENTRY_FIELDS: dict[str, Any] = {
    "entry_id": str,
    "text": str,
    "source_message_ids": list[str],
    "valid_from": str,
}
"""The fields every knowledge entry of an extraction holds (but see
:func:`_stored_without_starts`)."""

_OPTIONAL_ENTRY_FIELDS: dict[str, Any] = {"repairs": list[str]}
"""The fields a knowledge entry holds only when there is something in them."""

_FIELDS_WITHOUT_STARTS = frozenset(
    {
        *("originator_id", "originator_version", "timestamp", "task_id", "knowledge_version"),
        *("message_ids", "entries", "extractor", "model", "input_tokens", "output_tokens"),
    }
)
"""Every field an extraction or re-extraction held while its entries held no
``valid_from``: before the knowledge lifecycle (a1f6344), and until both events gained
their prompt cache's token counts (725a3dc, four days later), which every later one
holds."""


class ImportReplay:
    """One user's imported events, replayed in memory after the log this database holds
    (``stored``, ``None`` for none, whose events ``history`` reads when first needed):
    :meth:`check` refuses an event the log could not hold."""

    def __init__(
        self, stored: UserLog | None, history: Callable[[], Iterable[Any]] = tuple
    ) -> None:
        self._log = stored
        self._history: Callable[[], Iterable[Any]] | None = history
        self._message_ids: set[str] = set()
        self._entry_ids: set[str] = set()
        self.stored = stored is not None
        """Whether this database held a log of the user before the import."""
        self._due: int | None = None
        """The events the decision under way wrote after those replayed, still to come
        (``None``: not counted, as in a log an older memvee wrote)."""
        self._began = ""
        """What began the decision under way (the line of its first event, and its kind)."""
        self._stored_starts = ""
        """The first event of the log showing that a memvee storing entries' starts wrote
        it (:meth:`_note_starts`), ``""`` before one."""
        self._startless = ""
        """The extraction stored without starts that began the decision under way, ``""``
        when none did (or once another decision begins)."""

    def check(self, event: Any, what: str) -> None:
        """Raise :class:`InvalidInputError` (naming ``what``, e.g. the line) unless
        ``event`` is well formed and goes on the log replayed so far, as one its commands
        could have emitted there (:meth:`UserLog.check_recordable`), citing messages and
        entries the log holds. An event at a version the stored log holds already is only
        type-checked: the import compares it with the stored one, and one past the end of
        the stored log is left to the import to refuse."""
        check_fields(event, what)
        if isinstance(event, UserLog.MessageAdded):
            _check_message(event, what)
        _check_entries_began(event, what)
        known = 0 if self._log is None else self._log.version
        if event.originator_version != known + 1:
            return  # held already (compared), or past the stored log (refused as a gap)
        self._read_history()
        try:
            self._check_decision(event)
            self._check_starts_kept(event)
            if self._log is not None:
                self._log.check_recordable(event)
            self._check_ids(event)
        except InvalidInputError as error:
            raise InvalidInputError(f"{what}: {error}") from None
        try:
            self._log = event.mutate(self._log)
        except Exception as error:  # whatever a load would fail on, refused here
            raise InvalidInputError(
                f"{what}: the log cannot replay it ({type(error).__name__}: {error})"
            ) from error
        self._note_ids(event)
        self._note_decision(event, what)

    def _check_starts_kept(self, event: Any) -> None:
        """Refuse an extraction whose entries hold no start, as the first memvees stored
        them, in a log a memvee storing starts (a1f6344 on) wrote already, and any change
        of an entry (an end, a start moved) written in the decision such an extraction
        began: a first memvee writes no such change, so a memvee storing starts wrote
        both, in one commit. Either way the entries lost their starts. A change in a
        later decision may touch a first memvee's entry (a backdated message, read by the
        memvee the log was upgraded to, makes an older entry ending where it began).

        The memvees of a1f6344..725a3dc stored extractions in the first memvees' form of
        fields (:data:`_FIELDS_WITHOUT_STARTS`), and no event of theirs holds what a
        first memvee's does not, but for the starts themselves and the ends of entries
        (the topics are the same): an extraction of theirs that lost every start, with
        no such event before it in its log nor a change of an entry in its decision, cannot be told
        from a first memvee's, and is taken as one. A first memvee cannot have written
        after such an event: it cannot read an end, and it folds an extraction in the
        transaction storing it into tables whose entries then need a start."""
        entries = getattr(event, "entries", None) or ()
        if self._stored_starts and entries and _stored_without_starts(event, entries):
            raise InvalidInputError(
                "its knowledge entries hold no valid_from, as the first memvees stored "
                "them, but a memvee storing starts wrote the log since "
                f"{self._stored_starts}: they were lost"
            )
        changed = getattr(event, "entry_id", None)
        if self._startless and changed is not None and continues_decision(event):
            raise InvalidInputError(
                f"it changes the entry {changed!r} in the decision {self._startless} began, "
                "whose entries hold no valid_from: a memvee storing starts wrote both, and the "
                "starts were lost"
            )

    def _note_starts(self, event: Any) -> None:
        """Note the first event showing a memvee storing entries' starts wrote the log: an
        extraction holding them, or the end of an entry; and the entries of an extraction
        stored without them, while the decision it began goes on."""
        entries = getattr(event, "entries", None) or ()
        if not continues_decision(event):
            self._startless = ""
        if entries and _stored_without_starts(event, entries):
            self._startless = f"the {type(event).__name__} at version {event.originator_version}"
        elif self._stored_starts:
            return
        elif entries:
            self._stored_starts = (
                f"version {event.originator_version}, a {type(event).__name__} holding its "
                "entries' starts"
            )
        elif isinstance(event, UserLog.KnowledgeSuperseded | UserLog.KnowledgeInvalidated):
            self._stored_starts = f"version {event.originator_version}, a {type(event).__name__}"

    def check_finished(self) -> None:
        """Raise :class:`InvalidInputError` if the events replayed stop inside a decision:
        the log's commands wrote more events with the last one, all committed together,
        so a log without them was cut short (an extraction's entries current beside the
        ones they replaced, say)."""
        if self._due:
            raise InvalidInputError(
                f"the lines stop inside a decision: {self._began}, and {self._missing()}"
            )

    def _check_decision(self, event: Any) -> None:
        """The events a decision counted come next, and no more of them."""
        continues = continues_decision(event)
        if self._due and not continues:
            raise InvalidInputError(f"{self._began}, and {self._missing()} before this line")
        if continues and self._due == 0:
            raise InvalidInputError(
                f"a {type(event).__name__} only follows an event of its decision: {self._began}"
            )

    def _missing(self) -> str:
        return "1 of them is missing" if self._due == 1 else f"{self._due} of them are missing"

    def _note_decision(self, event: Any, what: str) -> None:
        """Count the events the decision of ``event`` (replayed, at ``what``) still owes."""
        if not continues_decision(event):
            self._due = getattr(event, "followed_by", None)
            more = "1 event" if self._due == 1 else f"{self._due} events"
            self._began = (
                f"{what}, a {type(event).__name__}, was written in one commit with {more} after it"
            )
        elif self._due:
            self._due -= 1

    def _read_history(self) -> None:
        """Note the messages and entries of the stored log, once, before the first event
        that goes on it."""
        if self._history is not None:
            history, self._history = self._history, None
            for event in history():
                self._note_ids(event)

    def _check_ids(self, event: Any) -> None:
        """A message or entry id is given once; messages and entries cited are the log's."""
        if isinstance(event, UserLog.MessageAdded) and event.message_id in self._message_ids:
            raise InvalidInputError(f"message id {event.message_id!r} comes twice")
        for entry in getattr(event, "entries", None) or ():
            if entry["entry_id"] in self._entry_ids:
                raise InvalidInputError(f"entry id {entry['entry_id']!r} is taken already")
        cited = [
            *(getattr(event, "message_ids", None) or ()),
            *(getattr(event, "source_message_ids", None) or ()),
        ]
        unknown = [m for m in cited if m not in self._message_ids]
        if unknown:
            raise InvalidInputError(f"message {unknown[0]!r} is not in the log")
        named = [
            getattr(event, name) for name in ("entry_id", "superseded_by") if hasattr(event, name)
        ]
        added = {entry["entry_id"] for entry in getattr(event, "entries", None) or ()}
        named += [e for e in getattr(event, "repeated", None) or () if e not in added]
        strange = [e for e in named if e not in self._entry_ids]
        if strange:
            raise InvalidInputError(f"entry {strange[0]!r} is not in the log")

    def _note_ids(self, event: Any) -> None:
        """Remember the message or entries ``event`` adds, and what it tells of the memvee
        that wrote it (:meth:`_note_starts`)."""
        self._note_starts(event)
        if isinstance(event, UserLog.MessageAdded):
            self._message_ids.add(event.message_id)
        for entry in getattr(event, "entries", None) or ():
            self._entry_ids.add(entry["entry_id"])


def _check_message(event: Any, what: str) -> None:
    """A message ``add_message`` would have taken when it was recorded: of any length (the
    limit is a Memory's setting, and the log may come from one with a larger limit), and
    sent no later than its recording, as that machine's clock allowed."""
    try:
        check_message(event.role, event.content, sys.maxsize)
        check_name(event.name)
    except InvalidInputError as error:
        raise InvalidInputError(f"{what}: {error}") from None
    if event.sent_at - event.timestamp > MAX_SENT_AHEAD:
        raise InvalidInputError(
            f"{what}: the message was sent at {event.sent_at.isoformat()}, after it was "
            f"recorded ({event.timestamp.isoformat()})"
        )


def _check_entries_began(event: Any, what: str) -> None:
    """Refuse an entry that begins later than its extraction was recorded (and than its
    messages could have been sent): it would end before it began."""
    for entry in getattr(event, "entries", None) or ():
        if "valid_from" not in entry:
            continue  # stored before entries had a start (checked by check_fields)
        began = datetime.fromisoformat(entry["valid_from"])
        if began.tzinfo is not None and began - event.timestamp > MAX_SENT_AHEAD:
            raise InvalidInputError(
                f"{what}: knowledge entry {entry['entry_id']!r} begins at {began.isoformat()}, "
                f"after it was recorded ({event.timestamp.isoformat()})"
            )


def check_fields(event: Any, what: str) -> None:
    """Raise :class:`InvalidInputError` (naming ``what``) unless each field of
    ``event``'s class (and its base's version and time) is there, of its declared type,
    and each knowledge entry holds its fields; each time must also fall within
    years 1 to 9999 once in UTC (:func:`check_time`), or its log could not be read back."""
    kind: type = type(event)
    for name, hint in _field_types(kind).items():
        if not hasattr(event, name):
            raise InvalidInputError(f"{what}: the {type(event).__name__} has no {name!r}")
        value = getattr(event, name)
        if not _fits(value, hint):
            raise InvalidInputError(
                f"{what}: {name!r} of the {type(event).__name__} is not a {_named(hint)}: "
                f"{value!r:.80}"
            )
        if isinstance(value, datetime):
            check_time(value, f"{what}: {name!r} of the {kind.__name__}")
    entries = getattr(event, "entries", None) or ()
    started = not (entries and _stored_without_starts(event, entries))
    for entry in entries:
        if not _entry_fits(entry, started):
            raise InvalidInputError(f"{what}: a knowledge entry is not well formed: {entry!r:.80}")
        if not entry["text"].strip():
            raise InvalidInputError(f"{what}: knowledge entry {entry['entry_id']!r} has no text")
        if not started:
            continue
        try:
            began = datetime.fromisoformat(entry["valid_from"])
        except ValueError as error:
            raise InvalidInputError(f"{what}: a knowledge entry's valid_from: {error}") from None
        if began.tzinfo is not None:
            check_time(began, f"{what}: the valid_from of knowledge entry {entry['entry_id']!r}")


def _stored_without_starts(event: object, entries: Iterable[object]) -> bool:
    """Whether ``event``'s ``entries`` are as the memvees before the knowledge lifecycle
    stored them, without a ``valid_from`` (each is valid from its extraction, as the
    projections read it): none holds one, and the event holds no field its kind gained
    since (:data:`_FIELDS_WITHOUT_STARTS`). An entry without its start in any other event
    was damaged."""
    return vars(event).keys() <= _FIELDS_WITHOUT_STARTS and not any(
        isinstance(entry, dict) and "valid_from" in entry for entry in entries
    )


def _entry_fits(entry: object, started: bool = True) -> bool:
    """Whether ``entry`` is a dict holding each field of a knowledge entry, of its type
    (its ``valid_from`` only when its event stored entries ``started``)."""
    return (
        isinstance(entry, dict)
        and all(
            _fits(entry.get(key), hint)
            for key, hint in _ENTRY_FIELDS.items()
            if started or key != "valid_from"
        )
        and all(
            _fits(entry[key], hint) for key, hint in _OPTIONAL_ENTRY_FIELDS.items() if key in entry
        )
    )


@cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        name: hint
        for name, hint in hints.items()
        if typing.get_origin(hint) is not ClassVar and not isinstance(hint, TypeVar)
    }


def _fits(value: object, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (the few forms events declare)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is datetime:
        return isinstance(value, datetime) and value.utcoffset() is not None
    return isinstance(value, hint)


def _named(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
