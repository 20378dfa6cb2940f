"""The fast path between domain events and their stored JSON.

eventsourcing's mapper turns every event into JSON through a Python hook on each object,
and back. :class:`Encoder` and :class:`Decoder` give the very same bytes and events with
orjson's C code, and hand anything they cannot vouch for (a class version, a cipher or a
compressor, a value orjson would write its own way) to the mapper itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    JSONTranscoder,
    Mapper,
    StoredEvent,
    find_id_convertor,
    pass_through_convertor,
)
from eventsourcing.utils import resolve_topic

from events.errors import NewerEventError, UnreadableEventError, first_line
from events.transcoding import (
    CompactMapper,
    compact_state,
    drop_unknown,
    from_micros,
    known_fields,
    known_topic,
    restore_times,
    stored_topic,
    time_fields,
)

__all__ = ["Decoder", "Encoder", "Stored"]

Stored = tuple[Any, int, str, bytes]
"""An event as stored: its log, its version, its topic and its serialized state."""

_EventClass = tuple[type, Callable[[Any], Any] | None, frozenset[str], frozenset[str] | None]
"""A class read fast: the class, its id convertor (``None``: the id as it is), its time
fields and its fields (``None``: a class of no known fields, its state taken as it is)."""
_UNSEEN: Any = object()


class Decoder:
    """Stored events to domain events, equal to what the store's mapper makes, faster.

    The mapper parses the JSON with a Python hook called on every object. Here the C
    scanner parses it plainly and only the ``{"_type_", "_data_"}`` values (the events'
    datetimes, and those inside a snapshot's state) go through the registered
    transcodings, as the hook would; bare microseconds in a time field become times, as
    :class:`CompactMapper` makes them, and fields a newer memvee added are left out
    (:func:`~events.transcoding.drop_unknown`). When a state holds a marker of no registered
    transcoding, a class version, or text the marker count cannot tell from a marker, or
    the mapper has a cipher or a compressor, the event goes through the mapper itself.
    """

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self._mapper = mapper
        transcoder = mapper.transcoder
        self._enabled = (
            type(mapper) is CompactMapper
            and type(transcoder) is JSONTranscoder
            and mapper.cipher is None
            and mapper.compressor is None
        )
        self._names = transcoder.names if isinstance(transcoder, JSONTranscoder) else {}
        self._classes: dict[tuple[str, type], _EventClass | None] = {}

    def __call__(
        self, originator_id: UUID, version: int, topic: str, state: bytes
    ) -> DomainEventProtocol[Any]:
        """The domain event of one stored row; :class:`UnreadableEventError` if it cannot be read
        (damaged), :class:`NewerEventError` if its type is one this version does not know."""
        try:
            return self._decoded(originator_id, version, topic, state)
        except Exception as error:
            if not known_topic(topic):
                raise NewerEventError(originator_id, version, topic) from error
            raise UnreadableEventError(originator_id, version, first_line(error)) from error

    def timestamp(self, originator_id: UUID, version: int, topic: str, state: bytes) -> datetime:
        """When one stored event happened: read off its state where that is compact JSON
        (the time in bare microseconds), without making the event; else the event's."""
        if self._enabled:
            try:
                micros = orjson.loads(state).get("timestamp")
            except (orjson.JSONDecodeError, AttributeError):
                micros = None
            if type(micros) is int:
                return from_micros(micros)
        event: Any = self(originator_id, version, topic, state)
        return cast(datetime, event.timestamp)

    def _decoded(
        self, originator_id: UUID, version: int, topic: str, state: bytes
    ) -> DomainEventProtocol[Any]:
        found = self._classes.get((topic, type(originator_id)), _UNSEEN)
        if found is _UNSEEN:
            found = self._event_class(topic, type(originator_id))
        if found is not None:
            event_state = self._parse(state)
            if event_state is not None:
                cls, convert, times, known = found
                # Not a count of fields: a state may leave a defaulted one out and hold a
                # newer one.
                if known is not None and not known.issuperset(event_state):
                    drop_unknown(cls, known, event_state)
                restore_times(times, event_state)
                event_state["originator_id"] = (
                    originator_id if convert is None else convert(originator_id)
                )
                event_state["originator_version"] = version
                event: DomainEventProtocol[Any] = object.__new__(cls)
                object.__setattr__(event, "__dict__", event_state)
                return event
        stored = StoredEvent(originator_id, version, topic, state)
        return self._mapper.to_domain_event(stored)

    def _event_class(self, topic: str, id_type: type) -> _EventClass | None:
        """The class of ``topic`` and its id convertor, or ``None`` to leave it to the mapper."""
        found: _EventClass | None = None
        try:
            cls = resolve_topic(topic)
            if self._enabled and getattr(cls, "class_version", 1) == 1:
                convert = find_id_convertor(cls, id_type)
                kept = None if convert is pass_through_convertor else convert
                found = (cls, kept, time_fields(cls), known_fields(cls))
        except Exception:  # the mapper raises its own error for this event
            found = None
        self._classes[(topic, id_type)] = found
        return found

    def _parse(self, state: bytes) -> dict[str, Any] | None:
        """The event's state as the mapper's transcoder gives it, or ``None`` if unsure."""
        try:
            parsed = orjson.loads(state)
        except orjson.JSONDecodeError:
            return None
        if type(parsed) is not dict or "class_version" in parsed:
            return None
        markers = state.count(b'"_type_"')
        if markers:  # one "_type_" per marker: the walk ends at the last
            left = [markers]
            try:
                restored = self._restore(parsed, left)
            except _Unsure:
                return None
            if type(restored) is not dict or left[0]:
                return None
        return parsed

    def _restore(self, value: Any, left: list[int]) -> Any:
        """``value`` with its ``{"_type_", "_data_"}`` objects decoded, innermost first, as
        the transcoder's hook decodes each object it parses; ``left[0]`` counts the markers
        still to find, and the walk ends once none are (a log's state holds its few
        times before its big maps of messages)."""
        if type(value) is dict:
            for key, item in value.items():
                if not left[0]:
                    break
                if type(item) is dict or type(item) is list:
                    value[key] = self._restore(item, left)
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                transcoding = self._names.get(str(value["_type_"]))
                if transcoding is None:
                    raise _Unsure  # the mapper raises its own error for it
                left[0] -= 1
                return transcoding.decode(value["_data_"])
        elif type(value) is list:
            for index, item in enumerate(value):
                if not left[0]:
                    break
                if type(item) is dict or type(item) is list:
                    value[index] = self._restore(item, left)
        return value


class _Unsure(Exception):
    """A stored state the fast decoder leaves to the mapper."""


_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class Encoder:
    """Domain events to stored events, the JSON the store's mapper would store, faster.

    orjson writes the state: a user-log event's UTC time fields as bare microseconds
    (:class:`CompactMapper`), other times through the transcoder's registered transcoding
    (the same ``{"_type_", "_data_"}`` wrapper). orjson writes some values its own way
    where the transcoder would wrap or refuse them (a UUID, an enum, a date), so a state
    holding anything but JSON's own values and datetimes, a class version, or a mapper
    with a cipher or a compressor sends the event through the mapper itself.
    """

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self._mapper = mapper
        transcoder = mapper.transcoder
        enabled = (
            type(mapper) is CompactMapper
            and type(transcoder) is JSONTranscoder
            and mapper.cipher is None
            and mapper.compressor is None
        )
        types = transcoder.types if isinstance(transcoder, JSONTranscoder) else {}
        self._time = types.get(datetime) if enabled else None
        self._topics: dict[type, str | None] = {}

    def __call__(self, event: DomainEventProtocol[Any]) -> Stored:
        """The stored form of one domain event."""
        cls = type(event)
        topic = self._topics.get(cls, _UNSEEN)
        if topic is _UNSEEN:
            topic = self._topic(cls)
        if topic is not None:
            state = compact_state(cls, vars(event))
            originator_id = state.pop("originator_id")
            version = state.pop("originator_version")
            values = state.values()
            if _PLAIN.issuperset(map(type, values)) or all(_json_native(v) for v in values):
                try:
                    encoded = orjson.dumps(state, default=self._wrap, option=_PASSTHROUGH)
                except TypeError:
                    pass
                else:
                    return originator_id, version, topic, encoded
        s = self._mapper.to_stored_event(event)
        return s.originator_id, s.originator_version, s.topic, s.state

    def _topic(self, cls: type) -> str | None:
        topic = None
        if self._time is not None and getattr(cls, "class_version", 1) == 1:
            topic = stored_topic(cls)
        self._topics[cls] = topic
        return topic

    def _wrap(self, value: Any) -> dict[str, Any]:
        if type(value) is not datetime or self._time is None:
            raise TypeError(f"{type(value).__name__} is left to the mapper")
        return {"_type_": self._time.name, "_data_": self._time.encode(value)}


_PLAIN = frozenset({str, int, bool, type(None)})
"""The types of most values of a state: :func:`_json_native` for all, checked in one C loop."""


def _json_native(value: Any) -> bool:
    """Whether orjson and the transcoder write ``value`` alike (JSON's own values, and
    datetimes, which both hand to the transcoding)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None or kind is datetime:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list or kind is tuple:
        return all(_json_native(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_native(v) for k, v in value.items())
    return False
