"""Peer identity on disk: an Ed25519 key (``p2pnet.core.identity``) in a file readable by
its owner only, in libp2p's ``PrivateKey`` protobuf (what py-libp2p writes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pnet.core.identity import Identity
from p2pnet.errors import ConfigError

__all__ = [
    "Identity",
    "generate_identity",
    "load_identity",
    "load_or_create_identity",
    "peer_id_of",
]


def generate_identity() -> Identity:
    """A new random Ed25519 identity."""
    return Identity.from_seed(os.urandom(32))


def peer_id_of(identity: Identity) -> str:
    """The base58 peer ID (``12D3KooW...``) of an identity."""
    return identity.peer_id


def load_identity(path: Path) -> Identity:
    """Read an identity from ``path``.

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
        return Identity.from_protobuf(data)
    except ValueError as exc:
        raise ConfigError(f"identity {path} is not a libp2p private key: {exc}") from None


def load_or_create_identity(path: Path) -> tuple[Identity, bool]:
    """Load the key at ``path``, or create it (mode 0600, parent 0700) if it does not exist.

    Returns the identity and whether it was created.

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
            f.write(identity.to_protobuf())
    except FileExistsError:
        # Another process created it between our check and our open: use theirs.
        return load_identity(path), False
    except OSError as exc:
        raise ConfigError(f"cannot create identity {path}: {exc.strerror or exc}") from None
    return identity, True
