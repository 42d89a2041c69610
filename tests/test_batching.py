"""Dynamic batching: the pure decisions (core/batching.py), the batched model
(runtime/batching.py), and batched models served by a peer on a memory swarm."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from p2pnet import Batching, Peer
from p2pnet.cli.parser import build_parser
from p2pnet.cli.peer import PeerOptions, ServedFile
from p2pnet.cli.status import status_text
from p2pnet.core.batching import (
    QueuedCall,
    batched_runtime,
    check_batchable,
    concatenate_rows,
    is_batched_runtime,
    next_due,
    shape_key,
    split_rows,
    take_batch,
)
from p2pnet.core.callstats import tensor_bytes
from p2pnet.core.model_id import model_id_from_digest
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.pricing import Price, Usage, units_for
from p2pnet.core.receipts import tensor_hash, verify_receipt
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import ModelExecutionError, PeerBusyError, UsageError
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.batching import BatchedModel
from p2pnet.runtime.onnx_model import ONNX_RUNTIME, OnnxModel
from p2pnet.runtime.served import SlottedModel
from p2pnet.status import PeerStatus, StatusFile
from tests.memory_peers import memory_peer

ROWS = [1, 3, 7, 2, 5, 1, 4, 6, 1, 2]  # the callers' row counts, mixed


def _schema(first: int | str | None = "n", out_first: int | str | None = "n") -> ModelSchema:
    return ModelSchema(
        (TensorSpec("x", "float32", (first, 2)),), (TensorSpec("y", "float32", (out_first, 2)),)
    )


def _queued(
    rows: int, at: float = 0.0, key: str = "a", deadline: float = 100.0, **kw: Any
) -> QueuedCall[object]:
    return QueuedCall(object(), rows, ((key, "<f4", (2,)),), at, deadline, **kw)


# --- pure -----------------------------------------------------------------------------


def test_only_models_with_a_free_first_dimension_everywhere_can_be_batched() -> None:
    check_batchable(_schema("n", "n"), "m")
    check_batchable(_schema(None, None), "m")  # unnamed (as scikit-learn exports write it)
    with pytest.raises(UsageError, match=r"input 'x' has a fixed first dimension of 1"):
        check_batchable(_schema(1, "n"), "m")
    with pytest.raises(UsageError, match=r"output 'y' has a fixed first dimension of 3"):
        check_batchable(_schema("n", 3), "m")
    square = ModelSchema((TensorSpec("a", "float32", ("n", "n")),), _schema().outputs)
    with pytest.raises(UsageError, match=r"input 'a' uses the batch dimension 'n' on axis 1"):
        check_batchable(square, "m")


def test_policy_bounds() -> None:
    with pytest.raises(UsageError, match="max batch must be 1 to"):
        Batching(max_batch=0)
    with pytest.raises(UsageError, match="max batch delay must be 0 to"):
        Batching(max_batch=4, max_delay_ms=-1)


def test_a_batch_is_due_when_full_or_when_its_oldest_call_has_waited() -> None:
    policy = Batching(max_batch=8, max_delay_ms=10)
    queue = [_queued(3, at=0.0), _queued(2, at=0.004)]
    assert take_batch(queue, 0.009, policy) is None
    assert next_due(queue, policy) == pytest.approx(0.010)
    assert take_batch(queue, 0.010, policy) == queue  # oldest waited 10 ms
    full = [*queue, _queued(3, at=0.005)]
    assert take_batch(full, 0.005, policy) == full  # 8 rows: at once


def test_calls_of_other_shapes_do_not_go_together_and_large_calls_run_alone() -> None:
    policy = Batching(max_batch=8, max_delay_ms=10)
    a1, b1, a2 = _queued(2, key="a"), _queued(2, key="b"), _queued(3, key="a")
    assert take_batch([a1, b1, a2], 1.0, policy) == [a1, a2]
    big, small = _queued(20), _queued(1)
    assert take_batch([big, small], 0.0, policy) == [big]  # over max_batch: alone, at once
    # A call that does not fit is left for the next batch, which is then due at once.
    five, four, one = _queued(5), _queued(4, at=0.001), _queued(1, at=0.002)
    assert take_batch([five, four, one], 0.0, policy) == [five, one]


def test_a_call_near_its_deadline_is_not_held_for_the_delay() -> None:
    policy = Batching(max_batch=8, max_delay_ms=1000)
    queue = [_queued(1, at=0.0, deadline=0.5)]
    assert next_due(queue, policy, reserve=0.1) == pytest.approx(0.4)
    assert take_batch(queue, 0.39, policy, reserve=0.1) is None
    assert take_batch(queue, 0.4, policy, reserve=0.1) == queue


def test_the_best_placed_call_leads_its_batch() -> None:
    policy = Batching(max_batch=4, max_delay_ms=0)
    low, high = _queued(3, order=0, priority=0), _queued(3, order=1, priority=5)
    assert take_batch([low, high], 0.0, policy) == [high]


def test_outputs_that_do_not_keep_rows_apart_cannot_be_split() -> None:
    outputs = {"y": np.zeros((3, 2), np.float32)}
    with pytest.raises(ModelExecutionError, match="returned 3 rows in output 'y' for a batch of 4"):
        split_rows(outputs, [1, 3], "m")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.sampled_from("ab")), min_size=1, max_size=30),
    st.integers(1, 16),
)
def test_any_mix_of_calls_gets_exactly_its_own_rows(
    calls: list[tuple[int, str]], max_batch: int
) -> None:
    """Every call gets its own rows back, in order, from batches that never exceed
    ``max_batch`` rows unless they hold one call alone."""
    policy = Batching(max_batch=max_batch, max_delay_ms=1)
    width = {"a": 2, "b": 3}
    inputs = [
        {"x": np.arange(rows * width[key], dtype=np.float32).reshape(rows, width[key]) + 1000 * i}
        for i, (rows, key) in enumerate(calls)
    ]
    queue = [
        QueuedCall(i, calls[i][0], shape_key(inputs[i]), i * 1e-4, 100.0, order=i)
        for i in range(len(calls))
    ]
    got: dict[int, dict[str, npt.NDArray[Any]]] = {}
    while queue:
        batch = take_batch(queue, 1.0, policy)
        assert batch is not None  # everything waited past the delay
        rows = [call.rows for call in batch]
        assert sum(rows) <= max_batch or len(batch) == 1
        assert len({call.key for call in batch}) == 1
        merged = concatenate_rows([inputs[call.item] for call in batch])
        outputs = {"y": merged["x"] * 2, "z": merged["x"][:, :1] - 1}  # row-wise "model"
        for call, part in zip(batch, split_rows(outputs, rows, "m"), strict=True):
            got[call.item] = part
        queue = [call for call in queue if call not in batch]
    assert sorted(got) == list(range(len(calls)))
    for i, own in enumerate(inputs):
        np.testing.assert_array_equal(got[i]["y"], own["x"] * 2)
        np.testing.assert_array_equal(got[i]["z"], own["x"][:, :1] - 1)


def test_a_batched_runtime_is_never_taken_for_a_bitwise_one() -> None:
    runtime = batched_runtime("onnxruntime/1.32.0")
    assert runtime == "onnxruntime/1.32.0 batched"
    assert is_batched_runtime(runtime) and is_batched_runtime(f"{runtime}; x86_64 avx2; 2 cpus")
    assert not is_batched_runtime("onnxruntime/1.32.0; x86_64 avx2; 2 cpus")
    assert not is_batched_runtime("onnxruntime/1.32.0; batched-machine")  # the machine part


# --- the batched model ------------------------------------------------------------------


class Doubler(SlottedModel):
    """x float32 [n, 2] -> y = 2x; counts its runs, and fails on a negative input."""

    def __init__(self, *, max_concurrency: int = 1, seconds: float = 0.0) -> None:
        info = ModelInfo(
            model_id_from_digest(hashlib.sha256(b"doubler").digest()),
            Path("doubler.onnx"),
            0,
            _schema(),
            runtime="python/test",
        )
        super().__init__(info, max_concurrency=max_concurrency, max_queue=16)
        self.runs: list[int] = []
        self.seconds = seconds  # how long a run takes

    def _run_checked(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        x = inputs["x"]
        self.runs.append(len(x))
        time.sleep(self.seconds)
        if (x < 0).any():
            raise ModelExecutionError("model doubler failed: negative input")
        return {"y": x * 2}


def rows_of(n: int, start: float = 0.0) -> dict[str, npt.NDArray[Any]]:
    return {"x": np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2)}


async def test_a_cancelled_caller_leaves_the_queue_and_the_others_are_served() -> None:
    inner = Doubler()
    model = BatchedModel(inner, Batching(max_batch=8, max_delay_ms=10_000))
    results: dict[str, Mapping[str, Any]] = {}

    async def call(name: str, rows: int, start: float) -> None:
        results[name] = await model.run(rows_of(rows, start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a", 1, 0)
        with trio.CancelScope() as gone:
            async with trio.open_nursery() as inner_nursery:
                inner_nursery.start_soon(call, "b", 4, 100)
                nursery.start_soon(call, "c", 2, 200)
                await trio.testing.wait_all_tasks_blocked()
                assert model.stats.queued == 3
                gone.cancel()
        assert model.stats.queued == 2 and inner.runs == []
        nursery.start_soon(call, "d", 5, 300)  # 1 + 2 + 5 rows: full, runs at once
    assert inner.runs == [8] and sorted(results) == ["a", "c", "d"]
    for name, rows, start in (("a", 1, 0), ("c", 2, 200), ("d", 5, 300)):
        np.testing.assert_array_equal(results[name]["y"], rows_of(rows, start)["x"] * 2)
    assert await model.wait_idle(5)


async def test_a_call_near_its_deadline_runs_before_it() -> None:
    inner = Doubler()
    model = BatchedModel(inner, Batching(max_batch=64, max_delay_ms=10_000))
    with trio.fail_after(5):
        out = await model.run(rows_of(2), timeout=1.0)
    np.testing.assert_array_equal(out["y"], rows_of(2)["x"] * 2)
    assert inner.runs == [2]


async def test_calls_beyond_the_queue_limit_are_refused_as_busy() -> None:
    inner = Doubler()
    model = BatchedModel(inner, Batching(max_batch=8, max_delay_ms=10_000, max_queue=2))
    results: list[Mapping[str, Any]] = []

    async def call(rows: int) -> None:
        results.append(await model.run(rows_of(rows)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 4)
        nursery.start_soon(call, 4)  # 4 + 4 rows: full, so it runs
    assert len(results) == 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 3)
        nursery.start_soon(call, 3)  # 3 + 3 rows: they wait for more
        await trio.testing.wait_all_tasks_blocked()
        assert model.stats.queued == 2
        with pytest.raises(PeerBusyError, match="has 2 calls waiting for a batch, its limit"):
            await model.run(rows_of(1))
        nursery.cancel_scope.cancel()  # the two waiting callers give up: they leave
    assert inner.runs == [8] and len(results) == 2 and model.stats.queued == 0


async def test_a_bad_call_is_refused_before_it_joins_a_batch() -> None:
    model = BatchedModel(Doubler(), Batching(max_batch=8, max_delay_ms=10_000))
    with pytest.raises(Exception, match=r"input 'x' has size 3 on axis 1"):
        await model.run({"x": np.zeros((1, 3), np.float32)})
    assert model.stats.queued == 0 and model.stats.batches == 0


# --- served by a peer -------------------------------------------------------------------

PRICE = Price(per_call=1_000, per_mb=10_000, per_cpu_s=0)


async def test_concurrent_callers_each_get_exactly_their_own_rows(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Mixed-size calls of a batched digits model from concurrent callers: each gets
    what an unbatched local run gives for its own inputs, its receipt describes its own
    tensors, and the calls ran as one batch."""
    rng = np.random.default_rng(7)
    inputs = [{"x": rng.uniform(0, 16, (rows, 64)).astype(np.float32)} for rows in ROWS]
    local = OnnxModel.load(models["digits"])
    expected = [local.run_sync(own) for own in inputs]
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=3))
        provider = await stack.enter_async_context(
            memory_peer(network, ledger=tmp_path / "provider.sqlite3")
        )
        # Full at exactly every caller's rows: one batch, whatever the arrival order.
        info = provider.serve(
            models["digits"], price=PRICE, batching=Batching(sum(ROWS), max_delay_ms=10_000)
        )
        caller = await stack.enter_async_context(
            memory_peer(network, ledger=tmp_path / "caller.sqlite3", bootstrap=[provider.addrs[0]])
        )
        got: dict[int, dict[str, Any]] = {}

        async def call(i: int) -> None:
            got[i] = await caller.invoke(provider.addrs[0], info.model_id, inputs[i], timeout=20)

        async with trio.open_nursery() as nursery:
            for i in range(len(ROWS)):
                nursery.start_soon(call, i)
        for i, rows in enumerate(ROWS):
            assert got[i]["label"].shape == (rows,)
            np.testing.assert_array_equal(got[i]["label"], expected[i]["label"])
            # Equal up to float rounding: onnxruntime's kernels sum in another order
            # for another batch size (relative differences of ~1e-5 seen here).
            np.testing.assert_allclose(
                got[i]["probabilities"], expected[i]["probabilities"], rtol=1e-4, atol=1e-9
            )
        batching = provider.status().models[0].batching
        assert batching is not None
        assert (batching["batches"], batching["calls"], batching["rows"]) == (
            1,
            len(ROWS),
            sum(ROWS),
        )
        assert batching["max_batch"] == sum(ROWS) and batching["queued"] == 0
        # What the status file keeps and p2pnet status shows.
        status = provider.status()
        assert PeerStatus.from_dict(status.to_dict()) == status
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(status_text(StatusFile(Path("s.json"), {"pid": 1}, status, False, 1.0)))
        assert "batching up to 32 rows, 10000 ms: 1 batches, 32.0 rows per batch" in (
            console.export_text()
        )
        # Its record says it runs batched (spot checks then compare within a tolerance).
        record = provider.known_records()[0]
        assert record.runtime == f"{ONNX_RUNTIME} batched"
        # One receipt per call, each for its own inputs and outputs.
        ledger = provider.services.accountant.ledger  # type: ignore[union-attr]
        receipts = [verify_receipt(r.envelope) for r in ledger.receipts(role="provider")]
        assert len(receipts) == len(ROWS)
        by_request = {r.request_hash: r for r in receipts}
        for i, own in enumerate(inputs):
            out = got[i]  # the rows this caller got (a receipt covers what was sent)
            receipt = by_request[tensor_hash(own)]
            assert receipt.result_hash == tensor_hash(out)
            usage = Usage(tensor_bytes(own), tensor_bytes(out), 0.0)
            assert receipt.units == units_for(PRICE, usage)
            assert is_batched_runtime(receipt.runtime)
        metrics = _metrics_text(provider)
        assert f'p2pnet_model_batches_total{{model="{info.model_id}"}} 1.0' in metrics
        assert f'p2pnet_model_batch_rows_total{{model="{info.model_id}"}} {sum(ROWS)}.0' in metrics


