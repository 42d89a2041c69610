"""Unsigned LEB128 varints (the multiformats unsigned-varint), minimal encoding only."""

from __future__ import annotations

from typing import Final

from p2pnet.errors import RemoteProtocolError

__all__ = ["MAX_UVARINT_BYTES", "decode_uvarint", "encode_uvarint", "try_decode_uvarint"]

# 9 bytes carry 63 bits, the multiformats limit.
MAX_UVARINT_BYTES: Final = 9


def encode_uvarint(value: int) -> bytes:
    """Minimal unsigned varint encoding of ``value`` (0 <= value < 2**63)."""
    if not 0 <= value < 1 << 63:
        raise ValueError(f"uvarint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def try_decode_uvarint(
    buf: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[int, int] | None:
    """Decode a varint at ``offset``; return (value, offset after it), or None if incomplete.

    Raises:
        RemoteProtocolError: longer than 9 bytes, or not minimally encoded.
    """
    value = 0
    shift = 0
    end = len(buf)
    i = offset
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i - offset > 1:
                raise RemoteProtocolError("varint is not minimally encoded")
            return value, i
        shift += 7
        if i - offset >= MAX_UVARINT_BYTES:
            raise RemoteProtocolError(f"varint longer than {MAX_UVARINT_BYTES} bytes")
    return None


def decode_uvarint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Like try_decode_uvarint, but a truncated varint is an error too.

    Raises:
        RemoteProtocolError: truncated, overlong or non-minimal varint.
    """
    result = try_decode_uvarint(buf, offset)
    if result is None:
        raise RemoteProtocolError("varint truncated")
    return result
