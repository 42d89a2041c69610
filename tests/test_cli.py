"""The p2pnet command as a user runs it: real processes, real output, real exit codes."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from p2pnet.cli import main
from p2pnet.cli.call import CallOptions
from p2pnet.cli.options import SwarmOptions, parse_price
from p2pnet.cli.parser import build_parser
from p2pnet.cli.peer import PeerOptions, ServedFile
from p2pnet.cli.render import outputs_table
from p2pnet.core.pricing import Price
from p2pnet.errors import InvalidInputError, UsageError
from p2pnet.inputs import parse_input


def p2pnet(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def env(config_home: Path) -> dict[str, str]:
    return os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200"}


class RunningPeer:
    def __init__(self, proc: subprocess.Popen[str], lines: list[str]) -> None:
        self.proc = proc
        self.lines = lines
        self.address = next(line.split()[1] for line in lines if line.startswith("listening"))
        self.models = {
            m.group(2): m.group(1)
            for line in lines
            if (m := re.match(r"serving (\S+) (\S+)", line))
        }


def start_peer(env: dict[str, str], *args: str) -> RunningPeer:
    """Start `p2pnet peer` and wait for its "ready" line (up to 60 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pnet.cli", "peer", "--listen", "/ip4/127.0.0.1/tcp/0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line.strip()) for line in stdout], daemon=True
    ).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not seen or not seen[-1].startswith("ready"):
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"peer not ready in 60 s; exit {proc.wait()}; output {seen}")
    return RunningPeer(proc, seen)


@pytest.fixture
def running_peer(env: dict[str, str], models: dict[str, Path]) -> Iterator[RunningPeer]:
    peer = start_peer(env, "--serve", str(models["iris"]), "--serve", str(models["sentiment"]))
    yield peer
    if peer.proc.poll() is None:
        peer.proc.kill()
        peer.proc.wait()


@pytest.mark.slow
def test_id_creates_a_private_key_once(env: dict[str, str], config_home: Path) -> None:
    first = json.loads(p2pnet("id", "--json", env=env).stdout)
    second = json.loads(p2pnet("id", "--json", env=env).stdout)
    assert first["created"] and not second["created"]
    assert first["peer_id"] == second["peer_id"]
    key = config_home / "p2pnet" / "identity.key"
    assert first["identity"] == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.slow
def test_model_inspect_json(env: dict[str, str], models: dict[str, Path]) -> None:
    result = p2pnet("model", "inspect", "--json", str(models["iris"]), env=env)
    info = json.loads(result.stdout)
    assert info["model_id"].startswith("bafkrei") and info["size"] == models["iris"].stat().st_size
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]


@pytest.mark.slow
def test_model_inspect_of_a_file_that_is_not_onnx(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 20)
    result = p2pnet("model", "inspect", str(bad), env=env)
    assert result.returncode == 2 and "is not an ONNX model" in result.stderr


