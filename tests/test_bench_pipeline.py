"""scripts/bench/pipeline.py: a --quick run writes every figure, and every pipeline
result equals the floor's (the same models run in one process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_writes_figures_and_matches_the_floor(
    cs_models: dict[str, Path], tmp_path: Path
) -> None:
    models_dir = cs_models["emotion"].parent
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench" / "pipeline.py"), "--quick",
         "--models", str(models_dir), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert report["runs"] == 20
    for key in ("floor", "orchestrated", "forwarded"):
        assert 0 < report[key]["p50_ms"] <= report[key]["p95_ms"]
    for mode in ("orchestrated", "forwarded"):
        assert report[mode]["mismatches_vs_floor"] == 0
        assert report[mode]["vs_floor_p50"] == report[mode]["p50_ms"] / report["floor"]["p50_ms"]
        assert report[mode]["cpu_ms_per_run"] > 0
        assert report[f"synthetic_{mode}"]["correct"] is True
        assert report[f"diamond_{mode}"]["correct"] is True
    assert report["distinct_step_peers"] == 4
    assert report["peer_exit_codes"] == [0, 0, 0, 0]
