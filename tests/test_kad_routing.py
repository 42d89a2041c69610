"""The routing table: eviction decisions, failures, refresh, and its invariants as properties."""

import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.diversity import DiversityLimits, address_groups
from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, bucket_index, closest_peers, key_of
from p2pnet.core.kad.routing import (
    Added,
    Dropped,
    Evicted,
    Ignored,
    PingDecision,
    PingOldest,
    Refreshed,
    RoutingTable,
    UpdateDecision,
)

LOCAL = b"\x00\x24local"


def make_peer(rng: random.Random, i: int = 0) -> PeerInfo:
    return PeerInfo(f"peer{i}", b"\x00\x24" + rng.randbytes(32), (f"/ip4/10.0.0.1/tcp/{i}",))


def peers_in_bucket(index: int, count: int, seed: int = 0) -> list[PeerInfo]:
    """``count`` distinct peers that all fall in bucket ``index`` of LOCAL's table."""
    rng = random.Random(seed)
    local = key_of(LOCAL)
    out: list[PeerInfo] = []
    while len(out) < count:
        peer = make_peer(rng, len(out))
        if bucket_index(local, peer.kad_key) == index:
            out.append(peer)
    return out


def full_table(k: int = 4, known_alive_for: float = 0.0) -> tuple[RoutingTable, list[PeerInfo]]:
    table = RoutingTable(LOCAL, k=k, known_alive_for=known_alive_for)
    peers = peers_in_bucket(255, k + 3)
    for t, peer in enumerate(peers[:k]):
        assert table.update(peer, now=float(t)) == Added(peer)
    return table, peers


def test_full_bucket_asks_to_ping_its_oldest_peer() -> None:
    table, peers = full_table()
    decision = table.update(peers[4], now=10)
    assert decision == PingOldest(candidate=peers[4], oldest=peers[0])
    assert table.pending_ping(255) == decision
    assert peers[4] not in table and len(table) == 4


def test_full_bucket_heard_from_recently_ignores_a_newcomer_without_a_ping() -> None:
    table, peers = full_table(known_alive_for=900.0)  # the oldest was heard from at 0
    decision = table.update(peers[4], now=899.0)
    assert isinstance(decision, Ignored) and "heard from recently" in decision.reason
    assert table.pending_ping(255) is None
    assert peers[4] not in table and len(table) == 4
    # Once the oldest has not been heard from for known_alive_for, it gets its ping.
    assert table.update(peers[5], now=900.0) == PingOldest(candidate=peers[5], oldest=peers[0])


def test_full_bucket_pings_an_oldest_peer_that_failed_since_it_was_heard_from() -> None:
    table, peers = full_table(known_alive_for=900.0)
    table.record_failure(peers[0], now=5.0)
    assert table.update(peers[4], now=10.0) == PingOldest(candidate=peers[4], oldest=peers[0])


def test_alive_oldest_stays_and_candidate_is_dropped() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert table.on_ping_result(peers[0], alive=True, now=11) == Refreshed(peers[0])
    assert table.bucket(255) == [peers[1], peers[2], peers[3], peers[0]]  # now most recent
    assert peers[4] not in table and table.pending_ping(255) is None
    # The next newcomer asks about the next oldest.
    assert table.update(peers[5], now=12) == PingOldest(peers[5], peers[1])


def test_dead_oldest_is_replaced_by_the_candidate() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert table.on_ping_result(peers[0], alive=False, now=11) == Evicted(peers[0], peers[4])
    assert table.bucket(255) == [peers[1], peers[2], peers[3], peers[4]]
    assert table.pending_ping(255) is None


def test_one_ping_per_bucket_newcomers_meanwhile_are_ignored() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert isinstance(table.update(peers[5], now=11), Ignored)
    assert isinstance(table.update(peers[4], now=11), Ignored)
    assert table.pending_ping(255) == PingOldest(peers[4], peers[0])


def test_oldest_heard_from_meanwhile_cancels_the_pending_ping() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert table.update(peers[0], now=11) == Refreshed(peers[0])
    assert table.pending_ping(255) is None
    assert isinstance(table.on_ping_result(peers[0], alive=False, now=12), Ignored)
    assert peers[0] in table and peers[4] not in table


def test_unanswered_ping_is_abandoned_after_the_ping_timeout() -> None:
    table, peers = full_table()
    table.ping_timeout = 30
    table.update(peers[4], now=10)
    assert isinstance(table.update(peers[5], now=39), Ignored)
    assert table.update(peers[5], now=40) == PingOldest(peers[5], peers[0])


