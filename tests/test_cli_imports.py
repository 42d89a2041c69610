"""The command line loads only what a command needs: parsing any command line (``--help``,
``--version``, the typed options of every command) loads no peer, no py-libp2p, no DHT,
no accounting, no model runtime, no trio, no httpx and no numpy (but for ``peer
--batch``); ``p2pnet find`` and ``p2pnet call`` that go through the running peer's local
API load none of what starts a peer of their own, nor trio, httpx, multiformats or numpy
(docs/benchmarks.md, "CLI against a running peer"). Each check runs in a fresh
interpreter: this one has loaded everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from memory_peers import memory_peer

from p2pnet.cli import stream
from p2pnet.config import default_identity_path, runtime_dir
from p2pnet.discovery.generation import Generation
from p2pnet.gateway.app import serve_http
from p2pnet.gateway.settings import default_token_path, write_token
from p2pnet.net.identity import load_or_create_identity
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.status import snapshot, write_status

TOKEN = "s3cret-token"

# What starts or runs a peer of the command's own, and what serves HTTP: a module
# (or a package and its modules) that none of these command lines may load.
PEER_MODULES = (
    "libp2p",
    "onnxruntime",
    "onnx",
    "p2pnet.peer",
    "p2pnet.services",
    "p2pnet.dht",
    "p2pnet.accounting",
    "p2pnet.discovery",
    "p2pnet.invoke",
    "p2pnet.runtime",
    "p2pnet.pipeline",
    "p2pnet.trust",
    "p2pnet.ledger",
    "p2pnet.net.host",
    "starlette",
    "hypercorn",
)
# ... and what parsing alone does not need either.
PARSING_MODULES = (
    *PEER_MODULES,
    "trio",
    "httpx",
    "numpy",
    "p2pnet.status",
    "p2pnet.gateway.client",
)
# What ``find`` and ``call --json`` (of small JSON inputs) through the running peer's
# API do without: the HTTP client is the standard library's, the peer ID is made without
# multiformats, nothing runs under trio, and tensors stay JSON (docs/benchmarks.md, "CLI
# against a running peer"). ``call`` without ``--json`` prints its table with numpy.
API_PATH_MODULES = (*PEER_MODULES, "trio", "httpx", "httpcore", "h2", "multiformats", "numpy")

# Runs the command line of its arguments as ``p2pnet`` does, then writes the exit status
# and the modules loaded to the file named by P2PNET_TEST_MODULES.
DRIVER = """
import json, os, sys
from p2pnet.cli.app import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
with open(os.environ["P2PNET_TEST_MODULES"], "w") as f:
    json.dump({"status": status, "modules": sorted(sys.modules)}, f)
"""


def loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The names in ``modules`` that are one of ``prefixes`` or inside one of them."""
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


# Each command with the options it needs to get past parsing into its typed options.
COMMAND_LINES = [
    ["--help"],
    ["--version"],
    ["find", "--help"],
    ["call", "--help"],
    ["peer", "--help"],
    ["pipeline", "run", "--help"],
]

# Parses each command line into its typed options, and prints the modules that each one
# loaded on top of the ones before.
OPTIONS_CODE = """
import json, sys
from p2pnet.cli.parser import build_parser
parser = build_parser()
before, added = set(sys.modules), []
for argv in {argv!r}:
    args = parser.parse_args(argv)
    args.handler.options(args)
    added.append(sorted(set(sys.modules) - before))
    before = set(sys.modules)
print(json.dumps(added))
"""

# Every command, with what its options may load: the ledger's and the trust store's
# files are found by their kinds; mcp checks --expose with the MCP gateway's rule.
EVERY_COMMAND: list[tuple[list[str], tuple[str, ...]]] = [
    (["peer", "--serve", "m.onnx", "--task", "t", "--batch", "8", "--price", "10,0,0"], ("numpy",)),
    (["ledger"], ("p2pnet.ledger",)),
    (["trust"], ("p2pnet.trust",)),
    (["mcp"], ("trio",)),
]
COMMANDS = [
    ["id"],
    ["model", "inspect", "m.onnx"],
    ["peer", "--serve", "m.onnx", "--task", "t", "--price", "10,0,0"],
    ["call", "--task", "t", "-i", "x=[1]", "--max-price", "5,0,0"],
    ["call", "--prompt", "Hi", "--task", "chat", "--max-tokens", "8"],
    ["chat", "--task", "chat"],
    ["find", "--task", "t"],
    ["pipeline", "check", "p.yaml"],
    ["pipeline", "run", "p.yaml", "-i", "x=[1]"],
    ["swarm-key", "fingerprint", "k"],
    ["status"],
    ["simulate", "s.yaml"],
]


