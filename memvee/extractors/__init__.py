"""Extractors: turn a batch of conversation messages into knowledge entries.

:class:`ClaudeExtractor` asks Claude; :class:`OfflineExtractor` applies deterministic rules
with no network; :func:`default_extractor` picks one from the environment.
"""

from memvee.extractors._claude import DEFAULT_MODEL, MODEL_ENV_VAR, ClaudeExtractor
from memvee.extractors._default import default_extractor
from memvee.extractors._offline import OfflineExtractor

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV_VAR",
    "ClaudeExtractor",
    "OfflineExtractor",
    "default_extractor",
]
