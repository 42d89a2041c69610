"""Where p2pnet keeps its files: ``$XDG_CONFIG_HOME/p2pnet/`` (default ``~/.config/p2pnet/``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_dir", "default_identity_path"]


def config_dir() -> Path:
    """The p2pnet configuration directory (not created here)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "p2pnet"


def default_identity_path() -> Path:
    """The peer identity key used when none is named."""
    return config_dir() / "identity.key"
