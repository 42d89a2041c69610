"""Benchmark the calls per second a provider serves, with dynamic batching off and on,
both measured in one run.

Usage: python scripts/bench/throughput.py [--models build/models] [--out build/bench]
       [--quick] [--seconds 5] [--batch 32] [--batch-delay-ms 2]

Everything runs on 127.0.0.1. The provider is a child process (this file with
--serve-child): a Peer (TCP + Noise + Yamux via py-libp2p) serving digits (float32
[N, 64], one row per call) and, when built, the emotion model (text string [N], one
message per call; scripts/build_cs_models.py), with its default two concurrent runs
per model. Two such children run side by side: one without batching ("off", the
baseline), one with ``Batching(max_batch=--batch, max_delay_ms=--batch-delay-ms)``
("on"); each cell is measured against one, then at once against the other.

One caller Peer in this process keeps 1, 8 and 64 calls in flight (as many tasks, each
calling again as soon as its last call returned) for ``--seconds`` per cell, after a
warm-up; it keeps up to 64 idle streams to the provider for reuse (``idle_streams``),
one per call in flight. Figures per model, mode and number in flight: calls/s (calls completed over
the window), p50 and p99 latency of the calls, and (batching on) rows per batch, from
the provider's own counters.

Both processes share the machine's cores (the caller's libp2p work competes with the
provider's): the load average at the start is in the report.

Also, as a floor without any network: the same model in this process, 64 tasks calling
``run`` concurrently, off (``OnnxModel``) and on (``BatchedModel``) — what batching
changes in the model's own cost.

Writes <out>/throughput.json and prints a table. Target: batching on serves >= 3x the
calls/s of batching off at 64 calls in flight on digits.
--quick: 1 and 8 in flight, 0.5 s windows (< 60 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, machine_info, pct, stop_child, targets_table
from invoke import process_cpu_seconds

from p2pnet.core.batching import Batching
from p2pnet.core.messages import Invoke, MessageReader, Result, encode_message
from p2pnet.peer import Peer
from p2pnet.runtime.batching import BatchedModel
from p2pnet.runtime.onnx_model import OnnxModel

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("digits", "emotion")
CALL_TIMEOUT = 60.0  # seconds, per call
CHILD_START_TIMEOUT = 120.0
CHILD_LIFETIME = 900.0  # the serving child exits after this long whatever happens
TARGET_SPEEDUP = 3.0
MESSAGES = (
    "my order never arrived and I am furious",
    "thanks so much, the replacement works perfectly",
    "how do I change the email on my account?",
    "I was charged twice this month, please fix it",
)


def model_paths(models_dir: Path) -> dict[str, Path]:
    """digits (built with scripts/build_models.py if missing) and emotion if present."""
    digits = models_dir / "digits.onnx"
    if not digits.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "build_models", REPO_ROOT / "scripts" / "build_models.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build_all(models_dir)
    paths = {"digits": digits}
    if (models_dir / "emotion.onnx").is_file():
        paths["emotion"] = models_dir / "emotion.onnx"
    return paths


def inputs_for(name: str, i: int) -> dict[str, np.ndarray]:
    """The inputs of call ``i`` of a model: one row."""
    if name == "digits":
        rng = np.random.default_rng(i % 64)
        return {"x": rng.uniform(0, 16, (1, 64)).astype(np.float32)}
    return {"text": np.array([MESSAGES[i % len(MESSAGES)]], dtype=object)}


# ---------------------------------------------------------------- serving child


async def child_main(models_dir: Path, batch: int, delay_ms: float) -> None:
    """Serve the models (batched when ``batch`` > 0) until stdin closes; a "stats" line
    on stdin is answered with each model's batch counters as one JSON line."""
    paths = model_paths(models_dir)
    batching = Batching(batch, delay_ms) if batch > 0 else None
    async with Peer() as peer:
        ids = {name: peer.serve(path, batching=batching).model_id for name, path in paths.items()}
        print(json.dumps({"addr": peer.addrs[0], "model_ids": ids}), flush=True)
        with trio.move_on_after(CHILD_LIFETIME):
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)  # type: ignore[call-arg]
                if not line:
                    break
                stats = {
                    name: model.stats.to_dict()
                    for name, mid in ids.items()
                    if isinstance(model := peer.models[mid], BatchedModel)
                }
                print(json.dumps(stats), flush=True)


