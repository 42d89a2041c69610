"""Reads of a TCP connection served from one socket receive instead of one per piece.

py-libp2p 0.8.1 reads every frame in small pieces, each its own socket read:
``NoisePacketReadWriter.read_msg`` reads a Noise message's 2-byte length, then its body,
through ``read_exactly`` and ``TrioTCPStream.read``, and each ``TrioTCPStream.read`` takes
the stream's ``read_lock`` (``async with``: two trips through trio's scheduler even when
nobody holds it) and calls ``receive_some`` with exactly the bytes asked for (a
``recv`` system call and another scheduler trip). Every Yamux frame, whatever it
carries, costs two such reads on the receiving side; multistream-select's varint reads
on a new connection read one byte at a time. go-libp2p reads the connection through a
buffered reader (``bufio`` in go-msgio and ``noise/rw.go``'s read buffer), rust-libp2p
through its framed codecs. No upstream issue found (searched libp2p/py-libp2p issues,
2026-12-05).

``install_buffered_tcp_reads`` makes ``TrioTCPStream.read`` ask the socket for up to
64 KiB (trio's own default receive size) and keep what the caller did not ask for; the
next reads are served from it without a system call or a scheduler trip, and the lock
is taken at once when free (``yamux_window.take``). Nothing changes on the wire, nor in
what a caller receives: a read returns at most the bytes asked for, at least one, and
``b""`` only at the end of the stream (and from then on, without asking the socket
again: a TCP stream does not reopen); bytes received before a reset are returned before
the reset's error, as the socket itself would.

``install_direct_read_exactly`` gives ``libp2p.io.msgio`` and Yamux (which import
``read_exactly`` by name) upstream's ``read_exactly`` with a shortcut: when the first
read returns every byte asked for, they are returned as they are, without upstream's
copy into a ``bytearray`` and out again. A shorter first read goes on as upstream does
(the same retries, the same ``IncompleteReadError``), except after an empty read, the
end of the stream (``Reader.read``'s contract; py-libp2p's readers raise rather than
return ``b""`` for anything else): upstream reads it again, 100 times, before raising
``IncompleteReadError``, which on a TCP connection is 100 socket reads and 300
scheduler trips in the Yamux reader of every connection that closes, on both sides;
the patched function raises the same error at once.

``install_quiet_noise_reads``: py-libp2p's ``BaseNoiseMsgReadWriter.read_msg`` formats
two debug f-strings per Noise message whether or not debug logging is on; the patched
method reads and decrypts as upstream's does and calls upstream's, with its log lines,
when the Noise logger has DEBUG on.

``install_read_patches`` installs all three. Checked against py-libp2p 0.8.1 (pinned in
pyproject.toml): a new release needs them compared again.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.io import msgio as _msgio
from libp2p.io import trio as _io_trio
from libp2p.io import utils as _io_utils
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.security.noise import io as _noise_io
from libp2p.stream_muxer.yamux import yamux as _yamux

from p2pnet.net.patching import replace_attribute
from p2pnet.net.yamux_window import take

__all__ = [
    "RECEIVE_SIZE",
    "install_buffered_tcp_reads",
    "install_direct_read_exactly",
    "install_quiet_noise_reads",
    "install_read_patches",
]

# Bytes asked of the socket by one receive: trio's default (``receive_some()``'s
# ``DEFAULT_RECEIVE_SIZE``), which upstream uses for ``read()`` without a count. A larger
# read asks for what it needs.
RECEIVE_SIZE = 65536

_BUFFER = "_p2pnet_read_buffer"
_ENDED = "_p2pnet_read_ended"
_OFFSET = "_p2pnet_read_offset"
_upstream_read_exactly = _io_utils.read_exactly
_upstream_noise_read_msg = _noise_io.BaseNoiseMsgReadWriter.read_msg


def _serve_buffered(stream: Any, n: int | None) -> bytes:
    """Up to ``n`` (all if None) of the bytes ``stream`` holds; the caller checked that
    it holds some."""
    values = stream.__dict__
    buffer: bytes = values[_BUFFER]
    offset: int = values[_OFFSET]
    end = len(buffer) if n is None else min(len(buffer), offset + n)
    if end == len(buffer):
        values[_BUFFER] = b""
        values[_OFFSET] = 0
        return buffer[offset:] if offset else buffer
    values[_OFFSET] = end
    return buffer[offset:end]


def _holds_bytes(stream: Any) -> bool:
    return bool(stream.__dict__.get(_BUFFER))


async def _buffered_read(self: Any, n: int | None = None) -> bytes:
    """upstream ``TrioTCPStream.read``, served from the bytes of the last receive while
    any are left (see the module docstring)."""
    if n is not None and n <= 0:
        if n == 0:
            return b""
        raise ValueError("max_bytes must be >= 1")  # as trio's receive_some, upstream's
    if _holds_bytes(self):
        return _serve_buffered(self, n)
    if self.__dict__.get(_ENDED):
        await trio.lowlevel.checkpoint()  # as the socket's own end-of-stream read would
        return b""
    await take(self.read_lock)
    try:
        if _holds_bytes(self):  # filled by another reader while this one waited
            return _serve_buffered(self, n)
        wanted = RECEIVE_SIZE if n is None else max(n, RECEIVE_SIZE)
        try:
            data: bytes = await self.stream.receive_some(wanted)
        except trio.BrokenResourceError as error:
            # upstream's: the remote peer broke or reset the connection.
            raise ConnectionClosedError(
                f"TCP connection reset by remote peer: {error}", transport="tcp"
            ) from error
        except trio.ClosedResourceError:
            # upstream's: closed locally, an end of stream for the layers above.
            return b""
        if not data:
            self.__dict__[_ENDED] = True
            return data
        if n is None or len(data) <= n:
            return data
        self.__dict__[_BUFFER] = data
        self.__dict__[_OFFSET] = n
        return data[:n]
    finally:
        self.read_lock.release()


def install_buffered_tcp_reads() -> None:
    """Patch py-libp2p's ``TrioTCPStream.read`` (see the module docstring); idempotent."""
    replace_attribute(_io_trio.TrioTCPStream, "read", _buffered_read)


