"""What the invoke server and client share: the protocol ID and message I/O on a stream."""

from __future__ import annotations

from typing import Final

from p2pnet.core.messages import EncodedMessage, Message, MessageReader
from p2pnet.net import channels
from p2pnet.net.interfaces import ByteStream

__all__ = ["INVOKE_PROTOCOL", "read_message", "write_message"]

INVOKE_PROTOCOL: Final = "/p2pnet/invoke/1.0.0"


async def write_message(stream: ByteStream, encoded: EncodedMessage) -> None:
    """Send every frame of ``encoded``.

    Raises:
        ConnectionLostError: the stream broke.
    """
    for frame in encoded.frames():
        await stream.write(frame)


async def read_message(stream: ByteStream, reader: MessageReader) -> Message | None:
    """The next invoke message on ``stream``, or None at a clean end of stream (see
    ``p2pnet.net.channels.read_message`` for the errors)."""
    return await channels.read_message(stream, reader)
