"""Usage receipts and acknowledgements: golden vectors both ways, round trips, chain checks,
every rejection path, and the canonical tensor hash.

The vectors in p2pnet/conformance/vectors/receipts.json are written by this file:
``PYTHONPATH=$PWD python tests/test_receipts.py --write`` (then check the diff: a changed
vector is a changed wire format).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pnet.conformance.golden import VECTOR_DIR as GOLDEN_DIR
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.receipts import (
    ACKNOWLEDGEMENT_DOMAIN,
    MAX_ACKNOWLEDGEMENT_SIZE,
    MAX_RECEIPT_SIZE,
    RECEIPT_DOMAIN,
    TENSOR_HASH_DOMAIN,
    ZERO_HASH,
    Acknowledgement,
    Receipt,
    ReceiptChain,
    acknowledgement_due,
    check_receipt_for_call,
    decode_acknowledgement,
    decode_receipt,
    encode_acknowledgement,
    encode_receipt,
    receipt_hash,
    sign_acknowledgement,
    sign_receipt,
    tensor_hash,
    verify_acknowledgement,
    verify_receipt,
)
from p2pnet.core.records import DOMAIN as RECORD_DOMAIN
from p2pnet.errors import (
    ForeignReceiptError,
    ForgedReceiptError,
    InvalidInputError,
    MalformedReceiptError,
    P2PNetError,
    PeerError,
    ReceiptChainError,
    ReceiptError,
    ReceiptMismatchError,
    ReplayedReceiptError,
)

VECTOR_DIR = GOLDEN_DIR
VECTOR_FILE = VECTOR_DIR / "receipts.json"
RECORDS = json.loads((VECTOR_DIR / "records_v1.json").read_text())
KEYS = {
    name: Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seed_hex"]))
    for name, key in RECORDS["keys"].items()
}
PROVIDER = RECORDS["keys"]["A"]["peer_id"]
CALLER = RECORDS["keys"]["B"]["peer_id"]
MODEL = RECORDS["vectors"][0]["record"]["model_id"]
RECORD_HASH = hashlib.sha256(bytes.fromhex(RECORDS["vectors"][0]["envelope_hex"])).digest()


# The vectors, as this file writes them


def _tensors(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.array(t["data"], dtype=object if t["dtype"] == "string" else t["dtype"]).reshape(
            t["shape"]
        )
        for name, t in spec.items()
    }


TENSOR_SETS: list[tuple[str, str, dict[str, Any]]] = [
    ("empty", "no tensors at all", {}),
    (
        "iris-request",
        "one float32 row of four features, as the iris example takes",
        {"float_input": {"dtype": "float32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}},
    ),
    (
        "iris-result",
        "two outputs; hashed in name order, not insertion order",
        {
            "output_probability": {"dtype": "float32", "shape": [1, 3], "data": [0.9, 0.1, 0.0]},
            "output_label": {"dtype": "int64", "shape": [1], "data": [0]},
        },
    ),
    (
        "strings-bool-scalar",
        "a string tensor (per element uvarint length and UTF-8), a bool tensor, a 0-d int64",
        {
            "text": {"dtype": "string", "shape": [2], "data": ["héllo", ""]},
            "mask": {"dtype": "bool", "shape": [2, 1], "data": [True, False]},
            "k": {"dtype": "int64", "shape": [], "data": 3},
        },
    ),
]


def _receipt_1() -> Receipt:
    return Receipt(
        provider=PROVIDER,
        caller=CALLER,
        model_id=MODEL,
        record_hash=RECORD_HASH,
        request_hash=tensor_hash(_tensors(TENSOR_SETS[1][2])),
        result_hash=tensor_hash(_tensors(TENSOR_SETS[2][2])),
        runtime="onnxruntime 1.20.1; avx2; threads 2",
        units=1_500,
        seq=1,
        prev_hash=ZERO_HASH,
        issued_at=1_767_225_600_000,
    )


def _receipt_2() -> Receipt:
    first = _receipt_1()
    return dataclasses.replace(
        first,
        units=1_000_000 * 300,
        seq=2,
        prev_hash=receipt_hash(first),
        issued_at=first.issued_at + 1_234,
    )


def _acknowledgement() -> Acknowledgement:
    chain = ReceiptChain(PROVIDER, CALLER).check_next(_receipt_1()).check_next(_receipt_2())
    return chain.acknowledgement()


def _receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {
        k: v.hex() if isinstance(v, bytes) else v for k, v in dataclasses.asdict(receipt).items()
    }


def _receipt_from_json(value: dict[str, Any]) -> Receipt:
    return Receipt(**{k: bytes.fromhex(v) if k.endswith("_hash") else v for k, v in value.items()})


def build_vectors() -> dict[str, Any]:
    """Every vector of receipts.json, computed by the code under test."""
    receipts = []
    for name, note, receipt in [
        ("receipt-first", "seq 1 of the pair: prev_hash is 32 zero bytes", _receipt_1()),
        ("receipt-next", "seq 2: prev_hash is receipt-first's hash; 300 units", _receipt_2()),
    ]:
        receipts.append(
            {
                "name": name,
                "note": note,
                "receipt": _receipt_json(receipt),
                "payload_hex": encode_receipt(receipt).hex(),
                "receipt_hash_hex": receipt_hash(receipt).hex(),
                "envelope_hex": sign_receipt(receipt, KEYS["A"]).hex(),
            }
        )
    ack = _acknowledgement()
    first_payload = encode_receipt(_receipt_1())
    envelope = bytearray(sign_receipt(_receipt_1(), KEYS["A"]))
    envelope[-1] ^= 0x01
    invalid = [
        ("flipped-signature-bit", bytes(envelope), "forged_receipt"),
        (
            "signed-by-the-caller",
            _raw_envelope(first_payload, KEYS["B"].sign(RECEIPT_DOMAIN + first_payload)),
            "forged_receipt",
        ),
        (
            "signed-as-a-record",
            _raw_envelope(first_payload, KEYS["A"].sign(RECORD_DOMAIN + first_payload)),
            "forged_receipt",
        ),
        (
            "seq-as-uint8",
            _resigned(first_payload.replace(b"\xa3seq\x01", b"\xa3seq\xcc\x01")),
            "malformed_receipt",
        ),
    ]
    return {
        "receipt_domain_hex": RECEIPT_DOMAIN.hex(),
        "acknowledgement_domain_hex": ACKNOWLEDGEMENT_DOMAIN.hex(),
        "tensor_hash_domain_hex": TENSOR_HASH_DOMAIN.hex(),
        "max_receipt_size": MAX_RECEIPT_SIZE,
        "max_acknowledgement_size": MAX_ACKNOWLEDGEMENT_SIZE,
        "keys": {"provider": "A", "caller": "B", "from": "records_v1.json"},
        "tensor_hashes": [
            {
                "name": name,
                "note": note,
                "tensors": spec,
                "hash_hex": tensor_hash(_tensors(spec)).hex(),
            }
            for name, note, spec in TENSOR_SETS
        ],
        "receipts": receipts,
        "acknowledgements": [
            {
                "name": "acknowledgement-2",
                "note": "the caller acknowledges receipts 1 and 2: 300.0015 units",
                "acknowledgement": {
                    "caller": ack.caller,
                    "provider": ack.provider,
                    "seq": ack.seq,
                    "total_units": ack.total_units,
                    "last_receipt_hash": ack.last_receipt_hash.hex(),
                },
                "payload_hex": encode_acknowledgement(ack).hex(),
                "envelope_hex": sign_acknowledgement(ack, KEYS["B"]).hex(),
            }
        ],
        "invalid_receipts": [
            {"name": name, "envelope_hex": data.hex(), "error": error}
            for name, data, error in invalid
        ],
    }


def _raw_envelope(payload: bytes, signature: bytes) -> bytes:
    data: bytes = msgpack.packb([payload, signature], use_bin_type=True)
    return data


def _resigned(payload: bytes, key: str = "A", domain: bytes = RECEIPT_DOMAIN) -> bytes:
    """A correctly signed envelope of any payload: only its content can be wrong."""
    return _raw_envelope(payload, KEYS[key].sign(domain + payload))


VECTORS: dict[str, Any] = json.loads(VECTOR_FILE.read_text()) if VECTOR_FILE.exists() else {}


# Golden vectors


def test_vector_file_is_what_this_file_writes() -> None:
    assert build_vectors() == VECTORS, "run: python tests/test_receipts.py --write"


@pytest.mark.parametrize("vector", VECTORS.get("tensor_hashes", []), ids=lambda v: v["name"])
def test_golden_tensor_hashes(vector: dict[str, Any]) -> None:
    assert tensor_hash(_tensors(vector["tensors"])).hex() == vector["hash_hex"]


def test_golden_empty_tensor_hash_is_documented_bytes() -> None:
    # domain | uvarint(0 tensors)
    assert tensor_hash({}) == hashlib.sha256(b"p2pnet tensors v1\x00\x00").digest()


def test_golden_iris_request_hash_is_the_documented_bytes() -> None:
    features = np.array([[5.1, 3.5, 1.4, 0.2]], dtype="<f4")
    expected = (
        b"p2pnet tensors v1\x00"
        + b"\x01"  # one tensor
        + b"\x0bfloat_input"
        + b"\x07float32"
        + b"\x02"
        + (1).to_bytes(8, "little")
        + (4).to_bytes(8, "little")
        + features.tobytes()
    )
    assert tensor_hash({"float_input": features}) == hashlib.sha256(expected).digest()


@pytest.mark.parametrize("vector", VECTORS.get("receipts", []), ids=lambda v: v["name"])
def test_golden_receipts_both_ways(vector: dict[str, Any]) -> None:
    receipt = _receipt_from_json(vector["receipt"])
    assert encode_receipt(receipt).hex() == vector["payload_hex"]
    assert receipt_hash(receipt).hex() == vector["receipt_hash_hex"]
    assert sign_receipt(receipt, KEYS["A"]).hex() == vector["envelope_hex"]
    assert decode_receipt(bytes.fromhex(vector["payload_hex"])) == receipt
    envelope = bytes.fromhex(vector["envelope_hex"])
    assert verify_receipt(envelope, provider=PROVIDER, caller=CALLER) == receipt


@pytest.mark.parametrize("vector", VECTORS.get("acknowledgements", []), ids=lambda v: v["name"])
def test_golden_acknowledgements_both_ways(vector: dict[str, Any]) -> None:
    fields = dict(vector["acknowledgement"])
    fields["last_receipt_hash"] = bytes.fromhex(fields["last_receipt_hash"])
    ack = Acknowledgement(**fields)
    assert ack == _acknowledgement()
    assert encode_acknowledgement(ack).hex() == vector["payload_hex"]
    assert sign_acknowledgement(ack, KEYS["B"]).hex() == vector["envelope_hex"]
    assert decode_acknowledgement(bytes.fromhex(vector["payload_hex"])) == ack
    envelope = bytes.fromhex(vector["envelope_hex"])
    assert verify_acknowledgement(envelope, caller=CALLER, provider=PROVIDER) == ack


@pytest.mark.parametrize("vector", VECTORS.get("invalid_receipts", []), ids=lambda v: v["name"])
def test_golden_invalid_receipts_raise_their_code(vector: dict[str, Any]) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(bytes.fromhex(vector["envelope_hex"]))
    assert info.value.code == vector["error"]


def test_golden_vectors_are_in_the_protocol_doc() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    flat = doc.replace("\n", "")
    assert "## Usage receipts" in doc
    for key in ("receipt_domain_hex", "acknowledgement_domain_hex", "tensor_hash_domain_hex"):
        assert VECTORS[key] in flat, key
    for vector in VECTORS["receipts"] + VECTORS["acknowledgements"]:
        assert vector["envelope_hex"] in flat, vector["name"]
    for vector in VECTORS["tensor_hashes"]:
        assert vector["hash_hex"] in flat, vector["name"]
    for error in ReceiptError.__subclasses__():
        assert f"`{error.code}`" in doc, error.code


def test_errors_are_the_signers_fault_with_stable_codes() -> None:
    codes = {cls.__name__: cls.code for cls in ReceiptError.__subclasses__()}
    assert codes == {
        "MalformedReceiptError": "malformed_receipt",
        "ForgedReceiptError": "forged_receipt",
        "ReplayedReceiptError": "replayed_receipt",
        "ReceiptChainError": "receipt_chain",
        "ForeignReceiptError": "foreign_receipt",
        "ReceiptMismatchError": "receipt_mismatch",
    }
    assert issubclass(ReceiptError, PeerError) and ReceiptError.fault == "peer"


# Round trips


hashes = st.binary(min_size=32, max_size=32)
texts = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40)


@st.composite
def signed_receipts(draw: st.DrawFn) -> tuple[Receipt, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.from_private_bytes(draw(st.binary(min_size=32, max_size=32)))
    seq = draw(st.integers(1, (1 << 64) - 1))
    receipt = Receipt(
        provider=peer_id_from_public_key(key.public_key().public_bytes_raw()),
        caller=draw(st.sampled_from([CALLER, PROVIDER])),
        model_id=model_id_of_bytes(draw(st.binary(max_size=8))),
        record_hash=draw(hashes),
        request_hash=draw(hashes),
        result_hash=draw(hashes),
        runtime=draw(texts),
        units=draw(st.integers(0, (1 << 63) - 1)),
        seq=seq,
        prev_hash=ZERO_HASH if seq == 1 else draw(hashes),
        issued_at=draw(st.integers(0, (1 << 63) - 1)),
    )
    return receipt, key


@settings(max_examples=200, deadline=None)
@given(signed_receipts())
def test_receipt_round_trip(signed: tuple[Receipt, Ed25519PrivateKey]) -> None:
    receipt, key = signed
    payload = encode_receipt(receipt)
    assert decode_receipt(payload) == receipt
    envelope = sign_receipt(receipt, key)
    assert sign_receipt(receipt, key) == envelope  # Ed25519 is deterministic
    assert len(envelope) <= MAX_RECEIPT_SIZE
    assert verify_receipt(envelope, provider=receipt.provider) == receipt
    assert receipt_hash(receipt) == hashlib.sha256(payload).digest()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, (1 << 64) - 1),
    st.integers(0, (1 << 63) - 1),
    hashes,
    st.sampled_from([(CALLER, PROVIDER), (PROVIDER, CALLER)]),
)
def test_acknowledgement_round_trip(
    seq: int, total: int, last: bytes, pair: tuple[str, str]
) -> None:
    caller, provider = pair
    ack = Acknowledgement(
        caller=caller, provider=provider, seq=seq, total_units=total, last_receipt_hash=last
    )
    assert decode_acknowledgement(encode_acknowledgement(ack)) == ack
    key = KEYS["B"] if caller == CALLER else KEYS["A"]
    envelope = sign_acknowledgement(ack, key)
    assert len(envelope) <= MAX_ACKNOWLEDGEMENT_SIZE
    assert verify_acknowledgement(envelope, caller=caller, provider=provider) == ack


# Signatures: forged, foreign, domain separated


def test_only_the_provider_signs_its_receipt_and_only_the_caller_its_acknowledgement() -> None:
    with pytest.raises(ValueError, match=f"the key is peer {CALLER}'s"):
        sign_receipt(_receipt_1(), KEYS["B"])
    with pytest.raises(ValueError, match=f"the key is peer {PROVIDER}'s"):
        sign_acknowledgement(_acknowledgement(), KEYS["A"])


@given(st.data())
def test_any_bit_flip_in_a_signature_is_forged(data: st.DataObject) -> None:
    bit = data.draw(st.integers(0, 64 * 8 - 1))
    for envelope, verify in [
        (bytearray(sign_receipt(_receipt_1(), KEYS["A"])), verify_receipt),
        (bytearray(sign_acknowledgement(_acknowledgement(), KEYS["B"])), verify_acknowledgement),
    ]:
        envelope[len(envelope) - 64 + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ForgedReceiptError, match="does not verify"):
            verify(bytes(envelope))


@given(st.data())
def test_any_change_to_a_signed_receipt_is_rejected(data: st.DataObject) -> None:
    envelope = bytearray(sign_receipt(_receipt_1(), KEYS["A"]))
    i = data.draw(st.integers(0, len(envelope) - 1))
    envelope[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ReceiptError):
        verify_receipt(bytes(envelope))


def test_signatures_are_domain_separated() -> None:
    receipt_payload = encode_receipt(_receipt_1())
    ack_payload = encode_acknowledgement(_acknowledgement())
    for domain in (b"", RECORD_DOMAIN, ACKNOWLEDGEMENT_DOMAIN):
        with pytest.raises(ForgedReceiptError):
            verify_receipt(_resigned(receipt_payload, "A", domain))
    for domain in (b"", RECORD_DOMAIN, RECEIPT_DOMAIN):
        with pytest.raises(ForgedReceiptError):
            verify_acknowledgement(_resigned(ack_payload, "B", domain))
    domains = {RECORD_DOMAIN, RECEIPT_DOMAIN, ACKNOWLEDGEMENT_DOMAIN, TENSOR_HASH_DOMAIN}
    assert len(domains) == 4
    # None is a prefix of another, so no signed message can be read under two domains.
    assert not any(a != b and b.startswith(a) for a in domains for b in domains)


def test_receipt_of_another_pair_is_foreign() -> None:
    envelope = sign_receipt(_receipt_1(), KEYS["A"])
    with pytest.raises(ForeignReceiptError, match=f"for provider {PROVIDER}, not {CALLER}"):
        verify_receipt(envelope, provider=CALLER)
    with pytest.raises(ForeignReceiptError, match=f"of caller {CALLER}, not {PROVIDER}"):
        verify_receipt(envelope, caller=PROVIDER)
    ack = sign_acknowledgement(_acknowledgement(), KEYS["B"])
    with pytest.raises(ForeignReceiptError):
        verify_acknowledgement(ack, caller=PROVIDER)
    with pytest.raises(ForeignReceiptError):
        verify_acknowledgement(ack, provider=CALLER)


def test_small_order_key_cannot_sign_receipts() -> None:
    weak_peer = peer_id_from_public_key(bytes([1]) + bytes(31))
    receipt = dataclasses.replace(_receipt_1(), provider=weak_peer)
    envelope = _raw_envelope(encode_receipt(receipt), bytes([1]) + bytes(63))
    with pytest.raises(ForgedReceiptError, match="small-order"):
        verify_receipt(envelope)


# Malformed, truncated, oversized


def test_size_is_checked_first_from_the_length_alone() -> None:
    envelope = sign_receipt(_receipt_1(), KEYS["A"])
    verify_receipt(envelope, max_size=len(envelope))
    with pytest.raises(MalformedReceiptError, match=f"{len(envelope)} bytes; .* at most 100"):
        verify_receipt(envelope, max_size=100)
    with pytest.raises(MalformedReceiptError, match="at most 1024"):
        verify_receipt(b"\xc1" * (MAX_RECEIPT_SIZE + 1))
    with pytest.raises(MalformedReceiptError, match="at most 512"):
        verify_acknowledgement(b"\xc1" * (MAX_ACKNOWLEDGEMENT_SIZE + 1))
    with pytest.raises(ValueError, match="receivers accept at most 100"):
        sign_receipt(_receipt_1(), KEYS["A"], max_size=100)


def test_every_truncation_is_malformed() -> None:
    for envelope, verify in [
        (sign_receipt(_receipt_1(), KEYS["A"]), verify_receipt),
        (sign_acknowledgement(_acknowledgement(), KEYS["B"]), verify_acknowledgement),
    ]:
        for end in range(len(envelope)):
            with pytest.raises(MalformedReceiptError):
                verify(envelope[:end])


def _head(receipt: Receipt | None = None) -> dict[str, Any]:
    head: dict[str, Any] = msgpack.unpackb(encode_receipt(receipt or _receipt_1()))
    return head


def _with(**changes: Any) -> dict[str, Any]:
    return _head() | changes


def _without(key: str) -> dict[str, Any]:
    head = _head()
    del head[key]
    return head


MALFORMED_RECEIPTS: list[tuple[object, str]] = [
    ([1, 2], "receipt is a tuple, not a map"),
    (_with(v=2), "version 2 is not supported"),
    (_without("units"), "lacks key 'units'"),
    (_with(extra=1), "has unknown key 'extra'"),
    ({"v": 1, **dict(reversed(list(_without("v").items())))}, "keys out of order"),
    (_with(record_hash=bytes(31)), "record_hash must be 32 bytes .* not 31 bytes"),
    (_with(request_hash=bytes(33)), "request_hash must be 32 bytes"),
    (_with(result_hash="00" * 32), "result_hash must be 32 bytes .* not str"),
    (_with(prev_hash=b"\x01" * 32), r"first receipt \(seq 1\) must be 32 zero bytes"),
    (_with(units=-1), "units is -1"),
    (_with(units=1.5), "units must be an int, not float"),
    (_with(units=True), "units must be an int, not bool"),
    (_with(seq=0), "seq is 0; it must be in 1.."),
    (_with(issued_at=1 << 63), "issued_at is 9223372036854775808"),
    (_with(provider="12D3KooW"), "provider: .* is not a peer ID"),
    (_with(caller=b"x"), "caller must be a peer ID str, not bytes"),
    (_with(model="not a cid"), "model_id: 'not a cid' is not a model ID"),
    (_with(runtime="\x1b[2J"), "runtime .* holds a control character"),
    (_with(runtime="x" * 129), "runtime is 129 bytes"),
]


@pytest.mark.parametrize(("head", "error"), MALFORMED_RECEIPTS)
def test_malformed_receipts_are_rejected_precisely_even_when_signed(
    head: object, error: str
) -> None:
    payload = msgpack.packb(head, use_bin_type=True)
    with pytest.raises(MalformedReceiptError, match=error):
        verify_receipt(_resigned(payload))


def test_non_canonical_receipts_are_rejected_even_when_signed() -> None:
    payload = encode_receipt(_receipt_2())
    for old, new in [
        (b"\xa3seq\x02", b"\xa3seq\xcc\x02"),  # seq as uint8, not fixint
        (b"\xa5units\xce", b"\xa5units\xcf\x00\x00\x00\x00"),  # units as uint64
        (b"\xc4\x20", b"\xc5\x00\x20"),  # a hash as bin16
        (b"\x8c\xa1v", b"\xde\x00\x0c\xa1v"),  # the receipt as map16
    ]:
        assert old in payload, old
        with pytest.raises(MalformedReceiptError, match="not in canonical form"):
            verify_receipt(_resigned(payload.replace(old, new, 1)))
    with pytest.raises(MalformedReceiptError, match="envelope is not in canonical form"):
        verify_receipt(sign_receipt(_receipt_2(), KEYS["A"]).replace(b"\xc4\x40", b"\xc5\x00\x40"))


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        (b"", "not valid msgpack"),
        (msgpack.packb([b"x"]), "array of 2 byte strings"),
        (msgpack.packb([b"x", b"y", b"z"]), "array of 2 byte strings"),
        (msgpack.packb(["x", bytes(64)]), "array of 2 byte strings"),
        (msgpack.packb([b"x", bytes(63)]), "63-byte signature"),
    ],
)
def test_malformed_envelopes(envelope: bytes, error: str) -> None:
    with pytest.raises(MalformedReceiptError, match=error):
        verify_receipt(envelope)
    with pytest.raises(MalformedReceiptError, match=error.replace("receipt", "acknowledgement")):
        verify_acknowledgement(envelope)


def test_malformed_acknowledgements_even_when_signed() -> None:
    head: dict[str, Any] = msgpack.unpackb(encode_acknowledgement(_acknowledgement()))
    for change, error in [
        ({"seq": 0}, "seq is 0"),
        ({"total_units": -5}, "total_units is -5"),
        ({"last_hash": b""}, "last_receipt_hash must be 32 bytes"),
        ({"v": 0}, "version 0 is not supported"),
        ({"extra": 1}, "unknown key 'extra'"),
    ]:
        payload = msgpack.packb(head | change, use_bin_type=True)
        with pytest.raises(MalformedReceiptError, match=error):
            verify_acknowledgement(_resigned(payload, "B", ACKNOWLEDGEMENT_DOMAIN))


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_receipt_errors(data: bytes) -> None:
    for decode in (verify_receipt, verify_acknowledgement, decode_receipt, decode_acknowledgement):
        try:
            decode(data)
        except ReceiptError:
            pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=300)
@given(msgpack_values, st.sampled_from(list(_head())))
def test_random_fields_in_a_signed_receipt_raise_only_malformed(value: object, key: str) -> None:
    for head in (value, _with(**{key: value})):
        try:
            verify_receipt(_resigned(msgpack.packb(head, use_bin_type=True)))
        except MalformedReceiptError:
            pass


# The chain of a pair


def _chain_of(n: int, units: int = 10) -> list[Receipt]:
    receipts = []
    prev = ZERO_HASH
    for seq in range(1, n + 1):
        receipt = dataclasses.replace(_receipt_1(), seq=seq, prev_hash=prev, units=units * seq)
        receipts.append(receipt)
        prev = receipt_hash(receipt)
    return receipts


def test_chain_accepts_each_next_receipt_and_keeps_the_running_total() -> None:
    chain = ReceiptChain(PROVIDER, CALLER)
    assert chain.next_receipt_fields() == (1, ZERO_HASH)
    receipts = _chain_of(5)
    for receipt in receipts:
        before = chain
        chain = chain.check_next(receipt)
        assert before.last_seq == receipt.seq - 1  # checking changes nothing
    assert chain.last_seq == 5
    assert chain.last_hash == receipt_hash(receipts[-1])
    assert chain.total_units == 10 * (1 + 2 + 3 + 4 + 5)
    assert chain.next_receipt_fields() == (6, receipt_hash(receipts[-1]))
    ack = chain.acknowledgement()
    assert (ack.seq, ack.total_units, ack.last_receipt_hash) == (5, 150, chain.last_hash)


def test_replayed_receipts_are_named() -> None:
    receipts = _chain_of(3)
    chain = ReceiptChain(PROVIDER, CALLER)
    for receipt in receipts:
        chain = chain.check_next(receipt)
    for old in receipts:
        with pytest.raises(ReplayedReceiptError, match=f"receipt {old.seq} .* after receipt 3"):
            chain.check_next(old)


def test_gaps_and_reordering_are_chain_errors() -> None:
    receipts = _chain_of(4)
    chain = ReceiptChain(PROVIDER, CALLER).check_next(receipts[0])
    with pytest.raises(ReceiptChainError, match=r"receipts 2\.\.2 are missing or out of order"):
        chain.check_next(receipts[2])
    with pytest.raises(ReceiptChainError, match=r"receipts 2\.\.3 are missing"):
        chain.check_next(receipts[3])


def test_broken_link_is_a_chain_error() -> None:
    receipts = _chain_of(2)
    chain = ReceiptChain(PROVIDER, CALLER).check_next(receipts[0])
    forked = dataclasses.replace(receipts[1], prev_hash=bytes([7]) * 32)
    with pytest.raises(ReceiptChainError, match="does not follow receipt 1: its prev_hash 0707"):
        chain.check_next(forked)
    # A rewritten first receipt breaks the link of the second.
    rewritten = dataclasses.replace(receipts[0], units=receipts[0].units + 1)
    chain = ReceiptChain(PROVIDER, CALLER).check_next(rewritten)
    with pytest.raises(ReceiptChainError):
        chain.check_next(receipts[1])


def test_receipt_of_another_pair_does_not_join_the_chain() -> None:
    chain = ReceiptChain(PROVIDER, PROVIDER)
    with pytest.raises(ForeignReceiptError, match=f"of caller {CALLER}"):
        chain.check_next(_receipt_1())
    with pytest.raises(ForeignReceiptError, match=f"for provider {PROVIDER}, not {CALLER}"):
        ReceiptChain(CALLER, CALLER).check_next(_receipt_1())


def test_empty_chain_has_nothing_to_acknowledge() -> None:
    with pytest.raises(ValueError, match="seq is 0"):
        ReceiptChain(PROVIDER, CALLER).acknowledgement()


@settings(max_examples=50, deadline=None)
@given(st.permutations(range(6)))
def test_only_the_order_sent_is_accepted(order: list[int]) -> None:
    receipts = _chain_of(6)
    chain = ReceiptChain(PROVIDER, CALLER)
    for i in order:
        try:
            chain = chain.check_next(receipts[i])
        except (ReplayedReceiptError, ReceiptChainError):
            assert i != chain.last_seq
        else:
            assert i == chain.last_seq - 1
    assert chain.last_seq <= 6


# Acknowledgements due


@pytest.mark.parametrize(
    ("calls", "units", "every_calls", "every_units", "due"),
    [
        (0, 0, 1, 1, False),  # nothing since the last one
        (9, 0, 10, 0, False),
        (10, 0, 10, 0, True),
        (1, 5_000_000, 0, 5_000_000, True),
        (1, 4_999_999, 100, 5_000_000, False),
        (100, 0, 100, 5_000_000, True),
        (1_000, 10**12, 0, 0, False),  # both off: never
    ],
)
def test_acknowledgement_due(
    calls: int, units: int, every_calls: int, every_units: int, due: bool
) -> None:
    assert acknowledgement_due(calls, units, every_calls, every_units) is due


# Checking a receipt against the call


def _call(**changes: Any) -> dict[str, Any]:
    first = _receipt_1()
    expected: dict[str, Any] = {
        "caller": first.caller,
        "provider": first.provider,
        "model_id": first.model_id,
        "record_hash": first.record_hash,
        "request_hash": first.request_hash,
        "result_hash": first.result_hash,
        "max_units": first.units,
    }
    return expected | changes


def test_receipt_matching_the_call_passes() -> None:
    check_receipt_for_call(_receipt_1(), **_call())
    check_receipt_for_call(_receipt_1(), **_call(max_units=10**9))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"model_id": model_id_of_bytes(b"other")}, "model bafkrei.*, not bafkrei"),
        ({"record_hash": bytes(32)}, "record_hash .* is not that of the record"),
        ({"request_hash": bytes(32)}, "request_hash .* is not that of the request sent"),
        ({"result_hash": bytes(32)}, "result_hash .* is not that of the result received"),
        ({"max_units": 1_499}, "1500 micro-units charged, over the 1499 the price allows"),
        (
            {"request_hash": bytes(32), "max_units": 0},
            "request_hash .*; 1500 micro-units charged",
        ),
    ],
)
def test_receipt_not_matching_the_call_says_what_differs(
    changes: dict[str, Any], error: str
) -> None:
    with pytest.raises(ReceiptMismatchError, match=error):
        check_receipt_for_call(_receipt_1(), **_call(**changes))


def test_receipt_for_another_caller_or_provider_is_foreign() -> None:
    with pytest.raises(ForeignReceiptError):
        check_receipt_for_call(_receipt_1(), **_call(caller=PROVIDER))
    with pytest.raises(ForeignReceiptError):
        check_receipt_for_call(_receipt_1(), **_call(provider=CALLER))


def test_a_tampered_result_is_caught_by_its_hash() -> None:
    outputs = _tensors(TENSOR_SETS[2][2])
    tampered = dict(outputs, output_label=np.array([2], dtype=np.int64))
    with pytest.raises(ReceiptMismatchError, match="result_hash"):
        check_receipt_for_call(_receipt_1(), **_call(result_hash=tensor_hash(tampered)))


# Tensor hashes


def test_tensor_hash_ignores_insertion_order() -> None:
    spec = TENSOR_SETS[3][2]
    tensors = _tensors(spec)
    assert tensor_hash(tensors) == tensor_hash(dict(reversed(list(tensors.items()))))


def test_tensor_hash_orders_names_by_utf8_bytes() -> None:
    a = np.zeros(1, np.float32)
    # "é" (c3 a9) sorts after "z" (7a) by bytes, as by code points.
    assert tensor_hash({"é": a, "z": a + 1}) == tensor_hash({"z": a + 1, "é": a})


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(["<f4", ">f4", "<i8", ">i8", "<f2", ">u2", "bool", "u1"]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    )
)
def test_tensor_hash_ignores_byte_order_and_strides(array: np.ndarray) -> None:
    little = array.astype(array.dtype.newbyteorder("<"))
    expected = tensor_hash({"x": little})
    assert tensor_hash({"x": array}) == expected
    assert tensor_hash({"x": array.astype(array.dtype.newbyteorder(">"))}) == expected
    if array.ndim:  # Fortran order (0-d arrays have none), and a strided view
        assert tensor_hash({"x": np.asfortranarray(array)}) == expected
        assert tensor_hash({"x": np.repeat(array, 2, axis=-1)[..., ::2]}) == expected


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)),
    st.data(),
)
def test_tensor_hash_changes_with_any_one_element(array: np.ndarray, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, array.size - 1))
    changed = array.copy().reshape(-1)
    raw = changed.view(np.uint32)
    raw[i] ^= 1 << data.draw(st.integers(0, 31))
    assert tensor_hash({"x": array}) != tensor_hash({"x": changed.reshape(array.shape)})


def test_tensor_hash_binds_name_dtype_and_shape() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = tensor_hash({"x": x})
    others = [
        tensor_hash({"y": x}),
        tensor_hash({"x": x.reshape(3, 2)}),
        tensor_hash({"x": x.reshape(6)}),
        tensor_hash({"x": x.view(np.int32)}),
        tensor_hash({"x": x, "y": np.zeros(0, np.float32)}),
        tensor_hash({"x": x[:1], "y": x[1:]}),
    ]
    assert len({base, *others}) == 1 + len(others)
    # Strings are length-prefixed: moving a character between elements changes the hash.
    assert tensor_hash({"s": np.array(["ab", "c"], dtype=object)}) != tensor_hash(
        {"s": np.array(["a", "bc"], dtype=object)}
    )
    # Unicode and object arrays of the same strings are the same string tensor.
    assert tensor_hash({"s": np.array(["ab", "c"])}) == tensor_hash(
        {"s": np.array(["ab", "c"], dtype=object)}
    )


def test_tensor_hash_refuses_what_the_codec_cannot_carry() -> None:
    with pytest.raises(InvalidInputError, match="complex128"):
        tensor_hash({"x": np.zeros(2, np.complex128)})
    with pytest.raises(InvalidInputError, match="not a str of valid Unicode"):
        tensor_hash({1: np.zeros(1)})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="not a str of valid Unicode"):
        tensor_hash({"\udc80": np.zeros(1)})
    with pytest.raises(P2PNetError):
        tensor_hash({"x": np.array([1, None], dtype=object)})


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=$PWD python tests/test_receipts.py --write")
    VECTOR_FILE.write_text(json.dumps(build_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {VECTOR_FILE}")
