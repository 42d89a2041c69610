"""Signed capability records: what a peer serves, bound to its key (docs/protocol.md).

A record says: peer P serves model M with this schema, for these tasks, at these
addresses, until ``expires_at``; ``seq`` orders the records P publishes for M.

    payload   = msgpack map, keys in a fixed order, every value in its shortest
                msgpack form, no floats (encode_record, decode_record)
    signature = Ed25519(DOMAIN | payload)
    envelope  = msgpack array [payload: bin, public key: bin 32, signature: bin 64]

Decoding accepts only the canonical bytes: it re-encodes what it read and compares,
so one record has exactly one encoding and one envelope (Ed25519 is deterministic).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.bindings import crypto_core_ed25519_is_valid_point

from p2pnet.core.fields import (
    check_int,
    check_keys,
    check_model_id,
    check_peer_id,
    check_text,
    unpack_canonical,
)
from p2pnet.core.generation import GenerationCard
from p2pnet.core.peer_id import peer_id_from_public_key, public_key_from_peer_id
from p2pnet.core.pricing import FREE, Price, price_from_wire, price_to_wire
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.core.tensor import MAX_NDIM
from p2pnet.errors import (
    ExpiredRecordError,
    ForgedRecordError,
    MalformedRecordError,
    PayloadTooLargeError,
    RecordKeyMismatchError,
    RecordTooLargeError,
    StaleRecordError,
)

__all__ = [
    "DOMAIN",
    "MAX_RECORD_SIZE",
    "RECORD_VERSION",
    "CapabilityRecord",
    "decode_record",
    "encode_record",
    "sign_record",
    "supersedes",
    "verify_record",
]

RECORD_VERSION: Final = 1
# Signed bytes start with this, so a record signature is never valid for anything else.
DOMAIN: Final = b"p2pnet capability record v1\x00"
MAX_RECORD_SIZE: Final = 8192  # envelope bytes, the default of sign_record and verify_record

MAX_NAME_BYTES: Final = 128
MAX_VERSION_BYTES: Final = 64
MAX_RUNTIME_BYTES: Final = 64
MAX_TASKS: Final = 16
MAX_TASK_LENGTH: Final = 64
MAX_ADDRS: Final = 16
MAX_ADDR_BYTES: Final = 256
MAX_TENSORS: Final = 256  # per side: inputs, outputs
MAX_TENSOR_NAME_BYTES: Final = 128
MAX_DTYPE_LENGTH: Final = 16
MAX_SYMBOL_BYTES: Final = 64
MAX_DIM: Final = (1 << 63) - 1
MAX_SEQ: Final = (1 << 64) - 1
MAX_EXPIRES_AT: Final = (1 << 63) - 1  # fits a signed 64-bit integer in every language

_KEYS: Final = (
    "v",
    "model",
    "peer",
    "schema",
    "tasks",
    "name",
    "version",
    "runtime",
    "addrs",
    "seq",
    "expires_at",
)
# After the keys above, only when the model is not free (a free record is unchanged).
_PRICE_KEY: Final = "price"
# Last, only for a generative model: {context, eos, turn, reply, tokenizer}.
_GEN_KEY: Final = "gen"
_GEN_KEYS: Final = ("context", "eos", "turn", "reply", "tokenizer")
_SCHEMA_KEYS: Final = ("inputs", "outputs")
_TASK = re.compile(r"[a-z0-9][a-z0-9-]*")
_DTYPE = re.compile(r"[a-z][a-z0-9]*")
_ADDR = re.compile(r"/[!-~]*")  # printable ASCII, no spaces


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilityRecord:
    """Peer ``peer_id`` serves model ``model_id``: its schema, tasks and addresses.

    ``tasks`` are tags such as ``"sentiment-analysis"`` (lower case letters, digits and
    ``-``), in the publisher's order of preference. ``addrs`` are multiaddrs without the
    ``/p2p/<peer>`` suffix. ``seq`` grows with each record the peer publishes for the
    model; ``expires_at`` is in unix seconds.

    Raises:
        ValueError: a field of the wrong type, over its bound, or not canonical; the
            message names the field.
    """

    model_id: str
    peer_id: str
    schema: ModelSchema
    tasks: tuple[str, ...]
    name: str
    version: str
    runtime: str
    addrs: tuple[str, ...]
    seq: int
    expires_at: int
    price: Price = FREE
    generation: GenerationCard | None = None

    def __post_init__(self) -> None:
        check_model_id(self.model_id)
        check_peer_id("peer_id", self.peer_id)
        _check_schema(self.schema)
        _check_list("tasks", self.tasks, MAX_TASKS, _check_task, unique=True)
        check_text("name", self.name, MAX_NAME_BYTES)
        check_text("version", self.version, MAX_VERSION_BYTES)
        check_text("runtime", self.runtime, MAX_RUNTIME_BYTES)
        _check_list("addrs", self.addrs, MAX_ADDRS, _check_addr, unique=True)
        check_int("seq", self.seq, MAX_SEQ)
        check_int("expires_at", self.expires_at, MAX_EXPIRES_AT)
        if not isinstance(self.price, Price):
            raise ValueError(f"price must be a Price, not {type(self.price).__name__}")
        if self.generation is not None and not isinstance(self.generation, GenerationCard):
            raise ValueError("generation must be a GenerationCard")

    @property
    def key(self) -> tuple[str, str]:
        """(peer_id, model_id): a store holds one record per key."""
        return self.peer_id, self.model_id


def encode_record(record: CapabilityRecord) -> bytes:
    """The canonical payload bytes of ``record`` (what is signed)."""
    fields: dict[str, Any] = {
        "v": RECORD_VERSION,
        "model": record.model_id,
        "peer": record.peer_id,
        "schema": {
            "inputs": [_encode_spec(t) for t in record.schema.inputs],
            "outputs": [_encode_spec(t) for t in record.schema.outputs],
        },
        "tasks": list(record.tasks),
        "name": record.name,
        "version": record.version,
        "runtime": record.runtime,
        "addrs": list(record.addrs),
        "seq": record.seq,
        "expires_at": record.expires_at,
    }
    if not record.price.is_free:
        fields[_PRICE_KEY] = price_to_wire(record.price)
    if record.generation is not None:
        card = record.generation
        fields[_GEN_KEY] = {
            "context": card.context_length,
            "eos": list(card.eos_token_ids),
            "turn": card.chat_turn,
            "reply": card.generation_prompt,
            "tokenizer": card.tokenizer,
        }
    payload: bytes = msgpack.packb(fields, use_bin_type=True)
    return payload


def _encode_spec(spec: TensorSpec) -> list[Any]:
    return [spec.name, spec.dtype, list(spec.shape)]


def decode_record(payload: bytes) -> CapabilityRecord:
    """The record that ``payload`` encodes; only canonical bytes are accepted.

    This checks no signature: use verify_record on anything received.

    Raises:
        MalformedRecordError: not msgpack, wrong keys or types, a field out of bounds,
            or not the canonical encoding of the record it decodes to.
    """
    head = unpack_canonical(payload, "capability record", MalformedRecordError)
    if not isinstance(head, dict):
        raise MalformedRecordError(f"capability record is {_kind(head)}, not a map")
    version = head.get("v")
    if type(version) is not int or version != RECORD_VERSION:
        raise MalformedRecordError(
            f"capability record version {version!r:.40} is not supported "
            f"(this side reads version {RECORD_VERSION})"
        )
    check_keys(
        "capability record",
        head,
        (*_KEYS, *(k for k in (_PRICE_KEY, _GEN_KEY) if k in head)),
        MalformedRecordError,
    )
    schema = head["schema"]
    if not isinstance(schema, dict):
        raise MalformedRecordError(f"record field 'schema' is {_kind(schema)}, not a map")
    check_keys("record field 'schema'", schema, _SCHEMA_KEYS, MalformedRecordError)
    try:
        record = CapabilityRecord(
            model_id=head["model"],
            peer_id=head["peer"],
            schema=ModelSchema(_decode_specs(schema["inputs"]), _decode_specs(schema["outputs"])),
            tasks=head["tasks"],
            name=head["name"],
            version=head["version"],
            runtime=head["runtime"],
            addrs=head["addrs"],
            seq=head["seq"],
            expires_at=head["expires_at"],
            price=price_from_wire(head[_PRICE_KEY]) if _PRICE_KEY in head else FREE,
            generation=_decode_card(head[_GEN_KEY]) if _GEN_KEY in head else None,
        )
    except ValueError as exc:
        raise MalformedRecordError(f"capability record has a bad field: {exc}") from None
    if encode_record(record) != payload:
        raise MalformedRecordError(
            "capability record is not in canonical form (shortest msgpack encodings, "
            "no duplicate keys); it has exactly one valid encoding"
        )
    return record


def _decode_card(value: object) -> GenerationCard:
    if not isinstance(value, dict):
        raise MalformedRecordError(f"record field 'gen' is {_kind(value)}, not a map")
    check_keys("record field 'gen'", value, _GEN_KEYS, MalformedRecordError)
    eos = value["eos"]
    return GenerationCard(
        value["context"],
        eos if isinstance(eos, tuple) else (),
        value["turn"],
        value["reply"],
        value["tokenizer"],
    )


def _decode_specs(value: object) -> tuple[TensorSpec, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_TENSORS:
        raise MalformedRecordError(
            f"schema inputs and outputs must be arrays of at most {MAX_TENSORS} tensors"
        )
    specs = []
    for item in value:
        if not isinstance(item, tuple) or len(item) != 3:
            raise MalformedRecordError("a schema tensor must be an array [name, dtype, shape]")
        specs.append(TensorSpec(*item))
    return tuple(specs)


def sign_record(
    record: CapabilityRecord, private_key: Ed25519PrivateKey, *, max_size: int = MAX_RECORD_SIZE
) -> bytes:
    """The signed envelope of ``record``, ready to publish.

    Raises:
        ValueError: ``private_key`` is not the key of ``record.peer_id``: a peer signs
            only its own records.
        PayloadTooLargeError: the envelope is over ``max_size`` bytes, so receivers
            would refuse it (a schema with many tensors, or too many addresses).
    """
    public_key = private_key.public_key().public_bytes_raw()
    signer = peer_id_from_public_key(public_key)
    if signer != record.peer_id:
        raise ValueError(
            f"the record is for peer {record.peer_id} but the key is peer {signer}'s; "
            "a peer signs only its own records"
        )
    payload = encode_record(record)
    signature = private_key.sign(DOMAIN + payload)
    envelope: bytes = msgpack.packb([payload, public_key, signature], use_bin_type=True)
    if len(envelope) > max_size:
        raise PayloadTooLargeError(
            f"the signed record for model {record.model_id} is {len(envelope)} bytes; "
            f"receivers accept at most {max_size} (fewer addresses or tasks, shorter names)"
        )
    return envelope


def verify_record(
    envelope: bytes, *, now: float, max_size: int = MAX_RECORD_SIZE
) -> CapabilityRecord:
    """The record in a received ``envelope``, if it may be used at time ``now`` (unix s).

    Checks, in this order: size, structure, that the key is the peer ID's, the
    signature, expiry (``now >= expires_at`` is expired).

    Raises:
        RecordTooLargeError: ``envelope`` is over ``max_size`` bytes.
        MalformedRecordError: not a canonical envelope holding a canonical record.
        RecordKeyMismatchError: the signing key is not the one ``peer_id`` names.
        ForgedRecordError: the signature does not verify.
        ExpiredRecordError: the record has expired.
    """
    if len(envelope) > max_size:
        raise RecordTooLargeError(
            f"capability record of {len(envelope)} bytes; this side accepts at most {max_size}"
        )
    payload, public_key, signature = _open_envelope(envelope)
    record = decode_record(payload)
    if public_key != public_key_from_peer_id(record.peer_id):
        raise RecordKeyMismatchError(
            f"the record of peer {record.peer_id} for model {record.model_id} is signed by "
            f"the key of another peer, {peer_id_from_public_key(public_key)}"
        )
    # OpenSSL's Ed25519 accepts small-order public keys, for which one signature verifies
    # any message: anyone could sign as such a peer ID. libsodium's check refuses them.
    if not crypto_core_ed25519_is_valid_point(public_key):
        raise ForgedRecordError(
            f"the record of peer {record.peer_id} is signed with a weak (small-order) key"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, DOMAIN + payload)
    except (InvalidSignature, ValueError):
        raise ForgedRecordError(
            f"the signature of the record of peer {record.peer_id} for model "
            f"{record.model_id} does not verify"
        ) from None
    if now >= record.expires_at:
        raise ExpiredRecordError(
            f"the record of peer {record.peer_id} for model {record.model_id} expired at "
            f"{record.expires_at}, {now - record.expires_at:.0f} s ago; fetch a fresh one"
        )
    return record


def _open_envelope(envelope: bytes) -> tuple[bytes, bytes, bytes]:
    parts = unpack_canonical(envelope, "capability record envelope", MalformedRecordError)
    if (
        not isinstance(parts, tuple)
        or len(parts) != 3
        or not all(isinstance(p, bytes) for p in parts)
    ):
        raise MalformedRecordError(
            "capability record envelope must be a msgpack array of 3 byte strings: "
            "[payload, public key, signature]"
        )
    payload, public_key, signature = parts
    if len(public_key) != 32 or len(signature) != 64:
        raise MalformedRecordError(
            f"capability record envelope has a {len(public_key)}-byte key and a "
            f"{len(signature)}-byte signature; Ed25519 needs 32 and 64"
        )
    if msgpack.packb(parts, use_bin_type=True) != envelope:
        raise MalformedRecordError("capability record envelope is not in canonical form")
    return payload, public_key, signature


def supersedes(candidate: CapabilityRecord, held: CapabilityRecord | None) -> bool:
    """Whether to replace ``held`` (the record kept for the same key, if any) by ``candidate``.

    A higher ``seq`` wins; the very same record again is a no-op (False).

    Raises:
        StaleRecordError: ``candidate`` has a lower ``seq``, or the same ``seq`` with
            different content (a replay, or a publisher reusing a sequence number).
        ValueError: the records are for different (peer, model) keys.
    """
    if held is None:
        return True
    if candidate.key != held.key:
        raise ValueError(f"records for different keys: {candidate.key} and {held.key}")
    if candidate == held:
        return False
    if candidate.seq > held.seq:
        return True
    which = f"the record of peer {candidate.peer_id} for model {candidate.model_id}"
    if candidate.seq < held.seq:
        raise StaleRecordError(
            f"{which} has seq {candidate.seq}, older than the one already held (seq {held.seq})"
        )
    raise StaleRecordError(
        f"{which} has seq {candidate.seq}, like the one already held, but different content: "
        "a replay, or the publisher reused a sequence number"
    )


def _kind(value: object) -> str:
    """What a decoded msgpack value is, in msgpack's words."""
    names = {tuple: "an array", str: "a string", bytes: "binary", bool: "a boolean"}
    names |= {int: "an integer", float: "a float", type(None): "nil"}
    return names.get(type(value), "an extension value")


