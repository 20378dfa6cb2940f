"""memvee's typed errors; bad input errors are also ``ValueError``s."""

from events.errors import (
    ConflictError,
    DatabaseInUseError,
    ExtractionError,
    ExtractorOverloadedError,
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
    UnreadableEventError,
    UserForgottenError,
)

__all__ = [
    "ConflictError",
    "DatabaseInUseError",
    "ExtractionError",
    "ExtractorOverloadedError",
    "InvalidExtractionError",
    "InvalidInputError",
    "MemoryClosedError",
    "MemveeError",
    "NotFoundError",
    "ProcessingError",
    "ProcessingTimeoutError",
    "RejectedBatchError",
    "StorageError",
    "UnknownTaskError",
    "UnreadableEventError",
    "UserForgottenError",
]
