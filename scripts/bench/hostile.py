"""Benchmark p2pnet under hostile peers and callers, each attack against its baseline
measured in the same run (issue 12).

Usage: python scripts/bench/hostile.py [--models build/models] [--out build/bench]
                                       [--budget 30] [--quick]

Everything runs on 127.0.0.1 with real libp2p peers.

Wire attacks (the serving peer is a child process, this file with --serve-child, serving
iris with the default limits, so that its RSS and its latency are its own). An honest
caller in this process calls iris warm (open connection, pooled stream): first alone
(the baseline), then while a hostile peer sends one message again and again, each on a
new stream, reading the error reply:

  string_2e28    a 128-byte Invoke declaring a string tensor of shape [2**28]
  model_300k     an Invoke whose model is a 300,000-character string
  nested_100k    a head nested 100,000 msgpack arrays deep
  strings_65536  a head holding a string tensor of 65,536 one-character strings
                 (WireLimits.max_string_elements, the most a head may hold)

For each: the time until the error reply arrives, its code, its length in characters,
the server's RSS growth (VmRSS of the child, sampled every few ms during the attack,
after one round of every message warmed the allocator), and the honest caller's p50/p95
during the attack.

Stream holding: a peer opens ResourceLimits.inbound_streams_per_peer (128) + N streams,
each holding one byte of a frame; how many the server refused at once (its own count and
what the attacker saw), and the honest caller's p50/p95 while the rest are held.

Hostile providers (Peers in this process: a bootstrap, an honest and a hostile provider
of iris under one task, and the caller; plus a `p2pnet peer` process serving the
same task, SIGKILLed for the last figure). Each figure uses a fresh ModelFinder, so that
no provider is in backoff from an earlier one:

  stalled        call_offers([never answers, honest], budget): time to the honest result
                 (expected about budget / 2: the first attempt gets half the time left);
                 baseline: call_offers([honest])
  silent         a fifth provider joins that never answers describe: finder.search(task)
                 time, and whether Search.unanswered names it; finder.call(task) time
                 with it, against the same before it joined (baseline)
  dead           call_offers([SIGKILLed, honest]) repeated for a few seconds: calls per
                 second, against call_offers([honest]) (baseline). Issue 12 measured 51
                 calls/s before the fix against 657 with only the honest offer.

Writes <out>/hostile.json and prints tables. Targets: honest p50 during each wire attack
within 50 ms of its baseline; no wire attack grows server RSS by more than the 4 MiB
frame limit; the stalled provider's caller has its result within the budget; dead
provider calls/s at least half the baseline. --quick (2 s budget, few calls) takes about
20 s.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info, pct, stop_child, targets_table

from p2pnet.core.address import parse_peer_address
from p2pnet.core.messages import ErrorReply, MessageReader, Result, WireLimits
from p2pnet.core.tensor import TENSOR_EXT, encode_inline_tensor
from p2pnet.discovery.describe import DESCRIBE_PROTOCOL
from p2pnet.discovery.service import FinderPolicy, ModelFinder, Offer
from p2pnet.errors import ConnectionLostError, P2PNetError, PeerUnreachableError
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message
from p2pnet.localswarm import PeerProcess, start_peer
from p2pnet.net.interfaces import ByteStream
from p2pnet.net.resources import DEFAULT_RESOURCES
from p2pnet.peer import Peer
from p2pnet.simulate.hostile_messages import hostile_invokes

TASK = "bench-hostile-iris"
IRIS_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
LIMITS = WireLimits()
# The first byte of an invoke frame's length (a varint with more bytes to come): the
# server's reader holds it and waits for the rest.
ONE_BYTE_OF_A_FRAME = b"\x85"
CALL_TIMEOUT = 30.0  # seconds, per honest call
CHILD_START_TIMEOUT = 120.0
CHILD_LIFETIME = 900.0  # the serving child exits after this long whatever happens
RSS_SAMPLE_INTERVAL = 0.002  # seconds between two reads of the server's VmRSS
TARGET_P50_DELTA_MS = 50.0
TARGET_RSS_GROWTH = LIMITS.max_frame_size
TARGET_DEAD_RATIO = 0.5


@dataclass(frozen=True)
class Plan:
    """How much of each measurement."""

    warmup: int  # honest calls before any figure
    baseline: int  # honest calls alone
    during: int  # honest calls during each attack (at least)
    min_rounds: int  # attack messages sent during each attack (at least)
    extra_streams: int  # streams over the per-peer limit
    budget: float  # seconds, a call's budget with a stalled provider first
    describe_timeout: float  # seconds, the finder's describe phase
    task_calls: int  # finder.call(task=...) samples, with and without a silent provider
    dead_seconds: float  # seconds of calls through a fixed offer list, and of baseline

    @classmethod
    def for_mode(cls, quick: bool, budget: float | None) -> Plan:
        if quick:
            return cls(10, 30, 30, 3, 8, budget or 2.0, 1.0, 1, 1.0)
        return cls(50, 300, 200, 10, 32, budget or 30.0, 3.0, 5, 3.0)


# ---------------------------------------------------------------- models


def ensure_iris(models_dir: Path) -> Path:
    """iris.onnx, built with scripts/build_models.py if missing."""
    path = models_dir / "iris.onnx"
    if path.is_file():
        return path
    spec = importlib.util.spec_from_file_location(
        "build_models", REPO_ROOT / "scripts" / "build_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build_all(models_dir)["iris"])


# ---------------------------------------------------------------- serving child


async def child_main(models_dir: Path) -> None:
    """Serve iris with the default limits; answer "stats" lines on stdin with the resource
    limits' counts; exit when stdin closes."""
    async with Peer() as peer:
        model_id = peer.serve(ensure_iris(models_dir)).model_id
        print(json.dumps({"addr": peer.addrs[0], "model_id": model_id}), flush=True)
        limited = peer.services.limited_host
        with trio.move_on_after(CHILD_LIFETIME):
            while line := await trio.to_thread.run_sync(sys.stdin.readline):
                if line.strip() == "stats":
                    stats = limited.stats
                    print(
                        json.dumps(
                            {
                                "refused_streams": dict(stats.refused_streams),
                                "stalled_streams": stats.stalled_streams,
                                "streams_held": limited.ledger.streams,
                            }
                        ),
                        flush=True,
                    )


