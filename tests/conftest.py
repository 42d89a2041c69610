"""Shared fixtures: the example models (built once per test run, whatever the number of
pytest-xdist workers), configuration directories of the run and of a test, a port that
refuses connections.

``pytest --quick`` (``make quick``) runs the fast tests only: it leaves out the tests
marked ``slow`` or ``network`` (pyproject.toml says what they mean), and fails a test it
kept that starts a Python process or opens an internet socket, naming the marker it needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from filelock import FileLock
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# No wall-clock deadline per Hypothesis example: on a shared machine, or beside other
# pytest-xdist workers, an example that takes 50 ms can take 600 ms, and Hypothesis then
# fails the test ("Unreliable test timings"). What the tests assert stays as it is.
settings.register_profile("p2pnet", deadline=None)
settings.load_profile("p2pnet")

# Fixtures whose use makes a test slow: building them takes seconds (tf imports
# TensorFlow for tests/test_import_tensorflow.py).
SLOW_FIXTURES = {"cs_models", "dialogue_models", "tf"}


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


@pytest.fixture(scope="session")
def dialogue_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of the dialogue models, smollm2-chat.onnx and cs-reply-llm.onnx,
    built by scripts/build_dialogue_model.py (about 30 s on 2 cores)."""
    return build_once(tmp_path_factory, "scripts/build_dialogue_model.py", "dialogue_models")


@pytest.fixture(scope="session", autouse=True)
def _config_of_this_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keys, ledgers and status files of every test, and of every process a test starts,
    stay in directories of this run (of this worker, under pytest-xdist), never in the
    user's ``~/.config/p2pnet``, ``~/.local/share/p2pnet`` or ``$XDG_RUNTIME_DIR/p2pnet``:
    status files then go to the configuration directory (``p2pnet.config.runtime_dir``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))
        patch.delenv("XDG_RUNTIME_DIR", raising=False)
        yield


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $XDG_CONFIG_HOME, so tests never touch the user's keys."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    yield home


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A TCP port of 127.0.0.1 that refuses connections: bound but not listening, and held
    for the whole test, so that no other test (or worker) can listen there meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Quiet py-libp2p, as the CLI does, once a test module has loaded it. (A run of tests
    that never touch libp2p does not import it.)"""
    if "libp2p" in sys.modules:
        from p2pnet.net.logs import inherit_libp2p_log_level

        inherit_libp2p_log_level()


# --- make quick ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        help="only the fast tests: not those marked slow or network (make quick)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not config.getoption("quick"):
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        slow = item.get_closest_marker("slow") or item.get_closest_marker("network")
        (left_out if slow else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True)
def _quick_tests_start_no_process_and_open_no_socket(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --quick: a test that starts a Python process (the p2pnet command, a script)
    or opens an internet socket fails, so that the quick selection stays quick as tests
    are added."""
    if not request.config.getoption("quick"):
        return
    test = request.node.nodeid

    def refuse(what: str, marker: str) -> NoReturn:
        pytest.fail(f"{test} {what}: mark it {marker} (make quick leaves those out)")

    popen = subprocess.Popen.__init__

    def guarded_popen(process: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        # Python processes only: a library may run a quick tool (ctypes runs ldconfig).
        if not isinstance(args, (str, bytes, os.PathLike)):
            args = list(args)  # it may be an iterator
        argv = args if isinstance(args, list) else [args]
        if sys.executable in [os.fsdecode(arg) for arg in argv]:
            refuse("starts a Python process", "slow")
        popen(process, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    for name in ("bind", "connect", "connect_ex"):
        original = getattr(socket.socket, name)

        def guarded(sock: socket.socket, address: Any, _original: Any = original) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                refuse("opens an internet socket", "network")
            return _original(sock, address)

        monkeypatch.setattr(socket.socket, name, guarded)
