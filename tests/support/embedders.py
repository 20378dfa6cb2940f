"""A small deterministic embedder for tests: words map to concepts, concepts to axes.

Words in the same concept ("job", "works", "employer") land on the same axis, so a
question that shares no word with an entry can still be near it, which is what a real
embedding model does and what lexical ranking cannot.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

_CONCEPTS = {
    "job": {
        "job",
        "work",
        "works",
        "working",
        "employer",
        "employed",
        "career",
        "living",
        "doctor",
        "nurse",
    },
    "home": {"home", "live", "lives", "living", "reside", "resides", "moved", "city"},
    "pet": {"pet", "pets", "dog", "cat", "puppy", "kitten", "animal"},
    "food": {"food", "eat", "eats", "diet", "vegan", "vegetarian", "meal"},
    "music": {"music", "jazz", "songs", "band", "tunes"},
}
_WORD = re.compile(r"[a-z]+")


class ConceptEmbedder:
    """Bag of concepts in ``dimensions`` axes; words outside every concept hash to an axis."""

    name = "test-concepts"

    def __init__(self, dimensions: int = 64) -> None:
        self.dimensions = dimensions
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text."""
        self.calls += 1
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in _WORD.findall(text.casefold()):
            concept = next((c for c, words in _CONCEPTS.items() if word in words), word)
            axis = int(hashlib.sha256(concept.encode()).hexdigest(), 16) % self.dimensions
            vector[axis] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]
