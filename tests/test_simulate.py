"""Simulations (p2pnet.simulate): scenario files, both engines on the smoke scenario, the
memory engine's determinism, and adversaries whose forged records are never accepted."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import tomllib
from typing import Any

import numpy as np
import pytest
import trio

from p2pnet.cli import main as cli_main
from p2pnet.core.address import PeerAddress
from p2pnet.core.address_filter import ip_group
from p2pnet.core.kad.keys import PeerInfo
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.served import usable_cpus
from p2pnet.simulate.adversaries import grind_peer_ids
from p2pnet.simulate.groups import PeerGroups
from p2pnet.simulate.libp2p_engine import _locate_moved, _run_joins, _tell_moved
from p2pnet.simulate.metrics import ChurnRecord, QueryRecord, percentile, summarize
from p2pnet.simulate.plan import make_plan
from p2pnet.simulate.report import PlotsUnavailableError, write_plots
from p2pnet.simulate.runner import run_scenario
from p2pnet.simulate.scenario import ScenarioError, load_scenario, parse_scenario
from p2pnet.simulate.standins import expected_outputs, stand_in_schema
from p2pnet.simulate.swarm import SimSwarm

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SIMULATIONS = REPO_ROOT / "simulations"
SMOKE = SIMULATIONS / "smoke.toml"


def _without_wall_figures(run: dict[str, Any]) -> dict[str, Any]:
    """A run's result minus what depends on the machine (wall time, memory)."""
    run = json.loads(json.dumps(run))
    run.pop("resources")
    for key in ("wall_s", "cpu_s_per_join"):
        run["bootstrap"].pop(key)
    return run


def test_every_shipped_scenario_parses() -> None:
    names = set()
    for path in sorted(SIMULATIONS.glob("*.toml")):
        scenario = load_scenario(path)
        names.add(scenario.name)
        assert scenario.unsupported("memory") == [], path
        plan = make_plan(scenario, min(scenario.peers))
        assert plan.events or scenario.duration == 0
    assert {"smoke", "scale", "churn", "adversarial"} <= names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peers": {"count": 1}}, "peers.count = 1 is out of range"),
        ({"peers": {"cout": 10}}, "unknown field(s) in peers: cout"),
        ({"network": {"latency_ms": {"dist": "pareto"}}}, "network.latency_ms.dist must be"),
        ({"network": {"latency_ms": {"dist": "uniform", "low": 5}}}, "latency_ms.high is missing"),
        ({"network": {"loss": 0.9}}, "network.loss = 0.9 is out of range"),
        ({"workload": {"tasks": {"Bad Task": 1}}}, "is not a task tag"),
        ({"nat": {"public": 0.5}}, "must add up to 1"),
        ({"adversaries": {"sybils": 3, "sybil_target": "nope"}}, "is not one of the workload"),
        ({"adversaries": {"sybil_placement": "clever"}}, "fixed or adaptive"),
        ({"workload": {"density_probes": 2}}, "workload.density_probes"),
        ({"churn": {"crash_fraction": "most"}}, "churn.crash_fraction must be a number"),
    ],
)
def test_scenario_mistakes_name_the_field(change: dict[str, Any], message: str) -> None:
    data = tomllib.loads(SMOKE.read_text())
    for table, fields in change.items():
        data.setdefault(table, {}).update(fields)
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_scenario(data, base_dir=SIMULATIONS)


def test_libp2p_engine_limits_are_refused_with_a_reason() -> None:
    data = tomllib.loads(SMOKE.read_text())
    data["nat"] = {"public": 0.3, "cone": 0.5, "symmetric": 0.2}
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    assert scenario.unsupported("memory") == []
    with pytest.raises(ScenarioError, match="nothing is behind a NAT"):
        run_scenario(scenario, engine="libp2p")
    lossy = parse_scenario(
        {**tomllib.loads(SMOKE.read_text()), "network": {"loss": 0.01}}, base_dir=SIMULATIONS
    )
    assert lossy.unsupported("libp2p") == []
    assert any("loss" in note for note in lossy.notes("libp2p")) and not lossy.notes("memory")
    sybils = parse_scenario(
        {**tomllib.loads(SMOKE.read_text()), "adversaries": {"sybils": 2}}, base_dir=SIMULATIONS
    )
    with pytest.raises(ScenarioError, match="cannot grind real key pairs"):
        run_scenario(sybils, engine="libp2p")


