"""Python adapters (docs/adapters.md): a function with a declared schema, served like a model."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from memory_peers import memory_peer

from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    ModelFileError,
    PeerBusyError,
)
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.callable_model import PYTHON_RUNTIME, CallableModel, read_manifest
from p2pnet.runtime.onnx_model import ONNX_RUNTIME

REPO = Path(__file__).resolve().parent.parent
ROUTER = REPO / "examples" / "adapters" / "ticket_router.json"

TICKETS = {
    "emotion": np.array(
        ["anger", "frustration", "worry", "joy", "neutral", "sarcasm", "sadness", "gratitude"],
        object,
    ),
    "article": np.array(
        ["refund-policy", "damaged-item", "damaged-item", "shipping", "refund-policy", "faq",
         "damaged-item", "feedback"],
        object,
    ),
}  # fmt: skip
ROUTED = {
    "priority": ["urgent", "urgent", "normal", "low", "normal", "normal", "urgent", "low"],
    "queue": ["escalations", "escalations", "returns", "support", "billing", "support",
              "escalations", "support"],
}  # fmt: skip

# A test adapter whose behaviour the `mode` input picks.
PROBE_SOURCE = """
import threading
import numpy as np

GATE = threading.Event()


def probe(inputs):
    mode = inputs["mode"][0]
    x = inputs["x"]
    if mode == "raise":
        raise RuntimeError("no luck today")
    if mode == "exit":
        raise SystemExit(3)
    if mode == "missing":
        return {"y": x}
    if mode == "extra":
        return {"y": x, "label": ["a"] * len(x), "z": x}
    if mode == "dtype":
        return {"y": x.astype(np.float64), "label": ["a"] * len(x)}
    if mode == "length":
        return {"y": x, "label": ["a"] * (len(x) + 1)}
    if mode == "list":
        return [x]
    if mode == "wait":
        GATE.wait(10)
    return {"y": x * 2, "label": ["even" if v % 2 == 0 else "odd" for v in x.tolist()]}
