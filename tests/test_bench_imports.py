"""scripts/bench/imports.py runs and writes every figure, with its baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # fresh Python processes
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/bench/imports.py", "--runs", "1", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "imports.json").read_text())
    rows = {row["import"]: row for row in result["rows"]}
    assert rows["(python -c pass)"]["over_baseline_s"] == 0
    assert rows["p2pnet.core.records"]["loads"] == []
    assert "libp2p" in rows["p2pnet.net.host"]["loads"]
    assert "libp2p" not in rows["p2pnet.peer"]["loads"]
    assert isinstance(result["core_records_met"], bool)
