"""A private network's swarm key and its file (libp2p's PSK v1 key file), without py-libp2p.

Key file (what go-libp2p and js-libp2p read; ``swarm.key`` in IPFS)::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

``/base64/`` and ``/bin/`` encodings are read too; ``format_swarm_key`` writes base16.
Key files are their owner's alone (mode 0600): ``load_swarm_key`` refuses others, and
``write_swarm_key_file`` and ``restrict_swarm_key_output`` make them so.
``p2pnet.net.pnet`` puts the key to work on connections.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from p2pnet.errors import ConfigError

__all__ = [
    "KEY_HEADER",
    "KEY_SIZE",
    "SwarmKey",
    "format_swarm_key",
    "generate_swarm_key",
    "load_swarm_key",
    "parse_swarm_key",
    "restrict_swarm_key_output",
    "write_swarm_key_file",
]

KEY_HEADER: Final = "/key/swarm/psk/1.0.0/"
KEY_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class SwarmKey:
    """A private network's 32-byte pre-shared key.

    ``repr`` and ``str`` never show the key; ``fingerprint`` names it safely.
    """

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ConfigError(f"a swarm key has {KEY_SIZE} bytes, not {len(self.key)}")

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name the key without revealing it (p2pnet's own scheme:
        SHA-256 of a fixed label and the key, truncated), to compare keys across peers."""
        return hashlib.sha256(b"p2pnet swarm key fingerprint\0" + self.key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SwarmKey(fingerprint={self.fingerprint})"

    __str__ = __repr__


def generate_swarm_key() -> SwarmKey:
    """A new random swarm key."""
    return SwarmKey(os.urandom(KEY_SIZE))


def format_swarm_key(key: SwarmKey) -> str:
    """The key file text: header, ``/base16/``, 64 lower-case hex digits, newline."""
    return f"{KEY_HEADER}\n/base16/\n{key.key.hex()}\n"


def write_swarm_key_file(key: SwarmKey, path: Path | str) -> Path:
    """Write ``key`` to the new file ``path``, readable by its owner only (mode 0600). A
    file that exists is never replaced: it may hold the key of a running grid.

    Raises:
        ConfigError: ``path`` exists or cannot be created.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; a swarm key is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(format_swarm_key(key))
    return path


def restrict_swarm_key_output(fd: int) -> bool:
    """Make the file open at ``fd`` readable by its owner only (mode 0600) if it is a
    regular file of this user: ``p2pnet swarm-key new > grid.key`` writes into a file the
    shell created with the umask's mode (often 0644), which ``load_swarm_key`` refuses.
    Returns whether it was such a file; a terminal, a pipe or another user's file is
    left as it is.

    Raises:
        OSError: ``fd`` is not open, or its mode cannot be changed.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return False
    os.fchmod(fd, 0o600)
    return True


def parse_swarm_key(data: bytes, source: str = "swarm key") -> SwarmKey:
    """Read a swarm key file's bytes (base16, base64 or bin encoding).

    Raises:
        ConfigError: not a swarm key file, naming what is wrong.
    """
    header, sep, rest = data.partition(b"\n")
    if header.rstrip(b"\r") != KEY_HEADER.encode():
        raise ConfigError(
            f"{source} is not a swarm key file: its first line must be {KEY_HEADER!r} "
            "(create one with: p2pnet swarm-key new > grid.key)"
        )
    encoding, sep, body = rest.partition(b"\n")
    encoding = encoding.rstrip(b"\r")
    if not sep:
        raise ConfigError(f"{source}: missing the encoding line (/base16/, /base64/ or /bin/)")
    if encoding == b"/bin/":
        key = body[:KEY_SIZE]
        if len(key) != KEY_SIZE or body[KEY_SIZE:] not in (b"", b"\n", b"\r\n"):
            raise ConfigError(f"{source}: a /bin/ key is exactly {KEY_SIZE} bytes")
        return SwarmKey(key)
    text = body.strip()
    try:
        if encoding == b"/base16/":
            key = bytes.fromhex(text.decode("ascii"))
        elif encoding == b"/base64/":
            key = base64.b64decode(text, validate=True)
        else:
            raise ConfigError(
                f"{source}: unknown key encoding {encoding.decode(errors='replace')!r}; "
                "one of /base16/, /base64/, /bin/"
            )
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ConfigError(
            f"{source}: the key is not valid {encoding.decode().strip('/')}"
        ) from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{source}: the key has {len(key)} bytes; a swarm key has {KEY_SIZE}")
    return SwarmKey(key)


def load_swarm_key(path: Path | str) -> SwarmKey:
    """Read a swarm key file, refusing one that other users can read or write.

    Raises:
        ConfigError: unreadable, accessible by others (as identity keys), or malformed.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read swarm key {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"swarm key {path} is accessible by other users (mode {stat.filemode(mode)}); "
            f"anyone who reads it can join the private network; run: chmod 600 {path}"
        )
    return parse_swarm_key(data, f"swarm key {path}")