def test_removing_a_peer_lets_the_pending_candidate_in() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert table.remove(peers[2])
    assert peers[4] in table and table.pending_ping(255) is None
    assert isinstance(table.on_ping_result(peers[0], alive=False, now=11), Ignored)
    assert peers[0] in table
    assert not table.remove(peers[2])


def test_peer_is_dropped_after_consecutive_failures_only() -> None:
    table = RoutingTable(LOCAL, max_failures=3)
    (peer,) = peers_in_bucket(255, 1)
    table.update(peer, now=0)
    assert not table.record_failure(peer, now=1)
    assert not table.record_failure(peer, now=2)
    table.update(peer, now=3)  # a success resets the count
    entry = table.get(peer.key)
    assert entry is not None and entry.failures == 0 and entry.last_seen == 3
    assert not table.record_failure(peer, now=4)
    assert not table.record_failure(peer, now=5)
    assert table.record_failure(peer, now=6)
    assert peer not in table and table.get(peer.key) is None
    assert not table.record_failure(peer, now=7)


def test_failing_pending_candidate_is_forgotten() -> None:
    table, peers = full_table()
    table.update(peers[4], now=10)
    assert not table.record_failure(peers[4], now=11)
    assert table.pending_ping(255) is None


def test_local_peer_is_never_added() -> None:
    table = RoutingTable(LOCAL)
    me = PeerInfo("me", LOCAL)
    assert isinstance(table.update(me, now=0), Ignored)
    assert me not in table and len(table) == 0 and table.get(LOCAL) is None


def test_refresh_keeps_known_addresses_when_none_are_given() -> None:
    table = RoutingTable(LOCAL)
    (peer,) = peers_in_bucket(255, 1)
    table.update(peer, now=0)
    bare = PeerInfo(peer.peer_id, peer.key)
    assert table.update(bare, now=1) == Refreshed(peer)
    moved = PeerInfo(peer.peer_id, peer.key, ("/ip4/10.0.0.2/tcp/9",))
    assert table.update(moved, now=2) == Refreshed(moved)


def test_stale_buckets_span_from_the_closest_non_empty_one() -> None:
    table = RoutingTable(LOCAL)
    assert table.stale_buckets(now=0, refresh_interval=600) == []
    table.update(peers_in_bucket(250, 1)[0], now=0)
    assert table.stale_buckets(now=0, refresh_interval=600) == list(range(250, 256))
    table.mark_refreshed(252, now=100)
    assert 252 not in table.stale_buckets(now=699, refresh_interval=600)
    assert 252 in table.stale_buckets(now=700, refresh_interval=600)
    with pytest.raises(ValueError):
        table.mark_refreshed(KEY_BITS, now=0)


# --- Invariants under random operations -----------------------------------------------------

POOL = [make_peer(random.Random(i), i) for i in range(60)]


def random_operations(
    table: RoutingTable,
    rnd: random.Random,
    ops: list[str],
    pick: Callable[[], PeerInfo],
) -> list[UpdateDecision | PingDecision]:
    """10 to 199 operations drawn from ``ops`` (update, ping, fail, remove) on peers from
    ``pick``, one per second; the decisions the table returned."""
    decisions: list[UpdateDecision | PingDecision] = []
    for now in range(rnd.randrange(10, 200)):
        op = rnd.choice(ops)
        peer = pick()
        if op == "update":
            decisions.append(table.update(peer, now))
        elif op == "ping":
            pings = [p for j in range(KEY_BITS) if (p := table.pending_ping(j)) is not None]
            if pings:
                oldest = rnd.choice(pings).oldest
                decisions.append(table.on_ping_result(oldest, alive=rnd.random() < 0.5, now=now))
        elif op == "fail":
            table.record_failure(peer, now)
        else:
            table.remove(peer)
    return decisions


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.randoms(use_true_random=False), st.integers(0, (1 << KEY_BITS) - 1))
def test_table_invariants_hold_under_any_operations(
    k: int, rnd: random.Random, target: int
) -> None:
    # Operations come one per second: some tables ping at every full bucket, others
    # only once the oldest peer has gone unheard for a while.
    table = RoutingTable(POOL[0].key, k=k, max_failures=2, known_alive_for=rnd.choice([0.0, 20.0]))
    ops = ["update", "update", "ping", "fail", "remove"]
    decisions = random_operations(table, rnd, ops, lambda: rnd.choice(POOL))
    event(f"evictions: {any(isinstance(d, Evicted) for d in decisions)}")
    members = list(table)
    assert len(members) == len(table) == len({p.key for p in members})
    assert all(p.key != POOL[0].key for p in members)
    for index in range(KEY_BITS):
        bucket = table.bucket(index)
        assert len(bucket) <= k
        assert all(bucket_index(table.local_kad_key, p.kad_key) == index for p in bucket)
        pending = table.pending_ping(index)
        if pending is not None:
            assert pending.oldest in bucket and pending.candidate not in table
    found = table.closest(Key(target), 5)
    assert found == closest_peers(Key(target), members, 5)
    dists = [p.kad_key ^ target for p in table.closest(Key(target), len(table))]
    assert dists == sorted(dists)


