"""Benchmark p2pnet's Kademlia DHT against py-libp2p's own KadDHT, all measured in one run.

Usage: python scripts/bench/dht.py [--out build/bench] [--quick] [--seed 1] [--full-join]
                                  [--real-sizes 10,50,100] [--memory-sizes 1000,10000]

``--full-join`` joins as before 2026-12 (``DhtConfig(join_bucket_fill=None)``: a full
lookup in every bucket) instead of filling only the empty buckets; run the script with
and without it to compare the two joins on the same machine.

Everything runs on 127.0.0.1 or on the in-memory network; nothing else is dialled.

Scenarios (each a fresh swarm, built and measured the same way):
  real      p2pnet ``DhtNode``s on real libp2p hosts (``open_host``: TCP + Noise + Yamux,
            one connection per peer), spread over worker processes (this file with
            --worker), N/W peers each. Peer 0 is the first peer; the others join in
            batches, every peer of a batch at the same time, each through a random peer
            that joined before. One peer then announces a task key, and every other peer
            looks it up with ``find_providers(key, count=1)``, one lookup at a time in the
            whole swarm (round "first": its first lookup, dialling whoever it must), then
            once more (round "again": connections and streams already open).
  baseline  the same swarm layout and steps with py-libp2p's ``KadDHT`` (server mode) on
            the same hosts: join = connect to the seed, add it to the routing table,
            ``refresh_routing_table()``; ``provide``/``find_providers`` as given. Every
            step runs under a timeout; a timeout counts as a failure. Lookups are a
            random sample of peers, and the phase stops at a deadline (the rest count
            as failed).
  memory    p2pnet ``DhtNode``s on ``MemoryNetwork(latency=0.01)`` (10 ms one way) in
            virtual time (``MockClock(autojump_threshold=0)``), one child process per N.
            Peers join in batches through random earlier peers, as above; then one
            provides and a random sample of others looks the key up.

Figures (per scenario and N):
  bootstrap_s         wall time until every peer's join returned (whole swarm)
  bootstrap_virtual_s simulated time of the same (memory only)
  join_p50/p95_ms     one peer's join: bootstrap() (real: wall; memory: virtual)
  cpu_s_per_join      CPU seconds of the whole swarm's processes during the bootstrap,
                      divided by the joins (both sides of every connection count)
  connections_after_join  open connections per peer once every peer has joined
  joins_failed        joins that raised or timed out
  success_rate        lookups that found the provider / lookups attempted
  lookup_p50/p95_ms   one find_providers(key, count=1) (memory: virtual time)
  network_lookup_p50  the same over lookups that had to ask the network: peers among the
                      k = 20 closest to the key hold the record and answer from memory
  hops_mean/max       LookupStats.hops: the longest chain of answers a lookup used
  queries_mean        requests one lookup sent
  rss_per_peer_mb     process RSS / peers in it (real: mean over workers; memory: peak
                      RSS of the child / N); ``marginal``: RSS growth from the idle
                      process (imports done, no peer yet) / peers
Targets: 100% lookup success; p50 <= 20 ms at N = 100 real peers; a 100-peer real swarm
bootstrapped in <= 20 s; 10,000 in-memory peers in <= 2 GB (peak RSS of that process).

Writes <out>/dht.json and prints a table. --quick (real 20, baseline 10, memory 150)
finishes in < 90 s, for CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from p2pnet.core.address import PeerAddress
from p2pnet.core.kad.keys import key_for_task
from p2pnet.dht.node import DhtConfig, DhtNode
from p2pnet.net.host import Host
from p2pnet.net.memory import MemoryNetwork
from p2pnet.simulate.procstats import (
    machine_info,
    pct,
    peak_rss_kb,
    process_cpu_seconds,
    rss_kb,
)
from p2pnet.simulate.workers import JsonLinesWorker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, targets_table

TASK = "dht-bench-task"
LATENCY_S = 0.010  # one way, in-memory network
K = DhtConfig().k

# Bounds on every wait (seconds). The parent gives each reply a deadline; the children
# bound each step and exit on their own after WORKER_LIFETIME whatever happens.
WORKER_START_TIMEOUT = 60.0
WORKER_LIFETIME = 1800.0
REPLY_SLACK = 30.0
P2PNET_JOIN_TIMEOUT = 60.0
P2PNET_LOOKUP_TIMEOUT = 20.0
BASELINE_JOIN_TIMEOUT = 30.0
BASELINE_BOOTSTRAP_DEADLINE = 240.0  # whole swarm
BASELINE_LOOKUP_TIMEOUT = 15.0
BASELINE_LOOKUP_DEADLINE = 90.0  # all lookups of one swarm
PROVIDE_TIMEOUT = 60.0
MEMORY_CHILD_TIMEOUT = 1800.0
MEMORY_GC_THRESHOLDS = (10_000, 10, 10)  # Python's default: (700, 10, 10)
# The join every node of a run uses (``--full-join``: None, a full lookup in every bucket).
JOIN_BUCKET_FILL: int | None = DhtConfig().join_bucket_fill

TARGET_SUCCESS = 1.0
TARGET_P50_MS = 20.0
TARGET_P50_AT = 100
TARGET_BOOTSTRAP_S = 20.0
TARGET_BOOTSTRAP_AT = 100
TARGET_MEMORY_MB = 2048.0
TARGET_MEMORY_AT = 10_000


@dataclass(frozen=True)
class Plan:
    """Sizes and batch widths of one run."""

    real: tuple[int, ...]
    baseline: tuple[int, ...]
    memory: tuple[int, ...]
    real_batch: int
    memory_batch: int
    memory_lookups: int
    baseline_lookups: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls((20,), (10,), (150,), 10, 100, 150, 9)
        return cls((10, 50, 100), (10, 50), (1000, 10_000), 10, 100, 1000, 20)

    @staticmethod
    def workers(n: int) -> int:
        """Worker processes for a real swarm of n peers (2 cores: 2 for small swarms)."""
        return 2 if n <= 30 else 4


# ---------------------------------------------------------------- small helpers


def ms_stats(prefix: str, seconds: Sequence[float], out: dict[str, Any]) -> None:
    """p50 and p95 of ``seconds`` in ms as ``<prefix>_p50_ms``, ``<prefix>_p95_ms``."""
    out[f"{prefix}_p50_ms"] = pct(seconds, 0.50) * 1e3 if seconds else None
    out[f"{prefix}_p95_ms"] = pct(seconds, 0.95) * 1e3 if seconds else None


class LogCounter(logging.Handler):
    """Counts WARNING+ records, by origin (py-libp2p or ours); prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts = {"libp2p": 0, "p2pnet": 0, "other": 0}

    def emit(self, record: logging.LogRecord) -> None:
        from p2pnet.net.logs import LIBP2P_DIR

        if record.pathname.startswith(LIBP2P_DIR) or record.name.startswith("libp2p"):
            self.counts["libp2p"] += 1
        elif record.name.startswith("p2pnet"):
            self.counts["p2pnet"] += 1
        else:
            self.counts["other"] += 1


