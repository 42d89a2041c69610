"""A peer's identity: an Ed25519 key pair, the peer ID it gives, its file encoding.

Encoding (libp2p's ``PrivateKey`` protobuf, what py-libp2p's ``serialize()`` writes)::

    08 01            field 1 (key type) = 1 (Ed25519)
    12 20 <seed:32>  field 2 (data): the 32-byte seed

go-libp2p writes 64 data bytes (seed, then public key); both are read, and the
public half must match the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.varint import try_decode_uvarint
from p2pnet.errors import RemoteProtocolError

__all__ = ["ED25519_KEY_TYPE", "Identity"]

ED25519_KEY_TYPE: Final = 1
_KEY_TYPES: Final = {0: "RSA", 1: "Ed25519", 2: "secp256k1", 3: "ECDSA"}
_MAX_KEY_FILE: Final = 4096


@dataclass(frozen=True, slots=True, eq=False)
class Identity:
    """An Ed25519 key pair and its peer ID (``12D3KooW...``); ``repr`` hides the key."""

    signing_key: Ed25519PrivateKey = field(repr=False)
    public_key: bytes = field(init=False)
    peer_id: str = field(init=False)

    def __post_init__(self) -> None:
        public = self.signing_key.public_key().public_bytes_raw()
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "peer_id", peer_id_from_public_key(public))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose private key is the 32-byte ``seed``."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte private key."""
        return self.signing_key.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        return self.signing_key.sign(data)

    def to_protobuf(self) -> bytes:
        """The key file's bytes (see the module docstring)."""
        return b"\x08\x01\x12\x20" + self.seed

    @classmethod
    def from_protobuf(cls, data: bytes) -> Identity:
        """Read a key file's bytes.

        Raises:
            ValueError: not a libp2p private key protobuf, or not an Ed25519 key; the
                message says which.
        """
        if len(data) > _MAX_KEY_FILE:
            raise ValueError(f"{len(data)} bytes is too long for a key")
        fields: dict[int, int | bytes] = {}
        offset = 0
        try:
            while offset < len(data):
                tag = _uvarint(data, offset)
                offset = tag[1]
                number, wire_type = tag[0] >> 3, tag[0] & 7
                if wire_type == 0:
                    value, offset = _uvarint(data, offset)
                    fields[number] = value
                elif wire_type == 2:
                    length, offset = _uvarint(data, offset)
                    if offset + length > len(data):
                        raise ValueError("a field runs past the end")
                    fields[number] = data[offset : offset + length]
                    offset += length
                else:
                    raise ValueError(f"field {number} has wire type {wire_type}")
        except RemoteProtocolError as exc:
            raise ValueError(exc.message) from None
        kind, key = fields.get(1), fields.get(2)
        if not isinstance(kind, int) or not isinstance(key, bytes):
            raise ValueError("it lacks the key type or the key bytes")
        if kind != ED25519_KEY_TYPE:
            raise ValueError(f"it holds a {_KEY_TYPES.get(kind, f'type {kind}')} key; use Ed25519")
        if len(key) not in (32, 64):
            raise ValueError(f"an Ed25519 key has 32 or 64 bytes, not {len(key)}")
        identity = cls.from_seed(key[:32])
        if len(key) == 64 and key[32:] != identity.public_key:
            raise ValueError("its public half does not belong to its private half")
        return identity


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    decoded = try_decode_uvarint(data, offset)
    if decoded is None:
        raise ValueError("truncated")
    return decoded
