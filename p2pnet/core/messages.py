"""The invoke protocol's messages and their framing, with no I/O (docs/protocol.md).

A message is a head frame, then zero or more data frames:

    frame = uvarint(body length) | body           body length in 1..max_frame_size
    head  = msgpack map (see Invoke, Result, ErrorReply)
    data  = raw bytes of the streamed tensors (ext 2 in the head), concatenated in
            the order they appear in the head, split into frames of any size

``encode_message`` turns a message into frames; ``MessageReader`` turns bytes,
fed in pieces of any size, back into messages. Both enforce ``WireLimits``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack
import numpy as np
import numpy.typing as npt

from p2pnet.core.generation import (
    FINISH_REASONS,
    FinishReason,
    GenerationParams,
    GenerationSummary,
    Prompt,
)
from p2pnet.core.tensor import (
    STREAMED_TENSOR_EXT,
    TENSOR_EXT,
    decode_inline_tensor,
    decode_tensor_header,
    encode_inline_tensor,
    encode_tensor_header,
    normalize_array,
)
from p2pnet.core.text import quote_bounded
from p2pnet.core.varint import encode_uvarint, try_decode_uvarint
from p2pnet.errors import InvalidInputError, PayloadTooLargeError, RemoteProtocolError

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_SIGNED_BLOB_BYTES",
    "PROTOCOL_VERSION",
    "Cancel",
    "Chunk",
    "CloseSession",
    "Done",
    "EncodedMessage",
    "ErrorReply",
    "Forward",
    "ForwardResult",
    "Generate",
    "Hop",
    "Invoke",
    "Message",
    "MessageReader",
    "Result",
    "TraceEntry",
    "WireLimits",
    "encode_message",
    "generation_tensors",
]

PROTOCOL_VERSION: Final = 1
MAX_ID: Final = (1 << 64) - 1
MAX_HOPS: Final = 16
# A signed usage receipt or acknowledgement in a head: a few hundred bytes when well formed.
MAX_SIGNED_BLOB_BYTES: Final = 2048
MAX_HOP_PROVIDERS: Final = 8
MAX_HOP_ADDRS: Final = 16
# msgpack's C decoder refuses deeper nesting with StackError (its fixed stack).
MSGPACK_MAX_DEPTH: Final = 1024
# The text of a generation prompt, all messages or fields together: tokenizing it runs
# on the serving peer, so it is bounded well below the frame size.
MAX_PROMPT_CHARS: Final = 256 << 10
MAX_SESSION_ID_CHARS: Final = 64
Tensors = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Sizes one side accepts and produces.

    max_frame_size: largest frame body, head or data.
    max_message_size: largest message, head plus streamed tensor data.
    inline_tensor_bytes: numeric tensors up to this size travel inside the head; larger
        ones stream in data frames of ``chunk_size`` bytes.

    What a received head may make this side build, checked while it is decoded, so
    that a small head cannot cost much more memory or time than its own bytes:

    max_tensors: tensor extensions in one head.
    max_string_elements: string tensor elements in one head, all tensors together
        (each becomes a Python str, decoded one by one).
    max_collection_len: entries of any one msgpack array or map in a head.
    max_head_entries: arrays and maps of a head and their entries, all together.

    Entries are counted as each array or map is completed, so what a head can make
    this side build before it is refused is about max_head_entries plus
    max_collection_len per nesting level (msgpack nests at most 1024 deep).
    """

    max_frame_size: int = 4 << 20
    max_message_size: int = 256 << 20
    inline_tensor_bytes: int = 64 << 10
    chunk_size: int = 1 << 20
    max_tensors: int = 256
    max_string_elements: int = 1 << 16
    max_collection_len: int = 256
    max_head_entries: int = 1 << 16

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= self.max_frame_size:
            raise ValueError("chunk_size must be in 1..max_frame_size")
        if not 0 <= self.inline_tensor_bytes < self.max_frame_size:
            raise ValueError("inline_tensor_bytes must be below max_frame_size")
        if min(self.max_tensors, self.max_collection_len, self.max_head_entries) < 1:
            raise ValueError("max_tensors, max_collection_len, max_head_entries must be positive")
        if self.max_string_elements < 0:
            raise ValueError("max_string_elements must not be negative")


