"""The calling side of ``/p2pnet/invoke/1.0.0``.

Opening a libp2p stream costs ~10 ms of CPU in py-libp2p, a round trip on an open
one ~1 ms, so the client keeps finished streams per peer and reuses them: one
stream carries one call at a time, concurrent calls use more streams.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt
import trio

from p2pnet.core.messages import (
    EncodedMessage,
    ErrorReply,
    Invoke,
    Message,
    MessageReader,
    Result,
    WireLimits,
    encode_message,
)
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    RemoteProtocolError,
    error_from_wire,
)
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message, write_message
from p2pnet.net.channels import Channel, StreamPool
from p2pnet.net.host import PeerAddress
from p2pnet.net.interfaces import StreamHost

__all__ = ["InvokeClient"]

log = logging.getLogger(__name__)


class InvokeClient:
    """Calls models on other peers through ``host``.

    Args:
        host: the local libp2p host.
        limits: sizes accepted in replies and used for requests.
        max_idle_streams: finished streams kept per peer for reuse.
    """

    def __init__(
        self, host: StreamHost, *, limits: WireLimits = WireLimits(), max_idle_streams: int = 8
    ) -> None:
        self._limits = limits
        self._pool: StreamPool[MessageReader] = StreamPool(
            host, INVOKE_PROTOCOL, lambda: MessageReader(limits), max_idle=max_idle_streams
        )
        self._ids = itertools.count(1)

    async def invoke(
        self,
        peer: PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run ``model_id`` on ``peer`` with ``inputs``; return its named outputs.

        ``timeout`` (seconds) covers everything: dialling, sending, queueing and
        running on the peer, receiving. The peer is told the time left when the
        request leaves.

        Raises:
            InvalidInputError, PayloadTooLargeError: the inputs cannot be sent (before
                anything is sent), or the peer rejected them.
            UnknownModelError, InvalidModelIdError: the peer does not serve that model.
            ModelExecutionError, InternalPeerError, PeerBusyError: the peer failed.
            PeerUnreachableError: no connection to the peer.
            ConnectionLostError: the connection broke during the call.
            DeadlineExceededError: no reply within ``timeout``.
            RemoteProtocolError, LocalProtocolError: one side broke the protocol.
        """
        request_id = next(self._ids)
        deadline = trio.current_time() + timeout
        # Encode once up front: inputs that cannot be sent fail here, before any I/O.
        encode_message(Invoke(request_id, model_id, inputs, 1), self._limits)
        with trio.move_on_at(deadline):
            for attempt in itertools.count():
                channel = await self._pool.checkout(peer)
                remaining_ms = max(1, math.ceil((deadline - trio.current_time()) * 1000))
                request = encode_message(
                    Invoke(request_id, model_id, inputs, remaining_ms), self._limits
                )
                try:
                    reply, in_sync = await self._exchange(channel, request)
                except ConnectionLostError:
                    await channel.stream.reset()
                    # A reused stream may have been closed by the peer while idle; that
                    # is no failure of this call, so try once more on a fresh stream.
                    if channel.reused and attempt == 0:
                        log.debug("idle stream to %s was closed; retrying", peer.peer_id)
                        continue
                    raise
                except BaseException:
                    # Cancelled, or a protocol error: the stream's framing is unknown now.
                    await channel.stream.reset()
                    raise
                if in_sync:
                    await self._pool.checkin(channel)
                else:
                    await channel.stream.reset()
                return self._outputs(reply, request_id, channel.stream.peer_id)
        raise DeadlineExceededError(
            f"no reply from peer {peer.peer_id} for model {model_id} within {timeout:g} s"
        )

    def _outputs(
        self, reply: Message, request_id: int, peer_id: str
    ) -> dict[str, npt.NDArray[Any]]:
        if isinstance(reply, ErrorReply):
            raise error_from_wire(reply.code, reply.message, peer_id)
        if not isinstance(reply, Result) or reply.request_id != request_id:
            raise RemoteProtocolError(
                f"peer {peer_id} answered request {request_id} with "
                f"{type(reply).__name__} {reply.request_id}"
            )
        return dict(reply.outputs)

    async def _exchange(
        self, channel: Channel[MessageReader], request: EncodedMessage
    ) -> tuple[Message, bool]:
        """Send ``request``, return the reply and whether the stream can carry another call."""
        if not request.streamed:
            await write_message(channel.stream, request)
            return await self._read_reply(channel), True
        # A large request: read while writing, so that a peer rejecting it early (too
        # large, unknown model) is heard at once instead of after the whole upload.
        sent = False
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                nonlocal sent
                try:
                    await write_message(channel.stream, request)
                    sent = True
                except ConnectionLostError:
                    pass  # the reader sees the same break, or the peer's reason for it

            nursery.start_soon(send)
            reply = await self._read_reply(channel)
            nursery.cancel_scope.cancel()
        return reply, sent

    async def _read_reply(self, channel: Channel[MessageReader]) -> Message:
        reply = await read_message(channel.stream, channel.reader)
        if reply is None:
            raise ConnectionLostError(
                f"peer {channel.stream.peer_id} closed the stream without replying"
            )
        return reply

    async def aclose(self) -> None:
        """Close every idle stream."""
        await self._pool.aclose()