@pytest.mark.parametrize("dht_client", [False, True])
@pytest.mark.slow
def test_nat_mix_relays_punches_holes_and_client_mode_keeps_lookups_working(
    dht_client: bool,
) -> None:
    data = tomllib.loads(SMOKE.read_text())
    data["nat"] = {"public": 0.3, "cone": 0.5, "symmetric": 0.2, "dht_client": dht_client}
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    plan = make_plan(scenario, 40)
    assert plan.relays == [0, 1, 2] and not set(plan.relays) & set(plan.nat)
    assert all(plan.via[p] in plan.relays for p in plan.via)  # everyone joins through them
    (run,) = run_scenario(scenario, engine="memory", in_process=True)["runs"]
    nat, summary = run["nat"], run["metrics"]["summary"]
    assert nat["cone"] > 0 and nat["symmetric"] > 0
    # NATed providers are reached through their relay; cone pairs go direct, not
    # those with a symmetric NAT on either side.
    assert nat["relayed_connections"] > 0
    assert nat["hole_punched"] > 0 and nat["hole_punch_failed"] > 0
    assert summary["pipeline_wrong"] == 0
    if dht_client:
        # Nobody lists an undialable peer: no lookup waits on one.
        assert nat["unreachable_dials"] == 0 and run["bootstrap"]["joins_failed"] == 0
        assert summary["success_rate"] == 1.0 and summary["pipeline_success_rate"] == 1.0
        assert summary["latency_p50_ms"] < 1000
    else:
        # NATed peers that serve nothing sit in routing tables and dials to them hang:
        # joins fail, and lookups answer only when their half of the query time is up.
        assert nat["unreachable_dials"] > 100 and run["bootstrap"]["joins_failed"] > 0
        assert summary["latency_p50_ms"] >= 5000


def test_plans_are_drawn_from_the_seed() -> None:
    scenario = load_scenario(SIMULATIONS / "churn.toml")
    a, b = make_plan(scenario, 200, seed=3), make_plan(scenario, 200, seed=3)
    assert a.events == b.events and a.via == b.via and a.models == b.models
    assert make_plan(scenario, 200, seed=4).events != a.events
    kinds = {e.kind for e in a.events}
    assert {"query", "join", "leave", "crash", "rejoin", "publish"} <= kinds
    # Queries come from live honest peers only.
    gone: set[int] = set()
    for e in a.events:
        if e.kind in ("leave", "crash"):
            gone.add(e.peer)
        elif e.kind in ("join", "rejoin"):
            gone.discard(e.peer)
        elif e.kind == "query":
            assert e.peer not in gone and a.role(e.peer) == "honest"


def test_metrics_percentiles_and_intervals() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    records = [
        QueryRecord(
            t=float(i), peer=i, task="a", ok=i % 4 != 0, latency=0.1 * (i + 1), hops=2, queries=10
        )
        for i in range(20)
    ]
    result = summarize(records, [], [], duration=20.0, interval=5.0)
    summary = result["summary"]
    assert summary["queries"] == 20 and summary["succeeded"] == 15
    assert summary["success_rate"] == 0.75
    assert [row["queries"] for row in result["intervals"]] == [5, 5, 5, 5]
    assert summary["latency_p50_ms"] <= summary["latency_p95_ms"] <= summary["latency_p99_ms"]


def test_sybil_ids_are_ground_near_the_key() -> None:
    import hashlib
    import random

    from p2pnet.core.kad.wire import peer_id_bytes

    target = b"\x12\x20" + bytes(32)
    ids = grind_peer_ids(target, 5, 10, random.Random(1))
    goal = int.from_bytes(hashlib.sha256(target).digest()) >> 246
    for peer_id in ids:
        position = int.from_bytes(hashlib.sha256(peer_id_bytes(peer_id)).digest())
        assert position >> 246 == goal


