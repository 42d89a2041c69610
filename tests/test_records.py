"""Signed capability records: golden vectors both ways, round trips, every rejection path."""

import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.conformance.golden import load_vectors
from p2pnet.core.generation import GenerationCard
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.pricing import FREE, MAX_PRICE_PART, Price
from p2pnet.core.records import (
    DOMAIN,
    MAX_RECORD_SIZE,
    CapabilityRecord,
    decode_record,
    encode_record,
    sign_record,
    supersedes,
    verify_record,
)
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import (
    ExpiredRecordError,
    ForgedRecordError,
    InvalidRecordError,
    MalformedRecordError,
    PayloadTooLargeError,
    RecordKeyMismatchError,
    RecordTooLargeError,
    StaleRecordError,
)

VECTORS = load_vectors("records_v1")
KEYS = {
    name: Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seed_hex"]))
    for name, key in VECTORS["keys"].items()
}
PEER_A = VECTORS["keys"]["A"]["peer_id"]
PEER_B = VECTORS["keys"]["B"]["peer_id"]


def _spec(value: dict[str, Any]) -> TensorSpec:
    return TensorSpec(value["name"], value["dtype"], tuple(value["shape"]))


def _record(value: dict[str, Any]) -> CapabilityRecord:
    return CapabilityRecord(
        model_id=value["model_id"],
        peer_id=value["peer_id"],
        schema=ModelSchema(
            tuple(_spec(t) for t in value["schema"]["inputs"]),
            tuple(_spec(t) for t in value["schema"]["outputs"]),
        ),
        tasks=tuple(value["tasks"]),
        name=value["name"],
        version=value["version"],
        runtime=value["runtime"],
        addrs=tuple(value["addrs"]),
        seq=value["seq"],
        expires_at=value["expires_at"],
    )


SENTIMENT = _record(VECTORS["vectors"][0]["record"])
NOW = SENTIMENT.expires_at - 3600


def _head(record: CapabilityRecord = SENTIMENT) -> dict[str, Any]:
    """The payload map of ``record``, for tests to alter."""
    head: dict[str, Any] = msgpack.unpackb(encode_record(record))
    return head


def _signed(head: object, key: str = "A") -> bytes:
    """An envelope of any payload map, correctly signed: only its structure can be wrong."""
    payload = msgpack.packb(head, use_bin_type=True)
    signature = KEYS[key].sign(DOMAIN + payload)
    public_key = KEYS[key].public_key().public_bytes_raw()
    envelope: bytes = msgpack.packb([payload, public_key, signature], use_bin_type=True)
    return envelope


# Golden vectors


def test_domain_is_the_documented_bytes() -> None:
    assert DOMAIN.hex() == VECTORS["domain_hex"]
    assert MAX_RECORD_SIZE == VECTORS["max_size"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_record_encodes_and_signs_exactly(vector: dict[str, Any]) -> None:
    record = _record(vector["record"])
    assert encode_record(record).hex() == vector["payload_hex"]
    assert sign_record(record, KEYS[vector["signer"]]).hex() == vector["envelope_hex"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_record_decodes_and_verifies_exactly(vector: dict[str, Any]) -> None:
    record = _record(vector["record"])
    assert decode_record(bytes.fromhex(vector["payload_hex"])) == record
    assert verify_record(bytes.fromhex(vector["envelope_hex"]), now=vector["now"]) == record


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_golden_invalid_envelopes_raise_their_code(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecordError) as info:
        verify_record(bytes.fromhex(vector["envelope_hex"]), now=vector["now"])
    assert info.value.code == vector["error"]


def test_golden_vectors_are_in_the_protocol_doc() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    flat = doc.replace("\n", "")
    assert "## Capability records" in doc
    assert VECTORS["domain_hex"] in flat
    for key in VECTORS["keys"].values():
        assert key["peer_id"] in doc and key["public_key_hex"] in flat
    for vector in VECTORS["vectors"]:
        assert vector["envelope_hex"] in flat, vector["name"]
    for code in ("record_too_large", "malformed_record", "record_key_mismatch", "forged_record"):
        assert f"`{code}`" in doc


def _text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(exclude_categories=("Cc", "Cs")), min_size=min_size, max_size=max_size
    )


dims = st.one_of(st.none(), st.integers(0, (1 << 63) - 1), _text(10, min_size=1))
specs = st.lists(
    st.builds(
        TensorSpec,
        _text(20, min_size=1),
        st.sampled_from(["float32", "int64", "string", "bool", "float16", "uint8"]),
        st.lists(dims, max_size=4).map(tuple),
    ),
    max_size=4,
    unique_by=lambda t: t.name,
).map(tuple)


prices = st.one_of(
    st.just(FREE),
    st.builds(
        Price,
        st.integers(0, MAX_PRICE_PART),
        st.integers(0, MAX_PRICE_PART),
        st.integers(0, MAX_PRICE_PART),
    ),
)


cards = st.builds(
    GenerationCard,
    st.integers(1, 1 << 24),
    st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=16).map(tuple),
    st.text(max_size=20).map(lambda t: t + "{content}" + t),
    st.text(max_size=40),
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
)


