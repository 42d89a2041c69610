"""The libp2p engine: the scenario's peers as real libp2p hosts (TCP, Noise, Yamux) on
127.0.0.1, spread over worker processes (peer g in worker g mod W), in wall-clock time.

The parent builds the same ``Plan`` as the memory engine and drives the workers through
its phases over JSON lines (``JsonLinesWorker``): start (hosts up, addresses back),
addresses (everyone's), join (a bootstrap batch), publish, run (each worker plays its
peers' events from a common start time and sends back what it recorded), stats.
Peers that join during the run do so through initial peers; a peer that leaves stops
its host; a restarted peer comes back with the same identity on its old port (a new
one if another socket took it meanwhile: its worker then writes the new address to the
run's directory of moved peers, which every worker reads before a join through that
peer, so no join dials a port its bootstrap peer has left).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from p2pnet.core.address import PeerAddress
from p2pnet.simulate.memory_engine import Progress
from p2pnet.simulate.metrics import (
    ChurnRecord,
    FreshRecord,
    InvocationRecord,
    PipelineRecord,
    QueryRecord,
    summarize,
)
from p2pnet.simulate.plan import FORGER, Plan, make_plan
from p2pnet.simulate.procstats import process_cpu_seconds, rss_kb
from p2pnet.simulate.scenario import Scenario, ScenarioError, load_scenario
from p2pnet.simulate.workers import JsonLinesWorker

if TYPE_CHECKING:
    from p2pnet.net.host import Host
    from p2pnet.simulate.swarm import SimSwarm

__all__ = ["run_libp2p", "workers_for"]

log = logging.getLogger(__name__)

START_TIMEOUT: Final = 120.0
STEP_TIMEOUT: Final = 900.0
WORKER_LIFETIME: Final = 3600.0
# Peers joining at once. A join dials its bootstrap peer and then most of the swarm;
# 100 at once through one peer took longer than the RPC timeout on 2 cores (each new
# connection costs a Noise handshake and two multistream negotiations of CPU).
JOIN_BATCH: Final = 10
# A join on a busy 2-core machine took over a minute (connections, Noise, multistream):
# give it time rather than count a slow machine as failed joins.
JOIN_TIMEOUT: Final = 600.0
RUN_START_DELAY: Final = 1.5  # seconds between the run command and its start, for every worker


def workers_for(peers: int) -> int:
    """Worker processes for a swarm (2 cores: more processes than cores overlap I/O waits)."""
    return 2 if peers <= 30 else 4


def run_libp2p(
    scenario: Scenario,
    n: int,
    seed: int | None = None,
    progress: Progress | None = None,
    *,
    log_dir: Path,
) -> dict[str, Any]:
    """Run ``scenario`` with ``n`` initial peers on real hosts; the result as a dict."""
    why = scenario.unsupported("libp2p")
    if why:
        raise ScenarioError("the libp2p engine cannot run this scenario: " + "; ".join(why))
    if not scenario.source:
        raise ScenarioError("the libp2p engine needs a scenario file (its workers read it)")
    seed = scenario.seed if seed is None else seed
    progress = progress or (lambda phase, done, total: None)
    plan = make_plan(scenario, n, seed, initial_via=True, max_batch=JOIN_BATCH)
    w = min(workers_for(plan.total), n)
    log_dir.mkdir(parents=True, exist_ok=True)
    moved_dir = log_dir / f"{scenario.name}-{n}-moved"
    shutil.rmtree(moved_dir, ignore_errors=True)  # a previous run's addresses
    moved_dir.mkdir()
    wall0 = time.perf_counter()
    workers = [
        JsonLinesWorker(
            [
                sys.executable,
                "-m",
                "p2pnet.simulate.libp2p_engine",
                "--worker",
                str(j),
                "--workers",
                str(w),
                "--peers",
                str(n),
                "--seed",
                str(seed),
                "--moved",
                str(moved_dir),
                *(arg for override in scenario.overrides for arg in ("--set", override)),
                scenario.source,
            ],
            log_dir / f"{scenario.name}-{n}-worker{j}.log",
        )
        for j in range(w)
    ]
    out: dict[str, Any] = {"engine": "libp2p", "n": n, "seed": seed, "workers": w}
    try:
        addresses: dict[str, Any] = {}
        for worker in workers:
            worker.ready = worker.receive(START_TIMEOUT)
            addresses.update(worker.ready["addrs"])
        for worker in workers:
            worker.call({"cmd": "addrs", "addrs": addresses}, STEP_TIMEOUT)

        def workers_cpu_s() -> float:
            return sum(process_cpu_seconds(worker.proc.pid) for worker in workers)

        total_joins = sum(len(b) for b in plan.batches)
        progress("bootstrap", 0, total_joins)
        done = 0
        failed = 0
        t0 = time.perf_counter()
        cpu0 = workers_cpu_s()
        for batch in plan.batches:
            replies = _all(workers, w, batch, lambda peers: {"cmd": "join", "peers": peers})
            failed += sum(r["failed"] for r in replies)
            done += len(batch)
            progress("bootstrap", done, total_joins)
        stats = [worker.call({"cmd": "stats"}, STEP_TIMEOUT) for worker in workers]
        tables = [t for s in stats for t in s["tables"]]
        cpu1 = workers_cpu_s()
        out["bootstrap"] = {
            "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(cpu1 - cpu0, 2),
            "joins_failed": failed,
            "table_mean": round(sum(tables) / len(tables), 2),
            "table_min": min(tables),
        }
        rss_boot = [s["rss_kb"] / max(1, len(s["tables"])) for s in stats]

        publishers = sorted(plan.providers) + sorted(
            i for i, r in plan.roles.items() if r == FORGER
        )
        progress("publish", 0, len(publishers))
        t1 = time.perf_counter()
        replies = _all(workers, w, publishers, lambda peers: {"cmd": "publish", "peers": peers})
        taken = [x for r in replies for x in r["taken"]]
        progress("publish", len(publishers), len(publishers))
        cpu2 = workers_cpu_s()
        out["publish"] = {
            "wall_s": round(time.perf_counter() - t1, 2),
            "cpu_s": round(cpu2 - cpu1, 2),
            "publishers": len(publishers),
            "announcements_mean": round(sum(taken) / max(1, len(taken)), 2),
        }

        start_at = time.time() + RUN_START_DELAY
        for worker in workers:
            worker.send({"cmd": "run", "start_at": start_at})
        progress("run", 0, scenario.duration)
        deadline = time.monotonic() + RUN_START_DELAY + scenario.duration
        # The workers' CPU through the run phase (read within 0.5 s of its start, and at
        # its end: the last queries' ends after it are not counted), and the CPUs that
        # kept busy: 2.0 is both cores of the development machine all the time.
        run_cpu: tuple[float, float] | None = None
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            if run_cpu is None and time.monotonic() >= deadline - scenario.duration:
                run_cpu = (time.monotonic(), workers_cpu_s())
            elapsed = scenario.duration - max(0.0, deadline - time.monotonic())
            progress("run", min(elapsed, scenario.duration), scenario.duration)
        if run_cpu is not None:
            span, spent = time.monotonic() - run_cpu[0], workers_cpu_s() - run_cpu[1]
            out["run_phase"] = {
                "cpu_s": round(spent, 2),
                "cpus_busy": round(spent / span, 3) if span > 0 else None,
            }
        limit = (
            max(
                scenario.workload.query_timeout,
                scenario.freshness.probe_timeout,
                scenario.pipeline.timeout if scenario.pipeline.spec else 0.0,
            )
            + STEP_TIMEOUT
        )
        results = [worker.receive(limit) for worker in workers]
        progress("run", scenario.duration, scenario.duration)
        queries = [QueryRecord(**q) for r in results for q in r["queries"]]
        churn = [ChurnRecord(**c) for r in results for c in r["churn"]]
        out["run_joins"] = _run_joins(churn, results, scenario.duration)
        fresh = [FreshRecord(**f) for r in results for f in r["fresh"]]
        out["metrics"] = summarize(
            queries,
            churn,
            fresh,
            duration=scenario.duration,
            interval=scenario.interval,
            alive_at=_alive_at(plan, n),
            pipelines=[PipelineRecord(**p) for r in results for p in r["pipelines"]],
            invocations=[InvocationRecord(**c) for r in results for c in r["invocations"]],
        )
        stats = [worker.call({"cmd": "stats"}, STEP_TIMEOUT) for worker in workers]
        peers = sum(len(s["tables"]) for s in stats)
        out["traffic"] = {
            "kad_requests_served_per_peer": round(
                sum(s["requests_served"] for s in stats) / max(1, peers), 1
            ),
        }
        out["adversaries"] = {
            "forgers": sum(1 for r in plan.roles.values() if r == FORGER),
            "droppers": scenario.adversaries.droppers,
            "corruptors": scenario.adversaries.corruptors,
            "sybils": 0,
            "forged_records_rejected": out["metrics"]["summary"]["records_rejected"],
            "forged_records_accepted": out["metrics"]["summary"]["forged_accepted"],
            "forged_values_sent": sum(s["forged_values_sent"] for s in stats),
            "forged_values_stored": sum(s["forged_values_stored"] for s in stats),
        }
        out["peers_final"] = _alive_at(plan, n)[-1][1]
        out["resources"] = {
            "wall_s": round(time.perf_counter() - wall0, 2),
            "rss_per_peer_kb": round(sum(rss_boot) / len(rss_boot), 1),
            "rss_workers_mb": [round(s["rss_kb"] / 1024, 1) for s in stats],
        }
    finally:
        for worker in workers:
            worker.stop()
    return out


def _all(
    workers: list[JsonLinesWorker],
    w: int,
    peers: list[int],
    command: Callable[[list[int]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Send each worker the command for its share of ``peers``; wait for every reply."""
    busy = []
    for j, worker in enumerate(workers):
        mine = [g for g in peers if g % w == j]
        if mine:
            worker.send(command(mine))
            busy.append(worker)
    return [worker.receive(STEP_TIMEOUT) for worker in busy]


