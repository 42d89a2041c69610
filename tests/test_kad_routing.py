"""The routing table: eviction decisions, failures, refresh, and its invariants as properties."""

import random

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, bucket_index, closest_peers, key_of
from p2pnet.core.kad.routing import (
    Added,
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


def full_table(k: int = 4) -> tuple[RoutingTable, list[PeerInfo]]:
    table = RoutingTable(LOCAL, k=k)
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


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.randoms(use_true_random=False), st.integers(0, (1 << KEY_BITS) - 1))
def test_table_invariants_hold_under_any_operations(
    k: int, rnd: random.Random, target: int
) -> None:
    table = RoutingTable(POOL[0].key, k=k, max_failures=2)
    decisions: list[UpdateDecision | PingDecision] = []
    for now in range(rnd.randrange(10, 200)):
        op = rnd.choice(["update", "update", "ping", "fail", "remove"])
        peer = rnd.choice(POOL)
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
