"""What every request/response protocol here does with streams: read one message through a
sans-IO reader, and keep finished streams per peer for the next request.

Opening a stream costs ~10 ms of CPU in py-libp2p, a round trip on an open one ~1 ms,
so clients reuse streams: one stream carries one request at a time. ``StreamPool.request``
is the one exchange loop the DHT, invoke and describe clients share: take a pooled
stream, run the exchange, retry on another stream when a reused one turns out closed,
put the stream back when it is still in step.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import trio

from p2pnet.core.address import PeerAddress
from p2pnet.errors import ConnectionLostError
from p2pnet.net.interfaces import ByteStream, StreamHost

__all__ = ["Channel", "MessageSource", "StreamPool", "read_message", "read_request"]

log = logging.getLogger(__name__)

T = TypeVar("T", covariant=True)
R = TypeVar("R", bound="MessageSource[object]")
Out = TypeVar("Out")


class MessageSource(Protocol[T]):
    """A sans-IO reader: bytes in, messages out (MessageReader, KadMessageReader, ...)."""

    @property
    def at_message_boundary(self) -> bool: ...

    def receive_data(self, data: bytes) -> None: ...

    def next_message(self) -> T | None: ...


async def read_message(stream: ByteStream, reader: MessageSource[T]) -> T | None:
    """The next message on ``stream``, or None at a clean end of stream.

    Raises:
        RemoteProtocolError, PayloadTooLargeError: the peer broke the protocol (from
            the reader).
        ConnectionLostError: the stream broke, or ended in the middle of a message.
    """
    while (message := reader.next_message()) is None:
        data = await stream.read()
        if not data:
            if reader.at_message_boundary:
                return None
            raise ConnectionLostError(
                f"peer {stream.peer_id} closed the stream in the middle of a message"
            )
        reader.receive_data(data)
    return message


async def read_request(
    stream: ByteStream, reader: MessageSource[T], idle_timeout: float
) -> T | None:
    """The next request on a server's stream, or None once the caller closed the stream
    or sent nothing for ``idle_timeout`` seconds; the stream is closed in both cases.

    Raises:
        As read_message.
    """
    message = None
    with trio.move_on_after(idle_timeout) as idle:
        message = await read_message(stream, reader)
    if idle.cancelled_caught:
        log.debug("closing a stream from %s idle for %.0f s", stream.peer_id, idle_timeout)
    if message is None:
        await stream.close()
    return message


@dataclass
class Channel(Generic[R]):
    """A stream and the reader that keeps its framing state; ``reused`` if it carried
    an earlier request (the peer may have closed it while it was idle). An exchange sets
    ``in_step`` to False when the stream can carry no further request (a reply it did
    not wait for may still come)."""

    stream: ByteStream
    reader: R
    reused: bool = False
    idle_since: float = 0.0
    in_step: bool = True


class StreamPool(Generic[R]):
    """Idle streams of one protocol, per peer, for reuse.

    Args:
        host: where streams are opened.
        protocol: the protocol ID.
        new_reader: makes the reader of a new stream.
        max_idle: finished streams kept per peer; more are closed.
        max_idle_time: seconds a finished stream is kept; older ones are closed when the
            pool is next used. Keep it below the server's idle timeout, so that we close
            streams before the server does and never reuse a stream it is closing.
    """

    def __init__(
        self,
        host: StreamHost,
        protocol: str,
        new_reader: Callable[[], R],
        *,
        max_idle: int = 2,
        max_idle_time: float = 240.0,
    ) -> None:
        self._host = host
        self._protocol = protocol
        self._new_reader = new_reader
        self._max_idle = max_idle
        self._max_idle_time = max_idle_time
        self._idle: dict[str, list[Channel[R]]] = {}
        self._next_prune = 0.0

    def idle(self, peer_id: str) -> list[Channel[R]]:
        """The idle channels kept for ``peer_id`` (a copy)."""
        return list(self._idle.get(peer_id, ()))

    async def checkout(self, peer: PeerAddress) -> Channel[R]:
        """An idle channel to ``peer``, or a new one.

        Raises:
            PeerUnreachableError: no stream could be opened.
        """
        await self.prune()
        idle = self._idle.get(peer.peer_id)
        if idle:
            channel = idle.pop()
            if not idle:
                del self._idle[peer.peer_id]
            channel.reused = True
            return channel
        stream = await self._host.open_stream(peer, self._protocol)
        return Channel(stream, self._new_reader())

    async def request(
        self, peer: PeerAddress, exchange: Callable[[Channel[R]], Awaitable[Out]]
    ) -> Out:
        """``exchange(channel)`` on a pooled stream to ``peer``, or a new one.

        Peers close streams that stay idle (go-libp2p after a minute, js-libp2p after
        10 s, ours after their idle timeout), so a reused stream that breaks is no
        failure of the peer: the exchange is tried again on the next pooled stream, and
        on a new one once none is left. A new stream that breaks, or any other error,
        ends the request; the stream is reset, since its framing is unknown. After the
        exchange the stream goes back to the pool (unless the exchange took it out of
        step).

        Raises:
            PeerUnreachableError: no stream could be opened.
            ConnectionLostError: a new stream broke.
            Whatever ``exchange`` raises.
        """
        while True:
            channel = await self.checkout(peer)
            try:
                result = await exchange(channel)
            except ConnectionLostError:
                await channel.stream.reset()
                if channel.reused:
                    log.debug("idle %s stream to %s was closed; retrying", self._protocol, peer)
                    continue
                raise
            except BaseException:
                # Cancelled, or a protocol error: the stream's framing is unknown now.
                await channel.stream.reset()
                raise
            if channel.in_step:
                await self.checkin(channel)
            else:
                await channel.stream.reset()
            return result

    async def checkin(self, channel: Channel[R]) -> None:
        """Keep a channel whose exchange completed; reset it if bytes are left over in
        its reader (its framing can no longer be trusted), close it over the cap."""
        if not channel.reader.at_message_boundary:
            await channel.stream.reset()
            return
        idle = self._idle.setdefault(channel.stream.peer_id, [])
        if len(idle) < self._max_idle:
            channel.idle_since = trio.current_time()
            idle.append(channel)
            return
        await channel.stream.close()

    async def prune(self) -> None:
        """Close the streams idle for longer than ``max_idle_time``; runs at most twice
        per ``max_idle_time``, so that a busy pool does not scan on every request. Every
        checkout prunes; a pool that is not used keeps its streams until pruned."""
        now = trio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + self._max_idle_time / 2
        expired: list[Channel[R]] = []
        for peer_id in list(self._idle):
            keep = [c for c in self._idle[peer_id] if now - c.idle_since < self._max_idle_time]
            expired += [c for c in self._idle[peer_id] if now - c.idle_since >= self._max_idle_time]
            if keep:
                self._idle[peer_id] = keep
            else:
                del self._idle[peer_id]
        for channel in expired:
            await channel.stream.close()

    async def aclose(self) -> None:
        """Close every idle stream."""
        idle, self._idle = self._idle, {}
        for channels in idle.values():
            for channel in channels:
                await channel.stream.close()
