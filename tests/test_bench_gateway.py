"""scripts/bench/gateway.py: a --quick run writes every figure, and every path's answers
were checked against the model's."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "bench" / "gateway.py"
PATHS = ("peer_call", "http", "grpc")


@pytest.mark.slow
@pytest.mark.network
def test_quick_run_writes_every_figure(tmp_path: pathlib.Path, models: dict[str, Any]) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--models",
            str(models["iris"].parent),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gateway.json").read_text())
    figures = report["figures"]
    wanted = [f"{m}_{p}_{q}_ms" for m in ("iris", "bulk") for p in PATHS for q in ("p50", "p90")]
    wanted += [f"live_{p}_{q}_ms" for p in ("http", "grpc") for q in ("p50", "p90")]
    missing = [name for name in wanted if name not in figures]
    assert not missing, f"figures missing from gateway.json: {missing}"
    for name in wanted:
        assert math.isfinite(figures[name]) and figures[name] > 0, f"{name} = {figures[name]}"
    for model in ("iris", "bulk"):
        for path in ("http", "grpc"):
            added = figures[f"{model}_{path}_p50_ms"] - figures[f"{model}_peer_call_p50_ms"]
            assert figures[f"{model}_{path}_overhead_p50_ms"] == pytest.approx(added)
    assert report["samples"]["iris_grpc"] == report["samples"]["iris_peer_call"] > 0
    assert [t["name"] for t in report["targets"]] == [
        "http gateway overhead on iris, p50",
        "grpc gateway overhead on iris, p50",
    ]
