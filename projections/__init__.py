"""Read models folded from the user logs, and the scripts that rebuild them.

Every table here is a projection: it can be dropped and rebuilt from the log
(:func:`rebuild`), and :func:`verify` proves the rebuilt rows equal the live ones.
"""

from projections.checkpoints import Checkpoint, Checkpoints
from projections.models import (
    BufferedMessage,
    KnowledgeEntry,
    Message,
    QuarantinedMessage,
    TaskRecord,
    UserSummary,
)
from projections.projector import SCHEMA_VERSION, FoldState, Projector
from projections.ranking import LexicalRanker
from projections.reader import ProjectionReader
from projections.rebuild import (
    Difference,
    alone_while_upgrading,
    bring_up_to_date,
    catch_up,
    dump,
    forget_in_scratch,
    index_messages,
    rebuild,
    rebuild_user,
    refold_now_readable,
    refuse_unfolded,
    refuse_while_rebuilding,
    verify,
    warn_unfolded,
)
from projections.replay import UserState, replay_checkpoints, state_at, take_checkpoint
from projections.search import SearchIndex
from projections.tables import LIVE_PREFIX, ProjectionTables
from projections.terms import STOP_WORDS, search_terms

__all__ = [
    "LIVE_PREFIX",
    "SCHEMA_VERSION",
    "STOP_WORDS",
    "BufferedMessage",
    "Checkpoint",
    "Checkpoints",
    "Difference",
    "FoldState",
    "KnowledgeEntry",
    "LexicalRanker",
    "Message",
    "ProjectionReader",
    "ProjectionTables",
    "Projector",
    "QuarantinedMessage",
    "SearchIndex",
    "TaskRecord",
    "UserState",
    "UserSummary",
    "alone_while_upgrading",
    "bring_up_to_date",
    "catch_up",
    "dump",
    "forget_in_scratch",
    "index_messages",
    "rebuild",
    "rebuild_user",
    "refold_now_readable",
    "refuse_unfolded",
    "refuse_while_rebuilding",
    "replay_checkpoints",
    "search_terms",
    "state_at",
    "take_checkpoint",
    "verify",
    "warn_unfolded",
]
