"""Regions and the density detector (p2pnet.core.kad.region), and the region lookup
against sybils ground next to a key, on a simulated network of routing tables."""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, common_prefix_length, key_of
from p2pnet.core.kad.lookup import ClosestPeersLookup
from p2pnet.core.kad.region import (
    SizeEstimator,
    density_verdict,
    estimate_network_size,
    expected_prefix_lengths,
    in_region,
    region_prefix_bits,
)
from p2pnet.core.kad.routing import RoutingTable

K = 20


def random_ids(rng: random.Random, n: int) -> list[Key]:
    return [Key(rng.getrandbits(KEY_BITS)) for _ in range(n)]


def ground_near(rng: random.Random, key: Key, bits: int, count: int) -> list[Key]:
    """IDs sharing ``bits`` leading bits with ``key``, as an attacker grinds them."""
    top = key >> (KEY_BITS - bits) << (KEY_BITS - bits)
    return [Key(top | rng.getrandbits(KEY_BITS - bits)) for _ in range(count)]


def nearest(key: Key, ids: list[Key], k: int = K) -> list[Key]:
    return heapq.nsmallest(k, (p for p in ids if p != key), key=lambda p: p ^ key)


def closest_cpls(key: Key, ids: list[Key], k: int = K) -> list[int]:
    return [common_prefix_length(key, p) for p in nearest(key, ids, k)]


@pytest.mark.parametrize("n", [100, 1000, 10_000])
def test_network_size_estimate_from_the_closest_peers(n: int) -> None:
    rng = random.Random(n)
    ids = random_ids(rng, n)
    estimates = sorted(estimate_network_size(me, nearest(me, ids)) or 0.0 for me in ids[:60])
    assert 0.8 * n < estimates[30] < 1.25 * n  # the median
    assert estimates[6] > 0.5 * n and estimates[54] < 2 * n  # 10th and 90th percentiles


def test_estimate_needs_three_peers() -> None:
    assert estimate_network_size(Key(0), [Key(1), Key(2)]) is None
    evenly = [Key(i << 250) for i in (1, 2, 3)]  # at 1/64, 2/64, 3/64: N + 1 = 64
    assert estimate_network_size(Key(0), evenly) == pytest.approx(63)


@given(st.floats(min_value=1.0, max_value=1e9), st.floats(min_value=1.0, max_value=10.0))
def test_region_bits_grow_with_the_network(n: float, factor: float) -> None:
    assert region_prefix_bits(n) <= region_prefix_bits(n * factor)
    assert region_prefix_bits(n) == 0 or n / 2 ** region_prefix_bits(n) > K


@pytest.mark.parametrize("n", [300, 1000, 5000])
def test_a_region_holds_k_to_2k_peers_on_average(n: int) -> None:
    rng = random.Random(n)
    ids = random_ids(rng, n)
    bits = region_prefix_bits(n)
    sizes = [sum(in_region(key, p, bits) for p in ids) for key in random_ids(rng, 40)]
    assert K <= sum(sizes) / len(sizes) <= 2 * K + 5


@given(st.floats(min_value=30.0, max_value=1e7))
def test_expected_prefix_lengths_are_a_distribution(n: float) -> None:
    shares = expected_prefix_lengths(n)
    assert all(s >= -1e-12 for s in shares)
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)


@given(
    st.floats(min_value=30.0, max_value=1e6),
    st.lists(st.integers(min_value=0, max_value=KEY_BITS), min_size=1, max_size=K),
)
def test_divergence_is_never_negative(n: float, cpls: list[int]) -> None:
    verdict = density_verdict(n, cpls)
    assert verdict.divergence >= 0.0
    assert verdict.suspicious == (verdict.divergence > 0.94)
    assert verdict.peers == len(cpls)


def test_no_peers_cannot_be_judged() -> None:
    with pytest.raises(ValueError):
        density_verdict(1000.0, [])


@pytest.mark.parametrize("n", [300, 1000, 10_000])
def test_detector_false_alarms_and_detection(n: int) -> None:
    """Judged against the size each peer estimates from its own neighbourhood: honest
    keys raise under 10% false alarms, 30 sybils at log2(N) + 6 bits are always caught
    and 15 at log2(N) + 2 bits nearly always."""
    rng = random.Random(n + 1)
    ids = random_ids(rng, n)
    alarms = caught = caught_few = 0
    trials = 100
    for t in range(trials):
        me = ids[t]
        size = estimate_network_size(me, nearest(me, ids))
        assert size is not None
        key = Key(rng.getrandbits(KEY_BITS))
        alarms += density_verdict(size, closest_cpls(key, ids)).suspicious
        sybils = ground_near(rng, key, n.bit_length() + 6, 30)
        caught += density_verdict(size, closest_cpls(key, ids + sybils)).suspicious
        few = ground_near(rng, key, n.bit_length() + 2, 15)
        caught_few += density_verdict(size, closest_cpls(key, ids + few)).suspicious
    assert alarms / trials < 0.10
    assert caught == trials
    assert caught_few / trials > 0.9