def run_cli(argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """``p2pnet argv`` in a fresh interpreter: (exit status, modules it loaded)."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(Path(env["P2PNET_TEST_MODULES"]).read_text())
    return result["status"], result["modules"]


@pytest.mark.slow
def test_parsing_any_command_line_loads_no_peer_and_no_trio(tmp_path: Path) -> None:
    env = os.environ | {"P2PNET_TEST_MODULES": str(tmp_path / "modules.json")}
    for argv in COMMAND_LINES:
        status, modules = run_cli(argv, env)
        assert status == 0, argv
        assert loaded(modules, PARSING_MODULES) == [], argv
    lines = [(argv, ()) for argv in COMMANDS] + EVERY_COMMAND
    code = OPTIONS_CODE.format(argv=[argv for argv, _ in lines])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for (argv, own), added in zip(lines, json.loads(done.stdout), strict=True):
        assert set(loaded(added, PARSING_MODULES)) == set(loaded(added, own)), argv


@pytest.mark.slow
def test_the_api_client_loads_no_numpy_until_tensors_are_sent() -> None:
    """``p2pnet find`` through the API sends and receives no tensor; httpx is loaded by
    the client that streams (``ApiClient``), not by the module."""
    code = "import json, sys, p2pnet.gateway.client; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    unwanted = ("numpy", "trio", "httpx", "starlette", "hypercorn", "p2pnet.inputs")
    assert loaded(modules, unwanted) == []


def test_reply_streams_quiet_the_generation_logger_by_its_name() -> None:
    """stream.py names p2pnet.discovery.generation's logger without importing it."""
    assert stream._GENERATION_LOGGER == Generation.__module__


@pytest.mark.network
@pytest.mark.slow
async def test_find_and_call_through_the_running_peer_load_no_peer_of_their_own(
    models: dict[str, Path],
    config_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``p2pnet find`` and ``call`` in a fresh interpreter, next to a running peer of
    their identity (its API on 127.0.0.1, its status file, its token): they answer
    through the API, and load none of PEER_MODULES, nor trio, httpx, multiformats or
    numpy (API_PATH_MODULES)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    identity, _ = load_or_create_identity(default_identity_path())
    env = os.environ | {
        "XDG_CONFIG_HOME": str(config_home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "P2PNET_TEST_MODULES": str(tmp_path / "modules.json"),
    }
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=7))
        provider = memory_peer(network)
        provider.serve(models["iris"], tasks=["iris-species"])
        await stack.enter_async_context(provider)
        me = Peer(identity, host=network.add_host(identity.peer_id), bootstrap=[provider.addrs[0]])
        await stack.enter_async_context(me)
        server = await stack.enter_async_context(trio.open_nursery())
        await server.start(serve_http, me, "127.0.0.1", 0, TOKEN)
        write_token(default_token_path(me.peer_id), TOKEN)
        write_status(snapshot(me), runtime_dir() / f"peer-{os.getpid()}.json")

        iris = ["-i", "x=[[5.1,3.5,1.4,0.2]]"]
        outputs = []
        for argv in (
            ["find", "--task", "iris-species", "--json", "-v"],
            ["call", "--task", "iris-species", *iris, "--json", "-v"],
        ):
            done = await trio.run_process(
                [sys.executable, "-c", DRIVER, *argv],
                capture_stdout=True, capture_stderr=True, env=env,
            )  # fmt: skip
            stderr = done.stderr.decode()
            result = json.loads(Path(env["P2PNET_TEST_MODULES"]).read_text())
            assert result["status"] == 0, stderr
            assert "using the running peer" in stderr, stderr
            assert "http.client" in result["modules"]
            assert loaded(result["modules"], API_PATH_MODULES) == [], argv
            outputs.append(json.loads(done.stdout))
        server.cancel_scope.cancel()
    found, called = outputs
    (offer,) = found["offers"]
    assert offer["peer_id"] == provider.peer_id and offer["tasks"] == ["iris-species"]
    assert called["label"]["data"] == [0]
