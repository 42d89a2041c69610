"""Declared model inputs (``--input NAME:DTYPE:SHAPE``) and the sample inputs made from
them, the same for the same seed, on which a converted model is checked and measured."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from p2pnet.core.schema import Dim, TensorSpec
from p2pnet.core.tensor import DTYPE_CODES, dtype_name
from p2pnet.errors import UsageError
from p2pnet.modeltools.libraries import first_line

__all__ = [
    "DTYPES",
    "SAMPLE_TEXTS",
    "describe_shapes",
    "describe_specs",
    "input_mismatch",
    "parse_input_decl",
    "sample_inputs",
]

DTYPES: Final[frozenset[str]] = frozenset(dtype_name(dt) for dt in DTYPE_CODES.values())

# Fixed text for string inputs of sample runs: short customer-service style sentences.
SAMPLE_TEXTS: Final = (
    "I love it, works great",
    "terrible, it broke after one day",
    "where is my order?",
    "thanks for the quick reply",
    "the battery does not charge",
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_input_decl(spec: str) -> TensorSpec:
    """Parse one ``--input NAME:DTYPE:SHAPE`` of ``model import``.

    SHAPE is comma-separated dimensions: a number is a fixed size, a name (``N``,
    ``batch``) a symbolic one (the same name is the same size in every input), ``?`` a
    dimension of any size; empty (``x:float32:``) is a scalar. Brackets are optional.

    Raises:
        UsageError: a malformed spec, an unknown dtype or a bad dimension.
    """
    parts = spec.split(":")
    if len(parts) != 3:
        raise UsageError(
            f"--input {spec!r}: expected NAME:DTYPE:SHAPE, e.g. x:float32:N,4 "
            "(a number is a fixed size, a name a symbolic one, ? any size)"
        )
    name, dtype, shape_text = (p.strip() for p in parts)
    if not _NAME.match(name):
        raise UsageError(f"--input {spec!r}: {name!r} is not a tensor name (letters, digits, _.-)")
    if dtype not in DTYPES:
        raise UsageError(f"--input {spec!r}: unknown dtype {dtype!r}; one of {sorted(DTYPES)}")
    shape_text = shape_text.removeprefix("[").removesuffix("]").strip()
    dims: list[Dim] = []
    for axis, raw in enumerate(shape_text.split(",") if shape_text else []):
        text = raw.strip()
        if text == "?":
            dims.append(None)
        elif text.isdigit() and int(text) > 0:
            dims.append(int(text))
        elif _DIM_NAME.match(text):
            dims.append(text)
        else:
            raise UsageError(
                f"--input {spec!r}: dimension {axis} is {text!r}; give a positive size, "
                "a name for a symbolic dimension, or ?"
            )
    return TensorSpec(name, dtype, tuple(dims))


def sample_inputs(
    specs: Sequence[TensorSpec], *, seed: int = 0, dynamic_size: int = 3
) -> dict[str, npt.NDArray[Any]]:
    """Inputs that fit ``specs``, the same for the same arguments.

    Symbolic and any-size dimensions get ``dynamic_size``. Floats are standard normal,
    integers in 0..9, booleans fair coin flips, strings cycle through SAMPLE_TEXTS.
    """
    rng = np.random.default_rng(seed)
    result: dict[str, npt.NDArray[Any]] = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else dynamic_size for d in spec.shape)
        count = math.prod(shape)
        arr: npt.NDArray[Any]
        if spec.dtype == "string":
            arr = np.array(
                [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(count)], dtype=object
            ).reshape(shape)
        elif spec.dtype == "bool":
            arr = rng.random(shape) < 0.5
        elif np.dtype(spec.dtype).kind in "iu":
            arr = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            arr = rng.standard_normal(shape).astype(spec.dtype)
        result[spec.name] = arr
    return result


def describe_shapes(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """The arrays' names and shapes, for messages: ``x [3, 4], y [3]``."""
    return ", ".join(f"{name} {list(arr.shape)}" for name, arr in arrays.items())


def describe_specs(specs: Sequence[TensorSpec]) -> str:
    """The declared inputs, for messages: ``x: float32[N, 4]``."""
    return ", ".join(spec.describe() for spec in specs)


def input_mismatch(
    specs: Sequence[TensorSpec], sample: Mapping[str, Any], exc: BaseException
) -> str:
    """Why the source model refused a sample made from the declared inputs."""
    return (
        f"the model does not accept the declared inputs ({describe_specs(specs)}; tried "
        f"{describe_shapes(sample)}): {first_line(exc)}"
    )
