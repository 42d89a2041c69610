"""Where a peer's local HTTP API listens by default, and its token file: what the
command line needs without loading the HTTP server."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from p2pnet.config import config_dir
from p2pnet.errors import ConfigError

__all__ = ["DEFAULT_HTTP", "default_token_path", "write_token"]

# Where ``p2pnet peer`` serves its API unless told otherwise: loopback, and a port that
# neither OIP servers (8000, 8001) nor common development servers use.
DEFAULT_HTTP = ("127.0.0.1", 8739)


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
