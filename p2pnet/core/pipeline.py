"""Pipeline specs: parse, check and plan, with no I/O (docs/pipelines.md).

A pipeline names steps, each a model found by task tag or by model ID, and wires
named outputs of earlier steps (or the pipeline's own inputs) to named inputs of
later ones. Everything here is pure: ``parse_pipeline`` takes the decoded document
(a dict from YAML or JSON), ``check_schemas`` takes the schemas of the models chosen
for the steps, and ``forward_plan`` says which tensors each hop of a forwarded run
carries on when the hops run one after another. The executor (``p2pnet.pipeline``)
does the I/O.

References are text: ``input.<name>`` is a pipeline input, ``<step>.<output>`` a
step's output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from p2pnet.core.model_id import parse_model_id
from p2pnet.core.schema import Dim, ModelSchema, TensorSpec
from p2pnet.errors import InvalidModelIdError, PipelineSpecError, SchemaMismatchError

__all__ = [
    "INPUT",
    "MAX_STEPS",
    "PipelineSpec",
    "Ref",
    "StepSpec",
    "check_schemas",
    "forward_plan",
    "parse_pipeline",
    "parse_tensor_type",
]

INPUT: Final = "input"  # the pseudo-step whose outputs are the pipeline's inputs
MAX_STEPS: Final = 64
DEFAULT_DEADLINE: Final = 30.0
MAX_DEADLINE: Final = 3600.0
DEFAULT_FAILOVER: Final = 3
MAX_FAILOVER: Final = 16

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")
_TASK = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_TYPE = re.compile(r"\s*([a-z0-9]+)\s*\[([^\]]*)\]\s*")
_DTYPES: Final = frozenset(
    "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 string".split()
)
_TOP_KEYS: Final = frozenset({"pipeline", "description", "inputs", "steps", "outputs"})
_STEP_KEYS: Final = frozenset({"task", "model", "inputs", "deadline", "failover"})


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """A tensor in a pipeline: output ``name`` of step ``step`` (``input`` for the
    pipeline's own inputs)."""

    step: str
    name: str

    def __str__(self) -> str:
        return f"{self.step}.{self.name}"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step: the model (by ``task`` or by ``model`` ID), where each of its inputs
    comes from, its deadline in seconds, and how many providers to try."""

    name: str
    task: str | None
    model: str | None
    inputs: Mapping[str, Ref]
    deadline: float = DEFAULT_DEADLINE
    failover: int = DEFAULT_FAILOVER

    @property
    def target(self) -> str:
        return f"task {self.task!r}" if self.task is not None else f"model {self.model}"

    @property
    def depends_on(self) -> frozenset[str]:
        return frozenset(r.step for r in self.inputs.values() if r.step != INPUT)


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A checked pipeline; ``steps`` are in an order where every step comes after the
    steps it takes inputs from."""

    name: str
    description: str
    inputs: Mapping[str, TensorSpec | None]
    steps: tuple[StepSpec, ...]
    outputs: Mapping[str, Ref]

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


def parse_tensor_type(text: str, name: str = "") -> TensorSpec:
    """``"float32[N, 4]"`` -> TensorSpec(name, "float32", ("N", 4)); ``?`` is any size.

    Raises:
        ValueError: not ``dtype[dims]`` with a known dtype.
    """
    match = _TYPE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a tensor type like 'float32[N, 4]'")
    dtype, dims_text = match.groups()
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(sorted(_DTYPES))}")
    dims: list[Dim] = []
    for part in (p.strip() for p in dims_text.split(",")) if dims_text.strip() else ():
        if part == "?":
            dims.append(None)
        elif part.isdigit():
            dims.append(int(part))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            dims.append(part)
        else:
            raise ValueError(f"dimension {part!r} in {text!r} is not a size, a name or '?'")
    return TensorSpec(name, dtype, tuple(dims))