def _check_schema(schema: object) -> None:
    if not isinstance(schema, ModelSchema):
        raise ValueError(f"schema must be a ModelSchema, not {type(schema).__name__}")
    for side, specs in (("inputs", schema.inputs), ("outputs", schema.outputs)):
        _check_list(f"schema {side}", specs, MAX_TENSORS, _check_spec)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"schema {side} name a tensor twice")


def _check_spec(where: str, spec: object) -> None:
    if not isinstance(spec, TensorSpec):
        raise ValueError(f"{where} must be a TensorSpec, not {type(spec).__name__}")
    check_text(f"{where} name", spec.name, MAX_TENSOR_NAME_BYTES, allow_empty=False)
    dtype = spec.dtype
    if not isinstance(dtype, str) or len(dtype) > MAX_DTYPE_LENGTH or not _DTYPE.fullmatch(dtype):
        raise ValueError(f"{where} dtype must be a dtype name like 'float32', not {dtype!r:.40}")
    _check_list(f"{where} shape", spec.shape, MAX_NDIM, _check_dim)


def _check_dim(where: str, dim: object) -> None:
    if dim is None:
        return
    if isinstance(dim, str):
        check_text(where, dim, MAX_SYMBOL_BYTES, allow_empty=False)
        return
    check_int(where, dim, MAX_DIM)


