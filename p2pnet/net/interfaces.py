"""What services need from a host and its streams, as protocols both hosts satisfy.

The DHT node and the invoke server and client are written against these, so the same
code runs on the libp2p host (``host.Host``, ``host.Stream``) and on the in-memory
network (``memory.MemoryHost``, ``memory.MemoryStream``). mypy checks that both
implementations conform (the ``TYPE_CHECKING`` block at the end of this module).

This module imports nothing from py-libp2p at run time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from p2pnet.core.address import PeerAddress

__all__ = ["ByteStream", "ByteStreamHandler", "HostWrapper", "RequestBoundaries", "StreamHost"]


class ByteStream(Protocol):
    """A bidirectional, reliable, ordered byte stream to one peer.

    ``close`` ends the sending direction only (the peer reads b"" after the data sent
    before it); this side can still read what the peer sends. ``reset`` aborts both
    directions and discards what the peer has not read yet.
    """

    @property
    def peer_id(self) -> str:
        """The peer at the other end."""
        ...

    async def read(self) -> bytes:
        """Some bytes, or b"" at a clean end of stream.

        Raises:
            ConnectionLostError: the stream was reset or the connection broke.
        """
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``.

        Raises:
            ConnectionLostError: this side closed the stream, or it was reset or broke.
        """
        ...

    async def close(self) -> None:
        """End the sending direction; never raises, works in a cancelled scope."""
        ...

    async def reset(self) -> None:
        """Abort the stream, telling the peer; never raises, works in a cancelled scope."""
        ...


ByteStreamHandler = Callable[[ByteStream], Awaitable[None]]
"""Serves one inbound stream; what it raises is logged and the stream reset."""


@runtime_checkable
class RequestBoundaries(Protocol):
    """An inbound stream that keeps account of the request in progress (the resource
    limiter's): a reply ends it, and so must ``request_done`` for a message that has no
    reply (kad-dht's ADD_PROVIDER), or the stream counts as stalled part-way through a
    request once its ``stall_timeout`` passes."""

    def request_done(self) -> None:
        """The message received so far was whole and needs no reply."""
        ...


class StreamHost(Protocol):
    """A running host: an identity, addresses, inbound protocol handlers, outbound streams."""

    @property
    def peer_id(self) -> str:
        """This host's peer ID (``12D3KooW...``)."""
        ...

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs others can dial, ``/p2p/<peer-id>`` included."""
        ...

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        """Serve ``protocol`` with ``handler``, one call per inbound stream."""
        ...

    def remove_stream_handler(self, protocol: str) -> None:
        """Stop serving ``protocol``: new streams for it are refused."""
        ...

    async def open_stream(self, peer: PeerAddress, protocol: str) -> ByteStream:
        """Open a stream to ``peer`` speaking ``protocol``, connecting first if needed.

        Raises:
            PeerUnreachableError: no connection could be made, or the peer does not
                speak ``protocol``.
        """
        ...

    def connection_count(self, peer_id: str) -> int:
        """Open connections to ``peer_id``."""
        ...

    def peer_addrs(self, peer_id: str) -> list[str]:
        """Transport addresses this host knows for ``peer_id`` (no ``/p2p/`` part); may be empty."""
        ...

    def supports(self, peer_id: str, protocol: str) -> bool | None:
        """Whether ``peer_id`` serves ``protocol`` as far as this host knows (identify);
        None when it does not know yet."""
        ...

    def connections(self) -> list[tuple[str, str]]:
        """(peer ID, remote address) of every open connection, sorted."""
        ...

    def seen_at(self, peer_id: str) -> list[str]:
        """The remote addresses of the open connections to ``peer_id`` (those of
        ``connections()`` for that peer, without the others)."""
        ...

    def path(self, peer_id: str) -> str | None:
        """How this host reaches ``peer_id``: "direct", "relayed", or None (no connection)."""
        ...

    @property
    def reachability(self) -> str:
        """Whether others can dial this host: "public", "private" or "unknown"."""
        ...


class HostWrapper:
    """A ``StreamHost`` that passes everything to ``host``: subclass it and override
    what the wrapper changes (``ResourceLimitedHost`` limits what handlers serve; the
    simulations' ``MisbehavingHost`` scrambles what they answer)."""

    def __init__(self, host: StreamHost) -> None:
        self._host = host

    @property
    def peer_id(self) -> str:
        return self._host.peer_id

    @property
    def addrs(self) -> list[str]:
        return self._host.addrs

    @property
    def reachability(self) -> str:
        return self._host.reachability

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        self._host.set_stream_handler(protocol, handler)

    def remove_stream_handler(self, protocol: str) -> None:
        self._host.remove_stream_handler(protocol)

    async def open_stream(self, peer: PeerAddress, protocol: str) -> ByteStream:
        return await self._host.open_stream(peer, protocol)

    def connection_count(self, peer_id: str) -> int:
        return self._host.connection_count(peer_id)

    def peer_addrs(self, peer_id: str) -> list[str]:
        return self._host.peer_addrs(peer_id)

    def supports(self, peer_id: str, protocol: str) -> bool | None:
        return self._host.supports(peer_id, protocol)

    def connections(self) -> list[tuple[str, str]]:
        return self._host.connections()

    def seen_at(self, peer_id: str) -> list[str]:
        return self._host.seen_at(peer_id)

    def path(self, peer_id: str) -> str | None:
        return self._host.path(peer_id)


if TYPE_CHECKING:
    from p2pnet.net.host import Host, Stream
    from p2pnet.net.memory import MemoryHost, MemoryStream

    def _both_implementations_conform(
        host: Host, stream: Stream, memory_host: MemoryHost, memory_stream: MemoryStream
    ) -> None:
        """Never called: mypy checks these assignments."""
        hosts: list[StreamHost] = [host, memory_host, HostWrapper(host)]
        streams: list[ByteStream] = [stream, memory_stream]
        del hosts, streams
