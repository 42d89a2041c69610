"""The join plan (p2pnet/core/join.py): whom a peer asks to join, and when."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.address import PeerAddress
from p2pnet.core.join import (
    MAX_LEARNED,
    Attempt,
    Joined,
    JoinPlan,
    JoinPolicy,
    Wait,
    buckets_to_fill,
)

POLICY = JoinPolicy(request_timeout=3.0, per_attempt=2, first_backoff=1.0, max_backoff=60.0)


def addr(name: str) -> PeerAddress:
    return PeerAddress(name, (f"/memory/{name}",))


def asked(decision: object) -> list[str]:
    assert isinstance(decision, Attempt), decision
    return [p.peer_id for p in decision.peers]


@given(
    first=st.floats(0.01, 100.0),
    factor=st.floats(1.0, 1000.0),
    failures=st.integers(1, 10_000),
)
def test_backoff_doubles_up_to_its_cap(first: float, factor: float, failures: int) -> None:
    policy = JoinPolicy(first_backoff=first, max_backoff=first * factor)
    delay = policy.backoff(failures)
    assert first <= delay <= policy.max_backoff
    assert delay == min(policy.max_backoff, first * 2.0 ** min(failures - 1, 60))
    assert policy.backoff(failures + 1) >= delay  # never shrinks
    assert policy.backoff(failures + 1) <= 2 * delay


def test_bootstrap_peers_first_a_few_at_a_time_then_the_learned() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.learn([addr("l1")])
    plan.add([addr("b1"), addr("me"), addr("b2"), addr("b3")])
    assert asked(plan.next(0.0)) == ["b1", "b2"]
    for p in ("b1", "b2"):
        plan.on_failure(p, 3.0)
    assert asked(plan.next(3.0)) == ["b3", "l1"]
    plan.on_failure("b3", 6.0)
    plan.on_answer("l1", useful=True, now=6.0)
    assert plan.next(6.0) == Joined()
    assert plan.status().state == "joined"


def test_a_useless_answer_sends_it_to_the_other_peers_then_counts_as_joined() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.add([addr("b1"), addr("b2"), addr("b3")])
    assert asked(plan.next(0.0)) == ["b1", "b2"]
    plan.on_answer("b1", useful=False, now=1.0)
    plan.on_failure("b2", 3.0)
    assert asked(plan.next(3.0)) == ["b3"]
    plan.on_failure("b3", 6.0)
    # Everyone was asked and b1 answered: a small swarm, nothing more to find.
    assert plan.next(6.0) == Joined()


def test_alone_it_retries_with_backoff_and_says_when() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.add([addr("b1")])
    now = 0.0
    waits = []
    for _ in range(10):
        assert asked(plan.next(now)) == ["b1"]
        now += 3.0  # the request timed out
        plan.on_failure("b1", now)
        decision = plan.next(now)
        assert isinstance(decision, Wait) and decision.until is not None
        status = plan.status()
        assert status.state == "alone" and status.alone_since == 0.0
        assert status.next_attempt_at == decision.until
        waits.append(decision.until - now)
        now = decision.until
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert plan.status().attempts == 10


def test_nobody_to_ask() -> None:
    plan = JoinPlan(POLICY, "me", now=5.0)
    plan.add([addr("me")])
    assert plan.next(5.0) == Wait(None)
    assert plan.status().state == "not joining"


def test_left_alone_it_asks_everyone_again() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.add([addr("b1")])
    assert asked(plan.next(0.0)) == ["b1"]
    plan.on_answer("b1", useful=True, now=0.5)
    plan.learn([addr("l1"), addr("l2")])
    assert plan.next(1.0) == Joined()
    plan.alone(100.0)
    assert plan.status().alone_since == 100.0
    assert asked(plan.next(100.0)) == ["b1", "l1"]


def test_learned_peers_are_bounded_and_bootstrap_peers_kept() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.add([addr("b1")])
    plan.learn(addr(f"l{i}") for i in range(MAX_LEARNED * 2))
    plan.learn([PeerAddress("noaddr")])  # cannot be dialled: not a candidate
    names: list[str] = []
    now = 0.0
    while isinstance(decision := plan.next(now), Attempt):
        names += asked(decision)
        for p in decision.peers:
            plan.on_failure(p.peer_id, now)
    assert names[0] == "b1"
    assert len(names) == MAX_LEARNED + 1
    assert set(names[1:]) == {f"l{i}" for i in range(MAX_LEARNED, MAX_LEARNED * 2)}


@given(
    st.lists(
        st.tuples(st.sampled_from(["fail", "useless", "useful"]), st.floats(0.0, 30.0)),
        max_size=40,
    ),
    st.integers(1, 6),
    st.integers(0, 6),
)
def test_no_peer_is_asked_before_its_backoff_ends(
    outcomes: list[tuple[str, float]], bootstrap: int, learned: int
) -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    plan.add(addr(f"b{i}") for i in range(bootstrap))
    plan.learn(addr(f"l{i}") for i in range(learned))
    not_before: dict[str, float] = {}
    now = 0.0
    for outcome, step in outcomes:
        decision = plan.next(now)
        if isinstance(decision, Joined):
            break
        if isinstance(decision, Wait):
            assert decision.until is not None and decision.until > now
            now = decision.until
            continue
        assert 1 <= len(decision.peers) <= POLICY.per_attempt
        for p in decision.peers:
            assert now >= not_before.get(p.peer_id, 0.0)
        now += min(step, POLICY.request_timeout)
        for p in decision.peers:
            if outcome == "fail":
                plan.on_failure(p.peer_id, now)
                failures = plan._candidates[p.peer_id].failures
                not_before[p.peer_id] = now + POLICY.backoff(failures)
            else:
                plan.on_answer(p.peer_id, outcome == "useful", now)
        if outcome == "useful":
            assert plan.next(now) == Joined()
            break


def test_policy_checks_itself() -> None:
    with pytest.raises(ValueError):
        JoinPolicy(first_backoff=10.0, max_backoff=1.0)
    with pytest.raises(ValueError):
        JoinPolicy(per_attempt=0)


def test_peers_that_joined_through_this_one_make_it_joined() -> None:
    plan = JoinPlan(POLICY, "me", now=0.0)
    assert plan.next(0.0) == Wait(None)
    plan.has_peers()
    assert plan.next(1.0) == Joined() and plan.status().state == "joined"


def test_a_new_peer_looks_only_into_buckets_still_short_of_peers() -> None:
    # Bucket 250 is the closest non-empty one: nothing closer is looked for; of 250..255
    # those holding fewer than ``wanted`` are, the farthest first.
    sizes = {250: 3, 251: 0, 252: 1, 253: 5, 255: 20}
    assert buckets_to_fill(sizes, wanted=1) == [254, 251]
    assert buckets_to_fill(sizes, wanted=2) == [254, 252, 251]
    assert buckets_to_fill({}, wanted=1) == []  # nobody known: nothing to look into
    assert buckets_to_fill({251: 0}, wanted=1) == []
    with pytest.raises(ValueError):
        buckets_to_fill(sizes, wanted=0)


@given(
    sizes=st.dictionaries(st.integers(0, 255), st.integers(0, 30), max_size=40),
    wanted=st.integers(1, 20),
)
def test_buckets_to_fill_are_exactly_the_short_ones_from_the_closest_known_out(
    sizes: dict[int, int], wanted: int
) -> None:
    chosen = buckets_to_fill(sizes, wanted=wanted)
    assert chosen == sorted(chosen, reverse=True)
    filled = [i for i, n in sizes.items() if n > 0]
    if not filled:
        assert chosen == []
        return
    expected = {i for i in range(min(filled), 256) if sizes.get(i, 0) < wanted}
    assert set(chosen) == expected
