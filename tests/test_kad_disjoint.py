"""The lookup over d disjoint paths (S/Kademlia): its rules as properties, one path
fed only lies, equivalence with the plain lookup at d = 1, budgets."""

import heapq
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.keys import PeerInfo, closest_peers, key_of
from p2pnet.core.kad.lookup import ClosestPeersLookup, DisjointLookup, LookupStats

TARGET = b"/p2pnet/task/emotion"
TARGET_KEY = key_of(TARGET)


def make_peer(rng: random.Random, i: int) -> PeerInfo:
    # An Ed25519 peer ID's multihash: identity code, length, then the protobuf public key.
    key = b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(32)
    return PeerInfo(f"peer{i}", key, (f"/ip4/127.0.0.1/tcp/{4000 + i}",))


def by_distance(peers: Sequence[PeerInfo]) -> list[PeerInfo]:
    return closest_peers(TARGET_KEY, peers, len(peers))


_rng = random.Random(1)
PEERS = by_distance([make_peer(_rng, i) for i in range(60)])

Lookup = ClosestPeersLookup | DisjointLookup
Answer = Callable[[PeerInfo], list[PeerInfo] | None]  # closer peers, or None: never answers


class Driver:
    """Runs a lookup in simulated time: a peer ``answer`` gives closer peers for
    answers ``latency`` after it was asked; one it gives None for never answers (it
    times out)."""

    def __init__(self, lookup: Lookup, answer: Answer, latency: float = 1.0) -> None:
        self.lookup = lookup
        self.answer = answer
        self.latency = latency
        self.now = 0.0
        self._pending: list[tuple[float, int, PeerInfo]] = []  # (answer time, order, peer)
        self._sent = 0

    def run(self, until: float = 1e9) -> float:
        """Run until the lookup finishes or ``until``; the time it stopped at."""
        lookup = self.lookup
        while True:
            for peer in lookup.next_queries(self.now):
                self._sent += 1
                if self.answer(peer) is not None:
                    heapq.heappush(self._pending, (self.now + self.latency, self._sent, peer))
            if lookup.is_finished:
                return self.now
            times = [t for t in (lookup.next_timeout(),) if t is not None]
            times += [self._pending[0][0]] if self._pending else []
            assert times, "nothing in flight, yet not finished"
            if min(times) > until:
                self.now = until
                return until
            self.now = min(times)
            while self._pending and self._pending[0][0] <= self.now:
                _, _, peer = heapq.heappop(self._pending)
                closer = self.answer(peer)
                assert closer is not None
                lookup.on_success(peer, closer, self.now)


def drive(lookup: Lookup, answer: Answer) -> float:
    return Driver(lookup, answer).run()


def test_seeds_are_dealt_round_robin_closest_first() -> None:
    lookup = DisjointLookup(TARGET, PEERS[:8][::-1], now=0, paths=4, alpha=2)
    assert lookup.next_queries(0) == [
        PEERS[0], PEERS[4], PEERS[1], PEERS[5], PEERS[2], PEERS[6], PEERS[3], PEERS[7],
    ]  # fmt: skip
    assert lookup.in_flight == 8 and lookup.next_queries(0) == []


def test_a_peer_asked_by_one_path_is_skipped_by_the_others() -> None:
    lookup = DisjointLookup(TARGET, [PEERS[10], PEERS[11]], now=0, paths=2, alpha=1)
    assert lookup.next_queries(0) == [PEERS[10], PEERS[11]]
    assert lookup.on_success(PEERS[10], [PEERS[2]], now=1)
    assert lookup.next_queries(1) == [PEERS[2]]  # the first path claims it
    assert lookup.on_success(PEERS[11], [PEERS[2], PEERS[3]], now=2)
    assert lookup.next_queries(2) == [PEERS[3]]  # the second goes on as if PEERS[2] were not
    lookup.on_success(PEERS[2], [], now=3)
    lookup.on_success(PEERS[3], [], now=3)
    assert lookup.next_queries(3) == [] and lookup.is_finished
    first, second = lookup.paths
    assert first.answered() == [PEERS[2], PEERS[10]]
    assert second.answered() == [PEERS[3], PEERS[11]]
    assert lookup.result() == [PEERS[2], PEERS[3], PEERS[10], PEERS[11]]
    assert lookup.stats == LookupStats(queries=4, successes=4, failures=0, timeouts=0, hops=1)


