"""NAT traversal: reachability (AutoNAT), relayed dials (circuit relay v2), hole punching.

The loopback tests run everywhere. The namespace tests build a small internet with NAT
routers (tests/netns/harness.py) and run every peer as its own process inside it: a
public bootstrap peer (`p2pnet peer --role bootstrap`, DHT + relay) and two peers, each
behind its own MASQUERADE router. They need root, `ip` and `iptables`; they are skipped,
saying why, only where `ip netns add` fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import numpy as np
import pytest
import trio
from netns.harness import NetnsUnavailable, Process, Topology, start_agent, start_bootstrap

from p2pnet.core.address import PeerAddress
from p2pnet.discovery.service import RecordPublisher
from p2pnet.net.nat_config import NatConfig, Reachability
from p2pnet.peer import Peer

# -- loopback --------------------------------------------------------------------------


@pytest.mark.network
async def test_autonat_says_public_when_the_dial_back_reaches_us() -> None:
    async with Peer() as boot, Peer(bootstrap=boot.addrs) as peer:
        nat = peer.host.nat
        assert nat is not None
        with trio.fail_after(10):
            await nat.checked.wait()
        assert peer.reachability == "public"
        assert nat.public_addrs, "the address the dial-back reached"
        assert all("/p2p-circuit" not in a for a in peer.addrs)


@pytest.mark.network
async def test_autonat_dial_back_opens_a_new_connection(refused_port: int) -> None:
    # py-libp2p's own AutoNAT dials back with host.connect(), which returns the open
    # connection the request came on: every asker was told it is public. Ours must
    # reach the address given, and a closed port means private.
    async with Peer() as boot, Peer() as peer:
        nat = peer.host.nat
        assert nat is not None
        await peer.host.open_stream(PeerAddress(boot.peer_id, tuple(boot.addrs)), "/ipfs/id/1.0.0")
        nat._dial_back_candidates = lambda: [  # type: ignore[method-assign]
            multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{refused_port}")  # nothing listens there
        ]
        assert await nat.check_reachability([boot.peer_id]) is Reachability.PRIVATE


@pytest.mark.network
async def test_a_private_peer_is_called_through_its_relay_then_directly(
    models: dict[str, Path],
) -> None:
    relay_config = NatConfig(relay_service=True, reachability="public")
    async with Peer(nat=relay_config) as relay:
        hidden = Peer(bootstrap=relay.addrs, nat=NatConfig(reachability="private"))
        hidden.serve(models["iris"])
        async with hidden, Peer(nat=NatConfig(reachability="public")) as caller:
            await _called_through_relay_then_directly(relay, hidden, caller)


@pytest.mark.network
async def test_a_peer_that_serves_nothing_takes_no_relay_slot(models: dict[str, Path]) -> None:
    relay_config = NatConfig(relay_service=True, reachability="public")
    async with (
        Peer(nat=relay_config) as relay,
        Peer(bootstrap=relay.addrs, nat=NatConfig(reachability="private")) as client,
    ):
        assert not any("/p2p-circuit" in a for a in client.addrs)
        client.serve(models["iris"])  # now others must reach it: it reserves one
        with trio.fail_after(10):
            while not any("/p2p-circuit" in a for a in client.addrs):
                await trio.sleep(0.01)


@pytest.mark.network
async def test_a_private_peer_runs_the_dht_as_a_client(models: dict[str, Path]) -> None:
    relay_config = NatConfig(relay_service=True, reachability="public")
    async with Peer(nat=relay_config) as relay:
        hidden = Peer(bootstrap=relay.addrs, nat=NatConfig(reachability="private"))
        hidden.serve(models["iris"], tasks=["nat-iris"])
        async with hidden:
            with trio.fail_after(10):
                while hidden.status().dht_mode != "client":
                    await trio.sleep(0.01)
            caller = Peer(bootstrap=relay.addrs, nat=NatConfig(reachability="public"))
            async with caller:
                # Its model is found and called (through the relay)...
                with trio.fail_after(20):
                    while not (offers := await caller.find(task="nat-iris")):
                        await trio.sleep(0.1)
                assert offers[0].record.peer_id == hidden.peer_id
                x = np.zeros((1, 4), dtype=np.float32)
                outputs = await caller.invoke(
                    offers[0].address, offers[0].record.model_id, {"x": x}
                )
                assert outputs["probabilities"].shape == (1, 3)
                # ...but no routing table lists it: nobody would get an answer.
                for peer in (relay, caller):
                    assert hidden.peer_id not in {p.peer_id for p in peer.services.dht.table}
                assert hidden.services.dht.requests_served == 0


async def _called_through_relay_then_directly(relay: Peer, hidden: Peer, caller: Peer) -> None:
    """Given only its relayed address, the caller reaches ``hidden`` through ``relay``,
    then directly."""
    circuit = [a for a in hidden.addrs if "/p2p-circuit" in a]
    assert circuit == [f"{relay.addrs[0]}/p2p-circuit/p2p/{hidden.peer_id}"]
    # Given only the relayed address, the caller connects through the relay...
    address = PeerAddress(hidden.peer_id, (circuit[0].removesuffix(f"/p2p/{hidden.peer_id}"),))
    stream = await caller.host.open_stream(address, "/ipfs/id/1.0.0")
    await stream.close()
    assert caller.path(hidden.peer_id) == "relayed"
    # ...and the hidden peer upgrades the connection (here a plain dial back works).
    nat = hidden.host.nat
    assert nat is not None
    assert await nat.wait_direct(caller.peer_id, 15.0)
    assert caller.path(hidden.peer_id) == "direct"


def test_records_and_dht_keep_relayed_addresses(models: dict[str, Path]) -> None:
    from p2pnet.core.address import transport_part
    from p2pnet.net.identity import generate_identity
    from p2pnet.runtime.catalogue import ModelCatalogue
    from p2pnet.runtime.onnx_model import OnnxModel

    identity = generate_identity()
    me = identity.peer_id
    relay = generate_identity().peer_id
    circuit = f"/ip4/10.77.0.2/tcp/4001/p2p/{relay}/p2p-circuit"
    assert transport_part(f"{circuit}/p2p/{me}") == circuit
    assert transport_part(circuit) == circuit
    assert transport_part(f"/ip4/10.0.0.1/tcp/1/p2p/{me}") == "/ip4/10.0.0.1/tcp/1"
    catalogue = ModelCatalogue(me)
    info = catalogue.add(OnnxModel.load(models["iris"]), ["iris-species"])
    publisher = RecordPublisher(
        catalogue, identity, lambda: [f"{circuit}/p2p/{me}", f"/ip4/10.80.0.2/tcp/4001/p2p/{me}"]
    )
    assert publisher.record(info.model_id).addrs == (circuit, "/ip4/10.80.0.2/tcp/4001")


# -- network namespaces ---------------------------------------------------------------


def _topology(*nats: str) -> Topology:
    try:
        return Topology.create(nats)
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")


def _wait_reachability(agent: Process, verdict: str, timeout: float = 10.0) -> dict[str, Any]:
    """The agent's info once AutoNAT gave ``verdict`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        info = agent.request({"op": "info"})
        if info["reachability"] == verdict or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


