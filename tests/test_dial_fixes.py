"""A peer stays reachable after a cancelled connection close and after a restart on another
port (p2pnet/net/dial_fixes.py): py-libp2p 0.8.1 alone fails both with "No valid
connections available" and "no addresses established a successful connection". A peer
restarted at once gets its own port back (p2pnet/net/host.py), also after a close cut
short (dial_fixes.py). And ``Host.connections``, which the DHT reads on every request,
describes each connection once."""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.identity import Identity
from p2pnet.errors import ConfigError
from p2pnet.net import host as host_module
from p2pnet.net.dial_fixes import close_connections_together
from p2pnet.net.host import Host, Stream, open_host
from p2pnet.net.identity import generate_identity

pytestmark = pytest.mark.network

ECHO = "/p2pnet-test/echo/1"


async def echo(stream: Stream) -> None:
    await stream.write(await stream.read())
    await stream.close()


def address(host: Host) -> PeerAddress:
    return PeerAddress(host.peer_id, tuple(transport_part(a) for a in host.addrs))


async def round_trip(client: Host, server: PeerAddress) -> bytes:
    stream = await client.open_stream(server, ECHO)
    await stream.write(b"ping")
    reply = await stream.read()
    await stream.close()
    return reply


def swarm_connections(host: Host, peer_id: str) -> list[Any]:
    return list(host._raw.get_network().connections.get(ID.from_base58(peer_id), []))


async def test_a_connection_whose_close_was_cancelled_does_not_block_new_streams() -> None:
    async with open_host(generate_identity()) as client, open_host(generate_identity()) as server:
        server.set_stream_handler(ECHO, echo)
        assert await round_trip(client, address(server)) == b"ping"
        [connection] = swarm_connections(client, server.peer_id)
        # A timeout fires while the connection closes: py-libp2p marks it closed at once
        # but leaves its table only at the end of a clean-up that sleeps twice.
        with trio.move_on_after(0.05):
            await connection.close()
        assert connection.is_closed
        assert await round_trip(client, address(server)) == b"ping"
        assert all(not c.is_closed for c in swarm_connections(client, server.peer_id))


async def test_a_peer_restarted_on_another_port_is_dialled_at_the_new_one() -> None:
    identity: Identity = generate_identity()
    async with open_host(generate_identity()) as client:
        for _ in range(2):  # the same identity, each time on a port of its own
            async with open_host(identity) as server:
                server.set_stream_handler(ECHO, echo)
                assert await round_trip(client, address(server)) == b"ping"
        known = client.peer_addrs(identity.peer_id)
        assert len(known) == 2  # both ports stay known; the caller's is dialled first


async def test_each_connection_is_described_once() -> None:
    async with open_host(generate_identity()) as client, open_host(generate_identity()) as server:
        server.set_stream_handler(ECHO, echo)
        assert await round_trip(client, address(server)) == b"ping"
        described = client.connections()
        assert [peer for peer, _ in described] == [server.peer_id]
        [connection] = swarm_connections(client, server.peer_id)

        def unreadable() -> list[Any]:
            raise AssertionError("the connection's addresses were read again")

        connection.get_transport_addresses = unreadable
        assert client.connections() == described


async def test_a_connection_that_closes_while_a_stream_is_being_opened_is_replaced() -> None:
    async with open_host(generate_identity()) as client, open_host(generate_identity()) as server:
        server.set_stream_handler(ECHO, echo)
        assert await round_trip(client, address(server)) == b"ping"
        [connection] = swarm_connections(client, server.peer_id)
        swarm: Any = client._raw.get_network()

        class ClosingSemaphore:
            """py-libp2p's stream semaphore, during whose wait the connection closes."""

            async def acquire(self) -> None:
                connection.event_closed.set()  # as a close cancelled before its clean-up
                swarm._stream_semaphore = None  # the next attempt waits for nothing

            def release(self) -> None:
                pass

        swarm._stream_semaphore = ClosingSemaphore()
        assert await round_trip(client, PeerAddress(server.peer_id, ())) == b"ping"
        assert connection not in swarm_connections(client, server.peer_id)


async def test_a_peer_restarted_at_once_gets_its_own_port_back() -> None:
    """The connections a stopping peer closes stay in TIME_WAIT on its port for 60 s; a
    restart on that port within them (the libp2p engine's churn does it after 60 s, a
    user at once) gets the port, and callers reach the peer at the address they know."""
    identity = generate_identity()
    async with open_host(generate_identity()) as client:
        async with open_host(identity) as server:
            server.set_stream_handler(ECHO, echo)
            before = address(server)
            assert await round_trip(client, before) == b"ping"
        async with open_host(identity, before.addrs) as server:
            server.set_stream_handler(ECHO, echo)
            assert address(server) == before
            assert await round_trip(client, before) == b"ping"


async def test_a_port_another_peer_listens_on_stays_refused() -> None:
    async with open_host(generate_identity()) as first:
        with pytest.raises(ConfigError, match="cannot listen"):
            async with open_host(generate_identity(), address(first).addrs):
                pass


async def test_a_host_whose_close_is_cut_short_stops_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """py-libp2p closes connections one by one before its listeners; a close cut short by
    the host's deadline (a peer with dozens of connections) left the port listening."""
    monkeypatch.setattr(host_module, "HOST_CLOSE_TIMEOUT", 0.2)
    async with open_host(generate_identity()) as client:
        async with open_host(generate_identity()) as server:
            server.set_stream_handler(ECHO, echo)
            assert await round_trip(client, address(server)) == b"ping"
            [connection] = swarm_connections(server, client.peer_id)

            async def slow_close() -> None:  # as closing dozens of connections
                await trio.sleep(10)

            connection.close = slow_close
            port = int(address(server).addrs[0].rsplit("/", 1)[1])
        with socket.socket() as probe:  # what a restart on the port does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


async def test_a_stopping_swarm_closes_its_connections_together() -> None:
    """Each connection's clean-up sleeps 0.1 s upstream; closed one after another, a peer
    with dozens of connections took seconds to stop. Here no close can end before every
    close has started: one after another, the first would wait for good."""
    started, everyone = 0, trio.Event()

    class Connection:
        async def close(self) -> None:
            nonlocal started
            started += 1
            if started == 3:
                everyone.set()
            await everyone.wait()

    swarm = SimpleNamespace(connections={"a": [Connection(), Connection()], "b": [Connection()]})
    with trio.fail_after(5):
        await close_connections_together(swarm)
    assert started == 3


async def test_a_host_with_many_connections_stops_and_its_peers_see_it() -> None:
    async with open_host(generate_identity()) as server:
        server.set_stream_handler(ECHO, echo)
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(open_host(generate_identity())) for _ in range(6)
            ]
            for client in clients:
                assert await round_trip(client, address(server)) == b"ping"
            assert len(server.connections()) == 6
            await server._raw.get_network().close()
            assert server.connections() == []
            for client in clients:  # each learns the connection is gone
                with trio.fail_after(5):
                    while server.peer_id in {peer for peer, _ in client.connections()}:
                        await trio.sleep(0.01)