def _check_task(where: str, tag: object) -> None:
    if not isinstance(tag, str) or len(tag) > MAX_TASK_LENGTH or not _TASK.fullmatch(tag):
        raise ValueError(
            f"{where} {tag!r:.80} is not a task tag: lower case letters, digits and '-', "
            f"starting with a letter or digit, at most {MAX_TASK_LENGTH} characters"
        )


def _check_addr(where: str, addr: object) -> None:
    if not isinstance(addr, str) or len(addr) > MAX_ADDR_BYTES or not _ADDR.fullmatch(addr):
        raise ValueError(
            f"{where} {addr!r:.80} is not a multiaddr: printable ASCII starting with '/', "
            f"at most {MAX_ADDR_BYTES} characters"
        )


def _check_list(
    field: str,
    value: object,
    limit: int,
    check: Callable[[str, object], None],
    *,
    unique: bool = False,
) -> None:
    if not isinstance(value, tuple):
        raise ValueError(f"{field} must be a tuple, not {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{field} has {len(value)} entries; at most {limit}")
    for i, item in enumerate(value):
        check(f"{field}[{i}]", item)
    if unique and len(set(value)) != len(value):
        raise ValueError(f"{field} holds the same entry twice")


RECORD_KEY_PREFIX: Final = b"/p2pnet/record/"


