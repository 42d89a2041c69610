"""The messages of ``/p2pnet/describe/1.0.0``, with no I/O (docs/protocol.md).

A caller asks a peer for its signed capability records; the peer answers with the
envelopes, which the caller verifies (p2pnet.core.records.verify_record) before use.

    frame   = uvarint(n) | body[n]           1 <= n <= max_frame_size (p2pnet.core.framing)
    body    = one msgpack map:
    request = {"v": 1, "type": "describe", "models": [str...], "tasks": [str...]}
    records = {"v": 1, "type": "records", "records": [bin...]}       signed envelopes
    error   = {"v": 1, "type": "error", "code": str, "message": str}

The filters select records: a record matches when ``models`` is empty or names its
model, and ``tasks`` is empty or shares a tag with it. ``encode_describe_message``
writes one frame; ``decode_describe_message`` reads one frame body;
``DescribeReader`` reads frames from bytes fed in pieces of any size.
``fit_records_reply`` picks the envelopes that fit one reply. All enforce
``DescribeLimits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from p2pnet.core.framing import FrameReader, encode_frame
from p2pnet.core.model_id import MAX_MODEL_ID_LENGTH
from p2pnet.core.records import MAX_TASK_LENGTH, CapabilityRecord
from p2pnet.errors import PayloadTooLargeError, RemoteProtocolError

__all__ = [
    "DEFAULT_DESCRIBE_LIMITS",
    "DESCRIBE_VERSION",
    "MAX_MODEL_FILTER_LENGTH",
    "DescribeErrorReply",
    "DescribeLimits",
    "DescribeMessage",
    "DescribeReader",
    "DescribeRequest",
    "RecordsReply",
    "decode_describe_message",
    "encode_describe_message",
    "fit_records_reply",
    "records_reply_size",
]

DESCRIBE_VERSION: Final = 1
# A model ID is 59 characters; longer text is refused before anything compares it, at
# the bound an invoke head's ``model`` has (Protocol 1.0: one bound for both).
MAX_MODEL_FILTER_LENGTH: Final = MAX_MODEL_ID_LENGTH
MIN_COLLECTION_LEN: Final = 64  # arrays and maps a describe message may hold, at least


@dataclass(frozen=True, slots=True)
class DescribeLimits:
    """Sizes one side accepts and produces.

    max_frame_size: largest message body (a records reply is one frame).
    max_records: most envelopes in one records reply.
    max_filters: most entries in each of a request's ``models`` and ``tasks``.
    """

    max_frame_size: int = 1 << 20
    max_records: int = 256
    max_filters: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.max_frame_size < 1 << 63:
            raise ValueError("max_frame_size must be in 1..2**63-1")
        if self.max_records < 0 or self.max_filters < 0:
            raise ValueError("max_records and max_filters must not be negative")


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """Ask for the records of ``models`` (model IDs) and ``tasks`` (tags); empty is all.

    Entries are compared exactly with a record's canonical ``model_id`` and ``tasks``:
    an entry that is not a canonical model ID or a task tag matches nothing.
    """

    models: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()

    def matches(self, record: CapabilityRecord) -> bool:
        """Whether ``record`` is one this request asks for."""
        if self.models and record.model_id not in self.models:
            return False
        return not self.tasks or any(tag in self.tasks for tag in record.tasks)


@dataclass(frozen=True, slots=True)
class RecordsReply:
    """The answer to a DescribeRequest: signed envelopes, still to be verified."""

    records: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DescribeErrorReply:
    """A failed request: a stable code (p2pnet.errors) and a message for a person."""

    code: str
    message: str


DEFAULT_DESCRIBE_LIMITS: Final = DescribeLimits()

DescribeMessage = DescribeRequest | RecordsReply | DescribeErrorReply


def encode_describe_message(
    message: DescribeMessage, limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS
) -> bytes:
    """``message`` as one frame, length prefix included, ready to write.

    Raises:
        PayloadTooLargeError: more filters or records than ``limits`` allow, or a body
            over ``limits.max_frame_size``.
        ValueError: a field of the wrong type, or a filter entry over its length.
    """
    head: dict[str, Any] = {"v": DESCRIBE_VERSION}
    if isinstance(message, DescribeRequest):
        _check_filters("models", message.models, MAX_MODEL_FILTER_LENGTH, limits, ValueError)
        _check_filters("tasks", message.tasks, MAX_TASK_LENGTH, limits, ValueError)
        head |= {"type": "describe", "models": list(message.models), "tasks": list(message.tasks)}
    elif isinstance(message, RecordsReply):
        _check_records(message.records, limits, ValueError)
        head |= {"type": "records", "records": list(message.records)}
    else:
        if not isinstance(message.code, str) or not isinstance(message.message, str):
            raise ValueError("an error reply's code and message must be str")
        head |= {"type": "error", "code": message.code, "message": message.message}
    try:
        body: bytes = msgpack.packb(head, use_bin_type=True)
    except UnicodeEncodeError:
        raise ValueError("describe message text is not valid Unicode") from None
    return encode_frame(body, limits.max_frame_size)


def decode_describe_message(
    body: bytes, limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS
) -> DescribeMessage:
    """The message in one frame ``body``; keys may come in any order, unknown keys are ignored.

    Raises:
        RemoteProtocolError: not msgpack, not a map, an unsupported version or unknown
            type, a missing field or one of the wrong type.
        PayloadTooLargeError: more filters or records than ``limits`` allow.
    """
    try:
        # Arrays hold at most max_records envelopes or max_filters filters (checked
        # below); one much longer is refused before msgpack builds it.
        longest = 2 * max(limits.max_records, limits.max_filters, MIN_COLLECTION_LEN)
        head = msgpack.unpackb(
            body,
            raw=False,
            use_list=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_array_len=longest,
            max_map_len=longest,
        )
    except RemoteProtocolError:
        raise
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # msgpack's max_array_len, max_map_len
            raise PayloadTooLargeError(
                f"describe message refused: {exc}; this side accepts at most {longest} "
                "entries per array or map"
            ) from None
        raise RemoteProtocolError(f"describe message is not valid msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises many types for malformed input
        raise RemoteProtocolError(f"describe message is not valid msgpack: {exc}") from None
    if not isinstance(head, dict):
        raise RemoteProtocolError(f"describe message is {_kind(head)}, not a map")
    version = head.get("v")
    if type(version) is not int or version != DESCRIBE_VERSION:
        raise RemoteProtocolError(
            f"describe message version {version!r:.40} is not supported "
            f"(this side speaks {DESCRIBE_VERSION})"
        )
    kind = head.get("type")
    if kind == "describe":
        models = head.get("models", ())
        tasks = head.get("tasks", ())
        _check_filters("models", models, MAX_MODEL_FILTER_LENGTH, limits, RemoteProtocolError)
        _check_filters("tasks", tasks, MAX_TASK_LENGTH, limits, RemoteProtocolError)
        return DescribeRequest(models, tasks)
    if kind == "records":
        if "records" not in head:
            raise RemoteProtocolError("records reply lacks its 'records' field")
        records = head["records"]
        _check_records(records, limits, RemoteProtocolError)
        return RecordsReply(records)
    if kind == "error":
        code, message = head.get("code"), head.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise RemoteProtocolError(
                f"error reply needs str 'code' and 'message', got {_kind(code)} and "
                f"{_kind(message)}"
            )
        return DescribeErrorReply(code, message)
    raise RemoteProtocolError(f"unknown describe message type {kind!r:.40}")


class DescribeReader:
    """Bytes in, describe messages out: the receiving half of a describe stream.

    Feed bytes with ``receive_data`` in pieces of any size; ``next_message`` returns
    each complete message once, or None when it needs more bytes. After an error the
    reader is unusable: the stream must be closed, since its framing is lost.
    """

    def __init__(self, limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS) -> None:
        self.limits = limits
        self._frames = FrameReader(limits.max_frame_size)

    @property
    def at_message_boundary(self) -> bool:
        """True when no part of a message is buffered (so end of stream here is clean)."""
        return self._frames.at_frame_boundary

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.receive_data(data)

    def next_message(self) -> DescribeMessage | None:
        """The next complete message, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: bad framing or a malformed message.
            PayloadTooLargeError: a frame, or a list in a message, over the limits.
        """
        body = self._frames.next_frame()
        if body is None:
            return None
        return decode_describe_message(body, self.limits)


# Bytes of the records reply's map around the array: 83 a1 76 01 a4 "type" a7 "records" a7
# "records"; the array header and the bin headers are added per reply.
_RECORDS_REPLY_FIXED: Final = (
    len(msgpack.packb({"v": DESCRIBE_VERSION, "type": "records", "records": []})) - 1
)


def records_reply_size(sizes: Sequence[int]) -> int:
    """The body size of a records reply holding envelopes of these byte ``sizes``."""
    return _RECORDS_REPLY_FIXED + _array_header(len(sizes)) + sum(_bin_size(n) for n in sizes)


def fit_records_reply(
    envelopes: Sequence[bytes], limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS
) -> tuple[RecordsReply, int]:
    """The reply holding the longest prefix of ``envelopes`` that fits ``limits``.

    Returns the reply and how many envelopes were left out (0 when all fit).
    """
    payload = 0  # bytes of the bin values taken so far
    count = 0
    for envelope in envelopes[: limits.max_records]:
        grown = payload + _bin_size(len(envelope))
        # The array header grows from 1 to 3 bytes at the 16th entry, to 5 at the 65536th.
        if _RECORDS_REPLY_FIXED + _array_header(count + 1) + grown > limits.max_frame_size:
            break
        payload = grown
        count += 1
    return RecordsReply(tuple(envelopes[:count])), len(envelopes) - count


def _array_header(count: int) -> int:
    return 1 if count < 16 else 3 if count < 1 << 16 else 5


def _bin_size(n: int) -> int:
    return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)


def _check_filters(
    field: str,
    value: object,
    max_length: int,
    limits: DescribeLimits,
    error: type[Exception],
) -> None:
    if not isinstance(value, tuple):
        raise error(f"request field {field!r} must be an array of str, got {_kind(value)}")
    if len(value) > limits.max_filters:
        raise PayloadTooLargeError(
            f"request field {field!r} has {len(value)} entries; at most {limits.max_filters}"
        )
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise error(f"request field {field}[{i}] must be a str, got {_kind(entry)}")
        if len(entry) > max_length:
            raise error(
                f"request field {field}[{i}] is {len(entry)} characters; at most {max_length}"
            )


def _check_records(value: object, limits: DescribeLimits, error: type[Exception]) -> None:
    if not isinstance(value, tuple):
        raise error(f"records reply field 'records' must be an array, got {_kind(value)}")
    if len(value) > limits.max_records:
        raise PayloadTooLargeError(
            f"records reply holds {len(value)} records; this side accepts at most "
            f"{limits.max_records}"
        )
    for i, envelope in enumerate(value):
        if not isinstance(envelope, bytes):
            raise error(f"records[{i}] must be binary (msgpack bin), got {_kind(envelope)}")


def _refuse_ext(code: int, data: bytes) -> object:
    raise RemoteProtocolError(f"describe messages hold no msgpack extension values (type {code})")


def _kind(value: object) -> str:
    """What a decoded msgpack value is, in msgpack's words."""
    names: dict[type, str] = {tuple: "an array", list: "an array", str: "a string"}
    names |= {bytes: "binary", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {dict: "a map", type(None): "nil"}
    return names.get(type(value), "an extension value")