async def test_each_caller_is_charged_its_rows_share_of_the_batchs_run(tmp_path: Path) -> None:
    """CPU seconds on a receipt: the call's rows' share of its batch's run, not the time
    the caller waited (here one unit is one millisecond of CPU)."""
    per_ms = Price(per_call=0, per_mb=0, per_cpu_s=1_000)
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=6))
        provider = await stack.enter_async_context(
            memory_peer(network, ledger=tmp_path / "provider.sqlite3")
        )
        inner = Doubler(seconds=0.2)
        info = provider.serve(inner, price=per_ms, batching=Batching(4, max_delay_ms=10_000))
        caller = await stack.enter_async_context(
            memory_peer(network, ledger=tmp_path / "caller.sqlite3", bootstrap=[provider.addrs[0]])
        )
        waited: dict[int, float] = {}

        async def call(rows: int) -> None:
            started = trio.current_time()
            await caller.invoke(provider.addrs[0], info.model_id, rows_of(rows, rows))
            waited[rows] = trio.current_time() - started

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, 1)
            nursery.start_soon(call, 3)
        assert inner.runs == [4]
        ledger = provider.services.accountant.ledger  # type: ignore[union-attr]
        by_request = {
            verify_receipt(r.envelope).request_hash: verify_receipt(r.envelope).units
            for r in ledger.receipts(role="provider")
        }
        units = {rows: by_request[tensor_hash(rows_of(rows, rows))] for rows in (1, 3)}
        # The run took 200 ms or a little more: a quarter for one row, three for three.
        assert 50 <= units[1] <= 0.5 * waited[1] * 1000
        assert abs(units[3] - 3 * units[1]) <= 3  # rounding to whole milliseconds
        assert units[1] + units[3] <= 1000 * min(waited.values())


