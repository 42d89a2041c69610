"""The DHT node over the in-memory network, in virtual time (trio's autojump clock)."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio.testing import MockClock

from p2pnet import Peer
from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.keys import PeerInfo, key_for_model, key_for_task
from p2pnet.core.kad.store import ValueStore
from p2pnet.core.kad.wire import (
    KadMessage,
    KadMessageReader,
    KadPeer,
    KadRecord,
    MessageType,
    encode_kad_message,
    peer_id_bytes,
)
from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.records import (
    CapabilityRecord,
    CapabilityRecordValidator,
    record_key,
    sign_record,
)
from p2pnet.core.schema import ModelSchema
from p2pnet.dht.node import KAD_PROTOCOL, DhtConfig, DhtNode, KadOverride
from p2pnet.errors import ConnectionLostError, ForgedRecordError
from p2pnet.net.interfaces import ByteStream
from p2pnet.net.memory import MemoryHost, MemoryNetwork

MODEL = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
TASK_KEY = key_for_task("sentiment-analysis")


@dataclass
class Swarm:
    network: MemoryNetwork
    hosts: list[MemoryHost]
    nodes: list[DhtNode]

    def address(self, i: int) -> PeerAddress:
        return PeerAddress(self.hosts[i].peer_id, tuple(self.hosts[i].addrs))


async def build_swarm(network: MemoryNetwork, n: int, config: DhtConfig = DhtConfig()) -> Swarm:
    """n nodes; each joins through node 0, one after another."""
    hosts = [network.add_host() for _ in range(n)]
    nodes = [DhtNode(h, config, rng=random.Random(i)) for i, h in enumerate(hosts)]
    for node in nodes:
        node.start()
    swarm = Swarm(network, hosts, nodes)
    for node in nodes[1:]:
        await node.bootstrap([swarm.address(0)])
    return swarm


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    """A network with 10 ms one-way latency. Tests that use it also take ``autojump_clock``
    (pytest-trio only sees a clock among a test's own arguments), so they run in virtual
    time."""
    async with MemoryNetwork(latency=0.01, seed=7) as net:
        yield net


@pytest.mark.slow
async def test_every_peer_finds_a_provider_in_few_hops(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 200)
    assert await swarm.nodes[5].provide(TASK_KEY) >= 20  # the k closest and the key's region
    hops = []
    for i, node in enumerate(swarm.nodes):
        result = await node.find_providers(TASK_KEY, count=1)
        assert [p.peer_id for p in result.providers] == [swarm.hosts[5].peer_id], i
        hops.append(result.stats.hops)
    assert max(hops) <= math.log2(200)


async def test_providers_come_with_dialable_addresses(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 30)
    await swarm.nodes[3].provide(key_for_model(MODEL))
    (provider,) = (await swarm.nodes[20].find_providers(key_for_model(MODEL), count=1)).providers
    assert provider.addrs == tuple(a.partition("/p2p/")[0] for a in swarm.hosts[3].addrs)


@pytest.mark.slow
async def test_lookups_route_around_crashed_peers(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 150)
    for node in swarm.nodes[1:150:10]:  # ~10% die without a word
        node.host.crash()  # type: ignore[attr-defined]
    await swarm.nodes[2].provide(TASK_KEY)
    alive = [n for n in swarm.nodes if n.host.alive]  # type: ignore[attr-defined]
    found = [
        any(
            p.peer_id == swarm.hosts[2].peer_id
            for p in (await n.find_providers(TASK_KEY, 1)).providers
        )
        for n in alive
    ]
    assert all(found)


async def test_a_node_full_of_others_announcements_for_a_key_still_announces_it(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 30)
    full = swarm.nodes[3]
    for other in swarm.nodes[4 : 4 + full.providers.max_providers_per_key]:
        full.providers.add(TASK_KEY, other.local, trio.current_time(), 3600.0)
    assert await full.provide(TASK_KEY) > 0
    found = (await swarm.nodes[20].find_providers(TASK_KEY, count=30)).providers
    assert full.host.peer_id in {p.peer_id for p in found}


async def test_a_lookup_stalled_by_silent_peers_returns_what_it_found_by_its_timeout(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 60)
    await swarm.nodes[2].provide(TASK_KEY)

    async def silent(stream: ByteStream) -> None:
        await trio.sleep_forever()  # takes the request, never answers

    for node in swarm.nodes[10:60:2]:  # every other peer stops answering
        node.host.set_stream_handler(KAD_PROTOCOL, silent)
    asker = swarm.nodes[11]
    start = trio.current_time()
    stalled = await asker.find_providers(TASK_KEY, count=20)  # waits on the silent ones
    assert trio.current_time() - start >= DhtConfig().rpc_timeout
    start = trio.current_time()
    bounded = await asker.find_providers(TASK_KEY, count=20, timeout=1.0)
    assert trio.current_time() - start <= 1.0 + 1e-9
    assert [p.peer_id for p in bounded.providers] == [swarm.hosts[2].peer_id]
    assert [p.peer_id for p in stalled.providers] == [swarm.hosts[2].peer_id]


async def test_announcements_expire_unless_republished(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    config = DhtConfig(provider_ttl=100.0, republish_interval=60.0, maintenance_interval=10.0)
    swarm = await build_swarm(network, 40, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(swarm.nodes[1].run_maintenance)
        await swarm.nodes[1].provide(TASK_KEY)
        await swarm.nodes[2].provide(TASK_KEY)
        swarm.hosts[2].crash()  # node 2 stops republishing
        await trio.sleep(250)  # well past the TTL: only node 1 renewed its announcement
        for node in swarm.nodes[3:]:
            node.providers.expire(trio.current_time())
        found = (await swarm.nodes[30].find_providers(TASK_KEY, count=5)).providers
        assert [p.peer_id for p in found] == [swarm.hosts[1].peer_id]
        nursery.cancel_scope.cancel()


async def test_client_mode_peers_use_the_dht_but_stay_out_of_routing_tables(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 30)
    clients = []
    for i in range(5):  # peers nobody could dial back (behind NATs)
        host = network.add_host()
        node = DhtNode(host, DhtConfig(client=True), rng=random.Random(100 + i))
        node.start()
        await node.bootstrap([swarm.address(i)])
        assert len(node.table) > 0  # it knows the swarm...
        clients.append(node)
    # ...announces through it (to the k closest and the key's region: in a network
    # this small, everyone)...
    assert await clients[0].provide(TASK_KEY) >= 20
    found = await clients[1].find_providers(TASK_KEY, count=1)  # ...and looks up through it
    assert [p.peer_id for p in found.providers] == [clients[0].host.peer_id]
    client_ids = {c.host.peer_id for c in clients}
    for node in swarm.nodes:  # but no server ever lists a client
        assert not client_ids & {p.peer_id for p in node.table}
    await swarm.nodes[0].find_closest(clients[2].host.peer_id.encode())
    assert network.streams_opened > 0 and not any(c.requests_served for c in clients)
    # A server that turns out unreachable switches: its handler goes, new peers skip it.
    late = swarm.nodes[29]
    late.become_client()
    served = late.requests_served
    newcomer = DhtNode(network.add_host(), DhtConfig(), rng=random.Random(200))
    newcomer.start()
    await newcomer.bootstrap([swarm.address(0)])
    await late.find_closest(newcomer.local.key)  # late's requests reach the newcomer
    assert newcomer.requests_served > 0
    assert late.host.peer_id not in {p.peer_id for p in newcomer.table}
    assert late.requests_served == served


async def _send_raw(host: MemoryHost, target: PeerAddress, data: bytes) -> bytes | str:
    """Send raw bytes on a kad stream; what came back: bytes, "reset", or "nothing"."""
    stream = await host.open_stream(target, KAD_PROTOCOL)
    await stream.write(data)
    with trio.move_on_after(1):
        try:
            return await stream.read()
        except ConnectionLostError:
            return "reset"
    return "nothing"


async def test_a_peer_cannot_announce_another_peer(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 5)
    liar = network.add_host()
    forged = KadMessage(
        MessageType.ADD_PROVIDER,
        TASK_KEY,
        provider_peers=(KadPeer(swarm.hosts[3].peer_id, ("/memory/3",)),),
    )
    await _send_raw(liar, swarm.address(0), encode_kad_message(forged))
    assert swarm.nodes[0].providers.get(TASK_KEY, trio.current_time()) == []
    assert swarm.nodes[0].requests_dropped == 1


async def test_add_provider_flood_is_rate_limited(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    config = DhtConfig(add_provider_rate=1.0, add_provider_burst=5.0)
    swarm = await build_swarm(network, 3, config)
    flooder = network.add_host()
    keys = [key_for_task(f"task-{i}") for i in range(50)]
    announce = b"".join(
        encode_kad_message(
            KadMessage(MessageType.ADD_PROVIDER, k, provider_peers=(KadPeer(flooder.peer_id),))
        )
        for k in keys
    )
    await _send_raw(flooder, swarm.address(0), announce)
    stored = [k for k in keys if swarm.nodes[0].providers.get(k, trio.current_time())]
    assert len(stored) == 5


async def test_malformed_bytes_reset_the_stream_and_the_node_keeps_serving(
    network: MemoryNetwork,
) -> None:
    swarm = await build_swarm(network, 10)
    attacker = network.add_host()
    assert await _send_raw(attacker, swarm.address(0), b"\x05\xff\xff\xff\xff\xff") == "reset"
    assert await _send_raw(attacker, swarm.address(0), b"\xff" * 12) == "reset"
    await swarm.nodes[4].provide(TASK_KEY)
    assert (await swarm.nodes[0].find_providers(TASK_KEY, 1)).providers


async def test_ping_and_find_node_answers(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 25)
    closest = (await swarm.nodes[0].find_closest(TASK_KEY)).peers
    assert 0 < len(closest) <= 24  # in a network this small, the region is everyone
    assert await swarm.nodes[0].ping(closest[0])
    swarm.hosts[
        next(i for i, h in enumerate(swarm.hosts) if h.peer_id == closest[0].peer_id)
    ].crash()
    assert not await swarm.nodes[0].ping(closest[0])


@pytest.mark.slow
async def test_thousand_peers(network: MemoryNetwork, autojump_clock: MockClock) -> None:
    swarm = await build_swarm(network, 1000)
    await swarm.nodes[999].provide(TASK_KEY)
    rng = random.Random(3)
    results = [
        await swarm.nodes[rng.randrange(1000)].find_providers(TASK_KEY, 1) for _ in range(100)
    ]
    assert all(r.providers for r in results)
    assert max(r.stats.hops for r in results) <= math.log2(1000)


def _signed_record(identity_seed: int, seq: int = 1) -> tuple[str, bytes, bytes]:
    """A real Ed25519 identity's peer ID, the DHT key of its record of MODEL, the record."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([identity_seed]) * 32)
    peer_id = peer_id_from_public_key(key.public_key().public_bytes_raw())
    record = CapabilityRecord(
        model_id=MODEL, peer_id=peer_id, schema=ModelSchema((), ()), tasks=("sentiment-analysis",),
        name="m", version="1", runtime="onnxruntime", addrs=(), seq=seq, expires_at=2**40,
    )  # fmt: skip
    return peer_id, record_key(MODEL, peer_id), sign_record(record, key)


async def test_put_and_get_signed_records(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    validator = CapabilityRecordValidator(lambda: 1_000.0)
    swarm = await build_swarm(network, 30)
    for node in swarm.nodes:
        node.validator, node.values = validator, ValueStore(validator)
    peer_id, key, value = _signed_record(7)
    publisher = DhtNode(network.add_host(peer_id), validator=validator)
    publisher.start()
    await publisher.bootstrap([swarm.address(0)])
    assert await publisher.put_value(key, value) >= 20  # the k closest and the region
    assert await swarm.nodes[17].get_value(key) == value
    _, _, newer = _signed_record(7, seq=2)
    await publisher.put_value(key, newer)
    assert await swarm.nodes[3].get_value(key) == newer
    assert await swarm.nodes[3].get_value(record_key(MODEL, swarm.hosts[1].peer_id)) is None


async def test_forged_and_misfiled_values_are_not_stored(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    validator = CapabilityRecordValidator(lambda: 1_000.0)
    swarm = await build_swarm(network, 3)
    for node in swarm.nodes:
        node.validator, node.values = validator, ValueStore(validator)
    _, key, value = _signed_record(9)
    forged = value[:-1] + bytes([value[-1] ^ 1])
    attacker = network.add_host()
    for k, v in [(key, forged), (b"/p2pnet/record/other", value), (b"/elsewhere/x", value)]:
        put = KadMessage(MessageType.PUT_VALUE, k, KadRecord(k, v))
        assert await _send_raw(attacker, swarm.address(0), encode_kad_message(put)) == "reset"
    assert swarm.nodes[0].values is not None and len(swarm.nodes[0].values) == 0
    with pytest.raises(ForgedRecordError):
        await DhtNode(attacker, validator=validator).put_value(key, forged)


async def test_idle_inbound_streams_are_closed_and_requesters_reconnect(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 3, DhtConfig(stream_idle_timeout=60.0))
    asker = network.add_host()
    stream = await asker.open_stream(swarm.address(0), KAD_PROTOCOL)
    await stream.write(encode_kad_message(KadMessage(MessageType.PING)))
    assert await stream.read()  # the PING echoed
    started = trio.current_time()
    assert await stream.read() == b""  # then closed by the server, idle
    assert 59.9 < trio.current_time() - started < 61.0
    # A node whose pooled stream was closed that way still reaches the peer.
    node = swarm.nodes[1]
    peer = next(p for p in node.table if p.peer_id == swarm.hosts[0].peer_id)
    assert await node.ping(peer)
    await trio.sleep(120)
    assert await node.ping(peer)


# --- Addresses: only where a provider is seen; only those of the requester's scope ------------


async def _announce_then_ping(host: MemoryHost, target: PeerAddress, announce: KadMessage) -> None:
    """Send ``announce`` (no response in the spec), then a PING on the same stream: once the
    PING comes back, the announcement has been handled."""
    stream = await host.open_stream(target, KAD_PROTOCOL)
    await stream.write(
        encode_kad_message(announce) + encode_kad_message(KadMessage(MessageType.PING))
    )
    assert await stream.read()
    await stream.close()


async def test_a_provider_announcing_another_peer_s_address_has_it_dropped(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    swarm = await build_swarm(network, 5)
    liar = network.add_host()
    victim = swarm.hosts[3].addrs[0].partition("/p2p/")[0]
    own = liar.addrs[0].partition("/p2p/")[0]
    announce = KadMessage(
        MessageType.ADD_PROVIDER, TASK_KEY, provider_peers=(KadPeer(liar.peer_id, (victim, own)),)
    )
    await _announce_then_ping(liar, swarm.address(0), announce)
    (stored,) = swarm.nodes[0].providers.get(TASK_KEY, trio.current_time())
    assert (stored.peer_id, stored.addrs) == (liar.peer_id, (own,))
    # Announcing only someone else's address leaves the provider with none of them.
    liar2 = network.add_host()
    only_victim = KadMessage(
        MessageType.ADD_PROVIDER, TASK_KEY, provider_peers=(KadPeer(liar2.peer_id, (victim,)),)
    )
    await _announce_then_ping(liar2, swarm.address(0), only_victim)
    found = await swarm.nodes[1].find_providers(TASK_KEY, count=5)
    by_peer = {p.peer_id: p.addrs for p in found.providers}
    assert by_peer[liar2.peer_id] == ()
    assert victim not in {a for addrs in by_peer.values() for a in addrs}


class SeenAtHost:
    """A memory host whose connections report the IP addresses a test says each peer is
    seen at (the memory network has no IPs), as a libp2p host reports them; ``claimed``:
    the addresses peers told of themselves (identify, on a libp2p host)."""

    def __init__(
        self,
        host: MemoryHost,
        seen_at: dict[str, str],
        claimed: dict[str, list[str]] | None = None,
    ) -> None:
        self._host = host
        self.seen_from = seen_at
        self.claimed = claimed or {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    def connections(self) -> list[tuple[str, str]]:
        return sorted((p, self.seen_from.get(p, a)) for p, a in self._host.connections())

    def seen_at(self, peer_id: str) -> list[str]:
        return [a for p, a in self.connections() if p == peer_id]

    def peer_addrs(self, peer_id: str) -> list[str]:
        return self.claimed.get(peer_id) or self._host.peer_addrs(peer_id)


async def _ask(host: MemoryHost, target: PeerAddress, request: KadMessage) -> KadMessage:
    stream = await host.open_stream(target, KAD_PROTOCOL)
    await stream.write(encode_kad_message(request))
    reader = KadMessageReader()
    while (message := reader.next_message()) is None:
        reader.receive_data(await stream.read())
    await stream.close()
    return message


async def test_private_addresses_are_not_given_to_a_public_requester(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    lan_provider, public_asker, lan_asker, local_asker = (network.add_host() for _ in range(4))
    seen = {
        lan_provider.peer_id: "/ip4/192.168.1.5/tcp/50123",
        public_asker.peer_id: "/ip4/93.184.216.20/tcp/40000",
        lan_asker.peer_id: "/ip4/192.168.1.9/tcp/40000",
        local_asker.peer_id: "/ip4/127.0.0.1/tcp/40000",
    }
    node = DhtNode(SeenAtHost(network.add_host(), seen))  # type: ignore[arg-type]
    node.start()
    lan_addr = "/ip4/192.168.1.5/tcp/4001"
    relayed = f"/ip4/8.8.4.4/tcp/1/p2p/{network.add_host().peer_id}/p2p-circuit"
    announce = KadMessage(
        MessageType.ADD_PROVIDER,
        TASK_KEY,
        provider_peers=(
            KadPeer(lan_provider.peer_id, (lan_addr, "/ip4/203.0.113.1/tcp/1", relayed)),
        ),
    )
    await _announce_then_ping(lan_provider, PeerAddress(node.host.peer_id), announce)
    get = KadMessage(MessageType.GET_PROVIDERS, TASK_KEY)
    answers = {
        asker: (await _ask(asker, PeerAddress(node.host.peer_id), get)).provider_peers
        for asker in (public_asker, lan_asker, local_asker)
    }
    assert answers[public_asker] == (KadPeer(lan_provider.peer_id, (relayed,)),)
    assert answers[lan_asker] == (KadPeer(lan_provider.peer_id, (lan_addr, relayed)),)
    assert answers[local_asker] == (KadPeer(lan_provider.peer_id, (lan_addr, relayed)),)


async def test_find_node_answers_give_each_requester_its_scope(network: MemoryNetwork) -> None:
    node = DhtNode(network.add_host())
    peers = {
        "loopback": "/ip4/127.0.0.1/tcp/4001",
        "lan": "/ip4/10.0.0.7/tcp/4001",
        "cgnat": "/ip4/100.64.0.7/tcp/4001",
        "public": "/ip4/93.184.216.7/tcp/4001",
    }
    ids = {}
    for seed, (name, addr) in enumerate(peers.items(), start=1):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        ids[name] = peer_id_from_public_key(key.public_key().public_bytes_raw())
        node.table.update(PeerInfo(ids[name], peer_id_bytes(ids[name]), (addr,)), 0.0)
    names = {v: k for k, v in ids.items()}
    request = KadMessage(MessageType.FIND_NODE, TASK_KEY)

    def named(seen_at: tuple[str, ...]) -> set[str]:
        answer = node.answer(request, "12D3KooWStranger", 0.0, seen_at=seen_at)
        assert answer is not None
        for peer in answer.closer_peers:
            assert peer.addrs == (peers[names[peer.peer_id]],)
        return {names[p.peer_id] for p in answer.closer_peers}

    assert named(("/ip4/93.184.216.99/tcp/1",)) == {"public"}
    assert named(("/ip4/10.0.0.99/tcp/1",)) == {"lan", "cgnat", "public"}
    assert named(("/ip4/127.0.0.1/tcp/1",)) == set(peers)
    assert named(("/memory/1",)) == set(peers)  # no IP: the memory network, unfiltered


@pytest.mark.network
async def test_a_loopback_swarm_keeps_its_provider_addresses() -> None:
    async with (
        Peer(listen=["/ip4/127.0.0.1/tcp/0"], nat=None) as boot,
        Peer(listen=["/ip4/127.0.0.1/tcp/0"], nat=None, bootstrap=[boot.addrs[0]]) as provider,
        Peer(listen=["/ip4/127.0.0.1/tcp/0"], nat=None, bootstrap=[boot.addrs[0]]) as finder,
    ):
        assert await provider.services.dht.provide(TASK_KEY) > 0
        found = await finder.services.dht.find_providers(TASK_KEY, count=1)
        (seen,) = found.providers
        assert seen.peer_id == provider.peer_id
        assert seen.addrs == tuple(a.partition("/p2p/")[0] for a in provider.addrs)
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in seen.addrs)


async def test_a_public_responder_cannot_send_a_finder_into_its_own_lan(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    fakes = [peer_id_from_public_key(bytes([i]) * 32) for i in range(1, 4)]
    lan_provider, lan_peer, public_peer = fakes
    lies = {
        MessageType.GET_PROVIDERS: KadMessage(
            MessageType.GET_PROVIDERS,
            TASK_KEY,
            provider_peers=(
                KadPeer(lan_provider, ("/ip4/192.168.1.1/tcp/22", "/ip4/8.8.8.8/tcp/4001")),
            ),
        ),
        MessageType.FIND_NODE: KadMessage(
            MessageType.FIND_NODE,
            TASK_KEY,
            closer_peers=(
                KadPeer(lan_peer, ("/ip4/10.0.0.1/tcp/80", "/ip4/127.0.0.1/tcp/80")),
                KadPeer(public_peer, ("/ip4/8.8.4.4/tcp/4001",)),
            ),
        ),
    }
    responder = DhtNode(
        network.add_host(), intercept=lambda request, sender: KadOverride(lies[request.type])
    )
    responder.start()
    seen = {responder.host.peer_id: "/ip4/93.184.216.1/tcp/4001"}
    finder = DhtNode(SeenAtHost(network.add_host(), seen))  # type: ignore[arg-type]
    finder.table.update(PeerInfo(responder.host.peer_id, responder.local.key, ()), 0.0)
    found = await finder.find_providers(TASK_KEY, count=1)
    assert [(p.peer_id, p.addrs) for p in found.providers] == [
        (lan_provider, ("/ip4/8.8.8.8/tcp/4001",))
    ]
    closest = await finder.find_closest(TASK_KEY)
    assert closest.stats.queries == 2  # the responder, then only the public peer
    assert closest.stats.failures == 1  # the public peer: nobody there on this network


async def test_the_routing_table_keeps_a_peer_only_where_it_is_seen(
    network: MemoryNetwork, autojump_clock: MockClock
) -> None:
    honest, liar = network.add_host(), network.add_host()
    seen = {honest.peer_id: "/ip4/8.8.8.8/tcp/50000", liar.peer_id: "/ip4/8.8.4.4/tcp/50000"}
    claimed = {
        honest.peer_id: ["/ip4/8.8.8.8/tcp/4001", "/ip4/192.168.1.2/tcp/4001"],
        liar.peer_id: ["/ip4/1.1.1.1/tcp/53"],  # somebody else's server
    }
    node = DhtNode(SeenAtHost(network.add_host(), seen, claimed))  # type: ignore[arg-type]
    node.start()
    for host in (honest, liar):
        DhtNode(host).start()  # both serve the DHT: only addresses keep them out
        await _ask(host, PeerAddress(node.host.peer_id), KadMessage(MessageType.PING))
    assert {p.peer_id: p.addrs for p in node.table} == {honest.peer_id: ("/ip4/8.8.8.8/tcp/4001",)}


async def test_upkeep_after_the_nodes_nursery_closed_is_dropped_not_raised() -> None:
    # A lookup of a stopped peer can finish in its caller's task and learn of a full
    # bucket; the ping it would start has no nursery left to run in.
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        node = DhtNode(network.add_host(), DhtConfig(), nursery=nursery)
    started: list[str] = []

    async def upkeep() -> None:
        started.append("ran")

    node._spawn(upkeep)
    assert started == []
