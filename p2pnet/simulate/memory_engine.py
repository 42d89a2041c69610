"""The in-memory engine: every peer of a run in this process, on a ``MemoryNetwork``, in
virtual time (``MockClock(autojump_threshold=0)``); the real DHT, record and describe code.

The same seed gives the same result in a process with the same ``PYTHONHASHSEED``
(the CLI runs each size in a child process with it fixed): peer identities, latencies,
the plan and trio's scheduling order are all drawn from the seed.
"""

from __future__ import annotations

import functools
import gc
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

import trio
from trio.testing import MockClock

from p2pnet.core.kad.keys import key_for_task
from p2pnet.dht.node import DhtNode
from p2pnet.net.memory import MemoryHost, MemoryNetwork
from p2pnet.simulate.adversaries import grind_peer_ids
from p2pnet.simulate.metrics import summarize
from p2pnet.simulate.plan import FORGER, SYBIL, make_plan
from p2pnet.simulate.procstats import peak_rss_kb, rss_kb
from p2pnet.simulate.scenario import Scenario
from p2pnet.simulate.swarm import LookupCounts, SimPeer, SimSwarm, kad_peer

__all__ = ["EPOCH", "Progress", "run_memory", "seed_trio_scheduler"]

log = logging.getLogger(__name__)

EPOCH: Final = 1_800_000_000.0  # the unix time a simulated run starts at
# Arrivals land on whole milliseconds of virtual time (MemoryNetwork's time_grain): a
# delay is at most 1 ms longer, and messages due within the same millisecond share one
# wake-up of the scheduler.
TIME_GRAIN: Final = 0.001
GC_THRESHOLDS: Final = (10_000, 10, 10)  # fewer full collections (see scripts/bench/dht.py)

Progress = Callable[[str, float, float], None]
"""progress(phase, done, total): phases bootstrap (peers), publish (peers), run (seconds)."""


