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

from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.keys import key_for_model, key_for_task
from p2pnet.core.kad.store import ValueStore
from p2pnet.core.kad.wire import KadMessage, KadPeer, KadRecord, MessageType, encode_kad_message
from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.records import (
    CapabilityRecord,
    CapabilityRecordValidator,
    record_key,
    sign_record,
)
from p2pnet.core.schema import ModelSchema
from p2pnet.dht.node import KAD_PROTOCOL, DhtConfig, DhtNode
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
    assert await swarm.nodes[5].provide(TASK_KEY) == 20
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
    assert await clients[0].provide(TASK_KEY) == 20  # ...announces through it...
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
    assert 0 < len(closest) <= 20
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
    assert await publisher.put_value(key, value) == 20
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
