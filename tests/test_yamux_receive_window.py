"""A p2pnet reader never offers its Yamux sender more window than the 16 MiB frame limit
py-libp2p enforces (p2pnet/net/yamux_window.py, install_receive_window_cap): js-yamux
sends frames as large as the window, and a frame over the limit closes the connection."""

from __future__ import annotations

import struct

from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from yamux_fakes import BufferedConnection

from p2pnet.net.host import tune_libp2p


async def test_reading_a_full_window_in_slices_offers_the_sender_no_more_than_the_limit() -> None:
    tune_libp2p()  # what open_host applies
    limit = _yamux.MAX_WINDOW_SIZE
    # The sender filled the window of a stream whose window had grown to the limit; what
    # it sent is a little more than half of it, so credit is due (p2pnet.net.yamux_calls
    # gives it back per half window).
    received = b"x" * (limit // 2 + _yamux.MAX_MESSAGE_SIZE + 100)
    connection = BufferedConnection(1, received)
    stream = YamuxStream(1, connection, True)  # type: ignore[arg-type]
    stream.target_recv_window = limit
    stream.recv_window = limit - len(received)

    data = await stream.read()  # read in MAX_MESSAGE_SIZE slices, as py-libp2p does

    assert data == received
    offered = sum(
        struct.unpack(_yamux.YAMUX_HEADER_FORMAT, frame[: _yamux.HEADER_SIZE])[4]
        for frame in connection.frames
        if frame[1] == _yamux.TYPE_WINDOW_UPDATE
    )
    # Credit went back, and the sender's window is at most the limit (py-libp2p 0.8.1
    # alone offered each slice twice: over the limit).
    assert offered > 0
    assert limit - len(received) + offered <= limit
    assert stream.recv_window <= limit
