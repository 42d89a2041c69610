"""What a framework exporter hands back (``Converted``), and the finishing every import
gives its ONNX graph: the declared input dimensions, the requested output names, one
opset per domain, and the ONNX checker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import onnx

from p2pnet.core.schema import Dim, TensorSpec
from p2pnet.errors import InvalidInputError, ModelFileError, UsageError

__all__ = ["Converted", "default_output_names", "finish_model"]


def default_output_names(count: int) -> list[str]:
    """Names for the outputs of a model that returns ``count`` unnamed tensors."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class Converted:
    """What a framework converter hands back: the ONNX model and the source's outputs on
    the check sample, in output order."""

    model: onnx.ModelProto
    kind: str
    exporter: str
    reference: list[npt.NDArray[Any]]


def _dims(value: onnx.ValueInfoProto) -> list[Any]:
    return list(value.type.tensor_type.shape.dim)


def _set_dim(dim: Any, new: Dim) -> None:
    if isinstance(new, int):
        dim.dim_value = new
    elif isinstance(new, str):
        dim.dim_param = new
    else:
        dim.ClearField("value")


def _fit_inputs(graph: onnx.GraphProto, specs: Sequence[TensorSpec]) -> None:
    """Give the graph's inputs the declared dimensions (names included), or say why not.

    Raises:
        InvalidInputError: the graph's inputs differ from the declared ones in number,
            rank or a fixed size.
    """
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if [v.name for v in inputs] != [s.name for s in specs]:
        raise InvalidInputError(
            f"the converted model takes inputs {[v.name for v in inputs]}; declared "
            f"{[s.name for s in specs]}"
        )
    renamed: dict[str, Dim] = {}
    for value, spec in zip(inputs, specs, strict=True):
        dims = _dims(value)
        if len(dims) != len(spec.shape):
            raise InvalidInputError(
                f"input {spec.name!r} has rank {len(dims)} in the model; declared {spec.describe()}"
            )
        for axis, (dim, want) in enumerate(zip(dims, spec.shape, strict=True)):
            if dim.HasField("dim_value"):
                if dim.dim_value != want:
                    fixed = dim.dim_value
                    hint = (
                        " (an exported program keeps the shapes it was exported with: give "
                        "torch.export.export dynamic_shapes for a dimension of any size)"
                        if not isinstance(want, int)
                        else ""
                    )
                    raise InvalidInputError(
                        f"input {spec.name!r} has size {fixed} on axis {axis} in the model; "
                        f"declared {spec.describe()}{hint}"
                    )
                continue
            if dim.dim_param:
                renamed[dim.dim_param] = want
            _set_dim(dim, want)
    if renamed:
        for value in [*graph.output, *graph.value_info]:
            for dim in _dims(value):
                if dim.HasField("dim_param") and dim.dim_param in renamed:
                    _set_dim(dim, renamed[dim.dim_param])


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename values everywhere in ``graph`` and its subgraphs."""
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_values(attr.g, mapping)
            for sub in attr.graphs:
                _rename_values(sub, mapping)
    for value in [*graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)


def finish_model(
    model: onnx.ModelProto, specs: Sequence[TensorSpec], output_names: Sequence[str]
) -> onnx.ModelProto:
    """Declared input dimensions, requested output names, one opset per domain; checked.

    Raises:
        InvalidInputError: the graph's inputs differ from the declared ones.
        UsageError: ``output_names`` do not fit the graph's outputs.
        ModelFileError: the result fails the ONNX checker.
    """
    graph = model.graph
    _fit_inputs(graph, specs)
    current = [v.name for v in graph.output]
    if output_names:
        if len(output_names) != len(current):
            raise UsageError(
                f"the model has {len(current)} output(s) ({', '.join(current)}); "
                f"{len(output_names)} --output name(s) given"
            )
        taken = {s.name for s in specs}
        if len(set(output_names)) != len(output_names) or taken & set(output_names):
            raise UsageError(
                f"--output names must differ from each other and from the inputs: {output_names}"
            )
        _rename_values(graph, dict(zip(current, output_names, strict=True)))
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelFileError(f"the converted model fails the ONNX checker: {exc}") from None
    return model
