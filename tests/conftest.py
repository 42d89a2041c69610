"""Shared fixtures: the example models (built once per test run, whatever the number of
pytest-xdist workers) and a private config dir."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent


def load_script(relative: str) -> object:
    """Import a file under scripts/ as a module."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_once(tmp_path_factory: pytest.TempPathFactory, script: str, name: str) -> dict[str, Path]:
    """name -> path of the models ``script``'s ``build_all`` builds, built once per run.

    Under pytest-xdist every worker has a session of its own; they share the parent of
    their temporary directories. The first worker to take the lock builds the models
    there, the others wait and read the index it wrote.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        build = load_script(script)
        return build.build_all(tmp_path_factory.mktemp(name))  # type: ignore[attr-defined, no-any-return]
    shared = tmp_path_factory.getbasetemp().parent
    index = shared / f"{name}.json"
    with FileLock(shared / f"{name}.lock"):
        if not index.is_file():
            build = load_script(script)
            paths = build.build_all(shared / name)  # type: ignore[attr-defined]
            index.write_text(json.dumps({key: str(path) for key, path in paths.items()}))
    return {key: Path(path) for key, path in json.loads(index.read_text()).items()}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of every example model, built by scripts/build_models.py."""
    return build_once(tmp_path_factory, "scripts/build_models.py", "models")


@pytest.fixture(scope="session")
def cs_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of the customer-service models (emotion, retrieval, reply), built by
    scripts/build_cs_models.py (about 15 s on 2 cores)."""
    return build_once(tmp_path_factory, "scripts/build_cs_models.py", "cs_models")


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $XDG_CONFIG_HOME, so tests never touch the user's keys."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    yield home


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Quiet py-libp2p, as the CLI does, once a test module has loaded it. (A run of tests
    that never touch libp2p does not import it.)"""
    if "libp2p" in sys.modules:
        import p2pnet.net.logs  # noqa: F401
