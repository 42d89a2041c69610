"""A Yamux sender that wakes when its peer grants window, instead of polling for it.

Works around py-libp2p 0.8.1's ``YamuxStream.write``: a stream whose send window is spent
checks for a WINDOW_UPDATE every 10 ms (``trio.sleep(0.01)`` in a loop; the window
auto-tuning of libp2p/py-libp2p#1269 left this loop as it was). Against a peer whose
window starts at 256 KiB (go-yamux, js-yamux) a bulk sender stalls up to 10 ms each time
the window runs out, hundreds of times for a 64 MiB payload.

``install_window_wakeup`` makes ``send_window`` a property whose setter wakes the stream's
waiting writer when the window grows (py-libp2p raises it in one place per frame type,
``stream.send_window += n``), and replaces ``write`` with upstream's, whose wait is on
that wake-up. A stream closed while its writer waits is still noticed within 10 ms, as
upstream does (``closed`` has no wake-up). Everything else in ``write`` is upstream's.

``install_receive_window_cap`` works around py-libp2p 0.8.1 granting more receive window
than its own maximum: ``_auto_tune_and_send_window_update``'s partial-slack branch
(``recv_window += delta + bytes_read``) counts bytes just read twice (``delta`` already
counts them, as they left the buffer), so a stream read in many slices ends up offering
its sender up to 20 MiB. js-yamux (@chainsafe/libp2p-yamux 8) sends each DATA frame as
large as its whole send window, and py-libp2p refuses a DATA frame longer than
``MAX_WINDOW_SIZE`` (16 MiB) by closing the connection ("announced oversized DATA
frame"): a js peer sending p2pnet 64 MiB broke the connection after 9-20 MiB, on most
runs (docs/interop.md, "Bulk transfer"). The cap trims each WINDOW_UPDATE so that the
window offered (``recv_window``, upstream's own count, already raised by the caller)
never exceeds ``MAX_WINDOW_SIZE``.
"""

from __future__ import annotations

import struct
from typing import Any

import trio
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as _yamux

from p2pnet.net.patching import replace_attribute

__all__ = ["install_receive_window_cap", "install_window_wakeup", "take"]

# How often a waiting writer looks at ``closed``, which has no wake-up (upstream's poll).
_CLOSED_POLL = 0.01
# How long a writer waits for window before giving up (upstream's).
_WINDOW_TIMEOUT = 5.0

_WINDOW = "_p2pnet_send_window"
_GREW = "_p2pnet_window_grew"


def _get_send_window(stream: Any) -> int:
    # A stream made before the patch keeps its window in its own ``send_window``.
    values = stream.__dict__
    return int(values[_WINDOW] if _WINDOW in values else values.get("send_window", 0))


def _set_send_window(stream: Any, value: int) -> None:
    grew = value > _get_send_window(stream)
    stream.__dict__[_WINDOW] = value
    if grew:
        event = stream.__dict__.get(_GREW)
        if event is not None:
            event.set()


def _window_grew(stream: Any) -> trio.Event:
    """An event the next window increase sets (a new one once the last was set)."""
    event: trio.Event | None = stream.__dict__.get(_GREW)
    if event is None or event.is_set():
        event = stream.__dict__[_GREW] = trio.Event()
    return event


async def take(lock: trio.Lock | trio.Semaphore) -> None:
    """Acquire ``lock``; at once, without yielding to the scheduler, when it is free.

    ``async with trio.Lock()`` always passes through the scheduler, twice (a cancel
    check, then a reschedule), even for a lock nobody holds: py-libp2p 0.8.1 takes
    ~30 of them per small call. Taken at once, the write paths copied here skip those
    trips; the socket write that follows is still a checkpoint (trio's ``send_all``).
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


async def _write(self: Any, data: bytes) -> None:
    """upstream ``YamuxStream.write`` (py-libp2p 0.8.1), waiting on ``_window_grew``, its
    locks taken at once when free (``take``; ``rw_lock.write_lock()`` is upstream's
    ``ReadWriteLock._writer_lock``, a semaphore of 1)."""
    if self.send_closed:
        raise MuxedStreamError("Stream is closed for sending")
    total_len = len(data)
    sent = 0
    writer_lock = self.rw_lock._writer_lock
    window_lock = self.window_lock
    while sent < total_len:
        frame: bytes | None = None
        while frame is None:
            await take(writer_lock)
            try:
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                await take(window_lock)
                try:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self.send_window > 0:
                        to_send = min(
                            self.send_window,
                            _yamux.MAX_MESSAGE_SIZE - _yamux.HEADER_SIZE,
                            total_len - sent,
                        )
                        chunk = data[sent : sent + to_send]
                        self.send_window -= to_send
                        header = struct.pack(
                            _yamux.YAMUX_HEADER_FORMAT,
                            0,
                            _yamux.TYPE_DATA,
                            0,
                            self.stream_id,
                            len(chunk),
                        )
                        frame = header + chunk
                finally:
                    window_lock.release()
            finally:
                writer_lock.release()
            if frame is not None:
                break
            self._zero_window_waits += 1
            with trio.move_on_after(_WINDOW_TIMEOUT) as waited:
                while True:
                    async with self.window_lock:
                        if self.send_window > 0 or self.closed:
                            break
                        grew = _window_grew(self)
                    with trio.move_on_after(_CLOSED_POLL):
                        await grew.wait()
            if waited.cancelled_caught:
                raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")
        await self.conn._write_frame(frame)
        sent += len(frame) - _yamux.HEADER_SIZE


def install_window_wakeup() -> None:
    """Patch py-libp2p's ``YamuxStream`` (see the module docstring); idempotent. Streams
    opened before keep their plain ``send_window`` attribute, which the property reads.
    ``_write`` is a copy of py-libp2p 0.8.1's (pinned in pyproject.toml): a new release
    needs it compared again."""
    stream_class: Any = _yamux.YamuxStream
    if getattr(stream_class, "_p2pnet_window_wakeup", False):
        return
    stream_class.send_window = property(_get_send_window, _set_send_window)
    stream_class.write = _write
    stream_class._p2pnet_window_wakeup = True


async def _capped_send_window_update(self: Any, increment: int, skip_lock: bool = False) -> None:
    """upstream ``send_window_update``, less whatever would offer the sender more than
    ``MAX_WINDOW_SIZE``. Its only caller raised ``recv_window`` by ``increment`` first."""
    excess = self.recv_window - _yamux.MAX_WINDOW_SIZE
    if excess > 0:
        increment -= excess
        self.recv_window = _yamux.MAX_WINDOW_SIZE
    await _upstream_send_window_update(self, increment, skip_lock)


_upstream_send_window_update = _yamux.YamuxStream.send_window_update


def install_receive_window_cap() -> None:
    """Patch py-libp2p's ``YamuxStream.send_window_update`` (see the module docstring);
    idempotent. Checked against py-libp2p 0.8.1: a new release needs it compared again."""
    replace_attribute(_yamux.YamuxStream, "send_window_update", _capped_send_window_update)
