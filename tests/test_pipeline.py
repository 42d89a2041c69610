"""Pipelines across peers: plan, run orchestrated and forwarded, failover, and errors that
stop a pipeline before anything runs. On the in-memory network, and on real libp2p hosts
on 127.0.0.1 for a full run in both modes and for a provider killed mid-run."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import trio
from memory_peers import BOTH_HOSTS, LIBP2P, memory_peer, peer_maker
from onnx import TensorProto, helper

from p2pnet import Peer
from p2pnet.core.messages import MessageReader
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    SchemaMismatchError,
    UnknownModelError,
)
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message
from p2pnet.net.interfaces import ByteStream
from p2pnet.pipeline import Pipeline
from p2pnet.runtime.onnx_model import OnnxModel

X = np.array([1.0, 2.0, 3.0], dtype=np.float32)

# plus1(x) and times2(x) are independent; add(a, b) needs both: y = (x + 1) + 2x.
SPEC: dict[str, Any] = {
    "pipeline": "arith",
    "inputs": {"x": "float32[n]"},
    "steps": {
        "plus1": {"task": "plus-one", "inputs": {"x": "input.x"}, "deadline": 10},
        "times2": {"task": "times-two", "inputs": {"x": "input.x"}, "deadline": 10},
        "add": {"task": "add", "inputs": {"a": "plus1.y", "b": "times2.y"}, "deadline": 10},
    },
    "outputs": {"y": "add.y", "plus1": "plus1.y"},
}


def _model(path: Path, nodes: list[onnx.NodeProto], inputs: list[str], dtype: int) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(n, dtype, ["n"]) for n in inputs],
        [helper.make_tensor_value_info("y", dtype, ["n"])],
        initializer=[
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def arith(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("arith")
    f, i = TensorProto.FLOAT, TensorProto.INT64
    return {
        "plus1": _model(d / "plus1.onnx", [helper.make_node("Add", ["x", "one"], ["y"])], ["x"], f),
        "times2": _model(
            d / "times2.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])], ["x"], f
        ),
        "add": _model(d / "add.onnx", [helper.make_node("Add", ["a", "b"], ["y"])], ["a", "b"], f),
        "add_int": _model(
            d / "add_int.onnx", [helper.make_node("Add", ["a", "b"], ["y"])], ["a", "b"], i
        ),
    }


@pytest.fixture(params=["memory"])
async def swarm(
    request: pytest.FixtureRequest, arith: dict[str, Path]
) -> AsyncIterator[list[Peer]]:
    """Peer 0 bootstraps and calls; peers 1, 2, 3 serve plus1, times2, add. On the memory
    network unless the test asks for "libp2p" hosts."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, request.param)
        boot = await stack.enter_async_context(new_peer())
        peers = [boot]
        for _ in range(3):
            peers.append(await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]])))
        for peer, name, task in zip(
            peers[1:], ("plus1", "times2", "add"), ("plus-one", "times-two", "add"), strict=True
        ):
            peer.serve(arith[name], tasks=[task])
            assert await peer.announce() > 0
        yield peers


def expected(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (x + 1) + 2 * x


@pytest.mark.parametrize("swarm", BOTH_HOSTS, indirect=True)
@pytest.mark.parametrize("mode", ["orchestrated", "forwarded"])
async def test_three_peer_pipeline_with_provenance(swarm: list[Peer], mode: str) -> None:
    pipeline = Pipeline.from_dict(SPEC)
    result = await pipeline.run(swarm[0], {"x": X}, mode=mode)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.outputs["y"], expected(X))
    np.testing.assert_allclose(result.outputs["plus1"], X + 1)
    by_step = {t.step: t for t in result.steps}
    assert set(by_step) == {"plus1", "times2", "add"}
    for i, step in enumerate(("plus1", "times2", "add"), start=1):
        assert by_step[step].peer_id == swarm[i].peer_id
        assert by_step[step].model_id == next(iter(swarm[i].models))
        assert by_step[step].model_name == step
    assert result.steps[-1].step == "add"
    # Forwarded: each serving peer ran exactly one step and only peer 1 was called by us.
    for peer in swarm[1:]:
        assert peer.status().calls_served == 1


