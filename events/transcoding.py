"""How times are written inside stored events: compact, and still read the old way.

eventsourcing's default transcoding writes a time as its ISO 8601 text (69 bytes with its
wrapper). A time in UTC, which every event's own timestamp is, is written here as whole
microseconds since the epoch instead (45 bytes); any other offset keeps its ISO text, so
it reads back exactly as it was given. Events stored with the default
transcoding still read back: both names stay registered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Transcoding

__all__ = ["UtcMicroseconds", "register_time_transcodings", "time_from_stored"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class UtcMicroseconds(Transcoding):
    """A time in UTC as an integer of microseconds since 1970; other times as ISO text."""

    type = datetime
    name = "utc_us"

    def encode(self, obj: datetime) -> int | str:
        """The microseconds since the epoch of a UTC time, or the ISO text of any other."""
        if obj.tzinfo is UTC:
            return (obj - _EPOCH) // _MICROSECOND
        return obj.isoformat()

    def decode(self, data: int | str) -> datetime:
        """The time :meth:`encode` wrote."""
        if type(data) is int:
            return _EPOCH + timedelta(microseconds=data)
        if not isinstance(data, str):
            raise ValueError(f"not a stored time: {data!r}")
        return datetime.fromisoformat(data)


_BY_NAME: dict[str, Transcoding] = {t.name: t for t in (DatetimeAsISO(), UtcMicroseconds())}


def register_time_transcodings(transcoder: JSONTranscoder) -> None:
    """Read both stored forms of a time; write the compact one (registered last)."""
    for transcoding in _BY_NAME.values():
        transcoder.register(transcoding)


def time_from_stored(value: object) -> datetime | None:
    """The time a stored ``{"_type_", "_data_"}`` value holds, or ``None`` if it is no time."""
    if isinstance(value, dict) and len(value) == 2 and "_data_" in value:
        transcoding = _BY_NAME.get(value.get("_type_"))  # type: ignore[arg-type]
        if transcoding is not None:
            moment: datetime = transcoding.decode(value["_data_"])
            return moment
    return None
