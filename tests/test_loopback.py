"""Streams from a peer to itself (p2pnet/net/loopback.py): the ``ByteStream`` rules of any
stream (close ends one direction, reset both, writers wait for slow readers), and
``LoopbackHost`` serving its own protocols to itself."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pnet.core.address import PeerAddress
from p2pnet.errors import ConnectionLostError, PeerUnreachableError
from p2pnet.net.interfaces import ByteStream
from p2pnet.net.loopback import BUFFERED_WRITES, LoopbackHost, loopback_pair
from p2pnet.net.memory import MemoryNetwork

PEER = "12D3KooWLoop"


async def test_close_ends_one_direction_and_the_other_still_carries() -> None:
    a, b = loopback_pair(PEER)
    assert a.peer_id == b.peer_id == PEER
    await a.write(b"question")
    await a.close()
    assert await b.read() == b"question"
    assert await b.read() == b""  # a's direction ended
    await b.write(b"answer")  # b's still carries
    assert await a.read() == b"answer"
    with pytest.raises(ConnectionLostError, match="closed for sending"):
        await a.write(b"more")


async def test_reset_breaks_both_ends_and_wakes_a_waiting_reader() -> None:
    a, b = loopback_pair(PEER)
    await a.write(b"unread")
    async with trio.open_nursery() as nursery:
        failures: list[BaseException] = []

        async def wait_for_data() -> None:
            try:
                await a.read()
            except ConnectionLostError as exc:
                failures.append(exc)

        nursery.start_soon(wait_for_data)
        await trio.testing.wait_all_tasks_blocked()
        await b.reset()
    assert len(failures) == 1
    for end in (a, b):
        with pytest.raises(ConnectionLostError, match="reset"):
            await end.read()
        with pytest.raises(ConnectionLostError):
            await end.write(b"x")
    await a.reset()  # again: nothing to do, no error
    await a.close()


async def test_a_writer_waits_for_a_reader_that_falls_behind() -> None:
    a, b = loopback_pair(PEER)
    for _ in range(BUFFERED_WRITES):
        await a.write(b"x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.write, b"one too many")
        await trio.testing.wait_all_tasks_blocked()
        assert await b.read() == b"x"  # makes room: the waiting write goes through
    received = [await b.read() for _ in range(BUFFERED_WRITES)]
    assert received[-1] == b"one too many"


async def test_a_host_serves_its_own_protocols_to_itself() -> None:
    async with MemoryNetwork() as network, trio.open_nursery() as nursery:
        memory_host = network.add_host()
        host = LoopbackHost(memory_host, nursery)
        served: list[str] = []

        async def echo(stream: ByteStream) -> None:
            served.append(stream.peer_id)
            data = await stream.read()
            await stream.write(data.upper())
            await stream.close()

        host.set_stream_handler("/echo/1.0.0", echo)
        stream = await host.open_stream(PeerAddress(host.peer_id), "/echo/1.0.0")
        await stream.write(b"hello")
        assert await stream.read() == b"HELLO"
        assert await stream.read() == b""
        assert served == [host.peer_id]

        with pytest.raises(PeerUnreachableError, match=r"does not serve /other/1\.0\.0"):
            await host.open_stream(PeerAddress(host.peer_id), "/other/1.0.0")
        host.remove_stream_handler("/echo/1.0.0")
        with pytest.raises(PeerUnreachableError):
            await host.open_stream(PeerAddress(host.peer_id), "/echo/1.0.0")

        async def broken(stream: ByteStream) -> None:
            raise RuntimeError("a bug in a handler")

        host.set_stream_handler("/broken/1.0.0", broken)
        failing = await host.open_stream(PeerAddress(host.peer_id), "/broken/1.0.0")
        with pytest.raises(ConnectionLostError):
            await failing.read()  # the handler's failure resets the stream
