"""The one place that asks an extractor whether it can authenticate its calls."""

from __future__ import annotations

import asyncio
from typing import Any


async def check_credentials(extractor: object) -> None:
    """Run ``extractor``'s optional ``check_credentials()`` (the Claude extractor's raises
    :class:`MissingCredentialsError` when no call could authenticate) in a thread, as it
    may read a profile from disk: a Memory or a re-extraction refuses before it writes."""
    check: Any = getattr(extractor, "check_credentials", None)
    if check is not None:
        await asyncio.to_thread(check)