async def test_the_caller_may_serve_a_step_itself(
    swarm: list[Peer], arith: dict[str, Path]
) -> None:
    swarm[0].serve(arith["plus1"], tasks=["plus-one"])
    await swarm[0].announce()
    pipeline = Pipeline.from_dict(SPEC)
    plan = await pipeline.plan(swarm[0])
    offers = plan.steps["plus1"].offers
    assert {o.record.peer_id for o in offers} == {swarm[0].peer_id, swarm[1].peer_id}
    local_first = sorted(offers, key=lambda o: o.record.peer_id != swarm[0].peer_id)
    plan = _with_offers(plan, "plus1", local_first)
    for mode in ("orchestrated", "forwarded"):
        result = await pipeline.run(swarm[0], {"x": X}, mode=mode, plan=plan)  # type: ignore[arg-type]
        np.testing.assert_allclose(result.outputs["y"], expected(X))
        assert {t.step: t.peer_id for t in result.steps}["plus1"] == swarm[0].peer_id


class HangingModel(OnnxModel):
    """Served like a model; a call blocks until the peer is killed."""

    started: trio.Event

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = 30.0
    ) -> dict[str, npt.NDArray[Any]]:
        self.started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def _with_offers(plan: Any, step: str, offers: Any) -> Any:
    steps = dict(plan.steps)
    steps[step] = dataclasses.replace(steps[step], offers=tuple(offers))
    return dataclasses.replace(plan, steps=steps)


@pytest.mark.parametrize("swarm", [LIBP2P], indirect=True)  # a killed libp2p peer
@pytest.mark.parametrize("mode", ["orchestrated", "forwarded"])
async def test_a_provider_killed_mid_run_fails_over(
    swarm: list[Peer], arith: dict[str, Path], mode: str
) -> None:
    """A second provider of 'times-two' is ranked first; it is killed while it runs the
    step, and the pipeline finishes on the other provider."""
    hanging = HangingModel.load(arith["times2"])
    hanging.started = trio.Event()
    async with trio.open_nursery() as nursery:
        kill = trio.Event()
        ready = trio.Event()
        doomed: list[Peer] = []

        async def run_doomed_peer() -> None:
            # Leaving the block closes the host and its connections mid-call, as the
            # operating system does for a process that is killed.
            async with Peer(bootstrap=[swarm[0].addrs[0]], shutdown_grace=0) as peer:
                peer.serve(hanging, tasks=["times-two"])
                await peer.announce()
                doomed.append(peer)
                ready.set()
                await kill.wait()

        nursery.start_soon(run_doomed_peer)
        await ready.wait()
        pipeline = Pipeline.from_dict(SPEC)
        plan = await pipeline.plan(swarm[0])
        offers = plan.steps["times2"].offers
        assert {o.record.peer_id for o in offers} == {swarm[2].peer_id, doomed[0].peer_id}
        dying_first = sorted(offers, key=lambda o: o.record.peer_id != doomed[0].peer_id)
        plan = _with_offers(plan, "times2", dying_first)

        async def kill_when_it_runs() -> None:
            await hanging.started.wait()
            kill.set()

        nursery.start_soon(kill_when_it_runs)
        result = await pipeline.run(swarm[0], {"x": X}, mode=mode, plan=plan)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.outputs["y"], expected(X))
    times2 = next(t for t in result.steps if t.step == "times2")
    assert times2.peer_id == swarm[2].peer_id
    if mode == "orchestrated":
        assert times2.failed and times2.failed[0][0] == doomed[0].peer_id


@pytest.mark.parametrize("mode", ["orchestrated", "forwarded"])
async def test_a_provider_whose_reply_breaks_the_protocol_is_passed_over(
    swarm: list[Peer], arith: dict[str, Path], mode: str
) -> None:
    """A second provider of 'times-two', ranked first, answers every call or forward with
    bytes that are not a message; the step runs on the honest provider."""
    async with AsyncExitStack() as stack:
        network = swarm[0].host.network  # type: ignore[attr-defined]  # a memory host
        broken = await stack.enter_async_context(
            memory_peer(network, bootstrap=[swarm[0].addrs[0]])
        )
        broken.serve(arith["times2"], tasks=["times-two"])
        await broken.announce()

        async def malformed(stream: ByteStream) -> None:
            await read_message(stream, MessageReader())
            await stream.write(b"\x01\xc1")  # a frame of one byte that is never msgpack

        broken.host.set_stream_handler(INVOKE_PROTOCOL, malformed)
        pipeline = Pipeline.from_dict(SPEC)
        plan = await pipeline.plan(swarm[0])
        offers = plan.steps["times2"].offers
        assert {o.record.peer_id for o in offers} == {swarm[2].peer_id, broken.peer_id}
        broken_first = sorted(offers, key=lambda o: o.record.peer_id != broken.peer_id)
        plan = _with_offers(plan, "times2", broken_first)
        result = await pipeline.run(swarm[0], {"x": X}, mode=mode, plan=plan)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.outputs["y"], expected(X))
    assert {t.step: t.peer_id for t in result.steps}["times2"] == swarm[2].peer_id


