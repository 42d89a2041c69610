"""Signed usage receipts and the caller's acknowledgements (docs/protocol.md, "Usage receipts").

A provider returns, with every result, a receipt: "I, provider P, ran model M for caller
C, under my record R, on request X giving result Y, and charge U micro-units; this is
receipt number ``seq`` of our pair, following the one whose hash is ``prev_hash``". The
caller checks it against what it sent and received, keeps the pair's chain, and now and
then countersigns the running total: its acknowledgement of the debt.

    tensor hash  = SHA-256 over names, dtypes, shapes and bytes of a set of tensors
    payload      = msgpack map, keys in a fixed order, shortest forms, hashes as bin 32
    receipt hash = SHA-256(receipt payload)
    signature    = Ed25519(DOMAIN | payload)          a domain of its own per message kind
    envelope     = msgpack array [payload: bin, signature: bin 64]

The signer's key is the one its peer ID names (an Ed25519 peer ID holds it), so the
envelope does not carry it. Decoding accepts only the canonical bytes (it re-encodes and
compares): one receipt has exactly one payload, one hash and one envelope.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import (
    crypto_core_ed25519_is_valid_point,
    crypto_sign,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError

from p2pnet.core.fields import (
    check_int,
    check_keys,
    check_model_id,
    check_peer_id,
    check_text,
    unpack_canonical,
)
from p2pnet.core.peer_id import peer_id_from_public_key, public_key_from_peer_id
from p2pnet.core.tensor import dtype_name, normalize_array
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import (
    ForeignReceiptError,
    ForgedReceiptError,
    InvalidInputError,
    MalformedReceiptError,
    ReceiptChainError,
    ReceiptMismatchError,
    ReplayedReceiptError,
)

__all__ = [
    "ACKNOWLEDGEMENT_DOMAIN",
    "HASH_SIZE",
    "MAX_ACKNOWLEDGEMENT_SIZE",
    "MAX_RECEIPT_SIZE",
    "MICRO_UNITS_PER_UNIT",
    "RECEIPT_DOMAIN",
    "RECEIPT_VERSION",
    "TENSOR_HASH_DOMAIN",
    "ZERO_HASH",
    "Acknowledgement",
    "Receipt",
    "ReceiptChain",
    "Signer",
    "acknowledgement_due",
    "check_receipt_for_call",
    "decode_acknowledgement",
    "decode_receipt",
    "encode_acknowledgement",
    "encode_receipt",
    "receipt_hash",
    "sign_acknowledgement",
    "sign_receipt",
    "tensor_hash",
    "verify_acknowledgement",
    "verify_receipt",
]

RECEIPT_VERSION: Final = 1
# Signed bytes start with these, so a receipt signature never verifies as a capability
# record, an acknowledgement, or anything else the same key signs; and vice versa.
RECEIPT_DOMAIN: Final = b"p2pnet usage receipt v1\x00"
ACKNOWLEDGEMENT_DOMAIN: Final = b"p2pnet receipt acknowledgement v1\x00"
TENSOR_HASH_DOMAIN: Final = b"p2pnet tensors v1\x00"
MAX_RECEIPT_SIZE: Final = 1024  # envelope bytes; a receipt is about 530, at most about 640
MAX_ACKNOWLEDGEMENT_SIZE: Final = 512  # an acknowledgement is about 265
HASH_SIZE: Final = 32
ZERO_HASH: Final = bytes(HASH_SIZE)  # the prev_hash of a pair's first receipt
MICRO_UNITS_PER_UNIT: Final = 1_000_000

MAX_RUNTIME_BYTES: Final = 128
MAX_UNITS: Final = (1 << 63) - 1
MAX_SEQ: Final = (1 << 64) - 1
MAX_ISSUED_AT: Final = (1 << 63) - 1

_RECEIPT_KEYS: Final = (
    "v",
    "provider",
    "caller",
    "model",
    "record_hash",
    "request_hash",
    "result_hash",
    "runtime",
    "units",
    "seq",
    "prev_hash",
    "issued_at",
)
_ACKNOWLEDGEMENT_KEYS: Final = ("v", "caller", "provider", "seq", "total_units", "last_hash")


# Tensor hashes


def tensor_hash(tensors: Mapping[str, object]) -> bytes:
    """The canonical SHA-256 of a set of named tensors (32 bytes).

    Hashed, in this order: ``TENSOR_HASH_DOMAIN``, uvarint(count), then per tensor in
    the order of the UTF-8 bytes of the names: uvarint(len(name)) | name,
    uvarint(len(dtype)) | dtype (p2pnet's name: ``float32``, ``string``, ...),
    uvarint(ndim) | ndim dimensions as u64le, then the data: numeric tensors their
    C-order little-endian bytes, string tensors per element uvarint(len) | UTF-8.

    The hash depends on values only: not on the mapping's order, the arrays' strides
    or byte order. Each side hashes what it sent or received.

    Raises:
        InvalidInputError: a value the tensor codec cannot carry, or a name that is not
            valid Unicode.
    """
    entries = []
    for name, value in tensors.items():
        try:
            raw_name = name.encode()
        except (UnicodeEncodeError, AttributeError):
            raise InvalidInputError(
                f"tensor name {name!r:.80} is not a str of valid Unicode"
            ) from None
        entries.append((raw_name, name, value))
    entries.sort(key=lambda entry: entry[0])
    digest = hashlib.sha256(TENSOR_HASH_DOMAIN)
    digest.update(encode_uvarint(len(entries)))
    for raw_name, name, value in entries:
        array = normalize_array(name, value)
        digest.update(
            b"".join(
                (
                    encode_uvarint(len(raw_name)),
                    raw_name,
                    _dtype_field(array.dtype),
                    _shape_field(array.shape),
                )
            )
        )
        _hash_data(digest, array)
    return digest.digest()


@lru_cache(maxsize=64)
def _dtype_field(dtype: np.dtype[Any]) -> bytes:
    """uvarint(len(name)) | name of a dtype (numpy's ``dtype.name`` is slow to compute)."""
    name = dtype_name(dtype).encode()
    return encode_uvarint(len(name)) + name


def _shape_field(shape: tuple[int, ...]) -> bytes:
    """uvarint(ndim) | the dimensions as u64le (ndim < 128: one varint byte)."""
    return bytes((len(shape),)) + struct.pack(f"<{len(shape)}Q", *shape)


def _hash_data(digest: hashlib._Hash, array: npt.NDArray[np.generic]) -> None:
    if array.dtype.kind == "O":
        for element in array.ravel():
            raw = str(element).encode()
            digest.update(encode_uvarint(len(raw)))
            digest.update(raw)
        return
    # normalize_array made it C-contiguous and little-endian: hash it in place, no copy.
    digest.update(array.reshape(-1).view(np.uint8).data)


# Signing


@dataclass(frozen=True, slots=True, eq=False)
class Signer:
    """An Ed25519 key made ready to sign many receipts or acknowledgements: the peer ID
    it gives and libsodium's form of it, which signs in ~20 us where OpenSSL
    (``Ed25519PrivateKey.sign``) takes ~32 us. The signatures are the same bytes:
    Ed25519 signing is deterministic."""

    peer_id: str
    _secret: bytes = dataclasses.field(repr=False)

    @classmethod
    def of(cls, key: Ed25519PrivateKey) -> Signer:
        """The signer of ``key``."""
        public, secret = crypto_sign_seed_keypair(key.private_bytes_raw())
        return cls(peer_id_from_public_key(public), secret)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature of ``data``."""
        signed: bytes = crypto_sign(data, self._secret)
        return signed[:64]


# Receipts


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Provider ``provider``'s signed account of one call by ``caller``.

    ``record_hash`` is the SHA-256 of the signed capability-record envelope the call was
    served under; ``request_hash`` and ``result_hash`` are ``tensor_hash`` of the inputs
    and outputs; ``units`` are micro-units (1 unit = 1_000_000); ``seq`` counts the
    pair's receipts from 1 and ``prev_hash`` is the previous one's ``receipt_hash``
    (``ZERO_HASH`` for seq 1); ``issued_at`` is unix milliseconds.

    Raises:
        ValueError: a field of the wrong type or out of bounds; the message names it.
    """

    provider: str
    caller: str
    model_id: str
    record_hash: bytes
    request_hash: bytes
    result_hash: bytes
    runtime: str
    units: int
    seq: int
    prev_hash: bytes
    issued_at: int

    def __post_init__(self) -> None:
        check_peer_id("provider", self.provider)
        check_peer_id("caller", self.caller)
        check_model_id(self.model_id)
        for field in ("record_hash", "request_hash", "result_hash", "prev_hash"):
            _check_hash(field, getattr(self, field))
        check_text("runtime", self.runtime, MAX_RUNTIME_BYTES)
        check_int("units", self.units, MAX_UNITS, 0)
        check_int("seq", self.seq, MAX_SEQ, 1)
        check_int("issued_at", self.issued_at, MAX_ISSUED_AT, 0)
        if self.seq == 1 and self.prev_hash != ZERO_HASH:
            raise ValueError("prev_hash of the first receipt (seq 1) must be 32 zero bytes")


def encode_receipt(receipt: Receipt) -> bytes:
    """The canonical payload bytes of ``receipt`` (what is signed and hashed)."""
    payload: bytes = msgpack.packb(
        {
            "v": RECEIPT_VERSION,
            "provider": receipt.provider,
            "caller": receipt.caller,
            "model": receipt.model_id,
            "record_hash": receipt.record_hash,
            "request_hash": receipt.request_hash,
            "result_hash": receipt.result_hash,
            "runtime": receipt.runtime,
            "units": receipt.units,
            "seq": receipt.seq,
            "prev_hash": receipt.prev_hash,
            "issued_at": receipt.issued_at,
        },
        use_bin_type=True,
    )
    return payload


def receipt_hash(receipt: Receipt) -> bytes:
    """SHA-256 of the canonical payload: what the next receipt's ``prev_hash`` holds."""
    return hashlib.sha256(encode_receipt(receipt)).digest()


def decode_receipt(payload: bytes) -> Receipt:
    """The receipt ``payload`` encodes; only canonical bytes are accepted. No signature
    is checked: use verify_receipt on anything received.

    Raises:
        MalformedReceiptError: not msgpack, wrong keys, types or bounds, not canonical.
    """
    head = _open_map("receipt", payload, _RECEIPT_KEYS)
    try:
        receipt = Receipt(
            provider=head["provider"],
            caller=head["caller"],
            model_id=head["model"],
            record_hash=head["record_hash"],
            request_hash=head["request_hash"],
            result_hash=head["result_hash"],
            runtime=head["runtime"],
            units=head["units"],
            seq=head["seq"],
            prev_hash=head["prev_hash"],
            issued_at=head["issued_at"],
        )
    except ValueError as exc:
        raise MalformedReceiptError(f"receipt has a bad field: {exc}") from None
    if encode_receipt(receipt) != payload:
        raise MalformedReceiptError(
            "receipt is not in canonical form (shortest msgpack encodings, no duplicate "
            "keys); it has exactly one valid encoding"
        )
    return receipt


def sign_receipt(
    receipt: Receipt,
    signing_key: Ed25519PrivateKey | Signer,
    *,
    max_size: int = MAX_RECEIPT_SIZE,
) -> bytes:
    """The signed envelope of ``receipt``, to send with the result (a ``Signer`` made
    once signs faster than the key itself).

    Raises:
        ValueError: ``signing_key`` is not the key of ``receipt.provider``, or the
            envelope is over ``max_size`` (a runtime string too long for the limit).
    """
    payload = encode_receipt(receipt)
    signer = _signer(signing_key, receipt.provider, "receipt", "provider")
    return _envelope(payload, signer.sign(RECEIPT_DOMAIN + payload), "receipt", max_size)


def verify_receipt(
    envelope: bytes,
    *,
    provider: str | None = None,
    caller: str | None = None,
    max_size: int = MAX_RECEIPT_SIZE,
) -> Receipt:
    """The receipt in a received ``envelope``, signed by its provider.

    Checks, in this order: size (from the length alone), structure, the signature with
    the key the provider's peer ID names, then that the receipt is for the ``provider``
    and ``caller`` given (each only if given).

    Raises:
        MalformedReceiptError: over ``max_size`` bytes, or not a canonical envelope
            holding a canonical receipt.
        ForgedReceiptError: the signature does not verify with the provider's key.
        ForeignReceiptError: signed, but by or for another peer than expected.
    """
    payload, signature = _open_envelope("receipt", envelope, max_size)
    receipt = decode_receipt(payload)
    _verify_signature(
        receipt.provider,
        RECEIPT_DOMAIN + payload,
        signature,
        f"receipt {receipt.seq} of provider {receipt.provider} for caller {receipt.caller}",
    )
    _check_pair("receipt", receipt.provider, receipt.caller, provider, caller)
    return receipt


def check_receipt_for_call(
    receipt: Receipt,
    *,
    caller: str,
    provider: str,
    model_id: str,
    record_hash: bytes,
    request_hash: bytes,
    result_hash: bytes,
    max_units: int,
) -> None:
    """Check that ``receipt`` commits to the call the caller made and the result it got.

    ``request_hash`` and ``result_hash`` are the caller's own ``tensor_hash`` of what it
    sent and received; ``max_units`` the most the call may cost at the price it agreed.

    Raises:
        ForeignReceiptError: the receipt is for another provider or caller.
        ReceiptMismatchError: anything else differs; the message lists every difference.
    """
    _check_pair("receipt", receipt.provider, receipt.caller, provider, caller)
    differences = []
    if receipt.model_id != model_id:
        differences.append(f"model {receipt.model_id}, not {model_id}")
    for field, expected, what in (
        ("record_hash", record_hash, "the record the call was made under"),
        ("request_hash", request_hash, "the request sent"),
        ("result_hash", result_hash, "the result received"),
    ):
        got: bytes = getattr(receipt, field)
        if got != expected:
            differences.append(f"{field} {got.hex()[:16]}... is not that of {what}")
    if receipt.units > max_units:
        differences.append(
            f"{receipt.units} micro-units charged, over the {max_units} the price allows"
        )
    if differences:
        raise ReceiptMismatchError(
            f"receipt {receipt.seq} of provider {receipt.provider} does not match the call: "
            + "; ".join(differences)
        )


# The chain of a pair's receipts


@dataclass(frozen=True, slots=True)
class ReceiptChain:
    """What one side knows of a (provider, caller) pair's receipts so far: the last
    ``seq``, its ``receipt_hash`` and the running total of units. A new pair starts at
    seq 0, ``ZERO_HASH``, 0 units. The ledger stores these three numbers per pair.
    """

    provider: str
    caller: str
    last_seq: int = 0
    last_hash: bytes = ZERO_HASH
    total_units: int = 0

    def check_next(self, receipt: Receipt, digest: bytes | None = None) -> ReceiptChain:
        """The chain extended by ``receipt``, if it is the pair's next receipt. Nothing
        changes here: the caller keeps the returned chain once it has stored the receipt.
        ``digest``: its ``receipt_hash``, when already computed.

        Raises:
            ForeignReceiptError: the receipt is for another (provider, caller) pair.
            ReplayedReceiptError: its seq is not above the last one.
            ReceiptChainError: its seq skips one (reordered or missing), or its
                ``prev_hash`` is not the last receipt's hash (a broken link).
        """
        _check_pair("receipt", receipt.provider, receipt.caller, self.provider, self.caller)
        which = f"receipt {receipt.seq} of provider {self.provider} for caller {self.caller}"
        if receipt.seq <= self.last_seq:
            raise ReplayedReceiptError(
                f"{which} comes after receipt {self.last_seq}: a replay or an old receipt"
            )
        if receipt.seq != self.last_seq + 1:
            raise ReceiptChainError(
                f"{which} comes after receipt {self.last_seq}: receipts "
                f"{self.last_seq + 1}..{receipt.seq - 1} are missing or out of order"
            )
        if receipt.prev_hash != self.last_hash:
            raise ReceiptChainError(
                f"{which} does not follow receipt {self.last_seq}: its prev_hash "
                f"{receipt.prev_hash.hex()[:16]}... is not {self.last_hash.hex()[:16]}..."
            )
        return ReceiptChain(
            self.provider,
            self.caller,
            receipt.seq,
            digest if digest is not None else receipt_hash(receipt),
            self.total_units + receipt.units,
        )

    def next_receipt_fields(self) -> tuple[int, bytes]:
        """(seq, prev_hash) of the pair's next receipt: what a provider puts in it."""
        return self.last_seq + 1, self.last_hash

    def acknowledgement(self) -> Acknowledgement:
        """The caller's acknowledgement of everything in the chain, to sign.

        Raises:
            ValueError: the chain is empty; there is nothing to acknowledge.
        """
        return Acknowledgement(
            caller=self.caller,
            provider=self.provider,
            seq=self.last_seq,
            total_units=self.total_units,
            last_receipt_hash=self.last_hash,
        )


# Acknowledgements


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledgement:
    """Caller ``caller``'s signed statement that it owes ``provider`` ``total_units``
    micro-units for the pair's receipts 1 to ``seq``, the last of which hashes to
    ``last_receipt_hash``.

    Raises:
        ValueError: a field of the wrong type or out of bounds; the message names it.
    """

    caller: str
    provider: str
    seq: int
    total_units: int
    last_receipt_hash: bytes

    def __post_init__(self) -> None:
        check_peer_id("caller", self.caller)
        check_peer_id("provider", self.provider)
        check_int("seq", self.seq, MAX_SEQ, 1)
        check_int("total_units", self.total_units, MAX_UNITS, 0)
        _check_hash("last_receipt_hash", self.last_receipt_hash)


def encode_acknowledgement(ack: Acknowledgement) -> bytes:
    """The canonical payload bytes of ``ack`` (what is signed)."""
    payload: bytes = msgpack.packb(
        {
            "v": RECEIPT_VERSION,
            "caller": ack.caller,
            "provider": ack.provider,
            "seq": ack.seq,
            "total_units": ack.total_units,
            "last_hash": ack.last_receipt_hash,
        },
        use_bin_type=True,
    )
    return payload


def decode_acknowledgement(payload: bytes) -> Acknowledgement:
    """The acknowledgement ``payload`` encodes; only canonical bytes are accepted.

    Raises:
        MalformedReceiptError: not msgpack, wrong keys, types or bounds, not canonical.
    """
    head = _open_map("acknowledgement", payload, _ACKNOWLEDGEMENT_KEYS)
    try:
        ack = Acknowledgement(
            caller=head["caller"],
            provider=head["provider"],
            seq=head["seq"],
            total_units=head["total_units"],
            last_receipt_hash=head["last_hash"],
        )
    except ValueError as exc:
        raise MalformedReceiptError(f"acknowledgement has a bad field: {exc}") from None
    if encode_acknowledgement(ack) != payload:
        raise MalformedReceiptError(
            "acknowledgement is not in canonical form; it has exactly one valid encoding"
        )
    return ack


def sign_acknowledgement(
    ack: Acknowledgement,
    signing_key: Ed25519PrivateKey | Signer,
    *,
    max_size: int = MAX_ACKNOWLEDGEMENT_SIZE,
) -> bytes:
    """The signed envelope of ``ack``, signed by the caller.

    Raises:
        ValueError: ``signing_key`` is not the key of ``ack.caller``.
    """
    payload = encode_acknowledgement(ack)
    signer = _signer(signing_key, ack.caller, "acknowledgement", "caller")
    signature = signer.sign(ACKNOWLEDGEMENT_DOMAIN + payload)
    return _envelope(payload, signature, "acknowledgement", max_size)


def verify_acknowledgement(
    envelope: bytes,
    *,
    caller: str | None = None,
    provider: str | None = None,
    max_size: int = MAX_ACKNOWLEDGEMENT_SIZE,
) -> Acknowledgement:
    """The acknowledgement in a received ``envelope``, signed by its caller.

    Checks, in this order: size, structure, the signature with the key the caller's
    peer ID names, then the ``caller`` and ``provider`` given (each only if given).

    Raises:
        MalformedReceiptError: over ``max_size`` bytes, or not canonical.
        ForgedReceiptError: the signature does not verify with the caller's key.
        ForeignReceiptError: signed, but by or for another peer than expected.
    """
    payload, signature = _open_envelope("acknowledgement", envelope, max_size)
    ack = decode_acknowledgement(payload)
    _verify_signature(
        ack.caller,
        ACKNOWLEDGEMENT_DOMAIN + payload,
        signature,
        f"acknowledgement {ack.seq} of caller {ack.caller} to provider {ack.provider}",
    )
    _check_pair("acknowledgement", ack.provider, ack.caller, provider, caller)
    return ack


def acknowledgement_due(
    calls_since: int, units_since: int, every_calls: int, every_units: int
) -> bool:
    """Whether a caller should countersign now: ``calls_since`` calls or ``units_since``
    micro-units since its last acknowledgement reach ``every_calls`` or ``every_units``.
    A threshold of 0 never triggers; nothing is due with no call since.
    """
    if calls_since <= 0:
        return False
    return (every_calls > 0 and calls_since >= every_calls) or (
        every_units > 0 and units_since >= every_units
    )


# Shared checks


def _signer(key: Ed25519PrivateKey | Signer, peer_id: str, what: str, role: str) -> Signer:
    signer = key if isinstance(key, Signer) else Signer.of(key)
    if signer.peer_id != peer_id:
        raise ValueError(
            f"the {what} is for {role} {peer_id} but the key is peer {signer.peer_id}'s; "
            f"only the {role} signs its {what}"
        )
    return signer


def _envelope(payload: bytes, signature: bytes, what: str, max_size: int) -> bytes:
    envelope: bytes = msgpack.packb([payload, signature], use_bin_type=True)
    if len(envelope) > max_size:
        raise ValueError(
            f"the signed {what} is {len(envelope)} bytes; receivers accept at most {max_size}"
        )
    return envelope


def _open_envelope(what: str, envelope: bytes, max_size: int) -> tuple[bytes, bytes]:
    if len(envelope) > max_size:
        raise MalformedReceiptError(
            f"{what} of {len(envelope)} bytes; this side accepts at most {max_size}"
        )
    parts = unpack_canonical(envelope, f"{what} envelope", MalformedReceiptError)
    if (
        not isinstance(parts, tuple)
        or len(parts) != 2
        or not all(isinstance(p, bytes) for p in parts)
    ):
        raise MalformedReceiptError(
            f"{what} envelope must be a msgpack array of 2 byte strings: [payload, signature]"
        )
    payload, signature = parts
    if len(signature) != 64:
        raise MalformedReceiptError(
            f"{what} envelope has a {len(signature)}-byte signature; Ed25519 needs 64"
        )
    if msgpack.packb(parts, use_bin_type=True) != envelope:
        raise MalformedReceiptError(f"{what} envelope is not in canonical form")
    return payload, signature


# A small-order public key lets one signature verify any message (see records.py). The
# check costs ~45 us, as much as the verification itself, and receipts come from the same
# few peers again and again.
_is_strong_key = lru_cache(maxsize=4096)(crypto_core_ed25519_is_valid_point)


def _verify_signature(signer: str, signed: bytes, signature: bytes, which: str) -> None:
    public_key = public_key_from_peer_id(signer)  # checked when the payload was decoded
    if not _is_strong_key(public_key):
        raise ForgedReceiptError(f"the {which} is signed with a weak (small-order) key")
    # libsodium verifies in ~55 us where OpenSSL (cryptography) takes ~105 us; every call
    # verifies one receipt. It is also the stricter of the two (canonical S and R).
    try:
        crypto_sign_open(signature + signed, public_key)
    except (BadSignatureError, ValueError):
        raise ForgedReceiptError(f"the signature of the {which} does not verify") from None


def _check_pair(
    what: str, provider: str, caller: str, want_provider: str | None, want_caller: str | None
) -> None:
    if want_provider is not None and provider != want_provider:
        raise ForeignReceiptError(f"the {what} is for provider {provider}, not {want_provider}")
    if want_caller is not None and caller != want_caller:
        raise ForeignReceiptError(f"the {what} is of caller {caller}, not {want_caller}")


def _open_map(what: str, payload: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    head = unpack_canonical(payload, what, MalformedReceiptError)
    if not isinstance(head, dict):
        raise MalformedReceiptError(f"{what} is a {type(head).__name__}, not a map")
    version = head.get("v")
    if type(version) is not int or version != RECEIPT_VERSION:
        raise MalformedReceiptError(
            f"{what} version {version!r:.40} is not supported "
            f"(this side reads version {RECEIPT_VERSION})"
        )
    check_keys(what, head, keys, MalformedReceiptError)
    return head


def _check_hash(field: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        size = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ValueError(f"{field} must be {HASH_SIZE} bytes (a SHA-256), not {size}")