@st.composite
def signed_records(draw: st.DrawFn) -> tuple[CapabilityRecord, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.from_private_bytes(draw(st.binary(min_size=32, max_size=32)))
    record = CapabilityRecord(
        model_id=model_id_of_bytes(draw(st.binary(max_size=8))),
        peer_id=peer_id_from_public_key(key.public_key().public_bytes_raw()),
        schema=ModelSchema(draw(specs), draw(specs)),
        tasks=tuple(
            draw(
                st.lists(
                    st.from_regex(r"[a-z0-9][a-z0-9-]{0,63}", fullmatch=True),
                    max_size=16,
                    unique=True,
                )
            )
        ),
        name=draw(_text(32)),
        version=draw(_text(16)),
        runtime=draw(_text(16)),
        addrs=tuple(
            draw(st.lists(st.from_regex(r"/[!-~]{0,60}", fullmatch=True), max_size=16, unique=True))
        ),
        seq=draw(st.integers(0, (1 << 64) - 1)),
        expires_at=draw(st.integers(1, (1 << 63) - 1)),
        price=draw(prices),
        generation=draw(st.none() | cards),
    )
    return record, key


@settings(max_examples=200, deadline=None)
@given(signed_records())
def test_round_trip(signed: tuple[CapabilityRecord, Ed25519PrivateKey]) -> None:
    record, key = signed
    payload = encode_record(record)
    assert decode_record(payload) == record
    assert encode_record(decode_record(payload)) == payload
    envelope = sign_record(record, key)
    assert sign_record(record, key) == envelope  # Ed25519 is deterministic
    assert verify_record(envelope, now=record.expires_at - 1) == record


# Rejections, in the order verify_record checks them


def test_too_large_is_checked_first_from_the_length_alone() -> None:
    envelope = bytes.fromhex(VECTORS["vectors"][0]["envelope_hex"])
    verify_record(envelope, now=NOW, max_size=len(envelope))
    with pytest.raises(RecordTooLargeError, match=f"{len(envelope)} bytes; .* at most 100"):
        verify_record(envelope, now=NOW, max_size=100)
    with pytest.raises(RecordTooLargeError):
        verify_record(b"\xc1" * (MAX_RECORD_SIZE + 1), now=NOW)


def test_signer_refuses_what_receivers_would_refuse() -> None:
    with pytest.raises(PayloadTooLargeError, match="receivers accept at most 300"):
        sign_record(SENTIMENT, KEYS["A"], max_size=300)


def _envelope(parts: object) -> bytes:
    data: bytes = msgpack.packb(parts, use_bin_type=True)
    return data


GOOD_PAYLOAD = bytes.fromhex(VECTORS["vectors"][0]["payload_hex"])
GOOD_KEY = bytes.fromhex(VECTORS["keys"]["A"]["public_key_hex"])


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (_envelope([GOOD_PAYLOAD, GOOD_KEY, bytes(64)]) + b"\x00", "not valid msgpack"),
        (_envelope({"payload": GOOD_PAYLOAD}), "array of 3 byte strings"),
        (_envelope([GOOD_PAYLOAD, GOOD_KEY]), "array of 3 byte strings"),
        (_envelope([GOOD_PAYLOAD.hex(), GOOD_KEY, bytes(64)]), "array of 3 byte strings"),
        (_envelope([GOOD_PAYLOAD, GOOD_KEY[:31], bytes(64)]), "31-byte key"),
        (_envelope([GOOD_PAYLOAD, GOOD_KEY, bytes(63)]), "63-byte signature"),
        (  # the key as bin 16 instead of bin 8
            _envelope([GOOD_PAYLOAD, b"", bytes(64)]).replace(
                b"\xc4\x00", b"\xc5\x00\x20" + GOOD_KEY
            ),
            "envelope is not in canonical form",
        ),
    ],
)
def test_malformed_envelopes(envelope: bytes, error: str) -> None:
    with pytest.raises(MalformedRecordError, match=error):
        verify_record(envelope, now=NOW)


