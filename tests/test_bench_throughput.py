"""scripts/bench/throughput.py: a --quick run writes every figure, batching off and on."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "bench" / "throughput.py"


@pytest.mark.slow
def test_quick_run_writes_every_figure(
    tmp_path: pathlib.Path, models: dict[str, pathlib.Path]
) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", str(models["digits"].parent),
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "throughput.json").read_text())
    digits = report["peer"]["digits"]
    for mode in ("off", "on"):
        assert sorted(digits[mode]) == ["1", "8"]
        for cell in digits[mode].values():
            for key in ("calls_per_s", "p50_ms", "p99_ms"):
                assert math.isfinite(cell[key]) and cell[key] > 0, (mode, key)
            assert cell["p50_ms"] <= cell["p99_ms"]
            assert math.isfinite(cell["cpu_ms_per_call"]) and cell["cpu_ms_per_call"] > 0
    # Batching on: the provider's own counters say how many rows its batches held.
    assert all(cell["rows_per_batch"] >= 1 for cell in digits["on"].values())
    assert report["local"]["digits"]["on_calls_per_s"] > 0
    # What a call costs by part, and the most batching could gain at that cost.
    parts = report["components"]
    assert 0 < parts["model_run_ms"] < parts["cpu_off_ms"]
    assert parts["codec_ms"] > 0 and parts["bound"] > 1
    assert report["load_at_start"] and report["machine"]["cpu_count"]
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
