"""Benchmark pipelines across peers: the customer-service pipeline, orchestrated and
forwarded, against the same models run one after another in one process (the floor).

Usage: python scripts/bench/pipeline.py [--models build/models] [--out build/bench]
                                        [--runs 50] [--quick]

Four ``p2pnet peer`` processes on 127.0.0.1: a bootstrap peer (also serving the
ticket-routing adapter) and one peer each for emotion-analysis, kb-retrieval and
reply-template: the pipeline of examples/customer_service.yaml with its reply step
on the fixed-template reply (reply.onnx), so that the figures are the pipeline's
costs, not a language model's (docs/benchmarks.md, "Generation", has those). The
caller, a peer in this
process, joins through the bootstrap peer, plans the pipeline once (DHT lookups,
describe, schema check: timed as "plan"), then runs it on customer messages from
scripts/data/customer_service/messages.tsv, one message at a time:

  floor         the four steps in this process (onnxruntime, the adapter's function),
                one after another
  orchestrated  this peer calls the four steps (emotion and retrieval at once, then
                reply and routing at once)
  forwarded     the inputs go to the emotion peer, which sends retrieval on to its
                peer while it runs emotion, then reply and routing (the join) to the
                reply peer, which sends routing on while it runs reply; the results
                come back the same way

Every pipeline result is checked against the floor's. Besides the wall time of a
run, each mode reports its ratio to the floor's p50 and the CPU time a run costs,
this process and the four peers' together (from /proc; the floor's is this process's
alone): on a loaded machine the wall times move, the CPU times much less.

A second, synthetic pipeline shows where forwarding pays: ``expand`` turns a float
into a 16 MiB tensor on one peer, ``reduce`` sums it on another; orchestrated, the
16 MiB travel through the caller twice, forwarded once, peer to peer.

A third, the diamond, has the customer-service pipeline's shape with steps that
take a fixed time and no CPU (adapters sleeping 100 ms: a and b read the input, c
and d read both): run one step after another it takes 400 ms, as a graph 200 ms, so
its figures show whether a mode runs independent steps at the same time whatever
the machine's load.

Writes <out>/pipeline.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
import yaml
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info

from p2pnet.localswarm import PeerProcess, start_peer
from p2pnet.peer import Peer
from p2pnet.pipeline import Pipeline
from p2pnet.runtime.callable_model import CallableModel
from p2pnet.runtime.onnx_model import OnnxModel
from p2pnet.simulate.procstats import process_cpu_seconds

SPEC = REPO_ROOT / "examples" / "customer_service.yaml"
ADAPTER = REPO_ROOT / "examples" / "adapters" / "ticket_router.json"
OUTPUTS = ("emotion", "article", "reply", "priority", "queue")
CS_MODELS = {
    "emotion": "emotion-analysis",
    "retrieval": "kb-retrieval",
    "reply": "reply-template",
}
EXPAND_FLOATS = 4 << 20  # 16 MiB of float32


def template_spec() -> dict[str, Any]:
    """examples/customer_service.yaml with its reply step on the fixed-template reply,
    as the file's own comment says to do."""
    doc: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    doc["steps"]["reply"] |= {
        "task": "reply-template",
        "inputs": {"emotion": "emotion.label", "answer": "retrieve.answer"},
        "deadline": 5,
    }
    return doc


def load_script(relative: str) -> Any:
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_models(models_dir: Path) -> dict[str, Path]:
    """The customer-service models, built with scripts/build_cs_models.py if missing."""
    paths = {name: models_dir / f"{name}.onnx" for name in CS_MODELS}
    if not all(p.is_file() for p in paths.values()):
        load_script("scripts/build_cs_models.py").build_all(models_dir)
    return paths