class ServerChild:
    """The serving child process: its address, model ID, RSS and resource counts."""

    def __init__(self, models_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", "--models", str(models_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        info = self._line(CHILD_START_TIMEOUT)
        if info is None:
            self.stop()
            raise SystemExit("the serving child process did not start (see its error above)")
        self.addr: str = info["addr"]
        self.model_id: str = info["model_id"]

    def _line(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def rss(self) -> int:
        """The child's resident memory, bytes (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/PID/status")

    async def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats = await trio.to_thread.run_sync(self._line, 30.0)
        if stats is None:
            raise RuntimeError("the serving child did not report its stats")
        return stats

    def stop(self) -> None:
        stop_child(self.proc)


# ---------------------------------------------------------------- hostile messages


# ---------------------------------------------------------------- figures


def latency(samples: list[float]) -> dict[str, float]:
    """p50, p95 and max of durations in seconds, in ms."""
    return {
        "n": len(samples),
        "p50_ms": pct(samples, 0.50) * 1e3,
        "p95_ms": pct(samples, 0.95) * 1e3,
        "max_ms": max(samples) * 1e3,
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def ended(stream: ByteStream) -> None:
    """Return once the server ends ``stream`` (closed or reset)."""
    try:
        while await stream.read():
            pass
    except ConnectionLostError:
        pass


# ---------------------------------------------------------------- wire attacks


async def wire_attacks(plan: Plan, server: ServerChild) -> dict[str, Any]:
    iris_row = msgpack.ExtType(TENSOR_EXT, encode_inline_tensor(IRIS_ROW))
    messages = hostile_invokes(server.model_id, iris_row, LIMITS)
    address = parse_peer_address(server.addr)
    out: dict[str, Any] = {"attacks": {}}
    async with Peer() as honest, Peer() as hostile:

        async def honest_call() -> None:
            outputs = await honest.invoke(
                server.addr, server.model_id, {"x": IRIS_ROW}, timeout=CALL_TIMEOUT
            )
            if outputs["label"].tolist() != [0]:
                raise RuntimeError("iris gave a wrong answer")

        async def send(data: bytes) -> tuple[float, ErrorReply | Result | None]:
            started = time.perf_counter()
            stream = await hostile.host.open_stream(address, INVOKE_PROTOCOL)
            try:
                await stream.write(data)
                reply = await read_message(stream, MessageReader(LIMITS))
            except ConnectionLostError:
                reply = None
            finally:
                await stream.reset()
            assert reply is None or isinstance(reply, ErrorReply | Result)
            return time.perf_counter() - started, reply

        for _ in range(plan.warmup):
            await honest_call()
        out["baseline"] = latency([await timed(honest_call) for _ in range(plan.baseline)])
        out["rss_at_start_mib"] = server.rss() / 2**20
        for _, data in messages.values():  # one round warms the allocators up
            await send(data)
        out["rss_after_warmup_mib"] = server.rss() / 2**20

        async def under_attack(data: bytes) -> dict[str, Any]:
            """Honest calls while ``data`` is sent again and again; the figures."""
            during: list[float] = []
            replies: list[tuple[float, ErrorReply | Result | None]] = []
            stop = trio.Event()
            rss_before = server.rss()
            rss_peak = rss_before

            async def attack() -> None:
                while not stop.is_set():
                    replies.append(await send(data))

            async def sample_rss() -> None:
                nonlocal rss_peak
                while not stop.is_set():
                    rss_peak = max(rss_peak, server.rss())
                    await trio.sleep(RSS_SAMPLE_INTERVAL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                nursery.start_soon(sample_rss)
                while len(during) < plan.during or len(replies) < plan.min_rounds:
                    during.append(await timed(honest_call))
                stop.set()
            rss_peak = max(rss_peak, server.rss())
            codes = sorted({r.code if isinstance(r, ErrorReply) else repr(r) for _, r in replies})
            first = replies[0][1]
            honest_figures = latency(during)
            return {
                "message_bytes": len(data),
                "rounds": len(replies),
                "reply_ms_p50": pct([t for t, _ in replies], 0.5) * 1e3,
                "reply_ms_max": max(t for t, _ in replies) * 1e3,
                "reply_codes": codes,
                "reply_chars": len(first.message) if isinstance(first, ErrorReply) else None,
                "reply_message": first.message[:200] if isinstance(first, ErrorReply) else None,
                "rss_before_mib": rss_before / 2**20,
                "rss_peak_mib": rss_peak / 2**20,
                "rss_growth_mib": (rss_peak - rss_before) / 2**20,
                "honest": honest_figures,
                "honest_p50_delta_ms": honest_figures["p50_ms"] - out["baseline"]["p50_ms"],
                "honest_p95_delta_ms": honest_figures["p95_ms"] - out["baseline"]["p95_ms"],
            }

        for name, (what, data) in messages.items():
            out["attacks"][name] = {"what": what, **await under_attack(data)}
        out["rss_at_end_mib"] = server.rss() / 2**20
    return out


# ---------------------------------------------------------------- stream holding


async def stream_holding(plan: Plan, server: ServerChild) -> dict[str, Any]:
    address = parse_peer_address(server.addr)
    limit = DEFAULT_RESOURCES.inbound_streams_per_peer
    opened = limit + plan.extra_streams
    before = await server.stats()
    async with Peer() as honest, Peer() as attacker:

        async def honest_call() -> None:
            await honest.invoke(server.addr, server.model_id, {"x": IRIS_ROW}, timeout=CALL_TIMEOUT)

        for _ in range(plan.warmup):
            await honest_call()
        baseline = [await timed(honest_call) for _ in range(plan.baseline)]

        ended_early = 0
        refused = trio.Event()
        refused_at: list[float] = []
        started = time.perf_counter()

        def note_end() -> None:
            nonlocal ended_early
            ended_early += 1
            refused_at.append(time.perf_counter() - started)
            if ended_early >= plan.extra_streams:
                refused.set()

        async def hold(stream: ByteStream) -> None:
            await ended(stream)
            note_end()

        async with trio.open_nursery() as nursery:
            for _ in range(opened):
                try:
                    stream = await attacker.host.open_stream(address, INVOKE_PROTOCOL)
                    await stream.write(ONE_BYTE_OF_A_FRAME)
                except (PeerUnreachableError, ConnectionLostError):
                    note_end()  # refused before the open or the write completed
                    continue
                nursery.start_soon(hold, stream)
            opening_s = time.perf_counter() - started
            with trio.move_on_after(30):  # a safety net: the refused streams end at once
                await refused.wait()
            during = [await timed(honest_call) for _ in range(plan.during)]
            after = await server.stats()
            nursery.cancel_scope.cancel()  # the attacker gives up its held streams

    refused_by_server = sum(after["refused_streams"].values()) - sum(
        before["refused_streams"].values()
    )
    base, hold_figures = latency(baseline), latency(during)
    return {
        "limit_per_peer": limit,
        "opened": opened,
        "opening_s": opening_s,
        "refused_by_server": refused_by_server,
        "refused_by_scope": after["refused_streams"],
        "ended_before_honest_calls": ended_early,
        "refused_within_s": max(refused_at) if refused_at else None,
        "held_at_server": after["streams_held"],
        "baseline": base,
        "honest": hold_figures,
        "honest_p50_delta_ms": hold_figures["p50_ms"] - base["p50_ms"],
    }


# ---------------------------------------------------------------- hostile providers


async def drain(stream: ByteStream) -> None:
    """Read the request and never answer."""
    try:
        while await stream.read():
            pass
    except ConnectionLostError:
        pass


def fresh_finder(peer: Peer, describe_timeout: float) -> ModelFinder:
    """A finder of ``peer``'s services with no provider statistics yet."""
    s = peer.services
    return ModelFinder(
        s.dht, s.describer, s.invokers, s.publisher, FinderPolicy(describe_timeout=describe_timeout)
    )


async def providers(plan: Plan, iris: Path, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(Peer())
        honest, hostile, caller = [
            await stack.enter_async_context(Peer(bootstrap=[boot.addrs[0]])) for _ in range(3)
        ]
        for provider in (honest, hostile):
            provider.serve(iris, tasks=[TASK])
            await provider.announce()
        dead: PeerProcess = await trio.to_thread.run_sync(
            lambda: start_peer(
                ["--serve", str(iris), "--task", TASK, "--bootstrap", boot.addrs[0]],
                identity=tmp / "dead.key",
            )
        )
        try:
            names = {honest.peer_id: "honest", hostile.peer_id: "hostile", dead.peer_id: "dead"}
            offers: dict[str, Offer] = {}
            with trio.fail_after(60):
                while len(offers) < 3:
                    found = await fresh_finder(caller, plan.describe_timeout).find(task=TASK)
                    offers = {
                        names[o.record.peer_id]: o for o in found if o.record.peer_id in names
                    }

            async def call_offers(finder: ModelFinder, order: list[str]) -> tuple[float, Any]:
                failures: list[tuple[Offer, P2PNetError]] = []
                started = time.perf_counter()
                offer, outputs = await finder.call_offers(
                    [offers[n] for n in order], {"x": IRIS_ROWS}, plan.budget, failures
                )
                if outputs["label"].tolist() != [0, 2]:
                    raise RuntimeError("iris gave a wrong answer")
                return time.perf_counter() - started, (names[offer.record.peer_id], failures)

            # Stalled: a provider that reads the request and never answers, ranked first.
            honest_alone = [
                (await call_offers(fresh_finder(caller, plan.describe_timeout), ["honest"]))[0]
                for _ in range(5)
            ]
            hostile.host.set_stream_handler(INVOKE_PROTOCOL, drain)
            took, (answered_by, failures) = await call_offers(
                fresh_finder(caller, plan.describe_timeout), ["hostile", "honest"]
            )
            hostile.services.limited_host.set_stream_handler(
                INVOKE_PROTOCOL, hostile.services.invoke_server.handle_stream
            )
            out["stalled"] = {
                "budget_s": plan.budget,
                "result_s": took,
                "answered_by": answered_by,
                "stalled_error": failures[0][1].code if failures else None,
                "stalled_error_message": failures[0][1].message[:200] if failures else None,
                "baseline_ms": statistics.median(honest_alone) * 1e3,
            }

            # Silent on describe: search and call by task, against all answering.
            async def by_task() -> float:
                finder = fresh_finder(caller, plan.describe_timeout)
                started = time.perf_counter()
                _, outputs = await finder.call({"x": IRIS_ROWS}, task=TASK, timeout=plan.budget)
                if outputs["label"].tolist() != [0, 2]:
                    raise RuntimeError("iris gave a wrong answer")
                return time.perf_counter() - started

            call_baseline = [await by_task() for _ in range(plan.task_calls)]
            # A provider of the task that never answers describe joins (the caller has no
            # stream to it yet, so every describe it gets is a new stream it leaves).
            silent = await stack.enter_async_context(Peer(bootstrap=[boot.addrs[0]]))
            silent.serve(iris, tasks=[TASK])
            silent.host.set_stream_handler(DESCRIBE_PROTOCOL, drain)
            await silent.announce()
            finder = fresh_finder(caller, plan.describe_timeout)
            started = time.perf_counter()
            search = await finder.search(task=TASK, timeout=plan.budget)
            search_s = time.perf_counter() - started
            call_silent = [await by_task() for _ in range(plan.task_calls)]
            out["silent"] = {
                "describe_timeout_s": plan.describe_timeout,
                "describe_grace_s": finder.policy.describe_grace,
                "search_s": search_s,
                "unanswered_names_it": silent.peer_id in search.unanswered,
                "unanswered": len(search.unanswered),
                "offers": len(search.offers),
                "call_ms": statistics.median(call_silent) * 1e3,
                "call_baseline_ms": statistics.median(call_baseline) * 1e3,
            }

            # Dead: a fixed offer list [dead, honest], after a SIGKILL.
            async def calls_per_second(order: list[str]) -> dict[str, Any]:
                finder = fresh_finder(caller, plan.describe_timeout)
                calls = 0
                with_failure: list[float] = []  # durations of the calls that tried the dead
                started = time.perf_counter()
                while time.perf_counter() - started < plan.dead_seconds:
                    took, (_, failures) = await call_offers(finder, order)
                    calls += 1
                    if failures:
                        with_failure.append(took)
                elapsed = time.perf_counter() - started
                return {
                    "calls_per_s": calls / elapsed,
                    "calls": calls,
                    "dead_provider_tried": len(with_failure),
                    "calls_trying_it_ms": [t * 1e3 for t in with_failure],
                }

            baseline = await calls_per_second(["honest"])
            await trio.to_thread.run_sync(dead.kill)
            measured = await calls_per_second(["dead", "honest"])
            out["dead"] = {
                "seconds": plan.dead_seconds,
                **measured,
                "baseline_calls_per_s": baseline["calls_per_s"],
                "baseline_calls": baseline["calls"],
                "ratio": measured["calls_per_s"] / baseline["calls_per_s"],
            }
        finally:
            await trio.to_thread.run_sync(dead.stop)
    return out


# ---------------------------------------------------------------- report


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, attack in report["wire"]["attacks"].items():
        out.append(
            {
                "name": f"honest p50 during {name}, over baseline",
                "value": attack["honest_p50_delta_ms"],
                "unit": "ms",
                "target": f"<= {TARGET_P50_DELTA_MS:g}",
                "pass": attack["honest_p50_delta_ms"] <= TARGET_P50_DELTA_MS,
            }
        )
        out.append(
            {
                "name": f"server RSS growth during {name}",
                "value": attack["rss_growth_mib"],
                "unit": "MiB",
                "target": f"<= {TARGET_RSS_GROWTH / 2**20:g}",
                "pass": attack["rss_growth_mib"] * 2**20 <= TARGET_RSS_GROWTH,
            }
        )
    stalled = report["providers"]["stalled"]
    out.append(
        {
            "name": "result with a stalled provider first",
            "value": stalled["result_s"],
            "unit": "s",
            "target": f"<= {stalled['budget_s']:g}",
            "pass": stalled["answered_by"] == "honest"
            and stalled["result_s"] <= stalled["budget_s"],
        }
    )
    dead = report["providers"]["dead"]
    out.append(
        {
            "name": "calls/s with a dead provider first, / baseline",
            "value": dead["ratio"],
            "unit": "",
            "target": f">= {TARGET_DEAD_RATIO:g}",
            "pass": dead["ratio"] >= TARGET_DEAD_RATIO,
        }
    )
    return out


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    wire = report["wire"]
    base = wire["baseline"]
    table = Table(
        title=f"wire attacks on a serving peer (another process); honest warm call alone: "
        f"p50 {base['p50_ms']:.2f} ms, p95 {base['p95_ms']:.2f} ms",
        title_justify="left",
    )
    for column in (
        "attack", "bytes", "sent", "reply ms p50", "reply ms max", "code", "reply chars",
        "RSS +MiB", "honest p50", "honest p95", "p50 - base",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("attack", "code") else "right")
    for name, a in wire["attacks"].items():
        table.add_row(
            name, f"{a['message_bytes']:,}", str(a["rounds"]), f"{a['reply_ms_p50']:.1f}",
            f"{a['reply_ms_max']:.1f}", ",".join(a["reply_codes"]), str(a["reply_chars"]),
            f"{a['rss_growth_mib']:.2f}", f"{a['honest']['p50_ms']:.2f}",
            f"{a['honest']['p95_ms']:.2f}", f"{a['honest_p50_delta_ms']:+.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"server RSS {wire['rss_at_start_mib']:.1f} MiB at start, "
        f"{wire['rss_after_warmup_mib']:.1f} MiB after one round of each message (not "
        f"counted above), {wire['rss_at_end_mib']:.1f} MiB at the end"
    )

    s = report["streams"]
    table = Table(title="stream holding: one byte of a frame per stream", title_justify="left")
    for column in (
        "opened", "limit", "refused (server)", "ended early (attacker)",
        "honest p50 base", "honest p50 during", "honest p95 base", "during",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_row(
        str(s["opened"]), str(s["limit_per_peer"]), str(s["refused_by_server"]),
        str(s["ended_before_honest_calls"]), f"{s['baseline']['p50_ms']:.2f}",
        f"{s['honest']['p50_ms']:.2f}", f"{s['baseline']['p95_ms']:.2f}",
        f"{s['honest']['p95_ms']:.2f}",
    )  # fmt: skip
    console.print(table)

    p = report["providers"]
    table = Table(title="hostile providers", title_justify="left")
    for column in ("case", "measured", "baseline", "note"):
        table.add_column(column, justify="left" if column in ("case", "note") else "right")
    st, si, de = p["stalled"], p["silent"], p["dead"]
    table.add_row(
        "never answers, ranked first", f"{st['result_s']:.2f} s",
        f"{st['baseline_ms']:.1f} ms", f"budget {st['budget_s']:g} s; {st['stalled_error']}",
    )  # fmt: skip
    table.add_row(
        "silent on describe: search", f"{si['search_s']:.2f} s", "",
        f"describe timeout {si['describe_timeout_s']:g} s; named: {si['unanswered_names_it']}",
    )  # fmt: skip
    table.add_row(
        "silent on describe: call by task", f"{si['call_ms']:.0f} ms",
        f"{si['call_baseline_ms']:.0f} ms", f"grace {si['describe_grace_s']:g} s",
    )  # fmt: skip
    table.add_row(
        "dead (SIGKILL), fixed offer list", f"{de['calls_per_s']:.0f} calls/s",
        f"{de['baseline_calls_per_s']:.0f} calls/s",
        f"dead tried {de['dead_provider_tried']} times in {de['calls']} calls",
    )  # fmt: skip
    console.print(table)

    console.print(targets_table(report["targets"], lambda v: f"{v:.2f}"))
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']} at start; "
        f"Python {m['python']}, libp2p {m['libp2p']}; {report['date']}; p2pnet at "
        f"{report['git']['commit']}{' (modified)' if report['git']['modified'] else ''}"
    )


async def run(plan: Plan, models_dir: Path, iris: Path, tmp: Path) -> dict[str, Any]:
    server = await trio.to_thread.run_sync(ServerChild, models_dir)
    try:
        wire = await wire_attacks(plan, server)
        streams = await stream_holding(plan, server)
    finally:
        await trio.to_thread.run_sync(server.stop)
    return {"wire": wire, "streams": streams, "providers": await providers(plan, iris, tmp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument(
        "--budget", type=float, default=None,
        help="seconds a call has with a stalled provider first (default 30, --quick 2)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small budget, few calls (~20 s)")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        trio.run(child_main, args.models)
        return

    started = time.monotonic()
    plan = Plan.for_mode(args.quick, args.budget)
    machine = machine_info("onnxruntime", "numpy", "msgpack")
    iris = ensure_iris(args.models)
    with tempfile.TemporaryDirectory(prefix="p2pnet-bench-") as tmp:
        figures = trio.run(run, plan, args.models, iris, Path(tmp))
    report: dict[str, Any] = {
        "benchmark": "hostile",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": machine,
        "git": git_state(),
        "network": "127.0.0.1 only",
        "limits": {
            "max_frame_size": LIMITS.max_frame_size,
            "max_string_elements": LIMITS.max_string_elements,
            "inbound_streams_per_peer": DEFAULT_RESOURCES.inbound_streams_per_peer,
        },
        **figures,
    }
    report["targets"] = targets(report)
    report["load_average_at_end"] = list(os.getloadavg())
    report["seconds"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'hostile.json'} in {report['seconds']:.1f} s")


if __name__ == "__main__":
    main()
