"""scripts/bench/dht.py: a --quick run writes every figure, and p2pnet finds every provider."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "bench" / "dht.py"

# Figures every swarm has, as positive (or zero) numbers.
COMMON = (
    "bootstrap_s",
    "cpu_s_per_join",
    "joins_failed",
    "join_p50_ms",
    "join_p95_ms",
    "provide_ms",
    "first_lookups",
    "first_success_rate",
    "first_lookup_p50_ms",
    "first_lookup_p95_ms",
    "first_local_answers",
    "rss_per_peer_mb",
    "rss_marginal_per_peer_mb",
    "table_mean",
)
REAL = (*COMMON, "bootstrap_cpu_s", "connections_per_peer", "tasks_per_peer")
P2PNET_REAL = (*REAL, "again_success_rate", "again_lookup_p50_ms")
MEMORY = (
    *COMMON,
    "bootstrap_virtual_s",
    "first_network_lookup_p50_ms",
    "first_network_lookup_p95_ms",
    "first_hops_mean",
    "first_hops_max",
    "first_queries_mean",
    "rss_peak_mb",
    "streams_opened_per_peer",
)


def _check_numbers(scenario: str, result: dict[str, object], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in result]
    assert not missing, f"{scenario}: figures missing from dht.json: {missing}"
    for name in names:
        value = result[name]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (scenario, name)
        assert math.isfinite(value) and value >= 0, f"{scenario}: {name} = {value}"


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "dht.json").read_text())

    results = report["results"]
    assert set(results) == {"real", "baseline", "memory"}
    assert results["real"] and results["baseline"] and results["memory"]
    for n, result in results["real"].items():
        _check_numbers(f"real N={n}", result, P2PNET_REAL)
        assert result["joins_failed"] == 0, result["join_errors"]
        assert result["provide_ok"], result["provide_error"]
        assert result["first_success_rate"] == 1.0, result["first_errors"]
        assert result["again_success_rate"] == 1.0, result["again_errors"]
        assert result["first_lookup_p50_ms"] <= result["first_lookup_p95_ms"]
        # In a swarm this small a provider's records may reach every peer, so that
        # every lookup is answered from the peer's own store: network figures exist
        # only for lookups that went over the network.
        if result["first_local_answers"] < result["first_lookups"]:
            _check_numbers(f"real N={n}", result, ("first_queries_mean",))
        else:
            assert result["first_queries_mean"] is None
    for n, result in results["memory"].items():
        _check_numbers(f"memory N={n}", result, MEMORY)
        assert result["joins_failed"] == 0
        assert result["first_success_rate"] == 1.0, result["first_errors"]
        assert result["first_lookups"] >= 100
        assert result["first_hops_max"] >= 1  # lookups went over the (simulated) network
    for n, result in results["baseline"].items():
        # The baseline may fail or time out (a figure is then None), but it is reported.
        missing = [name for name in REAL if name not in result]
        assert not missing, f"baseline N={n}: figures missing from dht.json: {missing}"
        _check_numbers(f"baseline N={n}", result, ("bootstrap_s", "first_lookups"))

    machine = report["machine"]
    for key in ("cpu_count", "python", "libp2p", "trio"):
        assert machine[key], key
    assert report["date"] and report["duration_s"] > 0
    assert report["targets"] and all(isinstance(t["pass"], bool) for t in report["targets"])
