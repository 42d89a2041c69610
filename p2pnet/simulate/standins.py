"""Stand-in models for simulated pipelines: the schema a pipeline spec implies, a
deterministic output, and a run time spent on the clock instead of a CPU.

A simulated pipeline runs the real executor, invoke protocol, DHT lookups, describe
calls and failover; only the models' arithmetic is replaced. Each step of the spec is
served by a ``StandInModel`` that takes exactly the step's inputs and gives the outputs
later steps (and the pipeline) use, as string tensors of shape [N] (an input fed
straight from a typed pipeline input keeps that type). Its output row ``i`` is a string
naming the step, the output and the step's inputs of row ``i``, so the result a caller
gets can be checked against ``expected_outputs``, computed without any network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.pipeline import INPUT, PipelineSpec, Ref, StepSpec
from p2pnet.core.schema import ModelSchema, TensorSpec, check_inputs
from p2pnet.errors import DeadlineExceededError, PeerBusyError
from p2pnet.runtime.served import PriorityLimiter

__all__ = [
    "CatalogueModel",
    "StandInModel",
    "expected_outputs",
    "stand_in_info",
    "stand_in_schema",
]

ROWS = "n"  # the symbolic batch dimension of every stand-in tensor


def stand_in_schema(spec: PipelineSpec, step: StepSpec) -> ModelSchema:
    """The schema a model must have to serve ``step`` of ``spec``: its inputs by name,
    and every output of it that another step or the pipeline's outputs refer to."""
    inputs = []
    for name, ref in sorted(step.inputs.items()):
        declared = spec.inputs.get(ref.name) if ref.step == INPUT else None
        if declared is not None:
            inputs.append(TensorSpec(name, declared.dtype, declared.shape))
        else:
            inputs.append(TensorSpec(name, "string", (ROWS,)))
    used = {r.name for s in spec.steps for r in s.inputs.values() if r.step == step.name}
    used |= {r.name for r in spec.outputs.values() if r.step == step.name}
    outputs = tuple(TensorSpec(name, "string", (ROWS,)) for name in sorted(used))
    return ModelSchema(tuple(inputs), outputs)


def stand_in_info(spec: PipelineSpec, step: StepSpec, variant: int = 0) -> ModelInfo:
    """ID, name and schema of the stand-in for ``step``; ``variant`` gives distinct IDs
    (several models for one task). A step naming a model ID keeps that ID."""
    schema = stand_in_schema(spec, step)
    model_id = step.model or model_id_of_bytes(
        f"p2pnet stand-in {spec.name} {step.name} {variant}".encode()
    )
    return ModelInfo(
        model_id=model_id,
        path=Path(f"{step.name}.standin"),
        size=0,
        schema=schema,
        name=f"{spec.name}-{step.name}",
        version="1",
        runtime="stand-in",
    )


def _rows(schema: ModelSchema, arrays: Mapping[str, npt.NDArray[Any]]) -> int:
    for spec in schema.inputs:
        return int(arrays[spec.name].shape[0]) if arrays[spec.name].ndim else 1
    return 0


def compute(
    step: str, schema: ModelSchema, arrays: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """The stand-in's outputs for checked inputs: row i of output ``o`` is
    ``step.o(input=value, ...)`` over the inputs' row i."""
    rows = _rows(schema, arrays)
    names = [s.name for s in schema.inputs]
    described = [",".join(f"{name}={arrays[name][i]}" for name in names) for i in range(rows)]
    return {
        out.name: np.array([f"{step}.{out.name}({d})" for d in described], dtype=np.str_)
        for out in schema.outputs
    }


def expected_outputs(
    spec: PipelineSpec, inputs: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """What ``spec`` gives for ``inputs`` when every step is served by its stand-in."""
    values: dict[Ref, npt.NDArray[Any]] = {Ref(INPUT, k): np.asarray(v) for k, v in inputs.items()}
    for step in spec.steps:
        schema = stand_in_schema(spec, step)
        step_inputs = {name: values[ref] for name, ref in step.inputs.items()}
        for name, arr in compute(step.name, schema, step_inputs).items():
            values[Ref(step.name, name)] = arr
    return {name: values[ref] for name, ref in spec.outputs.items()}


@dataclass(eq=False)
class StandInModel:
    """A ``ServedModel`` whose run takes ``run_s`` seconds of trio time (virtual in the
    memory engine) and returns ``compute``'s outputs; at most ``max_concurrency`` runs
    at once and ``max_queue`` waiting, like a real model's ``RunSlots``: the waiting
    calls are admitted by ``caller_priority`` (the caller's standing), best first."""

    info: ModelInfo
    step: str
    run_s: float
    max_concurrency: int = 4
    max_queue: int = 64
    calls: int = 0
    _in_flight: int = 0
    _limiter: PriorityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._limiter = PriorityLimiter(self.max_concurrency)

    @property
    def model_id(self) -> str:
        return self.info.model_id

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        arrays = check_inputs(self.info.schema, inputs)
        if self._in_flight >= self.max_concurrency + self.max_queue:
            raise PeerBusyError(f"model {self.info.name} has {self._in_flight} calls in flight")
        self._in_flight += 1
        self.calls += 1
        try:
            with trio.move_on_after(timeout):
                slot = object()
                await self._limiter.acquire_on_behalf_of(slot)
                try:
                    await trio.sleep(self.run_s)
                    return compute(self.step, self.info.schema, arrays)
                finally:
                    self._limiter.release_on_behalf_of(slot)
        finally:
            self._in_flight -= 1
        raise DeadlineExceededError(
            f"model {self.info.name} did not finish within {timeout * 1000:.0f} ms"
        )

    async def wait_idle(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self._in_flight:
                await trio.sleep(0.01)
            return True
        return False


@dataclass(frozen=True, eq=False)
class CatalogueModel:
    """A model of the scenario's catalogue: peers serve it, announce it and describe it;
    discovery queries never call it, and a call would get zeros."""

    info: ModelInfo

    @classmethod
    def of(cls, model_id: str, name: str, schema: ModelSchema) -> CatalogueModel:
        return cls(ModelInfo(model_id, Path(f"{name}.sim"), 0, schema, name, "1", "onnxruntime"))

    @property
    def model_id(self) -> str:
        return self.info.model_id

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        arrays = check_inputs(self.info.schema, inputs)
        rows = _rows(self.info.schema, arrays)
        return {
            out.name: np.zeros(rows, dtype=object if out.dtype == "string" else out.dtype)
            for out in self.info.schema.outputs
        }

    async def wait_idle(self, timeout: float) -> bool:
        return True