@dataclass(frozen=True, slots=True)
class Invoke:
    """Request: run ``model_id`` on ``inputs`` within ``deadline_ms`` of receipt.

    ``ack``: the caller's signed acknowledgement of what it owes this provider (usage
    receipts, docs/protocol.md), when one is due; None otherwise.
    """

    request_id: int
    model_id: str
    inputs: Tensors
    deadline_ms: int
    ack: bytes | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """Successful reply to the Invoke with the same request_id.

    ``receipt``: the provider's signed usage receipt for this call (docs/protocol.md),
    or None from a provider that does not issue them. ``settle``: the caller owes the
    provider more than its soft threshold, and is asked to acknowledge what it owes
    with its next call.
    """

    request_id: int
    outputs: Tensors
    receipt: bytes | None = None
    settle: bool = False


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Failed reply: a stable code (p2pnet.errors) and a message for a person."""

    request_id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a forwarded pipeline: run ``model_id`` on the first of ``providers``
    (peer ID, multiaddrs) that answers, feeding model input -> tensor name from
    ``inputs``; then keep only the tensors named in ``keep`` (the step's outputs are
    named ``<step>.<output>``)."""

    step: str
    model_id: str
    providers: tuple[tuple[str, tuple[str, ...]], ...]
    inputs: Mapping[str, str]
    keep: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """Request: run ``hops[0]`` here, then forward the rest to the next hop's peer and
    reply with what the last hop kept (docs/pipelines.md)."""

    request_id: int
    hops: tuple[Hop, ...]
    tensors: Tensors
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """Which peer ran which model for a step of a forwarded pipeline, and how long the
    run took there (as that peer reports it)."""

    step: str
    model_id: str
    peer_id: str
    run_ms: float


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """Successful reply to a Forward: the tensors the last hop kept, and one trace entry
    per hop in order.

    ``receipts``: the usage receipts of the hops, first hop first, each issued to the
    peer that forwarded to it (the first to the caller); empty from peers without
    ledgers.
    """

    request_id: int
    outputs: Tensors
    trace: tuple[TraceEntry, ...]
    receipts: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Generate:
    """Request: continue ``prompt`` with ``model_id`` under ``params``, streaming the
    reply as Chunk messages and ending with Done (or ErrorReply), all within
    ``deadline_ms`` of receipt.

    ``session``: a session this caller opened on the peer, whose cache already holds the
    conversation (``prompt`` is the new turns). ``keep``: keep this conversation's cache
    in a new session, whose ID Done carries. ``ack``: as Invoke's.
    """

    request_id: int
    model_id: str
    prompt: Prompt
    params: GenerationParams
    deadline_ms: int
    session: str | None = None
    keep: bool = False
    ack: bytes | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a streamed reply: its text (may be empty while a character or a
    possible stop string is incomplete) and the token IDs that produced it."""

    request_id: int
    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Done:
    """The end of a streamed reply: how it ended and its totals (GenerationSummary);
    ``receipt`` and ``settle`` as Result's, the receipt committing to
    ``generation_tensors`` of the request and the reply's tokens."""

    request_id: int
    summary: GenerationSummary
    receipt: bytes | None = None
    settle: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """Sent by the caller during a Generate with the same ID: stop the generation. The
    peer stops within one token and ends with Done, finish "cancelled"; a Cancel that
    arrives after Done is ignored."""

    request_id: int


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Request: drop the caller's session ``session`` of ``model_id``; the reply is Done
    with finish "closed", or ErrorReply unknown_session."""

    request_id: int
    model_id: str
    session: str


Message = (
    Invoke
    | Result
    | ErrorReply
    | Forward
    | ForwardResult
    | Generate
    | Chunk
    | Done
    | Cancel
    | CloseSession
)


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message ready to send: the head frame, then data frames on demand."""

    head_frame: bytes
    streamed: tuple[npt.NDArray[Any], ...]
    chunk_size: int
    size: int = field(default=0)

    def frames(self) -> Iterator[bytes]:
        """Frames in order, each with its length prefix."""
        yield self.head_frame
        for arr in self.streamed:
            data = arr.reshape(-1).view(np.uint8).data
            for start in range(0, len(data), self.chunk_size):
                chunk = data[start : start + self.chunk_size]
                yield encode_uvarint(len(chunk)) + chunk


