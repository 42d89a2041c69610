"""Fewer Yamux frames and less work per frame for small calls on an open stream, and
fewer frames on an idle connection.

Three workarounds for py-libp2p 0.8.1's Yamux, measured in docs/benchmarks.md
("Invoke") and docs/simulations.md (the 200-peer runs):

``install_half_window_credit``: py-libp2p's ``_auto_tune_and_send_window_update``
(the go-yamux-style credit hysteresis of libp2p/py-libp2p#1269) has a third,
"partial slack" branch that py-libp2p added on top of go-yamux's rule: whenever
some credit is owed but less than half a window (``0 < delta < threshold``), it
sends a WINDOW_UPDATE after every read anyway. So every small message read
costs a WINDOW_UPDATE frame back (a Noise message, a socket write, and a frame
the other side must parse): a warm call was 2 DATA + 2 WINDOW_UPDATE frames
instead of 2. That branch also counts the bytes just read twice (the reason for
``yamux_window.install_receive_window_cap``). The patched method is upstream's
without that branch: credit goes back once half the window is owed, as in
go-yamux (``sendWindowUpdate`` with ``GrowTo``'s hysteresis) and rust-yamux
(libp2p/rust-yamux#100). Upstream's ``PY_YAMUX_RELEASE_ON_READ=1`` branch is
kept (p2pnet sets it to 0 by default; a user who sets 1 still gets credit per
read). No upstream issue names the partial-slack branch (searched
libp2p/py-libp2p issues, 2026-12-05).

``install_quiet_frame_write``: py-libp2p's ``Yamux._write_frame`` unpacks every
frame's header, builds the list of flag names and formats a debug f-string
before each write, whether or not debug logging is on (f-strings are built
before ``logger.debug`` looks at the level). The patched method does exactly
upstream's write (under ``_write_lock``, then a checkpoint) and only calls
upstream's, with its log line, when py-libp2p's Yamux logger has DEBUG on.

``install_rare_rtt_pings``: py-libp2p's ``Yamux._measure_rtt_loop`` pings every
connection every 30 s (``RTT_MEASURE_INTERVAL``, as go-yamux's ``measureRTTInterval``),
from both ends, to keep an RTT estimate that only the receive window's auto-tuning
reads (``_apply_autotune_epoch``, which assumes 1 ms until a first measurement). In
Python a ping costs both sides two Yamux frames (each ~0.3 ms of CPU for both sides
together, docs/benchmarks.md "Connection setup") and a few timers: a profile of 200
idle peers on two cores had about half its busy samples in those timers and frames
(docs/simulations.md). The first measurement still comes 0.5 s after the connection
opens; later ones every ``RTT_MEASURE_INTERVAL`` seconds here (5 minutes).
rust-yamux, for comparison, measures only on connections that carry data
(libp2p/rust-yamux#176). No py-libp2p issue names it (searched 2026-12-06).

``install_call_patches`` installs all three, and ``noise_writes.install_coalesced_writes``.
They are checked against py-libp2p 0.8.1 (pinned in pyproject.toml): a new
release needs them compared again.
"""

from __future__ import annotations

import logging
from typing import Any

from libp2p.stream_muxer.yamux import yamux as _yamux

from p2pnet.net.noise_writes import install_coalesced_writes
from p2pnet.net.patching import replace_attribute
from p2pnet.net.yamux_window import take

__all__ = [
    "RTT_MEASURE_INTERVAL",
    "install_call_patches",
    "install_half_window_credit",
    "install_quiet_frame_write",
    "install_rare_rtt_pings",
]

# Seconds between a connection's RTT measurements after its first (upstream: 30).
RTT_MEASURE_INTERVAL = 300


async def _half_window_credit(self: Any, *, bytes_read: int = 0) -> None:
    """upstream ``YamuxStream._auto_tune_and_send_window_update`` (py-libp2p 0.8.1)
    without its partial-slack branch (see the module docstring), its lock taken at once
    when free (``yamux_window.take``)."""
    total_delta = 0
    await take(self.window_lock)
    try:
        if bytes_read > 0:
            self._pending_recv_release += bytes_read
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        threshold = self._grow_threshold()
        pending = self._pending_recv_release
        if delta >= threshold and delta > 0:
            self._window_update_full_grow += 1
            total_delta = self._grow_to_delta(buffered)
            total_delta += self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        elif pending >= threshold:
            self.recv_window += pending
            total_delta = pending
            self._pending_recv_release = 0
            self._window_update_pending_flush += 1
            total_delta += self._apply_autotune_epoch(buffered)
        elif _yamux._yamux_release_on_read() and bytes_read > 0:
            self.recv_window += bytes_read
            total_delta = bytes_read
            self._pending_recv_release -= bytes_read
            self._window_update_bytes_read_only += 1
            total_delta += self._apply_autotune_epoch(buffered)
    finally:
        self.window_lock.release()
    if total_delta > 0:
        await self.send_window_update(total_delta, skip_lock=True)


def install_half_window_credit() -> None:
    """Patch py-libp2p's ``YamuxStream._auto_tune_and_send_window_update`` (see the
    module docstring); idempotent."""
    replace_attribute(_yamux.YamuxStream, "_auto_tune_and_send_window_update", _half_window_credit)


_upstream_write_frame = _yamux.Yamux._write_frame


async def _quiet_write_frame(self: Any, data: bytes) -> None:
    """upstream ``Yamux._write_frame``, its debug line built only when it is logged, its
    lock taken at once when free (``yamux_window.take``), and without upstream's
    ``trio.lowlevel.checkpoint()`` after the write: the socket write is one already."""
    if _yamux.logger.isEnabledFor(logging.DEBUG):
        await _upstream_write_frame(self, data)
        return
    await take(self._write_lock)
    try:
        await self.secured_conn.write(data)
    finally:
        self._write_lock.release()


def install_quiet_frame_write() -> None:
    """Patch py-libp2p's ``Yamux._write_frame`` (see the module docstring); idempotent."""
    replace_attribute(_yamux.Yamux, "_write_frame", _quiet_write_frame)


def install_rare_rtt_pings() -> None:
    """Make py-libp2p's Yamux measure a connection's RTT every ``RTT_MEASURE_INTERVAL``
    seconds instead of every 30 (see the module docstring; its loop reads the module's
    constant on every round); idempotent."""
    _yamux.RTT_MEASURE_INTERVAL = RTT_MEASURE_INTERVAL


def install_call_patches() -> None:
    """The connection patches: the three above, and
    ``noise_writes.install_coalesced_writes`` (a long write's Noise messages in one socket
    write); idempotent."""
    install_half_window_credit()
    install_quiet_frame_write()
    install_rare_rtt_pings()
    install_coalesced_writes()