@dataclass
class NatSwarm:
    """A public bootstrap peer and two agents, one behind each NAT router of ``topo``;
    ``ready_a`` and ``ready_b`` are the agents' ready lines."""

    topo: Topology
    a: Process
    ready_a: dict[str, Any]
    b: Process
    ready_b: dict[str, Any]


@pytest.fixture
def nat_swarm(models: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., NatSwarm]]:
    """Starts a ``NatSwarm`` behind routers of the kinds given; its processes are stopped
    and its namespaces deleted at the end of the test, whatever happened."""
    procs: list[Process] = []
    topologies: list[Topology] = []

    def start(*nats: str) -> NatSwarm:
        topo = _topology(*nats)
        topologies.append(topo)
        boot, boot_addr = start_bootstrap(topo.boot, str(tmp_path / "config"))
        procs.append(boot)
        agents = []
        for node, model, task in zip(
            topo.natted, ("iris", "identity"), ("nat-iris", "nat-echo"), strict=True
        ):
            agent, ready = start_agent(
                node,
                "--listen", f"/ip4/{node.ip}/tcp/4001",
                "--bootstrap", boot_addr,
                "--serve", str(models[model]),
                "--task", task,
            )  # fmt: skip
            procs.append(agent)
            agents.append((agent, ready))
        (a, ready_a), (b, ready_b) = agents
        return NatSwarm(topo, a, ready_a, b, ready_b)

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()
        for topo in topologies:
            topo.close()