def parse_pipeline(doc: object) -> PipelineSpec:
    """Check a decoded pipeline document and return the spec, steps in dependency order.

    Checks everything that can be checked without the models: field names and types,
    step names, task tags and model IDs, that every reference names a declared input or
    an existing step, and that no steps form a cycle. Schemas are checked later by
    ``check_schemas``, once the models are known.

    Raises:
        PipelineSpecError: the first problem found, saying where.
    """
    if not isinstance(doc, Mapping):
        raise PipelineSpecError(f"a pipeline is a mapping, got {type(doc).__name__}")
    _no_unknown_keys(doc, _TOP_KEYS, "the pipeline")
    name = doc.get("pipeline", "pipeline")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PipelineSpecError(f"pipeline name {name!r} must match {_NAME.pattern}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise PipelineSpecError("description must be text")
    inputs = _parse_inputs(doc.get("inputs"))
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, Mapping) or not raw_steps:
        raise PipelineSpecError("steps must be a non-empty mapping of step name -> step")
    if len(raw_steps) > MAX_STEPS:
        raise PipelineSpecError(f"{len(raw_steps)} steps; at most {MAX_STEPS}")
    steps = {n: _parse_step(n, s) for n, s in raw_steps.items()}
    for step in steps.values():
        for model_input, ref in step.inputs.items():
            _check_ref(ref, steps, inputs, f"step {step.name!r} input {model_input!r}")
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, Mapping) or not raw_outputs:
        raise PipelineSpecError("outputs must be a non-empty mapping of name -> step.output")
    outputs: dict[str, Ref] = {}
    for out_name, text in raw_outputs.items():
        where = f"output {out_name!r}"
        _check_tensor_name(out_name, where)
        outputs[out_name] = _parse_ref(text, where)
        _check_ref(outputs[out_name], steps, inputs, where)
    return PipelineSpec(name, description, inputs, _in_dependency_order(steps), outputs)


def check_schemas(spec: PipelineSpec, schemas: Mapping[str, ModelSchema]) -> None:
    """Check that the models chosen for the steps (step name -> schema) fit together.

    Every model input must be fed and nothing else; every reference must name an
    output the step's model has; the tensor it names must have the dtype and rank the
    input takes, and equal sizes where both fix one.

    Raises:
        SchemaMismatchError: the first mismatch, naming both ends.
    """

    def produced(ref: Ref) -> TensorSpec | None:
        if ref.step == INPUT:
            return spec.inputs[ref.name]
        outputs = {t.name: t for t in schemas[ref.step].outputs}
        if ref.name not in outputs:
            raise SchemaMismatchError(
                f"{ref} does not exist: the model of step {ref.step!r} outputs "
                + ", ".join(t.describe() for t in schemas[ref.step].outputs)
            )
        return outputs[ref.name]

    for step in spec.steps:
        schema = schemas[step.name]
        takes = {t.name: t for t in schema.inputs}
        for model_input in takes:
            if model_input not in step.inputs:
                raise SchemaMismatchError(
                    f"step {step.name!r} does not feed input {takes[model_input].describe()} "
                    f"of its model ({step.target})"
                )
        for model_input, ref in step.inputs.items():
            if model_input not in takes:
                raise SchemaMismatchError(
                    f"step {step.name!r} feeds {model_input!r}, which its model ({step.target}) "
                    "does not take; it takes " + ", ".join(t.describe() for t in schema.inputs)
                )
            source = produced(ref)
            if source is not None:
                _check_fits(source, takes[model_input], f"{ref} -> {step.name}.{model_input}")
    for ref in spec.outputs.values():
        produced(ref)


def forward_plan(spec: PipelineSpec) -> list[tuple[str, ...]]:
    """For a forwarded run: the references still needed after each step, in
    ``spec.steps`` order, as text, were the steps run one after another (each hop's
    ``keep``: what a peer that does not split a Forward follows; one that splits works
    its own out from the graph, ``p2pnet.core.forwarding``).

    After the last step that is exactly what the pipeline returns.
    """
    needed_later: set[Ref] = set(spec.outputs.values())
    keep: list[tuple[str, ...]] = []
    for step in reversed(spec.steps):
        keep.append(tuple(sorted(str(r) for r in needed_later)))
        needed_later = {r for r in needed_later if r.step != step.name}
        needed_later |= set(step.inputs.values())
    keep.reverse()
    return keep


def _check_fits(source: TensorSpec, target: TensorSpec, where: str) -> None:
    if source.dtype != target.dtype:
        raise SchemaMismatchError(
            f"{where}: {source.dtype} does not fit {target.describe()} (dtype differs)"
        )
    if len(source.shape) != len(target.shape):
        raise SchemaMismatchError(
            f"{where}: rank {len(source.shape)} does not fit {target.describe()} (rank differs)"
        )
    for axis, (a, b) in enumerate(zip(source.shape, target.shape, strict=True)):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise SchemaMismatchError(
                f"{where}: size {a} on axis {axis} does not fit {target.describe()}"
            )


