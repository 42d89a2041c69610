"""Length-prefixed frames: exact bytes, any split of the input, every rejection path."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.framing import FrameReader, encode_frame
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import PayloadTooLargeError, RemoteProtocolError


def _read_all(data: bytes, reader: FrameReader, step: int = 0) -> list[bytes]:
    pieces = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    out = []
    for piece in pieces:
        reader.receive_data(piece)
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
    return out


@pytest.mark.parametrize(
    ("body", "frame_hex"),
    [
        (b"a", "0161"),
        (b"abc", "03616263"),
        (b"x" * 127, "7f" + "78" * 127),
        (b"x" * 128, "8001" + "78" * 128),
        (b"x" * 300, "ac02" + "78" * 300),
    ],
    ids=["1", "3", "127", "128", "300"],
)
@pytest.mark.parametrize("step", [0, 1, 2])
def test_frames_encode_and_decode_exactly(body: bytes, frame_hex: str, step: int) -> None:
    assert encode_frame(body, 1024).hex() == frame_hex
    reader = FrameReader(1024)
    assert _read_all(bytes.fromhex(frame_hex), reader, step) == [body]
    assert reader.at_frame_boundary and reader.buffered == 0


def test_back_to_back_frames_fed_byte_by_byte() -> None:
    bodies = [b"one", b"two" * 100, b"\x00", b"four"]
    data = b"".join(encode_frame(b, 1024) for b in bodies)
    assert _read_all(data, FrameReader(1024), step=1) == bodies


def test_partial_frame_waits_and_is_not_at_a_boundary() -> None:
    reader = FrameReader(1024)
    assert reader.at_frame_boundary
    reader.receive_data(b"\x05ab")
    assert reader.next_frame() is None
    assert not reader.at_frame_boundary and reader.buffered == 3
    reader.receive_data(b"cde")
    assert reader.next_frame() == b"abcde"
    assert reader.next_frame() is None and reader.at_frame_boundary


def test_a_frame_at_the_limit_passes_and_one_byte_more_is_refused() -> None:
    reader = FrameReader(10)
    reader.receive_data(encode_frame(b"x" * 10, 10))
    assert reader.next_frame() == b"x" * 10
    with pytest.raises(PayloadTooLargeError, match="frame of 11 bytes"):
        encode_frame(b"x" * 11, 10)


def test_oversized_frame_is_refused_from_its_length_alone() -> None:
    reader = FrameReader(1 << 20)
    reader.receive_data(encode_uvarint(1 << 40))  # no body byte has arrived
    with pytest.raises(PayloadTooLargeError, match="at most 1048576 bytes per frame"):
        reader.next_frame()


def test_an_error_is_sticky_the_framing_is_lost() -> None:
    reader = FrameReader(4)
    reader.receive_data(b"\x05")
    with pytest.raises(PayloadTooLargeError):
        reader.next_frame()
    reader.receive_data(b"\x01a")
    with pytest.raises(PayloadTooLargeError):
        reader.next_frame()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00", "empty frame"),
        (b"\x80\x00", "not minimally encoded"),
        (b"\x80" * 9 + b"\x01", "longer than 9 bytes"),
        (b"\xff" * 20, "longer than 9 bytes"),
    ],
    ids=["empty", "non-minimal", "ten-bytes", "runaway"],
)
def test_bad_length_prefixes_are_protocol_errors(data: bytes, error: str) -> None:
    reader = FrameReader(1024)
    reader.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=error):
        reader.next_frame()


def test_empty_frames_when_allowed() -> None:
    assert encode_frame(b"", 8, allow_empty=True) == b"\x00"
    reader = FrameReader(8, allow_empty=True)
    assert _read_all(b"\x00\x01a\x00", reader) == [b"", b"a", b""]
    with pytest.raises(ValueError, match="empty frame cannot be sent"):
        encode_frame(b"", 8)


@pytest.mark.parametrize("limit", [0, -1, 1 << 63, True])
def test_bad_limits_are_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameReader(limit)
    with pytest.raises(ValueError, match="max_frame_size"):
        encode_frame(b"a", limit)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 50))
def test_any_frames_split_anywhere_come_back_whole(bodies: list[bytes], step: int) -> None:
    data = b"".join(encode_frame(b, 300) for b in bodies)
    reader = FrameReader(300)
    assert _read_all(data, reader, step) == bodies
    assert reader.at_frame_boundary


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(1, 300), st.booleans())
def test_random_bytes_raise_only_protocol_errors(data: bytes, limit: int, empty: bool) -> None:
    reader = FrameReader(limit, allow_empty=empty)
    try:
        for frame in _read_all(data, reader, step=7):
            assert len(frame) <= limit
    except (RemoteProtocolError, PayloadTooLargeError):
        pass
