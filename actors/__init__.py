"""pykka actors: one per user, the directory that spawns and passivates them, the
extraction workers with the breaker and backoff that pace them, the group committer and
the asyncio bridge."""

from actors._bridge import BridgedFuture, inbox_of
from actors._context import EngineSettings, TaskObserver
from actors._pacing import CircuitBreaker
from actors._traces import TraceScrubber
from actors._workers import (
    THE_APIS_STATE,
    ApiDown,
    EveryBatchRefused,
    ExtractorNotAsync,
    harmless_request,
    tells_down,
)
from actors.directory import ActorDirectory
from actors.engine import Engine, EngineOptions
from actors.user_actor import FORGOTTEN_REASON, INTERRUPTED_BY_CRASH, UserActor

__all__ = [
    "FORGOTTEN_REASON",
    "INTERRUPTED_BY_CRASH",
    "THE_APIS_STATE",
    "ActorDirectory",
    "ApiDown",
    "BridgedFuture",
    "CircuitBreaker",
    "Engine",
    "EngineOptions",
    "EngineSettings",
    "EveryBatchRefused",
    "ExtractorNotAsync",
    "TaskObserver",
    "TraceScrubber",
    "UserActor",
    "harmless_request",
    "inbox_of",
    "tells_down",
]
