"""Tensors from text: the ``NAME=VALUE`` inputs that ``p2pnet call`` and ``p2pnet pipeline
run`` take, and the ``{"dtype", "shape", "data"}`` JSON tensors of the local HTTP API, as
the NumPy arrays a model or pipeline is called with.

``input_as_json`` and ``exact_tensor_json`` do without numpy what the others do with it,
for the small tensors a command line sends and prints, where the result is provably the
same; they decline (None) anything else, which then takes the numpy path. They let
``p2pnet call`` through the running peer's API run without loading numpy (docs/
benchmarks.md, "CLI against a running peer"); numpy is imported by the functions that
use it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from p2pnet.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "exact_tensor_json",
    "input_as_json",
    "parse_input",
    "tensor_from_json",
    "tensor_to_json",
]

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
    import numpy as np

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
    data = _json_or_text(value)
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
    import numpy as np

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
    from p2pnet.core.tensor import dtype_name

    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": arr.tolist()}


# --- the same without numpy, where it is provably the same ----------------------------------

# The longest VALUE of NAME=VALUE that ``input_as_json`` takes: beyond it numpy is worth
# loading. The most dimensions numpy makes (and the codec takes).
_MAX_JSON_INPUT: Final = 64 * 1024
_MAX_DIMS: Final = 32
# Integers a float64 holds exactly: converted once, rounded once, as numpy does.
_EXACT_INT: Final = 2**53


def _float32(x: float) -> float:
    """``x`` rounded to float32 as numpy's cast rounds it (to nearest, ties to even).

    Raises:
        OverflowError: beyond float32's range (numpy would make it infinite).
    """
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def _float16(x: float) -> float:
    value: float = struct.unpack("<e", struct.pack("<e", x))[0]
    return value


def _shape_of(data: Any, leaf: Callable[[Any], bool], depth: int = 0) -> list[int] | None:
    """The shape of ``data``, nested lists none of them empty whose leaves all pass
    ``leaf``, the same length at each depth, at most _MAX_DIMS deep; None if it is not
    one."""
    if not isinstance(data, list):
        return [] if leaf(data) else None
    if not data or depth >= _MAX_DIMS:
        return None
    first = _shape_of(data[0], leaf, depth + 1)
    if first is None or any(_shape_of(item, leaf, depth + 1) != first for item in data[1:]):
        return None
    return [len(data), *first]


def _map(data: Any, convert: Callable[[Any], Any]) -> Any:
    return [_map(item, convert) for item in data] if isinstance(data, list) else convert(data)


def _is_number(v: object) -> bool:
    return (type(v) is int and abs(v) <= _EXACT_INT) or (type(v) is float and math.isfinite(v))


def _is_int64(v: object) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def input_as_json(spec: str) -> tuple[str, dict[str, Any]] | None:
    """``NAME=VALUE`` as ``(name, tensor_to_json(array))`` for ``parse_input``'s (name,
    array), made without numpy: for JSON numbers (as float32, or as ``:float32``,
    ``:float64`` or ``:int64`` say) and JSON or plain text (a string tensor), in
    non-empty nested lists of one length at each depth. None for anything else (a .npy
    file, another dtype, booleans, integers beyond 2**53, a number float32 cannot hold,
    empty or ragged lists, a malformed spec, over 64 KiB): ``parse_input`` takes those,
    with its errors."""
    name, sep, value = spec.partition("=")
    name, _, dtype = name.partition(":")
    if not sep or not name or value.startswith("@") or len(value) > _MAX_JSON_INPUT:
        return None
    data = _json_or_text(value)
    strings = _shape_of(data, lambda v: type(v) is str)
    if strings is not None and dtype in ("", "string"):
        return name, {"dtype": "string", "shape": strings, "data": data}
    if dtype == "int64":
        shape = _shape_of(data, _is_int64)
        return None if shape is None else (name, {"dtype": dtype, "shape": shape, "data": data})
    if dtype not in ("", "float32", "float64"):
        return None
    shape = _shape_of(data, _is_number)
    if shape is None:
        return None
    try:
        converted = _map(data, _float32 if dtype != "float64" else float)
    except OverflowError:
        return None
    return name, {"dtype": dtype or "float32", "shape": shape, "data": converted}


def _in_range(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v < high


def _same_as(rounded: Callable[[float], float]) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if type(v) is not float or not math.isfinite(v):
            return False
        try:
            return rounded(v) == v
        except OverflowError:
            return False

    return check


# Per dtype: the JSON values that tensor_from_json and tensor_to_json give back unchanged.
_UNCHANGED: Final[dict[str, Callable[[Any], bool]]] = {
    "bool": lambda v: type(v) is bool,
    "int8": _in_range(-(2**7), 2**7),
    "int16": _in_range(-(2**15), 2**15),
    "int32": _in_range(-(2**31), 2**31),
    "int64": _in_range(-(2**63), 2**63),
    "uint8": _in_range(0, 2**8),
    "uint16": _in_range(0, 2**16),
    "uint32": _in_range(0, 2**32),
    # Not above int64: numpy reads a list mixing those with smaller ones as float64.
    "uint64": _in_range(0, 2**63),
    "float16": _same_as(_float16),
    "float32": _same_as(_float32),
    "float64": _same_as(float),
    "string": lambda v: type(v) is str,
}


def _fits(data: Any, shape: list[int], leaf: Callable[[Any], bool]) -> bool:
    if not shape:
        return leaf(data)
    return (
        isinstance(data, list)
        and len(data) == shape[0]
        and all(_fits(item, shape[1:], leaf) for item in data)
    )


def exact_tensor_json(value: Any) -> dict[str, Any] | None:
    """The JSON tensor ``value`` (``{"dtype", "shape", "data"}``, as the local API sends
    outputs) as ``tensor_to_json(tensor_from_json(name, value))`` gives it, checked
    without numpy: when its data is nested exactly as its shape says and every value is
    one its dtype holds unchanged (finite floats of that precision, integers in range,
    booleans, text), that is ``value`` itself. None otherwise: ``tensor_from_json``
    takes it, with its errors."""
    if not isinstance(value, dict) or value.keys() != {"dtype", "shape", "data"}:
        return None
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    leaf = _UNCHANGED.get(dtype) if isinstance(dtype, str) else None
    if leaf is None or not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        return None
    if not all(type(d) is int and d >= 0 for d in shape) or not _fits(data, shape, leaf):
        return None
    return {"dtype": dtype, "shape": list(shape), "data": data}


def _json_or_text(value: str) -> Any:
    """An ``--input`` value as data: JSON if it parses (a lone number, string or boolean
    as a list of one), else the text itself as a list of one string."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return [value]
    if isinstance(data, (int, float, str, bool)):
        return [data]
    return data
