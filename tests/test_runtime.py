import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pnet import OnnxModel, Peer, inspect_model
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    ModelFileError,
    PeerBusyError,
)
from p2pnet.runtime.served import threads_per_run, usable_cpus


def test_inspect_reads_id_size_and_schema_from_the_graph(models: dict[str, Path]) -> None:
    info = inspect_model(models["iris"])
    data = models["iris"].read_bytes()
    assert info.model_id == model_id_of_bytes(data) and info.size == len(data)
    assert [(t.name, t.dtype, t.shape) for t in info.schema.inputs] == [("x", "float32", (None, 4))]
    assert [(t.name, t.dtype, t.shape) for t in info.schema.outputs] == [
        ("label", "int64", (None,)),
        ("probabilities", "float32", (None, 3)),
    ]
    text = inspect_model(models["sentiment"]).schema
    assert text.inputs[0].dtype == "string" and text.outputs[0].dtype == "string"
    assert inspect_model(models["matmul"]).schema.inputs[0].shape == ("n", "n")


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read model file"):
        inspect_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 certainly not protobuf \xff" * 10)
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        inspect_model(junk)


def test_sessions_do_not_spin_between_runs(models: dict[str, Path]) -> None:
    # Spinning intra-op threads take the cores a peer's network stack and other models
    # need (docs/benchmarks.md, "Pipelines").
    session = OnnxModel.load(models["iris"])._session
    assert (
        session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        == "0"
    )


def _threads(model: OnnxModel) -> int:
    return int(model._session.get_session_options().intra_op_num_threads)


def test_runs_at_once_ask_for_no_more_threads_than_there_are_cpus(
    models: dict[str, Path],
) -> None:
    # onnxruntime's own choice, a thread per core for every run, made two runs at once
    # on two cores cost a third more CPU for no less time (docs/models.md, "Threads").
    cpus = usable_cpus()
    assert _threads(OnnxModel.load(models["iris"])) == max(1, cpus // 2)
    assert _threads(OnnxModel.load(models["iris"], max_concurrency=1)) == cpus
    assert _threads(OnnxModel.load(models["iris"], max_concurrency=cpus + 1)) == 1
    assert _threads(OnnxModel.load(models["iris"], threads=3)) == 3
    assert _threads(OnnxModel.load(models["iris"], threads=0)) == 0  # onnxruntime chooses
    with pytest.raises(ValueError, match="threads must be >= 0"):
        OnnxModel.load(models["iris"], threads=-1)


@given(st.integers(1, 256), st.integers(1, 512))
def test_threads_per_run_shares_the_cpus_among_the_runs(concurrency: int, cpus: int) -> None:
    threads = threads_per_run(concurrency, cpus)
    assert threads >= 1
    assert threads * concurrency <= cpus or threads == 1
    assert (threads + 1) * concurrency > cpus  # no CPU left idle that a thread could use


async def test_a_peer_passes_its_threads_to_the_models_it_loads(
    models: dict[str, Path],
) -> None:
    async with Peer(threads=1) as peer:
        peer.serve(models["iris"])
        peer.serve(models["digits"], threads=2)
        threads = {
            m.info.name: _threads(m) for m in peer.models.values() if isinstance(m, OnnxModel)
        }
    assert threads == {"iris": 1, "digits": 2}


def test_run_sync_checks_inputs_and_reports_runtime_failures(models: dict[str, Path]) -> None:
    model = OnnxModel.load(models["reshape3"])
    assert model.run_sync({"x": np.arange(6, dtype=np.float32)})["y"].shape == (3, 2)
    with pytest.raises(InvalidInputError):
        model.run_sync({"x": np.arange(6, dtype=np.float64)})
    with pytest.raises(ModelExecutionError, match="reshape3"):
        model.run_sync({"x": np.arange(4, dtype=np.float32)})


async def test_run_times_out_and_keeps_the_concurrency_limit(models: dict[str, Path]) -> None:
    model = OnnxModel.load(models["matmul"], max_concurrency=1)
    with pytest.raises(DeadlineExceededError, match="did not finish within 10 ms"):
        await model.run({"a": np.ones((2500, 2500), np.float32)}, timeout=0.01)
    # The abandoned run still holds the only slot until it really ends.
    assert not await model.wait_idle(0)
    assert await model.wait_idle(30)
    out = await model.run({"a": np.eye(2, dtype=np.float32)}, timeout=5)
    assert out["y"].tolist() == [[1, 0], [0, 1]]


async def test_concurrent_runs_are_limited(models: dict[str, Path]) -> None:
    model = OnnxModel.load(models["identity"], max_concurrency=2)
    original = model._run_checked
    lock = threading.Lock()
    two_running = threading.Event()
    active = peak = 0

    def tracked(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 2:
                two_running.set()
        try:
            two_running.wait(timeout=10)
            return original(inputs)
        finally:
            with lock:
                active -= 1

    model._run_checked = tracked  # type: ignore[method-assign]
    results = []

    async def one(i: int) -> None:
        results.append((await model.run({"x": np.full(3, i, np.float32)}))["y"][0])

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(6))
    assert peak == 2


async def test_calls_beyond_the_queue_are_refused_as_busy(models: dict[str, Path]) -> None:
    model = OnnxModel.load(models["identity"], max_concurrency=1, max_queue=1)
    release = threading.Event()
    original = model._run_checked
    model._run_checked = lambda inputs: (release.wait(10), original(inputs))[1]  # type: ignore[method-assign]
    x = {"x": np.ones(2, np.float32)}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(model.run, x)  # runs, blocked
        nursery.start_soon(model.run, x)  # queued
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(PeerBusyError, match="2 calls running or queued"):
            await model.run(x)
        release.set()
    assert (await model.run(x))["y"].tolist() == [1, 1]
