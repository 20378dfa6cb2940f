"""The chains of a batch's plan: the last value of a chain found however long it grows."""

from __future__ import annotations

from events.batch_plan import Plan


class _CountedId(str):
    """An entry id that counts each time a dict looks it up (hashes it)."""

    lookups = 0

    def __hash__(self) -> int:
        _CountedId.lookups += 1
        return super().__hash__()


def test_the_last_value_of_a_chain_asked_after_each_link_is_found_without_walking_the_chain() -> (
    None
):
    """4,000 moves in one answer, each asking for the last value of the chain it grows: a
    walk of the chain each time is some 8 million lookups; the plan takes a few a link."""
    ids = [_CountedId(f"entry {i}") for i in range(4_000)]
    plan = Plan()
    _CountedId.lookups = 0
    for follower in ids[1:]:
        plan.follow(plan.latest(ids[0]), follower)
        assert plan.latest(ids[0]) == follower
    assert _CountedId.lookups < 20 * len(ids)


def test_a_link_closing_a_cycle_leaves_each_value_its_last_before_the_walk_comes_back() -> None:
    """A cycle no answer should make (Oslo followed by Bergen, followed by Oslo): the last
    value from each is the one met just before the walk would meet a value again."""
    plan = Plan()
    plan.follow("oslo", "bergen")
    plan.follow("bergen", "tromso")
    plan.follow("tromso", "oslo")
    assert (plan.latest("oslo"), plan.latest("bergen"), plan.latest("tromso")) == (
        "tromso",
        "oslo",
        "bergen",
    )