def _no_unknown_keys(doc: Mapping[Any, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise PipelineSpecError(
            f"unknown field {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}"
        )


def _check_tensor_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
        raise PipelineSpecError(f"{where}: {name!r} is not a tensor name")


def _parse_inputs(raw: object) -> dict[str, TensorSpec | None]:
    if raw is None:
        raise PipelineSpecError("inputs must list the pipeline's inputs, e.g. 'text: string[N]'")
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        raw = dict.fromkeys(raw)
    if not isinstance(raw, Mapping) or not raw:
        raise PipelineSpecError("inputs must be a non-empty mapping of name -> type (or null)")
    inputs: dict[str, TensorSpec | None] = {}
    for name, type_text in raw.items():
        _check_tensor_name(name, "pipeline input")
        if type_text is None:
            inputs[name] = None
            continue
        if not isinstance(type_text, str):
            raise PipelineSpecError(f"input {name!r}: type must be text like 'string[N]'")
        try:
            inputs[name] = parse_tensor_type(type_text, name)
        except ValueError as exc:
            raise PipelineSpecError(f"input {name!r}: {exc}") from None
    return inputs


def _parse_step(name: object, raw: object) -> StepSpec:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == INPUT:
        raise PipelineSpecError(
            f"step name {name!r} must match {_NAME.pattern} and not be {INPUT!r}"
        )
    where = f"step {name!r}"
    if not isinstance(raw, Mapping):
        raise PipelineSpecError(f"{where} must be a mapping with task or model, and inputs")
    _no_unknown_keys(raw, _STEP_KEYS, where)
    task, model = raw.get("task"), raw.get("model")
    if (task is None) == (model is None):
        raise PipelineSpecError(f"{where} needs exactly one of task and model")
    if task is not None and (not isinstance(task, str) or not _TASK.fullmatch(task)):
        raise PipelineSpecError(f"{where}: task {task!r} is not a task tag (a-z, 0-9, '-')")
    if model is not None:
        try:
            model = parse_model_id(str(model))
        except InvalidModelIdError as exc:
            raise PipelineSpecError(f"{where}: {exc.message}") from None
    raw_inputs = raw.get("inputs")
    if not isinstance(raw_inputs, Mapping) or not raw_inputs:
        raise PipelineSpecError(f"{where}: inputs must map the model's inputs to references")
    inputs: dict[str, Ref] = {}
    for model_input, text in raw_inputs.items():
        _check_tensor_name(model_input, f"{where} input")
        inputs[model_input] = _parse_ref(text, f"{where} input {model_input!r}")
    deadline = raw.get("deadline", DEFAULT_DEADLINE)
    if (
        not isinstance(deadline, int | float)
        or isinstance(deadline, bool)
        or not 0 < deadline <= MAX_DEADLINE
    ):
        raise PipelineSpecError(f"{where}: deadline must be seconds in (0, {MAX_DEADLINE:g}]")
    failover = raw.get("failover", DEFAULT_FAILOVER)
    if (
        not isinstance(failover, int)
        or isinstance(failover, bool)
        or not 1 <= failover <= MAX_FAILOVER
    ):
        raise PipelineSpecError(
            f"{where}: failover is how many providers to try, 1..{MAX_FAILOVER}"
        )
    return StepSpec(name, task, model, inputs, float(deadline), failover)


def _parse_ref(text: object, where: str) -> Ref:
    if not isinstance(text, str) or "." not in text:
        raise PipelineSpecError(
            f"{where}: {text!r} is not a reference like 'input.text' or 'step.output'"
        )
    step, name = text.split(".", 1)
    if not (step == INPUT or _NAME.fullmatch(step)) or not _TENSOR_NAME.fullmatch(name):
        raise PipelineSpecError(
            f"{where}: {text!r} is not a reference like 'input.text' or 'step.output'"
        )
    return Ref(step, name)


def _check_ref(
    ref: Ref,
    steps: Mapping[str, StepSpec],
    inputs: Mapping[str, TensorSpec | None],
    where: str,
) -> None:
    if ref.step == INPUT:
        if ref.name not in inputs:
            raise PipelineSpecError(
                f"{where} refers to {ref}, but the pipeline's inputs are " + ", ".join(inputs)
            )
    elif ref.step not in steps:
        raise PipelineSpecError(
            f"{where} refers to unknown step {ref.step!r}; the steps are " + ", ".join(steps)
        )


def _in_dependency_order(steps: Mapping[str, StepSpec]) -> tuple[StepSpec, ...]:
    """Steps sorted so that each follows those it depends on (stable: the file's order
    where dependencies allow), or PipelineSpecError naming a cycle."""
    done: dict[str, StepSpec] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise PipelineSpecError("steps form a cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for dep in sorted(steps[name].depends_on, key=list(steps).index):
            visit(dep)
        visiting.pop()
        done[name] = steps[name]

    for name in steps:
        visit(name)
    return tuple(done.values())