async def _direct_read_exactly(
    reader: Any, n: int, retry_count: int = _io_utils.DEFAULT_RETRY_READ_COUNT
) -> bytes:
    """upstream ``read_exactly``, a first read that returns everything returned as is, and
    no retries after an empty read (see the module docstring)."""
    first = await reader.read(n)
    if len(first) >= n:
        return first if type(first) is bytes else bytes(first)
    buffer = bytearray(first)
    if first:  # an empty read is the end of the stream: no retries, as below
        for _ in range(retry_count):
            if len(buffer) >= n:
                return bytes(buffer)
            more = await reader.read(n - len(buffer))
            if not more:
                break
            buffer.extend(more)
    if len(buffer) >= n:
        return bytes(buffer)
    # upstream's error, with its transport context when the reader gives one.
    context = ""
    state_of = getattr(reader, "conn_state", None)
    if callable(state_of):
        try:
            state = state_of()
            if isinstance(state, dict):
                transport = state.get("transport", "unknown")
                duration = state.get("connection_duration", 0)
                context = f" (transport: {transport}, duration: {duration:.2f}s)"
        except Exception:  # upstream ignores a failing conn_state() too
            context = ""
    raise IncompleteReadError(
        f"Connection closed during read operation: expected {n} bytes but "
        f"received {len(buffer)} bytes{context}",
        expected_bytes=n,
        received_bytes=len(buffer),
    )


def install_direct_read_exactly() -> None:
    """Give ``libp2p.io.msgio`` and py-libp2p's Yamux the ``read_exactly`` above (see the
    module docstring); idempotent."""
    modules: tuple[Any, ...] = (_msgio, _yamux)
    for module in modules:
        if module.read_exactly is _upstream_read_exactly:
            module.read_exactly = _direct_read_exactly


async def _quiet_noise_read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
    """upstream ``BaseNoiseMsgReadWriter.read_msg`` without its debug strings unless they
    are logged."""
    if prefix_encoded or _noise_io.logger.isEnabledFor(logging.DEBUG):
        return await _upstream_noise_read_msg(self, prefix_encoded)
    result: bytes = self.decrypt(await self.read_writer.read_msg())
    return result


def install_quiet_noise_reads() -> None:
    """Patch py-libp2p's ``BaseNoiseMsgReadWriter.read_msg`` (see the module docstring);
    idempotent."""
    replace_attribute(_noise_io.BaseNoiseMsgReadWriter, "read_msg", _quiet_noise_read_msg)


def install_read_patches() -> None:
    """All three read-path patches above; idempotent."""
    install_buffered_tcp_reads()
    install_direct_read_exactly()
    install_quiet_noise_reads()
