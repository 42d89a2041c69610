"""The describe wire format: golden vectors both ways, property tests, every rejection path."""

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.conformance.golden import load_vectors, vector
from p2pnet.core.describe import (
    DEFAULT_DESCRIBE_LIMITS,
    MAX_MODEL_FILTER_LENGTH,
    DescribeErrorReply,
    DescribeLimits,
    DescribeMessage,
    DescribeReader,
    DescribeRequest,
    RecordsReply,
    decode_describe_message,
    encode_describe_message,
    fit_records_reply,
    records_reply_size,
)
from p2pnet.core.records import CapabilityRecord, decode_record
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import PayloadTooLargeError, RemoteProtocolError

DOC = Path(__file__).parent.parent / "docs" / "protocol.md"
RECORDS = load_vectors("records_v1")
MINIMAL_ENVELOPE = bytes.fromhex(vector(RECORDS, "record-minimal")["envelope_hex"])
SENTIMENT_ENVELOPE = bytes.fromhex(vector(RECORDS, "record-sentiment")["envelope_hex"])
HELLO = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def _message(entry: dict[str, Any]) -> DescribeMessage:
    """The message a ``describe_v1.json`` entry holds, decoded."""
    if entry["type"] == "describe":
        return DescribeRequest(tuple(entry["models"]), tuple(entry["tasks"]))
    if entry["type"] == "records":
        return RecordsReply(tuple(bytes.fromhex(r) for r in entry["records_hex"]))
    return DescribeErrorReply(entry["code"], entry["message"])


# name, what it shows (as in docs/protocol.md), message, frame bytes: the vectors of
# p2pnet/conformance/vectors/describe_v1.json, which the conformance checker sends too.
VECTORS: list[tuple[str, str, DescribeMessage, str]] = [
    (v["name"], v["note"], _message(v), v["hex"]) for v in load_vectors("describe_v1")["vectors"]
]
IDS = [v[0] for v in VECTORS]


def _read_all(
    data: bytes, limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS, step: int = 0
) -> list[Any]:
    reader = DescribeReader(limits)
    out: list[DescribeMessage] = []
    pieces = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.receive_data(piece)
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert reader.at_message_boundary
    return out


def _decode(head: object, limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS) -> DescribeMessage:
    return decode_describe_message(msgpack.packb(head, use_bin_type=True), limits)


# Golden vectors


@pytest.mark.parametrize(("name", "note", "message", "frame_hex"), VECTORS, ids=IDS)
def test_golden_vector_encodes_exactly(
    name: str, note: str, message: DescribeMessage, frame_hex: str
) -> None:
    assert encode_describe_message(message).hex() == frame_hex


@pytest.mark.parametrize("step", [0, 1, 7])
@pytest.mark.parametrize(("name", "note", "message", "frame_hex"), VECTORS, ids=IDS)
def test_golden_vector_decodes_whole_and_byte_by_byte(
    name: str, note: str, message: DescribeMessage, frame_hex: str, step: int
) -> None:
    assert _read_all(bytes.fromhex(frame_hex), step=step) == [message]


def test_golden_record_in_a_reply_is_the_record_vector() -> None:
    (reply,) = _read_all(bytes.fromhex(VECTORS[3][3]))
    payload = msgpack.unpackb(reply.records[0])[0]
    assert decode_record(payload).name == ""


def test_several_messages_back_to_back_on_one_stream() -> None:
    data = b"".join(bytes.fromhex(v[3]) for v in VECTORS)
    assert _read_all(data, step=5) == [v[2] for v in VECTORS]


def _doc_section() -> str:
    doc = DOC.read_text()
    start = doc.index("## `/p2pnet/describe/1.0.0`")
    end = doc.find("\n## ", start + 1)
    return doc[start : end if end != -1 else len(doc)]


def test_golden_vectors_are_in_the_protocol_doc_each_in_its_own_block() -> None:
    section = _doc_section()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S)
    hex_blocks = {"".join(b.split()) for b in blocks if re.fullmatch(r"[0-9a-f\s]+", b)}
    for name, _, _, frame_hex in VECTORS:
        assert f"### `{name}`" in section, name
        assert frame_hex in hex_blocks, name
    for block in blocks:
        if re.fullmatch(r"[0-9a-f\s]+", block):
            assert all(len(line) <= 64 for line in block.splitlines())


# Decoding is lenient where it costs nothing, strict where meaning is at stake


def test_keys_in_any_order_and_unknown_keys_are_accepted() -> None:
    head = {"tasks": ["a"], "future": {"x": 1}, "type": "describe", "models": [], "v": 1}
    assert _decode(head) == DescribeRequest((), ("a",))


