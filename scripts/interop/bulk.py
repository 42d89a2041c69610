"""The bulk transfer protocol of the interop checks, both sides, over p2pnet's stream API.

``/p2pnet-interop/bulk/1.0.0`` (js_node.mjs serves it too; docs/interop.md, "Bulk
transfer"). p2pnet is always the client. The request is 9 bytes: op (1 byte) and n
(u64, big-endian, at most MAX_BYTES).

* op 1, put: the client sends n bytes; the server answers with 40 bytes, the count it
  received (u64) and their sha256.
* op 2, get: the server sends n bytes, then the sha256 of those n bytes (32 bytes).

The server closes the stream after its answer; a bad request gets the stream reset.
Used by run_js_interop.py (correctness, check "bulk.*") and bench_bulk.py (speed).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass

from p2pnet.core.address import PeerAddress
from p2pnet.errors import ConnectionLostError
from p2pnet.net.host import Host, Stream

__all__ = [
    "BULK_PROTOCOL",
    "MAX_BYTES",
    "Transfer",
    "bulk_get",
    "bulk_put",
    "make_payload",
    "serve_bulk",
]

BULK_PROTOCOL = "/p2pnet-interop/bulk/1.0.0"
PUT = 1
GET = 2
MAX_BYTES = 1 << 30
# Bytes per Stream.write: p2pnet's own bulk writes are WireLimits.chunk_size (1 MiB).
CHUNK = 1 << 20
_HEADER = struct.Struct(">BQ")
_DIGEST = 32


@dataclass(frozen=True)
class Transfer:
    """One transfer as the client saw it. ``seconds`` runs from the first byte of the
    request to the last byte of the answer (stream opening not included)."""

    direction: str  # "put" (p2pnet sends) or "get" (p2pnet receives)
    size: int
    seconds: float
    ok: bool
    detail: str
    # Times the sender ran out of Yamux send window (py-libp2p's count; puts only).
    window_waits: int | None = None

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


def make_payload(size: int) -> tuple[bytes, bytes]:
    """``size`` random bytes and their sha256."""
    data = os.urandom(size)
    return data, hashlib.sha256(data).digest()


class _Reader:
    """Exact-length reads on top of Stream.read (which returns whatever arrived)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def chunk(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (what is buffered first); b"" at end of stream."""
        if not self.buf:
            data = await self.stream.read()
            if len(data) <= limit:
                return data
            self.buf += data
        out = bytes(self.buf[:limit])
        del self.buf[:limit]
        return out

    async def exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data = await self.chunk(n - len(out))
            if not data:
                raise ConnectionLostError(
                    f"stream from {self.stream.peer_id} ended after {len(out)} of {n} bytes"
                )
            out += data
        return bytes(out)


async def _write_all(stream: Stream, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        await stream.write(bytes(view[start : start + CHUNK]))


async def bulk_put(host: Host, peer: PeerAddress, data: bytes, digest: bytes) -> Transfer:
    """Send ``data`` to ``peer``; ok when it reports the same count and sha256."""
    stream = await host.open_stream(peer, BULK_PROTOCOL)
    try:
        started = time.perf_counter()
        await stream.write(_HEADER.pack(PUT, len(data)))
        await _write_all(stream, data)
        answer = await _Reader(stream).exactly(8 + _DIGEST)
        seconds = time.perf_counter() - started
        waits = _window_waits(stream)
    finally:
        await stream.close()
    (count,) = struct.unpack(">Q", answer[:8])
    ok = count == len(data) and answer[8:] == digest
    detail = "" if ok else f"peer received {count} of {len(data)} bytes, sha256 {answer[8:].hex()}"
    return Transfer("put", len(data), seconds, ok, detail, waits)


def _window_waits(stream: Stream) -> int | None:
    """py-libp2p's YamuxStream._zero_window_waits: how often the writer found no window
    (a benchmark figure; None if the stream is not py-libp2p's Yamux)."""
    muxed = getattr(stream._raw, "muxed_stream", None)
    waits = getattr(muxed, "_zero_window_waits", None)
    return waits if isinstance(waits, int) else None


async def bulk_get(host: Host, peer: PeerAddress, size: int) -> Transfer:
    """Ask ``peer`` for ``size`` bytes; ok when their sha256 is the one it sends after them."""
    stream = await host.open_stream(peer, BULK_PROTOCOL)
    try:
        started = time.perf_counter()
        await stream.write(_HEADER.pack(GET, size))
        reader = _Reader(stream)
        digest = hashlib.sha256()
        got = 0
        while got < size:
            data = await reader.chunk(size - got)
            if not data:
                raise ConnectionLostError(f"bulk get ended after {got} of {size} bytes")
            digest.update(data)
            got += len(data)
        trailer = await reader.exactly(_DIGEST)
        seconds = time.perf_counter() - started
    finally:
        await stream.close()
    ok = trailer == digest.digest()
    detail = "" if ok else f"sha256 {digest.hexdigest()}, peer says {trailer.hex()}"
    return Transfer("get", size, seconds, ok, detail)


async def serve_bulk(stream: Stream) -> None:
    """The server side (the p2pnet peer of the p2pnet-to-p2pnet baseline)."""
    reader = _Reader(stream)
    op, size = _HEADER.unpack(await reader.exactly(_HEADER.size))
    if op not in (PUT, GET) or size > MAX_BYTES:
        raise ValueError(f"bad bulk request: op {op}, {size} bytes")
    digest = hashlib.sha256()
    if op == PUT:
        got = 0
        while got < size:
            data = await reader.chunk(size - got)
            if not data:
                raise ConnectionLostError(f"bulk put ended after {got} of {size} bytes")
            digest.update(data)
            got += len(data)
        await stream.write(struct.pack(">Q", got) + digest.digest())
    else:
        block = os.urandom(min(size, CHUNK))
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            digest.update(piece)
            await stream.write(piece)
            sent += len(piece)
        await stream.write(digest.digest())
    await stream.close()