@pytest.mark.slow
def test_serve_call_and_stop_with_ctrl_c(env: dict[str, str], running_peer: RunningPeer) -> None:
    result = p2pnet(
        "call", running_peer.address, running_peer.models["iris"], "--json",
        "--input", "x=[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    assert outputs["label"] == {"dtype": "int64", "shape": [2], "data": [0, 2]}

    result = p2pnet(
        "call",
        running_peer.address,
        running_peer.models["sentiment"],
        "--input",
        "text=I love it, works great",
        env=env,
    )
    assert result.returncode == 0 and "positive" in result.stdout

    running_peer.proc.send_signal(signal.SIGINT)
    assert running_peer.proc.wait(timeout=30) == 0
    assert running_peer.proc.stderr is not None
    assert "stopped" in running_peer.proc.stderr.read()


@pytest.mark.slow
def test_call_errors_say_what_is_wrong_and_exit_non_zero(
    env: dict[str, str], running_peer: RunningPeer, tmp_path: Path
) -> None:
    iris = running_peer.models["iris"]
    result = p2pnet("call", running_peer.address, iris, "--input", "x=[[1, 2, 3]]", env=env)
    assert result.returncode == 2
    assert "error (in the call or the configuration)" in result.stderr
    assert "size 3 on axis 1; the model expects 4" in result.stderr
    assert "Traceback" not in result.stderr

    npy = tmp_path / "x.npy"
    np.save(npy, np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
    result = p2pnet("call", running_peer.address, iris, "--input", f"x=@{npy}", "--json", env=env)
    assert json.loads(result.stdout)["label"]["data"] == [0]

    # Another identity (a peer calling its own ID answers itself, whatever the address).
    dead = re.sub(r"/tcp/\d+/", "/tcp/1/", running_peer.address)
    result = p2pnet(
        "call", dead, iris, "--input", "x=[[1, 2, 3, 4]]", "--timeout", "10",
        "--identity", str(tmp_path / "other.key"), env=env,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot connect to peer" in result.stderr


@pytest.mark.slow
def test_a_taken_port_is_an_error_not_a_shared_port(
    env: dict[str, str], running_peer: RunningPeer
) -> None:
    port = re.search(r"/tcp/(\d+)/", running_peer.address).group(1)  # type: ignore[union-attr]
    result = p2pnet("peer", "--listen", f"/ip4/127.0.0.1/tcp/{port}", env=env, timeout=30)
    assert result.returncode == 2 and "Address already in use" in result.stderr


@pytest.mark.slow
def test_sigterm_stops_a_peer_cleanly(env: dict[str, str], models: dict[str, Path]) -> None:
    peer = start_peer(env, "--serve", str(models["identity"]))
    peer.proc.send_signal(signal.SIGTERM)
    assert peer.proc.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("spec", "name", "dtype", "value"),
    [
        ("x=[[1.5, 2]]", "x", "float32", [[1.5, 2.0]]),
        ("n=[1, 2]", "n", "float32", [1.0, 2.0]),
        ("n:int64=[1, 2]", "n", "int64", [1, 2]),
        ("x:float64=[1]", "x", "float64", [1.0]),
        ("b:bool=[true, false]", "b", "bool", [True, False]),
        ("text=I love it", "text", "object", ["I love it"]),
        ('text=["a", "b"]', "text", "object", ["a", "b"]),
        ("t:string=[1]", "t", "object", [1]),
        ("v=3", "v", "float32", [3.0]),
    ],
)
def test_parse_input_forms(spec: str, name: str, dtype: str, value: object) -> None:
    parsed_name, arr = parse_input(spec)
    assert parsed_name == name and arr.dtype == np.dtype(dtype) and arr.tolist() == value


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("novalue", "expected NAME=VALUE"),
        ("x:complex=[1]", "unknown dtype 'complex'"),
        ("x=@/nonexistent.npy", "cannot load"),
        ("x=[[1, 2], [3]]", "is not a tensor"),
    ],
)
def test_parse_input_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_input(spec)


PEER_A = "12D3KooWEtJQnzCAiTpqs1bC1qZy9auioRn9RmZsZYtGpjuJZzzi"


def typed_options(*argv: str) -> Any:
    """The typed options the command of a command line makes of its parsed arguments."""
    args = build_parser().parse_args(argv)
    before = copy.deepcopy(vars(args))
    options = args.handler.options(args)
    assert vars(args) == before  # the namespace is read, never changed
    return options


