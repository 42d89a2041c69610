"""scripts/bench/hostile.py: a --quick run writes every figure of every attack with its
baseline, the hostile messages get the error replies the limits give, and the targets are
judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench" / "hostile.py"

EXPECTED_CODES = {
    "string_2e28": ["payload_too_large"],
    "model_300k": ["invalid_model_id"],
    "nested_100k": ["protocol_error"],
    "strings_65536": ["invalid_input"],  # within the limits: iris refuses strings
}


@pytest.mark.slow
def test_quick_run_writes_every_figure(models: dict[str, Path], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", str(models["iris"].parent),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "hostile.json").read_text())
    assert report["quick"] is True and report["machine"]["cpu_count"] and report["git"]

    wire = report["wire"]
    assert 0 < wire["baseline"]["p50_ms"] <= wire["baseline"]["p95_ms"]
    assert set(wire["attacks"]) == set(EXPECTED_CODES)
    for name, attack in wire["attacks"].items():
        assert attack["reply_codes"] == EXPECTED_CODES[name], (name, attack)
        assert 0 < attack["reply_chars"] < 1100, name  # nothing echoed whole
        assert attack["rounds"] >= report["plan"]["min_rounds"], name
        assert attack["honest"]["n"] >= report["plan"]["during"], name
        assert 0 < attack["reply_ms_p50"] <= attack["reply_ms_max"], name
        assert attack["rss_peak_mib"] >= attack["rss_before_mib"] > 0, name
    assert wire["attacks"]["string_2e28"]["message_bytes"] <= 128

    streams = report["streams"]
    assert streams["opened"] == streams["limit_per_peer"] + report["plan"]["extra_streams"]
    assert streams["refused_by_server"] == report["plan"]["extra_streams"]
    assert streams["honest"]["n"] > 0 and streams["baseline"]["n"] > 0

    providers = report["providers"]
    stalled = providers["stalled"]
    assert stalled["answered_by"] == "honest"
    assert stalled["stalled_error"] == "deadline_exceeded"
    # The first attempt gets half the budget: the result comes after it, within the budget.
    assert stalled["budget_s"] / 2 <= stalled["result_s"] <= stalled["budget_s"]
    silent = providers["silent"]
    assert silent["unanswered_names_it"] is True
    assert silent["search_s"] >= silent["describe_timeout_s"]
    assert silent["call_ms"] > 0 and silent["call_baseline_ms"] > 0
    dead = providers["dead"]
    assert dead["calls"] > 0 and dead["baseline_calls"] > 0
    assert dead["dead_provider_tried"] >= 1

    names = {t["name"] for t in report["targets"]}
    assert len(names) == 2 * len(EXPECTED_CODES) + 2
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