"""


def manifest_doc(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "p2pnet-adapter/1",
        "name": "probe",
        "version": "0.1",
        "entry": "probe.py:probe",
        "inputs": [
            {"name": "mode", "dtype": "string", "shape": [1]},
            {"name": "x", "dtype": "int64", "shape": ["n"]},
        ],
        "outputs": [
            {"name": "y", "dtype": "int64", "shape": ["n"]},
            {"name": "label", "dtype": "string", "shape": ["n"]},
        ],
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def write_adapter(directory: Path, source: str = PROBE_SOURCE, **fields: Any) -> Path:
    (directory / "probe.py").write_text(source)
    path = directory / "probe.json"
    path.write_text(json.dumps(manifest_doc(**fields), indent=2))
    return path


def call(mode: str, *xs: int) -> dict[str, np.ndarray]:
    return {"mode": np.array([mode], object), "x": np.array(xs, np.int64)}


def test_the_id_is_the_cid_of_the_manifest_bytes(tmp_path: Path) -> None:
    path = write_adapter(tmp_path)
    manifest = read_manifest(path)
    assert manifest.model_id == model_id_of_bytes(path.read_bytes())
    assert manifest.size == path.stat().st_size
    assert read_manifest(path).model_id == manifest.model_id
    info = CallableModel.load(path).info
    assert (info.model_id, info.name, info.version) == (manifest.model_id, "probe", "0.1")
    assert info.runtime.startswith("python/")
    assert [(t.name, t.dtype, t.shape) for t in info.schema.inputs] == [
        ("mode", "string", (1,)),
        ("x", "int64", ("n",)),
    ]
    # Any change of the bytes is another model: a new version, even new whitespace.
    write_adapter(tmp_path, version="0.2")
    assert read_manifest(path).model_id != manifest.model_id
    path.write_text(json.dumps(manifest_doc()))
    assert read_manifest(path).model_id != manifest.model_id


def test_entry_sha256_pins_the_code(tmp_path: Path) -> None:
    digest = hashlib.sha256(PROBE_SOURCE.encode()).hexdigest()
    path = write_adapter(tmp_path, entry_sha256=digest)
    assert CallableModel.load(path).run_sync(call("ok", 1))["y"].tolist() == [2]
    (tmp_path / "probe.py").write_text(PROBE_SOURCE.replace("x * 2", "x * 3"))
    pinned = f"has SHA-256 [0-9a-f]{{64}}, but the manifest pins {digest}"
    with pytest.raises(ModelFileError, match=pinned):
        CallableModel.load(path)


def test_the_example_ticket_router(tmp_path: Path) -> None:
    model = CallableModel.load(ROUTER)
    assert model.info.name == "ticket-router" and model.manifest.tasks == ("ticket-routing",)
    assert (
        model.manifest.entry_sha256
        == hashlib.sha256((ROUTER.parent / "ticket_router.py").read_bytes()).hexdigest()
    )
    out = model.run_sync(TICKETS)
    assert {k: v.tolist() for k, v in out.items()} == ROUTED
    empty = model.run_sync({"emotion": np.array([], object), "article": np.array([], object)})
    assert empty["priority"].shape == (0,) and empty["priority"].dtype == object


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "p2pnet-adapter/9"}, r"'format' is 'p2pnet-adapter/9'"),
        ({"entry": None}, r"the manifest lacks 'entry'"),
        ({"ouputs": []}, r"unknown manifest field 'ouputs'"),
        ({"name": ""}, r"'name' is empty"),
        ({"name": 7}, r"'name' must be a string, not a number"),
        ({"entry": "probe.py"}, r"it must be 'file.py:function'"),
        ({"entry": "not a module:f"}, r"neither a .py file nor a module name"),
        ({"entry": "json:dumps", "entry_sha256": "0" * 64}, r"names a module"),
        ({"entry_sha256": "abc"}, r"64 lower-case hex digits"),
        ({"tasks": ["Ticket Routing"]}, r"not a task tag"),
        ({"inputs": []}, r"'inputs' must be a non-empty list"),
        (
            {"outputs": [{"name": "y", "dtype": "float128", "shape": []}]},
            r"outputs 'y' has dtype 'float128'; p2pnet carries bool, int8",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "int64", "shape": [-1]}]},
            r"inputs 'x' has dimension -1; a dimension is a size",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "int64"}]},
            r"inputs\[0\] must be an object with exactly the keys name, dtype, shape",
        ),
        (
            {"outputs": [{"name": "y", "dtype": "int64", "shape": []}] * 2},
            r"outputs name tensor 'y' twice",
        ),
    ],
)
def test_bad_manifests_are_model_file_errors(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest_doc(**change)))  # (a None value drops the field)
    with pytest.raises(ModelFileError, match=message):
        read_manifest(path)


def test_files_that_are_not_manifests(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read adapter manifest"):
        read_manifest(tmp_path / "missing.json")
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match="is not a JSON adapter manifest"):
        read_manifest(path)
    path.write_text('{"format": "p2pnet-adapter/1", "format": "p2pnet-adapter/1"}')
    with pytest.raises(ModelFileError, match="key 'format' appears twice"):
        read_manifest(path)
    path.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="is a JSON object, not a list"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("source", "entry", "message"),
    [
        (None, "nowhere.py:probe", r"cannot read entry file .*nowhere.py"),
        (PROBE_SOURCE, "probe.py:route", r"probe.py defines no 'route'"),
        ("probe = 42\n", "probe.py:probe", r"'probe' is a number, not a function"),
        ("def probe(:\n", "probe.py:probe", r"fails to load: SyntaxError"),
        ("import no_such_module_here\n", "probe.py:probe", r"fails to load: ModuleNotFoundError"),
        ("def probe(a, b):\n    pass\n", "probe.py:probe", r"probe\(a, b\) must take one arg"),
        (None, "no_such_module_here:probe", r"module 'no_such_module_here' cannot be imported"),
    ],
)
def test_bad_entries_are_model_file_errors(
    tmp_path: Path, source: str | None, entry: str, message: str
) -> None:
    path = write_adapter(tmp_path, source or "", entry=entry)
    if source is None:
        (tmp_path / "probe.py").unlink()
    with pytest.raises(ModelFileError, match=message):
        CallableModel.load(path)


def test_an_entry_in_an_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "adapter_pkg_for_tests"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text(PROBE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_adapter(tmp_path, entry="adapter_pkg_for_tests.steps:probe")
    assert CallableModel.load(path).run_sync(call("ok", 3))["label"].tolist() == ["odd"]
    assert read_manifest(path).entry_file is None


def test_inputs_are_checked_against_the_schema(tmp_path: Path) -> None:
    model = CallableModel.load(write_adapter(tmp_path))
    with pytest.raises(InvalidInputError, match="missing input 'x'"):
        model.run_sync({"mode": np.array(["ok"], object)})
    with pytest.raises(InvalidInputError, match="input 'x' has dtype float32; the model expects"):
        model.run_sync({"mode": np.array(["ok"], object), "x": np.ones(2, np.float32)})
    with pytest.raises(InvalidInputError, match=r"input 'mode' has size 2 on axis 0"):
        model.run_sync({"mode": np.array(["ok", "ok"], object), "x": np.ones(2, np.int64)})
    with pytest.raises(InvalidInputError, match=r"input 'x' has shape \[1, 2\] \(rank 2\)"):
        model.run_sync({"mode": np.array(["ok"], object), "x": np.ones((1, 2), np.int64)})
    with pytest.raises(InvalidInputError, match="unexpected input 'z'"):
        model.run_sync({**call("ok", 1), "z": np.ones(1)})


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("raise", r"probe \(bafkrei\w+\) failed: RuntimeError: no luck today"),
        ("exit", r"failed: SystemExit: 3"),
        ("missing", r"returned bad outputs: it returned no output 'label'; it declares "
         r"y: int64\[n\], label: string\[n\]"),
        ("extra", r"returned an undeclared output 'z'"),
        ("dtype", r"output 'y' has dtype float64; it declares int64 \(y: int64\[n\]\)"),
        ("length", r"dimension 'n' is 2 in input 'x' but 3 in output 'label'"),
        ("list", r"it returned a list; it must return a dict of its outputs"),
    ],
)  # fmt: skip
async def test_bad_outputs_are_model_errors_and_the_model_serves_on(
    tmp_path: Path, mode: str, message: str
) -> None:
    model = CallableModel.load(write_adapter(tmp_path), max_concurrency=1)
    with pytest.raises(ModelExecutionError, match=message):
        await model.run(call(mode, 1, 2), timeout=5)
    out = await model.run(call("ok", 1, 2), timeout=5)
    assert out["y"].tolist() == [2, 4] and out["label"].tolist() == ["odd", "even"]


async def test_deadline_busy_and_wait_idle(tmp_path: Path) -> None:
    model = CallableModel.load(write_adapter(tmp_path), max_concurrency=1, max_queue=1)
    gate = model._function.__globals__["GATE"]  # type: ignore[attr-defined]
    gate.clear()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(model.run, call("wait", 1))  # running, held at the gate
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(model.run, call("ok", 1))  # queued behind it
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(PeerBusyError, match="model probe has 2 calls running or queued"):
                await model.run(call("ok", 1))
            gate.set()
        gate.clear()
        with pytest.raises(DeadlineExceededError, match="did not finish within 50 ms"):
            await model.run(call("wait", 1), timeout=0.05)
        assert not await model.wait_idle(0)  # the abandoned run keeps its slot
        gate.set()
        assert await model.wait_idle(5)
    finally:
        gate.set()


async def test_served_by_a_peer_found_by_task_and_called(tmp_path: Path) -> None:
    """On the memory network; over libp2p: test_p2pnet_peer_serves_an_adapter_manifest."""
    probe = write_adapter(tmp_path, tasks=["probe-step"])
    async with (
        MemoryNetwork() as network,
        memory_peer(network) as boot,
        memory_peer(network, bootstrap=[boot.addrs[0]]) as server,
    ):
        info = server.serve(ROUTER)  # the manifest's tasks: ticket-routing
        server.serve(probe)
        assert await server.announce() > 0

        (offer,) = await boot.find(task="ticket-routing")
        record = offer.record
        assert (record.peer_id, record.model_id) == (server.peer_id, info.model_id)
        assert record.runtime.startswith("python/") and record.name == "ticket-router"
        assert record.version == "1.0.0" and record.tasks == ("ticket-routing",)
        assert [t.name for t in record.schema.outputs] == ["priority", "queue"]

        out = await boot.invoke(server.addrs[0], info.model_id, TICKETS, timeout=10)
        assert {k: v.tolist() for k, v in out.items()} == ROUTED
        by_task = await boot.call(TICKETS, task="ticket-routing")
        assert by_task["queue"].tolist() == ROUTED["queue"]

        with pytest.raises(InvalidInputError, match="missing input 'article'") as bad_input:
            await boot.invoke(server.addrs[0], info.model_id, {"emotion": TICKETS["emotion"]})
        assert bad_input.value.peer == server.peer_id
        probe_id = read_manifest(probe).model_id
        with pytest.raises(ModelExecutionError, match="returned no output 'label'") as failed:
            await boot.invoke(server.addrs[0], probe_id, call("missing", 1))
        assert failed.value.peer == server.peer_id
        out = await boot.invoke(server.addrs[0], probe_id, call("ok", 5))
        assert out["label"].tolist() == ["odd"]


@pytest.mark.slow
def test_p2pnet_peer_serves_an_adapter_manifest(config_home: Path) -> None:
    env = os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pnet.cli", "peer", "--serve", str(ROUTER)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line.strip()) for line in stdout], daemon=True
        ).start()
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not seen or not seen[-1].startswith("ready"):
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        address = next(line.split()[1] for line in seen if line.startswith("listening"))
        model_id = read_manifest(ROUTER).model_id
        assert f"serving {model_id} ticket-router ticket-routing" in seen
        result = subprocess.run(
            [sys.executable, "-m", "p2pnet.cli", "call", address, model_id, "--json",
             "-i", "emotion=anger", "-i", "article=refund-policy"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs = json.loads(result.stdout)
        assert outputs["priority"]["data"] == ["urgent"]
        assert outputs["queue"]["data"] == ["escalations"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.search(r"^stopped", proc.stderr.read() if proc.stderr else "", re.M)


def test_model_info_names_and_runtimes() -> None:
    schema = ModelSchema((TensorSpec("x", "float32", (None,)),), (TensorSpec("y", "int64", ()),))
    onnx_info = ModelInfo(
        model_id_of_bytes(b"graph"), Path("m/iris.onnx"), 5, schema, runtime=ONNX_RUNTIME
    )
    assert (onnx_info.name, onnx_info.version, onnx_info.runtime) == ("iris", "", ONNX_RUNTIME)
    assert ONNX_RUNTIME.startswith("onnxruntime/") and PYTHON_RUNTIME.startswith("python/")
