"""What a bulk re-extraction tells its caller once it is over (:class:`BulkReport`): kept apart
from the run, as every part of the run fills it in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BulkReport:
    """What a bulk run did: requests submitted and recorded, entries, what failed, the
    messages ``left_out`` of the version (by id, with why: each failed alone in a way that
    repeats, or is too large for any Message Batch alone; those an earlier run left out are
    told again, not sent), and the kept Message Batches the
    API no longer knows (``lost``: their requests are planned again), and the users
    another run held (``claimed``)."""

    submitted: int = 0
    recorded: int = 0
    skipped: int = 0
    entries: int = 0
    batches: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    split: dict[str, str] = field(default_factory=dict)
    """Requests (by request id, as ``failed``) refused for their size (a prompt over the
    model's context window, a 413), with why: not failed, their messages submitted again
    by this run within the size learned, split (a lone message: showing no entry, or
    asking the output a live call asks), those of a batch an earlier run kept too, whether
    or not this run names their user. Told once a request of their messages is submitted:
    one whose user was forgotten first is in ``forgotten``, and one whose user another run
    took over is in neither (``claimed`` names the user)."""
    forgotten: dict[str, str] = field(default_factory=dict)
    """Requests whose user was forgotten while their Message Batch ran, or before this run
    sent again the messages of one refused for its size: dropped, not failed (nothing is
    left to record them in, nor to send again)."""
    left_out: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    """Kept Message Batches dropped because their results were read short
    :data:`kept.MAX_SHORT_READS` times: what was read is recorded, and the requests whose
    results were not are planned again (by this run, which collects kept batches first)."""
    claimed: list[str] = field(default_factory=list)
    """Users another run under way re-extracts into the version: nothing new was submitted
    for them (a run of another host stopped in the last :data:`CLAIM_TTL` still holds its
    users; one of this host holds them while its process is alive), or nothing more once
    another run took them over while this one was stopped."""
    collected: list[str] = field(default_factory=list)
    """Users some of whose requests kept by an earlier run this run recorded (its own
    submissions left aside)."""
    probes: list[str] = field(default_factory=list)
    """Probe Message Batches (one request of one token each, made to tell whether a
    request refused as too large alone is refused for its size) this run canceled: its
    own, and those an earlier run left running."""
    probes_running: list[str] = field(default_factory=list)
    """Probe Message Batches this run could not cancel: kept, the next run cancels them."""
    direct: dict[str, int] = field(default_factory=dict)
    """Users whose messages this run sent through the Messages API at full price, and how
    many: their Message Batch failed whole with server errors, as one of the same requests
    had before (of one of their messages). What that path could not extract is in
    ``failed`` (``direct:USER``) and ``left_out``."""
    forgotten_users: list[str] = field(default_factory=list)
    """Users whose log was forgotten after the run began: nothing (more) was submitted for
    them (one named with no log at all stops the run before it begins)."""
    direct_held: int = 0
    """Messages due to go through the Messages API that this run kept for the next one:
    past its bound of messages sent so (``direct_limit``)."""
