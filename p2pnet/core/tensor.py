"""Tensor codec: numpy arrays as msgpack extension values, byte-exact (docs/protocol.md).

A tensor travels as msgpack ext type 1 (inline: header + data) or ext type 2
(streamed: header only; the data follows the message head in data frames).

    header = dtype:u8 | ndim:u8 | dim[0]:u64le ... dim[ndim-1]:u64le
    ext 1  = header | data
    ext 2  = header

Numeric data is the C-order array in little-endian byte order. String tensors
(dtype code 13) are inline only; their data is, per element in C order,
uvarint(byte length) | UTF-8 bytes.

Decoding numeric data does not copy: the array is a read-only view of the
received bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from p2pnet.core.varint import decode_uvarint, encode_uvarint
from p2pnet.errors import InvalidInputError, PayloadTooLargeError, RemoteProtocolError

__all__ = [
    "DTYPE_CODES",
    "MAX_NDIM",
    "STREAMED_TENSOR_EXT",
    "TENSOR_EXT",
    "TensorHeader",
    "decode_inline_tensor",
    "decode_tensor_header",
    "dtype_name",
    "encode_inline_tensor",
    "encode_tensor_header",
    "normalize_array",
]

TENSOR_EXT: Final = 1
STREAMED_TENSOR_EXT: Final = 2
MAX_NDIM: Final = 32
STRING_CODE: Final = 13

# code -> numpy dtype (little-endian); code 13 is the string tensor (numpy object of str).
DTYPE_CODES: Final[dict[int, np.dtype[np.generic]]] = {
    1: np.dtype("bool"),
    2: np.dtype("<i1"),
    3: np.dtype("<i2"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<u1"),
    7: np.dtype("<u2"),
    8: np.dtype("<u4"),
    9: np.dtype("<u8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f4"),
    12: np.dtype("<f8"),
    STRING_CODE: np.dtype("O"),
}
_CODE_BY_KIND: Final[dict[tuple[str, int], int]] = {
    (dt.kind, dt.itemsize): code for code, dt in DTYPE_CODES.items() if code != STRING_CODE
}
_DIM = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a tensor is, without its data: dtype code and shape."""

    dtype_code: int
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return DTYPE_CODES[self.dtype_code]

    @property
    def is_string(self) -> bool:
        return self.dtype_code == STRING_CODE

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Byte length of the numeric data (0 for string tensors, whose length is not fixed)."""
        return 0 if self.is_string else self.size * self.dtype.itemsize


def dtype_name(arr_or_dtype: npt.NDArray[np.generic] | np.dtype[np.generic]) -> str:
    """The name p2pnet uses for a dtype in schemas and messages: numpy's, or 'string'."""
    dt = arr_or_dtype if isinstance(arr_or_dtype, np.dtype) else arr_or_dtype.dtype
    if dt.kind in "OUS":
        return "string"
    return dt.name


def normalize_array(name: str, value: object) -> npt.NDArray[np.generic]:
    """Turn a user's value into an array the codec can send, or say why not.

    Numeric arrays become C-contiguous little-endian; str/bytes arrays become
    object arrays of str.

    Raises:
        InvalidInputError: unsupported dtype, or more than MAX_NDIM dimensions.
    """
    arr = np.asarray(value)
    if arr.ndim > MAX_NDIM:
        raise InvalidInputError(f"tensor {name!r} has {arr.ndim} dimensions; at most {MAX_NDIM}")
    if arr.dtype.kind in "US":
        return np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel()], dtype=object
        ).reshape(arr.shape)
    if arr.dtype.kind == "O":
        flat = arr.ravel()
        for v in flat:
            if not isinstance(v, str):
                raise InvalidInputError(
                    f"tensor {name!r} has dtype object with a {type(v).__name__} element; "
                    "only str elements can be sent as a string tensor"
                )
        return arr
    if (arr.dtype.kind, arr.dtype.itemsize) not in _CODE_BY_KIND:
        raise InvalidInputError(
            f"tensor {name!r} has dtype {arr.dtype}, which p2pnet cannot send; supported: "
            + ", ".join(dtype_name(dt) for dt in DTYPE_CODES.values())
        )
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)


def _dtype_code(arr: npt.NDArray[np.generic]) -> int:
    if arr.dtype.kind == "O":
        return STRING_CODE
    return _CODE_BY_KIND[(arr.dtype.kind, arr.dtype.itemsize)]


