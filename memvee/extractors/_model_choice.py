"""Which Claude model extraction uses: a default, and the variable that overrides it.

Kept apart from :mod:`memvee.extractors._claude` so that naming them does not import the
anthropic SDK (about 150,000 objects for the collector to walk, and over a second).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MODEL", "MODEL_ENV_VAR"]

DEFAULT_MODEL: Final = "claude-sonnet-5-5"
"""The model used when neither the constructor nor ``MEMVEE_MODEL`` names one."""

MODEL_ENV_VAR: Final = "MEMVEE_MODEL"
"""The environment variable that overrides :data:`DEFAULT_MODEL`."""