def encode_message(message: Message, limits: WireLimits = WireLimits()) -> EncodedMessage:
    """Encode ``message`` into frames, checking every limit before anything is sent.

    Raises:
        InvalidInputError: a tensor p2pnet cannot send (dtype, rank); prompt tokens or a
            session ID the receiver would refuse.
        PayloadTooLargeError: the head or the whole message is over ``limits``; a prompt
            over MAX_PROMPT_CHARS.
    """
    streamed: list[npt.NDArray[Any]] = []
    head: dict[str, Any] = {"v": PROTOCOL_VERSION}
    if isinstance(message, Invoke):
        head |= {
            "type": "invoke",
            "id": message.request_id,
            "model": message.model_id,
            "deadline_ms": message.deadline_ms,
            "inputs": _encode_tensors(message.inputs, limits, streamed),
        }
        if message.ack is not None:
            head["ack"] = _signed_blob("ack", message.ack)
    elif isinstance(message, Result):
        head |= {
            "type": "result",
            "id": message.request_id,
            "outputs": _encode_tensors(message.outputs, limits, streamed),
        }
        if message.receipt is not None:
            head["receipt"] = _signed_blob("receipt", message.receipt)
        if message.settle:
            head["settle"] = True
    elif isinstance(message, Forward):
        head |= {
            "type": "forward",
            "id": message.request_id,
            "deadline_ms": message.deadline_ms,
            "hops": [
                {
                    "step": h.step,
                    "model": h.model_id,
                    "providers": [[peer, list(addrs)] for peer, addrs in h.providers],
                    "inputs": dict(h.inputs),
                    "keep": list(h.keep),
                }
                for h in message.hops
            ],
            "tensors": _encode_tensors(message.tensors, limits, streamed),
        }
    elif isinstance(message, ForwardResult):
        head |= {
            "type": "forward_result",
            "id": message.request_id,
            "outputs": _encode_tensors(message.outputs, limits, streamed),
            "trace": [[t.step, t.model_id, t.peer_id, t.run_ms] for t in message.trace],
        }
        if message.receipts:
            if len(message.receipts) > MAX_HOPS:
                raise PayloadTooLargeError(f"at most {MAX_HOPS} receipts travel in a result")
            head["receipts"] = [_signed_blob("receipt", r) for r in message.receipts]
    elif isinstance(message, Generate | Chunk | Done | Cancel | CloseSession):
        head |= _encode_generation(message)
    else:
        head |= {
            "type": "error",
            "id": message.request_id,
            "code": message.code,
            "message": message.message,
        }
    body = msgpack.packb(head, use_bin_type=True)
    if len(body) > limits.max_frame_size:
        raise PayloadTooLargeError(
            f"message head is {len(body)} bytes; the frame limit is {limits.max_frame_size} "
            "(string tensors and many small tensors travel in the head)"
        )
    size = len(body) + sum(arr.nbytes for arr in streamed)
    if size > limits.max_message_size:
        raise PayloadTooLargeError(
            f"message is {size} bytes; the limit is {limits.max_message_size} bytes"
        )
    return EncodedMessage(
        encode_uvarint(len(body)) + body, tuple(streamed), limits.chunk_size, size
    )


def _encode_tensors(
    tensors: Tensors, limits: WireLimits, streamed: list[npt.NDArray[Any]]
) -> dict[str, msgpack.ExtType]:
    out: dict[str, msgpack.ExtType] = {}
    for name, value in tensors.items():
        arr = normalize_array(name, value)
        if arr.dtype.kind == "O" or arr.nbytes <= limits.inline_tensor_bytes:
            out[name] = msgpack.ExtType(TENSOR_EXT, encode_inline_tensor(arr))
        else:
            out[name] = msgpack.ExtType(STREAMED_TENSOR_EXT, encode_tensor_header(arr))
            streamed.append(arr)
    return out


