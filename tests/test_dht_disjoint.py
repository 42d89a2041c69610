"""A DHT node's lookups over disjoint paths (``DhtDefences.paths``), on the in-memory
network in virtual time: a liar on the path holds up a one-path lookup, not the
others; the setting in config.toml and in scenarios."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from p2pnet.config import DhtSettings, load_dht
from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.keys import PeerInfo, key_for_task, key_of
from p2pnet.core.kad.lookup import DEFAULT_LOOKUP_PATHS
from p2pnet.core.kad.wire import KadPeer
from p2pnet.dht.node import DhtConfig, DhtDefences, DhtNode
from p2pnet.errors import ConfigError
from p2pnet.net.memory import MemoryNetwork
from p2pnet.simulate.adversaries import MisbehavingHost, SybilAnswers, grind_peer_ids
from p2pnet.simulate.scenario import ScenarioError, parse_scenario
from tests.sybil_swarms import swarm_with_sybils

TARGET = key_for_task("sentiment-analysis")


def info(node: DhtNode) -> PeerInfo:
    return PeerInfo(node.host.peer_id, node.local.key, tuple(node.host.addrs))


@pytest.mark.slow
async def test_disjoint_paths_find_providers_past_a_liar_that_holds_up_one_path(
    autojump_clock: MockClock,
) -> None:
    """60 honest nodes, one of them a provider of TARGET. A liar, nearer the key than
    anyone the searcher knows (and answering first: 1 ms away, the others 10 ms),
    answers lookups of TARGET with 20 peers nearer still that take requests and never
    answer. The searcher knows the liar and three honest nodes that joined after the
    announcement, so hold no provider record. With one path, the liar's peers take
    every request slot (closest first) until the lookup's 10 s are up; with four, the
    liar feeds one path and the three others reach the provider's record."""
    rng = random.Random(11)
    (liar_id,) = grind_peer_ids(TARGET, 1, 8, rng)

    def latency(src: str, dst: str) -> float:
        return 0.001 if liar_id in (src, dst) else 0.01

    async with MemoryNetwork(latency=latency, seed=5) as network:
        await _search_past_a_liar(network, liar_id, rng)


async def _search_past_a_liar(network: MemoryNetwork, liar_id: str, rng: random.Random) -> None:
    honest = [DhtNode(network.add_host(), rng=random.Random(i)) for i in range(60)]
    for node in honest:
        node.start()
    first = PeerAddress(honest[0].host.peer_id, tuple(honest[0].host.addrs))
    for node in honest[1:]:
        await node.bootstrap([first])
    for node in honest:
        await node.refresh(trio.current_time(), everything=True)
    provider = honest[1]
    assert await provider.provide(TARGET) > 0
    unaware = [DhtNode(network.add_host(), rng=random.Random(-i)) for i in range(1, 4)]
    for node in unaware:
        node.start()
        await node.bootstrap([first])

    droppers = [
        DhtNode(MisbehavingHost(network.add_host(pid), "dropper"))
        for pid in grind_peer_ids(TARGET, 20, 16, rng)
    ]
    for node in droppers:
        node.start()
    answers = SybilAnswers(TARGET, 20)
    answers.fellows = tuple(KadPeer(n.host.peer_id, tuple(n.host.addrs)) for n in droppers)
    liar = DhtNode(network.add_host(liar_id), intercept=answers)
    liar.start()
    assert all(not n.providers.get(TARGET, trio.current_time()) for n in unaware)
    target = key_of(TARGET)
    assert all(liar.local.kad_key ^ target < n.local.kad_key ^ target for n in unaware)

    async def search(paths: int) -> list[str]:
        searcher = DhtNode(network.add_host(), DhtConfig(defences=DhtDefences(paths=paths)))
        for known in (liar, *unaware):
            searcher.table.update(info(known), trio.current_time())
        result = await searcher.find_providers(TARGET, count=1, timeout=10.0)
        return [p.peer_id for p in result.providers]

    assert await search(paths=1) == []
    assert await search(paths=4) == [provider.host.peer_id]


def test_paths_come_from_config_toml_and_scenarios(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert load_dht(config) == DhtSettings()  # no file: the default
    assert DhtSettings().paths == DhtDefences().paths == DEFAULT_LOOKUP_PATHS
    config.write_text("[dht]\npaths = 4\n")
    assert load_dht(config).paths == 4
    for bad, says in (
        ("paths = 0", "paths must be a whole number from 1 to 16"),
        ("paths = 2.5", "paths must be"),
        ("colour = 1", "unknown key 'colour'"),
    ):
        config.write_text(f"[dht]\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            load_dht(config)
    assert parse_scenario({}).dht.paths == DEFAULT_LOOKUP_PATHS
    assert parse_scenario({"dht": {"paths": 8}}).dht.paths == 8
    with pytest.raises(ScenarioError, match=r"dht.paths = 0 is out of range 1..16"):
        parse_scenario({"dht": {"paths": 0}})
    with pytest.raises(ValueError, match="paths must be at least 1"):
        DhtDefences(paths=0)


@pytest.mark.slow
async def test_without_the_region_paths_find_what_sybils_hide_only_by_asking_widely(
    autojump_clock: MockClock,
) -> None:
    """Region off, 80 nodes, 25 sybils on TARGET: the provider's announcement goes to
    the 20 closest peers its lookup heard from, sybils all, over one path or four. Over
    four, lookups still find the provider: the paths the sybils do not capture ask the
    honest peers around the key, the provider among them, which answers with its own
    record. (docs/security.md, "Disjoint lookup paths": why this does not scale.)"""
    found: dict[int, float] = {}
    for paths in (1, 4):
        async with MemoryNetwork(latency=0.01, seed=3) as network:
            defences = DhtDefences(region=False, paths=paths)
            swarm = await swarm_with_sybils(network, 80, 25, defences)
            nodes, sybils = swarm.honest, swarm.sybil_ids
            provider = nodes[1]
            announced_to = (await provider.find_closest(TARGET)).peers
            assert {p.peer_id for p in announced_to} <= sybils
            await provider.provide(TARGET)
            finders = nodes[2:]
            hits = 0
            for node in finders:
                result = await node.find_providers(TARGET, count=1)
                hits += [p.peer_id for p in result.providers] == [provider.host.peer_id]
            # Long after the announcement: no honest peer but the provider holds it.
            holders = [n for n in nodes if n.providers.get(TARGET, trio.current_time())]
            assert holders == [provider]
            found[paths] = hits / len(finders)
    assert found[1] < 0.1 and found[4] > 0.8
