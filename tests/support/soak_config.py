"""The configuration the soaks run a Memory under (tests/memvee/test_soak.py,
tests/memvee/test_claude_soak.py)."""

from __future__ import annotations

from typing import Any

from memvee import MemoryConfig


def soak_config(db_url: str, **overrides: Any) -> MemoryConfig:
    """Small limits, so every path runs often: batches split, actors passivate and come
    back, logs snapshot and checkpoint, failed batches retry at once and the breaker stays
    closed; ``overrides`` replace any of them."""
    settings: dict[str, Any] = {
        "auto_process": True,
        "batch_threshold": 4,
        "max_batch_messages": 6,
        "max_attempts": 2,
        "retry_delay": 0.01,
        "retry_delay_max": 0.05,
        "breaker_failures": 1000,
        "idle_timeout": 0.05,
        "max_live_actors": 3,
        "snapshot_interval": 7,
        "checkpoint_interval": 50,
    }
    return MemoryConfig(db_url=db_url, **{**settings, **overrides})
