"""scripts/bench/generate.py: a --quick run writes every figure with its baseline, the
network reply is the local one token for token, and the counts add up."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench" / "generate.py"


def positive(value: Any, name: str) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool), name
    assert math.isfinite(value) and value > 0, f"{name} = {value}"


def positive_spread(spread: dict[str, Any], name: str, n: int) -> None:
    assert spread["n"] == n, name
    for key in ("median", "min", "max"):
        positive(spread[key], f"{name}.{key}")
    assert spread["min"] <= spread["median"] <= spread["max"], name


@pytest.mark.slow
def test_quick_run_writes_figures_with_their_baselines(
    dialogue_models: dict[str, Path], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--model", str(dialogue_models["smollm2-chat"]),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "generate.json").read_text())
    plan = report["plan"]
    reps, max_tokens = plan["reps"], plan["max_tokens"]
    assert report["quick"] is True and report["network"] == "127.0.0.1 only"

    # Streaming: the local baseline and the network, the same greedy tokens.
    s = report["streaming"]
    for kind in ("local", "local_here", "network"):
        run = s[kind]
        positive_spread(run["ttft_ms"], f"{kind}.ttft_ms", reps)
        positive_spread(run["decode_tok_s"], f"{kind}.decode_tok_s", reps)
        assert len(run["tokens"]) == reps and all(1 < t <= max_tokens for t in run["tokens"])
        assert all(f in ("length", "eos", "stop") for f in run["finish"])
        assert 0 < run["gap_p50_ms"] <= run["gap_p95_ms"]
        assert len(run["cpu_ms_per_token"]) == 2 and min(run["cpu_ms_per_token"]) >= 0
    assert s["same_tokens"] is True
    assert s["local"]["tokens"] == s["local_here"]["tokens"] == s["network"]["tokens"]
    positive_spread(s["peer_generate"]["ttft_ms"], "peer_generate.ttft_ms", plan["peer_reps"])
    for kind in ("local_ms", "local_here_ms", "network_ms"):
        positive_spread(s["ttft"][kind], f"ttft.{kind}", plan["ttft_reps"])
    tr = s["transport"]
    n_network = reps + plan["ttft_reps"]  # traced by the provider: every network run
    for key in ("request_ms", "first_chunk_ms", "provider_ttft_ms"):
        positive_spread(tr[key], f"transport.{key}", n_network)
    positive_spread(tr["provider_decode_tok_s"], "provider_decode_tok_s", reps)
    assert 0 < tr["chunk_p50_ms"] <= tr["chunk_p95_ms"]
    for kind in ("local", "network"):  # the provider's decoding loop, in parts
        loop = s["loop"][kind]
        assert 0 < loop["step_p50_ms"] < loop["gap_p50_ms"]
        assert 0 < loop["emit_p50_ms"] <= loop["emit_p95_ms"]
        shares = [loop[f"{part}_share"] for part in ("step", "emit", "rest")]
        assert all(0 < share < 1 for share in shares[:2])
        assert sum(shares) == pytest.approx(1)
    parts = s["first_token"]
    for kind in ("local", "network"):
        for part in ("to_step_ms", "prefill_ms", "to_emit_ms"):
            positive(parts[kind][part], f"first_token.{kind}.{part}")
    assert tr["ttft_added_ms"] == pytest.approx(
        tr["request_ms"]["median"]
        + tr["first_chunk_ms"]["median"]
        + sum(parts["network"][k] - parts["local"][k] for k in ("to_step_ms", "to_emit_ms"))
    )
    for key in ("tokens_ratio", "paired_tokens_ratio"):
        positive(s[key], key)
    expected = s["network"]["decode_tok_s"]["median"] / s["local"]["decode_tok_s"]["median"]
    assert s["tokens_ratio"] == pytest.approx(expected)

    # Session: the second turn feeds only the new tokens; the replay feeds them all.
    t = report["session"]
    n = plan["session_reps"]
    for kind in ("session", "replay"):
        positive_spread(t[kind]["ttft_ms"], f"{kind}.ttft_ms", n)
        assert len(t[kind]["prompt_tokens"]) == n
    assert t["replay"]["cached_tokens"] == [0] * n
    for cached, fed, replayed, first in zip(
        t["session"]["cached_tokens"],
        t["session"]["prompt_tokens"],
        t["replay"]["prompt_tokens"],
        t["first_turn_tokens"],
        strict=True,
    ):
        # the first turn's prompt and reply (its last token waits for the next turn)
        assert first - 1 <= cached <= first
        assert 0 < fed < replayed

    # Concurrency: the main setting first, then the others; each with one session alone.
    runs = report["concurrency"]
    settings = [(r["max_concurrency"], r["threads"]) for r in runs]
    assert settings[0] == (plan["max_concurrency"], plan["threads"])
    assert len(set(settings)) == len(settings) == 1 + plan["other_settings"] >= 2
    rounds = plan["concurrency_rounds"]
    for run in runs:
        assert run["rounds"] == len(run["runs"]) == rounds
        alone, together = run["alone"], run["concurrent"]
        for key in ("ttft_ms", "decode_tok_s", "tok_s"):
            positive_spread(alone[key], f"alone.{key}", rounds)
        assert together["sessions"] == plan["sessions"] == 8
        positive_spread(together["aggregate_tok_s"], "aggregate_tok_s", rounds)
        positive_spread(together["per_session_decode_tok_s"], "per_session", 8 * rounds)
        ttft = together["ttft_ms"]
        assert ttft["n"] == 8 * rounds and 0 < ttft["min"] <= ttft["p50"] <= ttft["max"]
        for raw, tokens, wall in zip(
            run["runs"], together["tokens"], together["wall_s"], strict=True
        ):
            per_session = raw["concurrent"]["tokens_per_session"]
            assert len(per_session) == 8 and sum(per_session) == tokens
            assert all(0 < t <= plan["concurrent_tokens"] for t in per_session)
            assert raw["concurrent"]["wall_s"] == wall > 0
    best = report["best_config"]
    assert {(b["max_concurrency"], b["threads"]) for b in best.values()} <= set(settings)

    names = {t["name"] for t in report["targets"]}
    assert len(names) == 4 and all(isinstance(t["pass"], bool) for t in report["targets"])
    assert report["machine"]["onnxruntime"] and report["git"]["commit"]
