"""The trust workload (p2pnet/simulate/trust.py, simulations/liars.toml): the [trust]
section of a scenario, the stand-in models of honest, noisy and lying providers, and
small runs of real peers in virtual time: liars get marked, honest providers whose
results differ by float noise never are, and pipeline outputs are judged by what the
peers returned (with checks off, every run through a liar is wrong)."""

from __future__ import annotations

import pathlib
import tomllib
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from p2pnet.core.spot_check import DEFAULT_RATE, DEFAULT_TOLERANCE, compare_outputs
from p2pnet.simulate.report import render, write_plots
from p2pnet.simulate.runner import run_scenario
from p2pnet.simulate.scenario import (
    Scenario,
    ScenarioError,
    TrustLoad,
    load_scenario,
    parse_scenario,
)
from p2pnet.simulate.trust import (
    HONEST,
    LIAR,
    NOISY,
    honest_outputs,
    pipeline_outputs,
    provider_roles,
    stand_in,
)

SIMULATIONS = pathlib.Path(__file__).resolve().parent.parent / "simulations"
LIARS = SIMULATIONS / "liars.toml"


def small(**trust: Any) -> Scenario:
    """12 providers of 3 models (3 liars, two of them of model 0; 4 noisy honest), 2
    callers that check every call and 1 that checks none: a few seconds of wall time.
    With this seed, each caller's nearest providers of the pipeline's models include a
    liar: without checks, its pipelines run through one."""
    table = {
        "providers": 12,
        "models": 3,
        "liars": 0.25,
        "noisy": 0.5,
        "rate": 1.0,
        "unchecked": 1,
        "calls": 6,
        "pair_calls": 8,
        "pipelines_after": 4,
        "curve": [2, 4, 8],
        "pipeline_runs": 4,
        "trials": 3,
    } | trust
    data = {
        "name": "liars-small",
        "seed": 13,
        "duration": 0,
        "peers": {"count": 15},
        "network": {"latency_ms": {"dist": "lognormal", "median": 20, "sigma": 0.5}},
        "trust": table,
    }
    return parse_scenario(data, base_dir=SIMULATIONS)


def trust_run(scenario: Scenario) -> dict[str, Any]:
    (run,) = run_scenario(scenario, engine="memory", in_process=True)["runs"]
    trust: dict[str, Any] = run["trust"]
    return trust


# --- the scenario ------------------------------------------------------------------------


def test_the_shipped_scenario_measures_the_issue_at_the_product_default() -> None:
    scenario = load_scenario(LIARS)
    load = scenario.trust
    assert load is not None and scenario.incentives is None
    assert load.rate == DEFAULT_RATE == 0.05
    assert (load.providers, load.models, load.liars) == (50, 5, 0.1)
    assert 100 in load.curve and load.pipelines_after == 100 <= load.pair_calls
    assert scenario.peers == (load.providers + 10 + load.unchecked,)
    assert scenario.unsupported("memory") == []
    assert any("trust" in why for why in scenario.unsupported("libp2p"))


def test_a_trust_table_left_empty_takes_the_defaults() -> None:
    scenario = parse_scenario({"peers": {"count": 61}, "trust": {}})
    assert scenario.trust == TrustLoad()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trust": {"bogus": 1}}, r"unknown field\(s\) in trust: bogus"),
        ({"trust": {"rate": 1.5}}, "trust.rate = 1.5 is out of range"),
        ({"trust": {"liars": "some"}}, "trust.liars must be a number"),
        ({"trust": {"providers": 10, "models": 4}}, "leave a model fewer than 3 providers"),
        ({"trust": {"curve": [50, 25]}}, "increasing order"),
        ({"trust": {"curve": [300]}}, r"trust.curve\[0\] = 300 is out of range 1..200"),
        ({"trust": {"pipelines_after": 300}}, "trust.pipelines_after = 300 is out of range"),
        ({"trust": {"models": 1, "providers": 3}}, "the pipeline chains two models"),
        ({"peers": {"count": 55}}, "leave no checking caller"),
        ({"incentives": {}}, r"\[incentives\] or \[trust\], not both"),
    ],
)
def test_trust_mistakes_name_the_field(change: dict[str, Any], message: str) -> None:
    data = tomllib.loads(LIARS.read_text())
    for table, fields in change.items():
        data.setdefault(table, {}).update(fields)
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data, base_dir=SIMULATIONS)


# --- the stand-ins -----------------------------------------------------------------------


