"""Shared fixtures: the example models (built once per session) and a private config dir."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Quiet py-libp2p for the whole suite, as the CLI does.
import p2pnet.net.logs  # noqa: E402,F401


def load_script(relative: str) -> object:
    """Import a file under scripts/ as a module."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of every example model, built by scripts/build_models.py."""
    build = load_script("scripts/build_models.py")
    return build.build_all(tmp_path_factory.mktemp("models"))  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="session")
def cs_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of the customer-service models (emotion, retrieval, reply), built by
    scripts/build_cs_models.py (about 15 s on 2 cores)."""
    build = load_script("scripts/build_cs_models.py")
    return build.build_all(tmp_path_factory.mktemp("cs_models"))  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $XDG_CONFIG_HOME, so tests never touch the user's keys."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    yield home
