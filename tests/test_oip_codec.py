"""The Open Inference Protocol v2 codec (p2pnet.core.oip): round trips of every datatype,
JSON and binary; golden bodies; and malformed bodies that raise only the expected errors."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pnet.core.oip import (
    CONTENTS_FIELDS,
    DATATYPES,
    OipLimits,
    RequestedOutput,
    TensorData,
    decode_infer_reply,
    decode_infer_request,
    decode_tensors,
    encode_infer_reply,
    encode_infer_request,
    model_metadata,
    tensor_to_raw,
)
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import InvalidInputError, PayloadTooLargeError

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = DATATYPES[datatype]
    if dtype == "string":
        return SHAPES.flatmap(
            lambda shape: st.lists(
                TEXT, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
            ).map(lambda xs: np.array(xs, dtype=object).reshape(shape))
        )
    return hnp.arrays(np.dtype(dtype).newbyteorder("<"), SHAPES)


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a, b)
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        np.testing.assert_array_equal(a, b)  # NaN equals NaN here


@pytest.mark.parametrize("datatype", list(DATATYPES))
@given(data=st.data(), binary=st.booleans())
def test_every_datatype_round_trips_in_requests_and_replies(
    datatype: str, data: st.DataObject, binary: bool
) -> None:
    arr = data.draw(arrays(datatype))
    body, length = encode_infer_request({"t": arr}, id="r1", binary=binary, binary_output=binary)
    assert (length is not None) == binary
    request = decode_infer_request(body, length)
    assert request.id == "r1" and request.binary_output == binary
    same(request.inputs["t"], arr)
    reply_body, reply_length = encode_infer_reply("m", "v", request, {"t": arr})
    reply = decode_infer_reply(reply_body, reply_length)
    assert (reply.model_name, reply.model_version, reply.id) == ("m", "v", "r1")
    same(reply.outputs["t"], arr)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@given(data=st.data())
def test_every_datatype_round_trips_as_grpc_raw_and_typed_contents(
    datatype: str, data: st.DataObject
) -> None:
    arr = data.draw(arrays(datatype))
    name, raw = tensor_to_raw(arr)
    assert name == datatype
    same(decode_tensors([TensorData("t", datatype, arr.shape, raw=raw)])["t"], arr)
    field = CONTENTS_FIELDS[datatype]
    if field is None:  # FP16: raw contents only
        return
    values = [v.encode() for v in arr.ravel()] if datatype == "BYTES" else arr.ravel().tolist()
    contents = {field: values} if values else {}
    same(decode_tensors([TensorData("t", datatype, arr.shape, contents=contents)])["t"], arr)


def test_grpc_tensors_that_are_refused() -> None:
    def refused(tensor: TensorData, message: str, error: type = InvalidInputError) -> None:
        with pytest.raises(error, match=message):
            decode_tensors([tensor], OipLimits(max_elements=100))

    refused(TensorData("x", "INT8", [2], contents={"int_contents": [1, 200]}),
            r"element 1 is 200, outside INT8's range \[-128, 127\]")  # fmt: skip
    refused(TensorData("x", "UINT16", [1], contents={"uint_contents": [70000]}), "UINT16's range")
    refused(TensorData("x", "FP32", [1], contents={"fp64_contents": [1.0]}),
            "has fp64_contents; it takes fp32_contents")  # fmt: skip
    refused(TensorData("x", "FP16", [1], contents={"fp32_contents": [1.0]}), "raw contents only")
    refused(TensorData("x", "FP16", [1]), "raw contents only")
    refused(TensorData("x", "FP32", [3], contents={"fp32_contents": [1.0]}), "needs 3")
    refused(TensorData("x", "FP32", [1], raw=b"\0" * 4, contents={"fp32_contents": [1.0]}),
            "both raw contents and typed contents")  # fmt: skip
    refused(TensorData("x", "FP32", [2], raw=b"\0" * 4), "needs 8 bytes")
    refused(TensorData("x", "BYTES", [1], contents={"bytes_contents": [b"\xff"]}), "not UTF-8")
    refused(TensorData("x", "BOOL", [1], raw=b"\x02"), "BOOL byte")
    refused(TensorData("x", "BF16", [1]), "datatype 'BF16'; supported")
    refused(TensorData("x", "FP32", [-1]), "non-negative")
    refused(TensorData("x", "FP32", [11, 11], raw=b""), "121 elements", PayloadTooLargeError)
    refused(TensorData("", "FP32", [0]), "input 0 has no name")
    with pytest.raises(InvalidInputError, match="appears twice"):
        decode_tensors([TensorData("x", "FP32", [0]), TensorData("x", "FP32", [0])])
    with pytest.raises(PayloadTooLargeError, match="together"):
        decode_tensors([TensorData(str(i), "FP32", [60], raw=bytes(240)) for i in range(2)],
                       OipLimits(max_elements=100))  # fmt: skip


def test_golden_json_request() -> None:
    body = (
        b'{"id":"42","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1.5,2]]},'
        b'{"name":"t","shape":[2],"datatype":"BYTES","data":["a","\xc3\xa9"]}],'
        b'"outputs":[{"name":"label","parameters":{"binary_data":true}}]}'
    )
    request = decode_infer_request(body)
    assert request.id == "42"
    assert request.inputs["x"].dtype == np.float32 and request.inputs["x"].tolist() == [[1.5, 2.0]]
    assert request.inputs["t"].tolist() == ["a", "é"]
    assert request.outputs == (RequestedOutput("label", True),)


def test_golden_binary_request_and_reply() -> None:
    head = (
        b'{"inputs":[{"name":"b","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}},'
        b'{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}},'
        b'{"name":"i","shape":[1],"datatype":"INT16","parameters":{"binary_data_size":2}}],'
        b'"parameters":{"binary_data_output":true}}'
    )
    raw = b"\x01\x00\x01" + b"\x02\x00\x00\x00hi" + b"\x01\x00\x00\x00!" + b"\x02\x01"
    request = decode_infer_request(head + raw, len(head))
    assert request.inputs["b"].tolist() == [True, False, True]
    assert request.inputs["s"].tolist() == ["hi", "!"]
    assert request.inputs["i"].tolist() == [0x0102]
    body, length = encode_infer_reply("m", None, request, {"y": np.array([1.0], np.float32)})
    assert length is not None
    assert json.loads(body[:length]) == {
        "model_name": "m",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}
        ],
    }
    assert body[length:] == b"\x00\x00\x80\x3f"


def test_requested_outputs_choose_which_and_how() -> None:
    request = decode_infer_request(
        b'{"id":"7","inputs":[],"outputs":[{"name":"b","parameters":{"binary_data":true}},'
        b'{"name":"a"}]}'
    )
    outputs = {"a": np.array([1], np.int64), "b": np.array([2], np.int64), "c": np.ones(1)}
    body, length = encode_infer_reply("m", None, request, outputs)
    assert length is not None
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["b", "a"]
    assert head["outputs"][1]["data"] == [1] and head["id"] == "7"
    assert body[length:] == struct.pack("<q", 2)
    bad = decode_infer_request(b'{"inputs":[],"outputs":[{"name":"zz"}]}')
    with pytest.raises(InvalidInputError, match="'zz' is not an output"):
        encode_infer_reply("m", None, bad, outputs)


def test_metadata_has_datatypes_and_variable_dims_as_minus_one() -> None:
    schema = ModelSchema(
        (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("t", "string", (None,))),
        (TensorSpec("label", "int64", ("batch",)),),
    )
    assert model_metadata("iris", schema, versions=["bafk"]) == {
        "name": "iris",
        "versions": ["bafk"],
        "platform": "p2pnet",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "t", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }


def req(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


SHORT_BINARY = req(
    {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
)


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{", None, "does not parse"),
        (b"[]", None, "is an array, not an object"),
        (b"\xff", None, "does not parse"),
        (b"{}", None, "no 'inputs'"),
        (req({"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}), None, "needs 2"),
        (req({"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}), None, "datatype"),
        (req({"name": "x", "shape": [-1], "datatype": "FP32", "data": []}), None, "non-negative"),
        (req({"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}), None, "range"),
        (req({"name": "x", "shape": [1], "datatype": "INT8", "data": [1.5]}), None, "integers"),
        (req({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}), None, "true or false"),
        (req({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}), None, "strings"),
        (req({"name": "x", "shape": [1], "datatype": "FP32"}), None, "neither"),
        (req({"shape": [1], "datatype": "FP32", "data": [1]}), None, "no 'name'"),
        (
            req(
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
            ),
            None,
            "twice",
        ),
        (SHORT_BINARY + b"\0" * 4, len(SHORT_BINARY), "binary_data_size 8 but only 4"),
        (
            SHORT_BINARY + b"\0" * 12,
            len(SHORT_BINARY),
            "12 bytes after its JSON header, but binary_data_size accounts for 8",
        ),
        (SHORT_BINARY.replace(b"FP32", b"FP64") + b"\0" * 8, len(SHORT_BINARY), "needs 16"),
        (b'{"inputs":[]}xx', 13, "2 bytes after its JSON header"),
        (b'{"inputs":[]}', 99, "Inference-Header-Content-Length is 99"),
        (req(parameters={"binary_data_output": "yes"}), None, "not a boolean"),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    body: bytes, length: int | None, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode_infer_request(body, length)


def binary_bytes_request(raw: bytes, count: int) -> tuple[bytes, int]:
    head = req(
        {
            "name": "s",
            "shape": [count],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(raw)},
        }
    )
    return head + raw, len(head)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="element 1 is not UTF-8"):
        decode_infer_request(*binary_bytes_request(b"\1\0\0\0a\2\0\0\0\xff\xfe", 2))
    with pytest.raises(InvalidInputError, match="runs past the end"):
        decode_infer_request(*binary_bytes_request(b"\x09\0\0\0a", 1))
    with pytest.raises(InvalidInputError, match="cannot hold them"):
        decode_infer_request(*binary_bytes_request(b"\0\0\0\0", 1000))


def test_limits_are_payload_too_large() -> None:
    limits = OipLimits(max_body_bytes=1000, max_elements=10, max_tensors=2)
    one = {"name": "x", "shape": [10], "datatype": "INT8", "data": [0] * 10}
    decode_infer_request(req(one), limits=limits)
    cases = [
        req(one) + b" " * 1000,
        req({**one, "shape": [11]}),
        req({**one, "shape": [0, 10**12], "data": []}),
        req(one, {**one, "name": "y"}),  # 20 elements together
        req(one, {**one, "name": "y"}, {**one, "name": "z"}),
        req({**one, "shape": [2], "data": [[0] * 6, [0] * 6]}),
    ]
    for body in cases:
        with pytest.raises(PayloadTooLargeError):
            decode_infer_request(body, limits=limits)


VALID_BINARY = encode_infer_request(
    {
        "x": np.arange(6, dtype=np.float32).reshape(2, 3),
        "s": np.array(["ab", "c"], dtype=object),
        "b": np.array([True, False]),
    },
    id="r",
    binary=True,
)


@given(
    cut=st.integers(0, len(VALID_BINARY[0])),
    flips=st.lists(
        st.tuples(st.integers(0, len(VALID_BINARY[0]) - 1), st.integers(0, 255)), max_size=4
    ),
    length_delta=st.integers(-5, 5),
)
def test_mutated_bodies_raise_only_the_expected_errors(
    cut: int, flips: list[tuple[int, int]], length_delta: int
) -> None:
    body = bytearray(VALID_BINARY[0][:cut] + VALID_BINARY[0][cut + 1 :])
    for at, value in flips:
        if at < len(body):
            body[at] = value
    assert VALID_BINARY[1] is not None
    try:
        decode_infer_request(bytes(body), VALID_BINARY[1] + length_delta)
    except (InvalidInputError, PayloadTooLargeError):
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4),
    )
)
def test_arbitrary_json_raises_only_the_expected_errors(value: object) -> None:
    for body in (json.dumps(value), json.dumps({"inputs": [value]}), json.dumps({"inputs": value})):
        try:
            decode_infer_request(body.encode())
        except (InvalidInputError, PayloadTooLargeError):
            pass


def test_deep_nesting_is_refused() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidInputError):
        decode_infer_request(f'{{"inputs":{deep}}}'.encode())
    with pytest.raises(InvalidInputError, match="nested deeper"):
        decode_infer_request(
            req(
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "FP32",
                    "data": json.loads("[" * 40 + "1" + "]" * 40),
                }
            )
        )
