"""Two more embedders, for users who can reach the network: fastembed and Voyage AI.

:class:`FastEmbedEmbedder` runs any model of the ``fastembed`` library (ONNX, on the CPU);
fastembed downloads its model on first use, so it suits machines with network access
(``pip install 'memvee[fastembed]'``). :class:`VoyageEmbedder` calls the Voyage AI API
(``pip install 'memvee[voyage]'``, ``VOYAGE_API_KEY`` set). Both return unit vectors, as
the :class:`~memvee.embedders.Embedder` protocol asks, and fail with a
:class:`~events.errors.MemveeError` that never shows an API key (a
:class:`~events.errors.RejectedTextError` when the API refuses the input itself).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from events.errors import INPUT_REFUSED_STATUSES, InvalidInputError, MemveeError, RejectedTextError
from memvee._secrets import redact

__all__ = ["FastEmbedEmbedder", "VoyageEmbedder"]


def _unit(vectors: Iterable[Any]) -> list[list[float]]:
    """``vectors`` scaled to unit length; a vector holding a NaN or an infinity is an
    error, as it ranks nothing and, stored, would keep its text unfindable."""
    out: list[list[float]] = []
    for vector in vectors:
        array = np.asarray(vector, dtype=np.float32)
        if not np.isfinite(array).all():
            raise MemveeError("the embedding model gave a vector that is not finite")
        norm = float(np.linalg.norm(array))
        out.append((array / norm if norm > 0 else array).tolist())
    return out


def _optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MemveeError(
            f"this embedder needs the package {module!r}; pip install 'memvee[{extra}]'"
        ) from exc


FASTEMBED_DEFAULT_MODEL = "BAAI/bge-small-en-v1.5"
FASTEMBED_DEFAULT_DIMENSIONS = 384
"""The length of the vectors of :data:`FASTEMBED_DEFAULT_MODEL`."""


class FastEmbedEmbedder:
    """An Embedder over ``fastembed.TextEmbedding`` (default: BAAI/bge-small-en-v1.5).

    The model is built on the first text to embed (that is when fastembed downloads it);
    ``model`` may be given instead, any object with fastembed's ``embed(texts)``.
    ``dimensions``, the length of the model's vectors, is the model's own unless given.
    A given ``model`` never needs fastembed: its ``embedding_size``, else 384 (a Memory
    reads ``dimensions`` when it is built, before any vector could tell the length, so
    give it for a model of another length). Without one, what fastembed lists for
    ``model_name``, read (without downloading anything) when ``dimensions`` is first
    read, so that building the embedder imports nothing; a name fastembed does not list
    needs it given (:class:`~memvee.errors.InvalidInputError` otherwise). Vectors of
    another length fail ``embed``.
    """

    def __init__(
        self,
        model_name: str = FASTEMBED_DEFAULT_MODEL,
        dimensions: int | None = None,
        *,
        model: Any = None,
    ) -> None:
        self.name = f"fastembed:{model_name}"
        self.model_name = model_name
        if dimensions is None and model is not None:
            dimensions = _given_model_dimensions(model)
        self._dimensions = dimensions
        self._model = model
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        """The length of the model's vectors (see the class)."""
        if self._dimensions is None:
            self._dimensions = _listed_dimensions(self.model_name)
        return self._dimensions

    @dimensions.setter
    def dimensions(self, dimensions: int) -> None:
        self._dimensions = dimensions

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        with self._lock:
            if self._model is None:
                fastembed = _optional("fastembed", "fastembed")
                self._model = fastembed.TextEmbedding(model_name=self.model_name)
            vectors = list(self._model.embed(list(texts)))
        if len(vectors) != len(texts):
            raise MemveeError(f"fastembed returned {len(vectors)} vectors for {len(texts)} texts")
        return _of_length(
            _unit(vectors),
            self.dimensions,
            f"fastembed's {self.model_name!r}",
            "give FastEmbedEmbedder dimensions={wrong}",
        )


