"""The compact form a user-log event is stored in, and the older forms that still read back.

eventsourcing's mapper stores an event under its full topic (``events.user_log:UserLog.
MessageAdded``) with every time wrapped as ``{"_type_": "datetime_iso", "_data_": ISO}``
(69 bytes). :class:`CompactMapper` stores a user-log event under its class name
(``MessageAdded``) and each of its time fields in UTC as bare microseconds since 1970 (16
bytes): the field's declared type says it is a time. A time with any other offset, or one
nested deeper, keeps a wrapper (``utc_us``, or ISO text for a non-UTC offset), so it reads
back exactly as it was given. Events stored in either older form (full topics, ISO or
``utc_us`` wrappers) still read back: their topics and transcodings stay registered.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
)
from eventsourcing.utils import get_topic, register_topic, resolve_topic

from events.user_log import EVENT_CLASSES, UserLog

__all__ = [
    "CompactMapper",
    "UtcMicroseconds",
    "compact_state",
    "drop_unknown",
    "from_micros",
    "full_topic",
    "known_fields",
    "known_topic",
    "micros_of",
    "register_time_transcodings",
    "restore_times",
    "stored_topic",
    "time_fields",
    "time_from_stored",
]

log = logging.getLogger("memvee.events")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SHORT_TOPICS: dict[type, str] = {cls: cls.__name__ for cls in EVENT_CLASSES}
for _cls, _name in _SHORT_TOPICS.items():
    register_topic(_name, _cls)


def stored_topic(cls: type) -> str:
    """The topic ``cls``'s events are stored under: a user-log event's class name, else
    eventsourcing's own topic (snapshots)."""
    return _SHORT_TOPICS.get(cls) or get_topic(cls)


def full_topic(topic: str) -> str:
    """eventsourcing's full topic of a stored topic (what exports write: it names the module)."""
    return get_topic(resolve_topic(topic))


@functools.cache
def time_fields(cls: type) -> frozenset[str]:
    """The fields of a user-log event class that hold a time (``datetime`` or
    ``datetime | None``); empty for any other class (they keep the wrapped form)."""
    if cls not in _SHORT_TOPICS:
        return frozenset()
    hints = typing.get_type_hints(cls)
    return frozenset(
        name
        for name, hint in hints.items()
        if hint is datetime or datetime in typing.get_args(hint)
    )


def known_topic(topic: str) -> bool:
    """Whether ``topic`` names an event class of this memvee: one it does not know was
    written by a newer memvee."""
    try:
        resolve_topic(topic)
    except Exception:  # eventsourcing's TopicError, or the import's own error
        return False
    return True


@functools.cache
def known_fields(cls: type) -> frozenset[str] | None:
    """The fields a user-log event class declares (its base's id, version and time too);
    ``None`` for any other class, whose stored state is taken as it is (snapshots)."""
    if cls not in _SHORT_TOPICS:
        return None
    return frozenset(field.name for field in dataclasses.fields(cls))


_NOTED: set[tuple[str, str]] = set()


def drop_unknown(cls: type, known: frozenset[str], state: dict[str, Any]) -> None:
    """Remove from ``state`` the fields ``cls`` does not declare: a newer memvee wrote them,
    and this one reads the event as it knows it (forward compatibility). Each event type and
    field is logged once, by name: never its value, which may be what a user said."""
    for name in [name for name in state if name not in known]:
        del state[name]
        if (cls.__name__, name) not in _NOTED:
            _NOTED.add((cls.__name__, name))
            log.warning(
                "a %s event holds field %r, which this memvee does not know (a newer memvee "
                "wrote it): read without it",
                cls.__name__,
                name,
            )


def micros_of(moment: datetime) -> int:
    """Whole microseconds since 1970 of an aware time."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC time ``micros`` microseconds after 1970 (what :func:`micros_of` gives back)."""
    return _EPOCH + _MICROSECOND * micros  # integer arithmetic: half the time of timedelta()


