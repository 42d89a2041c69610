"""The invoke wire format: golden vectors both ways, property tests, every rejection path."""

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pnet.conformance.golden import load_vectors
from p2pnet.core.forwarding import split_forward
from p2pnet.core.generation import GenerationParams, GenerationSummary, Prompt
from p2pnet.core.messages import (
    MAX_SIGNED_BLOB_BYTES,
    Cancel,
    Chunk,
    CloseSession,
    Done,
    ErrorReply,
    Forward,
    ForwardResult,
    Generate,
    Hop,
    Invoke,
    Message,
    MessageReader,
    Result,
    TraceEntry,
    WireLimits,
    encode_message,
)
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import PayloadTooLargeError, RemoteProtocolError

VECTORS = load_vectors("invoke_v1")
LIMITS = WireLimits(**VECTORS["limits"])
MODEL = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def _tensor(spec: dict[str, Any]) -> np.ndarray:
    if spec["dtype"] == "string":
        return np.array(spec["data"], dtype=object).reshape(spec["shape"])
    return np.array(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])


def _message(vector: dict[str, Any]) -> Message:
    tensors = {k: _tensor(v) for k, v in vector.get("tensors", {}).items()}
    if vector["type"] == "Invoke":
        return Invoke(vector["request_id"], vector["model"], tensors, vector["deadline_ms"])
    if vector["type"] == "Result":
        return Result(vector["request_id"], tensors)
    if vector["type"] == "Forward":
        hops = tuple(
            Hop(
                h["step"],
                h["model"],
                tuple((peer, tuple(addrs)) for peer, addrs in h["providers"]),
                h["inputs"],
                tuple(h["keep"]),
            )
            for h in vector["hops"]
        )
        return Forward(vector["request_id"], hops, tensors, vector["deadline_ms"])
    if vector["type"] == "ForwardResult":
        trace = tuple(TraceEntry(*t) for t in vector["trace"])
        return ForwardResult(vector["request_id"], tensors, trace)
    if vector["type"] in GENERATION_TYPES:
        return _generation_message(vector)
    return ErrorReply(vector["request_id"], vector["code"], vector["message"])


GENERATION_TYPES = ("Generate", "Chunk", "Done", "Cancel", "CloseSession")


def _generation_message(vector: dict[str, Any]) -> Message:
    rid = vector["request_id"]
    if vector["type"] == "Generate":
        ((kind, body),) = vector["prompt"].items()
        if kind == "messages":
            body = tuple((role, content) for role, content in body)
        elif kind == "tokens":
            body = tuple(body)
        params = vector["params"] | {"stop": tuple(vector["params"]["stop"])}
        return Generate(
            rid,
            vector["model"],
            Prompt(**{kind: body}),
            GenerationParams(**params),
            vector["deadline_ms"],
            vector.get("session"),
            vector.get("keep", False),
            bytes.fromhex(vector["ack_hex"]) if "ack_hex" in vector else None,
        )
    if vector["type"] == "Chunk":
        return Chunk(rid, vector["text"], tuple(vector["tokens"]))
    if vector["type"] == "Done":
        return Done(
            rid,
            GenerationSummary(
                vector["finish"],
                vector["prompt_tokens"],
                vector["completion_tokens"],
                vector["cached_tokens"],
                vector.get("session"),
            ),
            bytes.fromhex(vector["receipt_hex"]) if "receipt_hex" in vector else None,
            vector.get("settle", False),
        )
    if vector["type"] == "Cancel":
        return Cancel(rid)
    return CloseSession(rid, vector["model"], vector["session"])


def _encode(message: Message, limits: WireLimits = LIMITS) -> bytes:
    return b"".join(encode_message(message, limits).frames())


def _decode_all(data: bytes, limits: WireLimits = LIMITS, step: int = 0) -> list[Message]:
    reader = MessageReader(limits)
    out: list[Message] = []
    pieces = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.receive_data(piece)
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert reader.at_message_boundary
    return out


def assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b) and a.request_id == b.request_id
    if isinstance(a, ErrorReply | Generate | Chunk | Done | Cancel | CloseSession):
        assert a == b  # no tensors: every field compares
        return
    ta, tb = _tensors_of(a), _tensors_of(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and ta[name].shape == tb[name].shape
        assert ta[name].tolist() == tb[name].tolist()
    if isinstance(a, Invoke):
        assert (a.model_id, a.deadline_ms) == (b.model_id, b.deadline_ms)  # type: ignore[union-attr]
    if isinstance(a, Forward):
        assert (a.hops, a.deadline_ms) == (b.hops, b.deadline_ms)  # type: ignore[union-attr]
    if isinstance(a, ForwardResult):
        assert a.trace == b.trace  # type: ignore[union-attr]


def _tensors_of(m: Message) -> Any:
    if isinstance(m, Invoke):
        return m.inputs
    if isinstance(m, Forward):
        return m.tensors
    return m.outputs  # type: ignore[union-attr]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_encodes_exactly(vector: dict[str, Any]) -> None:
    assert _encode(_message(vector)).hex() == vector["hex"]


@pytest.mark.parametrize("step", [0, 1, 3])
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_decodes_whole_and_byte_by_byte(vector: dict[str, Any], step: int) -> None:
    (decoded,) = _decode_all(bytes.fromhex(vector["hex"]), step=step)
    assert_same(decoded, _message(vector))


def test_golden_vectors_are_in_the_protocol_doc() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for vector in VECTORS["vectors"]:
        assert vector["hex"] in doc.replace("\n", ""), vector["name"]


def test_several_messages_back_to_back_on_one_stream() -> None:
    data = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["vectors"])
    decoded = _decode_all(data, step=5)
    assert [m.request_id for m in decoded] == [v["request_id"] for v in VECTORS["vectors"]]


def test_streamed_tensor_is_writable_and_inline_is_a_view() -> None:
    message = Result(1, {"big": np.arange(100, dtype=np.float64), "small": np.ones(2, np.int8)})
    (decoded,) = _decode_all(_encode(message))
    assert isinstance(decoded, Result)
    assert decoded.outputs["big"].flags.writeable
    assert not decoded.outputs["small"].flags.writeable


tensors = st.dictionaries(
    st.text(min_size=1, max_size=5),
    hnp.arrays(
        st.sampled_from(
            [np.bool_, np.int8, np.int64, np.uint16, np.float16, np.float32, np.float64]
        ),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    ),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(0, (1 << 64) - 1), st.integers(1, 1 << 31), st.sampled_from([0, 1, 7]))
def test_invoke_round_trip(
    inputs: dict[str, np.ndarray], rid: int, deadline: int, step: int
) -> None:
    message = Invoke(rid, MODEL, inputs, deadline)
    (decoded,) = _decode_all(_encode(message), step=step)
    assert isinstance(decoded, Invoke)
    assert decoded.request_id == rid and decoded.deadline_ms == deadline
    for name, arr in inputs.items():
        assert decoded.inputs[name].shape == arr.shape
        assert decoded.inputs[name].tobytes() == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


