"""Which embedder a Memory or an Audit search ranks with."""

from __future__ import annotations

import logging
from typing import Literal

from memvee.embedders._onnx import LocalDefaultEmbedder
from memvee.embedders._protocol import Embedder
from projections.vectors import ContainedEmbedder

__all__ = ["chosen_embedder", "contained_embedder"]

log = logging.getLogger("memvee")


def chosen_embedder(embedder: Embedder | Literal[False] | None) -> Embedder | None:
    """The embedder retrieval uses: the one given, none for ``False``, else the local
    default when its packages are installed (a warning says so when they are not)."""
    if embedder is False:
        return None
    if embedder is not None:
        return embedder
    if LocalDefaultEmbedder.available():
        return LocalDefaultEmbedder()
    log.warning("the default embedder's packages are missing: retrieval is lexical only")
    return None


def contained_embedder(embedder: Embedder | Literal[False] | None) -> ContainedEmbedder | None:
    """The :func:`chosen_embedder`, contained where it enters memvee (see
    :class:`ContainedEmbedder`): a search, the background fill and the entries shown
    beside a batch all call it so. What a Memory and an Audit rank with."""
    chosen = chosen_embedder(embedder)
    return None if chosen is None else ContainedEmbedder(chosen)
