"""Prometheus metrics of a running peer, read from ``Peer.status()`` when scraped: the
peer keeps its own counters, and nothing here counts twice (docs/gateways.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from p2pnet.peer import Peer

__all__ = ["PeerCollector", "peer_registry"]

# DHT counters (``DhtStats``) exported as counters; the others are gauges.
_DHT_GAUGES = {"network_size"}


class PeerCollector(Collector):
    """A Prometheus collector that reads one peer's ``status()`` at every scrape."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def collect(self) -> Iterator[Metric]:
        """The peer's metrics now; none while the peer is not running."""
        try:
            status = self._peer.status()
        except Exception:  # not running (UsageError), or stopping: nothing to report
            return
        errors = sum(status.call_errors.values())
        served = CounterMetricFamily(
            "p2pnet_calls_served",
            "Invoke calls this peer answered, by outcome and error code",
            labels=["outcome", "code"],
        )
        served.add_metric(["ok", ""], max(0, status.calls_served - errors))
        for code, count in sorted(status.call_errors.items()):
            served.add_metric(["error", code], count)
        yield served

        failures = sum(status.call_failures.values())
        made = CounterMetricFamily(
            "p2pnet_calls_made",
            "Invoke calls this peer made to other peers (each provider tried), by outcome "
            "and error code",
            labels=["outcome", "code"],
        )
        made.add_metric(["ok", ""], max(0, status.calls_made - failures))
        for code, count in sorted(status.call_failures.items()):
            made.add_metric(["error", code], count)
        yield made
        seconds = CounterMetricFamily(
            "p2pnet_calls_made_seconds", "Seconds the calls this peer made took, in all"
        )
        seconds.add_metric([], status.call_seconds)
        yield seconds

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
                counter = CounterMetricFamily(
                    f"p2pnet_dht_{name}", f"DHT counter {name.replace('_', ' ')}"
                )
                counter.add_metric([], number)
                yield counter

        for name, count in sorted(status.generation.items()):
            if name == "sessions":
                yield _gauge("p2pnet_generation_sessions", "Generation sessions open", count)
            else:
                counter = CounterMetricFamily(
                    f"p2pnet_generation_{name}", f"Streamed generation {name} served"
                )
                counter.add_metric([], count)
                yield counter

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
        for name, count in sorted(status.trust.items()):
            doc = f"Spot checks: {name.replace('_', ' ')}"
            if name == "untrusted":
                yield _gauge("p2pnet_spot_checks_untrusted", doc, count)
            else:
                checks = CounterMetricFamily(f"p2pnet_spot_checks_{name}", doc)
                checks.add_metric([], count)
                yield checks


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def peer_registry(peer: Peer) -> CollectorRegistry:
    """A registry of its own (not the process-wide default one) holding ``peer``'s
    collector: two peers in one process export their own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(peer))
    return registry
