"""Real peers on 127.0.0.1 in one trio run: calls that work, and every kind of bad call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from trio.testing import MockClock

from p2pnet import Peer, WireLimits
from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.messages import ErrorReply, Invoke, MessageReader, Result, encode_message
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    InvalidAddressError,
    InvalidInputError,
    InvalidModelIdError,
    LocalProtocolError,
    ModelExecutionError,
    PayloadTooLargeError,
    PeerUnreachableError,
    UnknownModelError,
)
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message
from p2pnet.net.host import Stream

pytestmark = pytest.mark.network  # real libp2p hosts on 127.0.0.1

IRIS_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
MISSING_ID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


@pytest.fixture
async def server(models: dict[str, Path]) -> AsyncIterator[Peer]:
    async with Peer() as peer:
        for name in ("iris", "sentiment", "identity", "reshape3", "matmul"):
            peer.serve(models[name])
        yield peer


@pytest.fixture
async def client() -> AsyncIterator[Peer]:
    async with Peer() as peer:
        yield peer


def model_id(peer: Peer, name: str) -> str:
    return next(mid for mid, m in peer.models.items() if m.info.name == name)


async def call(
    client: Peer, server: Peer, name: str, inputs: dict[str, Any], **kw: Any
) -> dict[str, np.ndarray]:
    return await client.invoke(server.addrs[0], model_id(server, name), inputs, **kw)


async def raw_stream(client: Peer, server: Peer) -> Stream:
    return await client.host.open_stream(parse_peer_address(server.addrs[0]), INVOKE_PROTOCOL)


async def test_calls_a_remote_model_and_gets_the_local_result(server: Peer, client: Peer) -> None:
    out = await call(client, server, "iris", {"x": IRIS_ROW})
    local = server.models[model_id(server, "iris")].run_sync({"x": IRIS_ROW})
    assert out["label"].tolist() == local["label"].tolist() == [0]
    assert np.array_equal(out["probabilities"], local["probabilities"])


async def test_string_tensors_in_and_out(server: Peer, client: Peer) -> None:
    texts = np.array(["I love it, works great", "broken on arrival, terrible"], dtype=object)
    out = await call(client, server, "sentiment", {"text": texts})
    assert out["label"].tolist() == ["positive", "negative"]


async def test_large_tensor_streams_intact(server: Peer, client: Peer) -> None:
    x = np.random.default_rng(0).random(4 << 20, dtype=np.float32)  # 16 MB
    out = await call(client, server, "identity", {"x": x}, timeout=60)
    assert np.array_equal(out["y"], x)


async def test_repeated_calls_reuse_one_connection_and_one_stream(
    server: Peer, client: Peer
) -> None:
    for _ in range(20):
        await call(client, server, "iris", {"x": IRIS_ROW})
    assert server.services.invoke_server.stats.streams == 1
    assert client.host.connection_count(server.peer_id) == 1


async def test_concurrent_calls_each_get_their_own_answer(server: Peer, client: Peer) -> None:
    rows = np.random.default_rng(1).random((10, 1, 4), dtype=np.float32) * 7
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = (await call(client, server, "iris", {"x": rows[i]}))["probabilities"]

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    local = server.models[model_id(server, "iris")]
    for i in range(10):
        assert np.array_equal(results[i], local.run_sync({"x": rows[i]})["probabilities"])
    assert client.host.connection_count(server.peer_id) == 1


# --- bad input: each gets a precise error, and the peer keeps serving ---------------------


async def test_unknown_model(server: Peer, client: Peer) -> None:
    with pytest.raises(
        UnknownModelError, match=f"does not serve model {MISSING_ID}; it serves: "
    ) as info:
        await client.invoke(server.addrs[0], MISSING_ID, {"x": IRIS_ROW})
    assert info.value.peer == server.peer_id


async def test_text_that_is_not_a_model_id(server: Peer, client: Peer) -> None:
    with pytest.raises(InvalidModelIdError, match="not a model ID"):
        await client.invoke(server.addrs[0], "resnet50", {"x": IRIS_ROW})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"y": IRIS_ROW}, "missing input 'x'"),
        ({"x": IRIS_ROW, "extra": IRIS_ROW}, "unexpected input 'extra'"),
        ({"x": IRIS_ROW.astype(np.float64)}, "dtype float64; the model expects float32"),
        ({"x": IRIS_ROW[0]}, "rank 1\\); the model expects rank 2"),
        ({"x": np.zeros((1, 3), np.float32)}, "size 3 on axis 1; the model expects 4"),
    ],
    ids=["name", "extra", "dtype", "rank", "dim"],
)
async def test_inputs_that_do_not_match_the_schema(
    server: Peer, client: Peer, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        await call(client, server, "iris", inputs)
    assert info.value.peer == server.peer_id


async def test_model_that_fails_at_run_time(server: Peer, client: Peer) -> None:
    with pytest.raises(ModelExecutionError, match=r"reshape3.*failed: .*reshape"):
        await call(client, server, "reshape3", {"x": np.zeros(4, np.float32)})
    out = await call(client, server, "reshape3", {"x": np.zeros(6, np.float32)})
    assert out["y"].shape == (3, 2)


async def test_deadline_exceeded_and_the_peer_still_answers(server: Peer, client: Peer) -> None:
    big = np.ones((3000, 3000), np.float32)
    with pytest.raises(DeadlineExceededError):
        await call(client, server, "matmul", {"a": big}, timeout=0.05)
    await call(client, server, "iris", {"x": IRIS_ROW})


async def test_request_over_the_callers_own_limit_fails_before_sending(server: Peer) -> None:
    async with Peer(limits=WireLimits(max_message_size=1 << 20)) as small_client:
        with pytest.raises(PayloadTooLargeError, match="the limit is 1048576") as info:
            await call(small_client, server, "identity", {"x": np.zeros(1 << 20, np.float32)})
        assert info.value.peer is None
    assert server.status().calls_served == 0


async def test_request_over_the_servers_limit_is_refused_by_the_server(
    models: dict[str, Path], client: Peer
) -> None:
    async with Peer(limits=WireLimits(max_message_size=1 << 20)) as small_server:
        small_server.serve(models["identity"])
        with pytest.raises(PayloadTooLargeError, match="more than this side accepts") as info:
            await call(
                client, small_server, "identity", {"x": np.zeros(1 << 20, np.float32)}, timeout=20
            )
        assert info.value.peer == small_server.peer_id
        out = await call(client, small_server, "identity", {"x": np.ones(3, np.float32)})
        assert out["y"].tolist() == [1, 1, 1]


async def test_malformed_frame_gets_an_error_reply_then_the_stream_ends(
    server: Peer, client: Peer
) -> None:
    stream = await raw_stream(client, server)
    await stream.write(b"\x04\xc1\xc1\xc1\xc1")  # a 4-byte frame that is not msgpack
    reply = await read_message(stream, MessageReader())
    assert isinstance(reply, ErrorReply) and reply.code == LocalProtocolError.code
    assert "not valid msgpack" in reply.message
    assert await stream.read() == b""
    await call(client, server, "iris", {"x": IRIS_ROW})


async def test_oversized_frame_is_refused_from_its_length(server: Peer, client: Peer) -> None:
    stream = await raw_stream(client, server)
    await stream.write(encode_uvarint(1 << 30))
    reply = await read_message(stream, MessageReader())
    assert isinstance(reply, ErrorReply) and reply.code == PayloadTooLargeError.code
    assert "at most 4194304 bytes per frame" in reply.message


async def test_unreachable_peer(client: Peer, server: Peer, refused_port: int) -> None:
    port = refused_port  # nobody listens there
    with pytest.raises(PeerUnreachableError, match="cannot connect to peer"):
        await client.invoke(
            f"/ip4/127.0.0.1/tcp/{port}/p2p/{server.peer_id}", MISSING_ID, {"x": IRIS_ROW}
        )


async def test_addresses_that_cannot_work(client: Peer) -> None:
    with pytest.raises(InvalidAddressError, match="no /p2p/<peer-id>"):
        await client.invoke("/ip4/127.0.0.1/tcp/4001", MISSING_ID, {})
    with pytest.raises(InvalidAddressError, match="neither a multiaddr"):
        await client.invoke("localhost:4001", MISSING_ID, {})


async def test_peer_that_dies_mid_call(models: dict[str, Path], client: Peer) -> None:
    started = trio.Event()
    with trio.CancelScope() as server_scope:
        async with Peer() as dying:
            info = dying.serve(models["matmul"])
            model = dying.models[info.model_id]
            run = model.run

            async def run_then_signal(*args: Any, **kwargs: Any) -> Any:
                started.set()
                return await run(*args, **kwargs)

            model.run = run_then_signal  # type: ignore[method-assign]
            with pytest.raises(ConnectionLostError):
                async with trio.open_nursery() as nursery:

                    async def kill_when_started() -> None:
                        await started.wait()
                        server_scope.cancel()

                    nursery.start_soon(kill_when_started)
                    await client.invoke(
                        dying.addrs[0],
                        info.model_id,
                        {"a": np.ones((4000, 4000), np.float32)},
                        timeout=60,
                    )


async def test_hundred_bad_requests_then_another_client_is_served(
    server: Peer, client: Peer
) -> None:
    iris = model_id(server, "iris")
    bad_calls = [
        lambda: client.invoke(server.addrs[0], MISSING_ID, {"x": IRIS_ROW}),
        lambda: client.invoke(server.addrs[0], iris, {"x": np.zeros((2, 3), np.float32)}),
        lambda: client.invoke(server.addrs[0], iris, {"x": IRIS_ROW.astype(np.int32)}),
        lambda: client.invoke(
            server.addrs[0], model_id(server, "reshape3"), {"x": np.ones(5, np.float32)}
        ),
    ]
    failures = 0
    for i in range(80):
        try:
            await bad_calls[i % len(bad_calls)]()
        except (UnknownModelError, InvalidInputError, ModelExecutionError):
            failures += 1
    for i in range(20):  # broken framing on fresh streams
        stream = await raw_stream(client, server)
        await stream.write([b"\x03abc", b"\x00", encode_uvarint(1 << 40), b"\x02\x92\x01"][i % 4])
        reply = await read_message(stream, MessageReader())
        assert isinstance(reply, ErrorReply)
        failures += 1
        await stream.reset()
    assert failures == 100
    async with Peer() as other:
        out = await call(other, server, "iris", {"x": IRIS_ROW})
    assert out["label"].tolist() == [0]


async def test_a_bad_message_type_on_a_stream_is_answered_and_the_stream_stays_usable(
    server: Peer, client: Peer
) -> None:
    stream = await raw_stream(client, server)
    reader = MessageReader()
    for frame in encode_message(ErrorReply(5, "x", "y")).frames():
        await stream.write(frame)
    reply = await read_message(stream, reader)
    assert (
        isinstance(reply, ErrorReply) and reply.request_id == 5 and reply.code == "protocol_error"
    )
    for frame in encode_message(
        Invoke(6, model_id(server, "iris"), {"x": IRIS_ROW}, 5000)
    ).frames():
        await stream.write(frame)
    good = await read_message(stream, reader)
    assert good is not None and good.request_id == 6 and not isinstance(good, ErrorReply)


async def test_a_stream_the_server_closed_while_idle_is_replaced_transparently(
    server: Peer, client: Peer
) -> None:
    server.services.invoke_server.idle_timeout = 0.2
    await call(client, server, "iris", {"x": IRIS_ROW})
    (idle,) = client.services.remote._pool.idle(server.peer_id)
    assert await idle.stream.read() == b""  # the server closed it after 0.2 s idle
    out = await call(client, server, "iris", {"x": IRIS_ROW})
    assert out["label"].tolist() == [0]
    assert server.services.invoke_server.stats.streams == 2


class _AnsweringStream:
    """A stream whose other end answers each Invoke with an empty Result, keeping the
    requests it read."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.requests: list[Invoke] = []
        self._reader = MessageReader()
        self._replies: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self._reader.receive_data(data)
        while (message := self._reader.next_message()) is not None:
            assert isinstance(message, Invoke)
            self.requests.append(message)
            for frame in encode_message(Result(message.request_id, {})).frames():
                self._replies.append(frame)

    async def read(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._replies.pop(0) if self._replies else b""

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


class _SlowHost:
    """Opens one stream per call, after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.streams: list[_AnsweringStream] = []

    async def open_stream(self, peer: PeerAddress, protocol: str) -> _AnsweringStream:
        await trio.sleep(self.delay)
        self.streams.append(_AnsweringStream(peer.peer_id))
        return self.streams[-1]


@pytest.mark.parametrize("delay", [0.0, 2.5])
async def test_a_request_tells_the_time_left_when_it_leaves(
    delay: float, autojump_clock: MockClock
) -> None:
    host = _SlowHost(delay)
    client = InvokeClient(host, max_idle_streams=0)  # type: ignore[arg-type]
    x = {"x": np.ones((1, 4), np.float32)}
    await client.invoke(PeerAddress("peer"), MISSING_ID, x, timeout=30.0)
    (request,) = host.streams[0].requests
    assert request.deadline_ms == 30_000 - int(delay * 1000)
    assert request.inputs["x"].tolist() == x["x"].tolist()