def _run_joins(
    churn: list[ChurnRecord], results: list[dict[str, Any]], duration: float
) -> dict[str, Any]:
    """Joins and rejoins of the run phase: how many failed their first attempt (what
    ``joins_failed`` counts), how many of those the peer's own retries joined before the
    run ended, and how long after the failed attempt; restarts that took a new port."""
    failed = sum(1 for c in churn if c.kind in ("join", "rejoin") and not c.ok)
    late = sorted(after for r in results for _, after, at in r["late_joins"] if at <= duration)
    return {
        "joins": sum(1 for c in churn if c.kind in ("join", "rejoin")),
        "failed_first_attempt": failed,
        "joined_later": len(late),
        "not_joined_in_run": failed - len(late),
        "joined_later_max_s": round(late[-1], 1) if late else None,
        "restarts_on_new_port": sum(r["moved"] for r in results),
    }


def _alive_at(plan: Plan, n: int) -> list[tuple[float, int]]:
    alive = n
    out = [(0.0, alive)]
    for e in plan.events:
        if e.kind in ("join", "rejoin"):
            alive += 1
        elif e.kind in ("leave", "crash"):
            alive -= 1
        else:
            continue
        out.append((e.t, alive))
    return out


# --- worker side ------------------------------------------------------------------------------


