"""Whether a user was ever written here: what every route and tool that acts on a user
without creating one checks first, so that an unknown user is a 404 (``not_found``)."""

from __future__ import annotations

import asyncio

from memvee._memory import Memory
from memvee.audit import Audit
from projections import UserSummary

__all__ = ["known_summary", "require_known"]


async def known_summary(memory: Memory, audit: Audit, user_id: str) -> UserSummary | None:
    """The user's counters; ``None`` for a user whose log is stored but whose rows a
    rebuild (running, or stopped before its end) has not refolded yet; a
    :class:`~memvee.NotFoundError` for a user with no log.

    The projections answer at once; only when they hold no row of the user is the log
    itself asked, as ``memvee forget`` asks it: a user is never unknown for a rebuild."""
    summary = await memory.user(user_id)
    if summary is None:
        await asyncio.to_thread(audit.logged_version, user_id)
    return summary


async def require_known(memory: Memory, audit: Audit, user_id: str) -> None:
    """Raise :class:`~memvee.NotFoundError` unless the user has a log here (see
    :func:`known_summary`)."""
    await known_summary(memory, audit, user_id)