def _with(**changes: Any) -> dict[str, Any]:
    head = _head()
    head.update(changes)
    return head


def _without(key: str) -> dict[str, Any]:
    head = _head()
    del head[key]
    return head


GEN: dict[str, Any] = {
    "context": 8192,
    "eos": [2],
    "turn": "<|im_start|>{role}\n{content}<|im_end|>\n",
    "reply": "<|im_start|>assistant\n",
    "tokenizer": "sha256:" + "ab" * 32,
}


def _spec_head(inputs: list[Any]) -> dict[str, Any]:
    return _with(schema={"inputs": inputs, "outputs": []})


MALFORMED_PAYLOADS: list[tuple[object, str]] = [
    ([1, 2], "record is an array, not a map"),
    (b"x", "record is binary, not a map"),
    (_with(v=2), "version 2 is not supported"),
    (_with(v=True), "version True is not supported"),
    (_without("seq"), "lacks key 'seq'"),
    (_with(extra=1), "has unknown key 'extra'"),
    ({"v": 1, **dict(reversed(list(_without("v").items())))}, "keys out of order"),
    (_with(schema=[[], []]), "'schema' is an array, not a map"),
    (_with(schema={"inputs": []}), "'schema' lacks key 'outputs'"),
    (_spec_head([["x", "float32"]]), r"array \[name, dtype, shape\]"),
    (_spec_head([["x", "float32", [1], 4]]), r"array \[name, dtype, shape\]"),
    (_spec_head([["", "float32", []]]), r"schema inputs\[0\] name is empty"),
    (_spec_head([["x", "Float32", []]]), "dtype must be a dtype name"),
    (_spec_head([["x", "float32", [-1]]]), r"shape\[0\] is -1"),
    (_spec_head([["x", "float32", [True]]]), r"shape\[0\] must be an int, not bool"),
    (_spec_head([["x", "float32", [1.5]]]), r"shape\[0\] must be an int, not float"),
    (_spec_head([["x", "float32", [""]]]), r"shape\[0\] is empty"),
    (_spec_head([["x", "float32", [None] * 33]]), "shape has 33 entries; at most 32"),
    (_spec_head([["x", "float32", []], ["x", "int64", []]]), "name a tensor twice"),
    (_spec_head([["x", "float32", []]] * 257), "at most 256 tensors"),
    (_with(tasks=["Sentiment"]), r"tasks\[0\] 'Sentiment' is not a task tag"),
    (_with(tasks=["-x"]), "is not a task tag"),
    (_with(tasks=["a" * 65]), "is not a task tag"),
    (_with(tasks=[str(i) for i in range(17)]), "tasks has 17 entries; at most 16"),
    (_with(tasks=["a", "a"]), "tasks holds the same entry twice"),
    (_with(tasks="sentiment"), "tasks must be a tuple, not str"),
    (_with(model="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"), "model_id: .* CIDv0"),
    (_with(model="bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq "), "canonical form"),
    (_with(model="not a cid"), "model_id: 'not a cid' is not a model ID"),
    (_with(model=b"bafkrei"), "model_id must be a model ID"),
    (_with(peer=PEER_A[:-1]), "peer_id: .* is not a peer ID"),
    (_with(peer="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"), "peer_id: .* hashed key"),
    (_with(name="\x1b[2Jhello"), "name .* holds a control character"),
    (_with(name="é" * 65), "name is 130 bytes of UTF-8; at most 128"),
    (_with(version=1), "version must be a str, not int"),
    (_with(runtime="x" * 65), "runtime is 65 bytes"),
    (_with(addrs=["ip4/1.2.3.4/tcp/1"]), r"addrs\[0\] .* is not a multiaddr"),
    (_with(addrs=["/ip4/1.2.3.4/tcp/1 "]), "is not a multiaddr"),
    (_with(addrs=["/" + "a" * 256]), "is not a multiaddr"),
    (_with(addrs=[f"/ip4/10.0.0.{i}" for i in range(17)]), "addrs has 17 entries"),
    (_with(seq=-1), "seq is -1; it must be in 0..18446744073709551615"),
    (_with(seq=1.0), "seq must be an int, not float"),
    (_with(seq=None), "seq must be an int, not NoneType"),
    (_with(expires_at=1 << 63), "expires_at is 9223372036854775808"),
    (_with(seq=msgpack.ExtType(1, b"")), "seq must be an int, not ExtType"),
    (_with(gen=[8192]), "'gen' is an array, not a map"),
    (_with(gen={**GEN, "extra": 1}), "'gen' has unknown key 'extra'"),
    (_with(gen={k: v for k, v in GEN.items() if k != "eos"}), "'gen' lacks key 'eos'"),
    (_with(gen={**GEN, "context": 0}), "gen context must be in"),
    (_with(gen={**GEN, "eos": []}), "gen eos must be 1..16 token IDs"),
    (_with(gen={**GEN, "eos": [-1]}), "gen eos must be 1..16 token IDs"),
    (_with(gen={**GEN, "turn": "no content here"}), "gen turn must hold"),
    (_with(gen={**GEN, "reply": "x" * 257}), "gen reply must be text of at most 256"),
    (_with(gen={**GEN, "tokenizer": "md5:00"}), "gen tokenizer must be sha256"),
]


