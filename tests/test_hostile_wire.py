"""Hostile invoke messages on loopback TCP: each is refused with a precise error, before
it costs the peer memory or time, while an honest caller keeps being served (issue 12)."""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from p2pnet import Peer
from p2pnet.core.address import parse_peer_address
from p2pnet.core.messages import ErrorReply, MessageReader, Result, WireLimits
from p2pnet.core.tensor import encode_inline_tensor
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import (
    ConnectionLostError,
    InvalidModelIdError,
    LocalProtocolError,
    P2PNetError,
    PayloadTooLargeError,
)
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message
from p2pnet.simulate.hostile_messages import frame, invoke_head, nested_frame, string_tensor

pytestmark = pytest.mark.network  # real libp2p hosts on 127.0.0.1

IRIS_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
IRIS_ROW_EXT = msgpack.ExtType(1, encode_inline_tensor(IRIS_ROW))
LIMITS = WireLimits()


@pytest.fixture
async def server(models: dict[str, Path]) -> AsyncIterator[Peer]:
    async with Peer() as peer:
        peer.serve(models["iris"])
        yield peer


def iris_id(peer: Peer) -> str:
    return next(mid for mid, m in peer.models.items() if m.info.name == "iris")


def vm_rss() -> int:
    """Resident memory of this process (the serving peer runs in it), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def fuzzed_heads(model: str, count: int, seed: int) -> list[bytes]:
    """Mutants of a valid Invoke head that the server's reader answers at once (those
    that would wait for more bytes, e.g. a streamed tensor's data, are left out)."""
    valid = msgpack.packb(
        invoke_head(model, {"x": IRIS_ROW_EXT}),
        use_bin_type=True,
    )
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        body = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        data = encode_uvarint(len(body)) + bytes(body)
        reader = MessageReader(LIMITS)
        reader.receive_data(data)
        try:
            if reader.next_message() is None:
                continue
        except P2PNetError:
            pass
        out.append(data)
    return out


async def test_hostile_messages_are_refused_while_an_honest_caller_is_served(
    server: Peer,
) -> None:
    model = iris_id(server)
    hostile_messages: list[tuple[str, bytes, str, str]] = [
        # (what, bytes, expected reply code, expected words in the reply)
        (
            "128-byte Invoke declaring a string tensor of shape [2**28]",
            frame(invoke_head(model, {"x": string_tensor((1 << 28,))})),
            PayloadTooLargeError.code,
            "at most 65536 string elements",
        ),
        (
            "string tensor of 60000 elements with 10 bytes of data",
            frame(invoke_head(model, {"x": string_tensor((60_000,), b"\x00" * 10)})),
            LocalProtocolError.code,
            "declares 60000 elements but only 10 bytes follow",
        ),
        (
            "Invoke whose model is a 300,000-character string",
            frame(invoke_head("z" + "1" * 299_999, {"x": IRIS_ROW_EXT})),
            InvalidModelIdError.code,
            "300000 characters",
        ),
        (
            "head nested 100,000 deep",
            nested_frame(100_000),
            LocalProtocolError.code,
            "nested deeper than 1024 levels",
        ),
        (
            "head with an array of 1,000,000 nils",
            frame(invoke_head(model, {"x": IRIS_ROW_EXT}) | {"pad": [None] * 1_000_000}),
            PayloadTooLargeError.code,
            "at most 256 entries per array or map",
        ),
        (
            "head of 300 tensors",
            frame(invoke_head(model, {f"t{i}": IRIS_ROW_EXT for i in range(300)})),
            PayloadTooLargeError.code,
            "at most 256 entries per array or map",
        ),
    ]
    fuzzed = fuzzed_heads(model, 20, seed=12)

    async with Peer() as honest, Peer() as hostile:
        address = server.addrs[0]

        async def honest_call() -> float:
            started = trio.current_time()
            out = await honest.invoke(address, model, {"x": IRIS_ROW})
            assert out["label"].tolist() == [0]
            return trio.current_time() - started

        for _ in range(5):  # warm up: connection, stream pool, onnxruntime
            await honest_call()
        baseline = [await honest_call() for _ in range(20)]

        async def send(data: bytes) -> ErrorReply | Result | None:
            stream = await hostile.host.open_stream(parse_peer_address(address), INVOKE_PROTOCOL)
            try:
                await stream.write(data)
                reply = await read_message(stream, MessageReader(LIMITS))
            except ConnectionLostError:
                return None
            finally:
                await stream.reset()
            assert isinstance(reply, ErrorReply | Result)
            return reply

        # Once before measuring, so that the allocator's and the sending side's buffers
        # (the hostile peer runs in this process too) are already there.
        for _, data, _, _ in hostile_messages:
            await send(data)
        rss_before = vm_rss()
        rss_peak = rss_before
        during: list[float] = []
        replies: dict[str, ErrorReply | Result | None] = {}
        fuzz_replies: list[ErrorReply | Result | None] = []
        attack_done = trio.Event()

        async def attack() -> None:
            for what, data, _, _ in hostile_messages:
                replies[what] = await send(data)
            for data in fuzzed:
                fuzz_replies.append(await send(data))
            attack_done.set()

        with trio.fail_after(120):  # a safety net, not a wait: the test ends on events
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                while not attack_done.is_set() or len(during) < 10:
                    during.append(await honest_call())
                    rss_peak = max(rss_peak, vm_rss())

        for what, _, code, words in hostile_messages:
            reply = replies[what]
            assert isinstance(reply, ErrorReply), what
            assert reply.code == code, (what, reply)
            assert words in reply.message, (what, reply.message)
            assert len(reply.message) < 400, (what, len(reply.message))  # nothing echoed whole
        assert all(
            r is None or len(r.message if isinstance(r, ErrorReply) else "") < 1100
            for r in fuzz_replies
        )
        assert sum(isinstance(r, ErrorReply) for r in fuzz_replies) >= len(fuzz_replies) // 2

        # The honest caller was served meanwhile: typically within a millisecond of its
        # own baseline; the bounds leave room for a loaded 2-core machine but catch a
        # stall (issue 12 measured 6.5 s and 9.3 s).
        base_median, during_median = statistics.median(baseline), statistics.median(during)
        assert during_median <= base_median + 0.050, (baseline, during)
        assert max(during) <= max(baseline) + 0.5, (baseline, during)
        assert rss_peak - rss_before <= LIMITS.max_frame_size, (rss_before, rss_peak)
        print(
            f"honest call median {base_median * 1000:.1f} ms before, "
            f"{during_median * 1000:.1f} ms during ({len(during)} calls, worst "
            f"{max(during) * 1000:.1f} ms); RSS +{(rss_peak - rss_before) / 1e6:.1f} MB"
        )