names = st.text(min_size=1, max_size=6)
hops = st.lists(
    st.builds(
        Hop,
        names,
        names,
        st.lists(
            st.tuples(names, st.lists(names, max_size=2).map(tuple)), min_size=1, max_size=3
        ).map(tuple),
        st.dictionaries(names, names, max_size=3),
        st.lists(names, max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=4,
).map(tuple)


@settings(max_examples=60, deadline=None)
@given(hops, tensors, st.integers(1, 1 << 31), st.sampled_from([0, 1, 7]))
def test_forward_round_trip(
    hop_list: tuple[Hop, ...], carried: dict[str, np.ndarray], deadline: int, step: int
) -> None:
    (decoded,) = _decode_all(_encode(Forward(9, hop_list, carried, deadline)), step=step)
    assert isinstance(decoded, Forward)
    assert decoded.hops == hop_list and decoded.deadline_ms == deadline
    assert list(decoded.tensors) == list(carried)


def test_the_branch_vector_is_what_the_first_peer_of_the_graph_vector_sends() -> None:
    """``forward-graph``'s first peer sends ``forward-graph-branch`` on while it runs
    emotion (docs/protocol.md, forward), and reply after both."""
    by_name = {v["name"]: v for v in VECTORS["vectors"]}
    graph = _message(by_name["forward-graph"])
    assert isinstance(graph, Forward)
    split = split_forward(graph)
    (branch,) = split.branches
    assert _encode(branch).hex() == by_name["forward-graph-branch"]["hex"]
    assert [h.step for h in split.rest] == ["reply"]


@pytest.mark.parametrize(
    ("hop", "error"),
    [
        ({"step": "a", "model": "m", "providers": [], "inputs": {}, "keep": []}, "1..8 providers"),
        ({"step": "a", "model": "m", "providers": [["p"]], "inputs": {}, "keep": []}, "provider"),
        (
            {"step": "a", "model": "m", "providers": [["p", []]], "inputs": {"x": 1}, "keep": []},
            "text",
        ),
        ({"step": 1, "model": "m", "providers": [["p", []]], "inputs": {}, "keep": []}, "'step'"),
        ("hop", "a hop must be a map"),
    ],
)
def test_malformed_forward_is_a_protocol_error(hop: object, error: str) -> None:
    head = {"v": 1, "type": "forward", "id": 1, "deadline_ms": 5, "hops": [hop], "tensors": {}}
    with pytest.raises(RemoteProtocolError, match=error):
        _read(_frame(head))
    head["hops"] = [hop] * 17
    with pytest.raises(RemoteProtocolError, match=r"1\.\.16 hops"):
        _read(_frame(head))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    reader = MessageReader(
        WireLimits(
            max_frame_size=1024, max_message_size=4096, inline_tensor_bytes=64, chunk_size=64
        )
    )
    try:
        reader.receive_data(data)
        while reader.next_message() is not None:
            pass
    except (RemoteProtocolError, PayloadTooLargeError):
        pass


@settings(max_examples=100)
@given(st.sampled_from(VECTORS["vectors"]), st.data())
def test_truncated_message_waits_for_more_and_is_not_at_a_boundary(
    vector: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytes.fromhex(vector["hex"])
    cut = data.draw(st.integers(1, len(raw) - 1))
    reader = MessageReader(LIMITS)
    reader.receive_data(raw[:cut])
    assert reader.next_message() is None
    assert not reader.at_message_boundary


@settings(max_examples=100)
@given(st.sampled_from(VECTORS["vectors"]), st.data())
def test_corrupted_byte_never_crashes(vector: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray.fromhex(vector["hex"])
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    reader = MessageReader(LIMITS)
    try:
        reader.receive_data(bytes(raw))
        reader.next_message()
    except (RemoteProtocolError, PayloadTooLargeError):
        pass


def _frame(head: object) -> bytes:
    body = msgpack.packb(head, use_bin_type=True)
    return encode_uvarint(len(body)) + body


def _read(data: bytes, limits: WireLimits = LIMITS) -> Message | None:
    reader = MessageReader(limits)
    reader.receive_data(data)
    return reader.next_message()


@pytest.mark.parametrize(
    ("head", "error"),
    [
        ([1, 2], "not a map"),
        ({"v": 2, "type": "invoke"}, "version 2 is not supported"),
        ({"v": 1, "type": "hello", "id": 1}, "unknown message type 'hello'"),
        ({"v": 1, "type": "error", "id": -1, "code": "x", "message": ""}, "out of range"),
        ({"v": 1, "type": "error", "id": True, "code": "x", "message": ""}, "'id' must be int"),
        ({"v": 1, "type": "error", "id": 1, "code": 5, "message": ""}, "'code' must be str"),
        (
            {"v": 1, "type": "invoke", "id": 1, "model": "m", "deadline_ms": 0, "inputs": {}},
            "deadline_ms must be positive",
        ),
        (
            {"v": 1, "type": "invoke", "id": 1, "model": "m", "deadline_ms": 5, "inputs": {"x": 3}},
            "must be a tensor",
        ),
        (
            {"v": 1, "type": "result", "id": 1, "outputs": {"x": msgpack.ExtType(9, b"")}},
            "unknown msgpack extension type 9",
        ),
        (
            {
                "v": 1,
                "type": "result",
                "id": 1,
                "outputs": {},
                "junk": msgpack.ExtType(
                    2, bytes.fromhex("0b0101000000000000" + "00" * 0 + "00" * 0)[:10]
                ),
            },
            "header",
        ),
        (
            {
                "v": 1,
                "type": "result",
                "id": 1,
                "outputs": {},
                "junk": msgpack.ExtType(2, bytes.fromhex("0b010100000000000000")),
            },
            "outside the message's tensor map",
        ),
        (
            {
                "v": 1,
                "type": "result",
                "id": 1,
                "outputs": {"s": msgpack.ExtType(2, bytes.fromhex("0d010100000000000000"))},
            },
            "cannot be streamed",
        ),
    ],
)
def test_malformed_heads_are_rejected_precisely(head: object, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        _read(_frame(head))


def test_bytes_that_are_not_msgpack() -> None:
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        _read(b"\x03\xc1\xc1\xc1")


def test_empty_frame_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        _read(b"\x00")


def test_oversized_frame_is_rejected_from_its_length_alone() -> None:
    limits = WireLimits(max_frame_size=1024, inline_tensor_bytes=16, chunk_size=16)
    with pytest.raises(PayloadTooLargeError, match="frame of 1025 bytes"):
        _read(encode_uvarint(1025), limits)


def test_oversized_message_is_rejected_from_its_head_before_any_data() -> None:
    limits = WireLimits(max_message_size=1000, inline_tensor_bytes=16, chunk_size=16)
    head = {
        "v": 1,
        "type": "result",
        "id": 1,
        "outputs": {"x": msgpack.ExtType(2, bytes.fromhex("0c01") + (200).to_bytes(8, "little"))},
    }
    with pytest.raises(PayloadTooLargeError, match="more than this side accepts"):
        _read(_frame(head), limits)


def test_data_frame_longer_than_the_remaining_tensor_bytes() -> None:
    head = {
        "v": 1,
        "type": "result",
        "id": 1,
        "outputs": {"x": msgpack.ExtType(2, bytes.fromhex("06010400000000000000"))},
    }
    with pytest.raises(RemoteProtocolError, match="only 4 tensor bytes remain"):
        _read(_frame(head) + b"\x05abcde")


def test_encoder_refuses_what_the_receiver_would_refuse() -> None:
    small = WireLimits(max_frame_size=64, max_message_size=100, inline_tensor_bytes=8, chunk_size=8)
    with pytest.raises(PayloadTooLargeError, match="message is"):
        encode_message(Result(1, {"x": np.zeros(200, np.uint8)}), small)
    with pytest.raises(PayloadTooLargeError, match="head is"):
        encode_message(Result(1, {"s": np.array(["x" * 100], dtype=object)}), small)


def test_limits_must_be_consistent() -> None:
    with pytest.raises(ValueError):
        WireLimits(max_frame_size=10, chunk_size=20)
    with pytest.raises(ValueError):
        WireLimits(max_frame_size=10, inline_tensor_bytes=10, chunk_size=5)


def _head_frame(head: object) -> bytes:
    body = msgpack.packb(head, use_bin_type=True)
    return encode_uvarint(len(body)) + body


def _read(data: bytes, limits: WireLimits = WireLimits()) -> object:
    reader = MessageReader(limits)
    reader.receive_data(data)
    return reader.next_message()


INVOKE_HEAD = {"v": 1, "type": "invoke", "id": 1, "model": "m", "deadline_ms": 1, "inputs": {}}


def test_a_deeply_nested_head_says_so() -> None:
    with pytest.raises(RemoteProtocolError, match="nested deeper than 1024 levels"):
        _read(encode_uvarint(2001) + b"\x91" * 2000 + b"\xc0")


@pytest.mark.parametrize(
    ("head", "limits", "words"),
    [
        (INVOKE_HEAD | {"pad": [None] * 300}, WireLimits(), "at most 256 entries per array"),
        (INVOKE_HEAD | {"pad": [[None] * 255] * 256}, WireLimits(), "over 65536 array and map"),
        (INVOKE_HEAD | {"pad": [[]] * 10}, WireLimits(max_head_entries=12), "over 12 array"),
        (
            INVOKE_HEAD
            | {"inputs": {str(i): msgpack.ExtType(1, b"\x0b\x00" + bytes(4)) for i in range(3)}},
            WireLimits(max_tensors=2),
            "over 2 tensors",
        ),
        (
            INVOKE_HEAD
            | {
                "inputs": {
                    str(i): msgpack.ExtType(
                        1, b"\x0d\x01" + (2).to_bytes(8, "little") + b"\x00\x00"
                    )
                    for i in range(3)
                }
            },
            WireLimits(max_string_elements=5),
            "at most 1 string elements",
        ),
    ],
)
def test_what_a_head_may_make_the_reader_build_is_bounded(
    head: object, limits: WireLimits, words: str
) -> None:
    with pytest.raises(PayloadTooLargeError, match=words):
        _read(_head_frame(head), limits)


def test_peer_sent_text_in_errors_is_cut() -> None:
    with pytest.raises(
        RemoteProtocolError, match=r"unknown message type 'xxx.*… \(100000 characters\)"
    ):
        _read(_head_frame({"v": 1, "type": "x" * 100_000, "id": 1}))


def test_ready_head_size_says_when_a_whole_head_waits() -> None:
    reader = MessageReader()
    frame = _head_frame(INVOKE_HEAD)
    reader.receive_data(frame[:-1])
    assert reader.ready_head_size == 0
    reader.receive_data(frame[-1:])
    assert reader.ready_head_size == len(frame) - 1
    assert reader.next_message() is not None and reader.ready_head_size == 0


# --- usage receipts and acknowledgements in heads -------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.binary(max_size=MAX_SIGNED_BLOB_BYTES),
    st.binary(max_size=MAX_SIGNED_BLOB_BYTES),
    st.sampled_from([0, 1, 7]),
)
def test_a_receipt_and_an_acknowledgement_travel_in_the_head(
    receipt: bytes, ack: bytes, step: int
) -> None:
    x = {"x": np.arange(3, dtype=np.float32)}
    sent = [Invoke(5, MODEL, x, 100, ack), Result(5, x, receipt)]
    received = _decode_all(b"".join(_encode(m) for m in sent), step=step)
    invoke, result = received
    assert isinstance(invoke, Invoke) and invoke.ack == ack
    assert isinstance(result, Result) and result.receipt == receipt


def test_messages_without_a_receipt_are_the_bytes_they_always_were() -> None:
    x = {"x": np.arange(3, dtype=np.float32)}
    assert _encode(Result(5, x, None)) == _encode(Result(5, x))
    assert b"\xa3ack" not in _encode(Invoke(5, MODEL, x, 100))  # no "ack" key at all
    (decoded,) = _decode_all(_encode(Result(5, x)))
    assert isinstance(decoded, Result) and decoded.receipt is None


def test_a_receipt_is_bounded_and_must_be_bin() -> None:
    x = {"x": np.arange(3, dtype=np.float32)}
    with pytest.raises(PayloadTooLargeError, match="receipt is 2049 bytes"):
        _encode(Result(5, x, b"r" * (MAX_SIGNED_BLOB_BYTES + 1)))
    head = {"v": 1, "type": "result", "id": 1, "outputs": {}}
    with pytest.raises(RemoteProtocolError, match="field 'receipt' must be bin, got str"):
        _read(_frame(head | {"receipt": "text"}))
    with pytest.raises(RemoteProtocolError, match="field 'receipt' is 2049 bytes"):
        _read(_frame(head | {"receipt": b"r" * (MAX_SIGNED_BLOB_BYTES + 1)}))
    invoke = {"v": 1, "type": "invoke", "id": 1, "model": MODEL, "deadline_ms": 5, "inputs": {}}
    with pytest.raises(RemoteProtocolError, match="field 'ack' must be bin, got int"):
        _read(_frame(invoke | {"ack": 7}))


def test_a_forward_result_carries_the_hops_receipts() -> None:
    x = {"x": np.arange(3, dtype=np.float32)}
    trace = (TraceEntry("a", MODEL, "12D3KooWA", 1.5),)
    sent = ForwardResult(9, x, trace, (b"first hop", b"second hop"))
    (got,) = _decode_all(_encode(sent))
    assert isinstance(got, ForwardResult) and got.receipts == (b"first hop", b"second hop")
    assert _encode(ForwardResult(9, x, trace)) == _encode(ForwardResult(9, x, trace, ()))
    head = {"v": 1, "type": "forward_result", "id": 1, "outputs": {}, "trace": []}
    with pytest.raises(RemoteProtocolError, match="a receipt must be bin"):
        _read(_frame(head | {"receipts": ["text"]}))
    with pytest.raises(RemoteProtocolError, match="at most 16"):
        _read(_frame(head | {"receipts": [b"r"] * 17}))


def test_a_result_may_ask_the_caller_to_settle() -> None:
    x = {"x": np.arange(3, dtype=np.float32)}
    (got,) = _decode_all(_encode(Result(4, x, b"receipt", settle=True)))
    assert isinstance(got, Result) and got.settle is True
    assert b"\xa6settle" not in _encode(Result(4, x))  # no key unless asked
    head = {"v": 1, "type": "result", "id": 1, "outputs": {}}
    with pytest.raises(RemoteProtocolError, match="'settle' must be a boolean, got int"):
        _read(_frame(head | {"settle": 1}))
