"""Dynamic batching decided without I/O: which queued calls of a model run together,
when a batch is due, and how a batch's outputs go back to its calls.

A batched model concatenates the inputs of several calls along their first (batch)
axis, runs once, and splits each output by the calls' row counts. Calls go together
when every input has the same dtype and the same sizes past the first axis (``shape
key``); a batch holds at most ``max_batch`` rows, except one call larger than that,
which runs alone. A batch is due when it is full, when its oldest call has waited
``max_delay_ms``, or when one of its calls would otherwise miss its deadline (it must
start ``reserve`` seconds before the deadline: the run's expected length).

Time is an argument everywhere (``now``, in trio seconds): the runtime
(``p2pnet.runtime.batching``) reads the clock and runs what this module decides.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from p2pnet.core.schema import ModelSchema
from p2pnet.errors import ModelExecutionError, UsageError

__all__ = [
    "BATCHED",
    "Batching",
    "QueuedCall",
    "ShapeKey",
    "batch_rows",
    "batched_runtime",
    "check_batchable",
    "concatenate_rows",
    "is_batched_runtime",
    "next_due",
    "shape_key",
    "split_rows",
    "take_batch",
]

T = TypeVar("T")

# Most rows a batching policy may ask for (a batch past this is no longer a latency trade).
MAX_BATCH_ROWS = 1 << 16
# Longest a call may be held to fill a batch.
MAX_DELAY_MS = 10_000.0


# What a batched model's runtime says after its runtime's name ("onnxruntime/1.32.0
# batched"): its results depend on which calls shared its batch (float rounding), so
# two of them are never compared bitwise by spot checks, even from one machine.
BATCHED: Final = "batched"


def batched_runtime(runtime: str) -> str:
    """The runtime a capability record states for a model served with batching."""
    return f"{runtime} {BATCHED}" if runtime else BATCHED


def is_batched_runtime(runtime: str) -> bool:
    """Whether a runtime (a record's, or a receipt's "runtime; machine") is a batched
    model's, whose results are reproducible within a tolerance only."""
    return BATCHED in runtime.split(";", 1)[0].split()


@dataclass(frozen=True, slots=True)
class Batching:
    """A model's batching policy: at most ``max_batch`` rows per run, a call held at
    most ``max_delay_ms`` for others to join it; at most ``max_queue`` calls waiting to
    join a batch (callers beyond that are refused as busy).

    Raises:
        UsageError: a bound out of range.
    """

    max_batch: int
    max_delay_ms: float = 2.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH_ROWS:
            raise UsageError(f"max batch must be 1 to {MAX_BATCH_ROWS} rows, not {self.max_batch}")
        if not 0 <= self.max_delay_ms <= MAX_DELAY_MS or math.isnan(self.max_delay_ms):
            raise UsageError(
                f"max batch delay must be 0 to {MAX_DELAY_MS:.0f} ms, not {self.max_delay_ms}"
            )
        if self.max_queue < 1:
            raise UsageError(f"max batch queue must be at least 1 call, not {self.max_queue}")

    @property
    def max_delay(self) -> float:
        """``max_delay_ms`` in seconds."""
        return self.max_delay_ms / 1000


def check_batchable(schema: ModelSchema, name: str) -> None:
    """Raise UsageError unless every input and output of ``schema`` has a first axis of
    free size (symbolic, or unnamed) that no other axis shares: then calls can be
    concatenated on it and outputs split on it. ``name`` names the model in the message.
    """
    tensors = [("input", spec) for spec in schema.inputs] + [
        ("output", spec) for spec in schema.outputs
    ]
    for role, spec in tensors:
        if not spec.shape:
            raise UsageError(
                f"model {name} cannot be batched: {role} {spec.name!r} is a scalar "
                f"({spec.describe()}); batching needs a first (batch) dimension on every "
                "input and output"
            )
        first = spec.shape[0]
        if isinstance(first, int):
            raise UsageError(
                f"model {name} cannot be batched: {role} {spec.name!r} has a fixed first "
                f"dimension of {first} ({spec.describe()}); batching needs a symbolic first "
                "(batch) dimension on every input and output"
            )
    batch_symbols = {spec.shape[0] for _, spec in tensors if isinstance(spec.shape[0], str)}
    for role, spec in tensors:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if isinstance(dim, str) and dim in batch_symbols:
                raise UsageError(
                    f"model {name} cannot be batched: {role} {spec.name!r} uses the batch "
                    f"dimension {dim!r} on axis {axis} ({spec.describe()}); concatenating "
                    "calls would change its size"
                )