def _metrics_text(peer: Peer) -> str:
    from prometheus_client import generate_latest

    from p2pnet.gateway.metrics import peer_registry

    return generate_latest(peer_registry(peer)).decode()


async def test_a_failing_batch_fails_each_caller_with_the_models_error() -> None:
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=4))
        provider = await stack.enter_async_context(memory_peer(network))
        inner = Doubler()
        info = provider.serve(inner, batching=Batching(max_batch=3, max_delay_ms=10_000))
        caller = await stack.enter_async_context(
            memory_peer(network, bootstrap=[provider.addrs[0]])
        )
        errors: list[Exception] = []

        async def call(start: float) -> None:
            try:
                await caller.invoke(provider.addrs[0], info.model_id, rows_of(1, start))
            except ModelExecutionError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for start in (0.0, -5.0, 10.0):  # one bad row spoils its batch's run
                nursery.start_soon(call, start)
        assert inner.runs == [3] and len(errors) == 3
        assert all("negative input" in str(exc) for exc in errors)
        # The peer keeps serving, batching as before.
        async with trio.open_nursery() as nursery:
            for start in (0.0, 1.0, 2.0):
                nursery.start_soon(call, start)
        assert inner.runs == [3, 3] and len(errors) == 3
        batching = provider.status().models[0].batching
        assert batching is not None and (batching["batches"], batching["failed"]) == (2, 1)