def test_peer_groups_spread_honest_peers_and_place_sybils_as_the_scenario_says() -> None:
    sybils = list(range(300, 330))
    groups = PeerGroups(7, sybils, sybil_groups=1)
    again = PeerGroups(7, sybils, sybil_groups=1)  # another process of the same run
    honest = [groups.group(i) for i in range(300)]
    assert honest == [again.group(i) for i in range(300)]
    assert len(set(honest)) >= 295  # 300 draws of 65,536 /16s: a collision or two
    assert all(g.startswith("ip4:") and ip_group(f"/ip4/{g[4:]}.1.1/tcp/1") == g for g in honest)
    assert len({groups.group(s) for s in sybils}) == 1
    assert len({PeerGroups(7, sybils, 0).group(s) for s in sybils}) == 30  # spread: one each
    assert len({PeerGroups(7, sybils, 4).group(s) for s in sybils}) == 4
    assert [PeerGroups(8, sybils, 1).group(i) for i in range(300)] != honest
    groups.place(3, ["/memory/9/p2p/12D3KooWx"])
    assert groups(PeerInfo("x", b"x", ("/memory/9",))) == {groups.group(3)}
    assert groups(PeerInfo("y", b"y", ("/memory/10",))) == frozenset()


def test_diversity_and_sybil_groups_are_read_from_the_scenario() -> None:
    data = tomllib.loads((SIMULATIONS / "adversarial.toml").read_text())
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    assert scenario.dht.diversity and scenario.adversaries.sybil_groups == 0
    data["dht"] = {"diversity": False}
    data["adversaries"]["sybil_groups"] = 1
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    assert not scenario.dht.diversity and scenario.adversaries.sybil_groups == 1
    data["adversaries"]["sybil_groups"] = -1
    with pytest.raises(ScenarioError, match="sybil_groups = -1 is out of range"):
        parse_scenario(data, base_dir=SIMULATIONS)


@pytest.mark.slow  # two runs of 85 peers
def test_sybils_in_one_ip_group_lose_the_key_they_surround() -> None:
    """25 sybils in one /16 around a task's key, without the region (to see the limits
    alone): with the limits off they swallow most announcements and answer lookups with
    each other; with them on, an honest table holds 3 of them and their answers are
    dropped, so the task is found as the others are."""
    found = {}
    for diversity in (False, True):
        data = tomllib.loads((SIMULATIONS / "adversarial.toml").read_text())
        data["peers"] = {"count": 60, "join_batch": 40}
        data["adversaries"] = {"sybils": 25, "sybil_groups": 1}
        data["dht"] = {"region": False, "diversity": diversity}
        data["duration"] = 10
        data["freshness"] = {"new_records": 0}
        scenario = parse_scenario(data, base_dir=SIMULATIONS)
        (run,) = run_scenario(scenario, engine="memory", in_process=True)["runs"]
        summary, defences = run["metrics"]["summary"], run["dht_defences"]
        assert summary["target_queries"] >= 10 and summary["other_success_rate"] == 1.0
        assert defences["diversity"] is diversity
        assert (defences["diversity_dropped_replies"] > 0) is diversity
        assert (defences["diversity_refused"] > 0) is diversity
        found[diversity] = summary["target_success_rate"]
    assert found[False] < 0.6 and found[True] == 1.0


