"""Joins that retry (docs/networking.md, "Joining"): real Peers on the in-memory network,
in virtual time (pytest-trio's ``autojump_clock``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from memory_peers import memory_peer

from p2pnet import Peer
from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.join import JoinPolicy
from p2pnet.dht.node import DhtConfig
from p2pnet.net.identity import generate_identity
from p2pnet.net.memory import MemoryNetwork
from p2pnet.simulate.adversaries import MisbehavingHost
from p2pnet.status import JoinState, PeerStatus

WALL = 1_800_000_000.0  # the peers' wall clock: fixed, so status times can be checked


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MemoryNetwork(latency=0.01, seed=3) as network:
        yield network


async def wait_joined(peer: Peer) -> None:
    """Until ``peer``'s routing table holds a peer (in virtual time: no real wait)."""
    while not len(peer.services.dht.table):
        await trio.sleep(0.1)


async def test_a_dropper_first_does_not_hold_the_join(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    dropper_id = generate_identity()
    dropper = Peer(
        dropper_id, host=MisbehavingHost(network.add_host(dropper_id.peer_id), "dropper")
    )
    async with dropper, memory_peer(network) as honest, memory_peer(network) as other:
        await other.join([_address(honest)])
        start = trio.current_time()
        async with memory_peer(
            network, bootstrap=[dropper.addrs[0], honest.addrs[0]], clock=lambda: WALL
        ) as joiner:
            took = trio.current_time() - start
            assert len(joiner.services.dht.table) >= 1
            # The dropper was asked at the same time as the honest peer, for the join
            # timeout at most: not for a full RPC timeout before the next one is asked.
            assert took < DhtConfig().rpc_timeout
            assert took >= JoinPolicy().request_timeout  # it did wait for the dropper
            status = joiner.status()
            assert status.join is not None and status.join.state == "joined"


async def test_a_useless_answer_sends_the_peer_on_to_the_next(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    # The first bootstrap peer is alone: it answers, naming nobody. The second knows a
    # swarm. One at a time, the joiner must not stop at the first.
    async with (
        memory_peer(network) as lonely,
        memory_peer(network) as hub,
        memory_peer(network) as member,
    ):
        await member.join([_address(hub)])
        async with memory_peer(
            network,
            bootstrap=[lonely.addrs[0], hub.addrs[0]],
            joining=JoinPolicy(per_attempt=1),
        ) as joiner:
            known = {p.peer_id for p in joiner.services.dht.table}
            assert {hub.peer_id, member.peer_id} <= known


async def test_a_peer_alone_keeps_trying_and_joins_once_its_bootstrap_peer_appears(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    identity = generate_identity()
    later_host = network.add_host(identity.peer_id)  # there, but no peer runs on it yet
    address = later_host.addrs[0]
    async with memory_peer(network, bootstrap=[address], clock=lambda: WALL) as alone:
        status = alone.status()
        assert status.routing_table == 0
        assert status.join is not None
        assert status.join.state == "alone"
        # Alone since it started, a request's time ago on the (fixed) wall clock.
        assert status.join.alone_since is not None
        assert WALL - JoinPolicy().request_timeout <= status.join.alone_since < WALL
        assert status.join.attempts == 1
        assert status.join.next_attempt_in is not None and status.join.next_attempt_in > 0
        assert PeerStatus.from_dict(status.to_dict()) == status

        await trio.sleep(100.0)  # minutes alone: it has kept asking, backing off
        status = alone.status()
        assert status.join is not None and status.join.state == "alone"
        assert 5 <= status.join.attempts <= 8  # 1 s doubling: not every second
        assert status.join.next_attempt_in is not None
        assert status.join.next_attempt_in <= JoinPolicy().max_backoff

        async with Peer(identity, host=later_host):
            with trio.fail_after(JoinPolicy().max_backoff + 10):
                await wait_joined(alone)
            assert alone.status().join == JoinState("joined", attempts=status.join.attempts + 1)


async def test_a_peer_left_alone_rejoins_through_a_peer_it_learned(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    async with _joined_through_first(network) as (first, second, joiner):
        assert second.peer_id in {p.peer_id for p in joiner.services.dht.table}
        await trio.sleep(JoinPolicy().check_interval * 2)  # it remembers some peers
        # Everyone it knows is forgotten, and its bootstrap peer is gone.
        network_host = first.host
        assert hasattr(network_host, "crash")
        network_host.crash()
        table = joiner.services.dht.table
        for peer in list(table):
            table.remove(peer)
        with trio.fail_after(JoinPolicy().max_backoff + 20):
            await wait_joined(joiner)
        assert second.peer_id in {p.peer_id for p in table}


async def test_a_joined_peer_whose_table_empties_rejoins_at_once(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    async with _joined_through_first(network) as (first, second, joiner):
        dht, table = joiner.services.dht, joiner.services.dht.table
        assert len(table) == 2
        # Cut off, its lookups fail until the routing table drops everyone.
        network.partition([joiner.peer_id], [first.peer_id, second.peer_id])
        while len(table):
            await dht.find_closest(b"any key")
        network.heal()
        # The DHT tells the peer its table emptied: it rejoins at once (or, had it asked
        # before the heal, after one request timeout and its first backoff), not at
        # its next once-a-minute relearning.
        policy = JoinPolicy()
        with trio.fail_after(policy.request_timeout + policy.first_backoff * 3):
            await wait_joined(joiner)
        assert {first.peer_id, second.peer_id} <= {p.peer_id for p in table}


@asynccontextmanager
async def _joined_through_first(
    network: MemoryNetwork,
) -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    """Two peers of a swarm (the second joined through the first), and a third that
    joined through the first."""
    async with memory_peer(network) as first, memory_peer(network) as second:
        await second.join([_address(first)])
        async with memory_peer(network, bootstrap=[first.addrs[0]]) as joiner:
            yield first, second, joiner


def _address(peer: Peer) -> PeerAddress:
    return parse_peer_address(peer.addrs[0])