def test_peer_options_give_each_served_file_its_tasks_and_access_list() -> None:
    options = typed_options(
        "peer", "--task", "all", "--allow", "A", "--serve", "a.onnx", "--task", "mine",
        "--serve", "b.onnx", "--allow", "B, C", "--allow", "D", "--role", "bootstrap",
    )  # fmt: skip
    assert isinstance(options, PeerOptions)
    assert options.served == (
        ServedFile(Path("a.onnx"), ("all", "mine"), ("A",)),
        ServedFile(Path("b.onnx"), ("all",), ("A", "B", "C", "D")),
    )
    assert options.listen == ("/ip4/127.0.0.1/tcp/0",) and options.role == "bootstrap"
    options = typed_options("peer", "--serve", "a.onnx", "--listen", "/ip4/0.0.0.0/tcp/4001")
    assert options.served == (ServedFile(Path("a.onnx"), (), None),)  # served to everyone
    assert options.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert options.threads is None  # the CPUs shared among the runs (OnnxModel)
    assert typed_options("peer", "--threads", "0").threads == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.listen = ()


def test_call_options_are_typed_once(config_home: Path) -> None:
    options = typed_options(
        "call", "--task", "t", "-i", "x=[1]", "--input", "y=2", "--timeout", "5",
        "--bootstrap", f"/ip4/10.0.0.9/tcp/4001/p2p/{PEER_A}", "--swarm", "lab", "--json",
    )  # fmt: skip
    assert isinstance(options, CallOptions)
    assert options.target == () and options.inputs == ("x=[1]", "y=2")
    discovery = options.discovery
    assert (discovery.task, discovery.model, discovery.timeout) == ("t", None, 5.0)
    assert discovery.json and discovery.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert discovery.swarm == SwarmOptions("lab", None, (f"/ip4/10.0.0.9/tcp/4001/p2p/{PEER_A}",))
    # The named swarm is read from the config file when the command runs.
    (config_home / "p2pnet").mkdir(parents=True)
    (config_home / "p2pnet" / "config.toml").write_text(
        f'[swarms.lab]\nbootstrap = ["/ip4/10.0.0.5/tcp/4001/p2p/{PEER_A}"]\n'
        'swarm_key = "lab.key"\n'
    )
    join = discovery.swarm.resolve()
    assert join.bootstrap == (
        f"/ip4/10.0.0.9/tcp/4001/p2p/{PEER_A}",
        f"/ip4/10.0.0.5/tcp/4001/p2p/{PEER_A}",
    )
    assert join.swarm_key == config_home / "p2pnet" / "lab.key"


def test_an_option_the_parser_cannot_check_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["peer", "--max-concurrency", "0"])
    assert exit_.value.code == 2
    assert "p2pnet: error: --max-concurrency must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["peer", "--threads", "-1"])
    assert exit_.value.code == 2
    assert "p2pnet: error: --threads must be 0 (onnxruntime chooses) or more" in (
        capsys.readouterr().err
    )


