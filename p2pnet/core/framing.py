"""Length-prefixed frames, with no I/O: ``uvarint(len(body)) | body``.

    frame = uvarint(n) | body[n]        1 <= n <= max_frame_size
                                        (0 <= n with allow_empty, as kad-dht needs)

``encode_frame`` adds the prefix; ``FrameReader`` takes bytes in pieces of any size
and returns each complete body once. The reader refuses a frame from its length
prefix alone, before any of the body arrives, so a peer cannot make this side
buffer more than ``max_frame_size`` plus one read.

``uvarint`` is the multiformats unsigned varint (p2pnet.core.varint): at most 9
bytes, minimally encoded.
"""

from __future__ import annotations

from typing import Final

from p2pnet.core.varint import encode_uvarint, try_decode_uvarint
from p2pnet.errors import PayloadTooLargeError, RemoteProtocolError

__all__ = ["MAX_FRAME_SIZE_LIMIT", "FrameReader", "encode_frame"]

# The largest length a uvarint of 9 bytes carries; no frame limit can be above it.
MAX_FRAME_SIZE_LIMIT: Final = (1 << 63) - 1


def _check_limit(max_frame_size: int) -> None:
    if isinstance(max_frame_size, bool) or not 0 < max_frame_size <= MAX_FRAME_SIZE_LIMIT:
        raise ValueError(f"max_frame_size must be in 1..2**63-1, got {max_frame_size!r}")


def encode_frame(
    body: bytes | bytearray | memoryview, max_frame_size: int, *, allow_empty: bool = False
) -> bytes:
    """``body`` with its length prefix, ready to write to a stream.

    Raises:
        PayloadTooLargeError: ``body`` is over ``max_frame_size`` bytes, so the
            receiver would refuse it.
        ValueError: ``body`` is empty and ``allow_empty`` is false (a receiver with the
            same setting would refuse it), or ``max_frame_size`` is not positive.
    """
    _check_limit(max_frame_size)
    size = len(body)
    if size > max_frame_size:
        raise PayloadTooLargeError(
            f"frame of {size} bytes; the limit is {max_frame_size} bytes per frame"
        )
    if size == 0 and not allow_empty:
        raise ValueError("an empty frame cannot be sent: receivers refuse it")
    return encode_uvarint(size) + bytes(body)


class FrameReader:
    """Bytes in, frame bodies out.

    Feed bytes with ``receive_data`` in pieces of any size; ``next_frame`` returns
    each complete body once, or None when it needs more bytes. After it raises, the
    framing of the stream is lost: every later call raises the same error, and the
    stream must be closed or reset.

    Args:
        max_frame_size: largest body accepted.
        allow_empty: accept frames with an empty body (off: an empty frame is an error).
    """

    def __init__(self, max_frame_size: int, *, allow_empty: bool = False) -> None:
        _check_limit(max_frame_size)
        self.max_frame_size = max_frame_size
        self.allow_empty = allow_empty
        self._buf = bytearray()
        # Length and prefix size of the frame at the start of _buf, once its prefix is read.
        self._head: tuple[int, int] | None = None
        self._error: RemoteProtocolError | PayloadTooLargeError | None = None

    @property
    def at_frame_boundary(self) -> bool:
        """True when no part of a frame is buffered, so an end of stream here is clean."""
        return not self._buf

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a frame."""
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes read from the stream; nothing is parsed until ``next_frame``."""
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed.

        Raises:
            PayloadTooLargeError: the length prefix says more than ``max_frame_size``;
                raised as soon as the prefix is complete.
            RemoteProtocolError: an empty frame (unless allowed), or a length prefix
                longer than 9 bytes or not minimally encoded.
        """
        if self._error is not None:
            raise self._error
        if self._head is None:
            try:
                self._head = self._read_head()
            except (RemoteProtocolError, PayloadTooLargeError) as exc:
                self._error = exc
                raise
            if self._head is None:
                return None
        length, prefix = self._head
        end = prefix + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[prefix:end])
        del self._buf[:end]
        self._head = None
        return body

    def _read_head(self) -> tuple[int, int] | None:
        parsed = try_decode_uvarint(self._buf)
        if parsed is None:
            return None
        length, prefix = parsed
        if length == 0 and not self.allow_empty:
            raise RemoteProtocolError("empty frame")
        if length > self.max_frame_size:
            raise PayloadTooLargeError(
                f"frame of {length} bytes; this side accepts at most "
                f"{self.max_frame_size} bytes per frame"
            )
        return length, prefix
