"""Extractors: turn a batch of conversation messages into knowledge entries.

:class:`ClaudeExtractor` asks Claude; :class:`OfflineExtractor` applies deterministic rules
with no network; :func:`default_extractor` picks one from the environment.
Both are imported on first use: the anthropic SDK is large, and a process that extracts
offline need not load it; the offline rules take a tenth of a second to compile, which
every command and server start paid, though one that extracts with Claude never runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memvee.extractors._default import default_extractor
from memvee.extractors._model_choice import DEFAULT_MODEL, MODEL_ENV_VAR

if TYPE_CHECKING:
    from memvee.extractors._claude import ClaudeExtractor, ProbeResult
    from memvee.extractors._offline import OfflineExtractor

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV_VAR",
    "ClaudeExtractor",
    "OfflineExtractor",
    "ProbeResult",
    "default_extractor",
]


def __getattr__(name: str) -> Any:
    """:class:`ClaudeExtractor` and :class:`ProbeResult` (with the anthropic SDK), and
    :class:`OfflineExtractor`, imported on first use."""
    if name in ("ClaudeExtractor", "ProbeResult"):
        from memvee.extractors import _claude

        return getattr(_claude, name)
    if name == "OfflineExtractor":
        from memvee.extractors._offline import OfflineExtractor

        return OfflineExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