class MessageReader:
    """Bytes in, messages out: the receiving half of the invoke protocol.

    Feed bytes with ``receive_data`` in pieces of any size; ``next_message`` returns
    each complete message once, or None when it needs more bytes. After an error the
    reader is unusable: the stream must be closed, since framing is lost.
    """

    def __init__(self, limits: WireLimits = WireLimits()) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pending: Message | None = None
        # Streamed tensor buffers still to fill: byte views, and progress in the current one.
        self._targets: list[memoryview] = []
        self._target_offset = 0
        self._frame_left = 0  # data bytes still owed by the current data frame
        self._message_bytes = 0

    @property
    def at_message_boundary(self) -> bool:
        """True when no part of a message is buffered (so end of stream here is clean)."""
        return not self._buf and self._pending is None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._frame_left and not self._buf:
            # Fast path: the bytes belong to a data frame; copy them straight into place.
            data = memoryview(data)
            taken = self._fill_targets(data[: self._frame_left])
            self._frame_left -= taken
            data = data[taken:]
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: malformed bytes, unknown message type or version.
            PayloadTooLargeError: a frame or message over the limits.
        """
        while True:
            if self._pending is None:
                body = self._take_frame()
                if body is None:
                    return None
                self._message_bytes = len(body)
                message = self._decode_head(body)
                if not self._targets:
                    return message
                self._pending = message
                continue
            if self._frame_left:
                taken = self._fill_targets(memoryview(self._buf)[: self._frame_left])
                del self._buf[:taken]
                self._frame_left -= taken
                if self._frame_left:
                    return None
            if not self._targets:
                message, self._pending = self._pending, None
                return message
            length = self._take_frame_length()
            if length is None:
                return None
            remaining = sum(len(t) for t in self._targets) - self._target_offset
            if length > remaining:
                raise RemoteProtocolError(
                    f"data frame of {length} bytes, but only {remaining} tensor bytes remain"
                )
            self._frame_left = length

    def _fill_targets(self, data: memoryview) -> int:
        taken = 0
        while taken < len(data) and self._targets:
            target = self._targets[0]
            n = min(len(target) - self._target_offset, len(data) - taken)
            target[self._target_offset : self._target_offset + n] = data[taken : taken + n]
            taken += n
            self._target_offset += n
            if self._target_offset == len(target):
                self._targets.pop(0)
                self._target_offset = 0
        return taken

    def _frame_length(self) -> tuple[int, int] | None:
        """(body length, prefix length) of the frame at the buffer's start, or None."""
        parsed = try_decode_uvarint(self._buf)
        if parsed is None:
            return None
        length, prefix = parsed
        if length == 0:
            raise RemoteProtocolError("empty frame")
        if length > self._limits.max_frame_size:
            raise PayloadTooLargeError(
                f"frame of {length} bytes; this side accepts at most "
                f"{self._limits.max_frame_size} bytes per frame"
            )
        return length, prefix

    def _take_frame_length(self) -> int | None:
        parsed = self._frame_length()
        if parsed is None:
            return None
        length, prefix = parsed
        del self._buf[:prefix]
        return length

    def _take_frame(self) -> bytes | None:
        parsed = self._frame_length()
        if parsed is None or len(self._buf) < sum(parsed):
            return None
        length, prefix = parsed
        body = bytes(self._buf[prefix : prefix + length])
        del self._buf[: prefix + length]
        return body

    @property
    def ready_head_size(self) -> int:
        """Byte length of a complete head frame that the next ``next_message`` call will
        decode, or 0: lets a caller decode large heads off its event loop."""
        if self._pending is not None or self._frame_left:
            return 0
        try:
            parsed = self._frame_length()
        except (RemoteProtocolError, PayloadTooLargeError):
            return 0  # next_message raises it at once
        if parsed is None or len(self._buf) < sum(parsed):
            return 0
        return parsed[0]

    def _decode_head(self, body: bytes) -> Message:
        limits = self._limits
        streamed: list[npt.NDArray[Any]] = []
        tensors = 0
        string_elements = 0
        entries = 0

        def count_entries(collection: Any) -> Any:
            nonlocal entries
            entries += 1 + len(collection)
            if entries > limits.max_head_entries:
                raise PayloadTooLargeError(
                    f"message head has over {limits.max_head_entries} array and map entries; "
                    "this side accepts at most that many"
                )
            return collection

        def ext_hook(code: int, payload: bytes) -> Any:
            nonlocal tensors, string_elements
            tensors += 1
            if tensors > limits.max_tensors:
                raise PayloadTooLargeError(
                    f"message head has over {limits.max_tensors} tensors; this side accepts "
                    "at most that many"
                )
            if code == TENSOR_EXT:
                tensor = decode_inline_tensor(
                    payload,
                    limits.max_message_size,
                    max_string_elements=limits.max_string_elements - string_elements,
                )
                if tensor.dtype.kind == "O":
                    string_elements += tensor.size
                return tensor
            if code == STREAMED_TENSOR_EXT:
                header, end = decode_tensor_header(payload, self._limits.max_message_size)
                if end != len(payload):
                    raise RemoteProtocolError("streamed tensor header has trailing bytes")
                if header.is_string:
                    raise RemoteProtocolError("string tensors cannot be streamed")
                self._message_bytes += header.nbytes
                if self._message_bytes > self._limits.max_message_size:
                    raise PayloadTooLargeError(
                        f"message declares over {self._limits.max_message_size} bytes of "
                        "tensor data, more than this side accepts"
                    )
                arr = np.empty(header.shape, dtype=header.dtype)
                streamed.append(arr)
                return arr
            raise RemoteProtocolError(f"unknown msgpack extension type {code}")

        try:
            head = msgpack.unpackb(
                body,
                ext_hook=ext_hook,
                list_hook=count_entries,
                object_hook=count_entries,
                raw=False,
                strict_map_key=True,
                max_array_len=limits.max_collection_len,
                max_map_len=limits.max_collection_len,
            )
        except (RemoteProtocolError, PayloadTooLargeError):
            raise
        except msgpack.StackError:
            raise RemoteProtocolError(
                f"message head is nested deeper than {MSGPACK_MAX_DEPTH} levels"
            ) from None
        except ValueError as exc:
            if "exceeds max_" in str(exc):  # msgpack's max_array_len, max_map_len
                raise PayloadTooLargeError(
                    f"message head refused: {exc}; this side accepts at most "
                    f"{limits.max_collection_len} entries per array or map"
                ) from None
            raise RemoteProtocolError(f"message head is not valid msgpack: {exc}") from None
        except Exception as exc:  # msgpack raises many types for malformed input
            raise RemoteProtocolError(
                f"message head is not valid msgpack: {exc or type(exc).__name__}"
            ) from None
        kind = head.get("type") if isinstance(head, dict) else None
        if streamed and isinstance(kind, str) and kind in _GENERATION_TYPES:
            # Generation messages carry no tensor map: refused before decoding reads the
            # buffer of a streamed prompt (uninitialised, up to max_message_size bytes).
            raise RemoteProtocolError("streamed tensor outside the message's tensor map")
        message = _message_from_head(head)
        carried: Tensors = (
            message.inputs
            if isinstance(message, Invoke)
            else message.outputs
            if isinstance(message, Result | ForwardResult)
            else message.tensors
            if isinstance(message, Forward)
            else {}
        )
        carried_ids = {id(t) for t in carried.values()}
        if any(id(arr) not in carried_ids for arr in streamed):
            raise RemoteProtocolError("streamed tensor outside the message's tensor map")
        self._targets = [arr.reshape(-1).view(np.uint8).data for arr in streamed if arr.size]
        self._target_offset = 0
        return message