# --- IP-group limits ---------------------------------------------------------------------


def at(peer: PeerInfo, addr: str) -> PeerInfo:
    """``peer`` at ``addr`` (only)."""
    return PeerInfo(peer.peer_id, peer.key, (addr,))


def limited_table(k: int = 4, per_bucket: int = 2, per_table: int = 3) -> RoutingTable:
    return RoutingTable(
        LOCAL,
        k=k,
        known_alive_for=0.0,
        group_of=address_groups("grouped"),
        limits=DiversityLimits(per_bucket=per_bucket, per_table=per_table),
    )


def test_a_bucket_refuses_the_third_peer_of_an_ip_group() -> None:
    table = limited_table(per_table=10)
    a, b, c, d = (at(p, f"/ip4/1.2.{i}.1/tcp/1") for i, p in enumerate(peers_in_bucket(255, 4)))
    assert table.update(a, now=0) == Added(a)
    assert table.update(b, now=1) == Added(b)
    refused = table.update(c, now=2)
    assert refused == Ignored(c, "IP group ip4:1.2 already has 2 peers in bucket 255", "ip4:1.2")
    assert c not in table and table.group_count("ip4:1.2", 255) == 2
    other = at(d, "/ip4/1.3.0.1/tcp/1")  # another /16 is welcome
    assert table.update(other, now=3) == Added(other)
    assert table.update(a, now=4) == Refreshed(a)  # a member is still heard from


def test_the_table_refuses_the_fourth_peer_of_an_ip_group() -> None:
    table = limited_table()
    spread = [at(peers_in_bucket(i, 1)[0], f"/ip6/2001:db8:{i}::1/tcp/1") for i in range(252, 256)]
    for peer in spread[:3]:
        assert table.update(peer, now=0) == Added(peer)
    refused = table.update(spread[3], now=1)
    assert isinstance(refused, Ignored) and refused.group == "ip6:2001:0db8"
    assert refused.reason == "IP group ip6:2001:0db8 already has 3 peers in the table"
    assert table.group_count("ip6:2001:0db8") == 3 and spread[3] not in table


def test_group_counts_recover_after_remove_failures_and_eviction() -> None:
    table = limited_table(k=2, per_table=3)
    peers = [at(p, "/ip4/5.6.7.8/tcp/1") for p in peers_in_bucket(255, 3)]
    far = at(peers_in_bucket(254, 1)[0], "/ip4/5.6.0.1/tcp/1")
    table.update(peers[0], now=0)
    table.update(peers[1], now=0)
    table.update(far, now=0)
    assert table.group_count("ip4:5.6") == 3
    assert table.remove(far) and table.group_count("ip4:5.6") == 2
    table.record_failure(peers[0], now=1)
    table.record_failure(peers[0], now=2)
    assert table.record_failure(peers[0], now=3)  # the third failure drops it
    assert table.group_count("ip4:5.6") == table.group_count("ip4:5.6", 255) == 1
    assert table.update(peers[2], now=4) == Added(peers[2])
    # A full bucket: a newcomer of another group takes a dead peer's place, counts follow.
    newcomer = at(peers_in_bucket(255, 4, seed=1)[3], "/ip4/9.9.9.9/tcp/1")
    assert table.update(newcomer, now=5) == PingOldest(newcomer, peers[1])
    assert table.on_ping_result(peers[1], alive=False, now=6) == Evicted(peers[1], newcomer)
    assert table.group_count("ip4:5.6") == 1 and table.group_count("ip4:9.9") == 1