def count_logs() -> LogCounter:
    """Route every WARNING+ record (py-libp2p's included) into a counter."""
    from p2pnet.net.logs import set_libp2p_log_level

    counter = LogCounter()
    root = logging.getLogger()
    root.handlers[:] = [counter]
    root.setLevel(logging.WARNING)
    set_libp2p_log_level(logging.WARNING)
    return counter


# ---------------------------------------------------------------- real peers: worker side


class P2pnetSwarmlet:
    """p2pnet DhtNodes on open_host hosts, as Peer runs them (maintenance included)."""

    join_timeout = P2PNET_JOIN_TIMEOUT
    lookup_timeout = P2PNET_LOOKUP_TIMEOUT

    def __init__(self) -> None:
        self.addresses: list[PeerAddress] = []
        self.hosts: list[Host] = []
        self.nodes: list[DhtNode] = []

    async def open(self, stack: AsyncExitStack, n: int, seed: int) -> None:
        from p2pnet.net.host import open_host
        from p2pnet.net.identity import generate_identity

        for _ in range(n):
            host = await stack.enter_async_context(open_host(generate_identity()))
            self.hosts.append(host)
            self.addresses.append(_address_of(host.peer_id, host.addrs))

    async def start(self, stack: AsyncExitStack, nursery: trio.Nursery, seed: int) -> None:
        for i, host in enumerate(self.hosts):
            config = DhtConfig(join_bucket_fill=JOIN_BUCKET_FILL)
            node = DhtNode(host, config, rng=random.Random(seed * 1000 + i), nursery=nursery)
            node.start()
            await nursery.start(node.run_maintenance)
            stack.push_async_callback(node.aclose)
            self.nodes.append(node)

    async def join(self, i: int, seed: PeerAddress) -> int:
        return await self.nodes[i].bootstrap([seed])

    async def provide(self, i: int, key: bytes) -> int:
        return await self.nodes[i].provide(key)

    async def find(self, i: int, key: bytes, provider: str) -> dict[str, Any]:
        result = await self.nodes[i].find_providers(key, count=1)
        return {
            "ok": any(p.peer_id == provider for p in result.providers),
            "queries": result.stats.queries,
            "hops": result.stats.hops,
            "local": result.stats.queries == 0,
        }

    def table_sizes(self) -> list[int]:
        return [len(node.table) for node in self.nodes]

    def connections(self) -> int:
        return sum(len(host._raw.get_connected_peers()) for host in self.hosts)


