"""Run a pipeline across peers: plan (find a provider for every step and check the
schemas), then execute, orchestrated or forwarded (docs/pipelines.md).

Orchestrated: this peer calls each step's provider and routes every tensor itself;
steps whose inputs are ready run concurrently. Each step's call is offered to the
peer's spot checks, as a call through the finder is (docs/security.md, "Spot checks").

Forwarded: this peer sends the pipeline's inputs and the whole plan (its graph: the
steps in dependency order, each naming the tensors it reads) to the first step's
provider, which runs its step while it sends the steps needing nothing from it on to
their providers, and after that join sends on the steps whose inputs it then has
(``p2pnet.core.forwarding``, ``LocalInvoker.forward``); one reply comes back with every
step's trace. Intermediate tensors never come back to the caller; nor can the caller
spot-check a step, never holding both its inputs and its outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
import trio
import yaml

from p2pnet.core.forwarding import step_error
from p2pnet.core.messages import Forward, Hop
from p2pnet.core.pipeline import (
    INPUT,
    PipelineSpec,
    Ref,
    StepSpec,
    check_schemas,
    forward_plan,
    parse_pipeline,
)
from p2pnet.core.pricing import Price
from p2pnet.core.schema import ModelSchema, check_inputs
from p2pnet.discovery.service import ModelFinder, Offer
from p2pnet.errors import (
    InvalidInputError,
    P2PNetError,
    PipelineSpecError,
    SchemaMismatchError,
    UnknownModelError,
)
from p2pnet.invoke.local import Invokers, send_forward

__all__ = [
    "Mode",
    "Pipeline",
    "PipelinePeer",
    "PipelineResult",
    "Plan",
    "StepPlan",
    "StepTrace",
]

log = logging.getLogger(__name__)

Mode = Literal["orchestrated", "forwarded"]
MAX_SPEC_BYTES: Final = 1 << 20
MAX_HOP_PROVIDERS: Final = 8


class PipelinePeer(Protocol):
    """What a pipeline runs from: a running ``p2pnet.Peer`` (simulations run real ones)."""

    @property
    def finder(self) -> ModelFinder:
        """Finds each step's providers and calls them, failing over."""
        ...

    @property
    def invokers(self) -> Invokers:
        """Where a forwarded run starts: this peer, or the first step's provider."""
        ...


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The model chosen for a step, and its providers in the order they will be tried."""

    step: StepSpec
    model_id: str
    model_name: str
    schema: ModelSchema
    offers: tuple[Offer, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """Every step resolved and the schemas checked: the pipeline can run."""

    spec: PipelineSpec
    steps: Mapping[str, StepPlan]


@dataclass(frozen=True, slots=True)
class StepTrace:
    """Provenance of one step: which model, on which peer, how long, and the
    providers that failed before it (peer ID, error code)."""

    step: str
    model_id: str
    model_name: str
    peer_id: str
    ms: float
    failed: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model_id": self.model_id,
            "model": self.model_name,
            "peer_id": self.peer_id,
            "ms": round(self.ms, 3),
            "failed": [{"peer_id": p, "error": c} for p, c in self.failed],
        }


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """The pipeline's outputs and, per step in the order they finished, who ran it.

    ``ms`` per step is the call as the caller saw it (orchestrated) or the model run
    as the serving peer reports it (forwarded)."""

    outputs: dict[str, npt.NDArray[Any]]
    steps: list[StepTrace]
    mode: Mode
    total_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "total_ms": round(self.total_ms, 3),
            "outputs": {k: v.tolist() for k, v in self.outputs.items()},
            "steps": [s.to_dict() for s in self.steps],
        }


class Pipeline:
    """A checked pipeline spec, ready to plan and run on a ``Peer`` (any ``PipelinePeer``)::

    pipeline = Pipeline.from_file("examples/customer_service.yaml")
    result = await pipeline.run(peer, {"text": np.array(["..."], dtype=object)})
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    @classmethod
    def from_dict(cls, doc: object) -> Pipeline:
        """Raises PipelineSpecError (see ``p2pnet.core.pipeline.parse_pipeline``)."""
        return cls(parse_pipeline(doc))

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Load a spec from a YAML (or JSON) file.

        Raises:
            PipelineSpecError: unreadable, too large, not YAML, or not a valid spec.
        """
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise PipelineSpecError(f"cannot read pipeline {path}: {exc.strerror}") from None
        return cls.from_text(data, where=str(path), json_only=path.suffix == ".json")

    @classmethod
    def from_text(
        cls, data: str | bytes, *, where: str = "spec", json_only: bool = False
    ) -> Pipeline:
        """Parse a spec's YAML (or, with ``json_only``, JSON) text; error messages name it
        as ``where``.

        Raises:
            PipelineSpecError: too large, not YAML/JSON, or not a valid spec.
        """
        size = len(data.encode() if isinstance(data, str) else data)
        if size > MAX_SPEC_BYTES:
            raise PipelineSpecError(f"pipeline {where} is over {MAX_SPEC_BYTES} bytes")
        try:
            if json_only:
                doc = json.loads(data)
            else:
                doc = yaml.load(data, Loader=_UniqueKeyLoader)  # a SafeLoader
        except (ValueError, yaml.YAMLError) as exc:
            raise PipelineSpecError(f"pipeline {where} is not valid YAML/JSON: {exc}") from None
        try:
            return cls.from_dict(doc)
        except PipelineSpecError as exc:
            raise PipelineSpecError(f"{where}: {exc.message}") from None

    async def plan(
        self, peer: PipelinePeer, *, timeout: float = 10.0, max_price: Price | None = None
    ) -> Plan:
        """Find providers for every step (concurrently), choose a model per step, and
        check that the models fit together. Nothing runs. With ``max_price``, only
        providers at most that price in every part are planned.

        Raises:
            UnknownModelError: nobody offers a step's task or model.
            SchemaMismatchError: the models found do not fit the spec.
        """
        found: dict[str, list[Offer]] = {}

        async def find(step: StepSpec) -> None:
            found[step.name] = await peer.finder.find(
                task=step.task, model=step.model, timeout=timeout, max_price=max_price
            )

        async with trio.open_nursery() as nursery:
            for step in self.spec.steps:
                nursery.start_soon(find, step)
        steps = {s.name: self._choose(s, found[s.name]) for s in self.spec.steps}
        check_schemas(self.spec, {name: p.schema for name, p in steps.items()})
        return Plan(self.spec, steps)

    def _choose(self, step: StepSpec, offers: list[Offer]) -> StepPlan:
        """The best-ranked model whose input and output names fit the step; its
        providers (only those of that model) in rank order."""
        if not offers:
            raise UnknownModelError(
                f"step {step.name!r}: no peer in the swarm offers {step.target}"
            )
        used = {r.name for s in self.spec.steps for r in s.inputs.values() if r.step == step.name}
        used |= {r.name for r in self.spec.outputs.values() if r.step == step.name}
        by_model: dict[str, list[Offer]] = {}
        for offer in offers:
            by_model.setdefault(offer.record.model_id, []).append(offer)
        for model_id, model_offers in by_model.items():
            schema = model_offers[0].record.schema
            takes = {t.name for t in schema.inputs}
            gives = {t.name for t in schema.outputs}
            if takes == set(step.inputs) and used <= gives:
                return StepPlan(
                    step, model_id, model_offers[0].record.name, schema, tuple(model_offers)
                )
        best = offers[0].record
        raise SchemaMismatchError(
            f"step {step.name!r}: no model offered for {step.target} takes exactly "
            f"{sorted(step.inputs)} and outputs {sorted(used)}; the best-ranked, "
            f"{best.name} {best.model_id}, takes {[t.name for t in best.schema.inputs]} "
            f"and outputs {[t.name for t in best.schema.outputs]}"
        )

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[Ref, npt.NDArray[Any]]:
        """The pipeline's inputs as arrays, checked against the declared types.

        Raises:
            InvalidInputError: a missing, extra or mistyped input.
        """
        declared = self.spec.inputs
        missing = [n for n in declared if n not in inputs]
        extra = [n for n in inputs if n not in declared]
        if missing or extra:
            raise InvalidInputError(
                f"the pipeline takes inputs {', '.join(declared)}; "
                + (f"missing {missing[0]!r}" if missing else f"got unexpected {extra[0]!r}")
            )
        typed = tuple(t for t in declared.values() if t is not None)
        arrays = check_inputs(ModelSchema(typed, ()), {t.name: inputs[t.name] for t in typed})
        for name in declared:
            if name not in arrays:
                arrays[name] = np.asarray(inputs[name])
        return {Ref(INPUT, name): arr for name, arr in arrays.items()}

    async def run(
        self,
        peer: PipelinePeer,
        inputs: Mapping[str, Any],
        *,
        mode: Mode = "orchestrated",
        plan: Plan | None = None,
        max_price: Price | None = None,
    ) -> PipelineResult:
        """Plan (unless given a plan; only providers at most ``max_price``) and run the
        pipeline on ``inputs``.

        Nothing runs until the inputs and every step's model have been checked.

        Raises:
            InvalidInputError, PipelineSpecError, SchemaMismatchError,
            UnknownModelError: before anything runs.
            The failing step's error (its message names the step) otherwise; the
            steps still running are cancelled.
        """
        values = self.check_inputs(inputs)
        plan = plan or await self.plan(peer, max_price=max_price)
        started = trio.current_time()
        if mode == "forwarded":
            outputs, traces = await self._run_forwarded(peer, plan, values)
        elif mode == "orchestrated":
            outputs, traces = await self._run_orchestrated(peer, plan, values)
        else:
            raise PipelineSpecError(f"unknown mode {mode!r}: orchestrated or forwarded")
        return PipelineResult(outputs, traces, mode, (trio.current_time() - started) * 1000)

    async def _run_orchestrated(
        self, peer: PipelinePeer, plan: Plan, values: dict[Ref, npt.NDArray[Any]]
    ) -> tuple[dict[str, npt.NDArray[Any]], list[StepTrace]]:
        finder = peer.finder
        done = {s.name: trio.Event() for s in self.spec.steps}
        traces: list[StepTrace] = []
        failure: list[P2PNetError] = []

        async def run_step(step_plan: StepPlan, cancel: trio.CancelScope) -> None:
            step = step_plan.step
            for dep in step.depends_on:
                await done[dep].wait()
            step_inputs = {name: values[ref] for name, ref in step.inputs.items()}
            failures: list[tuple[Offer, P2PNetError]] = []
            t0 = trio.current_time()
            try:
                offer, outputs = await finder.call_offers(
                    step_plan.offers[: step.failover], step_inputs, step.deadline, failures
                )
            except P2PNetError as exc:
                failure.append(step_error(step.name, exc))
                cancel.cancel()
                return
            # Spot checks may re-run the step on another of its providers.
            finder.answered(offer, step_plan.offers, step_inputs, outputs)
            for name, arr in outputs.items():
                values[Ref(step.name, name)] = arr
            traces.append(
                StepTrace(
                    step.name,
                    offer.record.model_id,
                    offer.record.name,
                    offer.record.peer_id,
                    (trio.current_time() - t0) * 1000,
                    tuple((o.record.peer_id, e.code) for o, e in failures),
                )
            )
            done[step.name].set()

        async with trio.open_nursery() as nursery:
            for step in self.spec.steps:
                nursery.start_soon(run_step, plan.steps[step.name], nursery.cancel_scope)
        if failure:
            raise failure[0]
        return {name: values[ref] for name, ref in self.spec.outputs.items()}, traces

    async def _run_forwarded(
        self, peer: PipelinePeer, plan: Plan, values: dict[Ref, npt.NDArray[Any]]
    ) -> tuple[dict[str, npt.NDArray[Any]], list[StepTrace]]:
        keeps = forward_plan(self.spec)
        hops = tuple(
            Hop(
                step.name,
                plan.steps[step.name].model_id,
                tuple(
                    (o.record.peer_id, o.address.addrs)
                    for o in plan.steps[step.name].offers[: min(step.failover, MAX_HOP_PROVIDERS)]
                ),
                {name: str(ref) for name, ref in step.inputs.items()},
                keep,
            )
            for step, keep in zip(self.spec.steps, keeps, strict=True)
        )
        first_needs = {r for s in self.spec.steps for r in s.inputs.values() if r.step == INPUT}
        first_needs |= {r for r in self.spec.outputs.values() if r.step == INPUT}
        tensors = {str(r): values[r] for r in sorted(first_needs)}
        deadline_s = sum(s.deadline for s in self.spec.steps)
        message = Forward(0, hops, tensors, max(1, int(deadline_s * 1000)))
        result = await send_forward(peer.invokers, message)
        names = {p.model_id: p.model_name for p in plan.steps.values()}
        traces = [
            StepTrace(t.step, t.model_id, names.get(t.model_id, "?"), t.peer_id, t.run_ms)
            for t in result.trace
        ]
        outputs = {name: result.outputs[str(ref)] for name, ref in self.spec.outputs.items()}
        return outputs, traces


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no types
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last
    one silently: two steps of the same name would become one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)
