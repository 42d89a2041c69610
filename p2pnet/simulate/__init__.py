"""Local multi-peer simulations: scenario files, two engines, figures and reports.

    scenario.py       Scenario, load_scenario, ScenarioError: the TOML format, checked (pure)
    plan.py           make_plan: who joins through whom, serves, misbehaves; timed events (pure)
    metrics.py        QueryRecord, ChurnRecord, FreshRecord, summarize: figures (pure)
    swarm.py          SimSwarm: real Peers on the engine's hosts, honest or adversarial
    adversaries.py    MisbehavingHost, SybilAnswers, forged_envelope: attacks from outside
    groups.py         PeerGroups: each peer's IP group, for the DHT's limits (pure)
    hostile_messages.py  hostile_invokes, frame, invoke_head, string_tensor, nested_frame:
                      invoke frames that each break a limit (tests, benchmark, fuzzer)
    standins.py       StandInModel, CatalogueModel: models whose runs cost only trio time
    incentives.py     run_incentives: providers, contributors and free riders with ledgers
    trust.py          run_trust: lying providers, callers that spot-check them, pipelines
    memory_engine.py  run_memory: every peer on a MemoryNetwork, virtual time
    libp2p_engine.py  run_libp2p: real hosts on 127.0.0.1 over worker processes
    runner.py         run_scenario: every size of a scenario on an engine, one report
    report.py         render (rich), write_json, write_plots (matplotlib, optional)
    procstats.py      process memory and CPU, machine description
    workers.py        JsonLinesWorker: a child process driven over JSON lines

docs/simulations.md describes the format, the engines and measured results; the
``p2pnet simulate`` command is p2pnet/cli/simulate.py.
"""

from p2pnet.simulate.runner import run_scenario
from p2pnet.simulate.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario", "run_scenario"]