class KadDhtSwarmlet:
    """py-libp2p KadDHT (server mode) on the same hosts: the baseline.

    Join as py-libp2p's examples/kademlia does (connect to the bootstrap peer, add it to
    the routing table), then one explicit ``refresh_routing_table()`` (self lookup plus a
    lookup in every non-empty bucket), which is what its service runs first when started.
    The service loop itself is not started: its periodic refreshes would only add load.
    """

    join_timeout = BASELINE_JOIN_TIMEOUT
    lookup_timeout = BASELINE_LOOKUP_TIMEOUT

    def __init__(self) -> None:
        self.addresses: list[PeerAddress] = []
        self.dhts: list[Any] = []
        self.hosts: list[Any] = []

    async def open(self, stack: AsyncExitStack, n: int, seed: int) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        from p2pnet.net.host import open_host
        from p2pnet.net.identity import generate_identity

        for _ in range(n):
            host = await stack.enter_async_context(open_host(generate_identity()))
            # The same py-libp2p host p2pnet runs on (one connection per peer, no
            # auto-connector), so the baseline differs only in the DHT.
            raw = host._raw
            self.hosts.append(raw)
            self.dhts.append(KadDHT(raw, DHTMode.SERVER))
            self.addresses.append(_address_of(host.peer_id, host.addrs))

    async def join(self, i: int, seed: PeerAddress) -> int:
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        host, dht = self.hosts[i], self.dhts[i]
        info = PeerInfo(ID.from_base58(seed.peer_id), [multiaddr.Multiaddr(a) for a in seed.addrs])
        host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
        await host.connect(info)
        await dht.routing_table.add_peer(info.peer_id)
        await dht.refresh_routing_table()
        return int(dht.get_routing_table_size())

    async def provide(self, i: int, key: bytes) -> int:
        ok = await self.dhts[i].provide(key.hex())
        return 1 if ok else 0

    async def find(self, i: int, key: bytes, provider: str) -> dict[str, Any]:
        dht = self.dhts[i]
        local = bool(dht.provider_store.get_providers(key))
        found = await dht.find_providers(key.hex(), count=1)
        return {
            "ok": any(str(p.peer_id) == provider for p in found),
            "queries": None,
            "hops": None,
            "local": local,
        }

    async def start(self, stack: AsyncExitStack, nursery: trio.Nursery, seed: int) -> None:
        """Nothing runs in the background (see the class docstring)."""

    def table_sizes(self) -> list[int]:
        return [int(d.get_routing_table_size()) for d in self.dhts]

    def connections(self) -> int:
        return sum(len(host.get_connected_peers()) for host in self.hosts)


def _address_of(peer_id: str, addrs: Sequence[str]) -> PeerAddress:
    """The 127.0.0.1 TCP address of a host (open_host listens there only)."""
    transport = [a.partition("/p2p/")[0] for a in addrs]
    return PeerAddress(peer_id, tuple(transport))


async def _timed(fn: Callable[[], Any], timeout: float) -> tuple[bool, float, Any, str | None]:
    """Run ``await fn()`` under ``timeout``: (finished, seconds, value, error)."""
    start = time.perf_counter()
    value: Any = None
    error: str | None = None
    finished = False
    with trio.move_on_after(timeout):
        try:
            value = await fn()
            finished = True
        except Exception as exc:  # a failed step is a measurement, not a crash
            error = f"{type(exc).__name__}: {exc}"[:300]
    if not finished and error is None:
        error = f"timed out after {timeout:g} s"
    return finished, time.perf_counter() - start, value, error


async def worker_main(impl: str, n: int, seed: int) -> None:
    """Run n peers; obey JSON commands on stdin, answer on stdout, one line each."""
    counter = count_logs()
    idle_kb = rss_kb()
    swarm: P2pnetSwarmlet | KadDhtSwarmlet = (
        P2pnetSwarmlet() if impl == "p2pnet" else KadDhtSwarmlet()
    )
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    with trio.move_on_after(WORKER_LIFETIME):
        async with AsyncExitStack() as stack:
            # As Peer does: hosts first, then the nursery of the nodes' background work,
            # so at exit the nodes close, their tasks are cancelled, then hosts stop.
            await swarm.open(stack, n, seed)
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            await swarm.start(stack, nursery, seed)
            reply(
                {
                    "ready": True,
                    "addrs": [[a.peer_id, list(a.addrs)] for a in swarm.addresses],
                    "rss_idle_kb": idle_kb,
                    "rss_kb": rss_kb(),
                }
            )
            while True:
                while b"\n" not in buffer:
                    data = await stdin.receive_some(65536)
                    if not data:  # the parent is gone or done
                        return
                    buffer += data
                line, _, buffer = buffer.partition(b"\n")
                command = json.loads(line)
                kind = command["cmd"]
                if kind == "quit":
                    return
                if kind == "join":
                    reply({"results": await _join_all(swarm, command["joins"])})
                elif kind == "provide":
                    key = bytes.fromhex(command["key"])
                    i = command["i"]
                    ok, seconds, count, error = await _timed(
                        functools.partial(swarm.provide, i, key), PROVIDE_TIMEOUT
                    )
                    reply(
                        {
                            "ok": ok and bool(count),
                            "seconds": seconds,
                            "count": count,
                            "error": error,
                        }
                    )
                elif kind == "find":
                    reply({"results": await _find_all(swarm, command)})
                elif kind == "stats":
                    reply(
                        {
                            "rss_kb": rss_kb(),
                            "rss_idle_kb": idle_kb,
                            "peers": n,
                            "tables": swarm.table_sizes(),
                            "connections": swarm.connections(),
                            "logs": counter.counts,
                            "tasks": trio.lowlevel.current_statistics().tasks_living,
                        }
                    )
                else:
                    reply({"error": f"unknown command {kind!r}"})


