"""Wall time of ``p2pnet find`` and ``p2pnet call`` next to a running peer: through its
local API (the command's identity is the running peer's) and one-shot (another identity,
a peer of the command's own that joins the swarm), as a user runs them: a new Python
process each time. Two peers on 127.0.0.1: a provider of iris (task iris-species) and the
running peer, joined to it, serving its API on a free port. docs/benchmarks.md, "CLI
against a running peer".

    python scripts/bench/cli_api.py [--runs 5] [--model build/models/iris.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, machine_info

IRIS = ("-i", "x=[[5.1,3.5,1.4,0.2]]")


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``p2pnet peer`` with ``args``, and its lines up to "ready"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pnet.cli", "peer", "--listen", "/ip4/127.0.0.1/tcp/0", *args],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("ready"):
            return proc, lines
    raise SystemExit(f"peer exited {proc.wait()}: {lines}")


def wall_ms(env: dict[str, str], args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "p2pnet.cli", *args], capture_output=True, text=True, env=env
        )
        times.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=Path("build/models/iris.onnx"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        provider_env = base | {"XDG_CONFIG_HOME": f"{tmp}/provider"}
        env = base | {"XDG_CONFIG_HOME": f"{tmp}/me"}
        provider, lines = start(
            provider_env, "--http", "off", "--serve", str(args.model), "--task", "iris-species"
        )
        address = next(line.split()[1] for line in lines if line.startswith("listening"))
        running, _ = start(env, "--http", "127.0.0.1:0", "--bootstrap", address)
        other = ["--identity", f"{tmp}/other.key", "--bootstrap", address]
        cases = {
            "find, through the API": ["find", "--task", "iris-species", "--json"],
            "find, one-shot": ["find", "--task", "iris-species", "--json", *other],
            "call, through the API": ["call", "--task", "iris-species", *IRIS, "--json"],
            "call, one-shot": ["call", "--task", "iris-species", *IRIS, "--json", *other],
            "p2pnet --version": ["--version"],
        }
        results = {}
        try:
            for name, case in cases.items():
                times = wall_ms(env, case, args.runs)
                results[name] = {
                    "p50_ms": round(statistics.median(times)),
                    "min_ms": round(min(times)),
                    "max_ms": round(max(times)),
                }
                shown = results[name]
                print(
                    f"{name:24} p50 {shown['p50_ms']:5d} ms  "
                    f"(min {shown['min_ms']}, max {shown['max_ms']})"
                )
        finally:
            for proc in (running, provider):
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
    report = {"runs": args.runs, "results": results, "machine": machine_info(), **git_state()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