def test_the_lookup_finishes_when_every_path_has() -> None:
    lookup = DisjointLookup(TARGET, PEERS[:4], now=0, paths=2, k=2, alpha=2)
    sent = lookup.next_queries(0)
    for peer in (PEERS[0], PEERS[2]):  # the first path's two
        lookup.on_success(peer, [], now=1)
    assert sent == [PEERS[0], PEERS[2], PEERS[1], PEERS[3]]
    assert lookup.next_queries(1) == [] and not lookup.is_finished
    assert lookup.paths[0].is_finished and lookup.in_flight == 2
    lookup.on_failure(PEERS[1], now=2)
    lookup.on_success(PEERS[3], [], now=2)
    assert lookup.next_queries(2) == [] and lookup.is_finished
    assert lookup.result() == [PEERS[0], PEERS[2]]  # the k closest of all that answered


def test_timeouts_are_the_earliest_of_any_path() -> None:
    lookup = DisjointLookup(TARGET, PEERS[:2], now=0, paths=2, rpc_timeout=5)
    lookup.next_queries(0)
    lookup.on_success(PEERS[0], [PEERS[5]], now=1)
    lookup.next_queries(2)  # the first path asks PEERS[5] at 2
    assert lookup.next_timeout() == 5  # PEERS[1], asked at 0
    assert lookup.next_queries(5) == [] and lookup.stats.timeouts == 1
    assert lookup.next_timeout() == 7


def test_stop_finishes_every_path_and_ignores_later_answers() -> None:
    lookup = DisjointLookup(TARGET, PEERS[:6], now=0, paths=3)
    lookup.next_queries(0)
    lookup.stop()
    assert lookup.is_finished and lookup.next_queries(1) == []
    assert not lookup.on_success(PEERS[0], [PEERS[9]], now=1)
    assert not lookup.on_failure(PEERS[1], now=1)


def test_the_local_peer_is_neither_dealt_nor_asked() -> None:
    me = PEERS[0]
    lookup = DisjointLookup(TARGET, PEERS[:3], now=0, paths=2, alpha=1, local_key=me.key)
    assert lookup.next_queries(0) == [PEERS[1], PEERS[2]]
    lookup.on_success(PEERS[1], [me, PEERS[4]], now=1)
    assert lookup.next_queries(1) == [PEERS[4]]


def test_the_budget_is_split_among_the_paths_and_bounds_the_lookup() -> None:
    lookup = DisjointLookup(TARGET, PEERS[50:56], now=0, paths=3, max_queries=10)
    assert [p.max_queries for p in lookup.paths] == [4, 3, 3]
    drive(lookup, lambda peer: PEERS)  # everyone names everyone: work for ever
    assert lookup.stats.queries == 10
    assert DisjointLookup(TARGET, PEERS, now=0, paths=4).max_queries == 4 * 200


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        DisjointLookup(TARGET, PEERS, now=0, paths=0)
    with pytest.raises(ValueError):
        DisjointLookup(TARGET, PEERS, now=0, paths=4, max_queries=3)
    with pytest.raises(ValueError):
        DisjointLookup(TARGET, PEERS, now=0, paths=2, region_bits=257)


