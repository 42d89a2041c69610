"""A model's input/output schema and the checks inputs must pass before a model runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from p2pnet.core.tensor import dtype_name, normalize_array
from p2pnet.errors import InvalidInputError

__all__ = ["Dim", "ModelSchema", "TensorSpec", "check_inputs"]

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
        given = dtype_name(arr)
        if given != spec.dtype:
            raise InvalidInputError(
                f"input {spec.name!r} has dtype {given}; the model expects {spec.dtype} "
                f"({spec.describe()})"
            )
        if arr.ndim != len(spec.shape):
            raise InvalidInputError(
                f"input {spec.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); the model "
                f"expects rank {len(spec.shape)} ({spec.describe()})"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise InvalidInputError(
                    f"input {spec.name!r} has size {size} on axis {axis}; the model expects "
                    f"{dim} ({spec.describe()})"
                )
            if isinstance(dim, str):
                seen = symbols.setdefault(dim, (size, spec.name))
                if seen[0] != size:
                    raise InvalidInputError(
                        f"dimension {dim!r} is {seen[0]} in input {seen[1]!r} but {size} in "
                        f"input {spec.name!r}; it must be the same size everywhere"
                    )
        checked[spec.name] = arr
    return checked
