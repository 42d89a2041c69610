"""Tensors from text: the ``NAME=VALUE`` inputs that ``p2pnet call`` and ``p2pnet pipeline
run`` take, and the ``{"dtype", "shape", "data"}`` JSON tensors of the local HTTP API, as
the NumPy arrays a model or pipeline is called with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pnet.core.tensor import dtype_name
from p2pnet.errors import InvalidInputError

__all__ = ["parse_input", "tensor_from_json", "tensor_to_json"]

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


def tensor_from_json(name: str, value: Any) -> npt.NDArray[Any]:
    """The tensor ``{"dtype": ..., "shape": [...], "data": [...]}`` named ``name`` as an
    array: ``data`` nested or flat (reshaped to ``shape``), ``dtype`` one of the dtypes
    ``NAME:DTYPE=VALUE`` takes (default: float32 for numbers, string for text), ``shape``
    optional.

    Raises:
        InvalidInputError: not an object with ``data``, an unknown dtype, a bad shape, or
        data that does not fit the dtype or shape.
    """
    if not isinstance(value, dict) or "data" not in value:
        raise InvalidInputError(f"input {name!r}: expected an object with dtype, shape and data")
    unknown = set(value) - {"dtype", "shape", "data"}
    if unknown:
        raise InvalidInputError(f"input {name!r}: unknown fields {sorted(unknown)}")
    dtype, shape, data = value.get("dtype"), value.get("shape"), value["data"]
    if dtype is not None and dtype not in _DTYPES:
        raise InvalidInputError(
            f"input {name!r}: unknown dtype {dtype!r}; one of {sorted(_DTYPES)}"
        )
    if shape is not None and not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInputError(f"input {name!r}: shape must be a list of whole numbers >= 0")
    if isinstance(data, (int, float, str, bool)):
        data = [data]
    try:
        if dtype == "string" or (dtype is None and _all_strings(data)):
            arr = np.array(data, dtype=object)
        else:
            arr = np.array(data)
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise ValueError("data must be numbers or booleans")
            if dtype:
                arr = arr.astype(dtype)
            elif arr.dtype.kind in "iuf":
                arr = arr.astype(np.float32)
        if shape is not None:
            arr = arr.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"input {name!r}: not a tensor: {exc}") from None
    return arr


def tensor_to_json(arr: npt.NDArray[Any]) -> dict[str, Any]:
    """A tensor as JSON: its dtype, shape and (nested) data."""
    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": arr.tolist()}
