"""Guarantee 4, read from the log itself: every message is covered by exactly one
KnowledgeExtracted, or is still buffered, or is quarantined with its error."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from events import EventStore, UserLog
from memvee import Memory


@dataclass
class Coverage:
    """Where each message of one user's log stands, replayed from the events."""

    messages: list[str] = field(default_factory=list)
    covered: Counter[str] = field(default_factory=Counter)
    quarantined: dict[str, str] = field(default_factory=dict)
    requests_sent: int = 0

    @property
    def buffered(self) -> list[str]:
        """Messages neither covered nor quarantined."""
        return [m for m in self.messages if m not in self.covered and m not in self.quarantined]

    def check(self) -> None:
        """Raise AssertionError unless every message is accounted for exactly once."""
        twice = [m for m, n in self.covered.items() if n > 1]
        assert not twice, f"covered twice: {twice}"
        both = [m for m in self.quarantined if m in self.covered]
        assert not both, f"covered and quarantined: {both}"
        unknown = [m for m in list(self.covered) + list(self.quarantined) if m not in self.messages]
        assert not unknown, f"not messages of the log: {unknown}"
        assert all(self.quarantined.values()), "a quarantined message without its error"


def coverage(store: EventStore, user_id: str) -> Coverage:
    """Replay ``user_id``'s log into a :class:`Coverage`."""
    found = Coverage()
    for event in store.events_of(user_id):
        if isinstance(event, UserLog.MessageAdded):
            found.messages.append(event.message_id)
        elif isinstance(event, UserLog.KnowledgeExtracted):
            found.covered.update(event.message_ids)
        elif isinstance(event, UserLog.MessagesQuarantined):
            for message_id in event.message_ids:
                found.quarantined[message_id] = event.error
        elif isinstance(event, UserLog.MessagesRequeued):
            for message_id in event.message_ids:
                found.quarantined.pop(message_id, None)
        elif isinstance(event, UserLog.MessagesReturned):
            for message_id in event.message_ids:
                found.covered.pop(message_id, None)  # its knowledge was replaced
    return found


def checked_coverage(memory: Memory, user_id: str) -> Coverage:
    """The coverage of a running Memory's user, checked against guarantee 4 first."""
    engine = memory._engine
    assert engine is not None
    found = coverage(engine.store, user_id)
    found.check()
    return found
