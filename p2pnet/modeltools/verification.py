"""Comparing a model's outputs with a reference's on the same inputs: figures per output
(``compare_outputs``) and the pass/fail decision of an import (``verify_outputs``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pnet.core.tensor import dtype_name

__all__ = ["OutputComparison", "Verification", "compare_outputs", "verify_outputs"]


@dataclass(frozen=True, slots=True)
class OutputComparison:
    """How one output of a model compares with a reference output for the same inputs.

    max_abs/mean_abs: absolute deviation of float outputs (None for labels).
    agreement: for labels (integer, bool or string outputs) the fraction of equal
    values; for float outputs of rank >= 2 with at least 2 columns, the fraction of
    rows with the same argmax over the last axis; otherwise None.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float | None
    mean_abs: float | None
    agreement: float | None

    @property
    def is_label(self) -> bool:
        return self.dtype == "string" or self.dtype == "bool" or np.dtype(self.dtype).kind in "iu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "agreement": self.agreement,
        }


def _compare(name: str, ref: npt.NDArray[Any], got: npt.NDArray[Any]) -> OutputComparison:
    if ref.shape != got.shape:
        if ref.size != got.size:
            raise ValueError(
                f"output {name!r} has shape {list(got.shape)}; the reference has {list(ref.shape)}"
            )
        ref = ref.reshape(got.shape)  # e.g. scikit-learn's [N] against ONNX's [N, 1]
    dtype = dtype_name(got)
    if dtype == "string" or ref.dtype.kind in "OUS":
        equal = ref.astype(str) == got.astype(str)
        return OutputComparison(name, dtype, got.shape, None, None, _fraction(equal))
    if got.dtype.kind in "biu":  # labels: equal or not
        return OutputComparison(name, dtype, got.shape, None, None, _fraction(ref == got))
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    if got.ndim >= 2 and got.shape[-1] >= 2:
        agreement: float | None = _fraction(ref.argmax(axis=-1) == got.argmax(axis=-1))
    else:
        agreement = None
    return OutputComparison(name, dtype, got.shape, max_abs, mean_abs, agreement)


def _fraction(equal: Any) -> float:
    equal = np.asarray(equal)
    return float(equal.mean()) if equal.size else 1.0


def compare_outputs(
    reference: Mapping[str, npt.NDArray[Any]], candidate: Mapping[str, npt.NDArray[Any]]
) -> tuple[OutputComparison, ...]:
    """Compare each output of ``candidate`` with the output of the same name in ``reference``.

    Raises:
        ValueError: an output missing from ``reference``, or of another size.
    """
    return tuple(_compare(name, reference[name], got) for name, got in candidate.items())


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether a converted model reproduces its source within ``tolerance``.

    A float output passes when every element is within ``tolerance * max(1, |reference|)``
    of the reference; an integer, bool or string output when every value is equal.
    ``unchecked`` names outputs the source model has no counterpart for.
    """

    comparisons: tuple[OutputComparison, ...]
    tolerance: float
    failures: tuple[str, ...]
    unchecked: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max((c.max_abs or 0.0 for c in self.comparisons if not c.is_label), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "max_abs_deviation": self.max_abs,
            "outputs": [c.to_dict() for c in self.comparisons],
            "failures": list(self.failures),
            "unchecked": list(self.unchecked),
        }


def verify_outputs(
    reference: Mapping[str, npt.NDArray[Any]],
    candidate: Mapping[str, npt.NDArray[Any]],
    tolerance: float,
) -> Verification:
    """Decide whether ``candidate`` reproduces ``reference`` (see Verification).

    Outputs of ``candidate`` without a reference are listed as unchecked.
    """
    comparisons: list[OutputComparison] = []
    failures: list[str] = []
    unchecked: list[str] = []
    for name, got in candidate.items():
        if name not in reference:
            unchecked.append(name)
            continue
        try:
            comparison = _compare(name, reference[name], got)
        except ValueError as exc:
            failures.append(str(exc))
            continue
        comparisons.append(comparison)
        if comparison.is_label:
            if comparison.agreement is not None and comparison.agreement < 1.0:
                failures.append(
                    f"output {name!r}: {1 - comparison.agreement:.1%} of the values differ "
                    "from the source model's"
                )
            continue
        ref = reference[name].astype(np.float64).reshape(got.shape)
        excess = np.abs(ref - got.astype(np.float64)) - tolerance * np.maximum(1.0, np.abs(ref))
        if excess.size and float(excess.max()) > 0:
            failures.append(
                f"output {name!r} deviates by up to {comparison.max_abs:.3g} from the source "
                f"model's (tolerance {tolerance:g} x max(1, |value|))"
            )
    return Verification(tuple(comparisons), tolerance, tuple(failures), tuple(unchecked))
