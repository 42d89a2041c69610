"""Figures of a simulation run from what the engine recorded (pure: no I/O, no clock).

An engine records one ``QueryRecord`` per discovery query, one ``ChurnRecord`` per join,
departure or restart, one ``FreshRecord`` per new record, one ``PipelineRecord`` per
pipeline run and one ``InvocationRecord`` per call a peer makes to another (pipeline
steps, forwarded hops); ``summarize`` turns them into the run's summary and its
per-interval series, as plain JSON-ready dicts. The incentives workload records one
``PaidCallRecord`` per call; ``class_figures`` gives each class of caller's figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ChurnRecord",
    "FreshRecord",
    "InvocationRecord",
    "PaidCallRecord",
    "PipelineRecord",
    "QueryRecord",
    "class_figures",
    "percentile",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One discovery: find_providers for a task key, then describe every provider found.

    t: start, seconds into the run phase. ok: at least one verified record of an honest
    provider of the task. latency: seconds until the answer (or the timeout).
    hops, queries: of the DHT lookup. providers: peers the lookup named. offers: verified
    records kept. rejected: records that failed verification (forged, misfiled...).
    forged_accepted: kept records that no honest peer signed: must always be 0.
    """

    t: float
    peer: int
    task: str
    ok: bool
    latency: float
    hops: int = 0
    queries: int = 0
    providers: int = 0
    offers: int = 0
    rejected: int = 0
    forged_accepted: int = 0
    error: str = ""
    probe: bool = False  # a freshness probe, not part of the query load


@dataclass(frozen=True, slots=True)
class ChurnRecord:
    t: float
    kind: str  # join | rejoin | leave | crash
    peer: int
    ok: bool = True  # a join that bootstrapped


@dataclass(frozen=True, slots=True)
class FreshRecord:
    """A new record: published at ``t``; ``findable_s`` after it a probe first found it
    (None: not within the probe timeout). ``announced``: peers that took the announcement."""

    t: float
    peer: int
    task: str
    announced: int
    findable_s: float | None
    probes: int


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    """One run of the scenario's pipeline from peer ``peer``, started at ``t``.

    ok: every output came back. correct: and equal to what the stand-in models give
    without a network. latency: seconds, plan included. failovers: providers that failed
    before another answered (orchestrated runs; a forwarded run reports only its result).
    error: the error class when not ok (``timeout``: the run's own timeout).
    """

    t: float
    peer: int
    ok: bool
    latency: float
    correct: bool = False
    failovers: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    """One call from peer ``peer`` to another peer's invoke server: ``kind`` invoke (one
    model) or forward (a forwarded pipeline's next hop); ``error`` the error code."""

    t: float
    peer: int
    kind: str
    ok: bool
    latency: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class PaidCallRecord:
    """One call of the incentives workload: caller ``peer`` of class ``caller_class``
    (contributor | free_rider) called provider ``provider`` at ``t``; ``units`` charged
    when it succeeded; ``error`` the error code when not (``credit_exceeded``...)."""

    t: float
    peer: int
    caller_class: str
    provider: int
    ok: bool
    latency: float
    units: int = 0
    error: str = ""


