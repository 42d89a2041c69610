"""Streamed generation on the invoke wire: generate, chunk, done, cancel and close_session
round trip through any split of the bytes, and what a receiver refuses (docs/protocol.md,
"Streamed generation")."""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_decoders import FUZZ  # scripts/fuzz.py, loaded once

from p2pnet.core.generation import (
    FINISH_REASONS,
    MAX_GENERATION_TOKENS,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    GenerationParams,
    GenerationSummary,
    Prompt,
)
from p2pnet.core.messages import (
    MAX_PROMPT_CHARS,
    MAX_SESSION_ID_CHARS,
    MAX_SIGNED_BLOB_BYTES,
    Cancel,
    Chunk,
    CloseSession,
    Done,
    Generate,
    Message,
    MessageReader,
    WireLimits,
    encode_message,
)
from p2pnet.core.tensor import TENSOR_EXT, encode_inline_tensor
from p2pnet.core.varint import decode_uvarint, encode_uvarint
from p2pnet.errors import InvalidInputError, PayloadTooLargeError, RemoteProtocolError

MODEL = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
WIRE_ERRORS = (RemoteProtocolError, PayloadTooLargeError)
# Generous for a loaded 2-core machine; the streamed-prompt head this guards against
# took ~4 s.
PER_INPUT_SECONDS = 0.5


# --- strategies -------------------------------------------------------------------------

request_ids = st.integers(0, (1 << 64) - 1)
session_ids = st.text(min_size=1, max_size=MAX_SESSION_ID_CHARS)
prompts = st.one_of(
    st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=40)),
        max_size=5,
    ).map(lambda turns: Prompt(messages=tuple(turns))),
    st.text(max_size=200).map(lambda text: Prompt(text=text)),
    st.lists(st.integers(0, (1 << 63) - 1), max_size=20).map(
        lambda tokens: Prompt(tokens=tuple(tokens))
    ),
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=40), max_size=4).map(
        lambda fields: Prompt(fields=fields)
    ),
)
params = st.builds(
    GenerationParams,
    max_tokens=st.integers(1, MAX_GENERATION_TOKENS),
    temperature=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
    top_k=st.integers(0, 1 << 20),
    top_p=st.floats(0.0, 1.0, exclude_min=True),
    seed=st.integers(0, (1 << 64) - 1),
    stop=st.lists(
        st.text(min_size=1, max_size=MAX_STOP_STRING_CHARS), max_size=MAX_STOP_STRINGS
    ).map(tuple),
)
generates = st.builds(
    Generate,
    request_ids,
    st.text(max_size=64),
    prompts,
    params,
    st.integers(1, 1 << 40),
    st.none() | session_ids,
    st.booleans(),
    st.none() | st.binary(max_size=MAX_SIGNED_BLOB_BYTES),
)
chunks = st.builds(
    Chunk,
    request_ids,
    st.text(max_size=100),
    st.lists(st.integers(0, (1 << 64) - 1), max_size=16).map(tuple),
)
dones = st.builds(
    Done,
    request_ids,
    st.builds(
        GenerationSummary,
        st.sampled_from(FINISH_REASONS),
        st.integers(0, (1 << 64) - 1),
        st.integers(0, (1 << 64) - 1),
        st.integers(0, (1 << 64) - 1),
        st.none() | session_ids,
    ),
    st.none() | st.binary(max_size=MAX_SIGNED_BLOB_BYTES),
    st.booleans(),
)
generation_messages = st.one_of(
    generates,
    chunks,
    dones,
    st.builds(Cancel, request_ids),
    st.builds(CloseSession, request_ids, st.text(max_size=64), session_ids),
)


def _encode(message: Message) -> bytes:
    return b"".join(encode_message(message).frames())


def _feed(data: bytes, cuts: list[int]) -> list[Message]:
    """Messages read from ``data`` given to a reader in pieces split at ``cuts``."""
    reader = MessageReader()
    out: list[Message] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        reader.receive_data(data[start:end])
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert reader.at_message_boundary
    return out


def _frame(head: object) -> bytes:
    body: bytes = msgpack.packb(head, use_bin_type=True)
    return encode_uvarint(len(body)) + body


def _read(data: bytes) -> Message | None:
    reader = MessageReader()
    reader.receive_data(data)
    return reader.next_message()


def _head(message: Message) -> dict[str, Any]:
    """The msgpack map of ``message``'s head frame, tensors left as ExtType."""
    data = _encode(message)
    length, start = decode_uvarint(data)
    head = msgpack.unpackb(data[start : start + length], raw=False)
    assert isinstance(head, dict)
    return head