async def test_memory_network_counts_traffic_and_applies_bandwidth(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork(latency=0.01, transmit=lambda s, d, size: size / 1000.0) as net:
        a, b = net.add_host(), net.add_host()
        received: list[float] = []

        async def handler(stream: Any) -> None:
            await stream.read()
            received.append(trio.current_time())

        b.set_stream_handler("/x", handler)
        from p2pnet.core.address import PeerAddress

        stream = await a.open_stream(PeerAddress(b.peer_id), "/x")
        sent = trio.current_time()
        await stream.write(b"x" * 500)  # 0.5 s at 1,000 bytes/s, plus 10 ms
        await trio.sleep(1)
        assert received and received[0] - sent == pytest.approx(0.51)
        assert (net.messages_sent, net.bytes_sent) == (1, 500)


@pytest.mark.slow
def test_memory_smoke_is_deterministic() -> None:
    scenario = load_scenario(SMOKE)
    first = run_scenario(scenario, engine="memory", in_process=True)
    second = run_scenario(scenario, engine="memory", in_process=True)
    (run,) = first["runs"]
    assert _without_wall_figures(run) == _without_wall_figures(second["runs"][0])
    summary = run["metrics"]["summary"]
    assert run["bootstrap"]["joins_failed"] == 0
    assert summary["queries"] > 20 and summary["success_rate"] == 1.0
    assert summary["forged_accepted"] == 0 and summary["records_rejected"] > 0
    assert summary["new_records_found"] == summary["new_records"] > 0
    assert summary["latency_p50_ms"] > 0 and summary["hops_mean"] >= 1
    assert run["traffic"]["run_bytes_per_peer_s"] > 0
    # The customer-service pipeline, from random peers, on stand-in models.
    assert summary["pipeline_runs"] >= 5 and summary["pipeline_success_rate"] == 1.0
    assert summary["pipeline_correct"] == summary["pipeline_runs"]
    assert summary["invocation_calls"] >= 4 * summary["pipeline_runs"]
    # In-process runs share the interpreter's heap: RSS growth can be negative (the first
    # run already grew it), so only its presence is checked here.
    assert isinstance(run["resources"]["rss_per_peer_kb"], float | int)


@pytest.mark.slow
def test_adversaries_forged_records_are_never_accepted() -> None:
    data = tomllib.loads((SIMULATIONS / "adversarial.toml").read_text())
    data["peers"] = {"count": 50, "join_batch": 25}
    data["adversaries"].update(forgers=3, droppers=3, corruptors=2, sybils=6)
    data["duration"] = 10
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    report = run_scenario(scenario, engine="memory", in_process=True)
    (run,) = report["runs"]
    summary, adversaries = run["metrics"]["summary"], run["adversaries"]
    assert summary["queries"] > 25
    assert summary["forged_accepted"] == 0
    assert summary["records_rejected"] > 0
    assert adversaries["forged_values_sent"] > 0 and adversaries["forged_values_stored"] == 0
    assert summary["target_task"] == "sentiment-analysis" and summary["target_queries"] > 0
    # Honest peers still find the other tasks most of the time.
    assert summary["other_success_rate"] >= 0.7
    # The region's cost and the density detector's verdicts are reported.
    defences = run["dht_defences"]
    assert defences["region"] and defences["messages_per_provide"] > 20
    assert defences["target"]["lookups"] == summary["target_queries"]
    assert defences["target"]["messages_per_lookup"] > 0
    assert defences["others"]["judged"] > 0 and defences["others"]["suspicious_rate"] < 0.5
    # Provider lookups stop once they have their providers, so none of the target's is
    # judged.
    assert defences["target"]["judged"] == 0


@pytest.mark.slow
def test_density_probes_judge_the_attacked_key() -> None:
    """A full closest-peers lookup after each query is judged: those of the sybils' key
    are nearly all called suspicious."""
    data = tomllib.loads((SIMULATIONS / "adversarial.toml").read_text())
    data["peers"] = {"count": 50, "join_batch": 25}
    data["adversaries"].update(forgers=3, droppers=3, corruptors=2, sybils=6)
    data["workload"]["density_probes"] = 1.0
    data["dht"] = {"settle": True}
    data["duration"] = 10
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    (run,) = run_scenario(scenario, engine="memory", in_process=True)["runs"]
    assert run["settle"]["messages_per_peer"] > 0  # every peer refreshed its buckets
    target = run["dht_defences"]["target"]
    assert target["judged"] >= run["metrics"]["summary"]["target_queries"] > 0
    assert target["suspicious_rate"] > 0.9


def test_the_adaptive_attacker_stays_just_under_the_detector() -> None:
    import random

    from p2pnet.core.kad.region import DEFAULT_DENSITY_THRESHOLD
    from p2pnet.simulate.adversaries import adaptive_sybil_placement

    def place(most: int) -> Any:
        return adaptive_sybil_placement(
            300, most, k=20, threshold=DEFAULT_DENSITY_THRESHOLD, rng=random.Random(3), trials=80
        )

    placement = place(30)
    assert 0 < placement.count < 30 and placement.caught <= 0.5
    assert placement.slots > 3  # it holds some of the k closest slots: an attack
    # The detector's judgement is what holds it back: allowed fewer sybils, it uses them all.
    assert place(2).count == 2
    data = tomllib.loads((SIMULATIONS / "adversarial.toml").read_text())
    data["adversaries"].update(sybil_placement="adaptive")
    plan = make_plan(parse_scenario(data, base_dir=SIMULATIONS), 300)
    assert plan.sybil_placement is not None
    assert len(plan.sybils) == plan.sybil_placement.count < 30
    assert plan.sybil_bits == plan.sybil_placement.bits < (300).bit_length() + 6


@pytest.mark.slow
def test_libp2p_smoke(tmp_path: pathlib.Path) -> None:
    scenario = load_scenario(SMOKE)
    report = run_scenario(scenario, engine="libp2p", log_dir=tmp_path)
    (run,) = report["runs"]
    summary = run["metrics"]["summary"]
    assert run["n"] == scenario.libp2p_peers and run["bootstrap"]["joins_failed"] == 0
    assert summary["queries"] > 10 and summary["success_rate"] >= 0.9
    assert summary["forged_accepted"] == 0 and summary["records_rejected"] > 0
    assert run["adversaries"]["forged_values_stored"] == 0
    assert summary["pipeline_runs"] >= 3 and summary["pipeline_wrong"] == 0
    assert summary["pipeline_success_rate"] >= 0.9
    # The workers' CPU per phase: all of them worked, and no more CPUs than exist.
    assert run["bootstrap"]["cpu_s"] > 0 and run["publish"]["cpu_s"] > 0
    assert run["run_phase"]["cpu_s"] > 0
    assert 0 < run["run_phase"]["cpus_busy"] <= usable_cpus() * 1.05


def test_stand_ins_take_the_schema_the_spec_implies() -> None:
    spec = load_scenario(SMOKE).pipeline.spec
    assert spec is not None and spec.name == "customer-service"
    emotion = stand_in_schema(spec, spec.step("emotion"))
    assert [t.name for t in emotion.inputs] == ["text"]
    assert [(t.name, t.dtype) for t in emotion.outputs] == [("label", "string")]
    retrieve = stand_in_schema(spec, spec.step("retrieve"))
    assert [t.name for t in retrieve.outputs] == ["answer", "article"]  # what later steps use
    out = expected_outputs(spec, {"text": np.array(["hi", "no"])})
    assert out["priority"][1] == (
        "route.priority(article=retrieve.article(text=no),emotion=emotion.label(text=no))"
    )


@pytest.mark.slow
def test_pipeline_under_churn_forwarded_gives_correct_results() -> None:
    data = tomllib.loads(SMOKE.read_text())
    data["duration"] = 20
    data["churn"].update(leave_rate=0.4, join_rate=0.2, providers_leave=True, rejoin_after=5)
    data["pipeline"].update(mode="forwarded", rate=1.0)
    scenario = parse_scenario(data, base_dir=SIMULATIONS)
    (run,) = run_scenario(scenario, engine="memory", in_process=True)["runs"]
    summary = run["metrics"]["summary"]
    assert summary["crashes"] + summary["leaves"] >= 5
    assert summary["pipeline_runs"] >= 10 and summary["pipeline_wrong"] == 0
    assert summary["pipeline_success_rate"] >= 0.8
    # Each run's chain crosses peers (a hop served by the forwarding peer itself is no call).
    assert summary["invocation_calls"] > summary["pipeline_succeeded"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"rate": 1.0}, "pipeline.spec is missing"),
        ({"spec": "../examples/customer_service.yaml", "mode": "relay"}, "pipeline.mode must"),
        ({"spec": "../examples/customer_service.yaml", "run_ms": {"no": 1}}, "no is not a step"),
        ({"spec": "missing.yaml"}, "pipeline.spec: "),
    ],
)
def test_pipeline_mistakes_name_the_field(pipeline: dict[str, Any], message: str) -> None:
    data = tomllib.loads(SMOKE.read_text())
    data["pipeline"] = pipeline
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data, base_dir=SIMULATIONS)


