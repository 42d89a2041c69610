"""A p2pnet peer driven over stdin/stdout with JSON lines, for tests and benchmarks that run
peers inside network namespaces (``ip netns exec NS python tests/netns/agent.py ...``).

Prints ``{"event": "ready", "peer_id": ..., "addrs": [...], "reachability": ...}`` once
started and announced, then answers one JSON line per command line:

    {"op": "info"}
    {"op": "find", "task": T}                        -> offers' peer IDs and addresses
    {"op": "call", "task": T, "x": [[...]]}          -> peer, path before/after, ms
    {"op": "wait_direct", "peer": P, "timeout": S}   -> direct, ms
    {"op": "rtt", "task": T, "n": N}                 -> p50/p90 of N calls (iris input)
    {"op": "throughput", "task": T, "mib": M, "n": N} -> MB/s through the identity model
    {"op": "disconnect", "peer": P}                  -> closes every connection to P

Errors come back as {"error": "..."}; stdin closing stops the peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import trio

from p2pnet.errors import P2PNetError
from p2pnet.net.logs import set_libp2p_log_level
from p2pnet.net.nat_config import NatConfig
from p2pnet.peer import Peer

IRIS = [[5.1, 3.5, 1.4, 0.2]]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# peer ID -> the paths our connection to it took, in order ("relayed", "direct", None),
# and when each was first seen (time.monotonic() seconds).
HISTORY: dict[str, list[str | None]] = {}
SEEN_AT: dict[str, list[float]] = {}


async def watch_paths(peer: Peer) -> None:
    """Record every change of path to every peer (polled every 10 ms)."""
    network = peer.host._raw.get_network()
    while True:
        for pid in [str(p) for p in network.connections] + list(HISTORY):
            path = peer.path(pid)
            seen = HISTORY.setdefault(pid, [])
            if (not seen and path is not None) or (seen and seen[-1] != path):
                seen.append(path)
                SEEN_AT.setdefault(pid, []).append(time.monotonic())
        await trio.sleep(0.01)


async def handle(peer: Peer, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "info":
        return {"peer_id": peer.peer_id, "addrs": peer.addrs, "reachability": peer.reachability}
    if op == "find":
        offers = await peer.find(task=cmd["task"])
        return {
            "offers": [{"peer": o.record.peer_id, "addrs": list(o.address.addrs)} for o in offers]
        }
    if op == "call":
        x = np.asarray(cmd.get("x", IRIS), np.float32)
        started = time.perf_counter()
        offer, _ = await peer.call_with_offer({"x": x}, task=cmd["task"], timeout=30.0)
        ms = (time.perf_counter() - started) * 1000
        provider = offer.record.peer_id
        return {
            "peer": provider,
            "path": peer.path(provider),
            "ms": ms,
            "history": HISTORY.get(provider, []),
        }
    if op == "wait_direct":
        nat = peer.host.nat
        assert nat is not None
        started = time.perf_counter()
        direct = await nat.wait_direct(cmd["peer"], float(cmd.get("timeout", 10.0)))
        return {
            "direct": direct,
            "ms": (time.perf_counter() - started) * 1000,
            "path": peer.path(cmd["peer"]),
            "history": HISTORY.get(cmd["peer"], []),
        }
    if op == "rtt":
        x = np.asarray(cmd.get("x", IRIS), np.float32)
        offer, _ = await peer.call_with_offer({"x": x}, task=cmd["task"], timeout=30.0)
        times = []
        for _ in range(int(cmd.get("n", 50))):
            started = time.perf_counter()
            await peer.invoke(offer.address, offer.record.model_id, {"x": x}, timeout=30.0)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return {
            "p50_ms": statistics.median(times),
            "p90_ms": times[int(0.9 * (len(times) - 1))],
            "n": len(times),
            "path": peer.path(offer.record.peer_id),
        }
    if op == "throughput":
        n_floats = int(cmd.get("mib", 4)) * (1 << 20) // 4
        x = np.random.default_rng(0).random(n_floats, dtype=np.float32)
        rounds = int(cmd.get("n", 3))
        offer, _ = await peer.call_with_offer({"x": x[:16]}, task=cmd["task"], timeout=60.0)
        started = time.perf_counter()
        for _ in range(rounds):
            await peer.invoke(offer.address, offer.record.model_id, {"x": x}, timeout=120.0)
        seconds = time.perf_counter() - started
        return {
            "mb_per_s": 2 * x.nbytes * rounds / seconds / 1e6,
            "path": peer.path(offer.record.peer_id),
        }
    if op == "history":
        times = SEEN_AT.get(cmd["peer"], [])
        return {
            "paths": HISTORY.get(cmd["peer"], []),
            "ms": [(t - times[0]) * 1000 for t in times],
        }
    if op == "disconnect":
        from libp2p.peer.id import ID

        network = peer.host._raw.get_network()
        for conn in list(network.get_connections(ID.from_base58(cmd["peer"]))):
            await conn.close()
        return {"path": peer.path(cmd["peer"])}
    return {"error": f"unknown op {op!r}"}


async def main(args: argparse.Namespace) -> None:
    nat = NatConfig(
        relay_service=args.relay,
        hole_punching=not args.no_hole_punching,
        reachability=args.reachability,
    )
    peer = Peer(listen=args.listen, bootstrap=args.bootstrap, nat=nat if not args.no_nat else None)
    for path, task in zip(args.serve, args.task, strict=True):
        peer.serve(path, tasks=[task])
    started = time.perf_counter()
    async with peer, trio.open_nursery() as nursery:
        nursery.start_soon(watch_paths, peer)
        if peer.models:
            await peer.announce()
        emit(
            {
                "event": "ready",
                "peer_id": peer.peer_id,
                "addrs": peer.addrs,
                "reachability": peer.reachability,
                "startup_ms": (time.perf_counter() - started) * 1000,
            }
        )
        stdin = trio.wrap_file(sys.stdin)
        while True:
            line = await stdin.readline()
            if not line:
                nursery.cancel_scope.cancel()
                return
            try:
                cmd = json.loads(line)
                emit(await handle(peer, cmd))
            except (P2PNetError, AssertionError, KeyError, ValueError) as exc:
                emit({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--serve", action="append", default=[])
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--no-hole-punching", action="store_true")
    parser.add_argument("--no-nat", action="store_true")
    parser.add_argument("--reachability", default="auto")
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args()
    import logging

    logging.basicConfig(
        level=logging.INFO if args.v else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    set_libp2p_log_level(logging.INFO if args.v else logging.CRITICAL + 1)
    if args.v:
        logging.getLogger("p2pnet").setLevel(logging.DEBUG)
    trio.run(main, args)
