"""Benchmark p2pnet model invocation against its baselines, all measured in one run.

Usage: python scripts/bench/invoke.py [--models build/models] [--out build/bench] [--quick]

Everything runs on 127.0.0.1. The serving side runs in a child process (this file
with --serve-child), so that client and server do not share one CPU core; it serves
the same models twice: as a p2pnet Peer (TCP + Noise + Yamux via py-libp2p) and as
a plain trio TCP server. Both servers are the same InvokeServer, and the TCP client
is the same InvokeClient with only the transport swapped, so "floor" is the cost of
our own code (codec, framing, thread offload, trio) without libp2p.

Figures:
  local          OnnxModel.run_sync on iris in this process (no I/O, no thread)
  local_async    await OnnxModel.run on iris, as the server runs it: on the event loop
                 once the model has shown its runs take microseconds (InlineRuns)
  local_thread   the same with every run in a worker thread (the hop it saves)
  warm           p2pnet call of iris to the child process on an open connection and stream
  warm_same_process  the same with both peers in this process and one trio loop
  cold           a fresh client Peer per sample: dial, Noise, Yamux, stream, call
                 (timed from invoke start to result; Peer start and stop not timed)
  cold_dial_stream, cold_new_stream_call
                 the same in two parts, with another fresh Peer per sample: opening
                 an invoke stream (dial, Noise, Yamux, multistream-select), then a call
                 on a new stream of that connection
  floor_warm     the same call over a plain TCP connection (same client/server code)
  floor_cold     the same with a new TCP connection per call
  receipts_on    warm_same_process between two peers with ledgers (the provider signs and
                 stores a usage receipt, the caller checks and stores it), in blocks
                 alternating with receipts_off (two peers without ledgers)
  receipt_floor  what no implementation of receipts can skip, timed between the same
                 calls: one Ed25519 signature, its verification, and one committed ledger
                 insert on each side (what receipts_on adds beyond it: hashing the
                 tensors, building and checking the receipt, credit)
  throughput     identity model, float32 tensors of 1, 16 and 64 MiB; bytes counted =
                 request tensor + reply tensor (2x the tensor size); MB = 10^6 bytes

Writes <out>/invoke.json and prints a table. Targets: warm p50 minus local p50 <= 1 ms;
>= 300 MB/s for the 64 MiB tensor; receipts_on p50 minus receipts_off p50 <= 0.15 ms.
--quick cuts iterations so the run takes < 60 s.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, pct, start_child, stop_child, targets_table

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.identity import Identity
from p2pnet.core.pricing import REFERENCE_PRICE
from p2pnet.core.receipts import Receipt, Signer, sign_receipt, verify_receipt
from p2pnet.errors import ConnectionLostError
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.ledger import Ledger
from p2pnet.ledger.signed import stored_form
from p2pnet.ledger.store import ZERO_HASH
from p2pnet.net.host import READ_SIZE
from p2pnet.peer import Peer
from p2pnet.runtime.onnx_model import OnnxModel
from p2pnet.runtime.served import InlineRuns

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("iris", "identity")
SIZES_MIB = (1, 16, 64)
CALL_TIMEOUT = 120.0  # seconds, per call
CHILD_START_TIMEOUT = 120.0  # seconds for the serving child to start listening
CHILD_LIFETIME = 900.0  # the serving child exits after this long whatever happens
TARGET_WARM_OVERHEAD_MS = 1.0
TARGET_64MIB_MB_S = 300.0
FLOOR_MODEL_ID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
TARGET_RECEIPTS_ADDED_MS = 0.15  # both sides' receipt work, ledger writes included


@dataclass(frozen=True)
class Plan:
    """How many samples of each kind."""

    local: int
    warmup: int
    warm: int
    same_process: int
    cold: int
    floor_cold: int
    bulk_reps: dict[int, int]

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(200, 20, 100, 100, 5, 20, {1: 5, 16: 2, 64: 1})
        return cls(5000, 100, 1000, 500, 50, 300, {1: 30, 16: 8, 64: 5})


# ---------------------------------------------------------------- models


def ensure_models(models_dir: Path) -> dict[str, Path]:
    """The benchmark's model files, built with scripts/build_models.py if any is missing."""
    paths = {name: models_dir / f"{name}.onnx" for name in MODELS}
    if all(p.is_file() for p in paths.values()):
        return paths
    spec = importlib.util.spec_from_file_location(
        "build_models", REPO_ROOT / "scripts" / "build_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: dict[str, Path] = module.build_all(models_dir)
    return {name: Path(built[name]) for name in MODELS}


# ---------------------------------------------------------------- plain TCP transport


class TcpStream:
    """A trio TCP connection with the interface of p2pnet.net.host.Stream."""

    def __init__(self, sock: trio.SocketStream, peer_id: str) -> None:
        self._sock = sock
        self.peer_id = peer_id

    async def read(self) -> bytes:
        try:
            return await self._sock.receive_some(READ_SIZE)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(f"tcp read: {exc!r}") from None

    async def write(self, data: bytes) -> None:
        try:
            await self._sock.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(f"tcp write: {exc!r}") from None

    async def close(self) -> None:
        await self._sock.aclose()

    async def reset(self) -> None:
        await self._sock.aclose()


class TcpHost:
    """The one method of p2pnet.net.host.Host that InvokeClient uses, over plain TCP."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open_stream(self, peer: PeerAddress, protocol: str) -> TcpStream:
        sock = await trio.open_tcp_stream("127.0.0.1", self.port)
        return TcpStream(sock, peer.peer_id)


FLOOR_PEER = PeerAddress("plain-tcp-floor")


# ---------------------------------------------------------------- serving child


async def child_main(models_dir: Path) -> None:
    """Serve iris and identity over p2pnet and over plain TCP until stdin closes."""
    paths = ensure_models(models_dir)
    async with Peer() as peer:
        ids = {name: peer.serve(path).model_id for name, path in paths.items()}
        server = peer.services.invoke_server

        async def handle_tcp(sock: trio.SocketStream) -> None:
            try:
                await server.handle_stream(TcpStream(sock, "tcp-client"))
            except Exception as exc:  # one bad connection must not end the benchmark server
                print(f"plain TCP handler failed: {exc!r}", file=sys.stderr)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handle_tcp, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            info = {"addr": peer.addrs[0], "tcp_port": port, "model_ids": ids}
            print(json.dumps(info), flush=True)
            with trio.move_on_after(CHILD_LIFETIME):
                # The parent closes our stdin when it is done (or dies).
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # type: ignore[call-arg]
            nursery.cancel_scope.cancel()


class CpuMeter:
    """CPU seconds spent by this process and the serving child between start() and stop()."""

    def __init__(self, child_pid: int) -> None:
        self.pids = (os.getpid(), child_pid)
        self._start: list[float | None] = []

    def start(self) -> None:
        self._start = [process_cpu_seconds(pid) for pid in self.pids]

    def stop(self) -> float | None:
        total = 0.0
        for pid, before in zip(self.pids, self._start, strict=True):
            after = process_cpu_seconds(pid)
            if before is None or after is None:
                return None
            total += after - before
        return total


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- measuring


class ReceiptFloor:
    """The irreducible work of one receipt, on its own: sign it (provider), verify it
    (caller), and record it in two ledgers (each a committed SQLite insert)."""

    def __init__(self, folder: Path) -> None:
        self.provider = Identity.from_seed(bytes(range(32)))
        self.caller = Identity.from_seed(bytes(range(1, 33)))
        self.signer = Signer.of(self.provider.signing_key)
        self.ledgers = [
            Ledger.open(folder / f"floor-{who}.sqlite3", owner=who.peer_id, synchronous="NORMAL")
            for who in (self.provider, self.caller)
        ]
        self.seq, self.prev = 0, ZERO_HASH

    def once(self) -> float:
        """Seconds taken by the next receipt of the chain."""
        self.seq += 1
        digest = hashlib.sha256(self.seq.to_bytes(8, "little")).digest()
        receipt = Receipt(
            provider=self.provider.peer_id,
            caller=self.caller.peer_id,
            model_id=FLOOR_MODEL_ID,
            record_hash=digest,
            request_hash=digest,
            result_hash=digest,
            runtime="onnxruntime",
            units=1001,
            seq=self.seq,
            prev_hash=self.prev,
            issued_at=self.seq,
        )
        start = time.perf_counter()
        envelope = sign_receipt(receipt, self.signer)
        verify_receipt(envelope, provider=self.provider.peer_id, caller=self.caller.peer_id)
        stored = stored_form(receipt, envelope)
        self.ledgers[0].record_receipt(stored, role="provider")
        self.ledgers[1].record_receipt(stored, role="caller")
        elapsed = time.perf_counter() - start
        self.prev = stored.receipt_hash
        return elapsed

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()


async def timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Durations in seconds of ``n`` sequential awaits of ``call()``."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


def latency(name: str, samples: list[float], figures: dict[str, float]) -> None:
    figures[f"{name}_p50_ms"] = pct(samples, 0.50) * 1e3
    figures[f"{name}_p95_ms"] = pct(samples, 0.95) * 1e3


async def run(
    plan: Plan, paths: dict[str, Path], child: dict[str, Any], pid: int
) -> dict[str, Any]:
    figures: dict[str, float] = {}
    samples: dict[str, int] = {}
    cpu = CpuMeter(pid)
    iris_id = child["model_ids"]["iris"]
    ident_id = child["model_ids"]["identity"]
    addr = child["addr"]
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    iris_inputs = {"x": x}

    # (a) local onnxruntime call, and the same through the worker thread the server uses.
    model = OnnxModel.load(paths["iris"])
    for _ in range(plan.warmup):
        model.run_sync(iris_inputs)
    local = []
    for _ in range(plan.local):
        start = time.perf_counter()
        model.run_sync(iris_inputs)
        local.append(time.perf_counter() - start)
    latency("local", local, figures)
    samples["local"] = len(local)

    async def local_async() -> None:
        await model.run(iris_inputs)

    await timed(plan.warmup, local_async)
    latency("local_async", await timed(plan.local // 4, local_async), figures)
    samples["local_async"] = plan.local // 4
    on_loop, model.inline = model.inline, InlineRuns(max_s=0)
    await timed(plan.warmup, local_async)
    latency("local_thread", await timed(plan.local // 4, local_async), figures)
    samples["local_thread"] = plan.local // 4
    model.inline = on_loop

    async with Peer() as client:

        async def warm_call() -> None:
            await client.invoke(addr, iris_id, iris_inputs, timeout=CALL_TIMEOUT)

        # (b) warm call to the other process, with the CPU both processes spend on it.
        await timed(plan.warmup, warm_call)
        cpu.start()
        latency("warm", await timed(plan.warm, warm_call), figures)
        spent = cpu.stop()
        samples["warm"] = plan.warm
        if spent is not None:
            figures["warm_cpu_ms_per_call"] = spent / plan.warm * 1e3

        # Throughput through p2pnet, after one 16 MiB call grows the Yamux windows.
        rng = np.random.default_rng(0)
        tensors = {mib: rng.random(mib << 18, dtype=np.float32) for mib in SIZES_MIB}

        async def bulk_call(arr: np.ndarray) -> None:
            out = await client.invoke(addr, ident_id, {"x": arr}, timeout=CALL_TIMEOUT)
            if out["y"].shape != arr.shape:
                raise RuntimeError("identity returned a different shape")

        await bulk_call(tensors[16])
        for mib in SIZES_MIB:
            reps = plan.bulk_reps[mib]
            cpu.start()
            durations = await timed(reps, functools.partial(bulk_call, tensors[mib]))
            spent = cpu.stop()
            moved = 2 * tensors[mib].nbytes
            figures[f"p2pnet_{mib}mib_mb_s"] = moved / statistics.median(durations) / 1e6
            samples[f"p2pnet_{mib}mib"] = reps
            if mib == 64 and spent is not None:
                figures["p2pnet_64mib_cpu_s_per_call"] = spent / reps
        out = await client.invoke(addr, ident_id, {"x": tensors[1]}, timeout=CALL_TIMEOUT)
        if not np.array_equal(out["y"], tensors[1]):
            raise RuntimeError("identity over p2pnet returned different data")

    # (d) the floor: same client and server code over plain TCP.
    tcp = TcpHost(child["tcp_port"])
    floor = InvokeClient(tcp)  # type: ignore[arg-type]
    try:

        async def floor_call() -> None:
            await floor.invoke(FLOOR_PEER, iris_id, iris_inputs, timeout=CALL_TIMEOUT)

        await timed(plan.warmup, floor_call)
        latency("floor_warm", await timed(plan.warm, floor_call), figures)
        samples["floor_warm"] = plan.warm

        async def floor_bulk(arr: np.ndarray) -> None:
            out = await floor.invoke(FLOOR_PEER, ident_id, {"x": arr}, timeout=CALL_TIMEOUT)
            if out["y"].shape != arr.shape:
                raise RuntimeError("identity returned a different shape")

        await floor_bulk(tensors[16])
        for mib in SIZES_MIB:
            reps = plan.bulk_reps[mib]
            durations = await timed(reps, functools.partial(floor_bulk, tensors[mib]))
            moved = 2 * tensors[mib].nbytes
            figures[f"floor_{mib}mib_mb_s"] = moved / statistics.median(durations) / 1e6
            samples[f"floor_{mib}mib"] = reps
    finally:
        await floor.aclose()

    async def floor_cold_call() -> None:
        fresh = InvokeClient(tcp)  # type: ignore[arg-type]
        try:
            await fresh.invoke(FLOOR_PEER, iris_id, iris_inputs, timeout=CALL_TIMEOUT)
        finally:
            await fresh.aclose()

    await timed(2, floor_cold_call)
    latency("floor_cold", await timed(plan.floor_cold, floor_cold_call), figures)
    samples["floor_cold"] = plan.floor_cold

    # (c) cold: a fresh client Peer per sample; only the invoke is timed.
    cold: list[float] = []
    for i in range(plan.cold + 1):
        async with Peer() as fresh:
            start = time.perf_counter()
            await fresh.invoke(addr, iris_id, iris_inputs, timeout=CALL_TIMEOUT)
            if i:  # the first one warms imports and caches up
                cold.append(time.perf_counter() - start)
    latency("cold", cold, figures)
    samples["cold"] = plan.cold

    # (c') where a cold call's time goes: a fresh Peer opens an invoke stream (dial,
    # Noise, Yamux, multistream-select; the provider runs identify on the new connection
    # meanwhile) and closes it; then calls, on a new stream of that connection.
    address = parse_peer_address(addr)
    dial_stream: list[float] = []
    new_stream_call: list[float] = []
    for i in range(plan.cold + 1):
        async with Peer() as fresh:
            start = time.perf_counter()
            stream = await fresh.services.host.open_stream(address, INVOKE_PROTOCOL)
            opened = time.perf_counter()
            await stream.close()
            called = time.perf_counter()
            await fresh.invoke(address, iris_id, iris_inputs, timeout=CALL_TIMEOUT)
            if i:
                dial_stream.append(opened - start)
                new_stream_call.append(time.perf_counter() - called)
    latency("cold_dial_stream", dial_stream, figures)
    latency("cold_new_stream_call", new_stream_call, figures)

    # (b') both peers in this process, one trio loop.
    async with Peer() as server, Peer() as client:
        server.serve(paths["iris"])
        local_addr = server.addrs[0]

        async def same_call() -> None:
            await client.invoke(local_addr, iris_id, iris_inputs, timeout=CALL_TIMEOUT)

        await timed(plan.warmup, same_call)
        latency("warm_same_process", await timed(plan.same_process, same_call), figures)
        samples["warm_same_process"] = plan.same_process

    # (b'') usage receipts: the same warm call between two peers with ledgers (the
    # provider signs and stores a receipt, the caller checks and stores it) and between
    # two without, in alternating blocks so that both see the same machine.
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            Peer(ledger=Path(tmp) / "provider.sqlite3") as provider,
            Peer(ledger=Path(tmp) / "caller.sqlite3") as paying,
            Peer() as free_provider,
            Peer() as free_caller,
        ):
            provider.serve(paths["iris"], price=REFERENCE_PRICE)
            free_provider.serve(paths["iris"])
            with_addr, without_addr = provider.addrs[0], free_provider.addrs[0]

            async def with_receipt() -> None:
                await paying.invoke(with_addr, iris_id, iris_inputs, timeout=CALL_TIMEOUT)

            async def without_receipt() -> None:
                await free_caller.invoke(without_addr, iris_id, iris_inputs, timeout=CALL_TIMEOUT)

            receipt_floor = ReceiptFloor(Path(tmp))
            await timed(plan.warmup, with_receipt)
            await timed(plan.warmup, without_receipt)
            on: list[float] = []
            off: list[float] = []
            floor_s: list[float] = []
            block = max(1, plan.same_process // 10)
            for _ in range(10):
                on += await timed(block, with_receipt)
                off += await timed(block, without_receipt)
                for _ in range(block):  # between calls, as a peer's receipt work runs
                    await without_receipt()
                    floor_s.append(receipt_floor.once())
            receipt_floor.close()
            latency("receipts_on", on, figures)
            latency("receipts_off", off, figures)
            latency("receipt_floor", floor_s, figures)
            samples["receipts"] = len(on)
            accountant = provider.services.accountant
            assert accountant is not None and accountant.stats.receipts_issued >= len(on)
    added = figures["receipts_on_p50_ms"] - figures["receipts_off_p50_ms"]
    figures["receipts_added_p50_ms"] = added

    figures["warm_overhead_p50_ms"] = figures["warm_p50_ms"] - figures["local_p50_ms"]
    targets = [
        {
            "name": "warm overhead over local call, p50",
            "value": figures["warm_overhead_p50_ms"],
            "unit": "ms",
            "target": f"<= {TARGET_WARM_OVERHEAD_MS:g}",
            "pass": figures["warm_overhead_p50_ms"] <= TARGET_WARM_OVERHEAD_MS,
        },
        {
            "name": "throughput, 64 MiB tensor",
            "value": figures["p2pnet_64mib_mb_s"],
            "unit": "MB/s",
            "target": f">= {TARGET_64MIB_MB_S:g}",
            "pass": figures["p2pnet_64mib_mb_s"] >= TARGET_64MIB_MB_S,
        },
        {
            "name": "usage receipts added to a warm call, p50",
            "value": figures["receipts_added_p50_ms"],
            "unit": "ms",
            "target": f"<= {TARGET_RECEIPTS_ADDED_MS:g}",
            "pass": figures["receipts_added_p50_ms"] <= TARGET_RECEIPTS_ADDED_MS,
        },
    ]
    return {"figures": figures, "samples": samples, "targets": targets}


# ---------------------------------------------------------------- report


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = report["figures"]
    console = Console()
    lat = Table(title="p2pnet invoke latency (iris, 1x4 float32), ms", title_justify="left")
    for col in ("call", "p50", "p95", "what it is"):
        lat.add_column(col, justify="left" if col in ("call", "what it is") else "right")
    rows = [
        ("local", "OnnxModel.run_sync, no I/O"),
        ("local_async", "await OnnxModel.run (on the loop once seen tiny)"),
        ("local_thread", "the same, every run in a worker thread"),
        ("floor_warm", "same client/server code, plain TCP, open connection"),
        ("warm", "p2pnet, server in another process, open stream"),
        ("warm_same_process", "p2pnet, both peers in one trio loop"),
        ("receipts_off", "the same, peers without ledgers (alternating blocks)"),
        ("receipts_on", "the same, peers with ledgers: receipt signed, checked, stored"),
        ("receipt_floor", "sign + verify + a committed ledger insert on each side"),
        ("floor_cold", "plain TCP, new connection per call"),
        ("cold", "p2pnet, new client Peer per call (dial+Noise+Yamux+stream)"),
        ("cold_dial_stream", "  of which: dial and open the first stream (another Peer)"),
        ("cold_new_stream_call", "  and: a new stream on that connection, and the call"),
    ]
    for name, what in rows:
        lat.add_row(name, f"{f[name + '_p50_ms']:.3f}", f"{f[name + '_p95_ms']:.3f}", what)
    console.print(lat)

    thr = Table(
        title="throughput, identity model; bytes = request + reply tensors; MB = 10^6 B",
        title_justify="left",
    )
    for col in ("tensor", "p2pnet MB/s", "plain TCP MB/s", "p2pnet / TCP"):
        thr.add_column(col, justify="right")
    for mib in SIZES_MIB:
        p, t = f[f"p2pnet_{mib}mib_mb_s"], f[f"floor_{mib}mib_mb_s"]
        thr.add_row(f"{mib} MiB", f"{p:.1f}", f"{t:.1f}", f"{p / t:.2f}")
    console.print(thr)

    console.print(targets_table(report["targets"], lambda v: f"{v:.3f}"))
    extra = []
    if "warm_cpu_ms_per_call" in f:
        extra.append(f"CPU per warm call (both processes): {f['warm_cpu_ms_per_call']:.3f} ms")
    if "p2pnet_64mib_cpu_s_per_call" in f:
        extra.append(f"CPU per 64 MiB call (both): {f['p2pnet_64mib_cpu_s_per_call']:.3f} s")
    m = report["machine"]
    extra.append(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, libp2p {m['libp2p']}, "
        f"onnxruntime {m['onnxruntime']}, {report['date']}"
    )
    for line in extra:
        console.print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--quick", action="store_true", help="few iterations (< 60 s), for CI")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        trio.run(child_main, args.models)
        return

    started = time.perf_counter()
    paths = ensure_models(args.models)
    plan = Plan.for_mode(args.quick)
    machine = machine_info("onnxruntime", "numpy", "msgpack")
    proc, child = start_child(__file__, args.models, CHILD_START_TIMEOUT)
    try:
        result = trio.run(run, plan, paths, child, proc.pid)
    finally:
        stop_child(proc)
    report = {
        "benchmark": "invoke",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "network": "127.0.0.1 only",
        "units": {
            "latency": "ms",
            "throughput": "MB/s, MB = 10^6 bytes, counting request + reply tensor bytes",
            "tensor sizes": "MiB (2^20 bytes) of float32",
        },
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "invoke.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'invoke.json'} in {report['duration_s']} s")


if __name__ == "__main__":
    main()