def test_simulated_pipelines_find_steps_by_task(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "p.yaml"
    model = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    spec.write_text(
        "pipeline: p\ninputs:\n  x: string[N]\nsteps:\n  a:\n    model: "
        + model
        + "\n    inputs:\n      x: input.x\noutputs:\n  y: a.y\n"
    )
    data = tomllib.loads(SMOKE.read_text())
    data["pipeline"] = {"spec": str(spec)}
    with pytest.raises(ScenarioError, match="names a model ID"):
        parse_scenario(data)


@pytest.mark.slow
def test_cli_writes_json_and_plots(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        ["simulate", str(SMOKE), "--seed", "7", "--peers", "20", "--out", str(tmp_path),
         "--set", "dht.region=false"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "smoke-memory-seed7.json").read_text())
    assert report["seed"] == 7 and report["runs"][0]["n"] == 20
    # The override reached the run's own process, and the report says it was made.
    assert report["scenario"]["overrides"] == ["dht.region=false"]
    assert report["runs"][0]["dht_defences"]["region"] is False
    assert (tmp_path / "smoke-memory-latency-cdf.png").stat().st_size > 1000
    assert (tmp_path / "smoke-memory-success.png").stat().st_size > 1000
    assert "smoke on the memory engine" in capsys.readouterr().out


def test_plots_without_matplotlib_say_how_to_get_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = {"scenario": {"name": "x"}, "engine": "memory", "runs": []}
    with pytest.raises(PlotsUnavailableError, match=r"pip install 'p2pnet\[plots\]'"):
        write_plots(report, tmp_path)


@pytest.mark.slow
def test_the_cli_without_matplotlib_writes_the_json_and_says_how_to_get_plots(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli_main(
        ["simulate", str(SMOKE), "--seed", "7", "--peers", "20", "--out", str(tmp_path)]
    )
    assert code == 0
    assert (tmp_path / "smoke-memory-seed7.json").exists()
    assert not list(tmp_path.glob("*.png"))
    err = " ".join(capsys.readouterr().err.split())  # unwrapped
    assert "no plots: PNG plots need matplotlib: pip install 'p2pnet[plots]'" in err


def test_overrides_set_fields_over_the_file_and_are_checked_like_it() -> None:
    scenario = load_scenario(
        SMOKE,
        ["adversaries.sybils=4", "dht.region=false", 'adversaries.sybil_target="translation"'],
    )
    assert scenario.adversaries.sybils == 4 and not scenario.dht.region
    assert scenario.adversaries.sybil_target == "translation"
    assert scenario.overrides == (
        "adversaries.sybils=4",
        "dht.region=false",
        'adversaries.sybil_target="translation"',
    )
    assert load_scenario(SMOKE, ["name=bare words"]).name == "bare words"  # not TOML: text
    with pytest.raises(ScenarioError, match=r"adversaries\.sybils"):
        load_scenario(SMOKE, ["adversaries.sybils=-1"])  # checked like the file
    with pytest.raises(ScenarioError, match=r"write section\.key=value"):
        load_scenario(SMOKE, ["adversaries.sybils"])
    with pytest.raises(ScenarioError, match="seed is not a table"):
        load_scenario(SMOKE, ["seed.x=1"])


def test_scenario_seed_override_is_kept() -> None:
    scenario = load_scenario(SMOKE)
    assert dataclasses.replace(scenario, seed=5) == scenario.with_seed(5)


def _incentives_small() -> Any:
    """simulations/incentives.toml as shipped: 12 peers, 30 s of calls, ~2 s a run."""
    return load_scenario(SIMULATIONS / "incentives.toml")


@pytest.mark.slow  # a whole scenario, twice
def test_incentives_contributors_are_served_and_nothing_is_unaccounted() -> None:
    scenario = _incentives_small()
    first = run_scenario(scenario, engine="memory", in_process=True)
    second = run_scenario(scenario, engine="memory", in_process=True)
    (run,) = first["runs"]
    (again,) = second["runs"]
    run.pop("resources"), again.pop("resources")
    assert run == again  # the same seed gives the same report
    inc = run["incentives"]
    assert (inc["providers"], inc["contributors"], inc["free_riders"]) == (2, 8, 2)
    contributors, riders = inc["classes"]["contributor"], inc["classes"]["free_rider"]
    # Near saturation: 22 calls/s offered to 20 calls/s of slots; free riders run out of
    # credit and wait behind contributors.
    assert riders["errors"].get("credit_exceeded", 0) > 0
    assert contributors["latency_p95_ms"] > 200  # some calls queued
    checks = inc["checks"]
    assert checks["contributors_served"]["ok"], checks["contributors_served"]
    assert contributors["success_rate"] >= 0.95 > riders["success_rate"]
    assert checks["nothing_unaccounted"]["ok"], checks["nothing_unaccounted"]
    units = checks["nothing_unaccounted"]["provider_ledgers_units"]
    assert units == contributors["units_consumed"] + riders["units_consumed"] > 0
    bound = checks["free_rider_bound"]
    assert bound["issue_bound_ok"] and bound["bound_with_calls_in_flight_ok"], bound


@pytest.mark.slow  # a whole scenario
def test_incentives_free_riders_stay_within_allowance_and_hard_threshold() -> None:
    """Calls a free rider has waiting together each hold their known cost of its credit
    when admitted, so together they cannot take it past the hard threshold."""
    (run,) = run_scenario(_incentives_small(), engine="memory", in_process=True)["runs"]
    bound = run["incentives"]["checks"]["free_rider_bound"]
    assert bound["ok"], bound


def test_peers_may_be_given_several_bootstrap_peers_without_changing_the_rest() -> None:
    one = parse_scenario({"name": "b", "peers": {"count": 300}}, base_dir=SIMULATIONS)
    three = parse_scenario(
        {"name": "b", "peers": {"count": 300, "bootstrap": 3}}, base_dir=SIMULATIONS
    )
    plan1, plan3 = make_plan(one, 300), make_plan(three, 300)
    assert plan1.via == plan3.via and plan1.events == plan3.events
    assert all(plan1.bootstrap_of(p) == (plan1.via[p],) for p in plan1.via)
    earlier: set[int] = {0}
    for batch in plan3.batches:
        for p in batch:
            chosen = plan3.bootstrap_of(p)
            assert len(set(chosen)) == len(chosen) == min(3, len(earlier))
            assert set(chosen) <= earlier
        earlier |= set(batch)


async def test_a_peer_restarted_on_a_new_port_is_joined_through_there_by_every_worker(
    tmp_path: pathlib.Path,
) -> None:
    """A libp2p-engine worker restarts a peer on a new port (its old one was taken); a
    worker that knew the old port looks the peer up before a join through it."""
    scenario = load_scenario(SMOKE)
    plan = make_plan(scenario, 6, initial_via=True)
    async with trio.open_nursery() as nursery:
        swarm = SimSwarm(scenario, plan, scenario.seed, nursery, wall_clock=lambda: 0.0)
        old = PeerAddress(swarm.peer_id(3), ("/ip4/127.0.0.1/tcp/40001",))
        swarm.locate(3, old)
        _locate_moved(swarm, tmp_path, 3)
        assert swarm.addresses[3] == old  # it has not moved
        new = PeerAddress(old.peer_id, ("/ip4/127.0.0.1/tcp/40002",))
        _tell_moved(tmp_path, 3, new)
        _locate_moved(swarm, tmp_path, 3)
        assert swarm.addresses[3] == new
        assert [p.name for p in tmp_path.iterdir()] == ["3.json"]


def test_run_joins_count_the_retries_that_joined_before_the_end() -> None:
    churn = [
        ChurnRecord(10.0, "join", 60, ok=False),
        ChurnRecord(20.0, "rejoin", 7, ok=False),
        ChurnRecord(280.0, "join", 61, ok=False),
        ChurnRecord(30.0, "join", 62),
        ChurnRecord(40.0, "crash", 7),
    ]
    # (peer, seconds after the failed attempt, seconds into the run) from two workers
    results = [
        {"late_joins": [(60, 4.0, 17.0), (61, 30.0, 313.0)], "moved": 1},
        {"late_joins": [(7, 9.5, 32.5)], "moved": 0},
    ]
    assert _run_joins(churn, results, 300.0) == {
        "joins": 4,
        "failed_first_attempt": 3,
        "joined_later": 2,
        "not_joined_in_run": 1,
        "joined_later_max_s": 9.5,
        "restarts_on_new_port": 1,
    }