def test_a_waiting_candidate_over_a_limit_is_dropped_instead_of_let_in() -> None:
    table = limited_table(k=2, per_bucket=2, per_table=3)
    near = [at(p, "/ip4/7.7.0.1/tcp/1") for p in peers_in_bucket(255, 2)]
    candidate = at(peers_in_bucket(255, 3, seed=2)[2], "/ip4/8.8.0.1/tcp/1")
    for peer in near:
        table.update(peer, now=0)
    assert table.update(candidate, now=1) == PingOldest(candidate, near[0])
    # Meanwhile three peers of the candidate's group fill their table quota elsewhere.
    elsewhere = [
        at(peers_in_bucket(index, 1)[0], f"/ip4/8.8.{index}.1/tcp/1") for index in (252, 253, 254)
    ]
    for peer in elsewhere:
        table.update(peer, now=2)
    assert table.group_count("ip4:8.8") == 3
    decision = table.on_ping_result(near[0], alive=False, now=3)
    assert decision == Dropped(
        near[0], candidate, "IP group ip4:8.8 already has 3 peers in the table"
    )
    assert near[0] not in table and candidate not in table and table.bucket(255) == [near[1]]
    # The same when a removal frees the slot.
    table.update(near[0], now=4)
    table.remove(elsewhere[0])
    assert table.update(candidate, now=5) == PingOldest(candidate, near[1])
    table.update(elsewhere[0], now=6)
    assert table.remove(near[0])
    assert candidate not in table and table.pending_ping(255) is None
    assert table.group_count("ip4:8.8") == 3 and table.bucket(255) == [near[1]]


def test_a_member_that_moves_into_a_full_group_keeps_its_old_addresses() -> None:
    table = limited_table(per_bucket=2, per_table=10)
    a, b, c = peers_in_bucket(255, 3)
    table.update(at(a, "/ip4/3.3.0.1/tcp/1"), now=0)
    table.update(at(b, "/ip4/3.3.0.2/tcp/1"), now=0)
    table.update(at(c, "/ip4/4.4.0.1/tcp/1"), now=0)
    assert table.update(at(c, "/ip4/3.3.0.3/tcp/1"), now=1) == Refreshed(
        at(c, "/ip4/4.4.0.1/tcp/1")
    )
    assert table.update(at(a, "/ip4/5.5.0.1/tcp/1"), now=2) == Refreshed(
        at(a, "/ip4/5.5.0.1/tcp/1")
    )
    assert table.group_count("ip4:3.3") == 1 and table.group_count("ip4:5.5") == 1
    # Now there is room: c may move.
    assert table.update(at(c, "/ip4/3.3.0.3/tcp/1"), now=3) == Refreshed(
        at(c, "/ip4/3.3.0.3/tcp/1")
    )
    assert table.group_count("ip4:3.3") == 2 and table.group_count("ip4:4.4") == 0


def test_without_group_of_nothing_is_limited() -> None:
    table = RoutingTable(LOCAL, k=20)
    same = [at(p, "/ip4/1.1.1.1/tcp/1") for p in peers_in_bucket(255, 10)]
    assert all(table.update(p, now=0) == Added(p) for p in same)
    assert table.group_count("ip4:1.1") == 0


# Each pool peer may show up at one of two addresses, in few groups, so limits bite.
GROUPED_POOL = [
    (at(p, f"/ip4/6.{i % 3}.0.1/tcp/1"), at(p, f"/ip4/6.{i % 5}.0.2/tcp/1"))
    for i, p in enumerate(POOL)
]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.randoms(use_true_random=False))
def test_no_ip_group_ever_exceeds_its_limits(
    k: int, per_bucket: int, per_table: int, rnd: random.Random
) -> None:
    limits = DiversityLimits(per_bucket=per_bucket, per_table=per_table)
    group_of = address_groups("grouped")
    table = RoutingTable(
        POOL[0].key,
        k=k,
        max_failures=2,
        known_alive_for=rnd.choice([0.0, 20.0]),
        group_of=group_of,
        limits=limits,
    )
    ops = ["update", "update", "update", "ping", "fail", "remove"]
    decisions = random_operations(table, rnd, ops, lambda: rnd.choice(rnd.choice(GROUPED_POOL)))
    in_table: Counter[str] = Counter()
    for index in range(KEY_BITS):
        in_bucket = Counter(g for p in table.bucket(index) for g in group_of(p))
        assert all(n <= per_bucket for n in in_bucket.values())
        assert all(table.group_count(g, index) == n for g, n in in_bucket.items())
        in_table.update(in_bucket)
    assert all(n <= per_table for n in in_table.values())
    assert all(table.group_count(g) == n for g, n in in_table.items())
    event(f"refused for a group: {any(isinstance(d, Ignored) and d.group for d in decisions)}")
    event(f"candidate dropped: {any(isinstance(d, Dropped) for d in decisions)}")
