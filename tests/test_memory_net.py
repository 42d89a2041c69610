"""The in-memory network: stream semantics, simulated time, faults, and the real invoke stack on it.

Most tests run on pytest-trio's ``autojump_clock``, so the latencies below cost no real
time and elapsed virtual time can be compared exactly.
"""

from __future__ import annotations

import logging
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import multiaddr
import numpy as np
import pytest
import trio
import trio.testing
from libp2p.peer.id import ID

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.kad.keys import key_of
from p2pnet.core.peer_id import is_valid_peer_id
from p2pnet.errors import ConnectionLostError, PeerUnreachableError, UnknownModelError
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.local import LocalInvoker
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.invoke.server import InvokeServer
from p2pnet.net.interfaces import ByteStream
from p2pnet.net.memory import MemoryHost, MemoryNetwork
from p2pnet.runtime.onnx_model import OnnxModel

ECHO = "/test/echo/1.0.0"
SINK = "/test/sink/1.0.0"
L = 0.025  # one-way latency used by most tests


async def echo(stream: ByteStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close()


async def read_all(stream: ByteStream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


def address(host: MemoryHost) -> PeerAddress:
    return parse_peer_address(host.addrs[0])


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MemoryNetwork(latency=L, seed=7) as network:
        yield network


@pytest.fixture
def pair(network: MemoryNetwork) -> tuple[MemoryHost, MemoryHost]:
    a, b = network.add_host(), network.add_host()
    b.set_stream_handler(ECHO, echo)
    return a, b


# --- basics ---------------------------------------------------------------------------


async def test_echo_round_trip(
    autojump_clock: trio.testing.MockClock, pair: tuple[MemoryHost, MemoryHost]
) -> None:
    a, b = pair
    stream = await a.open_stream(address(b), ECHO)
    assert stream.peer_id == b.peer_id
    await stream.write(b"hello")
    assert await stream.read() == b"hello"
    await stream.close()
    assert await stream.read() == b""
    assert a.connection_count(b.peer_id) == b.connection_count(a.peer_id) == 1
    assert a.peer_addrs(b.peer_id) == [f"/memory/{b.addrs[0].split('/')[2]}"]


async def test_latency_is_respected(
    autojump_clock: trio.testing.MockClock, pair: tuple[MemoryHost, MemoryHost]
) -> None:
    a, b = pair
    start = trio.current_time()
    stream = await a.open_stream(address(b), ECHO)
    opened = trio.current_time()
    assert opened - start == pytest.approx(2 * L)  # open_rtts=1: one round trip
    await stream.write(b"x")
    assert await stream.read() == b"x"
    assert trio.current_time() - opened == pytest.approx(2 * L)


async def test_first_open_pays_the_connection_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork(latency=L, open_rtts=0.5, connect_rtts=3) as network:
        a, b = network.add_host(), network.add_host()
        for host in (a, b):
            host.set_stream_handler(ECHO, echo)
        start = trio.current_time()
        await a.open_stream(address(b), ECHO)
        assert trio.current_time() - start == pytest.approx(3.5 * 2 * L)
        for src, dst in ((a, b), (b, a)):  # the connection serves both directions
            start = trio.current_time()
            await src.open_stream(address(dst), ECHO)
            assert trio.current_time() - start == pytest.approx(0.5 * 2 * L)


async def test_per_pair_latency_function(autojump_clock: trio.testing.MockClock) -> None:
    far: set[str] = set()
    async with MemoryNetwork(latency=lambda src, dst: 0.2 if dst in far else 0.01) as network:
        a, near, remote = network.add_host(), network.add_host(), network.add_host()
        far.add(remote.peer_id)
        for host in (near, remote):
            host.set_stream_handler(ECHO, echo)
        for host, one_way_out in ((near, 0.01), (remote, 0.2)):
            stream = await a.open_stream(address(host), ECHO)
            start = trio.current_time()
            await stream.write(b"x")
            await stream.read()
            assert trio.current_time() - start == pytest.approx(one_way_out + 0.01)


async def test_a_time_grain_rounds_arrivals_up_to_its_multiples(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delays = iter([0.0101, 0.0101, 0.0123, 0.0102, 0.0119, 0.0301, 0.001])
    reads: list[tuple[float, bytes]] = []
    done = trio.Event()

    async def record(stream: ByteStream) -> None:
        while data := await stream.read():
            reads.append((trio.current_time(), data))
        done.set()

    async with MemoryNetwork(latency=lambda src, dst: next(delays), time_grain=0.01) as net:
        a, b = net.add_host(), net.add_host()
        b.set_stream_handler(SINK, record)
        stream = await a.open_stream(address(b), SINK)  # a round trip of 0.0202 s
        opened = trio.current_time()
        assert opened == pytest.approx(0.03)
        # Three writes whose delays (0.0123, 0.0102, 0.0119) end in the same grain
        # arrive together, in order, and one read takes all three.
        for data in (b"a", b"b", b"c"):
            await stream.write(data)
        await trio.sleep(0.03)
        await stream.write(b"d")  # at opened + 0.03, 0.0301 s: due at opened + 0.0601
        await stream.close()
        await done.wait()
    assert reads == [(pytest.approx(opened + 0.02), b"abc"), (pytest.approx(opened + 0.07), b"d")]
    with pytest.raises(ValueError, match="time_grain"):
        MemoryNetwork(time_grain=-1)


async def test_order_is_kept_under_random_latency(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(3)
    async with MemoryNetwork(latency=lambda src, dst: rng.uniform(0, 0.1)) as network:
        a, b = network.add_host(), network.add_host()
        b.set_stream_handler(ECHO, echo)
        stream = await a.open_stream(address(b), ECHO)
        sent = [f"{i};".encode() for i in range(2000)]
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for chunk in sent:
                    await stream.write(chunk)
                    if rng.random() < 0.1:
                        await trio.sleep(rng.uniform(0, 0.05))
                await stream.close()

            nursery.start_soon(send)
            assert await read_all(stream) == b"".join(sent)


async def test_reads_coalesce_arrived_writes_up_to_one_mebibyte(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    a, b = network.add_host(), network.add_host()
    received: list[bytes] = []
    done = trio.Event()

    async def sink(stream: ByteStream) -> None:
        await trio.sleep(1)  # let everything arrive first
        received.extend([await stream.read(), await stream.read(), await stream.read()])
        done.set()

    b.set_stream_handler(SINK, sink)
    stream = await a.open_stream(address(b), SINK)
    for part in (b"ab", b"cd", b"\0" * (3 << 19)):
        await stream.write(part)
    await stream.close()
    await done.wait()
    assert received == [b"abcd", b"\0" * (1 << 20), b"\0" * (1 << 19)]


# --- end of stream, reset ---------------------------------------------------------------


async def test_close_ends_one_direction_only(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    a, b = network.add_host(), network.add_host()
    server_saw: list[bytes] = []

    async def request_reply(stream: ByteStream) -> None:
        server_saw.append(await read_all(stream))  # ends when the caller closes
        await stream.write(b"reply after your close")
        await stream.close()

    b.set_stream_handler(SINK, request_reply)
    stream = await a.open_stream(address(b), SINK)
    await stream.write(b"request")
    await stream.close()
    with pytest.raises(ConnectionLostError, match="closed it for writing"):
        await stream.write(b"more")
    assert await read_all(stream) == b"reply after your close"
    assert server_saw == [b"request"]
    assert await stream.read() == b""  # EOF stays EOF
    await stream.close()  # closing twice is fine


async def test_reset_reaches_the_peer_and_discards_unread_data(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    a, b = network.add_host(), network.add_host()

    async def write_then_reset(stream: ByteStream) -> None:
        await stream.write(b"never read")
        await trio.sleep(1)
        await stream.reset()

    b.set_stream_handler(SINK, write_then_reset)
    stream = await a.open_stream(address(b), SINK)
    await trio.sleep(1 + 2 * L)  # the data arrived, then the reset
    with pytest.raises(ConnectionLostError, match="broke while reading: the peer reset"):
        await stream.read()
    with pytest.raises(ConnectionLostError, match="broke while writing"):
        await stream.write(b"x")
    await stream.reset()  # and resetting a broken stream never raises
    await stream.close()


async def test_reset_by_the_caller_stops_the_handler_read(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    a, b = network.add_host(), network.add_host()
    outcome: list[str] = []

    async def reader(stream: ByteStream) -> None:
        try:
            await stream.read()
        except ConnectionLostError as exc:
            outcome.append(f"{trio.current_time():.3f} {exc}")

    b.set_stream_handler(SINK, reader)
    stream = await a.open_stream(address(b), SINK)
    reset_at = trio.current_time()
    await stream.reset()
    with pytest.raises(ConnectionLostError, match="this side reset"):
        await stream.read()
    await trio.sleep(1)
    assert outcome == [
        f"{reset_at + L:.3f} stream to peer {a.peer_id} broke while reading: "
        "the peer reset the stream"
    ]


async def test_cancelled_close_and_reset_still_take_effect(
    autojump_clock: trio.testing.MockClock, pair: tuple[MemoryHost, MemoryHost]
) -> None:
    a, b = pair
    first, second = await a.open_stream(address(b), ECHO), await a.open_stream(address(b), ECHO)
    with trio.CancelScope() as scope:
        scope.cancel()
        await first.close()
        await second.reset()
    assert await first.read() == b""
    with pytest.raises(ConnectionLostError):
        await second.read()


# --- faults ---------------------------------------------------------------------------


async def test_crash_mid_stream(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    a, b = network.add_host(), network.add_host()
    handler_cancelled = trio.Event()

    async def slow(stream: ByteStream) -> None:
        try:
            await stream.read()
            await trio.sleep(100)  # "running the model"
        finally:
            handler_cancelled.set()

    b.set_stream_handler(SINK, slow)
    stream = await a.open_stream(address(b), SINK)
    await stream.write(b"request")
    await trio.sleep(1)
    crashed_at = trio.current_time()
    b.crash()
    await handler_cancelled.wait()
    with pytest.raises(ConnectionLostError, match="connection to the peer was lost"):
        await stream.read()
    assert trio.current_time() == pytest.approx(crashed_at + L)
    assert a.connection_count(b.peer_id) == 0 and a.peer_addrs(b.peer_id) == []
    assert not b.alive

    start = trio.current_time()
    with pytest.raises(PeerUnreachableError, match="connection refused"):
        await a.open_stream(address(b), SINK)
    assert trio.current_time() - start == pytest.approx(2 * L)
    with pytest.raises(PeerUnreachableError, match="has crashed"):
        await b.open_stream(address(a), SINK)

    b.restart()
    b.set_stream_handler(ECHO, echo)
    stream = await a.open_stream(address(b), ECHO)
    await stream.write(b"back")
    assert await stream.read() == b"back"
    assert a.connection_count(b.peer_id) == 1


async def test_partition_stalls_streams_and_refuses_new_ones_until_healed(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    left = [network.add_host() for _ in range(2)]
    right = [network.add_host() for _ in range(2)]
    for host in left + right:
        host.set_stream_handler(ECHO, echo)
    across = await left[0].open_stream(address(right[0]), ECHO)

    network.partition([h.peer_id for h in left], [h.peer_id for h in right])
    start = trio.current_time()
    with pytest.raises(PeerUnreachableError, match="no answer within 10 s"):
        await left[1].open_stream(address(right[1]), ECHO)
    assert trio.current_time() - start == pytest.approx(network.dial_timeout)

    same_side = await left[0].open_stream(address(left[1]), ECHO)  # unaffected
    await same_side.write(b"ok")
    assert await same_side.read() == b"ok"

    await across.write(b"held")
    with trio.move_on_after(60) as waited:
        await across.read()
    assert waited.cancelled_caught  # nothing crosses the cut

    async def heal_later() -> None:
        await trio.sleep(5)
        network.heal()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heal_later)
        healed_from = trio.current_time()
        assert await across.read() == b"held"
    # The held request crossed at the heal; the echo's reply took one latency more.
    assert trio.current_time() - healed_from == pytest.approx(5 + L)
    await left[1].open_stream(address(right[1]), ECHO)


async def test_a_failing_handler_is_logged_and_the_network_keeps_serving(
    autojump_clock: trio.testing.MockClock,
    pair: tuple[MemoryHost, MemoryHost],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    # (conftest sets caplog's handler to above CRITICAL, for libp2p; this resets it)
    caplog.set_level(logging.ERROR, logger="p2pnet.net.memory")

    async def broken(stream: ByteStream) -> None:
        await stream.read()
        raise ValueError("bug in a handler")

    b.set_stream_handler(SINK, broken)
    for _ in range(3):
        stream = await a.open_stream(address(b), SINK)
        await stream.write(b"x")
        with pytest.raises(ConnectionLostError, match="the peer reset the stream"):
            await stream.read()
    failures = [r for r in caplog.records if r.name == "p2pnet.net.memory"]
    assert len(failures) == 3 and failures[0].levelno == logging.ERROR
    assert f"handler for {SINK} failed on a stream from {a.peer_id}" in failures[0].getMessage()
    stream = await a.open_stream(address(b), ECHO)
    await stream.write(b"still here")
    assert await stream.read() == b"still here"


async def test_opens_that_cannot_work(
    autojump_clock: trio.testing.MockClock, pair: tuple[MemoryHost, MemoryHost]
) -> None:
    a, b = pair
    with pytest.raises(
        PeerUnreachableError,
        match=f"cannot open a /nope stream to peer {b.addrs[0]}: protocol not supported: /nope",
    ):
        await a.open_stream(address(b), "/nope")
    stranger = MemoryNetwork(seed=99).add_host()  # valid peer ID, not on this network
    with pytest.raises(PeerUnreachableError, match="no such host on the network"):
        await a.open_stream(address(stranger), ECHO)
    with pytest.raises(PeerUnreachableError, match="no host listens at /memory/999"):
        await a.open_stream(PeerAddress(b.peer_id, ("/memory/999",)), ECHO)
    with pytest.raises(PeerUnreachableError, match="this host itself"):
        await a.open_stream(address(a), ECHO)
    await a.open_stream(PeerAddress(b.peer_id), ECHO)  # a bare peer ID is enough


async def test_a_network_that_is_not_running_says_so() -> None:
    network = MemoryNetwork()
    a, b = network.add_host(), network.add_host()
    with pytest.raises(RuntimeError, match="not running"):
        await a.open_stream(address(b), ECHO)
    with pytest.raises(ValueError, match="already on this memory network"):
        network.add_host(a.peer_id)


async def test_the_blocks_own_error_leaves_as_itself() -> None:
    with pytest.raises(KeyError):
        async with MemoryNetwork():
            raise KeyError("not wrapped in an ExceptionGroup")


async def test_run_in_a_nursery_and_under_a_real_clock() -> None:
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        a, b = network.add_host(), network.add_host()
        b.set_stream_handler(ECHO, echo)
        start = time.monotonic()
        stream = await a.open_stream(address(b), ECHO)
        await stream.write(b"real time")
        assert await stream.read() == b"real time"
        assert time.monotonic() - start >= 0.04
        nursery.cancel_scope.cancel()


# --- identities and addresses -----------------------------------------------------------


def test_peer_ids_are_real_deterministic_and_addresses_parse() -> None:
    hosts = [MemoryNetwork(seed=5).add_host() for _ in range(2)]
    assert hosts[0].peer_id == hosts[1].peer_id  # same seed, same IDs
    other = MemoryNetwork(seed=6).add_host()
    assert other.peer_id != hosts[0].peer_id
    host = hosts[0]
    assert is_valid_peer_id(host.peer_id) and host.peer_id.startswith("12D3KooW")
    (full,) = host.addrs
    assert full == f"/memory/0/p2p/{host.peer_id}"
    parsed = parse_peer_address(full)
    assert parsed == PeerAddress(host.peer_id, ("/memory/0",)) and str(parsed) == full
    # As the kad wire format carries them: binary multiaddr and peer ID multihash bytes.
    assert str(multiaddr.Multiaddr(multiaddr.Multiaddr(full).to_bytes())) == full
    raw = ID.from_base58(host.peer_id).to_bytes()
    assert str(ID(raw)) == host.peer_id and 0 <= key_of(raw) < 2**256


# --- the real invoke stack --------------------------------------------------------------


async def test_invoke_server_and_client_over_the_memory_network(models: dict[str, Path]) -> None:
    # A real clock: onnxruntime runs in a worker thread, and an autojump clock would jump
    # to the next deadline while trio waits for the thread.
    iris = OnnxModel.load(models["iris"])
    identity = OnnxModel.load(models["identity"])
    async with MemoryNetwork(latency=0.001, seed=1) as network:
        caller, serving = network.add_host(), network.add_host()
        served = {iris.model_id: iris, identity.model_id: identity}
        server = InvokeServer(LocalInvoker(serving.peer_id, served))
        serving.set_stream_handler(INVOKE_PROTOCOL, server.handle_stream)
        client = InvokeClient(caller)
        peer = parse_peer_address(serving.addrs[0])
        row = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
        for _ in range(3):
            out = await client.invoke(peer, iris.model_id, {"x": row})
        assert out["label"].tolist() == [0]
        assert np.array_equal(out["probabilities"], iris.run_sync({"x": row})["probabilities"])
        big = np.random.default_rng(0).random(3 << 20, dtype=np.float32)  # 12 MB, streamed
        assert np.array_equal((await client.invoke(peer, identity.model_id, {"x": big}))["y"], big)
        server.idle_timeout = 0.2  # from the next wait on: after the reply to this call
        with pytest.raises(UnknownModelError) as info:
            await client.invoke(
                peer, "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq", {"x": row}
            )
        assert info.value.peer == serving.peer_id
        assert server.stats.streams == 1 and server.stats.calls == 5  # one reused stream
        await trio.sleep(0.5)  # the server closes the idle stream; the client retries on a new one
        assert (await client.invoke(peer, iris.model_id, {"x": row}))["label"].tolist() == [0]
        assert server.stats.streams == 2
        await client.aclose()


# --- scale ------------------------------------------------------------------------------


async def test_ten_thousand_hosts_and_thousands_of_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = time.perf_counter()

    def latency(src: str, dst: str) -> float:  # 10 to 59 ms, fixed per pair
        return 0.01 + (ord(src[-1]) * 7 + ord(dst[-1])) % 50 / 1000

    async with MemoryNetwork(latency=latency) as network:
        hosts = [network.add_host() for _ in range(10_000)]
        for host in hosts:
            host.set_stream_handler(ECHO, echo)
        created = time.perf_counter()
        rng = random.Random(0)
        ok = 0

        async def one_call(src: MemoryHost, dst: MemoryHost) -> None:
            nonlocal ok
            stream = await src.open_stream(address(dst), ECHO)
            await stream.write(b"ping")
            assert await stream.read() == b"ping"
            await stream.close()
            ok += 1

        async with trio.open_nursery() as nursery:
            for _ in range(3000):
                src, dst = rng.sample(hosts, 2)
                nursery.start_soon(one_call, src, dst)
    finished = time.perf_counter()
    assert ok == 3000 and network.streams_opened == 3000
    assert created - started < 10 and finished - created < 10  # ~2 s and ~0.5 s measured


def test_an_idle_host_costs_well_under_two_kilobytes() -> None:
    network = MemoryNetwork()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        hosts = [network.add_host() for _ in range(1000)]
        per_host = (tracemalloc.get_traced_memory()[0] - before) / len(hosts)
    finally:
        tracemalloc.stop()
    # ~540 B measured, of which ~250 B is peer_id's encoding cache (bounded, not per host).
    assert per_host < 1024, per_host


async def test_stream_pool_closes_streams_idle_too_long(
    network: MemoryNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    """Idle pooled streams are closed after max_idle_time: the caller, not the server's
    idle timeout, ends them, and nothing idle is held forever."""
    from p2pnet.core.messages import MessageReader
    from p2pnet.net.channels import StreamPool

    server, client = network.add_host(), network.add_host()
    closed = trio.Event()

    async def serve_until_closed(stream: ByteStream) -> None:
        await echo(stream)
        closed.set()

    server.set_stream_handler(ECHO, serve_until_closed)
    pool: StreamPool[MessageReader] = StreamPool(client, ECHO, MessageReader, max_idle_time=10)
    first = await pool.checkout(address(server))
    await pool.checkin(first)
    await trio.sleep(5)
    again = await pool.checkout(address(server))
    assert again is first and again.reused  # still fresh: reused
    await pool.checkin(again)
    await trio.sleep(11)
    fresh = await pool.checkout(address(server))
    assert fresh is not first and not fresh.reused
    with trio.fail_after(1):
        await closed.wait()  # the expired stream was closed, and the server saw it
    assert pool.idle(server.peer_id) == []


async def test_stream_pool_prune_closes_expired_streams_of_an_unused_pool(
    network: MemoryNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    """A pool nobody checks out from keeps its streams until pruned; prune closes only
    those idle for longer than max_idle_time."""
    from p2pnet.core.messages import MessageReader
    from p2pnet.net.channels import StreamPool

    server, other, client = network.add_host(), network.add_host(), network.add_host()
    closed = trio.Event()

    async def serve_until_closed(stream: ByteStream) -> None:
        await echo(stream)
        closed.set()

    server.set_stream_handler(ECHO, serve_until_closed)
    other.set_stream_handler(ECHO, echo)
    pool: StreamPool[MessageReader] = StreamPool(client, ECHO, MessageReader, max_idle_time=10)
    await pool.checkin(await pool.checkout(address(server)))
    await trio.sleep(2)
    await pool.checkin(await pool.checkout(address(other)))
    await trio.sleep(9)
    await pool.prune()
    with trio.fail_after(1):
        await closed.wait()  # idle 11 s: closed, and the server saw it
    assert pool.idle(server.peer_id) == []
    assert len(pool.idle(other.peer_id)) == 1  # idle 9 s: kept


# --- NATs -------------------------------------------------------------------------------


async def _rtt(stream: ByteStream) -> float:
    start = trio.current_time()
    await stream.write(b"x")
    assert await stream.read() == b"x"
    return trio.current_time() - start


async def test_nat_reached_through_its_relay_then_directly_after_hole_punching(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork(latency=L, holepunch_s=1.0) as network:
        caller, relay, cone, symmetric, hidden = (network.add_host() for _ in range(5))
        for host in (caller, cone, symmetric, hidden):
            host.set_stream_handler(ECHO, echo)
        network.set_nat(cone.peer_id, "cone")
        network.set_nat(symmetric.peer_id, "symmetric")
        network.set_nat(hidden.peer_id, "cone")
        network.reserve(cone.peer_id, relay.peer_id)
        network.reserve(symmetric.peer_id, relay.peer_id)

        # Relayed at first: every message crosses the relay (two legs each way).
        to_cone = await caller.open_stream(address(cone), ECHO)
        assert network.is_relayed(caller.peer_id, cone.peer_id)
        assert await _rtt(to_cone) == pytest.approx(4 * L)
        await trio.sleep(1.0)  # hole punching succeeds towards a cone NAT
        assert not network.is_relayed(caller.peer_id, cone.peer_id)
        assert await _rtt(to_cone) == pytest.approx(2 * L)

        to_symmetric = await caller.open_stream(address(symmetric), ECHO)
        await trio.sleep(1.0)  # and never towards a symmetric one
        assert network.is_relayed(caller.peer_id, symmetric.peer_id)
        assert await _rtt(to_symmetric) == pytest.approx(4 * L)

        # No reservation: the dial goes unanswered, unless the NATed peer dialled first.
        start = trio.current_time()
        with pytest.raises(PeerUnreachableError, match="holds no relay reservation"):
            await caller.open_stream(address(hidden), ECHO)
        assert trio.current_time() - start == pytest.approx(network.dial_timeout)
        await hidden.open_stream(address(caller), ECHO)
        back = await caller.open_stream(address(hidden), ECHO)
        assert not network.is_relayed(caller.peer_id, hidden.peer_id)
        assert await _rtt(back) == pytest.approx(2 * L)
        assert network.nat_stats.relayed == 2 and network.nat_stats.punched == 1
        assert network.nat_stats.punch_failed == 1 and network.nat_stats.unreachable == 1


async def test_connections_stay_sorted_and_a_crash_takes_its_own_out(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork
) -> None:
    hub = network.add_host()
    others = [network.add_host() for _ in range(12)]
    for host in [hub, *others]:
        host.set_stream_handler(ECHO, echo)
    for host in others[::2]:  # hub dials half of them, the other half dial hub
        await hub.open_stream(address(host), ECHO)
    for host in others[1::2]:
        await host.open_stream(address(hub), ECHO)
    await hub.open_stream(address(others[0]), ECHO)  # a second stream: no second connection
    expected = sorted((h.peer_id, h.transport_addr) for h in others)
    assert hub.connections() == expected
    assert all(h.connections() == [(hub.peer_id, hub.transport_addr)] for h in others)

    crashed = others[3]
    crashed.crash()
    assert hub.connections() == [c for c in expected if c[0] != crashed.peer_id]
    assert crashed.connections() == [] and hub.supports(crashed.peer_id, ECHO) is None
    crashed.restart()
    await crashed.open_stream(address(hub), ECHO)
    assert hub.connections() == expected and hub.supports(crashed.peer_id, ECHO) is True