def _message_from_head(head: object) -> Message:
    if not isinstance(head, dict):
        raise RemoteProtocolError(f"message head is a {type(head).__name__}, not a map")
    version = head.get("v")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"message version {quote_bounded(version)} is not supported "
            f"(this side speaks {PROTOCOL_VERSION})"
        )
    kind = head.get("type")
    request_id = _field(head, "id", int)
    if not 0 <= request_id <= MAX_ID:
        raise RemoteProtocolError(f"request id {request_id} is out of range")
    if kind == "invoke":
        deadline_ms = _field(head, "deadline_ms", int)
        if deadline_ms <= 0:
            raise RemoteProtocolError(f"deadline_ms must be positive, got {deadline_ms}")
        return Invoke(
            request_id,
            _field(head, "model", str),
            _tensor_map(head, "inputs"),
            deadline_ms,
            _optional_blob(head, "ack"),
        )
    if kind == "result":
        settle = head.get("settle", False)
        if type(settle) is not bool:
            raise RemoteProtocolError(
                f"field 'settle' must be a boolean, got {type(settle).__name__}"
            )
        return Result(
            request_id, _tensor_map(head, "outputs"), _optional_blob(head, "receipt"), settle
        )
    if kind == "error":
        return ErrorReply(request_id, _field(head, "code", str), _field(head, "message", str))
    if kind == "forward":
        deadline_ms = _field(head, "deadline_ms", int)
        if deadline_ms <= 0:
            raise RemoteProtocolError(f"deadline_ms must be positive, got {deadline_ms}")
        hops = _field(head, "hops", list)
        if not 1 <= len(hops) <= MAX_HOPS:
            raise RemoteProtocolError(f"a forward carries 1..{MAX_HOPS} hops, got {len(hops)}")
        return Forward(
            request_id, tuple(_hop(h) for h in hops), _tensor_map(head, "tensors"), deadline_ms
        )
    if kind == "forward_result":
        trace = _field(head, "trace", list)
        if len(trace) > MAX_HOPS:
            raise RemoteProtocolError(f"a trace has at most {MAX_HOPS} entries")
        return ForwardResult(
            request_id,
            _tensor_map(head, "outputs"),
            tuple(_trace_entry(t) for t in trace),
            _receipt_list(head),
        )
    if isinstance(kind, str) and kind in _GENERATION_TYPES:
        return _decode_generation(kind, request_id, head)
    raise RemoteProtocolError(f"unknown message type {quote_bounded(kind)}")