# --- round trips -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(generation_messages, st.data())
def test_every_generation_message_round_trips_through_any_split(
    message: Message, data: st.DataObject
) -> None:
    raw = _encode(message)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    assert _feed(raw, cuts) == [message]


@settings(max_examples=50, deadline=None)
@given(st.lists(generation_messages, min_size=1, max_size=6), st.data())
def test_a_generation_exchange_reads_back_in_order_from_one_stream(
    messages: list[Message], data: st.DataObject
) -> None:
    raw = b"".join(_encode(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert _feed(raw, cuts) == messages


def test_temperature_and_top_p_travel_as_float64_even_when_whole() -> None:
    sent = Generate(1, MODEL, Prompt(text="x"), GenerationParams(temperature=1, top_p=1), 5)
    raw = _encode(sent)
    assert b"\xabtemperature\xcb\x3f\xf0" + bytes(6) in raw
    assert b"\xa5top_p\xcb\x3f\xf0" + bytes(6) in raw
    (got,) = _feed(raw, [])
    assert isinstance(got, Generate)
    assert type(got.params.temperature) is float and got.params.temperature == 1.0


def test_an_int_temperature_from_another_encoder_is_accepted() -> None:
    head = _head(Generate(1, MODEL, Prompt(text="x"), GenerationParams(), 5))
    head["params"] = {"temperature": 1, "top_p": 1}
    got = _read(_frame(head))
    assert isinstance(got, Generate) and got.params == GenerationParams(temperature=1.0)


def test_params_left_out_take_their_defaults() -> None:
    head = _head(Generate(1, MODEL, Prompt(text="x"), GenerationParams(max_tokens=9), 5))
    head["params"] = {}
    got = _read(_frame(head))
    assert isinstance(got, Generate) and got.params == GenerationParams()


def test_token_prompt_of_any_integer_dtype_is_accepted() -> None:
    head = _head(Generate(1, MODEL, Prompt(text="x"), GenerationParams(), 5))
    for dtype in (np.uint16, np.int32, np.uint64):
        tokens = np.array([3, 0, 65535], dtype=dtype)
        head["prompt"] = {"tokens": msgpack.ExtType(TENSOR_EXT, encode_inline_tensor(tokens))}
        got = _read(_frame(head))
        assert isinstance(got, Generate) and got.prompt == Prompt(tokens=(3, 0, 65535))


# --- mutated heads: only the wire's own errors ------------------------------------------


def _valid_generation_frames() -> list[bytes]:
    return [
        _encode(Generate(7, MODEL, Prompt(messages=(("user", "hé"),)), GenerationParams(), 5)),
        _encode(
            Generate(
                8,
                MODEL,
                Prompt(tokens=(1, 2, 3)),
                GenerationParams(temperature=0.5, top_p=0.9, stop=("\n",)),
                5,
                "s" * 32,
            )
        ),
        _encode(
            Generate(9, MODEL, Prompt(fields={"text": "x"}), GenerationParams(), 5, None, True)
        ),
        _encode(Chunk(7, "café", (1, 2))),
        _encode(Chunk(7, "", (3,))),
        _encode(Done(7, GenerationSummary("stop", 3, 4, 1, "s" * 32))),
        _encode(Done(7, GenerationSummary("length", 3, 4))),
    ]


VALID_FRAMES = _valid_generation_frames()


def _read_all(data: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(data)
    while reader.next_message() is not None:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID_FRAMES), st.integers(0, 1 << 32))
def test_mutated_generation_messages_raise_only_wire_errors(frame: bytes, seed: int) -> None:
    data = FUZZ.mutate(random.Random(seed), frame)
    started = time.perf_counter()
    try:
        _read_all(data)
    except WIRE_ERRORS:
        pass
    assert time.perf_counter() - started < PER_INPUT_SECONDS


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=24)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
GENERATE_KEYS = ["v", "type", "id", "model", "deadline_ms", "prompt", "params", "session", "keep"]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(VALID_FRAMES),
    st.sampled_from([None, "prompt", "params"]),
    st.text(max_size=12) | st.sampled_from([*GENERATE_KEYS, "messages", "tokens", "stop"]),
    msgpack_values,
)
def test_a_generation_head_with_any_value_in_any_field_raises_only_wire_errors(
    frame: bytes, inside: str | None, key: str, value: object
) -> None:
    length, start = decode_uvarint(frame)
    head = msgpack.unpackb(frame[start : start + length], raw=False)
    target = head
    if inside is not None and isinstance(head.get(inside), dict):
        target = head[inside]
    target[key] = value
    try:
        _read_all(_frame(head))
    except WIRE_ERRORS:
        pass


