import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pnet.core.tensor import (
    DTYPE_CODES,
    decode_inline_tensor,
    encode_inline_tensor,
    normalize_array,
)
from p2pnet.errors import InvalidInputError, PayloadTooLargeError, RemoteProtocolError

NUMERIC = [dt for code, dt in DTYPE_CODES.items() if dt.kind != "O"]


def test_golden_float32() -> None:
    arr = np.array([[1.0, 2.0]], np.float32)
    payload = encode_inline_tensor(arr)
    assert payload.hex() == "0b02" + "0100000000000000" + "0200000000000000" + "0000803f00000040"
    assert np.array_equal(decode_inline_tensor(payload, 100), arr)


def test_golden_string() -> None:
    arr = np.array(["hi", "é"], dtype=object)
    payload = encode_inline_tensor(normalize_array("t", arr))
    assert payload.hex() == "0d01" + "0200000000000000" + "02" + "6869" + "02" + "c3a9"
    assert decode_inline_tensor(payload, 100).tolist() == ["hi", "é"]


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
@given(data=st.data())
def test_numeric_round_trip_every_dtype(dtype: np.dtype, data: st.DataObject) -> None:
    arr = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
    out = decode_inline_tensor(encode_inline_tensor(normalize_array("x", arr)), 10_000)
    assert out.dtype == arr.dtype.newbyteorder("<") and out.shape == arr.shape
    assert out.tobytes() == np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def test_decoding_does_not_copy() -> None:
    payload = encode_inline_tensor(np.arange(1000, dtype=np.float64))
    out = decode_inline_tensor(payload, 10_000)
    assert out.base is not None and not out.flags.writeable


def test_big_endian_and_non_contiguous_inputs_are_normalized() -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    out = decode_inline_tensor(encode_inline_tensor(normalize_array("x", arr)), 100)
    assert out.dtype == np.dtype("<i4") and out.tolist() == arr.tolist()


@given(st.lists(st.text(max_size=8), max_size=6))
def test_string_round_trip(values: list[str]) -> None:
    arr = np.array(values, dtype=object).reshape(len(values))
    assert decode_inline_tensor(encode_inline_tensor(arr), 100).tolist() == values


def test_unsupported_dtypes_are_refused_with_the_supported_list() -> None:
    with pytest.raises(InvalidInputError, match=r"complex128.*supported: bool"):
        normalize_array("z", np.zeros(2, np.complex128))
    with pytest.raises(InvalidInputError, match="dtype object with a int element"):
        normalize_array("o", np.array([1, "a"], dtype=object))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("", "truncated"),
        ("63", "truncated"),
        ("6300", "unknown dtype code 99"),
        ("0b21", "33 dimensions"),
        ("0b01020000", "truncated"),
        ("0b010200000000000000" + "0000803f", "needs 8 data bytes, got 4"),
        ("0d010100000000000000" + "05" + "6869", "past the end"),
        ("0d010100000000000000" + "02" + "ff" + "fe", "not UTF-8"),
        ("0d010100000000000000" + "01" + "68" + "00", "1 bytes after"),
    ],
)
def test_malformed_payloads_raise_protocol_errors(payload: str, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        decode_inline_tensor(bytes.fromhex(payload), 1 << 20)


def test_too_many_elements_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLargeError, match="accepts at most 1048576"):
        decode_inline_tensor(bytes.fromhex("0b01" + "ffffffffffffffff"), 1 << 20)


@given(st.binary(max_size=64))
def test_random_bytes_never_crash(payload: bytes) -> None:
    try:
        decode_inline_tensor(payload, 1 << 16)
    except (RemoteProtocolError, PayloadTooLargeError):
        pass


def test_string_count_is_checked_against_the_bytes_that_follow_before_allocating() -> None:
    header = bytes((13, 1)) + (1 << 28).to_bytes(8, "little")
    with pytest.raises(RemoteProtocolError, match="declares 268435456 elements but only 2"):
        decode_inline_tensor(header + b"\x01a", 1 << 30)
    with pytest.raises(PayloadTooLargeError, match="at most 10 string elements"):
        decode_inline_tensor(header + b"\x01a", 1 << 30, max_string_elements=10)


def test_a_dimension_beside_a_zero_is_bounded() -> None:
    payload = bytes((11, 2)) + (0).to_bytes(8, "little") + (1 << 62).to_bytes(8, "little")
    with pytest.raises(PayloadTooLargeError, match="has a dimension over 100"):
        decode_inline_tensor(payload, 100)
