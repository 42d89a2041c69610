"""A stand-in for the connection side of one py-libp2p YamuxStream, for tests of the
Yamux patches in p2pnet/net (receive window, credit, frame writes)."""

from __future__ import annotations

import trio
from libp2p.stream_muxer.yamux.yamux import YamuxStream


class BufferedConnection:
    """The connection side of one YamuxStream: its receive buffer, and the frames it sends."""

    def __init__(self, stream_id: int, received: bytes = b"") -> None:
        self.stream_buffers = {stream_id: bytearray(received)}
        self.stream_events = {stream_id: trio.Event()}
        self.event_shutting_down = trio.Event()
        self.frames: list[bytes] = []

    async def _write_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def _finalize_stream(self, stream: YamuxStream, fully_closed: bool) -> None:
        pass

    def rtt(self) -> float:
        return 0.0  # not measured yet: py-libp2p assumes 1 ms

    def arrive(self, stream: YamuxStream, data: bytes) -> None:
        """What py-libp2p's reader does with a DATA frame for the stream."""
        self.stream_buffers[stream.stream_id] += data
        stream.recv_window -= len(data)
