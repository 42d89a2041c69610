"""Prometheus metrics of a running peer, read when scraped from ``Peer.status()``, the
peer's call statistics (``CallStats``: calls by model and outcome, latency histograms,
bytes) and its models' run slots: the peer keeps its own counters, and nothing here
counts twice (docs/gateway.md, "Metrics")."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from p2pnet.core.callstats import CallStats
from p2pnet.runtime.batching import BatchedModel
from p2pnet.runtime.served import RunSlots

if TYPE_CHECKING:
    from p2pnet.peer import Peer

__all__ = ["MAX_BALANCES", "PeerCollector", "peer_registry"]

# Credit balances exported, the largest in size first.
MAX_BALANCES = 10
# Spot checks' verdicts (``status.trust`` keys).
_VERDICTS = ("agreed", "disagreed", "unresolved")

# DHT counters (``DhtStats``) exported as counters; the others are gauges.
_DHT_GAUGES = {"network_size"}


class PeerCollector(Collector):
    """A Prometheus collector that reads one peer's ``status()``, call statistics and
    run slots at every scrape."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def collect(self) -> Iterator[Metric]:
        """The peer's metrics now; none while the peer is not running."""
        try:
            status = self._peer.status()
        except Exception:  # not running (UsageError), or stopping: nothing to report
            return
        try:
            calls = self._peer.services.call_stats
        except Exception:  # stopped between the two reads
            return
        served_ids = [m.model_id for m in status.models]
        yield from _call_metrics(calls, served_ids)
        errors = CounterMetricFamily(
            "p2pnet_invoke_errors",
            "Invoke errors by wire code: error replies this peer sent (side served, those to "
            "bytes that broke the protocol included), errors of the calls it made (side made)",
            labels=["side", "code"],
        )
        for side, counts in (("served", status.call_errors), ("made", status.call_failures)):
            for code, count in sorted(counts.items()):
                errors.add_metric([side, code], count)
        yield errors
        yield _gauge("p2pnet_start_time_seconds", "When the peer started, in unix seconds",
                     calls.started)  # fmt: skip
        yield from _queue_metrics(self._peer)

        yield _gauge("p2pnet_routing_table_peers", "Peers in the DHT routing table",
                     status.routing_table)  # fmt: skip
        connections = GaugeMetricFamily(
            "p2pnet_connections", "Open connections, by path", labels=["path"]
        )
        paths = [c.path for c in status.connections]
        for path in ("direct", "relayed"):
            connections.add_metric([path], paths.count(path))
        yield connections
        yield _gauge("p2pnet_models_served", "Models this peer serves", len(status.models))
        reachability = GaugeMetricFamily(
            "p2pnet_reachability",
            "1 for the reachability AutoNAT found (public, private or unknown)",
            labels=["reachability"],
        )
        for value in ("public", "private", "unknown"):
            reachability.add_metric([value], 1.0 if status.reachability == value else 0.0)
        yield reachability

        limits = CounterMetricFamily(
            "p2pnet_limits_hit", "Streams the resource limits reset or closed, by reason",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(status.limits_hit.items()):
            limits.add_metric([reason], count)
        yield limits

        for name, number in sorted(status.dht.items()):
            if name in _DHT_GAUGES:
                yield _gauge(f"p2pnet_dht_{name}", f"DHT {name.replace('_', ' ')}", number)
            else:
                yield _counter(
                    f"p2pnet_dht_{name}", f"DHT counter {name.replace('_', ' ')}", number
                )

        for name, count in sorted(status.generation.items()):
            if name == "sessions":
                yield _gauge("p2pnet_generation_sessions", "Generation sessions open", count)
            else:
                yield _counter(
                    f"p2pnet_generation_{name}", f"Streamed generation {name} served", count
                )

        if status.receipts:
            receipts = CounterMetricFamily(
                "p2pnet_receipts", "Usage receipts since the peer started, by kind",
                labels=["kind"],
            )  # fmt: skip
            for kind, count in sorted(status.receipts.items()):
                receipts.add_metric([kind], count)
            yield receipts
        if status.ledger is not None:
            yield _gauge(
                "p2pnet_ledger_balances",
                "Peers with a balance in the ledger (the largest 20 at most)",
                len(status.balances),
            )
        if status.balances:
            balances = GaugeMetricFamily(
                "p2pnet_credit_balance",
                f"Ledger balance in micro-units, positive when the peer owes this one (the "
                f"{MAX_BALANCES} largest in size)",
                labels=["peer"],
            )
            largest = sorted(status.balances.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
            for peer_id, balance in largest[:MAX_BALANCES]:
                balances.add_metric([peer_id], balance)
            yield balances
        if status.trust:
            verdicts = CounterMetricFamily(
                "p2pnet_spot_check_verdicts",
                "Spot checks that ended, by verdict (agreed, disagreed, unresolved)",
                labels=["verdict"],
            )
            for verdict in _VERDICTS:
                verdicts.add_metric([verdict], status.trust.get(verdict, 0))
            yield verdicts
        for name, count in sorted(status.trust.items()):
            doc = f"Spot checks: {name.replace('_', ' ')}"
            if name in _VERDICTS:
                continue
            if name == "untrusted":
                yield _gauge("p2pnet_spot_checks_untrusted", doc, count)
            else:
                yield _counter(f"p2pnet_spot_checks_{name}", doc, count)


def _call_metrics(calls: CallStats, served_ids: list[str]) -> Iterator[Metric]:
    """Calls by model and outcome, their latency histograms, and the bytes they moved."""
    for side, verb in (("served", "this peer answered"), ("made", "this peer made")):
        counter = CounterMetricFamily(
            f"p2pnet_calls_{side}",
            f'Invoke calls {verb}, by model ID ("other" past {calls.max_models} models), '
            "outcome (ok, error) and error code",
            labels=["model", "outcome", "code"],
        )
        counted = {(m, c): n for (s, m, c), n in calls.counts.items() if s == side}
        if side == "served":  # a series for each model served, from the start
            for model_id in served_ids:
                if not any(m == model_id for m, _ in counted):
                    counted[(model_id, "")] = 0
        for (model, code), count in sorted(counted.items()):
            counter.add_metric([model, "error" if code else "ok", code], count)
        yield counter
        histogram = HistogramMetricFamily(
            f"p2pnet_call_{side}_seconds",
            f"Seconds the invoke calls {verb} took, by model ID",
            labels=["model"],
        )
        for (hs, model), observed in sorted(calls.latency.items()):
            if hs != side:
                continue
            buckets = [(_le(bound), count) for bound, count in observed.cumulative()]
            histogram.add_metric([model], buckets, observed.sum)
        yield histogram
    moved = CounterMetricFamily(
        "p2pnet_payload_bytes",
        "Tensor bytes of the invoke calls that returned a result, by side (served, made) and "
        "direction (in: received, out: sent)",
        labels=["side", "direction"],
    )
    for (side, direction), count in sorted(calls.bytes.items()):
        moved.add_metric([side, direction], count)
    yield moved


def _queue_metrics(peer: Peer) -> Iterator[Metric]:
    """Runs waiting for a slot and running, for each model served."""
    waiting = GaugeMetricFamily(
        "p2pnet_model_queue_depth", "Calls waiting for a free run slot (or a batch), by model ID",
        labels=["model"],
    )  # fmt: skip
    running = GaugeMetricFamily(
        "p2pnet_model_runs_active", "Runs holding a slot now, by model ID", labels=["model"]
    )
    batches = CounterMetricFamily(
        "p2pnet_model_batches",
        "Batches a model served with dynamic batching ran, by model ID",
        labels=["model"],
    )
    rows = CounterMetricFamily(
        "p2pnet_model_batch_rows",
        "Rows the batches of a model served with dynamic batching held, by model ID "
        "(rows per batch: this over p2pnet_model_batches_total)",
        labels=["model"],
    )
    for model_id, model in sorted(peer.models.items()):
        slots = getattr(model, "slots", None)
        # Calls queued for a batch wait for a run as much as those queued for a slot.
        queued = model.stats.queued if isinstance(model, BatchedModel) else 0
        if isinstance(slots, RunSlots):
            waiting.add_metric([model_id], slots.waiting + queued)
            running.add_metric([model_id], slots.running)
        if isinstance(model, BatchedModel):
            batches.add_metric([model_id], model.stats.batches)
            rows.add_metric([model_id], model.stats.rows)
    yield waiting
    yield running
    yield batches
    yield rows


def _le(bound: float) -> str:
    """A bucket's ``le`` label: "0.0005", "30.0", "+Inf"."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def peer_registry(peer: Peer) -> CollectorRegistry:
    """A registry of its own (not the process-wide default one) holding ``peer``'s
    collector: two peers in one process export their own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(peer))
    return registry