async def _join_all(
    swarm: P2pnetSwarmlet | KadDhtSwarmlet, joins: list[list[Any]]
) -> list[dict[str, Any]]:
    """Join every (local index, seed peer ID, seed addrs) at the same time."""
    results: list[dict[str, Any]] = [{} for _ in joins]

    async def one(slot: int, i: int, seed: PeerAddress) -> None:
        ok, seconds, table, error = await _timed(
            functools.partial(swarm.join, i, seed), swarm.join_timeout
        )
        results[slot] = {"i": i, "ok": ok, "seconds": seconds, "table": table, "error": error}

    async with trio.open_nursery() as nursery:
        for slot, (i, peer_id, addrs) in enumerate(joins):
            nursery.start_soon(one, slot, i, PeerAddress(peer_id, tuple(addrs)))
    return results


async def _find_all(
    swarm: P2pnetSwarmlet | KadDhtSwarmlet, command: dict[str, Any]
) -> list[dict[str, Any]]:
    """One lookup after another from each listed local peer, until the deadline."""
    key = bytes.fromhex(command["key"])
    provider: str = command["provider"]
    deadline = time.monotonic() + command["deadline_s"]
    results = []
    for i in command["peers"]:
        if time.monotonic() >= deadline:
            results.append({"i": i, "ok": False, "seconds": None, "error": "phase deadline"})
            continue
        timeout = min(swarm.lookup_timeout, deadline - time.monotonic())
        ok, seconds, found, error = await _timed(
            functools.partial(swarm.find, i, key, provider), timeout
        )
        entry: dict[str, Any] = {"i": i, "seconds": seconds, "error": error}
        entry.update(found if ok else {"ok": False})
        results.append(entry)
    return results


# ---------------------------------------------------------------- real peers: parent side


class Worker(JsonLinesWorker):
    """A worker process (this file with --worker) and its JSON-lines pipe."""

    def __init__(self, impl: str, n: int, seed: int, log_path: Path) -> None:
        self.n = n
        super().__init__(
            [
                sys.executable,
                __file__,
                "--worker",
                impl,
                "--peers",
                str(n),
                "--seed",
                str(seed),
                *_join_flag(),
            ],
            log_path,
        )


def _join_flag() -> list[str]:
    return ["--full-join"] if JOIN_BUCKET_FILL is None else []