async def test_schema_mismatch_is_found_before_anything_runs(
    swarm: list[Peer], arith: dict[str, Path]
) -> None:
    doc = {**SPEC, "steps": {**SPEC["steps"], "add": {**SPEC["steps"]["add"], "task": "add-int"}}}
    swarm[3].serve(arith["add_int"], tasks=["add-int"])
    await swarm[3].announce()
    with pytest.raises(SchemaMismatchError, match=r"plus1.y -> add.a: float32 does not fit"):
        await Pipeline.from_dict(doc).run(swarm[0], {"x": X})
    assert all(p.status().calls_served == 0 for p in swarm)


async def test_unknown_task_and_bad_inputs_stop_before_anything_runs(swarm: list[Peer]) -> None:
    doc = {**SPEC, "steps": {**SPEC["steps"], "add": {**SPEC["steps"]["add"], "task": "nope"}}}
    with pytest.raises(UnknownModelError, match="step 'add': no peer in the swarm offers"):
        await Pipeline.from_dict(doc).run(swarm[0], {"x": X})
    pipeline = Pipeline.from_dict(SPEC)
    with pytest.raises(InvalidInputError, match="missing 'x'"):
        await pipeline.run(swarm[0], {"y": X})
    with pytest.raises(InvalidInputError, match="has dtype float64"):
        await pipeline.run(swarm[0], {"x": X.astype(np.float64)})
    assert all(p.status().calls_served == 0 for p in swarm)


@pytest.mark.parametrize("mode", ["orchestrated", "forwarded"])
async def test_a_failing_step_is_named_and_peers_keep_serving(
    swarm: list[Peer], models: dict[str, Path], mode: str
) -> None:
    """reshape3 fails at run time unless len(x) is a multiple of 3."""
    swarm[3].serve(models["reshape3"], tasks=["reshape-three"])
    await swarm[3].announce()
    doc = {
        "inputs": {"x": "float32[n]"},
        "steps": {
            "plus1": SPEC["steps"]["plus1"],
            "reshape": {"task": "reshape-three", "inputs": {"x": "plus1.y"}},
        },
        "outputs": {"y": "reshape.y"},
    }
    pipeline = Pipeline.from_dict(doc)
    result = await pipeline.run(swarm[0], {"x": X}, mode=mode)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.outputs["y"], (X + 1).reshape(3, 1))
    with pytest.raises(ModelExecutionError, match="step 'reshape'") as failed:
        await pipeline.run(swarm[0], {"x": np.ones(4, np.float32)}, mode=mode)  # type: ignore[arg-type]
    assert failed.value.peer in {swarm[1].peer_id, swarm[3].peer_id}
    result = await Pipeline.from_dict(SPEC).run(swarm[0], {"x": X}, mode=mode)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.outputs["y"], expected(X))


class MeetingModel(OnnxModel):
    """Runs only once its partner has started: two steps run one after another never
    meet, and the pipeline runs out of time."""

    started: trio.Event
    partner: MeetingModel

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = 30.0
    ) -> dict[str, npt.NDArray[Any]]:
        self.started.set()
        await self.partner.started.wait()
        return await super().run(inputs, timeout=timeout)


def _dag_spec(first: str, second: str, deadline: float) -> dict[str, Any]:
    """``first`` and ``second`` (tasks) both read x and ``add`` joins them."""
    steps = {
        "plus1": {"task": first, "inputs": {"x": "input.x"}, "deadline": deadline},
        "times2": {"task": second, "inputs": {"x": "input.x"}, "deadline": deadline},
        "add": {"task": "add", "inputs": {"a": "plus1.y", "b": "times2.y"}, "deadline": deadline},
    }
    return {**SPEC, "steps": steps}