_GENERATION_TYPES: Final = frozenset({"generate", "chunk", "done", "cancel", "close_session"})
_MAX_TOKEN_ID: Final = (1 << 63) - 1  # prompt tokens travel as int64
_PARAM_KEYS: Final = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop")


def _encode_generation(message: Generate | Chunk | Done | Cancel | CloseSession) -> dict[str, Any]:
    if isinstance(message, Generate):
        prompt = message.prompt
        # What the receiver refuses (the whole stream with it), refused before sending.
        if prompt.messages is not None:
            _check_prompt_chars(sum(len(content) for _, content in prompt.messages))
            body: Any = [[role, content] for role, content in prompt.messages]
        elif prompt.tokens is not None:
            if not all(type(t) is int and 0 <= t <= _MAX_TOKEN_ID for t in prompt.tokens):
                raise InvalidInputError("prompt tokens must be token IDs (0..2**63-1)")
            body = msgpack.ExtType(
                TENSOR_EXT, encode_inline_tensor(np.asarray(prompt.tokens, dtype=np.int64))
            )
        elif prompt.fields is not None:
            _check_prompt_chars(sum(len(value) for value in prompt.fields.values()))
            body = dict(prompt.fields)
        else:
            _check_prompt_chars(len(prompt.text or ""))
            body = prompt.text
        if message.session is not None and not 0 < len(message.session) <= MAX_SESSION_ID_CHARS:
            raise InvalidInputError(f"a session ID is 1..{MAX_SESSION_ID_CHARS} characters")
        params = message.params
        head: dict[str, Any] = {
            "type": "generate",
            "id": message.request_id,
            "model": message.model_id,
            "deadline_ms": message.deadline_ms,
            "prompt": {prompt.kind: body},
            "params": {
                "max_tokens": params.max_tokens,
                "temperature": float(params.temperature),
                "top_k": params.top_k,
                "top_p": float(params.top_p),
                "seed": params.seed,
                "stop": list(params.stop),
            },
        }
        if message.session is not None:
            head["session"] = message.session
        if message.keep:
            head["keep"] = True
        if message.ack is not None:
            head["ack"] = _signed_blob("ack", message.ack)
        return head
    if isinstance(message, Chunk):
        return {
            "type": "chunk",
            "id": message.request_id,
            "text": message.text,
            "tokens": list(message.tokens),
        }
    if isinstance(message, Done):
        summary = message.summary
        head = {
            "type": "done",
            "id": message.request_id,
            "finish": summary.finish,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "cached_tokens": summary.cached_tokens,
        }
        if summary.session is not None:
            head["session"] = summary.session
        if message.receipt is not None:
            head["receipt"] = _signed_blob("receipt", message.receipt)
        if message.settle:
            head["settle"] = True
        return head
    if isinstance(message, Cancel):
        return {"type": "cancel", "id": message.request_id}
    return {
        "type": "close_session",
        "id": message.request_id,
        "model": message.model_id,
        "session": message.session,
    }


