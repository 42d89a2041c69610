"""Run a scenario on an engine, once per swarm size, and gather one report (a dict).

The memory engine runs each size in a child process (``python -m
p2pnet.simulate.memory_engine``) with ``PYTHONHASHSEED=0``: its memory figures are its
own, and the same seed gives the same result from one invocation to the next. Pass
``in_process=True`` to run it here instead (tests).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from p2pnet.simulate.memory_engine import Progress, run_memory
from p2pnet.simulate.procstats import machine_info
from p2pnet.simulate.scenario import ENGINES, Scenario, ScenarioError
from p2pnet.simulate.workers import JsonLinesWorker

__all__ = ["run_scenario", "sizes_for"]

CHILD_LINE_TIMEOUT: Final = 3600.0  # a 10,000-peer bootstrap batch can take minutes


def sizes_for(scenario: Scenario, engine: str, peers: int | None = None) -> tuple[int, ...]:
    """The swarm sizes a run covers: ``peers`` if given; else the scenario's ``peers``
    (memory), or ``peers.libp2p`` / the smallest size (libp2p)."""
    if peers is not None:
        if peers < 2:
            raise ScenarioError("--peers must be at least 2")
        return (peers,)
    if engine == "libp2p":
        return (scenario.libp2p_peers or min(scenario.peers),)
    return scenario.peers


def run_scenario(
    scenario: Scenario,
    *,
    engine: str = "memory",
    seed: int | None = None,
    peers: int | None = None,
    progress: Progress | None = None,
    in_process: bool = False,
    log_dir: Path | None = None,
    on_run: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Every run of ``scenario`` on ``engine``; progress(phase, done, total) per step,
    with phase prefixed by the size (``"1000: bootstrap"``); ``on_run(report so far)``
    after each size (the CLI writes the JSON then, so a long run keeps what it measured).

    Raises:
        ScenarioError: the engine cannot run this scenario (the message says why).
    """
    if engine not in ENGINES:
        raise ScenarioError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    why = scenario.unsupported(engine)
    if why:
        raise ScenarioError(f"the {engine} engine cannot run this scenario: " + "; ".join(why))
    scenario = scenario.with_seed(seed)
    started = datetime.datetime.now(datetime.UTC)
    runs: list[dict[str, Any]] = []
    report = _report(scenario, engine, started, runs)
    for n in sizes_for(scenario, engine, peers):

        def step(phase: str, done: float, total: float, n: int = n) -> None:
            if progress is not None:
                progress(f"{n:,} peers: {phase}", done, total)

        if engine == "libp2p":
            from p2pnet.simulate.libp2p_engine import run_libp2p

            logs = log_dir or Path(tempfile.mkdtemp(prefix="p2pnet-sim-"))
            runs.append(run_libp2p(scenario, n, scenario.seed, step, log_dir=logs))
        elif in_process or not scenario.source:
            runs.append(run_memory(scenario, n, scenario.seed, step))
        else:
            runs.append(_memory_child(scenario, n, step, log_dir))
        if on_run is not None:
            on_run(report)
    return report


def _report(
    scenario: Scenario, engine: str, started: datetime.datetime, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "source": scenario.source,
            "overrides": list(scenario.overrides),
            "duration_s": scenario.duration,
            "interval_s": scenario.interval,
            "peers": list(scenario.peers),
            "latency_ms": scenario.network.latency_ms.describe(),
            "query_rate": scenario.workload.query_rate,
            "churn": {
                "join_rate": scenario.churn.join_rate,
                "leave_rate": scenario.churn.leave_rate,
                "crash_fraction": scenario.churn.crash_fraction,
            },
            **_pipeline_summary(scenario),
        },
        "engine": engine,
        "notes": scenario.notes(engine),
        "seed": scenario.seed,
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "network": "127.0.0.1 and in-memory only",
        "runs": runs,
    }


def _pipeline_summary(scenario: Scenario) -> dict[str, Any]:
    load = scenario.pipeline
    if load.spec is None:
        return {}
    return {
        "pipeline": {
            "name": load.spec.name,
            "spec": load.spec_path,
            "mode": load.mode,
            "rate": load.rate,
            "providers": load.providers,
            "run_ms": {s.name: load.run_s(s.name) * 1000 for s in load.spec.steps},
        }
    }


def _memory_child(
    scenario: Scenario, n: int, progress: Progress, log_dir: Path | None
) -> dict[str, Any]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    logs = log_dir or Path(tempfile.mkdtemp(prefix="p2pnet-sim-"))
    logs.mkdir(parents=True, exist_ok=True)
    child = JsonLinesWorker(
        [sys.executable, "-m", "p2pnet.simulate.memory_engine", scenario.source,
         "--peers", str(n), "--seed", str(scenario.seed),
         *(arg for override in scenario.overrides for arg in ("--set", override))],
        logs / f"{scenario.name}-{n}-memory.log",
        env=env,
    )  # fmt: skip
    try:
        while True:
            try:
                line = child.receive(CHILD_LINE_TIMEOUT)
            except RuntimeError as exc:
                tail = Path(child.log_name).read_text()[-2000:]
                raise RuntimeError(f"the simulation of {n} peers failed: {exc}\n{tail}") from None
            if "progress" in line:
                progress(*line["progress"])
            elif "result" in line:
                result: dict[str, Any] = line["result"]
                return result
    finally:
        child.stop()