@pytest.mark.parametrize(("head", "error"), MALFORMED_PAYLOADS)
def test_malformed_payloads_are_rejected_precisely_even_when_signed(
    head: object, error: str
) -> None:
    envelope = _signed(head)
    with pytest.raises(MalformedRecordError, match=error):
        verify_record(envelope, now=NOW)


def test_a_generative_models_card_travels_last_and_free_records_are_unchanged() -> None:
    card = GenerationCard(8192, (2,), GEN["turn"], GEN["reply"], GEN["tokenizer"])
    generative = dataclasses.replace(SENTIMENT, generation=card)
    head = msgpack.unpackb(encode_record(generative))
    assert list(head)[-1] == "gen" and head["gen"] == GEN
    assert verify_record(sign_record(generative, KEYS["A"]), now=NOW).generation == card
    assert "gen" not in msgpack.unpackb(encode_record(SENTIMENT))


def test_non_canonical_payloads_are_rejected_even_when_signed() -> None:
    payload = GOOD_PAYLOAD
    for old, new in [
        (b"\xa3seq\x07", b"\xa3seq\xcc\x07"),  # seq as uint8, not fixint
        (b"\xa4name\xa9", b"\xa4name\xd9\x09"),  # name as str8, not fixstr
        (b"\xa5tasks\x92", b"\xa5tasks\xdc\x00\x02"),  # tasks as array16
        (b"\x8b\xa1v", b"\xde\x00\x0b\xa1v"),  # the record as map16
    ]:
        assert old in payload
        altered = payload.replace(old, new)
        envelope = _envelope([altered, GOOD_KEY, KEYS["A"].sign(DOMAIN + altered)])
        with pytest.raises(MalformedRecordError, match="not in canonical form"):
            verify_record(envelope, now=NOW)
    # A duplicate key: the map holds one key more than the record it decodes to.
    duplicate = b"\x8c" + payload[1:] + b"\xa3seq\x07"
    with pytest.raises(MalformedRecordError):
        decode_record(duplicate)


def test_record_signed_by_key_b_claiming_peer_a_is_a_key_mismatch() -> None:
    with pytest.raises(
        RecordKeyMismatchError, match=f"signed by the key of another peer, {PEER_B}"
    ):
        verify_record(_signed(_head(), key="B"), now=NOW)