class Child:
    """The provider process."""

    def __init__(self, models_dir: Path, batch: int, delay_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", "--models", str(models_dir),
             "--batch", str(batch), "--batch-delay-ms", str(delay_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.info = self._line(CHILD_START_TIMEOUT)

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise SystemExit("the serving child process did not answer (see its error above)")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._line(30)

    def stop(self) -> None:
        stop_child(self.proc)


# ---------------------------------------------------------------- measuring


async def load(
    call: Any,
    name: str,
    in_flight: int,
    seconds: float,
    warmup: float,
    pids: tuple[int, ...] = (),
) -> dict[str, float]:
    """Keep ``in_flight`` calls going for ``warmup`` then ``seconds`` seconds; the calls
    completed in the window: calls/s, p50 and p99 latency (ms), and with ``pids`` the
    CPU those processes spent in the window per call (ms)."""
    latencies: list[float] = []
    start_at = trio.current_time() + warmup
    stop_at = start_at + seconds
    cpu: list[float] = []

    def cpu_now() -> float | None:
        readings = [process_cpu_seconds(pid) for pid in pids]
        return None if None in readings else sum(r for r in readings if r is not None)

    async def meter() -> None:
        await trio.sleep_until(start_at)
        before = cpu_now()
        await trio.sleep_until(stop_at)
        after = cpu_now()
        if before is not None and after is not None:
            cpu.append(after - before)

    async def worker(k: int) -> None:
        i = k
        while trio.current_time() < stop_at:
            inputs = inputs_for(name, i)
            started = trio.current_time()
            await call(inputs)
            ended = trio.current_time()
            if start_at <= started and ended <= stop_at:
                latencies.append(ended - started)
            i += in_flight

    async with trio.open_nursery() as nursery:
        if pids:
            nursery.start_soon(meter)
        for k in range(in_flight):
            nursery.start_soon(worker, k)
    elapsed = seconds
    figures = {
        "calls": len(latencies),
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
    }
    if cpu and latencies:
        figures["cpu_ms_per_call"] = cpu[0] / len(latencies) * 1e3
    return figures


async def measure_peer(
    children: dict[str, Child], names: list[str], concurrency: tuple[int, ...], seconds: float
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """model -> mode -> in flight -> figures, against the running ``children`` (by mode),
    the two modes measured one after the other for each cell, so that a change in the
    machine's load between cells touches both alike."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    # Streams for every call in flight kept for reuse: with the default 8, the streams
    # of a burst of replies beyond 8 are closed, and each new one costs ~10 ms of CPU.
    async with Peer(idle_streams=max(concurrency)) as caller:
        for name in names:
            for n in concurrency:
                for mode, child in children.items():
                    addr, model_id = child.info["addr"], child.info["model_ids"][name]

                    async def call(
                        inputs: dict[str, np.ndarray], addr: str = addr, model_id: str = model_id
                    ) -> None:
                        await caller.invoke(addr, model_id, inputs, timeout=CALL_TIMEOUT)

                    before = child.stats().get(name)
                    pids = (os.getpid(), child.proc.pid)
                    cell = await load(call, name, n, seconds, min(1.0, seconds / 2), pids)
                    after = child.stats().get(name)
                    if before is not None and after is not None:
                        batches = after["batches"] - before["batches"]
                        rows = after["rows"] - before["rows"]
                        cell["rows_per_batch"] = rows / max(1, batches)
                    out.setdefault(name, {}).setdefault(mode, {})[str(n)] = cell
    return out


async def measure_local(
    paths: dict[str, Path], policy: Batching, seconds: float
) -> dict[str, dict[str, float]]:
    """The floor without a network: 64 tasks calling the model in this process, off
    and on: calls/s."""
    out: dict[str, dict[str, float]] = {}
    for name, path in paths.items():
        plain = OnnxModel.load(path)
        batched = BatchedModel(OnnxModel.load(path), policy)
        for mode, model in (("off", plain), ("on", batched)):

            async def call(inputs: dict[str, np.ndarray], model: Any = model) -> None:
                await model.run(inputs, timeout=CALL_TIMEOUT)

            cell = await load(call, name, 64, seconds, warmup=min(1.0, seconds / 2))
            out.setdefault(name, {})[f"{mode}_calls_per_s"] = cell["calls_per_s"]
        await batched.wait_idle(30)
    return out


def components(path: Path, repeats: int) -> dict[str, float]:
    """What one digits call costs in parts this process can time alone (ms, medians):
    the model's run on one row, its run per row in a batch of 32, and the invoke codec
    (encode and decode the request and the reply)."""
    model = OnnxModel.load(path)
    one = inputs_for("digits", 0)
    batch = {"x": np.concatenate([inputs_for("digits", i)["x"] for i in range(32)])}

    def timed(fn: Any) -> float:
        for _ in range(repeats // 10):
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return pct(samples, 0.5) * 1e3

    outputs = model.run_sync(one)

    def codec() -> None:
        for message in (Invoke(1, model.model_id, one, 30_000), Result(1, outputs)):
            reader = MessageReader()
            for frame in encode_message(message).frames():
                reader.receive_data(frame)
            assert reader.next_message() is not None

    return {
        "model_run_ms": timed(lambda: model.run_sync(one)),
        "model_run_per_row_in_32_ms": timed(lambda: model.run_sync(batch)) / 32,
        "codec_ms": timed(codec),
    }


# ---------------------------------------------------------------- report


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, modes in report["peer"].items():
        table = Table(
            title=f"{name}: one row per call, caller and provider on 127.0.0.1 (libp2p)",
            title_justify="left",
        )
        for col in ("in flight", "off calls/s", "on calls/s", "on / off", "off p50 ms",
                    "on p50 ms", "off p99 ms", "on p99 ms", "rows/batch",
                    "off CPU ms/call", "on CPU ms/call"):  # fmt: skip
            table.add_column(col, justify="right")
        for n, off in modes["off"].items():
            on = modes["on"][n]
            table.add_row(
                n,
                f"{off['calls_per_s']:.0f}",
                f"{on['calls_per_s']:.0f}",
                f"{on['calls_per_s'] / off['calls_per_s']:.2f}",
                f"{off['p50_ms']:.2f}",
                f"{on['p50_ms']:.2f}",
                f"{off['p99_ms']:.2f}",
                f"{on['p99_ms']:.2f}",
                f"{on.get('rows_per_batch', 0):.1f}",
                f"{off.get('cpu_ms_per_call', math.nan):.3f}",
                f"{on.get('cpu_ms_per_call', math.nan):.3f}",
            )
        console.print(table)
    local = Table(title="the model alone, 64 tasks in this process: calls/s", title_justify="left")
    for col in ("model", "off", "on", "on / off"):
        local.add_column(col, justify="right")
    for name, cell in report["local"].items():
        off, on = cell["off_calls_per_s"], cell["on_calls_per_s"]
        local.add_row(name, f"{off:.0f}", f"{on:.0f}", f"{on / off:.2f}")
    console.print(local)
    parts = report["components"]
    console.print(
        f"digits, per call: model run {parts['model_run_ms']:.4f} ms alone, "
        f"{parts['model_run_per_row_in_32_ms']:.4f} ms per row in a batch of 32; invoke codec "
        f"{parts['codec_ms']:.4f} ms; CPU per call through the network at {report['top']} in "
        f"flight (caller + provider): {parts['cpu_off_ms']:.3f} ms off, {parts['cpu_on_ms']:.3f} "
        f"ms on. Batching can save at most the model's run per call (a model this small runs "
        f"on the event loop, without a worker-thread hop, batched or not): on / off <= "
        f"{parts['bound']:.2f} at this CPU per call, whatever the batch size."
    )
    console.print(targets_table(report["targets"], lambda v: f"{v:.2f}"))
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load at start {report['load_at_start']}, "
        f"Python {m['python']}, libp2p {m['libp2p']}, onnxruntime {m['onnxruntime']}, "
        f"{report['date']}; batching {report['batching']}"
    )
    for note in report["notes"]:
        console.print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--quick", action="store_true", help="1 and 8 in flight, short windows")
    parser.add_argument("--seconds", type=float, default=5.0, help="window per cell")
    parser.add_argument("--batch", type=int, default=32, help="max rows per batch (on)")
    parser.add_argument("--batch-delay-ms", type=float, default=2.0, help="max delay (on)")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        trio.run(child_main, args.models, args.batch, args.batch_delay_ms)
        return

    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    paths = model_paths(args.models)
    notes = []
    if "emotion" not in paths:
        notes.append(f"emotion not measured: no emotion.onnx in {args.models}")
    names = list(paths)
    concurrency = (1, 8) if args.quick else (1, 8, 64)
    seconds = 0.5 if args.quick else args.seconds
    policy = Batching(args.batch, args.batch_delay_ms)
    machine = machine_info("onnxruntime", "numpy")
    children = {"off": Child(args.models, 0, args.batch_delay_ms)}
    try:
        children["on"] = Child(args.models, args.batch, args.batch_delay_ms)
        peer = trio.run(measure_peer, children, names, concurrency, seconds)
    finally:
        for child in children.values():
            child.stop()
    # 64 emotion calls in flight take ~0.3 s each: the floor's window is 1 s at least.
    local = trio.run(measure_local, paths, policy, max(1.0, seconds))
    top = str(max(concurrency))
    parts: dict[str, float] = components(paths["digits"], 200 if args.quick else 2000)
    cpu_off = peer["digits"]["off"][top].get("cpu_ms_per_call", math.nan)
    parts["cpu_off_ms"] = cpu_off
    parts["cpu_on_ms"] = peer["digits"]["on"][top].get("cpu_ms_per_call", math.nan)
    # If batching made the model's run free, each call would still cost the rest.
    parts["bound"] = cpu_off / (cpu_off - parts["model_run_ms"])
    speedup = peer["digits"]["on"][top]["calls_per_s"] / peer["digits"]["off"][top]["calls_per_s"]
    targets = [
        {
            "name": f"digits calls/s, batching on over off, {top} in flight",
            "value": speedup,
            "unit": "x",
            "target": f">= {TARGET_SPEEDUP:g}",
            "pass": speedup >= TARGET_SPEEDUP,
        }
    ]
    report = {
        "benchmark": "throughput",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": " ".join(["python", "scripts/bench/throughput.py", *sys.argv[1:]]),
        "duration_s": round(time.perf_counter() - started, 1),
        "load_at_start": load_at_start,
        "machine": machine,
        "code": git_state(),
        "network": "127.0.0.1 only",
        "batching": {"max_batch": args.batch, "max_delay_ms": args.batch_delay_ms},
        "window_s": seconds,
        "units": {"calls_per_s": "calls completed per second", "latency": "ms"},
        "peer": peer,
        "local": local,
        "top": top,
        "components": parts,
        "targets": targets,
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'throughput.json'} in {report['duration_s']} s")


if __name__ == "__main__":
    main()
