"""Invoke frames a hostile caller sends: hand-built with msgpack (``encode_message``
refuses them) to break one limit each. The hostile-wire tests, the hostile-peer
benchmark (scripts/bench/hostile.py) and the fuzzer (scripts/fuzz.py) send these.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np

from p2pnet.core.messages import WireLimits
from p2pnet.core.tensor import TENSOR_EXT, encode_inline_tensor
from p2pnet.core.varint import encode_uvarint

__all__ = ["frame", "hostile_invokes", "invoke_head", "nested_frame", "string_tensor"]

STRING_DTYPE_CODE = 13


def frame(head: object) -> bytes:
    """``head`` as one frame: uvarint(length) then its msgpack."""
    body: bytes = msgpack.packb(head, use_bin_type=True)
    return encode_uvarint(len(body)) + body


def invoke_head(
    model: str, inputs: dict[str, object], *, request_id: int = 7, deadline_ms: int = 5000
) -> dict[str, object]:
    """An Invoke head (docs/protocol.md) with any ``model`` text and any ``inputs``."""
    return {
        "v": 1,
        "type": "invoke",
        "id": request_id,
        "model": model,
        "deadline_ms": deadline_ms,
        "inputs": inputs,
    }


def string_tensor(shape: tuple[int, ...], data: bytes = b"") -> msgpack.ExtType:
    """An inline string tensor declaring ``shape``, followed by ``data`` (whatever it is)."""
    header = bytes((STRING_DTYPE_CODE, len(shape))) + b"".join(struct.pack("<Q", d) for d in shape)
    return msgpack.ExtType(TENSOR_EXT, header + data)


def nested_frame(depth: int) -> bytes:
    """A frame whose head is ``depth`` one-element arrays, one inside the other."""
    return encode_uvarint(depth + 1) + b"\x91" * depth + b"\xc0"


def hostile_invokes(
    model: str, valid_input: msgpack.ExtType, limits: WireLimits = WireLimits()
) -> dict[str, tuple[str, bytes]]:
    """The attacks on an invoke server, by name: (what it is, its bytes). ``model`` is a
    model the server serves, ``valid_input`` an input tensor ``x`` it accepts."""
    one_char_strings = np.array(["a"] * limits.max_string_elements, dtype=object)
    most_strings = msgpack.ExtType(TENSOR_EXT, encode_inline_tensor(one_char_strings))
    return {
        "string_2e28": (
            "Invoke declaring a string tensor of shape [2**28]",
            frame(invoke_head(model, {"x": string_tensor((1 << 28,))})),
        ),
        "model_300k": (
            "Invoke whose model is a 300,000-character string",
            frame(invoke_head("z" + "1" * 299_999, {"x": valid_input})),
        ),
        "nested_100k": ("head nested 100,000 arrays deep", nested_frame(100_000)),
        "strings_65536": (
            f"head of {limits.max_string_elements:,} one-character strings",
            frame(invoke_head(model, {"x": most_strings})),
        ),
    }