def build_synthetic(out_dir: Path) -> dict[str, Path]:
    """expand: x float32[1] -> y float32[4Mi] (x repeated); reduce: y -> s float32[1]."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [EXPAND_FLOATS])
    expand = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        initializer=[shape],
    )
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    reduce = helper.make_graph(
        [helper.make_node("ReduceSum", ["y", "axes"], ["s"], keepdims=1)],
        "reduce",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
        initializer=[axes],
    )
    paths = {}
    for name, graph in (("expand", expand), ("reduce", reduce)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        paths[name] = out_dir / f"{name}.onnx"
        paths[name].write_bytes(model.SerializeToString(deterministic=True))
    return paths


DIAMOND_STEP_MS = 100
DIAMOND_CODE = f"""
import time
import numpy as np


def _after(value):
    time.sleep({DIAMOND_STEP_MS} / 1000)
    return {{"y": np.asarray(value, dtype=np.float32)}}


def a(inputs):
    return _after(inputs["x"] + 1)


def b(inputs):
    return _after(inputs["x"] * 2)


def c(inputs):
    return _after(inputs["p"] + inputs["q"])


def d(inputs):
    return _after(inputs["p"] * inputs["q"])
"""
DIAMOND_SPEC = {
    "pipeline": "diamond",
    "inputs": {"x": "float32[n]"},
    "steps": {
        "a": {"task": "bench-diamond-a", "inputs": {"x": "input.x"}},
        "b": {"task": "bench-diamond-b", "inputs": {"x": "input.x"}},
        "c": {"task": "bench-diamond-c", "inputs": {"p": "a.y", "q": "b.y"}},
        "d": {"task": "bench-diamond-d", "inputs": {"p": "a.y", "q": "b.y"}},
    },
    "outputs": {"c": "c.y", "d": "d.y"},
}


def build_diamond(out_dir: Path) -> dict[str, Path]:
    """Four adapters (``diamond.py``: a, b, c, d), each sleeping DIAMOND_STEP_MS."""
    (out_dir / "diamond.py").write_text(DIAMOND_CODE)
    paths = {}
    for step in "abcd":
        names = ["x"] if step in "ab" else ["p", "q"]
        manifest = {
            "format": "p2pnet-adapter/1",
            "name": f"bench-diamond-{step}",
            "entry": f"diamond.py:{step}",
            "tasks": [f"bench-diamond-{step}"],
            "inputs": [{"name": n, "dtype": "float32", "shape": ["n"]} for n in names],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["n"]}],
        }
        paths[step] = out_dir / f"diamond_{step}.json"
        paths[step].write_text(json.dumps(manifest))
    return paths


SYNTHETIC_SPEC = {
    "pipeline": "expand-reduce",
    "inputs": {"x": "float32[1]"},
    "steps": {
        "expand": {"task": "bench-expand", "inputs": {"x": "input.x"}},
        "reduce": {"task": "bench-reduce", "inputs": {"y": "expand.y"}},
    },
    "outputs": {"s": "reduce.s"},
}


def messages(count: int) -> list[str]:
    path = REPO_ROOT / "scripts" / "data" / "customer_service" / "messages.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    column = header.index("text")
    return [line.split("\t")[column] for line in lines[1 : count + 1]]


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "mean_ms": statistics.fmean(ordered),
    }


def floor(
    paths: dict[str, Path], texts: list[str], warmup: int
) -> tuple[dict[str, Any], list[Any]]:
    """The four steps in this process, one after another, per message."""
    emotion, retrieval, reply = (
        OnnxModel.load(paths[n]) for n in ("emotion", "retrieval", "reply")
    )
    router = CallableModel.load(ADAPTER)

    def run(text: str) -> dict[str, Any]:
        x = np.array([text], dtype=object)
        e = emotion.run_sync({"text": x})
        r = retrieval.run_sync({"text": x})
        out = reply.run_sync({"emotion": e["label"], "answer": r["answer"]})
        route = router.run_sync({"emotion": e["label"], "article": r["article"]})
        return {
            "emotion": e["label"],
            "article": r["article"],
            "reply": out["reply"],
            "priority": route["priority"],
            "queue": route["queue"],
        }

    for text in texts[:warmup]:
        run(text)
    samples, results = [], []
    cpu0 = time.process_time()
    for text in texts:
        t0 = time.perf_counter()
        results.append(run(text))
        samples.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(texts)
    return {**summary(samples), "cpu_ms_per_run": cpu_ms}, results


def cpu_seconds(pids: list[int]) -> float:
    """CPU time so far of this process and of the processes ``pids``, in seconds."""
    return time.process_time() + sum(process_cpu_seconds(pid) for pid in pids)


async def timed(
    runs: int, warmup: int, call: Callable[[int], Awaitable[Any]], pids: list[int]
) -> tuple[dict[str, float], list[Any]]:
    for i in range(warmup):
        await call(i)
    samples, results = [], []
    cpu0 = cpu_seconds(pids)
    for i in range(runs):
        t0 = time.perf_counter()
        results.append(await call(i))
        samples.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (cpu_seconds(pids) - cpu0) * 1000 / runs
    return {**summary(samples), "cpu_ms_per_run": cpu_ms}, results


async def measure(
    bootstrap: str, texts: list[str], expected: list[Any], warmup: int, pids: list[int]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with Peer(bootstrap=[bootstrap]) as caller:
        pipeline = Pipeline.from_dict(template_spec())
        t0 = time.perf_counter()
        plan = await pipeline.plan(caller)
        figures["plan_ms"] = (time.perf_counter() - t0) * 1000
        peers = {name: p.offers[0].record.peer_id for name, p in plan.steps.items()}
        figures["distinct_step_peers"] = len(set(peers.values()))
        for mode in ("orchestrated", "forwarded"):

            async def call(i: int, mode: str = mode) -> Any:
                x = np.array([texts[i % len(texts)]], dtype=object)
                return await pipeline.run(caller, {"text": x}, mode=mode, plan=plan)  # type: ignore[arg-type]

            stats, results = await timed(len(texts), warmup, call, pids)
            mismatches = sum(
                any(r.outputs[k].tolist() != e[k].tolist() for k in OUTPUTS)
                for r, e in zip(results, expected, strict=True)
            )
            figures[mode] = {**stats, "mismatches_vs_floor": mismatches}

        synthetic = Pipeline.from_dict(SYNTHETIC_SPEC)
        splan = await synthetic.plan(caller)
        x = np.array([0.5], np.float32)
        for mode in ("orchestrated", "forwarded"):

            async def scall(i: int, mode: str = mode) -> Any:
                return await synthetic.run(caller, {"x": x}, mode=mode, plan=splan)  # type: ignore[arg-type]

            stats, results = await timed(10, 2, scall, pids)
            ok = all(abs(float(r.outputs["s"][0]) - 0.5 * EXPAND_FLOATS) < 1 for r in results)
            figures[f"synthetic_{mode}"] = {**stats, "correct": ok}

        diamond = Pipeline.from_dict(DIAMOND_SPEC)
        dplan = await diamond.plan(caller)
        dx = np.array([1.0, 2.0], np.float32)
        want = {"c": (dx + 1) + dx * 2, "d": (dx + 1) * (dx * 2)}
        for mode in ("orchestrated", "forwarded"):

            async def dcall(i: int, mode: str = mode) -> Any:
                return await diamond.run(caller, {"x": dx}, mode=mode, plan=dplan)  # type: ignore[arg-type]

            stats, results = await timed(10, 2, dcall, pids)
            ok = all(np.array_equal(r.outputs[k], want[k]) for r in results for k in ("c", "d"))
            figures[f"diamond_{mode}"] = {**stats, "correct": ok}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--runs", type=int, default=100, help="messages per mode")
    parser.add_argument("--quick", action="store_true", help="20 messages per mode, for CI")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    warmup = 5
    started = time.monotonic()
    machine = machine_info("onnxruntime", "numpy")
    paths = ensure_models(args.models)
    texts = messages(runs)
    floor_stats, expected = floor(paths, texts, warmup)
    peers: list[PeerProcess] = []
    with tempfile.TemporaryDirectory(prefix="p2pnet-bench-") as tmp:
        synthetic = build_synthetic(Path(tmp))
        diamond = build_diamond(Path(tmp))
        try:
            boot = start_peer(
                ["--role", "bootstrap", "--serve", str(ADAPTER), "--serve", str(diamond["d"])],
                identity=Path(tmp) / "boot.key",
            )
            peers.append(boot)
            extra = {"emotion": "expand", "retrieval": "reduce"}
            diamond_step = {"emotion": "a", "retrieval": "b", "reply": "c"}
            for name, task in CS_MODELS.items():
                serve = ["--serve", str(paths[name]), "--task", task]
                serve += ["--serve", str(diamond[diamond_step[name]])]
                if name in extra:
                    serve += [
                        "--serve",
                        str(synthetic[extra[name]]),
                        "--task",
                        f"bench-{extra[name]}",
                    ]
                peers.append(
                    start_peer(
                        [*serve, "--bootstrap", boot.address], identity=Path(tmp) / f"{name}.key"
                    )
                )
            pids = [p.process.pid for p in peers]
            figures = trio.run(measure, boot.address, texts, expected, warmup, pids)
        finally:
            codes = [p.stop() for p in reversed(peers)]
    for mode in ("orchestrated", "forwarded"):
        figures[mode]["vs_floor_p50"] = figures[mode]["p50_ms"] / floor_stats["p50_ms"]
    report = {
        "benchmark": "pipeline",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "git": git_state(),
        "runs": runs,
        "floor": floor_stats,
        **figures,
        "peer_exit_codes": codes,
        "load_average_at_end": list(os.getloadavg()),
        "seconds": time.monotonic() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'pipeline.json'} in {report['seconds']:.1f} s")


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table(
        title=f"customer-service pipeline, one message per run, {report['runs']} runs "
        f"(plan once: {report['plan_ms']:.0f} ms)",
        title_justify="left",
    )
    columns = ("how", "p50 ms", "p95 ms", "mean ms", "vs floor p50", "CPU ms/run", "= floor")
    for column in columns:
        table.add_column(column, justify="left" if column == "how" else "right")
    base = report["floor"]["p50_ms"]
    for key, label in (
        ("floor", "floor: 4 steps in one process"),
        ("orchestrated", "orchestrated, 4 peers"),
        ("forwarded", "forwarded, 4 peers"),
    ):
        r = report[key]
        same = "-" if key == "floor" else f"{r['n'] - r['mismatches_vs_floor']}/{r['n']}"
        table.add_row(
            label, f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['mean_ms']:.2f}",
            f"{r['p50_ms'] / base:.2f}x", f"{r['cpu_ms_per_run']:.1f}", same,
        )  # fmt: skip
    console.print(table)
    table = Table(title="expand (16 MiB out) -> reduce, on two peers", title_justify="left")
    for column in ("how", "p50 ms", "p95 ms", "correct"):
        table.add_column(column, justify="left" if column == "how" else "right")
    for mode in ("orchestrated", "forwarded"):
        r = report[f"synthetic_{mode}"]
        table.add_row(mode, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", str(r["correct"]))
    console.print(table)
    table = Table(
        title=f"diamond: a, b -> c, d, each step {DIAMOND_STEP_MS} ms asleep "
        f"(in order {4 * DIAMOND_STEP_MS} ms, as a graph {2 * DIAMOND_STEP_MS} ms)",
        title_justify="left",
    )
    for column in ("how", "p50 ms", "p95 ms", "correct"):
        table.add_column(column, justify="left" if column == "how" else "right")
    for mode in ("orchestrated", "forwarded"):
        r = report[f"diamond_{mode}"]
        table.add_row(mode, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", str(r["correct"]))
    console.print(table)
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']} at start, "
        f"{report['load_average_at_end']} at end; {report['date']}; p2pnet at "
        f"{report['git']['commit']}{' (modified)' if report['git']['modified'] else ''}"
    )


if __name__ == "__main__":
    main()
