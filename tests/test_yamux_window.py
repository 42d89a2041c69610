"""The Yamux writer wakes when its window grows (p2pnet/net/yamux_window.py), instead of
py-libp2p's 10 ms poll. The clock is frozen: a poll would never wake, the wake-up does."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, YamuxStream

from p2pnet.net.yamux_window import install_window_wakeup


class RecordingConnection:
    """The connection side a YamuxStream writes its frames to."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def _write_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


@pytest.fixture
def stream() -> tuple[YamuxStream, RecordingConnection]:
    install_window_wakeup()
    connection = RecordingConnection()
    return YamuxStream(1, connection, True), connection  # type: ignore[arg-type]


async def test_a_writer_out_of_window_sends_as_soon_as_the_window_grows(
    stream: tuple[YamuxStream, RecordingConnection], mock_clock: trio.testing.MockClock
) -> None:
    yamux_stream, connection = stream
    assert yamux_stream.send_window == 256 * 1024  # upstream's initial window, kept
    yamux_stream.send_window = 4
    async with trio.open_nursery() as nursery:
        nursery.start_soon(yamux_stream.write, b"abcdefgh")
        await trio.testing.wait_all_tasks_blocked()
        assert [f[HEADER_SIZE:] for f in connection.frames] == [b"abcd"]  # window spent
        async with yamux_stream.window_lock:
            yamux_stream.send_window += 4  # what a WINDOW_UPDATE frame does
        await trio.testing.wait_all_tasks_blocked()
        assert [f[HEADER_SIZE:] for f in connection.frames] == [b"abcd", b"efgh"]
    assert trio.current_time() == 0  # no time passed: woken, not polled


async def test_a_stream_closed_while_its_writer_waits_fails_the_write(
    stream: tuple[YamuxStream, RecordingConnection], mock_clock: trio.testing.MockClock
) -> None:
    yamux_stream, connection = stream
    yamux_stream.send_window = 0
    with pytest.RaisesGroup(pytest.RaisesExc(MuxedStreamError, match="closed")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(yamux_stream.write, b"data")
            await trio.testing.wait_all_tasks_blocked()
            yamux_stream.closed = True
            mock_clock.jump(0.01)  # closing has no wake-up: noticed at the next look
    assert connection.frames == []


async def test_a_writer_that_gets_no_window_gives_up_after_five_seconds(
    stream: tuple[YamuxStream, RecordingConnection], autojump_clock: trio.testing.MockClock
) -> None:
    yamux_stream, _ = stream
    yamux_stream.send_window = 0
    with pytest.raises(MuxedStreamError, match="Timed out waiting for window update"):
        await yamux_stream.write(b"data")
    assert trio.current_time() == pytest.approx(5.0, abs=0.02)
