"""The Open Inference Protocol v2 (KServe V2, Triton) tensor codec: request and reply
bodies, JSON and binary, to and from numpy arrays (docs/gateway.md).

Datatypes map to the dtypes p2pnet carries (``DATATYPES``); BYTES is p2pnet's string
tensor (a numpy object array of str), so a BYTES element must be UTF-8: one that is not
is refused with InvalidInputError naming the tensor and the element.

A body is JSON, or, with the binary tensor data extension, a JSON header of
``json_length`` bytes (the ``Inference-Header-Content-Length`` HTTP header) followed by
the raw data of every tensor whose ``parameters.binary_data_size`` is set, in the order
of the tensors in the header: C order, little-endian, BOOL one byte per element, BYTES
elements each a 4-byte little-endian length then that many bytes.

The gRPC protocol carries tensors one by one (``TensorData``): ``decode_tensors`` reads
raw contents (the binary layout above) or typed contents (``CONTENTS_FIELDS``), and
``tensor_to_raw`` writes raw contents.

Every decoder checks ``OipLimits`` before it allocates: the body size, the number of
tensors, and the elements of each tensor and of the whole body.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.core.tensor import MAX_NDIM, dtype_name
from p2pnet.core.text import quote_bounded
from p2pnet.errors import InvalidInputError, PayloadTooLargeError

__all__ = [
    "BINARY_EXTENSION",
    "CONTENTS_FIELDS",
    "DATATYPES",
    "DEFAULT_LIMITS",
    "InferReply",
    "InferRequest",
    "OipLimits",
    "RequestedOutput",
    "TensorData",
    "check_datatype",
    "check_requested_outputs",
    "check_shape",
    "datatype_of",
    "decode_infer_reply",
    "decode_infer_request",
    "decode_tensors",
    "encode_infer_reply",
    "encode_infer_request",
    "model_metadata",
    "tensor_to_raw",
]

BINARY_EXTENSION: Final = "binary_tensor_data"

# OIP datatype -> p2pnet dtype name (tensor.dtype_name).
DATATYPES: Final[dict[str, str]] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}
_BY_DTYPE: Final[dict[str, str]] = {v: k for k, v in DATATYPES.items()}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class OipLimits:
    """What a decoder accepts at most.

    max_body_bytes: bytes of a whole body (JSON header and binary data).
    max_elements: elements of one tensor, and of all the tensors of a body together.
    max_tensors: tensors in a body (inputs or outputs, and requested outputs).
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_elements: int = 16 * 1024 * 1024
    max_tensors: int = 256