def run_real(impl: str, n: int, plan: Plan, seed: int, log_dir: Path) -> dict[str, Any]:
    """Build an n-peer swarm of ``impl`` over worker processes and measure it."""
    rng = random.Random(seed * 7919 + n)
    baseline = impl == "kaddht"
    w = min(Plan.workers(n), n)
    sizes = [len(range(j, n, w)) for j in range(w)]  # peer g lives in worker g % w
    workers = [
        Worker(impl, sizes[j], seed * 100 + j, log_dir / f"{impl}-{n}-worker{j}.log")
        for j in range(w)
    ]
    key = key_for_task(TASK)
    out: dict[str, Any] = {"impl": impl, "n": n, "workers": w}
    try:
        for worker in workers:
            worker.ready = worker.receive(WORKER_START_TIMEOUT)
        addresses: list[PeerAddress] = []
        for g in range(n):
            peer_id, addrs = workers[g % w].ready["addrs"][g // w]
            addresses.append(PeerAddress(peer_id, tuple(addrs)))

        # Bootstrap: peer 0 is alone; the rest join in batches through earlier peers.
        joined = [0]
        join_results: list[dict[str, Any]] = []
        cpu_before = [process_cpu_seconds(worker.proc.pid) for worker in workers]
        started = time.perf_counter()
        deadline = started + (BASELINE_BOOTSTRAP_DEADLINE if baseline else P2PNET_JOIN_TIMEOUT * n)
        order = list(range(1, n))
        for b in range(0, len(order), plan.real_batch):
            batch = order[b : b + plan.real_batch]
            if time.perf_counter() >= deadline:
                join_results += [{"ok": False, "error": "bootstrap deadline"} for _ in batch]
                continue
            per_worker: dict[int, list[list[Any]]] = {}
            for g in batch:
                s = addresses[joined[rng.randrange(len(joined))]]
                per_worker.setdefault(g % w, []).append([g // w, s.peer_id, list(s.addrs)])
            for j, joins in per_worker.items():
                workers[j].send({"cmd": "join", "joins": joins})
            timeout = (BASELINE_JOIN_TIMEOUT if baseline else P2PNET_JOIN_TIMEOUT) + REPLY_SLACK
            for j in per_worker:
                join_results += workers[j].receive(timeout)["results"]
            joined += batch
        out["bootstrap_s"] = time.perf_counter() - started
        cpu_after = [process_cpu_seconds(worker.proc.pid) for worker in workers]
        out["bootstrap_cpu_s"] = sum(cpu_after) - sum(cpu_before)
        out["cpu_s_per_join"] = out["bootstrap_cpu_s"] / max(1, n - 1)
        ok_joins = [r["seconds"] for r in join_results if r.get("ok")]
        out["joins_failed"] = len(join_results) - len(ok_joins)
        ms_stats("join", ok_joins, out)
        errors = sorted({r["error"] for r in join_results if r.get("error")})
        out["join_errors"] = errors[:5]
        joined_stats = [worker.call({"cmd": "stats"}, REPLY_SLACK) for worker in workers]
        out["connections_after_join"] = sum(s["connections"] for s in joined_stats) / n
        out["table_after_join"] = statistics.mean(t for s in joined_stats for t in s["tables"])

        # One provider announces the task key.
        provider = rng.randrange(n)
        reply = workers[provider % w].call(
            {"cmd": "provide", "i": provider // w, "key": key.hex()},
            PROVIDE_TIMEOUT + REPLY_SLACK,
        )
        out["provide_ok"] = bool(reply["ok"])
        out["provide_ms"] = reply["seconds"] * 1e3
        out["provide_count"] = reply["count"]
        out["provide_error"] = reply["error"]

        # Lookups, one at a time in the whole swarm.
        others = [g for g in range(n) if g != provider]
        if baseline:
            sample = rng.sample(others, min(plan.baseline_lookups, len(others)))
            rounds = {"first": sample}
        else:
            rounds = {"first": others, "again": others}
        for name, peers in rounds.items():
            results: list[dict[str, Any]] = []
            phase_end = time.perf_counter() + (
                BASELINE_LOOKUP_DEADLINE if baseline else P2PNET_LOOKUP_TIMEOUT * len(peers)
            )
            for j in range(w):
                mine = [g // w for g in peers if g % w == j]
                if not mine:
                    continue
                budget = max(0.0, phase_end - time.perf_counter())
                reply = workers[j].call(
                    {
                        "cmd": "find",
                        "peers": mine,
                        "key": key.hex(),
                        "provider": addresses[provider].peer_id,
                        "deadline_s": budget,
                    },
                    budget + REPLY_SLACK,
                )
                results += reply["results"]
            lookup_figures(name, results, out)

        stats = [worker.call({"cmd": "stats"}, REPLY_SLACK) for worker in workers]
        out["rss_per_peer_mb"] = statistics.mean(s["rss_kb"] / s["peers"] for s in stats) / 1024
        out["rss_marginal_per_peer_mb"] = (
            statistics.mean((s["rss_kb"] - s["rss_idle_kb"]) / s["peers"] for s in stats) / 1024
        )
        out["rss_worker_mb"] = [round(s["rss_kb"] / 1024, 1) for s in stats]
        tables = [t for s in stats for t in s["tables"]]
        out["table_mean"] = statistics.mean(tables)
        out["table_min"] = min(tables)
        out["tasks_per_peer"] = sum(s["tasks"] for s in stats) / n
        out["connections_per_peer"] = sum(s["connections"] for s in stats) / n
        out["warnings_logged"] = {
            origin: sum(s["logs"][origin] for s in stats) for origin in ("libp2p", "p2pnet")
        }
    finally:
        for worker in workers:
            worker.stop()
    return out


def lookup_figures(name: str, results: list[dict[str, Any]], out: dict[str, Any]) -> None:
    """Success rate, latency, hops and queries of a round of lookups, as ``<name>_*``."""
    attempted = len(results)
    ok = [r for r in results if r.get("ok")]
    out[f"{name}_lookups"] = attempted
    out[f"{name}_success_rate"] = len(ok) / attempted if attempted else None
    timed_out = [r for r in results if r.get("error") and "timed out" in r["error"]]
    out[f"{name}_timeouts"] = len(timed_out)
    out[f"{name}_not_run"] = sum(1 for r in results if r.get("error") == "phase deadline")
    seconds = [r["seconds"] for r in ok]
    ms_stats(f"{name}_lookup", seconds, out)
    network = [r["seconds"] for r in ok if not r.get("local")]
    out[f"{name}_local_answers"] = sum(1 for r in ok if r.get("local"))
    ms_stats(f"{name}_network_lookup", network, out)
    hops = [r["hops"] for r in ok if r.get("hops") is not None and not r.get("local")]
    queries = [r["queries"] for r in ok if r.get("queries") is not None and not r.get("local")]
    out[f"{name}_hops_mean"] = statistics.mean(hops) if hops else None
    out[f"{name}_hops_max"] = max(hops) if hops else None
    out[f"{name}_queries_mean"] = statistics.mean(queries) if queries else None
    errors = sorted({r["error"] for r in results if r.get("error")})
    out[f"{name}_errors"] = errors[:5]


# ---------------------------------------------------------------- in-memory peers


async def memory_main(n: int, batch: int, lookups: int, seed: int) -> dict[str, Any]:
    """Build an n-peer in-memory swarm in virtual time and measure it (child process)."""
    out: dict[str, Any] = {"impl": "p2pnet-memory", "n": n, "batch": batch}
    wall_start = time.perf_counter()
    rng = random.Random(seed)
    rss_start_kb = rss_kb()
    async with MemoryNetwork(latency=LATENCY_S, seed=seed) as network:
        hosts = [network.add_host() for _ in range(n)]
        nodes = [
            DhtNode(
                h,
                DhtConfig(join_bucket_fill=JOIN_BUCKET_FILL),
                rng=random.Random(seed * 100_000 + i),
            )
            for i, h in enumerate(hosts)
        ]
        for node in nodes:
            node.start()
        addresses = [_address_of(h.peer_id, h.addrs) for h in hosts]
        join_virtual: list[float] = []
        failed = 0

        async def join(i: int, through: PeerAddress) -> None:
            nonlocal failed
            start = trio.current_time()
            try:
                with trio.fail_after(P2PNET_JOIN_TIMEOUT):
                    await nodes[i].bootstrap([through])
            except (Exception, trio.TooSlowError):
                failed += 1
                return
            join_virtual.append(trio.current_time() - start)

        wall0, virtual0, cpu0 = time.perf_counter(), trio.current_time(), time.process_time()
        joined = [0]
        for b in range(1, n, batch):
            members = list(range(b, min(n, b + batch)))
            async with trio.open_nursery() as nursery:
                for i in members:
                    nursery.start_soon(join, i, addresses[joined[rng.randrange(len(joined))]])
            joined += members
        out["bootstrap_s"] = time.perf_counter() - wall0
        out["bootstrap_virtual_s"] = trio.current_time() - virtual0
        out["cpu_s_per_join"] = (time.process_time() - cpu0) / max(1, n - 1)
        out["joins_failed"] = failed
        ms_stats("join", join_virtual, out)
        gc.collect()
        out["rss_after_bootstrap_mb"] = rss_kb() / 1024
        out["tasks_per_peer"] = trio.lowlevel.current_statistics().tasks_living / n
        out["streams_opened_per_peer"] = network.streams_opened / n
        out["connections_after_join"] = statistics.mean(len(h.connections()) for h in hosts)
        tables = [len(node.table) for node in nodes]
        out["table_mean"] = statistics.mean(tables)
        out["table_min"] = min(tables)

        key = key_for_task(TASK)
        provider = rng.randrange(n)
        start = trio.current_time()
        with trio.move_on_after(PROVIDE_TIMEOUT):
            out["provide_count"] = await nodes[provider].provide(key)
        out["provide_ok"] = bool(out.get("provide_count"))
        out["provide_ms"] = (trio.current_time() - start) * 1e3

        sample = rng.sample([i for i in range(n) if i != provider], min(lookups, n - 1))
        results: list[dict[str, Any]] = []
        wall1 = time.perf_counter()
        for i in sample:
            start = trio.current_time()
            entry: dict[str, Any] = {"i": i, "ok": False, "error": None}
            try:
                with trio.fail_after(P2PNET_LOOKUP_TIMEOUT):
                    result = await nodes[i].find_providers(key, count=1)
            except (Exception, trio.TooSlowError) as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                entry.update(
                    ok=any(p.peer_id == hosts[provider].peer_id for p in result.providers),
                    queries=result.stats.queries,
                    hops=result.stats.hops,
                    local=result.stats.queries == 0,
                )
            entry["seconds"] = trio.current_time() - start
            results.append(entry)
        out["lookup_wall_ms_mean"] = (time.perf_counter() - wall1) / len(sample) * 1e3
        lookup_figures("first", results, out)
        # Measured before the network stops: stopping cancels every stream handler at
        # once, and their unwinding tracebacks briefly take more memory than the swarm.
        out["rss_peak_mb"] = peak_rss_kb() / 1024
    out["wall_s"] = time.perf_counter() - wall_start
    out["rss_peak_after_stop_mb"] = peak_rss_kb() / 1024
    out["rss_start_mb"] = rss_start_kb / 1024
    out["rss_per_peer_mb"] = out["rss_peak_mb"] / n
    out["rss_marginal_per_peer_mb"] = (out["rss_after_bootstrap_mb"] - out["rss_start_mb"]) / n
    return out


def run_memory(n: int, plan: Plan, seed: int) -> dict[str, Any]:
    """One in-memory swarm in a child process of its own (clean RSS figures)."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            str(n),
            "--batch",
            str(plan.memory_batch),
            "--lookups",
            str(plan.memory_lookups),
            "--seed",
            str(seed),
            *_join_flag(),
        ],
        capture_output=True,
        text=True,
        timeout=MEMORY_CHILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory run at N={n} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- report


def targets(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for scenario in ("real", "memory"):
        for n, r in results[scenario].items():
            rate = r.get("first_success_rate")
            checks.append(
                {
                    "name": f"{scenario} N={n}: lookup success",
                    "value": None if rate is None else rate * 100,
                    "unit": "%",
                    "target": ">= 100",
                    "pass": rate is not None and rate >= TARGET_SUCCESS,
                }
            )
    real_at = results["real"].get(str(TARGET_P50_AT))
    if real_at is not None:
        p50 = real_at["first_lookup_p50_ms"]
        checks.append(
            {
                "name": f"real N={TARGET_P50_AT}: find-by-task p50 (first round)",
                "value": p50,
                "unit": "ms",
                "target": f"<= {TARGET_P50_MS:g}",
                "pass": p50 is not None and p50 <= TARGET_P50_MS,
            }
        )
        net = real_at["first_network_lookup_p50_ms"]
        checks.append(
            {
                "name": f"real N={TARGET_P50_AT}: p50 of lookups that asked the network",
                "value": net,
                "unit": "ms",
                "target": f"<= {TARGET_P50_MS:g}",
                "pass": net is not None and net <= TARGET_P50_MS,
            }
        )
    real_boot = results["real"].get(str(TARGET_BOOTSTRAP_AT))
    if real_boot is not None:
        checks.append(
            {
                "name": f"real N={TARGET_BOOTSTRAP_AT}: swarm bootstrap",
                "value": real_boot["bootstrap_s"],
                "unit": "s",
                "target": f"<= {TARGET_BOOTSTRAP_S:g}",
                "pass": real_boot["bootstrap_s"] <= TARGET_BOOTSTRAP_S
                and real_boot["joins_failed"] == 0,
            }
        )
    mem = results["memory"].get(str(TARGET_MEMORY_AT))
    if mem is not None:
        checks.append(
            {
                "name": f"memory N={TARGET_MEMORY_AT}: peak RSS of the process",
                "value": mem["rss_peak_mb"],
                "unit": "MB",
                "target": f"<= {TARGET_MEMORY_MB:g}",
                "pass": mem["rss_peak_mb"] <= TARGET_MEMORY_MB,
            }
        )
    return checks


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped output (CI logs) gets the width of a wide terminal, not rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    labels = {"real": "p2pnet real", "baseline": "KadDHT real", "memory": "p2pnet memory"}
    rows = [
        (labels[scenario], n, r)
        for scenario in ("real", "baseline", "memory")
        for n, r in report["results"][scenario].items()
    ]

    boot = Table(title="bootstrap and memory (in-memory joins: virtual ms)", title_justify="left")
    for col in (
        "swarm", "N", "procs", "bootstrap s", "virtual s", "CPU s/join", "join p50 ms",
        "join p95 ms", "failed", "table mean", "conns/peer", "RSS/peer MB",
        "marginal MB",
    ):  # fmt: skip
        boot.add_column(col, justify="left" if col == "swarm" else "right")
    for label, n, r in rows:
        boot.add_row(
            label,
            n,
            _fmt(r.get("workers", 1)),
            _fmt(r.get("bootstrap_s")),
            _fmt(r.get("bootstrap_virtual_s")),
            _fmt(r.get("cpu_s_per_join"), 3),
            _fmt(r.get("join_p50_ms"), 0),
            _fmt(r.get("join_p95_ms"), 0),
            _fmt(r.get("joins_failed")),
            _fmt(r.get("table_mean")),
            _fmt(r.get("connections_after_join")),
            _fmt(r.get("rss_per_peer_mb"), 2),
            _fmt(r.get("rss_marginal_per_peer_mb"), 2),
        )
    console.print(boot)

    find = Table(
        title="find-by-task: find_providers(key, count=1) from every peer or a sample "
        "(in-memory: virtual ms)",
        title_justify="left",
    )
    for col in (
        "swarm", "N", "success", "p50 ms", "p95 ms", "local", "network p50", "network p95",
        "hops mean/max", "queries", "again p50", "again p95",
    ):  # fmt: skip
        find.add_column(col, justify="left" if col == "swarm" else "right")
    for label, n, r in rows:
        rate = r.get("first_success_rate")
        success = "-" if rate is None else f"{rate * 100:.1f}% of {r['first_lookups']}"
        find.add_row(
            label,
            n,
            success,
            _fmt(r.get("first_lookup_p50_ms")),
            _fmt(r.get("first_lookup_p95_ms")),
            _fmt(r.get("first_local_answers")),
            _fmt(r.get("first_network_lookup_p50_ms")),
            _fmt(r.get("first_network_lookup_p95_ms")),
            f"{_fmt(r.get('first_hops_mean'))}/{_fmt(r.get('first_hops_max'))}",
            _fmt(r.get("first_queries_mean")),
            _fmt(r.get("again_lookup_p50_ms")),
            _fmt(r.get("again_lookup_p95_ms")),
        )
    console.print(find)

    console.print(targets_table(report["targets"], _fmt))
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']} at "
        f"start, {report['load_average_at_end']} at end; Python {m['python']}, "
        f"libp2p {m['libp2p']}, trio {m['trio']}; {report['date']}; p2pnet at "
        f"{report['git']['commit']}{' (modified)' if report['git']['modified'] else ''}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--quick", action="store_true", help="small swarms (< 90 s), for CI")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only",
        default="real,baseline,memory",
        help="comma-separated scenarios to run (default: all three)",
    )
    parser.add_argument(
        "--real-batch", type=int, help="peers joining at once in a real swarm (default: 10)"
    )
    parser.add_argument(
        "--full-join",
        action="store_true",
        help="join with a full lookup in every bucket (the join before 2026-12)",
    )
    parser.add_argument("--real-sizes", help="comma-separated N of the real swarms")
    parser.add_argument("--memory-sizes", help="comma-separated N of the in-memory swarms")
    parser.add_argument("--worker", choices=("p2pnet", "kaddht"), help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lookups", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global JOIN_BUCKET_FILL
    if args.full_join:
        JOIN_BUCKET_FILL = None
    if args.worker:
        trio.run(worker_main, args.worker, args.peers, args.seed)
        return
    if args.memory_child:
        # Fewer collections of the cyclic GC: with millions of live objects every full
        # collection walks them all, which took ~27% of the wall time of a 1,500-peer
        # simulation (20% less wall time with these thresholds, same peak RSS). Simulated
        # time and results do not change.
        gc.set_threshold(*MEMORY_GC_THRESHOLDS)
        result = trio.run(
            memory_main,
            args.memory_child,
            args.batch,
            args.lookups,
            args.seed,
            clock=MockClock(autojump_threshold=0),
        )
        print(json.dumps(result))
        return

    started = time.perf_counter()
    plan = Plan.for_mode(args.quick)
    if args.real_batch:
        plan = dataclasses.replace(plan, real_batch=args.real_batch)
    if args.real_sizes:
        plan = dataclasses.replace(plan, real=tuple(int(n) for n in args.real_sizes.split(",")))
    if args.memory_sizes:
        plan = dataclasses.replace(plan, memory=tuple(int(n) for n in args.memory_sizes.split(",")))
    machine = machine_info()
    log_dir = args.out / "dht-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {"real": {}, "baseline": {}, "memory": {}}
    phases: dict[str, float] = {}
    only = set(args.only.split(","))
    for n in plan.real if "real" in only else ():
        t = time.perf_counter()
        results["real"][str(n)] = run_real("p2pnet", n, plan, args.seed, log_dir)
        phases[f"real_{n}"] = time.perf_counter() - t
    for n in plan.baseline if "baseline" in only else ():
        t = time.perf_counter()
        results["baseline"][str(n)] = run_real("kaddht", n, plan, args.seed, log_dir)
        phases[f"baseline_{n}"] = time.perf_counter() - t
    for n in plan.memory if "memory" in only else ():
        t = time.perf_counter()
        results["memory"][str(n)] = run_memory(n, plan, args.seed)
        phases[f"memory_{n}"] = time.perf_counter() - t
    report = {
        "benchmark": "dht",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "seed": args.seed,
        "duration_s": round(time.perf_counter() - started, 1),
        "phase_s": {k: round(v, 1) for k, v in phases.items()},
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git": git_state(),
        "network": "127.0.0.1 and in-memory only",
        "plan": {
            "real_sizes": plan.real,
            "baseline_sizes": plan.baseline,
            "memory_sizes": plan.memory,
            "workers": {str(n): min(Plan.workers(n), n) for n in plan.real + plan.baseline},
            "real_join_batch": plan.real_batch,
            "memory_join_batch": plan.memory_batch,
            "memory_lookups": plan.memory_lookups,
            "baseline_lookups": plan.baseline_lookups,
            "memory_latency_one_way_s": LATENCY_S,
            "dht_config": {
                "k": K,
                "alpha": DhtConfig().alpha,
                "join_bucket_fill": JOIN_BUCKET_FILL,
            },
        },
        "units": {
            "real latency": "ms, wall clock",
            "memory latency": "ms of virtual time (10 ms one-way latency, MockClock)",
            "rss": "MB = 2^20 bytes",
        },
        "results": results,
        "targets": targets(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dht.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'dht.json'} in {report['duration_s']} s")


if __name__ == "__main__":
    main()