def _decode_generation(kind: str, request_id: int, head: dict[str, Any]) -> Message:
    if kind == "cancel":
        return Cancel(request_id)
    if kind == "close_session":
        return CloseSession(
            request_id, _field(head, "model", str), _session_id(head.get("session"))
        )
    if kind == "chunk":
        tokens = _field(head, "tokens", list)
        if not all(type(t) is int and 0 <= t <= MAX_ID for t in tokens):
            raise RemoteProtocolError("chunk tokens must be unsigned integers")
        return Chunk(request_id, _field(head, "text", str), tuple(tokens))
    if kind == "done":
        finish = _field(head, "finish", str)
        if finish not in FINISH_REASONS:
            raise RemoteProtocolError(f"unknown finish reason {quote_bounded(finish)}")
        prompt, completion, cached = (
            _field(head, k, int) for k in ("prompt_tokens", "completion_tokens", "cached_tokens")
        )
        if any(not 0 <= c <= MAX_ID for c in (prompt, completion, cached)):
            raise RemoteProtocolError("token counts must be unsigned integers")
        session = head.get("session")
        settle = head.get("settle", False)
        if type(settle) is not bool:
            raise RemoteProtocolError(
                f"field 'settle' must be a boolean, got {type(settle).__name__}"
            )
        return Done(
            request_id,
            GenerationSummary(
                cast(FinishReason, finish),
                prompt,
                completion,
                cached,
                None if session is None else _session_id(session),
            ),
            _optional_blob(head, "receipt"),
            settle,
        )
    deadline_ms = _field(head, "deadline_ms", int)
    if deadline_ms <= 0:
        raise RemoteProtocolError(f"deadline_ms must be positive, got {deadline_ms}")
    keep = head.get("keep", False)
    if type(keep) is not bool:
        raise RemoteProtocolError(f"field 'keep' must be a boolean, got {type(keep).__name__}")
    session = head.get("session")
    try:
        return Generate(
            request_id,
            _field(head, "model", str),
            _prompt(_field(head, "prompt", dict)),
            _params(_field(head, "params", dict)),
            deadline_ms,
            None if session is None else _session_id(session),
            keep,
            _optional_blob(head, "ack"),
        )
    except InvalidInputError as exc:
        # A conforming caller checks these before sending (GenerationParams, Prompt).
        raise RemoteProtocolError(f"generate request refused: {exc.message}") from None


