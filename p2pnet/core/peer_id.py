"""libp2p peer IDs of Ed25519 keys, computed without py-libp2p.

    peer ID = base58btc( identity-multihash( PublicKey protobuf ) )
            = base58btc( 00 24 | 08 01 12 20 | key[32] )          text "12D3KooW..."

``08 01`` is field 1 (key type) = 1 (Ed25519), ``12 20`` field 2 (data), 32 bytes.
p2pnet accepts only this form: not the CID form (``bafz...``), not hashed keys
(RSA ``Qm...``), not other key types (secp256k1 ``16Uiu2...``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import base58

from p2pnet.errors import InvalidAddressError

__all__ = [
    "ED25519_KEY_PREFIX",
    "MAX_PEER_ID_LENGTH",
    "is_valid_peer_id",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
]

# The libp2p PublicKey protobuf up to the key bytes: Type = Ed25519 (1), Data = 32 bytes.
ED25519_KEY_PREFIX: Final = b"\x08\x01\x12\x20"
# Its identity multihash's header: code 0x00 (identity), length 36 (the protobuf). Written
# out, so that a peer ID is made without loading multiformats (the command line finds
# its running peer by it; tests/test_cli_imports.py).
_IDENTITY_MULTIHASH: Final = b"\x00\x24"
# An Ed25519 peer ID is 52 characters; anything much longer is refused before decoding
# (base58 decoding is quadratic in the length).
MAX_PEER_ID_LENGTH: Final = 128

_KEY_TYPES: Final = {0: "RSA", 1: "Ed25519", 2: "secp256k1", 3: "ECDSA"}


def peer_id_from_public_key(public_key: bytes) -> str:
    """The peer ID (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return _encode(bytes(public_key))


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw 32-byte Ed25519 public key that ``peer_id`` names.

    Raises:
        InvalidAddressError: not base58btc text, not an identity multihash of an Ed25519
            key. (Records turn this into MalformedRecordError.)
    """
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_LENGTH:
        raise InvalidAddressError(
            f"{str(peer_id)[:60]!r} is not a peer ID: expected base58 text of 1 to "
            f"{MAX_PEER_ID_LENGTH} characters, like 12D3KooW..."
        )
    return _decode(peer_id)


def is_valid_peer_id(text: str) -> bool:
    """Whether ``text`` is the canonical peer ID of an Ed25519 key (see public_key_from_peer_id)."""
    try:
        public_key_from_peer_id(text)
    except InvalidAddressError:
        return False
    return True


# The ``base58`` package (~12 us a peer ID; multiformats' takes ~160 us to encode and
# ~75 us to decode); records name the same peers again and again, so both are cached.
@lru_cache(maxsize=4096)
def _encode(public_key: bytes) -> str:
    return base58.b58encode(_IDENTITY_MULTIHASH + ED25519_KEY_PREFIX + public_key).decode()


@lru_cache(maxsize=4096)
def _decode(peer_id: str) -> bytes:
    from multiformats import multihash

    try:
        bad = next((c for c in peer_id if not (c.isascii() and c.isalnum())), None)
        if bad is not None:  # b58decode would strip surrounding whitespace
            raise ValueError(f"Invalid character {bad!r}")
        raw = base58.b58decode(peer_id)
        code, view = multihash.unwrap_raw(raw)
    except Exception as exc:  # bases and multiformats raise several unrelated types
        raise InvalidAddressError(f"{peer_id!r} is not a peer ID: {exc}") from None
    if code != 0:
        raise InvalidAddressError(
            f"{peer_id!r} is a peer ID of a hashed key (multihash code {code:#x}, e.g. RSA); "
            "p2pnet peers use Ed25519 keys (12D3KooW...)"
        )
    digest = bytes(view)
    if len(digest) >= 2 and digest[0] == 0x08 and digest[1] != 1:
        kind = _KEY_TYPES.get(digest[1], f"type {digest[1]}")
        raise InvalidAddressError(
            f"{peer_id!r} is the peer ID of a {kind} key; p2pnet peers use Ed25519 (12D3KooW...)"
        )
    if len(digest) != 36 or not digest.startswith(ED25519_KEY_PREFIX):
        raise InvalidAddressError(
            f"{peer_id!r} is not the peer ID of an Ed25519 key: the key protobuf is "
            f"{digest.hex()[:80]}, expected 08011220 and 32 key bytes"
        )
    # base58 is one-to-one, so the text is canonical: it re-encodes from the key.
    return digest[4:]
