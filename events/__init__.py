"""The domain: each user's log aggregate, its events, and the store that keeps them.

Imports none of memvee's other packages and does no I/O beyond the event store.
"""

from events.checks import (
    ROLES,
    check_message,
    check_name,
    check_text,
    check_time,
    check_user_id,
)
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
from events.store import Durability, EventStore, LoadedLog, Recorded, StoredSnapshot, sqlite_url
from events.user_log import EVENT_CLASSES, UserLog, short_message_id, user_log_id

__all__ = [
    "EVENT_CLASSES",
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
    "LoadedLog",
    "MemoryClosedError",
    "MemveeError",
    "NotFoundError",
    "ProcessingError",
    "ProcessingTimeoutError",
    "Recorded",
    "RejectedBatchError",
    "StorageError",
    "StoredSnapshot",
    "TokenUsage",
    "UnknownTaskError",
    "UserLog",
    "check_message",
    "check_name",
    "check_text",
    "check_time",
    "check_user_id",
    "estimate_tokens",
    "short_message_id",
    "sqlite_url",
    "user_log_id",
]