def generation_tensors(
    request: Generate, tokens: Sequence[int]
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    """What a generation's usage receipt commits to, as (inputs, outputs) tensors that
    caller and provider compute alike: ``generate``, the msgpack bytes of the request's
    ``[prompt, params, session, keep]`` as encoded (uint8), and ``tokens``, every token
    of the reply in order (int64)."""
    head = _encode_generation(request)
    request_bytes = msgpack.packb(
        [head["prompt"], head["params"], request.session, request.keep], use_bin_type=True
    )
    return (
        {"generate": np.frombuffer(request_bytes, dtype=np.uint8)},
        {"tokens": np.asarray(list(tokens), dtype=np.int64)},
    )


def _session_id(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID_CHARS:
        raise RemoteProtocolError(f"a session ID is 1..{MAX_SESSION_ID_CHARS} characters")
    return value


def _prompt(raw: dict[str, Any]) -> Prompt:
    if len(raw) != 1:
        raise RemoteProtocolError("prompt must be a map of exactly one entry")
    ((kind, body),) = raw.items()
    if kind == "text":
        if not isinstance(body, str):
            raise RemoteProtocolError("prompt text must be a string")
        _check_prompt_chars(len(body))
        return Prompt(text=body)
    if kind == "messages":
        if not isinstance(body, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in body
        ):
            raise RemoteProtocolError("prompt messages must be [[role, content], ...] of text")
        _check_prompt_chars(sum(len(c) for _, c in body))
        return Prompt(messages=tuple((role, content) for role, content in body))
    if kind == "fields":
        if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in body.items()
        ):
            raise RemoteProtocolError("prompt fields must map text to text")
        _check_prompt_chars(sum(len(v) for v in body.values()))
        return Prompt(fields=dict(body))
    if kind == "tokens":
        if (
            not isinstance(body, np.ndarray)
            or body.ndim != 1
            or body.dtype.kind not in "iu"
            or (body.size and int(body.min()) < 0)
        ):
            raise RemoteProtocolError("prompt tokens must be a 1-D tensor of token IDs")
        return Prompt(tokens=tuple(int(t) for t in body))
    raise RemoteProtocolError(f"unknown prompt kind {quote_bounded(kind)}")


def _check_prompt_chars(chars: int) -> None:
    if chars > MAX_PROMPT_CHARS:
        raise PayloadTooLargeError(
            f"prompt of {chars} characters; a generate request carries at most {MAX_PROMPT_CHARS}"
        )


def _params(raw: dict[str, Any]) -> GenerationParams:
    unknown = [k for k in raw if k not in _PARAM_KEYS]
    if unknown:
        raise RemoteProtocolError(f"unknown generation parameter {quote_bounded(unknown[0])}")
    stop = raw.get("stop", [])
    if not isinstance(stop, list):
        raise RemoteProtocolError("stop must be an array of text")
    values = {
        k: raw[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "seed") if k in raw
    }
    return GenerationParams(**values, stop=tuple(stop))


def _signed_blob(key: str, blob: bytes) -> bytes:
    """``blob`` for the head's ``key`` field, checked against MAX_SIGNED_BLOB_BYTES.

    Raises:
        PayloadTooLargeError: over the limit.
    """
    if len(blob) > MAX_SIGNED_BLOB_BYTES:
        raise PayloadTooLargeError(
            f"{key} is {len(blob)} bytes; at most {MAX_SIGNED_BLOB_BYTES} travel in a head"
        )
    return bytes(blob)


def _optional_blob(head: dict[str, Any], key: str) -> bytes | None:
    """The head's optional bin field ``key`` (a signed receipt or acknowledgement)."""
    if key not in head:
        return None
    blob = head[key]
    if type(blob) is not bytes:
        raise RemoteProtocolError(f"field {key!r} must be bin, got {type(blob).__name__}")
    if len(blob) > MAX_SIGNED_BLOB_BYTES:
        raise RemoteProtocolError(
            f"field {key!r} is {len(blob)} bytes; at most {MAX_SIGNED_BLOB_BYTES}"
        )
    return blob


def _receipt_list(head: dict[str, Any]) -> tuple[bytes, ...]:
    """A forward result's optional ``receipts``: at most MAX_HOPS signed receipts."""
    raw = head.get("receipts", [])
    if not isinstance(raw, list) or len(raw) > MAX_HOPS:
        raise RemoteProtocolError(f"receipts must be an array of at most {MAX_HOPS} bin")
    receipts = []
    for blob in raw:
        if type(blob) is not bytes or len(blob) > MAX_SIGNED_BLOB_BYTES:
            raise RemoteProtocolError(
                f"a receipt must be bin of at most {MAX_SIGNED_BLOB_BYTES} bytes"
            )
        receipts.append(blob)
    return tuple(receipts)


def _hop(raw: object) -> Hop:
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"a hop must be a map, got {type(raw).__name__}")
    providers = _field(raw, "providers", list)
    if not 1 <= len(providers) <= MAX_HOP_PROVIDERS:
        raise RemoteProtocolError(f"a hop names 1..{MAX_HOP_PROVIDERS} providers")
    parsed: list[tuple[str, tuple[str, ...]]] = []
    for p in providers:
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not isinstance(p[0], str)
            or not isinstance(p[1], list)
            or len(p[1]) > MAX_HOP_ADDRS
            or not all(isinstance(a, str) for a in p[1])
        ):
            raise RemoteProtocolError("a hop provider must be [peer ID, [multiaddr, ...]]")
        parsed.append((p[0], tuple(p[1])))
    inputs = _field(raw, "inputs", dict)
    keep = _field(raw, "keep", list)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
        raise RemoteProtocolError("hop inputs must map text to text")
    if not all(isinstance(k, str) for k in keep):
        raise RemoteProtocolError("hop keep must be a list of text")
    return Hop(
        _field(raw, "step", str), _field(raw, "model", str), tuple(parsed), inputs, tuple(keep)
    )


def _trace_entry(raw: object) -> TraceEntry:
    if (
        not isinstance(raw, list)
        or len(raw) != 4
        or not all(isinstance(x, str) for x in raw[:3])
        or not isinstance(raw[3], int | float)
        or isinstance(raw[3], bool)
    ):
        raise RemoteProtocolError("a trace entry must be [step, model, peer, run_ms]")
    return TraceEntry(raw[0], raw[1], raw[2], float(raw[3]))


def _field(head: dict[str, Any], key: str, kind: type) -> Any:
    value = head.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RemoteProtocolError(
            f"message field {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _tensor_map(head: dict[str, Any], key: str) -> dict[str, npt.NDArray[Any]]:
    value = _field(head, key, dict)
    for name, tensor in value.items():
        if not isinstance(tensor, np.ndarray):
            raise RemoteProtocolError(
                f"{key}[{quote_bounded(name)}] must be a tensor extension, "
                f"got {type(tensor).__name__}"
            )
    return cast(dict[str, npt.NDArray[Any]], value)
