"""Statistics of the invoke calls a peer serves and makes: counts by model and outcome,
latency histograms, tensor bytes moved, and a bounded list of the recent calls (the
status page reads it). Pure: the caller passes the time and the figures of each call.

Bounded whatever other peers do: at most ``max_models`` distinct models per side are
counted under their own ID, the others under ``OTHER``; error codes are p2pnet's wire
codes (a fixed set); the recent calls are a ring of ``recent`` entries.

Recording a call costs a few dict updates and one bisect (docs/gateway.md, "Metrics").
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

__all__ = [
    "LATENCY_BUCKETS",
    "OTHER",
    "CallRecord",
    "CallStats",
    "Histogram",
    "Side",
    "call_task",
    "calling_task",
    "tensor_bytes",
]

Side = Literal["served", "made"]

# Upper bounds (seconds) of the latency buckets, Prometheus style (``le``): from a call
# on an open stream on this machine (~0.5 ms) to the default call timeout (30 s).
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# The model label of the calls of models beyond ``max_models``.
OTHER: Final = "other"

# The task a call is made for, when the caller searched by task (``ModelFinder.call``
# sets it around its attempts; the invoke client reads it when it records a call).
call_task: ContextVar[str | None] = ContextVar("p2pnet_call_task", default=None)


@contextmanager
def calling_task(task: str | None) -> Iterator[None]:
    """Calls made inside the block are recorded as made for ``task``."""
    token = call_task.set(task)
    try:
        yield
    finally:
        call_task.reset(token)


def tensor_bytes(tensors: Mapping[str, Any]) -> int:
    """The bytes of a call's tensors as held in memory, what the bytes counters count:
    numeric tensors by their size; string tensors by their elements' length (in
    characters for text: counting UTF-8 bytes costs about six times as much, some 12 ms
    on the event loop for the 65536 string elements a message may hold)."""
    total = 0
    for value in tensors.values():
        if not isinstance(value, np.ndarray):
            continue
        if value.dtype.kind in "OU":
            items = value.ravel().tolist()
            try:
                total += sum(map(len, items))
            except TypeError:  # not all text or bytes
                total += sum(map(_length, items))
        else:
            total += value.nbytes
    return total


def _length(item: object) -> int:
    return len(item) if isinstance(item, str | bytes) else 0


class Histogram:
    """Observations in the fixed buckets ``bounds`` (and one above the last): counts per
    bucket, their number and their sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value (Prometheus' "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that) for every bucket, the last one's
        bound ``inf``: Prometheus' cumulative ``_bucket`` samples."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call, as the recent-calls list keeps it.

    at: when it ended (unix seconds). side: "served" (another peer called this one) or
    "made" (this peer called another). model_id, name: the model (name: from the
    provider's record for calls made, this peer's own for calls served; "" if not
    known). task: what the caller searched for (None: not known, or called by model).
    peer_id: the other peer. code: "" for a result, else the error's wire code.
    seconds: how long it took. bytes_in, bytes_out: tensor bytes received and sent.
    """

    at: float
    side: Side
    model_id: str
    name: str
    task: str | None
    peer_id: str
    code: str
    seconds: float
    bytes_in: int
    bytes_out: int

    @property
    def outcome(self) -> str:
        return "error" if self.code else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "side": self.side,
            "model_id": self.model_id,
            "name": self.name,
            "task": self.task,
            "peer_id": self.peer_id,
            "outcome": self.outcome,
            "code": self.code,
            "seconds": self.seconds,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class CallStats:
    """The call statistics of one peer, both sides, since ``started`` (unix seconds).

    counts: (side, model label, code) -> calls; code "" for results.
    latency: (side, model label) -> histogram of the calls' seconds.
    bytes: (side, "in" or "out") -> tensor bytes received or sent.
    """

    def __init__(self, started: float, *, max_models: int = 32, recent: int = 200) -> None:
        self.started = started
        self.max_models = max_models
        self.counts: dict[tuple[Side, str, str], int] = {}
        self.latency: dict[tuple[Side, str], Histogram] = {}
        self.bytes: dict[tuple[Side, str], int] = {
            (side, direction): 0 for side in ("served", "made") for direction in ("in", "out")
        }
        self._models: dict[Side, set[str]] = {"served": set(), "made": set()}
        self._recent: deque[CallRecord] = deque(maxlen=recent)

    def label(self, side: Side, model_id: str) -> str:
        """The model label of ``model_id``'s calls on ``side``: its ID while fewer than
        ``max_models`` models have been seen there, else ``OTHER``."""
        seen = self._models[side]
        if model_id in seen:
            return model_id
        if len(seen) < self.max_models:
            seen.add(model_id)
            return model_id
        return OTHER

    def record(self, call: CallRecord, *, counted_as: str | None = None) -> None:
        """Count ``call`` (under the model label ``counted_as`` if given, else its
        model's) and keep it among the recent ones."""
        model = counted_as if counted_as is not None else self.label(call.side, call.model_id)
        key = (call.side, model, call.code)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.latency.get((call.side, model))
        if histogram is None:
            histogram = self.latency[(call.side, model)] = Histogram()
        histogram.observe(call.seconds)
        self.bytes[(call.side, "in")] += call.bytes_in
        self.bytes[(call.side, "out")] += call.bytes_out
        self._recent.append(call)

    def calls(self, side: Side) -> int:
        """Calls recorded on ``side``."""
        return sum(n for (s, _, _), n in self.counts.items() if s == side)

    def recent(self, limit: int | None = None) -> list[CallRecord]:
        """The recent calls, newest first (at most ``limit``)."""
        calls: Iterable[CallRecord] = reversed(self._recent)
        if limit is None:
            return list(calls)
        return [call for call, _ in zip(calls, range(max(0, limit)), strict=False)]
