"""The domain: each user's log aggregate, its events, and the store that keeps them.

Imports none of memvee's other packages and does no I/O beyond the event store.
"""

from events.errors import (
    ConflictError,
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
from events.extraction import (
    FACT_ACTIONS,
    BatchLimits,
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    Extractor,
    FactAction,
    KnownEntry,
    TokenUsage,
    estimate_tokens,
)
from events.store import Durability, EventStore, Recorded, sqlite_url
from events.user_log import (
    ROLES,
    UserLog,
    check_message,
    check_name,
    check_user_id,
    user_log_id,
)

__all__ = [
    "FACT_ACTIONS",
    "ROLES",
    "BatchLimits",
    "BatchMessage",
    "ConflictError",
    "Durability",
    "EventStore",
    "ExtractedFact",
    "ExtractionBatch",
    "ExtractionError",
    "ExtractionResult",
    "Extractor",
    "FactAction",
    "InvalidExtractionError",
    "InvalidInputError",
    "KnownEntry",
    "MemoryClosedError",
    "MemveeError",
    "NotFoundError",
    "ProcessingError",
    "ProcessingTimeoutError",
    "Recorded",
    "RejectedBatchError",
    "StorageError",
    "TokenUsage",
    "UnknownTaskError",
    "UserLog",
    "check_message",
    "check_name",
    "check_user_id",
    "estimate_tokens",
    "sqlite_url",
    "user_log_id",
]
