"""Streams from a peer to itself: ``LoopbackHost`` answers ``open_stream`` to its own peer
ID with an in-process stream pair whose other end goes to the handler registered for the
protocol, as an inbound stream from another peer would.

A host cannot dial its own peer ID (py-libp2p refuses, and there is no connection to
reuse), yet a peer is a provider like any other: its own generative model streams to its
own gateway's chat client through the same invoke protocol, sessions and limits included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

import trio

from p2pnet.core.address import PeerAddress
from p2pnet.errors import ConnectionLostError, PeerUnreachableError
from p2pnet.net.interfaces import ByteStream, ByteStreamHandler, HostWrapper, StreamHost

__all__ = ["LoopbackHost", "LoopbackStream", "loopback_pair"]

log = logging.getLogger(__name__)

# Writes buffered in each direction before a writer waits for its reader (backpressure).
BUFFERED_WRITES: Final = 16


@dataclass
class _Shared:
    reset: bool = False
    ends: list[LoopbackStream] = field(default_factory=list)


class LoopbackStream:
    """One end of a ``loopback_pair``: a ``ByteStream`` whose peer is in this process."""

    def __init__(
        self,
        peer_id: str,
        inbound: trio.MemoryReceiveChannel[bytes],
        outbound: trio.MemorySendChannel[bytes],
        shared: _Shared,
    ) -> None:
        self._peer_id = peer_id
        self._inbound = inbound
        self._outbound = outbound
        self._shared = shared

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def _lost(self) -> ConnectionLostError:
        return ConnectionLostError("the stream was reset", peer=self._peer_id)

    async def read(self) -> bytes:
        if self._shared.reset:
            raise self._lost()
        try:
            return await self._inbound.receive()
        except trio.EndOfChannel:
            if self._shared.reset:
                raise self._lost() from None
            return b""
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._lost() from None

    async def write(self, data: bytes) -> None:
        if self._shared.reset:
            raise self._lost()
        if not data:
            return
        try:
            await self._outbound.send(bytes(data))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionLostError(
                "the stream is closed for sending" if not self._shared.reset else "reset",
                peer=self._peer_id,
            ) from None

    async def close(self) -> None:
        self._outbound.close()

    async def reset(self) -> None:
        self._shared.reset = True
        for end in self._shared.ends:
            end._outbound.close()
            end._inbound.close()


def loopback_pair(peer_id: str) -> tuple[LoopbackStream, LoopbackStream]:
    """Two connected stream ends, both reporting ``peer_id`` as their peer."""
    a_send, b_receive = trio.open_memory_channel[bytes](BUFFERED_WRITES)
    b_send, a_receive = trio.open_memory_channel[bytes](BUFFERED_WRITES)
    shared = _Shared()
    a = LoopbackStream(peer_id, a_receive, a_send, shared)
    b = LoopbackStream(peer_id, b_receive, b_send, shared)
    shared.ends.extend((a, b))
    return a, b


class LoopbackHost(HostWrapper):
    """``host``, whose ``open_stream`` to its own peer ID runs the handler set for the
    protocol on the other end of a ``loopback_pair``, in ``nursery``. A handler's error
    is logged by the host's own rule for handlers: here it resets the stream."""

    def __init__(self, host: StreamHost, nursery: trio.Nursery) -> None:
        super().__init__(host)
        self._nursery = nursery
        self._handlers: dict[str, ByteStreamHandler] = {}

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        self._handlers[protocol] = handler
        super().set_stream_handler(protocol, handler)

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)
        super().remove_stream_handler(protocol)

    async def open_stream(self, peer: PeerAddress, protocol: str) -> ByteStream:
        if peer.peer_id != self.peer_id:
            return await super().open_stream(peer, protocol)
        handler = self._handlers.get(protocol)
        if handler is None:
            raise PeerUnreachableError(f"this peer does not serve {protocol}", peer=self.peer_id)
        mine, theirs = loopback_pair(self.peer_id)
        self._nursery.start_soon(_serve, handler, theirs)
        return mine


async def _serve(handler: ByteStreamHandler, stream: LoopbackStream) -> None:
    try:
        await handler(stream)
    except Exception:  # as a host does with a failing handler: the stream ends
        log.exception("a loopback stream's handler failed")
        await stream.reset()
