"""Peer identity: an Ed25519 libp2p key pair, kept in a file readable by its owner only.

File format: the libp2p ``PrivateKey`` protobuf (key type + key bytes), as written by
py-libp2p's ``PrivateKey.serialize()``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from p2pnet.errors import ConfigError

__all__ = ["KeyPair", "generate_identity", "load_identity", "load_or_create_identity", "peer_id_of"]


def generate_identity() -> KeyPair:
    """A new random Ed25519 key pair."""
    return create_new_key_pair()


def peer_id_of(identity: KeyPair) -> str:
    """The base58 peer ID (``12D3KooW...``) of a key pair."""
    return str(ID.from_pubkey(identity.public_key))


def load_identity(path: Path) -> KeyPair:
    """Read a key pair from ``path``.

    Raises:
        ConfigError: unreadable, readable by others than its owner, or not an Ed25519 key.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read identity {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"identity {path} is accessible by other users (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {path}"
        )
    try:
        private_key = deserialize_private_key(data)
    except Exception as exc:  # protobuf and key parsers raise assorted types
        raise ConfigError(f"identity {path} is not a libp2p private key: {exc}") from None
    if private_key.get_type() != KeyType.Ed25519:
        raise ConfigError(f"identity {path} holds a {private_key.get_type().name} key; use Ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def load_or_create_identity(path: Path) -> tuple[KeyPair, bool]:
    """Load the key at ``path``, or create it (mode 0600, parent 0700) if it does not exist.

    Returns the key pair and whether it was created.

    Raises:
        ConfigError: the file exists but cannot be used, or cannot be created.
    """
    if path.exists():
        return load_identity(path), False
    identity = generate_identity()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.private_key.serialize())
    except FileExistsError:
        # Another process created it between our check and our open: use theirs.
        return load_identity(path), False
    except OSError as exc:
        raise ConfigError(f"cannot create identity {path}: {exc.strerror or exc}") from None
    return identity, True