def _given_model_dimensions(model: Any) -> int:
    """The ``embedding_size`` of ``model`` when it has one (fastembed's own models do),
    else the length of the default model's vectors, as before lengths were looked up."""
    size = getattr(model, "embedding_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    return FASTEMBED_DEFAULT_DIMENSIONS


def _listed_dimensions(model_name: str) -> int:
    """The length of the vectors fastembed lists for ``model_name``."""
    listed = _optional("fastembed", "fastembed").TextEmbedding.list_supported_models()
    wanted = model_name.lower()
    for description in listed:
        if str(description.get("model", "")).lower() == wanted:
            return int(description["dim"])
    raise InvalidInputError(
        f"fastembed lists no model {model_name!r}, so the length of its vectors is not "
        "known: give FastEmbedEmbedder dimensions="
    )


def _of_length(
    vectors: list[list[float]], dimensions: int, who: str, remedy: str
) -> list[list[float]]:
    """``vectors``, each ``dimensions`` long; else an error naming the length ``who``
    gives and the ``remedy`` (``{wrong}`` in it: that length)."""
    wrong = next((len(v) for v in vectors if len(v) != dimensions), None)
    if wrong is not None:
        raise MemveeError(
            f"{who} gives vectors of {wrong} dimensions, not {dimensions}: "
            + remedy.format(wrong=wrong)
        )
    return vectors


def _shown_without_key(error: Exception, client: Any) -> str:
    """``error``'s type and text with the client's API key taken out in every form it may
    show in (a key read from a file keeps its newline, which the error shows escaped)."""
    keys = [str(getattr(client, "api_key", "") or ""), os.environ.get("VOYAGE_API_KEY", "")]
    return redact(f"{type(error).__name__}: {error}", [key for key in keys if key])


VOYAGE_DEFAULT_DIMENSIONS = 1024
"""The length of the vectors Voyage AI's current models give unless asked for another."""


class VoyageEmbedder:
    """An Embedder over the Voyage AI embeddings API (default model ``voyage-3.5-lite``).

    The client is the ``voyageai`` SDK's, built from ``VOYAGE_API_KEY`` unless ``client``
    is given; texts go as documents in batches of ``batch_size`` (a positive int, or an
    :class:`~memvee.errors.InvalidInputError` when made). ``dimensions`` other than
    the model's default (1024) are asked of the API (``output_dimension``) and named in
    :attr:`name`, so vectors of two lengths are never taken for one embedder's.
    """

    def __init__(
        self,
        model: str = "voyage-3.5-lite",
        dimensions: int = VOYAGE_DEFAULT_DIMENSIONS,
        *,
        client: Any = None,
        batch_size: int = 128,
        max_retries: int = 2,
        timeout: float = 30.0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.name = f"voyage:{model}"
        if dimensions != VOYAGE_DEFAULT_DIMENSIONS:
            self.name += f"/{dimensions}"
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self._client = client
        self._settings = {"max_retries": max_retries, "timeout": timeout}

    @staticmethod
    def configured() -> bool:
        """Whether ``VOYAGE_API_KEY`` is set (so the default client can be built)."""
        return bool(os.environ.get("VOYAGE_API_KEY", "").strip())

    def _get_client(self) -> Any:
        if self._client is None:
            voyageai = _optional("voyageai", "voyage")
            if not self.configured():
                raise MemveeError("VoyageEmbedder needs VOYAGE_API_KEY (or a client)")
            self._client = voyageai.Client(**self._settings)
        return self._client

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        client = self._get_client()
        shape = {}
        if self.dimensions != VOYAGE_DEFAULT_DIMENSIONS:
            shape["output_dimension"] = self.dimensions
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            try:
                result = client.embed(chunk, model=self.model, input_type="document", **shape)
            except Exception as error:
                rejected = getattr(error, "http_status", None) in INPUT_REFUSED_STATUSES
                raise (RejectedTextError if rejected else MemveeError)(
                    f"Voyage AI embedding failed: {_shown_without_key(error, client)}"
                ) from None
            out.extend(_unit(result.embeddings))
        if len(out) != len(texts):
            raise MemveeError(f"Voyage AI returned {len(out)} vectors for {len(texts)} texts")
        return _of_length(
            out,
            self.dimensions,
            "Voyage AI",
            f"give VoyageEmbedder the dimensions {self.model!r} gives",
        )
