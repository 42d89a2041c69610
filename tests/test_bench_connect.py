"""scripts/bench/connect.py runs every mode and writes every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # Python processes, real hosts on 127.0.0.1
@pytest.mark.network
def test_a_short_run_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "scripts/bench/connect.py",
            "--connections",
            "3",
            "--rounds",
            "1",
            "--settle",
            "0.01",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "connect.json").read_text())
    for mode in ("p2pnet", "upstream_select", "upstream_reads"):
        figures = result["modes"][mode]
        both = figures["both_sides_ms"]
        assert 0 < both["request"] < both["new_stream"] < both["connection"]
        for side in ("client", "server"):
            assert figures["stages_median_ms"][side]["connect"] > 0
    assert set(result["saves_ms"]) == {"upstream_select", "upstream_reads"}
    assert set(result["saves_ms"]["upstream_reads"]) == {"connection", "new_stream", "request"}
    assert result["load_before"] and result["code"]["commit"]
