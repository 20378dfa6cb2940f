"""The Embedder protocol: turns texts into vectors for semantic retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length vectors of ``dimensions`` floats; called off the event loop.

    Must be deterministic (the vectors are a projection that a rebuild recomputes). A
    text the model or its API refuses itself (one over its length limit) should raise
    :class:`~memvee.errors.RejectedTextError`: it is left to lexical ranking at once,
    where any other error (a timeout, an API that is busy) is tried again later.
    """

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...
