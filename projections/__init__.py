"""Read models folded from the user logs, and the scripts that rebuild them.

Every table here is a projection: it can be dropped and rebuilt from the log
(:func:`rebuild`), and :func:`verify` proves the rebuilt rows equal the live ones.
"""

from projections.models import BufferedMessage, KnowledgeEntry, Message, TaskRecord, UserSummary
from projections.projector import Projector
from projections.reader import ProjectionReader
from projections.rebuild import Difference, catch_up, dump, rebuild, rebuild_user, verify
from projections.replay import UserState, state_at
from projections.tables import LIVE_PREFIX, ProjectionTables

__all__ = [
    "LIVE_PREFIX",
    "BufferedMessage",
    "Difference",
    "KnowledgeEntry",
    "Message",
    "ProjectionReader",
    "ProjectionTables",
    "Projector",
    "TaskRecord",
    "UserState",
    "UserSummary",
    "catch_up",
    "dump",
    "rebuild",
    "rebuild_user",
    "state_at",
    "verify",
]
