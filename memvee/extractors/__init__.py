"""Extractors: turn a batch of conversation messages into knowledge entries.

:class:`ClaudeExtractor` asks Claude; :class:`OfflineExtractor` applies deterministic rules
with no network; :func:`default_extractor` picks one from the environment.
:class:`ClaudeExtractor` is imported on first use: the anthropic SDK is large, and a
process that extracts offline need not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memvee.extractors._default import default_extractor
from memvee.extractors._model_choice import DEFAULT_MODEL, MODEL_ENV_VAR
from memvee.extractors._offline import OfflineExtractor

if TYPE_CHECKING:
    from memvee.extractors._claude import ClaudeExtractor, ProbeResult

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV_VAR",
    "ClaudeExtractor",
    "OfflineExtractor",
    "ProbeResult",
    "default_extractor",
]


def __getattr__(name: str) -> Any:
    """:class:`ClaudeExtractor` and :class:`ProbeResult`, imported on first use (with the
    anthropic SDK)."""
    if name in ("ClaudeExtractor", "ProbeResult"):
        from memvee.extractors import _claude

        return getattr(_claude, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
