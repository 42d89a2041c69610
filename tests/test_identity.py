import os
import stat
from pathlib import Path

import pytest

from p2pnet.config import default_identity_path
from p2pnet.errors import ConfigError
from p2pnet.net.identity import load_identity, load_or_create_identity, peer_id_of


def test_created_once_with_owner_only_permissions(config_home: Path) -> None:
    path = default_identity_path()
    assert path == config_home / "p2pnet" / "identity.key"
    first, created = load_or_create_identity(path)
    again, created_again = load_or_create_identity(path)
    assert created and not created_again
    assert peer_id_of(first) == peer_id_of(again)
    assert peer_id_of(first).startswith("12D3KooW")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identity(path)


def test_refuses_garbage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not a libp2p private key"):
        load_identity(path)
    with pytest.raises(ConfigError, match="cannot read identity"):
        load_identity(tmp_path / "missing")