def run_memory(
    scenario: Scenario, n: int, seed: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``scenario`` with ``n`` initial peers; the result as a JSON-ready dict."""
    seed = scenario.seed if seed is None else seed
    seed_trio_scheduler(seed)
    if scenario.incentives is not None:
        from p2pnet.simulate.incentives import run_incentives

        result = trio.run(
            functools.partial(
                run_incentives, scenario, n, seed, progress or _no_progress, epoch=EPOCH
            ),
            clock=MockClock(autojump_threshold=0),
        )
        return {"engine": "memory", "n": n, "seed": seed, **result}
    if scenario.trust is not None:
        from p2pnet.simulate.trust import run_trust

        result = trio.run(
            functools.partial(run_trust, scenario, n, seed, progress or _no_progress, epoch=EPOCH),
            clock=MockClock(autojump_threshold=0),
        )
        return {"engine": "memory", "n": n, "seed": seed, **result}
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return trio.run(
            _run, scenario, n, seed, progress or _no_progress, clock=MockClock(autojump_threshold=0)
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's scheduling order a function of ``seed``.

    trio reverses (or, under Hypothesis, shuffles) each batch of runnable tasks with a
    module-level ``random.Random`` (``trio._core._run._r``, trio 0.35) and has no public
    way to seed it; this is the one place p2pnet reaches into trio's internals. If a
    trio release moves it, runs would stop being reproducible, so that is an error here
    rather than a silent change.

    Raises:
        RuntimeError: this trio has no scheduler Random where 0.35 has it.
    """
    import importlib

    scheduler_random = getattr(importlib.import_module("trio._core._run"), "_r", None)
    if not isinstance(scheduler_random, random.Random):
        raise RuntimeError(
            "this trio keeps no scheduler Random at trio._core._run._r; "
            "simulations cannot be made reproducible with it (p2pnet pins trio 0.35.0)"
        )
    scheduler_random.seed(seed)


def _no_progress(phase: str, done: float, total: float) -> None:
    pass


async def _run(scenario: Scenario, n: int, seed: int, progress: Progress) -> dict[str, Any]:
    wall0 = time.perf_counter()
    rss0 = rss_kb()
    plan = make_plan(scenario, n, seed)
    model = scenario.network
    net_rng = random.Random(seed * 31 + 7)
    access: dict[str, float] = {}
    bandwidth: dict[str, float] = {}
    jitter = model.jitter_ms / 1e3
    loss = model.loss
    resend = model.retransmit_ms / 1e3

    def latency(src: str, dst: str) -> float:
        delay = (access[src] + access[dst]) / 2
        if jitter:
            delay += net_rng.uniform(0.0, jitter)
        if loss and net_rng.random() < loss:
            delay += resend
        return delay

    def transmit(src: str, dst: str, size: int) -> float:
        return size * 8 / (min(bandwidth[src], bandwidth[dst]) * 1e6)

    out: dict[str, Any] = {"engine": "memory", "n": n, "seed": seed}
    async with (
        MemoryNetwork(
            latency=latency,
            seed=seed,
            connect_rtts=1.0,
            transmit=transmit if model.bandwidth_mbps is not None else None,
            holepunch_s=scenario.nat.holepunch_s,
            holepunch_success=scenario.nat.holepunch_success,
            time_grain=TIME_GRAIN,
        ) as network,
        trio.open_nursery() as nursery,
    ):
        sybil_ids: dict[int, str] = {}
        if plan.sybils:
            bits = plan.sybil_bits
            t = time.perf_counter()
            ids = grind_peer_ids(
                key_for_task(plan.target_task), len(plan.sybils), bits, random.Random(seed)
            )
            sybil_ids = dict(zip(plan.sybils, ids, strict=True))
            out["sybil_prefix_bits"] = bits
            out["sybil_grind_s"] = round(time.perf_counter() - t, 2)
            if plan.sybil_placement is not None:
                out["sybil_placement"] = {
                    "adaptive": True,
                    "expected_slots": round(plan.sybil_placement.slots, 1),
                    "expected_caught": round(plan.sybil_placement.caught, 3),
                }

        def new_host(index: int) -> MemoryHost:
            peer_id = sybil_ids.get(index) or swarm.peer_id(index)
            host = network.add_host(peer_id)
            if index in plan.nat:
                network.set_nat(peer_id, plan.nat[index])
            access[peer_id] = model.latency_ms.sample(net_rng) / 1e3
            if model.bandwidth_mbps is not None:
                bandwidth[peer_id] = max(0.01, model.bandwidth_mbps.sample(net_rng))
            return host

        hosts: dict[int, MemoryHost] = {}

        def reserve_relay(peer: SimPeer) -> None:
            # A NATed peer that serves reserves a slot on a relay, as Peer does.
            if peer.index in plan.nat:
                relay = plan.relays[peer.index % len(plan.relays)]
                network.reserve(peer.host.peer_id, hosts[relay].peer_id)

        # Upkeep starts with the run, from a steady state (_stagger_refreshes): the bootstrap
        # squeezes the growth of a swarm into minutes of virtual time, and its peers'
        # first refreshes would repeat the joins.
        swarm = SimSwarm(
            scenario,
            plan,
            seed,
            nursery,
            wall_clock=lambda: EPOCH + trio.current_time(),
            maintenance=False,
            on_serve=reserve_relay,
        )
        for index in [*range(n), *plan.sybils]:
            hosts[index] = new_host(index)
        # A peer starts when its batch joins, as a real one starts when it comes: peers
        # started early would run their upkeep (a check of the routing table every 10
        # virtual seconds) through the whole bootstrap, a cost that grows with the swarm
        # yet to come (at 100,000 peers, more than the joins themselves).
        joining = {i for batch in plan.batches for i in batch}
        for index in hosts:
            if index not in joining:
                await swarm.add(index, hosts[index])
        swarm.set_fellows(tuple(kad_peer(hosts[i]) for i in plan.sybils))

        # Bootstrap, batch after batch.
        t0, cpu0 = trio.current_time(), time.process_time()
        joined = 1
        failed = 0
        total_joins = sum(len(b) for b in plan.batches)
        progress("bootstrap", 0, total_joins)
        prune_every = swarm.config.stream_idle_timeout / 2
        prune_at = trio.current_time() + prune_every
        for batch in plan.batches:
            results: list[bool] = []

            async def join(i: int, into: list[bool]) -> None:
                into.append(await swarm.join(i, plan.bootstrap_of(i)))

            for i in batch:
                await swarm.add(i, hosts[i])
            async with trio.open_nursery() as batch_nursery:
                for i in batch:
                    batch_nursery.start_soon(join, i, results)
            failed += results.count(False)
            joined += len(batch)
            progress("bootstrap", joined - 1, total_joins)
            if trio.current_time() >= prune_at:
                # A peer's pooled streams are closed when it next sends a request, or by
                # its upkeep (once a minute); the upkeep starts after the bootstrap, and a
                # peer that only answers would keep the streams of its join (~70, whose
                # other ends the peers asked have closed) to the end: at 10,000 peers,
                # hundreds of MB.
                for sim in swarm.peers.values():
                    if sim.node is not None:
                        await sim.node.close_idle_streams()
                prune_at = trio.current_time() + prune_every
            # The swarm built so far lives to the end: full collections need not walk it
            # again (with 10,000 peers each one took seconds).
            gc.freeze()
        gc.collect()
        tables = [len(p.node.table) for p in swarm.peers.values() if p.node is not None]
        out["bootstrap"] = {
            "virtual_s": round(trio.current_time() - t0, 3),
            "wall_s": round(time.perf_counter() - wall0, 2),
            "cpu_s_per_join": round((time.process_time() - cpu0) / max(1, total_joins), 4),
            "joins_failed": failed,
            "table_mean": round(sum(tables) / len(tables), 2),
            "table_min": min(tables),
            # Connections are never closed in memory: what each host holds after its join
            # and the joins after it (they set the cost of DHT answers and of memory).
            "connections_mean": round(
                sum(len(h.connections()) for h in hosts.values()) / len(hosts), 1
            ),
            "messages_per_peer": round(network.messages_sent / len(hosts), 1),
            "kbytes_per_peer": round(network.bytes_sent / len(hosts) / 1024, 2),
        }
        rss_boot = rss_kb()
        if scenario.dht.settle:
            out["settle"] = await _settle(swarm, scenario.join_batch, network, progress)

        _stagger_refreshes(swarm, random.Random(seed * 31 + 11))
        swarm.start_maintenance()

        # Publishing: providers, then forgers (whose forgeries name providers).
        publishers = sorted(plan.providers) + sorted(
            i for i, r in plan.roles.items() if r == FORGER
        )
        progress("publish", 0, len(publishers))
        t1 = trio.current_time()
        taken: list[int] = []
        provides0 = _provide_counts(swarm)

        async def publish(i: int) -> None:
            taken.append(await swarm.publish(i))
            progress("publish", len(taken), len(publishers))

        async with trio.open_nursery() as pub_nursery:
            for i in publishers:
                pub_nursery.start_soon(publish, i)
        out["publish"] = {
            "virtual_s": round(trio.current_time() - t1, 3),
            "publishers": len(publishers),
            "announcements_mean": round(sum(taken) / max(1, len(taken)), 2),
        }
        provides1 = _provide_counts(swarm)
        announced = provides1[0] - provides0[0]
        provide_messages = (
            round((provides1[1] - provides0[1]) / announced, 1) if announced else None
        )

        # The run phase: the plan's events, on time.
        messages0, bytes0 = network.messages_sent, network.bytes_sent
        start = trio.current_time()
        swarm.run_started = start
        swarm.count_lookups = True
        alive = {i for i in hosts if i < n or i in sybil_ids}
        alive_at: list[tuple[float, int]] = [(0.0, len(alive))]
        in_flight = 0
        wall_run = time.perf_counter()

        def prober() -> int | None:
            candidates = swarm.alive_local()
            return candidates[swarm.rng.randrange(len(candidates))] if candidates else None

        async def run_event(
            kind: str, index: int, via: int, task: str, model_: int, t: float
        ) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                if kind == "query":
                    if swarm.peers[index].alive:
                        await swarm.query(index, task, t)
                elif kind == "join":
                    hosts[index] = new_host(index)
                    await swarm.add(index, hosts[index])
                    await swarm.join(index, via, kind="join", t=t)
                elif kind == "rejoin":
                    hosts[index].restart()
                    await swarm.restart(index, hosts[index], via, t)
                elif kind in ("leave", "crash"):
                    host = hosts[index]

                    async def stop() -> None:
                        host.crash()

                    await swarm.leave(index, crash=kind == "crash", t=t, stop=stop)
                elif kind == "publish":
                    await swarm.publish_fresh(index, model_, task, t, prober)
                elif kind == "pipeline":
                    if swarm.peers[index].alive:
                        await swarm.run_pipeline(index, model_, t)
            finally:
                in_flight -= 1

        progress("run", 0, scenario.duration)
        next_report = 0.0
        for event in plan.events:
            await trio.sleep_until(start + event.t)
            if event.kind in ("join", "rejoin"):
                alive.add(event.peer)
            elif event.kind in ("leave", "crash"):
                alive.discard(event.peer)
            if event.kind != "query" and event.kind != "publish":
                alive_at.append((event.t, len(alive)))
            nursery.start_soon(
                run_event, event.kind, event.peer, event.via, event.task, event.model, event.t
            )
            if event.t >= next_report:
                progress("run", event.t, scenario.duration)
                next_report = event.t + scenario.interval / 4
        await trio.sleep_until(start + scenario.duration)
        limit = (
            trio.current_time()
            + max(
                scenario.workload.query_timeout,
                scenario.freshness.probe_timeout,
                scenario.pipeline.timeout if scenario.pipeline.spec else 0.0,
            )
            + 30.0
        )
        while in_flight and trio.current_time() < limit:
            await trio.sleep(0.5)
        progress("run", scenario.duration, scenario.duration)
        alive_at.append((scenario.duration, len(alive)))
        run_messages = network.messages_sent - messages0
        run_bytes = network.bytes_sent - bytes0
        peer_seconds = max(1e-9, len(alive) * scenario.duration) if scenario.duration else 0.0
        out["metrics"] = summarize(
            swarm.queries,
            swarm.churn,
            swarm.fresh,
            duration=scenario.duration,
            interval=scenario.interval,
            alive_at=alive_at,
            task_of_interest=plan.target_task if plan.sybils else "",
            pipelines=swarm.pipelines,
            invocations=swarm.invocations,
        )
        out["traffic"] = {
            "run_messages_per_peer_s": round(run_messages / peer_seconds, 3)
            if peer_seconds
            else None,
            "run_bytes_per_peer_s": round(run_bytes / peer_seconds, 1) if peer_seconds else None,
            "messages_total": network.messages_sent,
            "bytes_total": network.bytes_sent,
            "kad_requests_served_per_peer": round(
                sum(p.node.requests_served for p in swarm.peers.values() if p.node is not None)
                / len(swarm.peers),
                1,
            ),
        }
        out["dht_defences"] = _defence_figures(
            swarm, plan.target_task if plan.sybils else "", provide_messages
        )
        out["adversaries"] = {
            "forgers": sum(1 for r in plan.roles.values() if r == FORGER),
            "droppers": scenario.adversaries.droppers,
            "corruptors": scenario.adversaries.corruptors,
            "sybils": sum(1 for r in plan.roles.values() if r == SYBIL),
            "forged_records_rejected": out["metrics"]["summary"]["records_rejected"],
            "forged_records_accepted": out["metrics"]["summary"]["forged_accepted"],
            "forged_values_sent": swarm.forged_values_sent,
            "forged_values_stored": swarm.forged_values_stored,
        }
        if plan.relays:
            kinds = [plan.nat.get(i, "public") for i in hosts]
            out["nat"] = {
                "relays": len(plan.relays),
                "public": kinds.count("public"),
                "cone": kinds.count("cone"),
                "symmetric": kinds.count("symmetric"),
                "relayed_connections": network.nat_stats.relayed,
                "hole_punched": network.nat_stats.punched,
                "hole_punch_failed": network.nat_stats.punch_failed,
                "unreachable_dials": network.nat_stats.unreachable,
            }
        out["peers_final"] = len(alive)
        out["resources"] = {
            "wall_s": round(time.perf_counter() - wall0, 2),
            "run_wall_s": round(time.perf_counter() - wall_run, 2),
            "virtual_s": round(trio.current_time(), 2),
            "rss_peak_mb": round(peak_rss_kb() / 1024, 1),
            "rss_per_peer_kb": round((rss_boot - rss0) / len(hosts), 1),
        }
        nursery.cancel_scope.cancel()
    return out


def _stagger_refreshes(swarm: SimSwarm, rng: random.Random) -> None:
    """Spread the last refresh of every peer's buckets over the past ``refresh_interval``,
    as in a swarm that has kept itself up for a while: each maintenance round then
    refreshes the share of buckets a steady swarm refreshes (a tenth per minute, with
    the defaults).

    The bootstrap squeezes the growth of the swarm into virtual minutes (hours at
    100,000 peers), and a join counts its buckets as refreshed when it ends: without
    this, every peer that joined over ``refresh_interval`` before the run would look
    into all its buckets at once in the run's first minute, a burst no steady swarm
    sees, costing more than the whole bootstrap at 100,000 peers.
    """
    now = trio.current_time()
    for sim in swarm.peers.values():
        if sim.node is None or not sim.alive:
            continue
        table, interval = sim.node.table, sim.node.config.refresh_interval
        for index in table.stale_buckets(now, 0.0):
            table.mark_refreshed(index, now - rng.uniform(0.0, interval))


async def _settle(
    swarm: SimSwarm, width: int, network: MemoryNetwork, progress: Progress
) -> dict[str, float]:
    """Every peer but the sybils refreshes every bucket once, ``width`` at a time.

    The swarm grew from one peer to n in minutes of virtual time; a real one grows over
    days, and each of its peers looks into every bucket every ``refresh_interval``. A
    peer that joined early still holds the size estimates of the small swarm it joined
    (the density detector judges against them: at 1,000 peers, a fifth of honest
    lookups were called suspicious); one refresh round gives it those of the swarm it
    is in, as ten minutes of maintenance would."""
    t0, wall0, messages0 = trio.current_time(), time.perf_counter(), network.messages_sent
    nodes = [p.node for p in swarm.peers.values() if p.node is not None and p.role != SYBIL]
    limiter = trio.CapacityLimiter(width)
    done = 0

    async def refresh(node: DhtNode) -> None:
        nonlocal done
        async with limiter:
            await node.refresh(trio.current_time(), everything=True)
        done += 1
        progress("settle", done, len(nodes))

    progress("settle", 0, len(nodes))
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(refresh, node)
    return {
        "virtual_s": round(trio.current_time() - t0, 3),
        "wall_s": round(time.perf_counter() - wall0, 2),
        "messages_per_peer": round((network.messages_sent - messages0) / max(1, len(nodes)), 1),
    }


def _provide_counts(swarm: SimSwarm) -> tuple[int, int]:
    """Announcements made by the peers of this process so far, and their requests."""
    nodes = [p.node for p in swarm.peers.values() if p.node is not None and p.peer is not None]
    return sum(n.stats.provides for n in nodes), sum(n.stats.provide_messages for n in nodes)


def _defence_figures(
    swarm: SimSwarm, target: str, provide_messages: float | None
) -> dict[str, Any]:
    """The region's cost and the density detector's verdicts, for the sybils' target task
    and for the other tasks: requests per provider lookup and per announcement (in the
    publish phase); share of judged lookups, provider or closest-peer (announcements,
    bucket refreshes: random keys), called suspicious: the detection rate for the
    target, false alarms for the other keys. And what the IP-group limits did, summed
    over honest peers since they started: routing-table refusals, lookup answers
    dropped."""

    def figures(counts: list[LookupCounts]) -> dict[str, Any]:
        lookups = sum(c.lookups for c in counts)
        judged = sum(c.judged for c in counts)
        return {
            "lookups": lookups,
            "messages_per_lookup": round(sum(c.messages for c in counts) / lookups, 1)
            if lookups
            else None,
            "judged": judged,
            "suspicious_rate": round(sum(c.suspicious for c in counts) / judged, 4)
            if judged
            else None,
        }

    nodes = [p.node for p in swarm.peers.values() if p.node is not None and p.peer is not None]
    sizes = sorted(n.stats.network_size for n in nodes if n.stats.network_size)
    return {
        "region": swarm.config.defences.region,
        "diversity": swarm.config.defences.diversity is not None,
        "sybil_groups": swarm.scenario.adversaries.sybil_groups,
        "diversity_refused": sum(n.stats.diversity_refused for n in nodes),
        "diversity_dropped_replies": sum(n.stats.diversity_dropped_replies for n in nodes),
        "paths": swarm.config.defences.paths,
        "network_size_median": round(sizes[len(sizes) // 2]) if sizes else None,
        "messages_per_provide": provide_messages,
        "target": figures([c for t, c in swarm.lookups.items() if t == target]) if target else None,
        "others": figures([c for t, c in swarm.lookups.items() if t != target]),
    }


def main() -> None:
    """``python -m p2pnet.simulate.memory_engine SCENARIO --peers N --seed S``: one run, in
    a process of its own; progress and the result as JSON lines on stdout."""
    import argparse
    import json
    import sys

    from p2pnet.simulate.scenario import load_scenario

    parser = argparse.ArgumentParser(description="one run of the in-memory simulation engine")
    parser.add_argument("scenario")
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    scenario = load_scenario(args.scenario, args.overrides).with_seed(args.seed)

    def progress(phase: str, done: float, total: float) -> None:
        sys.stdout.write(json.dumps({"progress": [phase, done, total]}) + "\n")
        sys.stdout.flush()

    result = run_memory(scenario, args.peers, args.seed, progress)
    sys.stdout.write(json.dumps({"result": result}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
