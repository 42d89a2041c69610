"""What importing p2pnet costs: each import in a fresh interpreter, against the interpreter's
own start-up measured in the same run (the baseline), and which heavy libraries it loads.

    python scripts/bench/imports.py [--runs 15] [--out build/bench]

Rows: ``python -c pass`` (baseline), then ``import <module>`` for the modules a user or a
tool starts from. A row's time is the median of ``--runs`` fresh processes, wall clock;
"loads" says which of py-libp2p, onnxruntime and trio the import pulled in. The target
(docs/benchmarks.md, "Imports"): ``import p2pnet.core.records`` under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, git_state, machine_info
from rich.console import Console
from rich.table import Table

MODULES = (
    "p2pnet",
    "p2pnet.core.records",
    "p2pnet.core",
    "p2pnet.net.memory",
    "p2pnet.peer",
    "p2pnet.net.host",
    "p2pnet.cli",
)
HEAVY = ("libp2p", "onnxruntime", "trio")
TARGET_S = 0.3  # import p2pnet.core.records


def _time(code: str, runs: int) -> tuple[float, float, float]:
    """min, median, max wall seconds of ``python -c code`` over ``runs`` processes."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
        samples.append(time.perf_counter() - started)
    return min(samples), statistics.median(samples), max(samples)


def _loads(module: str) -> list[str]:
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="processes per row (default 15)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    args = parser.parse_args()
    rows = [{"import": "(python -c pass)", "loads": [], **_row(_time("pass", args.runs))}]
    for module in MODULES:
        times = _time(f"import {module}", args.runs)
        rows.append({"import": module, "loads": _loads(module), **_row(times)})
    baseline = rows[0]["median_s"]
    for row in rows:
        row["over_baseline_s"] = round(row["median_s"] - baseline, 4)
    records = next(r for r in rows if r["import"] == "p2pnet.core.records")
    result = {
        "benchmark": "imports",
        "runs": args.runs,
        "rows": rows,
        "target_s": TARGET_S,
        "core_records_met": records["median_s"] < TARGET_S,
        "machine": machine_info(),
        "git": git_state(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "imports.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"import times, median of {args.runs} fresh processes")
    for column in ("import", "min s", "median s", "max s", "over baseline s", "loads"):
        table.add_column(column, justify="left" if column in ("import", "loads") else "right")
    for row in rows:
        table.add_row(
            row["import"],
            f"{row['min_s']:.3f}",
            f"{row['median_s']:.3f}",
            f"{row['max_s']:.3f}",
            f"{row['over_baseline_s']:+.3f}",
            ", ".join(row["loads"]) or "-",
        )
    console = Console(width=110)
    console.print(table)
    verdict = "met" if result["core_records_met"] else "NOT met"
    console.print(f"target: import p2pnet.core.records < {TARGET_S} s: {verdict}")
    load = result["machine"].get("load_average_at_start")
    console.print(f"load average at start {load}; written to {path}")


def _row(times: tuple[float, float, float]) -> dict[str, float]:
    low, median, high = times
    return {"min_s": round(low, 4), "median_s": round(median, 4), "max_s": round(high, 4)}


if __name__ == "__main__":
    main()
