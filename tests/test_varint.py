import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.varint import decode_uvarint, encode_uvarint, try_decode_uvarint
from p2pnet.errors import RemoteProtocolError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001")],
)
def test_golden_vectors_both_ways(value: int, encoded: str) -> None:
    assert encode_uvarint(value).hex() == encoded
    assert decode_uvarint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_round_trip(value: int) -> None:
    data = encode_uvarint(value)
    assert decode_uvarint(data + b"\xff") == (value, len(data))


def test_incomplete_is_none_and_truncated_is_error() -> None:
    assert try_decode_uvarint(b"\x80") is None
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode_uvarint(b"\x80")


def test_rejects_overlong_and_non_minimal() -> None:
    with pytest.raises(RemoteProtocolError, match="longer than 9"):
        try_decode_uvarint(b"\x80" * 9 + b"\x01")
    with pytest.raises(RemoteProtocolError, match="minimal"):
        try_decode_uvarint(b"\x81\x00")


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)
    with pytest.raises(ValueError):
        encode_uvarint(1 << 63)
