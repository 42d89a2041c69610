"""The iterative lookup: its rules, as properties, and on a simulated 1,000-peer DHT."""

import math
import random
import statistics
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.keys import PeerInfo, closest_peers, key_of
from p2pnet.core.kad.lookup import ClosestPeersLookup, LookupStats
from p2pnet.core.kad.routing import PingOldest, RoutingTable

TARGET = b"/p2pnet/task/emotion"


def make_peer(rng: random.Random, i: int) -> PeerInfo:
    # An Ed25519 peer ID's multihash: identity code, length, then the protobuf public key.
    key = b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(32)
    return PeerInfo(f"peer{i}", key, (f"/ip4/127.0.0.1/tcp/{4000 + i}",))


def by_distance(peers: list[PeerInfo]) -> list[PeerInfo]:
    return closest_peers(key_of(TARGET), peers, len(peers))


_rng = random.Random(1)
PEERS = by_distance([make_peer(_rng, i) for i in range(40)])


def test_single_seed_that_knows_nobody() -> None:
    lookup = ClosestPeersLookup(TARGET, [PEERS[0]], now=0)
    assert lookup.next_queries(0) == [PEERS[0]]
    assert lookup.next_queries(0) == []  # waiting for the answer
    assert not lookup.is_finished
    assert lookup.on_success(PEERS[0], [], now=1)
    assert lookup.next_queries(1) == []
    assert lookup.is_finished and lookup.result() == [PEERS[0]]
    assert lookup.stats == LookupStats(queries=1, successes=1, failures=0, timeouts=0, hops=0)


def test_never_more_than_alpha_in_flight_closest_first() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:10][::-1], now=0, alpha=3)
    assert lookup.next_queries(0) == PEERS[:3]
    assert lookup.next_queries(0) == [] and lookup.in_flight == 3
    lookup.on_failure(PEERS[1], now=1)
    assert lookup.next_queries(1) == [PEERS[3]]


def test_discovered_closer_peers_are_queried_next() -> None:
    lookup = ClosestPeersLookup(TARGET, [PEERS[10]], now=0, alpha=2)
    lookup.next_queries(0)
    lookup.on_success(PEERS[10], [PEERS[5], PEERS[2]], now=1)
    assert lookup.next_queries(1) == [PEERS[2], PEERS[5]]
    lookup.on_success(PEERS[2], [PEERS[0]], now=2)
    assert lookup.next_queries(2) == [PEERS[0]]
    assert lookup.stats.hops == 2


def test_finishes_once_the_k_closest_answered_leaving_farther_peers_unasked() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:6], now=0, k=3, alpha=3)
    first = lookup.next_queries(0)
    assert first == PEERS[:3]
    for peer in first:
        lookup.on_success(peer, [], now=1)
    assert lookup.next_queries(1) == []
    assert lookup.is_finished and lookup.result() == PEERS[:3]
    assert lookup.stats.queries == 3


def test_failed_peers_make_room_for_the_next_closest() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:6], now=0, k=3, alpha=3)
    lookup.next_queries(0)
    lookup.on_success(PEERS[0], [], now=1)
    lookup.on_failure(PEERS[1], now=1)
    lookup.on_success(PEERS[2], [], now=1)
    assert lookup.next_queries(1) == [PEERS[3]]
    lookup.on_success(PEERS[3], [], now=2)
    assert lookup.next_queries(2) == []
    assert lookup.result() == [PEERS[0], PEERS[2], PEERS[3]]


def test_timed_out_request_counts_as_failed_and_late_answer_is_ignored() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:5], now=0, k=3, alpha=2, rpc_timeout=5)
    assert lookup.next_queries(0) == PEERS[:2]
    lookup.on_success(PEERS[0], [], now=1)
    assert lookup.next_queries(1) == [PEERS[2]]
    assert lookup.next_timeout() == 5
    assert lookup.next_queries(4.9) == []  # PEERS[1] has not timed out yet
    assert lookup.next_queries(5) == [PEERS[3]]  # now it has
    assert lookup.stats.timeouts == 1 and lookup.stats.failures == 1
    assert not lookup.on_success(PEERS[1], [PEERS[5]], now=6)
    lookup.on_success(PEERS[2], [], now=6)
    assert lookup.next_queries(6) == []
    assert lookup.in_flight == 1 and not lookup.is_finished  # PEERS[3] is still out
    lookup.on_success(PEERS[3], [], now=7)
    assert lookup.next_queries(7) == [] and lookup.is_finished
    assert lookup.result() == [PEERS[0], PEERS[2], PEERS[3]]


