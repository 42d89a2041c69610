"""The DHT node's defences against sybils near a key, over the in-memory network in
virtual time: region store and lookup, the density detector, IP-group limits, the node's
counters."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from trio.testing import MockClock

from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.diversity import DiversityLimits
from p2pnet.core.kad.keys import PeerInfo, key_for_task, key_of
from p2pnet.core.kad.wire import KadPeer, MessageType
from p2pnet.dht.node import DhtConfig, DhtDefences, DhtNode, DhtStats
from p2pnet.net.memory import MemoryNetwork
from p2pnet.simulate.adversaries import SybilAnswers, grind_peer_ids
from tests.sybil_swarms import TARGET, swarm_with_sybils

OTHER = key_for_task("translation")


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MemoryNetwork(latency=0.01, seed=3) as net:
        yield net


async def discovery(nodes: list[DhtNode], key: bytes) -> float:
    provider = nodes[1]
    await provider.provide(key)
    found = 0
    for node in nodes[2:]:
        result = await node.find_providers(key, count=1)
        found += any(p.peer_id == provider.host.peer_id for p in result.providers)
    return found / len(nodes[2:])


@pytest.mark.slow
async def test_the_region_finds_providers_that_sybils_hide(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    nodes = (await swarm_with_sybils(network, 80, 25, DhtDefences(region=False))).honest
    assert await discovery(nodes, TARGET) < 0.5
    async with MemoryNetwork(latency=0.01, seed=3) as other:
        nodes = (await swarm_with_sybils(other, 80, 25, DhtDefences())).honest
        assert await discovery(nodes, TARGET) > 0.95


@pytest.mark.slow
async def test_the_detector_flags_lookups_near_sybils_and_counts_them(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await swarm_with_sybils(network, 80, 25, DhtDefences())
    nodes, seen = swarm.honest, swarm.lookups
    seen.clear()
    for node in nodes[2:]:
        await node.find_closest(TARGET)
        await node.find_closest(OTHER)
    judged = {key: [r.density for _, k, r in seen if k == key] for key in (TARGET, OTHER)}
    assert all(v is not None for v in judged[TARGET] + judged[OTHER])
    flagged = {key: sum(v.suspicious for v in vs if v) / len(vs) for key, vs in judged.items()}
    assert flagged[TARGET] > 0.9
    assert flagged[OTHER] < 0.25  # one key, judged by every node: alarms are correlated
    stats = nodes[5].stats
    assert stats.density_checked >= 2 and stats.density_alarms >= 1
    assert 40 < stats.network_size < 210  # 105 peers in all


@pytest.mark.slow
async def test_counters_of_provides_and_lookups(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await swarm_with_sybils(network, 30, 0, DhtDefences())
    nodes, seen = swarm.honest, swarm.lookups
    before = nodes[1].stats.provide_messages
    assert await nodes[1].provide(OTHER) >= 20
    assert nodes[1].stats.provides == 1
    assert nodes[1].stats.provide_messages - before >= 20 + 20  # lookup, then ADD_PROVIDER
    result = await nodes[7].find_providers(OTHER, count=1)
    assert nodes[7].stats.lookups == 1
    assert nodes[7].stats.lookup_messages == result.stats.queries > 0
    assert seen[-1] == (MessageType.GET_PROVIDERS, OTHER, result)
    assert result.density is None  # it stopped at the first provider: nothing to judge


@dataclass
class LiarsLookup:
    found: set[str]  # peer IDs the lookup returned
    liars: set[str]
    honest_closest: set[str]  # the 5 honest peers closest to TARGET, the asker apart
    liars_in_table: int  # of the asker
    stats: DhtStats  # of the asker


async def lookup_near_liars(diversity: DiversityLimits | None) -> LiarsLookup:
    """30 honest nodes, each in an IP group of its own, and 6 liars in one group, ground
    next to TARGET, that answer its lookups with each other; the last honest node looks
    TARGET up (without the region, to see the limits alone)."""
    config = DhtConfig(defences=DhtDefences(region=False, diversity=diversity))
    groups: dict[str, frozenset[str]] = {}

    def group_of(peer: PeerInfo) -> frozenset[str]:
        return groups.get(peer.peer_id, frozenset())

    async with MemoryNetwork(latency=0.01, seed=5) as net:
        honest = [
            DhtNode(net.add_host(), config, rng=random.Random(i), group_of=group_of)
            for i in range(30)
        ]
        answers = SybilAnswers(TARGET, config.k)
        liars = [
            DhtNode(net.add_host(pid), config, rng=random.Random(-i), intercept=answers)
            for i, pid in enumerate(grind_peer_ids(TARGET, 6, 8, random.Random(9)))
        ]
        answers.fellows = tuple(KadPeer(n.host.peer_id, tuple(n.host.addrs)) for n in liars)
        for i, node in enumerate(honest):
            groups[node.host.peer_id] = frozenset({f"ip4:20.{i}"})
        for node in liars:
            groups[node.host.peer_id] = frozenset({"ip4:66.6"})
        for node in honest + liars:
            node.start()
        first = PeerAddress(honest[0].host.peer_id, tuple(honest[0].host.addrs))
        for node in honest[1:] + liars:
            await node.bootstrap([first])
        asker = honest[-1]
        result = await asker.find_closest(TARGET)
        liar_ids = {n.host.peer_id for n in liars}
        by_distance = sorted(honest[:-1], key=lambda n: n.local.kad_key ^ key_of(TARGET))
        return LiarsLookup(
            {p.peer_id for p in result.peers},
            liar_ids,
            {n.host.peer_id for n in by_distance[:5]},
            sum(1 for p in asker.table if p.peer_id in liar_ids),
            asker.stats,
        )


async def test_an_answer_naming_more_than_three_peers_of_one_ip_group_is_not_believed(
    autojump_clock: MockClock,
) -> None:
    """Without limits the liars are what the lookup finds; with them an honest table takes
    at most 3 of the liars, their answers (naming all 6, of one group) are dropped, and the
    lookup ends on the honest peers closest to TARGET."""
    unlimited = await lookup_near_liars(None)
    assert unlimited.found & unlimited.liars and unlimited.stats.diversity_dropped_replies == 0
    limited = await lookup_near_liars(DiversityLimits())
    assert not limited.found & limited.liars and limited.honest_closest <= limited.found
    assert limited.stats.diversity_dropped_replies >= 1 and limited.liars_in_table <= 3
    assert limited.stats.diversity_refused >= 1 and unlimited.stats.diversity_refused == 0