DEFAULT_LIMITS: Final = OipLimits()


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output a request names, and whether it wants it as binary data (None: as the
    request's ``binary_data_output`` says)."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request: its id (None if it gave none), inputs, the outputs it
    asks for (empty: all), and whether outputs are binary unless an output says."""

    id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    outputs: tuple[RequestedOutput, ...] = ()
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferReply:
    """A decoded inference reply."""

    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, npt.NDArray[Any]]


def datatype_of(dtype: str) -> str:
    """The OIP datatype of a p2pnet dtype name ('float32' -> 'FP32', 'string' -> 'BYTES').

    Raises:
        InvalidInputError: a dtype OIP has no datatype for.
    """
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise InvalidInputError(
            f"dtype {dtype!r} has no Open Inference Protocol datatype"
        ) from None


def model_metadata(
    name: str, schema: ModelSchema, *, versions: Sequence[str] = (), platform: str = "p2pnet"
) -> dict[str, Any]:
    """The model metadata reply: name, versions, platform and every input and output with
    its datatype and shape (a symbolic or free dimension as -1).

    Raises:
        InvalidInputError: a tensor of a dtype OIP has no datatype for.
    """

    def spec(t: TensorSpec) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in t.shape]
        return {"name": t.name, "datatype": datatype_of(t.dtype), "shape": shape}

    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec(t) for t in schema.inputs],
        "outputs": [spec(t) for t in schema.outputs],
    }


def check_datatype(datatype: object, where: str) -> str:
    """``datatype`` when it is one of ``DATATYPES``.

    Raises:
        InvalidInputError: any other value, with the list of supported ones.
    """
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInputError(
            f"{where} has datatype {quote_bounded(str(datatype))}; supported: "
            + ", ".join(DATATYPES)
        )
    return datatype


def check_requested_outputs(names: Sequence[str], outputs: Mapping[str, object]) -> None:
    """Raises:
    InvalidInputError: a name in ``names`` is not one of ``outputs``.
    """
    for name in names:
        if name not in outputs:
            raise InvalidInputError(
                f"requested output {quote_bounded(name)} is not an output of the model; "
                "it has " + ", ".join(repr(n) for n in outputs)
            )


def tensor_to_raw(arr: npt.NDArray[Any]) -> tuple[str, bytes]:
    """The OIP datatype of ``arr`` and its elements as raw bytes: C order, little-endian,
    BOOL one byte each, BYTES each a 4-byte little-endian length then its UTF-8 bytes.

    Raises:
        InvalidInputError: a dtype OIP has no datatype for.
    """
    datatype = datatype_of(dtype_name(arr))
    if datatype != "BYTES":
        return datatype, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts = []
    for v in arr.ravel():
        raw = v if isinstance(v, bytes) else str(v).encode()
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return datatype, b"".join(parts)


# --- tensors one by one (the gRPC protocol: p2pnet/gateway/oip_grpc.py) --------------

# The typed contents field (``InferTensorContents`` of KServe's grpc_predict_v2.proto,
# Triton's grpc_service.proto) that carries each datatype's elements. FP16 has none: its
# elements travel as raw contents only. INT8 and INT16 ride in int32 fields, UINT8 and
# UINT16 in uint32 ones: a value outside the datatype's range is refused.
CONTENTS_FIELDS: Final[dict[str, str | None]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": None,
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True, slots=True)
class TensorData:
    """One tensor as the gRPC protocol carries it: its name, datatype and shape, and its
    elements either as ``raw`` bytes (the layout of ``tensor_to_raw``) or as typed
    ``contents`` (every non-empty contents field by name, e.g. ``{"fp32_contents": [...]}``);
    neither: no elements."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    contents: Mapping[str, Sequence[Any]] = field(default_factory=dict)


def decode_tensors(
    tensors: Sequence[TensorData], limits: OipLimits = DEFAULT_LIMITS, role: str = "input"
) -> dict[str, npt.NDArray[Any]]:
    """The arrays of ``tensors`` by name (``role`` names them in errors).

    Raises:
        PayloadTooLargeError: the tensor count, a tensor or the elements together over
            ``limits``.
        InvalidInputError: a tensor without a name or named twice, an unknown datatype,
            a bad shape, elements that do not fill the shape, both raw and typed
            contents, a contents field of another datatype, an integer outside its
            datatype's range, a BOOL byte other than 0 and 1, BYTES that are not UTF-8.
    """
    if len(tensors) > limits.max_tensors:
        raise PayloadTooLargeError(
            f"{len(tensors)} {role}s; this gateway accepts at most {limits.max_tensors}"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    budget = limits.max_elements
    for n, tensor in enumerate(tensors):
        if not tensor.name:
            raise InvalidInputError(f"{role} {n} has no name")
        where = f"{role} {quote_bounded(tensor.name)}"
        if tensor.name in arrays:
            raise InvalidInputError(f"{where} appears twice")
        datatype = check_datatype(tensor.datatype, where)
        shape, size = check_shape(tensor.shape, where, limits)
        if size > budget:
            raise PayloadTooLargeError(
                f"the {role}s have more than {limits.max_elements} elements together; this "
                "gateway accepts at most that many"
            )
        budget -= size
        if tensor.raw is not None:
            if tensor.contents:
                raise InvalidInputError(f"{where} has both raw contents and typed contents")
            raw = memoryview(tensor.raw)
            arrays[tensor.name] = _binary_array(raw, datatype, shape, size, where)
        else:
            arrays[tensor.name] = _contents_array(tensor.contents, datatype, shape, size, where)
    return arrays


def _contents_array(
    contents: Mapping[str, Sequence[Any]],
    datatype: str,
    shape: tuple[int, ...],
    size: int,
    where: str,
) -> npt.NDArray[Any]:
    wanted = CONTENTS_FIELDS[datatype]
    for name in contents:
        if name != wanted:
            takes = f"it takes {wanted}" if wanted else "FP16 elements travel as raw contents only"
            raise InvalidInputError(f"{where} of datatype {datatype} has {name}; {takes}")
    values = contents.get(wanted, ()) if wanted else ()
    if len(values) != size:
        if wanted is None:
            raise InvalidInputError(
                f"{where} of shape {list(shape)} has no elements; FP16 elements travel as raw "
                "contents only"
            )
        raise InvalidInputError(
            f"{where} has {len(values)} elements in {wanted}; shape {list(shape)} needs {size}"
        )
    if datatype == "BYTES":
        out = np.empty(size, dtype=object)
        for i, v in enumerate(values):
            try:
                out[i] = v.decode("utf-8") if isinstance(v, bytes) else str(v)
            except UnicodeDecodeError:
                raise InvalidInputError(
                    f"{where} element {i} is not UTF-8 text; p2pnet carries BYTES as text"
                ) from None
        return out.reshape(shape)
    dtype = np.dtype(DATATYPES[datatype])
    if dtype.kind in "iu":
        wide = np.array(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        outside = (wide < info.min) | (wide > info.max) if wide.size else wide.astype(bool)
        if outside.any():
            i = int(np.argmax(outside))
            raise InvalidInputError(
                f"{where} element {i} is {wide[i]}, outside {datatype}'s range "
                f"[{info.min}, {info.max}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


# --- decoding -----------------------------------------------------------------------


def _split_body(
    body: bytes, json_length: int | None, limits: OipLimits
) -> tuple[dict[str, Any], memoryview]:
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLargeError(
            f"body of {len(body)} bytes; this gateway accepts at most {limits.max_body_bytes}"
        )
    if json_length is None:
        json_length = len(body)
    if not 0 <= json_length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length is {json_length} but the body has {len(body)} bytes"
        )
    try:
        head = json.loads(bytes(body[:json_length]))
    except RecursionError:
        raise InvalidInputError("JSON header nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"JSON header does not parse: {str(exc)[:200]}") from None
    if not isinstance(head, dict):
        raise InvalidInputError(f"JSON header is {_kind(head)}, not an object")
    return head, memoryview(body)[json_length:]


def _kind(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _text_field(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{where} field {key!r} is {_kind(value)}, not a string")
    return value


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInputError(f"{where} field 'parameters' is {_kind(params)}, not an object")
    return params


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidInputError(f"{where} parameter {key!r} is {_kind(value)}, not a boolean")
    return value


def _shape(entry: Mapping[str, Any], where: str, limits: OipLimits) -> tuple[tuple[int, ...], int]:
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise InvalidInputError(f"{where} field 'shape' is {_kind(shape)}, not an array")
    return check_shape(shape, where, limits)


def check_shape(
    shape: Sequence[int], where: str, limits: OipLimits = DEFAULT_LIMITS
) -> tuple[tuple[int, ...], int]:
    """``shape`` as a tuple, and its element count, for the tensor ``where`` names.

    Raises:
        InvalidInputError: more than MAX_NDIM dimensions, or one that is not a
            non-negative integer.
        PayloadTooLargeError: a dimension or the element count over ``limits``.
    """
    shape = list(shape)
    if len(shape) > MAX_NDIM:
        raise InvalidInputError(f"{where} has {len(shape)} dimensions; at most {MAX_NDIM}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidInputError(
                f"{where} has shape {quote_bounded(json.dumps(shape))}; dimensions are "
                "non-negative integers"
            )
        if d > limits.max_elements:
            raise PayloadTooLargeError(
                f"{where} has a dimension of {d}; this gateway accepts at most "
                f"{limits.max_elements} elements"
            )
    size = math.prod(shape)
    if size > limits.max_elements:
        raise PayloadTooLargeError(
            f"{where} of shape {shape} has {size} elements; this gateway accepts at most "
            f"{limits.max_elements}"
        )
    return tuple(shape), size


def _flatten(data: object, where: str, limit: int) -> list[Any]:
    """The elements of JSON ``data`` (flat or nested arrays) in row-major order."""
    out: list[Any] = []

    def walk(value: object, depth: int) -> None:
        if isinstance(value, list):
            if depth > MAX_NDIM:
                raise InvalidInputError(f"{where} data nested deeper than {MAX_NDIM} levels")
            for v in value:
                walk(v, depth + 1)
        else:
            if len(out) >= limit:
                raise PayloadTooLargeError(
                    f"{where} data has more than {limit} elements; this gateway accepts at "
                    f"most {limit}"
                )
            out.append(value)

    if not isinstance(data, list):
        raise InvalidInputError(f"{where} field 'data' is {_kind(data)}, not an array")
    walk(data, 0)
    return out


def _json_array(
    flat: list[Any], datatype: str, shape: tuple[int, ...], where: str
) -> npt.NDArray[Any]:
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise InvalidInputError(f"{where} element {i} is {_kind(v)}; BYTES takes strings")
        return np.array(flat, dtype=object).reshape(shape)
    if datatype == "BOOL":
        ok: Any = lambda v: type(v) is bool  # noqa: E731
        wanted = "true or false"
    elif datatype.startswith("FP"):
        ok = lambda v: type(v) in (int, float)  # noqa: E731
        wanted = "numbers"
    else:
        ok = lambda v: type(v) is int  # noqa: E731
        wanted = "integers"
    for i, v in enumerate(flat):
        if not ok(v):
            raise InvalidInputError(
                f"{where} element {i} is {quote_bounded(json.dumps(v))}; {datatype} takes {wanted}"
            )
    if datatype[0] in "IU":
        info = np.iinfo(np.dtype(dtype))
        for i, v in enumerate(flat):
            if not info.min <= v <= info.max:
                raise InvalidInputError(
                    f"{where} element {i} is {v}, outside {datatype}'s range "
                    f"[{info.min}, {info.max}]"
                )
    with np.errstate(over="ignore"):  # a number past FP16's range becomes inf, as a cast
        arr = np.array(flat, dtype=np.dtype(dtype))
    return arr.reshape(shape)


def _binary_array(
    raw: memoryview, datatype: str, shape: tuple[int, ...], size: int, where: str
) -> npt.NDArray[Any]:
    if datatype != "BYTES":
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        if len(raw) != size * dtype.itemsize:
            raise InvalidInputError(
                f"{where} of shape {list(shape)} and datatype {datatype} needs "
                f"{size * dtype.itemsize} bytes of binary data; binary_data_size says {len(raw)}"
            )
        arr = np.frombuffer(raw, dtype=dtype, count=size).reshape(shape)
        if datatype == "BOOL" and arr.size and int(arr.view(np.uint8).max()) > 1:
            raise InvalidInputError(f"{where} has a BOOL byte other than 0 and 1")
        return arr
    # Each element takes at least its 4-byte length: refuse before allocating.
    if size * 4 > len(raw):
        raise InvalidInputError(
            f"{where} declares {size} BYTES elements but its {len(raw)} bytes of binary data "
            "cannot hold them (each takes at least a 4-byte length)"
        )
    out = np.empty(size, dtype=object)
    offset = 0
    for i in range(size):
        if offset + 4 > len(raw):
            raise InvalidInputError(f"{where} binary data ends before element {i}'s length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInputError(f"{where} element {i} runs past the end of its binary data")
        try:
            out[i] = str(raw[offset : offset + length], "utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"{where} element {i} is not UTF-8 text; p2pnet carries BYTES as text"
            ) from None
        offset += length
    if offset != len(raw):
        raise InvalidInputError(
            f"{where} has {len(raw) - offset} bytes of binary data after its {size} elements"
        )
    return out.reshape(shape)


def _decode_tensors(
    entries: object, rest: memoryview, role: str, limits: OipLimits
) -> tuple[dict[str, npt.NDArray[Any]], int]:
    """Decode the tensors of ``entries``; return them and how many bytes of ``rest`` they took."""
    if not isinstance(entries, list):
        raise InvalidInputError(f"field {role + 's'!r} is {_kind(entries)}, not an array")
    if len(entries) > limits.max_tensors:
        raise PayloadTooLargeError(
            f"{len(entries)} {role}s; this gateway accepts at most {limits.max_tensors}"
        )
    tensors: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    budget = limits.max_elements
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{role} {n} is {_kind(entry)}, not an object")
        name = _text_field(entry, "name", f"{role} {n}")
        if name is None:
            raise InvalidInputError(f"{role} {n} has no 'name'")
        where = f"{role} {quote_bounded(name)}"
        if name in tensors:
            raise InvalidInputError(f"{where} appears twice")
        datatype = check_datatype(_text_field(entry, "datatype", where), where)
        shape, size = _shape(entry, where, limits)
        if size > budget:
            raise PayloadTooLargeError(
                f"the {role}s have more than {limits.max_elements} elements together; this "
                "gateway accepts at most that many"
            )
        budget -= size
        binary_size = _parameters(entry, where).get("binary_data_size")
        if binary_size is not None:
            if type(binary_size) is not int or binary_size < 0:
                raise InvalidInputError(
                    f"{where} parameter 'binary_data_size' is not a non-negative integer"
                )
            if "data" in entry:
                raise InvalidInputError(f"{where} has both 'data' and 'binary_data_size'")
            if offset + binary_size > len(rest):
                raise InvalidInputError(
                    f"{where} has binary_data_size {binary_size} but only "
                    f"{len(rest) - offset} bytes of binary data are left in the body"
                )
            raw = rest[offset : offset + binary_size]
            offset += binary_size
            tensors[name] = _binary_array(raw, datatype, shape, size, where)
        else:
            if "data" not in entry:
                raise InvalidInputError(f"{where} has neither 'data' nor 'binary_data_size'")
            flat = _flatten(entry["data"], where, limits.max_elements)
            if len(flat) != size:
                raise InvalidInputError(
                    f"{where} has {len(flat)} data elements; shape {list(shape)} needs {size}"
                )
            tensors[name] = _json_array(flat, datatype, shape, where)
    return tensors, offset


def _check_rest(rest: memoryview, used: int) -> None:
    if used != len(rest):
        raise InvalidInputError(
            f"the body has {len(rest)} bytes after its JSON header, but binary_data_size "
            f"accounts for {used}"
        )


def decode_infer_request(
    body: bytes, json_length: int | None = None, limits: OipLimits = DEFAULT_LIMITS
) -> InferRequest:
    """Decode an inference request body (``json_length``: the value of the
    ``Inference-Header-Content-Length`` header, None when absent: all JSON).

    Raises:
        PayloadTooLargeError: the body, a tensor, the elements together or the tensor
            count over ``limits``.
        InvalidInputError: anything else wrong: JSON that does not parse, missing or
            mistyped fields, an unknown datatype, data that does not fill the shape,
            binary data sizes that do not add up, BYTES that are not UTF-8.
    """
    head, rest = _split_body(body, json_length, limits)
    request_id = _text_field(head, "id", "request")
    params = _parameters(head, "request")
    binary_output = _flag(params, "binary_data_output", "request") or False
    if "inputs" not in head:
        raise InvalidInputError("request has no 'inputs'")
    inputs, used = _decode_tensors(head["inputs"], rest, "input", limits)
    _check_rest(rest, used)
    outputs: list[RequestedOutput] = []
    wanted = head.get("outputs", [])
    if not isinstance(wanted, list):
        raise InvalidInputError(f"field 'outputs' is {_kind(wanted)}, not an array")
    if len(wanted) > limits.max_tensors:
        raise PayloadTooLargeError(
            f"{len(wanted)} requested outputs; this gateway accepts at most {limits.max_tensors}"
        )
    for n, entry in enumerate(wanted):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"requested output {n} is {_kind(entry)}, not an object")
        name = _text_field(entry, "name", f"requested output {n}")
        if name is None:
            raise InvalidInputError(f"requested output {n} has no 'name'")
        where = f"requested output {quote_bounded(name)}"
        flag = _flag(_parameters(entry, where), "binary_data", where)
        outputs.append(RequestedOutput(name, flag))
    return InferRequest(request_id, inputs, tuple(outputs), binary_output, params)


def decode_infer_reply(
    body: bytes, json_length: int | None = None, limits: OipLimits = DEFAULT_LIMITS
) -> InferReply:
    """Decode an inference reply body (the client side of ``encode_infer_reply``).

    Raises:
        PayloadTooLargeError, InvalidInputError: as ``decode_infer_request``.
    """
    head, rest = _split_body(body, json_length, limits)
    model_name = _text_field(head, "model_name", "reply")
    if model_name is None:
        raise InvalidInputError("reply has no 'model_name'")
    outputs, used = _decode_tensors(head.get("outputs"), rest, "output", limits)
    _check_rest(rest, used)
    return InferReply(
        model_name,
        _text_field(head, "model_version", "reply"),
        _text_field(head, "id", "reply"),
        outputs,
    )


# --- encoding -----------------------------------------------------------------------


def _tensor_entry(
    name: str, arr: npt.NDArray[Any], binary: bool, chunks: list[bytes]
) -> dict[str, Any]:
    datatype = datatype_of(dtype_name(arr))
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if not binary:
        if datatype == "BYTES":
            entry["data"] = [str(v) for v in arr.ravel()]
        else:
            entry["data"] = arr.ravel().tolist()
        return entry
    _, data = tensor_to_raw(arr)
    entry["parameters"] = {"binary_data_size": len(data)}
    chunks.append(data)
    return entry


def _body(head: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    text = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)


def encode_infer_request(
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    id: str | None = None,
    binary: bool = False,
    outputs: Sequence[RequestedOutput] = (),
    binary_output: bool = False,
) -> tuple[bytes, int | None]:
    """An inference request body and its JSON header's length (None: no binary data).

    Raises:
        InvalidInputError: an array of a dtype OIP has no datatype for.
    """
    chunks: list[bytes] = []
    head: dict[str, Any] = {}
    if id is not None:
        head["id"] = id
    if binary_output:
        head["parameters"] = {"binary_data_output": True}
    head["inputs"] = [_tensor_entry(n, np.asarray(a), binary, chunks) for n, a in inputs.items()]
    if outputs:
        head["outputs"] = [
            {
                "name": o.name,
                **({} if o.binary is None else {"parameters": {"binary_data": o.binary}}),
            }
            for o in outputs
        ]
    return _body(head, chunks)


def encode_infer_reply(
    model_name: str,
    model_version: str | None,
    request: InferRequest,
    outputs: Mapping[str, npt.NDArray[Any]],
) -> tuple[bytes, int | None]:
    """The reply body to ``request`` and its JSON header's length (None: no binary data):
    the outputs it asked for (none named: all, in the model's order), each as binary data
    when its own ``binary_data`` parameter, or else the request's ``binary_data_output``,
    says so; the request's id echoed.

    Raises:
        InvalidInputError: the request asks for an output the model does not have, or an
            output has a dtype OIP has no datatype for.
    """
    wanted = request.outputs or tuple(RequestedOutput(n) for n in outputs)
    check_requested_outputs([out.name for out in wanted], outputs)
    chunks: list[bytes] = []
    entries = []
    for out in wanted:
        binary = request.binary_output if out.binary is None else out.binary
        entries.append(_tensor_entry(out.name, np.asarray(outputs[out.name]), binary, chunks))
    head: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        head["model_version"] = model_version
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = entries
    return _body(head, chunks)
