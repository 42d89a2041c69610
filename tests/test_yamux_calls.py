"""Yamux credit goes back per half window, not per read, frames are written without
building debug strings, and an idle connection pings rarely (p2pnet/net/yamux_calls.py)."""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio
import trio.testing
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from yamux_fakes import BufferedConnection

from p2pnet.net.host import tune_libp2p
from p2pnet.net.yamux_calls import RTT_MEASURE_INTERVAL
from p2pnet.net.yamux_window import take


def credit_offered(frames: list[bytes]) -> list[int]:
    return [
        struct.unpack(_yamux.YAMUX_HEADER_FORMAT, frame[: _yamux.HEADER_SIZE])[4]
        for frame in frames
        if frame[1] == _yamux.TYPE_WINDOW_UPDATE
    ]


async def test_small_messages_are_read_without_a_window_update_each() -> None:
    tune_libp2p()  # what open_host applies
    connection = BufferedConnection(1)
    stream = YamuxStream(1, connection, True)  # type: ignore[arg-type]
    window = stream.target_recv_window
    message = b"m" * 200
    for _ in range(10):
        connection.arrive(stream, message)
        assert await stream.read() == message
    # py-libp2p 0.8.1 alone sends a WINDOW_UPDATE after each of these reads.
    assert credit_offered(connection.frames) == []
    # Half a window read: all of it is given back in one update (plus what py-libp2p's
    # auto-tuning adds, if it grew the window), and no more.
    connection.arrive(stream, b"x" * (window // 2))
    while connection.stream_buffers[1]:
        await stream.read()
    offered = credit_offered(connection.frames)
    grown = stream.target_recv_window - window
    assert offered == [10 * len(message) + window // 2 + grown]
    assert stream.recv_window == stream.target_recv_window


class RecordingSecuredConnection:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_frames_reach_the_connection_unchanged_with_debug_logging_on_and_off() -> None:
    tune_libp2p()
    muxer = Yamux.__new__(Yamux)  # only what _write_frame touches
    secured = RecordingSecuredConnection()
    muxer.secured_conn = secured  # type: ignore[assignment]
    muxer._write_lock = trio.Lock()
    muxer.is_initiator_value = True
    frame = struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_DATA, 0, 3, 2) + b"hi"
    level = _yamux.logger.level
    try:
        _yamux.logger.setLevel(logging.WARNING)
        await muxer._write_frame(frame)
        _yamux.logger.setLevel(logging.DEBUG)
        await muxer._write_frame(frame)
    finally:
        _yamux.logger.setLevel(level)
    assert secured.written == [frame, frame]


async def test_a_free_lock_is_taken_without_yielding_and_a_held_one_is_waited_for() -> None:
    lock = trio.Lock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await take(lock)  # free: no trip through the scheduler, so `other` has not run
        assert ran == []
        lock.release()
    assert ran == ["other"]

    holder_may_release = trio.Event()

    async def holder(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with lock:
            task_status.started()
            await holder_may_release.wait()
            ran.append("released")

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        nursery.start_soon(trio.lowlevel.checkpoint)
        holder_may_release.set()
        await take(lock)
        assert ran[-1] == "released"
        lock.release()


class PingRecorder:
    """What ``Yamux._measure_rtt_loop`` touches: its frames are recorded, and every PING
    is answered at once (as the pong's arrival would set the event)."""

    def __init__(self) -> None:
        self.pings_at: list[float] = []
        self.event_shutting_down = trio.Event()
        self._ping_id = 0
        self._ping_event = trio.Event()
        self._ping_sent_time = 0.0

    async def _write_frame(self, frame: bytes) -> None:
        assert frame[1] == _yamux.TYPE_PING
        self.pings_at.append(trio.current_time())
        self._ping_event.set()


async def test_an_idle_connection_measures_its_rtt_every_five_minutes_not_every_30_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # py-libp2p pings every connection from both ends every 30 s for an RTT that only
    # the window auto-tuning reads: about half of what a profile of 200 idle peers on
    # two cores was busy with (docs/simulations.md).
    tune_libp2p()
    muxer = PingRecorder()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Yamux._measure_rtt_loop, muxer)  # type: ignore[arg-type]
        await trio.sleep(20 * 60)
        muxer.event_shutting_down.set()
    # The first 0.5 s after the connection opens, then every RTT_MEASURE_INTERVAL.
    assert [round(t - start, 1) for t in muxer.pings_at] == [0.5, 300.5, 600.5, 900.5]
    assert RTT_MEASURE_INTERVAL == 300
