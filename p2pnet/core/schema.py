"""A model's input/output schema and the checks inputs must pass before a model runs
(one per-tensor check, ``tensor_mismatch``, serves declared outputs too)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from p2pnet.core.tensor import dtype_name, normalize_array
from p2pnet.errors import InvalidInputError

__all__ = ["Dim", "ModelSchema", "TensorSpec", "check_inputs", "tensor_mismatch"]

# A dimension: a fixed size, a symbolic name ("batch", "n": the same name means the same
# size across tensors), or None (any size).
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a model: dtype name ('float32', 'int64', 'string', ...) and shape."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """Inputs and outputs of a model, in graph order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def check_inputs(schema: ModelSchema, inputs: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    """Check ``inputs`` against ``schema``; return them as arrays ready for the model.

    Every input must be present, none extra, each with the schema's dtype and rank,
    fixed dimensions equal, and a symbolic dimension the same size everywhere it occurs.

    Raises:
        InvalidInputError: the first mismatch found, naming the input, what was expected
            and what was given.
    """
    expected = {spec.name: spec for spec in schema.inputs}
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInputError(
            f"missing input {missing[0]!r}; the model takes "
            + ", ".join(spec.describe() for spec in schema.inputs)
        )
    unexpected = [name for name in inputs if name not in expected]
    if unexpected:
        raise InvalidInputError(
            f"unexpected input {unexpected[0]!r}; the model takes "
            + ", ".join(spec.describe() for spec in schema.inputs)
        )
    symbols: dict[str, tuple[int, str]] = {}
    checked: dict[str, npt.NDArray[Any]] = {}
    for spec in schema.inputs:
        arr = normalize_array(spec.name, inputs[spec.name])
        mismatch = tensor_mismatch(spec, arr, "input", "the model expects", symbols)
        if mismatch is not None:
            raise InvalidInputError(mismatch)
        checked[spec.name] = arr
    return checked


def tensor_mismatch(
    spec: TensorSpec,
    arr: npt.NDArray[Any],
    role: str,
    rule: str,
    symbols: dict[str, tuple[int, str]],
) -> str | None:
    """Why ``arr`` does not fit ``spec`` (dtype, rank, fixed sizes, symbolic sizes), or None.

    The one per-tensor check of model inputs and of declared outputs. ``role`` names the
    tensor's side ("input", "output") and ``rule`` who sets the spec ("the model
    expects", "it declares") in the message. ``symbols`` holds the size of each symbolic
    dimension met so far and where (such as "input 'x'"); this tensor's are added to it.
    """
    where = f"{role} {spec.name!r}"
    given = dtype_name(arr)
    if given != spec.dtype:
        return f"{where} has dtype {given}; {rule} {spec.dtype} ({spec.describe()})"
    if arr.ndim != len(spec.shape):
        return (
            f"{where} has shape {list(arr.shape)} (rank {arr.ndim}); {rule} rank "
            f"{len(spec.shape)} ({spec.describe()})"
        )
    for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if isinstance(dim, int) and dim != size:
            return f"{where} has size {size} on axis {axis}; {rule} {dim} ({spec.describe()})"
        if isinstance(dim, str):
            seen = symbols.setdefault(dim, (size, where))
            if seen[0] != size:
                return (
                    f"dimension {dim!r} is {seen[0]} in {seen[1]} but {size} in {where}; "
                    "it must be the same size everywhere"
                )
    return None