def record_key(model_id: str, peer_id: str) -> bytes:
    """The DHT value key of ``peer_id``'s record for ``model_id``:
    ``b"/p2pnet/record/" + model ID + b"/" + peer ID`` (ASCII)."""
    return RECORD_KEY_PREFIX + f"{model_id}/{peer_id}".encode("ascii")


class CapabilityRecordValidator:
    """The DHT's validator for values under ``/p2pnet/record/``: a signed envelope whose
    record verifies and names the model and peer of its key; the highest ``seq`` wins.

    ``clock`` gives the wall-clock time (unix seconds) that expiry is checked against.
    """

    def __init__(self, clock: Callable[[], float], *, max_size: int = MAX_RECORD_SIZE) -> None:
        self._clock = clock
        self._max_size = max_size

    def validate(self, key: bytes, value: bytes) -> None:
        """Raises an ``InvalidRecordError`` subclass if ``value`` must not be stored."""
        self._record(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the value with the highest ``seq`` (the first of equals)."""
        seqs = [self._record(key, v).seq for v in values]
        return seqs.index(max(seqs))

    def _record(self, key: bytes, value: bytes) -> CapabilityRecord:
        if not key.startswith(RECORD_KEY_PREFIX):
            raise MalformedRecordError(
                f"DHT key {key[:40]!r} is not in the /p2pnet/record/ namespace"
            )
        record = verify_record(value, now=self._clock(), max_size=self._max_size)
        if key != record_key(record.model_id, record.peer_id):
            raise MalformedRecordError(
                f"the record of peer {record.peer_id} for model {record.model_id} is stored "
                f"under another key, {key[:80]!r}"
            )
        return record
