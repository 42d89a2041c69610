"""Reads of a TCP connection served from one socket receive (p2pnet/net/tcp_reads.py):
the same bytes as py-libp2p's own reads, fewer socket reads, and the end of a stream or
a reset seen as py-libp2p sees them."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.io.msgio import FixedSizeLenMsgReadWriter
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection

from p2pnet.net.tcp_reads import RECEIVE_SIZE, install_read_patches


class Packets(FixedSizeLenMsgReadWriter):
    """Noise's framing: a 2-byte length, then the message (py-libp2p's
    ``NoisePacketReadWriter``)."""

    size_len_bytes = 2


class CountedStream:
    """A socket stream that counts its receives (what ``TrioTCPStream`` uses of one)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.socket = stream.socket
        self.receives = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.receives += 1
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[CountedStream, trio.SocketStream]]:
    """A TCP connection on 127.0.0.1: the reading end and the writing end."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    writer_socket = trio.socket.socket()
    await writer_socket.connect(listener.getsockname())
    reader_socket, _ = await listener.accept()
    listener.close()
    reader = CountedStream(trio.SocketStream(reader_socket))
    writer = trio.SocketStream(writer_socket)
    try:
        yield reader, writer
    finally:
        await reader.aclose()
        await writer.aclose()


def tcp_stream(reader: CountedStream) -> TrioTCPStream:
    return TrioTCPStream(cast(Any, reader))


def packet(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


@pytest.fixture(autouse=True)
def read_patches() -> None:
    install_read_patches()


@pytest.mark.network
async def test_messages_of_one_receive_are_read_with_one_socket_read() -> None:
    async with tcp_pair() as (reader, writer):
        await writer.send_all(packet(b"first") + packet(b"second") + packet(b""))
        await trio.testing.wait_all_tasks_blocked()
        packets = Packets(RawConnection(tcp_stream(reader), initiator=False))
        assert await packets.read_msg() == b"first"
        assert await packets.read_msg() == b"second"
        assert await packets.read_msg() == b""
        # py-libp2p's own read asks the socket for each length and each body: 6 reads.
        assert reader.receives == 1


@pytest.mark.network
async def test_a_message_split_across_segments_is_read_whole() -> None:
    body = bytes(range(256)) * 300  # 76,800 bytes: more than one receive
    wire = packet(body[:65535]) + packet(body[65535:])
    async with tcp_pair() as (reader, writer):
        packets = Packets(RawConnection(tcp_stream(reader), initiator=False))
        received: list[bytes] = []

        async def read_both() -> None:
            received.append(await packets.read_msg())
            received.append(await packets.read_msg())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_both)
            # One byte of the length, then the rest in uneven pieces, each sent once the
            # reader waits for it.
            for start, end in ((0, 1), (1, 5), (5, 70_000), (70_000, len(wire))):
                await trio.testing.wait_all_tasks_blocked()
                await writer.send_all(wire[start:end])
        assert received == [body[:65535], body[65535:]]


@pytest.mark.network
async def test_a_read_returns_at_most_what_it_asks_for_and_the_rest_stays() -> None:
    async with tcp_pair() as (reader, writer):
        stream = tcp_stream(reader)
        await writer.send_all(b"abcdefgh")
        await trio.testing.wait_all_tasks_blocked()
        assert await stream.read(3) == b"abc"
        assert await stream.read(0) == b""
        with pytest.raises(ValueError):
            await stream.read(-1)
        assert await stream.read(2) == b"de"
        assert await stream.read() == b"fgh"  # without a count: everything held
        assert reader.receives == 1
        big = b"x" * (3 * RECEIVE_SIZE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.send_all, big)
            got = bytearray()
            while len(got) < len(big):
                piece = await stream.read(len(big) - len(got))
                assert 0 < len(piece) <= len(big) - len(got)
                got += piece
        assert got == big


@pytest.mark.network
async def test_the_end_of_the_stream_after_the_bytes_held_and_without_retries() -> None:
    async with tcp_pair() as (reader, writer):
        connection = RawConnection(tcp_stream(reader), initiator=False)
        await writer.send_all(packet(b"last") + b"\x00\x09par")  # then a cut message
        await writer.aclose()
        packets = Packets(connection)
        assert await packets.read_msg() == b"last"
        with pytest.raises(IncompleteReadError) as cut:
            await packets.read_msg()
        assert (cut.value.expected_bytes, cut.value.received_bytes) == (9, 3)
        receives = reader.receives
        with pytest.raises(IncompleteReadError) as ended:
            await packets.read_msg()
        assert ended.value.received_bytes == 0
        assert await connection.read(5) == b""
        # py-libp2p's read_exactly asks 100 more times after the end of the stream, each
        # a socket read; the end is known once seen.
        assert reader.receives == receives


@pytest.mark.network
async def test_a_reset_mid_message_is_an_error_after_the_bytes_received() -> None:
    async with tcp_pair() as (reader, writer):
        connection = RawConnection(tcp_stream(reader), initiator=False)
        await writer.send_all(packet(b"whole") + b"\x00\x20half")
        await trio.testing.wait_all_tasks_blocked()
        packets = Packets(connection)
        assert await packets.read_msg() == b"whole"  # one receive, the cut message held
        # Closing with SO_LINGER 0 sends a reset.
        writer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.socket.close()
        with pytest.raises(ConnectionClosedError):
            await packets.read_msg()


@pytest.mark.network
async def test_readers_waiting_together_each_get_their_own_bytes() -> None:
    async with tcp_pair() as (reader, writer):
        stream = tcp_stream(reader)
        got: list[bytes] = []

        async def read_two() -> None:
            got.append(await stream.read(2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_two)
            nursery.start_soon(read_two)
            await trio.testing.wait_all_tasks_blocked()
            await writer.send_all(b"abcd")
        assert sorted(got) == [b"ab", b"cd"]