def test_main_returns_2_for_usage_errors(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "call",
                "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEtJQnzCAiTpqs1bC1qZy9auioRn9RmZsZYtGpjuJZzzi",
                "not-a-cid",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "is not a model ID" in error
    assert error.startswith("error (in the call or the configuration): ")


@pytest.mark.network
def test_an_unreachable_peer_is_the_networks_fault_and_exits_1(
    config_home: Path, capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    peer = "12D3KooWEtJQnzCAiTpqs1bC1qZy9auioRn9RmZsZYtGpjuJZzzi"
    model = "bafkreiaxqt5sxq7qfwvuaoijeyy5stw3ar7jbrtvtqq44y2hpebzs3dmaq"
    address = f"/ip4/127.0.0.1/tcp/{refused_port}/p2p/{peer}"
    assert main(["call", address, model, "-i", "x=[1]", "--timeout", "5"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error (the network between the peers): ")
    assert peer in error


def test_error_messages_keep_their_brackets(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages are printed as text, not as rich markup that would eat '[...]'."""
    assert main(["pipeline", "run", "missing.yaml", "--input", "x:floatx[1]=[1]"]) == 2
    assert "cannot read pipeline missing.yaml" in capsys.readouterr().err
    spec = config_home.parent / "p.yaml"
    spec.write_text(
        "inputs: {x: 'float32[n]'}\nsteps: {a: {task: t, inputs: {x: input.x}}}\n"
        "outputs: {y: a.y}\n"
    )
    assert main(["pipeline", "run", str(spec), "--input", "x:int64=[1]"]) == 2
    assert "float32[n]" in capsys.readouterr().err


def test_outputs_from_other_peers_are_printed_as_text_not_markup() -> None:
    """A model's output (or a name in a record) with '[...]' in it must neither restyle the
    table nor, with an unmatched '[/...]', fail the print."""
    console = Console(record=True, width=200)
    outputs = {"[b]y": np.array(["[/oops]", "[bold]b"], dtype=object)}
    console.print(outputs_table("m[/x] on 12D3...", outputs))
    text = console.export_text()
    assert "m[/x] on 12D3..." in text and "[b]y" in text
    assert "['[/oops]' '[bold]b']" in text


@pytest.mark.slow
def test_find_and_call_by_task_through_a_bootstrap_peer(
    env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    boot = start_peer(env | {"XDG_CONFIG_HOME": str(tmp_path / "boot")}, "--role", "bootstrap")
    server = start_peer(
        env | {"XDG_CONFIG_HOME": str(tmp_path / "server")},
        "--serve", str(models["sentiment"]), "--task", "sentiment-analysis",
        "--bootstrap", boot.address,
    )  # fmt: skip
    try:
        assert any(line.startswith("announced to") for line in server.lines)
        found = p2pnet(
            "find", "--task", "sentiment-analysis", "--bootstrap", boot.address, "--json", env=env
        )
        assert found.returncode == 0, found.stderr
        as_json = json.loads(found.stdout)
        assert as_json["unanswered"] == []
        (offer,) = as_json["offers"]
        assert offer["model_id"] == server.models["sentiment"]
        assert offer["tasks"] == ["sentiment-analysis"]
        assert offer["inputs"] == [{"name": "text", "dtype": "string", "shape": [None]}]

        called = p2pnet(
            "call", "--task", "sentiment-analysis", "-i", "text=I love it, works great",
            "--bootstrap", boot.address, "--json", env=env,
        )  # fmt: skip
        assert json.loads(called.stdout)["label"]["data"] == ["positive"]

        spec = tmp_path / "one-step.yaml"
        spec.write_text(
            "inputs: {text: 'string[N]'}\n"
            "steps: {mood: {task: sentiment-analysis, inputs: {text: input.text}}}\n"
            "outputs: {label: mood.label}\n"
        )
        for mode in ("orchestrated", "forwarded"):
            ran = p2pnet(
                "pipeline", "run", str(spec), "-i", "text=I love it, works great",
                "--bootstrap", boot.address, "--mode", mode, "--json", env=env,
            )  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            result = json.loads(ran.stdout)
            assert result["outputs"] == {"label": ["positive"]}
            (step,) = result["steps"]
            assert step["model_id"] == server.models["sentiment"] and step["step"] == "mood"

        missing = p2pnet("find", "--task", "translation", "--bootstrap", boot.address, env=env)
        assert missing.returncode == 1 and "no peer offers it" in missing.stderr
        no_swarm = p2pnet("find", "--task", "translation", env=env)
        assert no_swarm.returncode == 2 and "--bootstrap" in no_swarm.stderr
    finally:
        for peer in (server, boot):
            peer.proc.send_signal(signal.SIGINT)
            assert peer.proc.wait(timeout=30) == 0


def test_a_price_is_whole_micro_units_per_call_mb_and_cpu_second() -> None:
    assert parse_price("1000,10000,1000000") == Price(1_000, 10_000, 1_000_000)
    assert parse_price("5") == Price(5, 0, 0)
    for bad in ("", "1.5", "1,2,3,4", "-1", "a,b"):
        with pytest.raises(UsageError, match="--price"):
            parse_price(bad)