def test_reports_for_peers_not_in_flight_change_nothing() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:2], now=0)
    assert not lookup.on_success(PEERS[0], [], now=0)  # not sent yet
    assert not lookup.on_failure(PEERS[30], now=0)  # unknown
    lookup.next_queries(0)
    assert lookup.on_failure(PEERS[0], now=1)
    assert not lookup.on_failure(PEERS[0], now=1)  # reported twice
    assert lookup.stats.failures == 1


def test_query_budget_bounds_the_lookup() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:10], now=0, alpha=3, max_queries=4)
    sent = lookup.next_queries(0)
    for peer in sent:
        lookup.on_success(peer, [], now=1)
    assert lookup.next_queries(1) == [PEERS[3]]
    assert lookup.next_queries(1) == []
    lookup.on_failure(PEERS[3], now=2)
    assert lookup.next_queries(2) == []
    assert lookup.is_finished and lookup.stats.queries == 4


def test_stop_finishes_and_ignores_later_answers() -> None:
    lookup = ClosestPeersLookup(TARGET, PEERS[:5], now=0)
    lookup.next_queries(0)
    lookup.stop()
    assert lookup.is_finished and lookup.next_queries(1) == []
    assert not lookup.on_success(PEERS[0], [PEERS[9]], now=1)


def test_local_peer_is_never_queried() -> None:
    me = PEERS[0]
    lookup = ClosestPeersLookup(TARGET, [me, PEERS[3]], now=0, local_key=me.key)
    assert lookup.next_queries(0) == [PEERS[3]]
    lookup.on_success(PEERS[3], [me, PEERS[1]], now=1)
    assert lookup.next_queries(1) == [PEERS[1]]


def test_one_answer_adds_at_most_k_peers() -> None:
    lookup = ClosestPeersLookup(TARGET, [PEERS[39]], now=0, k=3)
    lookup.next_queries(0)
    lookup.on_success(PEERS[39], PEERS[:30], now=1)  # an oversized answer
    assert lookup.next_queries(1) == PEERS[:3]
    for peer in PEERS[:3]:
        lookup.on_success(peer, PEERS[:30], now=2)
    assert lookup.next_queries(2) == [] and lookup.is_finished


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_lookup_rules_hold_on_any_small_network(k: int, alpha: int, rnd: random.Random) -> None:
    """Random who-knows-whom graph, random failures, answer order and timeouts."""
    knows = {p.key: rnd.sample(PEERS, rnd.randrange(0, 8)) for p in PEERS}
    dead = {p.key for p in PEERS if rnd.random() < 0.2}
    me = PEERS[rnd.randrange(len(PEERS))]
    lookup = ClosestPeersLookup(
        TARGET,
        rnd.sample(PEERS, 3),
        now=0,
        k=k,
        alpha=alpha,
        rpc_timeout=5,
        max_queries=25,
        local_key=me.key,
    )
    answered: set[bytes] = set()
    in_flight: dict[bytes, tuple[PeerInfo, float]] = {}
    now = 0.0
    while not lookup.is_finished:
        sent = lookup.next_queries(now)
        assert me not in sent and not {p.key for p in sent} & answered
        in_flight |= {p.key: (p, now) for p in sent}
        late = [p for p, sent_at in in_flight.values() if now - sent_at >= 5]
        for peer in late:
            del in_flight[peer.key]
        assert lookup.in_flight == len(in_flight) <= alpha
        if late:
            assert not lookup.on_success(late[0], [], now)  # a late answer is ignored
        if not in_flight:
            assert lookup.is_finished  # nothing to wait for and nobody left to ask
            break
        peer, _ = in_flight.pop(rnd.choice(list(in_flight)))
        now += rnd.choice([0, 1, 3])
        if peer.key in dead:
            lookup.on_failure(peer, now)
        else:
            assert lookup.on_success(peer, knows[peer.key], now)
            answered.add(peer.key)
    result = lookup.result()
    assert len(result) <= k and me not in result
    assert {p.key for p in result} <= answered
    assert result == by_distance(result)
    stats = lookup.stats
    assert stats.queries <= 25 and stats.successes == len(answered)
    assert stats.queries == stats.successes + stats.failures


# --- A simulated 1,000-peer network -------------------------------------------------------

K = 20