def _fixed_first_dimension_model(path: Path) -> Path:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


async def test_a_model_with_a_fixed_first_dimension_is_refused(tmp_path: Path) -> None:
    path = _fixed_first_dimension_model(tmp_path / "fixed.onnx")
    async with MemoryNetwork(seed=1) as network, memory_peer(network) as peer:
        with pytest.raises(
            UsageError, match=r"model fixed cannot be batched: input 'x' has a fixed first"
        ):
            peer.serve(path, batching=Batching(max_batch=8))
        assert peer.status().models == ()
        peer.serve(path)  # unbatched, it serves
        assert peer.status().models[0].batching is None


def test_batch_flags_attach_to_the_serve_before_them() -> None:
    args = build_parser().parse_args(
        ["peer", "--batch", "8", "--serve", "a.onnx", "--serve", "b.onnx", "--batch", "32",
         "--batch-delay-ms", "1.5", "--serve", "c.onnx", "--batch-delay-ms", "4"]
    )  # fmt: skip
    options = PeerOptions.from_args(args)
    assert options.served == (
        ServedFile(Path("a.onnx"), (), None, Batching(8, 2.0)),
        ServedFile(Path("b.onnx"), (), None, Batching(32, 1.5)),
        ServedFile(Path("c.onnx"), (), None, Batching(8, 4.0)),
    )
    plain = PeerOptions.from_args(build_parser().parse_args(["peer", "--serve", "a.onnx"]))
    assert plain.served == (ServedFile(Path("a.onnx"), (), None),)
    late = build_parser().parse_args(["peer", "--serve", "a.onnx", "--batch-delay-ms", "3"])
    with pytest.raises(UsageError, match=r"--batch-delay-ms for a\.onnx needs --batch ROWS"):
        PeerOptions.from_args(late)