def test_region_peers_beyond_each_path_s_k_closest_are_bounded_in_all() -> None:
    """Everyone is in the region (0 bits): each path asks its own k closest, and the
    paths together ask max_region - k more (each alone would ask max_region); the
    result holds max_region peers."""
    lookup = DisjointLookup(
        TARGET, PEERS[:40], now=0, paths=2, k=3, alpha=2, region_bits=0, max_region=6
    )
    drive(lookup, lambda peer: [])
    assert lookup.stats.queries == 2 * 3 + (6 - 3)
    assert lookup.result() == PEERS[:6]


# --- one path fed only lies --------------------------------------------------------------

HONEST = PEERS[20:60]  # peers that answer truthfully, with the k closest honest peers


def honest_answer(peer: PeerInfo, k: int = 20) -> list[PeerInfo]:
    return closest_peers(key_of(TARGET), [p for p in HONEST if p != peer], k)


def test_a_path_of_droppers_does_not_hold_up_the_other_paths() -> None:
    """The closest seed is a liar naming 20 made-up peers nearer the key than anyone
    (PEERS[:20]), who never answer. The plain lookup asks them first and waits out
    their timeouts before it reaches the honest peers; over two paths, the liar feeds
    one path only, and the other reaches the honest closest peers at once."""
    liar, far = HONEST[-2], HONEST[-1]  # the liar is the closer seed
    fakes = PEERS[:20]
    seeds = [liar, far]

    def answer(peer: PeerInfo) -> list[PeerInfo] | None:
        if peer in fakes:
            return None
        return fakes if peer == liar else honest_answer(peer)

    truth = honest_answer(liar)
    plain = ClosestPeersLookup(TARGET, seeds, now=0, alpha=3, rpc_timeout=10)
    assert Driver(plain, answer).run(until=9) == 9  # waiting on the first made-up peers
    assert not set(truth) & set(plain.answered())
    disjoint = DisjointLookup(TARGET, seeds, now=0, paths=2, alpha=3, rpc_timeout=10)
    driver = Driver(disjoint, answer)
    assert driver.run(until=9) == 9  # the liar's path waits on the made-up peers...
    assert disjoint.paths[1].is_finished  # ...the other path is done
    assert set(truth) <= set(disjoint.paths[1].answered())
    driver.run()
    assert disjoint.result() == truth


