"""Ed25519 peer IDs without py-libp2p: golden keys both ways, and py-libp2p agrees."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PublicKey as Libp2pEd25519PublicKey
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.peer.id import ID
from multiformats import multibase

from p2pnet.conformance.golden import load_vectors
from p2pnet.core.peer_id import (
    MAX_PEER_ID_LENGTH,
    is_valid_peer_id,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from p2pnet.errors import InvalidAddressError

KEYS = load_vectors("records_v1")["keys"]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_golden_keys_both_ways(name: str) -> None:
    key = KEYS[name]
    public_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seed_hex"])).public_key()
    assert public_key.public_bytes_raw().hex() == key["public_key_hex"]
    assert peer_id_from_public_key(bytes.fromhex(key["public_key_hex"])) == key["peer_id"]
    assert public_key_from_peer_id(key["peer_id"]).hex() == key["public_key_hex"]


def test_the_bytes_under_the_text() -> None:
    key = KEYS["A"]
    raw = ID.from_base58(key["peer_id"]).to_bytes()
    assert raw.hex() == "0024" + "08011220" + key["public_key_hex"]


@given(st.binary(min_size=32, max_size=32))
def test_py_libp2p_computes_the_same_peer_id(seed: bytes) -> None:
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    ours = peer_id_from_public_key(raw)
    assert ours == str(ID.from_pubkey(Libp2pEd25519PublicKey.from_bytes(raw)))
    assert ours.startswith("12D3KooW") and len(ours) == 52
    assert public_key_from_peer_id(ours) == raw
    assert is_valid_peer_id(ours)


@given(st.binary(min_size=32, max_size=32))
def test_any_32_bytes_round_trip(raw: bytes) -> None:
    assert public_key_from_peer_id(peer_id_from_public_key(raw)) == raw


def test_public_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        peer_id_from_public_key(bytes(31))


def test_secp256k1_peer_id_is_named_as_such() -> None:
    other = str(ID.from_pubkey(create_secp256k1_key_pair(b"\x01" * 32).public_key))
    assert other.startswith("16Uiu2")
    with pytest.raises(InvalidAddressError, match="peer ID of a secp256k1 key"):
        public_key_from_peer_id(other)


A = KEYS["A"]["peer_id"]
BASE58 = multibase.get("base58btc")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "1 to 128 characters"),
        ("1" * (MAX_PEER_ID_LENGTH + 1), "1 to 128 characters"),
        (" " + A, "Invalid character ' '"),
        (A + "\n", "Invalid character"),
        ("0" + A[1:], "Invalid character '0'"),
        ("z" + A, "not a peer ID"),  # the multibase-prefixed form
        ("1" + A, "not a peer ID"),  # a leading zero byte
        (A[:-1], "not a peer ID"),  # truncated
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", r"hashed key \(multihash code 0x12"),
        ("bafzaajaiaejcaaaqeaqdaqeaqdaqeaqdaqeaqdaqeaqdaqeaqdaqeaqdaqeaqd", "not a peer ID"),
        ("11", "not the peer ID of an Ed25519 key"),  # identity multihash of nothing
        (  # a 16-byte "Ed25519" key
            BASE58.raw_encoder(b"\x00\x14\x08\x01\x12\x10" + bytes(16)),
            "not the peer ID of an Ed25519 key: the key protobuf is 08011210",
        ),
    ],
)
def test_what_is_not_an_ed25519_peer_id(text: str, error: str) -> None:
    with pytest.raises(InvalidAddressError, match=error):
        public_key_from_peer_id(text)
    assert not is_valid_peer_id(text)


@given(st.text(max_size=80))
def test_random_text_raises_only_invalid_address(text: str) -> None:
    try:
        key = public_key_from_peer_id(text)
    except InvalidAddressError:
        return
    assert peer_id_from_public_key(key) == text


@given(st.binary(max_size=40))
def test_random_multihash_bytes_raise_only_invalid_address(raw: bytes) -> None:
    text = BASE58.raw_encoder(raw)
    try:
        key = public_key_from_peer_id(text)
    except InvalidAddressError:
        return
    assert raw == b"\x00\x24\x08\x01\x12\x20" + key
