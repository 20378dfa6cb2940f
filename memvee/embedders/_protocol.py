"""The Embedder protocol: turns texts into vectors for semantic retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length vectors of ``dimensions`` floats; called off the event loop.

    Must be deterministic (the vectors are a projection that a rebuild recomputes).
    """

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...
