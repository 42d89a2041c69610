"""Spot checks of providers' outputs: which calls to check, how to compare two results,
who is the odd one out (of three, or of up to ``MAX_OPINIONS`` when no two of three
agree), and which provider to ask for a second opinion (docs/security.md, "Spot
checks").

A caller re-runs a fraction ``rate`` of its calls elsewhere and compares the outputs:

- bitwise when both results carry the same runtime fingerprint (same onnxruntime
  version, instruction set and CPU count: onnxruntime promises nothing across those, and
  measured here gives the same bits across intra-op thread counts);
- otherwise numbers within a tolerance: floats pass where ``|a - b| <= atol + rtol *
  |b|`` (NaN matching NaN, infinities matching exactly), integers, booleans and strings
  must be equal. ``Tolerance`` holds the defaults (atol 1e-4, rtol 1e-3), a model may
  have its own.

Everything here is pure: randomness comes in as a ``random.Random``, nothing is sent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from p2pnet.core.tensor import dtype_name

__all__ = [
    "DEFAULT_RATE",
    "DEFAULT_SPOT_CHECKS",
    "DEFAULT_TOLERANCE",
    "MAX_OPINIONS",
    "Comparison",
    "Sampler",
    "SpotCheckPolicy",
    "ThreeWay",
    "Tolerance",
    "TolerancePolicy",
    "checker_order",
    "compare_outputs",
    "odd_one_out",
    "three_way",
    "wants_another_opinion",
]

DEFAULT_RATE: Final = 0.05
# Results heard at most when they disagree: the call's, the second opinion's and up to
# three more (``wants_another_opinion``).
MAX_OPINIONS: Final = 5


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far apart two float results may be and still agree: ``|a - b| <= atol + rtol *
    |b|`` per element (numpy's ``isclose``). Integer, boolean and string outputs are
    always compared exactly.

    The defaults leave room for onnxruntime across machines (~2e-7 relative measured in
    its issues, 1e-5 quoted by its maintainers) and stay far below what a changed model or
    a made-up result moves.

    Raises:
        ValueError: a negative or non-finite bound.
    """

    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r:.40}")


DEFAULT_TOLERANCE: Final = Tolerance()


@dataclass(frozen=True, slots=True)
class TolerancePolicy:
    """The tolerance of each model: ``per_model`` (model ID -> Tolerance), else
    ``default``."""

    default: Tolerance = DEFAULT_TOLERANCE
    per_model: Mapping[str, Tolerance] = field(default_factory=dict)

    def for_model(self, model_id: str) -> Tolerance:
        return self.per_model.get(model_id, self.default)


@dataclass(frozen=True, slots=True)
class SpotCheckPolicy:
    """How a caller checks its providers (the ``[trust]`` table of config.toml).

    rate: the fraction of calls re-run elsewhere (0 turns spot checks off).
    tolerances: how far float results may differ, per model.
    max_concurrent: checks running at once; a call sampled while that many run is not
        checked (counted as skipped), so checks never queue up behind a busy caller.
    timeout: seconds each re-run may take.
    seed: seeds the sampler, for reproducible runs (None: a fresh seed).

    Raises:
        ValueError: a rate outside [0, 1], or a bound that is not positive.
    """

    rate: float = DEFAULT_RATE
    tolerances: TolerancePolicy = field(default_factory=TolerancePolicy)
    max_concurrent: int = 2
    timeout: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, int | float) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"the spot-check rate must be between 0 and 1, not {self.rate!r:.40}")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent checks must be at least 1")
        if not self.timeout > 0:
            raise ValueError("the spot-check timeout must be positive")


DEFAULT_SPOT_CHECKS: Final = SpotCheckPolicy()


