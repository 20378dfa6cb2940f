"""The receipt :meth:`memvee.Memory.forget` hands back: proof of what was erased."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["ForgetReceipt"]


@dataclass(frozen=True, slots=True)
class ForgetReceipt:
    """Counts of what one ``forget`` erased: log events, snapshots and rows per table."""

    user_id: str
    events: int
    snapshots: int
    rows: dict[str, int] = field(default_factory=dict)
    erased_at: datetime | None = None

    @property
    def total(self) -> int:
        """Everything erased: events, snapshots and projection rows together."""
        return self.events + self.snapshots + sum(self.rows.values())
