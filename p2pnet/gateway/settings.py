"""Where a peer's local HTTP API listens by default, and its token file: what the
command line needs without loading the HTTP server."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from p2pnet.config import config_dir
from p2pnet.errors import ConfigError

__all__ = [
    "DEFAULT_HTTP",
    "RunningApi",
    "default_token_path",
    "is_loopback",
    "read_token",
    "running_api",
    "write_token",
]

# Where ``p2pnet peer`` serves its API unless told otherwise: loopback, and a port that
# neither OIP servers (8000, 8001) nor common development servers use.
DEFAULT_HTTP = ("127.0.0.1", 8739)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or "localhost") is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_token_path(peer_id: str) -> Path:
    """The token file of the peer with this ID: ``http/<peer-id>.token`` in the
    configuration directory (one per identity: one running peer per identity)."""
    return config_dir() / "http" / f"{peer_id}.token"


def write_token(path: Path, token: str | None = None) -> str:
    """Write ``token`` (default: a new random one) to ``path`` atomically, readable by its
    owner only (mode 0600, directory created 0700); return it.

    Raises:
        ConfigError: the file or its directory cannot be written.
    """
    import secrets  # here: the command line reads tokens far more often than it makes one

    token = token or secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.chmod(tmp, 0o600)  # an older file with another mode, reused by O_TRUNC
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the HTTP token {path}: {exc.strerror or exc}") from None
    return token


def read_token(path: Path) -> str | None:
    """The token in ``path``; None if the file does not exist or is empty.

    Raises:
        ConfigError: the file is readable by others than its owner, or cannot be read.
    """
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: readable by others; chmod 600 it")
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the HTTP token {path}: {exc.strerror or exc}") from None
    return token or None


@dataclass(frozen=True, slots=True)
class RunningApi:
    """The local HTTP API of a peer running on this machine: where, with which token, in
    which process."""

    url: str
    token: str
    pid: int


def running_api(
    peer_id: str, *, token_path: Path | None = None, statuses: Path | None = None
) -> RunningApi | None:
    """The API of the running peer with identity ``peer_id``, found by its status file
    (p2pnet/status.py) and its token file (``token_path``; default: the identity's,
    ``default_token_path``); None when no live peer of that identity serves one, or its
    token file is missing or empty.

    Raises:
        ConfigError: the token file is readable by others than its owner, or unreadable.
    """
    from p2pnet.status import read_statuses

    for file in read_statuses(statuses):
        if file.status.peer_id != peer_id or not file.status.http or file.stale:
            continue
        token = read_token(token_path or default_token_path(peer_id))
        return RunningApi(file.status.http, token, file.pid) if token else None
    return None
