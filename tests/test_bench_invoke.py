"""scripts/bench/invoke.py: a --quick run writes every figure as a positive number."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "bench" / "invoke.py"

FIGURES = (
    [
        f"{name}_{q}_ms"
        for name in (
            "local",
            "local_async",
            "local_thread",
            "warm",
            "warm_same_process",
            "cold",
            "cold_dial_stream",
            "cold_new_stream_call",
            "floor_warm",
            "floor_cold",
        )
        for q in ("p50", "p95")
    ]
    + [f"{kind}_{mib}mib_mb_s" for kind in ("p2pnet", "floor") for mib in (1, 16, 64)]
    + ["warm_overhead_p50_ms"]
)


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--models",
            str(tmp_path / "models"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=85,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "invoke.json").read_text())

    figures = report["figures"]
    missing = [name for name in FIGURES if name not in figures]
    assert not missing, f"figures missing from invoke.json: {missing}"
    for name, value in figures.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
        assert math.isfinite(value) and value > 0, f"{name} = {value}"
    assert figures["local_p50_ms"] <= figures["local_p95_ms"]
    assert figures["warm_p50_ms"] <= figures["warm_p95_ms"]

    machine = report["machine"]
    for key in ("cpu_count", "python", "libp2p", "onnxruntime"):
        assert machine[key], key
    assert report["date"]
    assert {t["name"] for t in report["targets"]} and all(
        isinstance(t["pass"], bool) for t in report["targets"]
    )
