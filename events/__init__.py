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
    ProcessingError,
    ProcessingTimeoutError,
    StorageError,
    UnknownTaskError,
)
from events.extraction import (
    FACT_ACTIONS,
    BatchMessage,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    Extractor,
    FactAction,
    KnownEntry,
)
from events.store import Durability, EventStore, Recorded, sqlite_url
from events.user_log import ROLES, UserLog, check_message, check_user_id, user_log_id

__all__ = [
    "FACT_ACTIONS",
    "ROLES",
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
    "ProcessingError",
    "ProcessingTimeoutError",
    "Recorded",
    "StorageError",
    "UnknownTaskError",
    "UserLog",
    "check_message",
    "check_user_id",
    "sqlite_url",
    "user_log_id",
]