# A call's inputs past their first axis: ((name, dtype, sizes after axis 0), ...).
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def shape_key(inputs: Mapping[str, npt.NDArray[Any]]) -> ShapeKey:
    """What calls must share to be batched: each input's dtype and non-batch sizes."""
    return tuple(
        (name, arr.dtype.str, tuple(arr.shape[1:])) for name, arr in sorted(inputs.items())
    )


def batch_rows(inputs: Mapping[str, npt.NDArray[Any]]) -> int | None:
    """The rows of a call: the first size shared by all its inputs; None when they
    differ (a model with unnamed first dimensions allows that; such a call runs alone).
    """
    sizes = {arr.shape[0] for arr in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


@dataclass(eq=False, slots=True)
class QueuedCall(Generic[T]):
    """A call waiting to join a batch: what the runtime attaches (``item``), its
    ``rows``, ``key``, when it ``arrived`` and its ``deadline`` (trio seconds), its
    ``priority`` (higher goes first) and ``order`` (arrival number, for ties)."""

    item: T
    rows: int
    key: ShapeKey
    arrived: float
    deadline: float
    priority: int = 0
    order: int = 0

    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.order)


def _groups(queue: Sequence[QueuedCall[T]]) -> dict[ShapeKey, list[QueuedCall[T]]]:
    groups: dict[ShapeKey, list[QueuedCall[T]]] = {}
    for call in sorted(queue, key=QueuedCall.rank):
        groups.setdefault(call.key, []).append(call)
    return groups


def _pack(group: list[QueuedCall[T]], max_batch: int) -> list[QueuedCall[T]]:
    """The calls of one batch from ``group`` (best-placed first): the first always,
    then each later one whose rows still fit within ``max_batch``."""
    batch = [group[0]]
    rows = group[0].rows
    for call in group[1:]:
        if rows + call.rows <= max_batch:
            batch.append(call)
            rows += call.rows
    return batch


def _due_at(
    batch: list[QueuedCall[T]], group: list[QueuedCall[T]], policy: Batching, reserve: float
) -> float:
    """When ``batch`` (packed from ``group``) must start: at once if full or if calls of
    its group are left out, else when its oldest call has waited the policy's delay, or
    ``reserve`` seconds before its nearest deadline."""
    if len(batch) < len(group) or sum(call.rows for call in batch) >= policy.max_batch:
        return -math.inf
    oldest = min(call.arrived for call in batch)
    nearest = min(call.deadline for call in batch)
    return min(oldest + policy.max_delay, nearest - reserve)


def next_due(queue: Sequence[QueuedCall[T]], policy: Batching, reserve: float = 0.0) -> float:
    """When the next batch of ``queue`` is due (inf for an empty queue)."""
    return min(
        (
            _due_at(_pack(group, policy.max_batch), group, policy, reserve)
            for group in _groups(queue).values()
        ),
        default=math.inf,
    )


def take_batch(
    queue: Sequence[QueuedCall[T]], now: float, policy: Batching, reserve: float = 0.0
) -> list[QueuedCall[T]] | None:
    """The calls of the batch due at ``now`` (the most overdue one; best-placed call
    first), or None if none is due yet. The caller removes them from its queue."""
    best: tuple[float, list[QueuedCall[T]]] | None = None
    for group in _groups(queue).values():
        batch = _pack(group, policy.max_batch)
        due = _due_at(batch, group, policy, reserve)
        if due <= now and (best is None or due < best[0]):
            best = (due, batch)
    return None if best is None else best[1]


def concatenate_rows(
    calls: Sequence[Mapping[str, npt.NDArray[Any]]],
) -> dict[str, npt.NDArray[Any]]:
    """The inputs of one run: each input of ``calls`` (same names, same shape key)
    concatenated along axis 0, in the calls' order."""
    if len(calls) == 1:
        return dict(calls[0])
    return {name: np.concatenate([call[name] for call in calls]) for name in calls[0]}


def split_rows(
    outputs: Mapping[str, npt.NDArray[Any]], rows: Sequence[int], name: str
) -> list[dict[str, npt.NDArray[Any]]]:
    """Each call's outputs from one run's ``outputs``: consecutive slices of ``rows``
    rows along axis 0 (copies, so one call's result holds no reference to the others').

    Raises:
        ModelExecutionError: an output whose first size is not the batch's rows (the
            model ``name`` does not keep rows apart, so its outputs cannot be split).
    """
    total = sum(rows)
    for key, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            given = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise ModelExecutionError(
                f"model {name} returned {given} in output {key!r} for a batch of {total} "
                "rows; its outputs cannot be split between the calls"
            )
    if len(rows) == 1:
        return [dict(outputs)]
    bounds = itertools.accumulate(rows, initial=0)
    return [
        {key: arr[start:stop].copy() for key, arr in outputs.items()}
        for start, stop in itertools.pairwise(bounds)
    ]
