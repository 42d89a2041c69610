"""Wall time of ``p2pnet find`` and ``p2pnet call`` next to a running peer: through its
local API (the command's identity is the running peer's) and one-shot (another identity,
a peer of the command's own that joins the swarm), as a user runs them: a new Python
process each time. Two peers on 127.0.0.1: a provider of iris (task iris-species) and the
running peer, joined to it, serving its API on a free port. docs/benchmarks.md, "CLI
against a running peer".

Each case runs once unmeasured first, so that Python's bytecode of p2pnet is cached as in
an installed copy (and the running peer's first search is not counted): the targets
apply to that case. ``find`` and ``call`` through the API are measured a second way too,
"p2pnet not compiled": a copy of the p2pnet package without bytecode, run with
PYTHONDONTWRITEBYTECODE=1, so that p2pnet's own modules are compiled in every run (the
libraries keep their cached bytecode), as in an environment that sets it over a source
checkout. Each result says which (``bytecode``), and gives the median CPU time (user and
system) of the command's process next to its wall time: other load on the machine changes
it less. Also measured in the same run: the
interpreter's own start (``python -c pass``), ``--version`` and ``--help``, and where a
``find`` and a ``call`` through the API spend their imports (``-X importtime``, each
module's own time added up by package). Target: ``find`` and ``call`` through the API
within TARGET_MS at the median.

    python scripts/bench/cli_api.py [--runs 5] [--model build/models/iris.onnx]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info, targets_table

IRIS = ("-i", "x=[[5.1,3.5,1.4,0.2]]")
# The goal of `p2pnet find` and `p2pnet call` through a running peer's API: median wall
# time of the whole command, process start included, with p2pnet's bytecode cached.
TARGET_MS = 300
CACHED = "cached"
NOT_COMPILED = "p2pnet compiled in every run (PYTHONDONTWRITEBYTECODE=1, no __pycache__)"


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


def wall_ms(
    env: dict[str, str], args: list[str], runs: int, cwd: str | None = None
) -> tuple[list[float], list[float]]:
    """Wall time and CPU time (user and system: less changed by other load on the machine
    than wall time) of ``runs`` processes of ``python -m p2pnet.cli args`` (``args``
    starting with "-c": of ``python args``), in the directory ``cwd`` (default: this
    one), which comes first in their ``sys.path``."""
    command = (
        [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "p2pnet.cli", *args]
    )
    times, cpu = [], []
    for _ in range(runs + 1):  # the first one warms the caches (bytecode, files)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
        times.append((time.perf_counter() - started) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        cpu.append(used * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr}")
    return times[1:], cpu[1:]


def import_ms(env: dict[str, str], args: list[str], top: int = 14) -> dict[str, Any]:
    """Where ``p2pnet args`` spends its imports: ``-X importtime``'s own time of each
    module, added up by package (p2pnet's by subpackage), the ``top`` largest first, and
    the total (importtime's own bookkeeping makes it somewhat higher than without)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "p2pnet.cli", *args],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    by_package: collections.Counter[str] = collections.Counter()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = (part.strip() for part in line[len("import time:") :].split("|"))
        parts = name.split(".")
        package = ".".join(parts[:2]) if parts[0] == "p2pnet" and len(parts) > 1 else parts[0]
        by_package[package] += int(own)
    return {
        "total_ms": round(sum(by_package.values()) / 1000),
        "packages_ms": {k: round(v / 1000, 1) for k, v in by_package.most_common(top)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=Path("build/models/iris.onnx"))
    parser.add_argument("--out", type=Path, default=None, help="also write cli_api.json here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # As a user's installed p2pnet runs: with its bytecode cached (the first,
        # unmeasured run of each case writes it if PYTHONDONTWRITEBYTECODE kept it from
        # being written before).
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in ("XDG_RUNTIME_DIR", "PYTHONDONTWRITEBYTECODE")
        }
        provider_env = base | {"XDG_CONFIG_HOME": f"{tmp}/provider"}
        env = base | {"XDG_CONFIG_HOME": f"{tmp}/me"}
        # The same p2pnet as a copy without bytecode, kept from writing any; its commands
        # run in the copy's directory, so that it is the p2pnet they import.
        source = f"{tmp}/src"
        shutil.copytree(
            REPO_ROOT / "p2pnet", f"{source}/p2pnet", ignore=shutil.ignore_patterns("__pycache__")
        )
        path = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        uncompiled_env = env | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path}
        provider, lines = start(
            provider_env, "--http", "off", "--serve", str(args.model), "--task", "iris-species"
        )
        address = next(line.split()[1] for line in lines if line.startswith("listening"))
        running, _ = start(env, "--http", "127.0.0.1:0", "--bootstrap", address)
        other = ["--identity", f"{tmp}/other.key", "--bootstrap", address]
        find = ["find", "--task", "iris-species", "--json"]
        call = ["call", "--task", "iris-species", *IRIS, "--json"]
        # Through the API first: a one-shot command's peer joins the running peer's swarm
        # and is gone when it ends, and later searches would ask it in vain.
        cases = {
            "find, through the API": (find, env),
            "call, through the API": (call, env),
            "find, through the API, p2pnet not compiled": (find, uncompiled_env),
            "call, through the API, p2pnet not compiled": (call, uncompiled_env),
            "find, one-shot": ([*find, *other], env),
            "call, one-shot": ([*call, *other], env),
            "p2pnet --version": (["--version"], env),
            "p2pnet --help": (["--help"], env),
            "python -c pass": (["-c", "pass"], env),
        }
        results: dict[str, dict[str, Any]] = {}
        load_at_start = os.getloadavg()
        try:
            for name, (case, case_env) in cases.items():
                uncompiled = case_env is uncompiled_env
                times, cpu = wall_ms(case_env, case, args.runs, source if uncompiled else None)
                results[name] = {
                    "p50_ms": round(statistics.median(times)),
                    "min_ms": round(min(times)),
                    "max_ms": round(max(times)),
                    "cpu_p50_ms": round(statistics.median(cpu)),
                    "bytecode": NOT_COMPILED if uncompiled else CACHED,
                }
                shown = results[name]
                print(
                    f"{name:44} p50 {shown['p50_ms']:5d} ms  "
                    f"(min {shown['min_ms']}, max {shown['max_ms']}), "
                    f"CPU p50 {shown['cpu_p50_ms']} ms"
                )
            imports = {"find": import_ms(env, find), "call": import_ms(env, call)}
        finally:
            for proc in (running, provider):
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
    targets = [
        {
            "name": f"{name} (p50)",
            "value": results[name]["p50_ms"],
            "target": TARGET_MS,
            "unit": "ms",
            "pass": results[name]["p50_ms"] <= TARGET_MS,
        }
        for name in ("find, through the API", "call, through the API")
    ]
    report = {
        "runs": args.runs,
        "results": results,
        "imports_through_the_api": imports,
        "targets": targets,
        "load_at_start": [round(x, 2) for x in load_at_start],
        "load_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
        **git_state(),
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cli_api.json").write_text(json.dumps(report, indent=2) + "\n")
    console = Console()
    for command, spent in imports.items():
        console.print(
            f"imports of {command} through the API: {spent['total_ms']} ms under -X "
            "importtime; " + ", ".join(f"{k} {v:g}" for k, v in spent["packages_ms"].items())
        )
    console.print(f"load average at the start {load_at_start[0]:.2f}, at the end "
                  f"{report['load_at_end'][0]:.2f}")  # fmt: skip
    console.print(targets_table(targets, lambda v: f"{v:.0f}"))


if __name__ == "__main__":
    main()