How = Literal["equal", "names", "dtype", "shape", "values", "not_bitwise"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict of comparing two results.

    agree: whether they agree.
    mode: "bitwise" (same runtime fingerprint) or "tolerance".
    how: "equal" when they agree; else what differs first: "names" (other output names),
        "dtype", "shape", "values" (beyond the tolerance, or unequal integers or
        strings), "not_bitwise" (within the tolerance, but bitwise compared and not equal).
    tensor: the first output (by name) that differs; None when they agree or the names
        differ.
    max_abs_error, max_rel_error: the largest differences over the float outputs compared
        (0.0 where there are none; ``inf`` where only one side is NaN or infinite).
    detail: one line a person reads.
    """

    agree: bool
    mode: Literal["bitwise", "tolerance"]
    how: How
    tensor: str | None
    max_abs_error: float
    max_rel_error: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "mode": self.mode,
            "how": self.how,
            "tensor": self.tensor,
            "max_abs_error": _json_float(self.max_abs_error),
            "max_rel_error": _json_float(self.max_rel_error),
            "detail": self.detail,
        }


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def compare_outputs(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    fingerprints_match: bool,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> Comparison:
    """Compare result ``a`` with result ``b`` (named tensors): bitwise if
    ``fingerprints_match``, else floats within ``tolerance`` and the rest exactly. Outputs
    are visited in the order of their names; the first that differs is named. The errors
    are measured over every float output, so a verdict says how far apart they are."""
    mode: Literal["bitwise", "tolerance"] = "bitwise" if fingerprints_match else "tolerance"
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        return Comparison(
            False,
            mode,
            "names",
            None,
            0.0,
            0.0,
            f"outputs differ: only in the first {only_a}, only in the second {only_b}",
        )
    first: tuple[How, str, str] | None = None
    worst_abs = worst_rel = 0.0
    for name in sorted(a):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        found = _compare_tensor(name, x, y, mode, tolerance)
        if found.abs_error > worst_abs:
            worst_abs = found.abs_error
        if found.rel_error > worst_rel:
            worst_rel = found.rel_error
        if found.how is not None and first is None:
            first = (found.how, name, found.detail)
    if first is None:
        return Comparison(True, mode, "equal", None, worst_abs, worst_rel, "the outputs agree")
    how, name, detail = first
    return Comparison(False, mode, how, name, worst_abs, worst_rel, detail)


@dataclass(frozen=True, slots=True)
class _TensorDiff:
    how: How | None
    abs_error: float = 0.0
    rel_error: float = 0.0
    detail: str = ""


def _compare_tensor(
    name: str,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    mode: Literal["bitwise", "tolerance"],
    tolerance: Tolerance,
) -> _TensorDiff:
    dx, dy = dtype_name(x), dtype_name(y)
    if dx != dy:
        return _TensorDiff("dtype", detail=f"output {name!r}: dtype {dx} vs {dy}")
    if x.shape != y.shape:
        return _TensorDiff("shape", detail=f"output {name!r}: shape {x.shape} vs {y.shape}")
    if x.dtype.kind not in "fc":
        if dx == "string":
            equal = [str(p) for p in x.ravel()] == [str(q) for q in y.ravel()]
        else:
            equal = bool(np.array_equal(x, y))
        if equal:
            return _TensorDiff(None)
        unequal = (
            sum(str(p) != str(q) for p, q in zip(x.ravel(), y.ravel(), strict=True))
            if dx == "string"
            else int(np.count_nonzero(x != y))
        )
        return _TensorDiff(
            "values", detail=f"output {name!r}: {unequal} of {x.size} {dx} elements differ"
        )
    abs_error, rel_error = _float_errors(x, y)
    bitwise_equal = x.tobytes() == y.tobytes() if x.dtype == y.dtype else False
    close = bool(np.all(np.isclose(x, y, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)))
    if not close:
        return _TensorDiff(
            "values",
            abs_error,
            rel_error,
            f"output {name!r}: max abs error {abs_error:.3g}, max rel error {rel_error:.3g}, "
            f"beyond atol {tolerance.atol:g} + rtol {tolerance.rtol:g}",
        )
    if mode == "bitwise" and not bitwise_equal:
        return _TensorDiff(
            "not_bitwise",
            abs_error,
            rel_error,
            f"output {name!r}: not bitwise equal under the same runtime "
            f"(max abs error {abs_error:.3g})",
        )
    return _TensorDiff(None, abs_error, rel_error)


def _float_errors(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, float]:
    """The largest absolute and relative (to ``y``) differences; NaN against NaN counts as
    equal, NaN against a number or unequal infinities as ``inf``."""
    if x.size == 0:
        return 0.0, 0.0
    with np.errstate(all="ignore"):
        xd, yd = (
            x.astype(np.complex128 if x.dtype.kind == "c" else np.float64),
            y.astype(np.complex128 if y.dtype.kind == "c" else np.float64),
        )
        both_nan = np.isnan(xd) & np.isnan(yd)
        same = (xd == yd) | both_nan
        diff = np.where(same, 0.0, np.abs(xd - yd))
        diff = np.where(np.isnan(diff), np.inf, diff)
        scale = np.abs(yd)
        rel = np.where(same, 0.0, np.where(scale > 0, diff / np.where(scale > 0, scale, 1), np.inf))
    return float(np.max(diff)), float(np.max(rel))


class ThreeWay(Enum):
    """What three results say together: all agree, one disagrees with the two others
    (who agree with each other), or no majority."""

    ALL_AGREE = "all_agree"
    FIRST_ODD = "first_odd"
    SECOND_ODD = "second_odd"
    THIRD_ODD = "third_odd"
    NO_MAJORITY = "no_majority"


def three_way(first_second: bool, first_third: bool, second_third: bool) -> ThreeWay:
    """Which of three results is the odd one out, from whether each pair agrees. A result
    is odd only when it disagrees with both others and those two agree; agreement within
    a tolerance is not transitive, so any other mix is ``NO_MAJORITY`` (nobody marked)."""
    if first_second and first_third and second_third:
        return ThreeWay.ALL_AGREE
    if second_third and not first_second and not first_third:
        return ThreeWay.FIRST_ODD
    if first_third and not first_second and not second_third:
        return ThreeWay.SECOND_ODD
    if first_second and not first_third and not second_third:
        return ThreeWay.THIRD_ODD
    return ThreeWay.NO_MAJORITY


def odd_one_out(agree: Mapping[tuple[int, int], bool], count: int) -> int | None:
    """Which of ``count`` results is the odd one out: one that agrees with none of the
    others while two others agree with each other; the first such in the order heard
    (0 is the provider checked, 1 the second opinion, then the further ones), None if
    there is none. ``agree[(i, j)]`` (i < j) says whether results i and j agree. With
    three results this is ``three_way``'s odd one."""
    agreeing = [pair for pair, same in agree.items() if same]
    if not agreeing:
        return None
    for index in range(count):
        if not any(index in pair for pair in agreeing):
            return index
    return None


def wants_another_opinion(agree: Mapping[tuple[int, int], bool], count: int) -> bool:
    """Whether to ask one more provider: each of the ``count`` results heard disagrees
    with every other (two wrong results, each its own, and a right one leave three with
    no majority) and fewer than ``MAX_OPINIONS`` were heard. Once any two agree, more
    opinions are not asked: ``odd_one_out`` decides, or nobody is marked."""
    return count < MAX_OPINIONS and not any(agree.values())


class Sampler:
    """Which calls to check: each with probability ``rate``, drawn from ``rng`` (seed it
    for a reproducible run). ``rate`` 0 checks none, 1 every call.

    Raises:
        ValueError: ``rate`` outside [0, 1].
    """

    def __init__(self, rate: float, rng: random.Random) -> None:
        if not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
            raise ValueError(f"the spot-check rate must be between 0 and 1, not {rate!r:.40}")
        self.rate = float(rate)
        self._rng = rng

    def should_check(self) -> bool:
        """Whether to check the call just made."""
        if self.rate <= 0.0:
            return False
        if self.rate >= 1.0:
            return True
        return self._rng.random() < self.rate


def checker_order(
    candidates: Sequence[tuple[str, frozenset[str]]], avoid: frozenset[str]
) -> list[str]:
    """Peer IDs of ``candidates`` (peer ID, IP groups; best first) in the order to ask
    for another opinion: those sharing no group with ``avoid`` (the groups of the
    providers already heard) first, then the rest; each keeps its place within its part.
    A candidate with no known group counts as sharing none."""
    apart = [peer for peer, groups in candidates if not groups & avoid]
    near = [peer for peer, groups in candidates if groups & avoid]
    return list(dict.fromkeys(apart + near))