_STORED_WHEN_TRUE: dict[type, tuple[str, ...]] = {
    UserLog.ProcessingFailed: ("whole", "refused"),
    UserLog.ReextractionChecked: ("refused", "busy", "not_found"),
}
"""Flags a newer memvee added to an event that are stored only when true: false, the
event reads back with the field's default, and an older memvee, which does not know the
field, reads it without a warning (it warns of each unknown field it meets)."""


def compact_state(cls: type, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with each UTC time of ``cls``'s time fields as bare microseconds, and
    without its flags stored only when true (:data:`_STORED_WHEN_TRUE`) that are false."""
    compact = dict(state)
    for name in time_fields(cls):
        value = compact.get(name)
        if type(value) is datetime and value.tzinfo is UTC:
            compact[name] = micros_of(value)
    for name in _STORED_WHEN_TRUE.get(cls, ()):
        if compact.get(name) is False:
            del compact[name]
    return compact


def restore_times(times: frozenset[str], state: dict[str, Any]) -> None:
    """Turn the bare microseconds of the ``times`` fields of a decoded state back into times
    (fields of one value share one time: a message is most often sent when it is added)."""
    micros = moment = None
    for name in times:
        value = state.get(name)
        if type(value) is int:
            if value != micros:
                micros, moment = value, from_micros(value)
            state[name] = moment


class CompactMapper(Mapper[UUID]):
    """eventsourcing's mapper, writing user-log events in memvee's compact form.

    What it adds around the transcoder (and any compressor or cipher, which still apply):
    the short topic, and each time field in UTC as bare microseconds.
    """

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """The stored form of ``domain_event``: short topic, compact times."""
        cls = type(domain_event)
        compact: Any = object.__new__(cls)
        object.__setattr__(compact, "__dict__", compact_state(cls, vars(domain_event)))
        stored = super().to_stored_event(compact)
        return StoredEvent(
            stored.originator_id, stored.originator_version, stored_topic(cls), stored.state
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """The domain event of any stored form, compact or older, without the fields a
        newer memvee added to its class (:func:`drop_unknown`)."""
        event = super().to_domain_event(stored_event)
        cls, state = type(event), vars(event)
        known = known_fields(cls)
        if known is not None and not known.issuperset(state):
            drop_unknown(cls, known, state)
        restore_times(time_fields(cls), state)
        return event


class UtcMicroseconds(Transcoding):
    """A time in UTC as an integer of microseconds since 1970; other times as ISO text."""

    type = datetime
    name = "utc_us"

    def encode(self, obj: datetime) -> int | str:
        """The microseconds since the epoch of a UTC time, or the ISO text of any other."""
        if obj.tzinfo is UTC:
            return micros_of(obj)
        return obj.isoformat()

    def decode(self, data: int | str) -> datetime:
        """The time :meth:`encode` wrote."""
        if type(data) is int:
            return from_micros(data)
        if not isinstance(data, str):
            raise ValueError(f"not a stored time: {data!r}")
        return datetime.fromisoformat(data)


_BY_NAME: dict[str, Transcoding] = {t.name: t for t in (DatetimeAsISO(), UtcMicroseconds())}


def register_time_transcodings(transcoder: JSONTranscoder) -> None:
    """Read both wrapped forms of a time; write the compact one (registered last)."""
    for transcoding in _BY_NAME.values():
        transcoder.register(transcoding)


def time_from_stored(value: object, bare: bool = False) -> datetime | None:
    """The time a stored value holds, or ``None`` if it is no time: a ``{"_type_",
    "_data_"}`` wrapper, or (``bare``: the value of a time field) bare microseconds."""
    if bare and type(value) is int:
        return from_micros(value)
    if isinstance(value, dict) and len(value) == 2 and "_data_" in value:
        transcoding = _BY_NAME.get(str(value.get("_type_")))
        if transcoding is not None:
            moment: datetime = transcoding.decode(value["_data_"])
            return moment
    return None