def _renamed(arith: dict[str, Path], name: str, tmp_path: Path) -> Path:
    """The same computation as arith's ``name``, under another model ID."""
    f = TensorProto.FLOAT
    op = "Add" if name == "plus1" else "Mul"
    arg = "one" if name == "plus1" else "two"
    node = helper.make_node(op, ["x", arg], ["y"])
    return _model(tmp_path / f"other_{name}.onnx", [node], ["x"], f)


async def test_forwarded_independent_steps_run_at_the_same_time_and_join(
    swarm: list[Peer], arith: dict[str, Path], tmp_path: Path
) -> None:
    """The first hop's peer sends times2 on while it runs plus1 (each waits for the other
    to start), then sends add, the join, the outputs of both."""
    plus1 = MeetingModel.load(_renamed(arith, "plus1", tmp_path))
    times2 = MeetingModel.load(_renamed(arith, "times2", tmp_path))
    assert isinstance(plus1, MeetingModel) and isinstance(times2, MeetingModel)
    plus1.started, times2.started = trio.Event(), trio.Event()
    plus1.partner, times2.partner = times2, plus1
    swarm[1].serve(plus1, tasks=["meet-plus-one"])
    swarm[2].serve(times2, tasks=["meet-times-two"])
    for peer in swarm[1:3]:
        await peer.announce()
    pipeline = Pipeline.from_dict(_dag_spec("meet-plus-one", "meet-times-two", 3))
    result = await pipeline.run(swarm[0], {"x": X}, mode="forwarded")
    np.testing.assert_allclose(result.outputs["y"], expected(X))
    assert [(t.step, t.peer_id) for t in result.steps] == [
        ("plus1", swarm[1].peer_id),
        ("times2", swarm[2].peer_id),
        ("add", swarm[3].peer_id),
    ]
    assert plus1.started.is_set() and times2.started.is_set()


async def test_a_failing_branch_is_named_and_peers_keep_serving(
    swarm: list[Peer], models: dict[str, Path]
) -> None:
    """reshape (a branch, beside plus1) fails unless len(x) is a multiple of 3."""
    swarm[3].serve(models["reshape3"], tasks=["reshape-three"])
    await swarm[3].announce()
    doc = {
        "inputs": {"x": "float32[n]"},
        "steps": {
            "plus1": SPEC["steps"]["plus1"],
            "reshape": {"task": "reshape-three", "inputs": {"x": "input.x"}},
        },
        "outputs": {"y": "reshape.y", "plus1": "plus1.y"},
    }
    pipeline = Pipeline.from_dict(doc)
    with pytest.raises(ModelExecutionError, match="step 'reshape'") as failed:
        await pipeline.run(swarm[0], {"x": np.ones(4, np.float32)}, mode="forwarded")
    assert failed.value.peer in {swarm[1].peer_id, swarm[3].peer_id}
    result = await pipeline.run(swarm[0], {"x": X}, mode="forwarded")
    np.testing.assert_allclose(result.outputs["y"], X.reshape(3, 1))
    np.testing.assert_allclose(result.outputs["plus1"], X + 1)


async def test_a_hanging_branch_ends_the_forwarded_run_at_its_deadline(
    swarm: list[Peer], arith: dict[str, Path], tmp_path: Path
) -> None:
    hanging = HangingModel.load(_renamed(arith, "times2", tmp_path))
    assert isinstance(hanging, HangingModel)
    hanging.started = trio.Event()
    swarm[2].serve(hanging, tasks=["hang"])
    await swarm[2].announce()
    pipeline = Pipeline.from_dict(_dag_spec("plus-one", "hang", 0.4))
    plan = await pipeline.plan(swarm[0])
    started = trio.current_time()
    with pytest.raises(DeadlineExceededError, match=r"step '(plus1|times2)'"):
        await pipeline.run(swarm[0], {"x": X}, mode="forwarded", plan=plan)
    assert hanging.started.is_set()
    # The pipeline's deadline is its steps' together: 1.2 s.
    assert 1.2 <= trio.current_time() - started < 5.0
