"""Benchmark NAT traversal in network namespaces: relayed vs hole-punched vs no NAT.

Usage: sudo python scripts/bench/nat.py [--models build/models] [--out build/bench]
                                        [--tries 20] [--quick]

Needs root, `ip` and `iptables` (tests/netns/harness.py builds the namespaces and
removes them afterwards). Every peer is its own process in its own namespace:

  boot     public bootstrap peer: `p2pnet peer --role bootstrap` (DHT + relay)
  pub0     public peer serving iris and identity          (the baseline: no NAT)
  pub1     public caller                                  (baseline client)
  n1       behind a cone NAT, serving iris and identity   (hole punching works)
  n2       behind a symmetric NAT, serving them too       (hole punching fails)
  n0       behind a cone NAT: the caller measured

Figures, all from n0 unless said otherwise:

  first call      a fresh peer process in n0: spawn -> ready (Peer started, joined,
                  relay slot reserved) -> first successful call of n1's iris found
                  through the DHT (5 fresh processes)
  latency         iris calls on an open stream (p50/p90 of 200): to n2 (relayed), to n1
                  (direct after hole punching), and pub1 -> pub0 (no NAT, baseline)
  throughput      identity model, 4 MiB float32 tensor out and back, 5 rounds; MB/s of
                  request + reply bytes, same three paths
  hole punching   ``--tries`` fresh caller processes in n0, each calling n1 and waiting
                  up to 10 s for a direct connection: successes and time to direct;
                  5 more towards n2 behind the symmetric NAT

Writes <out>/nat.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info


def load_harness() -> Any:
    path = REPO_ROOT / "tests" / "netns" / "harness.py"
    spec = importlib.util.spec_from_file_location("netns_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["netns_harness"] = module
    spec.loader.exec_module(module)
    return module


def ensure_models(models_dir: Path) -> dict[str, Path]:
    paths = {name: models_dir / f"{name}.onnx" for name in ("iris", "identity")}
    if not all(p.is_file() for p in paths.values()):
        path = REPO_ROOT / "scripts" / "build_models.py"
        spec = importlib.util.spec_from_file_location("build_models", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build_all(models_dir)
    return paths


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": values[int(0.9 * (len(values) - 1))],
        "min": values[0],
        "max": values[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--tries", type=int, default=20, help="hole-punch tries (cone NATs)")
    parser.add_argument("--quick", action="store_true", help="3 tries, fewer samples")
    args = parser.parse_args()
    harness = load_harness()
    tries = 3 if args.quick else args.tries
    samples = 50 if args.quick else 200
    started = time.monotonic()
    machine = machine_info("numpy")
    models = ensure_models(args.models)
    topo = harness.Topology.create(("cone", "cone", "symmetric"), public=2)
    procs: list[Any] = []
    report: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="p2pnet-bench-nat-") as tmp:
            boot, boot_addr = harness.start_bootstrap(topo.boot, tmp)
            procs.append(boot)

            ports = iter(range(4001, 5000))

            def agent(node: Any, *extra: str) -> tuple[Any, dict[str, Any]]:
                if os.environ.get("P2PNET_BENCH_VERBOSE"):
                    extra = (*extra, "-v")
                # A new port for every peer: a stopped peer's connections linger in
                # TIME_WAIT, and a fixed port that is still bound is refused.
                listen = f"/ip4/{node.ip}/tcp/{next(ports)}"
                proc, ready = harness.start_agent(
                    node, "--listen", listen, "--bootstrap", boot_addr, *extra
                )
                procs.append(proc)
                return proc, ready

            def server(node: Any, name: str) -> tuple[Any, dict[str, Any]]:
                return agent(
                    node,
                    "--serve", str(models["iris"]), "--task", f"iris-{name}",
                    "--serve", str(models["identity"]), "--task", f"echo-{name}",
                )  # fmt: skip

            server_procs = {
                "public": server(topo.public[0], "public"),
                "cone": server(topo.natted[1], "cone"),
                "symmetric": server(topo.natted[2], "symmetric"),
            }
            servers = {key: ready for key, (_, ready) in server_procs.items()}
            report["first_call"] = first_calls(agent, topo.natted[0], 5)
            caller, _ = agent(topo.natted[0])
            baseline, _ = agent(topo.public[1])
            caller.request({"op": "call", "task": "iris-cone"})
            direct = caller.request(
                {"op": "wait_direct", "peer": servers["cone"]["peer_id"], "timeout": 15}, 30
            )
            paths = {
                "relayed": (caller, "symmetric"),
                "hole_punched": (caller, "cone"),
                "no_nat": (baseline, "public"),
            }
            report["direct_after_hole_punch"] = direct["direct"]
            latency: dict[str, Any] = {}
            throughput: dict[str, Any] = {}
            for key, (proc, name) in paths.items():
                rtt = proc.request({"op": "rtt", "task": f"iris-{name}", "n": samples}, 300)
                latency[key] = rtt
                tp = proc.request(
                    {"op": "throughput", "task": f"echo-{name}", "mib": 4, "n": 5}, 600
                )
                throughput[key] = tp
            report["latency_ms"] = latency
            report["throughput"] = throughput
            for proc in (caller, baseline):
                proc.stop()
            report["hole_punch_cone"] = hole_punches(
                agent,
                topo.natted[0],
                server_procs["cone"][0],
                servers["cone"]["peer_id"],
                "iris-cone",
                tries,
            )
            report["hole_punch_symmetric"] = hole_punches(
                agent,
                topo.natted[0],
                server_procs["symmetric"][0],
                servers["symmetric"]["peer_id"],
                "iris-symmetric",
                3 if args.quick else 5,
                timeout=6,
            )
    finally:
        for proc in procs:
            proc.stop()
        topo.close()
    report = {
        "benchmark": "nat",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "git": git_state(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **report,
        "load_average_at_end": list(os.getloadavg()),
        "seconds": time.monotonic() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nat.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'nat.json'} in {report['seconds']:.1f} s")


def first_calls(agent: Any, node: Any, count: int) -> dict[str, Any]:
    """Fresh peer processes behind the cone NAT: spawn -> ready -> first call to n1."""
    spawn_to_ready, ready_ms, call_ms, spawn_to_result, paths = [], [], [], [], []
    for _ in range(count):
        t0 = time.monotonic()
        proc, ready = agent(node)
        t1 = time.monotonic()
        result = proc.request({"op": "call", "task": "iris-cone"})
        t2 = time.monotonic()
        proc.stop()
        spawn_to_ready.append((t1 - t0) * 1000)
        ready_ms.append(ready["startup_ms"])
        call_ms.append(result["ms"])
        spawn_to_result.append((t2 - t0) * 1000)
        paths.append(result["path"])
    return {
        "spawn_to_ready_ms": summary(spawn_to_ready),
        "peer_start_ms": summary(ready_ms),
        "first_call_ms": summary(call_ms),
        "spawn_to_first_result_ms": summary(spawn_to_result),
        "first_call_paths": paths,
    }


def hole_punches(
    agent: Any,
    node: Any,
    target: Any,
    peer_id: str,
    task: str,
    tries: int,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Fresh callers: call ``task`` on ``peer_id``, wait up to ``timeout`` seconds for a
    direct connection. The target's agent (``target``), which starts the hole punch,
    says when it first saw the relayed connection and when the direct one."""
    times, outcomes = [], []
    for _ in range(tries):
        proc, ready = agent(node)
        call = proc.request({"op": "call", "task": task})
        assert call["peer"] == peer_id, call
        waited = proc.request(
            {"op": "wait_direct", "peer": peer_id, "timeout": timeout}, timeout + 20
        )
        seen = target.request({"op": "history", "peer": ready["peer_id"]})
        proc.stop()
        first = seen["paths"][0] if seen["paths"] else None
        outcome = {"first_path": first, "direct": waited["direct"], "server_view": seen}
        if waited["direct"] and first == "relayed" and "direct" in seen["paths"]:
            outcome["relayed_to_direct_ms"] = seen["ms"][seen["paths"].index("direct")]
            times.append(outcome["relayed_to_direct_ms"])
        outcomes.append(outcome)
    return {
        "tries": tries,
        "direct": sum(1 for o in outcomes if o["direct"]),
        "first_path_relayed": sum(1 for o in outcomes if o["first_path"] == "relayed"),
        "time_to_direct_ms": summary(times) if times else None,
        "outcomes": outcomes,
    }


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    fc = report["first_call"]
    table = Table(title="a fresh peer behind a cone NAT, to its first call", title_justify="left")
    for column in ("step", "p50 ms", "min ms", "max ms"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for key, label in (
        ("spawn_to_ready_ms", "process spawn -> ready (imports included)"),
        ("peer_start_ms", "  of which Peer start (join, AutoNAT asked, relay slot)"),
        ("first_call_ms", "first call (DHT find, describe, call)"),
        ("spawn_to_first_result_ms", "process spawn -> first result"),
    ):
        s = fc[key]
        table.add_row(label, f"{s['p50']:.0f}", f"{s['min']:.0f}", f"{s['max']:.0f}")
    console.print(table)
    table = Table(title="paths from a peer behind a cone NAT", title_justify="left")
    for column in ("path", "RTT p50 ms", "RTT p90 ms", "MB/s (4 MiB out + back)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for key, label in (
        ("relayed", "relayed (to a peer behind a symmetric NAT)"),
        ("hole_punched", "direct after hole punching (cone NAT to cone NAT)"),
        ("no_nat", "baseline: public peer to public peer, no NAT"),
    ):
        lat = report["latency_ms"][key]
        tp = report["throughput"][key]
        table.add_row(
            f"{label} [{lat['path']}]",
            f"{lat['p50_ms']:.2f}",
            f"{lat['p90_ms']:.2f}",
            f"{tp['mb_per_s']:.1f}",
        )
    console.print(table)
    table = Table(title="hole punching, fresh caller per try", title_justify="left")
    for column in ("towards", "direct", "first path relayed", "relayed -> direct p50 / max ms"):
        table.add_column(column, justify="left" if column == "towards" else "right")
    for key, label in (
        ("hole_punch_cone", "peer behind a cone NAT"),
        ("hole_punch_symmetric", "peer behind a symmetric NAT"),
    ):
        h = report[key]
        t = h["time_to_direct_ms"]
        table.add_row(
            label,
            f"{h['direct']}/{h['tries']}",
            f"{h['first_path_relayed']}/{h['tries']}",
            f"{t['p50']:.0f} / {t['max']:.0f}" if t else "-",
        )
    console.print(table)
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']} at start, "
        f"{report['load_average_at_end']} at end; {report['date']}; p2pnet at "
        f"{report['git']['commit']}{' (modified)' if report['git']['modified'] else ''}"
    )


if __name__ == "__main__":
    main()