def class_figures(records: Sequence[PaidCallRecord]) -> dict[str, dict[str, Any]]:
    """Per class of caller: calls, success rate, latency p50/p95 of the successful calls,
    units consumed and errors by code."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({r.caller_class for r in records}):
        mine = [r for r in records if r.caller_class == name]
        lat = [r.latency for r in mine if r.ok]
        out[name] = {
            "callers": len({r.peer for r in mine}),
            "calls": len(mine),
            "succeeded": len(lat),
            "success_rate": round(len(lat) / len(mine), 6) if mine else None,
            "latency_p50_ms": _ms(percentile(lat, 0.50)),
            "latency_p95_ms": _ms(percentile(lat, 0.95)),
            "units_consumed": sum(r.units for r in mine),
            "errors": _error_counts(mine),
        }
    return out


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def _latency_figures(records: Sequence[QueryRecord], prefix: str = "") -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    lat = [r.latency for r in ok]
    hops = [r.hops for r in ok if r.queries]
    return {
        **_outcome_figures(records, prefix, "queries"),
        f"{prefix}latency_mean_ms": _ms(statistics.fmean(lat)) if lat else None,
        f"{prefix}hops_mean": round(statistics.fmean(hops), 3) if hops else None,
        f"{prefix}hops_p95": percentile([float(h) for h in hops], 0.95) if hops else None,
        f"{prefix}hops_max": max(hops) if hops else None,
    }


def summarize(
    queries: Iterable[QueryRecord],
    churn: Iterable[ChurnRecord],
    fresh: Iterable[FreshRecord],
    *,
    duration: float,
    interval: float,
    alive_at: Sequence[tuple[float, int]] = (),
    task_of_interest: str = "",
    pipelines: Iterable[PipelineRecord] = (),
    invocations: Iterable[InvocationRecord] = (),
) -> dict[str, Any]:
    """Summary figures and per-interval series of one run.

    alive_at: (time, live peers) samples, for the series. task_of_interest: also report
    the figures of queries for that task alone (the sybils' target). pipelines,
    invocations: add ``pipeline_*`` and ``invocation_*`` figures when not empty.
    """
    runs = sorted(pipelines, key=lambda r: (r.t, r.peer))
    calls = sorted(invocations, key=lambda r: (r.t, r.peer))
    every = list(queries)
    load = sorted((q for q in every if not q.probe), key=lambda q: (q.t, q.peer))
    churn = sorted(churn, key=lambda c: (c.t, c.peer))
    fresh = sorted(fresh, key=lambda f: f.t)
    summary: dict[str, Any] = _latency_figures(load)
    summary["queries_mean"] = (
        round(statistics.fmean([q.queries for q in load if q.ok and q.queries]), 3)
        if any(q.ok and q.queries for q in load)
        else None
    )
    summary["timeouts"] = sum(1 for q in load if q.error == "timeout")
    summary["records_rejected"] = sum(q.rejected for q in load)
    summary["forged_accepted"] = sum(q.forged_accepted for q in every)
    if task_of_interest:
        target = [q for q in load if q.task == task_of_interest]
        other = [q for q in load if q.task != task_of_interest]
        summary["target_task"] = task_of_interest
        summary.update(_latency_figures(target, "target_"))
        summary.update(_latency_figures(other, "other_"))
    kinds = {"join": "joins", "rejoin": "rejoins", "leave": "leaves", "crash": "crashes"}
    for kind, plural in kinds.items():
        summary[plural] = sum(1 for c in churn if c.kind == kind)
    summary["joins_failed"] = sum(1 for c in churn if c.kind in ("join", "rejoin") and not c.ok)
    found = [f.findable_s for f in fresh if f.findable_s is not None]
    summary["new_records"] = len(fresh)
    summary["new_records_found"] = len(found)
    summary["findable_p50_s"] = _round(percentile(found, 0.5))
    summary["findable_max_s"] = _round(max(found)) if found else None

    if runs:
        summary.update(_outcome_figures(runs, "pipeline_"))
        summary["pipeline_correct"] = sum(1 for r in runs if r.correct)
        summary["pipeline_wrong"] = sum(1 for r in runs if r.ok and not r.correct)
        summary["pipeline_failovers"] = sum(r.failovers for r in runs)
        summary["pipeline_errors"] = _error_counts(runs)
    if calls:
        summary.update(_outcome_figures(calls, "invocation_", "calls"))
        summary["invocation_errors"] = _error_counts(calls)

    series = []
    steps = max(1, math.ceil(duration / interval)) if duration > 0 else 0
    alive_sorted = sorted(alive_at)
    for i in range(steps):
        start, end = i * interval, min(duration, (i + 1) * interval)
        in_q = [q for q in load if start <= q.t < end]
        in_c = [c for c in churn if start <= c.t < end]
        row: dict[str, Any] = {"start_s": round(start, 3), "end_s": round(end, 3)}
        figures = _latency_figures(in_q)
        for key in ("queries", "succeeded", "success_rate", "latency_p50_ms", "latency_p95_ms"):
            row[key] = figures[key]
        for kind, plural in kinds.items():
            row[plural] = sum(1 for c in in_c if c.kind == kind)
        if runs:
            in_p = _outcome_figures([r for r in runs if start <= r.t < end], "pipeline_")
            for key in ("pipeline_runs", "pipeline_success_rate", "pipeline_latency_p50_ms"):
                row[key] = in_p[key]
        live = [n for t, n in alive_sorted if t <= end]
        row["alive"] = live[-1] if live else None
        series.append(row)
    return {
        "summary": summary,
        "intervals": series,
        "latencies_ms": [round(q.latency * 1e3, 3) for q in load if q.ok],
        "pipeline_latencies_ms": [round(r.latency * 1e3, 3) for r in runs if r.ok],
        "churn_events": [asdict(c) for c in churn],
        "fresh": [asdict(f) for f in fresh],
    }


def _outcome_figures(
    records: Sequence[QueryRecord | PipelineRecord | InvocationRecord],
    prefix: str,
    noun: str = "runs",
) -> dict[str, Any]:
    lat = [r.latency for r in records if r.ok]
    return {
        f"{prefix}{noun}": len(records),
        f"{prefix}succeeded": len(lat),
        f"{prefix}success_rate": round(len(lat) / len(records), 6) if records else None,
        f"{prefix}latency_p50_ms": _ms(percentile(lat, 0.50)),
        f"{prefix}latency_p95_ms": _ms(percentile(lat, 0.95)),
        f"{prefix}latency_p99_ms": _ms(percentile(lat, 0.99)),
    }


def _error_counts(
    records: Iterable[PipelineRecord | InvocationRecord | PaidCallRecord],
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if not r.ok:
            counts[r.error] = counts.get(r.error, 0) + 1
    return dict(sorted(counts.items()))


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