def test_noisy_results_agree_within_the_tolerance_and_lies_do_not() -> None:
    load = TrustLoad(providers=12, models=3, liars=0.25, noisy=0.5)
    roles = provider_roles(load, seed=7)
    assert list(roles.values()).count(LIAR) == 3 and list(roles.values()).count(NOISY) == 4
    x = np.random.default_rng(0).uniform(-2, 2, (5, 4)).astype(np.float32)
    honest = honest_outputs(0, x)
    got = {p: stand_in(load, 7, p, role).compute(x) for p, role in roles.items() if p % 3 == 0}
    assert sorted(roles[p] for p in got) == [HONEST, LIAR, LIAR, NOISY]
    for p, outputs in got.items():
        verdict = compare_outputs(outputs, honest, False, DEFAULT_TOLERANCE)
        assert verdict.agree == (roles[p] != LIAR), (p, roles[p], verdict.detail)
        if roles[p] == NOISY:  # off by float noise: not bitwise, yet within the tolerance
            assert outputs["y"].tobytes() != honest["y"].tobytes()
            assert 0 < verdict.max_rel_error < 1e-6
    lies = [outputs for p, outputs in got.items() if roles[p] == LIAR]
    for i, lie in enumerate(lies):  # every liar lies its own way
        for other in lies[i + 1 :]:
            assert not compare_outputs(lie, other, True, DEFAULT_TOLERANCE).agree
    chained = pipeline_outputs(x)["y"]
    assert np.array_equal(chained, honest_outputs(1, honest_outputs(0, x)["y"])["y"])


# --- runs --------------------------------------------------------------------------------


def test_liars_are_marked_noisy_honest_providers_never_and_pipelines_come_out_right() -> None:
    t = trust_run(small())
    assert t["liars_per_model"] == [2, 0, 1]
    assert t["liar_pairs"] == t["liar_pairs_found"] == 6  # 2 checking callers x 3 liars
    # Every call checked: a liar is marked on the first call it serves or check it joins.
    assert t["liar_pairs_marked"] == 6
    checks = t["checks"]
    assert checks["liars_marked_on_own_result"] + checks["liars_marked_as_checker"] == 6
    assert t["marked_after_calls"]["2"]["marked"] == 1.0
    # Twice more each, its mark forgotten: marked again on the first call it serves.
    trials = t["trials"]
    assert trials["trials"] == trials["marked"] == 12
    assert trials["marked_after_calls"]["2"] == 1.0 and trials["mean_calls_before_mark"] == 1
    assert trials["calls"] == trials["checks"] == 12
    assert t["targets"]["liars_marked"]["of"] == "trials"
    assert t["honest_marked"] == 0 and t["honest_marks"] == []
    assert checks["unresolved"] == 0 and checks["disagreed"] >= 6
    # Noisy results were compared within the tolerance and agreed, other ones bitwise.
    assert checks["comparisons"]["tolerance"] > 0 and checks["comparisons"]["bitwise"] > 0
    assert 0 < checks["agreeing_max_rel_error"] < 1e-6
    assert all(row["honest_marked"] == 0 for row in t["per_caller"])
    # Once marked, the liars are skipped: pipelines run through honest providers only.
    piped = t["pipelines"]["checking"]
    assert piped["runs"] == piped["completed"] == piped["correct"] == 8
    assert piped["through_a_liar"] == 0
    assert t["targets"]["honest_marked"]["ok"] and t["targets"]["pipelines_correct"]["ok"]
    assert t["targets"]["liars_marked"]["marked"] is None  # no curve point at 100 calls
    console = Console(record=True, width=160)
    render({"scenario": {"name": "liars-small"}, "engine": "memory", "seed": 13,
            "runs": [{"trust": t}]}, console)  # fmt: skip
    text = console.export_text()
    assert "liars marked: 6 of 6 pairs" in text and "honest providers marked: 0" in text
    assert "pipelines_correct: ok" in text and "liars_marked: FAILED" in text


def test_with_checks_off_every_pipeline_run_through_a_liar_is_wrong() -> None:
    """The same swarm as above, checks off: nobody is marked and the callers' pipelines
    run through the liars they find nearest; the outputs tell it, not the route."""
    t = trust_run(small(rate=0.0))
    assert t["liar_pairs_marked"] == 0 and t["checks"]["sampled"] == 0
    assert t["trials"]["marked"] == 0  # each further trial ran to pair_calls
    for group in ("checking", "unchecked"):
        piped = t["pipelines"][group]
        assert piped["completed"] == piped["runs"] > 0
        assert piped["through_a_liar"] > 0
        # Wrong exactly when a liar ran a step (noisy honest steps stay within tolerance).
        assert piped["correct"] == piped["runs"] - piped["through_a_liar"]
    assert not t["targets"]["pipelines_correct"]["ok"]
    assert t["finder"]["checking"]["wrong"] > 0 and t["honest_marked"] == 0


def test_the_plot_is_the_share_marked_against_calls_served(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("matplotlib")
    trust = {"calls_served_before_mark": [0, 3, 40], "liar_pairs": 4, "pair_calls": 50,
             "rate": 0.05}  # fmt: skip
    report = {"scenario": {"name": "liars"}, "engine": "memory", "runs": [{"trust": trust}]}
    (png,) = write_plots(report, tmp_path)
    assert png.name == "liars-memory-marked.png" and png.stat().st_size > 0


@pytest.mark.slow  # the small run twice
def test_the_same_seed_gives_the_same_figures() -> None:
    first = run_scenario(small(), engine="memory", in_process=True)["runs"][0]
    again = run_scenario(small(), engine="memory", in_process=True)["runs"][0]
    first.pop("resources"), again.pop("resources")
    assert first == again