def test_signer_refuses_to_sign_another_peers_record() -> None:
    with pytest.raises(ValueError, match=f"the key is peer {PEER_B}'s"):
        sign_record(SENTIMENT, KEYS["B"])


@given(st.data())
def test_any_bit_flip_in_the_signature_is_forged(data: st.DataObject) -> None:
    envelope = bytearray(sign_record(SENTIMENT, KEYS["A"]))
    bit = data.draw(st.integers(0, 64 * 8 - 1))
    envelope[len(envelope) - 64 + bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ForgedRecordError, match="does not verify"):
        verify_record(bytes(envelope), now=NOW)


def test_signature_without_the_domain_prefix_is_forged() -> None:
    signature = KEYS["A"].sign(GOOD_PAYLOAD)
    with pytest.raises(ForgedRecordError):
        verify_record(_envelope([GOOD_PAYLOAD, GOOD_KEY, signature]), now=NOW)


def test_signature_of_another_record_is_forged() -> None:
    other = encode_record(dataclasses.replace(SENTIMENT, seq=SENTIMENT.seq + 1))
    signature = KEYS["A"].sign(DOMAIN + other)
    with pytest.raises(ForgedRecordError):
        verify_record(_envelope([GOOD_PAYLOAD, GOOD_KEY, signature]), now=NOW)


@given(st.data())
def test_any_change_to_a_signed_envelope_is_rejected(data: st.DataObject) -> None:
    envelope = bytearray(sign_record(SENTIMENT, KEYS["A"]))
    i = data.draw(st.integers(0, len(envelope) - 1))
    envelope[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(InvalidRecordError):
        verify_record(bytes(envelope), now=NOW)


def test_expiry_is_checked_last_and_now_equal_to_expires_at_is_expired() -> None:
    envelope = sign_record(SENTIMENT, KEYS["A"])
    assert verify_record(envelope, now=SENTIMENT.expires_at - 0.001) == SENTIMENT
    with pytest.raises(ExpiredRecordError, match="expired at 1767225600, 0 s ago"):
        verify_record(envelope, now=SENTIMENT.expires_at)
    with pytest.raises(ExpiredRecordError, match="3600 s ago"):
        verify_record(envelope, now=SENTIMENT.expires_at + 3600)
    # A forged and expired record is reported as forged: the signature comes first.
    forged = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(ForgedRecordError):
        verify_record(forged, now=SENTIMENT.expires_at + 3600)


# Random and truncated bytes


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_invalid_record_errors(data: bytes) -> None:
    try:
        verify_record(data, now=NOW, max_size=512)
    except InvalidRecordError:
        pass
    try:
        decode_record(data)
    except MalformedRecordError:
        pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["v", "model", "peer", "schema", "seq", "x"]), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(msgpack_values, st.sampled_from(list(_head())))
def test_random_msgpack_in_a_signed_envelope_raises_only_malformed(value: object, key: str) -> None:
    for head in (value, _with(**{key: value})):
        try:
            verify_record(_signed(head), now=NOW)
        except MalformedRecordError:
            pass
        except ExpiredRecordError:
            assert key == "expires_at"  # a well-formed expiry in the past


def test_every_truncation_is_malformed() -> None:
    envelope = sign_record(SENTIMENT, KEYS["A"])
    for end in range(len(envelope)):
        with pytest.raises(MalformedRecordError):
            verify_record(envelope[:end], now=NOW)
    for end in range(len(GOOD_PAYLOAD)):
        with pytest.raises(MalformedRecordError):
            decode_record(GOOD_PAYLOAD[:end])


# Building records locally