async def worker_main(
    path: str,
    n: int,
    seed: int,
    j: int,
    w: int,
    overrides: tuple[str, ...] = (),
    moved_dir: Path | None = None,
) -> None:
    """Run this worker's peers; obey JSON commands on stdin, answer on stdout.

    moved_dir: where the workers of the run tell each other the new address of a peer
    restarted on a new port (one file per peer).
    """
    from p2pnet.core.address import transport_part
    from p2pnet.core.identity import Identity
    from p2pnet.errors import ConfigError
    from p2pnet.net.host import open_host
    from p2pnet.net.logs import set_libp2p_log_level
    from p2pnet.simulate.swarm import SimSwarm

    debug = bool(os.environ.get("P2PNET_SIM_DEBUG"))  # INFO logs in the worker logs
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, stream=sys.stderr)
    # Peers leave on purpose here: py-libp2p's errors about dialling them are expected.
    set_libp2p_log_level(logging.CRITICAL + 1)
    scenario = load_scenario(path, overrides).with_seed(seed)
    plan = make_plan(scenario, n, seed, initial_via=True, max_batch=JOIN_BATCH)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    with trio.move_on_after(WORKER_LIFETIME):
        async with trio.open_nursery() as nursery:
            swarm = SimSwarm(
                scenario, plan, seed, nursery, wall_clock=time.time, join_timeout=JOIN_TIMEOUT
            )
            swarm.watch_late_joins = True
            moved: list[int] = []  # this worker's peers restarted on a new port
            stops: dict[int, Callable[[], Awaitable[None]]] = {}
            listen: dict[int, str] = {}  # a restarted peer listens where it did before

            async def start_host(g: int) -> Host:
                material = hashlib.sha256(b"p2pnet simulation peer %d %d" % (seed, g)).digest()
                identity = Identity.from_seed(material)
                stop = trio.Event()
                stopped = trio.Event()

                async def run_host(
                    where: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
                ) -> None:
                    try:
                        async with open_host(identity, (where,)) as host:
                            listen[g] = transport_part(host.addrs[0])
                            task_status.started(host)
                            await stop.wait()
                    finally:
                        stopped.set()

                any_port = "/ip4/127.0.0.1/tcp/0"
                try:
                    host: Host = await nursery.start(run_host, listen.get(g, any_port))
                except ConfigError:  # the old port was taken meanwhile: a new one
                    stopped = trio.Event()
                    host = await nursery.start(run_host, any_port)
                    moved.append(g)
                    log.warning("peer %d restarted on a new port: %s", g, listen[g])
                    if moved_dir is not None:
                        _tell_moved(moved_dir, g, PeerAddress.of(host.peer_id, host.addrs))

                async def stop_host() -> None:
                    stop.set()
                    await stopped.wait()

                stops[g] = stop_host
                return host

            for g in range(n):
                if g % w == j:
                    await swarm.add(g, await start_host(g))
            reply(
                {
                    "ready": True,
                    "addrs": {
                        str(g): [a.peer_id, list(a.addrs)] for g, a in swarm.addresses.items()
                    },
                }
            )
            while True:
                while b"\n" not in buffer:
                    data = await stdin.receive_some(65536)
                    if not data:
                        nursery.cancel_scope.cancel()
                        return
                    buffer += data
                line, _, buffer = buffer.partition(b"\n")
                command = json.loads(line)
                kind = command["cmd"]
                if kind == "quit":
                    nursery.cancel_scope.cancel()
                    return
                if kind == "addrs":
                    for g, (peer_id, addrs) in command["addrs"].items():
                        if int(g) not in swarm.peers:
                            swarm.locate(int(g), PeerAddress(peer_id, tuple(addrs)))
                    reply({"ok": True})
                elif kind == "join":
                    oks: list[bool] = []

                    async def join(g: int, into: list[bool]) -> None:
                        into.append(await swarm.join(g, plan.via[g]))

                    async with trio.open_nursery() as batch:
                        for g in command["peers"]:
                            batch.start_soon(join, g, oks)
                    reply({"failed": oks.count(False)})
                elif kind == "publish":
                    taken: list[int] = []

                    async def publish(g: int, into: list[int]) -> None:
                        into.append(await swarm.publish(g))

                    async with trio.open_nursery() as pub:
                        for g in command["peers"]:
                            pub.start_soon(publish, g, taken)
                    reply({"taken": taken})
                elif kind == "run":
                    await _run_events(
                        swarm, plan, j, w, command["start_at"], start_host, stops, moved_dir
                    )
                    reply(
                        {
                            "queries": [asdict(q) for q in swarm.queries],
                            "churn": [asdict(c) for c in swarm.churn],
                            "fresh": [asdict(f) for f in swarm.fresh],
                            "pipelines": [asdict(p) for p in swarm.pipelines],
                            "invocations": [asdict(c) for c in swarm.invocations],
                            "late_joins": swarm.late_joins,
                            "moved": len(moved),
                        }
                    )
                elif kind == "stats":
                    live = [p for p in swarm.peers.values() if p.alive]
                    reply(
                        {
                            "rss_kb": rss_kb(),
                            "tables": [len(p.node.table) for p in live if p.node is not None],
                            "requests_served": sum(
                                p.node.requests_served for p in live if p.node is not None
                            ),
                            "forged_values_sent": swarm.forged_values_sent,
                            "forged_values_stored": swarm.forged_values_stored,
                        }
                    )
                else:
                    reply({"error": f"unknown command {kind!r}"})


