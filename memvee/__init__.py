"""memvee: long-term memory for LLM agents.

An agent appends each turn with :meth:`Memory.add_exchange`; memvee keeps every user's
conversation in an event log, extracts knowledge from it with Claude (or offline rules)
in the background, and hands the knowledge back, each entry traceable to its messages.
"""

from importlib.metadata import PackageNotFoundError, version

from actors.erasure import ForgetReceipt
from events.extraction import (
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    Extractor,
    FactAction,
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
    ExtractionError,
    InvalidExtractionError,
    InvalidInputError,
    MemoryClosedError,
    MemveeError,
    NotFoundError,
    ProcessingError,
    ProcessingTimeoutError,
    RejectedBatchError,
    StorageError,
    UnknownTaskError,
)
from projections.models import (
    BufferedMessage,
    KnowledgeEntry,
    Message,
    QuarantinedMessage,
    UserSummary,
)

try:
    __version__: str = version("memvee")
    """The installed version of memvee (from the package metadata)."""
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BatchLimits",
    "BatchMessage",
    "BufferedMessage",
    "ConflictError",
    "DatabaseInUseError",
    "Embedder",
    "ExtractedFact",
    "ExtractionBatch",
    "ExtractionError",
    "ExtractionResult",
    "Extractor",
    "FactAction",
    "ForgetReceipt",
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
    "UnknownTaskError",
    "UserSummary",
]