def encode_tensor_header(arr: npt.NDArray[np.generic]) -> bytes:
    """Header bytes of a normalized array (see normalize_array)."""
    return bytes((_dtype_code(arr), arr.ndim)) + b"".join(_DIM.pack(d) for d in arr.shape)


def encode_inline_tensor(arr: npt.NDArray[np.generic]) -> bytes:
    """Ext 1 payload of a normalized array: header then data."""
    header = encode_tensor_header(arr)
    if arr.dtype.kind == "O":
        parts = [header]
        for v in arr.ravel():
            raw = str(v).encode()
            parts.append(encode_uvarint(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return header + arr.tobytes()


def decode_tensor_header(
    payload: bytes | memoryview, max_elements: int
) -> tuple[TensorHeader, int]:
    """Parse a tensor header at the start of ``payload``; return it and its byte length.

    Raises:
        RemoteProtocolError: unknown dtype, too many dimensions, truncated header.
        PayloadTooLargeError: more than ``max_elements`` elements.
    """
    if len(payload) < 2:
        raise RemoteProtocolError("tensor header truncated: needs dtype and ndim bytes")
    code, ndim = payload[0], payload[1]
    if code not in DTYPE_CODES:
        raise RemoteProtocolError(f"tensor header has unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise RemoteProtocolError(f"tensor header has {ndim} dimensions; at most {MAX_NDIM}")
    end = 2 + 8 * ndim
    if len(payload) < end:
        raise RemoteProtocolError(f"tensor header truncated: {ndim} dimensions need {end} bytes")
    shape = tuple(_DIM.unpack_from(payload, 2 + 8 * i)[0] for i in range(ndim))
    size = 1
    for d in shape:
        size *= d
    if size > max_elements:
        raise PayloadTooLargeError(
            f"tensor of shape {shape} has {size} elements; this side accepts at most {max_elements}"
        )
    if any(d > max_elements for d in shape):  # possible only beside a 0 dimension
        raise PayloadTooLargeError(
            f"tensor of shape {shape} has a dimension over {max_elements}, the most this "
            "side accepts"
        )
    return TensorHeader(code, shape), end


def decode_inline_tensor(
    payload: bytes, max_elements: int, *, max_string_elements: int | None = None
) -> npt.NDArray[np.generic]:
    """Decode an ext 1 payload into an array (numeric: a read-only view of ``payload``).

    A string tensor is refused before anything is allocated when it declares more
    elements than ``max_string_elements`` (default: ``max_elements``) or than the
    bytes after its header can hold (each element takes at least its 1-byte length).

    Raises:
        RemoteProtocolError: any malformed or inconsistent payload.
        PayloadTooLargeError: more elements than this side accepts.
    """
    header, offset = decode_tensor_header(payload, max_elements)
    if header.is_string:
        limit = max_elements if max_string_elements is None else max_string_elements
        if header.size > limit:
            raise PayloadTooLargeError(
                f"string tensor of shape {header.shape} has {header.size} elements; this "
                f"side accepts at most {limit} string elements"
            )
        if header.size > len(payload) - offset:
            raise RemoteProtocolError(
                f"string tensor of shape {header.shape} declares {header.size} elements but "
                f"only {len(payload) - offset} bytes follow (each element needs at least 1)"
            )
        return _decode_strings(payload, offset, header)
    if len(payload) - offset != header.nbytes:
        raise RemoteProtocolError(
            f"tensor of shape {header.shape} and dtype {dtype_name(header.dtype)} needs "
            f"{header.nbytes} data bytes, got {len(payload) - offset}"
        )
    arr = np.frombuffer(payload, dtype=header.dtype, count=header.size, offset=offset)
    return arr.reshape(header.shape)


def _decode_strings(payload: bytes, offset: int, header: TensorHeader) -> npt.NDArray[np.generic]:
    out = np.empty(header.size, dtype=object)
    view = memoryview(payload)
    total = len(payload)
    for i in range(header.size):
        if offset >= total:
            raise RemoteProtocolError(f"string tensor data ends before element {i}")
        length = payload[offset]
        if length < 0x80:  # the common one-byte length, without a call
            offset += 1
        else:
            length, offset = decode_uvarint(view, offset)
        end = offset + length
        if end > total:
            raise RemoteProtocolError(f"string tensor element {i} runs past the end of its data")
        try:
            out[i] = str(view[offset:end], "utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"string tensor element {i} is not UTF-8: {exc}") from None
        offset = end
    if offset != len(payload):
        raise RemoteProtocolError(
            f"string tensor has {len(payload) - offset} bytes after its {header.size} elements"
        )
    return out.reshape(header.shape)