@pytest.mark.slow
def test_two_peers_behind_nats_call_each_other_relayed_then_direct(
    nat_swarm: Callable[..., NatSwarm],
) -> None:
    swarm = nat_swarm("cone", "cone")
    a, ready_a, b, ready_b = swarm.a, swarm.ready_a, swarm.b, swarm.ready_b
    for agent in (a, b):
        info = _wait_reachability(agent, "private")
        assert info["reachability"] == "private"
        assert "/p2p-circuit/" in info["addrs"][0], "the relayed address comes first"

    # Each finds the other's model through the DHT and calls it.
    ab = a.request({"op": "call", "task": "nat-echo", "x": [1.0, 2.0, 3.0]})
    ba = b.request({"op": "call", "task": "nat-iris", "x": [[5.1, 3.5, 1.4, 0.2]]})
    assert ab["peer"] == ready_b["peer_id"] and ba["peer"] == ready_a["peer_id"]
    # The first connection between them went through the relay; hole punching
    # then gave a direct one, which later calls use.
    upgraded = a.request({"op": "wait_direct", "peer": ready_b["peer_id"], "timeout": 15})
    assert upgraded["direct"], upgraded
    assert upgraded["history"][0] == "relayed"
    assert "direct" in upgraded["history"]
    again = a.request({"op": "call", "task": "nat-echo", "x": [4.0]})
    assert again["path"] == "direct"
    back = b.request({"op": "call", "task": "nat-iris", "x": [[6.0, 3.0, 4.8, 1.8]]})
    assert back["path"] == "direct"


@pytest.mark.slow
def test_calls_go_through_the_relay_when_hole_punching_is_blocked(
    nat_swarm: Callable[..., NatSwarm],
) -> None:
    # Behind the symmetric NAT every connection gets a random port: the address the
    # other peer dials for the hole punch is never the mapped one.
    swarm = nat_swarm("cone", "symmetric")
    a, b, ready_b = swarm.a, swarm.b, swarm.ready_b
    ab = a.request({"op": "call", "task": "nat-echo", "x": [1.0, 2.0]})
    assert ab["path"] == "relayed"
    ba = b.request({"op": "call", "task": "nat-iris", "x": [[5.1, 3.5, 1.4, 0.2]]})
    assert ba["path"] == "relayed"
    stuck = a.request({"op": "wait_direct", "peer": ready_b["peer_id"], "timeout": 6})
    assert not stuck["direct"] and stuck["history"] == ["relayed"]
    again = a.request({"op": "call", "task": "nat-echo", "x": np.arange(3.0).tolist()})
    assert again["path"] == "relayed"


@pytest.mark.slow
def test_a_peer_behind_a_port_forward_announces_its_public_address(
    nat_swarm: Callable[..., NatSwarm],
) -> None:
    # The peer listens on its LAN address; only identify tells it its public IP. The
    # AutoNAT dial-back at that IP with its listen port succeeds (port 4001 is
    # forwarded), so it announces that address, and no relay.
    swarm = nat_swarm("forwarded", "cone")
    a, ready_a, b = swarm.a, swarm.ready_a, swarm.b
    info = _wait_reachability(a, "public")
    assert info["reachability"] == "public"
    public = f"/ip4/{swarm.topo.natted[0].public_ip}/tcp/4001/p2p/{ready_a['peer_id']}"
    assert info["addrs"][0] == public, info["addrs"]
    assert not any("/p2p-circuit" in addr for addr in info["addrs"])
    # Others find it at that address, and end up connected directly. (A peer that
    # joined the DHT while it was still unsure may reach it through the relay
    # first: the peer it went through may still name the relayed address.)
    offers = b.request({"op": "find", "task": "nat-iris"})["offers"]
    assert offers[0]["addrs"][0] == public.removesuffix(f"/p2p/{ready_a['peer_id']}")
    ba = b.request({"op": "call", "task": "nat-iris", "x": [[5.1, 3.5, 1.4, 0.2]]})
    assert ba["peer"] == ready_a["peer_id"]
    direct = b.request({"op": "wait_direct", "peer": ready_a["peer_id"], "timeout": 10})
    assert direct["direct"], direct