def test_missing_filters_mean_all() -> None:
    assert _decode({"v": 1, "type": "describe"}) == DescribeRequest()


@pytest.mark.parametrize(
    ("head", "error"),
    [
        ([1, 2], "is an array, not a map"),
        ("describe", "is a string, not a map"),
        ({"type": "describe"}, "version None is not supported"),
        ({"v": 2, "type": "describe"}, "version 2 is not supported"),
        ({"v": True, "type": "describe"}, "version True is not supported"),
        ({"v": 1.0, "type": "describe"}, "version 1.0 is not supported"),
        ({"v": 1, "type": "hello"}, "unknown describe message type 'hello'"),
        ({"v": 1}, "unknown describe message type None"),
        ({"v": 1, "type": "describe", "models": "bafk"}, "'models' must be an array of str"),
        (
            {"v": 1, "type": "describe", "tasks": {"a": 1}},
            "'tasks' must be an array of str, got a map",
        ),
        ({"v": 1, "type": "describe", "models": [b"x"]}, r"models\[0\] must be a str, got binary"),
        (
            {"v": 1, "type": "describe", "tasks": ["a", 3]},
            r"tasks\[1\] must be a str, got an integer",
        ),
        (
            {"v": 1, "type": "describe", "models": ["b" * (MAX_MODEL_FILTER_LENGTH + 1)]},
            r"models\[0\] is 129 characters; at most 128",
        ),
        (
            {"v": 1, "type": "describe", "tasks": ["t" * 65]},
            r"tasks\[0\] is 65 characters; at most 64",
        ),
        ({"v": 1, "type": "records"}, "lacks its 'records' field"),
        ({"v": 1, "type": "records", "records": None}, "must be an array, got nil"),
        (
            {"v": 1, "type": "records", "records": ["text"]},
            r"records\[0\] must be binary .*got a string",
        ),
        ({"v": 1, "type": "error", "code": 5, "message": "m"}, "needs str 'code' and 'message'"),
        ({"v": 1, "type": "error", "code": "internal"}, "got a string and nil"),
        (
            {"v": 1, "type": "records", "records": [msgpack.ExtType(1, b"")]},
            "no msgpack extension values",
        ),
    ],
)
def test_malformed_messages_are_rejected_precisely(head: object, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        _decode(head)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb({"v": 1, "type": "describe"}) + b"\x00", "not valid msgpack"),
        (b"\x81\xa1v\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8 in a str
        (b"\x81\x01\x01", "not valid msgpack"),  # integer map key
        (b"\x81\xa1v\xd6\xff\x00\x00\x00\x00", "version Timestamp"),  # ext -1: a timestamp
    ],
    ids=["reserved-byte", "trailing", "utf8", "int-key", "timestamp"],
)
def test_bodies_that_are_not_describe_msgpack(body: bytes, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        decode_describe_message(body)


def test_limits_on_lists_both_ways() -> None:
    limits = DescribeLimits(max_records=2, max_filters=3)
    with pytest.raises(PayloadTooLargeError, match="holds 3 records; this side accepts at most 2"):
        _decode({"v": 1, "type": "records", "records": [b"a", b"b", b"c"]}, limits)
    with pytest.raises(PayloadTooLargeError, match="holds 3 records"):
        encode_describe_message(RecordsReply((b"a", b"b", b"c")), limits)
    with pytest.raises(PayloadTooLargeError, match="'tasks' has 4 entries; at most 3"):
        _decode({"v": 1, "type": "describe", "tasks": ["a"] * 4}, limits)
    with pytest.raises(PayloadTooLargeError, match="'models' has 4 entries; at most 3"):
        encode_describe_message(DescribeRequest(models=(HELLO,) * 4), limits)


def test_frame_limit_both_ways() -> None:
    limits = DescribeLimits(max_frame_size=100)
    with pytest.raises(PayloadTooLargeError, match="the limit is 100 bytes"):
        encode_describe_message(RecordsReply((b"x" * 80,)), limits)
    reader = DescribeReader(limits)
    reader.receive_data(encode_uvarint(101))
    with pytest.raises(PayloadTooLargeError, match="at most 100 bytes per frame"):
        reader.next_message()


def test_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match=r"models\[0\] must be a str"):
        encode_describe_message(DescribeRequest(models=(5,)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be an array"):
        encode_describe_message(DescribeRequest(tasks=["a"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid Unicode"):
        encode_describe_message(DescribeErrorReply("internal", "\ud800"))


# Filters


def _record(model: str, tasks: tuple[str, ...]) -> CapabilityRecord:
    record = decode_record(msgpack.unpackb(SENTIMENT_ENVELOPE)[0])
    return replace(record, model_id=model, tasks=tasks)


OTHER = "bafkreigzfgfbbunqonmdpxcl3bo2yza3b46o6j5epzovhjkpf47vwl6p7i"


@pytest.mark.parametrize(
    ("request_", "model", "tasks", "expected"),
    [
        (DescribeRequest(), HELLO, (), True),
        (DescribeRequest(models=(HELLO,)), HELLO, ("a",), True),
        (DescribeRequest(models=(OTHER,)), HELLO, ("a",), False),
        (DescribeRequest(models=(OTHER, HELLO)), HELLO, (), True),
        (DescribeRequest(tasks=("a",)), HELLO, ("b", "a"), True),
        (DescribeRequest(tasks=("a", "c")), HELLO, ("b",), False),
        (DescribeRequest(tasks=("a",)), HELLO, (), False),
        (DescribeRequest((HELLO,), ("a",)), HELLO, ("a",), True),
        (DescribeRequest((HELLO,), ("a",)), HELLO, ("b",), False),
        (DescribeRequest((OTHER,), ("a",)), HELLO, ("a",), False),
    ],
)
def test_a_record_matches_when_both_filters_do(
    request_: DescribeRequest, model: str, tasks: tuple[str, ...], expected: bool
) -> None:
    assert request_.matches(_record(model, tasks)) is expected


# Fitting records into one reply


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 70_000), max_size=40),
    st.integers(30, 300_000),
    st.integers(0, 40),
)
def test_fit_takes_the_longest_prefix_that_fits(sizes: list[int], frame: int, most: int) -> None:
    envelopes = [bytes(n) for n in sizes]
    limits = DescribeLimits(max_frame_size=frame, max_records=most)
    reply, left_out = fit_records_reply(envelopes, limits)
    count = len(reply.records)
    assert reply.records == tuple(envelopes[:count]) and left_out == len(envelopes) - count
    assert len(encode_describe_message(reply, limits)) <= frame + 9
    if count < len(envelopes) and count < most:
        with pytest.raises(PayloadTooLargeError):
            encode_describe_message(RecordsReply(tuple(envelopes[: count + 1])), limits)


@settings(max_examples=100)
@given(st.lists(st.integers(0, 70_000), max_size=20) | st.just([1] * 16) | st.just([0] * 15))
def test_reply_size_is_the_encoded_size(sizes: list[int]) -> None:
    body = msgpack.packb(
        {"v": 1, "type": "records", "records": [bytes(n) for n in sizes]}, use_bin_type=True
    )
    assert records_reply_size(sizes) == len(body)


# Properties


filters = st.lists(st.text(max_size=20), max_size=5).map(tuple)


@settings(max_examples=100)
@given(
    st.one_of(
        st.builds(DescribeRequest, filters, filters),
        st.builds(RecordsReply, st.lists(st.binary(max_size=300), max_size=20).map(tuple)),
        st.builds(DescribeErrorReply, st.text(max_size=30), st.text(max_size=200)),
    ),
    st.sampled_from([0, 1, 13]),
)
def test_round_trip(message: DescribeMessage, step: int) -> None:
    try:
        frame = encode_describe_message(message)
    except ValueError:
        return  # text with a lone surrogate is not UTF-8: refused before sending
    assert _read_all(frame, step=step) == [message]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    reader = DescribeReader(DescribeLimits(max_frame_size=200, max_records=4, max_filters=4))
    try:
        reader.receive_data(data)
        while reader.next_message() is not None:
            pass
    except (RemoteProtocolError, PayloadTooLargeError):
        pass


@settings(max_examples=300)
@given(st.sampled_from(VECTORS), st.data())
def test_corrupted_byte_never_crashes(vector: Any, data: st.DataObject) -> None:
    raw = bytearray.fromhex(vector[3])
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    reader = DescribeReader()
    try:
        reader.receive_data(bytes(raw))
        reader.next_message()
    except (RemoteProtocolError, PayloadTooLargeError):
        pass


@settings(max_examples=100)
@given(st.sampled_from(VECTORS), st.data())
def test_truncated_message_waits_and_is_not_at_a_boundary(vector: Any, data: st.DataObject) -> None:
    raw = bytes.fromhex(vector[3])
    cut = data.draw(st.integers(1, len(raw) - 1))
    reader = DescribeReader()
    reader.receive_data(raw[:cut])
    assert reader.next_message() is None
    assert not reader.at_message_boundary