@pytest.mark.parametrize("kind", [["generate"], {"t": 1}, 1.5, None])
def test_a_message_type_that_is_not_text_is_a_protocol_error(kind: object) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        _read(_frame({"v": 1, "type": kind, "id": 1}))


def test_a_streamed_token_prompt_is_refused_before_its_buffer_is_read() -> None:
    head = _head(Generate(1, MODEL, Prompt(text="x"), GenerationParams(), 5))
    # int64, ndim 1, 31 Mi elements: just under the default max_message_size
    head["prompt"] = {
        "tokens": msgpack.ExtType(2, bytes((5, 1)) + (31 << 20).to_bytes(8, "little"))
    }
    started = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match="outside the message's tensor map"):
        _read(_frame(head))
    assert time.perf_counter() - started < PER_INPUT_SECONDS


# --- what a receiver refuses -------------------------------------------------------------

GENERATE = _head(Generate(3, MODEL, Prompt(text="hello"), GenerationParams(), 1000))


def _with(section: str | None, **changes: object) -> dict[str, Any]:
    head = dict(GENERATE)
    if section is None:
        head |= changes
    else:
        head[section] = dict(head[section]) | changes
    return head


def test_the_base_generate_head_is_accepted() -> None:
    # Each refusal below changes one thing of this head.
    assert isinstance(_read(_frame(GENERATE)), Generate)


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (_with("params", temperature=11.0), r"temperature must be in \[0, 10\]"),
        (_with("params", temperature=-0.5), r"temperature must be in \[0, 10\]"),
        (_with("params", temperature=float("nan")), "temperature"),
        (_with("params", top_p=0.0), r"top_p must be in \(0, 1\]"),
        (_with("params", top_p=1.5), r"top_p must be in \(0, 1\]"),
        (_with("params", max_tokens=0), r"max_tokens must be in 1\.\.4096"),
        (_with("params", max_tokens=MAX_GENERATION_TOKENS + 1), "max_tokens"),
        (_with("params", max_tokens=True), "max_tokens"),
        (_with("params", top_k=-1), "top_k"),
        (_with("params", top_k=(1 << 20) + 1), "top_k"),
        (_with("params", seed=-1), "seed"),
        (_with("params", stop=["s"] * (MAX_STOP_STRINGS + 1)), "at most 8 stop strings"),
        (_with("params", stop=["s" * (MAX_STOP_STRING_CHARS + 1)]), "a stop string must be"),
        (_with("params", stop=[""]), "a stop string must be"),
        (_with("params", stop=[7]), "a stop string must be"),
        (_with("params", stop="\n"), "stop must be an array of text"),
        (_with("params", top_n=3), "unknown generation parameter 'top_n'"),
        (_with(None, prompt={"image": "x"}), "unknown prompt kind 'image'"),
        (_with(None, prompt={"text": "x", "tokens": []}), "exactly one entry"),
        (_with(None, prompt={}), "exactly one entry"),
        (_with(None, prompt="hello"), "'prompt' must be dict"),
        (_with(None, prompt={"text": 5}), "prompt text must be a string"),
        (_with(None, prompt={"messages": [["bot", "x"]]}), "role must be one of"),
        (_with(None, prompt={"messages": [["user"]]}), r"\[\[role, content\], \.\.\.\]"),
        (_with(None, prompt={"fields": {"a": 1}}), "fields must map text to text"),
        (_with(None, prompt={"fields": {b"a": "x"}}), "fields must map text to text"),
        (_with(None, prompt={"tokens": [1, 2]}), "1-D tensor of token IDs"),
        (_with(None, session=""), "a session ID is 1..64 characters"),
        (_with(None, session="s" * (MAX_SESSION_ID_CHARS + 1)), "a session ID is 1..64"),
        (_with(None, keep=1), "'keep' must be a boolean"),
        (_with(None, deadline_ms=0), "deadline_ms must be positive"),
        (_with(None, params=[]), "'params' must be dict"),
    ],
)
def test_out_of_range_generate_fields_are_protocol_errors(head: object, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        _read(_frame(head))


def test_negative_token_ids_are_protocol_errors() -> None:
    for tokens in (np.array([1, -1]), np.array([[1, 2]]), np.array([1.0]), np.array([True])):
        head = _with(
            None, prompt={"tokens": msgpack.ExtType(TENSOR_EXT, encode_inline_tensor(tokens))}
        )
        with pytest.raises(RemoteProtocolError, match="1-D tensor of token IDs"):
            _read(_frame(head))


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (
            {"v": 1, "type": "done", "id": 1, "finish": "tired", "prompt_tokens": 1}
            | {"completion_tokens": 1, "cached_tokens": 0},
            "unknown finish reason 'tired'",
        ),
        (
            {"v": 1, "type": "done", "id": 1, "finish": "eos", "prompt_tokens": -1}
            | {"completion_tokens": 1, "cached_tokens": 0},
            "token counts",
        ),
        (
            {"v": 1, "type": "done", "id": 1, "finish": "eos", "prompt_tokens": 1}
            | {"completion_tokens": 1},
            "'cached_tokens' must be int",
        ),
        (
            {"v": 1, "type": "done", "id": 1, "finish": "eos", "prompt_tokens": 1}
            | {"completion_tokens": 1, "cached_tokens": 0, "session": "s" * 65},
            "a session ID",
        ),
        ({"v": 1, "type": "chunk", "id": 1, "text": "a", "tokens": [-1]}, "unsigned"),
        ({"v": 1, "type": "chunk", "id": 1, "text": "a", "tokens": [True]}, "unsigned"),
        ({"v": 1, "type": "chunk", "id": 1, "text": b"a", "tokens": []}, "'text' must be str"),
        ({"v": 1, "type": "chunk", "id": 1, "text": "a"}, "'tokens' must be list"),
        ({"v": 1, "type": "close_session", "id": 1, "model": MODEL}, "a session ID"),
        ({"v": 1, "type": "close_session", "id": 1, "session": "s"}, "'model' must be str"),
        ({"v": 1, "type": "cancel", "id": -1}, "out of range"),
    ],
)
def test_malformed_chunk_done_cancel_close_are_protocol_errors(head: object, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        _read(_frame(head))


# --- prompt size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        {"text": "x" * (MAX_PROMPT_CHARS + 1)},
        {
            "messages": [
                ["system", "x" * (MAX_PROMPT_CHARS // 2)],
                ["user", "y" * (MAX_PROMPT_CHARS // 2 + 1)],
            ]
        },
        {"fields": {"a": "x" * MAX_PROMPT_CHARS, "b": "y"}},
    ],
)
def test_a_prompt_over_max_prompt_chars_is_too_large(prompt: dict[str, Any]) -> None:
    with pytest.raises(PayloadTooLargeError, match=f"at most {MAX_PROMPT_CHARS}"):
        _read(_frame(_with(None, prompt=prompt)))


def test_a_prompt_of_max_prompt_chars_is_accepted() -> None:
    # Characters, not bytes: 2-byte characters up to the limit are fine.
    got = _read(_frame(_with(None, prompt={"text": "é" * MAX_PROMPT_CHARS})))
    assert isinstance(got, Generate) and got.prompt.text == "é" * MAX_PROMPT_CHARS


# --- the encoder refuses what the receiver would refuse ---------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        Prompt(text="x" * (MAX_PROMPT_CHARS + 1)),
        Prompt(messages=(("user", "x" * MAX_PROMPT_CHARS), ("assistant", "y"))),
        Prompt(fields={"a": "x" * MAX_PROMPT_CHARS, "b": "y"}),
    ],
)
def test_the_encoder_refuses_an_oversized_prompt(prompt: Prompt) -> None:
    with pytest.raises(PayloadTooLargeError, match="prompt of"):
        encode_message(Generate(1, MODEL, prompt, GenerationParams(), 5))
    encode_message(Generate(1, MODEL, Prompt(text="x" * MAX_PROMPT_CHARS), GenerationParams(), 5))


@pytest.mark.parametrize(
    ("prompt", "session"),
    [
        (Prompt(tokens=(1, -1)), None),
        (Prompt(tokens=(1 << 63,)), None),
        (Prompt(text="x"), ""),
        (Prompt(text="x"), "s" * (MAX_SESSION_ID_CHARS + 1)),
    ],
)
def test_the_encoder_refuses_tokens_and_sessions_the_receiver_would_refuse(
    prompt: Prompt, session: str | None
) -> None:
    with pytest.raises(InvalidInputError):
        encode_message(Generate(1, MODEL, prompt, GenerationParams(), 5, session))


def test_generation_messages_obey_the_frame_limit() -> None:
    small = WireLimits(max_frame_size=64, inline_tensor_bytes=8, chunk_size=8)
    with pytest.raises(PayloadTooLargeError, match="head is"):
        encode_message(Chunk(1, "x" * 100, ()), small)
    reader = MessageReader(small)
    reader.receive_data(_encode(Chunk(1, "x" * 100, ())))
    with pytest.raises(PayloadTooLargeError, match="frame of"):
        reader.next_message()