@pytest.mark.parametrize("n", [300, 3000])
def test_the_median_of_lookups_estimates_halves_the_false_alarms(n: int) -> None:
    """A peer that judges keys against the median of its last lookups' estimates
    (``SizeEstimator``) raises fewer false alarms than against its own neighbourhood's
    single estimate, and still catches every 30 sybils at log2(N) + 6 bits."""
    rng = random.Random(n + 7)
    ids = random_ids(rng, n)
    single = median = caught = 0
    trials = 80
    for t in range(trials):
        me = ids[t]
        own = estimate_network_size(me, nearest(me, ids))
        sizes = SizeEstimator()
        for _ in range(15):
            probe = Key(rng.getrandbits(KEY_BITS))
            sizes.add(probe, nearest(probe, ids))
        size = sizes.value()
        assert own is not None and size is not None
        key = Key(rng.getrandbits(KEY_BITS))
        cpls = closest_cpls(key, ids)
        single += density_verdict(own, cpls).suspicious
        median += density_verdict(size, cpls).suspicious
        sybils = ground_near(rng, key, n.bit_length() + 6, 30)
        caught += density_verdict(size, closest_cpls(key, ids + sybils)).suspicious
    assert median / trials < 0.03
    assert median <= single
    assert caught == trials


def test_size_estimator_answers_the_median_of_what_it_kept() -> None:
    sizes = SizeEstimator(keep=3)
    assert sizes.value() is None
    assert sizes.add(Key(0), [Key(1), Key(2)]) is None  # too few peers: nothing kept
    assert sizes.samples == 0
    for n_plus_1 in (64, 128, 32, 256):  # peers evenly at i / (N + 1)
        spacing = KEY_BITS - n_plus_1.bit_length() + 1
        sizes.add(Key(0), [Key(i << spacing) for i in (1, 2, 3)])
    assert sizes.samples == 3  # the oldest (63) dropped
    assert sizes.value() == pytest.approx(127)  # median of 127, 31, 255
    with pytest.raises(ValueError):
        SizeEstimator(keep=0)


# --- the region lookup against sybils, on routing tables --------------------------------


def _peer(i: int, rng: random.Random) -> PeerInfo:
    return PeerInfo(f"p{i}", b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(32))


def _sybil(i: int, target: Key, bits: int, rng: random.Random) -> PeerInfo:
    while True:
        peer = PeerInfo(f"s{i}", b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(32))
        if common_prefix_length(peer.kad_key, target) >= bits:
            return peer


def _lookup_finds_honest_region(region: bool, n: int = 300, sybils: int = 30) -> float:
    """Share of lookups from honest peers whose result names an honest peer of the
    target's region, when ``sybils`` surround the target and answer with each other only."""
    rng = random.Random(5)
    target = b"/p2pnet/task/sentiment-analysis"
    tkey = key_of(target)
    honest = [_peer(i, rng) for i in range(n)]
    bits = n.bit_length() + 1  # 2**bits tries each: cheap here, and well inside the region
    bad = [_sybil(i, tkey, bits, rng) for i in range(sybils)]
    everyone = honest + bad
    tables: dict[bytes, RoutingTable] = {}
    for peer in honest:
        table = RoutingTable(peer.key, k=K)
        for other in rng.sample(everyone, len(everyone)):
            table.update(other, 0.0)  # a full bucket keeps its first peers
        tables[peer.key] = table
    sybil_keys = {p.key for p in bad}
    honest_region = {p.key for p in honest if in_region(tkey, p.kad_key, region_prefix_bits(n))}
    found = 0
    askers = honest[:60]
    for asker in askers:
        table = tables[asker.key]
        neighbours = [p.kad_key for p in table.closest(asker.kad_key)]
        size = estimate_network_size(asker.kad_key, neighbours)
        assert size is not None
        lookup = ClosestPeersLookup(
            target,
            table.closest(tkey),
            now=0.0,
            k=K,
            local_key=asker.key,
            region_bits=region_prefix_bits(size) if region else None,
        )
        while not lookup.is_finished:
            for peer in lookup.next_queries(0.0):
                if peer.key in sybil_keys:
                    lookup.on_success(peer, [p for p in bad if p.key != peer.key], 0.0)
                else:
                    lookup.on_success(peer, tables[peer.key].closest(tkey), 0.0)
        found += any(p.key in honest_region for p in lookup.result())
    return found / len(askers)


@pytest.mark.slow
def test_region_lookup_reaches_honest_peers_that_sybils_hide() -> None:
    without, with_region = _lookup_finds_honest_region(False), _lookup_finds_honest_region(True)
    print(f"honest region reached: {without:.0%} without, {with_region:.0%} with the region")
    assert without < 0.5
    assert with_region > 0.95


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=12), st.integers(min_value=0, max_value=2**32))
def test_region_lookup_asks_every_region_peer_it_learns_of(bits: int, seed: int) -> None:
    """With every peer known from the start and all answering, the lookup asks the k
    closest and every peer of the region (up to ``max_region``), and no one else."""
    rnd = random.Random(seed)
    peers = [_peer(i, rnd) for i in range(120)]
    target = b"key"
    tkey = key_of(target)
    lookup = ClosestPeersLookup(
        target, peers, now=0.0, k=K, alpha=3, region_bits=bits, max_region=60
    )
    asked: list[PeerInfo] = []
    while not lookup.is_finished:
        for peer in lookup.next_queries(0.0):
            asked.append(peer)
            lookup.on_success(peer, [], 0.0)
    ranked = heapq.nsmallest(len(peers), peers, key=lambda p: p.kad_key ^ tkey)
    region = [p for p in ranked if in_region(tkey, p.kad_key, bits)]
    want = max(K, min(60, len(region)))
    assert {p.key for p in asked} == {p.key for p in ranked[:want]}
    assert lookup.result() == ranked[:want]
