"""Tensors from text: the ``NAME=VALUE`` inputs that ``p2pnet call`` and ``p2pnet pipeline
run`` take, as the NumPy arrays a model or pipeline is called with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pnet.errors import InvalidInputError

__all__ = ["parse_input"]

_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "string",
}  # fmt: skip


def parse_input(spec: str) -> tuple[str, npt.NDArray[Any]]:
    """Parse one ``NAME=VALUE`` input into (name, array).

    Forms: ``NAME=@FILE.npy`` (a NumPy file, never unpickled), ``NAME=JSON`` (numbers
    become float32, the common model input; strings a string tensor),
    ``NAME:DTYPE=JSON`` (explicit dtype), and ``NAME=TEXT`` for anything that is not
    JSON (a string tensor of shape [1]).

    Raises:
        InvalidInputError: a malformed spec, unreadable file or value that does not fit the dtype.
    """
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise InvalidInputError(
            f"--input {spec!r}: expected NAME=VALUE, NAME=@FILE.npy or NAME:DTYPE=VALUE"
        )
    name, _, dtype = name.partition(":")
    if dtype and dtype not in _DTYPES:
        raise InvalidInputError(
            f"--input {spec!r}: unknown dtype {dtype!r}; one of {sorted(_DTYPES)}"
        )
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"--input {name}: cannot load {path} as a .npy file: {exc}"
            ) from None
        return name, arr.astype(dtype, copy=False) if dtype and dtype != "string" else arr
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = [value]
    if isinstance(data, (int, float, str, bool)):
        data = [data]
    if dtype == "string" or _all_strings(data):
        return name, np.array(data, dtype=object)
    try:
        arr = np.array(data)
        if dtype:
            return name, arr.astype(dtype)
        if arr.dtype.kind in "fiu":
            return name, arr.astype(np.float32)
        return name, arr
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"--input {name}: {value!r} is not a tensor: {exc}") from None


def _all_strings(data: Any) -> bool:
    if isinstance(data, list):
        return bool(data) and all(_all_strings(v) for v in data)
    return isinstance(data, str)