def test_constructor_names_the_bad_field() -> None:
    fields = dataclasses.asdict(SENTIMENT) | {"schema": SENTIMENT.schema}
    changes: list[tuple[dict[str, Any], str]] = [
        ({"tasks": ("Sentiment Analysis",)}, r"tasks\[0\] 'Sentiment Analysis' is not a task tag"),
        ({"model_id": "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}, "dag-pb"),
        ({"peer_id": "12D3KooW"}, "peer_id: '12D3KooW' is not a peer ID"),
        ({"addrs": ["/ip4/1.2.3.4/tcp/1"]}, "addrs must be a tuple, not list"),
        ({"schema": {"inputs": []}}, "schema must be a ModelSchema, not dict"),
        ({"seq": True}, "seq must be an int, not bool"),
    ]
    for change, error in changes:
        with pytest.raises(ValueError, match=error):
            CapabilityRecord(**(fields | change))


def test_records_are_hashable_values() -> None:
    same = _record(VECTORS["vectors"][0]["record"])
    assert same == SENTIMENT and hash(same) == hash(SENTIMENT)
    assert SENTIMENT.key == (PEER_A, SENTIMENT.model_id)


# Newer sequence wins


def test_first_record_is_kept() -> None:
    assert supersedes(SENTIMENT, None)


def test_the_same_record_again_is_a_no_op() -> None:
    assert not supersedes(SENTIMENT, _record(VECTORS["vectors"][0]["record"]))


def test_higher_seq_wins_whatever_it_changes() -> None:
    newer = dataclasses.replace(SENTIMENT, seq=SENTIMENT.seq + 1, addrs=(), expires_at=1)
    assert supersedes(newer, SENTIMENT)


def test_older_seq_is_stale() -> None:
    older = dataclasses.replace(SENTIMENT, seq=SENTIMENT.seq - 1)
    with pytest.raises(
        StaleRecordError, match=r"has seq 6, older than the one already held \(seq 7\)"
    ):
        supersedes(older, SENTIMENT)


def test_older_seq_is_stale_even_with_identical_content() -> None:
    held = dataclasses.replace(SENTIMENT, seq=SENTIMENT.seq + 1)
    with pytest.raises(StaleRecordError):
        supersedes(SENTIMENT, held)


def test_same_seq_with_different_content_is_a_replay() -> None:
    replayed = dataclasses.replace(SENTIMENT, addrs=("/ip4/6.6.6.6/tcp/1",))
    with pytest.raises(
        StaleRecordError, match="has seq 7, like the one already held, but different content"
    ):
        supersedes(replayed, SENTIMENT)


def test_records_for_different_keys_are_not_compared() -> None:
    other_model = dataclasses.replace(SENTIMENT, model_id=model_id_of_bytes(b"other"))
    with pytest.raises(ValueError, match="different keys"):
        supersedes(other_model, SENTIMENT)


def test_small_order_key_cannot_sign_for_its_peer_id() -> None:
    # With the small-order key 01 00..00, the signature 01 00..00 | 00..00 verifies for
    # any message in OpenSSL; the record must still be refused.
    weak = bytes([1]) + bytes(31)
    record = dataclasses.replace(SENTIMENT, peer_id=peer_id_from_public_key(weak))
    envelope = _envelope([encode_record(record), weak, bytes([1]) + bytes(63)])
    with pytest.raises(ForgedRecordError, match="small-order"):
        verify_record(envelope, now=NOW)


# --- prices -----------------------------------------------------------------------------------


def test_a_price_travels_signed_and_a_free_record_is_unchanged() -> None:
    priced = dataclasses.replace(SENTIMENT, price=Price(1_000, 10_000, 1_000_000))
    envelope = sign_record(priced, KEYS["A"])
    assert verify_record(envelope, now=NOW).price == Price(1_000, 10_000, 1_000_000)
    assert list(_head(priced))[-1] == "price"  # after every other key
    assert "price" not in _head(SENTIMENT)  # free: the bytes of before prices existed


@pytest.mark.parametrize(
    ("price", "error"),
    [
        ({"per_call": 1, "per_mb": 0}, "lacks per_cpu_s"),
        ({"per_call": -1, "per_mb": 0, "per_cpu_s": 0}, "per_call"),
        ("free", "price must be a map"),
        # Free is written by leaving the key out: one record, one encoding.
        ({"per_call": 0, "per_mb": 0, "per_cpu_s": 0}, "not in canonical form"),
    ],
)
def test_a_bad_price_is_a_malformed_record(price: object, error: str) -> None:
    head = _head() | {"price": price}
    with pytest.raises(MalformedRecordError, match=error):
        decode_record(msgpack.packb(head, use_bin_type=True))
