"""memvee: long-term memory for LLM agents.

An agent appends each turn with :meth:`Memory.add_exchange`; memvee keeps every user's
conversation in an event log, extracts knowledge from it with Claude (or offline rules)
in the background, and hands the knowledge back, each entry traceable to its messages.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    __version__: str
    """The installed version of memvee (from the package metadata)."""

    from actors.erasure import ForgetReceipt
    from events.extraction import (
        BatchLimits,
        BatchMessage,
        ExtractedFact,
        ExtractionBatch,
        ExtractionResult,
        Extractor,
        FactAction,
        HarmlessRequests,
        KnownEntry,
        TokenUsage,
    )
    from memvee._config import MemoryConfig
    from memvee._memory import Memory
    from memvee._retrieval import RetrievalResult, RetrievedEntry, RetrievedMessage
    from memvee._task import ProcessStatus, ProcessTask
    from memvee.embedders import Embedder
    from memvee.errors import (
        ConflictError,
        DatabaseInUseError,
        EveryRequestRefusedError,
        ExtractionError,
        ExtractionPausedError,
        ExtractorAccessRefusedError,
        ExtractorNotFoundError,
        ExtractorOverloadedError,
        ExtractorRateLimitedError,
        InvalidExtractionError,
        InvalidInputError,
        MemoryClosedError,
        MemveeError,
        NotFoundError,
        OlderLayoutError,
        OversizedMessageError,
        ProbeFailedError,
        ProcessingError,
        ProcessingTimeoutError,
        RejectedBatchError,
        StorageError,
        TransientStorageError,
        UnknownTaskError,
        UserForgottenError,
    )
    from projections.models import (
        BufferedMessage,
        KnowledgeEntry,
        Message,
        QuarantinedMessage,
        UserSummary,
    )

_HOMES = {
    "BatchLimits": "events.extraction",
    "BatchMessage": "events.extraction",
    "BufferedMessage": "projections.models",
    "ConflictError": "memvee.errors",
    "DatabaseInUseError": "memvee.errors",
    "Embedder": "memvee.embedders",
    "ExtractedFact": "events.extraction",
    "ExtractionBatch": "events.extraction",
    "EveryRequestRefusedError": "memvee.errors",
    "ExtractionError": "memvee.errors",
    "ExtractionPausedError": "memvee.errors",
    "ExtractionResult": "events.extraction",
    "Extractor": "events.extraction",
    "ExtractorAccessRefusedError": "memvee.errors",
    "ExtractorNotFoundError": "memvee.errors",
    "ExtractorOverloadedError": "memvee.errors",
    "ExtractorRateLimitedError": "memvee.errors",
    "FactAction": "events.extraction",
    "HarmlessRequests": "events.extraction",
    "ForgetReceipt": "actors.erasure",
    "InvalidExtractionError": "memvee.errors",
    "InvalidInputError": "memvee.errors",
    "KnowledgeEntry": "projections.models",
    "KnownEntry": "events.extraction",
    "Memory": "memvee._memory",
    "MemoryClosedError": "memvee.errors",
    "MemoryConfig": "memvee._config",
    "MemveeError": "memvee.errors",
    "Message": "projections.models",
    "NotFoundError": "memvee.errors",
    "OversizedMessageError": "memvee.errors",
    "OlderLayoutError": "memvee.errors",
    "ProbeFailedError": "memvee.errors",
    "ProcessStatus": "memvee._task",
    "ProcessTask": "memvee._task",
    "ProcessingError": "memvee.errors",
    "ProcessingTimeoutError": "memvee.errors",
    "QuarantinedMessage": "projections.models",
    "RejectedBatchError": "memvee.errors",
    "RetrievalResult": "memvee._retrieval",
    "RetrievedEntry": "memvee._retrieval",
    "RetrievedMessage": "memvee._retrieval",
    "StorageError": "memvee.errors",
    "TokenUsage": "events.extraction",
    "TransientStorageError": "memvee.errors",
    "UnknownTaskError": "memvee.errors",
    "UserForgottenError": "memvee.errors",
    "UserSummary": "projections.models",
}
"""Where each public name lives: imported on first use (PEP 562), so that ``import
memvee`` costs little until a name is used, and the ``memvee`` command installs its
Ctrl-C handling before the engine loads."""


def __getattr__(name: str) -> object:
    """A public name (or ``__version__``), loaded from where it lives on first use."""
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'memvee' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def _version() -> str:
    """The installed version of memvee, from the package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memvee")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    """The module's names, the ones not loaded yet included."""
    return sorted({*globals(), *_HOMES})


__all__ = [
    "BatchLimits",
    "BatchMessage",
    "BufferedMessage",
    "ConflictError",
    "DatabaseInUseError",
    "Embedder",
    "EveryRequestRefusedError",
    "ExtractedFact",
    "ExtractionBatch",
    "ExtractionError",
    "ExtractionPausedError",
    "ExtractionResult",
    "Extractor",
    "ExtractorAccessRefusedError",
    "ExtractorNotFoundError",
    "ExtractorOverloadedError",
    "ExtractorRateLimitedError",
    "FactAction",
    "ForgetReceipt",
    "HarmlessRequests",
    "InvalidExtractionError",
    "InvalidInputError",
    "KnowledgeEntry",
    "KnownEntry",
    "Memory",
    "MemoryClosedError",
    "MemoryConfig",
    "MemveeError",
    "Message",
    "NotFoundError",
    "OlderLayoutError",
    "OversizedMessageError",
    "ProbeFailedError",
    "ProcessStatus",
    "ProcessTask",
    "ProcessingError",
    "ProcessingTimeoutError",
    "QuarantinedMessage",
    "RejectedBatchError",
    "RetrievalResult",
    "RetrievedEntry",
    "RetrievedMessage",
    "StorageError",
    "TokenUsage",
    "TransientStorageError",
    "UnknownTaskError",
    "UserForgottenError",
    "UserSummary",
]
