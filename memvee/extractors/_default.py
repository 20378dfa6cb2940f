"""Pick the best extractor the environment allows: Claude with a key, rules without."""

from __future__ import annotations

import logging
import os
import threading

from events.extraction import Extractor
from memvee.extractors._model_choice import MODEL_ENV_VAR

__all__ = ["API_KEY_ENV_VAR", "default_extractor"]

API_KEY_ENV_VAR = "ANTHROPIC_API_KEY"
"""The environment variable whose presence switches extraction to Claude."""

_log = logging.getLogger("memvee.extractors")

_offline_warning_lock = threading.Lock()
_offline_warned = False


def default_extractor(*, model: str | None = None, timeout: float = 60.0) -> Extractor:
    """Claude when ``ANTHROPIC_API_KEY`` is set and non-empty, else the offline rules.

    Running offline is logged once per process as a warning, so that a deployment that
    lost its key does not silently settle for the much weaker rule-based extraction.
    """
    extractor = quiet_default_extractor(model=model, timeout=timeout)
    warn_if_offline(extractor)
    return extractor


def quiet_default_extractor(*, model: str | None, timeout: float) -> Extractor:
    """:func:`default_extractor` without its warning: a Memory warns once it has opened
    (:func:`warn_if_offline`), so a database it cannot open is the one thing it says."""
    if os.environ.get(API_KEY_ENV_VAR, "").strip():
        from memvee.extractors._claude import ClaudeExtractor  # the SDK: only when used

        return ClaudeExtractor(model=model, timeout=timeout)
    from memvee.extractors._offline import OfflineExtractor  # its rules: only when used

    return OfflineExtractor()


def warn_if_offline(extractor: Extractor) -> None:
    """Warn, once per process, that ``extractor`` (one the environment chose) runs offline."""
    global _offline_warned
    if extractor.name != "offline":  # OfflineExtractor.name: no need to load the rules to tell
        return
    from memvee.extractors._offline import OfflineExtractor

    if not isinstance(extractor, OfflineExtractor):
        return
    with _offline_warning_lock:
        if _offline_warned:
            return
        _offline_warned = True
    _log.warning(
        "%s is not set: memvee extraction is running offline with simple rules, which "
        "find far fewer facts. Set %s (and optionally %s to choose the model) to extract "
        "with Claude.",
        API_KEY_ENV_VAR,
        API_KEY_ENV_VAR,
        MODEL_ENV_VAR,
    )
