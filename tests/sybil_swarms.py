"""DHT nodes on the in-memory network with sybils ground next to a key, for the tests of
the DHT's defences (region, detector, disjoint paths)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import trio

from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.keys import key_for_task
from p2pnet.core.kad.wire import KadPeer, MessageType
from p2pnet.dht.node import DhtConfig, DhtDefences, DhtNode, LookupResult
from p2pnet.net.memory import MemoryNetwork
from p2pnet.simulate.adversaries import SybilAnswers, grind_peer_ids

TARGET = key_for_task("sentiment-analysis")


@dataclass
class SybilSwarm:
    """The honest nodes, the sybils' peer IDs, and what the honest nodes' lookups
    reported (in order)."""

    honest: list[DhtNode]
    sybil_ids: set[str]
    lookups: list[tuple[MessageType, bytes, LookupResult]]


async def swarm_with_sybils(
    network: MemoryNetwork, honest: int, sybils: int, defences: DhtDefences
) -> SybilSwarm:
    """``honest`` nodes and ``sybils`` bare nodes with IDs ground near TARGET that hide
    its providers; all join through node 0, then every honest node refreshes once.
    Every node joins with a full lookup in every bucket (``join_bucket_fill=None``), so
    that the sybils, which do not refresh, are in every table they can get into: the
    attack at its strongest, as docs/security.md measured it."""
    config = DhtConfig(defences=defences, join_bucket_fill=None)
    lookups: list[tuple[MessageType, bytes, LookupResult]] = []

    def observe(kind: MessageType, key: bytes, result: LookupResult) -> None:
        lookups.append((kind, key, result))

    nodes = [
        DhtNode(network.add_host(), config, rng=random.Random(i), observe_lookup=observe)
        for i in range(honest)
    ]
    answers = SybilAnswers(TARGET, config.k)
    bits = honest.bit_length() + 3
    bad = [
        DhtNode(network.add_host(pid), config, rng=random.Random(-i), intercept=answers)
        for i, pid in enumerate(grind_peer_ids(TARGET, sybils, bits, random.Random(9)))
    ]
    answers.fellows = tuple(KadPeer(n.host.peer_id, tuple(n.host.addrs)) for n in bad)
    for node in nodes + bad:
        node.start()
    first = PeerAddress(nodes[0].host.peer_id, tuple(nodes[0].host.addrs))
    for node in nodes[1:] + bad:
        await node.bootstrap([first])
    for node in nodes:  # a second round, as maintenance would: every table is full
        await node.refresh(trio.current_time(), everything=True)
    return SybilSwarm(nodes, {n.host.peer_id for n in bad}, lookups)