def _tell_moved(moved_dir: Path, g: int, address: PeerAddress) -> None:
    """Write peer ``g``'s new address for the other workers (whole or not at all)."""
    part = moved_dir / f"{g}.json.part"
    part.write_text(json.dumps([address.peer_id, list(address.addrs)]))
    part.replace(moved_dir / f"{g}.json")


def _locate_moved(swarm: SimSwarm, moved_dir: Path | None, g: int) -> None:
    """If another worker restarted peer ``g`` on a new port, use that address."""
    if moved_dir is None or g in swarm.peers:  # a peer of this worker: located at its start
        return
    try:
        peer_id, addrs = json.loads((moved_dir / f"{g}.json").read_text())
    except FileNotFoundError:
        return
    swarm.locate(g, PeerAddress(peer_id, tuple(addrs)))


async def _run_events(
    swarm: SimSwarm,
    plan: Plan,
    j: int,
    w: int,
    start_at: float,
    start_host: Callable[[int], Awaitable[Host]],
    stops: dict[int, Callable[[], Awaitable[None]]],
    moved_dir: Path | None = None,
) -> None:
    scenario = swarm.scenario
    start = trio.current_time() + (start_at - time.time())

    def prober() -> int | None:
        candidates = swarm.alive_local()
        return candidates[swarm.rng.randrange(len(candidates))] if candidates else None

    # A peer that joins during the run exists once its host has started, which on a busy
    # machine can take longer than the plan leaves before the peer's first query or its
    # departure: those events wait for the start (and are dropped if it failed).
    started: dict[int, trio.Event] = {}

    async def run_event(kind: str, g: int, via: int, task: str, model: int, t: float) -> None:
        if kind in ("join", "rejoin"):
            _locate_moved(swarm, moved_dir, via)
        if kind == "join":
            try:
                await swarm.add(g, await start_host(g))
            finally:
                started.setdefault(g, trio.Event()).set()
            await swarm.join(g, via, kind="join", t=t)
            return
        if g not in swarm.peers:
            await started.setdefault(g, trio.Event()).wait()
            if g not in swarm.peers:
                return
        if kind == "query":
            if swarm.peers[g].alive:
                await swarm.query(g, task, t)
        elif kind == "rejoin":
            await swarm.restart(g, await start_host(g), via, t)
        elif kind in ("leave", "crash"):
            await swarm.leave(g, crash=kind == "crash", t=t, stop=stops[g])
        elif kind == "publish":
            await swarm.publish_fresh(g, model, task, t, prober)
        elif kind == "pipeline":
            if swarm.peers[g].alive:
                await swarm.run_pipeline(g, model, t)

    swarm.run_started = start
    async with trio.open_nursery() as nursery:
        for e in plan.events:
            if e.peer % w != j:
                continue
            await trio.sleep_until(start + e.t)
            nursery.start_soon(run_event, e.kind, e.peer, e.via, e.task, e.model, e.t)
        await trio.sleep_until(start + scenario.duration)
        # Whatever is still running gets its own timeout to finish.


def main() -> None:
    parser = argparse.ArgumentParser(description="a worker of the libp2p simulation engine")
    parser.add_argument("scenario")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--moved", type=Path, default=None, help="directory of moved peers")
    args = parser.parse_args()

    def run() -> None:
        trio.run(
            worker_main,
            args.scenario,
            args.peers,
            args.seed,
            args.worker,
            args.workers,
            tuple(args.overrides),
            args.moved,
        )

    profile_dir = os.environ.get("P2PNET_SIM_PROFILE")  # cProfile each worker to this directory
    if not profile_dir:
        run()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
        profiler.dump_stats(str(Path(profile_dir) / f"worker{args.worker}.prof"))


if __name__ == "__main__":
    main()