class SimNode:
    """A peer of the simulation: its routing table, fed as a real DHT node would feed it."""

    def __init__(self, info: PeerInfo) -> None:
        self.info = info
        self.table = RoutingTable(info.key, k=K)

    def heard_from(self, peer: PeerInfo, now: float) -> None:
        decision = self.table.update(peer, now)
        if isinstance(decision, PingOldest):  # every simulated peer answers pings
            self.table.on_ping_result(decision.oldest, alive=True, now=now)


class SimNetwork:
    """Peers that answer FIND_NODE from their own routing tables, synchronously.

    Queried peers learn the requester, and the requester learns those that answer,
    as on the real network. Peers in ``offline`` never answer.
    """

    def __init__(self, size: int, rng: random.Random, bootstrap_peers: int = 3) -> None:
        self.nodes: dict[bytes, SimNode] = {}
        self.offline: set[bytes] = set()
        infos = [make_peer(rng, i) for i in range(size)]
        # Peers join one by one, each knowing a few earlier peers, then look up their own
        # key, as a DHT node's bootstrap does.
        for joined, info in enumerate(infos):
            node = SimNode(info)
            for known in rng.sample(infos[:joined], min(joined, bootstrap_peers)):
                node.heard_from(known, now=0)
            self.nodes[info.key] = node
            self.lookup(node, info.key)

    def lookup(self, requester: SimNode, target: bytes) -> ClosestPeersLookup:
        now = 0.0
        lookup = ClosestPeersLookup(
            target,
            requester.table.closest(key_of(target)),
            now=now,
            k=K,
            local_key=requester.info.key,
        )
        while not lookup.is_finished:
            for peer in lookup.next_queries(now):  # answered after the whole round is sent
                if peer.key in self.offline:
                    lookup.on_failure(peer, now)
                    requester.table.record_failure(peer, now)
                    continue
                queried = self.nodes[peer.key]
                queried.heard_from(requester.info, now)
                lookup.on_success(peer, queried.table.closest(lookup.target_key), now)
                requester.heard_from(peer, now)
        return lookup

    def online(self) -> list[PeerInfo]:
        return [n.info for n in self.nodes.values() if n.info.key not in self.offline]


@dataclass
class Outcome:
    """How lookups for random targets did: exact = found the true k closest."""

    exact: float
    closest_half: float  # found the k/2 closest (in the right order)
    stats: list[LookupStats]

    def __str__(self) -> str:
        hops = [s.hops for s in self.stats]
        queries = [s.queries for s in self.stats]
        return (
            f"exact {self.exact:.1%}, closest half {self.closest_half:.1%}, hops mean "
            f"{statistics.mean(hops):.2f} max {max(hops)}, queries mean "
            f"{statistics.mean(queries):.1f} max {max(queries)}"
        )


def run_lookups(network: SimNetwork, rng: random.Random, count: int) -> Outcome:
    """Look up ``count`` random targets, each from a random online peer."""
    online = network.online()
    exact = half = 0
    stats: list[LookupStats] = []
    for _ in range(count):
        requester = network.nodes[rng.choice(online).key]
        target = rng.randbytes(32)
        lookup = network.lookup(requester, target)
        others = [p for p in online if p.key != requester.info.key]
        truth = [p.key for p in closest_peers(key_of(target), others, K)]
        found = [p.key for p in lookup.result()]
        exact += found == truth
        half += found[: K // 2] == truth[: K // 2]
        stats.append(lookup.stats)
    return Outcome(exact / count, half / count, stats)


def test_lookups_find_the_true_k_closest_in_a_1000_peer_network() -> None:
    rng = random.Random(2)
    network = SimNetwork(1000, rng)
    outcome = run_lookups(network, rng, 500)
    print(outcome)
    assert outcome.exact >= 0.99
    assert max(s.hops for s in outcome.stats) <= math.log2(1000)
    assert max(s.queries for s in outcome.stats) <= 3 * K
    assert all(s.failures == 0 for s in outcome.stats)


def test_lookups_route_around_offline_peers() -> None:
    """10% of peers go offline without the others noticing: lookups still find the
    k closest online peers, paying for it in failed queries."""
    rng = random.Random(3)
    network = SimNetwork(1000, rng)
    network.offline = {p.key for p in rng.sample(network.online(), 100)}
    outcome = run_lookups(network, rng, 500)
    print(outcome)
    # Misses are at the far end of the k: offline peers take places in every answer.
    assert outcome.exact >= 0.90
    assert outcome.closest_half >= 0.99
    assert sum(s.failures for s in outcome.stats) > 0