def test_a_path_of_sybils_does_not_capture_the_other_paths() -> None:
    """The closest seed is a sybil: sybils sit nearer the key than any honest peer
    and name only each other. The plain lookup ends among them; over two paths, the
    second still reaches every one of the k closest honest peers."""
    sybils = PEERS[:20]
    liar, far = sybils[5], HONEST[-1]

    def answer(peer: PeerInfo) -> list[PeerInfo]:
        return [s for s in sybils if s != peer] if peer in sybils else honest_answer(peer)

    truth = honest_answer(far)
    plain = ClosestPeersLookup(TARGET, [liar, far], now=0)
    drive(plain, answer)
    assert plain.result() == sybils and not set(truth) & set(plain.answered())
    disjoint = DisjointLookup(TARGET, [liar, far], now=0, paths=2)
    drive(disjoint, answer)
    assert set(truth) <= set(disjoint.paths[1].answered())
    assert set(disjoint.paths[0].answered()) <= set(sybils)


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(4, 40),
    st.randoms(use_true_random=False),
)
def test_paths_stay_disjoint_on_any_small_network(
    paths: int, k: int, alpha: int, budget: int, rnd: random.Random
) -> None:
    """Random who-knows-whom graph, random failures, timeouts and answer order: no peer
    is asked twice, each path asks its own peers, in-flight and budgets hold, and the
    result is the k closest of what the paths heard."""
    budget = max(budget, paths)
    knows = {p.key: rnd.sample(PEERS, rnd.randrange(0, 10)) for p in PEERS}
    dead = {p.key for p in PEERS if rnd.random() < 0.2}
    me = PEERS[rnd.randrange(len(PEERS))]
    region_bits = rnd.choice([None, 0, 1, 2])
    lookup = DisjointLookup(
        TARGET,
        rnd.sample(PEERS, rnd.randrange(0, 12)),
        now=0,
        paths=paths,
        k=k,
        alpha=alpha,
        rpc_timeout=5,
        max_queries=budget,
        local_key=me.key,
        region_bits=region_bits,
        max_region=k + rnd.randrange(0, 6),
    )
    asked: set[bytes] = set()
    answered: set[bytes] = set()
    in_flight: dict[bytes, tuple[PeerInfo, float]] = {}
    now = 0.0
    for _ in range(10_000):
        sent = lookup.next_queries(now)
        keys = [p.key for p in sent]
        assert me.key not in keys and len(set(keys)) == len(keys) and not set(keys) & asked
        asked |= set(keys)
        in_flight |= {p.key: (p, now) for p in sent}
        for key in [k_ for k_, (_, at) in in_flight.items() if now - at >= 5]:
            del in_flight[key]  # timed out
        assert lookup.in_flight == len(in_flight) <= paths * alpha
        assert all(p.in_flight <= alpha for p in lookup.paths)
        if not in_flight:
            assert lookup.is_finished
            break
        peer, _ = in_flight.pop(rnd.choice(list(in_flight)))
        now += rnd.choice([0, 1, 3])
        if peer.key in dead:
            assert lookup.on_failure(peer, now)
        else:
            assert lookup.on_success(peer, knows[peer.key], now)
            answered.add(peer.key)
    assert lookup.is_finished
    each = [{p.key for p in path.answered()} for path in lookup.paths]
    assert sum(map(len, each)) == len(set().union(*each)) == len(answered)
    stats = lookup.stats
    assert stats.queries == len(asked) <= budget
    assert all(p.stats.queries <= p.max_queries for p in lookup.paths)
    assert stats.queries == stats.successes + stats.failures
    assert stats.successes == len(answered)
    result = lookup.result()
    assert result == by_distance(result) and {p.key for p in result} <= answered
    heard = by_distance([p for path in lookup.paths for p in path.answered()])
    assert result[:k] == heard[:k]
    assert len(result) <= lookup.max_region


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.randoms(use_true_random=False))
def test_one_path_is_the_plain_lookup(k: int, alpha: int, rnd: random.Random) -> None:
    """Fed the same answers in the same order, a one-path lookup asks the same peers at
    the same times and ends with the same result and counters."""
    knows = {p.key: rnd.sample(PEERS, rnd.randrange(0, 10)) for p in PEERS}
    dead = {p.key for p in PEERS if rnd.random() < 0.2}
    seeds = rnd.sample(PEERS, rnd.randrange(0, 12))
    me = rnd.choice(PEERS)
    region_bits = rnd.choice([None, 0, 1, 2])
    plain = ClosestPeersLookup(
        TARGET, seeds, now=0, k=k, alpha=alpha, rpc_timeout=5, max_queries=30,
        local_key=me.key, region_bits=region_bits, max_region=k + 3,
    )  # fmt: skip
    one = DisjointLookup(
        TARGET, seeds, now=0, paths=1, k=k, alpha=alpha, rpc_timeout=5, max_queries=30,
        local_key=me.key, region_bits=region_bits, max_region=k + 3,
    )  # fmt: skip
    in_flight: list[PeerInfo] = []
    now = 0.0
    while True:
        sent = plain.next_queries(now)
        assert one.next_queries(now) == sent
        assert one.is_finished == plain.is_finished and one.next_timeout() == plain.next_timeout()
        in_flight += sent
        if plain.is_finished:
            break
        if not in_flight:
            continue
        peer = in_flight.pop(rnd.randrange(len(in_flight)))
        now += rnd.choice([0, 1, 3, 6])
        if peer.key in dead:
            assert plain.on_failure(peer, now) == one.on_failure(peer, now)
        else:
            ok = plain.on_success(peer, knows[peer.key], now)
            assert one.on_success(peer, knows[peer.key], now) == ok
    assert one.result() == plain.result()
    assert one.stats == plain.stats
